//! The redb side of [`super::blocks`]: tables keyed by `(name, first
//! sequence)` whose rows are blocks. Events (by bus) and the link outbox
//! and inbox (by site) are stored this way; this module reads, writes,
//! regroups and collects them, so the three tables share one mechanism.

use redb::{ReadableTable, Table};

use super::blocks::{Block, BlockBuilder, BlockError};

/// A table of blocks.
pub(crate) type Rows<'t> = Table<'t, (&'static str, u64), &'static [u8]>;

/// Reading or writing a block table failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BlockTableError {
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] redb::StorageError),
    /// A row is not a valid block.
    #[error("`{name}`, block at {first}: {source}")]
    Malformed {
        /// The bus or site the row belongs to.
        name: String,
        /// The row's first sequence.
        first: u64,
        /// What is wrong with it.
        source: BlockError,
    },
}

type Result<T> = std::result::Result<T, BlockTableError>;

/// Parse a row's block, naming the row when it is malformed.
pub(crate) fn parse<'a>(name: &str, first: u64, bytes: &'a [u8]) -> Result<Block<'a>> {
    Block::parse(bytes).map_err(|source| BlockTableError::Malformed {
        name: name.to_string(),
        first,
        source,
    })
}

/// Bytes a row of `name` with `value_bytes` of value counts for in the
/// state's size ([`crate::store::state::View::stored_bytes`]): its key and
/// value.
pub(crate) fn row_bytes(name: &str, value_bytes: usize) -> u64 {
    (name.len() + 8 + value_bytes) as u64
}

/// Insert a finished block's rows (nothing when empty); the bytes they
/// count for ([`row_bytes`]).
pub(crate) fn put(table: &mut Rows<'_>, name: &str, block: BlockBuilder) -> Result<u64> {
    let mut added = 0;
    for (first, bytes) in block.finish(name.len()) {
        table.insert((name, first), bytes.as_slice())?;
        added += row_bytes(name, bytes.len());
    }
    Ok(added)
}

/// Insert rows listed in `(name, sequence)` order, consecutive rows of a
/// name grouped into blocks of up to `per_block` (snapshot installs).
pub(crate) fn put_rows<'r>(
    table: &mut Rows<'_>,
    rows: impl IntoIterator<Item = (&'r str, u64, u64, &'r [u8])>,
    per_block: usize,
) -> Result<()> {
    // The state's size is counted once the install is complete.
    let mut current: Option<(&str, BlockBuilder)> = None;
    for (name, seq, ingest_ms, body) in rows {
        let full = match &current {
            Some((n, b)) => *n != name || b.len() >= per_block,
            None => true,
        };
        if full && let Some((n, b)) = current.replace((name, BlockBuilder::new())) {
            put(table, n, b)?;
        }
        if let Some((_, b)) = current.as_mut() {
            b.push(seq, ingest_ms, body);
        }
    }
    if let Some((n, b)) = current {
        put(table, n, b)?;
    }
    Ok(())
}

/// Call `f` with `(sequence, ingest ms, body)` of every item of `name`
/// with sequence `>= from`, in order, while it returns `true`.
pub(crate) fn scan_from<T: ReadableTable<(&'static str, u64), &'static [u8]>>(
    table: &T,
    name: &str,
    from: u64,
    mut f: impl FnMut(u64, u64, &[u8]) -> bool,
) -> Result<()> {
    // The block that may hold `from`: the last one starting at or before it.
    let start = match table.range((name, 0)..=(name, from))?.next_back() {
        Some(item) => item?.0.value().1,
        None => from,
    };
    let mut buf = Vec::new();
    for item in table.range((name, start)..=(name, u64::MAX))? {
        let (k, v) = item?;
        let first = k.value().1;
        let block = parse(name, first, v.value())?;
        let more = block
            .for_each_from(block.position_from(from), &mut buf, &mut f)
            .map_err(|source| BlockTableError::Malformed {
                name: name.to_string(),
                first,
                source,
            })?;
        if !more {
            return Ok(());
        }
    }
    Ok(())
}

/// What [`drop_done`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Dropped {
    /// Items (events, deliveries).
    pub items: usize,
    /// The bytes they counted for ([`row_bytes`]).
    pub bytes: u64,
}

/// Delete the blocks of `name` from the oldest on while every item in them
/// is below `below` and `done` says so for the block, up to about `limit`
/// items per call.
pub(crate) fn drop_done(
    table: &mut Rows<'_>,
    name: &str,
    below: u64,
    done: impl Fn(&Block<'_>) -> bool,
    limit: usize,
) -> Result<Dropped> {
    let mut doomed = Vec::new();
    let mut items = 0;
    let mut bytes = 0;
    for item in table.range((name, 0)..(name, below))? {
        let (k, v) = item?;
        let first = k.value().1;
        let block = parse(name, first, v.value())?;
        if block.last_seq().is_some_and(|l| l >= below) || !done(&block) {
            break;
        }
        doomed.push(first);
        items += block.len();
        bytes += row_bytes(name, v.value().len());
        if items >= limit {
            break;
        }
    }
    for first in doomed {
        table.remove((name, first))?;
    }
    Ok(Dropped { items, bytes })
}

/// The bytes every row of `table` counts for ([`row_bytes`]): a full scan
/// (tests, and states written before the count was kept).
pub(crate) fn count_bytes<T: ReadableTable<(&'static str, u64), &'static [u8]>>(
    table: &T,
) -> Result<u64> {
    let mut bytes = 0;
    for item in table.iter()? {
        let (k, v) = item?;
        bytes += row_bytes(k.value().0, v.value().len());
    }
    Ok(bytes)
}
