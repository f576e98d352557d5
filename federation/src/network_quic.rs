//! openraft's network over the QUIC transport.
//!
//! - [`QuicNetwork`] is the `RaftNetworkFactory` a site's Raft uses: a
//!   client for a member is created without I/O and reaches it through the
//!   endpoint's shared connection to that node (connecting lazily,
//!   reconnecting with backoff). The peer must prove, by certificate, to be
//!   that node id of this site.
//! - [`RaftService`] is the transport [`Handler`] that hands incoming Raft
//!   RPCs to this node's [`Raft`]; it only serves nodes of its own site.
//!
//! Followers forward client writes to the leader with [`write_via_leader`]
//! / [`forward_write`] (method [`METHOD_CLIENT_WRITE`]).
//!
//! Append-entries requests and forwarded writes are in the binary encoding
//! of [`crate::wire`] (JSON from nodes of earlier versions is still
//! accepted); the other bodies are JSON (openraft's serde types), and an
//! install-snapshot chunk is a JSON header followed by the raw chunk bytes. Transport failures map to
//! `RPCError::Unreachable` (no connection: openraft backs off) or
//! `RPCError::Network` (the connection failed mid-request); an error
//! answered by the peer's Raft is `RPCError::RemoteError`.

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use openraft::error::ClientWriteError;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::certs::NodeIdentity;
use crate::command::{Command, CommandResponse};
use crate::error::FederationError;
use crate::site::Site;
use crate::transport::codec::codes;
use crate::transport::{
    CodecError, Endpoint, Handler, HandlerFuture, PeerClient, RemoteError as WireError, Request,
    RequestError,
};
use crate::{NodeId, NodeInfo, Raft, TypeConfig};

/// Method: Raft append-entries (and heartbeats).
pub const METHOD_APPEND_ENTRIES: u16 = 0x0101;
/// Method: Raft vote.
pub const METHOD_VOTE: u16 = 0x0102;
/// Method: one chunk of a snapshot.
pub const METHOD_INSTALL_SNAPSHOT: u16 = 0x0103;
/// Method: a client write forwarded by a follower to the leader.
pub const METHOD_CLIENT_WRITE: u16 = 0x0201;
/// Added to a site-group method to address the control group instead.
pub const CONTROL_METHOD_BIT: u16 = 0x0080;
/// Read archived events of a range of log entries from a peer of the site
/// (to fill the hole a snapshot install left; see
/// [`crate::store::archive`]).
pub const METHOD_ARCHIVE_FETCH: u16 = 0x0401;

/// What [`fetch_archive`] asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchiveFetch {
    /// The bus.
    pub bus: String,
    /// The archive.
    pub name: String,
    /// First log index wanted.
    pub from: u64,
    /// Last log index wanted.
    pub upto: u64,
}

/// Ask `peer` (a node of this site) for the archived events of the entries
/// `req.from..=req.upto`: the records (see
/// [`crate::store::archive::decode_records`]) and the last index they
/// cover (whole entries, at most about 4 MiB per answer). Refused when
/// the peer lacks part of the range itself.
pub async fn fetch_archive(
    peer: &PeerClient,
    req: &ArchiveFetch,
) -> Result<(Vec<crate::store::archive::ArchivedEvent>, u64), FederationError> {
    let body =
        Bytes::from(serde_json::to_vec(req).map_err(|e| FederationError::Write(e.to_string()))?);
    let reply = peer
        .request(METHOD_ARCHIVE_FETCH, body)
        .await
        .map_err(|e| FederationError::Unreachable(format!("{}: {e}", peer.peer())))?;
    if reply.len() < 8 {
        return Err(FederationError::Write("archive fetch: short answer".into()));
    }
    let mut upto = [0u8; 8];
    upto.copy_from_slice(&reply[..8]);
    let events = crate::store::archive::decode_records(&reply[8..])
        .map_err(|e| FederationError::Write(format!("archive fetch: {e}")))?;
    Ok((events, u64::from_le_bytes(upto)))
}

/// Which of a node's two Raft groups an RPC is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// The node's site group: members are nodes of its own site, with
    /// their site-local node ids.
    Site,
    /// The control group: members span sites; a member's id is
    /// [`crate::control_node_id`] of its site and node id.
    Control,
}

impl Group {
    /// The wire method of `method` (a site-group constant) in this group.
    pub fn method(self, method: u16) -> u16 {
        match self {
            Group::Site => method,
            Group::Control => method | CONTROL_METHOD_BIT,
        }
    }

    /// The group a wire method addresses, and the site-group method.
    fn of_method(method: u16) -> (Group, u16) {
        if method & CONTROL_METHOD_BIT != 0 {
            (Group::Control, method & !CONTROL_METHOD_BIT)
        } else {
            (Group::Site, method)
        }
    }

    /// The id a peer (as its certificate names it) has in this group.
    pub fn member_id(self, peer: &NodeIdentity) -> NodeId {
        match self {
            Group::Site => peer.node_id,
            Group::Control => crate::control_node_id(&peer.site, peer.node_id),
        }
    }

    /// The identity the certificate of member `id` (described by `node`)
    /// must carry; `own_site` for site groups.
    pub fn identity(self, id: NodeId, node: &NodeInfo, own_site: &str) -> NodeIdentity {
        match self {
            Group::Site => NodeIdentity {
                node_id: id,
                site: own_site.to_string(),
            },
            Group::Control => NodeIdentity {
                node_id: crate::control_node_of(id),
                site: if node.site.is_empty() {
                    own_site.to_string()
                } else {
                    node.site.clone()
                },
            },
        }
    }
}

/// The answer to a forwarded write.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ForwardReply {
    /// Committed and applied.
    Applied(CommandResponse),
    /// The receiver is not the leader (any more).
    NotLeader(Option<NodeId>),
    /// The write failed.
    Failed(String),
}

/// Send a write to the node `leader` reaches (normally the site's leader)
/// and wait until it is committed and applied there.
pub async fn forward_write(
    leader: &PeerClient,
    cmd: &Command,
) -> Result<CommandResponse, FederationError> {
    forward_write_in(Group::Site, leader, cmd).await
}

/// [`forward_write`] to the leader of `group`.
pub async fn forward_write_in(
    group: Group,
    leader: &PeerClient,
    cmd: &Command,
) -> Result<CommandResponse, FederationError> {
    let mut body = Vec::new();
    crate::wire::encode_command(&mut body, cmd)
        .map_err(|e| FederationError::Write(format!("cannot encode the command: {e}")))?;
    let body = Bytes::from(body);
    let reply = leader
        .request(group.method(METHOD_CLIENT_WRITE), body)
        .await
        .map_err(|e| {
            FederationError::Unreachable(format!("forwarding to {} failed: {e}", leader.peer()))
        })?;
    let reply: ForwardReply = serde_json::from_slice(&reply).map_err(|e| {
        FederationError::Write(format!("undecodable answer from {}: {e}", leader.peer()))
    })?;
    match reply {
        ForwardReply::Applied(r) => Ok(r),
        ForwardReply::NotLeader(leader) => Err(FederationError::NotLeader { leader }),
        ForwardReply::Failed(m) => Err(FederationError::Write(m)),
    }
}

/// Write through the site's leader: locally when this node leads, else
/// forwarded over `endpoint` to the leader this node knows of. Fails with
/// `NotLeader` when no leader is known (the caller retries).
pub async fn write_via_leader(
    site: &Site,
    endpoint: &Endpoint,
    cmd: Command,
) -> Result<CommandResponse, FederationError> {
    write_via_leader_in(Group::Site, site, endpoint, cmd).await
}

/// [`write_via_leader`] for the group `site` is a replica of.
pub async fn write_via_leader_in(
    group: Group,
    site: &Site,
    endpoint: &Endpoint,
    cmd: Command,
) -> Result<CommandResponse, FederationError> {
    let (leader, node) = {
        let m = site.raft.metrics().borrow().clone();
        let leader = m.current_leader;
        let node = leader.and_then(|l| m.membership_config.membership().get_node(&l).cloned());
        (leader, node)
    };
    match (leader, node) {
        (Some(l), Some(node)) if l != site.node_id => {
            let identity = group.identity(l, &node, &endpoint.identity().site);
            forward_write_in(group, &endpoint.peer(identity, node.raft_addr), &cmd).await
        }
        (Some(_), _) => site.write(cmd).await,
        (None, _) => Err(FederationError::NotLeader { leader: None }),
    }
}

/// Whether this node's connection to member `id` of `site` (a replica of
/// `group`) is up now: the QUIC connection through which this node's
/// Raft network (see [`QuicNetwork`]) reaches that member is open and
/// has not been closed by the transport.
///
/// `None` when `id` is this node or not a member, or when this node has
/// never needed to reach it, so no client exists yet.
///
/// This is most useful on the leader. It sends heartbeats to every other
/// member all the time, so it connects to a live member within a heartbeat
/// interval, and its connection to a dead member is closed once the
/// transport's idle timeout passes without a packet from it (QUIC
/// keep-alives stop any shorter silence from counting). After that the
/// connection stays down until a reconnection attempt succeeds. A follower
/// only connects to others to vote or to forward writes, so on a follower
/// `Some(false)` can also mean "not needed lately".
pub fn peer_reachable(site: &Site, endpoint: &Endpoint, group: Group, id: NodeId) -> Option<bool> {
    if id == site.node_id {
        return None;
    }
    let node = site.member(id)?;
    let identity = group.identity(id, &node, &endpoint.identity().site);
    endpoint
        .existing_peer(&identity, &node.raft_addr)
        .map(|p| p.is_connected())
}

/// The Raft network factory of a site over QUIC.
#[derive(Debug, Clone)]
pub struct QuicNetwork {
    endpoint: Endpoint,
    site: String,
    group: Group,
}

impl QuicNetwork {
    /// A network for members of `endpoint`'s own site.
    pub fn new(endpoint: Endpoint) -> QuicNetwork {
        QuicNetwork::for_group(endpoint, Group::Site)
    }

    /// A network for the members of `group`.
    pub fn for_group(endpoint: Endpoint, group: Group) -> QuicNetwork {
        let site = endpoint.identity().site.clone();
        QuicNetwork {
            endpoint,
            site,
            group,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for QuicNetwork {
    type Network = QuicPeer;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> QuicPeer {
        let identity = self.group.identity(target, node, &self.site);
        QuicPeer {
            target,
            group: self.group,
            peer: self.endpoint.peer(identity, node.raft_addr.clone()),
        }
    }
}

/// A connection handle to one member (shared with every other handle to
/// the same member).
#[derive(Debug)]
pub struct QuicPeer {
    target: NodeId,
    group: Group,
    peer: Arc<PeerClient>,
}

/// Why a reply could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("undecodable reply from node {target}: {message}")]
struct DecodeError {
    target: NodeId,
    message: String,
}

fn encode_json<T: Serialize>(v: &T) -> Result<Bytes, serde_json::Error> {
    serde_json::to_vec(v).map(Bytes::from)
}

impl QuicPeer {
    /// Decode a reply (or map the transport failure) into openraft's terms.
    fn decode<Resp, E>(
        &self,
        reply: Result<Bytes, RequestError>,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error,
        RaftError<NodeId, E>: DeserializeOwned,
    {
        let reply = reply.map_err(|e| map_request_error(&e))?;
        let answer: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply).map_err(|e| {
                RPCError::Network(NetworkError::new(&DecodeError {
                    target: self.target,
                    message: e.to_string(),
                }))
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn map_request_error<E: std::error::Error>(
    e: &RequestError,
) -> RPCError<NodeId, NodeInfo, RaftError<NodeId, E>> {
    match e {
        RequestError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(e)),
        RequestError::Remote { error, .. } if error.code == codes::UNAVAILABLE => {
            RPCError::Unreachable(Unreachable::new(e))
        }
        _ => RPCError::Network(NetworkError::new(e)),
    }
}

fn encode_error<E: std::error::Error>(
    e: &serde_json::Error,
) -> RPCError<NodeId, NodeInfo, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(e))
}

/// Encode a snapshot chunk: u32 BE header length, JSON header (the request
/// without its data), then the raw data.
fn encode_snapshot_chunk(
    rpc: &InstallSnapshotRequest<TypeConfig>,
) -> Result<Bytes, serde_json::Error> {
    let header = InstallSnapshotRequest::<TypeConfig> {
        vote: rpc.vote,
        meta: rpc.meta.clone(),
        offset: rpc.offset,
        data: Vec::new(),
        done: rpc.done,
    };
    let h = serde_json::to_vec(&header)?;
    let mut out = BytesMut::with_capacity(4 + h.len() + rpc.data.len());
    out.put_u32(h.len() as u32);
    out.put_slice(&h);
    out.put_slice(&rpc.data);
    Ok(out.freeze())
}

/// An append-entries request: binary ([`crate::wire`]), or JSON as nodes of
/// earlier versions send it.
fn decode_append_entries(body: &[u8]) -> Result<AppendEntriesRequest<TypeConfig>, String> {
    if body.first() == Some(&crate::wire::APPEND_ENTRIES_MAGIC) {
        crate::wire::decode_append_entries(body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice(body).map_err(|e| e.to_string())
    }
}

fn decode_snapshot_chunk(body: &[u8]) -> Result<InstallSnapshotRequest<TypeConfig>, String> {
    let (len, rest) = body
        .split_first_chunk::<4>()
        .ok_or_else(|| "snapshot chunk shorter than its header length".to_string())?;
    let len = u32::from_be_bytes(*len) as usize;
    if len > rest.len() {
        return Err(format!(
            "snapshot chunk header of {len} bytes but only {} bytes follow",
            rest.len()
        ));
    }
    let (header, data) = rest.split_at(len);
    let mut req: InstallSnapshotRequest<TypeConfig> =
        serde_json::from_slice(header).map_err(|e| format!("bad snapshot chunk header: {e}"))?;
    req.data = data.to_vec();
    Ok(req)
}

impl RaftNetwork<TypeConfig> for QuicPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let n = rpc.entries.len() as u64;
        let started = std::time::Instant::now();
        let body = crate::wire::encode_append_entries(&rpc)
            .map(Bytes::from)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        metrics::histogram!("strait_raft_append_encode_seconds")
            .record(started.elapsed().as_secs_f64());
        let reply = self
            .peer
            .request_within(
                self.group.method(METHOD_APPEND_ENTRIES),
                body,
                option.hard_ttl(),
            )
            .await;
        metrics::histogram!("strait_raft_append_rpc_seconds")
            .record(started.elapsed().as_secs_f64());
        if n > 1
            && matches!(
                &reply,
                Err(RequestError::Codec {
                    error: CodecError::TooLarge { .. },
                    ..
                })
            )
        {
            // Ask openraft to send fewer entries per request.
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(n / 2),
            ));
        }
        self.decode(reply)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let body = encode_snapshot_chunk(&rpc).map_err(|e| encode_error(&e))?;
        let reply = self
            .peer
            .request_within(
                self.group.method(METHOD_INSTALL_SNAPSHOT),
                body,
                option.hard_ttl(),
            )
            .await;
        self.decode(reply)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let body = encode_json(&rpc).map_err(|e| encode_error(&e))?;
        let reply = self
            .peer
            .request_within(self.group.method(METHOD_VOTE), body, option.hard_ttl())
            .await;
        self.decode(reply)
    }
}

/// The transport handler that serves Raft RPCs to this node's [`Raft`].
/// Create it before the endpoint, hand the Raft handle over with
/// [`RaftService::set_raft`] once it exists; until then peers are told
/// the node is unavailable (they see it as unreachable and retry).
pub struct RaftService {
    site: String,
    raft: OnceLock<Raft>,
    control: OnceLock<Raft>,
    state: OnceLock<Arc<crate::SiteState>>,
}

impl std::fmt::Debug for RaftService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftService")
            .field("site", &self.site)
            .field("running", &self.raft.get().is_some())
            .field("control", &self.control.get().is_some())
            .finish()
    }
}

impl RaftService {
    /// A service for members of `site`.
    pub fn new(site: impl Into<String>) -> Arc<RaftService> {
        Arc::new(RaftService {
            site: site.into(),
            raft: OnceLock::new(),
            control: OnceLock::new(),
            state: OnceLock::new(),
        })
    }

    /// Serve archive fetches from `state` (only the first call counts).
    pub fn set_state(&self, state: Arc<crate::SiteState>) {
        let _ = self.state.set(state);
    }

    /// Start serving `raft` (only the first call counts).
    pub fn set_raft(&self, raft: Raft) {
        let _ = self.raft.set(raft);
    }

    /// Start serving the control group's `raft` (only the first call counts).
    pub fn set_control_raft(&self, raft: Raft) {
        let _ = self.control.set(raft);
    }

    /// Serve Raft RPCs from the transport.
    pub fn handler(self: &Arc<Self>) -> Arc<dyn Handler> {
        self.clone()
    }
}

fn reply<T: Serialize>(v: &T) -> Result<Bytes, WireError> {
    encode_json(v).map_err(|e| WireError::new(codes::INTERNAL, format!("cannot encode reply: {e}")))
}

fn bad_request(what: &str, e: impl std::fmt::Display) -> WireError {
    WireError::new(codes::BAD_REQUEST, format!("bad {what} request: {e}"))
}

/// A Raft RPC must come from the node its certificate names, and (once
/// this node knows its group's membership) from a member of the group.
///
/// Votes, append-entries and snapshots are all checked against the
/// membership this node knows, so a node that is not (or no longer) a
/// member cannot move this node to its term or write its log. A node that
/// was down while members were added does not know a new member that
/// leads now: it takes that leader's entries (or snapshot) when they carry
/// a membership naming the leader (`named_in_request`), which is how it
/// learns of the change.
fn check_sender(
    raft: &Raft,
    group: Group,
    peer: &NodeIdentity,
    claimed: Option<NodeId>,
    must_be_member: bool,
    named_in_request: &dyn Fn(NodeId) -> bool,
) -> Result<(), WireError> {
    let id = group.member_id(peer);
    if let Some(claimed) = claimed
        && claimed != id
    {
        tracing::warn!(%peer, claimed, "refused a Raft request: the certificate is for another node");
        return Err(WireError::new(
            codes::FORBIDDEN,
            format!("{peer} cannot speak for node {claimed}: its certificate is for node {id}"),
        ));
    }
    if !must_be_member {
        return Ok(());
    }
    let membership = raft.metrics().borrow().membership_config.clone();
    let m = membership.membership();
    // A node that has not joined yet knows no membership: it takes the
    // leader that adds it.
    let known = m.nodes().next().is_some();
    if known && m.get_node(&id).is_none() && !named_in_request(id) {
        metrics::counter!("strait_raft_refused_non_member_total").increment(1);
        tracing::warn!(%peer, ?group, "refused a Raft request: not a member of the group");
        return Err(WireError::new(
            codes::FORBIDDEN,
            format!("{peer} is not a member of this group ({group:?})"),
        ));
    }
    Ok(())
}

impl Handler for RaftService {
    fn handle(&self, req: Request) -> HandlerFuture {
        let (group, method) = Group::of_method(req.method);
        let raft = match group {
            Group::Site => self.raft.get().cloned(),
            Group::Control => self.control.get().cloned(),
        };
        // The control group spans sites: any site's node may take part (its
        // membership decides); a site group only takes its own site's.
        let site_ok = group == Group::Control || req.peer.site == self.site;
        let site = self.site.clone();
        let state = self.state.get().cloned();
        Box::pin(async move {
            if !site_ok {
                return Err(WireError::new(
                    codes::FORBIDDEN,
                    format!("{} is not a member of site {site:?}", req.peer),
                ));
            }
            let Some(raft) = raft else {
                return Err(WireError::new(
                    codes::UNAVAILABLE,
                    format!("this node's {group:?} Raft group is not running (yet)"),
                ));
            };
            // The claimed sender is the vote's leader (or candidate).
            let check =
                |claimed: Option<NodeId>, must_be_member: bool, named: &dyn Fn(NodeId) -> bool| {
                    check_sender(&raft, group, &req.peer, claimed, must_be_member, named)
                };
            let nobody = |_: NodeId| false;
            match method {
                METHOD_APPEND_ENTRIES => {
                    let started = std::time::Instant::now();
                    let rpc = decode_append_entries(&req.body)
                        .map_err(|e| bad_request("append-entries", e))?;
                    metrics::histogram!("strait_raft_append_decode_seconds")
                        .record(started.elapsed().as_secs_f64());
                    let named = |id: NodeId| {
                        rpc.entries.iter().any(|e| {
                            matches!(&e.payload, openraft::EntryPayload::Membership(m) if m.get_node(&id).is_some())
                        })
                    };
                    check(rpc.vote.leader_id().voted_for(), true, &named)?;
                    let answer = raft.append_entries(rpc).await;
                    metrics::histogram!("strait_raft_append_handle_seconds")
                        .record(started.elapsed().as_secs_f64());
                    reply(&answer)
                }
                METHOD_VOTE => {
                    let rpc: VoteRequest<NodeId> =
                        serde_json::from_slice(&req.body).map_err(|e| bad_request("vote", e))?;
                    check(rpc.vote.leader_id().voted_for(), true, &nobody)?;
                    reply(&raft.vote(rpc).await)
                }
                METHOD_INSTALL_SNAPSHOT => {
                    let rpc = decode_snapshot_chunk(&req.body)
                        .map_err(|e| bad_request("install-snapshot", e))?;
                    let named = |id: NodeId| {
                        rpc.meta
                            .last_membership
                            .membership()
                            .get_node(&id)
                            .is_some()
                    };
                    check(rpc.vote.leader_id().voted_for(), true, &named)?;
                    reply(&raft.install_snapshot(rpc).await)
                }
                METHOD_CLIENT_WRITE => {
                    // Binary, or JSON from a node of an earlier version
                    // (a JSON command starts with `{`, which
                    // `decode_command` reads as JSON).
                    let cmd: Command = crate::wire::decode_command(&req.body)
                        .map_err(|e| bad_request("client-write", e))?;
                    let answer = match raft.client_write(cmd).await {
                        Ok(r) => ForwardReply::Applied(r.data),
                        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                            ForwardReply::NotLeader(f.leader_id)
                        }
                        Err(e) => ForwardReply::Failed(e.to_string()),
                    };
                    reply(&answer)
                }
                METHOD_ARCHIVE_FETCH if group == Group::Site => {
                    check(None, true, &nobody)?;
                    let ask: ArchiveFetch = serde_json::from_slice(&req.body)
                        .map_err(|e| bad_request("archive-fetch", e))?;
                    let Some(state) = state else {
                        return Err(WireError::new(codes::UNAVAILABLE, "no archive here (yet)"));
                    };
                    let lacks = state
                        .archive()
                        .holes(&ask.bus, &ask.name)
                        .iter()
                        .any(|(lo, hi)| *lo <= ask.upto && *hi >= ask.from);
                    if lacks {
                        return Err(WireError::new(
                            codes::UNAVAILABLE,
                            "this node lacks part of that range too",
                        ));
                    }
                    let (records, upto) = tokio::task::spawn_blocking(move || {
                        state
                            .archive()
                            .read_range(&ask.bus, &ask.name, ask.from, ask.upto, 4 << 20)
                    })
                    .await
                    .map_err(|e| WireError::new(codes::INTERNAL, e.to_string()))?
                    .map_err(|e| WireError::new(codes::INTERNAL, e.to_string()))?;
                    let mut out = Vec::with_capacity(8 + records.len());
                    out.extend_from_slice(&upto.to_le_bytes());
                    out.extend_from_slice(&records);
                    Ok(Bytes::from(out))
                }
                m => Err(WireError::new(
                    codes::UNKNOWN_METHOD,
                    format!("unknown Raft method {:#06x}", group.method(m)),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{LogId, SnapshotMeta, StoredMembership, Vote};

    #[test]
    fn control_group_methods_and_ids_are_apart_from_the_site_group() {
        for m in [
            METHOD_APPEND_ENTRIES,
            METHOD_VOTE,
            METHOD_INSTALL_SNAPSHOT,
            METHOD_CLIENT_WRITE,
        ] {
            let wire = Group::Control.method(m);
            assert_ne!(wire, m);
            assert_eq!(Group::of_method(wire), (Group::Control, m));
            assert_eq!(Group::of_method(m), (Group::Site, m));
        }
        assert_eq!(
            Group::of_method(crate::link::service::METHOD_LINK_BATCH).0,
            Group::Site
        );
        let idc1 = NodeIdentity {
            node_id: 1,
            site: "idc".into(),
        };
        let aws1 = NodeIdentity {
            node_id: 1,
            site: "aws".into(),
        };
        // Same node id in two sites: one id in a site group, two in the control group.
        assert_eq!(Group::Site.member_id(&idc1), Group::Site.member_id(&aws1));
        let (a, b) = (
            Group::Control.member_id(&idc1),
            Group::Control.member_id(&aws1),
        );
        assert_ne!(a, b);
        assert_eq!(crate::control_node_of(a), 1);
        // The identity a control member's certificate must carry.
        let node = NodeInfo {
            site: "aws".into(),
            ..NodeInfo::default()
        };
        assert_eq!(Group::Control.identity(b, &node, "idc"), aws1);
    }

    #[test]
    fn append_entries_are_read_in_binary_and_in_json() {
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(4, 2),
            prev_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), 9)),
            entries: vec![openraft::Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(4, 2), 10),
                payload: openraft::EntryPayload::Normal(Command::LinkAcked {
                    remote: "aws".into(),
                    upto: 7,
                }),
            }],
            leader_commit: None,
        };
        let binary = crate::wire::encode_append_entries(&req).expect("encode");
        let json = serde_json::to_vec(&req).expect("json");
        for body in [&binary, &json] {
            let got = decode_append_entries(body).expect("decode");
            assert_eq!(got.vote, req.vote);
            assert_eq!(got.prev_log_id, req.prev_log_id);
            assert_eq!(got.entries.len(), 1);
            assert_eq!(got.entries[0].log_id, req.entries[0].log_id);
        }
        assert!(decode_append_entries(&[]).is_err());
        assert!(decode_append_entries(&binary[..binary.len() - 1]).is_err());
    }

    #[test]
    fn snapshot_chunks_round_trip_and_garbage_is_refused() {
        let req = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), 42)),
                last_membership: StoredMembership::default(),
                snapshot_id: "s-1".into(),
            },
            offset: 1024,
            data: (0..=255u8).collect(),
            done: true,
        };
        let enc = encode_snapshot_chunk(&req).expect("encode");
        let dec = decode_snapshot_chunk(&enc).expect("decode");
        assert_eq!(dec.data, req.data);
        assert_eq!(dec.offset, 1024);
        assert_eq!(dec.meta.snapshot_id, "s-1");
        assert!(dec.done);
        for junk in [&[][..], &[0, 0], &[0, 0, 0, 9, 1], &[0, 0, 0, 1, b'{']] {
            assert!(decode_snapshot_chunk(junk).is_err());
        }
    }
}
