//! The GraphQL schema: roots merged per domain, thin resolvers over the services.

pub mod events;
pub mod executor;
pub mod health;
pub mod http;
pub mod limits;
pub mod loaders;
pub mod node;
pub mod order;
pub mod pagination;
pub mod ws;

use std::sync::Arc;

use async_graphql::{Context, MergedObject, MergedSubscription, Schema, SimpleObject};
use sea_orm::{ColumnTrait, EntityTrait, PrimaryKeyTrait, QueryFilter, QuerySelect};

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
    crate::cluster::graphql::ClusterQuery,
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
    crate::snapshot::graphql::SnapshotMutation,
    crate::operation::graphql::OperationMutation,
);

/// Live streams over the websocket: from the journal (each can resume after
/// a sequence) and from VM consoles (each can resume after an offset).
#[derive(MergedSubscription, Default)]
pub struct Subscription(
    events::EventSubscription,
    crate::coherence::graphql::CoherenceSubscription,
    crate::stats::graphql::StatsSubscription,
    crate::console::graphql::ConsoleSubscription,
    crate::operation::graphql::OperationSubscription,
);

pub type VmanSchema = Schema<Query, Mutation, Subscription>;

/// The schema without app data and limits: enough to print the SDL.
pub fn schema_builder() -> async_graphql::SchemaBuilder<Query, Mutation, Subscription> {
    Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .limit_recursive_depth(limits::NESTING_LIMIT)
}

/// The schema as served: with the query limits of `[graphql]` (checked by
/// the `QueryLimits` extension, not by async-graphql's `limit_depth` and
/// `limit_complexity`: see `limits`).
pub fn schema(app: Arc<App>) -> VmanSchema {
    let limits = limits::QueryLimits::new(&app.ctx.config.graphql);
    let builder = schema_builder()
        .extension(limits.clone())
        .extension(crate::telemetry::GraphqlMetrics)
        .extension(crate::auth::guard::RoleGuard)
        .extension(order::SelectionOrder)
        .extension(loaders::BatchLoading)
        .data(limits);
    finish(builder, app)
}

/// [`schema`] without its extensions, for the queries [`executor::Api`]
/// checks up front and completes itself.
pub(crate) fn lean_schema(app: Arc<App>) -> VmanSchema {
    finish(schema_builder(), app)
}

fn finish(
    mut builder: async_graphql::SchemaBuilder<Query, Mutation, Subscription>,
    app: Arc<App>,
) -> VmanSchema {
    if !app.ctx.config.graphql.introspection {
        // The limits refuse it first, with their code; this is the backstop.
        builder = builder.disable_introspection();
    }
    builder.data(app).finish()
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

/// Loads a related row by its ID (a foreign key the caller holds); None
/// stays None. The rows that the resolvers of one request ask for together
/// are read in one query (`loaders`).
pub(crate) async fn load<E>(
    ctx: &Context<'_>,
    id: Option<&str>,
) -> async_graphql::Result<Option<E::Model>>
where
    E: EntityTrait,
    E::Model: Send + Sync + Clone,
    E::PrimaryKey: PrimaryKeyTrait<ValueType = String>,
{
    let Some(id) = id else { return Ok(None) };
    loaders::of(ctx).load(loaders::Row::<E>::new(id)).await
}

/// What an object is named by: exactly one of an ID argument and its name
/// argument (`id` and `name`, `vmId` and `vmName`, …). The one rule of the
/// `thing(id:, name:)` queries and of the mutations that act on a template,
/// VM, disk or network; both or neither is BAD_USER_INPUT.
pub(crate) enum Named {
    Id(String),
    Name(String),
}

pub(crate) fn id_or_name(
    id_arg: &str,
    id: Option<async_graphql::ID>,
    name_arg: &str,
    name: Option<String>,
) -> crate::error::ApiResult<Named> {
    match (id, name) {
        (Some(id), None) => Ok(Named::Id(crate::validate::id(id_arg, &id)?)),
        (None, Some(name)) => Ok(Named::Name(name)),
        _ => Err(ApiError::bad_input(format!(
            "give exactly one of {id_arg} or {name_arg}"
        ))),
    }
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
    let found = match id_or_name("id", id, "name", name).gql()? {
        Named::Id(id) => E::find_by_id(id).one(db).await,
        Named::Name(name) => E::find().filter(name_column.eq(name)).one(db).await,
    };
    found.map_err(ApiError::from).gql()
}

/// The ID of the `kind` a mutation acts on, named by exactly one of its ID
/// argument and its name argument (`(id_arg, id)`, `(name_arg, name)`), as
/// in the matching query. An ID goes on as it is: the service reads it under
/// its lock, NOT_FOUND if it names nothing. A name that names nothing is
/// NOT_FOUND here. `columns` are the table's ID and name columns.
pub(crate) async fn target<E>(
    ctx: &Context<'_>,
    kind: &'static str,
    (id_arg, id): (&str, Option<async_graphql::ID>),
    (name_arg, name): (&str, Option<String>),
    (id_column, name_column): (E::Column, E::Column),
) -> async_graphql::Result<String>
where
    E: EntityTrait,
{
    match id_or_name(id_arg, id, name_arg, name).gql()? {
        Named::Id(id) => Ok(id),
        Named::Name(name) => E::find()
            .select_only()
            .column(id_column)
            .filter(name_column.eq(&name))
            .into_tuple::<String>()
            .one(&services(ctx).db)
            .await
            .map_err(ApiError::from)
            .gql()?
            .ok_or_else(|| ApiError::not_found(kind, format!("named {name:?}")))
            .gql(),
    }
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
