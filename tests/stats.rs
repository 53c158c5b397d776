//! Live figures: `Vm.stats`, the `vmStats` subscription (one sampler per VM
//! however many watch), `host`, and a real guest's CPU time.

mod common;

use std::time::Duration;

use common::{TestServer, WAIT, WsClient, wait_for_line};
use serde_json::{Value, json};

const STATS: &str = "subscription($vm: ID, $s: Int!) { vmStats(vmId: $vm, intervalSeconds: $s) { vmId cpuSeconds cpuPercent memoryBytes memoryRssBytes uptimeSeconds disks { name writeBytes } nics { tap rxBytes } } }";

/// Waits until `server` runs `n` samplers (they stop when their last
/// subscriber leaves, as a task of their own).
async fn samplers(server: &TestServer, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.app.stats.count() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} samplers run, not {n}",
            server.app.stats.count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_hundred_subscribers_of_one_vm_share_one_sampler() {
    let server = TestServer::start().await;
    server.create_template("t").await;
    let vm = server.create_vm("v", "t").await;
    let idle = server.create_vm("idle", "t").await;
    // Not running: no figures.
    let data = server
        .ok(
            "query($id: ID) { vm(id: $id) { stats { cpuSeconds } } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(data["vm"]["stats"], Value::Null);
    server.start_vm(&vm).await;
    let data = server
        .ok(
            "query($id: ID) { vm(id: $id) { stats { vmId memoryBytes cpuSeconds cpuPercent } } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(data["vm"]["stats"]["vmId"], vm.as_str());
    assert_eq!(data["vm"]["stats"]["memoryBytes"], 128 << 20);
    assert_eq!(data["vm"]["stats"]["cpuPercent"], Value::Null);

    let mut ws = WsClient::connect(&server.ws_url).await;
    for i in 0..100 {
        ws.subscribe(&i.to_string(), STATS, json!({"vm": vm, "s": 1}))
            .await;
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 100 {
        let message = ws.next_message().await;
        assert_eq!(message["type"], "next", "{message}");
        assert_eq!(message["payload"]["data"]["vmStats"]["vmId"], vm.as_str());
        seen.insert(message["id"].as_str().unwrap().to_string());
    }
    assert_eq!(server.app.stats.count(), 1);
    let metrics = server
        .http
        .get(server.url.replace("/graphql", "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("vman_stats_samplers 1"), "{metrics}");
    // Per-VM series, for the VMs that run: parsed as Prometheus would.
    let scrape = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_string())))
        .expect("the text format");
    let cpu: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "vman_vm_cpu_seconds_total")
        .collect();
    assert_eq!(cpu.len(), 1, "{metrics}");
    assert_eq!(cpu[0].labels.get("vm"), Some("v"));
    assert_eq!(cpu[0].labels.get("id"), Some(vm.as_str()));
    // Every running VM, with no vmId: the stopped one yields nothing. (A
    // connection runs at most 100 operations: one ends first.)
    ws.send(json!({"type": "complete", "id": "0"})).await;
    ws.subscribe("all", STATS, json!({"vm": null, "s": 1}))
        .await;
    loop {
        let message = ws.next_message().await;
        if message["id"] == "all" {
            assert_eq!(message["type"], "next", "{message}");
            assert_eq!(message["payload"]["data"]["vmStats"]["vmId"], vm.as_str());
            assert_ne!(message["payload"]["data"]["vmStats"]["vmId"], idle.as_str());
            break;
        }
    }
    ws.close().await;
    samplers(&server, 0).await;

    let code = server
        .error_code(
            "query($id: ID) { vm(id: $id) { id } }",
            json!({"id": "not-an-id"}),
        )
        .await;
    assert_eq!(code, "BAD_USER_INPUT");
}

#[tokio::test]
async fn the_host_tells_its_cpus_memory_storage_and_load() {
    let server = TestServer::start().await;
    let host = server
        .ok(
            "{ host { cpus memoryTotalBytes memoryAvailableBytes storageFreeBytes load1 } }",
            json!({}),
        )
        .await["host"]
        .clone();
    assert!(host["cpus"].as_i64().unwrap() >= 1, "{host}");
    let total = host["memoryTotalBytes"].as_i64().unwrap();
    let available = host["memoryAvailableBytes"].as_i64().unwrap();
    assert!(total > 0 && available > 0 && available <= total, "{host}");
    assert!(host["storageFreeBytes"].as_i64().unwrap() > 0, "{host}");
    assert!(host["load1"].as_f64().unwrap() >= 0.0, "{host}");
}

/// Real QEMU, real guest (TCG): the guest keeps a CPU busy for a while, then
/// idles. Slow: run alone with `cargo test --test stats real`.
#[tokio::test]
async fn a_real_guest_uses_cpu_while_busy_and_little_when_idle() {
    let server = TestServer::real(vman::config::Accel::Tcg).await;
    server
        .guest_template("busy", "console=ttyS0 quiet panic=-1 vman.busy=4")
        .await;
    let vm = server.create_vm("busy-1", "busy").await;
    server.start_vm(&vm).await;
    let serial = server.run_dir(&vm).join("serial.log");
    wait_for_line(&serial, "VMAN-GUEST-BUSY", Duration::from_secs(60)).await;
    let mut ws = WsClient::connect(&server.ws_url).await;
    ws.subscribe("s", STATS, json!({"vm": vm, "s": 1})).await;
    // Busy: the figures of the seconds before VMAN-GUEST-IDLE.
    let mut busy = Vec::new();
    let mut idle = Vec::new();
    let mut idle_seen = false;
    // The first sample after VMAN-GUEST-IDLE still covers busy time.
    while idle.len() < 3 {
        let stats = ws.next_data("s").await["vmStats"].clone();
        assert!(
            stats["memoryRssBytes"].as_i64().unwrap() > 10 << 20,
            "{stats}"
        );
        assert_eq!(stats["memoryBytes"], 256 << 20);
        if let Some(percent) = stats["cpuPercent"].as_f64() {
            if !idle_seen {
                idle_seen = std::fs::read_to_string(&serial)
                    .unwrap()
                    .contains("VMAN-GUEST-IDLE");
                if !idle_seen {
                    busy.push(percent);
                }
            } else {
                idle.push(percent);
            }
        }
    }
    let most_busy = busy.iter().copied().fold(0.0, f64::max);
    let most_idle = idle[1..].iter().copied().fold(0.0, f64::max);
    assert!(
        most_busy > 30.0 && most_idle < most_busy / 3.0,
        "busy {busy:?}, idle {idle:?}"
    );
}

/// Real guest: what it writes to a hot-plugged disk (typed into its console)
/// shows in that disk's `writeBytes`. Slow: run alone with
/// `cargo test --test stats disk`.
#[tokio::test]
async fn a_real_guests_disk_writes_show_in_its_stats() {
    let server = TestServer::real(vman::config::Accel::Tcg).await;
    server
        .guest_template("writer", "console=ttyS0 quiet panic=-1")
        .await;
    let vm = server.create_vm("writer-1", "writer").await;
    server.start_vm(&vm).await;
    let serial = server.run_dir(&vm).join("serial.log");
    wait_for_line(&serial, "VMAN-GUEST-READY", Duration::from_secs(60)).await;
    let disk = server.create_disk("scratch", 16 << 20, "QCOW2").await;
    server
        .ok(
            "mutation($d: ID!, $v: ID!) { attachDisk(diskId: $d, vmId: $v) { disk { attachment } } }",
            json!({"d": disk, "v": vm}),
        )
        .await;
    wait_for_line(
        &serial,
        "VMAN-GUEST-DISK-ADDED vda",
        Duration::from_secs(30),
    )
    .await;
    let written = |stats: &Value| {
        stats["vm"]["stats"]["disks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == "scratch")
            .map(|d| d["writeBytes"].as_i64().unwrap())
    };
    let query = "query($id: ID) { vm(id: $id) { stats { disks { name writeBytes } } } }";
    let first = server.ok(query, json!({"id": vm})).await;
    let before = written(&first).unwrap_or_else(|| panic!("the disk's figures in {first}"));
    server
        .ok(
            "mutation($vm: ID!, $data: String!) { sendConsoleInput(vmId: $vm, data: $data) { bytes } }",
            json!({"vm": vm, "data": "dd if=/dev/zero of=/dev/vda bs=1M count=4 conv=fsync && echo WROTE-$((2*21))\n"}),
        )
        .await;
    wait_for_line(&serial, "WROTE-42", Duration::from_secs(30)).await;
    let after = written(&server.ok(query, json!({"id": vm})).await).expect("the disk's figures");
    assert!(after - before >= 4 << 20, "before {before}, after {after}");
}
