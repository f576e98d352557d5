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
    assert!(stdout(&o).contains("\"matched\":false"));
    // Errors are not "no match": exit 2, and the message names the file.
    std::fs::write(&p, r#"{"source": "not-a-list"}"#).expect("write");
    let o = run(&[
        "test-pattern",
        "--pattern",
        p.to_str().expect("utf8"),
        "--event",
        e.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("p.json"), "{}", stderr(&o));
    let missing = dir.path().join("missing.json");
    let o = run(&[
        "test-pattern",
        "--pattern",
        missing.to_str().expect("utf8"),
        "--event",
        e.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("missing.json"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
}

/// The example files the README's `test-pattern` command names exist and
/// match.
#[test]
fn the_readme_pattern_example_matches() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let line = readme
        .lines()
        .find(|l| l.contains("test-pattern --pattern"))
        .expect("README shows test-pattern");
    let after = |flag: &str| -> String {
        let rest = &line[line.find(flag).expect(flag) + flag.len()..];
        rest.trim_start()
            .split(|c: char| c.is_whitespace() || c == '`')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let (p, e) = (root.join(after("--pattern")), root.join(after("--event")));
    let o = run(&[
        "test-pattern",
        "--pattern",
        p.to_str().expect("utf8"),
        "--event",
        e.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{line}: {}", stderr(&o));
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
    // The message says how to create the bus.
    assert!(
        stdout(&o).contains("PUT /v1/buses/missing") && stdout(&o).contains("strait apply"),
        "{}",
        stdout(&o)
    );
    let rule = dir.path().join("rule.yaml");
    std::fs::write(
        &rule,
        "rules:\n  - bus: nobus\n    name: r\n    pattern: {type: [t]}\n    targets: [{id: hook, type: http, endpoint: \"http://127.0.0.1:9/\"}]\n",
    )
    .expect("write");
    let o = run(&[
        "apply",
        "-f",
        rule.to_str().expect("utf8"),
        "--server",
        &node.url,
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("rule nobus/r: HTTP 404") && e.contains("PUT /v1/buses/nobus"),
        "{e}"
    );
}

/// A second `serve --dev` on a port or a data directory in use says which
/// flag picks another.
#[test]
fn a_second_dev_node_is_told_which_flag_to_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let node = start_node(&data);
    let http = node.url.trim_start_matches("http://").to_string();
    let o = run(&[
        "serve",
        "--dev",
        "--http",
        &http,
        "--data-dir",
        dir.path().join("other").to_str().expect("utf8"),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains(&http) && e.contains("--http"), "{e}");
    let o = run(&[
        "serve",
        "--dev",
        "--http",
        &format!("127.0.0.1:{}", free_port()),
        "--data-dir",
        data.to_str().expect("utf8"),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains(data.to_str().expect("utf8")) && e.contains("--data-dir"),
        "{e}"
    );
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

fn cluster_json(d: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(d.join("cluster.json")).expect("cluster.json"))
        .expect("json")
}

/// Whether `pid` runs (not a zombie).
fn pid_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z"))
        .unwrap_or(false)
}

/// Stops the folder's nodes at the end of a test, even a failed one.
struct Down<'a>(&'a str);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = run(&["local", "down", "--dir", self.0]);
    }
}

fn nodes_of(file: &serde_json::Value, key: &str) -> Vec<String> {
    file["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n[key].to_string())
        .collect()
}

/// `local up` → `local down` → `local up` on the same folder: the same
/// ports, a leader, events accepted; `cluster status --dir` names the
/// leader.
#[test]
fn local_up_runs_again_on_the_same_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("lc");
    let ds = d.to_str().expect("utf8");
    let _down = Down(ds);
    let o = run(&["local", "up", "--dir", ds, "--site", "idc:3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = cluster_json(&d);
    let o = run(&["local", "down", "--dir", ds]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("stopped 3"), "{}", stdout(&o));
    let o = run(&["cluster", "status", "--dir", ds]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("site idc: no leader (0 of 3 nodes running)"),
        "{}",
        stdout(&o)
    );

    let o = run(&[
        "local",
        "up",
        "--dir",
        ds,
        "--site",
        "idc:3",
        "--timeout",
        "30",
    ]);
    assert!(o.status.success(), "second up: {}", stderr(&o));
    let second = cluster_json(&d);
    assert_eq!(nodes_of(&first, "http"), nodes_of(&second, "http"));
    assert_eq!(nodes_of(&first, "quic"), nodes_of(&second, "quic"));
    let o = run(&["cluster", "status", "--dir", ds]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("site idc: leader idc-"),
        "{}",
        stdout(&o)
    );
    for n in second["nodes"].as_array().expect("nodes") {
        let url = format!("http://{}", n["http"].as_str().expect("http"));
        let o = run(&[
            "put",
            "--server",
            &url,
            "--type",
            "t",
            "--id",
            &format!("e{}", n["id"]),
        ]);
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
        assert!(stdout(&o).contains("accepted"), "{}", stdout(&o));
    }
    // A third time, without --site: read from the folder.
    assert!(run(&["local", "down", "--dir", ds]).status.success());
    let o = run(&["local", "up", "--dir", ds, "--timeout", "30"]);
    assert!(o.status.success(), "third up: {}", stderr(&o));
    // Other sites than the folder's are refused, with the way out.
    assert!(run(&["local", "down", "--dir", ds]).status.success());
    let o = run(&["local", "up", "--dir", ds, "--site", "idc:1"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--site idc:3") && stderr(&o).contains("--fresh"),
        "{}",
        stderr(&o)
    );
}

/// `local down` stops a node restarted by hand (new pid, not in
/// cluster.json).
#[test]
fn local_down_stops_a_node_restarted_by_hand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("lc");
    let ds = d.to_str().expect("utf8");
    let _down = Down(ds);
    let o = run(&["local", "up", "--dir", ds, "--site", "solo:1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    let file = cluster_json(&d);
    let n = &file["nodes"][0];
    let pid = n["pid"].as_u64().expect("pid");
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} survived kill -9");
        std::thread::sleep(Duration::from_millis(50));
    }
    // As docs/cluster.md says: start it again by hand.
    let mut child = Command::new(BIN)
        .args(["serve", "--config", n["config"].as_str().expect("config")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("restart");
    let url = format!("http://{}", n["http"].as_str().expect("http"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !run(&["put", "--server", &url, "--type", "t"])
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "the restarted node never took an event"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = run(&["local", "down", "--dir", ds]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("solo-1 pid {}", child.id())),
        "{}",
        stdout(&o)
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("local down left the restarted node running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run again while another process holds one of the folder's ports: refused
/// before any node starts, naming the port and `--fresh`; `--fresh` starts
/// a new cluster on new ports; `down --purge` deletes it. Also: a 2-node
/// site gets a warning.
#[test]
fn local_up_on_a_taken_port_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("lc");
    let ds = d.to_str().expect("utf8");
    let _down = Down(ds);
    let o = run(&["local", "up", "--dir", ds, "--site", "idc:2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning: site idc has 2 nodes")
            && stderr(&o).contains("survives no node failure"),
        "{}",
        stderr(&o)
    );
    assert!(run(&["local", "down", "--dir", ds]).status.success());
    let file = cluster_json(&d);
    let http = file["nodes"][1]["http"].as_str().expect("http").to_string();
    let port = http.rsplit_once(':').expect("port").1.to_string();
    let _taken = TcpListener::bind(&http).expect("take the port");
    let o = run(&["local", "up", "--dir", ds]);
    assert!(!o.status.success(), "{}", stdout(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!("port {port}")) && e.contains("--fresh"),
        "{e}"
    );
    let o = run(&["cluster", "status", "--dir", ds, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(2), "{v}");
    for n in v["nodes"].as_array().expect("nodes") {
        assert_eq!(n["running"], false, "a node runs after the failed up: {v}");
    }

    let o = run(&["local", "up", "--dir", ds, "--site", "idc:2", "--fresh"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let fresh = cluster_json(&d);
    assert_ne!(nodes_of(&fresh, "http"), nodes_of(&file, "http"));
    let o = run(&["local", "down", "--dir", ds, "--purge"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("stopped 2"), "{}", stdout(&o));
    assert!(!d.join("cluster.json").exists() && !d.join("idc-1").exists());
}

/// When a node cannot start, `up` stops the ones it started.
#[test]
fn a_failed_local_up_stops_the_nodes_it_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("lc");
    let ds = d.to_str().expect("utf8");
    let _down = Down(ds);
    // Node idc-2 cannot open its data directory: it is a file.
    std::fs::create_dir_all(d.join("idc-2")).expect("mkdir");
    std::fs::write(d.join("idc-2/data"), "not a directory").expect("write");
    let o = run(&[
        "local",
        "up",
        "--dir",
        ds,
        "--site",
        "idc:3",
        "--timeout",
        "30",
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("idc-2") && e.contains("were stopped"), "{e}");
    let file = cluster_json(&d);
    for n in file["nodes"].as_array().expect("nodes") {
        let pid = n["pid"].as_u64().expect("pid");
        assert!(
            !pid_alive(pid),
            "node {} (pid {pid}) still runs: {e}",
            n["id"]
        );
    }
}

/// `strait ... | head` closes the pipe early: the command ends quietly
/// (status 141, as a shell reports SIGPIPE) instead of panicking with
/// "failed printing to stdout".
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let o = std::process::Command::new(BIN)
        .args([
            "test-pattern",
            "--pattern",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples/p.json"),
            "--event",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples/e.json"),
        ])
        .stdout(std::process::Stdio::from(writer))
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run strait");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "stderr: {err}");
    assert_eq!(o.status.code(), Some(141), "stderr: {err}");
}

/// `strait events get` prints an event's deliveries as a timeline (a target
/// nobody listens on: failed attempts, then dropped); `strait events ls`
/// lists the bus's events and names a bad flag value.
#[test]
fn events_get_and_ls_against_a_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(&dir.path().join("data"));
    let file = dir.path().join("apply.yaml");
    std::fs::write(
        &file,
        "buses:\n  - name: evs\nrules:\n  - bus: evs\n    name: gone\n    pattern: {type: [t.gone]}\n    targets: [{id: hook, type: http, endpoint: \"http://127.0.0.1:9/\", retry: {maxAttempts: 2, initialBackoffMs: 10, maxBackoffMs: 10}}]\n",
    )
    .expect("write");
    let o = run(&[
        "apply",
        "-f",
        file.to_str().expect("utf8"),
        "--server",
        &node.url,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (id, ty) in [("ev-1", "t.gone"), ("ev-2", "t.other")] {
        let o = run(&[
            "put", "--server", &node.url, "--bus", "evs", "--type", ty, "--id", id,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let o = run(&[
            "events", "get", "--server", &node.url, "--bus", "evs", "ev-1",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let text = stdout(&o);
        if text.contains("dropped") {
            break text;
        }
        assert!(Instant::now() < deadline, "never dropped: {text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        text.starts_with("event ev-1 (source strait-cli, type t.gone) on bus evs"),
        "{text}"
    );
    assert!(text.contains("SITE") && text.contains("OFFSET"), "{text}");
    assert!(
        text.contains("committed") && text.contains("+0ms"),
        "{text}"
    );
    let attempts: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("gone -> hook attempt"))
        .collect();
    assert_eq!(attempts.len(), 2, "{text}");
    assert!(attempts.iter().all(|l| l.contains("failed")), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("dropped: retries exhausted")),
        "{text}"
    );
    let o = run(&[
        "events", "get", "--server", &node.url, "--bus", "evs", "ev-2",
    ]);
    assert!(
        stdout(&o).contains("no enabled rule of the bus matches it"),
        "{}",
        stdout(&o)
    );
    let o = run(&[
        "events", "get", "--server", &node.url, "--bus", "evs", "ev-9",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("HTTP 404") && stderr(&o).contains("`ev-9`"),
        "{}",
        stderr(&o)
    );

    let o = run(&[
        "events", "ls", "--server", &node.url, "--bus", "evs", "--limit", "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("ev-1") && !text.contains("ev-2"), "{text}");
    let cursor = text
        .lines()
        .find_map(|l| l.strip_prefix("more: --cursor "))
        .expect("a next page")
        .to_string();
    let o = run(&[
        "events", "ls", "--server", &node.url, "--bus", "evs", "--cursor", &cursor,
    ]);
    assert!(
        stdout(&o).contains("ev-2") && !stdout(&o).contains("ev-1"),
        "{}",
        stdout(&o)
    );
    let o = run(&[
        "events", "ls", "--server", &node.url, "--bus", "evs", "--type", "t.other",
    ]);
    assert!(
        stdout(&o).contains("ev-2") && !stdout(&o).contains("ev-1"),
        "{}",
        stdout(&o)
    );
    let o = run(&[
        "events", "ls", "--server", &node.url, "--bus", "evs", "--limit", "0",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("`limit`"), "{}", stderr(&o));
}
