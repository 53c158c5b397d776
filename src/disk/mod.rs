//! Disks: files in storage named from their ID. They are created and deleted
//! through the hypervisor port (qemu-img), attached to VMs cold (recorded for
//! the next start) or hot (plugged into the running VM).

pub mod graphql;
pub mod model;

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, IntoActiveModel,
    ModelTrait, QueryFilter, Set,
};
use serde_json::json;

use crate::{
    context::Ctx,
    error::{ApiError, ApiResult},
    events::{self, EventKind, NewEvent, WriteSession, find_in},
    host::{DiskSpec, VmAction},
    operation,
    operation::Change,
    validate,
    vm::{self, VmState},
};
pub use model::{Attachment, DiskFormat, Model as Disk};

pub fn spec(app: &Ctx, disk: &Disk) -> DiskSpec {
    DiskSpec {
        id: disk.id.clone(),
        path: app
            .config
            .storage_dir()
            .join(format!("{}.{}", disk.id, disk.format.qemu_name())),
        format: disk.format,
        size_bytes: disk.size_bytes as u64,
        backing: None,
    }
}

pub async fn ensure_name_free(db: &impl ConnectionTrait, name: &str) -> ApiResult<()> {
    crate::db::ensure_free::<model::Entity>(db, model::Column::Name, name, "a disk").await
}

pub fn created_event(disk: &Disk, operation_id: Option<&str>) -> NewEvent {
    NewEvent {
        kind: EventKind::DiskCreated,
        subject_id: disk.id.clone(),
        subject_type: "Disk",
        operation_id: operation_id.map(str::to_string),
        payload: json!({"name": disk.name, "sizeBytes": disk.size_bytes, "format": disk.format, "vmId": disk.vm_id}),
    }
}

pub fn deleted_event(disk: &Disk, operation_id: Option<&str>) -> NewEvent {
    NewEvent {
        kind: EventKind::DiskDeleted,
        subject_id: disk.id.clone(),
        subject_type: "Disk",
        operation_id: operation_id.map(str::to_string),
        payload: json!({"name": disk.name}),
    }
}

pub fn detached_event(disk: &Disk, vm_id: &str, operation_id: Option<&str>) -> NewEvent {
    NewEvent {
        kind: EventKind::DiskDetached,
        subject_id: disk.id.clone(),
        subject_type: "Disk",
        operation_id: operation_id.map(str::to_string),
        payload: json!({"name": disk.name, "vmId": vm_id}),
    }
}

pub struct CreateDisk {
    pub name: String,
    pub size_bytes: i64,
    pub format: DiskFormat,
}

pub async fn create(app: &Ctx, input: CreateDisk, dry_run: bool) -> ApiResult<Change<Disk>> {
    validate::name("name", &input.name)?;
    validate::size_bytes(&app.config.limits, "sizeBytes", input.size_bytes)?;
    ensure_name_free(&app.db, &input.name).await?;
    let now = Utc::now();
    let disk = Disk {
        id: uuid::Uuid::now_v7().to_string(),
        name: input.name,
        format: input.format,
        size_bytes: input.size_bytes,
        vm_id: None,
        attachment: Attachment::Detached,
        backing_template_id: None,
        created_at: now,
        updated_at: now,
    };
    let action = VmAction::CreateDisk(spec(app, &disk));
    if dry_run {
        return Ok(Change::planned(disk, app.hypervisor.plan(&action)));
    }
    let op = operation::begin(app, &operation::new_id(), "CREATE_DISK", "Disk", &disk.id).await?;
    let steps = match app.hypervisor.execute(&action).await {
        Ok(outcome) => outcome.steps,
        Err(e) => {
            let e = ApiError::from(e);
            operation::finish(app, op, &[], Some(&e)).await?;
            return Err(e);
        }
    };
    let written = async {
        let mut w = app.bus.writer().await?;
        ensure_name_free(w.txn(), &disk.name).await?;
        let disk = model::ActiveModel::from(disk.clone())
            .insert(w.txn())
            .await?;
        w.record(created_event(&disk, Some(&op.id))).await?;
        w.commit().await?;
        ApiResult::Ok(disk)
    }
    .await;
    if written.is_err()
        && let Err(undo) = app
            .hypervisor
            .execute(&VmAction::DeleteDisk(spec(app, &disk)))
            .await
    {
        tracing::error!(error = %undo, "removing the file of a failed createDisk");
    }
    let op = operation::finish(app, op, &steps, written.as_ref().err()).await?;
    Ok(Change {
        object: written?,
        operation: Some(op),
        plan: steps,
    })
}

pub async fn find_disk(app: &Ctx, id: &str) -> ApiResult<Disk> {
    let id = validate::id("diskId", id)?;
    find_in::<model::Entity, _>(&app.db, "disk", &id).await
}

/// Attaches a detached disk: hot-plugged when the VM runs, recorded for the next start otherwise.
pub async fn attach(
    app: &Ctx,
    disk_id: &str,
    vm_id: &str,
    dry_run: bool,
) -> ApiResult<Change<Disk>> {
    let disk_id = validate::id("diskId", disk_id)?;
    let vm_id = match validate::id("vmId", vm_id) {
        Ok(vm_id) if vm_id != disk_id => vm_id,
        // An unknown disk is named first, whatever else is wrong. One ID
        // cannot name both a disk and a VM (and locking it twice would wait
        // on itself until VM_BUSY).
        other => {
            find_in::<model::Entity, _>(&app.db, "disk", &disk_id).await?;
            return Err(match other {
                Err(e) => e,
                Ok(vm_id) => ApiError::not_found("VM", vm_id),
            });
        }
    };
    let op_id = operation::new_id();
    let _vm_guard = app.locks.lock(&vm_id, &op_id, "ATTACH_DISK").await?;
    let _disk_guard = app.locks.lock(&disk_id, &op_id, "ATTACH_DISK").await?;
    // The rows are read under the locks, with no read before them: each read
    // on its own costs a pooled connection. A real attach reads them in the
    // write session that then records its operation, so the checks and the
    // record see the same rows, and the whole write is two requests to
    // SQLite (the reads, then `RUNNING` committed), not one per statement.
    let mut session = match dry_run {
        true => None,
        false => Some(app.bus.session().await?),
    };
    let (disk, vm) = read_for_attach(app, session.as_mut(), &disk_id, &vm_id).await?;
    if disk.attachment != Attachment::Detached {
        return Err(ApiError::Conflict(format!(
            "disk {:?} is already attached",
            disk.name
        )));
    }
    let hot = matches!(vm.state, VmState::Running | VmState::Paused);
    if !hot && vm.state != VmState::Stopped && vm.state != VmState::Crashed {
        return Err(ApiError::InvalidState(format!(
            "cannot attach a disk to VM {:?} while it is {}",
            vm.name, vm.state
        )));
    }
    let action = hot.then(|| VmAction::AttachDisk {
        vm_id: vm.id.clone(),
        disk: spec(app, &disk),
    });
    let plan = action.iter().flat_map(|a| app.hypervisor.plan(a)).collect();
    let Some(session) = session else {
        return Ok(Change::planned(disk, plan));
    };
    let op = operation::begin_session(session, &op_id, "ATTACH_DISK", "Disk", &disk.id).await?;
    let result = async {
        let steps = match &action {
            Some(action) => app.hypervisor.execute(action).await?.steps,
            None => Vec::new(),
        };
        // The change, its event and the operation's success: one transaction,
        // one request.
        let mut row = disk.clone().into_active_model();
        row.vm_id = Set(Some(vm.id.clone()));
        row.attachment = Set(Attachment::Attached);
        row.updated_at = Set(Utc::now());
        let changes = vec![
            events::update_returning(row)?,
            events::update_returning(operation::finished_row(op.clone(), &steps, None))?,
        ];
        let event = NewEvent {
            kind: EventKind::DiskAttached,
            subject_id: disk.id.clone(),
            subject_type: "Disk",
            operation_id: Some(op.id.clone()),
            payload: json!({"name": disk.name, "vmId": vm.id, "hot": hot}),
        };
        let session = app.bus.session().await?;
        let (rows, _) = session.commit(changes, vec![event]).await?;
        let disk = Disk::from_query_result(&rows[0], "")?;
        let done = operation::Operation::from_query_result(&rows[1], "")?;
        operation::count_finished(&done);
        ApiResult::Ok((disk, steps, done))
    }
    .await;
    operation::conclude_done(app, op, result).await
}

/// The disk, then the VM, as `attach` checks them: through the write
/// session when there is one.
async fn read_for_attach(
    app: &Ctx,
    session: Option<&mut WriteSession<'_>>,
    disk_id: &str,
    vm_id: &str,
) -> ApiResult<(Disk, vm::Vm)> {
    match session {
        Some(s) => {
            s.find_two::<model::Entity, vm::model::Entity>(("disk", disk_id), ("VM", vm_id))
                .await
        }
        None => {
            let disk = find_in::<model::Entity, _>(&app.db, "disk", disk_id).await?;
            Ok((
                disk,
                find_in::<vm::model::Entity, _>(&app.db, "VM", vm_id).await?,
            ))
        }
    }
}

/// Detaches a disk from its VM: unplugged when the VM runs, dropped from the next start otherwise.
pub async fn detach(app: &Ctx, disk_id: &str, dry_run: bool) -> ApiResult<Change<Disk>> {
    let disk = find_disk(app, disk_id).await?;
    let Some(vm_id) = disk.vm_id.clone() else {
        return Err(ApiError::Conflict(format!(
            "disk {:?} is not attached",
            disk.name
        )));
    };
    let op_id = operation::new_id();
    let _vm_guard = app.locks.lock(&vm_id, &op_id, "DETACH_DISK").await?;
    let _disk_guard = app.locks.lock(&disk.id, &op_id, "DETACH_DISK").await?;
    let vm = find_in::<vm::model::Entity, _>(&app.db, "VM", &vm_id).await?;
    let disk = find_in::<model::Entity, _>(&app.db, "disk", &disk.id).await?;
    if disk.attachment != Attachment::Attached || disk.vm_id.as_deref() != Some(vm.id.as_str()) {
        return Err(ApiError::Conflict(format!(
            "disk {:?} is {:?}, not attached",
            disk.name, disk.attachment
        )));
    }
    let hot = matches!(vm.state, VmState::Running | VmState::Paused);
    if !hot && vm.state != VmState::Stopped && vm.state != VmState::Crashed {
        return Err(ApiError::InvalidState(format!(
            "cannot detach a disk from VM {:?} while it is {}",
            vm.name, vm.state
        )));
    }
    let action = hot.then(|| VmAction::DetachDisk {
        vm_id: vm.id.clone(),
        disk: spec(app, &disk),
    });
    let plan = action.iter().flat_map(|a| app.hypervisor.plan(a)).collect();
    if dry_run {
        return Ok(Change::planned(disk, plan));
    }
    let op = operation::begin(app, &op_id, "DETACH_DISK", "Disk", &disk.id).await?;
    let result = async {
        let outcome = match &action {
            Some(action) => app.hypervisor.execute(action).await?,
            None => Default::default(),
        };
        if outcome.detach_pending {
            // The guest has not let go yet: the disk stays visible as DETACHING
            // and the detach completes when it does, without holding the VM.
            let disk =
                set_attachment(app, &disk, Some(&vm.id), Attachment::Detaching, None).await?;
            spawn_finish_detach(app, disk.clone(), vm.id.clone());
            return ApiResult::Ok((disk, outcome.steps));
        }
        let disk = set_attachment(
            app,
            &disk,
            None,
            Attachment::Detached,
            Some((&vm.id, &op.id)),
        )
        .await?;
        ApiResult::Ok((disk, outcome.steps))
    }
    .await;
    operation::conclude(app, op, result).await
}

/// Writes a disk's attachment; `detached_from` journals a DISK_DETACHED event.
async fn set_attachment(
    app: &Ctx,
    disk: &Disk,
    vm_id: Option<&str>,
    attachment: Attachment,
    detached_from: Option<(&str, &str)>,
) -> ApiResult<Disk> {
    let mut w = app.bus.writer().await?;
    let mut row = disk.clone().into_active_model();
    row.vm_id = Set(vm_id.map(str::to_string));
    row.attachment = Set(attachment);
    row.updated_at = Set(Utc::now());
    let disk = row.update(w.txn()).await?;
    if let Some((vm_id, op_id)) = detached_from {
        w.record(detached_event(&disk, vm_id, Some(op_id))).await?;
    }
    w.commit().await?;
    Ok(disk)
}

fn spawn_finish_detach(app: &Ctx, disk: Disk, vm_id: String) {
    let hypervisor = app.hypervisor.clone();
    let spec = spec(app, &disk);
    let bus = app.bus.clone();
    let cancel = app.cancel.clone();
    tokio::spawn(async move {
        let finished = tokio::select! {
            _ = cancel.cancelled() => return,
            r = hypervisor.finish_detach(&vm_id, &spec) => r,
        };
        if let Err(e) = finished {
            tracing::error!(disk = %disk.id, error = %e, "completing a detach");
            return;
        }
        if let Err(e) = finish_detached_row(&bus, &disk.id, &vm_id).await {
            tracing::error!(disk = %disk.id, error = %e, "recording a completed detach");
        }
    });
}

/// Marks a DETACHING disk detached, if it still is.
async fn finish_detached_row(
    bus: &crate::events::EventBus,
    disk_id: &str,
    vm_id: &str,
) -> ApiResult<()> {
    let mut w = bus.writer().await?;
    let Some(disk) = model::Entity::find_by_id(disk_id.to_string())
        .one(w.txn())
        .await?
    else {
        return Ok(());
    };
    if disk.attachment != Attachment::Detaching {
        return Ok(());
    }
    let mut row = disk.clone().into_active_model();
    row.vm_id = Set(None);
    row.attachment = Set(Attachment::Detached);
    row.updated_at = Set(Utc::now());
    let disk = row.update(w.txn()).await?;
    w.record(detached_event(&disk, vm_id, None)).await?;
    w.commit().await?;
    Ok(())
}

/// A stopped VM holds no disk: those still DETACHING are detached now.
pub async fn release_detaching(app: &Ctx, vm_id: &str) -> ApiResult<()> {
    let detaching = model::Entity::find()
        .filter(model::Column::VmId.eq(vm_id))
        .filter(model::Column::Attachment.eq(Attachment::Detaching))
        .all(&app.db)
        .await?;
    for disk in detaching {
        finish_detached_row(&app.bus, &disk.id, vm_id).await?;
    }
    Ok(())
}

pub async fn delete(app: &Ctx, disk_id: &str, dry_run: bool) -> ApiResult<Change<Disk>> {
    let disk = find_disk(app, disk_id).await?;
    let op_id = operation::new_id();
    let _disk_guard = app.locks.lock(&disk.id, &op_id, "DELETE_DISK").await?;
    let disk = find_in::<model::Entity, _>(&app.db, "disk", &disk.id).await?;
    if disk.vm_id.is_some() {
        return Err(ApiError::Conflict(format!(
            "disk {:?} is attached to a VM: detach it first",
            disk.name
        )));
    }
    let action = VmAction::DeleteDisk(spec(app, &disk));
    if dry_run {
        return Ok(Change::planned(disk, app.hypervisor.plan(&action)));
    }
    let op = operation::begin(app, &op_id, "DELETE_DISK", "Disk", &disk.id).await?;
    let result = async {
        // The file goes first: if it cannot be removed, the row stays and says so.
        let steps = app.hypervisor.execute(&action).await?.steps;
        let mut w = app.bus.writer().await?;
        disk.clone().delete(w.txn()).await?;
        w.record(deleted_event(&disk, Some(&op.id))).await?;
        w.commit().await?;
        ApiResult::Ok((disk, steps))
    }
    .await;
    operation::conclude(app, op, result).await
}

/// Grows a disk (never shrinks: that would cut a guest's filesystem). A disk
/// of a running VM grows live with `block_resize`; otherwise with qemu-img.
pub async fn resize(
    app: &Ctx,
    disk_id: &str,
    size_bytes: i64,
    dry_run: bool,
) -> ApiResult<Change<Disk>> {
    let disk = find_disk(app, disk_id).await?;
    let size = validate::size_bytes(&app.config.limits, "sizeBytes", size_bytes)?;
    let op_id = operation::new_id();
    let _vm_guard = match &disk.vm_id {
        Some(vm_id) => Some(app.locks.lock(vm_id, &op_id, "RESIZE_DISK").await?),
        None => None,
    };
    let _disk_guard = app.locks.lock(&disk.id, &op_id, "RESIZE_DISK").await?;
    let locked_vm = disk.vm_id;
    let disk = find_in::<model::Entity, _>(&app.db, "disk", &disk.id).await?;
    if disk.vm_id.is_some() && disk.vm_id != locked_vm {
        // Attached while this call waited for the disk's lock: the VM it is in
        // now is not locked, so nothing is done. (Detached meanwhile is fine:
        // the VM lock held is one too many, not one too few.)
        return Err(ApiError::Conflict(format!(
            "disk {:?} was attached to a VM meanwhile: try again",
            disk.name
        )));
    }
    if size <= disk.size_bytes as u64 {
        return Err(ApiError::bad_input(format!(
            "sizeBytes {size} must be larger than the disk's {} bytes: disks only grow",
            disk.size_bytes
        )));
    }
    let running_vm = match &disk.vm_id {
        Some(vm_id) => {
            let vm = find_in::<vm::model::Entity, _>(&app.db, "VM", vm_id).await?;
            match vm.state {
                VmState::Running | VmState::Paused => Some(vm.id),
                VmState::Stopped | VmState::Crashed => None,
                other => {
                    return Err(ApiError::InvalidState(format!(
                        "cannot resize a disk of VM {:?} while it is {other}",
                        vm.name
                    )));
                }
            }
        }
        None => None,
    };
    let action = VmAction::ResizeDisk {
        running_vm,
        disk: spec(app, &disk),
        size_bytes: size,
    };
    if dry_run {
        return Ok(Change::planned(disk, app.hypervisor.plan(&action)));
    }
    let op = operation::begin(app, &op_id, "RESIZE_DISK", "Disk", &disk.id).await?;
    let result = async {
        let steps = app.hypervisor.execute(&action).await?.steps;
        let mut w = app.bus.writer().await?;
        let mut row = disk.clone().into_active_model();
        row.size_bytes = Set(size as i64);
        row.updated_at = Set(Utc::now());
        let resized = row.update(w.txn()).await?;
        w.record(NewEvent {
            kind: EventKind::DiskResized,
            subject_id: resized.id.clone(),
            subject_type: "Disk",
            operation_id: Some(op.id.clone()),
            payload: json!({"name": resized.name, "from": disk.size_bytes, "to": resized.size_bytes}),
        })
        .await?;
        w.commit().await?;
        ApiResult::Ok((resized, steps))
    }
    .await;
    operation::conclude(app, op, result).await
}
