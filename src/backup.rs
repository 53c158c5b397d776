//! Backups of the database: `vman backup FILE`, the scheduled ones under
//! `<data_dir>/backups/`, and `vman restore FILE`.
//!
//! A backup is `VACUUM INTO` a `.partial` file: one read transaction, so it
//! is consistent (every write committed before it began, none after) and
//! writers never wait for it (WAL). The copy is checked (`quick_check`)
//! before it is renamed into place, so a file under a backup's name is
//! always whole. A restore never runs while a vman serves the data
//! directory (it takes the same `vman.lock`), keeps the database it replaces
//! aside, and leaves the reconciling of the host with the restored rows to
//! the next start (re-adoption and the coherence sweep). Disk files are not
//! in a backup; nothing here touches `storage/` or `run/`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use chrono::{DateTime, NaiveDateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

use crate::{
    config::Config,
    db::{self, Check, FileCheck},
};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{} exists already; choose another name (a backup never overwrites a file)", .0.display())]
    Exists(PathBuf),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("{} is not a sound vman database: {detail}", path.display())]
    Damaged { path: PathBuf, detail: String },
    /// A vman serves the data directory (it holds `vman.lock`).
    #[error("{0}")]
    Served(String),
    #[error("{0}")]
    Refused(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}

/// Why backups, restores and `vman doctor` are not vman's to do with this
/// config (a PostgreSQL database), or `None` (SQLite: they are).
pub fn not_ours(config: &Config) -> Option<String> {
    let url = config.database.url.as_ref()?;
    Some(format!(
        "the database is PostgreSQL ({url}): back it up with pg_dump and check it with the server's tools; vman backs up, restores and checks only its own SQLite file"
    ))
}

/// A backup made, as [`backup`] checked it.
#[derive(Debug, Clone)]
pub struct Backup {
    pub path: PathBuf,
    pub bytes: u64,
    /// The highest journal sequence in the copy: every event up to it is
    /// in, none after.
    pub head: i64,
}

/// Copies the database `db` into `dest`, which must not exist: `VACUUM
/// INTO` a `.partial` file beside it, checked and synced, then renamed.
pub async fn backup(db: &DatabaseConnection, dest: &Path) -> Result<Backup, BackupError> {
    if dest.exists() {
        return Err(BackupError::Exists(dest.to_path_buf()));
    }
    let mut partial = dest.as_os_str().to_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    // One a killed backup left is ours to replace.
    let _ = std::fs::remove_file(&partial);
    let made = async {
        db.execute_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "VACUUM INTO ?",
            [partial.display().to_string().into()],
        ))
        .await?;
        let head = check_copy(&partial).await?;
        let file =
            std::fs::File::open(&partial).map_err(io(format!("opening {}", partial.display())))?;
        file.sync_all()
            .map_err(io(format!("syncing {}", partial.display())))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        std::fs::rename(&partial, dest).map_err(io(format!(
            "renaming {} to {}",
            partial.display(),
            dest.display()
        )))?;
        sync_dir(dest);
        Ok(Backup {
            path: dest.to_path_buf(),
            bytes,
            head,
        })
    }
    .await;
    if made.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    made
}

/// `quick_check` on a copy, and its journal head.
async fn check_copy(path: &Path) -> Result<i64, BackupError> {
    match db::check_file(path, Check::Quick, true).await? {
        FileCheck::Ok => {}
        FileCheck::Missing => {
            return Err(BackupError::Damaged {
                path: path.to_path_buf(),
                detail: "no such file".into(),
            });
        }
        FileCheck::Damaged(detail) => {
            return Err(BackupError::Damaged {
                path: path.to_path_buf(),
                detail,
            });
        }
    }
    journal_head(path).await
}

/// The highest journal sequence of the (frozen) database at `path`; an
/// error when it has no journal (it is not a vman database).
async fn journal_head(path: &Path) -> Result<i64, BackupError> {
    use sea_orm::sqlx::{ConnectOptions, Connection, sqlite::SqliteConnectOptions};
    let not_ours = |detail: String| BackupError::Damaged {
        path: path.to_path_buf(),
        detail,
    };
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .immutable(true)
        .connect()
        .await
        .map_err(|e| not_ours(e.to_string()))?;
    let head = sea_orm::sqlx::query_scalar::<_, Option<i64>>("SELECT max(sequence) FROM events")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| not_ours(format!("no vman journal in it ({e})")));
    let _ = conn.close().await;
    Ok(head?.unwrap_or(0))
}

/// Makes a rename durable: syncs the directory that holds `path`.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
}

/// A scheduled backup's file name says when it was taken:
/// `vman-20261204T012233.123Z.db`.
const NAME_FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";

fn scheduled_name(at: DateTime<Utc>) -> String {
    format!("vman-{}.db", at.format(NAME_FORMAT))
}

/// One scheduled backup under `<data_dir>/backups/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    pub path: PathBuf,
    pub taken: DateTime<Utc>,
}

/// The scheduled backups, newest first. Other files there are not vman's
/// to judge and are left out (and never removed).
pub fn scheduled(config: &Config) -> Vec<Scheduled> {
    let Ok(entries) = std::fs::read_dir(config.backup_dir()) else {
        return Vec::new();
    };
    let mut found: Vec<Scheduled> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let stamp = name.strip_prefix("vman-")?.strip_suffix(".db")?;
            let taken = NaiveDateTime::parse_from_str(stamp, NAME_FORMAT).ok()?;
            Some(Scheduled {
                path: entry.path(),
                taken: taken.and_utc(),
            })
        })
        .collect();
    found.sort_by_key(|s| std::cmp::Reverse(s.taken));
    found
}

/// Takes a scheduled backup now and removes the oldest beyond
/// `backup.keep`. Skipped (an error saying why) when it would leave less
/// than the database's headroom free.
pub async fn take_scheduled(
    config: &Config,
    db: &DatabaseConnection,
) -> Result<Backup, BackupError> {
    let dir = config.backup_dir();
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let size = std::fs::metadata(config.db_path()).map_or(0, |m| m.len());
    if let Some(free) = crate::storage::free_bytes(&dir)
        && free < size.saturating_add(crate::storage::DATABASE_HEADROOM)
    {
        return Err(BackupError::Refused(format!(
            "not enough room for a backup in {}: {free} bytes free, the database is {size} bytes",
            dir.display()
        )));
    }
    let made = backup(db, &dir.join(scheduled_name(Utc::now()))).await?;
    for old in scheduled(config).into_iter().skip(config.backup.keep) {
        if let Err(e) = std::fs::remove_file(&old.path) {
            tracing::warn!(path = %old.path.display(), error = %e, "removing an old backup");
        }
    }
    Ok(made)
}

/// When the next scheduled backup is due: one interval after the newest
/// (at once if that is past), or one interval from now when there is none.
fn next_due(config: &Config, now: DateTime<Utc>) -> DateTime<Utc> {
    let interval =
        chrono::TimeDelta::from_std(config.backup.interval).unwrap_or(chrono::TimeDelta::MAX);
    let from = scheduled(config)
        .first()
        .map_or(now, |newest| newest.taken.min(now));
    from.checked_add_signed(interval)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Takes the scheduled backups while vman serves (not with
/// `backup.interval = "0s"`). A failed one is logged and tried again at the
/// next interval.
pub fn spawn_schedule(
    config: std::sync::Arc<Config>,
    db: DatabaseConnection,
    cancel: tokio_util::sync::CancellationToken,
) {
    if config.backup.interval.is_zero() {
        return;
    }
    if let Some(why) = not_ours(&config) {
        tracing::info!("no scheduled backups (backup.interval is ignored): {why}");
        return;
    }
    tokio::spawn(async move {
        loop {
            let wait = (next_due(&config, Utc::now()) - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            match take_scheduled(&config, &db).await {
                Ok(made) => tracing::info!(
                    path = %made.path.display(),
                    bytes = made.bytes,
                    journal_head = made.head,
                    "scheduled backup taken"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "scheduled backup failed");
                    // Not again at once: one interval from now.
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(config.backup.interval) => {}
                    }
                }
            }
        }
    });
}

/// What [`restore`] did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The journal head of the restored database.
    pub head: i64,
    /// Where the database it replaced was kept (none in a new data directory).
    pub kept_aside: Option<PathBuf>,
}

/// Puts the backup `file` in place as `<data_dir>/vman.db`. Refused while a
/// vman serves the data directory; the lock is held meanwhile, so none
/// starts either. The database it replaces (with its `-wal` and `-shm`) is
/// renamed to `vman.db.before-restore-<time>`. The next `vman serve` applies
/// any newer migrations, marks operations that were running at the backup
/// `INTERRUPTED`, re-adopts the VMs the backup says run, and its coherence
/// sweep reports what the host has that the backup does not know.
pub async fn restore(config: &Config, file: &Path) -> Result<Restored, BackupError> {
    let head = check_copy(file).await?;
    crate::config::ensure_dirs(config)
        .map_err(io(format!("creating {}", config.data_dir.display())))?;
    let _lock =
        crate::app::DataDirLock::take(config).map_err(|e| BackupError::Served(e.to_string()))?;
    let db = config.db_path();
    let kept_aside = match db.exists() {
        false => None,
        true => {
            let aside = PathBuf::from(format!(
                "{}.before-restore-{}",
                db.display(),
                Utc::now().format(NAME_FORMAT)
            ));
            for suffix in ["", "-wal", "-shm"] {
                let from = PathBuf::from(format!("{}{suffix}", db.display()));
                let to = PathBuf::from(format!("{}{suffix}", aside.display()));
                match std::fs::rename(&from, &to) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(io(format!("moving {} aside", from.display()))(e));
                    }
                }
            }
            Some(aside)
        }
    };
    let partial = PathBuf::from(format!("{}.partial", db.display()));
    let copied = std::fs::copy(file, &partial)
        .and_then(|_| std::fs::File::open(&partial)?.sync_all())
        .and_then(|()| std::fs::rename(&partial, &db));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&partial);
        return Err(io(format!(
            "copying {} to {}",
            file.display(),
            db.display()
        ))(e));
    }
    sync_dir(&db);
    Ok(Restored { head, kept_aside })
}

/// The message a start on a damaged database stops with: what SQLite said,
/// and which backup to restore.
pub fn damaged_message(config: &Config, detail: &str) -> String {
    let db = config.db_path();
    let advice = match scheduled(config).first() {
        Some(newest) => format!(
            "stop here and restore the newest backup, taken {}: `vman restore {}`{}",
            newest.taken.format("%Y-%m-%d %H:%M:%S UTC"),
            newest.path.display(),
            data_dir_flag(config)
        ),
        None => format!(
            "there is no scheduled backup under {}: restore one of yours with `vman restore FILE`{}",
            config.backup_dir().display(),
            data_dir_flag(config)
        ),
    };
    format!(
        "the database {} is damaged (PRAGMA quick_check: {detail}); {advice}. `vman doctor` checks it in full.",
        db.display()
    )
}

fn data_dir_flag(config: &Config) -> String {
    format!(" --data-dir {}", config.data_dir.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_on(dir: &Path) -> Config {
        Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        }
    }

    #[test]
    fn scheduled_backups_are_listed_newest_first_and_other_files_are_not_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_on(dir.path());
        assert!(scheduled(&config).is_empty());
        let backups = config.backup_dir();
        std::fs::create_dir_all(&backups).unwrap();
        let older = "2026-01-02T03:04:05.006Z".parse::<DateTime<Utc>>().unwrap();
        let newer = "2026-02-02T03:04:05.000Z".parse::<DateTime<Utc>>().unwrap();
        for name in [
            scheduled_name(older),
            scheduled_name(newer),
            "mine.db".into(),
            "vman-garbage.db".into(),
        ] {
            std::fs::write(backups.join(name), b"").unwrap();
        }
        assert_eq!(scheduled_name(older), "vman-20260102T030405.006Z.db");
        let found: Vec<DateTime<Utc>> = scheduled(&config).iter().map(|s| s.taken).collect();
        assert_eq!(found, [newer, older]);
    }

    #[test]
    fn the_next_backup_is_due_an_interval_after_the_newest_or_after_now() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_on(dir.path());
        config.backup.interval = Duration::from_secs(3600);
        let now = "2026-03-01T12:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let hour = chrono::TimeDelta::hours(1);
        assert_eq!(next_due(&config, now), now + hour, "none yet");
        std::fs::create_dir_all(config.backup_dir()).unwrap();
        let newest = now - chrono::TimeDelta::minutes(20);
        std::fs::write(config.backup_dir().join(scheduled_name(newest)), b"").unwrap();
        assert_eq!(next_due(&config, now), newest + hour);
        // One from a clock that was ahead counts from now.
        let ahead = now + hour * 5;
        std::fs::write(config.backup_dir().join(scheduled_name(ahead)), b"").unwrap();
        assert_eq!(next_due(&config, now), now + hour);
    }
}
