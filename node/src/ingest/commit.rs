//! Group commit: events from many requests are proposed to Raft together,
//! so the log is fsynced once per batch, not once per event.

use std::sync::Arc;
use std::time::Instant;

use strait_federation::{
    AppendEntry, AppendOutcome, Command, CommandResponse, FederationError, SiteState, StateFull,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;

use crate::cluster::Writer;
use crate::config::Batching;
use crate::util::now_ms;

/// Why a commit failed (the events were not stored).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// No leader / not the leader: retry later.
    #[error("this node cannot commit right now: {0}")]
    NotReady(String),
    /// Raft or storage failed.
    #[error("commit failed: {0}")]
    Failed(String),
    /// The state holds `max_state_bytes`: retry once retention freed space.
    #[error(transparent)]
    StateFull(StateFull),
}

struct Pending {
    entries: Vec<AppendEntry>,
    reply: oneshot::Sender<Result<Vec<AppendOutcome>, CommitError>>,
    enqueued: Instant,
}

/// Handle for submitting events.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Pending>,
    state: Arc<SiteState>,
}

impl Committer {
    /// Start the batching task.
    pub fn start(
        site: Writer,
        state: Arc<SiteState>,
        batching: Batching,
        dedup_window_ms: u64,
    ) -> Committer {
        let clustered = site.endpoint().is_some();
        let max_bytes = match batching.max_bytes_per_proposal {
            // See `Batching::max_bytes_per_proposal`.
            0 if clustered => 800_000,
            0 => usize::MAX,
            n => n,
        };
        let (tx, rx) = mpsc::channel::<Pending>(16 * 1024);
        tokio::spawn(run(site, batching, max_bytes, dedup_window_ms, rx));
        Committer { tx, state }
    }

    /// The site's state it appends to.
    pub fn state(&self) -> &Arc<SiteState> {
        &self.state
    }

    /// Append events; resolves once they are committed (or not). Refused
    /// while the state is full (every ingress path comes through here).
    pub async fn append(
        &self,
        entries: Vec<AppendEntry>,
    ) -> Result<Vec<AppendOutcome>, CommitError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(full) = self.state.full() {
            return Err(CommitError::StateFull(full));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending {
                entries,
                reply,
                enqueued: Instant::now(),
            })
            .await
            .map_err(|_| CommitError::NotReady("the node is shutting down".into()))?;
        rx.await
            .map_err(|_| CommitError::Failed("the commit task stopped".into()))?
    }
}

async fn run(
    site: Writer,
    batching: Batching,
    max_bytes: usize,
    dedup_window_ms: u64,
    mut rx: mpsc::Receiver<Pending>,
) {
    let permits = Arc::new(Semaphore::new(batching.max_in_flight));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let size = |p: &Pending| p.entries.iter().map(|e| e.event.get().len()).sum::<usize>();
        let mut bytes = size(&first);
        let mut batch = vec![first];
        let mut count = batch[0].entries.len();
        while count < batching.max_events_per_proposal && bytes < max_bytes {
            match rx.try_recv() {
                Ok(p) => {
                    count += p.entries.len();
                    bytes += size(&p);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let site = site.clone();
        tokio::spawn(async move {
            let span = tracing::info_span!("commit", events = count, requests = batch.len());
            propose(&site, batch, dedup_window_ms)
                .instrument(span)
                .await;
            drop(permit);
        });
    }
}

async fn propose(site: &Writer, batch: Vec<Pending>, dedup_window_ms: u64) {
    let mut sizes = Vec::with_capacity(batch.len());
    let mut entries = Vec::new();
    let mut replies = Vec::with_capacity(batch.len());
    for p in batch {
        sizes.push(p.entries.len());
        entries.extend(p.entries);
        replies.push((p.reply, p.enqueued));
    }
    let total = entries.len();
    let cmd = Command::Append {
        ingest_ms: now_ms(),
        dedup_window_ms,
        entries: entries.into(),
    };
    let result = match site.write(cmd).await {
        Ok(CommandResponse::Appended(outcomes)) if outcomes.len() == total => Ok(outcomes),
        Ok(other) => Err(CommitError::Failed(format!(
            "unexpected state machine answer {other:?}"
        ))),
        Err(FederationError::NotLeader { leader }) => Err(CommitError::NotReady(format!(
            "no leader could take the write (last known leader: {leader:?})"
        ))),
        Err(FederationError::Unreachable(m)) => Err(CommitError::NotReady(m)),
        Err(e) => Err(CommitError::Failed(e.to_string())),
    };
    match result {
        Ok(outcomes) => {
            let mut it = outcomes.into_iter();
            for ((reply, enqueued), n) in replies.into_iter().zip(sizes) {
                let part: Vec<AppendOutcome> = it.by_ref().take(n).collect();
                metrics::histogram!("strait_commit_latency_seconds")
                    .record(enqueued.elapsed().as_secs_f64());
                let _ = reply.send(Ok(part));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, events = total, "commit failed");
            for (reply, _) in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
