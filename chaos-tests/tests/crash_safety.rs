//! Kill -9 a single node over and over while a producer keeps sending: no
//! acknowledged event may be lost, corrupted or invented, and the
//! configuration survives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use strait_chaos_tests::{
    Behavior, Ledger, NodeOptions, Payload, ProducerOptions, Receiver, SentEvent, StraitProcess,
    bounded, check_conservation, ensure_no_panic, entry_outcomes, http_target, lock, produce,
    retry,
};

const BUS: &str = "default";
const RULE: &str = "crash-sink";
const SOURCE: &str = "chaos.crash";
const KILLS: usize = 6;

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_and_restart_lose_no_acknowledged_event() -> anyhow::Result<()> {
    bounded(Duration::from_secs(150), async {
        let receiver = Receiver::start(Behavior::Ok).await?;
        let mut node = StraitProcess::start(
            NodeOptions::dev().config(json!({"dispatch": {"checkpoint_interval_ms": 50}})),
        )
        .await?;
        let rule = json!({
            "description": "crash safety sink",
            "pattern": {"source": [SOURCE]},
            "targets": [http_target("sink", &receiver.url("/sink"), retry(10_000, 20, 500))],
        });
        node.put_rule(BUS, RULE, &rule)
            .await?
            .expect_status(200, "PUT rule")?;

        let ledger = Arc::new(Mutex::new(Ledger::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut opts = ProducerOptions::new(BUS, SOURCE);
        opts.id_prefix = "crash-".into();
        let producer = tokio::spawn(produce(
            vec![node.client()],
            opts,
            ledger.clone(),
            stop.clone(),
        ));

        let mut rng = StdRng::seed_from_u64(0xdead_beef);
        let mut acked_at_kill = Vec::new();
        for _ in 0..KILLS {
            tokio::time::sleep(Duration::from_millis(rng.random_range(1000..2000))).await;
            acked_at_kill.push(lock(&ledger).acked().len());
            node.kill_9()?;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
            node.restart().await?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::SeqCst);
        let stats = producer.await.context("producer task")?;
        let ledger = lock(&ledger).clone();
        eprintln!(
            "producer: {stats:?}; acked before each kill: {acked_at_kill:?}; acked {}, in doubt {}",
            ledger.acked().len(),
            ledger.in_doubt().len()
        );
        anyhow::ensure!(
            stats.problems.is_empty(),
            "the producer saw problems:\n{}",
            stats.problems.join("\n")
        );
        anyhow::ensure!(
            node.starts() as usize > KILLS,
            "only {} starts",
            node.starts()
        );
        anyhow::ensure!(
            ledger.acked().len() >= 200,
            "only {} events acknowledged: the test did not exercise much",
            ledger.acked().len()
        );
        anyhow::ensure!(
            ledger.in_doubt().is_empty(),
            "{} events never got a final answer",
            ledger.in_doubt().len()
        );

        // Dedup state survives kill -9: re-sending acknowledged events is a
        // duplicate, not a second copy.
        let client = node.client();
        let resend: Vec<Value> = ledger
            .acked()
            .iter()
            .step_by((ledger.acked().len() / 20).max(1))
            .take(20)
            .filter_map(|id| ledger.sent(id))
            .map(SentEvent::to_json)
            .collect();
        let reply = client.post_batch(BUS, &resend).await?;
        reply.expect_status(200, "re-sending acknowledged events")?;
        let not_dup: Vec<_> = entry_outcomes(&reply)
            .into_iter()
            .filter(|(_, s, _)| s != "duplicate")
            .collect();
        anyhow::ensure!(
            not_dup.is_empty(),
            "acknowledged events re-sent after restarts were not reported as duplicates: {not_dup:?}"
        );

        receiver
            .wait_for_ids(ledger.acked().iter(), Duration::from_secs(30))
            .await
            .context("every acknowledged event must be delivered")?;
        // Let stragglers arrive before judging what was delivered.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let report = check_conservation(&ledger, &receiver.events());
        eprintln!("conservation: {report}");
        report.ensure_ok()?;

        let got = client.get_rule(BUS, RULE).await?;
        got.expect_status(200, "GET rule after restarts")?;
        let body = got.json().context("rule is JSON")?;
        anyhow::ensure!(
            body.to_string().contains(&receiver.url("/sink")),
            "the rule lost its target across restarts: {body}"
        );
        anyhow::ensure!(
            body.pointer("/status/targets/sink").is_some(),
            "GET rule has no status for target sink: {body}"
        );
        ensure_no_panic(&node)?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn target_outage_across_kill_9_loses_nothing() -> anyhow::Result<()> {
    bounded(Duration::from_secs(90), async {
        // The target is down while events are accepted, the node is killed
        // with deliveries pending and retries in flight, then the target
        // comes back: everything acknowledged must arrive.
        let receiver = Receiver::start(Behavior::AlwaysFail).await?;
        let mut node = StraitProcess::start(
            NodeOptions::dev().config(json!({"dispatch": {"checkpoint_interval_ms": 50}})),
        )
        .await?;
        let rule = json!({
            "pattern": {"source": ["chaos.outage"]},
            "targets": [http_target("down", &receiver.url("/down"), retry(1000, 50, 300))],
        });
        node.put_rule(BUS, "outage", &rule)
            .await?
            .expect_status(200, "PUT rule")?;
        let mut rng = StdRng::seed_from_u64(0x07a6e);
        let mut ledger = Ledger::new();
        let events: Vec<SentEvent> = (0..100)
            .map(|i| {
                let id = format!("outage-{i:03}");
                let payload = Payload::random(&mut rng, &id);
                SentEvent::new(id, "chaos.outage", "chaos.outage.tick", payload)
            })
            .collect();
        let client = node.client();
        for chunk in events.chunks(20) {
            for ev in chunk {
                ledger.record_sent(ev);
            }
            let body: Vec<Value> = chunk.iter().map(SentEvent::to_json).collect();
            let reply = client.post_batch(BUS, &body).await?;
            reply.expect_status(200, "posting a batch")?;
            for (id, status, _) in entry_outcomes(&reply) {
                anyhow::ensure!(status == "accepted", "{id:?}: {status}");
                if let Some(id) = id {
                    ledger.record_acked(&id);
                }
            }
        }
        receiver
            .wait_until(
                "failed attempts before the kill",
                Duration::from_secs(10),
                |r| r.len() >= 20,
            )
            .await?;
        node.kill_9()?;
        node.restart().await?;
        // Still down for a moment after the restart, then back.
        tokio::time::sleep(Duration::from_millis(500)).await;
        receiver.set_behavior(Behavior::Ok);
        receiver
            .wait_for_ids(ledger.acked().iter(), Duration::from_secs(30))
            .await
            .context("events accepted during the outage must arrive after the restart")?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let report = check_conservation(&ledger, &receiver.events());
        eprintln!("conservation: {report}");
        report.ensure_ok()?;
        ensure_no_panic(&node)?;
        Ok(())
    })
    .await
}
