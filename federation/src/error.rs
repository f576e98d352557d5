//! Errors of the replication layer.

/// What can go wrong opening or using a site's storage and Raft group.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// The storage engine failed.
    #[error("storage error at {path}: {message}")]
    Storage {
        /// The database file or directory.
        path: String,
        /// The engine's message.
        message: String,
    },
    /// Raft could not start or initialize.
    #[error("raft error: {0}")]
    Raft(String),
    /// A write was proposed on a node that is not the leader.
    #[error("this node is not the leader (leader: {leader:?})")]
    NotLeader {
        /// The known leader, if any.
        leader: Option<u64>,
    },
    /// The write could not be committed.
    #[error("write failed: {0}")]
    Write(String),
    /// The leader could not be reached (the write may or may not have been
    /// committed; retrying is safe for idempotent commands).
    #[error("leader unreachable: {0}")]
    Unreachable(String),
    /// A membership change was refused.
    #[error("membership change refused: {0}")]
    Membership(String),
}
