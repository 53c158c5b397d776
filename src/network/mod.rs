//! Networks: a VLAN id and the bridge that carries it on a host, joined by
//! the uplink's `<uplink>.<vlan>` link when the network has an uplink; and
//! NICs ([`nic`]): a tap per NIC on its network's bridge.
//!
//! A network is the cluster's (its name and VLAN id unique in it); its
//! bridge is made on the host of the node it is created through, and on
//! each host a NIC on it is attached on (`network_hosts` records where:
//! [`model::on_host`]). Each node makes, judges and takes down the bridges
//! of its own host only: a network deleted through another node leaves its
//! bridge here until this node's next sweep ([`take_down_leftovers`]).
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
pub use model::{Model as Network, nic::Model as Nic, on_host::Model as NetworkHost};
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

/// Whether `network`'s bridge is made on host `host_id`.
pub async fn made_on(
    db: &impl ConnectionTrait,
    network_id: &str,
    host_id: &str,
) -> ApiResult<bool> {
    Ok(
        model::on_host::Entity::find_by_id((network_id.to_string(), host_id.to_string()))
            .one(db)
            .await?
            .is_some(),
    )
}

/// Records (in `db`, a write's transaction) that `network`'s bridge is
/// made on host `host_id`; nothing when it is already.
pub(crate) async fn record_made_on(
    db: &impl ConnectionTrait,
    network: &Network,
    host_id: &str,
) -> ApiResult<()> {
    if made_on(db, &network.id, host_id).await? {
        return Ok(());
    }
    model::on_host::ActiveModel::from(NetworkHost {
        network_id: network.id.clone(),
        host_id: host_id.to_string(),
        bridge: network.bridge.clone(),
        vlan_link: vlan_link(network).map(|l| l.name),
        created_at: Utc::now(),
    })
    .insert(db)
    .await?;
    Ok(())
}

/// The networks whose bridge is made on host `host_id` (the ones its sweep judges).
pub async fn made_on_host(db: &impl ConnectionTrait, host_id: &str) -> ApiResult<Vec<Network>> {
    let ids: Vec<String> = model::on_host::Entity::find()
        .filter(model::on_host::Column::HostId.eq(host_id))
        .all(db)
        .await?
        .into_iter()
        .map(|row| row.network_id)
        .collect();
    Ok(model::Entity::find()
        .filter(model::Column::Id.is_in(ids))
        .all(db)
        .await?)
}

/// Claims for host `host_id` the networks no host has (made before hosts
/// were recorded): their bridges are this host's.
pub(crate) async fn claim_unplaced(db: &impl ConnectionTrait, host_id: &str) -> ApiResult<u64> {
    let placed: std::collections::HashSet<String> = model::on_host::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|row| row.network_id)
        .collect();
    let mut claimed = 0;
    for network in model::Entity::find().all(db).await? {
        if !placed.contains(&network.id) {
            record_made_on(db, &network, host_id).await?;
            claimed += 1;
        }
    }
    Ok(claimed)
}

/// Takes down this host's links of the networks deleted through another
/// node (their `network_hosts` row outlives them for this), and forgets
/// them. A link that cannot be taken down stays recorded, for the next sweep.
pub async fn take_down_leftovers(app: &Ctx) -> ApiResult<()> {
    let rows = model::on_host::Entity::find()
        .filter(model::on_host::Column::HostId.eq(&*app.host_id))
        .all(&app.db)
        .await?;
    let existing: std::collections::HashSet<String> = model::Entity::find()
        .filter(model::Column::Id.is_in(rows.iter().map(|r| r.network_id.clone())))
        .all(&app.db)
        .await?
        .into_iter()
        .map(|n| n.id)
        .collect();
    for row in rows
        .into_iter()
        .filter(|r| !existing.contains(&r.network_id))
    {
        let action = NetworkAction::DeleteNetwork {
            bridge: row.bridge.clone(),
            vlan_link: row.vlan_link.clone(),
        };
        match app.network.execute(&action).await {
            Ok(_) => {
                tracing::info!(network = %row.network_id, bridge = %row.bridge, "took down the bridge of a network deleted through another node");
                row.delete(&app.db).await?;
            }
            Err(e) => {
                tracing::warn!(network = %row.network_id, bridge = %row.bridge, error = %e, "taking down the bridge of a deleted network")
            }
        }
    }
    Ok(())
}

pub(crate) fn delete_action(network: &Network) -> NetworkAction {
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
            record_made_on(w.txn(), &network, &app.host_id).await?;
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
    // This node takes down its own host's links; the other hosts' nodes
    // take down theirs at their next sweep.
    let here = made_on(&app.db, &id, &app.host_id)
        .await?
        .then(|| delete_action(&network));
    if dry_run {
        let plan = here.iter().flat_map(|a| app.network.plan(a)).collect();
        return Ok(Change::planned(network, plan));
    }
    let request = Request::new(OperationKind::DeleteNetwork, SubjectType::Network, &id);
    operation::run(app, request, async |env| {
        if let Some(action) = &here {
            env.network(action).await?;
            // Checked again in the write: a NIC attached meanwhile keeps the
            // network, and its links are made again.
            env.undo_with(HostAction::Network(ensure_action(&network)));
        }
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
            model::on_host::Entity::delete_by_id((network.id.clone(), app.host_id.to_string()))
                .exec(w.txn())
                .await?;
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
