//! The CloudEvents NATS protocol binding, pure (no I/O): a NATS message to
//! a CloudEvent ([`to_cloudevent`]) and a CloudEvent to a NATS message
//! ([`to_message`]).
//!
//! Reading, by the binding:
//! - binary mode: a `ce-specversion` header; each `ce-<attr>` header is an
//!   attribute, `content-type` is `datacontenttype`, the payload is the data;
//! - structured mode: `content-type: application/cloudevents+json`, or no
//!   `content-type` and a JSON object payload with `specversion` (NATS
//!   before 2.2 has no headers: structured is its only mode);
//! - anything else is wrapped: `source` is the broker URI and the message's
//!   subject, `type` the source's `eventType`, `id` `<stream>:<sequence>`
//!   for a JetStream message (re-reading it gives the same id, so it is
//!   dropped as a duplicate) or the caller's random id for core NATS.
//!
//! Writing is binary mode: the attributes as `ce-<attr>` headers (a value's
//! CR and LF become spaces, as NATS headers cannot carry them), the data as
//! the payload, `datacontenttype` as `content-type`.

use serde_json::{Value, json};
use strait_routing::event::Event;

/// The `content-type` of structured mode.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// A NATS message as the mapping sees it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The subject it was published to.
    pub subject: &'a str,
    /// Its headers (name, value), in any case.
    pub headers: &'a [(String, String)],
    /// Its payload.
    pub payload: &'a [u8],
}

/// Where a message came from, which makes the id of a wrapped one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin<'a> {
    /// A JetStream message: its stream and stream sequence.
    JetStream {
        /// The stream.
        stream: &'a str,
        /// Its sequence in the stream.
        sequence: u64,
    },
    /// A core NATS message, with the id to give it (random: core NATS has
    /// no redelivery to deduplicate).
    Core {
        /// The id.
        id: &'a str,
    },
}

impl Origin<'_> {
    /// The `id` of a wrapped message.
    pub fn id(&self) -> String {
        match self {
            Origin::JetStream { stream, sequence } => format!("{stream}:{sequence}"),
            Origin::Core { id } => (*id).to_string(),
        }
    }
}

/// How a message that is not a CloudEvent is wrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrap {
    /// The broker URI without credentials (`nats://host:port`).
    pub broker: String,
    /// The `type` of wrapped events.
    pub event_type: String,
    /// Refuse (instead of wrap) a message that is not a CloudEvent.
    pub reject: bool,
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

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
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

/// The CloudEvent of a NATS message (structured JSON form), by the binding;
/// a message that is not a CloudEvent is wrapped (see the module). Pure.
pub fn to_cloudevent(
    msg: &Incoming<'_>,
    origin: Origin<'_>,
    wrap: &Wrap,
) -> Result<Value, MappingError> {
    let content_type = header(msg.headers, "content-type");
    if header(msg.headers, "ce-specversion").is_some() {
        let attrs: Vec<(String, String)> = msg
            .headers
            .iter()
            .filter_map(|(k, v)| {
                let lower = k.to_ascii_lowercase();
                lower
                    .strip_prefix("ce-")
                    .map(|a| (a.to_string(), v.clone()))
            })
            .collect();
        return Event::from_binary(attrs, content_type, msg.payload)
            .map(Event::into_value)
            .map_err(|e| MappingError {
                mode: "binary",
                reason: e.to_string(),
            });
    }
    if content_type.is_some_and(is_structured)
        || (content_type.is_none() && looks_structured(msg.payload))
    {
        return Event::from_json_bytes(msg.payload)
            .map(Event::into_value)
            .map_err(|e| MappingError {
                mode: "structured",
                reason: e.to_string(),
            });
    }
    if wrap.reject {
        return Err(MappingError {
            mode: "plain",
            reason: "not a CloudEvent, and the source's nonCloudEvents is \"reject\"".into(),
        });
    }
    Ok(wrap_message(msg, origin, wrap, content_type))
}

/// A message that is not a CloudEvent as one: its payload as the data (JSON
/// as JSON, text as a string, else base64), as `content-type` says.
fn wrap_message(
    msg: &Incoming<'_>,
    origin: Origin<'_>,
    wrap: &Wrap,
    content_type: Option<&str>,
) -> Value {
    let attrs = vec![
        ("specversion".to_string(), "1.0".to_string()),
        ("id".to_string(), origin.id()),
        (
            "source".to_string(),
            format!("{}/{}", wrap.broker.trim_end_matches('/'), msg.subject),
        ),
        ("type".to_string(), wrap.event_type.clone()),
    ];
    // A payload its content type does not describe (JSON that does not
    // parse) is kept as bytes.
    Event::from_binary(attrs.clone(), content_type, msg.payload)
        .or_else(|_| {
            Event::from_binary(attrs.clone(), Some("application/octet-stream"), msg.payload)
        })
        .map(Event::into_value)
        .unwrap_or_else(|_| {
            // Unreachable with the attributes above (all valid); keep the
            // bytes anyway rather than fail.
            let mut v = json!({});
            for (k, val) in attrs {
                v[k] = Value::String(val);
            }
            v
        })
}

/// A NATS message: headers (name, value) and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Headers, `ce-<attr>` and `content-type`.
    pub headers: Vec<(String, String)>,
    /// Payload.
    pub payload: Vec<u8>,
}

/// The NATS message of `event`, binary mode (see the module). Pure.
pub fn to_message(event: &Event) -> Outgoing {
    let data = event.binary_data();
    let mut headers: Vec<(String, String)> = event
        .header_attributes()
        .into_iter()
        .map(|(k, v)| (format!("ce-{k}"), v.replace(['\r', '\n'], " ")))
        .collect();
    if let Some(ct) = data.content_type {
        headers.push(("content-type".into(), ct.replace(['\r', '\n'], " ")));
    }
    Outgoing {
        headers,
        payload: data.body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn wrap() -> Wrap {
        Wrap {
            broker: "nats://127.0.0.1:4222".into(),
            event_type: "io.nats.message".into(),
            reject: false,
        }
    }

    #[test]
    fn a_plain_message_is_refused_when_the_source_rejects_them() {
        let w = Wrap {
            reject: true,
            ..wrap()
        };
        let msg = Incoming {
            subject: "a.b",
            headers: &[],
            payload: b"plain text",
        };
        let origin = Origin::JetStream {
            stream: "S",
            sequence: 7,
        };
        let e = to_cloudevent(&msg, origin, &w).expect_err("refused");
        assert_eq!(e.mode, "plain");
        assert!(
            to_cloudevent(&msg, origin, &wrap()).is_ok(),
            "wrapped by default"
        );
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const JS: Origin<'static> = Origin::JetStream {
        stream: "ORDERS",
        sequence: 7,
    };

    #[test]
    fn binary_mode_headers_are_the_attributes() {
        let headers = h(&[
            ("ce-specversion", "1.0"),
            ("Ce-Id", "e1"),
            ("ce-source", "/orders"),
            ("ce-type", "order.created"),
            ("ce-myext", "x y"),
            ("content-type", "application/json"),
            ("other", "ignored"),
        ]);
        let msg = Incoming {
            subject: "orders.new",
            headers: &headers,
            payload: br#"{"n":1}"#,
        };
        let v = to_cloudevent(&msg, JS, &wrap()).expect("valid");
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
        let headers = h(&[(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )]);
        for headers in [&headers[..], &[]] {
            let msg = Incoming {
                subject: "a",
                headers,
                payload: &payload,
            };
            assert_eq!(to_cloudevent(&msg, JS, &wrap()).expect("valid"), ev);
        }
    }

    #[test]
    fn an_invalid_cloudevent_is_an_error_naming_the_mode() {
        let headers = h(&[("ce-specversion", "1.0"), ("ce-id", "x")]);
        let msg = Incoming {
            subject: "a",
            headers: &headers,
            payload: b"",
        };
        let e = to_cloudevent(&msg, JS, &wrap()).expect_err("no source");
        assert_eq!(e.mode, "binary");
        assert!(e.to_string().contains("source"), "{e}");
        let headers = h(&[("content-type", "application/cloudevents+json")]);
        let msg = Incoming {
            subject: "a",
            headers: &headers,
            payload: b"not json",
        };
        assert_eq!(
            to_cloudevent(&msg, JS, &wrap()).expect_err("bad").mode,
            "structured"
        );
    }

    #[test]
    fn other_messages_are_wrapped_with_a_deterministic_id() {
        let msg = Incoming {
            subject: "sensors.t1",
            headers: &[],
            payload: b"21.5 C",
        };
        let v = to_cloudevent(&msg, JS, &wrap()).expect("wrapped");
        assert_eq!(
            v,
            json!({"specversion": "1.0", "id": "ORDERS:7", "source": "nats://127.0.0.1:4222/sensors.t1",
                   "type": "io.nats.message", "data": "21.5 C"})
                .as_object()
                .map(|m| {
                    // Text without a content type is kept as bytes.
                    let mut m = m.clone();
                    m.remove("data");
                    m.insert("data_base64".into(), json!("MjEuNSBD"));
                    Value::Object(m)
                })
                .expect("object")
        );
        let headers = h(&[("content-type", "application/json")]);
        let msg = Incoming {
            subject: "s",
            headers: &headers,
            payload: b"{broken",
        };
        let v = to_cloudevent(&msg, Origin::Core { id: "r1" }, &wrap()).expect("wrapped");
        assert_eq!(v["id"], "r1");
        assert_eq!(v["datacontenttype"], "application/octet-stream");
        assert_eq!(v["data_base64"], "e2Jyb2tlbg==");
    }

    #[test]
    fn events_are_written_in_binary_mode() {
        let ev = Event::from_structured(json!({"specversion": "1.0", "id": "1", "source": "/s",
            "type": "t", "subject": "a\r\nb", "data": {"k": 2}}))
        .expect("valid");
        let out = to_message(&ev);
        assert!(out.headers.contains(&("ce-id".into(), "1".into())));
        assert!(out.headers.contains(&("ce-subject".into(), "a  b".into())));
        assert!(
            out.headers
                .contains(&("content-type".into(), "application/json".into()))
        );
        assert_eq!(out.payload, br#"{"k":2}"#);
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
        /// What the target writes, the source reads back as the same event.
        #[test]
        fn binary_mode_round_trips(
            id in "[ -~]{1,40}",
            source in "[!-~]{1,40}",
            ty in "[a-z.]{1,20}",
            ext in proptest::collection::btree_map(name(), "[ -~]{0,20}", 0..4),
            data in prop_oneof![
                any::<i64>().prop_map(|n| (json!({"n": n}), "application/json")),
                // (an empty payload is an event without data)
                "[ -~]{1,30}".prop_map(|s| (json!(s), "text/plain")),
            ],
        ) {
            let mut v = json!({"specversion": "1.0", "id": id, "source": source, "type": ty,
                "datacontenttype": data.1, "data": data.0});
            for (k, val) in &ext { v[k] = json!(val); }
            let ev = Event::from_structured(v.clone()).expect("valid");
            let out = to_message(&ev);
            let msg = Incoming { subject: "x", headers: &out.headers, payload: &out.payload };
            let back = to_cloudevent(&msg, Origin::Core { id: "unused" }, &wrap()).expect("valid");
            prop_assert_eq!(back, v);
        }

        /// Any message without CloudEvents headers and not shaped like one
        /// becomes a valid event whose id is its stream and sequence.
        #[test]
        fn wrapping_is_deterministic(
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            ct in proptest::option::of(prop_oneof![
                Just("application/json"), Just("text/plain"), Just("application/octet-stream")]),
            seq in any::<u64>(),
        ) {
            prop_assume!(!looks_structured(&payload));
            let headers: Vec<(String, String)> =
                ct.iter().map(|c| ("content-type".to_string(), c.to_string())).collect();
            let msg = Incoming { subject: "a.b", headers: &headers, payload: &payload };
            let origin = Origin::JetStream { stream: "S", sequence: seq };
            let a = to_cloudevent(&msg, origin, &wrap()).expect("wrapped");
            let b = to_cloudevent(&msg, origin, &wrap()).expect("wrapped");
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(&a["id"], &json!(format!("S:{seq}")));
            prop_assert!(Event::from_structured(a).is_ok());
        }
    }
}
