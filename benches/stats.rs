//! Issue 17's stats figures, in one run (dry-run host: synthetic counters,
//! real database, real sampler code):
//! - one `Vm.stats` sample of one VM (the database reads for its disk names
//!   and NICs, the port's counters), p50 and p99 over many;
//! - one sample of each of 100 running VMs (what a `/metrics` scrape or a
//!   `vmStats` subscription without `vmId` costs per interval);
//! - the floor: a `{ __typename }` request on the same server.
//!
//! On a real host a sample adds reads of `/proc/<pid>/stat`, `statm` and
//! `/sys/class/net/<tap>/statistics`, and one QMP `query-blockstats` round
//! trip (see `vman_qmp_command_duration_seconds`).
//!
//! `cargo bench --bench stats`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::json;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what}: p50 {:.3} ms, p99 {:.3} ms over {}",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.len()
    );
}

#[tokio::main]
async fn main() {
    let server = TestServer::start().await;
    server.create_template("t").await;
    let mut vms = Vec::new();
    for i in 0..100 {
        let id = server.create_vm(&format!("vm-{i}"), "t").await;
        server.start_vm(&id).await;
        vms.push(id);
    }
    let ctx = &server.app.ctx;
    let rows: Vec<vman::vm::Vm> = {
        use sea_orm::EntityTrait;
        vman::vm::model::Entity::find().all(&ctx.db).await.unwrap()
    };

    let mut floor = Vec::new();
    for _ in 0..500 {
        let start = Instant::now();
        server.post("{ __typename }", json!({})).await;
        floor.push(start.elapsed());
    }
    report("floor: { __typename } over HTTP", floor);

    let mut one = Vec::new();
    for _ in 0..2000 {
        let start = Instant::now();
        vman::stats::sample(ctx, &rows[0], None)
            .await
            .unwrap()
            .unwrap();
        one.push(start.elapsed());
    }
    report("one VM's sample", one);

    let mut hundred = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        for vm in &rows {
            vman::stats::sample(ctx, vm, None).await.unwrap().unwrap();
        }
        hundred.push(start.elapsed());
    }
    report("100 VMs sampled, one after another", hundred);

    let mut scrape = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        let text = vman::stats::prometheus_series(ctx).await;
        assert_eq!(text.matches("vman_vm_cpu_seconds_total{").count(), 100);
        scrape.push(start.elapsed());
    }
    report("the per-VM /metrics series of 100 VMs", scrape);
}
