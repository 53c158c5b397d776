//! Host ports: everything that touches the host sits behind these traits.
//!
//! One vocabulary, [`HostStep`], serves three uses: the dry-run port records
//! it, a `dryRun: true` mutation returns it as its plan, and the real ports
//! report the steps they executed. Services describe *what* to do with a
//! [`HostAction`]; a port says *how* (`plan`) and does it (`execute`).

pub mod console;
pub mod dry_run;
pub mod net;
pub mod qemu;

use std::{collections::HashMap, path::PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::disk::model::DiskFormat;

/// One step on the host, as plain data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum HostStep {
    /// Run a program (qemu-img, …) to completion.
    Exec {
        argv: Vec<String>,
    },
    /// Start a QEMU process, detached from vman.
    SpawnQemu {
        vm_id: String,
        argv: Vec<String>,
    },
    /// A QMP command sent to a running VM.
    Qmp {
        vm_id: String,
        command: String,
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        arguments: serde_json::Value,
    },
    /// Wait for something the host reports (a QMP event, a process exit).
    Await {
        vm_id: String,
        event: String,
        timeout_ms: u64,
    },
    /// Send a signal to a VM's QEMU process.
    Signal {
        vm_id: String,
        signal: String,
    },
    /// Copy a file into storage (under a temporary name, renamed when complete).
    CopyFile {
        from: PathBuf,
        to: PathBuf,
    },
    CreateDir {
        path: PathBuf,
    },
    RemoveDir {
        path: PathBuf,
    },
    RemoveFile {
        path: PathBuf,
    },
    /// Rename a file within storage; `read_only`: make it 0444 (a frozen
    /// base that linked clones share), else 0644.
    MoveFile {
        from: PathBuf,
        to: PathBuf,
        read_only: bool,
    },
    /// Write a VM's cloud-init seed (a vfat volume labelled `cidata`).
    WriteSeed {
        path: PathBuf,
    },
    /// Fetch `url` into the file `to`, checking its SHA-256.
    Download {
        url: String,
        to: PathBuf,
        sha256: String,
    },
    /// Create a bridge, marked as vman's; a bridge vman made before is kept.
    AddBridge {
        name: String,
    },
    /// Create the 802.1Q link `name` on `parent` (`<uplink>.<vlan>`), marked as vman's.
    AddVlanLink {
        name: String,
        parent: String,
        vlan_id: u16,
    },
    /// Create a persistent tap (`TUNSETIFF` + `TUNSETPERSIST`), marked as vman's.
    AddTap {
        name: String,
    },
    /// Enslave a vman link to a bridge.
    SetMaster {
        name: String,
        master: String,
    },
    /// Set a vman link up.
    SetUp {
        name: String,
    },
    /// Delete a link vman made; a missing one is fine, another's is refused.
    #[serde(alias = "deleteBridge")]
    DeleteLink {
        name: String,
    },
}

impl HostStep {
    /// The QMP commands among `steps`, in order, with their arguments.
    pub fn qmp_commands(steps: &[HostStep]) -> Vec<(&str, &serde_json::Value)> {
        steps
            .iter()
            .filter_map(|step| match step {
                HostStep::Qmp {
                    command, arguments, ..
                } => Some((command.as_str(), arguments)),
                HostStep::Exec { .. }
                | HostStep::SpawnQemu { .. }
                | HostStep::Await { .. }
                | HostStep::Signal { .. }
                | HostStep::CopyFile { .. }
                | HostStep::CreateDir { .. }
                | HostStep::RemoveDir { .. }
                | HostStep::RemoveFile { .. }
                | HostStep::MoveFile { .. }
                | HostStep::Download { .. }
                | HostStep::WriteSeed { .. }
                | HostStep::AddBridge { .. }
                | HostStep::AddVlanLink { .. }
                | HostStep::AddTap { .. }
                | HostStep::SetMaster { .. }
                | HostStep::SetUp { .. }
                | HostStep::DeleteLink { .. } => None,
            })
            .collect()
    }

    /// A one-line human summary, shown in plans.
    pub fn summary(&self) -> String {
        match self {
            HostStep::Exec { argv } => format!("run {}", argv.join(" ")),
            HostStep::SpawnQemu { vm_id, .. } => format!("spawn QEMU for VM {vm_id}"),
            HostStep::Qmp { vm_id, command, .. } => format!("QMP {command} on VM {vm_id}"),
            HostStep::Await {
                vm_id,
                event,
                timeout_ms,
            } => {
                format!("wait up to {timeout_ms} ms for {event} from VM {vm_id}")
            }
            HostStep::Signal { vm_id, signal } => format!("send {signal} to VM {vm_id}"),
            HostStep::CreateDir { path } => format!("create directory {}", path.display()),
            HostStep::CopyFile { from, to } => {
                format!("copy {} to {}", from.display(), to.display())
            }
            HostStep::RemoveDir { path } => format!("remove directory {}", path.display()),
            HostStep::RemoveFile { path } => format!("remove file {}", path.display()),
            HostStep::MoveFile {
                from,
                to,
                read_only,
            } => format!(
                "move {} to {}{}",
                from.display(),
                to.display(),
                if *read_only { " (read-only)" } else { "" }
            ),
            HostStep::WriteSeed { path } => format!(
                "write the cloud-init seed (vfat, label cidata: meta-data, user-data, network-config) to {}",
                path.display()
            ),
            HostStep::Download { url, to, sha256 } => {
                format!("download {url} to {} (sha256 {sha256})", to.display())
            }
            HostStep::AddBridge { name } => format!("add bridge {name} (kept if vman's exists)"),
            HostStep::AddVlanLink {
                name,
                parent,
                vlan_id,
            } => format!("add VLAN {vlan_id} link {name} on {parent} (kept if vman's exists)"),
            HostStep::AddTap { name } => {
                format!("add persistent tap {name} (kept if vman's exists)")
            }
            HostStep::SetMaster { name, master } => format!("enslave {name} to bridge {master}"),
            HostStep::SetUp { name } => format!("set {name} up"),
            HostStep::DeleteLink { name } => format!("delete link {name} (if present)"),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            HostStep::Exec { .. } => "exec",
            HostStep::SpawnQemu { .. } => "spawnQemu",
            HostStep::Qmp { .. } => "qmp",
            HostStep::Await { .. } => "await",
            HostStep::Signal { .. } => "signal",
            HostStep::CreateDir { .. } => "createDir",
            HostStep::CopyFile { .. } => "copyFile",
            HostStep::RemoveDir { .. } => "removeDir",
            HostStep::RemoveFile { .. } => "removeFile",
            HostStep::MoveFile { .. } => "moveFile",
            HostStep::Download { .. } => "download",
            HostStep::WriteSeed { .. } => "writeSeed",
            HostStep::AddBridge { .. } => "addBridge",
            HostStep::AddVlanLink { .. } => "addVlanLink",
            HostStep::AddTap { .. } => "addTap",
            HostStep::SetMaster { .. } => "setMaster",
            HostStep::SetUp { .. } => "setUp",
            HostStep::DeleteLink { .. } => "deleteLink",
        }
    }
}

/// A disk as the host sees it: a file under the storage directory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskSpec {
    pub id: String,
    pub path: PathBuf,
    pub format: DiskFormat,
    pub size_bytes: u64,
    /// Base image a qcow2 overlay is created on.
    pub backing: Option<Backing>,
}

/// The base image a qcow2 overlay is created on, with its format (never probed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backing {
    pub path: PathBuf,
    pub format: DiskFormat,
}

/// Direct kernel boot, from files in storage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DirectBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
}

/// A NIC as the host sees it: a tap on a bridge, and a device in QEMU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NicSpec {
    pub id: String,
    /// `aa:bb:cc:dd:ee:ff`, lower case, already validated.
    pub mac: String,
    /// The QEMU device model (`virtio-net-pci`, `e1000e`), already validated.
    pub model: String,
    /// The tap QEMU opens (made by the network port before QEMU needs it).
    pub tap: String,
    /// The bridge the tap is enslaved to.
    pub bridge: String,
}

/// Everything the hypervisor needs to run one VM.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmSpec {
    pub id: String,
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<DiskSpec>,
    /// In NIC position order; their taps must exist before the start.
    pub nics: Vec<NicSpec>,
    pub boot: Option<DirectBoot>,
    /// The ISO image in its CD-ROM drive (always read-only); the drive is
    /// there, empty, without one, so a medium can be inserted while it runs.
    pub cdrom: Option<PathBuf>,
    /// Devices to boot from, first first (`bootindex`); empty: the firmware's
    /// own order.
    pub boot_order: Vec<BootDevice>,
    pub run_dir: PathBuf,
    /// Start from this internal snapshot, memory included (`-loadvm`): a
    /// restore of a snapshot with memory onto a stopped VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadvm: Option<String>,
    /// The cloud-init NoCloud seed the guest finds at boot, written into the
    /// run directory at each start and attached read-only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<Box<Seed>>,
}

/// The files of a cloud-init NoCloud seed (a vfat volume labelled `cidata`).
/// Its user data is never shown: not in plans, logs or `Debug`.
#[derive(Clone, PartialEq, Serialize)]
pub struct Seed {
    pub meta_data: String,
    #[serde(skip)]
    pub user_data: String,
    pub network_config: Option<String>,
}

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seed")
            .field("meta_data", &self.meta_data)
            .field(
                "user_data",
                &format_args!("({} bytes)", self.user_data.len()),
            )
            .field("network_config", &self.network_config)
            .finish()
    }
}

/// How far a long action has come: the fraction done (0 to 1), and the
/// bytes it moves in all when it knows them (0 when not: a disk copy counts
/// in its caller's sizes, a download whose server did not say).
pub type Report<'a> = dyn Fn(f64, u64) + Send + Sync + 'a;

/// The bounds of a download ([`VmAction::DownloadImage`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DownloadLimits {
    /// Larger is refused: by its announced size up front, else when reached.
    pub max_bytes: u64,
    /// A server that sends nothing for this long (or does not answer) is
    /// cut off.
    pub stall_timeout: std::time::Duration,
    /// Redirects followed, at most.
    pub max_redirects: usize,
}

/// A device a VM may boot from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, async_graphql::Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BootDevice {
    /// Its first disk (the root disk).
    Disk,
    /// Its CD-ROM drive.
    Cdrom,
    /// Its first NIC (PXE).
    Network,
}

impl BootDevice {
    /// The stored and shown name (`CDROM`).
    pub fn as_str(self) -> &'static str {
        match self {
            BootDevice::Disk => "DISK",
            BootDevice::Cdrom => "CDROM",
            BootDevice::Network => "NETWORK",
        }
    }

    pub fn parse(name: &str) -> Option<BootDevice> {
        [BootDevice::Disk, BootDevice::Cdrom, BootDevice::Network]
            .into_iter()
            .find(|device| device.as_str() == name)
    }
}

/// How a stop should proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StopRequest {
    /// Skip the ACPI request and go straight to terminating QEMU.
    pub force: bool,
    pub timeout_ms: u64,
}

/// Which rung of the stop ladder ended the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, async_graphql::Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StopRung {
    /// The guest shut down after an ACPI power-button press.
    GuestShutdown,
    /// QMP `quit` ended QEMU.
    Quit,
    /// QEMU was killed.
    Kill,
}

/// What a hypervisor is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum VmAction {
    Start(VmSpec),
    Stop {
        vm_id: String,
        request: StopRequest,
    },
    Pause {
        vm_id: String,
    },
    Resume {
        vm_id: String,
    },
    Reset {
        vm_id: String,
    },
    CreateDisk(DiskSpec),
    DeleteDisk(DiskSpec),
    AttachDisk {
        vm_id: String,
        disk: DiskSpec,
    },
    DetachDisk {
        vm_id: String,
        disk: DiskSpec,
    },
    /// Hot-plug a NIC whose tap exists: `netdev_add` + `device_add` on a free root port.
    AttachNic {
        vm_id: String,
        nic: NicSpec,
    },
    /// Unplug a NIC: `device_del`, wait for `DEVICE_DELETED`, `netdev_del`
    /// (the tap is the network port's to remove).
    DetachNic {
        vm_id: String,
        nic: NicSpec,
    },
    /// Put an ISO image into a running VM's CD-ROM drive (`Some`), read-only,
    /// replacing what is in it, or empty the drive (`None`).
    ChangeMedium {
        vm_id: String,
        medium: Option<PathBuf>,
    },
    /// Remove what a stopped VM left on the host (its run directory).
    Destroy {
        vm_id: String,
        run_dir: PathBuf,
    },
    /// Grow a disk: `block_resize` when a running VM has it, `qemu-img resize` otherwise.
    ResizeDisk {
        running_vm: Option<String>,
        disk: DiskSpec,
        size_bytes: u64,
    },
    /// Read what a file to import is; a disk image is refused unless it is a
    /// plain qcow2 or raw file. Reads only.
    InspectImage {
        source: PathBuf,
        disk: bool,
    },
    /// Copy a file from the import directory into storage. A disk image is
    /// inspected first and refused unless it is a plain qcow2 or raw file.
    ImportImage {
        source: PathBuf,
        dest: PathBuf,
        disk: bool,
    },
    /// Download an image from `url` (http or https) into `dest`: streamed
    /// into a `.partial` file, its SHA-256 checked against `sha256` (and a
    /// disk image checked as an import is), then renamed into place. A long
    /// action: it reports the fraction received when the size is known; a
    /// dropped one removes its partial file.
    DownloadImage {
        url: String,
        /// Lowercase hex.
        sha256: String,
        dest: PathBuf,
        disk: bool,
        limits: DownloadLimits,
    },
    /// Remove an imported image's file from storage; a missing one is fine.
    DeleteImage {
        path: PathBuf,
    },
    /// Take an internal snapshot `tag` of every disk: with QMP when
    /// `running_vm` has them open (`snapshot-save` with memory, a
    /// `transaction` of `blockdev-snapshot-internal-sync` without), with
    /// `qemu-img snapshot -c` otherwise. A failure takes back what it made.
    CreateSnapshot {
        running_vm: Option<String>,
        disks: Vec<DiskSpec>,
        tag: String,
        with_memory: bool,
    },
    /// Go back to snapshot `tag`: `snapshot-load` (memory included) on a
    /// running VM, `qemu-img snapshot -a` on every disk of a stopped one
    /// (after checking that each has it: nothing is reverted otherwise).
    RestoreSnapshot {
        running_vm: Option<String>,
        disks: Vec<DiskSpec>,
        tag: String,
    },
    /// Delete snapshot `tag` from the disks that have it (`snapshot-delete`
    /// on a running VM, `qemu-img snapshot -d` otherwise).
    DeleteSnapshot {
        running_vm: Option<String>,
        disks: Vec<DiskSpec>,
        tag: String,
    },
    /// Copy a disk into a new standalone file (`qemu-img convert`, backing
    /// chain flattened) under a `.partial` name, renamed when complete. A
    /// long action: it reports the fraction done, and a dropped one kills
    /// qemu-img and removes its partial file.
    CopyDisk {
        from: DiskSpec,
        to: DiskSpec,
    },
    /// Rename a disk's file within storage (freezing it into a base for
    /// linked clones, or back); refused if `to` exists.
    MoveFile {
        from: PathBuf,
        to: PathBuf,
        read_only: bool,
    },
}

impl VmAction {
    /// The action's name, as an operation's `failedStep` gives it.
    pub fn name(&self) -> &'static str {
        match self {
            VmAction::Start(_) => "start",
            VmAction::Stop { .. } => "stop",
            VmAction::Pause { .. } => "pause",
            VmAction::Resume { .. } => "resume",
            VmAction::Reset { .. } => "reset",
            VmAction::CreateDisk(_) => "createDisk",
            VmAction::DeleteDisk(_) => "deleteDisk",
            VmAction::AttachDisk { .. } => "attachDisk",
            VmAction::DetachDisk { .. } => "detachDisk",
            VmAction::AttachNic { .. } => "attachNic",
            VmAction::DetachNic { .. } => "detachNic",
            VmAction::ChangeMedium { .. } => "changeMedium",
            VmAction::DownloadImage { .. } => "downloadImage",
            VmAction::Destroy { .. } => "destroy",
            VmAction::ResizeDisk { .. } => "resizeDisk",
            VmAction::InspectImage { .. } => "inspectImage",
            VmAction::ImportImage { .. } => "importImage",
            VmAction::DeleteImage { .. } => "deleteImage",
            VmAction::CreateSnapshot { .. } => "createSnapshot",
            VmAction::RestoreSnapshot { .. } => "restoreSnapshot",
            VmAction::DeleteSnapshot { .. } => "deleteSnapshot",
            VmAction::CopyDisk { .. } => "copyDisk",
            VmAction::MoveFile { .. } => "moveFile",
        }
    }
}

/// What an imported file turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedImage {
    pub format: Option<DiskFormat>,
    pub size_bytes: u64,
}

/// What a port reports after executing an action.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub steps: Vec<HostStep>,
    /// Set by a stop: which rung ended the VM (None: nothing was running).
    pub stop_rung: Option<StopRung>,
    /// Set by a detach the guest has not acknowledged yet: finish it with
    /// [`Hypervisor::finish_detach`].
    pub detach_pending: bool,
    /// Set by an image import.
    pub image: Option<ImportedImage>,
}

/// What re-adopting a VM after a vman restart found.
#[derive(Debug, Clone, PartialEq)]
pub enum Adoption {
    /// No QEMU of this VM runs.
    NotRunning,
    /// Its QEMU runs and answers QMP; `status` is QEMU's run state.
    Running {
        pid: i32,
        status: String,
        running: bool,
        /// Why vman holds no console of it (`None`: it does).
        console_problem: Option<String>,
    },
}

/// What there is of a VM's serial console.
pub enum ConsoleAccess {
    /// vman holds the console of the VM's running QEMU; `log` is its serial
    /// log, which has what the console's ring no longer holds.
    Live {
        console: std::sync::Arc<console::Console>,
        log: PathBuf,
    },
    /// No QEMU of the VM runs (or vman does not track one): what it printed
    /// in its last run is in its serial log.
    Log(PathBuf),
    /// The VM's QEMU runs, but vman holds no console of it; why.
    Unavailable(String),
    /// This port has no consoles (the dry run).
    Unsupported,
}

/// The QMP events the observer acts on; any other keeps QEMU's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpEvent {
    /// The guest (or QEMU) is shutting down: the exit that follows is not a crash.
    Shutdown,
    /// The VM was paused.
    Stop,
    /// The VM runs again.
    Resume,
    /// Any other event, by QEMU's name for it.
    Other(String),
}

/// Something the host reported about a VM on its own (for the observer).
#[derive(Debug, Clone)]
pub enum HostEvent {
    /// A QMP event, with its data.
    Qmp {
        vm_id: String,
        event: QmpEvent,
        data: serde_json::Value,
    },
    /// The QMP connection closed.
    QmpClosed { vm_id: String },
    /// A QMP connection that had closed while QEMU lived is connected again;
    /// QEMU's run state then (events in between were missed).
    QmpReconnected {
        vm_id: String,
        status: String,
        running: bool,
    },
    /// The QEMU process exited; the log tails are kept for forensics.
    Exited {
        vm_id: String,
        status: String,
        qemu_log: String,
        serial_log: String,
    },
}

/// One VM the coherence sweep asks a hypervisor about.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeTarget {
    pub vm_id: String,
    pub run_dir: PathBuf,
}

/// What the host shows of one VM, read for the coherence sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct VmProbe {
    pub process: ProcessSeen,
    /// QEMU's answer to `query-status` (only for a QEMU vman tracks).
    pub qmp: Option<QmpSeen>,
    /// The disks (by disk id) QEMU has a device for, per `query-block`
    /// (only when QMP answered).
    pub disks: Option<Vec<String>>,
}

/// Whether a QEMU of the VM runs.
#[derive(Debug, Clone, PartialEq)]
pub enum ProcessSeen {
    /// A QEMU vman tracks (started or re-adopted): its pidfd reports its exit.
    Tracked { pid: i32 },
    /// This VM's QEMU runs (its pidfile and its `-uuid` agree) but vman does
    /// not track it: started by hand, or not re-adopted.
    Untracked { pid: i32 },
    /// The tracked QEMU exited moments ago: the observer's push path records
    /// that exit, with its forensics; the sweep leaves it alone.
    JustExited,
    /// No QEMU of this VM runs.
    Absent,
}

/// What QMP said when asked for the run state.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpSeen {
    Status {
        status: String,
        running: bool,
    },
    /// No reply within the probe's timeout (a stopped or hung QEMU).
    Silent,
    Failed(String),
}

/// What a disk's file looks like on the host.
#[derive(Debug, Clone, PartialEq)]
pub enum DiskSeen {
    Missing,
    Present {
        format: String,
        virtual_size: u64,
        /// The tags of its internal snapshots (`None` for a raw file, which has none).
        snapshots: Option<Vec<String>>,
    },
    Unreadable(String),
}

/// A run directory that belongs to no VM vman knows.
#[derive(Debug, Clone, PartialEq)]
pub struct OrphanSeen {
    pub run_dir: PathBuf,
    /// A live QEMU whose pidfile is in that directory.
    pub qemu_pid: Option<i32>,
}

/// One entry of a directory, as listed (symlinks are not followed).
#[derive(Debug, Clone, PartialEq)]
pub struct FileSeen {
    pub name: String,
    pub directory: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
    /// The host refused what the user asked for (a bad image, say): bad input, not a host fault.
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    Timeout(String),
    /// A write under `path` failed for want of space (ENOSPC, EDQUOT).
    #[error("no space left on the filesystem of {} ({free_bytes} bytes free): {detail}", path.display())]
    NoSpace {
        path: PathBuf,
        free_bytes: u64,
        detail: String,
    },
}

/// What one running VM's QEMU has used, read at one instant (counters grow
/// from its start).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmCounters {
    /// CPU time of the QEMU process (every vCPU and QEMU's own threads), in seconds.
    pub cpu_seconds: f64,
    /// Resident memory of the QEMU process, in bytes.
    pub rss_bytes: u64,
    /// How long the QEMU process has run, in seconds.
    pub uptime_seconds: f64,
    /// Per disk (by disk id), as QMP `query-blockstats` reports (empty when QMP did not answer).
    pub disks: Vec<DiskCounters>,
}

/// One disk's I/O since its QEMU started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskCounters {
    pub disk_id: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

/// One link's traffic counters, as the kernel keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// The steps `execute` would take, computed without touching the host.
    fn plan(&self, action: &VmAction) -> Vec<HostStep>;
    async fn execute(&self, action: &VmAction) -> Result<Outcome, HostError>;
    /// [`Hypervisor::execute`], calling `report` as a long action
    /// ([`VmAction::CopyDisk`], [`VmAction::DownloadImage`]) goes.
    async fn execute_reporting(
        &self,
        action: &VmAction,
        report: &Report<'_>,
    ) -> Result<Outcome, HostError> {
        let outcome = self.execute(action).await;
        report(1.0, 0);
        outcome
    }
    /// Whether this port touches the host.
    fn is_dry_run(&self) -> bool;
    /// Takes over a VM whose QEMU may still run from before a vman restart.
    async fn adopt(&self, spec: &VmSpec) -> Result<Adoption, HostError>;
    /// Completes a detach once the guest lets go of the disk (or the VM exits).
    async fn finish_detach(&self, vm_id: &str, disk: &DiskSpec) -> Result<(), HostError>;
    /// Completes a NIC detach once the guest lets go of it (or the VM exits): `netdev_del`.
    async fn finish_detach_nic(&self, vm_id: &str, nic: &NicSpec) -> Result<(), HostError>;
    /// What the host reports on its own, from now on.
    fn events(&self) -> tokio::sync::broadcast::Receiver<HostEvent>;
    /// Reads what the host shows of one VM; never waits longer than `timeout`
    /// on QEMU. Reads only.
    async fn probe(&self, target: &ProbeTarget, timeout: std::time::Duration) -> VmProbe;
    /// Reads a disk's file (`None`: this port cannot tell). Reads only.
    async fn inspect_disk(&self, disk: &DiskSpec) -> Option<DiskSeen>;
    /// Run directories under `run_root` whose name is not in `known`. Reads only.
    async fn orphans(
        &self,
        run_root: &std::path::Path,
        known: &std::collections::HashSet<String>,
    ) -> Vec<OrphanSeen>;
    /// The entries of a directory vman keeps files in, sorted by name
    /// (`None`: this port cannot tell, or the directory cannot be read). Reads only.
    async fn list_dir(&self, dir: &std::path::Path) -> Option<Vec<FileSeen>>;

    /// The serial console of the VM whose run directory is `run_dir`. Reads only.
    fn console(&self, vm_id: &str, run_dir: &std::path::Path) -> ConsoleAccess;

    /// Removes the `*.partial` files under `storage` and `storage/images`: a
    /// copy or qemu-img run that vman was killed in the middle of. Only for a
    /// start, while no operation runs. Returns what it removed; a dry run
    /// touches nothing.
    async fn remove_partials(&self, storage: &std::path::Path) -> Vec<PathBuf>;

    /// The command line the VM's QEMU runs with (`None`: no QEMU of it
    /// runs that this port tracks, or a dry run). Reads only.
    async fn command_line(&self, vm_id: &str) -> Option<Vec<String>>;

    /// What the running VM's QEMU has used so far (`None`: no QEMU of it
    /// runs that this port tracks). Never waits on QEMU longer than
    /// `timeout`. Reads only.
    async fn counters(&self, vm_id: &str, timeout: std::time::Duration) -> Option<VmCounters>;
}

/// What a network port is asked to do. Every action is idempotent, so the
/// coherence sweep can repeat one to repair what drifted.
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkAction {
    /// Ensure the bridge exists and is up; with `vlan_link`, ensure the uplink's
    /// VLAN link exists, is enslaved to the bridge and is up. Succeeds when
    /// vman's bridge already exists (repair).
    CreateNetwork {
        bridge: String,
        vlan_link: Option<VlanLink>,
    },
    /// Delete the VLAN link (if any), then the bridge; missing ones are fine.
    DeleteNetwork {
        bridge: String,
        vlan_link: Option<String>,
    },
    /// Ensure a persistent tap exists, is enslaved to `bridge` and is up
    /// (create if missing: NIC start, hot-plug and repair).
    EnsureTap { tap: String, bridge: String },
    /// Delete a tap vman made; a missing one is fine.
    DeleteTap { tap: String },
}

impl NetworkAction {
    /// The action's name, as an operation's `failedStep` gives it.
    pub fn name(&self) -> &'static str {
        match self {
            NetworkAction::CreateNetwork { .. } => "createNetwork",
            NetworkAction::DeleteNetwork { .. } => "deleteNetwork",
            NetworkAction::EnsureTap { .. } => "ensureTap",
            NetworkAction::DeleteTap { .. } => "deleteTap",
        }
    }
}

/// An 802.1Q link `<parent>.<vlan_id>` on an uplink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VlanLink {
    pub name: String,
    pub parent: String,
    pub vlan_id: u16,
}

impl VlanLink {
    pub fn new(parent: &str, vlan_id: u16) -> VlanLink {
        VlanLink {
            name: format!("{parent}.{vlan_id}"),
            parent: parent.to_string(),
            vlan_id,
        }
    }
}

/// One link as a netlink dump shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LinkSeen {
    /// `IFF_UP` is set (administratively up).
    pub up: bool,
    /// The bridge (or other controller) it is enslaved to.
    pub master: Option<String>,
    /// `bridge`, `vlan`, `tun`, `veth`, … (None for links without a kind, like `lo`).
    pub kind: Option<String>,
    /// vman made it (its alias is [`net::OWNER_ALIAS`]); vman changes no other link.
    pub owned: bool,
}

/// Whether the host can do one thing vman may need, and why (not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, async_graphql::SimpleObject)]
pub struct Capability {
    /// Whether this host can do it.
    pub supported: bool,
    /// How it was found out; for an unsupported one, the error the kernel gave.
    pub detail: String,
}

/// What the network port found the host can do, probed once at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, async_graphql::SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct NetworkCapabilities {
    /// 802.1Q VLAN links (`<uplink>.<vlan>`): needed by networks with an uplink.
    pub vlan_links: Capability,
    /// Persistent taps through `/dev/net/tun`: needed by every NIC.
    pub taps: Capability,
}

impl NetworkCapabilities {
    /// What the host can do, for the start log: an absent capability is a
    /// fact about this host, said with what it means for the user, not the
    /// probe's error (that is in `health` and at DEBUG).
    pub fn summary(&self) -> String {
        let vlan_links = if self.vlan_links.supported {
            "VLAN links (802.1Q) available"
        } else {
            "no VLAN links on this host (no 802.1Q support): networks with an uplink \
             cannot be made, networks without one (isolated bridges) work"
        };
        let taps = if self.taps.supported {
            "taps available"
        } else {
            "no taps on this host (/dev/net/tun is not usable): NICs cannot be used, and a VM \
             with one does not start"
        };
        format!("{vlan_links}; {taps}")
    }
}

#[async_trait]
pub trait HostNetwork: Send + Sync {
    /// The steps `execute` would take, computed without touching the host.
    fn plan(&self, action: &NetworkAction) -> Vec<HostStep>;
    async fn execute(&self, action: &NetworkAction) -> Result<Outcome, HostError>;
    /// Every link, by name, from ONE netlink dump (the dry run: what it believes exists).
    async fn links(&self) -> Result<HashMap<String, LinkSeen>, HostError>;
    /// What the host can do, as probed at start.
    fn capabilities(&self) -> NetworkCapabilities;
    /// A link's traffic counters (`None`: no such link). Reads only.
    fn link_counters(&self, name: &str) -> Option<LinkCounters>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_capability_is_said_as_a_fact_not_as_the_probe_error() {
        let error = "the kernel refused an 802.1Q VLAN link (is the 8021q module available?): Operation not supported (os error 95)";
        let capabilities = NetworkCapabilities {
            vlan_links: Capability {
                supported: false,
                detail: error.into(),
            },
            taps: Capability {
                supported: true,
                detail: "/dev/net/tun opens read-write".into(),
            },
        };
        let summary = capabilities.summary();
        assert_eq!(
            summary,
            "no VLAN links on this host (no 802.1Q support): networks with an uplink cannot be \
             made, networks without one (isolated bridges) work; taps available"
        );
        assert!(!summary.contains("os error"), "{summary}");
    }
}
