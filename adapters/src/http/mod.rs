//! HTTP target: delivers CloudEvents in binary or structured content mode.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use strait_routing::event::{Event, percent_encode_header};

use crate::egress::{EgressPolicy, EgressResolver};
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

pub mod connection;

pub use connection::{Connection, ConnectionAuth, ConnectionSpec, Connections};

/// Settings of an HTTP target (the fields next to `id` and `type`), also
/// an HTTP dead letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    /// URL (http or https), without user info.
    pub endpoint: String,
    /// Content mode.
    #[serde(default)]
    pub mode: ContentMode,
    /// Extra headers sent with every delivery (shown as `***` by the API:
    /// secrets belong in a connection).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A connection of the delivering node's config (`connections`) whose
    /// authorization is added to every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// Follow redirects (within the node's egress policy). Default: a
    /// redirect is an error.
    #[serde(default, skip_serializing_if = "is_false")]
    pub follow_redirects: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl HttpSettings {
    /// Parse and check settings given as a JSON object.
    pub fn from_settings(settings: &Map<String, Value>) -> Result<HttpSettings, ConfigError> {
        let s: HttpSettings = serde_json::from_value(Value::Object(settings.clone()))
            .map_err(|e| ConfigError::new("settings", e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Check the URL (no user info), header names and the connection name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::http_url("endpoint", &self.endpoint)?;
        crate::egress::refuse_userinfo("endpoint", &self.endpoint)?;
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
        if let Some(c) = &self.connection
            && (c.is_empty()
                || c.len() > 64
                || !c
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(ConfigError::new(
                "connection",
                format!("{c:?} is not a connection name of the node config's connections"),
            ));
        }
        Ok(())
    }

    /// Check what depends on the delivering node: the connection exists
    /// and the endpoint is within the egress policy (as far as the URL
    /// tells).
    pub fn check_here(&self, ctx: &crate::SinkContext) -> Result<(), ConfigError> {
        self.resolve_connection(&ctx.connections)?;
        ctx.http.policy().check_endpoint("endpoint", &self.endpoint)
    }

    fn resolve_connection(
        &self,
        connections: &Connections,
    ) -> Result<Option<Arc<Connection>>, ConfigError> {
        let Some(n) = &self.connection else {
            return Ok(None);
        };
        let c = connections.get(n).cloned().ok_or_else(|| {
            ConfigError::new(
                "connection",
                format!("{n:?} is not in this node's connections"),
            )
        })?;
        c.spec()
            .check_use(n, &self.endpoint, self.follow_redirects)?;
        Ok(Some(c))
    }
}

/// A shared, pooled HTTP client for all HTTP targets of a node, with the
/// node's egress policy: checked on the URL before each request and on
/// the resolved addresses at connect time. Redirects are not followed,
/// except by targets that opt in (then each hop is checked too).
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    follow: reqwest::Client,
    policy: Arc<EgressPolicy>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

/// An HTTP target: a client, its settings and its connection.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    client: HttpClient,
    settings: HttpSettings,
    timeout: Duration,
    connection: Option<Arc<Connection>>,
}

impl HttpTarget {
    /// A target posting with `client` (without a connection; see
    /// [`HttpTarget::build`]).
    pub fn new(client: HttpClient, settings: HttpSettings, timeout: Duration) -> HttpTarget {
        HttpTarget {
            client,
            settings,
            timeout,
            connection: None,
        }
    }

    /// A target of the node `ctx`: its connection resolved (an unknown
    /// one is an error naming `connection`) and its endpoint checked
    /// against the egress policy.
    pub fn build(
        ctx: &crate::SinkContext,
        settings: HttpSettings,
        timeout: Duration,
    ) -> Result<HttpTarget, ConfigError> {
        ctx.http
            .policy()
            .check_endpoint("endpoint", &settings.endpoint)?;
        let connection = settings.resolve_connection(&ctx.connections)?;
        Ok(HttpTarget {
            client: ctx.http.clone(),
            settings,
            timeout,
            connection,
        })
    }

    /// The endpoint as messages show it (without user info).
    pub fn shown_endpoint(&self) -> String {
        crate::egress::redact_url(&self.settings.endpoint)
    }
}

impl Sink for HttpTarget {
    fn deliver<'a>(&'a self, event: &'a Event, traceparent: &'a str) -> DeliveryFuture<'a> {
        Box::pin(async move {
            self.client
                .send(
                    event,
                    &self.settings,
                    self.connection.as_deref(),
                    self.timeout,
                    traceparent,
                )
                .await
                .map(|_| ())
        })
    }
}

/// Redirects followed at most by a target that opts in.
const MAX_REDIRECTS: usize = 10;

impl HttpClient {
    /// A client with connection pooling and no global timeout (each call
    /// sets one), under the default egress policy (cloud metadata
    /// addresses denied).
    pub fn new() -> HttpClient {
        Self::with_egress(Arc::new(EgressPolicy::default()))
    }

    /// A client under `policy`.
    pub fn with_egress(policy: Arc<EgressPolicy>) -> HttpClient {
        let build = |redirect: reqwest::redirect::Policy| {
            reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(30))
                .user_agent(concat!("strait/", env!("CARGO_PKG_VERSION")))
                .dns_resolver(Arc::new(EgressResolver::new(policy.clone())))
                .redirect(redirect)
                .build()
        };
        let hops = policy.clone();
        let follow = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                let n = attempt.previous().len();
                return attempt.error(format!("more than {n} redirects"));
            }
            match hops.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        });
        // Building fails only when the TLS backend cannot start; the
        // default client would fail the same way.
        let client = build(reqwest::redirect::Policy::none()).unwrap_or_else(|e| {
            tracing::error!(error = %e, "HTTP client without egress control");
            reqwest::Client::new()
        });
        let follow = build(follow).unwrap_or_else(|_| client.clone());
        HttpClient {
            client,
            follow,
            policy,
        }
    }

    /// The underlying pooled client (shared with other HTTP-based
    /// targets): it does not follow redirects, and applies the egress
    /// policy to the addresses names resolve to.
    pub fn client(&self) -> reqwest::Client {
        self.client.clone()
    }

    /// The egress policy.
    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// The egress policy, shared (for clients of other libraries).
    pub fn policy_arc(&self) -> Arc<EgressPolicy> {
        self.policy.clone()
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

    /// POST one event without a connection. `traceparent` is the HTTP
    /// header for this attempt.
    pub async fn post(
        &self,
        event: &Event,
        target: &HttpSettings,
        timeout: Duration,
        traceparent: &str,
    ) -> Result<u16, DeliveryError> {
        self.send(event, target, None, timeout, traceparent).await
    }

    /// POST one event, authorized by `connection` (a 401 answer with an
    /// OAuth connection is tried once more with a new token).
    pub async fn send(
        &self,
        event: &Event,
        target: &HttpSettings,
        connection: Option<&Connection>,
        timeout: Duration,
        traceparent: &str,
    ) -> Result<u16, DeliveryError> {
        let shown = crate::egress::redact_url(&target.endpoint);
        let url = reqwest::Url::parse(&target.endpoint)
            .map_err(|e| DeliveryError::Permanent(format!("invalid endpoint {shown}: {e}")))?;
        self.policy
            .check_url(&url)
            .map_err(|e| DeliveryError::Permanent(format!("{e} (endpoint {shown})")))?;
        let client = if target.follow_redirects {
            &self.follow
        } else {
            &self.client
        };
        let (headers, body) = Self::encode(event, target.mode);
        let mut fresh = false;
        let resp = loop {
            let mut req = client
                .post(url.clone())
                .timeout(timeout)
                .header("traceparent", traceparent);
            for (k, v) in &headers {
                req = req.header(k.as_str(), v.as_str());
            }
            for (k, v) in &target.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            if let Some(c) = connection {
                req = c.authorize(client, req, timeout, fresh).await?;
            }
            let resp = req
                .body(body.clone())
                .send()
                .await
                .map_err(|e| request_error(e, &shown))?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED
                && !fresh
                && connection.is_some_and(Connection::refreshes)
            {
                // The token may have been revoked: one more try with a new one.
                fresh = true;
                continue;
            }
            break resp;
        };
        let status = resp.status();
        if status.is_success() {
            // The body is not needed: it is not read (dropping the
            // response closes a connection whose body is still coming).
            return Ok(status.as_u16());
        }
        if status.is_redirection() {
            let to = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(crate::egress::redact_url)
                .unwrap_or_default();
            return Err(DeliveryError::Permanent(format!(
                "HTTP {} from {shown}: redirect to {to:?} not followed (the target does not set followRedirects)",
                status.as_u16()
            )));
        }
        // Only the first few KiB of an error answer are read.
        let snippet = match crate::peer::read_capped(resp, crate::peer::ERROR_BODY_BYTES).await {
            Ok(b) => b.snippet(200),
            Err(e) => format!(
                "(reading the answer failed: {})",
                crate::peer::error_chain(&e.without_url())
            ),
        };
        let msg = format!("HTTP {} from {shown}: {snippet}", status.as_u16());
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(DeliveryError::Retryable(msg))
        } else {
            Err(DeliveryError::Permanent(msg))
        }
    }
}

/// A request that got no answer, as a delivery error (egress refusals
/// and invalid requests are permanent); the URL is shown as `shown`.
fn request_error(e: reqwest::Error, shown: &str) -> DeliveryError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_redirect() {
        "redirect failed"
    } else if e.is_builder() {
        "invalid request"
    } else {
        "request failed"
    };
    let builder = e.is_builder();
    let chain = crate::peer::error_chain(&e.without_url());
    let msg = format!("{kind}: {chain} (endpoint {shown})");
    if builder || crate::egress::is_denial(&chain) {
        DeliveryError::Permanent(msg)
    } else {
        DeliveryError::Retryable(msg)
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
            connection: None,
            follow_redirects: false,
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
