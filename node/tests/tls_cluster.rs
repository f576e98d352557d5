//! Two `strait serve` processes of one site with `http_tls` (mutual TLS,
//! certificates from `strait cert`): the second joins through the first's
//! HTTPS API (`cluster.join` as a bare `host:port`), a membership change
//! sent to the follower is passed to the leader over HTTPS with this
//! node's certificate, and the CLI talks HTTPS with `--ca` and a client
//! certificate.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_strait");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run strait")
}

/// A loopback port free for TCP and UDP, below the ephemeral range (a
/// node's outgoing connections cannot take it before the node listens).
fn free_port() -> u16 {
    strait_federation::transport::free_loopback_port().expect("free port")
}

struct Proc(Child, PathBuf);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

fn serve(dir: &Path, id: u64, http: u16, quic: u16, extra: &str) -> Proc {
    let certs = dir.join("certs");
    let cfg = format!(
        "node_id: {id}\nsite: idc\ndata_dir: {data}\nhttp: 127.0.0.1:{http}\n\
         auth:\n  tokens:\n    - admin-token\n    - {{name: reader, token: read-token, scopes: [read]}}\n\
         http_tls:\n  cert: {c}/node-{id}.pem\n  key: {c}/node-{id}.key\n  client_ca: {c}/ca.pem\n\
         cluster:\n  listen: 127.0.0.1:{quic}\n  certs_dir: {c}\n{extra}",
        data = s(&dir.join(format!("data-{id}"))),
        c = s(&certs),
    );
    let path = dir.join(format!("node-{id}.yaml"));
    std::fs::write(&path, cfg).expect("config");
    let log = dir.join(format!("node-{id}.log"));
    let child = Command::new(BIN)
        .args(["serve", "--config", s(&path)])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    Proc(child, log)
}

/// `strait cluster status` over HTTPS: the voters.
fn voters(dir: &Path, port: u16) -> Option<Vec<u64>> {
    let c = dir.join("certs");
    let o = run(&[
        "cluster",
        "status",
        "--json",
        "--server",
        &format!("https://127.0.0.1:{port}"),
        "--token",
        "read-token",
        "--ca",
        s(&c.join("ca.pem")),
        "--client-cert",
        s(&c.join("node-1.pem")),
        "--client-key",
        s(&c.join("node-1.key")),
    ]);
    if !o.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    let nodes = v["nodes"].as_array()?;
    Some(
        nodes
            .iter()
            .filter(|n| n["voter"] == true)
            .filter_map(|n| n["id"].as_u64())
            .collect(),
    )
}

#[test]
fn a_site_with_https_joins_and_forwards_over_tls() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let ca = d.join("ca");
    let certs = d.join("certs");
    assert!(run(&["cert", "init-ca", "--dir", s(&ca)]).status.success());
    for id in ["1", "2"] {
        let o = run(&[
            "cert",
            "issue",
            "--ca",
            s(&ca),
            "--node-id",
            id,
            "--site",
            "idc",
            "--ip",
            "127.0.0.1",
            "--out",
            s(&certs),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let (h1, q1, h2, q2) = (free_port(), free_port(), free_port(), free_port());
    let n1 = serve(
        d,
        1,
        h1,
        q1,
        &format!(
            "  initial_members:\n    - {{id: 1, raft_addr: \"127.0.0.1:{q1}\", http_addr: \"127.0.0.1:{h1}\"}}\n"
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while voters(d, h1).is_none() {
        assert!(
            Instant::now() < deadline,
            "node 1 never answered over HTTPS:\n{}",
            n1.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Node 2 joins through node 1's HTTPS API (a bare host:port: https).
    let n2 = serve(d, 2, h2, q2, &format!("  join: \"127.0.0.1:{h1}\"\n"));
    loop {
        if voters(d, h1).is_some_and(|v| v.contains(&2)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 2 never joined:\n--- node 1\n{}\n--- node 2\n{}",
            n1.log(),
            n2.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    let base_args = |port: u16| {
        vec![
            "--server".to_string(),
            format!("https://127.0.0.1:{port}"),
            "--ca".into(),
            s(&certs.join("ca.pem")).into(),
            "--client-cert".into(),
            s(&certs.join("node-2.pem")).into(),
            "--client-key".into(),
            s(&certs.join("node-2.key")).into(),
        ]
    };
    // Without --ca the node's certificate is not trusted.
    let o = run(&[
        "get",
        "buses",
        "--server",
        &format!("https://127.0.0.1:{h1}"),
        "--token",
        "admin-token",
    ]);
    assert!(!o.status.success(), "an untrusted certificate was accepted");
    // A `read` token cannot change membership (403 naming the scope)...
    let mut args = vec![
        "cluster".to_string(),
        "leave".into(),
        "--node-id".into(),
        "2".into(),
    ];
    args.extend(base_args(h2));
    args.extend(["--token".into(), "read-token".into()]);
    let o = Command::new(BIN).args(&args).output().expect("run");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success() && err.contains("403") && err.contains("admin"),
        "{err}"
    );
    // ... an admin token can, sent to the follower, which passes it to the
    // leader over HTTPS (mutual TLS with its node certificate).
    let mut args = vec![
        "cluster".to_string(),
        "leave".into(),
        "--node-id".into(),
        "2".into(),
    ];
    args.extend(base_args(h2));
    args.extend(["--token".into(), "admin-token".into()]);
    let o = Command::new(BIN).args(&args).output().expect("run");
    assert!(
        o.status.success(),
        "leave through the follower: {}\n--- node 1\n{}\n--- node 2\n{}",
        String::from_utf8_lossy(&o.stderr),
        n1.log(),
        n2.log()
    );
    assert_eq!(voters(d, h1), Some(vec![1]));
    let mut buf = String::new();
    let _ = std::fs::File::open(&n1.1).and_then(|mut f| f.read_to_string(&mut buf));
    assert!(
        buf.contains("strait::audit"),
        "no audit line on the leader:\n{buf}"
    );
}
