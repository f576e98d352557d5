//! Archives and replays through the HTTP API of an in-process node (its
//! one-member Raft site, dispatcher and router) and a real HTTP receiver:
//!
//! * an archive keeps only the events matching its pattern and reports
//!   their count and size; bad settings get 4xx naming the field;
//! * a replay of one batch's window to one of two rules sends exactly
//!   those events, in order (a target with `concurrency: 1`), to exactly that rule's target, each with
//!   `replayname`, and ends `COMPLETED`;
//! * a replay can be cancelled; errors for an unknown archive, a bad
//!   window, a name in use and a finished replay.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use serde_json::{Value, json};
use strait_node::App;
use strait_node::config::NodeConfig;
use tower::ServiceExt as _;

async fn start(dir: &std::path::Path) -> Arc<App> {
    let mut cfg = NodeConfig {
        dev: true,
        data_dir: dir.join("data"),
        ..NodeConfig::default()
    };
    cfg.dispatch.checkpoint_interval_ms = 50;
    // Slow enough for a cancel to land mid-replay.
    cfg.dispatch.replay_max_events_per_sec = 200;
    strait_node::start(cfg).await.expect("node starts")
}

async fn call(app: &Arc<App>, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = http::Request::builder().method(method).uri(path);
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let resp = strait_node::router(app.clone())
        .oneshot(req.body(body).expect("request"))
        .await
        .expect("answer");
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn post_events(app: &Arc<App>, bus: &str, events: &[Value]) {
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("/v1/buses/{bus}/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(Body::from(Value::Array(events.to_vec()).to_string()))
        .expect("request");
    let resp = strait_node::router(app.clone())
        .oneshot(req)
        .await
        .expect("answer");
    assert_eq!(resp.status().as_u16(), 200);
}

/// What a receiver path got: (path, event id, replayname).
type Got = Arc<Mutex<Vec<(String, String, Option<String>)>>>;

async fn receiver() -> (String, Got) {
    let got: Got = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/{path}",
        axum::routing::post(
            move |axum::extract::Path(path): axum::extract::Path<String>,
                  headers: http::HeaderMap,
                  body: axum::body::Bytes| {
                let g = g.clone();
                async move {
                    let h = |k: &str| {
                        headers
                            .get(k)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let structured: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let id = h("ce-id")
                        .or_else(|| structured["id"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    let replay = h("ce-replayname")
                        .or_else(|| structured["replayname"].as_str().map(str::to_string));
                    if let Ok(mut g) = g.lock() {
                        g.push((path, id, replay));
                    }
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), got)
}

fn got(g: &Got, path: &str, replay: Option<&str>) -> Vec<String> {
    g.lock()
        .map(|v| {
            v.iter()
                .filter(|(p, _, r)| p == path && r.as_deref() == replay)
                .map(|(_, id, _)| id.clone())
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_until(what: &str, secs: u64, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn event(id: &str, ty: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/shop", "type": ty, "data": {"n": id}})
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn wait_state(app: &Arc<App>, name: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = call(app, "GET", &format!("/v1/replays/{name}"), None).await;
        assert_eq!(s, 200, "{v}");
        if v["state"] == state {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "replay {name} never {state}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn error_message(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_sends_one_windows_archived_events_again_to_the_named_rule_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = start(dir.path()).await;
    let (url, received) = receiver().await;
    for (rule, path) in [("r1", "a"), ("r2", "b")] {
        let (s, v) = call(
            &app,
            "PUT",
            &format!("/v1/buses/default/rules/{rule}"),
            Some(json!({"pattern": {"type": ["order"]}, "targets": [{"id": "t", "type": "http", "endpoint": format!("{url}/{path}"), "concurrency": 1}]})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
    // Bad archive settings: 4xx naming the field.
    let bad = [
        (json!({"pattern": {"type": "order"}}), "pattern"),
        (json!({"retentionDays": "x"}), "retentionDays"),
        (json!({"colour": 1}), "colour"),
    ];
    for (body, field) in bad {
        let (s, v) = call(&app, "PUT", "/v1/buses/default/archives/orders", Some(body)).await;
        assert_eq!(s, 400, "{v}");
        assert!(error_message(&v).starts_with(field), "{v}");
    }
    let (s, v) = call(
        &app,
        "PUT",
        "/v1/buses/nope/archives/orders",
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("BusNotFound")),
        "{v}"
    );
    let (s, v) = call(
        &app,
        "PUT",
        "/v1/buses/default/archives/orders",
        Some(json!({"pattern": {"type": ["order"]}, "retentionDays": 7, "description": "orders"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["eventCount"], 0);

    // Two batches, apart in time; one event of another type.
    let first: Vec<String> = (0..5).map(|i| format!("first-{i}")).collect();
    let second: Vec<String> = (0..3).map(|i| format!("second-{i}")).collect();
    let t0 = now_ms();
    let mut batch: Vec<Value> = first.iter().map(|id| event(id, "order")).collect();
    batch.push(event("noise", "other"));
    post_events(&app, "default", &batch).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let t1 = now_ms();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let batch: Vec<Value> = second.iter().map(|id| event(id, "order")).collect();
    post_events(&app, "default", &batch).await;
    wait_until("live deliveries", 20, async || {
        got(&received, "a", None).len() == 8 && got(&received, "b", None).len() == 8
    })
    .await;
    let (s, v) = call(&app, "GET", "/v1/buses/default/archives/orders", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["eventCount"], 8, "{v}");
    assert!(v["sizeBytes"].as_u64().unwrap_or(0) > 8 * 60, "{v}");
    assert_eq!(v["retentionDays"], 7);
    let (s, v) = call(&app, "GET", "/v1/buses/default/archives", None).await;
    assert_eq!((s, v["archives"].as_array().map(Vec::len)), (200, Some(1)));

    // Bad replays.
    let window = |start: u64, end: u64| json!({"bus": "default", "archive": "orders", "start": start, "end": end, "rules": ["r1"]});
    let (s, v) = call(&app, "POST", "/v1/replays/rp", Some(window(t1, t0))).await;
    assert_eq!(s, 400, "{v}");
    assert!(error_message(&v).starts_with("end"), "{v}");
    let mut unknown = window(t0, t1);
    unknown["archive"] = json!("nope");
    let (s, v) = call(&app, "POST", "/v1/replays/rp", Some(unknown)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("ArchiveNotFound")),
        "{v}"
    );
    let mut no_rule = window(t0, t1);
    no_rule["rules"] = json!(["r1", "r9"]);
    let (s, v) = call(&app, "POST", "/v1/replays/rp", Some(no_rule)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("RuleNotFound")),
        "{v}"
    );
    assert!(error_message(&v).starts_with("rules[1]"), "{v}");

    // The first batch's window, to r1 only.
    let (s, v) = call(&app, "POST", "/v1/replays/rp", Some(window(t0, t1))).await;
    assert_eq!(s, 201, "{v}");
    let done = wait_state(&app, "rp", "COMPLETED").await;
    assert_eq!(done["eventsReplayed"], 5, "{done}");
    assert!(done["lastReplayedTime"].is_string(), "{done}");
    wait_until("replayed deliveries", 10, async || {
        got(&received, "a", Some("rp")).len() >= 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(got(&received, "a", Some("rp")), first, "in original order");
    assert!(got(&received, "b", Some("rp")).is_empty());
    assert_eq!(got(&received, "b", None).len(), 8);
    // Name in use; a finished replay cannot be cancelled.
    let (s, v) = call(&app, "POST", "/v1/replays/rp", Some(window(t0, t1))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("ReplayExists")),
        "{v}"
    );
    let (s, v) = call(&app, "POST", "/v1/replays/rp/cancel", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("ReplayFinished")),
        "{v}"
    );
    let (s, v) = call(&app, "GET", "/v1/replays/nope", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("ReplayNotFound")),
        "{v}"
    );

    // A long replay (every rule) cancelled mid-way.
    let many: Vec<Value> = (0..600)
        .map(|i| event(&format!("bulk-{i}"), "order"))
        .collect();
    post_events(&app, "default", &many).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let end = now_ms();
    let (s, v) = call(
        &app,
        "POST",
        "/v1/replays/long",
        Some(json!({"bus": "default", "archive": "orders", "start": t0, "end": end})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    wait_state(&app, "long", "RUNNING").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, v) = call(&app, "POST", "/v1/replays/long/cancel", None).await;
    assert_eq!(s, 200, "{v}");
    let cancelled = wait_state(&app, "long", "CANCELLED").await;
    let n = cancelled["eventsReplayed"].as_u64().unwrap_or(0);
    assert!(n > 0 && n < 608, "{cancelled}");
    let (s, v) = call(&app, "GET", "/v1/replays?state=CANCELLED", None).await;
    assert_eq!(
        (s, v["replays"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{v}"
    );

    // Deleting the archive deletes its events.
    let (s, _) = call(&app, "DELETE", "/v1/buses/default/archives/orders", None).await;
    assert_eq!(s, 200);
    let (s, _) = call(&app, "GET", "/v1/buses/default/archives/orders", None).await;
    assert_eq!(s, 404);
    assert!(!dir.path().join("data/archive/default/orders").exists());
}

/// `strait archive ...` and `strait replay ...` against a real node process.
#[test]
fn the_command_line_manages_archives_and_replays() {
    use std::process::{Command, Stdio};
    const BIN: &str = env!("CARGO_BIN_EXE_strait");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let url = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--dev",
            "--http",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn node");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(&mut child);
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--server", url.as_str()]);
        Command::new(BIN).args(&all).output().expect("run strait")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !run(&["archive", "ls"]).status.success() {
        assert!(Instant::now() < deadline, "node never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run(&[
        "archive",
        "put",
        "orders",
        "--pattern",
        r#"{"type": ["order"]}"#,
        "--retention-days",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["archive", "ls"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("orders") && text.contains("3d"), "{text}");
    let out = run(&["archive", "put", "bad", "--pattern", r#"{"type": "order"}"#]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HTTP 400") && err.contains("pattern"), "{err}");
    let out = run(&[
        "replay",
        "start",
        "rp",
        "--archive",
        "orders",
        "--start",
        "2026-01-01T00:00:00Z",
        "--end",
        "2025-01-01T00:00:00Z",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("end: must be later than start"), "{err}");
    let out = run(&[
        "replay",
        "start",
        "rp",
        "--archive",
        "orders",
        "--start",
        "2026-01-01T00:00:00Z",
        "--end",
        "1000",
    ]);
    assert!(!out.status.success());
    let out = run(&[
        "replay",
        "start",
        "rp",
        "--archive",
        "orders",
        "--start",
        "0",
        "--end",
        "1000",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = run(&["replay", "status", "rp"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if v["state"] == "COMPLETED" {
            break;
        }
        assert!(Instant::now() < deadline, "replay never completed: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run(&["replay", "ls"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("COMPLETED"));
    let out = run(&["replay", "cancel", "rp"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("HTTP 409"), "{err}");
    let out = run(&["archive", "rm", "orders"]);
    assert!(out.status.success());
    let out = run(&["archive", "get", "orders"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 404"));
}
