//! Durable storage of a site: the Raft log ([`log`], append-only segment
//! files in `raft-log/`) and the state machine ([`state`], [`machine`]) on
//! redb in `state.redb`.
//!
//! Every log append is written and fsynced before openraft is told it is
//! flushed (unless `log_sync_ms` asks for periodic syncs). The state is
//! fsynced on every apply by default, or at most every `state_flush_ms`
//! and before every snapshot; after a crash openraft re-applies the
//! committed log tail, and application is deterministic, so nothing is
//! lost. Events and link deliveries are stored in blocks, one row per bus
//! (or remote site) and log entry ([`blocks`]).

pub mod archive;
mod block_table;
pub mod blocks;
pub mod fault;
pub mod links;
pub mod log;
pub mod machine;
pub mod paced_io;
pub mod snapshot;
pub mod snapshot_file;
pub mod state;
mod tables;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};

use crate::NodeId;

/// Map any error into an openraft storage error.
pub(crate) fn storage_err<E: std::error::Error + 'static>(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: &E,
) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::new(e)),
    }
}

/// Map a message into an openraft storage error.
pub(crate) fn storage_msg(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    msg: impl ToString,
) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::error(msg)),
    }
}

/// Run blocking storage work off the async worker threads.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, StorageError<NodeId>>
where
    F: FnOnce() -> Result<T, StorageError<NodeId>> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(storage_msg(ErrorSubject::Store, ErrorVerb::Write, e)),
    }
}
