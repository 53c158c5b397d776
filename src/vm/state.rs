//! The VM state machine. [`VmState::can_become`] is the only place that decides
//! which transitions are legal; services, the observer and tests all ask it.
//!
//! The same type is the sea-orm column, the GraphQL enum and the event payload.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// Where a VM is in its life, as the host was last seen.
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
pub enum VmState {
    /// No QEMU of the VM runs.
    #[sea_orm(string_value = "STOPPED")]
    Stopped,
    /// vman is starting its QEMU.
    #[sea_orm(string_value = "STARTING")]
    Starting,
    /// The guest runs.
    #[sea_orm(string_value = "RUNNING")]
    Running,
    /// QEMU runs, but the guest's CPUs are paused.
    #[sea_orm(string_value = "PAUSED")]
    Paused,
    /// vman is stopping its QEMU.
    #[sea_orm(string_value = "STOPPING")]
    Stopping,
    /// Its QEMU ended without a requested stop.
    #[sea_orm(string_value = "CRASHED")]
    Crashed,
    /// vman cannot tell: QMP did not answer in time, or a restarted vman could
    /// not re-adopt its QEMU.
    #[sea_orm(string_value = "UNKNOWN")]
    Unknown,
}

impl VmState {
    /// Whether a VM observed in `self` may next be observed in `next`.
    ///
    /// `STOPPED → STARTING → RUNNING ⇄ PAUSED`, `STARTING|RUNNING|PAUSED → STOPPING → STOPPED`,
    /// a live VM may crash or stop by itself (guest power-off), any state may
    /// become `UNKNOWN` when the host stops answering, and `UNKNOWN` resolves to
    /// whatever the host then shows. A state never "becomes" itself.
    pub fn can_become(self, next: VmState) -> bool {
        use VmState::*;
        if self == next {
            return false;
        }
        matches!(
            (self, next),
            (_, Unknown)
                | (Unknown, _)
                | (Stopped, Starting)
                | (Starting, Running | Paused | Stopping | Stopped | Crashed)
                | (Running, Paused | Stopping | Stopped | Crashed)
                | (Paused, Running | Stopping | Stopped | Crashed)
                | (Stopping, Stopped | Crashed | Running)
                | (Crashed, Starting | Stopped)
        )
    }

    /// A QEMU process is expected to exist in this state.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            VmState::Starting | VmState::Running | VmState::Paused | VmState::Stopping
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Stopped => "STOPPED",
            VmState::Starting => "STARTING",
            VmState::Running => "RUNNING",
            VmState::Paused => "PAUSED",
            VmState::Stopping => "STOPPING",
            VmState::Crashed => "CRASHED",
            VmState::Unknown => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::VmState::{self, *};
    use sea_orm::Iterable;

    #[test]
    fn the_documented_paths_are_legal() {
        for (a, b) in [
            (Stopped, Starting),
            (Starting, Running),
            (Running, Paused),
            (Paused, Running),
            (Running, Stopping),
            (Stopping, Stopped),
            (Running, Crashed),
            (Paused, Crashed),
            (Starting, Crashed),
            (Crashed, Starting),
            (Running, Unknown),
            (Unknown, Running),
        ] {
            assert!(a.can_become(b), "{a} -> {b} should be legal");
        }
    }

    #[test]
    fn shortcuts_and_self_loops_are_not() {
        for (a, b) in [
            (Stopped, Running),
            (Stopped, Paused),
            (Stopped, Stopping),
            (Crashed, Running),
            (Stopped, Crashed),
        ] {
            assert!(!a.can_become(b), "{a} -> {b} should be illegal");
        }
        for s in VmState::iter() {
            assert!(!s.can_become(s));
        }
    }

    #[test]
    fn every_state_can_be_lost_and_found() {
        for s in VmState::iter().filter(|s| *s != Unknown) {
            assert!(s.can_become(Unknown));
            assert!(Unknown.can_become(s));
        }
    }
}

#[cfg(test)]
mod naming_tests {
    use super::VmState::{self, *};
    use sea_orm::{ActiveEnum, Iterable};

    #[test]
    fn names_are_the_same_in_every_representation() {
        for state in VmState::iter() {
            let name = state.as_str();
            assert_eq!(state.to_string(), name);
            assert_eq!(serde_json::to_value(state).unwrap(), name);
            assert_eq!(state.to_value(), name);
            assert_eq!(VmState::try_from_value(&name.to_string()).unwrap(), state);
        }
        assert_eq!(VmState::iter().count(), 7);
        assert!(VmState::try_from_value(&"running".to_string()).is_err());
    }

    #[test]
    fn live_states_are_those_with_a_process() {
        let live: Vec<VmState> = VmState::iter().filter(|s| s.is_live()).collect();
        assert_eq!(live, [Starting, Running, Paused, Stopping]);
    }

    #[test]
    fn the_transition_table() {
        // Rows: from; columns in `VmState::iter()` order:
        // STOPPED STARTING RUNNING PAUSED STOPPING CRASHED UNKNOWN.
        let table = [
            (Stopped, "-x----x"),
            (Starting, "x-xxxxx"),
            (Running, "x--xxxx"),
            (Paused, "x-x-xxx"),
            (Stopping, "x-x--xx"),
            (Crashed, "xx----x"),
            (Unknown, "xxxxxx-"),
        ];
        for (from, row) in table {
            for (to, cell) in VmState::iter().zip(row.chars()) {
                assert_eq!(from.can_become(to), cell == 'x', "{from} -> {to}");
            }
        }
    }
}
