//! The websocket endpoint: graphql-transport-ws, and the legacy graphql-ws
//! subprotocol, chosen from `Sec-WebSocket-Protocol`.
//!
//! Why not async-graphql-axum's handler: it closes a `subscribe` sent before
//! `connection_ack` with 1011 instead of 4401, silently replaces a subscriber
//! whose id is reused instead of closing 4409, closes invalid messages with a
//! reason too long for a close frame (clients see 1006, not 4400), has no
//! connection-init timeout, and queues results without bound. Here one task
//! per connection owns the protocol state and polls every operation's
//! result stream itself; a second task owns the socket's write half.
//!
//! Bounds: at most `websocket.max_subscriptions` operations per connection,
//! and one bounded queue of outgoing messages. When a client reads slower
//! than results come, results wait (the event bus behind them catches up
//! from the journal, so nothing piles up there either); when the queue stays
//! full for `websocket.lag_timeout`, the subscription whose result is waiting
//! ends with an `error` that says where to resume. Nothing here buffers
//! without bound, waits without a timeout, or panics on input.
//!
//! Live subscriptions that many connections make alike are resolved and
//! encoded once per event for all of them ([`hub`]); each connection only
//! frames the shared result with its operation's id.

mod hub;
mod protocol;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_graphql::{Data, ErrorExtensionValues, Executor, Response, ServerError};
use axum::{
    extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
    http::StatusCode,
    response::{IntoResponse, Response as HttpResponse},
    routing::{MethodRouter, get},
};
use futures_util::{
    SinkExt, StreamExt,
    stream::{BoxStream, SplitSink, SplitStream},
};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_stream::StreamMap;
use tokio_util::sync::CancellationToken;

pub use self::hub::{SHARED_ROOT_FIELDS, Sharing};
use self::{
    hub::{Delivery, Encoded, Hub},
    protocol::{ClientMessage, Invalid, Protocol, ServerMessage, truncate},
};
use crate::{api::limits::Limited, config::WebsocketConfig};

/// The `connection_init` payload, in every operation's context data so
/// resolvers can authenticate from it (`ctx.data_opt::<ConnectionInitPayload>()`).
#[derive(Debug, Clone, Default)]
pub struct ConnectionInitPayload(pub serde_json::Map<String, serde_json::Value>);

/// Who may hold a connection: decided at `connection_init`, from the
/// upgrade request's `Authorization` header and the init payload.
pub trait Gate: Send + Sync + 'static {
    fn admit(
        &self,
        authorization: Option<String>,
        payload: &serde_json::Map<String, serde_json::Value>,
    ) -> futures_util::future::BoxFuture<'static, Result<Admitted, String>>;
}

/// A connection let in: the data its operations see, and what ends it
/// (a revoked or expired token) while `hold` is kept for its life; with
/// `sharing`, its live subscriptions may share results with other
/// connections of the same key.
pub struct Admitted {
    pub data: Data,
    pub ends: CancellationToken,
    pub hold: Box<dyn std::any::Any + Send + Sync>,
    pub sharing: Option<Sharing>,
}

/// Lets every connection in (tests, and schemas without auth).
pub struct Open;

impl Gate for Open {
    fn admit(
        &self,
        _authorization: Option<String>,
        _payload: &serde_json::Map<String, serde_json::Value>,
    ) -> futures_util::future::BoxFuture<'static, Result<Admitted, String>> {
        Box::pin(async {
            Ok(Admitted {
                data: Data::default(),
                ends: CancellationToken::new(),
                hold: Box::new(()),
                sharing: Some(Sharing {
                    key: "open".into(),
                    data: Data::default(),
                }),
            })
        })
    }
}

/// How long one write to the socket, or one wait for room in the outgoing
/// queue, may take before the client is deemed gone and the socket dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Queue slots results may not use, so that `complete`, `error` and `pong`
/// still fit when results fill the outgoing buffer.
const CONTROL_HEADROOM: usize = 16;

/// Largest client message; as large as an HTTP request body may be.
const MAX_MESSAGE_BYTES: usize = super::http::MAX_BODY_BYTES;

/// A close frame's payload is at most 125 bytes, two of them the code.
const MAX_CLOSE_REASON: usize = 123;

/// Close codes of graphql-transport-ws (and RFC 6455 for the rest).
mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const TOO_BIG: u16 = 1009;
    pub const BAD_REQUEST: u16 = 4400;
    pub const UNAUTHORIZED: u16 = 4401;
    pub const INIT_TIMEOUT: u16 = 4408;
    pub const SUBSCRIBER_EXISTS: u16 = 4409;
    pub const FORBIDDEN: u16 = 4403;
    pub const TOO_MANY_INITS: u16 = 4429;
}

static LAGGED: AtomicU64 = AtomicU64::new(0);

/// Subscriptions ended because their client read too slowly, since the
/// process started (all connections). Also the metric
/// `vman_websocket_lagged_total`.
pub fn lagged_total() -> u64 {
    LAGGED.load(Ordering::Relaxed)
}

/// The `/graphql/ws` route, for `executor` (the schema), letting in what
/// `gate` admits and closing every socket with 1001 when `cancel` fires.
pub fn route<S, E>(
    executor: E,
    settings: WebsocketConfig,
    cancel: CancellationToken,
    gate: Arc<dyn Gate>,
) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
    E: Executor + Limited,
{
    let endpoint = Arc::new(Endpoint {
        hub: Hub::new(executor.clone(), settings.outgoing_buffer),
        executor,
        settings,
        cancel,
        gate,
    });
    get(move |headers: http::HeaderMap, upgrade: WebSocketUpgrade| {
        let endpoint = endpoint.clone();
        let authorization = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        async move { endpoint.upgrade(upgrade, authorization) }
    })
}

struct Endpoint<E> {
    executor: E,
    hub: Hub<E>,
    settings: WebsocketConfig,
    cancel: CancellationToken,
    gate: Arc<dyn Gate>,
}

impl<E: Executor + Limited> Endpoint<E> {
    fn upgrade(
        self: Arc<Self>,
        upgrade: WebSocketUpgrade,
        authorization: Option<String>,
    ) -> HttpResponse {
        let upgrade = upgrade
            .protocols(Protocol::NAMES)
            .max_message_size(MAX_MESSAGE_BYTES)
            .max_frame_size(MAX_MESSAGE_BYTES);
        // Without a protocol both sides agree on, every later message would
        // be a guess: refuse before upgrading, as RFC 6455 allows.
        let Some(protocol) = upgrade
            .selected_protocol()
            .and_then(|name| name.to_str().ok())
            .and_then(Protocol::from_name)
        else {
            return (
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Protocol must offer graphql-transport-ws or graphql-ws\n",
            )
                .into_response();
        };
        upgrade
            .on_failed_upgrade(|error| tracing::debug!(%error, "websocket upgrade failed"))
            .on_upgrade(move |socket| self.serve(socket, protocol, authorization))
    }

    async fn serve(
        self: Arc<Self>,
        socket: WebSocket,
        protocol: Protocol,
        authorization: Option<String>,
    ) {
        let _connected = Live::new("vman_websocket_connections");
        let (sink, incoming) = socket.split();
        let (queue, queued) = mpsc::channel(self.settings.outgoing_buffer + CONTROL_HEADROOM);
        let (close_tx, close_rx) = oneshot::channel();
        let writer_gone = CancellationToken::new();
        let writer = tokio::spawn(write_loop(sink, queued, close_rx, writer_gone.clone()));
        let mut connection = Connection {
            endpoint: &self,
            protocol,
            authorization,
            session: None,
            sharing: None,
            ends: CancellationToken::new(),
            _hold: None,
            queue,
            operations: StreamMap::new(),
            states: HashMap::new(),
            waiting: None,
            keepalive: keepalive(self.settings.keepalive_interval),
        };
        let end = connection.run(incoming, &writer_gone).await;
        // The close request goes first: once the queue's sender is dropped
        // the writer would otherwise finish without a close frame.
        let _ = close_tx.send(end);
        // Dropping the operations ends their streams (and event-bus readers)
        // now, not when the writer is done.
        drop(connection);
        if tokio::time::timeout(2 * SEND_TIMEOUT, writer)
            .await
            .is_err()
        {
            tracing::warn!("websocket writer did not finish in time");
        }
    }
}

/// Counts something live in a gauge for as long as it exists.
struct Live(&'static str);

impl Live {
    fn new(gauge: &'static str) -> Live {
        metrics::gauge!(gauge).increment(1.0);
        Live(gauge)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}

/// How a connection ends: with a close frame, or quietly because the client
/// closed or vanished (then there is nobody to tell).
type End = Option<CloseFrame>;

fn close_with(code: u16, reason: &str) -> End {
    Some(CloseFrame {
        code,
        reason: truncate(reason, MAX_CLOSE_REASON).into(),
    })
}

/// Sends what the connection queues, in order; on request sends the close
/// frame. Every write has a timeout: a client that stops reading stalls only
/// this task, and only for [`SEND_TIMEOUT`].
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut queued: mpsc::Receiver<Message>,
    mut close: oneshot::Receiver<End>,
    gone: CancellationToken,
) {
    let _gone = gone.drop_guard();
    loop {
        // Closing wins over what is still queued: a fatal close is "immediate".
        let message = tokio::select! {
            biased;
            end = &mut close => return finish(sink, end.ok().flatten()).await,
            message = queued.recv() => match message {
                Some(message) => message,
                None => return finish(sink, None).await,
            },
        };
        tokio::select! {
            biased;
            end = &mut close => return finish(sink, end.ok().flatten()).await,
            sent = tokio::time::timeout(SEND_TIMEOUT, sink.send(message)) => match sent {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(%error, "websocket write failed");
                    return;
                }
                Err(_) => {
                    tracing::info!("websocket client stopped reading; dropping the socket");
                    return;
                }
            },
        }
    }
}

async fn finish(mut sink: SplitSink<WebSocket, Message>, frame: End) {
    if let Some(frame) = frame {
        // Errors here mean the client is already gone or closed first.
        let _ = tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
    }
    let _ = tokio::time::timeout(SEND_TIMEOUT, sink.close()).await;
}

/// One item of an operation's stream.
enum Item {
    /// A result of the connection's own.
    Own(Box<Response>),
    /// A result shared with other subscribers.
    Shared(Arc<Encoded>),
    /// The shared results moved on past ones this subscriber had not taken.
    Lagged,
    /// The operation ended.
    End,
}

/// Per-operation bookkeeping next to its stream.
#[derive(Default)]
struct OperationState {
    /// Whether a result was delivered yet: only a first result can be a
    /// request error.
    answered: bool,
    /// Whether the operation is a subscription: one whose root field fails
    /// before its stream starts was refused, not answered.
    subscription: bool,
    /// The root field and `sequence` of the last result queued, if it had
    /// one: where a lagged subscriber resumes.
    resume: Option<(String, String)>,
}

/// A result waiting for room in the outgoing queue.
struct Waiting {
    id: String,
    text: String,
    resume: Option<(String, String)>,
    /// When its subscription is deemed lagged.
    deadline: Instant,
}

struct Connection<'a, E> {
    endpoint: &'a Endpoint<E>,
    protocol: Protocol,
    /// The upgrade request's `Authorization` header, for the gate.
    authorization: Option<String>,
    /// Set by `connection_init`: the data every operation sees.
    session: Option<Arc<Data>>,
    /// Set by `connection_init` if the gate allows: the key and data of
    /// shared subscriptions.
    sharing: Option<(String, Arc<Data>)>,
    /// Fires when the gate withdraws the admission (a revoked or expired token).
    ends: CancellationToken,
    _hold: Option<Box<dyn std::any::Any + Send + Sync>>,
    queue: mpsc::Sender<Message>,
    operations: StreamMap<String, BoxStream<'static, Item>>,
    states: HashMap<String, OperationState>,
    /// While a result waits, no operation is polled: results stay in order
    /// and nothing more is taken from the event bus.
    waiting: Option<Waiting>,
    /// Ticks `ping`/`ka` once the connection is acknowledged.
    keepalive: tokio::time::Interval,
}

impl<E: Executor + Limited> Connection<'_, E> {
    async fn run(
        &mut self,
        mut incoming: SplitStream<WebSocket>,
        writer_gone: &CancellationToken,
    ) -> End {
        let init_deadline = tokio::time::sleep(self.endpoint.settings.init_timeout);
        tokio::pin!(init_deadline);
        // Reserved permits borrow their sender; this one is not `self`'s.
        let queue = self.queue.clone();
        loop {
            let ends = self.ends.clone();
            // Evaluated even when its branch is disabled, so never unwrapped.
            let lag_deadline = self
                .waiting
                .as_ref()
                .map_or_else(Instant::now, |waiting| waiting.deadline);
            tokio::select! {
                biased;
                _ = self.endpoint.cancel.cancelled() => {
                    return close_with(close::GOING_AWAY, "Server is shutting down");
                }
                _ = writer_gone.cancelled() => return None,
                _ = ends.cancelled() => {
                    return close_with(close::FORBIDDEN, "Forbidden: the token was revoked or has expired");
                }
                _ = &mut init_deadline, if self.session.is_none() => {
                    return close_with(close::INIT_TIMEOUT, "Connection initialisation timeout");
                }
                message = incoming.next() => {
                    let handled = match message {
                        Some(Ok(Message::Text(text))) => self.on_message(text.as_bytes()).await,
                        Some(Ok(Message::Binary(bytes))) => self.on_message(&bytes).await,
                        // tungstenite answers pings and the close handshake itself.
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                        Some(Ok(Message::Close(_))) | None => Err(None),
                        Some(Err(error)) => Err(read_error(&error)),
                    };
                    if let Err(end) = handled {
                        return end;
                    }
                }
                // Room for a result means room for it *and* the headroom.
                permits = queue.reserve_many(CONTROL_HEADROOM + 1), if self.waiting.is_some() => {
                    let (Ok(mut permits), Some(waiting)) = (permits, self.waiting.take()) else {
                        return None;
                    };
                    if let Some(permit) = permits.next() {
                        permit.send(Message::Text(waiting.text.into()));
                    }
                    if let (Some(resume), Some(state)) = (waiting.resume, self.states.get_mut(&waiting.id)) {
                        state.resume = Some(resume);
                    }
                }
                _ = tokio::time::sleep_until(lag_deadline), if self.waiting.is_some() => {
                    // Nothing was queued from it, so its resume point stands.
                    let Some(waiting) = self.waiting.take() else { continue };
                    if let Err(end) = self.lagged(waiting.id).await {
                        return end;
                    }
                }
                Some((id, item)) = self.operations.next(), if self.waiting.is_none() && !self.operations.is_empty() => {
                    if let Err(end) = self.on_result(id, item).await {
                        return end;
                    }
                }
                _ = self.keepalive.tick(), if self.session.is_some() => {
                    self.send_keepalive();
                }
            }
        }
    }

    async fn on_message(&mut self, bytes: &[u8]) -> Result<(), End> {
        let message = match protocol::parse(self.protocol, bytes) {
            Ok(message) => message,
            Err(Invalid(reason)) => {
                return match self.protocol {
                    Protocol::TransportWs => Err(close_with(close::BAD_REQUEST, &reason)),
                    // subscriptions-transport-ws answers and ignores the message.
                    Protocol::LegacyWs => {
                        self.send(ServerMessage::ConnectionError { message: &reason })
                            .await
                    }
                };
            }
        };
        match message {
            ClientMessage::ConnectionInit(payload) => {
                if self.session.is_some() {
                    if self.protocol == Protocol::LegacyWs {
                        self.send(ServerMessage::ConnectionError {
                            message: "Too many initialisation requests",
                        })
                        .await?;
                    }
                    return Err(close_with(
                        close::TOO_MANY_INITS,
                        "Too many initialisation requests",
                    ));
                }
                let admitted = match self
                    .endpoint
                    .gate
                    .admit(self.authorization.take(), &payload)
                    .await
                {
                    Ok(admitted) => admitted,
                    Err(reason) => {
                        if self.protocol == Protocol::LegacyWs {
                            self.send(ServerMessage::ConnectionError { message: &reason })
                                .await?;
                        }
                        return Err(close_with(
                            close::FORBIDDEN,
                            &format!("Forbidden: {reason}"),
                        ));
                    }
                };
                let mut data = admitted.data;
                data.insert(ConnectionInitPayload(payload));
                self.session = Some(Arc::new(data));
                self.sharing = admitted
                    .sharing
                    .map(|sharing| (sharing.key, Arc::new(sharing.data)));
                self.ends = admitted.ends;
                self._hold = Some(admitted.hold);
                self.send(ServerMessage::ConnectionAck).await?;
                // Keepalives count from the acknowledgement; legacy clients
                // also expect a first `ka` right after it.
                self.keepalive.reset();
                if self.protocol == Protocol::LegacyWs {
                    self.send(ServerMessage::KeepAlive).await?;
                }
                Ok(())
            }
            ClientMessage::Ping(payload) => self.send(ServerMessage::Pong(payload.as_ref())).await,
            ClientMessage::Pong => Ok(()),
            ClientMessage::Subscribe { id, request } => self.subscribe(id, *request).await,
            ClientMessage::Complete { id } => {
                let was_running = self.stop(&id);
                // subscriptions-transport-ws confirms a `stop`; graphql-transport-ws
                // sends nothing more for an operation the client completed.
                if was_running && self.protocol == Protocol::LegacyWs {
                    self.send(ServerMessage::Complete { id: &id }).await?;
                }
                Ok(())
            }
            ClientMessage::Terminate => Err(close_with(close::NORMAL, "")),
        }
    }

    async fn subscribe(&mut self, id: String, request: async_graphql::Request) -> Result<(), End> {
        let Some(session) = self.session.clone() else {
            return match self.protocol {
                Protocol::TransportWs => Err(close_with(close::UNAUTHORIZED, "Unauthorized")),
                Protocol::LegacyWs => {
                    let error = coded_error("Send connection_init first", "UNAUTHORIZED");
                    self.send_error(&id, error).await
                }
            };
        };
        if self.states.contains_key(&id) {
            match self.protocol {
                Protocol::TransportWs => {
                    // The id goes into the reason; cut it so the reason fits.
                    let room = MAX_CLOSE_REASON - "Subscriber for  already exists".len();
                    let reason = format!("Subscriber for {} already exists", truncate(&id, room));
                    return Err(close_with(close::SUBSCRIBER_EXISTS, &reason));
                }
                // subscriptions-transport-ws replaces the running operation.
                Protocol::LegacyWs => {
                    self.stop(&id);
                }
            }
        }
        let max = self.endpoint.settings.max_subscriptions;
        if self.states.len() >= max {
            let error = coded_error(
                format!(
                    "Too many operations on this connection (at most {max}); complete one first"
                ),
                "TOO_MANY_SUBSCRIPTIONS",
            );
            return self.send_error(&id, error).await;
        }
        let subscription = is_subscription(&request);
        let endpoint = self.endpoint;
        let shared = match &self.sharing {
            Some((key, data)) if subscription => endpoint
                .hub
                .key(&request, key, endpoint.executor.query_limits())
                .map(|key| (key, data)),
            _ => None,
        };
        let results = match shared {
            Some((key, data)) => endpoint
                .hub
                .join(key, request, data)
                .map(|delivery| match delivery {
                    Delivery::Result(encoded) => Item::Shared(encoded),
                    Delivery::Lagged => Item::Lagged,
                })
                .boxed(),
            None => endpoint
                .executor
                .execute_stream(request, Some(session))
                .map(|response| Item::Own(Box::new(response)))
                .boxed(),
        };
        // The gauge goes down when the stream is dropped, however it ends.
        let active = Live::new("vman_websocket_operations");
        let stream = results
            .map(move |item| {
                let _ = &active;
                item
            })
            .chain(futures_util::stream::once(async { Item::End }))
            .boxed();
        self.operations.insert(id.clone(), stream);
        self.states.insert(
            id,
            OperationState {
                subscription,
                ..OperationState::default()
            },
        );
        Ok(())
    }

    /// Drops an operation (and with it its stream and any result of it
    /// waiting); whether it was running.
    fn stop(&mut self, id: &str) -> bool {
        self.operations.remove(id);
        if self
            .waiting
            .as_ref()
            .is_some_and(|waiting| waiting.id == id)
        {
            self.waiting = None;
        }
        self.states.remove(id).is_some()
    }

    async fn on_result(&mut self, id: String, item: Item) -> Result<(), End> {
        let Some(state) = self.states.get_mut(&id) else {
            return Ok(());
        };
        let encoded = match item {
            Item::End => {
                self.stop(&id);
                return self.send(ServerMessage::Complete { id: &id }).await;
            }
            Item::Lagged => return self.lagged(id).await,
            Item::Own(response) => Arc::new(Encoded::new(*response, state.subscription)),
            Item::Shared(encoded) => encoded,
        };
        // A request the schema rejected before executing it (validation,
        // limits) is an `error` for the operation. async-graphql's invariant,
        // as in `api::http`: field errors always carry a path, these never do.
        // So is a subscription refused by its root field before any event (a
        // malformed or ahead `after`, a role too low): its only error's path
        // is that field, where an event's field errors lie deeper.
        if let (false, Some(errors)) = (state.answered, &encoded.refusal) {
            self.stop(&id);
            return self.send(ServerMessage::Error { id: &id, errors }).await;
        }
        state.answered = true;
        let text = ServerMessage::Next {
            id: &id,
            payload: &encoded.payload,
        }
        .encode(self.protocol);
        // Queued by the `reserve_many` branch of `run`, at once if there is room.
        self.waiting = Some(Waiting {
            resume: encoded.resume.clone(),
            id,
            text,
            deadline: Instant::now() + self.endpoint.settings.lag_timeout,
        });
        Ok(())
    }

    /// Operation `id`'s results found no room in time (or, shared, moved on
    /// without it): its client is not keeping up. Ending the subscription
    /// frees the connection for the others; the journal keeps what it
    /// missed, and the error says from where.
    async fn lagged(&mut self, id: String) -> Result<(), End> {
        let resume = self.states.get(&id).and_then(|state| state.resume.clone());
        self.stop(&id);
        LAGGED.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("vman_websocket_lagged_total").increment(1);
        tracing::info!(
            after = resume.as_ref().map(|(_, sequence)| sequence.as_str()),
            "websocket subscriber lagged; subscription ended"
        );
        let lagged = "Subscription lagged: the client read too slowly and its buffer stayed full.";
        let (message, after) = match resume {
            Some((field, sequence)) => (
                format!(
                    "{lagged} Resubscribe with {field}(after: \"{sequence}\") to continue without a gap."
                ),
                Some(sequence),
            ),
            None => (
                format!(
                    "{lagged} Resubscribe with `after` set to the last sequence received to continue without a gap."
                ),
                None,
            ),
        };
        let mut error = coded_error(message, "LAGGED");
        if let (Some(after), Some(extensions)) = (after, error.extensions.as_mut()) {
            extensions.set("after", after);
        }
        self.send_error(&id, error).await
    }

    async fn send_error(&mut self, id: &str, error: ServerError) -> Result<(), End> {
        self.send(ServerMessage::Error {
            id,
            errors: std::slice::from_ref(&error),
        })
        .await
    }

    /// Queues a message that must not be dropped, waiting for room (bounded
    /// by the queue) at most [`SEND_TIMEOUT`].
    // `&mut self` because a `&self` held across `.await` would need the
    // operation streams to be `Sync`.
    async fn send(&mut self, message: ServerMessage<'_>) -> Result<(), End> {
        let text = message.encode(self.protocol);
        match tokio::time::timeout(SEND_TIMEOUT, self.queue.send(Message::Text(text.into()))).await
        {
            Ok(Ok(())) => Ok(()),
            // The writer is gone or stuck: nobody can be told anything.
            Ok(Err(_)) | Err(_) => Err(None),
        }
    }

    /// A keepalive is only worth sending when the queue is not full: a full
    /// queue means the socket is anything but idle.
    fn send_keepalive(&self) {
        let text = ServerMessage::KeepAlive.encode(self.protocol);
        let _ = self.queue.try_send(Message::Text(text.into()));
    }
}

fn keepalive(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    // After a stall, one keepalive is enough; no burst of missed ones.
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

fn read_error(error: &axum::Error) -> End {
    // tungstenite reports an oversized message as a capacity error; say so
    // with the close code meant for it. Other read errors mean the socket is
    // broken and nobody would receive a close frame.
    if error.to_string().starts_with("Space limit exceeded") {
        return close_with(close::TOO_BIG, "Message too big");
    }
    tracing::debug!(%error, "websocket read failed");
    None
}

fn coded_error(message: impl Into<String>, code: &str) -> ServerError {
    let mut error = ServerError::new(message, None);
    let mut extensions = ErrorExtensionValues::default();
    extensions.set("code", code);
    error.extensions = Some(extensions);
    error
}

/// Whether `request` runs a subscription: the operation it names, or its
/// only one, is one. Read from the text without parsing it (the query
/// limits refuse a flood before anything parses it).
fn is_subscription(request: &async_graphql::Request) -> bool {
    use async_graphql::parser::types::OperationType;
    crate::api::limits::operation_type(&request.query, request.operation_name.as_deref())
        == Some(OperationType::Subscription)
}

#[cfg(test)]
mod tests {
    use async_graphql::{Context, EmptyMutation, EmptySubscription, Object, Schema};
    use futures_util::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio_tungstenite::tungstenite::{
        Message as WsMessage, client::IntoClientRequest, http::HeaderValue,
    };

    use super::*;

    struct Query;

    #[Object]
    impl Query {
        /// What the client sent in `connection_init`.
        async fn init(&self, ctx: &Context<'_>) -> async_graphql::Json<Value> {
            let payload = ctx.data_opt::<ConnectionInitPayload>().cloned();
            async_graphql::Json(Value::Object(payload.unwrap_or_default().0))
        }
    }

    /// Who a connection is, from its `connection_init` payload's `who`.
    struct Who(String);

    /// A source of events that counts how many streams read it and how many
    /// results they made.
    struct Ticks {
        ticks: tokio::sync::broadcast::Sender<u32>,
        started: mpsc::UnboundedSender<()>,
        resolved: AtomicU64,
    }

    struct Ticking;

    #[async_graphql::Subscription]
    impl Ticking {
        /// Each tick, as the session that resolves it sees it.
        async fn events(&self, ctx: &Context<'_>) -> impl futures_util::Stream<Item = String> {
            let source = ctx.data_unchecked::<Arc<Ticks>>().clone();
            let who = ctx
                .data_opt::<Who>()
                .map_or("nobody".into(), |who| who.0.clone());
            let mut ticks = source.ticks.subscribe();
            let _ = source.started.send(());
            async_stream::stream! {
                while let Ok(tick) = ticks.recv().await {
                    source.resolved.fetch_add(1, Ordering::Relaxed);
                    yield format!("{who} {tick}");
                }
            }
        }
    }

    /// Admits `who`; with a `key`, shares as `key`, resolving as "shared <key>".
    struct Keyed;

    impl Gate for Keyed {
        fn admit(
            &self,
            _authorization: Option<String>,
            payload: &serde_json::Map<String, serde_json::Value>,
        ) -> futures_util::future::BoxFuture<'static, Result<Admitted, String>> {
            let text = |field: &str| {
                payload
                    .get(field)
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            let (who, key) = (text("who").unwrap_or_default(), text("key"));
            Box::pin(async move {
                let mut data = Data::default();
                data.insert(Who(who));
                Ok(Admitted {
                    data,
                    ends: CancellationToken::new(),
                    hold: Box::new(()),
                    sharing: key.map(|key| {
                        let mut data = Data::default();
                        data.insert(Who(format!("shared {key}")));
                        Sharing { key, data }
                    }),
                })
            })
        }
    }

    type Socket = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    async fn connect(addr: std::net::SocketAddr, protocol: &'static str) -> Socket {
        let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(protocol));
        tokio_tungstenite::connect_async(request).await.unwrap().0
    }

    async fn send(socket: &mut Socket, message: Value) {
        socket
            .send(WsMessage::text(message.to_string()))
            .await
            .unwrap();
    }

    /// The next message that is not a keepalive.
    async fn receive(socket: &mut Socket) -> Value {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .expect("a message in time")
                .expect("open")
                .expect("a frame");
            if let WsMessage::Text(text) = frame {
                let message: Value = serde_json::from_str(&text).unwrap();
                if !["ka", "ping", "connection_ack"].contains(&message["type"].as_str().unwrap()) {
                    return message;
                }
            }
        }
    }

    #[tokio::test]
    async fn subscribers_with_the_same_key_share_one_resolution_and_nobody_else_does() {
        let (ticks, _) = tokio::sync::broadcast::channel(16);
        let (started, mut starts) = mpsc::unbounded_channel();
        let source = Arc::new(Ticks {
            ticks,
            started,
            resolved: AtomicU64::new(0),
        });
        let config = crate::config::Config::default();
        let schema = Schema::build(Query, EmptyMutation, Ticking)
            .data(source.clone())
            .data(crate::api::limits::QueryLimits::new(&config.graphql))
            .finish();
        let cancel = CancellationToken::new();
        let router = axum::Router::new().route(
            "/ws",
            route(schema, config.websocket, cancel.clone(), Arc::new(Keyed)),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });

        // (protocol, connection_init payload, operation id)
        let clients = [
            ("graphql-transport-ws", json!({"key": "a", "who": "x"}), "1"),
            ("graphql-transport-ws", json!({"key": "a", "who": "y"}), "2"),
            ("graphql-transport-ws", json!({"key": "b", "who": "z"}), "3"),
            ("graphql-ws", json!({"key": "a", "who": "w"}), "4"),
            ("graphql-transport-ws", json!({"who": "v"}), "5"),
        ];
        let mut sockets = Vec::new();
        for (protocol, payload, id) in &clients {
            let mut socket = connect(addr, protocol).await;
            let subscribe = match *protocol {
                "graphql-ws" => "start",
                _ => "subscribe",
            };
            send(
                &mut socket,
                json!({"type": "connection_init", "payload": payload}),
            )
            .await;
            send(
                &mut socket,
                json!({"type": subscribe, "id": id, "payload": {"query": "subscription { events }"}}),
            )
            .await;
            // Answered after the subscription is handled: it has joined.
            send(
                &mut socket,
                json!({"type": subscribe, "id": "probe", "payload": {"query": "{ __typename }"}}),
            )
            .await;
            assert_eq!(receive(&mut socket).await["id"], "probe");
            assert_eq!(receive(&mut socket).await["type"], "complete");
            sockets.push(socket);
        }
        // Three streams: keys a and b, and the one without a key.
        for _ in 0..3 {
            starts.recv().await.expect("a stream started");
        }
        for tick in 1..=2 {
            source.ticks.send(tick).unwrap();
        }
        let expected = [
            ("next", "1", "shared a"),
            ("next", "2", "shared a"),
            ("next", "3", "shared b"),
            ("data", "4", "shared a"),
            ("next", "5", "v"),
        ];
        for (socket, (kind, id, who)) in sockets.iter_mut().zip(expected) {
            for tick in 1..=2 {
                assert_eq!(
                    receive(socket).await,
                    json!({"type": kind, "id": id, "payload": {"data": {"events": format!("{who} {tick}")}}})
                );
            }
        }
        // Once per stream and tick, not once per subscriber.
        assert_eq!(source.resolved.load(Ordering::Relaxed), 3 * 2);
        assert!(starts.try_recv().is_err(), "no more streams than three");
        cancel.cancel();
    }

    #[tokio::test]
    async fn the_connection_init_payload_reaches_resolvers() {
        let schema = Schema::new(Query, EmptyMutation, EmptySubscription);
        let cancel = CancellationToken::new();
        let router = axum::Router::new().route(
            "/ws",
            route(
                schema,
                crate::config::Config::default().websocket,
                cancel.clone(),
                Arc::new(Open),
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });

        for protocol in Protocol::NAMES {
            let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(protocol));
            let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
            let kind = if protocol == "graphql-ws" {
                "start"
            } else {
                "subscribe"
            };
            for message in [
                json!({"type": "connection_init", "payload": {"token": "secret"}}),
                json!({"type": kind, "id": "1", "payload": {"query": "{ init }"}}),
            ] {
                socket
                    .send(WsMessage::text(message.to_string()))
                    .await
                    .unwrap();
            }
            let mut seen = Vec::new();
            while seen.len() < 3 {
                let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
                    .await
                    .expect("a message in time")
                    .expect("open")
                    .expect("a frame");
                if let WsMessage::Text(text) = frame {
                    let message: Value = serde_json::from_str(&text).unwrap();
                    if message["type"] != "ka" {
                        seen.push(message);
                    }
                }
            }
            assert_eq!(seen[0]["type"], "connection_ack", "{protocol}");
            assert_eq!(
                seen[1]["payload"]["data"]["init"],
                json!({"token": "secret"}),
                "{protocol}"
            );
            assert_eq!(
                seen[2],
                json!({"type": "complete", "id": "1"}),
                "{protocol}"
            );
        }
        cancel.cancel();
    }
}
