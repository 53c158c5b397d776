//! Operations: the record of each accepted request that changes the host.
//! An operation is written RUNNING before the host is touched and finished
//! with the steps taken and the outcome, so a failure is never silent.

pub mod graphql;
pub mod model;

use chrono::Utc;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, FromQueryResult, IntoActiveModel};

use crate::{
    context::Ctx,
    error::{ApiError, ApiResult},
    events::WriteSession,
    host::HostStep,
};
pub use model::{Model as Operation, OperationStatus};

/// A new operation's identity, known before it is written so a lock holder can name it.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub async fn begin(
    app: &Ctx,
    id: &str,
    kind: &str,
    target_type: &str,
    target_id: &str,
) -> ApiResult<Operation> {
    begin_in(app.bus.writer().await?, id, kind, target_type, target_id).await
}

/// Records the operation RUNNING in `w` and commits. A caller may first read
/// in `w` the rows that decide whether the operation may run: the checks and
/// the record then see the same rows, and cost no other connection.
pub async fn begin_in(
    w: crate::events::Writer<'_>,
    id: &str,
    kind: &str,
    target_type: &str,
    target_id: &str,
) -> ApiResult<Operation> {
    let op = running_row(id, kind, target_type, target_id)
        .insert(w.txn())
        .await?;
    w.commit().await?;
    crate::telemetry::operation_started(kind);
    Ok(op)
}

/// Records the operation RUNNING and commits, through a write session: one
/// request to SQLite. As with [`begin_in`], the session's reads that
/// decided the operation may run and this record see the same rows.
pub async fn begin_session(
    session: WriteSession<'_>,
    id: &str,
    kind: &str,
    target_type: &str,
    target_id: &str,
) -> ApiResult<Operation> {
    let insert = crate::events::insert_returning(running_row(id, kind, target_type, target_id));
    let (rows, _) = session.commit(vec![insert], Vec::new()).await?;
    let op = Operation::from_query_result(&rows[0], "")?;
    crate::telemetry::operation_started(kind);
    Ok(op)
}

/// An operation that starts now.
fn running_row(id: &str, kind: &str, target_type: &str, target_id: &str) -> model::ActiveModel {
    model::ActiveModel {
        id: Set(id.to_string()),
        kind: Set(kind.to_string()),
        target_id: Set(target_id.to_string()),
        target_type: Set(target_type.to_string()),
        status: Set(OperationStatus::Running),
        error: Set(None),
        error_code: Set(None),
        steps: Set(serde_json::json!([])),
        started_at: Set(Utc::now()),
        finished_at: Set(None),
    }
}

/// The change that records how `op` ended (see [`finish_in`]).
pub fn finished_row(
    op: Operation,
    steps: &[HostStep],
    error: Option<&ApiError>,
) -> model::ActiveModel {
    let mut row = op.into_active_model();
    row.steps = Set(serde_json::to_value(steps).unwrap_or_default());
    row.finished_at = Set(Some(Utc::now()));
    match error {
        None => row.status = Set(OperationStatus::Succeeded),
        Some(e) => {
            row.status = Set(OperationStatus::Failed);
            row.error = Set(Some(e.to_string()));
            row.error_code = Set(Some(e.code().to_string()));
        }
    }
    row
}

/// Counts a finished operation in the metrics.
pub fn count_finished(op: &Operation) {
    crate::telemetry::operation_finished(
        &op.kind,
        op.status == OperationStatus::Succeeded,
        Utc::now() - op.started_at,
    );
}

/// Records how an operation ended, in its own write.
pub async fn finish(
    app: &Ctx,
    op: Operation,
    steps: &[HostStep],
    error: Option<&ApiError>,
) -> ApiResult<Operation> {
    let w = app.bus.writer().await?;
    let op = finish_in(&w, op, steps, error).await?;
    w.commit().await?;
    Ok(op)
}

/// Records how an operation ended inside the write that makes its change, so
/// the change and "succeeded" commit together (and cost one write, not two).
pub async fn finish_in(
    w: &crate::events::Writer<'_>,
    op: Operation,
    steps: &[HostStep],
    error: Option<&ApiError>,
) -> ApiResult<Operation> {
    let op = finished_row(op, steps, error).update(w.txn()).await?;
    count_finished(&op);
    Ok(op)
}

/// At start: operations a previous vman left unfinished (it was killed while
/// they ran) end as FAILED, saying so. What they did to the host is for
/// re-adoption and the coherence sweep to find; left RUNNING they would make
/// the sweep skip their target for ever.
pub async fn fail_interrupted(app: &Ctx) -> ApiResult<u64> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
    let w = app.bus.writer().await?;
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

/// Hands back the change of work whose write already finished `op` (see
/// [`finish_in`]); a failure is recorded now.
pub async fn conclude_done<T>(
    app: &Ctx,
    op: Operation,
    result: ApiResult<(T, Vec<HostStep>, Operation)>,
) -> ApiResult<Change<T>> {
    match result {
        Ok((object, plan, done)) => Ok(Change {
            object,
            operation: Some(done),
            plan,
        }),
        Err(e) => {
            finish(app, op, &[], Some(&e)).await?;
            Err(e)
        }
    }
}

/// Finishes `op` with the result of its work and hands back the change.
pub async fn conclude<T>(
    app: &Ctx,
    op: Operation,
    result: ApiResult<(T, Vec<HostStep>)>,
) -> ApiResult<Change<T>> {
    let (steps, error) = match &result {
        Ok((_, steps)) => (steps.as_slice(), None),
        Err(e) => (&[][..], Some(e)),
    };
    let op = finish(app, op, steps, error).await?;
    let (object, steps) = result?;
    Ok(Change {
        object,
        operation: Some(op),
        plan: steps,
    })
}
