//! Strait replication layer.
//!
//! Every site is an openraft group. This crate holds the Raft type
//! configuration, the commands replicated through it ([`command`]), the
//! durable log store and state machine on redb ([`store`]), and the glue that
//! opens a site's Raft group on a data directory ([`site`]).
//!
//! A site is one node ([`Site::open`]) or several talking over QUIC with
//! mutual TLS ([`transport`], [`network_quic`], [`Site::open_with_network`]);
//! either way every write goes the full Raft path: append, fsync, commit,
//! apply.

// openraft's `StorageError` is large and its traits return it by value.
#![allow(clippy::result_large_err)]

pub mod certs;
pub mod command;
pub mod control;
pub mod error;
pub mod link;
mod network;
pub mod network_quic;
pub mod site;
pub mod store;
pub mod transport;

pub use command::{AppendEntry, AppendOutcome, Command, CommandResponse, LinkAnswer, LinkSpec};
pub use error::FederationError;
pub use site::{Bootstrap, RaftTiming, Site, SiteOptions};
pub use store::state::{SiteState, StoredEvent};

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
