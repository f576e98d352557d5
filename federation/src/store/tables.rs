//! The tables of a site's state database (`state.redb`), in one place:
//! the state machine ([`super::state`]), the link outbox and inbox
//! ([`super::links`]) and the snapshot format ([`super::snapshot`]) all
//! read them from here.

use redb::{TableDefinition, WriteTransaction};

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const BUSES: TableDefinition<&str, &[u8]> = TableDefinition::new("buses");
/// Key: "bus\u{0}rule".
pub(crate) const RULES: TableDefinition<&str, &[u8]> = TableDefinition::new("rules");
/// Key: source name. Value: the source definition (JSON).
pub(crate) const SOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("sources");
/// Key: (bus, sequence of the block's first event). Value: a block of that
/// bus's events from one log entry (see [`super::blocks`]).
pub(crate) const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("event_blocks");
/// Key: "bus\u{0}source\u{0}id". Value: ingest ms.
pub(crate) const DEDUP: TableDefinition<&str, u64> = TableDefinition::new("dedup");
/// Key: target key "bus/rule/target". Value: next sequence to process.
pub(crate) const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
/// The delivery journal ([`crate::journal`]). Key: (the event's ingest ms
/// at its origin, "bus\u{0}source\u{0}id"). Value: JSON array of
/// [`crate::journal::JournalEntry`], one per (rule, target, origin).
pub(crate) const JOURNAL: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("journal");
/// Cursor marks. Key: (cursor key, the cursor's value after a checkpoint
/// moved it). Value: the checkpoint's time, ms since the epoch.
pub(crate) const MARKS: TableDefinition<(&str, u64), u64> = TableDefinition::new("cursor_marks");
/// Replicated target counters. Key: target key (or the key a delivery
/// made for another site counts under). Value: JSON
/// [`crate::journal::TargetCounts`].
pub(crate) const COUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("target_counts");

/// Signature nonces used once in the site ([`crate::command::Command::UseNonce`]).
/// Key: the nonce key. Value: until when it is remembered (ms, 8 bytes big
/// endian), then the id of the request that used it.
pub(crate) const NONCES: TableDefinition<&str, &[u8]> = TableDefinition::new("nonces");
/// The nonces by expiry: `(until ms, nonce key)`, empty value.
pub(crate) const NONCE_EXPIRY: TableDefinition<(u64, &str), &[u8]> =
    TableDefinition::new("nonce_expiry");

pub(crate) const OUTBOX: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("link_out_blocks");
pub(crate) const INBOX: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("link_in_blocks");
pub(crate) const LINK_META: TableDefinition<&str, &[u8]> = TableDefinition::new("link_meta");
/// Rule definitions the outbox to a remote site refers to: `(remote, hash)`.
pub(crate) const SPECS_OUT: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("link_specs_out");
/// Rule definitions the inbox from an origin site refers to: `(origin, hash)`.
pub(crate) const SPECS_IN: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("link_specs_in");

/// A table of the state, by the shape of its key and value.
#[derive(Clone, Copy)]
pub(crate) enum Table {
    /// String key, bytes value.
    StrBytes(TableDefinition<'static, &'static str, &'static [u8]>),
    /// String key, u64 value.
    StrU64(TableDefinition<'static, &'static str, u64>),
    /// `(name, sequence)` key, block value.
    Blocks(TableDefinition<'static, (&'static str, u64), &'static [u8]>),
    /// `(name, name)` key, bytes value.
    PairBytes(TableDefinition<'static, (&'static str, &'static str), &'static [u8]>),
    /// `(u64, name)` key, bytes value.
    U64StrBytes(TableDefinition<'static, (u64, &'static str), &'static [u8]>),
    /// `(name, u64)` key, u64 value.
    StrU64U64(TableDefinition<'static, (&'static str, u64), u64>),
}

/// Every table of the state, with its record tag (fixed for a version).
pub(crate) const TABLES: [(u8, Table); 17] = [
    (1, Table::StrBytes(META)),
    (2, Table::StrBytes(BUSES)),
    (3, Table::StrBytes(RULES)),
    (4, Table::StrBytes(SOURCES)),
    (5, Table::Blocks(EVENTS)),
    (6, Table::StrU64(DEDUP)),
    (7, Table::StrU64(CURSORS)),
    (8, Table::Blocks(OUTBOX)),
    (9, Table::Blocks(INBOX)),
    (10, Table::StrBytes(LINK_META)),
    (11, Table::PairBytes(SPECS_OUT)),
    (12, Table::PairBytes(SPECS_IN)),
    (13, Table::U64StrBytes(JOURNAL)),
    (14, Table::StrU64U64(MARKS)),
    (15, Table::StrBytes(COUNTS)),
    (16, Table::StrBytes(NONCES)),
    (17, Table::U64StrBytes(NONCE_EXPIRY)),
];

/// Create every table of the state in `db` (readers open them all).
pub(crate) fn create_tables(txn: &WriteTransaction) -> std::result::Result<(), redb::TableError> {
    for (_, t) in TABLES {
        match t {
            Table::StrBytes(d) => drop(txn.open_table(d)?),
            Table::StrU64(d) => drop(txn.open_table(d)?),
            Table::Blocks(d) => drop(txn.open_table(d)?),
            Table::PairBytes(d) => drop(txn.open_table(d)?),
            Table::U64StrBytes(d) => drop(txn.open_table(d)?),
            Table::StrU64U64(d) => drop(txn.open_table(d)?),
        }
    }
    Ok(())
}
