//! Links between sites: durable, ordered store-and-forward of deliveries
//! from one site's outbox to another site's log (see docs/federation.md).
//!
//! [`proto`] is the protocol core without I/O: batching, windowing,
//! cumulative acknowledgements, rewinds, and the receiver's in-order,
//! exactly-once-per-sequence admission; [`service`] runs it over the QUIC
//! endpoints of the sites (receiving side and per-remote sender); [`uncommitted`]
//! hands proposed batches to the receiving leader's delivery before they
//! commit; [`query`] carries read-only questions between linked sites
//! (event lookups, target progress).

pub mod proto;
pub mod query;
pub mod remote;
pub mod service;
pub mod uncommitted;
