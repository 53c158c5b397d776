//! The event journal and its fan-out.
//!
//! Every state change is written through a [`Writer`]: an `IMMEDIATE`
//! transaction taken under one in-process write lock. Journal rows get their
//! `sequence` inside that transaction, so commit order is sequence order; after
//! commit the writer publishes them, still under the lock, so live subscribers
//! see the same order. A subscriber that falls behind, or resumes with
//! `after`, reads the gap back from the journal: nothing is lost, nothing is
//! repeated, and no subscriber can make memory grow.

use std::sync::Arc;

use chrono::Utc;
use futures_util::Stream;
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, SqliteTransactionMode, TransactionOptions,
    TransactionTrait, entity::prelude::*,
};
use sea_orm::{
    DbBackend, DbErr, FromQueryResult, Iterable, JoinType, QueryResult, QueryTrait, RuntimeErr,
    SelectTwoModel, SelectorTrait, Statement,
    sea_query::{Expr, ExprTrait},
    sqlx::{Connection, SqliteConnection},
};
use sea_query_sqlx::SqlxValues;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, MutexGuard, broadcast};
use tokio_util::sync::CancellationToken;

use crate::error::{ApiError, ApiResult};

pub mod model {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "events")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub sequence: i64,
        pub kind: super::EventKind,
        pub subject_id: String,
        pub subject_type: String,
        pub operation_id: Option<String>,
        pub payload: Json,
        pub at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub use model::Model as Event;

/// What a journal event records.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    EnumIter,
    DeriveActiveEnum,
    async_graphql::Enum,
    Serialize,
    Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum EventKind {
    /// A template was created.
    #[sea_orm(string_value = "TEMPLATE_CREATED")]
    TemplateCreated,
    /// A template was deleted.
    #[sea_orm(string_value = "TEMPLATE_DELETED")]
    TemplateDeleted,
    /// A VM was created.
    #[sea_orm(string_value = "VM_CREATED")]
    VmCreated,
    /// A VM was deleted.
    #[sea_orm(string_value = "VM_DELETED")]
    VmDeleted,
    /// A VM moved from one state to another (as `vmStateChanged` sends).
    #[sea_orm(string_value = "VM_STATE_CHANGED")]
    VmStateChanged,
    /// A disk was created (for a VM's root disk too).
    #[sea_orm(string_value = "DISK_CREATED")]
    DiskCreated,
    /// A disk was attached to a VM (the payload's `hot` says whether live).
    #[sea_orm(string_value = "DISK_ATTACHED")]
    DiskAttached,
    /// A disk was detached from a VM (also when its VM is deleted with `deleteDisks: false`).
    #[sea_orm(string_value = "DISK_DETACHED")]
    DiskDetached,
    /// A disk and its file were deleted.
    #[sea_orm(string_value = "DISK_DELETED")]
    DiskDeleted,
    /// A disk grew (the payload has `from` and `to`, in bytes).
    #[sea_orm(string_value = "DISK_RESIZED")]
    DiskResized,
    /// A network was created.
    #[sea_orm(string_value = "NETWORK_CREATED")]
    NetworkCreated,
    /// A network was deleted.
    #[sea_orm(string_value = "NETWORK_DELETED")]
    NetworkDeleted,
    /// A NIC was added to a VM.
    #[sea_orm(string_value = "NIC_ATTACHED")]
    NicAttached,
    /// A NIC was removed (also for each NIC of a deleted VM).
    #[sea_orm(string_value = "NIC_DETACHED")]
    NicDetached,
    /// An image was copied into storage.
    #[sea_orm(string_value = "IMAGE_IMPORTED")]
    ImageImported,
    /// An image and its file were deleted.
    #[sea_orm(string_value = "IMAGE_DELETED")]
    ImageDeleted,
    /// The coherence sweep found a drift (the payload is the issue).
    #[sea_orm(string_value = "COHERENCE_ISSUE_OPENED")]
    CoherenceIssueOpened,
    /// A drift is gone, or was repaired (the payload's `action` says which).
    #[sea_orm(string_value = "COHERENCE_ISSUE_RESOLVED")]
    CoherenceIssueResolved,
}

/// An event about to be journaled.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: EventKind,
    pub subject_id: String,
    pub subject_type: &'static str,
    pub operation_id: Option<String>,
    pub payload: serde_json::Value,
}

/// How many published events a live subscriber may trail before it is told
/// it lagged and catches up from the journal instead.
const LIVE_BUFFER: usize = 1024;
/// Journal rows read per catch-up query.
const CATCH_UP_PAGE: u64 = 256;

pub struct EventBus {
    db: DatabaseConnection,
    write_lock: Mutex<WriteState>,
    live: broadcast::Sender<Arc<Event>>,
    cancel: CancellationToken,
}

impl EventBus {
    pub fn new(db: DatabaseConnection, cancel: CancellationToken) -> Self {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        EventBus {
            db,
            write_lock: Mutex::new(WriteState::default()),
            live,
            cancel,
        }
    }

    /// Starts a write: one transaction, journaled events published on commit.
    pub async fn writer(&self) -> ApiResult<Writer<'_>> {
        let mut lock = self.write_lock.lock().await;
        lock.recover().await;
        let txn = self
            .db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?;
        Ok(Writer {
            bus: self,
            _lock: lock,
            txn,
            journaled: Vec::new(),
        })
    }

    /// Takes the write lock for a write sent to SQLite as one request: see
    /// [`WriteSession`].
    pub async fn session(&self) -> ApiResult<WriteSession<'_>> {
        let mut state = self.write_lock.lock().await;
        state.recover().await;
        if state.conn.is_none() {
            let options = self.db.get_sqlite_connection_pool().connect_options();
            state.conn = Some(
                SqliteConnection::connect_with(&options)
                    .await
                    .map_err(|e| DbErr::Conn(RuntimeErr::SqlxError(e.into())))?,
            );
        }
        Ok(WriteSession { bus: self, state })
    }

    /// The highest sequence written so far (0 for an empty journal).
    pub async fn head(&self) -> ApiResult<i64> {
        let last = model::Entity::find()
            .order_by_desc(model::Column::Sequence)
            .one(&self.db)
            .await?;
        Ok(last.map_or(0, |e| e.sequence))
    }

    /// Journal events after `after`, oldest first.
    pub async fn after(&self, after: i64, limit: u64) -> ApiResult<Vec<Event>> {
        Ok(model::Entity::find()
            .filter(model::Column::Sequence.gt(after))
            .order_by_asc(model::Column::Sequence)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// Every event after `after` from the journal, then live ones, in sequence
    /// order with no gap and no repeat. `None` starts at the current head.
    pub fn stream(
        self: &Arc<Self>,
        after: Option<i64>,
    ) -> impl Stream<Item = Arc<Event>> + Send + use<> {
        let bus = self.clone();
        async_stream::stream! {
            // Subscribe before reading the journal: whatever commits after the
            // read is then already queued for us.
            let mut live = bus.live.subscribe();
            let mut last = match after {
                Some(after) => after,
                None => match bus.head().await {
                    Ok(head) => head,
                    Err(e) => {
                        tracing::error!(error = %e, "event stream: reading the journal head failed");
                        return;
                    }
                },
            };
            let mut behind = true;
            loop {
                if behind {
                    match bus.after(last, CATCH_UP_PAGE).await {
                        Ok(page) if page.is_empty() => behind = false,
                        Ok(page) => {
                            for event in page {
                                last = event.sequence;
                                yield Arc::new(event);
                            }
                            continue;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "event stream: catching up from the journal failed");
                            return;
                        }
                    }
                }
                let received = tokio::select! {
                    _ = bus.cancel.cancelled() => return,
                    received = live.recv() => received,
                };
                match received {
                    Ok(event) if event.sequence <= last => {}
                    Ok(event) if event.sequence == last + 1 => {
                        last = event.sequence;
                        yield event;
                    }
                    // A gap (or a lag notice) means the journal has what we missed.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        crate::telemetry::lagged_subscriber();
                        behind = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }
}

/// One write transaction; dropped without [`Writer::commit`] it rolls back.
pub struct Writer<'a> {
    bus: &'a EventBus,
    _lock: MutexGuard<'a, WriteState>,
    txn: DatabaseTransaction,
    journaled: Vec<Event>,
}

impl Writer<'_> {
    pub fn txn(&self) -> &DatabaseTransaction {
        &self.txn
    }

    /// Journals an event in this transaction.
    pub async fn record(&mut self, event: NewEvent) -> ApiResult<()> {
        let row = model::ActiveModel {
            kind: Set(event.kind),
            subject_id: Set(event.subject_id),
            subject_type: Set(event.subject_type.to_string()),
            operation_id: Set(event.operation_id),
            payload: Set(event.payload),
            at: Set(Utc::now()),
            ..Default::default()
        }
        .insert(&self.txn)
        .await?;
        self.journaled.push(row);
        Ok(())
    }

    /// Commits, then publishes what was journaled, in order.
    pub async fn commit(self) -> ApiResult<Vec<Event>> {
        self.txn.commit().await?;
        for event in &self.journaled {
            // No receiver is fine: nobody is listening right now.
            let _ = self.bus.live.send(Arc::new(event.clone()));
        }
        crate::telemetry::events_published(self.journaled.len());
        Ok(self.journaled)
    }
}

/// What the write lock guards: the connection that [`WriteSession`]s use,
/// and whether a batch sent on it may have left its transaction open.
#[derive(Default)]
pub struct WriteState {
    conn: Option<SqliteConnection>,
    unfinished: bool,
}

impl WriteState {
    /// After a batch that did not finish (its caller went away while SQLite
    /// ran it), its transaction may still be open and would hold SQLite's
    /// write lock against every other writer: closing the connection rolls it
    /// back. The next session opens a new one.
    async fn recover(&mut self) {
        if std::mem::take(&mut self.unfinished)
            && let Some(conn) = self.conn.take()
        {
            let _ = conn.close().await;
        }
    }
}

/// Ends a batch (before its `COMMIT`) when the change just before it touched
/// no row: an `UPDATE` whose row is gone must fail the write, as sea-orm's
/// `update` does, not commit the rest without it. Outside triggers SQLite has
/// no statement that raises an error by itself; asking it for a malformed
/// JSON value makes it refuse, and stop the batch there.
const ONE_ROW_CHANGED: &str = "SELECT json('') WHERE changes() <> 1";

/// The write lock and one connection of its own, for a write sent to
/// SQLite's thread as one request instead of one per statement: `BEGIN
/// IMMEDIATE`, the changes, the journal rows and `COMMIT` go as a single
/// batch. sqlx still hands each statement's result back as a message of its
/// own, each waking the caller; docs/BENCHMARKS.md (issue 3, fourth round)
/// measures what that costs, and what it does not. Reads made through the session see
/// every committed write, and nothing else can write until the session ends:
/// a caller may read, decide, then commit what it decided.
///
/// The guarantees are [`Writer`]'s: one transaction, journal sequences in
/// commit order, events published after the commit and under the lock.
pub struct WriteSession<'a> {
    bus: &'a EventBus,
    state: MutexGuard<'a, WriteState>,
}

impl WriteSession<'_> {
    fn conn(&mut self) -> &mut SqliteConnection {
        self.state
            .conn
            .as_mut()
            .expect("a write session has a connection")
    }

    /// The row of `A` with primary key `a` and the row of `B` with primary
    /// key `b`, read in one statement; NOT_FOUND names `a` first.
    pub async fn find_two<A, B>(
        &mut self,
        (a_kind, a): (&'static str, &str),
        (b_kind, b): (&'static str, &str),
    ) -> ApiResult<(A::Model, B::Model)>
    where
        A: EntityTrait,
        A::PrimaryKey: sea_orm::PrimaryKeyTrait<ValueType = String>,
        B: EntityTrait + Default,
        B::PrimaryKey: sea_orm::PrimaryKeyTrait<ValueType = String>,
    {
        let b_key = B::PrimaryKey::iter()
            .next()
            .expect("an entity has a primary key")
            .into_column();
        let mut select = A::find_by_id(a.to_string()).select_also(B::default());
        QueryTrait::query(&mut select).join(
            JoinType::LeftJoin,
            B::default(),
            Expr::col((B::default(), b_key)).eq(b),
        );
        let row = self.query(&select.build(DbBackend::Sqlite)).await?;
        let row = row.into_iter().next();
        let row = row.ok_or_else(|| ApiError::not_found(a_kind, a))?;
        match SelectTwoModel::<A::Model, B::Model>::from_raw_query_result(row)? {
            (a, Some(b)) => Ok((a, b)),
            (_, None) => Err(ApiError::not_found(b_kind, b)),
        }
    }

    /// The rows of one statement.
    async fn query(&mut self, statement: &Statement) -> ApiResult<Vec<QueryResult>> {
        let rows = bind(&statement.sql, statement.values.clone())
            .fetch_all(self.conn())
            .await
            .map_err(|e| DbErr::Query(RuntimeErr::SqlxError(e.into())))?;
        Ok(rows.into_iter().map(QueryResult::from).collect())
    }

    /// Commits `changes` and journals `events` in one transaction sent as one
    /// batch. Each change must be an `INSERT` or `UPDATE … RETURNING` of
    /// exactly one row (else nothing is written); its row comes back, in
    /// order. Then publishes the events.
    pub async fn commit(
        mut self,
        changes: Vec<Statement>,
        events: Vec<NewEvent>,
    ) -> ApiResult<(Vec<QueryResult>, Vec<Event>)> {
        let at = Utc::now();
        let journal = events.into_iter().map(|event| {
            insert_returning(model::ActiveModel {
                kind: Set(event.kind),
                subject_id: Set(event.subject_id),
                subject_type: Set(event.subject_type.to_string()),
                operation_id: Set(event.operation_id),
                payload: Set(event.payload),
                at: Set(at),
                ..Default::default()
            })
        });
        let changed = changes.len();
        let statements: Vec<Statement> = changes.into_iter().chain(journal).collect();
        let expected = statements.len();
        let mut sql = String::from("BEGIN IMMEDIATE;\n");
        let mut values = Vec::new();
        for statement in statements {
            sql.push_str(&statement.sql);
            sql.push_str(";\n");
            sql.push_str(ONE_ROW_CHANGED);
            sql.push_str(";\n");
            values.extend(statement.values.map(|v| v.0).unwrap_or_default());
        }
        sql.push_str("COMMIT;");
        // Until SQLite answers, the transaction may be open. A batch that
        // fails half-way stops there, still in its transaction; a caller
        // that goes away leaves it to the next holder of the write lock.
        self.state.unfinished = true;
        let rows = bind(&sql, Some(sea_orm::sea_query::Values(values)))
            .fetch_all(self.conn())
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                self.state.recover().await;
                if e.to_string().contains("malformed JSON") {
                    return Err(ApiError::internal(DbErr::RecordNotUpdated));
                }
                return Err(DbErr::Exec(RuntimeErr::SqlxError(e.into())).into());
            }
        };
        self.state.unfinished = false;
        if rows.len() != expected {
            // Each change returned its one row or stopped the batch: this
            // cannot happen, but a wrong row must not be taken for another.
            return Err(ApiError::internal(DbErr::Custom(format!(
                "a batched write returned {} rows for {expected} statements",
                rows.len()
            ))));
        }
        let mut rows: Vec<QueryResult> = rows.into_iter().map(QueryResult::from).collect();
        let journaled = rows
            .split_off(changed)
            .into_iter()
            .map(|row| model::Model::from_query_result(&row, ""))
            .collect::<Result<Vec<_>, _>>()?;
        for event in &journaled {
            let _ = self.bus.live.send(Arc::new(event.clone()));
        }
        crate::telemetry::events_published(journaled.len());
        Ok((rows, journaled))
    }
}

/// `INSERT … RETURNING *` of `row`, for [`WriteSession::commit`].
pub fn insert_returning<A: ActiveModelTrait>(row: A) -> Statement {
    let mut insert = A::Entity::insert(row).into_query();
    insert.returning_all();
    DbBackend::Sqlite.build(&insert)
}

/// `UPDATE … RETURNING *` of the columns set in `row`, by its primary key,
/// for [`WriteSession::commit`].
pub fn update_returning<A: ActiveModelTrait>(row: A) -> ApiResult<Statement> {
    let mut update = A::Entity::update(row).validate()?.into_query();
    update.returning_all();
    Ok(DbBackend::Sqlite.build(&update))
}

/// A statement (or several) with its values bound in order. sqlx's SQLite
/// driver runs several `;`-separated statements of one query in turn, binding
/// the values across them in order; sqlx documents that as SQLite-only and
/// deprecated (for a future split API), so `batched_writes_are_all_or_nothing`
/// in `tests/schema_and_cli.rs` checks it on every sqlx upgrade.
fn bind(
    sql: &str,
    values: Option<sea_orm::sea_query::Values>,
) -> sea_orm::sqlx::query::Query<'_, sea_orm::sqlx::Sqlite, SqlxValues> {
    sea_orm::sqlx::query_with(
        sea_orm::sqlx::AssertSqlSafe(sql),
        SqlxValues(values.unwrap_or(sea_orm::sea_query::Values(Vec::new()))),
    )
}

/// Reads one row inside a writer, failing with NOT_FOUND.
pub async fn find_in<E, C>(conn: &C, kind: &'static str, id: &str) -> ApiResult<E::Model>
where
    E: EntityTrait,
    E::PrimaryKey: sea_orm::PrimaryKeyTrait<ValueType = String>,
    C: ConnectionTrait,
{
    E::find_by_id(id.to_string())
        .one(conn)
        .await?
        .ok_or_else(|| ApiError::not_found(kind, id))
}
