//! Durable storage of a site: the Raft log ([`log`]) and the state machine
//! ([`state`], [`machine`]) on redb.
//!
//! Two database files live in the data directory: `raft-log.redb` (every
//! append is committed with `Durability::Immediate`, i.e. fsynced, before
//! openraft is told it is flushed) and `state.redb` (applied with
//! `Durability::None` and made durable at least once a second and before
//! every snapshot; after a crash openraft re-applies the committed log tail,
//! and application is deterministic, so nothing is lost).

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

/// Run `f` on a thread of its own at the lowest CPU priority (`nice` 19 on
/// Linux), for long background work such as building a snapshot: on a
/// small machine it then takes the CPU only when nothing latency-sensitive
/// (ingest, replication, link traffic) wants it. A fresh thread, so the
/// priority never leaks into the shared blocking pool.
pub(crate) async fn background<T, F>(f: F) -> Result<T, StorageError<NodeId>>
where
    F: FnOnce() -> Result<T, StorageError<NodeId>> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("strait-background".into())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(f());
        })
        .map_err(|e| storage_msg(ErrorSubject::Store, ErrorVerb::Write, e))?;
    match rx.await {
        Ok(r) => r,
        Err(e) => Err(storage_msg(ErrorSubject::Store, ErrorVerb::Write, e)),
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // On Linux a thread id is a valid target of setpriority(PRIO_PROCESS).
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), 19) {
        tracing::debug!(error = %e, "could not lower the priority of a background thread");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}
