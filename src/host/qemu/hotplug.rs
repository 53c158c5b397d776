//! The QMP sequences of disk hot-plug, as data (pure; golden-tested).

use serde_json::json;

use super::argv::{device_id, disk_node, file_node};
use crate::host::{DiskSpec, HostStep};

fn qmp(vm_id: &str, command: &str, arguments: serde_json::Value) -> HostStep {
    HostStep::Qmp {
        vm_id: vm_id.to_string(),
        command: command.to_string(),
        arguments,
    }
}

/// A file node and a format node (explicit drivers, no probing), then the device on `port`.
pub fn attach_disk(vm_id: &str, disk: &DiskSpec, port: &str) -> Vec<HostStep> {
    vec![
        qmp(
            vm_id,
            "blockdev-add",
            json!({"driver": "file", "filename": disk.path.display().to_string(), "node-name": file_node(&disk.id), "discard": "unmap"}),
        ),
        qmp(
            vm_id,
            "blockdev-add",
            json!({"driver": disk.format.qemu_name(), "file": file_node(&disk.id), "node-name": disk_node(&disk.id)}),
        ),
        qmp(
            vm_id,
            "device_add",
            json!({"driver": "virtio-blk-pci", "drive": disk_node(&disk.id), "id": device_id(&disk.id), "bus": port}),
        ),
    ]
}

/// The unplug request, and what releases the nodes once QEMU reports `DEVICE_DELETED`.
pub fn detach_disk(vm_id: &str, disk: &DiskSpec) -> (Vec<HostStep>, Vec<HostStep>) {
    (
        vec![qmp(vm_id, "device_del", json!({"id": device_id(&disk.id)}))],
        vec![
            qmp(
                vm_id,
                "blockdev-del",
                json!({"node-name": disk_node(&disk.id)}),
            ),
            qmp(
                vm_id,
                "blockdev-del",
                json!({"node-name": file_node(&disk.id)}),
            ),
        ],
    )
}
