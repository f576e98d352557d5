//! The push endpoint, `POST /alibaba/push/{bus}`: the URL to give an
//! Alibaba EventBridge HTTP target. Alibaba pushes the complete CloudEvent
//! in JSON (or an array of them when the target batches), signed with
//! `x-eventbridge-signature`; [`push`] checks the signature and its replay
//! window ([`super::sign::verify_push`]) and posts the events to the bus as
//! Strait's own event API does ([`crate::post_to_bus`]), so it answers as
//! that API answers. What exactly is verified is documented in
//! docs/adapters/alibaba.md.

use std::collections::BTreeMap;

use http::{HeaderMap, Uri};

use super::ingress::{header_map, now_ms};
use super::sign::{self, PushError, RsaPublicKey};
use crate::{Binding, BindingError, BusAnswer, EventLimits, Ingest, IngestError, post_to_bus};

/// What pushes are checked against.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Refuse pushes without a valid signature.
    pub require_signature: bool,
    /// The URL configured on the Alibaba HTTP target, without the path,
    /// when the node is behind a proxy (else `http://{Host}`): the signed
    /// URL is this and the request's path and query.
    pub public_url: Option<String>,
    /// Trusted signing keys by their `x-eventbridge-signature-url`.
    pub keys: BTreeMap<String, RsaPublicKey>,
    /// The signature timestamp must be this close to now.
    pub max_age_secs: u64,
    /// The node's limits.
    pub limits: EventLimits,
}

/// Why a push stored nothing, before any entry was looked at; the caller
/// renders it as its API renders errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushRefusal {
    /// The signature is missing, expired, made with an untrusted key or
    /// wrong (`401`).
    #[error("{message}")]
    Unauthorized {
        /// Machine-readable code.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The body is not a CloudEvent in JSON or an array of them.
    #[error("{message}")]
    Body {
        /// HTTP status (`400`, or `413` for too many events).
        status: u16,
        /// Machine-readable code.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Nothing could be stored.
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

/// A push to `bus` (which the caller found to exist): its request URI,
/// headers and body. Checks the signature when required, reads the events
/// and posts them to `bus`.
pub async fn push(
    cfg: &PushConfig,
    bus: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    ingest: &dyn Ingest,
) -> Result<BusAnswer, PushRefusal> {
    if cfg.require_signature {
        let h = header_map(headers);
        let base = match &cfg.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!(
                "http://{}",
                h.get("host").map(String::as_str).unwrap_or("localhost")
            ),
        };
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let url = format!("{base}{path}");
        sign::verify_push(&url, &h, body, &cfg.keys, now_ms() as i64, cfg.max_age_secs).map_err(
            |e| {
                metrics::counter!("strait_alibaba_push_rejected_total").increment(1);
                let code = match e {
                    PushError::Malformed(_) => "InvalidSignature",
                    PushError::Expired(_) => "RequestExpired",
                    PushError::UntrustedKey(_) => "UntrustedSigningKey",
                    PushError::BadSignature(_) => "SignatureDoesNotMatch",
                };
                PushRefusal::Unauthorized {
                    code,
                    message: e.to_string(),
                }
            },
        )?;
    }
    // Alibaba pushes the event as JSON (`application/json`): one event
    // object, or an array when the target batches.
    let binding = match body.iter().copied().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => Binding::Batch,
        Some(b'{') => Binding::Structured,
        _ => {
            return Err(PushRefusal::Body {
                status: 400,
                code: "MalformedRequest",
                message: "the body must be a CloudEvent in JSON form or an array of them (configure the Alibaba HTTP target to push the complete event)".into(),
            });
        }
    };
    let entries = ingest
        .read(binding, headers, body, &cfg.limits)
        .map_err(|e| PushRefusal::Body {
            status: match e {
                BindingError::TooManyEvents(_) => 413,
                _ => 400,
            },
            code: e.code(),
            message: e.to_string(),
        })?;
    Ok(post_to_bus(ingest, bus, entries).await?)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::ingest::fake::Fake;

    fn cfg(require_signature: bool) -> PushConfig {
        PushConfig {
            require_signature,
            public_url: None,
            keys: BTreeMap::new(),
            max_age_secs: 60,
            limits: EventLimits {
                max_event_bytes: 1 << 20,
                max_request_bytes: 4 << 20,
                max_batch_events: 2,
            },
        }
    }

    fn event(id: &str) -> Value {
        json!({"specversion": "1.0", "id": id, "source": "/s", "type": "t"})
    }

    async fn call(cfg: &PushConfig, body: &Value, fake: &Fake) -> Result<BusAnswer, PushRefusal> {
        let uri: Uri = "/alibaba/push/default".parse().expect("uri");
        let body = body.to_string();
        push(
            cfg,
            "default",
            &uri,
            &HeaderMap::new(),
            body.as_bytes(),
            fake,
        )
        .await
    }

    /// One event or a batch; every entry counted on the bus.
    #[tokio::test]
    async fn pushed_events_are_posted_to_the_bus() {
        let fake = Fake::default();
        let answer = call(&cfg(false), &event("a"), &fake).await.expect("posted");
        let BusAnswer::Stored { status, body } = answer else {
            panic!("stored: {answer:?}");
        };
        assert_eq!((status, &body["accepted"]), (200, &json!(1)), "{body}");
        let mut bad = event("b");
        bad["source"] = json!("bad");
        let answer = call(&cfg(false), &json!([event("dup"), bad]), &fake)
            .await
            .expect("posted");
        let BusAnswer::Stored { status, body } = answer else {
            panic!("stored: {answer:?}");
        };
        assert_eq!(status, 207, "{body}");
        assert_eq!(body["duplicates"], 1, "{body}");
        assert_eq!(body["results"][1]["status"], "error", "{body}");
        let offered = fake.offered.lock().expect("lock").clone();
        assert_eq!(
            offered,
            ["checked:default", "checked:default", "checked:default"]
        );
    }

    /// Without a signature when one is required (401), a body that is not
    /// an event (400), too many events (413), nothing valid (the first
    /// error), a store that is down.
    #[tokio::test]
    async fn refusals() {
        let fake = Fake::default();
        let e = call(&cfg(true), &event("a"), &fake)
            .await
            .expect_err("refused");
        assert!(
            matches!(
                e,
                PushRefusal::Unauthorized {
                    code: "InvalidSignature",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = call(&cfg(false), &json!("text"), &fake)
            .await
            .expect_err("refused");
        assert!(matches!(e, PushRefusal::Body { status: 400, .. }), "{e:?}");
        let three = json!([event("a"), event("b"), event("c")]);
        let e = call(&cfg(false), &three, &fake).await.expect_err("refused");
        assert!(
            matches!(
                e,
                PushRefusal::Body {
                    status: 413,
                    code: "TooManyEvents",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(fake.offered.lock().expect("lock").is_empty());
        let answer = call(&cfg(false), &json!([{"id": "x"}]), &fake)
            .await
            .expect("answered");
        assert!(
            matches!(answer, BusAnswer::NoneStored { status: 400, .. }),
            "{answer:?}"
        );
        let down = Fake {
            down: true,
            ..Fake::default()
        };
        let e = call(&cfg(false), &event("a"), &down)
            .await
            .expect_err("refused");
        assert_eq!(
            e,
            PushRefusal::Ingest(IngestError::NotReady("no leader".into()))
        );
    }
}
