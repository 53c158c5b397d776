//! The real hypervisor port: QEMU processes driven over QMP, disks made with qemu-img.
//!
//! [`plan`] turns a [`VmAction`] into the exact host steps (argv, qemu-img
//! command, QMP sequence); the dry-run port returns the same plan, and
//! [`QemuHypervisor`] executes it. A VM's QEMU outlives vman: on start, vman
//! re-adopts what is running ([`QemuHypervisor::adopt`]).

pub mod argv;
mod attach;
pub mod hotplug;
pub mod img;
mod plan;
mod probe;
pub mod process;
pub mod qmp;
mod running;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::{Notify, broadcast};

pub use self::plan::plan;
use self::{
    argv::QemuOptions,
    plan::step_qmp,
    process::QemuProcess,
    qmp::QmpClient,
    running::{RunningVm, Seen},
};
use super::{
    Adoption, DiskSeen, DiskSpec, HostError, HostEvent, HostStep, Hypervisor, ImportedImage,
    NicSpec, OrphanSeen, Outcome, ProbeTarget, StopRung, VmAction, VmProbe, VmSpec,
};
use crate::disk::model::DiskFormat;

/// How long a started QEMU may take to open its QMP socket.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long QEMU may take to exit after `quit`, a guest shutdown or SIGKILL.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct QemuHypervisor {
    options: QemuOptions,
    vms: Mutex<HashMap<String, Arc<RunningVm>>>,
    events: broadcast::Sender<HostEvent>,
    /// When each tracked QEMU exited (for the sweep's [`probe::PUSH_GRACE`]).
    exited: Mutex<HashMap<String, std::time::Instant>>,
    /// `qemu-img info` of each qcow2 disk file, kept while the file is unchanged.
    disk_infos: Mutex<HashMap<PathBuf, (probe::FileStamp, DiskSeen)>>,
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
            status: qmp::run_state_name(&status.status),
            running: status.running,
        })
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
                vm.qmp.run_steps(&steps).await?;
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
                    Some(vm_id) => hv.running(vm_id)?.qmp.run_steps(&steps).await?,
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
        self.0.finish_detach_disk(vm_id, disk).await
    }

    async fn finish_detach_nic(&self, vm_id: &str, nic: &NicSpec) -> Result<(), HostError> {
        self.0.finish_detach_nic(vm_id, nic).await
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
        probe::orphans(run_root, known)
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
