//! Install media and boot order through the API: ISO images in a VM's CD-ROM
//! drive (`attachCdrom`, `ejectCdrom`), live on a running real QEMU (TCG)
//! and recorded for its next start; `bootOrder` on VMs and templates as
//! QEMU's `bootindex`; and bad input refused with its code, nothing changed.

mod common;

use std::path::Path;

use common::TestServer;
use serde_json::{Value, json};
use vman::config::Accel;

const IMPORT: &str = "mutation($n: String!, $k: ImageKind!, $p: String!) { importImage(input: {name: $n, kind: $k, path: $p}) { image { id } } }";
const VM: &str = "id state bootOrder pendingChanges { bootOrder } cdrom { id name kind }";
const ATTACH: &str = "mutation($id: ID!, $image: ID!) { attachCdrom(id: $id, imageId: $image) { vm { id bootOrder cdrom { id name } } operation { status kind errorCode } plan { action detail } } }";
const EJECT: &str = "mutation($id: ID!) { ejectCdrom(id: $id) { vm { id cdrom { id } } operation { status kind } plan { action detail } } }";

/// A server that drives real QEMU and imports from `media`, where two ISOs
/// and a (fake) kernel lie.
async fn server(media: &Path) -> TestServer {
    for (file, bytes) in [
        ("install.iso", 1 << 20),
        ("rescue.iso", 2 << 20),
        ("vmlinuz", 4096),
    ] {
        std::fs::write(media.join(file), vec![0u8; bytes]).unwrap();
    }
    let media = media.to_path_buf();
    TestServer::start_with(move |c| {
        c.dry_run = false;
        c.qemu.accel = Accel::Tcg;
        c.import_dir = Some(media);
    })
    .await
}

async fn import(server: &TestServer, name: &str, kind: &str, path: &str) -> String {
    server
        .ok(IMPORT, json!({"n": name, "k": kind, "p": path}))
        .await["importImage"]["image"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn vm(server: &TestServer, id: &str) -> Value {
    server
        .ok(
            &format!("query($id: ID!) {{ vm(id: $id) {{ {VM} }} }}"),
            json!({"id": id}),
        )
        .await["vm"]
        .clone()
}

/// The running QEMU's command line, one argument per item.
fn command_line(server: &TestServer, vm_id: &str) -> Vec<String> {
    let pid = std::fs::read_to_string(server.run_dir(vm_id).join("qemu.pid")).unwrap();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap();
    cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The `-device` and `-blockdev` values of the CD-ROM drive on a command line.
fn drive(args: &[String]) -> (String, Vec<String>) {
    let device = args
        .iter()
        .find(|a| a.starts_with("driver=ide-cd,") || a.starts_with("ide-cd,"))
        .unwrap_or_else(|| panic!("no CD-ROM drive in {args:?}"))
        .clone();
    let media = args
        .iter()
        .filter(|a| a.contains("node-name=cdrom-"))
        .cloned()
        .collect();
    (device, media)
}

fn plan_text(payload: &Value) -> String {
    payload["plan"].to_string()
}

#[tokio::test]
async fn an_iso_goes_into_a_running_vms_drive_and_out_again_and_its_boot_order_waits_for_a_restart()
{
    let media = tempfile::tempdir().unwrap();
    let server = server(media.path()).await;
    let install = import(&server, "install", "ISO", "install.iso").await;
    let rescue = import(&server, "rescue", "ISO", "rescue.iso").await;

    let created = server
        .ok(
            &format!("mutation($iso: ID!) {{ createVm(input: {{name: \"installer\", vcpus: 1, memoryMib: 128, cdromImageId: $iso, bootOrder: [CDROM, DISK]}}) {{ vm {{ {VM} }} }} }}"),
            json!({"iso": install}),
        )
        .await["createVm"]["vm"]
        .clone();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["bootOrder"], json!(["CDROM", "DISK"]));
    assert_eq!(created["cdrom"]["name"], "install");
    assert_eq!(created["cdrom"]["kind"], "ISO");

    server.start_vm(&id).await;
    let (device, medium) = drive(&command_line(&server, &id));
    assert!(device.contains("bootindex=0"), "{device}");
    assert!(device.contains("drive=cdrom-medium"), "{device}");
    assert_eq!(medium.len(), 2, "{medium:?}");
    assert!(
        medium.iter().all(|m| m.contains("read-only=on")),
        "{medium:?}"
    );
    let install_file = medium
        .iter()
        .find_map(|m| m.split(',').find_map(|p| p.strip_prefix("filename=")))
        .unwrap()
        .to_string();
    assert!(Path::new(&install_file).is_file(), "{install_file}");

    // Another medium, live: QEMU's blockdev-change-medium.
    let changed =
        server.ok(ATTACH, json!({"id": id, "image": rescue})).await["attachCdrom"].clone();
    assert_eq!(changed["operation"]["status"], "SUCCEEDED", "{changed:#}");
    assert_eq!(changed["operation"]["kind"], "ATTACH_CDROM");
    assert!(
        plan_text(&changed).contains("blockdev-change-medium"),
        "{changed:#}"
    );
    assert_eq!(changed["vm"]["cdrom"]["name"], "rescue");

    // QEMU refuses a medium whose file is gone: the operation fails with the
    // host's words and the drive keeps what it had, on the row too.
    let moved = format!("{install_file}.away");
    std::fs::rename(&install_file, &moved).unwrap();
    let response = server
        .post(ATTACH, json!({"id": id, "image": install}))
        .await;
    assert!(response["errors"][0].is_object(), "{response:#}");
    let code = &response["errors"][0]["extensions"]["code"];
    assert!(code.is_string() && code != "BAD_USER_INPUT", "{response:#}");
    assert_eq!(vm(&server, &id).await["cdrom"]["name"], "rescue");
    std::fs::rename(&moved, &install_file).unwrap();

    // An image in a drive cannot be deleted.
    let response = server
        .post(
            "mutation($id: ID!) { deleteImage(id: $id) { image { id } } }",
            json!({"id": rescue}),
        )
        .await;
    assert_eq!(
        response["errors"][0]["extensions"]["code"], "CONFLICT",
        "{response:#}"
    );
    assert!(
        response["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("installer"),
        "{response:#}"
    );

    // Out, live; a second eject finds the drive empty and records nothing.
    let ejected = server.ok(EJECT, json!({"id": id})).await["ejectCdrom"].clone();
    assert_eq!(ejected["operation"]["status"], "SUCCEEDED");
    assert!(plan_text(&ejected).contains("eject"), "{ejected:#}");
    assert!(ejected["vm"]["cdrom"].is_null());
    let events = server.journal().await.len();
    let again = server.ok(EJECT, json!({"id": id})).await["ejectCdrom"].clone();
    assert_eq!(again["plan"], json!([]), "{again:#}");
    let updates = server
        .journal()
        .await
        .into_iter()
        .skip(events)
        .filter(|e| e["kind"] == "VM_UPDATED")
        .count();
    assert_eq!(updates, 0);

    // A new boot order waits for the next start of a running VM.
    let updated = server
        .ok(
            &format!("mutation($id: ID!) {{ updateVm(id: $id, input: {{bootOrder: [DISK, CDROM]}}) {{ vm {{ {VM} }} }} }}"),
            json!({"id": id}),
        )
        .await["updateVm"]["vm"]
        .clone();
    assert_eq!(updated["bootOrder"], json!(["CDROM", "DISK"]));
    assert_eq!(
        updated["pendingChanges"]["bootOrder"],
        json!(["DISK", "CDROM"])
    );
    server.ok(ATTACH, json!({"id": id, "image": rescue})).await;
    server.stop_vm(&id).await;
    server.start_vm(&id).await;
    let restarted = vm(&server, &id).await;
    assert_eq!(restarted["state"], "RUNNING");
    assert_eq!(restarted["bootOrder"], json!(["DISK", "CDROM"]));
    assert!(restarted["pendingChanges"].is_null(), "{restarted:#}");
    // The VM has no disk: the drive is the only device in the order, second.
    let args = command_line(&server, &id);
    let (device, medium) = drive(&args);
    assert!(device.contains("bootindex=1"), "{device}");
    assert!(
        medium
            .iter()
            .any(|m| m.contains("filename=") && !m.contains(&install_file)),
        "the medium of the restart is rescue: {medium:?}"
    );
}

#[tokio::test]
async fn bad_media_and_boot_orders_are_refused_with_their_code_and_change_nothing() {
    let media = tempfile::tempdir().unwrap();
    let server = server(media.path()).await;
    let iso = import(&server, "install", "ISO", "install.iso").await;
    let kernel = import(&server, "kernel", "KERNEL", "vmlinuz").await;
    server.create_template("tiny").await;
    let web = server.create_vm("web", "tiny").await;
    let before = server.snapshot().await;

    let refused = [
        (
            "an ISO as a template's (writable) base disk",
            "mutation($iso: ID!) { createTemplate(input: {name: \"t2\", vcpus: 1, memoryMib: 128, baseImageId: $iso}) { template { id } } }",
            json!({"iso": iso}),
            "BAD_USER_INPUT",
            "baseImageId",
        ),
        (
            "a kernel in the drive",
            ATTACH,
            json!({"id": web, "image": kernel}),
            "BAD_USER_INPUT",
            "ISO",
        ),
        (
            "a kernel in a new VM's drive",
            "mutation($k: ID!) { createVm(input: {name: \"v2\", vcpus: 1, memoryMib: 128, cdromImageId: $k}) { vm { id } } }",
            json!({"k": kernel}),
            "BAD_USER_INPUT",
            "kernel",
        ),
        (
            "an unknown image",
            ATTACH,
            json!({"id": web, "image": "01940000-0000-7000-8000-000000000000"}),
            "NOT_FOUND",
            "01940000-0000-7000-8000-000000000000",
        ),
        (
            "a device twice in a new VM's boot order",
            "mutation { createVm(input: {name: \"v3\", vcpus: 1, memoryMib: 128, bootOrder: [DISK, CDROM, DISK]}) { vm { id } } }",
            json!({}),
            "BAD_USER_INPUT",
            "DISK twice",
        ),
        (
            "a device twice in a VM's new boot order",
            "mutation($id: ID!) { updateVm(id: $id, input: {bootOrder: [NETWORK, NETWORK]}) { vm { id } } }",
            json!({"id": web}),
            "BAD_USER_INPUT",
            "NETWORK twice",
        ),
        (
            "a device twice in a template's boot order",
            "mutation { updateTemplate(name: \"tiny\", input: {bootOrder: [CDROM, CDROM]}) { template { id } } }",
            json!({}),
            "BAD_USER_INPUT",
            "CDROM twice",
        ),
        (
            "a boot device that does not exist",
            "mutation { createVm(input: {name: \"v4\", vcpus: 1, memoryMib: 128, bootOrder: [FLOPPY]}) { vm { id } } }",
            json!({}),
            "GRAPHQL_VALIDATION_FAILED",
            "FLOPPY",
        ),
    ];
    for (what, query, variables, code, named) in refused {
        let response = server.post(query, variables).await;
        let error = &response["errors"][0];
        assert_eq!(error["extensions"]["code"], code, "{what}: {response:#}");
        assert!(
            error["message"].as_str().unwrap().contains(named),
            "{what}: {response:#}"
        );
    }
    assert_eq!(server.snapshot().await, before);
    assert!(vm(&server, &web).await["cdrom"].is_null());

    // A template's boot order is its VMs' unless they ask for another.
    server
        .ok(
            "mutation { updateTemplate(name: \"tiny\", input: {bootOrder: [NETWORK, DISK]}) { template { bootOrder } } }",
            json!({}),
        )
        .await;
    let made = server
        .ok(
            "mutation { a: createVm(input: {name: \"pxe\", templateName: \"tiny\"}) { vm { bootOrder } } b: createVm(input: {name: \"own\", templateName: \"tiny\", bootOrder: [DISK]}) { vm { bootOrder } } }",
            json!({}),
        )
        .await;
    assert_eq!(made["a"]["vm"]["bootOrder"], json!(["NETWORK", "DISK"]));
    assert_eq!(made["b"]["vm"]["bootOrder"], json!(["DISK"]));
    // A stopped VM's new order applies at once; empty is the firmware's own.
    let updated = server
        .ok(
            &format!("mutation($id: ID!) {{ updateVm(id: $id, input: {{bootOrder: []}}) {{ vm {{ {VM} }} }} }}"),
            json!({"id": web}),
        )
        .await["updateVm"]["vm"]
        .clone();
    assert!(updated["bootOrder"].is_null(), "{updated:#}");
    assert!(updated["pendingChanges"].is_null(), "{updated:#}");
}
