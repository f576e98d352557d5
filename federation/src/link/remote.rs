//! Where a linked site can be reached, shared by the link sender
//! ([`super::service`]) and the questions between sites ([`super::query`]).

use crate::NodeId;

/// Where a remote site can be reached: its nodes.
#[derive(Debug, Clone)]
pub struct RemoteSite {
    /// Site name.
    pub site: String,
    /// (node id, QUIC address) of its nodes; any of them accepts batches.
    pub nodes: Vec<(NodeId, String)>,
}
