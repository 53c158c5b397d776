//! `node(id)`: IDs are UUIDs unique across all types, so the lookup tries each table.

use async_graphql::{Context, ID, Interface, Object};
use sea_orm::EntityTrait;

use crate::{
    disk::graphql::DiskObject,
    error::{ApiResult, ResultExt},
    image::graphql::ImageObject,
    network::graphql::{NetworkObject, NicObject},
    operation::graphql::OperationObject,
    template::graphql::TemplateObject,
    validate,
    vm::graphql::VmObject,
};

/// An object with an ID, which `node(id)` finds.
#[derive(Interface)]
#[graphql(field(name = "id", ty = "ID", desc = "A UUID, unique across all objects."))]
pub enum Node {
    Template(TemplateObject),
    Vm(VmObject),
    Disk(DiskObject),
    Network(NetworkObject),
    Nic(NicObject),
    Image(ImageObject),
    Operation(OperationObject),
}

#[derive(Default)]
pub struct NodeQuery;

#[Object]
impl NodeQuery {
    /// Any object by its ID.
    async fn node(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The object's ID.")] id: ID,
    ) -> async_graphql::Result<Option<Node>> {
        find(ctx, &id).await.gql()
    }
}

async fn find(ctx: &Context<'_>, id: &str) -> ApiResult<Option<Node>> {
    let id = validate::id("id", id)?;
    let db = &super::services(ctx).db;
    if let Some(m) = crate::vm::model::Entity::find_by_id(id.clone())
        .one(db)
        .await?
    {
        return Ok(Some(Node::Vm(VmObject(m))));
    }
    if let Some(m) = crate::template::model::Entity::find_by_id(id.clone())
        .one(db)
        .await?
    {
        return Ok(Some(Node::Template(TemplateObject(m))));
    }
    if let Some(m) = crate::disk::model::Entity::find_by_id(id.clone())
        .one(db)
        .await?
    {
        return Ok(Some(Node::Disk(DiskObject(m))));
    }
    if let Some(m) = crate::network::model::Entity::find_by_id(id.clone())
        .one(db)
        .await?
    {
        return Ok(Some(Node::Network(NetworkObject(m))));
    }
    if let Some(m) = crate::network::model::nic::Entity::find_by_id(id.clone())
        .one(db)
        .await?
    {
        return Ok(Some(Node::Nic(NicObject(m))));
    }
    if let Some(m) = crate::image::model::Entity::find_by_id(id.clone())
        .one(db)
        .await?
    {
        return Ok(Some(Node::Image(ImageObject(m))));
    }
    if let Some(m) = crate::operation::model::Entity::find_by_id(id)
        .one(db)
        .await?
    {
        return Ok(Some(Node::Operation(OperationObject(m))));
    }
    Ok(None)
}
