//! Dry-run ports: they compute the same plan the real ports follow and log
//! it, touching nothing (each operation also keeps its steps in the
//! database). They back `--dry-run`, `dryRun: true` and the logic tests; no
//! host feature is tested on them alone.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::Mutex,
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{
    Adoption, Capability, DiskSeen, DiskSpec, HostError, HostEvent, HostNetwork, HostStep,
    Hypervisor, LinkSeen, NetworkAction, NetworkCapabilities, NicSpec, OrphanSeen, Outcome,
    ProbeTarget, ProcessSeen, QmpSeen, StopRung, VmAction, VmProbe, VmSpec,
    qemu::argv::QemuOptions,
};

pub struct DryRunHypervisor {
    options: QemuOptions,
    /// Never sent on: a dry run observes no host.
    events: broadcast::Sender<HostEvent>,
    /// The VMs it pretends to run (id → running, not paused): synthetic
    /// processes the coherence sweep probes like real ones.
    running: Mutex<HashMap<String, bool>>,
    /// When each pretended QEMU started: its synthetic counters grow from then.
    started: Mutex<HashMap<String, std::time::Instant>>,
}

impl DryRunHypervisor {
    pub fn new(options: QemuOptions) -> Self {
        DryRunHypervisor {
            options,
            events: broadcast::channel(1).0,
            running: Mutex::default(),
            started: Mutex::default(),
        }
    }

    /// Keeps up the pretence (which VMs run) and says how a stop ended: as
    /// the plan says, without the kill a real QEMU might need.
    fn pretend(&self, action: &VmAction) -> Option<StopRung> {
        let mut running = self.running.lock().expect("dry-run VMs");
        match action {
            VmAction::Start(spec) => {
                running.insert(spec.id.clone(), true);
                self.started
                    .lock()
                    .expect("dry-run starts")
                    .insert(spec.id.clone(), std::time::Instant::now());
                None
            }
            VmAction::Stop { vm_id, request } => {
                running.remove(vm_id);
                self.started.lock().expect("dry-run starts").remove(vm_id);
                Some(if request.force {
                    StopRung::Quit
                } else {
                    StopRung::GuestShutdown
                })
            }
            VmAction::Pause { vm_id } => {
                running.entry(vm_id.clone()).and_modify(|r| *r = false);
                None
            }
            VmAction::Resume { vm_id } => {
                running.entry(vm_id.clone()).and_modify(|r| *r = true);
                None
            }
            VmAction::Reset { .. }
            | VmAction::CreateDisk(_)
            | VmAction::DeleteDisk(_)
            | VmAction::DeleteImage { .. }
            | VmAction::AttachDisk { .. }
            | VmAction::DetachDisk { .. }
            | VmAction::AttachNic { .. }
            | VmAction::ChangeMedium { .. }
            | VmAction::DownloadImage { .. }
            | VmAction::DetachNic { .. }
            | VmAction::Destroy { .. }
            | VmAction::ResizeDisk { .. }
            | VmAction::InspectImage { .. }
            | VmAction::ImportImage { .. }
            | VmAction::CreateSnapshot { .. }
            | VmAction::RestoreSnapshot { .. }
            | VmAction::DeleteSnapshot { .. }
            | VmAction::CopyDisk { .. }
            | VmAction::MoveFile { .. } => None,
        }
    }
}

fn log_steps(steps: &[HostStep]) {
    for step in steps {
        tracing::info!("dry-run: would {}", step.summary());
    }
}

#[async_trait]
impl Hypervisor for DryRunHypervisor {
    fn plan(&self, action: &VmAction) -> Vec<HostStep> {
        super::qemu::plan(&self.options, action)
    }

    async fn execute(&self, action: &VmAction) -> Result<Outcome, HostError> {
        let steps = self.plan(action);
        log_steps(&steps);
        let stop_rung = self.pretend(action);
        Ok(Outcome {
            steps,
            stop_rung,
            ..Default::default()
        })
    }

    fn is_dry_run(&self) -> bool {
        true
    }

    async fn adopt(&self, _spec: &VmSpec) -> Result<Adoption, HostError> {
        Ok(Adoption::NotRunning)
    }

    async fn finish_detach(&self, _vm_id: &str, _disk: &DiskSpec) -> Result<(), HostError> {
        Ok(())
    }

    async fn finish_detach_nic(&self, _vm_id: &str, _nic: &NicSpec) -> Result<(), HostError> {
        Ok(())
    }

    fn events(&self) -> broadcast::Receiver<HostEvent> {
        self.events.subscribe()
    }

    async fn probe(&self, target: &ProbeTarget, _timeout: Duration) -> VmProbe {
        match self.running.lock().expect("dry-run VMs").get(&target.vm_id) {
            Some(&running) => VmProbe {
                process: ProcessSeen::Tracked { pid: 0 },
                qmp: Some(QmpSeen::Status {
                    status: if running { "running" } else { "paused" }.into(),
                    running,
                }),
                disks: None,
            },
            None => VmProbe {
                process: ProcessSeen::Absent,
                qmp: None,
                disks: None,
            },
        }
    }

    async fn inspect_disk(&self, _disk: &DiskSpec) -> Option<DiskSeen> {
        // A dry run creates no files: there is nothing to compare.
        None
    }

    async fn orphans(&self, _run_root: &Path, _known: &HashSet<String>) -> Vec<OrphanSeen> {
        Vec::new()
    }

    async fn list_dir(&self, _dir: &Path) -> Option<Vec<super::FileSeen>> {
        // A dry run creates no files: there is nothing to compare.
        None
    }

    fn console(&self, _vm_id: &str, _run_dir: &Path) -> super::ConsoleAccess {
        // A dry run starts no QEMU: there is no serial port to read or write.
        super::ConsoleAccess::Unsupported
    }

    async fn remove_partials(&self, _storage: &Path) -> Vec<std::path::PathBuf> {
        // A dry run made no file, and must not remove a real vman's.
        Vec::new()
    }

    async fn command_line(&self, _vm_id: &str) -> Option<Vec<String>> {
        None
    }

    /// Synthetic counters of a pretended QEMU: 5 % of one CPU and 64 MiB
    /// since its start (for benchmarks and the sampler's logic; no disks).
    async fn counters(&self, vm_id: &str, _timeout: Duration) -> Option<super::VmCounters> {
        let started = *self.started.lock().expect("dry-run starts").get(vm_id)?;
        let up = started.elapsed().as_secs_f64();
        Some(super::VmCounters {
            cpu_seconds: up * 0.05,
            rss_bytes: 64 << 20,
            uptime_seconds: up,
            disks: Vec::new(),
        })
    }
}

/// Plans like the netlink port and keeps only what it would have made (the
/// links its own actions created and not yet deleted): that is what `links`
/// reports, so the coherence sweep of a dry run sees its own network.
#[derive(Default)]
pub struct DryRunNetwork {
    believed: std::sync::Mutex<HashMap<String, LinkSeen>>,
}

impl DryRunNetwork {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl HostNetwork for DryRunNetwork {
    fn plan(&self, action: &NetworkAction) -> Vec<HostStep> {
        super::net::plan::plan(action)
    }

    async fn execute(&self, action: &NetworkAction) -> Result<Outcome, HostError> {
        let steps = self.plan(action);
        log_steps(&steps);
        let mut believed = self.believed.lock().expect("dry-run links");
        for step in &steps {
            let owned = |kind: &str| LinkSeen {
                kind: Some(kind.into()),
                owned: true,
                ..Default::default()
            };
            match step {
                HostStep::AddBridge { name } => {
                    believed
                        .entry(name.clone())
                        .or_insert_with(|| owned("bridge"));
                }
                HostStep::AddVlanLink { name, .. } => {
                    believed
                        .entry(name.clone())
                        .or_insert_with(|| owned("vlan"));
                }
                HostStep::AddTap { name } => {
                    believed.entry(name.clone()).or_insert_with(|| owned("tun"));
                }
                HostStep::SetMaster { name, master } => {
                    if let Some(link) = believed.get_mut(name) {
                        link.master = Some(master.clone());
                    }
                }
                HostStep::SetUp { name } => {
                    if let Some(link) = believed.get_mut(name) {
                        link.up = true;
                    }
                }
                HostStep::DeleteLink { name } => {
                    believed.remove(name);
                }
                HostStep::Exec { .. }
                | HostStep::SpawnQemu { .. }
                | HostStep::Qmp { .. }
                | HostStep::Await { .. }
                | HostStep::Signal { .. }
                | HostStep::CopyFile { .. }
                | HostStep::MoveFile { .. }
                | HostStep::Download { .. }
                | HostStep::WriteSeed { .. }
                | HostStep::CreateDir { .. }
                | HostStep::RemoveDir { .. }
                | HostStep::RemoveFile { .. } => {}
            }
        }
        Ok(Outcome {
            steps,
            ..Default::default()
        })
    }

    async fn links(&self) -> Result<HashMap<String, LinkSeen>, HostError> {
        Ok(self.believed.lock().expect("dry-run links").clone())
    }

    /// A link it believes in has counted nothing.
    fn link_counters(&self, name: &str) -> Option<super::LinkCounters> {
        self.believed
            .lock()
            .expect("dry-run links")
            .contains_key(name)
            .then(super::LinkCounters::default)
    }

    fn capabilities(&self) -> NetworkCapabilities {
        let assumed = Capability {
            supported: true,
            detail: "dry run: not probed, assumed".into(),
        };
        NetworkCapabilities {
            vlan_links: assumed.clone(),
            taps: assumed,
        }
    }
}
