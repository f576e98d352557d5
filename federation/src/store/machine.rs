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
        if let Err(e) = clean_snapshot_dir(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot clean up old snapshot files");
        }
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

/// Store a snapshot: the data in a file of its own (written a chunk at a
/// time, see [`super::gentle`]), then the meta naming it, replaced
/// atomically; only then is the previous data file deleted (gently). A
/// crash at any point leaves the previous snapshot or the new one whole.
fn save_snapshot(dir: &Path, meta: &SnapshotMeta<NodeId, NodeInfo>, data: &[u8]) -> SResult<()> {
    let data_file = format!("snapshot-{}.data", super::gentle::unique());
    super::gentle::write_synced(&dir.join(&data_file), data).map_err(snap_err)?;
    let previous = read_meta(dir)?.map(|m| m.data_file);
    let m = serde_json::to_vec(&StoredSnapshotMeta {
        meta: meta.clone(),
        data_file: data_file.clone(),
    })
    .map_err(snap_err)?;
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    super::gentle::write_synced(&tmp, &m).map_err(snap_err)?;
    std::fs::rename(&tmp, dir.join(META_FILE)).map_err(snap_err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(snap_err)?;
    if let Some(previous) = previous
        && previous != data_file
    {
        let p = dir.join(previous);
        if p.exists() {
            super::gentle::discard(&p).map_err(snap_err)?;
        }
    }
    Ok(())
}

fn read_meta(dir: &Path) -> SResult<Option<StoredSnapshotMeta>> {
    match std::fs::read(dir.join(META_FILE)) {
        Ok(m) => serde_json::from_slice(&m).map(Some).map_err(snap_err),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(snap_err(e)),
    }
}

fn load_snapshot(dir: &Path) -> SResult<Option<Snapshot<TypeConfig>>> {
    let Some(meta) = read_meta(dir)? else {
        return Ok(None);
    };
    let data = std::fs::read(dir.join(&meta.data_file)).map_err(snap_err)?;
    Ok(Some(Snapshot {
        meta: meta.meta,
        snapshot: Box::new(Cursor::new(data)),
    }))
}

/// Delete snapshot files the meta does not name (a crash between writing
/// a snapshot and switching to it) and empty the trash.
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
