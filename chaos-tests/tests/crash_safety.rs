//! Kill -9 a single node over and over while a producer keeps sending: no
//! acknowledged event may be lost, corrupted or invented, and the
//! configuration survives.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use strait_chaos_tests::{
    Behavior, Ledger, NodeClient, NodeOptions, Payload, Receiver, SentEvent, StraitProcess,
    bounded, check_conservation, ensure_no_panic, entry_outcomes, http_target, retry,
};

const BUS: &str = "default";
const RULE: &str = "crash-sink";
const SOURCE: &str = "chaos.crash";
const KILLS: usize = 6;

#[derive(Debug, Default)]
struct ProducerStats {
    requests: usize,
    transport_errors: usize,
    server_errors: usize,
    retried_requests: usize,
    retried_entries: usize,
    /// Problems that fail the test (valid events rejected, odd answers).
    problems: Vec<String>,
}

fn lock(l: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    l.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Send one request for `batch` (one event: structured or binary mode at
/// random; more: batch mode). `Ok(true)` when every entry got a final answer.
async fn send(
    client: &NodeClient,
    batch: &[SentEvent],
    binary: bool,
    ledger: &Mutex<Ledger>,
    stats: &mut ProducerStats,
    is_retry: bool,
) -> bool {
    {
        let mut l = lock(ledger);
        for ev in batch {
            l.record_sent(ev);
        }
    }
    stats.requests += 1;
    let reply = match batch {
        [one] if binary => {
            client
                .post_binary(
                    BUS,
                    &one.binary_headers(),
                    Some(one.payload.content_type()),
                    one.payload.bytes(),
                )
                .await
        }
        [one] => client.post_structured(BUS, &one.to_json()).await,
        many => {
            let events: Vec<Value> = many.iter().map(SentEvent::to_json).collect();
            client.post_batch(BUS, &events).await
        }
    };
    let reply = match reply {
        Ok(r) => r,
        Err(_) => {
            // Connection refused or reset, timeout: in doubt.
            stats.transport_errors += 1;
            let mut l = lock(ledger);
            for ev in batch {
                l.record_in_doubt(&ev.id);
            }
            return false;
        }
    };
    if reply.status >= 500 {
        // 503 NotReady while the node comes up, or a failure: in doubt.
        stats.server_errors += 1;
        let mut l = lock(ledger);
        for ev in batch {
            l.record_in_doubt(&ev.id);
        }
        return false;
    }
    if reply.status != 200 {
        stats.problems.push(format!(
            "valid request of {} events answered {}: {}",
            batch.len(),
            reply.status,
            reply.text()
        ));
        let mut l = lock(ledger);
        for ev in batch {
            l.record_rejected(&ev.id);
        }
        return true;
    }
    let outcomes = entry_outcomes(&reply);
    if outcomes.len() != batch.len() {
        stats.problems.push(format!(
            "{} results for {} events: {}",
            outcomes.len(),
            batch.len(),
            reply.text()
        ));
    }
    let mut l = lock(ledger);
    for (i, ev) in batch.iter().enumerate() {
        let Some((id, status, code)) = outcomes.get(i) else {
            l.record_in_doubt(&ev.id);
            continue;
        };
        if id.as_deref() != Some(ev.id.as_str()) {
            stats
                .problems
                .push(format!("result {i} has id {id:?}, sent {:?}", ev.id));
        }
        match status.as_str() {
            "accepted" | "duplicate" => l.record_acked(&ev.id),
            other => {
                stats.problems.push(format!(
                    "valid event {} answered {other} ({code:?}){}",
                    ev.id,
                    if is_retry { " on retry" } else { "" }
                ));
                l.record_rejected(&ev.id);
            }
        }
    }
    true
}

async fn produce(
    client: NodeClient,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) -> ProducerStats {
    let mut rng = StdRng::seed_from_u64(0x5eed_c4a5);
    let mut stats = ProducerStats::default();
    // Requests without a final answer, re-sent with the same ids and bytes.
    let mut pending: VecDeque<(Vec<SentEvent>, bool)> = VecDeque::new();
    let mut next_id = 0usize;
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let (batch, binary, is_retry) = match pending.pop_front() {
            Some((b, bin)) => (b, bin, true),
            None if stop.load(Ordering::SeqCst) => break,
            None => {
                let n = if rng.random_bool(0.5) {
                    1
                } else {
                    rng.random_range(2..=25usize)
                };
                let batch: Vec<SentEvent> = (0..n)
                    .map(|_| {
                        next_id += 1;
                        let id = format!("crash-{next_id:06}");
                        let payload = Payload::random(&mut rng, &id);
                        let mut ev = SentEvent::new(id, SOURCE, "chaos.crash.tick", payload);
                        ev.extensions.push(("seq".into(), next_id.to_string()));
                        ev
                    })
                    .collect();
                let binary = n == 1 && rng.random_bool(0.5);
                (batch, binary, false)
            }
        };
        if is_retry {
            stats.retried_requests += 1;
            stats.retried_entries += batch.len();
        }
        let done = send(&client, &batch, binary, &ledger, &mut stats, is_retry).await;
        if !done {
            pending.push_back((batch, binary));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if stop.load(Ordering::SeqCst) {
            let deadline =
                *drain_deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(20));
            if Instant::now() > deadline {
                stats.problems.push(format!(
                    "{} requests still without an answer 20 s after the last restart",
                    pending.len()
                ));
                break;
            }
        }
    }
    stats
}

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
        let producer = tokio::spawn(produce(node.client(), ledger.clone(), stop.clone()));

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
