//! The running node: storage, Raft, group commit, dispatcher and HTTP API
//! wired together.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use strait_adapters::SinkContext;
use strait_federation::{Command, CommandResponse, FederationError, Site};

use crate::cluster::Writer;

use crate::commit::{Committer, now_ms};
use crate::config::NodeConfig;
use crate::dispatch::Progress;

/// Shared state of a node.
pub struct App {
    /// Configuration.
    pub cfg: NodeConfig,
    /// The site's Raft group.
    pub site: Site,
    /// Group commit.
    pub committer: Committer,
    /// Dispatcher stats per target.
    pub progress: Progress,
    /// Shared clients for building targets.
    pub sinks: SinkContext,
    /// Prometheus renderer.
    pub metrics: PrometheusHandle,
    /// Alibaba ingress keys, push keys and the nonce cache.
    pub alibaba: crate::alibaba::AlibabaState,
    /// Writes routed to the site's leader.
    pub writer: Writer,
    /// Expiry of this node's certificate (cluster mode).
    pub cert_expiry: Option<i64>,
    /// Outboxes to other sites (group commit).
    pub outbox: crate::links::Outbox,
    /// Live figures of the outgoing links.
    pub link_stats: strait_federation::link::service::LinkStatsMap,
    /// AWS ingress keys.
    pub aws: crate::aws::AwsState,
    /// The control group's replica (federation with shared configuration).
    pub control: Option<crate::control::Control>,
    /// Run-time status of the shared sources on this node.
    pub sources: crate::sources::SourceStatuses,
    /// Batches from other sites proposed but not yet committed here, for
    /// the inbound workers (offered with `federation.deliver_before_commit`).
    pub early: Arc<strait_federation::link::early::EarlyInbox>,
}

impl App {
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

/// Open storage and Raft, create configured buses, start the dispatcher.
pub async fn start(cfg: NodeConfig) -> anyhow::Result<Arc<App>> {
    let alibaba = crate::alibaba::AlibabaState::from_config(&cfg.alibaba)?;
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
    if cfg.cluster.join.is_some() {
        tokio::spawn(crate::cluster::join(site.clone(), cfg.clone()));
    }
    let cert_expiry = crate::cluster::cert_expiry(&cfg);
    let sinks = SinkContext {
        http: Default::default(),
        alibaba_credentials: Arc::new(cfg.alibaba.credentials.clone()),
        aws_credentials: Arc::new(cfg.aws.credentials.clone()),
    };
    let aws = crate::aws::AwsState::from_config(&cfg.aws);
    let app = Arc::new(App {
        cfg,
        site,
        committer,
        progress: Default::default(),
        sinks,
        alibaba,
        aws,
        metrics: crate::telemetry::metrics_handle(),
        outbox: crate::links::Outbox::start(writer.clone()),
        writer,
        cert_expiry,
        link_stats: crate::links::new_stats(),
        control,
        sources: Default::default(),
        early,
    });
    crate::links::start_senders(&app);
    tokio::spawn(crate::dispatch::run(app.clone()));
    crate::aws::spawn_sources(&app);
    tokio::spawn(crate::sources::run(app.clone()));
    Ok(app)
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

/// The stored form of a bus.
pub fn bus_json(name: &str, description: &str, created_at: Option<&str>) -> serde_json::Value {
    let created = created_at.map(str::to_string).unwrap_or_else(|| {
        chrono::DateTime::from_timestamp_millis(now_ms() as i64)
            .unwrap_or_default()
            .to_rfc3339()
    });
    serde_json::json!({"name": name, "description": description, "createdAt": created})
}
