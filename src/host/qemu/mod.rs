//! The real hypervisor port: QEMU processes driven over QMP, disks made with qemu-img.
//!
//! [`plan`] turns a [`VmAction`] into the exact host steps (argv, qemu-img
//! command, QMP sequence); the dry-run port returns the same plan, and
//! [`QemuHypervisor`] executes it. A VM's QEMU outlives vman: on start, vman
//! re-adopts what is running ([`QemuHypervisor::adopt`]).

pub mod argv;
mod attach;
mod files;
pub mod hotplug;
pub mod img;
mod lifecycle;
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
use tokio::sync::broadcast;

pub use self::plan::plan;
use self::{argv::QemuOptions, running::RunningVm};
use super::{
    Adoption, DiskSeen, DiskSpec, HostError, HostEvent, HostStep, Hypervisor, ImportedImage,
    NicSpec, OrphanSeen, Outcome, ProbeTarget, VmAction, VmProbe, VmSpec,
};

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
                files::create_disk(&steps, disk).await?;
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
                    true => Some(files::inspect_disk_image(&hv.options, source).await?),
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
                let image = files::import_image(&hv.options, source, dest, *disk).await?;
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
