//! Issue 21's figures, two nodes on one PostgreSQL database, in one run:
//! - a QEMU on host B SIGKILLed → `CRASHED` at a websocket subscriber on
//!   node A, p50 and p99 over N kills (default 20), beside the same at a
//!   subscriber on node B (the single-node figure);
//! - mutations per second (`updateVm` of a stopped VM on host B: database
//!   work only) sent to node A, which carries them to B, beside the same
//!   sent to B itself, from 4 clients at once (default 400 in all).
//!
//! `cargo bench --bench cluster` (add `-- --kills N --mutations N`). Both
//! nodes run in this one process (node B drives real QEMU, KVM when usable;
//! its VM has no guest OS), so they share its two cores with the clients.
//! Without `VMANTEST_POSTGRES_URL` a throwaway PostgreSQL cluster is started
//! (scripts/pg-test-cluster.sh).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{TestServer, WsClient, postgres::Backend};
use serde_json::json;
use vman::config::Accel;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn arg(name: &str, default: usize) -> usize {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Waits for `to` in subscription `s` of `ws`; the time since `since`.
async fn until(ws: &mut WsClient, to: &str, since: Instant) -> Duration {
    while ws.next_data("s").await["vmStateChanged"]["to"] != to {}
    since.elapsed()
}

#[tokio::main]
async fn main() {
    let kills = arg("--kills", 20);
    let mutations = arg("--mutations", 400);
    let accel = if common::kvm_usable() {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    let a = TestServer::start_on(Backend::Postgres, |_| {}).await;
    let url = a.app.ctx.config.database.url.clone();
    let b = TestServer::start_on(Backend::Sqlite, |c| {
        c.database.url = url;
        c.dry_run = false;
        c.qemu.accel = accel;
    })
    .await;
    let b_host = b.app.ctx.host_id.to_string();
    b.ok(
        "mutation { createTemplate(input: {name: \"bench\", vcpus: 1, memoryMib: 64}) { template { id } } }",
        json!({}),
    )
    .await;
    let create = "mutation($n: String!, $h: ID!) { createVm(input: {name: $n, templateName: \"bench\", hostId: $h}) { vm { id } } }";
    let vm = b.ok(create, json!({"n": "victim", "h": b_host})).await["createVm"]["vm"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // 1. The crash of a QEMU on B, at subscribers on A and on B.
    let subscribe = async |server: &TestServer| {
        let mut ws = WsClient::connect(&server.ws_url).await;
        ws.subscribe(
            "s",
            "subscription($vm: ID) { vmStateChanged(vmId: $vm) { to } }",
            json!({"vm": vm}),
        )
        .await;
        ws
    };
    let (mut on_a, mut on_b) = (subscribe(&a).await, subscribe(&b).await);
    let (mut at_a, mut at_b) = (Vec::new(), Vec::new());
    for _ in 0..kills {
        // Started through A: carried to B.
        a.ok(
            "mutation($id: ID!) { startVm(id: $id) { vm { state } } }",
            json!({"id": vm}),
        )
        .await;
        let now = Instant::now();
        tokio::join!(
            until(&mut on_a, "RUNNING", now),
            until(&mut on_b, "RUNNING", now)
        );
        let pid = vman::host::qemu::process::read_pidfile(&b.run_dir(&vm).join("qemu.pid"))
            .expect("a pid file");
        let killed = Instant::now();
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let (there, here) = tokio::join!(
            until(&mut on_a, "CRASHED", killed),
            until(&mut on_b, "CRASHED", killed)
        );
        at_a.push(there);
        at_b.push(here);
    }
    for (what, times) in [
        ("at a subscriber on node A (another host's node)", &mut at_a),
        (
            "at a subscriber on node B (its own: the single-node figure)",
            &mut at_b,
        ),
    ] {
        times.sort();
        println!(
            "SIGKILL of a QEMU on host B -> CRASHED {what} ({kills} kills, accel {accel:?}): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(percentile(times, 0.5)),
            ms(percentile(times, 0.99)),
            ms(*times.last().unwrap())
        );
    }
    drop((on_a, on_b));

    // 2. Mutations of a VM on B, sent to B and sent to A.
    let target = b.ok(create, json!({"n": "target", "h": b_host})).await["createVm"]["vm"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let update = "mutation($id: ID!, $d: String!) { updateVm(id: $id, input: {description: $d}) { vm { description } } }";
    const CLIENTS: usize = 4;
    for (what, server) in [("to node B (local)", &b), ("to node A (carried to B)", &a)] {
        let started = Instant::now();
        let clients = (0..CLIENTS).map(|client| {
            let target = target.clone();
            async move {
                let mut times = Vec::new();
                for n in 0..mutations / CLIENTS {
                    let sent = Instant::now();
                    server
                        .ok(update, json!({"id": target, "d": format!("{client}-{n}")}))
                        .await;
                    times.push(sent.elapsed());
                }
                times
            }
        });
        let mut times: Vec<Duration> = futures_util::future::join_all(clients)
            .await
            .into_iter()
            .flatten()
            .collect();
        let elapsed = started.elapsed();
        times.sort();
        println!(
            "updateVm of a VM on host B, sent {what}, {CLIENTS} clients: {:.0} mutations/s, p50 {:.1} ms, p99 {:.1} ms ({} mutations)",
            times.len() as f64 / elapsed.as_secs_f64(),
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            times.len()
        );
    }
}
