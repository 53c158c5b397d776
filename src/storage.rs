//! Free space where vman writes: the filesystems of the database, of
//! `storage/` and of `run/`.
//!
//! A write that fails for want of space (ENOSPC, EDQUOT, `SQLITE_FULL`) is
//! `STORAGE_FULL`, naming the path it could not write under and how many
//! bytes that filesystem has free; never `INTERNAL`. Two checks refuse work
//! before a filesystem fills: `storage.min_free_bytes` for new disks and
//! imports ([`ensure_room`]), and [`DATABASE_HEADROOM`], kept free on the
//! database's filesystem for the records of work already under way
//! ([`ensure_database_room`]). This module only reads (statvfs); it never
//! makes or removes a file.

use std::path::Path;

use crate::{
    config::Config,
    error::{ApiError, ApiResult},
};

/// Mutations that add something are refused while the database's
/// filesystem has less than this free: what is left is for the records of
/// what runs already (a FAILED operation, a crash the observer records) and
/// for the mutations that make room (deletes, stops).
pub const DATABASE_HEADROOM: u64 = 1 << 20;

/// Free bytes on the filesystem that holds `path` (or, while `path` does
/// not exist yet, its nearest ancestor that does), as an unprivileged
/// writer sees them; `None` when even that cannot be read.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let mut at = Some(path);
    while let Some(dir) = at {
        if let Ok(stat) = rustix::fs::statvfs(dir) {
            return Some(stat.f_bavail.saturating_mul(stat.f_frsize));
        }
        at = dir.parent();
    }
    None
}

/// ENOSPC or EDQUOT.
pub fn is_no_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Whether a program's message (`qemu-img` on stderr) says it ran out of space.
pub fn says_no_space(text: &str) -> bool {
    text.contains("No space left on device") || text.contains("Disk quota exceeded")
}

/// `STORAGE_FULL` for a write under `path` that failed (or would fail) for
/// want of space; the free bytes are read now.
pub fn full(path: &Path, detail: impl Into<String>) -> ApiError {
    ApiError::StorageFull {
        path: path.to_path_buf(),
        free_bytes: free_bytes(path).unwrap_or(0),
        detail: detail.into(),
    }
}

/// Refuses, with `STORAGE_FULL`, a new file of `bytes` under `dir` that
/// would leave less than `storage.min_free_bytes` free there. `what` says
/// what the file is.
pub fn ensure_room(config: &Config, dir: &Path, bytes: u64, what: &str) -> ApiResult<()> {
    let reserve = config.storage.min_free_bytes;
    let Some(free) = free_bytes(dir) else {
        return Ok(());
    };
    if free < bytes.saturating_add(reserve) {
        return Err(ApiError::StorageFull {
            path: dir.to_path_buf(),
            free_bytes: free,
            detail: format!(
                "{what} needs {bytes} bytes and storage.min_free_bytes keeps {reserve} free"
            ),
        });
    }
    Ok(())
}

/// Refuses, with `STORAGE_FULL`, a mutation that adds something while the
/// database's filesystem has less than [`DATABASE_HEADROOM`] free.
pub fn ensure_database_room(config: &Config) -> ApiResult<()> {
    // A PostgreSQL server's disk is not this host's to measure.
    let crate::db::Location::Sqlite(db) = config.database() else {
        return Ok(());
    };
    match free_bytes(&db) {
        Some(free) if free < DATABASE_HEADROOM => Err(ApiError::StorageFull {
            path: db,
            free_bytes: free,
            detail: format!(
                "vman keeps the last {DATABASE_HEADROOM} bytes of the database's filesystem for the records of work under way; delete something or make room"
            ),
        }),
        _ => Ok(()),
    }
}
