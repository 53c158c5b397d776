//! API tokens (only a hash of each secret is kept) and the actor of each
//! operation: the token's name, `local` without auth, or `vman` for what vman
//! does by itself.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(ApiTokens::Table)
                .col(string(ApiTokens::Id).primary_key())
                .col(string_uniq(ApiTokens::Name))
                .col(string(ApiTokens::Role))
                // The public part of the secret, to find the row by.
                .col(string_uniq(ApiTokens::Lookup))
                // SHA-256 of the whole secret, hex.
                .col(string(ApiTokens::Hash))
                .col(timestamp_with_time_zone(ApiTokens::CreatedAt))
                .col(timestamp_with_time_zone_null(ApiTokens::ExpiresAt))
                .col(string(ApiTokens::CreatedBy))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Operations::Table)
                .add_column(string(Operations::Actor).default("local"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_operations_actor")
                .table(Operations::Table)
                .col(Operations::Actor)
                .col(Operations::Id)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("idx_operations_actor")
                .table(Operations::Table)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Operations::Table)
                .drop_column(Operations::Actor)
                .to_owned(),
        )
        .await?;
        m.drop_table(Table::drop().table(ApiTokens::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    Id,
    Name,
    Role,
    Lookup,
    Hash,
    CreatedAt,
    ExpiresAt,
    CreatedBy,
}

#[derive(DeriveIden)]
enum Operations {
    Table,
    Id,
    Actor,
}
