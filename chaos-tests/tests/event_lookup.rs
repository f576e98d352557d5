//! Event lookup across sites (`GET /v1/buses/{bus}/events/{id}`) and rule
//! status per delivering site (`GET /v1/buses/{bus}/rules/{rule}`), on
//! three linked sites (idc: 3 nodes, aliyun: 1, aws: 1) started once:
//!
//! - events entering at idc and at aliyun, with targets at all three sites
//!   (one of them, at aws, always failing: its events are retried, then
//!   dead-lettered);
//! - looked up at a node of each site, an event shows the same deliveries
//!   (delivered with one attempt, retrying, then dead-lettered with every
//!   attempt), whichever site it entered at;
//! - the rule status at an idc follower shows the aws target's counters
//!   from aws;
//! - with aws stopped, the answer still comes, with the rest, and names
//!   `aws` in `unreachableSites`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};
use strait_chaos_tests::{
    Behavior, LocalCluster, NodeClient, Receiver, bounded, http_target, retry, wait_for,
};

const BUS: &str = "default";

/// Attempts of the failing target before its events are dead-lettered.
const FLAKY_ATTEMPTS: usize = 3;

fn target(id: &str, site: &str, url: &str) -> Value {
    let mut t = http_target(id, url, retry(100, 50, 200));
    t["site"] = json!(site);
    t
}

fn event(id: &str, source: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": source, "type": "lookup.test", "data": {"n": id}})
}

async fn lookup(client: &NodeClient, id: &str, source: &str) -> anyhow::Result<(u16, Value)> {
    let r = client
        .get_json(&format!("/v1/buses/{BUS}/events/{id}?source={source}"))
        .await?;
    Ok((r.status, r.json().unwrap_or(Value::Null)))
}

/// The deliveries of a lookup answer, sorted, as comparable JSON.
fn deliveries(v: &Value) -> Vec<Value> {
    let mut d: Vec<Value> = v["deliveries"].as_array().cloned().unwrap_or_default();
    d.sort_by_key(|x| {
        (
            x["site"].as_str().unwrap_or("").to_string(),
            x["rule"].as_str().unwrap_or("").to_string(),
            x["target"].as_str().unwrap_or("").to_string(),
        )
    });
    d
}

fn delivery<'a>(v: &'a Value, site: &str, target: &str) -> Option<&'a Value> {
    v["deliveries"]
        .as_array()?
        .iter()
        .find(|d| d["site"] == json!(site) && d["target"] == json!(target))
}

fn attempts(d: &Value) -> Vec<(String, Option<u64>)> {
    d["attempts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    (
                        x["outcome"].as_str().unwrap_or("").to_string(),
                        x["httpStatus"].as_u64(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every delivery of the answer is final (delivered / dead-lettered).
fn all_final(v: &Value) -> bool {
    deliveries(v).iter().all(|d| {
        matches!(
            d["status"].as_str(),
            Some("delivered" | "dead-lettered" | "dropped")
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn lookups_and_rule_status_span_the_sites() -> anyhow::Result<()> {
    bounded(Duration::from_secs(240), async {
        let extra = json!({"dispatch": {"checkpoint_interval_ms": 50}});
        let mut c = LocalCluster::up(&[("idc", 3), ("aliyun", 1), ("aws", 1)], Some(extra)).await?;
        let recv = Receiver::start(Behavior::Ok).await?;
        let broken = Receiver::start(Behavior::AlwaysFail).await?;
        let dlq = Receiver::start(Behavior::Ok).await?;
        let idc_leader = c.site_leader("idc").await?;
        let aliyun = c.site_leader("aliyun").await?;
        let aws = c.site_leader("aws").await?;
        let idc_follower = *c
            .site_nodes("idc")
            .iter()
            .find(|i| **i != idc_leader)
            .context("an idc follower")?;

        // idc events: idc, aliyun and aws targets, and a failing aws target
        // whose retries take a few seconds before it dead-letters.
        let mut flaky = http_target(
            "flaky",
            &broken.url("/flaky"),
            retry(FLAKY_ATTEMPTS as u32, 1200, 1200),
        );
        flaky["site"] = json!("aws");
        flaky["deadLetter"] = json!({"type": "http", "endpoint": dlq.url("/dlq")});
        c.client_at(idc_leader)?
            .put_rule(
                BUS,
                "from-idc",
                &json!({
                    "pattern": {"source": ["lookup.idc"]},
                    "targets": [
                        target("at-idc", "idc", &recv.url("/idc")),
                        target("at-aliyun", "aliyun", &recv.url("/aliyun")),
                        target("at-aws", "aws", &recv.url("/aws")),
                        flaky,
                    ],
                }),
            )
            .await?
            .expect_status(200, "PUT rule from-idc")?;
        // aliyun events: targets at idc, aliyun and aws.
        c.client_at(aliyun)?
            .put_rule(
                BUS,
                "from-aliyun",
                &json!({
                    "pattern": {"source": ["lookup.aliyun"]},
                    "targets": [
                        target("at-idc", "idc", &recv.url("/idc")),
                        target("at-aliyun", "aliyun", &recv.url("/aliyun")),
                        target("at-aws", "aws", &recv.url("/aws")),
                    ],
                }),
            )
            .await?
            .expect_status(200, "PUT rule from-aliyun")?;

        let idc_events: Vec<String> = (0..3).map(|i| format!("idc-{i}")).collect();
        let aliyun_events: Vec<String> = (0..3).map(|i| format!("aliyun-{i}")).collect();
        for id in &idc_events {
            c.client_at(idc_follower)?
                .post_structured(BUS, &event(id, "lookup.idc"))
                .await?
                .expect_status(200, "POST at idc")?;
        }
        for id in &aliyun_events {
            c.client_at(aliyun)?
                .post_structured(BUS, &event(id, "lookup.aliyun"))
                .await?
                .expect_status(200, "POST at aliyun")?;
        }

        // While the failing target retries, its delivery shows `retrying`
        // with its failed attempts, asked at idc (the origin) about a
        // delivery aws makes.
        let at_idc = c.client_at(idc_follower)?;
        let first = idc_events[0].clone();
        let retrying = wait_for(
            "the failing delivery to show retrying",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || async {
                let (status, v) = lookup(&at_idc, &first, "lookup.idc").await.ok()?;
                let d = delivery(&v, "aws", "flaky")?;
                (status == 200 && d["status"] == json!("retrying")).then(|| d.clone())
            },
        )
        .await?;
        let a = attempts(&retrying);
        anyhow::ensure!(
            !a.is_empty() && a.iter().all(|(o, s)| o == "failed" && *s == Some(500)),
            "retrying delivery: {retrying}"
        );

        // Once every delivery is final, a node of each site gives the same
        // deliveries for each event.
        let settle = Duration::from_secs(60);
        for (id, source, origin) in idc_events
            .iter()
            .map(|i| (i, "lookup.idc", "idc"))
            .chain(aliyun_events.iter().map(|i| (i, "lookup.aliyun", "aliyun")))
        {
            let done = wait_for(
                &format!("every delivery of {id} to be final"),
                settle,
                Duration::from_millis(200),
                || async {
                    let (status, v) = lookup(&at_idc, id, source).await.ok()?;
                    (status == 200 && all_final(&v)).then_some(v)
                },
            )
            .await?;
            if id.ends_with("-0") {
                eprintln!("{id} at an idc follower: {done:#}");
            }
            anyhow::ensure!(
                done["site"] == json!(origin),
                "{id} entered at {origin}: {done}"
            );
            anyhow::ensure!(
                done["unreachableSites"]
                    .as_array()
                    .is_some_and(Vec::is_empty),
                "all sites are up: {done}"
            );
            let reference = deliveries(&done);
            let sites: Vec<&str> = reference
                .iter()
                .filter_map(|d| d["site"].as_str())
                .collect();
            anyhow::ensure!(
                ["idc", "aliyun", "aws"].iter().all(|s| sites.contains(s)),
                "{id}: deliveries at every site: {done}"
            );
            for d in &reference {
                let t = d["target"].as_str().unwrap_or("");
                if t == "flaky" {
                    anyhow::ensure!(d["status"] == json!("dead-lettered"), "{id}: {d}");
                    let a = attempts(d);
                    anyhow::ensure!(
                        a.len() == FLAKY_ATTEMPTS && a.iter().all(|(o, _)| o == "failed"),
                        "{id}: {FLAKY_ATTEMPTS} failed attempts: {d}"
                    );
                } else {
                    anyhow::ensure!(d["status"] == json!("delivered"), "{id}: {d}");
                    let a = attempts(d);
                    anyhow::ensure!(
                        a.len() == 1 && a[0].0 == "delivered",
                        "{id}: one successful attempt: {d}"
                    );
                }
            }
            for (name, idx) in [("idc leader", idc_leader), ("aliyun", aliyun), ("aws", aws)] {
                let (status, v) = lookup(&c.client_at(idx)?, id, source).await?;
                anyhow::ensure!(status == 200, "{id} at {name}: {status} {v}");
                anyhow::ensure!(
                    deliveries(&v) == reference,
                    "{id}: the {name} node answers otherwise:\n{v}\nthan idc:\n{done}"
                );
                anyhow::ensure!(v["site"] == json!(origin), "{id} at {name}: {v}");
            }
        }
        // The dead letters went out.
        dlq.wait_until("the dead letters", Duration::from_secs(10), |r| {
            r.len() >= idc_events.len()
        })
        .await?;

        // An event no site has: 404, naming it.
        let (status, v) = lookup(&at_idc, "no-such-event", "lookup.idc").await?;
        anyhow::ensure!(status == 404, "unknown event: {status} {v}");
        anyhow::ensure!(v.to_string().contains("no-such-event"), "{v}");

        // Rule status at an idc follower: each target's progress from the
        // site that delivers it.
        let rule = wait_for(
            "the aws target's counters at an idc follower",
            Duration::from_secs(20),
            Duration::from_millis(200),
            || async {
                let r = at_idc.get_rule(BUS, "from-idc").await.ok()?;
                let v = r.json()?;
                let t = &v["status"]["targets"];
                (t["at-aws"]["delivered"].as_u64() >= Some(idc_events.len() as u64)
                    && t["flaky"]["deadLettered"].as_u64() >= Some(idc_events.len() as u64))
                .then_some(v)
            },
        )
        .await?;
        eprintln!("rule status at an idc follower: {:#}", rule["status"]);
        let t = &rule["status"]["targets"];
        for (id, site) in [
            ("at-idc", "idc"),
            ("at-aliyun", "aliyun"),
            ("at-aws", "aws"),
            ("flaky", "aws"),
        ] {
            anyhow::ensure!(t[id]["site"] == json!(site), "{id} at {site}: {rule}");
        }
        anyhow::ensure!(
            t["flaky"]["failedAttempts"].as_u64()
                >= Some((FLAKY_ATTEMPTS * idc_events.len()) as u64),
            "{rule}"
        );
        anyhow::ensure!(
            t["at-aliyun"]["delivered"].as_u64() >= Some(idc_events.len() as u64),
            "{rule}"
        );
        // What idc counted for a remote target is its hand-over to the link.
        anyhow::ensure!(
            t["at-aws"]["handedOver"].as_u64() >= Some(idc_events.len() as u64),
            "{rule}"
        );

        // Every node of every site shows a target's figures as the site
        // that delivers it counts them: the rules are shared (control
        // group), so the aws node answers for idc's rule too, and the idc
        // follower for aliyun's rule, whose idc target idc delivers for
        // aliyun's events.
        let counters = |v: &Value, id: &str| {
            let t = &v["status"]["targets"][id];
            (
                t["site"].clone(),
                t["delivered"].clone(),
                t["deadLettered"].clone(),
                t["failedAttempts"].clone(),
            )
        };
        let at_aws = c.client_at(aws)?;
        let same = wait_for(
            "the same rule status at aws as at an idc follower",
            Duration::from_secs(20),
            Duration::from_millis(200),
            || async {
                let a = at_idc.get_rule(BUS, "from-idc").await.ok()?.json()?;
                let b = at_aws.get_rule(BUS, "from-idc").await.ok()?.json()?;
                ["at-idc", "at-aliyun", "at-aws", "flaky"]
                    .iter()
                    .all(|id| counters(&a, id) == counters(&b, id))
                    .then_some(b)
            },
        )
        .await?;
        anyhow::ensure!(
            same["status"]["targets"]["at-aws"]["delivered"].as_u64()
                >= Some(idc_events.len() as u64),
            "{same}"
        );
        let from_aliyun = wait_for(
            "aliyun's rule status at an idc follower",
            Duration::from_secs(20),
            Duration::from_millis(200),
            || async {
                let v = at_idc.get_rule(BUS, "from-aliyun").await.ok()?.json()?;
                let t = &v["status"]["targets"];
                (t["at-idc"]["delivered"].as_u64() >= Some(aliyun_events.len() as u64)
                    && t["at-aws"]["delivered"].as_u64() >= Some(aliyun_events.len() as u64)
                    && t["at-aliyun"]["delivered"].as_u64() >= Some(aliyun_events.len() as u64))
                .then_some(v)
            },
        )
        .await?;
        anyhow::ensure!(
            from_aliyun["status"]["targets"]["at-idc"]["site"] == json!("idc"),
            "{from_aliyun}"
        );

        // aws stops: the lookup still answers, with the rest, naming aws.
        c.kill_9_at(aws)?;
        for (idx, name) in [(idc_follower, "idc follower"), (aliyun, "aliyun")] {
            for (id, source) in [
                (&idc_events[1], "lookup.idc"),
                (&aliyun_events[1], "lookup.aliyun"),
            ] {
                let t0 = Instant::now();
                let (status, v) = lookup(&c.client_at(idx)?, id, source).await?;
                let took = t0.elapsed();
                anyhow::ensure!(status == 200, "{id} at {name} with aws down: {status} {v}");
                anyhow::ensure!(
                    took < Duration::from_secs(8),
                    "{id} at {name} with aws down took {took:?}"
                );
                anyhow::ensure!(
                    v["unreachableSites"]
                        .as_array()
                        .is_some_and(|u| u.contains(&json!("aws"))),
                    "{id} at {name} must name aws: {v}"
                );
                let d = deliveries(&v);
                let at = |site: &str| d.iter().filter(|x| x["site"] == json!(site)).count();
                anyhow::ensure!(
                    at("idc") > 0 && at("aliyun") > 0,
                    "{id} at {name}: the other sites' deliveries are there: {v}"
                );
                for x in d.iter().filter(|x| x["site"] != json!("aws")) {
                    anyhow::ensure!(x["status"] == json!("delivered"), "{id} at {name}: {x}");
                }
                eprintln!("{id} at {name} with aws down: {took:?}");
            }
        }
        // An event found at no site that answered: 404, naming the site
        // that did not answer.
        let (status, v) = lookup(&at_idc, "no-such-event", "lookup.idc").await?;
        anyhow::ensure!(status == 404, "unknown event with aws down: {status} {v}");
        anyhow::ensure!(v.to_string().contains("aws"), "must name aws: {v}");
        // Rule status with aws down: still answers, aws's targets say so.
        let r = at_idc.get_rule(BUS, "from-idc").await?;
        r.expect_status(200, "rule status with aws down")?;
        let v = r.json().context("rule JSON")?;
        anyhow::ensure!(
            v["status"]["targets"]["at-idc"]["site"] == json!("idc"),
            "{v}"
        );
        anyhow::ensure!(
            v["status"]["unreachableSites"]
                .as_array()
                .is_some_and(|u| u.contains(&json!("aws"))),
            "{v}"
        );
        anyhow::ensure!(
            v["status"]["targets"]["at-aws"]["delivered"].is_null()
                && v["status"]["targets"]["at-aliyun"]["delivered"].as_u64()
                    >= Some(idc_events.len() as u64),
            "aws's figures are unknown, aliyun's are there: {v}"
        );
        c.ensure_no_panic()
    })
    .await
}
