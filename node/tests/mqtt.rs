//! MQTT sources and targets on a real node against a real `mosquitto`
//! (started here with its own configuration on a free loopback port, with
//! a password file; the test fails when `mosquitto` is not installed:
//! `scripts/setup-test-deps` installs the Debian package).
//!
//! One broker and one node (restarted on the same data directory) for the
//! whole file:
//! - an MQTT 5 QoS 1 source reads binary, structured and plain messages
//!   into a bus; a rule delivers them to an MQTT 5 target: ids and data
//!   come out as they went in, a plain message with its hash id; an
//!   invalid CloudEvent is dead-lettered to the source's dead-letter bus
//!   with its reason and the source moves on;
//! - an MQTT 3.1.1 source (structured and plain) into a 3.1.1 target
//!   (structured);
//! - the node killed (-9) between commit and ack: the broker sends the
//!   messages again after the restart (same session, same packet ids), they
//!   are found duplicates (none committed twice, none lost) and acked;
//! - the broker killed (-9) and restarted: the source and the target
//!   reconnect and go on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_strait");
const USER: &str = "strait";
const PASSWORD: &str = "s3cret";

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

fn binary(name: &str) -> PathBuf {
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
    {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} is not installed (nor on PATH, nor in /usr/sbin): run scripts/setup-test-deps \
         (Debian package mosquitto); this test needs a real MQTT broker"
    );
}

/// `mosquitto -c conf` on `port` (persistence in `dir`, a password file).
fn start_mosquitto(dir: &Path, port: u16) -> Proc {
    let passwords = dir.join("passwords");
    if !passwords.exists() {
        let out = Command::new(binary("mosquitto_passwd"))
            .arg("-c")
            .arg("-b")
            .arg(&passwords)
            .args([USER, PASSWORD])
            .output()
            .expect("mosquitto_passwd");
        assert!(out.status.success(), "mosquitto_passwd: {out:?}");
    }
    let conf = dir.join("mosquitto.conf");
    std::fs::create_dir_all(dir.join("db")).expect("db dir");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n\
             persistence true\npersistence_location {}/\nmax_queued_messages 0\n",
            passwords.display(),
            dir.join("db").display()
        ),
    )
    .expect("conf");
    let log = dir.join("mosquitto.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("log");
    let child = Command::new(binary("mosquitto"))
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("spawn mosquitto");
    let mut proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = proc.0.try_wait() {
            panic!("mosquitto exited with {status}:\n{}", tail(&log));
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return proc;
        }
        assert!(
            Instant::now() < deadline,
            "mosquitto did not listen within 20 s:\n{}",
            tail(&log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A message read back: its user properties, content type and payload.
#[derive(Debug, Clone)]
struct Got {
    topic: String,
    attrs: HashMap<String, String>,
    content_type: Option<String>,
    payload: Vec<u8>,
}

/// An MQTT 5 test client: publishes, and collects what its subscriptions
/// bring (subscribing again after each reconnect).
struct TestClient {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Got>,
    _task: tokio::task::JoinHandle<()>,
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self._task.abort();
    }
}

impl TestClient {
    async fn connect(port: u16, id: &str, filters: &[&str]) -> TestClient {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_credentials(USER, PASSWORD)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(Some(1 << 20));
        let (client, mut el) = AsyncClient::new(o, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
        let filters_empty = filters.is_empty();
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let sub = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for f in &filters {
                            let _ = sub.subscribe(f.clone(), QoS::AtLeastOnce).await;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let (content_type, attrs) = match p.properties {
                            Some(pr) => (pr.content_type, pr.user_properties.into_iter().collect()),
                            None => (None, HashMap::new()),
                        };
                        let _ = tx.send(Got {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            attrs,
                            content_type,
                            payload: p.payload.to_vec(),
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        if !filters_empty {
            tokio::time::timeout(Duration::from_secs(20), ready_rx.recv())
                .await
                .expect("subscribed");
        }
        TestClient {
            client,
            rx,
            _task: task,
        }
    }

    async fn publish(&self, topic: &str, props: PublishProperties, payload: &[u8]) {
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload.to_vec(), props)
            .await
            .expect("publish");
    }

    /// Messages until `n` distinct payloads that start with `prefix` came
    /// (others, such as redeliveries of earlier events after a node
    /// restart, are skipped); fails after 30 s.
    async fn payloads(&mut self, prefix: &str, n: usize) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(g)) => {
                    let p = String::from_utf8_lossy(&g.payload).into_owned();
                    if p.starts_with(prefix) {
                        out.insert(p);
                    }
                }
                _ => panic!("got {} of {n} `{prefix}` payloads: {out:?}", out.len()),
            }
        }
        out
    }

    /// The next `n` messages (fails after 30 s).
    async fn take(&mut self, n: usize) -> Vec<Got> {
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout(Duration::from_secs(30), self.rx.recv()).await {
                Ok(Some(g)) => out.push(g),
                _ => panic!("got {} of {n} messages: {out:?}", out.len()),
            }
        }
        out
    }
}

fn props(user: &[(&str, &str)], content_type: Option<&str>) -> PublishProperties {
    PublishProperties {
        user_properties: user
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        content_type: content_type.map(str::to_string),
        ..Default::default()
    }
}

/// A `--dev` node on `dir/data` with the broker's credential, with extra
/// environment.
async fn start_node(dir: &Path, env: &[(&str, &str)]) -> (Proc, String) {
    let port = port();
    let cfg = dir.join("node.yaml");
    std::fs::write(
        &cfg,
        format!(
            "dev: true\nmqtt:\n  credentials:\n    broker:\n      username: {USER}\n      password: {PASSWORD}\n"
        ),
    )
    .expect("node config");
    let log = dir.join("node.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("node log");
    let child = Command::new(BIN)
        .arg("serve")
        .arg("--dev")
        .arg("--config")
        .arg(&cfg)
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

async fn put(node: &str, path: &str, body: Value) -> Value {
    let (s, v) = call(reqwest::Method::PUT, format!("{node}{path}"), Some(body)).await;
    assert_eq!(s, 200, "PUT {path}: {v}");
    v
}

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

async fn sources_running(node: &str, names: &[&str]) {
    wait_for("the sources running", Duration::from_secs(30), async || {
        for n in names {
            let s = source_status(node, n).await;
            if s["running"] != json!(true) || !s["lastError"].is_null() {
                return None;
            }
        }
        Some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_sources_and_targets_against_a_real_mosquitto() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mqtt_port = port();
    let mut broker = start_mosquitto(dir.path(), mqtt_port);
    let url = format!("mqtt://127.0.0.1:{mqtt_port}");
    let (mut node_proc, node) = start_node(dir.path(), &[]).await;

    // Bad definitions are refused naming the field.
    for (body, field) in [
        (
            json!({"type": "mqtt", "bus": "default", "url": "http://x", "topic": "a"}),
            "url",
        ),
        (
            json!({"type": "mqtt", "bus": "default", "url": url, "topic": "a/#/b"}),
            "topic",
        ),
        (
            json!({"type": "mqtt", "bus": "default", "url": url, "topic": "a", "qos": 2}),
            "qos",
        ),
    ] {
        let (s, v) = call(
            reqwest::Method::PUT,
            format!("{node}/v1/sources/bad"),
            Some(body),
        )
        .await;
        assert_eq!(s, 400, "{v}");
        assert!(v.to_string().contains(field), "{field}: {v}");
    }
    let (s, v) = call(
        reqwest::Method::PUT,
        format!("{node}/v1/buses/default/rules/bad"),
        Some(json!({"pattern": {"type": ["x"]},
            "targets": [{"id": "m", "type": "mqtt", "url": url, "topic": "a/+"}]})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("topic"), "{v}");

    let mut out = TestClient::connect(mqtt_port, "reader", &["out/#", "out311/#"]).await;
    let publisher = TestClient::connect(mqtt_port, "pub-1", &[]).await;

    put(&node, "/v1/buses/rejected", json!({})).await;
    let target = |topic: &str, protocol: &str| {
        json!({"id": "out", "type": "mqtt", "url": url, "topic": topic, "qos": 1,
               "protocol": protocol, "credential": "broker",
               "retry": {"maxAttempts": 20, "initialBackoffMs": 100, "maxBackoffMs": 500}})
    };
    put(
        &node,
        "/v1/buses/default/rules/to-out",
        json!({"pattern": {"type": [{"prefix": "t."}]}, "targets": [target("out/events", "v5")]}),
    )
    .await;
    put(
        &node,
        "/v1/buses/default/rules/to-out311",
        json!({"pattern": {"type": [{"prefix": "v3."}]},
               "targets": [target("out311/events", "v3.1.1")]}),
    )
    .await;
    let v = put(
        &node,
        "/v1/sources/in5",
        json!({"type": "mqtt", "bus": "default", "url": url, "topic": "in/#", "qos": 1,
               "credential": "broker", "eventType": "t.wrapped", "deadLetterBus": "rejected",
               "maxMessages": 50}),
    )
    .await;
    assert_eq!(v["protocol"], "v5", "normal form: {v}");
    put(
        &node,
        "/v1/sources/in3",
        json!({"type": "mqtt", "bus": "default", "url": url, "topic": "in3/+",
               "protocol": "v3.1.1", "credential": "broker", "eventType": "v3.wrapped"}),
    )
    .await;
    // A source whose login the broker refuses says so.
    put(
        &node,
        "/v1/sources/nologin",
        json!({"type": "mqtt", "bus": "default", "url": url, "topic": "x"}),
    )
    .await;
    sources_running(&node, &["in5", "in3"]).await;
    let err = wait_for(
        "the refused login reported",
        Duration::from_secs(20),
        async || {
            source_status(&node, "nologin").await["lastError"]
                .as_str()
                .map(str::to_string)
        },
    )
    .await;
    assert!(err.contains("MQTT connection"), "{err}");
    let (s, _) = call(
        reqwest::Method::DELETE,
        format!("{node}/v1/sources/nologin"),
        None,
    )
    .await;
    assert_eq!(s, 200);

    // MQTT 5 in, MQTT 5 out: binary, structured, plain; one invalid.
    publisher
        .publish(
            "in/a",
            props(
                &[
                    ("specversion", "1.0"),
                    ("id", "b1"),
                    ("source", "/test/binary"),
                    ("type", "t.bin"),
                    ("myext", "v 1"),
                ],
                Some("application/json"),
            ),
            br#"{"n":1}"#,
        )
        .await;
    publisher
        .publish(
            "in/b",
            props(&[], Some("application/cloudevents+json")),
            json!({"specversion": "1.0", "id": "s1", "source": "/test/structured",
                   "type": "t.str", "data": {"n": 2}})
            .to_string()
            .as_bytes(),
        )
        .await;
    publisher
        .publish(
            "in/c",
            props(&[("specversion", "1.0"), ("id", "x1")], None),
            b"no source nor type",
        )
        .await;
    publisher
        .publish("in/plain", props(&[], Some("text/plain")), b"hello mqtt")
        .await;
    let got = out.take(3).await;
    let by_id = |id: &str| {
        got.iter()
            .find(|g| g.attrs.get("id").map(String::as_str) == Some(id))
            .unwrap_or_else(|| panic!("{id} not delivered: {got:?}"))
    };
    let b1 = by_id("b1");
    assert_eq!(b1.topic, "out/events");
    assert_eq!(b1.attrs["source"], "/test/binary");
    assert_eq!(b1.attrs["myext"], "v 1");
    assert_eq!(b1.content_type.as_deref(), Some("application/json"));
    assert_eq!(b1.payload, br#"{"n":1}"#);
    assert_eq!(by_id("s1").payload, br#"{"n":2}"#);
    let wrapped = got
        .iter()
        .find(|g| g.attrs.get("type").map(String::as_str) == Some("t.wrapped"))
        .unwrap_or_else(|| panic!("the plain message: {got:?}"));
    let wrapped_id = wrapped.attrs["id"].clone();
    assert_eq!(wrapped_id.len(), 32, "{wrapped:?}");
    assert_eq!(wrapped.attrs["source"], format!("{url}/in/plain"));
    assert_eq!(wrapped.payload, b"hello mqtt");
    assert_eq!(wrapped.content_type.as_deref(), Some("text/plain"));
    let st = wait_for(
        "the source's counters",
        Duration::from_secs(10),
        async || {
            let s = source_status(&node, "in5").await;
            (s["committed"] == json!(3) && s["rejected"] == json!(1)).then_some(s)
        },
    )
    .await;
    assert_eq!(st["received"], json!(4), "{st}");
    // The invalid message is a dead letter with its reason and payload.
    let (s, v) = get(&node, "/v1/buses/rejected/dead-letters").await;
    assert_eq!(s, 200, "{v}");
    let dl = &v["deadLetters"];
    assert_eq!(dl.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(dl[0]["source"], json!(format!("{url}/in/c")), "{v}");
    let reason = dl[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("binary mode"), "{v}");
    let dl_id = dl[0]["id"].as_str().unwrap_or_default().to_string();
    let (_, ev) = get(&node, &format!("/v1/buses/rejected/events/{dl_id}")).await;
    assert_eq!(
        ev["event"]["data_base64"],
        json!("bm8gc291cmNlIG5vciB0eXBl"),
        "the raw payload: {ev}"
    );
    assert_eq!(ev["event"]["deadlettersource"], "in5", "{ev}");

    // MQTT 3.1.1 in (structured, plain) and out (structured).
    publisher
        .publish(
            "in3/x",
            props(&[], None),
            json!({"specversion": "1.0", "id": "v3s", "source": "/test/v3", "type": "v3.str",
                   "data": {"k": true}})
            .to_string()
            .as_bytes(),
        )
        .await;
    publisher.publish("in3/y", props(&[], None), b"[1,2]").await;
    let got = out.take(2).await;
    for g in &got {
        assert_eq!(g.topic, "out311/events");
        assert!(g.attrs.is_empty() && g.content_type.is_none(), "{g:?}");
    }
    let events: Vec<Value> = got
        .iter()
        .map(|g| serde_json::from_slice(&g.payload).expect("structured JSON"))
        .collect();
    let s = events.iter().find(|e| e["id"] == "v3s").expect("v3s");
    assert_eq!(s["data"], json!({"k": true}));
    let w = events
        .iter()
        .find(|e| e["type"] == "v3.wrapped")
        .expect("wrapped");
    assert_eq!(w["data"], json!([1, 2]));
    assert_eq!(w["source"], json!(format!("{url}/in3/y")));

    // Kill -9 between commit and ack: nothing lost, nothing twice.
    node_proc.kill_9();
    drop(node_proc);
    let (proc, node) = start_node(dir.path(), &[("STRAIT_TEST_MQTT_ACK_DELAY_MS", "60000")]).await;
    node_proc = proc;
    sources_running(&node, &["in5"]).await;
    const N: usize = 20;
    for i in 0..N {
        publisher
            .publish("in/load", props(&[], None), format!("m{i}").as_bytes())
            .await;
    }
    wait_for(
        "20 events committed, not acked",
        Duration::from_secs(30),
        async || (source_status(&node, "in5").await["committed"] == json!(N)).then_some(()),
    )
    .await;
    let want: std::collections::BTreeSet<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(out.payloads("m", N).await, want);
    node_proc.kill_9();
    drop(node_proc);
    let (_node_proc, node) = start_node(dir.path(), &[]).await;
    let st = wait_for(
        "the redelivered messages read",
        Duration::from_secs(30),
        async || {
            let s = source_status(&node, "in5").await;
            (s["received"].as_u64().unwrap_or(0) >= N as u64).then_some(s)
        },
    )
    .await;
    assert_eq!(
        st["committed"],
        json!(0),
        "redelivered messages are duplicates: {st}"
    );
    // Stored once each.
    let q = format!("{url}/in/load")
        .replace(':', "%3A")
        .replace('/', "%2F");
    let (s, v) = get(
        &node,
        &format!("/v1/buses/default/events?source={q}&limit=1000"),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let mut stored: Vec<String> = v["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .collect();
    stored.sort();
    assert_eq!(stored.len(), N, "each stored once: {v}");
    stored.dedup();
    assert_eq!(stored.len(), N, "each stored once: {v}");

    // The broker killed (-9) and restarted: source and target reconnect.
    broker.kill_9();
    drop(broker);
    let _broker = start_mosquitto(dir.path(), mqtt_port);
    sources_running(&node, &["in5"]).await;
    // The test clients reconnect by themselves; give them a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let publisher = TestClient::connect(mqtt_port, "pub-2", &[]).await;
    for i in 0..5 {
        publisher
            .publish(
                "in/after",
                props(&[], None),
                format!("after {i}").as_bytes(),
            )
            .await;
    }
    let want: std::collections::BTreeSet<String> = (0..5).map(|i| format!("after {i}")).collect();
    assert_eq!(out.payloads("after", 5).await, want);
}
