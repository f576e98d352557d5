//! Strait replication layer: everything between a node's HTTP API and its
//! disk and peers, without HTTP.
//!
//! Every site is an openraft group of 1, 3 or 5 nodes. This crate holds:
//!
//! * the Raft type configuration and the commands replicated through it
//!   ([`command`]);
//! * durable storage ([`store`]): the Raft log in append-only, checksummed
//!   segment files (`raft-log/`, [`store::log`]), fsynced on every append
//!   by default, and the state machine on redb (`state.redb`,
//!   [`store::state`], [`store::machine`]), with snapshots;
//! * the glue that opens a site's Raft group on a data directory ([`site`]):
//!   one node alone ([`Site::open`]) or several talking over QUIC with
//!   mutual TLS ([`transport`], [`network_quic`], [`certs`],
//!   [`Site::open_with_network`]); either way every write goes the full Raft
//!   path: append, fsync, commit, apply;
//! * the control group spanning all sites, which replicates buses, rules and
//!   sources to every node ([`control`]);
//! * links between sites: the I/O-free protocol and its QUIC service
//!   ([`link`]).

// openraft's `StorageError` is large and its traits return it by value.
#![allow(clippy::result_large_err)]

pub mod certs;
pub mod command;
pub mod control;
pub mod error;
pub mod journal;
pub mod link;
mod network;
pub mod network_quic;
pub mod site;
pub mod store;
pub mod transport;
pub mod wire;

pub use command::{
    AppendEntry, AppendOutcome, Command, CommandResponse, Conflict, LinkAnswer, LinkSpec, NotFound,
    Refusal,
};
pub use error::FederationError;
pub use site::{Bootstrap, RaftTiming, Site, SiteFailure, SiteOptions};
pub use store::state::{
    DeadLetter, DeadLetterCursor, DeadLetterPage, DeadLetterQuery, EventFilter, EventPage,
    FoundEvent, LookupError, SiteState, StateFull, StoredEvent,
};

/// Node ids inside a Raft group.
pub type NodeId = u64;

/// The id of node `node` of `site` in the control group, whose members
/// span sites (node ids are only unique inside a site): the FNV-1a hash of
/// the site name in the high 32 bits, the node id (which must fit in 32
/// bits) in the low 32 bits.
pub fn control_node_id(site: &str, node: NodeId) -> NodeId {
    let mut h: u32 = 0x811c_9dc5;
    for b in site.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (u64::from(h) << 32) | (node & 0xffff_ffff)
}

/// The site-local node id inside a [`control_node_id`].
pub fn control_node_of(id: NodeId) -> NodeId {
    id & 0xffff_ffff
}

/// What the group knows about one node (its addresses).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    /// Where the node's HTTP API listens.
    pub http_addr: String,
    /// Where the node's Raft transport listens (empty for a one-member site).
    pub raft_addr: String,
    /// The node's site (set in the control group, whose members span
    /// sites; empty in a site group, whose members are all of its site).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub site: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http={} raft={}", self.http_addr, self.raft_addr)
    }
}

openraft::declare_raft_types!(
    /// Raft types of a Strait site group.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        Node = NodeInfo,
        SnapshotData = store::snapshot_file::SnapshotFile,
);

/// The Raft handle of a site group.
pub type Raft = openraft::Raft<TypeConfig>;
