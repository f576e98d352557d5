//! CloudEvents with known payloads, in the forms producers send them.

use base64::Engine as _;
use rand::Rng;
use serde_json::{Map, Value, json};

/// The data of an event, remembered exactly so deliveries can be compared.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// `text/plain; charset=utf-8`, sent as a JSON string in `data`.
    Text(String),
    /// `application/octet-stream`, sent as `data_base64`.
    Binary(Vec<u8>),
    /// `application/json`, sent as the JSON value in `data`.
    Json(Value),
}

impl Payload {
    /// The `datacontenttype` it is sent with.
    pub fn content_type(&self) -> &'static str {
        match self {
            Payload::Text(_) => "text/plain; charset=utf-8",
            Payload::Binary(_) => "application/octet-stream",
            Payload::Json(_) => "application/json",
        }
    }

    /// The bytes a binary-mode delivery carries as its body.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Payload::Text(s) => s.as_bytes().to_vec(),
            Payload::Binary(b) => b.clone(),
            Payload::Json(v) => serde_json::to_vec(v).unwrap_or_default(),
        }
    }

    /// Does a delivered body (with its content type) carry this payload
    /// intact? JSON is compared as JSON (its serialisation may differ),
    /// everything else byte for byte.
    pub fn matches(&self, delivered: &[u8]) -> bool {
        match self {
            Payload::Json(v) => serde_json::from_slice::<Value>(delivered).is_ok_and(|d| &d == v),
            other => other.bytes() == delivered,
        }
    }

    /// A random payload of one of the three kinds, tagged with `id` so a
    /// payload delivered under the wrong id shows up as corruption.
    pub fn random(rng: &mut impl Rng, id: &str) -> Payload {
        match rng.random_range(0..3u8) {
            0 => {
                let len = rng.random_range(0..200usize);
                let body: String = (0..len)
                    .map(|_| {
                        // Mostly ASCII, some multi-byte characters.
                        match rng.random_range(0..20u8) {
                            0 => 'é',
                            1 => '漢',
                            2 => '🦀',
                            3 => ' ',
                            _ => char::from(rng.random_range(b'!'..=b'~')),
                        }
                    })
                    .collect();
                let sum = fnv1a(body.as_bytes());
                Payload::Text(format!("{id}|{sum:016x}|{body}"))
            }
            1 => {
                let len = rng.random_range(1..600usize);
                let mut b: Vec<u8> = id.as_bytes().to_vec();
                b.push(0);
                b.extend((0..len).map(|_| rng.random::<u8>()));
                Payload::Binary(b)
            }
            _ => {
                let n = rng.random_range(0..20usize);
                let values: Vec<u64> = (0..n).map(|_| rng.random_range(0..1_000_000u64)).collect();
                let sum: u64 = values.iter().sum();
                Payload::Json(json!({
                    "id": id,
                    "values": values,
                    "sum": sum,
                    "nested": {"flag": rng.random::<bool>(), "text": "quote \" backslash \\ tab \t"},
                }))
            }
        }
    }
}

/// FNV-1a, a checksum for payloads.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// An event a producer sends, remembered for the conservation check.
#[derive(Debug, Clone, PartialEq)]
pub struct SentEvent {
    /// `id`.
    pub id: String,
    /// `source`.
    pub source: String,
    /// `type`.
    pub event_type: String,
    /// The data.
    pub payload: Payload,
    /// Extension attributes (lowercase alphanumeric names), as strings.
    pub extensions: Vec<(String, String)>,
}

impl SentEvent {
    /// An event with no extensions.
    pub fn new(
        id: impl Into<String>,
        source: impl Into<String>,
        event_type: impl Into<String>,
        payload: Payload,
    ) -> Self {
        SentEvent {
            id: id.into(),
            source: source.into(),
            event_type: event_type.into(),
            payload,
            extensions: Vec::new(),
        }
    }

    /// The JSON (structured mode) form.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("specversion".into(), json!("1.0"));
        m.insert("id".into(), json!(self.id));
        m.insert("source".into(), json!(self.source));
        m.insert("type".into(), json!(self.event_type));
        m.insert("datacontenttype".into(), json!(self.payload.content_type()));
        for (k, v) in &self.extensions {
            m.insert(k.clone(), json!(v));
        }
        match &self.payload {
            Payload::Text(s) => {
                m.insert("data".into(), json!(s));
            }
            Payload::Binary(b) => {
                m.insert(
                    "data_base64".into(),
                    json!(base64::engine::general_purpose::STANDARD.encode(b)),
                );
            }
            Payload::Json(v) => {
                m.insert("data".into(), v.clone());
            }
        }
        Value::Object(m)
    }

    /// `ce-*` headers for binary mode (values percent-encoded), without
    /// `Content-Type`.
    pub fn binary_headers(&self) -> Vec<(String, String)> {
        let mut h = vec![
            ("ce-specversion".to_string(), "1.0".to_string()),
            ("ce-id".to_string(), percent_encode(&self.id)),
            ("ce-source".to_string(), percent_encode(&self.source)),
            ("ce-type".to_string(), percent_encode(&self.event_type)),
        ];
        for (k, v) in &self.extensions {
            h.push((format!("ce-{k}"), percent_encode(v)));
        }
        h
    }
}

/// A minimal structured event with JSON data.
pub fn event(id: &str, source: &str, event_type: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": source,
        "type": event_type,
        "datacontenttype": "application/json",
        "data": data,
    })
}

/// Percent-encode a header value the way the CloudEvents HTTP binding asks:
/// space, `"`, `%` and everything outside printable ASCII.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode `%XX` escapes (invalid escapes are kept as they are; invalid UTF-8
/// is replaced).
pub fn percent_decode(value: &[u8]) -> String {
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%'
            && i + 2 < value.len()
            && let (Some(h), Some(l)) = (hex(value[i + 1]), hex(value[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(value[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn percent_round_trip() {
        let s = "a b\"c%d é🦀";
        assert_eq!(percent_decode(percent_encode(s).as_bytes()), s);
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(percent_decode(b"%4"), "%4");
        assert_eq!(percent_decode(b"%41"), "A");
    }

    #[test]
    fn payloads_match_their_own_bytes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for i in 0..100 {
            let p = Payload::random(&mut rng, &format!("e{i}"));
            assert!(p.matches(&p.bytes()));
            let mut other = p.bytes();
            other.push(b'x');
            assert!(!p.matches(&other));
        }
    }
}
