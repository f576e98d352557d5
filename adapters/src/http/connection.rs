//! Connections: the secrets of HTTP targets by reference, as AWS
//! EventBridge connections do. They live in the node-local config
//! (`connections: {name: ...}`, never replicated); a target or an HTTP
//! dead letter names one (`"connection": "name"`), and the secret is added
//! to each request here. OAuth client-credentials tokens are fetched from
//! the token endpoint, cached until shortly before they expire, and
//! fetched again once when the target answers 401.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{ConfigError, DeliveryError};

/// A connection as written in the node config: a map with exactly one of
/// `api_key`, `basic`, `oauth_client_credentials` (a plain map rather than
/// a YAML tag), and optionally the `endpoints` it may be sent to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawConnection", into = "RawConnection")]
pub struct ConnectionSpec {
    /// How requests are authorized.
    pub auth: ConnectionAuth,
    /// Endpoints targets naming this connection may have (URLs: same
    /// scheme, host and port; host names: that host). Empty: any.
    pub endpoints: Vec<String>,
}

/// A connection's authorization.
#[derive(Clone, PartialEq, Eq)]
pub enum ConnectionAuth {
    /// A header sent with every request (`{header, value}`).
    ApiKey {
        /// Header name, e.g. `x-api-key`.
        header: String,
        /// Its value (the secret).
        value: String,
    },
    /// HTTP basic authorization.
    Basic {
        /// User name.
        username: String,
        /// Password (the secret).
        password: String,
    },
    /// OAuth 2.0 client credentials grant; the token goes in
    /// `Authorization: Bearer`.
    OauthClientCredentials {
        /// The token endpoint (http or https).
        token_url: String,
        /// Client id (sent with HTTP basic authorization to the token
        /// endpoint).
        client_id: String,
        /// Client secret.
        client_secret: String,
        /// Requested scope.
        scope: Option<String>,
    },
}

/// [`ConnectionAuth`] as written: one key per kind.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_key: Option<RawApiKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    basic: Option<RawBasic>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oauth_client_credentials: Option<RawOauth>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    endpoints: Vec<String>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    header: String,
    value: String,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasic {
    username: String,
    password: String,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOauth {
    token_url: String,
    client_id: String,
    client_secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

impl TryFrom<RawConnection> for ConnectionSpec {
    type Error = String;

    fn try_from(r: RawConnection) -> Result<Self, String> {
        let endpoints = r.endpoints;
        let auth: ConnectionAuth = match (r.api_key, r.basic, r.oauth_client_credentials) {
            (Some(RawApiKey { header, value }), None, None) => {
                Ok(ConnectionAuth::ApiKey { header, value })
            }
            (None, Some(RawBasic { username, password }), None) => {
                Ok(ConnectionAuth::Basic { username, password })
            }
            (
                None,
                None,
                Some(RawOauth {
                    token_url,
                    client_id,
                    client_secret,
                    scope,
                }),
            ) => Ok(ConnectionAuth::OauthClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
            }),
            _ => Err::<ConnectionAuth, String>(
                "give exactly one of api_key, basic, oauth_client_credentials".into(),
            ),
        }?;
        Ok(ConnectionSpec { auth, endpoints })
    }
}

impl From<ConnectionSpec> for RawConnection {
    fn from(c: ConnectionSpec) -> Self {
        let mut raw = match c.auth {
            ConnectionAuth::ApiKey { header, value } => RawConnection {
                api_key: Some(RawApiKey { header, value }),
                ..Default::default()
            },
            ConnectionAuth::Basic { username, password } => RawConnection {
                basic: Some(RawBasic { username, password }),
                ..Default::default()
            },
            ConnectionAuth::OauthClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
            } => RawConnection {
                oauth_client_credentials: Some(RawOauth {
                    token_url,
                    client_id,
                    client_secret,
                    scope,
                }),
                ..Default::default()
            },
        };
        raw.endpoints = c.endpoints;
        raw
    }
}

impl std::fmt::Debug for ConnectionAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectionAuth::ApiKey { header, .. } => f
                .debug_struct("ApiKey")
                .field("header", header)
                .field("value", &"<redacted>")
                .finish(),
            ConnectionAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            ConnectionAuth::OauthClientCredentials {
                token_url,
                client_id,
                scope,
                ..
            } => f
                .debug_struct("OauthClientCredentials")
                .field("token_url", token_url)
                .field("client_id", client_id)
                .field("client_secret", &"<redacted>")
                .field("scope", scope)
                .finish(),
        }
    }
}

impl ConnectionSpec {
    /// Check the fields; the error names the field relative to the
    /// connection (`api_key.header`, `endpoints[0]`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, e) in self.endpoints.iter().enumerate() {
            let field = format!("endpoints[{i}]");
            if e.contains("://") {
                crate::http_url(&field, e)?;
            } else if e.is_empty() || e.contains('/') || e.contains('@') {
                return Err(ConfigError::new(
                    field,
                    format!("{e:?} is neither a URL nor a host name"),
                ));
            }
        }
        self.auth.validate()
    }

    /// Check that a target at `endpoint` may use this connection (named
    /// `name`) and, with `follow_redirects`, that no secret can follow a
    /// redirect; the error names the target's field.
    pub fn check_use(
        &self,
        name: &str,
        endpoint: &str,
        follow_redirects: bool,
    ) -> Result<(), ConfigError> {
        if !self.endpoints.is_empty()
            && !crate::aws_common::endpoint_allowed(&self.endpoints, endpoint)
        {
            return Err(ConfigError::new(
                "endpoint",
                format!(
                    "connection {name:?} may only be used with the endpoints {:?}, not {}",
                    self.endpoints,
                    crate::egress::redact_url(endpoint)
                ),
            ));
        }
        if follow_redirects && matches!(self.auth, ConnectionAuth::ApiKey { .. }) {
            // Authorization is dropped on a redirect to another host; an
            // API key header would go along.
            return Err(ConfigError::new(
                "followRedirects",
                format!(
                    "connection {name:?} sends an API key header, which a redirect would carry \
                     to another host: do not follow redirects with it"
                ),
            ));
        }
        Ok(())
    }
}

impl ConnectionAuth {
    /// Check the fields; the error names the field relative to the
    /// connection (`api_key.header`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            ConnectionAuth::ApiKey { header, value } => {
                if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    return Err(ConfigError::new(
                        "api_key.header",
                        format!("{header:?} is not a valid header name"),
                    ));
                }
                if value.is_empty() || http::HeaderValue::from_str(value).is_err() {
                    return Err(ConfigError::new(
                        "api_key.value",
                        "must be a non-empty, valid header value",
                    ));
                }
            }
            ConnectionAuth::Basic { username, password } => {
                if username.is_empty() || username.contains(':') {
                    return Err(ConfigError::new(
                        "basic.username",
                        "must be non-empty and without ':'",
                    ));
                }
                if password.is_empty() {
                    return Err(ConfigError::new("basic.password", "must not be empty"));
                }
            }
            ConnectionAuth::OauthClientCredentials {
                token_url,
                client_id,
                client_secret,
                ..
            } => {
                crate::http_url("oauth_client_credentials.token_url", token_url)?;
                crate::egress::refuse_userinfo("oauth_client_credentials.token_url", token_url)?;
                if client_id.is_empty() {
                    return Err(ConfigError::new(
                        "oauth_client_credentials.client_id",
                        "must not be empty",
                    ));
                }
                if client_secret.is_empty() {
                    return Err(ConfigError::new(
                        "oauth_client_credentials.client_secret",
                        "must not be empty",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A token from the token endpoint.
#[derive(Clone)]
struct Token {
    value: String,
    /// Fetch a new one from then on (shortly before it expires).
    refresh_at: Instant,
}

/// A connection of the running node: its spec and, for OAuth, the cached
/// token (shared by every target naming the connection).
pub struct Connection {
    name: String,
    spec: ConnectionSpec,
    token: tokio::sync::Mutex<Option<Token>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("name", &self.name)
            .field("spec", &self.spec)
            .finish()
    }
}

/// The connections of a node by name.
pub type Connections = Arc<BTreeMap<String, Arc<Connection>>>;

/// Build the running connections from the node config.
pub fn connections(specs: &BTreeMap<String, ConnectionSpec>) -> Connections {
    Arc::new(
        specs
            .iter()
            .map(|(n, s)| (n.clone(), Arc::new(Connection::new(n, s.clone()))))
            .collect(),
    )
}

/// Answer of a token endpoint (RFC 6749 section 5.1).
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Lifetime assumed when the token endpoint does not say.
const DEFAULT_TOKEN_SECS: u64 = 300;

/// How long before its expiry a token is replaced: a tenth of its life,
/// between 1 s and 60 s.
fn refresh_margin(life: u64) -> u64 {
    (life / 10).clamp(1, 60)
}

impl Connection {
    /// A connection named `name`.
    pub fn new(name: &str, spec: ConnectionSpec) -> Connection {
        Connection {
            name: name.to_string(),
            spec,
            token: tokio::sync::Mutex::new(None),
        }
    }

    /// The name in the node config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The connection as configured.
    pub fn spec(&self) -> &ConnectionSpec {
        &self.spec
    }

    /// Whether a 401 answer is worth one more try with a new token.
    pub fn refreshes(&self) -> bool {
        matches!(
            self.spec.auth,
            ConnectionAuth::OauthClientCredentials { .. }
        )
    }

    /// Add the authorization to `req`; `client` fetches OAuth tokens (a
    /// fresh one when `fresh`).
    pub async fn authorize(
        &self,
        client: &reqwest::Client,
        req: reqwest::RequestBuilder,
        timeout: Duration,
        fresh: bool,
    ) -> Result<reqwest::RequestBuilder, DeliveryError> {
        Ok(match &self.spec.auth {
            ConnectionAuth::ApiKey { header, value } => req.header(header.as_str(), value.as_str()),
            ConnectionAuth::Basic { username, password } => {
                req.basic_auth(username, Some(password))
            }
            ConnectionAuth::OauthClientCredentials { .. } => {
                let token = self.token(client, timeout, fresh).await?;
                req.bearer_auth(token)
            }
        })
    }

    /// The cached token, or a new one from the token endpoint.
    async fn token(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
        fresh: bool,
    ) -> Result<String, DeliveryError> {
        let mut cached = self.token.lock().await;
        if !fresh
            && let Some(t) = cached.as_ref()
            && Instant::now() < t.refresh_at
        {
            return Ok(t.value.clone());
        }
        let t = self.fetch(client, timeout).await?;
        let value = t.value.clone();
        *cached = Some(t);
        Ok(value)
    }

    async fn fetch(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
    ) -> Result<Token, DeliveryError> {
        let ConnectionAuth::OauthClientCredentials {
            token_url,
            client_id,
            client_secret,
            scope,
        } = &self.spec.auth
        else {
            return Err(DeliveryError::Permanent(format!(
                "connection {:?} has no token endpoint",
                self.name
            )));
        };
        let shown = crate::egress::redact_url(token_url);
        let fail = |what: String| {
            format!(
                "connection {:?}: token request to {shown} {what}",
                self.name
            )
        };
        let mut form = reqwest::Url::parse("http://form.invalid/")
            .map_err(|e| DeliveryError::Permanent(fail(format!("cannot be built: {e}"))))?;
        {
            let mut q = form.query_pairs_mut();
            q.append_pair("grant_type", "client_credentials");
            if let Some(s) = scope {
                q.append_pair("scope", s);
            }
        }
        let body = form.query().unwrap_or_default().to_string();
        let started = Instant::now();
        let resp = client
            .post(token_url)
            .timeout(timeout)
            .basic_auth(client_id, Some(client_secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let chain = crate::peer::error_chain(&e.without_url());
                if crate::egress::is_denial(&chain) {
                    DeliveryError::Permanent(fail(format!("refused: {chain}")))
                } else {
                    DeliveryError::Retryable(fail(format!("failed: {chain}")))
                }
            })?;
        let status = resp.status();
        let answer = crate::peer::read_capped(resp, 64 * 1024)
            .await
            .map_err(|e| {
                DeliveryError::Retryable(fail(format!(
                    "failed reading the answer: {}",
                    crate::peer::error_chain(&e.without_url())
                )))
            })?;
        if !status.is_success() {
            // The answer's text is not repeated: a token endpoint may echo
            // what it was sent.
            let msg = fail(format!("answered HTTP {}", status.as_u16()));
            return Err(
                if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                    DeliveryError::Retryable(msg)
                } else {
                    DeliveryError::Permanent(msg)
                },
            );
        }
        if answer.truncated {
            return Err(DeliveryError::Retryable(fail(
                "answered with more than 64 KiB".into(),
            )));
        }
        let t: TokenAnswer = serde_json::from_slice(&answer.bytes).map_err(|e| {
            DeliveryError::Retryable(fail(format!("answered without a token: {e}")))
        })?;
        if let Some(tt) = &t.token_type
            && !tt.eq_ignore_ascii_case("bearer")
        {
            return Err(DeliveryError::Permanent(fail(format!(
                "answered token_type {tt:?} (only bearer tokens are supported)"
            ))));
        }
        if t.access_token.is_empty() || http::HeaderValue::from_str(&t.access_token).is_err() {
            return Err(DeliveryError::Retryable(fail(
                "answered an empty or invalid access_token".into(),
            )));
        }
        let life = t.expires_in.unwrap_or(DEFAULT_TOKEN_SECS);
        let refresh_in = life.saturating_sub(refresh_margin(life));
        tracing::debug!(connection = %self.name, expires_in = life, "OAuth token fetched");
        Ok(Token {
            value: t.access_token,
            refresh_at: started + Duration::from_secs(refresh_in),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn specs_parse_and_hide_secrets() {
        let s: ConnectionSpec =
            serde_json::from_value(json!({"api_key": {"header": "x-api-key", "value": "CANARY"}}))
                .expect("api key");
        s.validate().expect("valid");
        assert!(!format!("{s:?}").contains("CANARY"));
        let s: ConnectionSpec = serde_json::from_value(json!({"oauth_client_credentials": {
            "token_url": "https://auth.example.com/token", "client_id": "c",
            "client_secret": "CANARY", "scope": "events"}}))
        .expect("oauth");
        s.validate().expect("valid");
        assert!(!format!("{s:?}").contains("CANARY"));
        let bad: ConnectionSpec = serde_json::from_value(json!({"oauth_client_credentials": {
            "token_url": "https://u:p@auth.example.com/token", "client_id": "c",
            "client_secret": "x"}}))
        .expect("parses");
        assert_eq!(
            bad.validate().expect_err("userinfo").field,
            "oauth_client_credentials.token_url"
        );
        assert!(
            serde_json::from_value::<ConnectionSpec>(
                json!({"basic": {"username": "u", "password": "p", "extra": 1}})
            )
            .is_err()
        );
        let two = serde_json::from_value::<ConnectionSpec>(json!({
            "basic": {"username": "u", "password": "p"},
            "api_key": {"header": "h", "value": "v"}}))
        .expect_err("two kinds");
        assert!(two.to_string().contains("exactly one"), "{two}");
        // Bound to endpoints; an API key never follows a redirect.
        let s: ConnectionSpec = serde_json::from_value(json!({
            "api_key": {"header": "x-api-key", "value": "v"},
            "endpoints": ["https://api.example.com", "hooks.example.com"]}))
        .expect("bound");
        s.validate().expect("valid");
        s.check_use("k", "https://api.example.com/events", false)
            .expect("bound endpoint");
        s.check_use("k", "http://hooks.example.com:8080/x", false)
            .expect("bound host");
        assert_eq!(
            s.check_use("k", "https://evil.example.net/", false)
                .expect_err("elsewhere")
                .field,
            "endpoint"
        );
        assert_eq!(
            s.check_use("k", "https://api.example.com/x", true)
                .expect_err("redirects")
                .field,
            "followRedirects"
        );
    }

    /// A token endpoint answering `expires_in: life`, counting its calls.
    async fn token_endpoint(life: u64) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let app = axum::Router::new().route(
            "/token",
            axum::routing::post(move || {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    axum::Json(
                        json!({"access_token": format!("t{n}"), "token_type": "bearer",
                        "expires_in": life}),
                    )
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        (format!("http://{addr}/token"), calls)
    }

    fn oauth(url: &str) -> Connection {
        Connection::new(
            "c",
            ConnectionSpec {
                auth: ConnectionAuth::OauthClientCredentials {
                    token_url: url.to_string(),
                    client_id: "id".into(),
                    client_secret: "secret".into(),
                    scope: None,
                },
                endpoints: Vec::new(),
            },
        )
    }

    #[tokio::test]
    async fn tokens_are_cached_until_shortly_before_expiry() {
        use std::sync::atomic::Ordering;
        let client = reqwest::Client::new();
        let t = Duration::from_secs(10);
        let (url, calls) = token_endpoint(3600).await;
        let c = oauth(&url);
        assert_eq!(c.token(&client, t, false).await.expect("token"), "t1");
        assert_eq!(c.token(&client, t, false).await.expect("cached"), "t1");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(c.token(&client, t, true).await.expect("fresh"), "t2");
        // A token living 1 s is replaced at once (its margin is 1 s).
        let (url, calls) = token_endpoint(1).await;
        let c = oauth(&url);
        assert_eq!(c.token(&client, t, false).await.expect("token"), "t1");
        assert_eq!(c.token(&client, t, false).await.expect("token"), "t2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_token_endpoint_error_does_not_show_the_secret() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let c = oauth(&format!("http://127.0.0.1:{port}/token"));
        let e = c
            .token(&reqwest::Client::new(), Duration::from_secs(5), false)
            .await
            .expect_err("nothing listens");
        assert!(e.is_retryable(), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn tokens_are_replaced_before_they_expire() {
        assert_eq!(refresh_margin(3600), 60);
        assert_eq!(refresh_margin(100), 10);
        assert_eq!(refresh_margin(5), 1);
    }
}
