//! Hosts (issue 21): each vman node registers the host it runs on and
//! heartbeats; a VM and an operation belong to the host that runs them.
//! Rows from before (no host) are claimed by the first node that starts on
//! the database (`cluster::register`).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Hosts::Table)
                .col(string(Hosts::Id).primary_key())
                .col(string_uniq(Hosts::Name))
                .col(string(Hosts::State))
                .col(string_null(Hosts::StateReason))
                .col(string(Hosts::Version))
                .col(string_null(Hosts::ApiUrl))
                .col(json(Hosts::Capabilities))
                .col(integer(Hosts::Cpus))
                .col(big_integer(Hosts::MemoryTotalBytes))
                .col(big_integer(Hosts::MemoryAvailableBytes))
                .col(big_integer_null(Hosts::StorageFreeBytes))
                .col(double_null(Hosts::Load1))
                .col(timestamp_with_time_zone(Hosts::HeartbeatAt))
                .col(timestamp_with_time_zone(Hosts::RegisteredAt))
                .to_owned(),
        )
        .await?;
        for table in [Alias::new("vms"), Alias::new("operations")] {
            m.alter_table(
                Table::alter()
                    .table(table.clone())
                    .add_column(string_null(Alias::new("host_id")))
                    .to_owned(),
            )
            .await?;
        }
        // A node's own VMs (adoption, the sweep), and `Host.vms`.
        m.create_index(
            Index::create()
                .name("idx_vms_host")
                .table(Alias::new("vms"))
                .col(Alias::new("host_id"))
                .col(Alias::new("id"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_operations_host_status")
                .table(Alias::new("operations"))
                .col(Alias::new("host_id"))
                .col(Alias::new("status"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("idx_operations_host_status")
                .table(Alias::new("operations"))
                .to_owned(),
        )
        .await?;
        m.drop_index(
            Index::drop()
                .name("idx_vms_host")
                .table(Alias::new("vms"))
                .to_owned(),
        )
        .await?;
        for table in [Alias::new("vms"), Alias::new("operations")] {
            m.alter_table(
                Table::alter()
                    .table(table)
                    .drop_column(Alias::new("host_id"))
                    .to_owned(),
            )
            .await?;
        }
        m.drop_table(Table::drop().table(Hosts::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Hosts {
    Table,
    Id,
    Name,
    State,
    StateReason,
    Version,
    ApiUrl,
    Capabilities,
    Cpus,
    MemoryTotalBytes,
    MemoryAvailableBytes,
    StorageFreeBytes,
    Load1,
    HeartbeatAt,
    RegisteredAt,
}
