//! What the HTTP API serves from. Startup builds an [`HttpState`]; each
//! group of routes is given only its part (axum's per-router state), so a
//! handler sees the handles it uses and nothing of the node's startup.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use strait_adapters::alibaba_eventbridge::ingress::Ingress as AlibabaIngress;
use strait_adapters::alibaba_eventbridge::push::PushConfig;
use strait_adapters::aws_eventbridge::ingress::IngressConfig as AwsIngressConfig;
use strait_federation::link::service::LinkStatsMap;
use strait_federation::{Site, SiteState};

use crate::cluster::control::{ConfigWriter, Control};
use crate::cluster::{Health, Writer};
use crate::config::NodeConfig;
use crate::dispatch::Progress;
use crate::ingest::Gate;
use crate::sources::SourceStatuses;

/// The parts of the HTTP API's state, one per group of routes.
#[derive(Clone)]
pub struct HttpState {
    /// The failure guard and the probes.
    pub health: Health,
    /// `/metrics`.
    pub metrics: PrometheusHandle,
    /// The bearer tokens of the `/v1` routes.
    pub auth: Auth,
    /// Where the AWS-compatible ingress is served (`aws.ingress_path`).
    pub aws_ingress_path: String,
    /// The event ingresses.
    pub ingress: Arc<Ingresses>,
    /// Buses, rules, shared sources and the `:test` tools.
    pub resources: Arc<Resources>,
    /// `/v1/cluster` and its members.
    pub cluster: Arc<ClusterApi>,
}

/// The bearer tokens that may call the `/v1` routes, with their scopes.
#[derive(Clone)]
pub struct Auth {
    /// The tokens; `None` in dev mode (no authentication).
    pub tokens: Option<Arc<crate::auth::LiveTokens>>,
    /// `/metrics` without a token.
    pub metrics_public: bool,
}

/// What the event ingresses use: `POST /v1/buses/{bus}/events` and the
/// vendor-compatible ingresses.
pub struct Ingresses {
    /// The submit path (it also knows the buses and the limits).
    pub gate: Gate,
    /// The AWS-compatible PutEvents.
    pub aws: AwsIngressConfig,
    /// The Alibaba-compatible PutEvents and its nonces.
    pub alibaba: AlibabaIngress,
    /// The Alibaba push endpoint.
    pub alibaba_push: PushConfig,
    /// Where the AWS archive and replay operations write.
    pub writer: crate::cluster::Writer,
}

/// What the configuration resources use: buses, rules, shared sources.
pub struct Resources {
    /// The site's state (reads).
    pub state: Arc<SiteState>,
    /// Where changes are written.
    pub config: ConfigWriter,
    /// Live figures of the targets.
    pub progress: Progress,
    /// Run-time status of the shared sources on this node.
    pub sources: Arc<SourceStatuses>,
    /// Largest request body, bytes.
    pub max_request_bytes: usize,
    /// How long events are kept (`retention_secs`; seeks check it).
    pub retention_secs: u64,
    /// This site's name.
    pub site: String,
    /// The sites this one has links to.
    pub linked_sites: Vec<String>,
    /// The sites a shared source may name: this one, the linked ones and
    /// those of the control group's members (sorted).
    pub known_sites: Vec<String>,
    /// Event lookups and rule status across the linked sites.
    pub sites: Arc<crate::lookup::sites::Sites>,
    /// What this node builds targets with (rules are checked against its
    /// credentials, connections and egress policy).
    pub sinks: strait_adapters::SinkContext,
}

/// What `/v1/cluster` and its members use.
pub struct ClusterApi {
    /// Configuration (the status document reports from it).
    pub cfg: NodeConfig,
    /// The site group.
    pub site: Site,
    /// Writes through the site's leader (its endpoint, in cluster mode).
    pub writer: Writer,
    /// Live figures of the outgoing links.
    pub link_stats: LinkStatsMap,
    /// The control-group replica.
    pub control: Option<Control>,
}
