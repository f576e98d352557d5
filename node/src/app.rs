//! Startup: storage, Raft, group commit, dispatcher, links and sources
//! wired together. [`App`] is what the HTTP API serves from; the background
//! tasks get narrow handles (a dispatch [`Context`], a sources context,
//! the control group's import loop its own parts).

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use strait_adapters::SinkContext;
use strait_federation::{Command, CommandResponse, FederationError, Site};

use crate::cluster::Writer;
use crate::cluster::control::Control;
use crate::config::NodeConfig;
use crate::config::bus::bus_json;
use crate::config::keys::AlibabaState;
use crate::dispatch::{Context, Progress};
use crate::ingest::{Committer, Gate, Ingest};
use crate::sources::SourceStatuses;
use crate::util::AbortOnDrop;
use strait_adapters::alibaba_eventbridge::ingress::{
    Ingress as AlibabaIngress, IngressConfig as AlibabaIngressConfig,
};
use strait_adapters::alibaba_eventbridge::push::PushConfig;

/// Shared state of a node, as the HTTP API sees it.
pub struct App {
    /// Configuration.
    pub cfg: NodeConfig,
    /// The site's Raft group.
    pub site: Site,
    /// Group commit.
    pub committer: Committer,
    /// The submit path of every ingress.
    pub ingest: Ingest,
    /// Dispatcher stats per target.
    pub progress: Progress,
    /// Prometheus renderer.
    pub metrics: PrometheusHandle,
    /// The Alibaba PutEvents ingress: its keys and the nonces it has seen.
    pub alibaba: AlibabaIngress,
    /// What Alibaba pushes are checked against.
    pub alibaba_push: PushConfig,
    /// Writes routed to the site's leader.
    pub writer: Writer,
    /// Expiry of this node's certificate (cluster mode).
    pub cert_expiry: Option<i64>,
    /// Live figures of the outgoing links.
    pub link_stats: strait_federation::link::service::LinkStatsMap,
    /// The AWS ingress's keys and account.
    pub aws: strait_adapters::aws_eventbridge::ingress::IngressConfig,
    /// The control group's replica (federation with shared configuration).
    pub control: Option<Control>,
    /// Run-time status of the shared sources on this node.
    pub sources: Arc<SourceStatuses>,
}

impl App {
    /// The submit path as the ingresses in `strait_adapters` see it.
    pub(crate) fn gate(&self) -> Gate {
        Gate {
            ingest: self.ingest.clone(),
            state: self.site.state.clone(),
            limits: self.cfg.limits.clone(),
        }
    }

    /// Why this node's site group (or its control group replica) stopped on
    /// its own, e.g. after a storage error; `None` while both run.
    pub fn failure(&self) -> Option<strait_federation::SiteFailure> {
        self.site
            .failure()
            .or_else(|| self.control.as_ref().and_then(|c| c.group.failure()))
    }

    /// Wait until [`App::failure`] has something to say.
    pub async fn failed(&self) -> strait_federation::SiteFailure {
        match &self.control {
            Some(c) => tokio::select! {
                f = self.site.failed() => f,
                f = c.group.failed() => f,
            },
            None => self.site.failed().await,
        }
    }

    /// Apply a bus, rule or source change: through the control group when there is
    /// one (answering once this site runs it), else to this site.
    pub async fn write_config(&self, cmd: Command) -> Result<CommandResponse, FederationError> {
        match &self.control {
            Some(c) => c.write(&self.site, cmd).await,
            None => self.writer.write(cmd).await,
        }
    }
}

/// Open storage and Raft, create configured buses, start the dispatcher,
/// the link senders and the sources.
pub async fn start(cfg: NodeConfig) -> anyhow::Result<Arc<App>> {
    // The recorder first: a counter registered before it exists counts
    // nowhere (the tasks spawned below register theirs as they start).
    let metrics = crate::telemetry::metrics_handle();
    let AlibabaState {
        ingress_keys,
        push_keys,
    } = AlibabaState::from_config(&cfg.alibaba)?;
    let limits = strait_adapters::EventLimits {
        max_event_bytes: cfg.limits.max_event_bytes,
        max_request_bytes: cfg.limits.max_request_bytes,
        max_batch_events: cfg.limits.max_batch_events,
    };
    let alibaba = AlibabaIngress::new(AlibabaIngressConfig {
        keys: ingress_keys,
        account_id: cfg.alibaba.account_id.clone(),
        max_clock_skew_secs: cfg.alibaba.max_clock_skew_secs,
        limits,
    });
    let alibaba_push = PushConfig {
        require_signature: cfg.alibaba.push.require_signature,
        public_url: cfg.alibaba.push.public_url.clone(),
        keys: push_keys,
        max_age_secs: cfg.alibaba.push.max_age_secs,
        limits,
    };
    let crate::cluster::Opened {
        site,
        endpoint,
        control,
        early,
    } = crate::cluster::open_site(&cfg).await?;
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
    let cert_expiry = crate::cluster::cert_expiry(&cfg);
    let sinks = SinkContext {
        http: Default::default(),
        alibaba_credentials: Arc::new(cfg.alibaba.credentials.clone()),
        aws_credentials: Arc::new(cfg.aws.credentials.clone()),
    };
    let aws = crate::config::keys::aws_ingress(&cfg.aws);
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
    Ok(Arc::new(App {
        cfg,
        site,
        committer,
        ingest,
        progress,
        alibaba,
        alibaba_push,
        aws,
        metrics,
        writer,
        cert_expiry,
        link_stats,
        control,
        sources,
    }))
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
