//! A replay at one site whose rule targets another: two linked sites
//! (idc: 1 node, aws: 1 node, real processes, QUIC links), a rule shared
//! through the control group with one target delivered by aws. Events
//! archived at idc are replayed there; the replayed deliveries cross the
//! link like live ones and aws delivers them, marked with `replayname`.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::{Value, json};
use strait_chaos_tests::{Behavior, LocalCluster, Receiver, bounded, http_target, retry, wait_for};

const BUS: &str = "default";
const EVENTS: usize = 40;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn event(id: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/idc/orders", "type": "replay.cross", "data": {"id": id}})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_at_idc_is_delivered_at_aws_through_the_link() -> anyhow::Result<()> {
    bounded(Duration::from_secs(180), async {
        let extra = json!({"dispatch": {"checkpoint_interval_ms": 50}});
        let c = LocalCluster::up(&[("idc", 1), ("aws", 1)], Some(extra)).await?;
        let receiver = Receiver::start(Behavior::Ok).await?;
        let idc = c.site_leader("idc").await?;
        let aws = c.site_leader("aws").await?;
        let idc_client = c.client_at(idc)?;

        let mut at_aws = http_target("at-aws", &receiver.url("/aws"), retry(50, 20, 200));
        at_aws["site"] = json!("aws");
        idc_client
            .put_rule(
                BUS,
                "cross",
                &json!({"pattern": {"type": ["replay.cross"]}, "targets": [at_aws]}),
            )
            .await?
            .expect_status(200, "PUT rule")?;
        // The rule is shared: wait until aws runs it too.
        let aws_client = c.client_at(aws)?;
        wait_for(
            "aws to know the rule",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || async {
                let r = aws_client
                    .get_json(&format!("/v1/buses/{BUS}/rules/cross"))
                    .await
                    .ok()?;
                (r.status == 200).then_some(())
            },
        )
        .await?;
        idc_client
            .send_json(
                Method::PUT,
                &format!("/v1/buses/{BUS}/archives/orders"),
                &json!({"pattern": {"source": ["/idc/orders"]}}),
            )
            .await?
            .expect_status(200, "PUT archive")?;

        let start = now_ms();
        let batch: Vec<Value> = (0..EVENTS).map(|i| event(&format!("x-{i:03}"))).collect();
        idc_client
            .post_batch(BUS, &batch)
            .await?
            .expect_status(200, "POST batch")?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let end = now_ms();
        tokio::time::sleep(Duration::from_millis(50)).await;

        // Live: every event delivered once by aws.
        wait_for(
            "the live deliveries at aws",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || async { (receiver.count() >= EVENTS).then_some(()) },
        )
        .await?;
        let archived = wait_for(
            "the archive at idc to hold the events",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || async {
                let a = idc_client
                    .get_json(&format!("/v1/buses/{BUS}/archives/orders"))
                    .await
                    .ok()?
                    .json()?;
                (a["eventCount"].as_u64() == Some(EVENTS as u64)).then_some(a)
            },
        )
        .await?;
        eprintln!("archive: {archived}");

        idc_client
            .send_json(
                Method::POST,
                "/v1/replays/cross-rp",
                &json!({"bus": BUS, "archive": "orders", "start": start, "end": end, "rules": ["cross"]}),
            )
            .await?
            .expect_status(201, "POST replay")?;
        let done = wait_for(
            "the replay to complete at idc",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || async {
                let r = idc_client
                    .get_json("/v1/replays/cross-rp")
                    .await
                    .ok()?
                    .json()?;
                (r["state"] == "COMPLETED").then_some(r)
            },
        )
        .await?;
        anyhow::ensure!(
            done["eventsReplayed"].as_u64() == Some(EVENTS as u64),
            "replayed: {done}"
        );

        // The replayed deliveries reach the receiver through aws, marked.
        let want: BTreeSet<String> = (0..EVENTS).map(|i| format!("x-{i:03}")).collect();
        wait_for(
            "every replayed event delivered by aws",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || async {
                let got: BTreeSet<String> = receiver
                    .events()
                    .into_iter()
                    .filter(|e| e.attr("replayname") == Some("cross-rp"))
                    .map(|e| e.id)
                    .collect();
                (got == want).then_some(())
            },
        )
        .await?;
        // Every arrival (live and replayed) came to the path of the target
        // aws delivers: none was delivered at idc.
        for r in receiver.requests() {
            anyhow::ensure!(r.path == "/aws", "a delivery to {}", r.path);
        }
        // aws counts the replayed deliveries as deliveries it made for idc.
        let status = aws_client
            .get_json(&format!("/v1/buses/{BUS}/rules/cross"))
            .await?;
        eprintln!("rule status at aws: {:?}", status.json());
        c.ensure_no_panic()?;
        Ok(())
    })
    .await
}
