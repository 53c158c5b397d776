//! Coherence issues: what the observer's sweep found different between the
//! database and the host. One open issue per (kind, subject); a drift seen
//! again is the same issue, one that is gone is resolved. Each change is a
//! journal event (`COHERENCE_ISSUE_OPENED` / `COHERENCE_ISSUE_RESOLVED`)
//! carrying the whole issue, so subscribers need no extra read.

pub mod graphql;
pub mod model;

use chrono::Utc;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, IntoActiveModel};

use crate::{
    error::ApiResult,
    events::{NewEvent, Payload, Writer},
};
pub use model::{CoherenceKind, Model as CoherenceIssue};

/// The part of the host a kind of issue is about: an issue is resolved only
/// when the sweep looked at that part of its subject again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Area {
    /// A VM's process and QMP state.
    Process,
    /// A disk's file.
    DiskFile,
    /// Which disks a running QEMU has.
    DiskInQemu,
    /// Run directories nobody owns.
    Orphans,
    /// Bridges and taps.
    Links,
    /// The files in storage.
    Storage,
}

impl CoherenceKind {
    pub fn area(self) -> Area {
        use CoherenceKind::*;
        match self {
            ProcessMissing | UnexpectedProcess | UntrackedProcess | StatusMismatch | QmpSilent => {
                Area::Process
            }
            OrphanRunDir | OrphanProcess => Area::Orphans,
            DiskFileMissing
            | DiskFileUnreadable
            | DiskFormatMismatch
            | DiskSizeMismatch
            | SnapshotMissingInImage
            | SnapshotUnknownInImage => Area::DiskFile,
            DiskNotInQemu | DiskUnexpectedInQemu => Area::DiskInQemu,
            BridgeMissing | BridgeDown | TapMissing | TapNotOnBridge => Area::Links,
            StrayStorageFile => Area::Storage,
        }
    }
}

/// One drift as a sweep sees it, before it is recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub kind: CoherenceKind,
    pub subject_type: crate::operation::SubjectType,
    pub subject_id: String,
    pub vm_id: Option<String>,
    pub expected: String,
    pub observed: String,
}

fn event(payload: fn(Box<CoherenceIssue>) -> Payload, issue: &CoherenceIssue) -> NewEvent {
    NewEvent::new(&issue.id, None, payload(Box::new(issue.clone())))
}

/// Opens an issue for a finding on host `host_id`, journaling `COHERENCE_ISSUE_OPENED`.
pub async fn open(
    w: &mut Writer<'_>,
    finding: &Finding,
    host_id: &str,
) -> ApiResult<CoherenceIssue> {
    let issue = model::ActiveModel {
        id: Set(uuid::Uuid::now_v7().to_string()),
        kind: Set(finding.kind),
        subject_type: Set(finding.subject_type),
        subject_id: Set(finding.subject_id.clone()),
        vm_id: Set(finding.vm_id.clone()),
        expected: Set(finding.expected.clone()),
        observed: Set(finding.observed.clone()),
        detected_at: Set(Utc::now()),
        resolved_at: Set(None),
        action: Set(None),
        host_id: Set(Some(host_id.to_string())),
    }
    .insert(w.txn())
    .await?;
    w.record(event(Payload::CoherenceIssueOpened, &issue))
        .await?;
    crate::telemetry::coherence_finding(finding.kind.as_str());
    Ok(issue)
}

/// Resolves an open issue, saying what was done (or why it is gone),
/// journaling `COHERENCE_ISSUE_RESOLVED`.
pub async fn resolve(
    w: &mut Writer<'_>,
    issue: CoherenceIssue,
    action: &str,
) -> ApiResult<CoherenceIssue> {
    let mut row = issue.into_active_model();
    row.resolved_at = Set(Some(Utc::now()));
    row.action = Set(Some(action.to_string()));
    let issue = row.update(w.txn()).await?;
    w.record(event(Payload::CoherenceIssueResolved, &issue))
        .await?;
    Ok(issue)
}

/// How many issues are open of each kind (every kind, zeros included).
pub async fn open_counts(
    ctx: &crate::context::Ctx,
) -> crate::error::ApiResult<Vec<(&'static str, u64)>> {
    use sea_orm::{ColumnTrait, EntityTrait, Iterable, QueryFilter};
    let open = model::Entity::find()
        .filter(model::Column::ResolvedAt.is_null())
        .all(&ctx.db)
        .await?;
    Ok(CoherenceKind::iter()
        .map(|kind| {
            let count = open.iter().filter(|issue| issue.kind == kind).count();
            (kind.as_str(), count as u64)
        })
        .collect())
}
