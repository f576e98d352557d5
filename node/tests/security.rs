//! The HTTP listener of a real node (in process, its one-member Raft site)
//! served by `strait_node::server::serve`, with certificates made by rcgen:
//!
//! * HTTPS with a CA the client trusts; a certificate replaced on disk is
//!   what new handshakes see, without a restart;
//! * `client_ca` requires a client certificate from that CA;
//! * scoped tokens: 401 for unknown tokens, 403 naming the missing scope,
//!   producers post to their bus only, `read` cannot write,
//!   `metrics_public: false`; an audit line for every change;
//! * timeouts and caps: a slowloris client is cut off after the header
//!   timeout, an idle connection after the idle timeout, a slow body gets
//!   408, connections over the per-address cap are closed at once, 500
//!   idle connections are closed while requests go on, and shutdown waits
//!   for requests in progress only up to its deadline; a client that stops
//!   reading an 8 MB answer is cut off after the idle timeout, one that
//!   reads a 12 MB answer slowly is not.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use serde_json::{Value, json};
use strait_node::config::{HttpServer, HttpTls, NodeConfig, ScopedToken, TokenSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let issuer =
            CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("ca");
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for `127.0.0.1` and `localhost`: (cert PEM, key PEM, cert DER).
    fn leaf(&self, cn: &str, client: bool) -> (String, String, Vec<u8>) {
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

/// Write `text` to `path` in one rename (what a deploy tool does).
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).expect("create");
    f.write_all(text.as_bytes()).expect("write");
    f.sync_all().expect("sync");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Audit lines (target `strait::audit`) of this test binary.
fn audit_lines() -> Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("strait::audit=info")
            .with_writer(move || Writer(w.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buf
    })
    .clone()
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Node {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), &mut self.served).await;
    }
}

/// Start a node (tokens: `admin-token` as a plain string plus `extra`),
/// tweak its config, and serve it on a free loopback port.
async fn start(dir: tempfile::TempDir, tweak: impl FnOnce(&mut NodeConfig)) -> Node {
    let mut cfg = NodeConfig {
        data_dir: dir.path().join("data"),
        ..NodeConfig::default()
    };
    cfg.auth.tokens = vec![TokenSpec::Plain("admin-token".into())];
    tweak(&mut cfg);
    cfg.validate().expect("valid config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let tls = cfg
        .http_tls
        .clone()
        .map(|t| strait_node::server::ReloadingTls::new(t).expect("tls files"));
    let opts = strait_node::server::ServeOptions {
        limits: cfg.http_server.clone(),
        tls,
    };
    let app = strait_node::start(cfg).await.expect("node starts");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(strait_node::server::serve(
        listener,
        strait_node::router(app),
        opts,
        async move {
            let _ = rx.await;
        },
    ));
    Node {
        addr,
        stop: Some(tx),
        served,
        _dir: dir,
    }
}

fn client_trusting(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca")])
        .tls_info(true)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// The DER of the certificate the server presented.
fn peer_cert(r: &reqwest::Response) -> Vec<u8> {
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("tls info")
        .to_vec()
}

struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

fn write_server_files(dir: &Path, ca: &Ca, cn: &str) -> (TlsFiles, Vec<u8>) {
    let (cert, key, der) = ca.leaf(cn, false);
    let f = TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        ca: dir.join("ca.pem"),
    };
    write_atomic(&f.cert, &cert);
    write_atomic(&f.key, &key);
    write_atomic(&f.ca, &ca.pem());
    (f, der)
}

fn tls_spec(f: &TlsFiles) -> HttpTls {
    HttpTls {
        cert: f.cert.clone(),
        key: f.key.clone(),
        client_ca: None,
        peer_ca: None,
        reload_interval_ms: 100,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_generated_ca_and_a_certificate_rotated_on_disk() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = Ca::new("test CA one");
    let (files, first_der) = write_server_files(dir.path(), &ca, "first");
    let spec = tls_spec(&files);
    let node = start(dir, |c| c.http_tls = Some(spec)).await;
    let base = format!("https://127.0.0.1:{}", node.addr.port());
    let c = client_trusting(&ca.pem());

    let r = c
        .get(format!("{base}/v1/buses"))
        .bearer_auth("admin-token")
        .send()
        .await
        .expect("https request");
    assert_eq!(r.status(), 200);
    assert_eq!(peer_cert(&r), first_der);

    // Plain HTTP to the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", node.addr.port()))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    // A client that does not trust the CA refuses the server.
    let other = Ca::new("other CA");
    let r = client_trusting(&other.pem())
        .get(format!("{base}/healthz"))
        .send()
        .await;
    assert!(
        r.is_err(),
        "a certificate from an untrusted CA was accepted"
    );

    // Rotate: a new certificate from a new CA; the key first, then the
    // certificate (a moment where the pair does not match is survived).
    let ca2 = Ca::new("test CA two");
    let (cert2, key2, der2) = ca2.leaf("second", false);
    write_atomic(&files.key, &key2);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Meanwhile the old certificate is still served.
    let r = client_trusting(&ca.pem())
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("old cert still served while the pair is incomplete");
    assert_eq!(peer_cert(&r), first_der);
    write_atomic(&files.cert, &cert2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // A new client: a new handshake.
        if let Ok(r) = client_trusting(&ca2.pem())
            .get(format!("{base}/healthz"))
            .send()
            .await
        {
            assert_eq!(peer_cert(&r), der2);
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ca_requires_a_client_certificate_from_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = Ca::new("server and client CA");
    let (files, _) = write_server_files(dir.path(), &ca, "server");
    let mut spec = tls_spec(&files);
    spec.client_ca = Some(files.ca.clone());
    let node = start(dir, |c| c.http_tls = Some(spec)).await;
    let base = format!("https://127.0.0.1:{}", node.addr.port());

    let r = client_trusting(&ca.pem())
        .get(format!("{base}/healthz"))
        .send()
        .await;
    assert!(r.is_err(), "no client certificate, yet answered: {r:?}");

    let (cert, key, _) = ca.leaf("producer", true);
    let identity = reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).expect("id");
    let with_cert = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("ca")])
        .identity(identity)
        .build()
        .expect("client");
    let r = with_cert
        .get(format!("{base}/v1/buses"))
        .bearer_auth("admin-token")
        .send()
        .await
        .expect("mutual TLS");
    assert_eq!(r.status(), 200);

    let stranger = Ca::new("a stranger's CA");
    let (cert, key, _) = stranger.leaf("intruder", true);
    let identity = reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).expect("id");
    let r = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("ca")])
        .identity(identity)
        .build()
        .expect("client")
        .get(format!("{base}/healthz"))
        .send()
        .await;
    assert!(
        r.is_err(),
        "a client certificate from another CA was accepted"
    );
    node.stop().await;
}

fn scoped(name: &str, token: &str, scopes: &[&str]) -> TokenSpec {
    TokenSpec::Scoped(ScopedToken {
        name: name.into(),
        token: Some(token.into()),
        token_sha256: None,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    })
}

async fn call(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = c.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/cloudevents+json")
            .body(b.to_string());
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let v = r.json().await.unwrap_or(Value::Null);
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_tokens_and_the_audit_log() {
    let audit = audit_lines();
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir, |c| {
        c.buses = vec!["orders".into(), "billing".into()];
        c.auth.metrics_public = false;
        c.auth.tokens.extend([
            scoped("orders-producer", "p-token", &["events:put:orders"]),
            scoped("reader", "r-token", &["read"]),
            TokenSpec::Scoped(ScopedToken {
                name: "ops".into(),
                token: None,
                // printf %s ops-token | sha256sum
                token_sha256: Some(
                    "d9310c002af91822beb0b3487d8b04f85bf6bf1f8a5496bff7d35fc7c5a29def".into(),
                ),
                scopes: vec!["admin".into()],
            }),
        ]);
    })
    .await;
    let base = format!("http://127.0.0.1:{}", node.addr.port());
    let c = reqwest::Client::new();
    let event = |id: &str| json!({"specversion": "1.0", "id": id, "source": "/t", "type": "t"});
    use reqwest::Method as M;

    // The producer posts to its bus...
    let (s, v) = call(
        &c,
        M::POST,
        format!("{base}/v1/buses/orders/events"),
        Some("p-token"),
        Some(event("1")),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // ... not to another one, and touches no rule.
    let (s, v) = call(
        &c,
        M::POST,
        format!("{base}/v1/buses/billing/events"),
        Some("p-token"),
        Some(event("2")),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["missingScope"], "events:put:billing");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("orders-producer"),
        "{v}"
    );
    let rule = json!({"pattern": {"source": ["/t"]}, "targets": [{"id": "t", "type": "http", "endpoint": "http://127.0.0.1:9/x"}]});
    let (s, v) = call(
        &c,
        M::PUT,
        format!("{base}/v1/buses/orders/rules/r1"),
        Some("p-token"),
        Some(rule.clone()),
    )
    .await;
    assert_eq!((s, v["missingScope"].clone()), (403, json!("admin")), "{v}");
    let (s, _) = call(
        &c,
        M::GET,
        format!("{base}/v1/buses/orders/rules"),
        Some("p-token"),
        None,
    )
    .await;
    assert_eq!(s, 403);

    // The reader reads and cannot write.
    let (s, _) = call(
        &c,
        M::GET,
        format!("{base}/v1/buses/orders/rules"),
        Some("r-token"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = call(
        &c,
        M::POST,
        format!("{base}/v1/patterns:test"),
        Some("r-token"),
        Some(json!({"pattern": {"source": ["/t"]}, "event": event("3")})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &c,
        M::PUT,
        format!("{base}/v1/buses/new-bus"),
        Some("r-token"),
        Some(json!({})),
    )
    .await;
    assert_eq!((s, v["missingScope"].clone()), (403, json!("admin")));
    let (s, v) = call(
        &c,
        M::POST,
        format!("{base}/v1/buses/orders/events"),
        Some("r-token"),
        Some(event("4")),
    )
    .await;
    assert_eq!(
        (s, v["missingScope"].clone()),
        (403, json!("events:put:orders"))
    );

    // Unknown or missing tokens: 401.
    let (s, _) = call(&c, M::GET, format!("{base}/v1/buses"), Some("wrong"), None).await;
    assert_eq!(s, 401);
    let (s, _) = call(&c, M::GET, format!("{base}/v1/buses"), None, None).await;
    assert_eq!(s, 401);

    // The admin token given as its SHA-256 changes configuration.
    let (s, v) = call(
        &c,
        M::PUT,
        format!("{base}/v1/buses/orders/rules/r1"),
        Some("ops-token"),
        Some(rule),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = call(
        &c,
        M::DELETE,
        format!("{base}/v1/buses/orders/rules/r1"),
        Some("admin-token"),
        None,
    )
    .await;
    assert_eq!(s, 200);

    // /metrics behind `read`.
    let (s, _) = call(&c, M::GET, format!("{base}/metrics"), None, None).await;
    assert_eq!(s, 401);
    let r = c
        .get(format!("{base}/metrics"))
        .bearer_auth("r-token")
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{base}/metrics"))
        .bearer_auth("p-token")
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status(), 403);
    // Probes stay open.
    let (s, _) = call(&c, M::GET, format!("{base}/healthz"), None, None).await;
    assert_eq!(s, 200);

    // The audit log: who changed what, and the refused attempts.
    let text = String::from_utf8(audit.lock().expect("lock").clone()).expect("utf8");
    let has = |line: &str, key: &str, value: &str| {
        line.contains(&format!("{key}={value} ")) || line.contains(&format!("{key}=\"{value}\""))
    };
    let find = |token: &str, method: &str, outcome: &str| {
        text.lines().any(|l| {
            l.contains("strait::audit")
                && has(l, "token", token)
                && has(l, "method", method)
                && has(l, "path", "/v1/buses/orders/rules/r1")
                && has(l, "outcome", outcome)
                && l.contains(" time=")
        })
    };
    assert!(find("ops", "PUT", "ok"), "{text}");
    assert!(find("tokens[0]", "DELETE", "ok"), "{text}");
    assert!(find("orders-producer", "PUT", "denied"), "{text}");
    // Event ingest and reads are not configuration changes.
    assert!(!text.contains("/v1/buses/orders/events"), "{text}");
    node.stop().await;
}

fn limits() -> HttpServer {
    HttpServer {
        header_timeout_ms: 1_000,
        body_timeout_ms: 1_500,
        idle_timeout_ms: 2_000,
        max_connections: 100,
        max_connections_per_ip: 4,
        shutdown_timeout_ms: 2_000,
    }
}

/// Read until the server closes the connection (or `limit` passes):
/// how long that took, and what it sent.
async fn until_closed(s: &mut tokio::net::TcpStream, limit: Duration) -> (Duration, Vec<u8>) {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (t0.elapsed(), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "still open after {limit:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_idle_and_slow_bodies_are_cut_off() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir, |c| c.http_server = limits()).await;
    let addr = node.addr;

    // Headers byte by byte, 200 ms apart: closed after the 1 s header timeout.
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let writer = {
        let (mut r, mut w) = slow.into_split();
        let t = tokio::spawn(async move {
            for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa".iter()
            {
                if w.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let t0 = Instant::now();
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a slowloris client was not cut off within 5 s"
        );
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2_500),
            "closed after {took:?}"
        );
        t
    };
    writer.abort();

    // Meanwhile and after, normal requests work.
    let c = reqwest::Client::new();
    let r = c
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("normal request");
    assert_eq!(r.status(), 200);

    // An idle connection that sends nothing: closed after the 2 s idle timeout.
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (took, _) = until_closed(&mut idle, Duration::from_secs(6)).await;
    assert!(
        took >= Duration::from_millis(1_900) && took < Duration::from_millis(3_500),
        "idle closed after {took:?}"
    );

    // Keep-alive: idle after an answer counts from the answer.
    let mut ka = tokio::net::TcpStream::connect(addr).await.expect("connect");
    ka.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = ka.read(&mut buf).await.expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let (took, _) = until_closed(&mut ka, Duration::from_secs(6)).await;
    assert!(
        took >= Duration::from_millis(1_900),
        "keep-alive closed after {took:?}"
    );

    // A body that trickles in: 408 after the body timeout.
    slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    slow.write_all(
        b"POST /v1/buses/default/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-token\r\n\
          Content-Type: application/cloudevents+json\r\nContent-Length: 100\r\n\r\n{\"a\"",
    )
    .await
    .expect("write");
    let t0 = Instant::now();
    let mut got = Vec::new();
    loop {
        let _ = slow.write_all(b" ").await;
        match tokio::time::timeout(Duration::from_millis(300), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => {}
        }
        assert!(
            t0.elapsed() < Duration::from_secs(6),
            "no answer to a slow body"
        );
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        t0.elapsed() >= Duration::from_millis(1_400),
        "{:?}",
        t0.elapsed()
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir, |c| {
        c.http_server = HttpServer {
            idle_timeout_ms: 30_000,
            header_timeout_ms: 30_000,
            ..limits()
        }
    })
    .await;
    let addr = node.addr;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // The fifth from the same address is closed at once, unanswered.
    let mut extra = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let (took, got) = until_closed(&mut extra, Duration::from_secs(3)).await;
    assert!(
        got.is_empty() && took < Duration::from_secs(1),
        "{took:?} {got:?}"
    );
    // One closed: room again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = reqwest::Client::new()
            .get(format!("http://{addr}/healthz"))
            .send()
            .await;
        if matches!(&r, Ok(r) if r.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after a connection closed: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_idle_connections_are_closed_and_requests_go_on_meanwhile() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir, |c| {
        c.http_server = HttpServer {
            idle_timeout_ms: 1_500,
            max_connections_per_ip: 1_000,
            max_connections: 1_000,
            ..limits()
        }
    })
    .await;
    let addr = node.addr;
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    let t0 = Instant::now();
    // Requests succeed while they are open.
    let c = reqwest::Client::new();
    for i in 0..5 {
        let r = c
            .post(format!("http://{addr}/v1/buses/default/events"))
            .bearer_auth("admin-token")
            .header("content-type", "application/cloudevents+json")
            .body(
                json!({"specversion": "1.0", "id": format!("m{i}"), "source": "/t", "type": "t"})
                    .to_string(),
            )
            .send()
            .await
            .expect("request while 500 connections idle");
        assert_eq!(r.status(), 200);
    }
    // Every idle connection is closed by the server soon after 1.5 s.
    let closed = futures::future::join_all(idle.iter_mut().map(|s| async move {
        let mut b = [0u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }))
    .await;
    let n = closed.iter().filter(|c| **c).count();
    assert_eq!(n, 500, "only {n} of 500 idle connections were closed");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1_400) && took < Duration::from_secs(6),
        "{took:?}"
    );
    let r = c
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("after");
    assert_eq!(r.status(), 200);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_requests_up_to_its_deadline() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut node = start(dir, |c| {
        c.http_server = HttpServer {
            body_timeout_ms: 60_000,
            shutdown_timeout_ms: 1_000,
            ..limits()
        }
    })
    .await;
    let addr = node.addr;
    // A request whose body never finishes: in progress until cut off.
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        b"POST /v1/buses/default/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-token\r\n\
          Content-Type: application/cloudevents+json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .expect("write");
    // An idle keep-alive connection: closed at once on shutdown.
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let t0 = Instant::now();
    if let Some(stop) = node.stop.take() {
        let _ = stop.send(());
    }
    let (took, _) = until_closed(&mut idle, Duration::from_secs(3)).await;
    assert!(
        took < Duration::from_millis(500),
        "idle connection closed after {took:?}"
    );
    let served = tokio::time::timeout(Duration::from_secs(5), &mut node.served)
        .await
        .expect("serve returned within its deadline");
    assert!(matches!(served, Ok(Ok(()))), "{served:?}");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2_500),
        "serve returned after {took:?}"
    );
    // The unfinished request's connection is gone with it.
    let (took, _) = until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_answer_is_cut_off() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir, |c| {
        c.http_server = limits();
        c.limits.max_event_bytes = 12 << 20;
        c.limits.max_request_bytes = 16 << 20;
    })
    .await;
    // An 8 MB answer (the event, transformed as it is) to a client with a
    // small receive buffer that reads nothing.
    let big = "x".repeat(8 << 20);
    let body = json!({
        "transform": {"form": "ORIGINAL"},
        "event": {"specversion": "1.0", "id": "1", "source": "/t", "type": "t", "data": big}
    })
    .to_string();
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut s = sock.connect(node.addr).await.expect("connect");
    let head = format!(
        "POST /v1/transforms:test HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-token\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("head");
    s.write_all(body.as_bytes()).await.expect("body");
    // Idle timeout 2 s: give it that and a margin, then read what is left.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let mut got = 0usize;
    let mut head = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if head.len() < 64 {
                        head.extend_from_slice(&buf[..n.min(64)]);
                    }
                    got += n;
                }
            }
        }
    })
    .await;
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(ended.is_ok(), "the connection stayed open");
    assert!(
        got < 8 << 20,
        "the whole answer ({got} bytes) was kept for a client that did not read"
    );
    // Others are served meanwhile and after.
    let r = reqwest::get(format!("http://{}/healthz", node.addr))
        .await
        .expect("after");
    assert_eq!(r.status(), 200);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = start(dir, |c| {
        c.http_server = limits();
        c.limits.max_event_bytes = 16 << 20;
        c.limits.max_request_bytes = 20 << 20;
    })
    .await;
    let big = "y".repeat(12 << 20);
    let body = json!({
        "transform": {"form": "ORIGINAL"},
        "event": {"specversion": "1.0", "id": "1", "source": "/t", "type": "t", "data": big}
    })
    .to_string();
    let mut s = tokio::net::TcpStream::connect(node.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/transforms:test HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-token\r\n\
         Content-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("head");
    s.write_all(body.as_bytes()).await.expect("body");
    // A 12 MB answer, more than the socket buffers hold: a read every
    // 100 ms for 3.5 s (more than the 2 s idle timeout, the server's
    // writes waiting most of the time), then the rest at once.
    let t0 = Instant::now();
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("stalled after {got} bytes"),
        }
        if t0.elapsed() < Duration::from_millis(3_500) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        got > 12 << 20,
        "cut off after {got} bytes and {:?}",
        t0.elapsed()
    );
    assert!(t0.elapsed() > Duration::from_secs(3), "{:?}", t0.elapsed());
    node.stop().await;
}
