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
    /// Free text; empty when none was given.
    pub description: String,
    /// Changes that wait for the VM's next start (`vcpus`, `memoryMib`), as
    /// [`super::update::Pending`] JSON; null when none wait.
    pub pending_changes: Option<Json>,
    /// The ISO image in its CD-ROM drive; null when the drive is empty.
    pub cdrom_image_id: Option<String>,
    /// Its boot order (`CDROM,DISK`); null:
    /// the firmware's own.
    pub boot_order: Option<String>,
    /// The host that runs it (`cluster`); null only before the first node
    /// that starts on the database claims it.
    pub host_id: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
