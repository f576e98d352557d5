//! Multi-member sites in one process: three (and four) `Site`s on their own
//! data directories, talking openraft over the QUIC transport on loopback
//! with real certificates.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use serde_json::value::RawValue;
use strait_federation::certs::NodeCredentials;
use strait_federation::network_quic::{QuicNetwork, RaftService, write_via_leader};
use strait_federation::transport::{AcceptPolicy, Endpoint, TransportConfig};
use strait_federation::{
    AppendEntry, AppendOutcome, Bootstrap, Command, CommandResponse, FederationError, NodeId,
    NodeInfo, Site, SiteOptions,
};

const SITE: &str = "idc";

struct Node {
    id: NodeId,
    site: Site,
    endpoint: Endpoint,
}

impl Node {
    async fn stop(self) {
        self.site.shutdown().await.expect("shutdown");
        self.endpoint.close().await;
    }
}

fn transport() -> TransportConfig {
    TransportConfig {
        accept: AcceptPolicy::SameSite,
        connect_timeout: Duration::from_secs(1),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(300),
        ..TransportConfig::default()
    }
}

fn info(addr: SocketAddr) -> NodeInfo {
    NodeInfo {
        http_addr: String::new(),
        raft_addr: addr.to_string(),
        site: String::new(),
    }
}

/// Bind a node's endpoint (retrying while a previous socket on the same
/// port goes away).
async fn bind(creds: &NodeCredentials, addr: SocketAddr) -> (Endpoint, Arc<RaftService>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let service = RaftService::new(SITE);
        match Endpoint::bind(addr, creds, transport(), Some(service.handler())) {
            Ok(e) => return (e, service),
            Err(e) if Instant::now() < deadline => {
                tracing::info!("rebind: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

async fn open(
    id: NodeId,
    data: &Path,
    endpoint: Endpoint,
    service: Arc<RaftService>,
    bootstrap: Bootstrap,
    snapshot_every: u64,
) -> Node {
    let addr = endpoint.local_addr().expect("addr");
    let site = Site::open_with_network(
        SiteOptions {
            data_dir: data.to_path_buf(),
            node_id: id,
            node: info(addr),
            snapshot_every,
            state_flush_interval: Duration::from_millis(100),
            log_sync_interval: Duration::ZERO,
            timing: Default::default(),
        },
        QuicNetwork::new(endpoint.clone()),
        bootstrap,
    )
    .await
    .expect("open site");
    service.set_raft(site.raft.clone());
    Node { id, site, endpoint }
}

struct Cluster {
    _dir: tempfile::TempDir,
    certs: PathBuf,
    creds: BTreeMap<NodeId, NodeCredentials>,
    nodes: Vec<Node>,
}

impl Cluster {
    fn data(&self, id: NodeId) -> PathBuf {
        self.certs
            .parent()
            .expect("parent")
            .join(format!("data-{id}"))
    }
}

/// Start nodes 1..=n of one site; node 1 forms the group.
async fn start(n: u64) -> Cluster {
    common::logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    common::ca(&certs);
    let mut creds = BTreeMap::new();
    let mut bound = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=n {
        let c = common::node(&certs, id, SITE);
        let (endpoint, service) = bind(&c, "127.0.0.1:0".parse().expect("addr")).await;
        members.insert(id, info(endpoint.local_addr().expect("addr")));
        creds.insert(id, c);
        bound.push((id, endpoint, service));
    }
    let mut cluster = Cluster {
        _dir: dir,
        certs,
        creds,
        nodes: Vec::new(),
    };
    for (id, endpoint, service) in bound {
        let bootstrap = if id == 1 {
            Bootstrap::Members(members.clone())
        } else {
            Bootstrap::Join
        };
        let data = cluster.data(id);
        cluster
            .nodes
            .push(open(id, &data, endpoint, service, bootstrap, 1000).await);
    }
    cluster
}

fn entry(id: &str) -> AppendEntry {
    let ev = json!({"specversion": "1.0", "id": id, "source": "/t", "type": "t"});
    AppendEntry {
        bus: "b".into(),
        source: "/t".into(),
        id: id.into(),
        event: RawValue::from_string(ev.to_string()).expect("raw"),
    }
}

fn append(ids: &[String]) -> Command {
    Command::Append {
        ingest_ms: 1_000_000,
        dedup_window_ms: 60_000,
        entries: std::sync::Arc::new(ids.iter().map(|i| entry(i)).collect()),
    }
}

/// Wait until some node reports a leader that is one of `among`.
async fn leader(nodes: &[Node]) -> NodeId {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for n in nodes {
            let m = n.site.raft.metrics().borrow().clone();
            if let Some(l) = m.current_leader
                && m.id == l
            {
                return l;
            }
        }
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn node(nodes: &[Node], id: NodeId) -> &Node {
    nodes.iter().find(|n| n.id == id).expect("node")
}

/// Wait until every node has applied exactly `ids` on bus "b", in order.
async fn all_have(nodes: &[Node], ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for n in nodes {
        loop {
            let events = n.site.state.read_events("b", 0, 10_000).unwrap_or_default();
            let got: Vec<String> = events
                .iter()
                .map(|e| {
                    let v: serde_json::Value = serde_json::from_slice(&e.json).expect("json");
                    v["id"].as_str().unwrap_or_default().to_string()
                })
                .collect();
            if got == ids {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} has {} of {} events",
                n.id,
                got.len(),
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn write_batch(site: &Site, ids: &[String]) {
    match site.write(append(ids)).await.expect("append") {
        CommandResponse::Appended(out) => {
            assert!(
                out.iter().all(|o| matches!(o, AppendOutcome::Accepted(_))),
                "{out:?}"
            )
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn ids(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("e{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_fail_over_and_catch_up() {
    let mut c = start(3).await;
    let l = leader(&c.nodes).await;
    let lead = &node(&c.nodes, l).site;
    let r = lead
        .write(Command::PutBus {
            name: "b".into(),
            spec: json!({}),
        })
        .await
        .expect("bus");
    assert!(matches!(r, CommandResponse::Ok));
    let mut written = ids(0..10);
    write_batch(lead, &written[..5]).await;
    write_batch(lead, &written[5..]).await;
    all_have(&c.nodes, &written).await;

    // A follower refuses writes and names the leader.
    let follower = c.nodes.iter().find(|n| n.id != l).expect("follower");
    match follower.site.write(append(&ids(100..101))).await {
        Err(FederationError::NotLeader { leader }) => assert_eq!(leader, Some(l)),
        other => panic!("unexpected {other:?}"),
    }

    // ... but a write through it reaches the leader over QUIC.
    let forwarded = ids(10..12);
    let r = write_via_leader(&follower.site, &follower.endpoint, append(&forwarded))
        .await
        .expect("forwarded write");
    assert!(
        matches!(&r, CommandResponse::Appended(o) if o.iter().all(|o| matches!(o, AppendOutcome::Accepted(_)))),
        "{r:?}"
    );
    written.extend(forwarded);
    all_have(&c.nodes, &written).await;

    // Stop the leader: the other two elect a new one and keep accepting.
    let pos = c.nodes.iter().position(|n| n.id == l).expect("pos");
    let old = c.nodes.remove(pos);
    let old_addr = old.endpoint.local_addr().expect("addr");
    old.stop().await;
    let l2 = leader(&c.nodes).await;
    assert_ne!(l2, l);
    let more = ids(20..30);
    write_batch(&node(&c.nodes, l2).site, &more).await;
    written.extend(more);
    all_have(&c.nodes, &written).await;

    // The old leader comes back on its data and address and catches up.
    let creds = c.creds.get(&l).expect("creds").clone();
    let (endpoint, service) = bind(&creds, old_addr).await;
    let data = c.data(l);
    let back = open(l, &data, endpoint, service, Bootstrap::Join, 1000).await;
    c.nodes.push(back);
    all_have(&c.nodes, &written).await;
    let l3 = leader(&c.nodes).await;
    let last = ids(30..31);
    write_batch(&node(&c.nodes, l3).site, &last).await;
    written.extend(last);
    all_have(&c.nodes, &written).await;

    for n in c.nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_catches_up_by_snapshot() {
    let mut c = start(3).await;
    let l = leader(&c.nodes).await;
    let lead = node(&c.nodes, l).site.clone();
    lead.write(Command::PutBus {
        name: "b".into(),
        spec: json!({}),
    })
    .await
    .expect("bus");
    let mut written = Vec::new();
    for i in 0..6 {
        let batch = ids(i * 5..i * 5 + 5);
        write_batch(&lead, &batch).await;
        written.extend(batch);
    }
    // Snapshot and purge the whole log on the leader, so a new member can
    // only catch up by snapshot.
    lead.raft.trigger().snapshot().await.expect("snapshot");
    let m = lead
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.snapshot.is_some(), "snapshot built")
        .await
        .expect("snapshot");
    let snap = m.snapshot.expect("snapshot id");
    lead.raft
        .trigger()
        .purge_log(snap.index)
        .await
        .expect("purge");
    lead.raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.purged == Some(snap), "log purged")
        .await
        .expect("purged");

    // Node 4 joins as a learner, then as a voter.
    let certs = c.certs.clone();
    let creds = common::node(&certs, 4, SITE);
    let (endpoint, service) = bind(&creds, "127.0.0.1:0".parse().expect("addr")).await;
    let addr = endpoint.local_addr().expect("addr");
    let data = c.data(4);
    let n4 = open(4, &data, endpoint, service, Bootstrap::Join, 1000).await;
    lead.raft
        .add_learner(4, info(addr), true)
        .await
        .expect("add learner");
    lead.raft
        .change_membership([1, 2, 3, 4], false)
        .await
        .expect("change membership");
    // Its log starts after the leader's purge point: it got a snapshot.
    n4.site
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= snap.index),
            "node 4 installed the snapshot",
        )
        .await
        .expect("snapshot on node 4");
    c.nodes.push(n4);
    let more = ids(30..35);
    write_batch(&lead, &more).await;
    written.extend(more);
    all_have(&c.nodes, &written).await;
    // Rebuilt from the snapshot, its state is the leader's, row for row:
    // both write the same snapshot once they applied the same entries.
    let applied = lead.raft.metrics().borrow().last_applied;
    let rebuilt = node(&c.nodes, 4).site.clone();
    rebuilt
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.last_applied >= applied, "node 4 applied as far")
        .await
        .expect("node 4 caught up");
    let a = lead.state.snapshot_bytes().expect("leader snapshot");
    let b = rebuilt.state.snapshot_bytes().expect("node 4 snapshot");
    assert_eq!(a.last_applied, b.last_applied);
    assert!(a.data == b.data, "node 4's state differs from the leader's");
    for n in c.nodes {
        n.stop().await;
    }
}

/// A Raft request must come from the node its certificate names, and a vote
/// from a member of the site; anything else is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_requests_must_match_the_certificate_and_the_membership() {
    use openraft::{LogId, Vote};
    use strait_federation::certs::NodeIdentity;
    use strait_federation::network_quic::{
        METHOD_APPEND_ENTRIES, METHOD_INSTALL_SNAPSHOT, METHOD_VOTE,
    };
    use strait_federation::transport::RequestError;
    use strait_federation::transport::codec::codes;

    let c = start(3).await;
    let _ = leader(&c.nodes).await;
    let target = &c.nodes[0];
    let addr = target.endpoint.local_addr().expect("addr").to_string();
    // A stranger from the right CA and site: node 8.
    let stranger = common::node(&c.certs, 8, SITE);
    let (ep, _svc) = bind(&stranger, "127.0.0.1:0".parse().expect("addr")).await;
    let peer = ep.peer(NodeIdentity::new(target.id, SITE).expect("identity"), addr);
    let vote = |candidate: u64| {
        let req = openraft::raft::VoteRequest::<NodeId> {
            vote: Vote::new(99, candidate),
            last_log_id: Some(LogId::new(
                openraft::CommittedLeaderId::new(98, candidate),
                1_000,
            )),
        };
        bytes::Bytes::from(serde_json::to_vec(&req).expect("json"))
    };
    for (claimed, needle) in [(2u64, "cannot speak for node 2"), (8, "not a member")] {
        match peer.request(METHOD_VOTE, vote(claimed)).await {
            Err(RequestError::Remote { error, .. }) => {
                assert_eq!(error.code, codes::FORBIDDEN, "{error:?}");
                assert!(error.message.contains(needle), "{}", error.message);
            }
            other => panic!("vote claiming node {claimed} was not refused: {other:?}"),
        }
    }
    // Append-entries and snapshots from a non-member are refused too: it
    // cannot move the node to its term nor write its log.
    let append = {
        let req = openraft::raft::AppendEntriesRequest::<strait_federation::TypeConfig> {
            vote: Vote::new_committed(99, 8),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
        bytes::Bytes::from(serde_json::to_vec(&req).expect("json"))
    };
    let snapshot = {
        let req = openraft::raft::InstallSnapshotRequest::<strait_federation::TypeConfig> {
            vote: Vote::new_committed(99, 8),
            meta: openraft::SnapshotMeta {
                last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(98, 8), 1_000)),
                last_membership: openraft::StoredMembership::default(),
                snapshot_id: "forged".into(),
            },
            offset: 0,
            data: Vec::new(),
            done: true,
        };
        let h = serde_json::to_vec(&req).expect("json");
        let mut body = (h.len() as u32).to_be_bytes().to_vec();
        body.extend_from_slice(&h);
        bytes::Bytes::from(body)
    };
    for (method, body, what) in [
        (METHOD_APPEND_ENTRIES, append, "append-entries"),
        (METHOD_INSTALL_SNAPSHOT, snapshot, "install-snapshot"),
    ] {
        match peer.request(method, body).await {
            Err(RequestError::Remote { error, .. }) => {
                assert_eq!(error.code, codes::FORBIDDEN, "{what}: {error:?}");
                assert!(
                    error.message.contains("not a member"),
                    "{what}: {}",
                    error.message
                );
            }
            other => panic!("{what} from a non-member was not refused: {other:?}"),
        }
    }
    // The site did not move to term 99.
    let m = target.site.raft.metrics().borrow().clone();
    assert!(m.current_term < 99, "term {}", m.current_term);
    // ... and goes on replicating among its members.
    let l = leader(&c.nodes).await;
    let lead = &node(&c.nodes, l).site;
    let r = lead
        .write(Command::PutBus {
            name: "b".into(),
            spec: json!({}),
        })
        .await
        .expect("bus");
    assert!(matches!(r, CommandResponse::Ok));
    let ids = ids(0..5);
    write_batch(lead, &ids).await;
    all_have(&c.nodes, &ids).await;
    ep.close().await;
    for n in c.nodes {
        n.stop().await;
    }
}
