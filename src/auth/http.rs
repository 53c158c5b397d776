//! The HTTP side of auth: who sends each request (a bearer token), which
//! browser pages may call vman (Origin, CORS), and, without auth, that the
//! request was meant for this machine (Host, against DNS rebinding).

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::{Auth, Principal, Refusal};
use crate::config::{AuthMode, Config};

/// The value of the `Authorization` header, if it is text.
pub fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
}

/// A refusal as the response GraphQL clients understand: a GraphQL error
/// with its code, and the status and headers HTTP clients act on.
pub fn refusal_response(refusal: &Refusal) -> Response {
    let body = serde_json::json!({
        "errors": [{
            "message": refusal.to_string(),
            "extensions": { "code": refusal.code() },
        }]
    });
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        )],
        body.to_string(),
    )
        .into_response();
    match refusal {
        Refusal::Unauthenticated(_) => {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        Refusal::RateLimited(wait) => {
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        Refusal::TooManyConnections(_) => {
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        }
    }
    response
}

/// Resolves the request's principal (refusing it with 401 or 429) and puts
/// it in the request's extensions for the handler.
pub async fn require_principal(
    State(auth): State<Arc<Auth>>,
    mut request: Request,
    next: Next,
) -> Response {
    let principal = match auth.authenticate(authorization(request.headers())).await {
        Ok(principal) => principal,
        Err(refusal) => return refusal_response(&refusal),
    };
    if let Err(refusal) = auth.check_rate(&principal) {
        return refusal_response(&refusal);
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// Like [`require_principal`], unless `metrics.public` lets everyone in.
pub async fn metrics_principal(
    State((auth, public)): State<(Arc<Auth>, bool)>,
    request: Request,
    next: Next,
) -> Response {
    if public {
        return next.run(request).await;
    }
    require_principal(State(auth), request, next).await
}

/// What the browser-facing checks need of the config.
#[derive(Clone)]
pub struct Browsers {
    mode: AuthMode,
    /// `https` with TLS, `http` without: vman's own origin's scheme.
    scheme: &'static str,
    cors_origins: Arc<[String]>,
    websocket_origins: Arc<[String]>,
}

impl Browsers {
    pub fn new(config: &Config, scheme: &'static str) -> Browsers {
        Browsers {
            mode: config.auth.mode,
            scheme,
            cors_origins: config.http.cors_origins.iter().cloned().collect(),
            websocket_origins: config.websocket.allowed_origins.iter().cloned().collect(),
        }
    }

    /// The CORS layer for `http.cors_origins`, if any are configured.
    pub fn cors(&self) -> Option<CorsLayer> {
        if self.cors_origins.is_empty() {
            return None;
        }
        let origins: Vec<HeaderValue> = self
            .cors_origins
            .iter()
            .filter_map(|origin| HeaderValue::from_str(origin).ok())
            .collect();
        Some(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([http::Method::GET, http::Method::POST])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT])
                .max_age(std::time::Duration::from_secs(600)),
        )
    }

    /// Whether `origin` is vman's own (the scheme it serves and the `Host`
    /// the request was sent to).
    fn is_own(&self, origin: &str, headers: &HeaderMap) -> bool {
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return false;
        };
        origin.split_once("://").is_some_and(|(scheme, rest)| {
            scheme.eq_ignore_ascii_case(self.scheme) && rest.eq_ignore_ascii_case(host)
        })
    }

    /// Refuses a browser page of a foreign origin: an `Origin` header that is
    /// neither vman's own nor listed. Requests without one (curl, clients,
    /// same-origin GETs) pass.
    fn foreign_origin(&self, headers: &HeaderMap, allowed: &[String]) -> Option<Response> {
        let origin = headers.get(header::ORIGIN)?;
        let origin = origin.to_str().unwrap_or_default();
        if self.is_own(origin, headers) || allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
            return None;
        }
        Some(
            (
                StatusCode::FORBIDDEN,
                format!(
                    "Origin {origin:?} is not allowed; an operator lets a page in with http.cors_origins (HTTP) or websocket.allowed_origins (websocket)\n"
                ),
            )
                .into_response(),
        )
    }

    /// Without auth, refuses a request whose `Host` is not a loopback name
    /// or address: a page that re-pointed its own name at 127.0.0.1 (DNS
    /// rebinding) sends its own name.
    fn foreign_host(&self, headers: &HeaderMap) -> Option<Response> {
        if self.mode != AuthMode::None {
            return None;
        }
        let host = headers.get(header::HOST)?.to_str().unwrap_or_default();
        if is_loopback_host(host) {
            return None;
        }
        Some(
            (
                StatusCode::FORBIDDEN,
                format!(
                    "Host {host:?} is not a loopback name: with auth.mode = \"none\" vman answers only requests sent to localhost or a loopback address\n"
                ),
            )
                .into_response(),
        )
    }
}

/// Which requests a [`Browsers`] check guards.
#[derive(Clone)]
pub struct Guarded {
    pub browsers: Browsers,
    /// Websocket upgrades (origins from `websocket.allowed_origins`), or
    /// plain HTTP (`http.cors_origins`).
    pub websocket: bool,
}

/// The Host check (without auth), and the Origin check against the origins
/// allowed for plain HTTP or for websockets. For websockets it runs before
/// the upgrade: browsers let any page open a websocket anywhere (cross-site
/// websocket hijacking).
pub async fn check_browser(
    State(guarded): State<Guarded>,
    request: Request,
    next: Next,
) -> Response {
    let browsers = &guarded.browsers;
    let allowed = if guarded.websocket {
        &browsers.websocket_origins
    } else {
        &browsers.cors_origins
    };
    if let Some(refused) = browsers
        .foreign_host(request.headers())
        .or_else(|| browsers.foreign_origin(request.headers(), allowed))
    {
        return refused;
    }
    next.run(request).await
}

/// `localhost`, `*.localhost`, 127.0.0.0/8 and `[::1]`, with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((address, _)) => address,
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The principal a request was given by [`require_principal`].
pub fn principal_of(request: &Request) -> Option<Principal> {
    request.extensions().get::<Principal>().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_origin_is_the_scheme_served_and_the_host_asked_for() {
        let mut config = Config::default();
        let headers = |host: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            headers
        };
        config.websocket.allowed_origins = vec!["https://dash.example".into()];
        let browsers = Browsers::new(&config, "https");
        let allowed = browsers.websocket_origins.clone();
        let h = headers("vman.example:8443");
        assert!(browsers.is_own("https://vman.example:8443", &h));
        assert!(browsers.is_own("HTTPS://VMAN.example:8443", &h));
        assert!(!browsers.is_own("http://vman.example:8443", &h));
        assert!(!browsers.is_own("https://vman.example", &h));
        assert!(browsers.foreign_origin(&h, &allowed).is_none());
        let mut foreign = h.clone();
        foreign.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(browsers.foreign_origin(&foreign, &allowed).is_some());
        foreign.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://dash.example"),
        );
        assert!(browsers.foreign_origin(&foreign, &allowed).is_none());
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.",
            "vman.localhost:1",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "[::2]:80",
            "0.0.0.0:8080",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
