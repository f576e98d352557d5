//! NATS sources and targets on a real node against a real `nats-server`
//! with JetStream (started here, on a free loopback port; the test fails
//! when `nats-server` is not installed: `scripts/setup-test-deps` installs
//! the Debian package).
//!
//! One server and one node (restarted on the same data directory) for the
//! whole file:
//! - a JetStream source reads binary, structured and plain messages into a
//!   bus; a rule delivers them to a JetStream target: the ids and data come
//!   out as they went in, a plain message with the id `<stream>:<seq>`;
//!   an invalid CloudEvent is dead-lettered to the source's dead-letter bus
//!   (reason, payload unchanged) and the source moves on;
//! - a core NATS source into a core NATS target;
//! - a JetStream target without a stream (no responders) is retried, then
//!   dead-lettered with its reason;
//! - the node killed (-9) between commit and ack: the messages come back
//!   after the ack wait, are found duplicates (none committed twice, none
//!   lost) and acknowledged;
//! - the broker killed (-9) and restarted: the source and the target
//!   reconnect and go on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_strait");

/// A child process killed when dropped.
struct Proc(Child);

impl Proc {
    fn kill_9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_9();
    }
}

fn port() -> u16 {
    strait_federation::transport::free_loopback_port().expect("free port")
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(4000);
    text.get(start..).unwrap_or_default().to_string()
}

fn nats_server_binary() -> PathBuf {
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
    {
        let p = dir.join("nats-server");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "nats-server is not installed (nor on PATH, nor in /usr/sbin): run scripts/setup-test-deps \
         (Debian package nats-server); this test needs a real NATS peer"
    );
}

/// `nats-server -js` on a free loopback port, and a client of it.
async fn start_nats(dir: &Path, port: u16) -> (Proc, String, async_nats::Client) {
    let log = dir.join("nats.log");
    let out = std::fs::File::create(&log).expect("nats log");
    let err = out.try_clone().expect("nats log");
    let child = Command::new(nats_server_binary())
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
        .arg("-sd")
        .arg(dir.join("jetstream"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn nats-server");
    let mut proc = Proc(child);
    let url = format!("nats://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = proc.0.try_wait() {
            panic!("nats-server exited with {status}:\n{}", tail(&log));
        }
        if let Ok(c) = async_nats::connect(url.as_str()).await {
            return (proc, url, c);
        }
        assert!(
            Instant::now() < deadline,
            "nats-server did not answer within 20 s:\n{}",
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `--dev` node on `dir/data`, with extra environment.
async fn start_node(dir: &Path, env: &[(&str, &str)]) -> (Proc, String) {
    let port = port();
    let log = dir.join("node.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("node log");
    let child = Command::new(BIN)
        .arg("serve")
        .arg("--dev")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--http", &format!("127.0.0.1:{port}")])
        .envs(env.iter().copied())
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
    let (s, v) = call(reqwest::Method::PUT, format!("{node}{path}"), Some(body)).await;
    assert_eq!(s, 200, "PUT {path}: {v}");
    (s, v)
}

/// Poll `check` until it gives a value or `timeout` passes (panics, naming
/// `what`).
async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn source_status(node: &str, name: &str) -> Value {
    get(node, &format!("/v1/sources/{name}")).await.1["status"].clone()
}

fn headers(pairs: &[(&str, &str)]) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, *v);
    }
    h
}

/// A message read back: its `ce-*` headers (prefix dropped) and payload.
#[derive(Debug)]
struct Got {
    attrs: serde_json::Map<String, Value>,
    payload: Vec<u8>,
}

fn got(m: &async_nats::Message) -> Got {
    let mut attrs = serde_json::Map::new();
    for (k, vs) in m.headers.iter().flat_map(|h| h.iter()) {
        let k: &str = k.as_ref();
        if let (Some(a), Some(v)) = (k.strip_prefix("ce-"), vs.first()) {
            attrs.insert(a.to_string(), json!(v.as_str()));
        }
        if k == "Nats-Msg-Id" {
            attrs.insert("natsmsgid".into(), json!(vs.first().map(|v| v.as_str())));
        }
    }
    Got {
        attrs,
        payload: m.payload.to_vec(),
    }
}

/// Every message in stream `OUT` from sequence `from` (a fresh ephemeral
/// consumer each time), until `n` are there.
async fn read_out(js: &jetstream::Context, from: u64, n: usize) -> Vec<Got> {
    wait_for(
        &format!("{n} messages in OUT from {from}"),
        Duration::from_secs(30),
        async || {
            let s = js.get_stream("OUT").await.ok()?;
            let c: jetstream::consumer::PullConsumer = s
                .create_consumer(pull::Config {
                    deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: from,
                    },
                    ..Default::default()
                })
                .await
                .ok()?;
            let mut batch = c.fetch().max_messages(1000).messages().await.ok()?;
            let mut out = Vec::new();
            while let Some(Ok(m)) = batch.next().await {
                out.push(got(&m));
            }
            (out.len() >= n).then_some(out)
        },
    )
    .await
}

async fn stream_last_seq(js: &jetstream::Context, name: &str) -> u64 {
    let mut s = js.get_stream(name).await.expect("stream");
    s.info().await.expect("stream info").state.last_sequence
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_sources_and_targets_against_a_real_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats_port = port();
    let (nats_proc, nats_url, client) = start_nats(dir.path(), nats_port).await;
    let js = jetstream::new(client.clone());
    for (name, subject) in [("IN", "in.>"), ("OUT", "out.>")] {
        js.create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            ..Default::default()
        })
        .await
        .expect("create stream");
    }
    let (mut node_proc, node) = start_node(dir.path(), &[]).await;

    // Bad definitions are refused naming the field.
    let (s, v) = call(
        reqwest::Method::PUT,
        format!("{node}/v1/sources/bad"),
        Some(json!({"type": "nats", "bus": "default", "url": "http://x", "subject": "a"})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("url"), "{v}");
    let (s, v) = call(
        reqwest::Method::PUT,
        format!("{node}/v1/buses/default/rules/bad"),
        Some(json!({"pattern": {"type": ["x"]},
            "targets": [{"id": "n", "type": "nats", "url": nats_url, "subject": "a.*"}]})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("subject"), "{v}");

    put(&node, "/v1/buses/dlq", json!({})).await;
    let retry = json!({"maxAttempts": 2, "initialBackoffMs": 50, "maxBackoffMs": 100});
    put(
        &node,
        "/v1/buses/default/rules/to-out",
        json!({"pattern": {"type": [{"prefix": "t."}]},
            "targets": [{"id": "out", "type": "nats", "url": nats_url, "subject": "out.events",
                         "jetstream": true, "retry": retry}]}),
    )
    .await;
    put(
        &node,
        "/v1/buses/default/rules/core",
        json!({"pattern": {"type": [{"prefix": "c."}]},
            "targets": [{"id": "core", "type": "nats", "url": nats_url, "subject": "core-out.events"}]}),
    )
    .await;
    put(
        &node,
        "/v1/buses/default/rules/fails",
        json!({"pattern": {"type": ["t.fail"]},
            "targets": [{"id": "nostream", "type": "nats", "url": nats_url, "subject": "nowhere.x",
                         "jetstream": true, "retry": retry,
                         "deadLetter": {"type": "bus", "bus": "dlq"}}]}),
    )
    .await;
    put(
        &node,
        "/v1/buses/dlq/rules/seen",
        json!({"pattern": {"type": ["t.fail"]},
            "targets": [{"id": "seen", "type": "nats", "url": nats_url, "subject": "dlq.seen"}]}),
    )
    .await;
    put(&node, "/v1/buses/rejected", json!({})).await;
    let (_, v) = put(
        &node,
        "/v1/sources/js-in",
        json!({"type": "nats", "bus": "default", "url": nats_url, "subject": "in.>",
               "stream": "IN", "eventType": "t.wrapped", "ackWaitSecs": 2, "maxMessages": 50,
               "deadLetterBus": "rejected"}),
    )
    .await;
    assert_eq!(v["deadLetterBus"], "rejected", "{v}");
    assert_eq!(v["durable"], Value::Null, "{v}");
    put(
        &node,
        "/v1/sources/core-in",
        json!({"type": "nats", "bus": "default", "url": nats_url, "subject": "core.>",
               "eventType": "c.wrapped"}),
    )
    .await;
    let mut core_out = client
        .subscribe("core-out.events")
        .await
        .expect("subscribe");
    let mut dlq_seen = client.subscribe("dlq.seen").await.expect("subscribe");
    client.flush().await.expect("flush");
    wait_for(
        "both sources running",
        Duration::from_secs(20),
        async || {
            let a = source_status(&node, "js-in").await;
            let b = source_status(&node, "core-in").await;
            (a["running"] == json!(true)
                && a["lastError"].is_null()
                && b["running"] == json!(true)
                && b["lastError"].is_null())
            .then_some(())
        },
    )
    .await;

    // A durable consumer that filters another subject is not read.
    put(
        &node,
        "/v1/sources/js-other",
        json!({"type": "nats", "bus": "default", "url": nats_url, "subject": "in.plain",
               "stream": "IN", "durable": "strait-js-in"}),
    )
    .await;
    let err = wait_for(
        "the filter mismatch reported",
        Duration::from_secs(20),
        async || {
            source_status(&node, "js-other").await["lastError"]
                .as_str()
                .map(str::to_string)
        },
    )
    .await;
    assert!(err.contains("filters \"in.>\""), "{err}");
    let (s, v) = call(
        reqwest::Method::DELETE,
        format!("{node}/v1/sources/js-other"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");

    // JetStream in, JetStream out: binary, structured, plain; one invalid.
    let publish = async |subject: &str, h: async_nats::HeaderMap, body: &[u8]| {
        js.publish_with_headers(subject.to_string(), h, body.to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("stream ack")
            .sequence
    };
    publish(
        "in.a",
        headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "b1"),
            ("ce-source", "/test/binary"),
            ("ce-type", "t.bin"),
            ("ce-myext", "v 1"),
            ("content-type", "application/json"),
        ]),
        br#"{"n":1}"#,
    )
    .await;
    publish(
        "in.b",
        headers(&[("content-type", "application/cloudevents+json")]),
        json!({"specversion": "1.0", "id": "s1", "source": "/test/structured", "type": "t.str",
               "data": {"n": 2}})
        .to_string()
        .as_bytes(),
    )
    .await;
    let invalid = publish(
        "in.c",
        headers(&[("ce-specversion", "1.0"), ("ce-id", "x1")]),
        b"no source nor type",
    )
    .await;
    let plain = publish(
        "in.plain",
        headers(&[("content-type", "text/plain")]),
        b"hello nats",
    )
    .await;
    let out = read_out(&js, 1, 3).await;
    assert_eq!(out.len(), 3, "{out:?}");
    let by_id = |id: &str| {
        out.iter()
            .find(|g| g.attrs.get("id") == Some(&json!(id)))
            .unwrap_or_else(|| panic!("{id} not in OUT: {out:?}"))
    };
    let b1 = by_id("b1");
    assert_eq!(b1.attrs["source"], "/test/binary");
    assert_eq!(b1.attrs["myext"], "v 1");
    assert_eq!(b1.attrs["natsmsgid"], "b1");
    assert_eq!(b1.payload, br#"{"n":1}"#);
    assert_eq!(by_id("s1").payload, br#"{"n":2}"#);
    let wrapped = by_id(&format!("IN:{plain}"));
    assert_eq!(wrapped.attrs["type"], "t.wrapped");
    assert_eq!(
        wrapped.attrs["source"],
        json!(format!("{nats_url}/in.plain"))
    );
    assert_eq!(wrapped.payload, b"hello nats");
    assert!(
        out.iter().all(|g| g.attrs.get("id") != Some(&json!("x1"))),
        "the invalid message {invalid} was not delivered"
    );
    let st = wait_for(
        "the source's counters",
        Duration::from_secs(10),
        async || {
            let s = source_status(&node, "js-in").await;
            (s["committed"] == json!(3) && s["rejected"] == json!(1)).then_some(s)
        },
    )
    .await;
    assert_eq!(st["received"], json!(4), "{st}");
    // The invalid message is a dead letter on the source's dead-letter bus,
    // with its reason and its payload unchanged.
    let (s, v) = get(&node, "/v1/buses/rejected/dead-letters").await;
    assert_eq!(s, 200, "{v}");
    let dl = &v["deadLetters"];
    assert_eq!(dl.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(dl[0]["id"], json!(format!("IN:{invalid}")), "{v}");
    assert_eq!(dl[0]["source"], json!(format!("{nats_url}/in.c")), "{v}");
    let reason = dl[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("binary mode"), "{v}");
    let (_, ev) = get(&node, &format!("/v1/buses/rejected/events/IN:{invalid}")).await;
    assert_eq!(
        ev["event"]["data_base64"],
        json!("bm8gc291cmNlIG5vciB0eXBl"),
        "the raw payload: {ev}"
    );
    assert_eq!(ev["event"]["deadlettersource"], "js-in", "{ev}");

    // Core NATS in, core NATS out.
    client
        .publish_with_headers(
            "core.x",
            headers(&[
                ("ce-specversion", "1.0"),
                ("ce-id", "c1"),
                ("ce-source", "/test/core"),
                ("ce-type", "c.bin"),
            ]),
            "core data".into(),
        )
        .await
        .expect("publish");
    client
        .publish("core.y", "{\"k\":true}".into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");
    let mut core = Vec::new();
    while core.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(20), core_out.next())
            .await
            .expect("core NATS target delivers")
            .expect("subscription open");
        core.push(got(&m));
    }
    assert!(
        core.iter().any(|g| g.attrs.get("id") == Some(&json!("c1"))),
        "{core:?}"
    );
    let plain_core = core
        .iter()
        .find(|g| g.attrs.get("type") == Some(&json!("c.wrapped")))
        .expect("wrapped core message");
    assert_eq!(plain_core.payload, b"{\"k\":true}");
    assert_eq!(
        plain_core.attrs["source"],
        json!(format!("{nats_url}/core.y"))
    );

    // A JetStream target with no stream on its subject: retried, then
    // dead-lettered with the reason.
    publish(
        "in.f",
        headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "f1"),
            ("ce-source", "/test/fail"),
            ("ce-type", "t.fail"),
        ]),
        b"",
    )
    .await;
    let m = tokio::time::timeout(Duration::from_secs(30), dlq_seen.next())
        .await
        .expect("dead letter delivered")
        .expect("subscription open");
    let dead = got(&m);
    assert_eq!(dead.attrs["id"], "f1");
    assert_eq!(dead.attrs["deadletterattempts"], "2", "{dead:?}");
    let reason = dead.attrs["deadletterreason"].as_str().unwrap_or_default();
    assert!(reason.contains("nowhere.x"), "{reason}");
    // ... while the `to-out` rule delivered it (`t.` prefix).
    let out_before_kill = read_out(&js, 1, 4).await.len() as u64;

    // Kill -9 between commit and ack: nothing lost, nothing twice.
    node_proc.kill_9();
    drop(node_proc);
    let (proc, node) = start_node(dir.path(), &[("STRAIT_TEST_NATS_ACK_DELAY_MS", "60000")]).await;
    node_proc = proc;
    let first = stream_last_seq(&js, "IN").await + 1;
    const N: u64 = 20;
    for i in 0..N {
        publish(
            "in.load",
            async_nats::HeaderMap::new(),
            format!("m{i}").as_bytes(),
        )
        .await;
    }
    wait_for(
        "20 events committed, not acked",
        Duration::from_secs(30),
        async || (source_status(&node, "js-in").await["committed"] == json!(N)).then_some(()),
    )
    .await;
    node_proc.kill_9();
    drop(node_proc);
    let (_node_proc, node) = start_node(dir.path(), &[]).await;
    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream("IN")
        .await
        .expect("IN")
        .get_consumer("strait-js-in")
        .await
        .expect("the source's durable consumer");
    let mut consumer = consumer;
    let info = wait_for(
        "the redelivered messages acked",
        Duration::from_secs(30),
        async || {
            let info = consumer.info().await.ok()?.clone();
            (info.num_ack_pending == 0 && info.num_pending == 0).then_some(info)
        },
    )
    .await;
    // The 20 were delivered twice: once to the killed node, again here.
    assert!(
        info.delivered.consumer_sequence >= info.delivered.stream_sequence + N,
        "redelivered after the ack wait: {:?}",
        info.delivered
    );
    let st = source_status(&node, "js-in").await;
    eprintln!("after the restart: {st}, consumer {:?}", info.delivered);
    assert_eq!(
        st["committed"],
        json!(0),
        "redelivered messages are duplicates: {st}"
    );
    assert!(
        st["received"].as_u64().unwrap_or(0) >= N,
        "they were redelivered: {st}"
    );
    // Each of the 20 went out once (the target's Nats-Msg-Id would hide a
    // repeat, so count what OUT holds from the load's messages).
    let out = read_out(&js, out_before_kill + 1, N as usize).await;
    let mut ids: Vec<String> = out
        .iter()
        .filter_map(|g| {
            g.attrs
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    ids.sort();
    let mut want: Vec<String> = (first..first + N).map(|s| format!("IN:{s}")).collect();
    want.sort();
    assert_eq!(ids, want);

    // The broker killed (-9) and restarted on its data: source and target
    // reconnect and go on.
    let out_before = stream_last_seq(&js, "OUT").await;
    drop(nats_proc);
    let (_nats_proc, _, client) = start_nats(dir.path(), nats_port).await;
    let js = jetstream::new(client);
    let first = stream_last_seq(&js, "IN").await + 1;
    for i in 0..5 {
        js.publish("in.after", format!("after {i}").into())
            .await
            .expect("publish")
            .await
            .expect("stream ack");
    }
    let out = read_out(&js, out_before + 1, 5).await;
    let ids: Vec<&str> = out
        .iter()
        .filter_map(|g| g.attrs.get("id").and_then(Value::as_str))
        .collect();
    let want: Vec<String> = (first..first + 5).map(|s| format!("IN:{s}")).collect();
    assert_eq!(ids, want, "in order, each once");
}
