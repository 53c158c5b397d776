//! The bundled GraphiQL playground (`playground/`, built with Vite), served
//! at `/` and `/playground/`, and the dashboard of the same build
//! (`playground/dashboard.html`) at `/dashboard`. They load nothing from the
//! internet.
//!
//! Release builds embed `playground/dist`; debug builds read it from disk, so
//! `npm run build` in `playground/` is picked up without recompiling. When the
//! bundle was never built, the page says how to build it.

use axum::{
    Router,
    extract::Path,
    http::{StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::get,
};

#[derive(rust_embed::Embed)]
#[folder = "playground/dist"]
#[allow_missing = true]
struct Bundle;

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route(
            "/playground",
            get(|| async { Redirect::permanent("/playground/") }),
        )
        .route("/playground/", get(index))
        .route("/playground/{*path}", get(asset))
        // Its assets are relative (`./assets/…`): served at `/dashboard`
        // they resolve to `/assets/…`, as the playground's do at `/`.
        .route("/dashboard", get(dashboard))
        .route(
            "/dashboard/",
            get(|| async { Redirect::permanent("/dashboard") }),
        )
        .route(
            "/assets/{*path}",
            get(|Path(path): Path<String>| async move { file(&format!("assets/{path}")) }),
        )
}

async fn index() -> Response {
    page("index.html")
}

async fn dashboard() -> Response {
    page("dashboard.html")
}

fn page(name: &str) -> Response {
    match Bundle::get(name) {
        Some(_) => file(name),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Html(
                "<!doctype html><title>vman</title><h1>vman</h1><p>The playground and dashboard are not built yet. \
                 Run <code>npm ci &amp;&amp; npm run build</code> in <code>playground/</code> \
                 (<code>make run</code> does it), or POST GraphQL to <code>/graphql</code>.</p>",
            ),
        )
            .into_response(),
    }
}

async fn asset(Path(path): Path<String>) -> Response {
    file(&path)
}

fn file(path: &str) -> Response {
    match Bundle::get(path) {
        Some(content) => {
            let mime = content.metadata.mimetype().to_string();
            // Vite names assets by content hash; index.html must always be re-read.
            let cache = if path.starts_with("assets/") {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            };
            (
                [
                    (header::CONTENT_TYPE, mime),
                    (header::CACHE_CONTROL, cache.to_string()),
                ],
                content.data,
            )
                .into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
