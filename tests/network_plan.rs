//! The network plan: which links each network action adds, enslaves, sets up
//! or deletes, as golden files (`tests/golden/<case>.plan.json`). The plan is
//! what the netlink port executes and what `dryRun: true` returns, with or
//! without 802.1Q support on this host. `UPDATE_GOLDEN=1 cargo test --test
//! network_plan` rewrites them; review the diff.

use std::path::Path;

use serde_json::{Value, json};
use vman::host::{HostStep, NetworkAction, VlanLink, net::plan::plan};

fn check_golden(case: &str, actual: &Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{case}.plan.json"));
    let text = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(text, expected, "{} differs", path.display());
}

/// The plan with each step's summary, as a reviewer reads it.
fn shown(steps: &[HostStep]) -> Value {
    steps
        .iter()
        .map(|s| json!({"step": s, "summary": s.summary()}))
        .collect()
}

#[test]
fn golden_create_isolated_network() {
    let steps = plan(&NetworkAction::CreateNetwork {
        bridge: "vmbr10".into(),
        vlan_link: None,
    });
    check_golden("create_network", &shown(&steps));
}

#[test]
fn golden_create_network_with_uplink() {
    let steps = plan(&NetworkAction::CreateNetwork {
        bridge: "vmbr20".into(),
        vlan_link: Some(VlanLink::new("eth0", 20)),
    });
    assert!(steps.contains(&HostStep::AddVlanLink {
        name: "eth0.20".into(),
        parent: "eth0".into(),
        vlan_id: 20
    }));
    check_golden("create_network_uplink", &shown(&steps));
}

#[test]
fn golden_delete_network() {
    let with_uplink = plan(&NetworkAction::DeleteNetwork {
        bridge: "vmbr20".into(),
        vlan_link: Some("eth0.20".into()),
    });
    let isolated = plan(&NetworkAction::DeleteNetwork {
        bridge: "vmbr10".into(),
        vlan_link: None,
    });
    check_golden(
        "delete_network",
        &json!({"withUplink": shown(&with_uplink), "isolated": shown(&isolated)}),
    );
}

#[test]
fn golden_taps() {
    let ensure = plan(&NetworkAction::EnsureTap {
        tap: "vt0123456789a0".into(),
        bridge: "vmbr10".into(),
    });
    let delete = plan(&NetworkAction::DeleteTap {
        tap: "vt0123456789a0".into(),
    });
    check_golden(
        "taps",
        &json!({"ensureTap": shown(&ensure), "deleteTap": shown(&delete)}),
    );
}

/// Stored operations from before links had their own steps still read.
#[test]
fn old_delete_bridge_steps_still_parse() {
    let step: HostStep =
        serde_json::from_value(json!({"action": "deleteBridge", "name": "vmbr10"})).unwrap();
    assert_eq!(
        step,
        HostStep::DeleteLink {
            name: "vmbr10".into()
        }
    );
}

#[test]
fn tap_names_are_short_deterministic_and_differ_for_vms_created_together() {
    use vman::network::tap_name;
    // Two UUIDv7 from the same millisecond share their first 12 hex digits.
    let a = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    let b = "0190a1b2-c3d4-7e60-8a9b-0c1d2e3f4a5c";
    assert_eq!(tap_name(a, 0), tap_name(a, 0));
    assert_ne!(tap_name(a, 0), tap_name(b, 0));
    assert_ne!(tap_name(a, 0), tap_name(a, 1));
    for position in [0, 7, 99] {
        let name = tap_name(a, position);
        assert!(name.len() <= 15, "{name}");
        assert!(name.starts_with("vt"), "{name}");
    }
    assert_eq!(tap_name(a, 3).len(), 13);
}
