//! A one-member site on real redb files: writes go through openraft, state
//! survives a restart, dedup holds, snapshots round-trip.

use std::time::Duration;

use serde_json::json;
use serde_json::value::RawValue;
use strait_federation::{
    AppendEntry, AppendOutcome, Command, CommandResponse, NodeInfo, Refusal, Site, SiteOptions,
    SiteState,
};

fn opts(dir: &std::path::Path) -> SiteOptions {
    SiteOptions {
        data_dir: dir.to_path_buf(),
        node_id: 1,
        node: NodeInfo::default(),
        snapshot_every: 1000,
        state_flush_interval: std::time::Duration::from_millis(100),
        log_sync_interval: std::time::Duration::ZERO,
        timing: Default::default(),
    }
}

fn entry(bus: &str, id: &str) -> AppendEntry {
    let ev =
        json!({"specversion": "1.0", "id": id, "source": "/t", "type": "t", "data": {"id": id}});
    AppendEntry {
        bus: bus.into(),
        source: "/t".into(),
        id: id.into(),
        event: RawValue::from_string(ev.to_string()).expect("raw"),
    }
}

async fn open(dir: &std::path::Path) -> Site {
    let site = Site::open(opts(dir)).await.expect("open site");
    site.wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    site
}

fn append(entries: Vec<AppendEntry>) -> Command {
    Command::Append {
        ingest_ms: 1_000_000,
        dedup_window_ms: 60_000,
        entries: entries.into(),
    }
}

async fn put_bus(site: &Site, name: &str, spec: serde_json::Value) -> CommandResponse {
    site.write(Command::PutBus {
        name: name.into(),
        spec,
    })
    .await
    .expect("put bus")
}

/// Rule `r` on `bus` with one target `t`, matching everything.
async fn put_rule(site: &Site, bus: &str) -> CommandResponse {
    site.write(Command::PutRule {
        bus: bus.into(),
        name: "r".into(),
        spec: json!({"pattern": {}}),
        targets: vec!["t".into()],
    })
    .await
    .expect("rule")
}

async fn checkpoint(
    site: &Site,
    now_ms: u64,
    retention_ms: u64,
    dedup_window_ms: u64,
    cursors: Vec<(String, u64)>,
) {
    site.write(Command::Checkpoint {
        now_ms,
        retention_ms,
        dedup_window_ms,
        cursors,
        journal: Vec::new(),
        counts: Vec::new(),
    })
    .await
    .expect("checkpoint");
}

/// The outcomes of an append.
#[track_caller]
fn appended(r: CommandResponse) -> Vec<AppendOutcome> {
    match r {
        CommandResponse::Appended(o) => o,
        other => panic!("unexpected {other:?}"),
    }
}

#[track_caller]
fn assert_ok(r: &CommandResponse) {
    assert!(matches!(r, CommandResponse::Ok), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_survive_restart_and_dedup_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = open(dir.path()).await;
    assert_ok(&put_bus(&site, "b", json!({"name": "b"})).await);
    let r = site
        .write(append(vec![
            entry("b", "1"),
            entry("b", "2"),
            entry("b", "1"),
            entry("nope", "3"),
        ]))
        .await
        .expect("append");
    assert_eq!(
        appended(r),
        vec![
            AppendOutcome::Accepted(0),
            AppendOutcome::Accepted(1),
            AppendOutcome::Duplicate,
            AppendOutcome::NoSuchBus
        ]
    );
    site.shutdown().await.expect("shutdown");
    drop(site);

    let site = open(dir.path()).await;
    let events = site.state.read_events("b", 0, 10).expect("read");
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].seq, 1);
    let v: serde_json::Value = serde_json::from_slice(&events[1].json).expect("json");
    assert_eq!(v["id"], "2");
    // Still a duplicate after the restart, and sequence numbers continue.
    let r = site
        .write(append(vec![entry("b", "2"), entry("b", "4")]))
        .await
        .expect("append");
    assert_eq!(
        appended(r),
        vec![AppendOutcome::Duplicate, AppendOutcome::Accepted(2)]
    );
    site.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_cursors_and_gc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = open(dir.path()).await;
    put_bus(&site, "b", json!({})).await;
    site.write(append(vec![entry("b", "before")]))
        .await
        .expect("append");
    assert_ok(&put_rule(&site, "b").await);
    // A new target starts at the head.
    assert_eq!(site.state.view().cursors.get("b/r/t"), Some(&1));
    let r = site
        .write(Command::DeleteBus { name: "b".into() })
        .await
        .expect("delete");
    assert!(matches!(r, CommandResponse::Conflict(_)), "{r:?}");
    site.write(append(vec![entry("b", "after")]))
        .await
        .expect("append");
    // Checkpoint past everything with zero retention: both events go.
    checkpoint(
        &site,
        2_000_000,
        0,
        0,
        vec![("b/r/t".into(), 2), ("b/r/unknown".into(), 9)],
    )
    .await;
    assert_eq!(site.state.view().cursors.get("b/r/t"), Some(&2));
    assert!(!site.state.view().cursors.contains_key("b/r/unknown"));
    assert_eq!(site.state.stored_events().expect("count"), 0);
    // Cursors never move backwards.
    checkpoint(&site, 2_000_000, 0, 0, vec![("b/r/t".into(), 1)]).await;
    assert_eq!(site.state.view().cursors.get("b/r/t"), Some(&2));
    site.shutdown().await.expect("shutdown");
}

/// Snapshot files in the data directory.
fn snapshot_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("data dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snapshot"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_round_trips_into_a_fresh_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    // What an older version left: the last snapshot as files beside the
    // state (which is always at least as new). They go at the next start.
    std::fs::write(dir.path().join("snapshot.meta.json"), b"{}").expect("meta");
    std::fs::write(dir.path().join("snapshot-1-2.data"), b"old").expect("data");
    let site = open(dir.path()).await;
    assert_eq!(snapshot_files(dir.path()), Vec::<String>::new());
    put_bus(&site, "b", json!({"d": 1})).await;
    let entries = (0..50).map(|i| entry("b", &format!("e{i}"))).collect();
    site.write(append(entries)).await.expect("append");
    site.raft.trigger().snapshot().await.expect("trigger");
    site.raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.snapshot.is_some(), "snapshot built")
        .await
        .expect("snapshot");
    // The state is the snapshot: building one writes no file.
    assert_eq!(snapshot_files(dir.path()), Vec::<String>::new());
    let built = site.raft.metrics().borrow().snapshot;
    // What a leader sends is the current state, at least as new.
    let current = site
        .raft
        .get_snapshot()
        .await
        .expect("get snapshot")
        .expect("a snapshot");
    assert!(current.meta.last_log_id >= built);
    assert_eq!(current.meta.last_log_id, site.state.view().last_applied);
    drop(current);
    assert_eq!(snapshot_files(dir.path()), Vec::<String>::new());
    let bytes = site.state.snapshot_bytes().expect("bytes").data;
    site.shutdown().await.expect("shutdown");

    let other = tempfile::tempdir().expect("tempdir");
    let fresh = SiteState::open(&other.path().join("state.redb")).expect("fresh");
    fresh.install_snapshot(&bytes).expect("install");
    assert_eq!(fresh.view().next_seq, 50);
    assert_eq!(fresh.view().buses.get("b"), Some(&json!({"d": 1})));
    let evs = fresh.read_events("b", 0, 100).expect("read");
    assert_eq!(evs.len(), 50);
    let v: serde_json::Value = serde_json::from_slice(&evs[49].json).expect("json");
    assert_eq!(v["id"], "e49");
    // Tables that were empty in the snapshot exist after the install: the
    // restored state can be read and snapshotted again.
    assert!(fresh.read_outbox("aws", 0, 10).expect("outbox").is_empty());
    assert!(fresh.read_inbox("aws", 0, 10).expect("inbox").is_empty());
    // Identical, row for row: its snapshot is the same.
    assert!(
        fresh
            .snapshot_bytes()
            .expect("snapshot of the installed state")
            .data
            == bytes
    );
}

fn append_at(ingest_ms: u64, entries: Vec<AppendEntry>) -> Command {
    Command::Append {
        ingest_ms,
        dedup_window_ms: 60_000,
        entries: entries.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dedup_window_is_not_extended_by_repeats_and_is_swept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = open(dir.path()).await;
    put_bus(&site, "b", json!({})).await;
    let first = site
        .write(append_at(1_000_000, vec![entry("b", "x")]))
        .await
        .expect("append");
    assert!(matches!(appended(first)[0], AppendOutcome::Accepted(_)));
    let again = site
        .write(append_at(1_050_000, vec![entry("b", "x")]))
        .await
        .expect("append");
    assert_eq!(appended(again), vec![AppendOutcome::Duplicate]);
    // 70 s after the first copy: outside the window even though a repeat came at 50 s.
    let later = site
        .write(append_at(1_070_000, vec![entry("b", "x")]))
        .await
        .expect("append");
    assert!(matches!(appended(later)[0], AppendOutcome::Accepted(_)));

    let dedup_len =
        |site: &Site| -> usize { site.state.dedup_entries().expect("dedup entries") as usize };
    site.write(append_at(1_070_000, vec![entry("b", "y")]))
        .await
        .expect("append");
    assert_eq!(dedup_len(&site), 2);
    checkpoint(&site, 1_100_000, 3_600_000, 60_000, vec![]).await;
    assert_eq!(
        dedup_len(&site),
        2,
        "both entries are still inside the window"
    );
    checkpoint(&site, 1_200_000, 3_600_000, 60_000, vec![]).await;
    assert_eq!(dedup_len(&site), 0, "expired entries are swept");
    site.shutdown().await.expect("shutdown");
}

fn items(tags: &[&str]) -> Vec<Box<RawValue>> {
    tags.iter()
        .map(|t| RawValue::from_string(json!({"d": t}).to_string()).expect("raw"))
        .collect()
}

fn spec(hash: &str, json: &str) -> strait_federation::LinkSpec {
    strait_federation::LinkSpec {
        hash: hash.into(),
        spec: RawValue::from_string(json.into()).expect("raw"),
    }
}

/// Rule definitions travel once per link command and batch, and live as
/// long as an outbox or inbox entry may name them.
#[tokio::test]
async fn link_rule_definitions_live_as_long_as_their_entries() {
    use strait_federation::LinkAnswer;
    let dir = tempfile::tempdir().expect("tempdir");
    let site = open(dir.path()).await;
    let h1 = "00000000000000a1";
    let h2 = "00000000000000b2";
    let named = |h: &str, n: u32| {
        RawValue::from_string(format!(r#"{{"ruleHash":"{h}","n":{n}}}"#)).expect("raw")
    };
    site.write(Command::LinkEnqueue {
        remote: "aws".into(),
        items: vec![named(h1, 1), named(h2, 2), named(h1, 3)].into(),
        specs: vec![spec(h1, r#"{"r":1}"#), spec(h2, r#"{"r":2}"#)],
    })
    .await
    .expect("enqueue");
    let (entries, specs) = site
        .state
        .read_outbox_with_specs("aws", 1, 10)
        .expect("read");
    assert_eq!(entries.len(), 3);
    assert_eq!(
        specs,
        vec![
            (h1.to_string(), br#"{"r":1}"#.to_vec()),
            (h2.to_string(), br#"{"r":2}"#.to_vec())
        ]
    );
    // Only what the entries read name comes along.
    let (_, specs) = site
        .state
        .read_outbox_with_specs("aws", 3, 10)
        .expect("read");
    assert_eq!(specs, vec![(h1.to_string(), br#"{"r":1}"#.to_vec())]);
    // Partly acknowledged: kept; drained: gone.
    site.write(Command::LinkAcked {
        remote: "aws".into(),
        upto: 2,
    })
    .await
    .expect("ack");
    assert_eq!(
        site.state
            .read_outbox_with_specs("aws", 3, 10)
            .expect("read")
            .1
            .len(),
        1
    );
    let r = site
        .write(Command::LinkAcked {
            remote: "aws".into(),
            upto: 3,
        })
        .await
        .expect("ack");
    assert!(matches!(
        r,
        CommandResponse::Link(LinkAnswer::Ack { upto: 3 })
    ));
    site.write(Command::LinkEnqueue {
        remote: "aws".into(),
        items: vec![named(h1, 4)].into(),
        specs: Vec::new(),
    })
    .await
    .expect("enqueue");
    let (entries, specs) = site
        .state
        .read_outbox_with_specs("aws", 1, 10)
        .expect("read");
    assert_eq!(entries.len(), 1);
    assert!(
        specs.is_empty(),
        "dropped once the outbox drained: {specs:?}"
    );

    // Inbox: dropped once everything received is delivered.
    site.write(Command::LinkReceive {
        origin: "idc".into(),
        first_seq: 1,
        items: vec![named(h2, 1)].into(),
        specs: vec![spec(h2, r#"{"r":2}"#)],
    })
    .await
    .expect("receive");
    assert!(
        site.state
            .read_inbox_spec("idc", h2)
            .expect("read")
            .is_some()
    );
    let key = strait_federation::store::links::inbox_cursor_key("idc");
    checkpoint(&site, 0, 0, 0, vec![(key, 2)]).await;
    assert!(
        site.state
            .read_inbox_spec("idc", h2)
            .expect("read")
            .is_none()
    );
    site.shutdown().await.expect("shutdown");
}

fn bodies(entries: &[strait_federation::store::links::LinkEntry]) -> Vec<(u64, String)> {
    entries
        .iter()
        .map(|e| (e.seq, String::from_utf8_lossy(&e.body).into_owned()))
        .collect()
}

#[tokio::test]
async fn link_outbox_and_inbox_are_replicated_ordered_and_deduplicated() {
    use strait_federation::LinkAnswer;
    let dir = tempfile::tempdir().expect("tempdir");
    let site = open(dir.path()).await;
    let link = |r: CommandResponse| match r {
        CommandResponse::Link(a) => a,
        other => panic!("unexpected {other:?}"),
    };
    // Outbox: sequences from 1; acknowledged entries go away.
    let r = site
        .write(Command::LinkEnqueue {
            remote: "aws".into(),
            items: items(&["a", "b", "c"]).into(),
            specs: Vec::new(),
        })
        .await
        .expect("enqueue");
    assert_eq!(link(r), LinkAnswer::Enqueued { first: 1, last: 3 });
    assert_eq!(site.state.read_outbox("aws", 1, 10).expect("read").len(), 3);
    let r = site
        .write(Command::LinkAcked {
            remote: "aws".into(),
            upto: 2,
        })
        .await
        .expect("ack");
    assert_eq!(link(r), LinkAnswer::Ack { upto: 2 });
    assert_eq!(
        bodies(&site.state.read_outbox("aws", 1, 10).expect("read")),
        vec![(3, r#"{"d":"c"}"#.to_string())]
    );
    // Inbox: the next expected sequences only.
    let recv = |first: u64, tags: &[&str]| Command::LinkReceive {
        origin: "idc".into(),
        first_seq: first,
        items: items(tags).into(),
        specs: vec![spec("0123456789abcdef", r#"{"rule":1}"#)],
    };
    assert_eq!(
        link(site.write(recv(1, &["x1", "x2"])).await.expect("recv")),
        LinkAnswer::Ack { upto: 2 }
    );
    assert_eq!(
        link(site.write(recv(1, &["x1", "x2"])).await.expect("recv")),
        LinkAnswer::Ack { upto: 2 }
    );
    assert_eq!(
        link(site.write(recv(5, &["x5"])).await.expect("recv")),
        LinkAnswer::Gap { expected: 3 }
    );
    assert_eq!(
        link(
            site.write(recv(2, &["x2", "x3", "x4"]))
                .await
                .expect("recv")
        ),
        LinkAnswer::Ack { upto: 4 }
    );
    let inbox = bodies(&site.state.read_inbox("idc", 1, 10).expect("read"));
    let seqs: Vec<u64> = inbox.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert!(inbox[2].1.contains("x3"), "{inbox:?}");
    assert_eq!(site.state.view().links.inbound.get("idc"), Some(&4));
    // The inbox reader's cursor exists; a checkpoint past 3 collects 1..=2.
    let key = strait_federation::store::links::inbox_cursor_key("idc");
    assert_eq!(site.state.view().cursors.get(&key), Some(&1));
    checkpoint(&site, 0, 0, 0, vec![(key, 3)]).await;
    let left: Vec<u64> = site
        .state
        .read_inbox("idc", 0, 10)
        .expect("read")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(left, vec![3, 4]);
    assert_eq!(
        site.state
            .read_inbox_spec("idc", "0123456789abcdef")
            .expect("read")
            .as_deref(),
        Some(&br#"{"rule":1}"#[..]),
        "kept while the inbox has undelivered entries"
    );

    // Snapshots carry links; so does a restart.
    let image = site.state.snapshot_bytes().expect("snapshot");
    let other = tempfile::tempdir().expect("tempdir");
    let copy = SiteState::open(&other.path().join("state.redb")).expect("open");
    copy.install_snapshot(&image.data).expect("install");
    assert_eq!(copy.view().links, site.state.view().links);
    assert_eq!(copy.read_outbox("aws", 0, 10).expect("read").len(), 1);
    assert_eq!(copy.read_inbox("idc", 0, 10).expect("read").len(), 2);
    assert!(
        copy.read_inbox_spec("idc", "0123456789abcdef")
            .expect("read")
            .is_some()
    );
    site.shutdown().await.expect("shutdown");
    drop(site);
    let again = open(dir.path()).await;
    assert_eq!(
        again
            .state
            .view()
            .links
            .out
            .get("aws")
            .map(|o| (o.last_seq, o.acked)),
        Some((3, 2))
    );
    assert_eq!(again.state.view().links.inbound.get("idc"), Some(&4));
    again.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn sources_are_stored_survive_restart_and_snapshots_and_pin_their_bus() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = open(dir.path()).await;
    let spec = json!({"type": "aws_sqs", "site": "aws", "bus": "b", "queueUrl": "http://q/1/q"});
    let put = || Command::PutSource {
        name: "s1".into(),
        spec: spec.clone(),
    };
    // The bus must exist.
    let r = site.write(put()).await.expect("put source");
    assert!(
        matches!(r, CommandResponse::NotFound(ref m) if m.to_string().contains("bus `b`")),
        "{r:?}"
    );
    put_bus(&site, "b", json!({"name": "b"})).await;
    let r = site.write(put()).await.expect("put source");
    assert_ok(&r);
    assert_eq!(site.state.view().sources.get("s1"), Some(&spec));
    // A bus a source commits to cannot be deleted.
    let r = site
        .write(Command::DeleteBus { name: "b".into() })
        .await
        .expect("delete bus");
    assert!(
        matches!(r, CommandResponse::Conflict(ref m) if m.to_string().contains("still has sources: s1")),
        "{r:?}"
    );
    site.shutdown().await.expect("shutdown");
    drop(site);

    // Persisted.
    let site = open(dir.path()).await;
    assert_eq!(site.state.view().sources.get("s1"), Some(&spec));
    let bytes = site.state.snapshot_bytes().expect("bytes").data;
    let other = tempfile::tempdir().expect("tempdir");
    let fresh = SiteState::open(&other.path().join("state.redb")).expect("fresh");
    fresh.install_snapshot(&bytes).expect("install");
    assert_eq!(fresh.view().sources.get("s1"), Some(&spec));
    // A snapshot of the older JSON format, written before sources were
    // replicated, still loads.
    let old = serde_json::to_vec(&json!({
        "last_applied": null,
        "membership": {"log_id": null, "membership": {"configs": [], "nodes": {}}},
        "next_seq": 0,
        "buses": [["b", {"name": "b"}]],
        "rules": [],
        "cursors": [],
        "dedup": [],
        "events": [],
    }))
    .expect("bytes");
    fresh.install_snapshot(&old).expect("install old");
    assert!(fresh.view().sources.is_empty());
    assert!(fresh.view().buses.contains_key("b"));

    let r = site
        .write(Command::DeleteSource { name: "s1".into() })
        .await
        .expect("delete");
    assert_ok(&r);
    let r = site
        .write(Command::DeleteSource { name: "s1".into() })
        .await
        .expect("delete again");
    assert!(
        matches!(r, CommandResponse::NotFound(ref m) if m.to_string().contains("source `s1`")),
        "{r:?}"
    );
    let r = site
        .write(Command::DeleteBus { name: "b".into() })
        .await
        .expect("delete bus");
    assert_ok(&r);
    site.shutdown().await.expect("shutdown");
}

/// Events are stored in blocks (one per bus and log entry): reads start in
/// the middle of a block, buses sharing an entry stay apart, counts and
/// garbage collection work per block, and a snapshot regroups them.
#[tokio::test(flavor = "multi_thread")]
async fn event_blocks_read_count_collect_and_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = open(dir.path()).await;
    put_bus(&site, "a", json!({})).await;
    put_bus(&site, "b", json!({})).await;
    // A target on a, starting at the head (0).
    assert_ok(&put_rule(&site, "a").await);
    // One entry, two buses interleaved: a gets 0, 2, 4; b gets 1, 3, 5.
    let mixed = (0..6)
        .map(|i| entry(if i % 2 == 0 { "a" } else { "b" }, &format!("m{i}")))
        .collect();
    let out = appended(site.write(append(mixed)).await.expect("append"));
    assert_eq!(out.len(), 6);
    // A second entry for a: 6, 7, 8.
    let more = (0..3).map(|i| entry("a", &format!("n{i}"))).collect();
    site.write(append(more)).await.expect("append");
    let seqs = |bus: &str, from: u64, limit: usize| -> Vec<u64> {
        site.state
            .read_events(bus, from, limit)
            .expect("read")
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    assert_eq!(seqs("a", 0, 100), vec![0, 2, 4, 6, 7, 8]);
    assert_eq!(seqs("b", 0, 100), vec![1, 3, 5]);
    // From the middle of a block, across into the next, with a limit.
    assert_eq!(seqs("a", 3, 100), vec![4, 6, 7, 8]);
    assert_eq!(seqs("a", 3, 2), vec![4, 6]);
    assert_eq!(seqs("a", 7, 100), vec![7, 8]);
    assert_eq!(seqs("a", 9, 100), Vec::<u64>::new());
    assert_eq!(seqs("b", 4, 100), vec![5]);
    assert_eq!(site.state.count_events_from("a", 3, 100).expect("count"), 4);
    assert_eq!(site.state.count_events_from("a", 0, 3).expect("count"), 3);
    assert_eq!(site.state.stored_events().expect("stored"), 9);
    let ev = &site.state.read_events("a", 7, 1).expect("read")[0];
    let v: serde_json::Value = serde_json::from_slice(&ev.json).expect("json");
    assert_eq!(v["id"], "n1");
    assert_eq!(ev.ingest_ms, 1_000_000);

    // A snapshot lists events one by one and regroups them on install.
    let bytes = site.state.snapshot_bytes().expect("bytes").data;
    let other = tempfile::tempdir().expect("tempdir");
    let fresh = SiteState::open(&other.path().join("state.redb")).expect("fresh");
    fresh.install_snapshot(&bytes).expect("install");
    let fresh_seqs: Vec<u64> = fresh
        .read_events("a", 3, 100)
        .expect("read")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(fresh_seqs, vec![4, 6, 7, 8]);
    assert_eq!(fresh.stored_events().expect("stored"), 9);

    // Garbage collection removes whole blocks only: a target of a at 7
    // has done the first block of a (0, 2, 4) but not the second.
    checkpoint(&site, 2_000_000, 0, 0, vec![("a/r/t".into(), 7)]).await;
    assert_eq!(seqs("a", 0, 100), vec![6, 7, 8]);
    // b has no targets: everything past retention goes.
    assert_eq!(seqs("b", 0, 100), Vec::<u64>::new());
    checkpoint(&site, 2_000_000, 0, 0, vec![("a/r/t".into(), 9)]).await;
    assert_eq!(site.state.stored_events().expect("stored"), 0);
    site.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_bus_must_exist_and_cannot_be_deleted_while_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = open(dir.path()).await;
    put_bus(&site, "b", json!({"name": "b"})).await;
    let rule = |spec: serde_json::Value| Command::PutRule {
        bus: "b".into(),
        name: "r".into(),
        spec,
        targets: vec!["t".into()],
    };
    let target_dl = json!({"pattern": {}, "targets": [
        {"id": "s", "type": "http", "deadLetter": {"type": "http", "endpoint": "http://x/"}},
        {"id": "t", "type": "http", "deadLetter": {"type": "bus", "bus": "dlq"}}]});
    let r = site.write(rule(target_dl.clone())).await.expect("put rule");
    assert_refused(
        &r,
        Refusal::NoDeadLetterBus {
            field: "targets[1].deadLetter.bus".into(),
            bus: "dlq".into(),
        },
    );
    assert!(site.state.view().rules.is_empty());
    let rule_dl = json!({"pattern": {}, "targets": [{"id": "t", "type": "http"}],
        "deadLetter": {"type": "bus", "bus": "dlq"}});
    let r = site.write(rule(rule_dl.clone())).await.expect("put rule");
    assert!(
        matches!(&r, CommandResponse::Refused(Refusal::NoDeadLetterBus { field, .. }) if field == "deadLetter.bus"),
        "{r:?}"
    );
    // Once the bus exists the rule is accepted, and the bus is pinned.
    put_bus(&site, "dlq", json!({"name": "dlq"})).await;
    assert_ok(&site.write(rule(target_dl)).await.expect("put rule"));
    let r = site
        .write(Command::DeleteBus { name: "dlq".into() })
        .await
        .expect("delete bus");
    assert_refused(
        &r,
        Refusal::BusIsDeadLetter {
            bus: "dlq".into(),
            rules: vec!["b/r".into()],
        },
    );
    assert!(site.state.view().buses.contains_key("dlq"));
    // A rule that no longer names it frees it.
    assert_ok(
        &site
            .write(rule(
                json!({"pattern": {}, "targets": [{"id": "t", "type": "http"}]}),
            ))
            .await
            .expect("put rule"),
    );
    assert_ok(
        &site
            .write(Command::DeleteBus { name: "dlq".into() })
            .await
            .expect("delete bus"),
    );
    site.shutdown().await.expect("shutdown");
}

#[track_caller]
fn assert_refused(r: &CommandResponse, want: Refusal) {
    assert!(
        matches!(r, CommandResponse::Refused(got) if *got == want),
        "{r:?}, want {want:?}"
    );
}

/// The state's size (`stored_bytes`) follows every way rows come and go,
/// equals a row-by-row count, survives a restart and a snapshot, and
/// `max_state_bytes` refuses new events until retention frees space.
#[tokio::test(flavor = "multi_thread")]
async fn stored_bytes_follow_appends_collection_links_and_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = open(dir.path()).await;
    #[track_caller]
    fn counted(state: &SiteState) -> u64 {
        let kept = state.view().stored_bytes;
        assert_eq!(kept, state.count_stored_bytes().expect("count"));
        assert_eq!(
            state.stored_events().expect("kept events"),
            state.count_stored_events().expect("count events")
        );
        kept
    }
    assert_eq!(counted(&site.state), 0);
    put_bus(&site, "b", json!({})).await;
    put_bus(&site, "c", json!({})).await;
    let batch = |bus: &str, from: u32, to: u32| {
        (from..to)
            .map(|i| entry(bus, &format!("e{i}")))
            .collect::<Vec<_>>()
    };
    site.write(append_at(1_000, batch("b", 0, 200)))
        .await
        .expect("append");
    let after_b = counted(&site.state);
    // Each event's JSON is ~90 bytes, compressed; its dedup entry ~20.
    assert!(after_b > 200 * 20 && after_b < 200 * 110, "{after_b}");
    // Repeats add nothing.
    site.write(append_at(1_001, batch("b", 0, 200)))
        .await
        .expect("repeat");
    assert_eq!(counted(&site.state), after_b);
    site.write(append_at(2_000, batch("c", 0, 100)))
        .await
        .expect("append c");
    let after_c = counted(&site.state);
    assert!(after_c > after_b);

    // Links: enqueue, receive, acknowledge, collect.
    let items = |n: u32| {
        (0..n)
            .map(|i| {
                RawValue::from_string(format!(r#"{{"n":{i},"pad":"{}"}}"#, "z".repeat(50)))
                    .expect("raw")
            })
            .collect::<Vec<_>>()
    };
    site.write(Command::LinkEnqueue {
        remote: "aws".into(),
        items: items(30).into(),
        specs: vec![],
    })
    .await
    .expect("enqueue");
    site.write(Command::LinkReceive {
        origin: "idc".into(),
        first_seq: 1,
        items: items(20).into(),
        specs: vec![],
    })
    .await
    .expect("receive");
    let linked = counted(&site.state);
    assert!(linked > after_c);
    site.write(Command::LinkAcked {
        remote: "aws".into(),
        upto: 30,
    })
    .await
    .expect("ack");
    let acked = counted(&site.state);
    assert!(acked < linked);

    // Restart: the count is kept.
    site.shutdown().await.expect("shutdown");
    drop(site);
    let site = open(dir.path()).await;
    assert_eq!(counted(&site.state), acked);

    // A limit: full at once, and says what it is.
    site.state.set_max_bytes(acked / 2);
    let full = site.state.full().expect("full");
    assert_eq!((full.limit, full.stored), (acked / 2, acked));
    assert!(full.to_string().contains("max_state_bytes"), "{full}");

    // Deleting a bus takes its events off (c has no rules or sources).
    site.write(Command::DeleteBus { name: "c".into() })
        .await
        .expect("delete");
    let without_c = counted(&site.state);
    assert!(without_c < acked);

    // Retention and the dedup window: b's events and every dedup entry go.
    checkpoint(&site, 10_000_000, 1_000, 1_000, vec![]).await;
    let collected = counted(&site.state);
    assert!(collected < without_c / 4, "{collected} of {without_c}");
    assert!(site.state.full().is_none(), "accepts again");

    // A snapshot carries it; installed elsewhere it is the same.
    let image = site.state.snapshot_bytes().expect("snapshot");
    let other = tempfile::tempdir().expect("tempdir");
    let copy = SiteState::open(&other.path().join("state.redb")).expect("copy");
    copy.install_snapshot(&image.data).expect("install");
    assert_eq!(counted(&copy), collected);
    site.shutdown().await.expect("shutdown");
}
