//! Opening a site's Raft group on a data directory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{Config, SnapshotPolicy};

use crate::command::{Command, CommandResponse};
use crate::error::FederationError;
use crate::network::LocalOnly;
use crate::store::log::LogStore;
use crate::store::machine::StateMachine;
use crate::store::state::SiteState;
use crate::{NodeId, NodeInfo, Raft};

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
    /// Fsync applied state at most this often (zero: on every apply). The
    /// log is always fsynced before an entry counts as written.
    pub state_flush_interval: Duration,
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
}

impl Site {
    /// Open storage, start Raft, and initialize a one-member group on first start.
    pub async fn open(opts: SiteOptions) -> Result<Site, FederationError> {
        std::fs::create_dir_all(&opts.data_dir).map_err(|e| FederationError::Storage {
            path: opts.data_dir.display().to_string(),
            message: e.to_string(),
        })?;
        let log = LogStore::open(&opts.data_dir.join("raft-log.redb"))?;
        let state = SiteState::open(&opts.data_dir.join("state.redb"))?;
        let sm = StateMachine::new(state.clone(), &opts.data_dir, opts.state_flush_interval);
        let config = Config {
            cluster_name: "strait-site".into(),
            heartbeat_interval: 250,
            election_timeout_min: 600,
            election_timeout_max: 1200,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_every.max(16)),
            max_in_snapshot_log_to_keep: 256,
            ..Default::default()
        }
        .validate()
        .map_err(|e| FederationError::Raft(e.to_string()))?;
        let raft = Raft::new(opts.node_id, Arc::new(config), LocalOnly, log, sm)
            .await
            .map_err(|e| FederationError::Raft(e.to_string()))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| FederationError::Raft(e.to_string()))?;
        if !initialized {
            let mut members = BTreeMap::new();
            members.insert(opts.node_id, opts.node.clone());
            raft.initialize(members)
                .await
                .map_err(|e| FederationError::Raft(e.to_string()))?;
        }
        Ok(Site {
            raft,
            state,
            node_id: opts.node_id,
        })
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
