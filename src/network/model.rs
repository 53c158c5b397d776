use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "networks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(unique)]
    pub name: String,
    #[sea_orm(unique)]
    pub vlan_id: i32,
    #[sea_orm(unique)]
    pub bridge: String,
    /// The host interface whose `<uplink>.<vlan>` link joins the bridge; None: isolated.
    pub uplink: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

pub mod nic {
    use sea_orm::entity::prelude::*;

    pub use crate::disk::model::Attachment;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "nics")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub vm_id: String,
        pub network_id: String,
        #[sea_orm(unique)]
        pub mac: String,
        pub model: String,
        pub position: i32,
        /// The host tap, named from the VM and the position (see `network::tap_name`).
        #[sea_orm(unique)]
        pub tap: Option<String>,
        /// `ATTACHED`, or `DETACHING` while a live unplug waits for the guest.
        pub attachment: Attachment,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A host a network's bridge is made on (`network_hosts`): the host of the
/// node it was created through, and each host a NIC on it was attached on.
/// The link names are kept so that the host's node can take them down after
/// the network is deleted through another node.
pub mod on_host {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "network_hosts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub network_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub host_id: String,
        pub bridge: String,
        pub vlan_link: Option<String>,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
