//! Sources at run time. The sources themselves (settings, polling,
//! conversion) are `strait_adapters`' ([`strait_adapters::SOURCE_KINDS`]);
//! the node decides where they run and hands their events on through its
//! [`Gate`].
//!
//! Shared sources: the leader of the site a source names runs it; every
//! other node (other sites, followers) only holds its definition. [`run`]
//! watches the site's replicated configuration (imported from the control
//! group, or written directly without one) and this node's leadership,
//! and starts, stops and restarts one task per source, the way the
//! dispatcher follows rules. A source that cannot be built here (its
//! credential is missing from this node's `aws.credentials`) does not run
//! and says so in its status. Node-local `aws.sources` are not managed
//! here: they run on every node from start ([`spawn_local`]), with the
//! same poller.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use strait_adapters::{SourceContext, SourceFuture, SourceKind, StatusCell};
use strait_federation::Site;

use crate::config::NodeConfig;
use crate::config::source::SourceSpec;
use crate::ingest::{Gate, Ingest};
use crate::telemetry::ingress::SourceGate;
use crate::util::AbortOnDrop;
pub use strait_adapters::SourceStatus;

/// What the shared sources use of the node.
pub struct Context {
    /// The node's configuration (its site, credentials and limits).
    pub cfg: NodeConfig,
    /// The site's Raft group (leadership and the replicated sources).
    pub site: Site,
    /// Where the sources submit.
    pub ingest: Ingest,
    /// Run-time status per source, shared with the API.
    pub statuses: Arc<SourceStatuses>,
}

/// The status of every shared source on this node, by name.
#[derive(Debug, Default)]
pub struct SourceStatuses(Mutex<BTreeMap<String, StatusCell>>);

impl SourceStatuses {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, StatusCell>> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The cell of `name` (created when missing).
    pub fn cell(&self, name: &str) -> StatusCell {
        self.lock().entry(name.to_string()).or_default().clone()
    }

    /// The status of `name` (all zero when it never ran here).
    pub fn get(&self, name: &str) -> SourceStatus {
        self.lock()
            .get(name)
            .map(StatusCell::get)
            .unwrap_or_default()
    }

    fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|k, _| keep(k));
    }
}

/// Start one task per node-local SQS source (`aws.sources`; their status
/// is not reported by the API, which shows shared sources).
pub fn spawn_local(cfg: &NodeConfig, ingest: &Ingest) {
    let gate = Gate::new(ingest.clone(), cfg.limits.clone());
    for src in &cfg.aws.sources {
        let gate: Arc<dyn strait_adapters::Ingest> = Arc::new(SourceGate::new(
            gate.clone(),
            &src.name,
            strait_adapters::aws_sqs::source::KIND,
            &src.sqs.queue_url,
        ));
        // Checked by the config's validation (a missing one runs with none
        // and says so in its errors).
        let credential = strait_adapters::aws_common::resolve_credential(
            &Arc::new(cfg.aws.credentials.clone()),
            src.sqs.credential.as_deref(),
            cfg.dev,
        )
        .ok()
        .flatten();
        tokio::spawn(strait_adapters::aws_sqs::source::run(
            src.name.clone(),
            src.bus.clone(),
            src.sqs.clone(),
            credential,
            gate,
            StatusCell::default(),
        ));
    }
}

struct Running {
    /// The definition it runs (a changed one restarts it).
    spec: Value,
    cell: StatusCell,
    _task: AbortOnDrop,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cell.update(|s| s.running = false);
    }
}

/// Run the shared sources of this site while this node leads it, until the
/// process stops.
pub async fn run(ctx: Context) {
    let gate = Gate::new(ctx.ingest.clone(), ctx.cfg.limits.clone());
    let sources = SourceContext {
        ingest: Arc::new(gate.clone()),
        aws_credentials: Arc::new(ctx.cfg.aws.credentials.clone()),
        aws_chain_fallback: ctx.cfg.dev,
        kafka_credentials: Arc::new(ctx.cfg.kafka.credentials.clone()),
        mqtt_credentials: Arc::new(ctx.cfg.mqtt.credentials.clone()),
        node: format!("node {} at site {}", ctx.cfg.node_id, ctx.cfg.site),
    };
    let mut config_rx = ctx.site.state.subscribe_config();
    let mut running: HashMap<String, Running> = HashMap::new();
    loop {
        config_rx.borrow_and_update();
        let leading = ctx.site.is_leader();
        reconcile(&ctx, &gate, &sources, leading, &mut running);
        tokio::select! {
            changed = config_rx.changed() => if changed.is_err() { return },
            alive = ctx.site.wait_leading(!leading) => if !alive { return },
        }
    }
}

/// Make the running sources match the replicated ones: those of this site
/// while `leading`, none otherwise.
fn reconcile(
    ctx: &Context,
    gate: &Gate,
    sources: &SourceContext,
    leading: bool,
    running: &mut HashMap<String, Running>,
) {
    let stored = ctx.site.state.sources();
    ctx.statuses
        .retain(|name| stored.iter().any(|(n, _)| n == name));
    let mut wanted: HashMap<String, (Value, SourceFuture)> = HashMap::new();
    for (name, json) in stored {
        let spec = match serde_json::from_value::<SourceSpec>(json.clone()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(source = %name, error = %e, "stored source definition does not parse; not running it");
                ctx.statuses.cell(&name).update(|s| {
                    s.last_error = Some(format!("the stored definition does not parse: {e}"))
                });
                continue;
            }
        };
        if spec.site.as_deref().unwrap_or(&ctx.cfg.site) != ctx.cfg.site {
            continue;
        }
        // Every node of the running site builds it (any of them may lead
        // next, and a credential missing here shows in the status); only
        // the leader runs it.
        let cell = ctx.statuses.cell(&name);
        let built = SourceKind::find(&spec.kind).and_then(|kind| {
            // Its events get a `receive` span each (continuing the
            // message's trace).
            let from = spec
                .settings
                .get("queueUrl")
                .or_else(|| spec.settings.get("subject"))
                .or_else(|| spec.settings.get("topic"))
                .and_then(Value::as_str)
                .unwrap_or(&name);
            let sources = SourceContext {
                ingest: Arc::new(SourceGate::new(gate.clone(), &name, kind.name, from)),
                aws_credentials: sources.aws_credentials.clone(),
                aws_chain_fallback: sources.aws_chain_fallback,
                kafka_credentials: sources.kafka_credentials.clone(),
                mqtt_credentials: sources.mqtt_credentials.clone(),
                node: sources.node.clone(),
            };
            kind.build(&name, &spec.bus, &spec.settings, &sources, cell.clone())
        });
        match built {
            Ok(source) if leading => {
                wanted.insert(name, (json, source));
            }
            Ok(_) => {}
            Err(e) => {
                let message = e.to_string();
                cell.update(|s| {
                    s.running = false;
                    s.last_error = Some(message.clone());
                });
                if leading {
                    tracing::warn!(source = %name, "{message}; the source does not run");
                }
            }
        }
    }
    running.retain(|name, r| wanted.get(name).is_some_and(|(json, _)| *json == r.spec));
    for (name, (json, source)) in wanted {
        if running.contains_key(&name) {
            continue;
        }
        let cell = ctx.statuses.cell(&name);
        cell.update(|s| {
            s.running = true;
            s.last_error = None;
        });
        tracing::info!(source = %name, "leading the source's site: running it");
        running.insert(
            name,
            Running {
                spec: json,
                cell,
                _task: AbortOnDrop(tokio::spawn(source)),
            },
        );
    }
}
