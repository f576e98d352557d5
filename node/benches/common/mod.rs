//! Load generator shared by the `ingress` and `cluster` benches: 1 KiB
//! CloudEvents over HTTP, closed loop (fixed number of clients) and open loop
//! (fixed schedule), ack latency percentiles.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// Size of the `data.payload` string that makes one event ~1 KiB of JSON.
pub const EVENT_DATA_BYTES: usize = 1024 - 160;

/// An environment variable as a number, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// 4 KiB write + `fdatasync` rate of the filesystem holding `dir`.
pub fn fsync_rate(dir: &std::path::Path, secs: f64) -> std::io::Result<f64> {
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
pub fn event(i: u64, payload: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"bench-{i}","source":"/bench","type":"bench.event","datacontenttype":"application/json","data":{{"seq":{i},"payload":"{payload}"}}}}"#
    )
}

/// `n` events as an `application/cloudevents-batch+json` body.
pub fn batch_body(first: u64, n: u64, payload: &str) -> String {
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

/// What one phase measured.
#[derive(Default)]
pub struct Stats {
    /// Ack latency of every acknowledged request (or message).
    pub latencies: Vec<Duration>,
    /// Events acknowledged.
    pub events: u64,
    /// Failed requests.
    pub errors: u64,
}

impl Stats {
    /// Add another client's figures.
    pub fn merge(&mut self, other: Stats) {
        self.latencies.extend(other.latencies);
        self.events += other.events;
        self.errors += other.errors;
    }
}

/// Percentile `p` (0..=1) of sorted latencies, in ms.
pub fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

/// A phase's figures as printed.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Events (or messages) acknowledged per second.
    pub rate: f64,
    /// Median ack latency, ms.
    pub p50: f64,
    /// 99th percentile ack latency, ms.
    pub p99: f64,
    /// Acknowledged requests (or messages).
    pub acks: usize,
    /// Failed requests.
    pub errors: u64,
}

/// Print one line for a phase and return its figures.
pub fn report(name: &str, mut s: Stats, elapsed: Duration) -> Summary {
    s.latencies.sort();
    let sum = Summary {
        rate: s.events as f64 / elapsed.as_secs_f64(),
        p50: pct(&s.latencies, 0.50),
        p99: pct(&s.latencies, 0.99),
        acks: s.latencies.len(),
        errors: s.errors,
    };
    println!(
        "{name:<40} {:>10.0} events/s   p50 {:>7.2} ms   p99 {:>7.2} ms   acks {:>7}   errors {}",
        sum.rate, sum.p50, sum.p99, sum.acks, sum.errors
    );
    sum
}

/// A client whose requests give up after 30 s (counted as errors), so a
/// stuck node cannot hang a phase.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

/// `clients` clients, each sending a request as soon as the previous one was
/// answered, for `secs`; client `k` talks to `urls[k % urls.len()]`.
/// `batch == 1` sends structured events, otherwise batches.
pub async fn closed_loop(
    urls: &[String],
    clients: u64,
    batch: u64,
    secs: u64,
    counter: Arc<Mutex<u64>>,
) -> (Stats, Duration) {
    closed_loop_with(http_client(), urls, clients, batch, secs, counter).await
}

/// [`closed_loop`] with a given client (e.g. one trusting a test CA).
pub async fn closed_loop_with(
    client: reqwest::Client,
    urls: &[String],
    clients: u64,
    batch: u64,
    secs: u64,
    counter: Arc<Mutex<u64>>,
) -> (Stats, Duration) {
    let payload: String = "x".repeat(EVENT_DATA_BYTES);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..clients {
        let client = client.clone();
        let url = urls[k as usize % urls.len()].clone();
        let payload = payload.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut st = Stats::default();
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
    let mut all = Stats::default();
    for t in tasks {
        if let Ok(s) = t.await {
            all.merge(s);
        }
    }
    (all, start.elapsed())
}

/// Batches of `batch` events on a fixed schedule totalling `rate` events/s
/// for `secs`, round-robin over `urls`; measures each request's ack latency.
pub async fn open_loop(
    urls: &[String],
    batch: u64,
    rate: f64,
    secs: u64,
    counter: Arc<Mutex<u64>>,
) -> (Stats, Duration) {
    let client = http_client();
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
        let url = urls[k as usize % urls.len()].clone();
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
    let mut st = Stats::default();
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

/// User + system CPU seconds used so far by the processes `pids` (from
/// `/proc/<pid>/stat`, clock ticks of 10 ms).
pub fn cpu_secs(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|st| {
            // Fields after the parenthesised command name: state is the 3rd
            // field, utime and stime the 14th and 15th.
            let rest = st.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .sum()
}

/// The release `strait` binary the process benches start: `STRAIT_BIN`, or
/// `strait` in the target directory this bench runs from
/// (`target/release/deps/<bench>-HASH`).
pub fn strait_bin() -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context as _;
    let path = match std::env::var_os("STRAIT_BIN") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::env::current_exe()?
            .parent()
            .and_then(std::path::Path::parent)
            .map(|release| release.join("strait"))
            .context("cannot locate the target directory")?,
    };
    if !path.exists() {
        anyhow::bail!(
            "{} does not exist: build it first with `cargo build --release -p strait-node` \
             (same CARGO_TARGET_DIR) or set STRAIT_BIN",
            path.display()
        );
    }
    Ok(path)
}
