//! Disks: files in storage named from their ID. They are created and deleted
//! through the hypervisor port (qemu-img), attached to VMs cold (recorded for
//! the next start) or hot (plugged into the running VM).

pub mod base;
pub mod graphql;
pub mod model;

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, ModelTrait,
    QueryFilter, Set,
};

use crate::{
    context::Ctx,
    error::{ApiError, ApiResult},
    events::{NewEvent, Payload, Writer, find_in},
    host::{DiskSpec, VmAction},
    operation::{self, Change, HostAction, OperationKind, Request, SubjectType},
    validate,
    vm::{self, Plug},
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
    NewEvent::new(
        &disk.id,
        operation_id,
        Payload::DiskCreated {
            name: disk.name.clone(),
            size_bytes: disk.size_bytes,
            format: disk.format,
            vm_id: disk.vm_id.clone(),
        },
    )
}

pub fn deleted_event(disk: &Disk, operation_id: Option<&str>) -> NewEvent {
    NewEvent::new(
        &disk.id,
        operation_id,
        Payload::DiskDeleted {
            name: disk.name.clone(),
        },
    )
}

pub fn detached_event(disk: &Disk, vm_id: &str, operation_id: Option<&str>) -> NewEvent {
    NewEvent::new(
        &disk.id,
        operation_id,
        Payload::DiskDetached {
            name: disk.name.clone(),
            vm_id: vm_id.to_string(),
        },
    )
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
    // Disks are thin: a new one takes next to nothing until its guest writes.
    crate::storage::ensure_room(&app.config, &app.config.storage_dir(), 0, "a new disk")?;
    let now = Utc::now();
    let disk = Disk {
        id: uuid::Uuid::now_v7().to_string(),
        name: input.name,
        format: input.format,
        size_bytes: input.size_bytes,
        vm_id: None,
        attachment: Attachment::Detached,
        backing_template_id: None,
        base_id: None,
        host_id: Some(app.host_id.to_string()),
        created_at: now,
        updated_at: now,
    };
    let action = VmAction::CreateDisk(spec(app, &disk));
    if dry_run {
        return Ok(Change::planned(disk, app.hypervisor.plan(&action)));
    }
    let request = Request::new(OperationKind::CreateDisk, SubjectType::Disk, &disk.id);
    operation::run(app, request, async |env| {
        env.vm(&action).await?;
        env.undo_with(HostAction::Vm(VmAction::DeleteDisk(spec(app, &disk))));
        env.commit(async |w, op| {
            ensure_name_free(w.txn(), &disk.name).await?;
            let disk = model::ActiveModel::from(disk.clone())
                .insert(w.txn())
                .await?;
            w.record(created_event(&disk, Some(op))).await?;
            Ok(disk)
        })
        .await
    })
    .await
}

/// A detached disk's file may be changed here: it is in this node's host's
/// storage (or from before hosts). Otherwise `HOST_UNAVAILABLE`.
async fn check_here(app: &Ctx, disk: &Disk) -> ApiResult<()> {
    let what = format!("disk {:?}", disk.name);
    crate::cluster::check_here(app, &what, disk.host_id.as_deref()).await
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
    let kind = OperationKind::AttachDisk;
    let _vm_guard = app.locks.lock(&vm_id, &op_id, kind).await?;
    let _disk_guard = app.locks.lock(&disk_id, &op_id, kind).await?;
    let disk = find_in::<model::Entity, _>(&app.db, "disk", &disk_id).await?;
    let vm = find_in::<vm::model::Entity, _>(&app.db, "VM", &vm_id).await?;
    crate::cluster::check_local(app, &vm).await?;
    crate::cluster::place::ensure_same_host(
        app,
        &format!("disk {:?}", disk.name),
        disk.host_id.as_deref(),
        vm.host_id.as_deref(),
        &format!("attach disk {:?} to VM {:?}", disk.name, vm.name),
    )
    .await?;
    if disk.attachment != Attachment::Detached {
        return Err(ApiError::Conflict(format!(
            "disk {:?} is already attached",
            disk.name
        )));
    }
    let plug = vm::plug(&vm, "attach a disk to")?;
    let action = (plug == Plug::Hot).then(|| VmAction::AttachDisk {
        vm_id: vm.id.clone(),
        disk: spec(app, &disk),
    });
    if dry_run {
        let plan = action.iter().flat_map(|a| app.hypervisor.plan(a)).collect();
        return Ok(Change::planned(disk, plan));
    }
    let request = Request::with_id(op_id, kind, SubjectType::Disk, &disk.id);
    operation::run(app, request, async |env| {
        if let Some(action) = &action {
            env.vm(action).await?;
        }
        env.commit(async |w, op| {
            let mut row = disk.clone().into_active_model();
            row.vm_id = Set(Some(vm.id.clone()));
            row.attachment = Set(Attachment::Attached);
            row.updated_at = Set(Utc::now());
            let disk = row.update(w.txn()).await?;
            w.record(NewEvent::new(
                &disk.id,
                Some(op),
                Payload::DiskAttached {
                    name: disk.name.clone(),
                    vm_id: vm.id.clone(),
                    hot: plug == Plug::Hot,
                },
            ))
            .await?;
            Ok(disk)
        })
        .await
    })
    .await
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
    let kind = OperationKind::DetachDisk;
    let _vm_guard = app.locks.lock(&vm_id, &op_id, kind).await?;
    let _disk_guard = app.locks.lock(&disk.id, &op_id, kind).await?;
    let vm = find_in::<vm::model::Entity, _>(&app.db, "VM", &vm_id).await?;
    crate::cluster::check_local(app, &vm).await?;
    let disk = find_in::<model::Entity, _>(&app.db, "disk", &disk.id).await?;
    if disk.attachment != Attachment::Attached || disk.vm_id.as_deref() != Some(vm.id.as_str()) {
        return Err(ApiError::Conflict(format!(
            "disk {:?} is {:?}, not attached",
            disk.name, disk.attachment
        )));
    }
    let plug = vm::plug(&vm, "detach a disk from")?;
    let action = (plug == Plug::Hot).then(|| VmAction::DetachDisk {
        vm_id: vm.id.clone(),
        disk: spec(app, &disk),
    });
    if dry_run {
        let plan = action.iter().flat_map(|a| app.hypervisor.plan(a)).collect();
        return Ok(Change::planned(disk, plan));
    }
    let request = Request::with_id(op_id, kind, SubjectType::Disk, &disk.id);
    operation::run(app, request, async |env| {
        let outcome = match &action {
            Some(action) => env.vm(action).await?,
            None => Default::default(),
        };
        if outcome.detach_pending {
            // The guest has not let go yet: the disk stays visible as DETACHING
            // and the detach completes when it does, without holding the VM.
            let disk = env
                .commit(async |w, _| {
                    set_attachment(w, &disk, Some(&vm.id), Attachment::Detaching, None).await
                })
                .await?;
            spawn_finish_detach(app, disk.clone(), vm.id.clone());
            return Ok(disk);
        }
        env.commit(async |w, op| {
            set_attachment(w, &disk, None, Attachment::Detached, Some((&vm.id, op))).await
        })
        .await
    })
    .await
}

/// Writes a disk's attachment; `detached_from` journals a DISK_DETACHED event.
async fn set_attachment(
    w: &mut Writer<'_>,
    disk: &Disk,
    vm_id: Option<&str>,
    attachment: Attachment,
    detached_from: Option<(&str, &str)>,
) -> ApiResult<Disk> {
    let mut row = disk.clone().into_active_model();
    row.vm_id = Set(vm_id.map(str::to_string));
    row.attachment = Set(attachment);
    row.updated_at = Set(Utc::now());
    let disk = row.update(w.txn()).await?;
    if let Some((vm_id, op_id)) = detached_from {
        w.record(detached_event(&disk, vm_id, Some(op_id))).await?;
    }
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
    let kind = OperationKind::DeleteDisk;
    let _disk_guard = app.locks.lock(&disk.id, &op_id, kind).await?;
    let disk = find_in::<model::Entity, _>(&app.db, "disk", &disk.id).await?;
    if disk.vm_id.is_some() {
        return Err(ApiError::Conflict(format!(
            "disk {:?} is attached to a VM: detach it first",
            disk.name
        )));
    }
    check_here(app, &disk).await?;
    base::ensure_no_clones(&app.db, &disk, &format!("delete disk {:?}", disk.name)).await?;
    let action = VmAction::DeleteDisk(spec(app, &disk));
    if dry_run {
        return Ok(Change::planned(disk, app.hypervisor.plan(&action)));
    }
    let request = Request::with_id(op_id, kind, SubjectType::Disk, &disk.id);
    operation::run(app, request, async |env| {
        // The file goes first: if it cannot be removed, the row stays and says so.
        env.vm(&action).await?;
        let (disk, unused_bases) = env
            .commit(async |w, op| {
                disk.clone().delete(w.txn()).await?;
                w.record(deleted_event(&disk, Some(op))).await?;
                let unused = base::release(app, w.txn(), disk.base_id.clone()).await?;
                Ok((disk.clone(), unused))
            })
            .await?;
        base::remove_files(env, &unused_bases).await;
        Ok(disk)
    })
    .await
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
    let kind = OperationKind::ResizeDisk;
    let _vm_guard = match &disk.vm_id {
        Some(vm_id) => Some(app.locks.lock(vm_id, &op_id, kind).await?),
        None => None,
    };
    let _disk_guard = app.locks.lock(&disk.id, &op_id, kind).await?;
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
            crate::cluster::check_local(app, &vm).await?;
            match vm::plug(&vm, "resize a disk of")? {
                Plug::Hot => Some(vm.id),
                Plug::Cold => None,
            }
        }
        None => {
            check_here(app, &disk).await?;
            None
        }
    };
    let action = VmAction::ResizeDisk {
        running_vm,
        disk: spec(app, &disk),
        size_bytes: size,
    };
    if dry_run {
        return Ok(Change::planned(disk, app.hypervisor.plan(&action)));
    }
    let request = Request::with_id(op_id, kind, SubjectType::Disk, &disk.id);
    operation::run(app, request, async |env| {
        env.vm(&action).await?;
        env.commit(async |w, op| {
            let mut row = disk.clone().into_active_model();
            row.size_bytes = Set(size as i64);
            row.updated_at = Set(Utc::now());
            let resized = row.update(w.txn()).await?;
            w.record(NewEvent::new(
                &resized.id,
                Some(op),
                Payload::DiskResized {
                    name: resized.name.clone(),
                    from: disk.size_bytes,
                    to: resized.size_bytes,
                },
            ))
            .await?;
            Ok(resized)
        })
        .await
    })
    .await
}
