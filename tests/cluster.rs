//! Many nodes on one PostgreSQL database (issue 21): each node registers its
//! host and heartbeats; a subscriber on any node sees every node's events in
//! one gapless sequence; a node that stops heartbeating is OFFLINE at the
//! others and its VMs UNKNOWN, and when it is back its VMs are what QEMU
//! says again, the same processes.

mod common;

use std::time::Duration;

use common::{
    TestServer, VmanProcess, WAIT, WsClient, free_port,
    netns::{self, ip},
    postgres::{Backend, TestDatabase},
};
use serde_json::{Value, json};

const EVENTS: &str = "subscription($after: String) { events(after: $after) { sequence kind subjectId operationId payload } }";

/// A second node (a dry run too) on `first`'s database.
async fn second_node(
    first: &TestServer,
    adjust: impl FnOnce(&mut vman::config::Config),
) -> TestServer {
    let url = first.app.ctx.config.database.url.clone();
    TestServer::start_on(Backend::Sqlite, |c| {
        c.database.url = url;
        adjust(c);
    })
    .await
}

/// The pid in the VM's run directory under `data`.
fn qemu_pid(data: &std::path::Path, vm: &str) -> i32 {
    vman::host::qemu::process::read_pidfile(&data.join("run").join(vm).join("qemu.pid"))
        .expect("a pid file")
}

/// `stopVm` of `vm` sent to `server` is refused with `HOST_UNAVAILABLE`,
/// its message saying `why`.
async fn refused_as_unavailable(server: &TestServer, vm: &str, why: &str) {
    let refused = server
        .post(
            "mutation($id: ID!) { stopVm(id: $id) { vm { state } } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "HOST_UNAVAILABLE",
        "{refused}"
    );
    let message = refused["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains(why), "{message}");
    assert!(refused["data"].is_null(), "{refused}");
}

/// The next `events` item of subscription `id`.
async fn next_event(ws: &mut WsClient, id: &str) -> Value {
    tokio::time::timeout(WAIT, ws.next_data(id))
        .await
        .expect("an event within the wait")["events"]
        .clone()
}

fn sequence(event: &Value) -> i64 {
    event["sequence"].as_str().unwrap().parse().unwrap()
}

/// Reads `n` events of subscription `id`, checking that their sequences
/// follow each other from `after`.
async fn gapless(ws: &mut WsClient, id: &str, after: i64, n: usize) -> Vec<Value> {
    let mut seen = Vec::new();
    for i in 0..n {
        let event = next_event(ws, id).await;
        assert_eq!(
            sequence(&event),
            after + 1 + i as i64,
            "{seen:#?}\n{event:#}"
        );
        seen.push(event);
    }
    seen
}

/// Makes VM `name` of template `t` through `server`, on host `host`.
async fn create_on(server: &TestServer, name: &str, host: &str) -> String {
    let data = server
        .ok(
            "mutation($n: String!, $h: ID!) { createVm(input: {name: $n, templateName: \"t\", hostId: $h}) { vm { id host { id } } } }",
            json!({"n": name, "h": host}),
        )
        .await;
    assert_eq!(data["createVm"]["vm"]["host"]["id"], host, "{data}");
    data["createVm"]["vm"]["id"].as_str().unwrap().to_string()
}

fn name_of(server: &TestServer) -> String {
    server.app.ctx.config.cluster.host_name.clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_hosts_carry_each_others_mutations_and_see_every_event_in_one_sequence() {
    let a = TestServer::start_on(Backend::Postgres, |_| {}).await;
    let b = second_node(&a, |_| {}).await;
    let c = second_node(&a, |_| {}).await;

    // Every host, each node knows which is its own.
    let hosts = a
        .ok(
            "{ hosts { id name state thisNode capabilities cpus } }",
            json!({}),
        )
        .await;
    let hosts = hosts["hosts"].as_array().unwrap().clone();
    assert_eq!(hosts.len(), 3, "{hosts:#?}");
    for host in &hosts {
        assert_eq!(host["state"], "ONLINE");
        assert_eq!(host["capabilities"], json!(["dry-run"]));
        assert!(host["cpus"].as_i64().unwrap() >= 1);
        assert_eq!(host["thisNode"], host["name"] == name_of(&a), "{host}");
    }
    let own = b.ok("{ host { name thisNode } }", json!({})).await;
    assert_eq!(own["host"]["name"], name_of(&b));
    let [a_host, b_host] = [&a, &b].map(|n| n.app.ctx.host_id.to_string());

    // A subscriber on A, from the head: what each node does comes in one
    // sequence, without gaps, as it happens.
    let head: i64 = a.ok("{ journalHead }", json!({})).await["journalHead"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut ws = WsClient::connect(&a.ws_url).await;
    ws.subscribe("e", EVENTS, json!({"after": head.to_string()}))
        .await;
    c.create_template("t").await;
    // Made through A on host B: B's node makes it.
    let on_b = create_on(&a, "on-b", &b_host).await;
    // Started through C: B's node starts it.
    let started = c
        .ok(
            "mutation($id: ID!) { startVm(id: $id) { vm { state host { name } } operation { id } } }",
            json!({"id": on_b}),
        )
        .await;
    assert_eq!(started["startVm"]["vm"]["state"], "RUNNING");
    assert_eq!(started["startVm"]["vm"]["host"]["name"], name_of(&b));
    let on_a = create_on(&b, "on-a", &a_host).await;
    let events = gapless(&mut ws, "e", head, 7).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "TEMPLATE_CREATED",
            "VM_CREATED",
            "DISK_CREATED",
            "VM_STATE_CHANGED",
            "VM_STATE_CHANGED",
            "VM_CREATED",
            "DISK_CREATED"
        ]
    );
    assert_eq!(events[1]["subjectId"], on_b.as_str());
    assert_eq!(events[5]["subjectId"], on_a.as_str());
    // The operation that started it is the one its answer named.
    assert_eq!(events[4]["payload"]["to"], "RUNNING", "{:#}", events[4]);
    assert_eq!(
        events[4]["operationId"], started["startVm"]["operation"]["id"],
        "{:#}",
        events[4]
    );

    // Each VM names its host, whichever node is asked.
    for server in [&a, &b, &c] {
        for (vm, node) in [(&on_b, &b), (&on_a, &a)] {
            let data = server
                .ok(
                    "query($id: ID) { vm(id: $id) { host { name } } }",
                    json!({"id": vm}),
                )
                .await;
            assert_eq!(data["vm"]["host"]["name"], name_of(node), "{data}");
        }
    }

    // A refusal through another node is the refusal B gives, word for word.
    let again = "mutation($id: ID!) { startVm(id: $id) { vm { state } } }";
    let through_a = a.post(again, json!({"id": on_b})).await;
    let from_b = b.post(again, json!({"id": on_b})).await;
    assert_eq!(through_a, from_b);
    assert_eq!(
        through_a["errors"][0]["extensions"]["code"],
        "INVALID_STATE"
    );

    // Stopped through A.
    let stopped = a
        .ok(
            "mutation($id: ID!) { stopVm(id: $id, force: true) { vm { state } } }",
            json!({"id": on_b}),
        )
        .await;
    assert_eq!(stopped["stopVm"]["vm"]["state"], "STOPPED");

    // The subscriber moves to C with the last sequence it saw, and misses
    // nothing written meanwhile on any node.
    let last = sequence(events.last().unwrap()) + 2; // the stop's two changes
    gapless(&mut ws, "e", last - 2, 2).await;
    ws.close().await;
    a.create_template("while-away-a").await;
    b.create_template("while-away-b").await;
    let mut ws = WsClient::connect(&c.ws_url).await;
    ws.subscribe("e", EVENTS, json!({"after": last.to_string()}))
        .await;
    let moved = gapless(&mut ws, "e", last, 2).await;
    let names: Vec<&str> = moved
        .iter()
        .map(|e| e["payload"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["while-away-a", "while-away-b"]);
    let sent = std::time::Instant::now();
    a.create_template("live-on-a").await;
    let live = gapless(&mut ws, "e", last + 2, 1).await;
    assert_eq!(live[0]["payload"]["name"], "live-on-a");
    eprintln!(
        "an event written on A reached a subscriber on C {:?} after the request",
        sent.elapsed()
    );
}

/// Two nodes send `startVm` for the same VM at the same moment, 50 times:
/// each time one start happens, and the other is refused as a second start
/// through the VM's own node would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_to_start_one_vm_start_it_once_each_time() {
    let a = TestServer::start_on(Backend::Postgres, |_| {}).await;
    let b = second_node(&a, |_| {}).await;
    a.create_template("t").await;
    let vm = create_on(&a, "raced", &b.app.ctx.host_id).await;
    let start = "mutation($id: ID!) { startVm(id: $id) { vm { state } } }";
    for round in 0..50 {
        let (x, y) = tokio::join!(
            a.post(start, json!({"id": vm})),
            b.post(start, json!({"id": vm}))
        );
        let started: Vec<&Value> = [&x, &y]
            .into_iter()
            .filter(|r| r["data"]["startVm"]["vm"]["state"] == "RUNNING")
            .collect();
        assert_eq!(started.len(), 1, "round {round}: {x}\n{y}");
        let refused = if started[0] == &x { &y } else { &x };
        let code = refused["errors"][0]["extensions"]["code"].as_str().unwrap();
        assert!(
            matches!(code, "INVALID_STATE" | "VM_BUSY"),
            "round {round}: {refused}"
        );
        a.ok(
            "mutation($id: ID!) { stopVm(id: $id, force: true) { vm { state } } }",
            json!({"id": vm}),
        )
        .await;
    }
    let starts = a
        .journal()
        .await
        .into_iter()
        .filter(|e| e["kind"] == "VM_STATE_CHANGED" && e["payload"]["to"] == "STARTING")
        .count();
    assert_eq!(starts, 50);
}

/// A mutation sent over node A's websocket for a VM on host B is carried
/// out by B's node: its answer, and a refusal, are what B's own websocket
/// gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_over_the_websocket_is_carried_to_its_hosts_node() {
    let a = TestServer::start_on(Backend::Postgres, |_| {}).await;
    let b = second_node(&a, |_| {}).await;
    a.create_template("t").await;
    let vm = create_on(&a, "by-socket", &b.app.ctx.host_id).await;
    let start =
        "mutation($id: ID!) { startVm(id: $id) { vm { state host { name } } operation { id } } }";
    let mut ws = WsClient::connect(&a.ws_url).await;
    ws.subscribe("1", start, json!({"id": vm})).await;
    let data = ws.next_data("1").await;
    assert_eq!(data["startVm"]["vm"]["state"], "RUNNING", "{data}");
    assert_eq!(data["startVm"]["vm"]["host"]["name"], name_of(&b));
    assert_eq!(
        ws.next_message().await,
        json!({"id": "1", "type": "complete"})
    );
    assert_eq!(b.vm_state(&vm).await, "RUNNING");
    // B's node ran it: the operation is B's host's.
    let operation = b
        .ok(
            "query($id: ID!) { operation(id: $id) { status host { name } } }",
            json!({"id": data["startVm"]["operation"]["id"]}),
        )
        .await;
    assert_eq!(operation["operation"]["status"], "SUCCEEDED", "{operation}");
    assert_eq!(operation["operation"]["host"]["name"], name_of(&b));

    // Again: refused, word for word as B's own websocket refuses it.
    ws.subscribe("2", start, json!({"id": vm})).await;
    let through_a = ws.next_message().await;
    let mut own = WsClient::connect(&b.ws_url).await;
    own.subscribe("2", start, json!({"id": vm})).await;
    let from_b = own.next_message().await;
    assert_eq!(through_a, from_b);
    assert_eq!(
        through_a["payload"]["errors"][0]["extensions"]["code"], "INVALID_STATE",
        "{through_a}"
    );
}

/// A host whose node cannot be reached (it heartbeats, but its URL goes
/// nowhere): a mutation for its VM is HOST_UNAVAILABLE, and nothing changed.
#[tokio::test]
async fn a_mutation_for_a_host_whose_node_does_not_answer_is_host_unavailable() {
    let a = TestServer::start_on(Backend::Postgres, |_| {}).await;
    let closed = common::free_port();
    let b = second_node(&a, |c| {
        c.cluster.advertise_url = Some(format!("http://127.0.0.1:{closed}/graphql"))
    })
    .await;
    b.create_template("t").await;
    let vm = create_on(&b, "cut-off", &b.app.ctx.host_id).await;
    let before = a.snapshot().await;
    let refused = a
        .post(
            "mutation($id: ID!) { startVm(id: $id) { vm { state } } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "HOST_UNAVAILABLE",
        "{refused}"
    );
    assert!(
        refused["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{refused}"
    );
    assert_eq!(a.snapshot().await, before, "nothing changed");
    assert_eq!(b.vm_state(&vm).await, "STOPPED");
}

#[tokio::test]
async fn a_host_name_taken_by_another_host_stops_the_node_with_the_reason() {
    let a = TestServer::start_on(Backend::Postgres, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = vman::config::Config {
        data_dir: dir.path().join("data"),
        dry_run: true,
        ..Default::default()
    };
    config.database.url = a.app.ctx.config.database.url.clone();
    config.cluster.host_name = a.app.ctx.config.cluster.host_name.clone();
    let Err(e) = vman::app::App::build(config).await else {
        panic!("a second host of the same name started");
    };
    let message = e.to_string();
    assert!(message.contains("cluster.host_name"), "{message}");
    assert_eq!(
        a.ok("{ hosts { name } }", json!({})).await["hosts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Node B (a `vman serve` process driving real QEMU) is SIGKILLed: node A
/// marks its host OFFLINE and its VM UNKNOWN within `offline_after`, the QEMU
/// runs on, a mutation for it is HOST_UNAVAILABLE; B restarted on its data
/// directory is ONLINE again and its VM RUNNING, the same process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_heartbeating_is_offline_and_its_vms_come_back_with_it() {
    let database = TestDatabase::create().await;
    let heartbeat = [
        ("VMAN_CLUSTER_HEARTBEAT_INTERVAL", "200ms"),
        ("VMAN_CLUSTER_OFFLINE_AFTER", "1s"),
    ];
    let url = database.url.clone();
    let a = TestServer::start_on(Backend::Sqlite, |c| {
        c.database.url = Some(vman::config::DatabaseUrl::new(url));
        c.cluster.heartbeat_interval = Duration::from_millis(200);
        c.cluster.offline_after = Duration::from_secs(1);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("b");
    let env: Vec<(&str, &str)> = heartbeat
        .iter()
        .copied()
        .chain([
            ("VMAN_DATABASE_URL", database.url.as_str()),
            ("VMAN_CLUSTER_HOST_NAME", "node-b"),
        ])
        .collect();
    let http = reqwest::Client::new();
    let mut b = VmanProcess::start_with_env(&data, free_port(), &env);
    b.ready(&http).await;
    b.gql(&http, "mutation { createTemplate(input: {name: \"bare\", vcpus: 1, memoryMib: 64}) { template { id } } }", json!({}))
        .await;
    let created = b
        .gql(
            &http,
            "mutation($h: ID!) { createVm(input: {name: \"on-b\", templateName: \"bare\", hostId: $h}) { vm { id } } }",
            json!({"h": std::fs::read_to_string(data.join("host-id")).unwrap()}),
        )
        .await;
    let vm = created["createVm"]["vm"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let started = b
        .gql(
            &http,
            "mutation($id: ID!) { startVm(id: $id) { vm { state } } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(started["startVm"]["vm"]["state"], "RUNNING");
    let pid = qemu_pid(&data, &vm);

    let mut ws = WsClient::connect(&a.ws_url).await;
    ws.subscribe("e", EVENTS, json!({})).await;
    b.child.kill().unwrap(); // SIGKILL
    b.child.wait().unwrap();
    let killed = std::time::Instant::now();
    // Only vman died: keep the VM the guard would end.
    let run_dir = std::mem::take(&mut b.run_dir);
    drop(b);

    let offline = next_event(&mut ws, "e").await;
    assert_eq!(offline["kind"], "HOST_OFFLINE", "{offline}");
    assert_eq!(offline["payload"]["vmIds"], json!([vm]));
    let unknown = next_event(&mut ws, "e").await;
    assert_eq!(unknown["kind"], "VM_STATE_CHANGED", "{unknown}");
    assert_eq!(unknown["subjectId"], vm.as_str());
    assert_eq!(unknown["payload"]["to"], "UNKNOWN");
    assert!(
        unknown["payload"]["reason"]
            .as_str()
            .unwrap()
            .contains("node-b"),
        "{unknown}"
    );
    eprintln!(
        "node B offline at A {:?} after its SIGKILL",
        killed.elapsed()
    );
    assert!(
        vman::host::qemu::process::is_alive(pid),
        "QEMU {pid} died with its node"
    );
    let hosts = a
        .ok("{ hosts { name state stateReason } }", json!({}))
        .await;
    let b_host = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "node-b")
        .unwrap()
        .clone();
    assert_eq!(b_host["state"], "OFFLINE", "{hosts}");
    refused_as_unavailable(&a, &vm, "offline").await;

    // B is back: its host ONLINE, its VM adopted, RUNNING, the same QEMU.
    let b = VmanProcess::start_with_env(&data, free_port(), &env);
    assert_eq!(b.run_dir, run_dir);
    b.ready(&http).await;
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let event = next_event(&mut ws, "e").await;
        kinds.push((
            event["kind"].as_str().unwrap().to_string(),
            event["payload"].clone(),
        ));
    }
    assert_eq!(kinds[0].0, "HOST_ONLINE", "{kinds:?}");
    assert_eq!(kinds[0].1["registered"], false);
    assert_eq!(kinds[1].0, "VM_STATE_CHANGED", "{kinds:?}");
    assert_eq!(kinds[1].1["from"], "UNKNOWN");
    assert_eq!(kinds[1].1["to"], "RUNNING");
    let pid_now = qemu_pid(&data, &vm);
    assert_eq!(pid_now, pid, "the same QEMU");
    let stopped = b
        .gql(
            &http,
            "mutation($id: ID!) { stopVm(id: $id, force: true) { vm { state } } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(stopped["stopVm"]["vm"]["state"], "STOPPED");
}

/// A `hostId` that is not an ID, or no host's, is refused with its code,
/// and no VM is made.
#[tokio::test]
async fn a_vm_for_a_host_that_is_not_there_is_refused_with_its_code() {
    let server = TestServer::start().await;
    server.create_template("t").await;
    let before = server.snapshot().await;
    let create = "mutation($h: ID!) { createVm(input: {name: \"nowhere\", templateName: \"t\", hostId: $h}) { vm { id } } }";
    for (host, code) in [
        ("not-an-id", "BAD_USER_INPUT"),
        ("01940000-0000-7000-8000-0000000000aa", "NOT_FOUND"),
    ] {
        let refused = server.post(create, json!({"h": host})).await;
        assert_eq!(
            refused["errors"][0]["extensions"]["code"], code,
            "{refused}"
        );
    }
    assert_eq!(server.snapshot().await, before, "nothing was made");
    // Its own host is fine.
    let own = server.app.ctx.host_id.to_string();
    let made = server.ok(create, json!({"h": own})).await;
    assert!(made["createVm"]["vm"]["id"].is_string());
}

/// A named network namespace (`ip netns add`), deleted when dropped.
struct NamedNetns(String);

impl NamedNetns {
    fn add(name: String) -> NamedNetns {
        ip(&["netns", "add", &name]);
        NamedNetns(name)
    }

    /// Whether link `name` exists in this namespace.
    fn has_link(&self, name: &str) -> bool {
        std::process::Command::new("ip")
            .args(["-n", &self.0, "link", "show", name])
            .output()
            .expect("running ip")
            .status
            .success()
    }

    /// The bridge link `name` is enslaved to, from `ip -j`.
    fn master_of(&self, name: &str) -> Option<String> {
        let out = std::process::Command::new("ip")
            .args(["-n", &self.0, "-j", "link", "show", name])
            .output()
            .expect("running ip");
        let links: Value = serde_json::from_slice(&out.stdout).ok()?;
        links[0]["master"].as_str().map(str::to_string)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// One of the real nodes: a `vman serve` in a namespace of its own.
struct RealNode {
    name: &'static str,
    data: std::path::PathBuf,
    vman: VmanProcess,
}

impl RealNode {
    fn host_id(&self) -> String {
        std::fs::read_to_string(self.data.join("host-id")).unwrap()
    }
}

/// Three `vman serve` processes driving real QEMU and real netlink, each in
/// a network namespace of its own (joined to the test's by a bridge) with a
/// data directory of its own, on one PostgreSQL database: a VM made through
/// A on host B runs on B, its NIC's bridge and tap are made on B only; it is
/// stopped through C; a subscriber on A sees every node's events in one
/// gapless sequence. A bridge deleted by hand on A is A's issue, which B's
/// sweep leaves alone; a network deleted through C is taken down on A and
/// B by their own sweeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_real_nodes_in_their_own_namespaces_share_one_api_and_one_journal() {
    const TEST: &str = "three_real_nodes_in_their_own_namespaces_share_one_api_and_one_journal";
    if !netns::enter(TEST) {
        return;
    }
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    ip(&["link", "add", "hub0", "type", "bridge"]);
    ip(&["addr", "add", "10.209.0.1/24", "dev", "hub0"]);
    ip(&["link", "set", "hub0", "up"]);
    let mut spaces = Vec::new();
    let mut nodes = Vec::new();
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        let space = NamedNetns::add(format!("vt{}{name}", std::process::id()));
        let ns = space.0.as_str();
        let veth = format!("hub-{name}");
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "up0", "netns", ns,
        ]);
        ip(&["link", "set", &veth, "master", "hub0", "up"]);
        let address = format!("10.209.0.{}", 11 + i);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "up0",
        ]);
        ip(&["-n", ns, "link", "set", "up0", "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        let data = dir.path().join(name);
        let host_name = format!("node-{name}");
        let vman = VmanProcess::start_in_netns(
            ns,
            &data,
            format!("{address}:8080").parse().unwrap(),
            &[
                ("VMAN_DATABASE_URL", database.url.as_str()),
                ("VMAN_CLUSTER_HOST_NAME", host_name.as_str()),
                // Not on loopback: tokens, as a cluster must have.
                ("VMAN_AUTH_MODE", "token"),
                // B repairs what drifts, the others report it.
                (
                    "VMAN_OBSERVER_POLICY",
                    if name == "b" { "repair" } else { "report" },
                ),
            ],
        );
        spaces.push(space);
        nodes.push(RealNode { name, data, vman });
    }
    for node in &nodes {
        node.vman.ready(&reqwest::Client::new()).await;
    }
    // One admin token, in the shared database: every node takes it, and a
    // forwarded request carries it.
    let token = std::process::Command::new(env!("CARGO_BIN_EXE_vman"))
        .args([
            "token",
            "create",
            "--name",
            "test",
            "--role",
            "admin",
            "--data-dir",
        ])
        .arg(&nodes[0].data)
        .env("VMAN_DATABASE_URL", &database.url)
        .output()
        .unwrap();
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let bearer = format!("Bearer {}", String::from_utf8(token.stdout).unwrap().trim());
    let http = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                reqwest::header::HeaderValue::from_str(&bearer).unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let [a, b, c] = [&nodes[0], &nodes[1], &nodes[2]];
    let [ns_a, ns_b, ns_c] = [&spaces[0], &spaces[1], &spaces[2]];

    let hosts = a
        .vman
        .gql(
            &http,
            "{ hosts { name state thisNode capabilities } }",
            json!({}),
        )
        .await;
    let hosts = hosts["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3, "{hosts:#?}");
    for host in hosts {
        assert_eq!(host["state"], "ONLINE");
        assert_eq!(host["thisNode"], host["name"] == "node-a", "{host}");
        assert!(
            host["capabilities"]
                .as_array()
                .unwrap()
                .contains(&json!("qemu")),
            "{host}"
        );
    }

    // A subscriber on A, from the head.
    let head = a.vman.gql(&http, "{ journalHead }", json!({})).await["journalHead"]
        .as_str()
        .unwrap()
        .to_string();
    let ws_url = a.vman.url.replace("http://", "ws://") + "/ws";
    let mut ws = WsClient::connect_with(
        &ws_url,
        "graphql-transport-ws",
        json!({"authorization": bearer}),
    )
    .await;
    ws.subscribe("e", EVENTS, json!({"after": head})).await;

    // A template through C, a network through A: its bridge is made on A.
    c.vman
        .gql(&http, "mutation { createTemplate(input: {name: \"bare\", vcpus: 1, memoryMib: 64}) { template { id } } }", json!({}))
        .await;
    let network = a
        .vman
        .gql(&http, "mutation { createNetwork(input: {name: \"lan\", vlanId: 10}) { network { id bridge } } }", json!({}))
        .await;
    let bridge = network["createNetwork"]["network"]["bridge"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ns_a.has_link(&bridge), "the bridge is made on A");
    assert!(!ns_b.has_link(&bridge) && !ns_c.has_link(&bridge));

    // A VM made through A on host B; its NIC attached through C: B's node
    // does both, and makes the bridge on B.
    let created = a
        .vman
        .gql(
            &http,
            "mutation($h: ID!) { createVm(input: {name: \"on-b\", templateName: \"bare\", hostId: $h}) { vm { id host { name } } } }",
            json!({"h": b.host_id()}),
        )
        .await;
    assert_eq!(created["createVm"]["vm"]["host"]["name"], "node-b");
    let vm = created["createVm"]["vm"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let nic = c
        .vman
        .gql(
            &http,
            "mutation($id: ID!) { attachNic(vmId: $id, networkName: \"lan\") { nic { id tap } } }",
            json!({"id": vm}),
        )
        .await;
    let tap = nic["attachNic"]["nic"]["tap"].as_str().unwrap().to_string();
    let nic = nic["attachNic"]["nic"]["id"].as_str().unwrap().to_string();
    assert!(
        ns_b.has_link(&bridge),
        "the bridge is made on B with the NIC"
    );
    assert!(!ns_c.has_link(&bridge), "C has no NIC on it");
    let on = a
        .vman
        .gql(
            &http,
            "{ networks { edges { node { name hosts { name } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        on["networks"]["edges"][0]["node"]["hosts"],
        json!([{"name": "node-a"}, {"name": "node-b"}])
    );

    // Started through A: QEMU runs on B, its tap on B's bridge.
    let started = a
        .vman
        .gql(
            &http,
            "mutation($id: ID!) { startVm(id: $id) { vm { state } } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(started["startVm"]["vm"]["state"], "RUNNING");
    let pid = qemu_pid(&b.data, &vm);
    assert!(vman::host::qemu::process::is_alive(pid));
    assert!(!a.data.join("run").join(&vm).exists() && !c.data.join("run").join(&vm).exists());
    assert_eq!(
        ns_b.master_of(&tap).as_deref(),
        Some(bridge.as_str()),
        "the tap is on B's bridge"
    );
    assert!(!ns_a.has_link(&tap) && !ns_c.has_link(&tap));

    // Stopped through C.
    let stopped = c
        .vman
        .gql(
            &http,
            "mutation($id: ID!) { stopVm(id: $id, force: true) { vm { state } } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(stopped["stopVm"]["vm"]["state"], "STOPPED");
    assert!(!ns_b.has_link(&tap), "the stop removed the tap");

    // The bridge deleted by hand on A and on B: each host's own issue, of
    // the same network. A reports it; B (policy repair) makes its bridge
    // again and resolves its issue, leaving A's open.
    ip(&["-n", &ns_a.0, "link", "del", &bridge]);
    ip(&["-n", &ns_b.0, "link", "del", &bridge]);
    let sweep = "mutation { runCoherenceSweep { opened { kind host { name } } resolved { kind host { name } } } }";
    let on_a = a.vman.gql(&http, sweep, json!({})).await;
    let missing_on = |host: &str| json!([{"kind": "BRIDGE_MISSING", "host": {"name": host}}]);
    assert_eq!(
        on_a["runCoherenceSweep"]["opened"],
        missing_on("node-a"),
        "{on_a}"
    );
    let on_b = b.vman.gql(&http, sweep, json!({})).await;
    assert_eq!(
        on_b["runCoherenceSweep"]["opened"],
        missing_on("node-b"),
        "{on_b}"
    );
    assert_eq!(
        on_b["runCoherenceSweep"]["resolved"],
        missing_on("node-b"),
        "{on_b}"
    );
    assert!(ns_b.has_link(&bridge), "B's sweep made its bridge again");
    let open = "{ coherenceIssues(open: true) { edges { node { kind host { name } } } } }";
    let still = c.vman.gql(&http, open, json!({})).await;
    assert_eq!(
        still["coherenceIssues"]["edges"],
        json!([{"node": {"kind": "BRIDGE_MISSING", "host": {"name": "node-a"}}}]),
        "{still}"
    );

    // The NIC detached through A, the network deleted through C (whose host
    // has no bridge of it): A's and B's sweeps take their bridges down.
    a.vman
        .gql(
            &http,
            "mutation($id: ID!) { detachNic(nicId: $id) { nic { id } } }",
            json!({"id": nic}),
        )
        .await;
    c.vman
        .gql(
            &http,
            "mutation { deleteNetwork(name: \"lan\") { network { id } } }",
            json!({}),
        )
        .await;
    assert!(ns_b.has_link(&bridge), "B's bridge waits for B's sweep");
    b.vman.gql(&http, sweep, json!({})).await;
    assert!(!ns_b.has_link(&bridge), "B's sweep took its bridge down");
    let on_a = a.vman.gql(&http, sweep, json!({})).await;
    assert_eq!(
        on_a["runCoherenceSweep"]["resolved"],
        missing_on("node-a"),
        "{on_a}"
    );

    // Every node's events, at A, in one sequence without gaps.
    let end: i64 = a.vman.gql(&http, "{ journalHead }", json!({})).await["journalHead"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let head: i64 = head.parse().unwrap();
    let events = gapless(&mut ws, "e", head, (end - head) as usize).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for kind in [
        "TEMPLATE_CREATED",
        "NETWORK_CREATED",
        "VM_CREATED",
        "NIC_ATTACHED",
        "VM_STATE_CHANGED",
        "COHERENCE_ISSUE_OPENED",
        "NIC_DETACHED",
        "NETWORK_DELETED",
        "COHERENCE_ISSUE_RESOLVED",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let running = events
        .iter()
        .filter(|e| e["kind"] == "VM_STATE_CHANGED" && e["subjectId"] == vm.as_str())
        .map(|e| e["payload"]["to"].as_str().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(
        running,
        ["STARTING", "RUNNING", "STOPPING", "STOPPED"],
        "{kinds:?}"
    );
    eprintln!(
        "{} events from nodes {:?}, gapless at A",
        events.len(),
        nodes.iter().map(|n| n.name).collect::<Vec<_>>()
    );
    drop(nodes);
}

/// `query` sent to `server` is refused with `code`, its message holding
/// each of `needles`.
async fn refused_with(
    server: &TestServer,
    query: &str,
    variables: Value,
    code: &str,
    needles: &[&str],
) {
    let refused = server.post(query, variables).await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], code,
        "{refused}"
    );
    let message = refused["errors"][0]["message"].as_str().unwrap();
    for needle in needles {
        assert!(message.contains(needle), "{needle:?} in {message}");
    }
    assert!(refused["data"].is_null(), "{refused}");
}

/// Sets host `id`'s memory available to `bytes`, as its heartbeat would.
async fn set_memory_available(server: &TestServer, id: &str, bytes: i64) {
    use sea_orm::{ActiveModelTrait, Set};
    vman::cluster::model::ActiveModel {
        id: Set(id.to_string()),
        memory_available_bytes: Set(bytes),
        ..Default::default()
    }
    .update(&server.app.ctx.db)
    .await
    .unwrap();
}

/// Imports `name`, an image of `kind`, through `server` from a file in its
/// import directory; returns its ID and its host's name.
async fn import_on(server: &TestServer, name: &str, kind: &str) -> (String, String) {
    let import = server.app.ctx.config.import_dir();
    std::fs::create_dir_all(&import).unwrap();
    std::fs::write(import.join(name), b"an image").unwrap();
    let data = server
        .ok(
            "mutation($n: String!, $k: ImageKind!) { importImage(input: {name: $n, kind: $k, path: $n}) { image { id host { name } } } }",
            json!({"n": name, "k": kind}),
        )
        .await;
    let image = &data["importImage"]["image"];
    (
        image["id"].as_str().unwrap().to_string(),
        image["host"]["name"].as_str().unwrap().to_string(),
    )
}

/// Images and disks are their host's: an image imported through B is B's;
/// a VM of a template built on it goes to B though A has more memory, and
/// is refused on A; B's unattached disk is not A's sweep's to judge, cannot
/// be attached to a VM on A, and deleteDisk or deleteImage sent to A are
/// carried out by B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_and_disks_are_their_hosts_and_a_vm_goes_where_its_images_are() {
    // No heartbeat overwrites the figures set below; A is a real node, whose
    // sweep reads disk files.
    let quiet = |c: &mut vman::config::Config| {
        c.cluster.heartbeat_interval = Duration::from_secs(600);
        c.cluster.offline_after = Duration::from_secs(1800);
    };
    let a = TestServer::start_on(Backend::Postgres, |c| {
        quiet(c);
        c.dry_run = false;
        c.observer.interval = Duration::from_secs(3600);
    })
    .await;
    let b = second_node(&a, quiet).await;
    let [a_host, b_host] = [&a, &b].map(|n| n.app.ctx.host_id.to_string());
    set_memory_available(&a, &a_host, 1 << 40).await;
    set_memory_available(&a, &b_host, 1 << 20).await;

    // A has more memory: a VM that needs no image goes there, through B.
    a.create_template("bare").await;
    let placed = b
        .ok(
            "mutation { createVm(input: {name: \"roomy\", templateName: \"bare\"}) { vm { host { name } } } }",
            json!({}),
        )
        .await;
    assert_eq!(placed["createVm"]["vm"]["host"]["name"], name_of(&a));

    // An image imported through B is B's, whichever node is asked.
    let (image, host) = import_on(&b, "base-b", "DISK").await;
    assert_eq!(host, name_of(&b));
    for server in [&a, &b] {
        let data = server
            .ok(
                "query($id: ID!) { image(id: $id) { host { name } } }",
                json!({"id": image}),
            )
            .await;
        assert_eq!(data["image"]["host"]["name"], name_of(&b), "{data}");
    }
    a.ok(
        "mutation($i: ID!) { createTemplate(input: {name: \"on-b\", vcpus: 1, memoryMib: 64, baseImageId: $i, defaultDiskSizeBytes: 1048576}) { template { id } } }",
        json!({"i": image}),
    )
    .await;

    // Its VMs go to B, though A has more memory.
    let made = a
        .ok(
            "mutation { createVm(input: {name: \"near-base\", templateName: \"on-b\"}) { vm { id host { name } disks { host { name } } } } }",
            json!({}),
        )
        .await;
    let vm = &made["createVm"]["vm"];
    assert_eq!(vm["host"]["name"], name_of(&b), "{made}");
    assert_eq!(vm["disks"][0]["host"]["name"], name_of(&b), "{made}");

    // On A, by hostId: refused, nothing made.
    let before = a.snapshot().await;
    refused_with(
        &b,
        "mutation($h: ID!) { createVm(input: {name: \"far-from-base\", templateName: \"on-b\", hostId: $h}) { vm { id } } }",
        json!({"h": a_host}),
        "CONFLICT",
        &["image \"base-b\" is on host", &name_of(&b)],
    )
    .await;
    assert_eq!(a.snapshot().await, before, "nothing was made");

    // A disk made through B is B's; A's sweep leaves it to B (A has no file
    // of it), and judges its own disks.
    let b_disk = b.create_disk("scratch-b", 1 << 20, "QCOW2").await;
    let a_disk = a.create_disk("scratch-a", 1 << 20, "QCOW2").await;
    let data = a
        .ok(
            "query($id: ID!) { disk(id: $id) { host { name } } }",
            json!({"id": b_disk}),
        )
        .await;
    assert_eq!(data["disk"]["host"]["name"], name_of(&b));
    let a_file = a
        .app
        .ctx
        .config
        .storage_dir()
        .join(format!("{a_disk}.qcow2"));
    std::fs::remove_file(&a_file).unwrap();
    let swept = a
        .ok(
            "mutation { runCoherenceSweep { findings { kind subjectId } } }",
            json!({}),
        )
        .await;
    let subjects: Vec<&str> = swept["runCoherenceSweep"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["subjectId"].as_str().unwrap())
        .collect();
    assert!(subjects.contains(&a_disk.as_str()), "{swept}");
    assert!(!subjects.contains(&b_disk.as_str()), "{swept}");

    // B's disk cannot go into a VM on A: nothing changed.
    let roomy = placed_vm_id(&a, "roomy").await;
    refused_with(
        &a,
        "mutation($d: ID!, $v: ID!) { attachDisk(diskId: $d, vmId: $v) { disk { attachment } } }",
        json!({"d": b_disk, "v": roomy}),
        "CONFLICT",
        &["disk \"scratch-b\" is on host"],
    )
    .await;

    // Deleted through A: B's node does it (A's would refuse: not its host).
    let deleted = a
        .ok(
            "mutation($id: ID!) { deleteDisk(id: $id) { operation { id } } }",
            json!({"id": b_disk}),
        )
        .await;
    let op = deleted["deleteDisk"]["operation"]["id"].as_str().unwrap();
    use sea_orm::EntityTrait;
    let op = vman::operation::model::Entity::find_by_id(op.to_string())
        .one(&a.app.ctx.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(op.host_id.as_deref(), Some(b_host.as_str()));
    let (unused, _) = import_on(&b, "unused-b", "DISK").await;
    a.ok(
        "mutation($id: ID!) { deleteImage(id: $id) { image { id } } }",
        json!({"id": unused}),
    )
    .await;
    let gone = b
        .post(
            "query($id: ID!) { image(id: $id) { id } }",
            json!({"id": unused}),
        )
        .await;
    assert!(gone["data"]["image"].is_null(), "{gone}");

    // B's ISO cannot go into the drive of a VM on A.
    let (iso, _) = import_on(&b, "install-b", "ISO").await;
    refused_with(
        &a,
        "mutation($v: ID!, $i: ID!) { attachCdrom(id: $v, imageId: $i) { vm { id } } }",
        json!({"v": roomy, "i": iso}),
        "CONFLICT",
        &["image \"install-b\" is on host"],
    )
    .await;

    // A template whose images are on A and on B fits no host.
    let (kernel, _) = import_on(&a, "kernel-a", "KERNEL").await;
    a.ok(
        "mutation($b: ID!, $k: ID!) { createTemplate(input: {name: \"split\", vcpus: 1, memoryMib: 64, baseImageId: $b, kernelImageId: $k, cmdline: \"console=ttyS0\", defaultDiskSizeBytes: 1048576}) { template { id } } }",
        json!({"b": image, "k": kernel}),
    )
    .await;
    let split = "mutation($n: String!, $t: String!) { createVm(input: {name: $n, templateName: $t}) { vm { id } } }";
    let before = a.snapshot().await;
    refused_with(
        &a,
        split,
        json!({"n": "split-vm", "t": "split"}),
        "CONFLICT",
        &["no host holds every image"],
    )
    .await;

    // B offline: its images' template fits no online host.
    use sea_orm::{ActiveModelTrait, Set};
    vman::cluster::model::ActiveModel {
        id: Set(b_host.clone()),
        state: Set(vman::cluster::HostState::Offline),
        ..Default::default()
    }
    .update(&a.app.ctx.db)
    .await
    .unwrap();
    refused_with(
        &a,
        split,
        json!({"n": "homeless", "t": "on-b"}),
        "HOST_UNAVAILABLE",
        &["no online host holds", "is offline"],
    )
    .await;
    assert_eq!(a.snapshot().await, before, "nothing was made");
}

/// The ID of VM `name`.
async fn placed_vm_id(server: &TestServer, name: &str) -> String {
    let data = server
        .ok(
            "query($n: String) { vm(name: $n) { id } }",
            json!({"n": name}),
        )
        .await;
    data["vm"]["id"].as_str().unwrap().to_string()
}

/// A database migrated up to before images and disks had hosts (migration
/// 13), holding `hosts` hosts, a VM on the last of them with an attached
/// disk, a detached disk and an image; then migrated up. Returns each row's
/// `host_id` afterwards (VM's host, attached, detached, image).
async fn migrated_from_13(
    location: vman::db::Location,
    hosts: usize,
) -> (String, [Option<String>; 3]) {
    use migration::{Migrator, MigratorTrait};
    use sea_orm::ConnectionTrait;
    let db = vman::db::connect(location, Duration::from_secs(5))
        .await
        .unwrap();
    Migrator::up(&db, Some(13)).await.unwrap();
    let at = "'2026-12-01 00:00:00+00'";
    let mut last = String::new();
    for n in 0..hosts {
        last = format!("01940000-0000-7000-8000-00000000000{n}");
        db.execute_unprepared(&format!(
            "INSERT INTO hosts (id, name, state, version, capabilities, cpus, memory_total_bytes, memory_available_bytes, heartbeat_at, registered_at) \
             VALUES ('{last}', 'h{n}', 'ONLINE', '0', '[]', 1, 1, 1, {at}, {at})"
        ))
        .await
        .unwrap();
    }
    let vm_host = match hosts {
        0 => "NULL".to_string(),
        _ => format!("'{last}'"),
    };
    for sql in [
        format!(
            "INSERT INTO vms (id, name, vcpus, memory_mib, desired_state, state, description, host_id, created_at, updated_at) \
             VALUES ('vm', 'vm', 1, 64, 'STOPPED', 'STOPPED', '', {vm_host}, {at}, {at})"
        ),
        format!(
            "INSERT INTO disks (id, name, format, size_bytes, vm_id, attachment, created_at, updated_at) \
             VALUES ('attached', 'attached', 'QCOW2', 512, 'vm', 'ATTACHED', {at}, {at})"
        ),
        format!(
            "INSERT INTO disks (id, name, format, size_bytes, attachment, created_at, updated_at) \
             VALUES ('detached', 'detached', 'QCOW2', 512, 'DETACHED', {at}, {at})"
        ),
        format!(
            "INSERT INTO images (id, name, kind, size_bytes, created_at) VALUES ('image', 'image', 'DISK', 0, {at})"
        ),
    ] {
        db.execute_unprepared(&sql).await.unwrap();
    }
    Migrator::up(&db, None).await.unwrap();
    let found = host_ids(&db).await;
    db.close().await.unwrap();
    (last, found)
}

/// The `host_id` of the disks `attached` and `detached` and the image `image`.
async fn host_ids(db: &sea_orm::DatabaseConnection) -> [Option<String>; 3] {
    use sea_orm::{ConnectionTrait, Statement};
    let mut found = Vec::new();
    for (table, id) in [
        ("disks", "attached"),
        ("disks", "detached"),
        ("images", "image"),
    ] {
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT host_id FROM {table} WHERE id = '{id}'"),
            ))
            .await
            .unwrap()
            .unwrap();
        found.push(row.try_get_by_index::<Option<String>>(0).unwrap());
    }
    found.try_into().unwrap()
}

/// Migration 14 on rows from before it: with one host, they are its; with
/// several, an attached disk is its VM's host's and the rest stay unknown
/// (null); with none, null until a node registers alone.
#[tokio::test]
async fn images_and_disks_from_before_hosts_go_to_the_host_that_can_be_known() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = |name: &str| vman::db::Location::Sqlite(dir.path().join(name));
    let (only, found) = migrated_from_13(sqlite("one.db"), 1).await;
    assert_eq!(found, [Some(only.clone()), Some(only.clone()), Some(only)]);
    // Without a host yet, the first node claims them as it claims the VMs.
    let none = dir.path().join("none");
    std::fs::create_dir_all(&none).unwrap();
    let (_, found) = migrated_from_13(vman::db::Location::Sqlite(none.join("vman.db")), 0).await;
    assert_eq!(found, [None, None, None]);
    let node = TestServer::start_on(Backend::Sqlite, |c| c.data_dir = none.clone()).await;
    let host = Some(node.app.ctx.host_id.to_string());
    assert_eq!(
        host_ids(&node.app.ctx.db).await,
        [host.clone(), host.clone(), host]
    );
    let database = TestDatabase::create().await;
    let postgres =
        vman::db::Location::Postgres(vman::config::DatabaseUrl::new(database.url.clone()));
    let (last, found) = migrated_from_13(postgres, 2).await;
    assert_eq!(found, [Some(last), None, None]);
}
