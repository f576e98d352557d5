//! Event blocks: the events of one bus committed by one log entry, stored
//! as one row of the state database.
//!
//! One row per event made applying a batch a B-tree insert per event; a
//! block makes it one insert per bus and entry, and the dispatcher reads
//! events in order anyway. Layout (big endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | `count`, the number of events |
//! | then `count` × 20 | per event: sequence (u64), ingest ms (u64), end offset of its JSON in the data part (u32) |
//! | rest | the events' JSON, one after another |
//!
//! Sequences increase within a block but need not be consecutive (the
//! sequence is site-wide, and an entry may carry events of several buses).

/// Bytes per event in the index part.
const SLOT: usize = 20;

/// Builds one block.
#[derive(Debug, Default)]
pub struct BlockBuilder {
    index: Vec<u8>,
    data: Vec<u8>,
    count: u32,
    first: Option<u64>,
}

impl BlockBuilder {
    /// An empty block.
    pub fn new() -> BlockBuilder {
        BlockBuilder::default()
    }

    /// Add an event (sequences must increase).
    pub fn push(&mut self, seq: u64, ingest_ms: u64, json: &[u8]) {
        self.first.get_or_insert(seq);
        self.data.extend_from_slice(json);
        self.index.extend_from_slice(&seq.to_be_bytes());
        self.index.extend_from_slice(&ingest_ms.to_be_bytes());
        // A block holds one log entry's events of one bus: far below 4 GiB.
        let end = u32::try_from(self.data.len()).unwrap_or(u32::MAX);
        self.index.extend_from_slice(&end.to_be_bytes());
        self.count += 1;
    }

    /// Events added so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of event JSON added so far.
    pub fn data_bytes(&self) -> usize {
        self.data.len()
    }

    /// The first sequence (the row's key) and the encoded block; `None`
    /// when empty.
    pub fn finish(self) -> Option<(u64, Vec<u8>)> {
        let first = self.first?;
        let mut out = Vec::with_capacity(4 + self.index.len() + self.data.len());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.index);
        out.extend_from_slice(&self.data);
        Some((first, out))
    }
}

/// A decoded view of a block's bytes.
#[derive(Debug, Clone, Copy)]
pub struct Block<'a> {
    index: &'a [u8],
    data: &'a [u8],
    count: usize,
}

/// A block's bytes do not follow the layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed event block: {0}")]
pub struct BlockError(pub &'static str);

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

impl<'a> Block<'a> {
    /// Check the layout of `bytes` and view it.
    pub fn parse(bytes: &'a [u8]) -> Result<Block<'a>, BlockError> {
        if bytes.len() < 4 {
            return Err(BlockError("shorter than its header"));
        }
        let count = be_u32(bytes) as usize;
        let index_len = count
            .checked_mul(SLOT)
            .ok_or(BlockError("event count overflows"))?;
        let rest = &bytes[4..];
        if rest.len() < index_len {
            return Err(BlockError("index cut short"));
        }
        let (index, data) = rest.split_at(index_len);
        let block = Block { index, data, count };
        let mut prev_end = 0usize;
        let mut prev_seq = None;
        for i in 0..count {
            let slot = &index[i * SLOT..(i + 1) * SLOT];
            let end = be_u32(&slot[16..]) as usize;
            if end < prev_end || end > data.len() {
                return Err(BlockError("event offsets out of order or past the end"));
            }
            let seq = be_u64(slot);
            if prev_seq.is_some_and(|p| seq <= p) {
                return Err(BlockError("sequences do not increase"));
            }
            prev_seq = Some(seq);
            prev_end = end;
        }
        if prev_end != data.len() {
            return Err(BlockError("bytes after the last event"));
        }
        Ok(block)
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the block holds no event.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Event `i`: (sequence, ingest ms, JSON). `i` must be below
    /// [`Self::len`].
    pub fn get(&self, i: usize) -> (u64, u64, &'a [u8]) {
        let slot = &self.index[i * SLOT..(i + 1) * SLOT];
        let start = if i == 0 {
            0
        } else {
            be_u32(&self.index[i * SLOT - 4..i * SLOT]) as usize
        };
        let end = be_u32(&slot[16..]) as usize;
        (be_u64(slot), be_u64(&slot[8..]), &self.data[start..end])
    }

    /// The events in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, &'a [u8])> + '_ {
        (0..self.count).map(|i| self.get(i))
    }

    /// The last (largest) sequence.
    pub fn last_seq(&self) -> Option<u64> {
        self.count.checked_sub(1).map(|i| self.get(i).0)
    }

    /// The latest ingest time in the block.
    pub fn max_ingest_ms(&self) -> u64 {
        self.iter().map(|(_, ms, _)| ms).max().unwrap_or(0)
    }

    /// Index of the first event with sequence `>= seq`.
    pub fn position_from(&self, seq: u64) -> usize {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.get(mid).0 < seq {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_positions() -> Result<(), BlockError> {
        let mut b = BlockBuilder::new();
        b.push(3, 100, b"{\"a\":1}");
        b.push(7, 101, b"");
        b.push(8, 99, b"{}");
        let Some((first, bytes)) = b.finish() else {
            panic!("empty");
        };
        assert_eq!(first, 3);
        let block = Block::parse(&bytes)?;
        let all: Vec<_> = block.iter().collect();
        assert_eq!(
            all,
            vec![
                (3, 100, &b"{\"a\":1}"[..]),
                (7, 101, &b""[..]),
                (8, 99, &b"{}"[..])
            ]
        );
        assert_eq!(block.last_seq(), Some(8));
        assert_eq!(block.max_ingest_ms(), 101);
        assert_eq!(block.position_from(0), 0);
        assert_eq!(block.position_from(4), 1);
        assert_eq!(block.position_from(7), 1);
        assert_eq!(block.position_from(9), 3);
        assert!(BlockBuilder::new().finish().is_none());
        Ok(())
    }

    proptest! {
        /// Any bytes: an error or a block whose every event can be read.
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(block) = Block::parse(&bytes) {
                for (_, _, json) in block.iter() {
                    prop_assert!(json.len() <= bytes.len());
                }
            }
        }

        /// Truncating or flipping a byte of a real block never panics.
        #[test]
        fn damaged_blocks_never_panic(
            events in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 1..8),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let mut b = BlockBuilder::new();
            for (i, e) in events.iter().enumerate() {
                b.push(i as u64 * 2, 5, e);
            }
            let Some((_, bytes)) = b.finish() else { return Ok(()); };
            let block = Block::parse(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(block.len(), events.len());
            for (i, (_, _, json)) in block.iter().enumerate() {
                prop_assert_eq!(json, events[i].as_slice());
            }
            let short = &bytes[..cut.index(bytes.len())];
            let _ = Block::parse(short).map(|b| b.iter().count());
            let mut flipped = bytes.clone();
            let at = flip.index(flipped.len());
            flipped[at] ^= 0x5a;
            let _ = Block::parse(&flipped).map(|b| b.iter().count());
        }
    }
}
