//! A 3-node site of real `strait` processes (release build, QUIC with
//! mutual TLS, `strait local up`) with a large state: one follower's data
//! directory is wiped and the follower rebuilt from the leader's snapshot,
//! then the leader is killed and restarted on its data (log replay).
//!
//! `cargo build --release -p strait-node && STRAIT_BIN=$PWD/target/release/strait cargo bench -p strait-chaos-tests --bench snapshot_site`
//! prints, per phase, wall time and each process's peak RSS (`VmHWM` of
//! `/proc/<pid>/status`, reset with `clear_refs` at the start of the phase
//! for processes that were already running):
//! - `fill`: `SITE_SNAPSHOT_MB` (200) MB of 1 KiB events posted to the leader
//!   in batches of 100 by `SITE_SNAPSHOT_CLIENTS` (8) clients, then until the
//!   leader has a snapshot and has purged its log before it (so that a node
//!   without state can only start from the snapshot);
//! - `rebuild`: the follower killed, its data directory deleted, started
//!   again: time until it reports the snapshot installed and until it has
//!   applied everything the leader had; follower and leader peak RSS; the
//!   bytes of the follower's files afterwards; how many snapshot sends the
//!   leader's log reports as failed or timed out (a send that does not
//!   finish is restarted from the beginning);
//! - `restart`: the leader killed with SIGKILL and started again on its
//!   data: time until its HTTP API answers, until it sees a leader
//!   (`/readyz`) and until it has applied the site's log; its peak RSS.
//!
//! Knobs: `SITE_SNAPSHOT_MB`, `SITE_SNAPSHOT_CLIENTS`,
//! `SITE_SNAPSHOT_EVERY` (the nodes' `snapshot_every`, 1000 here so that
//! the small default run snapshots; the node's default is 20000),
//! `STRAIT_BIN` (required: the release binary), `TMPDIR` (where the
//! cluster's data goes: about 3 × 2.2 × `SITE_SNAPSHOT_MB` plus the
//! snapshots), `STRAIT_CHAOS_KEEP=1` (keep data and logs). Memory budget
//! (issue 21): 1.5 GB per process with default settings.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};
use strait_chaos_tests::events::event;
use strait_chaos_tests::{LocalCluster, NodeClient};

const BUS: &str = "default";
const BATCH: u64 = 100;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `STRAIT_BIN`, which the cluster harness starts: required, as in the
/// federation bench.
fn release_bin() -> anyhow::Result<PathBuf> {
    let bin = PathBuf::from(std::env::var_os("STRAIT_BIN").context(
        "set STRAIT_BIN to the release binary: `cargo build --release -p strait-node` then \
         STRAIT_BIN=$PWD/target/release/strait",
    )?);
    anyhow::ensure!(bin.is_file(), "STRAIT_BIN={} is not a file", bin.display());
    Ok(bin)
}

/// `VmRSS` and `VmHWM` of `pid`, in MiB.
fn rss(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Reset `pid`'s peak RSS to its current RSS (`clear_refs` value 5).
fn reset_peak(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("reset the peak RSS of {pid}"))
}

fn pid(c: &mut LocalCluster, id: u64) -> anyhow::Result<u32> {
    c.node_by_id(id)?
        .pid()
        .with_context(|| format!("node {id} is not running"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Bytes of the files under `dir`, in total and of those whose name starts
/// with `prefix`.
fn dir_bytes(dir: &Path, prefix: &str) -> (u64, u64) {
    let mut total = 0;
    let mut matching = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                total += md.len();
                if e.file_name().to_string_lossy().starts_with(prefix) {
                    matching += md.len();
                }
            }
        }
    }
    (total, matching)
}

fn index(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

async fn status(client: &NodeClient) -> Option<Value> {
    let r = client.get_json("/v1/cluster").await.ok()?;
    (r.status == 200).then(|| r.json()).flatten()
}

/// Post batches of 1 KiB events to `client` until `bytes` of event data
/// were acknowledged (shared by every producer task).
async fn producer(
    client: NodeClient,
    task: u64,
    sent: Arc<AtomicU64>,
    target: u64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<u64> {
    let pad = "x".repeat(1024);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && sent.load(Ordering::Relaxed) < target {
        let batch: Vec<Value> = (0..BATCH)
            .map(|i| {
                event(
                    &format!("t{task}-{n}-{i}"),
                    "/bench/snapshot",
                    "bench.snapshot",
                    json!({"payload": pad}),
                )
            })
            .collect();
        n += 1;
        let r = client.post_batch(BUS, &batch).await?;
        if r.status == 200 {
            sent.fetch_add(BATCH * 1024, Ordering::Relaxed);
        } else if r.status != 503 && r.status != 429 {
            anyhow::bail!("POST batch: {} {}", r.status, r.text());
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(n)
}

/// Peak RSS of the watched processes sampled every 100 ms (on top of
/// `VmHWM`, which only covers a process's life since its last reset).
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<f64>>,
}

impl Sampler {
    fn start(pids: Vec<u32>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = vec![0.0f64; pids.len()];
            while !s.load(Ordering::Relaxed) {
                for (i, p) in pids.iter().enumerate() {
                    peak[i] = peak[i].max(rss(*p).0);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        });
        Sampler { stop, task }
    }

    async fn finish(self) -> anyhow::Result<Vec<f64>> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mb = env_or("SITE_SNAPSHOT_MB", 200);
    let clients = env_or("SITE_SNAPSHOT_CLIENTS", 8);
    let every = env_or("SITE_SNAPSHOT_EVERY", 1000);
    let bin = release_bin()?;
    println!(
        "3-node site, {mb} MB of 1 KiB events, snapshot_every {every}, {}",
        bin.display()
    );
    let extra = json!({"snapshot_every": every});
    let mut c = LocalCluster::up(&[("idc", 3)], Some(extra)).await?;
    println!("data under {}", c.dir().display());
    let leader = c.leader(Duration::from_secs(30)).await?;
    let lc = c.client(leader)?;

    // fill
    let pids: Vec<u32> = c
        .ids()
        .into_iter()
        .map(|i| pid(&mut c, i))
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let target = mb << 20;
    let mut tasks = Vec::new();
    for t in 0..clients {
        tasks.push(tokio::spawn(producer(
            c.client(leader)?,
            t,
            sent.clone(),
            target,
            stop.clone(),
        )));
    }
    for t in tasks {
        t.await??;
    }
    let fill_secs = started.elapsed().as_secs_f64();
    let events = sent.load(Ordering::Relaxed) / 1024;
    // Trickle until there is a snapshot and the log before it is purged.
    let mut extra_batches = 0u64;
    loop {
        let s = status(&lc).await.context("leader status")?;
        if index(&s, "snapshotIndex") > 0 && index(&s, "purgedIndex") > 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "no snapshot within an hour: {s}"
        );
        let sent = Arc::new(AtomicU64::new(0));
        producer(lc.clone(), 1000, sent, BATCH * 1024, stop.clone()).await?;
        extra_batches += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let peaks: Vec<f64> = pids.iter().map(|p| rss(*p).1).collect();
    // The follower to rebuild: not the lowest id (that one bootstraps the
    // site when its state is empty), and the one furthest along, so that
    // what follows its rebuild is the snapshot path and not a lag it had.
    let s = status(&lc).await.context("leader status")?;
    let lowest = c.ids().into_iter().min().context("no nodes")?;
    let matched: Vec<(u64, u64)> = s["nodes"]
        .as_array()
        .map(|ns| {
            ns.iter()
                .filter_map(|n| Some((n["id"].as_u64()?, n["matchedIndex"].as_u64().unwrap_or(0))))
                .collect()
        })
        .unwrap_or_default();
    let follower = matched
        .iter()
        .filter(|(id, _)| *id != leader && *id != lowest)
        .max_by_key(|(_, m)| *m)
        .map(|(id, _)| *id)
        .context("a follower that does not bootstrap")?;
    println!(
        "fill     leader {leader}, last log index {}, matched index per node {matched:?}; rebuilding node {follower}",
        index(&s, "lastLogIndex")
    );
    let leader_dir = c.node_by_id(leader)?.data_dir()?;
    let (leader_bytes, _) = dir_bytes(&leader_dir, "");
    let state_bytes = std::fs::metadata(leader_dir.join("state.redb"))?.len();
    println!(
        "fill     {fill_secs:>7.1} s  {events} events ({:.0}/s) + {extra_batches} batches until a snapshot; \
         leader state.redb {:.0} MiB, data dir {:.0} MiB; peak RSS of nodes {:?} MiB",
        events as f64 / fill_secs,
        mib(state_bytes),
        mib(leader_bytes),
        peaks.iter().map(|p| p.round()).collect::<Vec<_>>()
    );

    // rebuild
    let before = status(&lc).await.context("leader status")?;
    let want = index(&before, "appliedIndex");
    let leader_pid = pid(&mut c, leader)?;
    let leader_log_before = c.log(leader)?.len();
    c.kill_9(follower)?;
    let fdir = c.node_by_id(follower)?.data_dir()?;
    std::fs::remove_dir_all(&fdir).with_context(|| format!("wipe {}", fdir.display()))?;
    reset_peak(leader_pid)?;
    let started = Instant::now();
    c.restart(follower).await?;
    let follower_pid = pid(&mut c, follower)?;
    let sampler = Sampler::start(vec![follower_pid, leader_pid]);
    let fc = c.client(follower)?;
    let mut installed = None;
    let mut tick = 0u64;
    loop {
        if let Some(s) = status(&fc).await {
            if installed.is_none() && index(&s, "snapshotIndex") > 0 {
                installed = Some(started.elapsed());
            }
            if installed.is_some() && index(&s, "appliedIndex") >= want {
                break;
            }
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "the follower did not catch up within an hour"
        );
        tick += 1;
        if tick.is_multiple_of(300) {
            let fs = status(&fc).await.unwrap_or(Value::Null);
            println!(
                "rebuild  ... {:.0} s: follower snapshot index {}, applied {}",
                started.elapsed().as_secs_f64(),
                index(&fs, "snapshotIndex"),
                index(&fs, "appliedIndex")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caught_up = started.elapsed();
    let sampled = sampler.finish().await?;
    let (_, follower_peak) = rss(follower_pid);
    let (_, leader_peak) = rss(leader_pid);
    let (follower_bytes, follower_snapshot_bytes) = dir_bytes(&fdir, "snapshot");
    let follower_state = std::fs::metadata(fdir.join("state.redb"))?.len();
    let (_, leader_snapshot_bytes) = dir_bytes(&leader_dir, "snapshot");
    let leader_log = c.log(leader)?;
    let since = leader_log.get(leader_log_before..).unwrap_or("");
    let failed_sends = count(since, "failed to send snapshot");
    let timeouts = count(since, "InstallSnapshot RPC timed out");
    println!(
        "rebuild  {:>7.1} s  snapshot installed after {:.1} s (snapshot index {}); \
         leader's snapshot files {:.0} MiB; follower: state.redb {:.0} MiB, snapshot files {:.0} MiB, data dir {:.0} MiB; \
         failed snapshot sends {failed_sends} (timed out {timeouts})",
        caught_up.as_secs_f64(),
        installed.map_or(0.0, |d| d.as_secs_f64()),
        index(&before, "snapshotIndex"),
        mib(leader_snapshot_bytes),
        mib(follower_state),
        mib(follower_snapshot_bytes),
        mib(follower_bytes),
    );
    println!(
        "rebuild  peak RSS: follower {follower_peak:.0} MiB (sampled {:.0}), leader {leader_peak:.0} MiB (sampled {:.0})",
        sampled[0], sampled[1]
    );

    // restart
    let s = status(&lc).await.context("leader status")?;
    let want = index(&s, "appliedIndex");
    let (leader_log_bytes, _) = dir_bytes(&leader_dir.join("raft-log"), "");
    c.kill_9(leader)?;
    // Wait until its HTTP port can be bound again: one run's restart failed
    // with "address in use" right after the kill (cause not found).
    let http = c.node_by_id(leader)?.http.clone();
    let killed = Instant::now();
    while std::net::TcpListener::bind(&http).is_err() {
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(120),
            "{http} still taken 120 s after the kill"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let port_wait = killed.elapsed();
    let started = Instant::now();
    c.restart(leader).await?;
    let healthy = started.elapsed();
    let lpid = pid(&mut c, leader)?;
    let sampler = Sampler::start(vec![lpid]);
    let mut ready = None;
    loop {
        if ready.is_none() && lc.get_json("/readyz").await.is_ok_and(|r| r.status == 200) {
            ready = Some(started.elapsed());
        }
        if ready.is_some()
            && status(&lc)
                .await
                .is_some_and(|s| index(&s, "appliedIndex") >= want)
        {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the restarted node did not catch up within 30 min"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let applied = started.elapsed();
    let sampled = sampler.finish().await?;
    let (_, peak) = rss(lpid);
    println!(
        "restart  {:>7.1} s  HTTP up after {:.1} s, ready after {:.1} s, applied {want} after {:.1} s; \
         log dir {:.0} MiB; peak RSS {peak:.0} MiB (sampled {:.0}); HTTP port free {:.1} s after the kill",
        applied.as_secs_f64(),
        healthy.as_secs_f64(),
        ready.map_or(0.0, |d| d.as_secs_f64()),
        applied.as_secs_f64(),
        mib(leader_log_bytes),
        sampled[0],
        port_wait.as_secs_f64()
    );
    c.ensure_no_panic()
}
