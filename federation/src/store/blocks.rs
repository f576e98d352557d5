//! Event blocks: events of one bus committed by one log entry, stored as
//! rows of the state database, compressed.
//!
//! One row per event made applying a batch a B-tree insert per event; a
//! block makes it a few inserts per bus and entry, and the dispatcher
//! reads events in order anyway.
//!
//! **Layout** (integers big endian). A row starts with [`COMPRESSED`]:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | [`COMPRESSED`] |
//! | 4 | `count`, the number of events |
//! | 4 | `frames`, the number of frames |
//! | `count` × 20 | per event: sequence (u64), ingest ms (u64), end offset of its JSON in the uncompressed data (u32) |
//! | `frames` × 8 | per frame: end offset of its uncompressed data (u32), end offset of its stored bytes (u32) |
//! | rest | the frames |
//!
//! The events' JSON, one after another, is the uncompressed data; it is
//! cut into frames of whole events of about [`FRAME_RAW`] bytes, each
//! compressed on its own with LZ4 (its block format), or stored as is
//! when that is not smaller (a frame whose stored size equals its
//! uncompressed size is stored as is). Reading an event decompresses its
//! frame only.
//!
//! Rows written before compression have no such marker: they start with
//! `count` (whose top bit is never set: its index alone would take
//! 40 GiB), then the index as above and the uncompressed data. They are
//! still read; only compressed rows are written.
//!
//! **Row sizes.** The database allocates a row larger than a page (4 KiB)
//! in a power of two of pages, so a row of 33 KiB takes 64 KiB. The
//! builder packs frames into rows that fill such an allocation:
//! [`BlockBuilder::finish`] cuts the events of an entry into rows of just
//! under 4, 8, …, [`MAX_ROW`] bytes, largest first, and a last row smaller
//! than a page (which shares a page with its neighbours).
//!
//! Sequences increase within a block but need not be consecutive (the
//! sequence is site-wide, and an entry may carry events of several buses).

/// LZ4's largest expansion: a sequence of at least a token byte and a
/// two-byte offset whose match length grows by 255 per extra byte.
const LZ4_MAX_RATIO: usize = 255;

/// The most uncompressed bytes `stored` bytes of LZ4 can decode to (a
/// frame stored as it is has both sizes equal).
fn max_raw_len(stored: usize) -> usize {
    stored.saturating_mul(LZ4_MAX_RATIO).saturating_add(16)
}

/// Bytes per event in the index part.
const SLOT: usize = 20;

/// Bytes per frame in the frame table.
const FRAME_SLOT: usize = 8;

/// The first four bytes of a compressed row.
pub const COMPRESSED: u32 = 0x8000_0002;

/// Bytes of the compressed row's header.
const HEADER: usize = 12;

/// Uncompressed bytes per frame (whole events: a frame ends with the first
/// event that reaches it). Smaller frames make reading one event cheaper
/// and compress less well.
pub const FRAME_RAW: usize = 8 << 10;

/// The database's page size.
const PAGE: usize = 4096;

/// The largest row the builder writes (unless one frame is larger).
pub const MAX_ROW: usize = 64 << 10;

/// Room left in an allocation for the database's own bytes around a row
/// (a leaf page's header and offsets, besides the key).
const LEAF_SLACK: usize = 64;

/// Builds the rows of one bus's events of one log entry.
#[derive(Debug, Default)]
pub struct BlockBuilder {
    /// (sequence, ingest ms, end offset in `data`).
    events: Vec<(u64, u64, u32)>,
    data: Vec<u8>,
}

/// A compressed frame: events `[first, end)`, their uncompressed data
/// `[raw_start, raw_end)` and the bytes stored.
struct Frame {
    first: usize,
    end: usize,
    raw_start: usize,
    raw_end: usize,
    stored: Vec<u8>,
}

impl Frame {
    /// Bytes the frame adds to a row.
    fn cost(&self) -> usize {
        self.stored.len() + FRAME_SLOT + SLOT * (self.end - self.first)
    }
}

impl BlockBuilder {
    /// An empty block.
    pub fn new() -> BlockBuilder {
        BlockBuilder::default()
    }

    /// Add an event (sequences must increase).
    pub fn push(&mut self, seq: u64, ingest_ms: u64, json: &[u8]) {
        self.data.extend_from_slice(json);
        // A block holds one log entry's events of one bus: far below 4 GiB.
        let end = u32::try_from(self.data.len()).unwrap_or(u32::MAX);
        self.events.push((seq, ingest_ms, end));
    }

    /// Events added so far.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Bytes of event JSON added so far.
    pub fn data_bytes(&self) -> usize {
        self.data.len()
    }

    fn raw_end(&self, i: usize) -> usize {
        self.events[i].2 as usize
    }

    fn frames(&self) -> Vec<Frame> {
        let mut frames = Vec::new();
        let (mut first, mut raw_start) = (0, 0);
        for i in 0..self.events.len() {
            let raw_end = self.raw_end(i);
            if raw_end - raw_start >= FRAME_RAW || i + 1 == self.events.len() {
                let raw = &self.data[raw_start..raw_end];
                let packed = lz4_flex::block::compress(raw);
                let stored = if packed.len() < raw.len() {
                    packed
                } else {
                    raw.to_vec()
                };
                frames.push(Frame {
                    first,
                    end: i + 1,
                    raw_start,
                    raw_end,
                    stored,
                });
                first = i + 1;
                raw_start = raw_end;
            }
        }
        frames
    }

    /// The rows of the block, in order: (first sequence, the row's key;
    /// the encoded row). `key_bytes` is the length of the row's name (it
    /// shares the row's allocation). Empty when nothing was added.
    pub fn finish(self, key_bytes: usize) -> Vec<(u64, Vec<u8>)> {
        let frames = self.frames();
        let slack = LEAF_SLACK + key_bytes;
        let mut rows = Vec::new();
        let mut at = 0;
        while at < frames.len() {
            let rest: usize = HEADER + slack + frames[at..].iter().map(Frame::cost).sum::<usize>();
            // The largest allocation the rest fills, or all of it when it
            // fits in a page or in the largest row.
            let budget = if rest <= PAGE {
                PAGE
            } else {
                let mut b = PAGE;
                while b * 2 <= rest && b * 2 <= MAX_ROW {
                    b *= 2;
                }
                b
            };
            let mut used = HEADER + slack;
            let mut end = at;
            while end < frames.len() && (end == at || used + frames[end].cost() <= budget) {
                used += frames[end].cost();
                end += 1;
            }
            rows.push(self.encode(&frames[at..end]));
            at = end;
        }
        rows
    }

    fn encode(&self, frames: &[Frame]) -> (u64, Vec<u8>) {
        let (first, end) = (frames[0].first, frames[frames.len() - 1].end);
        let base = frames[0].raw_start;
        let stored: usize = frames.iter().map(|f| f.stored.len()).sum();
        let mut out =
            Vec::with_capacity(HEADER + SLOT * (end - first) + FRAME_SLOT * frames.len() + stored);
        // Counts and offsets are bounded by one entry's events: u32 is ample.
        let u32_of = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        out.extend_from_slice(&COMPRESSED.to_be_bytes());
        out.extend_from_slice(&u32_of(end - first).to_be_bytes());
        out.extend_from_slice(&u32_of(frames.len()).to_be_bytes());
        for &(seq, ms, raw_end) in &self.events[first..end] {
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&ms.to_be_bytes());
            out.extend_from_slice(&u32_of(raw_end as usize - base).to_be_bytes());
        }
        let mut stored_end = 0;
        for f in frames {
            stored_end += f.stored.len();
            out.extend_from_slice(&u32_of(f.raw_end - base).to_be_bytes());
            out.extend_from_slice(&u32_of(stored_end).to_be_bytes());
        }
        for f in frames {
            out.extend_from_slice(&f.stored);
        }
        (self.events[first].0, out)
    }
}

/// A decoded view of a block's bytes.
#[derive(Debug, Clone, Copy)]
pub struct Block<'a> {
    index: &'a [u8],
    /// The frame table (empty for an uncompressed row).
    frames: &'a [u8],
    data: &'a [u8],
    count: usize,
    compressed: bool,
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
    /// Check the layout of `bytes` (either format) and view it. A
    /// compressed frame is checked when it is read.
    pub fn parse(bytes: &'a [u8]) -> Result<Block<'a>, BlockError> {
        if bytes.len() < 4 {
            return Err(BlockError("shorter than its header"));
        }
        let first = be_u32(bytes);
        let compressed = first == COMPRESSED;
        let (count, frame_count, rest) = if compressed {
            if bytes.len() < HEADER {
                return Err(BlockError("shorter than its header"));
            }
            (
                be_u32(&bytes[4..]) as usize,
                be_u32(&bytes[8..]) as usize,
                &bytes[HEADER..],
            )
        } else if first & 0x8000_0000 != 0 {
            return Err(BlockError("unknown block format"));
        } else {
            (first as usize, 0, &bytes[4..])
        };
        let index_len = count
            .checked_mul(SLOT)
            .ok_or(BlockError("event count overflows"))?;
        let frames_len = frame_count
            .checked_mul(FRAME_SLOT)
            .ok_or(BlockError("frame count overflows"))?;
        if rest.len() < index_len.saturating_add(frames_len) {
            return Err(BlockError("index cut short"));
        }
        let (index, rest) = rest.split_at(index_len);
        let (frames, data) = rest.split_at(frames_len);
        let block = Block {
            index,
            frames,
            data,
            count,
            compressed,
        };
        let mut prev_end = 0usize;
        let mut prev_seq = None;
        let mut frame = 0;
        for i in 0..count {
            let slot = &index[i * SLOT..(i + 1) * SLOT];
            let end = be_u32(&slot[16..]) as usize;
            if end < prev_end {
                return Err(BlockError("event offsets out of order"));
            }
            let seq = be_u64(slot);
            if prev_seq.is_some_and(|p| seq <= p) {
                return Err(BlockError("sequences do not increase"));
            }
            if compressed {
                // An event lies in the first frame that ends at or after
                // its end, and must start inside it.
                while frame < frame_count && block.frame_raw_end(frame) < end {
                    frame += 1;
                }
                if frame == frame_count {
                    return Err(BlockError("an event past the last frame"));
                }
                if frame > 0 && block.frame_raw_end(frame - 1) > prev_end {
                    return Err(BlockError("an event across frames"));
                }
            }
            prev_seq = Some(seq);
            prev_end = end;
        }
        if compressed {
            let mut prev_raw = 0;
            let mut prev_stored = 0;
            for f in 0..frame_count {
                let (raw, stored) = (block.frame_raw_end(f), block.frame_stored_end(f));
                if raw < prev_raw || stored < prev_stored {
                    return Err(BlockError("frame offsets out of order"));
                }
                if stored - prev_stored > raw - prev_raw {
                    return Err(BlockError("a frame larger than its data"));
                }
                // Reading a frame allocates its uncompressed size: a row
                // (from this disk or a leader's snapshot) must not claim
                // more than its compressed bytes can expand to.
                if raw - prev_raw > max_raw_len(stored - prev_stored) {
                    return Err(BlockError(
                        "a frame claims more data than its compressed bytes can hold",
                    ));
                }
                (prev_raw, prev_stored) = (raw, stored);
            }
            if prev_raw != prev_end || prev_stored != data.len() {
                return Err(BlockError("frames do not cover the events"));
            }
        } else if prev_end != data.len() {
            return Err(BlockError(
                "event offsets past the end or bytes after the last event",
            ));
        }
        Ok(block)
    }

    fn frame_raw_end(&self, f: usize) -> usize {
        be_u32(&self.frames[f * FRAME_SLOT..]) as usize
    }

    fn frame_stored_end(&self, f: usize) -> usize {
        be_u32(&self.frames[f * FRAME_SLOT + 4..]) as usize
    }

    /// Whether the row is in the compressed format.
    pub fn is_compressed(&self) -> bool {
        self.compressed
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the block holds no event.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Sequence and ingest ms of event `i` (below [`Self::len`]).
    pub fn meta(&self, i: usize) -> (u64, u64) {
        let slot = &self.index[i * SLOT..(i + 1) * SLOT];
        (be_u64(slot), be_u64(&slot[8..]))
    }

    fn raw_range(&self, i: usize) -> (usize, usize) {
        let start = if i == 0 {
            0
        } else {
            be_u32(&self.index[i * SLOT - 4..i * SLOT]) as usize
        };
        (start, be_u32(&self.index[i * SLOT + 16..]) as usize)
    }

    /// Call `f` with (sequence, ingest ms, JSON) of events `from..` in
    /// order while it returns `true`; whether it always did. Frames are
    /// decompressed one at a time into `buf`.
    pub fn for_each_from(
        &self,
        from: usize,
        buf: &mut Vec<u8>,
        mut f: impl FnMut(u64, u64, &[u8]) -> bool,
    ) -> Result<bool, BlockError> {
        if !self.compressed {
            for i in from..self.count {
                let (seq, ms) = self.meta(i);
                let (start, end) = self.raw_range(i);
                if !f(seq, ms, &self.data[start..end]) {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        let mut frame = 0;
        let mut loaded = None;
        for i in from..self.count {
            let (start, end) = self.raw_range(i);
            while self.frame_raw_end(frame) < end {
                frame += 1;
            }
            let frame_start = if frame == 0 {
                0
            } else {
                self.frame_raw_end(frame - 1)
            };
            if loaded != Some(frame) {
                self.load_frame(frame, buf)?;
                loaded = Some(frame);
            }
            let (seq, ms) = self.meta(i);
            if !f(seq, ms, &buf[start - frame_start..end - frame_start]) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Frame `f`'s uncompressed data into `buf`.
    fn load_frame(&self, f: usize, buf: &mut Vec<u8>) -> Result<(), BlockError> {
        let (raw_start, stored_start) = if f == 0 {
            (0, 0)
        } else {
            (self.frame_raw_end(f - 1), self.frame_stored_end(f - 1))
        };
        let raw_len = self.frame_raw_end(f) - raw_start;
        let stored = &self.data[stored_start..self.frame_stored_end(f)];
        buf.clear();
        if stored.len() == raw_len {
            buf.extend_from_slice(stored);
            return Ok(());
        }
        buf.resize(raw_len, 0);
        match lz4_flex::block::decompress_into(stored, buf) {
            Ok(n) if n == raw_len => Ok(()),
            _ => Err(BlockError("a frame does not decompress to its size")),
        }
    }

    /// Every event, decoded (tests and checks).
    pub fn events(&self) -> Result<Vec<(u64, u64, Vec<u8>)>, BlockError> {
        let mut out = Vec::with_capacity(self.count);
        let mut buf = Vec::new();
        self.for_each_from(0, &mut buf, |seq, ms, json| {
            out.push((seq, ms, json.to_vec()));
            true
        })?;
        Ok(out)
    }

    /// The last (largest) sequence.
    pub fn last_seq(&self) -> Option<u64> {
        self.count.checked_sub(1).map(|i| self.meta(i).0)
    }

    /// The latest ingest time in the block.
    pub fn max_ingest_ms(&self) -> u64 {
        (0..self.count).map(|i| self.meta(i).1).max().unwrap_or(0)
    }

    /// Index of the first event with sequence `>= seq`.
    pub fn position_from(&self, seq: u64) -> usize {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.meta(mid).0 < seq {
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

    fn rows(b: BlockBuilder) -> Vec<(u64, Vec<u8>)> {
        b.finish(7)
    }

    fn all(rows: &[(u64, Vec<u8>)]) -> Result<Vec<(u64, u64, Vec<u8>)>, BlockError> {
        let mut out = Vec::new();
        for (first, bytes) in rows {
            let block = Block::parse(bytes)?;
            assert!(block.is_compressed());
            assert_eq!(block.meta(0).0, *first, "a row's key is its first sequence");
            out.extend(block.events()?);
        }
        Ok(out)
    }

    /// Events that compress like real ones: JSON with varied values.
    fn json(i: u64) -> Vec<u8> {
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut s = format!(r#"{{"id":"ev-{i}","type":"order.paid","data":{{"note":""#);
        while s.len() < 1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.push_str(["alpha ", "beta ", "gamma ", "delta ", "7", "x"][(x % 6) as usize]);
        }
        s.push_str("\"}}");
        s.into_bytes()
    }

    /// A forged row whose frame claims far more uncompressed bytes than its
    /// compressed bytes can expand to is refused when parsed, before a read
    /// would allocate that much (rows come from a leader's snapshot too).
    #[test]
    fn a_frame_claiming_more_than_lz4_can_expand_to_is_refused() -> Result<(), BlockError> {
        let mut b = BlockBuilder::new();
        b.push(1, 10, &json(1));
        let mut row = rows(b).remove(0).1;
        let block = Block::parse(&row)?;
        assert!(block.is_compressed());
        assert_eq!(block.events()?.len(), 1);
        // One event, one frame: its end offset (index) and the frame's raw
        // end (frame table) both claim 1 GiB.
        let claim = (1u32 << 30).to_be_bytes();
        row[HEADER + SLOT - 4..HEADER + SLOT].copy_from_slice(&claim);
        row[HEADER + SLOT..HEADER + SLOT + 4].copy_from_slice(&claim);
        let err = Block::parse(&row).map(|_| ()).expect_err("refused");
        assert!(err.to_string().contains("claims more data"), "{err}");
        Ok(())
    }

    #[test]
    fn round_trip_and_positions() -> Result<(), BlockError> {
        let mut b = BlockBuilder::new();
        b.push(3, 100, b"{\"a\":1}");
        b.push(7, 101, b"");
        b.push(8, 99, b"{}");
        let rows = rows(b);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0, 3);
        let block = Block::parse(&rows[0].1)?;
        assert_eq!(
            block.events()?,
            vec![
                (3, 100, b"{\"a\":1}".to_vec()),
                (7, 101, Vec::new()),
                (8, 99, b"{}".to_vec())
            ]
        );
        assert_eq!(block.last_seq(), Some(8));
        assert_eq!(block.max_ingest_ms(), 101);
        assert_eq!(block.position_from(0), 0);
        assert_eq!(block.position_from(4), 1);
        assert_eq!(block.position_from(7), 1);
        assert_eq!(block.position_from(9), 3);
        let mut seen = Vec::new();
        let mut buf = Vec::new();
        let done = block.for_each_from(1, &mut buf, |seq, _, _| {
            seen.push(seq);
            false
        })?;
        assert!(!done);
        assert_eq!(seen, vec![7], "stops when told");
        assert!(BlockBuilder::new().finish(7).is_empty());
        Ok(())
    }

    #[test]
    fn many_events_compress_into_rows_that_fill_their_allocation() -> Result<(), BlockError> {
        let mut b = BlockBuilder::new();
        let mut raw = 0;
        for i in 0..1000 {
            let j = json(i);
            raw += j.len();
            b.push(i * 2, i, &j);
        }
        let rows = rows(b);
        let stored: usize = rows.iter().map(|(_, r)| r.len()).sum();
        assert!(stored * 2 < raw, "compressed: {stored} of {raw}");
        let got = all(&rows)?;
        assert_eq!(got.len(), 1000);
        for (i, (seq, ms, body)) in got.into_iter().enumerate() {
            assert_eq!((seq, ms, body), (i as u64 * 2, i as u64, json(i as u64)));
        }
        // Every row but the last fits its power-of-two allocation with
        // at most one frame's room to spare.
        let slack = LEAF_SLACK + 7;
        for (_, row) in &rows[..rows.len() - 1] {
            let need = row.len() + slack;
            let alloc = need.div_ceil(PAGE).next_power_of_two() * PAGE;
            assert!(alloc <= MAX_ROW, "row of {need} bytes");
            assert!(alloc - need < FRAME_RAW, "row of {need} bytes in {alloc}");
        }
        Ok(())
    }

    #[test]
    fn incompressible_frames_are_stored_as_they_are() -> Result<(), BlockError> {
        let mut x = 0x1234_5678_9abc_def1u64;
        let noise: Vec<u8> = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut b = BlockBuilder::new();
        b.push(1, 1, &noise);
        b.push(2, 1, b"{}");
        let rows = rows(b);
        let stored: usize = rows.iter().map(|(_, r)| r.len()).sum();
        assert!(stored < noise.len() + 100, "{stored}");
        assert_eq!(all(&rows)?, vec![(1, 1, noise), (2, 1, b"{}".to_vec())]);
        Ok(())
    }

    #[test]
    fn rows_of_the_uncompressed_format_still_read() -> Result<(), BlockError> {
        // count, then (seq, ms, end) per event, then the data.
        let mut old = Vec::new();
        old.extend_from_slice(&2u32.to_be_bytes());
        for (seq, end) in [(5u64, 3u32), (6, 5)] {
            old.extend_from_slice(&seq.to_be_bytes());
            old.extend_from_slice(&9u64.to_be_bytes());
            old.extend_from_slice(&end.to_be_bytes());
        }
        old.extend_from_slice(b"abcde");
        let block = Block::parse(&old)?;
        assert!(!block.is_compressed());
        assert_eq!(
            block.events()?,
            vec![(5, 9, b"abc".to_vec()), (6, 9, b"de".to_vec())]
        );
        // Another marker with the top bit set is refused, not misread.
        let mut other = old.clone();
        other[..4].copy_from_slice(&0x8000_0007u32.to_be_bytes());
        assert_eq!(
            Block::parse(&other).err(),
            Some(BlockError("unknown block format"))
        );
        Ok(())
    }

    proptest! {
        /// Any bytes: an error or a block whose every event can be read
        /// (or whose damaged frame is reported).
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(block) = Block::parse(&bytes) {
                let _ = block.events();
            }
        }

        /// Truncating or flipping a byte of real rows never panics.
        #[test]
        fn damaged_blocks_never_panic(
            events in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..20),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let mut b = BlockBuilder::new();
            for (i, e) in events.iter().enumerate() {
                b.push(i as u64 * 2, 5, e);
            }
            let rows = b.finish(3);
            let got = all(&rows).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got.len(), events.len());
            for (i, (_, _, json)) in got.iter().enumerate() {
                prop_assert_eq!(json, &events[i]);
            }
            for (_, bytes) in &rows {
                let short = &bytes[..cut.index(bytes.len())];
                let _ = Block::parse(short).map(|b| b.events());
                let mut flipped = bytes.clone();
                let at = flip.index(flipped.len());
                flipped[at] ^= 0x5a;
                let _ = Block::parse(&flipped).map(|b| b.events());
            }
        }
    }
}
