//! The words of the two websocket subprotocols, as one vocabulary.
//!
//! `graphql-transport-ws` (the `graphql-ws` npm package's PROTOCOL.md) and the
//! legacy `graphql-ws` (Apollo's subscriptions-transport-ws) say the same
//! things with different names: `subscribe`/`start`, `complete`/`stop`,
//! `next`/`data`, `ping`/`ka`. This module turns client text into a
//! [`ClientMessage`] and a [`ServerMessage`] into text for either protocol;
//! what to *do* with them is decided in the parent module. It validates
//! messages the way the reference server does (`validateMessage`), so an
//! invalid message is rejected before any state changes, and its reasons are
//! short because they end up in close frames.

use async_graphql::{Request, ServerError, Value as GqlValue, Variables};
use serde::Serialize;
use serde_json::{Map, Value, value::RawValue};

/// A websocket subprotocol we speak, from `Sec-WebSocket-Protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `graphql-transport-ws`: the current protocol.
    TransportWs,
    /// `graphql-ws`: subscriptions-transport-ws, kept for older clients.
    LegacyWs,
}

impl Protocol {
    /// Names in order of preference when a client offers both.
    pub const NAMES: [&'static str; 2] = ["graphql-transport-ws", "graphql-ws"];

    pub fn from_name(name: &str) -> Option<Protocol> {
        match name {
            "graphql-transport-ws" => Some(Protocol::TransportWs),
            "graphql-ws" => Some(Protocol::LegacyWs),
            _ => None,
        }
    }
}

/// What a client asked for.
#[derive(Debug)]
pub enum ClientMessage {
    /// `connection_init`; the payload (absent or `null` is `{}`).
    ConnectionInit(Map<String, Value>),
    /// `subscribe` (transport-ws) or `start` (legacy).
    Subscribe { id: String, request: Box<Request> },
    /// `complete` (transport-ws) or `stop` (legacy).
    Complete { id: String },
    /// `ping`, whose payload the `pong` echoes (transport-ws).
    Ping(Option<Map<String, Value>>),
    /// `pong`, an answer or a heartbeat; nothing to do (transport-ws).
    Pong,
    /// `connection_terminate` (legacy).
    Terminate,
}

/// Why a message is invalid, short enough for a close frame's reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid(pub String);

fn invalid(reason: impl Into<String>) -> Invalid {
    Invalid(reason.into())
}

/// Parses one text (or binary) frame.
pub fn parse(protocol: Protocol, bytes: &[u8]) -> Result<ClientMessage, Invalid> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|_| invalid("Invalid message: not JSON"))?;
    let Value::Object(mut message) = value else {
        return Err(invalid("Invalid message: not a JSON object"));
    };
    let kind = match message.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        Some(_) => return Err(invalid("Invalid message: \"type\" is not a string")),
        None => return Err(invalid("Invalid message: no \"type\"")),
    };
    match (protocol, kind.as_str()) {
        (_, "connection_init") => Ok(ClientMessage::ConnectionInit(
            optional_object(&mut message, "payload", &kind)?.unwrap_or_default(),
        )),
        (Protocol::TransportWs, "ping") => Ok(ClientMessage::Ping(optional_object(
            &mut message,
            "payload",
            &kind,
        )?)),
        (Protocol::TransportWs, "pong") => {
            optional_object(&mut message, "payload", &kind)?;
            Ok(ClientMessage::Pong)
        }
        (Protocol::TransportWs, "subscribe") | (Protocol::LegacyWs, "start") => {
            let id = operation_id(&message, &kind)?;
            let Some(Value::Object(payload)) = message.remove("payload") else {
                return Err(invalid(format!("\"{kind}\" needs an object \"payload\"")));
            };
            Ok(ClientMessage::Subscribe {
                id,
                request: Box::new(request(payload, &kind)?),
            })
        }
        (Protocol::TransportWs, "complete") | (Protocol::LegacyWs, "stop") => {
            Ok(ClientMessage::Complete {
                id: operation_id(&message, &kind)?,
            })
        }
        (Protocol::LegacyWs, "connection_terminate") => Ok(ClientMessage::Terminate),
        _ => Err(invalid(format!(
            "Invalid message type \"{}\"",
            truncate(&kind, 40)
        ))),
    }
}

/// A field that must be an object, `null` or absent.
fn optional_object(
    message: &mut Map<String, Value>,
    field: &str,
    kind: &str,
) -> Result<Option<Map<String, Value>>, Invalid> {
    match message.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(object)) => Ok(Some(object)),
        Some(_) => Err(invalid(format!(
            "\"{kind}\" needs \"{field}\" to be an object or null"
        ))),
    }
}

fn operation_id(message: &Map<String, Value>, kind: &str) -> Result<String, Invalid> {
    match message.get("id") {
        Some(Value::String(id)) if !id.is_empty() => Ok(id.clone()),
        _ => Err(invalid(format!(
            "\"{kind}\" needs a non-empty string \"id\""
        ))),
    }
}

/// The GraphQL request in a `subscribe`/`start` payload.
fn request(mut payload: Map<String, Value>, kind: &str) -> Result<Request, Invalid> {
    let Some(Value::String(query)) = payload.remove("query") else {
        return Err(invalid(format!(
            "\"{kind}\" needs a string \"payload.query\""
        )));
    };
    let mut request = Request::new(query);
    match payload.remove("operationName") {
        None | Some(Value::Null) => {}
        // An empty name cannot name any operation; clients send it for "none".
        Some(Value::String(name)) if name.is_empty() => {}
        Some(Value::String(name)) => request = request.operation_name(name),
        Some(_) => {
            return Err(invalid(format!(
                "\"{kind}\" needs \"payload.operationName\" to be a string or null"
            )));
        }
    }
    let mut payload_object = |field: &str| {
        optional_object(&mut payload, field, kind).map_err(|_| {
            invalid(format!(
                "\"{kind}\" needs \"payload.{field}\" to be an object or null"
            ))
        })
    };
    if let Some(variables) = payload_object("variables")? {
        let value = GqlValue::from_json(Value::Object(variables))
            .map_err(|_| invalid(format!("\"{kind}\" has unusable \"payload.variables\"")))?;
        request = request.variables(Variables::from_value(value));
    }
    if let Some(extensions) = payload_object("extensions")? {
        for (key, value) in extensions {
            let value = GqlValue::from_json(value)
                .map_err(|_| invalid(format!("\"{kind}\" has unusable \"payload.extensions\"")))?;
            request.extensions.0.insert(key, value);
        }
    }
    Ok(request)
}

/// What the server says.
#[derive(Debug)]
pub enum ServerMessage<'a> {
    ConnectionAck,
    /// `ping` (transport-ws) or `ka` (legacy): "this socket is alive".
    KeepAlive,
    Pong(Option<&'a Map<String, Value>>),
    /// `next` (transport-ws) or `data` (legacy): one result of an operation,
    /// already encoded (once, however many subscribers it goes to).
    Next {
        id: &'a str,
        payload: &'a RawValue,
    },
    /// The operation failed and is over: no `complete` follows.
    Error {
        id: &'a str,
        errors: &'a [ServerError],
    },
    Complete {
        id: &'a str,
    },
    /// Legacy only: a message could not be understood (the socket stays open).
    ConnectionError {
        message: &'a str,
    },
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Payload<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Payload<'a> {
    Object(&'a Map<String, Value>),
    Encoded(&'a RawValue),
    Errors(&'a [ServerError]),
    Error(&'a ServerError),
    Message { message: &'a str },
}

impl ServerMessage<'_> {
    /// The message as text for `protocol`.
    pub fn encode(&self, protocol: Protocol) -> String {
        let legacy = protocol == Protocol::LegacyWs;
        let (kind, id, payload) = match *self {
            ServerMessage::ConnectionAck => ("connection_ack", None, None),
            ServerMessage::KeepAlive if legacy => ("ka", None, None),
            ServerMessage::KeepAlive => ("ping", None, None),
            ServerMessage::Pong(payload) => ("pong", None, payload.map(Payload::Object)),
            ServerMessage::Next { id, payload } => (
                if legacy { "data" } else { "next" },
                Some(id),
                Some(Payload::Encoded(payload)),
            ),
            // subscriptions-transport-ws says `payload: Error`, one object;
            // graphql-transport-ws says `GraphQLError[]`.
            ServerMessage::Error { id, errors } if legacy => {
                ("error", Some(id), errors.first().map(Payload::Error))
            }
            ServerMessage::Error { id, errors } => {
                ("error", Some(id), Some(Payload::Errors(errors)))
            }
            ServerMessage::Complete { id } => ("complete", Some(id), None),
            ServerMessage::ConnectionError { message } => {
                ("connection_error", None, Some(Payload::Message { message }))
            }
        };
        let wire = Wire { kind, id, payload };
        // Serializing these types cannot fail (string keys, finite numbers);
        // should it ever, the client gets a well-formed error rather than the
        // connection task a panic.
        serde_json::to_string(&wire).unwrap_or_else(|error| {
            tracing::error!(%error, kind, "websocket: encoding a message failed");
            let id = serde_json::to_string(id.unwrap_or_default()).unwrap_or_default();
            format!(r#"{{"type":"error","id":{id},"payload":[{{"message":"internal error"}}]}}"#)
        })
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(text: &str) -> Result<ClientMessage, Invalid> {
        parse(Protocol::TransportWs, text.as_bytes())
    }

    fn legacy(text: &str) -> Result<ClientMessage, Invalid> {
        parse(Protocol::LegacyWs, text.as_bytes())
    }

    #[test]
    fn valid_transport_messages() {
        assert!(matches!(
            transport(r#"{"type":"connection_init"}"#),
            Ok(ClientMessage::ConnectionInit(p)) if p.is_empty()
        ));
        assert!(matches!(
            transport(r#"{"type":"connection_init","payload":{"token":"t"}}"#),
            Ok(ClientMessage::ConnectionInit(p)) if p["token"] == "t"
        ));
        assert!(matches!(
            transport(r#"{"type":"ping","payload":null}"#),
            Ok(ClientMessage::Ping(None))
        ));
        assert!(matches!(
            transport(r#"{"type":"pong"}"#),
            Ok(ClientMessage::Pong)
        ));
        let Ok(ClientMessage::Subscribe { id, request }) = transport(
            r#"{"type":"subscribe","id":"1","payload":{"query":"{ a }","variables":{"x":1},"operationName":"Q","extensions":{"e":true}}}"#,
        ) else {
            panic!("a subscribe message");
        };
        assert_eq!(id, "1");
        assert_eq!(request.query, "{ a }");
        assert_eq!(request.operation_name.as_deref(), Some("Q"));
        assert_eq!(request.variables.into_value().into_json().unwrap()["x"], 1);
        assert!(request.extensions.0.contains_key("e"));
        assert!(matches!(
            transport(r#"{"type":"complete","id":"1"}"#),
            Ok(ClientMessage::Complete { id }) if id == "1"
        ));
    }

    #[test]
    fn valid_legacy_messages() {
        assert!(matches!(
            legacy(r#"{"type":"start","id":"1","payload":{"query":"{ a }","variables":null}}"#),
            Ok(ClientMessage::Subscribe { .. })
        ));
        assert!(matches!(
            legacy(r#"{"type":"stop","id":"1"}"#),
            Ok(ClientMessage::Complete { .. })
        ));
        assert!(matches!(
            legacy(r#"{"type":"connection_terminate"}"#),
            Ok(ClientMessage::Terminate)
        ));
    }

    #[test]
    fn invalid_messages_have_short_reasons() {
        let long_type = format!(r#"{{"type":"{}"}}"#, "x".repeat(10_000));
        let cases = [
            "not json",
            "[]",
            "{}",
            r#"{"type":1}"#,
            r#"{"type":"next","id":"1","payload":{}}"#,
            r#"{"type":"connection_ack"}"#,
            r#"{"type":"start","id":"1","payload":{"query":"{ a }"}}"#,
            r#"{"type":"subscribe","payload":{"query":"{ a }"}}"#,
            r#"{"type":"subscribe","id":"","payload":{"query":"{ a }"}}"#,
            r#"{"type":"subscribe","id":1,"payload":{"query":"{ a }"}}"#,
            r#"{"type":"subscribe","id":"1"}"#,
            r#"{"type":"subscribe","id":"1","payload":{"query":1}}"#,
            r#"{"type":"subscribe","id":"1","payload":{"query":"{ a }","variables":[]}}"#,
            r#"{"type":"subscribe","id":"1","payload":{"query":"{ a }","operationName":1}}"#,
            r#"{"type":"subscribe","id":"1","payload":{"query":"{ a }","extensions":"x"}}"#,
            r#"{"type":"complete"}"#,
            r#"{"type":"connection_init","payload":"x"}"#,
            r#"{"type":"ping","payload":[1]}"#,
            long_type.as_str(),
        ];
        for case in cases {
            let Err(Invalid(reason)) = transport(case) else {
                panic!("{case} should be invalid");
            };
            assert!(reason.len() <= 123, "{reason}");
        }
        assert!(legacy(r#"{"type":"subscribe","id":"1","payload":{"query":"{ a }"}}"#).is_err());
        assert!(legacy(r#"{"type":"ping"}"#).is_err());
    }

    #[test]
    fn server_messages_in_both_protocols() {
        let response =
            async_graphql::Response::new(GqlValue::from_json(serde_json::json!({"a": 1})).unwrap());
        let payload = serde_json::value::to_raw_value(&response).unwrap();
        let errors = [
            ServerError::new("bad", None),
            ServerError::new("worse", None),
        ];
        let cases = [
            (
                ServerMessage::ConnectionAck,
                r#"{"type":"connection_ack"}"#,
                r#"{"type":"connection_ack"}"#,
            ),
            (
                ServerMessage::KeepAlive,
                r#"{"type":"ping"}"#,
                r#"{"type":"ka"}"#,
            ),
            (
                ServerMessage::Next {
                    id: "7",
                    payload: &payload,
                },
                r#"{"type":"next","id":"7","payload":{"data":{"a":1}}}"#,
                r#"{"type":"data","id":"7","payload":{"data":{"a":1}}}"#,
            ),
            (
                ServerMessage::Error {
                    id: "7",
                    errors: &errors,
                },
                r#"{"type":"error","id":"7","payload":[{"message":"bad"},{"message":"worse"}]}"#,
                r#"{"type":"error","id":"7","payload":{"message":"bad"}}"#,
            ),
            (
                ServerMessage::Complete { id: "7" },
                r#"{"type":"complete","id":"7"}"#,
                r#"{"type":"complete","id":"7"}"#,
            ),
        ];
        for (message, transport_text, legacy_text) in cases {
            assert_eq!(message.encode(Protocol::TransportWs), transport_text);
            assert_eq!(message.encode(Protocol::LegacyWs), legacy_text);
        }
        let payload: Map<String, Value> = serde_json::from_str(r#"{"n":1}"#).unwrap();
        assert_eq!(
            ServerMessage::Pong(Some(&payload)).encode(Protocol::TransportWs),
            r#"{"type":"pong","payload":{"n":1}}"#
        );
    }

    #[test]
    fn truncate_keeps_characters_whole() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("aé", 3), "aé");
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;

    #[test]
    fn protocol_names_round_trip() {
        for name in Protocol::NAMES {
            assert!(Protocol::from_name(name).is_some(), "{name}");
        }
        assert_eq!(
            Protocol::from_name("graphql-transport-ws"),
            Some(Protocol::TransportWs)
        );
        assert_eq!(Protocol::from_name("graphql-ws"), Some(Protocol::LegacyWs));
        assert_eq!(Protocol::from_name("GRAPHQL-WS"), None);
        assert_eq!(Protocol::from_name(""), None);
    }

    #[test]
    fn an_empty_or_null_operation_name_names_no_operation() {
        for name in [r#""""#, "null"] {
            let text = format!(
                r#"{{"type":"subscribe","id":"a","payload":{{"query":"{{ a }}","operationName":{name},"variables":null,"extensions":null}}}}"#
            );
            let Ok(ClientMessage::Subscribe { request, .. }) =
                parse(Protocol::TransportWs, text.as_bytes())
            else {
                panic!("{text} is a valid subscribe");
            };
            assert_eq!(request.operation_name, None, "{text}");
            assert!(request.extensions.0.is_empty());
        }
    }

    #[test]
    fn ping_and_pong_payloads() {
        let Ok(ClientMessage::Ping(Some(payload))) = parse(
            Protocol::TransportWs,
            br#"{"type":"ping","payload":{"at":1}}"#,
        ) else {
            panic!("a ping with a payload");
        };
        assert_eq!(payload["at"], 1);
        assert!(matches!(
            parse(
                Protocol::TransportWs,
                br#"{"type":"pong","payload":{"x":1}}"#
            ),
            Ok(ClientMessage::Pong)
        ));
        assert!(parse(Protocol::TransportWs, br#"{"type":"pong","payload":1}"#).is_err());
        assert_eq!(
            ServerMessage::Pong(None).encode(Protocol::TransportWs),
            r#"{"type":"pong"}"#
        );
    }

    #[test]
    fn invalid_frames_say_why() {
        let reason = |protocol, bytes: &[u8]| match parse(protocol, bytes) {
            Err(Invalid(reason)) => reason,
            Ok(message) => panic!("{message:?} should be invalid"),
        };
        assert_eq!(
            reason(Protocol::LegacyWs, b"\xff\xfe"),
            "Invalid message: not JSON"
        );
        assert_eq!(
            reason(Protocol::TransportWs, b"\"text\""),
            "Invalid message: not a JSON object"
        );
        assert_eq!(
            reason(Protocol::TransportWs, br#"{"id":"1"}"#),
            "Invalid message: no \"type\""
        );
        assert_eq!(
            reason(
                Protocol::LegacyWs,
                br#"{"type":"connection_terminate_now"}"#
            ),
            "Invalid message type \"connection_terminate_now\""
        );
        assert_eq!(
            reason(Protocol::TransportWs, br#"{"type":"connection_terminate"}"#),
            "Invalid message type \"connection_terminate\""
        );
        assert_eq!(
            reason(
                Protocol::LegacyWs,
                br#"{"type":"start","id":"1","payload":[]}"#
            ),
            "\"start\" needs an object \"payload\""
        );
        assert_eq!(
            reason(Protocol::LegacyWs, br#"{"type":"stop"}"#),
            "\"stop\" needs a non-empty string \"id\""
        );
        assert_eq!(
            reason(
                Protocol::TransportWs,
                br#"{"type":"subscribe","id":"1","payload":{"query":"{ a }","variables":1}}"#
            ),
            "\"subscribe\" needs \"payload.variables\" to be an object or null"
        );
    }

    #[test]
    fn legacy_errors_and_connection_errors() {
        // A legacy `error` carries one error; none makes no payload.
        assert_eq!(
            ServerMessage::Error {
                id: "3",
                errors: &[]
            }
            .encode(Protocol::LegacyWs),
            r#"{"type":"error","id":"3"}"#
        );
        assert_eq!(
            ServerMessage::Error {
                id: "3",
                errors: &[]
            }
            .encode(Protocol::TransportWs),
            r#"{"type":"error","id":"3","payload":[]}"#
        );
        let text = ServerMessage::ConnectionError {
            message: "bad \"frame\"",
        }
        .encode(Protocol::LegacyWs);
        assert_eq!(
            text,
            r#"{"type":"connection_error","payload":{"message":"bad \"frame\""}}"#
        );
    }

    #[test]
    fn truncate_at_every_width() {
        let text = "añb€";
        let widths: Vec<&str> = (0..=text.len()).map(|n| truncate(text, n)).collect();
        assert_eq!(widths, ["", "a", "a", "añ", "añb", "añb", "añb", "añb€"]);
    }
}
