//! Operations: the record of each accepted mutation, and the one envelope
//! ([`run`]) every mutation goes through:
//!
//! 1. the operation is recorded `RUNNING` (with its kind and subject) before
//!    the host is touched;
//! 2. the mutation's body runs its host actions through the [`Envelope`],
//!    which records their steps and what would take each back;
//! 3. the body's final write ([`Envelope::commit`]) commits the change, its
//!    events and the operation's success in one transaction;
//! 4. on any error the host actions taken so far are undone, newest first,
//!    and the operation ends `FAILED` with the error's code and the host
//!    action it failed at.
//!
//! A failure is never silent, and nothing half-made stays behind. Adding a
//! mutation means: an [`OperationKind`], a plan, a body, a resolver.
//!
//! A long operation (a full `cloneVm`) is split in two: [`accept_long`]
//! records it RUNNING and the mutation answers; [`carry_out`] runs the same
//! envelope in a background task, with progress and cancel ([`progress`]),
//! and a cancel ends it CANCELLED after the same undo as a failure.

pub mod graphql;
pub mod kind;
pub mod model;
pub mod progress;

use std::sync::Arc;

use chrono::Utc;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, IntoActiveModel};

use crate::{
    context::Ctx,
    error::{ApiError, ApiResult},
    events::Writer,
    host::{HostStep, NetworkAction, Outcome, VmAction},
};
pub use kind::{OperationKind, SubjectType};
pub use model::{Model as Operation, OperationStatus};
pub use progress::{Long, Progress};

/// A new operation's identity, known before it is written so a lock holder can name it.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// What a mutation is, known before it runs: its identity (the lock holder
/// names it), its kind and what it targets.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: String,
    pub kind: OperationKind,
    pub target: SubjectType,
    pub target_id: String,
}

impl Request {
    /// A request with a fresh id.
    pub fn new(kind: OperationKind, target: SubjectType, target_id: impl Into<String>) -> Request {
        Request::with_id(new_id(), kind, target, target_id)
    }

    /// A request under an id already taken (the one its locks were taken for).
    pub fn with_id(
        id: String,
        kind: OperationKind,
        target: SubjectType,
        target_id: impl Into<String>,
    ) -> Request {
        Request {
            id,
            kind,
            target,
            target_id: target_id.into(),
        }
    }
}

/// A host action of either port: what an envelope runs and undoes.
#[derive(Debug, Clone)]
// A VM action may carry a whole VM spec (a start); an operation holds a
// handful of them (its undo list), so boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum HostAction {
    Vm(VmAction),
    Network(NetworkAction),
}

impl HostAction {
    fn name(&self) -> &'static str {
        match self {
            HostAction::Vm(action) => action.name(),
            HostAction::Network(action) => action.name(),
        }
    }
}

/// One operation in flight: the host steps it took, what takes them back,
/// and, once its final write committed, its finished record.
pub struct Envelope<'c> {
    ctx: &'c Ctx,
    op: Operation,
    steps: Vec<HostStep>,
    undo: Vec<HostAction>,
    failed_at: Option<&'static str>,
    done: Option<Operation>,
    /// A long operation's progress and cancel (see [`accept_long`]).
    long: Option<Arc<Long>>,
}

impl<'c> Envelope<'c> {
    pub fn ctx(&self) -> &'c Ctx {
        self.ctx
    }

    /// Where a long operation reports its progress; `None` for the others.
    pub fn long(&self) -> Option<&Arc<Long>> {
        self.long.as_ref()
    }

    /// The operation's id, for the events its writes journal.
    pub fn id(&self) -> &str {
        &self.op.id
    }

    /// Runs a hypervisor action and records its steps.
    pub async fn vm(&mut self, action: &VmAction) -> ApiResult<Outcome> {
        let outcome = self.ctx.hypervisor.execute(action).await;
        self.record(action.name(), outcome)
    }

    /// Runs a long hypervisor action ([`VmAction::CopyDisk`],
    /// [`VmAction::DownloadImage`]) and records its steps; a long operation
    /// reports `progress(fraction, total bytes or 0)` as it goes.
    pub async fn vm_reporting(
        &mut self,
        action: &VmAction,
        progress: impl Fn(f64, u64) -> Progress + Send + Sync,
    ) -> ApiResult<Outcome> {
        let long = self.long.clone();
        let report = move |fraction: f64, total: u64| {
            if let Some(long) = &long {
                long.report(progress(fraction, total));
            }
        };
        let outcome = self.ctx.hypervisor.execute_reporting(action, &report).await;
        self.record(action.name(), outcome)
    }

    /// Runs a network action and records its steps.
    pub async fn network(&mut self, action: &NetworkAction) -> ApiResult<Outcome> {
        let outcome = self.ctx.network.execute(action).await;
        self.record(action.name(), outcome)
    }

    fn record(
        &mut self,
        name: &'static str,
        outcome: Result<Outcome, crate::host::HostError>,
    ) -> ApiResult<Outcome> {
        match outcome {
            Ok(outcome) => {
                self.steps.extend(outcome.steps.iter().cloned());
                Ok(outcome)
            }
            Err(e) => {
                self.failed_at = Some(name);
                Err(e.into())
            }
        }
    }

    /// Steps taken on the operation's behalf by a shared helper (the taps a
    /// stopped VM releases).
    pub fn took(&mut self, steps: Vec<HostStep>) {
        self.steps.extend(steps);
    }

    /// What takes back a host change just made, should the operation fail
    /// later. Undone newest first.
    pub fn undo_with(&mut self, action: HostAction) {
        self.undo.push(action);
    }

    /// The operation's final write: `write` makes the change and journals its
    /// events, and the operation's success commits with them, in one
    /// transaction. Nothing is undone after it.
    pub async fn commit<T>(
        &mut self,
        write: impl AsyncFnOnce(&mut Writer<'_>, &str) -> ApiResult<T>,
    ) -> ApiResult<T> {
        let mut w = self.ctx.bus.writer().await?;
        let value = write(&mut w, &self.op.id).await?;
        let done = finished_row(self.op.clone(), &self.steps, None, None)
            .update(w.txn())
            .await?;
        w.commit().await?;
        self.undo.clear();
        self.done = Some(done);
        Ok(value)
    }

    /// On failure: takes back what the host actions made, newest first. An
    /// undo that fails is logged; the others still run.
    async fn undo_all(&mut self) {
        while let Some(action) = self.undo.pop() {
            let undone = match &action {
                HostAction::Vm(a) => self.ctx.hypervisor.execute(a).await,
                HostAction::Network(a) => self.ctx.network.execute(a).await,
            };
            match undone {
                Ok(outcome) => self.steps.extend(outcome.steps),
                Err(e) => tracing::error!(
                    operation = %self.op.id,
                    action = action.name(),
                    error = %e,
                    "undoing a host action of a failed operation"
                ),
            }
        }
    }
}

/// What a mutation did (or, with dry-run, would do).
pub struct Change<T> {
    pub object: T,
    pub operation: Option<Operation>,
    pub plan: Vec<HostStep>,
}

impl<T> Change<T> {
    pub fn planned(object: T, plan: Vec<HostStep>) -> Self {
        Change {
            object,
            operation: None,
            plan,
        }
    }
}

/// The one envelope: records `request` RUNNING, runs `body`, and ends the
/// operation SUCCEEDED (with the body's final write, or in a write of its
/// own when the body made none) or FAILED, after undoing its host actions.
pub async fn run<T>(
    ctx: &Ctx,
    request: Request,
    body: impl AsyncFnOnce(&mut Envelope<'_>) -> ApiResult<T>,
) -> ApiResult<Change<T>> {
    let op = accept(ctx, &request).await?;
    carry_out(ctx, op, None, body).await
}

/// Records a long operation RUNNING and registers its progress and cancel
/// ([`progress`]); the caller then runs its body with [`carry_out`] (in a
/// background task that holds the locks) and answers with the RUNNING
/// record at once.
pub async fn accept_long(ctx: &Ctx, request: &Request) -> ApiResult<(Operation, Arc<Long>)> {
    // Registered before its record is written: whoever reads it RUNNING
    // finds its progress.
    let long = ctx.long.register(&request.id);
    match accept(ctx, request).await {
        Ok(op) => Ok((op, long)),
        Err(e) => {
            ctx.long.remove(&request.id);
            Err(e)
        }
    }
}

/// Refuses work that adds while the database is nearly full, then records
/// the operation RUNNING.
async fn accept(ctx: &Ctx, request: &Request) -> ApiResult<Operation> {
    let located = |e: ApiError| e.locate(&ctx.config);
    if request.kind.needs_room() {
        crate::storage::ensure_database_room(&ctx.config)?;
    }
    begin(ctx, request).await.map_err(located)
}

/// Runs the body of the operation `op` (recorded RUNNING) and records how it
/// ended. A long one (`long`) that is cancelled stops at the body's next
/// await: what it made is undone and it ends CANCELLED.
pub async fn carry_out<T>(
    ctx: &Ctx,
    op: Operation,
    long: Option<Arc<Long>>,
    body: impl AsyncFnOnce(&mut Envelope<'_>) -> ApiResult<T>,
) -> ApiResult<Change<T>> {
    let located = |e: ApiError| e.locate(&ctx.config);
    let mut envelope = Envelope {
        ctx,
        op,
        steps: Vec::new(),
        undo: Vec::new(),
        failed_at: None,
        done: None,
        long: long.clone(),
    };
    let result = match &long {
        None => body(&mut envelope).await,
        Some(long) => {
            let cancelled = long.cancelled();
            tokio::select! {
                biased;
                result = body(&mut envelope) => result,
                _ = cancelled.cancelled() => Err(ApiError::Cancelled(format!(
                    "cancelled by {}; what it had made was taken back",
                    long.cancelled_by().unwrap_or_default()
                ))),
            }
        }
    }
    .map_err(located);
    let progress = long.as_ref().and_then(|l| l.current());
    let done = match (&result, envelope.done.take()) {
        // Committed: the change is in, whatever the body did after it.
        (_, Some(done)) => match progress {
            Some(progress) => record_progress(ctx, done, progress).await,
            None => done,
        },
        (Ok(_), None) => {
            let op = envelope.op.clone();
            finish(ctx, op, &envelope.steps, None, None, progress)
                .await
                .map_err(located)?
        }
        (Err(e), None) => {
            envelope.undo_all().await;
            let op = envelope.op.clone();
            match finish(
                ctx,
                op,
                &envelope.steps,
                Some(e),
                envelope.failed_at,
                progress,
            )
            .await
            {
                Ok(done) => done,
                // The client hears why the operation failed, not why its
                // record could not say so (a database still busy, say); it
                // stays RUNNING until the next start marks it INTERRUPTED.
                Err(recording) => {
                    tracing::error!(
                        operation = %envelope.op.id,
                        error = %recording.locate(&ctx.config),
                        "recording a failed operation"
                    );
                    ctx.long.remove(&envelope.op.id);
                    return Err(result.err().expect("the body failed"));
                }
            }
        }
    };
    // Its record says how it ended: watchers may read it now.
    ctx.long.remove(&done.id);
    count_finished(&done);
    Ok(Change {
        object: result?,
        operation: Some(done),
        plan: envelope.steps,
    })
}

/// Adds a long operation's last progress to its record (committed with its
/// change); a failure to is logged: the change is in.
async fn record_progress(ctx: &Ctx, done: Operation, progress: Progress) -> Operation {
    let write = async {
        let w = ctx.bus.writer().await?;
        let mut row = done.clone().into_active_model();
        row.progress = Set(serde_json::to_value(progress).ok());
        let op = row.update(w.txn()).await?;
        w.commit().await?;
        Ok::<_, ApiError>(op)
    };
    match write.await {
        Ok(op) => op,
        Err(e) => {
            tracing::warn!(operation = %done.id, error = %e, "recording an operation's progress");
            done
        }
    }
}

/// Records an operation that was done outside a serving vman (the command
/// line: `vman token create`), as SUCCEEDED, in the caller's transaction.
pub async fn record_done(
    db: &impl sea_orm::ConnectionTrait,
    kind: OperationKind,
    target: SubjectType,
    target_id: &str,
    actor: &str,
) -> ApiResult<Operation> {
    let now = Utc::now();
    Ok(model::ActiveModel {
        id: Set(new_id()),
        kind: Set(kind),
        target_id: Set(target_id.to_string()),
        target_type: Set(target),
        status: Set(OperationStatus::Succeeded),
        error: Set(None),
        error_code: Set(None),
        failed_step: Set(None),
        steps: Set(serde_json::json!([])),
        started_at: Set(now),
        actor: Set(actor.to_string()),
        finished_at: Set(Some(now)),
        progress: Set(None),
        host_id: Set(None),
    }
    .insert(db)
    .await?)
}

/// Records the operation RUNNING, in a write of its own.
async fn begin(ctx: &Ctx, request: &Request) -> ApiResult<Operation> {
    let w = ctx.bus.writer().await?;
    let op = model::ActiveModel {
        id: Set(request.id.clone()),
        kind: Set(request.kind),
        target_id: Set(request.target_id.clone()),
        target_type: Set(request.target),
        status: Set(OperationStatus::Running),
        error: Set(None),
        error_code: Set(None),
        failed_step: Set(None),
        steps: Set(serde_json::json!([])),
        started_at: Set(Utc::now()),
        actor: Set(ctx.actor.to_string()),
        finished_at: Set(None),
        progress: Set(None),
        host_id: Set(Some(ctx.host_id.to_string())),
    }
    .insert(w.txn())
    .await?;
    w.commit().await?;
    crate::telemetry::operation_started(request.kind.as_str());
    Ok(op)
}

/// The change that records how `op` ended.
fn finished_row(
    op: Operation,
    steps: &[HostStep],
    error: Option<&ApiError>,
    failed_at: Option<&str>,
) -> model::ActiveModel {
    let mut row = op.into_active_model();
    row.steps = Set(serde_json::to_value(steps).unwrap_or_default());
    row.finished_at = Set(Some(Utc::now()));
    match error {
        None => row.status = Set(OperationStatus::Succeeded),
        Some(e) => {
            row.status = Set(match e {
                ApiError::Cancelled(_) => OperationStatus::Cancelled,
                _ => OperationStatus::Failed,
            });
            row.error = Set(Some(e.to_string()));
            row.error_code = Set(Some(e.code().to_string()));
            row.failed_step = Set(failed_at.map(str::to_string));
        }
    }
    row
}

/// Records how an operation ended, in its own write.
async fn finish(
    ctx: &Ctx,
    op: Operation,
    steps: &[HostStep],
    error: Option<&ApiError>,
    failed_at: Option<&str>,
    progress: Option<Progress>,
) -> ApiResult<Operation> {
    let w = ctx.bus.writer().await?;
    let mut row = finished_row(op, steps, error, failed_at);
    if let Some(progress) = progress {
        row.progress = Set(serde_json::to_value(progress).ok());
    }
    let op = row.update(w.txn()).await?;
    w.commit().await?;
    Ok(op)
}

/// Counts a finished operation in the metrics, and logs it: one INFO line
/// per operation, whatever its outcome.
fn count_finished(op: &Operation) {
    let took = Utc::now() - op.started_at;
    let succeeded = op.status == OperationStatus::Succeeded;
    crate::telemetry::operation_finished(op.kind.as_str(), succeeded, took);
    tracing::info!(
        operation = %op.id,
        kind = %op.kind,
        target = %format!("{} {}", op.target_type.as_str(), op.target_id),
        actor = %op.actor,
        result = %op.status.as_str(),
        took_ms = took.num_milliseconds(),
        error_code = op.error_code.as_deref(),
        failed_step = op.failed_step.as_deref(),
        "operation finished"
    );
}

/// At start: operations a previous vman left unfinished (it was killed while
/// they ran) end as FAILED, saying so. What they did to the host is for
/// re-adoption and the coherence sweep to find; left RUNNING they would make
/// the sweep skip their target for ever.
pub async fn fail_interrupted(ctx: &Ctx) -> ApiResult<u64> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
    let w = ctx.bus.writer().await?;
    let ended = model::Entity::update_many()
        .col_expr(
            model::Column::Status,
            Expr::value(OperationStatus::Failed.as_str()),
        )
        .col_expr(
            model::Column::Error,
            Expr::value(
                "vman stopped while this operation ran; its outcome on the host is unknown",
            ),
        )
        .col_expr(model::Column::ErrorCode, Expr::value("INTERRUPTED"))
        .col_expr(model::Column::FinishedAt, Expr::value(Utc::now()))
        .filter(model::Column::Status.is_in([OperationStatus::Pending, OperationStatus::Running]))
        // The other nodes' operations go on.
        .filter(model::Column::HostId.eq(&*ctx.host_id))
        .exec(w.txn())
        .await?
        .rows_affected;
    w.commit().await?;
    if ended > 0 {
        tracing::warn!(
            ended,
            "operations a previous vman left unfinished are marked FAILED"
        );
    }
    Ok(ended)
}

/// How long `cancelOperation` waits for the operation it stopped to record
/// its end (undoing what it made included).
const CANCEL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Stops the long operation `id` and answers with its record once it ended
/// (CANCELLED, or how it ended if it finished first). Refused for an
/// operation that ended already or that cannot be stopped.
pub async fn cancel(ctx: &Ctx, id: &str) -> ApiResult<Operation> {
    use sea_orm::EntityTrait;
    let id = crate::validate::id("id", id)?;
    let find = async || crate::events::find_in::<model::Entity, _>(&ctx.db, "operation", &id).await;
    let op = find().await?;
    let Some(long) = ctx.long.get(&id) else {
        let op = model::Entity::find_by_id(op.id.clone())
            .one(&ctx.db)
            .await?
            .unwrap_or(op);
        return Err(ApiError::InvalidState(match op.status {
            OperationStatus::Pending | OperationStatus::Running => format!(
                "operation {} ({}) cannot be cancelled: only long operations (a full cloneVm) can",
                op.id, op.kind
            ),
            OperationStatus::Succeeded | OperationStatus::Failed | OperationStatus::Cancelled => {
                format!(
                    "operation {} ({}) has ended: it is {}",
                    op.id,
                    op.kind,
                    op.status.as_str()
                )
            }
        }));
    };
    let mut ended = long.watch();
    long.cancel(&ctx.actor);
    drop(long);
    // The receiver closes once the operation's record says how it ended.
    let wait = async { while ended.changed().await.is_ok() {} };
    if tokio::time::timeout(CANCEL_WAIT, wait).await.is_err() {
        tracing::warn!(operation = %id, "a cancelled operation has not ended yet");
    }
    find().await
}
