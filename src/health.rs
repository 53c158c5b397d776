//! Readiness checks, shared by `/readyz` and the `health` query.

use std::path::Path;

use serde::Serialize;

use crate::app::App;

/// One readiness check.
#[derive(Debug, Clone, Serialize, async_graphql::SimpleObject)]
pub struct HealthCheck {
    /// What was checked: `database`, `writable <dir>`, `free space <dir>`,
    /// `binary <program>`, `network capabilities`.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found, or why it failed.
    pub detail: String,
}

/// Whether vman is ready to serve, as `/readyz` reports it.
#[derive(Debug, Clone, Serialize, async_graphql::SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// True when every check passed.
    pub ready: bool,
    /// Host steps are planned and recorded, not executed.
    pub dry_run: bool,
    /// Every check, passed or not.
    pub checks: Vec<HealthCheck>,
    /// What the host's networking can do (probed at start): VLAN links are
    /// needed only by networks with an uplink, taps by NICs. An unsupported
    /// capability does not make vman unready; the features that need it fail
    /// with HOST_ERROR naming it.
    pub network: crate::host::NetworkCapabilities,
    /// What could not be re-adopted at start (VMs, orphan run directories).
    /// Reported, never silently dropped; it does not make vman unready.
    pub adoption_problems: Vec<String>,
}

pub async fn check(root: &App) -> Health {
    let app = &root.ctx;
    let mut checks = Vec::new();
    checks.push(match app.db.ping().await {
        Ok(()) => ok("database", format!("{} reachable", app.config.database())),
        Err(e) => fail("database", e.to_string()),
    });
    for dir in app.config.data_dirs() {
        checks.push(writable(&dir));
    }
    // Mutations that add something are refused below these (STORAGE_FULL).
    checks.push(free_space(
        &app.config.data_dir,
        crate::storage::DATABASE_HEADROOM,
        "the database's headroom",
    ));
    checks.push(free_space(
        &app.config.storage_dir(),
        app.config.storage.min_free_bytes.max(1),
        "storage.min_free_bytes",
    ));
    if !app.config.dry_run {
        for binary in [&app.config.qemu.binary, &app.config.qemu.img_binary] {
            let name = format!("binary {}", binary.display());
            checks.push(match which::which(binary) {
                Ok(path) => ok(&name, format!("found at {}", path.display())),
                Err(_) => fail(
                    &name,
                    "not found: install qemu-system-x86 and qemu-utils, or run with --dry-run"
                        .into(),
                ),
            });
        }
    }
    let network = app.network.capabilities();
    let describe = |c: &crate::host::Capability| match c.supported {
        true => "supported".to_string(),
        false => format!("unsupported ({})", c.detail),
    };
    checks.push(ok(
        "network capabilities",
        format!(
            "{}; VLAN links: {}; taps: {}",
            if app.config.dry_run {
                "dry run"
            } else {
                "netlink"
            },
            describe(&network.vlan_links),
            describe(&network.taps)
        ),
    ));
    Health {
        ready: checks.iter().all(|c| c.ok),
        network,
        dry_run: app.config.dry_run,
        checks,
        adoption_problems: root.adoption_problems.list(),
    }
}

fn writable(dir: &Path) -> HealthCheck {
    let name = format!("writable {}", dir.display());
    let probe = dir.join(format!(".vman-probe-{}", std::process::id()));
    match std::fs::write(&probe, b"probe").and_then(|()| std::fs::remove_file(&probe)) {
        Ok(()) => ok(&name, "ok".into()),
        Err(e) => fail(&name, e.to_string()),
    }
}

/// Whether the filesystem of `dir` has at least `needed` bytes free.
fn free_space(dir: &Path, needed: u64, why: &str) -> HealthCheck {
    let name = format!("free space {}", dir.display());
    match crate::storage::free_bytes(dir) {
        Some(free) if free >= needed => ok(&name, format!("{free} bytes free")),
        Some(free) => fail(
            &name,
            format!("{free} bytes free; {why} needs at least {needed}"),
        ),
        None => fail(&name, "cannot read the filesystem's free space".into()),
    }
}

fn ok(name: &str, detail: String) -> HealthCheck {
    HealthCheck {
        name: name.to_string(),
        ok: true,
        detail,
    }
}

fn fail(name: &str, detail: String) -> HealthCheck {
    HealthCheck {
        name: name.to_string(),
        ok: false,
        detail,
    }
}
