//! The journal over GraphQL: a paged `events` query and two subscriptions
//! that resume from a sequence with no gap and no repeat.

use std::sync::Arc;

use async_graphql::{Context, ID, Json, Object, SimpleObject, Subscription};
use futures_util::{Stream, StreamExt};
use sea_orm::EntityTrait;

use super::pagination::{Page, page};
use crate::{
    error::{ApiError, ApiResult, ResultExt},
    events::{Event, EventKind, model},
    vm::{VmState, graphql::VmObject},
};

#[derive(Clone)]
pub struct EventObject(pub Arc<Event>);

/// One journal entry: a state change, in the order it was committed.
#[Object(name = "Event")]
impl EventObject {
    /// Strictly increasing, without gaps; pass the last one seen as `after` to resume.
    async fn sequence(&self) -> String {
        self.0.sequence.to_string()
    }
    /// What changed.
    async fn kind(&self) -> EventKind {
        self.0.kind
    }
    /// The ID of what changed.
    async fn subject_id(&self) -> ID {
        ID(self.0.subject_id.clone())
    }
    /// What `subjectId` names: `Template`, `Vm`, `Disk`, `Network`, `Nic`,
    /// `Image`, `Snapshot`, `Host` or `CoherenceIssue`.
    async fn subject_type(&self) -> &str {
        self.0.subject_type.as_str()
    }
    /// The operation that caused it; null when no operation did (template
    /// changes, image deletions, what the observer or the coherence sweep saw, …).
    async fn operation_id(&self) -> Option<ID> {
        self.0.operation_id.clone().map(ID)
    }
    /// The details, which depend on `kind` (see the API guide).
    async fn payload(&self) -> Json<serde_json::Value> {
        Json(self.0.payload.clone())
    }
    /// When it was journaled.
    async fn at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.at
    }
}

/// A VM moved from one state to another.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct VmStateChange {
    /// The VM's ID.
    pub vm_id: ID,
    /// The state it left.
    pub from: VmState,
    /// The state it entered.
    pub to: VmState,
    /// Why (e.g. "started", "guest shutdown").
    pub reason: Option<String>,
    /// The operation that caused it; null when no operation did (what the
    /// observer or the coherence sweep saw, re-adoption at start).
    pub operation_id: Option<ID>,
    /// The journal sequence; pass it as `after` to resume.
    pub sequence: String,
    /// When it was journaled.
    pub at: chrono::DateTime<chrono::Utc>,
}

#[async_graphql::ComplexObject]
impl VmStateChange {
    /// The VM as it is now (null once deleted).
    async fn vm(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<VmObject>> {
        let vm = super::load::<crate::vm::model::Entity>(ctx, Some(self.vm_id.as_str())).await?;
        Ok(vm.map(VmObject))
    }
}

impl VmStateChange {
    fn from_event(event: &Event) -> Option<VmStateChange> {
        if event.kind != EventKind::VmStateChanged {
            return None;
        }
        let payload = &event.payload;
        Some(VmStateChange {
            vm_id: ID(event.subject_id.clone()),
            from: serde_json::from_value(payload.get("from")?.clone()).ok()?,
            to: serde_json::from_value(payload.get("to")?.clone()).ok()?,
            reason: payload
                .get("reason")
                .and_then(|r| r.as_str())
                .map(str::to_string),
            operation_id: event.operation_id.clone().map(ID),
            sequence: event.sequence.to_string(),
            at: event.at,
        })
    }
}

fn parse_sequence(after: Option<String>) -> ApiResult<Option<i64>> {
    after
        .map(|a| {
            a.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| ApiError::bad_input(format!("after {a:?} is not an event sequence")))
        })
        .transpose()
}

/// The `after` of `events` and of the subscriptions: a well-formed sequence
/// (else BAD_USER_INPUT) that the journal has reached (else CURSOR_AHEAD).
pub(crate) async fn journal_cursor(
    ctx: &Context<'_>,
    after: Option<String>,
) -> async_graphql::Result<Option<i64>> {
    match parse_sequence(after).gql()? {
        None => Ok(None),
        Some(after) => Ok(Some(
            super::services(ctx).bus.check_cursor(after).await.gql()?,
        )),
    }
}

#[derive(Default)]
pub struct EventQuery;

#[Object]
impl EventQuery {
    /// The sequence of the newest event in the journal ("0" while it is
    /// empty). A client that subscribes to `events(after: journalHead)`
    /// gets every event from now on, and can resume after the last one it
    /// saw if its connection drops, even before the first.
    async fn journal_head(&self, ctx: &Context<'_>) -> async_graphql::Result<String> {
        Ok(super::services(ctx).bus.head().await.gql()?.to_string())
    }

    /// The journal, oldest first.
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "A sequence: only events after it.")] after: Option<String>,
        #[graphql(desc = "At most this many (default 50, at most 500).")] first: Option<i32>,
    ) -> async_graphql::Result<Page<EventObject>> {
        let app = super::services(ctx);
        let after = journal_cursor(ctx, after).await?;
        page(
            &app.db,
            model::Entity::find(),
            model::Column::Sequence,
            after,
            first,
            |e| e.sequence.to_string(),
            |e| EventObject(Arc::new(e)),
        )
        .await
        .gql()
    }
}

#[derive(Default)]
pub struct EventSubscription;

#[Subscription]
impl EventSubscription {
    /// Every journal event after `after` (a sequence), then live ones. Without
    /// `after`, only events from now on.
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "A sequence: first send the events after it.")] after: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = EventObject> + use<>> {
        let after = journal_cursor(ctx, after).await?;
        Ok(super::services(ctx).bus.stream(after).map(EventObject))
    }

    /// State changes of one VM, or of all VMs when `vmId` is omitted. Pass
    /// `after` (a sequence) to first receive the changes since then.
    async fn vm_state_changed(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only this VM's changes.")] vm_id: Option<ID>,
        #[graphql(desc = "A sequence: first send the changes after it.")] after: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = VmStateChange> + use<>> {
        let vm_id = vm_id
            .map(|id| crate::validate::id("vmId", &id))
            .transpose()
            .gql()?;
        let after = journal_cursor(ctx, after).await?;
        Ok(super::services(ctx)
            .bus
            .stream(after)
            .filter_map(move |event| {
                let change = VmStateChange::from_event(&event)
                    .filter(|c| vm_id.as_deref().is_none_or(|id| c.vm_id.as_str() == id));
                async move { change }
            }))
    }
}
