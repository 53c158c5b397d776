use async_graphql::{Context, ID, Object};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::{Operation, OperationStatus, model};
use crate::{
    api::{
        self, PlanStep,
        pagination::{Page, id_cursor, page},
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
    /// Where it is: RUNNING, then SUCCEEDED or FAILED.
    async fn status(&self) -> OperationStatus {
        self.0.status
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
    /// Operations, oldest first; `vmId` narrows to those on one VM.
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
        page(
            &api::services(ctx).db,
            select,
            model::Column::Id,
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
