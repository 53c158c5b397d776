//! The sweep's repairs, done only under `observer.policy = "repair"` (and
//! never by a dry run): the host steps first ([`on_host`]: a re-adoption, a
//! bridge or a tap made again), then, inside the record's write, the state
//! each repair gives its VM ([`apply`]). A repair never deletes a disk or
//! any other file, never kills a process, and never touches a VM another
//! mutation holds.

use std::collections::HashMap;

use sea_orm::EntityTrait;

use super::judge::{self, Drift, Repair};
use crate::{
    coherence::Finding,
    context::Ctx,
    error::{ApiError, ApiResult},
    events::Writer,
    host::{Adoption, NetworkAction},
    network::{self, Network},
    operation::OperationKind,
    vm::{self, VmState},
};

/// What a repair's host step gave.
#[derive(Debug)]
pub enum HostRepair {
    Adopted(Adoption),
    Done(String),
}

/// The host steps of repairs, taken before the write: a re-adoption under
/// the VM's lock (never waiting for it), a bridge or tap made again. What
/// each gave, by subject.
pub async fn on_host(
    app: &Ctx,
    networks: &[Network],
    drifts: &[Drift],
) -> HashMap<String, Result<HostRepair, String>> {
    let mut done = HashMap::new();
    // Bridges first: a tap is enslaved to its bridge.
    let mut ordered: Vec<&Drift> = drifts.iter().collect();
    ordered.sort_by_key(|d| !matches!(d.repair, Some(Repair::EnsureNetwork)));
    for drift in ordered {
        let subject = &drift.finding.subject_id;
        if done.contains_key(subject) {
            continue;
        }
        let result = match &drift.repair {
            Some(Repair::Adopt { pid }) => {
                let Some(_guard) = app
                    .locks
                    .try_lock(subject, super::SWEEP_HOLDER, OperationKind::CoherenceRepair)
                else {
                    continue;
                };
                async {
                    let vm = vm::model::Entity::find_by_id(subject.clone())
                        .one(&app.db)
                        .await?
                        .ok_or_else(|| ApiError::not_found("VM", subject))?;
                    let spec = vm::spec(app, &vm).await?;
                    Ok::<_, ApiError>(HostRepair::Adopted(app.hypervisor.adopt(&spec).await?))
                }
                .await
                .map_err(|e| format!("re-adopting QEMU pid {pid} failed: {e}"))
            }
            Some(Repair::EnsureNetwork) => {
                let Some(net) = networks.iter().find(|n| &n.id == subject) else {
                    continue;
                };
                app.network
                    .execute(&network::ensure_action(net))
                    .await
                    .map(|_| HostRepair::Done(format!("made bridge {} again, up", net.bridge)))
                    .map_err(|e| format!("making bridge {} failed: {e}", net.bridge))
            }
            Some(Repair::MakeTapAgain { tap, bridge }) => ensure_tap(app, tap, bridge)
                .await
                .map(|_| {
                    HostRepair::Done(format!(
                        "made tap {tap} again on {bridge}; QEMU still holds the deleted one, so the NIC carries traffic again only once it is re-attached or the VM restarts"
                    ))
                }),
            Some(Repair::PutTapBack { tap, bridge }) => ensure_tap(app, tap, bridge)
                .await
                .map(|_| HostRepair::Done(format!("put tap {tap} back on {bridge}"))),
            // Changes to the database only: made in the write.
            Some(Repair::MarkCrashed) | Some(Repair::SyncState(_)) | None => continue,
        };
        if let Err(e) = &result {
            tracing::debug!(subject = %subject, "{e}");
        }
        done.insert(subject.clone(), result);
    }
    done
}

async fn ensure_tap(app: &Ctx, tap: &str, bridge: &str) -> Result<(), String> {
    app.network
        .execute(&NetworkAction::EnsureTap {
            tap: tap.to_string(),
            bridge: bridge.to_string(),
        })
        .await
        .map(|_| ())
        .map_err(|e| format!("repairing tap {tap} failed: {e}"))
}

/// Moves a VM to `to`, through `UNKNOWN` when the state machine has no direct edge.
async fn move_to(w: &mut Writer<'_>, vm_id: &str, to: VmState, reason: &str) -> ApiResult<()> {
    let vm = crate::events::find_in::<vm::model::Entity, _>(w.txn(), "VM", vm_id).await?;
    if vm.state != to && !vm.state.can_become(to) {
        vm::transition(w, vm_id, VmState::Unknown, reason, None).await?;
    }
    vm::transition(w, vm_id, to, reason, None).await?;
    Ok(())
}

/// Applies one repair inside the write; the action taken, or None when it
/// could not be done (the issue then stays open).
pub async fn apply(
    w: &mut Writer<'_>,
    finding: &Finding,
    repair: &Repair,
    on_host: Option<&Result<HostRepair, String>>,
    crashed: &mut Vec<String>,
) -> ApiResult<Option<String>> {
    let vm_id = &finding.subject_id;
    Ok(match repair {
        Repair::MarkCrashed => {
            crashed.push(vm_id.clone());
            move_to(
                w,
                vm_id,
                VmState::Crashed,
                "repaired by the coherence sweep: its QEMU is gone",
            )
            .await?;
            Some("marked the VM CRASHED".into())
        }
        Repair::SyncState(to) => {
            move_to(
                w,
                vm_id,
                *to,
                &format!("repaired by the coherence sweep: state re-synced from QMP ({to})"),
            )
            .await?;
            Some(format!("set the VM's state to {to}, as QMP reports"))
        }
        Repair::EnsureNetwork | Repair::MakeTapAgain { .. } | Repair::PutTapBack { .. } => {
            match on_host {
                Some(Ok(HostRepair::Done(action))) => Some(action.clone()),
                Some(Ok(HostRepair::Adopted(_))) | Some(Err(_)) | None => None,
            }
        }
        Repair::Adopt { pid } => match on_host {
            Some(Ok(HostRepair::Adopted(Adoption::Running {
                pid,
                status,
                running,
                ..
            }))) => {
                let to = judge::qmp_state(*running);
                move_to(
                    w,
                    vm_id,
                    to,
                    &format!(
                        "repaired by the coherence sweep: re-adopted QEMU pid {pid} ({status})"
                    ),
                )
                .await?;
                Some(format!("re-adopted QEMU pid {pid}; the VM is {to}"))
            }
            Some(Ok(HostRepair::Adopted(Adoption::NotRunning))) => {
                tracing::info!(vm = %vm_id, pid, "the QEMU to re-adopt is gone");
                None
            }
            Some(Err(e)) => {
                tracing::debug!(vm = %vm_id, "{e}");
                None
            }
            Some(Ok(HostRepair::Done(_))) | None => None,
        },
    })
}

/// What a VM the sweep marked crashed held on the host goes with it, as after
/// a crash the push path saw: its pending detaches and its taps.
pub async fn release_crashed(app: &Ctx, crashed: &[String]) -> ApiResult<()> {
    for vm_id in crashed {
        vm::qemu_gone(app, vm_id).await?;
    }
    Ok(())
}
