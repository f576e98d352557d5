//! Archives and replays in a 3-node site of real processes (QUIC, mutual
//! TLS), with a real HTTP receiver:
//!
//! - events of three sources are archived; more events follow until the
//!   leader has snapshotted and purged its log;
//! - a follower whose data directory is wiped is rebuilt from the
//!   snapshot: its archive records the range it missed and fills it from a
//!   peer, ending with exactly the leader's archived events;
//! - a replay of the first events' window is started, and the leader is
//!   killed with SIGKILL while it runs: the replay completes under the new
//!   leader, every archived event of the window reached the receiver at
//!   least once with `replayname` set, in order per source, and no event
//!   outside the window was replayed;
//! - the killed leader, restarted, ends with the same archive as the others.
//!
//! The window holds 1,200 events; `STRAIT_CHAOS_REPLAY_EVENTS=100000` runs
//! the long version the issue asks for (a few minutes in a debug build):
//! the replay's pace is raised with the window and the waits grow with it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use reqwest::Method;
use serde_json::{Value, json};
use strait_chaos_tests::events::event;
use strait_chaos_tests::{Behavior, LocalCluster, Receiver, bounded, http_target, retry, wait_for};
use strait_federation::store::archive::ArchiveStore;

const BUS: &str = "default";
const SOURCES: [&str; 3] = ["/chaos/a", "/chaos/b", "/chaos/c"];
/// Events in the replayed window (`STRAIT_CHAOS_REPLAY_EVENTS`, 1,200 by
/// default).
fn in_window() -> u64 {
    std::env::var("STRAIT_CHAOS_REPLAY_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1200)
}

/// Extra time for a window larger than the default: one second per 500
/// events (the work grows with it; a stall still fails).
fn extra_secs(in_window: u64) -> u64 {
    in_window.saturating_sub(1200) / 500
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn index(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// Post `n` events (ids `{prefix}-{i:06}`, sources in turn) in batches of 50.
async fn post(c: &LocalCluster, via: u64, prefix: &str, n: u64) -> anyhow::Result<()> {
    let client = c.client(via)?;
    let pad = "p".repeat(400);
    let mut i = 0;
    while i < n {
        let batch: Vec<Value> = (i..(i + 50).min(n))
            .map(|k| {
                event(
                    &format!("{prefix}-{k:06}"),
                    SOURCES[(k % 3) as usize],
                    "chaos.replay",
                    json!({"k": k, "pad": pad}),
                )
            })
            .collect();
        i += batch.len() as u64;
        client
            .post_batch(BUS, &batch)
            .await?
            .expect_status(200, "POST batch")?;
    }
    Ok(())
}

/// The archive as node `id` describes it.
async fn archive_at(c: &LocalCluster, id: u64) -> anyhow::Result<Value> {
    let r = c
        .client(id)?
        .get_json(&format!("/v1/buses/{BUS}/archives/all"))
        .await?;
    r.expect_status(200, "GET archive")?;
    r.json().context("archive JSON")
}

/// The replay as any running node of `ids` describes it.
async fn replay_state(c: &LocalCluster, ids: &[u64]) -> Option<Value> {
    for id in ids {
        let Ok(client) = c.client(*id) else { continue };
        if let Ok(r) = client.get_json("/v1/replays/rp").await
            && r.status == 200
        {
            return r.json();
        }
    }
    None
}

/// (event id, JSON) of every archived event in the store at `data`.
fn archived(data: &std::path::Path) -> anyhow::Result<Vec<(u64, u64, Vec<u8>)>> {
    let store = ArchiveStore::open(&data.join("archive"))?;
    let mut out = Vec::new();
    let mut after = (0, 0);
    let mut first = true;
    loop {
        let page = store.read(BUS, "all", after, first, 1000)?;
        first = false;
        let Some(last) = page.last() else { break };
        after = (last.index, last.seq);
        out.extend(page.into_iter().map(|e| (e.index, e.seq, e.json)));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_survives_a_leader_kill_and_a_rebuilt_follower_keeps_the_archive()
-> anyhow::Result<()> {
    let window = in_window();
    let more = extra_secs(window);
    // A pace that keeps the default window's replay under way for a few
    // seconds (so the kill lands in it), and a large window's too.
    let pace = (window / 4).max(300);
    bounded(Duration::from_secs(300 + 3 * more), async {
        let extra = json!({"snapshot_every": 50, "dispatch": {"replay_max_events_per_sec": pace}});
        let mut c = LocalCluster::up(&[("idc", 3)], Some(extra)).await?;
        let receiver = Receiver::start(Behavior::Ok).await?;
        let leader = c.leader(Duration::from_secs(20)).await?;
        let lc = c.client(leader)?;
        // One delivery at a time: the replay's events then arrive in their
        // original order (with more in flight, only started in order).
        let mut target = http_target("t", &receiver.url("/in"), retry(50, 20, 200));
        target["concurrency"] = json!(1);
        lc.put_rule(
            BUS,
            "r",
            &json!({"pattern": {"type": ["chaos.replay"]}, "targets": [target]}),
        )
        .await?
        .expect_status(200, "PUT rule")?;
        lc.send_json(
            Method::PUT,
            &format!("/v1/buses/{BUS}/archives/all"),
            &json!({"pattern": {"source": [{"prefix": "/chaos/"}]}}),
        )
        .await?
        .expect_status(200, "PUT archive")?;

        // The window: the first `window` events.
        let t0 = now_ms();
        post(&c, leader, "in", window).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t1 = now_ms();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // After it, until the leader has snapshotted and purged its log.
        let deadline = Instant::now() + Duration::from_secs(90 + more);
        let mut round = 0;
        loop {
            post(&c, leader, &format!("out{round}"), 400).await?;
            round += 1;
            let s = c.status(leader).await?;
            if index(&s, "purgedIndex") > 0 && index(&s, "snapshotIndex") > 0 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no snapshot and log purge within 90 s: {s}"
            );
        }
        let total = window + round * 400;
        wait_for(
            "the leader's archive to hold every event",
            Duration::from_secs(30 + more),
            Duration::from_millis(100),
            || async {
                let a = archive_at(&c, leader).await.ok()?;
                (index(&a, "eventCount") == total).then_some(())
            },
        )
        .await?;

        // A follower (not the lowest id: it would bootstrap) loses its data
        // and is rebuilt from the snapshot.
        let lowest = c.ids().into_iter().min().context("no nodes")?;
        let follower = c
            .ids()
            .into_iter()
            .find(|i| *i != leader && *i != lowest)
            .context("a follower")?;
        c.kill_9(follower)?;
        let fdata = c.node_by_id(follower)?.data_dir()?;
        std::fs::remove_dir_all(&fdata)?;
        c.restart(follower).await?;
        let rebuilt = wait_for(
            "the rebuilt follower's archive to be whole",
            Duration::from_secs(60 + more),
            Duration::from_millis(200),
            || async {
                let a = archive_at(&c, follower).await.ok()?;
                let whole = a.get("missingRanges").is_none() && index(&a, "eventCount") == total;
                whole.then_some(a)
            },
        )
        .await?;
        let fs = c.status(follower).await?;
        anyhow::ensure!(
            index(&fs, "snapshotIndex") > 0,
            "the wiped follower caught up without a snapshot: {fs}"
        );
        eprintln!("rebuilt follower's archive: {rebuilt}");

        // The replay, and the leader killed while it runs.
        lc.send_json(
            Method::POST,
            "/v1/replays/rp",
            &json!({"bus": BUS, "archive": "all", "start": t0, "end": t1}),
        )
        .await?
        .expect_status(201, "POST replay")?;
        let ids = c.ids();
        wait_for(
            "the replay to be under way",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || async {
                let r = replay_state(&c, &ids).await?;
                (index(&r, "eventsReplayed") >= 200).then_some(())
            },
        )
        .await?;
        c.kill_9(leader)?;
        let others: Vec<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
        let done = wait_for(
            "the replay to complete under the new leader",
            Duration::from_secs(90 + more),
            Duration::from_millis(200),
            || async {
                let r = replay_state(&c, &others).await?;
                (r["state"] == "COMPLETED").then_some(r)
            },
        )
        .await?;
        eprintln!("replay: {done}");
        anyhow::ensure!(
            index(&done, "eventsReplayed") >= window,
            "replayed fewer events than the window holds: {done}"
        );
        // Every event of the window at least once with `replayname`, in
        // order per source (first arrivals), none from outside it.
        let events = receiver.events();
        let mut seen = BTreeSet::new();
        let mut per_source: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in events.iter().filter(|e| e.attr("replayname") == Some("rp")) {
            anyhow::ensure!(
                e.id.starts_with("in-"),
                "replayed from outside the window: {}",
                e.id
            );
            if seen.insert(e.id.clone()) {
                per_source
                    .entry(e.attr("source").unwrap_or("").to_string())
                    .or_default()
                    .push(e.id.clone());
            }
        }
        anyhow::ensure!(
            seen.len() as u64 == window,
            "{} of the window's {window} events were replayed",
            seen.len()
        );
        for (source, ids) in &per_source {
            let mut sorted = ids.clone();
            sorted.sort();
            anyhow::ensure!(*ids == sorted, "replay of {source} out of order");
        }
        c.restart(leader).await?;
        c.ensure_no_panic()?;
        // The rebuilt follower holds exactly what the others hold.
        let other = others
            .iter()
            .copied()
            .find(|i| *i != follower)
            .context("a third node")?;
        let odata = c.node_by_id(other)?.data_dir()?;
        let ldata = c.node_by_id(leader)?.data_dir()?;
        // The old leader (killed with SIGKILL, restarted) catches up.
        let new_leader = c.leader(Duration::from_secs(20)).await?;
        wait_for(
            "the restarted old leader to apply everything",
            Duration::from_secs(60 + more),
            Duration::from_millis(100),
            || async {
                let want = index(&c.status(new_leader).await.ok()?, "appliedIndex");
                let got = index(&c.status(leader).await.ok()?, "appliedIndex");
                (got >= want).then_some(())
            },
        )
        .await?;
        for id in c.ids() {
            c.kill_9(id)?;
        }
        let want: Vec<(u64, Vec<u8>)> = archived(&odata)?
            .into_iter()
            .map(|(_, s, j)| (s, j))
            .collect();
        let got: Vec<(u64, Vec<u8>)> = archived(&fdata)?
            .into_iter()
            .map(|(_, s, j)| (s, j))
            .collect();
        anyhow::ensure!(
            want.len() as u64 >= total,
            "node {other} archived {} events of {total}",
            want.len()
        );
        anyhow::ensure!(
            got == want,
            "the rebuilt follower's archive differs: {} events, the others {}",
            got.len(),
            want.len()
        );
        let killed: Vec<(u64, Vec<u8>)> = archived(&ldata)?
            .into_iter()
            .map(|(_, s, j)| (s, j))
            .collect();
        anyhow::ensure!(
            killed == want,
            "the archive of the leader killed with SIGKILL differs: {} events, the others {}",
            killed.len(),
            want.len()
        );
        Ok(())
    })
    .await
}
