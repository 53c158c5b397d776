//! The real hypervisor port: QEMU processes driven over QMP, disks made with qemu-img.
//!
//! [`plan`] turns a [`VmAction`] into the exact host steps (argv, qemu-img
//! command, QMP sequence); the dry-run port returns the same plan, and
//! [`QemuHypervisor`] carries it out. A VM's QEMU outlives vman: on start,
//! vman re-adopts what is running ([`Hypervisor::adopt`]).
//!
//! One file a job. Pure: `plan`, `argv` (the command line), `hotplug` (QMP
//! sequences). On the host: `execute` (one function per action),
//! `lifecycle` (start, stop, adopt), `console` (connecting a VM's serial
//! console), `attach` (hot-plug on a running VM),
//! `running` (the table of tracked QEMUs and their watchers), `probe` (reads
//! for the coherence sweep), `files` (disk files, imports, run directories),
//! and below them `process`, `qmp` and `img`; `cpu` probes the `-cpu` model KVM can run. This file holds the port's
//! state and its [`Hypervisor`] implementation, which only delegates: the
//! dry-run port may share the pure modules, never the ones that touch the host.

pub mod argv;
mod attach;
mod console;
pub mod cpu;
mod download;
mod execute;
mod files;
pub mod hotplug;
pub mod img;
mod lifecycle;
mod plan;
mod probe;
pub mod process;
pub mod qmp;
mod running;
mod seed;
mod snapshot;
mod stats;

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
    Adoption, ConsoleAccess, DiskSeen, DiskSpec, HostError, HostEvent, HostStep, Hypervisor,
    NicSpec, OrphanSeen, Outcome, ProbeTarget, VmAction, VmProbe, VmSpec,
};

/// The port's state: the QEMUs it tracks and what it has read of the host.
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
        self.0.execute(action).await
    }

    async fn execute_reporting(
        &self,
        action: &VmAction,
        report: &crate::host::Report<'_>,
    ) -> Result<Outcome, HostError> {
        self.0.execute_reporting(action, report).await
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
        Some(self.0.inspect_disk(disk).await)
    }

    async fn orphans(&self, run_root: &Path, known: &HashSet<String>) -> Vec<OrphanSeen> {
        probe::orphans(run_root, known)
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

    async fn remove_partials(&self, storage: &Path) -> Vec<PathBuf> {
        files::remove_partials(storage)
    }

    async fn counters(&self, vm_id: &str, timeout: Duration) -> Option<super::VmCounters> {
        self.0.counters(vm_id, timeout).await
    }

    async fn command_line(&self, vm_id: &str) -> Option<Vec<String>> {
        process::command_line(self.0.get(vm_id)?.process.pid)
    }

    fn console(&self, vm_id: &str, run_dir: &Path) -> ConsoleAccess {
        match self.0.get(vm_id) {
            None => ConsoleAccess::Log(argv::serial_log(run_dir)),
            Some(vm) => match &vm.console {
                Ok(console) => ConsoleAccess::Live {
                    console: console.clone(),
                    log: argv::serial_log(&vm.run_dir),
                },
                Err(why) => ConsoleAccess::Unavailable(why.clone()),
            },
        }
    }
}
