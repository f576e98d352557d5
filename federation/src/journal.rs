//! The delivery journal: what became of each event's deliveries, kept by
//! the site that delivers them, replicated with the dispatch checkpoints
//! ([`crate::Command::Checkpoint`]) and kept as long as the event
//! (`retention`).
//!
//! What is written, so that the journal costs little on the fast path:
//!
//! - a target of this site whose delivery succeeds at the first attempt
//!   writes nothing of its own: its cursor passing the event's sequence says
//!   it is done, and the cursor *marks* (the cursor value and the time of
//!   each checkpoint that moved it) say when;
//! - a delivery with a failed attempt, a dead letter or a drop writes a
//!   [`JournalEntry`] with its attempts;
//! - a delivery made here for another site (from a link inbox) always writes
//!   a [`JournalEntry`], with `origin` = the site the event entered at: the
//!   origin site has no cursor that could tell.
//!
//! Entries are keyed by the event's identity (bus, source, id) and its
//! ingest time at the origin, so a site can answer "what happened here to
//! event X" without the sequence number another site gave it.

use serde::{Deserialize, Serialize};

/// Attempts a journal entry keeps: the first [`KEEP_FIRST_ATTEMPTS`] and the
/// last ones up to this many; the others are counted in
/// [`JournalEntry::omitted_attempts`].
pub const MAX_ATTEMPTS_KEPT: usize = 10;

/// Attempts kept from the start of a delivery when some are left out.
pub const KEEP_FIRST_ATTEMPTS: usize = 5;

/// Longest error text an attempt keeps (bytes, cut at a char boundary).
pub const MAX_ERROR_BYTES: usize = 512;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryStatus {
    /// Not attempted yet.
    Pending,
    /// Failed at least once; more attempts to come.
    Retrying,
    /// Delivered.
    Delivered,
    /// Given up on and stored on the dead-letter bus or sent to the
    /// dead-letter endpoint.
    DeadLettered,
    /// Given up on without a dead-letter destination, or the dead letter
    /// failed.
    Dropped,
    /// Handed to a link to another site, not yet delivered there (in an
    /// outbox or an inbox).
    InTransit,
}

impl DeliveryStatus {
    /// True once nothing more will happen to the delivery.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeliveryStatus::Delivered | DeliveryStatus::DeadLettered | DeliveryStatus::Dropped
        )
    }
}

/// What one attempt gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttemptOutcome {
    /// The target accepted the event.
    Delivered,
    /// The attempt failed (see the error); it may be retried.
    Failed,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// When the attempt ended, ms since the epoch.
    pub time_ms: u64,
    /// What it gave.
    pub outcome: AttemptOutcome,
    /// The HTTP status the target answered, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Why it failed (at most [`MAX_ERROR_BYTES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The history of one event's delivery to one target, at the site that
/// delivers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JournalEntry {
    /// The bus the event was posted to (at its origin).
    pub bus: String,
    /// CloudEvents `source`.
    pub source: String,
    /// CloudEvents `id`.
    pub id: String,
    /// Ingest time at the origin site, ms since the epoch.
    pub ingest_ms: u64,
    /// The rule.
    pub rule: String,
    /// The target's id in the rule.
    pub target: String,
    /// The site the event entered at, for a delivery made here for
    /// another site; `None` for this site's own events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Where the delivery stands.
    pub status: DeliveryStatus,
    /// The attempts kept (see [`MAX_ATTEMPTS_KEPT`]).
    pub attempts: Vec<Attempt>,
    /// Attempts made but not kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted_attempts: u32,
    /// Why the event was dead-lettered or dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl JournalEntry {
    /// Add an attempt, keeping the first [`KEEP_FIRST_ATTEMPTS`] and the
    /// latest ones within [`MAX_ATTEMPTS_KEPT`], and cutting its error to
    /// [`MAX_ERROR_BYTES`].
    pub fn push_attempt(&mut self, mut attempt: Attempt) {
        if let Some(e) = attempt.error.as_mut() {
            truncate_at_char(e, MAX_ERROR_BYTES);
        }
        if self.attempts.len() >= MAX_ATTEMPTS_KEPT {
            self.attempts.remove(KEEP_FIRST_ATTEMPTS);
            self.omitted_attempts = self.omitted_attempts.saturating_add(1);
        }
        self.attempts.push(attempt);
    }
}

/// Cut `s` to at most `max` bytes, at a char boundary.
pub fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
}

/// Cumulative counters of one target at the site that delivers it,
/// replicated with the checkpoints so that every node of the site (and
/// other sites, asked over a link) reads the same figures, and a new
/// leader goes on from them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetCounts {
    /// Events delivered.
    pub delivered: u64,
    /// Events dead-lettered (stored or sent to the dead-letter endpoint).
    pub dead_lettered: u64,
    /// Events given up on without a dead-letter destination.
    pub dropped: u64,
    /// Dead letters that failed (the event was dropped).
    pub dead_letter_failed: u64,
    /// Failed attempts.
    pub failed_attempts: u64,
    /// The last delivery error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Why the last dead letter failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_dead_letter_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(n: u64) -> Attempt {
        Attempt {
            time_ms: n,
            outcome: AttemptOutcome::Failed,
            http_status: Some(503),
            error: Some("é".repeat(400)),
        }
    }

    #[test]
    fn keeps_first_and_latest_attempts_and_counts_the_rest() {
        let mut e = JournalEntry {
            bus: "b".into(),
            source: "s".into(),
            id: "i".into(),
            ingest_ms: 1,
            rule: "r".into(),
            target: "t".into(),
            origin: None,
            status: DeliveryStatus::Retrying,
            attempts: vec![],
            omitted_attempts: 0,
            reason: None,
        };
        for n in 1..=25 {
            e.push_attempt(attempt(n));
        }
        assert_eq!(e.attempts.len(), MAX_ATTEMPTS_KEPT);
        assert_eq!(e.omitted_attempts, 15);
        let times: Vec<u64> = e.attempts.iter().map(|a| a.time_ms).collect();
        assert_eq!(times, vec![1, 2, 3, 4, 5, 21, 22, 23, 24, 25]);
        let err = e.attempts[0].error.as_deref().unwrap_or_default();
        assert!(err.len() <= MAX_ERROR_BYTES && err.len() > MAX_ERROR_BYTES - 2);
    }

    #[test]
    fn statuses_spell_as_the_api_does() {
        let s = serde_json::to_string(&DeliveryStatus::DeadLettered).unwrap_or_default();
        assert_eq!(s, "\"dead-lettered\"");
        let s = serde_json::to_string(&DeliveryStatus::InTransit).unwrap_or_default();
        assert_eq!(s, "\"in-transit\"");
    }
}
