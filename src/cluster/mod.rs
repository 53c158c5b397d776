//! Hosts: each vman node registers the host it runs on, heartbeats, and
//! watches the others' heartbeats.
//!
//! A node's host is identified by `<data_dir>/host-id` (a UUID written at its
//! first start), so a node restarted on the same data directory is the same
//! host and re-adopts its VMs. Every VM and operation row carries the host
//! that runs it, and every image and disk the host whose storage holds its
//! file; a node adopts, sweeps and ends operations of its own host only. The
//! rows from before hosts existed are claimed by the first node that starts
//! (images and disks only while it is the only host).
//!
//! A host whose heartbeat is older than `cluster.offline_after` is marked
//! `OFFLINE` by whichever other node sees it first (the write re-reads the
//! row under the journal's lock, so it happens once), and its live VMs
//! become `UNKNOWN`: vman cannot know what they do. Its QEMUs are not
//! touched (they run on a machine no other node can reach). When the node
//! heartbeats again its host is `ONLINE`, and its sweep sets each VM from
//! what QEMU reports.
//!
//! Heartbeat times are the nodes' own clocks: the hosts of a cluster must
//! keep their clocks in step (NTP) to well within `offline_after`.

pub mod graphql;
pub mod place;
pub mod route;

use std::{path::Path, time::Duration};

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set, entity::prelude::*,
    sea_query::Expr,
};

use crate::{
    config::Config,
    context::Ctx,
    error::{ApiError, ApiResult},
    events::{EventBus, NewEvent, Payload},
    vm::{self, VmState},
};

pub mod model {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "hosts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        #[sea_orm(unique)]
        pub name: String,
        pub state: super::HostState,
        pub state_reason: Option<String>,
        /// The vman version of its node.
        pub version: String,
        /// Where the other nodes send its node the mutations for its VMs
        /// (`cluster.advertise_url`); null: nowhere.
        pub api_url: Option<String>,
        /// What its node can do, as a JSON list of names.
        pub capabilities: Json,
        pub cpus: i32,
        pub memory_total_bytes: i64,
        pub memory_available_bytes: i64,
        pub storage_free_bytes: Option<i64>,
        pub load1: Option<f64>,
        pub heartbeat_at: DateTimeUtc,
        pub registered_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub use model::Model as Host;

/// Whether a host's node is heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum, async_graphql::Enum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum HostState {
    /// Its node heartbeats.
    #[sea_orm(string_value = "ONLINE")]
    Online,
    /// Its node's heartbeat stopped for longer than `cluster.offline_after`:
    /// its VMs are `UNKNOWN` and mutations for them fail with `HOST_UNAVAILABLE`.
    #[sea_orm(string_value = "OFFLINE")]
    Offline,
}

/// The VM states a host going offline turns into `UNKNOWN`: those in which
/// a QEMU runs (or may run).
const LIVE: [VmState; 4] = [
    VmState::Starting,
    VmState::Running,
    VmState::Paused,
    VmState::Stopping,
];

/// Writes `id` as this node's host id.
fn write_host_id(data_dir: &Path, id: &str) -> std::io::Result<()> {
    let partial = data_dir.join("host-id.partial");
    std::fs::write(&partial, id)?;
    std::fs::rename(&partial, data_dir.join("host-id"))
}

/// This node's host id: `<data_dir>/host-id`, made at the first start.
fn host_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join("host-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if uuid::Uuid::parse_str(id.trim()).is_ok() => Ok(id.trim().to_string()),
        Ok(other) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} holds {other:?}, not a host id", path.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = uuid::Uuid::now_v7().to_string();
            write_host_id(data_dir, &id)?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// The host's name: `cluster.host_name`, or the machine's hostname.
fn host_name(config: &Config) -> String {
    config.cluster.host_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    })
}

/// What this node can do, for placement and for `Host.capabilities`.
fn capabilities(config: &Config) -> Vec<&'static str> {
    if config.dry_run {
        return vec!["dry-run"];
    }
    let mut caps = vec!["qemu"];
    if std::fs::metadata("/dev/kvm").is_ok() {
        caps.push("kvm");
    }
    caps
}

/// The host's figures, read now, into its row.
fn figures(config: &Config, row: &mut model::ActiveModel) {
    let f = crate::stats::figures(config);
    let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    row.cpus = Set(f.cpus as i32);
    row.memory_total_bytes = Set(signed(f.memory_total_bytes));
    row.memory_available_bytes = Set(signed(f.memory_available_bytes));
    row.storage_free_bytes = Set(f.storage_free_bytes.map(signed));
    row.load1 = Set(f.load1);
}

/// Registers this node's host (or finds it again) and claims the rows made
/// before hosts existed. Returns the host's id.
pub async fn register(config: &Config, bus: &EventBus) -> ApiResult<String> {
    let mut id = host_id(&config.data_dir).map_err(ApiError::internal)?;
    let name = host_name(config);
    let mut w = bus.writer().await?;
    if w.txn().get_database_backend() == sea_orm::DbBackend::Sqlite
        && let Some(only) = model::Entity::find().one(w.txn()).await?
        && only.id != id
    {
        // SQLite's database is one host's: a data directory restored from
        // a backup (or moved) is that host still, and keeps its VMs.
        tracing::info!(host = %only.name, id = %only.id, "this database is one host's: this node is that host");
        write_host_id(&config.data_dir, &only.id).map_err(ApiError::internal)?;
        id = only.id;
    }
    if let Some(other) = model::Entity::find()
        .filter(model::Column::Name.eq(&name))
        .filter(model::Column::Id.ne(&id))
        .one(w.txn())
        .await?
    {
        return Err(ApiError::Conflict(format!(
            "host name {name:?} is another host's ({}); give this one its own with cluster.host_name",
            other.id
        )));
    }
    let known = model::Entity::find_by_id(id.clone()).one(w.txn()).await?;
    let mut row = match &known {
        Some(host) => host.clone().into(),
        None => model::ActiveModel {
            id: Set(id.clone()),
            registered_at: Set(Utc::now()),
            ..Default::default()
        },
    };
    row.name = Set(name.clone());
    row.version = Set(env!("CARGO_PKG_VERSION").to_string());
    row.api_url = Set(config.advertise_url());
    row.capabilities = Set(serde_json::json!(capabilities(config)));
    row.state = Set(HostState::Online);
    row.state_reason = Set(None);
    figures(config, &mut row);
    row.heartbeat_at = Set(Utc::now());
    match &known {
        Some(_) => {
            row.update(w.txn()).await?;
        }
        None => {
            row.insert(w.txn()).await?;
        }
    }
    // A first host starts its journal empty; one that joins others, or
    // comes back, is news to them.
    let joins = known.is_none()
        && model::Entity::find()
            .filter(model::Column::Id.ne(&id))
            .one(w.txn())
            .await?
            .is_some();
    if joins || known.as_ref().is_some_and(|h| h.state != HostState::Online) {
        w.record(NewEvent::new(
            &id,
            None,
            Payload::HostOnline {
                name: name.clone(),
                registered: known.is_none(),
            },
        ))
        .await?;
    }
    let claimed = vm::model::Entity::update_many()
        .col_expr(vm::model::Column::HostId, Expr::value(id.clone()))
        .filter(vm::model::Column::HostId.is_null())
        .exec(w.txn())
        .await?;
    crate::operation::model::Entity::update_many()
        .col_expr(
            crate::operation::model::Column::HostId,
            Expr::value(id.clone()),
        )
        .filter(crate::operation::model::Column::HostId.is_null())
        .exec(w.txn())
        .await?;
    // Images, disks, networks' bridges and coherence issues from before
    // hosts: they are the one host's there was. Where several hosts
    // registered before any claimed them, nobody knows whose they are:
    // they stay null.
    let alone = w.txn().get_database_backend() == sea_orm::DbBackend::Sqlite
        || model::Entity::find()
            .filter(model::Column::Id.ne(&id))
            .one(w.txn())
            .await?
            .is_none();
    let mut networks = 0;
    if alone {
        crate::image::model::Entity::update_many()
            .col_expr(crate::image::model::Column::HostId, Expr::value(id.clone()))
            .filter(crate::image::model::Column::HostId.is_null())
            .exec(w.txn())
            .await?;
        crate::disk::model::Entity::update_many()
            .col_expr(crate::disk::model::Column::HostId, Expr::value(id.clone()))
            .filter(crate::disk::model::Column::HostId.is_null())
            .exec(w.txn())
            .await?;
        crate::coherence::model::Entity::update_many()
            .col_expr(
                crate::coherence::model::Column::HostId,
                Expr::value(id.clone()),
            )
            .filter(crate::coherence::model::Column::HostId.is_null())
            .exec(w.txn())
            .await?;
        networks = crate::network::claim_unplaced(w.txn(), &id).await?;
    }
    w.commit().await?;
    tracing::info!(host = %name, id = %id, claimed_vms = claimed.rows_affected, claimed_networks = networks, "registered this node's host");
    Ok(id)
}

/// Writes this node's heartbeat now; a host another node marked `OFFLINE`
/// (this node was stalled, or cut off) is `ONLINE` again.
pub async fn heartbeat(ctx: &Ctx) -> ApiResult<()> {
    let mut w = ctx.bus.writer().await?;
    let host = crate::events::find_in::<model::Entity, _>(w.txn(), "host", &ctx.host_id).await?;
    let back = host.state != HostState::Online;
    let name = host.name.clone();
    let mut row: model::ActiveModel = host.into();
    figures(&ctx.config, &mut row);
    row.heartbeat_at = Set(Utc::now());
    row.state = Set(HostState::Online);
    row.state_reason = Set(None);
    row.update(w.txn()).await?;
    if back {
        w.record(NewEvent::new(
            &*ctx.host_id,
            None,
            Payload::HostOnline {
                name,
                registered: false,
            },
        ))
        .await?;
    }
    w.commit().await?;
    if back {
        tracing::warn!(
            "this node's host had been marked offline by another node; it is online again"
        );
    }
    Ok(())
}

/// Marks the hosts whose heartbeat is older than `cluster.offline_after`
/// `OFFLINE`, and their live VMs `UNKNOWN`. Returns the hosts marked.
pub async fn mark_silent(ctx: &Ctx) -> ApiResult<Vec<String>> {
    let limit = ctx.config.cluster.offline_after;
    let cutoff = Utc::now() - chrono::Duration::from_std(limit).unwrap_or_default();
    let silent = model::Entity::find()
        .filter(model::Column::State.eq(HostState::Online))
        .filter(model::Column::HeartbeatAt.lt(cutoff))
        .filter(model::Column::Id.ne(&*ctx.host_id))
        .all(&ctx.db)
        .await?;
    let mut marked = Vec::new();
    for host in silent {
        let mut w = ctx.bus.writer().await?;
        // Under the journal's lock: another node may have marked it, or it
        // heartbeat meanwhile.
        let Some(host) = model::Entity::find_by_id(host.id.clone())
            .filter(model::Column::State.eq(HostState::Online))
            .filter(model::Column::HeartbeatAt.lt(cutoff))
            .one(w.txn())
            .await?
        else {
            continue;
        };
        let reason = format!(
            "host {:?} sent no heartbeat for {} (the last at {})",
            host.name,
            humantime::format_duration(limit),
            host.heartbeat_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        let vm_ids: Vec<String> = vm::model::Entity::find()
            .filter(vm::model::Column::HostId.eq(&host.id))
            .filter(vm::model::Column::State.is_in(LIVE))
            .all(w.txn())
            .await?
            .into_iter()
            .map(|vm| vm.id)
            .collect();
        let name = host.name.clone();
        let id = host.id.clone();
        let mut row: model::ActiveModel = host.into();
        row.state = Set(HostState::Offline);
        row.state_reason = Set(Some(reason.clone()));
        row.update(w.txn()).await?;
        // The host first, then what it means for each of its VMs.
        w.record(NewEvent::new(
            &id,
            None,
            Payload::HostOffline {
                name: name.clone(),
                reason: reason.clone(),
                vm_ids: vm_ids.clone(),
            },
        ))
        .await?;
        for vm_id in &vm_ids {
            vm::transition(&mut w, vm_id, VmState::Unknown, &reason, None).await?;
        }
        w.commit().await?;
        tracing::warn!(host = %name, %reason, "marked a host offline");
        marked.push(id);
    }
    Ok(marked)
}

/// Heartbeats and watches the other hosts, every `cluster.heartbeat_interval`,
/// until vman stops.
pub fn spawn(ctx: Ctx) {
    tokio::spawn(async move {
        // `register` wrote the first one.
        let every = ctx.config.cluster.heartbeat_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ctx.cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            // A write that waits longer than a heartbeat is not worth waiting for.
            let wait = ctx
                .config
                .cluster
                .heartbeat_interval
                .max(Duration::from_secs(1));
            match tokio::time::timeout(wait, heartbeat(&ctx)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "writing this node's heartbeat"),
                Err(_) => tracing::warn!(waited = ?wait, "this node's heartbeat write timed out"),
            }
            if let Err(e) = mark_silent(&ctx).await {
                tracing::error!(error = %e, "checking the other hosts' heartbeats");
            }
        }
    });
}

/// A mutation of `vm` may go on here: its host is this node's. A VM on an
/// offline host, or on another node's host (a request that reached this
/// node without being routed, over the websocket), is `HOST_UNAVAILABLE`.
pub async fn check_local(ctx: &Ctx, vm: &vm::Vm) -> ApiResult<()> {
    check_here(ctx, &format!("VM {:?}", vm.name), vm.host_id.as_deref()).await
}

/// `what` (`VM "a"`, `disk "d"`, `image "i"`), on host `host_id`, may be
/// changed here: its host is this node's, or it is from before hosts (null).
/// Otherwise `HOST_UNAVAILABLE`, saying where it is.
pub async fn check_here(ctx: &Ctx, what: &str, host_id: Option<&str>) -> ApiResult<()> {
    match host_id {
        Some(host_id) => check_host(ctx, host_id).await.map_err(|e| match e {
            ApiError::HostUnavailable(why) => {
                ApiError::HostUnavailable(format!("{what} is on {why}"))
            }
            other => other,
        }),
        None => Ok(()),
    }
}

/// Something may be made or changed on host `host_id` here: it is this
/// node's. Otherwise `HOST_UNAVAILABLE` (NOT_FOUND for no such host).
pub async fn check_host(ctx: &Ctx, host_id: &str) -> ApiResult<()> {
    if host_id == &*ctx.host_id {
        return Ok(());
    }
    let host = model::Entity::find_by_id(host_id.to_string())
        .one(&ctx.db)
        .await?
        .ok_or_else(|| ApiError::not_found("host", host_id))?;
    Err(ApiError::HostUnavailable(match host.state {
        HostState::Offline => format!(
            "host {:?}, which is offline: {}",
            host.name,
            host.state_reason.unwrap_or_default()
        ),
        HostState::Online => format!(
            "host {:?}, whose node this request did not reach: send it to {}",
            host.name,
            host.api_url.as_deref().unwrap_or("that host's node")
        ),
    }))
}
