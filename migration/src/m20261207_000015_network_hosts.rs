//! Networks on hosts (issue 21): a network is the cluster's (its VLAN id
//! unique in the cluster), its bridge is made on each host that needs it.
//! `network_hosts` records which hosts have it made, with the names of
//! the links there, so that a host whose network was deleted through
//! another node can still take its own bridge down. Rows from before are
//! claimed by the first node that starts (`cluster::register`).
//!
//! A coherence issue is one host's too: each node's sweep opens and
//! resolves only its own host's issues.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // No foreign key to `networks`: a row outlives its network until its
        // own host's node has taken the bridge down.
        m.create_table(
            Table::create()
                .table(NetworkHosts::Table)
                .col(string(NetworkHosts::NetworkId))
                .col(string(NetworkHosts::HostId))
                .col(string(NetworkHosts::Bridge))
                .col(string_null(NetworkHosts::VlanLink))
                .col(timestamp_with_time_zone(NetworkHosts::CreatedAt))
                .primary_key(
                    Index::create()
                        .col(NetworkHosts::NetworkId)
                        .col(NetworkHosts::HostId),
                )
                .to_owned(),
        )
        .await?;
        // A node's own bridges (the sweep, `Network.hosts`).
        m.create_index(
            Index::create()
                .name("idx_network_hosts_host")
                .table(NetworkHosts::Table)
                .col(NetworkHosts::HostId)
                .col(NetworkHosts::NetworkId)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Alias::new("coherence_issues"))
                .add_column(string_null(Alias::new("host_id")))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Alias::new("coherence_issues"))
                .drop_column(Alias::new("host_id"))
                .to_owned(),
        )
        .await?;
        m.drop_table(Table::drop().table(NetworkHosts::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum NetworkHosts {
    Table,
    NetworkId,
    HostId,
    Bridge,
    VlanLink,
    CreatedAt,
}
