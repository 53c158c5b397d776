//! Database migrations for vman, one file per migration, applied in order at
//! `vman serve` start and by `vman migrate`.

pub use sea_orm_migration::prelude::*;

mod m20261126_000001_initial;
mod m20261126_000002_coherence_issues;
mod m20261126_000003_networks_on_host;
mod m20261126_000004_operations_status_index;
mod m20261203_000005_operation_failed_step;
mod m20261204_000006_api_tokens;
mod m20261204_000007_vm_changes;
mod m20261205_000008_snapshots;
mod m20261205_000009_clones;
mod m20261205_000010_read_indexes;
mod m20261205_000011_install_media;
mod m20261205_000012_cloud_init;
mod m20261206_000013_hosts;
mod m20261207_000014_images_and_disks_on_hosts;
mod m20261207_000015_network_hosts;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_initial::Migration),
            Box::new(m20261126_000002_coherence_issues::Migration),
            Box::new(m20261126_000003_networks_on_host::Migration),
            Box::new(m20261126_000004_operations_status_index::Migration),
            Box::new(m20261203_000005_operation_failed_step::Migration),
            Box::new(m20261204_000006_api_tokens::Migration),
            Box::new(m20261204_000007_vm_changes::Migration),
            Box::new(m20261205_000008_snapshots::Migration),
            Box::new(m20261205_000009_clones::Migration),
            Box::new(m20261205_000010_read_indexes::Migration),
            Box::new(m20261205_000011_install_media::Migration),
            Box::new(m20261205_000012_cloud_init::Migration),
            Box::new(m20261206_000013_hosts::Migration),
            Box::new(m20261207_000014_images_and_disks_on_hosts::Migration),
            Box::new(m20261207_000015_network_hosts::Migration),
        ]
    }
}
