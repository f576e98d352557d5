//! Node configuration: a YAML file, flags on top, validation that names the
//! field.

pub mod bus;
pub mod bus_target;
pub mod check;
pub mod keys;
pub mod rule;
pub mod source;
pub mod tokens;

use std::path::{Path, PathBuf};

pub use source::AwsSource;
pub use tokens::{ScopedToken, TokenSpec};

use serde::{Deserialize, Serialize};

/// Request and event size limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest event (JSON structured form), bytes.
    pub max_event_bytes: usize,
    /// Largest request body, bytes.
    pub max_request_bytes: usize,
    /// Most events in one batch request.
    pub max_batch_events: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 256 * 1024,
            max_request_bytes: 4 * 1024 * 1024,
            max_batch_events: 1000,
        }
    }
}

/// Credentials for the HTTP API outside dev mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// Accepted bearer tokens: a plain string is a token with the `admin`
    /// scope; an entry names a token (or its SHA-256) and its scopes.
    pub tokens: Vec<TokenSpec>,
    /// `GET /metrics` without a token (default true); `false`: it needs
    /// a token with the `read` scope.
    pub metrics_public: bool,
    /// How often the config file is checked for changed tokens, ms
    /// (default 2000); `SIGHUP` reads it at once. Only `auth.tokens` is
    /// taken from the file read again.
    pub reload_interval_ms: u64,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            tokens: Vec::new(),
            metrics_public: true,
            reload_interval_ms: 2000,
        }
    }
}

impl Auth {
    /// The token this node sends when it asks a site to add it
    /// (`cluster.join`): the first one given in clear with the `admin`
    /// scope.
    pub fn join_token(&self) -> Option<&str> {
        self.tokens.iter().find_map(|t| match t {
            TokenSpec::Plain(s) => Some(s.as_str()),
            TokenSpec::Scoped(e) if e.scopes.iter().any(|s| s == "admin") => e.token.as_deref(),
            TokenSpec::Scoped(_) => None,
        })
    }
}

/// TLS on the HTTP listener (`http_tls:`): PEM files, reloaded without a
/// restart when they change on disk (see docs/operations.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    /// The server certificate chain (leaf first), PEM.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM bundle) that client certificates must chain
    /// to. Set: every client must present a valid certificate (mutual
    /// TLS). Unset: no client certificates are asked for.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// CA certificates (PEM bundle) that the HTTPS certificates of the other
    /// nodes of this site chain to, for requests one node passes to another
    /// (membership changes, `cluster.join`). Default: the cluster CA
    /// (`cluster.certs_dir/ca.pem`); without either, the system's roots.
    #[serde(default)]
    pub peer_ca: Option<PathBuf>,
    /// How often the files are checked for changes, ms.
    #[serde(default = "default_tls_reload_ms")]
    pub reload_interval_ms: u64,
}

fn default_tls_reload_ms() -> u64 {
    2_000
}

/// Timeouts and connection caps of the HTTP listener (`http_server:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpServer {
    /// A connection that has sent part of a request (or of a TLS
    /// handshake) must complete the request's headers within this, ms.
    pub header_timeout_ms: u64,
    /// A request's body must be read completely within this of its
    /// headers, ms (else 408).
    pub body_timeout_ms: u64,
    /// A connection with no request in progress and nothing sent is
    /// closed after this, ms.
    pub idle_timeout_ms: u64,
    /// Most open connections; further ones are closed at once.
    pub max_connections: usize,
    /// Most open connections from one peer IP address.
    pub max_connections_per_ip: usize,
    /// On shutdown, requests in progress get this long to finish, ms.
    pub shutdown_timeout_ms: u64,
}

impl Default for HttpServer {
    fn default() -> Self {
        HttpServer {
            header_timeout_ms: 10_000,
            body_timeout_ms: 60_000,
            idle_timeout_ms: 60_000,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            shutdown_timeout_ms: 10_000,
        }
    }
}

/// Dispatcher tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dispatch {
    /// How often target progress is checkpointed through Raft.
    pub checkpoint_interval_ms: u64,
    /// Events read from storage per batch.
    pub read_batch: usize,
    /// Most events a replay sends per second (each replay on its own), so
    /// that replays leave the targets room for live traffic (see
    /// docs/replay.md); 0 removes the cap (the targets' `concurrency` still
    /// bounds a replay).
    pub replay_max_events_per_sec: u64,
}

impl Default for Dispatch {
    fn default() -> Self {
        Dispatch {
            checkpoint_interval_ms: 200,
            read_batch: 256,
            replay_max_events_per_sec: 1000,
        }
    }
}

/// Group commit tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Batching {
    /// Most events in one Raft proposal.
    pub max_events_per_proposal: usize,
    /// Most bytes of events in one Raft proposal; 0: 800 kB in a cluster (a
    /// follower must take an entry within one heartbeat, and an encoded
    /// entry then fits one 1 MiB page of the log store: a larger one takes
    /// a 2 MiB page and costs ~25 % more per event to write), unlimited
    /// alone.
    pub max_bytes_per_proposal: usize,
    /// Proposals in flight at once.
    pub max_in_flight: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max_events_per_proposal: 8192,
            max_bytes_per_proposal: 0,
            max_in_flight: 2,
        }
    }
}

/// Telemetry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Telemetry {
    /// OTLP/HTTP traces endpoint (e.g. `http://127.0.0.1:4318/v1/traces`); off when unset.
    pub otlp_endpoint: Option<String>,
    /// Share of the traces started here that are exported, 0.0 to 1.0
    /// (default 1.0). A trace continued from a producer follows the
    /// producer's `sampled` flag (parent-based).
    pub sample_ratio: f64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            otlp_endpoint: None,
            sample_ratio: 1.0,
        }
    }
}

/// An AccessKey pair accepted by the Alibaba-compatible ingress.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlibabaIngressKey {
    /// AccessKey ID.
    pub access_key_id: String,
    /// AccessKey secret.
    pub access_key_secret: String,
    /// If set, requests must carry this `x-acs-security-token` (STS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_token: Option<String>,
}

impl std::fmt::Debug for AlibabaIngressKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlibabaIngressKey")
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"<redacted>")
            .finish()
    }
}

/// The HTTP push source for Alibaba EventBridge HTTP targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlibabaPush {
    /// Reject pushes without a valid `x-eventbridge-signature`. Default true.
    pub require_signature: bool,
    /// Trusted signing keys: `x-eventbridge-signature-url` value → PEM file
    /// (public key or certificate) on this node. Never fetched at run time.
    pub public_keys: std::collections::BTreeMap<String, PathBuf>,
    /// Replay window: the signature timestamp must be this close to now.
    pub max_age_secs: u64,
    /// The URL as configured on the Alibaba HTTP target, without the path
    /// (e.g. `https://gw.example.com`), when Strait is behind a proxy. Else
    /// `http://{Host}`.
    pub public_url: Option<String>,
}

impl Default for AlibabaPush {
    fn default() -> Self {
        AlibabaPush {
            require_signature: true,
            public_keys: Default::default(),
            max_age_secs: 60,
            public_url: None,
        }
    }
}

/// Alibaba Cloud: node-local secrets and the ingress settings. Never
/// replicated; targets name a credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Alibaba {
    /// Credentials for `alibaba_eventbridge` targets, by name.
    pub credentials:
        std::collections::BTreeMap<String, strait_adapters::alibaba_eventbridge::Credential>,
    /// AccessKey pairs that may call `POST /openapi/putEvents`. Empty: the
    /// endpoint rejects every request.
    pub ingress_keys: Vec<AlibabaIngressKey>,
    /// Largest allowed distance between the `Date` header and the clock.
    pub max_clock_skew_secs: u64,
    /// Value of `ResourceOwnerAccountId` in PutEvents answers.
    pub account_id: String,
    /// HTTP push source.
    pub push: AlibabaPush,
    /// Refuse PutEvents without `x-acs-signature-nonce` (default: yes,
    /// except in dev mode). Nonces are single use in the whole site, also
    /// across restarts (docs/security.md).
    pub require_nonce: Option<bool>,
    /// Refuse PutEvents without `Content-MD5`, so that the signature
    /// covers the body (default: no; the official SDKs send it).
    pub require_content_md5: bool,
}

impl Default for Alibaba {
    fn default() -> Self {
        Alibaba {
            credentials: Default::default(),
            ingress_keys: Vec::new(),
            max_clock_skew_secs: 900,
            account_id: "strait".into(),
            push: AlibabaPush::default(),
            require_nonce: None,
            require_content_md5: false,
        }
    }
}

/// An access key pair accepted by the AWS-compatible PutEvents ingress.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsIngressKey {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl std::fmt::Debug for AwsIngressKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsIngressKey")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

fn default_ingress_path() -> String {
    "/".into()
}

/// AWS: node-local credentials, the PutEvents ingress and SQS sources.
/// Never replicated; targets name a credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Aws {
    /// Credentials for `aws_eventbridge` / `aws_sqs` targets and sources, by name.
    pub credentials: std::collections::BTreeMap<String, strait_adapters::aws_common::AwsCredential>,
    /// Key pairs that may call the PutEvents ingress. Empty: it rejects
    /// every request.
    pub ingress_keys: Vec<AwsIngressKey>,
    /// Path of the PutEvents ingress.
    #[serde(default = "default_ingress_path")]
    pub ingress_path: String,
    /// Largest allowed distance between the signed date and the clock.
    pub max_clock_skew_secs: u64,
    /// The `account` of events that came in through the ingress.
    pub account_id: String,
    /// SQS queues polled into buses.
    pub sources: Vec<AwsSource>,
    /// Accept each SigV4 signature of the PutEvents ingress once: the
    /// site remembers signatures for twice `max_clock_skew_secs`, so a
    /// captured request cannot be sent again (default: off, as at AWS).
    pub replay_cache: bool,
}

impl Default for Aws {
    fn default() -> Self {
        Aws {
            credentials: Default::default(),
            ingress_keys: Vec::new(),
            ingress_path: default_ingress_path(),
            max_clock_skew_secs: 300,
            account_id: "000000000000".into(),
            sources: Vec::new(),
            replay_cache: false,
        }
    }
}

/// The whole node configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Raft node id.
    pub node_id: u64,
    /// Site name.
    pub site: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub http: String,
    /// TLS on the HTTP listener (plain HTTP when unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_tls: Option<HttpTls>,
    /// Timeouts and connection caps of the HTTP listener.
    pub http_server: HttpServer,
    /// Dev mode: no auth.
    pub dev: bool,
    /// API credentials.
    pub auth: Auth,
    /// Size limits.
    pub limits: Limits,
    /// Dedup window for (bus, source, id); one hour by default, the
    /// default retention (the index costs disk per event of the window).
    pub dedup_window_secs: u64,
    /// Delivered events are kept at least this long.
    pub retention_secs: u64,
    /// New events are refused (HTTP 507 `StateFull`, links and sources
    /// back off) while the site's state holds this many bytes or more:
    /// events, link queues and the dedup index, as stored (compressed).
    /// They are accepted again once retention frees space. 0: no limit.
    /// See docs/operations.md for the disk this takes.
    pub max_state_bytes: u64,
    /// Snapshot (and purge the Raft log) after this many entries.
    pub snapshot_every: u64,
    /// Fsync the applied state at most this often, ms (0: on every apply).
    pub state_flush_ms: u64,
    /// Fsync the Raft log at most this often, ms. 0 (the default): every
    /// append is fsynced before it counts, so an acknowledged event is on
    /// the disks of a quorum. Otherwise an acknowledged event is in the
    /// operating system of a quorum (it survives any process being killed)
    /// and reaches their disks within this interval.
    pub log_sync_ms: u64,
    /// After a storage error stops this node's Raft (a full disk, an I/O
    /// error), exit with code 74 this many seconds later so that a
    /// supervisor restarts it; until then `/readyz` answers 503 and writes
    /// 507 (docs/operations.md). 0: never exit, keep answering so until
    /// restarted by hand.
    pub storage_failure_exit_secs: u64,
    /// Buses created at start if missing.
    pub buses: Vec<String>,
    /// Dispatcher tuning.
    pub dispatch: Dispatch,
    /// Group commit tuning.
    pub batching: Batching,
    /// Telemetry.
    pub telemetry: Telemetry,
    /// Alibaba Cloud secrets, ingress and push source.
    pub alibaba: Alibaba,
    /// Site cluster membership and the QUIC transport (one-node site when
    /// `cluster.listen` is unset).
    pub cluster: Cluster,
    /// Links to other sites.
    pub federation: Federation,
    /// The control group replicating buses and rules to every site
    /// (disabled when `control.members` is empty).
    pub control: Control,
    /// AWS secrets, PutEvents ingress and SQS sources.
    pub aws: Aws,
    /// Secrets of HTTP targets and HTTP dead letters by name (API key,
    /// basic, OAuth client credentials); targets name one with
    /// `"connection"`. Never replicated nor shown.
    pub connections: std::collections::BTreeMap<String, strait_adapters::http::ConnectionSpec>,
    /// Which hosts and addresses targets and dead letters may reach
    /// (cloud metadata addresses are denied unless allowed explicitly).
    pub egress: strait_adapters::egress::EgressSpec,
    /// Kafka secrets (SASL credentials of `kafka` sources).
    pub kafka: Kafka,
    /// MQTT secrets (passwords of `mqtt` sources and targets).
    pub mqtt: Mqtt,
}

/// Kafka: node-local secrets. Never replicated; a `kafka` source's `sasl`
/// names a credential.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Kafka {
    /// SASL user names and passwords, by name.
    pub credentials: std::collections::BTreeMap<String, strait_adapters::kafka::KafkaCredential>,
}

/// MQTT: node-local credentials. Never replicated; sources and targets
/// name a credential.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mqtt {
    /// Passwords (and user names) of `mqtt` sources and targets, by name.
    pub credentials: std::collections::BTreeMap<String, strait_adapters::mqtt::MqttCredential>,
}

/// [`NodeConfig::max_state_bytes`] by default: 64 GiB.
pub const DEFAULT_MAX_STATE_BYTES: u64 = 64 << 30;

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: 1,
            site: "local".into(),
            data_dir: PathBuf::from("strait-data"),
            http: "127.0.0.1:8080".into(),
            http_tls: None,
            http_server: HttpServer::default(),
            dev: false,
            auth: Auth::default(),
            limits: Limits::default(),
            dedup_window_secs: 3_600,
            retention_secs: 3_600,
            max_state_bytes: DEFAULT_MAX_STATE_BYTES,
            snapshot_every: 20_000,
            state_flush_ms: 0,
            log_sync_ms: 0,
            storage_failure_exit_secs: 10,
            buses: vec!["default".into()],
            dispatch: Dispatch::default(),
            batching: Batching::default(),
            telemetry: Telemetry::default(),
            alibaba: Alibaba::default(),
            cluster: Cluster::default(),
            federation: Federation::default(),
            control: Control::default(),
            aws: Aws::default(),
            connections: Default::default(),
            egress: Default::default(),
            kafka: Kafka::default(),
            mqtt: Mqtt::default(),
        }
    }
}

/// One member of a new site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// QUIC address (`host:port`).
    pub raft_addr: String,
    /// HTTP address (`host:port`).
    #[serde(default)]
    pub http_addr: String,
}

/// Site cluster settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// QUIC listen address (UDP). Unset: a one-node site without transport.
    pub listen: Option<String>,
    /// The QUIC address peers use to reach this node (default: `listen`).
    pub advertise: Option<String>,
    /// The HTTP address other nodes and clients use for this node (default: `http`).
    pub advertise_http: Option<String>,
    /// Directory with `ca.pem`, `node-<id>.pem`, `node-<id>.key`.
    pub certs_dir: Option<PathBuf>,
    /// Members of a new site (the same list on every one of them; the
    /// lowest id forms the group). Ignored once the node has state.
    pub initial_members: Vec<Member>,
    /// HTTP address (`http://host:port`) of any node of an existing site to
    /// join through (`strait serve --join`).
    pub join: Option<String>,
    /// How long a write waits for a leader (elections, forwarding) before it
    /// fails with 503.
    pub write_timeout_ms: u64,
    /// Raft leader heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// Raft election timeout (a random time between this and twice this), ms.
    pub election_timeout_ms: u64,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            listen: None,
            advertise: None,
            advertise_http: None,
            certs_dir: None,
            initial_members: Vec::new(),
            join: None,
            write_timeout_ms: 10_000,
            heartbeat_ms: 100,
            election_timeout_ms: 300,
        }
    }
}

/// Links to other sites (see docs/federation.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Federation {
    /// Remote site → its nodes (`id`, `raft_addr` = QUIC address). This site
    /// sends deliveries for targets of those sites, and accepts deliveries
    /// from them.
    pub links: std::collections::BTreeMap<String, Vec<Member>>,
    /// Most deliveries per link batch.
    pub max_batch: usize,
    /// Unacknowledged batches per link.
    pub window: usize,
    /// Unacknowledged bytes per link (one batch is always allowed).
    pub window_bytes: usize,
    /// Most deliveries waiting in the outbox for one remote site. When full,
    /// deliveries to that site's targets wait and retry under their
    /// target's retry policy (then dead-letter); ingest and other targets
    /// go on.
    pub max_outbox: u64,
    /// Deliver a batch received from another site as soon as this site's
    /// leader has proposed it, without waiting for it to commit here (it is
    /// already durable in the sending site's outbox; see
    /// docs/federation.md). The acknowledgement to the sender still waits
    /// for the commit. `false`: deliver only what this site has committed.
    pub deliver_before_commit: bool,
}

impl Default for Federation {
    fn default() -> Self {
        Federation {
            links: Default::default(),
            max_batch: 2048,
            window: 64,
            window_bytes: 16 << 20,
            max_outbox: 1_000_000,
            deliver_before_commit: true,
        }
    }
}

/// One member of the control group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlMember {
    /// The node's site.
    pub site: String,
    /// The node's id in its site.
    pub id: u64,
    /// Its QUIC address (`host:port`).
    pub raft_addr: String,
    /// Its HTTP address (`host:port`).
    #[serde(default)]
    pub http_addr: String,
    /// A voter of the control group (else a learner: it holds the whole
    /// configuration but does not vote).
    #[serde(default)]
    pub voter: bool,
}

/// The control group (see docs/federation.md): the same member list on
/// every node of the federation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Control {
    /// Every node of every site; a few per site are voters.
    pub members: Vec<ControlMember>,
    /// Raft heartbeat of the control group, ms (it spans the WAN).
    pub heartbeat_ms: u64,
    /// Election timeout of the control group, ms.
    pub election_timeout_ms: u64,
    /// How long a configuration change waits for the control group's
    /// leader and then for this site to apply it, ms.
    pub write_timeout_ms: u64,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            members: Vec::new(),
            heartbeat_ms: 200,
            election_timeout_ms: 1000,
            write_timeout_ms: 15_000,
        }
    }
}

impl Control {
    /// Is the control group configured?
    pub fn enabled(&self) -> bool {
        !self.members.is_empty()
    }
}

/// A configuration problem, naming the file and field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file does not parse or has unknown/mistyped fields.
    #[error("config file {path}: {message}")]
    Parse {
        /// File.
        path: String,
        /// serde_yaml's message (names the field and line).
        message: String,
    },
    /// A value is out of range.
    #[error("config: {field}: {message}")]
    Invalid {
        /// Field.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// A value is out of range (field path built at run time).
    #[error("config: {field}: {message}")]
    InvalidAt {
        /// Field path, e.g. `alibaba.credentials.main.access_key_id`.
        field: String,
        /// Why.
        message: String,
    },
}

impl NodeConfig {
    /// Load a YAML (or JSON) file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let cfg: NodeConfig = serde_yaml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(cfg)
    }

    /// Check ranges and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.to_string(),
            })
        };
        if self.http.parse::<std::net::SocketAddr>().is_err() {
            return invalid(
                "http",
                &format!("{:?} is not an address like 127.0.0.1:8080", self.http),
            );
        }
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            return invalid(
                "telemetry.sample_ratio",
                &format!(
                    "{} is not a share between 0.0 and 1.0",
                    self.telemetry.sample_ratio
                ),
            );
        }
        if !self.dev && self.auth.tokens.is_empty() {
            return invalid(
                "auth.tokens",
                "at least one token is required outside dev mode (or run with --dev)",
            );
        }
        crate::auth::Tokens::from_config(&self.auth.tokens).map_err(|e| {
            ConfigError::InvalidAt {
                field: e.field,
                message: e.message,
            }
        })?;
        if self.limits.max_event_bytes < 1024 {
            return invalid("limits.max_event_bytes", "must be at least 1024");
        }
        if self.limits.max_request_bytes < self.limits.max_event_bytes {
            return invalid(
                "limits.max_request_bytes",
                "must be at least limits.max_event_bytes",
            );
        }
        if self.limits.max_batch_events == 0 {
            return invalid("limits.max_batch_events", "must be at least 1");
        }
        if self.log_sync_ms > 60_000 {
            return invalid(
                "log_sync_ms",
                "must be at most 60000 (0, the default, fsyncs every append)",
            );
        }
        if self.batching.max_in_flight == 0 || self.batching.max_events_per_proposal == 0 {
            return invalid(
                "batching",
                "max_in_flight and max_events_per_proposal must be at least 1",
            );
        }
        if self.dispatch.checkpoint_interval_ms == 0 || self.dispatch.read_batch == 0 {
            return invalid(
                "dispatch",
                "checkpoint_interval_ms and read_batch must be at least 1",
            );
        }
        for b in &self.buses {
            if crate::config::check::validate_name("bus", b).is_err() {
                return invalid("buses", &format!("{b:?} is not a valid bus name"));
            }
        }
        self.validate_http_server()?;
        self.validate_alibaba()?;
        self.validate_cluster()?;
        self.validate_federation()?;
        self.validate_control()?;
        self.validate_egress()?;
        self.validate_aws()?;
        self.validate_mqtt()
    }

    fn validate_mqtt(&self) -> Result<(), ConfigError> {
        for (name, c) in &self.mqtt.credentials {
            if crate::config::check::validate_name("credential", name).is_err() {
                return Err(ConfigError::InvalidAt {
                    field: format!("mqtt.credentials.{name}"),
                    message: "credential names are 1-64 characters of A-Z a-z 0-9 . _ -".into(),
                });
            }
            if c.password.is_empty() {
                return Err(ConfigError::InvalidAt {
                    field: format!("mqtt.credentials.{name}.password"),
                    message: "must not be empty".into(),
                });
            }
        }
        Ok(())
    }

    /// The checked egress policy.
    pub fn egress_policy(&self) -> Result<strait_adapters::egress::EgressPolicy, ConfigError> {
        strait_adapters::egress::EgressPolicy::from_spec(&self.egress).map_err(|e| {
            ConfigError::InvalidAt {
                field: format!("egress.{}", e.field),
                message: e.message,
            }
        })
    }

    fn validate_egress(&self) -> Result<(), ConfigError> {
        let policy = self.egress_policy()?;
        for (name, c) in &self.connections {
            let field = |f: &str| format!("connections.{name}.{f}");
            if crate::config::check::validate_name("connection", name).is_err() {
                return Err(ConfigError::InvalidAt {
                    field: format!("connections.{name}"),
                    message: "connection names are 1-64 characters of A-Z a-z 0-9 . _ -".into(),
                });
            }
            c.validate().map_err(|e| ConfigError::InvalidAt {
                field: field(&e.field),
                message: e.message,
            })?;
            if let strait_adapters::http::ConnectionAuth::OauthClientCredentials {
                token_url, ..
            } = &c.auth
            {
                policy
                    .check_endpoint("oauth_client_credentials.token_url", token_url)
                    .map_err(|e| ConfigError::InvalidAt {
                        field: field(&e.field),
                        message: e.message,
                    })?;
            }
        }
        Ok(())
    }

    fn validate_http_server(&self) -> Result<(), ConfigError> {
        let at = |field: &str, message: &str| {
            Err(ConfigError::InvalidAt {
                field: field.to_string(),
                message: message.to_string(),
            })
        };
        if let Some(t) = &self.http_tls {
            for (field, p) in [("http_tls.cert", &t.cert), ("http_tls.key", &t.key)] {
                if p.as_os_str().is_empty() {
                    return at(field, "a PEM file path is required");
                }
            }
            if t.reload_interval_ms < 100 {
                return at("http_tls.reload_interval_ms", "must be at least 100");
            }
            if let Some(j) = &self.cluster.join
                && j.starts_with("http://")
            {
                return at(
                    "cluster.join",
                    "with http_tls set, join through https:// (or host:port): the join request carries a bearer token",
                );
            }
        }
        let s = &self.http_server;
        for (field, v) in [
            ("http_server.header_timeout_ms", s.header_timeout_ms),
            ("http_server.body_timeout_ms", s.body_timeout_ms),
            ("http_server.idle_timeout_ms", s.idle_timeout_ms),
            ("http_server.shutdown_timeout_ms", s.shutdown_timeout_ms),
        ] {
            if v < 100 {
                return at(field, "must be at least 100 (ms)");
            }
        }
        if s.max_connections == 0 {
            return at("http_server.max_connections", "must be at least 1");
        }
        if s.max_connections_per_ip == 0 {
            return at("http_server.max_connections_per_ip", "must be at least 1");
        }
        Ok(())
    }

    fn validate_control(&self) -> Result<(), ConfigError> {
        let c = &self.control;
        let at = |field: String, message: String| {
            Err(ConfigError::InvalidAt {
                field: format!("control.{field}"),
                message,
            })
        };
        if !c.enabled() {
            return Ok(());
        }
        if self.cluster.listen.is_none() {
            return at(
                "members".into(),
                "the control group needs the QUIC transport: set cluster.listen and cluster.certs_dir".into(),
            );
        }
        if c.heartbeat_ms == 0 || c.election_timeout_ms <= c.heartbeat_ms {
            return at(
                "election_timeout_ms".into(),
                "heartbeat_ms must be at least 1 and election_timeout_ms larger than it".into(),
            );
        }
        let mut ids = std::collections::BTreeMap::new();
        for (i, m) in c.members.iter().enumerate() {
            if strait_federation::certs::validate_site(&m.site).is_err() {
                return at(
                    format!("members[{i}].site"),
                    format!("{:?} is not a valid site name", m.site),
                );
            }
            if m.id > u64::from(u32::MAX) {
                return at(
                    format!("members[{i}].id"),
                    "control-group members need node ids below 2^32".into(),
                );
            }
            if m.raft_addr.is_empty() {
                return at(format!("members[{i}].raft_addr"), "required".into());
            }
            let cid = strait_federation::control_node_id(&m.site, m.id);
            if let Some(j) = ids.insert(cid, i) {
                return at(
                    format!("members[{i}]"),
                    format!(
                        "node {} of site {:?} is listed twice (or its id collides with members[{j}])",
                        m.id, m.site
                    ),
                );
            }
        }
        if !c.members.iter().any(|m| m.voter) {
            return at(
                "members".into(),
                "mark at least one member `voter: true`".into(),
            );
        }
        if !c
            .members
            .iter()
            .any(|m| m.site == self.site && m.id == self.node_id)
        {
            return at(
                "members".into(),
                format!(
                    "this node (node {} of site {:?}) is not listed",
                    self.node_id, self.site
                ),
            );
        }
        Ok(())
    }

    fn validate_federation(&self) -> Result<(), ConfigError> {
        let f = &self.federation;
        let at = |field: String, message: String| {
            Err(ConfigError::InvalidAt {
                field: format!("federation.{field}"),
                message,
            })
        };
        if f.max_outbox == 0 {
            return at("max_outbox".into(), "must be at least 1".into());
        }
        for (name, v) in [
            ("max_batch", f.max_batch),
            ("window", f.window),
            ("window_bytes", f.window_bytes),
        ] {
            if v == 0 {
                return at(name.into(), "must be at least 1".into());
            }
        }
        if !f.links.is_empty() && self.cluster.listen.is_none() {
            return at(
                "links".into(),
                "links need the QUIC transport: set cluster.listen and cluster.certs_dir".into(),
            );
        }
        for (site, nodes) in &f.links {
            if strait_federation::certs::validate_site(site).is_err() {
                return at(format!("links.{site}"), "not a valid site name".into());
            }
            if *site == self.site {
                return at(
                    format!("links.{site}"),
                    "a site does not link to itself".into(),
                );
            }
            if nodes.is_empty() {
                return at(
                    format!("links.{site}"),
                    "list at least one node of the site".into(),
                );
            }
        }
        Ok(())
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        let at = |field: &str, message: String| {
            Err(ConfigError::InvalidAt {
                field: format!("cluster.{field}"),
                message,
            })
        };
        if c.heartbeat_ms == 0 || c.election_timeout_ms <= c.heartbeat_ms * 2 {
            return at(
                "election_timeout_ms",
                format!(
                    "must be more than twice heartbeat_ms ({}), got {}",
                    c.heartbeat_ms, c.election_timeout_ms
                ),
            );
        }
        let Some(listen) = &c.listen else {
            if !c.initial_members.is_empty() || c.join.is_some() {
                return at(
                    "listen",
                    "a QUIC listen address is required with initial_members or join".into(),
                );
            }
            return Ok(());
        };
        if listen.parse::<std::net::SocketAddr>().is_err() {
            return at(
                "listen",
                format!("{listen:?} is not an address like 127.0.0.1:7401"),
            );
        }
        if c.certs_dir.is_none() {
            return at(
                "certs_dir",
                "required in cluster mode: a directory with ca.pem, node-<id>.pem and node-<id>.key (see `strait cert`)".into(),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, m) in c.initial_members.iter().enumerate() {
            if !seen.insert(m.id) {
                return at(
                    &format!("initial_members[{i}].id"),
                    format!("node id {} appears twice", m.id),
                );
            }
            if m.raft_addr.is_empty() {
                return at(
                    &format!("initial_members[{i}].raft_addr"),
                    "must be set (host:port of the node's QUIC endpoint)".into(),
                );
            }
        }
        if !c.initial_members.is_empty() && !seen.contains(&self.node_id) {
            return at(
                "initial_members",
                format!("must include this node (node_id {})", self.node_id),
            );
        }
        if c.join.is_some() && !c.initial_members.is_empty() {
            return at(
                "join",
                "give either join (an existing site) or initial_members (a new site), not both"
                    .into(),
            );
        }
        Ok(())
    }

    fn validate_aws(&self) -> Result<(), ConfigError> {
        let at = |field: String, message: String| Err(ConfigError::InvalidAt { field, message });
        let a = &self.aws;
        for (name, c) in &a.credentials {
            if crate::config::check::validate_name("credential", name).is_err() {
                return at(
                    format!("aws.credentials.{name}"),
                    "credential names are 1-64 characters of A-Z a-z 0-9 . _ -".into(),
                );
            }
            if let Err(e) = c.validate() {
                return at(format!("aws.credentials.{name}.{}", e.field), e.message);
            }
        }
        for (i, k) in a.ingress_keys.iter().enumerate() {
            if k.access_key_id.trim().is_empty() {
                return at(
                    format!("aws.ingress_keys[{i}].access_key_id"),
                    "must not be empty".into(),
                );
            }
            if k.secret_access_key.is_empty() {
                return at(
                    format!("aws.ingress_keys[{i}].secret_access_key"),
                    "must not be empty".into(),
                );
            }
            if a.ingress_keys[..i]
                .iter()
                .any(|o| o.access_key_id == k.access_key_id)
            {
                return at(
                    format!("aws.ingress_keys[{i}].access_key_id"),
                    "duplicate access key id".into(),
                );
            }
        }
        let p = &a.ingress_path;
        if !p.starts_with('/')
            || p.contains(['{', '}', '*', '?', '#'])
            || p.starts_with("/v1/")
            || p.starts_with("/alibaba/")
            || p.starts_with("/openapi/")
            || ["/healthz", "/readyz", "/metrics", "/v1"].contains(&p.as_str())
        {
            return at(
                "aws.ingress_path".into(),
                format!("{p:?} must be a literal path starting with / that no other route uses"),
            );
        }
        if a.max_clock_skew_secs == 0 || a.max_clock_skew_secs > 86_400 {
            return at(
                "aws.max_clock_skew_secs".into(),
                "must be between 1 and 86400".into(),
            );
        }
        if a.account_id.is_empty() {
            return at("aws.account_id".into(), "must not be empty".into());
        }
        for (i, s) in a.sources.iter().enumerate() {
            let f = |name: &str| format!("aws.sources[{i}].{name}");
            if crate::config::check::validate_name("source", &s.name).is_err()
                || a.sources[..i].iter().any(|o| o.name == s.name)
            {
                return at(
                    f("name"),
                    "must be unique, 1-64 characters of A-Z a-z 0-9 . _ -".into(),
                );
            }
            if let Err(e) = s.validate() {
                return at(f(&e.field), e.message);
            }
            if let Some(c) = &s.sqs.credential
                && !a.credentials.contains_key(c)
            {
                return at(f("credential"), format!("{c:?} is not in aws.credentials"));
            }
            let creds = std::sync::Arc::new(a.credentials.clone());
            match strait_adapters::aws_common::resolve_credential(
                &creds,
                s.sqs.credential.as_deref(),
                self.dev,
            ) {
                Err(e) => return at(f("credential"), e.message),
                Ok(Some(c)) => {
                    if let Err(e) = c.check_use(
                        s.sqs
                            .credential
                            .as_deref()
                            .unwrap_or(strait_adapters::aws_common::DEFAULT_CREDENTIAL),
                        s.sqs.endpoint.as_deref(),
                        s.sqs.region.as_deref(),
                    ) {
                        return at(f(&e.field), e.message);
                    }
                }
                Ok(None) => {}
            }
        }
        Ok(())
    }

    fn validate_alibaba(&self) -> Result<(), ConfigError> {
        let at = |field: String, message: &str| {
            Err(ConfigError::InvalidAt {
                field,
                message: message.to_string(),
            })
        };
        let a = &self.alibaba;
        for (name, c) in &a.credentials {
            if crate::config::check::validate_name("credential", name).is_err() {
                return at(
                    format!("alibaba.credentials.{name}"),
                    "credential names are 1-64 characters of A-Z a-z 0-9 . _ -",
                );
            }
            if c.access_key_id.trim().is_empty() {
                return at(
                    format!("alibaba.credentials.{name}.access_key_id"),
                    "must not be empty",
                );
            }
            if c.access_key_secret.is_empty() {
                return at(
                    format!("alibaba.credentials.{name}.access_key_secret"),
                    "must not be empty",
                );
            }
            for (i, e) in c.endpoints.iter().enumerate() {
                if e.is_empty() || (!e.contains("://") && (e.contains('/') || e.contains('@'))) {
                    return at(
                        format!("alibaba.credentials.{name}.endpoints[{i}]"),
                        "must be a URL or a host name",
                    );
                }
            }
        }
        for (i, k) in a.ingress_keys.iter().enumerate() {
            if k.access_key_id.trim().is_empty() {
                return at(
                    format!("alibaba.ingress_keys[{i}].access_key_id"),
                    "must not be empty",
                );
            }
            if k.access_key_secret.is_empty() {
                return at(
                    format!("alibaba.ingress_keys[{i}].access_key_secret"),
                    "must not be empty",
                );
            }
            if a.ingress_keys[..i]
                .iter()
                .any(|o| o.access_key_id == k.access_key_id)
            {
                return at(
                    format!("alibaba.ingress_keys[{i}].access_key_id"),
                    "duplicate AccessKey ID",
                );
            }
        }
        if a.max_clock_skew_secs == 0 || a.max_clock_skew_secs > 86_400 {
            return at(
                "alibaba.max_clock_skew_secs".into(),
                "must be between 1 and 86400",
            );
        }
        if a.push.max_age_secs == 0 || a.push.max_age_secs > 86_400 {
            return at(
                "alibaba.push.max_age_secs".into(),
                "must be between 1 and 86400",
            );
        }
        if let Some(u) = &a.push.public_url {
            match reqwest::Url::parse(u) {
                Ok(p) if p.scheme() == "http" || p.scheme() == "https" => {}
                _ => {
                    return at(
                        "alibaba.push.public_url".into(),
                        "must be an http or https URL such as https://gw.example.com",
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(yaml: &str) -> String {
        let cfg: NodeConfig = serde_yaml::from_str(yaml).expect("parses");
        match cfg.validate().expect_err("invalid") {
            ConfigError::Invalid { field, .. } => field.to_string(),
            ConfigError::InvalidAt { field, .. } => field,
            e => panic!("{e}"),
        }
    }

    #[test]
    fn connections_and_egress_are_read_and_checked() {
        let yaml = "dev: true
connections:
  k: {api_key: {header: x-api-key, value: v}}
  b: {basic: {username: u, password: p}}
  o:
    oauth_client_credentials: {token_url: 'https://auth.example.com/t', client_id: c, client_secret: s}
egress:
  allow: [example.com, 10.0.0.0/8]
  deny: [10.9.0.0/16]
";
        let cfg: NodeConfig = serde_yaml::from_str(yaml).expect("parses");
        cfg.validate().expect("valid");
        assert_eq!(cfg.connections.len(), 3);
        assert!(!format!("{cfg:?}").contains("client_secret: \"s\""));
        assert_eq!(
            field("dev: true\negress: {deny: ['10.0.0.0/99']}\n"),
            "egress.deny[0]"
        );
        assert_eq!(
            field(
                "dev: true\nconnections:\n  o: {oauth_client_credentials: {token_url: 'http://169.254.169.254/t', client_id: c, client_secret: s}}\n"
            ),
            "connections.o.oauth_client_credentials.token_url"
        );
        assert_eq!(
            field("dev: true\nconnections:\n  k: {api_key: {header: 'bad header', value: v}}\n"),
            "connections.k.api_key.header"
        );
        assert!(
            serde_yaml::from_str::<NodeConfig>(
                "connections:\n  k: {api_key: {header: h, value: v}, basic: {username: u, password: p}}\n"
            )
            .is_err()
        );
    }

    #[test]
    fn sources_without_credential_need_a_default_outside_dev() {
        let src = "aws:\n  sources:\n    - {name: s, queue_url: 'http://127.0.0.1:9/1/q', bus: default}\n";
        let tokens = "auth: {tokens: [t]}\n";
        assert_eq!(
            field(&format!("{tokens}{src}")),
            "aws.sources[0].credential"
        );
        let cfg: NodeConfig = serde_yaml::from_str(&format!("dev: true\n{src}")).expect("parses");
        cfg.validate().expect("dev falls back to the chain");
        let with_default = format!(
            "{tokens}aws:\n  credentials:\n    default: {{instance_role: true}}\n  sources:\n    - {{name: s, queue_url: 'http://127.0.0.1:9/1/q', bus: default}}\n"
        );
        let cfg: NodeConfig = serde_yaml::from_str(&with_default).expect("parses");
        cfg.validate().expect("the default credential");
    }
}
