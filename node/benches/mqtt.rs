//! MQTT benchmark: one node (fsync on), a local `mosquitto`, 1 KiB events.
//!
//! `cargo bench -p strait-node --bench mqtt` prints, in one run:
//! - the node's HTTP ingest rate (batched, closed loop), the reference;
//! - the `mqtt` source's rate from the broker into committed events: N
//!   QoS 1 messages (1 KiB structured CloudEvents) queued at the broker
//!   for the source's persistent session while the source is stopped, then
//!   timed from the source's start until all N are committed (acked after
//!   commit, `maxMessages` unacknowledged at a time), and its ratio to the
//!   HTTP rate;
//! - the `mqtt` target's deliveries per second (QoS 1, each waiting for its
//!   PUBACK): N events posted over HTTP, timed until a subscriber got all N
//!   (the ingest of those events is inside the time).
//!
//! Figures on a shared or busy machine are indicative only.
//!
//! Knobs (env): `BENCH_SECS` (HTTP phase, default 8), `BENCH_CLIENTS`
//! (default 16), `BENCH_BATCH` (default 100), `BENCH_MQTT_N` (default
//! 20000), `BENCH_MQTT_MAX_MESSAGES` (the source's `maxMessages`, default
//! 1000), `BENCH_DIR` (data dir parent). Needs `mosquitto` (Debian package;
//! `scripts/setup-test-deps`).

// Shared with the other benches; this one uses only part of it.
#[allow(dead_code)]
mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::{EVENT_DATA_BYTES, batch_body, closed_loop, env_or, event, report};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{Value, json};
use strait_node::config::NodeConfig;
use tokio::sync::Mutex;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_mosquitto(dir: &std::path::Path) -> anyhow::Result<(Proc, u16)> {
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .context("mosquitto is not installed: run scripts/setup-test-deps")?;
    let port = strait_federation::transport::free_loopback_port()?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n\
             max_inflight_messages 0\n"
        ),
    )?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(s) = proc.0.try_wait()? {
            anyhow::bail!("mosquitto exited with {s}");
        }
        anyhow::ensure!(Instant::now() < deadline, "mosquitto did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((proc, port))
}

/// An MQTT 5 client and a count of what its polling saw.
fn client(port: u16, id: &str, subscribe: Option<&str>) -> (AsyncClient, Arc<AtomicU64>) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(Some(1 << 20))
        .set_outgoing_inflight_upper_limit(1000);
    let (c, mut el) = AsyncClient::new(o, 1000);
    let count = Arc::new(AtomicU64::new(0));
    let n = count.clone();
    let sub = c.clone();
    let filter = subscribe.map(str::to_string);
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(f) = &filter {
                        let _ = sub.subscribe(f.clone(), QoS::AtLeastOnce).await;
                    }
                }
                // A publisher counts PUBACKs, a subscriber messages.
                Ok(Event::Incoming(Packet::PubAck(_) | Packet::Publish(_))) => {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (c, count)
}

async fn api(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut r = http.request(method, &url);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "{url}: {status} {v}");
    Ok(v)
}

async fn wait_until(
    what: &str,
    limit: Duration,
    mut f: impl AsyncFnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !f().await {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let secs = env_or("BENCH_SECS", 8);
    let clients = env_or("BENCH_CLIENTS", 16);
    let batch = env_or("BENCH_BATCH", 100);
    let n = env_or("BENCH_MQTT_N", 20_000);
    let max_messages = env_or("BENCH_MQTT_MAX_MESSAGES", 1000);
    let parent = std::env::var("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = tempfile::Builder::new()
        .prefix("strait-bench-mqtt-")
        .tempdir_in(parent)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (_broker, port) = start_mosquitto(dir.path())?;
        let url = format!("mqtt://127.0.0.1:{port}");
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
            ..NodeConfig::default()
        };
        let app = strait_node::start(cfg).await?;
        let router = strait_node::router(app.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        let base = format!("http://{addr}");
        let http = reqwest::Client::new();
        println!(
            "1 KiB events, one node, fsync on every commit, mosquitto 2 on loopback; \
             figures on a shared machine are indicative"
        );

        // The reference: HTTP ingest, batched.
        let urls = [format!("{base}/v1/buses/default/events")];
        let counter = Arc::new(Mutex::new(0u64));
        let (s, e) = closed_loop(&urls, clients, batch, secs, counter).await;
        let http_rate = report(
            &format!("HTTP ingest ({batch} events/request, {clients} clients)"),
            s,
            e,
        )
        .rate;

        // The source: N messages queued for its session, then drained.
        let source = json!({"type": "mqtt", "bus": "default", "url": url, "topic": "bench/in",
            "qos": 1, "clientId": "bench-source", "maxMessages": max_messages});
        let src_url = format!("{base}/v1/sources/bench");
        api(&http, reqwest::Method::PUT, src_url.clone(), Some(source.clone())).await?;
        wait_until("the source connected", Duration::from_secs(30), async || {
            api(&http, reqwest::Method::GET, src_url.clone(), None)
                .await
                .is_ok_and(|v| v["status"]["running"] == json!(true) && v["status"]["lastError"].is_null())
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        api(&http, reqwest::Method::DELETE, src_url.clone(), None).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (publisher, acked) = client(port, "bench-publisher", None);
        let payload = "x".repeat(EVENT_DATA_BYTES);
        let t = Instant::now();
        for i in 0..n {
            publisher
                .publish("bench/in", QoS::AtLeastOnce, false, event(1_000_000 + i, &payload))
                .await?;
        }
        wait_until("the broker acked every publish", Duration::from_secs(300), async || {
            acked.load(Ordering::Relaxed) >= n
        })
        .await?;
        println!(
            "published {n} QoS 1 messages to mosquitto in {:.2} s ({:.0}/s)",
            t.elapsed().as_secs_f64(),
            n as f64 / t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        api(&http, reqwest::Method::PUT, src_url.clone(), Some(source)).await?;
        wait_until("every queued message committed", Duration::from_secs(600), async || {
            api(&http, reqwest::Method::GET, src_url.clone(), None)
                .await
                .is_ok_and(|v| v["status"]["committed"].as_u64().unwrap_or(0) >= n)
        })
        .await?;
        let secs_src = t.elapsed().as_secs_f64();
        let src_rate = n as f64 / secs_src;
        println!(
            "mqtt source (QoS 1, maxMessages {max_messages}): {n} events committed in {secs_src:.2} s: \
             {src_rate:.0} events/s = {:.2}x the HTTP ingest rate",
            src_rate / http_rate
        );
        api(&http, reqwest::Method::DELETE, src_url, None).await?;

        // The target: deliveries per second into the broker.
        api(
            &http,
            reqwest::Method::PUT,
            format!("{base}/v1/buses/default/rules/to-mqtt"),
            Some(json!({"pattern": {"type": ["bench.out"]},
                "targets": [{"id": "m", "type": "mqtt", "url": url, "topic": "bench/out", "qos": 1}]})),
        )
        .await?;
        let (_sub, got) = client(port, "bench-subscriber", Some("bench/out"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = Instant::now();
        let mut first = 2_000_000;
        while first < 2_000_000 + n {
            let k = batch.min(2_000_000 + n - first);
            let body = batch_body(first, k, &payload).replace("bench.event", "bench.out");
            let r = http
                .post(format!("{base}/v1/buses/default/events"))
                .header("content-type", "application/cloudevents-batch+json")
                .body(body)
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "POST: {}", r.status());
            first += k;
        }
        let ingested = t.elapsed().as_secs_f64();
        wait_until("every event delivered", Duration::from_secs(600), async || {
            got.load(Ordering::Relaxed) >= n
        })
        .await?;
        let secs_tgt = t.elapsed().as_secs_f64();
        println!(
            "mqtt target (QoS 1, PUBACK awaited): {n} deliveries in {secs_tgt:.2} s: {:.0} deliveries/s \
             (the {n} events were ingested in the first {ingested:.2} s)",
            n as f64 / secs_tgt
        );
        app.site.shutdown().await?;
        anyhow::Ok(())
    })
}
