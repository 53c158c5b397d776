//! `cloneVm`: a new VM (new id, new MACs, the same template link, tags and
//! networks) with its own copies of the source's disks. The source must be
//! STOPPED: its disks are then still, and a linked clone may freeze them.
//!
//! - **Full**: each disk is copied with `qemu-img convert` into a standalone
//!   file (a template's base image flattened in), under a `.partial` name.
//!   It is a long operation: the mutation answers at once with the
//!   operation RUNNING, the copies go on in a background task that holds the
//!   source's lock, report progress and can be cancelled (nothing is left:
//!   no file, no row).
//! - **Linked**: each source disk is frozen into a read-only base
//!   ([`crate::disk::base`]) and both the source and the clone get a new
//!   qcow2 overlay on it. Quick (no data is copied): it runs within the
//!   mutation, like `createVm`.
//!
//! The rows (VM, disks, NICs, tags) are written in one transaction at the
//! end, with their events; a failure or a cancel undoes the host work.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, Set,
};

use super::{Vm, VmState, model, tag};
use crate::{
    context::Ctx,
    disk::{
        self, Disk,
        base::{self, Base},
        model::{self as disk_model, Attachment},
    },
    error::{ApiError, ApiResult},
    events::{Writer, find_in},
    host::{DiskSpec, VmAction},
    network::model::nic,
    operation::{self, Change, HostAction, OperationKind, Progress, Request, SubjectType},
    validate,
};

pub struct CloneVm {
    pub name: String,
    /// Overlays on frozen bases instead of copies.
    pub linked: bool,
}

/// One source disk and its clone.
struct DiskPair {
    source: Disk,
    clone: Disk,
    /// Linked: the base the source's file becomes.
    base: Option<Base>,
}

/// The clone's name for a source disk: `web-root` of VM `web` becomes
/// `<clone>-root`; a disk named otherwise becomes `<clone>-<disk name>`.
fn disk_name(source_vm: &str, clone_vm: &str, disk: &str) -> String {
    match disk.strip_prefix(&format!("{source_vm}-")) {
        Some(rest) => format!("{clone_vm}-{rest}"),
        None => format!("{clone_vm}-{disk}"),
    }
}

/// Bytes a full copy of `disks` may write: what their files (and backing
/// chains) hold now, at most their virtual sizes.
fn copy_bytes(specs: &[DiskSpec], chains: &[Vec<std::path::PathBuf>]) -> u64 {
    use std::os::unix::fs::MetadataExt;
    specs
        .iter()
        .zip(chains)
        .map(|(spec, chain)| {
            let held: u64 = std::iter::once(&spec.path)
                .chain(chain)
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.blocks() * 512)
                .sum();
            held.min(spec.size_bytes)
        })
        .sum()
}

pub async fn clone(
    app: &Ctx,
    source_id: &str,
    input: CloneVm,
    dry_run: bool,
) -> ApiResult<Change<Option<Vm>>> {
    let source_id = validate::id("id", source_id)?;
    validate::name("name", &input.name)?;
    let op_id = operation::new_id();
    let kind = OperationKind::CloneVm;
    let guard = app.locks.lock(&source_id, &op_id, kind).await?;
    let source = find_in::<model::Entity, _>(&app.db, "VM", &source_id).await?;
    crate::cluster::check_local(app, &source).await?;
    if source.state != VmState::Stopped {
        return Err(ApiError::InvalidState(format!(
            "cannot clone VM {:?}: it is {}; stop it first (a clone is made of a STOPPED VM)",
            source.name, source.state
        )));
    }
    super::ensure_vm_name_free(&app.db, &input.name).await?;
    let source_disks = disk_model::Entity::find()
        .filter(disk_model::Column::VmId.eq(&source.id))
        .order_by_asc(disk_model::Column::Id)
        .all(&app.db)
        .await?;
    if input.linked {
        for disk in &source_disks {
            base::ensure_linkable(disk)?;
        }
        // Freezing moves the disk files, internal snapshots and all, under
        // the bases; the source's new overlays would not have them.
        let snapshots = crate::snapshot::of_vm(&app.db, &source.id).await?;
        if !snapshots.is_empty() {
            let names: Vec<_> = snapshots.iter().map(|s| format!("{:?}", s.name)).collect();
            return Err(ApiError::Conflict(format!(
                "cannot make a linked clone of VM {:?}: it has snapshots ({}); delete them first, or make a full clone",
                source.name,
                names.join(", ")
            )));
        }
    }
    let clone_id = uuid::Uuid::now_v7().to_string();
    let now = Utc::now();
    let mut pairs = Vec::new();
    for source_disk in &source_disks {
        let name = disk_name(&source.name, &input.name, &source_disk.name);
        validate::name("the clone's disk name", &name)?;
        disk::ensure_name_free(&app.db, &name).await?;
        let base = input.linked.then(|| Base {
            id: uuid::Uuid::now_v7().to_string(),
            format: source_disk.format,
            size_bytes: source_disk.size_bytes,
            source_disk_id: source_disk.id.clone(),
            parent_base_id: source_disk.base_id.clone(),
            created_at: now,
        });
        let clone = Disk {
            id: uuid::Uuid::now_v7().to_string(),
            name,
            vm_id: Some(clone_id.clone()),
            attachment: Attachment::Attached,
            base_id: base.as_ref().map(|b| b.id.clone()),
            host_id: Some(app.host_id.to_string()),
            created_at: now,
            updated_at: now,
            ..source_disk.clone()
        };
        pairs.push(DiskPair {
            source: source_disk.clone(),
            clone,
            base,
        });
    }
    let source_nics = nic::Entity::find()
        .filter(nic::Column::VmId.eq(&source.id))
        .order_by_asc(nic::Column::Position)
        .all(&app.db)
        .await?;
    let mut nics = Vec::new();
    for source_nic in &source_nics {
        nics.push(nic::Model {
            id: uuid::Uuid::now_v7().to_string(),
            vm_id: clone_id.clone(),
            mac: crate::network::nic::generate_mac(&app.db).await?,
            tap: Some(crate::network::nic::tap_name(
                &clone_id,
                source_nic.position,
            )),
            attachment: Attachment::Attached,
            created_at: now,
            ..source_nic.clone()
        });
    }
    let tags = tag::of(&app.db, &source.id).await?;
    let vm = Vm {
        id: clone_id.clone(),
        name: input.name.clone(),
        desired_state: VmState::Stopped,
        state: VmState::Stopped,
        state_reason: Some(format!("cloned from {}", source.name)),
        pending_changes: None,
        host_id: Some(app.host_id.to_string()),
        created_at: now,
        updated_at: now,
        ..super::update::effective(&source)
    };
    let clone = Cloning {
        source,
        vm,
        pairs,
        nics,
        tags,
    };
    let request = Request::with_id(op_id, kind, SubjectType::Vm, &clone_id);
    if input.linked {
        let actions = clone.linked_actions(app);
        if dry_run {
            let plan = actions
                .iter()
                .flat_map(|(a, _)| app.hypervisor.plan(a))
                .collect();
            return Ok(Change::planned(Some(clone.vm), plan));
        }
        let change = operation::run(app, request, async |env| {
            for (action, undo) in &actions {
                env.vm(action).await?;
                env.undo_with(HostAction::Vm(undo.clone()));
            }
            env.commit(async |w, op| clone.record(w, op).await).await
        })
        .await?;
        drop(guard);
        return Ok(Change {
            object: Some(change.object),
            operation: change.operation,
            plan: change.plan,
        });
    }
    // Full: copies of every disk, checked against storage.min_free_bytes first.
    let copies: Vec<VmAction> = clone
        .pairs
        .iter()
        .map(|p| VmAction::CopyDisk {
            from: disk::spec(app, &p.source),
            to: disk::spec(app, &p.clone),
        })
        .collect();
    let sources: Vec<DiskSpec> = clone
        .pairs
        .iter()
        .map(|p| disk::spec(app, &p.source))
        .collect();
    let chains = backing_chains(app, &clone.pairs).await?;
    crate::storage::ensure_room(
        &app.config,
        &app.config.storage_dir(),
        copy_bytes(&sources, &chains),
        "the clone's copies of its disks",
    )?;
    if dry_run {
        let plan = copies.iter().flat_map(|a| app.hypervisor.plan(a)).collect();
        return Ok(Change::planned(Some(clone.vm), plan));
    }
    let total: u64 = sources.iter().map(|s| s.size_bytes).sum();
    let (op, long) = operation::accept_long(app, &request).await?;
    long.report(Progress {
        bytes_done: 0,
        bytes_total: total,
    });
    let running = op.clone();
    let ctx = app.clone();
    tokio::spawn(async move {
        // The source stays locked until the copies are done or undone.
        let _guard = guard;
        let ended = operation::carry_out(&ctx, op, Some(long), async |env| {
            let mut before = 0u64;
            for (copy, source) in copies.iter().zip(&sources) {
                let (done, size) = (before, source.size_bytes);
                env.vm_reporting(copy, move |fraction, _| Progress {
                    bytes_done: done + (fraction * size as f64) as u64,
                    bytes_total: total,
                })
                .await?;
                if let VmAction::CopyDisk { to, .. } = copy {
                    env.undo_with(HostAction::Vm(VmAction::DeleteDisk(to.clone())));
                }
                before += size;
            }
            env.commit(async |w, op| clone.record(w, op).await).await
        })
        .await;
        if let Err(e) = ended {
            tracing::info!(error = %e, "a full clone did not complete");
        }
    });
    Ok(Change {
        object: None,
        operation: Some(running),
        plan: Vec::new(),
    })
}

/// The files behind each source disk's own (its bases, its template's
/// image), for what a flattening copy may write.
async fn backing_chains(app: &Ctx, pairs: &[DiskPair]) -> ApiResult<Vec<Vec<std::path::PathBuf>>> {
    let mut chains = Vec::new();
    for pair in pairs {
        let mut chain = Vec::new();
        let mut next = pair.source.base_id.clone();
        while let Some(id) = next {
            let Some(b) = base::model::Entity::find_by_id(id).one(&app.db).await? else {
                break;
            };
            chain.push(base::path(app, &b));
            next = b.parent_base_id.clone();
        }
        if let Some(template_id) = &pair.source.backing_template_id
            && let Some(template) = crate::template::model::Entity::find_by_id(template_id.clone())
                .one(&app.db)
                .await?
            && let Some(image_id) = &template.base_image_id
            && let Some(image) = crate::image::model::Entity::find_by_id(image_id.clone())
                .one(&app.db)
                .await?
        {
            chain.push(crate::image::path(app, &image));
        }
        chains.push(chain);
    }
    Ok(chains)
}

/// Everything a clone writes.
struct Cloning {
    source: Vm,
    vm: Vm,
    pairs: Vec<DiskPair>,
    nics: Vec<nic::Model>,
    tags: Vec<String>,
}

impl Cloning {
    /// A linked clone's host actions, each with what takes it back: per
    /// disk, the source's file becomes a read-only base, then the source
    /// and the clone each get an overlay on it.
    fn linked_actions(&self, app: &Ctx) -> Vec<(VmAction, VmAction)> {
        let mut actions = Vec::new();
        for pair in &self.pairs {
            let base = pair.base.as_ref().expect("a linked clone's base");
            let source = disk::spec(app, &pair.source);
            let base_path = base::path(app, base);
            actions.push((
                VmAction::MoveFile {
                    from: source.path.clone(),
                    to: base_path.clone(),
                    read_only: true,
                },
                VmAction::MoveFile {
                    from: base_path,
                    to: source.path.clone(),
                    read_only: false,
                },
            ));
            for disk in [&pair.source, &pair.clone] {
                let mut overlay = disk::spec(app, disk);
                overlay.backing = Some(base::backing(app, base));
                actions.push((
                    VmAction::CreateDisk(overlay.clone()),
                    VmAction::DeleteDisk(overlay),
                ));
            }
        }
        actions
    }

    /// The clone's rows and events (and, linked, the bases and the
    /// source's disks now on them), in the operation's final write.
    async fn record(&self, w: &mut Writer<'_>, op: &str) -> ApiResult<Vm> {
        // The source is locked; its row is read again for a clear NOT_FOUND
        // should it be gone all the same.
        find_in::<model::Entity, _>(w.txn(), "VM", &self.source.id).await?;
        let vm = super::insert_new(w, &self.vm, &self.tags, op).await?;
        // The same cloud-init data, as a new instance (a new instance-id).
        if let Some(row) = super::cloud_init::of(w.txn(), &self.source.id).await? {
            let data = super::cloud_init::data(&row);
            super::cloud_init::set(w.txn(), &vm.id, Some(&data)).await?;
        }
        for pair in &self.pairs {
            if let Some(base) = &pair.base {
                base::model::ActiveModel::from(base.clone())
                    .insert(w.txn())
                    .await?;
                let mut source = pair.source.clone().into_active_model();
                source.base_id = Set(Some(base.id.clone()));
                source.updated_at = Set(Utc::now());
                source.update(w.txn()).await?;
            }
            disk::ensure_name_free(w.txn(), &pair.clone.name).await?;
            let disk = disk_model::ActiveModel::from(pair.clone.clone())
                .insert(w.txn())
                .await?;
            w.record(disk::created_event(&disk, Some(op))).await?;
        }
        for nic in &self.nics {
            crate::network::nic::insert_attached(w, nic, false, op).await?;
        }
        Ok(vm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_names_its_disks_after_itself() {
        assert_eq!(disk_name("web", "web2", "web-root"), "web2-root");
        assert_eq!(disk_name("web", "web2", "data"), "web2-data");
        assert_eq!(disk_name("web", "web2", "webby"), "web2-webby");
    }
}
