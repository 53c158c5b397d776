//! Any node accepts any mutation: one for a VM on another host is carried
//! out by that host's node, and the caller gets that node's answer as it is.
//!
//! A POST to `/graphql` whose document is a mutation is looked at before it
//! runs: each root field names what it acts on (a VM by ID or name, a disk,
//! an image, a NIC, a snapshot, an operation; `createVm` a host, or is
//! placed by `cluster::place`), and from that the host. An attached disk is
//! its VM's host's; a detached disk and an image are the host's whose
//! storage holds their file.
//! When every root field's host is one other online host, the request (its
//! body and its `Authorization`, `Content-Type` and `Accept` headers) is
//! sent to that host's node (`Host.apiUrl`) with `vman-forwarded-by`, and
//! its response (status, body) is the answer. The tokens are in the shared
//! database, so the other node authenticates the caller itself: no cluster
//! credential, and each node checks roles as for its own callers.
//!
//! A mutation sent over the websocket is routed the same way
//! ([`websocket_mutation`]): for another host it is POSTed to that host's
//! node with the `Authorization` the connection was admitted with
//! ([`Caller`]), and that node's answer is the operation's one result.
//!
//! Root fields for several hosts are refused whole (`HOST_UNAVAILABLE`,
//! nothing done). Everything else runs here: queries; a mutation of this
//! host, or of nothing that is a host's (templates, networks, tokens), or
//! that makes an image or a disk (on this node's host); one whose host is
//! offline, unknown or without an URL (the resolvers refuse it with
//! `HOST_UNAVAILABLE`); and a request forwarded already (no loops).

use std::{collections::BTreeSet, sync::OnceLock, time::Duration};

use async_graphql::{
    Name, Variables,
    parser::types::{DocumentOperations, OperationType, Selection},
};
use axum::{
    body::{Body, Bytes},
    extract::Request,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::{Host, HostState, model};
use crate::{context::Ctx, error::ApiError};

/// The header a forwarded request carries: the forwarding node's host ID.
pub const FORWARDED_BY: &str = "vman-forwarded-by";

/// How long a node waits for the other node to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a request runs.
#[derive(Debug)]
pub enum Route {
    Here,
    To(Box<Host>),
    /// Root fields for several hosts: refused whole, nothing done.
    Spans(Vec<String>),
}

/// Sends `request` to the node of the host it is for, when that is another
/// host's: `Err` is then the answer. Otherwise gives the request back.
pub async fn forward_if_remote(ctx: &Ctx, request: Request) -> Result<Request, Response> {
    // With SQLite there is one host; a request forwarded here already is
    // this node's to run.
    if ctx.db.get_database_backend() == sea_orm::DbBackend::Sqlite
        || request.method() != axum::http::Method::POST
        || request.headers().contains_key(FORWARDED_BY)
    {
        return Ok(request);
    }
    let (request, body) = crate::api::http::buffered(request).await?;
    match route(ctx, &body).await {
        Route::Here => Ok(request),
        Route::To(host) => Err(forward(ctx, &host, request.headers(), body).await),
        Route::Spans(hosts) => Err(unavailable(request.headers(), spans(&hosts))),
    }
}

fn spans(hosts: &[String]) -> String {
    format!(
        "this request's mutations are for several hosts ({}): send each host's in a request of its own; nothing was done",
        hosts.join(", ")
    )
}

/// The `Authorization` a websocket connection was admitted with (kept in
/// its session data): what a mutation sent over it is carried to another
/// host's node with, so that node authenticates the caller itself.
#[derive(Clone)]
pub struct Caller(pub Option<String>);

/// Where a mutation sent over the websocket runs. `Some(answer)`: it was
/// another host's, and `answer` is that host's node's (or
/// `HOST_UNAVAILABLE`); None: it runs here.
pub async fn websocket_mutation(
    ctx: &Ctx,
    request: &async_graphql::Request,
    caller: &Caller,
) -> Option<async_graphql::Response> {
    if ctx.db.get_database_backend() == sea_orm::DbBackend::Sqlite {
        return None;
    }
    let body = serde_json::to_vec(&serde_json::json!({
        "query": request.query,
        "variables": request.variables,
        "operationName": request.operation_name,
    }))
    .ok()?;
    let refused = |message| {
        Some(async_graphql::Response::from_errors(vec![
            async_graphql::ErrorExtensions::extend(&ApiError::HostUnavailable(message))
                .into_server_error(async_graphql::Pos::default()),
        ]))
    };
    let host = match route(ctx, &body).await {
        Route::Here => return None,
        Route::Spans(hosts) => return refused(spans(&hosts)),
        Route::To(host) => host,
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    if let Some(value) = caller
        .0
        .as_deref()
        .and_then(|a| HeaderValue::from_str(a).ok())
    {
        headers.insert(header::AUTHORIZATION, value);
    }
    match send(ctx, &host, &headers, body.into()).await {
        Ok((_, _, answer)) => match serde_json::from_slice(&answer) {
            Ok(response) => Some(response),
            Err(e) => refused(format!(
                "the node of host {:?} answered with something other than a GraphQL response ({e}); it may have carried out the mutation (see its operations)",
                host.name
            )),
        },
        Err(message) => refused(message),
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PostBody {
    query: String,
    #[serde(default)]
    variables: Option<serde_json::Value>,
    #[serde(default)]
    operation_name: Option<String>,
}

/// Where the request in `body` (a GraphQL POST body) runs.
pub async fn route(ctx: &Ctx, body: &[u8]) -> Route {
    // A mutation's document has the word; the reads never pay for more.
    if !body.windows(8).any(|w| w == b"mutation") {
        return Route::Here;
    }
    let Ok(request) = serde_json::from_slice::<PostBody>(body) else {
        return Route::Here;
    };
    // A document beyond a limit is refused here, before it is parsed.
    if crate::api::limits::scan(&request.query, &ctx.config.graphql).is_err() {
        return Route::Here;
    }
    let Ok(document) = async_graphql::parser::parse_query(&request.query) else {
        return Route::Here;
    };
    let operation = match (&document.operations, request.operation_name.as_deref()) {
        (DocumentOperations::Single(operation), _) => operation,
        (DocumentOperations::Multiple(operations), Some(name)) => match operations.get(name) {
            Some(operation) => operation,
            None => return Route::Here,
        },
        (DocumentOperations::Multiple(_), None) => return Route::Here,
    };
    if operation.node.ty != OperationType::Mutation {
        return Route::Here;
    }
    let variables = Variables::from_json(request.variables.unwrap_or_default());
    let mut hosts = BTreeSet::new();
    for selection in &operation.node.selection_set.node.items {
        // Fragments at a mutation's root are left to this node.
        let Selection::Field(field) = &selection.node else {
            return Route::Here;
        };
        let field = &field.node;
        let mut args = serde_json::Map::new();
        for (name, value) in &field.arguments {
            let Ok(value) = value
                .node
                .clone()
                .into_const_with(|var: Name| variables.get(&var).cloned().ok_or(()))
            else {
                return Route::Here;
            };
            let Ok(value) = value.into_json() else {
                return Route::Here;
            };
            args.insert(name.node.to_string(), value);
        }
        match host_of(ctx, field.name.node.as_str(), &args).await {
            Ok(Some(host)) => hosts.insert(host),
            // Templates, networks, tokens: the cluster's, done anywhere; a
            // new image or disk: this node's host's.
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "routing a mutation: finding its host");
                return Route::Here;
            }
        };
    }
    if hosts.len() > 1 {
        let names = model::Entity::find()
            .filter(model::Column::Id.is_in(hosts.iter().cloned()))
            .order_by_asc(model::Column::Name)
            .all(&ctx.db)
            .await
            .map(|found| found.into_iter().map(|h| h.name).collect())
            .unwrap_or_else(|_| hosts.into_iter().collect());
        return Route::Spans(names);
    }
    let Some(host_id) = hosts.pop_first() else {
        return Route::Here;
    };
    if host_id == *ctx.host_id {
        return Route::Here;
    }
    match model::Entity::find_by_id(host_id).one(&ctx.db).await {
        Ok(Some(host)) if host.state == HostState::Online && host.api_url.is_some() => {
            Route::To(Box::new(host))
        }
        // The resolvers say why not, with their codes.
        Ok(_) => Route::Here,
        Err(e) => {
            tracing::warn!(error = %e, "routing a mutation: reading its host");
            Route::Here
        }
    }
}

/// A string argument.
fn arg<'a>(args: &'a serde_json::Map<String, serde_json::Value>, name: &str) -> Option<&'a str> {
    args.get(name).and_then(|v| v.as_str())
}

/// The row named by `id`, or else by `name` in `name_column` (a column of
/// `E`, or none: then `id` only).
async fn named<E>(
    ctx: &Ctx,
    id: Option<&str>,
    name: Option<(E::Column, &str)>,
) -> Result<Option<E::Model>, ApiError>
where
    E: EntityTrait,
    E::PrimaryKey: sea_orm::PrimaryKeyTrait<ValueType = String>,
{
    Ok(match (id, name) {
        (Some(id), _) => E::find_by_id(id.to_string()).one(&ctx.db).await?,
        (None, Some((column, name))) => E::find().filter(column.eq(name)).one(&ctx.db).await?,
        (None, None) => None,
    })
}

/// The host a root mutation field acts on; None: nothing that belongs to a
/// host, or nothing found (the resolver says so).
async fn host_of(
    ctx: &Ctx,
    field: &str,
    args: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<String>, ApiError> {
    use crate::{
        disk::model as disks, network::model::nic, snapshot::model as snapshots, vm::model as vms,
    };
    // The VM named by an ID argument or a name argument, and so its host.
    let vm_host = async |id: Option<&str>, name: Option<&str>| {
        let name = name.map(|name| (vms::Column::Name, name));
        Ok::<_, ApiError>(
            named::<vms::Entity>(ctx, id, name)
                .await?
                .and_then(|vm| vm.host_id),
        )
    };
    let id = |key| arg(args, key);
    match field {
        "createVm" => {
            let input = args.get("input");
            let input_arg = |key| input.and_then(|i| i.get(key)).and_then(|v| v.as_str());
            if let Some(host) = input_arg("hostId") {
                return Ok(Some(host.to_string()));
            }
            // A template that cannot be found, or a VM that fits no host:
            // the resolver here says so.
            let template =
                crate::template::find(ctx, input_arg("templateId"), input_arg("templateName"))
                    .await
                    .ok()
                    .flatten();
            let needed =
                super::place::needed_images(ctx, template.as_ref(), input_arg("cdromImageId"))
                    .await?;
            Ok(super::place::place(ctx, &needed).await.ok())
        }
        "updateVm"
        | "attachCdrom"
        | "ejectCdrom"
        | "clearPendingChanges"
        | "startVm"
        | "stopVm"
        | "restartVm"
        | "pauseVm"
        | "resumeVm"
        | "deleteVm" => vm_host(id("id"), id("name")).await,
        "cloneVm" => vm_host(id("id"), id("sourceName")).await,
        "attachDisk" | "attachNic" | "createSnapshot" | "sendConsoleInput" => {
            vm_host(id("vmId"), id("vmName")).await
        }
        "detachDisk" | "resizeDisk" | "deleteDisk" => {
            let (disk_id, name) = match field {
                "deleteDisk" => (id("id"), id("name")),
                _ => (id("diskId"), id("diskName")),
            };
            let name = name.map(|name| (disks::Column::Name, name));
            match named::<disks::Entity>(ctx, disk_id, name).await? {
                // An attached disk is its VM's business; a detached one its
                // host's, where its file is.
                Some(disk) => match disk.vm_id {
                    Some(vm_id) => vm_host(Some(&vm_id), None).await,
                    None => Ok(disk.host_id),
                },
                None => Ok(None),
            }
        }
        "deleteImage" => {
            let image = named::<crate::image::model::Entity>(ctx, id("id"), None).await?;
            Ok(image.and_then(|i| i.host_id))
        }
        "detachNic" => {
            let nic = named::<nic::Entity>(ctx, id("nicId"), None).await?;
            vm_host(nic.map(|n| n.vm_id).as_deref(), None).await
        }
        "restoreSnapshot" | "deleteSnapshot" => {
            let snapshot = named::<snapshots::Entity>(ctx, id("id"), None).await?;
            vm_host(snapshot.map(|s| s.vm_id).as_deref(), None).await
        }
        "cancelOperation" => {
            let op = named::<crate::operation::model::Entity>(ctx, id("id"), None).await?;
            Ok(op.and_then(|op| op.host_id))
        }
        _ => Ok(None),
    }
}

/// One client for every forward: its connections are kept.
fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .expect("an HTTP client")
    })
}

/// Sends the request to `host`'s node and gives back its answer; a node
/// that cannot be reached is `HOST_UNAVAILABLE`, having changed nothing
/// here (and, if it never got the request, nothing there).
async fn forward(ctx: &Ctx, host: &Host, headers: &HeaderMap, body: Bytes) -> Response {
    match send(ctx, host, headers, body).await {
        Ok((status, content_type, body)) => {
            let mut response = Response::new(Body::from(body));
            *response.status_mut() =
                StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Some(content_type) = content_type
                && let Ok(value) = HeaderValue::from_bytes(content_type.as_bytes())
            {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            response
        }
        Err(message) => unavailable(headers, message),
    }
}

/// POSTs `body` to `host`'s node with the caller's `Authorization`,
/// `Content-Type` and `Accept` from `headers`: its status, content type and
/// body; or why it did not answer.
async fn send(
    ctx: &Ctx,
    host: &Host,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<
    (
        reqwest::StatusCode,
        Option<reqwest::header::HeaderValue>,
        Bytes,
    ),
    String,
> {
    let url = host.api_url.clone().unwrap_or_default();
    // As long as the slowest mutation may take there: a graceful stop.
    let timeout = ctx.config.qemu.stop_timeout * 2 + Duration::from_secs(30);
    let mut outgoing = client()
        .post(&url)
        .timeout(timeout)
        .header(FORWARDED_BY, &*ctx.host_id)
        .body(body);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT] {
        for value in headers.get_all(&name) {
            outgoing = outgoing.header(&name, value);
        }
    }
    let started = std::time::Instant::now();
    let answered = async {
        let response = outgoing.send().await?;
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let body = response.bytes().await?;
        Ok::<_, reqwest::Error>((status, content_type, body))
    }
    .await;
    match answered {
        Ok(answer) => {
            tracing::debug!(host = %host.name, status = %answer.0, elapsed_ms = started.elapsed().as_millis() as u64, "carried a mutation to its host's node");
            Ok(answer)
        }
        Err(e) => {
            tracing::warn!(host = %host.name, %url, error = %e, "the node of a mutation's host did not answer");
            Err(format!(
                "the node of host {:?} ({url}) did not answer: {e}; it may not have carried out the mutation (see its operations)",
                host.name
            ))
        }
    }
}

/// An answer of one `HOST_UNAVAILABLE` error, no data.
fn unavailable(headers: &HeaderMap, message: String) -> Response {
    crate::api::http::error_response(headers, ApiError::HostUnavailable(message))
}
