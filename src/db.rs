//! The database's connections: SQLite (the default, `<data_dir>/vman.db`) or
//! PostgreSQL (`database.url`).
//!
//! SQLite gets the settings a long-running server needs: WAL, synchronous
//! NORMAL, a busy timeout, foreign keys and a real pool. sqlx's defaults
//! differ (one writer mode, no FK by default in older versions), so every
//! setting is explicit here. PostgreSQL needs none of these: its locks wait
//! for `lock_timeout`, set here as SQLite's busy timeout is.
//!
//! Two pools: [`connect`] for reads (and the command line's writes), and
//! [`connect_writes`], the event bus's one connection for writes, whose
//! begin gives up quickly so that `events::EventBus::writer` can retry it
//! until `database.busy_timeout` and then answer `DATABASE_BUSY`.

use std::{
    path::{Path, PathBuf},
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    DatabaseConnection, DbErr, RuntimeErr, SqlxPostgresConnector, SqlxSqliteConnector,
    sqlx::{
        postgres::{PgConnectOptions, PgPoolOptions},
        sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    },
};

use crate::config::DatabaseUrl;

/// Where the database is (`Config::database`).
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`database.url`).
    Postgres(DatabaseUrl),
}

impl Location {
    /// `url`'s connection options, or why it is not a PostgreSQL URL.
    pub fn postgres(url: &DatabaseUrl) -> Result<PgConnectOptions, String> {
        let secret = url.secret();
        if !(secret.starts_with("postgres://") || secret.starts_with("postgresql://")) {
            return Err(
                "must be a postgres:// URL; leave database.url out for SQLite at <data_dir>/vman.db"
                    .into(),
            );
        }
        // sqlx's message may quote the URL: it is not repeated.
        PgConnectOptions::from_str(secret).map_err(|_| "is not a valid PostgreSQL URL".to_string())
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Location::Postgres(_))
    }
}

/// The file's path, or the URL without its password.
impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => write!(f, "{url}"),
        }
    }
}

impl From<&Path> for Location {
    fn from(path: &Path) -> Self {
        Location::Sqlite(path.to_path_buf())
    }
}

impl From<&PathBuf> for Location {
    fn from(path: &PathBuf) -> Self {
        Location::Sqlite(path.clone())
    }
}

impl From<&Location> for Location {
    fn from(location: &Location) -> Self {
        location.clone()
    }
}

/// How long opening a PostgreSQL connection may take: an unreachable server
/// fails the start after this long, with a message that says so.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one attempt to begin a write waits inside SQLite for the write
/// lock before [`connect_writes`]'s caller tries again.
pub const WRITE_ATTEMPT: Duration = Duration::from_millis(50);

/// The pool for reads: the database waits up to `busy_timeout` for a lock.
pub async fn connect(
    location: impl Into<Location>,
    busy_timeout: Duration,
) -> Result<DatabaseConnection, DbErr> {
    open(&location.into(), busy_timeout, 8).await
}

/// [`connect`] or [`connect_writes`]'s pool (`connect(path)`), every statement of which
/// `statements` sees.
pub async fn observed<F>(
    connect: F,
    statements: &Arc<Statements>,
) -> Result<DatabaseConnection, DbErr>
where
    F: std::future::IntoFuture<Output = Result<DatabaseConnection, DbErr>>,
{
    let mut db = connect.await?;
    let statements = statements.clone();
    db.set_metric_callback(move |info| statements.saw(info.statement));
    Ok(db)
}

/// The statements the app's pools have run: counted (one atomic add each)
/// and, while a [`Recording`] is open, kept with their values. The tests and
/// the benchmark use it to count what one request costs and to explain the
/// query plans of the SQL the resolvers really send.
#[derive(Default)]
pub struct Statements {
    count: AtomicU64,
    recording: AtomicBool,
    recorded: Mutex<Vec<sea_orm::Statement>>,
}

impl Statements {
    /// How many statements have run so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Keeps every statement from now until [`Recording::finish`].
    pub fn record(&self) -> Recording<'_> {
        self.lock().clear();
        self.recording.store(true, Ordering::SeqCst);
        Recording(self)
    }

    fn saw(&self, statement: &sea_orm::Statement) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if self.recording.load(Ordering::Relaxed) {
            self.lock().push(statement.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<sea_orm::Statement>> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An open recording of [`Statements`].
pub struct Recording<'a>(&'a Statements);

impl Recording<'_> {
    /// The statements run since the recording began, in order.
    pub fn finish(self) -> Vec<sea_orm::Statement> {
        self.0.recording.store(false, Ordering::SeqCst);
        std::mem::take(&mut *self.0.lock())
    }
}

/// The pool for the event bus's writes: one connection (writes are
/// serialised anyway), whose busy wait is one [`WRITE_ATTEMPT`].
pub async fn connect_writes(location: impl Into<Location>) -> Result<DatabaseConnection, DbErr> {
    open(&location.into(), WRITE_ATTEMPT, 1).await
}

async fn open(
    location: &Location,
    busy_timeout: Duration,
    connections: u32,
) -> Result<DatabaseConnection, DbErr> {
    match location {
        Location::Sqlite(path) => open_sqlite(path, busy_timeout, connections).await,
        Location::Postgres(url) => open_postgres(url, busy_timeout, connections).await,
    }
}

async fn open_postgres(
    url: &DatabaseUrl,
    busy_timeout: Duration,
    connections: u32,
) -> Result<DatabaseConnection, DbErr> {
    let options = Location::postgres(url)
        .map_err(|reason| DbErr::Custom(format!("database.url {url} {reason}")))?
        // A lock held elsewhere fails a statement after this long (55P03,
        // `is_busy`), as SQLite's busy timeout does.
        .options([(
            "lock_timeout",
            format!("{}ms", busy_timeout.as_millis().max(1)),
        )]);
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .min_connections(1)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|e| match e {
            sea_orm::sqlx::Error::PoolTimedOut => DbErr::Custom(format!(
                "connecting to {url}: no answer within {}",
                humantime::format_duration(CONNECT_TIMEOUT)
            )),
            e => DbErr::Custom(format!("connecting to {url}: {e}")),
        })?;
    Ok(SqlxPostgresConnector::from_sqlx_postgres_pool(pool))
}

async fn open_sqlite(
    path: &Path,
    busy_timeout: Duration,
    connections: u32,
) -> Result<DatabaseConnection, DbErr> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
        .map_err(|e| DbErr::Custom(format!("database path {}: {e}", path.display())))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(busy_timeout)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        // sqlx pings an idle connection before lending it, a round trip to the
        // connection's worker thread on every query; a local SQLite file has no
        // link to lose, and a broken connection still fails the query itself.
        .test_before_acquire(false)
        .after_release(|conn, _| Box::pin(async move { Ok(reusable(conn)) }))
        .connect_with(options)
        .await
        .map_err(|e| DbErr::Custom(format!("opening {}: {e}", path.display())))?;
    Ok(SqlxSqliteConnector::from_sqlx_sqlite_pool(pool))
}

/// How thoroughly [`check_file`] reads a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// `PRAGMA quick_check`: every page, without matching indexes to their
    /// tables (what a start runs).
    Quick,
    /// `PRAGMA integrity_check`: everything `quick_check` reads, indexes
    /// matched too (`vman doctor`).
    Full,
}

/// What [`check_file`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileCheck {
    /// No database at that path (a new data directory).
    Missing,
    Ok,
    /// Not a database, or one SQLite finds damaged; what it said.
    Damaged(String),
}

/// Reads the database at `path` with `check` on a connection of its own.
/// `frozen`: a file nobody writes (a backup): opened read-only and
/// immutable, so no `-wal` or `-shm` file is made next to it. Errors other
/// than a damaged file (permissions, say) are errors.
pub async fn check_file(path: &Path, check: Check, frozen: bool) -> Result<FileCheck, DbErr> {
    use sea_orm::sqlx::{ConnectOptions, Connection};
    const SQLITE_CORRUPT: i32 = 11;
    const SQLITE_NOTADB: i32 = 26;
    if !path.exists() {
        return Ok(FileCheck::Missing);
    }
    let damaged = |e: &sea_orm::sqlx::Error| match e {
        sea_orm::sqlx::Error::Database(d) => d
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, SQLITE_CORRUPT | SQLITE_NOTADB)),
        _ => false,
    };
    let fail = |e: sea_orm::sqlx::Error| DbErr::Custom(format!("reading {}: {e}", path.display()));
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(frozen)
        .immutable(frozen);
    let mut conn = match options.connect().await {
        Ok(conn) => conn,
        Err(e) if damaged(&e) => return Ok(FileCheck::Damaged(e.to_string())),
        Err(e) => return Err(fail(e)),
    };
    let pragma = match check {
        Check::Quick => "PRAGMA quick_check(20)",
        Check::Full => "PRAGMA integrity_check(20)",
    };
    let found = sea_orm::sqlx::query_scalar::<_, String>(pragma)
        .fetch_all(&mut conn)
        .await;
    let _ = conn.close().await;
    match found {
        Ok(lines) if lines == ["ok"] => Ok(FileCheck::Ok),
        Ok(lines) => Ok(FileCheck::Damaged(lines.join("; "))),
        Err(e) if damaged(&e) => Ok(FileCheck::Damaged(e.to_string())),
        Err(e) => Err(fail(e)),
    }
}

/// The driver's error behind a database error, if there is one.
fn database_error(e: &DbErr) -> Option<&dyn sea_orm::sqlx::error::DatabaseError> {
    let (DbErr::Conn(RuntimeErr::SqlxError(e))
    | DbErr::Exec(RuntimeErr::SqlxError(e))
    | DbErr::Query(RuntimeErr::SqlxError(e))) = e
    else {
        return None;
    };
    match e.as_ref() {
        sea_orm::sqlx::Error::Database(e) => Some(e.as_ref()),
        _ => None,
    }
}

/// SQLite's extended result code of a database error, if it is one.
pub fn sqlite_code(e: &DbErr) -> Option<i32> {
    let e = database_error(e)?;
    e.try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()?;
    e.code()?.parse().ok()
}

/// PostgreSQL's SQLSTATE of a database error, if it is one.
pub fn postgres_state(e: &DbErr) -> Option<String> {
    let e = database_error(e)?;
    e.try_downcast_ref::<sea_orm::sqlx::postgres::PgDatabaseError>()?;
    Some(e.code()?.into_owned())
}

/// `SQLITE_FULL`: the database (or its WAL) could not grow; PostgreSQL's
/// `disk_full` (53100): its server's disk is full.
pub fn is_full(e: &DbErr) -> bool {
    const SQLITE_FULL: i32 = 13;
    sqlite_code(e).is_some_and(|code| code & 0xff == SQLITE_FULL)
        || postgres_state(e).is_some_and(|state| state == "53100")
}

/// A condition that passes by itself: `SQLITE_BUSY` and its variants
/// (another connection holds a lock; a stale snapshot; a WAL recovery),
/// `SQLITE_LOCKED`, PostgreSQL's `lock_not_available` (55P03: a lock held
/// past `lock_timeout`), or no pooled connection free in time. Worth
/// retrying; never a bug.
pub fn is_busy(e: &DbErr) -> bool {
    const SQLITE_BUSY: i32 = 5;
    const SQLITE_LOCKED: i32 = 6;
    if matches!(
        e,
        DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout)
    ) {
        return true;
    }
    sqlite_code(e).is_some_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED))
        || postgres_state(e).is_some_and(|state| state == "55P03")
}

/// Whether a connection given back to the pool may be lent again: not while
/// sqlx counts it inside a transaction.
///
/// That happens after an error that makes SQLite roll a transaction back by
/// itself (`SQLITE_FULL` on a full disk, `SQLITE_IOERR`, `SQLITE_NOMEM`): the
/// `ROLLBACK` sent when the transaction is dropped then fails ("no transaction
/// is active") and sqlx keeps counting one level of transaction. Lent again,
/// the connection's next `BEGIN IMMEDIATE` would be sent as a `SAVEPOINT`: a
/// deferred transaction (`SQLITE_BUSY_SNAPSHOT` when its snapshot is stale),
/// whose failure is undone with `ROLLBACK TO`, which leaves the transaction
/// open, holding SQLite's write lock: every other connection then waits out
/// the busy timeout and fails with "database is locked", and what that
/// connection writes later is never committed. Such a connection is closed
/// instead (closing ends whatever SQLite still holds), and the pool opens a
/// fresh one.
fn reusable(conn: &mut sea_orm::sqlx::SqliteConnection) -> bool {
    use sea_orm::sqlx::Connection;
    if conn.is_in_transaction() {
        tracing::warn!(
            "closing a database connection that is still inside a transaction after an error"
        );
        return false;
    }
    true
}

/// The PostgreSQL advisory lock nodes migrate under ("vman" in ASCII).
const MIGRATION_LOCK: i64 = 0x766d_616e;

/// Brings the schema up to date. On PostgreSQL the nodes of a cluster that
/// start together take turns (a transaction-scoped advisory lock, held on a
/// connection of its own while the migrations run on another: the pool has
/// two at least): the first migrates, the others then find nothing left to
/// do. Without it they all ran the same migrations, and all but one failed.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    if db.get_database_backend() != sea_orm::DbBackend::Postgres {
        return Migrator::up(db, None).await;
    }
    let turn = db.begin().await?;
    // Not the pool's short lock_timeout: another node's migrations may take
    // a while; a minute is a node stuck, and this one gives up.
    turn.execute_unprepared("SET LOCAL lock_timeout = '60s'")
        .await?;
    turn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
        .await?;
    let migrated = Migrator::up(db, None).await;
    turn.commit().await?;
    migrated
}

/// Fails with CONFLICT when a row of `E` already has `value` in `column`.
pub async fn ensure_free<E: sea_orm::EntityTrait>(
    db: &impl sea_orm::ConnectionTrait,
    column: E::Column,
    value: &str,
    what: &str,
) -> crate::error::ApiResult<()> {
    use sea_orm::{ColumnTrait, QueryFilter};
    if E::find().filter(column.eq(value)).one(db).await?.is_some() {
        return Err(crate::error::ApiError::Conflict(format!(
            "{what} named {value:?} already exists"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use sea_orm::{
        ConnectionTrait, SqliteTransactionMode, TransactionOptions, TransactionTrait,
        sqlx::Connection,
    };

    use super::*;

    /// SQLite rolls a transaction back by itself after `SQLITE_FULL` (here
    /// done by hand, as a `ROLLBACK` sqlx does not see). That connection is
    /// never lent again: holding every connection the pool may open at
    /// once, none is inside a transaction, and a write on each commits.
    #[tokio::test]
    async fn a_connection_whose_transaction_sqlite_ended_is_not_lent_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = connect(&dir.path().join("vman.db"), Duration::from_secs(5))
            .await
            .unwrap();
        db.execute_unprepared("CREATE TABLE t (n INTEGER)")
            .await
            .unwrap();
        let immediate = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        let txn = db.begin_with_options(immediate).await.unwrap();
        txn.execute_unprepared("INSERT INTO t VALUES (0)")
            .await
            .unwrap();
        txn.execute_unprepared("ROLLBACK").await.unwrap();
        drop(txn);

        let pool = db.get_sqlite_connection_pool();
        let mut held = Vec::new();
        for _ in 0..8 {
            let conn = tokio::time::timeout(std::time::Duration::from_secs(5), pool.acquire())
                .await
                .expect("a connection within 5 s")
                .unwrap();
            assert!(!conn.is_in_transaction());
            held.push(conn);
        }
        drop(held);
        for n in 1..=8 {
            let txn = db.begin_with_options(immediate).await.unwrap();
            txn.execute_unprepared(&format!("INSERT INTO t VALUES ({n})"))
                .await
                .unwrap();
            txn.commit().await.unwrap();
        }
        let other = connect(&dir.path().join("vman.db"), Duration::from_secs(5))
            .await
            .unwrap();
        let rows = other
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Sqlite,
                "SELECT count(*) AS n FROM t",
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rows.try_get::<i64>("", "n").unwrap(), 8);
    }
}
