//! `bus` targets re-ingest events, at the same site or at another one
//! (`"site"`), with provenance and a hop limit. Bus targets pointing at each
//! other make a loop; it must stop at the hop limit with a dead-letter
//! record naming the reason, and settle (nothing keeps circulating).
//!
//! Every rule is created once, at the site whose events it routes, and every
//! target names its site explicitly: the same test holds whether rules are
//! per site or shared by all sites.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use strait_chaos_tests::{
    Behavior, LocalCluster, NodeClient, Receiver, bounded, http_target, retry, wait_for,
};

/// Most hops (`straithops`) an event makes (node/src/links/hops.rs `MAX_HOPS`).
const MAX_HOPS: u64 = 8;

/// Also covers the committed-only inbound path: these sites deliver what
/// they received only after it commits (the other federation tests use the
/// default, delivery before commit).
fn extra() -> Value {
    json!({
        "dispatch": {"checkpoint_interval_ms": 50},
        "federation": {"deliver_before_commit": false}
    })
}

fn bus_target(id: &str, bus: &str, site: &str) -> Value {
    json!({"id": id, "type": "bus", "bus": bus, "site": site, "retry": retry(5, 20, 200)})
}

fn watch_target(recv: &Receiver, path: &str, site: &str) -> Value {
    let mut t = http_target("watch", &recv.url(path), retry(100_000, 20, 500));
    t["site"] = json!(site);
    t
}

async fn leader_client(c: &LocalCluster, site: &str) -> anyhow::Result<NodeClient> {
    let nodes = c.site_nodes(site);
    wait_for(
        &format!("a leader at site {site}"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            for &i in &nodes {
                let client = c.client_at(i).ok()?;
                if let Ok(r) = client.get_json("/v1/cluster").await
                    && r.json().is_some_and(|v| v["role"] == json!("leader"))
                {
                    return Some(client);
                }
            }
            None
        },
    )
    .await
}

async fn put_bus(client: &NodeClient, bus: &str) -> anyhow::Result<()> {
    let r = client.put_bus(bus, None).await?;
    anyhow::ensure!(
        (200..300).contains(&r.status),
        "PUT bus {bus}: {} {}",
        r.status,
        r.text()
    );
    Ok(())
}

async fn put_rule(client: &NodeClient, bus: &str, name: &str, spec: Value) -> anyhow::Result<()> {
    client
        .put_rule(bus, name, &spec)
        .await?
        .expect_status(200, &format!("PUT rule {bus}/{name}"))?;
    Ok(())
}

/// The hop counts of the events `recv` got, by count.
fn hops_seen(recv: &Receiver) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for e in recv.events() {
        let h = e
            .attr("straithops")
            .and_then(|h| h.parse().ok())
            .unwrap_or(0);
        *m.entry(h).or_insert(0) += 1;
    }
    m
}

/// The status of one target of a rule.
async fn target_status(
    client: &NodeClient,
    bus: &str,
    rule: &str,
    target: &str,
) -> anyhow::Result<Value> {
    let r = client
        .get_json(&format!("/v1/buses/{bus}/rules/{rule}"))
        .await?;
    r.expect_status(200, "GET rule")?;
    let v = r.json().context("rule JSON")?;
    Ok(v["status"]["targets"][target].clone())
}

/// One dead-letter record for `id` with the hop-limit reason, and nothing
/// else, reaches `dlq` — then nothing more arrives anywhere.
async fn expect_one_hop_limit_dead_letter(
    dlq: &Receiver,
    id: &str,
    watchers: &[&Receiver],
) -> anyhow::Result<Value> {
    dlq.wait_until("the hop-limit dead letter", Duration::from_secs(60), |r| {
        !r.is_empty()
    })
    .await?;
    // Settle: counts stop moving.
    let mut last = (0, Vec::new());
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = (
            dlq.count(),
            watchers.iter().map(|w| w.count()).collect::<Vec<_>>(),
        );
        if now == last {
            break;
        }
        last = now;
    }
    let dead = dlq.events();
    anyhow::ensure!(
        dead.len() == 1,
        "one dead-letter record expected, got {}",
        dead.len()
    );
    let d = &dead[0];
    anyhow::ensure!(d.id == id, "dead letter for {} instead of {id}", d.id);
    let reason = d.attr("deadletterreason").unwrap_or_default();
    anyhow::ensure!(
        reason.contains("hop limit"),
        "dead-letter reason: {reason:?}"
    );
    anyhow::ensure!(
        d.attr("straithops") == Some(&MAX_HOPS.to_string()),
        "the dead-lettered event made {:?} hops",
        d.attr("straithops")
    );
    Ok(json!({
        "reason": reason,
        "rule": d.attr("deadletterrule"),
        "origin": d.attr("straitorigin"),
        "via": d.attr("straitvia"),
    }))
}

/// Bus `a` at idc → bus `b` at aws → bus `a` at idc → ... Each link
/// crossing is one hop; at the hop limit the idc rule dead-letters instead
/// of sending it on. Watch rules record each round on both buses.
#[tokio::test(flavor = "multi_thread")]
async fn a_cross_site_bus_loop_stops_at_the_hop_limit_with_a_dead_letter() -> anyhow::Result<()> {
    bounded(Duration::from_secs(150), async {
        let c = LocalCluster::up(&[("idc", 1), ("aws", 1)], Some(extra())).await?;
        let idc = leader_client(&c, "idc").await?;
        let aws = leader_client(&c, "aws").await?;
        let watch_a = Receiver::start(Behavior::Ok).await?;
        let watch_b = Receiver::start(Behavior::Ok).await?;
        let dlq = Receiver::start(Behavior::Ok).await?;
        put_bus(&idc, "a").await?;
        put_bus(&idc, "dlq").await?;
        put_bus(&aws, "b").await?;
        // Rule A (idc, bus a) → bus b at aws; rule B (aws, bus b) → bus a at idc.
        put_rule(
            &idc,
            "a",
            "to-b",
            json!({"pattern": {"source": ["loop"]}, "targets": [bus_target("b-at-aws", "b", "aws")],
                   "deadLetter": {"type": "bus", "bus": "dlq"}}),
        )
        .await?;
        put_rule(
            &aws,
            "b",
            "to-a",
            json!({"pattern": {"source": ["loop"]}, "targets": [bus_target("a-at-idc", "a", "idc")],
                   "deadLetter": {"type": "bus", "bus": "dlq"}}),
        )
        .await?;
        put_rule(&idc, "a", "watch", json!({"pattern": {}, "targets": [watch_target(&watch_a, "/a", "idc")]})).await?;
        put_rule(&aws, "b", "watch", json!({"pattern": {}, "targets": [watch_target(&watch_b, "/b", "aws")]})).await?;
        put_rule(&idc, "dlq", "watch", json!({"pattern": {}, "targets": [watch_target(&dlq, "/dlq", "idc")]})).await?;

        let ev = json!({"specversion": "1.0", "id": "loop-1", "source": "loop", "type": "t", "data": {"n": 1}});
        idc.post_structured("a", &ev).await?.expect_status(200, "post")?;
        let dead = expect_one_hop_limit_dead_letter(&dlq, "loop-1", &[&watch_a, &watch_b]).await?;
        eprintln!("dead letter: {dead}");
        anyhow::ensure!(dead["origin"] == json!("idc"), "{dead}");
        anyhow::ensure!(dead["via"] == json!("aws/b/to-a/a-at-idc"), "{dead}");
        anyhow::ensure!(dead["rule"] == json!("a/to-b"), "{dead}");
        // Bounded bounces: bus a saw hops 0 (posted), 2, 4, 6, 8; bus b 1, 3, 5, 7.
        let a = hops_seen(&watch_a);
        let b = hops_seen(&watch_b);
        eprintln!("bus a at idc saw hops {a:?}; bus b at aws saw hops {b:?}");
        let even: BTreeMap<u64, usize> = (0..=MAX_HOPS).step_by(2).map(|h| (h, 1)).collect();
        let odd: BTreeMap<u64, usize> = (1..MAX_HOPS).step_by(2).map(|h| (h, 1)).collect();
        anyhow::ensure!(a == even, "bus a rounds: {a:?}");
        anyhow::ensure!(b == odd, "bus b rounds: {b:?}");
        for e in watch_b.events() {
            anyhow::ensure!(e.attr("straitorigin") == Some("idc"), "origin: {:?}", e.attr("straitorigin"));
            anyhow::ensure!(e.attr("straitvia") == Some("idc/a/to-b/b-at-aws"), "via: {:?}", e.attr("straitvia"));
        }
        // Settled: no lag, the dead letter is counted, the links are empty.
        let s = target_status(&idc, "a", "to-b", "b-at-aws").await?;
        anyhow::ensure!(s["lag"] == json!(0) && s["deadLettered"] == json!(1), "rule a/to-b: {s}");
        let s = target_status(&aws, "b", "to-a", "a-at-idc").await?;
        anyhow::ensure!(s["lag"] == json!(0), "rule b/to-a: {s}");
        for client in [&idc, &aws] {
            let v = client.get_json("/v1/cluster").await?.json().context("cluster JSON")?;
            for l in v["links"].as_array().cloned().unwrap_or_default() {
                if l["direction"] == json!("out") {
                    anyhow::ensure!(l["outboxDepth"] == json!(0), "link not drained: {l}");
                }
            }
        }
        c.ensure_no_panic()
    })
    .await
}

/// Bus `c` → bus `d` → bus `c` ... at one site: each re-ingest is a hop.
#[tokio::test(flavor = "multi_thread")]
async fn a_same_site_bus_loop_stops_at_the_hop_limit_with_a_dead_letter() -> anyhow::Result<()> {
    bounded(Duration::from_secs(120), async {
        let c = LocalCluster::up(&[("idc", 1), ("aws", 1)], Some(extra())).await?;
        let idc = leader_client(&c, "idc").await?;
        let watch_c = Receiver::start(Behavior::Ok).await?;
        let watch_d = Receiver::start(Behavior::Ok).await?;
        let dlq = Receiver::start(Behavior::Ok).await?;
        for bus in ["c", "d", "dlq"] {
            put_bus(&idc, bus).await?;
        }
        let dl = json!({"type": "bus", "bus": "dlq"});
        put_rule(&idc, "c", "to-d", json!({"pattern": {}, "targets": [bus_target("d", "d", "idc")], "deadLetter": dl})).await?;
        put_rule(&idc, "d", "to-c", json!({"pattern": {}, "targets": [bus_target("c", "c", "idc")], "deadLetter": dl})).await?;
        put_rule(&idc, "c", "watch", json!({"pattern": {}, "targets": [watch_target(&watch_c, "/c", "idc")]})).await?;
        put_rule(&idc, "d", "watch", json!({"pattern": {}, "targets": [watch_target(&watch_d, "/d", "idc")]})).await?;
        put_rule(&idc, "dlq", "watch", json!({"pattern": {}, "targets": [watch_target(&dlq, "/dlq", "idc")]})).await?;

        let ev = json!({"specversion": "1.0", "id": "same-1", "source": "same", "type": "t", "data": {}});
        idc.post_structured("c", &ev).await?.expect_status(200, "post")?;
        let dead = expect_one_hop_limit_dead_letter(&dlq, "same-1", &[&watch_c, &watch_d]).await?;
        eprintln!("dead letter: {dead}");
        anyhow::ensure!(dead["origin"] == json!("idc") && dead["via"] == json!("idc/d/to-c/c"), "{dead}");
        let cs = hops_seen(&watch_c);
        let ds = hops_seen(&watch_d);
        let even: BTreeMap<u64, usize> = (0..=MAX_HOPS).step_by(2).map(|h| (h, 1)).collect();
        let odd: BTreeMap<u64, usize> = (1..MAX_HOPS).step_by(2).map(|h| (h, 1)).collect();
        anyhow::ensure!(cs == even, "bus c rounds: {cs:?}");
        anyhow::ensure!(ds == odd, "bus d rounds: {ds:?}");
        let s = target_status(&idc, "c", "to-d", "d").await?;
        anyhow::ensure!(s["lag"] == json!(0) && s["deadLettered"] == json!(1), "rule c/to-d: {s}");
        c.ensure_no_panic()
    })
    .await
}
