//! Dead letters read back and redriven, and target seeks, on one
//! in-process node: a failing target dead-letters events (listed with
//! reason, attempts and time, paged); once it is fixed some and then all
//! are redriven with their ids and `traceparent` unchanged, the lookup
//! shows the redrive, a redrive to another target of the rule goes there;
//! a seek back re-delivers what the bus holds, a seek before the retention
//! is refused naming it; bad requests name their field.

use std::sync::atomic::{AtomicBool, Ordering};
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
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .expect("body");
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

async fn put(app: &Arc<App>, path: &str, body: Value) {
    let (s, v) = call(app, "PUT", path, Some(body)).await;
    assert_eq!(s, 200, "PUT {path}: {v}");
}

fn traceparent(i: usize) -> String {
    format!("00-{:032x}-{:016x}-01", 0xabc000 + i, 0x51 + i)
}

async fn post_event(app: &Arc<App>, bus: &str, i: usize) {
    let ev = json!({"specversion": "1.0", "id": format!("e{i}"), "source": "/dlq", "type": "t",
        "traceparent": traceparent(i), "data": {"n": i}});
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("/v1/buses/{bus}/events"))
        .header("content-type", "application/cloudevents+json")
        .body(Body::from(ev.to_string()))
        .expect("request");
    let resp = strait_node::router(app.clone())
        .oneshot(req)
        .await
        .expect("answer");
    assert!(resp.status().is_success(), "POST e{i}: {}", resp.status());
}

/// What a receiver got: (path, event id, the event's traceparent).
type Got = Arc<Mutex<Vec<(String, String, String)>>>;

/// An HTTP receiver: `/a` answers 503 while `failing`, else 200; `/b`
/// always 200. Records every event it accepted.
async fn receiver(failing: Arc<AtomicBool>) -> (String, Got) {
    let got: Got = Default::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/{path}",
        axum::routing::post(
            move |axum::extract::Path(path): axum::extract::Path<String>,
                  headers: http::HeaderMap,
                  body: axum::body::Bytes| {
                let g = g.clone();
                let failing = failing.clone();
                async move {
                    if path == "a" && failing.load(Ordering::SeqCst) {
                        return http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let id = h("ce-id")
                        .or_else(|| body["id"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    let tp = h("ce-traceparent")
                        .or_else(|| body["traceparent"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    g.lock().expect("lock").push((path, id, tp));
                    http::StatusCode::OK
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

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn received(got: &Got, path: &str) -> Vec<(String, String)> {
    got.lock()
        .expect("lock")
        .iter()
        .filter(|(p, _, _)| p == path)
        .map(|(_, id, tp)| (id.clone(), tp.clone()))
        .collect()
}

const T: &str = "/v1/buses/orders/rules/r/targets";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_redriven_and_targets_seek() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = start(dir.path()).await;
    let failing = Arc::new(AtomicBool::new(true));
    let (url, got) = receiver(failing.clone()).await;
    put(&app, "/v1/buses/orders", json!({})).await;
    put(&app, "/v1/buses/orders-dlq", json!({})).await;
    put(
        &app,
        "/v1/buses/orders/rules/r",
        json!({"pattern": {"source": ["/dlq"]}, "targets": [
            {"id": "a", "type": "http", "endpoint": format!("{url}/a"),
             "retry": {"maxAttempts": 2, "initialBackoffMs": 10, "maxBackoffMs": 20},
             "deadLetter": {"type": "bus", "bus": "orders-dlq"}},
            {"id": "b", "type": "http", "endpoint": format!("{url}/b")}]}),
    )
    .await;
    for i in 0..5 {
        post_event(&app, "orders", i).await;
    }
    // All five dead-lettered at `a`, delivered at `b`.
    let mut listed = Value::Null;
    wait_until("five dead letters", async || {
        let (s, v) = call(&app, "GET", &format!("{T}/a/dead-letters"), None).await;
        assert_eq!(s, 200, "{v}");
        listed = v;
        listed["deadLetters"].as_array().map_or(0, Vec::len) == 5
    })
    .await;
    let first = &listed["deadLetters"][0];
    assert_eq!(first["id"], "e0", "{listed}");
    assert_eq!(first["source"], "/dlq");
    assert_eq!(
        (first["rule"].clone(), first["target"].clone()),
        (json!("r"), json!("a"))
    );
    assert_eq!(first["status"], "dead-lettered");
    assert_eq!(first["attempts"], 2);
    assert!(
        first["reason"]
            .as_str()
            .is_some_and(|r| r.contains("retries exhausted") && r.contains("503")),
        "{first}"
    );
    assert!(first["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    // The rule's list holds them too; target `b` has none.
    let (_, v) = call(&app, "GET", "/v1/buses/orders/rules/r/dead-letters", None).await;
    assert_eq!(v["deadLetters"].as_array().map_or(0, Vec::len), 5, "{v}");
    let (_, v) = call(&app, "GET", &format!("{T}/b/dead-letters"), None).await;
    assert_eq!(v["deadLetters"], json!([]), "{v}");
    // The dead-letter bus holds the events with their extensions.
    let (s, v) = call(&app, "GET", "/v1/buses/orders-dlq/dead-letters", None).await;
    assert_eq!(s, 200, "{v}");
    let on_bus = v["deadLetters"].as_array().cloned().unwrap_or_default();
    assert_eq!(on_bus.len(), 5, "{v}");
    assert_eq!(
        (on_bus[0]["rule"].clone(), on_bus[0]["target"].clone()),
        (json!("orders/r"), json!("a"))
    );
    assert_eq!(on_bus[0]["attempts"], 2, "{v}");
    let (s, v) = call(
        &app,
        "GET",
        "/v1/buses/orders-dlq/dead-letters?cursor=x",
        None,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    // Paging: two, two, one.
    let mut ids = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            Some(n) => format!("{T}/a/dead-letters?limit=2&next={n}"),
            None => format!("{T}/a/dead-letters?limit=2"),
        };
        let (s, v) = call(&app, "GET", &path, None).await;
        assert_eq!(s, 200, "{v}");
        let page = v["deadLetters"].as_array().cloned().unwrap_or_default();
        assert!(page.len() <= 2, "{v}");
        ids.extend(
            page.iter()
                .map(|d| d["id"].as_str().unwrap_or("").to_string()),
        );
        match v["next"].as_str() {
            Some(n) => next = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(ids, ["e0", "e1", "e2", "e3", "e4"]);

    // Bad requests name what is wrong.
    let bad = [
        (
            "GET",
            format!("{T}/a/dead-letters?limit=0"),
            None,
            400,
            "limit",
        ),
        (
            "GET",
            format!("{T}/a/dead-letters?next=zz"),
            None,
            400,
            "next",
        ),
        ("GET", format!("{T}/nope/dead-letters"), None, 404, "nope"),
        (
            "POST",
            format!("{T}/a/dead-letters/redrive"),
            Some(json!({})),
            400,
            "ids",
        ),
        (
            "POST",
            format!("{T}/a/dead-letters/redrive"),
            Some(json!({"ids": [1]})),
            400,
            "ids[0]",
        ),
        (
            "POST",
            format!("{T}/a/dead-letters/redrive"),
            Some(json!({"all": true, "to": "zz"})),
            400,
            "zz",
        ),
        (
            "POST",
            format!("{T}/a/dead-letters/redrive"),
            Some(json!({"ids": ["nope"]})),
            404,
            "nope",
        ),
        (
            "POST",
            format!("{T}/a/seek"),
            Some(json!({"time": "soon"})),
            400,
            "time",
        ),
        (
            "POST",
            "/v1/buses/orders/rules/zz/targets/a/seek".to_string(),
            Some(json!({"time": "2026-01-01T00:00:00Z"})),
            404,
            "zz",
        ),
    ];
    for (m, path, body, status, word) in bad {
        let (s, v) = call(&app, m, &path, body).await;
        assert_eq!(s, status, "{m} {path}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(word), "{m} {path}: {v}");
    }

    // Fixed: redrive two by id, then all (the rest).
    failing.store(false, Ordering::SeqCst);
    let (s, v) = call(
        &app,
        "POST",
        &format!("{T}/a/dead-letters/redrive"),
        Some(json!({"ids": ["e0", "e1", "missing"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["redriven"], json!(["e0", "e1"]), "{v}");
    assert_eq!(v["notFound"], json!(["missing"]), "{v}");
    wait_until("e0 and e1 at a", async || received(&got, "a").len() >= 2).await;
    // Their redrive shows in the list and in the lookup, delivered.
    wait_until("the redrive journaled", async || {
        let (_, v) = call(&app, "GET", "/v1/buses/orders/events/e0?source=/dlq", None).await;
        v["redrives"][0]["status"] == "delivered"
    })
    .await;
    let (_, v) = call(&app, "GET", &format!("{T}/a/dead-letters?limit=1"), None).await;
    assert_eq!(v["deadLetters"][0]["redrives"][0]["target"], "a", "{v}");
    let (s, v) = call(
        &app,
        "POST",
        &format!("{T}/a/dead-letters/redrive"),
        Some(json!({"all": true})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["redriven"], json!(["e2", "e3", "e4"]), "{v}");
    wait_until("all five at a", async || received(&got, "a").len() >= 5).await;
    let mut at_a = received(&got, "a");
    at_a.sort();
    let want: Vec<(String, String)> = (0..5).map(|i| (format!("e{i}"), traceparent(i))).collect();
    assert_eq!(at_a, want, "ids and traceparent kept");

    // To another target of the rule.
    let before_b = received(&got, "b").len();
    let (s, v) = call(
        &app,
        "POST",
        &format!("{T}/a/dead-letters/redrive"),
        Some(json!({"ids": ["e3"], "to": "b"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["to"], "b");
    wait_until("e3 again at b", async || {
        received(&got, "b").len() > before_b
    })
    .await;
    assert_eq!(
        received(&got, "b")[before_b],
        ("e3".to_string(), traceparent(3))
    );

    // Seek `b` back to before the events: all five again.
    wait_until("b's cursor past the events", async || {
        let (_, v) = call(&app, "GET", "/v1/buses/orders/events/e4?source=/dlq", None).await;
        v["deliveries"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["target"] == "b"))
            .is_some_and(|d| d["status"] == "delivered")
    })
    .await;
    let before_b = received(&got, "b").len();
    let an_hour_ago = chrono::Utc::now() - chrono::Duration::minutes(30);
    let (s, v) = call(
        &app,
        "POST",
        &format!("{T}/b/seek"),
        Some(json!({"time": an_hour_ago.to_rfc3339()})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["events"], 5, "{v}");
    assert!(v["to"].as_u64() < v["from"].as_u64(), "{v}");
    wait_until("five again at b", async || {
        received(&got, "b").len() >= before_b + 5
    })
    .await;
    // Delivered `concurrency` at a time: in any order.
    let mut again: Vec<String> = received(&got, "b")[before_b..]
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    again.sort();
    assert_eq!(again, ["e0", "e1", "e2", "e3", "e4"]);
    // Nothing more: the cursor went on from there.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received(&got, "b").len(), before_b + 5);

    // Before the retention: refused, saying what is held; allowed partially.
    let (s, v) = call(
        &app,
        "POST",
        &format!("{T}/b/seek"),
        Some(json!({"time": "2001-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("retention_secs") && msg.contains("allowPartial"),
        "{v}"
    );
    let (s, v) = call(
        &app,
        "POST",
        &format!("{T}/b/seek"),
        Some(json!({"time": "2001-01-01T00:00:00Z", "allowPartial": true})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    wait_until("five more at b", async || {
        received(&got, "b").len() >= before_b + 10
    })
    .await;
    // A seek forward to now skips nothing new (the cursor is at the head).
    let (s, v) = call(
        &app,
        "POST",
        &format!("{T}/b/seek"),
        Some(json!({"time": chrono::Utc::now().to_rfc3339()})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let _ = app.site.shutdown().await;
}
