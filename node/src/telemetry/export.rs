//! The span export pipeline: a bounded queue and one thread that batches
//! the spans (each already encoded, see [`super::span::EventSpan`]) into
//! OTLP requests ([`super::otlp::Encoder`]) and sends them over OTLP/HTTP
//! ([`super::otlp::Sender`]).
//!
//! The thread does not wait on the queue: it wakes every [`TICK`] and
//! takes what is there. A consumer blocked on the queue made every span
//! a wake-up (a futex call on the event path and a context switch on the
//! export thread, per span).
//!
//! Exporting never blocks or slows the event path: [`submit`] only tries to
//! queue a span; when the queue is full (a slow or absent collector) the
//! span is dropped and counted (`strait_trace_spans_dropped_total{reason}`),
//! as is every span of a batch the collector refused or never answered.

use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use super::otlp::{Encoder, Sender};

/// Spans queued for export at most; more are dropped and counted.
const QUEUE: usize = 16_384;
/// Spans per OTLP request at most.
const BATCH: usize = 512;
/// How long a span waits for more to batch with, by default
/// (`OTEL_BSP_SCHEDULE_DELAY`, in ms, overrides it).
const DELAY: Duration = Duration::from_millis(1000);
/// How often the export thread takes the queued spans. At 100 % sampling
/// of 100k events/s about 4,000 spans wait, a quarter of [`QUEUE`].
const TICK: Duration = Duration::from_millis(20);

enum Msg {
    /// A finished OTLP `Span` message.
    Span(Vec<u8>),
    /// Export what is queued, then answer.
    Flush(std::sync::mpsc::Sender<()>),
}

static QUEUE_TX: OnceLock<SyncSender<Msg>> = OnceLock::new();

/// Whether spans are exported (an OTLP endpoint is configured).
pub fn on() -> bool {
    QUEUE_TX.get().is_some()
}

/// Start encoding spans with `encoder` and sending them with `sender`
/// (once per process).
pub(super) fn start(encoder: Encoder, sender: Sender) -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    let delay = std::env::var("OTEL_BSP_SCHEDULE_DELAY")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DELAY, Duration::from_millis);
    std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || run(encoder, sender, rx, delay))?;
    QUEUE_TX
        .set(tx)
        .map_err(|_| anyhow::anyhow!("span export started twice"))
}

/// Queue `span` for export, or drop and count it if the queue is full.
pub(super) fn submit(span: Vec<u8>) {
    let Some(tx) = QUEUE_TX.get() else { return };
    match tx.try_send(Msg::Span(span)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            // With the collector down every span ends here: the counter is
            // looked up once, not per span (a registry lookup hashes its
            // labels).
            static QUEUE_FULL: OnceLock<metrics::Counter> = OnceLock::new();
            QUEUE_FULL
                .get_or_init(|| {
                    metrics::counter!("strait_trace_spans_dropped_total", "reason" => "queue_full")
                })
                .increment(1);
        }
        Err(TrySendError::Disconnected(_)) => {
            metrics::counter!("strait_trace_spans_dropped_total", "reason" => "stopped")
                .increment(1);
        }
    }
}

/// Export what is queued, waiting at most `timeout`.
pub(super) fn flush(timeout: Duration) {
    let Some(tx) = QUEUE_TX.get() else { return };
    let (ack_tx, ack_rx) = std::sync::mpsc::channel();
    if tx.send(Msg::Flush(ack_tx)).is_ok() {
        let _ = ack_rx.recv_timeout(timeout);
    }
}

fn run(mut encoder: Encoder, sender: Sender, rx: Receiver<Msg>, delay: Duration) {
    let mut batched = 0usize;
    let mut deadline: Option<Instant> = None;
    let mut backoff = Backoff::default();
    loop {
        // After a failed export, wait before taking spans again: meanwhile
        // the queue fills and new spans are dropped where they are made,
        // for the price of a failed `try_send`, instead of being batched
        // for a collector that is down.
        let pause = match backoff.until.take() {
            Some(until) => until.saturating_duration_since(Instant::now()).max(TICK),
            None => TICK,
        };
        std::thread::sleep(pause);
        let mut flushed = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(Msg::Span(s)) => {
                    encoder.push(&s);
                    batched += 1;
                    deadline.get_or_insert_with(|| Instant::now() + delay);
                    if batched >= BATCH {
                        export(&mut encoder, &sender, &mut batched, &mut backoff);
                        deadline = None;
                    }
                }
                // Everything queued before the flush request has been
                // taken: it is exported below, then answered.
                Ok(Msg::Flush(ack)) => flushed.push(ack),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    export(&mut encoder, &sender, &mut batched, &mut backoff);
                    return;
                }
            }
        }
        if !flushed.is_empty() || deadline.is_some_and(|d| d <= Instant::now()) {
            export(&mut encoder, &sender, &mut batched, &mut backoff);
            deadline = None;
        }
        for ack in flushed {
            let _ = ack.send(());
        }
    }
}

/// How long the export thread pauses after failed exports: doubling from
/// 100 ms to 5 s while they fail, reset by a success.
#[derive(Default)]
struct Backoff {
    next: Option<Duration>,
    until: Option<Instant>,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn failed(&mut self) {
        let wait = self.next.unwrap_or(Self::MIN);
        self.until = Some(Instant::now() + wait);
        self.next = Some((wait * 2).min(Self::MAX));
    }

    fn succeeded(&mut self) {
        self.next = None;
    }
}

fn export(encoder: &mut Encoder, sender: &Sender, batched: &mut usize, backoff: &mut Backoff) {
    if encoder.is_empty() {
        return;
    }
    let n = std::mem::take(batched) as u64;
    match sender.send(encoder.finish()) {
        Ok(()) => {
            backoff.succeeded();
            metrics::counter!("strait_trace_spans_exported_total").increment(n);
        }
        Err(e) => {
            backoff.failed();
            metrics::counter!("strait_trace_spans_dropped_total", "reason" => "export_failed")
                .increment(n);
            tracing::debug!(error = %e, spans = n, "span export failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets_on_success() {
        let mut b = Backoff::default();
        let mut waits = Vec::new();
        for _ in 0..8 {
            let before = Instant::now();
            b.failed();
            let until = b.until.take().expect("a pause after a failure");
            waits.push(until.saturating_duration_since(before));
        }
        assert!(waits[0] >= Backoff::MIN && waits[0] < Backoff::MIN * 2);
        assert!(waits[1] >= Backoff::MIN * 2);
        assert!(
            waits
                .iter()
                .all(|w| *w <= Backoff::MAX + Duration::from_millis(50))
        );
        assert!(waits[7] >= Backoff::MAX - Duration::from_millis(50));
        b.succeeded();
        let before = Instant::now();
        b.failed();
        let until = b.until.expect("a pause");
        assert!(until.saturating_duration_since(before) < Backoff::MIN * 2);
    }
}
