use sea_orm::entity::prelude::*;

use crate::vm::VmState;

/// One snapshot of a VM: an internal qcow2 snapshot, tagged with this row's
/// id, in the file of each disk the VM had when it was taken (`disk_ids`),
/// and its memory in the first of them when `with_memory`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "snapshots")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub vm_id: String,
    /// Unique within its VM.
    pub name: String,
    pub with_memory: bool,
    /// The VM's state when it was taken.
    pub vm_state: VmState,
    /// The ids of the disks it covers, in the VM's disk order (a JSON array).
    pub disk_ids: Json,
    /// The VM's CPU count and memory when it was taken: its memory loads
    /// only into a VM of the same shape.
    pub vcpus: i32,
    pub memory_mib: i64,
    /// With memory: the command line of the QEMU it was saved from (a JSON
    /// array, without `-loadvm`); its memory loads only into a QEMU started
    /// the same way. Null without memory, or when the port cannot tell.
    pub machine: Option<Json>,
    pub created_at: DateTimeUtc,
}

impl Model {
    /// The ids of the disks it covers, in order.
    pub fn disks(&self) -> Vec<String> {
        serde_json::from_value(self.disk_ids.clone()).unwrap_or_default()
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
