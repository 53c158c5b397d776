//! A VM's QEMU from start to stop: spawning it and waiting for its QMP
//! socket, connecting its console, the stop ladder (ACPI power button, `quit`, SIGKILL), and
//! re-adopting a QEMU that outlived a vman restart.
//!
//! A start that fails kills the QEMU it spawned, so no half-started VM is
//! left running. Adoption trusts a pid only when its command line carries
//! the VM's `-uuid`: a recycled pid is never signalled or tracked.

use std::{path::Path, sync::Arc, time::Duration};

use super::{
    QemuHypervisor, argv, console,
    files::{prepare_run_dir, restrict},
    plan::step_qmp,
    process::{self, QemuProcess},
    qmp::{self, QmpClient},
    running::Seen,
    seed,
};
use crate::host::{Adoption, HostError, HostStep, Outcome, StopRequest, StopRung, VmSpec};

/// How long a started QEMU may take to open its QMP socket.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long QEMU may take to exit after `quit`, a guest shutdown or SIGKILL.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

impl QemuHypervisor {
    /// Spawns the VM's QEMU as `steps` (its plan) say, waits for its QMP
    /// socket and lets the guest run (`cont`).
    pub(super) async fn start(
        self: &Arc<Self>,
        spec: &VmSpec,
        steps: Vec<HostStep>,
    ) -> Result<Outcome, HostError> {
        if let Some(vm) = self.get(&spec.id)
            && !vm.process.has_exited()
        {
            return Err(HostError::Failed(format!(
                "VM {} already has a QEMU process (pid {})",
                spec.id, vm.process.pid
            )));
        }
        prepare_run_dir(&spec.run_dir)?;
        if let Some(seed) = &spec.seed {
            seed::write(&argv::seed_image(&spec.run_dir), seed)?;
        }
        let Some(argv) = steps.iter().find_map(|step| match step {
            HostStep::SpawnQemu { argv, .. } => Some(argv),
            _ => None,
        }) else {
            unreachable!("plan(Start) spawns QEMU")
        };
        let log = argv::qemu_log(&spec.run_dir);
        let process = process::spawn(argv, &log).map_err(|source| HostError::Io {
            what: format!("starting {}", self.options.binary.display()),
            source,
        })?;
        let socket = argv::qmp_socket(&spec.run_dir);
        let qmp = match connect_when_ready(&process, &socket, &log).await {
            Ok(qmp) => qmp,
            Err(e) => {
                let _ = process.kill();
                let _ = tokio::time::timeout(EXIT_TIMEOUT, process.exited()).await;
                return Err(e);
            }
        };
        restrict(&socket, 0o600);
        // Before the guest runs, so the console has all its output.
        let console = match console::connect(&spec.run_dir, &qmp).await {
            Ok(console) => console,
            Err(e) => {
                let _ = process.kill();
                let _ = tokio::time::timeout(EXIT_TIMEOUT, process.exited()).await;
                return Err(e);
            }
        };
        let vm = self.track(spec, process, qmp, Ok(console));
        if let Err(e) = vm
            .qmp()
            .execute(qapi::qmp::cont {}, qmp::COMMAND_TIMEOUT)
            .await
        {
            let _ = vm.process.kill();
            return Err(e);
        }
        Ok(Outcome {
            steps,
            ..Default::default()
        })
    }

    pub(super) async fn stop(
        &self,
        vm_id: &str,
        request: &StopRequest,
    ) -> Result<Outcome, HostError> {
        let (force, timeout) = (request.force, Duration::from_millis(request.timeout_ms));
        let Some(vm) = self.get(vm_id) else {
            // Nothing runs: the VM is already stopped.
            return Ok(Outcome::default());
        };
        let mut steps = Vec::new();
        let gone = |s: &Seen| s.exited.is_some();
        let mut rung = None;
        if !force {
            steps.push(step_qmp(vm_id, "system_powerdown"));
            match vm
                .qmp_ready()
                .await
                .execute(qapi::qmp::system_powerdown {}, qmp::COMMAND_TIMEOUT)
                .await
            {
                Ok(_) => {
                    if vm.wait(timeout, |s| s.shutdown || s.exited.is_some()).await
                        && vm.wait(EXIT_TIMEOUT, gone).await
                    {
                        rung = Some(StopRung::GuestShutdown);
                    }
                }
                Err(e) => {
                    tracing::warn!(vm = vm_id, error = %e, "system_powerdown failed; quitting QEMU")
                }
            }
        }
        if rung.is_none() {
            steps.push(step_qmp(vm_id, "quit"));
            // A reply or EOF: either way QEMU is on its way out.
            let _ = vm
                .qmp_ready()
                .await
                .execute(qapi::qmp::quit {}, qmp::COMMAND_TIMEOUT)
                .await;
            if vm.wait(EXIT_TIMEOUT, gone).await {
                rung = Some(StopRung::Quit);
            }
        }
        if rung.is_none() {
            steps.push(HostStep::Signal {
                vm_id: vm_id.to_string(),
                signal: "SIGKILL".into(),
            });
            vm.process.kill().map_err(|source| HostError::Io {
                what: format!("killing QEMU of VM {vm_id}"),
                source,
            })?;
            if !vm.wait(EXIT_TIMEOUT, gone).await {
                return Err(HostError::Timeout(format!(
                    "QEMU of VM {vm_id} (pid {}) did not exit after SIGKILL",
                    vm.process.pid
                )));
            }
            rung = Some(StopRung::Kill);
        }
        self.vms.lock().expect("vm map").remove(vm_id);
        for file in [
            argv::qmp_socket(&vm.run_dir),
            argv::console_socket(&vm.run_dir),
            argv::pid_file(&vm.run_dir),
        ] {
            let _ = std::fs::remove_file(file);
        }
        Ok(Outcome {
            steps,
            stop_rung: rung,
            ..Default::default()
        })
    }

    pub(super) async fn adopt_vm(self: &Arc<Self>, spec: &VmSpec) -> Result<Adoption, HostError> {
        if self.get(&spec.id).is_some() {
            return Err(HostError::Failed(format!(
                "VM {} is already tracked",
                spec.id
            )));
        }
        let Some(pid) = process::read_pidfile(&argv::pid_file(&spec.run_dir)) else {
            return Ok(Adoption::NotRunning);
        };
        if !process::is_alive(pid) {
            return Ok(Adoption::NotRunning);
        }
        if !process::is_qemu_of(pid, &spec.id) {
            return Err(HostError::Failed(format!(
                "pid {pid} in {} is not the QEMU of VM {} (its command line lacks -uuid {}); left alone",
                argv::pid_file(&spec.run_dir).display(),
                spec.id,
                spec.id
            )));
        }
        let process = QemuProcess::open(pid, false).map_err(|source| HostError::Io {
            what: format!("opening a pidfd for pid {pid}"),
            source,
        })?;
        let qmp = QmpClient::connect(&argv::qmp_socket(&spec.run_dir)).await?;
        let status = qmp.status().await?;
        // A VM without a console is still adopted: everything else works.
        let console = console::connect(&spec.run_dir, &qmp)
            .await
            .map_err(|e| format!("its console is not connected: {e}"));
        let console_problem = console.as_ref().err().cloned();
        self.track(spec, process, qmp, console);
        Ok(Adoption::Running {
            pid,
            status: qmp::run_state_name(&status.status),
            running: status.running,
            console_problem,
        })
    }
}

/// Waits for QEMU to open its QMP socket, failing early (with its log) if it exits.
async fn connect_when_ready(
    process: &QemuProcess,
    socket: &Path,
    log: &Path,
) -> Result<QmpClient, HostError> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if process.has_exited() {
            return Err(HostError::Failed(format!(
                "QEMU exited during start: {}",
                process::tail(log, 10)
            )));
        }
        if socket.exists() {
            match QmpClient::connect(socket).await {
                Ok(qmp) => return Ok(qmp),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => {}
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HostError::Timeout(format!(
                "QEMU did not open {} within {START_TIMEOUT:?}",
                socket.display()
            )));
        }
        // QEMU creates the socket within milliseconds of starting; poll briefly.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
