//! The Raft network of a site opened without a peer transport
//! ([`crate::Site::open`]): a one-member site, such as `strait serve --dev`
//! or a node without `cluster.listen`.
//!
//! A one-member group never needs to send an RPC; if openraft asks anyway,
//! the peer is reported unreachable so that it backs off instead of
//! failing. Sites with peers use [`crate::network_quic`].

use openraft::AnyError;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::{NodeId, NodeInfo, TypeConfig};

/// Network factory for a site without peers.
#[derive(Debug, Clone, Default)]
pub struct LocalOnly;

/// A "connection" to a peer that a peerless node cannot reach.
#[derive(Debug)]
pub struct NoPeer {
    target: NodeId,
}

impl NoPeer {
    fn err<E: std::error::Error>(&self) -> RPCError<NodeId, NodeInfo, E> {
        RPCError::Unreachable(Unreachable::from(AnyError::error(format!(
            "node {} is not reachable: this node runs a one-member site without a peer transport",
            self.target
        ))))
    }
}

impl RaftNetworkFactory<TypeConfig> for LocalOnly {
    type Network = NoPeer;

    async fn new_client(&mut self, target: NodeId, _node: &NodeInfo) -> Self::Network {
        NoPeer { target }
    }
}

impl RaftNetwork<TypeConfig> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        Err(self.err())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.err())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        Err(self.err())
    }
}
