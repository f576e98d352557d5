//! Federation link benchmark (issue 7): two sites of one node each, idc and
//! aws, started with `strait local up` from the **release** binary, joined
//! by a QUIC link. A rule at idc sends 1 KiB events either to an HTTP
//! receiver "at idc" (no link) or to the same receiver through a target of
//! site aws (idc routes, puts the delivery in its replicated outbox, the link
//! ships it, aws commits it to its inbox and delivers).
//!
//! ```sh
//! cargo build --release -p strait-node
//! STRAIT_BIN=$PWD/target/release/strait cargo bench -p strait-chaos-tests --bench federation
//! ```
//!
//! Prints, in one run:
//! 1. throughput (closed loop, batched ingest at idc) delivered end to end,
//!    local target vs target at aws, with the CPU of both nodes and of the
//!    receiver over the measured window;
//! 2. latency from the ingest ack at idc to arrival at the receiver at a
//!    moderate open-loop rate: local, over the link, over the link through a
//!    `UdpProxy` without delay and with a one-way delay (50 ms);
//! 3. backlog drain: the link partitioned (proxy) while producing at a steady
//!    rate, then healed; `outboxDepth` at the end of the partition, time to
//!    the first delivery after the heal and the drain rate.
//!
//! Knobs (env): `STRAIT_BIN` (required: the release binary), `BENCH_SECS`
//! (throughput window, 10), `BENCH_WARMUP_SECS` (2), `BENCH_CLIENTS` (16),
//! `BENCH_BATCH` (100), `BENCH_TARGET_CONCURRENCY` (64, both targets),
//! `BENCH_LAT_RATE` (2000 ev/s), `BENCH_LAT_BATCH` (10 events/request),
//! `BENCH_LAT_SECS` (10), `BENCH_DELAY_MS` (50), `BENCH_DELAY_SETTLE_SECS`
//! (2: unmeasured traffic after the delay is switched on), `BENCH_PARTITION_RATE`
//! (2000 ev/s), `BENCH_PARTITION_SECS` (60), `BENCH_DRAIN_TIMEOUT_SECS` (300),
//! `BENCH_EXTRA` (JSON merged into every node's config), `BENCH_LAT_DUMP`
//! (a directory: one CSV of seq, ack time, latency and wall-clock ms per
//! latency phase).
//! `STRAIT_CHAOS_KEEP=1` keeps the cluster directory (configs, logs).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use strait_chaos_tests::{LocalCluster, NodeClient, UdpProxy, http_target, retry};

const BUS: &str = "default";
/// Event data so that one structured event is about 1 KiB.
const EVENT_DATA_BYTES: usize = 1024 - 160;
/// Phases (the first number of an event id `b{phase}-{seq}`).
const PHASES: usize = 8;
const P_WARM: usize = 0;
const P_TP_LOCAL: usize = 1;
const P_TP_REMOTE: usize = 2;
const P_LAT_LOCAL: usize = 3;
const P_LAT_REMOTE: usize = 4;
const P_LAT_PROXY: usize = 5;
const P_LAT_DELAY: usize = 6;
const P_PARTITION: usize = 7;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------- receiver

/// What the receiver saw: counts per phase, and (when recording) the arrival
/// of each event.
struct Sink {
    counts: [AtomicU64; PHASES],
    other: AtomicU64,
    record: [AtomicBool; PHASES],
    arrivals: Mutex<Vec<(usize, u64, Instant)>>,
}

impl Sink {
    fn count(&self, phase: usize) -> u64 {
        self.counts[phase].load(Ordering::Relaxed)
    }
}

fn parse_id(id: &[u8]) -> Option<(usize, u64)> {
    let s = std::str::from_utf8(id).ok()?.strip_prefix('b')?;
    let (p, n) = s.split_once('-')?;
    let p: usize = p.parse().ok()?;
    (p < PHASES).then_some(())?;
    Some((p, n.parse().ok()?))
}

async fn receive(State(sink): State<Arc<Sink>>, headers: HeaderMap, _body: Bytes) -> StatusCode {
    let at = Instant::now();
    match headers.get("ce-id").and_then(|v| parse_id(v.as_bytes())) {
        Some((p, seq)) => {
            sink.counts[p].fetch_add(1, Ordering::Relaxed);
            if sink.record[p].load(Ordering::Relaxed) {
                lock(&sink.arrivals).push((p, seq, at));
            }
        }
        None => {
            sink.other.fetch_add(1, Ordering::Relaxed);
        }
    }
    StatusCode::OK
}

/// A fast counting HTTP receiver on its own two-thread runtime, so its CPU
/// can be measured apart from the load generator.
struct FastReceiver {
    addr: std::net::SocketAddr,
    sink: Arc<Sink>,
    tids: Arc<Mutex<Vec<u32>>>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

fn thread_id() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

impl FastReceiver {
    fn start() -> anyhow::Result<FastReceiver> {
        let sink = Arc::new(Sink {
            counts: Default::default(),
            other: AtomicU64::new(0),
            record: Default::default(),
            arrivals: Mutex::new(Vec::new()),
        });
        let tids = Arc::new(Mutex::new(Vec::new()));
        let t2 = tids.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-receiver")
            .on_thread_start(move || {
                if let Some(t) = thread_id() {
                    lock(&t2).push(t);
                }
            })
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("receiver bind")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new().fallback(receive).with_state(sink.clone());
        std::thread::Builder::new()
            .name("bench-receiver-main".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(l) = tokio::net::TcpListener::from_std(listener) else {
                        eprintln!("receiver: cannot adopt the listener");
                        return;
                    };
                    let _ = axum::serve(l, app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await;
                });
            })?;
        Ok(FastReceiver {
            addr,
            sink,
            tids,
            _shutdown: tx,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn cpu_ticks(&self) -> u64 {
        lock(&self.tids)
            .iter()
            .filter_map(|t| cpu_ticks(&format!("/proc/self/task/{t}/stat")))
            .sum()
    }

    async fn wait_count(&self, phase: usize, n: u64, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.sink.count(phase) >= n {
                return Ok(Instant::now());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "phase {phase}: receiver has {} of {n} events after {timeout:?}",
                self.sink.count(phase)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

// ---------------------------------------------------------------- CPU

/// utime + stime (clock ticks) from a `/proc/.../stat` file.
fn cpu_ticks(path: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The pid of the `strait serve` process running `config`.
fn pid_of(config: &Path) -> Option<u32> {
    let want = config.to_str()?;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.contains(&b"serve".as_slice()) && args.contains(&want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// CPU use of the two nodes and the receiver between two samples.
#[derive(Clone, Copy, Default)]
struct CpuSample {
    idc: u64,
    aws: u64,
    recv: u64,
    at: Option<Instant>,
}

struct Cpu {
    idc_pid: u32,
    aws_pid: u32,
    hz: f64,
}

impl Cpu {
    fn sample(&self, r: &FastReceiver) -> CpuSample {
        CpuSample {
            idc: cpu_ticks(&format!("/proc/{}/stat", self.idc_pid)).unwrap_or(0),
            aws: cpu_ticks(&format!("/proc/{}/stat", self.aws_pid)).unwrap_or(0),
            recv: r.cpu_ticks(),
            at: Some(Instant::now()),
        }
    }

    /// (idc, aws, receiver) in % of one core.
    fn pct(&self, a: CpuSample, b: CpuSample) -> (f64, f64, f64) {
        let secs = match (a.at, b.at) {
            (Some(x), Some(y)) => (y - x).as_secs_f64().max(1e-9),
            _ => 1.0,
        };
        let p = |x: u64, y: u64| (y.saturating_sub(x)) as f64 / self.hz / secs * 100.0;
        (p(a.idc, b.idc), p(a.aws, b.aws), p(a.recv, b.recv))
    }
}

// ---------------------------------------------------------------- load

fn event(phase: usize, seq: u64, source: &str, payload: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"b{phase}-{seq}","source":"{source}","type":"bench.event","datacontenttype":"application/json","data":{{"seq":{seq},"payload":"{payload}"}}}}"#
    )
}

fn batch_body(phase: usize, first: u64, n: u64, source: &str, payload: &str) -> String {
    let mut body = String::with_capacity((n as usize) * 1100 + 2);
    body.push('[');
    for seq in first..first + n {
        if seq > first {
            body.push(',');
        }
        body.push_str(&event(phase, seq, source, payload));
    }
    body.push(']');
    body
}

struct Load {
    http: reqwest::Client,
    url: String,
    payload: Arc<String>,
    /// The receiver's counts (to bound the backlog).
    sink: Arc<Sink>,
}

impl Load {
    async fn post(&self, body: String) -> bool {
        match self
            .http
            .post(&self.url)
            .header("content-type", "application/cloudevents-batch+json")
            .body(body)
            .send()
            .await
        {
            // 200: every entry accepted (207 would be a partial answer).
            Ok(r) if r.status().as_u16() == 200 => r.bytes().await.is_ok(),
            _ => false,
        }
    }
}

/// Closed loop: `clients` tasks posting batches until `stop`, never more
/// than `max_backlog` events ahead of the receiver; returns counters of
/// acknowledged events and failed requests (live) and the join handles.
fn closed_loop(
    load: &Arc<Load>,
    phase: usize,
    source: &str,
    clients: u64,
    batch: u64,
    stop: &Arc<AtomicBool>,
    max_backlog: u64,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let next = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (load, next, acked, errors, stop) = (
            load.clone(),
            next.clone(),
            acked.clone(),
            errors.clone(),
            stop.clone(),
        );
        let source = source.to_string();
        let sink = load.sink.clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // Bounded backlog: ingest no further ahead of the receiver
                // than `max_backlog` (a closed loop end to end), so the
                // window measures what the pipeline sustains and the next
                // phase does not queue behind this one.
                if acked.load(Ordering::Relaxed) > sink.count(phase) + max_backlog {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let first = next.fetch_add(batch, Ordering::Relaxed);
                let body = batch_body(phase, first, batch, &source, &load.payload);
                if load.post(body).await {
                    acked.fetch_add(batch, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    (acked, errors, tasks)
}

/// Open loop: `rate` events/s in batches of `batch` for `secs`, on a fixed
/// schedule. Returns the ack instant of every event
/// (`None`: not acknowledged) — index = seq.
async fn open_loop(
    load: &Arc<Load>,
    phase: usize,
    source: &str,
    rate: u64,
    batch: u64,
    secs: u64,
) -> Vec<Option<Instant>> {
    open_loop_from(load, phase, 0, source, rate, batch, secs).await
}

/// [`open_loop`] with event sequence numbers from `base` (index `i` of the
/// answer is event `base + i`).
async fn open_loop_from(
    load: &Arc<Load>,
    phase: usize,
    base: u64,
    source: &str,
    rate: u64,
    batch: u64,
    secs: u64,
) -> Vec<Option<Instant>> {
    let per_sec = (rate as f64 / batch as f64).max(1.0);
    let interval = Duration::from_secs_f64(1.0 / per_sec);
    let total = (per_sec * secs as f64) as u64;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for k in 0..total {
        tokio::time::sleep_until((start + interval.mul_f64(k as f64)).into()).await;
        let first = k * batch;
        let body = batch_body(phase, base + first, batch, source, &load.payload);
        let load = load.clone();
        tasks.push(tokio::spawn(async move {
            let ok = load.post(body).await;
            (first, ok.then(Instant::now))
        }));
    }
    let mut acks = vec![None; (tasks.len() as u64 * batch) as usize];
    for t in tasks {
        if let Ok((first, Some(at))) = t.await {
            acks[first as usize..(first + batch) as usize].fill(Some(at));
        }
    }
    acks
}

/// The machine's count of UDP datagrams dropped for a full socket buffer.
fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------- cluster

async fn link_out(client: &NodeClient, remote: &str) -> anyhow::Result<Value> {
    let r = client.get_json("/v1/cluster").await?;
    r.expect_status(200, "GET /v1/cluster")?;
    let v = r.json().context("cluster status JSON")?;
    v["links"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|x| x["direction"] == json!("out") && x["remote"] == json!(remote))
                .cloned()
        })
        .with_context(|| format!("no outgoing link to {remote} in {v}"))
}

async fn wait_leader(client: &NodeClient, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get_json("/v1/cluster").await
            && let Some(v) = r.json()
            && v["role"] == json!("leader")
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what} ({}) has no leader after 30 s",
            client.base_url()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- figures

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Backlog per stage: events not yet dispatched at idc (the rule target's
/// `lag`), the idc outbox to aws (`outboxDepth`), aws's inbox not yet
/// delivered (`undelivered`).
#[derive(Clone, Copy, Default)]
struct Depths {
    dispatch: u64,
    outbox: u64,
    inbox: u64,
}

impl Depths {
    fn max(self, o: Depths) -> Depths {
        Depths {
            dispatch: self.dispatch.max(o.dispatch),
            outbox: self.outbox.max(o.outbox),
            inbox: self.inbox.max(o.inbox),
        }
    }
}

impl std::fmt::Display for Depths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dispatch lag {} / outbox {} / remote inbox {}",
            self.dispatch, self.outbox, self.inbox
        )
    }
}

struct Throughput {
    ingest: f64,
    delivered: f64,
    cpu: (f64, f64, f64),
    max_depths: Depths,
    end_depths: Depths,
    drain_secs: f64,
    /// Events delivered / (first request .. last delivery).
    sustained: f64,
    drained: bool,
    total: u64,
    errors: u64,
}

struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
    n: usize,
    missing: usize,
}

struct Bench {
    c: LocalCluster,
    idc_idx: usize,
    aws_idx: usize,
    idc: NodeClient,
    aws: NodeClient,
    recv: FastReceiver,
    load: Arc<Load>,
    cpu: Cpu,
    drain_timeout: Duration,
}

impl Bench {
    fn ensure_alive(&mut self, when: &str) -> anyhow::Result<()> {
        for i in [self.idc_idx, self.aws_idx] {
            let n = &mut self.c.nodes[i];
            if !n.is_running() {
                anyhow::bail!(
                    "{when}: node {} of site {} is not running (log: {})",
                    n.id,
                    n.site,
                    n.log.display()
                );
            }
        }
        self.c.ensure_no_panic()
    }

    async fn depths(&self, rule: &str) -> Depths {
        let mut d = Depths::default();
        if let Ok(r) = self.idc.get_rule(BUS, rule).await
            && let Some(v) = r.json()
        {
            d.dispatch = v["status"]["targets"][rule]["lag"].as_u64().unwrap_or(0);
        }
        if let Ok(l) = link_out(&self.idc, "aws").await {
            d.outbox = l["outboxDepth"].as_u64().unwrap_or(0);
        }
        if let Ok(r) = self.aws.get_json("/v1/cluster").await
            && let Some(v) = r.json()
            && let Some(l) = v["links"].as_array()
        {
            d.inbox = l
                .iter()
                .filter(|x| x["direction"] == json!("in"))
                .filter_map(|x| x["undelivered"].as_u64())
                .sum();
        }
        d
    }

    async fn throughput(
        &mut self,
        phase: usize,
        source: &str,
        remote: bool,
    ) -> anyhow::Result<Throughput> {
        let clients = env_or("BENCH_CLIENTS", 16);
        let batch = env_or("BENCH_BATCH", 100);
        let warmup = Duration::from_secs(env_or("BENCH_WARMUP_SECS", 2));
        let window = Duration::from_secs(env_or("BENCH_SECS", 10));
        let stop = Arc::new(AtomicBool::new(false));
        let max_backlog = env_or("BENCH_MAX_BACKLOG", 20_000);
        let started = Instant::now();
        let (acked, errors, tasks) = closed_loop(
            &self.load,
            phase,
            source,
            clients,
            batch,
            &stop,
            max_backlog,
        );
        tokio::time::sleep(warmup).await;
        let (a0, d0, c0) = (
            acked.load(Ordering::Relaxed),
            self.recv.sink.count(phase),
            self.cpu.sample(&self.recv),
        );
        let t0 = Instant::now();
        let rule = if remote { "remote" } else { "local" };
        let mut max_depths = Depths::default();
        let mut end_depths = Depths::default();
        while t0.elapsed() < window {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            end_depths = self.depths(rule).await;
            max_depths = max_depths.max(end_depths);
        }
        let (a1, d1, c1) = (
            acked.load(Ordering::Relaxed),
            self.recv.sink.count(phase),
            self.cpu.sample(&self.recv),
        );
        let secs = t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.context("load task")?;
        }
        let stopped = Instant::now();
        let total = acked.load(Ordering::Relaxed);
        let drained = self.recv.wait_count(phase, total, self.drain_timeout).await;
        if let Err(e) = &drained {
            println!("  NOT DRAINED: {e:#}");
        }
        let end = drained.unwrap_or_else(|_| Instant::now());
        let got = self.recv.sink.count(phase).min(total);
        self.ensure_alive("throughput")?;
        Ok(Throughput {
            ingest: (a1 - a0) as f64 / secs,
            delivered: (d1 - d0) as f64 / secs,
            cpu: self.cpu.pct(c0, c1),
            max_depths,
            end_depths,
            drain_secs: (end - stopped).as_secs_f64(),
            sustained: got as f64 / (end - started).as_secs_f64(),
            drained: got == total,
            total,
            errors: errors.load(Ordering::Relaxed),
        })
    }

    async fn latency(&mut self, phase: usize, source: &str) -> anyhow::Result<Latency> {
        let rate = env_or("BENCH_LAT_RATE", 2000);
        let batch = env_or("BENCH_LAT_BATCH", 10);
        let secs = env_or("BENCH_LAT_SECS", 10);
        self.recv.sink.record[phase].store(true, Ordering::Relaxed);
        let acks = open_loop(&self.load, phase, source, rate, batch, secs).await;
        let acked = acks.iter().filter(|a| a.is_some()).count();
        let waited = self
            .recv
            .wait_count(
                phase,
                acked as u64,
                Duration::from_secs(env_or("BENCH_LAT_WAIT_SECS", 60)),
            )
            .await;
        self.recv.sink.record[phase].store(false, Ordering::Relaxed);
        let mut first: HashMap<u64, Instant> = HashMap::new();
        for (p, seq, at) in lock(&self.recv.sink.arrivals).iter() {
            if *p == phase {
                first.entry(*seq).or_insert(*at);
            }
        }
        let mut lat = Vec::with_capacity(acked);
        let mut missing = 0;
        // BENCH_LAT_DUMP=<dir>: one CSV per phase (seq, ack time since the
        // first ack, latency) to see when slow events happen.
        let dump = std::env::var_os("BENCH_LAT_DUMP");
        let mut csv = String::new();
        let t0 = acks.iter().flatten().min().copied();
        // Wall clock of t0, to line slow events up with node logs.
        let wall0 = t0.map(|t0| {
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            unix.as_secs_f64() * 1000.0 - t0.elapsed().as_secs_f64() * 1000.0
        });
        for (seq, ack) in acks.iter().enumerate() {
            let Some(ack) = ack else { continue };
            match first.get(&(seq as u64)) {
                // Signed: a delivery may arrive before the client has read
                // its ack.
                Some(at) => {
                    let ms = if *at >= *ack {
                        (*at - *ack).as_secs_f64() * 1000.0
                    } else {
                        -((*ack - *at).as_secs_f64() * 1000.0)
                    };
                    if let (Some(_), Some(t0), Some(wall0)) = (&dump, t0, wall0) {
                        let since = (*ack - t0).as_secs_f64() * 1000.0;
                        let wall = wall0 + since;
                        csv.push_str(&format!("{seq},{since:.3},{ms:.3},{wall:.1}\n"));
                    }
                    lat.push(ms);
                }
                None => missing += 1,
            }
        }
        if let Some(dir) = &dump {
            let path = std::path::Path::new(dir).join(format!("lat-{phase}.csv"));
            if let Err(e) = std::fs::write(&path, csv) {
                println!("  cannot write {}: {e}", path.display());
            }
        }
        if let Err(e) = &waited {
            println!("  INCOMPLETE: {e:#}");
        }
        lat.sort_by(f64::total_cmp);
        self.ensure_alive("latency")?;
        Ok(Latency {
            p50: pct(&lat, 0.5),
            p99: pct(&lat, 0.99),
            max: lat.last().copied().unwrap_or(f64::NAN),
            n: lat.len(),
            missing,
        })
    }
}

fn put_rules_body(source: &str, target: Value) -> Value {
    json!({"pattern": {"source": [source]}, "targets": [target]})
}

async fn run() -> anyhow::Result<()> {
    let bin = std::env::var_os("STRAIT_BIN").context(
        "set STRAIT_BIN to the release binary: `cargo build --release -p strait-node` then \
         STRAIT_BIN=$PWD/target/release/strait (or $CARGO_TARGET_DIR/release/strait)",
    )?;
    let bin = std::path::PathBuf::from(bin);
    anyhow::ensure!(bin.is_file(), "STRAIT_BIN={} is not a file", bin.display());
    if !bin.components().any(|c| c.as_os_str() == "release") {
        eprintln!(
            "warning: STRAIT_BIN={} does not look like a release build; figures will be low",
            bin.display()
        );
    }
    let load_avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "federation link bench: {} cores, load average at start {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_avg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    let recv = FastReceiver::start()?;
    // BENCH_EXTRA: JSON merged into every node's config (e.g.
    // `{"snapshot_every": 100000}`).
    let extra = match std::env::var("BENCH_EXTRA") {
        Ok(v) => Some(serde_json::from_str::<Value>(&v).context("BENCH_EXTRA is not JSON")?),
        Err(_) => None,
    };
    let c = LocalCluster::up(&[("idc", 1), ("aws", 1)], extra)
        .await
        .context("starting sites idc:1 and aws:1 (strait local up)")?;
    let idc_idx = *c.site_nodes("idc").first().context("no idc node")?;
    let aws_idx = *c.site_nodes("aws").first().context("no aws node")?;
    let idc = c.client_at(idc_idx)?;
    let aws = c.client_at(aws_idx)?;
    wait_leader(&idc, "site idc").await?;
    wait_leader(&aws, "site aws").await?;
    let pid = |i: usize| {
        let n = &c.nodes[i];
        pid_of(&n.config).with_context(|| format!("no process for {}", n.config.display()))
    };
    let cpu = Cpu {
        idc_pid: pid(idc_idx)?,
        aws_pid: pid(aws_idx)?,
        hz: clock_ticks_per_sec(),
    };

    let concurrency = env_or("BENCH_TARGET_CONCURRENCY", 64);
    let target = |id: &str, site: Option<&str>| {
        let mut t = http_target(id, &recv.url(&format!("/{id}")), retry(100_000, 20, 500));
        t["concurrency"] = json!(concurrency);
        if let Some(s) = site {
            t["site"] = json!(s);
        }
        t
    };
    for (rule, source, t) in [
        ("local", "bench.local", target("local", None)),
        ("remote", "bench.remote", target("remote", Some("aws"))),
    ] {
        // The default bus appears shortly after the site elects its leader.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = idc
                .put_rule(BUS, rule, &put_rules_body(source, t.clone()))
                .await?;
            if r.status == 200 || Instant::now() >= deadline {
                r.expect_status(200, "PUT rule")?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let load = Arc::new(Load {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        url: format!("{}/v1/buses/{BUS}/events", idc.base_url()),
        payload: Arc::new("x".repeat(EVENT_DATA_BYTES)),
        sink: recv.sink.clone(),
    });
    let mut b = Bench {
        c,
        idc_idx,
        aws_idx,
        idc,
        aws,
        recv,
        load,
        cpu,
        drain_timeout: Duration::from_secs(env_or("BENCH_DRAIN_TIMEOUT_SECS", 300)),
    };

    // Warm-up: both paths deliver (link connected, connections pooled).
    let acks = open_loop(&b.load, P_WARM, "bench.remote", 200, 10, 2).await;
    let n = acks.iter().filter(|a| a.is_some()).count() as u64;
    b.recv
        .wait_count(P_WARM, n, Duration::from_secs(60))
        .await
        .context("warm-up over the link (is the link up? see the node logs)")?;
    b.ensure_alive("warm-up")?;

    println!(
        "1 KiB events, batched ingest at idc ({} clients x {} events/request), target concurrency {concurrency}",
        env_or("BENCH_CLIENTS", 16),
        env_or("BENCH_BATCH", 100)
    );
    let tl = b.throughput(P_TP_LOCAL, "bench.local", false).await?;
    print_tp("target at idc (no link)", &tl);
    let tr = b.throughput(P_TP_REMOTE, "bench.remote", true).await?;
    print_tp("target at aws (over the link)", &tr);

    let rate = env_or("BENCH_LAT_RATE", 2000);
    println!(
        "latency ingest ack at idc -> arrival at the receiver, open loop {rate} ev/s ({} events/request)",
        env_or("BENCH_LAT_BATCH", 10)
    );
    let la = b.latency(P_LAT_LOCAL, "bench.local").await?;
    print_lat("(a) target at idc", &la);
    let lb = b.latency(P_LAT_REMOTE, "bench.remote").await?;
    print_lat("(b) target at aws, direct", &lb);

    // A proxy in front of aws's QUIC port; idc's link goes through it.
    let aws_quic: std::net::SocketAddr = b.c.nodes[aws_idx]
        .quic
        .parse()
        .context("aws QUIC address")?;
    let proxy = UdpProxy::start("127.0.0.1:0".parse()?, aws_quic).await?;
    let cfg_path = b.c.nodes[idc_idx].config.clone();
    let mut cfg: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&cfg_path)?)
        .with_context(|| format!("parsing {}", cfg_path.display()))?;
    let slot = cfg
        .get_mut("federation")
        .and_then(|f| f.get_mut("links"))
        .and_then(|l| l.get_mut("aws"))
        .and_then(|a| a.get_mut(0))
        .and_then(|m| m.get_mut("raft_addr"))
        .with_context(|| {
            format!(
                "no federation.links.aws[0].raft_addr in {}",
                cfg_path.display()
            )
        })?;
    *slot = proxy.local_addr().to_string().into();
    std::fs::write(&cfg_path, serde_yaml::to_string(&cfg)?)?;
    // Stop it and wait for its ports: a SIGKILLed node busy in fsync can
    // hold them for a while after `kill` returns.
    b.c.kill_9_at(idc_idx)?;
    let http = b.c.nodes[idc_idx].http.clone();
    let quic = b.c.nodes[idc_idx].quic.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpListener::bind(&http).is_err() || std::net::UdpSocket::bind(&quic).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "idc's ports {http} / {quic} still busy 60 s after SIGKILL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.c.restart_at(idc_idx)
        .await
        .context("restarting idc with its link through the proxy")?;
    wait_leader(&b.idc, "site idc (restarted)").await?;
    b.cpu.idc_pid = pid_of(&cfg_path).context("no process for the restarted idc")?;
    // Fresh ids: the node drops a repeated (source, id) as a duplicate.
    let acks = open_loop_from(&b.load, P_WARM, 1_000_000, "bench.remote", 200, 10, 2).await;
    let n2 = acks.iter().filter(|a| a.is_some()).count() as u64;
    if let Err(e) = b
        .recv
        .wait_count(P_WARM, n + n2, Duration::from_secs(60))
        .await
    {
        let link = link_out(&b.idc, "aws").await.unwrap_or_default();
        let aws_links = match b.aws.get_json("/v1/cluster").await {
            Ok(r) => r.json().map(|v| v["links"].clone()).unwrap_or_default(),
            Err(_) => Value::Null,
        };
        let rule = match b.idc.get_rule(BUS, "remote").await {
            Ok(r) => r.json().map(|v| v["status"].clone()).unwrap_or_default(),
            Err(_) => Value::Null,
        };
        anyhow::bail!(
            "warm-up through the proxy: {e:#}; idc's link to aws: {link}; aws links: {aws_links}; \
             idc rule status: {rule}; proxy: {:?}",
            proxy.stats()
        );
    }
    let drops = udp_rcvbuf_errors();
    let lp = b.latency(P_LAT_PROXY, "bench.remote").await?;
    print_lat("(b') target at aws, via proxy, 0 ms", &lp);
    let link = link_out(&b.idc, "aws").await.unwrap_or_default();
    println!(
        "  link after (b'): rttMs {} quic {}; UDP datagrams dropped by full socket buffers {}",
        link["rttMs"],
        link["quic"],
        udp_rcvbuf_errors() - drops
    );
    let delay = Duration::from_millis(env_or("BENCH_DELAY_MS", 50));
    proxy.faults().set_delay(delay);
    // A real WAN link starts at its RTT; this one jumps from 0.2 ms to
    // 2 x delay mid-connection, and QUIC's congestion window and RTT
    // estimate take a few round trips to follow. Let them settle (traffic
    // not measured) before measuring the steady state.
    let settle = env_or("BENCH_DELAY_SETTLE_SECS", 2);
    if settle > 0 {
        let rate = env_or("BENCH_LAT_RATE", 2000);
        let acks =
            open_loop_from(&b.load, P_WARM, 2_000_000, "bench.remote", rate, 10, settle).await;
        let n3 = acks.iter().filter(|a| a.is_some()).count() as u64;
        b.recv
            .wait_count(P_WARM, n + n2 + n3, Duration::from_secs(60))
            .await
            .context("settling traffic after the delay was switched on")?;
    }
    let drops = udp_rcvbuf_errors();
    let lc = b.latency(P_LAT_DELAY, "bench.remote").await?;
    print_lat(
        &format!("(c) target at aws, {} ms one-way", delay.as_millis()),
        &lc,
    );
    let link = link_out(&b.idc, "aws").await.unwrap_or_default();
    println!(
        "  link after (c): rttMs {} quic {}; UDP datagrams dropped by full socket buffers {}; proxy {:?}",
        link["rttMs"],
        link["quic"],
        udp_rcvbuf_errors() - drops,
        proxy.stats()
    );
    proxy.faults().set_delay(Duration::ZERO);

    // Partition while producing, then heal and drain.
    let prate = env_or("BENCH_PARTITION_RATE", 2000);
    let psecs = env_or("BENCH_PARTITION_SECS", 60);
    println!(
        "partition: {prate} ev/s to the aws target for {psecs} s with the link cut, then heal"
    );
    proxy.faults().partition();
    let before = b.recv.sink.count(P_PARTITION);
    let acks = open_loop(&b.load, P_PARTITION, "bench.remote", prate, 10, psecs).await;
    let acked = acks.iter().filter(|a| a.is_some()).count() as u64;
    let link = link_out(&b.idc, "aws").await?;
    let during = b.recv.sink.count(P_PARTITION) - before;
    proxy.faults().heal();
    let healed = Instant::now();
    // The link alone: how fast aws acknowledges (commits into its inbox)
    // the backlog, read from idc's `acked`, next to the end-to-end drain.
    let link_drain = {
        let idc = b.idc.clone();
        let from = link["acked"].as_u64().unwrap_or(0);
        let to = link["enqueued"].as_u64().unwrap_or(0);
        let timeout = b.drain_timeout;
        tokio::spawn(async move {
            let mut first: Option<(Instant, u64)> = None;
            loop {
                let acked = link_out(&idc, "aws")
                    .await
                    .ok()
                    .and_then(|l| l["acked"].as_u64())
                    .unwrap_or(from);
                let now = Instant::now();
                if acked > from && first.is_none() {
                    first = Some((now, acked));
                }
                if acked >= to || healed.elapsed() > timeout {
                    return (first, now, acked, from, to);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let first = loop {
        if b.recv.sink.count(P_PARTITION) > before + during || healed.elapsed() > b.drain_timeout {
            break healed.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let done = b
        .recv
        .wait_count(P_PARTITION, before + acked, b.drain_timeout)
        .await;
    if let Err(e) = &done {
        println!("  NOT DRAINED: {e:#}");
    }
    let done = done.unwrap_or_else(|_| Instant::now());
    let drain = done - healed;
    let backlog = (b.recv.sink.count(P_PARTITION) - before).min(acked) - during;
    let drain_rate = backlog as f64 / (drain - first).as_secs_f64().max(1e-9);
    println!(
        "  acked {acked}, delivered during the partition {during}, outboxDepth at the heal {}, oldestUndeliveredMs {}, link state {}",
        link["outboxDepth"], link["oldestUndeliveredMs"], link["state"]
    );
    println!(
        "  first delivery {:.2} s after the heal, all {backlog} delivered {:.2} s after the heal: {:.0} ev/s drain (from the first delivery), {:.0} ev/s (from the heal)",
        first.as_secs_f64(),
        drain.as_secs_f64(),
        drain_rate,
        backlog as f64 / drain.as_secs_f64().max(1e-9)
    );
    let link_rate = match link_drain.await {
        Ok((Some((t1, a1)), t2, a2, from, to)) if a2 >= to && a2 > a1 => {
            let rate = (a2 - a1) as f64 / (t2 - t1).as_secs_f64().max(1e-9);
            println!(
                "  link alone: aws acknowledged {} deliveries ({from}..{to}), first ack {:.2} s after the heal, all {:.2} s after: {rate:.0} deliveries/s",
                to - from,
                (t1 - healed).as_secs_f64(),
                (t2 - healed).as_secs_f64()
            );
            Some(rate)
        }
        Ok(other) => {
            println!("  link alone: not measured ({other:?})");
            None
        }
        Err(e) => {
            println!("  link alone: poller failed: {e}");
            None
        }
    };
    b.ensure_alive("partition")?;
    let ps = proxy.stats();
    println!("  proxy: {ps:?}");
    let unknown = b.recv.sink.other.load(Ordering::Relaxed);

    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| throughput, target at idc (no link) | {:.0} ev/s delivered in the window ({:.0} ev/s ingested), {:.0} ev/s sustained end to end |",
        tl.delivered, tl.ingest, tl.sustained
    );
    println!(
        "| throughput, target at aws (link) | {:.0} ev/s delivered in the window ({:.0} ev/s ingested), {:.0} ev/s sustained end to end |",
        tr.delivered, tr.ingest, tr.sustained
    );
    println!(
        "| backlog at the end of the link window | {} |",
        tr.end_depths
    );
    println!(
        "| CPU idc / aws / receiver, local run | {:.0}% / {:.0}% / {:.0}% |",
        tl.cpu.0, tl.cpu.1, tl.cpu.2
    );
    println!(
        "| CPU idc / aws / receiver, link run | {:.0}% / {:.0}% / {:.0}% |",
        tr.cpu.0, tr.cpu.1, tr.cpu.2
    );
    let row = |name: &str, l: &Latency| {
        println!("| {name} p50 / p99 | {:.2} / {:.2} ms |", l.p50, l.p99);
    };
    row("latency (a) local", &la);
    row("latency (b) link", &lb);
    row("latency (b') link via proxy, 0 ms", &lp);
    row(&format!("latency (c) link, {} ms", delay.as_millis()), &lc);
    let d = delay.as_secs_f64() * 1000.0;
    println!(
        "| added (b)-(a) p50 / p99 | {:.2} / {:.2} ms |",
        lb.p50 - la.p50,
        lb.p99 - la.p99
    );
    println!(
        "| added (c)-(a)-{d:.0} ms p50 / p99 | {:.2} / {:.2} ms |",
        lc.p50 - la.p50 - d,
        lc.p99 - la.p99 - d
    );
    println!(
        "| partition {psecs} s at {prate} ev/s: outboxDepth at heal | {} |",
        link["outboxDepth"]
    );
    println!(
        "| backlog drain | {backlog} events in {:.2} s after heal (first after {:.2} s): {drain_rate:.0} ev/s |",
        drain.as_secs_f64(),
        first.as_secs_f64()
    );
    if let Some(r) = link_rate {
        println!("| link alone (aws acknowledging the backlog) | {r:.0} deliveries/s |");
    }
    if unknown > 0 {
        println!("receiver got {unknown} requests without a bench ce-id");
    }
    let load_avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average at the end {}",
        load_avg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    drop(proxy);
    Ok(())
}

fn print_tp(name: &str, t: &Throughput) {
    println!(
        "{name:<32} delivered {:>8.0} ev/s   ingested {:>8.0} ev/s   CPU idc {:>4.0}% aws {:>4.0}% receiver {:>4.0}%\n{:<32} backlog at the end of the window: {}; max: {}\n{:<32} {} events, delivered{} {:.1} s after the load stopped: sustained {:.0} ev/s end to end; ingest errors {}",
        t.delivered,
        t.ingest,
        t.cpu.0,
        t.cpu.1,
        t.cpu.2,
        "",
        t.end_depths,
        t.max_depths,
        "",
        t.total,
        if t.drained { "" } else { " (NOT all)" },
        t.drain_secs,
        t.sustained,
        t.errors
    );
}

fn print_lat(name: &str, l: &Latency) {
    println!(
        "{name:<40} p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms   events {}   missing {}",
        l.p50, l.p99, l.max, l.n, l.missing
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("federation bench: cannot start a runtime: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = rt.block_on(run()) {
        eprintln!("federation bench FAILED: {e:#}");
        std::process::exit(1);
    }
}
