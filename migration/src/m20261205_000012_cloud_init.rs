//! cloud-init NoCloud data of VMs (issue 19): a table of its own, one row
//! per VM that has any, so that lists of VMs do not read user data.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(VmCloudInit::Table)
                .col(string(VmCloudInit::VmId).primary_key())
                .col(string(VmCloudInit::InstanceId))
                .col(json(VmCloudInit::Data))
                .foreign_key(
                    ForeignKey::create()
                        .from(VmCloudInit::Table, VmCloudInit::VmId)
                        .to(Vms::Table, Vms::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(VmCloudInit::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum VmCloudInit {
    Table,
    VmId,
    InstanceId,
    Data,
}

#[derive(DeriveIden)]
enum Vms {
    Table,
    Id,
}
