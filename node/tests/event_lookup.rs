//! "Where did my event go?" on one in-process node: `GET
//! /v1/buses/{bus}/events/{id}` shows each delivery (delivered with its
//! time; a failing target retrying with its attempts, then dead-lettered
//! with the reason; no deliveries for an event no rule matches), answers
//! 404 naming an unknown event and 400 naming a bad parameter; `GET
//! /v1/buses/{bus}/events` pages through a bus's events; the targets'
//! counters are replicated (a new leader goes on from them).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

async fn post_event(app: &Arc<App>, bus: &str, id: &str, event_type: &str) {
    let ev = json!({"specversion": "1.0", "id": id, "source": "/lookup", "type": event_type});
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
    assert!(resp.status().is_success(), "POST {id}: {}", resp.status());
}

/// Poll `GET path` until `check` accepts the answer; the last answer.
async fn wait_for(app: &Arc<App>, path: &str, check: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = call(app, "GET", path, None).await;
        if check(s, &v) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out on {path}: {s} {v}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An HTTP receiver: `/ok` answers 200, `/fail` 503; counts the calls.
async fn receiver() -> (String, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    let c1 = calls.clone();
    let c2 = calls.clone();
    let app = axum::Router::new()
        .route(
            "/ok",
            axum::routing::post(move || {
                c1.fetch_add(1, Ordering::SeqCst);
                async { "ok" }
            }),
        )
        .route(
            "/fail",
            axum::routing::post(move || {
                c2.fetch_add(1, Ordering::SeqCst);
                async { (http::StatusCode::SERVICE_UNAVAILABLE, "busy") }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), calls)
}

fn delivery<'a>(v: &'a Value, rule: &str) -> &'a Value {
    v["deliveries"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["rule"] == rule))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lookup_shows_what_became_of_each_delivery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = start(dir.path()).await;
    let site = app.cfg.site.clone();
    let (base, _calls) = receiver().await;
    put(&app, "/v1/buses/lk", json!({})).await;
    put(&app, "/v1/buses/lk-dl", json!({})).await;
    put(
        &app,
        "/v1/buses/lk/rules/ok",
        json!({"pattern": {"type": ["ok"]},
               "targets": [{"id": "web", "type": "http", "endpoint": format!("{base}/ok")}]}),
    )
    .await;
    put(
        &app,
        "/v1/buses/lk/rules/bad",
        json!({"pattern": {"type": ["bad"]},
               "targets": [{"id": "flaky", "type": "http", "endpoint": format!("{base}/fail"),
                            "retry": {"maxAttempts": 4, "initialBackoffMs": 400, "maxBackoffMs": 400},
                            "deadLetter": {"type": "bus", "bus": "lk-dl"}}]}),
    )
    .await;
    post_event(&app, "lk", "e-ok", "ok").await;
    post_event(&app, "lk", "e-bad", "bad").await;
    post_event(&app, "lk", "e-none", "none").await;

    // Delivered at the first attempt: the cursor's mark gives the time.
    let v = wait_for(&app, "/v1/buses/lk/events/e-ok?source=/lookup", |s, v| {
        s == 200 && delivery(v, "ok")["status"] == "delivered"
    })
    .await;
    assert_eq!(v["site"], site.as_str(), "{v}");
    assert_eq!(v["event"]["id"], "e-ok", "{v}");
    assert_eq!(v["traceId"].as_str().map(str::len), Some(32), "{v}");
    assert_eq!(v["deliveries"].as_array().map(Vec::len), Some(1), "{v}");
    let d = delivery(&v, "ok");
    assert_eq!(
        (d["site"].as_str(), d["target"].as_str()),
        (Some(site.as_str()), Some("web"))
    );
    let time = d["attempts"][0]["time"].as_str().unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok()
            && d["attempts"][0]["outcome"] == "delivered",
        "{v}"
    );

    // A failing target: retrying with its attempts, then dead-lettered.
    let v = wait_for(&app, "/v1/buses/lk/events/e-bad", |s, v| {
        s == 200 && delivery(v, "bad")["status"] == "retrying"
    })
    .await;
    let a = &delivery(&v, "bad")["attempts"][0];
    assert_eq!(a["outcome"], "failed", "{v}");
    assert_eq!(a["httpStatus"], 503, "{v}");
    assert!(
        a["error"].as_str().is_some_and(|e| e.contains("busy")),
        "{v}"
    );
    let v = wait_for(&app, "/v1/buses/lk/events/e-bad", |s, v| {
        s == 200 && delivery(v, "bad")["status"] == "dead-lettered"
    })
    .await;
    let d = delivery(&v, "bad");
    assert_eq!(d["attempts"].as_array().map(Vec::len), Some(4), "{v}");
    assert!(
        d["reason"]
            .as_str()
            .is_some_and(|r| r.contains("retries exhausted")),
        "{v}"
    );

    // No rule matches: no deliveries.
    let v = wait_for(&app, "/v1/buses/lk/events/e-none", |s, _| s == 200).await;
    assert_eq!(v["deliveries"], json!([]), "{v}");
    assert_eq!(v["unreachableSites"], json!([]), "{v}");

    // Errors name what is wrong.
    let (s, v) = call(&app, "GET", "/v1/buses/lk/events/nope", None).await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"]["code"], "EventNotFound", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`nope`")),
        "{v}"
    );
    let (s, v) = call(&app, "GET", "/v1/buses/nobus/events/e-ok", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("BusNotFound")),
        "{v}"
    );
    let (s, v) = call(&app, "GET", "/v1/buses/lk/events/e-ok?sorce=x", None).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`sorce`")),
        "{v}"
    );
    for bad in ["limit=lots", "limit=0", "limit=1001"] {
        let (s, v) = call(&app, "GET", &format!("/v1/buses/lk/events?{bad}"), None).await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("`limit`")),
            "{v}"
        );
    }
    let (s, v) = call(&app, "GET", "/v1/buses/lk/events?since=yesterday", None).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`since`")),
        "{v}"
    );

    // Paging: two pages of 2 and 1.
    let (s, page) = call(&app, "GET", "/v1/buses/lk/events?limit=2", None).await;
    assert_eq!(s, 200, "{page}");
    let mut ids: Vec<String> = page["events"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter_map(|e| e["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(ids.len(), 2, "{page}");
    let mut cursor = page["nextCursor"].as_str().map(str::to_string);
    while let Some(c) = cursor.take() {
        let (s, page) = call(
            &app,
            "GET",
            &format!("/v1/buses/lk/events?limit=2&cursor={c}"),
            None,
        )
        .await;
        assert_eq!(s, 200, "{page}");
        ids.extend(
            page["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["id"].as_str().map(str::to_string)),
        );
        cursor = page["nextCursor"].as_str().map(str::to_string);
    }
    assert_eq!(ids, ["e-ok", "e-bad", "e-none"]);
    let (s, page) = call(
        &app,
        "GET",
        "/v1/buses/lk/events?type=bad&source=/lookup",
        None,
    )
    .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["events"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["events"][0]["type"], "bad", "{page}");

    // The counters are replicated (a new leader starts from them).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counts = app.site.state.target_counts().expect("counts");
        let ok = counts.get("lk/ok/web").map(|c| c.delivered);
        let bad = counts
            .get("lk/bad/flaky")
            .map(|c| (c.failed_attempts, c.dead_lettered));
        if ok == Some(1) && bad == Some((4, 1)) {
            break;
        }
        assert!(Instant::now() < deadline, "replicated counts: {counts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
