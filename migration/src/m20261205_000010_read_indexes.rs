//! An index behind every filter and order the API offers, so that a page of
//! a list is a walk of an index in its order whatever the table's size
//! (tests/query_plans.rs explains the SQL each list sends and fails on a full
//! scan or a sort). Each index ends with the list's order (`id`): SQLite
//! reads a VM's disks, a template's VMs or a VM's operations already sorted.
//! The single-column indexes these extend are dropped.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// (name, table, columns) of each new index.
const INDEXES: &[(&str, &str, &[&str])] = &[
    // `vms(state:, orderBy: NAME)`.
    ("idx_vms_state_name", "vms", &["state", "name"]),
    // `Template.vms`, and the check before a template is deleted.
    ("idx_vms_template", "vms", &["template_id", "id"]),
    // `Vm.disks`, `disks(vmId:)`.
    ("idx_disks_vm_id", "disks", &["vm_id", "id"]),
    // The check before a template is deleted.
    (
        "idx_disks_backing_template",
        "disks",
        &["backing_template_id"],
    ),
    // `Network.nics`, and the check before a network is deleted.
    ("idx_nics_network", "nics", &["network_id", "id"]),
    // `operations(vmId:)`.
    (
        "idx_operations_target_id",
        "operations",
        &["target_id", "id"],
    ),
    // `Vm.coherenceIssues`.
    (
        "idx_coherence_issues_vm_id",
        "coherence_issues",
        &["vm_id", "id"],
    ),
    // `coherenceIssues(open:)`.
    (
        "idx_coherence_issues_resolved",
        "coherence_issues",
        &["resolved_at", "id"],
    ),
];

/// (name, table, columns) of the indexes the new ones extend.
const REPLACED: &[(&str, &str, &[&str])] = &[
    ("idx_disks_vm", "disks", &["vm_id"]),
    ("idx_operations_target", "operations", &["target_id"]),
    ("idx_coherence_issues_vm", "coherence_issues", &["vm_id"]),
];

fn create(name: &str, table: &str, columns: &[&str]) -> IndexCreateStatement {
    let mut index = Index::create();
    index.name(name).table(Alias::new(table));
    for column in columns {
        index.col(Alias::new(*column));
    }
    index.to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, columns) in INDEXES {
            m.create_index(create(name, table, columns)).await?;
        }
        for (name, _, _) in REPLACED {
            m.drop_index(Index::drop().name(*name).to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, columns) in REPLACED {
            m.create_index(create(name, table, columns)).await?;
        }
        for (name, _, _) in INDEXES {
            m.drop_index(Index::drop().name(*name).to_owned()).await?;
        }
        Ok(())
    }
}
