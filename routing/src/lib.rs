//! Strait routing core.
//!
//! Everything here is pure: no I/O, no async. It holds the CloudEvents model
//! ([`event`]), the EventBridge pattern language ([`pattern`]) and the target
//! transforms ([`transform`]).

pub mod event;
pub mod json;
pub mod pattern;
pub mod transform;

pub use event::{Event, EventError};
