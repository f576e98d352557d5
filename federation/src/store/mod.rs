//! Durable storage of a site: the Raft log ([`log`]) and the state machine
//! ([`state`], [`machine`]) on redb.
//!
//! Two database files live in the data directory: `raft-log.redb` (every
//! append is committed with `Durability::Immediate`, i.e. fsynced, before
//! openraft is told it is flushed) and `state.redb` (applied with
//! `Durability::None` and made durable at least once a second and before
//! every snapshot; after a crash openraft re-applies the committed log tail,
//! and application is deterministic, so nothing is lost).

pub mod blocks;
pub mod links;
pub mod log;
pub mod machine;
pub mod state;

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
