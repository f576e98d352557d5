//! The NATS connector: one node (`strait local up --site idc:1`, release
//! binary, fsync on) and one `nats-server -js` (file storage), in one run:
//! 1. **HTTP ingest**: batches of 1 KiB events posted closed loop for
//!    `BENCH_SECS` — the node's reference rate;
//! 2. **JetStream source**: `BENCH_NATS_EVENTS` 1 KiB CloudEvents (binary
//!    mode) published to a stream first, then a `nats` source with that
//!    stream created: the rate at which they become committed events;
//! 3. **JetStream target**: as many events posted to a bus whose rule has
//!    a `nats` target with `jetstream: true`: the rate at which they land
//!    in the target stream (from the first post to the last message).
//!
//! `cargo build --release -p strait-node && cargo bench -p strait-node --bench nats`
//!
//! Knobs (env): `BENCH_SECS` (8), `BENCH_CLIENTS` (8), `BENCH_BATCH` (100),
//! `BENCH_NATS_EVENTS` (200000), `BENCH_NATS_MAX_MESSAGES` (the source's
//! `maxMessages`, 100 by default as in a source without it),
//! `NATS_SERVER` (default `nats-server` on `PATH`, else `/usr/sbin`),
//! `STRAIT_BIN` (default: `strait` next to this bench).

// Shared with the other benches; this one uses only part of it.
#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::{self, stream};
use common::{batch_body, closed_loop, env_or, report, strait_bin};
use serde_json::{Value, json};
use strait_node::local;
use tokio::sync::Mutex;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn nats_server() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .context("nats-server is not installed (scripts/setup-test-deps installs it)")
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Node {
    bin: PathBuf,
    dir: PathBuf,
    base: String,
}

impl Node {
    async fn up(bin: &Path, dir: &Path) -> anyhow::Result<Node> {
        let out = Command::new(bin)
            .args(["local", "up", "--dir"])
            .arg(dir)
            .args(["--site", "idc:1"])
            .output()
            .context("cannot run strait local up")?;
        if !out.status.success() {
            bail!(
                "strait local up failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let cluster = local::read_cluster(dir)?;
        let n = cluster.nodes.first().context("no node")?;
        let node = Node {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            base: format!("http://{}", n.http),
        };
        for _ in 0..200 {
            if let Ok(v) = node.call("GET", "/v1/cluster", None).await
                && v["role"] == json!("leader")
            {
                return Ok(node);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the node did not become leader")
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let client = reqwest::Client::new();
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => client.get(&url),
            _ => client.put(&url),
        };
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let r = req.send().await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{method} {path}: {status} {v}");
        }
        Ok(v)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .args(["local", "down", "--dir"])
            .arg(&self.dir)
            .output();
    }
}

/// Poll `f` every 20 ms until it returns `Some`; fails when the value it
/// reports has not moved for 60 s.
async fn until<T>(
    what: &str,
    mut f: impl AsyncFnMut() -> anyhow::Result<(u64, Option<T>)>,
) -> anyhow::Result<T> {
    let mut last = (u64::MAX, Instant::now());
    loop {
        let (progress, done) = f().await?;
        if let Some(t) = done {
            return Ok(t);
        }
        if progress != last.0 {
            last = (progress, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            bail!("{what}: stuck at {progress} for 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn main() -> anyhow::Result<()> {
    let secs = env_or("BENCH_SECS", 8);
    let clients = env_or("BENCH_CLIENTS", 8);
    let batch = env_or("BENCH_BATCH", 100).max(1);
    let events = env_or("BENCH_NATS_EVENTS", 200_000);
    let max_messages = env_or("BENCH_NATS_MAX_MESSAGES", 100);
    let bin = strait_bin()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let dir = tempfile::Builder::new()
            .prefix("strait-nats-bench-")
            .tempdir()?;
        let port = strait_federation::transport::free_loopback_port()?;
        let log = std::fs::File::create(dir.path().join("nats.log"))?;
        let _nats = Proc(
            Command::new(nats_server()?)
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(dir.path().join("js"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("cannot start nats-server")?,
        );
        let url = format!("nats://127.0.0.1:{port}");
        let client = until("nats-server to answer", async || {
            Ok((0, async_nats::connect(url.as_str()).await.ok()))
        })
        .await?;
        let js = jetstream::new(client);
        for (name, subject) in [("IN", "in.>"), ("OUT", "out.>")] {
            js.create_stream(stream::Config {
                name: name.into(),
                subjects: vec![subject.into()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("create stream {name}: {e}"))?;
        }
        let node = Node::up(&bin, &dir.path().join("cluster")).await?;
        println!(
            "1 KiB events; HTTP: {clients} clients, batches of {batch}, {secs} s; NATS: {events} messages, source maxMessages {max_messages}"
        );

        // 1. HTTP ingest.
        let ingest = format!("{}/v1/buses/default/events", node.base);
        let (stats, elapsed) = closed_loop(
            std::slice::from_ref(&ingest),
            clients,
            batch,
            secs,
            Arc::new(Mutex::new(0u64)),
        )
        .await;
        let http = report("HTTP ingest", stats, elapsed).rate;

        // 2. JetStream source: the stream filled first.
        let payload = "x".repeat(common::EVENT_DATA_BYTES);
        let started = Instant::now();
        let mut acks = Vec::with_capacity(1000);
        for i in 0..events {
            let mut h = async_nats::HeaderMap::new();
            h.insert("ce-specversion", "1.0");
            h.insert("ce-id", format!("nats-{i}").as_str());
            h.insert("ce-source", "/bench/nats");
            h.insert("ce-type", "bench.nats");
            h.insert("content-type", "application/json");
            let body = format!(r#"{{"seq":{i},"payload":"{payload}"}}"#);
            acks.push(
                js.publish_with_headers(format!("in.{}", i % 16), h, body.into())
                    .await
                    .map_err(|e| anyhow::anyhow!("publish: {e}"))?,
            );
            if acks.len() == 1000 {
                for a in acks.drain(..) {
                    a.await.map_err(|e| anyhow::anyhow!("publish ack: {e}"))?;
                }
            }
        }
        for a in acks.drain(..) {
            a.await.map_err(|e| anyhow::anyhow!("publish ack: {e}"))?;
        }
        println!(
            "published       {:>9.0} messages/s into the stream (before the source reads)",
            events as f64 / started.elapsed().as_secs_f64()
        );
        let started = Instant::now();
        node.call(
            "PUT",
            "/v1/sources/bench",
            Some(json!({"type": "nats", "bus": "default", "url": url, "subject": "in.>",
                        "stream": "IN", "maxMessages": max_messages})),
        )
        .await?;
        until("the source to commit every message", async || {
            let v = node.call("GET", "/v1/sources/bench", None).await?;
            let committed = v["status"]["committed"].as_u64().unwrap_or(0);
            Ok((committed, (committed >= events).then_some(())))
        })
        .await?;
        let source = events as f64 / started.elapsed().as_secs_f64();
        println!(
            "NATS source     {source:>9.0} events/s committed: {:.2}× HTTP ingest",
            source / http.max(1.0)
        );

        // 3. JetStream target.
        node.call("PUT", "/v1/buses/out", Some(json!({}))).await?;
        node.call(
            "PUT",
            "/v1/buses/out/rules/to-nats",
            Some(json!({"pattern": {}, "targets": [{"id": "n", "type": "nats", "url": url,
                        "subject": "out.events", "jetstream": true}]})),
        )
        .await?;
        let out_url = format!("{}/v1/buses/out/events", node.base);
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (next, payload, out_url) = (next.clone(), payload.clone(), out_url.clone());
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::new();
                loop {
                    let first = next.fetch_add(batch, Ordering::Relaxed);
                    if first >= events {
                        return Ok::<(), anyhow::Error>(());
                    }
                    let body = batch_body(first, batch.min(events - first), &payload);
                    let r = http
                        .post(&out_url)
                        .header("content-type", "application/cloudevents-batch+json")
                        .body(body)
                        .send()
                        .await?;
                    if !r.status().is_success() {
                        bail!("post to bus out: {}", r.status());
                    }
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        let posted = started.elapsed().as_secs_f64();
        let mut out = js
            .get_stream("OUT")
            .await
            .map_err(|e| anyhow::anyhow!("stream OUT: {e}"))?;
        until("the target stream to hold every event", async || {
            let n = out
                .info()
                .await
                .map_err(|e| anyhow::anyhow!("stream info: {e}"))?
                .state
                .messages;
            Ok((n, (n >= events).then_some(())))
        })
        .await?;
        let target = events as f64 / started.elapsed().as_secs_f64();
        println!(
            "NATS target     {target:>9.0} deliveries/s into JetStream (posting took {posted:.1} s)"
        );
        Ok(())
    })
}
