//! Live figures of running VMs for dashboards: CPU, memory, disk and NIC
//! counters ([`sample`]), sampled by one task per VM while anyone watches
//! ([`Samplers`]), and the host's own figures ([`host`]).
//!
//! A sample costs a few `/proc` and `/sys` reads and one QMP
//! `query-blockstats`; a sampler runs only while a subscriber holds it, at
//! the shortest interval any of its subscribers asked for, and stops when
//! the last one leaves.

pub mod graphql;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tokio::sync::{Notify, watch};

use crate::{
    context::Ctx,
    disk::model as disk_model,
    error::ApiResult,
    host::LinkCounters,
    vm::{Vm, VmState},
};

/// How long a sample waits for QEMU's `query-blockstats`.
const QMP_TIMEOUT: Duration = Duration::from_secs(1);

/// One VM's figures at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct VmStats {
    pub vm_id: String,
    pub sampled_at: DateTime<Utc>,
    pub uptime_seconds: f64,
    pub cpu_seconds: f64,
    /// CPU use since the sample before, in percent of one host CPU (so up
    /// to 100 × vCPUs); `None` for a first sample.
    pub cpu_percent: Option<f64>,
    pub memory_rss_bytes: u64,
    /// The guest's memory size.
    pub memory_bytes: u64,
    pub disks: Vec<DiskStats>,
    pub nics: Vec<NicStats>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskStats {
    pub disk_id: String,
    pub name: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicStats {
    pub nic_id: String,
    pub tap: String,
    pub counters: LinkCounters,
}

/// Samples `vm` now (`None`: no QEMU of it runs). With the sample before,
/// the CPU use between the two is computed.
pub async fn sample(ctx: &Ctx, vm: &Vm, before: Option<&VmStats>) -> ApiResult<Option<VmStats>> {
    let Some(counters) = ctx.hypervisor.counters(&vm.id, QMP_TIMEOUT).await else {
        return Ok(None);
    };
    let sampled_at = Utc::now();
    let names: HashMap<String, String> = disk_model::Entity::find()
        .filter(disk_model::Column::VmId.eq(&vm.id))
        .all(&ctx.db)
        .await?
        .into_iter()
        .map(|d| (d.id, d.name))
        .collect();
    let disks = counters
        .disks
        .into_iter()
        .map(|d| DiskStats {
            name: names.get(&d.disk_id).cloned().unwrap_or_default(),
            disk_id: d.disk_id,
            read_bytes: d.read_bytes,
            write_bytes: d.write_bytes,
            read_ops: d.read_ops,
            write_ops: d.write_ops,
        })
        .collect();
    let nics = crate::network::nic::specs(ctx, &vm.id)
        .await?
        .into_iter()
        .filter_map(|nic| {
            let counters = ctx.network.link_counters(&nic.tap)?;
            Some(NicStats {
                nic_id: nic.id,
                tap: nic.tap,
                counters,
            })
        })
        .collect();
    let cpu_percent = before.and_then(|b| {
        let wall = (sampled_at - b.sampled_at).num_microseconds()? as f64 / 1e6;
        (wall > 0.0 && counters.cpu_seconds >= b.cpu_seconds)
            .then(|| (counters.cpu_seconds - b.cpu_seconds) / wall * 100.0)
    });
    Ok(Some(VmStats {
        vm_id: vm.id.clone(),
        sampled_at,
        uptime_seconds: counters.uptime_seconds,
        cpu_seconds: counters.cpu_seconds,
        cpu_percent,
        memory_rss_bytes: counters.rss_bytes,
        memory_bytes: (vm.memory_mib.max(0) as u64) << 20,
        disks,
        nics,
    }))
}

/// Whether a VM in `state` has a QEMU worth sampling.
pub fn samplable(state: VmState) -> bool {
    matches!(
        state,
        VmState::Running | VmState::Paused | VmState::Starting | VmState::Stopping
    )
}

type Latest = Option<Arc<VmStats>>;

/// One VM's sampler, shared by its subscribers.
struct Shared {
    latest: watch::Sender<Latest>,
    /// Each subscriber's interval, by subscriber number: the sampler runs at
    /// the shortest.
    intervals: Mutex<BTreeMap<u64, Duration>>,
    next: Mutex<u64>,
    changed: Arc<Notify>,
}

/// The samplers that run, one per VM watched.
pub struct Samplers {
    ctx: Ctx,
    running: Mutex<HashMap<String, Weak<Shared>>>,
}

/// A subscriber's hold on a VM's sampler: it runs while any is held.
pub struct Watch {
    shared: Arc<Shared>,
    number: u64,
    pub latest: watch::Receiver<Latest>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shared
            .intervals
            .lock()
            .expect("intervals")
            .remove(&self.number);
        self.shared.changed.notify_one();
    }
}

impl Samplers {
    pub fn new(ctx: Ctx) -> Samplers {
        Samplers {
            ctx,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// How many samplers run now (also the gauge `vman_stats_samplers`).
    pub fn count(&self) -> usize {
        self.running
            .lock()
            .expect("samplers")
            .values()
            .filter(|s| s.strong_count() > 0)
            .count()
    }

    /// Watches `vm_id` at `interval` (or faster, when another subscriber
    /// asked for faster): starts its sampler if none runs.
    pub fn watch(&self, vm_id: &str, interval: Duration) -> Watch {
        let mut running = self.running.lock().expect("samplers");
        running.retain(|_, s| s.strong_count() > 0);
        let shared = match running.get(vm_id).and_then(Weak::upgrade) {
            Some(shared) => shared,
            None => {
                let shared = Arc::new(Shared {
                    latest: watch::channel(None).0,
                    intervals: Mutex::new(BTreeMap::new()),
                    next: Mutex::new(0),
                    changed: Arc::new(Notify::new()),
                });
                running.insert(vm_id.to_string(), Arc::downgrade(&shared));
                tokio::spawn(run(
                    self.ctx.clone(),
                    vm_id.to_string(),
                    Arc::downgrade(&shared),
                    shared.changed.clone(),
                ));
                shared
            }
        };
        let number = {
            let mut next = shared.next.lock().expect("subscriber numbers");
            *next += 1;
            *next
        };
        shared
            .intervals
            .lock()
            .expect("intervals")
            .insert(number, interval);
        shared.changed.notify_one();
        Watch {
            latest: shared.latest.subscribe(),
            shared,
            number,
        }
    }
}

/// One VM's sampler: samples at the shortest interval its subscribers ask
/// for, until the last one leaves or vman stops. A subscriber that comes or
/// goes wakes it to look at the interval again, not to sample (a thousand
/// subscribers joining cost no extra sample: each gets the latest one from
/// the channel).
async fn run(ctx: Ctx, vm_id: String, shared: Weak<Shared>, changed: Arc<Notify>) {
    metrics::gauge!("vman_stats_samplers").increment(1.0);
    let mut before: Option<VmStats> = None;
    let mut sampled_at: Option<tokio::time::Instant> = None;
    loop {
        let Some(strong) = shared.upgrade() else {
            break;
        };
        let period = strong
            .intervals
            .lock()
            .expect("intervals")
            .values()
            .min()
            .copied();
        let Some(period) = period else { break };
        let now = tokio::time::Instant::now();
        let due = sampled_at.map_or(now, |at| at + period);
        if now >= due {
            let vm = crate::events::find_in::<crate::vm::model::Entity, _>(&ctx.db, "VM", &vm_id)
                .await
                .ok();
            let sampled = match &vm {
                Some(vm) if samplable(vm.state) => {
                    sample(&ctx, vm, before.as_ref()).await.unwrap_or_else(|e| {
                        tracing::debug!(vm = %vm_id, error = %e, "sampling a VM");
                        None
                    })
                }
                _ => None,
            };
            before = sampled.clone();
            sampled_at = Some(now);
            strong.latest.send_replace(sampled.map(Arc::new));
        }
        let next = sampled_at.map_or(now, |at| at + period);
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        drop(strong);
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
            _ = notified => {}
        }
    }
    metrics::gauge!("vman_stats_samplers").decrement(1.0);
}

/// The host's own figures.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFigures {
    pub cpus: u32,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub storage_free_bytes: Option<u64>,
    pub load1: Option<f64>,
}

/// Reads the host's figures: CPUs, `/proc/meminfo`, the storage
/// directory's free space, `/proc/loadavg`.
pub fn host(ctx: &Ctx) -> HostFigures {
    figures(&ctx.config)
}

/// [`host`], for a node that has its config only (`cluster`).
pub fn figures(config: &crate::config::Config) -> HostFigures {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let storage_free_bytes = rustix::fs::statvfs(config.storage_dir())
        .ok()
        .map(|s| s.f_bavail * s.f_frsize);
    let load1 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok());
    HostFigures {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_total_bytes: kib("MemTotal:"),
        memory_available_bytes: kib("MemAvailable:"),
        storage_free_bytes,
        load1,
    }
}

/// The per-VM series of `/metrics`, in Prometheus' text format: sampled
/// now, for the VMs that run now, so a stopped or deleted VM's series go
/// with it (a registry would keep their last values).
pub async fn prometheus_series(ctx: &Ctx) -> String {
    use std::fmt::Write;
    let vms = crate::vm::model::Entity::find()
        .filter(crate::vm::model::Column::State.is_in([VmState::Running, VmState::Paused]))
        .all(&ctx.db)
        .await
        .unwrap_or_default();
    let mut cpu = String::new();
    let mut rss = String::new();
    let mut disk_read = String::new();
    let mut disk_write = String::new();
    let mut nic_rx = String::new();
    let mut nic_tx = String::new();
    for vm in &vms {
        let Ok(Some(stats)) = sample(ctx, vm, None).await else {
            continue;
        };
        let labels = format!("vm=\"{}\",id=\"{}\"", escape(&vm.name), escape(&vm.id));
        let _ = writeln!(
            cpu,
            "vman_vm_cpu_seconds_total{{{labels}}} {}",
            stats.cpu_seconds
        );
        let _ = writeln!(
            rss,
            "vman_vm_memory_rss_bytes{{{labels}}} {}",
            stats.memory_rss_bytes
        );
        for d in &stats.disks {
            let l = format!("{labels},disk=\"{}\"", escape(&d.name));
            let _ = writeln!(
                disk_read,
                "vman_vm_disk_read_bytes_total{{{l}}} {}",
                d.read_bytes
            );
            let _ = writeln!(
                disk_write,
                "vman_vm_disk_write_bytes_total{{{l}}} {}",
                d.write_bytes
            );
        }
        for n in &stats.nics {
            let l = format!("{labels},tap=\"{}\"", escape(&n.tap));
            let _ = writeln!(
                nic_rx,
                "vman_vm_nic_rx_bytes_total{{{l}}} {}",
                n.counters.rx_bytes
            );
            let _ = writeln!(
                nic_tx,
                "vman_vm_nic_tx_bytes_total{{{l}}} {}",
                n.counters.tx_bytes
            );
        }
    }
    let mut out = String::new();
    for (name, kind, help, lines) in [
        (
            "vman_vm_cpu_seconds_total",
            "counter",
            "CPU time of a running VM's QEMU, in seconds.",
            cpu,
        ),
        (
            "vman_vm_memory_rss_bytes",
            "gauge",
            "Resident memory of a running VM's QEMU.",
            rss,
        ),
        (
            "vman_vm_disk_read_bytes_total",
            "counter",
            "Bytes a running VM read from a disk.",
            disk_read,
        ),
        (
            "vman_vm_disk_write_bytes_total",
            "counter",
            "Bytes a running VM wrote to a disk.",
            disk_write,
        ),
        (
            "vman_vm_nic_rx_bytes_total",
            "counter",
            "Bytes a running VM's tap received (the guest sent).",
            nic_rx,
        ),
        (
            "vman_vm_nic_tx_bytes_total",
            "counter",
            "Bytes a running VM's tap sent (the guest received).",
            nic_tx,
        ),
    ] {
        if !lines.is_empty() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            out.push_str(&lines);
        }
    }
    out
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
