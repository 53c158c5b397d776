//! Probing for the coherence sweep: what the host shows of a VM, its disks
//! and the run directories no VM owns.
//!
//! Reads only. A probe never starts, stops or changes anything, and never
//! waits on QEMU longer than the timeout it is given: a hung QEMU makes a
//! probe say so, it must not stall the sweep.

use std::{collections::HashSet, path::Path, time::Duration};

use super::{QemuHypervisor, argv, img, process, qmp};
use crate::{
    disk::model::DiskFormat,
    host::{DiskSeen, DiskSpec, HostError, OrphanSeen, ProbeTarget, ProcessSeen, QmpSeen, VmProbe},
};

/// How long after a tracked QEMU's exit the sweep leaves the VM to the
/// observer's push path (which records the exit with its forensics).
pub(super) const PUSH_GRACE: Duration = Duration::from_secs(2);

impl QemuHypervisor {
    pub(super) async fn probe_vm(&self, target: &ProbeTarget, timeout: Duration) -> VmProbe {
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
        let qmp = match vm.qmp_ready().await.probe_status(timeout).await {
            Err(HostError::Timeout(_)) => QmpSeen::Silent,
            Err(e) => QmpSeen::Failed(e.to_string()),
            Ok(status) => QmpSeen::Status {
                status: qmp::run_state_name(&status.status),
                running: status.running,
            },
        };
        let disks = match qmp {
            QmpSeen::Status { .. } => tokio::time::timeout(
                timeout,
                vm.qmp_ready()
                    .await
                    .execute_json("query-block", &serde_json::Value::Null),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .map(|blocks| disk_devices(&blocks)),
            QmpSeen::Silent | QmpSeen::Failed(_) => None,
        };
        VmProbe {
            process,
            qmp: Some(qmp),
            disks,
        }
    }

    pub(super) async fn inspect_disk(&self, disk: &DiskSpec) -> DiskSeen {
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
                snapshots: None,
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
                snapshots: Some(info.snapshot_tags()),
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

/// Run directories under `run_root` that belong to no VM in `known`, with
/// the QEMU still running in each (by its pidfile, checked by its command line).
pub(super) fn orphans(run_root: &Path, known: &HashSet<String>) -> Vec<OrphanSeen> {
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

/// What identifies one version of a file: when it changes, it is read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileStamp {
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
