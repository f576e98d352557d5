//! openraft's state machine and snapshot traits over [`SiteState`].
//!
//! **The state database is the snapshot.** A snapshot of the state at a
//! log position is what openraft needs for two things: purging the log
//! before that position, and bringing a follower that lacks the purged
//! entries up to date. For the first, the state only has to be durable up
//! to the position: [`SnapshotBuilder::build_snapshot`] makes it so (one
//! fsync, [`SiteState::flush_for_snapshot`]) and reports the position it
//! covers; no file is written. For the second, [`StateMachine`]'s
//! `get_current_snapshot` takes a read of the current state and hands
//! openraft a [`SnapshotFile`] that writes that version in the snapshot
//! format ([`super::snapshot`]) when it is first read, and deletes the
//! file when it is dropped. That snapshot is at least as new as the last
//! one built (openraft 0.9 accepts a snapshot newer than the one it chose
//! to send), and the log holds every entry after the last one built, so
//! the follower can go on from it.
//!
//! Crash safety: the log is purged only up to a position the state
//! database holds durably, and a restart finds the state at that position
//! or later (openraft then re-applies the log after it). A crash while a
//! snapshot is written or received leaves a file that the next start
//! deletes; a received snapshot replaces the state in one rename
//! ([`SiteState::install_snapshot_from`]).
//!
//! Nodes of older versions kept the last snapshot as a file
//! (`snapshot.meta.json` and a data file) beside the state: the state
//! database was always at least as new (a snapshot was written from it, or
//! installed into it before it became current), so those files are
//! deleted at the next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StoredMembership,
};

use super::fault::Fault;
use super::snapshot_file::SnapshotFile;
use super::state::{SiteState, StateRead};
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
    /// Files being received from a leader (at most one is installed; the
    /// others were abandoned).
    receiving: Vec<PathBuf>,
    fault: Fault,
}

impl StateMachine {
    /// A state machine over `state`, writing snapshots (to send or
    /// received) in `dir`, fsyncing applied state at most every
    /// `flush_interval` (zero: every apply).
    pub fn new(state: Arc<SiteState>, dir: &Path, flush_interval: Duration) -> StateMachine {
        if let Err(e) = clean_snapshot_dir(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot clean up old snapshot files");
        }
        StateMachine {
            state,
            dir: dir.to_path_buf(),
            last_durable: Instant::now(),
            flush_interval,
            receiving: Vec::new(),
            fault: Fault::default(),
        }
    }

    /// Note this machine's storage errors in `fault` (shared with the log
    /// store of the same node).
    pub fn with_fault(mut self, fault: Fault) -> StateMachine {
        self.fault = fault;
        self
    }
}

/// Reports the state's durable position to openraft (see the module
/// documentation).
pub struct SnapshotBuilder {
    state: Arc<SiteState>,
    dir: PathBuf,
    fault: Fault,
}

/// The snapshot meta file of older versions.
const LEGACY_META_FILE: &str = "snapshot.meta.json";

fn snap_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    storage_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, &e)
}

/// A name for a new snapshot data file.
fn new_data_file() -> String {
    format!("snapshot-{}.data", super::paced_io::unique())
}

/// Delete snapshot files: those of older versions, and those a crash left
/// while a snapshot was written or received; then empty the trash.
fn clean_snapshot_dir(dir: &Path) -> SResult<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(snap_err(e)),
    };
    for item in entries {
        let item = item.map_err(snap_err)?;
        let name = item.file_name().to_string_lossy().into_owned();
        let data = name.starts_with("snapshot") && name.ends_with(".data");
        let tmp = name.starts_with("snapshot") && name.ends_with(".tmp");
        if data || tmp || name == LEGACY_META_FILE {
            super::paced_io::discard(&item.path()).map_err(snap_err)?;
        }
    }
    super::paced_io::empty_trash(dir).map_err(snap_err)
}

/// A snapshot of the version of the state `read` sees: its meta now, its
/// data written to a file in `dir` when first read.
fn snapshot_of(
    state: &Arc<SiteState>,
    read: StateRead,
    dir: &Path,
) -> SResult<Option<Snapshot<TypeConfig>>> {
    let (last_applied, membership) = state.applied_in(&read.txn)?;
    let Some(last) = last_applied else {
        return Ok(None);
    };
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: membership,
        snapshot_id: format!(
            "{}-{}-{}",
            last.leader_id,
            last.index,
            super::paced_io::unique()
        ),
    };
    let writer = state.clone();
    let data = SnapshotFile::deferred(
        dir.join(new_data_file()),
        Box::new(move |path| {
            let started = Instant::now();
            let mut out = super::paced_io::SyncedWriter::create(path)?;
            let info = writer
                .write_snapshot(&read.txn, &mut out)
                .map_err(std::io::Error::other)?;
            out.finish()?;
            metrics::histogram!("strait_snapshot_write_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::gauge!("strait_snapshot_bytes").set(info.counts.bytes as f64);
            tracing::info!(
                bytes = info.counts.bytes,
                took_ms = started.elapsed().as_millis() as u64,
                "snapshot written to send"
            );
            Ok(())
        }),
    );
    Ok(Some(Snapshot {
        meta,
        snapshot: Box::new(data),
    }))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> SResult<Snapshot<TypeConfig>> {
        let state = self.state.clone();
        let dir = self.dir.clone();
        let started = Instant::now();
        let snapshot = self.fault.note(
            blocking(move || {
                let read = state.flush_for_snapshot()?;
                snapshot_of(&state, read, &dir)
            })
            .await,
        )?;
        metrics::histogram!("strait_snapshot_build_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot taken (the state is durable up to it)"
        );
        // Nothing applied yet: an empty snapshot at no position.
        Ok(snapshot.unwrap_or_else(|| Snapshot {
            meta: SnapshotMeta {
                last_log_id: None,
                last_membership: StoredMembership::default(),
                snapshot_id: format!("--{}", super::paced_io::unique()),
            },
            snapshot: Box::new(SnapshotFile::deferred(
                self.dir.join(new_data_file()),
                Box::new(|_| Err(std::io::Error::other("empty snapshot"))),
            )),
        }))
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
        let result = self
            .fault
            .note(blocking(move || state.apply(entries, durable)).await);
        metrics::histogram!("strait_state_apply_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            state: self.state.clone(),
            dir: self.dir.clone(),
            fault: self.fault.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<SnapshotFile>> {
        // An earlier transfer that never finished is abandoned.
        for stale in self.receiving.drain(..) {
            if stale.exists()
                && let Err(e) = super::paced_io::discard(&stale)
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
        let state = self.state.clone();
        let started = Instant::now();
        let expected = meta.last_log_id;
        let installed = blocking(move || {
            // Read back from disk a buffer at a time and loaded into a new
            // state file, which replaces the state in one rename; the
            // received file is not needed after that.
            let file = std::fs::File::open(&path).map_err(snap_err)?;
            let installed = state.install_snapshot_from(file);
            if let Err(e) = super::paced_io::discard(&path) {
                tracing::warn!(file = %path.display(), error = %e, "cannot delete an installed snapshot");
            }
            installed?;
            // The data and the meta come from one read of the leader's state.
            let got = state.view().last_applied;
            if got != expected {
                return Err(snap_err(std::io::Error::other(format!(
                    "the installed snapshot is at {got:?}, its meta says {expected:?}"
                ))));
            }
            Ok(())
        });
        self.fault.note(installed.await)?;
        tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot installed"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot<TypeConfig>>> {
        let state = self.state.clone();
        let dir = self.dir.clone();
        blocking(move || {
            let read = state.read()?;
            snapshot_of(&state, read, &dir)
        })
        .await
    }
}
