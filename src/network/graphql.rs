use async_graphql::{Context, ID, InputObject, Object, SimpleObject};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::{CreateNetwork, Network, Nic, model};
use crate::{
    api::{
        self, PlanStep,
        pagination::{Page, id_cursor, page},
    },
    error::{ApiError, ResultExt},
    operation::{Change, graphql::OperationObject},
    vm::graphql::VmObject,
};

#[derive(Clone)]
pub struct NetworkObject(pub Network);

/// A VLAN and the bridge that carries it on this host.
#[Object(name = "Network")]
impl NetworkObject {
    pub async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn vlan_id(&self) -> i32 {
        self.0.vlan_id
    }
    /// The host bridge, named from the VLAN (`vmbr<vlanId>` by default).
    async fn bridge(&self) -> &str {
        &self.0.bridge
    }
    async fn nics(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<NicObject>> {
        let nics = model::nic::Entity::find()
            .filter(model::nic::Column::NetworkId.eq(&self.0.id))
            .order_by_asc(model::nic::Column::Id)
            .all(&api::app(ctx).db)
            .await
            .map_err(ApiError::from)
            .gql()?;
        Ok(nics.into_iter().map(NicObject).collect())
    }
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
}

#[derive(Clone)]
pub struct NicObject(pub Nic);

/// A VM's network interface on a network.
#[Object(name = "Nic")]
impl NicObject {
    pub async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn mac(&self) -> &str {
        &self.0.mac
    }
    async fn model(&self) -> &str {
        &self.0.model
    }
    async fn position(&self) -> i32 {
        self.0.position
    }
    async fn vm(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<VmObject>> {
        let vm = api::load::<crate::vm::model::Entity>(ctx, Some(&self.0.vm_id)).await?;
        Ok(vm.map(VmObject))
    }
    async fn network(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<NetworkObject>> {
        let network = api::load::<model::Entity>(ctx, Some(&self.0.network_id)).await?;
        Ok(network.map(NetworkObject))
    }
}

#[derive(InputObject)]
pub struct CreateNetworkInput {
    pub name: String,
    /// 1 to 4094, unique.
    pub vlan_id: i32,
}

/// The result of a network mutation; see `VmPayload` for `dryRun`.
#[derive(SimpleObject)]
pub struct NetworkPayload {
    pub network: NetworkObject,
    pub operation: Option<OperationObject>,
    pub plan: Vec<PlanStep>,
}

impl From<Change<Network>> for NetworkPayload {
    fn from(change: Change<Network>) -> Self {
        NetworkPayload {
            network: NetworkObject(change.object),
            operation: change.operation.map(OperationObject),
            plan: api::plan(&change.plan),
        }
    }
}

#[derive(Default)]
pub struct NetworkQuery;

#[Object]
impl NetworkQuery {
    async fn networks(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Page<NetworkObject>> {
        let after = id_cursor(after).gql()?;
        page(
            &api::app(ctx).db,
            model::Entity::find(),
            model::Column::Id,
            after,
            first,
            |n| n.id.clone(),
            NetworkObject,
        )
        .await
        .gql()
    }

    /// A network by ID or by name.
    async fn network(
        &self,
        ctx: &Context<'_>,
        id: Option<ID>,
        name: Option<String>,
    ) -> async_graphql::Result<Option<NetworkObject>> {
        let found = api::by_id_or_name::<model::Entity>(ctx, id, name, model::Column::Name).await?;
        Ok(found.map(NetworkObject))
    }
}

#[derive(Default)]
pub struct NetworkMutation;

#[Object]
impl NetworkMutation {
    async fn create_network(
        &self,
        ctx: &Context<'_>,
        input: CreateNetworkInput,
        #[graphql(default = false)] dry_run: bool,
    ) -> async_graphql::Result<NetworkPayload> {
        let input = CreateNetwork {
            name: input.name,
            vlan_id: input.vlan_id,
        };
        Ok(super::create(api::app(ctx), input, dry_run)
            .await
            .gql()?
            .into())
    }

    /// Fails with CONFLICT while NICs use it.
    async fn delete_network(
        &self,
        ctx: &Context<'_>,
        id: ID,
        #[graphql(default = false)] dry_run: bool,
    ) -> async_graphql::Result<NetworkPayload> {
        Ok(super::delete(api::app(ctx), &id, dry_run)
            .await
            .gql()?
            .into())
    }
}
