//! Dead-letter redrive survives a leader kill, on a 3-node site:
//!
//! - a target whose endpoint fails dead-letters N events (to a
//!   dead-letter bus); they are listed with their reason at a follower;
//! - the endpoint is fixed (and slow, so the redrive takes a while);
//!   `strait dlq redrive --all` (the CLI, at a follower) sends them again;
//! - the leader is killed with SIGKILL in the middle of the redrive;
//! - every event reaches the target at least once, with its original id
//!   and `traceparent`, and the lookup at a surviving node shows the
//!   redrive delivered.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use strait_chaos_tests::{
    Behavior, LocalCluster, NodeClient, Receiver, bounded, http_target, retry, strait_bin, wait_for,
};

const BUS: &str = "default";
const N: usize = 600;

async fn leader(c: &LocalCluster, skip: Option<usize>) -> anyhow::Result<usize> {
    wait_for(
        "a leader",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            for i in c.site_nodes("idc") {
                if Some(i) == skip {
                    continue;
                }
                let client =
                    NodeClient::new(&c.nodes[i].base_url(), Duration::from_secs(2)).ok()?;
                if let Ok(r) = client.get_json("/v1/cluster").await
                    && r.json().is_some_and(|v| v["role"] == json!("leader"))
                {
                    return Some(i);
                }
            }
            None
        },
    )
    .await
}

fn traceparent(i: usize) -> String {
    format!("00-{:032x}-{:016x}-01", 0x5eed_0000 + i, 0x1000 + i)
}

/// Every dead letter of the target, paging through the list.
async fn dead_letters(client: &NodeClient) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut path = format!("/v1/buses/{BUS}/rules/r/targets/t/dead-letters?limit=1000");
        if let Some(n) = &next {
            path.push_str(&format!("&next={n}"));
        }
        let r = client.get_json(&path).await?;
        let v = r.json().context("dead letters: no JSON")?;
        anyhow::ensure!(r.status == 200, "dead letters: {} {v}", r.status);
        out.extend(v["deadLetters"].as_array().cloned().unwrap_or_default());
        match v["next"].as_str() {
            Some(n) => next = Some(n.to_string()),
            None => return Ok(out),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redrive_survives_a_leader_kill() -> anyhow::Result<()> {
    bounded(Duration::from_secs(300), async {
        let extra = json!({"dispatch": {"checkpoint_interval_ms": 100}});
        let mut c = LocalCluster::up(&[("idc", 3)], Some(extra)).await?;
        let target = Receiver::start(Behavior::AlwaysFail).await?;
        let lead = leader(&c, None).await?;
        let follower = *c
            .site_nodes("idc")
            .iter()
            .find(|i| **i != lead)
            .context("a follower")?;
        let at = c.client_at(lead)?;
        at.put_bus("dlq", None).await?.expect_status(200, "PUT dlq")?;
        let mut t = http_target("t", &target.url("/t"), retry(2, 20, 40));
        t["deadLetter"] = json!({"type": "bus", "bus": "dlq"});
        at.put_rule(BUS, "r", &json!({"pattern": {"source": ["redrive"]}, "targets": [t]}))
            .await?
            .expect_status(200, "PUT rule")?;

        let ids: Vec<String> = (0..N).map(|i| format!("ev-{i}")).collect();
        for chunk in (0..N).collect::<Vec<_>>().chunks(100) {
            let batch: Vec<Value> = chunk
                .iter()
                .map(|i| {
                    json!({"specversion": "1.0", "id": ids[*i], "source": "redrive",
                        "type": "t", "traceparent": traceparent(*i), "data": {"n": i}})
                })
                .collect();
            c.client_at(follower)?
                .post_batch(BUS, &batch)
                .await?
                .expect_status(200, "POST batch")?;
        }

        // All dead-lettered, listed at a follower with their reason.
        let at_follower = c.client_at(follower)?;
        let listed = wait_for(
            "N dead letters",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || async {
                let l = dead_letters(&at_follower).await.ok()?;
                (l.len() == N).then_some(l)
            },
        )
        .await?;
        for d in &listed {
            anyhow::ensure!(d["status"] == "dead-lettered", "{d}");
            anyhow::ensure!(d["attempts"] == 2, "{d}");
            let reason = d["reason"].as_str().unwrap_or_default();
            anyhow::ensure!(reason.contains("retries exhausted"), "{d}");
        }
        let before = target.count();

        // Fixed, and slow: the redrive takes seconds.
        target.set_behavior(Behavior::Delay(Duration::from_millis(400)));
        let out = tokio::process::Command::new(strait_bin()?)
            .args([
                "dlq",
                "redrive",
                "--server",
                &c.nodes[follower].base_url(),
                "--rule",
                "r",
                "--target",
                "t",
                "--all",
            ])
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(
            out.status.success() && stdout.contains(&format!("{N} event(s)")),
            "strait dlq redrive: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );

        // Kill the leader once some, not all, are delivered again.
        wait_for(
            "the redrive under way",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || async {
                let ok = target.requests()[before..]
                    .iter()
                    .filter(|r| r.succeeded())
                    .count();
                (ok >= 50).then_some(())
            },
        )
        .await?;
        let done_at_kill = target.requests()[before..]
            .iter()
            .filter(|r| r.succeeded())
            .count();
        anyhow::ensure!(done_at_kill < N, "the redrive ended before the kill");
        c.kill_9_at(lead)?;
        let new_leader = leader(&c, Some(lead)).await?;

        // Every event at least once, with its id and traceparent.
        let want: BTreeSet<String> = ids.iter().cloned().collect();
        wait_for(
            "every event redriven",
            Duration::from_secs(120),
            Duration::from_millis(200),
            || async {
                let got: BTreeSet<String> = target.delivered_ids();
                want.is_subset(&got).then_some(())
            },
        )
        .await?;
        let mut copies: BTreeMap<String, usize> = BTreeMap::new();
        for e in target.events().iter().filter(|e| e.succeeded()) {
            let id = e.id.clone();
            let n: usize = id
                .strip_prefix("ev-")
                .and_then(|n| n.parse().ok())
                .context("an event of this test")?;
            anyhow::ensure!(
                e.attr("traceparent") == Some(traceparent(n).as_str()),
                "{id}: traceparent {:?}, sent {}",
                e.attr("traceparent"),
                traceparent(n)
            );
            *copies.entry(id).or_default() += 1;
        }
        let repeated = copies.values().filter(|n| **n > 1).count();
        eprintln!(
            "redrive: {N} events, {done_at_kill} delivered before the kill, {repeated} delivered more than once"
        );

        // The lookup at the new leader shows the redrive delivered.
        let client = c.client_at(new_leader)?;
        let last = ids[N - 1].clone();
        wait_for(
            "the redrive in the lookup",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || async {
                let r = client
                    .get_json(&format!("/v1/buses/{BUS}/events/{last}?source=redrive"))
                    .await
                    .ok()?;
                let v = r.json()?;
                (v["redrives"][0]["status"] == "delivered").then_some(())
            },
        )
        .await?;

        // The CLI lists them with their redrive; a seek back at the new
        // leader's site re-delivers every event the bus still holds.
        let strait = |args: Vec<String>| async move {
            let out = tokio::process::Command::new(strait_bin()?)
                .args(&args)
                .output()
                .await?;
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            anyhow::ensure!(
                out.status.success(),
                "strait {}: {stdout} {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(stdout)
        };
        let server = c.nodes[new_leader].base_url();
        let ls = strait(
            ["dlq", "ls", "--server", &server, "--rule", "r", "--target", "t", "--limit", "2"]
                .map(String::from)
                .to_vec(),
        )
        .await?;
        anyhow::ensure!(
            ls.contains("ev-0") && ls.contains("delivered") && ls.contains("--next"),
            "strait dlq ls: {ls}"
        );
        target.set_behavior(Behavior::Ok);
        let before_seek = target.count();
        // Before anything the bus holds: refused without --allow-partial.
        let refused = tokio::process::Command::new(strait_bin()?)
            .args([
                "target", "seek", "--server", &server, "--rule", "r", "--target", "t", "--time",
                "2001-01-01T00:00:00Z",
            ])
            .output()
            .await?;
        let err = String::from_utf8_lossy(&refused.stderr);
        anyhow::ensure!(
            !refused.status.success() && err.contains("retention_secs"),
            "strait target seek before retention: {err}"
        );
        let out = strait(
            [
                "target",
                "seek",
                "--server",
                &server,
                "--rule",
                "r",
                "--target",
                "t",
                "--time",
                "2001-01-01T00:00:00Z",
                "--allow-partial",
            ]
            .map(String::from)
            .to_vec(),
        )
        .await?;
        anyhow::ensure!(
            out.contains(&format!("re-delivers {N} event(s)")),
            "strait target seek: {out}"
        );
        wait_for(
            "every event again after the seek",
            Duration::from_secs(120),
            Duration::from_millis(200),
            || async {
                let again: BTreeSet<String> = target.requests()[before_seek..]
                    .iter()
                    .filter(|r| r.succeeded())
                    .filter_map(|r| r.event().map(|e| e.id))
                    .collect();
                want.is_subset(&again).then_some(())
            },
        )
        .await?;
        Ok(())
    })
    .await
}
