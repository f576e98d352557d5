//! An in-process node (its one-member Raft site, dispatcher and HTTP router):
//!
//! * ingress refuses JSON the router cannot read (nested too deep, a number
//!   out of range, a lone surrogate) with 400 naming the problem, in
//!   structured, batch and binary mode, and stores none of it;
//! * a stored event that still cannot be read is counted, and dead-lettered
//!   by the bus's rules instead of being skipped;
//! * `strait_events_ingested_total{bus}` counts each pushed event once, and
//!   `strait_events_unmatched_total{bus}` the events that matched no rule.
//!
//! The metrics recorder is global to this test binary: each test uses its own
//! bus names.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use strait_federation::AppendEntry;
use strait_node::App;
use strait_node::config::NodeConfig;
use tower::ServiceExt as _;

const STRUCTURED: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";

async fn start(dir: &std::path::Path, tweak: impl FnOnce(&mut NodeConfig)) -> Arc<App> {
    let mut cfg = NodeConfig {
        dev: true,
        data_dir: dir.join("data"),
        ..NodeConfig::default()
    };
    cfg.dispatch.checkpoint_interval_ms = 50;
    tweak(&mut cfg);
    strait_node::start(cfg).await.expect("node starts")
}

/// One HTTP request through the node's router: status and JSON body.
async fn call(
    app: &Arc<App>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = http::Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Body::from(body)).expect("request");
    let resp = strait_node::router(app.clone())
        .oneshot(req)
        .await
        .expect("answer");
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .expect("body");
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

async fn put(app: &Arc<App>, path: &str, body: Value) {
    let (s, v) = call(
        app,
        "PUT",
        path,
        &[("content-type", "application/json")],
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(s, 200, "PUT {path}: {v}");
}

async fn metrics(app: &Arc<App>) -> String {
    match call(app, "GET", "/metrics", &[], Vec::new()).await {
        (200, Value::String(s)) => s,
        other => panic!("/metrics: {other:?}"),
    }
}

/// The value of one series (`name{labels}`) in a /metrics scrape.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stored(app: &Arc<App>, bus: &str) -> Vec<Value> {
    app.site
        .state
        .read_events(bus, 0, 1000)
        .expect("read events")
        .iter()
        .map(|e| serde_json::from_slice(&e.json).expect("stored JSON"))
        .collect()
}

/// A structured event (as text) whose `data` is `data` (raw JSON text).
fn event_text(id: &str, data: &str) -> String {
    format!(r#"{{"specversion":"1.0","id":"{id}","source":"/t","type":"t","data":{data}}}"#)
}

/// The four reproducers of issue 15: `data` and what the error must say.
fn reproducers() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "depth130",
            format!("{}1{}", "[".repeat(130), "]".repeat(130)),
            "`data[0][0][0][0][0][0][0]…` nests arrays and objects too deep: routing reads at most 127 levels",
        ),
        (
            "exp400",
            r#"{"n":1e400}"#.into(),
            "`data.n` holds a number out of range",
        ),
        (
            "digits400",
            format!(r#"{{"n":{}}}"#, "9".repeat(400)),
            "`data.n` holds a number out of range",
        ),
        (
            "surrogate",
            r#"{"s":"\ud800"}"#.into(),
            "`data.s` holds a string with a lone UTF-16 surrogate escape",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn json_routing_cannot_read_is_refused_with_400_naming_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = start(dir.path(), |_| {}).await;
    put(&app, "/v1/buses/refuse", json!({})).await;
    let path = "/v1/buses/refuse/events";
    for (name, data, says) in reproducers() {
        let bad = event_text(&format!("{name}-bad"), &data);
        let want = format!("the event cannot be routed: {says}");

        // Structured mode: 400 naming the problem.
        let (s, v) = call(
            &app,
            "POST",
            path,
            &[("content-type", STRUCTURED)],
            bad.clone().into_bytes(),
        )
        .await;
        assert_eq!(s, 400, "structured {name}: {v}");
        assert_eq!(
            v["error"]["code"], "UnroutableEvent",
            "structured {name}: {v}"
        );
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(&want), "structured {name}: {message}");

        // A batch of only that event: 400, and the per-event result says so.
        let (s, v) = call(
            &app,
            "POST",
            path,
            &[("content-type", BATCH)],
            format!("[{bad}]").into_bytes(),
        )
        .await;
        assert_eq!(s, 400, "batch {name}: {v}");
        assert_eq!(v["error"]["code"], "UnroutableEvent", "batch {name}: {v}");
        assert_eq!(v["results"][0]["status"], "error", "batch {name}: {v}");
        assert_eq!(
            v["results"][0]["id"],
            format!("{name}-bad"),
            "batch {name}: {v}"
        );
        let message = v["results"][0]["error"]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(message.starts_with(&want), "batch {name}: {message}");

        // Next to a good event: 207, the good one stored, the bad one an error entry.
        let good = event_text(&format!("{name}-good"), "{\"ok\":true}");
        let (s, v) = call(
            &app,
            "POST",
            path,
            &[("content-type", BATCH)],
            format!("[{good},{bad}]").into_bytes(),
        )
        .await;
        assert_eq!(s, 207, "mixed batch {name}: {v}");
        assert_eq!(
            (v["accepted"].as_u64(), v["failed"].as_u64()),
            (Some(1), Some(1)),
            "{v}"
        );
        assert_eq!(v["results"][0]["status"], "accepted", "{v}");
        assert_eq!(v["results"][1]["status"], "error", "{v}");
        assert_eq!(v["results"][1]["error"]["code"], "UnroutableEvent", "{v}");
        let message = v["results"][1]["error"]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(message.starts_with(&want), "mixed batch {name}: {message}");
    }

    // Binary mode: data that parses alone but is one level too deep once
    // it is inside the event.
    let deep = format!("{}1{}", "[".repeat(127), "]".repeat(127));
    let binary = [
        ("content-type", "application/json"),
        ("ce-specversion", "1.0"),
        ("ce-id", "binary-deep"),
        ("ce-source", "/t"),
        ("ce-type", "t"),
    ];
    let (s, v) = call(&app, "POST", path, &binary, deep.into_bytes()).await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (400, &json!("UnroutableEvent")),
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("nests arrays and objects too deep"),
        "{message}"
    );

    // Only the good events were stored, and each one routing can read.
    let ids: Vec<String> = stored(&app, "refuse")
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        ids,
        [
            "depth130-good",
            "exp400-good",
            "digits400-good",
            "surrogate-good"
        ]
    );
    app.site.shutdown().await.expect("shutdown");
}

/// The backstop: events stored without the ingress check (an older Strait,
/// another site) that routing cannot read are counted, logged and
/// dead-lettered by every target of the bus's enabled rules, and the
/// targets go on with the next events.
#[tokio::test(flavor = "multi_thread")]
async fn a_stored_event_routing_cannot_read_is_counted_and_dead_lettered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = start(dir.path(), |_| {}).await;
    for bus in ["back", "back-out", "back-dlq"] {
        put(&app, &format!("/v1/buses/{bus}"), json!({})).await;
    }
    put(
        &app,
        "/v1/buses/back/rules/r",
        json!({
            "pattern": {"source": ["/t"]},
            "targets": [
                {"id": "t1", "type": "bus", "bus": "back-out"},
                {"id": "t2", "type": "bus", "bus": "back-out"}
            ],
            "deadLetter": {"type": "bus", "bus": "back-dlq"}
        }),
    )
    .await;
    let mut texts = Vec::new();
    for (name, data, _) in reproducers() {
        texts.push((name, event_text(name, &data)));
    }
    // JSON, but not a CloudEvent (no `type`): matched, then dead-lettered.
    texts.push((
        "notype",
        r#"{"specversion":"1.0","id":"notype","source":"/t"}"#.into(),
    ));
    texts.push(("after", event_text("after", "{\"ok\":true}")));
    let entries = texts
        .iter()
        .map(|(name, text)| AppendEntry {
            bus: "back".into(),
            source: "/t".into(),
            id: (*name).into(),
            event: RawValue::from_string(text.clone()).expect("raw JSON"),
        })
        .collect();
    app.committer.append(entries).await.expect("appended");

    // The good event after them is delivered by both targets.
    wait_until("the good event at back-out", async || {
        stored(&app, "back-out").len() == 2
    })
    .await;
    // Each bad one is dead-lettered: both targets share the rule's
    // dead-letter bus, which stores it once (same source and id).
    wait_until("five dead letters", async || {
        stored(&app, "back-dlq").len() == 5
    })
    .await;
    let dlq = stored(&app, "back-dlq");
    let by_id = |id: &str| {
        dlq.iter()
            .find(|d| d["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no dead letter for {id}: {dlq:?}"))
    };
    for (name, text) in &texts[..4] {
        let dl = by_id(name);
        assert_eq!(dl["id"], *name, "{dl}");
        assert_eq!(dl["source"], "/t", "{dl}");
        assert_eq!(dl["type"], "t", "{dl}");
        assert_eq!(dl["data"], json!(text), "the stored text is kept: {dl}");
        assert_eq!(dl["datacontenttype"], "text/plain; charset=utf-8", "{dl}");
        let reason = dl["deadletterreason"].as_str().unwrap_or_default();
        assert!(reason.starts_with("unroutable: `data"), "{reason}");
        assert_eq!(dl["deadletterattempts"], 0, "{dl}");
        assert_eq!(dl["deadletterrule"], "back/r", "{dl}");
    }
    for (id, says) in [
        ("depth130", "too deep"),
        ("exp400", "number out of range"),
        ("digits400", "number out of range"),
        ("surrogate", "lone UTF-16 surrogate"),
    ] {
        let reason = by_id(id)["deadletterreason"].to_string();
        assert!(reason.contains(says), "{id}: {reason}");
    }

    // Each target dead-letters each of the five (the second copy is a
    // duplicate at the dead-letter bus).
    let dead_lettered = |m: &str, target: &str| {
        let labels = format!(
            "strait_dead_lettered_total{{bus=\"back\",rule=\"r\",target=\"{target}\",outcome=\"bus\"}}"
        );
        series(m, &labels)
    };
    wait_until("both targets to dead-letter all five", async || {
        let m = metrics(&app).await;
        dead_lettered(&m, "t1") == Some(5.0) && dead_lettered(&m, "t2") == Some(5.0)
    })
    .await;
    // The four the feed cannot read once each, the one that is not a
    // CloudEvent by each target that matched it.
    let m = metrics(&app).await;
    assert_eq!(
        series(&m, "strait_events_unroutable_total{bus=\"back\"}"),
        Some(6.0),
        "{m}"
    );
    let notype = by_id("notype");
    assert_eq!(notype["type"], "strait.unroutable", "{notype}");
    assert_eq!(notype["data"], json!(texts[4].1), "{notype}");
    let reason = notype["deadletterreason"].as_str().unwrap_or_default();
    assert_eq!(
        reason,
        "unroutable: not a valid CloudEvent: required attribute `type` is missing"
    );
    let (_, status) = call(&app, "GET", "/v1/buses/back/rules/r", &[], Vec::new()).await;
    assert_eq!(
        status["status"]["targets"]["t1"]["deadLettered"], 5,
        "{status}"
    );
    app.site.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn push_counts_each_event_once_per_bus_and_unmatched_events_are_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = start(dir.path(), |c| c.alibaba.push.require_signature = false).await;
    for bus in ["pushed", "pushed-out"] {
        put(&app, &format!("/v1/buses/{bus}"), json!({})).await;
    }
    put(
        &app,
        "/v1/buses/pushed/rules/only-a",
        json!({"pattern": {"type": ["a"]}, "targets": [{"id": "out", "type": "bus", "bus": "pushed-out"}]}),
    )
    .await;
    // The rule is in the leader's feed once its worker runs.
    let key = strait_federation::store::state::target_key("pushed", "only-a", "out");
    wait_until("the rule's worker", async || {
        strait_node::target_stats(&app.progress, &key).is_some()
    })
    .await;
    let ev =
        |id: &str, ty: &str| json!({"specversion": "1.0", "id": id, "source": "/ali", "type": ty});
    let body = json!([ev("p1", "a"), ev("p2", "b"), ev("p3", "b")]);
    let (s, v) = call(
        &app,
        "POST",
        "/alibaba/push/pushed",
        &[("content-type", "application/json")],
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!((s, &v["accepted"]), (200, &json!(3)), "{v}");
    let (s, v) = call(
        &app,
        "POST",
        "/alibaba/push/pushed",
        &[("content-type", "application/json")],
        ev("p4", "b").to_string().into_bytes(),
    )
    .await;
    assert_eq!((s, &v["accepted"]), (200, &json!(1)), "{v}");

    wait_until("the matching event at pushed-out", async || {
        stored(&app, "pushed-out").len() == 1
    })
    .await;
    // The re-ingested copy on pushed-out (a bus without rules) is
    // unmatched there too; wait for the leader to have routed it.
    wait_until("pushed-out's event to be counted", async || {
        series(
            &metrics(&app).await,
            "strait_events_unmatched_total{bus=\"pushed-out\"}",
        ) == Some(1.0)
    })
    .await;
    let m = metrics(&app).await;
    assert_eq!(
        series(&m, "strait_events_ingested_total{bus=\"pushed\"}"),
        Some(4.0),
        "{m}"
    );
    assert_eq!(
        series(&m, "strait_events_unmatched_total{bus=\"pushed\"}"),
        Some(3.0),
        "{m}"
    );
    // Re-ingest by a bus target is not ingress.
    assert_eq!(
        series(&m, "strait_events_ingested_total{bus=\"pushed-out\"}"),
        None,
        "{m}"
    );
    assert!(
        !m.lines()
            .any(|l| l.starts_with("strait_events_ingested_total ")),
        "no unlabelled series: {m}"
    );
    app.site.shutdown().await.expect("shutdown");
}
