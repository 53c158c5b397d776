//! What serves GraphQL over HTTP and the websocket: the schema, twice.
//!
//! vman's schema extensions (the query limits, the metrics, the role guard,
//! the selection order and the loaders) each hook a step of a request. But
//! async-graphql runs *every* field and list item of a response through the
//! whole extension chain as soon as a schema has any extension at all
//! (`Extensions::resolve`, a boxed future per extension per field, and two
//! registry lookups), whether or not an extension hooks `resolve`. A page of
//! 100 VMs with their disks and NICs resolves about 1,400 fields and items:
//! that chain was the largest part of vman's own CPU time on the read path
//! (docs/BENCHMARKS.md, issue 22).
//!
//! So a query that the checks let through — parsed, within the limits, every
//! root field allowed to the caller — runs on a second build of the same
//! schema without extensions ([`Api::lean`]), and what the extensions would
//! have done around it is done here, once per request: the loaders go into
//! the request's data, validation errors get their code, the result is put
//! in selection order, the metrics are counted. Everything else (mutations,
//! subscriptions, refusals, documents beyond a limit) goes to the schema with
//! its extensions, unchanged, so each refusal has one source.

use std::{sync::Arc, time::Instant};

use async_graphql::{
    Data, Executor, OutputType, Request, Response, SubscriptionType,
    parser::types::{
        DocumentOperations, ExecutableDocument, OperationType, Selection, SelectionSet,
    },
    registry::Registry,
};
use futures_util::stream::BoxStream;

use super::{Mutation, Query, Subscription, VmanSchema, limits, loaders::Loaders, order};
use crate::{
    app::App,
    auth::{Principal, guard},
    config::GraphqlConfig,
    error::RequestError,
};

/// The schema with its extensions, and the same schema without them for the
/// queries that pass the checks up front.
#[derive(Clone)]
pub struct Api {
    full: VmanSchema,
    lean: VmanSchema,
    /// The schema's types, for the result's order (async-graphql keeps its
    /// own registry to itself).
    registry: Arc<Registry>,
    limits: Arc<GraphqlConfig>,
    app: Arc<App>,
}

impl Api {
    pub fn new(app: Arc<App>) -> Api {
        Api {
            full: super::schema(app.clone()),
            lean: super::lean_schema(app.clone()),
            registry: Arc::new(registry()),
            limits: Arc::new(app.ctx.config.graphql.clone()),
            app,
        }
    }

    /// Whether `request` may run on the lean schema: a query whose text is
    /// parsed, within the limits, and whose every root field the caller may
    /// read. Returns the document for the result's order.
    fn admits(&self, request: &mut Request) -> Option<Arc<ExecutableDocument>> {
        let principal = data::<Principal>(&request.data)?.clone();
        limits::scan(&request.query, &self.limits).ok()?;
        let operation_name = request.operation_name.clone();
        let document = request.parsed_query().ok()?;
        let operation = match (&document.operations, operation_name.as_deref()) {
            (DocumentOperations::Single(operation), _) => operation,
            (DocumentOperations::Multiple(operations), Some(name)) => operations.get(name)?,
            (DocumentOperations::Multiple(_), None) => return None,
        };
        if operation.node.ty != OperationType::Query {
            return None;
        }
        limits::walk(document, &self.limits).ok()?;
        // Introspection (`__schema`, `__type`) is left to the full schema,
        // whose registry has its types.
        let mut allowed = true;
        root_fields(
            document,
            &operation.node.selection_set.node,
            0,
            &mut |name| {
                allowed &= (name == "__typename" || !name.starts_with("__"))
                    && guard::allows(&principal, "Query", name);
            },
        )
        .then_some(())?;
        allowed.then(|| Arc::new(document.clone()))
    }
}

impl Executor for Api {
    async fn execute(&self, mut request: Request) -> Response {
        let Some(document) = self.admits(&mut request) else {
            return self.full.execute(request).await;
        };
        let started = Instant::now();
        let operation_name = request.operation_name.clone();
        let request = request.data(Arc::new(Loaders::new(self.app.ctx.db.clone())));
        let mut response = self.lean.execute(request).await;
        // Parsed, one operation, limits walked: what fails now before
        // execution is validation, and only such an error has no path.
        if response.errors.iter().any(|error| error.path.is_empty()) {
            response.errors = std::mem::take(&mut response.errors)
                .into_iter()
                .map(|error| match error.path.is_empty() {
                    true => RequestError::ValidationFailed.tag(error),
                    false => error,
                })
                .collect();
        }
        order::restore(
            &self.registry,
            &document,
            operation_name.as_deref(),
            &mut response.data,
        );
        crate::telemetry::graphql_request("query", response.errors.is_empty(), started);
        response
    }

    /// The websocket's operations. A mutation of another host's (with
    /// several hosts) is that host's node's to run: its one result is that
    /// node's answer (`cluster::route::websocket_mutation`).
    fn execute_stream(
        &self,
        request: Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        use futures_util::StreamExt;
        let caller = session_data
            .as_deref()
            .and_then(data::<crate::cluster::route::Caller>)
            .cloned();
        let Some(caller) = caller.filter(|_| {
            self.app.ctx.db.get_database_backend() != sea_orm::DbBackend::Sqlite
                && request.query.contains("mutation")
        }) else {
            return Executor::execute_stream(&self.full, request, session_data);
        };
        let full = self.full.clone();
        let ctx = self.app.ctx.clone();
        futures_util::stream::once(async move {
            match crate::cluster::route::websocket_mutation(&ctx, &request, &caller).await {
                Some(answer) => futures_util::stream::once(async { answer }).boxed(),
                None => Executor::execute_stream(&full, request, session_data),
            }
        })
        .flatten()
        .boxed()
    }
}

impl limits::Limited for Api {
    fn query_limits(&self) -> Option<&GraphqlConfig> {
        Some(&self.limits)
    }
}

/// The types of vman's schema, as async-graphql registers them (without
/// its introspection types).
fn registry() -> Registry {
    let mut registry = Registry::default();
    <Query as OutputType>::create_type_info(&mut registry);
    <Mutation as OutputType>::create_type_info(&mut registry);
    <Subscription as SubscriptionType>::create_type_info(&mut registry);
    registry.query_type = <Query as OutputType>::type_name().into_owned();
    registry.mutation_type = Some(<Mutation as OutputType>::type_name().into_owned());
    registry.subscription_type = Some(<Subscription as SubscriptionType>::type_name().into_owned());
    registry
}

fn data<T: std::any::Any>(data: &Data) -> Option<&T> {
    data.get(&std::any::TypeId::of::<T>())
        .and_then(|value| value.downcast_ref::<T>())
}

/// Calls `each` with the name of every root field of `set`, fragments
/// expanded. False when a fragment is unknown or nested beyond reason (the
/// full schema then answers what is wrong).
fn root_fields(
    document: &ExecutableDocument,
    set: &SelectionSet,
    depth: usize,
    each: &mut impl FnMut(&str),
) -> bool {
    if depth > limits::NESTING_LIMIT {
        return false;
    }
    set.items.iter().all(|selection| match &selection.node {
        Selection::Field(field) => {
            each(field.node.name.node.as_str());
            true
        }
        Selection::InlineFragment(fragment) => {
            root_fields(document, &fragment.node.selection_set.node, depth + 1, each)
        }
        Selection::FragmentSpread(spread) => document
            .fragments
            .get(&spread.node.fragment_name.node)
            .is_some_and(|fragment| {
                root_fields(document, &fragment.node.selection_set.node, depth + 1, each)
            }),
    })
}
