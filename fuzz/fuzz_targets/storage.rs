#![no_main]
//! The storage formats a node reads back from its own disk: Raft log
//! segments and event blocks. Arbitrary bytes never panic; a segment
//! scan reports an intact prefix no longer than the input.
use libfuzzer_sys::fuzz_target;
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
    let first = input.first().copied().unwrap_or(0) as u64;
    if let Ok(scan) = scan_segment_bytes(input, first) {
        assert!(scan.intact_len <= input.len() as u64);
    }
});
