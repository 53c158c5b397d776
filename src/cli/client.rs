//! The client's two channels to a vman server: GraphQL over HTTP POST for
//! queries and mutations, graphql-transport-ws for subscriptions. Every wait
//! here is bounded; every failure becomes a [`Failure`] with the exit code a
//! script can rely on.

use std::{process::ExitCode, time::Duration};

use graphql_client::{GraphQLQuery, Response};
use graphql_ws_client::{Client as WsClient, Subscription, graphql::StreamingOperation};
use tokio_tungstenite_028::tungstenite::{client::IntoClientRequest, http::HeaderValue};

/// What went wrong, as a script sees it: the exit code and one line on stderr.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The server answered with an error; `code` is its `extensions.code`.
    #[error("{code}: {message}")]
    Server { code: String, message: String },
    /// No answer: nothing listens, the connection broke, or a wait timed out.
    #[error("{0}")]
    Unreachable(String),
    /// Anything else (an answer that is not GraphQL, a local I/O error).
    #[error("{0}")]
    Other(String),
}

impl Failure {
    pub fn not_found(what: impl std::fmt::Display) -> Failure {
        Failure::Server {
            code: "NOT_FOUND".into(),
            message: format!("{what} not found"),
        }
    }

    /// The exit code: the table in docs/CLI.md.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.exit_status())
    }

    fn exit_status(&self) -> u8 {
        match self {
            Failure::Server { code, .. } => match code.as_str() {
                "NOT_FOUND" => 3,
                "FORBIDDEN" | "UNAUTHENTICATED" => 4,
                "INVALID_STATE" => 5,
                "CONFLICT" | "VM_BUSY" => 6,
                "BAD_USER_INPUT" | "GRAPHQL_VALIDATION_FAILED" | "GRAPHQL_PARSE_FAILED" => 7,
                _ => 1,
            },
            Failure::Unreachable(_) => 8,
            Failure::Other(_) => 1,
        }
    }
}

/// Where the server is and who we are to it.
pub struct Client {
    http: reqwest::Client,
    /// `…/graphql`.
    url: String,
    /// `…/graphql/ws`.
    ws_url: String,
    token: Option<String>,
    /// The longest wait for one answer.
    pub timeout: Duration,
}

impl Client {
    /// `server` is the base URL (`http://host:port`, with or without
    /// `/graphql`).
    pub fn new(server: &str, token: Option<String>, timeout: Duration) -> Result<Client, Failure> {
        let base = server
            .trim_end_matches('/')
            .trim_end_matches("/graphql")
            .to_string();
        let ws_base = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            return Err(Failure::Other(format!(
                "--server {server:?}: give an http:// or https:// URL"
            )));
        };
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .build()
            .map_err(|e| Failure::Other(format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            url: format!("{base}/graphql"),
            ws_url: format!("{ws_base}/graphql/ws"),
            token,
            timeout,
        })
    }

    /// Runs a query or mutation; its data, or the server's first error.
    pub async fn run<Q: GraphQLQuery>(
        &self,
        variables: Q::Variables,
    ) -> Result<Q::ResponseData, Failure> {
        let body = serde_json::to_vec(&Q::build_query(variables))
            .map_err(|e| Failure::Other(format!("encoding the request: {e}")))?;
        let mut request = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.transport(e))?;
        let answer: Response<Q::ResponseData> = match serde_json::from_slice(&body) {
            Ok(answer) => answer,
            Err(_) if status == reqwest::StatusCode::UNAUTHORIZED => {
                return Err(Failure::Server {
                    code: "UNAUTHENTICATED".into(),
                    message: "the server wants a token (--token, VMAN_TOKEN)".into(),
                });
            }
            Err(e) => {
                return Err(Failure::Other(format!(
                    "{} answered {status} with no GraphQL response: {e}",
                    self.url
                )));
            }
        };
        if let Some(error) = answer.errors.unwrap_or_default().into_iter().next() {
            return Err(server_error(&error));
        }
        answer
            .data
            .ok_or_else(|| Failure::Other(format!("{} answered {status} without data", self.url)))
    }

    /// Opens a websocket and subscribes: the stream of its items.
    pub async fn subscribe<Q>(
        &self,
        variables: Q::Variables,
    ) -> Result<Subscription<StreamingOperation<Q>>, Failure>
    where
        Q: GraphQLQuery + Send + Unpin + 'static,
        Q::Variables: Send + Unpin,
    {
        let mut request = self
            .ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| Failure::Other(format!("{}: {e}", self.ws_url)))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
        let (socket, _) =
            tokio::time::timeout(self.timeout, tokio_tungstenite_028::connect_async(request))
                .await
                .map_err(|_| self.timed_out(&self.ws_url))?
                .map_err(|e| Failure::Unreachable(format!("{}: {e}", self.ws_url)))?;
        let payload = match &self.token {
            Some(token) => serde_json::json!({"authorization": format!("Bearer {token}")}),
            None => serde_json::json!({}),
        };
        let builder = WsClient::build(socket)
            .payload(payload)
            .map_err(|e| Failure::Other(e.to_string()))?
            .keep_alive_interval(Duration::from_secs(10));
        tokio::time::timeout(
            self.timeout,
            builder.subscribe(StreamingOperation::<Q>::new(variables)),
        )
        .await
        .map_err(|_| self.timed_out(&self.ws_url))?
        .map_err(|e| match e {
            graphql_ws_client::Error::Close(code, reason) => close_failure(code, reason),
            other => Failure::Unreachable(format!("{}: {other}", self.ws_url)),
        })
    }

    fn transport(&self, e: reqwest::Error) -> Failure {
        if e.is_timeout() {
            self.timed_out(&self.url)
        } else {
            Failure::Unreachable(format!("{}: {}", self.url, chain(&e)))
        }
    }

    fn timed_out(&self, url: &str) -> Failure {
        Failure::Unreachable(format!("{url}: no answer within {:?}", self.timeout))
    }
}

/// The websocket closed while subscribing: 4401/4403 say who we are not.
fn close_failure(code: u16, reason: String) -> Failure {
    match code {
        4401 => Failure::Server {
            code: "UNAUTHENTICATED".into(),
            message: reason,
        },
        4403 => Failure::Server {
            code: "FORBIDDEN".into(),
            message: reason,
        },
        _ => Failure::Unreachable(format!("the websocket closed ({code}): {reason}")),
    }
}

/// A GraphQL error as a [`Failure`], with its `extensions.code`.
pub fn server_error(error: &graphql_client::Error) -> Failure {
    let code = error
        .extensions
        .as_ref()
        .and_then(|e| e.get("code"))
        .and_then(|c| c.as_str())
        .unwrap_or("INTERNAL")
        .to_string();
    Failure::Server {
        code,
        message: error.message.clone(),
    }
}

/// An error and its causes, one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::Failure;

    /// The table in docs/CLI.md, which scripts rely on.
    #[test]
    fn each_error_code_has_its_exit_status() {
        let server = |code: &str| Failure::Server {
            code: code.into(),
            message: String::new(),
        };
        let table = [
            ("NOT_FOUND", 3),
            ("FORBIDDEN", 4),
            ("UNAUTHENTICATED", 4),
            ("INVALID_STATE", 5),
            ("CONFLICT", 6),
            ("VM_BUSY", 6),
            ("BAD_USER_INPUT", 7),
            ("GRAPHQL_VALIDATION_FAILED", 7),
            ("HOST_ERROR", 1),
            ("INTERNAL", 1),
        ];
        for (code, status) in table {
            assert_eq!(server(code).exit_status(), status, "{code}");
        }
        assert_eq!(Failure::Unreachable(String::new()).exit_status(), 8);
        assert_eq!(Failure::Other(String::new()).exit_status(), 1);
    }
}
