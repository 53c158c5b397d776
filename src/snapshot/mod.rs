//! Snapshots of whole VMs: an internal qcow2 snapshot of every disk of the
//! VM, tagged with the snapshot's id, and with `withMemory` its memory too
//! (saved in its first disk's file).
//!
//! A running or paused VM is snapshotted by its QEMU (QMP jobs), a stopped
//! or crashed one with qemu-img; the hypervisor port decides how from the
//! action. Rules that hold whatever the state:
//!
//! - every disk of the VM must be qcow2 (a raw file has no snapshots): a raw
//!   disk is BAD_USER_INPUT, naming it, and nothing is made;
//! - a snapshot covers the disks the VM had when it was taken; a restore onto
//!   a VM whose disks differ since (one attached, one detached) is
//!   INVALID_STATE, naming them, and nothing changes;
//! - a snapshot without memory is restored only onto a stopped VM (its disks
//!   go back; a running guest would see them change under it); one with
//!   memory onto a running VM (`snapshot-load`) or a stopped one, which then
//!   starts from it (`-loadvm`: the one start path, with its taps, states and
//!   failure handling, and the memory is in place before the guest runs);
//! - memory loads only into a QEMU started with the command line it was saved
//!   from (same devices, same slots): a VM that had devices hot-plugged when
//!   the snapshot was taken, or whose settings changed since, is refused
//!   (INVALID_STATE, naming the arguments that differ) before anything is
//!   touched, for QEMU would revert the disks and then fail on the state.

pub mod graphql;
pub mod model;

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, ModelTrait, QueryFilter,
    QueryOrder,
};

use crate::{
    context::Ctx,
    disk::{self, Attachment, DiskFormat},
    error::{ApiError, ApiResult},
    events::{NewEvent, Payload, Writer, find_in},
    host::{DiskSpec, VmAction},
    operation::{self, Change, HostAction, OperationKind, Request, SubjectType},
    validate,
    vm::{self, Plug, Vm, update},
};
pub use model::Model as Snapshot;

/// A VM's snapshots, oldest first.
pub async fn of_vm(db: &impl ConnectionTrait, vm_id: &str) -> ApiResult<Vec<Snapshot>> {
    Ok(model::Entity::find()
        .filter(model::Column::VmId.eq(vm_id))
        .order_by_asc(model::Column::CreatedAt)
        .order_by_asc(model::Column::Id)
        .all(db)
        .await?)
}

async fn ensure_name_free(db: &impl ConnectionTrait, vm: &Vm, name: &str) -> ApiResult<()> {
    let taken = model::Entity::find()
        .filter(model::Column::VmId.eq(&vm.id))
        .filter(model::Column::Name.eq(name))
        .one(db)
        .await?;
    match taken {
        Some(_) => Err(ApiError::Conflict(format!(
            "VM {:?} already has a snapshot named {name:?}",
            vm.name
        ))),
        None => Ok(()),
    }
}

/// The VM's disks a snapshot covers, in the VM's order (its first is where
/// memory is saved). A raw disk, a disk half-way through a plug, or no disk
/// at all is refused.
async fn snapshot_disks(app: &Ctx, vm: &Vm) -> ApiResult<Vec<disk::Disk>> {
    let disks = disk::model::Entity::find()
        .filter(disk::model::Column::VmId.eq(&vm.id))
        .filter(disk::model::Column::Attachment.ne(Attachment::Detached))
        .order_by_asc(disk::model::Column::Id)
        .all(&app.db)
        .await?;
    if disks.is_empty() {
        return Err(ApiError::bad_input(format!(
            "VM {:?} has no disk: a snapshot is kept in its disks' files",
            vm.name
        )));
    }
    let raw: Vec<String> = disks
        .iter()
        .filter(|d| d.format == DiskFormat::Raw)
        .map(|d| format!("{:?}", d.name))
        .collect();
    if !raw.is_empty() {
        return Err(ApiError::bad_input(format!(
            "VM {:?} has raw disk {}: only qcow2 disks hold snapshots",
            vm.name,
            raw.join(", ")
        )));
    }
    if let Some(moving) = disks.iter().find(|d| d.attachment != Attachment::Attached) {
        return Err(ApiError::InvalidState(format!(
            "disk {:?} of VM {:?} is {:?}: try again when it is attached or detached",
            moving.name, vm.name, moving.attachment
        )));
    }
    Ok(disks)
}

fn specs(app: &Ctx, disks: &[disk::Disk]) -> Vec<DiskSpec> {
    disks.iter().map(|d| disk::spec(app, d)).collect()
}

/// A running or paused VM is snapshotted by its QEMU; a stopped or crashed
/// one with qemu-img; any other state is refused.
fn running_vm(vm: &Vm, doing: &str) -> ApiResult<Option<String>> {
    Ok(match vm::plug(vm, doing)? {
        Plug::Hot => Some(vm.id.clone()),
        Plug::Cold => None,
    })
}

pub async fn create(
    app: &Ctx,
    vm_id: &str,
    name: &str,
    with_memory: bool,
    dry_run: bool,
) -> ApiResult<Change<Snapshot>> {
    let vm_id = validate::id("vmId", vm_id)?;
    validate::name("name", name)?;
    let op_id = operation::new_id();
    let kind = OperationKind::CreateSnapshot;
    let _guard = app.locks.lock(&vm_id, &op_id, kind).await?;
    let vm = find_in::<vm::model::Entity, _>(&app.db, "VM", &vm_id).await?;
    crate::cluster::check_local(app, &vm).await?;
    ensure_name_free(&app.db, &vm, name).await?;
    let running_vm = running_vm(&vm, "snapshot")?;
    if with_memory && running_vm.is_none() {
        return Err(ApiError::InvalidState(format!(
            "VM {:?} is {}: it has no memory to save (take the snapshot with withMemory: false, or start the VM first)",
            vm.name, vm.state
        )));
    }
    let disks = snapshot_disks(app, &vm).await?;
    // Memory is written into the disks' files: room for it, at least.
    let room = if with_memory {
        (vm.memory_mib as u64) << 20
    } else {
        0
    };
    crate::storage::ensure_room(&app.config, &app.config.storage_dir(), room, "a snapshot")?;
    let machine = match with_memory {
        true => app
            .hypervisor
            .command_line(&vm.id)
            .await
            .map(|argv| serde_json::json!(without_loadvm(argv))),
        false => None,
    };
    let snapshot = Snapshot {
        id: uuid::Uuid::now_v7().to_string(),
        vm_id: vm.id.clone(),
        name: name.to_string(),
        with_memory,
        vm_state: vm.state,
        disk_ids: serde_json::json!(disks.iter().map(|d| &d.id).collect::<Vec<_>>()),
        vcpus: vm.vcpus,
        memory_mib: vm.memory_mib,
        machine,
        created_at: Utc::now(),
    };
    let action = VmAction::CreateSnapshot {
        running_vm: running_vm.clone(),
        disks: specs(app, &disks),
        tag: snapshot.id.clone(),
        with_memory,
    };
    if dry_run {
        return Ok(Change::planned(snapshot, app.hypervisor.plan(&action)));
    }
    let request = Request::with_id(op_id, kind, SubjectType::Snapshot, &snapshot.id);
    operation::run(app, request, async |env| {
        env.vm(&action).await?;
        env.undo_with(HostAction::Vm(VmAction::DeleteSnapshot {
            running_vm: running_vm.clone(),
            disks: specs(app, &disks),
            tag: snapshot.id.clone(),
        }));
        env.commit(async |w, op| {
            ensure_name_free(w.txn(), &vm, name).await?;
            let snapshot = model::ActiveModel::from(snapshot.clone())
                .insert(w.txn())
                .await?;
            w.record(NewEvent::new(
                &snapshot.id,
                Some(op),
                Payload::SnapshotCreated {
                    name: snapshot.name.clone(),
                    vm_id: vm.id.clone(),
                    with_memory,
                    vm_state: snapshot.vm_state,
                },
            ))
            .await?;
            Ok(snapshot)
        })
        .await
    })
    .await
}

pub async fn find(app: &Ctx, id: &str) -> ApiResult<Snapshot> {
    let id = validate::id("id", id)?;
    find_in::<model::Entity, _>(&app.db, "snapshot", &id).await
}

/// Refuses a restore onto a VM whose disks are not the snapshot's.
fn ensure_same_disks(snapshot: &Snapshot, vm: &Vm, disks: &[disk::Disk]) -> ApiResult<()> {
    let then = snapshot.disks();
    let now: Vec<&str> = disks.iter().map(|d| d.id.as_str()).collect();
    let added: Vec<String> = disks
        .iter()
        .filter(|d| !then.contains(&d.id))
        .map(|d| format!("{:?}", d.name))
        .collect();
    let gone: Vec<&str> = then
        .iter()
        .map(String::as_str)
        .filter(|id| !now.contains(id))
        .collect();
    if added.is_empty() && gone.is_empty() {
        return Ok(());
    }
    let mut differences = Vec::new();
    if !added.is_empty() {
        differences.push(format!("attached since: {}", added.join(", ")));
    }
    if !gone.is_empty() {
        differences.push(format!("no longer attached: disk id {}", gone.join(", ")));
    }
    Err(ApiError::InvalidState(format!(
        "VM {:?} no longer has the disks snapshot {:?} was taken of ({}): attach or detach them back first",
        vm.name,
        snapshot.name,
        differences.join("; ")
    )))
}

/// Refuses loading a snapshot's memory into a VM of another shape.
fn ensure_same_shape(snapshot: &Snapshot, vm: &Vm) -> ApiResult<()> {
    if snapshot.vcpus == vm.vcpus && snapshot.memory_mib == vm.memory_mib {
        return Ok(());
    }
    Err(ApiError::InvalidState(format!(
        "snapshot {:?} holds the memory of {} vCPUs and {} MiB; VM {:?} has {} vCPUs and {} MiB",
        snapshot.name, snapshot.vcpus, snapshot.memory_mib, vm.name, vm.vcpus, vm.memory_mib
    )))
}

/// A QEMU command line without its `-loadvm` (a VM started from a snapshot
/// runs the same machine as one started plainly).
fn without_loadvm(argv: Vec<String>) -> Vec<String> {
    let mut kept = Vec::with_capacity(argv.len());
    let mut args = argv.into_iter();
    while let Some(arg) = args.next() {
        if arg == "-loadvm" {
            args.next();
        } else {
            kept.push(arg);
        }
    }
    kept
}

/// Refuses loading a snapshot's memory into a QEMU started otherwise than
/// the one it was saved from (`now`: its command line; None when the port
/// cannot tell): QEMU would refuse the state, or load it into the wrong devices.
fn ensure_same_machine(snapshot: &Snapshot, vm: &Vm, now: Option<Vec<String>>) -> ApiResult<()> {
    let (Some(then), Some(now)) = (snapshot.machine.as_ref(), now) else {
        return Ok(());
    };
    let then: Vec<String> = serde_json::from_value(then.clone()).unwrap_or_default();
    let now = without_loadvm(now);
    if then == now {
        return Ok(());
    }
    let only = |a: &[String], b: &[String]| -> String {
        let args: Vec<&str> = a
            .iter()
            .filter(|arg| !b.contains(arg))
            .map(String::as_str)
            .take(3)
            .collect();
        if args.is_empty() {
            "(the same arguments, in another order)".into()
        } else {
            args.join(" ")
        }
    };
    Err(ApiError::InvalidState(format!(
        "snapshot {:?} holds the memory of a QEMU started otherwise than VM {:?} would run now (devices hot-plugged or unplugged while it ran, or its settings changed): then {}; now {}",
        snapshot.name,
        vm.name,
        only(&then, &now),
        only(&now, &then)
    )))
}

/// The command line a start from `spec` would run QEMU with (None: the
/// plan has no QEMU to spawn).
fn planned_command_line(app: &Ctx, spec: &crate::host::VmSpec) -> Option<Vec<String>> {
    app.hypervisor
        .plan(&VmAction::Start(spec.clone()))
        .into_iter()
        .find_map(|step| match step {
            crate::host::HostStep::SpawnQemu { argv, .. } => Some(argv),
            _ => None,
        })
}

/// How a restore goes, decided before anything is touched.
enum Restore {
    /// The disks (and, with memory, the running VM's memory) go back.
    Action(VmAction),
    /// The stopped VM starts from the snapshot, memory included.
    Start(crate::host::VmSpec),
}

pub async fn restore(app: &Ctx, id: &str, dry_run: bool) -> ApiResult<Change<Snapshot>> {
    let snapshot = find(app, id).await?;
    let op_id = operation::new_id();
    let kind = OperationKind::RestoreSnapshot;
    let _guard = app.locks.lock(&snapshot.vm_id, &op_id, kind).await?;
    let snapshot = find_in::<model::Entity, _>(&app.db, "snapshot", &snapshot.id).await?;
    let vm = find_in::<vm::model::Entity, _>(&app.db, "VM", &snapshot.vm_id).await?;
    crate::cluster::check_local(app, &vm).await?;
    let running_vm = running_vm(&vm, "restore a snapshot of")?;
    let disks = snapshot_disks(app, &vm).await?;
    ensure_same_disks(&snapshot, &vm, &disks)?;
    let restore = match (&running_vm, snapshot.with_memory) {
        (Some(_), false) => {
            return Err(ApiError::InvalidState(format!(
                "snapshot {:?} has no memory: it is restored only onto a stopped VM, and VM {:?} is {} (stop it first)",
                snapshot.name, vm.name, vm.state
            )));
        }
        (Some(vm_id), true) => {
            ensure_same_shape(&snapshot, &vm)?;
            ensure_same_machine(&snapshot, &vm, app.hypervisor.command_line(vm_id).await)?;
            Restore::Action(VmAction::RestoreSnapshot {
                running_vm: running_vm.clone(),
                disks: specs(app, &disks),
                tag: snapshot.id.clone(),
            })
        }
        (None, false) => Restore::Action(VmAction::RestoreSnapshot {
            running_vm: None,
            disks: specs(app, &disks),
            tag: snapshot.id.clone(),
        }),
        (None, true) => {
            let effective = update::effective(&vm);
            ensure_same_shape(&snapshot, &effective)?;
            let mut spec = vm::spec(app, &effective).await?;
            ensure_same_machine(&snapshot, &vm, planned_command_line(app, &spec))?;
            spec.loadvm = Some(snapshot.id.clone());
            Restore::Start(spec)
        }
    };
    if dry_run {
        let plan = match restore {
            Restore::Action(action) => app.hypervisor.plan(&action),
            Restore::Start(spec) => vm::start_plan(app, spec),
        };
        return Ok(Change::planned(snapshot, plan));
    }
    let request = Request::with_id(op_id, kind, SubjectType::Snapshot, &snapshot.id);
    operation::run(app, request, async |env| {
        let started = match &restore {
            Restore::Action(action) => {
                env.vm(action).await?;
                None
            }
            Restore::Start(spec) => Some(vm::start_within(env, &vm, spec.clone()).await?),
        };
        env.commit(async |w, op| {
            if let Some((to, reason)) = started {
                update::apply_pending(w, &vm, op).await?;
                vm::transition(w, &vm.id, to, reason, Some(op)).await?;
            }
            w.record(NewEvent::new(
                &snapshot.id,
                Some(op),
                Payload::SnapshotRestored {
                    name: snapshot.name.clone(),
                    vm_id: vm.id.clone(),
                    with_memory: snapshot.with_memory,
                },
            ))
            .await?;
            Ok(snapshot.clone())
        })
        .await
    })
    .await
}

/// Deletes a snapshot: its tag goes from the disks the VM still has of it
/// (a disk detached since keeps its copy, which goes with the disk's file).
pub async fn delete(app: &Ctx, id: &str, dry_run: bool) -> ApiResult<Change<Snapshot>> {
    let snapshot = find(app, id).await?;
    let op_id = operation::new_id();
    let kind = OperationKind::DeleteSnapshot;
    let _guard = app.locks.lock(&snapshot.vm_id, &op_id, kind).await?;
    let snapshot = find_in::<model::Entity, _>(&app.db, "snapshot", &snapshot.id).await?;
    let vm = find_in::<vm::model::Entity, _>(&app.db, "VM", &snapshot.vm_id).await?;
    crate::cluster::check_local(app, &vm).await?;
    let running_vm = running_vm(&vm, "delete a snapshot of")?;
    let covered = snapshot.disks();
    let disks: Vec<disk::Disk> = disk::model::Entity::find()
        .filter(disk::model::Column::VmId.eq(&vm.id))
        .filter(disk::model::Column::Attachment.eq(Attachment::Attached))
        .order_by_asc(disk::model::Column::Id)
        .all(&app.db)
        .await?
        .into_iter()
        .filter(|d| covered.contains(&d.id) && d.format == DiskFormat::Qcow2)
        .collect();
    let action = (!disks.is_empty()).then(|| VmAction::DeleteSnapshot {
        running_vm,
        disks: specs(app, &disks),
        tag: snapshot.id.clone(),
    });
    if dry_run {
        let plan = action.iter().flat_map(|a| app.hypervisor.plan(a)).collect();
        return Ok(Change::planned(snapshot, plan));
    }
    let request = Request::with_id(op_id, kind, SubjectType::Snapshot, &snapshot.id);
    operation::run(app, request, async |env| {
        // The tags go first: if they cannot be deleted, the row stays and says so.
        if let Some(action) = &action {
            env.vm(action).await?;
        }
        env.commit(async |w, op| {
            snapshot.clone().delete(w.txn()).await?;
            w.record(deleted_event(&snapshot, Some(op))).await?;
            Ok(snapshot.clone())
        })
        .await
    })
    .await
}

fn deleted_event(snapshot: &Snapshot, operation_id: Option<&str>) -> NewEvent {
    NewEvent::new(
        &snapshot.id,
        operation_id,
        Payload::SnapshotDeleted {
            name: snapshot.name.clone(),
            vm_id: snapshot.vm_id.clone(),
        },
    )
}

/// A deleted VM's snapshots go with it (their tags go with its disks'
/// files, or stay in the disks it keeps), each journaled.
pub async fn forget_of_vm(w: &mut Writer<'_>, vm_id: &str, operation_id: &str) -> ApiResult<()> {
    for snapshot in of_vm(w.txn(), vm_id).await? {
        snapshot.clone().delete(w.txn()).await?;
        w.record(deleted_event(&snapshot, Some(operation_id)))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    fn vm() -> Vm {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        Vm {
            id: "vm-1".into(),
            name: "web".into(),
            template_id: None,
            vcpus: 1,
            memory_mib: 256,
            desired_state: crate::vm::VmState::Stopped,
            state: crate::vm::VmState::Stopped,
            state_reason: None,
            description: String::new(),
            pending_changes: None,
            cdrom_image_id: None,
            boot_order: None,
            host_id: None,
            created_at: at,
            updated_at: at,
        }
    }

    fn snapshot(machine: Option<&[&str]>) -> Snapshot {
        Snapshot {
            id: "s-1".into(),
            vm_id: "vm-1".into(),
            name: "before".into(),
            with_memory: true,
            vm_state: crate::vm::VmState::Running,
            disk_ids: serde_json::json!(["d-1"]),
            vcpus: 1,
            memory_mib: 256,
            machine: machine.map(|m| serde_json::json!(m)),
            created_at: vm().created_at,
        }
    }

    #[test]
    fn a_start_from_a_snapshot_runs_the_same_machine_as_a_plain_one() {
        assert_eq!(
            without_loadvm(argv(&["qemu", "-m", "256", "-loadvm", "s-1", "-S"])),
            argv(&["qemu", "-m", "256", "-S"])
        );
    }

    #[test]
    fn memory_loads_only_into_a_qemu_started_the_same_way() {
        let then = ["qemu", "-device", "pcie-root-port,id=rp1", "-S"];
        let same = snapshot(Some(&then));
        assert!(ensure_same_machine(&same, &vm(), Some(argv(&then))).is_ok());
        // A start from this very snapshot is the same machine.
        let loaded = argv(&[
            "qemu",
            "-device",
            "pcie-root-port,id=rp1",
            "-S",
            "-loadvm",
            "s-1",
        ]);
        assert!(ensure_same_machine(&same, &vm(), Some(loaded)).is_ok());
        // The port cannot tell (a dry run): nothing to hold against it.
        assert!(ensure_same_machine(&snapshot(None), &vm(), Some(argv(&then))).is_ok());
        assert!(ensure_same_machine(&same, &vm(), None).is_ok());

        let now = argv(&["qemu", "-device", "pcie-root-port,id=rp2", "-S"]);
        let refused = ensure_same_machine(&same, &vm(), Some(now)).unwrap_err();
        assert_eq!(refused.code(), "INVALID_STATE");
        let message = refused.to_string();
        assert!(
            message.contains("then pcie-root-port,id=rp1; now pcie-root-port,id=rp2"),
            "{message}"
        );
    }

    #[test]
    fn a_restore_names_the_disks_attached_or_detached_since() {
        let snap = snapshot(None);
        let at = vm().created_at;
        let disk = |id: &str, name: &str| disk::Disk {
            id: id.into(),
            name: name.into(),
            format: DiskFormat::Qcow2,
            size_bytes: 1 << 20,
            vm_id: Some("vm-1".into()),
            attachment: Attachment::Attached,
            backing_template_id: None,
            base_id: None,
            host_id: None,
            created_at: at,
            updated_at: at,
        };
        assert!(ensure_same_disks(&snap, &vm(), &[disk("d-1", "root")]).is_ok());
        let refused = ensure_same_disks(&snap, &vm(), &[disk("d-2", "scratch")]).unwrap_err();
        assert_eq!(refused.code(), "INVALID_STATE");
        let message = refused.to_string();
        assert!(
            message.contains("attached since: \"scratch\"")
                && message.contains("no longer attached: disk id d-1"),
            "{message}"
        );
    }
}
