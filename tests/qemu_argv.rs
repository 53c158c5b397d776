//! The QEMU command line and the hot-plug QMP sequences: golden files, the
//! quoting of hostile paths, and the real QEMU accepting both.
//!
//! Goldens live in `tests/golden/`: `<case>.args` (one argument per line) and
//! `<case>.qmp.json`. `UPDATE_GOLDEN=1 cargo test --test qemu_argv` rewrites
//! them; review the diff before committing.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::{fs::DirBuilderExt, net::UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use vman::{
    disk::DiskFormat,
    host::{
        BootDevice, DirectBoot, DiskSpec, HostStep, NicSpec, Seed, VmSpec,
        qemu::{
            argv::{
                Accel, CDROM_DEVICE, QemuOptions, argv, change_medium, console_socket, device_id,
                disk_node, escape, file_node, pid_file, qemu_log, qmp_socket, serial_log,
                spare_root_ports,
            },
            hotplug::{attach_disk, attach_nic, detach_disk, detach_nic},
        },
    },
};

const VM_ID: &str = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
const DISK_A: &str = "0190a1b3-0000-7aaa-8aaa-aaaaaaaaaaaa";
const DISK_B: &str = "0190a1b3-0001-7bbb-8bbb-bbbbbbbbbbbb";
const DISK_C: &str = "0190a1b3-0002-7ccc-8ccc-cccccccccccc";
const DATA: &str = "/var/lib/vman";
/// A data directory an operator could configure: commas, `=` and a space.
const HOSTILE_DATA: &str = "/srv/vman,id=evil,x=y=z a";
/// A kernel command line with commas and both kinds of quotes.
const HOSTILE_CMDLINE: &str = r#"console=ttyS0 init="/bin/sh -c 'a,b'" vman.x=1,2 q='c,d'"#;

fn options(accel: Accel, spare_root_ports: u32) -> QemuOptions {
    QemuOptions {
        binary: "/usr/bin/qemu-system-x86_64".into(),
        img_binary: "/usr/bin/qemu-img".into(),
        accel,
        kvm_cpu: "host".into(),
        spare_root_ports,
        copy_bytes_per_second: 0,
    }
}

fn disk(data: &str, id: &str, format: DiskFormat) -> DiskSpec {
    DiskSpec {
        id: id.into(),
        path: PathBuf::from(format!("{data}/storage/{id}.{}", format.qemu_name())),
        format,
        size_bytes: 64 << 20,
        backing: None,
    }
}

fn vm(data: &str, name: &str) -> VmSpec {
    VmSpec {
        id: VM_ID.into(),
        name: name.into(),
        vcpus: 1,
        memory_mib: 256,
        disks: vec![],
        nics: vec![],
        boot: None,
        run_dir: PathBuf::from(format!("{data}/run/{VM_ID}")),
        loadvm: None,
        seed: None,
        cdrom: None,
        boot_order: vec![],
    }
}

const NIC_A: &str = "0190a1b4-0000-7aaa-8aaa-aaaaaaaaaaaa";
const NIC_B: &str = "0190a1b4-0001-7bbb-8bbb-bbbbbbbbbbbb";

fn nic(id: &str, mac: &str, model: &str, tap: &str, bridge: &str) -> NicSpec {
    NicSpec {
        id: id.into(),
        mac: mac.into(),
        model: model.into(),
        tap: tap.into(),
        bridge: bridge.into(),
    }
}

fn direct_boot(data: &str, cmdline: &str) -> DirectBoot {
    DirectBoot {
        kernel: format!("{data}/storage/vmlinuz").into(),
        initrd: Some(format!("{data}/storage/initrd.img").into()),
        cmdline: Some(cmdline.into()),
    }
}

fn hostile_vm() -> VmSpec {
    VmSpec {
        disks: vec![
            disk(HOSTILE_DATA, DISK_A, DiskFormat::Qcow2),
            disk(HOSTILE_DATA, DISK_B, DiskFormat::Raw),
        ],
        boot: Some(direct_boot(HOSTILE_DATA, HOSTILE_CMDLINE)),
        // Names are validated to ^[a-z][a-z0-9-]{0,62}$ before they get here;
        // this one is not, to show the escaping holds anyway.
        ..vm(HOSTILE_DATA, "evil,debug-threads=on")
    }
}

// ---------------------------------------------------------------- goldens --

fn check_golden(file: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, actual).unwrap();
        return;
    }
    let expected = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run UPDATE_GOLDEN=1 cargo test --test qemu_argv",
            path.display()
        )
    });
    if expected != actual {
        let mut diff = String::new();
        let (old, new): (Vec<_>, Vec<_>) = (expected.lines().collect(), actual.lines().collect());
        for i in 0..old.len().max(new.len()) {
            match (old.get(i), new.get(i)) {
                (Some(o), Some(n)) if o == n => {}
                (o, n) => {
                    if let Some(o) = o {
                        diff.push_str(&format!("{:>4} - {o}\n", i + 1));
                    }
                    if let Some(n) = n {
                        diff.push_str(&format!("{:>4} + {n}\n", i + 1));
                    }
                }
            }
        }
        panic!(
            "{} differs (- golden, + actual); if the change is intended, run \
             UPDATE_GOLDEN=1 cargo test --test qemu_argv and review the diff:\n{diff}",
            path.display()
        );
    }
}

fn check_args(case: &str, spec: &VmSpec, opts: &QemuOptions) {
    let mut text = argv(spec, opts).join("\n");
    text.push('\n');
    check_golden(&format!("{case}.args"), &text);
}

fn check_qmp(case: &str, value: &Value) {
    let mut text = serde_json::to_string_pretty(value).unwrap();
    text.push('\n');
    check_golden(&format!("{case}.qmp.json"), &text);
}

#[test]
fn golden_minimal() {
    check_args("minimal", &vm(DATA, "minimal"), &options(Accel::Tcg, 0));
}

#[test]
fn golden_minimal_kvm() {
    check_args("minimal_kvm", &vm(DATA, "minimal"), &options(Accel::Kvm, 0));
}

#[test]
fn golden_disks() {
    let spec = VmSpec {
        disks: vec![
            disk(DATA, DISK_A, DiskFormat::Qcow2),
            disk(DATA, DISK_B, DiskFormat::Raw),
        ],
        ..vm(DATA, "with-disks")
    };
    check_args("disks", &spec, &options(Accel::Tcg, 2));
}

/// An installer: the ISO in the CD-ROM drive, booted first, then the root
/// disk, then the network; the second disk and NIC get no bootindex.
#[test]
fn golden_install_media() {
    let spec = VmSpec {
        disks: vec![
            disk(DATA, DISK_A, DiskFormat::Qcow2),
            disk(DATA, DISK_B, DiskFormat::Raw),
        ],
        nics: vec![
            nic(
                NIC_A,
                "02:00:00:00:00:0a",
                "virtio-net-pci",
                "vt0123456789a0",
                "vmbr10",
            ),
            nic(
                NIC_B,
                "02:00:00:00:00:0b",
                "e1000",
                "vt0123456789a1",
                "vmbr10",
            ),
        ],
        cdrom: Some(format!("{DATA}/images/debian-12.iso").into()),
        boot_order: vec![BootDevice::Cdrom, BootDevice::Disk, BootDevice::Network],
        ..vm(DATA, "installer")
    };
    check_args("install_media", &spec, &options(Accel::Tcg, 0));
    // The drive's medium changed on a running VM, and emptied.
    let iso = PathBuf::from(format!("{DATA}/images/other.iso"));
    check_qmp(
        "change_medium",
        &json!([
            step_json(&change_medium(VM_ID, Some(&iso))),
            step_json(&change_medium(VM_ID, None)),
        ]),
    );
}

/// A cloud-init seed: a read-only virtio disk on the port after the NICs';
/// the spare ports follow it.
#[test]
fn golden_cloud_init_seed() {
    let spec = VmSpec {
        disks: vec![disk(DATA, DISK_A, DiskFormat::Qcow2)],
        nics: vec![nic(
            NIC_A,
            "02:00:00:00:00:0a",
            "virtio-net-pci",
            "vt0123456789a0",
            "vmbr10",
        )],
        seed: Some(Box::new(Seed {
            meta_data: "instance-id: \"iid-1\"\n".into(),
            user_data: "#cloud-config\n".into(),
            network_config: None,
        })),
        ..vm(DATA, "seeded")
    };
    let opts = options(Accel::Tcg, 2);
    check_args("cloud_init_seed", &spec, &opts);
    assert_eq!(spare_root_ports(&spec, &opts), ["rp4", "rp5"]);
}

fn step_json(step: &HostStep) -> Value {
    match step {
        HostStep::Qmp {
            command, arguments, ..
        } => json!({"execute": command, "arguments": arguments}),
        other => panic!("not a QMP step: {other:?}"),
    }
}

/// NICs take the root ports after the disks'; the spare ports follow.
#[test]
fn golden_nics() {
    let spec = VmSpec {
        disks: vec![disk(DATA, DISK_A, DiskFormat::Qcow2)],
        nics: vec![
            nic(
                NIC_A,
                "02:00:00:00:00:0a",
                "virtio-net-pci",
                "vt0123456789a0",
                "vmbr10",
            ),
            nic(
                NIC_B,
                "02:00:00:00:00:0b",
                "e1000e",
                "vt0123456789a1",
                "vmbr20",
            ),
        ],
        ..vm(DATA, "with-nics")
    };
    check_args("nics", &spec, &options(Accel::Tcg, 1));
}

#[test]
fn golden_attach_nic() {
    let steps = attach_nic(
        VM_ID,
        &nic(
            NIC_A,
            "02:00:00:00:00:0a",
            "virtio-net-pci",
            "vt0123456789a0",
            "vmbr10",
        ),
        "rp2",
    );
    check_qmp("attach_nic", &serde_json::to_value(steps).unwrap());
}

#[test]
fn golden_detach_nic() {
    let (unplug, release) = detach_nic(
        VM_ID,
        &nic(
            NIC_A,
            "02:00:00:00:00:0a",
            "virtio-net-pci",
            "vt0123456789a0",
            "vmbr10",
        ),
    );
    check_qmp(
        "detach_nic",
        &json!({ "unplug": unplug, "afterDeviceDeleted": release }),
    );
}

#[test]
fn golden_direct_boot() {
    let spec = VmSpec {
        boot: Some(direct_boot(DATA, "console=ttyS0 quiet panic=-1")),
        ..vm(DATA, "direct-boot")
    };
    check_args("direct_boot", &spec, &options(Accel::Tcg, 1));
}

#[test]
fn golden_hostile() {
    check_args("hostile", &hostile_vm(), &options(Accel::Tcg, 1));
}

#[test]
fn golden_attach_disk() {
    let steps = attach_disk(VM_ID, &disk(DATA, DISK_C, DiskFormat::Qcow2), "rp3");
    check_qmp("attach_disk", &serde_json::to_value(steps).unwrap());
}

#[test]
fn golden_attach_disk_hostile() {
    let steps = attach_disk(VM_ID, &disk(HOSTILE_DATA, DISK_C, DiskFormat::Raw), "rp2");
    check_qmp("attach_disk_hostile", &serde_json::to_value(steps).unwrap());
}

#[test]
fn golden_detach_disk() {
    let (unplug, release) = detach_disk(VM_ID, &disk(DATA, DISK_C, DiskFormat::Qcow2));
    check_qmp(
        "detach_disk",
        &json!({ "unplug": unplug, "afterDeviceDeleted": release }),
    );
}

// ---------------------------------------------------------------- quoting --

/// Splits an option value the way QEMU does: on a `,` that is not part of a
/// `,,` pair, which stands for one literal comma.
fn split_option(value: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            (',', Some(',')) => {
                chars.next();
                parts.last_mut().unwrap().push(',');
            }
            (',', _) => parts.push(String::new()),
            (c, _) => parts.last_mut().unwrap().push(c),
        }
    }
    parts
}

/// Options whose value QEMU parses as `key=value,…`.
const PARSED_OPTIONS: &[&str] = &[
    "-name",
    "-machine",
    "-sandbox",
    "-chardev",
    "-mon",
    "-serial",
    "-device",
    "-blockdev",
];

#[test]
fn hostile_paths_never_leave_a_lone_comma() {
    let spec = hostile_vm();
    let args = argv(&spec, &options(Accel::Tcg, 1));
    let escaped_data = escape(HOSTILE_DATA);
    let paths: Vec<String> = [
        qmp_socket(&spec.run_dir),
        console_socket(&spec.run_dir),
        serial_log(&spec.run_dir),
    ]
    .into_iter()
    .chain(spec.disks.iter().map(|d| d.path.clone()))
    .map(|p| p.display().to_string())
    .collect();

    let mut parsed_paths = Vec::new();
    for pair in args[1..].windows(2) {
        let (option, value) = (pair[0].as_str(), pair[1].as_str());
        if !PARSED_OPTIONS.contains(&option) {
            continue;
        }
        // Every comma inside the escaped data dir is one of a pair.
        let mut rest = value;
        while let Some(at) = rest.find(&escaped_data) {
            let before = &rest[..at];
            let trailing = before.len() - before.trim_end_matches(',').len();
            assert_eq!(trailing % 2, 0, "{option} {value}: a lone comma");
            rest = &rest[at + escaped_data.len()..];
        }
        // Parsed as QEMU does, each part is a whole key=value: the data dir is
        // never split into parts of its own (`id=evil`, `x=y=z a/…`).
        let parts = split_option(value);
        let mut keys = Vec::new();
        for part in &parts {
            let (key, val) = part.split_once('=').unwrap_or(("", part));
            assert!(!key.contains(' ') && !key.contains('/'), "{option} {value}");
            assert!(!keys.contains(&key), "{option} {value}: {key} twice");
            keys.push(key);
            if val.contains("vman,") {
                assert!(paths.contains(&val.to_string()), "{option}: {val}");
                parsed_paths.push(val.to_string());
            }
        }
        if option == "-name" {
            assert_eq!(parts, ["guest=evil,debug-threads=on"]);
        }
    }
    parsed_paths.sort();
    let mut expected = paths.clone();
    expected.sort();
    assert_eq!(parsed_paths, expected, "each path parsed back whole, once");

    // QEMU takes these whole: escaping would change them.
    let after = |option: &str| {
        let at = args.iter().position(|a| a == option).unwrap();
        args[at + 1].clone()
    };
    let boot = spec.boot.as_ref().unwrap();
    assert_eq!(
        after("-pidfile"),
        pid_file(&spec.run_dir).display().to_string()
    );
    assert_eq!(after("-kernel"), boot.kernel.display().to_string());
    assert_eq!(
        after("-initrd"),
        boot.initrd.as_ref().unwrap().display().to_string()
    );
    assert_eq!(after("-append"), HOSTILE_CMDLINE);
}

#[test]
fn spare_root_ports_follow_the_cold_plugged_disks() {
    let spec = VmSpec {
        disks: vec![
            disk(DATA, DISK_A, DiskFormat::Qcow2),
            disk(DATA, DISK_B, DiskFormat::Raw),
        ],
        ..vm(DATA, "ports")
    };
    assert_eq!(
        spare_root_ports(&spec, &options(Accel::Tcg, 3)),
        ["rp3", "rp4", "rp5"]
    );
    assert!(spare_root_ports(&spec, &options(Accel::Tcg, 0)).is_empty());
}

// ------------------------------------------------------------- real QEMU --

/// A QEMU process, killed if the test ends early.
struct Qemu {
    child: Child,
    log: PathBuf,
}

impl Qemu {
    fn spawn(argv: &[String], log: &Path) -> Qemu {
        let out = fs::File::create(log).unwrap();
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("qemu-system-x86_64 (install qemu-system-x86: scripts/install-deps.sh)");
        Qemu {
            child,
            log: log.to_path_buf(),
        }
    }

    fn connect(&mut self, socket: &Path) -> Qmp {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "QEMU exited ({status}): {}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if let Ok(stream) = UnixStream::connect(socket) {
                return Qmp::handshake(stream);
            }
            assert!(Instant::now() < deadline, "no QMP socket at {socket:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "QEMU did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A minimal synchronous QMP client: one command at a time, events kept.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
}

impl Qmp {
    fn handshake(stream: UnixStream) -> Qmp {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            events: Vec::new(),
        };
        let greeting = qmp.read();
        assert_eq!(greeting["QMP"]["version"]["qemu"]["major"], 7, "{greeting}");
        qmp.ok("qmp_capabilities", Value::Null);
        qmp
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "QMP closed");
        serde_json::from_str(&line).unwrap()
    }

    /// The whole reply: `{"return": …}` or `{"error": …}`.
    fn execute(&mut self, command: &str, arguments: Value) -> Value {
        let mut message = json!({ "execute": command });
        if !arguments.is_null() {
            message["arguments"] = arguments;
        }
        writeln!(self.writer, "{message}").unwrap();
        loop {
            let reply = self.read();
            if reply.get("event").is_some() {
                self.events.push(reply);
            } else {
                return reply;
            }
        }
    }

    fn ok(&mut self, command: &str, arguments: Value) -> Value {
        let reply = self.execute(command, arguments.clone());
        match reply.get("return") {
            Some(value) => value.clone(),
            None => panic!("{command} {arguments}: {reply}"),
        }
    }

    fn run(&mut self, step: &HostStep) -> Value {
        match step {
            HostStep::Qmp {
                command, arguments, ..
            } => self.execute(command, arguments.clone()),
            other => panic!("not a QMP step: {other:?}"),
        }
    }
}

fn qemu_img_create(disk: &DiskSpec) {
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", disk.format.qemu_name()])
        .arg(&disk.path)
        .arg(disk.size_bytes.to_string())
        .status()
        .expect("qemu-img (install qemu-utils: scripts/install-deps.sh)");
    assert!(status.success());
}

/// Makes `spec`'s run directory and disks, and options that run the real
/// QEMU (TCG) with `spare_root_ports`.
fn real_options(spec: &VmSpec, spare_root_ports: u32) -> QemuOptions {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&spec.run_dir)
        .unwrap();
    for disk in &spec.disks {
        qemu_img_create(disk);
    }
    let mut opts = options(Accel::Tcg, spare_root_ports);
    opts.binary = which::which("qemu-system-x86_64")
        .expect("qemu-system-x86_64 (install qemu-system-x86: scripts/install-deps.sh)");
    opts
}

/// `query-block`'s disks by node name: (format driver, file name, device);
/// the CD-ROM drive (removable) apart.
fn block_devices(qmp: &mut Qmp) -> Vec<(String, String, String, String)> {
    let mut found: Vec<_> = qmp
        .ok("query-block", Value::Null)
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["removable"] != true)
        .map(|b| {
            let inserted = &b["inserted"];
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                text(&inserted["node-name"]),
                text(&inserted["drv"]),
                text(&inserted["file"]),
                text(&b["qdev"]),
            )
        })
        .collect();
    found.sort();
    found
}

fn expected_block(disk: &DiskSpec) -> (String, String, String, String) {
    (
        disk_node(&disk.id),
        disk.format.qemu_name().to_string(),
        disk.path.display().to_string(),
        format!("/machine/peripheral/{}/virtio-backend", device_id(&disk.id)),
    )
}

/// The real QEMU 7.2 starts from the generated argv — in a data directory
/// with commas, `=` and a space, and with a name full of commas — paused, with
/// both disks on their nodes, and takes a hot-plug on a spare root port.
#[test]
fn real_qemu_accepts_the_command_line_and_the_hot_plug() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("vman,id=evil,x=y=z a");
    let data = data.to_str().unwrap();
    fs::create_dir_all(format!("{data}/storage")).unwrap();
    let spec = VmSpec {
        disks: vec![
            disk(data, DISK_A, DiskFormat::Qcow2),
            disk(data, DISK_B, DiskFormat::Raw),
        ],
        ..vm(data, "evil,debug-threads=on")
    };
    let opts = real_options(&spec, 2);
    let args = argv(&spec, &opts);

    let mut qemu = Qemu::spawn(&args, &qemu_log(&spec.run_dir));
    let mut qmp = qemu.connect(&qmp_socket(&spec.run_dir));

    let status = qmp.ok("query-status", Value::Null);
    assert_eq!(status["status"], "prelaunch", "{status}");
    assert_eq!(status["running"], false);
    assert_eq!(
        qmp.ok("query-name", Value::Null)["name"],
        "evil,debug-threads=on"
    );
    assert_eq!(qmp.ok("query-uuid", Value::Null)["UUID"], VM_ID);
    let pid = fs::read_to_string(pid_file(&spec.run_dir)).unwrap();
    assert_eq!(pid.trim(), qemu.child.id().to_string());
    assert!(serial_log(&spec.run_dir).exists());
    // The console socket, at its hostile path, listening.
    UnixStream::connect(console_socket(&spec.run_dir)).expect("the console socket listens");
    let mut expected: Vec<_> = spec.disks.iter().map(expected_block).collect();
    expected.sort();
    assert_eq!(block_devices(&mut qmp), expected);

    // Hot-plug a third disk on the first spare port.
    let extra = disk(data, DISK_C, DiskFormat::Qcow2);
    qemu_img_create(&extra);
    let port = spare_root_ports(&spec, &opts)[0].clone();
    assert_eq!(port, "rp3");
    for step in attach_disk(VM_ID, &extra, &port) {
        let reply = qmp.run(&step);
        assert_eq!(reply, json!({ "return": {} }), "{step:?}");
    }
    expected.push(expected_block(&extra));
    expected.sort();
    assert_eq!(block_devices(&mut qmp), expected);
    let nodes = qmp.ok("query-named-block-nodes", json!({ "flat": true }));
    let names: Vec<_> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node-name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.contains(&file_node(&extra.id)), "{names:?}");

    // device_del is accepted, but with no guest OS nothing acknowledges it:
    // the device and its nodes stay, and QEMU refuses to free a node in use.
    let (unplug, release) = detach_disk(VM_ID, &extra);
    for step in &unplug {
        assert_eq!(qmp.run(step), json!({ "return": {} }), "{step:?}");
    }
    let refused = qmp.run(&release[0]);
    assert!(refused.get("error").is_some(), "{refused}");
    assert_eq!(block_devices(&mut qmp), expected);
    assert!(
        !qmp.events.iter().any(|e| e["event"] == "DEVICE_DELETED"),
        "{:?}",
        qmp.events
    );

    qmp.ok("quit", Value::Null);
    assert!(qemu.wait_exit().success());
    assert!(
        !pid_file(&spec.run_dir).exists(),
        "QEMU removes its pid file"
    );
}

/// The CD-ROM drive's medium as `query-block` gives it: (driver, file,
/// read-only); None when the drive is empty.
fn cdrom_medium(qmp: &mut Qmp) -> Option<(String, String, bool)> {
    let blocks = qmp.ok("query-block", Value::Null);
    let drive = blocks
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["qdev"].as_str().is_some_and(|q| q.contains(CDROM_DEVICE)))
        .unwrap_or_else(|| panic!("no CD-ROM drive in {blocks:#}"))
        .clone();
    assert_eq!(drive["removable"], true, "{drive:#}");
    let inserted = drive.get("inserted")?;
    Some((
        inserted["drv"].as_str().unwrap().to_string(),
        inserted["file"].as_str().unwrap().to_string(),
        inserted["ro"].as_bool().unwrap(),
    ))
}

/// The real QEMU takes the boot order as `bootindex` (the CD-ROM first, then
/// the root disk), opens the ISO read-only, and changes and ejects the
/// medium of the running machine.
#[test]
fn real_qemu_boots_the_cdrom_first_and_changes_its_medium() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().to_str().unwrap();
    fs::create_dir_all(format!("{data}/storage")).unwrap();
    fs::create_dir_all(format!("{data}/images")).unwrap();
    let (install, rescue) = (
        PathBuf::from(format!("{data}/images/install.iso")),
        PathBuf::from(format!("{data}/images/rescue,x=y.iso")),
    );
    for iso in [&install, &rescue] {
        fs::write(iso, vec![0u8; 1 << 20]).unwrap();
    }
    let spec = VmSpec {
        disks: vec![
            disk(data, DISK_A, DiskFormat::Qcow2),
            disk(data, DISK_B, DiskFormat::Qcow2),
        ],
        cdrom: Some(install.clone()),
        boot_order: vec![BootDevice::Cdrom, BootDevice::Disk],
        ..vm(data, "installer")
    };
    let opts = real_options(&spec, 0);
    let mut qemu = Qemu::spawn(&argv(&spec, &opts), &qemu_log(&spec.run_dir));
    let mut qmp = qemu.connect(&qmp_socket(&spec.run_dir));

    let bootindex = |qmp: &mut Qmp, device: &str| {
        qmp.ok(
            "qom-get",
            json!({"path": format!("/machine/peripheral/{device}"), "property": "bootindex"}),
        )
    };
    assert_eq!(bootindex(&mut qmp, CDROM_DEVICE), 0);
    assert_eq!(bootindex(&mut qmp, &device_id(DISK_A)), 1);
    // The second disk is not in the boot order.
    assert_eq!(bootindex(&mut qmp, &device_id(DISK_B)), -1);
    let medium = |path: &Path| Some(("raw".to_string(), path.display().to_string(), true));
    assert_eq!(cdrom_medium(&mut qmp), medium(&install));

    qmp.ok("cont", Value::Null);
    assert_eq!(
        qmp.run(&change_medium(VM_ID, Some(&rescue))),
        json!({ "return": {} })
    );
    assert_eq!(cdrom_medium(&mut qmp), medium(&rescue));
    assert_eq!(
        qmp.run(&change_medium(VM_ID, None)),
        json!({ "return": {} })
    );
    assert_eq!(cdrom_medium(&mut qmp), None);
    // An empty drive takes a medium again.
    assert_eq!(
        qmp.run(&change_medium(VM_ID, Some(&install))),
        json!({ "return": {} })
    );
    assert_eq!(cdrom_medium(&mut qmp), medium(&install));

    qmp.ok("quit", Value::Null);
    assert!(qemu.wait_exit().success());
}
