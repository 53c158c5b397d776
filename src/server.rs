//! The HTTP router and the serve loop. `router` is what tests mount on a real
//! port; `serve` adds the listener and graceful shutdown.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::{Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{
    api::{self, VmanSchema},
    app::App,
};

#[derive(Clone)]
struct Shared {
    app: Arc<App>,
    schema: VmanSchema,
}

pub fn router(app: Arc<App>) -> Router {
    let schema = api::schema(app.clone());
    let ws = api::ws::route(
        schema.clone(),
        app.ctx.config.websocket.clone(),
        app.ctx.cancel.clone(),
    );
    let shared = Shared { app, schema };
    Router::new()
        .route("/graphql", get(graphql).post(graphql))
        .route("/graphql/ws", ws)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::playground::routes())
        .with_state(shared)
}

async fn graphql(State(shared): State<Shared>, request: Request) -> Response {
    api::http::graphql_http(&shared.schema, request).await
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
        crate::telemetry::render(gauges(&shared.app.ctx).await),
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
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
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
