//! Files on the host: disk files made with qemu-img, images imported into
//! storage, and each VM's run directory.
//!
//! A file reaches its final name only when it is complete and checked: it is
//! written under a `.partial` name and renamed, and a failure removes the
//! partial file (one a killed vman left is removed at the next start). A disk image that names a backing or data file is refused,
//! never opened by a VM. Paths come from the services (storage, import and
//! run directories); nothing here builds one from user input.

use std::path::{Path, PathBuf};

use super::{argv, argv::QemuOptions, img};
use crate::{
    disk::model::DiskFormat,
    host::{DiskSpec, HostError, HostStep, ImportedImage},
};

/// A failure of a write under `dir`, told as [`HostError::NoSpace`] when it
/// was for want of space: the error says so (ENOSPC or EDQUOT, or
/// `qemu-img`'s "No space left on device"), or the filesystem has not one
/// byte free now (QEMU, say, could not write its pidfile and said nothing
/// a log on the same full filesystem could keep).
pub(super) fn no_space(dir: &Path, e: HostError) -> HostError {
    let says = match &e {
        HostError::NoSpace { .. } | HostError::Rejected(_) => return e,
        HostError::Io { source, .. } => crate::storage::is_no_space(source),
        HostError::Failed(text) | HostError::Timeout(text) => crate::storage::says_no_space(text),
    };
    let free = crate::storage::free_bytes(dir);
    if says || free == Some(0) {
        return HostError::NoSpace {
            path: dir.to_path_buf(),
            free_bytes: free.unwrap_or(0),
            detail: e.to_string(),
        };
    }
    e
}

/// Makes a VM's run directory (0700) and clears the sockets and pidfile a
/// previous QEMU left, so a stale one is never mistaken for the new one's.
pub(super) fn prepare_run_dir(run_dir: &Path) -> Result<(), HostError> {
    let io = |what: &str| {
        let what = format!("{what} {}", run_dir.display());
        move |source| HostError::Io { what, source }
    };
    std::fs::create_dir_all(run_dir).map_err(io("creating"))?;
    restrict(run_dir, 0o700);
    for stale in [
        argv::qmp_socket(run_dir),
        argv::console_socket(run_dir),
        argv::pid_file(run_dir),
    ] {
        match std::fs::remove_file(&stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cleaning")(e)),
        }
    }
    Ok(())
}

/// Narrows who may open a run directory or QEMU's socket (made under
/// whatever umask); a failure is logged: the VM works without it.
pub(super) fn restrict(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        tracing::warn!(path = %path.display(), error = %e, "restricting permissions");
    }
}

pub(super) async fn create_disk(steps: &[HostStep], disk: &DiskSpec) -> Result<(), HostError> {
    let [HostStep::Exec { argv }] = steps else {
        unreachable!("plan(CreateDisk) is one qemu-img run")
    };
    if disk.path.exists() {
        return Err(HostError::Failed(format!(
            "{} already exists",
            disk.path.display()
        )));
    }
    let partial = img::partial_path(disk);
    let _ = std::fs::remove_file(&partial);
    let result = img::run(argv).await.and_then(|_| {
        std::fs::rename(&partial, &disk.path).map_err(|source| HostError::Io {
            what: format!("renaming {} into place", partial.display()),
            source,
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// A file being written under a temporary name: removed when dropped
/// (a failure, or a cancelled operation's dropped future) unless kept.
pub(super) struct PartialFile(pub(super) Option<PathBuf>);

impl PartialFile {
    /// Renames it into place; from then on it is not removed.
    pub(super) fn rename_to(mut self, to: &Path) -> Result<(), HostError> {
        let from = self.0.take().expect("a partial file until renamed");
        std::fs::rename(&from, to).map_err(|source| {
            let _ = std::fs::remove_file(&from);
            HostError::Io {
                what: format!("renaming {} into place", from.display()),
                source,
            }
        })
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Copies a disk with the planned `qemu-img convert` into `to`'s partial
/// file, then renames it into place. Nothing is left on failure, nor when
/// the future is dropped (qemu-img is killed, the partial file removed).
pub(super) async fn copy_disk(
    steps: &[HostStep],
    to: &DiskSpec,
    report: &(dyn Fn(f64) + Send + Sync),
) -> Result<(), HostError> {
    let [HostStep::Exec { argv }] = steps else {
        unreachable!("plan(CopyDisk) is one qemu-img run")
    };
    if to.path.exists() {
        return Err(HostError::Failed(format!(
            "{} already exists",
            to.path.display()
        )));
    }
    let partial = img::partial_path(to);
    let _ = std::fs::remove_file(&partial);
    let guard = PartialFile(Some(partial));
    img::run_reporting(argv, report).await?;
    guard.rename_to(&to.path)
}

/// Renames a file within storage, refusing to replace one; `read_only`
/// makes it 0444 (a frozen base), otherwise it is made 0644 again.
pub(super) fn move_file(from: &Path, to: &Path, read_only: bool) -> Result<(), HostError> {
    use std::os::unix::fs::PermissionsExt;
    if to.exists() {
        return Err(HostError::Failed(format!(
            "{} already exists",
            to.display()
        )));
    }
    std::fs::rename(from, to).map_err(|source| HostError::Io {
        what: format!("moving {} to {}", from.display(), to.display()),
        source,
    })?;
    let mode = if read_only { 0o444 } else { 0o644 };
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        HostError::Io {
            what: format!("setting the mode of {}", to.display()),
            source,
        }
    })
}

/// What a file to import is, read in place; a disk image is checked as
/// [`inspect_disk_image`] does.
pub(super) async fn inspect_image(
    options: &QemuOptions,
    source: &Path,
    disk: bool,
) -> Result<ImportedImage, HostError> {
    let format = match disk {
        true => Some(inspect_disk_image(options, source).await?),
        false => None,
    };
    let size_bytes = std::fs::metadata(source).map(|m| m.len()).unwrap_or(0);
    Ok(ImportedImage { format, size_bytes })
}

/// A disk image must be a plain qcow2 or raw file: one that names a backing
/// file or an external data file could make QEMU open any host file.
pub(super) async fn inspect_disk_image(
    options: &QemuOptions,
    source: &Path,
) -> Result<DiskFormat, HostError> {
    let info = img::info(&options.img_binary, source).await?;
    if let Some(backing) = &info.backing_filename {
        return Err(HostError::Rejected(format!(
            "the image names a backing file ({backing}); import a standalone image"
        )));
    }
    if let Some(data_file) = info.data_file() {
        return Err(HostError::Rejected(format!(
            "the image names an external data file ({data_file})"
        )));
    }
    match info.format.as_str() {
        "qcow2" => Ok(DiskFormat::Qcow2),
        "raw" => Ok(DiskFormat::Raw),
        other => Err(HostError::Rejected(format!(
            "unsupported image format {other:?}: use qcow2 or raw"
        ))),
    }
}

/// Copies an image into storage under a temporary name, checks the copy (the
/// file QEMU will open, not the source, which could change meanwhile) and
/// renames it into place. Nothing is left behind on failure.
pub(super) async fn import_image(
    options: &QemuOptions,
    source: &Path,
    dest: &Path,
    disk: bool,
) -> Result<ImportedImage, HostError> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|source| HostError::Io {
            what: format!("creating {}", parent.display()),
            source,
        })?;
    }
    let partial = partial_of(dest);
    let (from, to) = (source.to_path_buf(), partial.clone());
    let copied = tokio::task::spawn_blocking(move || std::fs::copy(from, to))
        .await
        .map_err(|e| HostError::Failed(format!("copy task: {e}")))
        .and_then(|r| {
            r.map_err(|e| HostError::Io {
                what: format!("copying {} into storage", source.display()),
                source: e,
            })
        });
    let checked = async {
        let bytes = copied?;
        let image = match disk {
            true => ImportedImage {
                format: Some(inspect_disk_image(options, &partial).await?),
                // A disk's size is its virtual size, which is what a VM sees.
                size_bytes: img::info(&options.img_binary, &partial).await?.virtual_size,
            },
            false => ImportedImage {
                format: None,
                size_bytes: bytes,
            },
        };
        std::fs::rename(&partial, dest).map_err(|e| HostError::Io {
            what: format!("moving {} into place", dest.display()),
            source: e,
        })?;
        Ok(image)
    }
    .await;
    if checked.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    checked
}

/// The name a file is written under until it is complete and checked.
pub(super) fn partial_of(dest: &Path) -> PathBuf {
    let mut partial = dest.as_os_str().to_os_string();
    partial.push(".partial");
    PathBuf::from(partial)
}

/// Removes the `*.partial` files directly under `storage` and
/// `storage/images`, which only an interrupted [`create_disk`] or
/// [`import_image`] leaves (each removes its own on failure). Call only while
/// no operation runs: a running one's partial file is in use. A file that
/// cannot be removed is logged and not returned.
pub(super) fn remove_partials(storage: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for dir in [storage.to_path_buf(), storage.join("images")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let partial = path.extension().is_some_and(|e| e == "partial")
                && entry.file_type().is_ok_and(|t| t.is_file());
            if !partial {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => removed.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "removing a partial file")
                }
            }
        }
    }
    removed.sort();
    removed
}

/// Removes a disk's file; one already gone is what was asked.
pub(super) fn delete_disk(disk: &DiskSpec) -> Result<(), HostError> {
    delete_file(&disk.path)
}

/// Removes a file from storage; one already gone is what was asked.
pub(super) fn delete_file(path: &Path) -> Result<(), HostError> {
    removed(path, std::fs::remove_file(path))
}

/// Removes a stopped VM's run directory; one already gone is what was asked.
pub(super) fn remove_run_dir(run_dir: &Path) -> Result<(), HostError> {
    removed(run_dir, std::fs::remove_dir_all(run_dir))
}

fn removed(path: &Path, removal: std::io::Result<()>) -> Result<(), HostError> {
    match removal {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(HostError::Io {
            what: format!("removing {}", path.display()),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_that_failed_for_want_of_space_is_told_as_no_space_naming_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let no_space = |e| match no_space(dir.path(), e) {
            HostError::NoSpace {
                path, free_bytes, ..
            } => {
                assert_eq!(path, dir.path());
                assert!(free_bytes > 0, "a temp dir has room");
                true
            }
            _ => false,
        };
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            assert!(no_space(HostError::Io {
                what: "copying".into(),
                source: std::io::Error::from_raw_os_error(errno),
            }));
        }
        assert!(no_space(HostError::Failed(
            "qemu-img: x.qcow2.partial: Could not write qcow2 header: No space left on device"
                .into()
        )));
        assert!(no_space(HostError::Failed(
            "cp: Disk quota exceeded".into()
        )));
        // Other failures, where the filesystem has room, stay what they are.
        assert!(!no_space(HostError::Failed("qemu-img: boom".into())));
        assert!(!no_space(HostError::Io {
            what: "copying".into(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        }));
        assert!(!no_space(HostError::Rejected(
            "No space left on device".into()
        )));
    }
}
