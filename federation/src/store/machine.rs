//! openraft's state machine and snapshot traits over [`SiteState`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::snapshot_file::{Lease, Leases, SnapshotFile};
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
    leases: Arc<Leases>,
    /// Files being received from a leader (at most one is installed; the
    /// others were abandoned).
    receiving: Vec<PathBuf>,
}

impl StateMachine {
    /// A state machine over `state`, keeping snapshots in `dir`, fsyncing
    /// applied state at most every `flush_interval` (zero: every apply).
    pub fn new(state: Arc<SiteState>, dir: &Path, flush_interval: Duration) -> StateMachine {
        if let Err(e) = clean_snapshot_dir(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot clean up old snapshot files");
        }
        StateMachine {
            state,
            dir: dir.to_path_buf(),
            last_durable: Instant::now(),
            flush_interval,
            snapshot_seq: 0,
            leases: Arc::new(Leases::default()),
            receiving: Vec::new(),
        }
    }
}

/// Builds snapshots off the apply path.
pub struct SnapshotBuilder {
    state: Arc<SiteState>,
    dir: PathBuf,
    seq: u64,
    leases: Arc<Leases>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshotMeta {
    meta: SnapshotMeta<NodeId, NodeInfo>,
    /// The data file beside it (older nodes: `snapshot.data`).
    #[serde(default = "legacy_data_file")]
    data_file: String,
}

fn legacy_data_file() -> String {
    "snapshot.data".into()
}

const META_FILE: &str = "snapshot.meta.json";

fn snap_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    storage_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, &e)
}

/// A name for a new snapshot data file.
fn new_data_file() -> String {
    format!("snapshot-{}.data", super::gentle::unique())
}

/// Make `data_file` (written and fsynced) the current snapshot: the meta
/// naming it is replaced atomically; only then is the previous data file
/// deleted (gently, and once nobody sends it any more). A crash at any
/// point leaves the previous snapshot or the new one whole.
fn switch_snapshot(
    dir: &Path,
    leases: &Leases,
    meta: &SnapshotMeta<NodeId, NodeInfo>,
    data_file: &str,
) -> SResult<Arc<Lease>> {
    let _switching = leases.switching();
    let current = read_meta(dir)?;
    if let Some(c) = &current
        && c.meta.last_log_id > meta.last_log_id
    {
        // A newer snapshot was installed while this one was built: keep
        // it; this one is deleted once its caller drops it.
        return Ok(leases.orphan(&dir.join(data_file)));
    }
    let previous = current.map(|m| dir.join(m.data_file));
    let m = serde_json::to_vec(&StoredSnapshotMeta {
        meta: meta.clone(),
        data_file: data_file.to_string(),
    })
    .map_err(snap_err)?;
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    super::gentle::write_synced(&tmp, &m).map_err(snap_err)?;
    std::fs::rename(&tmp, dir.join(META_FILE)).map_err(snap_err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(snap_err)?;
    Ok(leases.switch(&dir.join(data_file), previous.as_deref()))
}

fn read_meta(dir: &Path) -> SResult<Option<StoredSnapshotMeta>> {
    match std::fs::read(dir.join(META_FILE)) {
        Ok(m) => serde_json::from_slice(&m).map(Some).map_err(snap_err),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(snap_err(e)),
    }
}

/// Delete snapshot files the meta does not name (a crash between writing
/// a snapshot and switching to it, or while receiving one) and empty the
/// trash.
fn clean_snapshot_dir(dir: &Path) -> SResult<()> {
    let keep = read_meta(dir)?.map(|m| m.data_file);
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(snap_err(e)),
    };
    for item in entries {
        let item = item.map_err(snap_err)?;
        let name = item.file_name().to_string_lossy().into_owned();
        let stale_data = name.starts_with("snapshot")
            && name.ends_with(".data")
            && keep.as_deref() != Some(name.as_str());
        let stale_tmp = name.starts_with("snapshot") && name.ends_with(".tmp");
        if stale_data || stale_tmp {
            super::gentle::discard(&item.path()).map_err(snap_err)?;
        }
    }
    super::gentle::empty_trash(dir).map_err(snap_err)
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> SResult<Snapshot<TypeConfig>> {
        let state = self.state.clone();
        let dir = self.dir.clone();
        let seq = self.seq;
        let leases = self.leases.clone();
        let started = Instant::now();
        let (meta, path, lease, bytes) = blocking(move || {
            let txn = state.flush_for_snapshot()?;
            // Streamed from the read transaction to the file: memory stays
            // at a few buffers whatever the state holds.
            let data_file = new_data_file();
            let path = dir.join(&data_file);
            let mut out = super::gentle::SyncedWriter::create(&path).map_err(snap_err)?;
            let written = state
                .write_snapshot(&txn.txn, &mut out)
                .and_then(|info| out.finish().map(|()| info).map_err(snap_err));
            drop(txn);
            let info = match written {
                Ok(info) => info,
                Err(e) => {
                    // Not left behind until the next start.
                    if let Err(d) = super::gentle::discard(&path) {
                        tracing::warn!(file = %path.display(), error = %d, "cannot delete a partly written snapshot");
                    }
                    return Err(e);
                }
            };
            let snapshot_id = match info.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, seq),
                None => format!("--{seq}"),
            };
            let meta = SnapshotMeta {
                last_log_id: info.last_applied,
                last_membership: info.membership,
                snapshot_id,
            };
            let lease = switch_snapshot(&dir, &leases, &meta, &data_file)?;
            Ok((meta, path, lease, info.counts.bytes))
        })
        .await?;
        tracing::info!(
            bytes,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        );
        let data = SnapshotFile::open(path, Some(lease))
            .await
            .map_err(snap_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
        })
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
            leases: self.leases.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<SnapshotFile>> {
        // An earlier transfer that never finished is abandoned.
        for stale in self.receiving.drain(..) {
            if stale.exists()
                && let Err(e) = super::gentle::discard(&stale)
            {
                tracing::warn!(file = %stale.display(), error = %e, "cannot delete an abandoned snapshot");
            }
        }
        let path = self.dir.join(new_data_file());
        let file = SnapshotFile::create(path.clone()).await.map_err(snap_err)?;
        self.receiving.push(path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        mut snapshot: Box<SnapshotFile>,
    ) -> SResult<()> {
        snapshot.sync().await.map_err(snap_err)?;
        let path = snapshot.path().to_path_buf();
        drop(snapshot);
        self.receiving.retain(|p| *p != path);
        let data_file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let state = self.state.clone();
        let dir = self.dir.clone();
        let meta = meta.clone();
        let leases = self.leases.clone();
        let started = Instant::now();
        blocking(move || {
            // Read back from disk a buffer at a time and loaded into a new
            // state file; the received file becomes this node's snapshot.
            let file = std::fs::File::open(&path).map_err(snap_err)?;
            state.install_snapshot_from(file)?;
            switch_snapshot(&dir, &leases, &meta, &data_file).map(drop)
        })
        .await?;
        tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot installed"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot<TypeConfig>>> {
        let dir = self.dir.clone();
        let Some(stored) = blocking(move || read_meta(&dir)).await? else {
            return Ok(None);
        };
        let path = self.dir.join(&stored.data_file);
        let lease = self.leases.hold(&path);
        let data = SnapshotFile::open(path, Some(lease))
            .await
            .map_err(snap_err)?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(data),
        }))
    }
}
