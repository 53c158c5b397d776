//! The real hypervisor port: QEMU processes driven over QMP, disks made with qemu-img.
//!
//! [`plan`] turns a [`VmAction`] into the exact host steps (argv, qemu-img
//! command, QMP sequence); the dry-run port returns the same plan, and
//! [`QemuHypervisor`] executes it. A VM's QEMU outlives vman: on start, vman
//! re-adopts what is running ([`QemuHypervisor::adopt`]).

pub mod argv;
pub mod cpu;
pub mod hotplug;
pub mod img;
pub mod process;
pub mod qmp;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::{Notify, broadcast};

use self::{
    argv::QemuOptions,
    process::{ExitStatus, QemuProcess},
    qmp::{QmpClient, QmpNotice},
};
use super::{
    Adoption, DiskSeen, DiskSpec, HostError, HostEvent, HostStep, Hypervisor, ImportedImage,
    NicSpec, OrphanSeen, Outcome, ProbeTarget, ProcessSeen, QmpSeen, StopRung, VmAction, VmProbe,
    VmSpec,
};
use crate::disk::model::DiskFormat;

/// How long a started QEMU may take to open its QMP socket.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long QEMU may take to exit after `quit`, a guest shutdown or SIGKILL.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `detachDisk` waits for the guest before reporting the disk as DETACHING.
const DETACH_WAIT: Duration = Duration::from_secs(3);
/// How long after a tracked QEMU's exit the sweep leaves the VM to the
/// observer's push path (which records the exit with its forensics).
const PUSH_GRACE: Duration = Duration::from_secs(2);

/// The exact host steps an action takes.
pub fn plan(options: &QemuOptions, action: &VmAction) -> Vec<HostStep> {
    let qmp = |vm_id: &str, command: &str| HostStep::Qmp {
        vm_id: vm_id.to_string(),
        command: command.to_string(),
        arguments: serde_json::Value::Null,
    };
    match action {
        VmAction::Start(spec) => vec![
            HostStep::CreateDir {
                path: spec.run_dir.clone(),
            },
            HostStep::SpawnQemu {
                vm_id: spec.id.clone(),
                argv: argv::argv(spec, options),
            },
            qmp(&spec.id, "cont"),
        ],
        VmAction::Stop { vm_id, request } => {
            let mut steps = Vec::new();
            if !request.force {
                steps.push(qmp(vm_id, "system_powerdown"));
                steps.push(HostStep::Await {
                    vm_id: vm_id.clone(),
                    event: "SHUTDOWN".into(),
                    timeout_ms: request.timeout_ms,
                });
            }
            steps.push(qmp(vm_id, "quit"));
            steps.push(HostStep::Signal {
                vm_id: vm_id.clone(),
                signal: "SIGKILL (if QEMU is still running)".into(),
            });
            steps
        }
        VmAction::Pause { vm_id } => vec![qmp(vm_id, "stop")],
        VmAction::Resume { vm_id } => vec![qmp(vm_id, "cont")],
        VmAction::Reset { vm_id } => vec![qmp(vm_id, "system_reset")],
        VmAction::CreateDisk(disk) => vec![HostStep::Exec {
            argv: img::create_argv(&options.img_binary, disk, &img::partial_path(disk)),
        }],
        VmAction::DeleteDisk(disk) => vec![HostStep::RemoveFile {
            path: disk.path.clone(),
        }],
        VmAction::AttachDisk { vm_id, disk } => {
            hotplug::attach_disk(vm_id, disk, &argv::root_port_id(1))
        }
        VmAction::DetachDisk { vm_id, disk } => {
            unplug_plan(vm_id, hotplug::detach_disk(vm_id, disk))
        }
        VmAction::AttachNic { vm_id, nic } => {
            hotplug::attach_nic(vm_id, nic, &argv::root_port_id(1))
        }
        VmAction::DetachNic { vm_id, nic } => unplug_plan(vm_id, hotplug::detach_nic(vm_id, nic)),
        VmAction::Destroy { run_dir, .. } => vec![HostStep::RemoveDir {
            path: run_dir.clone(),
        }],
        VmAction::ResizeDisk {
            running_vm: Some(vm_id),
            disk,
            size_bytes,
        } => vec![HostStep::Qmp {
            vm_id: vm_id.clone(),
            command: "block_resize".into(),
            arguments: json!({"node-name": argv::disk_node(&disk.id), "size": size_bytes}),
        }],
        VmAction::ResizeDisk {
            running_vm: None,
            disk,
            size_bytes,
        } => vec![HostStep::Exec {
            argv: vec![
                options.img_binary.display().to_string(),
                "resize".into(),
                "-q".into(),
                "-f".into(),
                disk.format.qemu_name().into(),
                disk.path.display().to_string(),
                size_bytes.to_string(),
            ],
        }],
        VmAction::InspectImage { source, disk } => match disk {
            true => vec![HostStep::Exec {
                argv: img::info_argv(&options.img_binary, source),
            }],
            false => Vec::new(),
        },
        VmAction::ImportImage { source, dest, disk } => {
            let mut steps = Vec::new();
            if *disk {
                steps.push(HostStep::Exec {
                    argv: img::info_argv(&options.img_binary, source),
                });
            }
            steps.push(HostStep::CopyFile {
                from: source.clone(),
                to: dest.clone(),
            });
            steps
        }
    }
}

/// What the watchers of one VM have seen.
#[derive(Default)]
struct Seen {
    shutdown: bool,
    exited: Option<ExitStatus>,
    qmp_closed: bool,
    deleted_devices: HashSet<String>,
}

/// A QEMU vman owns: its process, its QMP connection and what they reported.
struct RunningVm {
    vm_id: String,
    run_dir: PathBuf,
    process: QemuProcess,
    qmp: QmpClient,
    /// Root ports a hot-plugged disk may use (cold disks took the first ones).
    ports: u32,
    seen: Mutex<Seen>,
    changed: Notify,
}

impl RunningVm {
    /// Waits until `done` holds or `timeout` passes; true when it held.
    async fn wait(&self, timeout: Duration, done: impl Fn(&Seen) -> bool) -> bool {
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
    async fn released(&self, device: &str, timeout: Duration) -> bool {
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

pub struct QemuHypervisor {
    options: QemuOptions,
    vms: Mutex<HashMap<String, Arc<RunningVm>>>,
    events: broadcast::Sender<HostEvent>,
    /// When each tracked QEMU exited (for the sweep's [`PUSH_GRACE`]).
    exited: Mutex<HashMap<String, std::time::Instant>>,
    /// `qemu-img info` of each qcow2 disk file, kept while the file is unchanged.
    disk_infos: Mutex<HashMap<PathBuf, (FileStamp, DiskSeen)>>,
}

/// What identifies one version of a file: when it changes, it is read again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }
}

impl QemuHypervisor {
    pub fn new(options: QemuOptions) -> Self {
        let (events, _) = broadcast::channel(256);
        QemuHypervisor {
            options,
            vms: Mutex::new(HashMap::new()),
            events,
            exited: Mutex::default(),
            disk_infos: Mutex::default(),
        }
    }

    fn get(&self, vm_id: &str) -> Option<Arc<RunningVm>> {
        self.vms.lock().expect("vm map").get(vm_id).cloned()
    }

    fn running(&self, vm_id: &str) -> Result<Arc<RunningVm>, HostError> {
        self.get(vm_id)
            .ok_or_else(|| HostError::Failed(format!("VM {vm_id} has no QEMU process")))
    }

    /// Registers a VM and starts the tasks that watch its QMP events and its process.
    fn track(self: &Arc<Self>, vm: RunningVm) -> Arc<RunningVm> {
        let vm = Arc::new(vm);
        self.exited.lock().expect("exits").remove(&vm.vm_id);
        self.vms
            .lock()
            .expect("vm map")
            .insert(vm.vm_id.clone(), vm.clone());
        let mut notices = vm.qmp.notices();
        let watched = vm.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            loop {
                match notices.recv().await {
                    Ok(QmpNotice::Event(event)) => {
                        let (name, data) = event_parts(&event);
                        match event.as_ref() {
                            qapi::qmp::Event::SHUTDOWN { .. } => {
                                watched.update(|s| s.shutdown = true)
                            }
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
                        let _ = events.send(HostEvent::Qmp {
                            vm_id: watched.vm_id.clone(),
                            event: name,
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
        });
        let watched = vm.clone();
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let status = watched.process.exited().await;
            watched.update(|s| s.exited = Some(status.clone()));
            if let Some(this) = this.upgrade() {
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
        });
        vm
    }

    async fn start(self: &Arc<Self>, spec: &VmSpec) -> Result<Outcome, HostError> {
        if let Some(vm) = self.get(&spec.id)
            && !vm.process.has_exited()
        {
            return Err(HostError::Failed(format!(
                "VM {} already has a QEMU process (pid {})",
                spec.id, vm.process.pid
            )));
        }
        let steps = plan(&self.options, &VmAction::Start(spec.clone()));
        prepare_run_dir(&spec.run_dir)?;
        let HostStep::SpawnQemu { argv, .. } = &steps[1] else {
            unreachable!("plan(Start) spawns QEMU second")
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
        let vm = self.track(RunningVm {
            vm_id: spec.id.clone(),
            run_dir: spec.run_dir.clone(),
            process,
            qmp,
            ports: argv::root_ports(spec, &self.options),
            seen: Mutex::default(),
            changed: Notify::new(),
        });
        if let Err(e) = vm
            .qmp
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

    async fn stop(
        &self,
        vm_id: &str,
        force: bool,
        timeout: Duration,
    ) -> Result<Outcome, HostError> {
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
                .qmp
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
                .qmp
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
        for file in [argv::qmp_socket(&vm.run_dir), argv::pid_file(&vm.run_dir)] {
            let _ = std::fs::remove_file(file);
        }
        Ok(Outcome {
            steps,
            stop_rung: rung,
            ..Default::default()
        })
    }

    async fn attach_disk(&self, vm_id: &str, disk: &DiskSpec) -> Result<Outcome, HostError> {
        let vm = self.running(vm_id)?;
        let (_, release) = hotplug::detach_disk(vm_id, disk);
        // The block nodes first (all steps but the device), then the device.
        plug_on_free_port(
            &vm,
            |port| hotplug::attach_disk(vm_id, disk, port),
            |steps| steps.len() - 1,
            &release,
        )
        .await
    }

    async fn detach_disk(&self, vm_id: &str, disk: &DiskSpec) -> Result<Outcome, HostError> {
        let vm = self.running(vm_id)?;
        let (unplug, release) = hotplug::detach_disk(vm_id, disk);
        unplug_and_release(&vm, unplug, &argv::device_id(&disk.id), release).await
    }

    /// Like [`Self::attach_disk`]: the netdev once, then the device on the
    /// first root port QEMU accepts; a failure takes the netdev back.
    async fn attach_nic(&self, vm_id: &str, nic: &NicSpec) -> Result<Outcome, HostError> {
        let vm = self.running(vm_id)?;
        let (_, release) = hotplug::detach_nic(vm_id, nic);
        plug_on_free_port(
            &vm,
            |port| hotplug::attach_nic(vm_id, nic, port),
            |_| 1,
            &release,
        )
        .await
    }

    /// Like [`Self::detach_disk`]: a guest that has not let go within the
    /// wait leaves the detach pending ([`Hypervisor::finish_detach_nic`]).
    async fn detach_nic(&self, vm_id: &str, nic: &NicSpec) -> Result<Outcome, HostError> {
        let vm = self.running(vm_id)?;
        let (unplug, release) = hotplug::detach_nic(vm_id, nic);
        unplug_and_release(&vm, unplug, &argv::nic_device_id(&nic.id), release).await
    }

    /// The end of a detach left pending: waits for the guest to let go of
    /// `device` (bounded by the VM's life: an exit ends the wait too), then
    /// releases its backend. A VM vman no longer tracks took it along.
    async fn finish_unplug(
        &self,
        vm_id: &str,
        device: &str,
        release: &[HostStep],
    ) -> Result<(), HostError> {
        let Some(vm) = self.get(vm_id) else {
            return Ok(());
        };
        while !vm.released(device, Duration::from_secs(3600)).await {}
        release_backend(&vm, release).await
    }

    async fn adopt_vm(self: &Arc<Self>, spec: &VmSpec) -> Result<Adoption, HostError> {
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
        self.track(RunningVm {
            vm_id: spec.id.clone(),
            run_dir: spec.run_dir.clone(),
            process,
            qmp,
            ports: argv::root_ports(spec, &self.options),
            seen: Mutex::default(),
            changed: Notify::new(),
        });
        Ok(Adoption::Running {
            pid,
            status: run_state_name(&status.status),
            running: status.running,
        })
    }
}

impl QemuHypervisor {
    async fn probe_vm(&self, target: &ProbeTarget, timeout: Duration) -> VmProbe {
        let absent = |process| VmProbe {
            process,
            qmp: None,
            disks: None,
        };
        let Some(vm) = self.get(&target.vm_id) else {
            let exited = self
                .exited
                .lock()
                .expect("exits")
                .get(&target.vm_id)
                .copied();
            if exited.is_some_and(|at| at.elapsed() < PUSH_GRACE) {
                return absent(ProcessSeen::JustExited);
            }
            return absent(untracked(target));
        };
        if vm.process.has_exited() {
            return absent(ProcessSeen::JustExited);
        }
        let process = ProcessSeen::Tracked {
            pid: vm.process.pid,
        };
        let qmp = match vm.qmp.probe_status(timeout).await {
            Err(HostError::Timeout(_)) => QmpSeen::Silent,
            Err(e) => QmpSeen::Failed(e.to_string()),
            Ok(status) => QmpSeen::Status {
                status: run_state_name(&status.status),
                running: status.running,
            },
        };
        let disks = match qmp {
            QmpSeen::Status { .. } => tokio::time::timeout(
                timeout,
                vm.qmp.execute_json("query-block", &serde_json::Value::Null),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .map(|blocks| disk_devices(&blocks)),
            _ => None,
        };
        VmProbe {
            process,
            qmp: Some(qmp),
            disks,
        }
    }

    async fn inspect(&self, disk: &DiskSpec) -> DiskSeen {
        let meta = match std::fs::metadata(&disk.path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return DiskSeen::Missing,
            Err(e) => return DiskSeen::Unreadable(e.to_string()),
        };
        if !meta.is_file() {
            return DiskSeen::Unreadable("not a regular file".into());
        }
        if disk.format == DiskFormat::Raw {
            // A raw file is its own content: its size is its length, and its
            // format is never probed (a guest may write any header into it).
            return DiskSeen::Present {
                format: "raw".into(),
                virtual_size: meta.len(),
            };
        }
        let stamp = FileStamp::of(&meta);
        if let Some((seen_stamp, seen)) =
            self.disk_infos.lock().expect("disk infos").get(&disk.path)
            && *seen_stamp == stamp
        {
            return seen.clone();
        }
        let seen = match img::info(&self.options.img_binary, &disk.path).await {
            Ok(info) => DiskSeen::Present {
                format: info.format,
                virtual_size: info.virtual_size,
            },
            Err(e) => DiskSeen::Unreadable(e.to_string()),
        };
        self.disk_infos
            .lock()
            .expect("disk infos")
            .insert(disk.path.clone(), (stamp, seen.clone()));
        seen
    }
}

/// The QEMU of a VM vman does not track, found by its pidfile and checked by its `-uuid`.
fn untracked(target: &ProbeTarget) -> ProcessSeen {
    match process::read_pidfile(&argv::pid_file(&target.run_dir)) {
        Some(pid) if process::is_alive(pid) && process::is_qemu_of(pid, &target.vm_id) => {
            ProcessSeen::Untracked { pid }
        }
        _ => ProcessSeen::Absent,
    }
}

/// The disk ids of the `dev-<disk id>` devices in a `query-block` reply.
fn disk_devices(blocks: &serde_json::Value) -> Vec<String> {
    blocks
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|block| block.get("qdev")?.as_str())
        .filter_map(|qdev| {
            // "/machine/peripheral/dev-<id>/virtio-backend", or the bare id.
            let id = qdev
                .strip_prefix("/machine/peripheral/")
                .unwrap_or(qdev)
                .split('/')
                .next()?;
            id.strip_prefix(argv::device_id("").as_str())
                .map(str::to_string)
        })
        .collect()
}

fn step_qmp(vm_id: &str, command: &str) -> HostStep {
    HostStep::Qmp {
        vm_id: vm_id.to_string(),
        command: command.to_string(),
        arguments: serde_json::Value::Null,
    }
}

fn run_state_name(state: &qapi::qmp::RunState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{state:?}"))
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

async fn run_steps(qmp: &QmpClient, steps: &[HostStep]) -> Result<(), HostError> {
    for (command, arguments) in HostStep::qmp_commands(steps) {
        qmp.execute_json(command, arguments).await?;
    }
    Ok(())
}

/// An unplug as planned: `device_del`, the wait for the guest, the release.
fn unplug_plan(vm_id: &str, (unplug, release): (Vec<HostStep>, Vec<HostStep>)) -> Vec<HostStep> {
    let mut steps = unplug;
    steps.push(HostStep::Await {
        vm_id: vm_id.to_string(),
        event: hotplug::DEVICE_DELETED.into(),
        timeout_ms: DETACH_WAIT.as_millis() as u64,
    });
    steps.extend(release);
    steps
}

/// Unplugs `device` and, once the guest has let go, releases its backend
/// (block nodes, netdev): the steps taken, or the detach left pending.
async fn unplug_and_release(
    vm: &RunningVm,
    unplug: Vec<HostStep>,
    device: &str,
    release: Vec<HostStep>,
) -> Result<Outcome, HostError> {
    if !unplug_device(vm, &unplug, device).await? {
        return Ok(Outcome {
            steps: unplug,
            detach_pending: true,
            ..Default::default()
        });
    }
    release_backend(vm, &release).await?;
    let mut steps = unplug;
    steps.extend(release);
    Ok(Outcome {
        steps,
        ..Default::default()
    })
}

/// Deletes a released device's backend, unless QEMU has exited (and taken it along).
async fn release_backend(vm: &RunningVm, release: &[HostStep]) -> Result<(), HostError> {
    if vm.seen.lock().expect("vm watch").exited.is_none() {
        run_steps(&vm.qmp, release).await?;
    }
    Ok(())
}

/// Asks QEMU to unplug a device (`device_del`) and waits up to
/// [`DETACH_WAIT`] for the guest to let go (`DEVICE_DELETED`, or QEMU's exit).
/// False: the guest has not let go yet, the detach is pending.
async fn unplug_device(
    vm: &RunningVm,
    unplug: &[HostStep],
    device: &str,
) -> Result<bool, HostError> {
    run_steps(&vm.qmp, unplug).await?;
    Ok(vm.released(device, DETACH_WAIT).await)
}

/// Hot-plugs a device on the first root port QEMU accepts. The port is found
/// by trying: QEMU knows which are taken, even for a VM vman adopted after a
/// restart. `steps(port)` plans the plug; its first `backend(..)` steps (block
/// nodes, a netdev) run once, the rest (the device) on each port tried. Any
/// failure runs `release` (best effort) to take the backend back.
///
/// The first try runs the backend and the device as one batch
/// ([`QmpClient::execute_all`]): one task and one timeout, no hand-back to
/// this caller between them. QEMU runs them in order, so a device whose
/// backend failed fails too, and the backend's own error is the one reported.
async fn plug_on_free_port(
    vm: &RunningVm,
    steps: impl Fn(&str) -> Vec<HostStep>,
    backend: impl Fn(&[HostStep]) -> usize,
    release: &[HostStep],
) -> Result<Outcome, HostError> {
    let mut last_error = None;
    for port in 1..=vm.ports {
        let planned = steps(&argv::root_port_id(port));
        let (backend_steps, device) = planned.split_at(backend(&planned));
        let outcome = match port {
            1 => {
                let commands = HostStep::qmp_commands(&planned);
                let mut replies = vm.qmp.execute_all(&commands).await?.into_iter();
                let backend_failed = replies
                    .by_ref()
                    .take(backend_steps.len())
                    .find_map(Result::err);
                if let Some(e) = backend_failed {
                    release_quietly(&vm.qmp, &vm.vm_id, release).await;
                    return Err(e);
                }
                replies.find_map(Result::err).map_or(Ok(()), Err)
            }
            _ => run_steps(&vm.qmp, device).await,
        };
        match outcome {
            Ok(()) => {
                return Ok(Outcome {
                    steps: planned,
                    ..Default::default()
                });
            }
            Err(HostError::Failed(message))
                if message.contains("in use")
                    || message.contains("not available")
                    || message.contains("occupied") =>
            {
                last_error = Some(message);
            }
            Err(e) => {
                release_quietly(&vm.qmp, &vm.vm_id, release).await;
                return Err(e);
            }
        }
    }
    release_quietly(&vm.qmp, &vm.vm_id, release).await;
    Err(HostError::Failed(format!(
        "no free hot-plug port on VM {} ({} ports): {}",
        vm.vm_id,
        vm.ports,
        last_error.unwrap_or_default()
    )))
}

/// Best effort: takes back the backend (block nodes, netdev) of a device
/// whose `device_add` failed.
async fn release_quietly(qmp: &QmpClient, vm_id: &str, release: &[HostStep]) {
    for step in release {
        if let HostStep::Qmp {
            command, arguments, ..
        } = step
            && let Err(e) = qmp.execute_json(command, arguments).await
        {
            tracing::warn!(vm = vm_id, error = %e, "releasing a failed hot-plug's backend");
        }
    }
}

fn prepare_run_dir(run_dir: &Path) -> Result<(), HostError> {
    let io = |what: &str| {
        let what = format!("{what} {}", run_dir.display());
        move |source| HostError::Io { what, source }
    };
    std::fs::create_dir_all(run_dir).map_err(io("creating"))?;
    restrict(run_dir, 0o700);
    for stale in [argv::qmp_socket(run_dir), argv::pid_file(run_dir)] {
        match std::fs::remove_file(&stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cleaning")(e)),
        }
    }
    Ok(())
}

fn restrict(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        tracing::warn!(path = %path.display(), error = %e, "restricting permissions");
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

/// Arc wrapper so the trait can hand `self: &Arc<Self>` to the tracking tasks.
pub struct Qemu(pub Arc<QemuHypervisor>);

#[async_trait]
impl Hypervisor for Qemu {
    fn plan(&self, action: &VmAction) -> Vec<HostStep> {
        plan(&self.0.options, action)
    }

    async fn execute(&self, action: &VmAction) -> Result<Outcome, HostError> {
        let hv = &self.0;
        match action {
            VmAction::Start(spec) => hv.start(spec).await,
            VmAction::Stop { vm_id, request } => {
                hv.stop(
                    vm_id,
                    request.force,
                    Duration::from_millis(request.timeout_ms),
                )
                .await
            }
            VmAction::Pause { vm_id } | VmAction::Resume { vm_id } | VmAction::Reset { vm_id } => {
                let vm = hv.running(vm_id)?;
                let steps = plan(&hv.options, action);
                run_steps(&vm.qmp, &steps).await?;
                Ok(Outcome {
                    steps,
                    ..Default::default()
                })
            }
            VmAction::CreateDisk(disk) => {
                let steps = plan(&hv.options, action);
                create_disk(&steps, disk).await?;
                Ok(Outcome {
                    steps,
                    ..Default::default()
                })
            }
            VmAction::DeleteDisk(disk) => {
                hv.disk_infos.lock().expect("disk infos").remove(&disk.path);
                match std::fs::remove_file(&disk.path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(HostError::Io {
                            what: format!("removing {}", disk.path.display()),
                            source,
                        });
                    }
                }
                Ok(Outcome {
                    steps: plan(&hv.options, action),
                    ..Default::default()
                })
            }
            VmAction::InspectImage { source, disk } => {
                let format = match disk {
                    true => Some(inspect_disk_image(&hv.options, source).await?),
                    false => None,
                };
                let size_bytes = std::fs::metadata(source).map(|m| m.len()).unwrap_or(0);
                Ok(Outcome {
                    steps: plan(&hv.options, action),
                    image: Some(ImportedImage { format, size_bytes }),
                    ..Default::default()
                })
            }
            VmAction::ImportImage { source, dest, disk } => {
                let image = import_image(&hv.options, source, dest, *disk).await?;
                Ok(Outcome {
                    steps: plan(&hv.options, action),
                    image: Some(image),
                    ..Default::default()
                })
            }
            VmAction::ResizeDisk { running_vm, .. } => {
                let steps = plan(&hv.options, action);
                match running_vm {
                    Some(vm_id) => run_steps(&hv.running(vm_id)?.qmp, &steps).await?,
                    None => {
                        for step in &steps {
                            if let HostStep::Exec { argv } = step {
                                img::run(argv).await?;
                            }
                        }
                    }
                }
                Ok(Outcome {
                    steps,
                    ..Default::default()
                })
            }
            VmAction::AttachDisk { vm_id, disk } => hv.attach_disk(vm_id, disk).await,
            VmAction::DetachDisk { vm_id, disk } => hv.detach_disk(vm_id, disk).await,
            VmAction::AttachNic { vm_id, nic } => hv.attach_nic(vm_id, nic).await,
            VmAction::DetachNic { vm_id, nic } => hv.detach_nic(vm_id, nic).await,
            VmAction::Destroy { vm_id, run_dir } => {
                if hv.get(vm_id).is_some() {
                    return Err(HostError::Failed(format!(
                        "VM {vm_id} still runs; stop it first"
                    )));
                }
                hv.exited.lock().expect("exits").remove(vm_id);
                match std::fs::remove_dir_all(run_dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(HostError::Io {
                            what: format!("removing {}", run_dir.display()),
                            source,
                        });
                    }
                }
                Ok(Outcome {
                    steps: plan(&hv.options, action),
                    ..Default::default()
                })
            }
        }
    }

    fn is_dry_run(&self) -> bool {
        false
    }

    async fn adopt(&self, spec: &VmSpec) -> Result<Adoption, HostError> {
        self.0.adopt_vm(spec).await
    }

    async fn finish_detach(&self, vm_id: &str, disk: &DiskSpec) -> Result<(), HostError> {
        let (_, release) = hotplug::detach_disk(vm_id, disk);
        let device = argv::device_id(&disk.id);
        self.0.finish_unplug(vm_id, &device, &release).await
    }

    async fn finish_detach_nic(&self, vm_id: &str, nic: &NicSpec) -> Result<(), HostError> {
        let (_, release) = hotplug::detach_nic(vm_id, nic);
        let device = argv::nic_device_id(&nic.id);
        self.0.finish_unplug(vm_id, &device, &release).await
    }

    fn events(&self) -> broadcast::Receiver<HostEvent> {
        self.0.events.subscribe()
    }

    async fn probe(&self, target: &ProbeTarget, timeout: Duration) -> VmProbe {
        self.0.probe_vm(target, timeout).await
    }

    async fn inspect_disk(&self, disk: &DiskSpec) -> Option<DiskSeen> {
        Some(self.0.inspect(disk).await)
    }

    async fn orphans(&self, run_root: &Path, known: &HashSet<String>) -> Vec<OrphanSeen> {
        let Ok(entries) = std::fs::read_dir(run_root) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if known.contains(&name) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let run_dir = entry.path();
            let pid_file = argv::pid_file(&run_dir);
            let qemu_pid = process::read_pidfile(&pid_file).filter(|&pid| {
                process::is_alive(pid)
                    && (process::is_qemu_of(pid, &name) || process::is_qemu_using(pid, &run_dir))
            });
            found.push(OrphanSeen { run_dir, qemu_pid });
        }
        found.sort_by(|a, b| a.run_dir.cmp(&b.run_dir));
        found
    }

    async fn list_dir(&self, dir: &Path) -> Option<Vec<super::FileSeen>> {
        let mut found: Vec<super::FileSeen> = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|entry| super::FileSeen {
                name: entry.file_name().to_string_lossy().into_owned(),
                directory: entry.file_type().is_ok_and(|t| t.is_dir()),
            })
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Some(found)
    }
}

async fn create_disk(steps: &[HostStep], disk: &DiskSpec) -> Result<(), HostError> {
    let [HostStep::Exec { argv }] = steps else {
        unreachable!("plan(CreateDisk) is one qemu-img run")
    };
    if disk.path.exists() {
        return Err(HostError::Failed(format!(
            "{} already exists",
            disk.path.display()
        )));
    }
    let partial = img::partial_path(disk);
    let _ = std::fs::remove_file(&partial);
    let result = img::run(argv).await.and_then(|_| {
        std::fs::rename(&partial, &disk.path).map_err(|source| HostError::Io {
            what: format!("renaming {} into place", partial.display()),
            source,
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// A disk image must be a plain qcow2 or raw file: one that names a backing
/// file or an external data file could make QEMU open any host file.
async fn inspect_disk_image(options: &QemuOptions, source: &Path) -> Result<DiskFormat, HostError> {
    let info = img::info(&options.img_binary, source).await?;
    if let Some(backing) = &info.backing_filename {
        return Err(HostError::Rejected(format!(
            "the image names a backing file ({backing}); import a standalone image"
        )));
    }
    if let Some(data_file) = info.data_file() {
        return Err(HostError::Rejected(format!(
            "the image names an external data file ({data_file})"
        )));
    }
    match info.format.as_str() {
        "qcow2" => Ok(DiskFormat::Qcow2),
        "raw" => Ok(DiskFormat::Raw),
        other => Err(HostError::Rejected(format!(
            "unsupported image format {other:?}: use qcow2 or raw"
        ))),
    }
}

/// Copies an image into storage under a temporary name, checks the copy (the
/// file QEMU will open, not the source, which could change meanwhile) and
/// renames it into place. Nothing is left behind on failure.
async fn import_image(
    options: &QemuOptions,
    source: &Path,
    dest: &Path,
    disk: bool,
) -> Result<ImportedImage, HostError> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|source| HostError::Io {
            what: format!("creating {}", parent.display()),
            source,
        })?;
    }
    let mut partial = dest.as_os_str().to_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let (from, to) = (source.to_path_buf(), partial.clone());
    let copied = tokio::task::spawn_blocking(move || std::fs::copy(from, to))
        .await
        .map_err(|e| HostError::Failed(format!("copy task: {e}")))
        .and_then(|r| {
            r.map_err(|e| HostError::Io {
                what: format!("copying {} into storage", source.display()),
                source: e,
            })
        });
    let checked = async {
        let bytes = copied?;
        let image = match disk {
            true => ImportedImage {
                format: Some(inspect_disk_image(options, &partial).await?),
                // A disk's size is its virtual size, which is what a VM sees.
                size_bytes: img::info(&options.img_binary, &partial).await?.virtual_size,
            },
            false => ImportedImage {
                format: None,
                size_bytes: bytes,
            },
        };
        std::fs::rename(&partial, dest).map_err(|e| HostError::Io {
            what: format!("moving {} into place", dest.display()),
            source: e,
        })?;
        Ok(image)
    }
    .await;
    if checked.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    checked
}
