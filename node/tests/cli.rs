//! The `strait` command line, run as a user would: clear errors for bad
//! flags and files, and the client commands against a real node.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_strait");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run strait")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Node {
    child: Child,
    url: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node(dir: &Path) -> Node {
    start_node_with(dir, &["--dev"])
}

fn start_node_with(dir: &Path, extra: &[&str]) -> Node {
    let port = free_port();
    let child = Command::new(BIN)
        .arg("serve")
        .args(extra)
        .args(["--http", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    let url = format!("http://127.0.0.1:{port}");
    let mut node = Node { child, url };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Write;
            let _ = s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                return node;
            }
        }
        if Instant::now() > deadline {
            let _ = node.child.kill();
            let mut err = String::new();
            if let Some(mut e) = node.child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("node never became ready: {err}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bad_flags_and_files_get_clear_errors() {
    let o = run(&["serve", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--no-such-flag"), "{}", stderr(&o));

    let o = run(&["serve"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--dev"), "{}", stderr(&o));

    let o = run(&["serve", "--config", "/nonexistent/strait.yaml"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent/strait.yaml"),
        "{}",
        stderr(&o)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("node.yaml");
    std::fs::write(&cfg, "http: not-an-address\ndev: true\n").expect("write");
    let o = run(&["serve", "--config", cfg.to_str().expect("utf8")]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("http"), "{}", stderr(&o));

    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        "rules:\n  - bus: default\n    name: r\n    pattern: {data: {n: [{numeric: [\">\", \"five\"]}]}}\n    targets: [{id: t, type: http, endpoint: \"http://127.0.0.1:1/\"}]\n",
    )
    .expect("write");
    let o = run(&[
        "apply",
        "-f",
        rules.to_str().expect("utf8"),
        "--server",
        "http://127.0.0.1:1",
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("rules.yaml") && e.contains("pattern.data.n"),
        "{e}"
    );
}

#[test]
fn test_pattern_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("p.json");
    let e = dir.path().join("e.yaml");
    std::fs::write(
        &p,
        r#"{"detail-type": ["order.created"], "detail": {"amount": [{"numeric": [">", 100]}]}}"#,
    )
    .expect("write");
    std::fs::write(
        &e,
        "specversion: '1.0'\nid: '1'\nsource: /s\ntype: order.created\ndata: {amount: 250}\n",
    )
    .expect("write");
    let o = run(&[
        "test-pattern",
        "--pattern",
        p.to_str().expect("utf8"),
        "--event",
        e.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("\"matched\":true"));
    std::fs::write(
        &e,
        "specversion: '1.0'\nid: '1'\nsource: /s\ntype: order.created\ndata: {amount: 5}\n",
    )
    .expect("write");
    let o = run(&[
        "test-pattern",
        "--pattern",
        p.to_str().expect("utf8"),
        "--event",
        e.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    std::fs::write(&p, r#"{"source": "not-a-list"}"#).expect("write");
    let o = run(&[
        "test-pattern",
        "--pattern",
        p.to_str().expect("utf8"),
        "--event",
        e.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("p.json"), "{}", stderr(&o));
}

#[test]
fn apply_get_put_against_a_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(&dir.path().join("data"));
    let file = dir.path().join("apply.yaml");
    std::fs::write(
        &file,
        "buses:\n  - name: orders\n    description: order events\nrules:\n  - bus: orders\n    name: big\n    pattern: {type: [order.created]}\n    targets: [{id: hook, type: http, endpoint: \"http://127.0.0.1:9/\"}]\n",
    )
    .expect("write");
    for _ in 0..2 {
        // Idempotent: the second apply changes nothing and still succeeds.
        let o = run(&[
            "apply",
            "-f",
            file.to_str().expect("utf8"),
            "--server",
            &node.url,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains("rule orders/big: applied"));
    }
    let o = run(&["get", "rules", "--server", &node.url]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("big") && stdout(&o).contains("http://127.0.0.1:9/"),
        "{}",
        stdout(&o)
    );
    let o = run(&["get", "buses", "--server", &node.url]);
    assert!(stdout(&o).contains("order events"));
    let o = run(&["get", "rules", "--bus", "nope", "--server", &node.url]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nope"));

    let put = |id: &str| {
        run(&[
            "put",
            "--server",
            &node.url,
            "--bus",
            "orders",
            "--type",
            "order.created",
            "--id",
            id,
            "--data",
            r#"{"amount": 1}"#,
        ])
    };
    let o = put("cli-1");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("accepted"));
    assert!(put("cli-1").status.success());
    assert!(stdout(&put("cli-1")).contains("duplicate"));
    let o = run(&[
        "put", "--server", &node.url, "--bus", "missing", "--type", "t",
    ]);
    assert!(!o.status.success());
    assert!(stdout(&o).contains("BusNotFound"), "{}", stdout(&o));
}

/// Sources through `apply` and `get sources`. The node has no AWS
/// credentials and the definition names one, so the source is stored and
/// listed but never polled: no SQS peer is needed.
#[test]
fn apply_and_get_sources_against_a_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(&dir.path().join("data"));
    let apply = |yaml: &str| {
        let file = dir.path().join("sources.yaml");
        std::fs::write(&file, yaml).expect("write");
        run(&[
            "apply",
            "-f",
            file.to_str().expect("utf8"),
            "--server",
            &node.url,
        ])
    };
    let get = |extra: &[&str]| {
        let mut args = vec!["get", "sources", "--server", node.url.as_str()];
        args.extend_from_slice(extra);
        run(&args)
    };
    let source = "  - name: sqs1\n    type: aws_sqs\n    bus: orders\n    queueUrl: \"http://127.0.0.1:9/123456789012/q1\"\n    credential: not-on-this-node\n    region: us-east-1\n";

    // Checked before anything is sent: the bus of the file is not created.
    let o = apply(&format!(
        "buses:\n  - name: orders\nsources:\n{source}    waitTimeSecs: 21\n"
    ));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("sources.yaml") && e.contains("sources[0] (sqs1): waitTimeSecs"),
        "{e}"
    );
    assert!(!stdout(&get(&[])).contains("sqs1"));
    let o = run(&["get", "buses", "--server", &node.url]);
    assert!(!stdout(&o).contains("orders"), "{}", stdout(&o));

    let file = format!("buses:\n  - name: orders\nsources:\n{source}");
    for _ in 0..2 {
        // Idempotent, like buses and rules.
        let o = apply(&file);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stdout(&o).contains("source sqs1: applied"),
            "{}",
            stdout(&o)
        );
    }
    let o = get(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed = stdout(&o);
    let row = listed
        .lines()
        .find(|l| l.starts_with("sqs1 "))
        .unwrap_or_else(|| panic!("sqs1 not listed: {listed}"));
    for word in [
        "aws_sqs",
        "local",
        "orders",
        "http://127.0.0.1:9/123456789012/q1",
    ] {
        assert!(row.contains(word), "{word} missing: {listed}");
    }
    assert!(stdout(&get(&["--bus", "orders"])).contains("sqs1"));
    assert!(!stdout(&get(&["--bus", "default"])).contains("sqs1"));
    let o = get(&["--bus", "nope"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));

    // Refused by the node: the error names the source and the field.
    let o = apply(&format!(
        "sources:\n{}",
        source
            .replace("sqs1", "sqs2")
            .replace("bus: orders", "bus: missing")
    ));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("source sqs2: HTTP 404: bus:"), "{e}");
}

#[test]
fn outside_dev_mode_the_api_needs_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("node.yaml");
    std::fs::write(&cfg, "auth:\n  tokens: [s3cret]\n").expect("write");
    let node = start_node_with(
        &dir.path().join("data"),
        &["--config", cfg.to_str().expect("utf8")],
    );
    let o = run(&["get", "buses", "--server", &node.url]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("401"), "{}", stderr(&o));
    let o = run(&["get", "buses", "--server", &node.url, "--token", "wrong"]);
    assert!(stderr(&o).contains("not valid"), "{}", stderr(&o));
    let o = run(&["get", "buses", "--server", &node.url, "--token", "s3cret"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["put", "--server", &node.url, "--type", "t"]);
    assert!(!o.status.success());
    assert!(stdout(&o).contains("Unauthorized"), "{}", stdout(&o));
    let o = run(&[
        "put", "--server", &node.url, "--type", "t", "--token", "s3cret",
    ]);
    assert!(o.status.success(), "{}", stdout(&o));
}

#[test]
fn cert_commands_create_a_ca_and_node_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca");
    let ca_s = ca.to_str().expect("utf8");
    let o = run(&["cert", "init-ca", "--dir", ca_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("certificate authority"));
    let o = run(&["cert", "init-ca", "--dir", ca_s]);
    assert!(
        !o.status.success(),
        "a second CA must not overwrite the first"
    );
    assert!(stderr(&o).contains("ca.pem"), "{}", stderr(&o));
    let out = dir.path().join("n3");
    let o = run(&[
        "cert",
        "issue",
        "--ca",
        ca_s,
        "--node-id",
        "3",
        "--site",
        "aws-us-east-1",
        "--dns",
        "n3.example",
        "--ip",
        "127.0.0.1",
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cert = out.join("node-3.pem");
    assert!(cert.exists() && out.join("node-3.key").exists());
    let o = run(&["cert", "show", cert.to_str().expect("utf8")]);
    let text = stdout(&o);
    assert!(text.contains("node 3 of site \"aws-us-east-1\""), "{text}");
    assert!(
        text.contains("n3.example") && text.contains("127.0.0.1"),
        "{text}"
    );
    let o = run(&[
        "cert",
        "issue",
        "--ca",
        ca_s,
        "--node-id",
        "1",
        "--site",
        "bad site",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bad site"), "{}", stderr(&o));
}

#[test]
fn cluster_config_errors_name_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("cluster: {listen: nowhere}\n", "cluster.listen"),
        ("cluster: {listen: \"127.0.0.1:0\"}\n", "cluster.certs_dir"),
        (
            "cluster: {initial_members: [{id: 2, raft_addr: \"127.0.0.1:1\"}]}\n",
            "cluster.listen",
        ),
        (
            "cluster: {listen: \"127.0.0.1:0\", certs_dir: /tmp, initial_members: [{id: 2, raft_addr: \"127.0.0.1:1\"}]}\n",
            "must include this node",
        ),
        (
            "cluster: {heartbeat_ms: 200, election_timeout_ms: 300}\n",
            "cluster.election_timeout_ms",
        ),
        ("cluster: {peers: []}\n", "peers"),
        (
            "cluster: {listen: \"127.0.0.1:0\", certs_dir: /nonexistent-certs}\n",
            "/nonexistent-certs",
        ),
        (
            "control: {members: [{site: local, id: 1, raft_addr: \"127.0.0.1:1\", voter: true}]}\n",
            "control.members: the control group needs the QUIC transport",
        ),
        (
            "cluster: {listen: \"127.0.0.1:0\", certs_dir: /tmp}\ncontrol: {members: [{site: local, id: 1, raft_addr: \"127.0.0.1:1\"}]}\n",
            "control.members: mark at least one member `voter: true`",
        ),
        (
            "cluster: {listen: \"127.0.0.1:0\", certs_dir: /tmp}\ncontrol: {members: [{site: other, id: 1, raft_addr: \"127.0.0.1:1\", voter: true}]}\n",
            "control.members: this node (node 1 of site \"local\") is not listed",
        ),
        (
            "cluster: {listen: \"127.0.0.1:0\", certs_dir: /tmp}\ncontrol: {members: [{site: local, id: 1, raft_addr: \"127.0.0.1:1\", voter: true}, {site: local, id: 1, raft_addr: \"127.0.0.1:2\"}]}\n",
            "control.members[1]: node 1 of site \"local\" is listed twice",
        ),
        (
            "cluster: {listen: \"127.0.0.1:0\", certs_dir: /tmp}\ncontrol: {members: [{site: \"Bad Site\", id: 1, raft_addr: \"127.0.0.1:1\", voter: true}]}\n",
            "control.members[0].site",
        ),
        (
            "cluster: {listen: \"127.0.0.1:0\", certs_dir: /tmp}\ncontrol: {members: [{site: local, id: 5000000000, raft_addr: \"127.0.0.1:1\", voter: true}]}\n",
            "control.members[0].id",
        ),
    ];
    for (i, (yaml, needle)) in cases.iter().enumerate() {
        let cfg = dir.path().join(format!("c{i}.yaml"));
        std::fs::write(&cfg, format!("dev: true\n{yaml}")).expect("write");
        let o = run(&[
            "serve",
            "--config",
            cfg.to_str().expect("utf8"),
            "--data-dir",
            dir.path().join(format!("d{i}")).to_str().expect("utf8"),
            "--http",
            &format!("127.0.0.1:{}", free_port()),
        ]);
        assert!(!o.status.success(), "{yaml} was accepted");
        assert!(stderr(&o).contains(needle), "{yaml}: {}", stderr(&o));
    }
}

#[test]
fn local_up_status_and_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("lc");
    let ds = d.to_str().expect("utf8");
    let o = run(&["local", "up", "--dir", ds, "--site", "idc:bad"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("idc:bad"), "{}", stderr(&o));

    let o = run(&["local", "up", "--dir", ds, "--site", "idc:3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("cluster.json")).expect("cluster.json"))
            .expect("json");
    let nodes = file["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        for k in ["id", "site", "pid", "http", "quic", "dataDir"] {
            assert!(!n[k].is_null(), "{k} missing in {n}");
        }
    }
    // A second `up` in the same directory is refused.
    let o = run(&["local", "up", "--dir", ds, "--site", "idc:1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("local down"), "{}", stderr(&o));

    let http = nodes[2]["http"].as_str().expect("http");
    let server = format!("http://{http}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let o = run(&["cluster", "status", "--server", &server, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if o.status.success() && v["leader"].is_u64() {
            break v;
        }
        assert!(Instant::now() < deadline, "no leader: {}", stderr(&o));
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        status["nodes"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    assert!(status["certificate"]["expiresInDays"].as_i64() > Some(300));
    // Leaving with a bad node id names it.
    let o = run(&["cluster", "leave", "--server", &server, "--node-id", "42"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("42"), "{}", stderr(&o));

    let o = run(&["local", "down", "--dir", ds]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("stopped 3"), "{}", stdout(&o));
    for n in nodes {
        let pid = n["pid"].as_u64().expect("pid");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "node pid {pid} still running"
        );
    }
}
