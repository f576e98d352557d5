//! The node's place in its site cluster: the QUIC endpoint, opening the
//! site's Raft group over it, writes routed to the leader, membership
//! changes and the cluster status document.

pub mod certs_watch;
pub(crate) mod control;
pub mod nonces;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::ServerState;
use serde_json::{Value, json};
use strait_federation::certs::{self, NodeCredentials};
use strait_federation::link::query::QueryService;
use strait_federation::link::service::{LinkService, Methods};
use strait_federation::link::uncommitted::EarlyInbox;
use strait_federation::network_quic::{
    Group, QuicNetwork, RaftService, peer_reachable, write_via_leader_in,
};
use strait_federation::transport::{AcceptPolicy, Endpoint, TransportConfig};
use strait_federation::{
    Bootstrap, Command, CommandResponse, FederationError, NodeId, NodeInfo, Site, SiteFailure,
    SiteOptions,
};

use crate::config::NodeConfig;

/// Whether this node's Raft groups still run: its site group and its
/// replica of the control group, if any. What the failure guard of the
/// HTTP API, the probes and `strait serve` watch.
#[derive(Clone)]
pub struct Health {
    site: Site,
    control: Option<Site>,
}

impl Health {
    /// The health of `site` and of the control group replica `control`.
    pub fn new(site: Site, control: Option<Site>) -> Health {
        Health { site, control }
    }

    /// Why the site group (or the control group replica) stopped on its
    /// own, e.g. after a storage error; `None` while both run.
    pub fn failure(&self) -> Option<SiteFailure> {
        self.site
            .failure()
            .or_else(|| self.control.as_ref().and_then(Site::failure))
    }

    /// Wait until [`Health::failure`] has something to say.
    pub async fn failed(&self) -> SiteFailure {
        match &self.control {
            Some(c) => tokio::select! {
                f = self.site.failed() => f,
                f = c.failed() => f,
            },
            None => self.site.failed().await,
        }
    }

    /// The site's leader, as this node knows it.
    pub fn leader(&self) -> Option<NodeId> {
        self.site.raft.metrics().borrow().current_leader
    }
}

/// Writes through the site's leader: locally when this node leads,
/// forwarded over QUIC otherwise, retried across elections until the
/// configured write timeout.
#[derive(Clone)]
pub struct Writer {
    site: Site,
    endpoint: Option<Endpoint>,
    timeout: Duration,
    group: Group,
}

impl Writer {
    /// A writer for `site` (one-node site when `endpoint` is `None`).
    pub fn new(site: Site, endpoint: Option<Endpoint>, timeout: Duration) -> Writer {
        Writer::for_group(site, endpoint, timeout, Group::Site)
    }

    /// A writer for the replica `site` of `group`.
    pub fn for_group(
        site: Site,
        endpoint: Option<Endpoint>,
        timeout: Duration,
        group: Group,
    ) -> Writer {
        Writer {
            site,
            endpoint,
            timeout,
            group,
        }
    }

    /// Propose `cmd` to the leader and wait until it is applied there.
    ///
    /// Retries while there is no leader or the leader cannot be reached.
    /// A retry after an unanswered forward may apply a command twice; every
    /// command is idempotent (appends are deduplicated by event id).
    pub async fn write(&self, cmd: Command) -> Result<CommandResponse, FederationError> {
        let Some(endpoint) = &self.endpoint else {
            return self.site.write(cmd).await;
        };
        let deadline = Instant::now() + self.timeout;
        let mut delay = Duration::from_millis(20);
        loop {
            let leader = self.site.raft.metrics().borrow().current_leader;
            // A request to a leader that just died would wait for the QUIC
            // idle timeout; give up on it as soon as another leader is known.
            let result = tokio::select! {
                r = write_via_leader_in(self.group, &self.site, endpoint, cmd.clone()) => r,
                _ = leader_changed(&self.site, leader) => Err(FederationError::NotLeader { leader: None }),
            };
            match result {
                Err(FederationError::NotLeader { .. } | FederationError::Unreachable(_))
                    if Instant::now() + delay < deadline =>
                {
                    // Retry as soon as another leader is known (or after a backoff).
                    let now_leader = self.site.raft.metrics().borrow().current_leader;
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = leader_changed(&self.site, now_leader) => {}
                    }
                    delay = (delay * 2).min(Duration::from_millis(400));
                }
                other => return other,
            }
        }
    }

    /// The QUIC endpoint (cluster mode only).
    pub fn endpoint(&self) -> Option<&Endpoint> {
        self.endpoint.as_ref()
    }
}

/// Resolves when the site's leader (as this node sees it) is no longer `leader`.
async fn leader_changed(site: &Site, leader: Option<NodeId>) {
    let mut rx = site.raft.metrics();
    loop {
        if rx.borrow_and_update().current_leader != leader {
            return;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// This node's addresses as the group records them.
pub fn node_info(cfg: &NodeConfig) -> NodeInfo {
    let c = &cfg.cluster;
    NodeInfo {
        http_addr: c.advertise_http.clone().unwrap_or_else(|| cfg.http.clone()),
        raft_addr: c
            .advertise
            .clone()
            .or_else(|| c.listen.clone())
            .unwrap_or_default(),
        site: String::new(),
    }
}

/// Load this node's certificate, checking that it names this node and site.
pub fn load_credentials(cfg: &NodeConfig) -> anyhow::Result<NodeCredentials> {
    let dir = cfg
        .cluster
        .certs_dir
        .as_ref()
        .context("config: cluster.certs_dir: required in cluster mode")?;
    let creds = certs::load_node_identity_from_dir(dir, cfg.node_id)
        .with_context(|| format!("config: cluster.certs_dir {}", dir.display()))?;
    if creds.identity.node_id != cfg.node_id || creds.identity.site != cfg.site {
        anyhow::bail!(
            "config: cluster.certs_dir {}: the certificate is for node {} of site {:?}, but this node is node {} of site {:?}",
            dir.display(),
            creds.identity.node_id,
            creds.identity.site,
            cfg.node_id,
            cfg.site
        );
    }
    Ok(creds)
}

/// What [`open_site`] opened.
pub struct Opened {
    /// The site group.
    pub site: Site,
    /// The QUIC endpoint (cluster mode).
    pub endpoint: Option<Endpoint>,
    /// The control-group replica (when `control.members` is set).
    pub control: Option<crate::cluster::control::Control>,
    /// Batches from other sites proposed here but not yet committed (only
    /// offered with `federation.deliver_before_commit`).
    pub early: Arc<EarlyInbox>,
    /// Questions from linked sites (cluster mode): answered once the node
    /// sets its answerer ([`QueryService::serve`]).
    pub query: Option<Arc<QueryService>>,
}

/// Open the site's Raft group (and the control group's replica when
/// configured): a one-node group without transport when `cluster.listen`
/// is unset, else over QUIC with mutual TLS; `on_inbox_commit` is told of
/// every batch from another site this node commits.
pub async fn open_site(
    cfg: &NodeConfig,
    on_inbox_commit: strait_federation::link::service::CommitHook,
) -> anyhow::Result<Opened> {
    let opts = SiteOptions {
        data_dir: cfg.data_dir.clone(),
        node_id: cfg.node_id,
        node: node_info(cfg),
        snapshot_every: cfg.snapshot_every,
        state_flush_interval: Duration::from_millis(cfg.state_flush_ms),
        log_sync_interval: Duration::from_millis(cfg.log_sync_ms),
        timing: strait_federation::RaftTiming {
            heartbeat_ms: cfg.cluster.heartbeat_ms,
            election_timeout_ms: cfg.cluster.election_timeout_ms,
        },
    };
    let Some(listen) = &cfg.cluster.listen else {
        return Ok(Opened {
            site: Site::open(opts).await?,
            endpoint: None,
            control: None,
            early: EarlyInbox::new(),
            query: None,
        });
    };
    let addr: std::net::SocketAddr = listen
        .parse()
        .with_context(|| format!("config: cluster.listen: {listen:?} is not an address"))?;
    let creds = load_credentials(cfg)?;
    let service = RaftService::new(cfg.site.clone());
    let remotes: Vec<String> = cfg.federation.links.keys().cloned().collect();
    let link = LinkService::new(cfg.site.clone(), remotes.clone());
    let query = QueryService::new(cfg.site.clone(), remotes.clone());
    link.on_commit(on_inbox_commit);
    let early = EarlyInbox::new();
    if cfg.federation.deliver_before_commit {
        link.deliver_before_commit(early.clone());
    }
    let mut sites = remotes;
    sites.extend(cfg.control.members.iter().map(|m| m.site.clone()));
    sites.retain(|s| *s != cfg.site);
    let accept = if sites.is_empty() {
        AcceptPolicy::SameSite
    } else {
        sites.push(cfg.site.clone());
        sites.sort();
        sites.dedup();
        AcceptPolicy::Sites(sites)
    };
    let transport = TransportConfig {
        accept,
        connect_timeout: Duration::from_secs(1),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(500),
        // A restarted peer never answers the old connection: notice within
        // ~1.5 s (keep-alives every 250 ms) and reconnect, rather than
        // timing out every Raft request to it until the default idle timeout.
        keep_alive: Duration::from_millis(250),
        idle_timeout: Duration::from_millis(1500),
        // A node coming back must be reachable within a heartbeat or two,
        // or it starts an election of its own (seen after restarts: a
        // connection attempt begun while it was down finished ~1 s after it
        // was up, and it stood for election meanwhile). Links to other
        // sites share this endpoint; an early resend of a handshake packet
        // over a WAN only costs a few small packets.
        initial_rtt: Duration::from_millis(20),
        ..TransportConfig::default()
    };
    let handler = Methods::with_query(service.handler(), link.clone(), query.clone());
    let endpoint = Endpoint::bind(addr, &creds, transport, Some(handler))
        .with_context(|| format!("cannot listen for QUIC on {addr}"))?;
    let bootstrap = bootstrap(cfg);
    let site = Site::open_with_network(opts, QuicNetwork::new(endpoint.clone()), bootstrap).await?;
    service.set_raft(site.raft.clone());
    service.set_state(site.state.clone());
    tokio::spawn(crate::archive::repair::run(site.clone(), endpoint.clone()));
    link.start(site.clone(), endpoint.clone());
    let control = if cfg.control.enabled() {
        let control = crate::cluster::control::open(cfg, &endpoint).await?;
        service.set_control_raft(control.group.raft.clone());
        Some(control)
    } else {
        None
    };
    Ok(Opened {
        site,
        endpoint: Some(endpoint),
        control,
        early,
        query: Some(query),
    })
}

fn bootstrap(cfg: &NodeConfig) -> Bootstrap {
    let c = &cfg.cluster;
    if c.join.is_some() {
        return Bootstrap::Join;
    }
    if c.initial_members.is_empty() {
        return Bootstrap::Single;
    }
    let lowest = c.initial_members.iter().map(|m| m.id).min();
    if lowest != Some(cfg.node_id) {
        return Bootstrap::Join;
    }
    let members: BTreeMap<NodeId, NodeInfo> = c
        .initial_members
        .iter()
        .map(|m| {
            (
                m.id,
                NodeInfo {
                    http_addr: m.http_addr.clone(),
                    raft_addr: m.raft_addr.clone(),
                    site: String::new(),
                },
            )
        })
        .collect();
    Bootstrap::Members(members)
}

/// Ask an existing site (through any of its nodes' HTTP API) to add this
/// node, retrying until it answers. Does nothing once this node is a voter.
pub async fn join(site: Site, cfg: NodeConfig) {
    let Some(base) = cfg.cluster.join.clone() else {
        return;
    };
    let tls = cfg.http_tls.is_some();
    let base = normalize_url(&base, tls);
    let info = node_info(&cfg);
    let mut delay = Duration::from_millis(200);
    loop {
        let is_voter = site
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == cfg.node_id);
        if is_voter {
            tracing::info!(node = cfg.node_id, "this node is a voter of the site");
            return;
        }
        let client = match peer_client(&cfg) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot join: no HTTPS client for the other nodes");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        let mut req = client
            .post(format!("{base}/v1/cluster/members"))
            .timeout(Duration::from_secs(120))
            .json(&json!({
                "id": cfg.node_id,
                "raftAddr": info.raft_addr,
                "httpAddr": info.http_addr,
            }));
        if let Some(t) = cfg.auth.join_token() {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => {
                tracing::info!(via = %base, "joined the site");
            }
            Ok(r) => {
                let status = r.status();
                let body =
                    strait_adapters::peer::read_capped(r, strait_adapters::peer::ERROR_BODY_BYTES)
                        .await
                        .map(|b| b.snippet(500))
                        .unwrap_or_default();
                tracing::warn!(via = %base, %status, body, "join refused; retrying");
            }
            Err(e) => {
                tracing::warn!(via = %base, error = %e, "cannot reach the site to join; retrying")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// `host:port` or a URL → a URL without a trailing slash; `https://` for a
/// bare address when the nodes serve TLS (`http_tls`).
pub fn normalize_url(addr: &str, tls: bool) -> String {
    let a = addr.trim_end_matches('/');
    if a.starts_with("http://") || a.starts_with("https://") {
        a.to_string()
    } else if tls {
        format!("https://{a}")
    } else {
        format!("http://{a}")
    }
}

/// The client for requests one node of a site makes to another's HTTP API
/// (passing a membership change to the leader, `cluster.join`). They carry
/// the caller's bearer token, so with `http_tls` set they go over HTTPS:
/// the other node's certificate must chain to `http_tls.peer_ca`, else to
/// the cluster CA (`cluster.certs_dir/ca.pem`), else to the system's roots;
/// when the nodes ask for client certificates (`http_tls.client_ca`) this
/// node presents its cluster certificate (`node-<id>.pem`), else its
/// `http_tls` certificate. The files are read on every call (these
/// requests are rare), so rotated files are used at once. Without
/// `http_tls` it is plain HTTP (see docs/security.md).
pub fn peer_client(cfg: &NodeConfig) -> anyhow::Result<reqwest::Client> {
    let Some(t) = &cfg.http_tls else {
        return Ok(reqwest::Client::new());
    };
    let cluster_dir = cfg.cluster.certs_dir.as_ref();
    let ca_file = t
        .peer_ca
        .clone()
        .or_else(|| cluster_dir.map(|d| d.join(certs::CA_CERT_FILE)));
    let provider = certs::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    let builder = match ca_file {
        Some(f) => {
            let ca = certs::read_certs(&f).context("http_tls.peer_ca")?;
            builder.with_root_certificates(certs::root_store(&ca).context("http_tls.peer_ca")?)
        }
        None => {
            return reqwest::Client::builder()
                .build()
                .context("the HTTPS client for other nodes");
        }
    };
    let tls = if t.client_ca.is_some() {
        let (cert, key) = match cluster_dir {
            Some(d) => (
                d.join(certs::node_cert_file(cfg.node_id)),
                d.join(certs::node_key_file(cfg.node_id)),
            ),
            None => (t.cert.clone(), t.key.clone()),
        };
        let chain = certs::read_certs(&cert).context("client certificate for other nodes")?;
        let key = certs::read_private_key(&key).context("client key for other nodes")?;
        builder
            .with_client_auth_cert(chain, key)
            .context("client certificate for other nodes")?
    } else {
        builder.with_no_client_auth()
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .context("the HTTPS client for other nodes")
}

/// The HTTP base URL of the site's current leader, when known and not this
/// node (`https://` when `tls`).
pub fn leader_http(site: &Site, tls: bool) -> Option<(NodeId, String)> {
    let m = site.raft.metrics().borrow().clone();
    let leader = m.current_leader?;
    if leader == site.node_id {
        return None;
    }
    let node = m.membership_config.membership().get_node(&leader)?.clone();
    Some((leader, normalize_url(&node.http_addr, tls)))
}

/// Role name as shown in the API.
pub(crate) fn role(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// The cluster status document of `GET /v1/cluster` (`links` filled in by the caller).
///
/// On the leader, every other node also gets `reachable`: whether the
/// leader's QUIC connection to it is up (see
/// [`strait_federation::network_quic::peer_reachable`]). Followers leave
/// it out: they only connect to others when they need to, so their "not
/// connected" would not mean "down".
pub fn status(
    cfg: &NodeConfig,
    site: &Site,
    endpoint: Option<&Endpoint>,
    cert_expiry: Option<i64>,
) -> Value {
    let m = site.raft.metrics().borrow().clone();
    let leading = m.state == ServerState::Leader && m.current_leader == Some(m.id);
    let membership = m.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let last = m.last_log_index.unwrap_or(0);
    let replication = m.replication.clone().unwrap_or_default();
    let nodes: Vec<Value> = membership
        .nodes()
        .map(|(id, n)| {
            let voter = voters.contains(id);
            let role_of = if *id == m.id {
                role(m.state).to_string()
            } else if Some(*id) == m.current_leader {
                "leader".into()
            } else if voter {
                "follower".into()
            } else {
                "learner".into()
            };
            let mut v = json!({
                "id": id,
                "site": cfg.site,
                "role": role_of,
                "voter": voter,
                "httpAddr": n.http_addr,
                "raftAddr": n.raft_addr,
            });
            if let Some(matched) = replication.get(id) {
                let idx = matched.map(|l| l.index).unwrap_or(0);
                v["matchedIndex"] = json!(idx);
                v["replicationLag"] = json!(last.saturating_sub(idx));
            }
            if let Some(endpoint) = endpoint.filter(|_| leading && *id != m.id) {
                let up = peer_reachable(site, endpoint, Group::Site, *id);
                v["reachable"] = json!(up.unwrap_or(false));
            }
            v
        })
        .collect();
    let now = chrono::Utc::now().timestamp();
    json!({
        "site": cfg.site,
        "nodeId": m.id,
        "role": role(m.state),
        "leader": m.current_leader,
        "term": m.current_term,
        "lastLogIndex": m.last_log_index,
        "commitIndex": m.last_applied.map(|l| l.index),
        "appliedIndex": m.last_applied.map(|l| l.index),
        "snapshotIndex": m.snapshot.map(|l| l.index),
        "purgedIndex": m.purged.map(|l| l.index),
        "millisSinceQuorumAck": m.millis_since_quorum_ack,
        "certificate": cert_expiry.map(|t| json!({
            "notAfter": chrono::DateTime::from_timestamp(t, 0).map(|d| d.to_rfc3339()),
            "expiresInDays": (t - now) / 86_400,
        })),
        "nodes": nodes,
        "links": [],
    })
}

/// Certificate expiry (Unix seconds) of this node's certificate, if any.
pub fn cert_expiry(cfg: &NodeConfig) -> Option<i64> {
    let dir = cfg.cluster.certs_dir.as_ref()?;
    let info = certs::read_cert_info(&dir.join(certs::node_cert_file(cfg.node_id))).ok()?;
    Some(info.not_after_unix())
}
