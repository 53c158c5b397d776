use async_graphql::{Context, ID, Object, SimpleObject};

use super::Snapshot;
use crate::{
    api::{self, PlanStep},
    error::ResultExt,
    operation::{Change, graphql::OperationObject},
    vm::{VmState, graphql::VmObject},
};

#[derive(Clone)]
pub struct SnapshotObject(pub Snapshot);

/// A snapshot of a whole VM: an internal qcow2 snapshot of each of its disks,
/// and with `withMemory` its memory too.
#[Object(name = "Snapshot")]
impl SnapshotObject {
    /// A UUID, unique across all objects; the disks' internal snapshots are tagged with it.
    pub async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Unique among the VM's snapshots.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// The VM it is a snapshot of.
    async fn vm(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<VmObject>> {
        let vm = api::load::<crate::vm::model::Entity>(ctx, Some(&self.0.vm_id)).await?;
        Ok(vm.map(VmObject))
    }
    /// Whether it holds the VM's memory (taken while it ran) or its disks only.
    async fn with_memory(&self) -> bool {
        self.0.with_memory
    }
    /// The VM's state when it was taken.
    async fn vm_state(&self) -> VmState {
        self.0.vm_state
    }
    /// The IDs of the disks it covers: a restore needs the VM to have exactly these.
    async fn disk_ids(&self) -> Vec<ID> {
        self.0.disks().into_iter().map(ID).collect()
    }
    /// The VM's CPU count when it was taken (its memory loads only into the same shape).
    async fn vcpus(&self) -> i32 {
        self.0.vcpus
    }
    /// The VM's memory size in MiB when it was taken.
    async fn memory_mib(&self) -> i64 {
        self.0.memory_mib
    }
    /// When it was taken.
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
}

/// The result of a snapshot mutation; see `VmPayload` for `dryRun`.
#[derive(SimpleObject)]
pub struct SnapshotPayload {
    /// The snapshot (as it was, for `deleteSnapshot`); its `vm` is the VM after the mutation.
    pub snapshot: SnapshotObject,
    /// The record of the host work; null with `dryRun: true`.
    pub operation: Option<OperationObject>,
    /// The host steps taken, or with `dryRun: true` those that would be.
    pub plan: Vec<PlanStep>,
}

impl From<Change<Snapshot>> for SnapshotPayload {
    fn from(change: Change<Snapshot>) -> Self {
        SnapshotPayload {
            snapshot: SnapshotObject(change.object),
            operation: change.operation.map(OperationObject),
            plan: api::plan(&change.plan),
        }
    }
}

#[derive(Default)]
pub struct SnapshotMutation;

#[Object]
impl SnapshotMutation {
    /// Takes a snapshot of every disk of a VM (all qcow2; a raw disk is
    /// BAD_USER_INPUT). A RUNNING or PAUSED VM is snapshotted live, with its
    /// memory when `withMemory`; a STOPPED or CRASHED one without memory.
    async fn create_snapshot(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The VM's ID; or give `vmName`.")] vm_id: Option<ID>,
        #[graphql(desc = "The VM's name; or give `vmId`.")] vm_name: Option<String>,
        #[graphql(
            desc = "1 to 63 characters: a lowercase letter, then lowercase letters, digits or `-`. Unique among the VM's snapshots."
        )]
        name: String,
        #[graphql(
            default = false,
            desc = "Save the running VM's memory too, so that a restore resumes where it was (needs a RUNNING or PAUSED VM)."
        )]
        with_memory: bool,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<SnapshotPayload> {
        let vm_id = crate::vm::graphql::vm_id(ctx, ("vmId", vm_id), ("vmName", vm_name)).await?;
        Ok(
            super::create(api::services(ctx), &vm_id, &name, with_memory, dry_run)
                .await
                .gql()?
                .into(),
        )
    }

    /// Takes a VM back to a snapshot. One with memory: onto a running VM
    /// (its memory is loaded) or a stopped one (it starts from it). One
    /// without memory: onto a stopped VM only (INVALID_STATE otherwise). The
    /// VM must have the disks the snapshot was taken of.
    async fn restore_snapshot(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The snapshot's ID.")] id: ID,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<SnapshotPayload> {
        Ok(super::restore(api::services(ctx), &id, dry_run)
            .await
            .gql()?
            .into())
    }

    /// Deletes a snapshot, and its internal snapshots from the disks the VM still has.
    async fn delete_snapshot(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The snapshot's ID.")] id: ID,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<SnapshotPayload> {
        Ok(super::delete(api::services(ctx), &id, dry_run)
            .await
            .gql()?
            .into())
    }
}
