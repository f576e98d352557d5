//! Site cluster benchmark: three `strait serve` processes (release build)
//! on loopback, against one node and against a three-node NATS JetStream
//! cluster, in one run.
//!
//! `cargo build --release -p strait-node && cargo bench -p strait-node --bench cluster`
//! prints:
//! - the disk's fsync rate (4 KiB write + fdatasync, same filesystem);
//! - `strait local up --site solo:1`: batched closed loop, open loop at half
//!   that rate;
//! - `strait local up --site idc:3`: batched closed loop to the leader and
//!   spread over all three nodes, open loop at half the leader rate;
//! - failover: `BENCH_KILLS` times SIGKILL the leader and time the first
//!   acknowledged write through a surviving follower;
//! - NATS JetStream (`nats-server`, three servers, a stream with three
//!   replicas on file storage): the same number of publishers, each with a
//!   window of `BENCH_BATCH` unacknowledged messages (async publish);
//! - a table with every figure.
//!
//! Knobs (env): `BENCH_SECS` (per phase, 10), `BENCH_CLIENTS` (64),
//! `BENCH_RUNS` (1: how many times idc:3 and NATS are measured, each run
//! on a fresh cluster; with more than one, a table of medians follows),
//! `BENCH_BATCH` (100), `BENCH_KILLS` (20; 0 skips failover), `BENCH_SOLO` (1; 0
//! skips the one-node phases), `BENCH_KEEP` (set: keep the data and logs),
//! `BENCH_DIR` (parent of the
//! temporary directory), `BENCH_EXTRA` (a YAML file passed to
//! `strait local up --extra`, e.g. Raft timing), `STRAIT_BIN` (default: `strait` next to this
//! bench's target directory, i.e. `target/release/strait`), `NATS_SERVER`
//! (default: `nats-server` on `PATH`).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::{
    EVENT_DATA_BYTES, Stats, Summary, closed_loop, cpu_secs, env_or, event, fsync_rate, open_loop,
    pct, report, strait_bin,
};
use serde_json::Value;
use strait_node::local::{self, LocalCluster, LocalNode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Mutex;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Knobs {
    secs: u64,
    clients: u64,
    batch: u64,
    kills: u64,
    /// idc:3 and NATS measured this many times, side by side.
    runs: u64,
}

/// The release `strait` binary.
/// A cluster started with `strait local up`; stopped (`strait local down`)
/// when dropped.
struct Local {
    bin: PathBuf,
    dir: PathBuf,
    cluster: LocalCluster,
}

impl Local {
    fn up(bin: &Path, dir: &Path, site: &str) -> anyhow::Result<Local> {
        let mut cmd = Command::new(bin);
        cmd.args(["local", "up", "--dir"])
            .arg(dir)
            .args(["--site", site]);
        if let Some(extra) = std::env::var_os("BENCH_EXTRA") {
            cmd.arg("--extra").arg(extra);
        }
        let out = cmd.output().context("cannot run strait local up")?;
        if !out.status.success() {
            bail!(
                "strait local up --site {site} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let cluster = local::read_cluster(dir)?;
        Ok(Local {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            cluster,
        })
    }

    fn urls(&self) -> Vec<String> {
        self.cluster.nodes.iter().map(events_url).collect()
    }

    /// Record a restarted node's pid so `strait local down` stops it.
    fn save(&self) -> anyhow::Result<()> {
        std::fs::write(
            local::cluster_file(&self.dir),
            serde_json::to_vec_pretty(&self.cluster)?,
        )?;
        Ok(())
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .args(["local", "down", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // The data of every phase stays otherwise; the disk is shared.
        if std::env::var_os("BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn events_url(n: &LocalNode) -> String {
    format!("http://{}/v1/buses/default/events", n.http)
}

async fn status(client: &reqwest::Client, n: &LocalNode) -> Option<Value> {
    let r = client
        .get(format!("http://{}/v1/cluster", n.http))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// Wait until every node names the same leader in the same term, twice in a
/// row 300 ms apart; returns (leader id, term).
async fn stable_leader(
    client: &reqwest::Client,
    nodes: &[LocalNode],
    timeout: Duration,
) -> anyhow::Result<(u64, u64)> {
    let deadline = Instant::now() + timeout;
    let mut last: Option<(u64, u64)> = None;
    loop {
        let mut views = Vec::new();
        for n in nodes {
            let v = status(client, n).await;
            views.push(v.and_then(|v| Some((v["leader"].as_u64()?, v["term"].as_u64()?))));
        }
        let agreed = match views.first() {
            Some(Some(first)) if views.iter().all(|v| v.as_ref() == Some(first)) => Some(*first),
            _ => None,
        };
        if agreed.is_some() && agreed == last {
            return agreed.context("unreachable");
        }
        last = agreed;
        if Instant::now() > deadline {
            bail!("no stable leader after {timeout:?}: views {views:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Closed loop to the leader (and for more than one node, spread over all
/// nodes), then open loop at half the leader rate.
async fn strait_phases(
    label: &str,
    cl: &Local,
    k: &Knobs,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let (leader, term0) =
        stable_leader(&client, &cl.cluster.nodes, Duration::from_secs(30)).await?;
    let leader_node = cl
        .cluster
        .nodes
        .iter()
        .find(|n| n.id == leader)
        .context("leader not in cluster.json")?;
    let to_leader = vec![events_url(leader_node)];
    let counter = Arc::new(Mutex::new(0u64));
    let nodes = &cl.cluster.nodes;
    let pids: Vec<u32> = nodes.iter().map(|n| n.pid).collect();
    let t = max_term(&client, nodes).await;
    let probe = Probe::start(&pids);
    let (s, e) = closed_loop(&to_leader, k.clients, k.batch, k.secs, counter.clone()).await;
    let cpu = probe.finish(s.events);
    let name = format!("{label} batched → leader");
    let lead = report(&name, s, e);
    rows.push(Row::new(name, lead.clone(), t, max_term(&client, nodes).await).with_cpu(cpu));
    if cl.cluster.nodes.len() > 1 {
        let t = max_term(&client, nodes).await;
        let probe = Probe::start(&pids);
        let (s, e) = closed_loop(&cl.urls(), k.clients, k.batch, k.secs, counter.clone()).await;
        let cpu = probe.finish(s.events);
        let name = format!("{label} batched → all nodes");
        let sum = report(&name, s, e);
        rows.push(Row::new(name, sum, t, max_term(&client, nodes).await).with_cpu(cpu));
    }
    let half = lead.rate / 2.0;
    let t = max_term(&client, nodes).await;
    let probe = Probe::start(&pids);
    let (s, e) = open_loop(&to_leader, k.batch, half, k.secs, counter.clone()).await;
    let cpu = probe.finish(s.events);
    let name = format!("{label} open loop @ {half:.0}/s → leader");
    let sum = report(&name, s, e);
    rows.push(Row::new(name, sum, t, max_term(&client, nodes).await).with_cpu(cpu));
    let (leader1, term1) =
        stable_leader(&client, &cl.cluster.nodes, Duration::from_secs(30)).await?;
    if (leader1, term1) != (leader, term0) {
        println!(
            "  NOTE: leadership changed under load: leader {leader} term {term0} → leader {leader1} term {term1}"
        );
    }
    Ok(())
}

/// The highest Raft term any node reports right now.
async fn max_term(client: &reqwest::Client, nodes: &[LocalNode]) -> Option<u64> {
    let mut best = None;
    for n in nodes {
        if let Some(t) = status(client, n).await.and_then(|v| v["term"].as_u64()) {
            best = best.max(Some(t));
        }
    }
    best
}

/// One line of the final table.
struct Row {
    name: String,
    sum: Summary,
    /// Raft term before and after the phase (elections under load).
    terms: String,
    /// CPU per acknowledged event and the machine's idle share.
    cpu_us: Option<CpuUse>,
}

impl Row {
    fn new(name: String, sum: Summary, before: Option<u64>, after: Option<u64>) -> Row {
        let show = |t: Option<u64>| t.map(|t| t.to_string()).unwrap_or_else(|| "?".into());
        Row {
            name,
            sum,
            terms: format!("{} → {}", show(before), show(after)),
            cpu_us: None,
        }
    }

    fn with_cpu(mut self, cpu: Option<CpuUse>) -> Row {
        self.cpu_us = cpu;
        self
    }
}

/// Where a phase's CPU went.
#[derive(Clone, Copy)]
struct CpuUse {
    /// Server processes (all nodes), µs per acknowledged event.
    server_us: f64,
    /// This process (the load generator), µs per acknowledged event.
    client_us: f64,
    /// Share of the machine's CPU time that was idle (or waiting for I/O), %.
    idle_pct: f64,
}

/// CPU counters at the start of a phase.
struct Probe {
    pids: Vec<u32>,
    server: f64,
    client: f64,
    machine: (u64, u64),
}

impl Probe {
    fn start(pids: &[u32]) -> Probe {
        Probe {
            pids: pids.to_vec(),
            server: cpu_secs(pids),
            client: cpu_secs(&[std::process::id()]),
            machine: machine_ticks(),
        }
    }

    /// CPU use per event since `start` (None when nothing was acknowledged).
    fn finish(self, events: u64) -> Option<CpuUse> {
        let per_event = |secs: f64| secs * 1e6 / events as f64;
        let (idle, total) = machine_ticks();
        let total = total.saturating_sub(self.machine.1).max(1);
        (events > 0).then(|| CpuUse {
            server_us: per_event(cpu_secs(&self.pids) - self.server),
            client_us: per_event(cpu_secs(&[std::process::id()]) - self.client),
            idle_pct: idle.saturating_sub(self.machine.0) as f64 * 100.0 / total as f64,
        })
    }
}

/// (idle + iowait, all) clock ticks of the machine so far, from `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return (0, 0);
    };
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (idle, f.iter().sum())
}

fn kill9(pid: u32) -> anyhow::Result<()> {
    let st = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .context("cannot run kill")?;
    if !st.success() {
        bail!("kill -KILL {pid} failed");
    }
    Ok(())
}

/// From `t0` (the kill), the time until the first acknowledged write to
/// `url`: a new single-event attempt every `spacing` while none has been
/// acknowledged (errors and hung forwards are retried by the next attempt).
async fn first_ack(
    client: &reqwest::Client,
    url: &str,
    t0: Instant,
    seq: &mut u64,
    spacing: Duration,
) -> anyhow::Result<(Duration, u64)> {
    let payload = "f".repeat(EVENT_DATA_BYTES);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut set = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(spacing);
    let mut attempts = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if t0.elapsed() > Duration::from_secs(60) {
                    bail!("no write acknowledged within 60 s of the kill ({attempts} attempts)");
                }
                attempts += 1;
                *seq += 1;
                let body = event(*seq, &payload).replace("\"/bench\"", "\"/failover\"");
                let req = client
                    .post(url)
                    .header("content-type", "application/cloudevents+json")
                    .timeout(Duration::from_secs(10))
                    .body(body);
                let tx = tx.clone();
                set.spawn(async move {
                    if let Ok(r) = req.send().await
                        && r.status().is_success()
                    {
                        let _ = tx.send(Instant::now());
                    }
                });
            }
            Some(at) = rx.recv() => {
                set.abort_all();
                return Ok((at - t0, attempts));
            }
        }
    }
}

struct Failover {
    times: Vec<Duration>,
    term_steps: Vec<u64>,
}

async fn failover(cl: &mut Local, bin: &Path, kills: u64) -> anyhow::Result<Failover> {
    let client = reqwest::Client::new();
    let mut out = Failover {
        times: Vec::new(),
        term_steps: Vec::new(),
    };
    let mut seq = 0u64;
    for round in 0..kills {
        let (leader, term0) =
            stable_leader(&client, &cl.cluster.nodes, Duration::from_secs(60)).await?;
        let li = cl
            .cluster
            .nodes
            .iter()
            .position(|n| n.id == leader)
            .context("leader not in cluster.json")?;
        let followers: Vec<usize> = (0..cl.cluster.nodes.len()).filter(|i| *i != li).collect();
        let target = followers[round as usize % followers.len()];
        let url = events_url(&cl.cluster.nodes[target]);
        // Warm the connection to the follower so the measurement is not a
        // TCP handshake.
        let _ = client
            .get(format!("http://{}/readyz", cl.cluster.nodes[target].http))
            .send()
            .await;
        kill9(cl.cluster.nodes[li].pid)?;
        let t0 = Instant::now();
        let (took, attempts) =
            first_ack(&client, &url, t0, &mut seq, Duration::from_millis(20)).await?;
        let after = status(&client, &cl.cluster.nodes[target]).await;
        let term1 = after
            .as_ref()
            .and_then(|v| v["term"].as_u64())
            .unwrap_or(term0);
        let new_leader = after.as_ref().and_then(|v| v["leader"].as_u64());
        println!(
            "  kill {:>2}: leader {leader} (term {term0}) → first ack via node {} after {:>7.1} ms ({attempts} attempts), new leader {new_leader:?} term {term1}",
            round + 1,
            cl.cluster.nodes[target].id,
            took.as_secs_f64() * 1000.0
        );
        out.times.push(took);
        out.term_steps.push(term1.saturating_sub(term0));
        let n = &cl.cluster.nodes[li];
        let pid = local::spawn_node(bin, &n.config, &n.log)?;
        cl.cluster.nodes[li].pid = pid;
        cl.save()?;
        stable_leader(&client, &cl.cluster.nodes, Duration::from_secs(60)).await?;
    }
    Ok(out)
}

// ---------------------------------------------------------------- NATS

/// Three `nats-server` processes with JetStream, clustered on loopback;
/// killed when dropped.
struct Nats {
    children: Vec<Child>,
    ports: Vec<u16>,
}

impl Drop for Nats {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_nats(dir: &Path) -> anyhow::Result<Nats> {
    let bin = std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
    let mut nats = Nats {
        children: Vec::new(),
        ports: ports.clone(),
    };
    let route_list: Vec<String> = routes
        .iter()
        .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
        .collect();
    for i in 0..3 {
        let store = dir.join(format!("n{i}"));
        std::fs::create_dir_all(&store)?;
        let conf = dir.join(format!("n{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "server_name: n{i}\nlisten: \"127.0.0.1:{}\"\njetstream {{\n  store_dir: \"{}\"\n}}\ncluster {{\n  name: strait-bench\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                ports[i],
                store.display(),
                routes[i],
                route_list.join(", ")
            ),
        )?;
        let log = std::fs::File::create(dir.join(format!("n{i}.log")))?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!("cannot start {bin} (install it: apt-get install -y nats-server, or set NATS_SERVER)")
            })?;
        nats.children.push(child);
    }
    std::thread::sleep(Duration::from_millis(500));
    for (i, c) in nats.children.iter_mut().enumerate() {
        if let Some(st) = c.try_wait()? {
            let log = std::fs::read_to_string(dir.join(format!("n{i}.log"))).unwrap_or_default();
            bail!("nats-server n{i} exited at start ({st}):\n{log}");
        }
    }
    Ok(nats)
}

struct NatsConn {
    r: BufReader<OwnedReadHalf>,
    w: BufWriter<OwnedWriteHalf>,
    line: Vec<u8>,
}

/// A protocol message from the server.
enum NatsMsg {
    /// MSG/HMSG on `subject`: payload, and whether it carried headers (a
    /// status such as 503 no responders).
    Msg {
        subject: String,
        payload: Vec<u8>,
        headers: bool,
    },
    Other,
}

impl NatsConn {
    /// Connect, subscribe to `inbox.*`, and wait for the server's PONG.
    async fn connect(port: u16, inbox: &str) -> anyhow::Result<NatsConn> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", port)).await {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    bail!("cannot connect to nats-server on port {port}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let mut c = NatsConn {
            r: BufReader::with_capacity(256 * 1024, r),
            w: BufWriter::with_capacity(256 * 1024, w),
            line: Vec::new(),
        };
        c.w.write_all(
            format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false,\"lang\":\"rust-bench\",\"version\":\"0\",\"protocol\":1,\"headers\":true,\"no_responders\":true}}\r\nSUB {inbox}.* 1\r\nPING\r\n"
            )
            .as_bytes(),
        )
        .await?;
        c.w.flush().await?;
        loop {
            c.read_line().await?;
            if c.line.starts_with(b"PONG") {
                return Ok(c);
            }
            c.handle_control().await?;
        }
    }

    async fn read_line(&mut self) -> anyhow::Result<()> {
        self.line.clear();
        let n = tokio::time::timeout(
            Duration::from_secs(30),
            self.r.read_until(b'\n', &mut self.line),
        )
        .await
        .context("nats-server sent nothing for 30 s")??;
        if n == 0 {
            bail!("nats-server closed the connection");
        }
        Ok(())
    }

    /// PING, +OK, INFO, -ERR.
    async fn handle_control(&mut self) -> anyhow::Result<()> {
        if self.line.starts_with(b"PING") {
            self.w.write_all(b"PONG\r\n").await?;
            self.w.flush().await?;
        } else if self.line.starts_with(b"-ERR") {
            bail!(
                "nats-server: {}",
                String::from_utf8_lossy(&self.line).trim()
            );
        }
        Ok(())
    }

    /// Read one protocol message.
    async fn read_msg(&mut self) -> anyhow::Result<NatsMsg> {
        self.read_line().await?;
        let headers = self.line.starts_with(b"HMSG ");
        if !(headers || self.line.starts_with(b"MSG ")) {
            self.handle_control().await?;
            return Ok(NatsMsg::Other);
        }
        let text = std::str::from_utf8(&self.line)?;
        let parts: Vec<&str> = text.split_whitespace().collect();
        let subject = parts.get(1).context("bad MSG line")?.to_string();
        let total: usize = parts.last().context("bad MSG line")?.parse()?;
        let mut payload = vec![0u8; total + 2];
        self.r.read_exact(&mut payload).await?;
        payload.truncate(total);
        Ok(NatsMsg::Msg {
            subject,
            payload,
            headers,
        })
    }

    async fn publish(&mut self, subject: &str, reply: &str, payload: &[u8]) -> anyhow::Result<()> {
        self.w
            .write_all(format!("PUB {subject} {reply} {}\r\n", payload.len()).as_bytes())
            .await?;
        self.w.write_all(payload).await?;
        self.w.write_all(b"\r\n").await?;
        Ok(())
    }

    /// A request: publish, flush, wait for the reply on `inbox.1`.
    async fn request(
        &mut self,
        inbox: &str,
        subject: &str,
        payload: &[u8],
    ) -> anyhow::Result<Result<Value, String>> {
        self.publish(subject, &format!("{inbox}.1"), payload)
            .await?;
        self.w.flush().await?;
        loop {
            if let NatsMsg::Msg {
                payload, headers, ..
            } = self.read_msg().await?
            {
                if headers {
                    return Ok(Err(String::from_utf8_lossy(&payload).trim().to_string()));
                }
                let v: Value = serde_json::from_slice(&payload)?;
                return Ok(match v.get("error") {
                    Some(e) => Err(e.to_string()),
                    None => Ok(v),
                });
            }
        }
    }
}

/// Create stream BENCH (subjects `bench.>`, file storage, 3 replicas) once
/// the JetStream cluster has a meta leader, then publish until one message is
/// acknowledged.
async fn nats_setup(port: u16) -> anyhow::Result<()> {
    let inbox = "_INBOX.admin";
    let mut c = NatsConn::connect(port, inbox).await?;
    let config = serde_json::json!({
        "name": "BENCH",
        "subjects": ["bench.>"],
        "retention": "limits",
        "storage": "file",
        "num_replicas": 3,
        "discard": "old",
        "max_consumers": -1,
        "max_msgs": -1,
        "max_msgs_per_subject": -1,
        // Bound the disk the bench uses; old messages are dropped.
        "max_bytes": 1i64 << 30,
        "max_age": 0,
        "max_msg_size": -1,
        "duplicate_window": 0,
    })
    .to_string();
    // A cluster that is still forming may leave a request unanswered (each
    // waits up to 30 s): start over on a fresh connection until the deadline.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    let mut created = false;
    while Instant::now() < deadline {
        let sent = if created {
            c.request(inbox, "bench.warmup", b"warmup").await
        } else {
            c.request(inbox, "$JS.API.STREAM.CREATE.BENCH", config.as_bytes())
                .await
        };
        let r = match sent {
            Ok(r) => r,
            Err(e) => {
                last = format!("{e:#}");
                c = NatsConn::connect(port, inbox).await?;
                continue;
            }
        };
        match r {
            Ok(_) if created => return Ok(()),
            Ok(_) => created = true,
            Err(e) => {
                last = e;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    bail!("JetStream stream not usable within 120 s (created: {created}); last answer: {last}")
}

/// One async publisher: keeps `window` messages unacknowledged until
/// `deadline`, then waits for the rest.
async fn nats_publisher(
    port: u16,
    id: u64,
    window: usize,
    deadline: Instant,
) -> anyhow::Result<Stats> {
    let inbox = format!("_INBOX.p{id}");
    let mut c = NatsConn::connect(port, &inbox).await?;
    let payload = vec![b'x'; 1024];
    let subject = format!("bench.p{id}");
    let mut pending: HashMap<u64, Instant> = HashMap::with_capacity(window * 2);
    let mut seq = 0u64;
    let mut st = Stats::default();
    loop {
        let sending = Instant::now() < deadline;
        if sending && pending.len() < window {
            while pending.len() < window {
                seq += 1;
                c.publish(&subject, &format!("{inbox}.{seq}"), &payload)
                    .await?;
                pending.insert(seq, Instant::now());
            }
            c.w.flush().await?;
        }
        if pending.is_empty() {
            break;
        }
        // Handle everything already received before sending more.
        loop {
            if let NatsMsg::Msg {
                subject,
                payload,
                headers,
            } = c.read_msg().await?
            {
                let n: u64 = subject
                    .rsplit('.')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if let Some(t) = pending.remove(&n) {
                    let ok = !headers && !payload.windows(7).any(|w| w == b"\"error\"");
                    if ok {
                        st.latencies.push(t.elapsed());
                        st.events += 1;
                    } else {
                        st.errors += 1;
                    }
                }
            }
            if c.r.buffer().is_empty() {
                break;
            }
        }
    }
    Ok(st)
}

async fn nats_closed_loop(nats: &Nats, k: &Knobs) -> anyhow::Result<(Stats, Duration)> {
    let deadline = Instant::now() + Duration::from_secs(k.secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for id in 0..k.clients {
        let port = nats.ports[id as usize % nats.ports.len()];
        tasks.push(tokio::spawn(nats_publisher(
            port,
            id,
            k.batch as usize,
            deadline,
        )));
    }
    let mut all = Stats::default();
    for t in tasks {
        all.merge(t.await??);
    }
    Ok((all, start.elapsed()))
}

// ---------------------------------------------------------------- main

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => 0.0,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

fn print_header() {
    println!(
        "| run | events/s | p50 ms | p99 ms | errors | ÷ NATS | Raft term | server CPU µs/event | load generator CPU µs/event | machine idle % |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
}

/// One row of the table; the ratio is against `nats_rate` (the same run's).
fn print_row(r: &Row, nats_rate: f64) {
    let s = &r.sum;
    // An open-loop rate is the offered load, not a capacity.
    let ratio = if r.name.contains("open loop") {
        "–".to_string()
    } else {
        format!("{:.2}", s.rate / nats_rate)
    };
    let cpu = |f: fn(&CpuUse) -> f64| {
        r.cpu_us
            .map(|c| format!("{:.0}", f(&c)))
            .unwrap_or_else(|| "–".into())
    };
    println!(
        "| {} | {:.0} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} |",
        r.name,
        s.rate,
        s.p50,
        s.p99,
        s.errors,
        ratio,
        r.terms,
        cpu(|c| c.server_us),
        cpu(|c| c.client_us),
        cpu(|c| c.idle_pct),
    );
}

/// Medians over the runs of each phase (open-loop phases by name up to
/// their offered rate): rate, ratio to the same run's NATS, p99, server
/// CPU per event; and the lowest ratio of any run.
fn print_medians(runs: &[(Vec<Row>, f64)]) {
    let key = |name: &str| name.split(" @").next().unwrap_or(name).to_string();
    let mut keys: Vec<String> = Vec::new();
    for (rows, _) in runs {
        for r in rows {
            let k = key(&r.name);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    println!();
    println!("medians of {} runs:", runs.len());
    println!("| phase | events/s | ÷ NATS (lowest) | p99 ms | server CPU µs/event |");
    println!("|---|---|---|---|---|");
    for k in keys {
        let mut rate = Vec::new();
        let mut ratio = Vec::new();
        let mut p99 = Vec::new();
        let mut cpu = Vec::new();
        for (rows, nats) in runs {
            for r in rows.iter().filter(|r| key(&r.name) == k) {
                rate.push(r.sum.rate);
                ratio.push(r.sum.rate / nats);
                p99.push(r.sum.p99);
                if let Some(c) = r.cpu_us {
                    cpu.push(c.server_us);
                }
            }
        }
        let lowest = ratio.iter().copied().fold(f64::INFINITY, f64::min);
        let ratio = if k.contains("open loop") {
            "–".to_string()
        } else {
            format!("{:.2} ({lowest:.2})", median(&mut ratio))
        };
        println!(
            "| {k} | {:.0} | {ratio} | {:.1} | {:.0} |",
            median(&mut rate),
            median(&mut p99),
            median(&mut cpu)
        );
    }
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing to parse.
    let k = Knobs {
        secs: env_or("BENCH_SECS", 10),
        clients: env_or("BENCH_CLIENTS", 64),
        batch: env_or("BENCH_BATCH", 100),
        kills: env_or("BENCH_KILLS", 20),
        runs: env_or("BENCH_RUNS", 1).max(1),
    };
    let bin = strait_bin()?;
    let parent = std::env::var("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let mut dir = tempfile::Builder::new()
        .prefix("strait-cluster-bench-")
        .tempdir_in(parent)?;
    if std::env::var_os("BENCH_KEEP").is_some() {
        // Keep the nodes' data and logs for a look afterwards.
        dir.disable_cleanup(true);
        println!("keeping {}", dir.path().display());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("strait binary: {}", bin.display());
    println!("load average at start: {}", load.trim());
    rt.block_on(async move {
        let fsyncs = fsync_rate(dir.path(), 2.0)?;
        println!("disk fsync rate (4 KiB write + fdatasync, same filesystem): {fsyncs:.0}/s");
        println!(
            "1 KiB events, {} concurrent clients, {} events/request, {} s per phase, fsync on every commit",
            k.clients, k.batch, k.secs
        );
        let mut rows: Vec<Row> = Vec::new();

        if env_or("BENCH_SOLO", 1) != 0 {
            let solo = Local::up(&bin, &dir.path().join("solo"), "solo:1")?;
            strait_phases("strait solo:1", &solo, &k, &mut rows).await?;
        }

        // A failed section is reported and the run goes on (a cluster that
        // cannot keep a leader under load still gets its failover and the
        // NATS comparison measured); the bench fails at the end.
        let mut failures: Vec<String> = Vec::new();
        // Each run: a fresh idc:3, then NATS, side by side.
        let mut runs: Vec<(Vec<Row>, f64)> = Vec::new();
        for run in 1..=k.runs {
            if k.runs > 1 {
                println!("run {run} of {}", k.runs);
            }
            let mut rows: Vec<Row> = Vec::new();
            {
                let idc = Local::up(&bin, &dir.path().join(format!("idc-{run}")), "idc:3")?;
                if let Err(e) = strait_phases("strait idc:3", &idc, &k, &mut rows).await {
                    println!("  FAILED: idc:3 throughput: {e:#}");
                    failures.push(format!("idc:3 throughput (run {run}): {e:#}"));
                }
            }
            println!("NATS JetStream: 3 servers, stream with 3 replicas, file storage");
            let nats = start_nats(&dir.path().join(format!("nats-{run}")))?;
            nats_setup(nats.ports[0]).await?;
            let nats_pids: Vec<u32> = nats.children.iter().map(Child::id).collect();
            let probe = Probe::start(&nats_pids);
            let (s, e) = nats_closed_loop(&nats, &k).await?;
            let cpu = probe.finish(s.events);
            let name = format!("nats R3 async publish (window {})", k.batch);
            let nats_sum = report(&name, s, e);
            rows.push(Row {
                name,
                sum: nats_sum.clone(),
                terms: "–".into(),
                cpu_us: cpu,
            });
            drop(nats);
            runs.push((rows, nats_sum.rate));
        }
        println!(
            "failover: {} leader kills (SIGKILL) on a fresh idc:3, first ack through a follower",
            k.kills
        );
        let fo = if k.kills == 0 {
            Failover {
                times: Vec::new(),
                term_steps: Vec::new(),
            }
        } else {
            let mut idc = Local::up(&bin, &dir.path().join("failover"), "idc:3")?;
            match failover(&mut idc, &bin, k.kills).await {
                Ok(fo) => fo,
                Err(e) => {
                    println!("  FAILED: failover: {e:#}");
                    failures.push(format!("failover: {e:#}"));
                    Failover {
                        times: Vec::new(),
                        term_steps: Vec::new(),
                    }
                }
            }
        };

        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!();
        println!("load average at end: {}", load.trim());
        println!("fsync/s {fsyncs:.0}");
        let mut nats_rates: Vec<f64> = runs.iter().map(|(_, n)| *n).collect();
        let nats_median = median(&mut nats_rates);
        print_header();
        for r in &rows {
            print_row(r, nats_median);
        }
        for (rows, nats_rate) in &runs {
            for r in rows {
                print_row(r, *nats_rate);
            }
        }
        if runs.len() > 1 {
            print_medians(&runs);
        }
        let mut times = fo.times.clone();
        times.sort();
        let sorted: Vec<Duration> = times.clone();
        println!(
            "| failover ({} kills): kill → first ack | p50 {:.0} ms | p99 {:.0} ms | max {:.0} ms | | | term +{:?} per kill |",
            times.len(),
            pct(&sorted, 0.5),
            pct(&sorted, 0.99),
            times.last().map(|d| ms(*d)).unwrap_or(0.0),
            fo.term_steps
        );
        if !failures.is_empty() {
            bail!("{} section(s) failed:\n{}", failures.len(), failures.join("\n"));
        }
        anyhow::Ok(())
    })
}
