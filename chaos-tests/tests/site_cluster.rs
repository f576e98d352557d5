//! A site of 3 or 5 real node processes (`strait local up`): Raft over QUIC
//! with mutual TLS. Leaders are killed under load, followers fall behind and
//! catch up, nodes join and leave, impostors knock: no acknowledged event
//! may be lost, corrupted or invented, and producers may use any node.
//!
//! Short versions run in the test command. The long versions:
//! `STRAIT_CHAOS_KILLS=40 cargo test -p strait-chaos-tests --test site_cluster -- --test-threads 1`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use strait_chaos_tests::{
    Behavior, Ledger, LocalCluster, ProducerOptions, Receiver, bounded, check_conservation,
    http_target, produce, retry, stop_producers,
};

const BUS: &str = "default";

fn kills(default: usize) -> usize {
    std::env::var("STRAIT_CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn extra() -> Value {
    json!({"dispatch": {"checkpoint_interval_ms": 50}})
}

async fn put_rule(
    c: &LocalCluster,
    via: u64,
    source: &str,
    receiver: &Receiver,
) -> anyhow::Result<()> {
    let rule = json!({
        "pattern": {"source": [source]},
        "targets": [http_target("sink", &receiver.url("/sink"), retry(100_000, 20, 500))],
    });
    c.client(via)?
        .put_rule(BUS, "sink", &rule)
        .await?
        .expect_status(200, "PUT rule")?;
    Ok(())
}

/// Stop the producer, then check that every acknowledged event reached the
/// receiver intact and nothing unknown did.
async fn finish(
    stop: &AtomicBool,
    producer: tokio::task::JoinHandle<strait_chaos_tests::ProducerStats>,
    ledger: &Mutex<Ledger>,
    receiver: &Receiver,
    min_acked: usize,
) -> anyhow::Result<()> {
    let ledger = stop_producers(stop, vec![producer], ledger).await?;
    anyhow::ensure!(
        ledger.acked().len() >= min_acked,
        "only {} events acknowledged",
        ledger.acked().len()
    );
    receiver
        .wait_for_ids(ledger.acked().iter(), Duration::from_secs(60))
        .await
        .context("every acknowledged event must be delivered")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = check_conservation(&ledger, &receiver.events());
    eprintln!("conservation: {report}");
    report.ensure_ok()
}

/// Kill the leader (and `extra_kills` other nodes) again and again under a
/// steady stream of events sent to every node in turn; restart them after.
async fn leader_kills(nodes: usize, rounds: usize, extra_kills: usize) -> anyhow::Result<()> {
    let receiver = Receiver::start(Behavior::Ok).await?;
    let mut c = LocalCluster::up(&[("idc", nodes)], Some(extra())).await?;
    let source = format!("chaos.cluster{nodes}");
    let l = c.leader(Duration::from_secs(20)).await?;
    put_rule(&c, l, &source, &receiver).await?;
    let ledger = Arc::new(Mutex::new(Ledger::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut opts = ProducerOptions::new(BUS, &source);
    opts.id_prefix = format!("c{nodes}-");
    opts.drain = Duration::from_secs(30);
    let producer = tokio::spawn(produce(c.clients()?, opts, ledger.clone(), stop.clone()));
    let mut rng = StdRng::seed_from_u64(nodes as u64);
    let mut failovers = Vec::new();
    let mut terms = Vec::new();
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1200..2200))).await;
        let leader = c.leader(Duration::from_secs(20)).await?;
        terms.push(c.status(leader).await?["term"].as_u64().unwrap_or(0));
        let mut victims = vec![leader];
        let others: Vec<u64> = c.ids().into_iter().filter(|i| *i != leader).collect();
        for i in 0..extra_kills {
            victims.push(others[(round + i) % others.len()]);
        }
        let t = Instant::now();
        for v in &victims {
            c.kill_9(*v)?;
        }
        let survivors: Vec<u64> = c
            .ids()
            .into_iter()
            .filter(|i| !victims.contains(i))
            .collect();
        let new = c.leader_among(&survivors, Duration::from_secs(20)).await?;
        failovers.push(t.elapsed());
        anyhow::ensure!(!victims.contains(&new), "a killed node leads");
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
        for v in &victims {
            c.restart(*v).await?;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!("failover times: {failovers:?}; terms before each kill: {terms:?}");
    finish(&stop, producer, &ledger, &receiver, 200).await?;
    c.ensure_no_panic()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_survive_leader_kills_under_load() -> anyhow::Result<()> {
    let rounds = kills(10);
    bounded(
        Duration::from_secs(60 + 8 * rounds as u64),
        leader_kills(3, rounds, 0),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn five_nodes_survive_two_simultaneous_kills() -> anyhow::Result<()> {
    let rounds = kills(10).div_ceil(2);
    bounded(
        Duration::from_secs(60 + 8 * rounds as u64),
        leader_kills(5, rounds, 1),
    )
    .await
}

fn index(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// A follower down while the others take enough traffic to snapshot and
/// purge their logs catches up (by snapshot), then leads without loss.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_catches_up_by_snapshot_and_then_leads() -> anyhow::Result<()> {
    bounded(Duration::from_secs(180), async {
        let receiver = Receiver::start(Behavior::Ok).await?;
        let mut extra = extra();
        extra["snapshot_every"] = json!(50);
        let mut c = LocalCluster::up(&[("idc", 3)], Some(extra)).await?;
        let l = c.leader(Duration::from_secs(20)).await?;
        put_rule(&c, l, "chaos.catchup", &receiver).await?;
        let follower = c
            .ids()
            .into_iter()
            .find(|i| *i != l)
            .context("a follower")?;
        let ledger = Arc::new(Mutex::new(Ledger::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut opts = ProducerOptions::new(BUS, "chaos.catchup");
        opts.id_prefix = "cu-".into();
        let live: Vec<_> = c
            .ids()
            .into_iter()
            .filter(|i| *i != follower)
            .map(|i| c.client(i))
            .collect::<anyhow::Result<_>>()?;
        // First a little traffic, caught up by log after a short outage.
        c.kill_9(follower)?;
        let producer = tokio::spawn(produce(
            live.clone(),
            opts.clone(),
            ledger.clone(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.restart(follower).await?;
        let lead = c.leader(Duration::from_secs(20)).await?;
        wait_caught_up(&c, lead, follower).await?;
        // Then a long outage: the others snapshot and purge past it.
        c.kill_9(follower)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let lead = c
                .leader_among(&live_ids(&c, follower), Duration::from_secs(20))
                .await?;
            let s = c.status(lead).await?;
            // Purged beyond 256 entries kept after the snapshot.
            if index(&s, "purgedIndex") > 300 {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "no log purge within 60 s: {s}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        c.restart(follower).await?;
        let lead = c.leader(Duration::from_secs(20)).await?;
        wait_caught_up(&c, lead, follower).await?;
        let fs = c.status(follower).await?;
        anyhow::ensure!(
            index(&fs, "snapshotIndex") > 0,
            "the follower caught up without a snapshot: {fs}"
        );
        anyhow::ensure!(
            c.log(follower)?.contains("snapshot"),
            "the follower's log does not mention the snapshot it installed"
        );
        // Now make it lead: kill whoever leads until it is the follower.
        let mut tries = 0;
        loop {
            let lead = c.leader(Duration::from_secs(20)).await?;
            if lead == follower {
                break;
            }
            tries += 1;
            anyhow::ensure!(tries <= 10, "node {follower} never became leader");
            c.kill_9(lead)?;
            c.leader_among(&live_ids(&c, lead), Duration::from_secs(20))
                .await?;
            c.restart(lead).await?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        finish(&stop, producer, &ledger, &receiver, 300).await?;
        c.ensure_no_panic()
    })
    .await
}

fn live_ids(c: &LocalCluster, down: u64) -> Vec<u64> {
    c.ids().into_iter().filter(|i| *i != down).collect()
}

async fn wait_caught_up(c: &LocalCluster, leader: u64, node: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ls = c.status(leader).await?;
        let lag = ls["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["id"] == json!(node)))
            .and_then(|n| n["replicationLag"].as_u64());
        if lag.is_some_and(|l| l < 5) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {node} did not catch up: lag {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `reachable` of each node in a status document (absent: `None`).
fn reachability(s: &Value) -> Vec<(u64, Option<bool>)> {
    s["nodes"]
        .as_array()
        .map(|ns| {
            ns.iter()
                .filter_map(|n| Some((n["id"].as_u64()?, n["reachable"].as_bool())))
                .collect()
        })
        .unwrap_or_default()
}

/// Poll the leader (among `live`) until its `GET /v1/cluster` reports
/// `down` unreachable and every other node but itself reachable; returns
/// how long that took.
async fn wait_reachability(
    c: &mut LocalCluster,
    live: &[u64],
    down: Option<u64>,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        let leader = c.leader_among(live, timeout).await?;
        let s = c.status(leader).await?;
        let seen = reachability(&s);
        let want: Vec<(u64, Option<bool>)> = c
            .ids()
            .into_iter()
            .map(|i| (i, (i != leader).then_some(Some(i) != down)))
            .collect();
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        if sorted == want {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "leader {leader}: reachability {seen:?}, expected {want:?} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader's `GET /v1/cluster` tells a dead follower from a live one
/// (`reachable`) even while the site is idle and its lag stays 0, and
/// `strait cluster status` flags it; a follower's document has no
/// `reachable`.
#[tokio::test(flavor = "multi_thread")]
async fn the_leader_reports_a_killed_follower_unreachable() -> anyhow::Result<()> {
    bounded(Duration::from_secs(60), async {
        let mut c = LocalCluster::up(&[("idc", 3)], None).await?;
        let all = c.ids();
        let up = wait_reachability(&mut c, &all, None, Duration::from_secs(10)).await?;
        let leader = c.leader(Duration::from_secs(10)).await?;
        let victim = *all.iter().find(|i| **i != leader).context("a follower")?;
        let other = *all
            .iter()
            .find(|i| **i != leader && **i != victim)
            .context("another follower")?;
        let fs = c.status(other).await?;
        anyhow::ensure!(
            reachability(&fs).iter().all(|(_, r)| r.is_none()),
            "a follower reports reachability: {fs}"
        );

        c.kill_9(victim)?;
        let live = live_ids(&c, victim);
        let noticed =
            wait_reachability(&mut c, &live, Some(victim), Duration::from_secs(8)).await?;
        let lead = c.leader_among(&live, Duration::from_secs(10)).await?;
        let url = c.client(lead)?.base_url().to_string();
        let out = std::process::Command::new(strait_chaos_tests::strait_bin()?)
            .args(["cluster", "status", "--server", &url])
            .output()?;
        let table = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(out.status.success(), "strait cluster status: {table}");
        let flagged: Vec<&str> = table
            .lines()
            .filter(|l| l.contains("UNREACHABLE"))
            .collect();
        anyhow::ensure!(
            flagged.len() == 1
                && flagged[0]
                    .trim_start()
                    .starts_with(&format!("node {victim} ")),
            "strait cluster status should flag node {victim} only:\n{table}"
        );

        c.restart(victim).await?;
        let back = wait_reachability(&mut c, &all, None, Duration::from_secs(10)).await?;
        eprintln!(
            "all reachable after {up:?}; kill noticed after {noticed:?}; restart after {back:?}"
        );
        c.ensure_no_panic()
    })
    .await
}

/// A leader killed and restarted after the site elected another one comes
/// back as leader of its old term for a moment (openraft restores its own
/// committed vote) until a follower answers with the newer term. It must
/// not start the dispatcher (or a link sender) in that moment: they wait
/// for a quorum to confirm the leadership. Its `/metrics` counts every
/// dispatcher start since the process started.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_old_leader_starts_no_dispatcher_before_the_site_confirms_it()
-> anyhow::Result<()> {
    bounded(Duration::from_secs(90), async {
        let mut c = LocalCluster::up(&[("idc", 3)], Some(extra())).await?;
        let all = c.ids();
        let receiver = Receiver::start(Behavior::Ok).await?;
        let old = c.leader(Duration::from_secs(20)).await?;
        put_rule(&c, old, "restart.old", &receiver).await?;
        c.kill_9(old)?;
        let live = live_ids(&c, old);
        let new = c.leader_among(&live, Duration::from_secs(20)).await?;
        c.restart(old).await?;
        let agreed = c.leader(Duration::from_secs(20)).await?;
        anyhow::ensure!(agreed == new, "node {agreed} leads, expected node {new}");
        let metrics = c.client(old)?.get_json("/metrics").await?.text();
        let starts: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("strait_dispatcher_starts_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let log = c.log(old)?;
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("dispatcher") || l.contains("higher vote"))
            .collect();
        anyhow::ensure!(
            starts == 0.0,
            "node {old}, restarted after node {new} was elected, started its dispatcher {starts} times \
             before it stepped down:\n{}",
            lines[lines.len().saturating_sub(10)..].join("\n")
        );
        // The site still works: the new leader delivers.
        c.client(new)?
            .post_structured(
                BUS,
                &json!({"specversion": "1.0", "id": "after-restart", "source": "restart.old", "type": "t"}),
            )
            .await?
            .expect_status(200, "POST event")?;
        receiver
            .wait_for_ids([&"after-restart".to_string()], Duration::from_secs(20))
            .await?;
        anyhow::ensure!(all.len() == 3, "{all:?}");
        c.ensure_no_panic()
    })
    .await
}

/// Grow 1 → 3 → 5 and shrink back to 3 while a producer keeps sending.
#[tokio::test(flavor = "multi_thread")]
async fn membership_grows_and_shrinks_under_load() -> anyhow::Result<()> {
    bounded(Duration::from_secs(180), async {
        let receiver = Receiver::start(Behavior::Ok).await?;
        let mut c = LocalCluster::up(&[("idc", 1)], Some(extra())).await?;
        c.leader(Duration::from_secs(20)).await?;
        put_rule(&c, 1, "chaos.members", &receiver).await?;
        let ledger = Arc::new(Mutex::new(Ledger::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut opts = ProducerOptions::new(BUS, "chaos.members");
        opts.id_prefix = "m-".into();
        let producer = tokio::spawn(produce(
            vec![c.client(1)?],
            opts,
            ledger.clone(),
            stop.clone(),
        ));
        for id in 2..=5u64 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            c.add_node("idc", id, 1).await?;
            let want: Vec<u64> = (1..=id).collect();
            c.wait_voters(1, &want, Duration::from_secs(60)).await?;
            c.wait_voters(id, &want, Duration::from_secs(30)).await?;
        }
        // Producers may use the new nodes too.
        let mut opts2 = ProducerOptions::new(BUS, "chaos.members");
        opts2.id_prefix = "m2-".into();
        opts2.seed = 7;
        let producer2 = tokio::spawn(produce(
            vec![c.client(4)?, c.client(5)?],
            opts2,
            ledger.clone(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Shrink: remove two nodes (through a node that stays).
        for id in [5u64, 4] {
            let r = c
                .client(2)?
                .delete(&format!("/v1/cluster/members/{id}"))
                .await?;
            r.expect_status(200, "DELETE member")?;
            let want: Vec<u64> = (1..id).collect();
            c.wait_voters(1, &want, Duration::from_secs(30)).await?;
        }
        // Removed nodes' producer must see final answers from the others.
        stop.store(true, Ordering::SeqCst);
        let s2 = producer2.await.context("producer 2")?;
        anyhow::ensure!(s2.problems.is_empty(), "producer 2: {:?}", s2.problems);
        c.remove(5)?;
        c.remove(4)?;
        let after = c.status(1).await?;
        anyhow::ensure!(
            after["nodes"].as_array().map(Vec::len) == Some(3),
            "{after}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        finish(&stop, producer, &ledger, &receiver, 100).await?;
        c.ensure_no_panic()
    })
    .await
}

/// A node with a certificate from another CA is refused over QUIC (and the
/// refusal is logged with the reason); the site does not notice.
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_ca_impostor_is_refused_and_the_site_is_unaffected() -> anyhow::Result<()> {
    bounded(Duration::from_secs(90), async {
        let mut c = LocalCluster::up(&[("idc", 3)], Some(extra())).await?;
        let leader = c.leader(Duration::from_secs(20)).await?;
        let term_before = c.status(leader).await?["term"].as_u64().unwrap_or(0);
        let members: Vec<Value> = c
            .nodes
            .iter()
            .map(|n| json!({"id": n.id, "raft_addr": n.quic, "http_addr": n.http}))
            .collect();
        // A node from another CA that believes it is node 1 of this site
        // (with the real nodes 2 and 3 as its peers): it forms a group and
        // campaigns at once. (A peer whose certificate names another node
        // than it claims, and a peer without a certificate, are refused as
        // well: see federation/tests/transport.rs and site_cluster.rs.)
        let other_ca = c.dir().join("other-ca");
        strait(&["cert", "init-ca", "--dir", path(&other_ca)?])?;
        let mut impostors = Vec::new();
        {
            let id = 1u64;
            let d = c.dir().join("impostor");
            let certs = d.join("certs");
            strait(&[
                "cert", "issue", "--ca", path(&other_ca)?, "--node-id", "1", "--site",
                "idc", "--ip", "127.0.0.1", "--out", path(&certs)?,
            ])?;
            let quic = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.to_string();
            let http = format!("127.0.0.1:{}", strait_chaos_tests::free_port()?);
            let mut ms: Vec<Value> = members.into_iter().filter(|m| m["id"] != json!(id)).collect();
            ms.push(json!({"id": id, "raft_addr": quic, "http_addr": http}));
            let cfg = json!({
                "node_id": id, "site": "idc", "dev": true, "http": http,
                "data_dir": d.join("data"),
                "cluster": {"listen": quic, "certs_dir": certs, "initial_members": ms},
            });
            let cfg_path = d.join("config.yaml");
            std::fs::write(&cfg_path, serde_yaml::to_string(&cfg)?)?;
            let log = std::fs::File::create(d.join("node.log"))?;
            let child = std::process::Command::new(strait_chaos_tests::strait_bin()?)
                .arg("serve")
                .arg("--config")
                .arg(&cfg_path)
                .env("RUST_LOG", "info")
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            impostors.push(child);
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        for mut i in impostors {
            let _ = i.kill();
            let _ = i.wait();
        }
        let logs: String = c.ids().iter().map(|i| c.log(*i).unwrap_or_default()).collect();
        anyhow::ensure!(
            logs.contains("refused a QUIC connection"),
            "no node logged refusing the foreign-CA impostor"
        );
        let leader_after = c.leader(Duration::from_secs(10)).await?;
        let term_after = c.status(leader_after).await?["term"].as_u64().unwrap_or(0);
        anyhow::ensure!(
            leader_after == leader && term_after == term_before,
            "the site was disturbed: leader {leader} term {term_before} → leader {leader_after} term {term_after}"
        );
        let r = c
            .client(leader)?
            .post_structured(BUS, &json!({"specversion": "1.0", "id": "after", "source": "/x", "type": "t"}))
            .await?;
        r.expect_status(200, "write after the impostors")?;
        c.ensure_no_panic()
    })
    .await
}

fn path(p: &std::path::Path) -> anyhow::Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

fn strait(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(strait_chaos_tests::strait_bin()?)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "strait {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
