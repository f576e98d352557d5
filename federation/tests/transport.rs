//! The QUIC transport on 127.0.0.1 with real certificates: mutual TLS
//! against the cluster CA, identity checks, multiplexing, reconnects and
//! garbage from peers.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use strait_federation::certs::{NodeCredentials, NodeIdentity};
use strait_federation::transport::codec::{self, Frame, codes};
use strait_federation::transport::{
    AcceptPolicy, Endpoint, Handler, RemoteError, Request, RequestError, TransportConfig,
    TransportError,
};

const METHOD_ECHO: u16 = 1;
const METHOD_SLOW: u16 = 2;
const METHOD_FAIL: u16 = 3;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn fast_config() -> TransportConfig {
    TransportConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..TransportConfig::default()
    }
}

/// Echo handler: answers "<peer uri>|<body>"; SLOW sleeps 50 ms and counts
/// how many requests are in flight at once.
fn echo(in_flight: Arc<AtomicUsize>, max_seen: Arc<AtomicUsize>) -> Arc<dyn Handler> {
    Arc::new(move |req: Request| {
        let in_flight = in_flight.clone();
        let max_seen = max_seen.clone();
        async move {
            match req.method {
                METHOD_ECHO => {}
                METHOD_SLOW => {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    max_seen.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                }
                METHOD_FAIL => return Err(RemoteError::new(100, "asked to fail")),
                m => {
                    return Err(RemoteError::new(
                        codes::UNKNOWN_METHOD,
                        format!("method {m}"),
                    ));
                }
            }
            let mut out = req.peer.uri().into_bytes();
            out.push(b'|');
            out.extend_from_slice(&req.body);
            Ok(Bytes::from(out))
        }
    })
}

fn server(creds: &NodeCredentials, addr: SocketAddr, cfg: TransportConfig) -> Endpoint {
    let zero = Arc::new(AtomicUsize::new(0));
    Endpoint::bind(addr, creds, cfg, Some(echo(zero.clone(), zero))).expect("bind server")
}

fn client(creds: &NodeCredentials) -> Endpoint {
    Endpoint::bind(any_port(), creds, fast_config(), None).expect("bind client")
}

fn addr_of(e: &Endpoint) -> String {
    e.local_addr().expect("addr").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_handshake_and_request() {
    common::logs();
    let dir = tempfile::tempdir().expect("tempdir");
    common::ca(dir.path());
    let a = common::node(dir.path(), 1, "idc");
    let b = common::node(dir.path(), 2, "idc");
    let srv = server(&a, any_port(), fast_config());
    let cli = client(&b);
    let peer = cli.peer(a.identity.clone(), addr_of(&srv));
    let answer = peer
        .request(METHOD_ECHO, Bytes::from_static(b"ping"))
        .await
        .expect("request");
    // The server saw the client's identity from its certificate.
    assert_eq!(&answer[..], b"strait://site/idc/node/2|ping");
    assert!(peer.is_connected());

    // Handler errors come back as remote errors, and the connection stays.
    let e = peer
        .request(METHOD_FAIL, Bytes::new())
        .await
        .expect_err("fail");
    assert!(
        matches!(&e, RequestError::Remote { error, .. } if error.code == 100),
        "{e}"
    );
    let e = peer.request(99, Bytes::new()).await.expect_err("unknown");
    assert!(
        matches!(&e, RequestError::Remote { error, .. } if error.code == codes::UNKNOWN_METHOD),
        "{e}"
    );
    // Same peer, same client.
    assert!(Arc::ptr_eq(
        &peer,
        &cli.peer(a.identity.clone(), addr_of(&srv))
    ));
    cli.close().await;
    srv.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_another_ca_are_refused_both_ways() {
    common::logs();
    let good = tempfile::tempdir().expect("tempdir");
    let evil = tempfile::tempdir().expect("tempdir");
    common::ca(good.path());
    common::ca(evil.path());
    let a = common::node(good.path(), 1, "idc");
    let b = common::node(good.path(), 2, "idc");
    let rogue = common::node(evil.path(), 3, "idc");
    let srv = server(&a, any_port(), fast_config());

    // A client whose certificate comes from another CA (it trusts ours):
    // the server refuses it.
    let rogue_client = NodeCredentials {
        ca: a.ca.clone(),
        ..rogue.clone()
    };
    let cli = client(&rogue_client);
    let e = cli
        .peer(a.identity.clone(), addr_of(&srv))
        .request(METHOD_ECHO, Bytes::new())
        .await
        .expect_err("server must refuse a foreign client");
    assert!(
        matches!(
            &e,
            RequestError::Unreachable(_) | RequestError::Connection { .. }
        ),
        "{e}"
    );
    cli.close().await;

    // A server whose certificate comes from another CA (it would accept
    // our client): the client refuses it.
    let rogue_server = NodeCredentials {
        ca: a.ca.clone(),
        ..rogue.clone()
    };
    let bad_srv = server(&rogue_server, any_port(), fast_config());
    let cli = client(&b);
    let e = cli
        .peer(rogue.identity.clone(), addr_of(&bad_srv))
        .request(METHOD_ECHO, Bytes::new())
        .await
        .expect_err("client must refuse a foreign server");
    match &e {
        RequestError::Unreachable(TransportError::Connect { message, .. }) => {
            assert!(message.to_lowercase().contains("certificate"), "{message}")
        }
        other => panic!("unexpected {other}"),
    }

    // The good server is unaffected.
    let answer = cli
        .peer(a.identity.clone(), addr_of(&srv))
        .request(METHOD_ECHO, Bytes::from_static(b"ok"))
        .await
        .expect("good pair still works");
    assert_eq!(&answer[..], b"strait://site/idc/node/2|ok");
    cli.close().await;
    bad_srv.close().await;
    srv.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_another_identity_is_refused() {
    common::logs();
    let dir = tempfile::tempdir().expect("tempdir");
    common::ca(dir.path());
    let a = common::node(dir.path(), 1, "idc");
    let b = common::node(dir.path(), 2, "idc");
    let srv = server(&a, any_port(), fast_config());
    let cli = client(&b);

    // We expect node 5 at the server's address, but it is node 1.
    let expected = NodeIdentity::new(5, "idc").expect("id");
    let e = cli
        .peer(expected, addr_of(&srv))
        .request(METHOD_ECHO, Bytes::new())
        .await
        .expect_err("wrong node id");
    match &e {
        RequestError::Unreachable(TransportError::WrongPeer { actual, .. }) => {
            assert!(actual.contains("node 1"), "{actual}")
        }
        other => panic!("unexpected {other}"),
    }
    // Same id, other site.
    let e = cli
        .peer(NodeIdentity::new(1, "aws").expect("id"), addr_of(&srv))
        .request(METHOD_ECHO, Bytes::new())
        .await
        .expect_err("wrong site");
    assert!(
        matches!(
            &e,
            RequestError::Unreachable(TransportError::WrongPeer { .. })
        ),
        "{e}"
    );

    // A server restricted to its own site refuses a node of another site.
    let foreign = common::node(dir.path(), 9, "aws");
    let strict = server(
        &a,
        any_port(),
        TransportConfig {
            accept: AcceptPolicy::SameSite,
            ..fast_config()
        },
    );
    let fcli = client(&foreign);
    let e = fcli
        .peer(a.identity.clone(), addr_of(&strict))
        .request(METHOD_ECHO, Bytes::new())
        .await
        .expect_err("other site refused");
    match &e {
        RequestError::Unreachable(TransportError::Refused { reason, .. }) => {
            assert!(reason.contains("not of this node's site"), "{reason}")
        }
        other => panic!("unexpected {other}"),
    }
    // ... and accepts one of its own.
    cli.peer(a.identity.clone(), addr_of(&strict))
        .request(METHOD_ECHO, Bytes::new())
        .await
        .expect("same site");
    fcli.close().await;
    cli.close().await;
    strict.close().await;
    srv.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused() {
    common::logs();
    let dir = tempfile::tempdir().expect("tempdir");
    common::ca(dir.path());
    let a = common::node(dir.path(), 1, "idc");
    let srv = server(&a, any_port(), fast_config());

    let mut roots = rustls::RootCertStore::empty();
    roots.add(a.ca[0].clone()).expect("root");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"strait/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic");
    let mut ep = quinn::Endpoint::client(any_port()).expect("client");
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let refused = async {
        let conn = ep
            .connect(srv.local_addr().expect("addr"), "localhost")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let frame = Frame::Request {
            method: METHOD_ECHO,
            body: Bytes::new(),
        }
        .encode(1024)
        .map_err(|e| e.to_string())?;
        send.write_all(&frame).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        recv.read_to_end(1024).await.map_err(|e| e.to_string())
    };
    let r = tokio::time::timeout(Duration::from_secs(5), refused)
        .await
        .expect("refusal is quick");
    assert!(r.is_err(), "a client without certificate got {r:?}");
    ep.close(0u32.into(), b"");
    srv.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_share_one_connection() {
    common::logs();
    let dir = tempfile::tempdir().expect("tempdir");
    common::ca(dir.path());
    let a = common::node(dir.path(), 1, "idc");
    let b = common::node(dir.path(), 2, "idc");
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let srv = Endpoint::bind(
        any_port(),
        &a,
        fast_config(),
        Some(echo(in_flight, max_seen.clone())),
    )
    .expect("bind");
    let cli = client(&b);
    let peer = cli.peer(a.identity.clone(), addr_of(&srv));
    let first = peer.connection().await.expect("connect").stable_id();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..300u32 {
        let peer = peer.clone();
        tasks.push(tokio::spawn(async move {
            let body = Bytes::from(format!("req-{i}"));
            let answer = peer.request(METHOD_SLOW, body).await.expect("request");
            assert_eq!(
                answer,
                format!("strait://site/idc/node/2|req-{i}").as_bytes()
            );
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let took = started.elapsed();
    // 300 requests of 50 ms each: far less than 15 s means they overlapped.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        max_seen.load(Ordering::SeqCst) >= 50,
        "at most {} requests in flight at once",
        max_seen.load(Ordering::SeqCst)
    );
    assert_eq!(
        peer.connection().await.expect("conn").stable_id(),
        first,
        "all requests used the first connection"
    );
    cli.close().await;
    srv.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reconnects_after_the_server_restarts() {
    common::logs();
    let dir = tempfile::tempdir().expect("tempdir");
    common::ca(dir.path());
    let a = common::node(dir.path(), 1, "idc");
    let b = common::node(dir.path(), 2, "idc");
    let srv = server(&a, any_port(), fast_config());
    let addr = srv.local_addr().expect("addr");
    let cli = client(&b);
    let peer = cli.peer(a.identity.clone(), addr.to_string());
    peer.request(METHOD_ECHO, Bytes::from_static(b"1"))
        .await
        .expect("first");
    // Keep the old connection object alive: `stable_id` is an address, and
    // a freed one could be handed to the new connection.
    let old_conn = peer.connection().await.expect("conn");
    let first = old_conn.stable_id();

    srv.close().await;
    drop(srv);
    // While the server is down requests fail quickly with a clear error.
    let e = peer
        .request_within(METHOD_ECHO, Bytes::new(), Duration::from_secs(3))
        .await
        .expect_err("server down");
    assert!(
        !matches!(e, RequestError::Remote { .. }),
        "unexpected answer {e}"
    );

    // Restart on the same port (the old socket may take a moment to go).
    let deadline = Instant::now() + Duration::from_secs(10);
    let srv = loop {
        let zero = Arc::new(AtomicUsize::new(0));
        match Endpoint::bind(addr, &a, fast_config(), Some(echo(zero.clone(), zero))) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                tracing::info!("rebind: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot rebind {addr}: {e}"),
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match peer.request(METHOD_ECHO, Bytes::from_static(b"2")).await {
            Ok(answer) => {
                assert_eq!(&answer[..], b"strait://site/idc/node/2|2");
                break;
            }
            Err(e) if Instant::now() < deadline => {
                tracing::info!("retry: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no reconnect: {e}"),
        }
    }
    assert_ne!(
        peer.connection().await.expect("conn").stable_id(),
        first,
        "a new connection"
    );
    drop(old_conn);
    cli.close().await;
    srv.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_peer_gets_an_error_not_a_crash() {
    common::logs();
    let dir = tempfile::tempdir().expect("tempdir");
    common::ca(dir.path());
    let a = common::node(dir.path(), 1, "idc");
    let b = common::node(dir.path(), 2, "idc");
    let cfg = TransportConfig {
        max_frame: 4096,
        ..fast_config()
    };
    let zero = Arc::new(AtomicUsize::new(0));
    let srv = Endpoint::bind(any_port(), &a, cfg, Some(echo(zero.clone(), zero))).expect("bind");
    let cli = client(&b);
    let peer = cli.peer(a.identity.clone(), addr_of(&srv));
    let conn = peer.connection().await.expect("connect");

    let too_big = {
        let mut v = 1_000_000u32.to_be_bytes().to_vec();
        v.extend_from_slice(&[1, 0, 1]);
        v
    };
    let truncated = {
        let mut v = 10u32.to_be_bytes().to_vec();
        v.extend_from_slice(&[1, 0]);
        v
    };
    let over_limit_stream = vec![7u8; 10_000];
    let response_frame = Frame::Response {
        body: Bytes::from_static(b"x"),
    }
    .encode(100)
    .expect("enc");
    let cases: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![],
        vec![0, 0, 0, 0],
        vec![0, 0, 0, 1, 42],
        too_big,
        truncated,
        over_limit_stream,
        response_frame.to_vec(),
    ];
    for bytes in cases {
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        send.write_all(&bytes).await.expect("write");
        send.finish().expect("finish");
        let answer = recv.read_to_end(8192).await.expect("an answer");
        match Frame::decode(&answer, 8192).expect("a valid frame") {
            Frame::Error { code, message } => {
                assert_eq!(code, codes::BAD_FRAME, "{message}");
                assert!(!message.is_empty());
            }
            other => panic!("garbage {bytes:?} got {other:?}"),
        }
    }
    // The connection and the server still work.
    let answer = peer
        .request(METHOD_ECHO, Bytes::from_static(b"still here"))
        .await
        .expect("request");
    assert_eq!(&answer[..], b"strait://site/idc/node/2|still here");
    assert_eq!(
        peer.connection().await.expect("conn").stable_id(),
        conn.stable_id()
    );
    // A request over the server's frame limit is refused by the server...
    let e = peer
        .request(METHOD_ECHO, Bytes::from(vec![0u8; 5000]))
        .await
        .expect_err("too large");
    assert!(
        matches!(&e, RequestError::Remote { error, .. } if error.code == codes::BAD_FRAME && error.message.contains("exceeds the limit")),
        "{e}"
    );
    // ... and by a client with the same limit before it is sent.
    let small = Endpoint::bind(
        any_port(),
        &b,
        TransportConfig {
            max_frame: 4096,
            ..fast_config()
        },
        None,
    )
    .expect("bind");
    let e = small
        .peer(a.identity.clone(), addr_of(&srv))
        .request(METHOD_ECHO, Bytes::from(vec![0u8; 5000]))
        .await
        .expect_err("too large");
    assert!(
        matches!(
            e,
            RequestError::Codec {
                error: codec::CodecError::TooLarge { .. },
                ..
            }
        ),
        "{e}"
    );
    small.close().await;
    cli.close().await;
    srv.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_without_handler_answers_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::ca(dir.path());
    let a = common::node(dir.path(), 1, "idc");
    let b = common::node(dir.path(), 2, "idc");
    let srv = Endpoint::bind(any_port(), &a, fast_config(), None).expect("bind");
    let cli = client(&b);
    let e = cli
        .peer(a.identity.clone(), addr_of(&srv))
        .request(METHOD_ECHO, Bytes::new())
        .await
        .expect_err("unavailable");
    assert!(
        matches!(&e, RequestError::Remote { error, .. } if error.code == codes::UNAVAILABLE),
        "{e}"
    );
    // Nothing listens here: unreachable, then backing off.
    let nowhere = cli.peer(NodeIdentity::new(3, "idc").expect("id"), "127.0.0.1:9");
    let e = nowhere
        .request_within(METHOD_ECHO, Bytes::new(), Duration::from_secs(5))
        .await
        .expect_err("nobody");
    assert!(
        matches!(
            e,
            RequestError::Unreachable(_) | RequestError::Timeout { .. }
        ),
        "{e}"
    );
    cli.close().await;
    srv.close().await;
}

/// Credentials rotated on a running endpoint (here: to a new CA, the most
/// visible change) are used for every connection made or accepted after
/// the reload: a peer of the new CA gets in, both ways, and one of the old
/// CA no longer does; credentials for another node are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_credentials_are_used_for_new_connections() {
    common::logs();
    let old_ca = tempfile::tempdir().expect("tempdir");
    let new_ca = tempfile::tempdir().expect("tempdir");
    common::ca(old_ca.path());
    common::ca(new_ca.path());
    let a_old = common::node(old_ca.path(), 1, "idc");
    let a_new = common::node(new_ca.path(), 1, "idc");
    let b_old = common::node(old_ca.path(), 2, "idc");
    let c_new = common::node(new_ca.path(), 3, "idc");
    let srv = server(&a_old, any_port(), fast_config());

    let ask = |cli: &Endpoint| {
        let peer = cli.peer(a_old.identity.clone(), addr_of(&srv));
        async move { peer.request(METHOD_ECHO, Bytes::from_static(b"hi")).await }
    };
    let b = client(&b_old);
    assert!(ask(&b).await.is_ok(), "same CA before the rotation");
    b.close().await;
    let c = client(&c_new);
    assert!(ask(&c).await.is_err(), "the new CA is not trusted yet");
    c.close().await;

    // Another node's credentials are refused and change nothing.
    let e = srv
        .reload_credentials(&c_new)
        .expect_err("another identity");
    assert!(e.to_string().contains("node 3"), "{e}");

    srv.reload_credentials(&a_new).expect("reload");
    let c = client(&c_new);
    let answer = ask(&c).await.expect("a peer of the new CA gets in");
    assert_eq!(&answer[..], b"strait://site/idc/node/3|hi");
    c.close().await;
    let b = client(&b_old);
    assert!(ask(&b).await.is_err(), "the old CA is no longer trusted");
    b.close().await;

    // Outgoing connections use the new certificate too: a server of the
    // new CA accepts the rotated endpoint as a client.
    let d = server(
        &common::node(new_ca.path(), 4, "idc"),
        any_port(),
        fast_config(),
    );
    let answer = srv
        .peer(NodeIdentity::new(4, "idc").expect("identity"), addr_of(&d))
        .request(METHOD_ECHO, Bytes::from_static(b"out"))
        .await
        .expect("outgoing with the new certificate");
    assert_eq!(&answer[..], b"strait://site/idc/node/1|out");
    d.close().await;
    srv.close().await;
}
