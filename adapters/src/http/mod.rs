//! HTTP target: delivers CloudEvents in binary or structured content mode.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use strait_routing::event::{Event, percent_encode_header};

use crate::{ConfigError, DeliveryError, DeliveryFuture, Sink};

/// CloudEvents HTTP content mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    /// `ce-*` headers and the data as the body.
    #[default]
    Binary,
    /// `application/cloudevents+json` with the whole event.
    Structured,
}

/// Settings of an HTTP target (the fields next to `id` and `type`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    /// URL (http or https).
    pub endpoint: String,
    /// Content mode.
    #[serde(default)]
    pub mode: ContentMode,
    /// Extra headers sent with every delivery.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl HttpSettings {
    /// Parse and check settings given as a JSON object.
    pub fn from_settings(settings: &Map<String, Value>) -> Result<HttpSettings, ConfigError> {
        let s: HttpSettings = serde_json::from_value(Value::Object(settings.clone()))
            .map_err(|e| ConfigError::new("settings", e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Check the URL and header names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::http_url("endpoint", &self.endpoint)?;
        for (name, value) in &self.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::new(
                    "headers",
                    format!("{name:?} is not a valid header name"),
                ));
            }
            if http::HeaderValue::from_str(value).is_err() {
                return Err(ConfigError::new(
                    "headers",
                    format!("the value of {name:?} is not a valid header value"),
                ));
            }
        }
        Ok(())
    }
}

/// A shared, pooled HTTP client for all HTTP targets of a node.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

/// An HTTP target: a client and its settings.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    client: HttpClient,
    settings: HttpSettings,
    timeout: Duration,
}

impl HttpTarget {
    /// A target posting with `client`.
    pub fn new(client: HttpClient, settings: HttpSettings, timeout: Duration) -> HttpTarget {
        HttpTarget {
            client,
            settings,
            timeout,
        }
    }
}

impl Sink for HttpTarget {
    fn deliver<'a>(&'a self, event: &'a Event, traceparent: &'a str) -> DeliveryFuture<'a> {
        Box::pin(async move {
            self.client
                .post(event, &self.settings, self.timeout, traceparent)
                .await
                .map(|_| ())
        })
    }
}

impl HttpClient {
    /// A client with connection pooling and no global timeout (each call sets one).
    pub fn new() -> HttpClient {
        let client = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("strait/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        HttpClient { client }
    }

    /// The underlying pooled client (shared with other HTTP-based targets).
    pub fn client(&self) -> reqwest::Client {
        self.client.clone()
    }

    /// Build the request parts (headers and body) for an event. Pure, so
    /// the wire form is unit-tested.
    pub fn encode(event: &Event, mode: ContentMode) -> (Vec<(String, String)>, Vec<u8>) {
        match mode {
            ContentMode::Structured => (
                vec![(
                    "content-type".to_string(),
                    "application/cloudevents+json; charset=utf-8".to_string(),
                )],
                event.to_json_bytes(),
            ),
            ContentMode::Binary => {
                let data = event.binary_data();
                let mut headers: Vec<(String, String)> = event
                    .header_attributes()
                    .into_iter()
                    .map(|(k, v)| (format!("ce-{k}"), percent_encode_header(&v)))
                    .collect();
                if let Some(ct) = data.content_type {
                    headers.push(("content-type".into(), ct));
                }
                (headers, data.body)
            }
        }
    }

    /// POST one event. `traceparent` is the HTTP header for this attempt.
    pub async fn post(
        &self,
        event: &Event,
        target: &HttpSettings,
        timeout: Duration,
        traceparent: &str,
    ) -> Result<u16, DeliveryError> {
        let (headers, body) = Self::encode(event, target.mode);
        let mut req = self
            .client
            .post(&target.endpoint)
            .timeout(timeout)
            .header("traceparent", traceparent);
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        for (k, v) in &target.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.body(body).send().await.map_err(|e| {
            let kind = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "connection failed"
            } else if e.is_builder() {
                return DeliveryError::Permanent(format!(
                    "invalid request: {}",
                    crate::peer::error_chain(&e)
                ));
            } else {
                "request failed"
            };
            DeliveryError::Retryable(format!("{kind}: {}", crate::peer::error_chain(&e)))
        })?;
        let status = resp.status();
        if status.is_success() {
            // The body is not needed: it is not read (dropping the
            // response closes a connection whose body is still coming).
            return Ok(status.as_u16());
        }
        // Only the first few KiB of an error answer are read.
        let snippet = match crate::peer::read_capped(resp, crate::peer::ERROR_BODY_BYTES).await {
            Ok(b) => b.snippet(200),
            Err(e) => format!(
                "(reading the answer failed: {})",
                crate::peer::error_chain(&e)
            ),
        };
        let msg = format!(
            "HTTP {} from {}: {}",
            status.as_u16(),
            target.endpoint,
            snippet
        );
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(DeliveryError::Retryable(msg))
        } else {
            Err(DeliveryError::Permanent(msg))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Event {
        Event::from_structured(json!({
            "specversion": "1.0", "id": "1", "source": "/s", "type": "t",
            "subject": "a b", "myext": 5, "datacontenttype": "application/json", "data": {"k": "v"}
        }))
        .expect("valid")
    }

    #[test]
    fn binary_mode_headers() {
        let (h, body) = HttpClient::encode(&event(), ContentMode::Binary);
        let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("ce-id").as_deref(), Some("1"));
        assert_eq!(get("ce-subject").as_deref(), Some("a%20b"));
        assert_eq!(get("ce-myext").as_deref(), Some("5"));
        assert_eq!(get("content-type").as_deref(), Some("application/json"));
        assert_eq!(body, br#"{"k":"v"}"#);
    }

    fn settings(endpoint: String) -> HttpSettings {
        HttpSettings {
            endpoint,
            mode: ContentMode::Structured,
            headers: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn a_huge_error_answer_is_not_read_whole() {
        use std::sync::atomic::Ordering;
        const BODY: u64 = 200 << 20;
        let (addr, written) = crate::peer::test_server::start(400, BODY).await;
        let client = HttpClient::new();
        let started = std::time::Instant::now();
        let err = client
            .post(
                &event(),
                &settings(format!("http://{addr}/hook")),
                Duration::from_secs(60),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .await
            .expect_err("a 400 is an error");
        let took = started.elapsed();
        let DeliveryError::Permanent(msg) = &err else {
            panic!("a 400 is permanent: {err:?}")
        };
        assert!(
            msg.starts_with(&format!("HTTP 400 from http://{addr}/hook: xxx")),
            "{msg}"
        );
        assert!(msg.len() < 400, "{} bytes", msg.len());
        // The connection is closed: the server stops writing.
        let wait = std::time::Instant::now();
        while !written.done.load(Ordering::SeqCst) && wait.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let bytes = written.bytes.load(Ordering::SeqCst);
        eprintln!(
            "HTTP 400: the server wrote {bytes} of {BODY} bytes; the error came after {took:?}"
        );
        assert!(
            !written.finished.load(Ordering::SeqCst) && bytes < BODY / 8,
            "the client read {bytes} of {BODY} bytes (in {took:?})"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_says_so() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let err = HttpClient::new()
            .post(
                &event(),
                &settings(format!("http://127.0.0.1:{port}/hook")),
                Duration::from_secs(10),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .await
            .expect_err("nothing listens");
        assert!(err.is_retryable(), "{err:?}");
        assert!(
            err.to_string()
                .to_lowercase()
                .contains("connection refused"),
            "{err}"
        );
    }

    #[test]
    fn structured_mode_body() {
        let (h, body) = HttpClient::encode(&event(), ContentMode::Structured);
        assert!(h[0].1.starts_with("application/cloudevents+json"));
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["data"]["k"], "v");
    }
}
