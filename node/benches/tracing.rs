//! Tracing overhead: one node (`strait local up --site idc:1`, release
//! binary, fsync on) ingesting batches of 1 KiB events closed loop, with
//! trace export off, on at 100 % sampling (every request and event span
//! exported to an OTLP/HTTP sink in this process), and on with the
//! collector down (the endpoint refuses connections). The three are run
//! in turn, `BENCH_RUNS` times, and the medians compared.
//!
//! `cargo build --release -p strait-node && cargo bench -p strait-node --bench tracing`
//!
//! Knobs (env): `BENCH_SECS` (per phase, 8), `BENCH_CLIENTS` (16),
//! `BENCH_BATCH` (100), `BENCH_RUNS` (3), `STRAIT_BIN` (default: `strait`
//! next to this bench).

// Shared with the other benches; this one uses only part of it.
#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use common::{closed_loop, cpu_secs, env_or, report, strait_bin};
use serde_json::json;
use strait_node::local;
use tokio::sync::Mutex;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One node with `extra` merged into its config; stopped when dropped.
struct Node {
    bin: PathBuf,
    pid: u32,
    dir: tempfile::TempDir,
    url: String,
    metrics: String,
}

impl Node {
    async fn up(bin: &Path, extra: serde_json::Value) -> anyhow::Result<Node> {
        let dir = tempfile::Builder::new()
            .prefix("strait-trace-bench-")
            .tempdir()?;
        // `--extra` reads a file (YAML, so JSON too).
        let extra_file = dir.path().join("extra.json");
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
            pid: n.pid,
            url: format!("http://{}/v1/buses/default/events", n.http),
            metrics: format!("http://{}/metrics", n.http),
            dir,
        };
        let client = reqwest::Client::new();
        let status = format!("http://{}/v1/cluster", n.http);
        for _ in 0..200 {
            if let Ok(r) = client.get(&status).send().await
                && let Ok(v) = r.json::<serde_json::Value>().await
                && v["role"] == json!("leader")
            {
                return Ok(node);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the node did not become leader")
    }

    async fn metric(&self, name: &str) -> f64 {
        let Ok(r) = reqwest::get(&self.metrics).await else {
            return 0.0;
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .fold(0.0, |a, b| a + b)
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

/// An OTLP/HTTP sink: answers 200 to every export and counts the bytes.
async fn sink() -> anyhow::Result<(String, Arc<AtomicU64>)> {
    let bytes = Arc::new(AtomicU64::new(0));
    let counted = bytes.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(body.len() as u64, Ordering::Relaxed);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/traces", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, bytes))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> anyhow::Result<()> {
    let secs = env_or("BENCH_SECS", 8);
    let clients = env_or("BENCH_CLIENTS", 16);
    let batch = env_or("BENCH_BATCH", 100);
    let runs = env_or("BENCH_RUNS", 3);
    let bin = strait_bin()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (sink_url, sink_bytes) = sink().await?;
        // A port nothing listens on: the collector is down.
        let down = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            format!("http://{}/v1/traces", l.local_addr()?)
        };
        let phases = [
            ("off", json!({})),
            ("on, 100 %", json!({"telemetry": {"otlp_endpoint": sink_url, "sample_ratio": 1.0}})),
            ("on, collector down", json!({"telemetry": {"otlp_endpoint": down}})),
        ];
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); phases.len()];
        let mut cpus: Vec<Vec<f64>> = vec![Vec::new(); phases.len()];
        for run in 1..=runs {
            for (i, (name, extra)) in phases.iter().enumerate() {
                let node = Node::up(&bin, extra.clone()).await?;
                let before = sink_bytes.load(Ordering::Relaxed);
                let counter = Arc::new(Mutex::new(0u64));
                let cpu_before = cpu_secs(&[node.pid]);
                let (stats, elapsed) =
                    closed_loop(std::slice::from_ref(&node.url), clients, batch, secs, counter).await;
                let s = report(&format!("run {run}, tracing {name}"), stats, elapsed);
                rates[i].push(s.rate);
                // The node's CPU per acknowledged event (user + system): what
                // tracing costs the node itself, whatever else the machine runs.
                let events = (s.rate * elapsed.as_secs_f64()).max(1.0);
                let cpu_us = (cpu_secs(&[node.pid]) - cpu_before) * 1e6 / events;
                cpus[i].push(cpu_us);
                println!("    node CPU {cpu_us:.1} µs per event");
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let exported = node.metric("strait_trace_spans_exported_total").await;
                let dropped = node.metric("strait_trace_spans_dropped_total").await;
                println!(
                    "    spans exported {exported:.0}, dropped {dropped:.0}, OTLP bytes received {}",
                    sink_bytes.load(Ordering::Relaxed) - before
                );
            }
        }
        let off = median(rates[0].clone());
        let off_cpu = median(cpus[0].clone());
        println!("\nmedians of {runs} runs (events/s, batched {batch}, {clients} clients; node CPU per event):");
        for (i, (name, _)) in phases.iter().enumerate() {
            let m = median(rates[i].clone());
            let c = median(cpus[i].clone());
            println!(
                "  tracing {name:<20} {m:>10.0}   {:+.1} % against off   {c:>6.1} µs/event  {:+.1} % against off",
                (m / off - 1.0) * 100.0,
                (c / off_cpu - 1.0) * 100.0
            );
        }
        anyhow::Ok(())
    })
}
