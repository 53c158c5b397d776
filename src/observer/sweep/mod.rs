//! The coherence sweep: the safety net behind the push path. Every
//! `observer.interval` (and on `runCoherenceSweep`) it runs one pipeline:
//!
//! 1. [`snapshot`] reads the database once and asks the host about what it
//!    holds (I/O only, no verdict);
//! 2. [`judge`] compares, purely: a snapshot in, drifts and observations out;
//! 3. [`repair`] changes what drifted, on the host and in the database, only
//!    under `observer.policy = "repair"`;
//! 4. [`record`] opens and resolves each
//!    [`CoherenceIssue`](crate::coherence::CoherenceIssue), with its events.
//!
//! Findings are rechecked before anything is written: what an operation or a
//! mutation took since the snapshot is left for the next sweep. The sweep
//! never deletes a file or kills a process, whatever the policy.

mod judge;
mod record;
mod repair;
mod snapshot;

pub(crate) use judge::qmp_state;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::{coherence::CoherenceIssue, config::DriftPolicy, context::Ctx, error::ApiResult};

/// The operation id the sweep holds a VM's lock under while it repairs:
/// a mutation that takes the lock has another.
const SWEEP_HOLDER: &str = "coherence-sweep";

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
    // Not a drift: work a deleteNetwork through another node left this one.
    if let Err(e) = crate::network::take_down_leftovers(app).await {
        tracing::warn!(error = %e, "taking down the bridges of networks deleted elsewhere");
    }
    let snap = snapshot::take(app).await?;
    let judge::Judgement {
        drifts,
        observations,
        mut checked,
    } = judge::judge(&snap);

    let policy = match app.hypervisor.is_dry_run() {
        // A dry run changes nothing it only imagines.
        true => DriftPolicy::Report,
        false => app.config.observer.policy,
    };
    let drifts = snapshot::still_unclaimed(app, drifts, &mut checked.withdrawn).await?;
    let host_repairs = match policy {
        DriftPolicy::Repair => repair::on_host(app, &snap.rows.networks, &drifts).await,
        DriftPolicy::Report => HashMap::new(),
    };
    let mut report = record::record(
        app,
        policy,
        drifts,
        observations,
        host_repairs,
        &snap.rows,
        &checked,
    )
    .await?;
    repair::release_crashed(app, &report.crashed).await?;
    report.started_at = started_at;
    report.vms_checked = checked.vms.len();
    report.vms_skipped = snap.rows.vms.len() - checked.vms.len();
    report.disks_checked = checked.disk_files.len();
    Ok(report)
}
