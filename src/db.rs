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
        .connect_with(options)
        .await
        .map_err(|e| sea_orm::DbErr::Custom(format!("opening {}: {e}", path.display())))?;
    Ok(SqlxSqliteConnector::from_sqlx_sqlite_pool(pool))
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
