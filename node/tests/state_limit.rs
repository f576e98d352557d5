//! `max_state_bytes`: an in-process node whose state reaches the limit
//! refuses new events with `507 StateFull` (the limit and the state's size
//! in the body, `Retry-After`), keeps every event it acknowledged, and
//! accepts again once retention has freed space. (Every ingress path,
//! the AWS- and Alibaba-compatible endpoints and sources included, asks
//! the same `Committer::append`, through `Ingest::submit`; links ask the site state in the link
//! service.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use serde_json::{Value, json};
use strait_node::App;
use strait_node::config::NodeConfig;
use tower::ServiceExt as _;

const LIMIT: u64 = 40_000;

async fn start(dir: &std::path::Path) -> Arc<App> {
    let mut cfg = NodeConfig {
        dev: true,
        data_dir: dir.join("data"),
        retention_secs: 1,
        dedup_window_secs: 1,
        max_state_bytes: LIMIT,
        ..NodeConfig::default()
    };
    cfg.dispatch.checkpoint_interval_ms = 50;
    strait_node::start(cfg).await.expect("node starts")
}

/// One request through the router: status, `Retry-After`, JSON body.
async fn call(app: &Arc<App>, path: &str, ct: &str, body: String) -> (u16, Option<String>, Value) {
    let req = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", ct)
        .body(Body::from(body))
        .expect("request");
    let resp = strait_node::router(app.clone())
        .oneshot(req)
        .await
        .expect("answer");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, retry, v)
}

/// A batch of `n` events of about 1 KiB with ids `{tag}-{i}`.
fn batch(tag: &str, n: usize) -> String {
    let events: Vec<Value> = (0..n)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("{tag}-{i}"), "source": "/limit",
                   "type": "t", "data": {"n": i, "note": format!("{tag} {i} ").repeat(60)}})
        })
        .collect();
    Value::Array(events).to_string()
}

async fn post(app: &Arc<App>, tag: &str) -> (u16, Option<String>, Value) {
    call(
        app,
        "/v1/buses/default/events",
        "application/cloudevents-batch+json",
        batch(tag, 20),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_state_refuses_new_events_until_retention_frees_space() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = start(dir.path()).await;

    // Fill: batches are accepted until the state holds the limit.
    let mut accepted = 0;
    let refused = loop {
        let (status, retry, body) = post(&app, &format!("fill{accepted}")).await;
        match status {
            200 => accepted += 1,
            507 => break (retry, body),
            other => panic!("unexpected {other}: {body}"),
        }
        assert!(accepted < 1000, "never full");
    };
    assert!(accepted > 0, "the first batches fit");
    let (retry, body) = refused;
    assert_eq!(body["error"]["code"], "StateFull", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("max_state_bytes"), "{message}");
    assert!(message.contains(&LIMIT.to_string()), "{message}");
    assert_eq!(body["state"]["maxStateBytes"], LIMIT, "{body}");
    let stored = body["state"]["storedBytes"].as_u64().expect("stored");
    assert!(stored >= LIMIT, "{body}");
    assert_eq!(retry.as_deref(), Some("10"));

    // Nothing acknowledged is lost: every accepted event is stored.
    let stored_events = app.site.state.stored_events().expect("count");
    assert_eq!(stored_events, accepted * 20);

    // Retention (1 s) frees the space at the next collecting checkpoint
    // (at least every 10 s): accepted again.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if app.site.state.full().is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "retention never freed space");
    }
    let (status, _, body) = post(&app, "after").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 20, "{body}");
}
