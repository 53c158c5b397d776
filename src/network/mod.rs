//! Networks: a VLAN id and the bridge that carries it on this host, joined by
//! the uplink's `<uplink>.<vlan>` link when the network has an uplink; and
//! NICs ([`nic`]): a tap per NIC on its network's bridge.
//!
//! Interface names are always generated (bridge from the VLAN, VLAN link from
//! the uplink, tap from the VM and NIC position); the only name a user gives
//! is an uplink, which must exist and which vman only reads.

pub mod graphql;
pub mod model;
pub mod nic;

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, ModelTrait, PaginatorTrait,
    QueryFilter,
};

use crate::{
    context::Ctx,
    error::{ApiError, ApiResult},
    events::{NewEvent, Payload, find_in},
    host::{NetworkAction, VlanLink},
    operation::{self, Change, HostAction, OperationKind, Request, SubjectType},
    validate,
};
pub use model::{Model as Network, nic::Model as Nic};
pub use nic::{release_taps, tap_name};

pub struct CreateNetwork {
    pub name: String,
    pub vlan_id: i32,
    /// Overrides `network.uplink`; `Some("")` asks for no uplink.
    pub uplink: Option<String>,
}

/// The network's VLAN link on its uplink, if it has one.
pub fn vlan_link(network: &Network) -> Option<VlanLink> {
    network
        .uplink
        .as_deref()
        .map(|uplink| VlanLink::new(uplink, network.vlan_id as u16))
}

/// What makes (or repairs) a network on the host: the bridge, up, and the
/// VLAN link enslaved to it. Idempotent: the coherence sweep repeats it.
pub fn ensure_action(network: &Network) -> NetworkAction {
    NetworkAction::CreateNetwork {
        bridge: network.bridge.clone(),
        vlan_link: vlan_link(network),
    }
}

fn delete_action(network: &Network) -> NetworkAction {
    NetworkAction::DeleteNetwork {
        bridge: network.bridge.clone(),
        vlan_link: vlan_link(network).map(|l| l.name),
    }
}

async fn ensure_free(db: &impl ConnectionTrait, name: &str, vlan_id: i32) -> ApiResult<()> {
    if model::Entity::find()
        .filter(model::Column::Name.eq(name))
        .one(db)
        .await?
        .is_some()
    {
        return Err(ApiError::Conflict(format!(
            "a network named {name:?} already exists"
        )));
    }
    if let Some(other) = model::Entity::find()
        .filter(model::Column::VlanId.eq(vlan_id))
        .one(db)
        .await?
    {
        return Err(ApiError::Conflict(format!(
            "VLAN {vlan_id} is already used by network {:?}",
            other.name
        )));
    }
    Ok(())
}

/// An uplink must exist, must not be a link vman made (a bridge, a tap, a
/// VLAN link) and the host must be able to make VLAN links on it.
async fn check_uplink(app: &Ctx, uplink: &str) -> ApiResult<()> {
    validate::uplink(uplink)?;
    let bridges: Vec<String> = model::Entity::find()
        .all(&app.db)
        .await?
        .into_iter()
        .map(|n| n.bridge)
        .collect();
    let links = app.network.links().await?;
    match links.get(uplink) {
        None => {
            return Err(ApiError::bad_input(format!(
                "uplink {uplink:?} does not exist on this host"
            )));
        }
        Some(link) if link.owned || bridges.iter().any(|b| b == uplink) => {
            return Err(ApiError::bad_input(format!(
                "uplink {uplink:?} is a {} vman made; an uplink must be a host interface",
                link.kind.as_deref().unwrap_or("link")
            )));
        }
        Some(_) => {}
    }
    let vlan = app.network.capabilities().vlan_links;
    if !vlan.supported {
        return Err(ApiError::Host(format!(
            "this host cannot create 802.1Q VLAN links, which an uplink needs (capability vlanLinks: {}); create the network without an uplink",
            vlan.detail
        )));
    }
    Ok(())
}

pub async fn create(app: &Ctx, input: CreateNetwork, dry_run: bool) -> ApiResult<Change<Network>> {
    validate::name("name", &input.name)?;
    let vlan = validate::vlan_id(input.vlan_id)?;
    let uplink = match input.uplink {
        Some(uplink) if uplink.is_empty() => None,
        Some(uplink) => Some(uplink),
        None => app.config.network.uplink.clone(),
    };
    if let Some(uplink) = &uplink {
        validate::uplink(uplink)?;
    }
    ensure_free(&app.db, &input.name, input.vlan_id).await?;
    if let Some(uplink) = &uplink {
        check_uplink(app, uplink).await?;
    }
    let network = Network {
        id: uuid::Uuid::now_v7().to_string(),
        name: input.name,
        vlan_id: input.vlan_id,
        bridge: app.config.bridge_name(vlan),
        uplink,
        created_at: Utc::now(),
    };
    let action = ensure_action(&network);
    if dry_run {
        return Ok(Change::planned(network, app.network.plan(&action)));
    }
    let request = Request::new(
        OperationKind::CreateNetwork,
        SubjectType::Network,
        &network.id,
    );
    operation::run(app, request, async |env| {
        // Take back what was made (only vman's links: another's is refused).
        env.undo_with(HostAction::Network(delete_action(&network)));
        env.network(&action).await?;
        env.commit(async |w, op| {
            ensure_free(w.txn(), &network.name, network.vlan_id).await?;
            let network = model::ActiveModel::from(network.clone())
                .insert(w.txn())
                .await?;
            w.record(NewEvent::new(
                &network.id,
                Some(op),
                Payload::NetworkCreated {
                    name: network.name.clone(),
                    vlan_id: network.vlan_id,
                    bridge: network.bridge.clone(),
                    uplink: network.uplink.clone(),
                },
            ))
            .await?;
            Ok(network)
        })
        .await
    })
    .await
}

pub async fn delete(app: &Ctx, id: &str, dry_run: bool) -> ApiResult<Change<Network>> {
    let id = validate::id("id", id)?;
    let network = find_in::<model::Entity, _>(&app.db, "network", &id).await?;
    let nics = model::nic::Entity::find()
        .filter(model::nic::Column::NetworkId.eq(&id))
        .count(&app.db)
        .await?;
    if nics > 0 {
        return Err(ApiError::Conflict(format!(
            "network {:?} is used by {nics} NIC(s)",
            network.name
        )));
    }
    let action = delete_action(&network);
    if dry_run {
        return Ok(Change::planned(network, app.network.plan(&action)));
    }
    let request = Request::new(OperationKind::DeleteNetwork, SubjectType::Network, &id);
    operation::run(app, request, async |env| {
        env.network(&action).await?;
        // Checked again in the write: a NIC attached meanwhile keeps the
        // network, and its links are made again.
        env.undo_with(HostAction::Network(ensure_action(&network)));
        env.commit(async |w, op| {
            let nics = model::nic::Entity::find()
                .filter(model::nic::Column::NetworkId.eq(&id))
                .count(w.txn())
                .await?;
            if nics > 0 {
                return Err(ApiError::Conflict(format!(
                    "network {:?} is used by {nics} NIC(s)",
                    network.name
                )));
            }
            network.clone().delete(w.txn()).await?;
            w.record(NewEvent::new(
                &network.id,
                Some(op),
                Payload::NetworkDeleted {
                    name: network.name.clone(),
                    vlan_id: network.vlan_id,
                },
            ))
            .await?;
            Ok(network.clone())
        })
        .await
    })
    .await
}
