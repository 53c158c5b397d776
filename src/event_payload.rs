//! What each event says: one variant per [`EventKind`], with typed fields.
//! The kind and the subject type of an event follow from its payload, so a
//! payload cannot be journaled under the wrong kind. The JSON form (fields
//! in camelCase, at the top level) is what subscribers receive as `payload`.

use serde::Serialize;

use crate::{
    coherence::CoherenceIssue, disk::DiskFormat, events::EventKind, image::ImageKind,
    operation::SubjectType, vm::VmState,
};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged, rename_all_fields = "camelCase")]
pub enum Payload {
    TemplateCreated {
        name: String,
    },
    TemplateDeleted {
        name: String,
    },
    TemplateUpdated {
        name: String,
        /// Fields that changed (`name`, `vcpus`, …).
        changed: Vec<String>,
    },
    VmCreated {
        name: String,
        template_id: Option<String>,
    },
    VmDeleted {
        name: String,
        deleted_disks: bool,
    },
    VmUpdated {
        name: String,
        /// Fields that changed now (`name`, `vcpus`, `tags`, …).
        changed: Vec<String>,
        /// Fields whose new values wait for the next start.
        pending: Vec<String>,
    },
    VmStateChanged {
        from: VmState,
        to: VmState,
        reason: String,
        /// Crash forensics: the exit status and the last log lines.
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<serde_json::Value>,
    },
    DiskCreated {
        name: String,
        size_bytes: i64,
        format: DiskFormat,
        vm_id: Option<String>,
    },
    DiskAttached {
        name: String,
        vm_id: String,
        hot: bool,
    },
    DiskDetached {
        name: String,
        vm_id: String,
    },
    DiskDeleted {
        name: String,
    },
    DiskResized {
        name: String,
        from: i64,
        to: i64,
    },
    NetworkCreated {
        name: String,
        vlan_id: i32,
        bridge: String,
        uplink: Option<String>,
    },
    NetworkDeleted {
        name: String,
        vlan_id: i32,
    },
    NicAttached {
        vm_id: String,
        network_id: String,
        mac: String,
        model: String,
        tap: Option<String>,
        hot: bool,
    },
    NicDetached {
        vm_id: String,
        network_id: String,
        mac: String,
        tap: Option<String>,
    },
    ImageImported {
        name: String,
        kind: ImageKind,
        size_bytes: i64,
    },
    ImageDeleted {
        name: String,
    },
    SnapshotCreated {
        name: String,
        vm_id: String,
        with_memory: bool,
        vm_state: VmState,
    },
    SnapshotRestored {
        name: String,
        vm_id: String,
        with_memory: bool,
    },
    SnapshotDeleted {
        name: String,
        vm_id: String,
    },
    /// The issue as opened.
    CoherenceIssueOpened(Box<CoherenceIssue>),
    /// The issue as resolved (its `action` says how).
    CoherenceIssueResolved(Box<CoherenceIssue>),
    HostOnline {
        name: String,
        /// The host is new, joining the others (false: it came back).
        registered: bool,
    },
    HostOffline {
        name: String,
        reason: String,
        /// The VMs that became `UNKNOWN` with it.
        vm_ids: Vec<String>,
    },
}

impl Payload {
    pub fn kind(&self) -> EventKind {
        match self {
            Payload::TemplateCreated { .. } => EventKind::TemplateCreated,
            Payload::TemplateDeleted { .. } => EventKind::TemplateDeleted,
            Payload::TemplateUpdated { .. } => EventKind::TemplateUpdated,
            Payload::VmCreated { .. } => EventKind::VmCreated,
            Payload::VmDeleted { .. } => EventKind::VmDeleted,
            Payload::VmUpdated { .. } => EventKind::VmUpdated,
            Payload::VmStateChanged { .. } => EventKind::VmStateChanged,
            Payload::DiskCreated { .. } => EventKind::DiskCreated,
            Payload::DiskAttached { .. } => EventKind::DiskAttached,
            Payload::DiskDetached { .. } => EventKind::DiskDetached,
            Payload::DiskDeleted { .. } => EventKind::DiskDeleted,
            Payload::DiskResized { .. } => EventKind::DiskResized,
            Payload::NetworkCreated { .. } => EventKind::NetworkCreated,
            Payload::NetworkDeleted { .. } => EventKind::NetworkDeleted,
            Payload::NicAttached { .. } => EventKind::NicAttached,
            Payload::NicDetached { .. } => EventKind::NicDetached,
            Payload::ImageImported { .. } => EventKind::ImageImported,
            Payload::ImageDeleted { .. } => EventKind::ImageDeleted,
            Payload::SnapshotCreated { .. } => EventKind::SnapshotCreated,
            Payload::SnapshotRestored { .. } => EventKind::SnapshotRestored,
            Payload::SnapshotDeleted { .. } => EventKind::SnapshotDeleted,
            Payload::CoherenceIssueOpened(_) => EventKind::CoherenceIssueOpened,
            Payload::CoherenceIssueResolved(_) => EventKind::CoherenceIssueResolved,
            Payload::HostOnline { .. } => EventKind::HostOnline,
            Payload::HostOffline { .. } => EventKind::HostOffline,
        }
    }

    /// What the event is about.
    pub fn subject(&self) -> SubjectType {
        match self {
            Payload::TemplateCreated { .. }
            | Payload::TemplateDeleted { .. }
            | Payload::TemplateUpdated { .. } => SubjectType::Template,
            Payload::VmCreated { .. }
            | Payload::VmDeleted { .. }
            | Payload::VmUpdated { .. }
            | Payload::VmStateChanged { .. } => SubjectType::Vm,
            Payload::DiskCreated { .. }
            | Payload::DiskAttached { .. }
            | Payload::DiskDetached { .. }
            | Payload::DiskDeleted { .. }
            | Payload::DiskResized { .. } => SubjectType::Disk,
            Payload::NetworkCreated { .. } | Payload::NetworkDeleted { .. } => SubjectType::Network,
            Payload::NicAttached { .. } | Payload::NicDetached { .. } => SubjectType::Nic,
            Payload::ImageImported { .. } | Payload::ImageDeleted { .. } => SubjectType::Image,
            Payload::SnapshotCreated { .. }
            | Payload::SnapshotRestored { .. }
            | Payload::SnapshotDeleted { .. } => SubjectType::Snapshot,
            Payload::CoherenceIssueOpened(_) | Payload::CoherenceIssueResolved(_) => {
                SubjectType::CoherenceIssue
            }
            Payload::HostOnline { .. } | Payload::HostOffline { .. } => SubjectType::Host,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_the_camel_case_objects_subscribers_know() {
        let created = Payload::VmCreated {
            name: "web".into(),
            template_id: None,
        };
        assert_eq!(
            serde_json::to_value(&created).unwrap(),
            serde_json::json!({"name": "web", "templateId": null})
        );
        let changed = Payload::VmStateChanged {
            from: VmState::Running,
            to: VmState::Crashed,
            reason: "QEMU exited".into(),
            detail: None,
        };
        assert_eq!(
            serde_json::to_value(&changed).unwrap(),
            serde_json::json!({"from": "RUNNING", "to": "CRASHED", "reason": "QEMU exited"})
        );
        assert_eq!(changed.kind(), EventKind::VmStateChanged);
        assert_eq!(changed.subject(), SubjectType::Vm);
    }
}
