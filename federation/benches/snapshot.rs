//! Snapshot memory benchmark: peak RSS, time and bytes of building a
//! snapshot of a state of a given size and installing it on a fresh store,
//! through the same openraft storage interface a node uses.
//!
//! `cargo bench -p strait-federation --bench snapshot` fills a state with
//! `SNAPSHOT_BENCH_MB` (300) MB of 1 KiB events (all alike, so their
//! blocks compress to little: see the `disk` bench for realistic events),
//! then runs each phase in
//! a child process of its own (so one phase's peak does not hide another's):
//! - `fill`: apply entries of 1000 events until they add up to the size;
//! - `build`: what a leader does to send a snapshot: `get_current_snapshot`
//!   on a state machine over that state, and the file written (a node
//!   keeps no snapshot file: building one for the log's sake is a flush);
//! - `install`: `begin_receiving_snapshot`, the snapshot written into it in
//!   openraft's 3 MiB chunks, then `install_snapshot` on a fresh store.
//!
//! Each phase prints its wall time and its peak RSS (`VmHWM`). Knobs:
//! `SNAPSHOT_BENCH_MB`, `SNAPSHOT_BENCH_ARCHIVE_MB` (0: an archive on the
//! bus first takes that many MB of events, which then leave the state as
//! delivered events past retention do: the state is the same size, and a
//! snapshot should take as long as without the archive), `SNAPSHOT_BENCH_DIR` (where the states go: a 10 GB
//! state needs about 3× that free), `SNAPSHOT_BENCH_CACHE_MB` (the state
//! database's page cache, 1024 by default as on a node: the largest part
//! of the budget, which a state smaller than it fills). A run with a state of about 10 GB:
//! `SNAPSHOT_BENCH_MB=5000 SNAPSHOT_BENCH_DIR=/var/tmp cargo bench -p strait-federation --bench snapshot`.

use std::io::{Read as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, SnapshotMeta};
use serde_json::value::RawValue;
use strait_federation::store::machine::StateMachine;
use strait_federation::{AppendEntry, Command, NodeId, NodeInfo, SiteState, TypeConfig};
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};

const CHUNK: usize = 3 << 20;

// The allocator of the `strait` binary: memory figures are the node's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cache() -> usize {
    (env_or("SNAPSHOT_BENCH_CACHE_MB", 1024) as usize) << 20
}

fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn append_cmd(first: u64, n: u64, payload: &str) -> anyhow::Result<Command> {
    let mut entries = Vec::with_capacity(n as usize);
    for i in first..first + n {
        let json = format!(
            r#"{{"specversion":"1.0","id":"bench-{i}","source":"/bench","type":"bench.event","data":{{"seq":{i},"payload":"{payload}"}}}}"#
        );
        entries.push(AppendEntry {
            bus: "default".into(),
            source: "/bench".into(),
            id: format!("bench-{i}"),
            event: RawValue::from_string(json)?,
        });
    }
    Ok(Command::Append {
        ingest_ms: 1,
        dedup_window_ms: 86_400_000,
        entries: Arc::new(entries),
    })
}

/// This process's peak resident set, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Apply appends of 1000 events (ids from `*first`, ingested at
/// `ingest_ms`) until they add up to `target` bytes of events.
fn append_until(
    state: &SiteState,
    index: &mut u64,
    first: &mut u64,
    ingest_ms: u64,
    target: u64,
) -> anyhow::Result<()> {
    let payload = "x".repeat(1024);
    let mut bytes = 0u64;
    while bytes < target {
        let mut cmd = append_cmd(*first, 1000, &payload)?;
        if let Command::Append {
            entries,
            ingest_ms: ms,
            ..
        } = &mut cmd
        {
            *ms = ingest_ms;
            bytes += entries
                .iter()
                .map(|e| e.event.get().len() as u64)
                .sum::<u64>();
        }
        state.apply(vec![entry(*index, cmd)], (*index).is_multiple_of(64))?;
        *index += 1;
        *first += 1000;
    }
    Ok(())
}

/// A state of `target_mb` MB of events; with `archive_mb`, an archive on
/// the bus first takes that much (events that then leave the state, as
/// delivered events past retention do), so the state is the same size
/// with or without the archive.
fn fill(dir: &Path, target_mb: u64, archive_mb: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("state.redb");
    let state = SiteState::open_with_cache(&path, cache())?;
    let bus = Command::PutBus {
        name: "default".into(),
        spec: serde_json::json!({}),
    };
    state.apply(vec![entry(1, bus)], true)?;
    let mut index = 2;
    let mut first = 0;
    if archive_mb > 0 {
        let archive = Command::PutArchive {
            bus: "default".into(),
            name: "all".into(),
            spec: serde_json::json!({"retentionDays": 0}),
        };
        state.apply(vec![entry(index, archive)], true)?;
        index += 1;
        append_until(&state, &mut index, &mut first, 1, archive_mb << 20)?;
        // Those events leave the state (no target waits for them, they are
        // past retention, and so are their dedup entries, swept 20,000 per
        // checkpoint as on a node); the archive keeps them.
        for _ in 0..(first / 20_000 + 2) {
            let checkpoint = Command::Checkpoint {
                // After the archived events' dedup entries expire (their
                // window is a day).
                now_ms: 100_000_000,
                retention_ms: 0,
                dedup_window_ms: 1,
                cursors: vec![],
                journal: vec![],
                counts: vec![],
            };
            state.apply(vec![entry(index, checkpoint)], true)?;
            index += 1;
        }
    }
    append_until(&state, &mut index, &mut first, 200_000_000, target_mb << 20)?;
    state.flush()?;
    let archived = state.archive().stats("default", "all");
    println!(
        "events={first} archived_events={} archive_bytes={}",
        archived.event_count, archived.size_bytes
    );
    Ok(())
}

async fn build(dir: &Path) -> anyhow::Result<()> {
    let state = SiteState::open_with_cache(&dir.join("state.redb"), cache())?;
    let mut sm = StateMachine::new(state, dir, Duration::ZERO);
    // What a leader does to send a snapshot: take the current one, whose
    // file is written when first sought.
    let started = Instant::now();
    let mut snapshot = sm
        .get_current_snapshot()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no snapshot"))?;
    let bytes = snapshot.snapshot.seek(SeekFrom::End(0)).await?;
    println!("written_ms={}", started.elapsed().as_millis());
    println!("bytes={bytes}");
    // Kept for the install phase (the sent file goes when dropped).
    std::fs::copy(snapshot.snapshot.path(), dir.join("bench.snapshot"))?;
    std::fs::write(
        dir.join("bench-meta.json"),
        serde_json::to_vec(&snapshot.meta)?,
    )?;
    Ok(())
}

fn snapshot_file(dir: &Path) -> anyhow::Result<PathBuf> {
    Ok(dir.join("bench.snapshot"))
}

async fn install(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    let meta: SnapshotMeta<NodeId, NodeInfo> =
        serde_json::from_slice(&std::fs::read(from.join("bench-meta.json"))?)?;
    let state = SiteState::open_with_cache(&to.join("state.redb"), cache())?;
    let mut sm = StateMachine::new(state.clone(), to, Duration::ZERO);
    let mut data = sm.begin_receiving_snapshot().await?;
    // As openraft's chunked transfer writes it.
    let mut src = std::fs::File::open(snapshot_file(from)?)?;
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        data.seek(SeekFrom::Start(offset)).await?;
        data.write_all(&buf[..n]).await?;
        offset += n as u64;
    }
    drop(buf);
    data.shutdown().await?;
    sm.install_snapshot(&meta, data).await?;
    println!("next_seq={}", state.view().next_seq);
    Ok(())
}

fn run_phase(phase: &str, root: &Path) -> anyhow::Result<(Duration, f64, String)> {
    let started = Instant::now();
    let out = std::process::Command::new(std::env::current_exe()?)
        .env("SNAPSHOT_BENCH_PHASE", phase)
        .env("SNAPSHOT_BENCH_ROOT", root)
        .output()?;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "phase {phase} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peak = stdout
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_mib="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let rest = stdout
        .lines()
        .filter(|l| !l.starts_with("peak_rss_mib="))
        .collect::<Vec<_>>()
        .join(" ");
    Ok((took, peak, rest))
}

fn child(phase: &str) -> anyhow::Result<()> {
    let root = PathBuf::from(std::env::var("SNAPSHOT_BENCH_ROOT")?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match phase {
        "fill" => fill(
            &root.join("source"),
            env_or("SNAPSHOT_BENCH_MB", 300),
            env_or("SNAPSHOT_BENCH_ARCHIVE_MB", 0),
        )?,
        "build" => rt.block_on(build(&root.join("source")))?,
        "install" => rt.block_on(install(&root.join("source"), &root.join("copy")))?,
        other => anyhow::bail!("unknown phase {other}"),
    }
    println!("peak_rss_mib={:.0}", peak_rss_mib());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if let Ok(phase) = std::env::var("SNAPSHOT_BENCH_PHASE") {
        return child(&phase);
    }
    let mb = env_or("SNAPSHOT_BENCH_MB", 300);
    let parent = std::env::var("SNAPSHOT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let root = tempfile::Builder::new()
        .prefix("strait-snapshot-bench-")
        .tempdir_in(parent)?;
    println!(
        "state of {mb} MB of 1 KiB events, state cache {} MiB",
        cache() >> 20
    );
    let (t, peak, info) = run_phase("fill", root.path())?;
    let state_bytes = std::fs::metadata(root.path().join("source/state.redb"))?.len();
    println!(
        "fill     {:>8.1} s  peak RSS {peak:>7.0} MiB  state {:>8.1} MiB  {info}",
        t.as_secs_f64(),
        mib(state_bytes)
    );
    let (t, peak, info) = run_phase("build", root.path())?;
    let snap_bytes = std::fs::metadata(root.path().join("source/bench.snapshot"))?.len();
    println!(
        "build    {:>8.1} s  peak RSS {peak:>7.0} MiB  snapshot {:>8.1} MiB  {info}",
        t.as_secs_f64(),
        mib(snap_bytes)
    );
    let (t, peak, info) = run_phase("install", root.path())?;
    let copy_bytes = std::fs::metadata(root.path().join("copy/state.redb"))?.len();
    println!(
        "install  {:>8.1} s  peak RSS {peak:>7.0} MiB  installed state {:>8.1} MiB  {info}",
        t.as_secs_f64(),
        mib(copy_bytes)
    );
    Ok(())
}
