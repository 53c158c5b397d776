//! `Host`, `hosts`, `host`, and `Vm.host`, `Image.host`, `Disk.host`.

use async_graphql::{Context, ID, Object};
use sea_orm::{EntityTrait, QueryOrder, TryIntoModel};

use super::{Host, HostState, model};
use crate::{
    api::{self, Bytes},
    error::{ApiError, ResultExt},
};

/// A host (`Host` in the schema).
pub struct HostObject(pub Host);

fn bytes(v: i64) -> Bytes {
    Bytes(v.max(0))
}

/// A host: the machine of one vman node, with its figures as of its node's
/// last heartbeat (`host` reads this node's own when asked).
#[Object(name = "Host")]
impl HostObject {
    /// Its ID (`<data_dir>/host-id` on its node).
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Its name, unique in the cluster (`cluster.host_name`).
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Whether its node is heard from.
    async fn state(&self) -> HostState {
        self.0.state
    }
    /// Why it is offline; null while online.
    async fn state_reason(&self) -> Option<&str> {
        self.0.state_reason.as_deref()
    }
    /// Whether it is the host of the node that answers.
    async fn this_node(&self, ctx: &Context<'_>) -> bool {
        self.0.id == *api::services(ctx).host_id
    }
    /// Its node's vman version.
    async fn version(&self) -> &str {
        &self.0.version
    }
    /// What its node can do: `qemu`, `kvm`, or `dry-run`.
    async fn capabilities(&self) -> Vec<String> {
        serde_json::from_value(self.0.capabilities.clone()).unwrap_or_default()
    }
    /// CPUs the host has.
    async fn cpus(&self) -> i32 {
        self.0.cpus
    }
    /// `MemTotal`.
    async fn memory_total_bytes(&self) -> Bytes {
        bytes(self.0.memory_total_bytes)
    }
    /// `MemAvailable`: what new VMs could still get without swapping.
    async fn memory_available_bytes(&self) -> Bytes {
        bytes(self.0.memory_available_bytes)
    }
    /// Free space for disks and images (the storage directory's filesystem);
    /// null when it cannot be read.
    async fn storage_free_bytes(&self) -> Option<Bytes> {
        self.0.storage_free_bytes.map(bytes)
    }
    /// The load average over one minute; null when it cannot be read.
    async fn load1(&self) -> Option<f64> {
        self.0.load1
    }
    /// Its node's last heartbeat.
    async fn last_heartbeat(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.heartbeat_at
    }
    /// When its node first registered it.
    async fn registered_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.registered_at
    }
}

#[derive(Default)]
pub struct ClusterQuery;

#[Object]
impl ClusterQuery {
    /// The host of the node that answers, with its figures read now.
    async fn host(&self, ctx: &Context<'_>) -> async_graphql::Result<HostObject> {
        let services = api::services(ctx);
        let host = model::Entity::find_by_id(services.host_id.to_string())
            .one(&services.db)
            .await
            .map_err(ApiError::from)
            .gql()?
            .ok_or_else(|| ApiError::not_found("host", &*services.host_id))
            .gql()?;
        let mut row: model::ActiveModel = host.into();
        super::figures(&services.config, &mut row);
        let host = row.try_into_model().map_err(ApiError::from).gql()?;
        Ok(HostObject(host))
    }

    /// Every host of the cluster (one with SQLite), by name.
    async fn hosts(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<HostObject>> {
        let services = api::services(ctx);
        let hosts = model::Entity::find()
            .order_by_asc(model::Column::Name)
            .all(&services.db)
            .await
            .map_err(ApiError::from)
            .gql()?;
        Ok(hosts.into_iter().map(HostObject).collect())
    }
}

/// The host `host_id` (`Vm.host`, `Image.host`, `Disk.host`), loaded in one
/// batch with the others of the request.
pub async fn by_id(
    ctx: &Context<'_>,
    host_id: Option<&str>,
) -> async_graphql::Result<Option<HostObject>> {
    Ok(api::load::<model::Entity>(ctx, host_id)
        .await?
        .map(HostObject))
}
