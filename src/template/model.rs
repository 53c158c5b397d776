use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "templates")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(unique)]
    pub name: String,
    pub description: String,
    pub vcpus: i32,
    pub memory_mib: i64,
    pub base_image_id: Option<String>,
    pub kernel_image_id: Option<String>,
    pub initrd_image_id: Option<String>,
    pub cmdline: Option<String>,
    pub default_disk_size_bytes: Option<i64>,
    /// The boot order its VMs get (as `CDROM,DISK`); null:
    /// the firmware's own.
    pub boot_order: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
