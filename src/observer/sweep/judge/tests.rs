//! Table tests of the judge: snapshots built by hand, the exact drifts and
//! observations expected. No QEMU, no database.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::Duration,
};

use chrono::{DateTime, TimeZone, Utc};
use sea_orm::Iterable;

use super::*;
use crate::{
    disk::DiskFormat,
    host::{DiskSeen, FileSeen, LinkSeen, OrphanSeen, ProcessSeen, QmpSeen, VmProbe},
    network::{Network, Nic},
    observer::sweep::snapshot::{DiskFile, Listing, Rows, Snapshot, StorageSeen},
    operation::OperationKind,
};

const TIMEOUT: Duration = Duration::from_millis(500);
const PID: i32 = 4242;
const MIB: i64 = 1 << 20;
const VM: &str = "vm-a";

fn at() -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000, 0).unwrap()
}

fn vm(id: &str, state: VmState) -> Vm {
    Vm {
        id: id.into(),
        name: id.into(),
        template_id: None,
        vcpus: 1,
        memory_mib: 64,
        desired_state: state,
        state,
        state_reason: None,
        description: String::new(),
        pending_changes: None,
        cdrom_image_id: None,
        boot_order: None,
        host_id: None,
        created_at: at(),
        updated_at: at(),
    }
}

fn disk(id: &str, vm: Option<&str>, attachment: Attachment) -> Disk {
    Disk {
        id: id.into(),
        name: id.into(),
        format: DiskFormat::Qcow2,
        size_bytes: MIB,
        vm_id: vm.map(str::to_string),
        attachment,
        backing_template_id: None,
        base_id: None,
        host_id: None,
        created_at: at(),
        updated_at: at(),
    }
}

fn network(id: &str, bridge: &str) -> Network {
    Network {
        id: id.into(),
        name: id.into(),
        vlan_id: 10,
        bridge: bridge.into(),
        uplink: None,
        created_at: at(),
    }
}

fn nic(id: &str, vm: &str, network: &str, tap: &str, attachment: NicAttachment) -> Nic {
    Nic {
        id: id.into(),
        vm_id: vm.into(),
        network_id: network.into(),
        mac: "52:54:00:12:34:56".into(),
        model: "virtio-net-pci".into(),
        position: 0,
        tap: Some(tap.into()),
        attachment,
        created_at: at(),
    }
}

fn link(up: bool, master: Option<&str>) -> LinkSeen {
    LinkSeen {
        up,
        master: master.map(str::to_string),
        kind: None,
        owned: true,
    }
}

/// A tracked QEMU whose QMP reports `status`, with the disks `query-block` listed.
fn answering(status: &str, running: bool, disks: &[&str]) -> VmProbe {
    VmProbe {
        process: ProcessSeen::Tracked { pid: PID },
        qmp: Some(QmpSeen::Status {
            status: status.into(),
            running,
        }),
        disks: Some(disks.iter().map(|d| d.to_string()).collect()),
    }
}

fn running() -> VmProbe {
    answering("running", true, &[])
}

fn paused() -> VmProbe {
    answering("paused", false, &[])
}

/// A tracked QEMU whose QMP gave no status.
fn tracked(qmp: Option<QmpSeen>) -> VmProbe {
    VmProbe {
        process: ProcessSeen::Tracked { pid: PID },
        qmp,
        disks: None,
    }
}

fn process(process: ProcessSeen) -> VmProbe {
    VmProbe {
        process,
        qmp: None,
        disks: None,
    }
}

fn snapshot(rows: Rows) -> Snapshot {
    Snapshot {
        rows,
        probe_timeout: TIMEOUT,
        ..Snapshot::default()
    }
}

/// One VM in `state`, and what its probe showed.
fn one_vm(state: VmState, probe: VmProbe) -> Snapshot {
    let mut snap = snapshot(Rows {
        vms: vec![vm(VM, state)],
        ..Rows::default()
    });
    snap.probes.insert(VM.into(), probe);
    snap
}

fn ids(ids: &[&str]) -> HashSet<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

fn vm_drift(kind: CoherenceKind, expected: &str, observed: &str, repair: Option<Repair>) -> Drift {
    Drift {
        finding: Finding {
            kind,
            subject_type: SubjectType::Vm,
            subject_id: VM.into(),
            vm_id: Some(VM.into()),
            expected: expected.into(),
            observed: observed.into(),
        },
        repair,
    }
}

fn disk_drift(
    kind: CoherenceKind,
    disk: &str,
    vm: Option<&str>,
    expected: &str,
    observed: &str,
) -> Drift {
    Drift {
        finding: Finding {
            kind,
            subject_type: SubjectType::Disk,
            subject_id: disk.into(),
            vm_id: vm.map(str::to_string),
            expected: expected.into(),
            observed: observed.into(),
        },
        repair: None,
    }
}

fn observation(to: VmState, reason: &str) -> Observation {
    Observation {
        vm_id: VM.into(),
        to,
        reason: reason.into(),
    }
}

/// One row of a table: a snapshot, and exactly what the judge must find in it.
struct Case {
    name: &'static str,
    snap: Snapshot,
    drifts: Vec<Drift>,
    observations: Vec<Observation>,
}

fn case(name: &'static str, snap: Snapshot, drifts: Vec<Drift>) -> Case {
    Case {
        name,
        snap,
        drifts,
        observations: Vec::new(),
    }
}

fn check(cases: Vec<Case>) {
    for case in cases {
        let judged = judge(&case.snap);
        assert_eq!(judged.drifts, case.drifts, "drifts of: {}", case.name);
        assert_eq!(
            judged.observations, case.observations,
            "observations of: {}",
            case.name
        );
    }
}

fn vm_process_cases() -> Vec<Case> {
    use CoherenceKind::*;
    let silent = "no reply to query-status within 500ms (QEMU pid 4242)";
    vec![
        case(
            "a running VM whose QEMU answers running is coherent",
            one_vm(VmState::Running, running()),
            vec![],
        ),
        case(
            "a paused VM whose QEMU answers paused is coherent",
            one_vm(VmState::Paused, paused()),
            vec![],
        ),
        case(
            "a stopped VM without a QEMU is coherent",
            one_vm(VmState::Stopped, process(ProcessSeen::Absent)),
            vec![],
        ),
        case(
            "a crashed VM without a QEMU is coherent",
            one_vm(VmState::Crashed, process(ProcessSeen::Absent)),
            vec![],
        ),
        case(
            "a running VM without a QEMU is marked crashed",
            one_vm(VmState::Running, process(ProcessSeen::Absent)),
            vec![vm_drift(
                ProcessMissing,
                "a QEMU process (RUNNING)",
                "no QEMU process",
                Some(Repair::MarkCrashed),
            )],
        ),
        case(
            "an unknown VM without a QEMU is marked crashed",
            one_vm(VmState::Unknown, process(ProcessSeen::Absent)),
            vec![vm_drift(
                ProcessMissing,
                "a QEMU process (UNKNOWN)",
                "no QEMU process",
                Some(Repair::MarkCrashed),
            )],
        ),
        case(
            "a running VM's QEMU vman does not watch is re-adopted",
            one_vm(
                VmState::Running,
                process(ProcessSeen::Untracked { pid: PID }),
            ),
            vec![vm_drift(
                UntrackedProcess,
                "vman watches the VM's QEMU",
                "QEMU pid 4242 of this VM runs, not watched by vman",
                Some(Repair::Adopt { pid: PID }),
            )],
        ),
        case(
            "a stopped VM's QEMU started by hand is unexpected, and re-adopted",
            one_vm(
                VmState::Stopped,
                process(ProcessSeen::Untracked { pid: PID }),
            ),
            vec![vm_drift(
                UnexpectedProcess,
                "no QEMU process (STOPPED)",
                "QEMU pid 4242 of this VM runs, not watched by vman",
                Some(Repair::Adopt { pid: PID }),
            )],
        ),
        case(
            "a crashed VM whose tracked QEMU answers takes QMP's state",
            one_vm(VmState::Crashed, running()),
            vec![vm_drift(
                UnexpectedProcess,
                "no QEMU process (CRASHED)",
                "QEMU pid 4242 runs (QMP status running)",
                Some(Repair::SyncState(VmState::Running)),
            )],
        ),
        case(
            "a running VM QMP reports paused takes QMP's state",
            one_vm(VmState::Running, paused()),
            vec![vm_drift(
                StatusMismatch,
                "RUNNING",
                "QMP status paused",
                Some(Repair::SyncState(VmState::Paused)),
            )],
        ),
        case(
            "a paused VM QMP reports running takes QMP's state",
            one_vm(VmState::Paused, running()),
            vec![vm_drift(
                StatusMismatch,
                "PAUSED",
                "QMP status running",
                Some(Repair::SyncState(VmState::Running)),
            )],
        ),
        case(
            "a running VM stopped on an I/O error is paused",
            one_vm(VmState::Running, answering("io-error", false, &[])),
            vec![vm_drift(
                StatusMismatch,
                "RUNNING",
                "QMP status io-error",
                Some(Repair::SyncState(VmState::Paused)),
            )],
        ),
        Case {
            name: "a running VM whose QMP is silent becomes unknown, under either policy",
            snap: one_vm(VmState::Running, tracked(Some(QmpSeen::Silent))),
            drifts: vec![vm_drift(
                QmpSilent,
                "QMP answers within 500ms",
                silent,
                None,
            )],
            observations: vec![observation(
                VmState::Unknown,
                &format!("QMP silent: {silent}"),
            )],
        },
        Case {
            name: "a paused VM whose QMP gave nothing is silent",
            snap: one_vm(VmState::Paused, tracked(None)),
            drifts: vec![vm_drift(
                QmpSilent,
                "QMP answers within 500ms",
                silent,
                None,
            )],
            observations: vec![observation(
                VmState::Unknown,
                &format!("QMP silent: {silent}"),
            )],
        },
        Case {
            name: "a running VM whose query-status failed is silent",
            snap: one_vm(
                VmState::Running,
                tracked(Some(QmpSeen::Failed("connection reset".into()))),
            ),
            drifts: vec![vm_drift(
                QmpSilent,
                "QMP answers within 500ms",
                "query-status failed: connection reset",
                None,
            )],
            observations: vec![observation(
                VmState::Unknown,
                "QMP silent: query-status failed: connection reset",
            )],
        },
        case(
            "an unknown VM whose QMP is still silent stays unknown: no new observation",
            one_vm(VmState::Unknown, tracked(Some(QmpSeen::Silent))),
            vec![vm_drift(
                QmpSilent,
                "QMP answers within 500ms",
                silent,
                None,
            )],
        ),
        Case {
            name: "an unknown VM whose QMP answers running is running again",
            snap: one_vm(VmState::Unknown, running()),
            drifts: vec![],
            observations: vec![observation(
                VmState::Running,
                "QMP answers again (status running)",
            )],
        },
        Case {
            name: "an unknown VM whose QMP answers paused is paused again",
            snap: one_vm(VmState::Unknown, paused()),
            drifts: vec![],
            observations: vec![observation(
                VmState::Paused,
                "QMP answers again (status paused)",
            )],
        },
    ]
}

#[test]
fn a_vms_process_and_run_state_are_judged_against_its_row() {
    check(vm_process_cases());
}

/// A VM the sweep must leave alone: its QEMU shows another state and lacks
/// its disk, the disk's file is gone, its tap is gone, and still nothing is
/// found.
fn left_alone(state: VmState, busy: bool, locked: bool) -> Snapshot {
    let mut snap = one_vm(state, paused());
    snap.rows.disks = vec![disk("d-1", Some(VM), Attachment::Attached)];
    snap.disk_files.insert(
        "d-1".into(),
        DiskFile {
            path: "/data/storage/d-1.qcow2".into(),
            seen: DiskSeen::Missing,
        },
    );
    snap.rows.networks = vec![network("net-1", "vmbr10")];
    snap.rows.nics = vec![nic("nic-1", VM, "net-1", "vt1", NicAttachment::Attached)];
    snap.links = Some(HashMap::from([("vmbr10".into(), link(true, None))]));
    if busy {
        snap.rows.busy.insert(VM.into());
    }
    if locked {
        snap.locked.insert(VM.into());
    }
    snap
}

#[test]
fn a_vm_starting_stopping_or_in_an_operations_hands_is_left_alone() {
    let only_the_bridge = Judgement {
        checked: Checked {
            orphans: true,
            links: ids(&["net-1"]),
            ..Checked::default()
        },
        ..Judgement::default()
    };
    for (name, snap) in [
        ("starting", left_alone(VmState::Starting, false, false)),
        ("stopping", left_alone(VmState::Stopping, false, false)),
        (
            "running, an operation in flight",
            left_alone(VmState::Running, true, false),
        ),
        (
            "running, a mutation's lock held",
            left_alone(VmState::Running, false, true),
        ),
    ] {
        assert_eq!(judge(&snap), only_the_bridge, "{name}");
    }
}

#[test]
fn an_exit_the_push_path_is_recording_or_a_probe_that_timed_out_is_no_finding() {
    let nothing = Judgement {
        checked: Checked {
            orphans: true,
            ..Checked::default()
        },
        ..Judgement::default()
    };
    let just_exited = one_vm(VmState::Running, process(ProcessSeen::JustExited));
    assert_eq!(judge(&just_exited), nothing, "just exited");
    let mut timed_out = one_vm(VmState::Running, running());
    timed_out.probes.clear();
    assert_eq!(judge(&timed_out), nothing, "timed out");
}

/// VM `vm-a` runs; its QEMU has `in_qemu`; the database has `disks`.
fn vm_with_disks(in_qemu: &[&str], disks: Vec<Disk>) -> Snapshot {
    let mut snap = one_vm(VmState::Running, answering("running", true, in_qemu));
    snap.rows.vms.push(vm("vm-b", VmState::Stopped));
    snap.probes
        .insert("vm-b".into(), process(ProcessSeen::Absent));
    snap.rows.disks = disks;
    snap
}

fn vm_disk_cases() -> Vec<Case> {
    use Attachment::*;
    use CoherenceKind::*;
    vec![
        case(
            "QEMU has the attached and detaching disks; one being plugged is not expected yet",
            vm_with_disks(
                &["d-1", "d-2"],
                vec![
                    disk("d-1", Some(VM), Attached),
                    disk("d-2", Some(VM), Detaching),
                    disk("d-3", Some(VM), Attaching),
                    disk("d-4", Some("vm-b"), Attached),
                ],
            ),
            vec![],
        ),
        case(
            "an attached disk QEMU has no device for",
            vm_with_disks(&[], vec![disk("d-1", Some(VM), Attached)]),
            vec![disk_drift(
                DiskNotInQemu,
                "d-1",
                Some(VM),
                "disk \"d-1\" attached to the running VM",
                "QEMU has no device for it (query-block)",
            )],
        ),
        case(
            "devices QEMU has for disks not attached to it",
            vm_with_disks(
                &["d-5", "d-6", "ghost"],
                vec![
                    disk("d-5", None, Detached),
                    disk("d-6", Some("vm-b"), Attached),
                ],
            ),
            vec![
                disk_drift(
                    DiskUnexpectedInQemu,
                    "d-5",
                    Some(VM),
                    "disk \"d-5\" is detached in the database",
                    "the VM's QEMU has a device for it (query-block)",
                ),
                disk_drift(
                    DiskUnexpectedInQemu,
                    "d-6",
                    Some(VM),
                    "disk \"d-6\" is attached to VM vm-b in the database",
                    "the VM's QEMU has a device for it (query-block)",
                ),
                disk_drift(
                    DiskUnexpectedInQemu,
                    "ghost",
                    Some(VM),
                    "no such disk in the database",
                    "the VM's QEMU has a device for it (query-block)",
                ),
            ],
        ),
        case(
            "a QEMU whose query-block did not answer tells nothing about its disks",
            {
                let mut snap = vm_with_disks(&[], vec![disk("d-1", Some(VM), Attached)]);
                snap.probes.insert(VM.into(), running());
                snap.probes.get_mut(VM).unwrap().disks = None;
                snap
            },
            vec![],
        ),
    ]
}

#[test]
fn the_disks_a_running_qemu_has_are_judged_against_the_attachments() {
    check(vm_disk_cases());
}

#[test]
fn a_qemu_that_did_not_list_its_disks_leaves_their_issues_open() {
    let mut snap = vm_with_disks(&[], vec![disk("d-1", Some(VM), Attachment::Attached)]);
    snap.probes.get_mut(VM).unwrap().disks = None;
    // vm-b runs no QEMU: it has no disk in QEMU, and that is known.
    assert_eq!(judge(&snap).checked.vm_disks, ids(&["vm-b"]));
}

/// Disk `d-1` (qcow2, 1 MiB, of `vm`), its file seen as `seen`.
fn disk_file_seen(vm_of_disk: Option<&str>, seen: DiskSeen) -> Snapshot {
    let mut snap = snapshot(Rows {
        disks: vec![disk(
            "d-1",
            vm_of_disk,
            match vm_of_disk {
                Some(_) => Attachment::Attached,
                None => Attachment::Detached,
            },
        )],
        ..Rows::default()
    });
    if let Some(id) = vm_of_disk {
        snap.rows.vms.push(vm(id, VmState::Stopped));
        snap.probes.insert(id.into(), process(ProcessSeen::Absent));
    }
    snap.disk_files.insert(
        "d-1".into(),
        DiskFile {
            path: PathBuf::from("/data/storage/d-1.qcow2"),
            seen,
        },
    );
    snap
}

fn present(format: &str, virtual_size: i64) -> DiskSeen {
    DiskSeen::Present {
        format: format.into(),
        virtual_size: virtual_size as u64,
        snapshots: None,
    }
}

/// A qcow2 file of 1 MiB with these internal snapshots.
fn with_tags(tags: &[&str]) -> DiskSeen {
    DiskSeen::Present {
        format: "qcow2".into(),
        virtual_size: MIB as u64,
        snapshots: Some(tags.iter().map(|t| t.to_string()).collect()),
    }
}

/// Adds snapshot `s-1` ("before") of `VM`, covering disk `d-1`.
fn with_snapshot_row(mut snap: Snapshot) -> Snapshot {
    snap.rows.snapshots.push(crate::snapshot::Snapshot {
        id: "s-1".into(),
        vm_id: VM.into(),
        name: "before".into(),
        with_memory: false,
        vm_state: VmState::Stopped,
        disk_ids: serde_json::json!(["d-1"]),
        vcpus: 1,
        memory_mib: 64,
        machine: None,
        created_at: at(),
    });
    snap
}

fn disk_file_cases() -> Vec<Case> {
    use CoherenceKind::*;
    let busy = |mut snap: Snapshot, id: &str| {
        snap.rows.busy.insert(id.into());
        snap
    };
    vec![
        case(
            "a disk file of the right format and size is coherent",
            disk_file_seen(None, present("qcow2", MIB)),
            vec![],
        ),
        case(
            "a missing file",
            disk_file_seen(None, DiskSeen::Missing),
            vec![disk_drift(
                DiskFileMissing,
                "d-1",
                None,
                "file /data/storage/d-1.qcow2",
                "no such file",
            )],
        ),
        case(
            "a missing file of a VM's disk names the VM",
            disk_file_seen(Some(VM), DiskSeen::Missing),
            vec![disk_drift(
                DiskFileMissing,
                "d-1",
                Some(VM),
                "file /data/storage/d-1.qcow2",
                "no such file",
            )],
        ),
        case(
            "an unreadable file",
            disk_file_seen(None, DiskSeen::Unreadable("Permission denied".into())),
            vec![disk_drift(
                DiskFileUnreadable,
                "d-1",
                None,
                "a readable disk image at /data/storage/d-1.qcow2",
                "Permission denied",
            )],
        ),
        case(
            "a file of another format",
            disk_file_seen(None, present("raw", MIB)),
            vec![disk_drift(
                DiskFormatMismatch,
                "d-1",
                None,
                "format qcow2",
                "format raw (qemu-img info)",
            )],
        ),
        case(
            "a file of another size",
            disk_file_seen(None, present("qcow2", 2 * MIB)),
            vec![disk_drift(
                DiskSizeMismatch,
                "d-1",
                None,
                "1048576 bytes",
                "2097152 bytes",
            )],
        ),
        case(
            "a file of another format and size: both, format first",
            disk_file_seen(None, present("raw", 2 * MIB)),
            vec![
                disk_drift(
                    DiskFormatMismatch,
                    "d-1",
                    None,
                    "format qcow2",
                    "format raw (qemu-img info)",
                ),
                disk_drift(
                    DiskSizeMismatch,
                    "d-1",
                    None,
                    "1048576 bytes",
                    "2097152 bytes",
                ),
            ],
        ),
        case(
            "a disk with an operation in flight is left alone",
            busy(disk_file_seen(None, DiskSeen::Missing), "d-1"),
            vec![],
        ),
        case(
            "a disk whose VM has an operation in flight is left alone",
            busy(disk_file_seen(Some(VM), DiskSeen::Missing), VM),
            vec![],
        ),
        case(
            "a disk the port could not read tells nothing",
            {
                let mut snap = disk_file_seen(None, DiskSeen::Missing);
                snap.disk_files.clear();
                snap
            },
            vec![],
        ),
        case(
            "a disk whose file has its VM's snapshots, and only those, is coherent",
            with_snapshot_row(disk_file_seen(Some(VM), with_tags(&["s-1"]))),
            vec![],
        ),
        case(
            "a snapshot of the disk's VM that its file lacks",
            with_snapshot_row(disk_file_seen(Some(VM), with_tags(&[]))),
            vec![disk_drift(
                SnapshotMissingInImage,
                "d-1",
                Some(VM),
                "snapshot \"before\" (s-1) in /data/storage/d-1.qcow2",
                "qemu-img info lists no such internal snapshot",
            )],
        ),
        case(
            "an internal snapshot no snapshot has",
            with_snapshot_row(disk_file_seen(Some(VM), with_tags(&["s-1", "by-hand"]))),
            vec![disk_drift(
                SnapshotUnknownInImage,
                "d-1",
                Some(VM),
                "only the internal snapshots of vman's snapshots in /data/storage/d-1.qcow2",
                "internal snapshot by-hand (qemu-img info), which no snapshot has",
            )],
        ),
        case(
            "a detached disk keeps the internal snapshots of a snapshot of its old VM",
            with_snapshot_row(disk_file_seen(None, with_tags(&["s-1"]))),
            vec![],
        ),
    ]
}

#[test]
fn a_disks_file_is_judged_against_its_row() {
    check(disk_file_cases());
}

fn orphan_cases() -> Vec<Case> {
    let orphan = |kind, dir: &str, expected: &str, observed: &str| Drift {
        finding: Finding {
            kind,
            subject_type: SubjectType::RunDir,
            subject_id: dir.into(),
            vm_id: None,
            expected: expected.into(),
            observed: observed.into(),
        },
        repair: None,
    };
    let mut snap = snapshot(Rows::default());
    snap.orphans = vec![
        OrphanSeen {
            run_dir: "/data/run/x".into(),
            qemu_pid: None,
        },
        OrphanSeen {
            run_dir: "/data/run/y".into(),
            qemu_pid: Some(77),
        },
    ];
    vec![
        case("no orphans", snapshot(Rows::default()), vec![]),
        case(
            "run directories of no VM, one with a QEMU in it: reported, left alone",
            snap,
            vec![
                orphan(
                    CoherenceKind::OrphanRunDir,
                    "/data/run/x",
                    "every run directory belongs to a VM",
                    "/data/run/x belongs to no VM (left alone)",
                ),
                orphan(
                    CoherenceKind::OrphanRunDir,
                    "/data/run/y",
                    "every run directory belongs to a VM",
                    "/data/run/y belongs to no VM (left alone)",
                ),
                orphan(
                    CoherenceKind::OrphanProcess,
                    "/data/run/y",
                    "every QEMU belongs to a VM",
                    "QEMU pid 77 runs from /data/run/y, which belongs to no VM (left alone)",
                ),
            ],
        ),
    ]
}

#[test]
fn run_directories_and_qemus_of_no_vm_are_reported() {
    check(orphan_cases());
}

/// Network `net-1` (bridge vmbr10); VM `vm-a` in `state` with NIC `nic-1`
/// (tap vt1) on it; the host shows `links`.
fn networked(state: VmState, probe: VmProbe, links: &[(&str, LinkSeen)]) -> Snapshot {
    let mut snap = one_vm(state, probe);
    snap.rows.networks = vec![network("net-1", "vmbr10")];
    snap.rows.nics = vec![nic("nic-1", VM, "net-1", "vt1", NicAttachment::Attached)];
    snap.links = Some(
        links
            .iter()
            .map(|(name, link)| (name.to_string(), link.clone()))
            .collect(),
    );
    snap
}

fn link_cases() -> Vec<Case> {
    use CoherenceKind::*;
    let up = link(true, None);
    let on = |bridge| link(true, Some(bridge));
    let bridge = |kind, observed: &str| Drift {
        finding: Finding {
            kind,
            subject_type: SubjectType::Network,
            subject_id: "net-1".into(),
            vm_id: None,
            expected: "bridge vmbr10 exists and is up".into(),
            observed: observed.into(),
        },
        repair: Some(Repair::EnsureNetwork),
    };
    let tap = |kind, observed: &str, repair| Drift {
        finding: Finding {
            kind,
            subject_type: SubjectType::Nic,
            subject_id: "nic-1".into(),
            vm_id: Some(VM.into()),
            expected: "tap vt1 exists, enslaved to vmbr10".into(),
            observed: observed.into(),
        },
        repair: Some(repair),
    };
    let make_again = || Repair::MakeTapAgain {
        tap: "vt1".into(),
        bridge: "vmbr10".into(),
    };
    let put_back = || Repair::PutTapBack {
        tap: "vt1".into(),
        bridge: "vmbr10".into(),
    };
    vec![
        case(
            "a bridge that is up and a running NIC's tap on it are coherent",
            networked(
                VmState::Running,
                running(),
                &[("vmbr10", up.clone()), ("vt1", on("vmbr10"))],
            ),
            vec![],
        ),
        case(
            "a missing bridge is made again",
            networked(VmState::Running, running(), &[("vt1", on("vmbr10"))]),
            vec![bridge(BridgeMissing, "no link named vmbr10")],
        ),
        case(
            "a bridge that is down is set up again",
            networked(
                VmState::Paused,
                paused(),
                &[("vmbr10", link(false, None)), ("vt1", on("vmbr10"))],
            ),
            vec![bridge(BridgeDown, "vmbr10 is down")],
        ),
        case(
            "a running NIC's missing tap is made again",
            networked(VmState::Running, running(), &[("vmbr10", up.clone())]),
            vec![tap(TapMissing, "no link named vt1", make_again())],
        ),
        case(
            "a tap on another bridge is put back",
            networked(
                VmState::Running,
                running(),
                &[("vmbr10", up.clone()), ("vt1", on("vmbr20"))],
            ),
            vec![tap(TapNotOnBridge, "vt1 is enslaved to vmbr20", put_back())],
        ),
        case(
            "a tap on no bridge is put back",
            networked(
                VmState::Running,
                running(),
                &[("vmbr10", up.clone()), ("vt1", link(true, None))],
            ),
            vec![tap(TapNotOnBridge, "vt1 is on no bridge", put_back())],
        ),
        case(
            "a stopped VM's NIC has no tap to check",
            networked(
                VmState::Stopped,
                process(ProcessSeen::Absent),
                &[("vmbr10", up.clone())],
            ),
            vec![],
        ),
        case(
            "a NIC being unplugged has no tap to check",
            {
                let mut snap = networked(VmState::Running, running(), &[("vmbr10", up.clone())]);
                snap.rows.nics[0].attachment = NicAttachment::Detaching;
                snap
            },
            vec![],
        ),
        case(
            "a NIC with an operation in flight is left alone",
            {
                let mut snap = networked(VmState::Running, running(), &[("vmbr10", up.clone())]);
                snap.rows.busy.insert("nic-1".into());
                snap
            },
            vec![],
        ),
        case(
            "a network with an operation in flight is left alone, with its NICs",
            {
                let mut snap = networked(VmState::Running, running(), &[]);
                snap.rows.busy.insert("net-1".into());
                snap
            },
            vec![],
        ),
        case(
            "links that could not be read tell nothing",
            {
                let mut snap = networked(VmState::Running, running(), &[]);
                snap.links = None;
                snap
            },
            vec![],
        ),
    ]
}

#[test]
fn bridges_and_the_taps_of_running_nics_are_judged_against_the_networks() {
    check(link_cases());
}

#[test]
fn what_was_looked_at_is_checked_so_its_open_issues_can_resolve() {
    let mut snap = networked(
        VmState::Running,
        answering("running", true, &["d-1"]),
        &[
            ("vmbr10", link(true, None)),
            ("vt1", link(true, Some("vmbr10"))),
        ],
    );
    snap.rows.disks = vec![disk("d-1", Some(VM), Attachment::Attached)];
    snap.disk_files.insert(
        "d-1".into(),
        DiskFile {
            path: "/data/storage/d-1.qcow2".into(),
            seen: present("qcow2", MIB),
        },
    );
    snap.storage = Some(storage(&["d-1.qcow2", "images/"], &[]));
    assert_eq!(
        judge(&snap),
        Judgement {
            checked: Checked {
                vms: ids(&[VM]),
                vm_disks: ids(&[VM]),
                disk_files: ids(&["d-1"]),
                orphans: true,
                links: ids(&["net-1", "nic-1"]),
                storage: true,
                withdrawn: HashSet::new(),
            },
            ..Judgement::default()
        }
    );
}

#[test]
fn every_coherence_kind_is_found_by_some_case() {
    let found: HashSet<CoherenceKind> = [
        vm_process_cases(),
        vm_disk_cases(),
        disk_file_cases(),
        orphan_cases(),
        link_cases(),
        storage_cases(),
    ]
    .into_iter()
    .flatten()
    .flat_map(|case| case.drifts)
    .map(|drift| drift.finding.kind)
    .collect();
    let missing: Vec<CoherenceKind> = CoherenceKind::iter()
        .filter(|kind| !found.contains(kind))
        .collect();
    assert_eq!(missing, vec![], "kinds no table case finds");
}

#[test]
fn a_drift_whose_subject_changed_hands_since_the_snapshot_is_set_aside() {
    let drifts = judge(&networked(
        VmState::Running,
        process(ProcessSeen::Absent),
        &[],
    ))
    .drifts;
    let kinds = |drifts: &[Drift]| drifts.iter().map(|d| d.finding.kind).collect::<Vec<_>>();
    assert_eq!(
        kinds(&drifts),
        vec![CoherenceKind::ProcessMissing, CoherenceKind::BridgeMissing]
    );
    let now = Rows {
        vms: vec![vm(VM, VmState::Running)],
        networks: vec![network("net-1", "vmbr10")],
        ..Rows::default()
    };

    // Nothing changed: everything stays.
    let same = still_unclaimed(drifts.clone(), &now, &HashSet::new());
    assert_eq!(
        same,
        Unclaimed {
            kept: drifts.clone(),
            withdrawn: HashSet::new()
        }
    );

    // A mutation took the VM; an operation began on the network.
    let mut busy = now.clone();
    busy.busy.insert("net-1".into());
    let taken = still_unclaimed(drifts.clone(), &busy, &ids(&[VM]));
    assert_eq!(
        taken,
        Unclaimed {
            kept: vec![],
            withdrawn: ids(&[VM, "net-1"])
        }
    );

    // The network was deleted meanwhile.
    let gone = Rows {
        networks: vec![],
        ..now.clone()
    };
    let left = still_unclaimed(drifts.clone(), &gone, &HashSet::new());
    assert_eq!(kinds(&left.kept), vec![CoherenceKind::ProcessMissing]);
    assert_eq!(left.withdrawn, ids(&["net-1"]));
}

#[test]
fn a_device_for_a_disk_with_no_row_and_a_run_directory_are_never_set_aside_for_lack_of_a_row() {
    let mut snap = vm_with_disks(&["ghost"], vec![]);
    snap.orphans = vec![OrphanSeen {
        run_dir: "/data/run/x".into(),
        qemu_pid: None,
    }];
    let drifts = judge(&snap).drifts;
    assert_eq!(drifts.len(), 2);
    let now = Rows {
        vms: snap.rows.vms.clone(),
        ..Rows::default()
    };
    let kept = still_unclaimed(drifts.clone(), &now, &HashSet::new());
    assert_eq!(kept.kept, drifts);
}

/// `/data/storage` and `/data/storage/images` as listed; a name ending in `/`
/// is a directory.
fn storage(disks: &[&str], images: &[&str]) -> StorageSeen {
    let listing = |dir: &str, names: &[&str]| Listing {
        dir: dir.into(),
        entries: names
            .iter()
            .map(|name| FileSeen {
                name: name.trim_end_matches('/').into(),
                directory: name.ends_with('/'),
            })
            .collect(),
    };
    StorageSeen {
        disks: listing("/data/storage", disks),
        images: listing("/data/storage/images", images),
    }
}

/// Disk `d-1` and image `img-1` exist; storage holds what is listed.
fn stored(disks: &[&str], images: &[&str]) -> Snapshot {
    let mut snap = snapshot(Rows {
        disks: vec![disk("d-1", None, Attachment::Detached)],
        images: ids(&["img-1"]),
        ..Rows::default()
    });
    snap.storage = Some(storage(disks, images));
    snap
}

fn stray(path: &str, expected: &str, observed: &str) -> Drift {
    Drift {
        finding: Finding {
            kind: CoherenceKind::StrayStorageFile,
            subject_type: SubjectType::StorageFile,
            subject_id: path.into(),
            vm_id: None,
            expected: expected.into(),
            observed: observed.into(),
        },
        repair: None,
    }
}

const IN_STORAGE: &str = "every file in /data/storage belongs to one of the disks";
const IN_IMAGES: &str = "every file in /data/storage/images belongs to one of the images";

fn storage_cases() -> Vec<Case> {
    let in_flight = |kind: OperationKind, target: &str, mut snap: Snapshot| {
        snap.rows.busy.insert(target.into());
        snap.rows.busy_kinds.insert(kind);
        snap
    };
    vec![
        case(
            "storage holding its disks' and images' files is coherent",
            stored(&["d-1.qcow2", "images/", "lost+found/"], &["img-1"]),
            vec![],
        ),
        case(
            "a disk's file set aside by hand is still that disk's",
            stored(&["d-1.aside", "images/"], &["img-1"]),
            vec![],
        ),
        case(
            "the partial file of a disk that was never recorded",
            stored(&["d-1.qcow2", "d-9.qcow2.partial", "images/"], &[]),
            vec![stray(
                "/data/storage/d-9.qcow2.partial",
                IN_STORAGE,
                "/data/storage/d-9.qcow2.partial is what a createDisk or createVm left unfinished; no disk owns it (left alone)",
            )],
        ),
        case(
            "a file and a directory put in storage by hand",
            stored(&["backup.img", "d-1.qcow2", "images/", "old/"], &[]),
            vec![
                stray(
                    "/data/storage/backup.img",
                    IN_STORAGE,
                    "/data/storage/backup.img belongs to no disk (left alone)",
                ),
                stray(
                    "/data/storage/old",
                    IN_STORAGE,
                    "/data/storage/old is a directory no disk owns (left alone)",
                ),
            ],
        ),
        case(
            "the partial file of an image that was never recorded, and a disk's name among the images",
            stored(&["images/"], &["d-1.qcow2", "img-1", "img-2.partial"]),
            vec![
                stray(
                    "/data/storage/images/d-1.qcow2",
                    IN_IMAGES,
                    "/data/storage/images/d-1.qcow2 belongs to no image (left alone)",
                ),
                stray(
                    "/data/storage/images/img-2.partial",
                    IN_IMAGES,
                    "/data/storage/images/img-2.partial is what an importImage left unfinished; no image owns it (left alone)",
                ),
            ],
        ),
        case(
            "the partial file of a createDisk in flight is left to it",
            in_flight(
                OperationKind::CreateDisk,
                "d-9",
                stored(&["d-9.qcow2.partial", "images/"], &[]),
            ),
            vec![],
        ),
        case(
            "the partial file of an importImage in flight is left to it",
            in_flight(
                OperationKind::ImportImage,
                "img-2",
                stored(&["images/"], &["img-2.partial"]),
            ),
            vec![],
        ),
        case(
            "while a createVm runs, a disk file with no row may be its root disk's",
            in_flight(
                OperationKind::CreateVm,
                "vm-new",
                stored(&["d-9.qcow2.partial", "images/"], &["stray"]),
            ),
            vec![],
        ),
        case(
            "storage a port cannot list tells nothing",
            {
                let mut snap = stored(&["stray"], &[]);
                snap.storage = None;
                snap
            },
            vec![],
        ),
    ]
}

#[test]
fn files_in_storage_no_disk_or_image_owns_are_reported_and_left_alone() {
    check(storage_cases());
}

#[test]
fn storage_is_checked_only_when_listed_and_no_create_vm_runs() {
    let checked = |snap: &Snapshot| judge(snap).checked;
    let listed = stored(&["images/"], &[]);
    assert!(checked(&listed).storage);
    let mut creating = listed.clone();
    creating.rows.busy_kinds.insert(OperationKind::CreateVm);
    assert!(!checked(&creating).storage);
    let mut unlisted = listed.clone();
    unlisted.storage = None;
    assert!(!checked(&unlisted).storage);
    // A partial file whose disk an operation is making keeps its issue open.
    let mut making = stored(&["d-9.qcow2.partial", "images/"], &[]);
    making.rows.busy.insert("d-9".into());
    assert_eq!(
        checked(&making).withdrawn,
        ids(&["/data/storage/d-9.qcow2.partial"])
    );
}

#[test]
fn a_stray_file_whose_row_appeared_or_is_being_made_since_the_snapshot_is_set_aside() {
    let drifts = judge(&stored(
        &["d-9.qcow2.partial", "images/"],
        &["img-2.partial"],
    ))
    .drifts;
    assert_eq!(drifts.len(), 2);
    let now = stored(&[], &[]).rows;
    assert_eq!(
        still_unclaimed(drifts.clone(), &now, &HashSet::new()).kept,
        drifts
    );

    // createDisk finished meanwhile; importImage is still copying.
    let mut later = now.clone();
    later.disks.push(disk("d-9", None, Attachment::Detached));
    later.busy.insert("img-2".into());
    let judged = still_unclaimed(drifts.clone(), &later, &HashSet::new());
    assert_eq!(
        judged,
        Unclaimed {
            kept: vec![],
            withdrawn: ids(&[
                "/data/storage/d-9.qcow2.partial",
                "/data/storage/images/img-2.partial"
            ]),
        }
    );

    // A createVm began: any disk file may be its.
    let mut creating = now.clone();
    creating.busy_kinds.insert(OperationKind::CreateVm);
    assert_eq!(
        still_unclaimed(drifts, &creating, &HashSet::new()).kept,
        vec![]
    );
}
