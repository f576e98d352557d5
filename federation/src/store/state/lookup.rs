//! Finding and listing a bus's events, and the delivery journal's reads
//! (see [`crate::journal`] and `docs/architecture.md`, "Delivery journal").
//!
//! Events are stored in blocks keyed by (bus, first sequence); nothing
//! indexes them by id. An event is found through the dedup index
//! ("bus\u{0}source\u{0}id" → ingest ms) and its ingest time: sequence
//! order is time order but for the clocks of successive leaders, so a
//! binary search over the sequences with a tolerance of [`CLOCK_SLACK_MS`]
//! finds the blocks that may hold it. Events whose dedup entry is gone
//! (a dedup window shorter than the retention) are looked for in the
//! blocks older than the dedup horizon, a bounded scan.

use std::borrow::Cow;
use std::collections::BTreeMap;

use openraft::StorageError;
use redb::{ReadableDatabase, ReadableTable};
use serde::Deserialize;

use super::journal::event_key;
use super::{SResult, SiteState, StoredEvent, rerr};
use crate::NodeId;
use crate::journal::{JournalEntry, TargetCounts};
use crate::store::block_table;
use crate::store::blocks::{Block, BlockError};
use crate::store::tables::{COUNTS, DEDUP, EVENTS, JOURNAL, MARKS, META};

/// How far back an ingest time may go from one committed event to a
/// later one (a new leader whose clock is behind the previous one's):
/// the time search looks this far on either side of the time it wants.
pub const CLOCK_SLACK_MS: u64 = 5_000;

/// Most rows (dedup entries or events) one [`SiteState::find_event`]
/// reads before it gives up with [`LookupError::TooManyToScan`].
pub const SCAN_LIMIT: u64 = 2_000_000;

/// An event found by [`SiteState::find_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundEvent {
    /// Its sequence at this site.
    pub seq: u64,
    /// Its ingest time at this site, ms since the epoch.
    pub ingest_ms: u64,
    /// CloudEvents `source`.
    pub source: String,
    /// The event in JSON structured form.
    pub json: Vec<u8>,
}

/// Why an event could not be looked up.
#[derive(Debug, thiserror::Error)]
#[expect(
    clippy::large_enum_variant,
    reason = "an error of a lookup, rare; the variant holds openraft's error as every other \
              state read returns it"
)]
pub enum LookupError {
    /// The state database failed.
    #[error("state read failed: {0}")]
    Storage(#[from] StorageError<NodeId>),
    /// Answering would read more rows than [`SCAN_LIMIT`] (a search by id
    /// alone on a bus of many sources, or an event older than the dedup
    /// window on a busy bus): name the event's source.
    #[error(
        "the search read {scanned} rows without an answer (at most {SCAN_LIMIT}); give the \
         event's source"
    )]
    TooManyToScan {
        /// Rows read.
        scanned: u64,
    },
}

/// Which events [`SiteState::list_events`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// CloudEvents `source`, exactly.
    pub source: Option<String>,
    /// CloudEvents `type`, exactly.
    pub event_type: Option<String>,
    /// Ingested at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// Ingested before this time (ms since the epoch).
    pub until_ms: Option<u64>,
}

/// A page of [`SiteState::list_events`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventPage {
    /// The events, by ascending sequence.
    pub events: Vec<StoredEvent>,
    /// The sequence to go on from, when there may be more.
    pub next: Option<u64>,
}

/// Which dead letters [`SiteState::dead_letters`] lists.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterQuery<'a> {
    /// The bus of the rule.
    pub bus: &'a str,
    /// The rule.
    pub rule: &'a str,
    /// One target of the rule, or all of them.
    pub target: Option<&'a str>,
}

/// Where a page of dead letters ends (a journal key: the event's ingest
/// ms and `bus\0source\0id`); the next page starts after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterCursor {
    /// Ingest ms of the last journal row read.
    pub ingest_ms: u64,
    /// Its `bus\0source\0id`.
    pub key: String,
}

impl DeadLetterCursor {
    /// The cursor as an opaque token (`ms.hex(key)`).
    pub fn token(&self) -> String {
        let hex: String = self.key.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{}.{hex}", self.ingest_ms)
    }

    /// A token written by [`DeadLetterCursor::token`].
    pub fn parse(token: &str) -> Option<DeadLetterCursor> {
        let (ms, hex) = token.split_once('.')?;
        let ms = ms.parse().ok()?;
        if hex.len() % 2 != 0 {
            return None;
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some(DeadLetterCursor {
            ingest_ms: ms,
            key: String::from_utf8(bytes).ok()?,
        })
    }
}

/// One dead letter of [`SiteState::dead_letters`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its journal entry (reason, attempts, status `dead-lettered` or
    /// `dropped`).
    pub entry: JournalEntry,
    /// The entries of the event's redrives to targets of the same rule
    /// (origin [`crate::store::links::REDRIVE_ORIGIN`]; the latest per target).
    pub redrives: Vec<JournalEntry>,
}

/// A page of [`SiteState::dead_letters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterPage {
    /// The dead letters, oldest event first.
    pub entries: Vec<DeadLetter>,
    /// Where to go on from, when there may be more.
    pub next: Option<DeadLetterCursor>,
    /// Journal rows read.
    pub scanned: u64,
}

/// The attributes a lookup reads of an event (the rest is skipped).
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    event_type: Option<Cow<'a, str>>,
}

fn head(json: &[u8]) -> Option<Head<'_>> {
    serde_json::from_slice(json).ok()
}

fn malformed(e: block_table::BlockTableError) -> StorageError<NodeId> {
    rerr(e)
}

/// The read error of block `first` of `bus`, whose contents are malformed.
fn malformed_block(bus: &str, first: u64) -> impl FnOnce(BlockError) -> StorageError<NodeId> {
    move |source| {
        rerr(block_table::BlockTableError::Malformed {
            name: bus.to_string(),
            first,
            source,
        })
    }
}

type Events<'t> = redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>;

/// The earliest ingest time in a block.
fn min_ingest_ms(b: &Block<'_>) -> u64 {
    (0..b.len()).map(|i| b.meta(i).1).min().unwrap_or(0)
}

/// The key of the block of `bus` holding (or preceding) sequence `seq`.
fn floor_block(table: &Events<'_>, bus: &str, seq: u64) -> SResult<Option<u64>> {
    Ok(
        match table
            .range((bus, 0)..=(bus, seq))
            .map_err(rerr)?
            .next_back()
        {
            Some(item) => Some(item.map_err(rerr)?.0.value().1),
            None => None,
        },
    )
}

/// The latest ingest time of the block of `bus` starting at `first`.
fn block_max_ms(table: &Events<'_>, bus: &str, first: u64) -> SResult<u64> {
    match table.get((bus, first)).map_err(rerr)? {
        Some(v) => Ok(block_table::parse(bus, first, v.value())
            .map_err(malformed)?
            .max_ingest_ms()),
        None => Ok(0),
    }
}

/// The first block of `bus` that may hold an event ingested at `ms` or
/// later: every block before it is older than `ms - slack` (given that
/// times never go back by more than `slack`; [`CLOCK_SLACK_MS`]). `None`
/// when every block is. A binary search over the sequences: a few dozen
/// block reads.
fn first_block_from(table: &Events<'_>, bus: &str, ms: u64, slack: u64) -> SResult<Option<u64>> {
    let want = ms.saturating_sub(slack);
    let mut range = table.range((bus, 0)..=(bus, u64::MAX)).map_err(rerr)?;
    let first = match range.next() {
        Some(item) => item.map_err(rerr)?.0.value().1,
        None => return Ok(None),
    };
    let last = match range.next_back() {
        Some(item) => {
            let (k, v) = item.map_err(rerr)?;
            let first = k.value().1;
            block_table::parse(bus, first, v.value())
                .map_err(malformed)?
                .last_seq()
                .unwrap_or(first)
        }
        None => first,
    };
    drop(range);
    if block_max_ms(table, bus, first)? >= want {
        return Ok(Some(first));
    }
    if floor_block(table, bus, last)?
        .map(|b| block_max_ms(table, bus, b))
        .transpose()?
        .is_none_or(|m| m < want)
    {
        return Ok(None);
    }
    // The block holding `lo` is older, the one holding `hi` is not.
    let (mut lo, mut hi) = (first, last);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let b = floor_block(table, bus, mid)?.unwrap_or(first);
        if block_max_ms(table, bus, b)? >= want {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    floor_block(table, bus, hi)
}

/// Visit the blocks of `bus` from the one starting at `from` on, while
/// `visit` returns true; stops (without visiting) at the first block whose
/// every event is later than `until_ms + slack`.
fn walk_blocks(
    table: &Events<'_>,
    bus: &str,
    from: u64,
    until_ms: u64,
    slack: u64,
    mut visit: impl FnMut(u64, &Block<'_>) -> SResult<bool>,
) -> SResult<()> {
    let stop = until_ms.saturating_add(slack);
    for item in table.range((bus, from)..=(bus, u64::MAX)).map_err(rerr)? {
        let (k, v) = item.map_err(rerr)?;
        let first = k.value().1;
        let block = block_table::parse(bus, first, v.value()).map_err(malformed)?;
        if min_ingest_ms(&block) > stop {
            break;
        }
        if !visit(first, &block)? {
            break;
        }
    }
    Ok(())
}

/// The events of `block` (from the one at `from` on) for which `want`
/// says yes, decompressing only what it must.
fn matching(
    bus: &str,
    first: u64,
    block: &Block<'_>,
    from: usize,
    mut want: impl FnMut(u64, u64, &[u8]) -> Option<String>,
    out: &mut Vec<FoundEvent>,
) -> SResult<()> {
    let mut buf = Vec::new();
    block
        .for_each_from(from, &mut buf, |seq, ms, json| {
            if let Some(source) = want(seq, ms, json) {
                out.push(FoundEvent {
                    seq,
                    ingest_ms: ms,
                    source,
                    json: json.to_vec(),
                });
            }
            true
        })
        .map_err(malformed_block(bus, first))?;
    Ok(())
}

/// The first event of `block` (from the one at `from` on) for which `want`
/// says yes.
fn find_in(
    bus: &str,
    first: u64,
    block: &Block<'_>,
    from: usize,
    mut want: impl FnMut(u64, u64, &[u8]) -> Option<String>,
) -> SResult<Option<FoundEvent>> {
    let mut buf = Vec::new();
    let mut hit = None;
    block
        .for_each_from(from, &mut buf, |seq, ms, json| {
            if let Some(source) = want(seq, ms, json) {
                hit = Some(FoundEvent {
                    seq,
                    ingest_ms: ms,
                    source,
                    json: json.to_vec(),
                });
                return false;
            }
            true
        })
        .map_err(malformed_block(bus, first))?;
    Ok(hit)
}

/// Whether `json` is the event (`source`, `id`); its source when it is.
fn is_event(json: &[u8], source: Option<&str>, id: &str) -> Option<String> {
    let h = head(json)?;
    if h.id.as_deref() != Some(id) {
        return None;
    }
    let s = h.source?;
    if source.is_some_and(|want| want != s) {
        return None;
    }
    Some(s.into_owned())
}

impl SiteState {
    /// The committed event(s) `(bus, source, id)`; with `source` `None`,
    /// every event of the bus with that id (a search of the bus's dedup
    /// entries, at most [`SCAN_LIMIT`] of them). Usually one event; more
    /// when the same id was posted again after its dedup window, or by
    /// several sources (an event posted again after its dedup window is
    /// found in its latest post only). When no dedup entry names the
    /// event, it is searched for among the events older than the dedup
    /// sweep's horizon (whose entries may be gone), at most [`SCAN_LIMIT`]
    /// of them; [`LookupError::TooManyToScan`] when there were more and
    /// none matched.
    pub fn find_event(
        &self,
        bus: &str,
        source: Option<&str>,
        id: &str,
    ) -> Result<Vec<FoundEvent>, LookupError> {
        self.find_event_within(bus, source, id, SCAN_LIMIT)
    }

    /// [`SiteState::find_event`] reading at most `limit` rows per search.
    fn find_event_within(
        &self,
        bus: &str,
        source: Option<&str>,
        id: &str,
        limit: u64,
    ) -> Result<Vec<FoundEvent>, LookupError> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        let dedup = txn.open_table(DEDUP).map_err(rerr)?;
        // (source, ingest ms) of the candidates.
        let mut candidates: Vec<(String, u64)> = Vec::new();
        match source {
            Some(s) => {
                if let Some(v) = dedup.get(event_key(bus, s, id).as_str()).map_err(rerr)? {
                    candidates.push((s.to_string(), v.value()));
                }
            }
            None => {
                let prefix = format!("{bus}\u{0}");
                let end = format!("{bus}\u{1}");
                let mut scanned = 0u64;
                for item in dedup.range(prefix.as_str()..end.as_str()).map_err(rerr)? {
                    let (k, v) = item.map_err(rerr)?;
                    scanned += 1;
                    if scanned > limit {
                        return Err(LookupError::TooManyToScan { scanned });
                    }
                    let key = k.value();
                    if let Some((src, kid)) = key[prefix.len()..].rsplit_once('\u{0}')
                        && kid == id
                    {
                        candidates.push((src.to_string(), v.value()));
                    }
                }
            }
        }
        let events = txn.open_table(EVENTS).map_err(rerr)?;
        let mut found = Vec::new();
        let mut scanned = 0u64;
        for (src, ms) in &candidates {
            // The event of a dedup entry is the one of its source and id
            // ingested at its time: the first match is the only one. Look
            // where the times are in order first (a block or two), then
            // within the clock slack.
            let mut hit = None;
            for slack in [0, CLOCK_SLACK_MS] {
                let Some(from) = first_block_from(&events, bus, *ms, slack)? else {
                    continue;
                };
                walk_blocks(&events, bus, from, *ms, slack, |first, block| {
                    scanned += block.len() as u64;
                    if let Some(at) = (0..block.len()).find(|i| block.meta(*i).1 == *ms) {
                        hit = find_in(bus, first, block, at, |_, t, json| {
                            if t == *ms {
                                is_event(json, Some(src), id)
                            } else {
                                None
                            }
                        })?;
                    }
                    Ok(hit.is_none() && scanned <= limit)
                })?;
                if hit.is_some() {
                    break;
                }
            }
            found.extend(hit);
        }
        if !found.is_empty() {
            found.sort_by_key(|f| f.seq);
            found.dedup_by_key(|f| f.seq);
            return Ok(found);
        }
        // The dedup entries younger than the sweep's horizon are all there:
        // only older events can have lost theirs. An entry that is there
        // names the latest event of its key: no search for an older one.
        let horizon = dedup_horizon(&txn)?;
        if horizon == 0 || !candidates.is_empty() {
            return Ok(found);
        }
        let mut scanned = 0u64;
        let mut over = false;
        walk_blocks(&events, bus, 0, horizon, CLOCK_SLACK_MS, |first, block| {
            scanned += block.len() as u64;
            if scanned > limit {
                over = true;
                return Ok(false);
            }
            matching(
                bus,
                first,
                block,
                0,
                |_, _, json| is_event(json, source, id),
                &mut found,
            )?;
            Ok(true)
        })?;
        if over && found.is_empty() {
            return Err(LookupError::TooManyToScan { scanned });
        }
        Ok(found)
    }

    /// The time of the first checkpoint that moved the cursor `cursor_key`
    /// past `seq` (to a value above it), from its marks; `None` when it has
    /// not (or its marks are collected); `Some(START_MARK)` when the target
    /// was created after `seq` (the event was never its to deliver).
    pub fn mark_after(&self, cursor_key: &str, seq: u64) -> SResult<Option<u64>> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        let marks = txn.open_table(MARKS).map_err(rerr)?;
        let Some(from) = seq.checked_add(1) else {
            return Ok(None);
        };
        Ok(
            match marks
                .range((cursor_key, from)..=(cursor_key, u64::MAX))
                .map_err(rerr)?
                .next()
            {
                Some(item) => Some(item.map_err(rerr)?.1.value()),
                None => None,
            },
        )
    }

    /// The dead letters of one target in the delivery journal (entries
    /// of this site's own deliveries, `origin` none, whose status is
    /// `dead-lettered` or `dropped`), oldest first: at most `limit`
    /// entries, reading at most `scan_cap` journal rows, starting after
    /// `after` (the [`DeadLetterPage::next`] of an earlier page). The
    /// journal keeps them as long as the retention (`retention_secs`).
    pub fn dead_letters(
        &self,
        q: &DeadLetterQuery<'_>,
        after: Option<&DeadLetterCursor>,
        limit: usize,
        scan_cap: usize,
    ) -> SResult<DeadLetterPage> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        let table = txn.open_table(JOURNAL).map_err(rerr)?;
        let bus_prefix = format!("{}\u{0}", q.bus);
        let start = after.map(|c| (c.ingest_ms, c.key.clone()));
        let range = match &start {
            Some((ms, key)) => table.range((*ms, key.as_str())..).map_err(rerr)?,
            None => table.range::<(u64, &str)>(..).map_err(rerr)?,
        };
        let mut page = DeadLetterPage::default();
        let mut last: Option<DeadLetterCursor> = None;
        for item in range {
            let (k, v) = item.map_err(rerr)?;
            let (ms, key) = k.value();
            if start
                .as_ref()
                .is_some_and(|(sm, sk)| *sm == ms && sk.as_str() == key)
            {
                continue;
            }
            if page.scanned >= scan_cap as u64 || page.entries.len() >= limit {
                // `after` is exclusive: go on after the last row read.
                page.next = last.or_else(|| after.cloned());
                break;
            }
            page.scanned += 1;
            last = Some(DeadLetterCursor {
                ingest_ms: ms,
                key: key.to_string(),
            });
            if !key.starts_with(&bus_prefix) {
                continue;
            }
            let entries: Vec<JournalEntry> = serde_json::from_slice(v.value()).map_err(rerr)?;
            let redrives: Vec<JournalEntry> = entries
                .iter()
                .filter(|e| {
                    e.rule == q.rule
                        && e.origin.as_deref() == Some(crate::store::links::REDRIVE_ORIGIN)
                })
                .cloned()
                .collect();
            page.entries.extend(
                entries
                    .into_iter()
                    .filter(|e| {
                        e.origin.is_none()
                            && e.rule == q.rule
                            && q.target.is_none_or(|t| t == e.target)
                            && matches!(
                                e.status,
                                crate::journal::DeliveryStatus::DeadLettered
                                    | crate::journal::DeliveryStatus::Dropped
                            )
                    })
                    .map(|entry| DeadLetter {
                        entry,
                        redrives: redrives.clone(),
                    }),
            );
        }
        Ok(page)
    }

    /// This site's journal entries for one event, keyed by its ingest
    /// time at the origin (one per rule, target and origin).
    pub fn journal_of(
        &self,
        bus: &str,
        source: &str,
        id: &str,
        origin_ingest_ms: u64,
    ) -> SResult<Vec<JournalEntry>> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        let table = txn.open_table(JOURNAL).map_err(rerr)?;
        let key = event_key(bus, source, id);
        match table.get((origin_ingest_ms, key.as_str())).map_err(rerr)? {
            Some(v) => serde_json::from_slice(v.value()).map_err(rerr),
            None => Ok(Vec::new()),
        }
    }

    /// The replicated counters of every target this site delivers, by
    /// key (target key, or the key deliveries made for another site count
    /// under).
    pub fn target_counts(&self) -> SResult<BTreeMap<String, TargetCounts>> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        let table = txn.open_table(COUNTS).map_err(rerr)?;
        let mut out = BTreeMap::new();
        for item in table.iter().map_err(rerr)? {
            let (k, v) = item.map_err(rerr)?;
            out.insert(
                k.value().to_string(),
                serde_json::from_slice(v.value()).map_err(rerr)?,
            );
        }
        Ok(out)
    }

    /// Events of `bus` from sequence `from_seq` up, ascending, that pass
    /// `filter`, at most `limit` of them, reading at most `scan_cap`
    /// events; [`EventPage::next`] is where to go on from (`None`: the end
    /// of the bus, or of `until_ms`). Only `source`, `type` and the ingest
    /// time are read for the filter (the JSON is parsed only with a
    /// `source` or `type` filter). With `since_ms`, the scan starts at the
    /// first block that may hold events that recent, and blocks wholly
    /// before it are skipped unread (not counted in `scan_cap`).
    pub fn list_events(
        &self,
        bus: &str,
        filter: &EventFilter,
        from_seq: u64,
        limit: usize,
        scan_cap: usize,
    ) -> SResult<EventPage> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        let table = txn.open_table(EVENTS).map_err(rerr)?;
        let mut from = from_seq;
        if let Some(since) = filter.since_ms {
            match first_block_from(&table, bus, since, CLOCK_SLACK_MS)? {
                Some(b) => from = from.max(b),
                None => return Ok(EventPage::default()),
            }
        }
        let mut page = EventPage::default();
        if limit == 0 || scan_cap == 0 {
            page.next = Some(from);
            return Ok(page);
        }
        let stop = filter.until_ms.map(|u| u.saturating_add(CLOCK_SLACK_MS));
        let parse = filter.source.is_some() || filter.event_type.is_some();
        let mut scanned = 0usize;
        let mut next = None;
        let mut buf = Vec::new();
        let start = floor_block(&table, bus, from)?.unwrap_or(from);
        for item in table.range((bus, start)..=(bus, u64::MAX)).map_err(rerr)? {
            let (k, v) = item.map_err(rerr)?;
            let first = k.value().1;
            let block = block_table::parse(bus, first, v.value()).map_err(malformed)?;
            if stop.is_some_and(|s| min_ingest_ms(&block) > s) {
                break;
            }
            // A block wholly before `since` (the search starts up to the
            // clock slack before it) is skipped without being read.
            if filter.since_ms.is_some_and(|s| block.max_ingest_ms() < s) {
                continue;
            }
            let mut more = true;
            block
                .for_each_from(block.position_from(from), &mut buf, |seq, ms, json| {
                    if scanned >= scan_cap {
                        next = Some(seq);
                        more = false;
                        return false;
                    }
                    scanned += 1;
                    if filter.since_ms.is_some_and(|s| ms < s)
                        || filter.until_ms.is_some_and(|u| ms >= u)
                    {
                        return true;
                    }
                    if parse {
                        let Some(h) = head(json) else {
                            return true;
                        };
                        if filter
                            .source
                            .as_deref()
                            .is_some_and(|s| h.source.as_deref() != Some(s))
                            || filter
                                .event_type
                                .as_deref()
                                .is_some_and(|t| h.event_type.as_deref() != Some(t))
                        {
                            return true;
                        }
                    }
                    page.events.push(StoredEvent {
                        bus: bus.to_string(),
                        seq,
                        ingest_ms: ms,
                        json: json.to_vec(),
                    });
                    if page.events.len() >= limit {
                        next = Some(seq + 1);
                        more = false;
                        return false;
                    }
                    true
                })
                .map_err(malformed_block(bus, first))?;
            if !more {
                break;
            }
        }
        page.next = next;
        Ok(page)
    }
}

/// The latest horizon the dedup sweep was given: every dedup entry of an
/// event ingested at or after it is in the index (0: no sweep yet).
fn dedup_horizon(txn: &redb::ReadTransaction) -> SResult<u64> {
    let meta = txn.open_table(META).map_err(rerr)?;
    Ok(match meta.get("dedup_horizon").map_err(rerr)? {
        Some(v) => std::str::from_utf8(v.value())
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        None => 0,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use serde_json::value::RawValue;

    use super::*;
    use crate::command::{AppendEntry, Command};

    struct Site {
        state: Arc<SiteState>,
        index: u64,
        _dir: tempfile::TempDir,
    }

    impl Site {
        fn new() -> anyhow::Result<Site> {
            let dir = tempfile::tempdir()?;
            let state = SiteState::open(&dir.path().join("state.redb"))?;
            let mut site = Site {
                state,
                index: 1,
                _dir: dir,
            };
            site.apply(Command::PutBus {
                name: "b".into(),
                spec: serde_json::json!({}),
            })?;
            Ok(site)
        }

        fn apply(&mut self, cmd: Command) -> anyhow::Result<()> {
            let e = Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
                payload: EntryPayload::Normal(cmd),
            };
            self.index += 1;
            self.state.apply(vec![e], true)?;
            Ok(())
        }

        /// `n` events of source `/s{i % sources}` and id `{prefix}{i}`.
        fn append(
            &mut self,
            ms: u64,
            prefix: &str,
            n: usize,
            sources: usize,
        ) -> anyhow::Result<()> {
            let mut entries = Vec::new();
            for i in 0..n {
                let (source, id) = (format!("/s{}", i % sources), format!("{prefix}{i}"));
                let json = serde_json::json!({"id": id, "source": source, "type": "t"});
                entries.push(AppendEntry {
                    bus: "b".into(),
                    source,
                    id,
                    event: RawValue::from_string(json.to_string())?,
                });
            }
            self.apply(Command::Append {
                ingest_ms: ms,
                dedup_window_ms: 60_000,
                entries: Arc::new(entries),
            })
        }
    }

    #[test]
    fn a_search_by_id_alone_is_bounded() -> anyhow::Result<()> {
        let mut site = Site::new()?;
        site.append(1_000, "e", 50, 50)?;
        // 50 dedup entries of the bus: within 100, found; not within 10.
        let found = site.state.find_event_within("b", None, "e7", 100)?;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].source, "/s7");
        match site.state.find_event_within("b", None, "e7", 10) {
            Err(LookupError::TooManyToScan { scanned }) => assert_eq!(scanned, 11),
            other => panic!("{other:?}"),
        }
        // With the source: one dedup read, whatever the bound.
        assert_eq!(
            site.state.find_event_within("b", Some("/s7"), "e7", 1)?,
            found
        );
        Ok(())
    }

    #[test]
    fn the_fallback_scan_is_bounded() -> anyhow::Result<()> {
        let mut site = Site::new()?;
        site.append(1_000, "old", 30, 1)?;
        site.append(500_000, "new", 1, 1)?;
        // Sweep the dedup entries older than 100 s.
        site.apply(Command::Checkpoint {
            now_ms: 600_000,
            retention_ms: 3_600_000,
            dedup_window_ms: 100_000,
            cursors: vec![],
            journal: vec![],
            counts: vec![],
        })?;
        assert_eq!(site.state.dedup_entries()?, 1);
        let found = site
            .state
            .find_event_within("b", Some("/s0"), "old29", 100)?;
        assert_eq!(found.len(), 1);
        match site
            .state
            .find_event_within("b", Some("/s0"), "nothing", 10)
        {
            Err(LookupError::TooManyToScan { scanned }) => assert_eq!(scanned, 30),
            other => panic!("{other:?}"),
        }
        assert!(
            site.state
                .find_event_within("b", Some("/s0"), "nothing", 100)?
                .is_empty()
        );
        Ok(())
    }
}
