//! The sweep's pure middle: a [`Snapshot`] in, findings out. It compares what
//! the database says with what the host showed, and decides what is drift,
//! what is only an observation (recorded whatever the policy), and what a
//! repair would do. It must never do I/O: no async, no database, no host, no
//! clock. Everything it weighs is in the snapshot, so every rule is a table
//! test.
//!
//! - A VM or disk with an operation in flight, or a VM starting, stopping or
//!   held by a mutation's lock, is left alone: no false drift mid-start.
//! - An exit the push path is about to record (`JustExited`) is left to it
//!   (with its forensics), so no work is done twice.
//! - What the sweep *observes* it always records: a VM whose QMP is silent is
//!   `UNKNOWN`, and it leaves `UNKNOWN` as soon as QMP answers again.
//! - What it would *change* is a [`Repair`]: mark a dead VM `CRASHED`, re-sync
//!   the state from QMP, re-adopt a QEMU of a known VM, make a bridge or a tap
//!   again. A user's disk file, a file in storage no row owns and a process
//!   nobody owns get none: they are only reported.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    time::Duration,
};

use super::snapshot::{DiskFile, Listing, Rows, Snapshot, StorageSeen};
use crate::{
    coherence::{Area, CoherenceIssue, CoherenceKind, Finding},
    disk::{Attachment, Disk},
    host::{DiskSeen, LinkSeen, OrphanSeen, ProcessSeen, QmpSeen, VmProbe},
    network::{self, model::nic::Attachment as NicAttachment},
    operation::{OperationKind, SubjectType},
    vm::{Vm, VmState},
};

/// What the sweep will change if the policy allows.
#[derive(Debug, Clone, PartialEq)]
pub enum Repair {
    /// The VM's QEMU is gone: mark it crashed.
    MarkCrashed,
    /// Take the state QMP reports.
    SyncState(VmState),
    /// Track this VM's running QEMU again.
    Adopt { pid: i32 },
    /// Make the network's bridge (and VLAN link) exist and be up again.
    EnsureNetwork,
    /// Make a running NIC's deleted tap again, on its bridge.
    MakeTapAgain { tap: String, bridge: String },
    /// Put a running NIC's tap back on its bridge.
    PutTapBack { tap: String, bridge: String },
}

/// One finding, and what would repair it (None: report only).
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    pub finding: Finding,
    pub repair: Option<Repair>,
}

/// A state the sweep records whatever the policy: what it observed.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub vm_id: String,
    pub to: VmState,
    pub reason: String,
}

/// What was looked at, so that only issues whose subject was checked again
/// are resolved (a skipped VM keeps its open issues).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checked {
    /// VMs whose process was probed.
    pub vms: HashSet<String>,
    /// VMs whose QEMU's disks are known (listed by QMP, or no QEMU runs).
    pub vm_disks: HashSet<String>,
    pub disk_files: HashSet<String>,
    pub orphans: bool,
    /// Networks and NICs whose links were compared.
    pub links: HashSet<String>,
    /// Whether storage's files were compared with the rows.
    pub storage: bool,
    /// Subjects and VMs an operation or a mutation took during the sweep:
    /// what was seen of them is not judged either way.
    pub withdrawn: HashSet<String>,
}

impl Checked {
    pub fn covers(&self, issue: &CoherenceIssue) -> bool {
        if self.withdrawn.contains(&issue.subject_id)
            || issue
                .vm_id
                .as_ref()
                .is_some_and(|vm| self.withdrawn.contains(vm))
        {
            return false;
        }
        match issue.kind.area() {
            Area::Process => self.vms.contains(&issue.subject_id),
            Area::DiskFile => self.disk_files.contains(&issue.subject_id),
            Area::DiskInQemu => issue
                .vm_id
                .as_ref()
                .is_some_and(|vm| self.vm_disks.contains(vm)),
            Area::Orphans => self.orphans,
            Area::Links => self.links.contains(&issue.subject_id),
            Area::Storage => self.storage,
        }
    }
}

/// Everything the judge decided about one snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Judgement {
    /// In the order they were found: VMs, disk files, run directories, links,
    /// storage.
    pub drifts: Vec<Drift>,
    pub observations: Vec<Observation>,
    pub checked: Checked,
}

/// Whether the sweep leaves a VM alone: something else is changing it now.
/// The snapshot applies the same rule, so such a VM is not even probed.
pub fn leaves_alone(rows: &Rows, locked: &HashSet<String>, vm: &Vm) -> bool {
    matches!(vm.state, VmState::Starting | VmState::Stopping)
        || rows.busy.contains(&vm.id)
        || locked.contains(&vm.id)
}

/// Whether a disk's file is worth reading: not while an operation has the
/// disk or its VM, nor while its VM is left alone.
pub fn reads_file(rows: &Rows, left_alone: &HashSet<&str>, disk: &Disk) -> bool {
    !rows.busy.contains(&disk.id)
        && disk
            .vm_id
            .as_deref()
            .is_none_or(|vm| !left_alone.contains(vm) && !rows.busy.contains(vm))
}

/// The ids of the VMs the sweep leaves alone.
pub fn vms_left_alone<'a>(rows: &'a Rows, locked: &HashSet<String>) -> HashSet<&'a str> {
    rows.vms
        .iter()
        .filter(|vm| leaves_alone(rows, locked, vm))
        .map(|vm| vm.id.as_str())
        .collect()
}

/// Judges one snapshot.
pub fn judge(snap: &Snapshot) -> Judgement {
    let rows = &snap.rows;
    let mut out = Judgement::default();
    let disks_by_id: HashMap<&str, &Disk> = rows.disks.iter().map(|d| (d.id.as_str(), d)).collect();

    // VMs, each with what its probe showed (a probe that timed out told nothing).
    let probed: Vec<(&Vm, &VmProbe)> = rows
        .vms
        .iter()
        .filter(|vm| !leaves_alone(rows, &snap.locked, vm))
        .filter_map(|vm| Some((vm, snap.probes.get(&vm.id)?)))
        .collect();
    for &(vm, probe) in &probed {
        if probe.process == ProcessSeen::JustExited {
            continue;
        }
        out.checked.vms.insert(vm.id.clone());
        vm_process(vm, probe, snap.probe_timeout, &mut out);
        if let Some(in_qemu) = disks_in_qemu(probe) {
            out.checked.vm_disks.insert(vm.id.clone());
            vm_disks(
                vm,
                probe,
                in_qemu,
                &rows.disks,
                &disks_by_id,
                &mut out.drifts,
            );
        }
    }

    // Disk files: skipped with their VM, or with an operation on them.
    let left_alone = vms_left_alone(rows, &snap.locked);
    for d in rows
        .disks
        .iter()
        .filter(|d| reads_file(rows, &left_alone, d))
    {
        let Some(file) = snap.disk_files.get(&d.id) else {
            continue;
        };
        out.checked.disk_files.insert(d.id.clone());
        disk_file(d, file, &mut out.drifts);
        disk_snapshots(rows, d, file, &mut out.drifts);
    }

    orphans(&snap.orphans, &mut out.drifts);
    out.checked.orphans = true;

    if let Some(links) = &snap.links {
        let running: HashSet<&str> = probed
            .iter()
            .filter(|(vm, probe)| {
                matches!(probe.process, ProcessSeen::Tracked { .. })
                    && matches!(vm.state, VmState::Running | VmState::Paused)
            })
            .map(|(vm, _)| vm.id.as_str())
            .collect();
        judge_links(rows, &running, links, &mut out);
    }

    if let Some(storage) = &snap.storage {
        stray_files(rows, storage, &mut out);
    }
    out
}

/// The disks (by id) the VM's QEMU has, when that is known: none when no
/// QEMU runs, QMP's list for a tracked QEMU that answered.
fn disks_in_qemu(probe: &VmProbe) -> Option<&[String]> {
    match (&probe.process, &probe.disks) {
        (ProcessSeen::Absent, _) => Some(&[]),
        (ProcessSeen::Tracked { .. }, Some(disks)) => Some(disks),
        (ProcessSeen::Tracked { .. }, None)
        | (ProcessSeen::Untracked { .. }, _)
        | (ProcessSeen::JustExited, _) => None,
    }
}

/// The state a QMP `running` flag means.
pub fn qmp_state(running: bool) -> VmState {
    if running {
        VmState::Running
    } else {
        VmState::Paused
    }
}

fn vm_finding(vm: &Vm, kind: CoherenceKind, expected: String, observed: String) -> Finding {
    Finding {
        kind,
        subject_type: SubjectType::Vm,
        subject_id: vm.id.clone(),
        vm_id: Some(vm.id.clone()),
        expected,
        observed,
    }
}

/// Whether the VM's QEMU runs as the database says, and in the state it says.
fn vm_process(vm: &Vm, probe: &VmProbe, timeout: Duration, out: &mut Judgement) {
    let live = matches!(
        vm.state,
        VmState::Running | VmState::Paused | VmState::Unknown
    );
    match &probe.process {
        ProcessSeen::JustExited => {}
        ProcessSeen::Absent if live => out.drifts.push(Drift {
            finding: vm_finding(
                vm,
                CoherenceKind::ProcessMissing,
                format!("a QEMU process ({})", vm.state),
                "no QEMU process".into(),
            ),
            repair: Some(Repair::MarkCrashed),
        }),
        ProcessSeen::Absent => {}
        ProcessSeen::Untracked { pid } => {
            let (kind, expected) = match live {
                true => (
                    CoherenceKind::UntrackedProcess,
                    "vman watches the VM's QEMU".to_string(),
                ),
                false => (
                    CoherenceKind::UnexpectedProcess,
                    format!("no QEMU process ({})", vm.state),
                ),
            };
            out.drifts.push(Drift {
                finding: vm_finding(
                    vm,
                    kind,
                    expected,
                    format!("QEMU pid {pid} of this VM runs, not watched by vman"),
                ),
                repair: Some(Repair::Adopt { pid: *pid }),
            });
        }
        ProcessSeen::Tracked { pid } => match &probe.qmp {
            Some(QmpSeen::Status { status, running }) => {
                qmp_answered(vm, *pid, status, *running, out)
            }
            Some(QmpSeen::Failed(e)) => {
                qmp_silent(vm, timeout, format!("query-status failed: {e}"), out)
            }
            Some(QmpSeen::Silent) | None => qmp_silent(
                vm,
                timeout,
                format!("no reply to query-status within {timeout:?} (QEMU pid {pid})"),
                out,
            ),
        },
    }
}

/// A tracked QEMU whose QMP did not answer: the VM is `UNKNOWN`, whatever the policy.
fn qmp_silent(vm: &Vm, timeout: Duration, observed: String, out: &mut Judgement) {
    out.drifts.push(Drift {
        finding: vm_finding(
            vm,
            CoherenceKind::QmpSilent,
            format!("QMP answers within {timeout:?}"),
            observed.clone(),
        ),
        repair: None,
    });
    if vm.state != VmState::Unknown {
        out.observations.push(Observation {
            vm_id: vm.id.clone(),
            to: VmState::Unknown,
            reason: format!("QMP silent: {observed}"),
        });
    }
}

/// A tracked QEMU whose QMP reported its run state.
fn qmp_answered(vm: &Vm, pid: i32, status: &str, running: bool, out: &mut Judgement) {
    let seen = qmp_state(running);
    match vm.state {
        // Not knowing ends as soon as QEMU answers: an observation.
        VmState::Unknown => out.observations.push(Observation {
            vm_id: vm.id.clone(),
            to: seen,
            reason: format!("QMP answers again (status {status})"),
        }),
        state if state == seen => {}
        VmState::Running | VmState::Paused => out.drifts.push(Drift {
            finding: vm_finding(
                vm,
                CoherenceKind::StatusMismatch,
                vm.state.to_string(),
                format!("QMP status {status}"),
            ),
            repair: Some(Repair::SyncState(seen)),
        }),
        // (A VM starting or stopping was left alone before it got here.)
        VmState::Stopped | VmState::Crashed | VmState::Starting | VmState::Stopping => {
            out.drifts.push(Drift {
                finding: vm_finding(
                    vm,
                    CoherenceKind::UnexpectedProcess,
                    format!("no QEMU process ({})", vm.state),
                    format!("QEMU pid {pid} runs (QMP status {status})"),
                ),
                repair: Some(Repair::SyncState(seen)),
            })
        }
    }
}

/// Which disks the VM's QEMU has, against the database.
fn vm_disks(
    vm: &Vm,
    probe: &VmProbe,
    in_qemu: &[String],
    disks: &[Disk],
    by_id: &HashMap<&str, &Disk>,
    drifts: &mut Vec<Drift>,
) {
    let running = matches!(probe.process, ProcessSeen::Tracked { .. });
    if running {
        for d in disks.iter().filter(|d| {
            d.vm_id.as_deref() == Some(vm.id.as_str()) && d.attachment == Attachment::Attached
        }) {
            if !in_qemu.contains(&d.id) {
                drifts.push(Drift {
                    finding: Finding {
                        kind: CoherenceKind::DiskNotInQemu,
                        subject_type: SubjectType::Disk,
                        subject_id: d.id.clone(),
                        vm_id: Some(vm.id.clone()),
                        expected: format!("disk {:?} attached to the running VM", d.name),
                        observed: "QEMU has no device for it (query-block)".into(),
                    },
                    repair: None,
                });
            }
        }
    }
    for id in in_qemu {
        let ours = by_id.get(id.as_str()).is_some_and(|d| {
            d.vm_id.as_deref() == Some(vm.id.as_str())
                && matches!(d.attachment, Attachment::Attached | Attachment::Detaching)
        });
        if !ours {
            let expected = match by_id.get(id.as_str()) {
                Some(d) => format!(
                    "disk {:?} is {} in the database",
                    d.name,
                    attachment_name(d)
                ),
                None => "no such disk in the database".into(),
            };
            drifts.push(Drift {
                finding: Finding {
                    kind: CoherenceKind::DiskUnexpectedInQemu,
                    subject_type: SubjectType::Disk,
                    subject_id: id.clone(),
                    vm_id: Some(vm.id.clone()),
                    expected,
                    observed: "the VM's QEMU has a device for it (query-block)".into(),
                },
                repair: None,
            });
        }
    }
}

fn attachment_name(d: &Disk) -> String {
    match (&d.attachment, &d.vm_id) {
        (Attachment::Detached, _)
        | (Attachment::Attached | Attachment::Attaching | Attachment::Detaching, None) => {
            "detached".into()
        }
        (Attachment::Attached | Attachment::Attaching | Attachment::Detaching, Some(vm)) => {
            format!("attached to VM {vm}")
        }
    }
}

fn disk_file(d: &Disk, file: &DiskFile, drifts: &mut Vec<Drift>) {
    let path = file.path.display().to_string();
    let finding = |kind, expected: String, observed: String| Drift {
        finding: Finding {
            kind,
            subject_type: SubjectType::Disk,
            subject_id: d.id.clone(),
            vm_id: d.vm_id.clone(),
            expected,
            observed,
        },
        // A user's disk is never touched: report only.
        repair: None,
    };
    match &file.seen {
        DiskSeen::Missing => drifts.push(finding(
            CoherenceKind::DiskFileMissing,
            format!("file {path}"),
            "no such file".into(),
        )),
        DiskSeen::Unreadable(e) => drifts.push(finding(
            CoherenceKind::DiskFileUnreadable,
            format!("a readable disk image at {path}"),
            e.clone(),
        )),
        DiskSeen::Present {
            format,
            virtual_size,
            ..
        } => {
            if format != d.format.qemu_name() {
                drifts.push(finding(
                    CoherenceKind::DiskFormatMismatch,
                    format!("format {}", d.format.qemu_name()),
                    format!("format {format} (qemu-img info)"),
                ));
            }
            if *virtual_size != d.size_bytes as u64 {
                drifts.push(finding(
                    CoherenceKind::DiskSizeMismatch,
                    format!("{} bytes", d.size_bytes),
                    format!("{virtual_size} bytes"),
                ));
            }
        }
    }
}

/// A disk's internal snapshots against the snapshot rows: each snapshot of
/// its VM that covers it must be in its file, and each tag in its file must
/// be some snapshot's. One finding per disk and direction, naming them all.
fn disk_snapshots(rows: &Rows, d: &Disk, file: &DiskFile, drifts: &mut Vec<Drift>) {
    let DiskSeen::Present {
        snapshots: Some(tags),
        ..
    } = &file.seen
    else {
        return;
    };
    let path = file.path.display().to_string();
    let finding = |kind, expected: String, observed: String| Drift {
        finding: Finding {
            kind,
            subject_type: SubjectType::Disk,
            subject_id: d.id.clone(),
            vm_id: d.vm_id.clone(),
            expected,
            observed,
        },
        // A user's disk is never touched: report only.
        repair: None,
    };
    let attached = d.attachment == Attachment::Attached;
    let missing: Vec<String> = rows
        .snapshots
        .iter()
        .filter(|s| attached && d.vm_id.as_deref() == Some(s.vm_id.as_str()))
        .filter(|s| s.disks().contains(&d.id) && !tags.contains(&s.id))
        .map(|s| format!("{:?} ({})", s.name, s.id))
        .collect();
    if !missing.is_empty() {
        drifts.push(finding(
            CoherenceKind::SnapshotMissingInImage,
            format!("snapshot {} in {path}", missing.join(", ")),
            "qemu-img info lists no such internal snapshot".into(),
        ));
    }
    let unknown: Vec<&str> = tags
        .iter()
        .filter(|tag| !rows.snapshots.iter().any(|s| s.id == **tag))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        drifts.push(finding(
            CoherenceKind::SnapshotUnknownInImage,
            format!("only the internal snapshots of vman's snapshots in {path}"),
            format!(
                "internal snapshot {} (qemu-img info), which no snapshot has",
                unknown.join(", ")
            ),
        ));
    }
}

/// Run directories nobody owns, and the QEMUs running from them: left alone.
fn orphans(seen: &[OrphanSeen], drifts: &mut Vec<Drift>) {
    for orphan in seen {
        let dir = orphan.run_dir.display().to_string();
        drifts.push(Drift {
            finding: Finding {
                kind: CoherenceKind::OrphanRunDir,
                subject_type: SubjectType::RunDir,
                subject_id: dir.clone(),
                vm_id: None,
                expected: "every run directory belongs to a VM".into(),
                observed: format!("{dir} belongs to no VM (left alone)"),
            },
            repair: None,
        });
        if let Some(pid) = orphan.qemu_pid {
            drifts.push(Drift {
                finding: Finding {
                    kind: CoherenceKind::OrphanProcess,
                    subject_type: SubjectType::RunDir,
                    subject_id: dir.clone(),
                    vm_id: None,
                    expected: "every QEMU belongs to a VM".into(),
                    observed: format!(
                        "QEMU pid {pid} runs from {dir}, which belongs to no VM (left alone)"
                    ),
                },
                repair: None,
            });
        }
    }
}

/// Bridges, and the taps of the NICs of running VMs.
fn judge_links(
    rows: &Rows,
    running: &HashSet<&str>,
    links: &HashMap<String, LinkSeen>,
    out: &mut Judgement,
) {
    let mut bridges = HashMap::new();
    for net in rows.networks.iter().filter(|n| !rows.busy.contains(&n.id)) {
        bridges.insert(net.id.as_str(), net.bridge.as_str());
        out.checked.links.insert(net.id.clone());
        let finding = |kind, observed: String| Drift {
            finding: Finding {
                kind,
                subject_type: SubjectType::Network,
                subject_id: net.id.clone(),
                vm_id: None,
                expected: format!("bridge {} exists and is up", net.bridge),
                observed,
            },
            repair: Some(Repair::EnsureNetwork),
        };
        match links.get(&net.bridge) {
            None => out.drifts.push(finding(
                CoherenceKind::BridgeMissing,
                format!("no link named {}", net.bridge),
            )),
            Some(link) if !link.up => out.drifts.push(finding(
                CoherenceKind::BridgeDown,
                format!("{} is down", net.bridge),
            )),
            Some(_) => {}
        }
    }
    for nic in rows.nics.iter().filter(|n| {
        n.attachment == NicAttachment::Attached
            && running.contains(n.vm_id.as_str())
            && !rows.busy.contains(&n.id)
    }) {
        let Some(bridge) = bridges.get(nic.network_id.as_str()) else {
            continue;
        };
        out.checked.links.insert(nic.id.clone());
        let tap = network::nic::spec_tap(nic);
        let (kind, observed, repair) = match links.get(&tap) {
            None => (
                CoherenceKind::TapMissing,
                format!("no link named {tap}"),
                Repair::MakeTapAgain {
                    tap: tap.clone(),
                    bridge: bridge.to_string(),
                },
            ),
            Some(link) if link.master.as_deref() != Some(*bridge) => (
                CoherenceKind::TapNotOnBridge,
                match &link.master {
                    Some(other) => format!("{tap} is enslaved to {other}"),
                    None => format!("{tap} is on no bridge"),
                },
                Repair::PutTapBack {
                    tap: tap.clone(),
                    bridge: bridge.to_string(),
                },
            ),
            Some(_) => continue,
        };
        out.drifts.push(Drift {
            finding: Finding {
                kind,
                subject_type: SubjectType::Nic,
                subject_id: nic.id.clone(),
                vm_id: Some(nic.vm_id.clone()),
                expected: format!("tap {tap} exists, enslaved to {bridge}"),
                observed,
            },
            repair: Some(repair),
        });
    }
}

/// The operation kinds whose files are named from rows they have not written
/// yet, and from another id than their target: `createVm` makes its root
/// disk's file before the disk's row, `cloneVm` its disks' copies (for as
/// long as a full copy takes), under an operation that names the VM.
const MAKES_DISK_FILES: [OperationKind; 2] = [OperationKind::CreateVm, OperationKind::CloneVm];

/// Whether an operation that makes disk files before their rows runs.
fn making_disk_files(rows: &Rows) -> bool {
    MAKES_DISK_FILES.iter().any(|k| rows.busy_kinds.contains(k))
}

/// The id of the row a file in storage is named from: what comes before its
/// first dot (`<disk-id>.qcow2`, `<disk-id>.qcow2.partial`, `<image-id>`).
fn named_from(file_name: &str) -> &str {
    file_name.split('.').next().unwrap_or_default()
}

/// Files in storage that no row owns. A file named from a disk's (or an
/// image's) id is that row's: its own file, or a copy of it set aside, about
/// which the disk-file kinds say what there is to say. One whose row an
/// operation is making is left to it.
fn stray_files(rows: &Rows, storage: &StorageSeen, out: &mut Judgement) {
    // While a createVm or cloneVm runs, any disk file with no row may be
    // its: storage waits for the next sweep.
    if making_disk_files(rows) {
        return;
    }
    out.checked.storage = true;
    let disks: HashSet<&str> = rows.disks.iter().map(|d| d.id.as_str()).collect();
    let images: HashSet<&str> = rows.images.iter().map(String::as_str).collect();
    // Each listing, the rows that own its files, and what makes them.
    let places: [(&Listing, &HashSet<&str>, &str, &str); 2] = [
        (&storage.disks, &disks, "disk", "a createDisk or createVm"),
        (&storage.images, &images, "image", "an importImage"),
    ];
    for (listing, owners, owner, maker) in places {
        for entry in &listing.entries {
            let path = listing.dir.join(&entry.name);
            // vman's own directory, and the file system's.
            if entry.directory && (path == storage.images.dir || entry.name == "lost+found") {
                continue;
            }
            let id = named_from(&entry.name);
            if owners.contains(id) {
                continue;
            }
            let shown = path.display().to_string();
            if rows.busy.contains(id) {
                out.checked.withdrawn.insert(shown);
                continue;
            }
            let observed = if entry.directory {
                format!("{shown} is a directory no {owner} owns (left alone)")
            } else if entry.name.ends_with(".partial") {
                format!("{shown} is what {maker} left unfinished; no {owner} owns it (left alone)")
            } else {
                format!("{shown} belongs to no {owner} (left alone)")
            };
            out.drifts.push(Drift {
                finding: Finding {
                    kind: CoherenceKind::StrayStorageFile,
                    subject_type: SubjectType::StorageFile,
                    subject_id: shown,
                    vm_id: None,
                    expected: format!(
                        "every file in {} belongs to one of the {owner}s",
                        listing.dir.display()
                    ),
                    observed,
                },
                // It may be a user's: never deleted.
                repair: None,
            });
        }
    }
}

/// What [`still_unclaimed`] kept, and what it set aside.
#[derive(Debug, Default, PartialEq)]
pub struct Unclaimed {
    pub kept: Vec<Drift>,
    /// The subjects and VMs of the drifts set aside: not judged either way.
    pub withdrawn: HashSet<String>,
}

/// The drifts whose subject (and VM) still exists in `now`, and that no
/// operation (`now.busy`) or mutation's lock (`held`) has taken since the
/// snapshot. A run directory belongs to no row and no operation; a stray file
/// is still stray if no row is named like it now, and no operation may be
/// making its row.
pub fn still_unclaimed(drifts: Vec<Drift>, now: &Rows, held: &HashSet<String>) -> Unclaimed {
    let exists: HashSet<&str> = now
        .vms
        .iter()
        .map(|v| v.id.as_str())
        .chain(now.disks.iter().map(|d| d.id.as_str()))
        .chain(now.networks.iter().map(|n| n.id.as_str()))
        .chain(now.nics.iter().map(|n| n.id.as_str()))
        .chain(now.images.iter().map(String::as_str))
        .collect();
    let claimed = |id: &str| now.busy.contains(id) || held.contains(id);
    let (kept, dropped): (Vec<Drift>, Vec<Drift>) = drifts.into_iter().partition(|d| {
        let f = &d.finding;
        let subject_ok = match f.subject_type {
            SubjectType::RunDir => true,
            SubjectType::StorageFile => {
                let name = Path::new(&f.subject_id)
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy();
                let id = named_from(&name);
                !exists.contains(id) && !claimed(id) && !making_disk_files(now)
            }
            SubjectType::Vm
            | SubjectType::Disk
            | SubjectType::Network
            | SubjectType::Nic
            | SubjectType::Template
            | SubjectType::Image
            | SubjectType::ApiToken
            | SubjectType::Snapshot
            | SubjectType::Host
            | SubjectType::CoherenceIssue => {
                exists.contains(f.subject_id.as_str())
                    || f.kind == CoherenceKind::DiskUnexpectedInQemu
            }
        };
        subject_ok && !claimed(&f.subject_id) && f.vm_id.as_deref().is_none_or(|vm| !claimed(vm))
    });
    let mut withdrawn = HashSet::new();
    for d in dropped {
        withdrawn.insert(d.finding.subject_id);
        withdrawn.extend(d.finding.vm_id);
    }
    Unclaimed { kept, withdrawn }
}

#[cfg(test)]
mod tests;
