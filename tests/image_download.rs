//! `importImage` from a URL, against a local HTTP server the test runs: a
//! good checksum makes an image and pushes its progress; a wrong checksum, a
//! server that stalls, a redirect loop, a missing file, a file over the
//! limit and a cancel half way each end the operation with their code and
//! leave no file and no image; bad input is refused before anything runs.

mod common;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use common::{ProgressWatch, TestServer, file_names, sha256_hex};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

const IMPORT: &str = "mutation($n: String!, $k: ImageKind!, $u: String, $s: String, $p: String) { importImage(input: {name: $n, kind: $k, url: $u, sha256: $s, path: $p}) { image { id name } operation { id status kind targetId } plan { action detail } } }";
const OPERATION: &str = "query($id: ID!) { operation(id: $id) { status errorCode error targetId progress { bytesDone bytesTotal } } }";
const CANCEL: &str = "mutation($id: ID!) { cancelOperation(id: $id) { id status errorCode } }";

/// A download's longest wait in these tests.
const WAIT: Duration = Duration::from_secs(30);
/// What the server serves: 3 MiB, not all alike.
const SIZE: usize = 3 << 20;

struct Files {
    body: Bytes,
    qcow2: Bytes,
    /// `/gated.iso` sends its second half once a permit is added.
    gate: Semaphore,
}

/// A body of `chunks`, then whatever `rest` yields, with its length announced.
fn streamed(
    length: usize,
    stream: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_LENGTH, length.to_string())],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn gated(State(files): State<Arc<Files>>) -> Response {
    let half = files.body.len() / 2;
    let stream = async_stream::stream! {
        yield Ok::<_, std::io::Error>(files.body.slice(..half));
        files.gate.acquire().await.expect("the gate").forget();
        yield Ok(files.body.slice(half..));
    };
    streamed(SIZE, stream)
}

async fn stalled(State(files): State<Arc<Files>>) -> Response {
    let first = files.body.slice(..64 << 10);
    let stream = async_stream::stream! {
        yield Ok::<_, std::io::Error>(first);
        std::future::pending::<()>().await;
    };
    streamed(SIZE, stream)
}

/// Serves the files on a port of its own; the server stops with the test.
async fn http_server(files: Arc<Files>) -> SocketAddr {
    let app = Router::new()
        .route(
            "/good.iso",
            get(|State(f): State<Arc<Files>>| async move { f.body.clone() }),
        )
        .route(
            "/disk.qcow2",
            get(|State(f): State<Arc<Files>>| async move { f.qcow2.clone() }),
        )
        .route("/gated.iso", get(gated))
        .route("/stalled.iso", get(stalled))
        .route("/loop", get(|| async { Redirect::temporary("/loop") }))
        .route(
            "/moved.iso",
            get(|| async { Redirect::temporary("/good.iso") }),
        )
        .route("/big.iso", get(|| async { vec![7u8; 5 << 20] }))
        .with_state(files);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn setup() -> (TestServer, Arc<Files>, String) {
    let body: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    let qcow2 = dir.path().join("disk.qcow2");
    let status = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow2)
        .arg("64M")
        .status()
        .expect("qemu-img (scripts/install-deps.sh)");
    assert!(status.success());
    let files = Arc::new(Files {
        body: body.into(),
        qcow2: std::fs::read(&qcow2).unwrap().into(),
        gate: Semaphore::new(0),
    });
    let addr = http_server(files.clone()).await;
    let server = TestServer::start_with(|c| {
        c.dry_run = false;
        c.storage.download_stall_timeout = Duration::from_secs(1);
        c.storage.download_max_bytes = 4 << 20;
    })
    .await;
    (server, files, format!("http://{addr}"))
}

fn images_dir(server: &TestServer) -> PathBuf {
    server.app.ctx.config.storage_dir().join("images")
}

/// Starts a download; the RUNNING operation's ID.
async fn start(server: &TestServer, name: &str, kind: &str, url: &str, sha: &str) -> String {
    let accepted = server
        .ok(IMPORT, json!({"n": name, "k": kind, "u": url, "s": sha}))
        .await["importImage"]
        .clone();
    assert!(accepted["image"].is_null(), "{accepted:#}");
    assert_eq!(accepted["operation"]["status"], "RUNNING", "{accepted:#}");
    assert_eq!(accepted["operation"]["kind"], "IMPORT_IMAGE");
    accepted["operation"]["id"].as_str().unwrap().to_string()
}

/// The operation's record once it ended.
async fn ended(server: &TestServer, operation: &str) -> Value {
    let last = ProgressWatch::open(server, operation, WAIT)
        .await
        .end()
        .await;
    assert_ne!(last["status"], "RUNNING", "{last:#}");
    server.ok(OPERATION, json!({"id": operation})).await["operation"].clone()
}

#[tokio::test]
async fn a_download_with_its_checksum_becomes_an_image_and_pushes_its_progress() {
    let (server, files, base) = setup().await;
    let sha = sha256_hex(&files.body);
    let operation = start(
        &server,
        "installer",
        "ISO",
        &format!("{base}/gated.iso"),
        &sha,
    )
    .await;

    // Half the file is there, and said so, while the server holds the rest.
    let mut watch = ProgressWatch::open(&server, &operation, WAIT).await;
    let half = watch.until_done((SIZE / 2) as u64).await;
    assert_eq!(half["status"], "RUNNING", "{half:#}");
    assert_eq!(half["progress"]["bytesDone"], SIZE / 2);
    assert_eq!(half["progress"]["bytesTotal"], SIZE);
    assert_eq!(half["progress"]["fraction"], 0.5);
    assert!(
        file_names(&images_dir(&server))
            .iter()
            .all(|f| f.ends_with(".partial")),
        "only a partial file while it runs"
    );
    files.gate.add_permits(1);
    let last = watch.end().await;
    assert_eq!(last["status"], "SUCCEEDED", "{last:#}");
    assert_eq!(last["progress"]["fraction"], 1.0);

    let record = server.ok(OPERATION, json!({"id": operation})).await["operation"].clone();
    let id = record["targetId"].as_str().unwrap();
    let image = server
        .ok(
            "query($id: ID!) { image(id: $id) { name kind sizeBytes format } }",
            json!({"id": id}),
        )
        .await["image"]
        .clone();
    assert_eq!(
        image,
        json!({"name": "installer", "kind": "ISO", "sizeBytes": SIZE, "format": null})
    );
    let file = images_dir(&server).join(id);
    assert_eq!(sha256_hex(&std::fs::read(&file).unwrap()), sha);
    assert_eq!(file_names(&images_dir(&server)), [id.to_string()]);

    // Through a redirect, a disk image: checked as an import is (qcow2,
    // standalone) and sized at what a VM sees.
    let operation = start(
        &server,
        "base",
        "DISK",
        &format!("{base}/disk.qcow2"),
        &sha256_hex(&files.qcow2),
    )
    .await;
    let record = ended(&server, &operation).await;
    assert_eq!(record["status"], "SUCCEEDED", "{record:#}");
    let disk = server
        .ok(
            "query($id: ID!) { image(id: $id) { kind sizeBytes format } }",
            json!({"id": record["targetId"]}),
        )
        .await["image"]
        .clone();
    assert_eq!(
        disk,
        json!({"kind": "DISK", "sizeBytes": 64u64 << 20, "format": "QCOW2"})
    );
    let operation = start(&server, "moved", "ISO", &format!("{base}/moved.iso"), &sha).await;
    assert_eq!(ended(&server, &operation).await["status"], "SUCCEEDED");
}

#[tokio::test]
async fn a_bad_download_ends_with_its_code_and_leaves_no_file() {
    let (server, files, base) = setup().await;
    let sha = sha256_hex(&files.body);
    let cases = [
        (
            "a wrong checksum",
            "good.iso",
            "0".repeat(64),
            "BAD_USER_INPUT",
            "SHA-256",
        ),
        (
            "a server that stalls",
            "stalled.iso",
            sha.clone(),
            "TIMEOUT",
            "sent nothing for 1s",
        ),
        (
            "a redirect loop",
            "loop",
            sha.clone(),
            "BAD_USER_INPUT",
            "redirects more than 5 times",
        ),
        (
            "a file the server lacks",
            "missing.iso",
            sha.clone(),
            "BAD_USER_INPUT",
            "404",
        ),
        (
            "a file over storage.download_max_bytes",
            "big.iso",
            sha.clone(),
            "BAD_USER_INPUT",
            "download_max_bytes",
        ),
    ];
    for (what, file, sha, code, says) in cases {
        let operation = start(&server, "img", "ISO", &format!("{base}/{file}"), &sha).await;
        let record = ended(&server, &operation).await;
        assert_eq!(record["status"], "FAILED", "{what}: {record:#}");
        assert_eq!(record["errorCode"], code, "{what}: {record:#}");
        assert!(
            record["error"].as_str().unwrap().contains(says),
            "{what}: {record:#}"
        );
        assert_eq!(
            file_names(&images_dir(&server)),
            Vec::<String>::new(),
            "{what}"
        );
    }

    // Cancelled half way: nothing kept either.
    let operation = start(&server, "img", "ISO", &format!("{base}/gated.iso"), &sha).await;
    let mut watch = ProgressWatch::open(&server, &operation, WAIT).await;
    watch.until_done((SIZE / 2) as u64).await;
    let cancelled = server.ok(CANCEL, json!({"id": operation})).await["cancelOperation"].clone();
    assert_eq!(cancelled["status"], "CANCELLED", "{cancelled:#}");
    assert_eq!(cancelled["errorCode"], "CANCELLED");
    assert_eq!(file_names(&images_dir(&server)), Vec::<String>::new());
    let images = server.ok("{ images { totalCount } }", json!({})).await;
    assert_eq!(images["images"]["totalCount"], 0);
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_runs() {
    let (server, files, base) = setup().await;
    let sha = sha256_hex(&files.body);
    let before = server.snapshot().await;
    let good = format!("{base}/good.iso");
    let cases = [
        (
            "not http",
            json!({"u": "ftp://127.0.0.1/x.iso", "s": sha}),
            "http or https",
        ),
        (
            "a local file",
            json!({"u": "file:///etc/passwd", "s": sha}),
            "http or https",
        ),
        ("not a URL", json!({"u": "good.iso", "s": sha}), "not a URL"),
        ("no checksum", json!({"u": good}), "sha256"),
        (
            "a short checksum",
            json!({"u": good, "s": &sha[1..]}),
            "64 hexadecimal",
        ),
        (
            "not hex",
            json!({"u": good, "s": "z".repeat(64)}),
            "64 hexadecimal",
        ),
        (
            "a path and a URL",
            json!({"u": good, "s": sha, "p": "x.iso"}),
            "not both",
        ),
        ("neither", json!({}), "path or url"),
        (
            "a checksum with a path",
            json!({"s": sha, "p": "x.iso"}),
            "sha256",
        ),
        (
            "a bad name",
            json!({"u": good, "s": sha, "n": "Bad Name"}),
            "Bad Name",
        ),
    ];
    for (what, mut variables, says) in cases {
        let fields = variables.as_object_mut().unwrap();
        fields.entry("n").or_insert(json!("img"));
        fields.insert("k".into(), json!("ISO"));
        let response = server.post(IMPORT, variables).await;
        let error = &response["errors"][0];
        assert_eq!(
            error["extensions"]["code"], "BAD_USER_INPUT",
            "{what}: {response:#}"
        );
        assert!(
            error["message"].as_str().unwrap().contains(says),
            "{what}: {response:#}"
        );
    }
    assert_eq!(server.snapshot().await, before, "no operation recorded");

    // A dry run plans the download, the check and the rename, and runs nothing.
    let planned = server
        .ok(
            "mutation($u: String!, $s: String!) { importImage(input: {name: \"img\", kind: DISK, url: $u, sha256: $s}, dryRun: true) { image { name } operation { id } plan { action detail } } }",
            json!({"u": good, "s": sha}),
        )
        .await["importImage"]
        .clone();
    let actions: Vec<&str> = planned["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["download", "exec", "moveFile"], "{planned:#}");
    assert!(planned["operation"].is_null());
    assert_eq!(planned["image"]["name"], "img");
    assert_eq!(server.snapshot().await, before);
    assert_eq!(file_names(&images_dir(&server)), Vec::<String>::new());
}
