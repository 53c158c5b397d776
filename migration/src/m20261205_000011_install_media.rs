//! Install media and boot order (issue 19): the ISO image in a VM's CD-ROM
//! drive (recorded for its next start; a running VM's is changed live), and
//! the boot order of VMs and templates (`CDROM,DISK`; null: the firmware's
//! own order).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER TABLE.
        m.alter_table(
            Table::alter()
                .table(Vms::Table)
                .add_column(string_null(Vms::CdromImageId))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Vms::Table)
                .add_column(string_null(Vms::BootOrder))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Templates::Table)
                .add_column(string_null(Templates::BootOrder))
                .to_owned(),
        )
        .await?;
        // deleteImage asks whether a VM holds the image in its drive.
        m.create_index(
            Index::create()
                .name("idx_vms_cdrom_image_id")
                .table(Vms::Table)
                .col(Vms::CdromImageId)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(Index::drop().name("idx_vms_cdrom_image_id").to_owned())
            .await?;
        for column in [Vms::CdromImageId, Vms::BootOrder] {
            m.alter_table(
                Table::alter()
                    .table(Vms::Table)
                    .drop_column(column)
                    .to_owned(),
            )
            .await?;
        }
        m.alter_table(
            Table::alter()
                .table(Templates::Table)
                .drop_column(Templates::BootOrder)
                .to_owned(),
        )
        .await
    }
}

#[derive(DeriveIden)]
enum Vms {
    Table,
    CdromImageId,
    BootOrder,
}

#[derive(DeriveIden)]
enum Templates {
    Table,
    BootOrder,
}
