//! Networks and NICs on the host: a network's optional uplink (the parent of
//! its `<uplink>.<vlan>` link), a NIC's tap and whether it is attached or on
//! its way out (a live unplug the guest has not acknowledged yet).
//!
//! SQLite adds one column per `ALTER TABLE` and cannot add a UNIQUE column,
//! so a tap's uniqueness is an index.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Networks::Table)
                .add_column(string_null(Networks::Uplink))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Nics::Table)
                .add_column(string_null(Nics::Tap))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Nics::Table)
                .add_column(string(Nics::Attachment).default("ATTACHED"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_nics_tap")
                .table(Nics::Table)
                .col(Nics::Tap)
                .unique()
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("idx_nics_tap")
                .table(Nics::Table)
                .to_owned(),
        )
        .await?;
        for column in [Nics::Attachment, Nics::Tap] {
            m.alter_table(
                Table::alter()
                    .table(Nics::Table)
                    .drop_column(column)
                    .to_owned(),
            )
            .await?;
        }
        m.alter_table(
            Table::alter()
                .table(Networks::Table)
                .drop_column(Networks::Uplink)
                .to_owned(),
        )
        .await
    }
}

#[derive(DeriveIden)]
enum Networks {
    Table,
    Uplink,
}

#[derive(DeriveIden)]
enum Nics {
    Table,
    Tap,
    Attachment,
}
