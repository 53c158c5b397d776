//! Images and disks belong to a host (issue 21): their files exist only in
//! the storage of the node that made them. Adds a nullable `host_id` to
//! `images` and `disks`.
//!
//! Existing rows: on a database with exactly one registered host, they are
//! that host's (every file was made by its node). On one with several hosts
//! (a cluster that ran migration 13 before this one), an attached disk is
//! its VM's host's; an unattached disk and an image cannot be placed and
//! stay null. On one with no host yet (migrations 13 and 14 at once), they
//! stay null and the first node that registers as the only host claims
//! them (`cluster::register`), as it claims the VMs. A null `host_id` means
//! "made before hosts": every node takes such a row for its own (the sweep
//! judges it, placement does not count it against any host).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

const TABLES: [&str; 2] = ["images", "disks"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in TABLES {
            m.alter_table(
                Table::alter()
                    .table(Alias::new(table))
                    .add_column(string_null(Alias::new("host_id")))
                    .to_owned(),
            )
            .await?;
            // A node's own images and disks (the sweep), and placement.
            m.create_index(
                Index::create()
                    .name(format!("idx_{table}_host"))
                    .table(Alias::new(table))
                    .col(Alias::new("host_id"))
                    .col(Alias::new("id"))
                    .to_owned(),
            )
            .await?;
        }
        let db = m.get_connection();
        let hosts = db
            .query_all(
                Query::select()
                    .column(Alias::new("id"))
                    .from(Alias::new("hosts"))
                    .limit(2),
            )
            .await?;
        match &hosts[..] {
            [only] => {
                let id: String = only.try_get("", "id")?;
                for table in TABLES {
                    let fill = Query::update()
                        .table(Alias::new(table))
                        .value(Alias::new("host_id"), id.clone())
                        .and_where(Expr::col(Alias::new("host_id")).is_null())
                        .to_owned();
                    db.execute(&fill).await?;
                }
            }
            [] => {}
            _ => {
                // Plain SQL that SQLite and PostgreSQL both take.
                db.execute_unprepared(
                    "UPDATE disks SET host_id = \
                     (SELECT vms.host_id FROM vms WHERE vms.id = disks.vm_id) \
                     WHERE host_id IS NULL AND vm_id IS NOT NULL",
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in TABLES {
            m.drop_index(
                Index::drop()
                    .name(format!("idx_{table}_host"))
                    .table(Alias::new(table))
                    .to_owned(),
            )
            .await?;
            m.alter_table(
                Table::alter()
                    .table(Alias::new(table))
                    .drop_column(Alias::new("host_id"))
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
