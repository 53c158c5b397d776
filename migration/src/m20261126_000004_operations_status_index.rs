//! The coherence sweep asks, every interval, which operations are still
//! unfinished: an index on `status` keeps that a lookup, not a scan of every
//! operation ever recorded.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create()
                .name("idx_operations_status")
                .table(Operations::Table)
                .col(Operations::Status)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(Index::drop().name("idx_operations_status").to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Operations {
    Table,
    Status,
}
