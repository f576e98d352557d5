//! Startup: storage, Raft, group commit, dispatcher, links and sources
//! wired together, and the HTTP API's state. [`App`] is known only here
//! and to `strait serve`: the HTTP routes get their parts of an
//! [`HttpState`], the background tasks narrow handles (a dispatch
//! [`Context`], a sources context, the control group's import loop its own
//! parts).

use std::sync::Arc;
use std::time::Duration;

use strait_adapters::SinkContext;
use strait_adapters::alibaba_eventbridge::ingress::{
    Ingress as AlibabaIngress, IngressConfig as AlibabaIngressConfig,
};
use strait_adapters::alibaba_eventbridge::push::PushConfig;
use strait_federation::{Command, CommandResponse, Site, SiteFailure};

use crate::cluster::control::{ConfigWriter, Control};
use crate::cluster::{Health, Writer};
use crate::config::NodeConfig;
use crate::config::bus::bus_json;
use crate::config::keys::AlibabaState;
use crate::dispatch::{Context, Progress};
use crate::http::{Auth, ClusterApi, HttpState, Ingresses, Resources};
use crate::ingest::{Committer, Gate, Ingest};
use crate::sources::SourceStatuses;
use crate::util::AbortOnDrop;

/// A started node: what `strait serve` (and the tests) hold.
pub struct App {
    /// Configuration.
    pub cfg: NodeConfig,
    /// The site's Raft group.
    pub site: Site,
    /// Group commit.
    pub committer: Committer,
    /// Writes routed to the site's leader.
    pub writer: Writer,
    /// Dispatcher stats per target.
    pub progress: Progress,
    /// Whether the site group and the control group replica still run.
    health: Health,
    /// What the HTTP API serves from.
    http: HttpState,
}

impl App {
    /// Why this node's site group (or its control group replica) stopped on
    /// its own, e.g. after a storage error; `None` while both run.
    pub fn failure(&self) -> Option<SiteFailure> {
        self.health.failure()
    }

    /// Wait until [`App::failure`] has something to say.
    pub async fn failed(&self) -> SiteFailure {
        self.health.failed().await
    }

    /// The bearer tokens in use (`None` in dev mode), replaced when the
    /// config is read again ([`crate::server::tokens`]).
    pub fn tokens(&self) -> Option<Arc<crate::auth::LiveTokens>> {
        self.http.auth.tokens.clone()
    }
}

/// The HTTP API of a started node.
pub fn router(app: Arc<App>) -> axum::Router {
    crate::http::router(app.http.clone())
}

/// Open storage and Raft, create configured buses, start the dispatcher,
/// the link senders and the sources.
pub async fn start(cfg: NodeConfig) -> anyhow::Result<Arc<App>> {
    // The recorder first: a counter registered before it exists counts
    // nowhere (the tasks spawned below register theirs as they start).
    let metrics = crate::telemetry::metrics_handle();
    // Read the Alibaba push keys before anything is opened.
    let alibaba = AlibabaState::from_config(&cfg.alibaba)?;
    let crate::cluster::Opened {
        site,
        endpoint,
        control,
        early,
        query,
    } = crate::cluster::open_site(&cfg, crate::telemetry::link::inbox_commit_hook()).await?;
    site.state.set_max_bytes(cfg.max_state_bytes);
    let clustered = endpoint.is_some();
    let writer = Writer::new(
        site.clone(),
        endpoint,
        Duration::from_millis(cfg.cluster.write_timeout_ms),
    );
    if !clustered {
        // A one-node site elects itself at once; create the configured
        // buses before serving. In a cluster the leader does it.
        site.wait_for_leader(Duration::from_secs(30)).await?;
        ensure_buses(&writer, &site, &cfg.buses).await?;
    }
    let committer = Committer::start(
        writer.clone(),
        site.state.clone(),
        cfg.batching.clone(),
        cfg.dedup_window_secs.saturating_mul(1000),
    );
    let ingest = Ingest::new(committer.clone());
    if cfg.cluster.join.is_some() {
        tokio::spawn(crate::cluster::join(site.clone(), cfg.clone()));
    }
    let sinks = sink_context(&cfg);
    let progress = Progress::default();
    let link_stats = crate::links::new_stats();
    let sources = Arc::new(SourceStatuses::default());
    let dispatch = Arc::new(Context {
        cfg: cfg.clone(),
        state: site.state.clone(),
        writer: writer.clone(),
        ingest: ingest.clone(),
        outbox: crate::links::Outbox::start(writer.clone()),
        progress: progress.clone(),
        sinks,
        early,
        journal: Arc::new(crate::dispatch::JournalBuffer::new(
            crate::dispatch::JOURNAL_BUFFER_ENTRIES,
        )),
        seeks: Default::default(),
    });
    if let Some(endpoint) = writer.endpoint() {
        crate::links::start_senders(&cfg, &site, endpoint, &link_stats);
    }
    tokio::spawn(lead(
        site.clone(),
        writer.clone(),
        dispatch,
        control.clone(),
    ));
    crate::sources::spawn_local(&cfg, &ingest);
    tokio::spawn(crate::sources::run(crate::sources::Context {
        cfg: cfg.clone(),
        site: site.clone(),
        ingest: ingest.clone(),
        statuses: sources.clone(),
    }));
    let sites = Arc::new(crate::lookup::sites::Sites::new(
        site.state.clone(),
        cfg.site.clone(),
        writer
            .endpoint()
            .map(|e| crate::links::query_client(&cfg, e)),
    ));
    if let Some(query) = query {
        let answerer = sites.clone();
        query.serve(Arc::new(move |from: String, body: bytes::Bytes| {
            let answerer = answerer.clone();
            async move { answerer.answer(from, body).await }
        }));
    }
    let health = Health::new(site.clone(), control.as_ref().map(|c| c.group.clone()));
    let gate = Gate {
        ingest,
        state: site.state.clone(),
        limits: cfg.limits.clone(),
    };
    let http = HttpState {
        health: health.clone(),
        metrics,
        auth: Auth {
            tokens: if cfg.dev {
                None
            } else {
                Some(Arc::new(crate::auth::LiveTokens::new(
                    crate::auth::Tokens::from_config(&cfg.auth.tokens)?,
                )))
            },
            metrics_public: cfg.dev || cfg.auth.metrics_public,
        },
        aws_ingress_path: cfg.aws.ingress_path.clone(),
        ingress: Arc::new(ingresses(&cfg, gate, alibaba, writer.clone())),
        resources: Arc::new(Resources {
            state: site.state.clone(),
            config: ConfigWriter::new(site.clone(), writer.clone(), control.clone()),
            progress: progress.clone(),
            sources,
            max_request_bytes: cfg.limits.max_request_bytes,
            retention_secs: cfg.retention_secs,
            site: cfg.site.clone(),
            linked_sites: cfg.federation.links.keys().cloned().collect(),
            known_sites: known_sites(&cfg),
            sites,
            sinks: sink_context(&cfg),
        }),
        cluster: Arc::new(ClusterApi {
            cfg: cfg.clone(),
            site: site.clone(),
            writer: writer.clone(),
            link_stats,
            control,
        }),
    };
    Ok(Arc::new(App {
        cfg,
        site,
        committer,
        writer,
        progress,
        health,
        http,
    }))
}

/// The event ingresses' part of the HTTP state: the submit path and the
/// vendor ingresses' configurations.
fn ingresses(
    cfg: &NodeConfig,
    gate: Gate,
    alibaba: AlibabaState,
    writer: crate::cluster::Writer,
) -> Ingresses {
    let limits = gate.event_limits();
    // Nonces are used once in the whole site (its Raft log), also across
    // restarts.
    let nonces: Arc<dyn strait_adapters::nonces::NonceStore> =
        Arc::new(crate::cluster::nonces::SiteNonces::new(writer.clone()));
    Ingresses {
        aws: crate::config::keys::aws_ingress(&cfg.aws, nonces.clone()),
        alibaba: AlibabaIngress::with_nonces(
            AlibabaIngressConfig {
                keys: alibaba.ingress_keys,
                account_id: cfg.alibaba.account_id.clone(),
                max_clock_skew_secs: cfg.alibaba.max_clock_skew_secs,
                require_nonce: cfg.alibaba.require_nonce.unwrap_or(!cfg.dev),
                require_content_md5: cfg.alibaba.require_content_md5,
                limits,
            },
            nonces,
        ),
        alibaba_push: PushConfig {
            require_signature: cfg.alibaba.push.require_signature,
            public_url: cfg.alibaba.push.public_url.clone(),
            keys: alibaba.push_keys,
            max_age_secs: cfg.alibaba.push.max_age_secs,
            limits,
        },
        gate,
        writer,
    }
}

/// Sites a shared source may name: this one, the linked ones and those of
/// the control group's members.
fn known_sites(cfg: &NodeConfig) -> Vec<String> {
    let mut sites: Vec<String> = std::iter::once(cfg.site.clone())
        .chain(cfg.federation.links.keys().cloned())
        .chain(cfg.control.members.iter().map(|m| m.site.clone()))
        .collect();
    sites.sort();
    sites.dedup();
    sites
}

/// The duties of the site's leader, until the process stops: the
/// dispatcher, the inbound link workers and the import of the shared
/// configuration run only while this node leads its site, so every target
/// has exactly one active dispatcher. They start once a quorum has
/// confirmed this node's leadership (not merely when Raft says it leads: a
/// restarted old leader resumes its stale term for a moment, see
/// [`strait_federation::Site::wait_confirmed_leading`]). A new leader
/// resumes every target from its replicated checkpoint; deliveries that
/// were in flight on the old leader may repeat (same event id).
async fn lead(site: Site, writer: Writer, dispatch: Arc<Context>, control: Option<Control>) {
    loop {
        if !site.wait_confirmed_leading().await {
            return;
        }
        tracing::info!(node = site.node_id, "leading the site: dispatcher started");
        metrics::counter!("strait_dispatcher_starts_total").increment(1);
        if let Err(e) = ensure_buses(&writer, &site, &dispatch.cfg.buses).await {
            tracing::warn!(error = %e, "cannot create the configured buses");
        }
        let duties = async {
            let _inbound = AbortOnDrop(tokio::spawn(crate::dispatch::inbound::run(
                dispatch.clone(),
            )));
            let _import = control.clone().map(|c| {
                AbortOnDrop(tokio::spawn(crate::cluster::control::import_loop(
                    c,
                    site.state.clone(),
                    writer.clone(),
                    dispatch.cfg.buses.clone(),
                )))
            });
            let _replays = AbortOnDrop(tokio::spawn(crate::replay::runner::lead(dispatch.clone())));
            crate::dispatch::lead(dispatch.clone()).await
        };
        tokio::select! {
            _ = duties => return,
            _ = site.wait_leading(false) => {}
        }
        tracing::info!(node = site.node_id, "no longer leading: dispatcher stopped");
        // Forget in-memory progress: the next term starts from checkpoints.
        match dispatch.progress.lock() {
            Ok(mut g) => g.clear(),
            Err(p) => p.into_inner().clear(),
        }
    }
}

/// Create the configured buses that do not exist yet.
pub async fn ensure_buses(writer: &Writer, site: &Site, buses: &[String]) -> anyhow::Result<()> {
    for bus in buses {
        let exists = site.state.view().buses.contains_key(bus);
        if !exists {
            let resp = writer
                .write(Command::PutBus {
                    name: bus.clone(),
                    spec: bus_json(bus, "", None),
                })
                .await?;
            if !matches!(resp, CommandResponse::Ok) {
                anyhow::bail!("creating bus {bus}: {resp:?}");
            }
        }
    }
    Ok(())
}

/// What targets of this node are built with: the HTTP client under the
/// egress policy (validated with the config; an invalid one allows only
/// what the default allows), credentials and connections.
pub fn sink_context(cfg: &NodeConfig) -> SinkContext {
    let policy = cfg.egress_policy().unwrap_or_default();
    SinkContext {
        http: strait_adapters::http::HttpClient::with_egress(Arc::new(policy)),
        alibaba_credentials: Arc::new(cfg.alibaba.credentials.clone()),
        aws_credentials: Arc::new(cfg.aws.credentials.clone()),
        aws_chain_fallback: cfg.dev,
        connections: strait_adapters::http::connection::connections(&cfg.connections),
        mqtt_credentials: Arc::new(cfg.mqtt.credentials.clone()),
    }
}
