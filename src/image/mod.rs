//! Images: files imported into storage that templates build on (a base disk
//! image, a kernel, an initrd). Users name a file inside the configured import
//! directory; vman checks it and copies it under a name of its own.

pub mod graphql;
pub mod model;

use std::path::{Component, Path, PathBuf};

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, ModelTrait, PaginatorTrait, QueryFilter,
};

use crate::{
    context::Ctx,
    error::{ApiError, ApiResult},
    events::{NewEvent, Payload, find_in},
    host::VmAction,
    operation::{self, Change, HostAction, OperationKind, Request, SubjectType},
    validate,
};
pub use model::{ImageKind, Model as Image};

/// Where an image's file lives: named from its ID, never from user input.
pub fn path(app: &Ctx, image: &Image) -> PathBuf {
    app.config.storage_dir().join("images").join(&image.id)
}

pub struct ImportImage {
    pub name: String,
    pub kind: ImageKind,
    /// Relative to the import directory.
    pub path: String,
}

/// Resolves a user-given relative path inside the import directory, refusing
/// anything that would leave it (absolute paths, `..`, symlinks pointing out).
fn resolve_import(import_dir: &Path, relative: &str) -> ApiResult<PathBuf> {
    validate::text("path", relative, 1024)?;
    let rel = Path::new(relative);
    if relative.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(ApiError::bad_input(format!(
            "path {relative:?} must be a plain relative path inside the import directory"
        )));
    }
    let base = std::fs::canonicalize(import_dir)
        .map_err(|e| ApiError::Host(format!("import directory {}: {e}", import_dir.display())))?;
    let full = std::fs::canonicalize(base.join(rel))
        .map_err(|_| ApiError::not_found("import file", relative))?;
    if !full.starts_with(&base) {
        return Err(ApiError::bad_input(format!(
            "path {relative:?} leads outside the import directory"
        )));
    }
    if !full.is_file() {
        return Err(ApiError::bad_input(format!(
            "path {relative:?} is not a regular file"
        )));
    }
    Ok(full)
}

pub async fn import(app: &Ctx, input: ImportImage, dry_run: bool) -> ApiResult<Change<Image>> {
    validate::name("name", &input.name)?;
    let source = resolve_import(&app.config.import_dir(), &input.path)?;
    ensure_name_free(&app.db, &input.name).await?;
    let mut image = Image {
        id: uuid::Uuid::now_v7().to_string(),
        name: input.name,
        kind: input.kind,
        format: None,
        size_bytes: 0,
        created_at: Utc::now(),
    };
    // Inspect before anything is recorded: a refused image changes nothing.
    let inspect = VmAction::InspectImage {
        source: source.clone(),
        disk: image.kind == ImageKind::Disk,
    };
    let mut plan = app.hypervisor.plan(&inspect);
    let inspected = match dry_run {
        true => None,
        false => app.hypervisor.execute(&inspect).await?.image,
    };
    // The copy must fit, and leave storage.min_free_bytes: refused before a
    // byte is copied, rather than failing with a full filesystem half-way.
    crate::storage::ensure_room(
        &app.config,
        &app.config.storage_dir().join("images"),
        inspected.map_or(0, |found| found.size_bytes),
        "the image's copy",
    )?;
    let action = VmAction::ImportImage {
        source,
        dest: path(app, &image),
        disk: image.kind == ImageKind::Disk,
    };
    if dry_run {
        plan.extend(app.hypervisor.plan(&action));
        return Ok(Change::planned(image, plan));
    }
    let request = Request::new(OperationKind::ImportImage, SubjectType::Image, &image.id);
    operation::run(app, request, async |env| {
        let outcome = env.vm(&action).await?;
        if let Some(found) = &outcome.image {
            image.format = found.format;
            image.size_bytes = i64::try_from(found.size_bytes).unwrap_or(i64::MAX);
        }
        env.undo_with(HostAction::Vm(VmAction::DeleteImage {
            path: path(app, &image),
        }));
        env.commit(async |w, op| {
            ensure_name_free(w.txn(), &image.name).await?;
            let image = model::ActiveModel::from(image.clone())
                .insert(w.txn())
                .await?;
            w.record(NewEvent::new(
                &image.id,
                Some(op),
                Payload::ImageImported {
                    name: image.name.clone(),
                    kind: image.kind,
                    size_bytes: image.size_bytes,
                },
            ))
            .await?;
            Ok(image)
        })
        .await
    })
    .await
}

async fn ensure_name_free(db: &impl sea_orm::ConnectionTrait, name: &str) -> ApiResult<()> {
    crate::db::ensure_free::<model::Entity>(db, model::Column::Name, name, "an image").await
}

/// The image `id`, if no template uses it and no VM has it in its drive.
async fn ensure_unused(db: &impl sea_orm::ConnectionTrait, id: &str) -> ApiResult<Image> {
    use crate::template::model as t;
    let image = find_in::<model::Entity, _>(db, "image", id).await?;
    let users = t::Entity::find()
        .filter(
            sea_orm::Condition::any()
                .add(t::Column::BaseImageId.eq(id))
                .add(t::Column::KernelImageId.eq(id))
                .add(t::Column::InitrdImageId.eq(id)),
        )
        .count(db)
        .await?;
    if users > 0 {
        return Err(ApiError::Conflict(format!(
            "image {:?} is used by {users} template(s)",
            image.name
        )));
    }
    let in_drives: Vec<String> = crate::vm::model::Entity::find()
        .filter(crate::vm::model::Column::CdromImageId.eq(id))
        .all(db)
        .await?
        .into_iter()
        .map(|vm| vm.name)
        .collect();
    if !in_drives.is_empty() {
        return Err(ApiError::Conflict(format!(
            "image {:?} is in the CD-ROM drive of VM(s) {}: eject it first",
            image.name,
            in_drives.join(", ")
        )));
    }
    Ok(image)
}

/// Deletes an image no template uses: its row, then its file.
pub async fn delete(app: &Ctx, id: &str) -> ApiResult<Change<Image>> {
    let id = validate::id("id", id)?;
    // Refused before any operation is recorded; checked again in the write.
    ensure_unused(&app.db, &id).await?;
    let request = Request::new(OperationKind::DeleteImage, SubjectType::Image, &id);
    operation::run(app, request, async |env| {
        let image = env
            .commit(async |w, op| {
                let image = ensure_unused(w.txn(), &id).await?;
                image.clone().delete(w.txn()).await?;
                w.record(NewEvent::new(
                    &image.id,
                    Some(op),
                    Payload::ImageDeleted {
                        name: image.name.clone(),
                    },
                ))
                .await?;
                Ok(image)
            })
            .await?;
        // The row is gone: a file that cannot be removed is for the
        // coherence sweep to report, not a reason to fail.
        let removal = VmAction::DeleteImage {
            path: path(app, &image),
        };
        if let Err(e) = env.vm(&removal).await {
            tracing::warn!(image = %image.id, error = %e, "removing an image file");
        }
        Ok(image)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_paths_stay_inside_the_import_directory() {
        let dir = tempfile::tempdir().unwrap();
        let import = dir.path().join("import");
        std::fs::create_dir_all(import.join("sub")).unwrap();
        std::fs::write(import.join("sub/ok.img"), b"x").unwrap();
        std::fs::write(dir.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), import.join("link")).unwrap();
        assert!(resolve_import(&import, "sub/ok.img").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../secret",
            "sub/../../secret",
            "link",
            "sub",
            "missing",
        ] {
            assert!(resolve_import(&import, bad).is_err(), "{bad}");
        }
    }
}
