//! The flattened event: one pass over the JSON text (or over a parsed
//! [`Value`]) that keeps only what lies on the field paths of a rule set.
//!
//! The result is a small tape: objects hold only the members the rules read
//! (as field-node ids), arrays keep their elements (so "one element must
//! satisfy the whole object" can be checked), and every scalar is also listed
//! as a leaf `(field node, value)` for the index. Everything else in the
//! event is skipped without being decoded. Matching any number of rules then
//! works on this tape; no rule walks the JSON again.
//!
//! Reading JSON text:
//!
//! * What is recorded is fully checked (string escapes, UTF-8, number syntax,
//!   literals); skipped values are only scanned for their end, so a malformed
//!   value the rules never look at may go unnoticed.
//! * An object is left as soon as every member name the rules need has been
//!   seen, and the whole text as soon as the top-level object has shown all
//!   of them, so duplicate member names resolve to their **first**
//!   occurrence (RFC 8259 leaves duplicates undefined; `serde_json` keeps the
//!   last one).

use std::fmt;
use std::sync::OnceLock;

use serde_json::Value;

use super::fields::{Fields, LOCAL, name_tag};
use super::matcher::ScalarRef;

/// Deepest nesting of arrays and objects the flattener follows (as
/// `serde_json`'s own limit).
pub const MAX_EVENT_DEPTH: usize = 128;

/// Why event JSON could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct EventJsonError {
    /// Byte offset where the problem was found.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for EventJsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid event JSON at byte {}: {}",
            self.offset, self.message
        )
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Slot {
    /// `members[start..start + len]`
    Obj {
        start: u32,
        len: u32,
    },
    /// `elems[start..start + len]`
    Arr {
        start: u32,
        len: u32,
    },
    /// `text[start..start + len]`
    Str {
        start: u32,
        len: u32,
    },
    Num(f64),
    Bool(bool),
    Null,
}

/// A flattened event (see the module documentation). Buffers are reused
/// across events.
#[derive(Clone, Debug)]
pub(crate) struct FlatEvent {
    pub(crate) slots: Vec<Slot>,
    /// (field node, slot)
    members: Vec<(u32, u32)>,
    elems: Vec<u32>,
    /// The strings, once reading is done (see `buf`).
    text: String,
    /// The strings while reading: each is checked to be UTF-8 as it is
    /// added, and the whole becomes `text` at the end (one more check, of
    /// text already known to be valid, instead of one per string).
    buf: Vec<u8>,
    /// Every scalar slot with the field node it sits at.
    pub(crate) leaves: Vec<(u32, u32)>,
    /// Work stacks for members and elements of open containers.
    pending_members: Vec<(u32, u32)>,
    pending_elems: Vec<u32>,
    /// Member names seen in earlier events (see [`Shapes`]).
    shapes: Option<Box<Shapes>>,
}

/// Objects' member names as seen in earlier events, by field node and
/// position, so that the reader can check that a member has the name it
/// had last time instead of searching for the end of the name (which the
/// position of everything after it waits for). Only a guess, always
/// verified: a wrong one costs a search, nothing else. So objects whose
/// field node ids share a row simply overwrite each other's guesses, and
/// guesses may outlive the rule set they were made under.
#[derive(Clone, Debug)]
pub(crate) struct Shapes {
    names: [[Guess; GUESSES]; SHAPE_ROWS],
}

/// Rows of [`Shapes`] (objects remembered, by field node id modulo this).
const SHAPE_ROWS: usize = 16;
/// Members remembered per object.
const GUESSES: usize = 16;

/// A member name without escapes of at most 14 bytes.
#[derive(Clone, Copy, Debug, Default)]
struct Guess {
    /// The name followed by `":`, zero-padded, as two words.
    w: [u64; 2],
    /// Which bytes of `w` to compare.
    mask: [u64; 2],
    /// The name's [`name_tag`].
    tag: u64,
    /// Length of the name; 0: no guess.
    len: usize,
}

impl Shapes {
    fn new() -> Self {
        Shapes {
            names: [[Guess::default(); GUESSES]; SHAPE_ROWS],
        }
    }

    /// The row for field node `field`.
    #[inline]
    fn row(field: u32) -> usize {
        field as usize % SHAPE_ROWS
    }
}

/// Low `n` bytes of a word set (`n` at most 8).
#[inline(always)]
fn low_bytes(n: usize) -> u64 {
    if n >= 8 {
        u64::MAX
    } else {
        !(u64::MAX << (8 * n))
    }
}

impl Default for FlatEvent {
    fn default() -> Self {
        Self::new()
    }
}

impl FlatEvent {
    pub(crate) const fn new() -> Self {
        FlatEvent {
            slots: Vec::new(),
            members: Vec::new(),
            elems: Vec::new(),
            text: String::new(),
            buf: Vec::new(),
            leaves: Vec::new(),
            pending_members: Vec::new(),
            pending_elems: Vec::new(),
            shapes: None,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.members.clear();
        self.elems.clear();
        self.buf = std::mem::take(&mut self.text).into_bytes();
        self.buf.clear();
        self.leaves.clear();
        self.pending_members.clear();
        self.pending_elems.clear();
    }

    /// Drops buffers that grew unusually large (after a huge event).
    pub(crate) fn trim(&mut self) {
        const KEEP: usize = 1 << 16;
        if self.slots.capacity() > KEEP || self.text.capacity().max(self.buf.capacity()) > 4 * KEEP
        {
            *self = FlatEvent::default();
        }
    }

    /// The root slot (the event itself), if any.
    pub(crate) fn root(&self) -> Option<u32> {
        if self.slots.is_empty() { None } else { Some(0) }
    }

    #[inline]
    pub(crate) fn slot(&self, i: u32) -> Slot {
        self.slots[i as usize]
    }

    #[inline]
    pub(crate) fn elems(&self, start: u32, len: u32) -> &[u32] {
        &self.elems[start as usize..(start + len) as usize]
    }

    /// The member `field` of an object slot.
    #[inline]
    pub(crate) fn member(&self, start: u32, len: u32, field: u32) -> Option<u32> {
        self.members[start as usize..(start + len) as usize]
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, s)| *s)
    }

    /// The scalar in a slot; None for containers.
    #[inline]
    pub(crate) fn scalar(&self, i: u32) -> Option<ScalarRef<'_>> {
        Some(match self.slots[i as usize] {
            Slot::Str { start, len } => {
                ScalarRef::Str(&self.text[start as usize..(start + len) as usize])
            }
            Slot::Num(x) => ScalarRef::Num(x),
            Slot::Bool(b) => ScalarRef::Bool(b),
            Slot::Null => ScalarRef::Null,
            Slot::Obj { .. } | Slot::Arr { .. } => return None,
        })
    }

    /// Calls `f` on every scalar reachable from slot `i` through arrays
    /// (objects are not leaves); true as soon as `f` is.
    pub(crate) fn any_scalar(&self, i: u32, f: &mut impl FnMut(ScalarRef<'_>) -> bool) -> bool {
        match self.slots[i as usize] {
            Slot::Arr { start, len } => self
                .elems(start, len)
                .iter()
                .any(|&e| self.any_scalar(e, f)),
            Slot::Obj { .. } => false,
            _ => self.scalar(i).is_some_and(f),
        }
    }

    fn push_slot(&mut self, slot: Slot) -> u32 {
        self.slots.push(slot);
        (self.slots.len() - 1) as u32
    }

    fn push_str(&mut self, field: u32, s: &str) -> u32 {
        self.push_checked(field, s.as_bytes())
    }

    /// Adds a string already known to be UTF-8.
    #[inline]
    fn push_checked(&mut self, field: u32, s: &[u8]) -> u32 {
        let start = self.buf.len() as u32;
        if s.len() <= 16 {
            // Short (the usual case): not worth a `memcpy` call.
            self.buf.extend(s.iter().copied());
        } else {
            self.buf.extend_from_slice(s);
        }
        let slot = self.push_slot(Slot::Str {
            start,
            len: s.len() as u32,
        });
        self.leaves.push((field, slot));
        slot
    }

    fn push_scalar(&mut self, field: u32, slot: Slot) -> u32 {
        let i = self.push_slot(slot);
        self.leaves.push((field, i));
        i
    }

    fn close_object(&mut self, slot: u32, mark: usize) {
        let start = self.members.len() as u32;
        let len = (self.pending_members.len() - mark) as u32;
        // Usually a member or two: not worth a `memcpy` call.
        for k in mark..self.pending_members.len() {
            let m = self.pending_members[k];
            self.members.push(m);
        }
        self.pending_members.truncate(mark);
        self.slots[slot as usize] = Slot::Obj { start, len };
    }

    fn close_array(&mut self, slot: u32, mark: usize) {
        let start = self.elems.len() as u32;
        let len = (self.pending_elems.len() - mark) as u32;
        self.elems.extend_from_slice(&self.pending_elems[mark..]);
        self.pending_elems.truncate(mark);
        self.slots[slot as usize] = Slot::Arr { start, len };
    }

    // ---- from a parsed Value ------------------------------------------------

    /// Flattens a parsed event.
    pub(crate) fn read_value(&mut self, fields: &Fields, v: &Value) {
        self.clear();
        self.value(fields, 0, v, 0);
        // Every string came from a `&str`.
        let _ = self.finish_text();
    }

    /// Moves the strings read into `text`; false (and no text) if they
    /// were not UTF-8, which the readers rule out string by string.
    fn finish_text(&mut self) -> bool {
        match String::from_utf8(std::mem::take(&mut self.buf)) {
            Ok(t) => {
                self.text = t;
                true
            }
            Err(e) => {
                self.buf = e.into_bytes();
                false
            }
        }
    }

    fn value(&mut self, fields: &Fields, field: u32, v: &Value, depth: usize) -> u32 {
        match v {
            Value::Object(map) => {
                let slot = self.push_slot(Slot::Null);
                let mark = self.pending_members.len();
                if depth < MAX_EVENT_DEPTH {
                    for &child in &fields.node(field).children {
                        if let Some(cv) = map.get(&*fields.node(child).name) {
                            let s = self.value(fields, child, cv, depth + 1);
                            self.pending_members.push((child, s));
                        }
                    }
                }
                self.close_object(slot, mark);
                slot
            }
            Value::Array(items) => {
                let slot = self.push_slot(Slot::Null);
                let mark = self.pending_elems.len();
                if depth < MAX_EVENT_DEPTH {
                    for item in items {
                        let s = self.value(fields, field, item, depth + 1);
                        self.pending_elems.push(s);
                    }
                }
                self.close_array(slot, mark);
                slot
            }
            Value::String(s) => self.push_str(field, s),
            Value::Number(n) => self.push_scalar(field, n.as_f64().map_or(Slot::Null, Slot::Num)),
            Value::Bool(b) => self.push_scalar(field, Slot::Bool(*b)),
            Value::Null => self.push_scalar(field, Slot::Null),
        }
    }

    // ---- from JSON text -----------------------------------------------------

    /// Flattens JSON text.
    pub(crate) fn read_json(&mut self, fields: &Fields, json: &[u8]) -> Result<(), EventJsonError> {
        self.clear();
        let mut shapes = self
            .shapes
            .take()
            .unwrap_or_else(|| Box::new(Shapes::new()));
        let read = self.read_json_with(fields, json, &mut shapes);
        self.shapes = Some(shapes);
        read
    }

    fn read_json_with(
        &mut self,
        fields: &Fields,
        json: &[u8],
        shapes: &mut Shapes,
    ) -> Result<(), EventJsonError> {
        let mut r = Reader {
            b: json,
            i: 0,
            scratch: String::new(),
            shapes,
        };
        let (_, stopped) = r.value_slot(self, fields, 0, 0, true)?;
        if !stopped {
            r.ws();
            if r.i != r.b.len() {
                return Err(r.err("trailing characters after the event").into());
            }
        }
        if !self.finish_text() {
            return Err(EventJsonError {
                offset: 0,
                message: "string is not valid UTF-8".to_string(),
            });
        }
        Ok(())
    }
}

const HIGH: u64 = 0x8080_8080_8080_8080;
const ONES: u64 = 0x0101_0101_0101_0101;

/// High bit set in each byte of `w` equal to `c` (exact, no false hits).
#[inline(always)]
fn bytes_eq(w: u64, c: u8) -> u64 {
    const L: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let x = w ^ (u64::from(c) * ONES);
    !(((x & L) + L) | x) & HIGH
}

/// Non-zero exactly when some byte of `w` equals `c` (which bytes the
/// result marks is not exact: use [`bytes_eq`] for positions).
#[inline(always)]
fn has_byte(w: u64, c: u8) -> u64 {
    let x = w ^ (u64::from(c) * ONES);
    x.wrapping_sub(ONES) & !x & HIGH
}

/// Non-zero exactly when some byte of `w` lies strictly between `m` and
/// `n` (both at most 128).
#[inline(always)]
fn has_between(w: u64, m: u8, n: u8) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let low = w & LOW7;
    (ONES * (127 + u64::from(n))).wrapping_sub(low)
        & !w
        & (low + ONES * (127 - u64::from(m)))
        & HIGH
}

/// High bit set in bytes below 0x20; the lowest one set is always exact.
#[inline(always)]
fn bytes_control(w: u64) -> u64 {
    w.wrapping_sub(0x20 * ONES) & !w & HIGH
}

/// Byte equality without a `memcmp` call (names are short).
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

#[inline(always)]
fn load8(b: &[u8], i: usize) -> Option<u64> {
    let chunk = b.get(i..i + 8)?;
    let mut word = [0u8; 8];
    word.copy_from_slice(chunk);
    Some(u64::from_le_bytes(word))
}

/// The fast part of [`Reader::skip_rest`]: from `i`, skips whole words
/// that hold no backslash and no `open`/`close` bracket outside strings,
/// keeping `in_str` (inside a string) up to date. Returns where a word
/// needs to be taken byte by byte (or fewer than eight bytes are left).
#[inline(always)]
fn skip_plain(b: &[u8], i: usize, open: u8, close: u8, in_str: &mut bool) -> usize {
    debug_assert!(matches!((open, close), (b'[', b']') | (b'{', b'}')));
    let mut i = i;
    // Quote masks XORed together: their total has the parity of the number
    // of quotes skipped.
    let mut quotes = 0u64;
    // Cheap existence test first: a byte from `open` to `close` (the
    // brackets are two apart; for `[` `]` that takes in the backslash).
    // For braces, setting bit 5 of every byte maps `[ \ ]` onto `{ | }`,
    // so one range test finds a backslash too (and square brackets, which
    // then only get the closer look below).
    let special = |w: u64| {
        if open == b'{' {
            has_between(w | (0x20 * ONES), open - 1, close + 1)
        } else {
            has_between(w, open - 1, close + 1)
        }
    };
    // 32 bytes at a time while none is a backslash or a bracket of this
    // kind: plain byte compares, which the compiler turns into vector
    // compares (SSE2, no `unsafe`), folded into one flag and the number of
    // quotes (only its parity matters).
    let mut quote_count = 0u8;
    while let Some(chunk) = b.get(i..i + 32) {
        let mut any = 0u8;
        let mut q = 0u8;
        for &c in chunk {
            any |= u8::from(c == open) | u8::from(c == close) | u8::from(c == b'\\');
            q = q.wrapping_add(u8::from(c == b'"'));
        }
        if any != 0 {
            break;
        }
        quote_count = quote_count.wrapping_add(q);
        i += 32;
    }
    *in_str ^= quote_count & 1 != 0;
    // Two words at a time while neither needs a closer look.
    while let (Some(w1), Some(w2)) = (load8(b, i), load8(b, i + 8)) {
        if special(w1) | special(w2) != 0 {
            break;
        }
        quotes ^= bytes_eq(w1, b'"') ^ bytes_eq(w2, b'"');
        i += 16;
    }
    while let Some(w) = load8(b, i) {
        let q = bytes_eq(w, b'"');
        if special(w) != 0 {
            if has_byte(w, b'\\') != 0 {
                break;
            }
            // Prefix parity of quotes: byte k has its high bit set when
            // bytes 0..=k hold an odd number of quotes.
            let mut p = q;
            p ^= p << 8;
            p ^= p << 16;
            p ^= p << 32;
            let brackets = bytes_eq(w, open) | bytes_eq(w, close);
            let odd = *in_str ^ (byte_count(quotes) & 1 != 0);
            let inside = if odd { !p & HIGH } else { p };
            if brackets & !inside != 0 {
                break;
            }
        }
        quotes ^= q;
        i += 8;
    }
    *in_str ^= byte_count(quotes) & 1 != 0;
    i
}

/// High bit set in the lowest byte of `w` equal to `a` or to `b` (bits
/// above it may be set too: only the lowest one is exact).
#[inline(always)]
fn first_of2(w: u64, a: u8, b: u8) -> u64 {
    let x = w ^ (u64::from(a) * ONES);
    let y = w ^ (u64::from(b) * ONES);
    (x.wrapping_sub(ONES) & !x | y.wrapping_sub(ONES) & !y) & HIGH
}

/// High bit set in the lowest byte of `w` below `n` (at most 128; bits
/// above it may be set too: only the lowest one is exact).
#[inline(always)]
fn below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(u64::from(n) * ONES) & !w & HIGH
}

/// What [`Reader::skip_member`] did.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Took nothing.
    None,
    /// Took members; now at the start of the next one (after its `,`).
    Next,
    /// Took members; now just after the last one's value, not at a `,`.
    End,
    /// Took nothing, but the member at `self.i` has a plain name whose
    /// closing quote is at the first index, with this [`name_tag`].
    Name(usize, u64),
}

/// Where [`Reader::skip_compact_members`] stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Compact {
    /// At the start of a member (or wherever the general loop must look).
    AtName,
    /// Just after a member's value, not at a `,`.
    AfterValue,
    /// At the start of a member with a plain name, as [`Step::Name`].
    Named(usize, u64),
}

/// How many bytes of `m` have their high bit set (`m` has no other bits).
#[inline(always)]
fn byte_count(m: u64) -> u64 {
    (m >> 7).wrapping_mul(ONES) >> 56
}

/// Bytes that end a string's fast path: quote, backslash, control characters.
static STR_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// The value of eight ASCII digits (the first one most significant), or
/// None when some byte of `w` is not a digit.
#[inline(always)]
fn eight_digits(w: u64) -> Option<u64> {
    // Digits are 0x30..=0x39: high nibble 3, and adding 6 keeps it 3.
    if (w & 0xF0F0_F0F0_F0F0_F0F0)
        | ((w.wrapping_add(0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0) >> 4)
        != 0x3333_3333_3333_3333
    {
        return None;
    }
    let w = w - 0x3030_3030_3030_3030;
    let w = (w * 10 + (w >> 8)) & 0x00FF_00FF_00FF_00FF;
    let w = (w * 100 + (w >> 16)) & 0x0000_FFFF_0000_FFFF;
    Some((w * 10_000 + (w >> 32)) & 0xFFFF_FFFF)
}

/// 10^n for n <= 22: exact doubles.
const EXACT_POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// 10^n for n <= 308, each the correctly rounded double (as serde_json's
/// own table).
fn pow10(n: usize) -> f64 {
    static TABLE: OnceLock<Vec<f64>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            (0..=308)
                .map(|n| format!("1e{n}").parse::<f64>().unwrap_or(f64::INFINITY))
                .collect()
        })
        .get(n)
        .copied()
        .unwrap_or(f64::INFINITY)
}

/// `serde_json`'s float conversion when its `float_roundtrip` feature is off
/// (the default): the significand rounded to a double, then one multiply or
/// divide by a power of ten. None where serde_json reports out of range.
fn serde_json_default_float(significand: u64, mut exponent: i32) -> Option<f64> {
    let mut f = significand as f64;
    loop {
        let e = exponent.unsigned_abs() as usize;
        if e <= 308 {
            if exponent >= 0 {
                f *= pow10(e);
                if f.is_infinite() {
                    return None;
                }
            } else {
                f /= pow10(e);
            }
            return Some(f);
        }
        if f == 0.0 {
            return Some(f);
        }
        if exponent >= 0 {
            return None;
        }
        f /= 1e308;
        exponent += 308;
    }
}

/// Whether the `serde_json` in this build parses floats correctly rounded
/// (its `float_roundtrip` feature, which any crate of the build may turn
/// on). Decided once, on a number where the two methods differ.
fn serde_json_is_correctly_rounded() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    *ANSWER.get_or_init(|| {
        const PROBE: &str = "2.2250738585072011e-308";
        let serde = serde_json::from_str::<f64>(PROBE).ok();
        serde != serde_json_default_float(22_250_738_585_072_011, -324)
    })
}

/// A reading error without allocation (cheap to pass around); becomes an
/// [`EventJsonError`] at the end.
#[derive(Clone, Copy, Debug)]
struct ReadErr {
    offset: usize,
    message: &'static str,
}

impl From<ReadErr> for EventJsonError {
    fn from(e: ReadErr) -> Self {
        EventJsonError {
            offset: e.offset,
            message: e.message.to_string(),
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
    scratch: String,
    shapes: &'a mut Shapes,
}

enum Key {
    /// `b[start..end]`, no escapes.
    Raw(usize, usize),
    /// Decoded into `scratch`.
    Decoded,
}

impl<'a> Reader<'a> {
    #[cold]
    fn err(&self, message: &'static str) -> ReadErr {
        ReadErr {
            offset: self.i.min(self.b.len()),
            message,
        }
    }

    #[inline(always)]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Reads a value at field node `field`. `stop_ok`: nothing after this
    /// value is needed (every enclosing object has then shown all the names
    /// the rules need, and no array encloses it), so reading may stop for
    /// good as soon as this value has all it needs; the second result says
    /// that it did.
    fn value_slot(
        &mut self,
        fe: &mut FlatEvent,
        fields: &Fields,
        field: u32,
        depth: usize,
        stop_ok: bool,
    ) -> Result<(u32, bool), ReadErr> {
        if depth > MAX_EVENT_DEPTH {
            return Err(self.err("event nests too deeply"));
        }
        self.ws();
        let Some(c) = self.peek() else {
            return Err(self.err("unexpected end of input, expected a value"));
        };
        match c {
            b'{' => self.object(fe, fields, field, depth, stop_ok),
            b'[' => self.array(fe, fields, field, depth).map(|s| (s, false)),
            _ => self.scalar(fe, field, c).map(|s| (s, false)),
        }
    }

    /// Reads a scalar value starting with byte `c` (at `self.i`).
    #[inline(always)]
    fn scalar(&mut self, fe: &mut FlatEvent, field: u32, c: u8) -> Result<u32, ReadErr> {
        match c {
            b'"' => {
                self.i += 1;
                let start = self.i;
                if let Some(end) = self.ascii_string_end() {
                    self.i = end + 1;
                    return Ok(fe.push_checked(field, &self.b[start..end]));
                }
                if self.string_body()? {
                    Ok(fe.push_str(field, &self.scratch))
                } else {
                    let raw = &self.b[start..self.i - 1];
                    let s = std::str::from_utf8(raw).map_err(|_| ReadErr {
                        offset: start,
                        message: "string is not valid UTF-8",
                    })?;
                    Ok(fe.push_str(field, s))
                }
            }
            b't' => self
                .literal(b"true")
                .map(|_| fe.push_scalar(field, Slot::Bool(true))),
            b'f' => self
                .literal(b"false")
                .map(|_| fe.push_scalar(field, Slot::Bool(false))),
            b'n' => self
                .literal(b"null")
                .map(|_| fe.push_scalar(field, Slot::Null)),
            b'-' | b'0'..=b'9' => {
                let x = self.number()?;
                Ok(fe.push_scalar(field, Slot::Num(x)))
            }
            _ => Err(self.err("expected a JSON value")),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), ReadErr> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    #[inline(never)]
    fn object(
        &mut self,
        fe: &mut FlatEvent,
        fields: &Fields,
        field: u32,
        depth: usize,
        stop_ok: bool,
    ) -> Result<(u32, bool), ReadErr> {
        let slot = fe.push_slot(Slot::Null);
        let mark = fe.pending_members.len();
        let node = fields.node(field);
        if node.children.is_empty() {
            // Nothing below here is read: keep the fact that it is an object.
            self.skip_container()?;
            fe.close_object(slot, mark);
            return Ok((slot, false));
        }
        self.i += 1; // {
        let required = node.required;
        let mut seen = 0u64;
        // Few children (the usual case): compare names against a copy of
        // their first eight bytes and lengths.
        let nkids = node.children.len();
        let local = nkids <= LOCAL;
        let (kid_tag, kid_len, kid_id) = (node.kid_tag, node.kid_len, node.kid_id);
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            fe.close_object(slot, mark);
            return Ok((slot, false));
        }
        // Names seen here before, and the position of the next member.
        let row = Shapes::row(field);
        let mut pos = 0usize;
        loop {
            // Members no rule reads, in compact JSON, in a tight loop.
            let skipped = if local {
                self.skip_compact_members(row, &mut pos, |tag, name| {
                    (0..nkids).any(|k| kid_tag[k] == tag && kid_len[k] == name.len())
                })?
            } else {
                self.skip_compact_members(row, &mut pos, |tag, name| {
                    fields.child_tagged(field, name, tag).is_some()
                })?
            };
            pos += 1;
            let (key, tag) = match skipped {
                Compact::AfterValue => {
                    if self.member_end()? {
                        break;
                    }
                    continue;
                }
                // The name is already known.
                Compact::Named(end, tag) => {
                    let start = self.i + 1;
                    self.i = end + 1;
                    (Key::Raw(start, end), tag)
                }
                Compact::AtName => {
                    // Compact JSON first: no whitespace between tokens.
                    if self.peek() != Some(b'"') {
                        self.ws();
                        if self.peek() != Some(b'"') {
                            return Err(self.err("expected a member name"));
                        }
                    }
                    self.i += 1;
                    self.key_tagged()?
                }
            };
            if self.peek() != Some(b':') {
                self.ws();
                if self.peek() != Some(b':') {
                    return Err(self.err("expected ':' after a member name"));
                }
            }
            self.i += 1;
            let child = match key {
                Key::Raw(s, e) => {
                    let name = &self.b[s..e];
                    if local {
                        (0..nkids)
                            .find(|&k| {
                                kid_tag[k] == tag
                                    && kid_len[k] == name.len()
                                    && (name.len() <= 8
                                        || same_bytes(
                                            &fields.node(kid_id[k]).name.as_bytes()[8..],
                                            &name[8..],
                                        ))
                            })
                            .map(|k| kid_id[k])
                    } else {
                        fields.child_tagged(field, name, tag)
                    }
                }
                Key::Decoded => fields.child(field, self.scratch.as_bytes()),
            };
            let mut wanted = None;
            if let Some(child) = child {
                let ord = fields.ordinal(child);
                let first = if ord < 64 {
                    seen & (1 << ord) == 0
                } else {
                    !fe.pending_members[mark..].iter().any(|(f, _)| *f == child)
                };
                if first {
                    if ord < 64 {
                        seen |= 1 << ord;
                    }
                    wanted = Some(child);
                }
            }
            match wanted {
                Some(child) => {
                    let complete = required != 0 && seen & required == required;
                    // A scalar is read here (the common case), without a
                    // call; containers (and whitespace first) go through
                    // `value_slot`.
                    let (s, stopped) = match self.peek() {
                        Some(c @ (b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n')) => {
                            (self.scalar(fe, child, c)?, false)
                        }
                        _ => self.value_slot(fe, fields, child, depth + 1, stop_ok && complete)?,
                    };
                    fe.pending_members.push((child, s));
                    if stopped {
                        fe.close_object(slot, mark);
                        return Ok((slot, true));
                    }
                    if complete {
                        fe.close_object(slot, mark);
                        if stop_ok {
                            return Ok((slot, true));
                        }
                        self.skip_object_rest()?;
                        return Ok((slot, false));
                    }
                }
                None => self.skip_value()?,
            }
            if self.member_end()? {
                break;
            }
        }
        fe.close_object(slot, mark);
        Ok((slot, false))
    }

    /// After a member's value: consumes the `,` (false) or the `}` that
    /// ends the object (true).
    #[inline(always)]
    fn member_end(&mut self) -> Result<bool, ReadErr> {
        let mut next = self.peek();
        if !matches!(next, Some(b',' | b'}')) {
            self.ws();
            next = self.peek();
        }
        match next {
            Some(b',') => {
                self.i += 1;
                Ok(false)
            }
            Some(b'}') => {
                self.i += 1;
                Ok(true)
            }
            _ => Err(self.err("expected ',' or '}' in an object")),
        }
    }

    /// Skips, from `self.i` (where a member name should start), members
    /// whose name no rule reads, as long as they are in the plain compact
    /// form `"name":"value"` or `"name":token` (a number or literal): short
    /// names and string values without escapes (the common case), followed
    /// by `,` or `}`. Everything else is left to the general loop: this
    /// stops *before* the first member it does not take whole, and consumes
    /// exactly what the general loop would have for the members it takes.
    /// `wanted(tag, name)` says that a name (raw bytes, and its
    /// [`name_tag`]) may be one the rules read (false positives only cost
    /// speed).
    ///
    /// `row` is the object's row in [`Shapes`], `pos` the position of the
    /// member at `self.i` (counted up for each member taken).
    #[inline(always)]
    fn skip_compact_members(
        &mut self,
        row: usize,
        pos: &mut usize,
        wanted: impl Fn(u64, &[u8]) -> bool,
    ) -> Result<Compact, ReadErr> {
        let mut out = Compact::AtName;
        loop {
            match self.skip_member(row, *pos, &wanted)? {
                Step::Next => out = Compact::AtName,
                Step::End => return Ok(Compact::AfterValue),
                Step::None => return Ok(out),
                Step::Name(end, tag) => return Ok(Compact::Named(end, tag)),
            }
            *pos += 1;
        }
    }

    /// Skips one member as [`skip_compact_members`](Self::skip_compact_members)
    /// describes, word by word.
    #[inline(always)]
    fn skip_member(
        &mut self,
        row: usize,
        pos: usize,
        wanted: &impl Fn(u64, &[u8]) -> bool,
    ) -> Result<Step, ReadErr> {
        let b = self.b;
        let i = self.i;
        if b.get(i) != Some(&b'"') {
            return Ok(Step::None);
        }
        let Some(w) = load8(b, i + 1) else {
            return Ok(Step::None);
        };
        let w2 = load8(b, i + 9);
        // The name this member had last time, followed by `":`?
        let guess = self.shapes.names[row].get(pos).copied().unwrap_or_default();
        if guess.len != 0
            && let Some(w2) = w2
            && ((w ^ guess.w[0]) & guess.mask[0]) | ((w2 ^ guess.w[1]) & guess.mask[1]) == 0
        {
            return self.skip_member_value(i + 1 + guess.len, guess.tag, wanted);
        }
        // Name: its closing quote must come before any backslash or
        // control character.
        let m = first_of2(w, b'"', b'\\') | below(w, 0x20);
        let (end, tag) = if m != 0 {
            let k = (m.trailing_zeros() / 8) as usize;
            if (w >> (8 * k)) as u8 != b'"' {
                return Ok(Step::None);
            }
            let tag = if k == 0 {
                0
            } else {
                w & (u64::MAX >> (64 - 8 * k))
            };
            (i + 1 + k, tag)
        } else {
            let Some(w2) = w2 else {
                return Ok(Step::None);
            };
            let m2 = first_of2(w2, b'"', b'\\') | below(w2, 0x20);
            if m2 == 0 {
                return Ok(Step::None);
            }
            let k = (m2.trailing_zeros() / 8) as usize;
            if (w2 >> (8 * k)) as u8 != b'"' {
                return Ok(Step::None);
            }
            (i + 9 + k, w)
        };
        // Remember it for the next event.
        let len = end - i - 1;
        if len <= 14
            && pos < GUESSES
            && b.get(end + 1) == Some(&b':')
            && let Some(named) = b.get(i + 1..end + 2)
        {
            let mut bytes = [0u8; 16];
            bytes[..named.len()].copy_from_slice(named);
            let mut lo = [0u8; 8];
            let mut hi = [0u8; 8];
            lo.copy_from_slice(&bytes[..8]);
            hi.copy_from_slice(&bytes[8..]);
            let n = len + 2;
            let w = [u64::from_le_bytes(lo), u64::from_le_bytes(hi)];
            self.shapes.names[row][pos] = Guess {
                w,
                mask: [low_bytes(n), low_bytes(n.saturating_sub(8))],
                tag: w[0] & low_bytes(len),
                len,
            };
        }
        self.skip_member_value(end, tag, wanted)
    }

    /// The rest of [`skip_member`](Self::skip_member): `end` is where the
    /// name's closing quote is, `tag` the name's [`name_tag`].
    #[inline(always)]
    fn skip_member_value(
        &mut self,
        end: usize,
        tag: u64,
        wanted: &impl Fn(u64, &[u8]) -> bool,
    ) -> Result<Step, ReadErr> {
        let b = self.b;
        let i = self.i;
        if wanted(tag, &b[i + 1..end]) || b.get(end + 1) != Some(&b':') {
            return Ok(Step::Name(end, tag));
        }
        let v = end + 2;
        let after = match b.get(v) {
            Some(b'"') => {
                // Up to the closing quote; a backslash first: general loop.
                let mut p = v + 1;
                loop {
                    let Some(w) = load8(b, p) else {
                        return Ok(Step::Name(end, tag));
                    };
                    let m = first_of2(w, b'"', b'\\');
                    if m != 0 {
                        let k = (m.trailing_zeros() / 8) as usize;
                        if (w >> (8 * k)) as u8 != b'"' {
                            return Ok(Step::Name(end, tag));
                        }
                        break p + k + 1;
                    }
                    p += 8;
                }
            }
            Some(b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
                // `skip_value` takes a token up to `, } ]` or whitespace;
                // here it must end at `,` or `}` (any byte up to a space
                // stops it too).
                let mut p = v;
                loop {
                    let Some(w) = load8(b, p) else {
                        return Ok(Step::Name(end, tag));
                    };
                    let m = first_of2(w, b',', b'}') | first_of2(w, b']', b']') | below(w, 0x21);
                    if m != 0 {
                        let k = (m.trailing_zeros() / 8) as usize;
                        if !matches!((w >> (8 * k)) as u8, b',' | b'}') {
                            return Ok(Step::Name(end, tag));
                        }
                        break p + k;
                    }
                    p += 8;
                }
            }
            Some(b'{' | b'[') => {
                // As `skip_value` would.
                self.i = v;
                self.skip_container()?;
                self.i
            }
            _ => return Ok(Step::Name(end, tag)),
        };
        // The member is taken.
        Ok(if b.get(after) == Some(&b',') {
            self.i = after + 1;
            Step::Next
        } else {
            self.i = after;
            Step::End
        })
    }

    fn array(
        &mut self,
        fe: &mut FlatEvent,
        fields: &Fields,
        field: u32,
        depth: usize,
    ) -> Result<u32, ReadErr> {
        let slot = fe.push_slot(Slot::Null);
        let mark = fe.pending_elems.len();
        self.i += 1; // [
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            fe.close_array(slot, mark);
            return Ok(slot);
        }
        loop {
            let (s, _) = self.value_slot(fe, fields, field, depth + 1, false)?;
            fe.pending_elems.push(s);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(self.err("expected ',' or ']' in an array")),
            }
        }
        fe.close_array(slot, mark);
        Ok(slot)
    }

    /// Reads a member name (after its opening quote) and its
    /// [`name_tag`]. A name followed by at least `":` and a value lets its
    /// first eight bytes be loaded at once.
    #[inline(always)]
    fn key_tagged(&mut self) -> Result<(Key, u64), ReadErr> {
        let start = self.i;
        if let Some(w) = load8(self.b, start) {
            let m = bytes_eq(w, b'"') | bytes_eq(w, b'\\') | bytes_control(w);
            if m != 0 {
                let k = (m.trailing_zeros() / 8) as usize;
                if self.b[start + k] == b'"' {
                    self.i = start + k + 1;
                    let tag = if k == 0 {
                        0
                    } else {
                        w & (u64::MAX >> (64 - 8 * k))
                    };
                    return Ok((Key::Raw(start, start + k), tag));
                }
            } else {
                // Names of 8 to 15 bytes (common) end in the next word.
                if let Some(w2) = load8(self.b, start + 8) {
                    let q2 = bytes_eq(w2, b'"');
                    let m2 = q2 | bytes_eq(w2, b'\\') | bytes_control(w2);
                    // The first stop byte is a quote: the name ends there.
                    if (m2 & m2.wrapping_neg()) & q2 != 0 {
                        let end = start + 8 + (m2.trailing_zeros() / 8) as usize;
                        self.i = end + 1;
                        return Ok((Key::Raw(start, end), w));
                    }
                }
                let key = self.key()?;
                return Ok((key, w));
            }
        }
        let key = self.key()?;
        let tag = match key {
            Key::Raw(s, e) => name_tag(&self.b[s..e]),
            Key::Decoded => 0,
        };
        Ok((key, tag))
    }

    /// Reads a member name (after its opening quote).
    #[inline(always)]
    fn key(&mut self) -> Result<Key, ReadErr> {
        let start = self.i;
        if self.string_body()? {
            Ok(Key::Decoded)
        } else {
            Ok(Key::Raw(start, self.i - 1))
        }
    }

    /// Where the string starting at `self.i` (after its opening quote)
    /// ends, when it is plain ASCII (no escapes, no control characters) and
    /// its end is found within the words read; None otherwise (then read it
    /// with [`string_body`](Self::string_body)).
    #[inline(always)]
    fn ascii_string_end(&self) -> Option<usize> {
        let b = self.b;
        let mut i = self.i;
        let mut hi = 0u64;
        loop {
            let w = load8(b, i)?;
            let m = bytes_eq(w, b'"') | bytes_eq(w, b'\\') | bytes_control(w);
            if m == 0 {
                hi |= w;
                i += 8;
                continue;
            }
            let k = m.trailing_zeros() / 8;
            hi |= w & ((1u64 << (8 * k)) - 1);
            i += k as usize;
            return (b[i] == b'"' && hi & HIGH == 0).then_some(i);
        }
    }

    /// Reads a string body after its opening quote, up to and including the
    /// closing quote. Returns true when it had escapes, decoded (and UTF-8
    /// checked) into `scratch`; otherwise the raw bytes are the string.
    #[inline(always)]
    fn string_body(&mut self) -> Result<bool, ReadErr> {
        let start = self.i;
        let b = self.b;
        let mut i = self.i;
        loop {
            match load8(b, i) {
                Some(w) => {
                    let m = bytes_eq(w, b'"') | bytes_eq(w, b'\\') | bytes_control(w);
                    if m == 0 {
                        i += 8;
                        continue;
                    }
                    i += (m.trailing_zeros() / 8) as usize;
                }
                None => {
                    while i < b.len() && !STR_STOP[b[i] as usize] {
                        i += 1;
                    }
                }
            }
            break;
        }
        match b.get(i) {
            Some(b'"') => {
                self.i = i + 1;
                Ok(false)
            }
            Some(b'\\') => {
                self.i = start;
                self.decode_string().map(|_| true)
            }
            Some(_) => {
                self.i = i;
                Err(self.err("control character in a string"))
            }
            None => {
                self.i = i;
                Err(self.err("unterminated string"))
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn decode_string(&mut self) -> Result<(), ReadErr> {
        let mut out = std::mem::take(&mut self.scratch).into_bytes();
        out.clear();
        loop {
            let Some(&c) = self.b.get(self.i) else {
                return Err(self.err("unterminated string"));
            };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.b.get(self.i) else {
                        return Err(self.err("unterminated string"));
                    };
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                                    return Err(self.err("lone leading surrogate in a \\u escape"));
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("invalid low surrogate in a \\u escape"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return Err(self.err("lone trailing surrogate in a \\u escape"));
                            } else {
                                hi
                            };
                            let ch =
                                char::from_u32(cp).ok_or_else(|| self.err("invalid \\u escape"))?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(self.err("invalid escape in a string")),
                    }
                }
                c if c < 0x20 => return Err(self.err("control character in a string")),
                c => out.push(c),
            }
        }
        self.scratch = String::from_utf8(out).map_err(|_| self.err("string is not valid UTF-8"))?;
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, ReadErr> {
        let digits = self
            .b
            .get(self.i..self.i + 4)
            .ok_or_else(|| self.err("truncated \\u escape"))?;
        let mut v = 0u32;
        for &d in digits {
            let x = (d as char)
                .to_digit(16)
                .ok_or_else(|| self.err("invalid \\u escape"))?;
            v = v * 16 + x;
        }
        self.i += 4;
        Ok(v)
    }

    /// Reads a JSON number into a double, exactly as `serde_json` would.
    ///
    /// Fast path for plain decimals (`-?int(.frac)?`, no exponent) of at
    /// most 19 digits: the digits fit a `u64` exactly and the power of ten
    /// is at most 10^19, so the result is the same one operation on the
    /// same two doubles as in [`number_general`](Self::number_general).
    /// Everything else (and every error) is left to that.
    #[inline(always)]
    fn number(&mut self) -> Result<f64, ReadErr> {
        let b = self.b;
        let start = self.i;
        let mut i = start;
        let neg = b.get(i) == Some(&b'-');
        if neg {
            i += 1;
        }
        let int_start = i;
        let mut mant = 0u64;
        while let Some(&d) = b.get(i) {
            let v = d.wrapping_sub(b'0');
            if v > 9 {
                break;
            }
            mant = mant.wrapping_mul(10).wrapping_add(u64::from(v));
            i += 1;
        }
        let int_digits = i - int_start;
        if int_digits == 0 || (int_digits > 1 && b[int_start] == b'0') {
            return self.number_general();
        }
        let mut frac_digits = 0;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let frac_start = i;
            // Eight digits at a time while they last.
            while let Some(w) = load8(b, i) {
                let Some(v) = eight_digits(w) else {
                    break;
                };
                mant = mant.wrapping_mul(100_000_000).wrapping_add(v);
                i += 8;
            }
            while let Some(&d) = b.get(i) {
                let v = d.wrapping_sub(b'0');
                if v > 9 {
                    break;
                }
                mant = mant.wrapping_mul(10).wrapping_add(u64::from(v));
                i += 1;
            }
            frac_digits = i - frac_start;
            if frac_digits == 0 {
                return self.number_general();
            }
        }
        if int_digits + frac_digits > 19 || matches!(b.get(i), Some(b'e' | b'E')) {
            return self.number_general();
        }
        // Up to 2^53 the mantissa is an exact double, and so is 10^k for
        // k <= 22: one correctly rounded division. Above, serde_json's
        // default conversion does the same division on the rounded
        // mantissa; its correctly rounded one (`float_roundtrip`) does not.
        if mant > (1u64 << 53) && serde_json_is_correctly_rounded() {
            return self.number_general();
        }
        self.i = i;
        let x = mant as f64 / EXACT_POW10[frac_digits];
        Ok(if neg { -x } else { x })
    }

    /// [`number`](Self::number) for any JSON number (and its errors).
    #[inline(never)]
    fn number_general(&mut self) -> Result<f64, ReadErr> {
        let start = self.i;
        let b = self.b;
        let mut i = self.i;
        let neg = b.get(i) == Some(&b'-');
        if neg {
            i += 1;
        }
        let mut mant: u64 = 0;
        let mut digits = 0u32;
        let mut exact = true;
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while let Some(&d @ b'0'..=b'9') = b.get(i) {
                    if digits < 19 {
                        mant = mant * 10 + u64::from(d - b'0');
                        if mant != 0 {
                            digits += 1;
                        }
                    } else {
                        exact = false;
                    }
                    i += 1;
                }
            }
            _ => {
                self.i = i;
                return Err(self.err("invalid number"));
            }
        }
        // Integer digits beyond the 19th were dropped: scale back up (only
        // matters for the `exact` check below, which then fails anyway).
        let mut exp10: i64 = 0;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let frac_start = i;
            while let Some(&d @ b'0'..=b'9') = b.get(i) {
                if digits < 19 {
                    mant = mant * 10 + u64::from(d - b'0');
                    if mant != 0 {
                        digits += 1;
                    }
                    exp10 -= 1;
                } else {
                    exact = false;
                }
                i += 1;
            }
            if i == frac_start {
                self.i = i;
                return Err(self.err("invalid number: no digits after '.'"));
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            let mut eneg = false;
            if let Some(&s @ (b'+' | b'-')) = b.get(i) {
                eneg = s == b'-';
                i += 1;
            }
            let e_start = i;
            let mut e: i64 = 0;
            while let Some(&d @ b'0'..=b'9') = b.get(i) {
                e = (e * 10 + i64::from(d - b'0')).min(1_000_000);
                i += 1;
            }
            if i == e_start {
                self.i = i;
                return Err(self.err("invalid number: no digits in the exponent"));
            }
            exp10 += if eneg { -e } else { e };
        }
        self.i = i;
        // Exact fast path: the mantissa and the power of ten are both exact
        // doubles, so one operation rounds correctly (as serde_json does too).
        if exact && mant <= (1u64 << 53) && exp10.unsigned_abs() <= 22 {
            let m = mant as f64;
            let x = if exp10 >= 0 {
                m * EXACT_POW10[exp10 as usize]
            } else {
                m / EXACT_POW10[(-exp10) as usize]
            };
            return Ok(if neg { -x } else { x });
        }
        // Otherwise the result must be what serde_json gives, so that
        // matching the text and matching a `Value` parsed from it agree.
        if exact && exp10.unsigned_abs() <= 1000 {
            let x = if serde_json_is_correctly_rounded() {
                std::str::from_utf8(&b[start..i])
                    .ok()
                    .and_then(|t| t.parse::<f64>().ok())
                    .filter(|x| x.is_finite())
            } else {
                serde_json_default_float(mant, exp10 as i32).map(|x| if neg { -x } else { x })
            };
            if let Some(x) = x {
                return Ok(x);
            }
        }
        serde_json::from_slice::<f64>(&b[start..i]).map_err(|_| ReadErr {
            offset: start,
            message: "invalid or out-of-range number",
        })
    }

    /// Skips one value of any kind.
    #[inline(always)]
    fn skip_value(&mut self) -> Result<(), ReadErr> {
        self.ws();
        match self.peek() {
            Some(b'"') => {
                self.i += 1;
                self.skip_string()
            }
            Some(b'{' | b'[') => self.skip_container(),
            Some(_) => {
                // Number or literal: up to the next delimiter.
                let start = self.i;
                while let Some(&c) = self.b.get(self.i) {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                        break;
                    }
                    self.i += 1;
                }
                if self.i == start {
                    Err(self.err("expected a JSON value"))
                } else {
                    Ok(())
                }
            }
            None => Err(self.err("unexpected end of input, expected a value")),
        }
    }

    /// Skips a string body after its opening quote.
    #[inline(always)]
    fn skip_string(&mut self) -> Result<(), ReadErr> {
        let b = self.b;
        let mut i = self.i;
        loop {
            if let Some(w) = load8(b, i) {
                let m = bytes_eq(w, b'"') | bytes_eq(w, b'\\');
                if m == 0 {
                    i += 8;
                    continue;
                }
                i += (m.trailing_zeros() / 8) as usize;
            }
            match b.get(i) {
                Some(b'"') => {
                    self.i = i + 1;
                    return Ok(());
                }
                Some(b'\\') => i += 2,
                Some(_) => i += 1,
                None => {
                    self.i = b.len();
                    return Err(self.err("unterminated string"));
                }
            }
        }
    }

    /// Skips an array or object starting at its opening bracket.
    #[inline(never)]
    fn skip_container(&mut self) -> Result<(), ReadErr> {
        let open = self.b[self.i];
        self.i += 1;
        if open == b'[' {
            self.skip_rest(b'[', b']', 1)
        } else {
            self.skip_rest(b'{', b'}', 1)
        }
    }

    /// Skips to just after the `close` bracket ending `depth` open
    /// containers of its kind. In valid JSON brackets and braces nest
    /// properly, so only this kind needs counting, and only outside strings.
    ///
    /// Eight bytes at a time (SWAR) while a word holds no backslash and no
    /// bracket of this kind outside strings: such a word only flips "inside
    /// a string" when it holds an odd number of quotes. Words with a
    /// backslash or a bracket outside strings are done byte by byte.
    /// Skips the rest of an object (after its opening brace).
    #[inline(never)]
    fn skip_object_rest(&mut self) -> Result<(), ReadErr> {
        self.skip_rest(b'{', b'}', 1)
    }

    #[inline(always)]
    fn skip_rest(&mut self, open: u8, close: u8, mut depth: usize) -> Result<(), ReadErr> {
        let b = self.b;
        let mut i = self.i;
        let mut in_str = false;
        let mut esc = false;
        loop {
            // After a backslash the next byte must be taken byte by byte.
            if !esc {
                i = skip_plain(b, i, open, close, &mut in_str);
            }
            // Byte by byte through (at least) one word.
            let stop = i + 8;
            while i < stop || esc {
                let Some(&c) = b.get(i) else {
                    self.i = b.len();
                    return Err(self.err("unexpected end of input inside an array or object"));
                };
                i += 1;
                if esc {
                    esc = false;
                } else if in_str {
                    if c == b'\\' {
                        esc = true;
                    } else if c == b'"' {
                        in_str = false;
                    }
                } else if c == b'"' {
                    in_str = true;
                } else if c == open {
                    depth += 1;
                } else if c == close {
                    depth -= 1;
                    if depth == 0 {
                        self.i = i;
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic xorshift* generator for the randomized tests.
    fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed;
        move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    fn read_number(text: &str) -> Result<f64, ReadErr> {
        let mut shapes = Shapes::new();
        let mut r = Reader {
            b: text.as_bytes(),
            i: 0,
            scratch: String::new(),
            shapes: &mut shapes,
        };
        let x = r.number()?;
        if r.i == text.len() {
            Ok(x)
        } else {
            Err(r.err("trailing"))
        }
    }

    /// Skipping any value ends exactly where it ends, whatever its strings
    /// hold (brackets, `|`, quotes and backslashes, at every offset within
    /// a word), compact or pretty-printed.
    #[test]
    fn skipping_finds_the_end_of_every_value() {
        let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
        const PIECES: [&str; 12] = [
            "[", "]", "{", "}", "|", "\\", "\"", "a", "é", " ", "\\\"", "xyz01234",
        ];
        fn value_of(next: &mut impl FnMut() -> u64, depth: u32) -> Value {
            match next() % if depth > 3 { 3 } else { 5 } {
                0 => {
                    let n = next() % 12;
                    let s: String = (0..n)
                        .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                        .collect();
                    Value::String(s)
                }
                1 => serde_json::json!(next() % 1000),
                2 => Value::Null,
                3 => Value::Array((0..next() % 5).map(|_| value_of(next, depth + 1)).collect()),
                _ => Value::Object(
                    (0..next() % 5)
                        .map(|k| {
                            (
                                format!("k{k}{}", "[{|".repeat(k as usize)),
                                value_of(next, depth + 1),
                            )
                        })
                        .collect(),
                ),
            }
        }
        for _ in 0..5_000 {
            let v = value_of(&mut next, 0);
            for text in [v.to_string(), format!("{v:#}")] {
                for pad in 0..8 {
                    let t = format!("{}{text}", " ".repeat(pad));
                    let mut shapes = Shapes::new();
                    let mut r = Reader {
                        b: t.as_bytes(),
                        i: 0,
                        scratch: String::new(),
                        shapes: &mut shapes,
                    };
                    assert!(r.skip_value().is_ok(), "{t}");
                    assert_eq!(r.i, t.len(), "{t}");
                }
            }
        }
    }

    /// Reading compact JSON text records the same values as reading the
    /// parsed event, whatever names earlier events had at each position
    /// (the member-name guesses are per thread and kept across events):
    /// names that share a prefix or a tag with a wanted one, escaped
    /// names, long names, and values of every kind.
    #[test]
    fn text_and_value_agree_across_event_shapes() {
        let mut next = xorshift(0x5DEE_CE66_D1CE_4E5B);
        const NAMES: [&str; 12] = [
            "a",
            "ab",
            "abc",
            r#"a\"b"#,
            "MAPBLKLOT",
            "MAPBLKLOX",
            "MAPBLKLOTS",
            "firstCoordinates",
            "firstCoordinatez",
            "x",
            "",
            r"\u0061b",
        ];
        fn value_of(next: &mut impl FnMut() -> u64, depth: u32) -> Value {
            match next() % if depth > 2 { 4 } else { 6 } {
                0 => Value::String(
                    ["", "v", "a\"b,", "}", "12345678901234567", "é"][(next() % 6) as usize]
                        .to_string(),
                ),
                1 => serde_json::json!((next() % 2000) as f64 / 7.0),
                2 => serde_json::json!(next() % 1000),
                3 => [Value::Null, Value::Bool(true)][(next() % 2) as usize].clone(),
                4 => Value::Array((0..next() % 3).map(|_| value_of(next, depth + 1)).collect()),
                _ => object_of(next, depth + 1),
            }
        }
        fn object_of(next: &mut impl FnMut() -> u64, depth: u32) -> Value {
            Value::Object(
                (0..next() % 7)
                    .map(|_| {
                        let name = NAMES[(next() % NAMES.len() as u64) as usize];
                        // Unescape the two escaped names.
                        let name: String =
                            serde_json::from_str(&format!("\"{name}\"")).unwrap_or_default();
                        (name, value_of(next, depth))
                    })
                    .collect(),
            )
        }
        let mut fields = Fields::default();
        for path in [
            &["ab"][..],
            &["MAPBLKLOT"],
            &["a\"b", "x"],
            &["firstCoordinates", "x"],
            &["firstCoordinates", "ab"],
            &["abc", "MAPBLKLOT", "a"],
        ] {
            fields.register(path, true);
        }
        let leaves = |fe: &FlatEvent| {
            let mut l: Vec<(u32, String)> = fe
                .leaves
                .iter()
                .map(|&(f, s)| (f, format!("{:?}", fe.scalar(s))))
                .collect();
            l.sort();
            l
        };
        let mut text_fe = FlatEvent::new();
        let mut value_fe = FlatEvent::new();
        for _ in 0..20_000 {
            let ev = object_of(&mut next, 0);
            let text = ev.to_string();
            assert!(
                text_fe.read_json(&fields, text.as_bytes()).is_ok(),
                "{text}"
            );
            // Numbers as serde_json reads them from the text.
            let parsed: Value = serde_json::from_str(&text).unwrap_or_default();
            value_fe.read_value(&fields, &parsed);
            assert_eq!(leaves(&text_fe), leaves(&value_fe), "{text}");
        }
    }

    fn reader_at(text: &str, shapes: &mut Shapes, f: impl FnOnce(&mut Reader<'_>)) {
        let mut r = Reader {
            b: text.as_bytes(),
            i: 0,
            scratch: String::new(),
            shapes,
        };
        f(&mut r);
    }

    /// The fast path of `number` gives what `number_general` gives (value,
    /// error and where reading stopped), and where both are exact
    /// (mantissa up to 2^53, at most 22 fraction digits) the correctly
    /// rounded `str::parse::<f64>`: plain decimals of 1 to 22 digits
    /// (17 to 20 most often), negative zero, leading zeros in the
    /// fraction, exponents, and malformed forms, each followed by a
    /// delimiter or at the end of the input.
    #[test]
    fn number_fast_path_matches_the_general_reader() {
        let mut next = xorshift(0x1234_5678_9ABC_DEF1);
        const FIXED: [&str; 14] = [
            "-0",
            "0",
            "-0.0",
            "0.000",
            "01",
            "-",
            "1.",
            ".5",
            "-01.5",
            "1e5",
            "1.5E-3",
            "0.1",
            "9007199254740993",
            "-12345678901234567890",
        ];
        let mut shapes = Shapes::new();
        for n in 0..300_000 {
            let mut t = String::new();
            if let Some(fixed) = FIXED.get(n) {
                t.push_str(fixed);
            } else {
                if next().is_multiple_of(2) {
                    t.push('-');
                }
                let total = match next() % 4 {
                    0 => 1 + next() % 22,
                    _ => 17 + next() % 4,
                } as usize;
                let int_digits = 1 + next() as usize % total;
                for k in 0..int_digits {
                    let d = (next() % 10) as u8;
                    let d = if k == 0 && int_digits > 1 && !next().is_multiple_of(50) {
                        1 + d % 9
                    } else {
                        d
                    };
                    t.push(char::from(b'0' + d));
                }
                if int_digits < total {
                    t.push('.');
                    let zeros = if next().is_multiple_of(4) {
                        next() % 6
                    } else {
                        0
                    };
                    for k in 0..total - int_digits {
                        let d = if (k as u64) < zeros { 0 } else { next() % 10 };
                        t.push(char::from(b'0' + d as u8));
                    }
                }
                if next().is_multiple_of(8) {
                    t.push('e');
                    t.push_str(&(next() % 30).to_string());
                }
            }
            let end = t.len();
            if next().is_multiple_of(2) {
                t.push_str([",", "}", "]", " ", "x"][(next() % 5) as usize]);
            }
            let mut fast = (0, None, 0);
            reader_at(&t, &mut shapes, |r| {
                let x = r.number();
                fast = (
                    r.i,
                    x.ok().map(f64::to_bits),
                    x.err().map_or(0, |e| e.offset),
                );
            });
            let mut general = (0, None, 0);
            reader_at(&t, &mut shapes, |r| {
                let x = r.number_general();
                general = (
                    r.i,
                    x.ok().map(f64::to_bits),
                    x.err().map_or(0, |e| e.offset),
                );
            });
            assert_eq!(fast, general, "{t}");
            let text = &t[..end];
            let digits = text.bytes().filter(u8::is_ascii_digit).count();
            let frac = text.split_once('.').map_or(0, |(_, f)| f.len());
            let mant: Option<u64> = text.replace(['-', '.'], "").parse().ok();
            if fast.1.is_some()
                && fast.0 == end
                && !text.contains('e')
                && digits <= 19
                && frac <= 22
                && mant.is_some_and(|m| m <= 1 << 53)
            {
                let exact = text.parse::<f64>().ok().map(f64::to_bits);
                assert_eq!(fast.1, exact, "{t}");
            }
        }
    }

    /// The fast digit test and conversion agree with byte by byte.
    #[test]
    fn eight_digits_matches_bytewise() {
        let mut next = xorshift(0x0F1E_2D3C_4B5A_6978);
        for n in 0..200_000 {
            let mut bytes = [0u8; 8];
            for byte in &mut bytes {
                *byte = match n % 3 {
                    0 => next() as u8,
                    1 => b'0' + (next() % 10) as u8,
                    _ => b'0' + (next() % 12) as u8 - u8::from(next().is_multiple_of(9)) * 3,
                };
            }
            let want = bytes.iter().try_fold(0u64, |acc, &c| {
                c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
            });
            assert_eq!(eight_digits(u64::from_le_bytes(bytes)), want, "{bytes:?}");
        }
    }

    /// Skipping long containers (many 32-byte blocks with no bracket)
    /// ends where a byte-by-byte scan ends: arrays of numbers, of objects
    /// with numbers, and of strings holding brackets, braces, quotes and
    /// backslashes, at every offset, compact and pretty-printed.
    #[test]
    fn skipping_long_containers_matches_a_bytewise_scan() {
        let mut next = xorshift(0x6A09_E667_F3BC_C908);
        // Where a container starting at 0 ends, one byte at a time.
        fn bytewise_end(b: &[u8]) -> usize {
            let (mut depth, mut in_str, mut esc) = (0usize, false, false);
            for (i, &c) in b.iter().enumerate() {
                if esc {
                    esc = false;
                } else if in_str {
                    match c {
                        b'\\' => esc = true,
                        b'"' => in_str = false,
                        _ => {}
                    }
                } else {
                    match c {
                        b'"' => in_str = true,
                        b'[' | b'{' => depth += 1,
                        b']' | b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                return i + 1;
                            }
                        }
                        _ => {}
                    }
                }
            }
            usize::MAX
        }
        const PIECES: [&str; 9] = [
            "[",
            "]",
            "{",
            "}",
            "\\",
            "\"",
            "abcdefgh",
            "0123456789",
            " ",
        ];
        let mut shapes = Shapes::new();
        for _ in 0..3_000 {
            let n = next() % 40;
            let items: Vec<Value> = (0..n)
                .map(|_| match next() % 4 {
                    0 => serde_json::json!(-122.5 + (next() % 1_000_000) as f64 / 7.0),
                    1 => serde_json::json!({"x": (next() % 1000) as f64 / 3.0, "y": 37.7, "z": 0}),
                    2 => Value::String(
                        (0..next() % 40)
                            .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                            .collect(),
                    ),
                    _ => Value::String(
                        "plain text without any specials".repeat(1 + (next() % 3) as usize),
                    ),
                })
                .collect();
            let v = if next().is_multiple_of(3) {
                serde_json::json!({"a": items, "b": {"c": "}"}})
            } else {
                serde_json::json!([items])
            };
            for text in [v.to_string(), format!("{v:#}")] {
                let pad = (next() % 32) as usize;
                let t = format!("{}{text},1", " ".repeat(pad));
                let want = pad + bytewise_end(&t.as_bytes()[pad..]);
                assert_eq!(want, pad + text.len(), "{t}");
                reader_at(&t, &mut shapes, |r| {
                    r.i = pad;
                    assert!(r.skip_container().is_ok(), "{t}");
                    assert_eq!(r.i, want, "{t}");
                });
            }
        }
    }

    #[test]
    fn numbers_read_exactly_as_serde_json() {
        let mut next = xorshift(0x2545_F491_4F6C_DD1D);
        let mut checked = 0;
        for _ in 0..200_000 {
            let mut t = String::new();
            if next().is_multiple_of(2) {
                t.push('-');
            }
            let int_digits = 1 + next() % 21;
            for k in 0..int_digits {
                let d = next() % 10;
                t.push(char::from(
                    b'0' + if k == 0 && int_digits > 1 {
                        1 + d % 9
                    } else {
                        d
                    } as u8,
                ));
            }
            if next().is_multiple_of(2) {
                t.push('.');
                for _ in 0..1 + next() % 20 {
                    t.push(char::from(b'0' + (next() % 10) as u8));
                }
            }
            if next().is_multiple_of(2) {
                t.push(if next().is_multiple_of(2) { 'e' } else { 'E' });
                match next() % 3 {
                    0 => t.push('-'),
                    1 => t.push('+'),
                    _ => {}
                }
                t.push_str(&(next() % 420).to_string());
            }
            let ours = read_number(&t).ok();
            let theirs = serde_json::from_str::<f64>(&t).ok();
            assert_eq!(
                ours.map(f64::to_bits),
                theirs.map(f64::to_bits),
                "{t}: ours {ours:?}, serde_json {theirs:?}"
            );
            checked += 1;
        }
        assert_eq!(checked, 200_000);
        for bad in ["-", "01", "1.", ".5", "1e", "1e+", "--1", "+1"] {
            assert!(read_number(bad).is_err(), "{bad}");
        }
    }
}
