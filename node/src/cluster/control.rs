//! The node's replica of the control group (the federation's shared
//! buses and rules, see `strait_federation::control`) and the import of its
//! configuration into this node's site.
//!
//! - Every node opens the control group over the same QUIC endpoint as its
//!   site group (methods with [`Group::Control`]); `control.members` marks
//!   some nodes voters, every other node is added as a learner by the
//!   control leader, so every node holds the whole configuration.
//! - Bus and rule changes from the API are written to the control group
//!   (forwarded to its leader, wherever it runs) and the API answers once
//!   this node's site runs the new version.
//! - The site's leader imports every new control version into the site log
//!   ([`import_loop`]); routing only ever reads the site's own state, so it
//!   never waits on the WAN.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strait_federation::control::{SharedConfig, plan};
use strait_federation::network_quic::{Group, QuicNetwork};
use strait_federation::transport::Endpoint;
use strait_federation::{
    Bootstrap, Command, CommandResponse, FederationError, NodeId, NodeInfo, Site, SiteOptions,
    SiteState, control_node_id, control_node_of,
};

use crate::cluster::Writer;
use crate::config::{ControlMember, NodeConfig};

/// This node's control-group replica and a writer to its leader.
#[derive(Clone)]
pub struct Control {
    /// The control group's Raft and state on this node.
    pub group: Site,
    /// Writes through the control group's leader.
    pub writer: Writer,
    /// How long an API change waits for this site to apply it.
    pub apply_timeout: Duration,
}

fn member_info(m: &ControlMember) -> NodeInfo {
    NodeInfo {
        http_addr: m.http_addr.clone(),
        raft_addr: m.raft_addr.clone(),
        site: m.site.clone(),
    }
}

/// Open this node's control-group replica over `endpoint` (whose Raft
/// service must be given the returned group's Raft).
pub async fn open(cfg: &NodeConfig, endpoint: &Endpoint) -> anyhow::Result<Control> {
    let c = &cfg.control;
    let me = control_node_id(&cfg.site, cfg.node_id);
    let this = c
        .members
        .iter()
        .find(|m| m.site == cfg.site && m.id == cfg.node_id)
        .map(member_info)
        .unwrap_or_else(|| NodeInfo {
            site: cfg.site.clone(),
            ..crate::cluster::node_info(cfg)
        });
    let mut voters: Vec<&ControlMember> = c.members.iter().filter(|m| m.voter).collect();
    voters.sort_by(|a, b| (&a.site, a.id).cmp(&(&b.site, b.id)));
    // The first voter (by site, then id) forms the group; everyone else
    // waits to be added.
    let bootstrap = match voters.first() {
        Some(first) if first.site == cfg.site && first.id == cfg.node_id => Bootstrap::Members(
            voters
                .iter()
                .map(|m| (control_node_id(&m.site, m.id), member_info(m)))
                .collect(),
        ),
        _ => Bootstrap::Join,
    };
    let opts = SiteOptions {
        data_dir: cfg.data_dir.join("control"),
        node_id: me,
        node: this,
        snapshot_every: 1_000,
        state_flush_interval: Duration::ZERO,
        log_sync_interval: Duration::ZERO,
        timing: strait_federation::RaftTiming {
            heartbeat_ms: c.heartbeat_ms,
            election_timeout_ms: c.election_timeout_ms,
        },
    };
    let network = QuicNetwork::for_group(endpoint.clone(), Group::Control);
    let group = Site::open_with_network(opts, network, bootstrap).await?;
    let writer = Writer::for_group(
        group.clone(),
        Some(endpoint.clone()),
        Duration::from_millis(c.write_timeout_ms),
        Group::Control,
    );
    tokio::spawn(add_learners(group.clone(), c.members.clone()));
    Ok(Control {
        group,
        writer,
        apply_timeout: Duration::from_millis(c.write_timeout_ms),
    })
}

/// On the control group's leader: add every configured member that is not
/// in the group yet as a learner (voters are in it from the start).
async fn add_learners(group: Site, members: Vec<ControlMember>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if !group.is_leader() {
            continue;
        }
        let present: Vec<NodeId> = group
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        let missing: BTreeMap<NodeId, NodeInfo> = members
            .iter()
            .map(|m| (control_node_id(&m.site, m.id), member_info(m)))
            .filter(|(id, _)| !present.contains(id))
            .collect();
        if missing.is_empty() {
            continue;
        }
        for (id, info) in missing {
            let site = info.site.clone();
            match group.raft.add_learner(id, info, false).await {
                Ok(_) => tracing::info!(%site, id, "added to the control group as a learner"),
                Err(e) => {
                    tracing::warn!(%site, id, error = %e, "cannot add a control-group learner")
                }
            }
        }
    }
}

/// Where bus, rule and source changes are written: through the control
/// group when there is one (answering once this site runs the change),
/// else to this site.
#[derive(Clone)]
pub struct ConfigWriter {
    site: Site,
    writer: Writer,
    control: Option<Control>,
}

impl ConfigWriter {
    /// Changes to `site` through `writer`, or through `control`.
    pub fn new(site: Site, writer: Writer, control: Option<Control>) -> ConfigWriter {
        ConfigWriter {
            site,
            writer,
            control,
        }
    }

    /// Apply a change.
    pub async fn write(&self, cmd: Command) -> Result<CommandResponse, FederationError> {
        match &self.control {
            Some(c) => c.write(&self.site, cmd).await,
            None => self.writer.write(cmd).await,
        }
    }

    /// Writes to this site's own log (through its leader), whatever the
    /// control group: archives and replays (the site's, not the
    /// federation's shared configuration) and dispatch commands such as
    /// redrives and seeks.
    pub fn site_writer(&self) -> &Writer {
        &self.writer
    }

    /// The shared configuration (this node's replica of the control
    /// group's state), when there is a control group.
    pub fn shared(&self) -> Option<&SiteState> {
        self.control.as_ref().map(|c| &*c.group.state)
    }
}

impl Control {
    /// Write a configuration change to the control group, then wait until
    /// `site` runs the version that contains it.
    pub async fn write(
        &self,
        site: &Site,
        cmd: Command,
    ) -> Result<CommandResponse, FederationError> {
        let expected = cmd.clone();
        let resp = self.writer.write(cmd).await?;
        if matches!(resp, CommandResponse::Ok) {
            // Written through the control group's leader, the change may not
            // have reached this node's replica yet: the version read below
            // would then be an older one, and the caller would be answered
            // before this site runs the change (events sent right after a
            // `PUT` rule would not be routed by it).
            self.wait_replica_shows(&expected).await;
        }
        let version = self
            .group
            .state
            .view()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        self.wait_applied(site, version).await?;
        Ok(resp)
    }

    /// Wait (at most the apply timeout) until this node's replica of the
    /// control group shows the effect of `cmd`.
    async fn wait_replica_shows(&self, cmd: &Command) {
        let deadline = Instant::now() + self.apply_timeout;
        let mut rx = self.group.state.subscribe_config();
        loop {
            rx.borrow_and_update();
            if strait_federation::control::shows(&self.group.state.view(), cmd) != Some(false) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    timeout_ms = self.apply_timeout.as_millis() as u64,
                    "a configuration change committed in the control group has not reached this node's replica"
                );
                return;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), rx.changed()).await;
        }
    }

    /// Wait until `site` runs control version `version` (or later).
    async fn wait_applied(&self, site: &Site, version: u64) -> Result<(), FederationError> {
        let deadline = Instant::now() + self.apply_timeout;
        let mut rx = site.state.subscribe_config();
        loop {
            if site.state.view().config_version >= version {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(FederationError::Unreachable(format!(
                    "the change is committed in the control group (version {version}) but this site has not applied it within {} ms (is its leader up?)",
                    self.apply_timeout.as_millis()
                )));
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), rx.changed()).await;
        }
    }

    /// The control group part of `GET /v1/cluster`.
    pub fn status(&self, site: &Site) -> Value {
        let m = self.group.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let replication = m.replication.clone().unwrap_or_default();
        let members: Vec<Value> = membership
            .nodes()
            .map(|(id, n)| {
                let mut v = json!({
                    "site": n.site,
                    "id": control_node_of(*id),
                    "voter": voters.contains(id),
                    "leader": Some(*id) == m.current_leader,
                });
                // On the control leader: how far each member's replica is.
                if let Some(matched) = replication.get(id) {
                    v["replicatedVersion"] = json!(matched.map(|l| l.index).unwrap_or(0));
                }
                v
            })
            .collect();
        let leader = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| (l, n.site.clone())))
            .map(|(l, s)| json!({"site": s, "id": control_node_of(l)}));
        json!({
            "role": crate::cluster::role(m.state),
            "term": m.current_term,
            "leader": leader,
            "version": self.group.state.view().last_applied.map(|l| l.index).unwrap_or(0),
            "appliedVersion": site.state.view().config_version,
            "members": members,
        })
    }
}

/// While this node leads its site: keep the site's buses and rules equal
/// to the control group's (as this node's replica has them), version by
/// version.
pub async fn import_loop(
    control: Control,
    state: Arc<SiteState>,
    writer: Writer,
    buses: Vec<String>,
) {
    let mut rx = control.group.state.subscribe_config();
    loop {
        rx.borrow_and_update();
        if let Err(e) = import_once(&control, &state, &writer, &buses).await {
            tracing::warn!(error = %e, "cannot import the shared configuration; retrying");
        }
        tokio::select! {
            _ = rx.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn import_once(
    control: &Control,
    state: &SiteState,
    writer: &Writer,
    buses: &[String],
) -> Result<(), FederationError> {
    let shared = SharedConfig::of(&control.group.state.view());
    let cmds = {
        let site = state.view();
        // A replica behind what this site already runs (a new site leader
        // whose control replica lags) must not roll the site back.
        if shared.version < site.config_version {
            return Ok(());
        }
        plan(&shared, &site, buses)
    };
    if cmds.is_empty() {
        return Ok(());
    }
    tracing::info!(
        version = shared.version,
        changes = cmds.len() - 1,
        "importing the shared configuration"
    );
    for cmd in cmds {
        let what = format!("{cmd:?}");
        match writer.write(cmd).await? {
            CommandResponse::Ok => {}
            other => {
                tracing::warn!(command = %what.chars().take(200).collect::<String>(), answer = ?other, "an imported change was refused")
            }
        }
    }
    metrics::gauge!("strait_config_version").set(shared.version as f64);
    Ok(())
}
