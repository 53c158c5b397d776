//! The GraphQL schema: roots merged per domain, thin resolvers over the services.

pub mod events;
pub mod health;
pub mod http;
pub mod node;
pub mod pagination;
pub mod ws;

use std::sync::Arc;

use async_graphql::{Context, MergedObject, MergedSubscription, Schema, SimpleObject};
use sea_orm::{ColumnTrait, EntityTrait, PrimaryKeyTrait, QueryFilter};

use crate::{
    app::App,
    error::{ApiError, ResultExt},
    host::HostStep,
};

/// What can be read: every object, the journal, and health.
#[derive(MergedObject, Default)]
pub struct Query(
    node::NodeQuery,
    crate::template::graphql::TemplateQuery,
    crate::vm::graphql::VmQuery,
    crate::disk::graphql::DiskQuery,
    crate::network::graphql::NetworkQuery,
    crate::image::graphql::ImageQuery,
    crate::operation::graphql::OperationQuery,
    crate::coherence::graphql::CoherenceQuery,
    events::EventQuery,
    health::HealthQuery,
    crate::auth::graphql::AuthQuery,
);

/// What changes vman's records and the host. Mutations that touch the host
/// take `dryRun` and record an operation.
#[derive(MergedObject, Default)]
pub struct Mutation(
    crate::template::graphql::TemplateMutation,
    crate::vm::graphql::VmMutation,
    crate::disk::graphql::DiskMutation,
    crate::network::graphql::NetworkMutation,
    crate::image::graphql::ImageMutation,
    crate::coherence::graphql::CoherenceMutation,
    crate::auth::graphql::AuthMutation,
    crate::console::graphql::ConsoleMutation,
);

/// Live streams over the websocket: from the journal (each can resume after
/// a sequence) and from VM consoles (each can resume after an offset).
#[derive(MergedSubscription, Default)]
pub struct Subscription(
    events::EventSubscription,
    crate::coherence::graphql::CoherenceSubscription,
    crate::console::graphql::ConsoleSubscription,
);

pub type VmanSchema = Schema<Query, Mutation, Subscription>;

/// The schema without app data: enough to print the SDL.
pub fn schema_builder() -> async_graphql::SchemaBuilder<Query, Mutation, Subscription> {
    Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .limit_depth(16)
    .limit_complexity(5000)
}

pub fn schema(app: Arc<App>) -> VmanSchema {
    schema_builder()
        .extension(crate::telemetry::GraphqlMetrics)
        .extension(crate::auth::guard::RoleGuard)
        .data(app)
        .finish()
}

/// The SDL, as committed in `schema.graphql`.
pub fn sdl() -> String {
    schema_builder().finish().sdl()
}

/// The composition root, for what is not a service's (health, the sweep).
pub(crate) fn app<'a>(ctx: &Context<'a>) -> &'a Arc<App> {
    ctx.data_unchecked::<Arc<App>>()
}

/// What resolvers hand to services: the app's context, acting for the
/// request's principal (set by `api::http` and the websocket's
/// `connection_init`).
pub(crate) fn services<'a>(ctx: &Context<'a>) -> &'a crate::context::Ctx {
    ctx.data_opt::<crate::context::Ctx>()
        .unwrap_or_else(|| &app(ctx).ctx)
}

/// Loads a related row by its ID (a foreign key the caller holds); None stays None.
pub(crate) async fn load<E>(
    ctx: &Context<'_>,
    id: Option<&str>,
) -> async_graphql::Result<Option<E::Model>>
where
    E: EntityTrait,
    E::PrimaryKey: PrimaryKeyTrait<ValueType = String>,
{
    let Some(id) = id else { return Ok(None) };
    E::find_by_id(id.to_string())
        .one(&services(ctx).db)
        .await
        .map_err(ApiError::from)
        .gql()
}

/// The `thing(id: …, name: …)` lookup: exactly one of the two.
pub(crate) async fn by_id_or_name<E>(
    ctx: &Context<'_>,
    id: Option<async_graphql::ID>,
    name: Option<String>,
    name_column: E::Column,
) -> async_graphql::Result<Option<E::Model>>
where
    E: EntityTrait,
    E::PrimaryKey: PrimaryKeyTrait<ValueType = String>,
{
    let db = &services(ctx).db;
    let found = match (id, name) {
        (Some(id), None) => {
            E::find_by_id(crate::validate::id("id", &id).gql()?)
                .one(db)
                .await
        }
        (None, Some(name)) => E::find().filter(name_column.eq(name)).one(db).await,
        _ => return Err(ApiError::bad_input("give exactly one of id or name")).gql(),
    };
    found.map_err(ApiError::from).gql()
}

/// A size in bytes. GraphQL's `Int` is 32-bit, too small for disks, so sizes
/// (and console offsets) have their own scalar: an integer (as a JSON
/// number, exact up to 2^53, or a decimal string). Ranges are checked by the
/// services, with a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub i64);

/// A size or an offset in bytes: a whole number, as a JSON number (exact up
/// to 2^53) or a decimal string. Results are JSON numbers.
#[async_graphql::Scalar(name = "Bytes")]
impl async_graphql::ScalarType for Bytes {
    fn parse(value: async_graphql::Value) -> async_graphql::InputValueResult<Self> {
        match &value {
            async_graphql::Value::Number(n) => n.as_i64().map(Bytes).ok_or_else(|| {
                async_graphql::InputValueError::custom("a size in bytes is a whole number")
            }),
            async_graphql::Value::String(s) => s.parse().map(Bytes).map_err(|_| {
                async_graphql::InputValueError::custom("a size in bytes is a whole number")
            }),
            _ => Err(async_graphql::InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> async_graphql::Value {
        async_graphql::Value::Number(self.0.into())
    }
}

/// One host step of a plan or of an operation's record.
#[derive(SimpleObject, Clone)]
pub struct PlanStep {
    /// What kind of step: exec, spawnQemu, qmp, await, signal, addBridge, …
    pub action: String,
    /// One line a person can read.
    pub summary: String,
    /// The whole step as data (argv, QMP command and arguments, paths).
    pub detail: async_graphql::Json<serde_json::Value>,
}

impl From<&HostStep> for PlanStep {
    fn from(step: &HostStep) -> Self {
        PlanStep {
            action: step.name().to_string(),
            summary: step.summary(),
            detail: async_graphql::Json(serde_json::to_value(step).unwrap_or_default()),
        }
    }
}

pub fn plan(steps: &[HostStep]) -> Vec<PlanStep> {
    steps.iter().map(PlanStep::from).collect()
}
