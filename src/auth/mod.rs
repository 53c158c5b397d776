//! Who is asking, and what they may do.
//!
//! A [`Principal`] is resolved once per HTTP request and once per websocket
//! connection ([`http`], [`Auth::admit_connection`]) and handed to
//! async-graphql as request data. What each role may do is decided in one
//! place, the [`guard`] extension, from one table ([`guard::required_role`]).
//!
//! With `auth.mode = "token"`, a principal is an API token ([`token`]): a
//! random secret of which only a hash is stored. With `auth.mode = "none"`
//! (allowed only on a loopback listen address) every caller is `local`, an
//! admin.

pub mod graphql;
pub mod guard;
pub mod http;
pub mod token;

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sea_orm::{DatabaseConnection, entity::prelude::*};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{AuthMode, Config},
    error::{ApiError, ApiResult},
};

/// The actor of what a caller does without auth (`auth.mode = "none"`).
pub const LOCAL: &str = "local";
/// The actor of what vman does by itself (the sweep's repairs, ending
/// interrupted operations).
pub const VMAN: &str = "vman";

/// What a principal may do; each role may do all that the ones below it may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    EnumIter,
    DeriveActiveEnum,
    Serialize,
    Deserialize,
    async_graphql::Enum,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads and subscribes.
    #[sea_orm(string_value = "viewer")]
    Viewer,
    /// Also runs the lifecycle of VMs, disks and NICs.
    #[sea_orm(string_value = "operator")]
    Operator,
    /// Also manages templates, images, networks, API tokens and coherence sweeps.
    #[sea_orm(string_value = "admin")]
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role {s:?}: one of viewer, operator, admin"
            )),
        }
    }
}

/// Who is asking: a token, or `local` without auth.
#[derive(Debug, Clone)]
pub struct Principal {
    /// What operations record as their actor: the token's name, or `local`.
    pub actor: String,
    pub role: Role,
    /// The token's id; `None` for `local`.
    pub token_id: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl Principal {
    /// Every caller when `auth.mode = "none"`.
    pub fn local() -> Principal {
        Principal {
            actor: LOCAL.into(),
            role: Role::Admin,
            token_id: None,
            expires_at: None,
        }
    }
}

/// Tokens in use by live websocket connections: what ends them when their
/// token is revoked or expires.
struct LiveToken {
    ends: CancellationToken,
    connections: usize,
}

/// Authentication for one serving vman: the mode, the token store, the live
/// connections of each token and the per-token request rate.
pub struct Auth {
    mode: AuthMode,
    db: DatabaseConnection,
    live: Mutex<HashMap<String, LiveToken>>,
    rate: Option<DefaultKeyedRateLimiter<String>>,
    max_connections: usize,
}

/// Why a caller is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No token, or one vman does not know (or that expired): 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known token over one of its limits: 429, retry after this long.
    #[error("too many requests for this token; retry in {}s", .0.as_secs().max(1))]
    RateLimited(Duration),
    /// A known token with too many live websocket connections.
    #[error("too many websocket connections for this token (at most {0})")]
    TooManyConnections(usize),
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated(_) => "UNAUTHENTICATED",
            Refusal::RateLimited(_) | Refusal::TooManyConnections(_) => "RATE_LIMITED",
        }
    }
}

/// A websocket connection's hold on its token: counted while it lives;
/// `ends` fires when the token is revoked or expires.
pub struct Admission {
    pub principal: Principal,
    pub ends: CancellationToken,
    release: Option<(Arc<Auth>, String)>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((auth, token_id)) = self.release.take() {
            let mut live = auth.live.lock().expect("live tokens lock");
            if let Some(entry) = live.get_mut(&token_id) {
                entry.connections -= 1;
                if entry.connections == 0 {
                    live.remove(&token_id);
                }
            }
        }
    }
}

/// How often live connections' tokens are checked against the database, so
/// a token revoked by `vman token revoke` (another process) ends them in time.
const LIVE_CHECK: Duration = Duration::from_millis(400);

impl Auth {
    pub fn new(config: &Config, db: DatabaseConnection) -> Auth {
        let rate = NonZeroU32::new(config.limits.requests_per_second)
            .map(|per_second| RateLimiter::keyed(Quota::per_second(per_second)));
        Auth {
            mode: config.auth.mode,
            db,
            live: Mutex::new(HashMap::new()),
            rate,
            max_connections: config.limits.websocket_connections_per_token,
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Who sends `authorization` (an `Authorization` header's value,
    /// `Bearer <secret>`).
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, Refusal> {
        if self.mode == AuthMode::None {
            return Ok(Principal::local());
        }
        let Some(value) = authorization else {
            return Err(Refusal::Unauthenticated(
                "an API token is required: send `Authorization: Bearer <token>` (create one with `vman token create`)".into(),
            ));
        };
        let secret = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                Refusal::Unauthenticated("the Authorization header must be `Bearer <token>`".into())
            })?;
        let found = token::find(&self.db, secret).await.map_err(|e| {
            tracing::error!(error = %e, "looking up an API token");
            Refusal::Unauthenticated("the token could not be checked".into())
        })?;
        match found {
            Some(token) if token.expires_at.is_none_or(|at| at > Utc::now()) => Ok(Principal {
                actor: token.name,
                role: token.role,
                token_id: Some(token.id),
                expires_at: token.expires_at,
            }),
            Some(_) => Err(Refusal::Unauthenticated("the token has expired".into())),
            None => Err(Refusal::Unauthenticated("unknown or revoked token".into())),
        }
    }

    /// Counts one request of `principal` against its token's rate.
    pub fn check_rate(&self, principal: &Principal) -> Result<(), Refusal> {
        let (Some(rate), Some(token_id)) = (&self.rate, &principal.token_id) else {
            return Ok(());
        };
        rate.check_key(token_id).map_err(|not_until| {
            use governor::clock::Clock;
            Refusal::RateLimited(not_until.wait_time_from(rate.clock().now()))
        })
    }

    /// Lets a websocket connection of `principal` in, if its token has room
    /// for one more; the admission ends with the token.
    pub fn admit_connection(self: &Arc<Self>, principal: Principal) -> Result<Admission, Refusal> {
        let Some(token_id) = principal.token_id.clone() else {
            return Ok(Admission {
                principal,
                ends: CancellationToken::new(),
                release: None,
            });
        };
        let mut live = self.live.lock().expect("live tokens lock");
        let entry = live.entry(token_id.clone()).or_insert_with(|| LiveToken {
            ends: CancellationToken::new(),
            connections: 0,
        });
        if entry.connections >= self.max_connections {
            if entry.connections == 0 {
                live.remove(&token_id);
            }
            return Err(Refusal::TooManyConnections(self.max_connections));
        }
        entry.connections += 1;
        let ends = entry.ends.child_token();
        if let Some(at) = principal.expires_at {
            let expiry = ends.clone();
            let left = (at - Utc::now()).to_std().unwrap_or_default();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(left) => expiry.cancel(),
                    _ = expiry.cancelled() => {}
                }
            });
        }
        Ok(Admission {
            principal,
            ends,
            release: Some((self.clone(), token_id)),
        })
    }

    /// Ends the live connections of a token that was just revoked.
    pub fn revoked(&self, token_id: &str) {
        if let Some(entry) = self.live.lock().expect("live tokens lock").get(token_id) {
            entry.ends.cancel();
        }
    }

    /// Ends, within [`LIVE_CHECK`], the connections of tokens revoked
    /// elsewhere (`vman token revoke` writes the database directly). Runs
    /// until `cancel` fires; asks the database only while connections live.
    pub async fn watch_revocations(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(LIVE_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let ids: Vec<String> = self
                .live
                .lock()
                .expect("live tokens lock")
                .keys()
                .cloned()
                .collect();
            if ids.is_empty() {
                continue;
            }
            match token::existing(&self.db, &ids).await {
                Ok(existing) => {
                    for id in ids.iter().filter(|id| !existing.contains(*id)) {
                        self.revoked(id);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "checking live tokens"),
            }
        }
    }
}

/// The error a resolver gives a principal whose role is too low.
pub fn forbidden(principal: Option<&Principal>, field: &str, needs: Role) -> ApiError {
    match principal {
        Some(p) => ApiError::Forbidden(format!(
            "{field} needs the {} role; {} has {}",
            needs.as_str(),
            p.actor,
            p.role.as_str()
        )),
        None => ApiError::Unauthenticated(format!("{field} needs an authenticated caller")),
    }
}

/// Checks a token name: the rules of every name, and not one of the actors
/// vman uses itself.
pub fn check_token_name(name: &str) -> ApiResult<()> {
    crate::validate::name("name", name)?;
    if name == LOCAL || name == VMAN {
        return Err(ApiError::bad_input(format!(
            "name {name:?} is reserved for vman's own actors"
        )));
    }
    Ok(())
}
