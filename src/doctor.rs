//! `vman doctor`: a full `PRAGMA integrity_check` of the database and a
//! summary an operator reads before (or instead of) starting vman. It only
//! reads, so it runs while vman serves too.

use std::path::Path;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

use crate::{
    config::Config,
    db::{self, Check, FileCheck},
};

/// What `vman doctor` found: lines of `(what, finding)`, and whether the
/// database is sound.
pub struct Report {
    pub lines: Vec<(&'static str, String)>,
    pub sound: bool,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (what, finding) in &self.lines {
            writeln!(f, "{what:<11} {finding}")?;
        }
        Ok(())
    }
}

pub async fn examine(config: &Config) -> Result<Report, sea_orm::DbErr> {
    let path = config.db_path();
    let mut lines = vec![("database", describe_file(&path))];
    let check = db::check_file(&path, Check::Full, false).await?;
    let sound = match &check {
        FileCheck::Missing => {
            lines.push((
                "integrity",
                "no database yet (vman makes one at its first start)".into(),
            ));
            lines.extend(backups(config));
            return Ok(Report { lines, sound: true });
        }
        FileCheck::Ok => {
            lines.push(("integrity", "ok (PRAGMA integrity_check)".into()));
            true
        }
        FileCheck::Damaged(detail) => {
            lines.push(("integrity", format!("DAMAGED: {detail}")));
            false
        }
    };
    if sound {
        let db = db::connect(&path, config.database.busy_timeout).await?;
        lines.extend(summary(&db).await?);
        db.close().await?;
    }
    lines.extend(backups(config));
    lines.push(("served", served(config)));
    if !sound {
        lines.push((
            "advice",
            crate::backup::damaged_message(config, "see integrity above"),
        ));
    }
    Ok(Report { lines, sound })
}

fn describe_file(path: &Path) -> String {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
    match size(path) {
        None => format!("{} (none)", path.display()),
        Some(bytes) => {
            let wal = size(Path::new(&format!("{}-wal", path.display()))).unwrap_or(0);
            format!("{} ({bytes} bytes, WAL {wal} bytes)", path.display())
        }
    }
}

async fn count(db: &DatabaseConnection, sql: &str) -> Result<i64, sea_orm::DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Sqlite, sql))
        .await?;
    Ok(row
        .and_then(|r| r.try_get_by_index::<Option<i64>>(0).ok().flatten())
        .unwrap_or(0))
}

async fn summary(db: &DatabaseConnection) -> Result<Vec<(&'static str, String)>, sea_orm::DbErr> {
    use migration::MigratorTrait;
    let pending = migration::Migrator::get_pending_migrations(db).await?.len();
    let mut by_state = Vec::new();
    for row in db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT state, count(*) FROM vms GROUP BY state ORDER BY state",
        ))
        .await?
    {
        let state: String = row.try_get_by_index(0)?;
        let n: i64 = row.try_get_by_index(1)?;
        by_state.push(format!("{state} {n}"));
    }
    Ok(vec![
        (
            "schema",
            match pending {
                0 => "up to date".into(),
                n => format!("{n} migration(s) to apply at the next start"),
            },
        ),
        (
            "journal",
            format!(
                "{} events, head {}",
                count(db, "SELECT count(*) FROM events").await?,
                count(db, "SELECT max(sequence) FROM events").await?
            ),
        ),
        (
            "vms",
            format!(
                "{} ({})",
                count(db, "SELECT count(*) FROM vms").await?,
                if by_state.is_empty() {
                    "none".into()
                } else {
                    by_state.join(", ")
                }
            ),
        ),
        (
            "objects",
            format!(
                "{} templates, {} disks, {} images, {} networks, {} NICs",
                count(db, "SELECT count(*) FROM templates").await?,
                count(db, "SELECT count(*) FROM disks").await?,
                count(db, "SELECT count(*) FROM images").await?,
                count(db, "SELECT count(*) FROM networks").await?,
                count(db, "SELECT count(*) FROM nics").await?
            ),
        ),
        (
            "operations",
            format!(
                "{} recorded, {} running",
                count(db, "SELECT count(*) FROM operations").await?,
                count(
                    db,
                    "SELECT count(*) FROM operations WHERE status IN ('PENDING', 'RUNNING')"
                )
                .await?
            ),
        ),
        (
            "coherence",
            format!(
                "{} open issues",
                count(
                    db,
                    "SELECT count(*) FROM coherence_issues WHERE resolved_at IS NULL"
                )
                .await?
            ),
        ),
    ])
}

fn backups(config: &Config) -> Vec<(&'static str, String)> {
    let found = crate::backup::scheduled(config);
    let interval = match config.backup.interval.is_zero() {
        true => "scheduled backups are off (backup.interval = 0s)".to_string(),
        false => format!(
            "every {}, keeping {}",
            humantime::format_duration(config.backup.interval),
            config.backup.keep
        ),
    };
    let newest = match found.first() {
        None => format!("none under {}", config.backup_dir().display()),
        Some(newest) => format!(
            "{} under {}, newest {} (taken {})",
            found.len(),
            config.backup_dir().display(),
            newest.path.display(),
            newest.taken.format("%Y-%m-%d %H:%M:%S UTC")
        ),
    };
    let free = |dir: &Path| {
        crate::storage::free_bytes(dir).map_or("unknown".to_string(), |b| format!("{b} bytes"))
    };
    vec![
        ("backups", format!("{newest}; {interval}")),
        (
            "free space",
            format!(
                "{} {}; {} {}",
                config.data_dir.display(),
                free(&config.data_dir),
                config.storage_dir().display(),
                free(&config.storage_dir())
            ),
        ),
    ]
}

/// Whether a vman serves the data directory (holds `vman.lock`).
fn served(config: &Config) -> String {
    let path = config.data_dir.join("vman.lock");
    let Ok(file) = std::fs::File::open(&path) else {
        return "no vman serves it".into();
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Ok(()) => "no vman serves it".into(),
        Err(_) => format!(
            "a vman (pid {}) serves it",
            std::fs::read_to_string(&path).unwrap_or_default().trim()
        ),
    }
}
