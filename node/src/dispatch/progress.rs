//! Live figures of each target (not replicated; the cursors are
//! checkpointed by the leader), shared with the API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Live counters of one target (not replicated; the cursor is).
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetStats {
    /// Next sequence to process (in memory, may be ahead of the checkpoint).
    pub cursor: u64,
    /// Events delivered since this node started.
    pub delivered: u64,
    /// Events stored on the dead-letter bus or delivered to the
    /// dead-letter endpoint since this node started.
    pub dead_lettered: u64,
    /// Events given up on without a dead-letter destination (dropped, as
    /// configured) since this node started.
    pub dropped: u64,
    /// Events whose dead letter failed (so they were dropped) since this
    /// node started.
    pub dead_letter_failed: u64,
    /// Why the last dead letter failed.
    pub last_dead_letter_error: Option<String>,
    /// Failed attempts since this node started.
    pub failed_attempts: u64,
    /// Last delivery error.
    pub last_error: Option<String>,
}

/// Per-target stats shared with the API.
pub type Progress = Arc<Mutex<HashMap<String, TargetStats>>>;

/// Set the in-memory cursor of `key` (checkpointed by the leader).
pub fn set_cursor(progress: &Progress, key: &str, cursor: u64) {
    with_stats(progress, key, |s| s.cursor = cursor);
}

pub(super) fn with_stats(progress: &Progress, key: &str, f: impl FnOnce(&mut TargetStats)) {
    let mut map = match progress.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    f(map.entry(key.to_string()).or_default());
}

/// Read a target's stats.
pub fn stats(progress: &Progress, key: &str) -> Option<TargetStats> {
    let map = match progress.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    map.get(key).cloned()
}
