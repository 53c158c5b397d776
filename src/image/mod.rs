//! Images: files imported into storage that templates build on (a base disk
//! image, a kernel, an initrd) and that VMs' CD-ROM drives take (an ISO).
//! Users name a file inside the configured import directory, or a URL with
//! the file's SHA-256; vman checks it and copies or downloads it under a
//! name of its own. A download is a long operation (progress, cancel).

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
    pub source: ImportSource,
}

/// Where an image comes from.
pub enum ImportSource {
    /// Relative to the import directory.
    Path(String),
    /// An http or https URL, and the file's SHA-256 (hex).
    Url { url: String, sha256: String },
}

/// Redirects a download follows, at most.
const MAX_REDIRECTS: usize = 5;

/// A URL to download from: http or https, with a host.
fn check_url(url: &str) -> ApiResult<String> {
    validate::text("url", url, 2048)?;
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ApiError::bad_input(format!("url {url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ApiError::bad_input(format!(
            "url {url:?} must be an http or https URL with a host"
        )));
    }
    Ok(parsed.to_string())
}

/// A SHA-256 as 64 hex digits, lowercased.
fn check_sha256(sha256: &str) -> ApiResult<String> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_input(format!(
            "sha256 {sha256:?} must be 64 hexadecimal digits"
        )));
    }
    Ok(sha256.to_ascii_lowercase())
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

/// `importImage`: from the import directory within the mutation, or from a
/// URL as a long operation (the answer has no image yet: the operation is
/// RUNNING).
pub async fn import(
    app: &Ctx,
    input: ImportImage,
    dry_run: bool,
) -> ApiResult<Change<Option<Image>>> {
    validate::name("name", &input.name)?;
    match input.source {
        ImportSource::Path(ref relative) => {
            let source = resolve_import(&app.config.import_dir(), relative)?;
            let change = import_file(app, &input, source, dry_run).await?;
            Ok(Change {
                object: Some(change.object),
                operation: change.operation,
                plan: change.plan,
            })
        }
        ImportSource::Url {
            ref url,
            ref sha256,
        } => {
            let (url, sha256) = (check_url(url)?, check_sha256(sha256)?);
            download(app, &input, url, sha256, dry_run).await
        }
    }
}

/// A new image, on this node's host (its file is made in this node's storage).
fn new_image(app: &Ctx, input: &ImportImage) -> Image {
    Image {
        id: uuid::Uuid::now_v7().to_string(),
        name: input.name.clone(),
        kind: input.kind,
        format: None,
        size_bytes: 0,
        host_id: Some(app.host_id.to_string()),
        created_at: Utc::now(),
    }
}

/// Records an image whose file the host made (copied or downloaded).
async fn record(
    env: &mut operation::Envelope<'_>,
    image: &mut Image,
    found: Option<&crate::host::ImportedImage>,
) -> ApiResult<Image> {
    if let Some(found) = found {
        image.format = found.format;
        image.size_bytes = i64::try_from(found.size_bytes).unwrap_or(i64::MAX);
    }
    let image = image.clone();
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
}

/// A download: accepted as a long operation, carried out in the background.
async fn download(
    app: &Ctx,
    input: &ImportImage,
    url: String,
    sha256: String,
    dry_run: bool,
) -> ApiResult<Change<Option<Image>>> {
    ensure_name_free(&app.db, &input.name).await?;
    let mut image = new_image(app, input);
    let dest = path(app, &image);
    let action = VmAction::DownloadImage {
        url,
        sha256,
        dest: dest.clone(),
        disk: image.kind == ImageKind::Disk,
        limits: crate::host::DownloadLimits {
            max_bytes: app.config.storage.download_max_bytes,
            stall_timeout: app.config.storage.download_stall_timeout,
            max_redirects: MAX_REDIRECTS,
        },
    };
    if dry_run {
        return Ok(Change::planned(Some(image), app.hypervisor.plan(&action)));
    }
    let request = Request::new(OperationKind::ImportImage, SubjectType::Image, &image.id);
    let (op, long) = operation::accept_long(app, &request).await?;
    let running = op.clone();
    let ctx = app.clone();
    tokio::spawn(async move {
        let ended = operation::carry_out(&ctx, op, Some(long), async |env| {
            let outcome = env
                .vm_reporting(&action, |fraction, total| {
                    crate::operation::progress::Progress::of(fraction, total)
                })
                .await?;
            env.undo_with(HostAction::Vm(VmAction::DeleteImage { path: dest }));
            record(env, &mut image, outcome.image.as_ref()).await
        })
        .await;
        if let Err(e) = ended {
            tracing::info!(error = %e, "an image download did not complete");
        }
    });
    Ok(Change {
        object: None,
        operation: Some(running),
        plan: Vec::new(),
    })
}

/// An import from the import directory, within the mutation.
async fn import_file(
    app: &Ctx,
    input: &ImportImage,
    source: PathBuf,
    dry_run: bool,
) -> ApiResult<Change<Image>> {
    ensure_name_free(&app.db, &input.name).await?;
    let mut image = new_image(app, input);
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
        env.undo_with(HostAction::Vm(VmAction::DeleteImage {
            path: path(app, &image),
        }));
        record(env, &mut image, outcome.image.as_ref()).await
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
    let image = ensure_unused(&app.db, &id).await?;
    // Its file is in its host's storage: that host's node removes it.
    let what = format!("image {:?}", image.name);
    crate::cluster::check_here(app, &what, image.host_id.as_deref()).await?;
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
