//! Re-adoption: after a vman restart, takes over the VMs whose QEMU still
//! runs. It never kills or restarts anything; what it cannot adopt is
//! recorded on the VM and kept in [`AdoptionProblems`] for `health`.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::{VmState, model, set_reason, set_state, spec};
use crate::{context::Ctx, error::ApiError};

/// What could not be re-adopted at start (never silently dropped).
#[derive(Default)]
pub struct AdoptionProblems(std::sync::Mutex<Vec<String>>);

impl AdoptionProblems {
    fn push(&self, problem: String) {
        self.0.lock().expect("adoption problems").push(problem);
    }

    pub fn list(&self) -> Vec<String> {
        self.0.lock().expect("adoption problems").clone()
    }
}

/// After a vman restart: takes over every VM the database says is live, and
/// sets its state from what QEMU reports. Nothing is killed or restarted; what
/// cannot be adopted is recorded in the VM's state reason and in `health`.
pub async fn adopt_all(app: &Ctx, problems: &AdoptionProblems) {
    report_orphan_run_dirs(app, problems).await;
    let live = match model::Entity::find()
        .filter(model::Column::HostId.eq(&*app.host_id))
        .filter(model::Column::State.is_in([
            VmState::Starting,
            VmState::Running,
            VmState::Paused,
            VmState::Stopping,
            VmState::Unknown,
        ]))
        .all(&app.db)
        .await
    {
        Ok(vms) => vms,
        Err(e) => {
            tracing::error!(error = %e, "reading VMs to re-adopt");
            return;
        }
    };
    for vm in live {
        let outcome = match spec(app, &vm).await {
            Ok(spec) => app.hypervisor.adopt(&spec).await.map_err(ApiError::from),
            Err(e) => Err(e),
        };
        let (to, reason) = match outcome {
            Ok(crate::host::Adoption::Running {
                pid,
                status,
                running,
                console_problem,
            }) => {
                tracing::info!(vm = %vm.name, pid, %status, "re-adopted a running VM");
                if let Some(why) = console_problem {
                    // Adopted all the same; only `vmConsole` and
                    // `sendConsoleInput` fail, saying why.
                    let problem = format!("VM {} ({}): {why}", vm.name, vm.id);
                    tracing::warn!("re-adopted without a console: {problem}");
                    problems.push(problem);
                }
                let to = if running {
                    VmState::Running
                } else {
                    VmState::Paused
                };
                (
                    to,
                    format!("re-adopted after a vman restart (QEMU pid {pid}, {status})"),
                )
            }
            Ok(crate::host::Adoption::NotRunning) => {
                tracing::warn!(vm = %vm.name, was = %vm.state, "VM was live but its QEMU is gone");
                (
                    VmState::Crashed,
                    format!("QEMU was not running when vman started (was {})", vm.state),
                )
            }
            Err(e) => {
                let problem = format!("VM {} ({}): {e}", vm.name, vm.id);
                tracing::error!("could not re-adopt {problem}");
                problems.push(problem);
                (VmState::Unknown, format!("could not re-adopt: {e}"))
            }
        };
        let recorded = if vm.state.can_become(to) {
            set_state(app, &vm.id, to, &reason, None).await.map(|_| ())
        } else {
            // Same state as before the restart: no state change to journal, but
            // the reason says the VM was taken over.
            set_reason(app, &vm.id, &reason).await
        };
        if let Err(e) = recorded {
            tracing::error!(vm = %vm.name, error = %e, "recording re-adoption");
        }
    }
}

/// Run directories with no VM row: reported, never removed (a QEMU may still use one).
async fn report_orphan_run_dirs(app: &Ctx, problems: &AdoptionProblems) {
    let Ok(entries) = std::fs::read_dir(app.config.run_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        match model::Entity::find_by_id(name.clone()).one(&app.db).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                let problem = format!(
                    "run directory {} belongs to no VM; left alone",
                    entry.path().display()
                );
                tracing::warn!("{problem}");
                problems.push(problem);
            }
            Err(e) => tracing::error!(error = %e, "checking run directories"),
        }
    }
}
