#![no_main]
//! The storage formats a node reads back from its own disk: Raft log
//! segments, event blocks and archive records (also what a peer answers
//! an archive fetch with). Arbitrary bytes never panic; a segment
//! scan reports an intact prefix no longer than the input; decoded archive
//! records re-encode to the same bytes.
use libfuzzer_sys::fuzz_target;
use strait_federation::store::archive::{decode_records, encode_record};
use strait_federation::store::blocks::Block;
use strait_federation::store::log::scan_segment_bytes;

fuzz_target!(|input: &[u8]| {
    if let Ok(block) = Block::parse(input) {
        // Compressed frames expand at most 255 times (LZ4), which parse
        // checks before anything is allocated.
        let mut buf = Vec::new();
        let _ = block.for_each_from(0, &mut buf, |_, _, json| {
            assert!(json.len() <= input.len().saturating_mul(255).saturating_add(16));
            true
        });
        let _ = block.last_seq();
        let _ = block.position_from(7);
    }
    if let Ok(records) = decode_records(input) {
        let mut again = Vec::new();
        for r in &records {
            // The flag bit is not kept by decoding: compare payloads.
            encode_record(&mut again, r, false);
        }
        assert_eq!(decode_records(&again).ok(), Some(records));
    }
    let first = input.first().copied().unwrap_or(0) as u64;
    if let Ok(scan) = scan_segment_bytes(input, first) {
        assert!(scan.intact_len <= input.len() as u64);
    }
});
