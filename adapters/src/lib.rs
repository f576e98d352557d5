//! Strait adapters: one module per external system.
//!
//! Each adapter keeps its configuration checks pure and its I/O in one
//! place. Today: [`http`], the webhook / CloudEvents HTTP sink.

pub mod http;

/// How a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth retrying (network error, timeout, 5xx, 408, 429).
    #[error("{0}")]
    Retryable(String),
    /// Retrying will not help (4xx, bad request): dead-letter at once.
    #[error("{0}")]
    Permanent(String),
}

impl DeliveryError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, DeliveryError::Retryable(_))
    }
}
