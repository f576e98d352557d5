//! The binary encoding of log entries and of the Raft RPCs that carry
//! them.
//!
//! A site writes every entry once per node into its log and sends it once
//! per follower; an `append` entry holds hundreds of events of ~1 KiB. In
//! JSON, each receiver had to parse every event to find where it ends.
//! Here every variable-length field is preceded by its length, so decoding
//! an event is a bounds check, a UTF-8 check and the JSON validation that a
//! [`RawValue`] needs, and encoding is a copy.
//!
//! The encoding is canonical: decoding bytes and encoding the result gives
//! the same bytes back. A follower therefore stores exactly the bytes its
//! leader sent.
//!
//! All integers are little endian. A *string* is a `u32` length followed by
//! that many bytes of UTF-8.
//!
//! **Entry payload** (a log record's payload, see [`crate::store::log`],
//! and each entry of an append-entries request):
//!
//! | bytes | field |
//! |---|---|
//! | 0 | kind: 0 blank, 1 membership, 2 command |
//! | 1.. | membership: its JSON; command: a *command* |
//!
//! **Command** (also the body of a write a follower forwards to its
//! leader):
//!
//! | tag (byte 0) | then |
//! |---|---|
//! | 1 `append` | `ingest_ms` u64, `dedup_window_ms` u64, count u32, count × (bus, source, id, event: strings) |
//! | 2 `link_enqueue` | remote: string, count u32, count × item: string, specs: string (JSON array) |
//! | 3 `link_receive` | origin: string, `first_seq` u64, count u32, count × item: string, specs: string (JSON array) |
//! | 0x7b (`{`) | any other command as JSON (the configuration commands: rare and small) |
//!
//! **Append-entries request** (method
//! [`crate::network_quic::METHOD_APPEND_ENTRIES`]):
//!
//! | bytes | field |
//! |---|---|
//! | 0 | [`APPEND_ENTRIES_MAGIC`] |
//! | 1..18 | vote: term u64, node id u64, committed (0 or 1) u8 |
//! | then | previous log id, then leader commit: each a *log id option* |
//! | then | count u32, count × (log id: term u64, node id u64, index u64; payload length u32; entry payload) |
//!
//! A *log id option* is a byte 0 (none) or 1 followed by term u64, node id
//! u64, index u64.
//!
//! Decoding never panics and never allocates more than the input's size
//! suggests: a count is checked against the bytes that remain before
//! anything is reserved for it.

use std::sync::Arc;

use openraft::raft::AppendEntriesRequest;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, Vote};
use serde_json::value::RawValue;

use crate::command::{AppendEntry, Command, LinkSpec};
use crate::{NodeId, NodeInfo, TypeConfig};

/// First byte of a binary append-entries request (a JSON one starts
/// with `{`).
pub const APPEND_ENTRIES_MAGIC: u8 = 0xB1;

const KIND_BLANK: u8 = 0;
const KIND_MEMBERSHIP: u8 = 1;
const KIND_COMMAND: u8 = 2;

const TAG_APPEND: u8 = 1;
const TAG_LINK_ENQUEUE: u8 = 2;
const TAG_LINK_RECEIVE: u8 = 3;
const TAG_JSON: u8 = b'{';

/// Why bytes are not a valid encoding.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The input ends inside a field.
    #[error("{what} cut short: need {need} bytes at offset {at}, have {have}")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Its offset.
        at: usize,
        /// Bytes it needs.
        need: usize,
        /// Bytes that remain.
        have: usize,
    },
    /// An unknown kind, tag or magic byte.
    #[error("unknown {what} {byte:#04x}")]
    Unknown {
        /// Which byte.
        what: &'static str,
        /// Its value.
        byte: u8,
    },
    /// A string field is not UTF-8.
    #[error("{0} is not UTF-8")]
    Utf8(&'static str),
    /// A JSON field does not parse.
    #[error("{what}: {source}")]
    Json {
        /// The field.
        what: &'static str,
        /// The parser's complaint.
        source: serde_json::Error,
    },
    /// A length does not fit the format's `u32`.
    #[error("{0} is longer than 4 GiB")]
    TooLong(&'static str),
    /// Bytes follow the end of the value.
    #[error("{0} unexpected bytes after the end")]
    Trailing(usize),
}

type WResult<T> = Result<T, WireError>;

// ------------------------------------------------------------ writing

fn put_u64(buf: &mut Vec<u8>, x: u64) {
    buf.extend_from_slice(&x.to_le_bytes());
}

fn put_len(buf: &mut Vec<u8>, len: usize, what: &'static str) -> WResult<()> {
    let n = u32::try_from(len).map_err(|_| WireError::TooLong(what))?;
    buf.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

fn put_str(buf: &mut Vec<u8>, s: &str, what: &'static str) -> WResult<()> {
    put_len(buf, s.len(), what)?;
    buf.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_log_id(buf: &mut Vec<u8>, id: &LogId<NodeId>) {
    put_u64(buf, id.leader_id.term);
    put_u64(buf, id.leader_id.node_id);
    put_u64(buf, id.index);
}

fn put_opt_log_id(buf: &mut Vec<u8>, id: &Option<LogId<NodeId>>) {
    match id {
        None => buf.push(0),
        Some(id) => {
            buf.push(1);
            put_log_id(buf, id);
        }
    }
}

fn put_items(buf: &mut Vec<u8>, items: &[Box<RawValue>]) -> WResult<()> {
    put_len(buf, items.len(), "item count")?;
    for item in items {
        put_str(buf, item.get(), "item")?;
    }
    Ok(())
}

fn put_specs(buf: &mut Vec<u8>, specs: &[LinkSpec]) -> WResult<()> {
    let json = serde_json::to_vec(specs).map_err(|source| WireError::Json {
        what: "link specs",
        source,
    })?;
    put_len(buf, json.len(), "link specs")?;
    buf.extend_from_slice(&json);
    Ok(())
}

/// Append the encoding of `cmd` to `buf`.
pub fn encode_command(buf: &mut Vec<u8>, cmd: &Command) -> WResult<()> {
    match cmd {
        Command::Append {
            ingest_ms,
            dedup_window_ms,
            entries,
        } => {
            let body: usize = entries
                .iter()
                .map(|e| 16 + e.bus.len() + e.source.len() + e.id.len() + e.event.get().len())
                .sum();
            buf.reserve(21 + body);
            buf.push(TAG_APPEND);
            put_u64(buf, *ingest_ms);
            put_u64(buf, *dedup_window_ms);
            put_len(buf, entries.len(), "event count")?;
            for e in entries.iter() {
                put_str(buf, &e.bus, "bus")?;
                put_str(buf, &e.source, "source")?;
                put_str(buf, &e.id, "id")?;
                put_str(buf, e.event.get(), "event")?;
            }
        }
        Command::LinkEnqueue {
            remote,
            items,
            specs,
        } => {
            buf.push(TAG_LINK_ENQUEUE);
            put_str(buf, remote, "remote")?;
            put_items(buf, items)?;
            put_specs(buf, specs)?;
        }
        Command::LinkReceive {
            origin,
            first_seq,
            items,
            specs,
        } => {
            buf.push(TAG_LINK_RECEIVE);
            put_str(buf, origin, "origin")?;
            put_u64(buf, *first_seq);
            put_items(buf, items)?;
            put_specs(buf, specs)?;
        }
        other => {
            // Starts with `{`: the tag is the JSON's first byte.
            serde_json::to_writer(&mut *buf, other).map_err(|source| WireError::Json {
                what: "command",
                source,
            })?;
        }
    }
    Ok(())
}

/// Append the encoding of an entry's payload to `buf`.
pub fn encode_payload(buf: &mut Vec<u8>, payload: &EntryPayload<TypeConfig>) -> WResult<()> {
    match payload {
        EntryPayload::Blank => buf.push(KIND_BLANK),
        EntryPayload::Membership(m) => {
            buf.push(KIND_MEMBERSHIP);
            serde_json::to_writer(&mut *buf, m).map_err(|source| WireError::Json {
                what: "membership",
                source,
            })?;
        }
        EntryPayload::Normal(cmd) => {
            buf.push(KIND_COMMAND);
            encode_command(buf, cmd)?;
        }
    }
    Ok(())
}

/// Encode an append-entries request.
pub fn encode_append_entries(rpc: &AppendEntriesRequest<TypeConfig>) -> WResult<Vec<u8>> {
    let mut buf = Vec::with_capacity(64 * 1024);
    buf.push(APPEND_ENTRIES_MAGIC);
    put_u64(&mut buf, rpc.vote.leader_id.term);
    put_u64(&mut buf, rpc.vote.leader_id.node_id);
    buf.push(u8::from(rpc.vote.committed));
    put_opt_log_id(&mut buf, &rpc.prev_log_id);
    put_opt_log_id(&mut buf, &rpc.leader_commit);
    put_len(&mut buf, rpc.entries.len(), "entry count")?;
    for e in &rpc.entries {
        put_log_id(&mut buf, &e.log_id);
        let at = buf.len();
        buf.extend_from_slice(&[0; 4]);
        encode_payload(&mut buf, &e.payload)?;
        let len = buf.len() - at - 4;
        let n = u32::try_from(len).map_err(|_| WireError::TooLong("entry"))?;
        buf[at..at + 4].copy_from_slice(&n.to_le_bytes());
    }
    Ok(buf)
}

// ------------------------------------------------------------ reading

/// A cursor over bytes being decoded; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize, what: &'static str) -> WResult<&'a [u8]> {
        if n > self.remaining() {
            return Err(WireError::Truncated {
                what,
                at: self.at,
                need: n,
                have: self.remaining(),
            });
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> WResult<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> WResult<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> WResult<u64> {
        let b = self.take(8, what)?;
        let mut x = [0u8; 8];
        x.copy_from_slice(b);
        Ok(u64::from_le_bytes(x))
    }

    fn bytes(&mut self, what: &'static str) -> WResult<&'a [u8]> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    fn str(&mut self, what: &'static str) -> WResult<&'a str> {
        std::str::from_utf8(self.bytes(what)?).map_err(|_| WireError::Utf8(what))
    }

    fn string(&mut self, what: &'static str) -> WResult<String> {
        self.str(what).map(str::to_owned)
    }

    fn raw_json(&mut self, what: &'static str) -> WResult<Box<RawValue>> {
        let s = self.string(what)?;
        RawValue::from_string(s).map_err(|source| WireError::Json { what, source })
    }

    /// A count of items, each at least `min_size` bytes: refused when the
    /// remaining bytes cannot hold them, so that a forged count never
    /// reserves memory.
    fn count(&mut self, what: &'static str, min_size: usize) -> WResult<usize> {
        let n = self.u32(what)? as usize;
        let need = n.saturating_mul(min_size);
        if need > self.remaining() {
            return Err(WireError::Truncated {
                what,
                at: self.at,
                need,
                have: self.remaining(),
            });
        }
        Ok(n)
    }

    fn log_id(&mut self) -> WResult<LogId<NodeId>> {
        let term = self.u64("log id")?;
        let node = self.u64("log id")?;
        let index = self.u64("log id")?;
        Ok(LogId::new(CommittedLeaderId::new(term, node), index))
    }

    fn opt_log_id(&mut self) -> WResult<Option<LogId<NodeId>>> {
        match self.u8("log id")? {
            0 => Ok(None),
            1 => self.log_id().map(Some),
            byte => Err(WireError::Unknown {
                what: "log id presence byte",
                byte,
            }),
        }
    }

    fn items(&mut self) -> WResult<Vec<Box<RawValue>>> {
        let n = self.count("item count", 4)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.raw_json("item")?);
        }
        Ok(items)
    }

    fn specs(&mut self) -> WResult<Vec<LinkSpec>> {
        let json = self.bytes("link specs")?;
        serde_json::from_slice(json).map_err(|source| WireError::Json {
            what: "link specs",
            source,
        })
    }

    fn end(&self) -> WResult<()> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }
}

/// Decode a command (the whole of `bytes`).
pub fn decode_command(bytes: &[u8]) -> WResult<Command> {
    let mut r = Reader::new(bytes);
    let cmd = read_command(&mut r)?;
    r.end()?;
    Ok(cmd)
}

fn read_command(r: &mut Reader<'_>) -> WResult<Command> {
    let tag = match r.bytes.get(r.at) {
        Some(t) => *t,
        None => {
            return Err(r
                .take(1, "command tag")
                .err()
                .unwrap_or(WireError::Trailing(0)));
        }
    };
    if tag == TAG_JSON {
        let rest = r.take(r.remaining(), "command")?;
        return serde_json::from_slice(rest).map_err(|source| WireError::Json {
            what: "command",
            source,
        });
    }
    r.at += 1;
    match tag {
        TAG_APPEND => {
            let ingest_ms = r.u64("ingest_ms")?;
            let dedup_window_ms = r.u64("dedup_window_ms")?;
            let n = r.count("event count", 16)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(AppendEntry {
                    bus: r.string("bus")?,
                    source: r.string("source")?,
                    id: r.string("id")?,
                    event: r.raw_json("event")?,
                });
            }
            Ok(Command::Append {
                ingest_ms,
                dedup_window_ms,
                entries: Arc::new(entries),
            })
        }
        TAG_LINK_ENQUEUE => Ok(Command::LinkEnqueue {
            remote: r.string("remote")?,
            items: Arc::new(r.items()?),
            specs: r.specs()?,
        }),
        TAG_LINK_RECEIVE => Ok(Command::LinkReceive {
            origin: r.string("origin")?,
            first_seq: r.u64("first_seq")?,
            items: Arc::new(r.items()?),
            specs: r.specs()?,
        }),
        byte => Err(WireError::Unknown {
            what: "command tag",
            byte,
        }),
    }
}

/// Decode an entry's payload (the whole of `bytes`).
pub fn decode_payload(bytes: &[u8]) -> WResult<EntryPayload<TypeConfig>> {
    let mut r = Reader::new(bytes);
    let payload = match r.u8("entry kind")? {
        KIND_BLANK => EntryPayload::Blank,
        KIND_MEMBERSHIP => {
            let rest = r.take(r.remaining(), "membership")?;
            let m: Membership<NodeId, NodeInfo> =
                serde_json::from_slice(rest).map_err(|source| WireError::Json {
                    what: "membership",
                    source,
                })?;
            EntryPayload::Membership(m)
        }
        KIND_COMMAND => EntryPayload::Normal(read_command(&mut r)?),
        byte => {
            return Err(WireError::Unknown {
                what: "entry kind",
                byte,
            });
        }
    };
    r.end()?;
    Ok(payload)
}

/// Decode an append-entries request encoded by [`encode_append_entries`].
pub fn decode_append_entries(bytes: &[u8]) -> WResult<AppendEntriesRequest<TypeConfig>> {
    let mut r = Reader::new(bytes);
    let magic = r.u8("magic")?;
    if magic != APPEND_ENTRIES_MAGIC {
        return Err(WireError::Unknown {
            what: "append-entries magic",
            byte: magic,
        });
    }
    let term = r.u64("vote")?;
    let node = r.u64("vote")?;
    let mut vote = Vote::new(term, node);
    vote.committed = match r.u8("vote")? {
        0 => false,
        1 => true,
        byte => {
            return Err(WireError::Unknown {
                what: "vote committed byte",
                byte,
            });
        }
    };
    let prev_log_id = r.opt_log_id()?;
    let leader_commit = r.opt_log_id()?;
    let n = r.count("entry count", 28)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let log_id = r.log_id()?;
        let payload = r.bytes("entry")?;
        entries.push(Entry {
            log_id,
            payload: decode_payload(payload)?,
        });
    }
    r.end()?;
    Ok(AppendEntriesRequest {
        vote,
        prev_log_id,
        entries,
        leader_commit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn json_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|x| x.to_string()),
            "[a-z\"\\\\é\\n]{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
            ("[a-z]{1,5}", any::<u32>()).prop_map(|(k, v)| format!(r#"{{"{k}":{v},"d":[1,2]}}"#)),
        ]
    }

    fn append_entry() -> impl Strategy<Value = AppendEntry> {
        (".{0,8}", ".{0,12}", ".{0,12}", json_value()).prop_map(|(bus, source, id, ev)| {
            AppendEntry {
                bus,
                source,
                id,
                event: raw(&ev),
            }
        })
    }

    fn spec() -> impl Strategy<Value = LinkSpec> {
        ("[0-9a-f]{0,16}", json_value()).prop_map(|(hash, s)| LinkSpec {
            hash,
            spec: raw(&s),
        })
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(append_entry(), 0..6)
            )
                .prop_map(|(ingest_ms, dedup_window_ms, e)| Command::Append {
                    ingest_ms,
                    dedup_window_ms,
                    entries: Arc::new(e),
                }),
            (
                ".{0,8}",
                proptest::collection::vec(json_value(), 0..4),
                proptest::collection::vec(spec(), 0..3)
            )
                .prop_map(|(remote, items, specs)| Command::LinkEnqueue {
                    remote,
                    items: Arc::new(items.iter().map(|s| raw(s)).collect()),
                    specs,
                }),
            (
                ".{0,8}",
                any::<u64>(),
                proptest::collection::vec(json_value(), 0..4),
                proptest::collection::vec(spec(), 0..3)
            )
                .prop_map(|(origin, first_seq, items, specs)| Command::LinkReceive {
                    origin,
                    first_seq,
                    items: Arc::new(items.iter().map(|s| raw(s)).collect()),
                    specs,
                }),
            (".{0,8}", any::<u64>()).prop_map(|(remote, upto)| Command::LinkAcked { remote, upto }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec((".{0,6}", any::<u64>()), 0..3)
            )
                .prop_map(|(now_ms, retention_ms, dedup_window_ms, cursors)| {
                    Command::Checkpoint {
                        now_ms,
                        retention_ms,
                        dedup_window_ms,
                        cursors,
                        journal: Vec::new(),
                        counts: Vec::new(),
                    }
                }),
            ".{0,8}".prop_map(|name| Command::DeleteBus { name }),
        ]
    }

    fn log_id() -> impl Strategy<Value = LogId<NodeId>> {
        (any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(|(t, n, i)| LogId::new(CommittedLeaderId::new(t, n), i))
    }

    fn payload() -> impl Strategy<Value = EntryPayload<TypeConfig>> {
        prop_oneof![
            Just(EntryPayload::Blank),
            command().prop_map(EntryPayload::Normal),
            proptest::collection::btree_set(1u64..9, 1..4).prop_map(|ids| {
                let nodes: BTreeMap<NodeId, NodeInfo> = ids
                    .iter()
                    .map(|i| {
                        (
                            *i,
                            NodeInfo {
                                http_addr: format!("h{i}:1"),
                                raft_addr: format!("r{i}:2"),
                                site: String::new(),
                            },
                        )
                    })
                    .collect();
                let voters: BTreeSet<NodeId> = ids.into_iter().collect();
                EntryPayload::Membership(Membership::new(vec![voters], nodes))
            }),
        ]
    }

    fn request() -> impl Strategy<Value = AppendEntriesRequest<TypeConfig>> {
        (
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            proptest::option::of(log_id()),
            proptest::option::of(log_id()),
            proptest::collection::vec((log_id(), payload()), 0..4),
        )
            .prop_map(|(term, node, committed, prev, commit, entries)| {
                let mut vote = Vote::new(term, node);
                vote.committed = committed;
                AppendEntriesRequest {
                    vote,
                    prev_log_id: prev,
                    leader_commit: commit,
                    entries: entries
                        .into_iter()
                        .map(|(log_id, payload)| Entry { log_id, payload })
                        .collect(),
                }
            })
    }

    /// Two requests are equal when their JSON forms are (the openraft and
    /// command types do not implement `PartialEq`).
    fn same<T: serde::Serialize>(a: &T, b: &T) -> bool {
        match (serde_json::to_string(a), serde_json::to_string(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn requests_round_trip_canonically(req in request()) {
            let bytes = encode_append_entries(&req).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = decode_append_entries(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(same(&req, &back));
            // Canonical: the receiver's encoding is the sender's bytes.
            let again = encode_append_entries(&back).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(bytes, again);
        }

        #[test]
        fn payloads_round_trip(p in payload()) {
            let mut bytes = Vec::new();
            encode_payload(&mut bytes, &p).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = decode_payload(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(same(&p, &back));
        }

        /// Arbitrary bytes, and real encodings cut short or with a byte
        /// changed: decoding returns an error or a value, never panics.
        #[test]
        fn malformed_input_never_panics(
            junk in proptest::collection::vec(any::<u8>(), 0..200),
            req in request(),
            cut in any::<proptest::sample::Index>(),
            flip in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let _ = decode_append_entries(&junk);
            let _ = decode_payload(&junk);
            let _ = decode_command(&junk);
            let mut with_magic = vec![APPEND_ENTRIES_MAGIC];
            with_magic.extend_from_slice(&junk);
            let _ = decode_append_entries(&with_magic);
            let bytes = encode_append_entries(&req).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let short = &bytes[..cut.index(bytes.len())];
            prop_assert!(decode_append_entries(short).is_err(), "a cut request decoded");
            let mut bad = bytes.clone();
            let at = flip.index(bad.len());
            bad[at] = byte;
            let _ = decode_append_entries(&bad);
        }
    }

    /// The redrive and seek commands travel as JSON and come back whole
    /// (canonical: encoding the decoded command gives the same bytes).
    #[test]
    fn redrive_and_seek_commands_round_trip() {
        let cmds = [
            Command::Redrive {
                items: Arc::new(vec![
                    RawValue::from_string("{\"id\":\"e1\"}".into()).expect("raw"),
                ]),
                specs: vec![LinkSpec {
                    hash: "h".into(),
                    spec: RawValue::from_string("{}".into()).expect("raw"),
                }],
            },
            Command::Seek {
                key: "b/r/t".into(),
                seq: 7,
                id: "s".into(),
            },
            Command::SeekDone {
                key: "b/r/t".into(),
                seq: 7,
                id: "s".into(),
            },
        ];
        for cmd in cmds {
            let mut buf = Vec::new();
            encode_command(&mut buf, &cmd).expect("encode");
            assert_eq!(buf.first(), Some(&TAG_JSON));
            let back = decode_command(&buf).expect("decode");
            assert_eq!(back.kind(), cmd.kind());
            let mut again = Vec::new();
            encode_command(&mut again, &back).expect("encode again");
            assert_eq!(again, buf);
        }
    }

    #[test]
    fn a_forged_count_reserves_nothing() {
        // An append claiming 4 billion events in a few bytes.
        let mut b = vec![TAG_APPEND];
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_command(&b),
            Err(WireError::Truncated {
                what: "event count",
                ..
            })
        ));
        let mut r = vec![APPEND_ENTRIES_MAGIC];
        r.extend_from_slice(&[0; 17]);
        r.extend_from_slice(&[0, 0]);
        r.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_append_entries(&r),
            Err(WireError::Truncated {
                what: "entry count",
                ..
            })
        ));
    }

    #[test]
    fn invalid_event_json_and_utf8_are_refused() {
        let cmd = Command::Append {
            ingest_ms: 1,
            dedup_window_ms: 2,
            entries: Arc::new(vec![AppendEntry {
                bus: "b".into(),
                source: "s".into(),
                id: "i".into(),
                event: raw(r#"{"a":1}"#),
            }]),
        };
        let mut good = Vec::new();
        encode_command(&mut good, &cmd).expect("encode");
        assert!(decode_command(&good).is_ok());
        // The event `{"a":1}` is the last 7 bytes: make it `{"a":1]`.
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] = b']';
        assert!(matches!(
            decode_command(&bad),
            Err(WireError::Json { what: "event", .. })
        ));
        // The bus `b`: not UTF-8.
        let mut bad = good.clone();
        bad[21 + 4] = 0xff;
        assert!(matches!(decode_command(&bad), Err(WireError::Utf8("bus"))));
        // A byte after the end.
        let mut long = good;
        long.push(0);
        assert!(matches!(decode_command(&long), Err(WireError::Trailing(1))));
    }
}
