//! The dispatcher: reads committed events in order, matches each rule,
//! transforms and delivers to every target, with retries, dead letters and
//! progress checkpointed through Raft.
//!
//! Every target has its own worker and cursor, so a slow or dead target
//! never holds up another. Within a target, up to `concurrency` deliveries
//! run at once; the cursor only moves past an event once it is delivered or
//! dead-lettered, so a restart re-sends at most the unfinished tail.

pub(crate) mod bus_target;
pub(crate) mod feed;
pub(crate) mod inbound;
pub mod journal;
mod progress;
mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use strait_adapters::{Sink, SinkContext};
use strait_federation::journal::TargetCounts;
use strait_federation::link::uncommitted::EarlyInbox;
use strait_federation::store::state::target_key;
use strait_federation::{Command, SiteState};
use strait_routing::pattern::RuleSet;
use tokio::task::JoinHandle;

use crate::cluster::Writer;
use crate::config::NodeConfig;
use crate::config::rule::{CompiledRule, RuleSpec};
use crate::dispatch::feed::BusFeed;
use crate::ingest::Ingest;
use crate::links::Outbox;
use crate::util::{AbortOnDrop, now_ms};
pub use journal::{JOURNAL_BUFFER_ENTRIES, JournalBuffer, inbound_target_key};
pub use progress::{Progress, TargetStats, set_cursor, stats};
pub use worker::Remote;
use worker::{TargetWorker, WorkerMetrics, build_sink};

/// What the dispatcher and the inbound workers use of the node.
pub struct Context {
    /// The node's configuration.
    pub cfg: NodeConfig,
    /// The site's replicated state.
    pub state: Arc<SiteState>,
    /// Writes routed to the site's leader (checkpoints).
    pub writer: Writer,
    /// Re-ingests by `bus` targets and dead letters.
    pub ingest: Ingest,
    /// Deliveries to targets at other sites.
    pub outbox: Outbox,
    /// Live figures per target, shared with the API.
    pub progress: Progress,
    /// Shared clients for building targets.
    pub sinks: SinkContext,
    /// Batches from other sites proposed but not yet committed here.
    pub early: Arc<EarlyInbox>,
    /// Delivery journal entries waiting for the next checkpoint.
    pub journal: Arc<JournalBuffer>,
    /// Seeks the dispatcher carried out, for the checkpointer to confirm
    /// ([`Command::SeekDone`]): (target key, cursor, seek id).
    pub seeks: std::sync::Mutex<Vec<(String, u64, String)>>,
}

struct Worker {
    rule_json: Value,
    handle: JoinHandle<()>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// The dispatcher of a leader: feeds and workers follow the replicated
/// rules; everything stops when this future is dropped.
pub async fn lead(ctx: Arc<Context>) {
    let state = ctx.state.clone();
    let mut config_rx = state.subscribe_config();
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut feeds: HashMap<String, Feed> = HashMap::new();
    let mut version = 0u64;
    let replicated = match state.target_counts() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the replicated target counters; counting from zero");
            BTreeMap::new()
        }
    };
    let counts_sent = seed_counts(&ctx.progress, &replicated);
    let _checkpointer = AbortOnDrop(tokio::spawn(checkpointer(ctx.clone(), counts_sent)));
    let mut seeks_handled: HashSet<(String, String)> = HashSet::new();
    loop {
        config_rx.borrow_and_update();
        version += 1;
        let starts = carry_out_seeks(&ctx, &mut workers, &mut seeks_handled);
        reconcile(&ctx, &mut workers, &mut feeds, version, starts);
        if config_rx.changed().await.is_err() {
            break;
        }
    }
}

struct Feed {
    feed: Arc<BusFeed>,
    handle: JoinHandle<()>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// One compiled rule set per bus (enabled rules only), keyed by rule name.
fn rule_sets(rules: &[(String, String, Arc<CompiledRule>)]) -> HashMap<String, RuleSet<String>> {
    let mut sets: HashMap<String, RuleSet<String>> = HashMap::new();
    for (bus, name, rule) in rules {
        let set = sets.entry(bus.clone()).or_default();
        if rule.spec.enabled {
            set.insert(name.clone(), rule.pattern.clone());
        }
    }
    sets
}

/// Carry out the pending seeks ([`Command::Seek`]) not handled yet this
/// term: stop the target's worker, set its live cursor to the seek's and
/// queue the confirmation for the checkpointer (which writes it before
/// any later cursor of that target). Returns where the restarted workers
/// start.
fn carry_out_seeks(
    ctx: &Arc<Context>,
    workers: &mut HashMap<String, Worker>,
    handled: &mut HashSet<(String, String)>,
) -> HashMap<String, u64> {
    let pending = ctx.state.view().pending_seeks.clone();
    handled.retain(|(k, id)| pending.get(k).is_some_and(|(_, i)| i == id));
    let mut starts = HashMap::new();
    for (key, (seq, id)) in pending {
        if !handled.insert((key.clone(), id.clone())) {
            continue;
        }
        if let Some(w) = workers.remove(&key) {
            w.handle.abort();
        }
        set_cursor(&ctx.progress, &key, seq);
        tracing::info!(target_key = key, cursor = seq, "seek: target restarted");
        starts.insert(key.clone(), seq);
        let mut q = match ctx.seeks.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        q.push((key, seq, id));
    }
    starts
}

fn reconcile(
    ctx: &Arc<Context>,
    workers: &mut HashMap<String, Worker>,
    feeds: &mut HashMap<String, Feed>,
    version: u64,
    mut starts: HashMap<String, u64>,
) {
    let rules: Vec<((String, String), Value)> = {
        let view = ctx.state.view();
        view.rules
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let mut wanted = HashMap::new();
    let mut compiled_rules = Vec::new();
    for ((bus, rule_name), json) in rules {
        // Stored rules were validated and normalized on write: parse and compile once.
        let parsed = serde_json::from_value::<RuleSpec>(json.clone())
            .map_err(|e| e.to_string())
            .and_then(|s| s.compile().map_err(|e| e.to_string()));
        let compiled = match parsed {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::error!(bus, rule = rule_name, error = %e, "stored rule does not compile; skipping");
                continue;
            }
        };
        compiled_rules.push((bus.clone(), rule_name.clone(), compiled.clone()));
        for (idx, t) in compiled.spec.targets.iter().enumerate() {
            let key = target_key(&bus, &rule_name, &t.id);
            wanted.insert(
                key,
                (
                    bus.clone(),
                    rule_name.clone(),
                    compiled.clone(),
                    idx,
                    json.clone(),
                ),
            );
        }
    }
    // One feed per bus, rules or not (so every event is read once and
    // counted as matched, unmatched or unroutable); it starts at the oldest
    // cursor of the bus.
    let mut sets = rule_sets(&compiled_rules);
    for bus in ctx.state.view().buses.keys() {
        sets.entry(bus.clone()).or_default();
    }
    feeds.retain(|bus, f| {
        let keep = sets.contains_key(bus);
        if !keep {
            f.handle.abort();
        }
        keep
    });
    for (bus, set) in sets.drain() {
        if let Some(f) = feeds.get(&bus) {
            f.feed.set_rules(version, set);
            continue;
        }
        let start = {
            let view = ctx.state.view();
            let prefix = format!("{bus}/");
            view.cursors
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(_, c)| *c)
                .min()
                .unwrap_or(view.next_seq)
        };
        let feed = BusFeed::new(start, version, set);
        let handle = tokio::spawn(crate::dispatch::feed::run(
            ctx.state.clone(),
            bus.clone(),
            feed.clone(),
        ));
        feeds.insert(bus, Feed { feed, handle });
    }
    workers.retain(|key, w| {
        let keep = wanted
            .get(key)
            .is_some_and(|(_, _, _, _, json)| *json == w.rule_json);
        if !keep {
            w.handle.abort();
        }
        keep
    });
    for (key, (bus, rule_name, compiled, idx, json)) in wanted {
        if workers.contains_key(&key) {
            continue;
        }
        let t = &compiled.spec.targets[idx];
        let remote_site = t.site.clone().filter(|s| *s != ctx.cfg.site);
        let sink = match target_sink(ctx, &bus, &rule_name, &json, t) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(target_key = key, error = %e, "target cannot be built; not dispatching to it");
                continue;
            }
        };
        let Some(feed) = feeds.get(&bus).map(|f| f.feed.clone()) else {
            continue;
        };
        let worker = TargetWorker {
            ctx: ctx.clone(),
            key: key.clone(),
            metrics: WorkerMetrics::new(&bus, &rule_name, &t.id),
            bus,
            rule_name,
            rule: compiled,
            idx,
            sink,
            feed,
            version,
            prematched: false,
            via_link: remote_site.is_some(),
            origin: None,
            start_at: starts.remove(&key),
        };
        let handle = tokio::spawn(worker.run());
        workers.insert(
            key,
            Worker {
                rule_json: json,
                handle,
            },
        );
    }
}

/// The running sink of target `t` of rule `rule_name` (definition `json`)
/// of `bus`: the link to the target's site, or the target itself.
fn target_sink(
    ctx: &Arc<Context>,
    bus: &str,
    rule_name: &str,
    json: &Value,
    t: &crate::config::rule::TargetSpec,
) -> Result<Arc<dyn Sink>, String> {
    let remote_site = t.site.clone().filter(|s| *s != ctx.cfg.site);
    if let Some(remote) = &remote_site {
        let spec = serde_json::value::to_raw_value(json)
            .map_err(|e| format!("rule cannot be encoded: {e}"))?;
        return Ok(Arc::new(crate::links::LinkSink {
            remote: remote.clone(),
            bus: bus.to_string(),
            rule: rule_name.to_string(),
            spec: Arc::new(strait_federation::LinkSpec {
                hash: strait_federation::link::proto::spec_hash(spec.get().as_bytes()),
                spec,
            }),
            target: t.id.clone(),
            outbox: ctx.outbox.clone(),
            state: ctx.state.clone(),
            limit: ctx.cfg.federation.max_outbox,
        }));
    }
    let from = crate::dispatch::bus_target::Provenance {
        site: ctx.cfg.site.clone(),
        bus: bus.to_string(),
        rule: rule_name.to_string(),
        target: t.id.clone(),
    };
    build_sink(ctx, t, from, true)
}

/// One target a replay sends to: a target of one of the bus's rules, built
/// as the dispatcher builds it (a target at another site is reached
/// through the link), with its own progress key.
pub struct ReplayTarget {
    worker: Arc<TargetWorker>,
}

impl ReplayTarget {
    /// Match the event (`value`, marked as replayed) against the target's
    /// rule, transform and deliver it with the target's retries and dead
    /// letter; returns once it is delivered, dead-lettered or not matched.
    pub async fn deliver(&self, ingest_ms: u64, value: Value) {
        self.worker.clone().deliver_parsed(ingest_ms, value).await;
    }

    /// How many of its deliveries may be in flight at once: the target's
    /// `concurrency`, as for its live worker (more through a link).
    pub fn concurrency(&self) -> usize {
        self.worker.concurrency()
    }
}

/// The key of a replay's figures for one target.
pub fn replay_key(replay: &str, bus: &str, rule: &str, target: &str) -> String {
    format!("replay:{replay}/{bus}/{rule}/{target}")
}

/// The targets of `rules` of `bus` (every rule when `None`) as they are
/// now, for the replay `replay`; rules that do not exist are skipped (the
/// caller checks names).
pub fn replay_targets(
    ctx: &Arc<Context>,
    bus: &str,
    rules: Option<&[String]>,
    replay: &str,
) -> Result<Vec<ReplayTarget>, String> {
    let defs: Vec<(String, Value)> = {
        let view = ctx.state.view();
        view.rules
            .iter()
            .filter(|((b, r), _)| b == bus && rules.is_none_or(|names| names.contains(r)))
            .map(|((_, r), v)| (r.clone(), v.clone()))
            .collect()
    };
    let mut out = Vec::new();
    for (rule_name, json) in defs {
        let spec = serde_json::from_value::<RuleSpec>(json.clone())
            .map_err(|e| format!("rule {rule_name}: {e}"))?;
        let compiled = Arc::new(
            spec.compile()
                .map_err(|e| format!("rule {rule_name}: {e}"))?,
        );
        for (idx, t) in compiled.spec.targets.iter().enumerate() {
            let sink = target_sink(ctx, bus, &rule_name, &json, t)
                .map_err(|e| format!("rule {rule_name}, target {}: {e}", t.id))?;
            let key = replay_key(replay, bus, &rule_name, &t.id);
            let remote = t.site.as_ref().is_some_and(|s| *s != ctx.cfg.site);
            out.push(ReplayTarget {
                worker: Arc::new(TargetWorker {
                    ctx: ctx.clone(),
                    key,
                    metrics: WorkerMetrics::new(bus, &rule_name, &t.id),
                    bus: bus.to_string(),
                    rule_name: rule_name.clone(),
                    rule: compiled.clone(),
                    idx,
                    sink,
                    feed: BusFeed::new(0, 0, RuleSet::default()),
                    version: 0,
                    prematched: false,
                    via_link: remote,
                    origin: None,
                    // A replay's worker is driven by the replay runner, not
                    // from a cursor.
                    start_at: None,
                }),
            });
        }
    }
    Ok(out)
}

/// The replicated form of a target's live counters.
fn counts_of(s: &TargetStats) -> TargetCounts {
    TargetCounts {
        delivered: s.delivered,
        dead_lettered: s.dead_lettered,
        dropped: s.dropped,
        dead_letter_failed: s.dead_letter_failed,
        failed_attempts: s.failed_attempts,
        last_error: s.last_error.clone(),
        last_dead_letter_error: s.last_dead_letter_error.clone(),
    }
}

/// Counters that differ from what was last sent (`sent`), for the keys
/// that counted something.
fn changed_counts(
    progress: &Progress,
    sent: &HashMap<String, TargetCounts>,
) -> Vec<(String, TargetCounts)> {
    let map = match progress.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    map.iter()
        .map(|(k, s)| (k, counts_of(s)))
        .filter(|(k, c)| match sent.get(*k) {
            Some(old) => old != c,
            None => *c != TargetCounts::default(),
        })
        .map(|(k, c)| (k.clone(), c))
        .collect()
}

/// Start this term's live counters from the replicated ones (added to
/// whatever the workers counted already this term), so that a leader
/// change does not set them back to zero; returns what is replicated.
pub fn seed_counts(
    progress: &Progress,
    replicated: &BTreeMap<String, TargetCounts>,
) -> HashMap<String, TargetCounts> {
    let mut map = match progress.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    for (k, c) in replicated {
        let s = map.entry(k.clone()).or_default();
        s.delivered += c.delivered;
        s.dead_lettered += c.dead_lettered;
        s.dropped += c.dropped;
        s.dead_letter_failed += c.dead_letter_failed;
        s.failed_attempts += c.failed_attempts;
        if s.last_error.is_none() {
            s.last_error = c.last_error.clone();
        }
        if s.last_dead_letter_error.is_none() {
            s.last_dead_letter_error = c.last_dead_letter_error.clone();
        }
    }
    replicated
        .iter()
        .map(|(k, c)| (k.clone(), c.clone()))
        .collect()
}

/// Periodically write target cursors, the delivery journal and the
/// targets' counters through Raft (which also collects delivered events
/// past retention) and publish lag gauges. `counts_sent`: the counters
/// replicated already.
async fn checkpointer(ctx: Arc<Context>, mut counts_sent: HashMap<String, TargetCounts>) {
    let interval = Duration::from_millis(ctx.cfg.dispatch.checkpoint_interval_ms);
    let mut last_sent: HashMap<String, u64> = HashMap::new();
    let mut last_gc = Instant::now();
    let mut last_lag = Instant::now();
    loop {
        tokio::time::sleep(interval).await;
        // Seeks first: a cursor read below is then read after its seek.
        let seeks: Vec<(String, u64, String)> = match ctx.seeks.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for (i, (key, seq, id)) in seeks.iter().enumerate() {
            let cmd = Command::SeekDone {
                key: key.clone(),
                seq: *seq,
                id: id.clone(),
            };
            match ctx.writer.write(cmd).await {
                Ok(_) => {
                    last_sent.remove(key);
                }
                Err(e) => {
                    tracing::warn!(error = %e, target_key = key, "seek not confirmed; retrying");
                    let mut q = match ctx.seeks.lock() {
                        Ok(g) => g,
                        Err(p) => p.into_inner(),
                    };
                    q.extend(seeks[i..].iter().cloned());
                    break;
                }
            }
        }
        let cursors: Vec<(String, u64)> = {
            let view = ctx.state.view();
            let map = match ctx.progress.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            map.iter()
                .filter(|(k, s)| view.cursors.get(*k).is_some_and(|c| s.cursor > *c))
                .map(|(k, s)| (k.clone(), s.cursor))
                .collect()
        };
        let changed: Vec<(String, u64)> = cursors
            .into_iter()
            .filter(|(k, c)| last_sent.get(k) != Some(c))
            .collect();
        let gc_due = last_gc.elapsed() >= Duration::from_secs(10);
        let journal = ctx.journal.drain();
        let counts = changed_counts(&ctx.progress, &counts_sent);
        if !changed.is_empty() || gc_due || !journal.is_empty() || !counts.is_empty() {
            let cmd = Command::Checkpoint {
                now_ms: now_ms(),
                retention_ms: ctx.cfg.retention_secs.saturating_mul(1000),
                dedup_window_ms: ctx.cfg.dedup_window_secs.saturating_mul(1000),
                cursors: changed.clone(),
                journal: journal.clone(),
                counts: counts.clone(),
            };
            match ctx.writer.write(cmd).await {
                Ok(_) => {
                    for (k, c) in changed {
                        last_sent.insert(k, c);
                    }
                    counts_sent.extend(counts);
                    if gc_due {
                        last_gc = Instant::now();
                    }
                }
                Err(e) => {
                    // Written with the next checkpoint, unless newer.
                    ctx.journal.restore(journal);
                    tracing::debug!(error = %e, "checkpoint not written");
                }
            }
        }
        if last_lag.elapsed() >= Duration::from_secs(1) {
            last_lag = Instant::now();
            publish_lag(&ctx);
        }
    }
}

fn publish_lag(ctx: &Context) {
    let keys: Vec<(String, u64)> = {
        let map = match ctx.progress.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        map.iter().map(|(k, s)| (k.clone(), s.cursor)).collect()
    };
    for (key, cursor) in keys {
        if key.starts_with("link-in/") || key.starts_with("replay:") {
            continue;
        }
        let mut parts = key.splitn(3, '/');
        let (Some(bus), Some(rule), Some(target)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let lag = ctx
            .state
            .count_events_from(bus, cursor, 1_000_000)
            .unwrap_or(0);
        metrics::gauge!("strait_target_lag_events", "bus" => bus.to_string(), "rule" => rule.to_string(), "target" => target.to_string()).set(lag as f64);
    }
    if let Ok(n) = ctx.state.stored_events() {
        metrics::gauge!("strait_events_stored").set(n as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_term_goes_on_from_the_replicated_counters() {
        let progress = Progress::default();
        // A worker of the new term counted one failure already.
        progress::with_stats(&progress, "b/r/t", |s| s.failed_attempts = 1);
        let mut replicated = BTreeMap::new();
        replicated.insert(
            "b/r/t".to_string(),
            TargetCounts {
                delivered: 7,
                failed_attempts: 2,
                last_error: Some("HTTP 503".into()),
                ..TargetCounts::default()
            },
        );
        let mut sent = seed_counts(&progress, &replicated);
        let s = stats(&progress, "b/r/t").unwrap_or_default();
        assert_eq!((s.delivered, s.failed_attempts), (7, 3));
        assert_eq!(s.last_error.as_deref(), Some("HTTP 503"));
        // Only what changed since is sent; an untouched key is not.
        progress::with_stats(&progress, "link-in/idc", |s| s.cursor = 4);
        let changed = changed_counts(&progress, &sent);
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].1.failed_attempts, 3);
        sent.extend(changed);
        assert!(changed_counts(&progress, &sent).is_empty());
    }
}
