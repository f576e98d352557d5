//! Opening a site's Raft group on a data directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::network::RaftNetworkFactory;
use openraft::{ChangeMembers, Config, SnapshotPolicy};

use crate::command::{Command, CommandResponse};
use crate::error::FederationError;
use crate::network::LocalOnly;
use crate::store::fault::Fault;
use crate::store::log::LogStore;
use crate::store::machine::StateMachine;
use crate::store::state::SiteState;
use crate::{NodeId, NodeInfo, Raft, TypeConfig};

/// How a site's Raft group is formed when this node's storage is new.
#[derive(Debug, Clone, Default)]
pub enum Bootstrap {
    /// A one-member group of this node (what [`Site::open`] does).
    #[default]
    Single,
    /// A group of these members (give it to exactly one node of a new site;
    /// the others start with [`Bootstrap::Join`]).
    Members(BTreeMap<NodeId, NodeInfo>),
    /// Do not initialize: wait for the group's leader to add this node.
    Join,
}

/// Deadline of each install-snapshot RPC (openraft's
/// `install_snapshot_timeout`).
///
/// openraft 0.9 sends a snapshot in chunks of `snapshot_max_chunk_size`
/// (3 MiB) and gives **each** chunk's request this long (its default is
/// 200 ms); the answer to the last chunk comes only once the follower has
/// loaded the whole snapshot into a new state database, which takes minutes
/// for a state of tens of GB (a 10 GiB state in 137 s on the development
/// machine, see docs/benchmarks.md). A chunk that misses the deadline fails
/// the whole send (openraft's `Chunked::send_snapshot` does not retry a
/// timed-out chunk), and the replication starts it again from the first
/// byte: with the default, every send whose install takes longer than
/// 200 ms fails on its last chunk and is repeated.
///
/// A dead or unreachable follower is not waited for this long: the QUIC
/// transport closes a connection that stays silent for its idle timeout
/// (6 s, with keep-alives every second), which fails the request at once.
/// What this bounds is a live follower's work on one chunk, including the
/// install: one hour covers installing a state of about 250 GB at that
/// rate.
pub const INSTALL_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(3600);

/// Most entries between snapshots, as a multiple of `snapshot_every`.
const SNAPSHOT_MAX_FACTOR: u64 = 64;

/// Bytes the file at `path` takes on disk: its allocated blocks (the
/// state database grows its file ahead of use; what it has not written
/// takes no space). 0 when it cannot be read.
pub fn disk_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// Whether `snapshot_trigger` builds a snapshot now: `since` entries
/// were applied since the last one (`every` at least), the log holds
/// `log_bytes` beyond it and the state database `state_bytes`.
pub fn snapshot_due(since: u64, every: u64, log_bytes: u64, state_bytes: u64) -> bool {
    since >= every
        && (log_bytes >= state_bytes / 2 || since >= every.saturating_mul(SNAPSHOT_MAX_FACTOR))
}

/// Build a snapshot (after which openraft purges the log) once at least
/// `every` entries were applied since the last one **and** the log since
/// then holds at least half as many bytes as the state database takes on
/// disk, or once `SNAPSHOT_MAX_FACTOR × every` entries were applied.
///
/// Building a snapshot only makes the state durable (the state database
/// is the snapshot, see [`crate::store::machine`]); what the log keeps is
/// what a follower that fell behind can catch up from without being sent
/// the whole state. Half the state's size keeps the log's disk use at most
/// about half the state's.
async fn snapshot_trigger(raft: Raft, log: LogStore, state_path: std::path::PathBuf, every: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let m = raft.metrics().borrow().clone();
        if m.state == openraft::ServerState::Shutdown {
            return;
        }
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        let snapshot = m.snapshot.map(|l| l.index);
        let since = applied.saturating_sub(snapshot.unwrap_or(0));
        if since < every {
            continue;
        }
        let log_bytes = log.bytes_after(snapshot);
        let state_bytes = disk_bytes(&state_path);
        if snapshot_due(since, every, log_bytes, state_bytes) {
            tracing::info!(since, log_bytes, state_bytes, "building a snapshot");
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
            // Let it finish before deciding again.
            let _ = raft
                .wait(Some(Duration::from_secs(120)))
                .metrics(
                    |m| m.snapshot.map(|l| l.index) != snapshot,
                    "snapshot built",
                )
                .await;
        }
    }
}

/// How to open a site.
#[derive(Debug, Clone)]
pub struct SiteOptions {
    /// Data directory (created if missing).
    pub data_dir: PathBuf,
    /// This node's id in the group.
    pub node_id: NodeId,
    /// This node's addresses.
    pub node: NodeInfo,
    /// Build a snapshot (and purge the log before it) after this many entries.
    pub snapshot_every: u64,
    /// Fsync applied state at most this often (zero: on every apply).
    pub state_flush_interval: Duration,
    /// Fsync the Raft log at most this often (zero, the default: every
    /// append is fsynced before it counts as written; see
    /// [`crate::store::log`]).
    pub log_sync_interval: Duration,
    /// Raft timing.
    pub timing: RaftTiming,
}

/// Raft heartbeat and election timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    /// Leader heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// A follower that hears nothing for a random time between this and
    /// twice this starts an election, ms.
    pub election_timeout_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_ms: 100,
            election_timeout_ms: 300,
        }
    }
}

/// A running site group on this node.
#[derive(Clone)]
pub struct Site {
    /// The Raft handle.
    pub raft: Raft,
    /// The replicated state (read side).
    pub state: Arc<SiteState>,
    /// This node's id.
    pub node_id: NodeId,
    /// The first storage error of this node, as it happened.
    fault: Fault,
    /// The Raft log (unit tests inject a full disk through it).
    #[cfg(test)]
    log: LogStore,
}

impl Site {
    /// Open storage, start Raft, and initialize a one-member group on first start.
    pub async fn open(opts: SiteOptions) -> Result<Site, FederationError> {
        Site::open_with_network(opts, LocalOnly, Bootstrap::Single).await
    }

    /// Open storage and start Raft with `network` to reach the other
    /// members (e.g. [`crate::network_quic::QuicNetwork`]); on first start
    /// form the group as `bootstrap` says. A node restarting on existing
    /// storage ignores `bootstrap`.
    pub async fn open_with_network<N>(
        opts: SiteOptions,
        network: N,
        bootstrap: Bootstrap,
    ) -> Result<Site, FederationError>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        std::fs::create_dir_all(&opts.data_dir).map_err(|e| FederationError::Storage {
            path: opts.data_dir.display().to_string(),
            message: e.to_string(),
        })?;
        let old_log = opts.data_dir.join("raft-log.redb");
        if old_log.exists() {
            // Written by a Strait before the segment log: its vote and
            // entries would be ignored, and a node that forgets its vote may
            // vote twice in one term.
            return Err(FederationError::Storage {
                path: old_log.display().to_string(),
                message: "this data directory holds a Raft log in the old format (raft-log.redb); \
                          remove the node's data directory and let it catch up from its site, \
                          or run the Strait version that wrote it"
                    .into(),
            });
        }
        let fault = Fault::default();
        let log =
            LogStore::open_with_sync(&opts.data_dir.join("raft-log"), opts.log_sync_interval)?
                .with_fault(fault.clone());
        let state = SiteState::open(&opts.data_dir.join("state.redb"))?;
        let sm = StateMachine::new(state.clone(), &opts.data_dir, opts.state_flush_interval)
            .with_fault(fault.clone());
        let config = Config {
            cluster_name: "strait-site".into(),
            heartbeat_interval: opts.timing.heartbeat_ms,
            election_timeout_min: opts.timing.election_timeout_ms,
            election_timeout_max: opts.timing.election_timeout_ms * 2,
            // Triggered by `snapshot_trigger` below, by size as well as count.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 256,
            // openraft 0.9 gives every append-entries request one heartbeat
            // interval to complete: keep requests small (entries are ~1 MiB).
            max_payload_entries: 2,
            install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT.as_millis() as u64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| FederationError::Raft(e.to_string()))?;
        let log_handle = log.clone();
        #[cfg(test)]
        let log_for_tests = log.clone();
        let raft = Raft::new(opts.node_id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| FederationError::Raft(e.to_string()))?;
        tokio::spawn(snapshot_trigger(
            raft.clone(),
            log_handle,
            opts.data_dir.join("state.redb"),
            opts.snapshot_every.max(16),
        ));
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| FederationError::Raft(e.to_string()))?;
        if initialized {
            // A restarted member must not start an election before it has
            // had a chance to hear the current leader: its higher term would
            // depose a healthy leader (openraft 0.9 has no pre-vote).
            let voters = raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .count();
            if voters > 1 {
                raft.runtime_config().elect(false);
                let r = raft.clone();
                let quiet = Duration::from_millis(opts.timing.election_timeout_ms * 4);
                tokio::spawn(async move {
                    let _ = r
                        .wait(Some(quiet))
                        .metrics(|m| m.current_leader.is_some(), "heard a leader")
                        .await;
                    r.runtime_config().elect(true);
                });
            }
        }
        if !initialized {
            let members = match bootstrap {
                Bootstrap::Single => Some(BTreeMap::from([(opts.node_id, opts.node.clone())])),
                Bootstrap::Members(m) => Some(m),
                Bootstrap::Join => None,
            };
            if let Some(members) = members {
                raft.initialize(members)
                    .await
                    .map_err(|e| FederationError::Raft(e.to_string()))?;
            }
        }
        Ok(Site {
            raft,
            state,
            node_id: opts.node_id,
            fault,
            #[cfg(test)]
            log: log_for_tests,
        })
    }

    /// Why this node's Raft stopped on its own, or `None` while it runs
    /// (and after a clean [`Site::shutdown`]).
    ///
    /// openraft stops a node for good when its storage fails (a log append,
    /// an apply, a snapshot: a full disk, an I/O error): from then on every
    /// write through this node fails until the process is restarted. What
    /// was acknowledged before is on disk; what failed was never
    /// acknowledged.
    pub fn failure(&self) -> Option<SiteFailure> {
        let metrics = self.raft.metrics();
        let failure = failure_of(&metrics.borrow().running_state, &self.fault);
        failure.or_else(|| gone(&metrics))
    }

    /// Wait until this node's Raft stops on its own ([`Site::failure`]);
    /// never resolves after a clean shutdown.
    pub async fn failed(&self) -> SiteFailure {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(f) = failure_of(&metrics.borrow_and_update().running_state, &self.fault) {
                return f;
            }
            if metrics.changed().await.is_err() {
                // The metrics sender is gone: read its last word once more.
                if let Some(f) = failure_of(&metrics.borrow().running_state, &self.fault)
                    .or_else(|| gone(&metrics))
                {
                    return f;
                }
                std::future::pending::<()>().await;
            }
        }
    }

    /// Wait until the group has a leader (bounded by `timeout`).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, FederationError> {
        let metrics = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "leader elected")
            .await
            .map_err(|e| FederationError::Raft(e.to_string()))?;
        metrics
            .current_leader
            .ok_or_else(|| FederationError::Raft("no leader".into()))
    }

    /// Member `id`'s addresses in the current membership, if it is a member.
    pub fn member(&self, id: NodeId) -> Option<NodeInfo> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
    }

    /// Whether this node currently leads its site.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.state == openraft::ServerState::Leader && m.current_leader == Some(self.node_id)
    }

    /// Wait until this node leads (or leads no more, with `leading = false`).
    /// Returns `false` when Raft has stopped.
    pub async fn wait_leading(&self, leading: bool) -> bool {
        let mut metrics = self.raft.metrics();
        while self.is_leader() != leading {
            if metrics.changed().await.is_err() {
                return false;
            }
        }
        true
    }

    /// Wait until this node leads **and** a quorum of its site has just
    /// confirmed it (answered a heartbeat of its term), with its state
    /// machine caught up to what was committed when it asked. Returns
    /// `false` when Raft has stopped.
    ///
    /// [`Self::wait_leading`] alone is not enough for work only one node
    /// may do: a node restarted after leading resumes its old term as
    /// leader at once (openraft restores a committed vote of its own
    /// without an election), even when the site has elected another leader
    /// in a later term meanwhile; it only steps down at the first answer of
    /// a follower. This waits for that answer: a stale leader never
    /// returns from here, it steps down and waits as a follower.
    pub async fn wait_confirmed_leading(&self) -> bool {
        let retry = Duration::from_millis(self.raft.config().heartbeat_interval.max(10));
        loop {
            if !self.wait_leading(true).await {
                return false;
            }
            match self.raft.ensure_linearizable().await {
                Ok(_) if self.is_leader() => return true,
                Ok(_) => {}
                Err(RaftError::Fatal(_)) => return false,
                Err(RaftError::APIError(e)) => {
                    tracing::debug!(error = %e, "leadership not confirmed yet");
                }
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Propose a command and wait until it is committed and applied.
    pub async fn write(&self, cmd: Command) -> Result<CommandResponse, FederationError> {
        match self.raft.client_write(cmd).await {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(FederationError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(e) => Err(FederationError::Write(e.to_string())),
        }
    }

    /// Propose a command without waiting for it: when this returns, the
    /// proposal is queued in this node's Raft in call order (so proposals
    /// made one after the other by one task are applied in that order); the
    /// returned future resolves once it is committed and applied. Lets a
    /// caller keep several proposals in flight (pipelining).
    pub async fn submit(
        &self,
        cmd: Command,
    ) -> Result<
        impl std::future::Future<Output = Result<CommandResponse, FederationError>> + Send + 'static,
        FederationError,
    > {
        let rx = self
            .raft
            .client_write_ff(cmd)
            .await
            .map_err(|e| FederationError::Write(e.to_string()))?;
        Ok(async move {
            match rx.await {
                Ok(Ok(resp)) => Ok(resp.data),
                Ok(Err(ClientWriteError::ForwardToLeader(f))) => Err(FederationError::NotLeader {
                    leader: f.leader_id,
                }),
                Ok(Err(e)) => Err(FederationError::Write(e.to_string())),
                Err(_) => Err(FederationError::Write(
                    "raft stopped before answering".into(),
                )),
            }
        })
    }

    /// Add `id` (reached at `node`) to the group as a voter: first as a
    /// learner, waiting until it has caught up, then promoted. Must run on
    /// the leader. Adding a node that is already a voter only updates
    /// nothing and succeeds.
    pub async fn add_member(&self, id: NodeId, node: NodeInfo) -> Result<(), FederationError> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        if membership.membership().voter_ids().any(|v| v == id) {
            return Ok(());
        }
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(membership_error)?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(membership_error)?;
        Ok(())
    }

    /// Remove `id` from the group (voter and node). Must run on the leader.
    /// The last voter cannot be removed.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), FederationError> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
        let known = membership.membership().get_node(&id).is_some();
        if !known {
            return Err(FederationError::Membership(format!(
                "node {id} is not a member of this site"
            )));
        }
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(FederationError::Membership(format!(
                    "node {id} is the only voter; a site cannot remove its last voter"
                )));
            }
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(membership_error)?;
        }
        if self.member(id).is_some() {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(membership_error)?;
        }
        Ok(())
    }

    /// Stop Raft cleanly and make applied state durable.
    pub async fn shutdown(&self) -> Result<(), FederationError> {
        self.raft
            .shutdown()
            .await
            .map_err(|e| FederationError::Raft(e.to_string()))?;
        self.state.flush().map_err(|e| FederationError::Storage {
            path: "state.redb".into(),
            message: e.to_string(),
        })
    }
}

/// Why a node's Raft stopped on its own (see [`Site::failure`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteFailure {
    /// A storage error (true) or a panic in Raft (false).
    pub storage: bool,
    /// What failed, as openraft reports it (the storage error names the
    /// operation and the operating system's error).
    pub message: String,
}

/// What stopped Raft: the storage error noted first by the log store or the
/// state machine (openraft may report a later one, such as "channel closed"
/// when its state machine worker has already stopped), else what openraft
/// reports.
fn failure_of(
    state: &Result<(), openraft::error::Fatal<NodeId>>,
    fault: &Fault,
) -> Option<SiteFailure> {
    match state {
        Ok(()) | Err(openraft::error::Fatal::Stopped) => None,
        Err(openraft::error::Fatal::StorageError(e)) => Some(SiteFailure {
            storage: true,
            message: fault.first().unwrap_or_else(|| e.to_string()),
        }),
        Err(other) if fault.first().is_some() => Some(SiteFailure {
            storage: true,
            message: fault.first().unwrap_or_else(|| other.to_string()),
        }),
        Err(other) => Some(SiteFailure {
            storage: false,
            message: other.to_string(),
        }),
    }
}

/// Raft's metrics sender is gone although it never reported stopping: its
/// task ended abruptly (a panic). A clean shutdown reports `Stopped` first.
fn gone(
    metrics: &tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, NodeInfo>>,
) -> Option<SiteFailure> {
    let running = metrics.borrow().running_state.is_ok();
    (running && metrics.has_changed().is_err()).then(|| SiteFailure {
        storage: false,
        message: "the Raft task ended without reporting why (a panic?)".into(),
    })
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> FederationError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => FederationError::NotLeader {
            leader: f.leader_id,
        },
        other => FederationError::Membership(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use serde_json::value::RawValue;

    use super::*;
    use crate::{AppendEntry, AppendOutcome};

    fn opts(dir: &std::path::Path) -> SiteOptions {
        SiteOptions {
            data_dir: dir.to_path_buf(),
            node_id: 1,
            node: NodeInfo::default(),
            snapshot_every: 100_000,
            state_flush_interval: Duration::ZERO,
            log_sync_interval: Duration::ZERO,
            timing: Default::default(),
        }
    }

    fn append(ids: std::ops::Range<u32>) -> anyhow::Result<Command> {
        let mut entries = Vec::new();
        for i in ids {
            let id = format!("e{i:05}");
            let ev = json!({"specversion": "1.0", "id": id, "source": "/t", "type": "t", "data": {"pad": "x".repeat(200)}});
            entries.push(AppendEntry {
                bus: "b".into(),
                source: "/t".into(),
                id,
                event: RawValue::from_string(ev.to_string())?,
            });
        }
        Ok(Command::Append {
            ingest_ms: 1_000_000,
            dedup_window_ms: 60_000,
            entries: entries.into(),
        })
    }

    async fn open(dir: &std::path::Path) -> anyhow::Result<Site> {
        let site = Site::open(opts(dir)).await?;
        site.wait_for_leader(Duration::from_secs(10)).await?;
        Ok(site)
    }

    /// A log append on a full disk stops Raft for good and [`Site::failure`]
    /// says why; the committed writes before it survive a restart, the
    /// record cut short by the full disk is cut off, and the log goes on.
    #[tokio::test]
    async fn a_full_disk_on_log_append_is_reported_and_a_reopen_keeps_what_was_committed()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let site = open(dir.path()).await?;
        site.write(Command::PutBus {
            name: "b".into(),
            spec: json!({}),
        })
        .await?;
        for k in 0..10 {
            site.write(append(k * 20..(k + 1) * 20)?).await?;
        }
        assert_eq!(site.failure(), None);
        site.log.limit_room(Some(1000));
        let err = match site.write(append(200..220)?).await {
            Ok(r) => anyhow::bail!("a write on a full disk succeeded: {r:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("os error 28"), "{err}");
        let failure = site
            .failure()
            .ok_or_else(|| anyhow::anyhow!("no failure reported"))?;
        assert!(failure.storage, "{failure:?}");
        assert!(failure.message.contains("os error 28"), "{failure:?}");
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), site.failed()).await?,
            failure
        );
        // Room again: still stopped (openraft does not recover).
        site.log.limit_room(None);
        assert!(site.write(append(300..301)?).await.is_err());
        assert!(site.failure().is_some());
        let _ = site.shutdown().await;
        drop(site);

        let site = open(dir.path()).await?;
        assert_eq!(site.failure(), None);
        let stored = site.state.read_events("b", 0, 1000)?;
        let ids: Vec<String> = stored
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_slice(&e.json)?;
                Ok(v["id"].as_str().unwrap_or_default().to_string())
            })
            .collect::<anyhow::Result<_>>()?;
        let want: Vec<String> = (0..200).map(|i| format!("e{i:05}")).collect();
        assert_eq!(ids, want, "exactly the acknowledged events");
        match site.write(append(200..220)?).await? {
            CommandResponse::Appended(o) => {
                assert!(
                    o.iter().all(|o| matches!(o, AppendOutcome::Accepted(_))),
                    "{o:?}"
                );
            }
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
        site.shutdown().await?;
        Ok(())
    }
}
