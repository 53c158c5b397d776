//! The exact host steps a [`VmAction`] takes, as a pure function of data.
//!
//! The dry-run port returns this plan and the real port records it, so a
//! `dryRun: true` mutation shows what a real one would do. Nothing here may
//! touch the host, read a clock or depend on what runs: the same action and
//! options always give the same steps.

use std::time::Duration;

use serde_json::json;

use super::{argv, argv::QemuOptions, hotplug, img};
use crate::host::{HostStep, VmAction};

/// How long `detachDisk` waits for the guest before reporting the disk as DETACHING.
pub(super) const DETACH_WAIT: Duration = Duration::from_secs(3);

/// The exact host steps an action takes.
pub fn plan(options: &QemuOptions, action: &VmAction) -> Vec<HostStep> {
    match action {
        VmAction::Start(spec) => vec![
            HostStep::CreateDir {
                path: spec.run_dir.clone(),
            },
            HostStep::SpawnQemu {
                vm_id: spec.id.clone(),
                argv: argv::argv(spec, options),
            },
            step_qmp(&spec.id, "cont"),
        ],
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
