//! The running node: storage, Raft, group commit, dispatcher and HTTP API
//! wired together.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use strait_adapters::SinkContext;
use strait_federation::{Command, CommandResponse, NodeInfo, Site, SiteOptions};

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
    /// AWS ingress keys.
    pub aws: crate::aws::AwsState,
}

/// Open storage and Raft, create configured buses, start the dispatcher.
pub async fn start(cfg: NodeConfig) -> anyhow::Result<Arc<App>> {
    let alibaba = crate::alibaba::AlibabaState::from_config(&cfg.alibaba)?;
    let site = Site::open(SiteOptions {
        data_dir: cfg.data_dir.clone(),
        node_id: cfg.node_id,
        node: NodeInfo {
            http_addr: cfg.http.clone(),
            raft_addr: String::new(),
        },
        snapshot_every: cfg.snapshot_every,
        state_flush_interval: Duration::from_millis(cfg.state_flush_ms),
    })
    .await?;
    site.wait_for_leader(Duration::from_secs(30)).await?;
    let committer = Committer::start(
        site.clone(),
        cfg.batching.clone(),
        cfg.dedup_window_secs.saturating_mul(1000),
    );
    for bus in &cfg.buses {
        let exists = site.state.view().buses.contains_key(bus);
        if !exists {
            let resp = site
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
    });
    tokio::spawn(crate::dispatch::run(app.clone()));
    crate::aws::spawn_sources(&app);
    Ok(app)
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
