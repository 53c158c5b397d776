//! The QEMU command line as a pure function of a VM's spec.
//!
//! Every string that reaches an option value and is not a fixed keyword goes
//! through [`escape`] (QEMU splits option values on commas; `,,` is a literal
//! comma). Disks are `-blockdev` nodes with an explicit driver on every node,
//! so QEMU never probes a format. Cold-plugged disks sit on the first root
//! ports; [`QemuOptions::spare_root_ports`] more stay free for hot-plug.

use std::path::{Path, PathBuf};

use crate::{config::Config, host::VmSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct QemuOptions {
    pub binary: PathBuf,
    pub img_binary: PathBuf,
    pub accel: Accel,
    /// Root ports left free for hot-plugged disks.
    pub spare_root_ports: u32,
}

impl QemuOptions {
    pub fn from_config(config: &Config) -> QemuOptions {
        QemuOptions {
            binary: config.qemu.binary.clone(),
            img_binary: config.qemu.img_binary.clone(),
            accel: match config.qemu.accel {
                crate::config::Accel::Kvm => Accel::Kvm,
                crate::config::Accel::Tcg => Accel::Tcg,
                crate::config::Accel::Auto if kvm_usable() => Accel::Kvm,
                crate::config::Accel::Auto => Accel::Tcg,
            },
            spare_root_ports: 4,
        }
    }
}

/// KVM is usable when /dev/kvm opens read-write.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// QEMU option-value escaping: a comma is written twice.
pub fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn path(p: &Path) -> String {
    escape(&p.display().to_string())
}

pub fn qmp_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("qmp.sock")
}
pub fn pid_file(run_dir: &Path) -> PathBuf {
    run_dir.join("qemu.pid")
}
pub fn serial_log(run_dir: &Path) -> PathBuf {
    run_dir.join("serial.log")
}
pub fn qemu_log(run_dir: &Path) -> PathBuf {
    run_dir.join("qemu.log")
}

/// Root ports are numbered from 1.
pub fn root_port_id(index: u32) -> String {
    format!("rp{index}")
}
pub fn file_node(disk_id: &str) -> String {
    format!("file-{disk_id}")
}
pub fn disk_node(disk_id: &str) -> String {
    format!("disk-{disk_id}")
}
pub fn device_id(disk_id: &str) -> String {
    format!("dev-{disk_id}")
}

/// How many root ports a VM gets: one per cold disk plus the spare ones.
pub fn root_ports(spec: &VmSpec, options: &QemuOptions) -> u32 {
    spec.disks.len() as u32 + options.spare_root_ports
}

pub fn argv(spec: &VmSpec, options: &QemuOptions) -> Vec<String> {
    let run = &spec.run_dir;
    let mut argv: Vec<String> = vec![options.binary.display().to_string()];
    let mut push = |items: &[&str]| argv.extend(items.iter().map(|s| s.to_string()));
    push(&["-machine", &format!("q35,accel={}", options.accel.as_str())]);
    push(&["-m", &spec.memory_mib.to_string()]);
    push(&["-smp", &spec.vcpus.to_string()]);
    push(&["-uuid", &spec.id]);
    push(&["-name", &format!("guest={}", escape(&spec.name))]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    // Paused until vman has connected QMP and sent `cont`.
    push(&["-S"]);
    push(&[
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=qmp,path={},server=on,wait=off",
            path(&qmp_socket(run))
        ),
        "-mon",
        "chardev=qmp,mode=control",
    ]);
    push(&["-pidfile", &pid_file(run).display().to_string()]);
    push(&[
        "-chardev",
        &format!("file,id=serial0,path={}", path(&serial_log(run))),
        "-serial",
        "chardev:serial0",
    ]);
    for port in 1..=root_ports(spec, options) {
        push(&[
            "-device",
            &format!(
                "pcie-root-port,id={},chassis={port},bus=pcie.0",
                root_port_id(port)
            ),
        ]);
    }
    for (index, disk) in spec.disks.iter().enumerate() {
        push(&[
            "-blockdev",
            &format!(
                "driver=file,filename={},node-name={},discard=unmap",
                path(&disk.path),
                file_node(&disk.id)
            ),
            "-blockdev",
            &format!(
                "driver={},file={},node-name={}",
                disk.format.qemu_name(),
                file_node(&disk.id),
                disk_node(&disk.id)
            ),
            "-device",
            &format!(
                "virtio-blk-pci,drive={},id={},bus={}",
                disk_node(&disk.id),
                device_id(&disk.id),
                root_port_id(index as u32 + 1)
            ),
        ]);
    }
    if let Some(boot) = &spec.boot {
        // -kernel/-initrd take a plain path (not an option string); -append is one argument.
        push(&["-kernel", &boot.kernel.display().to_string()]);
        if let Some(initrd) = &boot.initrd {
            push(&["-initrd", &initrd.display().to_string()]);
        }
        if let Some(cmdline) = &boot.cmdline {
            push(&["-append", cmdline]);
        }
    }
    argv
}
