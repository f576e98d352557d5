//! Reading JSON text onto the tape: values, objects (only the members the
//! rules read, left as soon as all of them are seen), arrays and member
//! names.

use super::cursor::{EventJsonError, ReadErr, Reader};
use super::shapes::Shapes;
use super::skip::Compact;
use super::swar::{bytes_control, bytes_eq, load8};
use super::tape::{FlatEvent, MAX_EVENT_DEPTH, Slot};
use crate::pattern::fields::{Fields, LOCAL, name_tag};

/// Byte equality without a `memcmp` call (names are short).
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// A member name as read.
enum Key {
    /// `b[start..end]`, no escapes.
    Raw(usize, usize),
    /// Decoded into `scratch`.
    Decoded,
}

impl FlatEvent {
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
        let mut r = Reader::new(json, shapes);
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

impl Reader<'_> {
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
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::super::testing::xorshift;
    use super::*;

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
}
