use sea_orm::entity::prelude::*;

/// A file imported into storage that templates build on: a base disk image,
/// a kernel or an initrd.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "images")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(unique)]
    pub name: String,
    pub kind: ImageKind,
    pub format: Option<crate::disk::model::DiskFormat>,
    pub size_bytes: i64,
    /// The host whose storage holds its file: the host of the node that
    /// made it. Null: made before hosts (every node takes it for its own).
    pub host_id: Option<String>,
    pub created_at: DateTimeUtc,
}

/// What an image is for.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    EnumIter,
    DeriveActiveEnum,
    async_graphql::Enum,
    serde::Serialize,
    serde::Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum ImageKind {
    /// A qcow2 or raw disk image that templates use as a base image.
    #[sea_orm(string_value = "DISK")]
    Disk,
    /// A Linux kernel for direct boot.
    #[sea_orm(string_value = "KERNEL")]
    Kernel,
    /// An initial ramdisk for direct boot.
    #[sea_orm(string_value = "INITRD")]
    Initrd,
    /// A CD-ROM image (ISO 9660) for a VM's CD-ROM drive: install media.
    /// Always read-only.
    #[sea_orm(string_value = "ISO")]
    Iso,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
