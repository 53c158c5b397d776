//! Frozen bases: what linked clones share.
//!
//! A linked clone must never see its backing file change, so it is never an
//! overlay on a disk its source keeps writing. Cloning freezes each source
//! disk instead: its file is renamed to a base (`<source-disk-id>.base-<base-id>.qcow2`,
//! mode 0444, a row here), and the source and the clone each get a new
//! qcow2 overlay on it. A base is used by the disks whose `base_id` names it
//! and by the bases frozen on top of it (a source cloned again); it is
//! deleted with the last of them ([`release`]). Its file is named from its
//! source disk, which cannot be deleted while clones use a base it was
//! frozen from ([`ensure_no_clones`]), so the coherence sweep counts the
//! file as that disk's.

use std::{collections::HashSet, path::PathBuf};

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, ModelTrait, QueryFilter};

use crate::{
    context::Ctx,
    disk::model::{self as disk_model, DiskFormat},
    error::{ApiError, ApiResult},
    host::{Backing, VmAction},
};

pub mod model {
    use sea_orm::entity::prelude::*;

    /// A disk file frozen for linked clones.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "disk_bases")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub format: crate::disk::model::DiskFormat,
        pub size_bytes: i64,
        /// The disk whose file it was.
        pub source_disk_id: String,
        /// The base that file was itself an overlay on, if any.
        pub parent_base_id: Option<String>,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub use model::Model as Base;

/// Where a base's file lives: named from its source disk and its own id.
pub fn path(app: &Ctx, base: &Base) -> PathBuf {
    app.config.storage_dir().join(format!(
        "{}.base-{}.{}",
        base.source_disk_id,
        base.id,
        base.format.qemu_name()
    ))
}

/// What an overlay on `base` names as its backing file.
pub fn backing(app: &Ctx, base: &Base) -> Backing {
    Backing {
        path: path(app, base),
        format: base.format,
    }
}

/// A base's file, as the hypervisor port deletes it.
fn spec(app: &Ctx, base: &Base) -> crate::host::DiskSpec {
    crate::host::DiskSpec {
        id: base.id.clone(),
        path: path(app, base),
        format: base.format,
        size_bytes: base.size_bytes as u64,
        backing: None,
    }
}

/// The bases frozen from `disk_id`, and every base frozen on top of them.
async fn frozen_from(db: &impl ConnectionTrait, disk_id: &str) -> ApiResult<HashSet<String>> {
    let mut found: HashSet<String> = model::Entity::find()
        .filter(model::Column::SourceDiskId.eq(disk_id))
        .all(db)
        .await?
        .into_iter()
        .map(|b| b.id)
        .collect();
    let mut frontier: Vec<String> = found.iter().cloned().collect();
    while !frontier.is_empty() {
        let children = model::Entity::find()
            .filter(model::Column::ParentBaseId.is_in(frontier.clone()))
            .all(db)
            .await?;
        frontier = children
            .into_iter()
            .map(|b| b.id)
            .filter(|id| found.insert(id.clone()))
            .collect();
    }
    Ok(found)
}

/// Refuses, with CONFLICT naming them, to delete a disk whose frozen bases
/// linked clones use. `doing` says what was asked ("delete VM \"a\"").
pub async fn ensure_no_clones(
    db: &impl ConnectionTrait,
    disk: &disk_model::Model,
    doing: &str,
) -> ApiResult<()> {
    let bases = frozen_from(db, &disk.id).await?;
    if bases.is_empty() {
        return Ok(());
    }
    let users = disk_model::Entity::find()
        .filter(disk_model::Column::BaseId.is_in(bases))
        .filter(disk_model::Column::Id.ne(&disk.id))
        .all(db)
        .await?;
    if users.is_empty() {
        return Ok(());
    }
    let vm_ids: Vec<String> = users.iter().filter_map(|d| d.vm_id.clone()).collect();
    let vms = crate::vm::model::Entity::find()
        .filter(crate::vm::model::Column::Id.is_in(vm_ids))
        .all(db)
        .await?;
    let mut names: Vec<String> = users
        .iter()
        .map(
            |d| match vms.iter().find(|vm| Some(&vm.id) == d.vm_id.as_ref()) {
                Some(vm) => format!("VM {:?}", vm.name),
                None => format!("disk {:?}", d.name),
            },
        )
        .collect();
    names.sort();
    names.dedup();
    Err(ApiError::Conflict(format!(
        "cannot {doing}: linked clones use disk {:?} as their base: {}; delete them first",
        disk.name,
        names.join(", ")
    )))
}

/// In the write that deleted disks: deletes the rows of the bases no disk
/// and no base uses any more, from `base_ids` down their chains. Returns the
/// file removals for after the commit.
pub async fn release(
    app: &Ctx,
    db: &impl ConnectionTrait,
    base_ids: impl IntoIterator<Item = String>,
) -> ApiResult<Vec<VmAction>> {
    let mut removals = Vec::new();
    let mut todo: Vec<String> = base_ids.into_iter().collect();
    while let Some(id) = todo.pop() {
        let Some(base) = model::Entity::find_by_id(id.clone()).one(db).await? else {
            continue;
        };
        let disks = disk_model::Entity::find()
            .filter(disk_model::Column::BaseId.eq(&id))
            .all(db)
            .await?;
        let bases = model::Entity::find()
            .filter(model::Column::ParentBaseId.eq(&id))
            .all(db)
            .await?;
        if !disks.is_empty() || !bases.is_empty() {
            continue;
        }
        removals.push(VmAction::DeleteDisk(spec(app, &base)));
        todo.extend(base.parent_base_id.clone());
        base.delete(db).await?;
    }
    Ok(removals)
}

/// Removes the files of released bases; the rows are gone, so a file that
/// cannot be removed is logged (the coherence sweep reports it), not an error.
pub async fn remove_files(env: &mut crate::operation::Envelope<'_>, removals: &[VmAction]) {
    for removal in removals {
        if let Err(e) = env.vm(removal).await {
            tracing::warn!(error = %e, "removing a base no disk uses any more");
        }
    }
}

/// Whether a disk can be the source of a linked clone: a qcow2 file.
pub fn ensure_linkable(disk: &disk_model::Model) -> ApiResult<()> {
    match disk.format {
        DiskFormat::Qcow2 => Ok(()),
        DiskFormat::Raw => Err(ApiError::bad_input(format!(
            "disk {:?} is raw: a linked clone needs qcow2 disks (a full clone copies raw disks)",
            disk.name
        ))),
    }
}
