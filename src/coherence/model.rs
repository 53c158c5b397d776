use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// One drift between the database and the host, from when the sweep first
/// saw it until it is gone (`resolved_at`).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "coherence_issues")]
#[serde(rename_all = "camelCase")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub kind: CoherenceKind,
    /// `Vm`, `Disk`, `Network`, `Nic`, `RunDir`, `StorageFile`.
    pub subject_type: crate::operation::SubjectType,
    /// The subject's id (the path for `RunDir` and `StorageFile`).
    pub subject_id: String,
    /// The VM the issue concerns, when there is one.
    pub vm_id: Option<String>,
    pub expected: String,
    pub observed: String,
    pub detected_at: DateTimeUtc,
    pub resolved_at: Option<DateTimeUtc>,
    /// What vman did about it (under the `repair` policy), or why it resolved.
    pub action: Option<String>,
    /// The host whose node's sweep found it (only that node resolves it).
    pub host_id: Option<String>,
}

/// What kind of drift an issue is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    EnumIter,
    DeriveActiveEnum,
    async_graphql::Enum,
    Serialize,
    Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CoherenceKind {
    /// The database says the VM runs; no QEMU of it does.
    #[sea_orm(string_value = "PROCESS_MISSING")]
    ProcessMissing,
    /// A QEMU of the VM runs while the database says it does not.
    #[sea_orm(string_value = "UNEXPECTED_PROCESS")]
    UnexpectedProcess,
    /// The VM's QEMU runs but vman does not watch it (it was not re-adopted).
    #[sea_orm(string_value = "UNTRACKED_PROCESS")]
    UntrackedProcess,
    /// QMP reports a run state other than the database's.
    #[sea_orm(string_value = "STATUS_MISMATCH")]
    StatusMismatch,
    /// QMP did not answer within the probe timeout: the VM is `UNKNOWN`.
    #[sea_orm(string_value = "QMP_SILENT")]
    QmpSilent,
    /// A run directory that belongs to no VM.
    #[sea_orm(string_value = "ORPHAN_RUN_DIR")]
    OrphanRunDir,
    /// A QEMU process in a run directory that belongs to no VM.
    #[sea_orm(string_value = "ORPHAN_PROCESS")]
    OrphanProcess,
    /// No file at the disk's path.
    #[sea_orm(string_value = "DISK_FILE_MISSING")]
    DiskFileMissing,
    /// The file exists but cannot be read or is not a regular file.
    #[sea_orm(string_value = "DISK_FILE_UNREADABLE")]
    DiskFileUnreadable,
    /// `qemu-img info` reports another format than the disk's.
    #[sea_orm(string_value = "DISK_FORMAT_MISMATCH")]
    DiskFormatMismatch,
    /// The file's virtual size (qcow2) or length (raw) is not the disk's `sizeBytes`.
    #[sea_orm(string_value = "DISK_SIZE_MISMATCH")]
    DiskSizeMismatch,
    /// A snapshot of the disk's VM covers the disk, but the disk's file has
    /// no internal snapshot tagged with its id (deleted behind vman's back).
    #[sea_orm(string_value = "SNAPSHOT_MISSING_IN_IMAGE")]
    SnapshotMissingInImage,
    /// The disk's file has an internal snapshot no snapshot of vman has
    /// (made behind vman's back, or left by a snapshot job that ended late).
    #[sea_orm(string_value = "SNAPSHOT_UNKNOWN_IN_IMAGE")]
    SnapshotUnknownInImage,
    /// The database says the disk is attached to the running VM; QEMU lacks it.
    #[sea_orm(string_value = "DISK_NOT_IN_QEMU")]
    DiskNotInQemu,
    /// QEMU has the disk's device; the database says it is not attached there.
    #[sea_orm(string_value = "DISK_UNEXPECTED_IN_QEMU")]
    DiskUnexpectedInQemu,
    /// No link has the network's bridge name.
    #[sea_orm(string_value = "BRIDGE_MISSING")]
    BridgeMissing,
    /// The network's bridge exists but is down.
    #[sea_orm(string_value = "BRIDGE_DOWN")]
    BridgeDown,
    /// An attached NIC of a running or paused VM has no tap.
    #[sea_orm(string_value = "TAP_MISSING")]
    TapMissing,
    /// The tap exists but is not enslaved to its network's bridge.
    #[sea_orm(string_value = "TAP_NOT_ON_BRIDGE")]
    TapNotOnBridge,
    /// A file or directory in storage that no disk or image owns: the
    /// `.partial` file of a create or import that never finished, or one put
    /// there by hand. Never deleted.
    #[sea_orm(string_value = "STRAY_STORAGE_FILE")]
    StrayStorageFile,
}

impl CoherenceKind {
    /// The name used in the database, GraphQL, the journal and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CoherenceKind::ProcessMissing => "PROCESS_MISSING",
            CoherenceKind::UnexpectedProcess => "UNEXPECTED_PROCESS",
            CoherenceKind::UntrackedProcess => "UNTRACKED_PROCESS",
            CoherenceKind::StatusMismatch => "STATUS_MISMATCH",
            CoherenceKind::QmpSilent => "QMP_SILENT",
            CoherenceKind::OrphanRunDir => "ORPHAN_RUN_DIR",
            CoherenceKind::OrphanProcess => "ORPHAN_PROCESS",
            CoherenceKind::DiskFileMissing => "DISK_FILE_MISSING",
            CoherenceKind::DiskFileUnreadable => "DISK_FILE_UNREADABLE",
            CoherenceKind::DiskFormatMismatch => "DISK_FORMAT_MISMATCH",
            CoherenceKind::DiskSizeMismatch => "DISK_SIZE_MISMATCH",
            CoherenceKind::SnapshotMissingInImage => "SNAPSHOT_MISSING_IN_IMAGE",
            CoherenceKind::SnapshotUnknownInImage => "SNAPSHOT_UNKNOWN_IN_IMAGE",
            CoherenceKind::DiskNotInQemu => "DISK_NOT_IN_QEMU",
            CoherenceKind::DiskUnexpectedInQemu => "DISK_UNEXPECTED_IN_QEMU",
            CoherenceKind::BridgeMissing => "BRIDGE_MISSING",
            CoherenceKind::BridgeDown => "BRIDGE_DOWN",
            CoherenceKind::TapMissing => "TAP_MISSING",
            CoherenceKind::TapNotOnBridge => "TAP_NOT_ON_BRIDGE",
            CoherenceKind::StrayStorageFile => "STRAY_STORAGE_FILE",
        }
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
