//! The CloudEvents MQTT protocol binding, pure (no I/O): an MQTT PUBLISH
//! to a CloudEvent ([`to_cloudevent`]) and a CloudEvent to an MQTT PUBLISH
//! ([`to_message`]).
//!
//! Reading, by the binding:
//! - MQTT 5 binary mode: a `specversion` user property; each user property
//!   whose name is a CloudEvents attribute name (lowercase `a-z 0-9`) is an
//!   attribute (the first of repeated names counts; other user properties
//!   are left out), the PUBLISH's Content Type is `datacontenttype` and the
//!   payload is the data;
//! - structured mode: a Content Type of `application/cloudevents+json`
//!   (MQTT 5), or no content type and a JSON object payload with
//!   `specversion` (MQTT 3.1.1 has no properties: structured is its only
//!   mode);
//! - anything else is wrapped: `source` is the broker URI and the topic,
//!   `type` the source's `eventType`, `id` the one the caller gives
//!   ([`message_id`] for a QoS 1 message, so that the broker's redelivery
//!   of it gets the same id and is dropped as a duplicate).
//!
//! Writing is binary mode on MQTT 5 (the attributes as user properties,
//! `datacontenttype` as the Content Type, the data as the payload) and
//! structured mode on MQTT 3.1.1 (the event's JSON as the payload).

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use strait_routing::event::Event;

/// The content type of structured mode.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// The MQTT protocol version spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// MQTT 5.0: properties, so binary mode.
    #[default]
    V5,
    /// MQTT 3.1.1: no properties, structured mode only.
    V311,
}

impl Protocol {
    /// The name in a definition (`v5`, `v3.1.1`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::V5 => "v5",
            Protocol::V311 => "v3.1.1",
        }
    }

    /// The protocol named `s` in a definition.
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "v5" | "5" | "5.0" => Some(Protocol::V5),
            "v3.1.1" | "3.1.1" | "v311" => Some(Protocol::V311),
            _ => None,
        }
    }
}

/// An MQTT PUBLISH as the mapping sees it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The topic it was published to.
    pub topic: &'a str,
    /// Its Content Type property (MQTT 5).
    pub content_type: Option<&'a str>,
    /// Its user properties (MQTT 5), in order.
    pub user_properties: &'a [(String, String)],
    /// Its payload.
    pub payload: &'a [u8],
}

/// How a message that is not a CloudEvent is wrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrap {
    /// The broker URI without credentials (`mqtt://host:port`).
    pub broker: String,
    /// The `type` of wrapped events.
    pub event_type: String,
}

/// Why a message that says it is a CloudEvent is not a valid one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{mode} mode CloudEvent is not valid: {reason}")]
pub struct MappingError {
    /// `binary` or `structured`.
    pub mode: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// How a message was read: a CloudEvent it carries, or a wrapped one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Binary mode (MQTT 5 user properties).
    Binary,
    /// Structured mode.
    Structured,
    /// Not a CloudEvent.
    Plain,
}

/// Whether `name` can be a CloudEvents attribute (lowercase `a-z 0-9`).
fn is_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn is_structured(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case(STRUCTURED_CONTENT_TYPE))
}

/// Whether `payload` looks like a structured event without saying so (a
/// JSON object with `specversion`).
fn looks_structured(payload: &[u8]) -> bool {
    payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
        && serde_json::from_slice::<Value>(payload).is_ok_and(|v| v.get("specversion").is_some())
}

/// How `msg` is read (see the module).
pub fn mode(msg: &Incoming<'_>) -> Mode {
    if msg.user_properties.iter().any(|(k, _)| k == "specversion") {
        Mode::Binary
    } else if msg.content_type.is_some_and(is_structured)
        || (msg.content_type.is_none() && looks_structured(msg.payload))
    {
        Mode::Structured
    } else {
        Mode::Plain
    }
}

/// The id of a QoS 1 message that is not a CloudEvent: a hash (SHA-256,
/// the first 128 bits in hex) of its topic, packet identifier, content
/// type, user properties and payload. The broker resends an unacknowledged
/// message with its original packet identifier, so a redelivery gets the
/// same id; two messages equal in all of these (the same payload on the
/// same topic, which the broker happened to send under the same packet
/// identifier, as the identifiers cycle through 65535 values) get the same
/// id too, and the second is dropped as a duplicate within the dedup
/// window. Pure.
pub fn message_id(msg: &Incoming<'_>, packet_id: u16) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(msg.topic.as_bytes());
    field(&packet_id.to_be_bytes());
    field(msg.content_type.unwrap_or_default().as_bytes());
    field(&[u8::from(msg.content_type.is_some())]);
    for (k, v) in msg.user_properties {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    field(msg.payload);
    hex::encode(&h.finalize()[..16])
}

/// The CloudEvent of an MQTT message (structured JSON form), by the
/// binding; a message that is not a CloudEvent is wrapped with the id `id`
/// (see the module). Pure.
pub fn to_cloudevent(msg: &Incoming<'_>, id: &str, wrap: &Wrap) -> Result<Value, MappingError> {
    match mode(msg) {
        Mode::Binary => {
            let mut attrs: Vec<(String, String)> = Vec::new();
            for (k, v) in msg.user_properties {
                if is_attribute_name(k)
                    && !matches!(k.as_str(), "datacontenttype" | "data")
                    && !attrs.iter().any(|(seen, _)| seen == k)
                {
                    attrs.push((k.clone(), v.clone()));
                }
            }
            Event::from_binary(attrs, msg.content_type, msg.payload)
                .map(Event::into_value)
                .map_err(|e| MappingError {
                    mode: "binary",
                    reason: e.to_string(),
                })
        }
        Mode::Structured => Event::from_json_bytes(msg.payload)
            .map(Event::into_value)
            .map_err(|e| MappingError {
                mode: "structured",
                reason: e.to_string(),
            }),
        Mode::Plain => Ok(wrap_message(msg, id, wrap)),
    }
}

/// A message that is not a CloudEvent as one: its payload as the data (JSON
/// as JSON, text as a string, else base64), as its content type says.
fn wrap_message(msg: &Incoming<'_>, id: &str, wrap: &Wrap) -> Value {
    let attrs = vec![
        ("specversion".to_string(), "1.0".to_string()),
        ("id".to_string(), id.to_string()),
        (
            "source".to_string(),
            format!("{}/{}", wrap.broker.trim_end_matches('/'), msg.topic),
        ),
        ("type".to_string(), wrap.event_type.clone()),
    ];
    // A payload its content type does not describe (JSON that does not
    // parse) is kept as bytes.
    Event::from_binary(attrs.clone(), msg.content_type, msg.payload)
        .or_else(|_| {
            Event::from_binary(attrs.clone(), Some("application/octet-stream"), msg.payload)
        })
        .map(Event::into_value)
        .unwrap_or_else(|_| {
            // Unreachable with the attributes above (all valid but an
            // empty id, which the caller never gives); keep what there is.
            let mut v = json!({});
            for (k, val) in attrs {
                v[k] = Value::String(val);
            }
            v
        })
}

/// An MQTT PUBLISH to send: payload and (MQTT 5) properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The Content Type property (MQTT 5 only).
    pub content_type: Option<String>,
    /// User properties (MQTT 5 only): the attributes.
    pub user_properties: Vec<(String, String)>,
    /// Payload.
    pub payload: Vec<u8>,
}

/// The MQTT PUBLISH of `event`: binary mode on MQTT 5, structured on
/// MQTT 3.1.1 (see the module). Pure.
pub fn to_message(event: &Event, protocol: Protocol) -> Outgoing {
    match protocol {
        Protocol::V5 => {
            let data = event.binary_data();
            Outgoing {
                content_type: data.content_type,
                user_properties: event.header_attributes(),
                payload: data.body,
            }
        }
        Protocol::V311 => Outgoing {
            content_type: None,
            user_properties: Vec::new(),
            payload: event.to_json_bytes(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn wrap() -> Wrap {
        Wrap {
            broker: "mqtt://127.0.0.1:1883".into(),
            event_type: "io.mqtt.message".into(),
        }
    }

    fn props(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn msg<'a>(
        topic: &'a str,
        content_type: Option<&'a str>,
        user_properties: &'a [(String, String)],
        payload: &'a [u8],
    ) -> Incoming<'a> {
        Incoming {
            topic,
            content_type,
            user_properties,
            payload,
        }
    }

    #[test]
    fn binary_mode_user_properties_are_the_attributes() {
        let p = props(&[
            ("specversion", "1.0"),
            ("id", "e1"),
            ("source", "/orders"),
            ("type", "order.created"),
            ("myext", "x y"),
            ("myext", "second is ignored"),
            ("Trace-Id", "not an attribute name"),
            ("datacontenttype", "text/plain"),
        ]);
        let m = msg("orders/new", Some("application/json"), &p, br#"{"n":1}"#);
        assert_eq!(mode(&m), Mode::Binary);
        let v = to_cloudevent(&m, "unused", &wrap()).expect("valid");
        assert_eq!(
            v,
            json!({"specversion": "1.0", "id": "e1", "source": "/orders", "type": "order.created",
                   "myext": "x y", "datacontenttype": "application/json", "data": {"n": 1}})
        );
    }

    #[test]
    fn structured_mode_by_content_type_or_shape() {
        let ev =
            json!({"specversion": "1.0", "id": "s1", "source": "/s", "type": "t", "data": "hi"});
        let payload = serde_json::to_vec(&ev).expect("json");
        for ct in [Some("application/cloudevents+json; charset=utf-8"), None] {
            let m = msg("a/b", ct, &[], &payload);
            assert_eq!(mode(&m), Mode::Structured);
            assert_eq!(to_cloudevent(&m, "unused", &wrap()).expect("valid"), ev);
        }
        // JSON with `specversion` but declared as plain JSON is data.
        let m = msg("a/b", Some("application/json"), &[], &payload);
        assert_eq!(mode(&m), Mode::Plain);
        let v = to_cloudevent(&m, "w1", &wrap()).expect("wrapped");
        assert_eq!(v["data"], ev);
    }

    #[test]
    fn an_invalid_cloudevent_is_an_error_naming_the_mode() {
        let p = props(&[("specversion", "1.0"), ("id", "x")]);
        let e = to_cloudevent(&msg("a", None, &p, b""), "i", &wrap()).expect_err("no source");
        assert_eq!(e.mode, "binary");
        assert!(e.to_string().contains("source"), "{e}");
        let e = to_cloudevent(
            &msg("a", Some(STRUCTURED_CONTENT_TYPE), &[], b"not json"),
            "i",
            &wrap(),
        )
        .expect_err("bad");
        assert_eq!(e.mode, "structured");
        let e = to_cloudevent(
            &msg("a", None, &[], br#"{"specversion": "0.3", "id": "1"}"#),
            "i",
            &wrap(),
        )
        .expect_err("old version");
        assert_eq!(e.mode, "structured");
    }

    #[test]
    fn other_messages_are_wrapped() {
        let m = msg("sensors/t1", None, &[], b"21.5 C");
        let v = to_cloudevent(&m, "abc", &wrap()).expect("wrapped");
        // Text without a content type is kept as bytes.
        assert_eq!(
            v,
            json!({"specversion": "1.0", "id": "abc", "source": "mqtt://127.0.0.1:1883/sensors/t1",
                   "type": "io.mqtt.message", "data_base64": "MjEuNSBD"})
        );
        let m = msg("s", None, &[], br#"{"t": 21.5}"#);
        let v = to_cloudevent(&m, "j", &wrap()).expect("wrapped");
        assert_eq!(v["data"], json!({"t": 21.5}));
        let m = msg("s", Some("text/plain"), &[], b"hello");
        let v = to_cloudevent(&m, "t", &wrap()).expect("wrapped");
        assert_eq!(
            (&v["data"], &v["datacontenttype"]),
            (&json!("hello"), &json!("text/plain"))
        );
        let m = msg("s", Some("application/json"), &[], b"{broken");
        let v = to_cloudevent(&m, "r1", &wrap()).expect("wrapped");
        assert_eq!(v["datacontenttype"], "application/octet-stream");
        assert_eq!(v["data_base64"], "e2Jyb2tlbg==");
    }

    #[test]
    fn message_ids_tell_apart_what_differs() {
        let p = props(&[("k", "v")]);
        let base = msg("a/b", Some("text/plain"), &p, b"x");
        let id = message_id(&base, 7);
        assert_eq!(id.len(), 32);
        assert_eq!(id, message_id(&base, 7), "deterministic");
        assert_ne!(id, message_id(&base, 8), "packet id");
        assert_ne!(id, message_id(&msg("a/c", Some("text/plain"), &p, b"x"), 7));
        assert_ne!(id, message_id(&msg("a/b", None, &p, b"x"), 7));
        assert_ne!(
            id,
            message_id(&msg("a/b", Some("text/plain"), &[], b"x"), 7)
        );
        assert_ne!(id, message_id(&msg("a/b", Some("text/plain"), &p, b"y"), 7));
        // Field boundaries count: ("ab", "c") is not ("a", "bc").
        assert_ne!(
            message_id(&msg("ab", None, &[], b"c"), 1),
            message_id(&msg("a", None, &[], b"bc"), 1)
        );
    }

    #[test]
    fn events_are_written_binary_on_v5_and_structured_on_v311() {
        let ev = Event::from_structured(json!({"specversion": "1.0", "id": "1", "source": "/s",
            "type": "t", "subject": "a\r\nb", "n": 3, "data": {"k": 2}}))
        .expect("valid");
        let out = to_message(&ev, Protocol::V5);
        assert!(out.user_properties.contains(&("id".into(), "1".into())));
        assert!(
            out.user_properties
                .contains(&("subject".into(), "a\r\nb".into())),
            "MQTT strings carry CR and LF"
        );
        assert!(out.user_properties.contains(&("n".into(), "3".into())));
        assert_eq!(out.content_type.as_deref(), Some("application/json"));
        assert_eq!(out.payload, br#"{"k":2}"#);
        let out = to_message(&ev, Protocol::V311);
        assert!(out.user_properties.is_empty() && out.content_type.is_none());
        let back = to_cloudevent(&msg("x", None, &[], &out.payload), "unused", &wrap())
            .expect("structured");
        assert_eq!(back, ev.to_value());
    }

    #[test]
    fn protocols_are_named() {
        for p in [Protocol::V5, Protocol::V311] {
            assert_eq!(Protocol::parse(p.as_str()), Some(p));
        }
        assert_eq!(Protocol::parse("v4"), None);
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

    fn event() -> impl Strategy<Value = Value> {
        (
            "[ -~]{1,40}",
            "[!-~]{1,40}",
            "[a-z.]{1,20}",
            proptest::collection::btree_map(name(), "[ -~\n]{0,20}", 0..4),
            prop_oneof![
                any::<i64>().prop_map(|n| (json!({"n": n}), "application/json")),
                // (an empty payload is an event without data)
                "[ -~]{1,30}".prop_map(|s| (json!(s), "text/plain")),
            ],
        )
            .prop_map(|(id, source, ty, ext, data)| {
                let mut v = json!({"specversion": "1.0", "id": id, "source": source, "type": ty,
                    "datacontenttype": data.1, "data": data.0});
                for (k, val) in &ext {
                    v[k] = json!(val);
                }
                v
            })
    }

    proptest! {
        /// What the target writes, the source reads back as the same event,
        /// in either protocol.
        #[test]
        fn events_round_trip(v in event(), v5 in any::<bool>()) {
            let protocol = if v5 { Protocol::V5 } else { Protocol::V311 };
            let ev = Event::from_structured(v.clone()).expect("valid");
            let out = to_message(&ev, protocol);
            let m = Incoming {
                topic: "x/y",
                content_type: out.content_type.as_deref(),
                user_properties: &out.user_properties,
                payload: &out.payload,
            };
            let back = to_cloudevent(&m, "unused", &wrap()).expect("valid");
            prop_assert_eq!(back, v);
        }

        /// Any message that is not shaped like a CloudEvent becomes a valid
        /// event whose id is the one given, the same every time.
        #[test]
        fn wrapping_is_deterministic(
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            ct in proptest::option::of(prop_oneof![
                Just("application/json"), Just("text/plain"), Just("application/octet-stream")]),
            other in proptest::collection::vec(("[A-Za-z-]{1,8}", "[ -~]{0,8}"), 0..3),
            pkid in 1..=u16::MAX,
        ) {
            prop_assume!(!looks_structured(&payload));
            let other: Vec<(String, String)> =
                other.into_iter().filter(|(k, _)| k != "specversion").collect();
            let m = msg("a/b", ct, &other, &payload);
            let id = message_id(&m, pkid);
            let a = to_cloudevent(&m, &id, &wrap()).expect("wrapped");
            let b = to_cloudevent(&m, &message_id(&m, pkid), &wrap()).expect("wrapped");
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(&a["id"], &json!(id));
            prop_assert!(Event::from_structured(a).is_ok());
        }
    }
}
