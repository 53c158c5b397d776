//! Issue 22's read figures: what a dashboard's queries cost, each beside the
//! floor of HTTP and GraphQL (`{ __typename }`) measured in the same run.
//!
//! vman is the real `vman serve` process (the bench-profile build of this
//! tree, or `--vman PATH`), on the dry-run host, with a data directory of
//! its own. The bench seeds it through the API (a template, a network, 100
//! VMs with a root disk and a NIC each), measures, grows it to 10,000 VMs
//! (the last 100 with NICs, 100 RUNNING, each tagged `rack-<i % 100>`) and
//! measures again; between the two, 1,000 websocket subscribers of one
//! VM's state (`--subscribers`) time a state change to the last of them,
//! beside one subscriber; then one subscriber that never reads sits through
//! 2 × 10,000 state changes. The load comes from `wrk` (Debian's package; see
//! scripts/install-deps.sh), a process of its own, with 8 connections over
//! 2 threads unless told otherwise. It prints vman's RSS idle and after each
//! part.
//!
//! `cargo bench --bench api` (add `-- --seconds N` per figure, default 5;
//! `--connections N`; `--threads N` for wrk; `--vms N` for the large part,
//! default 10000; `--subscribers N` for the websocket part, default 1000;
//! `--vman PATH` to measure another build; `--against PATH` to measure a
//! second build after it, in the same run; `--only PARTS` for some of the
//! parts `reads`, `subscribers`, `stalled`, `large`, comma-separated).

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{VmanProcess, WsClient};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};

struct Args {
    vman: PathBuf,
    against: Option<PathBuf>,
    parts: Vec<String>,
    seconds: u32,
    connections: u32,
    threads: u32,
    vms: usize,
    subscribers: usize,
}

impl Args {
    fn parse() -> Args {
        let args: Vec<String> = std::env::args().collect();
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let number = |name: &str, default: u32| {
            value(name)
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("{name} takes a number"))
                })
                .unwrap_or(default)
        };
        Args {
            vman: value("--vman")
                .map(PathBuf::from)
                .unwrap_or_else(|| env!("CARGO_BIN_EXE_vman").into()),
            against: value("--against").map(PathBuf::from),
            parts: value("--only")
                .unwrap_or_else(|| PARTS.join(","))
                .split(',')
                .map(|part| {
                    assert!(PARTS.contains(&part), "--only takes some of {PARTS:?}");
                    part.to_string()
                })
                .collect(),
            seconds: number("--seconds", 5),
            connections: number("--connections", 8),
            threads: number("--threads", 2),
            vms: number("--vms", 10_000) as usize,
            subscribers: number("--subscribers", 1_000) as usize,
        }
    }
}

/// What `--only` chooses from, in the order they run.
const PARTS: [&str; 4] = ["reads", "subscribers", "stalled", "large"];

impl Args {
    fn runs(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }
}

/// `vman serve` on the dry-run host, killed when dropped.
struct Vman {
    process: VmanProcess,
    url: String,
    http: reqwest::Client,
}

impl Vman {
    async fn start(program: &Path, data: &Path) -> Vman {
        let process = VmanProcess::start_program(
            program,
            data,
            common::free_port(),
            &[
                ("VMAN_DRY_RUN", "true"),
                // The load is one caller: no per-token rate limit.
                ("VMAN_LIMITS_REQUESTS_PER_SECOND", "0"),
                // The subscribers' part holds 1,000 websockets.
                ("VMAN_LIMITS_WEBSOCKET_CONNECTIONS_PER_TOKEN", "2000"),
            ],
        );
        let http = reqwest::Client::new();
        process.ready(&http).await;
        Vman {
            url: process.url.clone(),
            process,
            http,
        }
    }

    /// Runs an operation that must succeed; its `data`.
    async fn ok(&self, query: &str, variables: Value) -> Value {
        self.process.gql(&self.http, query, variables).await
    }

    /// A counter or gauge from `/metrics` (0 when absent).
    async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(self.url.replace("/graphql", "/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter_map(|line| line.strip_prefix(name))
            .filter_map(|rest| rest.trim().parse::<f64>().ok())
            .sum()
    }

    /// vman's CPU time so far: in user space, in the kernel.
    fn cpu(&self) -> (Duration, Duration) {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.process.child.id())).unwrap();
        // After the command name in parentheses: utime and stime are the
        // 12th and 13th fields, in clock ticks.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        let time =
            |field: &str| Duration::from_millis(field.parse::<u64>().unwrap() * 1000 / per_second);
        (time(fields[11]), time(fields[12]))
    }

    /// vman's resident memory, in MiB.
    fn rss_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.process.child.id())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        kib / 1024.0
    }
}

/// What wrk measured.
struct Load {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>8.0} req/s, p50 {:>6.2} ms, p99 {:>6.2} ms",
            self.requests_per_second, self.p50_ms, self.p99_ms
        )
    }
}

/// Puts `query` (with `variables`) under load from wrk for `args.seconds`.
fn load(args: &Args, url: &str, query: &str, variables: &Value) -> Load {
    let body = serde_json::to_string(&json!({"query": query, "variables": variables})).unwrap();
    let script = std::env::temp_dir().join(format!("vman-bench-api-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [==[{body}]==]\n"
        ),
    )
    .unwrap();
    let output = Command::new("wrk")
        .args([
            "--latency",
            &format!("-t{}", args.threads),
            &format!("-c{}", args.connections),
            &format!("-d{}s", args.seconds),
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running wrk ({e}): scripts/install-deps.sh installs it"));
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed:\n{text}");
    assert!(
        !text.contains("Non-2xx"),
        "vman answered some requests with an error status:\n{text}"
    );
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {prefix:?} in wrk's output:\n{text}"))
    };
    Load {
        requests_per_second: field("Requests/sec:").parse().unwrap(),
        p50_ms: duration_ms(field("50%")),
        p99_ms: duration_ms(field("99%")),
    }
}

/// wrk's `1.23ms`, `850.00us`, `1.02s`, in ms.
fn duration_ms(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => f64::NAN,
    }
}

const FLOOR: &str = "{ __typename }";
const TEMPLATES: &str = "{ templates(first: 1) { totalCount } }";
const PAGE: &str =
    "query($after: String) { vms(first: 100, after: $after) { edges { node { id name state } } } }";
const PAGE_WITH_CHILDREN: &str = "query($after: String) { vms(first: 100, after: $after) { edges { node { id name state disks { id name sizeBytes } nics { id mac } } } } }";
const FILTERED: &str = "query($tag: String, $state: VmState, $name: String) { vms(first: 100, tag: $tag, state: $state, nameContains: $name) { totalCount edges { node { id name state disks { id name sizeBytes } nics { id mac } } } } }";

struct Figure {
    what: String,
    query: &'static str,
    variables: Value,
    /// How many VMs the page must hold (checked once before the load).
    page: Option<usize>,
}

impl Figure {
    fn new(what: &str, query: &'static str, variables: Value, page: Option<usize>) -> Figure {
        Figure {
            what: what.to_string(),
            query,
            variables,
            page,
        }
    }
}

/// Measures the floor and then each figure, printing each beside it.
async fn measure(args: &Args, vman: &Vman, figures: &[Figure]) {
    let floor = load(args, &vman.url, FLOOR, &json!({}));
    println!("  {:<44} {floor}", "{ __typename } (the floor)");
    for figure in figures {
        let data = vman.ok(figure.query, figure.variables.clone()).await;
        if let Some(expected) = figure.page {
            let got = data["vms"]["edges"].as_array().map_or(0, Vec::len);
            assert_eq!(got, expected, "{}: {data}", figure.what);
        }
        let measured = load(args, &vman.url, figure.query, &figure.variables);
        println!(
            "  {:<44} {measured}   ({:.1}x the floor's time)",
            figure.what,
            floor.requests_per_second / measured.requests_per_second
        );
    }
}

/// Creates VMs `from..to` (`vm-00000`, …), `parallel` at a time; those that
/// `with_nic` picks get a NIC on `lan`.
async fn create_vms(vman: &Vman, from: usize, to: usize, with_nic: impl Fn(usize) -> bool) {
    let parallel = 4;
    let mut next = from;
    while next < to {
        let batch: Vec<usize> = (next..to.min(next + parallel)).collect();
        next += batch.len();
        futures_util::future::join_all(batch.into_iter().map(|i| {
            let nic = with_nic(i);
            async move {
                let name = format!("vm-{i:05}");
                vman.ok(
                    "mutation($n: String!, $t: [String!]) { createVm(input: {name: $n, templateName: \"small\", tags: $t}) { vm { id } } }",
                    json!({"n": name, "t": [format!("rack-{}", i % 100)]}),
                )
                .await;
                if nic {
                    vman.ok(
                        "mutation($n: String!) { attachNic(vmName: $n, networkName: \"lan\") { nic { id } } }",
                        json!({"n": name}),
                    )
                    .await;
                }
            }
        }))
        .await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `args.subscribers` graphql-transport-ws connections subscribed to one
/// VM's state; a state change (its start or stop, on the dry-run host) →
/// the last of them has it, over `ROUNDS` changes, beside the same with one
/// subscriber (the floor). The clients are this process's one thread: the
/// figure includes reading 1,000 messages here.
async fn subscribers(args: &Args, vman: &Vman) {
    const ROUNDS: usize = 20;
    const SUBSCRIPTION: &str = "subscription($vm: ID) { vmStateChanged(vmId: $vm) { to } }";
    let vm = vman
        .ok("{ vm(name: \"vm-00000\") { id } }", json!({}))
        .await["vm"]["id"]
        .clone();
    let ws_url = vman.url.replace("http://", "ws://") + "/ws";
    println!(
        "\nwebsocket subscribers (graphql-transport-ws) of one VM's state, {ROUNDS} changes each:"
    );
    let mut floor = None;
    for count in [1, args.subscribers] {
        let mut clients = Vec::with_capacity(count);
        for _ in 0..count {
            let mut client = WsClient::connect(&ws_url).await;
            client.subscribe("s", SUBSCRIPTION, json!({"vm": vm})).await;
            clients.push(client);
        }
        let mut lasts = Vec::with_capacity(ROUNDS);
        let cpu = vman.cpu();
        for round in 0..ROUNDS {
            let (mutation, to) = match round % 2 {
                0 => (
                    "mutation($id: ID!) { startVm(id: $id) { vm { state } } }",
                    "RUNNING",
                ),
                _ => (
                    "mutation($id: ID!) { stopVm(id: $id) { vm { state } } }",
                    "STOPPED",
                ),
            };
            let started = Instant::now();
            vman.ok(mutation, json!({"id": vm})).await;
            for client in &mut clients {
                while client.next_data("s").await["vmStateChanged"]["to"] != to {}
            }
            lasts.push(started.elapsed());
        }
        let (user, system) = vman.cpu();
        let (user, system) = (
            (user - cpu.0) / ROUNDS as u32,
            (system - cpu.1) / ROUNDS as u32,
        );
        let cpu = format!(
            "vman's CPU {:.1} + {:.1} ms (user + kernel) a change",
            user.as_secs_f64() * 1000.0,
            system.as_secs_f64() * 1000.0
        );
        lasts.sort();
        let (p50, p99) = (percentile(&lasts, 0.5), percentile(&lasts, 0.99));
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let what = format!("{count} subscriber(s): state change -> the last");
        match floor {
            None => {
                println!(
                    "  {what:<44} p50 {:>6.2} ms, p99 {:>6.2} ms (the floor); {cpu}",
                    ms(p50),
                    ms(p99),
                );
                floor = Some(p50);
            }
            Some(floor) => println!(
                "  {what:<44} p50 {:>6.2} ms, p99 {:>6.2} ms   ({:.1}x the floor's p50); {cpu}",
                ms(p50),
                ms(p99),
                p50.as_secs_f64() / floor.as_secs_f64(),
            ),
        }
        for client in clients {
            client.close().await;
        }
    }
}

/// One websocket subscriber of every VM's state changes that never reads
/// (its kernel receive buffer 4 KiB), while 2 × `EVENTS` state changes are
/// made (start and stop of 4 VMs, in parallel, on the dry-run host: two
/// events each); vman's RSS before and after each. vman must drop the
/// subscriber (LAGGED, with its resume point) rather than hold the events.
async fn stalled(vman: &Vman) {
    const EVENTS: usize = 10_000;
    const LANES: usize = 4;
    let mut vms = Vec::new();
    for i in 0..LANES {
        let vm = vman
            .ok(
                "query($n: String!) { vm(name: $n) { id } }",
                json!({"n": format!("vm-{i:05}")}),
            )
            .await["vm"]["id"]
            .clone();
        vms.push(vm);
    }
    let ws_url = vman.url.replace("http://", "ws://") + "/ws";
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            ws_url.as_str(),
        )
        .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let address = vman
        .url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap();
    let stream = socket.connect(address.parse().unwrap()).await.unwrap();
    let (mut socket, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    let subscription =
        "subscription { vmStateChanged { vmId from to reason operationId sequence at } }";
    for message in [
        json!({"type": "connection_init"}),
        json!({"type": "subscribe", "id": "stalled", "payload": {"query": subscription}}),
        json!({"type": "ping"}),
    ] {
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(
                message.to_string(),
            ))
            .await
            .unwrap();
    }
    // The ack, then the pong: the subscription is in place. From here on
    // the socket is not read until the end.
    for expected in ["connection_ack", "pong"] {
        let frame = socket.next().await.unwrap().unwrap();
        let message: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        assert_eq!(message["type"], expected, "{message}");
    }
    let lagged = vman.metric("vman_websocket_lagged_total").await;
    println!(
        "\none websocket subscriber of every VM's state that never reads, {EVENTS} state changes at a time ({LANES} VMs started and stopped in parallel):"
    );
    println!(
        "  RSS before:                                  {:.1} MiB",
        vman.rss_mib()
    );
    for round in 1..=2 {
        let started = Instant::now();
        futures_util::future::join_all(vms.iter().map(|vm| async move {
            for change in 0..EVENTS / LANES / 2 {
                let mutation = match change % 2 {
                    0 => "mutation($id: ID!) { startVm(id: $id) { vm { state } } }",
                    _ => "mutation($id: ID!) { stopVm(id: $id, force: true) { vm { state } } }",
                };
                vman.ok(mutation, json!({"id": vm})).await;
            }
        }))
        .await;
        println!(
            "  RSS after {:>6} events:                      {:.1} MiB   ({:.0} events/s)",
            round * EVENTS,
            vman.rss_mib(),
            EVENTS as f64 / started.elapsed().as_secs_f64()
        );
    }
    // What reached the subscriber, read now: some results, then the end of
    // its subscription (or of the socket, when the write stayed stuck).
    let (mut results, mut end) = (0, String::from("the socket closed"));
    while let Ok(Some(Ok(frame))) =
        tokio::time::timeout(Duration::from_secs(10), socket.next()).await
    {
        let Ok(text) = frame.to_text() else { continue };
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        match message["type"].as_str() {
            Some("next") => results += 1,
            Some("ping") => {}
            _ => {
                end = format!(
                    "{} {} (after: {})",
                    message["type"],
                    message["payload"][0]["extensions"]["code"],
                    message["payload"][0]["extensions"]["after"]
                );
                break;
            }
        }
    }
    println!(
        "  the subscriber was sent {results} results, then {end}; vman_websocket_lagged_total +{}",
        vman.metric("vman_websocket_lagged_total").await - lagged
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    run(&args, &args.vman).await;
    if let Some(against) = &args.against {
        println!();
        run(&args, against).await;
    }
}

async fn run(args: &Args, program: &Path) {
    let data = tempfile::tempdir().unwrap();
    let vman = Vman::start(program, &data.path().join("data")).await;
    println!(
        "vman {} (dry-run host), wrk with {} connections on {} threads, {} s per figure",
        program.display(),
        args.connections,
        args.threads,
        args.seconds
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("idle RSS: {:.1} MiB", vman.rss_mib());

    vman.ok(
        "mutation { createTemplate(input: {name: \"small\", vcpus: 1, memoryMib: 128, defaultDiskSizeBytes: 1048576}) { template { id } } }",
        json!({}),
    )
    .await;
    vman.ok(
        "mutation { createNetwork(input: {name: \"lan\", vlanId: 10}) { network { id } } }",
        json!({}),
    )
    .await;
    create_vms(&vman, 0, 100, |_| true).await;
    if args.runs("reads") {
        println!("\n100 VMs, each with a root disk and a NIC:");
        measure(
            args,
            &vman,
            &[
                Figure::new(
                    "templates(first: 1) { totalCount }",
                    TEMPLATES,
                    json!({}),
                    None,
                ),
                Figure::new(
                    "a page of 100 VMs (id name state)",
                    PAGE,
                    json!({}),
                    Some(100),
                ),
                Figure::new(
                    "the same with each VM's disks and NICs",
                    PAGE_WITH_CHILDREN,
                    json!({}),
                    Some(100),
                ),
            ],
        )
        .await;
        println!("RSS: {:.1} MiB", vman.rss_mib());
    }

    if args.runs("subscribers") {
        subscribers(args, &vman).await;
        println!("RSS: {:.1} MiB", vman.rss_mib());
    }

    if args.runs("stalled") {
        stalled(&vman).await;
    }

    if !args.runs("large") {
        return;
    }
    let n = args.vms.max(300);
    let seeding = Instant::now();
    create_vms(&vman, 100, n, |i| i >= n - 100).await;
    // 100 RUNNING, for the state filter (the dry-run host starts nothing).
    for i in 150..250 {
        vman.ok(
            "mutation($n: String!) { startVm(name: $n) { vm { state } } }",
            json!({"n": format!("vm-{i:05}")}),
        )
        .await;
    }
    println!(
        "\n{n} VMs (seeded in {:.0} s; the first and last 100 with NICs, 100 RUNNING, tags rack-0 to rack-99):",
        seeding.elapsed().as_secs_f64()
    );
    // The cursor of the last page: the ID of the VM before it.
    let before_last = vman
        .ok(
            "query($n: String!) { vm(name: $n) { id } }",
            json!({"n": format!("vm-{:05}", n - 101)}),
        )
        .await["vm"]["id"]
        .clone();
    measure(
        args,
        &vman,
        &[
            Figure::new(
                "first page of 100 with disks and NICs",
                PAGE_WITH_CHILDREN,
                json!({}),
                Some(100),
            ),
            Figure::new(
                "last page of 100 with disks and NICs",
                PAGE_WITH_CHILDREN,
                json!({"after": before_last}),
                Some(100),
            ),
            Figure::new(
                "tag rack-7 (100 VMs), with disks and NICs",
                FILTERED,
                json!({"tag": "rack-7"}),
                Some((n / 100).min(100)),
            ),
            Figure::new(
                "state RUNNING (100 VMs), with disks and NICs",
                FILTERED,
                json!({"state": "RUNNING"}),
                Some(100),
            ),
            Figure::new(
                "name contains \"vm-09\", with disks and NICs",
                FILTERED,
                json!({"name": "vm-09"}),
                Some(
                    (0..n)
                        .filter(|i| format!("vm-{i:05}").contains("vm-09"))
                        .count()
                        .min(100),
                ),
            ),
        ],
    )
    .await;
    println!("RSS: {:.1} MiB", vman.rss_mib());
}
