//! Skipping what no rule reads: a value found only for its end, members in
//! plain compact form taken whole, and containers stepped over eight or 32
//! bytes at a time.

use super::cursor::{ReadErr, Reader};
use super::shapes::Shapes;
use super::swar::{
    HIGH, ONES, below, byte_count, bytes_eq, first_of2, has_between, has_byte, load8,
};

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
    /// closing quote is at the first index, with this
    /// [`name_tag`](crate::pattern::fields::name_tag).
    Name(usize, u64),
}

/// Where [`Reader::skip_compact_members`] stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Compact {
    /// At the start of a member (or wherever the general loop must look).
    AtName,
    /// Just after a member's value, not at a `,`.
    AfterValue,
    /// At the start of a member with a plain name, as [`Step::Name`].
    Named(usize, u64),
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

impl Reader<'_> {
    /// Skips, from `self.i` (where a member name should start), members
    /// whose name no rule reads, as long as they are in the plain compact
    /// form `"name":"value"` or `"name":token` (a number or literal): short
    /// names and string values without escapes (the common case), followed
    /// by `,` or `}`. Everything else is left to the general loop: this
    /// stops *before* the first member it does not take whole, and consumes
    /// exactly what the general loop would have for the members it takes.
    /// `wanted(tag, name)` says that a name (raw bytes, and its
    /// [`name_tag`](crate::pattern::fields::name_tag)) may be one the rules
    /// read (false positives only cost speed).
    ///
    /// `row` is the object's row in [`Shapes`], `pos` the position of the
    /// member at `self.i` (counted up for each member taken).
    #[inline(always)]
    pub(super) fn skip_compact_members(
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
        let guess = self.shapes.guess(row, pos);
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
        if Shapes::fits(len, pos)
            && b.get(end + 1) == Some(&b':')
            && let Some(named) = b.get(i + 1..end + 2)
        {
            self.shapes.remember(row, pos, named);
        }
        self.skip_member_value(end, tag, wanted)
    }

    /// The rest of [`skip_member`](Self::skip_member): `end` is where the
    /// name's closing quote is, `tag` the name's [`name_tag`](crate::pattern::fields::name_tag).
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

    /// Skips one value of any kind.
    #[inline(always)]
    pub(super) fn skip_value(&mut self) -> Result<(), ReadErr> {
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
    pub(super) fn skip_container(&mut self) -> Result<(), ReadErr> {
        let open = self.b[self.i];
        self.i += 1;
        if open == b'[' {
            self.skip_rest(b'[', b']', 1)
        } else {
            self.skip_rest(b'{', b'}', 1)
        }
    }

    /// Skips the rest of an object (after its opening brace).
    #[inline(never)]
    pub(super) fn skip_object_rest(&mut self) -> Result<(), ReadErr> {
        self.skip_rest(b'{', b'}', 1)
    }

    /// Skips to just after the `close` bracket ending `depth` open
    /// containers of its kind. In valid JSON brackets and braces nest
    /// properly, so only this kind needs counting, and only outside strings.
    ///
    /// Eight bytes at a time (SWAR) while a word holds no backslash and no
    /// bracket of this kind outside strings: such a word only flips "inside
    /// a string" when it holds an odd number of quotes. Words with a
    /// backslash or a bracket outside strings are done byte by byte.
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
    use serde_json::Value;

    use super::super::shapes::Shapes;
    use super::super::testing::{reader_at, xorshift};
    use super::*;

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
                    let mut r = Reader::new(t.as_bytes(), &mut shapes);
                    assert!(r.skip_value().is_ok(), "{t}");
                    assert_eq!(r.i, t.len(), "{t}");
                }
            }
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
}
