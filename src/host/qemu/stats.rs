//! What a running QEMU has used: its process's CPU time and resident memory
//! from `/proc`, and each disk's I/O from QMP `query-blockstats`. Reads only.

use std::time::Duration;

use super::{QemuHypervisor, argv};
use crate::host::{DiskCounters, VmCounters};

impl QemuHypervisor {
    pub(super) async fn counters(&self, vm_id: &str, timeout: Duration) -> Option<VmCounters> {
        let vm = self.get(vm_id)?;
        if vm.process.has_exited() {
            return None;
        }
        let mut counters = process_counters(vm.process.pid)?;
        counters.disks = tokio::time::timeout(
            timeout,
            vm.qmp_ready()
                .await
                .execute_json("query-blockstats", &serde_json::Value::Null),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|reply| disk_counters(&reply))
        .unwrap_or_default();
        Some(counters)
    }
}

/// CPU time, resident memory and age of process `pid`, from `/proc`.
pub(crate) fn process_counters(pid: i32) -> Option<VmCounters> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    // SAFETY: sysconf only reads a system constant.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    parse_counters(&stat, &statm, &uptime, ticks as f64, page as u64)
}

fn parse_counters(
    stat: &str,
    statm: &str,
    uptime: &str,
    ticks: f64,
    page: u64,
) -> Option<VmCounters> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // fields[0] is field 3 of proc(5) (state): field n is fields[n - 3].
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let cpu_ticks = field(14)? + field(15)?;
    let started_ticks = field(22)?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let host_up: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    Some(VmCounters {
        cpu_seconds: cpu_ticks as f64 / ticks,
        rss_bytes: resident_pages * page,
        uptime_seconds: (host_up - started_ticks as f64 / ticks).max(0.0),
        disks: Vec::new(),
    })
}

/// Per disk (by the disk id in its `dev-<id>` device), from a `query-blockstats` reply.
fn disk_counters(reply: &serde_json::Value) -> Vec<DiskCounters> {
    reply
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|block| {
            let qdev = block.get("qdev")?.as_str()?;
            // "/machine/peripheral/dev-<id>/virtio-backend", or the bare id.
            let id = qdev
                .strip_prefix("/machine/peripheral/")
                .unwrap_or(qdev)
                .split('/')
                .next()?
                .strip_prefix(argv::device_id("").as_str())?
                .to_string();
            let stats = block.get("stats")?;
            let n = |key: &str| {
                stats
                    .get(key)
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0)
            };
            Some(DiskCounters {
                disk_id: id,
                read_bytes: n("rd_bytes"),
                write_bytes: n("wr_bytes"),
                read_ops: n("rd_operations"),
                write_ops: n("wr_operations"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_counters_are_read_after_the_command_name() {
        let stat =
            "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 0 0";
        let counters = parse_counters(stat, "9000 2048 100 1 0 500 0", "30.50 60.00", 100.0, 4096)
            .expect("parsed");
        assert_eq!(counters.cpu_seconds, 3.0);
        assert_eq!(counters.rss_bytes, 2048 * 4096);
        assert!(
            (counters.uptime_seconds - 20.5).abs() < 1e-9,
            "{counters:?}"
        );
        assert_eq!(parse_counters("garbage", "", "", 100.0, 4096), None);
    }

    #[test]
    fn blockstats_are_read_per_vman_disk() {
        let reply = serde_json::json!([
            {"device": "", "qdev": "/machine/peripheral/dev-d1/virtio-backend",
             "stats": {"rd_bytes": 10, "wr_bytes": 20, "rd_operations": 1, "wr_operations": 2}},
            {"device": "", "qdev": "/machine/peripheral-anon/device[0]", "stats": {}},
        ]);
        assert_eq!(
            disk_counters(&reply),
            vec![DiskCounters {
                disk_id: "d1".into(),
                read_bytes: 10,
                write_bytes: 20,
                read_ops: 1,
                write_ops: 2,
            }]
        );
    }
}
