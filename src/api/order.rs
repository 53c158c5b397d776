//! Every object of a response in the order of its selection set.
//!
//! The GraphQL spec orders a response object's keys as its fields appear in
//! the query (CollectFields: first appearance wins, fragments expanded where
//! they stand). async-graphql 7 does not keep that order: it resolves an
//! object's fields concurrently and inserts each into the result as it
//! *completes* (`do_resolve_container` drains a `FuturesUnordered`). A field
//! that awaits (a database read such as `VmStateChange.vm` or
//! `Vm.coherenceIssues`) therefore lands after fields selected later, and
//! whether it does depends on timing: one `vmStateChanged` event arrived in
//! the query's order, the next with `vm` moved to the end.
//!
//! [`SelectionOrder`] puts the order back: after each execution (each query,
//! each mutation, each subscription event), it walks the result along the
//! operation's selection sets and rebuilds every object in CollectFields
//! order. It only moves keys; values are untouched.

use std::sync::{Arc, Mutex};

use async_graphql::{
    Name, Response, ServerResult, Value, Variables,
    extensions::{Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery},
    indexmap::IndexMap,
    parser::types::{
        DocumentOperations, ExecutableDocument, Field, OperationType, Selection, SelectionSet,
    },
    registry::Registry,
};

/// The extension to put on the schema.
pub struct SelectionOrder;

impl ExtensionFactory for SelectionOrder {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Ordering::default())
    }
}

/// One request's (or one subscription's) extension: the document it ran,
/// kept from parsing for the executions that follow.
#[derive(Default)]
struct Ordering {
    document: Mutex<Option<Arc<ExecutableDocument>>>,
}

#[async_trait::async_trait]
impl Extension for Ordering {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        *self.document.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(document.clone()));
        Ok(document)
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let mut response = next.run(ctx, operation_name).await;
        let document = self
            .document
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(document) = document {
            restore(
                &ctx.schema_env.registry,
                &document,
                operation_name,
                &mut response.data,
            );
        }
        response
    }
}

/// Reorders `data`, the result of `operation_name` in `document`, to the
/// selection order. What it cannot place (an unknown operation or type) it
/// leaves as it is.
pub fn restore(
    registry: &Registry,
    document: &ExecutableDocument,
    operation_name: Option<&str>,
    data: &mut Value,
) {
    let operation = match (&document.operations, operation_name) {
        (DocumentOperations::Single(operation), _) => operation,
        (DocumentOperations::Multiple(operations), Some(name)) => match operations.get(name) {
            Some(operation) => operation,
            None => return,
        },
        (DocumentOperations::Multiple(_), None) => return,
    };
    let root = match operation.node.ty {
        OperationType::Query => Some(registry.query_type.as_str()),
        OperationType::Mutation => registry.mutation_type.as_deref(),
        OperationType::Subscription => registry.subscription_type.as_deref(),
    };
    if let Some(root) = root {
        let walk = Walk { registry, document };
        walk.value(root, &[&operation.node.selection_set.node], data);
    }
}

struct Walk<'a> {
    registry: &'a Registry,
    document: &'a ExecutableDocument,
}

impl<'a> Walk<'a> {
    /// A value of type `type_name` (a named type) selected by `selections`
    /// (every selection set of the fields merged under one response key).
    fn value(&self, type_name: &str, selections: &[&'a SelectionSet], value: &mut Value) {
        match value {
            // The items of a list of one concrete type have the same fields:
            // they are collected once (a page of 100 VMs, their disks).
            Value::List(items)
                if self
                    .registry
                    .types
                    .get(type_name)
                    .is_some_and(|meta| meta.possible_types().is_none()) =>
            {
                let fields = self.collect(type_name, selections);
                for item in items {
                    self.value_of(type_name, &fields, item);
                }
            }
            Value::List(items) => {
                for item in items {
                    self.value(type_name, selections, item);
                }
            }
            Value::Object(object) => {
                if let Some((concrete, fields)) = self.concrete(type_name, selections, object) {
                    self.object(concrete, &fields, object);
                }
            }
            _ => {}
        }
    }

    /// A value (or list of values) of the concrete type `concrete`, whose
    /// fields are `fields`.
    fn value_of(
        &self,
        concrete: &str,
        fields: &IndexMap<&'a str, Vec<&'a Field>>,
        value: &mut Value,
    ) {
        match value {
            Value::List(items) => {
                for item in items {
                    self.value_of(concrete, fields, item);
                }
            }
            Value::Object(object) => self.object(concrete, fields, object),
            _ => {}
        }
    }

    /// Puts `object`'s keys in the order of `fields`, unless they are in it
    /// already (when no field of it awaited), and goes on into its values.
    fn object(
        &self,
        concrete: &str,
        fields: &IndexMap<&'a str, Vec<&'a Field>>,
        object: &mut IndexMap<Name, Value>,
    ) {
        let in_order = object.len() == fields.len()
            && object
                .keys()
                .zip(fields.keys())
                .all(|(have, want)| have.as_str() == *want);
        if in_order {
            for (value, fields) in object.values_mut().zip(fields.values()) {
                self.nested(concrete, fields, value);
            }
            return;
        }
        let mut ordered = IndexMap::with_capacity(object.len());
        for (key, fields) in fields {
            let Some((key, mut value)) = object.shift_remove_entry(*key) else {
                continue; // @skip, @include
            };
            self.nested(concrete, fields, &mut value);
            ordered.insert(key, value);
        }
        // Nothing should be left; if something is, it keeps its place after.
        ordered.extend(object.drain(..));
        *object = ordered;
    }

    /// The value of `fields` (one response key) of an object of `concrete`.
    fn nested(&self, concrete: &str, fields: &[&'a Field], value: &mut Value) {
        let nested: Vec<&SelectionSet> = fields
            .iter()
            .map(|field| &field.selection_set.node)
            .filter(|set| !set.items.is_empty())
            .collect();
        if let (false, Some(field_type)) = (nested.is_empty(), self.field_type(concrete, fields[0]))
        {
            self.value(field_type, &nested, value);
        }
    }

    /// The object's own type (for an interface or a union, the possible type
    /// whose fields it holds) and its fields by response key, in order.
    #[allow(clippy::type_complexity)]
    fn concrete<'t>(
        &self,
        type_name: &'t str,
        selections: &[&'a SelectionSet],
        object: &IndexMap<Name, Value>,
    ) -> Option<(&'t str, IndexMap<&'a str, Vec<&'a Field>>)>
    where
        'a: 't,
    {
        let meta = self.registry.types.get(type_name)?;
        let Some(possible) = meta.possible_types() else {
            return Some((type_name, self.collect(type_name, selections)));
        };
        // The possible type that selects exactly the keys the object has,
        // and whose `__typename`, if selected, is what the object says.
        let mut fallback = None;
        for candidate in possible {
            let fields = self.collect(candidate, selections);
            let typename_agrees = fields.iter().all(|(key, fields)| {
                fields[0].name.node != "__typename"
                    || object
                        .get(*key)
                        .is_none_or(|v| *v == Value::String(candidate.clone()))
            });
            if !typename_agrees || !object.keys().all(|key| fields.contains_key(key.as_str())) {
                continue;
            }
            if fields.len() == object.len() {
                return Some((candidate.as_str(), fields));
            }
            fallback.get_or_insert((candidate.as_str(), fields));
        }
        fallback
    }

    /// CollectFields for an object of type `concrete`: the fields of
    /// `selections` by response key, in the order keys first appear, with
    /// fragments that apply to `concrete` expanded where they stand.
    fn collect(
        &self,
        concrete: &str,
        selections: &[&'a SelectionSet],
    ) -> IndexMap<&'a str, Vec<&'a Field>> {
        let mut fields = IndexMap::new();
        for set in selections {
            self.collect_into(concrete, set, &mut fields);
        }
        fields
    }

    fn collect_into(
        &self,
        concrete: &str,
        set: &'a SelectionSet,
        fields: &mut IndexMap<&'a str, Vec<&'a Field>>,
    ) {
        for selection in &set.items {
            match &selection.node {
                Selection::Field(field) => fields
                    .entry(field.node.response_key().node.as_str())
                    .or_default()
                    .push(&field.node),
                Selection::InlineFragment(fragment) => {
                    let on = fragment
                        .node
                        .type_condition
                        .as_ref()
                        .map(|condition| condition.node.on.node.as_str());
                    if self.applies(on, concrete) {
                        self.collect_into(concrete, &fragment.node.selection_set.node, fields);
                    }
                }
                Selection::FragmentSpread(spread) => {
                    // Validation has refused unknown fragments and cycles.
                    if let Some(fragment) =
                        self.document.fragments.get(&spread.node.fragment_name.node)
                        && self.applies(
                            Some(fragment.node.type_condition.node.on.node.as_str()),
                            concrete,
                        )
                    {
                        self.collect_into(concrete, &fragment.node.selection_set.node, fields);
                    }
                }
            }
        }
    }

    /// Whether a fragment on `on` (none: the enclosing type) applies to an
    /// object of type `concrete`.
    fn applies(&self, on: Option<&str>, concrete: &str) -> bool {
        match on {
            None => true,
            Some(on) => {
                on == concrete
                    || self
                        .registry
                        .types
                        .get(on)
                        .is_some_and(|meta| meta.is_possible_type(concrete))
            }
        }
    }

    /// The named type of `field` on `parent` (`[Vm!]!` → `Vm`).
    fn field_type(&self, parent: &str, field: &Field) -> Option<&'a str> {
        let meta = self.registry.types.get(parent)?;
        let field = meta.field_by_name(&field.name.node)?;
        Some(field.ty.trim_matches(|c| matches!(c, '[' | ']' | '!')))
    }
}

#[cfg(test)]
mod tests {
    use async_graphql::{EmptyMutation, Interface, Object, Schema, SimpleObject, Subscription};
    use futures_util::{Stream, StreamExt};

    use super::*;

    /// A field that awaits before answering, as a database read does: it
    /// completes after the fields that do not, whatever their order.
    async fn later<T>(value: T) -> T {
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        value
    }

    #[derive(SimpleObject)]
    #[graphql(complex)]
    struct Thing {
        a: i32,
        z: i32,
    }

    #[async_graphql::ComplexObject]
    impl Thing {
        async fn slow(&self) -> i32 {
            later(1).await
        }
        async fn child(&self) -> Vec<Thing> {
            later(vec![Thing { a: 2, z: 3 }]).await
        }
    }

    struct Other;

    #[Object]
    impl Other {
        async fn slow(&self) -> i32 {
            later(5).await
        }
        async fn b(&self) -> i32 {
            6
        }
    }

    #[derive(Interface)]
    #[graphql(field(name = "slow", ty = "i32"))]
    enum Node {
        Thing(Thing),
        Other(Other),
    }

    struct Query;

    #[Object]
    impl Query {
        async fn thing(&self) -> Thing {
            Thing { a: 0, z: 1 }
        }
        async fn slow(&self) -> i32 {
            later(4).await
        }
        async fn node(&self, other: bool) -> Node {
            if other {
                Node::Other(Other)
            } else {
                Node::Thing(Thing { a: 0, z: 1 })
            }
        }
    }

    struct Subscription;

    #[Subscription]
    impl Subscription {
        async fn things(&self) -> impl Stream<Item = Thing> {
            futures_util::stream::iter((0..3).map(|a| Thing { a, z: 9 }))
        }
    }

    fn schema(ordered: bool) -> Schema<Query, EmptyMutation, Subscription> {
        let builder = Schema::build(Query, EmptyMutation, Subscription);
        if ordered {
            builder.extension(SelectionOrder).finish()
        } else {
            builder.finish()
        }
    }

    async fn text(schema: &Schema<Query, EmptyMutation, Subscription>, query: &str) -> String {
        let response = schema.execute(query).await;
        assert!(response.errors.is_empty(), "{:?}", response.errors);
        serde_json::to_string(&response.data).unwrap()
    }

    const QUERY: &str =
        "{ slow thing { slow z child { z slow a } a } alias: thing { z renamed: a } }";
    const ORDERED: &str = r#"{"slow":4,"thing":{"slow":1,"z":1,"child":[{"z":3,"slow":1,"a":2}],"a":0},"alias":{"z":1,"renamed":0}}"#;

    #[tokio::test]
    async fn without_it_fields_that_await_come_last() {
        // What the extension is for: async-graphql alone puts what awaits last.
        let unordered = text(&schema(false), QUERY).await;
        assert_ne!(unordered, ORDERED);
        assert!(
            unordered
                .contains(r#""thing":{"z":1,"a":0,"slow":1,"child":[{"z":3,"a":2,"slow":1}]}"#),
            "{unordered}"
        );
    }

    #[tokio::test]
    async fn objects_keep_the_selection_order() {
        assert_eq!(text(&schema(true), QUERY).await, ORDERED);
    }

    #[tokio::test]
    async fn fragments_are_expanded_where_they_stand() {
        let schema = schema(true);
        assert_eq!(
            text(
                &schema,
                "query { thing { ...A slow z ... on Thing { child { a } a } } } fragment A on Thing { z }"
            )
            .await,
            r#"{"thing":{"z":1,"slow":1,"child":[{"a":2}],"a":0}}"#
        );
        // An interface: each object in the order of its own type's fragments.
        let query = "query($other: Boolean!) { node(other: $other) { ... on Other { slow b } ... on Thing { a slow } } }";
        for (other, expected) in [
            (true, r#"{"node":{"slow":5,"b":6}}"#),
            (false, r#"{"node":{"a":0,"slow":1}}"#),
        ] {
            let response = schema
                .execute(
                    async_graphql::Request::new(query)
                        .variables(Variables::from_json(serde_json::json!({"other": other}))),
                )
                .await;
            assert!(response.errors.is_empty(), "{:?}", response.errors);
            assert_eq!(serde_json::to_string(&response.data).unwrap(), expected);
        }
        // Named operations: the one that ran.
        let response = schema
            .execute(
                async_graphql::Request::new("query A { thing { a } } query B { thing { slow a } }")
                    .operation_name("B"),
            )
            .await;
        assert_eq!(
            serde_json::to_string(&response.data).unwrap(),
            r#"{"thing":{"slow":1,"a":0}}"#
        );
    }

    #[tokio::test]
    async fn every_subscription_event_keeps_the_selection_order() {
        let events: Vec<String> = schema(true)
            .execute_stream("subscription { things { slow z a } }")
            .map(|response| serde_json::to_string(&response.data).unwrap())
            .collect()
            .await;
        assert_eq!(
            events,
            [0, 1, 2].map(|a| format!(r#"{{"things":{{"slow":1,"z":9,"a":{a}}}}}"#))
        );
    }
}
