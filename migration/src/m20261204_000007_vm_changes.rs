//! What can change on a VM after it is made: a description, tags (a table
//! of their own, indexed by tag for `vms(tag:)`), and the changes that wait
//! for its next start. An index for listing VMs by state.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Vms::Table)
                .add_column(text(Vms::Description).default(""))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Vms::Table)
                .add_column(json_null(Vms::PendingChanges))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(VmTags::Table)
                .col(string(VmTags::VmId))
                .col(string(VmTags::Tag))
                .primary_key(Index::create().col(VmTags::VmId).col(VmTags::Tag))
                .foreign_key(
                    ForeignKey::create()
                        .from(VmTags::Table, VmTags::VmId)
                        .to(Vms::Table, Vms::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_vm_tags_tag")
                .table(VmTags::Table)
                .col(VmTags::Tag)
                .col(VmTags::VmId)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_vms_state")
                .table(Vms::Table)
                .col(Vms::State)
                .col(Vms::Id)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("idx_vms_state")
                .table(Vms::Table)
                .to_owned(),
        )
        .await?;
        m.drop_table(Table::drop().table(VmTags::Table).to_owned())
            .await?;
        for column in [Vms::PendingChanges, Vms::Description] {
            m.alter_table(
                Table::alter()
                    .table(Vms::Table)
                    .drop_column(column)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Vms {
    Table,
    Id,
    State,
    Description,
    PendingChanges,
}

#[derive(DeriveIden)]
enum VmTags {
    Table,
    VmId,
    Tag,
}
