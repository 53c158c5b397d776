//! Failure paths below HTTP: every mutation with host steps is run with
//! each of its host actions failing in turn (`common::failing`: the Nth
//! `execute` of either port fails), then once without a failure. A failure
//! must answer HOST_ERROR, record the operation FAILED at that step, and
//! leave the rows, the files in storage, the taps and the QEMU processes as
//! they were; where a mutation is not all-or-nothing by design, its test
//! says so and checks what it promises instead.
//!
//! Hypervisor steps run real QEMU (no guest OS) and qemu-img. Network steps
//! run real netlink in a namespace of the test's own (`common::netns`).

mod common;

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use common::{TestServer, accel, failing::ctx_failing_at, netns};
use sea_orm::EntityTrait;
use vman::{
    context::Ctx,
    disk::{self, CreateDisk, DiskFormat},
    error::ApiResult,
    host::StopRequest,
    image::{self, ImageKind, ImportImage, ImportSource},
    network::{self, CreateNetwork, nic::AttachNic},
    operation::{Change, Operation, OperationStatus},
    vm::{self, CreateVm, Lifecycle, VmState},
};

/// Real QEMU and qemu-img; a soft restart's stop gives up on the (absent)
/// guest quickly.
async fn real_server() -> TestServer {
    TestServer::start_with(|c| {
        c.dry_run = false;
        c.qemu.accel = accel();
        c.qemu.stop_timeout = Duration::from_millis(300);
    })
    .await
}

/// What a failed mutation must leave as it was.
#[derive(Debug, Clone, PartialEq)]
struct World {
    /// (id, state)
    vms: Vec<(String, VmState)>,
    /// (id, vm, attachment, size)
    disks: Vec<(String, Option<String>, String, i64)>,
    /// (id, attachment)
    nics: Vec<(String, String)>,
    networks: Vec<String>,
    images: Vec<String>,
    /// Files under storage/ (images/ included), with their lengths.
    files: BTreeSet<(PathBuf, u64)>,
    /// (vm, pid) of every live QEMU under the run directory.
    qemus: BTreeSet<(String, i32)>,
    /// The namespace's links (only inside a test's own namespace).
    links: Option<Vec<String>>,
}

async fn world(server: &TestServer, with_links: bool) -> World {
    let ctx = &server.app.ctx;
    let db = &ctx.db;
    let mut vms: Vec<_> = vm::model::Entity::find()
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.id, v.state))
        .collect();
    vms.sort_by(|a, b| a.0.cmp(&b.0));
    let mut disks: Vec<_> = disk::model::Entity::find()
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.id, d.vm_id, format!("{:?}", d.attachment), d.size_bytes))
        .collect();
    disks.sort();
    let mut nics: Vec<_> = network::model::nic::Entity::find()
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.id, format!("{:?}", n.attachment)))
        .collect();
    nics.sort();
    let mut networks: Vec<_> = network::model::Entity::find()
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    networks.sort();
    let mut images: Vec<_> = image::model::Entity::find()
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    images.sort();
    World {
        vms,
        disks,
        nics,
        networks,
        images,
        files: storage_files(server),
        qemus: live_qemus(server),
        links: with_links.then(netns::link_names),
    }
}

fn storage_files(server: &TestServer) -> BTreeSet<(PathBuf, u64)> {
    let storage = server.app.ctx.config.storage_dir();
    let mut files = BTreeSet::new();
    for dir in [storage.clone(), storage.join("images")] {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_file() {
                let path = entry.path().strip_prefix(&storage).unwrap().to_path_buf();
                files.insert((path, meta.len()));
            }
        }
    }
    files
}

fn live_qemus(server: &TestServer) -> BTreeSet<(String, i32)> {
    use vman::host::qemu::process;
    let Ok(entries) = std::fs::read_dir(server.app.ctx.config.run_dir()) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let vm = entry.file_name().to_string_lossy().to_string();
            let pid = process::read_pidfile(&entry.path().join("qemu.pid"))?;
            (process::is_alive(pid) && process::is_qemu_of(pid, &vm)).then_some((vm, pid))
        })
        .collect()
}

async fn operations(server: &TestServer) -> Vec<Operation> {
    vman::operation::model::Entity::find()
        .all(&server.app.ctx.db)
        .await
        .unwrap()
}

/// The one operation recorded since `before`.
async fn new_operation(server: &TestServer, before: &[Operation]) -> Operation {
    let mut new: Vec<Operation> = operations(server)
        .await
        .into_iter()
        .filter(|op| before.iter().all(|b| b.id != op.id))
        .collect();
    assert_eq!(new.len(), 1, "one new operation: {new:#?}");
    new.pop().unwrap()
}

/// Runs `mutation` with its host step `n` failing and checks the failure:
/// HOST_ERROR naming the injected failure, `steps[..n]` executed in order
/// (`steps[n-1]` the one refused), the operation FAILED at that step. The
/// world it leaves is returned for the caller to judge.
async fn fail_at<T>(
    server: &TestServer,
    n: usize,
    steps: &[&str],
    with_links: bool,
    mutation: &impl AsyncFn(&Ctx) -> ApiResult<Change<T>>,
) -> World {
    let step = steps[n - 1];
    let ops = operations(server).await;
    let (ctx, seen) = ctx_failing_at(&server.app.ctx, Some(n));
    let error = match mutation(&ctx).await {
        Ok(_) => panic!("step {n} ({step}) failed, yet the mutation succeeded"),
        Err(e) => e,
    };
    assert_eq!(error.code(), "HOST_ERROR", "step {n} ({step}): {error}");
    assert!(
        error
            .to_string()
            .contains(&format!("injected failure at step {n}")),
        "step {n} ({step}): {error}"
    );
    assert_eq!(seen.names()[..n], steps[..n], "the steps up to the failure");
    let op = new_operation(server, &ops).await;
    assert_eq!(op.status, OperationStatus::Failed, "{op:#?}");
    assert_eq!(op.error_code.as_deref(), Some("HOST_ERROR"), "{op:#?}");
    assert_eq!(op.failed_step.as_deref(), Some(step), "{op:#?}");
    world(server, with_links).await
}

/// An all-or-nothing mutation: failing at each of `steps` in turn leaves
/// the world exactly as it was (and so the same mutation can be tried
/// again); without a failure it takes exactly `steps` and succeeds.
async fn each_step_fails_cleanly<T>(
    server: &TestServer,
    steps: &[&str],
    with_links: bool,
    mutation: impl AsyncFn(&Ctx) -> ApiResult<Change<T>>,
) -> T {
    for n in 1..=steps.len() {
        let before = world(server, with_links).await;
        let after = fail_at(server, n, steps, with_links, &mutation).await;
        assert_eq!(
            after,
            before,
            "failing at step {n} ({}) changed the world",
            steps[n - 1]
        );
    }
    succeeds(server, steps, &mutation).await
}

/// Runs `mutation` without a failure: it takes exactly `steps`.
async fn succeeds<T>(
    server: &TestServer,
    steps: &[&str],
    mutation: &impl AsyncFn(&Ctx) -> ApiResult<Change<T>>,
) -> T {
    let (ctx, seen) = ctx_failing_at(&server.app.ctx, None);
    let done = mutation(&ctx)
        .await
        .unwrap_or_else(|e| panic!("without a failure the mutation succeeds: {e}"));
    assert_eq!(seen.names(), steps, "the mutation's host steps");
    done.object
}

async fn vm_state(server: &TestServer, id: &str) -> VmState {
    vm::model::Entity::find_by_id(id.to_string())
        .one(&server.app.ctx.db)
        .await
        .unwrap()
        .expect("the VM exists")
        .state
}

fn create_vm(name: &str) -> CreateVm {
    CreateVm {
        name: name.into(),
        template_id: None,
        template_name: Some("bare".into()),
        vcpus: None,
        memory_mib: None,
        disk_size_bytes: None,
        description: None,
        tags: None,
        boot_order: None,
        cdrom_image_id: None,
        cloud_init: None,
        host_id: None,
    }
}

fn raw_disk(name: &str) -> CreateDisk {
    CreateDisk {
        name: name.into(),
        size_bytes: 1 << 20,
        format: DiskFormat::Raw,
    }
}

const FORCE: Lifecycle = Lifecycle::Stop(StopRequest {
    force: true,
    timeout_ms: 5_000,
});

#[tokio::test]
async fn creating_a_vm_with_a_root_disk_fails_cleanly_at_its_one_host_step() {
    let server = real_server().await;
    server.create_template("bare").await;
    let created = each_step_fails_cleanly(&server, &["createDisk"], false, async |ctx| {
        vm::create(ctx, create_vm("vm-1"), false).await
    })
    .await;
    assert_eq!(created.state, VmState::Stopped);
    assert_eq!(storage_files(&server).len(), 1, "the root disk's file");
}

#[tokio::test]
async fn a_detached_disk_is_created_resized_and_deleted_all_or_nothing() {
    let server = real_server().await;
    let disk = each_step_fails_cleanly(&server, &["createDisk"], false, async |ctx| {
        disk::create(ctx, raw_disk("data"), false).await
    })
    .await;
    // Cold: qemu-img resize.
    let resized = each_step_fails_cleanly(&server, &["resizeDisk"], false, async |ctx| {
        disk::resize(ctx, &disk.id, 2 << 20, false).await
    })
    .await;
    assert_eq!(resized.size_bytes, 2 << 20);
    each_step_fails_cleanly(&server, &["deleteDisk"], false, async |ctx| {
        disk::delete(ctx, &disk.id, false).await
    })
    .await;
    assert!(storage_files(&server).is_empty());
}

#[tokio::test]
async fn a_disk_hot_plugged_grown_and_unplugged_in_a_running_vm_is_all_or_nothing() {
    let server = real_server().await;
    server.create_template("bare").await;
    let vm = server.create_vm("vm-1", "bare").await;
    server.start_vm(&vm).await;
    let disk = server.create_disk("data", 1 << 20, "RAW").await;
    let attached = each_step_fails_cleanly(&server, &["attachDisk"], false, async |ctx| {
        disk::attach(ctx, &disk, &vm, false).await
    })
    .await;
    assert_eq!(attached.vm_id.as_deref(), Some(vm.as_str()));
    // Hot: block_resize.
    let resized = each_step_fails_cleanly(&server, &["resizeDisk"], false, async |ctx| {
        disk::resize(ctx, &disk, 2 << 20, false).await
    })
    .await;
    assert_eq!(resized.size_bytes, 2 << 20);
    // No guest OS lets go of the disk: the detach waits as DETACHING.
    let detaching = each_step_fails_cleanly(&server, &["detachDisk"], false, async |ctx| {
        disk::detach(ctx, &disk, false).await
    })
    .await;
    assert_eq!(format!("{:?}", detaching.attachment), "Detaching");
}

/// An import's first step (inspecting the file in the import directory)
/// runs before the operation is recorded, by design: it only reads, and a
/// file it refuses changes nothing. So a host failure there answers
/// HOST_ERROR with no operation; the copy's failure is recorded.
#[tokio::test]
async fn an_image_import_fails_cleanly_at_its_inspection_and_at_its_copy() {
    let import = tempfile::tempdir().unwrap();
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(import.path().join("base.qcow2"))
        .arg("1M")
        .status()
        .unwrap();
    assert!(made.success());
    let import_dir = import.path().to_path_buf();
    let server = TestServer::start_with(move |c| {
        c.dry_run = false;
        c.import_dir = Some(import_dir);
    })
    .await;
    let steps = ["inspectImage", "importImage"];
    let mutation = async |ctx: &Ctx| {
        image::import(
            ctx,
            ImportImage {
                name: "base".into(),
                kind: ImageKind::Disk,
                source: ImportSource::Path("base.qcow2".into()),
            },
            false,
        )
        .await
    };

    let before = world(&server, false).await;
    let ops = operations(&server).await;
    let (ctx, seen) = ctx_failing_at(&server.app.ctx, Some(1));
    let error = mutation(&ctx).await.err().expect("the inspection failed");
    assert_eq!(error.code(), "HOST_ERROR", "{error}");
    assert_eq!(seen.names(), ["inspectImage"]);
    assert_eq!(operations(&server).await, ops, "no operation was recorded");
    assert_eq!(world(&server, false).await, before);

    let after = fail_at(&server, 2, &steps, false, &mutation).await;
    assert_eq!(after, before, "no file, not even a partial one");

    let imported = succeeds(&server, &steps, &mutation).await;
    assert_eq!(imported.unwrap().format, Some(DiskFormat::Qcow2));
    assert_eq!(storage_files(&server).len(), 1);
}

#[tokio::test]
async fn a_start_pause_resume_or_reset_that_fails_leaves_the_vm_as_it_was() {
    let server = real_server().await;
    server.create_template("bare").await;
    let vm = server.create_vm("vm-1", "bare").await;
    let started = each_step_fails_cleanly(&server, &["start"], false, async |ctx| {
        vm::lifecycle(ctx, &vm, Lifecycle::Start, false).await
    })
    .await;
    assert_eq!(started.state, VmState::Running);
    assert_eq!(live_qemus(&server).len(), 1);
    // Pause, resume and a hard restart (a reset) leave the state as it was.
    for (request, steps, lands) in [
        (Lifecycle::Pause, ["pause"], VmState::Paused),
        (Lifecycle::Resume, ["resume"], VmState::Running),
        (
            Lifecycle::Restart { hard: true },
            ["reset"],
            VmState::Running,
        ),
    ] {
        let done = each_step_fails_cleanly(&server, &steps, false, async |ctx| {
            vm::lifecycle(ctx, &vm, request, false).await
        })
        .await;
        assert_eq!(done.state, lands);
    }
}

/// A stop whose host action fails cannot tell whether QEMU still runs: the
/// VM is UNKNOWN (not RUNNING), its QEMU untouched here. A forced stop ends it.
#[tokio::test]
async fn a_stop_that_fails_leaves_the_vm_unknown_and_a_forced_stop_ends_it() {
    let server = real_server().await;
    server.create_template("bare").await;
    let vm = server.create_vm("vm-1", "bare").await;
    server.start_vm(&vm).await;
    let stop = async |ctx: &Ctx| vm::lifecycle(ctx, &vm, FORCE, false).await;
    let before = world(&server, false).await;
    let mut after = fail_at(&server, 1, &["stop"], false, &stop).await;
    assert_eq!(vm_state(&server, &vm).await, VmState::Unknown);
    after.vms = before.vms.clone();
    assert_eq!(after, before, "all else as it was, QEMU still running");

    let stopped = succeeds(&server, &["stop"], &stop).await;
    assert_eq!(stopped.state, VmState::Stopped);
    assert!(live_qemus(&server).is_empty());
}

/// A soft restart is a stop and a start, not one change: a failed stop
/// leaves the VM UNKNOWN, a failed start leaves it STOPPED (its QEMU ended
/// by the stop). Either way the next restart or start brings it back.
#[tokio::test]
async fn a_restart_that_fails_leaves_the_vm_where_its_failed_half_left_it() {
    let server = real_server().await;
    server.create_template("bare").await;
    let vm = server.create_vm("vm-1", "bare").await;
    server.start_vm(&vm).await;
    let steps = ["stop", "start"];
    let restart =
        async |ctx: &Ctx| vm::lifecycle(ctx, &vm, Lifecycle::Restart { hard: false }, false).await;
    let before = world(&server, false).await;
    let after = fail_at(&server, 1, &steps, false, &restart).await;
    assert_eq!(vm_state(&server, &vm).await, VmState::Unknown);
    assert_eq!(after.qemus, before.qemus, "QEMU untouched");
    // From UNKNOWN only a forced stop is allowed.
    succeeds(&server, &["stop"], &async |ctx: &Ctx| {
        vm::lifecycle(ctx, &vm, FORCE, false).await
    })
    .await;
    succeeds(&server, &["start"], &async |ctx: &Ctx| {
        vm::lifecycle(ctx, &vm, Lifecycle::Start, false).await
    })
    .await;

    let before = world(&server, false).await;
    let after = fail_at(&server, 2, &steps, false, &restart).await;
    assert_eq!(vm_state(&server, &vm).await, VmState::Stopped);
    assert!(after.qemus.is_empty(), "the stop ended QEMU, no new one");
    assert_eq!(
        (after.disks, after.files),
        (before.disks, before.files),
        "the disks as they were"
    );
    succeeds(&server, &["start"], &async |ctx: &Ctx| {
        vm::lifecycle(ctx, &vm, Lifecycle::Start, false).await
    })
    .await;
    let restarted = succeeds(&server, &steps, &restart).await;
    assert_eq!(restarted.state, VmState::Running);
}

/// Deleting a VM stops it, removes its run directory and then its disks'
/// files, one by one, before its rows go: files cannot be put back, so a
/// failure part-way leaves the VM (stopped) with the disks not yet removed,
/// and the same delete, tried again, finishes the job.
#[tokio::test]
async fn a_vm_delete_that_fails_part_way_keeps_the_vm_and_a_retry_finishes_it() {
    let server = real_server().await;
    server.create_template("bare").await;
    let vm = server.create_vm("vm-1", "bare").await;
    let data = server.create_disk("data", 1 << 20, "RAW").await;
    disk::attach(&server.app.ctx, &data, &vm, false)
        .await
        .unwrap();
    server.start_vm(&vm).await;
    let delete = async |ctx: &Ctx| vm::delete(ctx, &vm, true, false).await;
    let running = ["stop", "destroy", "deleteDisk", "deleteDisk"];

    // The stop fails: as a failed stop does, the VM is UNKNOWN; nothing removed.
    let before = world(&server, false).await;
    let mut after = fail_at(&server, 1, &running, false, &delete).await;
    assert_eq!(vm_state(&server, &vm).await, VmState::Unknown);
    after.vms = before.vms.clone();
    assert_eq!(after, before);

    // The run directory's removal fails: the VM stays, stopped, disks intact.
    let after = fail_at(&server, 2, &running, false, &delete).await;
    assert_eq!(vm_state(&server, &vm).await, VmState::Stopped);
    assert!(after.qemus.is_empty());
    assert_eq!((after.disks, after.files), (before.disks, before.files));

    // Stopped now: no stop step. The first disk's removal fails: all kept.
    let stopped = ["destroy", "deleteDisk", "deleteDisk"];
    let before = world(&server, false).await;
    let after = fail_at(&server, 2, &stopped, false, &delete).await;
    assert_eq!(after, before);

    // The second disk's removal fails: the first disk's file is gone, its
    // row stays (the coherence sweep reports the missing file).
    let after = fail_at(&server, 3, &stopped, false, &delete).await;
    assert_eq!(after.disks, before.disks);
    assert_eq!(after.files.len(), before.files.len() - 1);

    // The retry removes what is left (a missing file is fine) and the rows.
    succeeds(&server, &stopped, &delete).await;
    let gone = world(&server, false).await;
    assert!(gone.vms.is_empty() && gone.disks.is_empty() && gone.files.is_empty());
}

#[tokio::test]
async fn networks_are_created_and_deleted_all_or_nothing_on_real_netlink() {
    if !netns::enter("networks_are_created_and_deleted_all_or_nothing_on_real_netlink") {
        return;
    }
    let server = real_server().await;
    let network = each_step_fails_cleanly(&server, &["createNetwork"], true, async |ctx| {
        let input = CreateNetwork {
            name: "ten".into(),
            vlan_id: 10,
            uplink: None,
        };
        network::create(ctx, input, false).await
    })
    .await;
    assert!(netns::sys_link("vmbr10").is_some());
    each_step_fails_cleanly(&server, &["deleteNetwork"], true, async |ctx| {
        network::delete(ctx, &network.id, false).await
    })
    .await;
    assert!(netns::sys_link("vmbr10").is_none());
}

/// A VM with a NIC: its start makes the tap and then QEMU, a hot-plugged
/// NIC its tap and then the device; a failure at either takes the tap back.
/// Unplugging (no guest OS here: the detach waits as DETACHING) and a cold
/// detach (the tap's removal) keep the NIC when they fail. A stop's tap
/// removals are best effort by design: the VM has stopped, so a tap that
/// cannot be removed is logged and left for the coherence sweep.
#[tokio::test]
async fn nics_and_the_lifecycle_of_a_vm_with_one_fail_cleanly_on_real_netlink() {
    if !netns::enter("nics_and_the_lifecycle_of_a_vm_with_one_fail_cleanly_on_real_netlink") {
        return;
    }
    let server = real_server().await;
    let ctx = &server.app.ctx;
    let net = network::create(
        ctx,
        CreateNetwork {
            name: "ten".into(),
            vlan_id: 10,
            uplink: None,
        },
        false,
    )
    .await
    .unwrap()
    .object;
    server.create_template("bare").await;
    let vm = server.create_vm("vm-1", "bare").await;
    let attach = async |ctx: &Ctx| {
        let input = AttachNic {
            vm_id: vm.clone(),
            network_id: net.id.clone(),
            mac: None,
            model: None,
        };
        network::nic::attach(ctx, input, false).await
    };
    // Cold: no host step.
    let cold = succeeds(&server, &[], &attach).await;
    let tap0 = cold.tap.clone().unwrap();

    let started = each_step_fails_cleanly(&server, &["ensureTap", "start"], true, async |ctx| {
        vm::lifecycle(ctx, &vm, Lifecycle::Start, false).await
    })
    .await;
    assert_eq!(started.state, VmState::Running);
    assert!(netns::sys_link(&tap0).is_some());

    let hot = each_step_fails_cleanly(&server, &["ensureTap", "attachNic"], true, &attach).await;
    let tap1 = hot.tap.clone().unwrap();
    assert!(netns::sys_link(&tap1).is_some());

    let detaching = each_step_fails_cleanly(&server, &["detachNic"], true, async |ctx| {
        network::nic::detach(ctx, &hot.id, false).await
    })
    .await;
    assert_eq!(
        format!("{:?}", detaching.attachment),
        "Detaching",
        "no guest lets go"
    );

    // A stop whose tap removal fails still stops the VM; that tap stays.
    // The pending unplug ends when QEMU exits, and its own task then
    // removes the DETACHING NIC and its tap: if that comes before the stop
    // reads the VM's NICs, the stop has one tap to remove, else two.
    let stop = async |ctx: &Ctx| vm::lifecycle(ctx, &vm, FORCE, false).await;
    let (failing, seen) = ctx_failing_at(&server.app.ctx, Some(2));
    let stopped = stop(&failing).await.expect("the stop succeeds").object;
    assert_eq!(stopped.state, VmState::Stopped);
    let names = seen.names();
    assert!(
        names == ["stop", "deleteTap"] || names == ["stop", "deleteTap", "deleteTap"],
        "{names:?}"
    );
    assert!(
        netns::sys_link(&tap0).is_some(),
        "the tap that failed stays"
    );
    assert!(netns::sys_link(&tap1).is_none());
    assert!(live_qemus(&server).is_empty());
    ctx.network
        .execute(&vman::host::NetworkAction::DeleteTap { tap: tap0.clone() })
        .await
        .unwrap();

    // Cold detach: the tap's removal (a no-op on a stopped VM's absent tap).
    each_step_fails_cleanly(&server, &["deleteTap"], true, async |ctx| {
        network::nic::detach(ctx, &cold.id, false).await
    })
    .await;
    let left = world(&server, true).await;
    assert!(left.nics.is_empty());
}

// A crash of vman itself mid-step: a disk or an image is written under a
// `.partial` name and renamed when complete, so a vman killed meanwhile
// leaves the partial file. The next start (no operation runs before it)
// marks that operation interrupted and removes the file.

/// A config for an app of this test's own on `data_dir`.
fn config_on(data_dir: &std::path::Path, dry_run: bool) -> vman::config::Config {
    let mut config = vman::config::Config {
        data_dir: data_dir.to_path_buf(),
        dry_run,
        ..Default::default()
    };
    config.qemu.accel = accel();
    // On PostgreSQL, `data_dir`'s own database: the same for each app on it.
    config.database.url = common::database_url(data_dir);
    config
}

#[tokio::test]
async fn a_start_removes_the_partial_files_a_killed_vman_left_and_keeps_whole_ones() {
    use vman::app::App;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let app = App::start(config_on(&data, false)).await.unwrap();
    let whole = disk::create(&app.ctx, raw_disk("whole"), false)
        .await
        .unwrap()
        .object;
    let storage = app.ctx.config.storage_dir();
    let kept = storage.join(format!("{}.raw", whole.id));
    assert!(kept.is_file());
    // What a qemu-img create and an image copy killed with vman leave.
    let disk_partial = storage.join(format!("{}.qcow2.partial", uuid::Uuid::now_v7()));
    let image_partial = storage
        .join("images")
        .join(format!("{}.partial", uuid::Uuid::now_v7()));
    std::fs::write(&disk_partial, b"half a disk").unwrap();
    std::fs::write(&image_partial, b"half an image").unwrap();
    app.ctx.cancel.cancel();
    drop(app);

    // A dry run touches no host file.
    let dry = App::start(config_on(&data, true)).await.unwrap();
    assert!(disk_partial.exists() && image_partial.exists());
    dry.ctx.cancel.cancel();
    drop(dry);

    let again = App::start(config_on(&data, false)).await.unwrap();
    assert!(!disk_partial.exists(), "the disk's partial file is removed");
    assert!(
        !image_partial.exists(),
        "the image's partial file is removed"
    );
    assert!(kept.is_file(), "a complete disk is kept");
    again.ctx.cancel.cancel();
}

/// The `vman` binary is killed (SIGKILL) while qemu-img creates a disk:
/// here a qemu-img that writes its file and then hangs, standing in for a
/// big disk on a slow path. The restarted vman marks the operation FAILED
/// as INTERRUPTED, records no disk, and leaves no partial file.
#[tokio::test]
async fn a_vman_killed_while_qemu_img_runs_leaves_no_partial_file_after_its_restart() {
    use common::{VmanProcess, free_port};
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let hung_pid = dir.path().join("qemu-img.pid");
    let slow_img = dir.path().join("slow-qemu-img");
    std::fs::write(
        &slow_img,
        format!(
            "#!/bin/sh\nqemu-img \"$@\" || exit $?\nif [ \"$1\" = create ]; then echo $$ > {}; exec sleep 60; fi\n",
            hung_pid.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&slow_img, std::fs::Permissions::from_mode(0o755)).unwrap();
    let http = reqwest::Client::new();
    let mut vman = VmanProcess::start_with_env(
        &data,
        free_port(),
        &[("VMAN_QEMU_IMG_BINARY", slow_img.to_str().unwrap())],
    );
    vman.ready(&http).await;
    let (url, client) = (vman.url.clone(), http.clone());
    let create = tokio::spawn(async move {
        // Never answered: vman is killed first.
        let _ = client
            .post(&url)
            .json(&json!({"query": "mutation { createDisk(input: {name: \"big\", sizeBytes: 1048576, format: QCOW2}) { disk { id } } }"}))
            .send()
            .await;
    });
    let storage = data.join("storage");
    let partials = || -> Vec<PathBuf> {
        std::fs::read_dir(&storage)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "partial"))
            .collect()
    };
    // The hung qemu-img writes its pid once its file is complete (the shell
    // creates the pid file before it writes the number into it).
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let hung = || -> Option<i32> { std::fs::read_to_string(&hung_pid).ok()?.trim().parse().ok() };
    while hung().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "qemu-img ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(partials().len(), 1, "qemu-img wrote the partial file");
    vman.child.kill().unwrap(); // SIGKILL
    vman.child.wait().unwrap();
    let pid = hung().expect("its pid");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    create.abort();

    let restarted = VmanProcess::start(&data, free_port());
    restarted.ready(&http).await;
    assert!(partials().is_empty(), "{:?}", partials());
    let seen = restarted
        .gql(
            &http,
            "{ disks { totalCount } operations { edges { node { kind status errorCode } } } }",
            json!({}),
        )
        .await;
    assert_eq!(seen["disks"]["totalCount"], 0);
    assert_eq!(
        seen["operations"]["edges"],
        json!([{"node": {"kind": "CREATE_DISK", "status": "FAILED", "errorCode": "INTERRUPTED"}}])
    );
}
