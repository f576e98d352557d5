//! Cross-site delivery on the node: a target whose `site` is another site
//! becomes a delivery in this site's outbox for that site ([`LinkSink`],
//! batched through Raft by [`Outbox`]); link senders drain the outboxes
//! while this node leads; the inbox of deliveries received from other
//! sites is delivered by `crate::dispatch::inbound`.
//!
//! A delivery carries the bus, the rule's name, the hash of its definition
//! (the definition itself travels once per outbox write and link batch, see
//! [`LinkSpec`]), the target id, the event (untransformed: the remote site
//! applies the target's transform), its ingestion time, the hop count and
//! the trace context.

pub(crate) mod hops;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use strait_adapters::{DeliveryError, DeliveryFuture, Sink};
use strait_federation::link::proto::SenderConfig;
use strait_federation::link::query::SiteQueryClient;
use strait_federation::link::service::{LinkStatsMap, RemoteSite, run_sender};
use strait_federation::store::links::inbox_cursor_key;
use strait_federation::transport::Endpoint;
use strait_federation::{Command, CommandResponse, LinkAnswer, LinkSpec, Site, SiteState};
use strait_routing::event::Event;
use tokio::sync::{mpsc, oneshot};

use crate::cluster::Writer;
use crate::config::NodeConfig;
use crate::util::now_ms;
use hops::{MAX_HOPS, hop_limit_error, hops_of};

/// One delivery on a link.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The hash of the rule's definition as the origin evaluated it (the
    /// definition is in the link's definitions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_hash: Option<String>,
    /// The bus the event was ingested on (at the origin).
    pub bus: String,
    /// The rule that matched.
    pub rule: String,
    /// The rule's definition itself (deliveries written before definitions
    /// travelled separately).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_spec: Option<Box<RawValue>>,
    /// The target to deliver to.
    pub target: String,
    /// Ingestion time at the origin, ms.
    pub ingest_ms: u64,
    /// When it entered the outbox, ms.
    pub enqueued_ms: u64,
    /// Sites passed so far.
    pub hops: u32,
    /// W3C trace context of the link hop.
    pub traceparent: String,
    /// The event, structured JSON.
    pub event: Box<RawValue>,
}

/// The encoding side of [`Delivery`] (the same JSON), borrowing: the event
/// straight from its map. `ruleHash` comes first: the link reads it there
/// without parsing the rest ([`strait_federation::link::proto::item_spec_hash`]).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeliveryRef<'a> {
    rule_hash: &'a str,
    bus: &'a str,
    rule: &'a str,
    target: &'a str,
    ingest_ms: u64,
    enqueued_ms: u64,
    hops: u32,
    traceparent: &'a str,
    event: &'a serde_json::Map<String, Value>,
}

struct Pending {
    remote: String,
    item: Box<RawValue>,
    spec: Arc<LinkSpec>,
    reply: oneshot::Sender<Result<(), String>>,
}

/// Group commit for outboxes: deliveries queued at the same time go into
/// one Raft entry per remote site.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Pending>,
    /// Deliveries admitted but not yet committed, per remote site (so the
    /// outbox bound holds with many deliveries in flight).
    admitted: Arc<std::sync::Mutex<HashMap<String, u64>>>,
}

/// A place in the outbox for one delivery, held until it is committed.
struct Admission {
    admitted: Arc<std::sync::Mutex<HashMap<String, u64>>>,
    remote: String,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut m = match self.admitted.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = m.get_mut(&self.remote) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Outbox {
    /// Start the batching task.
    pub fn start(writer: Writer) -> Outbox {
        let (tx, mut rx) = mpsc::channel::<Pending>(64 * 1024);
        tokio::spawn(async move {
            let permits = Arc::new(tokio::sync::Semaphore::new(2));
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let Some(first) = rx.recv().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < 4096 {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                let writer = writer.clone();
                tokio::spawn(async move {
                    let mut by_remote: HashMap<String, Vec<Pending>> = HashMap::new();
                    for p in batch {
                        by_remote.entry(p.remote.clone()).or_default().push(p);
                    }
                    for (remote, ps) in by_remote {
                        let mut items: Vec<Box<RawValue>> = Vec::with_capacity(ps.len());
                        let mut replies = Vec::with_capacity(ps.len());
                        let mut specs: Vec<LinkSpec> = Vec::new();
                        for p in ps {
                            if !specs.iter().any(|s| s.hash == p.spec.hash) {
                                specs.push(LinkSpec::clone(&p.spec));
                            }
                            items.push(p.item);
                            replies.push(p.reply);
                        }
                        let r = writer
                            .write(Command::LinkEnqueue {
                                remote: remote.clone(),
                                items: items.into(),
                                specs,
                            })
                            .await;
                        let answer = match r {
                            Ok(CommandResponse::Link(LinkAnswer::Enqueued { .. })) => Ok(()),
                            Ok(other) => Err(format!("unexpected answer {other:?}")),
                            Err(e) => Err(e.to_string()),
                        };
                        for reply in replies {
                            let _ = reply.send(answer.clone());
                        }
                    }
                    drop(permit);
                });
            }
        });
        Outbox {
            tx,
            admitted: Arc::default(),
        }
    }

    /// Admit one delivery for `remote` if the committed `depth` plus the
    /// deliveries admitted and not yet committed stay below `limit`.
    fn admit(&self, remote: &str, depth: u64, limit: u64) -> Option<Admission> {
        let mut m = match self.admitted.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let n = m.entry(remote.to_string()).or_insert(0);
        if depth.saturating_add(*n) >= limit {
            return None;
        }
        *n += 1;
        Some(Admission {
            admitted: self.admitted.clone(),
            remote: remote.to_string(),
        })
    }

    /// Put one delivery naming the rule definition `spec` in the outbox for
    /// `remote`; resolves once committed.
    pub async fn enqueue(
        &self,
        remote: &str,
        item: Box<RawValue>,
        spec: Arc<LinkSpec>,
    ) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending {
                remote: remote.to_string(),
                item,
                spec,
                reply,
            })
            .await
            .map_err(|_| "the outbox task stopped".to_string())?;
        rx.await
            .map_err(|_| "the outbox task stopped".to_string())?
    }
}

/// The sink of a target that lives in another site.
pub struct LinkSink {
    /// The remote site.
    pub remote: String,
    /// The origin bus.
    pub bus: String,
    /// The rule.
    pub rule: String,
    /// The rule's definition (JSON) and its hash.
    pub spec: Arc<LinkSpec>,
    /// The target id.
    pub target: String,
    /// The outboxes.
    pub outbox: Outbox,
    /// The site state (for the outbox depth).
    pub state: Arc<strait_federation::SiteState>,
    /// Most deliveries waiting for the remote site.
    pub limit: u64,
}

impl Sink for LinkSink {
    /// Without the event's ingest time the delivery carries the time it
    /// is enqueued (the dispatcher always gives it, see
    /// [`Sink::deliver_ingested`]).
    fn deliver<'a>(&'a self, event: &'a Event, traceparent: &'a str) -> DeliveryFuture<'a> {
        self.deliver_ingested(event, traceparent, now_ms())
    }

    /// The delivery carries `ingest_ms`, the event's ingest time at this
    /// (the origin) site: the remote site keys its delivery journal by it.
    fn deliver_ingested<'a>(
        &'a self,
        event: &'a Event,
        traceparent: &'a str,
        ingest_ms: u64,
    ) -> DeliveryFuture<'a> {
        Box::pin(async move {
            let hops = hops_of(event);
            if hops >= MAX_HOPS {
                return Err(hop_limit_error(hops));
            }
            let depth = self
                .state
                .view()
                .links
                .out
                .get(&self.remote)
                .map(|o| o.last_seq.saturating_sub(o.acked))
                .unwrap_or(0);
            let admission = self.outbox.admit(&self.remote, depth, self.limit);
            if admission.is_none() {
                metrics::counter!("strait_link_outbox_full_total", "remote" => self.remote.clone())
                    .increment(1);
                return Err(DeliveryError::Retryable(format!(
                    "the outbox for site {} is full ({depth} deliveries waiting, limit {})",
                    self.remote, self.limit
                )));
            }
            let now = now_ms();
            let d = DeliveryRef {
                rule_hash: &self.spec.hash,
                bus: &self.bus,
                rule: &self.rule,
                target: &self.target,
                ingest_ms,
                enqueued_ms: now,
                hops: hops + 1,
                traceparent,
                event: event.as_map(),
            };
            let raw = serde_json::value::to_raw_value(&d).map_err(|e| {
                DeliveryError::Permanent(format!("cannot encode the delivery: {e}"))
            })?;
            let r = self
                .outbox
                .enqueue(&self.remote, raw, self.spec.clone())
                .await
                .map_err(DeliveryError::Retryable);
            drop(admission);
            r
        })
    }
}

/// Start one sender per linked remote site (each is active only while
/// this node leads its site).
pub fn start_senders(cfg: &NodeConfig, site: &Site, endpoint: &Endpoint, stats: &LinkStatsMap) {
    for remote in remote_sites(cfg) {
        let sender = SenderConfig {
            max_batch_items: cfg.federation.max_batch,
            window: cfg.federation.window,
            window_bytes: cfg.federation.window_bytes,
            retransmit_after: Duration::from_secs(10),
        };
        tokio::spawn(run_sender(
            site.clone(),
            endpoint.clone(),
            remote,
            sender,
            stats.clone(),
        ));
    }
}

/// The linked sites' nodes (as configured in `federation.links`).
fn remote_sites(cfg: &NodeConfig) -> Vec<RemoteSite> {
    cfg.federation
        .links
        .iter()
        .map(|(site, nodes)| RemoteSite {
            site: site.clone(),
            nodes: nodes.iter().map(|m| (m.id, m.raft_addr.clone())).collect(),
        })
        .collect()
}

/// A client asking the linked sites questions (event lookups, rule
/// status) over `endpoint`.
pub fn query_client(cfg: &NodeConfig, endpoint: &Endpoint) -> SiteQueryClient {
    SiteQueryClient::new(endpoint.clone(), remote_sites(cfg))
}

/// The `links` part of `GET /v1/cluster` (and the link gauges).
pub fn status(cfg: &NodeConfig, state: &SiteState, stats: &LinkStatsMap) -> Value {
    let stats = match stats.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    };
    let view = state.view().links.clone();
    let now = now_ms();
    let mut out = Vec::new();
    for remote in cfg.federation.links.keys() {
        let s = stats.get(remote).cloned().unwrap_or_default();
        let o = view.out.get(remote).copied().unwrap_or_default();
        let backlog = o.last_seq.saturating_sub(o.acked);
        let oldest_ms = state
            .read_outbox(remote, o.acked + 1, 1)
            .ok()
            .and_then(|e| e.into_iter().next())
            .and_then(|e| serde_json::from_slice::<Delivery>(&e.body).ok())
            .map(|d| now.saturating_sub(d.enqueued_ms));
        metrics::gauge!("strait_link_backlog", "remote" => remote.clone()).set(backlog as f64);
        let limit = cfg.federation.max_outbox;
        let fill = backlog as f64 / limit.max(1) as f64;
        metrics::gauge!("strait_link_outbox_fill_ratio", "remote" => remote.clone()).set(fill);
        metrics::gauge!("strait_link_oldest_undelivered_seconds", "remote" => remote.clone())
            .set(oldest_ms.unwrap_or(0) as f64 / 1000.0);
        out.push(serde_json::json!({
            "remote": remote,
            "direction": "out",
            "state": if s.state.is_empty() { "idle".to_string() } else { s.state.clone() },
            "rttMs": s.rtt_ms,
            "outboxDepth": backlog,
            "outboxLimit": limit,
            "alarm": if backlog >= limit { "full" } else if fill >= 0.8 { "filling" } else { "ok" },
            "enqueued": o.last_seq,
            "acked": o.acked,
            "oldestUndeliveredMs": oldest_ms,
            "delivered": s.delivered,
            "lastError": s.last_error,
            "peer": s.peer,
            "quic": s.quic,
        }));
    }
    for (origin, committed) in &view.inbound {
        let cursor = state
            .view()
            .cursors
            .get(&inbox_cursor_key(origin))
            .copied()
            .unwrap_or(1);
        out.push(serde_json::json!({
            "remote": origin,
            "direction": "in",
            "received": committed,
            "undelivered": (committed + 1).saturating_sub(cursor),
        }));
    }
    Value::Array(out)
}

/// The shared link figures.
pub fn new_stats() -> LinkStatsMap {
    LinkStatsMap::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_federation::link::proto::spec_hash;

    fn sink(dir: &std::path::Path) -> LinkSink {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        LinkSink {
            remote: "aws".into(),
            bus: "default".into(),
            rule: "r".into(),
            spec: Arc::new(LinkSpec {
                hash: spec_hash(b"{}"),
                spec: RawValue::from_string("{}".into()).expect("raw"),
            }),
            target: "t".into(),
            outbox: Outbox {
                tx,
                admitted: Arc::default(),
            },
            state: strait_federation::SiteState::open(&dir.join("state.redb")).expect("state"),
            limit: 10,
        }
    }

    fn event(hops: Option<u64>) -> Event {
        let mut v =
            serde_json::json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
        if let Some(h) = hops {
            v["straithops"] = serde_json::json!(h);
        }
        Event::from_structured(v).expect("event")
    }

    #[tokio::test]
    async fn the_hop_limit_stops_loops_and_a_stopped_outbox_is_retryable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = sink(dir.path());
        match s.deliver(&event(Some(u64::from(MAX_HOPS))), "").await {
            Err(DeliveryError::Permanent(m)) => assert!(m.contains("hop limit"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
        match s.deliver(&event(None), "").await {
            Err(DeliveryError::Retryable(m)) => assert!(m.contains("outbox"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_delivery_carries_the_ingest_time_at_the_origin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = sink(dir.path());
        let (tx, mut rx) = mpsc::channel(1);
        s.outbox = Outbox {
            tx,
            admitted: Arc::default(),
        };
        let ev = event(None);
        let sent = tokio::spawn(async move { s.deliver_ingested(&ev, "", 1234).await });
        let p = rx.recv().await.expect("queued");
        let d: Delivery = serde_json::from_str(p.item.get()).expect("delivery");
        assert_eq!(d.ingest_ms, 1234);
        assert!(d.enqueued_ms > 1234, "enqueued now");
        p.reply.send(Ok(())).expect("reply");
        sent.await.expect("join").expect("delivered");
    }

    #[test]
    fn admissions_keep_the_outbox_bound() {
        let (tx, _rx) = mpsc::channel(1);
        let o = Outbox {
            tx,
            admitted: Arc::default(),
        };
        let a: Vec<_> = (0..3).filter_map(|_| o.admit("aws", 7, 10)).collect();
        assert_eq!(a.len(), 3);
        assert!(o.admit("aws", 7, 10).is_none(), "7 committed + 3 admitted");
        assert!(o.admit("aliyun", 7, 10).is_some(), "per remote site");
        drop(a);
        assert!(o.admit("aws", 7, 10).is_some(), "released once committed");
    }

    #[test]
    fn deliveries_round_trip_as_json() {
        let spec = r#"{"pattern":{}}"#;
        let hash = spec_hash(spec.as_bytes());
        let d = Delivery {
            rule_hash: Some(hash.clone()),
            bus: "b".into(),
            rule: "r".into(),
            rule_spec: None,
            target: "t".into(),
            ingest_ms: 1,
            enqueued_ms: 2,
            hops: 1,
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            event: RawValue::from_string(r#"{"id":"1"}"#.into()).expect("raw"),
        };
        let s = serde_json::to_string(&d).expect("encode");
        assert!(
            !s.contains("\"ruleSpec\"") && s.contains("\"enqueuedMs\""),
            "{s}"
        );
        // The link reads the hash without parsing the delivery.
        assert_eq!(
            strait_federation::link::proto::item_spec_hash(s.as_bytes()),
            Some(hash.as_str())
        );
        let back: Delivery = serde_json::from_str(&s).expect("decode");
        assert_eq!(back.event.get(), r#"{"id":"1"}"#);
        assert_eq!(back.hops, 1);
        assert_eq!(back.rule_hash.as_deref(), Some(hash.as_str()));
        // The borrowing encoder writes the same document.
        let event: serde_json::Map<String, Value> =
            serde_json::from_str(d.event.get()).expect("event map");
        let r = DeliveryRef {
            rule_hash: &hash,
            bus: &d.bus,
            rule: &d.rule,
            target: &d.target,
            ingest_ms: 1,
            enqueued_ms: 2,
            hops: 1,
            traceparent: &d.traceparent,
            event: &event,
        };
        assert_eq!(serde_json::to_string(&r).expect("encode"), s);
        // Deliveries written before definitions travelled separately still
        // decode, with their definition inline.
        let old = format!(
            r#"{{"bus":"b","rule":"r","ruleSpec":{spec},"target":"t","ingestMs":1,"enqueuedMs":2,"hops":1,"traceparent":"","event":{{}}}}"#
        );
        let back: Delivery = serde_json::from_str(&old).expect("decode");
        assert_eq!(back.rule_hash, None);
        assert_eq!(
            back.rule_spec.map(|r| r.get().to_string()).as_deref(),
            Some(spec)
        );
    }
}
