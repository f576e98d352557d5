//! Word-at-a-time (SWAR) byte tests: eight bytes of JSON text in a `u64`,
//! examined at once (no `unsafe`, no target features).

pub(super) const HIGH: u64 = 0x8080_8080_8080_8080;
pub(super) const ONES: u64 = 0x0101_0101_0101_0101;

/// The eight bytes from `i` as a word (the first one lowest); None when
/// fewer are left.
#[inline(always)]
pub(super) fn load8(b: &[u8], i: usize) -> Option<u64> {
    let chunk = b.get(i..i + 8)?;
    let mut word = [0u8; 8];
    word.copy_from_slice(chunk);
    Some(u64::from_le_bytes(word))
}

/// High bit set in each byte of `w` equal to `c` (exact, no false hits).
#[inline(always)]
pub(super) fn bytes_eq(w: u64, c: u8) -> u64 {
    const L: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let x = w ^ (u64::from(c) * ONES);
    !(((x & L) + L) | x) & HIGH
}

/// Non-zero exactly when some byte of `w` equals `c` (which bytes the
/// result marks is not exact: use [`bytes_eq`] for positions).
#[inline(always)]
pub(super) fn has_byte(w: u64, c: u8) -> u64 {
    let x = w ^ (u64::from(c) * ONES);
    x.wrapping_sub(ONES) & !x & HIGH
}

/// Non-zero exactly when some byte of `w` lies strictly between `m` and
/// `n` (both at most 128).
#[inline(always)]
pub(super) fn has_between(w: u64, m: u8, n: u8) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let low = w & LOW7;
    (ONES * (127 + u64::from(n))).wrapping_sub(low)
        & !w
        & (low + ONES * (127 - u64::from(m)))
        & HIGH
}

/// High bit set in bytes below 0x20; the lowest one set is always exact.
#[inline(always)]
pub(super) fn bytes_control(w: u64) -> u64 {
    w.wrapping_sub(0x20 * ONES) & !w & HIGH
}

/// High bit set in the lowest byte of `w` equal to `a` or to `b` (bits
/// above it may be set too: only the lowest one is exact).
#[inline(always)]
pub(super) fn first_of2(w: u64, a: u8, b: u8) -> u64 {
    let x = w ^ (u64::from(a) * ONES);
    let y = w ^ (u64::from(b) * ONES);
    (x.wrapping_sub(ONES) & !x | y.wrapping_sub(ONES) & !y) & HIGH
}

/// High bit set in the lowest byte of `w` below `n` (at most 128; bits
/// above it may be set too: only the lowest one is exact).
#[inline(always)]
pub(super) fn below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(u64::from(n) * ONES) & !w & HIGH
}

/// How many bytes of `m` have their high bit set (`m` has no other bits).
#[inline(always)]
pub(super) fn byte_count(m: u64) -> u64 {
    (m >> 7).wrapping_mul(ONES) >> 56
}

/// Low `n` bytes of a word set (`n` at most 8).
#[inline(always)]
pub(super) fn low_bytes(n: usize) -> u64 {
    if n >= 8 {
        u64::MAX
    } else {
        !(u64::MAX << (8 * n))
    }
}
