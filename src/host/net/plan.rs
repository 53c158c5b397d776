//! The host plan of a network action, as a pure function: which links are
//! added, enslaved, set up or deleted, in order. The dry-run port returns it,
//! a `dryRun: true` mutation shows it, and the netlink port executes exactly
//! these steps. Golden files pin it (`tests/network_plan.rs`).

use crate::host::{HostStep, NetworkAction};

pub fn plan(action: &NetworkAction) -> Vec<HostStep> {
    match action {
        NetworkAction::CreateNetwork { bridge, vlan_link } => {
            let mut steps = vec![
                HostStep::AddBridge {
                    name: bridge.clone(),
                },
                HostStep::SetUp {
                    name: bridge.clone(),
                },
            ];
            if let Some(link) = vlan_link {
                steps.extend([
                    HostStep::AddVlanLink {
                        name: link.name.clone(),
                        parent: link.parent.clone(),
                        vlan_id: link.vlan_id,
                    },
                    HostStep::SetMaster {
                        name: link.name.clone(),
                        master: bridge.clone(),
                    },
                    HostStep::SetUp {
                        name: link.name.clone(),
                    },
                ]);
            }
            steps
        }
        NetworkAction::DeleteNetwork { bridge, vlan_link } => {
            let mut steps: Vec<HostStep> = vlan_link
                .iter()
                .map(|name| HostStep::DeleteLink { name: name.clone() })
                .collect();
            steps.push(HostStep::DeleteLink {
                name: bridge.clone(),
            });
            steps
        }
        NetworkAction::EnsureTap { tap, bridge } => vec![
            HostStep::AddTap { name: tap.clone() },
            HostStep::SetMaster {
                name: tap.clone(),
                master: bridge.clone(),
            },
            HostStep::SetUp { name: tap.clone() },
        ],
        NetworkAction::DeleteTap { tap } => vec![HostStep::DeleteLink { name: tap.clone() }],
    }
}
