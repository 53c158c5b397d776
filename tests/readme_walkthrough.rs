//! The README's walk-through, pasted into a shell as a newcomer would: the
//! shell block after the `<!-- The walk-through: ... -->` comment in
//! README.md runs with `bash -euo pipefail` against a dry-run `vman serve`
//! process, and every answer it prints is checked, so the README cannot
//! drift from the API.

mod common;

use std::process::Command;

use common::{VmanProcess, free_port};
use serde_json::{Value, json};

const MARKER: &str = "<!-- The walk-through:";

/// The shell block that follows the marker comment (the only one).
fn walkthrough() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    assert_eq!(
        readme.matches(MARKER).count(),
        1,
        "README.md must mark exactly one block with {MARKER:?}"
    );
    let after = &readme[readme.find(MARKER).unwrap()..];
    let after = &after[after.find('\n').expect("a line after the marker") + 1..];
    let body = after
        .strip_prefix("```sh\n")
        .expect("the marker is followed at once by a ```sh block");
    body[..body.find("\n```\n").expect("the block ends")].to_string() + "\n"
}

/// What `bash` needs besides itself, with what to do when one is missing.
fn require(tool: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        found,
        "`{tool}` is missing, and the README's walk-through needs it: run \
         scripts/install-deps.sh (make deps) as root, or apt-get install {tool}"
    );
}

fn is_uuid(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| uuid::Uuid::parse_str(s).is_ok())
}

#[test]
fn the_block_is_found_and_names_no_placeholder() {
    let block = walkthrough();
    assert!(block.contains("gql() {"), "{block}");
    assert!(block.contains("deleteTemplate"), "{block}");
    for placeholder in ["<vm id>", "<network id>", "<id>", "TODO"] {
        assert!(!block.contains(placeholder), "{placeholder} in:\n{block}");
    }
}

#[tokio::test]
async fn the_readme_walkthrough_runs_as_pasted() {
    require("curl");
    require("jq");
    let dir = tempfile::tempdir().unwrap();
    let vman = VmanProcess::start_with_env(
        &dir.path().join("data"),
        free_port(),
        &[("VMAN_DRY_RUN", "true")],
    );
    let http = reqwest::Client::new();
    vman.ready(&http).await;

    let block = walkthrough();
    let run = {
        let url = vman.url.clone();
        tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .args(["-euo", "pipefail", "-c", &block])
                .env("VMAN", url)
                .output()
                .expect("bash runs")
        })
        .await
        .unwrap()
    };
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "the walk-through failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    assert!(
        stderr.is_empty(),
        "the walk-through wrote to stderr:\n{stderr}"
    );

    // One answer per `gql` whose answer is shown, in order.
    let answers: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    for answer in &answers {
        assert!(answer.get("errors").is_none(), "an error:\n{stdout}");
    }
    let [
        template,
        created,
        plan,
        network,
        nic,
        started,
        looked,
        stopped,
        deleted,
        network_deleted,
        template_deleted,
    ] = answers.as_slice()
    else {
        panic!("expected 11 answers, got {}:\n{stdout}", answers.len());
    };

    let template = &template["data"]["createTemplate"]["template"];
    assert_eq!(template["name"], "tiny");
    assert!(is_uuid(&template["id"]), "{template}");

    assert_eq!(
        created["data"]["createVm"]["vm"],
        json!({"name": "vm1", "state": "STOPPED", "disks": [{"name": "vm1-root", "sizeBytes": 1073741824}]})
    );

    // The VM's ID went into $VM: the steps below name it.
    let vm = looked["data"]["vm"]["id"].as_str().unwrap().to_string();
    assert!(is_uuid(&json!(vm)), "{looked}");
    let actions: Vec<&str> = plan["data"]["startVm"]["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["createDir", "spawnQemu", "qmp"], "{plan}");
    assert_eq!(
        plan["data"]["startVm"]["plan"][1]["summary"],
        format!("spawn QEMU for VM {vm}")
    );

    assert_eq!(
        network["data"]["createNetwork"]["network"],
        json!({"name": "lan", "bridge": "vmbr10"})
    );
    let nic = &nic["data"]["attachNic"]["nic"];
    let mac = nic["mac"].as_str().unwrap();
    assert_eq!(mac.len(), 17, "{nic}");
    let tap = nic["tap"].as_str().unwrap();
    assert!(tap.starts_with("vt"), "{nic}");

    let started = &started["data"]["startVm"];
    assert_eq!(started["vm"]["state"], "RUNNING");
    assert_eq!(started["operation"]["status"], "SUCCEEDED");
    let summaries: Vec<&str> = started["operation"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["summary"].as_str().unwrap())
        .collect();
    assert!(
        summaries.contains(&format!("enslave {tap} to bridge vmbr10").as_str()),
        "{summaries:?}"
    );
    assert!(
        summaries.contains(&format!("spawn QEMU for VM {vm}").as_str()),
        "{summaries:?}"
    );

    assert_eq!(
        looked["data"]["vm"],
        json!({
            "id": vm, "name": "vm1", "state": "RUNNING", "stateReason": "started",
            "vcpus": 1, "memoryMib": 256, "disks": [{"name": "vm1-root"}],
            "nics": [{"mac": mac, "tap": tap}],
        })
    );
    assert_eq!(
        stopped["data"]["stopVm"]["vm"],
        json!({"state": "STOPPED", "stateReason": "stopped by QEMU quit"})
    );
    assert_eq!(
        deleted["data"]["deleteVm"],
        json!({"vm": {"name": "vm1"}, "operation": {"status": "SUCCEEDED"}})
    );
    assert_eq!(
        network_deleted["data"]["deleteNetwork"]["network"]["name"],
        "lan"
    );
    assert_eq!(
        template_deleted["data"]["deleteTemplate"]["template"]["name"],
        "tiny"
    );

    // It leaves the server as it found it, so it can be pasted again.
    assert_eq!(
        vman.gql(
            &http,
            "{ templates { totalCount } vms { totalCount } disks { totalCount } networks { totalCount } }",
            json!({}),
        )
        .await,
        json!({"templates": {"totalCount": 0}, "vms": {"totalCount": 0}, "disks": {"totalCount": 0}, "networks": {"totalCount": 0}})
    );
}
