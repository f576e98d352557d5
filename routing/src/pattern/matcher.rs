//! Single-value matchers: what one entry of a leaf array tests.

use std::borrow::Cow;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

/// A JSON scalar from a pattern. Numbers are IEEE-754 doubles and compare
/// numerically (`5` equals `5.0`); strings and numbers never equal each other.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

/// Hashable form of a scalar, equal exactly when [`Scalar::eq_value`] holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ValueKey {
    Str(String),
    Num(u64),
    Bool(bool),
    Null,
}

fn num_bits(x: f64) -> u64 {
    // -0.0 == 0.0, so both must hash the same. JSON has no NaN.
    if x == 0.0 { 0 } else { x.to_bits() }
}

/// What a [`RuleSet`](super::RuleSet) indexes a leaf matcher by. Case-
/// insensitive keys are lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum IndexKey {
    Exact(ValueKey),
    IgnoreCase(String),
    Prefix(String),
    PrefixIgnoreCase(String),
    Suffix(String),
    SuffixIgnoreCase(String),
}

/// The bits a number is hashed by (zeros normalised).
pub(crate) fn num_key(x: f64) -> u64 {
    num_bits(x)
}

impl Scalar {
    pub(crate) fn from_value(v: &Value) -> Option<Scalar> {
        match v {
            Value::String(s) => Some(Scalar::Str(s.clone())),
            Value::Number(n) => n.as_f64().map(Scalar::Num),
            Value::Bool(b) => Some(Scalar::Bool(*b)),
            Value::Null => Some(Scalar::Null),
            Value::Array(_) | Value::Object(_) => None,
        }
    }

    pub(crate) fn eq_scalar(&self, v: ScalarRef<'_>) -> bool {
        match (self, v) {
            (Scalar::Str(a), ScalarRef::Str(b)) => a == b,
            (Scalar::Num(a), ScalarRef::Num(b)) => *a == b,
            (Scalar::Bool(a), ScalarRef::Bool(b)) => *a == b,
            (Scalar::Null, ScalarRef::Null) => true,
            _ => false,
        }
    }

    pub(crate) fn key(&self) -> ValueKey {
        match self {
            Scalar::Str(s) => ValueKey::Str(s.clone()),
            Scalar::Num(x) => ValueKey::Num(num_bits(*x)),
            Scalar::Bool(b) => ValueKey::Bool(*b),
            Scalar::Null => ValueKey::Null,
        }
    }
}

/// Folds one character for case-insensitive comparison: Unicode simple
/// case folding, character by character (so `ß` stays one letter and never
/// equals `ss`, while `Σ`, `σ` and `ς` all fold to `σ`). `İ` folds to `i`,
/// as Java's `Character.toLowerCase` (Event Ruler) does.
pub(crate) fn fold_char(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    match c {
        // Characters whose simple case folding is not their lower case.
        '\u{3c2}' => '\u{3c3}',   // ς -> σ
        '\u{17f}' => 's',         // ſ
        '\u{b5}' => '\u{3bc}',    // µ -> μ
        '\u{345}' => '\u{3b9}',   // combining ypogegrammeni -> ι
        '\u{1fbe}' => '\u{3b9}',  // ι -> ι
        '\u{3d0}' => '\u{3b2}',   // ϐ -> β
        '\u{3d1}' => '\u{3b8}',   // ϑ -> θ
        '\u{3d5}' => '\u{3c6}',   // ϕ -> φ
        '\u{3d6}' => '\u{3c0}',   // ϖ -> π
        '\u{3f0}' => '\u{3ba}',   // ϰ -> κ
        '\u{3f1}' => '\u{3c1}',   // ϱ -> ρ
        '\u{3f5}' => '\u{3b5}',   // ϵ -> ε
        '\u{1e9b}' => '\u{1e61}', // ẛ -> ṡ
        '\u{1c80}' => '\u{432}',
        '\u{1c81}' => '\u{434}',
        '\u{1c82}' => '\u{43e}',
        '\u{1c83}' => '\u{441}',
        '\u{1c84}' | '\u{1c85}' => '\u{442}',
        '\u{1c86}' => '\u{44a}',
        '\u{1c87}' => '\u{463}',
        '\u{1c88}' => '\u{a64b}',
        _ => c.to_lowercase().next().unwrap_or(c),
    }
}

/// Folds a string for case-insensitive comparison (see [`fold_char`]),
/// borrowing when nothing changes.
pub(crate) fn fold(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase() || b >= 0x80) {
        Cow::Owned(s.chars().map(fold_char).collect())
    } else {
        Cow::Borrowed(s)
    }
}

/// `fold(s) == folded`, without allocating.
pub(crate) fn eq_folded(s: &str, folded: &str) -> bool {
    if s.is_ascii() {
        return s.len() == folded.len()
            && s.bytes()
                .zip(folded.bytes())
                .all(|(a, b)| a.to_ascii_lowercase() == b);
    }
    s.chars().map(fold_char).eq(folded.chars())
}

/// `fold(s).starts_with(folded)`, without allocating.
pub(crate) fn starts_with_folded(s: &str, folded: &str) -> bool {
    let mut it = s.chars().map(fold_char);
    folded.chars().all(|p| it.next() == Some(p))
}

/// `fold(s).ends_with(folded)`, without allocating.
pub(crate) fn ends_with_folded(s: &str, folded: &str) -> bool {
    let mut it = s.chars().rev().map(fold_char);
    folded.chars().rev().all(|p| it.next() == Some(p))
}

/// One scalar of an event, borrowed: what leaf matchers look at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ScalarRef<'a> {
    Str(&'a str),
    Num(f64),
    Bool(bool),
    Null,
}

impl<'a> ScalarRef<'a> {
    /// The scalar of a JSON value; None for arrays and objects.
    pub(crate) fn of(v: &'a Value) -> Option<ScalarRef<'a>> {
        match v {
            Value::String(s) => Some(ScalarRef::Str(s)),
            Value::Number(n) => n.as_f64().map(ScalarRef::Num),
            Value::Bool(b) => Some(ScalarRef::Bool(*b)),
            Value::Null => Some(ScalarRef::Null),
            Value::Array(_) | Value::Object(_) => None,
        }
    }

    fn as_str(&self) -> Option<&'a str> {
        match self {
            ScalarRef::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A `wildcard` operand: literal parts separated by `*`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Wildcard {
    /// Literal text between the stars; `parts.len()` is the star count + 1.
    parts: Vec<String>,
}

impl Wildcard {
    /// Parses `a*b` with `\*` (literal star) and `\\` (literal backslash).
    /// Errors are reasons without the path.
    pub(crate) fn parse(text: &str) -> Result<Wildcard, String> {
        let mut parts = vec![String::new()];
        let mut chars = text.chars();
        let mut last_was_star = false;
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    if last_was_star {
                        return Err(format!(
                            "wildcard must not contain consecutive `*` characters, got {}",
                            show_str(text)
                        ));
                    }
                    parts.push(String::new());
                    last_was_star = true;
                    continue;
                }
                '\\' => match chars.next() {
                    Some(e @ ('*' | '\\')) => push(&mut parts, e),
                    _ => {
                        return Err(format!(
                            "wildcard allows `\\` only before `*` or `\\`, got {}",
                            show_str(text)
                        ));
                    }
                },
                other => push(&mut parts, other),
            }
            last_was_star = false;
        }
        Ok(Wildcard { parts })
    }

    pub(crate) fn stars(&self) -> usize {
        self.parts.len() - 1
    }

    /// Literal text every match starts with (before the first `*`).
    pub(crate) fn literal_prefix(&self) -> &str {
        self.parts.first().map_or("", String::as_str)
    }

    /// Literal text every match ends with (after the last `*`).
    pub(crate) fn literal_suffix(&self) -> &str {
        self.parts.last().map_or("", String::as_str)
    }

    pub(crate) fn matches(&self, s: &str) -> bool {
        let (first, rest) = match self.parts.split_first() {
            Some(x) => x,
            None => return false,
        };
        let Some((last, middle)) = rest.split_last() else {
            return s == first;
        };
        if s.len() < first.len() + last.len() || !s.starts_with(first.as_str()) {
            return false;
        }
        if !s.ends_with(last.as_str()) {
            return false;
        }
        let mut hay = &s[first.len()..s.len() - last.len()];
        for part in middle {
            match hay.find(part.as_str()) {
                Some(i) => hay = &hay[i + part.len()..],
                None => return false,
            }
        }
        true
    }
}

fn push(parts: &mut [String], c: char) {
    if let Some(last) = parts.last_mut() {
        last.push(c);
    }
}

/// A `numeric` range over IEEE-754 doubles. `=` is a closed point range.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Range {
    /// (bound, inclusive)
    pub(crate) lower: Option<(f64, bool)>,
    pub(crate) upper: Option<(f64, bool)>,
}

impl Range {
    pub(crate) fn contains(&self, x: f64) -> bool {
        let lower_ok = match self.lower {
            None => true,
            Some((b, true)) => x >= b,
            Some((b, false)) => x > b,
        };
        let upper_ok = match self.upper {
            None => true,
            Some((b, true)) => x <= b,
            Some((b, false)) => x < b,
        };
        lower_ok && upper_ok
    }
}

/// The forms of `anything-but`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AnythingBut {
    /// Strings, or numbers (never mixed).
    Values(Vec<Scalar>),
    Prefix(Vec<String>),
    Suffix(Vec<String>),
    /// Already lower-cased.
    EqualsIgnoreCase(Vec<String>),
    Wildcard(Vec<Wildcard>),
}

/// One entry of a leaf array.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Matcher {
    Exact(Scalar),
    Prefix(String),
    /// Operand already lower-cased.
    PrefixIgnoreCase(String),
    Suffix(String),
    SuffixIgnoreCase(String),
    EqualsIgnoreCase(String),
    Wildcard(Wildcard),
    AnythingBut(AnythingBut),
    Numeric(Range),
    Cidr(IpNet),
    /// Evaluated on the whole field, not per value (see `leaf_matches`).
    Exists(bool),
    /// Alibaba `contains`: substring of a string value, or (any operand)
    /// equality with a value, which covers "the array has this element".
    Contains(Scalar),
}

impl Matcher {
    /// Does this matcher accept one scalar event value?
    pub(crate) fn matches_scalar(&self, v: ScalarRef<'_>) -> bool {
        match self {
            Matcher::Exact(s) => s.eq_scalar(v),
            Matcher::Prefix(p) => v.as_str().is_some_and(|s| s.starts_with(p.as_str())),
            Matcher::PrefixIgnoreCase(p) => v.as_str().is_some_and(|s| starts_with_folded(s, p)),
            Matcher::Suffix(p) => v.as_str().is_some_and(|s| s.ends_with(p.as_str())),
            Matcher::SuffixIgnoreCase(p) => v.as_str().is_some_and(|s| ends_with_folded(s, p)),
            Matcher::EqualsIgnoreCase(p) => v.as_str().is_some_and(|s| eq_folded(s, p)),
            Matcher::Wildcard(w) => v.as_str().is_some_and(|s| w.matches(s)),
            Matcher::AnythingBut(ab) => anything_but(ab, v),
            Matcher::Numeric(r) => match v {
                ScalarRef::Num(x) => r.contains(x),
                _ => false,
            },
            // Event values must be exactly an address: no blanks, no zone.
            Matcher::Cidr(net) => v
                .as_str()
                .and_then(|s| s.parse::<IpAddr>().ok())
                .is_some_and(|ip| net.contains(&ip) || net.contains(&ip.to_canonical())),
            Matcher::Exists(_) => false,
            Matcher::Contains(op) => match (op, v) {
                (Scalar::Str(sub), ScalarRef::Str(s)) => s.contains(sub.as_str()),
                (op, v) => op.eq_scalar(v),
            },
        }
    }

    /// The index key of this matcher: a value, prefix or suffix that every
    /// event value it accepts must have. None when there is none.
    pub(crate) fn index_key(&self) -> Option<IndexKey> {
        Some(match self {
            Matcher::Exact(s) => IndexKey::Exact(s.key()),
            Matcher::Contains(s) if !matches!(s, Scalar::Str(_)) => IndexKey::Exact(s.key()),
            Matcher::EqualsIgnoreCase(p) => IndexKey::IgnoreCase(p.clone()),
            Matcher::Prefix(p) => IndexKey::Prefix(p.clone()),
            Matcher::PrefixIgnoreCase(p) => IndexKey::PrefixIgnoreCase(p.clone()),
            Matcher::Suffix(p) => IndexKey::Suffix(p.clone()),
            Matcher::SuffixIgnoreCase(p) => IndexKey::SuffixIgnoreCase(p.clone()),
            Matcher::Wildcard(w) if w.stars() == 0 => {
                IndexKey::Exact(ValueKey::Str(w.literal_prefix().to_string()))
            }
            Matcher::Wildcard(w) if !w.literal_prefix().is_empty() => {
                IndexKey::Prefix(w.literal_prefix().to_string())
            }
            Matcher::Wildcard(w) if !w.literal_suffix().is_empty() => {
                IndexKey::Suffix(w.literal_suffix().to_string())
            }
            _ => return None,
        })
    }
}

/// `anything-but` accepts every present value the excluded set does not
/// cover. The string forms (prefix, suffix, ...) only exclude strings, so
/// numbers, booleans and null always pass them.
fn anything_but(ab: &AnythingBut, v: ScalarRef<'_>) -> bool {
    match ab {
        AnythingBut::Values(xs) => !xs.iter().any(|x| x.eq_scalar(v)),
        AnythingBut::Prefix(ps) => match v.as_str() {
            Some(s) => !ps.iter().any(|p| s.starts_with(p.as_str())),
            None => true,
        },
        AnythingBut::Suffix(ps) => match v.as_str() {
            Some(s) => !ps.iter().any(|p| s.ends_with(p.as_str())),
            None => true,
        },
        AnythingBut::EqualsIgnoreCase(ps) => match v.as_str() {
            Some(s) => !ps.iter().any(|p| eq_folded(s, p)),
            None => true,
        },
        AnythingBut::Wildcard(ws) => match v.as_str() {
            Some(s) => !ws.iter().any(|w| w.matches(s)),
            None => true,
        },
    }
}

/// Compact JSON for error messages, cut at 60 characters.
pub(crate) fn show(v: &Value) -> String {
    let text = serde_json::to_string(v).unwrap_or_else(|_| "?".to_string());
    if text.chars().count() > 60 {
        let cut: String = text.chars().take(57).collect();
        format!("{cut}...")
    } else {
        text
    }
}

pub(crate) fn show_str(s: &str) -> String {
    show(&Value::String(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wc(p: &str) -> Wildcard {
        Wildcard::parse(p).expect("valid wildcard")
    }

    #[test]
    fn wildcard_basics() {
        assert!(wc("a*b").matches("ab"));
        assert!(wc("a*b").matches("axxb"));
        assert!(!wc("a*b").matches("axxbc"));
        assert!(wc("*").matches(""));
        assert!(wc("*.png").matches("x.png"));
        assert!(wc("dir/*/*.png").matches("dir/a/b.png"));
        assert!(!wc("dir/*/*.png").matches("dir/b.png"));
        assert!(wc("abc").matches("abc"));
        assert!(!wc("abc").matches("abcd"));
        // prefix and suffix must not overlap
        assert!(!wc("ab*ba").matches("aba"));
        assert!(wc("ab*ba").matches("abba"));
        assert!(wc(r"a\*b").matches("a*b"));
        assert!(!wc(r"a\*b").matches("axb"));
        assert!(wc(r"a\\*").matches(r"a\xyz"));
        assert_eq!(wc(r"a\**").stars(), 1);
    }

    #[test]
    fn folding() {
        assert_eq!(fold("STRAẞE"), "straße");
        assert_ne!(fold("STRASSE"), fold("straße"));
        assert_eq!(fold("ΣΊΣΥΦΟΣ"), fold("σίσυφος"));
        assert_eq!(fold("İ"), "i");
        assert!(eq_folded("MOSKVA", "moskva"));
        assert!(eq_folded("Москва", "москва"));
        assert!(starts_with_folded("EVENTBRIDGE", "eventb"));
        assert!(ends_with_folded("ΟΔΟΣ", "οσ"));
        assert!(!ends_with_folded("Σ", "σσ"));
        for c in ['ς', 'ſ', 'ϑ', 'İ', 'ẞ', 'Ꭰ', 'ꭰ', 'K'] {
            assert_eq!(fold_char(fold_char(c)), fold_char(c), "{c}");
        }
    }

    #[test]
    fn wildcard_rejects() {
        assert!(Wildcard::parse("a**b").is_err());
        assert!(Wildcard::parse(r"a\nb").is_err());
        assert!(Wildcard::parse("a\\").is_err());
    }

    #[test]
    fn number_keys_normalise_zero() {
        assert_eq!(Scalar::Num(0.0).key(), Scalar::Num(-0.0).key());
        assert_eq!(ValueKey::Num(num_key(5.0)), Scalar::Num(5.0).key());
    }
}
