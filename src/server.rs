//! The HTTP router and the serve loop. `router` is what tests mount on a real
//! port; `serve` adds the listener and graceful shutdown.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::{Request, State},
    http::StatusCode,
    middleware::from_fn_with_state,
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{
    api::{self, executor::Api},
    app::App,
    auth::{
        self, Principal,
        http::{Browsers, Guarded, check_browser, metrics_principal, require_principal},
    },
};

#[derive(Clone)]
struct Shared {
    app: Arc<App>,
    api: Api,
}

/// The routes, each behind what guards it: a principal for `/graphql` (and
/// `/metrics` unless public), the Origin check for browsers, and without
/// auth the Host check. Health stays open.
pub fn router(app: Arc<App>) -> Router {
    let config = &app.ctx.config;
    let api = Api::new(app.clone());
    let browsers = Browsers::new(config, config.scheme());
    let ws = api::ws::route(
        api.clone(),
        config.websocket.clone(),
        app.ctx.cancel.clone(),
        Arc::new(WsGate { app: app.clone() }),
    );
    let auth = app.auth.clone();
    let metrics_public = config.metrics.public;
    let shared = Shared { app, api };
    let graphql_route = Router::new()
        .route("/graphql", get(graphql).post(graphql))
        .route_layer(from_fn_with_state(auth.clone(), require_principal));
    let metrics_route =
        Router::new()
            .route("/metrics", get(metrics))
            .route_layer(from_fn_with_state(
                (auth, metrics_public),
                metrics_principal,
            ));
    let http = Router::new()
        .merge(graphql_route)
        .merge(metrics_route)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(crate::playground::routes())
        .layer(from_fn_with_state(
            Guarded {
                browsers: browsers.clone(),
                websocket: false,
            },
            check_browser,
        ));
    let websocket = Router::new()
        .route("/graphql/ws", ws)
        .layer(from_fn_with_state(
            Guarded {
                browsers: browsers.clone(),
                websocket: true,
            },
            check_browser,
        ));
    let router = http.merge(websocket).with_state(shared);
    match browsers.cors() {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

async fn graphql(State(shared): State<Shared>, request: Request) -> Response {
    let Some(principal) = auth::http::principal_of(&request) else {
        return auth::http::refusal_response(&auth::Refusal::Unauthenticated("no caller".into()));
    };
    let ctx = shared.app.ctx.acting_as(&principal.actor);
    let request = match crate::cluster::route::forward_if_remote(&ctx, request).await {
        Ok(request) => request,
        Err(answered) => return answered,
    };
    api::http::graphql_http_with(&shared.api, request, move |request| {
        request.data(principal).data(ctx)
    })
    .await
}

/// Lets a websocket in at `connection_init`: the token in the payload's
/// `authorization` (`Bearer …`), or else in the upgrade's header.
struct WsGate {
    app: Arc<App>,
}

impl api::ws::Gate for WsGate {
    fn admit(
        &self,
        authorization: Option<String>,
        payload: &serde_json::Map<String, serde_json::Value>,
    ) -> futures_util::future::BoxFuture<'static, Result<api::ws::Admitted, String>> {
        let app = self.app.clone();
        let authorization = payload
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case("authorization"))
            .and_then(|(_, value)| value.as_str())
            .map(str::to_string)
            .or(authorization);
        Box::pin(async move {
            let principal: Principal = app
                .auth
                .authenticate(authorization.as_deref())
                .await
                .map_err(|refusal| refusal.to_string())?;
            let admission = app
                .auth
                .admit_connection(principal)
                .map_err(|refusal| refusal.to_string())?;
            let mut data = async_graphql::Data::default();
            // A mutation of another host's is carried to its node as the caller.
            data.insert(crate::cluster::route::Caller(authorization));
            data.insert(app.ctx.acting_as(&admission.principal.actor));
            data.insert(admission.principal.clone());
            // Shared subscriptions read the journal and the rows it names;
            // what they resolve depends on the role alone (the guard's one
            // check), never on the token: they run as the role, no one's
            // actor, so no connection's identity reaches another.
            let role = admission.principal.role;
            let mut shared = async_graphql::Data::default();
            shared.insert(Principal {
                actor: format!("{} subscribers", role.as_str()),
                role,
                token_id: None,
                expires_at: None,
            });
            Ok(api::ws::Admitted {
                data,
                ends: admission.ends.clone(),
                hold: Box::new(admission),
                sharing: Some(api::ws::Sharing {
                    key: role.as_str().into(),
                    data: shared,
                }),
            })
        })
    }
}

async fn readyz(State(shared): State<Shared>) -> Response {
    let health = crate::health::check(&shared.app).await;
    let status = if health.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health)).into_response()
}

async fn metrics(State(shared): State<Shared>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::render(gauges(&shared.app.ctx).await)
            + &crate::stats::prometheus_series(&shared.app.ctx).await,
    )
        .into_response()
}

/// Binds `listen` and serves until `app.cancel` fires (SIGINT/SIGTERM in `vman serve`).
pub async fn serve(app: Arc<App>, listen: SocketAddr) -> std::io::Result<()> {
    serve_on(app, tokio::net::TcpListener::bind(listen).await?).await
}

/// Serves on a bound listener until `app.cancel` fires: TLS (https, wss) when
/// the config has `[tls]`, plain http and ws otherwise.
pub async fn serve_on(app: Arc<App>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let at = listener.local_addr()?;
    let config = app.ctx.config.clone();
    let tls = match config.tls.files() {
        Some((cert, key)) => Some(crate::tls::load(cert, key).map_err(std::io::Error::other)?),
        None => None,
    };
    let (http, ws) = (config.scheme(), config.ws_scheme());
    tracing::info!(
        playground = %format!("{http}://{at}/"),
        graphql = %format!("{http}://{at}/graphql"),
        websocket = %format!("{ws}://{at}/graphql/ws"),
        metrics = %format!("{http}://{at}/metrics"),
        data_dir = %config.data_dir.display(),
        dry_run = config.dry_run,
        "vman is serving"
    );
    let cancel = app.ctx.cancel.clone();
    let shutdown = async move { cancel.cancelled().await };
    let router = router(app);
    match tls {
        Some(tls) => {
            axum::serve(crate::tls::TlsListener::new(listener, tls)?, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            use axum::serve::ListenerExt;
            axum::serve(listener.tap_io(|stream| no_delay(stream)), router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// Turns Nagle's algorithm off for an accepted connection. With it on, a
/// small write (a websocket message, an answer) that follows another one not
/// yet acknowledged waits for the acknowledgement, which a client that
/// delays its ACKs sends up to 40 ms later: in `benches/api.rs`, one state
/// change in 20 reached a lone websocket subscriber 40 ms late (p99 43–46
/// ms, 9–17 ms without Nagle; docs/BENCHMARKS.md, issue 22).
pub(crate) fn no_delay(stream: &tokio::net::TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "setting TCP_NODELAY on a connection failed");
    }
}

/// What `/metrics` mirrors of the database, asked of the services that own it.
async fn gauges(ctx: &crate::context::Ctx) -> crate::telemetry::Gauges {
    let mut gauges = Vec::new();
    match crate::vm::count_by_state(ctx).await {
        Ok(counts) => gauges.push(("vman_vms", "state", counts)),
        Err(e) => tracing::warn!(error = %e, "reading VM states for /metrics"),
    }
    match crate::coherence::open_counts(ctx).await {
        Ok(counts) => gauges.push(("vman_coherence_open_issues", "kind", counts)),
        Err(e) => tracing::warn!(error = %e, "reading coherence issues for /metrics"),
    }
    gauges
}
