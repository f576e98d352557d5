//! Sites linked over QUIC (`strait local up --site a:N --site b:M ...`):
//! an event is routed once, where it enters; a target of another site is
//! reached over the link and delivered there. Every acknowledged event must
//! reach exactly the targets its rule names, at least once, bytes intact,
//! also when leaders of the sending or the receiving site are killed.
//!
//! Long version (more kills, longer traffic and partition):
//! `STRAIT_CHAOS_SCALE=10 cargo test -p strait-chaos-tests --test federation -- --test-threads 1`.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use strait_chaos_tests::{
    Behavior, Ledger, LocalCluster, ProducerOptions, Receiver, bounded, check_conservation,
    http_target, produce, retry, stop_producers,
};

const BUS: &str = "default";

/// `STRAIT_CHAOS_SCALE` (default 1): multiplies kill rounds, traffic and
/// partition durations (and the time limits).
fn scale() -> u32 {
    std::env::var("STRAIT_CHAOS_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

fn extra() -> Value {
    json!({"dispatch": {"checkpoint_interval_ms": 50}})
}

/// Check that `receiver` got exactly the acknowledged events whose id
/// starts with one of `prefixes`, intact, and nothing else.
async fn expect_exactly(
    receiver: &Receiver,
    ledger: &Ledger,
    prefixes: &[&str],
    what: &str,
) -> anyhow::Result<()> {
    let mut part = Ledger::new();
    for ev in ledger.all_sent() {
        if prefixes.iter().any(|p| ev.id.starts_with(p)) {
            part.record_sent(ev);
            if ledger.acked().contains(&ev.id) {
                part.record_acked(&ev.id);
            }
        }
    }
    anyhow::ensure!(!part.acked().is_empty(), "{what}: nothing was acknowledged");
    receiver
        .wait_for_ids(part.acked().iter(), Duration::from_secs(60))
        .await
        .with_context(|| format!("{what}: every acknowledged event must arrive"))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = receiver.events();
    if let Some(stray) = got
        .iter()
        .find(|e| !prefixes.iter().any(|p| e.id.starts_with(p)))
    {
        anyhow::bail!(
            "{what}: received {} which its rules do not send here",
            stray.id
        );
    }
    let report = check_conservation(&part, &got);
    eprintln!("{what}: {report}");
    report.ensure_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_sites_deliver_exactly_where_the_rules_say() -> anyhow::Result<()> {
    bounded(Duration::from_secs(150) * scale(), async {
        let sites = ["idc", "aliyun", "aws"];
        let c = LocalCluster::up(&[("idc", 1), ("aliyun", 1), ("aws", 1)], Some(extra())).await?;
        let recv_idc = Receiver::start(Behavior::Ok).await?;
        let recv_aliyun = Receiver::start(Behavior::Ok).await?;
        let recv_aws = Receiver::start(Behavior::Ok).await?;
        // Rules, per entry site:
        //   idc events    → the aliyun and aws targets
        //   aliyun events → the idc and aws targets
        //   aws events    → the idc target and its own aws target
        let plan: [(&str, Vec<(&str, &Receiver)>); 3] = [
            ("idc", vec![("aliyun", &recv_aliyun), ("aws", &recv_aws)]),
            ("aliyun", vec![("idc", &recv_idc), ("aws", &recv_aws)]),
            ("aws", vec![("idc", &recv_idc), ("aws", &recv_aws)]),
        ];
        let mut clients = Vec::new();
        for (site, targets) in &plan {
            let idx = *c.site_nodes(site).first().context("site node")?;
            wait_site_leader(&c, site).await?;
            let client = c.client_at(idx)?;
            let ts: Vec<Value> = targets
                .iter()
                .map(|(tsite, r)| {
                    let mut t = http_target(
                        &format!("to-{tsite}"),
                        &r.url(&format!("/{tsite}")),
                        retry(100_000, 20, 500),
                    );
                    t["site"] = json!(tsite);
                    t
                })
                .collect();
            let body = json!({"pattern": {"source": [format!("fed.{site}")]}, "targets": ts});
            client
                .put_rule(BUS, &format!("fan-out-{site}"), &body)
                .await?
                .expect_status(200, "PUT rule")?;
            clients.push(client);
        }
        // A target at a site without a link is refused, naming the field.
        let bad = json!({"pattern": {}, "targets": [{"id": "t", "type": "http", "endpoint": "http://127.0.0.1:1/", "site": "mars"}]});
        let r = clients[0].put_rule(BUS, "bad", &bad).await?;
        r.expect_status(400, "rule with an unknown site")?;
        anyhow::ensure!(r.text().contains("targets[0].site"), "{}", r.text());
        let ledger = Arc::new(Mutex::new(Ledger::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut producers = Vec::new();
        for (i, (site, client)) in sites.iter().zip(clients).enumerate() {
            let mut opts = ProducerOptions::new(BUS, &format!("fed.{site}"));
            opts.id_prefix = format!("{site}-");
            opts.seed = i as u64 + 11;
            opts.pause = Duration::from_millis(5);
            producers.push(tokio::spawn(produce(vec![client], opts, ledger.clone(), stop.clone())));
        }
        tokio::time::sleep(Duration::from_secs(4) * scale()).await;
        let ledger = stop_producers(&stop, producers, &ledger).await?;
        expect_exactly(&recv_idc, &ledger, &["aliyun-", "aws-"], "idc targets").await?;
        expect_exactly(&recv_aliyun, &ledger, &["idc-"], "aliyun targets").await?;
        expect_exactly(&recv_aws, &ledger, &["idc-", "aliyun-", "aws-"], "aws targets").await?;
        // The links report what they carried.
        let s = clients_status(&c, "idc").await?;
        let out: Vec<&Value> = s["links"]
            .as_array()
            .map(|l| l.iter().filter(|x| x["direction"] == json!("out")).collect())
            .unwrap_or_default();
        anyhow::ensure!(out.len() == 2, "idc should list links to aliyun and aws: {s}");
        for l in out {
            anyhow::ensure!(l["outboxDepth"] == json!(0) && l["acked"].as_u64() > Some(0), "{l}");
        }
        // aws delivered batches as soon as they were proposed there
        // (`federation.deliver_before_commit`, on by default).
        let aws = c.client_at(*c.site_nodes("aws").first().context("aws node")?)?;
        let metrics = aws.get_json("/metrics").await?.text();
        let early: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("strait_link_early_deliveries_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        anyhow::ensure!(
            early > 0.0,
            "aws delivered nothing before commit:\n{metrics}"
        );
        c.ensure_no_panic()
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_kills_in_sending_and_receiving_sites_lose_nothing() -> anyhow::Result<()> {
    bounded(Duration::from_secs(180) * scale(), async {
        let mut c = LocalCluster::up(&[("idc", 3), ("aws", 3)], Some(extra())).await?;
        let recv = Receiver::start(Behavior::Ok).await?;
        let idc_client = c.client_at(c.site_nodes("idc")[0])?;
        let mut t = http_target("far", &recv.url("/aws"), retry(100_000, 20, 500));
        t["site"] = json!("aws");
        // Wait for both sites to have leaders.
        wait_site_leader(&c, "idc").await?;
        wait_site_leader(&c, "aws").await?;
        idc_client
            .put_rule(
                BUS,
                "to-aws",
                &json!({"pattern": {"source": ["fed.kill"]}, "targets": [t]}),
            )
            .await?
            .expect_status(200, "PUT rule")?;
        let ledger = Arc::new(Mutex::new(Ledger::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = c
            .site_nodes("idc")
            .into_iter()
            .map(|i| c.client_at(i))
            .collect::<anyhow::Result<_>>()?;
        let mut opts = ProducerOptions::new(BUS, "fed.kill");
        opts.id_prefix = "k-".into();
        opts.drain = Duration::from_secs(30);
        let producer = tokio::spawn(produce(clients, opts, ledger.clone(), stop.clone()));
        for round in 0..4 * scale() {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let site = if round % 2 == 0 { "idc" } else { "aws" };
            let (idx, id) = wait_site_leader(&c, site).await?;
            kill_restart(&mut c, idx).await?;
            eprintln!("round {round}: killed the leader of {site} (node {id})");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ledger = stop_producers(&stop, vec![producer], &ledger).await?;
        expect_exactly(&recv, &ledger, &["k-"], "aws target").await?;
        c.ensure_no_panic()
    })
    .await
}

/// The index in `c.nodes` and id of the leader of `site`.
async fn wait_site_leader(c: &LocalCluster, site: &str) -> anyhow::Result<(usize, u64)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        for (i, n) in c.nodes.iter().enumerate() {
            if n.site != site {
                continue;
            }
            let client =
                strait_chaos_tests::NodeClient::new(&n.base_url(), Duration::from_secs(2))?;
            if let Ok(r) = client.get_json("/v1/cluster").await
                && let Some(v) = r.json()
                && v["role"] == json!("leader")
            {
                return Ok((i, n.id));
            }
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "site {site} has no leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn kill_restart(c: &mut LocalCluster, idx: usize) -> anyhow::Result<()> {
    c.kill_9_at(idx)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.restart_at(idx).await
}

async fn clients_status(c: &LocalCluster, site: &str) -> anyhow::Result<Value> {
    let (idx, _) = wait_site_leader(c, site).await?;
    let r = c.client_at(idx)?.get_json("/v1/cluster").await?;
    r.expect_status(200, "GET /v1/cluster")?;
    r.json().context("cluster status JSON")
}

/// Point `site`'s link to `remote` at `addr` (a proxy) in its config file.
fn relink(c: &LocalCluster, idx: usize, remote: &str, addr: &str) -> anyhow::Result<()> {
    let path = &c.nodes[idx].config;
    let mut cfg: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(path)?)?;
    let nodes = cfg["federation"]["links"][remote]
        .as_sequence_mut()
        .context("link list")?;
    for n in nodes.iter_mut() {
        n["raft_addr"] = addr.into();
    }
    std::fs::write(path, serde_yaml::to_string(&cfg)?)?;
    Ok(())
}

/// Cut one site off (its links through fault-injecting UDP proxies), keep
/// producing on both sides, heal: local delivery never stops, the links
/// show the growing backlog while cut, and everything arrives afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_wan_partition_only_delays_cross_site_delivery() -> anyhow::Result<()> {
    use strait_chaos_tests::udp_proxy::UdpProxy;
    bounded(Duration::from_secs(240) * scale(), async {
        // A small outbox bound: it fills during the cut, and deliveries for
        // the other site wait (retrying) while ingest and local delivery go on.
        let mut x = extra();
        x["federation"] = json!({"max_outbox": 300});
        let mut c = LocalCluster::up(&[("idc", 1), ("aws", 1)], Some(x)).await?;
        let idc = c.site_nodes("idc")[0];
        let aws = c.site_nodes("aws")[0];
        let any: std::net::SocketAddr = "127.0.0.1:0".parse()?;
        let to_aws = UdpProxy::start(any, c.nodes[aws].quic.parse()?).await?;
        let to_idc = UdpProxy::start(any, c.nodes[idc].quic.parse()?).await?;
        relink(&c, idc, "aws", &to_aws.local_addr().to_string())?;
        relink(&c, aws, "idc", &to_idc.local_addr().to_string())?;
        c.restart_at(idc).await?;
        c.restart_at(aws).await?;
        wait_site_leader(&c, "idc").await?;
        wait_site_leader(&c, "aws").await?;
        // Each site: a local target and a target at the other site.
        let local_idc = Receiver::start(Behavior::Ok).await?;
        let local_aws = Receiver::start(Behavior::Ok).await?;
        let cross_to_aws = Receiver::start(Behavior::Ok).await?;
        let cross_to_idc = Receiver::start(Behavior::Ok).await?;
        for (idx, here, there, local, cross) in [
            (idc, "idc", "aws", &local_idc, &cross_to_aws),
            (aws, "aws", "idc", &local_aws, &cross_to_idc),
        ] {
            let mut t_local = http_target("local", &local.url("/l"), retry(100_000, 20, 500));
            t_local["site"] = json!(here);
            let mut t_cross = http_target("cross", &cross.url("/c"), retry(100_000, 20, 500));
            t_cross["site"] = json!(there);
            c.client_at(idx)?
                .put_rule(BUS, &format!("both-{here}"), &json!({"pattern": {"source": [format!("wan.{here}")]}, "targets": [t_local, t_cross]}))
                .await?
                .expect_status(200, "PUT rule")?;
        }
        let ledger = Arc::new(Mutex::new(Ledger::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut producers = Vec::new();
        for (i, (idx, here)) in [(idc, "idc"), (aws, "aws")].into_iter().enumerate() {
            let mut opts = ProducerOptions::new(BUS, &format!("wan.{here}"));
            opts.id_prefix = format!("{here}-");
            opts.seed = 40 + i as u64;
            opts.pause = Duration::from_millis(10);
            producers.push(tokio::spawn(produce(vec![c.client_at(idx)?], opts, ledger.clone(), stop.clone())));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        to_aws.faults().partition();
        to_idc.faults().partition();
        let local_before = (local_idc.events().len(), local_aws.events().len());
        let cross_at_cut = cross_to_aws.events().len();
        tokio::time::sleep(Duration::from_secs(5) * scale()).await;
        let local_after = (local_idc.events().len(), local_aws.events().len());
        anyhow::ensure!(
            local_after.0 > local_before.0 + 20 && local_after.1 > local_before.1 + 20,
            "local delivery stalled during the partition: {local_before:?} -> {local_after:?}"
        );
        // The cut is visible: the link is down and its backlog and age grow.
        let status = clients_status(&c, "idc").await?;
        let link = status["links"]
            .as_array()
            .and_then(|l| l.iter().find(|x| x["remote"] == json!("aws") && x["direction"] == json!("out")))
            .cloned()
            .context("idc link to aws")?;
        eprintln!("link during the partition: {link}");
        anyhow::ensure!(link["outboxDepth"].as_u64() > Some(20), "no backlog shown: {link}");
        anyhow::ensure!(link["alarm"] == json!("full"), "a full outbox is not flagged: {link}");
        anyhow::ensure!(
            link["outboxDepth"].as_u64() <= Some(300 + 512),
            "the outbox bound (300 + deliveries in flight) was not kept: {link}"
        );
        anyhow::ensure!(link["oldestUndeliveredMs"].as_u64() > Some(1000), "age not shown: {link}");
        anyhow::ensure!(
            cross_to_aws.events().len() <= cross_at_cut + 600,
            "cross-site deliveries kept flowing through a partition?"
        );
        to_aws.faults().heal();
        to_idc.faults().heal();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ledger = stop_producers(&stop, producers, &ledger).await?;
        expect_exactly(&local_idc, &ledger, &["idc-"], "idc local").await?;
        expect_exactly(&local_aws, &ledger, &["aws-"], "aws local").await?;
        expect_exactly(&cross_to_aws, &ledger, &["idc-"], "idc → aws").await?;
        expect_exactly(&cross_to_idc, &ledger, &["aws-"], "aws → idc").await?;
        c.ensure_no_panic()
    })
    .await
}

/// Change a rule (its pattern) through one site while events enter at two
/// sites and go to a target at one of them: the change is in force at both
/// sites within seconds; every delivered event was matched by the old or
/// the new version; nothing matched by neither arrives; both versions take
/// effect.
#[tokio::test(flavor = "multi_thread")]
async fn a_rule_change_during_cross_site_traffic_delivers_nothing_unmatched() -> anyhow::Result<()>
{
    bounded(Duration::from_secs(120), async {
        let mut c = LocalCluster::up(&[("idc", 1), ("aws", 1)], Some(extra())).await?;
        let idc = c.site_nodes("idc")[0];
        let aws = c.site_nodes("aws")[0];
        wait_site_leader(&c, "idc").await?;
        wait_site_leader(&c, "aws").await?;
        let recv = Receiver::start(Behavior::Ok).await?;
        let clients = [c.client_at(idc)?, c.client_at(aws)?];
        let rule = |ty: &str| {
            let mut t = http_target("far", &recv.url("/chg"), retry(100_000, 20, 500));
            t["site"] = json!("aws");
            json!({"pattern": {"source": ["chg"], "type": [ty]}, "targets": [t]})
        };
        // Created at idc; the shared rule runs at both sites.
        clients[0].put_rule(BUS, "chg", &rule("a")).await?.expect_status(200, "PUT v1")?;
        wait_config_everywhere(&mut c).await?;
        let types = ["a", "b", "c"];
        let mut before_a = Vec::new();
        let mut after_b = Vec::new();
        for i in 0..600usize {
            if i == 300 {
                // Changed through the other site.
                let t0 = std::time::Instant::now();
                clients[1].put_rule(BUS, "chg", &rule("b")).await?.expect_status(200, "PUT v2")?;
                let version = wait_config_everywhere(&mut c).await?;
                let took = t0.elapsed();
                eprintln!("version {version} in force at both sites {} ms after the PUT", took.as_millis());
                anyhow::ensure!(took < Duration::from_secs(5), "the change took {took:?} to reach every site");
            }
            let ty = types[i % 3];
            let id = format!("chg-{i:04}-{ty}");
            let ev = json!({"specversion": "1.0", "id": id, "source": "chg", "type": ty, "data": {"i": i}});
            clients[i % 2].post_structured(BUS, &ev).await?.expect_status(200, "post")?;
            if ty == "b" && i > 300 {
                after_b.push(id);
            } else if ty == "a" && i < 300 {
                before_a.push(id);
            }
        }
        recv.wait_for_ids(after_b.iter(), Duration::from_secs(60))
            .await
            .context("events matched by the new version must arrive, from both sites")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = recv.events();
        if let Some(bad) = got.iter().find(|e| e.id.ends_with("-c")) {
            anyhow::bail!("{} was delivered though neither rule version matches it", bad.id);
        }
        let a_count = got.iter().filter(|e| e.id.ends_with("-a")).count();
        anyhow::ensure!(a_count > 0, "the old version never took effect");
        eprintln!(
            "delivered {} events: {a_count} of {} type-a events sent before the change, all {} type-b events sent after it",
            got.len(),
            before_a.len(),
            after_b.len()
        );
        c.ensure_no_panic()
    })
    .await
}

/// The `control` part of a live node's `/v1/cluster`.
async fn control_status(c: &LocalCluster, idx: usize) -> anyhow::Result<Value> {
    let r = c.client_at(idx)?.get_json("/v1/cluster").await?;
    r.expect_status(200, "GET /v1/cluster")?;
    let v = r.json().context("cluster status JSON")?;
    anyhow::ensure!(v["control"].is_object(), "no control group in {v}");
    Ok(v["control"].clone())
}

/// Wait until every live node's site runs the control group's newest
/// version (as the most advanced node knows it); returns that version.
async fn wait_config_everywhere(c: &mut LocalCluster) -> anyhow::Result<u64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut seen = Vec::new();
        let live: Vec<usize> = (0..c.nodes.len())
            .filter(|i| c.nodes[*i].is_running())
            .collect();
        for i in live {
            if let Ok(s) = control_status(c, i).await {
                seen.push((
                    s["version"].as_u64().unwrap_or(0),
                    s["appliedVersion"].as_u64().unwrap_or(0),
                ));
            } else {
                seen.push((0, 0));
            }
        }
        let newest = seen.iter().map(|s| s.0).max().unwrap_or(0);
        if newest > 0 && seen.iter().all(|s| s.1 >= newest) {
            return Ok(newest);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the shared configuration did not reach every node: (version, applied) per node {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The shared configuration: a rule written at one site is in force at
/// every node of every site (events entering anywhere reach its target);
/// with the control group's leader killed, configuration changes go on
/// through the other voters, and the restarted node catches up.
#[tokio::test(flavor = "multi_thread")]
async fn shared_rules_reach_every_site_and_survive_a_control_leader_kill() -> anyhow::Result<()> {
    bounded(Duration::from_secs(180), async {
        let mut c =
            LocalCluster::up(&[("idc", 3), ("aws", 1), ("aliyun", 1)], Some(extra())).await?;
        for s in ["idc", "aws", "aliyun"] {
            wait_site_leader(&c, s).await?;
        }
        let recv = Receiver::start(Behavior::Ok).await?;
        let rule = |source: &str| {
            let mut t = http_target("to-idc", &recv.url("/idc"), retry(100_000, 20, 500));
            t["site"] = json!("idc");
            json!({"pattern": {"source": [source]}, "targets": [t]})
        };
        let aliyun = c.site_nodes("aliyun")[0];
        let aws = c.site_nodes("aws")[0];
        let idc = c.site_nodes("idc");
        c.client_at(aliyun)?
            .put_rule(BUS, "shared", &rule("ctl"))
            .await?
            .expect_status(200, "PUT rule at aliyun")?;
        let v1 = wait_config_everywhere(&mut c).await?;
        for i in 0..c.nodes.len() {
            let r = c
                .client_at(i)?
                .get_json("/v1/buses/default/rules/shared")
                .await?;
            r.expect_status(
                200,
                &format!("the shared rule at {}-{}", c.nodes[i].site, c.nodes[i].id),
            )?;
            anyhow::ensure!(r.text().contains("\"ctl\""), "{}", r.text());
        }
        // Events entering at aws and at an idc follower go to idc's target.
        let mut ids = Vec::new();
        for (k, idx) in [aws, idc[1], aliyun].into_iter().enumerate() {
            for n in 0..10 {
                let id = format!("ctl-{k}-{n}");
                let ev = json!({"specversion": "1.0", "id": id, "source": "ctl", "type": "t"});
                c.client_at(idx)?
                    .post_structured(BUS, &ev)
                    .await?
                    .expect_status(200, "post")?;
                ids.push(id);
            }
        }
        recv.wait_for_ids(ids.iter(), Duration::from_secs(30))
            .await
            .context("events entering at every site must reach the shared rule's target")?;
        // Kill the control group's leader.
        let leader = control_status(&c, aliyun).await?["leader"].clone();
        let killed = (0..c.nodes.len())
            .find(|i| {
                json!(c.nodes[*i].site) == leader["site"] && json!(c.nodes[*i].id) == leader["id"]
            })
            .with_context(|| format!("control leader {leader} is not a node of the cluster"))?;
        eprintln!("killing the control leader {leader} (configuration version {v1})");
        c.kill_9_at(killed)?;
        // A change through a surviving node of another site.
        let via = [aliyun, aws, idc[1]]
            .into_iter()
            .find(|i| *i != killed && c.nodes[*i].site != c.nodes[killed].site)
            .context("a surviving node")?;
        let t0 = std::time::Instant::now();
        c.client_at(via)?
            .put_rule(BUS, "shared", &rule("ctl2"))
            .await?
            .expect_status(200, "PUT rule with the control leader down")?;
        let v2 = wait_config_everywhere(&mut c).await?;
        eprintln!(
            "version {v2} in force at every live node {} ms after the PUT (control leader killed)",
            t0.elapsed().as_millis()
        );
        anyhow::ensure!(v2 > v1, "the version did not move: {v1} -> {v2}");
        let post_at = [idc[1], idc[2]]
            .into_iter()
            .find(|i| *i != killed)
            .context("a live idc node")?;
        for (id, source) in [("after-old", "ctl"), ("after-new", "ctl2")] {
            let ev = json!({"specversion": "1.0", "id": id, "source": source, "type": "t"});
            c.client_at(post_at)?
                .post_structured(BUS, &ev)
                .await?
                .expect_status(200, "post")?;
        }
        recv.wait_for_ids(["after-new".to_string()].iter(), Duration::from_secs(30))
            .await
            .context("the new version routes")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        anyhow::ensure!(
            !recv.events().iter().any(|e| e.id == "after-old"),
            "an event matched only by the replaced version was delivered"
        );
        // The killed node comes back and catches up.
        c.restart_at(killed).await?;
        let v3 = wait_config_everywhere(&mut c).await?;
        anyhow::ensure!(v3 >= v2, "{v3} < {v2}");
        let r = c
            .client_at(killed)?
            .get_json("/v1/buses/default/rules/shared")
            .await?;
        r.expect_status(200, "the rule at the restarted node")?;
        anyhow::ensure!(
            r.text().contains("\"ctl2\""),
            "restarted node runs an old version: {}",
            r.text()
        );
        c.ensure_no_panic()
    })
    .await
}

/// Shared sources: an SQS source written at idc naming site aws is listed by
/// every node, polled only by aws's leader (its status says `running` there
/// and nowhere else), and its messages reach a receiver through a shared
/// rule (routed at aws, delivered by idc over the link). moto is the SQS.
#[tokio::test(flavor = "multi_thread")]
async fn a_shared_source_runs_only_at_the_site_it_names() -> anyhow::Result<()> {
    bounded(Duration::from_secs(120), async {
        let moto = strait_chaos_tests::Moto::start().await?;
        let mut extra = extra();
        extra["aws"] = json!({"credentials": {"main": {"access_key_id": "testing", "secret_access_key": "testing"}}});
        let mut c = LocalCluster::up(&[("idc", 1), ("aws", 1)], Some(extra)).await?;
        let idc = c.site_nodes("idc")[0];
        let aws = c.site_nodes("aws")[0];
        wait_site_leader(&c, "idc").await?;
        wait_site_leader(&c, "aws").await?;
        let recv = Receiver::start(Behavior::Ok).await?;
        let queue = moto.create_queue("shared-source").await?;
        let clients = [c.client_at(idc)?, c.client_at(aws)?];
        // The rule's target has no site: it gets idc's, where it was written.
        let rule = json!({"pattern": {"source": ["from-sqs"]},
            "targets": [http_target("sqs-recv", &recv.url("/sqs"), retry(100_000, 20, 500))]});
        clients[0].put_rule(BUS, "from-sqs", &rule).await?.expect_status(200, "PUT rule")?;
        let source = json!({
            "type": "aws_sqs", "site": "aws", "bus": BUS, "queueUrl": queue,
            "credential": "main", "region": "us-east-1", "endpoint": moto.url(),
            "waitTimeSecs": 1, "visibilityTimeoutSecs": 30, "maxMessages": 10
        });
        let r = clients[0]
            .send_json(reqwest::Method::PUT, "/v1/sources/orders-q", &source)
            .await?;
        r.expect_status(200, "PUT source at idc")?;
        wait_config_everywhere(&mut c).await?;
        for (i, client) in clients.iter().enumerate() {
            let list = client.get_json("/v1/sources").await?;
            list.expect_status(200, "GET /v1/sources")?;
            let v = list.json().context("sources JSON")?;
            let site = &v["sources"][0]["site"];
            anyhow::ensure!(
                v["sources"].as_array().map(Vec::len) == Some(1)
                    && v["sources"][0]["name"] == json!("orders-q")
                    && *site == json!("aws"),
                "node {i} lists {v}"
            );
        }
        let status = async |client: &strait_chaos_tests::NodeClient| -> anyhow::Result<Value> {
            let r = client.get_json("/v1/sources/orders-q").await?;
            r.expect_status(200, "GET source")?;
            Ok(r.json().context("source JSON")?["status"].clone())
        };
        strait_chaos_tests::wait_for(
            "the source to run at aws",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || async {
                status(&clients[1])
                    .await
                    .ok()
                    .filter(|s| s["running"] == json!(true))
            },
        )
        .await?;
        let ids: Vec<String> = (0..5).map(|i| format!("sqs-{i}")).collect();
        for id in &ids {
            let ce = json!({"specversion": "1.0", "id": id, "source": "from-sqs", "type": "t", "data": {"id": id}});
            moto.send(&queue, &ce.to_string()).await?;
        }
        recv.wait_for_ids(ids.iter(), Duration::from_secs(20))
            .await
            .context("SQS messages must reach the receiver through the shared rule")?;
        let at_aws = status(&clients[1]).await?;
        let at_idc = status(&clients[0]).await?;
        eprintln!("source status at aws {at_aws}, at idc {at_idc}");
        anyhow::ensure!(
            at_aws["running"] == json!(true) && at_aws["received"].as_u64() >= Some(5),
            "aws runs the source: {at_aws}"
        );
        anyhow::ensure!(
            at_idc["running"] == json!(false) && at_idc["received"] == json!(0),
            "idc must not poll it: {at_idc}"
        );
        anyhow::ensure!(moto.queue_counts(&queue).await? == (0, 0), "the queue is drained");
        c.ensure_no_panic()
    })
    .await
}
