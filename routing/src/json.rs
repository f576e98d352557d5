//! The JSON reader routing uses, and a check that a stored event will parse.
//!
//! Routing reads a stored event into a [`serde_json::Value`] with
//! [`parse_event_json`]: serde_json's default limits apply (at most 127
//! nested arrays and objects, counting the event object; numbers must fit
//! an `f64`; strings must be Unicode, so no lone UTF-16 surrogate escape).
//! Ingress keeps `data` as raw text and never builds that tree, so it calls
//! [`check_event_json`] instead: the same deserializer walks the text with
//! the same limits, without allocating a tree, and accepts exactly what
//! [`parse_event_json`] accepts. An error names the path and the problem.

use std::cell::RefCell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::event::Event;

/// Most nested arrays and objects routing reads (serde_json's recursion
/// limit; the event object itself is the first level).
pub const MAX_JSON_DEPTH: usize = 127;

/// Why a stored event's JSON cannot be read by routing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct JsonError {
    /// Where, as `attr.key[index]` from the event object (empty: the whole
    /// text, e.g. trailing characters).
    pub path: String,
    /// What kind of problem.
    pub kind: JsonErrorKind,
    /// The parser's own message (position removed).
    pub detail: String,
}

/// The kinds of [`JsonError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonErrorKind {
    /// Nested deeper than [`MAX_JSON_DEPTH`].
    TooDeep,
    /// A number that does not fit an `f64` (`1e400`, a 400-digit integer).
    NumberOutOfRange,
    /// A `\uD800`-`\uDFFF` escape without its pair.
    LoneSurrogate,
    /// Anything else (not JSON, invalid UTF-8, ...).
    Syntax,
}

impl JsonError {
    /// A sentence naming the problem and the fix.
    pub fn reason(&self) -> String {
        match self.kind {
            JsonErrorKind::TooDeep => format!(
                "nests arrays and objects too deep: routing reads at most {MAX_JSON_DEPTH} levels (the event object counts as one)"
            ),
            JsonErrorKind::NumberOutOfRange => "holds a number out of range: routing reads numbers as 64-bit floats (at most about 1.8e308 in magnitude); send larger numbers as strings".into(),
            JsonErrorKind::LoneSurrogate => "holds a string with a lone UTF-16 surrogate escape (such as \\ud800 without its pair), which is not a Unicode character".into(),
            JsonErrorKind::Syntax => format!("cannot be read by routing: {}", self.detail),
        }
    }

    fn describe(&self) -> String {
        if self.path.is_empty() {
            format!("the event {}", self.reason())
        } else {
            format!("`{}` {}", self.path, self.reason())
        }
    }
}

/// Parse a stored event's JSON the way routing does (the one parser the
/// feed, the dispatcher and the link inbox use).
pub fn parse_event_json(bytes: &[u8]) -> Result<Value, JsonError> {
    serde_json::from_slice(bytes).map_err(|e| {
        // Parse failures are rare: walk again to find the path.
        check_event_json(bytes)
            .err()
            .unwrap_or_else(|| classify(&e, String::new()))
    })
}

/// Check that [`parse_event_json`] accepts `bytes`, without building the tree.
pub fn check_event_json(bytes: &[u8]) -> Result<(), JsonError> {
    // The fast walk records no path; a failure walks again to find it.
    walk(bytes, None).map_err(|_| {
        let path = RefCell::new(Vec::new());
        match walk(bytes, Some(&path)) {
            Err(e) => classify(&e, render(&path.borrow())),
            Ok(()) => JsonError {
                path: String::new(),
                kind: JsonErrorKind::Syntax,
                detail: "the check is not repeatable".into(),
            },
        }
    })
}

fn walk(bytes: &[u8], path: Option<&RefCell<Vec<Seg>>>) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    Walk { path }.deserialize(&mut de)?;
    de.end()
}

/// The `type` of an [`unroutable_envelope`] whose own type cannot be read.
pub const UNROUTABLE_TYPE: &str = "strait.unroutable";

/// A CloudEvent that carries a stored event routing cannot read, for a
/// dead letter: the stored event's context attributes that still parse
/// (`id`, `source`, `type`, extensions; so its dedup key and trace stay),
/// and as `data` the stored JSON text itself (`text/plain`). Attributes
/// that cannot be read are left out; without a readable `id`, `source` or
/// `type` the envelope uses `fallback_id`, `fallback_source` and
/// [`UNROUTABLE_TYPE`] (and if those are not valid either, `unroutable`
/// and `/strait`).
pub fn unroutable_envelope(stored: &[u8], fallback_id: &str, fallback_source: &str) -> Event {
    let text = String::from_utf8_lossy(stored).into_owned();
    let mut attrs = Map::new();
    if let Ok(members) = members_of(stored) {
        for (k, v) in members {
            if matches!(
                k.as_str(),
                "data" | "data_base64" | "datacontenttype" | "dataschema" | "specversion"
            ) {
                continue;
            }
            if let Ok(v) = serde_json::from_str::<Value>(v.get()) {
                attrs.insert(k, v);
            }
        }
    }
    let data = [
        (
            "datacontenttype",
            Value::String("text/plain; charset=utf-8".into()),
        ),
        ("data", Value::String(text)),
        (
            "specversion",
            Value::String(crate::event::SPEC_VERSION.into()),
        ),
    ];
    let full = attrs
        .clone()
        .into_iter()
        .chain(data.iter().map(|(k, v)| (k.to_string(), v.clone())));
    if let Ok(ev) = Event::from_structured(Value::Object(full.collect())) {
        return ev;
    }
    // Some attribute is not valid: keep only the identity.
    let pick = |name: &str, fallback: &str| match attrs.get(name) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => fallback.to_string(),
    };
    let mut min = Map::new();
    min.insert("id".into(), Value::String(pick("id", fallback_id)));
    min.insert(
        "source".into(),
        Value::String(pick("source", fallback_source)),
    );
    min.insert("type".into(), Value::String(pick("type", UNROUTABLE_TYPE)));
    for (k, v) in data {
        min.insert(k.into(), v);
    }
    if let Ok(ev) = Event::from_structured(Value::Object(min.clone())) {
        return ev;
    }
    let (id, source) = match (fallback_id.is_empty(), fallback_source.is_empty()) {
        (false, false) => (fallback_id, fallback_source),
        _ => ("unroutable", "/strait"),
    };
    min.insert("id".into(), Value::String(id.into()));
    min.insert("source".into(), Value::String(source.into()));
    min.insert("type".into(), Value::String(UNROUTABLE_TYPE.into()));
    Event::from_trusted(min)
}

/// The members of a JSON object, values as raw text (not checked deeper).
fn members_of(stored: &[u8]) -> Result<Vec<(String, Box<RawValue>)>, serde_json::Error> {
    let m: std::collections::BTreeMap<String, Box<RawValue>> = serde_json::from_slice(stored)?;
    Ok(m.into_iter().collect())
}

fn classify(e: &serde_json::Error, path: String) -> JsonError {
    let full = e.to_string();
    let detail = match full.rfind(" at line ") {
        Some(i) if e.line() > 0 => full[..i].to_string(),
        _ => full,
    };
    let kind = if detail.starts_with("recursion limit exceeded") {
        JsonErrorKind::TooDeep
    } else if detail.starts_with("number out of range") {
        JsonErrorKind::NumberOutOfRange
    } else if detail.contains("surrogate")
        || detail.starts_with("unexpected end of hex escape")
        || detail.starts_with("invalid unicode code point")
    {
        JsonErrorKind::LoneSurrogate
    } else {
        JsonErrorKind::Syntax
    };
    JsonError { path, kind, detail }
}

enum Seg {
    Key(String),
    Index(usize),
}

/// Path segments shown before `…` (a too-deep path is long).
const SHOWN_SEGMENTS: usize = 8;

fn render(segs: &[Seg]) -> String {
    let mut out = String::new();
    for (i, s) in segs.iter().enumerate() {
        if i == SHOWN_SEGMENTS {
            out.push('…');
            break;
        }
        match s {
            Seg::Key(k) if i == 0 => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Index(n) => out.push_str(&format!("[{n}]")),
        }
    }
    out
}

/// Walks one value with `deserialize_any`, as `Value` does, recording the
/// path to the value being read (left in place when reading fails).
#[derive(Clone, Copy)]
struct Walk<'p> {
    path: Option<&'p RefCell<Vec<Seg>>>,
}

impl Walk<'_> {
    fn push(&self, seg: impl FnOnce() -> Seg) {
        if let Some(p) = self.path {
            p.borrow_mut().push(seg());
        }
    }

    fn pop(&self) {
        if let Some(p) = self.path {
            p.borrow_mut().pop();
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A map key: read as a string (its escapes are checked), kept only when
/// the path is recorded.
struct Key {
    keep: bool,
}

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_any(self)
    }
}

impl Visitor<'_> for Key {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Option<String>, E> {
        Ok(self.keep.then(|| v.to_string()))
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            self.push(|| Seg::Index(i));
            let next = seq.next_element_seed(self)?;
            self.pop();
            if next.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let keep = self.path.is_some();
        while let Some(key) = map.next_key_seed(Key { keep })? {
            self.push(|| Seg::Key(key.unwrap_or_default()));
            map.next_value_seed(self)?;
            self.pop();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!(
            r#"{{"id":"a","data":{}1{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
    }

    #[test]
    fn depth_limit_is_the_parsers() {
        // The event object is level 1, so data may nest MAX_JSON_DEPTH - 1.
        let ok = nested(MAX_JSON_DEPTH - 1);
        assert!(serde_json::from_str::<Value>(&ok).is_ok());
        assert_eq!(check_event_json(ok.as_bytes()), Ok(()));
        let deep = nested(MAX_JSON_DEPTH);
        assert!(serde_json::from_str::<Value>(&deep).is_err());
        let e = check_event_json(deep.as_bytes()).expect_err("too deep");
        assert_eq!(e.kind, JsonErrorKind::TooDeep);
        assert_eq!(e.path, "data[0][0][0][0][0][0][0]…");
        assert_eq!(parse_event_json(deep.as_bytes()), Err(e));
    }

    #[test]
    fn errors_name_path_and_kind() {
        let cases = [
            (
                r#"{"data":{"n":1e400}}"#,
                "data.n",
                JsonErrorKind::NumberOutOfRange,
            ),
            (
                &format!(r#"{{"data":[1,{}]}}"#, "9".repeat(400)),
                "data[1]",
                JsonErrorKind::NumberOutOfRange,
            ),
            (r#"{"data":"\ud800"}"#, "data", JsonErrorKind::LoneSurrogate),
            (
                r#"{"data":"\udc00x"}"#,
                "data",
                JsonErrorKind::LoneSurrogate,
            ),
            (
                r#"{"data":{"\ud800":1}}"#,
                "data",
                JsonErrorKind::LoneSurrogate,
            ),
            (r#"{"data":1} x"#, "", JsonErrorKind::Syntax),
        ];
        for (text, path, kind) in cases {
            assert!(serde_json::from_str::<Value>(text).is_err(), "{text}");
            let e = check_event_json(text.as_bytes()).expect_err(text);
            assert_eq!((e.path.as_str(), e.kind), (path, kind), "{text}: {e}");
            assert!(!e.detail.contains(" at line "), "{}", e.detail);
            assert_eq!(parse_event_json(text.as_bytes()), Err(e));
        }
        let e = check_event_json(br#"{"data":{"n":1e400}}"#).expect_err("range");
        assert!(
            e.to_string()
                .starts_with("`data.n` holds a number out of range"),
            "{e}"
        );
    }

    #[test]
    fn accepts_what_value_accepts() {
        for text in [
            r#"{"data":"\ud83d\ude00","n":-0.0,"big":18446744073709551615,"f":1e308}"#,
            r#"{"a":[],"b":{},"c":null,"d":true,"e":"\u00e9\n"}"#,
            "[1, 2.5e-400, \"x\"]",
        ] {
            assert!(serde_json::from_str::<Value>(text).is_ok(), "{text}");
            assert_eq!(check_event_json(text.as_bytes()), Ok(()), "{text}");
        }
    }

    #[test]
    fn envelope_keeps_identity_and_text() {
        let stored = format!(
            r#"{{"specversion":"1.0","id":"e1","source":"/s","type":"t","myext":"x","data":{{"n":{}}}}}"#,
            "9".repeat(400)
        );
        let ev = unroutable_envelope(stored.as_bytes(), "fb", "/fb");
        assert_eq!((ev.id(), ev.source(), ev.event_type()), ("e1", "/s", "t"));
        assert_eq!(ev.str_attr("myext"), Some("x"));
        assert_eq!(ev.str_attr("data"), Some(stored.as_str()));
        assert_eq!(
            ev.str_attr("datacontenttype"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(check_event_json(&ev.to_json_bytes()), Ok(()));
        // Unreadable identity: the fallbacks.
        let ev = unroutable_envelope(br#"{"id":"\ud800","time":"no"}"#, "fb", "/fb");
        assert_eq!(
            (ev.id(), ev.source(), ev.event_type()),
            ("fb", "/fb", UNROUTABLE_TYPE)
        );
        let ev = unroutable_envelope(b"[1,", "fb", "/fb");
        assert_eq!(ev.id(), "fb");
        let ev = unroutable_envelope(b"{}", "", "");
        assert_eq!((ev.id(), ev.source()), ("unroutable", "/strait"));
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_value_parse(s in "[\\[\\]{}\",:0-9eE.+\\-\\\\u dabcnrt]{0,60}") {
            let value = serde_json::from_str::<Value>(&s).is_ok();
            proptest::prop_assert_eq!(check_event_json(s.as_bytes()).is_ok(), value, "{}", s);
        }
    }
}
