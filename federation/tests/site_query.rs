//! Site queries over QUIC: any node of the asked site answers; a node that
//! is down is skipped within the deadline; peers of unlinked sites are
//! refused; a site with no live node is reported unanswered in time.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strait_federation::link::query::{QueryError, QueryService, SiteQueryClient};
use strait_federation::link::service::{LinkService, Methods, RemoteSite};
use strait_federation::transport::codec::codes;
use strait_federation::transport::{
    AcceptPolicy, Endpoint, Handler, HandlerFuture, RemoteError, Request, TransportConfig,
};

fn transport() -> TransportConfig {
    TransportConfig {
        accept: AcceptPolicy::AnyNode,
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(5),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(300),
        ..TransportConfig::default()
    }
}

/// Stands in for Raft: every method it sees is unknown.
struct NoRaft;

impl Handler for NoRaft {
    fn handle(&self, req: Request) -> HandlerFuture {
        Box::pin(async move {
            Err(RemoteError::new(
                codes::UNKNOWN_METHOD,
                format!("method {:#x}", req.method),
            ))
        })
    }
}

/// A node of `site` answering queries from `linked` with
/// "<site>/<node> for <asking site>: <body>".
fn node(certs: &std::path::Path, site: &str, id: u64, linked: &[&str], serve: bool) -> Endpoint {
    let creds = common::node(certs, id, site);
    let link = LinkService::new(site, linked.iter().map(|s| s.to_string()).collect());
    let query = QueryService::new(site, linked.iter().map(|s| s.to_string()).collect());
    if serve {
        let me = format!("{site}/{id}");
        query.serve(Arc::new(move |from: String, body: Bytes| {
            let me = me.clone();
            async move {
                if body.as_ref() == b"bad" {
                    return Err(RemoteError::new(codes::BAD_REQUEST, "bad question"));
                }
                Ok(Bytes::from(format!(
                    "{me} for {from}: {}",
                    String::from_utf8_lossy(&body)
                )))
            }
        }));
    }
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    Endpoint::bind(
        any,
        &creds,
        transport(),
        Some(Methods::with_query(Arc::new(NoRaft), link, query)),
    )
    .expect("bind")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_of_a_linked_site_answers_within_the_deadline() {
    common::logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    common::ca(&certs);
    let idc = node(&certs, "idc", 1, &["aws", "aliyun"], true);
    let aws1 = node(&certs, "aws", 1, &["idc"], true);
    let aws2 = node(&certs, "aws", 2, &["idc"], true);
    let aws_addrs = [
        aws1.local_addr().expect("addr").to_string(),
        aws2.local_addr().expect("addr").to_string(),
    ];
    // aliyun's node is not linked with idc (it links only with "gcp").
    let aliyun = node(&certs, "aliyun", 1, &["gcp"], true);
    // A site whose only node does not answer queries (yet).
    let gcp = node(&certs, "gcp", 1, &["idc"], false);
    let client = SiteQueryClient::new(
        idc.clone(),
        vec![
            RemoteSite {
                site: "aws".into(),
                nodes: vec![(1, aws_addrs[0].clone()), (2, aws_addrs[1].clone())],
            },
            RemoteSite {
                site: "aliyun".into(),
                nodes: vec![(1, aliyun.local_addr().expect("addr").to_string())],
            },
            RemoteSite {
                site: "gcp".into(),
                nodes: vec![(1, gcp.local_addr().expect("addr").to_string())],
            },
        ],
    );

    let got = client
        .ask("aws", Bytes::from_static(b"q1"), Duration::from_secs(2))
        .await
        .expect("aws answers");
    assert_eq!(got.as_ref(), b"aws/1 for idc: q1");

    // A question every node would refuse is not asked again elsewhere.
    match client
        .ask("aws", Bytes::from_static(b"bad"), Duration::from_secs(2))
        .await
    {
        Err(QueryError::Refused { site, error }) => {
            assert_eq!(site, "aws");
            assert_eq!(error.code, codes::BAD_REQUEST);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // aws node 1 goes away: node 2 answers, within the deadline.
    aws1.close().await;
    let t = Instant::now();
    let got = client
        .ask("aws", Bytes::from_static(b"q2"), Duration::from_secs(2))
        .await
        .expect("aws node 2 answers");
    assert_eq!(got.as_ref(), b"aws/2 for idc: q2");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // ... and is asked first from then on.
    let t = Instant::now();
    let got = client
        .ask("aws", Bytes::from_static(b"q3"), Duration::from_secs(2))
        .await
        .expect("aws node 2 answers");
    assert_eq!(got.as_ref(), b"aws/2 for idc: q3");
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );

    // Parallel questions: a refusal, an unanswered site and a site this
    // one has no link with, each reported for its own site, within the
    // deadline.
    let t = Instant::now();
    let answers = client
        .ask_all(
            &[
                "aws".to_string(),
                "aliyun".to_string(),
                "gcp".to_string(),
                "azure".to_string(),
            ],
            Bytes::from_static(b"q4"),
            Duration::from_millis(800),
        )
        .await;
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    let names: Vec<&str> = answers.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(names, ["aws", "aliyun", "gcp", "azure"]);
    assert_eq!(
        answers[0].1.as_ref().expect("aws").as_ref(),
        b"aws/2 for idc: q4"
    );
    match &answers[1].1 {
        Err(QueryError::Refused { error, .. }) => {
            assert_eq!(error.code, codes::FORBIDDEN);
            assert!(error.message.contains("no link"), "{}", error.message);
        }
        other => panic!("aliyun must refuse idc, got {other:?}"),
    }
    // gcp's node does not answer yet: unanswered, saying why.
    match &answers[2].1 {
        Err(QueryError::Unanswered { errors, .. }) => {
            assert!(
                errors.iter().any(|e| e.contains("does not answer")),
                "{errors:?}"
            )
        }
        other => panic!("gcp does not answer, got {other:?}"),
    }
    assert!(matches!(&answers[3].1, Err(QueryError::NotLinked(s)) if s == "azure"));

    // No live node at all: unanswered, in time.
    aws2.close().await;
    let t = Instant::now();
    match client
        .ask("aws", Bytes::from_static(b"q5"), Duration::from_millis(800))
        .await
    {
        Err(e @ QueryError::Unanswered { .. }) => assert_eq!(e.site(), "aws"),
        other => panic!("expected no answer, got {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    for e in [idc, aliyun, gcp] {
        e.close().await;
    }
}
