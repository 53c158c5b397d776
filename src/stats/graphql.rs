//! `Vm.stats` and the `vmStats` subscription.

use std::{collections::HashMap, time::Duration};

use async_graphql::{Context, ID, SimpleObject, Subscription};
use futures_util::Stream;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::VmStats;
use crate::{
    api,
    error::{ApiError, ResultExt},
    validate,
    vm::{VmState, model as vm_model},
};

/// A VM's figures at one instant: what its QEMU has used since it started.
#[derive(SimpleObject, Clone)]
#[graphql(name = "VmStats")]
pub struct VmStatsObject {
    /// The VM.
    pub vm_id: ID,
    /// When these figures were read.
    pub sampled_at: chrono::DateTime<chrono::Utc>,
    /// How long its QEMU has run, in seconds.
    pub uptime_seconds: f64,
    /// CPU time its QEMU has used (all vCPUs and QEMU's own threads), in seconds.
    pub cpu_seconds: f64,
    /// CPU use since the sample before, in percent of one host CPU (up to
    /// 100 × vCPUs); null for a first sample.
    pub cpu_percent: Option<f64>,
    /// Resident memory of its QEMU process.
    pub memory_rss_bytes: api::Bytes,
    /// The guest's memory size.
    pub memory_bytes: api::Bytes,
    /// Each attached disk's I/O since QEMU started (empty when QMP did not answer).
    pub disks: Vec<DiskStatsObject>,
    /// Each NIC's traffic, as its tap counts it (the guest's transmit is the tap's receive).
    pub nics: Vec<NicStatsObject>,
}

/// One disk's I/O since its VM's QEMU started.
#[derive(SimpleObject, Clone)]
#[graphql(name = "DiskStats")]
pub struct DiskStatsObject {
    /// The disk.
    pub disk_id: ID,
    /// Its name.
    pub name: String,
    /// Bytes the guest read.
    pub read_bytes: api::Bytes,
    /// Bytes the guest wrote.
    pub write_bytes: api::Bytes,
    /// Read requests.
    pub read_ops: api::Bytes,
    /// Write requests.
    pub write_ops: api::Bytes,
}

/// One NIC's traffic, as the kernel counts it on its tap.
#[derive(SimpleObject, Clone)]
#[graphql(name = "NicStats")]
pub struct NicStatsObject {
    /// The NIC.
    pub nic_id: ID,
    /// Its tap on the host.
    pub tap: String,
    /// Bytes the tap received (the guest sent).
    pub rx_bytes: api::Bytes,
    /// Bytes the tap sent (the guest received).
    pub tx_bytes: api::Bytes,
    /// Packets the tap received.
    pub rx_packets: api::Bytes,
    /// Packets the tap sent.
    pub tx_packets: api::Bytes,
    /// Packets dropped on receive.
    pub rx_dropped: api::Bytes,
    /// Packets dropped on send.
    pub tx_dropped: api::Bytes,
}

fn bytes(n: u64) -> api::Bytes {
    api::Bytes(n.min(i64::MAX as u64) as i64)
}

impl From<&VmStats> for VmStatsObject {
    fn from(s: &VmStats) -> Self {
        VmStatsObject {
            vm_id: ID(s.vm_id.clone()),
            sampled_at: s.sampled_at,
            uptime_seconds: s.uptime_seconds,
            cpu_seconds: s.cpu_seconds,
            cpu_percent: s.cpu_percent,
            memory_rss_bytes: bytes(s.memory_rss_bytes),
            memory_bytes: bytes(s.memory_bytes),
            disks: s
                .disks
                .iter()
                .map(|d| DiskStatsObject {
                    disk_id: ID(d.disk_id.clone()),
                    name: d.name.clone(),
                    read_bytes: bytes(d.read_bytes),
                    write_bytes: bytes(d.write_bytes),
                    read_ops: bytes(d.read_ops),
                    write_ops: bytes(d.write_ops),
                })
                .collect(),
            nics: s
                .nics
                .iter()
                .map(|n| NicStatsObject {
                    nic_id: ID(n.nic_id.clone()),
                    tap: n.tap.clone(),
                    rx_bytes: bytes(n.counters.rx_bytes),
                    tx_bytes: bytes(n.counters.tx_bytes),
                    rx_packets: bytes(n.counters.rx_packets),
                    tx_packets: bytes(n.counters.tx_packets),
                    rx_dropped: bytes(n.counters.rx_dropped),
                    tx_dropped: bytes(n.counters.tx_dropped),
                })
                .collect(),
        }
    }
}

/// A VM's figures now (for `Vm.stats`); null when no QEMU of it runs.
pub async fn of_vm(
    ctx: &Context<'_>,
    vm: &crate::vm::Vm,
) -> async_graphql::Result<Option<VmStatsObject>> {
    if !super::samplable(vm.state) {
        return Ok(None);
    }
    let stats = super::sample(api::services(ctx), vm, None).await.gql()?;
    Ok(stats.as_ref().map(VmStatsObject::from))
}

#[derive(Default)]
pub struct StatsSubscription;

#[Subscription]
impl StatsSubscription {
    /// Live figures of one VM (or, without `vmId`, of every VM that runs,
    /// each in its own item), every `intervalSeconds`. One sampler per VM
    /// runs however many subscribe, and stops when the last one leaves. A
    /// VM that is not running yields nothing until it runs.
    async fn vm_stats(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The VM; omitted: every running VM.")] vm_id: Option<ID>,
        #[graphql(default = 2, desc = "Seconds between items: 1 to 3600.")] interval_seconds: i32,
    ) -> async_graphql::Result<impl Stream<Item = VmStatsObject> + use<>> {
        if !(1..=3600).contains(&interval_seconds) {
            return Err(ApiError::bad_input(format!(
                "intervalSeconds {interval_seconds} is out of range: 1 to 3600"
            )))
            .gql();
        }
        let interval = Duration::from_secs(interval_seconds as u64);
        let app = api::app(ctx).clone();
        let vm_id = match vm_id {
            Some(id) => {
                let id = validate::id("vmId", &id).gql()?;
                crate::events::find_in::<vm_model::Entity, _>(&app.ctx.db, "VM", &id)
                    .await
                    .gql()?;
                Some(id)
            }
            None => None,
        };
        Ok(async_stream::stream! {
            // Every VM watched, with the time of the last item sent for it.
            let mut watches: HashMap<String, super::Watch> = HashMap::new();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let wanted: Vec<String> = match &vm_id {
                    Some(id) => vec![id.clone()],
                    None => vm_model::Entity::find()
                        .filter(vm_model::Column::State.is_in([
                            VmState::Running,
                            VmState::Paused,
                        ]))
                        .all(&app.ctx.db)
                        .await
                        .map(|vms| vms.into_iter().map(|v| v.id).collect())
                        .unwrap_or_default(),
                };
                watches.retain(|id, _| wanted.contains(id));
                for id in wanted {
                    let watch = watches
                        .entry(id.clone())
                        .or_insert_with(|| app.stats.watch(&id, interval));
                    // One VM's sampler may still take its first sample: wait
                    // for it (briefly). Many VMs' first samples show at the
                    // next tick instead, not one wait after another.
                    if vm_id.is_some() && watch.latest.borrow().is_none() {
                        let _ = tokio::time::timeout(interval / 2, watch.latest.changed()).await;
                    }
                    let latest = watch.latest.borrow_and_update().clone();
                    if let Some(stats) = latest {
                        yield VmStatsObject::from(stats.as_ref());
                    }
                }
            }
        })
    }
}
