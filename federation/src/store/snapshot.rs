//! The snapshot format: the state database's tables streamed row by row,
//! so that a snapshot is written from a read transaction and loaded into a
//! fresh database with memory bounded by the largest row, whatever the
//! state holds.
//!
//! Layout (integers big endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `STRAITSN` |
//! | 4 | format version ([`VERSION`]) |
//! | then | records: `tag` (u8), `len` (u32), `len` bytes of payload |
//!
//! A record's tag names the table its row belongs to (`tables::TABLES`); its
//! payload is the key then the value: a string key as a u32 length and its
//! bytes, a `(string, u64)` key as the string then the u64, a
//! `(string, string)` key as two strings, a `(u64, string)` key as the u64
//! then the string; a u64 value as 8 bytes, a bytes value as the rest of
//! the payload. Rows are copied as stored, so event
//! and link blocks (see [`super::blocks`]) are not decoded and re-encoded;
//! they are checked on load. The last record has tag [`END`] and holds the
//! number of rows before it (u64): a truncated file is refused.
//!
//! Snapshots written before this format (one JSON document, starting with
//! `{`) are still installed, see [`super::state::SiteState::install_snapshot_from`].
//! A reader refuses a file with another magic or a version it does not know.

use std::io::{Read, Write};

use redb::{Database, ReadTransaction, ReadableTable, WriteTransaction};

use super::tables::{TABLES, Table};

/// The first bytes of a snapshot file.
pub const MAGIC: [u8; 8] = *b"STRAITSN";

/// The format version this node writes.
///
/// Version 3 adds the delivery journal's tables (tags 13 to 15: journal,
/// cursor marks, target counts); its other records are those of version 2.
/// A node that reads versions up to 2 refuses a version 3 snapshot with
/// [`SnapshotError::UnsupportedVersion`] (it would otherwise stop at the
/// first record of an unknown tag), so in a site whose nodes run mixed
/// versions a follower of the older version cannot install a snapshot
/// from a leader of this one: upgrade every node of the site before
/// snapshots need to be sent (a follower that keeps up from the log
/// needs none). A version 2 snapshot installs here with an empty journal.
///
/// Version 4 adds the signature nonces (tags 16 and 17: nonces, nonce
/// expiry); a version 3 reader refuses it the same way, and a version 3
/// snapshot installs here with no nonces remembered.
pub const VERSION: u32 = 4;

/// The oldest format version this node reads. Version 1 differs from 2
/// only in holding event and link blocks uncompressed: a node writing
/// version 2 reads both kinds of blocks (see [`super::blocks`]), a node
/// reading only version 1 refuses version 2 instead of misreading its
/// compressed blocks.
pub const OLDEST_VERSION: u32 = 1;

/// The tag of the last record.
pub const END: u8 = 0;

/// The largest record a reader accepts (a row is one log entry's events of
/// one bus at most: far smaller).
pub const MAX_RECORD: usize = 256 << 20;

/// Payload bytes loaded per write transaction on install: the transaction's
/// dirty pages stay in memory until it commits.
pub const LOAD_BATCH: usize = 32 << 20;

/// Reading or writing a snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing the file failed.
    #[error("snapshot I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The state database failed.
    #[error("state database: {0}")]
    Db(#[from] redb::Error),
    /// The file is not a Strait snapshot.
    #[error("not a Strait snapshot (the file starts with {0:?})")]
    NotASnapshot(Vec<u8>),
    /// The file is a snapshot of a format version this node cannot read.
    #[error(
        "snapshot format version {found} is not supported: this node reads versions \
         {OLDEST_VERSION} to {VERSION} (and the older JSON snapshots); upgrade this node to the \
         version of the node that wrote the snapshot"
    )]
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
    },
    /// The file's content is malformed.
    #[error("malformed snapshot: {0}")]
    Malformed(String),
}

fn db<E: Into<redb::Error>>(e: E) -> SnapshotError {
    SnapshotError::Db(e.into())
}

fn malformed(m: impl Into<String>) -> SnapshotError {
    SnapshotError::Malformed(m.into())
}

type Result<T> = std::result::Result<T, SnapshotError>;

/// What a snapshot holds, counted while it is written or loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Rows.
    pub rows: u64,
    /// Bytes of the file.
    pub bytes: u64,
}

struct Out<'w, W: Write> {
    w: &'w mut W,
    counts: Counts,
}

impl<W: Write> Out<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.w.write_all(bytes)?;
        self.counts.bytes += bytes.len() as u64;
        Ok(())
    }

    fn record(&mut self, tag: u8, parts: &[&[u8]]) -> Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(len)
            .ok()
            .filter(|l| (*l as usize) <= MAX_RECORD)
            .ok_or_else(|| malformed(format!("a row of {len} bytes is too large")))?;
        self.put(&[tag])?;
        self.put(&len.to_be_bytes())?;
        for p in parts {
            self.put(p)?;
        }
        if tag != END {
            self.counts.rows += 1;
        }
        Ok(())
    }
}

fn str_len(s: &str) -> Result<[u8; 4]> {
    u32::try_from(s.len())
        .map(u32::to_be_bytes)
        .map_err(|_| malformed("a key longer than 4 GiB"))
}

/// Write the state as `txn` reads it to `w`, a row at a time.
pub(crate) fn write(txn: &ReadTransaction, w: &mut impl Write) -> Result<Counts> {
    let mut out = Out {
        w,
        counts: Counts::default(),
    };
    out.put(&MAGIC)?;
    out.put(&VERSION.to_be_bytes())?;
    for (tag, t) in TABLES {
        match t {
            Table::StrBytes(d) => {
                for item in txn.open_table(d).map_err(db)?.iter().map_err(db)? {
                    let (k, v) = item.map_err(db)?;
                    let k = k.value();
                    out.record(tag, &[&str_len(k)?, k.as_bytes(), v.value()])?;
                }
            }
            Table::StrU64(d) => {
                for item in txn.open_table(d).map_err(db)?.iter().map_err(db)? {
                    let (k, v) = item.map_err(db)?;
                    let k = k.value();
                    out.record(tag, &[&str_len(k)?, k.as_bytes(), &v.value().to_be_bytes()])?;
                }
            }
            Table::Blocks(d) => {
                for item in txn.open_table(d).map_err(db)?.iter().map_err(db)? {
                    let (k, v) = item.map_err(db)?;
                    let (name, first) = k.value();
                    out.record(
                        tag,
                        &[
                            &str_len(name)?,
                            name.as_bytes(),
                            &first.to_be_bytes(),
                            v.value(),
                        ],
                    )?;
                }
            }
            Table::PairBytes(d) => {
                for item in txn.open_table(d).map_err(db)?.iter().map_err(db)? {
                    let (k, v) = item.map_err(db)?;
                    let (a, b) = k.value();
                    out.record(
                        tag,
                        &[
                            &str_len(a)?,
                            a.as_bytes(),
                            &str_len(b)?,
                            b.as_bytes(),
                            v.value(),
                        ],
                    )?;
                }
            }
            Table::U64StrBytes(d) => {
                for item in txn.open_table(d).map_err(db)?.iter().map_err(db)? {
                    let (k, v) = item.map_err(db)?;
                    let (n, name) = k.value();
                    out.record(
                        tag,
                        &[
                            &n.to_be_bytes(),
                            &str_len(name)?,
                            name.as_bytes(),
                            v.value(),
                        ],
                    )?;
                }
            }
            Table::StrU64U64(d) => {
                for item in txn.open_table(d).map_err(db)?.iter().map_err(db)? {
                    let (k, v) = item.map_err(db)?;
                    let (name, n) = k.value();
                    out.record(
                        tag,
                        &[
                            &str_len(name)?,
                            name.as_bytes(),
                            &n.to_be_bytes(),
                            &v.value().to_be_bytes(),
                        ],
                    )?;
                }
            }
        }
    }
    let rows = out.counts.rows;
    out.record(END, &[&rows.to_be_bytes()])?;
    out.w.flush()?;
    Ok(out.counts)
}

/// Read the header: `Ok(())` for this version, an error naming what the
/// file is otherwise.
pub(crate) fn read_header(r: &mut impl Read) -> Result<()> {
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < head.len() {
        let n = r.read(&mut head[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    if got < head.len() || head[..8] != MAGIC {
        return Err(SnapshotError::NotASnapshot(head[..got.min(8)].to_vec()));
    }
    let found = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
    if !(OLDEST_VERSION..=VERSION).contains(&found) {
        return Err(SnapshotError::UnsupportedVersion { found });
    }
    Ok(())
}

/// Read the next record into `buf`; its tag.
fn read_record(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<u8> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)
        .map_err(|e| truncated(e, "a record"))?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_RECORD {
        return Err(malformed(format!(
            "a record of {len} bytes (at most {MAX_RECORD})"
        )));
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).map_err(|e| truncated(e, "a record"))?;
    Ok(head[0])
}

fn truncated(e: std::io::Error, what: &str) -> SnapshotError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        malformed(format!("the file ends inside {what} (truncated?)"))
    } else {
        SnapshotError::Io(e)
    }
}

/// A cursor over a record's payload.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn u64(&mut self) -> Result<u64> {
        let (b, rest) = self
            .0
            .split_first_chunk::<8>()
            .ok_or_else(|| malformed("a record too short for its u64"))?;
        self.0 = rest;
        Ok(u64::from_be_bytes(*b))
    }

    fn str(&mut self) -> Result<&'a str> {
        let (len, rest) = self
            .0
            .split_first_chunk::<4>()
            .ok_or_else(|| malformed("a record too short for its key"))?;
        let len = u32::from_be_bytes(*len) as usize;
        if len > rest.len() {
            return Err(malformed("a key longer than its record"));
        }
        let (s, rest) = rest.split_at(len);
        self.0 = rest;
        std::str::from_utf8(s).map_err(|_| malformed("a key that is not UTF-8"))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    fn end(&self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(malformed("a record longer than its fields"))
        }
    }
}

/// The tables of one load transaction, by tag.
enum Open<'t> {
    StrBytes(redb::Table<'t, &'static str, &'static [u8]>),
    StrU64(redb::Table<'t, &'static str, u64>),
    Blocks(redb::Table<'t, (&'static str, u64), &'static [u8]>),
    PairBytes(redb::Table<'t, (&'static str, &'static str), &'static [u8]>),
    U64StrBytes(redb::Table<'t, (u64, &'static str), &'static [u8]>),
    StrU64U64(redb::Table<'t, (&'static str, u64), u64>),
}

fn open_all(txn: &WriteTransaction) -> Result<Vec<(u8, Open<'_>)>> {
    let mut v = Vec::with_capacity(TABLES.len());
    for (tag, t) in TABLES {
        v.push((
            tag,
            match t {
                Table::StrBytes(d) => Open::StrBytes(txn.open_table(d).map_err(db)?),
                Table::StrU64(d) => Open::StrU64(txn.open_table(d).map_err(db)?),
                Table::Blocks(d) => Open::Blocks(txn.open_table(d).map_err(db)?),
                Table::PairBytes(d) => Open::PairBytes(txn.open_table(d).map_err(db)?),
                Table::U64StrBytes(d) => Open::U64StrBytes(txn.open_table(d).map_err(db)?),
                Table::StrU64U64(d) => Open::StrU64U64(txn.open_table(d).map_err(db)?),
            },
        ));
    }
    Ok(v)
}

fn insert(open: &mut Open<'_>, payload: &[u8]) -> Result<()> {
    let mut f = Fields(payload);
    match open {
        Open::StrBytes(t) => {
            let k = f.str()?;
            t.insert(k, f.rest()).map_err(db)?;
        }
        Open::StrU64(t) => {
            let k = f.str()?;
            let v = f.u64()?;
            f.end()?;
            t.insert(k, v).map_err(db)?;
        }
        Open::Blocks(t) => {
            let name = f.str()?;
            let first = f.u64()?;
            let block = f.rest();
            super::block_table::parse(name, first, block).map_err(|e| malformed(e.to_string()))?;
            t.insert((name, first), block).map_err(db)?;
        }
        Open::PairBytes(t) => {
            let a = f.str()?;
            let b = f.str()?;
            t.insert((a, b), f.rest()).map_err(db)?;
        }
        Open::U64StrBytes(t) => {
            let n = f.u64()?;
            let name = f.str()?;
            t.insert((n, name), f.rest()).map_err(db)?;
        }
        Open::StrU64U64(t) => {
            let name = f.str()?;
            let n = f.u64()?;
            let v = f.u64()?;
            f.end()?;
            t.insert((name, n), v).map_err(db)?;
        }
    }
    Ok(())
}

/// Load the records after the header from `r` into `target` (a fresh
/// database), in write transactions of about [`LOAD_BATCH`] bytes each,
/// every one committed durably. Memory: one record and one transaction's
/// pages, whatever the snapshot holds.
pub(crate) fn load(r: &mut impl Read, target: &Database) -> Result<Counts> {
    let mut buf = Vec::new();
    let mut counts = Counts { rows: 0, bytes: 12 };
    loop {
        let txn = target.begin_write().map_err(db)?;
        let mut batch = 0usize;
        let mut ended = false;
        {
            let mut open = open_all(&txn)?;
            while batch < LOAD_BATCH {
                let tag = read_record(r, &mut buf)?;
                counts.bytes += 5 + buf.len() as u64;
                batch += 5 + buf.len();
                if tag == END {
                    let mut f = Fields(&buf);
                    let rows = f.u64()?;
                    f.end()?;
                    if rows != counts.rows {
                        return Err(malformed(format!(
                            "the file lists {rows} rows but holds {}",
                            counts.rows
                        )));
                    }
                    ended = true;
                    break;
                }
                let open = open
                    .iter_mut()
                    .find(|(t, _)| *t == tag)
                    .map(|(_, o)| o)
                    .ok_or_else(|| malformed(format!("a record of unknown table tag {tag}")))?;
                insert(open, &buf)?;
                counts.rows += 1;
                // A large row's buffer is not kept for the small ones after it.
                if buf.capacity() > 4 << 20 {
                    buf = Vec::new();
                }
            }
        }
        txn.commit().map_err(db)?;
        if ended {
            break;
        }
    }
    let mut extra = [0u8; 1];
    if r.read(&mut extra)? != 0 {
        return Err(malformed("bytes after the end record"));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableDatabase as _;

    fn fresh(dir: &std::path::Path, name: &str) -> anyhow::Result<Database> {
        let db = Database::create(dir.join(name))?;
        let txn = db.begin_write()?;
        crate::store::tables::create_tables(&txn)?;
        txn.commit()?;
        Ok(db)
    }

    fn sample(db: &Database) -> anyhow::Result<()> {
        use super::super::blocks::BlockBuilder;
        let txn = db.begin_write()?;
        {
            let (_, Table::StrBytes(meta)) = TABLES[0] else {
                anyhow::bail!("table 0 is meta")
            };
            txn.open_table(meta)?.insert("next_seq", &b"3"[..])?;
            let (_, Table::Blocks(events)) = TABLES[4] else {
                anyhow::bail!("table 4 is events")
            };
            let mut b = BlockBuilder::new();
            b.push(1, 10, br#"{"id":"a"}"#);
            b.push(2, 11, br#"{"id":"b"}"#);
            let (first, bytes) = b
                .finish(3)
                .into_iter()
                .next()
                .ok_or_else(|| anyhow::anyhow!("empty"))?;
            txn.open_table(events)?
                .insert(("bus", first), bytes.as_slice())?;
            let (_, Table::StrU64(dedup)) = TABLES[5] else {
                anyhow::bail!("table 5 is dedup")
            };
            txn.open_table(dedup)?.insert("k", 7)?;
            let (_, Table::PairBytes(specs)) = TABLES[10] else {
                anyhow::bail!("table 10 is specs_out")
            };
            txn.open_table(specs)?.insert(("aws", "h"), &b"{}"[..])?;
            let (_, Table::U64StrBytes(journal)) = TABLES[12] else {
                anyhow::bail!("table 12 is the journal")
            };
            txn.open_table(journal)?
                .insert((10, "bus\u{0}s\u{0}a"), &b"[]"[..])?;
            let (_, Table::StrU64U64(marks)) = TABLES[13] else {
                anyhow::bail!("table 13 is the marks")
            };
            txn.open_table(marks)?.insert(("bus/r/t", 2), 12)?;
            let (_, Table::StrBytes(counts)) = TABLES[14] else {
                anyhow::bail!("table 14 is the counts")
            };
            txn.open_table(counts)?.insert("bus/r/t", &b"{}"[..])?;
        }
        txn.commit()?;
        Ok(())
    }

    fn image(db: &Database) -> anyhow::Result<Vec<u8>> {
        let mut v = Vec::new();
        write(&db.begin_read()?, &mut v)?;
        Ok(v)
    }

    #[test]
    fn round_trip_is_identical_and_damage_is_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let a = fresh(dir.path(), "a")?;
        sample(&a)?;
        let bytes = image(&a)?;
        let b = fresh(dir.path(), "b")?;
        let mut r = &bytes[..];
        read_header(&mut r)?;
        let counts = load(&mut r, &b)?;
        assert_eq!(counts.rows, 7);
        assert_eq!(counts.bytes, bytes.len() as u64);
        assert_eq!(image(&b)?, bytes, "the copy writes the same snapshot");

        // Truncated anywhere: refused.
        for cut in [13, bytes.len() / 2, bytes.len() - 1] {
            let c = fresh(dir.path(), &format!("cut-{cut}"))?;
            let mut r = &bytes[..cut];
            read_header(&mut r)?;
            let err = load(&mut r, &c).expect_err("truncated");
            assert!(err.to_string().contains("truncated"), "{err}");
        }
        // Another version, or no snapshot at all: a clear error.
        let mut v5 = bytes.clone();
        v5[8..12].copy_from_slice(&5u32.to_be_bytes());
        let err = read_header(&mut &v5[..]).expect_err("version 5");
        assert!(
            err.to_string()
                .contains("snapshot format version 5 is not supported"),
            "{err}"
        );
        // Versions 1 (uncompressed blocks), 2 (no journal) and 3 (no
        // nonces) are still read.
        for old in [1u32, 2, 3] {
            let mut v = bytes.clone();
            v[8..12].copy_from_slice(&old.to_be_bytes());
            read_header(&mut &v[..])?;
        }
        let err = read_header(&mut &b"hello"[..]).expect_err("garbage");
        assert!(err.to_string().contains("not a Strait snapshot"), "{err}");
        // A malformed block is refused.
        let mut bad = bytes.clone();
        let at = bad
            .windows(4)
            .position(|w| w == br#"{"id"#)
            .ok_or_else(|| anyhow::anyhow!("no event"))?;
        // The block's event count sits after its format marker, before
        // the frame count, the index (2 events) and the frame table (one
        // frame, stored as is: too small to compress).
        let count_at = at - 8 - 2 * 20 - 8;
        bad[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let c = fresh(dir.path(), "bad")?;
        let mut r = &bad[..];
        read_header(&mut r)?;
        assert!(load(&mut r, &c).is_err());
        Ok(())
    }
}
