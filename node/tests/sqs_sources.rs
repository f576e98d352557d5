//! Shared SQS sources on a real node against a real SQS (`moto_server`):
//! a source written through the API polls its queue into a bus, a rule
//! delivers the events to an HTTP receiver, bad definitions are refused
//! naming the field, a missing credential shows in the status, and deleting
//! the source stops the polling.
//!
//! moto is the AWS peer here: when `moto_server` is not installed (in
//! `.venv/bin` or on `PATH`; `scripts/setup-test-deps` installs it) the test
//! fails, it is not skipped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_strait");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn moto_binary() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    if venv.is_file() {
        return venv;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("moto_server");
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "moto_server is not installed in .venv/bin nor on PATH: run scripts/setup-test-deps \
         (tests/python/requirements.txt has moto[server]); this test needs a real SQS peer"
    );
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(4000);
    text.get(start..).unwrap_or_default().to_string()
}

/// `moto_server` on a free port.
async fn start_moto(dir: &Path) -> (Proc, String) {
    let port = free_port();
    let log = dir.join("moto.log");
    let out = std::fs::File::create(&log).expect("moto log");
    let err = out.try_clone().expect("moto log");
    let child = Command::new(moto_binary())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn moto_server");
    let mut proc = Proc(child);
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = proc.0.try_wait() {
            panic!("moto_server exited with {status}:\n{}", tail(&log));
        }
        if http
            .get(format!("{url}/moto-api/"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .is_ok()
        {
            return (proc, url);
        }
        assert!(
            Instant::now() < deadline,
            "moto_server did not answer within 30 s:\n{}",
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One SQS call (AWS JSON 1.0 protocol; moto does not check signatures).
async fn sqs(moto: &str, action: &str, body: Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{moto}/"))
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=0",
        )
        .header("x-amz-target", format!("AmazonSQS.{action}"))
        .header("content-type", "application/x-amz-json-1.0")
        .body(body.to_string())
        .send()
        .await
        .expect("SQS call");
    let status = r.status();
    let text = r.text().await.expect("SQS answer");
    assert!(status.is_success(), "SQS {action}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

async fn queue_counts(moto: &str, queue: &str) -> (u64, u64) {
    let v = sqs(
        moto,
        "GetQueueAttributes",
        json!({"QueueUrl": queue, "AttributeNames": ["All"]}),
    )
    .await;
    let n = |k: &str| {
        v["Attributes"][k]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX)
    };
    (
        n("ApproximateNumberOfMessages"),
        n("ApproximateNumberOfMessagesNotVisible"),
    )
}

/// An HTTP receiver that records every event posted to it (binary mode):
/// `{"id": ce-id, "data": body}`.
async fn start_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let store = got.clone();
    let app = axum::Router::new().fallback(
        move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                // Binary mode: the attributes are `ce-*` headers, the body is the data.
                let id = headers
                    .get("ce-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let data: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                store
                    .lock()
                    .expect("receiver lock")
                    .push(json!({"id": id, "data": data}));
                "ok"
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, got)
}

fn received_ids(got: &Mutex<Vec<Value>>) -> Vec<String> {
    got.lock()
        .expect("receiver lock")
        .iter()
        .filter_map(|v| v["id"].as_str().map(str::to_string))
        .collect()
}

/// A `--dev` node whose config has the AWS credential `main`.
async fn start_node(dir: &Path) -> (Proc, String) {
    let port = free_port();
    let cfg = dir.join("node.yaml");
    std::fs::write(
        &cfg,
        "aws:\n  credentials:\n    main: {access_key_id: testing, secret_access_key: testing}\n",
    )
    .expect("write config");
    let log = dir.join("node.log");
    let out = std::fs::File::create(&log).expect("node log");
    let child = Command::new(BIN)
        .arg("serve")
        .arg("--dev")
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--http", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("spawn node");
    let mut proc = Proc(child);
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = proc.0.try_wait() {
            panic!("the node exited with {status}:\n{}", tail(&log));
        }
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await
            && r.status().is_success()
        {
            return (proc, url);
        }
        assert!(
            Instant::now() < deadline,
            "the node never became ready:\n{}",
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("API call");
    let status = r.status().as_u16();
    let v = r.json().await.unwrap_or(Value::Null);
    (status, v)
}

async fn get(node: &str, path: &str) -> (u16, Value) {
    call(reqwest::Method::GET, format!("{node}{path}"), None).await
}

async fn put(node: &str, path: &str, body: Value) -> (u16, Value) {
    call(reqwest::Method::PUT, format!("{node}{path}"), Some(body)).await
}

async fn delete(node: &str, path: &str) -> (u16, Value) {
    call(reqwest::Method::DELETE, format!("{node}{path}"), None).await
}

async fn metrics(node: &str) -> String {
    let r = reqwest::get(format!("{node}/metrics"))
        .await
        .expect("GET /metrics");
    r.text().await.expect("metrics text")
}

/// The value of one series (`name{labels}`) in a /metrics scrape.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

/// An API answer is `status` with error `code`.
#[track_caller]
fn assert_error((status, v): &(u16, Value), want_status: u16, code: &str) {
    assert_eq!(
        (*status, &v["error"]["code"]),
        (want_status, &json!(code)),
        "{v}"
    );
}

/// Poll `check` until it holds (true) or `timeout` passes (false, logged).
#[must_use]
async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() >= deadline {
            eprintln!("timed out waiting for {what}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shared_sqs_source_polls_into_a_bus_until_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_moto, moto) = start_moto(dir.path()).await;
    let (_node, node) = start_node(dir.path()).await;
    let (recv, got) = start_receiver().await;
    let queue = sqs(&moto, "CreateQueue", json!({"QueueName": "q1"})).await["QueueUrl"]
        .as_str()
        .expect("queue url")
        .to_string();
    let other = sqs(&moto, "CreateQueue", json!({"QueueName": "q2"})).await["QueueUrl"]
        .as_str()
        .expect("queue url")
        .to_string();
    let (s, v) = put(
        &node,
        "/v1/buses/default/rules/to-recv",
        json!({"pattern": {"source": ["sqs-test"]},
            "targets": [{"id": "recv", "type": "http", "endpoint": format!("{recv}/in")}]}),
    )
    .await;
    assert_eq!(s, 200, "PUT rule: {v}");

    let body = json!({
        "type": "aws_sqs", "bus": "default", "queueUrl": queue, "credential": "main",
        "region": "us-east-1", "endpoint": moto, "waitTimeSecs": 1,
        "visibilityTimeoutSecs": 30, "maxMessages": 10
    });
    let put_source =
        async |name: &str, body: Value| put(&node, &format!("/v1/sources/{name}"), body).await;

    // Bad definitions: 400 naming the field (404 for a missing bus).
    let bad = |k: &str, v: Value| {
        let mut b = body.clone();
        b[k] = v;
        b
    };
    for (b, status, code, field) in [
        (
            bad("waitTimeSecs", json!(21)),
            400,
            "InvalidSource",
            "waitTimeSecs",
        ),
        (
            bad("queueUrl", json!("queue")),
            400,
            "InvalidSource",
            "queueUrl",
        ),
        (bad("type", json!("amqp")), 400, "InvalidSource", "type"),
        (
            bad("maxMessages", json!("ten")),
            400,
            "InvalidSource",
            "maxMessages",
        ),
        (bad("site", json!("mars")), 400, "UnknownSite", "site"),
        (bad("bus", json!("nope")), 404, "BusNotFound", "bus"),
        (json!("not an object"), 400, "InvalidSource", "source"),
    ] {
        let (s, v) = put_source("bad", b.clone()).await;
        assert_eq!(s, status, "PUT {b}: {v}");
        assert_eq!(v["error"]["code"], code, "PUT {b}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(&format!("{field}:")), "PUT {b}: {v}");
    }
    let mut no_queue = body.clone();
    no_queue.as_object_mut().expect("object").remove("queueUrl");
    let (s, v) = put_source("bad", no_queue).await;
    assert_eq!(
        (s, v["error"]["message"].as_str().unwrap_or_default()),
        (400, "queueUrl: required field is missing"),
        "{v}"
    );
    assert_error(
        &put_source("bad name", body.clone()).await,
        400,
        "InvalidName",
    );

    // A good one: stored with this node's site, listed, running.
    let (s, v) = put_source("sqs1", body.clone()).await;
    assert_eq!(s, 200, "PUT source: {v}");
    assert_eq!(v["site"], "local", "{v}");
    assert_eq!(v["name"], "sqs1", "{v}");
    let (_, list) = get(&node, "/v1/sources").await;
    let names: Vec<&str> = list["sources"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["sqs1"], "{list}");
    let status = async || get(&node, "/v1/sources/sqs1").await.1;
    let ran = wait_until("the source to run", Duration::from_secs(10), async || {
        status().await["status"]["running"] == json!(true)
    })
    .await;
    assert!(ran, "the source did not run: {}", status().await);

    // A message on the queue arrives at the receiver through the rule.
    let ce = json!({"specversion": "1.0", "id": "sqs-1", "source": "sqs-test", "type": "t", "data": {"n": 1}});
    sqs(
        &moto,
        "SendMessage",
        json!({"QueueUrl": queue, "MessageBody": ce.to_string()}),
    )
    .await;
    let arrived = wait_until(
        "the SQS message to reach the receiver",
        Duration::from_secs(20),
        async || received_ids(&got).contains(&"sqs-1".to_string()),
    )
    .await;
    if !arrived {
        panic!(
            "the SQS message did not reach the receiver; source {}, rule {}, queue {:?}\nnode log:\n{}",
            status().await,
            get(&node, "/v1/buses/default/rules/to-recv").await.1,
            queue_counts(&moto, &queue).await,
            tail(&dir.path().join("node.log"))
        );
    }
    let st = status().await;
    assert_eq!(st["status"]["received"], 1, "{st}");
    assert_eq!(st["status"]["committed"], 1, "{st}");
    assert_eq!(st["status"]["lastError"], Value::Null, "{st}");
    // Deleted from the queue once committed.
    let drained = wait_until(
        "the message to leave the queue",
        Duration::from_secs(10),
        async || queue_counts(&moto, &queue).await == (0, 0),
    )
    .await;
    assert!(drained, "the committed message stays on the queue");

    // SQS-sourced events count as ingested on their bus, once each; one
    // that no rule matches counts as unmatched.
    let other_ce =
        json!({"specversion": "1.0", "id": "sqs-other", "source": "sqs-other", "type": "t"});
    sqs(
        &moto,
        "SendMessage",
        json!({"QueueUrl": queue, "MessageBody": other_ce.to_string()}),
    )
    .await;
    let counted = wait_until(
        "the unmatched SQS event to be counted",
        Duration::from_secs(20),
        async || {
            series(
                &metrics(&node).await,
                "strait_events_unmatched_total{bus=\"default\"}",
            ) == Some(1.0)
        },
    )
    .await;
    let m = metrics(&node).await;
    assert!(
        counted,
        "unmatched not counted: {m}\n{}",
        tail(&dir.path().join("node.log"))
    );
    assert_eq!(
        series(&m, "strait_events_ingested_total{bus=\"default\"}"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(status().await["status"]["committed"], 2);

    // A credential this node lacks: stored, not run, and the status says why.
    let side = json!({"description": "for the source without credential"});
    let (s, v) = put(&node, "/v1/buses/side", side).await;
    assert_eq!(s, 200, "{v}");
    let mut nocred = body.clone();
    nocred["credential"] = json!("nope");
    nocred["queueUrl"] = json!(other);
    nocred["bus"] = json!("side");
    let (s, v) = put_source("nocred", nocred).await;
    assert_eq!(s, 200, "PUT source: {v}");
    let shown = wait_until(
        "the missing credential to show",
        Duration::from_secs(10),
        async || {
            let (_, v) = get(&node, "/v1/sources/nocred").await;
            v["status"]["running"] == json!(false)
                && v["status"]["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("\"nope\""))
        },
    )
    .await;
    assert!(shown, "the missing credential is not reported");
    // Its bus cannot be deleted under it.
    assert_error(&delete(&node, "/v1/buses/side").await, 409, "BusHasSources");

    // Deleting the source stops the polling.
    let (s, v) = delete(&node, "/v1/sources/sqs1").await;
    assert_eq!(s, 200, "DELETE: {v}");
    assert_error(&get(&node, "/v1/sources/sqs1").await, 404, "SourceNotFound");
    assert_error(
        &delete(&node, "/v1/sources/sqs1").await,
        404,
        "SourceNotFound",
    );
    // A receive in flight when the poller stopped may still take a message
    // at SQS for up to waitTimeSecs (it would come back after the
    // visibility timeout): send after that.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let ce = json!({"specversion": "1.0", "id": "sqs-2", "source": "sqs-test", "type": "t"});
    sqs(
        &moto,
        "SendMessage",
        json!({"QueueUrl": queue, "MessageBody": ce.to_string()}),
    )
    .await;
    // Three long-poll periods: a running poller would have taken it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        queue_counts(&moto, &queue).await,
        (1, 0),
        "the message must stay on the queue, unreceived"
    );
    assert!(
        !received_ids(&got).contains(&"sqs-2".to_string()),
        "nothing polls a deleted source"
    );
    for path in ["/v1/sources/nocred", "/v1/buses/side"] {
        let (s, v) = delete(&node, path).await;
        assert_eq!(s, 200, "DELETE {path}: {v}");
    }
}
