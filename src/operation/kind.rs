//! The vocabularies of operations: what a mutation is ([`OperationKind`])
//! and what kind of thing it, or an event, is about ([`SubjectType`]). Each
//! string form is derived here, once; no other module spells one out.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// Every mutation vman carries out, one value each. The operation record,
/// the lock holder shown in `VM_BUSY` and the metrics' `kind` label use it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationKind {
    /// `createTemplate`.
    #[sea_orm(string_value = "CREATE_TEMPLATE")]
    CreateTemplate,
    /// `deleteTemplate`.
    #[sea_orm(string_value = "DELETE_TEMPLATE")]
    DeleteTemplate,
    /// `updateTemplate`.
    #[sea_orm(string_value = "UPDATE_TEMPLATE")]
    UpdateTemplate,
    /// `createVm`: the VM row and, when asked for, its root disk.
    #[sea_orm(string_value = "CREATE_VM")]
    CreateVm,
    /// `startVm`.
    #[sea_orm(string_value = "START_VM")]
    StartVm,
    /// `stopVm`.
    #[sea_orm(string_value = "STOP_VM")]
    StopVm,
    /// `restartVm`.
    #[sea_orm(string_value = "RESTART_VM")]
    RestartVm,
    /// `pauseVm`.
    #[sea_orm(string_value = "PAUSE_VM")]
    PauseVm,
    /// `resumeVm`.
    #[sea_orm(string_value = "RESUME_VM")]
    ResumeVm,
    /// `deleteVm`.
    #[sea_orm(string_value = "DELETE_VM")]
    DeleteVm,
    /// `cloneVm`: the clone's rows and its disks' files (a full clone's
    /// copies are a long operation).
    #[sea_orm(string_value = "CLONE_VM")]
    CloneVm,
    /// `updateVm`, `clearPendingChanges`.
    #[sea_orm(string_value = "UPDATE_VM")]
    UpdateVm,
    /// `attachCdrom`.
    #[sea_orm(string_value = "ATTACH_CDROM")]
    AttachCdrom,
    /// `ejectCdrom`.
    #[sea_orm(string_value = "EJECT_CDROM")]
    EjectCdrom,
    /// `createDisk`.
    #[sea_orm(string_value = "CREATE_DISK")]
    CreateDisk,
    /// `attachDisk`.
    #[sea_orm(string_value = "ATTACH_DISK")]
    AttachDisk,
    /// `detachDisk`.
    #[sea_orm(string_value = "DETACH_DISK")]
    DetachDisk,
    /// `resizeDisk`.
    #[sea_orm(string_value = "RESIZE_DISK")]
    ResizeDisk,
    /// `deleteDisk`.
    #[sea_orm(string_value = "DELETE_DISK")]
    DeleteDisk,
    /// `createNetwork`.
    #[sea_orm(string_value = "CREATE_NETWORK")]
    CreateNetwork,
    /// `deleteNetwork`.
    #[sea_orm(string_value = "DELETE_NETWORK")]
    DeleteNetwork,
    /// `attachNic`.
    #[sea_orm(string_value = "ATTACH_NIC")]
    AttachNic,
    /// `detachNic`.
    #[sea_orm(string_value = "DETACH_NIC")]
    DetachNic,
    /// `importImage`.
    #[sea_orm(string_value = "IMPORT_IMAGE")]
    ImportImage,
    /// `deleteImage`.
    #[sea_orm(string_value = "DELETE_IMAGE")]
    DeleteImage,
    /// A repair by the coherence sweep (`observer.policy = "repair"`); it
    /// holds a VM's lock like a mutation, but records no operation.
    #[sea_orm(string_value = "COHERENCE_REPAIR")]
    CoherenceRepair,
    /// `createApiToken`, or `vman token create`.
    #[sea_orm(string_value = "CREATE_API_TOKEN")]
    CreateApiToken,
    /// `revokeApiToken`, or `vman token revoke`.
    #[sea_orm(string_value = "REVOKE_API_TOKEN")]
    RevokeApiToken,
    /// `createSnapshot`.
    #[sea_orm(string_value = "CREATE_SNAPSHOT")]
    CreateSnapshot,
    /// `restoreSnapshot`.
    #[sea_orm(string_value = "RESTORE_SNAPSHOT")]
    RestoreSnapshot,
    /// `deleteSnapshot`.
    #[sea_orm(string_value = "DELETE_SNAPSHOT")]
    DeleteSnapshot,
}

impl OperationKind {
    /// The stored and shown name (`START_VM`).
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::CreateTemplate => "CREATE_TEMPLATE",
            OperationKind::DeleteTemplate => "DELETE_TEMPLATE",
            OperationKind::UpdateTemplate => "UPDATE_TEMPLATE",
            OperationKind::CreateVm => "CREATE_VM",
            OperationKind::StartVm => "START_VM",
            OperationKind::StopVm => "STOP_VM",
            OperationKind::RestartVm => "RESTART_VM",
            OperationKind::PauseVm => "PAUSE_VM",
            OperationKind::ResumeVm => "RESUME_VM",
            OperationKind::DeleteVm => "DELETE_VM",
            OperationKind::CloneVm => "CLONE_VM",
            OperationKind::UpdateVm => "UPDATE_VM",
            OperationKind::AttachCdrom => "ATTACH_CDROM",
            OperationKind::EjectCdrom => "EJECT_CDROM",
            OperationKind::CreateDisk => "CREATE_DISK",
            OperationKind::AttachDisk => "ATTACH_DISK",
            OperationKind::DetachDisk => "DETACH_DISK",
            OperationKind::ResizeDisk => "RESIZE_DISK",
            OperationKind::DeleteDisk => "DELETE_DISK",
            OperationKind::CreateNetwork => "CREATE_NETWORK",
            OperationKind::DeleteNetwork => "DELETE_NETWORK",
            OperationKind::AttachNic => "ATTACH_NIC",
            OperationKind::DetachNic => "DETACH_NIC",
            OperationKind::ImportImage => "IMPORT_IMAGE",
            OperationKind::DeleteImage => "DELETE_IMAGE",
            OperationKind::CoherenceRepair => "COHERENCE_REPAIR",
            OperationKind::CreateApiToken => "CREATE_API_TOKEN",
            OperationKind::RevokeApiToken => "REVOKE_API_TOKEN",
            OperationKind::CreateSnapshot => "CREATE_SNAPSHOT",
            OperationKind::RestoreSnapshot => "RESTORE_SNAPSHOT",
            OperationKind::DeleteSnapshot => "DELETE_SNAPSHOT",
        }
    }
}

impl OperationKind {
    /// Whether it adds to what vman keeps on disk, so that it is refused
    /// while the database's filesystem is nearly full
    /// (`storage::ensure_database_room`). Those that make room or stop
    /// something (deletes, stops, detaches, revokes) may use the last of it.
    pub fn needs_room(self) -> bool {
        match self {
            OperationKind::CreateTemplate
            | OperationKind::UpdateTemplate
            | OperationKind::CreateVm
            | OperationKind::CloneVm
            | OperationKind::StartVm
            | OperationKind::RestartVm
            | OperationKind::ResumeVm
            | OperationKind::UpdateVm
            | OperationKind::AttachCdrom
            | OperationKind::CreateDisk
            | OperationKind::AttachDisk
            | OperationKind::ResizeDisk
            | OperationKind::CreateNetwork
            | OperationKind::AttachNic
            | OperationKind::ImportImage
            | OperationKind::CreateApiToken
            | OperationKind::CreateSnapshot
            | OperationKind::RestoreSnapshot => true,
            OperationKind::DeleteTemplate
            | OperationKind::StopVm
            | OperationKind::PauseVm
            | OperationKind::DeleteVm
            | OperationKind::DetachDisk
            | OperationKind::EjectCdrom
            | OperationKind::DeleteDisk
            | OperationKind::DeleteNetwork
            | OperationKind::DetachNic
            | OperationKind::DeleteImage
            | OperationKind::CoherenceRepair
            | OperationKind::RevokeApiToken
            | OperationKind::DeleteSnapshot => false,
        }
    }
}

impl std::fmt::Display for OperationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an operation targets, or an event is about.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum SubjectType {
    /// A template.
    #[sea_orm(string_value = "Template")]
    #[serde(rename = "Template")]
    Template,
    /// A VM.
    #[sea_orm(string_value = "Vm")]
    #[serde(rename = "Vm")]
    Vm,
    /// A disk.
    #[sea_orm(string_value = "Disk")]
    #[serde(rename = "Disk")]
    Disk,
    /// A network.
    #[sea_orm(string_value = "Network")]
    #[serde(rename = "Network")]
    Network,
    /// A VM's NIC.
    #[sea_orm(string_value = "Nic")]
    #[serde(rename = "Nic")]
    Nic,
    /// An imported image.
    #[sea_orm(string_value = "Image")]
    #[serde(rename = "Image")]
    Image,
    /// A coherence issue (drift between the database and the host).
    #[sea_orm(string_value = "CoherenceIssue")]
    #[serde(rename = "CoherenceIssue")]
    CoherenceIssue,
    /// A VM's run directory on the host.
    #[sea_orm(string_value = "RunDir")]
    #[serde(rename = "RunDir")]
    RunDir,
    /// A file in storage (its path).
    #[sea_orm(string_value = "StorageFile")]
    #[serde(rename = "StorageFile")]
    StorageFile,
    /// An API token.
    #[sea_orm(string_value = "ApiToken")]
    #[serde(rename = "ApiToken")]
    ApiToken,
    /// A snapshot of a VM.
    #[sea_orm(string_value = "Snapshot")]
    #[serde(rename = "Snapshot")]
    Snapshot,
    /// A host: a vman node's machine.
    #[sea_orm(string_value = "Host")]
    #[serde(rename = "Host")]
    Host,
}

impl SubjectType {
    /// The stored and shown name (`Vm`): the GraphQL type's name where there is one.
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectType::Template => "Template",
            SubjectType::Vm => "Vm",
            SubjectType::Disk => "Disk",
            SubjectType::Network => "Network",
            SubjectType::Nic => "Nic",
            SubjectType::Image => "Image",
            SubjectType::CoherenceIssue => "CoherenceIssue",
            SubjectType::RunDir => "RunDir",
            SubjectType::StorageFile => "StorageFile",
            SubjectType::ApiToken => "ApiToken",
            SubjectType::Snapshot => "Snapshot",
            SubjectType::Host => "Host",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{ActiveEnum, Iterable};

    #[test]
    fn each_name_is_the_stored_and_the_serialized_one() {
        for kind in OperationKind::iter() {
            assert_eq!(kind.to_value(), kind.as_str());
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        for subject in SubjectType::iter() {
            assert_eq!(subject.to_value(), subject.as_str());
            assert_eq!(serde_json::to_value(subject).unwrap(), subject.as_str());
        }
    }
}
