//! A VM's tags: a table of their own, so that `vms(tag:)` is an index lookup.

use std::collections::HashMap;

use sea_orm::{ActiveValue::Set, ConnectionTrait, QueryOrder, entity::prelude::*};

use crate::error::ApiResult;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "vm_tags")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub vm_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub tag: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// A VM's tags, sorted.
pub async fn of(db: &impl ConnectionTrait, vm_id: &str) -> ApiResult<Vec<String>> {
    Ok(Entity::find()
        .filter(Column::VmId.eq(vm_id))
        .order_by_asc(Column::Tag)
        .all(db)
        .await?
        .into_iter()
        .map(|t| t.tag)
        .collect())
}

/// The tags of many VMs at once, sorted per VM.
pub async fn of_many(
    db: &impl ConnectionTrait,
    vm_ids: &[String],
) -> ApiResult<HashMap<String, Vec<String>>> {
    let mut tags: HashMap<String, Vec<String>> = HashMap::new();
    for row in Entity::find()
        .filter(Column::VmId.is_in(vm_ids.iter().cloned()))
        // The primary key's order: one walk of it, no sort.
        .order_by_asc(Column::VmId)
        .order_by_asc(Column::Tag)
        .all(db)
        .await?
    {
        tags.entry(row.vm_id).or_default().push(row.tag);
    }
    Ok(tags)
}

/// Replaces a VM's tags (already checked by [`super::update::check_tags`]).
pub async fn set(db: &impl ConnectionTrait, vm_id: &str, tags: &[String]) -> ApiResult<()> {
    Entity::delete_many()
        .filter(Column::VmId.eq(vm_id))
        .exec(db)
        .await?;
    if !tags.is_empty() {
        Entity::insert_many(tags.iter().map(|tag| ActiveModel {
            vm_id: Set(vm_id.to_string()),
            tag: Set(tag.clone()),
        }))
        .exec(db)
        .await?;
    }
    Ok(())
}
