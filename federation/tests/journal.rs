//! The delivery journal in the site state: checkpoints that carry journal
//! entries, counters and cursor moves, read back; its collection; restart
//! and snapshots; finding and listing events.

use std::path::Path;
use std::sync::Arc;

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use serde_json::value::RawValue;
use strait_federation::journal::{
    Attempt, AttemptOutcome, DeliveryStatus, JournalEntry, TargetCounts,
};
use strait_federation::{
    AppendEntry, AppendOutcome, Command, CommandResponse, EventFilter, SiteState, TypeConfig,
};

const HOUR: u64 = 3_600_000;
const T0: u64 = 1_800_000_000_000;

/// A state and the next log index to apply at.
struct Site {
    state: Arc<SiteState>,
    index: u64,
}

impl Site {
    fn open(path: &Path) -> anyhow::Result<Site> {
        let state = SiteState::open(&path.join("state.redb"))?;
        let index = state.view().last_applied.map_or(0, |l| l.index) + 1;
        Ok(Site { state, index })
    }

    fn apply(&mut self, cmd: Command) -> anyhow::Result<CommandResponse> {
        let e = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload: EntryPayload::Normal(cmd),
        };
        self.index += 1;
        let mut r = self.state.apply(vec![e], true)?;
        r.pop().ok_or_else(|| anyhow::anyhow!("no response"))
    }

    /// Bus `b` with rule `r` of targets `t1` and `t2`.
    fn setup(&mut self) -> anyhow::Result<()> {
        self.apply(Command::PutBus {
            name: "b".into(),
            spec: serde_json::json!({}),
        })?;
        self.apply(Command::PutRule {
            bus: "b".into(),
            name: "r".into(),
            spec: serde_json::json!({}),
            targets: vec!["t1".into(), "t2".into()],
        })?;
        Ok(())
    }

    /// Append events `(source, id, type)` at `ingest_ms`; their sequences.
    fn append(
        &mut self,
        ingest_ms: u64,
        events: &[(&str, &str, &str)],
    ) -> anyhow::Result<Vec<u64>> {
        let mut entries = Vec::new();
        for (source, id, ty) in events {
            let json = serde_json::json!({
                "specversion": "1.0", "id": id, "source": source, "type": ty, "data": {"n": id},
            });
            entries.push(AppendEntry {
                bus: "b".into(),
                source: source.to_string(),
                id: id.to_string(),
                event: RawValue::from_string(json.to_string())?,
            });
        }
        let r = self.apply(Command::Append {
            ingest_ms,
            dedup_window_ms: HOUR,
            entries: Arc::new(entries),
        })?;
        let CommandResponse::Appended(outcomes) = r else {
            anyhow::bail!("append answered {r:?}")
        };
        outcomes
            .into_iter()
            .map(|o| match o {
                AppendOutcome::Accepted(s) => Ok(s),
                other => Err(anyhow::anyhow!("append: {other:?}")),
            })
            .collect()
    }

    fn checkpoint(
        &mut self,
        now_ms: u64,
        cursors: Vec<(String, u64)>,
        journal: Vec<JournalEntry>,
        counts: Vec<(String, TargetCounts)>,
    ) -> anyhow::Result<()> {
        let r = self.apply(Command::Checkpoint {
            now_ms,
            retention_ms: HOUR,
            dedup_window_ms: HOUR,
            cursors,
            journal,
            counts,
        })?;
        anyhow::ensure!(r == CommandResponse::Ok, "checkpoint answered {r:?}");
        Ok(())
    }

    /// The kept size matches a count of every row.
    fn check_bytes(&self) -> anyhow::Result<()> {
        assert_eq!(
            self.state.view().stored_bytes,
            self.state.count_stored_bytes()?,
            "kept size and counted size"
        );
        Ok(())
    }
}

fn entry(
    id: &str,
    ingest_ms: u64,
    target: &str,
    origin: Option<&str>,
    status: DeliveryStatus,
) -> JournalEntry {
    JournalEntry {
        bus: "b".into(),
        source: "/s".into(),
        id: id.into(),
        ingest_ms,
        rule: "r".into(),
        target: target.into(),
        origin: origin.map(str::to_string),
        status,
        attempts: vec![Attempt {
            time_ms: ingest_ms + 10,
            outcome: AttemptOutcome::Failed,
            http_status: Some(503),
            error: Some("unavailable".into()),
        }],
        omitted_attempts: 0,
        reason: None,
    }
}

fn counts(delivered: u64) -> TargetCounts {
    TargetCounts {
        delivered,
        failed_attempts: 1,
        last_error: Some("503".into()),
        ..TargetCounts::default()
    }
}

#[test]
fn checkpoint_journal_replaces_per_target_and_origin() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut site = Site::open(dir.path())?;
    site.setup()?;
    let t = T0;
    site.checkpoint(
        t,
        vec![],
        vec![
            entry("e1", t, "t1", None, DeliveryStatus::Retrying),
            entry("e1", t, "t2", None, DeliveryStatus::Retrying),
            entry("e1", t, "t1", Some("aws"), DeliveryStatus::Retrying),
        ],
        vec![("b/r/t1".into(), counts(1))],
    )?;
    let got = site.state.journal_of("b", "/s", "e1", t)?;
    assert_eq!(got.len(), 3);
    site.check_bytes()?;

    // A later entry for (r, t1, local) replaces the first one only.
    let mut done = entry("e1", t, "t1", None, DeliveryStatus::Delivered);
    done.attempts.push(Attempt {
        time_ms: t + 20,
        outcome: AttemptOutcome::Delivered,
        http_status: Some(200),
        error: None,
    });
    site.checkpoint(
        t + 100,
        vec![],
        vec![done.clone()],
        vec![("b/r/t1".into(), counts(2))],
    )?;
    let got = site.state.journal_of("b", "/s", "e1", t)?;
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], done);
    assert_eq!(got[1].target, "t2");
    assert_eq!(got[1].status, DeliveryStatus::Retrying);
    assert_eq!(got[2].origin.as_deref(), Some("aws"));
    assert_eq!(got[2].status, DeliveryStatus::Retrying);
    // Other events, or the same at another ingest time, have none.
    assert!(site.state.journal_of("b", "/s", "e2", t)?.is_empty());
    assert!(site.state.journal_of("b", "/s", "e1", t + 1)?.is_empty());
    let c = site.state.target_counts()?;
    assert_eq!(c.len(), 1);
    assert_eq!(c["b/r/t1"].delivered, 2);
    site.check_bytes()?;
    Ok(())
}

#[test]
fn marks_say_when_a_cursor_passed_a_sequence() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut site = Site::open(dir.path())?;
    site.setup()?;
    let seqs = site.append(T0, &[("/s", "a", "x"), ("/s", "b", "x"), ("/s", "c", "x")])?;
    let start = site.state.view().cursors["b/r/t1"];
    assert_eq!(start, seqs[0]);
    site.checkpoint(T0 + 1_000, vec![("b/r/t1".into(), seqs[1])], vec![], vec![])?;
    // Not moved (same value, backwards, unknown key): no mark.
    site.checkpoint(
        T0 + 2_000,
        vec![
            ("b/r/t1".into(), seqs[1]),
            ("b/r/t2".into(), 0),
            ("b/r/zz".into(), 99),
        ],
        vec![],
        vec![],
    )?;
    site.checkpoint(
        T0 + 3_000,
        vec![("b/r/t1".into(), seqs[2] + 1)],
        vec![],
        vec![],
    )?;
    assert_eq!(site.state.mark_after("b/r/t1", seqs[0])?, Some(T0 + 1_000));
    assert_eq!(site.state.mark_after("b/r/t1", seqs[1])?, Some(T0 + 3_000));
    assert_eq!(site.state.mark_after("b/r/t1", seqs[2])?, Some(T0 + 3_000));
    assert_eq!(site.state.mark_after("b/r/t1", seqs[2] + 1)?, None);
    assert_eq!(site.state.mark_after("b/r/t2", seqs[0])?, None);
    assert_eq!(site.state.mark_after("b/r/zz", 0)?, None);
    site.check_bytes()?;

    // Deleting the rule drops its marks and counters.
    site.checkpoint(
        T0 + 4_000,
        vec![],
        vec![],
        vec![("b/r/t1".into(), counts(3))],
    )?;
    assert_eq!(site.state.target_counts()?.len(), 1);
    site.apply(Command::DeleteRule {
        bus: "b".into(),
        name: "r".into(),
    })?;
    assert_eq!(site.state.mark_after("b/r/t1", seqs[0])?, None);
    assert!(site.state.target_counts()?.is_empty());
    site.check_bytes()?;
    Ok(())
}

#[test]
fn retention_collects_journal_and_old_marks_but_the_newest() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut site = Site::open(dir.path())?;
    site.setup()?;
    let seqs = site.append(T0, &[("/s", "a", "x"), ("/s", "b", "x")])?;
    site.checkpoint(
        T0 + 1_000,
        vec![
            ("b/r/t1".into(), seqs[0] + 1),
            ("b/r/t2".into(), seqs[1] + 1),
        ],
        vec![entry("a", T0, "t1", None, DeliveryStatus::Retrying)],
        vec![],
    )?;
    site.checkpoint(
        T0 + 2_000,
        vec![("b/r/t1".into(), seqs[1] + 1)],
        vec![],
        vec![],
    )?;
    site.checkpoint(
        T0 + 10 * 60_000,
        vec![],
        vec![entry(
            "b",
            T0 + 10 * 60_000,
            "t1",
            None,
            DeliveryStatus::Retrying,
        )],
        vec![],
    )?;
    // An hour after the first entry: it goes, the later one stays; of the
    // marks older than the horizon each cursor keeps its newest.
    site.checkpoint(T0 + HOUR + 5_000, vec![], vec![], vec![])?;
    assert!(site.state.journal_of("b", "/s", "a", T0)?.is_empty());
    assert_eq!(
        site.state
            .journal_of("b", "/s", "b", T0 + 10 * 60_000)?
            .len(),
        1
    );
    assert_eq!(
        site.state.mark_after("b/r/t1", seqs[0])?,
        Some(T0 + 2_000),
        "first t1 mark collected"
    );
    assert_eq!(
        site.state.mark_after("b/r/t2", seqs[0])?,
        Some(T0 + 1_000),
        "newest t2 mark kept"
    );
    // An entry for an event already past the retention is not written.
    site.checkpoint(
        T0 + HOUR + 6_000,
        vec![],
        vec![entry("a", T0, "t2", None, DeliveryStatus::Dropped)],
        vec![],
    )?;
    assert!(site.state.journal_of("b", "/s", "a", T0)?.is_empty());
    site.check_bytes()?;
    Ok(())
}

#[test]
fn restart_and_snapshot_keep_the_journal() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let seqs;
    {
        let mut site = Site::open(dir.path())?;
        site.setup()?;
        seqs = site.append(T0, &[("/s", "a", "x")])?;
        site.checkpoint(
            T0 + 500,
            vec![("b/r/t1".into(), seqs[0] + 1)],
            vec![entry(
                "a",
                T0,
                "t2",
                Some("aws"),
                DeliveryStatus::DeadLettered,
            )],
            vec![("link-in/aws/b/r/t2".into(), counts(7))],
        )?;
    }
    let site = Site::open(dir.path())?;
    let check = |state: &SiteState| -> anyhow::Result<()> {
        let j = state.journal_of("b", "/s", "a", T0)?;
        assert_eq!(j.len(), 1);
        assert_eq!(j[0].status, DeliveryStatus::DeadLettered);
        assert_eq!(state.mark_after("b/r/t1", seqs[0])?, Some(T0 + 500));
        assert_eq!(state.target_counts()?["link-in/aws/b/r/t2"].delivered, 7);
        assert_eq!(state.view().stored_bytes, state.count_stored_bytes()?);
        Ok(())
    };
    check(&site.state)?;

    let image = site.state.snapshot_bytes()?;
    let other = tempfile::tempdir()?;
    let fresh = Site::open(other.path())?;
    fresh.state.install_snapshot(&image.data)?;
    check(&fresh.state)?;
    assert_eq!(
        fresh.state.view().stored_bytes,
        site.state.view().stored_bytes
    );
    Ok(())
}

#[test]
fn find_event_with_and_without_source_across_many_blocks() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut site = Site::open(dir.path())?;
    site.setup()?;
    // 300 entries (one block each at least), times mostly rising, with a
    // leader whose clock is 2 s behind in the middle.
    let mut expect = Vec::new();
    for n in 0..300u64 {
        let ms = if (150..160).contains(&n) {
            T0 + n * 100 - 2_000
        } else {
            T0 + n * 100
        };
        let ids: Vec<String> = (0..20).map(|k| format!("e{n}-{k}")).collect();
        let evs: Vec<(&str, &str, &str)> = ids
            .iter()
            .enumerate()
            .map(|(k, id)| (if k % 2 == 0 { "/even" } else { "/odd" }, id.as_str(), "t"))
            .collect();
        let seqs = site.append(ms, &evs)?;
        expect.push((ms, seqs));
    }
    for n in [0usize, 1, 99, 150, 155, 159, 160, 298, 299] {
        let (ms, seqs) = &expect[n];
        for k in [0usize, 7, 19] {
            let id = format!("e{n}-{k}");
            let source = if k % 2 == 0 { "/even" } else { "/odd" };
            let found = site.state.find_event("b", Some(source), &id)?;
            assert_eq!(found.len(), 1, "{id}");
            assert_eq!(found[0].seq, seqs[k]);
            assert_eq!(found[0].ingest_ms, *ms);
            assert_eq!(found[0].source, source);
            let json: serde_json::Value = serde_json::from_slice(&found[0].json)?;
            assert_eq!(json["id"], id.as_str());
            // Without the source: the same.
            assert_eq!(site.state.find_event("b", None, &id)?, found);
            // The wrong source: nothing.
            let wrong = if k % 2 == 0 { "/odd" } else { "/even" };
            assert!(site.state.find_event("b", Some(wrong), &id)?.is_empty());
        }
    }
    assert!(site.state.find_event("b", None, "nope")?.is_empty());
    assert!(site.state.find_event("other", None, "e1-1")?.is_empty());

    // The same id from two sources: both, by sequence.
    let s = site.append(T0 + 40_000, &[("/x", "twin", "t"), ("/y", "twin", "t")])?;
    let both = site.state.find_event("b", None, "twin")?;
    assert_eq!(both.iter().map(|f| f.seq).collect::<Vec<_>>(), s);
    Ok(())
}

#[test]
fn find_event_after_its_dedup_entry_is_gone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut site = Site::open(dir.path())?;
    site.setup()?;
    let seqs = site.append(T0, &[("/s", "old", "t"), ("/s", "older", "t")])?;
    site.append(T0 + 50 * 60_000, &[("/s", "new", "t")])?;
    // A checkpoint with a dedup window of 10 minutes sweeps the two
    // first entries (the retention, an hour, keeps the events).
    let r = site.apply(Command::Checkpoint {
        now_ms: T0 + 55 * 60_000,
        retention_ms: HOUR,
        dedup_window_ms: 10 * 60_000,
        cursors: vec![],
        journal: vec![],
        counts: vec![],
    })?;
    assert_eq!(r, CommandResponse::Ok);
    assert_eq!(site.state.dedup_entries()?, 1);
    let found = site.state.find_event("b", Some("/s"), "old")?;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].seq, seqs[0]);
    let found = site.state.find_event("b", None, "older")?;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].seq, seqs[1]);
    assert!(site.state.find_event("b", Some("/t"), "old")?.is_empty());
    assert_eq!(site.state.find_event("b", None, "new")?.len(), 1);
    site.check_bytes()?;
    Ok(())
}

#[test]
fn list_events_filters_and_pages() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut site = Site::open(dir.path())?;
    site.setup()?;
    let mut all = Vec::new();
    for n in 0..50u64 {
        let ids: Vec<String> = (0..4).map(|k| format!("e{n}-{k}")).collect();
        let evs: Vec<(&str, &str, &str)> = ids
            .iter()
            .enumerate()
            .map(|(k, id)| {
                (
                    if k % 2 == 0 { "/even" } else { "/odd" },
                    id.as_str(),
                    if k < 2 { "created" } else { "deleted" },
                )
            })
            .collect();
        let seqs = site.append(T0 + n * 1_000, &evs)?;
        for (k, s) in seqs.into_iter().enumerate() {
            all.push((s, T0 + n * 1_000, k));
        }
    }
    // Everything, in pages of 30.
    let mut got = Vec::new();
    let mut from = 0;
    loop {
        let page = site
            .state
            .list_events("b", &EventFilter::default(), from, 30, 1_000)?;
        got.extend(page.events.iter().map(|e| e.seq));
        match page.next {
            Some(n) => from = n,
            None => break,
        }
    }
    assert_eq!(got, all.iter().map(|a| a.0).collect::<Vec<_>>());

    // Source and type.
    let filter = EventFilter {
        source: Some("/odd".into()),
        event_type: Some("deleted".into()),
        ..EventFilter::default()
    };
    let page = site.state.list_events("b", &filter, 0, 1_000, 1_000)?;
    let want: Vec<u64> = all.iter().filter(|a| a.2 == 3).map(|a| a.0).collect();
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), want);
    assert_eq!(page.next, None);

    // Time window: since inclusive, until exclusive.
    let filter = EventFilter {
        since_ms: Some(T0 + 10_000),
        until_ms: Some(T0 + 20_000),
        ..EventFilter::default()
    };
    let page = site.state.list_events("b", &filter, 0, 1_000, 1_000)?;
    let want: Vec<u64> = all
        .iter()
        .filter(|a| a.1 >= T0 + 10_000 && a.1 < T0 + 20_000)
        .map(|a| a.0)
        .collect();
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), want);
    assert_eq!(page.next, None);
    // Blocks wholly before `since` do not count in the scan cap.
    let page = site.state.list_events("b", &filter, 0, 1_000, want.len())?;
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), want);
    assert_eq!(page.next, Some(all[80].0));

    // The scan cap: a page may be short, `next` goes on.
    let filter = EventFilter {
        event_type: Some("deleted".into()),
        ..EventFilter::default()
    };
    let page = site.state.list_events("b", &filter, 0, 1_000, 10)?;
    assert_eq!(page.events.len(), 4);
    assert_eq!(page.next, Some(all[10].0));
    let page = site.state.list_events("b", &filter, all[10].0, 1_000, 10)?;
    assert_eq!(
        page.events.len(),
        6,
        "events 10..20, of which every other two"
    );
    assert!(
        site.state
            .list_events("nope", &filter, 0, 10, 10)?
            .events
            .is_empty()
    );
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]

    /// Whatever the ingest times (rising, with steps back, never further
    /// than the clock slack behind the latest time yet), every event is found by its
    /// source and id, and listing from a time finds every event from it.
    #[test]
    fn find_event_finds_every_event_whatever_the_clock(
        steps in proptest::collection::vec(
            (-(strait_federation::store::state::CLOCK_SLACK_MS as i64)..3_000i64, 1usize..5),
            1..60)
    ) {
        let dir = tempfile::tempdir().expect("dir");
        let mut site = Site::open(dir.path()).expect("open");
        site.setup().expect("setup");
        let slack = strait_federation::store::state::CLOCK_SLACK_MS;
        let (mut ms, mut peak) = (T0, T0);
        let mut all = Vec::new();
        for (n, (step, count)) in steps.into_iter().enumerate() {
            // Never further back than the slack from the latest time yet.
            ms = ms.saturating_add_signed(step).max(peak - slack);
            peak = peak.max(ms);
            let ids: Vec<String> = (0..count).map(|k| format!("e{n}-{k}")).collect();
            let evs: Vec<(&str, &str, &str)> = ids.iter().map(|id| ("/s", id.as_str(), "t")).collect();
            let seqs = site.append(ms, &evs).expect("append");
            all.extend(ids.into_iter().zip(seqs).map(|(id, s)| (id, s, ms)));
        }
        for (id, seq, ms) in &all {
            let found = site.state.find_event("b", Some("/s"), id).expect("find");
            proptest::prop_assert_eq!(found.len(), 1, "{}", id);
            proptest::prop_assert_eq!(found[0].seq, *seq);
            proptest::prop_assert_eq!(found[0].ingest_ms, *ms);
        }
        let (_, _, since) = &all[all.len() / 2];
        let filter = EventFilter { since_ms: Some(*since), ..EventFilter::default() };
        let page = site.state.list_events("b", &filter, 0, 10_000, 10_000).expect("list");
        let want: Vec<u64> = all.iter().filter(|a| a.2 >= *since).map(|a| a.1).collect();
        proptest::prop_assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), want);
    }
}

#[test]
fn a_target_created_after_an_event_has_a_start_mark_before_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut site = Site::open(dir.path())?;
    site.setup()?;
    let early = site.append(T0, &[("/s", "a", "x")])?;
    // A rule made after event `a`: its target starts past it.
    site.apply(Command::PutRule {
        bus: "b".into(),
        name: "late".into(),
        spec: serde_json::json!({}),
        targets: vec!["t".into()],
    })?;
    let later = site.append(T0 + 10, &[("/s", "b", "x")])?;
    site.checkpoint(
        T0 + 1_000,
        vec![("b/late/t".into(), later[0] + 1)],
        vec![],
        vec![],
    )?;
    assert_eq!(
        site.state.mark_after("b/late/t", early[0])?,
        Some(strait_federation::store::state::START_MARK),
        "the event came before the target"
    );
    assert_eq!(
        site.state.mark_after("b/late/t", later[0])?,
        Some(T0 + 1_000)
    );
    // Collection keeps the start mark whatever its age.
    site.checkpoint(
        T0 + 10 * HOUR,
        vec![("b/late/t".into(), later[0] + 2)],
        vec![],
        vec![],
    )?;
    assert_eq!(
        site.state.mark_after("b/late/t", early[0])?,
        Some(strait_federation::store::state::START_MARK)
    );
    site.check_bytes()?;
    Ok(())
}

/// Dead letters are read back from the journal per target, paged, with the
/// event's redrives; a redrive appends to the `~redrive` inbox with
/// sequences the apply gives; a seek is pending until the leader confirms
/// it (also across a restart), then sets the cursor back and drops the
/// marks above it.
#[test]
fn dead_letters_redrives_and_seeks() -> anyhow::Result<()> {
    use strait_federation::store::links::REDRIVE_ORIGIN;
    use strait_federation::{DeadLetterQuery, LinkSpec, NotFound};
    let dir = tempfile::tempdir()?;
    let mut site = Site::open(dir.path())?;
    site.setup()?;
    let t = T0;
    let seqs = site.append(
        t,
        &[("/s", "e1", "x"), ("/s", "e2", "x"), ("/s", "e3", "x")],
    )?;
    site.append(t + 5, &[("/s", "e4", "x"), ("/s", "e5", "x")])?;
    let mut redriven = entry(
        "e1",
        t,
        "t1",
        Some(REDRIVE_ORIGIN),
        DeliveryStatus::Delivered,
    );
    redriven.attempts[0].outcome = AttemptOutcome::Delivered;
    site.checkpoint(
        t + 10,
        vec![("b/r/t1".into(), seqs[2] + 3)],
        vec![
            entry("e1", t, "t1", None, DeliveryStatus::DeadLettered),
            entry("e2", t, "t1", None, DeliveryStatus::Dropped),
            entry("e3", t, "t1", None, DeliveryStatus::Delivered),
            entry("e4", t + 5, "t1", None, DeliveryStatus::DeadLettered),
            entry("e5", t + 5, "t2", None, DeliveryStatus::DeadLettered),
            entry("e4", t + 5, "t1", Some("aws"), DeliveryStatus::DeadLettered),
            redriven,
        ],
        vec![],
    )?;
    let q = DeadLetterQuery {
        bus: "b",
        rule: "r",
        target: Some("t1"),
    };
    let p1 = site.state.dead_letters(&q, None, 2, 1000)?;
    let ids: Vec<&str> = p1.entries.iter().map(|d| d.entry.id.as_str()).collect();
    assert_eq!(ids, ["e1", "e2"]);
    assert_eq!(p1.entries[0].redrives.len(), 1, "e1's redrive");
    assert_eq!(p1.entries[0].redrives[0].status, DeliveryStatus::Delivered);
    let next = p1.next.clone().expect("a next page");
    let token = next.token();
    let back = strait_federation::DeadLetterCursor::parse(&token).expect("token");
    assert_eq!(back, next);
    let p2 = site.state.dead_letters(&q, Some(&back), 2, 1000)?;
    let ids: Vec<&str> = p2.entries.iter().map(|d| d.entry.id.as_str()).collect();
    assert_eq!(ids, ["e4"], "this site's own only");
    assert!(p2.next.is_none());
    let all = DeadLetterQuery { target: None, ..q };
    assert_eq!(
        site.state
            .dead_letters(&all, None, 100, 1000)?
            .entries
            .len(),
        4
    );
    // A small scan cap still ends with a page to go on from.
    let capped = site.state.dead_letters(&q, None, 100, 1)?;
    assert_eq!(capped.scanned, 1);
    assert!(capped.next.is_some());

    // Redrives: sequences follow each other whoever proposes.
    let item = |id: &str| RawValue::from_string(format!("{{\"id\":\"{id}\"}}"));
    let spec = LinkSpec {
        hash: "h".into(),
        spec: RawValue::from_string("{}".into())?,
    };
    let r = site.apply(Command::Redrive {
        items: Arc::new(vec![item("a")?, item("b")?]),
        specs: vec![spec.clone()],
    })?;
    assert_eq!(
        r,
        CommandResponse::Link(strait_federation::LinkAnswer::Ack { upto: 2 })
    );
    site.apply(Command::Redrive {
        items: Arc::new(vec![item("c")?]),
        specs: vec![spec],
    })?;
    assert_eq!(
        site.state.view().links.inbound.get(REDRIVE_ORIGIN),
        Some(&3)
    );
    let inbox = site.state.read_inbox(REDRIVE_ORIGIN, 1, 10)?;
    assert_eq!(inbox.len(), 3);
    assert_eq!(inbox[2].body, b"{\"id\":\"c\"}");

    // Seeks.
    let key = "b/r/t1".to_string();
    let r = site.apply(Command::Seek {
        key: "b/r/zz".into(),
        seq: 1,
        id: "x".into(),
    })?;
    assert_eq!(
        r,
        CommandResponse::NotFound(NotFound::Target {
            key: "b/r/zz".into()
        })
    );
    let before = site.state.view().cursors[&key];
    site.apply(Command::Seek {
        key: key.clone(),
        seq: seqs[0],
        id: "s1".into(),
    })?;
    assert_eq!(site.state.view().cursors[&key], before, "pending only");
    drop(site);
    let mut site = Site::open(dir.path())?;
    assert_eq!(
        site.state.view().pending_seeks.get(&key),
        Some(&(seqs[0], "s1".to_string())),
        "kept across a restart"
    );
    site.apply(Command::SeekDone {
        key: key.clone(),
        seq: seqs[0],
        id: "other".into(),
    })?;
    assert_eq!(site.state.view().cursors[&key], before, "another seek's id");
    site.apply(Command::SeekDone {
        key: key.clone(),
        seq: seqs[0],
        id: "s1".into(),
    })?;
    assert_eq!(site.state.view().cursors[&key], seqs[0]);
    assert!(site.state.view().pending_seeks.is_empty());
    assert_eq!(
        site.state.mark_after(&key, seqs[0])?,
        None,
        "the marks above the cursor are gone"
    );
    site.check_bytes()?;
    Ok(())
}
