//! The exact host steps a [`VmAction`] takes, as a pure function of data.
//!
//! The dry-run port returns this plan and the real port records it, so a
//! `dryRun: true` mutation shows what a real one would do. Nothing here may
//! touch the host, read a clock or depend on what runs: the same action and
//! options always give the same steps.

use std::time::Duration;

use serde_json::json;

use super::{argv, argv::QemuOptions, download, files, hotplug, img};
use crate::host::{HostStep, VmAction};

/// How long `detachDisk` waits for the guest before reporting the disk as DETACHING.
pub(super) const DETACH_WAIT: Duration = Duration::from_secs(3);
/// How long a snapshot job (saving or loading a VM's memory) may take.
pub(super) const SNAPSHOT_JOB_WAIT: Duration = Duration::from_secs(600);
/// The QMP event a snapshot job's end is awaited on.
pub(super) const JOB_STATUS_CHANGE: &str = "JOB_STATUS_CHANGE";

/// The exact host steps an action takes.
pub fn plan(options: &QemuOptions, action: &VmAction) -> Vec<HostStep> {
    match action {
        VmAction::Start(spec) => {
            let mut steps = vec![HostStep::CreateDir {
                path: spec.run_dir.clone(),
            }];
            if spec.seed.is_some() {
                steps.push(HostStep::WriteSeed {
                    path: argv::seed_image(&spec.run_dir),
                });
            }
            steps.push(HostStep::SpawnQemu {
                vm_id: spec.id.clone(),
                argv: argv::argv(spec, options),
            });
            steps.push(step_qmp(&spec.id, "cont"));
            steps
        }
        VmAction::Stop { vm_id, request } => {
            let mut steps = Vec::new();
            if !request.force {
                steps.push(step_qmp(vm_id, "system_powerdown"));
                steps.push(HostStep::Await {
                    vm_id: vm_id.clone(),
                    event: "SHUTDOWN".into(),
                    timeout_ms: request.timeout_ms,
                });
            }
            steps.push(step_qmp(vm_id, "quit"));
            steps.push(HostStep::Signal {
                vm_id: vm_id.clone(),
                signal: "SIGKILL (if QEMU is still running)".into(),
            });
            steps
        }
        VmAction::Pause { vm_id } => vec![step_qmp(vm_id, "stop")],
        VmAction::Resume { vm_id } => vec![step_qmp(vm_id, "cont")],
        VmAction::Reset { vm_id } => vec![step_qmp(vm_id, "system_reset")],
        VmAction::CreateDisk(disk) => vec![HostStep::Exec {
            argv: img::create_argv(&options.img_binary, disk, &img::partial_path(disk)),
        }],
        VmAction::DeleteDisk(disk) => vec![HostStep::RemoveFile {
            path: disk.path.clone(),
        }],
        VmAction::DeleteImage { path } => vec![HostStep::RemoveFile { path: path.clone() }],
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
        VmAction::ChangeMedium { vm_id, medium } => {
            vec![argv::change_medium(vm_id, medium.as_deref())]
        }
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
        VmAction::CreateSnapshot {
            running_vm: Some(vm_id),
            disks,
            tag,
            with_memory: true,
        } => snapshot_job(
            vm_id,
            "snapshot-save",
            &job_id("save", tag),
            json!({
                "job-id": job_id("save", tag),
                "tag": tag,
                "vmstate": vmstate_node(disks),
                "devices": disk_nodes(disks),
            }),
        ),
        VmAction::CreateSnapshot {
            running_vm: Some(vm_id),
            disks,
            tag,
            with_memory: false,
        } => vec![HostStep::Qmp {
            vm_id: vm_id.clone(),
            command: "transaction".into(),
            arguments: json!({
                "actions": disks.iter().map(|d| json!({
                    "type": "blockdev-snapshot-internal-sync",
                    "data": {"device": argv::disk_node(&d.id), "name": tag},
                })).collect::<Vec<_>>(),
            }),
        }],
        VmAction::RestoreSnapshot {
            running_vm: Some(vm_id),
            disks,
            tag,
        } => snapshot_job(
            vm_id,
            "snapshot-load",
            &job_id("load", tag),
            json!({
                "job-id": job_id("load", tag),
                "tag": tag,
                "vmstate": vmstate_node(disks),
                "devices": disk_nodes(disks),
            }),
        ),
        VmAction::DeleteSnapshot {
            running_vm: Some(vm_id),
            disks,
            tag,
        } => snapshot_job(
            vm_id,
            "snapshot-delete",
            &job_id("delete", tag),
            json!({
                "job-id": job_id("delete", tag),
                "tag": tag,
                "devices": disk_nodes(disks),
            }),
        ),
        VmAction::CreateSnapshot {
            running_vm: None,
            disks,
            tag,
            ..
        } => img_snapshot(options, img::SnapshotOp::Create, tag, disks),
        VmAction::RestoreSnapshot {
            running_vm: None,
            disks,
            tag,
        } => img_snapshot(options, img::SnapshotOp::Apply, tag, disks),
        VmAction::DeleteSnapshot {
            running_vm: None,
            disks,
            tag,
        } => img_snapshot(options, img::SnapshotOp::Delete, tag, disks),
        VmAction::CopyDisk { from, to } => vec![HostStep::Exec {
            argv: img::convert_argv(options, from, to, &img::partial_path(to)),
        }],
        VmAction::MoveFile {
            from,
            to,
            read_only,
        } => vec![HostStep::MoveFile {
            from: from.clone(),
            to: to.clone(),
            read_only: *read_only,
        }],
        VmAction::DownloadImage {
            url,
            sha256,
            dest,
            disk,
            ..
        } => {
            let partial = files::partial_of(dest);
            let mut steps = vec![HostStep::Download {
                url: download::shown(url),
                to: partial.clone(),
                sha256: sha256.clone(),
            }];
            if *disk {
                steps.push(HostStep::Exec {
                    argv: img::info_argv(&options.img_binary, &partial),
                });
            }
            steps.push(HostStep::MoveFile {
                from: partial,
                to: dest.clone(),
                read_only: false,
            });
            steps
        }
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

/// A QMP command without arguments.
pub(super) fn step_qmp(vm_id: &str, command: &str) -> HostStep {
    HostStep::Qmp {
        vm_id: vm_id.to_string(),
        command: command.to_string(),
        arguments: serde_json::Value::Null,
    }
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

/// The id of the QMP job that does `verb` to snapshot `tag`.
pub(super) fn job_id(verb: &str, tag: &str) -> String {
    format!("vman-{verb}-{tag}")
}

/// The node a snapshot's memory is saved on: the VM's first disk (its root).
fn vmstate_node(disks: &[crate::host::DiskSpec]) -> String {
    disks
        .first()
        .map(|d| argv::disk_node(&d.id))
        .unwrap_or_default()
}

fn disk_nodes(disks: &[crate::host::DiskSpec]) -> Vec<String> {
    disks.iter().map(|d| argv::disk_node(&d.id)).collect()
}

/// A snapshot job: its command, the wait for it to conclude, the read of
/// how it ended (`query-jobs`), and its dismissal.
fn snapshot_job(
    vm_id: &str,
    command: &str,
    job: &str,
    arguments: serde_json::Value,
) -> Vec<HostStep> {
    vec![
        HostStep::Qmp {
            vm_id: vm_id.to_string(),
            command: command.to_string(),
            arguments,
        },
        HostStep::Await {
            vm_id: vm_id.to_string(),
            event: format!("{JOB_STATUS_CHANGE} concluded (job {job})"),
            timeout_ms: SNAPSHOT_JOB_WAIT.as_millis() as u64,
        },
        step_qmp(vm_id, "query-jobs"),
        HostStep::Qmp {
            vm_id: vm_id.to_string(),
            command: "job-dismiss".into(),
            arguments: json!({"id": job}),
        },
    ]
}

/// `qemu-img snapshot` on each disk, in order.
fn img_snapshot(
    options: &QemuOptions,
    op: img::SnapshotOp,
    tag: &str,
    disks: &[crate::host::DiskSpec],
) -> Vec<HostStep> {
    disks
        .iter()
        .map(|disk| HostStep::Exec {
            argv: img::snapshot_argv(&options.img_binary, op, tag, disk),
        })
        .collect()
}
