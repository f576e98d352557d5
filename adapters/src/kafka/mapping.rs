//! The CloudEvents Kafka protocol binding, pure (no I/O): a Kafka record
//! to a CloudEvent ([`to_cloudevent`]) and a CloudEvent to a Kafka record
//! ([`to_record`]).
//!
//! Reading, by the binding:
//! - binary mode: a `ce_specversion` header; each `ce_<attr>` header is an
//!   attribute (header values are UTF-8), `content-type` is
//!   `datacontenttype`, the record's value is the data;
//! - structured mode: `content-type: application/cloudevents+json`, or no
//!   `content-type` and a JSON object value with `specversion` (what a
//!   producer that sets no headers writes);
//! - the record's key, when it has one and the event no `partitionkey`,
//!   becomes the `partitionkey` extension (the binding's key mapping);
//! - anything else is wrapped: `source` is the broker URI and the topic,
//!   `type` the source's `eventType`, `id` `<topic>:<partition>:<offset>`
//!   (re-reading the record gives the same id, so the node drops it as a
//!   duplicate), `time` the record's timestamp; or, when the source refuses
//!   plain records ([`Wrap::refuse`]), an error.
//!
//! Writing is binary mode: the attributes as `ce_<attr>` headers, the data
//! as the value, `datacontenttype` as `content-type`, and the key the
//! `partitionkey` extension (or what the target's `key` selects).

use serde_json::{Value, json};
use strait_routing::event::Event;

/// The `content-type` of structured mode.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// The extension the record key maps to.
pub const PARTITION_KEY: &str = "partitionkey";

/// A Kafka record as the mapping sees it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// Its topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its key, if any.
    pub key: Option<&'a [u8]>,
    /// Its headers (name, value), in order.
    pub headers: &'a [(String, Vec<u8>)],
    /// Its value (`None`: a tombstone).
    pub value: Option<&'a [u8]>,
    /// Its timestamp, ms since the epoch, when it has one.
    pub timestamp_ms: Option<i64>,
}

/// The deterministic id of a record: `<topic>:<partition>:<offset>`.
pub fn record_id(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}:{partition}:{offset}")
}

impl Incoming<'_> {
    /// [`record_id`] of this record.
    pub fn id(&self) -> String {
        record_id(self.topic, self.partition, self.offset)
    }
}

/// How a record that is not a CloudEvent is handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrap {
    /// The broker URI (`kafka://host:port`), the prefix of wrapped sources.
    pub broker: String,
    /// The `type` of wrapped events.
    pub event_type: String,
    /// Refuse such records (an error) instead of wrapping them.
    pub refuse: bool,
}

/// Why a record is not an event this source takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{mode} mode: {reason}")]
pub struct MappingError {
    /// `binary`, `structured` or `plain` (a record that is not a
    /// CloudEvent, refused).
    pub mode: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .rev()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

fn is_structured(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case(STRUCTURED_CONTENT_TYPE))
}

/// Whether `value` looks like a structured event without saying so (a JSON
/// object with `specversion`).
fn looks_structured(value: &[u8]) -> bool {
    value.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
        && serde_json::from_slice::<Value>(value).is_ok_and(|v| v.get("specversion").is_some())
}

fn utf8<'a>(mode: &'static str, what: &str, bytes: &'a [u8]) -> Result<&'a str, MappingError> {
    std::str::from_utf8(bytes).map_err(|_| MappingError {
        mode,
        reason: format!("{what} is not UTF-8"),
    })
}

/// Add the record key as `partitionkey` to `event` when it has none (and
/// the key is text).
fn with_key(mut event: Value, key: Option<&[u8]>) -> Value {
    if let (Some(k), Some(obj)) = (
        key.and_then(|k| std::str::from_utf8(k).ok()),
        event.as_object_mut(),
    ) && !k.is_empty()
        && !obj.contains_key(PARTITION_KEY)
    {
        obj.insert(PARTITION_KEY.into(), Value::String(k.to_string()));
    }
    event
}

/// The CloudEvent of a Kafka record (structured JSON form), by the
/// binding; a record that is not a CloudEvent is wrapped or refused as
/// `wrap` says (see the module). Pure.
pub fn to_cloudevent(msg: &Incoming<'_>, wrap: &Wrap) -> Result<Value, MappingError> {
    let value = msg.value.unwrap_or_default();
    let content_type = match header(msg.headers, "content-type") {
        Some(ct) => Some(utf8("binary", "the content-type header", ct)?),
        None => None,
    };
    if header(msg.headers, "ce_specversion").is_some() {
        let mut attrs = Vec::new();
        for (k, v) in msg.headers {
            let lower = k.to_ascii_lowercase();
            if let Some(attr) = lower.strip_prefix("ce_") {
                let v = utf8("binary", &format!("header {k}"), v)?;
                attrs.push((attr.to_string(), v.to_string()));
            }
        }
        return Event::from_binary(attrs, content_type, value)
            .map(|e| with_key(e.into_value(), msg.key))
            .map_err(|e| MappingError {
                mode: "binary",
                reason: format!("not a valid CloudEvent: {e}"),
            });
    }
    if content_type.is_some_and(is_structured)
        || (content_type.is_none() && looks_structured(value))
    {
        return Event::from_json_bytes(value)
            .map(|e| with_key(e.into_value(), msg.key))
            .map_err(|e| MappingError {
                mode: "structured",
                reason: format!("not a valid CloudEvent: {e}"),
            });
    }
    if wrap.refuse {
        return Err(MappingError {
            mode: "plain",
            reason: "the record is not a CloudEvent and this source refuses those \
                     (nonCloudEvents: reject)"
                .into(),
        });
    }
    Ok(with_key(wrap_record(msg, wrap, content_type), msg.key))
}

/// A record that is not a CloudEvent as one: its value as the data (JSON as
/// JSON, text as a string, else base64), as `content-type` says.
fn wrap_record(msg: &Incoming<'_>, wrap: &Wrap, content_type: Option<&str>) -> Value {
    let mut attrs = vec![
        ("specversion".to_string(), "1.0".to_string()),
        ("id".to_string(), msg.id()),
        (
            "source".to_string(),
            format!("{}/{}", wrap.broker.trim_end_matches('/'), msg.topic),
        ),
        ("type".to_string(), wrap.event_type.clone()),
    ];
    if let Some(t) = msg
        .timestamp_ms
        .and_then(chrono::DateTime::from_timestamp_millis)
    {
        attrs.push((
            "time".to_string(),
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ));
    }
    let value = msg.value.unwrap_or_default();
    // A value its content type does not describe (JSON that does not
    // parse) is kept as bytes.
    Event::from_binary(attrs.clone(), content_type, value)
        .or_else(|_| Event::from_binary(attrs.clone(), Some("application/octet-stream"), value))
        .map(Event::into_value)
        .unwrap_or_else(|_| {
            // Unreachable with the attributes above (all valid).
            let mut v = json!({});
            for (k, val) in attrs {
                v[k] = Value::String(val);
            }
            v
        })
}

/// A Kafka record to produce: key, headers and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The key (`partitionkey`, or what the target selects).
    pub key: Option<Vec<u8>>,
    /// Headers: `ce_<attr>` and `content-type`.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The value.
    pub value: Vec<u8>,
}

/// The Kafka record of `event`, binary mode (see the module); `key`
/// overrides the `partitionkey` extension as the record key. Pure.
pub fn to_record(event: &Event, key: Option<String>) -> Outgoing {
    let data = event.binary_data();
    let mut headers: Vec<(String, Vec<u8>)> = event
        .header_attributes()
        .into_iter()
        .map(|(k, v)| (format!("ce_{k}"), v.into_bytes()))
        .collect();
    if let Some(ct) = data.content_type {
        headers.push(("content-type".into(), ct.into_bytes()));
    }
    let key = key.or_else(|| event.str_attr(PARTITION_KEY).map(str::to_string));
    Outgoing {
        key: key.map(String::into_bytes),
        headers,
        value: data.body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn wrap() -> Wrap {
        Wrap {
            broker: "kafka://127.0.0.1:9092".into(),
            event_type: "org.apache.kafka.record".into(),
            refuse: false,
        }
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn rec<'a>(
        headers: &'a [(String, Vec<u8>)],
        key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
    ) -> Incoming<'a> {
        Incoming {
            topic: "orders",
            partition: 2,
            offset: 41,
            key,
            headers,
            value,
            timestamp_ms: Some(1_700_000_000_123),
        }
    }

    #[test]
    fn binary_mode_headers_are_the_attributes_and_the_key_the_partition_key() {
        let headers = h(&[
            ("ce_specversion", "1.0"),
            ("ce_id", "e1"),
            ("ce_source", "/orders"),
            ("ce_type", "order.created"),
            ("ce_myext", "x y"),
            ("content-type", "application/json"),
            ("other", "ignored"),
        ]);
        let v = to_cloudevent(&rec(&headers, Some(b"k1"), Some(br#"{"n":1}"#)), &wrap())
            .expect("valid");
        assert_eq!(
            v,
            json!({"specversion": "1.0", "id": "e1", "source": "/orders", "type": "order.created",
                   "myext": "x y", "datacontenttype": "application/json", "data": {"n": 1},
                   "partitionkey": "k1"})
        );
        // An explicit partitionkey wins over the record key.
        let mut headers = headers;
        headers.push(("ce_partitionkey".into(), b"p".to_vec()));
        let v = to_cloudevent(&rec(&headers, Some(b"k1"), Some(b"{}")), &wrap()).expect("valid");
        assert_eq!(v["partitionkey"], "p");
    }

    #[test]
    fn structured_mode_by_content_type_or_shape() {
        let ev =
            json!({"specversion": "1.0", "id": "s1", "source": "/s", "type": "t", "data": "hi"});
        let value = serde_json::to_vec(&ev).expect("json");
        let headers = h(&[(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )]);
        for headers in [&headers[..], &[]] {
            assert_eq!(
                to_cloudevent(&rec(headers, None, Some(&value)), &wrap()).expect("valid"),
                ev
            );
        }
    }

    #[test]
    fn an_invalid_cloudevent_is_an_error_naming_the_mode() {
        let headers = h(&[("ce_specversion", "1.0"), ("ce_id", "x")]);
        let e = to_cloudevent(&rec(&headers, None, None), &wrap()).expect_err("no source");
        assert_eq!(e.mode, "binary");
        assert!(e.to_string().contains("source"), "{e}");
        let headers = h(&[("content-type", "application/cloudevents+json")]);
        let e = to_cloudevent(&rec(&headers, None, Some(b"not json")), &wrap()).expect_err("bad");
        assert_eq!(e.mode, "structured");
        let headers = vec![
            ("ce_specversion".to_string(), b"1.0".to_vec()),
            ("ce_id".to_string(), vec![0xff, 0xfe]),
        ];
        let e = to_cloudevent(&rec(&headers, None, None), &wrap()).expect_err("not utf-8");
        assert!(e.reason.contains("ce_id"), "{e}");
    }

    #[test]
    fn other_records_are_wrapped_with_a_deterministic_id_or_refused() {
        let v =
            to_cloudevent(&rec(&[], Some(b"sensor-1"), Some(b"21.5 C")), &wrap()).expect("wrapped");
        assert_eq!(
            v,
            json!({"specversion": "1.0", "id": "orders:2:41",
                   "source": "kafka://127.0.0.1:9092/orders",
                   "type": "org.apache.kafka.record", "time": "2023-11-14T22:13:20.123Z",
                   "data_base64": "MjEuNSBD", "partitionkey": "sensor-1"})
        );
        let headers = h(&[("content-type", "application/json")]);
        let v = to_cloudevent(&rec(&headers, None, Some(b"{broken")), &wrap()).expect("wrapped");
        assert_eq!(v["datacontenttype"], "application/octet-stream");
        assert_eq!(v["data_base64"], "e2Jyb2tlbg==");
        let v = to_cloudevent(&rec(&headers, None, Some(br#"{"a":1}"#)), &wrap()).expect("json");
        assert_eq!(v["data"], json!({"a": 1}));
        // A tombstone is an event without data.
        let v = to_cloudevent(&rec(&[], None, None), &wrap()).expect("tombstone");
        assert!(
            v.get("data").is_none() && v.get("data_base64").is_none(),
            "{v}"
        );
        let refuse = Wrap {
            refuse: true,
            ..wrap()
        };
        let e = to_cloudevent(&rec(&[], None, Some(b"x")), &refuse).expect_err("refused");
        assert_eq!(e.mode, "plain");
    }

    #[test]
    fn events_are_written_in_binary_mode_with_the_partition_key_as_key() {
        let ev = Event::from_structured(json!({"specversion": "1.0", "id": "1", "source": "/s",
            "type": "t", "partitionkey": "pk", "data": {"k": 2}}))
        .expect("valid");
        let out = to_record(&ev, None);
        assert!(out.headers.contains(&("ce_id".into(), b"1".to_vec())));
        assert!(
            out.headers
                .contains(&("content-type".into(), b"application/json".to_vec()))
        );
        assert_eq!(out.value, br#"{"k":2}"#);
        assert_eq!(out.key.as_deref(), Some(&b"pk"[..]));
        assert_eq!(
            to_record(&ev, Some("other".into())).key.as_deref(),
            Some(&b"other"[..])
        );
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9]{0,10}".prop_filter("not a core attribute", |n| {
            !matches!(
                n.as_str(),
                "id" | "source"
                    | "type"
                    | "specversion"
                    | "data"
                    | "datacontenttype"
                    | "dataschema"
                    | "subject"
                    | "time"
            )
        })
    }

    proptest! {
        /// What the target writes, the source reads back as the same event
        /// (the key coming back as `partitionkey`).
        #[test]
        fn binary_mode_round_trips(
            id in "[ -~]{1,40}",
            source in "[!-~]{1,40}",
            ty in "[a-z.]{1,20}",
            ext in proptest::collection::btree_map(name(), "[ -~]{0,20}", 0..4),
            data in prop_oneof![
                any::<i64>().prop_map(|n| (json!({"n": n}), "application/json")),
                "[ -~]{1,30}".prop_map(|s| (json!(s), "text/plain")),
            ],
        ) {
            let mut v = json!({"specversion": "1.0", "id": id, "source": source, "type": ty,
                "datacontenttype": data.1, "data": data.0});
            for (k, val) in &ext { v[k] = json!(val); }
            let ev = Event::from_structured(v.clone()).expect("valid");
            let out = to_record(&ev, None);
            let msg = Incoming { topic: "t", partition: 0, offset: 0, key: out.key.as_deref(),
                headers: &out.headers, value: Some(&out.value), timestamp_ms: None };
            let back = to_cloudevent(&msg, &wrap()).expect("valid");
            prop_assert_eq!(back, v);
        }

        /// Any record without CloudEvents headers and not shaped like one
        /// becomes a valid event whose id is its topic, partition and offset.
        #[test]
        fn wrapping_is_deterministic(
            value in proptest::collection::vec(any::<u8>(), 0..200),
            key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
            ct in proptest::option::of(prop_oneof![
                Just("application/json"), Just("text/plain"), Just("application/octet-stream")]),
            partition in 0..1000i32,
            offset in 0..i64::MAX,
            ts in proptest::option::of(0..4_000_000_000_000i64),
        ) {
            prop_assume!(!looks_structured(&value));
            let headers: Vec<(String, Vec<u8>)> =
                ct.iter().map(|c| ("content-type".to_string(), c.as_bytes().to_vec())).collect();
            let msg = Incoming { topic: "a.b", partition, offset, key: key.as_deref(),
                headers: &headers, value: Some(&value), timestamp_ms: ts };
            let a = to_cloudevent(&msg, &wrap()).expect("wrapped");
            let b = to_cloudevent(&msg, &wrap()).expect("wrapped");
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(&a["id"], &json!(format!("a.b:{partition}:{offset}")));
            prop_assert!(Event::from_structured(a).is_ok());
        }
    }
}
