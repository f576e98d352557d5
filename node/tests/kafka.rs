//! Kafka sources and targets on a real node against a real Kafka-protocol
//! broker (`scripts/kafka-peer serve`, on a free loopback port; the test
//! fails when the broker cannot start: `scripts/setup-test-deps` installs
//! it).
//!
//! One broker and one node (restarted on the same data directory) for the
//! whole file:
//! - a source reads binary, structured and plain records into a bus; a rule
//!   delivers them to a Kafka target: the ids, keys and data come out as
//!   they went in, a plain record with the id `<topic>:<partition>:<offset>`;
//!   an invalid CloudEvent is dead-lettered to a bus with its reason and
//!   the source moves on;
//! - the node killed (-9) between the commit of the events and the commit
//!   of the offsets: the records are read again, found duplicates (none
//!   committed twice, none lost) and their offsets committed;
//! - the broker killed (-9) and restarted (empty: the test broker keeps
//!   its data in memory): the source and the target reconnect and go on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
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

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn client_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers).set("log_level", "3");
    c
}

/// The Kafka peer (`scripts/kafka-peer serve`) on `port`, answering.
async fn start_kafka(dir: &Path, port: u16) -> (Proc, String) {
    let dir = dir.join("kafka");
    std::fs::create_dir_all(&dir).expect("kafka dir");
    let log = dir.join("kafka.log");
    let child = Command::new(repo_root().join("scripts/kafka-peer"))
        .arg("serve")
        .arg(&dir)
        .arg(port.to_string())
        .arg(self::port().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("kafka-peer.err")).expect("log"))
        .spawn()
        .expect("spawn scripts/kafka-peer");
    let mut proc = Proc(child);
    let brokers = format!("127.0.0.1:{port}");
    let admin: AdminClient<DefaultClientContext> =
        client_config(&brokers).create().expect("admin client");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(Some(status)) = proc.0.try_wait() {
            panic!(
                "the Kafka peer exited with {status} (run scripts/setup-test-deps):\n{}\n{}",
                tail(&dir.join("kafka-peer.err")),
                tail(&log)
            );
        }
        if admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(1))
            .is_ok_and(|m| !m.brokers().is_empty())
        {
            return (proc, brokers);
        }
        assert!(
            Instant::now() < deadline,
            "the Kafka peer did not answer within 90 s:\n{}",
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create_topics(brokers: &str, topics: &[&str]) {
    let admin: AdminClient<DefaultClientContext> =
        client_config(brokers).create().expect("admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
        .collect();
    let res = admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .expect("create topics");
    for r in res {
        if let Err((t, e)) = r {
            assert_eq!(
                e,
                rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                "create topic {t}"
            );
        }
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
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn source_status(node: &str, name: &str) -> Value {
    get(node, &format!("/v1/sources/{name}")).await.1["status"].clone()
}

async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    value: &[u8],
) -> i64 {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    let mut r = FutureRecord::<str, [u8]>::to(topic)
        .payload(value)
        .headers(h);
    if let Some(k) = key {
        r = r.key(k);
    }
    producer
        .send(r, Duration::from_secs(10))
        .await
        .expect("produce")
        .offset
}

/// A record read back: its `ce_*` headers (prefix dropped), key and value.
#[derive(Debug)]
struct Got {
    attrs: serde_json::Map<String, Value>,
    key: Option<String>,
    value: Vec<u8>,
}

/// Every record of partition 0 of `topic` from `from`, until `n` are there
/// (a consumer without a group, assigned the partition).
async fn read_topic(brokers: &str, topic: &str, from: i64, n: usize) -> Vec<Got> {
    let consumer: BaseConsumer = client_config(brokers)
        .set("group.id", "strait-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(from))
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "{n} records in {topic} from {from}: only {} ({out:?})",
            out.len()
        );
        let Some(r) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let Ok(m) = r else { continue };
        let mut attrs = serde_json::Map::new();
        for h in m.headers().iter().flat_map(|h| h.iter()) {
            if let (Some(a), Some(v)) = (h.key.strip_prefix("ce_"), h.value) {
                attrs.insert(a.into(), json!(String::from_utf8_lossy(v)));
            }
        }
        out.push(Got {
            attrs,
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            value: m.payload().unwrap_or_default().to_vec(),
        });
    }
    out
}

async fn bus_events(node: &str, bus: &str) -> Vec<Value> {
    let (s, v) = get(node, &format!("/v1/buses/{bus}/events?limit=1000")).await;
    // (The list holds the events' ids: enough here.)
    assert_eq!(s, 200, "{v}");
    v["events"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_sources_and_targets_against_a_real_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kafka_port = port();
    let (kafka_proc, brokers) = start_kafka(dir.path(), kafka_port).await;
    create_topics(&brokers, &["in", "out"]).await;
    let producer: FutureProducer = client_config(&brokers)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let (mut node_proc, node) = start_node(dir.path(), &[]).await;

    // Bad definitions are refused naming the field.
    let (s, v) = call(
        reqwest::Method::PUT,
        format!("{node}/v1/sources/bad"),
        Some(
            json!({"type": "kafka", "bus": "default", "brokers": ["kafka://x:1"],
                    "topic": "in", "group": "g"}),
        ),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("brokers"), "{v}");
    let (s, v) = call(
        reqwest::Method::PUT,
        format!("{node}/v1/buses/default/rules/bad"),
        Some(json!({"pattern": {"type": ["x"]},
            "targets": [{"id": "k", "type": "kafka", "brokers": [brokers], "topic": "a b"}]})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("topic"), "{v}");

    put(&node, "/v1/buses/dl", json!({})).await;
    put(
        &node,
        "/v1/buses/default/rules/to-out",
        json!({"pattern": {"type": [{"prefix": "t."}]},
            "targets": [{"id": "out", "type": "kafka", "brokers": [brokers], "topic": "out",
                         "key": "$.data.k"}]}),
    )
    .await;
    let (_, v) = put(
        &node,
        "/v1/sources/k-in",
        json!({"type": "kafka", "bus": "default", "brokers": [brokers], "topic": "in",
               "group": "strait-k-in", "startFrom": "earliest", "eventType": "t.wrapped",
               "deadLetterBus": "dl", "sessionTimeoutMs": 6000}),
    )
    .await;
    assert_eq!(v["maxMessages"], json!(500), "normal form: {v}");
    wait_for("the source running", Duration::from_secs(20), async || {
        let a = source_status(&node, "k-in").await;
        (a["running"] == json!(true)).then_some(())
    })
    .await;

    // Binary, structured, plain; one invalid.
    produce(
        &producer,
        "in",
        Some("key-b1"),
        &[
            ("ce_specversion", "1.0"),
            ("ce_id", "b1"),
            ("ce_source", "/test/binary"),
            ("ce_type", "t.bin"),
            ("ce_myext", "v 1"),
            ("content-type", "application/json"),
        ],
        br#"{"n":1}"#,
    )
    .await;
    produce(
        &producer,
        "in",
        None,
        &[("content-type", "application/cloudevents+json")],
        json!({"specversion": "1.0", "id": "s1", "source": "/test/structured", "type": "t.str",
               "data": {"n": 2, "k": "data-key"}})
        .to_string()
        .as_bytes(),
    )
    .await;
    let invalid = produce(
        &producer,
        "in",
        None,
        &[("ce_specversion", "1.0"), ("ce_id", "x1")],
        b"no source nor type",
    )
    .await;
    let plain = produce(
        &producer,
        "in",
        Some("sensor-7"),
        &[("content-type", "text/plain")],
        b"hello kafka",
    )
    .await;
    let out = read_topic(&brokers, "out", 0, 3).await;
    let by_id = |id: &str| {
        out.iter()
            .find(|g| g.attrs.get("id") == Some(&json!(id)))
            .unwrap_or_else(|| panic!("{id} not in out: {out:?}"))
    };
    let b1 = by_id("b1");
    assert_eq!(b1.attrs["source"], "/test/binary");
    assert_eq!(b1.attrs["myext"], "v 1");
    assert_eq!(b1.attrs["partitionkey"], "key-b1");
    assert_eq!(b1.key.as_deref(), Some("key-b1"), "the partition key");
    assert_eq!(b1.value, br#"{"n":1}"#);
    let s1 = by_id("s1");
    assert_eq!(s1.value, br#"{"n":2,"k":"data-key"}"#);
    assert_eq!(s1.key.as_deref(), Some("data-key"), "the target's key path");
    let wrapped = by_id(&format!("in:0:{plain}"));
    assert_eq!(wrapped.attrs["type"], "t.wrapped");
    assert_eq!(
        wrapped.attrs["source"],
        json!(format!("kafka://{brokers}/in"))
    );
    assert_eq!(wrapped.key.as_deref(), Some("sensor-7"));
    assert_eq!(wrapped.value, b"hello kafka");
    assert!(
        out.iter().all(|g| g.attrs.get("id") != Some(&json!("x1"))),
        "the invalid record {invalid} was not delivered"
    );
    let st = wait_for(
        "the source's counters",
        Duration::from_secs(10),
        async || {
            let s = source_status(&node, "k-in").await;
            (s["committed"] == json!(3) && s["rejected"] == json!(1)).then_some(s)
        },
    )
    .await;
    assert_eq!(st["received"], json!(4), "{st}");
    // The invalid record is a dead letter on the source's dead-letter bus,
    // with its reason and its value unchanged.
    let (s, v) = get(&node, "/v1/buses/dl/dead-letters").await;
    assert_eq!(s, 200, "{v}");
    let dl = &v["deadLetters"];
    assert_eq!(dl.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(dl[0]["id"], json!(format!("in:0:{invalid}")), "{v}");
    assert_eq!(
        dl[0]["source"],
        json!(format!("kafka://{brokers}/in")),
        "{v}"
    );
    let reason = dl[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("binary mode"), "{v}");
    let (_, ev) = get(&node, &format!("/v1/buses/dl/events/in:0:{invalid}")).await;
    assert_eq!(
        ev["event"]["data_base64"],
        json!("bm8gc291cmNlIG5vciB0eXBl"),
        "the raw value: {ev}"
    );
    assert_eq!(ev["event"]["deadlettersource"], "k-in", "{ev}");

    // Kill -9 between the events' commit and the offsets' commit: read
    // again, nothing lost, nothing twice.
    node_proc.kill_9();
    drop(node_proc);
    let (proc, node) = start_node(
        dir.path(),
        &[("STRAIT_TEST_KAFKA_COMMIT_DELAY_MS", "60000")],
    )
    .await;
    node_proc = proc;
    const N: usize = 20;
    let mut offsets = Vec::new();
    for i in 0..N {
        offsets.push(produce(&producer, "in", None, &[], format!("m{i}").as_bytes()).await);
    }
    wait_for(
        "20 events committed, offsets not",
        Duration::from_secs(60),
        async || (source_status(&node, "k-in").await["committed"] == json!(N)).then_some(()),
    )
    .await;
    node_proc.kill_9();
    drop(node_proc);
    let (_node_proc, node) = start_node(dir.path(), &[]).await;
    let st = wait_for("the 20 read again", Duration::from_secs(60), async || {
        let s = source_status(&node, "k-in").await;
        (s["received"].as_u64().unwrap_or(0) >= N as u64).then_some(s)
    })
    .await;
    assert_eq!(st["committed"], json!(0), "read again: duplicates: {st}");
    let events = bus_events(&node, "default").await;
    let mut ids: Vec<&str> = events
        .iter()
        .filter_map(|e| e["id"].as_str())
        .filter(|id| id.starts_with("in:0:"))
        .collect();
    ids.sort();
    let mut want: Vec<String> = std::iter::once(plain)
        .chain(offsets.iter().copied())
        .map(|o| format!("in:0:{o}"))
        .collect();
    want.sort();
    assert_eq!(ids, want, "each record one event");
    let out = read_topic(&brokers, "out", 3, N).await;
    assert_eq!(out.len(), N);

    // The broker killed (-9) and restarted (empty): source and target
    // reconnect and go on.
    let received = source_status(&node, "k-in").await["received"]
        .as_u64()
        .unwrap_or(0);
    drop(kafka_proc);
    let (_kafka_proc, brokers) = start_kafka(dir.path(), kafka_port).await;
    create_topics(&brokers, &["in", "out"]).await;
    let producer: FutureProducer = client_config(&brokers).create().expect("producer");
    for i in 0..5 {
        produce(
            &producer,
            "in",
            None,
            &[
                ("ce_specversion", "1.0"),
                ("ce_id", &format!("after-{i}")),
                ("ce_source", "/test/restart"),
                ("ce_type", "t.after"),
            ],
            b"",
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = source_status(&node, "k-in").await;
        if st["received"].as_u64().unwrap_or(0) >= received + 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the source did not read after the broker restart: {st}\n{}",
            tail(&dir.path().join("node.log"))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = read_topic(&brokers, "out", 0, 5).await;
    let ids: Vec<&str> = out
        .iter()
        .filter_map(|g| g.attrs.get("id").and_then(Value::as_str))
        .collect();
    assert_eq!(
        ids,
        ["after-0", "after-1", "after-2", "after-3", "after-4"],
        "in order, each once"
    );
}
