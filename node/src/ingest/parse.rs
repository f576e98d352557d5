//! Parsing the CloudEvents HTTP binding (binary, structured, batch) into
//! validated events. Pure: no I/O, so it is property-tested and fuzzed.

use http::HeaderMap;
use serde_json::Value;
use serde_json::value::RawValue;
use strait_adapters::BindingError;
use strait_routing::event::{Event, EventError, percent_decode_header};
use strait_routing::json::{JsonError, check_event_json};

use crate::config::Limits;
use crate::trace::TraceParent;

/// Media type of one structured event.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// Media type of a batch.
pub const BATCH: &str = "application/cloudevents-batch+json";

/// Why one entry is rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EntryError {
    /// Not a valid CloudEvent.
    #[error(transparent)]
    Event(#[from] EventError),
    /// Its JSON cannot be read by routing (too deep, a number out of
    /// range, a lone surrogate escape).
    #[error("the event cannot be routed: {0}")]
    Unroutable(#[from] JsonError),
    /// Larger than the per-event limit.
    #[error("event is {size} bytes in JSON form, above the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

impl EntryError {
    /// Machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            EntryError::Event(e) => e.code(),
            EntryError::Unroutable(_) => "UnroutableEvent",
            EntryError::TooLarge { .. } => "EventTooLarge",
        }
    }
}

/// One parsed entry: the event (with its serialized form) or why not.
#[derive(Debug, Clone)]
pub struct ParsedEvent {
    /// The validated event's context attributes, trace context added. In
    /// structured and batch mode its `data` is only in `json` (kept as the
    /// producer sent it, never parsed into a tree).
    pub event: Event,
    /// Its JSON structured form (serialized once, never re-parsed).
    pub json: Box<serde_json::value::RawValue>,
}

impl ParsedEvent {
    /// The entry that appends this event to `bus`.
    pub fn into_entry(self, bus: String) -> super::Entry {
        super::append_entry(&self.event, self.json, bus)
    }
}

/// Entry results in request order; the id is kept for error reporting.
pub type Entries = Vec<(Option<String>, Result<ParsedEvent, EntryError>)>;

fn essence(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Parse a request body according to its headers; events without a
/// `traceparent` continue the request's (its HTTP `traceparent` header).
pub fn parse_request(
    headers: &HeaderMap,
    body: &[u8],
    limits: &Limits,
) -> Result<Entries, BindingError> {
    let http_traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    parse_request_in(headers, body, limits, http_traceparent)
}

/// [`parse_request`], with events without a `traceparent` continuing
/// `request_trace` (the request's span, when the ingress exports one).
pub fn parse_request_in(
    headers: &HeaderMap,
    body: &[u8],
    limits: &Limits,
    request_trace: Option<TraceParent>,
) -> Result<Entries, BindingError> {
    let http_traceparent = request_trace;
    let content_type = match headers.get(http::header::CONTENT_TYPE) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| BindingError::Malformed("Content-Type header is not ASCII".into()))?
                .to_string(),
        ),
        None => None,
    };
    let ct_essence = content_type.as_deref().map(essence);
    let finish =
        |r: Result<Event, EventError>| -> (Option<String>, Result<ParsedEvent, EntryError>) {
            match r {
                Ok(e) => {
                    let id = Some(e.id().to_string());
                    (id, finish_event(e, None, http_traceparent, limits))
                }
                Err(e) => (None, Err(EntryError::Event(e))),
            }
        };
    match ct_essence.as_deref() {
        Some(STRUCTURED) => parse_structured(body, http_traceparent, limits),
        Some(BATCH) => parse_batch(body, http_traceparent, limits),
        Some(ct) if ct.starts_with("application/cloudevents") => {
            Err(BindingError::UnsupportedMediaType(format!(
                "content type {ct:?} is not supported (use {STRUCTURED}, {BATCH} or binary mode)"
            )))
        }
        _ => {
            if !headers.contains_key("ce-specversion") {
                return Err(BindingError::UnsupportedMediaType(format!(
                    "content type {:?} is not a CloudEvents mode: send {STRUCTURED}, {BATCH}, or binary mode with ce-specversion, ce-id, ce-source and ce-type headers",
                    content_type.unwrap_or_default()
                )));
            }
            let mut attrs = Vec::new();
            for (name, value) in headers {
                let n = name.as_str();
                if let Some(attr) = n.strip_prefix("ce-") {
                    let v = percent_decode_header(value.as_bytes())
                        .map_err(|e| BindingError::Malformed(format!("header {n}: {e}")))?;
                    attrs.push((attr.to_string(), v));
                }
            }
            let id = attrs
                .iter()
                .find(|(k, _)| k == "id")
                .map(|(_, v)| v.clone());
            let (_, r) = finish(Event::from_binary(attrs, content_type.as_deref(), body));
            Ok(vec![(id, r)])
        }
    }
}

/// A structured-mode body: one event.
pub fn parse_structured(
    body: &[u8],
    http_traceparent: Option<TraceParent>,
    limits: &Limits,
) -> Result<Entries, BindingError> {
    let raw: Box<RawValue> = serde_json::from_slice(body)
        .map_err(|e| BindingError::Malformed(format!("body is not valid JSON: {e}")))?;
    let (id, r) = split_data(&raw);
    Ok(vec![(
        id,
        r.map_err(EntryError::Event)
            .and_then(|(ev, data)| finish_event(ev, data, http_traceparent, limits)),
    )])
}

/// A batch-mode body: a JSON array of at most `limits.max_batch_events`
/// events.
pub fn parse_batch(
    body: &[u8],
    http_traceparent: Option<TraceParent>,
    limits: &Limits,
) -> Result<Entries, BindingError> {
    // Stop at the first member over the limit: a body within the size
    // limit may still hold millions of tiny members, and a boxed raw value
    // for each would take many times the body's size.
    let mut de = serde_json::Deserializer::from_slice(body);
    let capped =
        serde::de::DeserializeSeed::deserialize(CappedItems(limits.max_batch_events), &mut de)
            .and_then(|items| de.end().map(|()| items));
    let items = match capped {
        Ok(items) => items,
        Err(e) if e.to_string().starts_with(TOO_MANY) => {
            return Err(BindingError::TooManyEvents(format!(
                "the batch has more than {} events, the limit",
                limits.max_batch_events
            )));
        }
        Err(e) => {
            // Valid JSON that is not an array, or not JSON at all?
            return Err(BindingError::Malformed(
                match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                    Ok(_) => "a batch must be a JSON array of events".into(),
                    Err(_) => format!("body is not valid JSON: {e}"),
                },
            ));
        }
    };
    if items.is_empty() {
        return Err(BindingError::Malformed("the batch is empty".into()));
    }
    Ok(parse_items(&items, http_traceparent, limits))
}

/// The start of the error [`CappedItems`] gives for one member too many.
const TOO_MANY: &str = "strait: too many batch members";

/// A JSON array of at most `.0` raw members.
struct CappedItems(usize);

impl<'de> serde::de::DeserializeSeed<'de> for CappedItems {
    type Value = Vec<Box<RawValue>>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for CappedItems {
    type Value = Vec<Box<RawValue>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array of events")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.0));
        while let Some(item) = seq.next_element::<Box<RawValue>>()? {
            if items.len() == self.0 {
                return Err(serde::de::Error::custom(TOO_MANY));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// Events in structured JSON form that an ingress has already split into
/// items (a batch's members, or events it built itself from another
/// vendor's format); errors name the item's index as in a batch.
pub fn parse_items(
    items: &[Box<RawValue>],
    http_traceparent: Option<TraceParent>,
    limits: &Limits,
) -> Entries {
    items
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let (id, r) = split_data(raw);
            let r = r
                .map_err(|ev| EntryError::Event(prefix_error(i, ev)))
                .and_then(|(ev, data)| finish_event(ev, data, http_traceparent, limits));
            (id, r)
        })
        .collect()
}

fn prefix_error(index: usize, e: EventError) -> EventError {
    match e {
        EventError::Malformed(m) => EventError::Malformed(format!("event {index}: {m}")),
        EventError::Invalid { attr, reason } => EventError::Invalid {
            attr: format!("[{index}].{attr}"),
            reason,
        },
        other => other,
    }
}

/// A structured event's attributes and its raw `data`, if any.
type Split = (Event, Option<Box<RawValue>>);

/// The members of one JSON object, values kept as raw JSON text.
struct RawMembers(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for RawMembers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawMembers;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<RawMembers, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Box<RawValue>>()? {
                    out.push((k, v));
                }
                Ok(RawMembers(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Validate one structured event without building a JSON tree for its
/// `data`: the context attributes are parsed and checked, the data stays raw
/// text and is written back as it came. Returns the id (for error reports)
/// and the event's attributes plus its raw data.
fn split_data(raw: &RawValue) -> (Option<String>, Result<Split, EventError>) {
    let members: RawMembers = match serde_json::from_str(raw.get()) {
        Ok(m) => m,
        Err(_) => {
            let kind = serde_json::from_str::<Value>(raw.get())
                .map(|v| strait_routing::event::json_kind(&v))
                .unwrap_or("invalid JSON");
            return (
                None,
                Err(EventError::Malformed(format!(
                    "an event must be a JSON object, got {kind}"
                ))),
            );
        }
    };
    let mut map = serde_json::Map::new();
    let mut data = None;
    for (k, v) in members.0 {
        if k == "data" {
            // `"data": null` is the same as no data.
            data = (v.get().trim() != "null").then_some(v);
            continue;
        }
        match serde_json::from_str::<Value>(v.get()) {
            Ok(val) => {
                map.insert(k, val);
            }
            Err(e) => return (None, Err(EventError::Malformed(e.to_string()))),
        }
    }
    let id = map.get("id").and_then(Value::as_str).map(str::to_string);
    if data.is_some() {
        // Stand-in so validation sees that data is present.
        map.insert("data".into(), Value::Bool(true));
    }
    let r = Event::from_structured(Value::Object(map)).map(|mut ev| {
        if data.is_some() {
            ev.remove_attr("data");
        }
        (ev, data)
    });
    (id, r)
}

/// An event's attributes followed by its raw data, serialized as one object.
struct WithData<'a>(&'a serde_json::Map<String, Value>, Option<&'a RawValue>);

impl serde::Serialize for WithData<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        if let Some(d) = self.1 {
            m.serialize_entry("data", d)?;
        }
        m.end()
    }
}

/// Add trace context and `time` (ingestion time) when missing, check the
/// size and that routing can read the event's final JSON.
fn finish_event(
    mut event: Event,
    data: Option<Box<RawValue>>,
    http_traceparent: Option<TraceParent>,
    limits: &Limits,
) -> Result<ParsedEvent, EntryError> {
    // The trace this event continues: its own `traceparent`, else the
    // request's, else a new one.
    let producer = match event.get("traceparent") {
        Some(Value::String(s)) => match TraceParent::parse(s) {
            Some(tp) => Some(tp),
            None => {
                return Err(EntryError::Event(EventError::Invalid {
                    attr: "traceparent".into(),
                    reason: format!("is not a valid W3C traceparent: {s:?}"),
                }));
            }
        },
        Some(_) => {
            return Err(EntryError::Event(EventError::Invalid {
                attr: "traceparent".into(),
                reason: "must be a string".into(),
            }));
        }
        None => None,
    };
    // Kept as the producer sent it; set from the request's context (its
    // HTTP `traceparent`, or the ingress's own span) or to a new trace.
    if producer.is_none() {
        let tp = http_traceparent
            .unwrap_or_else(|| crate::telemetry::root_for(event.source(), event.id()));
        event.set_attr("traceparent", Value::String(tp.to_string()));
    }
    if event.get("time").is_none() {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        event.set_attr("time", Value::String(now));
    }
    let json = serde_json::value::to_raw_value(&WithData(event.as_map(), data.as_deref()))
        .map_err(|e| EventError::Malformed(e.to_string()))?;
    if json.get().len() > limits.max_event_bytes {
        return Err(EntryError::TooLarge {
            size: json.get().len(),
            limit: limits.max_event_bytes,
        });
    }
    // What is stored must be readable by routing, or it would be
    // acknowledged and never delivered.
    check_event_json(json.get().as_bytes())?;
    Ok(ParsedEvent { event, json })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn structured_event() {
        let h = headers(&[("content-type", STRUCTURED)]);
        let body = br#"{"specversion":"1.0","id":"a","source":"/s","type":"t","data":{"x":1}}"#;
        let r = parse_request(&h, body, &Limits::default()).expect("parsed");
        let ev = r[0].1.as_ref().expect("valid");
        assert!(ev.event.get("traceparent").is_some());
    }

    #[test]
    fn binary_event_keeps_http_trace() {
        let h = headers(&[
            ("content-type", "application/json"),
            ("ce-specversion", "1.0"),
            ("ce-id", "b"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
            ("ce-myext", "hello%20world"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ]);
        let r = parse_request(&h, b"{\"x\":1}", &Limits::default()).expect("parsed");
        let ev = &r[0].1.as_ref().expect("valid").event;
        assert_eq!(ev.str_attr("myext"), Some("hello world"));
        let tp = ev.str_attr("traceparent").expect("tp");
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    }

    #[test]
    fn batch_mixes_good_and_bad() {
        let h = headers(&[("content-type", BATCH)]);
        let body = br#"[{"specversion":"1.0","id":"a","source":"/s","type":"t"},{"specversion":"1.0","source":"/s","type":"t"}]"#;
        let r = parse_request(&h, body, &Limits::default()).expect("parsed");
        assert!(r[0].1.is_ok());
        let err = r[1].1.as_ref().expect_err("missing id");
        assert_eq!(err.code(), "MissingAttribute");
    }

    #[test]
    fn a_batch_over_the_member_limit_is_refused_before_it_is_read_whole() {
        let h = headers(&[("content-type", BATCH)]);
        // 2 million tiny members in 4 MB: refused at member 1001.
        let mut body = String::with_capacity(4 << 20);
        body.push('[');
        for i in 0..2_000_000 {
            if i > 0 {
                body.push(',');
            }
            body.push('1');
        }
        body.push(']');
        let t0 = std::time::Instant::now();
        let e = parse_request(&h, body.as_bytes(), &Limits::default()).expect_err("too many");
        assert_eq!(e.code(), "TooManyEvents");
        assert!(e.to_string().contains("more than 1000"), "{e}");
        assert!(
            t0.elapsed() < std::time::Duration::from_millis(500),
            "{:?}",
            t0.elapsed()
        );
        // Exactly the limit is read; an unfinished array and trailing
        // bytes are malformed, not "too many".
        let ev = r#"{"specversion":"1.0","id":"a","source":"/s","type":"t"}"#;
        let limits = Limits {
            max_batch_events: 3,
            ..Limits::default()
        };
        let at_limit = format!("[{ev},{ev},{ev}]");
        assert_eq!(
            parse_request(&h, at_limit.as_bytes(), &limits)
                .expect("3")
                .len(),
            3
        );
        let over = format!("[{ev},{ev},{ev},{ev}]");
        assert_eq!(
            parse_request(&h, over.as_bytes(), &limits)
                .expect_err("4")
                .code(),
            "TooManyEvents"
        );
        for bad in [
            format!("[{ev}"),
            format!("[{ev}] x"),
            ev.to_string(),
            "[".into(),
        ] {
            let e = parse_request(&h, bad.as_bytes(), &limits).expect_err("malformed");
            assert_eq!(e.code(), "MalformedRequest", "{bad}: {e}");
        }
        let e = parse_request(&h, ev.as_bytes(), &limits).expect_err("object");
        assert!(e.to_string().contains("must be a JSON array"), "{e}");
    }

    #[test]
    fn rejects_unknown_media_type_and_oversize() {
        let h = headers(&[("content-type", "text/plain")]);
        assert_eq!(
            parse_request(&h, b"hi", &Limits::default())
                .expect_err("415")
                .code(),
            "UnsupportedMediaType"
        );
        let h = headers(&[("content-type", STRUCTURED)]);
        let big = format!(
            r#"{{"specversion":"1.0","id":"a","source":"/s","type":"t","data":"{}"}}"#,
            "x".repeat(2000)
        );
        let limits = Limits {
            max_event_bytes: 1024,
            ..Limits::default()
        };
        let r = parse_request(&h, big.as_bytes(), &limits).expect("parsed");
        assert_eq!(r[0].1.as_ref().expect_err("big").code(), "EventTooLarge");
    }

    /// JSON the router cannot read is refused in every mode, naming the
    /// path and the problem (issue 15: it was acknowledged and never routed).
    #[test]
    fn json_routing_cannot_read_is_refused() {
        let deep = format!("{}1{}", "[".repeat(130), "]".repeat(130));
        let digits = format!("{{\"n\":{}}}", "9".repeat(400));
        let cases = [
            (
                deep.as_str(),
                "`data[0][0][0][0][0][0][0]…` nests arrays and objects too deep",
            ),
            (r#"{"n":1e400}"#, "`data.n` holds a number out of range"),
            (digits.as_str(), "`data.n` holds a number out of range"),
            (
                r#"{"s":"\ud800"}"#,
                "`data.s` holds a string with a lone UTF-16 surrogate escape",
            ),
        ];
        for (data, says) in cases {
            let ev = format!(
                r#"{{"specversion":"1.0","id":"a","source":"/s","type":"t","data":{data}}}"#
            );
            let good = r#"{"specversion":"1.0","id":"g","source":"/s","type":"t"}"#;
            for (ct, body) in [(STRUCTURED, ev.clone()), (BATCH, format!("[{good},{ev}]"))] {
                let r = parse_request(
                    &headers(&[("content-type", ct)]),
                    body.as_bytes(),
                    &Limits::default(),
                )
                .expect("parsed");
                let (id, last) = r.last().expect("an entry");
                assert_eq!(id.as_deref(), Some("a"));
                let e = last.as_ref().expect_err("refused");
                assert_eq!(e.code(), "UnroutableEvent", "{ct} {data}: {e}");
                let msg = e.to_string();
                assert!(
                    msg.starts_with(&format!("the event cannot be routed: {says}")),
                    "{msg}"
                );
                if ct == BATCH {
                    assert!(r[0].1.is_ok());
                }
            }
        }
        // Binary mode: 127 levels parse alone, but not inside the event.
        let h = headers(&[
            ("content-type", "application/json"),
            ("ce-specversion", "1.0"),
            ("ce-id", "b"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
        ]);
        let deep = format!("{}1{}", "[".repeat(127), "]".repeat(127));
        let r = parse_request(&h, deep.as_bytes(), &Limits::default()).expect("parsed");
        assert_eq!(
            r[0].1.as_ref().expect_err("too deep").code(),
            "UnroutableEvent"
        );
        let ok = format!("{}1{}", "[".repeat(126), "]".repeat(126));
        let r = parse_request(&h, ok.as_bytes(), &Limits::default()).expect("parsed");
        assert!(r[0].1.is_ok());
    }

    proptest! {
        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), mode in 0usize..4) {
            let h = match mode {
                0 => headers(&[("content-type", STRUCTURED)]),
                1 => headers(&[("content-type", BATCH)]),
                2 => headers(&[("content-type", "application/octet-stream"), ("ce-specversion", "1.0"), ("ce-id", "x"), ("ce-source", "s"), ("ce-type", "t")]),
                _ => headers(&[("content-type", "application/json"), ("ce-specversion", "1.0")]),
            };
            let _ = parse_request(&h, &body, &Limits::default());
        }

        #[test]
        fn random_json_events_never_panic(s in "\\PC{0,200}") {
            let h = headers(&[("content-type", STRUCTURED)]);
            let body = serde_json::json!({"specversion": "1.0", "id": s, "source": "/s", "type": "t", "data": s}).to_string();
            let r = parse_request(&h, body.as_bytes(), &Limits::default());
            prop_assert!(r.is_ok());
        }
    }
}
