use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "disks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(unique)]
    pub name: String,
    pub format: DiskFormat,
    pub size_bytes: i64,
    pub vm_id: Option<String>,
    pub attachment: Attachment,
    pub backing_template_id: Option<String>,
    /// The frozen base it is a qcow2 overlay on (a linked clone's, or its
    /// source's since the clone): a row of `disk_bases`.
    pub base_id: Option<String>,
    /// The host whose storage holds its file: the host of the node that
    /// made it (an attached disk's is its VM's). Null: made before hosts
    /// (every node takes it for its own).
    pub host_id: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

/// A disk file's format.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    EnumIter,
    DeriveActiveEnum,
    async_graphql::Enum,
    Serialize,
    Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum DiskFormat {
    /// QEMU's copy-on-write format: the file grows as the guest writes.
    #[sea_orm(string_value = "QCOW2")]
    #[graphql(name = "QCOW2")]
    #[serde(rename = "qcow2")]
    Qcow2,
    /// A plain image, byte for byte what the guest sees.
    #[sea_orm(string_value = "RAW")]
    #[serde(rename = "raw")]
    Raw,
}

impl DiskFormat {
    /// The name QEMU and qemu-img use.
    pub fn qemu_name(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// Whether a disk or NIC is part of a VM.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    EnumIter,
    DeriveActiveEnum,
    async_graphql::Enum,
    Serialize,
    Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Attachment {
    /// Not part of any VM.
    #[sea_orm(string_value = "DETACHED")]
    Detached,
    /// Part of a VM: plugged in while it runs, passed at its next start otherwise.
    #[sea_orm(string_value = "ATTACHED")]
    Attached,
    /// Not used: a hot-plug finishes within its mutation.
    #[sea_orm(string_value = "ATTACHING")]
    Attaching,
    /// Unplug requested; waiting for the guest to let go.
    #[sea_orm(string_value = "DETACHING")]
    Detaching,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
