//! The sweep's first stage: everything one sweep judges, read at one time.
//! It reads the database once and asks the host through its ports (every VM
//! at once, each probe bounded by `observer.probe_timeout`; disk files a few
//! at a time; one listing each of `run/`, `storage/` and `storage/images/`;
//! one read of the links). It decides nothing and writes nothing: which VMs
//! and disks are worth asking about is the judge's rule, applied here only to
//! spare the host the questions.
//!
//! [`still_unclaimed`] reads the rows again just before anything is written,
//! so that what changed hands meanwhile is not taken for drift.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::Duration,
};

use futures_util::{StreamExt, stream};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter};

use super::judge::{self, Drift};
use crate::{
    context::Ctx,
    disk::{self, Disk},
    error::ApiResult,
    host::{DiskSeen, FileSeen, LinkSeen, OrphanSeen, ProbeTarget, VmProbe},
    image,
    network::{self, Network, Nic},
    operation::{OperationKind, OperationStatus, SubjectType, model as operations},
    vm::{self, Vm},
};

/// How many VMs are probed at the same time.
const PROBES_IN_FLIGHT: usize = 64;
/// How many disk files are read at the same time (a changed qcow2 runs qemu-img).
const DISK_READS_IN_FLIGHT: usize = 8;

/// What the database says, read at one time.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub vms: Vec<Vm>,
    pub disks: Vec<Disk>,
    pub networks: Vec<Network>,
    pub nics: Vec<Nic>,
    /// The images' ids.
    pub images: HashSet<String>,
    /// Targets of operations still running.
    pub busy: HashSet<String>,
    /// Kinds of operations still running (`CREATE_VM`, …).
    pub busy_kinds: HashSet<OperationKind>,
    /// The VMs' snapshots (compared with their disks' internal snapshots).
    pub snapshots: Vec<crate::snapshot::Snapshot>,
}

/// A disk's file as the host showed it.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskFile {
    pub path: PathBuf,
    pub seen: DiskSeen,
}

/// One directory's entries.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    pub dir: PathBuf,
    pub entries: Vec<FileSeen>,
}

/// What storage holds.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageSeen {
    /// `storage/`: the disks' files (`<disk-id>.<format>`), and `images/`.
    pub disks: Listing,
    /// `storage/images/`: the images' files (`<image-id>`).
    pub images: Listing,
}

/// Everything one sweep judges.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub rows: Rows,
    /// The VMs a mutation's lock held when the rows were read.
    pub locked: HashSet<String>,
    /// What the host showed of each VM probed in time (by VM id). A VM the
    /// sweep leaves alone is not probed.
    pub probes: HashMap<String, VmProbe>,
    /// Each disk file read (by disk id); a port that cannot tell reads none.
    pub disk_files: HashMap<String, DiskFile>,
    /// Run directories that belong to no VM of `rows`.
    pub orphans: Vec<OrphanSeen>,
    /// The host's links by name (None: they could not be read in time).
    pub links: Option<HashMap<String, LinkSeen>>,
    /// Storage's files (None: the port cannot tell, as in a dry run).
    pub storage: Option<StorageSeen>,
    /// How long a probe waited on QMP (`observer.probe_timeout`).
    pub probe_timeout: Duration,
}

/// Reads the rows the sweep compares: this host's VMs and their disks, the
/// disks no VM has and the images whose files are in this host's storage
/// (theirs, and those from before hosts, whose `host_id` is null). The
/// other hosts' are their nodes' to judge: their files are not here.
pub async fn rows(app: &Ctx) -> ApiResult<Rows> {
    let vms = vm::model::Entity::find()
        .filter(vm::model::Column::HostId.eq(&*app.host_id))
        .all(&app.db)
        .await?;
    let local: HashSet<&str> = vms.iter().map(|vm| vm.id.as_str()).collect();
    // Attached disks are judged with their VM (kept below when it is
    // this host's); unattached ones by where their files are.
    let disks = disk::model::Entity::find()
        .filter(
            Condition::any()
                .add(disk::model::Column::HostId.eq(&*app.host_id))
                .add(disk::model::Column::HostId.is_null())
                .add(disk::model::Column::VmId.is_not_null()),
        )
        .all(&app.db)
        .await?
        .into_iter()
        .filter(|d| d.vm_id.as_deref().is_none_or(|vm| local.contains(vm)))
        .collect();
    // The networks whose bridge is made on this host.
    let networks = network::made_on_host(&app.db, &app.host_id).await?;
    let nics = network::model::nic::Entity::find().all(&app.db).await?;
    let images = image::model::Entity::find()
        .filter(
            Condition::any()
                .add(image::model::Column::HostId.eq(&*app.host_id))
                .add(image::model::Column::HostId.is_null()),
        )
        .all(&app.db)
        .await?
        .into_iter()
        .map(|image| image.id)
        .collect();
    let in_flight = operations::Entity::find()
        .filter(
            operations::Column::Status.is_in([OperationStatus::Pending, OperationStatus::Running]),
        )
        .all(&app.db)
        .await?;
    let snapshots = crate::snapshot::model::Entity::find().all(&app.db).await?;
    let busy_kinds = in_flight.iter().map(|op| op.kind).collect();
    let busy = in_flight.into_iter().map(|op| op.target_id).collect();
    Ok(Rows {
        vms,
        disks,
        networks,
        nics,
        images,
        busy,
        busy_kinds,
        snapshots,
    })
}

/// Reads the database, then asks the host about what it holds.
pub async fn take(app: &Ctx) -> ApiResult<Snapshot> {
    let timeout = app.config.observer.probe_timeout;
    let rows = rows(app).await?;
    let locked: HashSet<String> = rows
        .vms
        .iter()
        .filter(|vm| app.locks.holder(&vm.id).is_some())
        .map(|vm| vm.id.clone())
        .collect();

    // VMs: every probe at once, each bounded.
    let targets: Vec<ProbeTarget> = rows
        .vms
        .iter()
        .filter(|vm| !judge::leaves_alone(&rows, &locked, vm))
        .map(|vm| ProbeTarget {
            vm_id: vm.id.clone(),
            run_dir: vm::run_dir(app, &vm.id),
        })
        .collect();
    let hypervisor = app.hypervisor.clone();
    let probes: HashMap<String, VmProbe> = stream::iter(targets)
        .map(move |target: ProbeTarget| {
            let hypervisor = hypervisor.clone();
            async move {
                // Two QMP round trips at most, each bounded by `timeout`; a
                // probe stuck past that (a hung /proc read, say) tells
                // nothing, and its VM is left for the next sweep.
                let probe = tokio::time::timeout(timeout * 3, hypervisor.probe(&target, timeout))
                    .await
                    .ok();
                (target.vm_id, probe)
            }
        })
        .buffer_unordered(PROBES_IN_FLIGHT)
        .filter_map(|(id, probe)| async move { Some((id, probe?)) })
        .collect()
        .await;

    // Disk files, but not those of a disk or VM the sweep leaves alone.
    let left_alone = judge::vms_left_alone(&rows, &locked);
    let specs: Vec<(String, crate::host::DiskSpec)> = rows
        .disks
        .iter()
        .filter(|d| judge::reads_file(&rows, &left_alone, d))
        .map(|d| (d.id.clone(), disk::spec(app, d)))
        .collect();
    let hypervisor = app.hypervisor.clone();
    let disk_files: HashMap<String, DiskFile> = stream::iter(specs)
        .map(move |(id, spec)| {
            let hypervisor = hypervisor.clone();
            async move {
                let seen = hypervisor.inspect_disk(&spec).await;
                (id, spec.path, seen)
            }
        })
        .buffer_unordered(DISK_READS_IN_FLIGHT)
        .filter_map(|(id, path, seen)| async move { Some((id, DiskFile { path, seen: seen? })) })
        .collect()
        .await;

    // Run directories nobody owns.
    let known: HashSet<String> = rows.vms.iter().map(|vm| vm.id.clone()).collect();
    let orphans = app.hypervisor.orphans(&app.config.run_dir(), &known).await;

    // Bridges and taps: one read of the host's links.
    let links = match tokio::time::timeout(timeout * 3, app.network.links()).await {
        Ok(Ok(links)) => Some(links),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "coherence sweep: reading the host's links");
            None
        }
        Err(_) => {
            tracing::warn!("coherence sweep: reading the host's links timed out");
            None
        }
    };

    // Storage: one listing of it, one of its images.
    let storage_dir = app.config.storage_dir();
    // Where `image::path` puts every image.
    let images_dir = storage_dir.join("images");
    let storage = match (
        app.hypervisor.list_dir(&storage_dir).await,
        app.hypervisor.list_dir(&images_dir).await,
    ) {
        (Some(disks), Some(images)) => Some(StorageSeen {
            disks: Listing {
                dir: storage_dir,
                entries: disks,
            },
            images: Listing {
                dir: images_dir,
                entries: images,
            },
        }),
        (None, _) | (_, None) => None,
    };

    Ok(Snapshot {
        rows,
        locked,
        probes,
        disk_files,
        orphans,
        links,
        storage,
        probe_timeout: timeout,
    })
}

/// The drifts still unclaimed now: what changed hands since the snapshot (a
/// deleteNetwork, a detachNic, a deleteDisk that began meanwhile) is not
/// drift. Checked just before any repair touches the host; the subjects set
/// aside go to `withdrawn`.
pub async fn still_unclaimed(
    app: &Ctx,
    drifts: Vec<Drift>,
    withdrawn: &mut HashSet<String>,
) -> ApiResult<Vec<Drift>> {
    // Run directories belong to no row and no operation: nothing to re-read.
    if drifts
        .iter()
        .all(|d| d.finding.subject_type == SubjectType::RunDir)
    {
        return Ok(drifts);
    }
    let now = rows(app).await?;
    let held: HashSet<String> = drifts
        .iter()
        .flat_map(|d| [Some(&d.finding.subject_id), d.finding.vm_id.as_ref()])
        .flatten()
        .filter(|id| app.locks.holder(id).is_some())
        .cloned()
        .collect();
    let judged = judge::still_unclaimed(drifts, &now, &held);
    withdrawn.extend(judged.withdrawn);
    Ok(judged.kept)
}
