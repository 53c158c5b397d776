//! SQLite connection with the settings a long-running server needs: WAL,
//! synchronous NORMAL, a busy timeout, foreign keys and a real pool. sqlx's
//! defaults differ (one writer mode, no FK by default in older versions), so
//! every setting is explicit here.

use std::{path::Path, str::FromStr, time::Duration};

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    DatabaseConnection, SqlxSqliteConnector,
    sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

pub async fn connect(path: &Path) -> Result<DatabaseConnection, sea_orm::DbErr> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
        .map_err(|e| sea_orm::DbErr::Custom(format!("database path {}: {e}", path.display())))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        // sqlx pings an idle connection before lending it, a round trip to the
        // connection's worker thread on every query; a local SQLite file has no
        // link to lose, and a broken connection still fails the query itself.
        .test_before_acquire(false)
        .after_release(|conn, _| Box::pin(async move { Ok(reusable(conn)) }))
        .connect_with(options)
        .await
        .map_err(|e| sea_orm::DbErr::Custom(format!("opening {}: {e}", path.display())))?;
    Ok(SqlxSqliteConnector::from_sqlx_sqlite_pool(pool))
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

pub async fn migrate(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    Migrator::up(db, None).await
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
        let db = connect(&dir.path().join("vman.db")).await.unwrap();
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
        let other = connect(&dir.path().join("vman.db")).await.unwrap();
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
