//! Bad input: every problem gets a 4xx with `{"error": {"code", "message"}}`
//! naming what is wrong, nothing bad is stored, and the node stays healthy
//! and keeps delivering what it accepted.

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom as _;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{Value, json};
use strait_chaos_tests::events::event;
use strait_chaos_tests::{
    Behavior, HttpReply, Ledger, NodeOptions, Payload, Receiver, SentEvent, StraitProcess, bounded,
    check_conservation, ensure_no_panic, entry_outcomes, http_target, retry,
};

const BUS: &str = "default";
const SOURCE: &str = "chaos.bad";
const GARBAGE_SOURCE: &str = "chaos.bad.garbage";
const LIMIT: Duration = Duration::from_secs(60);
const MAX_EVENT_BYTES: usize = 8192;
const MAX_REQUEST_BYTES: usize = 65536;
const MAX_BATCH_EVENTS: usize = 20;

struct Fixture {
    node: StraitProcess,
    sink: Receiver,
    ledger: Ledger,
    failures: Vec<String>,
}

async fn fixture() -> anyhow::Result<Fixture> {
    let sink = Receiver::start(Behavior::Ok).await?;
    let node = StraitProcess::start(NodeOptions::dev().config(json!({
        "limits": {
            "max_event_bytes": MAX_EVENT_BYTES,
            "max_request_bytes": MAX_REQUEST_BYTES,
            "max_batch_events": MAX_BATCH_EVENTS,
        },
        "dispatch": {"checkpoint_interval_ms": 50},
    })))
    .await?;
    node.put_rule(
        BUS,
        "sink",
        &json!({
            "pattern": {"source": [SOURCE, GARBAGE_SOURCE]},
            "targets": [http_target("sink", &sink.url("/sink"), retry(20, 50, 200))],
        }),
    )
    .await?
    .expect_status(200, "PUT rule sink")?;
    Ok(Fixture {
        node,
        sink,
        ledger: Ledger::new(),
        failures: Vec::new(),
    })
}

fn short(text: &str) -> String {
    let mut s: String = text.chars().take(300).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

impl Fixture {
    /// Check an answer is the expected client error; record a failure if not.
    fn expect_error(
        &mut self,
        what: &str,
        reply: anyhow::Result<HttpReply>,
        statuses: &[u16],
        code: Option<&str>,
        mentions: &[&str],
    ) -> Option<HttpReply> {
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                self.failures.push(format!("{what}: no answer: {e:#}"));
                return None;
            }
        };
        if let Err(e) = reply.expect_client_error(what) {
            self.failures.push(format!("{e:#}"));
            return Some(reply);
        }
        if !statuses.is_empty() && !statuses.contains(&reply.status) {
            self.failures.push(format!(
                "{what}: expected HTTP {statuses:?}, got {}: {}",
                reply.status,
                short(&reply.text())
            ));
        }
        let got_code = reply.error_code().unwrap_or_default();
        if let Some(c) = code
            && got_code != c
        {
            self.failures.push(format!(
                "{what}: expected error code {c}, got {got_code}: {}",
                short(&reply.text())
            ));
        }
        let message = reply.error_message().unwrap_or_default();
        for m in mentions {
            if !message.contains(m) {
                self.failures.push(format!(
                    "{what}: the error message should name {m:?}: {message:?}"
                ));
            }
        }
        Some(reply)
    }

    /// Post a valid event in structured mode; it must be accepted.
    async fn post_good(&mut self, ev: &SentEvent) -> anyhow::Result<()> {
        self.ledger.record_sent(ev);
        let reply = self.node.post_structured(BUS, &ev.to_json()).await?;
        reply.expect_status(200, &format!("posting valid event {}", ev.id))?;
        self.ledger.record_acked(&ev.id);
        Ok(())
    }

    /// A sent event that must never be delivered.
    fn rejected(&mut self, ev: &SentEvent) {
        self.ledger.record_sent(ev);
        self.ledger.record_rejected(&ev.id);
    }

    /// Every accepted event delivered intact, nothing rejected or unknown
    /// delivered, node healthy, no panic; then report all failures.
    async fn finish(self) -> anyhow::Result<()> {
        let Fixture {
            mut node,
            sink,
            ledger,
            mut failures,
        } = self;
        if let Err(e) = sink
            .wait_for_ids(ledger.acked().iter(), Duration::from_secs(15))
            .await
        {
            failures.push(format!("accepted events not delivered: {e:#}"));
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        let report = check_conservation(&ledger, &sink.events());
        if !report.is_ok() {
            failures.push(format!("conservation: {report}"));
        }
        match node.client().healthz().await {
            Ok(200) => {}
            other => failures.push(format!("/healthz afterwards: {other:?}")),
        }
        if let Err(e) = ensure_no_panic(&node) {
            failures.push(format!("{e:#}"));
        }
        if failures.is_empty() {
            Ok(())
        } else {
            node.keep_files();
            anyhow::bail!(
                "{} problems (node log: {}):\n- {}",
                failures.len(),
                node.stderr_path().display(),
                failures.join("\n- ")
            )
        }
    }
}

fn good(id: &str) -> SentEvent {
    SentEvent::new(
        id,
        SOURCE,
        "chaos.bad.ok",
        Payload::Json(json!({"id": id, "ok": true})),
    )
}

fn events_path(bus: &str) -> String {
    format!("/v1/buses/{bus}/events")
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_incomplete_events_are_rejected_by_name() -> anyhow::Result<()> {
    bounded(LIMIT, async {
        let mut f = fixture().await?;
        let c = f.node.client();
        let path = events_path(BUS);

        let r = c
            .send_raw(
                Method::POST,
                &path,
                Some("application/cloudevents+json"),
                br#"{"specversion": "1.0", "id": "x", "source": "#.to_vec(),
            )
            .await;
        f.expect_error("truncated JSON", r, &[400], None, &[]);
        let r = c
            .send_raw(
                Method::POST,
                &path,
                Some("application/cloudevents+json"),
                b"[1, 2]".to_vec(),
            )
            .await;
        f.expect_error("structured body that is an array", r, &[400], None, &[]);
        let r = c
            .send_raw(
                Method::POST,
                &path,
                Some("application/cloudevents+json"),
                Vec::new(),
            )
            .await;
        f.expect_error("empty structured body", r, &[400], None, &[]);

        for attr in ["id", "source", "specversion", "type"] {
            let ev = good(&format!("missing-{attr}"));
            let mut v = ev.to_json();
            if let Some(m) = v.as_object_mut() {
                m.remove(attr);
            }
            f.rejected(&ev);
            let r = c.post_structured(BUS, &v).await;
            f.expect_error(
                &format!("structured event without {attr}"),
                r,
                &[400],
                Some("MissingAttribute"),
                &[attr],
            );

            let ev = good(&format!("bin-missing-{attr}"));
            let headers: Vec<(String, String)> = ev
                .binary_headers()
                .into_iter()
                .filter(|(k, _)| k != &format!("ce-{attr}"))
                .collect();
            f.rejected(&ev);
            let r = c
                .post_binary(BUS, &headers, Some("application/json"), b"{}".to_vec())
                .await;
            // Without ce-specversion the request is in no CloudEvents mode
            // at all, so 415 naming the missing header is fine too.
            let (statuses, code): (&[u16], _) = if attr == "specversion" {
                (&[400, 415], None)
            } else {
                (&[400], Some("MissingAttribute"))
            };
            f.expect_error(
                &format!("binary event without ce-{attr}"),
                r,
                statuses,
                code,
                &[attr],
            );
        }

        let ev = good("old-specversion");
        let mut v = ev.to_json();
        v["specversion"] = json!("0.3");
        f.rejected(&ev);
        let r = c.post_structured(BUS, &v).await;
        f.expect_error(
            "specversion 0.3",
            r,
            &[400],
            Some("UnsupportedSpecVersion"),
            &["specversion"],
        );
        let ev = good("bin-old-specversion");
        let mut headers = ev.binary_headers();
        for h in &mut headers {
            if h.0 == "ce-specversion" {
                h.1 = "0.3".into();
            }
        }
        f.rejected(&ev);
        let r = c
            .post_binary(BUS, &headers, Some("text/plain"), b"hi".to_vec())
            .await;
        f.expect_error(
            "binary specversion 0.3",
            r,
            &[400],
            Some("UnsupportedSpecVersion"),
            &["specversion"],
        );

        for (attr, bad) in [("id", json!("")), ("source", json!("")), ("type", json!(7))] {
            let ev = good(&format!("invalid-{attr}"));
            let mut v = ev.to_json();
            v[attr] = bad.clone();
            f.rejected(&ev);
            let r = c.post_structured(BUS, &v).await;
            f.expect_error(&format!("{attr} = {bad}"), r, &[400], None, &[attr]);
        }

        // Valid events still go through, in every mode (charset parameter included).
        f.post_good(&good("after-errors-1")).await?;
        let ev = good("after-errors-2");
        f.ledger.record_sent(&ev);
        let r = c
            .send_raw(
                Method::POST,
                &path,
                Some("application/cloudevents+json; charset=utf-8"),
                serde_json::to_vec(&ev.to_json())?,
            )
            .await?;
        r.expect_status(200, "structured with a charset parameter")?;
        f.ledger.record_acked(&ev.id);
        let ev = SentEvent::new(
            "after-errors-3",
            SOURCE,
            "t",
            Payload::Binary(vec![0, 159, 255]),
        );
        f.ledger.record_sent(&ev);
        let r = c
            .post_binary(
                BUS,
                &ev.binary_headers(),
                Some(ev.payload.content_type()),
                ev.payload.bytes(),
            )
            .await?;
        r.expect_status(200, "binary mode")?;
        f.ledger.record_acked(&ev.id);
        f.finish().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_and_media_types_are_enforced() -> anyhow::Result<()> {
    bounded(LIMIT, async {
        let mut f = fixture().await?;
        let c = f.node.client();
        let path = events_path(BUS);

        // A request over max_request_bytes.
        let big: Vec<SentEvent> = (0..16)
            .map(|i| {
                SentEvent::new(
                    format!("big-req-{i}"),
                    SOURCE,
                    "t",
                    Payload::Text("x".repeat(MAX_EVENT_BYTES / 2 + 1000)),
                )
            })
            .collect();
        let body: Vec<Value> = big.iter().map(SentEvent::to_json).collect();
        anyhow::ensure!(serde_json::to_vec(&body)?.len() > MAX_REQUEST_BYTES);
        for ev in &big {
            f.rejected(ev);
        }
        let r = c.post_batch(BUS, &body).await;
        f.expect_error(
            "batch over max_request_bytes",
            r,
            &[413],
            Some("PayloadTooLarge"),
            &[],
        );
        let r = c
            .send_raw(
                Method::POST,
                &path,
                Some("application/octet-stream"),
                vec![b'z'; MAX_REQUEST_BYTES * 3],
            )
            .await;
        f.expect_error(
            "binary body over max_request_bytes",
            r,
            &[413],
            Some("PayloadTooLarge"),
            &[],
        );

        // One event over max_event_bytes, in both single modes: 413 or 400
        // (a per-event code such as EventTooLarge), naming the limit.
        let ev = SentEvent::new(
            "big-event",
            SOURCE,
            "t",
            Payload::Text("y".repeat(MAX_EVENT_BYTES + 100)),
        );
        f.rejected(&ev);
        let r = c.post_structured(BUS, &ev.to_json()).await;
        f.expect_error(
            "structured event over max_event_bytes",
            r,
            &[413, 400],
            None,
            &["8192"],
        );
        let ev = SentEvent::new(
            "big-bin-event",
            SOURCE,
            "t",
            Payload::Binary(vec![7; MAX_EVENT_BYTES + 100]),
        );
        f.rejected(&ev);
        let r = c
            .post_binary(
                BUS,
                &ev.binary_headers(),
                Some(ev.payload.content_type()),
                ev.payload.bytes(),
            )
            .await;
        f.expect_error(
            "binary event over max_event_bytes",
            r,
            &[413, 400],
            None,
            &["8192"],
        );

        // A batch with one oversized entry: per-entry error (207), or the
        // whole request refused; never the big one stored.
        let mixed = [
            good("mixed-size-ok-1"),
            SentEvent::new(
                "mixed-size-big",
                SOURCE,
                "t",
                Payload::Text("w".repeat(MAX_EVENT_BYTES + 10)),
            ),
            good("mixed-size-ok-2"),
        ];
        for ev in &mixed {
            f.ledger.record_sent(ev);
        }
        let body: Vec<Value> = mixed.iter().map(SentEvent::to_json).collect();
        match c.post_batch(BUS, &body).await {
            Ok(r) if r.status == 207 => {
                let out = entry_outcomes(&r);
                let ok = out.len() == 3
                    && out[0].1 == "accepted"
                    && out[1].1 == "error"
                    && out[2].1 == "accepted";
                if !ok {
                    f.failures
                        .push(format!("batch with one oversized entry: {}", r.text()));
                }
                f.ledger.record_acked("mixed-size-ok-1");
                f.ledger.record_acked("mixed-size-ok-2");
                f.ledger.record_rejected("mixed-size-big");
            }
            r => {
                for ev in &mixed {
                    f.ledger.record_rejected(&ev.id);
                }
                f.expect_error("batch with one oversized entry", r, &[413, 400], None, &[]);
            }
        }

        // More than max_batch_events.
        let many: Vec<SentEvent> = (0..=MAX_BATCH_EVENTS)
            .map(|i| good(&format!("too-many-{i}")))
            .collect();
        for ev in &many {
            f.rejected(ev);
        }
        let body: Vec<Value> = many.iter().map(SentEvent::to_json).collect();
        let r = c.post_batch(BUS, &body).await;
        f.expect_error("batch over max_batch_events", r, &[400, 413], None, &[]);

        // Structured and batch modes in formats other than JSON.
        let ev = good("xml");
        f.rejected(&ev);
        let r = c
            .send_raw(
                Method::POST,
                &path,
                Some("application/cloudevents+xml"),
                b"<event><id>xml</id></event>".to_vec(),
            )
            .await;
        f.expect_error(
            "application/cloudevents+xml",
            r,
            &[415],
            Some("UnsupportedMediaType"),
            &[],
        );
        let r = c
            .send_raw(
                Method::POST,
                &path,
                Some("application/cloudevents-batch+protobuf"),
                vec![0x0a, 0x03, 1, 2, 3],
            )
            .await;
        f.expect_error(
            "application/cloudevents-batch+protobuf",
            r,
            &[415],
            Some("UnsupportedMediaType"),
            &[],
        );

        f.post_good(&good("limits-after")).await?;
        f.finish().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_rules_and_unknown_buses_are_named() -> anyhow::Result<()> {
    bounded(LIMIT, async {
        let mut f = fixture().await?;
        let c = f.node.client();
        let target = http_target("t", &f.sink.url("/never"), retry(3, 50, 100));

        let cases = [
            (
                json!({"data": {"amount": [{"numeric": [">", "abc"]}]}}),
                "data.amount",
            ),
            (json!({"type": "order.created"}), "type"),
            (json!({"source": [{"prefix": 5}]}), "source"),
            (json!({"detail": {"ip": [{"cidr": "not-a-cidr"}]}}), "ip"),
        ];
        for (pattern, path) in &cases {
            let r = c
                .put_rule(
                    BUS,
                    "bad-pattern",
                    &json!({"pattern": pattern, "targets": [target]}),
                )
                .await;
            f.expect_error(
                &format!("rule with pattern {pattern}"),
                r,
                &[400],
                Some("InvalidPattern"),
                &[path],
            );
            let r = c
                .send_json(
                    Method::POST,
                    "/v1/patterns:test",
                    &json!({"pattern": pattern, "event": event("e", "s", "t", json!({}))}),
                )
                .await;
            f.expect_error(
                &format!("patterns:test with {pattern}"),
                r,
                &[400],
                Some("InvalidPattern"),
                &[path],
            );
        }

        let mut t = target.clone();
        t["endpoint"] = json!("ftp://127.0.0.1/x");
        let r = c
            .put_rule(
                BUS,
                "bad-endpoint",
                &json!({"pattern": {"source": ["s"]}, "targets": [t]}),
            )
            .await;
        f.expect_error("ftp endpoint", r, &[400], None, &["endpoint"]);
        let r = c
            .put_rule(BUS, "no-targets", &json!({"pattern": {"source": ["s"]}}))
            .await;
        f.expect_error("rule without targets", r, &[400], None, &["targets"]);
        let mut t = target.clone();
        t["retry"] = json!({"maxAttempts": 0});
        let r = c
            .put_rule(
                BUS,
                "zero-attempts",
                &json!({"pattern": {"source": ["s"]}, "targets": [t]}),
            )
            .await;
        f.expect_error("maxAttempts 0", r, &[400], None, &["maxAttempts"]);

        let r = c
            .post_structured("no-such-bus", &good("nobus").to_json())
            .await;
        f.expect_error("event to unknown bus", r, &[404], Some("BusNotFound"), &[]);
        let r = c
            .put_rule(
                "no-such-bus",
                "r",
                &json!({"pattern": {"source": ["s"]}, "targets": [target]}),
            )
            .await;
        f.expect_error("rule on unknown bus", r, &[404], Some("BusNotFound"), &[]);
        let r = c.get_json("/v1/buses/no-such-bus").await;
        f.expect_error("GET unknown bus", r, &[404], Some("BusNotFound"), &[]);
        let r = c.get_rule(BUS, "no-such-rule").await;
        f.expect_error("GET unknown rule", r, &[404], None, &[]);
        let r = c.put_bus("bad%20name", None).await;
        f.expect_error("bus name with a space", r, &[400], None, &[]);
        let r = c.put_bus(&"x".repeat(65), None).await;
        f.expect_error("bus name of 65 characters", r, &[400], None, &[]);
        let r = c.delete(&format!("/v1/buses/{BUS}")).await;
        f.expect_error(
            "DELETE a bus that has rules",
            r,
            &[409],
            Some("BusHasRules"),
            &[],
        );

        // Nothing invalid was stored: only the fixture's rule exists.
        let rules = c.get_json(&format!("/v1/buses/{BUS}/rules")).await?;
        rules.expect_status(200, "GET rules")?;
        let names: Vec<String> = rules
            .json()
            .and_then(|v| v.get("rules").and_then(Value::as_array).cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.get("name").and_then(Value::as_str).map(str::to_string))
            .collect();
        if rules
            .json()
            .and_then(|v| v.get("rules").and_then(Value::as_array).map(Vec::len))
            != Some(1)
        {
            f.failures.push(format!(
                "expected only rule sink, got {}",
                short(&rules.text())
            ));
        } else if !names.is_empty() && names != ["sink"] {
            f.failures
                .push(format!("expected only rule sink, got {names:?}"));
        }
        f.post_good(&good("rules-after")).await?;
        f.finish().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_batch_stores_and_delivers_only_good_entries() -> anyhow::Result<()> {
    bounded(LIMIT, async {
        let mut f = fixture().await?;
        let c = f.node.client();
        let good1 = good("batch-good-1");
        let good2 = SentEvent::new("batch-good-2", SOURCE, "t", Payload::Binary(vec![1, 2, 3, 0, 255]));
        let good3 = SentEvent::new("batch-good-3", SOURCE, "t", Payload::Text("trois".into()));
        let no_id = good("batch-no-id");
        let old = good("batch-old-specversion");
        let mut no_id_json = no_id.to_json();
        if let Some(m) = no_id_json.as_object_mut() {
            m.remove("id");
        }
        let mut old_json = old.to_json();
        old_json["specversion"] = json!("0.3");
        for ev in [&good1, &good2, &good3] {
            f.ledger.record_sent(ev);
        }
        f.rejected(&no_id);
        f.rejected(&old);
        let body = vec![
            good1.to_json(),
            no_id_json,
            good2.to_json(),
            old_json,
            json!("not an event"),
            good3.to_json(),
        ];
        let r = c.post_batch(BUS, &body).await?;
        if r.status != 207 {
            f.failures
                .push(format!("mixed batch: expected 207, got {}: {}", r.status, short(&r.text())));
        }
        let v = r.json().unwrap_or(Value::Null);
        if v.get("accepted").and_then(Value::as_u64) != Some(3)
            || v.get("failed").and_then(Value::as_u64) != Some(3)
        {
            f.failures
                .push(format!("mixed batch: expected accepted 3 failed 3: {}", short(&r.text())));
        }
        let out = entry_outcomes(&r);
        let want = [
            (Some("batch-good-1"), "accepted", None),
            (None, "error", Some("MissingAttribute")),
            (Some("batch-good-2"), "accepted", None),
            (Some("batch-old-specversion"), "error", Some("UnsupportedSpecVersion")),
            (None, "error", None),
            (Some("batch-good-3"), "accepted", None),
        ];
        if out.len() != want.len() {
            f.failures.push(format!("mixed batch: {} results for 6 entries: {}", out.len(), r.text()));
        }
        for (i, ((id, status, code), (wid, wstatus, wcode))) in out.iter().zip(want).enumerate() {
            let id_ok = wid.is_none() || id.as_deref() == wid;
            let code_ok = match wcode {
                Some(c) => code.as_deref() == Some(c),
                None => wstatus != "error" || code.as_deref().is_some_and(|c| !c.is_empty()),
            };
            if !id_ok || status != wstatus || !code_ok {
                f.failures.push(format!(
                    "mixed batch result {i}: got ({id:?}, {status}, {code:?}), expected ({wid:?}, {wstatus}, {wcode:?})"
                ));
            }
        }
        for ev in [&good1, &good2, &good3] {
            f.ledger.record_acked(&ev.id);
        }

        // Posting the same batch again: the good ones are duplicates.
        let r = c.post_batch(BUS, &body).await?;
        let dups = entry_outcomes(&r)
            .iter()
            .filter(|(_, s, _)| s == "duplicate")
            .count();
        if dups != 3 {
            f.failures.push(format!("re-posted mixed batch: expected 3 duplicates: {}", short(&r.text())));
        }

        // Nothing good at all: 400 with an error and per-entry results.
        let r = c
            .post_batch(BUS, &[json!(1), json!({"specversion": "1.0"}), json!([])])
            .await;
        if let Some(r) = f.expect_error("batch of only bad entries", r, &[400], None, &[])
            && entry_outcomes(&r).len() != 3
        {
            f.failures
                .push(format!("batch of only bad entries: expected 3 results: {}", short(&r.text())));
        }
        f.finish().await
    })
    .await
}

/// One garbage request.
struct Garbage {
    what: String,
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Bytes that can never parse as JSON (the first byte cannot start a value).
fn garbage_bytes(rng: &mut StdRng) -> Vec<u8> {
    let first = *b"#}]:,\x00\x01\xff<'".choose(rng).unwrap_or(&b'#');
    let len = rng.random_range(0..3000usize);
    let mut v = vec![first];
    v.extend((0..len).map(|_| rng.random::<u8>()));
    v
}

/// A strict prefix of a JSON object: never valid JSON.
fn truncated(rng: &mut StdRng, doc: &Value) -> Vec<u8> {
    let bytes = serde_json::to_vec(doc).unwrap_or_else(|_| b"{}".to_vec());
    let cut = rng.random_range(1..bytes.len().max(2));
    bytes[..cut.min(bytes.len() - 1).max(1)].to_vec()
}

fn deep_nesting(rng: &mut StdRng) -> Vec<u8> {
    let d = rng.random_range(200..5000usize);
    let mut v = vec![b'['; d];
    v.extend(std::iter::repeat_n(b']', d));
    v
}

/// Non-JSON-shaped or malformed-number documents, for any endpoint.
fn odd_json(rng: &mut StdRng) -> Vec<u8> {
    let options: [&[u8]; 9] = [
        b"42",
        b"\"a string\"",
        b"[1, 2, 3]",
        b"true",
        b"{\"id\": 1e999999}",
        b"{\"id\": \"\xff\xfe\"}",
        b"{\"a\": 1,}",
        b"{\"a\" 1}",
        b"{\"a\": \"\\uZZZZ\"}",
    ];
    options.choose(rng).map_or_else(Vec::new, |o| o.to_vec())
}

fn generic_garbage(rng: &mut StdRng, valid: &Value) -> (String, Vec<u8>) {
    match rng.random_range(0..4u8) {
        0 => ("random bytes".into(), garbage_bytes(rng)),
        1 => ("truncated JSON".into(), truncated(rng, valid)),
        2 => ("deeply nested arrays".into(), deep_nesting(rng)),
        _ => ("odd JSON".into(), odd_json(rng)),
    }
}

/// A structurally valid event with exactly one thing broken.
fn broken_event(rng: &mut StdRng, id: &str) -> (String, Value) {
    let mut v = event(id, GARBAGE_SOURCE, "chaos.garbage", json!({"n": 1}));
    let breaks: [(&str, Value); 17] = [
        ("id", json!(5)),
        ("id", json!("")),
        ("id", json!({"a": 1})),
        ("id", Value::Null),
        ("source", json!("")),
        ("source", json!(5)),
        ("specversion", json!(1.0)),
        ("specversion", json!("1.1")),
        ("type", json!("")),
        ("type", json!([])),
        ("time", json!("yesterday")),
        ("time", json!(5)),
        ("Bad_Extension", json!("x")),
        ("data_base64", json!("***not base64***")),
        ("datacontenttype", json!(5)),
        ("subject", json!(5)),
        ("specversion", Value::Null),
    ];
    let (k, bad) = breaks.choose(rng).cloned().unwrap_or(("id", json!(5)));
    if let Some(m) = v.as_object_mut() {
        if k == "data_base64" {
            m.remove("data");
        }
        m.insert(k.to_string(), bad.clone());
    }
    (format!("event with {k} = {bad}"), v)
}

fn valid_rule(endpoint: &str) -> Value {
    json!({"pattern": {"source": [GARBAGE_SOURCE]}, "targets": [http_target("t", endpoint, retry(3, 50, 100))]})
}

/// A rule with exactly one thing broken.
fn broken_rule(rng: &mut StdRng, endpoint: &str) -> (String, Value) {
    let mut r = valid_rule(endpoint);
    let target_breaks: [(&str, Value); 12] = [
        ("type", json!("carrier-pigeon")),
        ("type", json!(5)),
        ("endpoint", json!("not a url")),
        ("endpoint", json!("ftp://127.0.0.1/x")),
        ("endpoint", json!(80)),
        ("id", json!("bad id!")),
        ("id", json!("")),
        ("retry", json!({"maxAttempts": 0})),
        ("retry", json!({"maxAttempts": -1})),
        ("retry", json!({"initialBackoffMs": 0})),
        ("deadLetter", json!({"type": "moon"})),
        ("headers", json!({"bad header\n": "x"})),
    ];
    let rule_breaks: [(&str, Value); 8] = [
        ("pattern", json!(5)),
        ("pattern", json!({"source": "not-an-array"})),
        ("pattern", json!({"source": [{"bogus-operator": 1}]})),
        ("pattern", json!({"data": {"n": [{"numeric": ["<"]}]}})),
        ("targets", json!("x")),
        ("targets", json!([])),
        ("targets", json!([{"id": "t"}])),
        ("deadLetter", json!({"type": "bus", "bus": "bad name!"})),
    ];
    if rng.random_bool(0.5) {
        let (k, bad) = target_breaks
            .choose(rng)
            .cloned()
            .unwrap_or(("type", json!(5)));
        r["targets"][0][k] = bad.clone();
        (format!("rule with targets[0].{k} = {bad}"), r)
    } else {
        let (k, bad) = rule_breaks
            .choose(rng)
            .cloned()
            .unwrap_or(("pattern", json!(5)));
        r[k] = bad.clone();
        (format!("rule with {k} = {bad}"), r)
    }
}

fn invalid_name(rng: &mut StdRng) -> String {
    let options = [
        "bad%20name",
        "%F0%9F%A6%80",
        "semi%3Bcolon",
        "ex%21cl",
        "%00",
        "q%3Fx",
    ];
    if rng.random_bool(0.2) {
        "n".repeat(65)
    } else {
        options.choose(rng).map_or("bad%20name", |s| *s).to_string()
    }
}

fn garbage_cases(seed: u64, n: usize, endpoint: &str) -> Vec<Garbage> {
    let mut rng = StdRng::seed_from_u64(seed);
    let ce_json = "application/cloudevents+json";
    let ce_batch = "application/cloudevents-batch+json";
    let events = events_path(BUS);
    let valid_event = event("valid", GARBAGE_SOURCE, "chaos.garbage", json!({"n": 1}));
    let mut cases = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("garbage-{i}");
        let json_ct = vec![("content-type".to_string(), "application/json".to_string())];
        let case = match i % 9 {
            0 => {
                let (what, body) = if rng.random_bool(0.5) {
                    generic_garbage(&mut rng, &valid_event)
                } else {
                    let (w, v) = broken_event(&mut rng, &id);
                    (w, serde_json::to_vec(&v).unwrap_or_default())
                };
                Garbage {
                    what: format!("structured: {what}"),
                    method: Method::POST,
                    path: events.clone(),
                    headers: vec![("content-type".into(), ce_json.into())],
                    body,
                }
            }
            1 => {
                let (what, body) = if rng.random_bool(0.4) {
                    generic_garbage(&mut rng, &json!([valid_event]))
                } else {
                    let k = rng.random_range(1..5usize);
                    let (whats, evs): (Vec<String>, Vec<Value>) = (0..k)
                        .map(|j| broken_event(&mut rng, &format!("{id}-{j}")))
                        .unzip();
                    (
                        whats.join(", "),
                        serde_json::to_vec(&evs).unwrap_or_default(),
                    )
                };
                Garbage {
                    what: format!("batch: {what}"),
                    method: Method::POST,
                    path: events.clone(),
                    headers: vec![("content-type".into(), ce_batch.into())],
                    body,
                }
            }
            2 => {
                // Binary mode with one thing wrong in the headers or body.
                let mut headers = vec![
                    ("ce-specversion".to_string(), "1.0".to_string()),
                    ("ce-id".to_string(), id.clone()),
                    ("ce-source".to_string(), GARBAGE_SOURCE.to_string()),
                    ("ce-type".to_string(), "chaos.garbage".to_string()),
                ];
                let mut body: Vec<u8> = (0..rng.random_range(0..500))
                    .map(|_| rng.random())
                    .collect();
                let mut ct = ["application/octet-stream", "text/plain", "image/png"]
                    .choose(&mut rng)
                    .map(|s| (*s).to_string());
                let what = match rng.random_range(0..6u8) {
                    0 => {
                        let k = rng.random_range(0..4usize);
                        let gone = headers.remove(k);
                        format!("missing {}", gone.0)
                    }
                    1 => {
                        headers[0].1 = "0.3".into();
                        "ce-specversion 0.3".into()
                    }
                    2 => {
                        headers[1].1 = "%FF%FE%FD".into();
                        "ce-id not UTF-8 after decoding".into()
                    }
                    3 => {
                        headers.push(("ce-time".into(), "not-a-time".into()));
                        "bad ce-time".into()
                    }
                    4 => {
                        headers.push(("ce-bad_ext".into(), "x".into()));
                        "invalid extension name".into()
                    }
                    _ => {
                        ct = Some("application/json".into());
                        body = garbage_bytes(&mut rng);
                        "application/json data that is not JSON".into()
                    }
                };
                if let Some(c) = ct {
                    headers.push(("content-type".into(), c));
                }
                Garbage {
                    what: format!("binary: {what}"),
                    method: Method::POST,
                    path: events.clone(),
                    headers,
                    body,
                }
            }
            3 | 4 => {
                let (what, body) = if rng.random_bool(0.3) {
                    generic_garbage(&mut rng, &valid_rule(endpoint))
                } else {
                    let (w, v) = broken_rule(&mut rng, endpoint);
                    (w, serde_json::to_vec(&v).unwrap_or_default())
                };
                Garbage {
                    what: format!("PUT rule: {what}"),
                    method: Method::PUT,
                    path: format!("/v1/buses/{BUS}/rules/g-{i}"),
                    headers: json_ct,
                    body,
                }
            }
            5 => {
                let name = invalid_name(&mut rng);
                Garbage {
                    what: format!("PUT rule named {name}"),
                    method: Method::PUT,
                    path: format!("/v1/buses/{BUS}/rules/{name}"),
                    headers: json_ct,
                    body: serde_json::to_vec(&valid_rule(endpoint)).unwrap_or_default(),
                }
            }
            6 => {
                let (what, path, body) = match rng.random_range(0..4u8) {
                    0 => {
                        let name = invalid_name(&mut rng);
                        (
                            format!("named {name}"),
                            format!("/v1/buses/{name}"),
                            Vec::new(),
                        )
                    }
                    1 => (
                        "description 5".into(),
                        format!("/v1/buses/gb-{i}"),
                        br#"{"description": 5}"#.to_vec(),
                    ),
                    2 => (
                        "random bytes".into(),
                        format!("/v1/buses/gb-{i}"),
                        garbage_bytes(&mut rng),
                    ),
                    _ => (
                        "truncated JSON".into(),
                        format!("/v1/buses/gb-{i}"),
                        truncated(&mut rng, &json!({"description": "a bus"})),
                    ),
                };
                Garbage {
                    what: format!("PUT bus: {what}"),
                    method: Method::PUT,
                    path,
                    headers: json_ct,
                    body,
                }
            }
            7 => {
                let options = [
                    json!({}),
                    json!({"pattern": 5, "event": valid_event}),
                    json!({"pattern": {"source": [{"bogus": 1}]}, "event": valid_event}),
                    json!({"pattern": {"source": "x"}, "event": valid_event}),
                    json!({"event": valid_event}),
                    json!({"pattern": {"source": ["x"]}}),
                    json!({"pattern": {"source": ["x"]}, "event": 5}),
                ];
                let (what, body) = if rng.random_bool(0.4) {
                    generic_garbage(&mut rng, &options[2])
                } else {
                    let v = options.choose(&mut rng).cloned().unwrap_or_default();
                    (v.to_string(), serde_json::to_vec(&v).unwrap_or_default())
                };
                Garbage {
                    what: format!("patterns:test: {}", short(&what)),
                    method: Method::POST,
                    path: "/v1/patterns:test".into(),
                    headers: json_ct,
                    body,
                }
            }
            _ => {
                let options = [
                    json!({}),
                    json!({"transform": 5, "event": valid_event}),
                    json!({"transform": {"form": "NOPE"}, "event": valid_event}),
                    json!({"transform": {"form": "JSONPATH", "value": "$$[[["}, "event": valid_event}),
                    json!({"transform": {"inputPath": 5}, "event": valid_event}),
                    json!({"transform": {"form": "ORIGINAL"}}),
                ];
                let (what, body) = if rng.random_bool(0.4) {
                    generic_garbage(&mut rng, &options[2])
                } else {
                    let v = options.choose(&mut rng).cloned().unwrap_or_default();
                    (v.to_string(), serde_json::to_vec(&v).unwrap_or_default())
                };
                Garbage {
                    what: format!("transforms:test: {}", short(&what)),
                    method: Method::POST,
                    path: "/v1/transforms:test".into(),
                    headers: json_ct,
                    body,
                }
            }
        };
        cases.push(case);
    }
    cases
}

#[tokio::test(flavor = "multi_thread")]
async fn random_garbage_gets_4xx_and_the_node_stays_healthy() -> anyhow::Result<()> {
    bounded(LIMIT, async {
        let mut f = fixture().await?;
        let c = f.node.client();
        let before: Vec<SentEvent> = (0..20)
            .map(|i| {
                let id = format!("before-garbage-{i}");
                SentEvent::new(
                    id.clone(),
                    SOURCE,
                    "t",
                    Payload::random(&mut StdRng::seed_from_u64(i), &id),
                )
            })
            .collect();
        for ev in &before {
            f.post_good(ev).await?;
        }

        let cases = garbage_cases(0x00ba_d1d3, 360, &f.sink.url("/garbage"));
        let answers: Vec<(String, anyhow::Result<HttpReply>)> = futures::stream::iter(cases)
            .map(|g| {
                let c = c.clone();
                async move {
                    let what = format!("{} {} ({})", g.method, g.path, g.what);
                    let r = c.request(g.method, &g.path, &g.headers, Some(g.body)).await;
                    (what, r)
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut bad = 0;
        for (what, r) in answers {
            let n = f.failures.len();
            f.expect_error(&what, r, &[], None, &[]);
            if f.failures.len() > n {
                bad += 1;
            }
        }
        eprintln!("{bad} of 360 garbage requests were not answered with a proper 4xx");

        // The node is healthy and its state is what it was.
        for path in ["/healthz", "/readyz"] {
            let r = c
                .get_json(path)
                .await
                .with_context(|| format!("{path} after garbage"))?;
            r.expect_status(200, &format!("{path} after garbage"))?;
        }
        anyhow::ensure!(f.node.is_running(), "strait exited during the garbage run");
        let buses = c.get_json("/v1/buses").await?;
        let n_buses = buses
            .json()
            .and_then(|v| v.get("buses").and_then(Value::as_array).map(Vec::len));
        if n_buses != Some(1) {
            f.failures
                .push(format!("garbage created buses: {}", short(&buses.text())));
        }
        let rules = c.get_json(&format!("/v1/buses/{BUS}/rules")).await?;
        let n_rules = rules
            .json()
            .and_then(|v| v.get("rules").and_then(Value::as_array).map(Vec::len));
        if n_rules != Some(1) {
            f.failures
                .push(format!("garbage created rules: {}", short(&rules.text())));
        }
        let r = c.get_rule(BUS, "sink").await?;
        r.expect_status(200, "GET rule sink after garbage")?;

        for i in 0..5 {
            f.post_good(&good(&format!("after-garbage-{i}"))).await?;
        }
        f.finish().await
    })
    .await
}
