//! Disk hot-plug as QMP sequences, pure data.
//!
//! The nodes and the device are the ones [`super::argv`] puts on the command
//! line for a cold-plugged disk, built from the same properties, so a disk
//! looks the same to QEMU and to the guest however it was attached. Nothing
//! here talks to QEMU or waits for events; the hypervisor runs the steps.

use crate::host::{DiskSpec, HostStep, NicSpec};

use super::argv::{
    device_id, device_props, disk_node, file_node, file_node_props, format_node_props, netdev_id,
    netdev_props, nic_device_id, nic_props,
};

/// The QMP event that ends an unplug, once the guest has released the device.
pub const DEVICE_DELETED: &str = "DEVICE_DELETED";

/// Plug a disk into a free root port (`port`, e.g. from
/// [`super::argv::spare_root_ports`]): the `file` node, the format node on
/// it, then the `virtio-blk-pci` device.
///
/// If a step fails, undo the ones that succeeded with the matching tail of
/// [`detach_disk`]'s second list (`blockdev-del` format node, then file node).
pub fn attach_disk(vm_id: &str, disk: &DiskSpec, port: &str) -> Vec<HostStep> {
    vec![
        qmp(vm_id, "blockdev-add", file_node_props(disk).qmp_arguments()),
        qmp(
            vm_id,
            "blockdev-add",
            format_node_props(disk).qmp_arguments(),
        ),
        qmp(
            vm_id,
            "device_add",
            device_props(disk, port).qmp_arguments(),
        ),
    ]
}

/// Unplug a disk, in two halves.
///
/// The first (`device_del`) only asks: the guest must release the device.
/// QEMU 7.2 then emits [`DEVICE_DELETED`] twice — first for the
/// `…/virtio-backend` child with no `device` field, then with `data.device`
/// equal to [`device_id`]; wait for the second. A VM with no guest OS never
/// answers. Only after that event may the second half (`blockdev-del` of the
/// format node, then of the file node) run: QEMU refuses to delete a node
/// that a device or another node still uses, and deleting the format node
/// leaves the file node behind.
pub fn detach_disk(vm_id: &str, disk: &DiskSpec) -> (Vec<HostStep>, Vec<HostStep>) {
    let unplug = vec![qmp(
        vm_id,
        "device_del",
        serde_json::json!({ "id": device_id(&disk.id) }),
    )];
    let release = vec![
        qmp(
            vm_id,
            "blockdev-del",
            serde_json::json!({ "node-name": disk_node(&disk.id) }),
        ),
        qmp(
            vm_id,
            "blockdev-del",
            serde_json::json!({ "node-name": file_node(&disk.id) }),
        ),
    ];
    (unplug, release)
}

/// Plug a NIC whose tap exists into a free root port: the tap netdev, then
/// the device. If the device fails, undo with [`detach_nic`]'s second list.
pub fn attach_nic(vm_id: &str, nic: &NicSpec, port: &str) -> Vec<HostStep> {
    vec![
        qmp(vm_id, "netdev_add", netdev_props(nic).qmp_arguments()),
        qmp(vm_id, "device_add", nic_props(nic, port).qmp_arguments()),
    ]
}

/// Unplug a NIC, in two halves like [`detach_disk`]: `device_del` (the guest
/// must release it: wait for [`DEVICE_DELETED`] naming [`nic_device_id`]),
/// then `netdev_del`, which QEMU refuses while a device uses the netdev.
pub fn detach_nic(vm_id: &str, nic: &NicSpec) -> (Vec<HostStep>, Vec<HostStep>) {
    (
        vec![qmp(
            vm_id,
            "device_del",
            serde_json::json!({ "id": nic_device_id(&nic.id) }),
        )],
        vec![qmp(
            vm_id,
            "netdev_del",
            serde_json::json!({ "id": netdev_id(&nic.id) }),
        )],
    )
}

fn qmp(vm_id: &str, command: &str, arguments: serde_json::Value) -> HostStep {
    HostStep::Qmp {
        vm_id: vm_id.to_string(),
        command: command.to_string(),
        arguments,
    }
}
