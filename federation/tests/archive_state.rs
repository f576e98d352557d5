//! Archives in the site state machine: what applies archive, that a
//! re-apply after a crash archives nothing twice, that a snapshot does not
//! carry the archive (its size is independent of the archive's) and that
//! an install records the missing range as a hole that a peer fills.

use std::sync::Arc;

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use serde_json::json;
use serde_json::value::RawValue;
use strait_federation::store::archive::decode_records;
use strait_federation::{AppendEntry, Command, CommandResponse, SiteState};

struct Node {
    state: Arc<SiteState>,
    dir: tempfile::TempDir,
    index: u64,
}

impl Node {
    fn new() -> anyhow::Result<Node> {
        let dir = tempfile::tempdir()?;
        let state = SiteState::open(&dir.path().join("state.redb"))?;
        Ok(Node {
            state,
            dir,
            index: 1,
        })
    }

    fn entry(&mut self, cmd: Command) -> Entry<strait_federation::TypeConfig> {
        let e = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload: EntryPayload::Normal(cmd),
        };
        self.index += 1;
        e
    }

    fn apply(&mut self, cmd: Command) -> anyhow::Result<CommandResponse> {
        let e = self.entry(cmd);
        Ok(self.state.apply(vec![e], true)?.remove(0))
    }
}

fn append(ms: u64, events: &[(&str, &str)]) -> anyhow::Result<Command> {
    let mut entries = Vec::new();
    for (id, ty) in events {
        let json = json!({"specversion": "1.0", "id": id, "source": "/s", "type": ty, "data": "x".repeat(200)});
        entries.push(AppendEntry {
            bus: "b".into(),
            source: "/s".into(),
            id: id.to_string(),
            event: RawValue::from_string(json.to_string())?,
        });
    }
    Ok(Command::Append {
        ingest_ms: ms,
        dedup_window_ms: 60_000,
        entries: Arc::new(entries),
    })
}

fn setup(n: &mut Node) -> anyhow::Result<()> {
    n.apply(Command::PutBus {
        name: "b".into(),
        spec: json!({}),
    })?;
    let r = n.apply(Command::PutArchive {
        bus: "b".into(),
        name: "orders".into(),
        spec: json!({"pattern": {"type": ["order"]}, "retentionDays": 0}),
    })?;
    assert_eq!(r, CommandResponse::Ok);
    Ok(())
}

fn ids(state: &SiteState) -> anyhow::Result<Vec<String>> {
    let evs = state.archive().read("b", "orders", (0, 0), true, 10_000)?;
    evs.iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_slice(&e.json)?;
            Ok(v["id"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

#[test]
fn matching_events_are_archived_once_even_when_reapplied() -> anyhow::Result<()> {
    let mut n = Node::new()?;
    setup(&mut n)?;
    n.apply(append(
        1_000,
        &[("a", "order"), ("b", "other"), ("c", "order")],
    )?)?;
    assert_eq!(ids(&n.state)?, ["a", "c"]);
    // After a crash the state may be behind the log: the same entry is
    // applied again (same index) and archives nothing twice.
    n.index -= 1;
    n.apply(append(
        1_000,
        &[("a", "order"), ("b", "other"), ("c", "order")],
    )?)?;
    assert_eq!(ids(&n.state)?, ["a", "c"]);
    // A duplicate (same source and id) is not archived.
    n.apply(append(2_000, &[("a", "order"), ("d", "order")])?)?;
    assert_eq!(ids(&n.state)?, ["a", "c", "d"]);
    let stats = n.state.archive().stats("b", "orders");
    assert_eq!(stats.event_count, 3);
    assert!(stats.size_bytes > 600);
    // Reopened: the same.
    let path = n.dir.path().join("state.redb");
    drop(n.state);
    n.state = SiteState::open(&path)?;
    assert_eq!(ids(&n.state)?, ["a", "c", "d"]);
    // Unknown bus, unknown archive.
    let r = n.apply(Command::PutArchive {
        bus: "nope".into(),
        name: "x".into(),
        spec: json!({}),
    })?;
    assert!(matches!(r, CommandResponse::NotFound(_)), "{r:?}");
    let r = n.apply(Command::DeleteArchive {
        bus: "b".into(),
        name: "x".into(),
    })?;
    assert!(matches!(r, CommandResponse::NotFound(_)), "{r:?}");
    // Delete: the files go.
    n.apply(Command::DeleteArchive {
        bus: "b".into(),
        name: "orders".into(),
    })?;
    assert!(!n.dir.path().join("archive/b/orders").exists());
    Ok(())
}

#[test]
fn a_snapshot_does_not_carry_the_archive_and_an_install_records_a_hole() -> anyhow::Result<()> {
    let mut leader = Node::new()?;
    setup(&mut leader)?;
    let empty = leader.state.snapshot_bytes()?.data.len();
    // About 2.5 MB of archived events.
    for i in 0..100 {
        let evs: Vec<(String, &str)> = (0..40).map(|j| (format!("e{i}-{j}"), "order")).collect();
        let refs: Vec<(&str, &str)> = evs.iter().map(|(a, b)| (a.as_str(), *b)).collect();
        leader.apply(append(10_000 + i, &refs)?)?;
    }
    // Delivered events leave the state; the archive keeps them.
    leader.apply(Command::Checkpoint {
        now_ms: 1_000_000,
        retention_ms: 0,
        dedup_window_ms: 0,
        cursors: vec![],
        journal: vec![],
        counts: vec![],
    })?;
    let archived = leader.state.archive().stats("b", "orders");
    assert_eq!(archived.event_count, 4_000);
    let snap = leader.state.snapshot_bytes()?;
    assert!(
        (snap.data.len() as u64) < archived.size_bytes / 4,
        "snapshot {} bytes (empty: {empty}), archive {} bytes",
        snap.data.len(),
        archived.size_bytes
    );
    // A follower that gets the snapshot lacks the archived entries: it
    // records them as a hole, and fills it from the leader's archive.
    let follower = Node::new()?;
    follower.state.install_snapshot(&snap.data)?;
    let holes = follower.state.archive().holes("b", "orders");
    let upto = snap.last_applied.map(|l| l.index).unwrap_or(0);
    assert_eq!(holes.len(), 1);
    assert_eq!(holes[0].1, upto);
    let (mut from, hi) = holes[0];
    while from <= hi {
        let (bytes, got_upto) =
            leader
                .state
                .archive()
                .read_range("b", "orders", from, hi, 256 << 10)?;
        let events = decode_records(&bytes)?;
        follower
            .state
            .archive()
            .fill("b", "orders", from, got_upto, &events)?;
        from = got_upto + 1;
    }
    assert!(follower.state.archive().holes("b", "orders").is_empty());
    assert_eq!(ids(&follower.state)?, ids(&leader.state)?);
    Ok(())
}

#[test]
fn retention_deletes_old_segments_and_frees_their_space() -> anyhow::Result<()> {
    let mut n = Node::new()?;
    n.apply(Command::PutBus {
        name: "b".into(),
        spec: json!({}),
    })?;
    n.apply(Command::PutArchive {
        bus: "b".into(),
        name: "orders".into(),
        spec: json!({"retentionDays": 1}),
    })?;
    let day = 86_400_000u64;
    // About 20 MiB on day 0 (more than one 16 MiB segment), a little on day 2.
    let pad = "x".repeat(4000);
    for batch in 0..100u64 {
        let mut entries = Vec::new();
        for i in batch * 50..(batch + 1) * 50 {
            let json = json!({"specversion": "1.0", "id": format!("old{i}"), "source": "/s", "type": "order", "data": pad});
            entries.push(AppendEntry {
                bus: "b".into(),
                source: "/s".into(),
                id: format!("old{i}"),
                event: RawValue::from_string(json.to_string())?,
            });
        }
        n.apply(Command::Append {
            ingest_ms: day / 2,
            dedup_window_ms: 60_000,
            entries: Arc::new(entries),
        })?;
    }
    n.apply(append(2 * day, &[("new", "order")])?)?;
    let before = n.state.archive().stats("b", "orders");
    assert_eq!(before.event_count, 5001);
    assert!(before.segments >= 2, "{before:?}");
    let checkpoint = |now_ms| Command::Checkpoint {
        now_ms,
        retention_ms: 0,
        dedup_window_ms: 0,
        cursors: vec![],
        journal: vec![],
        counts: vec![],
    };
    // Within retention: nothing goes.
    n.apply(checkpoint(day + day / 4))?;
    assert_eq!(n.state.archive().stats("b", "orders").event_count, 5001);
    // Past it: the segments wholly older go, the one holding `new` stays.
    n.apply(checkpoint(2 * day))?;
    let after = n.state.archive().stats("b", "orders");
    assert!(after.event_count < 5001, "{after:?}");
    assert!(
        after.size_bytes < before.size_bytes / 2,
        "{before:?} -> {after:?}"
    );
    let on_disk: u64 = std::fs::read_dir(n.dir.path().join("archive/b/orders"))?
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    assert!(on_disk < before.size_bytes / 2, "{on_disk} bytes on disk");
    assert!(ids(&n.state)?.contains(&"new".to_string()));
    Ok(())
}
