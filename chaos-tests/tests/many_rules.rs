//! The bus feed: many rules on one bus each get exactly their events, and a
//! target that falls far behind the feed's in-memory window catches up
//! from storage without holding up the others.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use strait_chaos_tests::{Behavior, NodeOptions, Receiver, StraitProcess, http_target, retry};

fn event(id: &str, kind: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/many", "type": kind, "data": {"id": id}})
}

async fn post_all(node: &StraitProcess, events: &[Value]) -> anyhow::Result<()> {
    for chunk in events.chunks(500) {
        node.post_batch("default", chunk)
            .await?
            .expect_status(200, "POST batch")?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn forty_rules_each_get_exactly_their_events() -> anyhow::Result<()> {
    let node = StraitProcess::start(NodeOptions::dev()).await?;
    let receiver = Receiver::start(Behavior::Ok).await?;
    for r in 0..40 {
        node.put_rule(
            "default",
            &format!("r{r}"),
            &json!({
                "pattern": {"type": [format!("kind.{r}")]},
                "targets": [http_target("t", &receiver.url(&format!("/r{r}")), retry(3, 50, 200))],
            }),
        )
        .await?
        .expect_status(200, "PUT rule")?;
    }
    // A wildcard rule over all of them, and one that matches nothing.
    node.put_rule(
        "default",
        "all",
        &json!({
            "pattern": {"type": [{"prefix": "kind."}]},
            "targets": [http_target("t", &receiver.url("/all"), retry(3, 50, 200))],
        }),
    )
    .await?
    .expect_status(200, "PUT rule")?;
    let events: Vec<Value> = (0..800)
        .map(|i| event(&format!("e{i}"), &format!("kind.{}", i % 40)))
        .collect();
    post_all(&node, &events).await?;
    receiver
        .wait_until("every delivery", Duration::from_secs(60), |reqs| {
            reqs.len() >= 1600
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reqs = receiver.requests();
    assert_eq!(
        reqs.len(),
        1600,
        "no event delivered twice or to a wrong rule"
    );
    for r in 0..40 {
        let got: BTreeSet<String> = reqs
            .iter()
            .filter(|q| q.path == format!("/r{r}"))
            .filter_map(|q| q.header("ce-id").map(str::to_string))
            .collect();
        let want: BTreeSet<String> = (0..800)
            .filter(|i| i % 40 == r)
            .map(|i| format!("e{i}"))
            .collect();
        assert_eq!(got, want, "rule r{r}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_behind_the_feed_window_catches_up_from_storage() -> anyhow::Result<()> {
    let node = StraitProcess::start(NodeOptions::dev()).await?;
    let fast = Receiver::start(Behavior::Ok).await?;
    let slow = Receiver::start(Behavior::AlwaysFail).await?;
    node.put_rule(
        "default",
        "fast",
        &json!({"pattern": {"source": ["/many"]},
                "targets": [http_target("t", &fast.url("/fast"), retry(3, 50, 200))]}),
    )
    .await?
    .expect_status(200, "PUT rule")?;
    let mut slow_target = http_target("t", &slow.url("/slow"), retry(1000, 200, 400));
    slow_target["concurrency"] = json!(1);
    node.put_rule(
        "default",
        "slow",
        &json!({"pattern": {"source": ["/many"]}, "targets": [slow_target]}),
    )
    .await?
    .expect_status(200, "PUT rule")?;
    // More events than the feed keeps in memory (8192 per bus).
    let events: Vec<Value> = (0..9000).map(|i| event(&format!("w{i}"), "k")).collect();
    post_all(&node, &events).await?;
    let ids: BTreeSet<String> = (0..9000).map(|i| format!("w{i}")).collect();
    // Count 2xx answers (cheap per request); check the ids once at the end.
    let delivered = |reqs: &[strait_chaos_tests::ReceivedRequest]| {
        reqs.iter()
            .filter(|r| (200..300).contains(&r.status))
            .count()
    };
    fast.wait_until("9000 deliveries", Duration::from_secs(120), |r| {
        delivered(r) >= 9000
    })
    .await?;
    assert_eq!(fast.delivered_ids(), ids, "fast target");
    // The slow target is stuck on its first event, far behind the feed's
    // window. Widen it (a rule update restarts its worker from its cursor)
    // and let it through: it catches up from storage.
    let mut wide = http_target("t", &slow.url("/slow"), retry(1000, 200, 400));
    wide["concurrency"] = json!(64);
    node.put_rule(
        "default",
        "slow",
        &json!({"pattern": {"source": ["/many"]}, "targets": [wide]}),
    )
    .await?
    .expect_status(200, "PUT rule")?;
    slow.set_behavior(Behavior::Ok);
    slow.wait_until("9000 deliveries", Duration::from_secs(120), |r| {
        delivered(r) >= 9000
    })
    .await?;
    assert_eq!(slow.delivered_ids(), ids, "slow target");
    Ok(())
}
