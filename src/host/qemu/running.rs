//! The QEMUs vman tracks: one [`RunningVm`] per VM, in the hypervisor's
//! table, and the two tasks that watch each (its QMP events, its pidfd).
//! Each also has its console ([`super::console`]), whose tasks end with the
//! connection when QEMU exits.
//!
//! What the watchers see is kept in [`Seen`] for the code that waits on it
//! (a stop, an unplug) and sent on as [`HostEvent`]s for the observer. A VM
//! leaves the table when its QEMU exits; the watchers never act on a VM
//! (stop, kill, restart): they only report.
//!
//! A QMP connection that closes while its QEMU lives (a peer that reset it,
//! a monitor that dropped its client) is connected again: QEMU's QMP socket
//! accepts a new client once the old one is gone. The watcher retries, from
//! 10 ms up to every 250 ms, until it connects or QEMU exits, asks QEMU its
//! run state (what events were missed meanwhile) and reports both the loss
//! and the return ([`HostEvent::QmpReconnected`]).

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock, Weak},
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

/// The first wait before connecting again to a QMP socket whose connection
/// closed while QEMU lives; it doubles up to [`RECONNECT_MAX`].
const RECONNECT_FIRST: Duration = Duration::from_millis(10);
const RECONNECT_MAX: Duration = Duration::from_millis(250);
/// How long a command waits for a lost QMP connection to be made again.
const RECONNECT_WAIT: Duration = Duration::from_secs(2);

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
    /// Its QMP connection: replaced when a lost one is connected again.
    qmp: RwLock<Arc<QmpClient>>,
    /// Its serial console, or why vman holds none (an adopted QEMU an older
    /// vman started has no console socket).
    pub(super) console: Result<Arc<Console>, String>,
    /// Root ports a hot-plugged disk may use (cold disks took the first ones).
    pub(super) ports: u32,
    pub(super) seen: Mutex<Seen>,
    changed: Notify,
}

impl RunningVm {
    /// Its QMP connection as it is now.
    pub(super) fn qmp(&self) -> Arc<QmpClient> {
        self.qmp.read().expect("qmp client").clone()
    }

    /// Its QMP connection, once connected: a command sent while a lost
    /// connection is being made again waits for it (up to
    /// [`RECONNECT_WAIT`]) instead of failing on the closed one.
    pub(super) async fn qmp_ready(&self) -> Arc<QmpClient> {
        self.wait(RECONNECT_WAIT, |s| !s.qmp_closed || s.exited.is_some())
            .await;
        self.qmp()
    }

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

    /// Waits until `done` holds, however long: only for a watcher that
    /// something else ends (the process's exit).
    async fn until(&self, done: impl Fn(&Seen) -> bool) {
        while !self.wait(Duration::from_secs(3600), &done).await {}
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
            qmp: RwLock::new(Arc::new(qmp)),
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
        let notices = vm.qmp().notices();
        tokio::spawn(watch_qmp(vm.clone(), notices, self.events.clone()));
        tokio::spawn(watch_process(vm.clone(), Arc::downgrade(self)));
        vm
    }
}

/// Notes what a stop or an unplug waits for and passes every QMP event on,
/// connecting again when the connection ends while QEMU lives.
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
                let Some((client, fresh)) = reconnect(&watched).await else {
                    return;
                };
                // Its run state now: what the events missed meanwhile changed.
                let status = client.status().await;
                *watched.qmp.write().expect("qmp client") = Arc::new(client);
                notices = fresh;
                watched.update(|s| s.qmp_closed = false);
                match status {
                    Ok(status) => {
                        tracing::info!(
                            vm = %watched.vm_id,
                            status = %super::qmp::run_state_name(&status.status),
                            "QMP connected again"
                        );
                        let _ = events.send(HostEvent::QmpReconnected {
                            vm_id: watched.vm_id.clone(),
                            status: super::qmp::run_state_name(&status.status),
                            running: status.running,
                        });
                    }
                    // The sweep asks again and judges what it hears.
                    Err(e) => tracing::warn!(
                        vm = %watched.vm_id,
                        error = %e,
                        "QMP connected again but query-status failed"
                    ),
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(vm = %watched.vm_id, missed = n, "QMP events were dropped");
            }
        }
    }
}

/// Connects again to the QMP socket of a QEMU whose connection closed,
/// until it connects (with the connection's notices) or QEMU exits (`None`).
async fn reconnect(watched: &RunningVm) -> Option<(QmpClient, broadcast::Receiver<QmpNotice>)> {
    let socket = argv::qmp_socket(&watched.run_dir);
    let mut delay = RECONNECT_FIRST;
    let mut failures = 0u32;
    loop {
        // A QEMU that exits closes its socket first: its exit comes within
        // milliseconds, and then nothing is to be connected.
        if watched.wait(delay, |s| s.exited.is_some()).await || watched.process.exiting().is_some()
        {
            return None;
        }
        match QmpClient::connect_watched(&socket).await {
            Ok(connected) => return Some(connected),
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(
                        vm = %watched.vm_id,
                        error = %e,
                        "QMP connection lost while QEMU runs; connecting again"
                    );
                }
            }
        }
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

/// Waits for QEMU's exit, then takes the VM out of the table and reports the
/// exit with the tails of its logs. Holds the hypervisor weakly: a dropped
/// hypervisor reports nothing.
///
/// The exit is reported as soon as it is certain: when QMP's connection
/// closes and the process has begun to exit ([`QemuProcess::exiting`]). Its
/// files are closed then (disk images, taps, sockets, the log), and its
/// pidfd would say so 10-25 ms later, once the kernel has torn down the
/// guest's memory. The pidfd still collects the process afterwards.
async fn watch_process(watched: Arc<RunningVm>, hypervisor: Weak<QemuHypervisor>) {
    let (status, early) = tokio::select! {
        status = watched.process.exited() => (status, false),
        status = exiting(&watched) => (status, true),
    };
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
    if early {
        // Reaps vman's child (a zombie until then).
        watched.process.exited().await;
    }
}

/// The status of a QEMU whose QMP connection closed because it is exiting;
/// pending while QMP is connected or is being connected again to a QEMU
/// that lives (so only beside [`QemuProcess::exited`], which ends it).
/// A QEMU told to quit closes its monitor before it begins to exit, so
/// while QMP stays closed the process is looked at again, as often as a
/// reconnect is tried.
async fn exiting(watched: &RunningVm) -> ExitStatus {
    loop {
        watched.until(|s| s.qmp_closed).await;
        let mut delay = RECONNECT_FIRST;
        loop {
            if let Some(status) = watched.process.exiting() {
                return status;
            }
            if watched.wait(delay, |s| !s.qmp_closed).await {
                break;
            }
            delay = (delay * 2).min(RECONNECT_MAX);
        }
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
