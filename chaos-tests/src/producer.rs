//! A producer that keeps sending events with known bytes to one or more
//! nodes, re-sending (same ids, same bytes) whatever got no final answer,
//! and records every outcome in a [`Ledger`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::{Ledger, NodeClient, Payload, SentEvent, entry_outcomes};

/// What a producer run looked like.
#[derive(Debug, Default)]
pub struct ProducerStats {
    /// Requests sent.
    pub requests: usize,
    /// Requests that failed at the transport (refused, reset, timeout).
    pub transport_errors: usize,
    /// Requests answered 5xx.
    pub server_errors: usize,
    /// Requests re-sent.
    pub retried_requests: usize,
    /// Events re-sent.
    pub retried_entries: usize,
    /// Problems that fail the test (valid events rejected, odd answers).
    pub problems: Vec<String>,
}

/// How to produce.
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// Bus to send to.
    pub bus: String,
    /// CloudEvents `source` of every event.
    pub source: String,
    /// Event ids are `{id_prefix}{n:06}`.
    pub id_prefix: String,
    /// RNG seed.
    pub seed: u64,
    /// Pause between requests.
    pub pause: Duration,
    /// Give up on unanswered requests this long after `stop`.
    pub drain: Duration,
}

impl ProducerOptions {
    /// Defaults for `bus` and `source`.
    pub fn new(bus: &str, source: &str) -> ProducerOptions {
        ProducerOptions {
            bus: bus.into(),
            source: source.into(),
            id_prefix: "ev-".into(),
            seed: 0x5eed_c4a5,
            pause: Duration::ZERO,
            drain: Duration::from_secs(20),
        }
    }
}

/// Lock a ledger, ignoring poisoning.
pub fn lock(l: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    l.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
/// Send one request for `batch` (one event: structured or binary mode at
/// random; more: batch mode). `Ok(true)` when every entry got a final answer.
pub async fn send(
    client: &NodeClient,
    bus: &str,
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
                    bus,
                    &one.binary_headers(),
                    Some(one.payload.content_type()),
                    one.payload.bytes(),
                )
                .await
        }
        [one] => client.post_structured(bus, &one.to_json()).await,
        many => {
            let events: Vec<Value> = many.iter().map(SentEvent::to_json).collect();
            client.post_batch(bus, &events).await
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

/// Produce until `stop`, sending each request to the next of `clients` in
/// turn (a request without a final answer goes to the next node when re-sent).
pub async fn produce(
    clients: Vec<NodeClient>,
    opts: ProducerOptions,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) -> ProducerStats {
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut turn = 0usize;
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
                        let id = format!("{}{next_id:06}", opts.id_prefix);
                        let payload = Payload::random(&mut rng, &id);
                        let mut ev = SentEvent::new(id, &opts.source, "chaos.tick", payload);
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
        if clients.is_empty() {
            stats.problems.push("no node to send to".into());
            break;
        }
        let client = &clients[turn % clients.len()];
        turn += 1;
        let done = send(
            client, &opts.bus, &batch, binary, &ledger, &mut stats, is_retry,
        )
        .await;
        if !opts.pause.is_zero() {
            tokio::time::sleep(opts.pause).await;
        }
        if !done {
            pending.push_back((batch, binary));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if stop.load(Ordering::SeqCst) {
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + opts.drain);
            if Instant::now() > deadline {
                stats.problems.push(format!(
                    "{} requests still without an answer {:?} after the stop",
                    pending.len(),
                    opts.drain
                ));
                break;
            }
        }
    }
    stats
}

/// Stop `producers`, fail on any problem they saw or any event left
/// without a final answer, and return the ledger.
pub async fn stop_producers(
    stop: &AtomicBool,
    producers: Vec<tokio::task::JoinHandle<ProducerStats>>,
    ledger: &Mutex<Ledger>,
) -> anyhow::Result<Ledger> {
    stop.store(true, Ordering::SeqCst);
    for p in producers {
        let stats = p.await.map_err(|e| anyhow::anyhow!("producer task: {e}"))?;
        eprintln!("producer: {stats:?}");
        anyhow::ensure!(
            stats.problems.is_empty(),
            "the producer saw problems:\n{}",
            stats.problems.join("\n")
        );
    }
    let l = lock(ledger).clone();
    eprintln!("acked {}, in doubt {}", l.acked().len(), l.in_doubt().len());
    anyhow::ensure!(
        l.in_doubt().is_empty(),
        "{} events never got a final answer",
        l.in_doubt().len()
    );
    Ok(l)
}
