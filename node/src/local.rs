//! `strait local up|down`: a cluster of real node processes on loopback
//! for development, tests, benchmarks and the README tour.
//!
//! `up` creates a CA and one certificate per node, picks free ports, writes
//! one config per node (dev mode: no auth), starts every node as its own
//! background process, waits until each site has a leader and writes
//! `DIR/cluster.json`. `down` stops the processes listed there.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use strait_federation::certs;

use crate::config::{ControlMember, Member, NodeConfig};

/// One node of a local cluster, as listed in `cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalNode {
    /// Node id inside its site.
    pub id: u64,
    /// Site name.
    pub site: String,
    /// Process id (of the last start).
    pub pid: u32,
    /// HTTP address (`host:port`).
    pub http: String,
    /// QUIC address (`host:port`).
    pub quic: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// The node's config file (start it again with `strait serve --config`).
    pub config: PathBuf,
    /// Its log file.
    pub log: PathBuf,
}

/// `DIR/cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalCluster {
    /// Site names with their node counts.
    pub sites: BTreeMap<String, usize>,
    /// Every node.
    pub nodes: Vec<LocalNode>,
    /// The certificate directory (CA in `ca.pem`/`ca.key`).
    pub certs_dir: PathBuf,
}

/// The path of the cluster file in `dir`.
pub fn cluster_file(dir: &Path) -> PathBuf {
    dir.join("cluster.json")
}

/// Parse `NAME:COUNT`.
pub fn parse_site(s: &str) -> anyhow::Result<(String, usize)> {
    let (name, count) = s
        .rsplit_once(':')
        .with_context(|| format!("--site {s:?}: expected NAME:COUNT, e.g. idc:3"))?;
    certs::validate_site(name).with_context(|| format!("--site {s:?}"))?;
    let count: usize = count
        .parse()
        .ok()
        .filter(|c| (1..=9).contains(c))
        .with_context(|| format!("--site {s:?}: COUNT must be a number from 1 to 9"))?;
    Ok((name.to_string(), count))
}

fn free_tcp() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn free_udp() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Options of `strait local up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Directory for everything (created).
    pub dir: PathBuf,
    /// Sites and node counts.
    pub sites: Vec<(String, usize)>,
    /// YAML mapping merged into every node's config (e.g. `snapshot_every`).
    pub extra: Option<PathBuf>,
    /// Wait at most this long for every site to elect a leader.
    pub timeout: Duration,
    /// With two or more sites: control-group voters per site (0: no
    /// control group).
    pub control_voters_per_site: usize,
}

/// Start a local cluster; returns what it wrote to `cluster.json`.
pub async fn up(opts: &UpOptions) -> anyhow::Result<LocalCluster> {
    let dir = &opts.dir;
    if cluster_file(dir).exists() {
        bail!(
            "{} exists: a local cluster was started in {} (run `strait local down --dir {}` first, or pick another directory)",
            cluster_file(dir).display(),
            dir.display(),
            dir.display()
        );
    }
    if opts.sites.is_empty() {
        bail!("give at least one --site NAME:COUNT");
    }
    for (i, (s, _)) in opts.sites.iter().enumerate() {
        if opts.sites[..i].iter().any(|(o, _)| o == s) {
            bail!("--site {s}: given twice");
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let extra: serde_yaml::Mapping = match &opts.extra {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("--extra {}: cannot read", p.display()))?;
            serde_yaml::from_str(&text)
                .with_context(|| format!("--extra {}: not a YAML mapping", p.display()))?
        }
        None => serde_yaml::Mapping::new(),
    };
    let certs_dir = dir.join("certs");
    if !certs_dir.join(certs::CA_CERT_FILE).exists() {
        certs::init_ca(&certs_dir)?;
    }
    let exe = std::env::current_exe().context("cannot find the strait binary")?;
    let mut cluster = LocalCluster {
        sites: opts.sites.iter().cloned().collect(),
        nodes: Vec::new(),
        certs_dir: certs_dir.clone(),
    };
    let mut all: BTreeMap<String, Vec<Member>> = BTreeMap::new();
    for (site, count) in &opts.sites {
        let mut members = Vec::new();
        for id in 1..=*count as u64 {
            members.push(Member {
                id,
                raft_addr: format!("127.0.0.1:{}", free_udp()?),
                http_addr: format!("127.0.0.1:{}", free_tcp()?),
            });
        }
        all.insert(site.clone(), members);
    }
    let mut control = Vec::new();
    if opts.sites.len() > 1 && opts.control_voters_per_site > 0 {
        for (site, members) in &all {
            for (i, m) in members.iter().enumerate() {
                control.push(ControlMember {
                    site: site.clone(),
                    id: m.id,
                    raft_addr: m.raft_addr.clone(),
                    http_addr: m.http_addr.clone(),
                    voter: i < opts.control_voters_per_site,
                });
            }
        }
    }
    for (site, _) in &opts.sites {
        let members = all.get(site).cloned().unwrap_or_default();
        let links: BTreeMap<String, Vec<Member>> = all
            .iter()
            .filter(|(s, _)| *s != site)
            .map(|(s, m)| (s.clone(), m.clone()))
            .collect();
        for m in &members {
            let node_dir = dir.join(format!("{site}-{}", m.id));
            let node_certs = node_dir.join("certs");
            certs::issue_node_cert(
                &certs_dir,
                m.id,
                site,
                &["localhost".to_string()],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                &node_certs,
            )?;
            let mut cfg = NodeConfig {
                node_id: m.id,
                site: site.clone(),
                data_dir: node_dir.join("data"),
                http: m.http_addr.clone(),
                dev: true,
                ..NodeConfig::default()
            };
            cfg.cluster.listen = Some(m.raft_addr.clone());
            cfg.cluster.certs_dir = Some(node_certs);
            cfg.cluster.initial_members = members.clone();
            cfg.federation.links = links.clone();
            cfg.control.members = control.clone();
            let config_path = node_dir.join("config.yaml");
            write_config(&cfg, &extra, &config_path)?;
            let log = node_dir.join("node.log");
            let pid = spawn_node(&exe, &config_path, &log)?;
            cluster.nodes.push(LocalNode {
                id: m.id,
                site: site.clone(),
                pid,
                http: m.http_addr.clone(),
                quic: m.raft_addr.clone(),
                data_dir: cfg.data_dir.clone(),
                config: config_path,
                log,
            });
        }
    }
    write_cluster(&dir, &cluster)?;
    wait_ready(&cluster, opts.timeout).await?;
    Ok(cluster)
}

fn write_config(cfg: &NodeConfig, extra: &serde_yaml::Mapping, path: &Path) -> anyhow::Result<()> {
    let mut doc = serde_yaml::to_value(cfg)?;
    if let serde_yaml::Value::Mapping(m) = &mut doc {
        merge(m, extra);
    }
    let merged: NodeConfig = serde_yaml::from_value(doc.clone())
        .context("--extra: the merged node config is invalid")?;
    merged
        .validate()
        .context("--extra: the merged node config is invalid")?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, serde_yaml::to_string(&doc)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Merge `extra` into `base`, mappings key by key (so `cluster:
/// {heartbeat_ms: 150}` keeps the generated peers and certificates).
fn merge(base: &mut serde_yaml::Mapping, extra: &serde_yaml::Mapping) {
    for (k, v) in extra {
        match (base.get_mut(k), v) {
            (Some(serde_yaml::Value::Mapping(b)), serde_yaml::Value::Mapping(e)) => merge(b, e),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Start `strait serve --config CONFIG` in the background (its own process
/// group, output appended to `log`); returns its pid.
pub fn spawn_node(exe: &Path, config: &Path, log: &Path) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    let child = std::process::Command::new(exe)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    Ok(child.id())
}

fn write_cluster(dir: &Path, cluster: &LocalCluster) -> anyhow::Result<()> {
    let path = cluster_file(dir);
    let tmp = dir.join("cluster.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(cluster)?)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// Read `DIR/cluster.json`.
pub fn read_cluster(dir: &Path) -> anyhow::Result<LocalCluster> {
    let path = cluster_file(dir);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {} (no local cluster here?)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a cluster file", path.display()))
}

async fn wait_ready(cluster: &LocalCluster, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + timeout;
    for n in &cluster.nodes {
        loop {
            let ok = match client.get(format!("http://{}/readyz", n.http)).send().await {
                Ok(r) => r.status().is_success(),
                Err(_) => false,
            };
            if ok {
                break;
            }
            if !alive(n.pid) {
                bail!(
                    "node {} of site {} (pid {}) exited during start; see {}",
                    n.id,
                    n.site,
                    n.pid,
                    n.log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} of site {} not ready after {timeout:?}; see {}",
                    n.id,
                    n.site,
                    n.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Whether process `pid` is running (and not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Stop every node of the local cluster in `dir` (SIGTERM, then SIGKILL
/// after `grace`) and remove `cluster.json`. Data stays.
pub async fn down(dir: &Path, grace: Duration) -> anyhow::Result<Vec<LocalNode>> {
    let cluster = read_cluster(dir)?;
    for n in &cluster.nodes {
        if alive(n.pid) {
            signal(n.pid, "TERM");
        }
    }
    let deadline = Instant::now() + grace;
    while cluster.nodes.iter().any(|n| alive(n.pid)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in &cluster.nodes {
        if alive(n.pid) {
            signal(n.pid, "KILL");
        }
    }
    std::fs::remove_file(cluster_file(dir))?;
    Ok(cluster.nodes)
}

/// A short table of the cluster for the terminal.
pub fn describe(cluster: &LocalCluster) -> String {
    let mut out = String::new();
    for n in &cluster.nodes {
        out.push_str(&format!(
            "  {}-{}  pid {:<7} http://{}  quic {}\n",
            n.site, n.id, n.pid, n.http, n.quic
        ));
    }
    out
}

/// `strait cluster status` output for one node's `GET /v1/cluster`.
pub fn status_table(v: &Value) -> String {
    let mut out = format!(
        "site {}  term {}  leader {}  (asked node {}: {})\n",
        v["site"].as_str().unwrap_or("?"),
        v["term"],
        v["leader"],
        v["nodeId"],
        v["role"].as_str().unwrap_or("?"),
    );
    if let Some(nodes) = v["nodes"].as_array() {
        for n in nodes {
            let lag = n
                .get("replicationLag")
                .map(|l| format!("  lag {l}"))
                .unwrap_or_default();
            // Only the leader reports reachability (absent: not known).
            let reach = match n.get("reachable").and_then(Value::as_bool) {
                Some(false) => "  UNREACHABLE",
                _ => "",
            };
            out.push_str(&format!(
                "  node {:<3} {:<9} http {:<22} quic {}{}{}\n",
                // (a JSON value's Display ignores the width)
                n["id"].to_string(),
                n["role"].as_str().unwrap_or("?"),
                n["httpAddr"].as_str().unwrap_or(""),
                n["raftAddr"].as_str().unwrap_or(""),
                lag,
                reach
            ));
        }
    }
    if let Some(days) = v["certificate"]["expiresInDays"].as_i64() {
        out.push_str(&format!("  certificate expires in {days} days\n"));
    }
    for l in v["links"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let remote = l["remote"].as_str().unwrap_or("?");
        if l["direction"] == "out" {
            out.push_str(&format!(
                "  link -> {remote:<8} {:<5} rtt {} ms  outbox {}/{} ({})  oldest undelivered {} ms  acked {}{}\n",
                l["state"].as_str().unwrap_or("?"),
                l["rttMs"].as_f64().map(|r| format!("{r:.1}")).unwrap_or_else(|| "-".into()),
                l["outboxDepth"],
                l["outboxLimit"],
                l["alarm"].as_str().unwrap_or("?"),
                l["oldestUndeliveredMs"]
                    .as_u64()
                    .map_or_else(|| "-".to_string(), |v| v.to_string()),
                l["acked"],
                l["lastError"]
                    .as_str()
                    .map(|e| format!("  last error: {e}"))
                    .unwrap_or_default(),
            ));
        } else {
            out.push_str(&format!(
                "  link <- {remote:<8} received {}  undelivered {}\n",
                l["received"], l["undelivered"]
            ));
        }
    }
    let c = &v["control"];
    if c.is_object() {
        out.push_str(&format!(
            "  control group: {} (term {}), leader {}:{}, version {} (this site runs {})\n",
            c["role"].as_str().unwrap_or("?"),
            c["term"],
            c["leader"]["site"].as_str().unwrap_or("none"),
            c["leader"]["id"],
            c["version"],
            c["appliedVersion"],
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(id: u64, role: &str, extra: Value) -> Value {
        let mut n = json!({
            "id": id,
            "role": role,
            "httpAddr": format!("127.0.0.1:{}", 8000 + id),
            "raftAddr": format!("127.0.0.1:{}", 9000 + id),
        });
        if let (Some(n), Some(extra)) = (n.as_object_mut(), extra.as_object()) {
            n.extend(extra.clone());
        }
        n
    }

    fn line(table: &str, id: u64) -> &str {
        table
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("node {id} ")))
            .unwrap_or_else(|| panic!("no line for node {id} in:\n{table}"))
    }

    #[test]
    fn status_table_flags_unreachable_nodes() {
        let status = json!({
            "site": "idc",
            "nodeId": 1,
            "role": "leader",
            "leader": 1,
            "term": 3,
            "nodes": [
                node(1, "leader", json!({"matchedIndex": 10, "replicationLag": 0})),
                node(2, "follower", json!({"matchedIndex": 10, "replicationLag": 0, "reachable": true})),
                node(3, "follower", json!({"matchedIndex": 10, "replicationLag": 0, "reachable": false})),
            ],
            "links": [],
        });
        let table = status_table(&status);
        assert!(table.starts_with("site idc  term 3  leader 1  (asked node 1: leader)\n"));
        assert!(!line(&table, 1).contains("UNREACHABLE"), "{table}");
        assert!(!line(&table, 2).contains("UNREACHABLE"), "{table}");
        assert_eq!(
            line(&table, 3),
            "  node 3   follower  http 127.0.0.1:8003         quic 127.0.0.1:9003  lag 0  UNREACHABLE"
        );
    }

    #[test]
    fn status_table_of_a_follower_shows_no_reachability() {
        // A follower's document has no `reachable`: nothing is flagged.
        let status = json!({
            "site": "idc",
            "nodeId": 2,
            "role": "follower",
            "leader": 1,
            "term": 3,
            "nodes": [node(1, "leader", json!({})), node(2, "follower", json!({}))],
        });
        let table = status_table(&status);
        assert!(!table.contains("UNREACHABLE"), "{table}");
        assert!(line(&table, 2).ends_with("quic 127.0.0.1:9002"), "{table}");
    }
}
