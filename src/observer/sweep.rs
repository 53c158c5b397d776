//! The coherence sweep: the safety net behind the push path.
//!
//! Every `observer.interval` (and on `runCoherenceSweep`) it reads the
//! database once, asks the host about every VM at the same time (each probe
//! bounded by `observer.probe_timeout`), compares, and records each drift as
//! a [`CoherenceIssue`](crate::coherence::CoherenceIssue).
//!
//! - A VM or disk with an operation in flight, or a VM starting or stopping,
//!   is skipped: no false drift mid-start.
//! - An exit the push path is about to record is left to it (with its
//!   forensics), so no work is done twice.
//! - What the sweep *observes* it always records: a VM whose QMP is silent is
//!   `UNKNOWN`, and it leaves `UNKNOWN` as soon as QMP answers again.
//! - What it would *change* is a repair, done only under `policy = "repair"`:
//!   mark a dead VM `CRASHED`, re-sync the state from QMP, re-adopt a QEMU of
//!   a known VM. It never deletes a disk or kills a process.
//!
//! Findings are rechecked inside the write: a VM whose row changed, or that a
//! mutation took, since the probe is left for the next sweep.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use crate::{
    coherence::{self, Area, CoherenceIssue, CoherenceKind, Finding},
    config::DriftPolicy,
    context::Ctx,
    disk::{self, Attachment, Disk},
    error::{ApiError, ApiResult},
    events::Writer,
    host::{
        Adoption, DiskSeen, LinkSeen, NetworkAction, ProbeTarget, ProcessSeen, QmpSeen, VmProbe,
    },
    network::{self, Network, Nic, model::nic::Attachment as NicAttachment},
    operation::{OperationKind, OperationStatus, model as operations},
    vm::{self, Vm, VmState},
};

/// How many VMs are probed at the same time.
const PROBES_IN_FLIGHT: usize = 64;
/// How many disk files are read at the same time (a changed qcow2 runs qemu-img).
const DISK_READS_IN_FLIGHT: usize = 8;

/// What one sweep did.
#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub took: Duration,
    pub vms_checked: usize,
    /// VMs left alone: an operation in flight, or starting/stopping.
    pub vms_skipped: usize,
    pub disks_checked: usize,
    /// Every drift this sweep saw (issues opened now or before).
    pub findings: Vec<CoherenceIssue>,
    pub opened: Vec<CoherenceIssue>,
    pub resolved: Vec<CoherenceIssue>,
    /// VMs this sweep marked CRASHED (their taps and pending detaches are released).
    pub crashed: Vec<String>,
}

/// What the sweep will change if the policy allows.
#[derive(Debug, Clone, PartialEq)]
enum Repair {
    /// The VM's QEMU is gone: mark it crashed.
    MarkCrashed,
    /// Take the state QMP reports.
    SyncState(VmState),
    /// Track this VM's running QEMU again.
    Adopt { pid: i32 },
    /// Make the network's bridge (and VLAN link) exist and be up again.
    EnsureNetwork,
    /// Make a running NIC's tap exist on its bridge again.
    EnsureTap { tap: String, bridge: String },
}

#[derive(Debug, Clone)]
struct Drift {
    finding: Finding,
    repair: Option<Repair>,
}

/// A state the sweep records whatever the policy: what it observed.
#[derive(Debug, Clone)]
struct Observation {
    vm_id: String,
    to: VmState,
    reason: String,
}

/// What was looked at, so that only issues whose subject was checked again
/// are resolved (a skipped VM keeps its open issues).
#[derive(Default)]
struct Checked {
    /// VMs whose process was probed.
    vms: HashSet<String>,
    /// VMs whose QEMU's disks are known (listed by QMP, or no QEMU runs).
    vm_disks: HashSet<String>,
    disk_files: HashSet<String>,
    orphans: bool,
    /// Networks and NICs whose links were compared.
    links: HashSet<String>,
    /// Subjects and VMs an operation or a mutation took during the sweep:
    /// what was seen of them is not judged either way.
    withdrawn: HashSet<String>,
}

impl Checked {
    fn covers(&self, issue: &CoherenceIssue) -> bool {
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
        }
    }
}

/// One snapshot of what the database says.
struct Snapshot {
    vms: Vec<Vm>,
    disks: Vec<Disk>,
    networks: Vec<Network>,
    nics: Vec<Nic>,
    /// Targets of operations still running.
    busy: HashSet<String>,
}

async fn snapshot(app: &Ctx) -> ApiResult<Snapshot> {
    let vms = vm::model::Entity::find().all(&app.db).await?;
    let disks = disk::model::Entity::find().all(&app.db).await?;
    let networks = network::model::Entity::find().all(&app.db).await?;
    let nics = network::model::nic::Entity::find().all(&app.db).await?;
    let busy = operations::Entity::find()
        .filter(
            operations::Column::Status.is_in([OperationStatus::Pending, OperationStatus::Running]),
        )
        .all(&app.db)
        .await?
        .into_iter()
        .map(|op| op.target_id)
        .collect();
    Ok(Snapshot {
        vms,
        disks,
        networks,
        nics,
        busy,
    })
}

/// Runs one sweep now; the caller keeps sweeps one at a time
/// ([`super::Observer::sweep`]).
pub(super) async fn sweep(app: &Ctx) -> ApiResult<SweepReport> {
    let started = Instant::now();
    let result = run(app).await;
    crate::telemetry::coherence_sweep(started.elapsed(), result.is_err());
    result.map(|mut report| {
        report.took = started.elapsed();
        report
    })
}

async fn run(app: &Ctx) -> ApiResult<SweepReport> {
    let started_at = chrono::Utc::now();
    let timeout = app.config.observer.probe_timeout;
    let snap = snapshot(app).await?;
    let mut checked = Checked::default();
    let mut drifts = Vec::new();
    let mut observations = Vec::new();

    // VMs: every probe at once, each bounded.
    let skip = |vm: &Vm| {
        matches!(vm.state, VmState::Starting | VmState::Stopping)
            || snap.busy.contains(&vm.id)
            || app.locks.holder(&vm.id).is_some()
    };
    let (to_probe, skipped): (Vec<&Vm>, Vec<&Vm>) = snap.vms.iter().partition(|vm| !skip(vm));
    let skipped_ids: HashSet<&str> = skipped.iter().map(|vm| vm.id.as_str()).collect();
    let targets: Vec<ProbeTarget> = to_probe
        .iter()
        .map(|vm| ProbeTarget {
            vm_id: vm.id.clone(),
            run_dir: vm::run_dir(app, &vm.id),
        })
        .collect();
    let hypervisor = app.hypervisor.clone();
    let probed: HashMap<String, Option<VmProbe>> = stream::iter(targets)
        .map(move |target: ProbeTarget| {
            let hypervisor = hypervisor.clone();
            async move {
                // Two QMP round trips at most, each bounded by `timeout`; a
                // probe stuck past that (a hung /proc read, say) tells
                // nothing, and its VM is left for the next sweep.
                let probe = tokio::time::timeout(timeout * 3, hypervisor.probe(&target, timeout))
                    .await
                    .ok();
                (target.vm_id, probe)
            }
        })
        .buffer_unordered(PROBES_IN_FLIGHT)
        .collect()
        .await;
    let probes: Vec<(&Vm, &VmProbe)> = to_probe
        .iter()
        .filter_map(|vm| Some((*vm, probed.get(&vm.id)?.as_ref()?)))
        .collect();
    let disks_by_id: HashMap<&str, &Disk> = snap.disks.iter().map(|d| (d.id.as_str(), d)).collect();
    for &(vm, probe) in &probes {
        if probe.process == ProcessSeen::JustExited {
            continue;
        }
        checked.vms.insert(vm.id.clone());
        judge_vm(vm, probe, timeout, &mut drifts, &mut observations);
        // Which disks the running QEMU has, against the database.
        let disks_known = match (&probe.process, &probe.disks) {
            (ProcessSeen::Absent, _) => Some(Vec::new()),
            (ProcessSeen::Tracked { .. }, Some(disks)) => Some(disks.clone()),
            _ => None,
        };
        if let Some(in_qemu) = disks_known {
            checked.vm_disks.insert(vm.id.clone());
            judge_vm_disks(vm, probe, &in_qemu, &snap.disks, &disks_by_id, &mut drifts);
        }
    }

    // Disk files: skipped with their VM, or with an operation on them.
    let to_inspect: Vec<&Disk> = snap
        .disks
        .iter()
        .filter(|d| {
            !snap.busy.contains(&d.id)
                && d.vm_id
                    .as_deref()
                    .is_none_or(|vm| !skipped_ids.contains(vm) && !snap.busy.contains(vm))
        })
        .collect();
    let specs: Vec<(String, crate::host::DiskSpec)> = to_inspect
        .iter()
        .map(|d| (d.id.clone(), disk::spec(app, d)))
        .collect();
    let hypervisor = app.hypervisor.clone();
    let seen: HashMap<String, Option<DiskSeen>> = stream::iter(specs)
        .map(move |(id, spec)| {
            let hypervisor = hypervisor.clone();
            async move { (id, hypervisor.inspect_disk(&spec).await) }
        })
        .buffer_unordered(DISK_READS_IN_FLIGHT)
        .collect()
        .await;
    let inspected: Vec<(&Disk, Option<DiskSeen>)> = to_inspect
        .iter()
        .map(|d| (*d, seen.get(&d.id).cloned().flatten()))
        .collect();
    let mut disks_checked = 0;
    for (d, seen) in inspected {
        let Some(seen) = seen else { continue };
        disks_checked += 1;
        checked.disk_files.insert(d.id.clone());
        judge_disk_file(app, d, &seen, &mut drifts);
    }

    // Run directories nobody owns.
    let known: HashSet<String> = snap.vms.iter().map(|vm| vm.id.clone()).collect();
    for orphan in app.hypervisor.orphans(&app.config.run_dir(), &known).await {
        let dir = orphan.run_dir.display().to_string();
        drifts.push(Drift {
            finding: Finding {
                kind: CoherenceKind::OrphanRunDir,
                subject_type: "RunDir",
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
                    subject_type: "RunDir",
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
    checked.orphans = true;

    // Bridges and the taps of running NICs: one read of the host's links.
    let running: HashSet<&str> = probes
        .iter()
        .filter(|(vm, probe)| {
            matches!(probe.process, ProcessSeen::Tracked { .. })
                && matches!(vm.state, VmState::Running | VmState::Paused)
        })
        .map(|(vm, _)| vm.id.as_str())
        .collect();
    match tokio::time::timeout(timeout * 3, app.network.links()).await {
        Ok(Ok(links)) => judge_links(&snap, &running, &links, &mut checked, &mut drifts),
        Ok(Err(e)) => tracing::warn!(error = %e, "coherence sweep: reading the host's links"),
        Err(_) => tracing::warn!("coherence sweep: reading the host's links timed out"),
    }

    let policy = match app.hypervisor.is_dry_run() {
        // A dry run changes nothing it only imagines.
        true => DriftPolicy::Report,
        false => app.config.observer.policy,
    };
    // What changed hands since the snapshot (a deleteNetwork, a detachNic, a
    // deleteDisk that began meanwhile) is not drift: checked again now, just
    // before any repair touches the host.
    let drifts = still_unclaimed(app, drifts, &mut checked.withdrawn).await?;
    let host_repairs = match policy {
        DriftPolicy::Repair => repair_on_host(app, &snap.networks, &drifts).await,
        DriftPolicy::Report => HashMap::new(),
    };
    let snapshot_vms: HashMap<&str, &Vm> = snap.vms.iter().map(|vm| (vm.id.as_str(), vm)).collect();
    let known_disks: HashSet<&str> = snap.disks.iter().map(|d| d.id.as_str()).collect();
    let mut report = record(
        app,
        policy,
        drifts,
        observations,
        host_repairs,
        &Known {
            vms: &snapshot_vms,
            disks: &known_disks,
            networks: snap.networks.iter().map(|n| n.id.as_str()).collect(),
            nics: snap.nics.iter().map(|n| n.id.as_str()).collect(),
        },
        &checked,
    )
    .await?;
    // What a dead VM held on the host goes with it, as after a crash the push path saw.
    for vm_id in &report.crashed {
        crate::disk::release_detaching(app, vm_id).await?;
        network::release_taps(app, vm_id).await?;
    }
    report.started_at = started_at;
    report.vms_checked = checked.vms.len();
    report.vms_skipped = snap.vms.len() - checked.vms.len();
    report.disks_checked = disks_checked;
    Ok(report)
}

/// The drifts whose subject (and VM) still exists and is not in the hands of
/// an operation or a mutation's lock.
async fn still_unclaimed(
    app: &Ctx,
    drifts: Vec<Drift>,
    withdrawn: &mut HashSet<String>,
) -> ApiResult<Vec<Drift>> {
    // Run directories belong to no row and no operation: nothing to re-read.
    if drifts.iter().all(|d| d.finding.subject_type == "RunDir") {
        return Ok(drifts);
    }
    let now = snapshot(app).await?;
    let exists: HashSet<&str> = now
        .vms
        .iter()
        .map(|v| v.id.as_str())
        .chain(now.disks.iter().map(|d| d.id.as_str()))
        .chain(now.networks.iter().map(|n| n.id.as_str()))
        .chain(now.nics.iter().map(|n| n.id.as_str()))
        .collect();
    let claimed = |id: &str| now.busy.contains(id) || app.locks.holder(id).is_some();
    let (kept, dropped): (Vec<Drift>, Vec<Drift>) = drifts.into_iter().partition(|d| {
        let f = &d.finding;
        let subject_ok = match f.subject_type {
            "RunDir" => true,
            _ => {
                exists.contains(f.subject_id.as_str())
                    || f.kind == CoherenceKind::DiskUnexpectedInQemu
            }
        };
        subject_ok && !claimed(&f.subject_id) && f.vm_id.as_deref().is_none_or(|vm| !claimed(vm))
    });
    for d in dropped {
        withdrawn.insert(d.finding.subject_id);
        withdrawn.extend(d.finding.vm_id);
    }
    Ok(kept)
}

fn qmp_state(running: bool) -> VmState {
    if running {
        VmState::Running
    } else {
        VmState::Paused
    }
}

fn judge_vm(
    vm: &Vm,
    probe: &VmProbe,
    timeout: Duration,
    drifts: &mut Vec<Drift>,
    observations: &mut Vec<Observation>,
) {
    let live = matches!(
        vm.state,
        VmState::Running | VmState::Paused | VmState::Unknown
    );
    let finding = |kind, expected: String, observed: String| Finding {
        kind,
        subject_type: "Vm",
        subject_id: vm.id.clone(),
        vm_id: Some(vm.id.clone()),
        expected,
        observed,
    };
    match &probe.process {
        ProcessSeen::JustExited => {}
        ProcessSeen::Absent if live => drifts.push(Drift {
            finding: finding(
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
            drifts.push(Drift {
                finding: finding(
                    kind,
                    expected,
                    format!("QEMU pid {pid} of this VM runs, not watched by vman"),
                ),
                repair: Some(Repair::Adopt { pid: *pid }),
            });
        }
        ProcessSeen::Tracked { pid } => match &probe.qmp {
            Some(QmpSeen::Silent) | Some(QmpSeen::Failed(_)) | None => {
                let observed = match &probe.qmp {
                    Some(QmpSeen::Failed(e)) => format!("query-status failed: {e}"),
                    _ => format!("no reply to query-status within {timeout:?} (QEMU pid {pid})"),
                };
                drifts.push(Drift {
                    finding: finding(
                        CoherenceKind::QmpSilent,
                        format!("QMP answers within {timeout:?}"),
                        observed.clone(),
                    ),
                    repair: None,
                });
                if vm.state != VmState::Unknown {
                    observations.push(Observation {
                        vm_id: vm.id.clone(),
                        to: VmState::Unknown,
                        reason: format!("QMP silent: {observed}"),
                    });
                }
            }
            Some(QmpSeen::Status { status, running }) => {
                let seen = qmp_state(*running);
                match vm.state {
                    // Not knowing ends as soon as QEMU answers: an observation.
                    VmState::Unknown => observations.push(Observation {
                        vm_id: vm.id.clone(),
                        to: seen,
                        reason: format!("QMP answers again (status {status})"),
                    }),
                    state if state == seen => {}
                    VmState::Running | VmState::Paused => drifts.push(Drift {
                        finding: finding(
                            CoherenceKind::StatusMismatch,
                            vm.state.to_string(),
                            format!("QMP status {status}"),
                        ),
                        repair: Some(Repair::SyncState(seen)),
                    }),
                    _ => drifts.push(Drift {
                        finding: finding(
                            CoherenceKind::UnexpectedProcess,
                            format!("no QEMU process ({})", vm.state),
                            format!("QEMU pid {pid} runs (QMP status {status})"),
                        ),
                        repair: Some(Repair::SyncState(seen)),
                    }),
                }
            }
        },
    }
}

fn judge_vm_disks(
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
                        subject_type: "Disk",
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
                    subject_type: "Disk",
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
        (Attachment::Detached, _) | (_, None) => "detached".into(),
        (_, Some(vm)) => format!("attached to VM {vm}"),
    }
}

fn judge_disk_file(app: &Ctx, d: &Disk, seen: &DiskSeen, drifts: &mut Vec<Drift>) {
    let path = disk::spec(app, d).path.display().to_string();
    let finding = |kind, expected: String, observed: String| Drift {
        finding: Finding {
            kind,
            subject_type: "Disk",
            subject_id: d.id.clone(),
            vm_id: d.vm_id.clone(),
            expected,
            observed,
        },
        // A user's disk is never touched: report only.
        repair: None,
    };
    match seen {
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

fn judge_links(
    snap: &Snapshot,
    running: &HashSet<&str>,
    links: &HashMap<String, LinkSeen>,
    checked: &mut Checked,
    drifts: &mut Vec<Drift>,
) {
    let mut bridges = HashMap::new();
    for net in snap.networks.iter().filter(|n| !snap.busy.contains(&n.id)) {
        bridges.insert(net.id.as_str(), net.bridge.as_str());
        checked.links.insert(net.id.clone());
        let finding = |kind, observed: String| Drift {
            finding: Finding {
                kind,
                subject_type: "Network",
                subject_id: net.id.clone(),
                vm_id: None,
                expected: format!("bridge {} exists and is up", net.bridge),
                observed,
            },
            repair: Some(Repair::EnsureNetwork),
        };
        match links.get(&net.bridge) {
            None => drifts.push(finding(
                CoherenceKind::BridgeMissing,
                format!("no link named {}", net.bridge),
            )),
            Some(link) if !link.up => drifts.push(finding(
                CoherenceKind::BridgeDown,
                format!("{} is down", net.bridge),
            )),
            Some(_) => {}
        }
    }
    for nic in snap.nics.iter().filter(|n| {
        n.attachment == NicAttachment::Attached
            && running.contains(n.vm_id.as_str())
            && !snap.busy.contains(&n.id)
    }) {
        let Some(bridge) = bridges.get(nic.network_id.as_str()) else {
            continue;
        };
        checked.links.insert(nic.id.clone());
        let tap = network::nic::spec_tap(nic);
        let finding = |kind, observed: String| Drift {
            finding: Finding {
                kind,
                subject_type: "Nic",
                subject_id: nic.id.clone(),
                vm_id: Some(nic.vm_id.clone()),
                expected: format!("tap {tap} exists, enslaved to {bridge}"),
                observed,
            },
            repair: Some(Repair::EnsureTap {
                tap: tap.clone(),
                bridge: bridge.to_string(),
            }),
        };
        match links.get(&tap) {
            None => drifts.push(finding(
                CoherenceKind::TapMissing,
                format!("no link named {tap}"),
            )),
            Some(link) if link.master.as_deref() != Some(*bridge) => drifts.push(finding(
                CoherenceKind::TapNotOnBridge,
                match &link.master {
                    Some(other) => format!("{tap} is enslaved to {other}"),
                    None => format!("{tap} is on no bridge"),
                },
            )),
            Some(_) => {}
        }
    }
}

/// The host steps of repairs (policy `repair`), taken before the write: a
/// re-adoption under the VM's lock (never waiting for it), a bridge or tap
/// made again. What each gave, by subject.
async fn repair_on_host(
    app: &Ctx,
    networks: &[Network],
    drifts: &[Drift],
) -> HashMap<String, Result<HostRepair, String>> {
    let mut done = HashMap::new();
    // Bridges first: a tap is enslaved to its bridge.
    let mut ordered: Vec<&Drift> = drifts.iter().collect();
    ordered.sort_by_key(|d| !matches!(d.repair, Some(Repair::EnsureNetwork)));
    for drift in ordered {
        let subject = &drift.finding.subject_id;
        if done.contains_key(subject) {
            continue;
        }
        let result = match &drift.repair {
            Some(Repair::Adopt { pid }) => {
                let Some(_guard) = app
                    .locks
                    .try_lock(subject, "coherence-sweep", OperationKind::CoherenceRepair)
                else {
                    continue;
                };
                async {
                    let vm = vm::model::Entity::find_by_id(subject.clone())
                        .one(&app.db)
                        .await?
                        .ok_or_else(|| ApiError::not_found("VM", subject))?;
                    let spec = vm::spec(app, &vm).await?;
                    Ok::<_, ApiError>(HostRepair::Adopted(app.hypervisor.adopt(&spec).await?))
                }
                .await
                .map_err(|e| format!("re-adopting QEMU pid {pid} failed: {e}"))
            }
            Some(Repair::EnsureNetwork) => {
                let Some(net) = networks.iter().find(|n| &n.id == subject) else {
                    continue;
                };
                app.network
                    .execute(&network::ensure_action(net))
                    .await
                    .map(|_| HostRepair::Done(format!("made bridge {} again, up", net.bridge)))
                    .map_err(|e| format!("making bridge {} failed: {e}", net.bridge))
            }
            Some(Repair::EnsureTap { tap, bridge }) => app
                .network
                .execute(&NetworkAction::EnsureTap {
                    tap: tap.clone(),
                    bridge: bridge.clone(),
                })
                .await
                .map(|_| {
                    HostRepair::Done(match drift.finding.kind {
                        CoherenceKind::TapMissing => format!(
                            "made tap {tap} again on {bridge}; QEMU still holds the deleted one, so the NIC carries traffic again only once it is re-attached or the VM restarts"
                        ),
                        _ => format!("put tap {tap} back on {bridge}"),
                    })
                })
                .map_err(|e| format!("repairing tap {tap} failed: {e}")),
            _ => continue,
        };
        if let Err(e) = &result {
            tracing::debug!(subject = %subject, "{e}");
        }
        done.insert(subject.clone(), result);
    }
    done
}

/// What a repair's host step gave.
#[derive(Debug)]
enum HostRepair {
    Adopted(Adoption),
    Done(String),
}

/// The ids the snapshot holds: an issue about anything else has lost its subject.
struct Known<'a> {
    vms: &'a HashMap<&'a str, &'a Vm>,
    disks: &'a HashSet<&'a str>,
    networks: HashSet<&'a str>,
    nics: HashSet<&'a str>,
}

/// Moves a VM to `to`, through `UNKNOWN` when the state machine has no direct edge.
async fn move_to(w: &mut Writer<'_>, vm_id: &str, to: VmState, reason: &str) -> ApiResult<()> {
    let vm = crate::events::find_in::<vm::model::Entity, _>(w.txn(), "VM", vm_id).await?;
    if vm.state != to && !vm.state.can_become(to) {
        vm::transition(w, vm_id, VmState::Unknown, reason, None).await?;
    }
    vm::transition(w, vm_id, to, reason, None).await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn record(
    app: &Ctx,
    policy: DriftPolicy,
    drifts: Vec<Drift>,
    observations: Vec<Observation>,
    host_repairs: HashMap<String, Result<HostRepair, String>>,
    known: &Known<'_>,
    checked: &Checked,
) -> ApiResult<SweepReport> {
    let snapshot_vms = known.vms;
    let mut report = SweepReport::default();
    // A coherent host with nothing open has nothing to write: the sweep then
    // does not take the write lock mutations wait on. (Only sweeps open
    // issues, one at a time, so none can appear meanwhile.)
    if drifts.is_empty()
        && observations.is_empty()
        && coherence::model::Entity::find()
            .filter(coherence::model::Column::ResolvedAt.is_null())
            .one(&app.db)
            .await?
            .is_none()
    {
        return Ok(report);
    }
    let mut w = app.bus.writer().await?;

    // A VM that changed, or that a mutation took, since the probe: its
    // findings are stale; the next sweep looks again.
    let involved: Vec<String> = drifts
        .iter()
        .filter_map(|d| d.finding.vm_id.clone())
        .chain(observations.iter().map(|o| o.vm_id.clone()))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let now: HashMap<String, Vm> = vm::model::Entity::find()
        .filter(vm::model::Column::Id.is_in(involved.clone()))
        .all(w.txn())
        .await?
        .into_iter()
        .map(|vm| (vm.id.clone(), vm))
        .collect();
    let stale: HashSet<String> = involved
        .into_iter()
        .filter(|id| {
            let unchanged = match (snapshot_vms.get(id.as_str()), now.get(id)) {
                (Some(before), Some(after)) => {
                    before.state == after.state && before.updated_at == after.updated_at
                }
                _ => false,
            };
            let taken = app
                .locks
                .holder(id)
                .is_some_and(|(op, _)| op != "coherence-sweep");
            !unchanged || taken
        })
        .collect();
    let fresh = |vm_id: &Option<String>| vm_id.as_ref().is_none_or(|id| !stale.contains(id));

    let open: Vec<CoherenceIssue> = coherence::model::Entity::find()
        .filter(coherence::model::Column::ResolvedAt.is_null())
        .all(w.txn())
        .await?;
    let mut open_by_key: HashMap<(CoherenceKind, String), CoherenceIssue> = open
        .into_iter()
        .map(|issue| ((issue.kind, issue.subject_id.clone()), issue))
        .collect();

    for observation in observations.iter().filter(|o| !stale.contains(&o.vm_id)) {
        vm::transition(
            &mut w,
            &observation.vm_id,
            observation.to,
            &observation.reason,
            None,
        )
        .await?;
    }

    let mut seen_keys = HashSet::new();
    for drift in drifts.into_iter().filter(|d| fresh(&d.finding.vm_id)) {
        let key = (drift.finding.kind, drift.finding.subject_id.clone());
        if !seen_keys.insert(key.clone()) {
            continue;
        }
        let issue = match open_by_key.remove(&key) {
            Some(issue) => issue,
            None => {
                let issue = coherence::open(&mut w, &drift.finding).await?;
                report.opened.push(issue.clone());
                issue
            }
        };
        let repaired = match (policy, &drift.repair) {
            (DriftPolicy::Repair, Some(repair)) => {
                apply(
                    &mut w,
                    &drift.finding,
                    repair,
                    host_repairs.get(&drift.finding.subject_id),
                    &mut report.crashed,
                )
                .await?
            }
            _ => None,
        };
        match repaired {
            Some(action) => {
                crate::telemetry::coherence_repair(drift.finding.kind.as_str());
                let issue = coherence::resolve(&mut w, issue, &action).await?;
                report.findings.push(issue.clone());
                report.resolved.push(issue);
            }
            None => report.findings.push(issue),
        }
    }

    // Whatever was looked at again and is no longer there is resolved.
    for (_, issue) in open_by_key {
        let gone = match issue.subject_type.as_str() {
            "Vm" => !snapshot_vms.contains_key(issue.subject_id.as_str()),
            "Disk" if issue.kind.area() == Area::DiskFile => {
                !known.disks.contains(issue.subject_id.as_str())
            }
            // Which disks a deleted VM's QEMU has is no longer a question.
            "Disk" => issue
                .vm_id
                .as_deref()
                .is_some_and(|vm| !snapshot_vms.contains_key(vm)),
            "Network" => !known.networks.contains(issue.subject_id.as_str()),
            "Nic" => !known.nics.contains(issue.subject_id.as_str()),
            _ => false,
        };
        if stale.contains(issue.vm_id.as_deref().unwrap_or_default()) && !gone {
            continue;
        }
        let action = if gone {
            "its subject no longer exists"
        } else if checked.covers(&issue) {
            "no longer seen"
        } else {
            continue;
        };
        report
            .resolved
            .push(coherence::resolve(&mut w, issue, action).await?);
    }
    w.commit().await?;
    Ok(report)
}

/// Applies one repair inside the write; the action taken, or None when it
/// could not be done (the issue then stays open).
async fn apply(
    w: &mut Writer<'_>,
    finding: &Finding,
    repair: &Repair,
    on_host: Option<&Result<HostRepair, String>>,
    crashed: &mut Vec<String>,
) -> ApiResult<Option<String>> {
    let vm_id = &finding.subject_id;
    Ok(match repair {
        Repair::MarkCrashed => {
            crashed.push(vm_id.clone());
            move_to(
                w,
                vm_id,
                VmState::Crashed,
                "repaired by the coherence sweep: its QEMU is gone",
            )
            .await?;
            Some("marked the VM CRASHED".into())
        }
        Repair::SyncState(to) => {
            move_to(
                w,
                vm_id,
                *to,
                &format!("repaired by the coherence sweep: state re-synced from QMP ({to})"),
            )
            .await?;
            Some(format!("set the VM's state to {to}, as QMP reports"))
        }
        Repair::EnsureNetwork | Repair::EnsureTap { .. } => match on_host {
            Some(Ok(HostRepair::Done(action))) => Some(action.clone()),
            _ => None,
        },
        Repair::Adopt { pid } => match on_host {
            Some(Ok(HostRepair::Adopted(Adoption::Running {
                pid,
                status,
                running,
            }))) => {
                let to = qmp_state(*running);
                move_to(
                    w,
                    vm_id,
                    to,
                    &format!(
                        "repaired by the coherence sweep: re-adopted QEMU pid {pid} ({status})"
                    ),
                )
                .await?;
                Some(format!("re-adopted QEMU pid {pid}; the VM is {to}"))
            }
            Some(Ok(HostRepair::Adopted(Adoption::NotRunning))) => {
                tracing::info!(vm = %vm_id, pid, "the QEMU to re-adopt is gone");
                None
            }
            Some(Err(e)) => {
                tracing::debug!(vm = %vm_id, "{e}");
                None
            }
            Some(Ok(HostRepair::Done(_))) | None => None,
        },
    })
}
