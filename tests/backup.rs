//! Backups an operator can trust: `vman backup` while vman serves under
//! load, `vman restore` (refused while a vman serves the data directory)
//! into a fresh data directory and into the one whose VMs run on, the
//! scheduled backups, `PRAGMA quick_check` at start and `vman doctor`.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Output,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use common::{TestServer, VmanProcess, WAIT, accel, free_port};
use serde_json::{Value, json};
use vman::config::Config;

/// Runs the `vman` binary with `args`; its output.
async fn vman(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_vman"))
        .args(args)
        .env("VMAN_LOG_LEVEL", "warn")
        .output()
        .await
        .expect("vman runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// (sequence, kind, subject, payload) of each journal event.
fn entries(journal: &[Value]) -> Vec<(i64, Value, Value, Value)> {
    journal
        .iter()
        .map(|e| {
            (
                e["sequence"]
                    .as_str()
                    .map_or_else(|| e["sequence"].as_i64().unwrap(), |s| s.parse().unwrap()),
                e["kind"].clone(),
                e["subjectId"].clone(),
                e["payload"].clone(),
            )
        })
        .collect()
}

/// Mutations at about 50 a second until `stop`, each a template of its own
/// (and so one journal event); counts those that succeeded.
fn load(
    server: Arc<TestServer>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            n += 1;
            server
                .ok(
                    "mutation($n: String!) { createTemplate(input: {name: $n, vcpus: 1, memoryMib: 128}) { template { id } } }",
                    json!({"n": format!("load-{n}")}),
                )
                .await;
            done.fetch_add(1, Ordering::Relaxed);
        }
    })
}

#[tokio::test]
async fn a_backup_under_load_restores_into_a_fresh_data_directory_with_the_journal_continuous_up_to_it()
 {
    let server = Arc::new(TestServer::start().await);
    let served = server.app.ctx.config.data_dir.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let loading = load(server.clone(), stop.clone(), done.clone());
    // Under way before the backup begins.
    let deadline = tokio::time::Instant::now() + WAIT;
    while done.load(Ordering::Relaxed) < 20 {
        assert!(tokio::time::Instant::now() < deadline, "the load runs");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    let head_before = server.app.ctx.bus.head().await.unwrap();
    let out = vman(&["backup", arg(&file), "--data-dir", arg(&served)]).await;
    let head_after = server.app.ctx.bus.head().await.unwrap();
    let during = done.load(Ordering::Relaxed);
    assert!(out.status.success(), "{}", stderr(&out));
    // A few more after it, then the load stops.
    while done.load(Ordering::Relaxed) < during + 5 {
        assert!(
            tokio::time::Instant::now() < deadline + WAIT,
            "the load runs on"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    loading.await.unwrap();
    assert!(
        head_after > head_before,
        "mutations went on during the backup"
    );

    // A vman serves that data directory: no restore there.
    let refused = vman(&["restore", arg(&file), "--data-dir", arg(&served)]).await;
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("serves"), "{}", stderr(&refused));

    let fresh = dir.path().join("fresh");
    let out = vman(&["restore", arg(&file), "--data-dir", arg(&fresh)]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let restored = TestServer::start_with(|c| c.data_dir = fresh.clone()).await;
    let copy = entries(&restored.journal().await);
    let source = entries(&server.journal().await);
    let head = copy.last().map_or(0, |e| e.0);
    assert!(
        (head_before..=head_after).contains(&head),
        "the copy ends at {head}, between {head_before} and {head_after}"
    );
    let sequences: Vec<i64> = copy.iter().map(|e| e.0).collect();
    assert_eq!(sequences, (1..=head).collect::<Vec<_>>(), "no gap");
    assert_eq!(
        copy[..],
        source[..head as usize],
        "the source's journal up to the backup"
    );
    assert!(source.len() > copy.len());

    // It goes on from there.
    restored.create_template("after-restore").await;
    let next = entries(&restored.journal().await);
    assert_eq!(next.last().unwrap().0, head + 1);
    let templates_made = next.iter().filter(|e| e.1 == "TEMPLATE_CREATED").count();
    assert_eq!(
        restored.ok("{ templates { totalCount } }", json!({})).await["templates"]["totalCount"],
        templates_made,
        "one template per TEMPLATE_CREATED, the new one too"
    );
}

/// A vman process serves real VMs; a backup is taken with vm1 stopped; then
/// vm1 starts and vm2 is made and started. vman is killed (the VMs run on),
/// the backup restored into the same data directory, and vman started
/// again: the VMs the backup does not know to run are reported by the
/// coherence sweep (and at start), not lost; their QEMUs run untouched.
#[tokio::test]
async fn vms_started_after_a_restored_backup_are_reported_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = reqwest::Client::new();
    let mut first = VmanProcess::start(&data, free_port());
    first.ready(&http).await;
    let gql = async |query: &str, variables: Value| first.gql(&http, query, variables).await;
    gql(
        "mutation { createTemplate(input: {name: \"bare\", vcpus: 1, memoryMib: 128}) { template { id } } }",
        json!({}),
    )
    .await;
    let create = "mutation($n: String!) { createVm(input: {name: $n, templateName: \"bare\"}) { vm { id } } }";
    let vm1 = gql(create, json!({"n": "vm1"})).await["createVm"]["vm"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let file = dir.path().join("before.db");
    let out = vman(&["backup", arg(&file), "--data-dir", arg(&data)]).await;
    assert!(out.status.success(), "{}", stderr(&out));

    let start = "mutation($id: ID!) { startVm(id: $id) { vm { state } } }";
    gql(start, json!({"id": vm1})).await;
    let vm2 = gql(create, json!({"n": "vm2"})).await["createVm"]["vm"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    gql(start, json!({"id": vm2})).await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    // Its QEMUs are the next vman's to find: not killed with this process.
    first.run_dir = PathBuf::from("/nonexistent");
    drop(first);

    let out = vman(&["restore", arg(&file), "--data-dir", arg(&data)]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    // The test server ends the VMs' QEMUs when it is dropped.
    let server = TestServer::start_with(|c| {
        c.data_dir = data.clone();
        c.dry_run = false;
        c.qemu.accel = accel();
    })
    .await;
    assert_eq!(server.vm_state(&vm1).await, "STOPPED", "as the backup says");
    let health = server
        .ok("{ health { adoptionProblems } }", json!({}))
        .await;
    let problems = health["health"]["adoptionProblems"].to_string();
    assert!(problems.contains(&vm2), "{problems}");

    let sweep = server
        .ok(
            "mutation { runCoherenceSweep { findings { kind subjectId } } }",
            json!({}),
        )
        .await;
    let findings = &sweep["runCoherenceSweep"]["findings"];
    let found = |kind: &str, subject: &str| {
        findings
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == kind && f["subjectId"] == subject)
    };
    assert!(found("UNEXPECTED_PROCESS", &vm1), "{findings:#}");
    // vm2 has no row: its run directory and its QEMU belong to no VM.
    let vm2_run_dir = server.run_dir(&vm2).display().to_string();
    assert!(found("ORPHAN_PROCESS", &vm2_run_dir), "{findings:#}");
    // Both QEMUs still run.
    for vm in [&vm1, &vm2] {
        let pid = vman::host::qemu::process::read_pidfile(&server.run_dir(vm).join("qemu.pid"))
            .expect("a pidfile");
        assert!(vman::host::qemu::process::is_alive(pid), "{vm}'s QEMU runs");
    }
}

fn config_on(data: &Path) -> Config {
    Config {
        data_dir: data.to_path_buf(),
        dry_run: true,
        ..Config::default()
    }
}

/// A database with a damaged page stops vman at start with a message that
/// names the newest backup and the command to restore it; `vman doctor`
/// says it is damaged; after the restore vman starts.
#[tokio::test]
async fn a_damaged_database_stops_vman_at_start_naming_the_backup_to_restore() {
    use sea_orm::ConnectionTrait;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let app = vman::app::App::start(config_on(&data)).await.unwrap();
    let config = app.ctx.config.clone();
    for n in 0..50 {
        vman::template::create(
            &app.ctx,
            vman::template::CreateTemplate {
                name: format!("t-{n}"),
                description: Some("x".repeat(500)),
                vcpus: 1,
                memory_mib: 128,
                base_image_id: None,
                kernel_image_id: None,
                initrd_image_id: None,
                cmdline: None,
                default_disk_size_bytes: None,
                boot_order: None,
            },
        )
        .await
        .unwrap();
    }
    let backup = vman::backup::take_scheduled(&config, &app.ctx.db)
        .await
        .unwrap();
    app.ctx
        .db
        .execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)")
        .await
        .unwrap();
    app.ctx.cancel.cancel();
    drop(app);

    // Pages 3 to 6 (tables, indexes) overwritten; the header stays.
    let db = config.db_path();
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 6 * 4096, "{} bytes", bytes.len());
    for (i, b) in bytes[2 * 4096..6 * 4096].iter_mut().enumerate() {
        *b = (i * 7 + 13) as u8;
    }
    std::fs::write(&db, &bytes).unwrap();

    let err = match vman::app::App::start(config_on(&data)).await {
        Ok(_) => panic!("vman started on a damaged database"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("damaged"), "{err}");
    assert!(
        err.contains(&format!("vman restore {}", backup.path.display())),
        "{err}"
    );

    let doctor = vman(&["doctor", "--data-dir", arg(&data)]).await;
    assert!(!doctor.status.success());
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(report.contains("DAMAGED"), "{report}");

    let out = vman(&["restore", arg(&backup.path), "--data-dir", arg(&data)]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let app = vman::app::App::start(config_on(&data)).await.unwrap();
    let doctor = vman(&["doctor", "--data-dir", arg(&data)]).await;
    assert!(
        doctor.status.success(),
        "{}",
        String::from_utf8_lossy(&doctor.stdout)
    );
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(report.contains("integrity   ok"), "{report}");
    assert!(report.contains("50 templates"), "{report}");
    assert!(report.contains("a vman (pid"), "{report}");
    app.ctx.cancel.cancel();
}

/// `backup.interval` and `backup.keep`: backups come one interval apart
/// and only the newest `keep` stay.
#[tokio::test]
async fn scheduled_backups_come_every_interval_and_only_the_newest_are_kept() {
    let server = TestServer::start_with(|c| {
        c.backup.interval = Duration::from_secs(1);
        c.backup.keep = 2;
    })
    .await;
    server.create_template("t").await;
    let config = server.app.ctx.config.clone();
    let mut first_seen = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = vman::backup::scheduled(&config);
        assert!(found.len() <= 2, "{found:#?}");
        match &first_seen {
            None if !found.is_empty() => first_seen = Some(found.last().unwrap().clone()),
            // Two newer ones since the first: it was removed.
            Some(first) if found.len() == 2 && !found.contains(first) => break,
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "three backups within {WAIT:?}: {found:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let found = vman::backup::scheduled(&config);
    let gap = found[0].taken - found[1].taken;
    assert!(gap >= chrono::TimeDelta::milliseconds(900), "{gap}");
    // Each is a whole, sound copy.
    for backup in &found {
        let check = vman::db::check_file(&backup.path, vman::db::Check::Full, true)
            .await
            .unwrap();
        assert_eq!(check, vman::db::FileCheck::Ok, "{}", backup.path.display());
    }
}
