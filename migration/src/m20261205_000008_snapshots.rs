//! Snapshots of whole VMs: one row per snapshot, with the disks it covers
//! (internal qcow2 snapshots tagged with the row's id in each disk's file).
//! A snapshot's name is unique within its VM. A snapshot with memory keeps
//! the QEMU command line its memory was saved from: it loads only into one
//! started the same way.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Snapshots::Table)
                .col(string(Snapshots::Id).primary_key())
                .col(string(Snapshots::VmId))
                .col(string(Snapshots::Name))
                .col(boolean(Snapshots::WithMemory))
                .col(string(Snapshots::VmState))
                .col(json(Snapshots::DiskIds))
                .col(integer(Snapshots::Vcpus))
                .col(big_integer(Snapshots::MemoryMib))
                .col(json_null(Snapshots::Machine))
                .col(timestamp_with_time_zone(Snapshots::CreatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Snapshots::Table, Snapshots::VmId)
                        .to(Vms::Table, Vms::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_snapshots_vm_name")
                .table(Snapshots::Table)
                .col(Snapshots::VmId)
                .col(Snapshots::Name)
                .unique()
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(Snapshots::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Vms {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Snapshots {
    Table,
    Id,
    VmId,
    Name,
    WithMemory,
    VmState,
    DiskIds,
    Vcpus,
    MemoryMib,
    Machine,
    CreatedAt,
}
