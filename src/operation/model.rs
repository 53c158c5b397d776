use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// One accepted request that changes the host, from start to finish.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "operations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub kind: super::OperationKind,
    pub target_id: String,
    pub target_type: super::SubjectType,
    pub status: OperationStatus,
    pub error: Option<String>,
    pub error_code: Option<String>,
    /// The host action it failed at (`createDisk`, `start`, …), when a host action failed.
    pub failed_step: Option<String>,
    /// The host steps taken (or planned), as `HostStep` JSON.
    pub steps: Json,
    pub started_at: DateTimeUtc,
    /// Who asked: an API token's name, `local` without auth, `vman` for vman's own work.
    pub actor: String,
    pub finished_at: Option<DateTimeUtc>,
    /// A long operation's last progress, as `progress::Progress` JSON,
    /// written when it ends; null for the others.
    pub progress: Option<Json>,
    /// The host whose node carries it out (`cluster`).
    pub host_id: Option<String>,
}

/// Where an operation is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    EnumIter,
    DeriveActiveEnum,
    async_graphql::Enum,
    Serialize,
    Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum OperationStatus {
    /// Not used.
    #[sea_orm(string_value = "PENDING")]
    Pending,
    /// Recorded before the host is touched; the work is under way.
    #[sea_orm(string_value = "RUNNING")]
    Running,
    /// It did what was asked.
    #[sea_orm(string_value = "SUCCEEDED")]
    Succeeded,
    /// It failed (see `error` and `errorCode`), or vman stopped while it ran
    /// (`errorCode` INTERRUPTED).
    #[sea_orm(string_value = "FAILED")]
    Failed,
    /// `cancelOperation` stopped it; what it had made was taken back.
    #[sea_orm(string_value = "CANCELLED")]
    Cancelled,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl OperationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationStatus::Pending => "PENDING",
            OperationStatus::Running => "RUNNING",
            OperationStatus::Succeeded => "SUCCEEDED",
            OperationStatus::Failed => "FAILED",
            OperationStatus::Cancelled => "CANCELLED",
        }
    }
}
