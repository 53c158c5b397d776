//! Hot-plug on a running VM: runs the QMP sequences of [`super::hotplug`]
//! on the VM's connection, finds a root port QEMU accepts and waits for the
//! guest to let go of what it unplugs.
//!
//! A failed plug takes back what it added (block nodes, netdev), so the next
//! try starts clean. An unplug never deletes a backend the guest may still
//! use: the release waits for `DEVICE_DELETED` or QEMU's exit, and a guest
//! slower than [`DETACH_WAIT`] leaves the detach pending, never forced.

use std::time::Duration;

use super::{QemuHypervisor, argv, hotplug, plan::DETACH_WAIT, qmp::QmpClient, running::RunningVm};
use crate::host::{DiskSpec, HostError, HostStep, NicSpec, Outcome};

impl QemuHypervisor {
    pub(super) async fn attach_disk(
        &self,
        vm_id: &str,
        disk: &DiskSpec,
    ) -> Result<Outcome, HostError> {
        let vm = self.running(vm_id)?;
        let (_, release) = hotplug::detach_disk(vm_id, disk);
        // The block nodes first (all steps but the device), then the device.
        plug_on_free_port(
            &vm,
            |port| hotplug::attach_disk(vm_id, disk, port),
            |steps| steps.len() - 1,
            &release,
        )
        .await
    }

    pub(super) async fn detach_disk(
        &self,
        vm_id: &str,
        disk: &DiskSpec,
    ) -> Result<Outcome, HostError> {
        let vm = self.running(vm_id)?;
        let (unplug, release) = hotplug::detach_disk(vm_id, disk);
        unplug_and_release(&vm, unplug, &argv::device_id(&disk.id), release).await
    }

    /// Like [`Self::attach_disk`]: the netdev once, then the device on the
    /// first root port QEMU accepts; a failure takes the netdev back.
    pub(super) async fn attach_nic(
        &self,
        vm_id: &str,
        nic: &NicSpec,
    ) -> Result<Outcome, HostError> {
        let vm = self.running(vm_id)?;
        let (_, release) = hotplug::detach_nic(vm_id, nic);
        plug_on_free_port(
            &vm,
            |port| hotplug::attach_nic(vm_id, nic, port),
            |_| 1,
            &release,
        )
        .await
    }

    /// Like [`Self::detach_disk`]: a guest that has not let go within the
    /// wait leaves the detach pending (finished by
    /// [`crate::host::Hypervisor::finish_detach_nic`]).
    pub(super) async fn detach_nic(
        &self,
        vm_id: &str,
        nic: &NicSpec,
    ) -> Result<Outcome, HostError> {
        let vm = self.running(vm_id)?;
        let (unplug, release) = hotplug::detach_nic(vm_id, nic);
        unplug_and_release(&vm, unplug, &argv::nic_device_id(&nic.id), release).await
    }

    /// Finishes a disk detach left pending ([`crate::host::Hypervisor::finish_detach`]).
    pub(super) async fn finish_detach_disk(
        &self,
        vm_id: &str,
        disk: &DiskSpec,
    ) -> Result<(), HostError> {
        let (_, release) = hotplug::detach_disk(vm_id, disk);
        let device = argv::device_id(&disk.id);
        self.finish_unplug(vm_id, &device, &release).await
    }

    /// Finishes a NIC detach left pending ([`crate::host::Hypervisor::finish_detach_nic`]).
    pub(super) async fn finish_detach_nic(
        &self,
        vm_id: &str,
        nic: &NicSpec,
    ) -> Result<(), HostError> {
        let (_, release) = hotplug::detach_nic(vm_id, nic);
        let device = argv::nic_device_id(&nic.id);
        self.finish_unplug(vm_id, &device, &release).await
    }

    /// The end of a detach left pending: waits for the guest to let go of
    /// `device` (bounded by the VM's life: an exit ends the wait too), then
    /// releases its backend. A VM vman no longer tracks took it along.
    async fn finish_unplug(
        &self,
        vm_id: &str,
        device: &str,
        release: &[HostStep],
    ) -> Result<(), HostError> {
        let Some(vm) = self.get(vm_id) else {
            return Ok(());
        };
        while !vm.released(device, Duration::from_secs(3600)).await {}
        release_backend(&vm, release).await
    }
}

/// Unplugs `device` and, once the guest has let go, releases its backend
/// (block nodes, netdev): the steps taken, or the detach left pending.
async fn unplug_and_release(
    vm: &RunningVm,
    unplug: Vec<HostStep>,
    device: &str,
    release: Vec<HostStep>,
) -> Result<Outcome, HostError> {
    if !unplug_device(vm, &unplug, device).await? {
        return Ok(Outcome {
            steps: unplug,
            detach_pending: true,
            ..Default::default()
        });
    }
    release_backend(vm, &release).await?;
    let mut steps = unplug;
    steps.extend(release);
    Ok(Outcome {
        steps,
        ..Default::default()
    })
}

/// Deletes a released device's backend, unless QEMU has exited (and taken it along).
async fn release_backend(vm: &RunningVm, release: &[HostStep]) -> Result<(), HostError> {
    if vm.seen.lock().expect("vm watch").exited.is_none() {
        vm.qmp_ready().await.run_steps(release).await?;
    }
    Ok(())
}

/// Asks QEMU to unplug a device (`device_del`) and waits up to
/// [`DETACH_WAIT`] for the guest to let go (`DEVICE_DELETED`, or QEMU's exit).
/// False: the guest has not let go yet, the detach is pending.
async fn unplug_device(
    vm: &RunningVm,
    unplug: &[HostStep],
    device: &str,
) -> Result<bool, HostError> {
    vm.qmp_ready().await.run_steps(unplug).await?;
    Ok(vm.released(device, DETACH_WAIT).await)
}

/// Hot-plugs a device on the first root port QEMU accepts. The port is found
/// by trying: QEMU knows which are taken, even for a VM vman adopted after a
/// restart. `steps(port)` plans the plug; its first `backend(..)` steps (block
/// nodes, a netdev) run once, the rest (the device) on each port tried. Any
/// failure runs `release` (best effort) to take the backend back.
///
/// The first try runs the backend and the device as one batch
/// ([`QmpClient::execute_all`]): one task and one timeout, no hand-back to
/// this caller between them. QEMU runs them in order, so a device whose
/// backend failed fails too, and the backend's own error is the one reported.
async fn plug_on_free_port(
    vm: &RunningVm,
    steps: impl Fn(&str) -> Vec<HostStep>,
    backend: impl Fn(&[HostStep]) -> usize,
    release: &[HostStep],
) -> Result<Outcome, HostError> {
    let mut last_error = None;
    for port in 1..=vm.ports {
        let planned = steps(&argv::root_port_id(port));
        let (backend_steps, device) = planned.split_at(backend(&planned));
        let outcome = match port {
            1 => {
                let commands = HostStep::qmp_commands(&planned);
                let mut replies = vm
                    .qmp_ready()
                    .await
                    .execute_all(&commands)
                    .await?
                    .into_iter();
                let backend_failed = replies
                    .by_ref()
                    .take(backend_steps.len())
                    .find_map(Result::err);
                if let Some(e) = backend_failed {
                    release_quietly(&*vm.qmp_ready().await, &vm.vm_id, release).await;
                    return Err(e);
                }
                replies.find_map(Result::err).map_or(Ok(()), Err)
            }
            _ => vm.qmp_ready().await.run_steps(device).await,
        };
        match outcome {
            Ok(()) => {
                return Ok(Outcome {
                    steps: planned,
                    ..Default::default()
                });
            }
            Err(HostError::Failed(message))
                if message.contains("in use")
                    || message.contains("not available")
                    || message.contains("occupied") =>
            {
                last_error = Some(message);
            }
            Err(e) => {
                release_quietly(&*vm.qmp_ready().await, &vm.vm_id, release).await;
                return Err(e);
            }
        }
    }
    release_quietly(&*vm.qmp_ready().await, &vm.vm_id, release).await;
    Err(HostError::Failed(format!(
        "no free hot-plug port on VM {} ({} ports): {}",
        vm.vm_id,
        vm.ports,
        last_error.unwrap_or_default()
    )))
}

/// Best effort: takes back the backend (block nodes, netdev) of a device
/// whose `device_add` failed.
async fn release_quietly(qmp: &QmpClient, vm_id: &str, release: &[HostStep]) {
    for step in release {
        if let HostStep::Qmp {
            command, arguments, ..
        } = step
            && let Err(e) = qmp.execute_json(command, arguments).await
        {
            tracing::warn!(vm = vm_id, error = %e, "releasing a failed hot-plug's backend");
        }
    }
}
