//! The observer: keeps each VM's observed state in step with what the host
//! reports on its own, at once — a QEMU that exits (pidfd), a guest that shuts
//! down, a VM paused or resumed behind vman's back.
//!
//! What a mutation does, the mutation records (with its operation id); the
//! observer records what nobody asked for. So it leaves a VM alone while a
//! lifecycle mutation holds it, except for an exit nobody requested: that is a
//! crash, and it is recorded with the exit status and the last log lines.
//!
//! Behind it runs the periodic coherence sweep ([`sweep`]): what the push
//! path cannot see (a QMP gone silent, orphans, disk files, a QEMU of a
//! stopped VM) it finds by comparing the database with the host.

pub mod sweep;

use std::{collections::HashSet, sync::Arc};

use serde_json::json;
use tokio::sync::broadcast;

use crate::{
    context::Ctx,
    error::ApiResult,
    host::{HostEvent, QmpEvent},
    vm::{self, VmState},
};

/// The observer's own state: the context it writes through, and the lock
/// that keeps coherence sweeps (periodic or asked for) one at a time.
pub struct Observer {
    ctx: Ctx,
    sweep_lock: tokio::sync::Mutex<()>,
}

impl Observer {
    pub fn new(ctx: Ctx) -> Observer {
        Observer {
            ctx,
            sweep_lock: Default::default(),
        }
    }

    /// Starts watching the hypervisor's events until `ctx.cancel` fires.
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        spawn(self.ctx.clone())
    }

    /// Runs the coherence sweep every `observer.interval` until `ctx.cancel` fires.
    pub fn spawn_sweeps(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        spawn_sweeps(self)
    }

    /// Runs one coherence sweep now (after any sweep already running).
    pub async fn sweep(&self) -> ApiResult<sweep::SweepReport> {
        let _one_at_a_time = self.sweep_lock.lock().await;
        sweep::sweep(&self.ctx)
            .await
            .map_err(|e| e.locate(&self.ctx.config))
    }
}

fn spawn(app: Ctx) -> tokio::task::JoinHandle<()> {
    let mut events = app.hypervisor.events();
    tokio::spawn(async move {
        // VMs whose guest announced a shutdown: their exit is not a crash.
        let mut shutting_down = HashSet::new();
        loop {
            let event = tokio::select! {
                _ = app.cancel.cancelled() => return,
                event = events.recv() => event,
            };
            match event {
                Ok(event) => {
                    if let Err(e) = handle(&app, &mut shutting_down, event).await {
                        tracing::error!(error = %e, "observer: recording a host event");
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "observer: host events were dropped");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

fn spawn_sweeps(observer: Arc<Observer>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let app = &observer.ctx;
        let mut ticks = tokio::time::interval(app.config.observer.interval);
        // A slow sweep delays the next one; sweeps never pile up.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = app.cancel.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match observer.sweep().await {
                Ok(report) => {
                    if !report.opened.is_empty() || !report.resolved.is_empty() {
                        tracing::info!(
                            opened = report.opened.len(),
                            resolved = report.resolved.len(),
                            took_ms = report.took.as_millis() as u64,
                            "coherence sweep"
                        );
                    }
                }
                Err(e) => tracing::error!(error = %e, "coherence sweep failed"),
            }
        }
    })
}

async fn handle(
    app: &Ctx,
    shutting_down: &mut HashSet<String>,
    event: HostEvent,
) -> crate::error::ApiResult<()> {
    match event {
        HostEvent::Qmp { vm_id, event, data } => {
            if event == QmpEvent::Shutdown {
                shutting_down.insert(vm_id.clone());
            }
            // A mutation in flight records its own changes, with its operation id.
            if app.locks.holder(&vm_id).is_some() {
                return Ok(());
            }
            let Some(vm) = current(app, &vm_id).await? else {
                return Ok(());
            };
            match (event, vm.state) {
                (QmpEvent::Stop, VmState::Running) => {
                    let reason = format!(
                        "paused by QEMU ({})",
                        data.get("reason")
                            .and_then(|r| r.as_str())
                            .unwrap_or("STOP event")
                    );
                    vm::set_state(app, &vm_id, VmState::Paused, &reason, None).await?;
                }
                (QmpEvent::Resume, VmState::Paused | VmState::Unknown) => {
                    vm::set_state(
                        app,
                        &vm_id,
                        VmState::Running,
                        "resumed by QEMU (RESUME event)",
                        None,
                    )
                    .await?;
                }
                // In any other state a pause or resume changes nothing; a
                // shutdown is for the exit that follows.
                (QmpEvent::Stop | QmpEvent::Resume, _) => {}
                (QmpEvent::Shutdown | QmpEvent::Other(_), _) => {}
            }
        }
        HostEvent::QmpClosed { .. } => {
            // An exit follows within milliseconds when QEMU died; a QMP that
            // closes while QEMU lives is connected again by the hypervisor
            // (QmpReconnected follows), and meanwhile the coherence sweep
            // judges a silent QMP.
        }
        HostEvent::QmpReconnected {
            vm_id,
            status,
            running,
        } => {
            if app.locks.holder(&vm_id).is_some() {
                return Ok(());
            }
            let Some(vm) = current(app, &vm_id).await? else {
                return Ok(());
            };
            // QEMU's word on its run state is the truth for a QEMU that
            // lives: a STOP or RESUME may have been missed meanwhile.
            let seen = crate::observer::sweep::qmp_state(running);
            if matches!(
                vm.state,
                VmState::Unknown | VmState::Running | VmState::Paused
            ) && vm.state != seen
            {
                let reason = format!("QMP connected again (status {status})");
                vm::set_state(app, &vm_id, seen, &reason, None).await?;
            }
        }
        HostEvent::Exited {
            vm_id,
            status,
            qemu_log,
            serial_log,
        } => {
            let shut_down = shutting_down.remove(&vm_id);
            let Some(vm) = current(app, &vm_id).await? else {
                return Ok(());
            };
            // A requested stop or a start in progress is recorded by its mutation.
            let in_hand = matches!(vm.state, VmState::Starting | VmState::Stopping)
                || vm.desired_state == VmState::Stopped;
            let was_live = vm.state.is_live() || vm.state == VmState::Unknown;
            if in_hand || !was_live {
                return Ok(());
            }
            let (to, reason) = if shut_down {
                (VmState::Stopped, "guest powered off".to_string())
            } else {
                (
                    VmState::Crashed,
                    format!("QEMU exited unexpectedly: {status}"),
                )
            };
            let mut w = app.bus.writer().await?;
            vm::transition_with(
                &mut w,
                &vm_id,
                to,
                &reason,
                None,
                json!({"exit": status, "qemuLog": qemu_log, "serialLog": serial_log}),
            )
            .await?;
            w.commit().await?;
            vm::qemu_gone(app, &vm_id).await?;
        }
    }
    Ok(())
}

async fn current(app: &Ctx, vm_id: &str) -> crate::error::ApiResult<Option<vm::Vm>> {
    use sea_orm::EntityTrait;
    Ok(vm::model::Entity::find_by_id(vm_id.to_string())
        .one(&app.db)
        .await?)
}
