//! The ingress side: [`Ingest`], where an ingress hands the events it
//! receives (the counterpart of [`crate::Sink`], implemented by the node),
//! and [`post_to_bus`], the answer of Strait's own event API to events
//! posted to one bus, which the Alibaba push endpoint gives too.
//!
//! An ingress is a function from an HTTP request to a response; reading
//! CloudEvents out of a body (the CloudEvents HTTP binding) and storing
//! them are the node's, behind [`Ingest`].

use std::future::Future;
use std::pin::Pin;

use http::HeaderMap;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use strait_routing::event::Event;

/// The node's limits on what an ingress accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    /// Largest event (JSON structured form), bytes.
    pub max_event_bytes: usize,
    /// Largest request body, bytes.
    pub max_request_bytes: usize,
    /// Most events in one batch request.
    pub max_batch_events: usize,
}

/// How the events of a request body are read ([`Ingest::read`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// As the request's headers say: structured, batch or binary mode.
    Request,
    /// One event in structured JSON form.
    Structured,
    /// A JSON array of events in structured form.
    Batch,
}

/// Why none of a request's events can be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// Neither a CloudEvents media type nor binary-mode headers.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body does not parse.
    #[error("{0}")]
    Malformed(String),
    /// Too many events in one batch.
    #[error("{0}")]
    TooManyEvents(String),
}

impl BindingError {
    /// Machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            BindingError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            BindingError::Malformed(_) => "MalformedRequest",
            BindingError::TooManyEvents(_) => "TooManyEvents",
        }
    }
}

/// An event [`Ingest::read`] checked: valid, within the limits, trace
/// context added. Offer it unchanged ([`Offer::Checked`]).
#[derive(Debug, Clone)]
pub struct CheckedEvent {
    /// Its context attributes (its `data` is only in `json`).
    pub event: Event,
    /// Its JSON structured form, as it is stored.
    pub json: Box<RawValue>,
}

/// Why one entry of a request is not an event the node stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRefusal {
    /// Machine-readable code (`InvalidEvent`, `EventTooLarge`, ...).
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
}

/// One entry of a request, as [`Ingest::read`] read it.
#[derive(Debug, Clone)]
pub struct ReadEntry {
    /// Its `id`, when it has one (for error reports).
    pub id: Option<String>,
    /// The event, or why not.
    pub event: Result<CheckedEvent, EntryRefusal>,
}

/// An event an ingress offers to [`Ingest::submit`], in request order.
#[derive(Debug)]
pub enum Offer {
    /// A CloudEvent in structured JSON form that the ingress built, for
    /// `bus`: the node checks it as it checks a batch's members.
    Event {
        /// The bus.
        bus: String,
        /// The event.
        event: Value,
    },
    /// An event [`Ingest::read`] checked, for `bus`.
    Checked {
        /// The bus.
        bus: String,
        /// The event.
        event: CheckedEvent,
    },
    /// An entry the ingress refused itself: counted as received on `bus`
    /// (empty when it names no existing bus).
    Refused {
        /// The bus it is counted on.
        bus: String,
    },
}

/// What became of one [`Offer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Stored now.
    Accepted,
    /// A repeat of an event stored within the dedup window: stored before.
    Duplicate,
    /// The event is not one the node stores (why).
    Invalid(String),
    /// The bus was deleted.
    NoSuchBus,
    /// Refused by the ingress ([`Offer::Refused`]).
    Refused,
}

impl IngestOutcome {
    /// Stored, now or before: the sender may forget it.
    pub fn stored(&self) -> bool {
        matches!(self, IngestOutcome::Accepted | IngestOutcome::Duplicate)
    }
}

/// Why [`Ingest::submit`] stored nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The node cannot commit right now (no leader): retry later.
    #[error("{0}")]
    NotReady(String),
    /// Raft or storage failed.
    #[error("{0}")]
    Failed(String),
    /// The node's state holds its limit: retry once retention freed space.
    #[error("{message}")]
    StateFull {
        /// What is wrong.
        message: String,
        /// The limit, bytes.
        limit: u64,
        /// What the state holds, bytes.
        stored: u64,
    },
}

/// The answer of [`Ingest::submit`]: one outcome per offer, or why nothing
/// was stored.
pub type IngestFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<IngestOutcome>, IngestError>> + Send + 'a>>;

/// Where an ingress hands the events it receives: the counterpart of
/// [`crate::Sink`], implemented by the node.
pub trait Ingest: Send + Sync {
    /// Whether `bus` exists.
    fn bus_exists(&self, bus: &str) -> bool;
    /// Read the CloudEvents of a request body (the CloudEvents HTTP
    /// binding, as `binding` says; `headers` give the content type, binary
    /// mode's attributes and `traceparent`) under `limits`: one entry per
    /// event, in order.
    fn read(
        &self,
        binding: Binding,
        headers: &HeaderMap,
        body: &[u8],
        limits: &EventLimits,
    ) -> Result<Vec<ReadEntry>, BindingError>;
    /// Store the offered events (one outcome per offer, in order).
    fn submit(&self, offers: Vec<Offer>) -> IngestFuture<'_>;
}

/// Strait's answer to events posted to a bus ([`post_to_bus`]); the
/// caller renders it as its API renders answers.
#[derive(Debug, Clone, PartialEq)]
pub enum BusAnswer {
    /// Some or all stored: `200` (all) or `207` (some), and the body:
    /// `accepted`, `duplicates`, `failed` and one result per entry.
    Stored {
        /// HTTP status.
        status: u16,
        /// The body.
        body: Value,
    },
    /// None stored: the first entry's error (status, code, message) and
    /// the results, for the body's `results`.
    NoneStored {
        /// HTTP status.
        status: u16,
        /// Machine-readable code.
        code: &'static str,
        /// What is wrong.
        message: String,
        /// One result per entry.
        results: Value,
    },
}

/// Submit `entries` to `bus` and answer with one result per entry (`id`,
/// `status`: `accepted`, `duplicate` or `error`, and the error): what
/// Strait's `POST /v1/buses/{bus}/events` answers. Every entry is counted
/// on `bus`, refused ones too.
pub async fn post_to_bus(
    ingest: &dyn Ingest,
    bus: &str,
    entries: Vec<ReadEntry>,
) -> Result<BusAnswer, IngestError> {
    let total = entries.len();
    let mut results: Vec<Value> = Vec::with_capacity(total);
    let mut offers = Vec::with_capacity(total);
    let mut first_error: Option<(u16, &'static str, String)> = None;
    for entry in entries {
        match entry.event {
            Ok(event) => {
                offers.push(Offer::Checked {
                    bus: bus.to_string(),
                    event,
                });
                results.push(json!({"id": entry.id, "status": "pending"}));
            }
            Err(e) => {
                let status = if e.code == "EventTooLarge" { 413 } else { 400 };
                if first_error.is_none() {
                    first_error = Some((status, e.code, e.message.clone()));
                }
                offers.push(Offer::Refused {
                    bus: bus.to_string(),
                });
                results.push(json!({"id": entry.id, "status": "error", "error": {"code": e.code, "message": e.message}}));
            }
        }
    }
    let outcomes = ingest.submit(offers).await?;
    let (mut accepted, mut duplicates) = (0u64, 0u64);
    for (result, outcome) in results.iter_mut().zip(outcomes) {
        let status = match outcome {
            IngestOutcome::Accepted => {
                accepted += 1;
                "accepted"
            }
            IngestOutcome::Duplicate => {
                duplicates += 1;
                "duplicate"
            }
            IngestOutcome::NoSuchBus => {
                let message = format!("bus `{bus}` was deleted");
                result["error"] = json!({"code": "BusNotFound", "message": message});
                if first_error.is_none() {
                    first_error = Some((404, "BusNotFound", message));
                }
                "error"
            }
            IngestOutcome::Invalid(message) => {
                result["error"] = json!({"code": "InvalidEvent", "message": message});
                if first_error.is_none() {
                    first_error = Some((400, "InvalidEvent", message));
                }
                "error"
            }
            IngestOutcome::Refused => continue,
        };
        result["status"] = json!(status);
    }
    let failed = total as u64 - accepted - duplicates;
    let body = json!({"accepted": accepted, "duplicates": duplicates, "failed": failed, "results": results});
    if failed == 0 {
        return Ok(BusAnswer::Stored { status: 200, body });
    }
    if accepted + duplicates > 0 {
        return Ok(BusAnswer::Stored { status: 207, body });
    }
    let (status, code, message) =
        first_error.unwrap_or((400, "InvalidEvent", "no event accepted".into()));
    let mut body = body;
    Ok(BusAnswer::NoneStored {
        status,
        code,
        message,
        results: body["results"].take(),
    })
}

/// An [`Ingest`] for the ingresses' tests.
#[cfg(test)]
pub(crate) mod fake {
    use std::sync::Mutex;

    use super::*;

    /// An ingest with the buses `default` and `gone`: an event of `gone`
    /// meets a deleted bus, one whose source is `bad` is invalid, one whose
    /// id is `dup` a duplicate. It reads structured JSON (an object, or an
    /// array for a batch; either for [`Binding::Request`]) and records what
    /// it was offered.
    #[derive(Default)]
    pub(crate) struct Fake {
        /// `event:bus`, `checked:bus` or `refused:bus`, in order.
        pub(crate) offered: Mutex<Vec<String>>,
        /// Whether submits fail (no leader).
        pub(crate) down: bool,
    }

    impl Fake {
        fn outcome(bus: &str, source: &str, id: &str) -> IngestOutcome {
            if bus == "gone" {
                IngestOutcome::NoSuchBus
            } else if source == "bad" {
                IngestOutcome::Invalid("not storable".into())
            } else if id == "dup" {
                IngestOutcome::Duplicate
            } else {
                IngestOutcome::Accepted
            }
        }
    }

    impl Ingest for Fake {
        fn bus_exists(&self, bus: &str) -> bool {
            bus == "default" || bus == "gone"
        }

        fn read(
            &self,
            binding: Binding,
            _headers: &HeaderMap,
            body: &[u8],
            limits: &EventLimits,
        ) -> Result<Vec<ReadEntry>, BindingError> {
            let v: Value = serde_json::from_slice(body)
                .map_err(|e| BindingError::Malformed(format!("body is not valid JSON: {e}")))?;
            let items = match (binding, v) {
                (Binding::Batch | Binding::Request, Value::Array(items)) => items,
                (Binding::Structured | Binding::Request, v @ Value::Object(_)) => vec![v],
                _ => return Err(BindingError::Malformed("not an event".into())),
            };
            if items.len() > limits.max_batch_events {
                return Err(BindingError::TooManyEvents(format!(
                    "the batch has {} events, above the limit of {}",
                    items.len(),
                    limits.max_batch_events
                )));
            }
            Ok(items
                .into_iter()
                .map(|v| {
                    let id = v.get("id").and_then(Value::as_str).map(str::to_string);
                    let json = serde_json::value::to_raw_value(&v).expect("json");
                    let event = Event::from_structured(v)
                        .map(|event| CheckedEvent { event, json })
                        .map_err(|e| EntryRefusal {
                            code: e.code(),
                            message: e.to_string(),
                        });
                    ReadEntry { id, event }
                })
                .collect())
        }

        fn submit(&self, offers: Vec<Offer>) -> IngestFuture<'_> {
            Box::pin(async move {
                if self.down {
                    return Err(IngestError::NotReady("no leader".to_string()));
                }
                let mut seen = self
                    .offered
                    .lock()
                    .map_err(|e| IngestError::Failed(e.to_string()))?;
                Ok(offers
                    .into_iter()
                    .map(|o| match o {
                        Offer::Refused { bus } => {
                            seen.push(format!("refused:{bus}"));
                            IngestOutcome::Refused
                        }
                        Offer::Event { bus, event } => {
                            seen.push(format!("event:{bus}"));
                            let field = |k: &str| event[k].as_str().unwrap_or("").to_string();
                            Fake::outcome(&bus, &field("source"), &field("id"))
                        }
                        Offer::Checked { bus, event } => {
                            seen.push(format!("checked:{bus}"));
                            Fake::outcome(&bus, event.event.source(), event.event.id())
                        }
                    })
                    .collect())
            })
        }
    }
}
