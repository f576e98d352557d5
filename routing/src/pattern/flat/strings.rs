//! Strings: the plain ASCII fast path, the body up to the closing quote,
//! and escapes decoded and checked.

use super::cursor::{ReadErr, Reader};
use super::swar::{HIGH, bytes_control, bytes_eq, load8};

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

impl Reader<'_> {
    /// Where the string starting at `self.i` (after its opening quote)
    /// ends, when it is plain ASCII (no escapes, no control characters) and
    /// its end is found within the words read; None otherwise (then read it
    /// with [`string_body`](Self::string_body)).
    #[inline(always)]
    pub(super) fn ascii_string_end(&self) -> Option<usize> {
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
    pub(super) fn string_body(&mut self) -> Result<bool, ReadErr> {
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
}
