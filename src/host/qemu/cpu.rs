//! Which `-cpu` model a KVM guest gets. `host` passes the host's CPU through,
//! but some hosts (seen on a nested AMD EPYC) advertise the
//! `arch-capabilities` feature and then refuse to set its MSR: QEMU aborts
//! ("failed to set MSR 0x10a") at every start. So the model is probed once
//! per QEMU binary, with a throwaway QEMU that never runs guest code, and
//! the first model that comes up is used. This module only reads the host.

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, OnceLock},
    time::Duration,
};

/// Tried in order: the host's CPU, then the host's CPU without the feature
/// such hosts cannot set.
const CANDIDATES: [&str; 2] = ["host", "host,-arch-capabilities"];

/// How long a probe QEMU may take to come up and quit.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `-cpu` value for KVM guests of `binary` on this host. When no
/// candidate comes up (no KVM, a broken binary), `host`: the start then
/// fails with QEMU's own words, which say more than a probe could.
pub fn kvm_cpu_model(binary: &Path) -> String {
    static PROBED: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    let probed = PROBED.get_or_init(Default::default);
    if let Some(model) = probed.lock().expect("cpu probes").get(binary) {
        return model.clone();
    }
    let model = CANDIDATES
        .iter()
        .find(|cpu| comes_up(binary, cpu))
        .unwrap_or(&CANDIDATES[0])
        .to_string();
    if model != CANDIDATES[0] {
        tracing::info!(cpu = %model, "this host's KVM cannot run -cpu host; using a model it can");
    }
    probed
        .lock()
        .expect("cpu probes")
        .insert(binary.to_path_buf(), model.clone());
    model
}

/// Whether a paused KVM QEMU with `-cpu <cpu>` comes up and quits cleanly
/// (the MSRs are set when its CPU is reset, before any guest code runs).
fn comes_up(binary: &Path, cpu: &str) -> bool {
    let child = Command::new(binary)
        .args(["-accel", "kvm", "-cpu", cpu, "-machine", "q35", "-m", "16"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-S"])
        .args(["-qmp", "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        // QEMU reads these after its greeting; a QEMU that died already
        // makes the write fail, and its exit status says so.
        let _ = stdin.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n");
    }
    let (done, exited) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = done.send(child.wait().map(|s| s.success()).unwrap_or(false));
    });
    match exited.recv_timeout(PROBE_TIMEOUT) {
        Ok(success) => success,
        Err(_) => {
            // A QEMU that neither quits nor dies: end it, and do not use the model.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chosen_model_comes_up_on_this_host() {
        let Ok(binary) = which::which("qemu-system-x86_64") else {
            println!("skipped: no qemu-system-x86_64");
            return;
        };
        if !super::super::argv::kvm_usable() {
            println!("skipped: /dev/kvm is not usable");
            return;
        }
        let model = kvm_cpu_model(&binary);
        assert!(CANDIDATES.contains(&model.as_str()));
        assert!(comes_up(&binary, &model), "-cpu {model} does not come up");
        assert!(!comes_up(&binary, "no-such-cpu-model"));
    }
}
