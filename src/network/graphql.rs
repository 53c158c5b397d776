use async_graphql::{Context, ID, InputObject, Object, SimpleObject};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::{CreateNetwork, Network, Nic, model, nic::AttachNic};
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

/// A VLAN, the cluster's, and the bridge that carries it on each host it is
/// made on (the host of the node it was created through, and each host a
/// NIC on it was attached on).
#[Object(name = "Network")]
impl NetworkObject {
    /// A UUID, unique across all objects.
    pub async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Unique among networks.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// The 802.1Q VLAN id, 1 to 4094; unique among networks.
    async fn vlan_id(&self) -> i32 {
        self.0.vlan_id
    }
    /// The host bridge, named from the VLAN (`vmbr<vlanId>` by default).
    async fn bridge(&self) -> &str {
        &self.0.bridge
    }
    /// The host interface whose VLAN link joins the bridge; null: an isolated bridge.
    async fn uplink(&self) -> Option<&str> {
        self.0.uplink.as_deref()
    }
    /// `<uplink>.<vlanId>`, the 802.1Q link vman made on the uplink; null without an uplink.
    async fn vlan_link(&self) -> Option<String> {
        super::vlan_link(&self.0).map(|l| l.name)
    }
    /// The hosts its bridge is made on, by name.
    async fn hosts(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<crate::cluster::graphql::HostObject>> {
        let app = api::services(ctx);
        let ids: Vec<String> = model::on_host::Entity::find()
            .filter(model::on_host::Column::NetworkId.eq(&self.0.id))
            .all(&app.db)
            .await
            .map_err(ApiError::from)
            .gql()?
            .into_iter()
            .map(|row| row.host_id)
            .collect();
        let hosts = crate::cluster::model::Entity::find()
            .filter(crate::cluster::model::Column::Id.is_in(ids))
            .order_by_asc(crate::cluster::model::Column::Name)
            .all(&app.db)
            .await
            .map_err(ApiError::from)
            .gql()?;
        Ok(hosts
            .into_iter()
            .map(crate::cluster::graphql::HostObject)
            .collect())
    }
    /// What the answering node's host shows of this network now (one
    /// netlink dump); a host it is not made on shows it missing.
    async fn status(&self, ctx: &Context<'_>) -> async_graphql::Result<NetworkStatus> {
        let app = api::services(ctx);
        let links = app.network.links().await.map_err(ApiError::from).gql()?;
        let bridge = links.get(&self.0.bridge);
        let mut problems = Vec::new();
        match bridge {
            None => problems.push(format!("bridge {} does not exist", self.0.bridge)),
            Some(b) if !b.up => problems.push(format!("bridge {} is down", self.0.bridge)),
            Some(_) => {}
        }
        let vlan_link_ready = super::vlan_link(&self.0).map(|link| {
            let seen = links.get(&link.name);
            let ready = seen.is_some_and(|l| l.up && l.master.as_deref() == Some(&self.0.bridge));
            if !ready {
                problems.push(format!(
                    "VLAN link {} is {}",
                    link.name,
                    match seen {
                        None => "missing",
                        Some(l) if l.master.as_deref() != Some(&self.0.bridge) =>
                            "not on the bridge",
                        Some(_) => "down",
                    }
                ));
            }
            ready
        });
        Ok(NetworkStatus {
            bridge_exists: bridge.is_some(),
            bridge_up: bridge.is_some_and(|b| b.up),
            vlan_link_ready,
            vlan_links: app.network.capabilities().vlan_links,
            problems,
        })
    }
    /// The NICs on this network, oldest first.
    async fn nics(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<NicObject>> {
        let nics = model::nic::Entity::find()
            .filter(model::nic::Column::NetworkId.eq(&self.0.id))
            .order_by_asc(model::nic::Column::Id)
            .all(&api::services(ctx).db)
            .await
            .map_err(ApiError::from)
            .gql()?;
        Ok(nics.into_iter().map(NicObject).collect())
    }
    /// When the network was created.
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
}

#[derive(Clone)]
pub struct NicObject(pub Nic);

/// A VM's network interface on a network.
#[Object(name = "Nic")]
impl NicObject {
    /// A UUID, unique across all objects.
    pub async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The MAC address the guest sees, in lower case (`02:…` when generated).
    async fn mac(&self) -> &str {
        &self.0.mac
    }
    /// The QEMU device model: `virtio-net-pci` or `e1000e`.
    async fn model(&self) -> &str {
        &self.0.model
    }
    /// Order among the VM's NICs (0 first); part of the tap's name.
    async fn position(&self) -> i32 {
        self.0.position
    }
    /// The host tap QEMU uses for this NIC (present while the VM runs).
    async fn tap(&self) -> String {
        super::nic::spec_tap(&self.0)
    }
    /// ATTACHED; DETACHING while a live unplug waits for the guest; DETACHED
    /// only in the payload of a completed `detachNic` (the NIC is gone).
    async fn attachment(&self) -> crate::disk::Attachment {
        self.0.attachment
    }
    /// The VM the NIC belongs to.
    async fn vm(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<VmObject>> {
        let vm = api::load::<crate::vm::model::Entity>(ctx, Some(&self.0.vm_id)).await?;
        Ok(vm.map(VmObject))
    }
    /// The network the NIC is on.
    async fn network(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<NetworkObject>> {
        let network = api::load::<model::Entity>(ctx, Some(&self.0.network_id)).await?;
        Ok(network.map(NetworkObject))
    }
}

/// What the host shows of a network.
#[derive(SimpleObject)]
pub struct NetworkStatus {
    /// A link with the bridge's name exists.
    pub bridge_exists: bool,
    /// The bridge exists and is up.
    pub bridge_up: bool,
    /// With an uplink: its VLAN link exists, is up and is on the bridge. Null without one.
    pub vlan_link_ready: Option<bool>,
    /// Whether this host can make VLAN links (probed at start), and why (not).
    pub vlan_links: crate::host::Capability,
    /// What is wrong, in words; empty when the network is as vman made it.
    pub problems: Vec<String>,
}

/// A new network.
#[derive(InputObject)]
pub struct CreateNetworkInput {
    /// 1 to 63 characters: a lowercase letter, then lowercase letters, digits
    /// or `-`. Unique among networks.
    pub name: String,
    /// 1 to 4094, unique.
    pub vlan_id: i32,
    /// A host interface (at most 10 characters) whose `<uplink>.<vlanId>`
    /// VLAN link joins the bridge. Defaults to `network.uplink`; `""` asks for
    /// none (an isolated bridge). Needs 802.1Q support (see `health`).
    pub uplink: Option<String>,
}

/// The result of a NIC mutation; see `VmPayload` for `dryRun`. After
/// `detachNic` the NIC is gone (or DETACHING while the guest lets go).
#[derive(SimpleObject)]
pub struct NicPayload {
    /// The NIC after the mutation.
    pub nic: NicObject,
    /// The record of the host work; null with `dryRun: true`.
    pub operation: Option<OperationObject>,
    /// The host steps taken, or with `dryRun: true` those that would be.
    pub plan: Vec<PlanStep>,
}

impl From<Change<Nic>> for NicPayload {
    fn from(change: Change<Nic>) -> Self {
        NicPayload {
            nic: NicObject(change.object),
            operation: change.operation.map(OperationObject),
            plan: api::plan(&change.plan),
        }
    }
}

/// The result of a network mutation; see `VmPayload` for `dryRun`.
#[derive(SimpleObject)]
pub struct NetworkPayload {
    /// The network after the mutation (as it was, for `deleteNetwork`).
    pub network: NetworkObject,
    /// The record of the host work; null with `dryRun: true`.
    pub operation: Option<OperationObject>,
    /// The host steps taken, or with `dryRun: true` those that would be.
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
    /// All networks, oldest first.
    async fn networks(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "At most this many (default 50, at most 500).")] first: Option<i32>,
        #[graphql(desc = "Only those after this cursor (an `endCursor`).")] after: Option<String>,
    ) -> async_graphql::Result<Page<NetworkObject>> {
        let after = id_cursor(after).gql()?;
        page(
            &api::services(ctx).db,
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
        #[graphql(desc = "The network's ID; or give `name`.")] id: Option<ID>,
        #[graphql(desc = "The network's name; or give `id`.")] name: Option<String>,
    ) -> async_graphql::Result<Option<NetworkObject>> {
        let found = api::by_id_or_name::<model::Entity>(ctx, id, name, model::Column::Name).await?;
        Ok(found.map(NetworkObject))
    }
}

#[derive(Default)]
pub struct NetworkMutation;

#[Object]
impl NetworkMutation {
    /// Records a network, makes its bridge (with an uplink, its VLAN link too)
    /// and sets it up.
    async fn create_network(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What the network is.")] input: CreateNetworkInput,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<NetworkPayload> {
        let input = CreateNetwork {
            name: input.name,
            vlan_id: input.vlan_id,
            uplink: input.uplink,
        };
        Ok(super::create(api::services(ctx), input, dry_run)
            .await
            .gql()?
            .into())
    }

    /// Fails with CONFLICT while NICs use it.
    async fn delete_network(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The network's ID; or give `name`.")] id: Option<ID>,
        #[graphql(desc = "The network's name; or give `id`.")] name: Option<String>,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<NetworkPayload> {
        let id = network_id_of(ctx, ("id", id), ("name", name)).await?;
        Ok(super::delete(api::services(ctx), &id, dry_run)
            .await
            .gql()?
            .into())
    }

    /// A new NIC on a network: hot-plugged (tap, `netdev_add`, `device_add`)
    /// into a running VM, used from the next start otherwise. `mac` defaults
    /// to a generated locally administered one; `model` to `virtio-net-pci`
    /// (or `e1000e`).
    // One argument per GraphQL argument: the VM and the network each by ID
    // or by name.
    #[allow(clippy::too_many_arguments)]
    async fn attach_nic(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The VM's ID; or give `vmName`.")] vm_id: Option<ID>,
        #[graphql(desc = "The VM's name; or give `vmId`.")] vm_name: Option<String>,
        #[graphql(desc = "The network's ID; or give `networkName`.")] network_id: Option<ID>,
        #[graphql(desc = "The network's name; or give `networkId`.")] network_name: Option<String>,
        #[graphql(desc = "Six hex pairs joined by `:`, unicast, not all zeros, unused.")]
        mac: Option<String>,
        #[graphql(desc = "`virtio-net-pci` (the default) or `e1000e`.")] model: Option<String>,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<NicPayload> {
        let input = AttachNic {
            vm_id: crate::vm::graphql::vm_id(ctx, ("vmId", vm_id), ("vmName", vm_name)).await?,
            network_id: network_id_of(
                ctx,
                ("networkId", network_id),
                ("networkName", network_name),
            )
            .await?,
            mac,
            model,
        };
        Ok(super::nic::attach(api::services(ctx), input, dry_run)
            .await
            .gql()?
            .into())
    }

    /// Removes a NIC: unplugged from a running VM, its tap deleted.
    async fn detach_nic(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The NIC's ID.")] nic_id: ID,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<NicPayload> {
        Ok(super::nic::detach(api::services(ctx), &nic_id, dry_run)
            .await
            .gql()?
            .into())
    }
}

/// The network a mutation names by an ID argument or a name argument.
async fn network_id_of(
    ctx: &Context<'_>,
    id: (&str, Option<ID>),
    name: (&str, Option<String>),
) -> async_graphql::Result<String> {
    api::target::<model::Entity>(
        ctx,
        "network",
        id,
        name,
        (model::Column::Id, model::Column::Name),
    )
    .await
}
