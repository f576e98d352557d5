//! Two sites in one process, each its own Raft group with its own QUIC
//! endpoint and certificates from one CA, joined by a link: the sending
//! site's outbox reaches the receiving site's inbox in order, exactly once
//! per sequence, across an outage of the receiving site; forged origins are
//! refused.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use serde_json::value::RawValue;
use strait_federation::certs::{NodeCredentials, NodeIdentity};
use strait_federation::link::proto::{Batch, SenderConfig, encode_batch};
use strait_federation::link::service::{
    LinkService, LinkStatsMap, METHOD_LINK_BATCH, Methods, RemoteSite, run_sender,
};
use strait_federation::network_quic::{QuicNetwork, RaftService};
use strait_federation::transport::codec::codes;
use strait_federation::transport::{AcceptPolicy, Endpoint, RequestError, TransportConfig};
use strait_federation::{Bootstrap, Command, NodeInfo, Site, SiteOptions};

struct SiteNode {
    site: Site,
    endpoint: Endpoint,
    /// The inbox sequences the commit hook was told of, in call order.
    committed: Arc<Mutex<Vec<u64>>>,
}

fn transport() -> TransportConfig {
    TransportConfig {
        accept: AcceptPolicy::Sites(vec!["idc".into(), "aws".into()]),
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(5),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(300),
        ..TransportConfig::default()
    }
}

async fn start_site(
    name: &str,
    creds: &NodeCredentials,
    addr: SocketAddr,
    data: &Path,
    origins: &[&str],
) -> SiteNode {
    let deadline = Instant::now() + Duration::from_secs(10);
    let raft = RaftService::new(name);
    let link = LinkService::new(name, origins.iter().map(|s| s.to_string()).collect());
    let committed: Arc<Mutex<Vec<u64>>> = Default::default();
    let seen = committed.clone();
    link.on_commit(Arc::new(move |c| {
        assert_eq!(c.origin, "idc");
        assert!(c.received <= std::time::SystemTime::now());
        seen.lock()
            .expect("lock")
            .extend((0..c.items.len() as u64).map(|i| c.first_seq + i));
    }));
    let endpoint = loop {
        match Endpoint::bind(
            addr,
            creds,
            transport(),
            Some(Methods::handler(raft.handler(), link.clone())),
        ) {
            Ok(e) => break e,
            Err(e) if Instant::now() < deadline => {
                tracing::info!("rebind: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("bind: {e}"),
        }
    };
    let local = endpoint.local_addr().expect("addr");
    let site = Site::open_with_network(
        SiteOptions {
            data_dir: data.to_path_buf(),
            node_id: 1,
            node: NodeInfo {
                http_addr: String::new(),
                raft_addr: local.to_string(),
                site: String::new(),
            },
            snapshot_every: 1000,
            state_flush_interval: Duration::from_millis(100),
            log_sync_interval: Duration::ZERO,
            timing: Default::default(),
        },
        QuicNetwork::new(endpoint.clone()),
        Bootstrap::Single,
    )
    .await
    .expect("open site");
    raft.set_raft(site.raft.clone());
    site.wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    link.start(site.clone(), endpoint.clone());
    SiteNode {
        site,
        endpoint,
        committed,
    }
}

/// The commit hook of `node` was told of exactly the sequences `want`, each
/// once (it runs just after the commit: wait for it).
async fn wait_hook(node: &SiteNode, want: std::ops::RangeInclusive<u64>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut got = node.committed.lock().expect("lock").clone();
        got.sort_unstable();
        if got.len() >= want.clone().count() || Instant::now() >= deadline {
            assert_eq!(got, want.collect::<Vec<_>>(), "inbox commits reported");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The rule definition every test delivery names.
const SPEC_HASH: &str = "0123456789abcdef";

async fn enqueue(site: &Site, range: std::ops::Range<u64>) {
    let items: Vec<Box<RawValue>> = range
        .map(|n| {
            RawValue::from_string(format!(
                r#"{{"ruleHash":"{SPEC_HASH}","n":{n},"pad":"{}"}}"#,
                "x".repeat(200)
            ))
            .expect("raw")
        })
        .collect();
    site.write(Command::LinkEnqueue {
        remote: "aws".into(),
        items: items.into(),
        specs: vec![strait_federation::LinkSpec {
            hash: SPEC_HASH.into(),
            spec: RawValue::from_string(r#"{"rule":"r"}"#.into()).expect("raw"),
        }],
    })
    .await
    .expect("enqueue");
}

async fn wait_inbound(site: &Site, n: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = site
            .state
            .view()
            .links
            .inbound
            .get("idc")
            .copied()
            .unwrap_or(0);
        if got == n {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: inbox has {got} of {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_carries_the_outbox_in_order_across_an_outage() {
    common::logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    common::ca(&certs);
    let idc_creds = common::node(&certs, 1, "idc");
    let aws_creds = common::node(&certs, 1, "aws");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let aws = start_site("aws", &aws_creds, any, &dir.path().join("aws"), &["idc"]).await;
    let aws_addr = aws.endpoint.local_addr().expect("addr");
    let idc = start_site("idc", &idc_creds, any, &dir.path().join("idc"), &["aws"]).await;
    let stats: LinkStatsMap = Default::default();
    let sender = tokio::spawn(run_sender(
        idc.site.clone(),
        idc.endpoint.clone(),
        RemoteSite {
            site: "aws".into(),
            nodes: vec![(1, aws_addr.to_string())],
        },
        SenderConfig {
            max_batch_items: 256,
            window: 4,
            window_bytes: 1 << 20,
            retransmit_after: Duration::from_secs(3),
        },
        stats.clone(),
    ));
    for chunk in 0..30u64 {
        enqueue(&idc.site, chunk * 100 + 1..chunk * 100 + 101).await;
    }
    wait_inbound(&aws.site, 3000, "before the outage").await;
    wait_hook(&aws, 1..=3000).await;

    // The receiving site goes away; the sender keeps its outbox.
    aws.site.shutdown().await.expect("shutdown");
    aws.endpoint.close().await;
    drop(aws);
    enqueue(&idc.site, 3001..4001).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    {
        let s = stats.lock().expect("stats");
        let l = s.get("aws").expect("link stats");
        assert_eq!(l.state, "down", "{l:?}");
        assert!(l.backlog >= 1000, "{l:?}");
    }
    let aws = start_site(
        "aws",
        &aws_creds,
        aws_addr,
        &dir.path().join("aws"),
        &["idc"],
    )
    .await;
    wait_inbound(&aws.site, 4000, "after the outage").await;
    // Only what the new process committed, each once.
    wait_hook(&aws, 3001..=4000).await;
    let inbox = aws.site.state.read_inbox("idc", 0, 10_000).expect("inbox");
    assert_eq!(inbox.len(), 4000);
    for (i, e) in inbox.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
        let v: serde_json::Value = serde_json::from_slice(&e.body).expect("json");
        assert_eq!(v["n"], json!(i as u64 + 1), "entry {i}");
    }
    // The rule definition came along with the batches, once.
    assert_eq!(
        aws.site
            .state
            .read_inbox_spec("idc", SPEC_HASH)
            .expect("spec")
            .as_deref(),
        Some(&br#"{"rule":"r"}"#[..])
    );
    // The sender persists the acknowledgement and its outbox empties.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let acked = idc
            .site
            .state
            .view()
            .links
            .out
            .get("aws")
            .map(|o| o.acked)
            .unwrap_or(0);
        let left = idc
            .site
            .state
            .read_outbox("aws", 0, 10)
            .expect("outbox")
            .len();
        if acked == 4000 && left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acked {acked}, {left} left in the outbox"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The receiving site's state is full (max_state_bytes): it stores
    // nothing more, the sender keeps the batch and backs off, and it goes
    // through once there is room.
    aws.site.state.set_max_bytes(1);
    enqueue(&idc.site, 4001..4101).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    {
        let s = stats.lock().expect("stats");
        let l = s.get("aws").expect("link stats");
        assert_eq!(l.state, "down", "{l:?}");
        assert!(
            l.last_error
                .as_deref()
                .is_some_and(|e| e.contains("max_state_bytes")),
            "{l:?}"
        );
        assert_eq!(l.backlog, 100, "{l:?}");
    }
    wait_inbound(&aws.site, 4000, "while full").await;
    aws.site.state.set_max_bytes(0);
    wait_inbound(&aws.site, 4100, "once there is room").await;

    // A node of idc cannot send on behalf of another site.
    let (probe, _) = {
        let c = common::node(&certs, 2, "idc");
        let ep = Endpoint::bind(any, &c, transport(), None).expect("bind");
        (ep, c)
    };
    let forged = Batch {
        origin: "aliyun".into(),
        first_seq: 1,
        items: vec![bytes::Bytes::from_static(b"{}")],
        specs: Vec::new(),
    };
    let peer = probe.peer(
        NodeIdentity::new(1, "aws").expect("id"),
        aws_addr.to_string(),
    );
    match peer
        .request(METHOD_LINK_BATCH, encode_batch(&forged).expect("encode"))
        .await
    {
        Err(RequestError::Remote { error, .. }) => {
            assert_eq!(error.code, codes::FORBIDDEN);
            assert!(error.message.contains("on behalf of"), "{}", error.message);
        }
        other => panic!("forged origin accepted: {other:?}"),
    }
    assert_eq!(aws.site.state.view().links.inbound.get("aliyun"), None);
    sender.abort();
    probe.close().await;
    for s in [aws, idc] {
        s.site.shutdown().await.expect("shutdown");
        s.endpoint.close().await;
    }
}
