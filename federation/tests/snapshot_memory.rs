//! Snapshot build and install stream from and to disk: the memory they
//! take does not grow with the state.
//!
//! The only test of this binary, so that no other test's memory counts:
//! the process's peak resident set (`VmHWM`) is reset before each phase
//! and compared with the resident set at that point.

use std::io::SeekFrom;
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use serde_json::value::RawValue;
use strait_federation::store::machine::StateMachine;
use strait_federation::{AppendEntry, Command, SiteState, TypeConfig};
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};

/// Bytes of events in the state snapshotted (MB).
const STATE_MB: u64 = 128;
/// Most the resident set may grow by in a phase: the database cache (16
/// MiB here) and a few buffers, far below the state's size (building the
/// snapshot in memory took about 2.5 times the state).
const BOUND_MB: f64 = 40.0;
/// Database page cache of both stores.
const CACHE: usize = 16 << 20;

fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn status_kb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0)
}

/// Reset the peak resident set to the current one; the current one (MiB).
fn reset_peak() -> anyhow::Result<f64> {
    std::fs::write("/proc/self/clear_refs", "5")?;
    Ok(status_kb("VmRSS:") / 1024.0)
}

/// How far the resident set rose above `base` since [`reset_peak`] (MiB).
fn growth(base: f64) -> f64 {
    status_kb("VmHWM:") / 1024.0 - base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_build_and_install_memory_does_not_grow_with_the_state() -> anyhow::Result<()> {
    let source = tempfile::tempdir()?;
    let state = SiteState::open_with_cache(&source.path().join("state.redb"), CACHE)?;
    let bus = Command::PutBus {
        name: "b".into(),
        spec: serde_json::json!({}),
    };
    state.apply(vec![entry(1, bus)], true)?;
    // Hex noise: event blocks are compressed, and the state must hold
    // about STATE_MB whatever the compression.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut noise = move || {
        let mut s = String::with_capacity(1000);
        while s.len() < 1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.push_str(&format!("{x:016x}"));
        }
        s
    };
    let (mut index, mut seq) = (2, 0u64);
    while seq * 1000 < STATE_MB << 20 {
        let mut events = Vec::with_capacity(500);
        for _ in 0..500 {
            let id = format!("e{seq}");
            let json = format!(r#"{{"id":"{id}","data":"{}"}}"#, noise());
            events.push(AppendEntry {
                bus: "b".into(),
                source: "/s".into(),
                id,
                event: RawValue::from_string(json)?,
            });
            seq += 1;
        }
        let cmd = Command::Append {
            ingest_ms: 1,
            dedup_window_ms: 60_000,
            entries: Arc::new(events),
        };
        state.apply(vec![entry(index, cmd)], false)?;
        index += 1;
    }

    // Build, through the storage interface openraft calls: for the log's
    // sake (a flush), then to send it (its file is written when first read).
    let mut sm = StateMachine::new(state.clone(), source.path(), Duration::ZERO);
    let base = reset_peak()?;
    drop(sm.get_snapshot_builder().await.build_snapshot().await?);
    let mut current = sm
        .get_current_snapshot()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no snapshot"))?;
    current.snapshot.seek(SeekFrom::End(0)).await?;
    current.snapshot.seek(SeekFrom::Start(0)).await?;
    let built = growth(base);
    let meta = current.meta.clone();

    // Install on a fresh store, the snapshot streamed into it in 3 MiB
    // chunks as openraft's transfer writes them.
    let target = tempfile::tempdir()?;
    let copy = SiteState::open_with_cache(&target.path().join("state.redb"), CACHE)?;
    let mut copy_sm = StateMachine::new(copy.clone(), target.path(), Duration::ZERO);
    let base = reset_peak()?;
    let mut data = copy_sm.begin_receiving_snapshot().await?;
    let mut buf = vec![0u8; 3 << 20];
    let mut offset = 0;
    loop {
        let n = tokio::io::AsyncReadExt::read(&mut current.snapshot, &mut buf).await?;
        if n == 0 {
            break;
        }
        data.seek(SeekFrom::Start(offset)).await?;
        data.write_all(&buf[..n]).await?;
        offset += n as u64;
    }
    data.shutdown().await?;
    copy_sm.install_snapshot(&meta, data).await?;
    let installed = growth(base);

    println!(
        "{STATE_MB} MB of events ({seq}), snapshot {offset} bytes: \
         build grew the resident set by {built:.1} MiB, install by {installed:.1} MiB"
    );
    assert_eq!(copy.view().next_seq, seq);
    assert_eq!(copy.stored_events()?, seq);
    let last = copy.read_events("b", seq - 1, 1)?;
    assert_eq!(last, state.read_events("b", seq - 1, 1)?);
    assert!(
        built < BOUND_MB,
        "building a snapshot of {STATE_MB} MB of events grew the resident set by {built:.1} MiB"
    );
    assert!(
        installed < BOUND_MB,
        "installing a snapshot of {STATE_MB} MB of events grew the resident set by {installed:.1} MiB"
    );
    Ok(())
}
