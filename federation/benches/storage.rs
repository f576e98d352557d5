//! Storage micro-benchmark: what one Raft entry of ingested events costs the
//! state machine (`SiteState::apply`) and the Raft log (`LogStore::append`)
//! on this machine's disk, outside any cluster.
//!
//! `cargo bench -p strait-federation --bench storage` prints, for entries of
//! `BENCH_EVENTS` (1000) events of 1 KiB, the time per entry and per event of:
//! - apply with an fsync per apply (the default, `state_flush_ms: 0`);
//! - apply without fsync;
//! - log append (always fsynced).
//!
//! Knobs: `BENCH_ENTRIES` (200), `BENCH_EVENTS` (1000), `BENCH_DIR`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use serde_json::value::RawValue;
use strait_federation::store::log::LogStore;
use strait_federation::{AppendEntry, Command, SiteState, TypeConfig};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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
            r#"{{"specversion":"1.0","id":"bench-{i}","source":"/bench","type":"bench.event","datacontenttype":"application/json","data":{{"seq":{i},"payload":"{payload}"}}}}"#
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

fn report(name: &str, total: Duration, entries: u64, events: u64) {
    println!(
        "{name:<32} {:>8.2} ms/entry {:>8.2} µs/event {:>10.0} events/s",
        total.as_secs_f64() * 1e3 / entries as f64,
        total.as_secs_f64() * 1e6 / (entries * events) as f64,
        (entries * events) as f64 / total.as_secs_f64()
    );
}

fn main() -> anyhow::Result<()> {
    let entries = env_or("BENCH_ENTRIES", 200);
    let events = env_or("BENCH_EVENTS", 1000);
    let parent = std::env::var("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = tempfile::Builder::new()
        .prefix("strait-storage-bench-")
        .tempdir_in(parent)?;
    let payload = "x".repeat(1024);
    println!("{entries} entries of {events} events of 1 KiB");
    for durable in [true, false] {
        let state = SiteState::open(&dir.path().join(format!("state-{durable}.redb")))?;
        let bus = Command::PutBus {
            name: "default".into(),
            spec: serde_json::json!({}),
        };
        state.apply(vec![entry(1, bus)], true)?;
        let mut total = Duration::ZERO;
        for k in 0..entries {
            let cmd = append_cmd(k * events, events, &payload)?;
            let e = entry(k + 2, cmd);
            let t = Instant::now();
            state.apply(vec![e], durable)?;
            total += t.elapsed();
        }
        let name = if durable {
            "apply, fsync each"
        } else {
            "apply, no fsync"
        };
        report(name, total, entries, events);
    }
    let log = LogStore::open(&dir.path().join("log"))?;
    let mut total = Duration::ZERO;
    for k in 0..entries {
        let cmd = append_cmd(k * events, events, &payload)?;
        let e = entry(k + 1, cmd);
        let t = Instant::now();
        log.append_durable(vec![e])?;
        total += t.elapsed();
    }
    report("log append (fsync)", total, entries, events);
    // The parts of a log append: encoding alone, and writing plus syncing
    // the same number of bytes to a plain file.
    let mut encode = Duration::ZERO;
    let mut sync = Duration::ZERO;
    let file = std::fs::File::create(dir.path().join("plain"))?;
    let mut at = 0u64;
    for k in 0..entries {
        let cmd = append_cmd(k * events, events, &payload)?;
        let e = entry(k + 1, cmd);
        let t = Instant::now();
        let bytes = serde_json::to_vec(&e)?;
        encode += t.elapsed();
        let t = Instant::now();
        std::os::unix::fs::FileExt::write_all_at(&file, &bytes, at)?;
        file.sync_data()?;
        sync += t.elapsed();
        at += bytes.len() as u64;
    }
    report("  of which: JSON encode", encode, entries, events);
    report("  of which: write + fdatasync", sync, entries, events);
    Ok(())
}
