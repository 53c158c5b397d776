//! Test fixtures: the real app on a temp-dir SQLite file (or a fresh
//! PostgreSQL database: [`postgres::Backend`]), served on a real loopback
//! port, with HTTP and websocket clients.

#![allow(dead_code)]

pub mod failing;
pub mod netns;
pub mod postgres;
pub mod tls;
pub mod tmpfs;

use std::{sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    Connector, MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};
use vman::{app::App, config::Config};

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub app: Arc<App>,
    pub url: String,
    pub ws_url: String,
    pub http: reqwest::Client,
    /// The secret `post` sends as a bearer token (an admin's, with
    /// [`TestServer::with_tokens`]).
    pub token: Option<String>,
    /// The `serve_on` task: it ends once `app.ctx.cancel` fires.
    pub serving: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The server's PostgreSQL database, if it runs on one.
    pub database: Option<postgres::TestDatabase>,
    _dir: tempfile::TempDir,
}

/// The secrets of one token per role.
pub struct Tokens {
    pub viewer: String,
    pub operator: String,
    pub admin: String,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// A dry-run server on the backend `VMANTEST_DATABASE` names
    /// ([`postgres::Backend::from_env`]), `adjust`ed.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_on(postgres::Backend::from_env(), adjust).await
    }

    /// A dry-run server on `backend`, `adjust`ed.
    pub async fn start_on(
        backend: postgres::Backend,
        adjust: impl FnOnce(&mut Config),
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let database = match backend {
            postgres::Backend::Sqlite => None,
            postgres::Backend::Postgres => Some(postgres::TestDatabase::create().await),
        };
        let mut config = Config {
            data_dir: dir.path().join("data"),
            dry_run: true,
            ..Config::default()
        };
        config.database.url = database
            .as_ref()
            .map(|d| vman::config::DatabaseUrl::new(d.url.clone()));
        // Servers of one test may share a database: each is a host of its own.
        config.cluster.host_name = Some(format!(
            "node-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        adjust(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let (http, ws) = (config.scheme(), config.ws_scheme());
        // Where the other nodes on its database send the mutations for its VMs.
        config
            .cluster
            .advertise_url
            .get_or_insert_with(|| format!("{http}://{addr}/graphql"));
        let app = App::start(config).await.expect("app starts");
        let serving = tokio::spawn(vman::server::serve_on(app.clone(), listener));
        TestServer {
            app,
            url: format!("{http}://{addr}/graphql"),
            ws_url: format!("{ws}://{addr}/graphql/ws"),
            http: reqwest::Client::new(),
            token: None,
            serving,
            database,
            _dir: dir,
        }
    }

    /// A server that serves https and wss with `ca`'s server certificate;
    /// its `http` client trusts `ca` and no other root.
    pub async fn start_tls(ca: &tls::TestCa) -> TestServer {
        let mut server = Self::start_with(|c| ca.configure(c)).await;
        server.http = ca.http_client();
        server
    }

    /// A server with `auth.mode = "token"` and a token of each role; `post`
    /// and its helpers act as the admin.
    pub async fn with_tokens(adjust: impl FnOnce(&mut Config)) -> (TestServer, Tokens) {
        let mut server = Self::start_with(|config| {
            config.auth.mode = vman::config::AuthMode::Token;
            // Tests make requests as fast as they can; the rate-limit test
            // sets its own.
            config.limits.requests_per_second = 0;
            adjust(config);
        })
        .await;
        let tokens = Tokens {
            viewer: server.make_token("viewer", vman::auth::Role::Viewer).await,
            operator: server
                .make_token("operator", vman::auth::Role::Operator)
                .await,
            admin: server.make_token("admin", vman::auth::Role::Admin).await,
        };
        server.token = Some(tokens.admin.clone());
        (server, tokens)
    }

    /// Makes a token as `vman token create` does; its secret.
    pub async fn make_token(&self, name: &str, role: vman::auth::Role) -> String {
        let new = vman::auth::token::NewToken {
            name: name.into(),
            role,
            expires_in: None,
        };
        vman::auth::token::create_local(&self.app.ctx.db, &new)
            .await
            .expect("token made")
            .1
    }

    /// POSTs a GraphQL request with `token` as the bearer (none: no header);
    /// the status and the JSON body.
    pub async fn post_as(
        &self,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> (reqwest::StatusCode, Value) {
        let mut request = self
            .http
            .post(&self.url)
            .json(&json!({"query": query, "variables": variables}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("POST /graphql");
        let status = response.status();
        (status, response.json().await.expect("JSON response"))
    }

    /// POSTs a GraphQL request and returns the whole JSON response.
    pub async fn post(&self, query: &str, variables: Value) -> Value {
        self.post_as(self.token.as_deref(), query, variables)
            .await
            .1
    }

    /// Runs an operation that must succeed and returns its `data`.
    pub async fn ok(&self, query: &str, variables: Value) -> Value {
        let response = self.post(query, variables).await;
        assert!(
            response.get("errors").is_none(),
            "unexpected errors: {response:#}"
        );
        response["data"].clone()
    }

    /// Runs an operation that must fail and returns its first error's code.
    pub async fn error_code(&self, query: &str, variables: Value) -> String {
        let response = self.post(query, variables).await;
        let error = &response["errors"][0];
        assert!(!error.is_null(), "expected an error, got {response:#}");
        error["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("error without a code: {response:#}"))
            .to_string()
    }

    pub async fn create_template(&self, name: &str) -> String {
        let data = self
            .ok(
                "mutation($name: String!) { createTemplate(input: {name: $name, vcpus: 1, memoryMib: 128, defaultDiskSizeBytes: 1048576}) { template { id } } }",
                json!({"name": name}),
            )
            .await;
        data["createTemplate"]["template"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn create_vm(&self, name: &str, template: &str) -> String {
        let data = self
            .ok(
                "mutation($name: String!, $t: String!) { createVm(input: {name: $name, templateName: $t}) { vm { id state } } }",
                json!({"name": name, "t": template}),
            )
            .await;
        assert_eq!(data["createVm"]["vm"]["state"], "STOPPED");
        data["createVm"]["vm"]["id"].as_str().unwrap().to_string()
    }

    /// Creates a network on VLAN `vlan` and returns its ID.
    pub async fn create_network(&self, name: &str, vlan: i32) -> String {
        let data = self
            .ok(
                "mutation($n: String!, $v: Int!) { createNetwork(input: {name: $n, vlanId: $v}) { network { id } } }",
                json!({"n": name, "v": vlan}),
            )
            .await;
        data["createNetwork"]["network"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Starts a VM; an error in the answer fails the test.
    pub async fn start_vm(&self, id: &str) -> Value {
        self.ok(
            "mutation($id: ID!) { startVm(id: $id) { vm { state } } }",
            json!({"id": id}),
        )
        .await
    }

    /// Stops a VM at once (`force`: no ACPI power-off asked first); an error
    /// in the answer fails the test.
    pub async fn stop_vm(&self, id: &str) -> Value {
        self.ok(
            "mutation($id: ID!) { stopVm(id: $id, force: true) { vm { state } } }",
            json!({"id": id}),
        )
        .await
    }

    /// Creates a detached disk (`format`: RAW or QCOW2) and returns its ID.
    pub async fn create_disk(&self, name: &str, size_bytes: u64, format: &str) -> String {
        let data = self
            .ok(
                &format!("mutation($n: String!, $s: Bytes!) {{ createDisk(input: {{name: $n, sizeBytes: $s, format: {format}}}) {{ disk {{ id }} }} }}"),
                json!({"n": name, "s": size_bytes}),
            )
            .await;
        data["createDisk"]["disk"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A server that drives real QEMU (TCG unless `accel` says otherwise),
    /// importing from the test guest's directory.
    pub async fn real(accel: vman::config::Accel) -> TestServer {
        let guest = guest_dir();
        Self::start_with(move |c| {
            c.dry_run = false;
            c.qemu.accel = accel;
            c.import_dir = Some(guest);
        })
        .await
    }

    /// Imports the test guest's kernel and initrd and makes a direct-boot template of them.
    pub async fn guest_template(&self, name: &str, cmdline: &str) -> String {
        let import = |image: &str, kind: &str, path: &str| {
            let query = "mutation($n: String!, $k: ImageKind!, $p: String!) { importImage(input: {name: $n, kind: $k, path: $p}) { image { id } } }";
            let vars = json!({"n": image, "k": kind, "p": path});
            async move {
                self.ok(query, vars).await["importImage"]["image"]["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
        };
        let kernel = import(&format!("{name}-kernel"), "KERNEL", "vmlinuz").await;
        let initrd = import(&format!("{name}-initrd"), "INITRD", "initrd.img").await;
        let data = self
            .ok(
                "mutation($n: String!, $k: ID!, $i: ID!, $c: String!) { createTemplate(input: {name: $n, vcpus: 1, memoryMib: 256, kernelImageId: $k, initrdImageId: $i, cmdline: $c}) { template { id } } }",
                json!({"n": name, "k": kernel, "i": initrd, "c": cmdline}),
            )
            .await;
        data["createTemplate"]["template"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The VM's run directory on the host.
    pub fn run_dir(&self, vm_id: &str) -> std::path::PathBuf {
        self.app.ctx.config.run_dir().join(vm_id)
    }

    pub async fn vm_state(&self, id: &str) -> String {
        let data = self
            .ok(
                "query($id: ID) { vm(id: $id) { state } }",
                json!({"id": id}),
            )
            .await;
        data["vm"]["state"].as_str().unwrap().to_string()
    }

    /// Every journal event, oldest first.
    pub async fn journal(&self) -> Vec<Value> {
        read_journal(|variables| self.ok(JOURNAL_PAGE, variables)).await
    }

    /// Counts of every kind of object plus the journal head: "nothing changed" means this is equal.
    pub async fn snapshot(&self) -> Value {
        self.ok(
                "{ templates { totalCount } vms { totalCount edges { node { name state vcpus memoryMib } } } disks { totalCount edges { node { name attachment sizeBytes } } } networks { totalCount } operations { totalCount } events(first: 0) { totalCount } }",
                json!({}),
            )
            .await
    }
}

impl Drop for TestServer {
    /// QEMU outlives vman by design, so a test (even a failed one) ends its own VMs.
    fn drop(&mut self) {
        kill_vms_under(&self.app.ctx.config.run_dir());
    }
}

/// Kills every QEMU whose pidfile is under `run_dir` and whose command line names that VM.
pub fn kill_vms_under(run_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let vm_id = entry.file_name().to_string_lossy().to_string();
        if let Some(pid) = vman::host::qemu::process::read_pidfile(&entry.path().join("qemu.pid"))
            && vman::host::qemu::process::is_qemu_of(pid, &vm_id)
        {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A graphql-transport-ws client connection.
pub struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        Self::connect_protocol(url, "graphql-transport-ws").await
    }

    pub async fn connect_protocol(url: &str, protocol: &str) -> WsClient {
        Self::connect_with(url, protocol, json!({})).await
    }

    /// A graphql-transport-ws client over wss that trusts what `tls` trusts.
    pub async fn connect_tls(url: &str, tls: std::sync::Arc<rustls::ClientConfig>) -> WsClient {
        let client = Self::open_with(
            url,
            "graphql-transport-ws",
            &[],
            Some(Connector::Rustls(tls)),
        )
        .await;
        client.init(json!({})).await
    }

    /// Connects with `payload` in `connection_init` (`{"authorization": "Bearer …"}`).
    pub async fn connect_with(url: &str, protocol: &str, payload: Value) -> WsClient {
        Self::open(url, protocol, &[]).await.init(payload).await
    }

    async fn init(mut self, payload: Value) -> WsClient {
        self.send(json!({"type": "connection_init", "payload": payload}))
            .await;
        let ack = self.next_message().await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        self
    }

    /// Opens the socket (with `headers` on the upgrade) and sends nothing.
    pub async fn open(url: &str, protocol: &str, headers: &[(&str, &str)]) -> WsClient {
        Self::open_with(url, protocol, headers, None).await
    }

    async fn open_with(
        url: &str,
        protocol: &str,
        headers: &[(&str, &str)],
        connector: Option<Connector>,
    ) -> WsClient {
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocol).unwrap(),
        );
        let (socket, _) =
            tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector)
                .await
                .expect("websocket connects");
        WsClient { socket }
    }

    pub async fn send(&mut self, message: Value) {
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .expect("ws send");
    }

    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        self.send(json!({"id": id, "type": "subscribe", "payload": {"query": query, "variables": variables}}))
            .await;
    }

    /// The next JSON message, skipping pings; fails after [`WAIT`].
    pub async fn next_message(&mut self) -> Value {
        self.next_message_within(WAIT).await
    }

    /// The next JSON message, skipping pings; fails after `within` without one.
    pub async fn next_message_within(&mut self, within: Duration) -> Value {
        loop {
            let message = tokio::time::timeout(within, self.socket.next())
                .await
                .expect("a websocket message within the wait")
                .expect("websocket open")
                .expect("websocket message");
            match message {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["type"] == "ping" {
                        self.send(json!({"type": "pong"})).await;
                        continue;
                    }
                    return value;
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected websocket message {other:?}"),
            }
        }
    }

    /// The next `next` payload's data for subscription `id`.
    pub async fn next_data(&mut self, id: &str) -> Value {
        let message = self.next_message().await;
        assert_eq!(message["type"], "next", "{message}");
        assert_eq!(message["id"], id, "{message}");
        assert!(message["payload"].get("errors").is_none(), "{message}");
        message["payload"]["data"].clone()
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }

    /// Waits for the server to close the socket; the close code and reason
    /// (1005 when it closed without a code).
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("the socket closes within the wait");
            match message {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frame.code.into(), frame.reason.to_string());
                }
                Some(Ok(Message::Close(None))) | None => return (1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(error)) => panic!("websocket error instead of a close: {error}"),
            }
        }
    }
}

/// The test guest built by `tests/guest/build.sh` (run by `make test`).
pub fn guest_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/vman-guest");
    assert!(
        dir.join("vmlinuz").is_file() && dir.join("initrd.img").is_file(),
        "the test guest is missing: run `tests/guest/build.sh` (make test does)"
    );
    dir
}

/// Waits until the file contains `needle` (QEMU and the guest write their logs as they go).
pub async fn wait_for_line(path: &std::path::Path, needle: &str, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{needle:?} did not appear in {} within {within:?}; it holds:\n{text}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether KVM can be used here (QEMU without a guest OS runs under it).
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// KVM where it can be used, TCG otherwise (a VM without a guest OS runs under either).
pub fn accel() -> vman::config::Accel {
    if kvm_usable() {
        vman::config::Accel::Kvm
    } else {
        vman::config::Accel::Tcg
    }
}

/// The environment a `vman` process on the data directory `data` needs
/// to open the database this test binary runs on ([`postgres::Backend::from_env`]):
/// none on SQLite (its file is under `data`); on PostgreSQL,
/// `VMAN_DATABASE_URL` of `data`'s own database
/// ([`postgres::database_for`]: the same one for every process on `data`).
/// For `vman serve` ([`VmanProcess`] adds it itself) and the commands that
/// open the database (`vman token`, `vman migrate`).
pub fn database_env(data: &std::path::Path) -> Vec<(&'static str, String)> {
    match postgres::Backend::from_env() {
        postgres::Backend::Sqlite => Vec::new(),
        postgres::Backend::Postgres => {
            vec![("VMAN_DATABASE_URL", postgres::database_for(data))]
        }
    }
}

/// The `database.url` of an app a test starts itself on `data`: what
/// [`database_env`] gives a `vman` process on it.
pub fn database_url(data: &std::path::Path) -> Option<vman::config::DatabaseUrl> {
    database_env(data)
        .into_iter()
        .next()
        .map(|(_, url)| vman::config::DatabaseUrl::new(url))
}

/// A `vman serve` process of its own, so it can be SIGKILLed.
pub struct VmanProcess {
    pub child: std::process::Child,
    pub url: String,
    pub run_dir: std::path::PathBuf,
}

impl Drop for VmanProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_vms_under(&self.run_dir);
    }
}

impl VmanProcess {
    pub fn start(data: &std::path::Path, port: u16) -> VmanProcess {
        Self::start_with_env(data, port, &[])
    }

    /// Starts `vman serve` with more `VMAN_*` settings.
    pub fn start_with_env(data: &std::path::Path, port: u16, env: &[(&str, &str)]) -> VmanProcess {
        Self::start_program(env!("CARGO_BIN_EXE_vman").as_ref(), data, port, env)
    }

    /// Starts `program serve` (another build of vman, for a benchmark's
    /// before and after). On the backend the test binary runs on
    /// ([`database_env`]: on PostgreSQL the data directory's own database,
    /// the same one when vman is started again on `data`), unless `env`
    /// names a `VMAN_DATABASE_URL` itself.
    pub fn start_program(
        program: &std::path::Path,
        data: &std::path::Path,
        port: u16,
        env: &[(&str, &str)],
    ) -> VmanProcess {
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        Self::serve(std::process::Command::new(program), data, listen, env)
    }

    /// Starts `vman serve` in the named network namespace `netns`, on
    /// `listen` (an address of that namespace). `ip netns exec` execs vman:
    /// the child is vman itself, so a SIGKILL reaches it.
    pub fn start_in_netns(
        netns: &str,
        data: &std::path::Path,
        listen: std::net::SocketAddr,
        env: &[(&str, &str)],
    ) -> VmanProcess {
        let mut command = std::process::Command::new("ip");
        command.args(["netns", "exec", netns, env!("CARGO_BIN_EXE_vman")]);
        Self::serve(command, data, listen, env)
    }

    /// Runs `command serve --listen <listen> --data-dir <data>`.
    fn serve(
        mut command: std::process::Command,
        data: &std::path::Path,
        listen: std::net::SocketAddr,
        env: &[(&str, &str)],
    ) -> VmanProcess {
        let database = if env.iter().any(|(key, _)| *key == "VMAN_DATABASE_URL") {
            Vec::new()
        } else {
            database_env(data)
        };
        let child = command
            .args(["serve", "--listen", &listen.to_string(), "--data-dir"])
            .arg(data)
            .env("VMAN_QEMU_ACCEL", if kvm_usable() { "kvm" } else { "tcg" })
            .env("VMAN_LOG_LEVEL", "warn")
            .envs(database)
            .envs(env.iter().copied())
            .spawn()
            .unwrap();
        VmanProcess {
            child,
            url: format!("http://{listen}/graphql"),
            run_dir: data.join("run"),
        }
    }

    pub async fn ready(&self, http: &reqwest::Client) {
        let readyz = self.url.replace("/graphql", "/readyz");
        for _ in 0..500 {
            if let Ok(r) = http.get(&readyz).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("vman did not become ready");
    }

    pub async fn gql(
        &self,
        http: &reqwest::Client,
        query: &str,
        variables: serde_json::Value,
    ) -> serde_json::Value {
        let r: serde_json::Value = http
            .post(&self.url)
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(r.get("errors").is_none(), "{r}");
        r["data"].clone()
    }
}

/// One page of the journal, after `$after`.
pub const JOURNAL_PAGE: &str = "query($after: String) { events(after: $after, first: 500) { edges { cursor node { sequence kind subjectId payload } } pageInfo { hasNextPage } } }";

/// The whole journal, oldest first, read a page ([`JOURNAL_PAGE`]) at a time
/// through `page`, which runs the query with the variables it is given and
/// returns its `data`.
pub async fn read_journal<F, Fut>(page: F) -> Vec<Value>
where
    F: Fn(Value) -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let mut events = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let data = page(json!({"after": after})).await;
        let edges = data["events"]["edges"].as_array().unwrap().clone();
        after = edges
            .last()
            .map(|e| e["cursor"].as_str().unwrap().to_string());
        events.extend(edges.into_iter().map(|e| e["node"].clone()));
        if !data["events"]["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            return events;
        }
    }
}

/// A server whose websocket gives a subscriber that does not read little
/// room (`websocket.outgoing_buffer` 4, `lag_timeout` as given), and the
/// fields that make each `events` result large (~40 KiB, 700 aliases), so
/// that the kernel's socket buffers (a few MiB at most) fill after a bounded
/// number of them.
pub async fn server_for_slow_readers(lag_timeout: Duration) -> (TestServer, String) {
    let server = TestServer::start_with(|c| {
        c.websocket.outgoing_buffer = 4;
        c.websocket.lag_timeout = lag_timeout;
        // The 700 aliases make results large; allow them.
        c.graphql.max_aliases = 1000;
    })
    .await;
    let fields = (0..700).map(|i| format!(" s{i}: subjectId")).collect();
    (server, fields)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `operationProgress` for one operation: the items of a long operation
/// (a full clone, a download) as they come.
pub struct ProgressWatch {
    ws: WsClient,
    /// The longest wait for the next item.
    within: Duration,
}

pub const PROGRESS: &str = "subscription($id: ID!) { operationProgress(id: $id) { operationId status progress { fraction bytesDone bytesTotal } } }";

impl ProgressWatch {
    pub async fn open(server: &TestServer, operation: &str, within: Duration) -> ProgressWatch {
        let mut ws = WsClient::connect(&server.ws_url).await;
        ws.subscribe("p", PROGRESS, serde_json::json!({"id": operation}))
            .await;
        ProgressWatch { ws, within }
    }

    /// The next item; `None` once the subscription completed.
    pub async fn next(&mut self) -> Option<Value> {
        let message = self.ws.next_message_within(self.within).await;
        match message["type"].as_str() {
            Some("complete") => None,
            Some("next") => Some(message["payload"]["data"]["operationProgress"].clone()),
            _ => panic!("unexpected message {message}"),
        }
    }

    /// Items until one has `bytes` done; that one.
    pub async fn until_done(&mut self, bytes: u64) -> Value {
        loop {
            let item = self.next().await.expect("the operation still runs");
            if item["progress"]["bytesDone"].as_u64() >= Some(bytes) {
                return item;
            }
        }
    }

    /// The last item, once the operation ended.
    pub async fn end(&mut self) -> Value {
        let mut last = Value::Null;
        while let Some(item) = self.next().await {
            last = item;
        }
        last
    }
}

/// SHA-256 of `bytes`, in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The names of the regular files directly in `dir`, sorted (none when it
/// does not exist).
pub fn file_names(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Runs `node tests/js/<script> args…` with `env` added, on a blocking
/// thread; what it did.
pub async fn node(
    script: &str,
    args: Vec<String>,
    env: Vec<(String, String)>,
) -> std::process::Output {
    let path = format!("{}/tests/js/{script}", env!("CARGO_MANIFEST_DIR"));
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(path)
            .args(args)
            .envs(env)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap()
}

/// The system Chromium the browser tests drive (Debian package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs `node tests/js/<script> args…` (a headless-Chromium walk, through
/// playwright-core) with `env`, `CHROMIUM` and `SHOTS` (a fresh temp dir
/// for its screenshots), and prints what it said. When it fails, fails the
/// test, keeping the screenshots. A missing Chromium fails too, never skips.
pub async fn run_browser_script(script: &str, args: Vec<String>, env: Vec<(String, String)>) {
    let js = format!("{}/tests/js", env!("CARGO_MANIFEST_DIR"));
    assert!(
        std::path::Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: run `make deps` (scripts/install-deps.sh installs the Debian package chromium; CI does this)"
    );
    assert!(
        std::path::Path::new(&js)
            .join("node_modules/playwright-core")
            .is_dir(),
        "tests/js/node_modules/playwright-core is missing: run `make deps` (or `npm ci --prefix tests/js`)"
    );
    // Screenshots: removed after a pass, kept (and named) after a failure.
    let shots = tempfile::Builder::new()
        .prefix("vman-browser-shots-")
        .tempdir()
        .expect("temp dir");
    let shots_dir = shots.path().to_owned();
    let mut env = env;
    env.push(("CHROMIUM".into(), CHROMIUM.into()));
    env.push(("SHOTS".into(), shots_dir.display().to_string()));
    let output = node(script, args, env).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    if !output.status.success() {
        let kept = shots.keep();
        panic!(
            "{script} failed ({}); screenshots kept in {}:\n{stdout}\n{}",
            output.status,
            kept.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
