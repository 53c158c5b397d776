//! Networks on hosts (issue 21): a network is the cluster's (its VLAN id
//! unique in the cluster), its bridge is made on each host that needs it.
//! `network_hosts` records which hosts have it made, with the names of
//! the links there, so that a host whose network was deleted through
//! another node can still take its own bridge down. Rows from before are
//! claimed by the first node that starts (`cluster::register`).
//!
//! A coherence issue is one host's too: each node's sweep opens and
//! resolves only its own host's issues, and one is open per kind, subject
//! and host (a network's bridge can be missing on two hosts at once).

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
        .await?;
        // One open issue per (kind, subject) *and host*: a network's bridge
        // can be missing on two hosts at once. (A row from before hosts,
        // host_id null, still has one: nulls would be distinct in the index.)
        open_issue_index(m, "COALESCE(host_id, ''), kind, subject_id").await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        open_issue_index(m, "kind, subject_id").await?;
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

/// (Re)makes the partial unique index that keeps one open issue per `columns`
/// (plain SQL, the same on SQLite and PostgreSQL, as migration 2 made it).
async fn open_issue_index(m: &SchemaManager<'_>, columns: &str) -> Result<(), DbErr> {
    // One script: as two calls, SQLite answered the CREATE with "index
    // already exists" right after the DROP had succeeded (sqlx's statement
    // log shows both), and the migration failed.
    m.get_connection()
        .execute_unprepared(&format!(
            "DROP INDEX IF EXISTS idx_coherence_issues_open; \
             CREATE UNIQUE INDEX idx_coherence_issues_open \
             ON coherence_issues ({columns}) WHERE resolved_at IS NULL"
        ))
        .await?;
    Ok(())
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
