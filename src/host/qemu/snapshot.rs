//! Snapshots of a VM's disks (and memory) on the real host.
//!
//! On a running VM they are QMP work: QEMU 7.2's snapshot jobs
//! (`snapshot-save`, `snapshot-load`, `snapshot-delete`), whose end is
//! awaited on `JOB_STATUS_CHANGE` (bounded by [`SNAPSHOT_JOB_WAIT`]), read
//! with `query-jobs` and dismissed; a snapshot without memory is one
//! `transaction` of internal snapshots, all or none. On a stopped VM they are
//! `qemu-img snapshot` runs, one per disk: a create that fails half-way takes
//! back the tags it made, and a revert checks that every disk has the tag
//! before it reverts any.

use qapi::qmp;
use tokio::sync::broadcast;

use super::{
    QemuHypervisor, img,
    plan::SNAPSHOT_JOB_WAIT,
    qmp::{COMMAND_TIMEOUT, QmpNotice, STATUS_TIMEOUT},
};
use crate::host::{DiskSpec, HostError, HostStep, Outcome};

impl QemuHypervisor {
    /// A snapshot job on a running VM (its planned steps: the command, the
    /// wait, `query-jobs`, `job-dismiss`), or the `transaction` of a
    /// snapshot without memory.
    pub(super) async fn snapshot_on_vm(
        &self,
        vm_id: &str,
        steps: Vec<HostStep>,
    ) -> Result<Outcome, HostError> {
        let client = self.running(vm_id)?.qmp_ready().await;
        let commands = HostStep::qmp_commands(&steps);
        let Some(&(command, arguments)) = commands.first() else {
            return Ok(took(steps));
        };
        let Some(job) = arguments.get("job-id").and_then(|j| j.as_str()) else {
            // The transaction: QEMU applies every action or none.
            client.execute_json(command, arguments).await?;
            return Ok(took(steps));
        };
        // Subscribed before the command: its job may end before the reply is read.
        let mut notices = client.notices();
        client.execute_json(command, arguments).await?;
        let concluded = tokio::time::timeout(SNAPSHOT_JOB_WAIT, async {
            loop {
                match notices.recv().await {
                    Ok(QmpNotice::Event(event)) => {
                        if let qmp::Event::JOB_STATUS_CHANGE { data, .. } = event.as_ref()
                            && data.id == job
                            && data.status == qmp::JobStatus::concluded
                        {
                            return Ok(());
                        }
                    }
                    Ok(QmpNotice::Closed) | Err(broadcast::error::RecvError::Closed) => {
                        return Err(HostError::Failed(format!(
                            "QEMU of VM {vm_id} closed QMP while its {command} job ran"
                        )));
                    }
                    // Events were dropped: ask QEMU whether the job ended.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if job_info(&client, job)
                            .await?
                            .is_some_and(|j| j.status == qmp::JobStatus::concluded)
                        {
                            return Ok(());
                        }
                    }
                }
            }
        })
        .await;
        match concluded {
            Err(_) => {
                return Err(HostError::Timeout(format!(
                    "QMP {command} job {job} did not conclude within {SNAPSHOT_JOB_WAIT:?}"
                )));
            }
            Ok(result) => result?,
        }
        let error = job_info(&client, job).await?.and_then(|j| j.error);
        client
            .execute(qmp::job_dismiss { id: job.into() }, COMMAND_TIMEOUT)
            .await?;
        match error {
            Some(e) => Err(HostError::Failed(format!("QMP {command}: {e}"))),
            None => Ok(took(steps)),
        }
    }

    /// `qemu-img snapshot -c` on every disk; a failure deletes the tags made so far.
    pub(super) async fn create_snapshot_offline(
        &self,
        disks: &[DiskSpec],
        tag: &str,
        steps: Vec<HostStep>,
    ) -> Result<Outcome, HostError> {
        for (done, disk) in disks.iter().enumerate() {
            let argv =
                img::snapshot_argv(&self.options.img_binary, img::SnapshotOp::Create, tag, disk);
            if let Err(e) = img::run(&argv).await {
                for made in &disks[..done] {
                    let undo = img::snapshot_argv(
                        &self.options.img_binary,
                        img::SnapshotOp::Delete,
                        tag,
                        made,
                    );
                    if let Err(undo) = img::run(&undo).await {
                        tracing::warn!(error = %undo, "taking back a half-made snapshot");
                    }
                }
                return Err(e);
            }
        }
        Ok(took(steps))
    }

    /// `qemu-img snapshot -a` on every disk, once each is seen to have the tag.
    pub(super) async fn restore_snapshot_offline(
        &self,
        disks: &[DiskSpec],
        tag: &str,
        steps: Vec<HostStep>,
    ) -> Result<Outcome, HostError> {
        for disk in disks {
            if !self.has_snapshot(disk, tag).await? {
                return Err(HostError::Failed(format!(
                    "{} has no internal snapshot {tag}: no disk was reverted",
                    disk.path.display()
                )));
            }
        }
        for step in &steps {
            if let HostStep::Exec { argv } = step {
                img::run(argv).await?;
            }
        }
        Ok(took(steps))
    }

    /// `qemu-img snapshot -d` on each disk that has the tag; the steps taken.
    pub(super) async fn delete_snapshot_offline(
        &self,
        disks: &[DiskSpec],
        tag: &str,
    ) -> Result<Outcome, HostError> {
        let mut steps = Vec::new();
        for disk in disks {
            if self.has_snapshot(disk, tag).await? {
                let argv = img::snapshot_argv(
                    &self.options.img_binary,
                    img::SnapshotOp::Delete,
                    tag,
                    disk,
                );
                img::run(&argv).await?;
                steps.push(HostStep::Exec { argv });
            }
        }
        Ok(took(steps))
    }

    async fn has_snapshot(&self, disk: &DiskSpec, tag: &str) -> Result<bool, HostError> {
        let info = img::info(&self.options.img_binary, &disk.path).await?;
        Ok(info.snapshots.iter().any(|s| s.name == tag))
    }
}

/// What `query-jobs` says of one job (None: QEMU has no such job).
async fn job_info(
    qmp: &super::qmp::QmpClient,
    job: &str,
) -> Result<Option<qmp::JobInfo>, HostError> {
    let jobs = qmp.execute(qmp::query_jobs {}, STATUS_TIMEOUT).await?;
    Ok(jobs.into_iter().find(|j| j.id == job))
}

fn took(steps: Vec<HostStep>) -> Outcome {
    Outcome {
        steps,
        ..Default::default()
    }
}
