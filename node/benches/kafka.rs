//! Kafka benchmark: one node (fsync on), the Kafka peer of the tests
//! (`scripts/kafka-peer serve`) on loopback, 1 KiB events.
//!
//! `cargo bench -p strait-node --bench kafka` prints, in one run:
//! - the node's HTTP ingest rate (batched, closed loop), the reference;
//! - the Kafka source: records already in a topic into committed events,
//!   events/s (from the first committed event to the last, so the group
//!   join is not counted), and its ratio to the HTTP rate;
//! - the Kafka target: events posted to a bus into records acknowledged by
//!   the broker, deliveries/s;
//! - the Kafka → Kafka bridge (a source, a rule, a target): records/s from
//!   one topic into another;
//! - Kafka's own MirrorMaker 2 copying a topic between two local brokers,
//!   and the bridge's rate as a ratio of it: only with
//!   `STRAIT_KAFKA_PEER=apache` (Apache Kafka's jars through Maven), which
//!   this project's machines cannot resolve; otherwise it says so.
//!
//! Knobs (env): `BENCH_SECS` (HTTP phase, default 8), `BENCH_CLIENTS`
//! (default 64), `BENCH_BATCH` (default 100), `BENCH_RECORDS` (records per
//! Kafka phase, default 20000), `BENCH_DIR` (data dir parent).

// Shared with the other benches; this one uses only part of it.
#[allow(dead_code)]
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{batch_body, closed_loop, env_or, report};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Value, json};
use strait_node::config::NodeConfig;
use tokio::sync::Mutex;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn client(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers).set("log_level", "3");
    c
}

async fn start_kafka(dir: &Path) -> anyhow::Result<(Proc, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no workspace root"))?;
    let port = free_port()?;
    std::fs::create_dir_all(dir)?;
    let child = Command::new(root.join("scripts/kafka-peer"))
        .arg("serve")
        .arg(dir)
        .arg(port.to_string())
        .arg(free_port()?.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("kafka-peer.err"))?)
        .spawn()?;
    let mut proc = Proc(child);
    let brokers = format!("127.0.0.1:{port}");
    let admin: AdminClient<DefaultClientContext> = client(&brokers).create()?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(s) = proc.0.try_wait()? {
            anyhow::bail!("the Kafka peer exited with {s} (run scripts/setup-test-deps)");
        }
        if admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(1))
            .is_ok_and(|m| !m.brokers().is_empty())
        {
            return Ok((proc, brokers));
        }
        anyhow::ensure!(Instant::now() < deadline, "the Kafka peer did not answer");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create_topics(brokers: &str, topics: &[&str]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client(brokers).create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
        .collect();
    for r in admin.create_topics(&new, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}

/// `n` records of about 1 KiB (a JSON object, not a CloudEvent) into `topic`.
async fn fill(brokers: &str, topic: &str, n: u64) -> anyhow::Result<()> {
    let producer: FutureProducer = client(brokers).set("linger.ms", "20").create()?;
    let payload = "x".repeat(common::EVENT_DATA_BYTES);
    let mut pending = Vec::new();
    for i in 0..n {
        let value = format!(r#"{{"seq":{i},"payload":"{payload}"}}"#);
        let p = producer.clone();
        let topic = topic.to_string();
        pending.push(tokio::spawn(async move {
            p.send(
                FutureRecord::<str, str>::to(&topic).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))
        }));
        if pending.len() >= 1000 {
            for t in pending.drain(..) {
                t.await??;
            }
        }
    }
    for t in pending {
        t.await??;
    }
    Ok(())
}

/// Read partition 0 of `topic` from the start until `n` records came (or
/// 600 s passed); the time from `start` at the `first` record and at the
/// last (records are counted by reading them: the test broker's
/// watermarks count batches).
async fn until_count(
    brokers: &str,
    topic: &str,
    n: i64,
    start: Instant,
) -> anyhow::Result<(f64, f64)> {
    let c: BaseConsumer = client(brokers)
        .set("group.id", "bench-count")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    c.assign(&tpl)?;
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut seen = 0i64;
        let mut first = None;
        while seen < n {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{topic}: {seen} of {n} records after 600 s"
            );
            if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
                seen += 1;
                first.get_or_insert_with(|| start.elapsed().as_secs_f64());
            }
        }
        Ok((first.unwrap_or(0.0), start.elapsed().as_secs_f64()))
    })
    .await?
}

async fn api(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Value,
) -> anyhow::Result<Value> {
    let r = http.request(method, &url).json(&body).send().await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "{url}: {status} {v}");
    Ok(v)
}

async fn source_committed(http: &reqwest::Client, base: &str, name: &str) -> u64 {
    let Ok(r) = http.get(format!("{base}/v1/sources/{name}")).send().await else {
        return 0;
    };
    let v: Value = r.json().await.unwrap_or(Value::Null);
    v["status"]["committed"].as_u64().unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let secs = env_or("BENCH_SECS", 8);
    let clients = env_or("BENCH_CLIENTS", 64);
    let batch = env_or("BENCH_BATCH", 100);
    let records = env_or("BENCH_RECORDS", 20_000);
    let parent = std::env::var("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = tempfile::Builder::new()
        .prefix("strait-bench-kafka-")
        .tempdir_in(parent)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let peer = std::env::var("STRAIT_KAFKA_PEER").unwrap_or_else(|_| "tansu".into());
        let (_kafka, brokers) = start_kafka(&dir.path().join("kafka")).await?;
        println!("Kafka peer: {peer} at {brokers}");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cfg = NodeConfig {
            dev: true,
            data_dir: dir.path().join("node"),
            http: addr.to_string(),
            limits: strait_node::config::Limits {
                max_batch_events: 1000,
                ..Default::default()
            },
            buses: vec!["default".into(), "src".into(), "tgt".into(), "bridge".into()],
            ..NodeConfig::default()
        };
        let app = strait_node::start(cfg).await?;
        let router = strait_node::router(app.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        let base = format!("http://{addr}");
        let http = reqwest::Client::new();
        println!("1 KiB events, one node, fsync on every commit; figures on a shared machine are indicative only");

        // HTTP ingest, the reference.
        let urls = [format!("{base}/v1/buses/default/events")];
        let counter = Arc::new(Mutex::new(0u64));
        let (s, e) = closed_loop(&urls, clients, batch, secs, counter).await;
        let http_rate =
            report(&format!("HTTP ingest ({batch} events/request, {clients} clients)"), s, e).rate;

        // Kafka source: records already in the topic into committed events.
        create_topics(&brokers, &["bench-src", "bench-dst", "bench-bridge-in", "bench-bridge-out"])
            .await?;
        fill(&brokers, "bench-src", records).await?;
        api(&http, reqwest::Method::PUT, format!("{base}/v1/sources/ksrc"),
            json!({"type": "kafka", "bus": "src", "brokers": [brokers], "topic": "bench-src",
                   "group": "bench-src", "startFrom": "earliest", "sessionTimeoutMs": 6000,
                   "maxMessages": 1000})).await?;
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut first: Option<(Instant, u64)> = None;
        let source_rate = loop {
            let n = source_committed(&http, &base, "ksrc").await;
            if first.is_none() && n > 0 {
                first = Some((Instant::now(), n));
            }
            if n >= records {
                let (t, n0) = first.unwrap_or((Instant::now(), 0));
                break (records - n0) as f64 / t.elapsed().as_secs_f64().max(1e-3);
            }
            anyhow::ensure!(Instant::now() < deadline, "the source committed {n} of {records}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        println!(
            "Kafka source: {records} records into committed events: {source_rate:.0} events/s \
             ({:.2} of HTTP ingest)",
            source_rate / http_rate.max(1.0)
        );

        // Kafka target: events posted to a bus into acknowledged records.
        api(&http, reqwest::Method::PUT, format!("{base}/v1/buses/tgt/rules/to-kafka"),
            json!({"pattern": {"source": ["/bench"]},
                   "targets": [{"id": "k", "type": "kafka", "brokers": [brokers], "concurrency": 256,
                                "topic": "bench-dst"}]})).await?;
        let payload = "x".repeat(common::EVENT_DATA_BYTES);
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < records {
            let n = batch.min(records - sent);
            let r = http
                .post(format!("{base}/v1/buses/tgt/events"))
                .header("content-type", "application/cloudevents-batch+json")
                .body(batch_body(1_000_000_000 + sent, n, &payload))
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "post: {}", r.status());
            sent += n;
        }
        let (_, t) = until_count(&brokers, "bench-dst", records as i64, start).await?;
        println!(
            "Kafka target: {records} events posted into records in the topic: {:.0} deliveries/s",
            records as f64 / t
        );

        // Kafka -> Kafka bridge.
        fill(&brokers, "bench-bridge-in", records).await?;
        api(&http, reqwest::Method::PUT, format!("{base}/v1/buses/bridge/rules/out"),
            json!({"pattern": {}, "targets": [{"id": "k", "type": "kafka", "concurrency": 256,
                   "brokers": [brokers], "topic": "bench-bridge-out"}]})).await?;
        api(&http, reqwest::Method::PUT, format!("{base}/v1/sources/kbridge"),
            json!({"type": "kafka", "bus": "bridge", "brokers": [brokers],
                   "topic": "bench-bridge-in", "group": "bench-bridge", "startFrom": "earliest",
                   "sessionTimeoutMs": 6000, "maxMessages": 1000})).await?;
        let (first, last) =
            until_count(&brokers, "bench-bridge-out", records as i64, Instant::now()).await?;
        let bridge_rate = (records - 1) as f64 / (last - first).max(1e-3);
        println!(
            "Kafka -> Kafka bridge (source, rule, target): {bridge_rate:.0} records/s \
             (from the first record out)"
        );

        if peer == "apache" {
            println!(
                "MirrorMaker 2: not measured by this bench yet (run \
                 `scripts/kafka-peer java org.apache.kafka.connect.mirror.MirrorMaker` by hand)"
            );
        } else {
            println!(
                "MirrorMaker 2: not run: it needs Apache Kafka's jars (STRAIT_KAFKA_PEER=apache, \
                 through Maven Central, which this machine does not reach); no ratio"
            );
        }
        app.site.shutdown().await?;
        anyhow::Ok(())
    })
}
