use std::sync::Arc;

use async_graphql::{Context, Enum, ID, Object, SimpleObject, Subscription};
use futures_util::{Stream, StreamExt};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::{CoherenceIssue, CoherenceKind, model};
use crate::{
    api::{
        self,
        pagination::{Page, id_cursor, page},
    },
    error::ResultExt,
    events::{Event, EventKind},
    observer::sweep::SweepReport,
    vm::graphql::VmObject,
};

#[derive(Clone)]
pub struct CoherenceIssueObject(pub CoherenceIssue);

/// A difference between what the database says and what the host shows,
/// found by the observer's coherence sweep.
#[Object(name = "CoherenceIssue")]
impl CoherenceIssueObject {
    /// A UUID (issues sort by detection time); not a `Node`.
    pub async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// What kind of drift it is.
    async fn kind(&self) -> CoherenceKind {
        self.0.kind
    }
    /// `Vm`, `Disk`, `Network`, `Nic`, `RunDir` or `StorageFile`.
    async fn subject_type(&self) -> &str {
        self.0.subject_type.as_str()
    }
    /// The subject's ID (the path for `RunDir` and `StorageFile`).
    async fn subject_id(&self) -> &str {
        &self.0.subject_id
    }
    /// The VM concerned, if any (null once deleted).
    async fn vm(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<VmObject>> {
        let vm = api::load::<crate::vm::model::Entity>(ctx, self.0.vm_id.as_deref()).await?;
        Ok(vm.map(VmObject))
    }
    /// The host whose node's sweep found it (each node judges its own host).
    async fn host(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<crate::cluster::graphql::HostObject>> {
        crate::cluster::graphql::by_id(ctx, self.0.host_id.as_deref()).await
    }
    /// What the database says.
    async fn expected(&self) -> &str {
        &self.0.expected
    }
    /// What the host shows.
    async fn observed(&self) -> &str {
        &self.0.observed
    }
    /// When a sweep first saw it.
    async fn detected_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.detected_at
    }
    /// Null while the drift lasts.
    async fn resolved_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.0.resolved_at
    }
    /// True while the drift lasts (`resolvedAt` is null).
    async fn open(&self) -> bool {
        self.0.resolved_at.is_none()
    }
    /// What vman did about it (under `observer.policy = "repair"`), or why it resolved.
    async fn action(&self) -> Option<&str> {
        self.0.action.as_deref()
    }
}

/// What one coherence sweep did.
#[derive(SimpleObject)]
#[graphql(name = "SweepReport")]
pub struct SweepReportObject {
    /// When the sweep began.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// How long it took, in milliseconds.
    pub took_ms: f64,
    /// VMs it compared with the host.
    pub vms_checked: i32,
    /// VMs left alone: an operation in flight, starting or stopping.
    pub vms_skipped: i32,
    /// Disk files it read (always 0 in dry-run mode).
    pub disks_checked: i32,
    /// Every drift this sweep saw, open or just repaired.
    pub findings: Vec<CoherenceIssueObject>,
    /// Issues this sweep opened.
    pub opened: Vec<CoherenceIssueObject>,
    /// Issues this sweep resolved (gone, or repaired).
    pub resolved: Vec<CoherenceIssueObject>,
}

impl From<SweepReport> for SweepReportObject {
    fn from(report: SweepReport) -> Self {
        let objects =
            |issues: Vec<CoherenceIssue>| issues.into_iter().map(CoherenceIssueObject).collect();
        SweepReportObject {
            started_at: report.started_at,
            took_ms: report.took.as_secs_f64() * 1000.0,
            vms_checked: report.vms_checked as i32,
            vms_skipped: report.vms_skipped as i32,
            disks_checked: report.disks_checked as i32,
            findings: objects(report.findings),
            opened: objects(report.opened),
            resolved: objects(report.resolved),
        }
    }
}

#[derive(Default)]
pub struct CoherenceQuery;

#[Object]
impl CoherenceQuery {
    /// Coherence issues, oldest first; `open: true` for the current ones only.
    async fn coherence_issues(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "True: open ones only; false: resolved ones only; omitted: all.")]
        open: Option<bool>,
        #[graphql(desc = "Only those after this cursor (an `endCursor`).")] after: Option<String>,
        #[graphql(desc = "At most this many (default 50, at most 500).")] first: Option<i32>,
    ) -> async_graphql::Result<Page<CoherenceIssueObject>> {
        let after = id_cursor(after).gql()?;
        page(
            &api::services(ctx).db,
            filter_open(model::Entity::find(), open),
            model::Column::Id,
            after,
            first,
            |issue| issue.id.clone(),
            CoherenceIssueObject,
        )
        .await
        .gql()
    }
}

pub fn filter_open(
    select: sea_orm::Select<model::Entity>,
    open: Option<bool>,
) -> sea_orm::Select<model::Entity> {
    match open {
        Some(true) => select.filter(model::Column::ResolvedAt.is_null()),
        Some(false) => select.filter(model::Column::ResolvedAt.is_not_null()),
        None => select,
    }
}

#[derive(Default)]
pub struct CoherenceMutation;

#[Object]
impl CoherenceMutation {
    /// Runs a coherence sweep now (after any sweep already running) and
    /// returns what it found. Under `observer.policy = "repair"` it repairs
    /// what is safe, as the periodic sweep does.
    async fn run_coherence_sweep(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<SweepReportObject> {
        let report = api::app(ctx).observer.sweep().await.gql()?;
        Ok(report.into())
    }
}

/// What happened to an issue.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub enum IssueChange {
    /// A sweep found a new drift.
    Opened,
    /// The drift is gone, or was repaired (the issue's `action` says which).
    Resolved,
}

/// An issue opened or resolved, in journal order.
#[derive(SimpleObject)]
pub struct CoherenceIssueChange {
    /// Opened or resolved.
    pub change: IssueChange,
    /// The issue as the event recorded it (its `vm` is read now).
    pub issue: CoherenceIssueObject,
    /// The journal sequence; pass it as `after` to resume.
    pub sequence: String,
    /// When the change was journaled.
    pub at: chrono::DateTime<chrono::Utc>,
}

impl CoherenceIssueChange {
    fn from_event(event: &Event) -> Option<CoherenceIssueChange> {
        let change = match event.kind {
            EventKind::CoherenceIssueOpened => IssueChange::Opened,
            EventKind::CoherenceIssueResolved => IssueChange::Resolved,
            _ => return None,
        };
        let issue: CoherenceIssue = serde_json::from_value(event.payload.clone()).ok()?;
        Some(CoherenceIssueChange {
            change,
            issue: CoherenceIssueObject(issue),
            sequence: event.sequence.to_string(),
            at: event.at,
        })
    }
}

#[derive(Default)]
pub struct CoherenceSubscription;

#[Subscription]
impl CoherenceSubscription {
    /// Coherence issues as they open and resolve. Pass `after` (a journal
    /// sequence) to first receive the changes since then.
    async fn coherence_issues(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "A sequence: first send the changes after it.")] after: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = CoherenceIssueChange> + use<>> {
        let after = api::events::journal_cursor(ctx, after).await?;
        Ok(api::services(ctx)
            .bus
            .stream(after)
            .filter_map(|event: Arc<Event>| {
                let change = CoherenceIssueChange::from_event(&event);
                async move { change }
            }))
    }
}
