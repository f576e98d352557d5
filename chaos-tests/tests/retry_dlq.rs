//! Retries, dead letters and target isolation against real HTTP receivers.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};
use strait_chaos_tests::conservation::difference;
use strait_chaos_tests::{
    Behavior, DeliveredEvent, NodeOptions, Payload, Receiver, SentEvent, StraitProcess, bounded,
    ensure_no_panic, entry_outcomes, http_target, retry,
};

const BUS: &str = "default";
const LIMIT: Duration = Duration::from_secs(60);

async fn node() -> anyhow::Result<StraitProcess> {
    StraitProcess::start(
        NodeOptions::dev().config(json!({"dispatch": {"checkpoint_interval_ms": 50}})),
    )
    .await
}

/// Post in structured mode and insist on `accepted`.
async fn post_accepted(node: &StraitProcess, bus: &str, ev: &SentEvent) -> anyhow::Result<()> {
    let reply = node.post_structured(bus, &ev.to_json()).await?;
    reply.expect_status(200, "posting a valid event")?;
    let outcomes = entry_outcomes(&reply);
    anyhow::ensure!(
        outcomes.len() == 1 && outcomes[0].1 == "accepted",
        "expected one accepted entry: {}",
        reply.text()
    );
    Ok(())
}

fn same_event(sent: &SentEvent, got: &DeliveredEvent) -> anyhow::Result<()> {
    anyhow::ensure!(
        got.id == sent.id,
        "delivered id {:?}, sent {:?}",
        got.id,
        sent.id
    );
    if let Some(why) = difference(sent, got) {
        anyhow::bail!("event {} arrived changed: {why}", sent.id);
    }
    Ok(())
}

async fn rule_target_status(
    node: &StraitProcess,
    bus: &str,
    rule: &str,
    target: &str,
) -> anyhow::Result<Value> {
    let r = node.client().get_rule(bus, rule).await?;
    r.expect_status(200, "GET rule")?;
    let body = r.json().context("GET rule is not JSON")?;
    body.pointer(&format!("/status/targets/{target}"))
        .cloned()
        .with_context(|| format!("GET rule has no status.targets.{target}: {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn target_failing_three_times_gets_the_event() -> anyhow::Result<()> {
    bounded(LIMIT, async {
        let flaky = Receiver::start(Behavior::FailFirst(3)).await?;
        let node = node().await?;
        let rule = json!({
            "pattern": {"source": ["chaos.retry"]},
            "targets": [http_target("flaky", &flaky.url("/flaky"), retry(10, 50, 200))],
        });
        node.put_rule(BUS, "retry", &rule)
            .await?
            .expect_status(200, "PUT rule")?;
        let ev = SentEvent::new(
            "retry-1",
            "chaos.retry",
            "chaos.retry.once",
            Payload::Binary((0..=255u8).collect()),
        );
        post_accepted(&node, BUS, &ev).await?;
        let reqs = flaky
            .wait_until("3 failures and a success", Duration::from_secs(20), |r| {
                r.iter().any(|q| q.succeeded())
            })
            .await?;
        let attempts: Vec<DeliveredEvent> = reqs.iter().filter_map(|r| r.event()).collect();
        anyhow::ensure!(
            attempts.len() == 4 && attempts[3].succeeded(),
            "expected 3 failed attempts then a success, got statuses {:?}",
            attempts.iter().map(|a| a.status).collect::<Vec<_>>()
        );
        for a in &attempts {
            same_event(&ev, a)?;
        }
        // Delivered once: no attempt after the success.
        tokio::time::sleep(Duration::from_secs(1)).await;
        anyhow::ensure!(
            flaky.count() == 4,
            "{} requests: the event was sent again after it was delivered",
            flaky.count()
        );
        let status = wait_status(&node, "retry", "flaky", "delivered", 1).await?;
        eprintln!("status after delivery: {status}");
        ensure_no_panic(&node)?;
        Ok(())
    })
    .await
}

/// Poll `GET rule` until `status.targets.{target}.{key}` is `want`; the
/// error shows the last status.
async fn wait_status(
    node: &StraitProcess,
    rule: &str,
    target: &str,
    key: &str,
    want: u64,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let last = rule_target_status(node, BUS, rule, target).await;
        if let Ok(s) = &last
            && s.get(key).and_then(Value::as_u64) == Some(want)
        {
            return Ok(s.clone());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "rule {rule} target {target}: status.{key} never became {want}; last: {}",
                match last {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("{e:#}"),
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn check_dead_letter(
    got: &DeliveredEvent,
    sent: &SentEvent,
    rule: &str,
    target: &str,
    attempts: u32,
) -> anyhow::Result<()> {
    same_event(sent, got)?;
    let reason = got.attr("deadletterreason").unwrap_or("");
    anyhow::ensure!(
        !reason.is_empty(),
        "dead-lettered event has no deadletterreason: {:?}",
        got.attributes
    );
    anyhow::ensure!(
        got.attr("deadletterattempts") == Some(attempts.to_string().as_str()),
        "deadletterattempts is {:?}, expected {attempts}",
        got.attr("deadletterattempts")
    );
    anyhow::ensure!(
        got.attr("deadletterrule").is_some_and(|r| r.contains(rule)),
        "deadletterrule is {:?}, expected it to name {rule}",
        got.attr("deadletterrule")
    );
    anyhow::ensure!(
        got.attr("deadlettertarget")
            .is_some_and(|t| t.contains(target)),
        "deadlettertarget is {:?}, expected it to name {target}",
        got.attr("deadlettertarget")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn exhausted_retries_go_to_the_http_dead_letter() -> anyhow::Result<()> {
    bounded(LIMIT, async {
        let broken = Receiver::start(Behavior::AlwaysFail).await?;
        let dlq = Receiver::start(Behavior::Ok).await?;
        let node = node().await?;
        let rule = json!({
            "pattern": {"source": ["chaos.dlq.http"]},
            "targets": [http_target("broken", &broken.url("/broken"), retry(3, 50, 100))],
            "deadLetter": {"type": "http", "endpoint": dlq.url("/dlq")},
        });
        node.put_rule(BUS, "to-dlq", &rule)
            .await?
            .expect_status(200, "PUT rule")?;
        let ev = SentEvent::new(
            "dlq-http-1",
            "chaos.dlq.http",
            "chaos.dlq",
            Payload::Text("dead letter me ✉".into()),
        );
        post_accepted(&node, BUS, &ev).await?;
        dlq.wait_until("the dead-lettered event", Duration::from_secs(20), |r| {
            !r.is_empty()
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let dead = dlq.events();
        anyhow::ensure!(
            dead.len() == 1,
            "{} dead-letter deliveries, expected 1",
            dead.len()
        );
        check_dead_letter(&dead[0], &ev, "to-dlq", "broken", 3)?;
        anyhow::ensure!(
            broken.count() == 3,
            "the failing target got {} attempts, maxAttempts is 3",
            broken.count()
        );
        let status = wait_status(&node, "to-dlq", "broken", "deadLettered", 1).await?;
        eprintln!("status: {status}");
        ensure_no_panic(&node)?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn exhausted_retries_go_to_the_dead_letter_bus() -> anyhow::Result<()> {
    bounded(LIMIT, async {
        let broken = Receiver::start(Behavior::AlwaysFail).await?;
        let collected = Receiver::start(Behavior::Ok).await?;
        let node = node().await?;
        node.put_bus("dlq", Some(&json!({"description": "dead letters"})))
            .await?
            .expect_status(200, "PUT bus dlq")?;
        node.put_rule(
            "dlq",
            "collect",
            &json!({
                "pattern": {"source": ["chaos.dlq.bus"]},
                "targets": [http_target("collector", &collected.url("/collected"), retry(5, 50, 100))],
            }),
        )
        .await?
        .expect_status(200, "PUT rule on dlq")?;
        let mut target = http_target("broken", &broken.url("/broken"), retry(2, 50, 100));
        target["deadLetter"] = json!({"type": "bus", "bus": "dlq"});
        node.put_rule(
            BUS,
            "main",
            &json!({"pattern": {"source": ["chaos.dlq.bus"]}, "targets": [target]}),
        )
        .await?
        .expect_status(200, "PUT rule main")?;
        let ev = SentEvent::new(
            "dlq-bus-1",
            "chaos.dlq.bus",
            "chaos.dlq",
            Payload::Json(json!({"order": 17, "items": ["a", "b"]})),
        );
        post_accepted(&node, BUS, &ev).await?;
        collected
            .wait_until("the event re-ingested on the dlq bus", Duration::from_secs(20), |r| {
                !r.is_empty()
            })
            .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = collected.events();
        anyhow::ensure!(got.len() == 1, "{} deliveries from the dlq bus, expected 1", got.len());
        check_dead_letter(&got[0], &ev, "main", "broken", 2)?;
        anyhow::ensure!(
            broken.count() == 2,
            "the failing target got {} attempts, maxAttempts is 2",
            broken.count()
        );
        ensure_no_panic(&node)?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn permanent_client_error_dead_letters_at_once() -> anyhow::Result<()> {
    bounded(LIMIT, async {
        let refusing = Receiver::start(Behavior::Status(400)).await?;
        let dlq = Receiver::start(Behavior::Ok).await?;
        let node = node().await?;
        let mut target = http_target("refusing", &refusing.url("/refusing"), retry(10, 50, 100));
        target["deadLetter"] = json!({"type": "http", "endpoint": dlq.url("/dlq")});
        node.put_rule(
            BUS,
            "permanent",
            &json!({"pattern": {"source": ["chaos.dlq.400"]}, "targets": [target]}),
        )
        .await?
        .expect_status(200, "PUT rule")?;
        let ev = SentEvent::new(
            "dlq-400-1",
            "chaos.dlq.400",
            "chaos.dlq",
            Payload::Text("bad request".into()),
        );
        post_accepted(&node, BUS, &ev).await?;
        dlq.wait_until("the dead-lettered event", Duration::from_secs(20), |r| {
            !r.is_empty()
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let dead = dlq.events();
        anyhow::ensure!(
            dead.len() == 1,
            "{} dead-letter deliveries, expected 1",
            dead.len()
        );
        check_dead_letter(&dead[0], &ev, "permanent", "refusing", 1)?;
        anyhow::ensure!(
            refusing.count() == 1,
            "a 400 is permanent, yet the target got {} attempts",
            refusing.count()
        );
        ensure_no_panic(&node)?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn healthy_target_is_not_held_up_by_a_failing_one() -> anyhow::Result<()> {
    bounded(LIMIT, async {
        let broken = Receiver::start(Behavior::AlwaysFail).await?;
        let healthy = Receiver::start(Behavior::Ok).await?;
        let node = node().await?;
        let rule = json!({
            "pattern": {"source": ["chaos.isolation"]},
            "targets": [
                http_target("broken", &broken.url("/broken"), retry(100, 500, 2000)),
                http_target("healthy", &healthy.url("/healthy"), retry(100, 500, 2000)),
            ],
        });
        node.put_rule(BUS, "two", &rule)
            .await?
            .expect_status(200, "PUT rule")?;
        let events: Vec<SentEvent> = (0..50)
            .map(|i| {
                SentEvent::new(
                    format!("iso-{i:03}"),
                    "chaos.isolation",
                    "chaos.iso",
                    Payload::Json(json!({"n": i})),
                )
            })
            .collect();
        for chunk in events.chunks(10) {
            let body: Vec<Value> = chunk.iter().map(SentEvent::to_json).collect();
            let reply = node.post_batch(BUS, &body).await?;
            reply.expect_status(200, "posting a batch")?;
        }
        let posted = Instant::now();
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        healthy
            .wait_for_ids(ids.iter(), Duration::from_secs(5))
            .await
            .context("the healthy target must get all 50 events promptly")?;
        eprintln!(
            "healthy target had all 50 events {:?} after the last ack; broken target {} attempts",
            posted.elapsed(),
            broken.count()
        );
        for got in healthy.events() {
            let sent = events
                .iter()
                .find(|e| e.id == got.id)
                .with_context(|| format!("unknown id {}", got.id))?;
            same_event(sent, &got)?;
        }
        // The broken target is still being retried.
        let before = broken.count();
        anyhow::ensure!(before >= 1, "the failing target was never tried");
        broken
            .wait_until(
                "more retries of the failing target",
                Duration::from_secs(6),
                |r| r.len() > before,
            )
            .await?;
        let status = rule_target_status(&node, BUS, "two", "broken").await?;
        eprintln!("broken target status: {status}");
        anyhow::ensure!(
            status
                .get("deadLettered")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                == 0,
            "nothing should be dead-lettered yet: {status}"
        );
        ensure_no_panic(&node)?;
        Ok(())
    })
    .await
}

/// A dead-letter bus must exist when the rule is committed and cannot be
/// deleted while a rule names it; a dead letter that fails is counted as
/// `deadLetterFailed` (with the error), never as `deadLettered`.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_bus_must_exist_and_a_failed_dead_letter_is_not_counted_as_one()
-> anyhow::Result<()> {
    bounded(LIMIT, async {
        let refusing = Receiver::start(Behavior::Status(400)).await?;
        let node = node().await?;
        let mut target = http_target("refusing", &refusing.url("/refusing"), retry(3, 50, 100));
        target["deadLetter"] = json!({"type": "bus", "bus": "nodlq"});
        let rule = json!({"pattern": {"source": ["chaos.dlq.missing"]}, "targets": [target]});
        let r = node.put_rule(BUS, "main", &rule).await?;
        r.expect_client_error("a dead letter to a missing bus")?;
        anyhow::ensure!(
            r.status == 400
                && r.error_code().as_deref() == Some("DeadLetterBusNotFound")
                && r.error_message()
                    .is_some_and(|m| m.contains("targets[0].deadLetter.bus") && m.contains("nodlq")),
            "expected 400 DeadLetterBusNotFound naming targets[0].deadLetter.bus: {}",
            r.text()
        );
        let rule_level = json!({
            "pattern": {"source": ["chaos.dlq.missing"]},
            "targets": [http_target("refusing", &refusing.url("/refusing"), retry(3, 50, 100))],
            "deadLetter": {"type": "bus", "bus": "nodlq"},
        });
        let r = node.put_rule(BUS, "main", &rule_level).await?;
        anyhow::ensure!(
            r.status == 400 && r.error_message().is_some_and(|m| m.starts_with("deadLetter.bus")),
            "expected 400 naming deadLetter.bus: {}",
            r.text()
        );
        // With the bus, the same rule is accepted; the bus is then pinned.
        node.put_bus("nodlq", None)
            .await?
            .expect_status(200, "PUT bus nodlq")?;
        node.put_rule(BUS, "main", &rule)
            .await?
            .expect_status(200, "PUT rule with its dead-letter bus")?;
        let r = node.client().delete("/v1/buses/nodlq").await?;
        anyhow::ensure!(
            r.status == 409
                && r.error_code().as_deref() == Some("BusIsDeadLetter")
                && r.error_message().is_some_and(|m| m.contains("default/main")),
            "deleting a dead-letter bus: expected 409 BusIsDeadLetter naming default/main: {}",
            r.text()
        );
        // An event dead-lettered once already is not dead-lettered onto a
        // bus again (loop guard): that is a failed dead letter.
        let looped = json!({
            "specversion": "1.0", "id": "dlq-loop-1", "source": "chaos.dlq.missing",
            "type": "chaos.dlq", "deadletterreason": "an earlier failure",
        });
        let reply = node.post_structured(BUS, &looped).await?;
        reply.expect_status(200, "posting an event")?;
        let status = wait_status(&node, "main", "refusing", "deadLetterFailed", 1).await?;
        anyhow::ensure!(
            status["deadLettered"] == 0
                && status["lastDeadLetterError"]
                    .as_str()
                    .is_some_and(|e| e.contains("loop guard")),
            "a failed dead letter must not count as dead-lettered: {status}"
        );
        let fresh = json!({
            "specversion": "1.0", "id": "dlq-ok-1", "source": "chaos.dlq.missing",
            "type": "chaos.dlq",
        });
        node.post_structured(BUS, &fresh)
            .await?
            .expect_status(200, "posting an event")?;
        let status = wait_status(&node, "main", "refusing", "deadLettered", 1).await?;
        anyhow::ensure!(status["deadLetterFailed"] == 1, "{status}");
        let metrics = node.client().get_json("/metrics").await?.text();
        anyhow::ensure!(
            metrics.lines().any(|l| l.starts_with("strait_dead_letter_failures_total{")
                && l.contains("target=\"refusing\"")
                && l.ends_with(" 1")),
            "no strait_dead_letter_failures_total for the target:\n{}",
            metrics
                .lines()
                .filter(|l| l.contains("dead_letter"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        // Once no rule names it, the bus can go.
        node.client()
            .delete(&format!("/v1/buses/{BUS}/rules/main"))
            .await?
            .expect_status(200, "DELETE rule")?;
        node.client()
            .delete("/v1/buses/nodlq")
            .await?
            .expect_status(200, "DELETE bus nodlq")?;
        ensure_no_panic(&node)?;
        Ok(())
    })
    .await
}
