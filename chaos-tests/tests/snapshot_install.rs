//! A follower whose data directory is lost is rebuilt from a snapshot: a
//! 3-node site of real processes (QUIC, mutual TLS) takes events until the
//! leader has snapshotted and purged its log, one follower's data directory
//! is wiped, and the follower started again on the empty directory must
//! install the leader's snapshot, take the log after it and end up holding
//! exactly the events the leader holds (compared row by row in both
//! `state.redb` files once every node is stopped).
//!
//! The memory and time of the same path with a large state:
//! `cargo bench -p strait-chaos-tests --bench snapshot_site`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};
use strait_chaos_tests::events::event;
use strait_chaos_tests::{LocalCluster, bounded};
use strait_federation::SiteState;

const BUS: &str = "default";

fn index(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// Post `batches` batches of 20 events of about 1 KiB through node `via`.
async fn post(c: &LocalCluster, via: u64, first: &mut u64, batches: u64) -> anyhow::Result<()> {
    let client = c.client(via)?;
    let pad = "p".repeat(1000);
    for _ in 0..batches {
        let batch: Vec<Value> = (0..20)
            .map(|_| {
                *first += 1;
                event(
                    &format!("si-{first:07}"),
                    "chaos.snapshot",
                    "chaos.snapshot.event",
                    json!({"n": *first, "pad": pad}),
                )
            })
            .collect();
        client
            .post_batch(BUS, &batch)
            .await?
            .expect_status(200, "POST batch")?;
    }
    Ok(())
}

/// Wait until node `node` has applied everything node `leader` has.
async fn wait_applied(c: &LocalCluster, leader: u64, node: u64) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let want = index(&c.status(leader).await?, "appliedIndex");
        if let Ok(s) = c.status(node).await
            && index(&s, "appliedIndex") >= want
        {
            return Ok(s);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {node} did not apply up to {want} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a state database holds: every event of [`BUS`] (sequence, JSON),
/// the next sequence number, and the bus and rule definitions.
type Contents = (Vec<(u64, Vec<u8>)>, u64, String);

/// [`Contents`] of the state database at `path`.
fn contents(path: &std::path::Path) -> anyhow::Result<Contents> {
    let state = SiteState::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut events = Vec::new();
    let mut from = 0;
    loop {
        let page = state.read_events(BUS, from, 1000)?;
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        events.extend(page.into_iter().map(|e| (e.seq, e.json)));
    }
    let view = state.view();
    let config = format!("{:?} {:?}", view.buses, view.rules);
    Ok((events, view.next_seq, config))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_rebuilt_from_a_snapshot_holds_the_leaders_events() -> anyhow::Result<()> {
    bounded(Duration::from_secs(240), async {
        let extra = json!({"snapshot_every": 50});
        let mut c = LocalCluster::up(&[("idc", 3)], Some(extra)).await?;
        let leader = c.leader(Duration::from_secs(20)).await?;
        // Not the lowest id: that one bootstraps the site when its state is empty.
        let lowest = c.ids().into_iter().min().context("no nodes")?;
        let follower = c
            .ids()
            .into_iter()
            .find(|i| *i != leader && *i != lowest)
            .context("a follower that does not bootstrap")?;
        let mut n = 0u64;
        // Until the leader has purged its log after a snapshot: a node with
        // no state can then only catch up from the snapshot.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            post(&c, leader, &mut n, 20).await?;
            let s = c.status(leader).await?;
            if index(&s, "purgedIndex") > 0 && index(&s, "snapshotIndex") > 0 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no snapshot and log purge within 90 s: {s}"
            );
        }
        c.kill_9(follower)?;
        let data = c.node_by_id(follower)?.data_dir()?;
        std::fs::remove_dir_all(&data).with_context(|| format!("wipe {}", data.display()))?;
        // More events while it is gone, then it starts on nothing.
        post(&c, leader, &mut n, 10).await?;
        c.restart(follower).await?;
        let fs = wait_applied(&c, leader, follower).await?;
        anyhow::ensure!(
            index(&fs, "snapshotIndex") > 0,
            "the wiped follower caught up without a snapshot: {fs}"
        );
        // And it takes the log after the snapshot.
        post(&c, leader, &mut n, 10).await?;
        wait_applied(&c, leader, follower).await?;
        c.ensure_no_panic()?;
        let leader_dir = c.node_by_id(leader)?.data_dir()?;
        for id in c.ids() {
            c.kill_9(id)?;
        }
        let (want, want_next, want_config) = contents(&leader_dir.join("state.redb"))?;
        let (got, got_next, got_config) = contents(&data.join("state.redb"))?;
        anyhow::ensure!(
            want.len() as u64 == n,
            "the leader holds {} events, {n} were acknowledged",
            want.len()
        );
        anyhow::ensure!(
            got.len() == want.len(),
            "the rebuilt follower holds {} events, the leader {}",
            got.len(),
            want.len()
        );
        if let Some(i) = (0..want.len()).find(|i| got[*i] != want[*i]) {
            anyhow::bail!(
                "event {i} differs: leader seq {} ({} bytes), follower seq {} ({} bytes)",
                want[i].0,
                want[i].1.len(),
                got[i].0,
                got[i].1.len()
            );
        }
        anyhow::ensure!(
            got_next == want_next,
            "next sequence {got_next} != {want_next}"
        );
        anyhow::ensure!(got_config == want_config, "buses or rules differ");
        Ok(())
    })
    .await
}
