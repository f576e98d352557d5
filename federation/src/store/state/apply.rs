//! Applying committed log entries: every command's effect on the tables
//! and the view, in one transaction per batch of entries, and the answer
//! each gives.
//!
//! Deterministic: an answer (an outcome, a refusal) depends only on the
//! command and the state, so every replica gives the same one.

use std::collections::BTreeMap;

use openraft::{EntryPayload, StoredMembership};
use redb::{Durability, ReadableTable, TableDefinition, WriteTransaction};

use super::{
    SResult, SiteState, View, dead_letter_buses, dedup_bytes, journal, rule_key, source_bus, werr,
};
use crate::TypeConfig;
use crate::command::{AppendOutcome, Command, CommandResponse, Conflict, NotFound, Refusal};
use crate::store::archive::ArchivedEvent;
use crate::store::block_table;
use crate::store::blocks::BlockBuilder;
use crate::store::tables::{
    BUSES, CURSORS, DEDUP, EVENTS, META, NONCE_EXPIRY, NONCES, RULES, SOURCES,
};

/// Most expired nonces forgotten per apply of a [`Command::UseNonce`]
/// (twice what one adds, so the table shrinks back after a burst).
const NONCE_PRUNE_BATCH: usize = 64;

/// Most dedup entries examined per checkpoint by the expiry sweep, so one
/// apply stays short. The sweep walks the index in key order and wraps.
const DEDUP_SWEEP_BATCH: usize = 20_000;

/// An apply that takes this long is logged as a warning (a tenth of it at
/// debug level): everything behind it in the site waits.
const SLOW_APPLY: std::time::Duration = std::time::Duration::from_millis(100);
fn dedup_key(bus: &str, source: &str, id: &str) -> String {
    format!("{bus}\u{0}{source}\u{0}{id}")
}
impl SiteState {
    /// Delete archived events past their archive's retention (whole
    /// segments; node-local, from the checkpoint's time).
    fn expire_archives(&self, view: &View, now_ms: u64) {
        for ((bus, name), spec) in &view.archives {
            let days = spec
                .get("retentionDays")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            if days == 0 {
                continue;
            }
            let before = now_ms.saturating_sub(days.saturating_mul(86_400_000));
            match self.archive.expire(bus, name, before) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(bus, archive = name, events = n, "archive retention"),
                Err(e) => {
                    tracing::warn!(bus, archive = name, error = %e, "archive retention failed")
                }
            }
        }
    }

    /// Make every earlier `Durability::None` commit durable.
    pub fn flush(&self) -> SResult<()> {
        self.archive.sync().map_err(werr)?;
        let db = self.db();
        let mut txn = db.begin_write().map_err(werr)?;
        txn.set_durability(Durability::Immediate).map_err(werr)?;
        txn.commit().map_err(werr)
    }

    /// Apply committed log entries in one transaction.
    pub fn apply(
        &self,
        entries: Vec<openraft::Entry<TypeConfig>>,
        durable: bool,
    ) -> SResult<Vec<CommandResponse>> {
        let _writer = self.lock_writer();
        let mut next = self.view().clone();
        let db = self.db();
        let mut txn = db.begin_write().map_err(werr)?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(werr)?;
        let mut responses = Vec::with_capacity(entries.len());
        let mut config_changed = false;
        let mut links_changed = false;
        let started = std::time::Instant::now();
        let count = entries.len();
        let mut slowest: (&'static str, std::time::Duration) = ("", std::time::Duration::ZERO);
        // Archive side effects: events to archive (in log order), archives
        // deleted, the newest checkpoint time (retention).
        let mut archived: BTreeMap<(String, String), Vec<ArchivedEvent>> = BTreeMap::new();
        let mut archives_removed: Vec<(String, String)> = Vec::new();
        let mut expire_at: Option<u64> = None;
        for entry in entries {
            next.last_applied = Some(entry.log_id);
            let resp = match entry.payload {
                EntryPayload::Blank => CommandResponse::Ok,
                EntryPayload::Membership(m) => {
                    next.membership = StoredMembership::new(Some(entry.log_id), m);
                    CommandResponse::Ok
                }
                EntryPayload::Normal(cmd) => {
                    if matches!(
                        cmd,
                        Command::LinkEnqueue { .. }
                            | Command::LinkAcked { .. }
                            | Command::LinkReceive { .. }
                            | Command::Redrive { .. }
                    ) {
                        links_changed = true;
                    }
                    if !matches!(
                        cmd,
                        Command::Append { .. }
                            | Command::Checkpoint { .. }
                            | Command::LinkEnqueue { .. }
                            | Command::LinkAcked { .. }
                            | Command::LinkReceive { .. }
                            // Progress, not configuration: nothing to reconcile.
                            | Command::UpdateReplay { .. }
                            | Command::Redrive { .. }
                            | Command::UseNonce { .. }
                    ) {
                        config_changed = true;
                    }
                    let kind = cmd.kind();
                    let t = std::time::Instant::now();
                    let archive_input = match &cmd {
                        Command::Append {
                            ingest_ms, entries, ..
                        } if !next.archives.is_empty() => Some((*ingest_ms, entries.clone())),
                        _ => None,
                    };
                    if let Command::Checkpoint { now_ms, .. } = &cmd {
                        expire_at = Some(*now_ms);
                    }
                    let resp = match cmd {
                        cmd @ (Command::PutArchive { .. }
                        | Command::DeleteArchive { .. }
                        | Command::StartReplay { .. }
                        | Command::UpdateReplay { .. }) => archive_command(
                            &txn,
                            &mut next,
                            entry.log_id.index,
                            cmd,
                            &mut archives_removed,
                        )?,
                        cmd => apply_command(&txn, &mut next, cmd)?,
                    };
                    // A deleted archive loses its files at once (the delete
                    // is committed: a crash before the state commits applies
                    // it again), so one re-created later in this batch
                    // starts empty.
                    for key in archives_removed.drain(..) {
                        archived.remove(&key);
                        self.archive.remove(&key.0, &key.1).map_err(werr)?;
                    }
                    if let (Some((ms, entries)), CommandResponse::Appended(outcomes)) =
                        (archive_input, &resp)
                    {
                        collect_archived(
                            &next,
                            entry.log_id.index,
                            ms,
                            &entries,
                            outcomes,
                            &mut archived,
                        );
                    }
                    let took = t.elapsed();
                    if took > slowest.1 {
                        slowest = (kind, took);
                    }
                    resp
                }
            };
            responses.push(resp);
        }
        let commands = started.elapsed();
        {
            let mut meta = txn.open_table(META).map_err(werr)?;
            let la = serde_json::to_vec(&next.last_applied).map_err(werr)?;
            meta.insert("last_applied", la.as_slice()).map_err(werr)?;
            let m = serde_json::to_vec(&next.membership).map_err(werr)?;
            meta.insert("membership", m.as_slice()).map_err(werr)?;
            let s = serde_json::to_vec(&next.next_seq).map_err(werr)?;
            meta.insert("next_seq", s.as_slice()).map_err(werr)?;
            let c = serde_json::to_vec(&next.config_version).map_err(werr)?;
            meta.insert("config_version", c.as_slice()).map_err(werr)?;
            meta.insert("stored_bytes", next.stored_bytes.to_string().as_bytes())
                .map_err(werr)?;
            meta.insert("stored_events", next.stored_events.to_string().as_bytes())
                .map_err(werr)?;
        }
        // The archive is written before the state commits, so it is never
        // behind it (a re-applied entry is skipped by its log index).
        for ((bus, name), events) in &archived {
            if next.archives.contains_key(&(bus.clone(), name.clone())) {
                self.archive
                    .append(bus, name, events, durable)
                    .map_err(werr)?;
            }
        }
        txn.commit().map_err(werr)?;
        if let Some(now) = expire_at {
            self.expire_archives(&next, now);
        }
        let took = started.elapsed();
        macro_rules! slow_apply {
            ($level:ident) => {
                tracing::$level!(
                    entries = count,
                    took_ms = took.as_millis() as u64,
                    commands_ms = commands.as_millis() as u64,
                    slowest = slowest.0,
                    slowest_ms = slowest.1.as_millis() as u64,
                    durable,
                    "slow apply"
                )
            };
        }
        if took >= SLOW_APPLY {
            slow_apply!(warn);
        } else if took >= SLOW_APPLY / 10 {
            slow_apply!(debug);
        }
        let head = next.next_seq;
        *self.view_mut() = next;
        if config_changed {
            self.config_version.send_modify(|v| *v += 1);
        }
        if links_changed {
            self.links_version.send_modify(|v| *v += 1);
        }
        self.head.send_if_modified(|h| {
            if *h != head {
                *h = head;
                true
            } else {
                false
            }
        });
        Ok(responses)
    }
}

/// Delete up to [`DEDUP_SWEEP_BATCH`] dedup entries older than `horizon`,
/// continuing where the previous sweep stopped (kept in the meta table);
/// the bytes they counted for.
fn sweep_dedup(txn: &WriteTransaction, horizon: u64) -> SResult<u64> {
    let mut meta = txn.open_table(META).map_err(werr)?;
    let from: String = match meta.get("dedup_sweep").map_err(werr)? {
        Some(v) => String::from_utf8_lossy(v.value()).into_owned(),
        None => String::new(),
    };
    let mut dedup = txn.open_table(DEDUP).map_err(werr)?;
    let mut doomed = Vec::new();
    let mut last = None;
    let mut seen = 0;
    for item in dedup.range(from.as_str()..).map_err(werr)? {
        let (k, v) = item.map_err(werr)?;
        seen += 1;
        if v.value() < horizon {
            doomed.push(k.value().to_string());
        }
        last = Some(k.value().to_string());
        if seen >= DEDUP_SWEEP_BATCH {
            break;
        }
    }
    let mut gone = 0;
    for k in &doomed {
        dedup.remove(k.as_str()).map_err(werr)?;
        gone += dedup_bytes(k);
    }
    // Resume just after the last key seen, or wrap to the start at the end.
    let next = match last {
        Some(mut k) if seen >= DEDUP_SWEEP_BATCH => {
            k.push('\u{0}');
            k
        }
        _ => String::new(),
    };
    meta.insert("dedup_sweep", next.as_bytes()).map_err(werr)?;
    // Every entry at or after the latest horizon is kept: a lookup reads
    // this to know which events may have lost theirs.
    let kept_from = match meta.get("dedup_horizon").map_err(werr)? {
        Some(v) => std::str::from_utf8(v.value())
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0),
        None => 0,
    };
    if horizon > kept_from {
        meta.insert("dedup_horizon", horizon.to_string().as_bytes())
            .map_err(werr)?;
    }
    Ok(gone)
}

/// The accepted events of an append that match each archive of their bus,
/// added to `out` in log order.
fn collect_archived(
    view: &View,
    index: u64,
    ingest_ms: u64,
    entries: &[crate::command::AppendEntry],
    outcomes: &[AppendOutcome],
    out: &mut BTreeMap<(String, String), Vec<ArchivedEvent>>,
) {
    // Patterns compiled once per apply of an entry.
    let mut compiled: BTreeMap<(String, String), Option<strait_routing::pattern::Pattern>> =
        BTreeMap::new();
    for (e, outcome) in entries.iter().zip(outcomes) {
        let AppendOutcome::Accepted(seq) = outcome else {
            continue;
        };
        let mut parsed: Option<Option<serde_json::Value>> = None;
        for ((bus, name), spec) in view.archives.range((e.bus.clone(), String::new())..) {
            if *bus != e.bus {
                break;
            }
            let key = (bus.clone(), name.clone());
            let pattern = compiled.entry(key.clone()).or_insert_with(|| {
                spec.get("pattern")
                    .filter(|p| !p.is_null())
                    .and_then(|p| strait_routing::pattern::Pattern::parse(p).ok())
            });
            if let Some(p) = pattern {
                let value = parsed.get_or_insert_with(|| serde_json::from_str(e.event.get()).ok());
                match value {
                    Some(v) if p.matches(v) => {}
                    _ => continue,
                }
            }
            out.entry(key).or_default().push(ArchivedEvent {
                index,
                seq: *seq,
                ingest_ms,
                json: e.event.get().as_bytes().to_vec(),
            });
        }
    }
}

/// Terminal replay states.
pub const REPLAY_FINAL_STATES: [&str; 3] = ["COMPLETED", "CANCELLED", "FAILED"];

fn save_archive_meta(txn: &WriteTransaction, view: &View) -> SResult<()> {
    let mut meta = txn.open_table(META).map_err(werr)?;
    let list: Vec<(&(String, String), &serde_json::Value)> = view.archives.iter().collect();
    let a = serde_json::to_vec(&list).map_err(werr)?;
    meta.insert("archives", a.as_slice()).map_err(werr)?;
    let r = serde_json::to_vec(&view.replays).map_err(werr)?;
    meta.insert("replays", r.as_slice()).map_err(werr)?;
    Ok(())
}

/// Archive and replay commands (`index`: the entry's log index).
fn archive_command(
    txn: &WriteTransaction,
    view: &mut View,
    index: u64,
    cmd: Command,
    removed: &mut Vec<(String, String)>,
) -> SResult<CommandResponse> {
    let resp = match cmd {
        Command::PutArchive { bus, name, spec } => {
            if !view.buses.contains_key(&bus) {
                return Ok(CommandResponse::NotFound(NotFound::Bus { name: bus }));
            }
            let mut spec = spec;
            let key = (bus, name);
            if let serde_json::Value::Object(m) = &mut spec {
                // An update keeps when and where the archive began.
                let old = view.archives.get(&key);
                for k in ["createdIndex", "createdAt"] {
                    if let Some(v) = old.and_then(|o| o.get(k)) {
                        m.insert(k.to_string(), v.clone());
                    }
                }
                m.entry("createdIndex").or_insert(index.into());
            }
            view.archives.insert(key, spec);
            CommandResponse::Ok
        }
        Command::DeleteArchive { bus, name } => {
            let key = (bus, name);
            if view.archives.remove(&key).is_none() {
                return Ok(CommandResponse::NotFound(NotFound::Archive {
                    bus: key.0,
                    name: key.1,
                }));
            }
            removed.push(key);
            CommandResponse::Ok
        }
        Command::StartReplay { name, spec } => {
            if let Some(old) = view.replays.get(&name) {
                let state = old
                    .get("state")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("")
                    .to_string();
                return Ok(CommandResponse::Refused(Refusal::ReplayExists {
                    name,
                    state,
                }));
            }
            let bus = spec
                .get("bus")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            let archive = spec
                .get("archive")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            if !view
                .archives
                .contains_key(&(bus.to_string(), archive.to_string()))
            {
                return Ok(CommandResponse::NotFound(NotFound::Archive {
                    bus: bus.to_string(),
                    name: archive.to_string(),
                }));
            }
            let mut spec = spec;
            if let serde_json::Value::Object(m) = &mut spec {
                m.insert("state".into(), "STARTING".into());
                m.insert("startedIndex".into(), index.into());
            }
            view.replays.insert(name, spec);
            CommandResponse::Ok
        }
        Command::UpdateReplay { name, update } => {
            let Some(old) = view.replays.get_mut(&name) else {
                return Ok(CommandResponse::NotFound(NotFound::Replay { name }));
            };
            let state = old
                .get("state")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_string();
            if REPLAY_FINAL_STATES.contains(&state.as_str()) {
                return Ok(CommandResponse::Refused(Refusal::ReplayFinished {
                    name,
                    state,
                }));
            }
            if let (serde_json::Value::Object(m), serde_json::Value::Object(u)) = (old, update) {
                for (k, v) in u {
                    m.insert(k, v);
                }
            }
            CommandResponse::Ok
        }
        _ => CommandResponse::Ok,
    };
    save_archive_meta(txn, view)?;
    Ok(resp)
}

/// A table of JSON rows by name (buses, rules, sources).
type JsonTable = TableDefinition<'static, &'static str, &'static [u8]>;

/// Store `spec` as the JSON row `key` of `table` and as `map_key` of the
/// view's `map`.
fn put_json_row<K: Ord>(
    txn: &WriteTransaction,
    table: JsonTable,
    key: &str,
    map: &mut BTreeMap<K, serde_json::Value>,
    map_key: K,
    spec: serde_json::Value,
) -> SResult<()> {
    let bytes = serde_json::to_vec(&spec).map_err(werr)?;
    txn.open_table(table)
        .map_err(werr)?
        .insert(key, bytes.as_slice())
        .map_err(werr)?;
    map.insert(map_key, spec);
    Ok(())
}

/// Remove `map_key` from the view's `map` and the row `key` from `table`;
/// false (and nothing touched) when the map has no such entry.
fn delete_json_row<K: Ord>(
    txn: &WriteTransaction,
    table: JsonTable,
    key: &str,
    map: &mut BTreeMap<K, serde_json::Value>,
    map_key: &K,
) -> SResult<bool> {
    if map.remove(map_key).is_none() {
        return Ok(false);
    }
    txn.open_table(table)
        .map_err(werr)?
        .remove(key)
        .map_err(werr)?;
    Ok(true)
}

fn apply_command(
    txn: &WriteTransaction,
    view: &mut View,
    cmd: Command,
) -> SResult<CommandResponse> {
    Ok(match cmd {
        Command::PutBus { name, spec } => {
            put_json_row(txn, BUSES, &name, &mut view.buses, name.clone(), spec)?;
            CommandResponse::Ok
        }
        Command::DeleteBus { name } => {
            if !view.buses.contains_key(&name) {
                return Ok(CommandResponse::NotFound(NotFound::Bus { name }));
            }
            let rules: Vec<String> = view
                .rules
                .keys()
                .filter(|(b, _)| *b == name)
                .map(|(_, r)| r.clone())
                .collect();
            if !rules.is_empty() {
                return Ok(CommandResponse::Conflict(Conflict::BusHasRules {
                    bus: name,
                    rules,
                }));
            }
            let sources: Vec<String> = view
                .sources
                .iter()
                .filter(|(_, spec)| source_bus(spec) == Some(name.as_str()))
                .map(|(s, _)| s.clone())
                .collect();
            if !sources.is_empty() {
                return Ok(CommandResponse::Conflict(Conflict::BusHasSources {
                    bus: name,
                    sources,
                }));
            }
            let dead_letter_of: Vec<String> = view
                .rules
                .iter()
                .filter(|(_, spec)| dead_letter_buses(spec).iter().any(|(_, b)| *b == name))
                .map(|((b, r), _)| format!("{b}/{r}"))
                .collect();
            if !dead_letter_of.is_empty() {
                return Ok(CommandResponse::Refused(Refusal::BusIsDeadLetter {
                    bus: name,
                    rules: dead_letter_of,
                }));
            }
            delete_json_row(txn, BUSES, &name, &mut view.buses, &name)?;
            let mut events = txn.open_table(EVENTS).map_err(werr)?;
            let (mut gone, mut gone_events) = (0, 0u64);
            events
                .retain_in((name.as_str(), 0)..=(name.as_str(), u64::MAX), |k, v| {
                    gone += block_table::row_bytes(k.0, v.len());
                    // A row that does not parse held no event it could count.
                    gone_events +=
                        crate::store::blocks::Block::parse(v).map_or(0, |b| b.len() as u64);
                    false
                })
                .map_err(werr)?;
            view.stored_bytes = view.stored_bytes.saturating_sub(gone);
            view.stored_events = view.stored_events.saturating_sub(gone_events);
            CommandResponse::Ok
        }
        Command::PutRule {
            bus,
            name,
            spec,
            targets,
        } => {
            if !view.buses.contains_key(&bus) {
                return Ok(CommandResponse::NotFound(NotFound::Bus { name: bus }));
            }
            // A dead letter must have somewhere to go (checked here, at
            // commit, so a bus deleted meanwhile cannot slip through).
            if let Some((field, dl_bus)) = dead_letter_buses(&spec)
                .into_iter()
                .find(|(_, b)| !view.buses.contains_key(*b))
            {
                return Ok(CommandResponse::Refused(Refusal::NoDeadLetterBus {
                    field,
                    bus: dl_bus.to_string(),
                }));
            }
            put_json_row(
                txn,
                RULES,
                &rule_key(&bus, &name),
                &mut view.rules,
                (bus.clone(), name.clone()),
                spec,
            )?;
            let prefix = format!("{bus}/{name}/");
            let mut cursors = txn.open_table(CURSORS).map_err(werr)?;
            // Targets removed from the rule lose their cursors.
            let stale: Vec<String> = view
                .cursors
                .keys()
                .filter(|k| {
                    k.starts_with(&prefix) && !targets.iter().any(|t| **k == format!("{prefix}{t}"))
                })
                .cloned()
                .collect();
            for k in stale {
                cursors.remove(k.as_str()).map_err(werr)?;
                view.cursors.remove(&k);
                let gone = journal::drop_target(txn, &k)?;
                view.stored_bytes = view.stored_bytes.saturating_sub(gone);
            }
            // New targets start at the head: a new rule sees new events only.
            for t in &targets {
                let key = format!("{prefix}{t}");
                if !view.cursors.contains_key(&key) {
                    cursors.insert(key.as_str(), view.next_seq).map_err(werr)?;
                    // Its start mark: events before it were never its to
                    // deliver (a lookup must not call them delivered).
                    view.stored_bytes +=
                        journal::put_mark(txn, &key, view.next_seq, journal::START_MARK)?;
                    view.cursors.insert(key, view.next_seq);
                }
            }
            CommandResponse::Ok
        }
        Command::DeleteRule { bus, name } => {
            if !delete_json_row(
                txn,
                RULES,
                &rule_key(&bus, &name),
                &mut view.rules,
                &(bus.clone(), name.clone()),
            )? {
                return Ok(CommandResponse::NotFound(NotFound::Rule { bus, name }));
            }
            let prefix = format!("{bus}/{name}/");
            let stale: Vec<String> = view
                .cursors
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            let mut cursors = txn.open_table(CURSORS).map_err(werr)?;
            for k in stale {
                cursors.remove(k.as_str()).map_err(werr)?;
                view.cursors.remove(&k);
                let gone = journal::drop_target(txn, &k)?;
                view.stored_bytes = view.stored_bytes.saturating_sub(gone);
            }
            CommandResponse::Ok
        }
        Command::PutSource { name, spec } => {
            if let Some(bus) = source_bus(&spec)
                && !view.buses.contains_key(bus)
            {
                return Ok(CommandResponse::NotFound(NotFound::Bus {
                    name: bus.to_string(),
                }));
            }
            put_json_row(txn, SOURCES, &name, &mut view.sources, name.clone(), spec)?;
            CommandResponse::Ok
        }
        Command::DeleteSource { name } => {
            if !delete_json_row(txn, SOURCES, &name, &mut view.sources, &name)? {
                return Ok(CommandResponse::NotFound(NotFound::Source { name }));
            }
            CommandResponse::Ok
        }
        Command::Append {
            ingest_ms,
            dedup_window_ms,
            entries,
        } => {
            let mut events = txn.open_table(EVENTS).map_err(werr)?;
            let mut dedup = txn.open_table(DEDUP).map_err(werr)?;
            // Entries older than the window no longer count; the checkpoint
            // sweep deletes them later.
            let horizon = ingest_ms.saturating_sub(dedup_window_ms);
            let mut outcomes = Vec::with_capacity(entries.len());
            // One block per bus (almost always just one bus per entry).
            let mut blocks: Vec<(&str, BlockBuilder)> = Vec::new();
            for e in entries.iter() {
                if !view.buses.contains_key(&e.bus) {
                    outcomes.push(AppendOutcome::NoSuchBus);
                    continue;
                }
                let key = dedup_key(&e.bus, &e.source, &e.id);
                // One index operation per new event: insert, and look at what
                // was there before.
                let prev = {
                    dedup
                        .insert(key.as_str(), ingest_ms)
                        .map_err(werr)?
                        .map(|g| g.value())
                };
                if prev.is_none() {
                    view.stored_bytes += dedup_bytes(&key);
                }
                if let Some(ms) = prev
                    && ms >= horizon
                {
                    // A repeat does not extend the window: keep the first time.
                    dedup.insert(key.as_str(), ms).map_err(werr)?;
                    outcomes.push(AppendOutcome::Duplicate);
                    continue;
                }
                let seq = view.next_seq;
                view.next_seq += 1;
                let block = match blocks.iter().position(|(b, _)| *b == e.bus) {
                    Some(i) => &mut blocks[i].1,
                    None => {
                        blocks.push((e.bus.as_str(), BlockBuilder::new()));
                        let last = blocks.len() - 1;
                        &mut blocks[last].1
                    }
                };
                block.push(seq, ingest_ms, e.event.get().as_bytes());
                outcomes.push(AppendOutcome::Accepted(seq));
            }
            for (bus, block) in blocks {
                view.stored_events += block.len() as u64;
                view.stored_bytes += block_table::put(&mut events, bus, block).map_err(werr)?;
            }
            CommandResponse::Appended(outcomes)
        }
        Command::Checkpoint {
            now_ms,
            retention_ms,
            dedup_window_ms,
            cursors: updates,
            journal: entries,
            counts,
        } => {
            if dedup_window_ms > 0 {
                let swept = sweep_dedup(txn, now_ms.saturating_sub(dedup_window_ms))?;
                view.stored_bytes = view.stored_bytes.saturating_sub(swept);
            }
            let horizon = now_ms.saturating_sub(retention_ms);
            let mut cursors = txn.open_table(CURSORS).map_err(werr)?;
            for (key, seq) in updates {
                // Only known targets, and cursors never move backwards.
                if let Some(cur) = view.cursors.get_mut(&key)
                    && seq > *cur
                {
                    *cur = seq;
                    cursors.insert(key.as_str(), seq).map_err(werr)?;
                    view.stored_bytes += journal::put_mark(txn, &key, seq, now_ms)?;
                }
            }
            journal::merge(txn, entries, horizon, &mut view.stored_bytes)?;
            journal::put_counts(txn, counts, &mut view.stored_bytes)?;
            let gone = journal::collect_journal(txn, horizon, journal::JOURNAL_GC_BATCH)?
                + journal::collect_marks(
                    txn,
                    view.cursors.keys(),
                    horizon,
                    journal::MARKS_GC_BATCH,
                )?;
            view.stored_bytes = view.stored_bytes.saturating_sub(gone);
            // Garbage-collect events every target of their bus is done with
            // and that are older than the retention.
            let mut events = txn.open_table(EVENTS).map_err(werr)?;
            for bus in view.buses.keys() {
                let prefix = format!("{bus}/");
                let min_cursor = view
                    .cursors
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .map(|(_, v)| *v)
                    .min()
                    .unwrap_or(view.next_seq);
                // Whole blocks go: every event in them below every
                // cursor and past the retention.
                let dropped = block_table::drop_done(
                    &mut events,
                    bus,
                    min_cursor,
                    |b| b.max_ingest_ms() <= horizon,
                    50_000,
                )
                .map_err(werr)?;
                view.stored_bytes = view.stored_bytes.saturating_sub(dropped.bytes);
                view.stored_events = view.stored_events.saturating_sub(dropped.items as u64);
            }
            crate::store::links::collect_inbox(
                txn,
                &view.links,
                &view.cursors,
                &mut view.stored_bytes,
            )?;
            CommandResponse::Ok
        }
        Command::ConfigVersion { version } => {
            view.config_version = view.config_version.max(version);
            CommandResponse::Ok
        }
        Command::LinkEnqueue {
            remote,
            items,
            specs,
        } => crate::store::links::enqueue(
            txn,
            &mut view.links,
            &mut view.stored_bytes,
            &remote,
            &items,
            &specs,
        )?,
        Command::LinkAcked { remote, upto } => {
            crate::store::links::acked(txn, &mut view.links, &mut view.stored_bytes, &remote, upto)?
        }
        Command::LinkReceive {
            origin,
            first_seq,
            items,
            specs,
        } => crate::store::links::receive(
            txn,
            &mut view.links,
            &mut view.cursors,
            &mut view.stored_bytes,
            crate::store::links::Batch {
                origin: &origin,
                first_seq,
                items: &items,
                specs: &specs,
            },
        )?,
        // Applied by `archive_command` (which knows the log index).
        Command::PutArchive { .. }
        | Command::DeleteArchive { .. }
        | Command::StartReplay { .. }
        | Command::UpdateReplay { .. } => CommandResponse::Ok,
        Command::Redrive { items, specs } => {
            let origin = crate::store::links::REDRIVE_ORIGIN;
            let first_seq = view.links.inbound.get(origin).copied().unwrap_or(0) + 1;
            crate::store::links::receive(
                txn,
                &mut view.links,
                &mut view.cursors,
                &mut view.stored_bytes,
                crate::store::links::Batch {
                    origin,
                    first_seq,
                    items: &items,
                    specs: &specs,
                },
            )?
        }
        Command::Seek { key, seq, id } => {
            if !view.cursors.contains_key(&key) {
                return Ok(CommandResponse::NotFound(NotFound::Target { key }));
            }
            view.pending_seeks.insert(key, (seq, id));
            save_pending_seeks(txn, &view.pending_seeks)?;
            CommandResponse::Ok
        }
        Command::UseNonce {
            key,
            request,
            now_ms,
            until_ms,
        } => use_nonce(txn, &key, &request, now_ms, until_ms)?,
        Command::SeekDone { key, seq, id } => {
            if view.pending_seeks.get(&key).is_some_and(|(_, i)| *i == id) {
                view.pending_seeks.remove(&key);
                save_pending_seeks(txn, &view.pending_seeks)?;
                if let Some(cur) = view.cursors.get_mut(&key) {
                    *cur = seq;
                    txn.open_table(CURSORS)
                        .map_err(werr)?
                        .insert(key.as_str(), seq)
                        .map_err(werr)?;
                    let gone = journal::drop_marks_from(txn, &key, seq.saturating_add(1))?;
                    view.stored_bytes = view.stored_bytes.saturating_sub(gone);
                }
            }
            CommandResponse::Ok
        }
    })
}

/// Forget up to [`NONCE_PRUNE_BATCH`] nonces remembered until before
/// `now_ms`, then use `key` for `request`: `Ok` when it is new (or was
/// used by this same request, retried), `Refused(NonceUsed)` when another
/// request used it and it is still remembered.
fn use_nonce(
    txn: &WriteTransaction,
    key: &str,
    request: &str,
    now_ms: u64,
    until_ms: u64,
) -> SResult<CommandResponse> {
    let mut nonces = txn.open_table(NONCES).map_err(werr)?;
    let mut expiry = txn.open_table(NONCE_EXPIRY).map_err(werr)?;
    let mut doomed: Vec<(u64, String)> = Vec::new();
    for item in expiry.range((0, "")..(now_ms, "")).map_err(werr)? {
        let (k, _) = item.map_err(werr)?;
        let (t, n) = k.value();
        doomed.push((t, n.to_string()));
        if doomed.len() >= NONCE_PRUNE_BATCH {
            break;
        }
    }
    for (t, n) in &doomed {
        expiry.remove((*t, n.as_str())).map_err(werr)?;
        // The nonce row goes only if it is this expiry's (a nonce used
        // again after it expired has a later one).
        let same = nonces
            .get(n.as_str())
            .map_err(werr)?
            .is_some_and(|v| nonce_until(v.value()) == *t);
        if same {
            nonces.remove(n.as_str()).map_err(werr)?;
        }
    }
    let prev = nonces.get(key).map_err(werr)?.map(|v| {
        (
            nonce_until(v.value()),
            v.value().get(8..).unwrap_or(&[]).to_vec(),
        )
    });
    if let Some((until, by)) = prev {
        if by == request.as_bytes() {
            return Ok(CommandResponse::Ok);
        }
        if until >= now_ms {
            return Ok(CommandResponse::Refused(Refusal::NonceUsed));
        }
        expiry.remove((until, key)).map_err(werr)?;
    }
    let mut row = until_ms.to_be_bytes().to_vec();
    row.extend_from_slice(request.as_bytes());
    nonces.insert(key, row.as_slice()).map_err(werr)?;
    expiry.insert((until_ms, key), &[][..]).map_err(werr)?;
    Ok(CommandResponse::Ok)
}

/// The expiry of a [`NONCES`] row.
fn nonce_until(row: &[u8]) -> u64 {
    row.get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

/// The META key of the pending seeks (JSON map target key → [seq, id]).
pub(super) const PENDING_SEEKS: &str = "pending_seeks";

fn save_pending_seeks(
    txn: &WriteTransaction,
    pending: &std::collections::BTreeMap<String, (u64, String)>,
) -> SResult<()> {
    let mut meta = txn.open_table(META).map_err(werr)?;
    if pending.is_empty() {
        meta.remove(PENDING_SEEKS).map_err(werr)?;
    } else {
        let v = serde_json::to_vec(pending).map_err(werr)?;
        meta.insert(PENDING_SEEKS, v.as_slice()).map_err(werr)?;
    }
    Ok(())
}
