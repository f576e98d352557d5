//! Helpers for the flattener's unit tests.

use super::cursor::Reader;
use super::shapes::Shapes;

/// A deterministic xorshift* generator for the randomized tests.
pub(super) fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Runs `f` on a reader at the start of `text`.
pub(super) fn reader_at(text: &str, shapes: &mut Shapes, f: impl FnOnce(&mut Reader<'_>)) {
    let mut r = Reader::new(text.as_bytes(), shapes);
    f(&mut r);
}
