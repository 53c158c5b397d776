//! Tests that touch host networking run in a network namespace of their own,
//! so the host's interfaces are never seen or changed: the test re-executes
//! its own binary under `unshare -n` (the whole process — tokio threads, QEMU
//! children, netlink sockets — lives in the fresh namespace) and the copy
//! inside runs the body.

use std::process::Command;

// Not `VMAN_…`: vman refuses unknown `VMAN_*` variables, and its child
// processes inherit this one.
const INSIDE: &str = "TEST_IN_OWN_NETNS";

/// True inside the test's own namespace (run the body); false outside, after
/// the copy inside has run (it must have passed) or after printing why it
/// could not run. `test` is the test function's name.
pub fn enter(test: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        let lo = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("running ip");
        assert!(lo.success(), "bringing lo up in the test's namespace");
        return true;
    }
    match Command::new("unshare").args(["-n", "--", "true"]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            println!(
                "SKIPPED {test}: unshare -n is not permitted here ({}); it needs CAP_SYS_ADMIN",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return false;
        }
        Err(e) => {
            println!("SKIPPED {test}: cannot run unshare: {e}");
            return false;
        }
    }
    let exe = std::env::current_exe().expect("the test binary");
    let status = Command::new("unshare")
        .arg("-n")
        .arg("--")
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .status()
        .expect("re-running the test under unshare -n");
    assert!(status.success(), "{test} failed in its network namespace");
    false
}

/// Runs `ip` with these arguments (in the test's namespace); it must succeed.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every link of this namespace, from `ip -j -d link show`. (Not
/// `/sys/class/net`: sysfs shows the namespace that mounted it, the host's.)
fn links() -> Vec<serde_json::Value> {
    let out = Command::new("ip")
        .args(["-j", "-d", "link", "show"])
        .output()
        .expect("running ip");
    assert!(out.status.success(), "ip -j -d link show");
    serde_json::from_slice(&out.stdout).expect("ip's JSON")
}

/// The names of this namespace's links, sorted.
pub fn link_names() -> Vec<String> {
    let mut names: Vec<String> = links()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    names
}

/// What `ip` says of a link: None when it does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysLink {
    pub up: bool,
    pub master: Option<String>,
    pub alias: String,
    pub kind: String,
    pub index: u64,
}

impl SysLink {
    pub fn is_bridge(&self) -> bool {
        self.kind == "bridge"
    }
    pub fn is_tap(&self) -> bool {
        self.kind == "tun"
    }
}

pub fn sys_link(name: &str) -> Option<SysLink> {
    let link = links().into_iter().find(|l| l["ifname"] == name)?;
    Some(SysLink {
        up: link["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "UP")),
        master: link["master"].as_str().map(str::to_string),
        alias: link["ifalias"].as_str().unwrap_or_default().to_string(),
        kind: link["linkinfo"]["info_kind"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        index: link["ifindex"].as_u64().unwrap_or_default(),
    })
}
