//! Carrying out a [`VmAction`] on the real host: one function per action.
//!
//! The dispatch only picks the function; it decides nothing, so a new action
//! is a new arm and a new function, and the compiler lists the arm. Most
//! functions report their [`plan`] as the steps taken. Stop, attach and
//! detach report what they did instead: the stop rung that worked, the root
//! port QEMU accepted, a detach left pending before its release.

use std::{path::Path, sync::Arc};

use super::{QemuHypervisor, download, files, img, plan};
use crate::host::{DiskSpec, HostError, HostStep, Outcome, VmAction};

impl QemuHypervisor {
    /// Carries out `action`. A failure of an action that writes files, for
    /// want of space where it writes, is [`HostError::NoSpace`] naming that
    /// directory (see [`files::no_space`]).
    pub(super) async fn execute(self: &Arc<Self>, action: &VmAction) -> Result<Outcome, HostError> {
        self.execute_reporting(action, &|_, _| {}).await
    }

    /// [`Self::execute`], reporting the fraction done of a long action.
    pub(super) async fn execute_reporting(
        self: &Arc<Self>,
        action: &VmAction,
        report: &crate::host::Report<'_>,
    ) -> Result<Outcome, HostError> {
        let done = self.dispatch(action, report).await;
        match writes_under(action) {
            Some(dir) => done.map_err(|e| files::no_space(dir, e)),
            None => done,
        }
    }

    async fn dispatch(
        self: &Arc<Self>,
        action: &VmAction,
        report: &crate::host::Report<'_>,
    ) -> Result<Outcome, HostError> {
        let planned = || plan(&self.options, action);
        match action {
            VmAction::Start(spec) => self.start(spec, planned()).await,
            VmAction::Stop { vm_id, request } => self.stop(vm_id, request).await,
            VmAction::Pause { vm_id } | VmAction::Resume { vm_id } | VmAction::Reset { vm_id } => {
                self.run_on_vm(vm_id, planned()).await
            }
            VmAction::CreateDisk(disk) => create_disk(disk, planned()).await,
            VmAction::DeleteDisk(disk) => self.delete_disk(disk, planned()),
            VmAction::DeleteImage { path } => {
                files::delete_file(path)?;
                Ok(took(planned()))
            }
            VmAction::AttachDisk { vm_id, disk } => self.attach_disk(vm_id, disk).await,
            VmAction::DetachDisk { vm_id, disk } => self.detach_disk(vm_id, disk).await,
            VmAction::AttachNic { vm_id, nic } => self.attach_nic(vm_id, nic).await,
            VmAction::DetachNic { vm_id, nic } => self.detach_nic(vm_id, nic).await,
            VmAction::ChangeMedium { vm_id, .. } => self.run_on_vm(vm_id, planned()).await,
            VmAction::Destroy { vm_id, run_dir } => self.destroy(vm_id, run_dir, planned()),
            VmAction::ResizeDisk { running_vm, .. } => {
                self.resize_disk(running_vm.as_deref(), planned()).await
            }
            VmAction::InspectImage { source, disk } => {
                self.inspect_image(source, *disk, planned()).await
            }
            VmAction::ImportImage { source, dest, disk } => {
                self.import_image(source, dest, *disk, planned()).await
            }
            VmAction::DownloadImage {
                url,
                sha256,
                dest,
                disk,
                limits,
            } => {
                let image =
                    download::fetch(&self.options, url, sha256, dest, *disk, limits, report)
                        .await?;
                Ok(Outcome {
                    steps: planned(),
                    image: Some(image),
                    ..Default::default()
                })
            }
            VmAction::CreateSnapshot {
                running_vm: Some(vm_id),
                ..
            }
            | VmAction::RestoreSnapshot {
                running_vm: Some(vm_id),
                ..
            }
            | VmAction::DeleteSnapshot {
                running_vm: Some(vm_id),
                ..
            } => self.snapshot_on_vm(vm_id, planned()).await,
            VmAction::CreateSnapshot {
                running_vm: None,
                disks,
                tag,
                ..
            } => self.create_snapshot_offline(disks, tag, planned()).await,
            VmAction::RestoreSnapshot {
                running_vm: None,
                disks,
                tag,
            } => self.restore_snapshot_offline(disks, tag, planned()).await,
            VmAction::DeleteSnapshot {
                running_vm: None,
                disks,
                tag,
            } => self.delete_snapshot_offline(disks, tag).await,
            VmAction::CopyDisk { to, .. } => {
                let steps = planned();
                files::copy_disk(&steps, to, &|fraction| report(fraction, 0)).await?;
                Ok(took(steps))
            }
            VmAction::MoveFile {
                from,
                to,
                read_only,
            } => {
                files::move_file(from, to, *read_only)?;
                Ok(took(planned()))
            }
        }
    }

    /// Pause, resume and reset: the planned QMP commands, on a VM that runs.
    async fn run_on_vm(&self, vm_id: &str, steps: Vec<HostStep>) -> Result<Outcome, HostError> {
        self.running(vm_id)?
            .qmp_ready()
            .await
            .run_steps(&steps)
            .await?;
        Ok(took(steps))
    }

    fn delete_disk(&self, disk: &DiskSpec, steps: Vec<HostStep>) -> Result<Outcome, HostError> {
        self.disk_infos
            .lock()
            .expect("disk infos")
            .remove(&disk.path);
        files::delete_disk(disk)?;
        Ok(took(steps))
    }

    /// `block_resize` on the VM that has the disk open, `qemu-img resize` otherwise.
    async fn resize_disk(
        &self,
        running_vm: Option<&str>,
        steps: Vec<HostStep>,
    ) -> Result<Outcome, HostError> {
        match running_vm {
            Some(vm_id) => {
                self.running(vm_id)?
                    .qmp_ready()
                    .await
                    .run_steps(&steps)
                    .await?
            }
            None => {
                for step in &steps {
                    if let HostStep::Exec { argv } = step {
                        img::run(argv).await?;
                    }
                }
            }
        }
        Ok(took(steps))
    }

    /// Removes what a stopped VM left; refused while its QEMU runs.
    fn destroy(
        &self,
        vm_id: &str,
        run_dir: &Path,
        steps: Vec<HostStep>,
    ) -> Result<Outcome, HostError> {
        if self.get(vm_id).is_some() {
            return Err(HostError::Failed(format!(
                "VM {vm_id} still runs; stop it first"
            )));
        }
        self.exited.lock().expect("exits").remove(vm_id);
        files::remove_run_dir(run_dir)?;
        Ok(took(steps))
    }

    async fn inspect_image(
        &self,
        source: &Path,
        disk: bool,
        steps: Vec<HostStep>,
    ) -> Result<Outcome, HostError> {
        let image = files::inspect_image(&self.options, source, disk).await?;
        Ok(Outcome {
            steps,
            image: Some(image),
            ..Default::default()
        })
    }

    async fn import_image(
        &self,
        source: &Path,
        dest: &Path,
        disk: bool,
        steps: Vec<HostStep>,
    ) -> Result<Outcome, HostError> {
        let image = files::import_image(&self.options, source, dest, disk).await?;
        Ok(Outcome {
            steps,
            image: Some(image),
            ..Default::default()
        })
    }
}

async fn create_disk(disk: &DiskSpec, steps: Vec<HostStep>) -> Result<Outcome, HostError> {
    files::create_disk(&steps, disk).await?;
    Ok(took(steps))
}

/// The directory an action writes new data under: its failures may be for
/// want of space there. Removals, QMP commands and reads write nothing.
fn writes_under(action: &VmAction) -> Option<&Path> {
    match action {
        VmAction::Start(spec) => Some(&spec.run_dir),
        VmAction::CreateDisk(disk) | VmAction::ResizeDisk { disk, .. } => disk.path.parent(),
        VmAction::ImportImage { dest, .. } | VmAction::DownloadImage { dest, .. } => dest.parent(),
        // A snapshot writes into the disks' files (memory into the first).
        VmAction::CreateSnapshot { disks, .. } => disks.first().and_then(|d| d.path.parent()),
        VmAction::CopyDisk { to, .. } => to.path.parent(),
        VmAction::Stop { .. }
        | VmAction::Pause { .. }
        | VmAction::Resume { .. }
        | VmAction::Reset { .. }
        | VmAction::DeleteDisk(_)
        | VmAction::DeleteImage { .. }
        | VmAction::AttachDisk { .. }
        | VmAction::DetachDisk { .. }
        | VmAction::AttachNic { .. }
        | VmAction::ChangeMedium { .. }
        | VmAction::DetachNic { .. }
        | VmAction::Destroy { .. }
        | VmAction::InspectImage { .. }
        | VmAction::RestoreSnapshot { .. }
        | VmAction::DeleteSnapshot { .. }
        | VmAction::MoveFile { .. } => None,
    }
}

/// The outcome of an action that took exactly its steps and reports nothing else.
fn took(steps: Vec<HostStep>) -> Outcome {
    Outcome {
        steps,
        ..Default::default()
    }
}
