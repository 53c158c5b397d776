//! A full disk under the data directory: each test mounts small tmpfs
//! filesystems of its own (`common::tmpfs`) for vman's data directory (and,
//! where it matters, for `storage/` and `run/` apart) and fills them.
//! Without the right to mount, a test is skipped and says why.
//!
//! What must hold: a write that finds no space answers `STORAGE_FULL`
//! naming the path it could not write under and that filesystem's free
//! bytes, never `INTERNAL`; nothing is half made (no row, no file, no
//! QEMU); `/readyz` says so; and once space is back every write succeeds
//! at once.

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use common::{TestServer, accel, tmpfs::Tmpfs};
use sea_orm::{ActiveModelTrait, EntityTrait, PaginatorTrait, Set};
use serde_json::{Value, json};
use vman::events::{NewEvent, Payload};

const CREATE_TEMPLATE: &str = "mutation($name: String!) { createTemplate(input: {name: $name, vcpus: 1, memoryMib: 128, defaultDiskSizeBytes: 1048576}) { template { id } } }";

fn mount(test: &str, mib: u64) -> Option<Tmpfs> {
    match Tmpfs::mount(mib) {
        Ok(fs) => Some(fs),
        Err(why) => {
            println!("SKIPPED {test}: {why}");
            None
        }
    }
}

/// The first error's code of a response, or None when it succeeded.
fn code(response: &Value) -> Option<String> {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .map(str::to_string)
}

/// A `STORAGE_FULL` answer: the path it names (which must be under
/// `under`) and the free bytes it reports.
fn storage_full(response: &Value, under: &Path) -> (String, u64) {
    let error = &response["errors"][0];
    assert_eq!(error["extensions"]["code"], "STORAGE_FULL", "{response:#}");
    let path = error["extensions"]["path"].as_str().unwrap().to_string();
    assert!(
        Path::new(&path).starts_with(under),
        "{path} is not under {}",
        under.display()
    );
    let free = error["extensions"]["freeBytes"].as_u64().unwrap();
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(&path) && message.contains(&format!("{free} bytes free")),
        "the message names the path and its free bytes: {message}"
    );
    (path, free)
}

/// What the rows say, without the operations (a failed one is recorded as
/// such) but with the journal.
async fn rows(server: &TestServer) -> Value {
    server
        .ok(
            "{ templates { totalCount } vms { totalCount edges { node { name state } } } disks { totalCount edges { node { name sizeBytes } } } networks { totalCount } images { totalCount } events(first: 0) { totalCount } }",
            json!({}),
        )
        .await
}

/// Every file under `dir`, recursively, with its length.
fn files(dir: &Path) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            found.extend(files(&entry.path()));
        } else {
            found.push((entry.path().display().to_string(), meta.len()));
        }
    }
    found.sort();
    found
}

async fn readyz(server: &TestServer) -> (u16, Value) {
    let response = server
        .http
        .get(server.url.replace("/graphql", "/readyz"))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Writes a template row and its event through the event bus's writer, as
/// the observer writes what it sees (no operation envelope, no check of
/// free space first).
async fn write_directly(server: &TestServer, name: String) -> vman::error::ApiResult<()> {
    let ctx = &server.app.ctx;
    let mut w = ctx.bus.writer().await?;
    let now = chrono::Utc::now();
    let row = vman::template::model::ActiveModel {
        id: Set(uuid::Uuid::now_v7().to_string()),
        name: Set(name),
        description: Set("x".repeat(2000)),
        vcpus: Set(1),
        memory_mib: Set(128),
        base_image_id: Set(None),
        kernel_image_id: Set(None),
        initrd_image_id: Set(None),
        cmdline: Set(None),
        default_disk_size_bytes: Set(None),
        boot_order: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(w.txn())
    .await?;
    w.record(NewEvent::new(
        &row.id,
        None,
        Payload::TemplateCreated { name: row.name },
    ))
    .await?;
    w.commit().await?;
    Ok(())
}

async fn templates_committed(server: &TestServer) -> u64 {
    let db = vman::db::connect(&server.app.ctx.config.db_path(), Duration::from_secs(5))
        .await
        .unwrap();
    let count = vman::template::model::Entity::find()
        .count(&db)
        .await
        .unwrap();
    db.close().await.unwrap();
    count
}

/// The report: after writes failed on a full disk and the space
/// came back, writes kept failing with `database is locked` (or went into
/// a transaction that never committed). Here the failing writes go straight
/// through the event bus's writer, as the observer's do (mutations are
/// refused before they write, see below), four at a time so that they land
/// on several connections. Every write after the space is back must
/// succeed at once (far below SQLite's busy timeout) and be committed: a
/// connection of its own sees it.
#[tokio::test]
async fn writes_succeed_at_once_and_are_committed_when_a_full_disk_has_room_again() {
    let test = "writes_succeed_at_once_and_are_committed_when_a_full_disk_has_room_again";
    let Some(fs) = mount(test, 40) else {
        return;
    };
    let data = fs.path().join("data");
    let server = TestServer::start_with(|c| c.data_dir = data.clone()).await;
    server.create_template("t0").await;
    let filler = fs.fill();

    // The database has room in its last pages and its WAL for a while;
    // writes fail once it must grow.
    let mut made = 1;
    let mut failed = 0;
    for round in 0..100 {
        let writes = (0..4).map(|n| write_directly(&server, format!("full-{round}-{n}")));
        for written in futures_util::future::join_all(writes).await {
            match written {
                Ok(()) => made += 1,
                Err(e) => {
                    assert_eq!(e.code(), "STORAGE_FULL", "{e}");
                    failed += 1;
                }
            }
        }
        if failed >= 8 {
            break;
        }
    }
    assert!(failed >= 8, "writes fail on a full disk");

    std::fs::remove_file(&filler).unwrap();
    for n in 0..20 {
        let started = Instant::now();
        let response = server
            .post(CREATE_TEMPLATE, json!({"name": format!("after-{n}")}))
            .await;
        let took = started.elapsed();
        assert_eq!(
            code(&response),
            None,
            "write {n} after the space came back: {response:#}"
        );
        assert!(
            took < Duration::from_secs(2),
            "write {n} after the space came back waited {took:?}"
        );
        made += 1;
    }
    assert_eq!(
        templates_committed(&server).await,
        made,
        "every write that succeeded is committed"
    );
    server.app.ctx.cancel.cancel();
}

/// The data directory's filesystem full to the last byte (the database
/// cannot grow): every mutation that adds something answers STORAGE_FULL
/// naming the database and changes nothing; queries still answer; a delete
/// may use what is left and is never INTERNAL; `/readyz` fails. Once the
/// space is back the next 20 writes all succeed at once.
#[tokio::test]
async fn on_a_full_data_directory_mutations_answer_storage_full_and_the_next_writes_succeed_at_once()
 {
    let test = "on_a_full_data_directory_mutations_answer_storage_full_and_the_next_writes_succeed_at_once";
    let Some(fs) = mount(test, 40) else {
        return;
    };
    let data = fs.path().join("data");
    let server = TestServer::start_with(|c| c.data_dir = data.clone()).await;
    server.create_template("base").await;
    let vm = server.create_vm("vm1", "base").await;
    let spare = server.create_template("spare").await;
    let before = rows(&server).await;
    let filler = fs.fill();

    let db = server.app.ctx.config.db_path();
    let adds = [
        (CREATE_TEMPLATE, json!({"name": "more"})),
        (
            "mutation { createVm(input: {name: \"vm2\", templateName: \"base\"}) { vm { id } } }",
            json!({}),
        ),
        (
            "mutation { createDisk(input: {name: \"d2\", sizeBytes: 1048576, format: QCOW2}) { disk { id } } }",
            json!({}),
        ),
        (
            "mutation { createNetwork(input: {name: \"n2\", vlanId: 12}) { network { id } } }",
            json!({}),
        ),
        (
            "mutation($id: ID!) { startVm(id: $id) { vm { state } } }",
            json!({"id": vm}),
        ),
        (
            "mutation($id: ID!) { updateVm(id: $id, input: {description: \"full\"}) { vm { id } } }",
            json!({"id": vm}),
        ),
    ];
    for (query, variables) in &adds {
        let response = server.post(query, variables.clone()).await;
        let (path, free) = storage_full(&response, fs.path());
        assert_eq!(Path::new(&path), db, "{response:#}");
        assert!(free < vman::storage::DATABASE_HEADROOM, "{free}");
    }
    assert_eq!(rows(&server).await, before, "nothing changed");

    // A delete makes room, so it may use the last of it: it succeeds or
    // answers STORAGE_FULL, never INTERNAL, and is all or nothing.
    let response = server
        .post(
            "mutation($id: ID!) { deleteTemplate(id: $id) { template { id } } }",
            json!({"id": spare}),
        )
        .await;
    let spare_left = match code(&response).as_deref() {
        None => false,
        Some("STORAGE_FULL") => true,
        Some(other) => panic!("deleteTemplate on a full disk answered {other}: {response:#}"),
    };
    let templates = rows(&server).await["templates"]["totalCount"].clone();
    assert_eq!(templates, json!(if spare_left { 2 } else { 1 }));

    let (status, health) = readyz(&server).await;
    assert_eq!(status, 503, "{health:#}");
    let failing: Vec<&str> = health["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        failing.contains(&format!("free space {}", data.display()).as_str()),
        "{failing:?}"
    );

    std::fs::remove_file(&filler).unwrap();
    let (status, health) = readyz(&server).await;
    assert_eq!(status, 200, "{health:#}");
    let started = Instant::now();
    for n in 0..20 {
        let response = server
            .post(CREATE_TEMPLATE, json!({"name": format!("after-{n}")}))
            .await;
        assert_eq!(code(&response), None, "write {n}: {response:#}");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "20 writes took {took:?}");
    for (query, variables) in &adds {
        let response = server.post(query, variables.clone()).await;
        assert_eq!(code(&response), None, "{response:#}");
    }
    assert_eq!(server.vm_state(&vm).await, "RUNNING");
    server.app.ctx.cancel.cancel();
}

/// `storage/` and `run/` on filesystems of their own (the database has
/// room): qemu-img finds storage full (a qcow2 file needs more than the
/// 4 KiB left), an import does not fit, QEMU cannot write its pidfile in a
/// full `run/`. Each answers STORAGE_FULL naming the directory it could
/// not write under; no file, row or QEMU is left; the failed operations
/// say why. With room again the same mutations succeed.
#[tokio::test]
async fn a_full_storage_or_run_filesystem_answers_storage_full_naming_it_and_leaves_nothing_half_made()
 {
    let test = "a_full_storage_or_run_filesystem_answers_storage_full_naming_it_and_leaves_nothing_half_made";
    let Some(fs) = mount(test, 40) else {
        return;
    };
    let data = fs.path().join("data");
    let storage_fs = Tmpfs::mount_at(&data.join("storage"), 8).unwrap();
    let run_fs = Tmpfs::mount_at(&data.join("run"), 4).unwrap();
    let import = data.join("import");
    std::fs::create_dir_all(&import).unwrap();
    std::fs::write(import.join("blob.raw"), vec![7u8; 1 << 20]).unwrap();
    let server = TestServer::start_with(|c| {
        c.data_dir = data.clone();
        c.dry_run = false;
        c.qemu.accel = accel();
    })
    .await;
    server.create_template("base").await;
    let vm = server.create_vm("vm1", "base").await;
    let storage = server.app.ctx.config.storage_dir();
    let run = server.app.ctx.config.run_dir();
    let before = (rows(&server).await, files(&storage), files(&run));
    let storage_filler = storage_fs.fill_leaving(4096);
    let run_filler = run_fs.fill();
    let run_filler_len = std::fs::metadata(&run_filler).unwrap().len();

    let import_blob = (
        "mutation { importImage(input: {name: \"blob\", kind: KERNEL, path: \"blob.raw\"}) { image { id } } }",
        json!({}),
    );
    let cases = [
        (
            "mutation { createDisk(input: {name: \"d2\", sizeBytes: 1048576, format: QCOW2}) { disk { id } } }",
            json!({}),
            storage.clone(),
        ),
        (
            "mutation { createVm(input: {name: \"vm2\", templateName: \"base\"}) { vm { id } } }",
            json!({}),
            storage.clone(),
        ),
        (import_blob.0, import_blob.1.clone(), storage.join("images")),
        (
            "mutation($id: ID!) { startVm(id: $id) { vm { state } } }",
            json!({"id": vm}),
            run.clone(),
        ),
    ];
    for (query, variables, under) in &cases {
        let response = server.post(query, variables.clone()).await;
        let (_, free) = storage_full(&response, under);
        assert!(free <= 4096, "{free} bytes free");
    }
    std::fs::remove_file(&storage_filler).unwrap();
    std::fs::remove_file(&run_filler).unwrap();
    let mut after_files = files(&run);
    // QEMU's log of the failed start, if it could open one, is all a
    // failed start may leave in its run directory.
    after_files.retain(|(path, _)| !path.ends_with("qemu.log") && !path.ends_with("serial.log"));
    let mut before_run = before.2.clone();
    before_run.retain(|(path, _)| !path.ends_with("qemu.log") && !path.ends_with("serial.log"));
    assert_eq!(after_files, before_run, "nothing new in run/");
    assert_eq!(files(&storage), before.1, "no file, not even a partial one");
    // The failed start journaled its STARTING and its way back to STOPPED;
    // apart from those, not a row or an event.
    let mut now = rows(&server).await;
    let mut then = before.0.clone();
    let journaled = now["events"]["totalCount"].as_u64().unwrap()
        - then["events"]["totalCount"].as_u64().unwrap();
    assert_eq!(journaled, 2, "STARTING, then STOPPED");
    now.as_object_mut().unwrap().remove("events");
    then.as_object_mut().unwrap().remove("events");
    assert_eq!(now, then, "no row");
    assert_eq!(server.vm_state(&vm).await, "STOPPED");
    let operations = server
        .ok(
            "{ operations(first: 10) { edges { node { kind status errorCode } } } }",
            json!({}),
        )
        .await;
    let failed: Vec<&Value> = operations["operations"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["node"])
        .filter(|op| op["status"] == "FAILED")
        .collect();
    assert!(
        failed.iter().all(|op| op["errorCode"] == "STORAGE_FULL"),
        "{operations:#}"
    );
    assert!(run_filler_len > 0);

    for (query, variables, _) in &cases {
        let response = server.post(query, variables.clone()).await;
        assert_eq!(code(&response), None, "{response:#}");
    }
    assert_eq!(server.vm_state(&vm).await, "RUNNING");
}

/// `storage.min_free_bytes` refuses new disks, VMs with a root disk and
/// imports that would leave less free, before anything is written; work
/// that needs no storage goes on.
#[tokio::test]
async fn storage_min_free_bytes_refuses_new_disks_and_imports_before_the_disk_fills() {
    let test = "storage_min_free_bytes_refuses_new_disks_and_imports_before_the_disk_fills";
    let Some(fs) = mount(test, 40) else {
        return;
    };
    let data = fs.path().join("data");
    let import = data.join("import");
    std::fs::create_dir_all(&import).unwrap();
    std::fs::write(import.join("blob.raw"), vec![7u8; 4 << 20]).unwrap();
    let reserve = 16 << 20;
    let server = TestServer::start_with(|c| {
        c.data_dir = data.clone();
        c.dry_run = false;
        c.qemu.accel = accel();
        c.storage.min_free_bytes = reserve;
    })
    .await;
    server.create_template("base").await;
    server.create_disk("d1", 1 << 20, "RAW").await;
    let storage = server.app.ctx.config.storage_dir();
    // 18 MiB free: a new disk leaves more than the reserve, the 4 MiB
    // image would leave less.
    let filler = fs.fill_leaving(18 << 20);
    let import_blob = "mutation { importImage(input: {name: \"blob\", kind: KERNEL, path: \"blob.raw\"}) { image { id } } }";
    let response = server.post(import_blob, json!({})).await;
    let (path, _) = storage_full(&response, &storage);
    assert_eq!(Path::new(&path), storage.join("images"));
    let message = response["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("storage.min_free_bytes"), "{message}");
    server.create_disk("d2", 1 << 20, "RAW").await;

    // 12 MiB free: below the reserve, no new disk at all.
    std::fs::remove_file(&filler).unwrap();
    let filler = fs.fill_leaving(12 << 20);
    let before = (rows(&server).await, files(&storage));
    for query in [
        "mutation { createDisk(input: {name: \"d3\", sizeBytes: 1048576, format: RAW}) { disk { id } } }",
        "mutation { createVm(input: {name: \"vm2\", templateName: \"base\"}) { vm { id } } }",
        import_blob,
    ] {
        let response = server.post(query, json!({})).await;
        storage_full(&response, &storage);
    }
    assert_eq!((rows(&server).await, files(&storage)), before);
    // Refused up front: no operation was recorded for them.
    let operations = server
        .ok("{ operations { edges { node { status } } } }", json!({}))
        .await;
    assert!(
        operations["operations"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["node"]["status"] == "SUCCEEDED"),
        "{operations:#}"
    );
    // What needs no storage goes on.
    server.create_template("other").await;
    let (status, health) = readyz(&server).await;
    assert_eq!(status, 503, "{health:#}");

    std::fs::remove_file(&filler).unwrap();
    server.create_disk("d3", 1 << 20, "RAW").await;
    let response = server.post(import_blob, json!({})).await;
    assert_eq!(code(&response), None, "{response:#}");
}
