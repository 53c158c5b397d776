//! The narrow context every service takes: what a mutation may touch (the
//! database, the event writer, the per-VM locks, the host ports, the config)
//! and nothing of the composition root. It is cheap to clone (every field is
//! shared), so a background task takes its own copy.
//!
//! It must never grow state of its own: what belongs to one part (adoption
//! problems, the sweep lock) stays in that part. The one per-request field is
//! the actor, set where a request's principal is known (`api::http`, the
//! websocket's `connection_init`).

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    events::EventBus,
    host::{HostNetwork, Hypervisor},
    vm::lock::VmLocks,
};

#[derive(Clone)]
pub struct Ctx {
    pub config: Arc<Config>,
    pub db: DatabaseConnection,
    /// Every write goes through the bus: one transaction, its events journaled.
    pub bus: Arc<EventBus>,
    pub hypervisor: Arc<dyn Hypervisor>,
    pub network: Arc<dyn HostNetwork>,
    /// One mutation at a time per VM (and per disk).
    pub locks: Arc<VmLocks>,
    /// The long operations running now: their progress and their cancel.
    /// Shared like the locks: a background task reports, a resolver reads.
    pub long: Arc<crate::operation::progress::LongOperations>,
    /// Ends the server, subscriptions and background tasks.
    pub cancel: CancellationToken,
    /// Who the operations recorded through this context are done for: an
    /// API token's name, `local` without auth, `vman` for vman's own work.
    pub actor: Arc<str>,
    /// This node's host (`cluster`): the VMs and operations it runs.
    pub host_id: Arc<str>,
}

impl Ctx {
    /// The same context, doing what `actor` asked.
    pub fn acting_as(&self, actor: &str) -> Ctx {
        Ctx {
            actor: actor.into(),
            ..self.clone()
        }
    }
}
