//! Ingress benchmark: one node, fsync on, HTTP on loopback, 1 KiB events.
//!
//! `cargo bench -p strait-node --bench ingress` prints:
//! - the disk's fsync rate measured in the same run (the physical limit an
//!   unbatched design would hit);
//! - unbatched (one structured event per request) and batched (100 events
//!   per request) throughput with p50/p99 ack latency, closed loop;
//! - ack latency at half the batched rate (open loop, fixed schedule).
//!
//! Knobs (env): `BENCH_SECS` (per phase, default 8), `BENCH_CLIENTS`
//! (default 64), `BENCH_BATCH` (default 100), `BENCH_DIR` (data dir parent).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strait_node::config::NodeConfig;
use tokio::sync::Mutex;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENT_DATA_BYTES: usize = 1024 - 160;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fsync_rate(dir: &std::path::Path, secs: f64) -> std::io::Result<f64> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let block = vec![7u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all(&block)?;
        f.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// One 1 KiB event in JSON form. Built with `format!` rather than a JSON
/// value so the load generator spends as little of the two cores as it can.
fn event(i: u64, payload: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"bench-{i}","source":"/bench","type":"bench.event","datacontenttype":"application/json","data":{{"seq":{i},"payload":"{payload}"}}}}"#
    )
}

fn batch_body(first: u64, n: u64, payload: &str) -> String {
    let mut body = String::with_capacity((n as usize) * 1100 + 2);
    body.push('[');
    for i in first..first + n {
        if i > first {
            body.push(',');
        }
        body.push_str(&event(i, payload));
    }
    body.push(']');
    body
}

struct Stats {
    latencies: Vec<Duration>,
    events: u64,
    errors: u64,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

fn report(name: &str, mut s: Stats, elapsed: Duration) -> f64 {
    s.latencies.sort();
    let rate = s.events as f64 / elapsed.as_secs_f64();
    println!(
        "{name:<34} {rate:>10.0} events/s   p50 {:>7.2} ms   p99 {:>7.2} ms   requests {:>7}   errors {}",
        pct(&s.latencies, 0.50),
        pct(&s.latencies, 0.99),
        s.latencies.len(),
        s.errors
    );
    rate
}

async fn closed_loop(
    url: &str,
    clients: u64,
    batch: u64,
    secs: u64,
    counter: Arc<Mutex<u64>>,
) -> (Stats, Duration) {
    let client = reqwest::Client::new();
    let payload: String = "x".repeat(EVENT_DATA_BYTES);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = client.clone();
        let url = url.to_string();
        let payload = payload.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut st = Stats {
                latencies: Vec::new(),
                events: 0,
                errors: 0,
            };
            while Instant::now() < deadline {
                let first = {
                    let mut c = counter.lock().await;
                    let f = *c;
                    *c += batch;
                    f
                };
                let (ct, body) = if batch == 1 {
                    ("application/cloudevents+json", event(first, &payload))
                } else {
                    (
                        "application/cloudevents-batch+json",
                        batch_body(first, batch, &payload),
                    )
                };
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .header("content-type", ct)
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().is_success() => {
                        let _ = resp.bytes().await;
                        st.latencies.push(t.elapsed());
                        st.events += batch;
                    }
                    _ => st.errors += 1,
                }
            }
            st
        }));
    }
    let mut all = Stats {
        latencies: Vec::new(),
        events: 0,
        errors: 0,
    };
    for t in tasks {
        if let Ok(s) = t.await {
            all.latencies.extend(s.latencies);
            all.events += s.events;
            all.errors += s.errors;
        }
    }
    (all, start.elapsed())
}

async fn open_loop(
    url: &str,
    batch: u64,
    rate: f64,
    secs: u64,
    counter: Arc<Mutex<u64>>,
) -> (Stats, Duration) {
    let client = reqwest::Client::new();
    let payload: String = "x".repeat(EVENT_DATA_BYTES);
    let requests_per_sec = (rate / batch as f64).max(1.0);
    let interval = Duration::from_secs_f64(1.0 / requests_per_sec);
    let total = (requests_per_sec * secs as f64) as u64;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for k in 0..total {
        let due = start + interval.mul_f64(k as f64);
        tokio::time::sleep_until(due.into()).await;
        let first = {
            let mut c = counter.lock().await;
            let f = *c;
            *c += batch;
            f
        };
        let body = batch_body(first, batch, &payload);
        let client = client.clone();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = client
                .post(&url)
                .header("content-type", "application/cloudevents-batch+json")
                .body(body)
                .send()
                .await;
            match r {
                Ok(resp) if resp.status().is_success() => {
                    let _ = resp.bytes().await;
                    Some(t.elapsed())
                }
                _ => None,
            }
        }));
    }
    let mut st = Stats {
        latencies: Vec::new(),
        events: 0,
        errors: 0,
    };
    for t in tasks {
        match t.await {
            Ok(Some(l)) => {
                st.latencies.push(l);
                st.events += batch;
            }
            _ => st.errors += 1,
        }
    }
    (st, start.elapsed())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing to parse.
    let secs = env_or("BENCH_SECS", 8);
    let clients = env_or("BENCH_CLIENTS", 64);
    let batch = env_or("BENCH_BATCH", 100);
    let parent = std::env::var("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = tempfile::Builder::new()
        .prefix("strait-bench-")
        .tempdir_in(parent)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let fsyncs = fsync_rate(dir.path(), 2.0)?;
        println!("disk fsync rate (4 KiB write + fdatasync, same filesystem): {fsyncs:.0}/s");
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
            batching: strait_node::config::Batching {
                max_in_flight: env_or("BENCH_IN_FLIGHT", 2) as usize,
                ..Default::default()
            },
            state_flush_ms: env_or("BENCH_STATE_FLUSH_MS", NodeConfig::default().state_flush_ms),
            ..NodeConfig::default()
        };
        let app = strait_node::app::start(cfg).await?;
        let router = strait_node::api::router(app.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        let url = format!("http://{addr}/v1/buses/default/events");
        let counter = Arc::new(Mutex::new(0u64));
        println!("1 KiB events, {clients} concurrent clients, {secs} s per phase, one node, fsync on every commit");
        let (s, e) = closed_loop(&url, clients, 1, secs, counter.clone()).await;
        report("unbatched (1 event/request)", s, e);
        let (s, e) = closed_loop(&url, clients, batch, secs, counter.clone()).await;
        let batched = report(&format!("batched ({batch} events/request)"), s, e);
        let half = batched / 2.0;
        let (s, e) = open_loop(&url, batch, half, secs, counter.clone()).await;
        report(&format!("open loop at {half:.0} events/s"), s, e);
        let stored = app.site.state.stored_events().unwrap_or(0);
        println!("events stored: {stored}");
        app.site.shutdown().await?;
        anyhow::Ok(())
    })
}
