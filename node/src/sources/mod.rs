//! Shared sources at run time: the leader of the site a source names polls
//! it; every other node (other sites, followers) only holds its definition.
//!
//! [`run`] watches the site's replicated configuration (imported from the
//! control group, or written directly without one) and this node's
//! leadership, and starts, stops and restarts one poller per source, the
//! way the dispatcher follows rules. A source whose credential is missing
//! from this node's `aws.credentials` does not run and says so in its
//! status. Node-local `aws.sources` are not managed here: they run on every
//! node from start ([`spawn_local`]), with the same poller ([`sqs`]).

mod sqs;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use strait_federation::Site;

use crate::config::NodeConfig;
use crate::config::source::SourceSpec;
use crate::ingest::Ingest;
use crate::util::AbortOnDrop;
pub use sqs::spawn_local;

/// What the shared sources use of the node.
pub struct Context {
    /// The node's configuration (its site, credentials and limits).
    pub cfg: NodeConfig,
    /// The site's Raft group (leadership and the replicated sources).
    pub site: Site,
    /// Where the pollers submit.
    pub ingest: Ingest,
    /// Run-time status per source, shared with the API.
    pub statuses: Arc<SourceStatuses>,
}

/// What a source reports on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStatus {
    /// A poller for it runs on this node.
    pub running: bool,
    /// The last problem (cleared by the next successful receive).
    pub last_error: Option<String>,
    /// Messages received from the queue by this node.
    pub received: u64,
    /// Events committed (new, not duplicates) by this node.
    pub committed: u64,
    /// Messages left on the queue because they are not valid events.
    pub rejected: u64,
}

impl SourceStatus {
    /// The `status` object of `GET /v1/sources/{name}`.
    pub fn to_json(&self) -> Value {
        json!({
            "running": self.running,
            "lastError": self.last_error,
            "received": self.received,
            "committed": self.committed,
            "rejected": self.rejected,
        })
    }
}

/// A source's status, shared between its poller and the API.
#[derive(Debug, Clone, Default)]
pub struct StatusCell(Arc<Mutex<SourceStatus>>);

impl StatusCell {
    fn lock(&self) -> MutexGuard<'_, SourceStatus> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Change the status.
    pub fn update(&self, f: impl FnOnce(&mut SourceStatus)) {
        f(&mut self.lock());
    }

    /// A copy of the status.
    pub fn get(&self) -> SourceStatus {
        self.lock().clone()
    }
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
    let mut config_rx = ctx.site.state.subscribe_config();
    let mut running: HashMap<String, Running> = HashMap::new();
    loop {
        config_rx.borrow_and_update();
        let leading = ctx.site.is_leader();
        reconcile(&ctx, leading, &mut running);
        tokio::select! {
            changed = config_rx.changed() => if changed.is_err() { return },
            alive = ctx.site.wait_leading(!leading) => if !alive { return },
        }
    }
}

/// Make the running pollers match the replicated sources: those of this
/// site while `leading`, none otherwise.
fn reconcile(ctx: &Context, leading: bool, running: &mut HashMap<String, Running>) {
    let sources = ctx.site.state.sources();
    ctx.statuses
        .retain(|name| sources.iter().any(|(n, _)| n == name));
    let mut wanted: HashMap<String, (Value, SourceSpec)> = HashMap::new();
    for (name, json) in sources {
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
        // Every node of the running site checks the credential (any of
        // them may lead next).
        if let Some(c) = &spec.credential
            && !ctx.cfg.aws.credentials.contains_key(c)
        {
            let message = format!(
                "credential {c:?} is not in aws.credentials of node {} at site {}",
                ctx.cfg.node_id, ctx.cfg.site
            );
            ctx.statuses.cell(&name).update(|s| {
                s.running = false;
                s.last_error = Some(message.clone());
            });
            if leading {
                tracing::warn!(source = %name, "{message}; the source does not run");
            }
            continue;
        }
        if leading {
            wanted.insert(name, (json, spec));
        }
    }
    running.retain(|name, r| wanted.get(name).is_some_and(|(json, _)| *json == r.spec));
    for (name, (json, spec)) in wanted {
        if running.contains_key(&name) {
            continue;
        }
        let src = spec.aws_source(&name);
        let credential = spec
            .credential
            .as_ref()
            .and_then(|c| ctx.cfg.aws.credentials.get(c).cloned());
        let conn = sqs::connection(&src, credential);
        let cell = ctx.statuses.cell(&name);
        cell.update(|s| {
            s.running = true;
            s.last_error = None;
        });
        tracing::info!(source = %name, bus = %src.bus, queue = %src.queue_url, "leading the source's site: polling it");
        let task = tokio::spawn(sqs::poll_sqs(
            ctx.ingest.clone(),
            ctx.cfg.limits.clone(),
            src,
            conn,
            cell.clone(),
        ));
        running.insert(
            name,
            Running {
                spec: json,
                cell,
                _task: AbortOnDrop(task),
            },
        );
    }
}
