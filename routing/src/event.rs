//! The CloudEvents 1.0 event model.
//!
//! An [`Event`] is kept in its JSON structured form (the form Strait stores,
//! routes and replicates). Constructors validate the required context
//! attributes and every optional one they recognise; the errors name the
//! attribute and what is wrong with it.

use base64::Engine as _;
use serde_json::{Map, Value};

/// The only CloudEvents spec version Strait accepts.
pub const SPEC_VERSION: &str = "1.0";

/// Context attributes defined by the CloudEvents 1.0 core spec.
pub const CORE_ATTRIBUTES: &[&str] = &[
    "id",
    "source",
    "specversion",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
];

/// Why an event was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The body or event is not a JSON object.
    #[error("{0}")]
    Malformed(String),
    /// A required attribute is absent.
    #[error("required attribute `{0}` is missing")]
    Missing(&'static str),
    /// An attribute is present but its value is not allowed.
    #[error("attribute `{attr}` {reason}")]
    Invalid {
        /// The attribute name.
        attr: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// The `specversion` is not 1.0.
    #[error("attribute `specversion` must be \"1.0\", got {0}")]
    SpecVersion(String),
}

impl EventError {
    /// A stable machine-readable code for API responses.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::Malformed(_) => "MalformedEvent",
            EventError::Missing(_) => "MissingAttribute",
            EventError::Invalid { .. } => "InvalidAttribute",
            EventError::SpecVersion(_) => "UnsupportedSpecVersion",
        }
    }

    fn invalid(attr: &str, reason: impl Into<String>) -> Self {
        EventError::Invalid {
            attr: attr.to_string(),
            reason: reason.into(),
        }
    }
}

/// A validated CloudEvent in JSON structured form.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    attrs: Map<String, Value>,
}

/// The data of an event as it travels in an HTTP body (binary content mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryData {
    /// The body bytes.
    pub body: Vec<u8>,
    /// The `Content-Type` to send with it, if any.
    pub content_type: Option<String>,
}

/// Is this media type JSON (`application/json`, `text/json` or `+json`)?
pub fn is_json_media_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

fn is_text_media_type(ct: &str) -> bool {
    let lower = ct.to_ascii_lowercase();
    let essence = lower.split(';').next().unwrap_or("").trim();
    essence.starts_with("text/")
        || essence.ends_with("+xml")
        || essence == "application/xml"
        || lower.contains("charset=")
}

fn valid_extension_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl Event {
    /// Validate a JSON value in structured form.
    pub fn from_structured(value: Value) -> Result<Event, EventError> {
        match value {
            Value::Object(map) => Self::from_map(map),
            other => Err(EventError::Malformed(format!(
                "an event must be a JSON object, got {}",
                json_kind(&other)
            ))),
        }
    }

    /// Wrap attributes without checking them: only for events built here
    /// from constants known to be valid.
    pub(crate) fn from_trusted(attrs: Map<String, Value>) -> Event {
        Event { attrs }
    }

    /// Parse and validate one structured-mode event from JSON bytes.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Event, EventError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| EventError::Malformed(format!("body is not valid JSON: {e}")))?;
        Self::from_structured(value)
    }

    /// Build an event from binary content mode: the `ce-` attributes
    /// (names without the prefix, values already percent-decoded), the
    /// `Content-Type` of the body and the body.
    pub fn from_binary(
        attributes: Vec<(String, String)>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Event, EventError> {
        let mut map = Map::new();
        for (name, value) in attributes {
            let name = name.to_ascii_lowercase();
            if name == "data" || name == "data_base64" || name == "datacontenttype" {
                return Err(EventError::invalid(
                    &name,
                    "cannot be sent as a ce- header in binary mode",
                ));
            }
            map.insert(name, Value::String(value));
        }
        if let Some(ct) = content_type {
            map.insert("datacontenttype".into(), Value::String(ct.to_string()));
        }
        if !body.is_empty() {
            let data = match content_type {
                Some(ct) if is_json_media_type(ct) => {
                    let v: Value = serde_json::from_slice(body).map_err(|e| {
                        EventError::invalid(
                            "data",
                            format!("is declared as JSON ({ct}) but does not parse: {e}"),
                        )
                    })?;
                    ("data", v)
                }
                Some(ct) if is_text_media_type(ct) => match std::str::from_utf8(body) {
                    Ok(s) => ("data", Value::String(s.to_string())),
                    Err(_) => ("data_base64", Value::String(b64(body))),
                },
                Some(_) => ("data_base64", Value::String(b64(body))),
                None => match serde_json::from_slice::<Value>(body) {
                    Ok(v) => ("data", v),
                    Err(_) => ("data_base64", Value::String(b64(body))),
                },
            };
            map.insert(data.0.into(), data.1);
        }
        Self::from_map(map)
    }

    fn from_map(mut map: Map<String, Value>) -> Result<Event, EventError> {
        // A null attribute is the same as an absent one.
        map.retain(|_, v| !v.is_null());
        match map.get("specversion") {
            None => return Err(EventError::Missing("specversion")),
            Some(Value::String(s)) if s == SPEC_VERSION => {}
            Some(other) => return Err(EventError::SpecVersion(other.to_string())),
        }
        for attr in ["id", "source", "type"] {
            match map.get(attr) {
                None => {
                    return Err(EventError::Missing(match attr {
                        "id" => "id",
                        "source" => "source",
                        _ => "type",
                    }));
                }
                Some(Value::String(s)) if !s.is_empty() => {}
                Some(Value::String(_)) => {
                    return Err(EventError::invalid(attr, "must not be empty"));
                }
                Some(other) => {
                    return Err(EventError::invalid(
                        attr,
                        format!("must be a string, got {}", json_kind(other)),
                    ));
                }
            }
        }
        for attr in ["datacontenttype", "dataschema", "subject", "time"] {
            match map.get(attr) {
                None | Some(Value::String(_)) => {}
                Some(other) => {
                    return Err(EventError::invalid(
                        attr,
                        format!("must be a string, got {}", json_kind(other)),
                    ));
                }
            }
        }
        if let Some(Value::String(t)) = map.get("time")
            && chrono::DateTime::parse_from_rfc3339(t).is_err()
        {
            return Err(EventError::invalid(
                "time",
                format!("must be an RFC 3339 timestamp, got {t:?}"),
            ));
        }
        if let Some(Value::String(s)) = map.get("dataschema")
            && s.is_empty()
        {
            return Err(EventError::invalid("dataschema", "must not be empty"));
        }
        if map.contains_key("data") && map.contains_key("data_base64") {
            return Err(EventError::invalid(
                "data_base64",
                "must not be present together with `data`",
            ));
        }
        if let Some(v) = map.get("data_base64") {
            match v {
                Value::String(s) => {
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|e| {
                            EventError::invalid("data_base64", format!("is not valid base64: {e}"))
                        })?;
                }
                other => {
                    return Err(EventError::invalid(
                        "data_base64",
                        format!("must be a base64 string, got {}", json_kind(other)),
                    ));
                }
            }
        }
        for (name, value) in &map {
            if CORE_ATTRIBUTES.contains(&name.as_str()) || name == "data" || name == "data_base64" {
                continue;
            }
            if !valid_extension_name(name) {
                return Err(EventError::invalid(
                    name,
                    "is not a valid extension name (only lowercase a-z and 0-9, at most 64 characters)",
                ));
            }
            match value {
                Value::String(_) | Value::Bool(_) => {}
                Value::Number(n) if n.is_i64() || n.is_u64() => {}
                other => {
                    return Err(EventError::invalid(
                        name,
                        format!(
                            "extension values must be a string, integer or boolean, got {}",
                            json_kind(other)
                        ),
                    ));
                }
            }
        }
        Ok(Event { attrs: map })
    }

    /// A string attribute, if present.
    pub fn str_attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).and_then(Value::as_str)
    }

    /// The event id.
    pub fn id(&self) -> &str {
        self.str_attr("id").unwrap_or_default()
    }

    /// The event source.
    pub fn source(&self) -> &str {
        self.str_attr("source").unwrap_or_default()
    }

    /// The event type.
    pub fn event_type(&self) -> &str {
        self.str_attr("type").unwrap_or_default()
    }

    /// Any attribute, data included.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.attrs.get(name)
    }

    /// Set (or replace) an extension attribute. Names are not re-validated:
    /// callers use fixed, valid names.
    pub fn set_attr(&mut self, name: &str, value: Value) {
        self.attrs.insert(name.to_string(), value);
    }

    /// Remove an attribute (or `data`), returning it.
    pub fn remove_attr(&mut self, name: &str) -> Option<Value> {
        self.attrs.shift_remove(name)
    }

    /// The structured JSON form.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.attrs
    }

    /// The structured JSON form as a value (cloned).
    pub fn to_value(&self) -> Value {
        Value::Object(self.attrs.clone())
    }

    /// The structured JSON form, consumed.
    pub fn into_value(self) -> Value {
        Value::Object(self.attrs)
    }

    /// Serialized structured form.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.attrs).unwrap_or_default()
    }

    /// Replace the data with a JSON value or a text, as a transform does.
    pub fn replace_data(&mut self, data: Value, content_type: &str) {
        self.attrs.remove("data_base64");
        self.attrs.insert("data".into(), data);
        self.attrs
            .insert("datacontenttype".into(), Value::String(content_type.into()));
    }

    /// The body and content type for binary content mode.
    pub fn binary_data(&self) -> BinaryData {
        let content_type = self.str_attr("datacontenttype").map(str::to_string);
        if let Some(Value::String(s)) = self.attrs.get("data_base64") {
            let body = base64::engine::general_purpose::STANDARD
                .decode(s)
                .unwrap_or_default();
            return BinaryData { body, content_type };
        }
        match self.attrs.get("data") {
            None => BinaryData {
                body: Vec::new(),
                content_type,
            },
            Some(Value::String(s))
                if content_type
                    .as_deref()
                    .is_some_and(|ct| !is_json_media_type(ct)) =>
            {
                BinaryData {
                    body: s.as_bytes().to_vec(),
                    content_type,
                }
            }
            Some(v) => BinaryData {
                body: serde_json::to_vec(v).unwrap_or_default(),
                content_type: Some(content_type.unwrap_or_else(|| "application/json".into())),
            },
        }
    }

    /// Context attributes (everything but data) rendered as strings, the way
    /// binary mode carries them in `ce-` headers.
    pub fn header_attributes(&self) -> Vec<(String, String)> {
        self.attrs
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "data" | "data_base64" | "datacontenttype"))
            .map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), s)
            })
            .collect()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A short name for a JSON value's kind, for error messages.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Percent-encode a header value as the CloudEvents HTTP binding asks
/// (space, `"`, `%` and anything outside printable ASCII).
pub fn percent_encode_header(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode a percent-encoded header value; invalid escapes are kept as they are.
pub fn percent_decode_header(value: &[u8]) -> Result<String, EventError> {
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
    String::from_utf8(out).map_err(|_| {
        EventError::Malformed("a ce- header is not valid UTF-8 after percent-decoding".into())
    })
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"})
    }

    #[test]
    fn accepts_minimal_event() {
        let e = Event::from_structured(base()).expect("valid");
        assert_eq!(e.id(), "1");
        assert_eq!(e.source(), "/s");
    }

    #[test]
    fn names_missing_attribute() {
        let mut v = base();
        v.as_object_mut().map(|m| m.remove("source"));
        let err = Event::from_structured(v).expect_err("missing");
        assert_eq!(err.to_string(), "required attribute `source` is missing");
    }

    #[test]
    fn rejects_wrong_specversion() {
        let mut v = base();
        v["specversion"] = json!("0.3");
        let err = Event::from_structured(v).expect_err("bad version");
        assert_eq!(err.code(), "UnsupportedSpecVersion");
    }

    #[test]
    fn rejects_bad_time_and_extension() {
        let mut v = base();
        v["time"] = json!("yesterday");
        assert!(
            Event::from_structured(v)
                .expect_err("time")
                .to_string()
                .contains("time")
        );
        let mut v = base();
        v["Bad-Name"] = json!("x");
        assert!(
            Event::from_structured(v)
                .expect_err("ext")
                .to_string()
                .contains("Bad-Name")
        );
        let mut v = base();
        v["ext"] = json!({"a": 1});
        assert!(Event::from_structured(v).is_err());
    }

    #[test]
    fn binary_round_trip_keeps_bytes() {
        let body = vec![0u8, 159, 146, 150, 255];
        let e = Event::from_binary(
            vec![
                ("specversion".into(), "1.0".into()),
                ("id".into(), "b".into()),
                ("source".into(), "/x".into()),
                ("type".into(), "t".into()),
            ],
            Some("application/octet-stream"),
            &body,
        )
        .expect("valid");
        assert!(e.get("data_base64").is_some());
        assert_eq!(e.binary_data().body, body);
        let text = "héllo wörld ✓";
        let e = Event::from_binary(
            vec![
                ("specversion".into(), "1.0".into()),
                ("id".into(), "c".into()),
                ("source".into(), "/x".into()),
                ("type".into(), "t".into()),
            ],
            Some("text/plain; charset=utf-8"),
            text.as_bytes(),
        )
        .expect("valid");
        assert_eq!(e.binary_data().body, text.as_bytes());
    }

    #[test]
    fn percent_coding_round_trips() {
        let s = "a b\"c%d é";
        let enc = percent_encode_header(s);
        assert!(!enc.contains(' '));
        assert_eq!(percent_decode_header(enc.as_bytes()).expect("decode"), s);
        assert_eq!(percent_decode_header(b"100%").expect("decode"), "100%");
    }
}
