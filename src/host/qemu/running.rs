//! The QEMUs vman tracks: one [`RunningVm`] per VM, in the hypervisor's
//! table, and the two tasks that watch each (its QMP events, its pidfd).
//! Each also has its console ([`super::console`]), whose tasks end with the
//! connection when QEMU exits.
//!
//! What the watchers see is kept in [`Seen`] for the code that waits on it
//! (a stop, an unplug) and sent on as [`HostEvent`]s for the observer. A VM
//! leaves the table when its QEMU exits; the watchers never act on a VM
//! (stop, kill, restart): they only report.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use serde_json::json;
use tokio::sync::{Notify, broadcast};

use super::{
    QemuHypervisor, argv,
    process::{self, ExitStatus, QemuProcess},
    qmp::{QmpClient, QmpNotice},
};
use crate::host::{HostError, HostEvent, QmpEvent, VmSpec, console::Console};

/// What the watchers of one VM have seen.
#[derive(Default)]
pub(super) struct Seen {
    pub(super) shutdown: bool,
    pub(super) exited: Option<ExitStatus>,
    qmp_closed: bool,
    deleted_devices: HashSet<String>,
}

/// A QEMU vman owns: its process, its QMP connection, its console and what
/// they reported.
pub(super) struct RunningVm {
    pub(super) vm_id: String,
    pub(super) run_dir: PathBuf,
    pub(super) process: QemuProcess,
    pub(super) qmp: QmpClient,
    /// Its serial console, or why vman holds none (an adopted QEMU an older
    /// vman started has no console socket).
    pub(super) console: Result<Arc<Console>, String>,
    /// Root ports a hot-plugged disk may use (cold disks took the first ones).
    pub(super) ports: u32,
    pub(super) seen: Mutex<Seen>,
    changed: Notify,
}

impl RunningVm {
    /// Waits until `done` holds or `timeout` passes; true when it held.
    pub(super) async fn wait(&self, timeout: Duration, done: impl Fn(&Seen) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&self.seen.lock().expect("vm watch")) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return done(&self.seen.lock().expect("vm watch"));
            }
        }
    }

    /// Waits up to `timeout` for the guest to let go of `device`
    /// (`DEVICE_DELETED`), or for QEMU to exit; true when one happened.
    pub(super) async fn released(&self, device: &str, timeout: Duration) -> bool {
        self.wait(timeout, |s| {
            s.deleted_devices.contains(device) || s.exited.is_some()
        })
        .await
    }

    fn update(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.seen.lock().expect("vm watch"));
        self.changed.notify_waiters();
    }
}

impl QemuHypervisor {
    pub(super) fn get(&self, vm_id: &str) -> Option<Arc<RunningVm>> {
        self.vms.lock().expect("vm map").get(vm_id).cloned()
    }

    pub(super) fn running(&self, vm_id: &str) -> Result<Arc<RunningVm>, HostError> {
        self.get(vm_id)
            .ok_or_else(|| HostError::Failed(format!("VM {vm_id} has no QEMU process")))
    }

    /// Registers a VM's QEMU (just started or adopted) and starts the tasks
    /// that watch its QMP events and its process. The console's own tasks
    /// run already ([`super::console::connect`]).
    pub(super) fn track(
        self: &Arc<Self>,
        spec: &VmSpec,
        process: QemuProcess,
        qmp: QmpClient,
        console: Result<Arc<Console>, String>,
    ) -> Arc<RunningVm> {
        let vm = Arc::new(RunningVm {
            vm_id: spec.id.clone(),
            run_dir: spec.run_dir.clone(),
            process,
            qmp,
            console,
            ports: argv::root_ports(spec, &self.options),
            seen: Mutex::default(),
            changed: Notify::new(),
        });
        self.exited.lock().expect("exits").remove(&vm.vm_id);
        self.vms
            .lock()
            .expect("vm map")
            .insert(vm.vm_id.clone(), vm.clone());
        // Subscribed here, not in the task: an event QEMU sends before the
        // task first runs must not be lost.
        let notices = vm.qmp.notices();
        tokio::spawn(watch_qmp(vm.clone(), notices, self.events.clone()));
        tokio::spawn(watch_process(vm.clone(), Arc::downgrade(self)));
        vm
    }
}

/// Notes what a stop or an unplug waits for and passes every QMP event on,
/// until the connection ends.
async fn watch_qmp(
    watched: Arc<RunningVm>,
    mut notices: broadcast::Receiver<QmpNotice>,
    events: broadcast::Sender<HostEvent>,
) {
    loop {
        match notices.recv().await {
            Ok(QmpNotice::Event(event)) => {
                let (name, data) = event_parts(&event);
                match event.as_ref() {
                    qapi::qmp::Event::SHUTDOWN { .. } => watched.update(|s| s.shutdown = true),
                    qapi::qmp::Event::DEVICE_DELETED { data, .. } => {
                        if let Some(device) = &data.device {
                            let device = device.clone();
                            watched.update(|s| {
                                s.deleted_devices.insert(device);
                            });
                        }
                    }
                    _ => {}
                }
                let event = match event.as_ref() {
                    qapi::qmp::Event::SHUTDOWN { .. } => QmpEvent::Shutdown,
                    qapi::qmp::Event::STOP { .. } => QmpEvent::Stop,
                    qapi::qmp::Event::RESUME { .. } => QmpEvent::Resume,
                    _ => QmpEvent::Other(name),
                };
                let _ = events.send(HostEvent::Qmp {
                    vm_id: watched.vm_id.clone(),
                    event,
                    data,
                });
            }
            Ok(QmpNotice::Closed) | Err(broadcast::error::RecvError::Closed) => {
                watched.update(|s| s.qmp_closed = true);
                let _ = events.send(HostEvent::QmpClosed {
                    vm_id: watched.vm_id.clone(),
                });
                return;
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(vm = %watched.vm_id, missed = n, "QMP events were dropped");
            }
        }
    }
}

/// Waits for QEMU's exit, then takes the VM out of the table and reports the
/// exit with the tails of its logs. Holds the hypervisor weakly: a dropped
/// hypervisor reports nothing.
async fn watch_process(watched: Arc<RunningVm>, hypervisor: Weak<QemuHypervisor>) {
    let status = watched.process.exited().await;
    watched.update(|s| s.exited = Some(status.clone()));
    if let Some(this) = hypervisor.upgrade() {
        this.exited
            .lock()
            .expect("exits")
            .insert(watched.vm_id.clone(), std::time::Instant::now());
        this.vms.lock().expect("vm map").remove(&watched.vm_id);
        let _ = this.events.send(HostEvent::Exited {
            vm_id: watched.vm_id.clone(),
            status: status.to_string(),
            qemu_log: process::tail(&argv::qemu_log(&watched.run_dir), 20),
            serial_log: process::tail(&argv::serial_log(&watched.run_dir), 20),
        });
    }
}

fn event_parts(event: &qapi::qmp::Event) -> (String, serde_json::Value) {
    let value = serde_json::to_value(event).unwrap_or_default();
    let name = value
        .get("event")
        .and_then(|n| n.as_str())
        .unwrap_or("UNKNOWN")
        .to_string();
    (name, value.get("data").cloned().unwrap_or(json!({})))
}
