//! JSON numbers, read into doubles exactly as `serde_json` reads them.

use std::sync::OnceLock;

use super::cursor::{ReadErr, Reader};
use super::swar::load8;

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

impl Reader<'_> {
    /// Reads a JSON number into a double, exactly as `serde_json` would.
    ///
    /// Fast path for plain decimals (`-?int(.frac)?`, no exponent) of at
    /// most 19 digits: the digits fit a `u64` exactly and the power of ten
    /// is at most 10^19, so the result is the same one operation on the
    /// same two doubles as in [`number_general`](Self::number_general).
    /// Everything else (and every error) is left to that.
    #[inline(always)]
    pub(super) fn number(&mut self) -> Result<f64, ReadErr> {
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
}

#[cfg(test)]
mod tests {
    use super::super::shapes::Shapes;
    use super::super::testing::{reader_at, xorshift};
    use super::*;

    fn read_number(text: &str) -> Result<f64, ReadErr> {
        let mut shapes = Shapes::new();
        let mut r = Reader::new(text.as_bytes(), &mut shapes);
        let x = r.number()?;
        if r.i == text.len() {
            Ok(x)
        } else {
            Err(r.err("trailing"))
        }
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
