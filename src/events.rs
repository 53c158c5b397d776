//! The event journal and its fan-out.
//!
//! Every state change is written through a [`Writer`]: a transaction taken
//! under one in-process write lock that also holds the database's write lock
//! for the whole transaction: SQLite's, by `BEGIN IMMEDIATE`; on PostgreSQL
//! (where many vman nodes may share the database) a transaction-level
//! advisory lock, [`JOURNAL_LOCK`], taken first thing. Journal rows get their
//! `sequence` inside that transaction (SQLite's rowid; on PostgreSQL the
//! journal's highest plus one, read under the lock, so a write rolled back
//! leaves no gap), so commit order is sequence order; after
//! commit the writer publishes them, still under the lock, so live subscribers
//! see the same order. A subscriber that falls behind, or resumes with
//! `after`, reads the gap back from the journal: nothing is lost, nothing is
//! repeated, and no subscriber can make memory grow.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use futures_util::Stream;
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set, SqliteTransactionMode,
    TransactionOptions, TransactionTrait, entity::prelude::*,
};
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
        pub subject_type: crate::operation::SubjectType,
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
    /// A template's settings changed (`changed` names the fields).
    #[sea_orm(string_value = "TEMPLATE_UPDATED")]
    TemplateUpdated,
    /// A VM was created.
    #[sea_orm(string_value = "VM_CREATED")]
    VmCreated,
    /// A VM was deleted.
    #[sea_orm(string_value = "VM_DELETED")]
    VmDeleted,
    /// A VM's settings changed (`updateVm`), or changes that waited for its
    /// start were applied; `changed` names the fields, `pending` those that
    /// wait for the next start.
    #[sea_orm(string_value = "VM_UPDATED")]
    VmUpdated,
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
    /// A snapshot of a VM was taken (`withMemory` says whether its memory too).
    #[sea_orm(string_value = "SNAPSHOT_CREATED")]
    SnapshotCreated,
    /// A VM went back to a snapshot.
    #[sea_orm(string_value = "SNAPSHOT_RESTORED")]
    SnapshotRestored,
    /// A snapshot was deleted (also for each snapshot of a deleted VM).
    #[sea_orm(string_value = "SNAPSHOT_DELETED")]
    SnapshotDeleted,
    /// The coherence sweep found a drift (the payload is the issue).
    #[sea_orm(string_value = "COHERENCE_ISSUE_OPENED")]
    CoherenceIssueOpened,
    /// A drift is gone, or was repaired (the payload's `action` says which).
    #[sea_orm(string_value = "COHERENCE_ISSUE_RESOLVED")]
    CoherenceIssueResolved,
    /// A host's node joined the other hosts' (not for the first host), or
    /// came back after it was offline.
    #[sea_orm(string_value = "HOST_ONLINE")]
    HostOnline,
    /// A host's node stopped heartbeating: its VMs are `UNKNOWN` until it is back.
    #[sea_orm(string_value = "HOST_OFFLINE")]
    HostOffline,
}

pub use crate::event_payload::Payload;

/// An event about to be journaled; its kind and subject type follow from
/// its payload.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub subject_id: String,
    pub operation_id: Option<String>,
    pub payload: Payload,
}

impl NewEvent {
    pub fn new(
        subject_id: impl Into<String>,
        operation_id: Option<&str>,
        payload: Payload,
    ) -> Self {
        NewEvent {
            subject_id: subject_id.into(),
            operation_id: operation_id.map(str::to_string),
            payload,
        }
    }

    /// The journal row, to insert.
    fn row(self, at: chrono::DateTime<Utc>) -> model::ActiveModel {
        model::ActiveModel {
            kind: Set(self.payload.kind()),
            subject_id: Set(self.subject_id),
            subject_type: Set(self.payload.subject()),
            operation_id: Set(self.operation_id),
            payload: Set(serde_json::to_value(&self.payload).unwrap_or_default()),
            at: Set(at),
            ..Default::default()
        }
    }
}

/// How many published events a live subscriber may trail before it is told
/// it lagged and catches up from the journal instead.
const LIVE_BUFFER: usize = 1024;
/// The pause between two attempts to begin a write on a busy database.
const RETRY_PAUSE: Duration = Duration::from_millis(5);
/// Journal rows read per catch-up query.
const CATCH_UP_PAGE: u64 = 256;
/// The key of the PostgreSQL advisory lock every journal write holds until
/// it commits or rolls back: `vmanjrnl` in ASCII.
pub const JOURNAL_LOCK: i64 = 0x766d_616e_6a72_6e6c;

pub struct EventBus {
    /// For reads: the journal's head and catch-up pages.
    db: DatabaseConnection,
    /// The one connection writes go through (`db::connect_writes`).
    writes: DatabaseConnection,
    /// How long [`EventBus::writer`] may wait to begin (`database.busy_timeout`).
    busy_timeout: Duration,
    write_lock: Mutex<()>,
    live: broadcast::Sender<Arc<Event>>,
    /// The last sequence sent to `live`: events go out in sequence order,
    /// this node's own and (on PostgreSQL) the other nodes'.
    published: Mutex<Option<i64>>,
    /// Names this bus in its `NOTIFY`s, so that it skips its own.
    instance: String,
    cancel: CancellationToken,
}

/// The PostgreSQL channel a commit with journal events notifies (its
/// payload is the writing bus's `instance`): every other node then reads
/// the new events from the journal and publishes them to its subscribers.
const JOURNAL_CHANNEL: &str = "vman_journal";
/// How often a node looks in the journal for the other nodes' events
/// without a notification (one lost while its listening connection was
/// down, say).
const RELAY_POLL: Duration = Duration::from_secs(1);

impl EventBus {
    pub fn new(
        db: DatabaseConnection,
        writes: DatabaseConnection,
        busy_timeout: Duration,
        cancel: CancellationToken,
    ) -> Self {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        EventBus {
            db,
            writes,
            busy_timeout,
            write_lock: Mutex::new(()),
            live,
            published: Mutex::new(None),
            instance: uuid::Uuid::now_v7().to_string(),
            cancel,
        }
    }

    /// Starts a write: one transaction, journaled events published on commit.
    ///
    /// While another connection (another process) holds SQLite's write
    /// lock, or SQLite answers with another passing condition (`db::is_busy`),
    /// the `BEGIN IMMEDIATE` is tried again until `database.busy_timeout`
    /// has passed since the call, the wait for this vman's earlier writes
    /// included; then the write fails with `DATABASE_BUSY`, having changed
    /// nothing. Once begun, the transaction holds the write lock, so its
    /// statements and its commit do not meet a busy database.
    pub async fn writer(&self) -> ApiResult<Writer<'_>> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.busy_timeout;
        let busy = || {
            ApiError::DatabaseBusy(format!(
                "another connection held the database's write lock for {}",
                humantime::format_duration(self.busy_timeout)
            ))
        };
        let lock = tokio::time::timeout_at(deadline, self.write_lock.lock())
            .await
            .map_err(|_| busy())?;
        loop {
            let begun = self
                .writes
                .begin_with_options(TransactionOptions {
                    sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                    ..Default::default()
                })
                .await;
            let begun = match begun {
                Ok(txn) => lock_journal(txn).await,
                Err(e) => Err(e),
            };
            match begun {
                Ok(txn) => {
                    return Ok(Writer {
                        bus: self,
                        txn,
                        _lock: lock,
                        journaled: Vec::new(),
                    });
                }
                Err(e) if crate::db::is_busy(&e) => {
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        tracing::warn!(error = %e, waited_ms = (now - started).as_millis() as u64, "a write gave up waiting for the database");
                        return Err(busy());
                    }
                    // SQLite waited (one `db::WRITE_ATTEMPT`) for a lock held
                    // elsewhere; a stale snapshot or a recovery comes back at
                    // once, so pause a little before the next attempt.
                    tokio::time::sleep(RETRY_PAUSE.min(deadline - now)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends `events` (this node's, just committed, in order) to the live
    /// subscribers, after the ones before them that other nodes wrote and
    /// that were not sent yet. A subscriber that sees a gap anyway reads it
    /// from the journal: this keeps that rare.
    async fn publish(&self, events: &[Event]) {
        let Some(first) = events.first() else { return };
        let mut published = self.published.lock().await;
        if let Some(last) = *published
            && first.sequence > last + 1
        {
            self.send_after(&mut published, first.sequence - 1).await;
        }
        for event in events {
            if published.is_none_or(|last| event.sequence > last) {
                let _ = self.live.send(Arc::new(event.clone()));
                *published = Some(event.sequence);
            }
        }
    }

    /// Sends the journal's events after the last one sent, up to `until`
    /// (the head when None).
    async fn send_after(&self, published: &mut Option<i64>, until: i64) {
        let Some(mut last) = *published else { return };
        while last < until {
            let page = match self.after(last, CATCH_UP_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the other nodes' events from the journal");
                    return;
                }
            };
            let before = last;
            for event in page.into_iter().take_while(|e| e.sequence <= until) {
                last = event.sequence;
                let _ = self.live.send(Arc::new(event));
            }
            *published = Some(last);
            if last == before {
                break;
            }
        }
    }

    /// On PostgreSQL, where other nodes write to the same journal: listens
    /// for their commits (`LISTEN`) and publishes their events to this
    /// node's subscribers in sequence order, until vman stops. Without a
    /// notification it looks every [`RELAY_POLL`] all the same.
    pub async fn spawn_relay(self: &Arc<Self>) -> ApiResult<()> {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        *self.published.lock().await = Some(self.head().await?);
        let bus = self.clone();
        tokio::spawn(async move {
            let pool = bus.db.get_postgres_connection_pool().clone();
            loop {
                let mut listener = match sea_orm::sqlx::postgres::PgListener::connect_with(&pool)
                    .await
                {
                    Ok(mut listener) => match listener.listen(JOURNAL_CHANNEL).await {
                        Ok(()) => Some(listener),
                        Err(e) => {
                            tracing::warn!(error = %e, "LISTEN for the other nodes' events");
                            None
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "connecting to listen for the other nodes' events");
                        None
                    }
                };
                loop {
                    let heard = async {
                        match listener.as_mut() {
                            Some(l) => l.try_recv().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = bus.cancel.cancelled() => return,
                        _ = tokio::time::sleep(RELAY_POLL) => {}
                        heard = heard => match heard {
                            Ok(Some(n)) if n.payload() == bus.instance => continue,
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "listening for the other nodes' events");
                                break;
                            }
                        },
                    }
                    let mut published = bus.published.lock().await;
                    bus.send_after(&mut published, i64::MAX).await;
                }
                tokio::select! {
                    _ = bus.cancel.cancelled() => return,
                    _ = tokio::time::sleep(RELAY_POLL) => {}
                }
            }
        });
        Ok(())
    }

    /// The highest sequence written so far (0 for an empty journal).
    pub async fn head(&self) -> ApiResult<i64> {
        head_in(&self.db).await
    }

    /// `after`, if the journal has reached it. A sequence beyond the head was
    /// never handed out by this journal (the cursor comes from another
    /// database, or from before a restore): it is refused with
    /// `CURSOR_AHEAD` and the head, rather than waited for in silence. The
    /// head only grows, so a cursor accepted here stays valid.
    pub async fn check_cursor(&self, after: i64) -> ApiResult<i64> {
        let head = self.head().await?;
        if after > head {
            return Err(ApiError::CursorAhead { after, head });
        }
        Ok(after)
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

/// The highest sequence in the journal as `conn` sees it (0 when empty).
async fn head_in(conn: &impl ConnectionTrait) -> ApiResult<i64> {
    let last = model::Entity::find()
        .order_by_desc(model::Column::Sequence)
        .one(conn)
        .await?;
    Ok(last.map_or(0, |e| e.sequence))
}

/// On PostgreSQL, takes [`JOURNAL_LOCK`] for `txn`'s lifetime, waiting at
/// most the writes pool's `lock_timeout` (one `db::WRITE_ATTEMPT`: then
/// `db::is_busy`). SQLite's `BEGIN IMMEDIATE` already holds its write lock.
async fn lock_journal(txn: DatabaseTransaction) -> Result<DatabaseTransaction, DbErr> {
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_raw(sea_orm::Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [JOURNAL_LOCK.into()],
        ))
        .await?;
    }
    Ok(txn)
}

/// One write transaction; dropped without [`Writer::commit`] it rolls back.
pub struct Writer<'a> {
    bus: &'a EventBus,
    // Dropped before the lock (fields drop in order): the rollback of a
    // failed write is on its way before the next write may begin.
    txn: DatabaseTransaction,
    _lock: MutexGuard<'a, ()>,
    journaled: Vec<Event>,
}

impl Writer<'_> {
    pub fn txn(&self) -> &DatabaseTransaction {
        &self.txn
    }

    /// Journals an event in this transaction.
    pub async fn record(&mut self, event: NewEvent) -> ApiResult<()> {
        let mut row = event.row(Utc::now());
        if self.txn.get_database_backend() == DbBackend::Postgres {
            // The journal lock is held: nobody else is numbering.
            let next = match self.journaled.last() {
                Some(last) => last.sequence + 1,
                None => head_in(&self.txn).await? + 1,
            };
            row.sequence = Set(next);
        }
        let row = row.insert(&self.txn).await?;
        self.journaled.push(row);
        Ok(())
    }

    /// Commits, then publishes what was journaled, in order.
    pub async fn commit(self) -> ApiResult<Vec<Event>> {
        if !self.journaled.is_empty() && self.txn.get_database_backend() == DbBackend::Postgres {
            // Delivered to the other nodes at commit, not before.
            self.txn
                .execute_raw(sea_orm::Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT pg_notify($1, $2)",
                    [JOURNAL_CHANNEL.into(), self.bus.instance.clone().into()],
                ))
                .await?;
        }
        self.txn.commit().await?;
        self.bus.publish(&self.journaled).await;
        crate::telemetry::events_published(self.journaled.len());
        Ok(self.journaled)
    }
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
