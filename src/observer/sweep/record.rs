//! The sweep's last stage: one write that records what was judged. It
//! records the observations (a VM `UNKNOWN`, or back from it), opens an
//! issue for each new drift and keeps the one already open, applies the
//! repairs the policy allows, and resolves the issues whose subject was
//! looked at again and found coherent, or is gone. Every change is a journal
//! event, written in the same transaction.
//!
//! It must never judge the host again: it only drops what went stale — a VM
//! whose row changed, or that a mutation took, since the snapshot is left
//! for the next sweep.

use std::collections::{HashMap, HashSet};

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::{
    SweepReport,
    judge::{Checked, Drift, Observation},
    repair::{self, HostRepair},
    snapshot::Rows,
};
use crate::{
    coherence::{self, Area, CoherenceIssue, CoherenceKind},
    config::DriftPolicy,
    context::Ctx,
    error::ApiResult,
    operation::SubjectType,
    vm::{self, Vm},
};

pub async fn record(
    app: &Ctx,
    policy: DriftPolicy,
    drifts: Vec<Drift>,
    observations: Vec<Observation>,
    host_repairs: HashMap<String, Result<HostRepair, String>>,
    snapshot: &Rows,
    checked: &Checked,
) -> ApiResult<SweepReport> {
    let mut report = SweepReport::default();
    // A coherent host with nothing open has nothing to write: the sweep then
    // does not take the write lock mutations wait on. (Only sweeps open
    // issues, one at a time, so none can appear meanwhile.)
    if drifts.is_empty()
        && observations.is_empty()
        && coherence::model::Entity::find()
            .filter(coherence::model::Column::ResolvedAt.is_null())
            .filter(coherence::model::Column::HostId.eq(&*app.host_id))
            .one(&app.db)
            .await?
            .is_none()
    {
        return Ok(report);
    }
    let snapshot_vms: HashMap<&str, &Vm> =
        snapshot.vms.iter().map(|vm| (vm.id.as_str(), vm)).collect();
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
                .is_some_and(|(op, _)| op != super::SWEEP_HOLDER);
            !unchanged || taken
        })
        .collect();
    let fresh = |vm_id: &Option<String>| vm_id.as_ref().is_none_or(|id| !stale.contains(id));

    // This host's issues: the others' are their nodes' to resolve.
    let open: Vec<CoherenceIssue> = coherence::model::Entity::find()
        .filter(coherence::model::Column::ResolvedAt.is_null())
        .filter(coherence::model::Column::HostId.eq(&*app.host_id))
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
                let issue = coherence::open(&mut w, &drift.finding, &app.host_id).await?;
                report.opened.push(issue.clone());
                issue
            }
        };
        let repaired = match (policy, &drift.repair) {
            (DriftPolicy::Repair, Some(repair)) => {
                repair::apply(
                    &mut w,
                    &drift.finding,
                    repair,
                    host_repairs.get(&drift.finding.subject_id),
                    &mut report.crashed,
                )
                .await?
            }
            (DriftPolicy::Repair, None) | (DriftPolicy::Report, _) => None,
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
    let disks: HashSet<&str> = snapshot.disks.iter().map(|d| d.id.as_str()).collect();
    let networks: HashSet<&str> = snapshot.networks.iter().map(|n| n.id.as_str()).collect();
    let nics: HashSet<&str> = snapshot.nics.iter().map(|n| n.id.as_str()).collect();
    for (_, issue) in open_by_key {
        let gone = match issue.subject_type {
            SubjectType::Vm => !snapshot_vms.contains_key(issue.subject_id.as_str()),
            SubjectType::Disk if issue.kind.area() == Area::DiskFile => {
                !disks.contains(issue.subject_id.as_str())
            }
            // Which disks a deleted VM's QEMU has is no longer a question.
            SubjectType::Disk => issue
                .vm_id
                .as_deref()
                .is_some_and(|vm| !snapshot_vms.contains_key(vm)),
            SubjectType::Network => !networks.contains(issue.subject_id.as_str()),
            SubjectType::Nic => !nics.contains(issue.subject_id.as_str()),
            // Judged again each sweep: resolved when no longer seen.
            SubjectType::RunDir
            | SubjectType::StorageFile
            | SubjectType::Template
            | SubjectType::Image
            | SubjectType::ApiToken
            | SubjectType::Snapshot
            | SubjectType::Host
            | SubjectType::CoherenceIssue => false,
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
