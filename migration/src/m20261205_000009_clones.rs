//! Long operations and linked clones: the last progress a long operation
//! reported (kept on its record once it ends), the frozen bases that linked
//! clones share, and which base each disk is an overlay on.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Operations::Table)
                .add_column(json_null(Operations::Progress))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(DiskBases::Table)
                .col(string(DiskBases::Id).primary_key())
                .col(string(DiskBases::Format))
                .col(big_integer(DiskBases::SizeBytes))
                .col(string(DiskBases::SourceDiskId))
                .col(string_null(DiskBases::ParentBaseId))
                .col(timestamp_with_time_zone(DiskBases::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Disks::Table)
                .add_column(string_null(Disks::BaseId))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_disks_base_id")
                .table(Disks::Table)
                .col(Disks::BaseId)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("idx_disks_base_id")
                .table(Disks::Table)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Disks::Table)
                .drop_column(Disks::BaseId)
                .to_owned(),
        )
        .await?;
        m.drop_table(Table::drop().table(DiskBases::Table).to_owned())
            .await?;
        m.alter_table(
            Table::alter()
                .table(Operations::Table)
                .drop_column(Operations::Progress)
                .to_owned(),
        )
        .await
    }
}

#[derive(DeriveIden)]
enum Operations {
    Table,
    Progress,
}

#[derive(DeriveIden)]
enum DiskBases {
    Table,
    Id,
    Format,
    SizeBytes,
    SourceDiskId,
    ParentBaseId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Disks {
    Table,
    BaseId,
}
