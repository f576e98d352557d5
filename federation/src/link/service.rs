//! The tokio/QUIC glue of links: [`LinkService`] receives batches from
//! other sites and commits them into this site's inbox; [`run_sender`]
//! drains this site's outbox for one remote site while this node leads.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Mutex, Notify};

use super::proto::{Batch, Sender, SenderConfig, decode_batch, encode_batch};
use super::query::{METHOD_SITE_QUERY, QueryService};
pub use super::remote::RemoteSite;
use super::uncommitted::{EarlyBatch, EarlyInbox};
use crate::certs::NodeIdentity;
use crate::command::{Command, CommandResponse, LinkAnswer, LinkSpec};
use crate::error::FederationError;
use crate::network_quic::write_via_leader;
use crate::site::Site;
use crate::transport::codec::codes;
use crate::transport::{
    Endpoint, Handler, HandlerFuture, PeerClient, RemoteError, Request, RequestError,
};

/// Method: a batch of deliveries from another site's outbox.
pub const METHOD_LINK_BATCH: u16 = 0x0301;

/// Least time between two writes of a link's acknowledgement.
const ACK_WRITE_EVERY: Duration = Duration::from_millis(50);

/// Largest batch body a sender builds.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Serves [`METHOD_LINK_BATCH`]: checks that the batch's origin is the
/// sending node's site (by certificate) and one this site accepts, then
/// commits it (through the leader) and answers with the cumulative
/// acknowledgement or the gap. Batches from one origin are committed one at
/// a time, in sequence order.
pub struct LinkService {
    own_site: String,
    origins: Vec<String>,
    running: OnceLock<(Site, Endpoint)>,
    per_origin: std::sync::Mutex<HashMap<String, Arc<Lane>>>,
    early: OnceLock<Arc<EarlyInbox>>,
    on_commit: OnceLock<CommitHook>,
}

/// Deliveries this site committed into its inbox from one batch (those it
/// had not committed before), as a [`CommitHook`] sees them.
#[derive(Debug)]
pub struct InboxCommit<'a> {
    /// The origin site.
    pub origin: &'a str,
    /// The inbox sequence of the first of `items`.
    pub first_seq: u64,
    /// The deliveries (JSON), in order.
    pub items: &'a [Bytes],
    /// When this node received the batch.
    pub received: std::time::SystemTime,
}

/// Called after each inbox commit of a batch (on the node that received
/// it), e.g. to export a span per delivery.
pub type CommitHook = Arc<dyn Fn(InboxCommit<'_>) + Send + Sync>;

/// The receiving side of one origin: proposals are made one at a time, in
/// sequence order, but several may be in Raft at once (pipelined).
#[derive(Default)]
struct Lane {
    /// Serialises the proposals of one origin.
    order: Mutex<()>,
    /// Highest sequence proposed here whose proposal has not failed (a
    /// batch right after it may be proposed before it is applied).
    proposed: AtomicU64,
    /// Woken when `proposed` moves.
    moved: Notify,
}

impl std::fmt::Debug for LinkService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkService")
            .field("own_site", &self.own_site)
            .field("origins", &self.origins)
            .finish()
    }
}

impl LinkService {
    /// A service for site `own_site` accepting batches from `origins`.
    pub fn new(own_site: impl Into<String>, origins: Vec<String>) -> Arc<LinkService> {
        Arc::new(LinkService {
            own_site: own_site.into(),
            origins,
            running: OnceLock::new(),
            per_origin: std::sync::Mutex::new(HashMap::new()),
            early: OnceLock::new(),
            on_commit: OnceLock::new(),
        })
    }

    /// Call `hook` after every inbox commit of a batch (once per service).
    pub fn on_commit(&self, hook: CommitHook) {
        let _ = self.on_commit.set(hook);
    }

    /// Offer every batch this node proposes as leader to `early` (see
    /// [`crate::link::uncommitted`]), so it can be delivered before it commits.
    pub fn deliver_before_commit(&self, early: Arc<EarlyInbox>) {
        let _ = self.early.set(early);
    }

    /// Start serving with the site and the endpoint (to forward to the leader).
    pub fn start(&self, site: Site, endpoint: Endpoint) {
        let _ = self.running.set((site, endpoint));
    }

    fn lane(&self, origin: &str) -> Arc<Lane> {
        let mut m = match self.per_origin.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        m.entry(origin.to_string()).or_default().clone()
    }

    /// Handle one [`METHOD_LINK_BATCH`] request.
    pub async fn receive(&self, req: Request) -> Result<Bytes, RemoteError> {
        let received = std::time::SystemTime::now();
        let Some((site, endpoint)) = self.running.get().cloned() else {
            return Err(RemoteError::new(
                codes::UNAVAILABLE,
                "links are not running yet",
            ));
        };
        let batch = decode_batch(req.body)
            .map_err(|e| RemoteError::new(codes::BAD_REQUEST, e.to_string()))?;
        if batch.origin != req.peer.site {
            tracing::warn!(peer = %req.peer, origin = batch.origin, "refused a link batch: origin is not the sender's site");
            return Err(RemoteError::new(
                codes::FORBIDDEN,
                format!(
                    "{} cannot send on behalf of site {:?}",
                    req.peer, batch.origin
                ),
            ));
        }
        if batch.origin == self.own_site || !self.origins.contains(&batch.origin) {
            tracing::warn!(peer = %req.peer, "refused a link batch: no link from this site");
            return Err(RemoteError::new(
                codes::FORBIDDEN,
                format!(
                    "site {} has no link from site {:?}",
                    self.own_site, batch.origin
                ),
            ));
        }
        if let Some(full) = site.state.full() {
            // The sender keeps the batch in its outbox and retries with
            // backoff: nothing is lost, and nothing more is stored here
            // until retention frees space.
            return Err(RemoteError::new(codes::UNAVAILABLE, full.to_string()));
        }
        let mut items = Vec::with_capacity(batch.items.len());
        for (i, item) in batch.items.iter().enumerate() {
            let s = std::str::from_utf8(item).map_err(|_| {
                RemoteError::new(codes::BAD_REQUEST, format!("item {i} is not UTF-8"))
            })?;
            let raw = RawValue::from_string(s.to_string()).map_err(|e| {
                RemoteError::new(codes::BAD_REQUEST, format!("item {i} is not JSON: {e}"))
            })?;
            items.push(raw);
        }
        let mut specs = Vec::with_capacity(batch.specs.len());
        for (i, (hash, spec)) in batch.specs.iter().enumerate() {
            let bad = |what: String| {
                RemoteError::new(codes::BAD_REQUEST, format!("rule definition {i}: {what}"))
            };
            let hash = std::str::from_utf8(hash)
                .map_err(|_| bad("hash is not UTF-8".into()))?
                .to_string();
            let spec = std::str::from_utf8(spec).map_err(|_| bad("not UTF-8".into()))?;
            let spec = RawValue::from_string(spec.to_string())
                .map_err(|e| bad(format!("not JSON: {e}")))?;
            specs.push(LinkSpec { hash, spec });
        }
        // A batch that starts after what is committed (or proposed) may be
        // waiting for its predecessor (requests on separate streams can
        // overtake each other): give it a moment before answering with the
        // gap. Wait *before* taking the lane's lock: the predecessor needs it.
        let lane = self.lane(&batch.origin);
        let last = batch.last_seq();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut links = site.state.subscribe_links();
        loop {
            let moved = lane.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            let committed = site
                .state
                .view()
                .links
                .inbound
                .get(&batch.origin)
                .copied()
                .unwrap_or(0);
            let ahead = committed.max(lane.proposed.load(Ordering::Acquire));
            if batch.first_seq <= ahead + 1 || Instant::now() >= deadline {
                break;
            }
            tokio::select! {
                _ = links.changed() => {}
                () = &mut moved => {}
                () = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
        let early = self.early.get().map(|e| {
            (
                e.clone(),
                EarlyBatch {
                    first_seq: batch.first_seq,
                    items: batch.items.clone(),
                    specs: specs.clone(),
                },
            )
        });
        let cmd = Command::LinkReceive {
            origin: batch.origin.clone(),
            first_seq: batch.first_seq,
            items: items.into(),
            specs,
        };
        let serial = lane.order.lock().await;
        // What was committed or proposed before this batch: only what is
        // past it is new (a resent batch repeats deliveries).
        let before = site
            .state
            .view()
            .links
            .inbound
            .get(&batch.origin)
            .copied()
            .unwrap_or(0)
            .max(lane.proposed.load(Ordering::Acquire));
        let result = if site.is_leader() {
            // Propose in order under the lock, wait for the commit outside
            // it: the next batch is proposed while this one commits.
            match site.submit(cmd).await {
                Ok(done) => {
                    lane.proposed.fetch_max(last, Ordering::AcqRel);
                    lane.moved.notify_waiters();
                    if let Some((inbox, b)) = early {
                        inbox.offer(&batch.origin, b);
                    }
                    drop(serial);
                    done.await
                }
                Err(e) => Err(e),
            }
        } else {
            write_via_leader(&site, &endpoint, cmd).await
        };
        if result.is_err() {
            if let Some(e) = self.early.get() {
                e.clear(&batch.origin);
            }
            // Later batches must wait for what is applied again.
            lane.proposed.store(0, Ordering::Release);
        }
        let answer = match result {
            Ok(CommandResponse::Link(a)) => a,
            Ok(other) => {
                return Err(RemoteError::new(
                    codes::INTERNAL,
                    format!("unexpected answer {other:?}"),
                ));
            }
            Err(FederationError::NotLeader { .. } | FederationError::Unreachable(_)) => {
                return Err(RemoteError::new(
                    codes::UNAVAILABLE,
                    "this site has no reachable leader right now",
                ));
            }
            Err(e) => return Err(RemoteError::new(codes::INTERNAL, e.to_string())),
        };
        if let (Some(hook), LinkAnswer::Ack { upto }) = (self.on_commit.get(), answer) {
            let from = before.max(batch.first_seq.saturating_sub(1)) + 1;
            let skip = (from - batch.first_seq) as usize;
            let upto = upto.min(last);
            if upto >= from && skip < batch.items.len() {
                let n = ((upto - from) as usize + 1).min(batch.items.len() - skip);
                hook(InboxCommit {
                    origin: &batch.origin,
                    first_seq: from,
                    items: &batch.items[skip..skip + n],
                    received,
                });
            }
        }
        serde_json::to_vec(&answer)
            .map(Bytes::from)
            .map_err(|e| RemoteError::new(codes::INTERNAL, e.to_string()))
    }
}

/// Routes requests to the Raft service, the link service or the site
/// query service by method.
pub struct Methods {
    raft: Arc<dyn Handler>,
    link: Arc<LinkService>,
    query: Option<Arc<QueryService>>,
}

impl Methods {
    /// One handler for both (site queries are answered "unknown method").
    pub fn handler(raft: Arc<dyn Handler>, link: Arc<LinkService>) -> Arc<dyn Handler> {
        Arc::new(Methods {
            raft,
            link,
            query: None,
        })
    }

    /// One handler for the three: Raft, link batches and
    /// [`METHOD_SITE_QUERY`] questions from linked sites.
    pub fn with_query(
        raft: Arc<dyn Handler>,
        link: Arc<LinkService>,
        query: Arc<QueryService>,
    ) -> Arc<dyn Handler> {
        Arc::new(Methods {
            raft,
            link,
            query: Some(query),
        })
    }
}

impl Handler for Methods {
    fn handle(&self, req: Request) -> HandlerFuture {
        if req.method == METHOD_LINK_BATCH {
            let link = self.link.clone();
            Box::pin(async move { link.receive(req).await })
        } else if let (METHOD_SITE_QUERY, Some(query)) = (req.method, &self.query) {
            let query = query.clone();
            Box::pin(async move { query.receive(req).await })
        } else {
            self.raft.handle(req)
        }
    }
}

/// Live figures of one outgoing link (shared with the API).
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkStats {
    /// `up`, `down` or `idle` (not leading).
    pub state: String,
    /// Highest sequence acknowledged by the remote site.
    pub acked: u64,
    /// Deliveries in the outbox not yet acknowledged.
    pub backlog: u64,
    /// Round trip of the last batch, ms.
    pub rtt_ms: Option<f64>,
    /// Deliveries acknowledged since this node started.
    pub delivered: u64,
    /// Last error.
    pub last_error: Option<String>,
    /// The node of the remote site in use.
    pub peer: Option<String>,
    /// QUIC path figures of the connection in use: congestion window
    /// (bytes), smoothed RTT (ms), packets lost, congestion events.
    pub quic: Option<QuicPath>,
}

/// QUIC path figures of a link's connection.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuicPath {
    /// Congestion window, bytes.
    pub cwnd: u64,
    /// Smoothed RTT, ms.
    pub rtt_ms: f64,
    /// Packets sent.
    pub sent_packets: u64,
    /// Packets declared lost.
    pub lost_packets: u64,
    /// Congestion events (window reductions).
    pub congestion_events: u64,
}

/// Shared link figures by remote site.
pub type LinkStatsMap = Arc<std::sync::Mutex<HashMap<String, LinkStats>>>;

fn set_stats(stats: &LinkStatsMap, remote: &str, f: impl FnOnce(&mut LinkStats)) {
    let mut m = match stats.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    f(m.entry(remote.to_string()).or_default());
}

/// Drain this site's outbox for `remote` over `endpoint`, for as long as
/// the process runs; active only while this node leads its site.
pub async fn run_sender(
    site: Site,
    endpoint: Endpoint,
    remote: RemoteSite,
    cfg: SenderConfig,
    stats: LinkStatsMap,
) {
    loop {
        set_stats(&stats, &remote.site, |s| s.state = "idle".into());
        // Only a leader its site confirmed drains the outbox (a restarted
        // old leader resumes its stale term for a moment).
        if !site.wait_confirmed_leading().await {
            return;
        }
        tokio::select! {
            _ = site.wait_leading(false) => {}
            _ = drain(&site, &endpoint, &remote, cfg, &stats) => {}
        }
    }
}

type Reply = (Instant, Result<Bytes, RequestError>);

/// The QUIC send priority of the batch starting at `first_seq`: lower
/// sequences higher (it wraps every 2^30 sequences, which only reorders the
/// batches in flight at that moment).
fn batch_priority(first_seq: u64) -> i32 {
    -((first_seq & ((1 << 30) - 1)) as i32)
}

async fn drain(
    site: &Site,
    endpoint: &Endpoint,
    remote: &RemoteSite,
    cfg: SenderConfig,
    stats: &LinkStatsMap,
) {
    let own = endpoint.identity().site.clone();
    let acked0 = site
        .state
        .view()
        .links
        .out
        .get(&remote.site)
        .map(|o| o.acked)
        .unwrap_or(0);
    let mut sender = Sender::new(cfg, acked0);
    let mut links = site.state.subscribe_links();
    let mut peer_idx = 0usize;
    let mut backoff = Duration::from_millis(50);
    let mut in_flight: FuturesUnordered<
        std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send>>,
    > = FuturesUnordered::new();
    let mut acked_written = acked0;
    let mut ack_write: Option<tokio::task::JoinHandle<()>> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_ack_write = Instant::now() - ACK_WRITE_EVERY;
    loop {
        let last = site
            .state
            .view()
            .links
            .out
            .get(&remote.site)
            .map(|o| o.last_seq)
            .unwrap_or(0);
        sender.outbox_extended(last);
        let Some((node, addr)) = remote
            .nodes
            .get(peer_idx % remote.nodes.len().max(1))
            .cloned()
        else {
            set_stats(stats, &remote.site, |s| {
                s.state = "down".into();
                s.last_error = Some("no nodes configured for the remote site".into());
            });
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let peer: Arc<PeerClient> = match NodeIdentity::new(node, remote.site.clone()) {
            Ok(id) => endpoint.peer(id, addr.clone()),
            Err(e) => {
                set_stats(stats, &remote.site, |s| s.last_error = Some(e.to_string()));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(w) = sender.want() {
            let (entries, specs) =
                match site
                    .state
                    .read_outbox_with_specs(&remote.site, w.first, w.max_items)
                {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the outbox");
                        break;
                    }
                };
            let mut items = Vec::new();
            let mut bytes = 0usize;
            for (expect, e) in (w.first..).zip(entries) {
                if e.seq != expect || (bytes + e.body.len() > MAX_BATCH_BYTES && !items.is_empty())
                {
                    break;
                }
                bytes += e.body.len();
                items.push(Bytes::from(e.body));
            }
            if items.is_empty() {
                break;
            }
            let last = w.first + items.len() as u64 - 1;
            let batch = Batch {
                origin: own.clone(),
                first_seq: w.first,
                items,
                specs: specs
                    .into_iter()
                    .map(|(h, d)| (Bytes::from(h), Bytes::from(d)))
                    .collect(),
            };
            let body = match encode_batch(&batch) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a link batch");
                    break;
                }
            };
            let p = peer.clone();
            let first = w.first;
            let sent = Instant::now();
            sender.sent(first, last, body.len(), sent);
            // Earlier batches first: the receiver commits in order, so a
            // batch that arrives before its predecessor only waits.
            let priority = batch_priority(first);
            in_flight.push(Box::pin(async move {
                (
                    sent,
                    p.request_with_priority(METHOD_LINK_BATCH, body, priority)
                        .await,
                )
            }));
        }
        set_stats(stats, &remote.site, |s| {
            s.backlog = sender.backlog();
            s.acked = sender.acked();
            s.peer = Some(format!("node {node} at {addr}"));
        });
        // Persist the acknowledgement: one write at a time, at most one per
        // ACK_WRITE_EVERY (it only frees the outbox and moves where a new
        // leader resumes; every write is a Raft commit competing with the
        // traffic's own).
        let ack_due = sender.acked() > acked_written;
        if ack_due
            && last_ack_write.elapsed() >= ACK_WRITE_EVERY
            && ack_write.as_ref().is_none_or(|h| h.is_finished())
        {
            last_ack_write = Instant::now();
            let upto = sender.acked();
            let site2 = site.clone();
            let remote_name = remote.site.clone();
            acked_written = upto;
            ack_write = Some(tokio::spawn(async move {
                let _ = site2
                    .write(Command::LinkAcked {
                        remote: remote_name,
                        upto,
                    })
                    .await;
            }));
        }
        // Not written yet (too soon, or a write in flight: its commit wakes
        // this loop through `links`).
        let ack_pending = sender.acked() > acked_written;
        tokio::select! {
            Some((sent, reply)) = in_flight.next(), if !in_flight.is_empty() => {
                match reply.map_err(|e| e.to_string()).and_then(|b| {
                    serde_json::from_slice::<LinkAnswer>(&b).map_err(|e| e.to_string())
                }) {
                    Ok(LinkAnswer::Ack { upto }) => {
                        let before = sender.acked();
                        sender.on_ack(upto);
                        backoff = Duration::from_millis(50);
                        set_stats(stats, &remote.site, |s| {
                            s.state = "up".into();
                            s.rtt_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
                            s.delivered += sender.acked().saturating_sub(before);
                        });
                    }
                    Ok(LinkAnswer::Gap { expected }) => sender.on_gap(expected),
                    Ok(LinkAnswer::Enqueued { .. }) => sender.on_disconnect(),
                    Err(e) => {
                        tracing::debug!(remote = remote.site, error = %e, "link batch failed");
                        set_stats(stats, &remote.site, |s| {
                            s.state = "down".into();
                            s.last_error = Some(e.clone());
                        });
                        sender.on_disconnect();
                        in_flight = FuturesUnordered::new();
                        peer_idx += 1;
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(500));
                    }
                }
            }
            _ = links.changed() => {}
            () = tokio::time::sleep_until((last_ack_write + ACK_WRITE_EVERY).into()),
                if ack_pending && last_ack_write.elapsed() < ACK_WRITE_EVERY => {}
            _ = tick.tick() => {
                if sender.on_tick(Instant::now()) {
                    in_flight = FuturesUnordered::new();
                }
                let quic = peer.path_stats().map(|p| QuicPath {
                    cwnd: p.cwnd,
                    rtt_ms: p.rtt.as_secs_f64() * 1000.0,
                    sent_packets: p.sent_packets,
                    lost_packets: p.lost_packets,
                    congestion_events: p.congestion_events,
                });
                set_stats(stats, &remote.site, |s| s.quic = quic);
            }
        }
    }
}
