//! Pieces shared by the AWS adapters ([`crate::aws_eventbridge`],
//! [`crate::aws_sqs`], its target and source): node-local
//! credentials, building an SDK config (region, endpoint override), the
//! X-Ray `TraceHeader` ⇄ W3C `traceparent` mapping, the generic batcher and
//! SDK error classification.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials as SdkCredentials;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::{ConfigError, DeliveryError};

/// Region used when neither the settings nor the environment name one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// A named AWS credential from the node-local config (`aws.credentials`):
/// a static key pair (optionally with a session token), the name of a
/// profile in the shared config/credentials files, or `instance_role:
/// true` (the standard AWS credential chain: environment, shared files,
/// container or instance role). It may be bound to `endpoints` and
/// `regions`: a target or source naming it elsewhere is refused.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsCredential {
    /// Access key id (static key pair).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Secret access key (static key pair).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// Session token (temporary credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// A profile of `~/.aws/config` / `~/.aws/credentials` instead of a key pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The standard AWS credential chain (it ends at the instance role)
    /// instead of a key pair or profile: an explicit opt-in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub instance_role: bool,
    /// Endpoint overrides this credential may be used with (URLs, or
    /// host names for any scheme and port). Empty: any. AWS's own
    /// endpoint (no override) is always allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// Regions this credential may be used in. Empty: any; else a target
    /// or source naming it must name one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
}

impl std::fmt::Debug for AwsCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredential")
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("profile", &self.profile)
            .field("instance_role", &self.instance_role)
            .field("endpoints", &self.endpoints)
            .field("regions", &self.regions)
            .finish()
    }
}

impl AwsCredential {
    /// Check the combination; the error names the field (relative to the
    /// credential).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, e) in self.endpoints.iter().enumerate() {
            if e.contains("://") {
                crate::http_url(&format!("endpoints[{i}]"), e)?;
            } else if e.is_empty() || e.contains('/') || e.contains('@') {
                return Err(ConfigError::new(
                    format!("endpoints[{i}]"),
                    format!("{e:?} is neither a URL nor a host name"),
                ));
            }
        }
        for (i, r) in self.regions.iter().enumerate() {
            validate_region(Some(r))
                .map_err(|e| ConfigError::new(format!("regions[{i}]"), e.message))?;
        }
        if self.instance_role {
            if self.profile.is_some()
                || self.access_key_id.is_some()
                || self.secret_access_key.is_some()
                || self.session_token.is_some()
            {
                return Err(ConfigError::new(
                    "instance_role",
                    "give either instance_role: true or a key pair / profile, not both",
                ));
            }
            return Ok(());
        }
        match (&self.profile, &self.access_key_id, &self.secret_access_key) {
            (Some(p), None, None) => {
                if p.trim().is_empty() {
                    return Err(ConfigError::new("profile", "must not be empty"));
                }
                if self.session_token.is_some() {
                    return Err(ConfigError::new(
                        "session_token",
                        "goes with access_key_id/secret_access_key, not with profile",
                    ));
                }
                Ok(())
            }
            (Some(_), _, _) => Err(ConfigError::new(
                "profile",
                "give either profile or access_key_id + secret_access_key, not both",
            )),
            (None, Some(id), Some(secret)) => {
                if id.trim().is_empty() {
                    return Err(ConfigError::new("access_key_id", "must not be empty"));
                }
                if secret.is_empty() {
                    return Err(ConfigError::new("secret_access_key", "must not be empty"));
                }
                Ok(())
            }
            (None, None, _) => Err(ConfigError::new(
                "access_key_id",
                "missing: give access_key_id + secret_access_key, profile, or instance_role: true",
            )),
            (None, Some(_), None) => Err(ConfigError::new("secret_access_key", "missing")),
        }
    }
}

/// Named credentials, shared by every AWS target of a node.
pub type AwsCredentials = Arc<BTreeMap<String, AwsCredential>>;

/// Where and as whom to call AWS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Connection {
    /// Region; else the environment's, else [`DEFAULT_REGION`].
    pub region: Option<String>,
    /// Endpoint override (e.g. a local emulator).
    pub endpoint: Option<String>,
    /// A node-local credential; `None`: the standard AWS credential chain.
    pub credential: Option<AwsCredential>,
    /// Per-operation timeout.
    pub timeout: Option<Duration>,
    /// SDK attempts per call (its own retries of throttling and 5xx).
    pub max_attempts: u32,
    /// The node's egress policy, applied to the addresses the endpoint's
    /// name resolves to (`None`: the SDK's own HTTP client).
    pub egress: Option<Arc<crate::egress::EgressPolicy>>,
}

/// A DNS resolver for the AWS SDK's HTTP client that drops the addresses
/// the egress policy denies (and fails when none is left).
#[derive(Debug, Clone)]
struct EgressDns(Arc<crate::egress::EgressPolicy>);

impl aws_smithy_runtime_api::client::dns::ResolveDns for EgressDns {
    fn resolve_dns<'a>(
        &'a self,
        name: &'a str,
    ) -> aws_smithy_runtime_api::client::dns::DnsFuture<'a> {
        use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDnsError};
        DnsFuture::new(async move {
            let found = tokio::net::lookup_host((name, 0))
                .await
                .map_err(ResolveDnsError::new)?;
            let mut denied = None;
            let kept: Vec<std::net::IpAddr> = found
                .map(|a| a.ip())
                .filter(|ip| match self.0.decide(Some(name), Some(*ip)) {
                    Ok(()) => true,
                    Err(e) => {
                        denied.get_or_insert(e);
                        false
                    }
                })
                .collect();
            match denied {
                Some(e) if kept.is_empty() => Err(ResolveDnsError::new(e)),
                _ => Ok(kept),
            }
        })
    }
}

/// Build an SDK config for `conn`.
pub async fn sdk_config(conn: &Connection) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(r) = &conn.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(e) = &conn.endpoint {
        loader = loader.endpoint_url(e.clone());
    }
    match &conn.credential {
        Some(AwsCredential {
            profile: Some(p), ..
        }) => {
            loader = loader.profile_name(p.clone());
        }
        Some(AwsCredential {
            access_key_id: Some(id),
            secret_access_key: Some(secret),
            session_token,
            ..
        }) => {
            loader = loader.credentials_provider(SdkCredentials::new(
                id.clone(),
                secret.clone(),
                session_token.clone(),
                None,
                "strait-node-config",
            ));
        }
        _ => {}
    }
    if let Some(policy) = &conn.egress {
        use aws_smithy_http_client::tls;
        loader = loader.http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(
                    tls::rustls_provider::CryptoMode::AwsLc,
                ))
                .build_with_resolver(EgressDns(policy.clone())),
        );
    }
    let mut timeouts =
        aws_config::timeout::TimeoutConfig::builder().connect_timeout(Duration::from_secs(3));
    if let Some(t) = conn.timeout {
        timeouts = timeouts.operation_attempt_timeout(t);
    }
    loader = loader.timeout_config(timeouts.build()).retry_config(
        aws_config::retry::RetryConfig::standard().with_max_attempts(conn.max_attempts.max(1)),
    );
    let cfg = loader.load().await;
    if cfg.region().is_none() {
        cfg.to_builder().region(Region::new(DEFAULT_REGION)).build()
    } else {
        cfg
    }
}

/// Check the optional region of a target or source definition.
pub fn validate_region(region: Option<&str>) -> Result<(), ConfigError> {
    if let Some(r) = region
        && (r.is_empty()
            || r.len() > 32
            || !r
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    {
        return Err(ConfigError::new(
            "region",
            format!("{r:?} is not a region name like us-east-1"),
        ));
    }
    Ok(())
}

/// Check the optional endpoint override of a target or source definition.
pub fn validate_endpoint(endpoint: Option<&str>) -> Result<(), ConfigError> {
    if let Some(e) = endpoint {
        crate::http_url("endpoint", e)?;
    }
    Ok(())
}

/// Check a credential name in target settings (the value is looked up in the
/// node config when the target is built).
pub fn validate_credential_name(name: Option<&str>) -> Result<(), ConfigError> {
    if let Some(n) = name
        && (n.is_empty()
            || n.len() > 64
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(ConfigError::new(
            "credential",
            format!("{n:?} is not a credential name of the node config's aws.credentials"),
        ));
    }
    Ok(())
}

/// The credential a target or source without `credential` uses: the one
/// named `default`, if the node has it.
pub const DEFAULT_CREDENTIAL: &str = "default";

/// Resolve a credential name against the node's credentials. Without a
/// name: the credential named [`DEFAULT_CREDENTIAL`]; without that, the
/// standard AWS chain only when `chain_fallback` (dev mode), else an error
/// naming `credential` (no silent fall back to the instance role).
pub fn resolve_credential(
    credentials: &AwsCredentials,
    name: Option<&str>,
    chain_fallback: bool,
) -> Result<Option<AwsCredential>, ConfigError> {
    match name {
        None => match credentials.get(DEFAULT_CREDENTIAL) {
            Some(c) => Ok(Some(c.clone())),
            None if chain_fallback => Ok(None),
            None => Err(ConfigError::new(
                "credential",
                "required: this node's aws.credentials has no `default` entry (name a credential, \
                 or add `default: {instance_role: true}` to use the instance role)",
            )),
        },
        Some(n) => credentials.get(n).cloned().map(Some).ok_or_else(|| {
            ConfigError::new(
                "credential",
                format!("{n:?} is not in this node's aws.credentials"),
            )
        }),
    }
}

/// Whether `endpoint` (a URL) is one of `allowed` (URLs: same scheme,
/// host and port; bare names: same host).
pub fn endpoint_allowed(allowed: &[String], endpoint: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(endpoint) else {
        return false;
    };
    let host = u.host_str().unwrap_or_default().to_ascii_lowercase();
    allowed.iter().any(|a| {
        if a.contains("://") {
            reqwest::Url::parse(a).is_ok_and(|b| {
                b.scheme() == u.scheme()
                    && b.host_str().unwrap_or_default().to_ascii_lowercase() == host
                    && b.port_or_known_default() == u.port_or_known_default()
            })
        } else {
            a.trim_end_matches('.').to_ascii_lowercase() == host
        }
    })
}

impl AwsCredential {
    /// Check that this credential (named `name`) may be used with
    /// `endpoint` (an override; `None`: AWS's own) in `region`. The error
    /// names `endpoint` or `region`.
    pub fn check_use(
        &self,
        name: &str,
        endpoint: Option<&str>,
        region: Option<&str>,
    ) -> Result<(), ConfigError> {
        if let Some(e) = endpoint
            && !self.endpoints.is_empty()
            && !endpoint_allowed(&self.endpoints, e)
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
        if !self.regions.is_empty() {
            match region {
                Some(r) if self.regions.iter().any(|x| x == r) => {}
                Some(r) => {
                    return Err(ConfigError::new(
                        "region",
                        format!(
                            "credential {name:?} may only be used in the regions {:?}, not {r:?}",
                            self.regions
                        ),
                    ));
                }
                None => {
                    return Err(ConfigError::new(
                        "region",
                        format!(
                            "required: credential {name:?} is bound to the regions {:?}",
                            self.regions
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Resolve the credential of an AWS target or source and check that it
/// may be used with `endpoint` in `region`, and that `endpoint` is within
/// the egress policy (as far as its URL tells).
pub fn resolve_for(
    ctx: &crate::SinkContext,
    name: Option<&str>,
    endpoint: Option<&str>,
    region: Option<&str>,
) -> Result<Option<AwsCredential>, ConfigError> {
    let credential = resolve_credential(&ctx.aws_credentials, name, ctx.aws_chain_fallback)?;
    if let Some(c) = &credential {
        c.check_use(name.unwrap_or(DEFAULT_CREDENTIAL), endpoint, region)?;
    }
    if let Some(e) = endpoint {
        ctx.http.policy().check_endpoint("endpoint", e)?;
    }
    Ok(credential)
}

/// W3C `traceparent` → X-Ray trace header
/// (`Root=1-{8 hex}-{24 hex};Parent={16 hex};Sampled={0|1}`), the mapping
/// X-Ray documents for W3C trace ids. `None` if `traceparent` is not valid.
pub fn traceparent_to_xray(traceparent: &str) -> Option<String> {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    if parts.len() < 4 || parts[1].len() != 32 || parts[2].len() != 16 || parts[3].len() != 2 {
        return None;
    }
    let hex = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
    if !hex(parts[1]) || !hex(parts[2]) || !hex(parts[3]) {
        return None;
    }
    let flags = u8::from_str_radix(parts[3], 16).ok()?;
    let trace = parts[1].to_ascii_lowercase();
    Some(format!(
        "Root=1-{}-{};Parent={};Sampled={}",
        &trace[..8],
        &trace[8..],
        parts[2].to_ascii_lowercase(),
        flags & 1
    ))
}

/// X-Ray trace header → W3C `traceparent`. `None` without a valid `Root`
/// and `Parent`.
pub fn xray_to_traceparent(header: &str) -> Option<String> {
    let mut root = None;
    let mut parent = None;
    let mut sampled = "0";
    for part in header.split(';') {
        let (k, v) = part.trim().split_once('=')?;
        match k.trim() {
            "Root" => root = Some(v.trim()),
            "Parent" => parent = Some(v.trim()),
            "Sampled" => sampled = if v.trim() == "1" { "1" } else { "0" },
            _ => {}
        }
    }
    let root: Vec<&str> = root?.split('-').collect();
    if root.len() != 3 || root[0] != "1" || root[1].len() != 8 || root[2].len() != 24 {
        return None;
    }
    let trace = format!("{}{}", root[1], root[2]).to_ascii_lowercase();
    let parent = parent?.to_ascii_lowercase();
    let hex = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
    if !hex(&trace) || parent.len() != 16 || !hex(&parent) {
        return None;
    }
    if trace.chars().all(|c| c == '0') || parent.chars().all(|c| c == '0') {
        return None;
    }
    Some(format!("00-{trace}-{parent}-0{sampled}"))
}

/// Can an item of `size` join a batch of `len` items totalling `bytes`?
/// Pure: the batching rule of the AWS targets.
pub fn fits(len: usize, bytes: usize, size: usize, max_items: usize, max_bytes: usize) -> bool {
    len < max_items && bytes + size <= max_bytes
}

/// Split items of the given sizes, in order, into batches of at most
/// `max_items` items and `max_bytes` bytes (an item above `max_bytes` goes
/// alone). Returns the batch lengths. Pure, for tests and documentation of
/// what the batcher does with a full queue.
pub fn split_batches(sizes: &[usize], max_items: usize, max_bytes: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let (mut len, mut bytes) = (0usize, 0usize);
    for &s in sizes {
        if len > 0 && !fits(len, bytes, s, max_items, max_bytes) {
            out.push(len);
            len = 0;
            bytes = 0;
        }
        len += 1;
        bytes += s;
    }
    if len > 0 {
        out.push(len);
    }
    out
}

/// One queued item of a batcher.
pub(crate) struct Item<T> {
    pub payload: T,
    pub size: usize,
    pub reply: oneshot::Sender<Result<(), DeliveryError>>,
}

/// Boxed future of a batch send: one result per item, in order.
pub(crate) type SendFuture = Pin<Box<dyn Future<Output = Vec<Result<(), DeliveryError>>> + Send>>;

/// Sends one batch.
pub(crate) type SendFn<T> = Arc<dyn Fn(Vec<T>) -> SendFuture + Send + Sync>;

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    pub max_items: usize,
    pub max_bytes: usize,
    pub max_delay: Duration,
}

/// Queue items and send them in batches: the first item of a batch waits at
/// most `max_delay` for company; each batch is sent on its own task so the
/// next one does not wait.
pub(crate) async fn run_batcher<T: Send + 'static>(
    mut rx: mpsc::Receiver<Item<T>>,
    limits: BatchLimits,
    send: SendFn<T>,
) {
    let mut carry: Option<Item<T>> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = first.size;
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + limits.max_delay;
        while batch.len() < limits.max_items {
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
            if !fits(
                batch.len(),
                bytes,
                p.size,
                limits.max_items,
                limits.max_bytes,
            ) {
                carry = Some(p);
                break;
            }
            bytes += p.size;
            batch.push(p);
        }
        let send = send.clone();
        tokio::spawn(async move {
            let mut payloads = Vec::with_capacity(batch.len());
            let mut replies = Vec::with_capacity(batch.len());
            for item in batch {
                payloads.push(item.payload);
                replies.push(item.reply);
            }
            let n = replies.len();
            let mut results = send(payloads).await;
            results.resize_with(n, || {
                Err(DeliveryError::Retryable(
                    "no result for this entry in the AWS answer".into(),
                ))
            });
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(r);
            }
        });
    }
}

/// Is this AWS error code worth retrying (throttling, internal errors)?
pub fn retryable_code(code: &str) -> bool {
    let c = code.to_ascii_lowercase();
    [
        "throttl",
        "toomany",
        "internal",
        "unavailable",
        "timeout",
        "limitexceeded",
        "requestexpired",
    ]
    .iter()
    .any(|p| c.contains(p))
}

/// Classify an SDK call failure: network problems, timeouts, throttling
/// and 5xx are retryable; other service errors (validation, access) are not.
pub fn classify_sdk_error<E, R>(
    what: &str,
    err: &aws_smithy_runtime_api::client::result::SdkError<E, R>,
) -> DeliveryError
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + HasStatus,
{
    use aws_smithy_runtime_api::client::result::SdkError;
    match err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status_code();
            let code = se.err().code().unwrap_or("");
            let message = se.err().message().unwrap_or("");
            let msg = format!("{what}: HTTP {status} {code}: {message}");
            if status >= 500 || status == 429 || status == 408 || retryable_code(code) {
                DeliveryError::Retryable(msg)
            } else {
                DeliveryError::Permanent(msg)
            }
        }
        SdkError::ConstructionFailure(_) => DeliveryError::Permanent(format!(
            "{what}: cannot build the request: {}",
            display_chain(err)
        )),
        other => {
            let chain = display_chain(other);
            if crate::egress::is_denial(&chain) {
                // Retrying a refused destination will not help.
                DeliveryError::Permanent(format!("{what}: {chain}"))
            } else {
                DeliveryError::Retryable(format!("{what}: {chain}"))
            }
        }
    }
}

/// A status code accessor for the raw response type of SDK errors.
pub trait HasStatus {
    /// The HTTP status code.
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_smithy_runtime_api::client::orchestrator::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// An error and its sources on one line (see [`crate::peer::error_chain`]).
pub fn display_chain(e: &dyn std::error::Error) -> String {
    crate::peer::error_chain(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_header_both_ways() {
        let tp = "00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01";
        let x = traceparent_to_xray(tp).expect("valid");
        assert_eq!(
            x,
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
        );
        assert_eq!(xray_to_traceparent(&x).as_deref(), Some(tp));
        assert_eq!(
            xray_to_traceparent("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8")
                .as_deref(),
            Some("00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-00")
        );
        assert!(traceparent_to_xray("garbage").is_none());
        assert!(xray_to_traceparent("Root=1-5759e988-bd862e3fe1be46a994272793").is_none());
        assert!(xray_to_traceparent("Root=2-x-y;Parent=53995c3f42cd8ad8").is_none());
    }

    #[test]
    fn batches_split_by_count_and_bytes() {
        assert_eq!(split_batches(&[1; 25], 10, 1000), vec![10, 10, 5]);
        assert_eq!(split_batches(&[400, 400, 400, 100], 10, 1000), vec![2, 2]);
        assert_eq!(split_batches(&[2000, 1, 1], 10, 1000), vec![1, 2]);
        assert_eq!(split_batches(&[], 10, 1000), Vec::<usize>::new());
        assert_eq!(split_batches(&[500, 500, 1], 10, 1000), vec![2, 1]);
        assert!(fits(9, 0, 10, 10, 10));
        assert!(!fits(10, 0, 1, 10, 10));
        assert!(!fits(1, 5, 6, 10, 10));
    }

    #[test]
    fn credential_validation_names_the_field() {
        let ok = AwsCredential {
            access_key_id: Some("AKID".into()),
            secret_access_key: Some("s".into()),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        assert!(format!("{ok:?}").contains("redacted"));
        let e = AwsCredential {
            access_key_id: Some("AKID".into()),
            ..Default::default()
        }
        .validate()
        .expect_err("no secret");
        assert_eq!(e.field, "secret_access_key");
        let e = AwsCredential {
            profile: Some("p".into()),
            access_key_id: Some("AKID".into()),
            ..Default::default()
        }
        .validate()
        .expect_err("both");
        assert_eq!(e.field, "profile");
        assert!(
            AwsCredential {
                profile: Some("dev".into()),
                ..Default::default()
            }
            .validate()
            .is_ok()
        );
        assert_eq!(
            AwsCredential::default()
                .validate()
                .expect_err("empty")
                .field,
            "access_key_id"
        );
        assert_eq!(
            validate_region(Some("US_EAST")).expect_err("region").field,
            "region"
        );
        assert_eq!(
            validate_endpoint(Some("ftp://x"))
                .expect_err("endpoint")
                .field,
            "endpoint"
        );
        assert!(validate_region(Some("eu-west-1")).is_ok());
        assert!(validate_endpoint(Some("http://127.0.0.1:5000")).is_ok());
        assert!(validate_region(None).is_ok() && validate_endpoint(None).is_ok());
    }

    #[test]
    fn sdk_errors_are_classified() {
        use aws_sdk_eventbridge::operation::put_events::PutEventsError;
        use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
        use aws_smithy_runtime_api::client::result::SdkError;
        use aws_smithy_types::body::SdkBody;
        use aws_smithy_types::error::ErrorMetadata;

        let service = |status: u16, code: &str| -> SdkError<PutEventsError, HttpResponse> {
            let raw = HttpResponse::new(status.try_into().expect("status"), SdkBody::empty());
            let err =
                PutEventsError::generic(ErrorMetadata::builder().code(code).message("m").build());
            SdkError::service_error(err, raw)
        };
        let c = |e: &SdkError<PutEventsError, HttpResponse>| classify_sdk_error("PutEvents", e);
        assert!(c(&service(400, "ThrottlingException")).is_retryable());
        assert!(c(&service(500, "InternalException")).is_retryable());
        assert!(c(&service(503, "")).is_retryable());
        assert!(c(&service(429, "TooManyRequests")).is_retryable());
        let v = c(&service(400, "ValidationException"));
        assert!(
            !v.is_retryable() && v.to_string().contains("ValidationException"),
            "{v}"
        );
        assert!(!c(&service(404, "ResourceNotFoundException")).is_retryable());
        assert!(!c(&service(403, "AccessDeniedException")).is_retryable());
        let t: SdkError<PutEventsError, HttpResponse> = SdkError::timeout_error("slow");
        assert!(c(&t).is_retryable());
        let d: SdkError<PutEventsError, HttpResponse> = SdkError::dispatch_failure(
            aws_smithy_runtime_api::client::result::ConnectorError::io("refused".into()),
        );
        assert!(c(&d).is_retryable());
        let k: SdkError<PutEventsError, HttpResponse> = SdkError::construction_failure("bad");
        assert!(!c(&k).is_retryable());
    }

    #[test]
    fn codes() {
        assert!(retryable_code("ThrottlingException"));
        assert!(retryable_code("InternalFailure"));
        assert!(!retryable_code("ValidationException"));
        assert!(!retryable_code("MalformedDetail"));
    }
}
