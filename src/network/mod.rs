//! Networks: a VLAN id and the bridge that carries it on this host.

pub mod graphql;
pub mod model;

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, ModelTrait, PaginatorTrait,
    QueryFilter,
};
use serde_json::json;

use crate::{
    app::App,
    error::{ApiError, ApiResult},
    events::{EventKind, NewEvent, find_in},
    host::NetworkAction,
    operation::{self, Change},
    validate,
};
pub use model::{Model as Network, nic::Model as Nic};

pub struct CreateNetwork {
    pub name: String,
    pub vlan_id: i32,
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

pub async fn create(app: &App, input: CreateNetwork, dry_run: bool) -> ApiResult<Change<Network>> {
    validate::name("name", &input.name)?;
    let vlan = validate::vlan_id(input.vlan_id)?;
    ensure_free(&app.db, &input.name, input.vlan_id).await?;
    let network = Network {
        id: uuid::Uuid::now_v7().to_string(),
        name: input.name,
        vlan_id: input.vlan_id,
        bridge: app.config.bridge_name(vlan),
        created_at: Utc::now(),
    };
    let action = NetworkAction::CreateNetwork {
        bridge: network.bridge.clone(),
    };
    if dry_run {
        return Ok(Change::planned(network, app.network.plan(&action)));
    }
    let op = operation::begin(
        app,
        &operation::new_id(),
        "CREATE_NETWORK",
        "Network",
        &network.id,
    )
    .await?;
    let result = async {
        let steps = app.network.execute(&action).await?.steps;
        let written = async {
            let mut w = app.bus.writer().await?;
            ensure_free(w.txn(), &network.name, network.vlan_id).await?;
            let network = model::ActiveModel::from(network.clone()).insert(w.txn()).await?;
            w.record(NewEvent {
                kind: EventKind::NetworkCreated,
                subject_id: network.id.clone(),
                subject_type: "Network",
                operation_id: Some(op.id.clone()),
                payload: json!({"name": network.name, "vlanId": network.vlan_id, "bridge": network.bridge}),
            })
            .await?;
            w.commit().await?;
            ApiResult::Ok(network)
        }
        .await;
        if written.is_err() {
            let undo = NetworkAction::DeleteNetwork {
                bridge: network.bridge.clone(),
            };
            if let Err(e) = app.network.execute(&undo).await {
                tracing::error!(error = %e, bridge = %network.bridge, "removing the bridge of a failed createNetwork");
            }
        }
        ApiResult::Ok((written?, steps))
    }
    .await;
    operation::conclude(app, op, result).await
}

pub async fn delete(app: &App, id: &str, dry_run: bool) -> ApiResult<Change<Network>> {
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
    let action = NetworkAction::DeleteNetwork {
        bridge: network.bridge.clone(),
    };
    if dry_run {
        return Ok(Change::planned(network, app.network.plan(&action)));
    }
    let op = operation::begin(app, &operation::new_id(), "DELETE_NETWORK", "Network", &id).await?;
    let result = async {
        let steps = app.network.execute(&action).await?.steps;
        let mut w = app.bus.writer().await?;
        network.clone().delete(w.txn()).await?;
        w.record(NewEvent {
            kind: EventKind::NetworkDeleted,
            subject_id: network.id.clone(),
            subject_type: "Network",
            operation_id: Some(op.id.clone()),
            payload: json!({"name": network.name, "vlanId": network.vlan_id}),
        })
        .await?;
        w.commit().await?;
        ApiResult::Ok((network.clone(), steps))
    }
    .await;
    operation::conclude(app, op, result).await
}
