//! The cross-site part of the event lookup and of the rule status: what
//! this node asks linked sites over the QUIC transport
//! ([`strait_federation::link::query`]), and how it answers them.
//!
//! Questions ([`SiteQuestion`], JSON):
//! - `lookup {bus, source?, id}`: the asked site looks the event up among
//!   the events that entered there and, if it has it, answers with the
//!   whole lookup (having asked, in turn, the sites its targets live at for
//!   their deliveries); else "not found". A node asked to look up an event
//!   that did not enter at its site asks every linked site this, in
//!   parallel, and returns the first that has it.
//! - `deliveries {bus, source, id, ingestMs}`: the deliveries the asked
//!   site made (or is making) for the asking site's event, from its journal
//!   (such deliveries are always recorded there). The site the event
//!   entered at asks each site whose targets show `in-transit` here, and
//!   puts their answers over those placeholders.
//! - `ruleStatus {bus, rule}`: the asked site's replicated counters of the
//!   rule's targets it delivers, per target (the events that entered there
//!   and those it delivers for other sites, summed), with the backlog of
//!   its inboxes. Every node of every site thus shows the same figures for
//!   a target: the delivering site's.
//!
//! Every question is answered by any node of the asked site from its
//! replica of the site's state; a site none of whose nodes answers within
//! the deadline is listed in `unreachableSites`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use strait_federation::SiteState;
use strait_federation::journal::{DeliveryStatus, TargetCounts};
use strait_federation::link::query::{QueryError, SiteQueryClient};
use strait_federation::store::links::inbox_cursor_key;
use strait_federation::store::state::target_key;
use strait_federation::transport::RemoteError;
use strait_federation::transport::codec::codes;

use super::{DeliveryView, Lookup, LookupFailure, deliveries_here, lookup_local};
use crate::dispatch::journal::inbound_target_key;

/// How long a site has to answer a `deliveries` or `ruleStatus` question.
pub const DELIVERIES_DEADLINE: Duration = Duration::from_millis(1500);

/// How long a site has to answer a `lookup` question (it asks the sites of
/// its targets in turn, within [`DELIVERIES_DEADLINE`]).
pub const LOOKUP_DEADLINE: Duration = Duration::from_millis(3500);

/// A question to a linked site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "query", rename_all = "camelCase")]
pub enum SiteQuestion {
    /// The event `(bus, source, id)`, if it entered at the asked site.
    #[serde(rename_all = "camelCase")]
    Lookup {
        /// The bus.
        bus: String,
        /// Its source, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        /// Its id.
        id: String,
    },
    /// The deliveries the asked site makes for the asking site's event.
    #[serde(rename_all = "camelCase")]
    Deliveries {
        /// The bus (at the asking site).
        bus: String,
        /// The event's source.
        source: String,
        /// The event's id.
        id: String,
        /// Its ingest time at the asking site, ms.
        ingest_ms: u64,
    },
    /// The asked site's progress on the targets of the asking site's rule.
    #[serde(rename_all = "camelCase")]
    RuleStatus {
        /// The bus (at the asking site).
        bus: String,
        /// The rule.
        rule: String,
    },
}

/// A linked site's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "camelCase")]
pub enum SiteAnswer {
    /// The event entered there: the whole lookup.
    Found {
        /// The lookup.
        lookup: Box<Lookup>,
    },
    /// The event did not enter there.
    NotFound,
    /// Several sources posted an event with this id there.
    Ambiguous {
        /// Their sources.
        sources: Vec<String>,
    },
    /// Its deliveries for the asking site's event.
    Deliveries {
        /// The deliveries.
        deliveries: Vec<DeliveryView>,
    },
    /// Its progress on the asking site's rule, by target id.
    #[serde(rename_all = "camelCase")]
    RuleStatus {
        /// Per target it delivers.
        targets: BTreeMap<String, RemoteTargetStatus>,
        /// Deliveries in its inboxes not yet delivered (all origins, all
        /// rules).
        inbox_backlog: u64,
    },
}

/// One target's progress at the site that delivers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteTargetStatus {
    /// Its replicated counters.
    pub counts: TargetCounts,
}

/// The cross-site lookup: asks linked sites (cluster mode with links),
/// answers their questions.
pub struct Sites {
    state: Arc<SiteState>,
    site: String,
    client: Option<SiteQueryClient>,
}

impl std::fmt::Debug for Sites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sites")
            .field("site", &self.site)
            .field("client", &self.client)
            .finish()
    }
}

fn encode(q: &SiteQuestion) -> Bytes {
    // A question is plain strings and numbers: it always encodes.
    Bytes::from(serde_json::to_vec(q).unwrap_or_default())
}

fn decode(site: &str, r: Result<Bytes, QueryError>) -> Result<SiteAnswer, String> {
    let body = r.map_err(|e| e.to_string())?;
    serde_json::from_slice(&body).map_err(|e| format!("site {site:?} answered in a bad form: {e}"))
}

impl Sites {
    /// The lookup of site `site` over `state`, asking linked sites through
    /// `client` (`None`: this site alone).
    pub fn new(state: Arc<SiteState>, site: String, client: Option<SiteQueryClient>) -> Sites {
        Sites {
            state,
            site,
            client,
        }
    }

    /// [`lookup_local`], off the async threads (it may scan).
    async fn lookup_here(
        &self,
        bus: &str,
        source: Option<&str>,
        id: &str,
    ) -> Result<Lookup, LookupFailure> {
        let (state, site) = (self.state.clone(), self.site.clone());
        let (bus, source, id) = (bus.to_string(), source.map(str::to_string), id.to_string());
        tokio::task::spawn_blocking(move || {
            lookup_local(&state, &site, &bus, source.as_deref(), &id)
        })
        .await
        .map_err(|e| LookupFailure::Storage(format!("the lookup task failed: {e}")))?
    }

    fn linked(&self) -> Vec<String> {
        self.client
            .as_ref()
            .map(|c| c.sites().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Look the event up: here if it entered here (with the other sites'
    /// deliveries), else at the linked sites.
    pub async fn lookup(
        &self,
        bus: &str,
        source: Option<&str>,
        id: &str,
    ) -> Result<Lookup, LookupFailure> {
        match self.lookup_here(bus, source, id).await {
            Ok(mut l) => {
                self.complete(&mut l).await;
                Ok(l)
            }
            Err(e @ (LookupFailure::EventNotFound { .. } | LookupFailure::BusNotFound { .. })) => {
                match self.lookup_elsewhere(bus, source, id).await {
                    Some(r) => r,
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Ask every linked site; the first that has the event answers. `None`
    /// when none has it (see [`LookupFailure::NotFoundAt`] for sites that
    /// did not answer).
    async fn lookup_elsewhere(
        &self,
        bus: &str,
        source: Option<&str>,
        id: &str,
    ) -> Option<Result<Lookup, LookupFailure>> {
        let client = self.client.as_ref()?;
        let q = encode(&SiteQuestion::Lookup {
            bus: bus.to_string(),
            source: source.map(str::to_string),
            id: id.to_string(),
        });
        let mut asks: FuturesUnordered<_> = self
            .linked()
            .into_iter()
            .map(|s| {
                let q = q.clone();
                async move {
                    let r = client.ask(&s, q, LOOKUP_DEADLINE).await;
                    let a = decode(&s, r);
                    (s, a)
                }
            })
            .collect();
        let mut unreachable = BTreeSet::new();
        let mut sources = BTreeSet::new();
        while let Some((site, answer)) = asks.next().await {
            match answer {
                Ok(SiteAnswer::Found { lookup }) => return Some(Ok(*lookup)),
                Ok(SiteAnswer::Ambiguous { sources: s }) => sources.extend(s),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(site, error = %e, "no lookup answer from a linked site");
                    unreachable.insert(site);
                }
            }
        }
        if !sources.is_empty() {
            return Some(Err(LookupFailure::Ambiguous {
                bus: bus.to_string(),
                id: id.to_string(),
                sources: sources.into_iter().collect(),
            }));
        }
        if !unreachable.is_empty() {
            return Some(Err(LookupFailure::NotFoundAt {
                bus: bus.to_string(),
                event_source: source.map(str::to_string),
                id: id.to_string(),
                unreachable_sites: unreachable.into_iter().collect(),
            }));
        }
        None
    }

    /// Ask the sites this lookup shows `in-transit` deliveries to for what
    /// became of them, and put their answers in; sites that do not answer
    /// go to `unreachableSites`.
    pub async fn complete(&self, l: &mut Lookup) {
        let Some(client) = &self.client else {
            return;
        };
        let sites: BTreeSet<String> = l
            .deliveries
            .iter()
            .filter(|d| d.status == DeliveryStatus::InTransit && d.site != self.site)
            .map(|d| d.site.clone())
            .collect();
        if sites.is_empty() {
            return;
        }
        let Some(source) = l.event.get("source").and_then(Value::as_str) else {
            return;
        };
        let q = encode(&SiteQuestion::Deliveries {
            bus: l.bus.clone(),
            source: source.to_string(),
            id: l
                .event
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            ingest_ms: l.ingest_ms,
        });
        let sites: Vec<String> = sites.into_iter().collect();
        for (site, answer) in client.ask_all(&sites, q, DELIVERIES_DEADLINE).await {
            match decode(&site, answer) {
                Ok(SiteAnswer::Deliveries { deliveries }) => {
                    merge_deliveries(&mut l.deliveries, &site, deliveries)
                }
                Ok(other) => {
                    tracing::warn!(site, ?other, "unexpected answer to a deliveries question");
                    l.unreachable_sites.push(site);
                }
                Err(e) => {
                    tracing::debug!(site, error = %e, "no deliveries answer from a linked site");
                    l.unreachable_sites.push(site);
                }
            }
        }
        l.unreachable_sites.sort();
        l.unreachable_sites.dedup();
    }

    /// The status document of rule `bus/rule` (as built from this site's
    /// state, `view`) with the progress of each target at another site
    /// from that site: `site` on every target, the counters of the
    /// delivering site, and its inbox backlog; sites that did not answer
    /// in `status.unreachableSites`.
    pub async fn rule_status(&self, bus: &str, rule: &str, view: &mut Value) {
        let targets: Vec<(String, String)> = view
            .get("targets")
            .and_then(Value::as_array)
            .map(|ts| {
                ts.iter()
                    .filter_map(|t| {
                        let id = t.get("id")?.as_str()?.to_string();
                        let site = t
                            .get("site")
                            .and_then(Value::as_str)
                            .unwrap_or(&self.site)
                            .to_string();
                        Some((id, site))
                    })
                    .collect()
            })
            .unwrap_or_default();
        // What the origin's hand-over to the link gave up on (a hop limit,
        // a full outbox): dead letters of the target too, added to the
        // delivering site's figures.
        let mut hand_over: BTreeMap<String, TargetCounts> = BTreeMap::new();
        for (id, site) in &targets {
            if let Some(t) = view.pointer_mut(&format!("/status/targets/{}", pointer_token(id))) {
                t["site"] = json!(site);
                if *site == self.site {
                    // Delivered here: this site's own events (counted by
                    // the caller) and those it delivers for other sites.
                    let mut c = counts_in(t);
                    add_counts(&mut c, &self.inbound_here(bus, rule, id));
                    put_counts(t, Some(&c));
                } else {
                    // What this site counted is the hand-over to the link;
                    // the delivering site's counters replace the rest below
                    // (null if it does not answer).
                    t["handedOver"] = t.get("delivered").cloned().unwrap_or(json!(0));
                    let mut failed = counts_in(t);
                    failed.delivered = 0;
                    t["handOver"] = json!({
                        "deadLettered": failed.dead_lettered,
                        "dropped": failed.dropped,
                        "deadLetterFailed": failed.dead_letter_failed,
                        "failedAttempts": failed.failed_attempts,
                        "lastError": failed.last_error,
                    });
                    hand_over.insert(id.clone(), failed);
                    put_counts(t, None);
                }
            }
        }
        let remote: BTreeSet<String> = targets
            .iter()
            .filter(|(_, s)| *s != self.site)
            .map(|(_, s)| s.clone())
            .collect();
        let mut unreachable = Vec::new();
        if let (Some(client), false) = (&self.client, remote.is_empty()) {
            let q = encode(&SiteQuestion::RuleStatus {
                bus: bus.to_string(),
                rule: rule.to_string(),
            });
            let sites: Vec<String> = remote.into_iter().collect();
            for (site, answer) in client.ask_all(&sites, q, DELIVERIES_DEADLINE).await {
                match decode(&site, answer) {
                    Ok(SiteAnswer::RuleStatus {
                        targets: got,
                        inbox_backlog,
                    }) => {
                        for (id, tsite) in &targets {
                            if *tsite != site {
                                continue;
                            }
                            let ptr = format!("/status/targets/{}", pointer_token(id));
                            let Some(t) = view.pointer_mut(&ptr) else {
                                continue;
                            };
                            let mut c = got.get(id).map(|s| s.counts.clone()).unwrap_or_default();
                            if let Some(failed) = hand_over.get(id) {
                                add_counts(&mut c, failed);
                            }
                            put_counts(t, Some(&c));
                            t["inboxBacklog"] = json!(inbox_backlog);
                        }
                    }
                    Ok(other) => {
                        tracing::warn!(site, ?other, "unexpected answer to a rule status question");
                        unreachable.push(site);
                    }
                    Err(e) => {
                        tracing::debug!(site, error = %e, "no rule status from a linked site");
                        unreachable.push(site);
                    }
                }
            }
        }
        if let Some(status) = view.get_mut("status") {
            status["unreachableSites"] = json!(unreachable);
        }
    }

    /// Answer a question of a node of the linked site `from`.
    pub async fn answer(&self, from: String, body: Bytes) -> Result<Bytes, RemoteError> {
        let q: SiteQuestion = serde_json::from_slice(&body).map_err(|e| {
            RemoteError::new(codes::BAD_REQUEST, format!("not a site question: {e}"))
        })?;
        let answer = match q {
            SiteQuestion::Lookup { bus, source, id } => {
                match self.lookup_here(&bus, source.as_deref(), &id).await {
                    Ok(mut l) => {
                        self.complete(&mut l).await;
                        SiteAnswer::Found {
                            lookup: Box::new(l),
                        }
                    }
                    Err(
                        LookupFailure::EventNotFound { .. } | LookupFailure::BusNotFound { .. },
                    ) => SiteAnswer::NotFound,
                    Err(LookupFailure::Ambiguous { sources, .. }) => {
                        SiteAnswer::Ambiguous { sources }
                    }
                    Err(e) => return Err(RemoteError::new(codes::INTERNAL, e.to_string())),
                }
            }
            SiteQuestion::Deliveries {
                bus,
                source,
                id,
                ingest_ms,
            } => {
                let deliveries = deliveries_here(
                    &self.state,
                    &self.site,
                    &from,
                    &bus,
                    &source,
                    &id,
                    ingest_ms,
                )
                .map_err(|e| RemoteError::new(codes::INTERNAL, e.to_string()))?;
                SiteAnswer::Deliveries { deliveries }
            }
            SiteQuestion::RuleStatus { bus, rule } => self
                .rule_status_here(&bus, &rule)
                .map_err(|e| RemoteError::new(codes::INTERNAL, e))?,
        };
        serde_json::to_vec(&answer)
            .map(Bytes::from)
            .map_err(|e| RemoteError::new(codes::INTERNAL, e.to_string()))
    }

    /// This site's counters of rule `bus/rule`'s targets it delivers, by
    /// target id: for each, the events that entered here (its cursor key,
    /// when the target is delivered here) plus the deliveries made here for
    /// every other site (their inbound keys); and the backlog of its
    /// inboxes.
    fn rule_status_here(&self, bus: &str, rule: &str) -> Result<SiteAnswer, String> {
        let counts = self
            .state
            .target_counts()
            .map_err(|e| format!("state read failed: {e}"))?;
        let view = self.state.view();
        let mut targets: BTreeMap<String, RemoteTargetStatus> = BTreeMap::new();
        // Targets of the rule as this site has it (a shared rule) that it
        // delivers itself.
        if let Some(ts) = view
            .rules
            .get(&(bus.to_string(), rule.to_string()))
            .and_then(|spec| spec.get("targets"))
            .and_then(Value::as_array)
        {
            for t in ts {
                let Some(id) = t.get("id").and_then(Value::as_str) else {
                    continue;
                };
                let site = t.get("site").and_then(Value::as_str);
                if site.is_none_or(|s| s == self.site) {
                    let own = counts
                        .get(&target_key(bus, rule, id))
                        .cloned()
                        .unwrap_or_default();
                    targets.insert(id.to_string(), RemoteTargetStatus { counts: own });
                }
            }
        }
        let mut backlog = 0u64;
        for (origin, received) in &view.links.inbound {
            let cursor = view
                .cursors
                .get(&inbox_cursor_key(origin))
                .copied()
                .unwrap_or(1);
            backlog += (received + 1).saturating_sub(cursor);
            let prefix = inbound_target_key(origin, bus, rule, "");
            for (k, c) in counts.range(prefix.clone()..) {
                let Some(id) = k.strip_prefix(&prefix) else {
                    break;
                };
                add_counts(&mut targets.entry(id.to_string()).or_default().counts, c);
            }
        }
        Ok(SiteAnswer::RuleStatus {
            targets,
            inbox_backlog: backlog,
        })
    }

    /// What this site delivered of `bus/rule`'s target `id` for the other
    /// sites (their inbound keys), summed.
    fn inbound_here(&self, bus: &str, rule: &str, id: &str) -> TargetCounts {
        let counts = self.state.target_counts().unwrap_or_default();
        let mut sum = TargetCounts::default();
        for origin in self.state.view().links.inbound.keys() {
            if let Some(c) = counts.get(&inbound_target_key(origin, bus, rule, id)) {
                add_counts(&mut sum, c);
            }
        }
        sum
    }
}

/// Add `c` to `into` (the last errors: `into`'s if it has one).
fn add_counts(into: &mut TargetCounts, c: &TargetCounts) {
    into.delivered += c.delivered;
    into.dead_lettered += c.dead_lettered;
    into.dropped += c.dropped;
    into.dead_letter_failed += c.dead_letter_failed;
    into.failed_attempts += c.failed_attempts;
    if into.last_error.is_none() {
        into.last_error.clone_from(&c.last_error);
    }
    if into.last_dead_letter_error.is_none() {
        into.last_dead_letter_error
            .clone_from(&c.last_dead_letter_error);
    }
}

/// Write `c` into a target's status document (the fields
/// `GET /v1/buses/{bus}/rules/{rule}` shows); `None`: unknown (null).
pub fn put_counts(t: &mut Value, c: Option<&TargetCounts>) {
    t["delivered"] = json!(c.map(|c| c.delivered));
    t["deadLettered"] = json!(c.map(|c| c.dead_lettered));
    t["dropped"] = json!(c.map(|c| c.dropped));
    t["deadLetterFailed"] = json!(c.map(|c| c.dead_letter_failed));
    t["failedAttempts"] = json!(c.map(|c| c.failed_attempts));
    t["lastError"] = json!(c.and_then(|c| c.last_error.clone()));
    t["lastDeadLetterError"] = json!(c.and_then(|c| c.last_dead_letter_error.clone()));
}

/// The counters in a target's status document (see [`put_counts`]).
fn counts_in(t: &Value) -> TargetCounts {
    let n = |k: &str| t.get(k).and_then(Value::as_u64).unwrap_or(0);
    let text = |k: &str| t.get(k).and_then(Value::as_str).map(str::to_string);
    TargetCounts {
        delivered: n("delivered"),
        dead_lettered: n("deadLettered"),
        dropped: n("dropped"),
        dead_letter_failed: n("deadLetterFailed"),
        failed_attempts: n("failedAttempts"),
        last_error: text("lastError"),
        last_dead_letter_error: text("lastDeadLetterError"),
    }
}

/// `s` as one JSON pointer token.
fn pointer_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Put the deliveries `site` reports over the `in-transit` placeholders of
/// its targets; deliveries it reports that the lookup has no place for (a
/// rule changed since) are added.
fn merge_deliveries(into: &mut Vec<DeliveryView>, site: &str, got: Vec<DeliveryView>) {
    for mut d in got {
        d.site = site.to_string();
        match into
            .iter_mut()
            .find(|x| x.site == site && x.rule == d.rule && x.target == d.target)
        {
            Some(x) if x.status == DeliveryStatus::InTransit => *x = d,
            Some(_) => {}
            None => into.push(d),
        }
    }
    into.sort_by(|a, b| (&a.rule, &a.target).cmp(&(&b.rule, &b.target)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lookup::AttemptView;
    use strait_federation::journal::AttemptOutcome;

    fn view(site: &str, target: &str, status: DeliveryStatus, attempts: usize) -> DeliveryView {
        DeliveryView {
            site: site.into(),
            rule: "r".into(),
            target: target.into(),
            status,
            attempts: (0..attempts)
                .map(|_| AttemptView {
                    time: "2026-01-01T00:00:00.000Z".into(),
                    outcome: AttemptOutcome::Failed,
                    http_status: Some(500),
                    error: None,
                })
                .collect(),
            omitted_attempts: 0,
            reason: None,
        }
    }

    #[test]
    fn remote_deliveries_replace_only_their_sites_placeholders() {
        let mut into = vec![
            view("idc", "a", DeliveryStatus::Delivered, 0),
            view("aws", "b", DeliveryStatus::InTransit, 0),
            view("aws", "c", DeliveryStatus::InTransit, 0),
            view("aliyun", "d", DeliveryStatus::InTransit, 0),
        ];
        merge_deliveries(
            &mut into,
            "aws",
            vec![
                view("ignored", "b", DeliveryStatus::DeadLettered, 3),
                view("aws", "e", DeliveryStatus::Retrying, 1),
                view("aws", "a", DeliveryStatus::Delivered, 1),
            ],
        );
        let got: Vec<(&str, &str, DeliveryStatus, usize)> = into
            .iter()
            .map(|d| {
                (
                    d.site.as_str(),
                    d.target.as_str(),
                    d.status,
                    d.attempts.len(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("idc", "a", DeliveryStatus::Delivered, 0),
                ("aws", "a", DeliveryStatus::Delivered, 1),
                ("aws", "b", DeliveryStatus::DeadLettered, 3),
                ("aws", "c", DeliveryStatus::InTransit, 0),
                ("aliyun", "d", DeliveryStatus::InTransit, 0),
                ("aws", "e", DeliveryStatus::Retrying, 1),
            ]
        );
    }

    #[test]
    fn questions_and_answers_have_a_stable_form() {
        let q = SiteQuestion::Deliveries {
            bus: "b".into(),
            source: "s".into(),
            id: "i".into(),
            ingest_ms: 7,
        };
        let s = serde_json::to_string(&q).expect("encode");
        assert_eq!(
            s,
            r#"{"query":"deliveries","bus":"b","source":"s","id":"i","ingestMs":7}"#
        );
        let q2: SiteQuestion =
            serde_json::from_str(r#"{"query":"lookup","bus":"b","id":"i"}"#).expect("decode");
        assert_eq!(
            q2,
            SiteQuestion::Lookup {
                bus: "b".into(),
                source: None,
                id: "i".into()
            }
        );
        let a = serde_json::to_string(&SiteAnswer::NotFound).expect("encode");
        assert_eq!(a, r#"{"answer":"notFound"}"#);
        let r = SiteAnswer::RuleStatus {
            targets: BTreeMap::from([(
                "t".to_string(),
                RemoteTargetStatus {
                    counts: TargetCounts {
                        delivered: 3,
                        ..TargetCounts::default()
                    },
                },
            )]),
            inbox_backlog: 2,
        };
        let s = serde_json::to_string(&r).expect("encode");
        assert!(s.contains(r#""inboxBacklog":2"#), "{s}");
        let back: SiteAnswer = serde_json::from_str(&s).expect("decode");
        assert_eq!(back, r);
    }

    #[test]
    fn rule_status_names_each_targets_site() {
        let dir = tempfile::tempdir().expect("dir");
        let sites = Sites {
            state: SiteState::open(&dir.path().join("s.redb")).expect("state"),
            site: "idc".into(),
            client: None,
        };
        let mut v = json!({
            "targets": [{"id": "here"}, {"id": "far/away", "site": "aws"}],
            "status": {"targets": {"here": {"delivered": 1}, "far/away": {"delivered": 0}}},
        });
        futures::executor::block_on(sites.rule_status("b", "r", &mut v));
        assert_eq!(v["status"]["targets"]["here"]["site"], json!("idc"));
        assert_eq!(v["status"]["targets"]["far/away"]["site"], json!("aws"));
        // Without an answer from aws its counters are unknown; what idc
        // counted is the hand-over.
        assert_eq!(v["status"]["targets"]["far/away"]["delivered"], Value::Null);
        assert_eq!(v["status"]["targets"]["far/away"]["handedOver"], json!(0));
        assert_eq!(v["status"]["targets"]["here"]["delivered"], json!(1));
        assert_eq!(v["status"]["unreachableSites"], json!([]));
    }
}
