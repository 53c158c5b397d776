//! Dry-run ports: they compute the same plan a real port would follow and
//! record it, touching nothing. They back `--dry-run`, `dryRun: true` and the
//! logic tests; no host feature is tested on them alone.

use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    HostError, HostNetwork, HostStep, Hypervisor, NetworkAction, Outcome, StopRung, VmAction,
};

/// Records every executed action's plan in order.
#[derive(Default)]
pub struct DryRunHypervisor {
    log: Mutex<Vec<HostStep>>,
}

impl DryRunHypervisor {
    /// The steps executed so far (for tests and for `vman serve --dry-run` logs).
    pub fn recorded(&self) -> Vec<HostStep> {
        self.log.lock().expect("dry-run log").clone()
    }
}

/// A plan shaped like the real one, so dry-run output reads like what would happen.
pub fn plan_vm_action(action: &VmAction) -> Vec<HostStep> {
    match action {
        VmAction::Start(spec) => vec![
            HostStep::CreateDir {
                path: spec.run_dir.clone(),
            },
            HostStep::SpawnQemu {
                vm_id: spec.id.clone(),
                argv: vec![
                    "qemu-system-x86_64".into(),
                    "-name".into(),
                    spec.name.clone(),
                ],
            },
            HostStep::Qmp {
                vm_id: spec.id.clone(),
                command: "cont".into(),
                arguments: serde_json::Value::Null,
            },
        ],
        VmAction::Stop { vm_id, request } => {
            let mut steps = Vec::new();
            if !request.force {
                steps.push(HostStep::Qmp {
                    vm_id: vm_id.clone(),
                    command: "system_powerdown".into(),
                    arguments: serde_json::Value::Null,
                });
                steps.push(HostStep::Await {
                    vm_id: vm_id.clone(),
                    event: "SHUTDOWN".into(),
                    timeout_ms: request.timeout_ms,
                });
            }
            steps.push(HostStep::Qmp {
                vm_id: vm_id.clone(),
                command: "quit".into(),
                arguments: serde_json::Value::Null,
            });
            steps
        }
        VmAction::Pause { vm_id } => vec![qmp(vm_id, "stop")],
        VmAction::Resume { vm_id } => vec![qmp(vm_id, "cont")],
        VmAction::Reset { vm_id } => vec![qmp(vm_id, "system_reset")],
        VmAction::CreateDisk(disk) => {
            let mut argv = vec![
                "qemu-img".to_string(),
                "create".into(),
                "-f".into(),
                disk.format.qemu_name().into(),
            ];
            if let Some(base) = &disk.backing {
                argv.extend([
                    "-b".into(),
                    base.display().to_string(),
                    "-F".into(),
                    "qcow2".into(),
                ]);
            }
            argv.extend([disk.path.display().to_string(), disk.size_bytes.to_string()]);
            vec![HostStep::Exec { argv }]
        }
        VmAction::DeleteDisk(disk) => vec![HostStep::RemoveFile {
            path: disk.path.clone(),
        }],
        VmAction::AttachDisk { vm_id, disk } => vec![
            HostStep::Qmp {
                vm_id: vm_id.clone(),
                command: "blockdev-add".into(),
                arguments: serde_json::json!({"node-name": format!("disk-{}", disk.id)}),
            },
            HostStep::Qmp {
                vm_id: vm_id.clone(),
                command: "device_add".into(),
                arguments: serde_json::json!({"driver": "virtio-blk-pci", "id": format!("dev-{}", disk.id)}),
            },
        ],
        VmAction::DetachDisk { vm_id, disk } => vec![
            HostStep::Qmp {
                vm_id: vm_id.clone(),
                command: "device_del".into(),
                arguments: serde_json::json!({"id": format!("dev-{}", disk.id)}),
            },
            HostStep::Await {
                vm_id: vm_id.clone(),
                event: "DEVICE_DELETED".into(),
                timeout_ms: 10_000,
            },
            HostStep::Qmp {
                vm_id: vm_id.clone(),
                command: "blockdev-del".into(),
                arguments: serde_json::json!({"node-name": format!("disk-{}", disk.id)}),
            },
        ],
        VmAction::Destroy { run_dir, .. } => vec![HostStep::RemoveDir {
            path: run_dir.clone(),
        }],
    }
}

fn qmp(vm_id: &str, command: &str) -> HostStep {
    HostStep::Qmp {
        vm_id: vm_id.to_string(),
        command: command.to_string(),
        arguments: serde_json::Value::Null,
    }
}

#[async_trait]
impl Hypervisor for DryRunHypervisor {
    fn plan(&self, action: &VmAction) -> Vec<HostStep> {
        plan_vm_action(action)
    }

    async fn execute(&self, action: &VmAction) -> Result<Outcome, HostError> {
        let steps = self.plan(action);
        self.log
            .lock()
            .expect("dry-run log")
            .extend(steps.iter().cloned());
        let stop_rung = match action {
            VmAction::Stop { request, .. } => Some(if request.force {
                StopRung::Quit
            } else {
                StopRung::GuestShutdown
            }),
            _ => None,
        };
        Ok(Outcome { steps, stop_rung })
    }

    fn is_dry_run(&self) -> bool {
        true
    }
}

#[derive(Default)]
pub struct DryRunNetwork {
    log: Mutex<Vec<HostStep>>,
}

pub fn plan_network_action(action: &NetworkAction) -> Vec<HostStep> {
    match action {
        NetworkAction::CreateNetwork { bridge } => vec![HostStep::AddBridge {
            name: bridge.clone(),
        }],
        NetworkAction::DeleteNetwork { bridge } => vec![HostStep::DeleteBridge {
            name: bridge.clone(),
        }],
    }
}

#[async_trait]
impl HostNetwork for DryRunNetwork {
    fn plan(&self, action: &NetworkAction) -> Vec<HostStep> {
        plan_network_action(action)
    }

    async fn execute(&self, action: &NetworkAction) -> Result<Outcome, HostError> {
        let steps = self.plan(action);
        self.log
            .lock()
            .expect("dry-run log")
            .extend(steps.iter().cloned());
        Ok(Outcome {
            steps,
            stop_rung: None,
        })
    }
}
