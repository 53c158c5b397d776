//! One resolution and one encoding per event for every subscriber of the
//! same live subscription.
//!
//! Subscribers whose connections share a [`Sharing`] key (the role: what a
//! shared subscription resolves can depend on nothing else) and who send the
//! same document, operation name and variables join one [`Group`]: one task
//! runs the operation's stream once, with the key's own session data (no
//! connection's identity), encodes each result once, and hands it to every
//! member through a `tokio::sync::broadcast` ring. Each connection still
//! frames the result with its own id and queues it in its own bounded queue,
//! with its own lag handling; a member that falls a whole ring behind gets
//! `Lagged` from the ring and its subscription ends the way a lagged one
//! always does, with the last sequence it was sent.
//!
//! Only what starts "from now on" can be shared: [`SHARED_ROOT_FIELDS`]
//! without `after`. A subscription with `after` replays the journal from its
//! own cursor first, so it runs on its own, as before. A member that joins a
//! running group gets what the group resolves after it joined; the group may
//! still be resolving an event committed just before, which a subscription
//! of its own would not have sent. Nothing committed after the join is
//! missed.
//!
//! A group ends when its last member leaves, or when its stream ends (a
//! refusal: the same for every member, since they share the key); a
//! refusal takes the group out of the hub before it is sent, so a later
//! subscriber gets a refusal of its own rather than a bare `complete`.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use async_graphql::{
    Data, Executor, Request, Response, ServerError, Value as GqlValue,
    parser::types::{DocumentOperations, OperationType, Selection},
};
use futures_util::{StreamExt, stream::BoxStream};
use serde_json::value::RawValue;
use tokio::sync::broadcast;
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};
use tokio_util::sync::CancellationToken;

use crate::{api::limits, config::GraphqlConfig};

/// Root fields whose results depend only on their arguments and the
/// caller's role, and which, without `after`, start at the live tail: they
/// may be shared between subscribers.
pub const SHARED_ROOT_FIELDS: &[&str] = &["events", "vmStateChanged"];

/// Who may share results with whom, and what shared subscriptions run with:
/// given by the [`super::Gate`] when it admits a connection.
pub struct Sharing {
    /// Connections with the same key get the same results for the same
    /// request (vman: the role).
    pub key: String,
    /// The session data a shared subscription runs with, the same for every
    /// connection with this key (vman: a principal with only the role).
    pub data: Data,
}

/// One result of an operation, encoded once for however many subscribers.
#[derive(Debug)]
pub struct Encoded {
    /// The `payload` of a `next`/`data` message.
    pub payload: Box<RawValue>,
    /// The errors, when this result is a refusal if it comes first (no
    /// data; every error is the request's, or a subscription's root field's).
    pub refusal: Option<Vec<ServerError>>,
    /// The root field and `sequence` of the result, if it has one: where a
    /// lagged subscriber resumes.
    pub resume: Option<(String, String)>,
}

impl Encoded {
    /// `response` encoded; `subscription` says whether an error of its root
    /// field refuses it (for a query or mutation that is an answer).
    pub fn new(response: Response, subscription: bool) -> Encoded {
        let refused =
            |error: &ServerError| error.path.is_empty() || (subscription && error.path.len() == 1);
        let refusal = (response.data == GqlValue::Null
            && !response.errors.is_empty()
            && response.errors.iter().all(refused))
        .then(|| response.errors.clone());
        let resume = resume_point(&response);
        // Serializing a response cannot fail (string keys, finite numbers);
        // should it ever, the client gets a well-formed error rather than
        // the task a panic.
        let payload = serde_json::value::to_raw_value(&response).unwrap_or_else(|error| {
            tracing::error!(%error, "websocket: encoding a result failed");
            RawValue::from_string(r#"{"errors":[{"message":"internal error"}]}"#.into())
                .expect("valid JSON")
        });
        Encoded {
            payload,
            refusal,
            resume,
        }
    }
}

/// The root field and `sequence` of a result (`events` and `vmStateChanged`
/// results carry one when the client selected it).
fn resume_point(response: &Response) -> Option<(String, String)> {
    let GqlValue::Object(data) = &response.data else {
        return None;
    };
    data.iter().find_map(|(field, value)| match value {
        GqlValue::Object(object) => match object.get("sequence") {
            Some(GqlValue::String(sequence)) => Some((field.to_string(), sequence.clone())),
            _ => None,
        },
        _ => None,
    })
}

/// What a member's stream yields.
pub enum Delivery {
    Result(Arc<Encoded>),
    /// The ring moved on past results this member had not taken yet.
    Lagged,
}

/// What makes two subscriptions the same.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    sharing: String,
    query: String,
    operation_name: Option<String>,
    /// As JSON: `Variables` keeps its names sorted.
    variables: String,
}

struct Group {
    /// Tells this group from a later one under the same key.
    id: u64,
    members: usize,
    results: broadcast::Sender<Arc<Encoded>>,
    /// Ends the group's task when its last member leaves.
    stop: CancellationToken,
}

type Groups = Arc<Mutex<HashMap<Key, Group>>>;

/// The groups of one endpoint.
pub struct Hub<E> {
    executor: E,
    groups: Groups,
    next_id: AtomicU64,
    /// Results a member may fall behind the group before it lags.
    capacity: usize,
}

impl<E: Executor> Hub<E> {
    pub fn new(executor: E, capacity: usize) -> Hub<E> {
        Hub {
            executor,
            groups: Groups::default(),
            next_id: AtomicU64::new(0),
            capacity: capacity.max(1),
        }
    }

    /// What makes `request` the same as others for connections that share
    /// as `sharing`; `None` if it cannot be shared.
    pub fn key(
        &self,
        request: &Request,
        sharing: &str,
        limits: Option<&GraphqlConfig>,
    ) -> Option<Key> {
        if !shareable(request, limits) {
            return None;
        }
        Some(Key {
            sharing: sharing.to_string(),
            query: request.query.clone(),
            operation_name: request.operation_name.clone(),
            variables: serde_json::to_string(&request.variables).ok()?,
        })
    }

    /// Joins the group running `request` under `key`, or starts it with
    /// `data` as its session data.
    pub fn join(
        &self,
        key: Key,
        request: Request,
        data: &Arc<Data>,
    ) -> BoxStream<'static, Delivery> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let group = groups.entry(key.clone()).or_insert_with(|| {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (results, _) = broadcast::channel(self.capacity);
            let stop = CancellationToken::new();
            let stream = self.executor.execute_stream(request, Some(data.clone()));
            tokio::spawn(run(
                stream,
                results.clone(),
                stop.clone(),
                self.groups.clone(),
                key.clone(),
                id,
            ));
            Group {
                id,
                members: 0,
                results,
                stop,
            }
        });
        group.members += 1;
        let membership = Membership {
            groups: self.groups.clone(),
            key,
            id: group.id,
        };
        let results = BroadcastStream::new(group.results.subscribe());
        drop(groups);
        results
            .map(move |result| {
                let _ = &membership;
                match result {
                    Ok(encoded) => Delivery::Result(encoded),
                    Err(BroadcastStreamRecvError::Lagged(_)) => Delivery::Lagged,
                }
            })
            .boxed()
    }
}

/// A group's task: resolves and encodes each result once.
async fn run(
    mut stream: BoxStream<'static, Response>,
    results: broadcast::Sender<Arc<Encoded>>,
    stop: CancellationToken,
    groups: Groups,
    key: Key,
    id: u64,
) {
    loop {
        let response = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            response = stream.next() => response,
        };
        let Some(response) = response else { break };
        let encoded = Encoded::new(response, true);
        if encoded.refusal.is_some() {
            close(&groups, &key, id);
        }
        // No receiver: the last member just left, and `stop` fires next.
        let _ = results.send(Arc::new(encoded));
    }
    // Dropping the last sender (the hub's, here, then the task's) ends every
    // member's stream once it has taken what is in the ring.
    close(&groups, &key, id);
}

/// Takes group `id` out of the hub, if it is still there.
fn close(groups: &Groups, key: &Key, id: u64) {
    let mut groups = groups.lock().unwrap_or_else(|e| e.into_inner());
    if groups.get(key).is_some_and(|group| group.id == id) {
        groups.remove(key);
    }
}

/// A member of a group; leaving it (dropping its stream) stops the group
/// when nobody is left.
struct Membership {
    groups: Groups,
    key: Key,
    id: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let Some(group) = groups
            .get_mut(&self.key)
            .filter(|group| group.id == self.id)
        else {
            return;
        };
        group.members -= 1;
        if group.members == 0 {
            group.stop.cancel();
            groups.remove(&self.key);
        }
    }
}

/// Whether `request` can be shared: one subscription whose every root field
/// is in [`SHARED_ROOT_FIELDS`], none with `after`, and no extensions.
/// Parsed only once within the query limits; anything else (a fragment at
/// the root, a parse error) runs on its own and is refused there.
fn shareable(request: &Request, limits: Option<&GraphqlConfig>) -> bool {
    let Some(limits) = limits else {
        return false;
    };
    if !request.extensions.0.is_empty() || limits::scan(&request.query, limits).is_err() {
        return false;
    }
    let Ok(document) = async_graphql::parser::parse_query(&request.query) else {
        return false;
    };
    let operation = match (&document.operations, request.operation_name.as_deref()) {
        (DocumentOperations::Single(operation), _) => operation,
        (DocumentOperations::Multiple(operations), Some(name)) => match operations.get(name) {
            Some(operation) => operation,
            None => return false,
        },
        (DocumentOperations::Multiple(_), None) => return false,
    };
    operation.node.ty == OperationType::Subscription
        && operation
            .node
            .selection_set
            .node
            .items
            .iter()
            .all(|selection| match &selection.node {
                Selection::Field(field) => {
                    SHARED_ROOT_FIELDS.contains(&field.node.name.node.as_str())
                        && field.node.get_argument("after").is_none()
                }
                Selection::FragmentSpread(_) | Selection::InlineFragment(_) => false,
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> GraphqlConfig {
        crate::config::Config::default().graphql
    }

    #[test]
    fn only_live_subscriptions_of_the_shared_fields_are_shared() {
        let shared = [
            "subscription { vmStateChanged { to } }",
            "subscription($vm: ID) { vmStateChanged(vmId: $vm) { to vm { name } } }",
            "subscription { events { sequence } a: vmStateChanged { to } }",
        ];
        for query in shared {
            assert!(shareable(&Request::new(query), Some(&limits())), "{query}");
        }
        let own = [
            // From a cursor of its own.
            "subscription($a: String) { events(after: $a) { sequence } }",
            "subscription { vmStateChanged(after: null) { to } }",
            // Not a shared field.
            "subscription { coherenceIssues { sequence } }",
            // Not a subscription.
            "{ events { nodes { sequence } } }",
            // A fragment at the root.
            "subscription { ... on Subscription { events { sequence } } }",
            // Not GraphQL.
            "subscription {",
            // Two operations, none named.
            "subscription A { events { sequence } } subscription B { events { sequence } }",
        ];
        for query in own {
            assert!(!shareable(&Request::new(query), Some(&limits())), "{query}");
        }
        let named = |name: &str| {
            Request::new(
                "subscription A { events { sequence } } subscription B { events(after: \"1\") { sequence } }",
            )
            .operation_name(name)
        };
        assert!(shareable(&named("A"), Some(&limits())));
        assert!(!shareable(&named("B"), Some(&limits())));
        let mut extended = Request::new("subscription { events { sequence } }");
        extended
            .extensions
            .0
            .insert("x".into(), async_graphql::Value::Null);
        assert!(!shareable(&extended, Some(&limits())));
        assert!(!shareable(
            &Request::new("subscription { events { sequence } }"),
            None
        ));
    }

    #[test]
    fn a_result_is_a_refusal_only_without_data_and_with_top_level_errors() {
        let refused = |path: Vec<async_graphql::PathSegment>| {
            let mut error = ServerError::new("no", None);
            error.path = path;
            Response::from_errors(vec![error])
        };
        assert!(Encoded::new(refused(vec![]), false).refusal.is_some());
        let at_root = || vec![async_graphql::PathSegment::Field("events".into())];
        assert!(Encoded::new(refused(at_root()), true).refusal.is_some());
        assert!(Encoded::new(refused(at_root()), false).refusal.is_none());
        let event = Response::new(
            GqlValue::from_json(serde_json::json!({"events": {"sequence": "7"}})).unwrap(),
        );
        let encoded = Encoded::new(event, true);
        assert!(encoded.refusal.is_none());
        assert_eq!(
            encoded.payload.get(),
            r#"{"data":{"events":{"sequence":"7"}}}"#
        );
        assert_eq!(encoded.resume, Some(("events".into(), "7".into())));
    }
}
