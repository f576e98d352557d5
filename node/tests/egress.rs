//! Secrets by reference and egress control on in-process nodes delivering
//! to real HTTP servers (axum on loopback ports):
//!
//! * connections (API key, basic, OAuth client credentials against a small
//!   token endpoint): the secrets reach the receiver, never an API answer,
//!   a log line or a dead letter (a canary is grepped for); the OAuth
//!   token is cached, and fetched again once on a 401; inline header
//!   values are shown as `***` and kept when a GET is put back; user info
//!   in endpoints and unknown connections are refused naming the field;
//! * egress: a target (or dead letter) at 169.254.169.254 is refused with
//!   400 naming the field; a host name resolving to a denied address is
//!   refused at delivery (the dead letter says egress denied); a redirect
//!   to another host is not followed unless the target opts in, and then
//!   only within the policy;
//! * credentials bound to endpoints and regions are refused elsewhere, and
//!   a target without `credential` does not fall back to the instance role.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use base64::Engine as _;
use serde_json::{Value, json};
use strait_node::App;
use strait_node::config::{NodeConfig, TokenSpec};
use tower::ServiceExt as _;

const TOKEN: &str = "admin-token";

/// Every log line of this test binary (all targets, debug and up).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("debug")
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

async fn start(dir: &std::path::Path, tweak: impl FnOnce(&mut NodeConfig)) -> Arc<App> {
    let _ = logs();
    let mut cfg = NodeConfig {
        data_dir: dir.join("data"),
        ..NodeConfig::default()
    };
    cfg.auth.tokens = vec![TokenSpec::Plain(TOKEN.into())];
    cfg.dispatch.checkpoint_interval_ms = 50;
    tweak(&mut cfg);
    cfg.validate().expect("valid config");
    strait_node::start(cfg).await.expect("node starts")
}

async fn call(app: &Arc<App>, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"));
    let body = match body {
        Some(b) => {
            let ct = if method == "POST" && path.ends_with("/events") {
                "application/cloudevents+json"
            } else {
                "application/json"
            };
            req = req.header("content-type", ct);
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let resp = strait_node::router(app.clone())
        .oneshot(req.body(body).expect("request"))
        .await
        .expect("answer");
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .expect("body");
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

async fn put(app: &Arc<App>, path: &str, body: Value) -> Value {
    let (s, v) = call(app, "PUT", path, Some(body)).await;
    assert_eq!(s, 200, "PUT {path}: {v}");
    v
}

async fn post_event(app: &Arc<App>, bus: &str, id: &str) {
    let ev = json!({"specversion": "1.0", "id": id, "source": "/egress", "type": "t",
        "data": {"id": id}});
    let (s, v) = call(app, "POST", &format!("/v1/buses/{bus}/events"), Some(ev)).await;
    assert!((200..300).contains(&s), "POST {id}: {s} {v}");
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// What the servers of a test share: the requests they got, the token
/// endpoint's calls and the tokens it issued.
#[derive(Default)]
struct Peer {
    got: Mutex<Vec<(String, http::HeaderMap)>>,
    token_calls: Mutex<Vec<(http::HeaderMap, String)>>,
    issued: AtomicUsize,
    /// The bearer token `/oauth` accepts (the last one issued).
    valid: Mutex<String>,
    /// Where `/redirect` sends to.
    redirect_to: Mutex<String>,
}

impl Peer {
    fn got(&self, path: &str) -> Vec<http::HeaderMap> {
        self.got
            .lock()
            .expect("lock")
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, h)| h.clone())
            .collect()
    }
}

/// A receiver on `bind` (127.0.0.1:0): `POST /token` is an OAuth token
/// endpoint (client credentials, HTTP basic client authentication);
/// `/oauth` needs the last token issued (else 401); `/fail` answers 400;
/// `/redirect` answers 307 to `redirect_to`; any other path 200.
async fn receiver(peer: Arc<Peer>) -> String {
    let app = axum::Router::new().route(
        "/{path}",
        axum::routing::post(
            move |axum::extract::Path(path): axum::extract::Path<String>,
                  headers: http::HeaderMap,
                  body: axum::body::Bytes| {
                let peer = peer.clone();
                async move {
                    use axum::response::IntoResponse as _;
                    if path == "token" {
                        peer.token_calls
                            .lock()
                            .expect("lock")
                            .push((headers, String::from_utf8_lossy(&body).into_owned()));
                        let n = peer.issued.fetch_add(1, Ordering::SeqCst) + 1;
                        let token = format!("tok-{n}");
                        *peer.valid.lock().expect("lock") = token.clone();
                        return axum::Json(json!({"access_token": token,
                            "token_type": "Bearer", "expires_in": 3600}))
                        .into_response();
                    }
                    if path == "oauth" {
                        let want = format!("Bearer {}", peer.valid.lock().expect("lock"));
                        if headers.get("authorization").and_then(|v| v.to_str().ok())
                            != Some(want.as_str())
                        {
                            return http::StatusCode::UNAUTHORIZED.into_response();
                        }
                    }
                    if path == "redirect" {
                        let to = peer.redirect_to.lock().expect("lock").clone();
                        return (
                            http::StatusCode::TEMPORARY_REDIRECT,
                            [(http::header::LOCATION, to)],
                        )
                            .into_response();
                    }
                    peer.got.lock().expect("lock").push((path.clone(), headers));
                    if path == "fail" {
                        return (http::StatusCode::BAD_REQUEST, "no").into_response();
                    }
                    http::StatusCode::OK.into_response()
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn header(h: &http::HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn connections(url: &str) -> Value {
    json!({
        "apikey": {"api_key": {"header": "x-api-key", "value": "CANARY-apikey-7f3a"},
            "endpoints": [url]},
        "basic": {"basic": {"username": "svc", "password": "CANARY-basic-7f3a"}},
        "oauth": {"oauth_client_credentials": {"token_url": format!("{url}/token"),
            "client_id": "strait", "client_secret": "CANARY-oauth-7f3a",
            "scope": "events.write"}},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_secrets_are_sent_and_never_shown() {
    let peer = Arc::new(Peer::default());
    let url = receiver(peer.clone()).await;
    let dir = tempfile::tempdir().expect("tmp");
    let app = start(dir.path(), |c| {
        c.connections = serde_json::from_value(connections(&url)).expect("connections");
    })
    .await;
    put(&app, "/v1/buses/b", json!({})).await;
    let rule = json!({"pattern": {"source": ["/egress"]}, "targets": [
        {"id": "key", "type": "http", "endpoint": format!("{url}/key"), "connection": "apikey"},
        {"id": "basic", "type": "http", "endpoint": format!("{url}/basic"), "connection": "basic"},
        {"id": "oauth", "type": "http", "endpoint": format!("{url}/oauth"), "connection": "oauth"},
        {"id": "inline", "type": "http", "endpoint": format!("{url}/inline"),
         "headers": {"x-inline": "CANARY-inline-7f3a"}},
        {"id": "fail", "type": "http", "endpoint": format!("{url}/fail"), "connection": "apikey",
         "deadLetter": {"type": "http", "endpoint": format!("{url}/dlq"), "connection": "oauth"}}]});
    let shown = put(&app, "/v1/buses/b/rules/r", rule.clone()).await;
    assert_eq!(shown["targets"][3]["headers"]["x-inline"], "***", "{shown}");
    assert_eq!(shown["targets"][0]["connection"], "apikey", "{shown}");
    post_event(&app, "b", "e1").await;
    wait_until("deliveries with each connection", async || {
        ["key", "basic", "oauth", "inline", "fail", "dlq"]
            .iter()
            .all(|p| !peer.got(p).is_empty())
    })
    .await;
    assert_eq!(
        header(&peer.got("key")[0], "x-api-key"),
        "CANARY-apikey-7f3a"
    );
    let basic = base64::engine::general_purpose::STANDARD.encode("svc:CANARY-basic-7f3a");
    assert_eq!(
        header(&peer.got("basic")[0], "authorization"),
        format!("Basic {basic}")
    );
    assert_eq!(
        header(&peer.got("oauth")[0], "authorization"),
        "Bearer tok-1"
    );
    assert_eq!(
        header(&peer.got("inline")[0], "x-inline"),
        "CANARY-inline-7f3a"
    );
    assert_eq!(
        header(&peer.got("fail")[0], "x-api-key"),
        "CANARY-apikey-7f3a"
    );
    // The HTTP dead letter went with its own connection (the cached token).
    assert_eq!(header(&peer.got("dlq")[0], "authorization"), "Bearer tok-1");
    {
        let calls = peer.token_calls.lock().expect("lock");
        assert_eq!(calls.len(), 1, "the token is cached");
        let client = base64::engine::general_purpose::STANDARD.encode("strait:CANARY-oauth-7f3a");
        assert_eq!(
            header(&calls[0].0, "authorization"),
            format!("Basic {client}")
        );
        assert_eq!(
            calls[0].1,
            "grant_type=client_credentials&scope=events.write"
        );
    }

    // A token revoked by the endpoint: the 401 fetches a new one, once.
    *peer.valid.lock().expect("lock") = "revoked".into();
    post_event(&app, "b", "e2").await;
    wait_until("the second event at the OAuth target", async || {
        peer.got("oauth").len() == 2
    })
    .await;
    assert_eq!(
        header(&peer.got("oauth")[1], "authorization"),
        "Bearer tok-2"
    );
    assert_eq!(peer.issued.load(Ordering::SeqCst), 2);

    // A GET put back keeps the inline value; nothing shows a secret.
    let (s, got) = call(&app, "GET", "/v1/buses/b/rules/r", None).await;
    assert_eq!(s, 200);
    assert_eq!(got["targets"][3]["headers"]["x-inline"], "***", "{got}");
    put(&app, "/v1/buses/b/rules/r", got).await;
    post_event(&app, "b", "e3").await;
    wait_until("the third event at the inline target", async || {
        peer.got("inline").len() >= 3
    })
    .await;
    for h in peer.got("inline") {
        assert_eq!(header(&h, "x-inline"), "CANARY-inline-7f3a");
    }
    let mut answers = String::new();
    for path in [
        "/v1/buses/b/rules/r",
        "/v1/buses/b/rules",
        "/v1/buses/b",
        "/v1/buses/b/events/e1",
        "/v1/buses/b/events",
        "/v1/buses/b/rules/r/dead-letters",
        "/v1/buses/b/rules/r/targets/fail/dead-letters",
        "/v1/cluster",
        "/metrics",
    ] {
        let (s, v) = call(&app, "GET", path, None).await;
        assert!(s < 500, "GET {path}: {s} {v}");
        answers.push_str(&v.to_string());
    }
    let (_, dl) = call(
        &app,
        "GET",
        "/v1/buses/b/rules/r/targets/fail/dead-letters",
        None,
    )
    .await;
    assert!(
        dl["deadLetters"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("HTTP 400")),
        "{dl}"
    );
    assert!(answers.contains("e1"), "the answers were read: {answers}");
    assert!(
        !answers.contains("CANARY"),
        "a secret in an answer: {answers}"
    );
    let logs = String::from_utf8_lossy(&logs().lock().expect("lock")).into_owned();
    assert!(!logs.is_empty());
    assert!(
        !logs.contains("CANARY"),
        "a secret in the logs: {}",
        logs.lines()
            .find(|l| l.contains("CANARY"))
            .unwrap_or_default()
    );

    // User info in an endpoint and unknown connections are refused.
    let mut bad = rule.clone();
    bad["targets"][0]["endpoint"] = json!(format!(
        "http://svc:CANARY-url-7f3a@{}/key",
        url.trim_start_matches("http://")
    ));
    let (s, v) = call(&app, "PUT", "/v1/buses/b/rules/r2", Some(bad)).await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("targets[0].endpoint"), "{v}");
    assert!(!v.to_string().contains("CANARY"), "{v}");
    let mut bad = rule.clone();
    bad["targets"][1]["connection"] = json!("nope");
    let (s, v) = call(&app, "PUT", "/v1/buses/b/rules/r2", Some(bad)).await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("targets[1].connection"), "{v}");
    // A connection bound to endpoints is refused elsewhere; an API key
    // does not follow redirects.
    let mut bad = rule.clone();
    bad["targets"][0]["endpoint"] = json!(url.replace("127.0.0.1", "localhost") + "/key");
    let (s, v) = call(&app, "PUT", "/v1/buses/b/rules/r2", Some(bad)).await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("targets[0].endpoint"), "{v}");
    let mut bad = rule.clone();
    bad["targets"][0]["followRedirects"] = json!(true);
    let (s, v) = call(&app, "PUT", "/v1/buses/b/rules/r2", Some(bad)).await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("targets[0].followRedirects"), "{v}");
    let mut bad = rule;
    bad["targets"][4]["deadLetter"]["connection"] = json!("nope");
    let (s, v) = call(&app, "PUT", "/v1/buses/b/rules/r2", Some(bad)).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v.to_string().contains("targets[4].deadLetter.connection"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_addresses_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = start(dir.path(), |_| {}).await;
    put(&app, "/v1/buses/b", json!({})).await;
    for (rule, field) in [
        (
            json!({"pattern": {}, "targets": [{"id": "t", "type": "http",
                "endpoint": "http://169.254.169.254/latest/meta-data/"}]}),
            "targets[0].endpoint",
        ),
        (
            json!({"pattern": {}, "targets": [{"id": "t", "type": "http",
                "endpoint": "http://[fd00:ec2::254]/latest/"}]}),
            "targets[0].endpoint",
        ),
        (
            json!({"pattern": {}, "targets": [{"id": "t", "type": "http",
                "endpoint": "http://127.0.0.1:9/x",
                "deadLetter": {"type": "http", "endpoint": "http://169.254.169.254/"}}]}),
            "targets[0].deadLetter.endpoint",
        ),
        (
            json!({"pattern": {}, "targets": [{"id": "t", "type": "http",
                "endpoint": "http://127.0.0.1:9/x"}],
                "deadLetter": {"type": "http", "endpoint": "http://169.254.170.2/creds"}}),
            "deadLetter.endpoint",
        ),
        (
            json!({"pattern": {}, "targets": [{"id": "t", "type": "aws_sqs",
                "queueUrl": "http://169.254.169.254/1/q", "endpoint": "http://169.254.169.254/",
                "credential": "nope"}]}),
            "targets[0].credential",
        ),
    ] {
        let (s, v) = call(&app, "PUT", "/v1/buses/b/rules/r", Some(rule.clone())).await;
        assert_eq!(s, 400, "{rule}: {v}");
        assert!(v.to_string().contains(field), "{field}: {v}");
        if field.ends_with("endpoint") {
            assert!(v.to_string().contains("metadata"), "{v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_a_denied_address_is_refused_at_delivery() {
    let peer = Arc::new(Peer::default());
    let url = receiver(peer.clone()).await;
    let port = url.rsplit(':').next().expect("port").to_string();
    let dir = tempfile::tempdir().expect("tmp");
    let app = start(dir.path(), |c| {
        c.egress.deny = vec!["127.0.0.0/8".into(), "::1/128".into()];
        c.aws.credentials = serde_json::from_value(json!({
            "k": {"access_key_id": "AKID", "secret_access_key": "s"}}))
        .expect("aws credentials");
    })
    .await;
    put(&app, "/v1/buses/b", json!({})).await;
    put(&app, "/v1/buses/dlq", json!({})).await;
    // A literal address is refused when the rule is put.
    let (s, v) = call(
        &app,
        "PUT",
        "/v1/buses/b/rules/r",
        Some(
            json!({"pattern": {}, "targets": [{"id": "t", "type": "http",
            "endpoint": format!("{url}/hook")}]}),
        ),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("targets[0].endpoint"), "{v}");
    assert!(v.to_string().contains("egress denied"), "{v}");
    // A name is resolved when delivering: localhost is loopback, denied.
    put(
        &app,
        "/v1/buses/b/rules/r",
        json!({"pattern": {}, "targets": [{"id": "t", "type": "http",
            "endpoint": format!("http://localhost:{port}/hook"),
            "deadLetter": {"type": "bus", "bus": "dlq"}}]}),
    )
    .await;
    post_event(&app, "b", "e1").await;
    let mut listed = Value::Null;
    wait_until("the dead letter", async || {
        let (_, v) = call(
            &app,
            "GET",
            "/v1/buses/b/rules/r/targets/t/dead-letters",
            None,
        )
        .await;
        listed = v;
        listed["deadLetters"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .await;
    let reason = listed["deadLetters"][0]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("egress denied"), "{listed}");
    assert!(reason.contains("localhost"), "{listed}");
    assert_eq!(
        listed["deadLetters"][0]["attempts"], 1,
        "not retried: {listed}"
    );
    assert!(peer.got("hook").is_empty(), "the receiver was reached");

    // The AWS SDK's client resolves through the policy too.
    put(
        &app,
        "/v1/buses/b/rules/sqs",
        json!({"pattern": {}, "targets": [{"id": "q", "type": "aws_sqs",
            "queueUrl": format!("http://localhost:{port}/000000000000/q"),
            "endpoint": format!("http://localhost:{port}"), "credential": "k",
            "region": "us-east-1", "maxBatchDelayMs": 0,
            "retry": {"maxAttempts": 3, "initialBackoffMs": 10, "maxBackoffMs": 20},
            "deadLetter": {"type": "bus", "bus": "dlq"}}]}),
    )
    .await;
    post_event(&app, "b", "e2").await;
    wait_until("the SQS target's dead letter", async || {
        let (_, v) = call(
            &app,
            "GET",
            "/v1/buses/b/rules/sqs/targets/q/dead-letters",
            None,
        )
        .await;
        listed = v;
        listed["deadLetters"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .await;
    let reason = listed["deadLetters"][0]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("egress denied"), "{listed}");
    assert_eq!(peer.got.lock().expect("lock").len(), 0, "SQS was reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed_only_by_opt_in_and_within_the_policy() {
    let peer = Arc::new(Peer::default());
    let url = receiver(peer.clone()).await;
    let port = url.rsplit(':').next().expect("port").to_string();
    // Another host name for the same server.
    *peer.redirect_to.lock().expect("lock") = format!("http://localhost:{port}/stolen");
    let dir = tempfile::tempdir().expect("tmp");
    let app = start(dir.path(), |_| {}).await;
    put(&app, "/v1/buses/b", json!({})).await;
    put(&app, "/v1/buses/dlq", json!({})).await;
    put(
        &app,
        "/v1/buses/b/rules/r",
        json!({"pattern": {"type": ["t"]}, "targets": [
            {"id": "plain", "type": "http", "endpoint": format!("{url}/redirect"),
             "deadLetter": {"type": "bus", "bus": "dlq"}},
            {"id": "follows", "type": "http", "endpoint": format!("{url}/redirect"),
             "followRedirects": true}]}),
    )
    .await;
    post_event(&app, "b", "e1").await;
    let mut listed = Value::Null;
    wait_until("the dead letter of the plain target", async || {
        let (_, v) = call(
            &app,
            "GET",
            "/v1/buses/b/rules/r/targets/plain/dead-letters",
            None,
        )
        .await;
        listed = v;
        listed["deadLetters"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .await;
    let reason = listed["deadLetters"][0]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("HTTP 307") && reason.contains("not followed"),
        "{listed}"
    );
    wait_until("the opted-in target's delivery", async || {
        !peer.got("stolen").is_empty()
    })
    .await;
    assert_eq!(
        peer.got("stolen").len(),
        1,
        "only the opted-in target followed"
    );

    // Opted in, but the redirect leads to a metadata address.
    *peer.redirect_to.lock().expect("lock") = "http://169.254.169.254/latest/meta-data/".into();
    put(
        &app,
        "/v1/buses/b/rules/m",
        json!({"pattern": {"type": ["m"]}, "targets": [
            {"id": "follows", "type": "http", "endpoint": format!("{url}/redirect"),
             "followRedirects": true, "deadLetter": {"type": "bus", "bus": "dlq"}}]}),
    )
    .await;
    let ev = json!({"specversion": "1.0", "id": "m1", "source": "/egress", "type": "m"});
    let (s, v) = call(&app, "POST", "/v1/buses/b/events", Some(ev)).await;
    assert!((200..300).contains(&s), "{v}");
    wait_until("the dead letter of the redirect to metadata", async || {
        let (_, v) = call(
            &app,
            "GET",
            "/v1/buses/b/rules/m/targets/follows/dead-letters",
            None,
        )
        .await;
        listed = v;
        listed["deadLetters"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .await;
    let reason = listed["deadLetters"][0]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("egress denied"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_bound_to_endpoints_are_refused_elsewhere() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = start(dir.path(), |c| {
        c.aws.credentials = serde_json::from_value(json!({
            "bound": {"access_key_id": "AKIDBOUND", "secret_access_key": "CANARY-aws-7f3a",
                "endpoints": ["http://127.0.0.1:4566"], "regions": ["us-east-1"]}}))
        .expect("aws credentials");
        c.alibaba.credentials = serde_json::from_value(json!({
            "ali": {"access_key_id": "LTAI", "access_key_secret": "CANARY-ali-7f3a",
                "endpoints": ["eventbridge.cn-hangzhou.aliyuncs.com"]}}))
        .expect("alibaba credentials");
    })
    .await;
    put(&app, "/v1/buses/b", json!({})).await;
    let sqs = |extra: Value| {
        let mut t = json!({"id": "q", "type": "aws_sqs",
            "queueUrl": "http://127.0.0.1:4566/000000000000/q", "credential": "bound",
            "region": "us-east-1", "endpoint": "http://127.0.0.1:4566"});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            if v.is_null() {
                t.as_object_mut().map(|m| m.remove(&k));
            } else {
                t[k] = v;
            }
        }
        json!({"pattern": {}, "targets": [t]})
    };
    for (rule, field) in [
        (
            sqs(json!({"endpoint": "http://attacker.example.com:4566"})),
            "targets[0].endpoint",
        ),
        (
            sqs(json!({"endpoint": "http://127.0.0.1:4567"})),
            "targets[0].endpoint",
        ),
        (sqs(json!({"region": "eu-west-1"})), "targets[0].region"),
        (sqs(json!({"region": null})), "targets[0].region"),
        // Without a credential: no silent fall back to the instance role.
        (sqs(json!({"credential": null})), "targets[0].credential"),
        (
            json!({"pattern": {}, "targets": [{"id": "a", "type": "alibaba_eventbridge",
                "eventBus": "x", "credential": "ali", "regionId": "cn-hangzhou",
                "endpoint": "https://attacker.example.com"}]}),
            "targets[0].endpoint",
        ),
    ] {
        let (s, v) = call(&app, "PUT", "/v1/buses/b/rules/r", Some(rule.clone())).await;
        assert_eq!(s, 400, "{rule}: {v}");
        assert!(v.to_string().contains(field), "{field}: {v}");
        assert!(!v.to_string().contains("CANARY"), "{v}");
    }
    // Where it is bound to, it is accepted.
    put(&app, "/v1/buses/b/rules/r", sqs(json!({}))).await;
    put(
        &app,
        "/v1/buses/b/rules/a",
        json!({"pattern": {}, "targets": [{"id": "a", "type": "alibaba_eventbridge",
            "eventBus": "x", "credential": "ali", "regionId": "cn-hangzhou",
            "endpoint": "https://eventbridge.cn-hangzhou.aliyuncs.com"}]}),
    )
    .await;
    let (_, v) = call(&app, "GET", "/v1/buses/b/rules", None).await;
    assert!(!v.to_string().contains("CANARY"), "{v}");
}
