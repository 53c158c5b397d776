use std::time::Duration;

use async_graphql::{Context, ID, Object, SimpleObject, Subscription};
use futures_util::Stream;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::{Operation, OperationStatus, Progress, model};
use crate::{
    api::{
        self, PlanStep,
        pagination::{Page, id_cursor, page_in},
    },
    error::{ApiError, ResultExt},
    host::HostStep,
    validate,
};

#[derive(Clone)]
pub struct OperationObject(pub Operation);

/// One accepted request that changed (or tried to change) the host.
#[Object(name = "Operation")]
impl OperationObject {
    /// A UUID, unique across all objects.
    pub async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// START_VM, STOP_VM, CREATE_DISK, …
    async fn kind(&self) -> &str {
        self.0.kind.as_str()
    }
    /// The ID of what it acts on (a disk operation's target is the disk).
    async fn target_id(&self) -> ID {
        ID(self.0.target_id.clone())
    }
    /// What `targetId` names: `Vm`, `Disk`, `Network`, `Nic`, `Image`, `Template` or `ApiToken`.
    async fn target_type(&self) -> &str {
        self.0.target_type.as_str()
    }
    /// Where it is: RUNNING, then SUCCEEDED, FAILED or CANCELLED.
    async fn status(&self) -> OperationStatus {
        self.0.status
    }
    /// The host whose node runs it (null for what the command line did: `vman token create`).
    async fn host(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<crate::cluster::graphql::HostObject>> {
        crate::cluster::graphql::by_id(ctx, self.0.host_id.as_deref()).await
    }
    /// How far a long operation (a full `cloneVm`) has come: live while it
    /// runs, its last value once it ended; null for the others, and until
    /// it first reports.
    async fn progress(&self, ctx: &Context<'_>) -> Option<OperationProgress> {
        let live = match self.0.status {
            OperationStatus::Running => api::services(ctx)
                .long
                .get(&self.0.id)
                .and_then(|long| long.current()),
            _ => None,
        };
        live.or_else(|| stored_progress(&self.0))
            .map(OperationProgress::from)
    }
    /// Why it failed; null unless FAILED.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    /// The `extensions.code` the failure was reported with; INTERRUPTED when
    /// vman stopped while it ran.
    async fn error_code(&self) -> Option<&str> {
        self.0.error_code.as_deref()
    }
    /// The host action the operation failed at (`createDisk`, `start`,
    /// `ensureTap`, …), when it failed on the host; `steps` holds what was
    /// done before it (and undone since).
    async fn failed_step(&self) -> Option<&str> {
        self.0.failed_step.as_deref()
    }
    /// Who asked: the API token's name, `local` when vman runs without auth,
    /// `vman` for what vman did by itself.
    async fn actor(&self) -> &str {
        &self.0.actor
    }
    /// The host steps taken.
    async fn steps(&self) -> Vec<PlanStep> {
        let steps: Vec<HostStep> = serde_json::from_value(self.0.steps.clone()).unwrap_or_default();
        api::plan(&steps)
    }
    /// When it was recorded RUNNING, before the host was touched.
    async fn started_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.started_at
    }
    /// When it ended; null while RUNNING.
    async fn finished_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.0.finished_at
    }
}

#[derive(Default)]
pub struct OperationQuery;

#[Object]
impl OperationQuery {
    /// Operations, oldest first (newest first with `newestFirst`); `vmId`
    /// narrows to those on one VM.
    async fn operations(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only operations whose target is this VM.")] vm_id: Option<ID>,
        #[graphql(
            desc = "Only operations asked for by this actor (an API token's name, `local`, `vman`)."
        )]
        actor: Option<String>,
        #[graphql(desc = "At most this many (default 50, at most 500).")] first: Option<i32>,
        #[graphql(desc = "Only those after this cursor (an `endCursor`).")] after: Option<String>,
        #[graphql(
            default = false,
            desc = "Newest first (a page then goes back in time, and `after` is older)."
        )]
        newest_first: bool,
    ) -> async_graphql::Result<Page<OperationObject>> {
        let after = id_cursor(after).gql()?;
        let mut select = model::Entity::find();
        if let Some(vm_id) = vm_id {
            let vm_id = validate::id("vmId", &vm_id).gql()?;
            select = select.filter(model::Column::TargetId.eq(vm_id));
        }
        if let Some(actor) = actor {
            select = select.filter(model::Column::Actor.eq(actor));
        }
        // IDs are UUIDv7: their order is the order they began in.
        let direction = match newest_first {
            true => sea_orm::Order::Desc,
            false => sea_orm::Order::Asc,
        };
        page_in(
            &api::services(ctx).db,
            select,
            (model::Column::Id, direction),
            after,
            first,
            |o| o.id.clone(),
            OperationObject,
        )
        .await
        .gql()
    }

    /// An operation by ID.
    async fn operation(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The operation's ID.")] id: ID,
    ) -> async_graphql::Result<Option<OperationObject>> {
        let id = validate::id("id", &id).gql()?;
        let op = model::Entity::find_by_id(id)
            .one(&api::services(ctx).db)
            .await
            .map_err(ApiError::from)
            .gql()?;
        Ok(op.map(OperationObject))
    }
}

/// A long operation's last progress, as its record keeps it.
fn stored_progress(op: &Operation) -> Option<Progress> {
    serde_json::from_value(op.progress.clone()?).ok()
}

/// How far a long operation has come.
#[derive(SimpleObject, Clone, Copy)]
pub struct OperationProgress {
    /// `bytesDone / bytesTotal`, 0 to 1.
    pub fraction: f64,
    /// Bytes done so far (for a full clone: of all its disks together).
    pub bytes_done: crate::api::Bytes,
    /// Bytes to do in all.
    pub bytes_total: crate::api::Bytes,
}

impl From<Progress> for OperationProgress {
    fn from(p: Progress) -> Self {
        OperationProgress {
            fraction: p.fraction(),
            bytes_done: crate::api::Bytes(p.bytes_done as i64),
            bytes_total: crate::api::Bytes(p.bytes_total as i64),
        }
    }
}

/// One item of `operationProgress`.
#[derive(SimpleObject, Clone)]
pub struct OperationProgressUpdate {
    /// The operation's ID.
    pub operation_id: ID,
    /// RUNNING while it runs; the last item has how it ended.
    pub status: OperationStatus,
    /// How far it has come; null while it has not reported (and for an
    /// operation that reports none).
    pub progress: Option<OperationProgress>,
}

#[derive(Default)]
pub struct OperationMutation;

#[Object]
impl OperationMutation {
    /// Stops a long operation that runs (a full `cloneVm`): what it made is
    /// taken back and it ends CANCELLED. Answers once it ended. An operation
    /// that ended, or that cannot be stopped, is INVALID_STATE.
    async fn cancel_operation(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The operation's ID.")] id: ID,
    ) -> async_graphql::Result<OperationObject> {
        Ok(OperationObject(
            super::cancel(api::services(ctx), &id).await.gql()?,
        ))
    }
}

/// How often `operationProgress` pushes at most.
const PUSH_EVERY: Duration = Duration::from_millis(250);

#[derive(Default)]
pub struct OperationSubscription;

#[Subscription]
impl OperationSubscription {
    /// The progress of an operation, pushed at most every 250 ms (the latest
    /// value wins), then one last item with how it ended; the stream ends
    /// there. An operation that ended already gets that last item only.
    async fn operation_progress(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The operation's ID.")] id: ID,
    ) -> async_graphql::Result<impl Stream<Item = OperationProgressUpdate> + use<>> {
        let services = api::services(ctx).clone();
        let id = validate::id("id", &id).gql()?;
        // Registered before its record was written: a long operation found
        // RUNNING below is in the registry, or has just ended.
        let live = services.long.get(&id).map(|long| long.watch());
        let op = crate::events::find_in::<model::Entity, _>(&services.db, "operation", &id)
            .await
            .gql()?;
        let update = move |status, progress: Option<Progress>| OperationProgressUpdate {
            operation_id: ID(id.clone()),
            status,
            progress: progress.map(OperationProgress::from),
        };
        Ok(async_stream::stream! {
            let cancel = services.cancel.clone();
            if let Some(mut live) = live {
                loop {
                    let progress = *live.borrow_and_update();
                    yield update(OperationStatus::Running, progress);
                    tokio::select! {
                        _ = tokio::time::sleep(PUSH_EVERY) => {}
                        _ = cancel.cancelled() => return,
                    }
                    let changed = tokio::select! {
                        changed = live.changed() => changed,
                        _ = cancel.cancelled() => return,
                    };
                    if changed.is_err() {
                        break;
                    }
                }
            }
            // Ended (or a short operation): its record, once it says how.
            let mut op = op;
            loop {
                if op.status != OperationStatus::Running && op.status != OperationStatus::Pending {
                    let progress = stored_progress(&op);
                    yield update(op.status, progress);
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(PUSH_EVERY) => {}
                    _ = cancel.cancelled() => return,
                }
                match model::Entity::find_by_id(op.id.clone()).one(&services.db).await {
                    Ok(Some(now)) => op = now,
                    Ok(None) | Err(_) => return,
                }
            }
        })
    }
}
