//! Disk benchmark: bytes on disk per retained event on one node, at steady
//! state, with the split between the Raft log, the state database and
//! snapshot files.
//!
//! `cargo bench -p strait-federation --bench disk` drives one node's
//! storage the way a site does, without the network: each entry of
//! `DISK_BENCH_BATCH` (100) events of about 1 KiB is appended to the Raft
//! log (fsynced) and applied to the state; a checkpoint every simulated
//! second drops events older than the retention; snapshots are built when
//! the site's trigger ([`strait_federation::site::snapshot_due`]) says so
//! and the log is then purged as openraft does (keeping
//! `max_in_snapshot_log_to_keep`, 256, entries before the snapshot).
//!
//! Events are realistic CloudEvents JSON: order events with a random id,
//! time, trace id, customer, items, address and a free-text note drawn
//! from a vocabulary (neither all alike nor random bytes), at a simulated
//! 15,000 events/s. The retention is the time `DISK_BENCH_EVENTS`
//! (1,000,000) events take at that rate; the run ingests that many (fill)
//! and then half as many again (steady state: as many are dropped as
//! added), and prints the split after each phase. Knobs:
//! `DISK_BENCH_EVENTS`, `DISK_BENCH_BATCH`, `DISK_BENCH_SNAPSHOT_EVERY`
//! (the node's `snapshot_every`, 20,000), `DISK_BENCH_DIR`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use serde_json::value::RawValue;
use strait_federation::site::snapshot_due;
use strait_federation::store::log::LogStore;
use strait_federation::store::machine::StateMachine;
use strait_federation::{AppendEntry, Command, SiteState, TypeConfig};

/// Simulated ingest rate (sets the clock, not the pace).
const RATE: u64 = 15_000;

/// openraft's `max_in_snapshot_log_to_keep` as a site sets it.
const KEEP: u64 = 256;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: deterministic, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }

    fn hex(&mut self, n: usize) -> String {
        let mut s = String::with_capacity(n);
        while s.len() < n {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(n);
        s
    }
}

const WORDS: &[&str] = &[
    "the",
    "customer",
    "asked",
    "for",
    "delivery",
    "before",
    "noon",
    "please",
    "leave",
    "parcel",
    "with",
    "neighbour",
    "door",
    "code",
    "is",
    "gift",
    "wrap",
    "invoice",
    "company",
    "address",
    "fragile",
    "handle",
    "care",
    "second",
    "floor",
    "ring",
    "bell",
    "twice",
    "call",
    "on",
    "arrival",
    "reorder",
    "same",
    "as",
    "last",
    "time",
    "discount",
    "applied",
    "loyalty",
    "points",
    "express",
    "shipping",
    "requested",
    "weekend",
    "office",
    "closed",
    "after",
    "six",
    "back",
    "entrance",
    "garden",
    "shed",
    "reception",
    "desk",
    "signature",
    "required",
    "no",
    "plastic",
    "packaging",
    "recycled",
    "box",
    "preferred",
    "colour",
    "blue",
    "size",
    "medium",
    "exchange",
    "previous",
    "order",
    "damaged",
    "replacement",
    "urgent",
    "birthday",
    "present",
    "do",
    "not",
    "open",
    "until",
    "friday",
    "contact",
    "by",
    "email",
    "only",
    "thanks",
    "and",
    "a",
    "of",
];
const FIRST: &[&str] = &[
    "Anna", "Ben", "Chloe", "David", "Emma", "Felix", "Grace", "Hugo", "Ines", "Jonas", "Karin",
    "Liam", "Mila", "Noah", "Olga", "Paul", "Rosa", "Sven", "Tara", "Ugo",
];
const LAST: &[&str] = &[
    "Schmidt", "Dubois", "Rossi", "Garcia", "Novak", "Jensen", "Silva", "Kowalski", "Meyer",
    "Martin", "Bianchi", "Lopez", "Horvat", "Nielsen", "Costa", "Wagner",
];
const CITIES: &[&str] = &[
    "Berlin", "Lyon", "Milano", "Sevilla", "Praha", "Aarhus", "Porto", "Krakow", "Hamburg",
    "Nantes", "Torino", "Valencia", "Brno", "Odense", "Braga", "Gdansk",
];
const PRODUCTS: &[&str] = &[
    "desk lamp",
    "coffee grinder",
    "rain jacket",
    "trail shoes",
    "phone case",
    "water bottle",
    "backpack",
    "wool socks",
    "kettle",
    "yoga mat",
    "headphones",
    "notebook",
    "chef knife",
    "bike light",
    "plant pot",
    "tea set",
];
const TYPES: &[&str] = &[
    "created",
    "paid",
    "packed",
    "shipped",
    "delivered",
    "cancelled",
];
const REGIONS: &[&str] = &["eu-west-1", "eu-central-1", "us-east-1", "ap-southeast-1"];

/// One order event of about 1 KiB (`i` makes the clock advance).
fn event(rng: &mut Rng, i: u64) -> (String, String, String) {
    let id = format!(
        "{}-{}-4{}-{}-{}",
        rng.hex(8),
        rng.hex(4),
        rng.hex(3),
        rng.hex(4),
        rng.hex(12)
    );
    let source = format!("/shop/{}/orders", rng.pick(REGIONS));
    let ms = 1_796_000_000_000 + i * 1000 / RATE;
    let (secs, milli) = (ms / 1000, ms % 1000);
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let (first, last) = (rng.pick(FIRST), rng.pick(LAST));
    let mut items = String::new();
    let mut total = 0u64;
    for k in 0..2 + rng.below(4) {
        let cents = 199 + rng.below(20_000);
        let qty = 1 + rng.below(4);
        total += cents * qty;
        if k > 0 {
            items.push(',');
        }
        items.push_str(&format!(
            r#"{{"sku":"SKU-{:06}","name":"{}","qty":{qty},"unitPrice":{}.{:02}}}"#,
            rng.below(1_000_000),
            rng.pick(PRODUCTS),
            cents / 100,
            cents % 100
        ));
    }
    let mut json = format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"{source}","type":"com.example.order.{ty}","time":"2026-12-01T{h:02}:{m:02}:{s:02}.{milli:03}Z","datacontenttype":"application/json","traceparent":"00-{trace}-{span}-01","data":{{"orderId":"ORD-{order:010}","customer":{{"id":"C{cust:07}","name":"{first} {last}","email":"{fl}.{ll}{n}@example.com","tier":"{tier}"}},"items":[{items}],"total":{t1}.{t2:02},"currency":"EUR","shipping":{{"method":"{method}","address":{{"street":"{num} {street} Street","city":"{city}","postalCode":"{zip:05}","country":"{cc}"}}}},"note":""#,
        ty = rng.pick(TYPES),
        trace = rng.hex(32),
        span = rng.hex(16),
        order = rng.below(10_000_000_000),
        cust = rng.below(10_000_000),
        fl = first.to_lowercase(),
        ll = last.to_lowercase(),
        n = rng.below(100),
        tier = rng.pick(&["gold", "silver", "bronze", "none"]),
        t1 = total / 100,
        t2 = total % 100,
        method = rng.pick(&["standard", "express", "pickup"]),
        num = 1 + rng.below(200),
        street = rng.pick(LAST),
        city = rng.pick(CITIES),
        zip = rng.below(100_000),
        cc = rng.pick(&["DE", "FR", "IT", "ES", "CZ", "DK", "PT", "PL"]),
    );
    let mut first_word = true;
    while json.len() < 1020 {
        if !first_word {
            json.push(' ');
        }
        first_word = false;
        json.push_str(rng.pick(WORDS));
    }
    json.push_str("\"}}");
    (id, source, json)
}

fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn dir_bytes(dir: &Path, keep: &dyn Fn(&str) -> bool) -> u64 {
    let Ok(it) = std::fs::read_dir(dir) else {
        return 0;
    };
    it.flatten()
        .filter_map(|e| {
            let md = e.metadata().ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            if md.is_dir() {
                Some(dir_bytes(&e.path(), keep))
            } else if keep(&name) {
                Some(on_disk(&md))
            } else {
                None
            }
        })
        .sum()
}

/// Bytes a file takes on disk (its blocks: the state database grows its
/// file ahead of use, and what it has not written yet takes no space).
fn on_disk(md: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    md.blocks() * 512
}

struct Split {
    log: u64,
    state: u64,
    /// The state file's length (its allocated blocks are `state`).
    state_len: u64,
    snapshots: u64,
}

fn split(dir: &Path) -> Split {
    Split {
        log: dir_bytes(&dir.join("raft-log"), &|_| true),
        state: std::fs::metadata(dir.join("state.redb"))
            .map(|m| on_disk(&m))
            .unwrap_or(0),
        state_len: std::fs::metadata(dir.join("state.redb"))
            .map(|m| m.len())
            .unwrap_or(0),
        snapshots: dir_bytes(dir, &|n| n.starts_with("snapshot")),
    }
}

fn print(phase: &str, s: &Split, retained: u64, json_mean: f64) {
    let per = |b: u64| b as f64 / retained.max(1) as f64;
    let total = s.log + s.state + s.snapshots;
    println!(
        "{phase:<7} retained {retained:>9} events ({:.0} B JSON each): {:>7.0} B/event on disk = log {:>6.0} + state {:>6.0} + snapshots {:>6.0}  (total {:.0} MiB; state.redb's length {:.0} B/event)",
        json_mean,
        per(total),
        per(s.log),
        per(s.state),
        per(s.snapshots),
        total as f64 / (1 << 20) as f64,
        per(s.state_len)
    );
}

async fn run(dir: &Path) -> anyhow::Result<()> {
    let retained = env_or("DISK_BENCH_EVENTS", 1_000_000);
    let batch = env_or("DISK_BENCH_BATCH", 100).max(1);
    let every = env_or("DISK_BENCH_SNAPSHOT_EVERY", 20_000).max(16);
    let retention_ms = retained * 1000 / RATE;
    let dedup_window_ms = env_or("DISK_BENCH_DEDUP_MS", retention_ms);
    println!(
        "{retained} events retained ({} s at {RATE} events/s), dedup window {} s, entries of {batch} events, snapshot_every {every}",
        retention_ms / 1000,
        dedup_window_ms / 1000
    );
    let mut log = LogStore::open(&dir.join("raft-log"))?;
    let state = SiteState::open(&dir.join("state.redb"))?;
    let mut sm = StateMachine::new(state.clone(), dir, Duration::ZERO);
    let mut index = 1;
    let bus = entry(
        index,
        Command::PutBus {
            name: "default".into(),
            spec: serde_json::json!({}),
        },
    );
    log.append_durable(vec![bus.clone()])?;
    state.apply(vec![bus], true)?;
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut snapshot: Option<u64> = None;
    let mut snapshots = 0;
    let started = Instant::now();
    let total = retained + retained / 2;
    let mut ingested = 0u64;
    let mut json_bytes = 0u64;
    let mut next_checkpoint = 1000;
    let mut samples: Vec<(u64, u64)> = Vec::new();
    while ingested < total {
        let mut entries = Vec::with_capacity(batch as usize);
        let mut bytes = 0;
        for _ in 0..batch {
            let (id, source, json) = event(&mut rng, ingested);
            bytes += json.len() as u64;
            entries.push(AppendEntry {
                bus: "default".into(),
                source,
                id,
                event: RawValue::from_string(json)?,
            });
            ingested += 1;
        }
        let now_ms = ingested * 1000 / RATE;
        json_bytes += bytes;
        index += 1;
        let e = entry(
            index,
            Command::Append {
                ingest_ms: now_ms,
                dedup_window_ms,
                entries: Arc::new(entries),
            },
        );
        log.append_durable(vec![e.clone()])?;
        state.apply(vec![e], true)?;
        if now_ms >= next_checkpoint {
            next_checkpoint += 1000;
            index += 1;
            let e = entry(
                index,
                Command::Checkpoint {
                    now_ms,
                    retention_ms,
                    dedup_window_ms,
                    cursors: Vec::new(),
                    journal: Vec::new(),
                    counts: Vec::new(),
                },
            );
            log.append_durable(vec![e.clone()])?;
            state.apply(vec![e], true)?;
        }
        if ingested > retained {
            // Steady state: what the disk holds, sampled every entry.
            let now = split(dir);
            samples.push((now.log + now.state + now.snapshots, now.log));
        }
        let since = index - snapshot.unwrap_or(0);
        let state_bytes = strait_federation::site::disk_bytes(&dir.join("state.redb"));
        if snapshot_due(since, every, log.bytes_after(snapshot), state_bytes) {
            let mut builder = sm.get_snapshot_builder().await;
            let snap = builder.build_snapshot().await?;
            drop(snap);
            snapshots += 1;
            snapshot = Some(index);
            if index > KEEP {
                log.purge(LogId::new(CommittedLeaderId::new(1, 1), index - KEEP))
                    .await?;
            }
        }
        if ingested == retained || ingested >= total {
            // Deletions are paced (a background thread): let them finish.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let kept = state.stored_events()?;
            let phase = if ingested >= total { "steady" } else { "fill" };
            print(
                phase,
                &split(dir),
                kept,
                json_bytes as f64 / ingested as f64,
            );
            let stored = state.view().stored_bytes;
            let dedup = state.dedup_entries()?;
            println!(
                "        stored (events, link queues, dedup index: what max_state_bytes counts) {:.0} B/event; dedup entries {:.2} per retained event",
                stored as f64 / kept.max(1) as f64,
                dedup as f64 / kept.max(1) as f64
            );
        }
    }
    let per = |b: f64| b / retained as f64;
    let n = samples.len().max(1) as f64;
    let mean = samples.iter().map(|s| s.0 as f64).sum::<f64>() / n;
    let max = samples.iter().map(|s| s.0).max().unwrap_or(0) as f64;
    let log_mean = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let log_max = samples.iter().map(|s| s.1).max().unwrap_or(0) as f64;
    println!(
        "steady state over {} samples (one an entry): mean {:.0} B/event on disk (log {:.0}), max {:.0} (log {:.0})",
        samples.len(),
        per(mean),
        per(log_mean),
        per(max),
        per(log_max)
    );
    println!(
        "{ingested} events ingested in {:.1} s, {snapshots} snapshots built",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let parent = std::env::var("DISK_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = tempfile::Builder::new()
        .prefix("strait-disk-bench-")
        .tempdir_in(parent)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(dir.path()))?;
    compression();
    Ok(())
}

/// What compressing blocks costs: building the rows of entries of 100
/// events (what an apply does per bus) and reading every event back (what
/// the dispatcher does), CPU only.
fn compression() {
    use strait_federation::store::blocks::{Block, BlockBuilder};
    let mut rng = Rng(0x0ddb_a11c_0ffe_e001);
    let entries: Vec<Vec<String>> = (0..200)
        .map(|k| (0..100).map(|i| event(&mut rng, k * 100 + i).2).collect())
        .collect();
    let raw: usize = entries.iter().flatten().map(String::len).sum();
    let started = Instant::now();
    let mut rows = Vec::new();
    for (k, events) in entries.iter().enumerate() {
        let mut b = BlockBuilder::new();
        for (i, json) in events.iter().enumerate() {
            b.push((k * 100 + i) as u64, 1, json.as_bytes());
        }
        rows.extend(b.finish(7));
    }
    let build = started.elapsed();
    let stored: usize = rows.iter().map(|(_, r)| r.len()).sum();
    let started = Instant::now();
    let mut read = 0usize;
    let mut buf = Vec::new();
    for (_, row) in &rows {
        if let Ok(block) = Block::parse(row) {
            let _ = block.for_each_from(0, &mut buf, |_, _, json| {
                read += json.len();
                true
            });
        }
    }
    let scan = started.elapsed();
    let n = (entries.len() * 100) as f64;
    println!(
        "blocks: {:.2}x smaller ({raw} -> {stored} bytes in {} rows); build {:.2} us/event, read back {:.2} us/event ({read} bytes)",
        raw as f64 / stored as f64,
        rows.len(),
        build.as_secs_f64() * 1e6 / n,
        scan.as_secs_f64() * 1e6 / n
    );
}
