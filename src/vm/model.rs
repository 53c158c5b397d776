use sea_orm::entity::prelude::*;

use super::state::VmState;

/// A VM row holds what the user asked for (`desired_state`) and what the host
/// was last seen doing (`state`, written through `vm::transition`).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "vms")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(unique)]
    pub name: String,
    pub template_id: Option<String>,
    pub vcpus: i32,
    pub memory_mib: i64,
    pub desired_state: VmState,
    pub state: VmState,
    pub state_reason: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
