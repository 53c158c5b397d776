//! The host action an operation failed at (`createDisk`, `start`,
//! `ensureTap`, …), so a failure says where it happened, not only what.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Operations::Table)
                .add_column(string_null(Operations::FailedStep))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Operations::Table)
                .drop_column(Operations::FailedStep)
                .to_owned(),
        )
        .await
    }
}

#[derive(DeriveIden)]
enum Operations {
    Table,
    FailedStep,
}
