//! The `/graphql` endpoint for plain HTTP (GET and POST), following the
//! GraphQL-over-HTTP spec as the `graphql-http` conformance audits check it
//! (`tests/js/audit.mjs`). WebSocket subscriptions are served elsewhere.
//!
//! Why it is written by hand instead of using `async-graphql-axum`: that
//! crate answers every request it can parse with `200` and
//! `application/graphql-response+json`, whatever the `Accept` header, and
//! always with a `data` key. The spec wants `Accept` negotiation (`application/graphql-response+json`), 4xx
//! statuses for malformed requests, `405` for mutations over GET, and for
//! `application/graphql-response+json` a `400` *without a `data` key* when a
//! request fails before execution, while an execution error is still a `200`.
//!
//! Why the document is parsed here before the executor sees it: the
//! status code depends on whether the request failed *before* execution
//! (a "request error") or *during* it, and `Executor::execute` only returns
//! a `Response` whose `data` is `null` in both cases. So every request error
//! that this module can decide without the schema (JSON shape, parsing,
//! choosing the operation, its kind, required/built-in-scalar variables) is
//! decided here, and the parsed document is handed on with
//! `Request::set_parsed_query` so it is not parsed twice. What remains are
//! errors only the schema can find (validation, depth/complexity limits).
//! Those are told apart from execution errors by async-graphql's own
//! invariant: execution of a (non-empty, already parsed) selection set
//! either yields a `data` object or nulls it because a field failed, and a
//! field error always carries the `path` of that field (`set_error_path`).
//! Validation and limit errors never carry a path. So `data == null` with no
//! error carrying a path means "rejected before execution".
//!
//! Codes of request errors: a document that does not parse is
//! `GRAPHQL_PARSE_FAILED`, one that does not validate
//! `GRAPHQL_VALIDATION_FAILED`, one beyond a query limit has the limit's code
//! (`QUERY_TOO_DEEP`, …; see `api::limits`), and a batch (a JSON array) is
//! `BATCH_NOT_SUPPORTED`. The limits are checked by the schema's extension,
//! which the websocket path passes too; because the document is parsed here
//! first, and parsing a large document is the expensive part, its text is
//! scanned against the limits (`limits::scan`) before that. Limit and
//! validation errors carry no path, so the rule above tells them apart.
//!
//! Why some variable coercion is done here: async-graphql's validation only
//! checks that a given value has the right *kind* where it is used; the real
//! coercion (say, an `Int` beyond 32 bits) happens when the argument is read
//! during execution, and a required variable that is absent is noticed only
//! then too. Both come out as field errors with a path, i.e. `200` with
//! `data`, while the spec calls them request errors. So the non-null rule and
//! the built-in scalars are checked up front, with async-graphql's own
//! acceptance rules; values of schema-defined types are left to it.

use std::collections::BTreeMap;

use async_graphql::parser::types::{
    BaseType, ExecutableDocument, OperationDefinition, OperationType, Type,
};
use async_graphql::{Executor, Positioned, ServerError, Value as GqlValue, Variables};
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde::Serialize;

use super::limits::{self, Limited};
use crate::error::RequestError;

/// Largest request body accepted, in bytes; larger bodies get `413`.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Serves one GraphQL-over-HTTP request (GET or POST) with `executor`.
///
/// Mount it for both GET and POST, e.g.
/// `get(h).post(h)` where `h` calls `graphql_http(&schema, request)`.
pub async fn graphql_http<E: Executor + Limited>(executor: &E, request: Request) -> Response {
    graphql_http_with(executor, request, |request| request).await
}

/// Like [`graphql_http`], with a hook that may amend the GraphQL request
/// (attach per-request data, disable introspection, ...) before it is
/// parsed, checked and executed. The hook runs only for requests that are
/// well-formed at the HTTP level.
pub async fn graphql_http_with<E, F>(executor: &E, request: Request, prepare: F) -> Response
where
    E: Executor + Limited,
    F: FnOnce(async_graphql::Request) -> async_graphql::Request,
{
    let mut response = handle(executor, request, prepare).await;
    // The representation depends on the Accept header.
    response
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static("accept"));
    response
}

/// The body of `request` read as [`graphql_http`] reads it (at most
/// [`MAX_BODY_BYTES`]), with the request put back together around it; or
/// the refusal `graphql_http` would answer with (`413`, `400`).
pub async fn buffered(request: Request) -> Result<(Request, Bytes), Response> {
    let (parts, body) = request.into_parts();
    match read_body(&parts.headers, body).await {
        Ok(bytes) => Ok((Request::from_parts(parts, Body::from(bytes.clone())), bytes)),
        Err(rejection) => {
            let media = negotiate(&parts.headers).unwrap_or(MediaType::Json);
            let mut response = rejection.into_response(media);
            response
                .headers_mut()
                .append(header::VARY, HeaderValue::from_static("accept"));
            Err(response)
        }
    }
}

/// An answer of `error` alone with `data: null` (status 200), in the media
/// type the request's `Accept` asks for: a request this node answers for
/// another that it could not run (`cluster::route`).
pub fn error_response(headers: &HeaderMap, error: crate::error::ApiError) -> Response {
    use async_graphql::ErrorExtensions;
    let media = negotiate(headers).unwrap_or(MediaType::Json);
    let errors = [error.extend().into_server_error(Default::default())];
    let mut response = json_response(
        StatusCode::OK,
        media,
        &Payload {
            data: Some(&GqlValue::Null),
            errors: &errors,
            extensions: None,
        },
    );
    response
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static("accept"));
    response
}

/// The two media types this endpoint can answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MediaType {
    /// `application/graphql-response+json`: status codes tell request errors.
    GraphqlResponseJson,
    /// `application/json`: legacy, GraphQL errors travel with status 200.
    Json,
}

impl MediaType {
    fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            MediaType::GraphqlResponseJson => "application/graphql-response+json; charset=utf-8",
            MediaType::Json => "application/json; charset=utf-8",
        })
    }
}

/// The GraphQL-over-HTTP request parameters, already checked for type.
#[derive(Debug)]
struct Params {
    query: String,
    operation_name: Option<String>,
    variables: Option<serde_json::Map<String, serde_json::Value>>,
    extensions: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A request refused at the HTTP level, before it reaches GraphQL.
#[derive(Debug)]
struct Rejection {
    status: StatusCode,
    message: String,
    allow: Option<&'static str>,
    code: Option<RequestError>,
}

impl Rejection {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Rejection {
            status,
            message: message.into(),
            allow: None,
            code: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn into_response(self, media: MediaType) -> Response {
        tracing::debug!(status = %self.status, message = %self.message, "GraphQL HTTP request rejected");
        let error = ServerError::new(self.message, None);
        let errors = [match self.code {
            Some(code) => code.tag(error),
            None => error,
        }];
        let mut response = json_response(
            self.status,
            media,
            &Payload {
                data: None,
                errors: &errors,
                extensions: None,
            },
        );
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

async fn handle<E, F>(executor: &E, request: Request, prepare: F) -> Response
where
    E: Executor + Limited,
    F: FnOnce(async_graphql::Request) -> async_graphql::Request,
{
    let (parts, body) = request.into_parts();

    // axum routes HEAD to GET handlers (and drops the body): same semantics.
    let is_get = match parts.method {
        Method::GET | Method::HEAD => true,
        Method::POST => false,
        _ => {
            let mut rejection = Rejection::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "GraphQL over HTTP accepts only GET and POST",
            );
            rejection.allow = Some("GET, POST");
            return rejection.into_response(MediaType::Json);
        }
    };

    let Some(media) = negotiate(&parts.headers) else {
        return Rejection::new(
            StatusCode::NOT_ACCEPTABLE,
            "cannot answer with any of the accepted media types; accept \
             application/graphql-response+json or application/json (utf-8)",
        )
        .into_response(MediaType::Json);
    };

    let params = if is_get {
        params_from_query_string(&parts.uri)
    } else {
        match check_content_type(&parts.headers) {
            Ok(()) => match read_body(&parts.headers, body).await {
                Ok(bytes) => params_from_json_body(&bytes),
                Err(rejection) => Err(rejection),
            },
            Err(rejection) => Err(rejection),
        }
    };
    let params = match params {
        Ok(params) => params,
        Err(rejection) => return rejection.into_response(media),
    };

    let mut gql_request = match to_graphql_request(params) {
        Ok(gql_request) => prepare(gql_request),
        Err(rejection) => return rejection.into_response(media),
    };

    // Parse and pick the operation here: see the module doc for why. A
    // document beyond a query limit is refused before it is parsed.
    if let Some(config) = executor.query_limits()
        && let Err(error) = limits::scan(&gql_request.query, config)
    {
        return request_errors(media, vec![error]);
    }
    let document = match async_graphql::parser::parse_query(&gql_request.query) {
        Ok(document) => document,
        Err(error) => {
            return request_errors(media, vec![limits::parse_failed(ServerError::from(error))]);
        }
    };
    let (kind, variable_errors) =
        match select_operation(&document, gql_request.operation_name.as_deref()) {
            Ok(operation) => (
                operation.node.ty,
                check_variables(&operation.node, &gql_request.variables),
            ),
            Err(error) => return request_errors(media, vec![error]),
        };

    match kind {
        OperationType::Subscription => {
            return Rejection::bad_request(
                "subscriptions are not supported over HTTP GET/POST; \
                 use the GraphQL WebSocket endpoint",
            )
            .into_response(media);
        }
        OperationType::Mutation if is_get => {
            let mut rejection = Rejection::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "mutations cannot be sent with GET; use POST",
            );
            rejection.allow = Some("POST");
            return rejection.into_response(media);
        }
        OperationType::Query | OperationType::Mutation => {}
    }
    if !variable_errors.is_empty() {
        return request_errors(media, variable_errors);
    }

    gql_request.set_parsed_query(document);
    let gql_response = executor.execute(gql_request).await;
    execution_response(media, kind, gql_response)
}

// ---------------------------------------------------------------------------
// Content negotiation

/// Chooses the response media type from the `Accept` header(s), honouring
/// q-values and preferring the most specific matching range. `None` means
/// nothing acceptable (406). No or an empty `Accept` means application/json.
fn negotiate(headers: &HeaderMap) -> Option<MediaType> {
    // Per candidate: (q, specificity) of the most specific range matching it.
    let mut graphql_response: Option<(f32, u8)> = None;
    let mut json: Option<(f32, u8)> = None;
    let mut any_range = false;

    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            any_range = true;
            let Ok(mime) = range.parse::<mime::Mime>() else {
                continue;
            };
            let q = match mime.get_param("q") {
                None => 1.0,
                Some(q) => match q.as_str().parse::<f32>() {
                    Ok(q) if (0.0..=1.0).contains(&q) => q,
                    _ => continue,
                },
            };
            if mime
                .get_param(mime::CHARSET)
                .is_some_and(|c| !is_utf8(c.as_str()))
            {
                continue;
            }
            let essence = mime.essence_str();
            let consider = |slot: &mut Option<(f32, u8)>, exact: &str| {
                let specificity = if essence == exact {
                    2
                } else if essence == "application/*" {
                    1
                } else if essence == "*/*" {
                    0
                } else {
                    return;
                };
                match slot {
                    Some((best_q, best)) if *best == specificity => *best_q = best_q.max(q),
                    Some((_, best)) if *best > specificity => {}
                    _ => *slot = Some((q, specificity)),
                }
            };
            consider(&mut graphql_response, "application/graphql-response+json");
            consider(&mut json, "application/json");
        }
    }

    if !any_range {
        return Some(MediaType::Json);
    }
    let graphql_response = graphql_response.filter(|(q, _)| *q > 0.0);
    let json = json.filter(|(q, _)| *q > 0.0);
    match (graphql_response, json) {
        (None, None) => None,
        (Some(_), None) => Some(MediaType::GraphqlResponseJson),
        (None, Some(_)) => Some(MediaType::Json),
        (Some((gq, gs)), Some((jq, js))) => Some(if gq > jq {
            MediaType::GraphqlResponseJson
        } else if jq > gq {
            MediaType::Json
        } else if gs > js {
            MediaType::GraphqlResponseJson
        } else if js > gs {
            MediaType::Json
        } else if gs == 2 {
            // Both named explicitly with the same weight: the spec's preferred one.
            MediaType::GraphqlResponseJson
        } else {
            // Both only through a wildcard: the spec says application/json.
            MediaType::Json
        }),
    }
}

fn is_utf8(charset: &str) -> bool {
    charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")
}

// ---------------------------------------------------------------------------
// Reading the request parameters

fn check_content_type(headers: &HeaderMap) -> Result<(), Rejection> {
    let unsupported = |what: &str| {
        Rejection::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("{what}; POST bodies must be application/json (utf-8)"),
        )
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported("missing Content-Type"));
    };
    let mime = value
        .to_str()
        .ok()
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .ok_or_else(|| unsupported("unreadable Content-Type"))?;
    if mime.essence_str() != "application/json" {
        return Err(unsupported(&format!(
            "unsupported Content-Type {}",
            mime.essence_str()
        )));
    }
    if let Some(charset) = mime.get_param(mime::CHARSET)
        && !is_utf8(charset.as_str())
    {
        return Err(unsupported(&format!("unsupported charset {charset}")));
    }
    Ok(())
}

async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, Rejection> {
    let too_large = || {
        Rejection::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut buffer = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            Rejection::bad_request(format!("failed to read the request body: {error}"))
        })?;
        if buffer.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

fn params_from_json_body(body: &[u8]) -> Result<Params, Rejection> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::bad_request(
            "request body is empty; expected a JSON object with a \"query\" string",
        ));
    }
    // A batch is refused before its (up to 1 MiB of) JSON is parsed.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        let mut rejection = Rejection::bad_request(
            "batched requests (a JSON array) are not supported; send one JSON object per request",
        );
        rejection.code = Some(RequestError::BatchNotSupported);
        return Err(rejection);
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|error| {
        Rejection::bad_request(format!("request body is not valid JSON: {error}"))
    })?;
    let serde_json::Value::Object(mut object) = value else {
        return Err(Rejection::bad_request("request body must be a JSON object"));
    };
    let query = match object.remove("query") {
        None | Some(serde_json::Value::Null) => return Err(missing_query()),
        Some(serde_json::Value::String(query)) => query,
        Some(_) => {
            return Err(Rejection::bad_request(
                "the \"query\" parameter must be a string",
            ));
        }
    };
    let operation_name = match object.remove("operationName") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(name)) => Some(name),
        Some(_) => {
            return Err(Rejection::bad_request(
                "the \"operationName\" parameter must be a string or null",
            ));
        }
    };
    Ok(Params {
        query,
        operation_name,
        variables: json_map_param("variables", object.remove("variables"))?,
        extensions: json_map_param("extensions", object.remove("extensions"))?,
    })
}

fn params_from_query_string(uri: &http::Uri) -> Result<Params, Rejection> {
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
            .map_err(|error| Rejection::bad_request(format!("unreadable query string: {error}")))?;

    let mut query = None;
    let mut operation_name = None;
    let mut variables = None;
    let mut extensions = None;
    for (key, value) in pairs {
        let slot = match key.as_str() {
            "query" => &mut query,
            "operationName" => &mut operation_name,
            "variables" => &mut variables,
            "extensions" => &mut extensions,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(Rejection::bad_request(format!(
                "the \"{key}\" parameter is given more than once"
            )));
        }
    }

    let from_json_text = |name: &str, text: Option<String>| match text {
        None => Ok(None),
        Some(text) if text.trim().is_empty() => Ok(None),
        Some(text) => {
            let value = serde_json::from_str(&text).map_err(|error| {
                Rejection::bad_request(format!(
                    "the \"{name}\" parameter is not valid JSON: {error}"
                ))
            })?;
            json_map_param(name, Some(value))
        }
    };
    Ok(Params {
        query: query.ok_or_else(missing_query)?,
        operation_name,
        variables: from_json_text("variables", variables)?,
        extensions: from_json_text("extensions", extensions)?,
    })
}

fn missing_query() -> Rejection {
    Rejection::bad_request("the \"query\" parameter is missing")
}

/// `variables` and `extensions`: absent or null, else a JSON object.
fn json_map_param(
    name: &str,
    value: Option<serde_json::Value>,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, Rejection> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(Rejection::bad_request(format!(
            "the \"{name}\" parameter must be a JSON object or null"
        ))),
    }
}

fn to_graphql_request(params: Params) -> Result<async_graphql::Request, Rejection> {
    let mut request = async_graphql::Request::new(params.query);
    // An empty name cannot name any operation; clients send it for "none".
    if let Some(name) = params.operation_name.filter(|name| !name.is_empty()) {
        request = request.operation_name(name);
    }
    if let Some(variables) = params.variables {
        let value = GqlValue::from_json(serde_json::Value::Object(variables)).map_err(|error| {
            Rejection::bad_request(format!("the \"variables\" parameter is unusable: {error}"))
        })?;
        request = request.variables(Variables::from_value(value));
    }
    if let Some(extensions) = params.extensions {
        for (key, value) in extensions {
            let value = GqlValue::from_json(value).map_err(|error| {
                Rejection::bad_request(format!("the \"extensions\" parameter is unusable: {error}"))
            })?;
            request.extensions.0.insert(key, value);
        }
    }
    Ok(request)
}

// ---------------------------------------------------------------------------
// GraphQL-level checks done before execution

/// GraphQL's GetOperation: by name, or the only operation of the document.
fn select_operation<'a>(
    document: &'a ExecutableDocument,
    operation_name: Option<&str>,
) -> Result<&'a Positioned<OperationDefinition>, ServerError> {
    use async_graphql::parser::types::DocumentOperations;
    match (&document.operations, operation_name) {
        (DocumentOperations::Single(operation), None) => Ok(operation),
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => operations
            .values()
            .next()
            .ok_or_else(|| ServerError::new("the document contains no operation", None)),
        (DocumentOperations::Multiple(_), None) => Err(ServerError::new(
            "the document contains several operations; \"operationName\" is required",
            None,
        )),
        (DocumentOperations::Single(_), Some(name)) => Err(ServerError::new(
            format!("unknown operation named \"{name}\""),
            None,
        )),
        (DocumentOperations::Multiple(operations), Some(name)) => operations
            .iter()
            .find(|(candidate, _)| candidate.as_str() == name)
            .map(|(_, operation)| operation)
            .ok_or_else(|| ServerError::new(format!("unknown operation named \"{name}\""), None)),
    }
}

/// The part of GraphQL's CoerceVariableValues that needs no schema: the
/// non-null rule and the built-in scalars (see the module doc).
fn check_variables(operation: &OperationDefinition, variables: &Variables) -> Vec<ServerError> {
    let mut errors = Vec::new();
    for definition in &operation.variable_definitions {
        let name = &definition.node.name.node;
        let ty = &definition.node.var_type.node;
        let message = match variables.get(name) {
            None if !ty.nullable && definition.node.default_value.is_none() => {
                format!("variable \"${name}\" of required type \"{ty}\" was not provided")
            }
            None => continue,
            Some(GqlValue::Null) if !ty.nullable => {
                format!("variable \"${name}\" of non-null type \"{ty}\" must not be null")
            }
            Some(value) => match check_value(ty, value) {
                Ok(()) => continue,
                Err(reason) => format!("variable \"${name}\" got an invalid value: {reason}"),
            },
        };
        errors.push(ServerError::new(message, Some(definition.pos)));
    }
    errors
}

fn check_value(ty: &Type, value: &GqlValue) -> Result<(), String> {
    if let GqlValue::Null = value {
        return if ty.nullable {
            Ok(())
        } else {
            Err(format!("null where \"{ty}\" is required"))
        };
    }
    match &ty.base {
        BaseType::List(item_type) => match value {
            GqlValue::List(items) => items.iter().enumerate().try_for_each(|(index, item)| {
                check_value(item_type, item).map_err(|reason| format!("at index {index}, {reason}"))
            }),
            // Input coercion turns a single value into a one-item list.
            single => check_value(item_type, single),
        },
        BaseType::Named(name) => {
            // The acceptance rules of async-graphql's own built-in scalars.
            let fits = match name.as_str() {
                "Int" => matches!(value, GqlValue::Number(n)
                    if n.as_i64().is_some_and(|n| i32::try_from(n).is_ok())),
                "Float" => matches!(value, GqlValue::Number(_)),
                "String" => matches!(value, GqlValue::String(_)),
                "Boolean" => matches!(value, GqlValue::Boolean(_)),
                "ID" => {
                    matches!(value, GqlValue::String(_))
                        || matches!(value, GqlValue::Number(n) if n.is_i64())
                }
                // Schema-defined types are left to async-graphql.
                _ => true,
            };
            if fits {
                Ok(())
            } else {
                Err(format!("expected a value of type \"{name}\""))
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Responses

/// A GraphQL response body; `data` is left out entirely for request errors.
#[derive(Serialize)]
struct Payload<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a GqlValue>,
    #[serde(skip_serializing_if = "<[ServerError]>::is_empty")]
    errors: &'a [ServerError],
    #[serde(skip_serializing_if = "Option::is_none")]
    extensions: Option<&'a BTreeMap<String, GqlValue>>,
}

/// Errors raised before execution: no `data`; 400 unless the client only
/// understands application/json, where GraphQL errors travel with 200.
fn request_errors(media: MediaType, errors: Vec<ServerError>) -> Response {
    request_errors_with(media, &errors, None)
}

fn request_errors_with(
    media: MediaType,
    errors: &[ServerError],
    extensions: Option<&BTreeMap<String, GqlValue>>,
) -> Response {
    let status = match media {
        MediaType::GraphqlResponseJson => StatusCode::BAD_REQUEST,
        MediaType::Json => StatusCode::OK,
    };
    json_response(
        status,
        media,
        &Payload {
            data: None,
            errors,
            extensions,
        },
    )
}

fn execution_response(
    media: MediaType,
    kind: OperationType,
    response: async_graphql::Response,
) -> Response {
    let extensions = Some(&response.extensions).filter(|e| !e.is_empty());
    let rejected_before_execution = matches!(response.data, GqlValue::Null)
        && !response.errors.is_empty()
        && response.errors.iter().all(|error| error.path.is_empty());

    let mut http_response = if rejected_before_execution {
        request_errors_with(media, &response.errors, extensions)
    } else {
        json_response(
            StatusCode::OK,
            media,
            &Payload {
                data: Some(&response.data),
                errors: &response.errors,
                extensions,
            },
        )
    };

    let headers = http_response.headers_mut();
    if kind == OperationType::Query
        && response.is_ok()
        && let Some(value) = response.cache_control.value()
        && let Ok(value) = HeaderValue::from_str(&value)
    {
        headers.insert(header::CACHE_CONTROL, value);
    }
    // Headers set by resolvers (ctx.insert_http_header), except framing ones.
    for (name, value) in &response.http_headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            headers.append(name, value.clone());
        }
    }
    http_response
}

fn json_response(status: StatusCode, media: MediaType, payload: &Payload<'_>) -> Response {
    match serde_json::to_vec(payload) {
        Ok(body) => (status, [(header::CONTENT_TYPE, media.header_value())], body).into_response(),
        Err(error) => {
            tracing::error!(%error, "failed to serialize a GraphQL response");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, media.header_value())],
                r#"{"errors":[{"message":"failed to serialize the GraphQL response"}]}"#,
            )
                .into_response()
        }
    }
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::{Context, Enum, Object, Schema, Subscription};
    use futures_util::Stream;

    struct Query;

    #[derive(Enum, Clone, Copy, PartialEq, Eq)]
    enum Power {
        On,
        Off,
    }

    #[Object]
    impl Query {
        async fn hello(&self) -> &str {
            "world"
        }
        async fn add(&self, a: i32, b: i32) -> i32 {
            a + b
        }
        async fn echo_id(&self, id: async_graphql::ID) -> String {
            id.0
        }
        async fn sum(&self, values: Vec<i32>) -> i32 {
            values.iter().sum()
        }
        async fn power(&self, state: Power) -> bool {
            state == Power::On
        }
        async fn broken(&self) -> async_graphql::Result<Option<String>> {
            Err("nullable field failed".into())
        }
        async fn broken_non_null(&self) -> async_graphql::Result<String> {
            Err("non-null field failed".into())
        }
        async fn caller(&self, ctx: &Context<'_>) -> Option<String> {
            ctx.data_opt::<String>().cloned()
        }
        async fn with_header(&self, ctx: &Context<'_>) -> bool {
            ctx.insert_http_header("x-vman-test", "yes");
            true
        }
    }

    struct Mutation;

    #[Object]
    impl Mutation {
        async fn start(&self, id: async_graphql::ID) -> String {
            format!("started {}", id.0)
        }
    }

    struct Subscription;

    #[Subscription]
    impl Subscription {
        async fn ticks(&self) -> impl Stream<Item = i32> {
            futures_util::stream::iter(0..3)
        }
    }

    type TestSchema = Schema<Query, Mutation, Subscription>;

    fn schema() -> TestSchema {
        Schema::build(Query, Mutation, Subscription).finish()
    }

    const GQL: &str = "application/graphql-response+json";
    const JSON: &str = "application/json";

    fn post(body: impl Into<Body>, accept: Option<&str>) -> Request {
        let mut builder = http::Request::post("/graphql").header(header::CONTENT_TYPE, JSON);
        if let Some(accept) = accept {
            builder = builder.header(header::ACCEPT, accept);
        }
        builder.body(body.into()).unwrap()
    }

    fn post_query(body: serde_json::Value, accept: Option<&str>) -> Request {
        post(body.to_string(), accept)
    }

    fn get(query_string: &str, accept: Option<&str>) -> Request {
        let mut builder = http::Request::get(format!("/graphql?{query_string}"));
        if let Some(accept) = accept {
            builder = builder.header(header::ACCEPT, accept);
        }
        builder.body(Body::empty()).unwrap()
    }

    fn enc(text: &str) -> String {
        let mut out = String::new();
        for byte in text.bytes() {
            if byte.is_ascii_alphanumeric() {
                out.push(byte as char);
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    }

    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        body: serde_json::Value,
    }

    impl Reply {
        fn content_type(&self) -> &str {
            self.headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        }
        fn has_data(&self) -> bool {
            self.body.get("data").is_some()
        }
        fn first_error(&self) -> &str {
            self.body["errors"][0]["message"].as_str().unwrap_or("")
        }
    }

    async fn send(request: Request) -> Reply {
        reply(graphql_http(&schema(), request).await).await
    }

    async fn reply(response: Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    fn accept(values: &[&str]) -> Option<MediaType> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        }
        negotiate(&headers)
    }

    #[test]
    fn handler_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let schema = schema();
        let future = graphql_http(&schema, get("query=%7Bhello%7D", None));
        assert_send(&future);
    }

    #[test]
    fn accept_negotiation() {
        use MediaType::{GraphqlResponseJson as G, Json as J};
        assert_eq!(accept(&[]), Some(J));
        assert_eq!(accept(&[""]), Some(J));
        assert_eq!(accept(&["*/*"]), Some(J));
        assert_eq!(accept(&["application/*"]), Some(J));
        assert_eq!(accept(&[JSON]), Some(J));
        assert_eq!(accept(&[GQL]), Some(G));
        assert_eq!(
            accept(&["application/graphql-response+json; charset=utf-8"]),
            Some(G)
        );
        assert_eq!(accept(&["Application/GraphQL-Response+JSON"]), Some(G));
        assert_eq!(
            accept(&["application/graphql-response+json, application/json"]),
            Some(G)
        );
        assert_eq!(
            accept(&["application/json, application/graphql-response+json"]),
            Some(G)
        );
        assert_eq!(
            accept(&["application/graphql-response+json;q=0.5, application/json"]),
            Some(J)
        );
        assert_eq!(accept(&["application/json;q=0.5", GQL]), Some(G));
        assert_eq!(
            accept(&["application/graphql-response+json, */*;q=0.1"]),
            Some(G)
        );
        assert_eq!(accept(&["text/html, */*;q=0.8"]), Some(J));
        assert_eq!(accept(&["application/json;q=0, */*"]), Some(G));
        assert_eq!(accept(&["text/html"]), None);
        assert_eq!(accept(&["application/json;q=0"]), None);
        assert_eq!(accept(&["application/json; charset=latin1"]), None);
        assert_eq!(accept(&["application/json; charset=UTF8"]), Some(J));
        assert_eq!(accept(&["application/json;q=nonsense"]), None);
        assert_eq!(accept(&["garbage"]), None);
    }

    #[tokio::test]
    async fn post_query_matches_accepted_media_type() {
        for (accept, expected) in [
            (None, "application/json; charset=utf-8"),
            (Some("*/*"), "application/json; charset=utf-8"),
            (Some(JSON), "application/json; charset=utf-8"),
            (
                Some(GQL),
                "application/graphql-response+json; charset=utf-8",
            ),
        ] {
            let reply = send(post_query(
                serde_json::json!({"query": "{ hello }"}),
                accept,
            ))
            .await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.content_type(), expected);
            assert_eq!(reply.body, serde_json::json!({"data": {"hello": "world"}}));
            assert!(
                reply
                    .headers
                    .get_all(header::VARY)
                    .iter()
                    .any(|v| v == "accept")
            );
        }
    }

    #[tokio::test]
    async fn unacceptable_accept_is_406() {
        let reply = send(post_query(
            serde_json::json!({"query": "{ hello }"}),
            Some("text/html"),
        ))
        .await;
        assert_eq!(reply.status, StatusCode::NOT_ACCEPTABLE);
    }

    #[tokio::test]
    async fn content_type_must_be_utf8_json() {
        for content_type in [
            Some("text/plain;charset=UTF-8"),
            Some("application/json; charset=latin1"),
            Some("nonsense"),
            None,
        ] {
            let mut builder = http::Request::post("/graphql");
            if let Some(content_type) = content_type {
                builder = builder.header(header::CONTENT_TYPE, content_type);
            }
            let request = builder
                .body(Body::from(r#"{"query":"{ hello }"}"#))
                .unwrap();
            let reply = send(request).await;
            assert_eq!(
                reply.status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{content_type:?}"
            );
        }
        let request = http::Request::post("/graphql")
            .header(header::CONTENT_TYPE, "Application/JSON; Charset=UTF-8")
            .body(Body::from(r#"{"query":"{ hello }"}"#))
            .unwrap();
        assert_eq!(send(request).await.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn malformed_parameters_are_400() {
        let bodies = [
            String::new(),
            "   ".to_owned(),
            "{ \"not a JSON".to_owned(),
            "[{\"query\":\"{ hello }\"}]".to_owned(),
            "\"{ hello }\"".to_owned(),
            r#"{"notquery":"{ hello }"}"#.to_owned(),
            r#"{"query":null}"#.to_owned(),
            r#"{"query":0}"#.to_owned(),
            r#"{"query":{"obj":"ect"}}"#.to_owned(),
            r#"{"query":["array"]}"#.to_owned(),
            r#"{"query":"{ hello }","operationName":false}"#.to_owned(),
            r#"{"query":"{ hello }","variables":"string"}"#.to_owned(),
            r#"{"query":"{ hello }","variables":["array"]}"#.to_owned(),
            r#"{"query":"{ hello }","extensions":0}"#.to_owned(),
        ];
        for body in bodies {
            for accept in [None, Some(GQL)] {
                let reply = send(post(body.clone(), accept)).await;
                assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body} / {accept:?}");
                assert!(!reply.has_data(), "{body}");
                assert!(!reply.first_error().is_empty(), "{body}");
            }
        }
    }

    #[tokio::test]
    async fn null_and_map_parameters_are_fine() {
        let body = serde_json::json!({
            "query": "query Q($name: String!) { __type(name: $name) { name } }",
            "operationName": "Q",
            "variables": {"name": "Query"},
            "extensions": {"some": "value"},
        });
        let reply = send(post_query(body, Some(GQL))).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body["data"]["__type"]["name"], "Query");

        let body = serde_json::json!({
            "query": "{ hello }", "operationName": null, "variables": null, "extensions": null,
        });
        let reply = send(post_query(body, Some(GQL))).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.body.get("errors").is_none());
    }

    #[tokio::test]
    async fn document_errors_depend_on_media_type() {
        for query in [
            "{",
            "{ 8f31403dfe404bccbb0e835f2629c6a7 }",
            "{ add(a: 1) }",
            "query A { hello } query B { hello }",
        ] {
            let body = serde_json::json!({ "query": query });
            let reply = send(post_query(body.clone(), Some(GQL))).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
            assert!(!reply.has_data(), "{query}");
            assert!(!reply.first_error().is_empty());

            let reply = send(post_query(body, Some(JSON))).await;
            assert_eq!(reply.status, StatusCode::OK, "{query}");
            assert!(!reply.has_data(), "{query}");
            assert!(!reply.first_error().is_empty());
        }
    }

    #[tokio::test]
    async fn batches_and_parse_failures_have_codes() {
        let code = |reply: &Reply| reply.body["errors"][0]["extensions"]["code"].clone();
        for body in ["[{\"query\":\"{ hello }\"}]", " \n[]", "[not even JSON"] {
            let reply = send(post(body, Some(GQL))).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(!reply.has_data());
            assert_eq!(code(&reply), "BATCH_NOT_SUPPORTED", "{body}");
        }
        for (query, expected) in [
            ("{", "GRAPHQL_PARSE_FAILED"),
            ("{ hello", "GRAPHQL_PARSE_FAILED"),
            (
                &format!("{}hello{}", "{ a ".repeat(70), "}".repeat(70)),
                "QUERY_TOO_DEEP",
            ),
        ] {
            let reply = send(post_query(serde_json::json!({ "query": query }), Some(GQL))).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
            assert_eq!(code(&reply), expected, "{query}");
        }
        // Without the limits' extension, validation errors have no code.
        let reply = send(post_query(
            serde_json::json!({ "query": "{ nope }" }),
            Some(GQL),
        ))
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert!(code(&reply).is_null());
    }

    #[tokio::test]
    async fn schema_limits_are_request_errors() {
        let limited = Schema::build(Query, Mutation, Subscription)
            .limit_depth(2)
            .finish();
        let query = "{ __schema { types { fields { name } } } }";
        let request = post_query(serde_json::json!({ "query": query }), Some(GQL));
        let reply = reply(graphql_http(&limited, request).await).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert!(!reply.has_data());
        assert_eq!(reply.first_error(), "Query is nested too deep.");
    }

    #[tokio::test]
    async fn execution_errors_keep_data_and_200() {
        for accept in [GQL, JSON] {
            let reply = send(post_query(
                serde_json::json!({"query": "{ brokenNonNull }"}),
                Some(accept),
            ))
            .await;
            assert_eq!(reply.status, StatusCode::OK);
            assert!(reply.has_data());
            assert!(reply.body["data"].is_null());
            assert_eq!(reply.body["errors"][0]["path"][0], "brokenNonNull");

            let reply = send(post_query(
                serde_json::json!({"query": "{ hello broken }"}),
                Some(accept),
            ))
            .await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.body["data"]["hello"], "world");
            assert!(reply.body["data"]["broken"].is_null());
            assert_eq!(reply.first_error(), "nullable field failed");
        }
    }

    #[tokio::test]
    async fn operation_is_chosen_by_name() {
        let query = "query A { hello } query B { add(a: 1, b: 2) }";
        let reply = send(post_query(
            serde_json::json!({"query": query, "operationName": "B"}),
            Some(GQL),
        ))
        .await;
        assert_eq!(reply.body, serde_json::json!({"data": {"add": 3}}));
        let reply = send(post_query(
            serde_json::json!({"query": query, "operationName": "C"}),
            Some(GQL),
        ))
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert!(!reply.has_data());
        let reply = send(post_query(
            serde_json::json!({"query": "{ hello }", "operationName": "X"}),
            Some(GQL),
        ))
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        // An empty name means "no name".
        let reply = send(post_query(
            serde_json::json!({"query": "{ hello }", "operationName": ""}),
            Some(GQL),
        ))
        .await;
        assert_eq!(reply.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn get_queries_with_variables() {
        let query = enc("query Add($a: Int!, $b: Int!) { add(a: $a, b: $b) }");
        let variables = enc(r#"{"a": 2, "b": 3}"#);
        let reply = send(get(
            &format!("query={query}&variables={variables}&operationName=Add"),
            Some(GQL),
        ))
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, serde_json::json!({"data": {"add": 5}}));

        for bad in [
            "variables=%7B%7D",
            "query=%7Bhello%7D&variables=nope",
            "query=%7Bhello%7D&variables=%5B%5D",
            "query=%7Bhello%7D&extensions=1",
            "query=%7Bhello%7D&query=%7Bhello%7D",
        ] {
            let reply = send(get(bad, Some(GQL))).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        let head = http::Request::head("/graphql?query=%7Bhello%7D")
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(head).await.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn mutations_need_post() {
        let query = enc("mutation { start(id: 7) }");
        for accept in [Some(GQL), None] {
            let reply = send(get(&format!("query={query}"), accept)).await;
            assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(reply.headers[header::ALLOW], "POST");
        }
        let reply = send(post_query(
            serde_json::json!({"query": "mutation { start(id: 7) }"}),
            Some(GQL),
        ))
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body["data"]["start"], "started 7");
    }

    #[tokio::test]
    async fn subscriptions_are_refused() {
        let reply = send(post_query(
            serde_json::json!({"query": "subscription { ticks }"}),
            None,
        ))
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert!(!reply.has_data());
        let reply = send(get(
            &format!("query={}", enc("subscription { ticks }")),
            Some(GQL),
        ))
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn variable_coercion_failures_are_request_errors() {
        let cases = [
            (
                "query($a: Int!) { add(a: $a, b: 1) }",
                serde_json::json!({}),
            ),
            (
                "query($a: Int!) { add(a: $a, b: 1) }",
                serde_json::json!({"a": null}),
            ),
            (
                "query($a: Int!) { add(a: $a, b: 1) }",
                serde_json::json!({"a": "1"}),
            ),
            (
                "query($a: Int!) { add(a: $a, b: 1) }",
                serde_json::json!({"a": 1.5}),
            ),
            (
                "query($a: Int!) { add(a: $a, b: 1) }",
                serde_json::json!({"a": 4_294_967_296_i64}),
            ),
            (
                "query($id: ID!) { echoId(id: $id) }",
                serde_json::json!({"id": true}),
            ),
            (
                "query($v: [Int!]!) { sum(values: $v) }",
                serde_json::json!({"v": [1, null]}),
            ),
            (
                "query($v: [Int!]!) { sum(values: $v) }",
                serde_json::json!({"v": [1, "2"]}),
            ),
            (
                "query CoerceFailure($id: ID!) { __typename }",
                serde_json::json!({"id": null}),
            ),
        ];
        for (query, variables) in cases {
            let body = serde_json::json!({"query": query, "variables": variables});
            let reply = send(post_query(body.clone(), Some(GQL))).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(!reply.has_data(), "{body}");
            let reply = send(post_query(body.clone(), Some(JSON))).await;
            assert_eq!(reply.status, StatusCode::OK, "{body}");
            assert!(!reply.has_data(), "{body}");
        }

        let fine = [
            (
                "query($a: Int = 4) { add(a: $a, b: 1) }",
                serde_json::json!({}),
                serde_json::json!({"add": 5}),
            ),
            (
                "query($id: ID!) { echoId(id: $id) }",
                serde_json::json!({"id": 12}),
                serde_json::json!({"echoId": "12"}),
            ),
            (
                "query($v: [Int!]!) { sum(values: $v) }",
                serde_json::json!({"v": 5}),
                serde_json::json!({"sum": 5}),
            ),
            (
                "query($v: [Int!]!) { sum(values: $v) }",
                serde_json::json!({"v": [1, 2]}),
                serde_json::json!({"sum": 3}),
            ),
            (
                "query($p: Power!) { power(state: $p) }",
                serde_json::json!({"p": "ON"}),
                serde_json::json!({"power": true}),
            ),
        ];
        for (query, variables, data) in fine {
            let body = serde_json::json!({"query": query, "variables": variables});
            let reply = send(post_query(body.clone(), Some(GQL))).await;
            assert_eq!(reply.status, StatusCode::OK, "{body}: {}", reply.body);
            assert_eq!(reply.body, serde_json::json!({"data": data}), "{body}");
        }
    }

    #[tokio::test]
    async fn body_size_is_limited() {
        let big = format!(
            r#"{{"query":"{{ hello }}","pad":"{}"}}"#,
            "x".repeat(MAX_BODY_BYTES)
        );
        let reply = send(post(big.clone(), None)).await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);

        // Without a Content-Length (streamed body).
        let chunks = big
            .into_bytes()
            .chunks(64 * 1024)
            .map(|chunk| Ok::<_, std::io::Error>(Bytes::copy_from_slice(chunk)))
            .collect::<Vec<_>>();
        let request = http::Request::post("/graphql")
            .header(header::CONTENT_TYPE, JSON)
            .body(Body::from_stream(futures_util::stream::iter(chunks)))
            .unwrap();
        assert_eq!(send(request).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn other_methods_are_405() {
        let request = http::Request::put("/graphql").body(Body::empty()).unwrap();
        let reply = send(request).await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(reply.headers[header::ALLOW], "GET, POST");
    }

    #[tokio::test]
    async fn prepare_hook_and_resolver_headers() {
        let schema = schema();
        let request = post_query(
            serde_json::json!({"query": "{ caller withHeader }"}),
            Some(GQL),
        );
        let response = graphql_http_with(&schema, request, |r| r.data("alice".to_owned())).await;
        let reply = reply(response).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.body,
            serde_json::json!({"data": {"caller": "alice", "withHeader": true}})
        );
        assert_eq!(reply.headers["x-vman-test"], "yes");
    }

    #[tokio::test]
    async fn hostile_input_does_not_panic() {
        let deep_selection = format!("{}{}", "{ hello ".repeat(10_000), "}".repeat(10_000));
        let deep_list_type = format!(
            "query($a: {}Int{}) {{ hello }}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let deep_json = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        for body in [
            serde_json::json!({"query": deep_selection}).to_string(),
            serde_json::json!({"query": deep_list_type}).to_string(),
            format!(r#"{{"query":"{{ hello }}","variables":{{"a":{deep_json}}}}}"#),
            "\u{feff}{\"query\":\"{ hello }\"}".to_owned(),
        ] {
            let reply = send(post(body, Some(GQL))).await;
            assert!(reply.status.is_client_error(), "{}", reply.status);
        }
        let invalid_utf8 = Body::from(vec![b'{', 0xff, 0xfe, b'}']);
        assert_eq!(
            send(post(invalid_utf8, None)).await.status,
            StatusCode::BAD_REQUEST
        );
        let reply = send(get("query=%FF%FE&variables=%FF", None)).await;
        assert!(reply.status.is_client_error() || reply.status == StatusCode::OK);
    }
}
