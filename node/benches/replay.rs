//! Replay against live delivery: one node (`strait local up --site idc:1`,
//! release binary, fsync on), a rule with one HTTP target (an in-process
//! sink answering 200: a fast target) and an archive of everything on the
//! bus. Phases, in one run:
//! 1. **ingest**: `BENCH_REPLAY_EVENTS` (1,000,000) events of 1 KiB posted
//!    in batches by `BENCH_CLIENTS` clients, delivered live meanwhile;
//! 2. **live backlog**: the target's cursor moved back to the start
//!    (`seek`): its live worker delivers every stored event again, as fast
//!    as the target and the node allow;
//! 3. **replay**: a replay of the whole archive to the same rule.
//!
//! Phases 2 and 3 deliver the same events to the same target, from the
//! bus and from the archive: the replay's rate is compared with the live
//! backlog's. Also printed: archive bytes on disk per event.
//!
//! `cargo build --release -p strait-node && cargo bench -p strait-node --bench replay`
//!
//! Knobs (env): `BENCH_REPLAY_EVENTS` (1000000), `BENCH_CLIENTS` (8),
//! `BENCH_BATCH` (100), `BENCH_CONCURRENCY` (the target's `concurrency`,
//! 16), `STRAIT_BIN` (default: `strait` next to this bench). The node runs
//! with `dispatch.replay_max_events_per_sec: 0` (no cap): the figure is
//! what a replay can do; the default cap (1000/s) keeps replays from
//! crowding out live traffic.

// Shared with the other benches; this one uses only part of it.
#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::{batch_body, env_or, strait_bin};
use serde_json::{Value, json};
use strait_node::local;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What the sink saw: live deliveries and replayed ones (`ce-replayname`).
#[derive(Default)]
struct Seen {
    live: AtomicU64,
    replayed: AtomicU64,
}

/// An HTTP target answering 200 to everything, counting what it gets.
async fn sink(seen: Arc<Seen>) -> anyhow::Result<String> {
    let app = axum::Router::new().route(
        "/t",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let seen = seen.clone();
            async move {
                if headers.contains_key("ce-replayname") {
                    seen.replayed.fetch_add(1, Ordering::Relaxed);
                } else {
                    seen.live.fetch_add(1, Ordering::Relaxed);
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/t", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

struct Node {
    bin: PathBuf,
    dir: tempfile::TempDir,
    base: String,
    data: PathBuf,
}

impl Node {
    async fn up(bin: &Path) -> anyhow::Result<Node> {
        let dir = tempfile::Builder::new()
            .prefix("strait-replay-bench-")
            .tempdir()?;
        let extra_file = dir.path().join("extra.json");
        let extra = json!({"dispatch": {"replay_max_events_per_sec": 0}});
        std::fs::write(&extra_file, extra.to_string())?;
        let out = Command::new(bin)
            .args(["local", "up", "--dir"])
            .arg(dir.path().join("cluster"))
            .args(["--site", "idc:1", "--extra"])
            .arg(&extra_file)
            .output()
            .context("cannot run strait local up")?;
        if !out.status.success() {
            bail!(
                "strait local up failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let cluster = local::read_cluster(&dir.path().join("cluster"))?;
        let n = cluster.nodes.first().context("no node")?;
        let node = Node {
            bin: bin.to_path_buf(),
            base: format!("http://{}", n.http),
            data: dir.path().join("cluster"),
            dir,
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
            "PUT" => client.put(&url),
            _ => client.post(&url),
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
            .arg(self.dir.path().join("cluster"))
            .output();
    }
}

/// Bytes of the files under `dir` whose path contains `part`.
fn bytes_under(dir: &Path, part: &str) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            total += bytes_under(&p, part);
        } else if p.to_string_lossy().contains(part) {
            total += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}

/// Wait until `count` reaches `want`; the time from `since` to then.
async fn wait_for(count: &AtomicU64, want: u64, since: Instant, what: &str) -> anyhow::Result<f64> {
    let mut last = (count.load(Ordering::Relaxed), Instant::now());
    loop {
        let now = count.load(Ordering::Relaxed);
        if now >= want {
            return Ok(since.elapsed().as_secs_f64());
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            bail!("{what}: stuck at {now} of {want} for 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn main() -> anyhow::Result<()> {
    let events = env_or("BENCH_REPLAY_EVENTS", 1_000_000);
    let clients = env_or("BENCH_CLIENTS", 8);
    let batch = env_or("BENCH_BATCH", 100).max(1);
    let concurrency = env_or("BENCH_CONCURRENCY", 16);
    let bin = strait_bin()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let seen = Arc::new(Seen::default());
        let target = sink(seen.clone()).await?;
        let node = Node::up(&bin).await?;
        node.call(
            "PUT",
            "/v1/buses/default/rules/all",
            Some(json!({"pattern": {}, "targets": [
                {"id": "t", "type": "http", "endpoint": target, "concurrency": concurrency}
            ]})),
        )
        .await?;
        node.call("PUT", "/v1/buses/default/archives/all", Some(json!({})))
            .await?;
        let start_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64;
        println!(
            "{events} events of 1 KiB, {clients} clients posting batches of {batch}, target concurrency {concurrency}"
        );

        // 1. Ingest, delivered live meanwhile.
        let next = Arc::new(AtomicU64::new(0));
        let payload = "x".repeat(common::EVENT_DATA_BYTES);
        let url = format!("{}/v1/buses/default/events", node.base);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (next, payload, url) = (next.clone(), payload.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                loop {
                    let first = next.fetch_add(batch, Ordering::Relaxed);
                    if first >= events {
                        return Ok::<(), anyhow::Error>(());
                    }
                    let n = batch.min(events - first);
                    let body = batch_body(first, n, &payload);
                    let mut tries = 0;
                    loop {
                        let r = client
                            .post(&url)
                            .header("content-type", "application/cloudevents-batch+json")
                            .body(body.clone())
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status().is_success() => break,
                            other if tries < 20 => {
                                tries += 1;
                                let _ = other.map(|r| r.status());
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            Ok(r) => bail!("post failed: {}", r.status()),
                            Err(e) => bail!("post failed: {e}"),
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        let ingest_secs = started.elapsed().as_secs_f64();
        let live_secs = wait_for(&seen.live, events, started, "live delivery").await?;
        println!(
            "ingest          {:>9.0} events/s ({ingest_secs:.1} s); delivered live meanwhile: {:.0} events/s",
            events as f64 / ingest_secs,
            events as f64 / live_secs
        );
        let archive_bytes = bytes_under(&node.data, "/archive/");
        println!(
            "archive on disk {archive_bytes} bytes: {:.0} bytes per event",
            archive_bytes as f64 / events as f64
        );

        // 2. The same events again from the bus: the target's live worker
        // from a cursor moved back.
        let before = seen.live.load(Ordering::Relaxed);
        let started = Instant::now();
        let v = node
            .call(
                "POST",
                "/v1/buses/default/rules/all/targets/t/seek",
                Some(json!({"time": chrono::DateTime::from_timestamp_millis(start_ms as i64)
                    .context("time")?
                    .to_rfc3339()})),
            )
            .await?;
        let backlog = v["events"].as_u64().unwrap_or(0);
        let live_secs = wait_for(&seen.live, before + backlog, started, "live backlog").await?;
        let live_rate = backlog as f64 / live_secs;
        println!("live backlog    {live_rate:>9.0} events/s ({backlog} events in {live_secs:.1} s)");

        // 3. The same events from the archive.
        let end_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64
            + 1;
        let started = Instant::now();
        node.call(
            "POST",
            "/v1/replays/bench",
            Some(json!({"bus": "default", "archive": "all", "start": start_ms, "end": end_ms})),
        )
        .await?;
        let replay_secs = wait_for(&seen.replayed, events, started, "replay").await?;
        let replay_rate = events as f64 / replay_secs;
        println!("replay          {replay_rate:>9.0} events/s ({events} events in {replay_secs:.1} s)");
        for _ in 0..100 {
            let v = node.call("GET", "/v1/replays/bench", None).await?;
            if v["state"] == json!("COMPLETED") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("replay / live backlog: {:.2}×", replay_rate / live_rate.max(1.0));
        Ok(())
    })
}
