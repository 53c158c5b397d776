//! The QEMU command line of one VM, as a pure function of its [`VmSpec`].
//!
//! Owns the argv, the names of the files in a VM's run directory and the ids
//! QEMU knows a VM's parts by (root ports, block nodes, devices), so the
//! hot-plug sequences in [`super::hotplug`] and the command line cannot drift
//! apart. It never touches the host: the hypervisor spawns what this returns.
//!
//! Quoting. QEMU splits option values (`key=value,key=value`) on `,` and reads
//! `,,` as a literal comma; `=` inside a value needs nothing. Every value that
//! comes from a name, an id or a path goes through [`escape`]. Arguments QEMU
//! takes whole — `-uuid`, `-pidfile`, `-kernel`, `-initrd`, `-append` — are
//! passed as they are: escaping them would change the file name or the kernel
//! command line (checked on QEMU 7.2: `-kernel 'a,,b'` opens `a,,b`).
//!
//! Disks. Each disk is two `-blockdev` nodes with an explicit driver (a `file`
//! node and a `qcow2`/`raw` node on it), so QEMU never probes a format, plus a
//! `virtio-blk-pci` device on its own PCIe root port (q35 has no hot-plug on
//! `pcie.0` itself).
//!
//! NICs. Each NIC is a `-netdev tap` on the tap the network port made
//! (`ifname=`, `script=no,downscript=no`: QEMU runs no helper, and its
//! sandbox forbids spawning one) plus a device (`virtio-net-pci` by default)
//! with the NIC's MAC, on its own root port after the disks'.
//!
//! Root ports. A VM gets `disks + nics + spare_root_ports` ports, `rp1`,
//! `rp2`, … (chassis and slot equal the index). The cold-plugged disks take
//! the first ones in spec order, then the NICs; [`spare_root_ports`] lists the
//! rest, the hot-plug targets, so a VM always starts with `spare_root_ports`
//! free ports however many disks and NICs it has. QEMU 7.2 fits at most
//! [`MAX_ROOT_PORTS`] on `pcie.0`.

use std::path::{Path, PathBuf};

use crate::host::{BootDevice, DiskSpec, HostStep, NicSpec, VmSpec};

/// Root ports that fit on q35's `pcie.0` next to its built-in devices when
/// QEMU places them (QEMU 7.2 with `-nodefaults`: the 31st is refused with
/// "no slot/function available").
pub const MAX_ROOT_PORTS: u32 = 30;

/// QEMU 7.2 refuses block node names of 32 bytes or more ("Node name too long").
const NODE_NAME_MAX: usize = 31;

/// The accelerator, already resolved (no "try KVM, fall back" here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// The name `-accel` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Host-wide settings the command line depends on (from the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuOptions {
    /// Becomes `argv[0]`.
    pub binary: PathBuf,
    /// qemu-img, for disks and image checks.
    pub img_binary: PathBuf,
    pub accel: Accel,
    /// `-cpu` under KVM (probed: see [`super::cpu`]); TCG keeps QEMU's default.
    pub kvm_cpu: String,
    /// Empty root ports every VM starts with, for hot-plugging disks.
    pub spare_root_ports: u32,
    /// `storage.copy_bytes_per_second`: a disk copy's rate limit (0: none).
    pub copy_bytes_per_second: u64,
}

impl QemuOptions {
    /// The options a config asks for; `accel = "auto"` is KVM when usable, else TCG.
    pub fn from_config(config: &crate::config::Config) -> QemuOptions {
        use crate::config::Accel as Asked;
        let accel = match config.qemu.accel {
            Asked::Kvm => Accel::Kvm,
            Asked::Tcg => Accel::Tcg,
            Asked::Auto if kvm_usable() => Accel::Kvm,
            Asked::Auto => Accel::Tcg,
        };
        QemuOptions {
            binary: config.qemu.binary.clone(),
            img_binary: config.qemu.img_binary.clone(),
            kvm_cpu: match accel {
                Accel::Kvm if !config.dry_run => super::cpu::kvm_cpu_model(&config.qemu.binary),
                Accel::Kvm | Accel::Tcg => "host".to_string(),
            },
            accel,
            spare_root_ports: 4,
            copy_bytes_per_second: config.storage.copy_bytes_per_second,
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

/// How many root ports a VM has: one per cold-plugged disk and NIC plus the spare ones.
pub fn root_ports(spec: &VmSpec, opts: &QemuOptions) -> u32 {
    cold_plugged(spec) + opts.spare_root_ports
}

fn cold_plugged(spec: &VmSpec) -> u32 {
    (spec.disks.len() + spec.nics.len() + usize::from(spec.seed.is_some())) as u32
}

/// The cloud-init seed image in the run directory (written at each start).
pub fn seed_image(run_dir: &Path) -> PathBuf {
    run_dir.join("cidata.img")
}

/// The seed's device id.
pub const SEED_DEVICE: &str = "seed0";

/// The whole command line; `argv[0]` is the binary.
///
/// The VM starts paused (`-S`): vman connects to QMP, then sends `cont`.
/// QEMU's stderr is not redirected here; the spawner sends it to [`qemu_log`].
pub fn argv(spec: &VmSpec, opts: &QemuOptions) -> Vec<String> {
    let run = &spec.run_dir;
    let mut args = Args(vec![opts.binary.display().to_string()]);

    args.option("-name", format!("guest={}", escape(&spec.name)));
    args.option("-uuid", &spec.id);
    args.option("-machine", "q35");
    args.option("-accel", opts.accel.as_str());
    if opts.accel == Accel::Kvm {
        // The default CPU model (qemu64) hides most of the host's features;
        // under TCG the default is the safe choice.
        args.option("-cpu", &opts.kvm_cpu);
    }
    args.option("-m", spec.memory_mib.to_string());
    args.option("-smp", spec.vcpus.to_string());
    args.flags(&["-nodefaults", "-no-user-config", "-display", "none", "-S"]);
    // spawn=deny: QEMU may not fork, so a tap netdev must use script=no.
    args.option(
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    );
    args.option(
        "-chardev",
        format!(
            "socket,id=qmp,path={},server=on,wait=off",
            escape_path(&qmp_socket(run))
        ),
    );
    args.option("-mon", "chardev=qmp,mode=control");
    args.option("-pidfile", pid_file(run).display().to_string());
    // The serial port on a socket vman connects to (its console), with
    // QEMU's own log of every byte: the log goes on while no vman is
    // connected. QEMU opens the log once, at its start (truncating it), and
    // keeps it open, so a vman restart loses nothing from it.
    args.option(
        "-chardev",
        format!(
            "socket,id={SERIAL_CHARDEV},path={},server=on,wait=off,logfile={}",
            escape_path(&console_socket(run)),
            escape_path(&serial_log(run))
        ),
    );
    args.option("-serial", format!("chardev:{SERIAL_CHARDEV}"));

    let ports = root_ports(spec, opts);
    for index in 1..=ports {
        args.option(
            "-device",
            format!(
                "pcie-root-port,id={},chassis={index},bus=pcie.0,slot={index}",
                root_port_id(index)
            ),
        );
    }
    let boot_index = |device: BootDevice| {
        spec.boot_order
            .iter()
            .position(|d| *d == device)
            .map(|index| index.to_string())
    };
    for (disk, index) in spec.disks.iter().zip(1..) {
        args.option("-blockdev", file_node_props(disk).option_value());
        args.option("-blockdev", format_node_props(disk).option_value());
        let port = root_port_id(index);
        let mut device = device_props(disk, &port);
        // DISK is the first disk: the root disk, made with the VM.
        if index == 1
            && let Some(boot) = boot_index(BootDevice::Disk)
        {
            device.0.push(("bootindex", boot));
        }
        args.option("-device", device.device_option_value());
    }
    let first_nic_port = spec.disks.len() as u32 + 1;
    for (nic, index) in spec.nics.iter().zip(first_nic_port..) {
        args.option("-netdev", netdev_props(nic).device_option_value());
        let port = root_port_id(index);
        let mut device = nic_props(nic, &port);
        if index == first_nic_port
            && let Some(boot) = boot_index(BootDevice::Network)
        {
            device.0.push(("bootindex", boot));
        }
        args.option("-device", device.device_option_value());
    }
    // The cloud-init seed, read-only, on the port after the NICs'.
    if spec.seed.is_some() {
        let port = root_port_id(first_nic_port + spec.nics.len() as u32);
        args.option(
            "-blockdev",
            Props(vec![
                ("driver", "file".into()),
                ("filename", seed_image(run).display().to_string()),
                ("node-name", "seed-file".into()),
                ("read-only", "on".into()),
            ])
            .option_value(),
        );
        args.option(
            "-blockdev",
            Props(vec![
                ("driver", "raw".into()),
                ("file", "seed-file".into()),
                ("node-name", "seed".into()),
                ("read-only", "on".into()),
            ])
            .option_value(),
        );
        args.option(
            "-device",
            Props(vec![
                ("driver", "virtio-blk-pci".into()),
                ("drive", "seed".into()),
                ("id", SEED_DEVICE.into()),
                ("bus", port),
            ])
            .device_option_value(),
        );
    }
    // The CD-ROM drive, on the first port of q35's own SATA controller (no
    // root port), always there so a medium can go in while the VM runs.
    let mut cdrom = vec![
        ("driver", "ide-cd".to_string()),
        ("bus", "ide.0".to_string()),
        ("id", CDROM_DEVICE.to_string()),
    ];
    if let Some(medium) = &spec.cdrom {
        args.option(
            "-blockdev",
            Props(vec![
                ("driver", "file".into()),
                ("filename", medium.display().to_string()),
                ("node-name", CDROM_FILE_NODE.into()),
                ("read-only", "on".into()),
            ])
            .option_value(),
        );
        args.option(
            "-blockdev",
            Props(vec![
                ("driver", "raw".into()),
                ("file", CDROM_FILE_NODE.into()),
                ("node-name", CDROM_NODE.into()),
                ("read-only", "on".into()),
            ])
            .option_value(),
        );
        cdrom.push(("drive", CDROM_NODE.to_string()));
    }
    if let Some(boot) = boot_index(BootDevice::Cdrom) {
        cdrom.push(("bootindex", boot));
    }
    args.option("-device", Props(cdrom).device_option_value());

    if let Some(boot) = &spec.boot {
        args.option("-kernel", boot.kernel.display().to_string());
        if let Some(initrd) = &boot.initrd {
            args.option("-initrd", initrd.display().to_string());
        }
        if let Some(cmdline) = &boot.cmdline {
            args.option("-append", cmdline);
        }
    }
    if let Some(tag) = &spec.loadvm {
        // A snapshot's tag is its id (a UUID): nothing to escape.
        args.option("-loadvm", tag);
    }
    args.0
}

struct Args(Vec<String>);

impl Args {
    fn option(&mut self, option: &str, value: impl Into<String>) {
        self.0.push(option.to_string());
        self.0.push(value.into());
    }

    fn flags(&mut self, flags: &[&str]) {
        self.0.extend(flags.iter().map(|flag| flag.to_string()));
    }
}

/// The ids of the root ports left free for hot-plug when the VM starts.
pub fn spare_root_ports(spec: &VmSpec, opts: &QemuOptions) -> Vec<String> {
    let first = cold_plugged(spec) + 1;
    (first..first + opts.spare_root_ports)
        .map(root_port_id)
        .collect()
}

/// The VM's QMP socket. QEMU refuses a Unix socket path of 108 bytes or
/// more, so `<data_dir>/run/<uuid>/qmp.sock` bounds `data_dir` to 57 bytes.
pub fn qmp_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("qmp.sock")
}

/// The VM's console: the socket of its first serial port (the guest's
/// ttyS0), which vman holds. As long as [`qmp_socket`]'s name, so the bound on
/// `data_dir` is the same.
pub fn console_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("tty.sock")
}

/// The id of the serial port's chardev (what `query-chardev` names it).
pub const SERIAL_CHARDEV: &str = "serial0";

/// Written by QEMU once it runs, removed by QEMU when it exits.
pub fn pid_file(run_dir: &Path) -> PathBuf {
    run_dir.join("qemu.pid")
}

/// Everything the guest wrote to its first serial port (ttyS0) since its
/// QEMU started: the console chardev's log, which QEMU truncates at every
/// start and writes whether or not vman is connected.
pub fn serial_log(run_dir: &Path) -> PathBuf {
    run_dir.join("serial.log")
}

/// QEMU's own stdout and stderr, redirected by the spawner.
pub fn qemu_log(run_dir: &Path) -> PathBuf {
    run_dir.join("qemu.log")
}

/// The CD-ROM drive's device id (what `eject` and `blockdev-change-medium` name).
pub const CDROM_DEVICE: &str = "cdrom0";
/// The node names of a medium in the drive at start.
const CDROM_FILE_NODE: &str = "cdrom-file";
const CDROM_NODE: &str = "cdrom-medium";

/// The QMP command that puts `medium` (an ISO image, read-only) into a
/// running VM's CD-ROM drive, replacing what is there, or empties the drive.
pub fn change_medium(vm_id: &str, medium: Option<&Path>) -> HostStep {
    let (command, arguments) = match medium {
        Some(path) => (
            "blockdev-change-medium",
            serde_json::json!({
                "id": CDROM_DEVICE,
                "filename": path.display().to_string(),
                "format": "raw",
                "read-only-mode": "read-only",
            }),
        ),
        None => (
            "eject",
            serde_json::json!({"id": CDROM_DEVICE, "force": true}),
        ),
    };
    HostStep::Qmp {
        vm_id: vm_id.to_string(),
        command: command.into(),
        arguments,
    }
}

/// A root port's device id; `index` counts from 1.
pub fn root_port_id(index: u32) -> String {
    format!("rp{index}")
}

/// The format (`qcow2`/`raw`) node of a disk: what its device's `drive=` names.
pub fn disk_node(disk_id: &str) -> String {
    node_name("disk-", disk_id)
}

/// The protocol (`file`) node under a disk's format node.
pub fn file_node(disk_id: &str) -> String {
    node_name("file-", disk_id)
}

/// A disk's `virtio-blk-pci` device id: the one `device_del` and the
/// `DEVICE_DELETED` event name.
pub fn device_id(disk_id: &str) -> String {
    format!("dev-{disk_id}")
}

/// A NIC's netdev id (what its device's `netdev=` and `netdev_del` name).
pub fn netdev_id(nic_id: &str) -> String {
    format!("net-{nic_id}")
}

/// A NIC's device id: the one `device_del` and `DEVICE_DELETED` name.
pub fn nic_device_id(nic_id: &str) -> String {
    format!("nic-{nic_id}")
}

/// An option value with every `,` doubled, as QEMU's option parsers expect.
pub fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn escape_path(path: &Path) -> String {
    escape(&path.display().to_string())
}

/// A node name that fits QEMU's limit: a UUID with a 5-byte prefix is 41
/// bytes, so the id keeps its last 26 characters without dashes — the random
/// tail of a v7 UUID, which still reads as the end of the disk's id.
fn node_name(prefix: &str, disk_id: &str) -> String {
    let compact: Vec<char> = disk_id.chars().filter(|c| *c != '-').collect();
    let keep = NODE_NAME_MAX - prefix.len();
    let tail: String = compact[compact.len().saturating_sub(keep)..]
        .iter()
        .collect();
    format!("{prefix}{tail}")
}

/// The properties of one QEMU object, in order. Rendered as a command-line
/// option value or as QMP arguments, so cold and hot plug use the same ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Props(Vec<(&'static str, String)>);

impl Props {
    /// `key=value,…` with each value escaped.
    pub(crate) fn option_value(&self) -> String {
        self.0
            .iter()
            .map(|(key, value)| format!("{key}={}", escape(value)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `-device`'s and `-netdev`'s usual spelling: the driver (or netdev
    /// type) first, without its key.
    pub(crate) fn device_option_value(&self) -> String {
        match self.0.split_first() {
            Some((("driver" | "type", driver), rest)) => {
                let mut value = escape(driver);
                for (key, val) in rest {
                    value.push_str(&format!(",{key}={}", escape(val)));
                }
                value
            }
            _ => self.option_value(),
        }
    }

    /// A JSON object of strings; JSON needs no escaping.
    pub(crate) fn qmp_arguments(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(key, value)| (key.to_string(), value.clone().into()))
                .collect(),
        )
    }
}

pub(crate) fn file_node_props(disk: &DiskSpec) -> Props {
    Props(vec![
        ("driver", "file".into()),
        ("filename", disk.path.display().to_string()),
        ("node-name", file_node(&disk.id)),
    ])
}

pub(crate) fn format_node_props(disk: &DiskSpec) -> Props {
    Props(vec![
        ("driver", disk.format.qemu_name().into()),
        ("file", file_node(&disk.id)),
        ("node-name", disk_node(&disk.id)),
    ])
}

pub(crate) fn device_props(disk: &DiskSpec, port: &str) -> Props {
    Props(vec![
        ("driver", "virtio-blk-pci".into()),
        ("drive", disk_node(&disk.id)),
        ("id", device_id(&disk.id)),
        ("bus", port.into()),
    ])
}

pub(crate) fn netdev_props(nic: &NicSpec) -> Props {
    Props(vec![
        ("type", "tap".into()),
        ("id", netdev_id(&nic.id)),
        ("ifname", nic.tap.clone()),
        ("script", "no".into()),
        ("downscript", "no".into()),
    ])
}

pub(crate) fn nic_props(nic: &NicSpec, port: &str) -> Props {
    Props(vec![
        ("driver", nic.model.clone()),
        ("netdev", netdev_id(&nic.id)),
        ("mac", nic.mac.clone()),
        ("id", nic_device_id(&nic.id)),
        ("bus", port.into()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_doubles_every_comma_and_nothing_else() {
        assert_eq!(escape("a,b,,c=d e"), "a,,b,,,,c=d e");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn node_names_fit_qemu_and_keep_the_uuid_tail() {
        let id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        assert_eq!(disk_node(id), "disk-b2c3d47e5f8a9b0c1d2e3f4a5b");
        assert_eq!(file_node(id), "file-b2c3d47e5f8a9b0c1d2e3f4a5b");
        assert_eq!(disk_node(id).len(), NODE_NAME_MAX);
        assert_eq!(disk_node("short"), "disk-short");
        assert_eq!(device_id(id), format!("dev-{id}"));
    }
}
