//! openraft's state machine and snapshot traits over [`SiteState`].

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::state::SiteState;
use super::{blocking, storage_err};
use crate::command::CommandResponse;
use crate::{NodeId, NodeInfo, TypeConfig};

type SResult<T> = Result<T, StorageError<NodeId>>;

/// The Raft state machine of a site.
pub struct StateMachine {
    state: Arc<SiteState>,
    dir: PathBuf,
    last_durable: Instant,
    flush_interval: Duration,
    snapshot_seq: u64,
}

impl StateMachine {
    /// A state machine over `state`, keeping snapshots in `dir`, fsyncing
    /// applied state at most every `flush_interval` (zero: every apply).
    pub fn new(state: Arc<SiteState>, dir: &Path, flush_interval: Duration) -> StateMachine {
        StateMachine {
            state,
            dir: dir.to_path_buf(),
            last_durable: Instant::now(),
            flush_interval,
            snapshot_seq: 0,
        }
    }
}

/// Builds snapshots off the apply path.
pub struct SnapshotBuilder {
    state: Arc<SiteState>,
    dir: PathBuf,
    seq: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshotMeta {
    meta: SnapshotMeta<NodeId, NodeInfo>,
}

fn snap_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    storage_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, &e)
}

/// Write the current snapshot (data then meta, each atomically by rename).
fn save_snapshot(dir: &Path, meta: &SnapshotMeta<NodeId, NodeInfo>, data: &[u8]) -> SResult<()> {
    let write = |name: &str, bytes: &[u8]| -> SResult<()> {
        let tmp = dir.join(format!("{name}.tmp"));
        let f = std::fs::File::create(&tmp).map_err(snap_err)?;
        use std::io::Write;
        let mut w = std::io::BufWriter::new(f);
        w.write_all(bytes).map_err(snap_err)?;
        let f = w.into_inner().map_err(|e| snap_err(e.into_error()))?;
        f.sync_all().map_err(snap_err)?;
        std::fs::rename(&tmp, dir.join(name)).map_err(snap_err)
    };
    write("snapshot.data", data)?;
    let m = serde_json::to_vec(&StoredSnapshotMeta { meta: meta.clone() }).map_err(snap_err)?;
    write("snapshot.meta.json", &m)
}

fn load_snapshot(dir: &Path) -> SResult<Option<Snapshot<TypeConfig>>> {
    let meta_path = dir.join("snapshot.meta.json");
    if !meta_path.exists() {
        return Ok(None);
    }
    let m = std::fs::read(&meta_path).map_err(snap_err)?;
    let meta: StoredSnapshotMeta = serde_json::from_slice(&m).map_err(snap_err)?;
    let data = std::fs::read(dir.join("snapshot.data")).map_err(snap_err)?;
    Ok(Some(Snapshot {
        meta: meta.meta,
        snapshot: Box::new(Cursor::new(data)),
    }))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> SResult<Snapshot<TypeConfig>> {
        let state = self.state.clone();
        let dir = self.dir.clone();
        let seq = self.seq;
        blocking(move || {
            let image = state.snapshot_bytes()?;
            let (last_applied, membership, data) =
                (image.last_applied, image.membership, image.data);
            let snapshot_id = match last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, seq),
                None => format!("--{seq}"),
            };
            let meta = SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id,
            };
            save_snapshot(&dir, &meta, &data)?;
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            })
        })
        .await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> SResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeInfo>)> {
        let view = self.state.view();
        Ok((view.last_applied, view.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> SResult<Vec<CommandResponse>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let durable = self.last_durable.elapsed() >= self.flush_interval;
        if durable {
            self.last_durable = Instant::now();
        }
        let state = self.state.clone();
        let started = Instant::now();
        let result = blocking(move || state.apply(entries, durable)).await;
        metrics::histogram!("strait_state_apply_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        SnapshotBuilder {
            state: self.state.clone(),
            dir: self.dir.clone(),
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> SResult<()> {
        let data = snapshot.into_inner();
        let state = self.state.clone();
        let dir = self.dir.clone();
        let meta = meta.clone();
        blocking(move || {
            state.install_snapshot(&data)?;
            state.flush()?;
            save_snapshot(&dir, &meta, &data)
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot<TypeConfig>>> {
        let dir = self.dir.clone();
        blocking(move || load_snapshot(&dir)).await
    }
}
