//! Member names remembered across events, so that the reader can check a
//! name instead of searching for its end.

use super::swar::low_bytes;

/// Objects' member names as seen in earlier events, by field node and
/// position, so that the reader can check that a member has the name it
/// had last time instead of searching for the end of the name (which the
/// position of everything after it waits for). Only a guess, always
/// verified: a wrong one costs a search, nothing else. So objects whose
/// field node ids share a row simply overwrite each other's guesses, and
/// guesses may outlive the rule set they were made under.
#[derive(Clone, Debug)]
pub(super) struct Shapes {
    names: [[Guess; GUESSES]; SHAPE_ROWS],
}

/// Rows of [`Shapes`] (objects remembered, by field node id modulo this).
const SHAPE_ROWS: usize = 16;
/// Members remembered per object.
const GUESSES: usize = 16;

/// A member name without escapes of at most 14 bytes.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Guess {
    /// The name followed by `":`, zero-padded, as two words.
    pub(super) w: [u64; 2],
    /// Which bytes of `w` to compare.
    pub(super) mask: [u64; 2],
    /// The name's [`name_tag`](crate::pattern::fields::name_tag).
    pub(super) tag: u64,
    /// Length of the name; 0: no guess.
    pub(super) len: usize,
}

impl Shapes {
    pub(super) fn new() -> Self {
        Shapes {
            names: [[Guess::default(); GUESSES]; SHAPE_ROWS],
        }
    }

    /// The row for field node `field`.
    #[inline]
    pub(super) fn row(field: u32) -> usize {
        field as usize % SHAPE_ROWS
    }

    /// What was remembered for the member at position `pos` of the objects
    /// in row `row` (a guess of length 0: nothing).
    #[inline(always)]
    pub(super) fn guess(&self, row: usize, pos: usize) -> Guess {
        self.names[row].get(pos).copied().unwrap_or_default()
    }

    /// Whether a name of `len` bytes at position `pos` can be remembered.
    #[inline(always)]
    pub(super) fn fits(len: usize, pos: usize) -> bool {
        len <= 14 && pos < GUESSES
    }

    /// Remembers `named`, a member name followed by `":`, as the name at
    /// position `pos` of the objects in row `row` (both as
    /// [`fits`](Self::fits) allows).
    #[inline(always)]
    pub(super) fn remember(&mut self, row: usize, pos: usize, named: &[u8]) {
        let len = named.len() - 2;
        let mut bytes = [0u8; 16];
        bytes[..named.len()].copy_from_slice(named);
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&bytes[..8]);
        hi.copy_from_slice(&bytes[8..]);
        let n = len + 2;
        let w = [u64::from_le_bytes(lo), u64::from_le_bytes(hi)];
        self.names[row][pos] = Guess {
            w,
            mask: [low_bytes(n), low_bytes(n.saturating_sub(8))],
            tag: w[0] & low_bytes(len),
            len,
        };
    }
}
