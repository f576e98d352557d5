//! Replicated link state: per remote site an outbox of deliveries owed to
//! it, and per origin site an inbox of deliveries received from it.
//!
//! Both are stored in blocks (see [`super::blocks`]): one row per command,
//! keyed by `(site, first sequence)`, holding that command's deliveries.
//! A block is deleted once every delivery in it is done with; readers skip
//! the done ones of a block that is partly done.
//!
//! - Outbox `(remote, seq)`: sequences start at 1 and grow by one per
//!   delivery; blocks up to the remote's cumulative acknowledgement are
//!   deleted by [`Command::LinkAcked`](crate::Command::LinkAcked).
//! - Inbox `(origin, seq)`: [`Command::LinkReceive`](crate::Command::LinkReceive)
//!   stores exactly the next expected sequences (repeats are skipped, a gap
//!   is refused), so the inbox holds each origin sequence once, in order —
//!   the same rule as [`crate::link::proto::Receiver`], applied
//!   deterministically by every replica. Its reader's cursor is
//!   [`inbox_cursor_key`] in the site's cursors; delivered entries are
//!   deleted by the next checkpoint.

use std::collections::BTreeMap;

use openraft::StorageError;
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::block_table;
use super::blocks::BlockBuilder;
use super::tables::{CURSORS, INBOX, LINK_META, OUTBOX, SPECS_IN, SPECS_OUT};
use crate::NodeId;
use crate::command::{CommandResponse, LinkAnswer, LinkSpec, NotFound};

/// Deliveries per block when a snapshot is restored.
const RESTORE_BLOCK_ITEMS: usize = 1024;

type SResult<T> = Result<T, StorageError<NodeId>>;

fn werr<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    super::storage_err(
        openraft::ErrorSubject::StateMachine,
        openraft::ErrorVerb::Write,
        &e,
    )
}

/// The pseudo-origin of redriven deliveries ([`crate::Command::Redrive`]):
/// its inbox is delivered like a link's. `~` is not allowed in a site
/// name, so no real site has this inbox.
pub const REDRIVE_ORIGIN: &str = "~redrive";

/// The cursor key of the inbox reader for `origin`.
pub fn inbox_cursor_key(origin: &str) -> String {
    format!("link-in/{origin}")
}

/// Progress of the outbox to one remote site.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutLink {
    /// Highest sequence enqueued (0: none yet).
    pub last_seq: u64,
    /// Highest sequence the remote site acknowledged.
    pub acked: u64,
}

/// Link progress as the replicated view holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkView {
    /// Remote site → outbox progress.
    pub out: BTreeMap<String, OutLink>,
    /// Origin site → highest sequence committed into the inbox.
    pub inbound: BTreeMap<String, u64>,
}

/// A rule definition a link entry names: `(hash, definition JSON)`.
pub type SpecRow = (String, Vec<u8>);

/// One stored link entry (outbox or inbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEntry {
    /// Its sequence.
    pub seq: u64,
    /// The delivery (JSON).
    pub body: Vec<u8>,
}

fn out_key(remote: &str) -> String {
    format!("out/{remote}")
}

fn in_key(origin: &str) -> String {
    format!("in/{origin}")
}

fn save_meta(txn: &WriteTransaction, links: &LinkView) -> SResult<()> {
    let mut meta = txn.open_table(LINK_META).map_err(werr)?;
    for (remote, o) in &links.out {
        let b = serde_json::to_vec(o).map_err(werr)?;
        meta.insert(out_key(remote).as_str(), b.as_slice())
            .map_err(werr)?;
    }
    for (origin, c) in &links.inbound {
        let b = serde_json::to_vec(c).map_err(werr)?;
        meta.insert(in_key(origin).as_str(), b.as_slice())
            .map_err(werr)?;
    }
    Ok(())
}

/// The first outbox sequence to `remote` not yet acknowledged, as `txn`
/// sees it (earlier ones may linger in a partly acknowledged block).
pub(crate) fn outbox_done_below(txn: &redb::ReadTransaction, remote: &str) -> Result<u64, String> {
    let meta = txn.open_table(LINK_META).map_err(|e| e.to_string())?;
    let acked = match meta
        .get(out_key(remote).as_str())
        .map_err(|e| e.to_string())?
    {
        Some(v) => {
            serde_json::from_slice::<OutLink>(v.value())
                .map_err(|e| e.to_string())?
                .acked
        }
        None => 0,
    };
    Ok(acked + 1)
}

/// The first inbox sequence from `origin` not yet delivered (its reader's
/// checkpointed cursor), as `txn` sees it.
pub(crate) fn inbox_done_below(txn: &redb::ReadTransaction, origin: &str) -> Result<u64, String> {
    let cursors = txn.open_table(CURSORS).map_err(|e| e.to_string())?;
    Ok(cursors
        .get(inbox_cursor_key(origin).as_str())
        .map_err(|e| e.to_string())?
        .map(|v| v.value())
        .unwrap_or(0))
}

/// Store a block of deliveries of `name` (nothing when empty), counting
/// its bytes in `stored` (the state's size).
fn put_block(
    txn: &WriteTransaction,
    def: TableDefinition<(&str, u64), &[u8]>,
    name: &str,
    block: BlockBuilder,
    stored: &mut u64,
) -> SResult<()> {
    let mut t = txn.open_table(def).map_err(werr)?;
    *stored += block_table::put(&mut t, name, block).map_err(werr)?;
    Ok(())
}

/// Delete the blocks of `name` whose every delivery is below `below`,
/// taking their bytes off `stored`.
fn drop_blocks_below(
    txn: &WriteTransaction,
    def: TableDefinition<(&str, u64), &[u8]>,
    name: &str,
    below: u64,
    stored: &mut u64,
) -> SResult<()> {
    let mut t = txn.open_table(def).map_err(werr)?;
    let dropped =
        block_table::drop_done(&mut t, name, below, |_| true, usize::MAX).map_err(werr)?;
    *stored = stored.saturating_sub(dropped.bytes);
    Ok(())
}

/// Load the link view from the meta table.
pub(crate) fn load(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<LinkView, String> {
    let mut v = LinkView::default();
    for item in meta.iter().map_err(|e| e.to_string())? {
        let (k, val) = item.map_err(|e| e.to_string())?;
        let key = k.value();
        if let Some(remote) = key.strip_prefix("out/") {
            let o: OutLink = serde_json::from_slice(val.value()).map_err(|e| e.to_string())?;
            v.out.insert(remote.to_string(), o);
        } else if let Some(origin) = key.strip_prefix("in/") {
            let c: u64 = serde_json::from_slice(val.value()).map_err(|e| e.to_string())?;
            v.inbound.insert(origin.to_string(), c);
        }
    }
    Ok(v)
}

/// Append deliveries to the outbox for `remote`.
pub(crate) fn enqueue(
    txn: &WriteTransaction,
    links: &mut LinkView,
    stored: &mut u64,
    remote: &str,
    items: &[Box<RawValue>],
    specs: &[LinkSpec],
) -> SResult<CommandResponse> {
    put_specs(txn, SPECS_OUT, remote, specs)?;
    let o = links.out.entry(remote.to_string()).or_default();
    let first = o.last_seq + 1;
    let mut block = BlockBuilder::new();
    for item in items {
        o.last_seq += 1;
        block.push(o.last_seq, 0, item.get().as_bytes());
    }
    put_block(txn, OUTBOX, remote, block, stored)?;
    let last = o.last_seq;
    save_meta(txn, links)?;
    Ok(CommandResponse::Link(LinkAnswer::Enqueued { first, last }))
}

fn put_specs(
    txn: &WriteTransaction,
    def: TableDefinition<(&str, &str), &[u8]>,
    name: &str,
    specs: &[LinkSpec],
) -> SResult<()> {
    if specs.is_empty() {
        return Ok(());
    }
    let mut t = txn.open_table(def).map_err(werr)?;
    for s in specs {
        t.insert((name, s.hash.as_str()), s.spec.get().as_bytes())
            .map_err(werr)?;
    }
    Ok(())
}

fn drop_specs(
    txn: &WriteTransaction,
    def: TableDefinition<(&str, &str), &[u8]>,
    name: &str,
) -> SResult<()> {
    let mut t = txn.open_table(def).map_err(werr)?;
    t.retain_in((name, "")..=(name, "\u{10ffff}"), |_, _| false)
        .map_err(werr)?;
    Ok(())
}

/// The rule definition `hash` of `name` in `table`.
pub(crate) fn read_spec(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    name: &str,
    hash: &str,
) -> Result<Option<Vec<u8>>, String> {
    Ok(table
        .get((name, hash))
        .map_err(|e| e.to_string())?
        .map(|v| v.value().to_vec()))
}

/// The remote acknowledged everything up to `upto`: drop it from the outbox.
pub(crate) fn acked(
    txn: &WriteTransaction,
    links: &mut LinkView,
    stored: &mut u64,
    remote: &str,
    upto: u64,
) -> SResult<CommandResponse> {
    let Some(o) = links.out.get_mut(remote) else {
        return Ok(CommandResponse::NotFound(NotFound::Link {
            remote: remote.to_string(),
        }));
    };
    let upto = upto.min(o.last_seq);
    if upto > o.acked {
        drop_blocks_below(txn, OUTBOX, remote, upto + 1, stored)?;
        o.acked = upto;
        if o.acked == o.last_seq {
            // Drained: later deliveries bring their definitions again.
            drop_specs(txn, SPECS_OUT, remote)?;
        }
    }
    let acked = o.acked;
    save_meta(txn, links)?;
    Ok(CommandResponse::Link(LinkAnswer::Ack { upto: acked }))
}

/// A batch received from another site: the fields of a
/// [`Command::LinkReceive`](crate::Command::LinkReceive).
pub(crate) struct Batch<'a> {
    /// The sending site.
    pub origin: &'a str,
    /// Sequence of the first item.
    pub first_seq: u64,
    /// The deliveries.
    pub items: &'a [Box<RawValue>],
    /// Rule definitions the deliveries refer to by hash.
    pub specs: &'a [LinkSpec],
}

/// Store the next expected deliveries of `batch`, counting their bytes in
/// `stored`; the first batch from an origin starts its reader's cursor (in
/// `cursors`, the site's dispatch cursors).
pub(crate) fn receive(
    txn: &WriteTransaction,
    links: &mut LinkView,
    cursors: &mut BTreeMap<String, u64>,
    stored: &mut u64,
    batch: Batch<'_>,
) -> SResult<CommandResponse> {
    let Batch {
        origin,
        first_seq,
        items,
        specs,
    } = batch;
    let committed = links.inbound.get(origin).copied().unwrap_or(0);
    let receiver = crate::link::proto::Receiver::new(committed);
    let skip = match receiver.admit(first_seq, items.len()) {
        crate::link::proto::Admit::Fresh { skip } => skip,
        crate::link::proto::Admit::Repeat { upto } => {
            return Ok(CommandResponse::Link(LinkAnswer::Ack { upto }));
        }
        crate::link::proto::Admit::Gap { expected } => {
            return Ok(CommandResponse::Link(LinkAnswer::Gap { expected }));
        }
    };
    put_specs(txn, SPECS_IN, origin, specs)?;
    let mut seq = committed;
    let mut block = BlockBuilder::new();
    for item in &items[skip..] {
        seq += 1;
        block.push(seq, 0, item.get().as_bytes());
    }
    put_block(txn, INBOX, origin, block, stored)?;
    links.inbound.insert(origin.to_string(), seq);
    let key = inbox_cursor_key(origin);
    if !cursors.contains_key(&key) {
        cursors.insert(key.clone(), 1);
        txn.open_table(CURSORS)
            .map_err(werr)?
            .insert(key.as_str(), 1u64)
            .map_err(werr)?;
    }
    save_meta(txn, links)?;
    Ok(CommandResponse::Link(LinkAnswer::Ack { upto: seq }))
}

/// Delete inbox entries their reader is past.
pub(crate) fn collect_inbox(
    txn: &WriteTransaction,
    links: &LinkView,
    cursors: &BTreeMap<String, u64>,
    stored: &mut u64,
) -> SResult<()> {
    for (origin, committed) in &links.inbound {
        if let Some(c) = cursors.get(&inbox_cursor_key(origin))
            && *c > 1
        {
            drop_blocks_below(txn, INBOX, origin, *c, stored)?;
            if *c > *committed {
                // Delivered: later batches bring their definitions again.
                drop_specs(txn, SPECS_IN, origin)?;
            }
        }
    }
    Ok(())
}

/// Read up to `limit` entries of `(name, seq >= from)` from `table`.
pub(crate) fn read(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    name: &str,
    from: u64,
    limit: usize,
) -> Result<Vec<LinkEntry>, String> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    block_table::scan_from(table, name, from, |seq, _, body| {
        out.push(LinkEntry {
            seq,
            body: body.to_vec(),
        });
        out.len() < limit
    })
    .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Everything of the link tables, in snapshots of the older JSON format.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct LinkSnapshot {
    pub view: LinkView,
    pub outbox: Vec<(String, u64, Box<RawValue>)>,
    pub inbox: Vec<(String, u64, Box<RawValue>)>,
    #[serde(default)]
    pub specs_out: Vec<(String, String, Box<RawValue>)>,
    #[serde(default)]
    pub specs_in: Vec<(String, String, Box<RawValue>)>,
}

/// Replace the link tables with a snapshot's.
pub(crate) fn restore(txn: &WriteTransaction, s: &LinkSnapshot) -> SResult<()> {
    txn.delete_table(OUTBOX).map_err(werr)?;
    txn.delete_table(INBOX).map_err(werr)?;
    txn.delete_table(LINK_META).map_err(werr)?;
    txn.delete_table(SPECS_OUT).map_err(werr)?;
    txn.delete_table(SPECS_IN).map_err(werr)?;
    for (def, rows) in [(OUTBOX, &s.outbox), (INBOX, &s.inbox)] {
        // Opened (so created) even when it stays empty: readers open it.
        let mut t = txn.open_table(def).map_err(werr)?;
        // Rows come by (site, sequence).
        block_table::put_rows(
            &mut t,
            rows.iter()
                .map(|(name, seq, raw)| (name.as_str(), *seq, 0, raw.get().as_bytes())),
            RESTORE_BLOCK_ITEMS,
        )
        .map_err(werr)?;
    }
    for (def, rows) in [(SPECS_OUT, &s.specs_out), (SPECS_IN, &s.specs_in)] {
        let mut t = txn.open_table(def).map_err(werr)?;
        for (name, hash, raw) in rows {
            t.insert((name.as_str(), hash.as_str()), raw.get().as_bytes())
                .map_err(werr)?;
        }
    }
    save_meta(txn, &s.view)
}
