//! Alibaba Cloud EventBridge: the `alibaba_eventbridge` target (PutEvents,
//! signed as the official SDK signs, batched up to Alibaba's limits), the
//! Alibaba-compatible PutEvents ingress ([`ingress`]), the endpoint an
//! Alibaba HTTP target pushes to ([`push`]) and the signing they share
//! ([`sign`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use strait_routing::event::Event;
use tokio::sync::{mpsc, oneshot};

use crate::{ConfigError, DeliveryError, DeliveryFuture, Sink};

pub mod ingress;
pub mod push;
pub mod sign;

/// Most events in one PutEvents request (Alibaba's limit).
pub const MAX_BATCH_EVENTS: usize = 16;
/// Largest event, in JSON form (Alibaba's limit).
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Largest PutEvents request body (Alibaba's limit).
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// The most of a successful PutEvents answer that is read (an answer to 16
/// events is a few KiB).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The PutEvents path.
pub const PUT_EVENTS_PATH: &str = "/openapi/putEvents";
/// The extension that names the Alibaba event bus.
pub const BUS_EXTENSION: &str = "aliyuneventbusname";

/// An AccessKey or STS credential from the node-local secret config.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// AccessKey ID.
    pub access_key_id: String,
    /// AccessKey secret.
    pub access_key_secret: String,
    /// STS security token (for temporary credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_token: Option<String>,
    /// Endpoint overrides this credential may be used with (URLs, or
    /// host names). Empty: any. The default endpoint (built from the
    /// account and region) is always allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// Region ids this credential may be used in. Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
}

impl Credential {
    /// Check that this credential (named `name`) may be used with
    /// `endpoint` (an override) in `region`; the error names `endpoint`
    /// or `regionId`.
    pub fn check_use(
        &self,
        name: &str,
        endpoint: Option<&str>,
        region: Option<&str>,
    ) -> Result<(), ConfigError> {
        if let Some(e) = endpoint
            && !self.endpoints.is_empty()
            && !crate::aws_common::endpoint_allowed(&self.endpoints, e)
        {
            return Err(ConfigError::new(
                "endpoint",
                format!(
                    "credential {name:?} may only be used with the endpoints {:?}, not {}",
                    self.endpoints,
                    crate::egress::redact_url(e)
                ),
            ));
        }
        if !self.regions.is_empty() && !region.is_some_and(|r| self.regions.iter().any(|x| x == r))
        {
            return Err(ConfigError::new(
                "regionId",
                format!(
                    "credential {name:?} may only be used in the regions {:?}, not {:?}",
                    self.regions,
                    region.unwrap_or("(none)")
                ),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"<redacted>")
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "<redacted>"),
            )
            .field("endpoints", &self.endpoints)
            .field("regions", &self.regions)
            .finish()
    }
}

/// Named credentials, shared by every Alibaba target of a node.
pub type Credentials = Arc<BTreeMap<String, Credential>>;

fn default_batch_events() -> usize {
    MAX_BATCH_EVENTS
}

fn default_batch_delay_ms() -> u64 {
    5
}

/// Settings of an `alibaba_eventbridge` target (the fields next to `id` and
/// `type`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlibabaSettings {
    /// The Alibaba event bus (sent as the `aliyuneventbusname` extension).
    pub event_bus: String,
    /// Name of a credential in the node's `alibaba.credentials`.
    pub credential: String,
    /// Alibaba Cloud account id (for the default endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Region id such as `cn-hangzhou` (default endpoint, `x-eventbridge-regionId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_id: Option<String>,
    /// Base URL; default `https://{accountId}.eventbridge.{regionId}.aliyuncs.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Most events per PutEvents request (1-16).
    #[serde(default = "default_batch_events")]
    pub max_batch_events: usize,
    /// How long the first event of a batch waits for company, ms (0-1000).
    #[serde(default = "default_batch_delay_ms")]
    pub max_batch_delay_ms: u64,
}

fn label_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl AlibabaSettings {
    /// Parse and check settings given as a JSON object; the normal form has
    /// the defaults filled in.
    pub fn from_settings(settings: &Map<String, Value>) -> Result<AlibabaSettings, ConfigError> {
        let s: AlibabaSettings = serde_json::from_value(Value::Object(settings.clone()))
            .map_err(|e| ConfigError::new("settings", e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Check every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.event_bus.is_empty()
            || self.event_bus.len() > 127
            || !self
                .event_bus
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(ConfigError::new(
                "eventBus",
                format!(
                    "{:?} is not a valid Alibaba event bus name (1-127 characters of A-Z a-z 0-9 . _ -)",
                    self.event_bus
                ),
            ));
        }
        if self.credential.is_empty() {
            return Err(ConfigError::new(
                "credential",
                "name a credential of the node config's alibaba.credentials",
            ));
        }
        for (field, v) in [
            ("accountId", &self.account_id),
            ("regionId", &self.region_id),
        ] {
            if let Some(v) = v
                && !label_ok(v)
            {
                return Err(ConfigError::new(
                    field,
                    format!("{v:?} is not valid (letters, digits, - and _)"),
                ));
            }
        }
        match &self.endpoint {
            Some(e) => {
                let u = crate::http_url("endpoint", e)?;
                if (u.path() != "/" && !u.path().is_empty()) || u.query().is_some() {
                    return Err(ConfigError::new(
                        "endpoint",
                        "give only scheme, host and port: the path is always /openapi/putEvents",
                    ));
                }
            }
            None => {
                if self.account_id.is_none() || self.region_id.is_none() {
                    return Err(ConfigError::new(
                        "endpoint",
                        "give endpoint, or accountId and regionId for the default endpoint",
                    ));
                }
            }
        }
        if self.max_batch_events == 0 || self.max_batch_events > MAX_BATCH_EVENTS {
            return Err(ConfigError::new(
                "maxBatchEvents",
                format!("must be between 1 and {MAX_BATCH_EVENTS}"),
            ));
        }
        if self.max_batch_delay_ms > 1000 {
            return Err(ConfigError::new(
                "maxBatchDelayMs",
                "must be between 0 and 1000",
            ));
        }
        Ok(())
    }

    /// The PutEvents URL.
    pub fn put_events_url(&self) -> String {
        match &self.endpoint {
            Some(e) => format!("{}{PUT_EVENTS_PATH}", e.trim_end_matches('/')),
            None => format!(
                "https://{}.eventbridge.{}.aliyuncs.com{PUT_EVENTS_PATH}",
                self.account_id.as_deref().unwrap_or_default(),
                self.region_id.as_deref().unwrap_or_default()
            ),
        }
    }
}

/// The body of a PutEvents request: the events as a CloudEvents JSON batch,
/// each with `aliyuneventbusname` set to `bus`. Pure, so the wire form is
/// unit-tested. Returns the serialized events one by one (the batcher sizes
/// them) — join with [`batch_body`].
pub fn encode_event(event: &Event, bus: &str) -> Vec<u8> {
    let mut e = event.clone();
    e.set_attr(BUS_EXTENSION, Value::String(bus.to_string()));
    e.to_json_bytes()
}

/// Join serialized events into a JSON array.
pub fn batch_body<'a>(events: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut body = vec![b'['];
    for (i, e) in events.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e);
    }
    body.push(b']');
    body
}

/// The headers of a PutEvents request, exactly the ones the official SDK
/// sends (plus `traceparent`), with the signature. `date` is an RFC 1123
/// date, `nonce` a fresh random string.
pub fn signed_headers(
    settings: &AlibabaSettings,
    credential: &Credential,
    host: &str,
    date: &str,
    nonce: &str,
) -> Vec<(String, String)> {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        headers.insert(k.to_string(), v.to_string());
    };
    put("date", date);
    put("host", host);
    put("accept", "application/json");
    put("x-acs-signature-nonce", nonce);
    put("x-acs-signature-method", "HMAC-SHA1");
    put("x-acs-signature-version", "1.0");
    put("x-eventbridge-version", "2015-06-06");
    put(
        "user-agent",
        concat!(
            "strait/",
            env!("CARGO_PKG_VERSION"),
            " aliyun-eventbridge-sdk/1.2.0"
        ),
    );
    if let Some(r) = &settings.region_id {
        put("x-eventbridge-regionid", r);
    }
    put(
        "content-type",
        "application/cloudevents-batch+json; charset=utf-8",
    );
    if let Some(token) = &credential.security_token
        && !token.is_empty()
    {
        put("x-acs-accesskey-id", &credential.access_key_id);
        put("x-acs-security-token", token);
    }
    let req = sign::SignedRequest {
        method: "POST".into(),
        pathname: PUT_EVENTS_PATH.into(),
        headers: headers.clone(),
        query: BTreeMap::new(),
    };
    let sig = sign::signature(&sign::string_to_sign(&req), &credential.access_key_secret);
    headers.insert(
        "authorization".into(),
        sign::authorization(&credential.access_key_id, &sig),
    );
    headers.into_iter().collect()
}

/// Whether an Alibaba error code (request- or entry-level) is worth retrying.
pub fn retryable_code(code: &str) -> bool {
    let c = code.to_ascii_lowercase();
    [
        "throttl",
        "toomany",
        "internal",
        "unavailable",
        "timeout",
        "busy",
        "systemerror",
    ]
    .iter()
    .any(|p| c.contains(p))
}

/// Map a PutEvents answer (status and body) to one result per sent entry.
/// Pure, so it is unit-tested.
pub fn map_response(status: u16, body: &[u8], ids: &[String]) -> Vec<Result<(), DeliveryError>> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let snippet = || String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
    if !(200..300).contains(&status) {
        let code = json
            .as_ref()
            .and_then(|v| v.get("code").or_else(|| v.get("Code")))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let message = json
            .as_ref()
            .and_then(|v| v.get("message").or_else(|| v.get("Message")))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(snippet);
        let msg = format!("Alibaba EventBridge PutEvents: HTTP {status} {code}: {message}");
        let retry = status >= 500 || status == 408 || status == 429 || retryable_code(&code);
        let err = if retry {
            DeliveryError::Retryable(msg)
        } else {
            DeliveryError::Permanent(msg)
        };
        return ids.iter().map(|_| Err(err.clone())).collect();
    }
    let Some(json) = json else {
        return ids
            .iter()
            .map(|_| {
                Err(DeliveryError::Retryable(format!(
                    "Alibaba EventBridge PutEvents: HTTP {status} with a body that is not JSON: {}",
                    snippet()
                )))
            })
            .collect();
    };
    let failed = json
        .get("FailedEntryCount")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let entries = json.get("EntryList").and_then(Value::as_array);
    let Some(entries) = entries else {
        if failed == 0 {
            return ids.iter().map(|_| Ok(())).collect();
        }
        return ids
            .iter()
            .map(|_| {
                Err(DeliveryError::Retryable(format!(
                    "Alibaba EventBridge PutEvents: FailedEntryCount {failed} without an EntryList"
                )))
            })
            .collect();
    };
    let by_index = entries.len() == ids.len();
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let entry = if by_index {
                entries.get(i)
            } else {
                entries
                    .iter()
                    .find(|e| e.get("EventId").and_then(Value::as_str) == Some(id.as_str()))
            };
            let Some(entry) = entry else {
                return if failed == 0 {
                    Ok(())
                } else {
                    Err(DeliveryError::Retryable(format!(
                        "Alibaba EventBridge PutEvents: no EntryList entry for event {id:?} and {failed} failed"
                    )))
                };
            };
            let code = entry
                .get("ErrorCode")
                .and_then(Value::as_str)
                .unwrap_or("");
            if code.is_empty() {
                return Ok(());
            }
            let message = entry
                .get("ErrorMessage")
                .and_then(Value::as_str)
                .unwrap_or("");
            let msg = format!("Alibaba EventBridge rejected event {id:?}: {code}: {message}");
            Err(if retryable_code(code) {
                DeliveryError::Retryable(msg)
            } else {
                DeliveryError::Permanent(msg)
            })
        })
        .collect()
}

struct Pending {
    id: String,
    json: Vec<u8>,
    traceparent: String,
    reply: oneshot::Sender<Result<(), DeliveryError>>,
}

/// The running target: `deliver` hands the event to a per-target batcher
/// task and waits for that event's own result.
#[derive(Debug)]
pub struct AlibabaTarget {
    settings: AlibabaSettings,
    tx: mpsc::Sender<Pending>,
}

impl AlibabaTarget {
    /// Start the batcher on the current tokio runtime.
    pub fn start(
        client: reqwest::Client,
        settings: AlibabaSettings,
        credential: Credential,
        timeout: Duration,
    ) -> Result<AlibabaTarget, ConfigError> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| ConfigError::new("type", "the Alibaba target needs a tokio runtime"))?;
        let (tx, rx) = mpsc::channel(1024);
        let batcher = Batcher {
            client,
            settings: settings.clone(),
            credential,
            timeout,
        };
        handle.spawn(batcher.run(rx));
        Ok(AlibabaTarget { settings, tx })
    }
}

impl Sink for AlibabaTarget {
    fn deliver<'a>(&'a self, event: &'a Event, traceparent: &'a str) -> DeliveryFuture<'a> {
        Box::pin(async move {
            let json = encode_event(event, &self.settings.event_bus);
            if json.len() > MAX_EVENT_BYTES {
                return Err(DeliveryError::Permanent(format!(
                    "event is {} bytes in JSON form, above Alibaba EventBridge's limit of {MAX_EVENT_BYTES} bytes per event",
                    json.len()
                )));
            }
            let (reply, rx) = oneshot::channel();
            let pending = Pending {
                id: event.id().to_string(),
                json,
                traceparent: traceparent.to_string(),
                reply,
            };
            self.tx.send(pending).await.map_err(|_| {
                DeliveryError::Retryable("the Alibaba EventBridge batcher stopped".into())
            })?;
            rx.await.map_err(|_| {
                DeliveryError::Retryable("the Alibaba EventBridge batcher dropped the event".into())
            })?
        })
    }
}

struct Batcher {
    client: reqwest::Client,
    settings: AlibabaSettings,
    credential: Credential,
    timeout: Duration,
}

impl Batcher {
    async fn run(self, mut rx: mpsc::Receiver<Pending>) {
        let this = Arc::new(self);
        let mut carry: Option<Pending> = None;
        loop {
            let first = match carry.take() {
                Some(p) => p,
                None => match rx.recv().await {
                    Some(p) => p,
                    None => return,
                },
            };
            // Body size: brackets plus a comma between events.
            let mut size = 2 + first.json.len();
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now()
                + Duration::from_millis(this.settings.max_batch_delay_ms);
            while batch.len() < this.settings.max_batch_events {
                let next = match rx.try_recv() {
                    Ok(p) => Some(p),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        tokio::time::timeout_at(deadline, rx.recv())
                            .await
                            .ok()
                            .flatten()
                    }
                };
                let Some(p) = next else { break };
                if size + 1 + p.json.len() > MAX_REQUEST_BYTES {
                    carry = Some(p);
                    break;
                }
                size += 1 + p.json.len();
                batch.push(p);
            }
            // Send without holding up the next batch.
            let w = this.clone();
            tokio::spawn(async move { w.send(batch).await });
        }
    }

    async fn send(&self, batch: Vec<Pending>) {
        let ids: Vec<String> = batch.iter().map(|p| p.id.clone()).collect();
        let results = self.put_events(&batch, &ids).await;
        for (p, r) in batch.into_iter().zip(results) {
            let _ = p.reply.send(r);
        }
    }

    async fn put_events(
        &self,
        batch: &[Pending],
        ids: &[String],
    ) -> Vec<Result<(), DeliveryError>> {
        let all = |e: DeliveryError| ids.iter().map(|_| Err(e.clone())).collect::<Vec<_>>();
        let url = self.settings.put_events_url();
        let host = match reqwest::Url::parse(&url) {
            Ok(u) => match (u.host_str(), u.port()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_string(),
                _ => {
                    return all(DeliveryError::Permanent(format!(
                        "invalid endpoint {url:?}"
                    )));
                }
            },
            Err(e) => {
                return all(DeliveryError::Permanent(format!(
                    "invalid endpoint {url:?}: {e}"
                )));
            }
        };
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let headers = signed_headers(&self.settings, &self.credential, &host, &date, &nonce);
        let body = batch_body(batch.iter().map(|p| p.json.as_slice()));
        let mut req = self.client.post(&url).timeout(self.timeout);
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(first) = batch.first() {
            req = req.header("traceparent", first.traceparent.as_str());
        }
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                };
                return all(DeliveryError::Retryable(format!(
                    "Alibaba EventBridge PutEvents {kind}: {}",
                    crate::peer::error_chain(&e)
                )));
            }
        };
        let status = resp.status().as_u16();
        // Read a bounded part of the answer only: an answer to a batch is a
        // few KiB, an error's message is in its first bytes.
        let success = (200..300).contains(&status);
        let cap = if success {
            MAX_ANSWER_BYTES
        } else {
            crate::peer::ERROR_BODY_BYTES
        };
        let body = match crate::peer::read_capped(resp, cap).await {
            Ok(b) => b,
            Err(e) => {
                return all(DeliveryError::Retryable(format!(
                    "Alibaba EventBridge PutEvents: reading the answer failed: {}",
                    crate::peer::error_chain(&e)
                )));
            }
        };
        if success && body.truncated {
            return all(DeliveryError::Retryable(format!(
                "Alibaba EventBridge PutEvents: HTTP {status} with an answer larger than {MAX_ANSWER_BYTES} bytes (not read further): {}",
                body.snippet(200)
            )));
        }
        map_response(status, &body.bytes, ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> Map<String, Value> {
        json!({"eventBus": "orders", "credential": "main", "endpoint": "http://127.0.0.1:9000"})
            .as_object()
            .cloned()
            .expect("object")
    }

    #[test]
    fn settings_normal_form_and_errors() {
        let s = AlibabaSettings::from_settings(&settings()).expect("valid");
        assert_eq!(s.max_batch_events, 16);
        assert_eq!(
            s.put_events_url(),
            "http://127.0.0.1:9000/openapi/putEvents"
        );
        let mut bad = settings();
        bad.remove("endpoint");
        assert_eq!(
            AlibabaSettings::from_settings(&bad)
                .expect_err("endpoint")
                .field,
            "endpoint"
        );
        bad.insert("accountId".into(), json!("123"));
        bad.insert("regionId".into(), json!("cn-hangzhou"));
        let s = AlibabaSettings::from_settings(&bad).expect("default endpoint");
        assert_eq!(
            s.put_events_url(),
            "https://123.eventbridge.cn-hangzhou.aliyuncs.com/openapi/putEvents"
        );
        let mut bad = settings();
        bad.insert("maxBatchEvents".into(), json!(17));
        assert_eq!(
            AlibabaSettings::from_settings(&bad).expect_err("17").field,
            "maxBatchEvents"
        );
        let mut bad = settings();
        bad.insert("secret".into(), json!("x"));
        assert!(AlibabaSettings::from_settings(&bad).is_err());
        let mut bad = settings();
        bad.insert("endpoint".into(), json!("http://h/openapi/putEvents"));
        assert_eq!(
            AlibabaSettings::from_settings(&bad)
                .expect_err("path")
                .field,
            "endpoint"
        );
    }

    #[test]
    fn body_carries_bus_extension() {
        let e = Event::from_structured(
            json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": {"a": 1}}),
        )
        .expect("event");
        let one = encode_event(&e, "orders");
        let body = batch_body([one.as_slice(), one.as_slice()]);
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v[1]["aliyuneventbusname"], "orders");
        assert_eq!(v[0]["data"]["a"], 1);
    }

    #[test]
    fn headers_are_signed_like_the_sdk() {
        let s = AlibabaSettings::from_settings(&settings()).expect("valid");
        let c = Credential {
            access_key_id: "testid".into(),
            access_key_secret: "testsecret".into(),
            security_token: Some("tok".into()),
            endpoints: Vec::new(),
            regions: Vec::new(),
        };
        let h: BTreeMap<String, String> = signed_headers(
            &s,
            &c,
            "127.0.0.1:9000",
            "Thu, 06 Feb 2020 07:32:54 GMT",
            "n",
        )
        .into_iter()
        .collect();
        assert_eq!(h["x-acs-security-token"], "tok");
        let req = sign::SignedRequest {
            method: "POST".into(),
            pathname: PUT_EVENTS_PATH.into(),
            headers: h.clone(),
            query: BTreeMap::new(),
        };
        let keys = [sign::IngressKey {
            access_key_id: "testid".into(),
            access_key_secret: "testsecret".into(),
            security_token: Some("tok".into()),
        }];
        let now = chrono::DateTime::parse_from_rfc2822("Thu, 06 Feb 2020 07:32:54 GMT")
            .expect("date")
            .timestamp();
        assert!(sign::verify_request(&req, &keys, now, 60).is_ok());
        assert!(format!("{c:?}").contains("redacted"));
        assert!(!format!("{c:?}").contains("testsecret"));
    }

    #[test]
    fn response_mapping() {
        let ids = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let ok = json!({"RequestId": "r", "FailedEntryCount": 0, "EntryList": [{"EventId": "a"}, {"EventId": "b"}, {"EventId": "c"}]});
        assert!(
            map_response(200, ok.to_string().as_bytes(), &ids)
                .iter()
                .all(Result::is_ok)
        );
        let mixed = json!({"FailedEntryCount": 2, "EntryList": [
            {"EventId": "a"},
            {"EventId": "b", "ErrorCode": "TooManyRequests", "ErrorMessage": "slow down"},
            {"EventId": "c", "ErrorCode": "InvalidArgument", "ErrorMessage": "bad"}]});
        let r = map_response(200, mixed.to_string().as_bytes(), &ids);
        assert!(r[0].is_ok());
        assert!(r[1].as_ref().expect_err("throttled").is_retryable());
        assert!(!r[2].as_ref().expect_err("invalid").is_retryable());
        let r = map_response(503, b"oops", &ids);
        assert!(
            r.iter()
                .all(|x| x.as_ref().is_err_and(DeliveryError::is_retryable))
        );
        let r = map_response(400, br#"{"code":"InvalidArgument","message":"m"}"#, &ids);
        let e = r[0].as_ref().expect_err("400");
        assert!(
            !e.is_retryable() && e.to_string().contains("InvalidArgument"),
            "{e}"
        );
        let r = map_response(429, b"", &ids);
        assert!(r[0].as_ref().is_err_and(DeliveryError::is_retryable));
        let r = map_response(200, b"not json", &ids);
        assert!(r[0].as_ref().is_err_and(DeliveryError::is_retryable));
    }

    /// A PutEvents endpoint answering with a huge body (an error, or a
    /// success) costs a bounded read, not the body's size in memory.
    #[tokio::test]
    async fn a_huge_answer_is_not_read_whole() {
        use std::sync::atomic::Ordering;
        const BODY: u64 = 200 << 20;
        for status in [400u16, 200] {
            let (addr, written) = crate::peer::test_server::start(status, BODY).await;
            let mut s = settings();
            s.insert("endpoint".into(), json!(format!("http://{addr}")));
            s.insert("maxBatchDelayMs".into(), json!(0));
            let target = AlibabaTarget::start(
                reqwest::Client::new(),
                AlibabaSettings::from_settings(&s).expect("valid"),
                Credential {
                    access_key_id: "id".into(),
                    access_key_secret: "secret".into(),
                    security_token: None,
                    endpoints: Vec::new(),
                    regions: Vec::new(),
                },
                Duration::from_secs(60),
            )
            .expect("target");
            let e = Event::from_structured(
                json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}),
            )
            .expect("event");
            let err = target
                .deliver(
                    &e,
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                )
                .await
                .expect_err("not a PutEvents answer");
            let msg = err.to_string();
            assert!(msg.contains(&format!("HTTP {status}")), "{msg}");
            assert!(msg.len() < 600, "{} bytes: {msg}", msg.len());
            let wait = std::time::Instant::now();
            while !written.done.load(Ordering::SeqCst) && wait.elapsed() < Duration::from_secs(20) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let bytes = written.bytes.load(Ordering::SeqCst);
            eprintln!("HTTP {status}: the server wrote {bytes} of {BODY} bytes");
            assert!(
                !written.finished.load(Ordering::SeqCst) && bytes < BODY / 8,
                "HTTP {status}: the target read {bytes} of {BODY} bytes"
            );
        }
    }
}
