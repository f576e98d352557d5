//! `strait local up|down`: a cluster of real node processes on loopback
//! for development, tests, benchmarks and the README tour.
//!
//! `up` creates a CA and one certificate per node, picks free ports, writes
//! one config per node (dev mode: no auth), writes `DIR/cluster.json`,
//! starts every node as its own background process and waits until each
//! site has a leader. Run again on the same folder (after `down`), it starts
//! the same nodes on the same ports with the same certificates and data: a
//! node's Raft state names its peers by address. `down` stops the nodes of
//! the folder, found by their config file or data directory (so a node
//! restarted by hand is stopped too); `--purge` deletes what `up` created.

mod procs;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use strait_federation::certs;
use strait_federation::transport::free_loopback_port;

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

impl LocalNode {
    /// `site-id`, as the node's directory is named.
    pub fn name(&self) -> String {
        format!("{}-{}", self.site, self.id)
    }
}

fn one() -> usize {
    1
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
    /// With two or more sites: control-group voters per site.
    #[serde(default = "one")]
    pub control_voters_per_site: usize,
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

/// Warnings about site sizes that buy no fault tolerance: a Raft site
/// needs a majority of its voters, so 2 nodes survive no failure (and fail
/// more often than 1) and 4 survive one, as 3 do.
pub fn site_warnings(sites: &[(String, usize)]) -> Vec<String> {
    sites
        .iter()
        .filter_map(|(site, count)| match count {
            2 => Some(format!(
                "site {site} has 2 nodes: Raft needs a majority (2 of 2), so it survives no node failure and stops when either node stops; use 3 nodes to survive one failure (or 1 for a dev site)"
            )),
            4 => Some(format!(
                "site {site} has 4 nodes: Raft needs a majority (3 of 4), so it survives one node failure, as 3 nodes do; use 5 to survive two"
            )),
            _ => None,
        })
        .collect()
}

/// Options of `strait local up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Directory for everything (created).
    pub dir: PathBuf,
    /// Sites and node counts (empty: those of the cluster already in `dir`).
    pub sites: Vec<(String, usize)>,
    /// YAML mapping merged into every node's config (e.g. `snapshot_every`).
    /// When `dir` holds a cluster, given: its configs are written again;
    /// not given: they are used as they are.
    pub extra: Option<PathBuf>,
    /// Wait at most this long for every site to elect a leader.
    pub timeout: Duration,
    /// With two or more sites: control-group voters per site (0: no
    /// control group). `None`: 1, or what the cluster in `dir` has.
    pub control_voters_per_site: Option<usize>,
    /// Delete the cluster in `dir` (data, configs, certificates) and start
    /// a new one.
    pub fresh: bool,
}

/// How long `up` (when it fails) and `down` wait for SIGTERM to end a node
/// before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Start a local cluster (a new one, or the one already in the folder);
/// returns what it wrote to `cluster.json`. When it fails after starting
/// nodes, it stops them.
pub async fn up(opts: &UpOptions) -> anyhow::Result<LocalCluster> {
    for (i, (s, _)) in opts.sites.iter().enumerate() {
        if opts.sites[..i].iter().any(|(o, _)| o == s) {
            bail!("--site {s}: given twice");
        }
    }
    let dir = &opts.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let extra: Option<serde_yaml::Mapping> = match &opts.extra {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("--extra {}: cannot read", p.display()))?;
            Some(
                serde_yaml::from_str(&text)
                    .with_context(|| format!("--extra {}: not a YAML mapping", p.display()))?,
            )
        }
        None => None,
    };
    let mut stored = stored_cluster(&dir)?;
    if let Some(s) = &stored {
        let running = running_nodes(s);
        if !running.is_empty() {
            let list: Vec<String> = running
                .iter()
                .map(|(i, pid)| format!("{} pid {pid}", s.nodes[*i].name()))
                .collect();
            bail!(
                "the local cluster in {d} is running ({}): run `strait local down --dir {d}` first",
                list.join(", "),
                d = dir.display()
            );
        }
    }
    if opts.fresh
        && let Some(s) = stored.take()
    {
        purge(&dir, &s)?;
    }
    let (cluster, rewrite) = match stored {
        Some(s) => (reuse(&dir, s, opts)?, extra.is_some()),
        None => (new_layout(&dir, opts)?, true),
    };
    if !cluster.certs_dir.join(certs::CA_CERT_FILE).exists() {
        certs::init_ca(&cluster.certs_dir)?;
    }
    let extra = extra.unwrap_or_default();
    for n in &cluster.nodes {
        let node_certs = node_certs_dir(n);
        if !node_certs.join(format!("node-{}.pem", n.id)).exists() {
            certs::issue_node_cert(
                &cluster.certs_dir,
                n.id,
                &n.site,
                &["localhost".to_string()],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                &node_certs,
            )?;
        }
        if rewrite || !n.config.exists() {
            write_config(&node_config(&cluster, n), &extra, &n.config)?;
        }
    }
    // The layout is on disk before any node starts: whatever happens next,
    // a later `up` finds the ports the nodes' Raft state knows.
    write_cluster(&dir, &cluster)?;
    start(&dir, cluster, opts.timeout).await
}

/// The cluster `dir` holds: its `cluster.json`, or else (a folder written
/// by an older `up`, whose `down` removed the file) its node configs.
pub fn stored_cluster(dir: &Path) -> anyhow::Result<Option<LocalCluster>> {
    if cluster_file(dir).exists() {
        return read_cluster(dir).map(Some);
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let mut nodes = Vec::new();
    let mut control: Vec<ControlMember> = Vec::new();
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for node_dir in paths {
        let config = node_dir.join("config.yaml");
        if !config.is_file() {
            continue;
        }
        let cfg = NodeConfig::load(&config).with_context(|| {
            format!("{} holds a node config that cannot be read", dir.display())
        })?;
        let Some(quic) = cfg.cluster.listen.clone() else {
            continue;
        };
        if control.is_empty() {
            control = cfg.control.members.clone();
        }
        nodes.push(LocalNode {
            id: cfg.node_id,
            site: cfg.site.clone(),
            pid: 0,
            http: cfg.http.clone(),
            quic,
            data_dir: cfg.data_dir.clone(),
            config,
            log: node_dir.join("node.log"),
        });
    }
    if nodes.is_empty() {
        return Ok(None);
    }
    let mut sites = BTreeMap::new();
    for n in &nodes {
        *sites.entry(n.site.clone()).or_insert(0) += 1;
    }
    let first = sites.keys().next().cloned().unwrap_or_default();
    let voters = control
        .iter()
        .filter(|m| m.voter && m.site == first)
        .count();
    Ok(Some(LocalCluster {
        sites,
        nodes,
        certs_dir: dir.join("certs"),
        control_voters_per_site: if control.is_empty() { 1 } else { voters },
    }))
}

fn sites_text(sites: &BTreeMap<String, usize>) -> String {
    sites
        .iter()
        .map(|(s, n)| format!("--site {s}:{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The cluster already in `dir`, checked against the options: same sites,
/// same control group, every port still free.
fn reuse(dir: &Path, s: LocalCluster, opts: &UpOptions) -> anyhow::Result<LocalCluster> {
    let d = dir.display();
    let fresh = format!(
        "`strait local up --dir {d} --fresh {}` starts a new cluster instead (and deletes the data of this one)",
        if opts.sites.is_empty() {
            sites_text(&s.sites)
        } else {
            sites_text(&opts.sites.iter().cloned().collect())
        }
    );
    if !opts.sites.is_empty() {
        let want: BTreeMap<String, usize> = opts.sites.iter().cloned().collect();
        if want != s.sites {
            bail!(
                "{d} holds a local cluster with {}; run `strait local up --dir {d}` to start it again (the --site flags may be left out), or {fresh}",
                sites_text(&s.sites)
            );
        }
    }
    if let Some(v) = opts.control_voters_per_site
        && s.sites.len() > 1
        && v != s.control_voters_per_site
    {
        bail!(
            "{d} holds a local cluster with {} control-group voters per site, not {v}; leave out --control-voters-per-site, or {fresh}",
            s.control_voters_per_site
        );
    }
    for n in &s.nodes {
        for (what, addr, tcp) in [("HTTP", &n.http, true), ("QUIC", &n.quic, false)] {
            let free = if tcp {
                std::net::TcpListener::bind(addr.as_str()).is_ok()
            } else {
                std::net::UdpSocket::bind(addr.as_str()).is_ok()
            };
            if !free {
                let port = addr.rsplit_once(':').map_or(addr.as_str(), |(_, p)| p);
                bail!(
                    "port {port} ({what} of node {}, {addr}) is taken by another process; the node must keep it, since its Raft state names its peers by address. Stop that process and run this again, or {fresh}",
                    n.name()
                );
            }
        }
    }
    Ok(s)
}

/// A new cluster: free ports for every node.
fn new_layout(dir: &Path, opts: &UpOptions) -> anyhow::Result<LocalCluster> {
    if opts.sites.is_empty() {
        bail!(
            "give at least one --site NAME:COUNT (there is no local cluster in {} to start again)",
            dir.display()
        );
    }
    let mut nodes = Vec::new();
    for (site, count) in &opts.sites {
        for id in 1..=*count as u64 {
            let node_dir = dir.join(format!("{site}-{id}"));
            nodes.push(LocalNode {
                id,
                site: site.clone(),
                pid: 0,
                http: format!("127.0.0.1:{}", free_loopback_port()?),
                quic: format!("127.0.0.1:{}", free_loopback_port()?),
                data_dir: node_dir.join("data"),
                config: node_dir.join("config.yaml"),
                log: node_dir.join("node.log"),
            });
        }
    }
    Ok(LocalCluster {
        sites: opts.sites.iter().cloned().collect(),
        nodes,
        certs_dir: dir.join("certs"),
        control_voters_per_site: opts.control_voters_per_site.unwrap_or(1),
    })
}

fn node_dir(n: &LocalNode) -> PathBuf {
    n.config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| n.data_dir.clone())
}

fn node_certs_dir(n: &LocalNode) -> PathBuf {
    node_dir(n).join("certs")
}

fn member(n: &LocalNode) -> Member {
    Member {
        id: n.id,
        raft_addr: n.quic.clone(),
        http_addr: n.http.clone(),
    }
}

/// The generated config of node `n` (before `--extra`).
fn node_config(c: &LocalCluster, n: &LocalNode) -> NodeConfig {
    let of_site = |site: &str| -> Vec<Member> {
        c.nodes
            .iter()
            .filter(|m| m.site == site)
            .map(member)
            .collect()
    };
    let mut cfg = NodeConfig {
        node_id: n.id,
        site: n.site.clone(),
        data_dir: n.data_dir.clone(),
        http: n.http.clone(),
        dev: true,
        ..NodeConfig::default()
    };
    cfg.cluster.listen = Some(n.quic.clone());
    cfg.cluster.certs_dir = Some(node_certs_dir(n));
    cfg.cluster.initial_members = of_site(&n.site);
    cfg.federation.links = c
        .sites
        .keys()
        .filter(|s| **s != n.site)
        .map(|s| (s.clone(), of_site(s)))
        .collect();
    if c.sites.len() > 1 && c.control_voters_per_site > 0 {
        for site in c.sites.keys() {
            for (i, m) in c.nodes.iter().filter(|m| m.site == *site).enumerate() {
                cfg.control.members.push(ControlMember {
                    site: site.clone(),
                    id: m.id,
                    raft_addr: m.quic.clone(),
                    http_addr: m.http.clone(),
                    voter: i < c.control_voters_per_site,
                });
            }
        }
    }
    cfg
}

/// Start every node of `cluster`, record the pids and wait until each is
/// ready; on failure stop the nodes started.
async fn start(
    dir: &Path,
    mut cluster: LocalCluster,
    timeout: Duration,
) -> anyhow::Result<LocalCluster> {
    let exe = std::env::current_exe().context("cannot find the strait binary")?;
    let mut started = Vec::new();
    let mut result = Ok(());
    for n in &mut cluster.nodes {
        match spawn_node(&exe, &n.config, &n.log) {
            Ok(pid) => {
                n.pid = pid;
                started.push(pid);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        result = write_cluster(dir, &cluster);
    }
    if result.is_ok() {
        result = wait_ready(&cluster, timeout).await;
    }
    match result {
        Ok(()) => Ok(cluster),
        Err(e) => {
            stop_pids(&started, STOP_GRACE).await;
            Err(e.context(format!(
                "local up failed; the {} nodes it started were stopped (the data is kept: fix the cause and run it again)",
                started.len()
            )))
        }
    }
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

/// The last `n` lines of a log file, indented (empty if unreadable).
fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("\n    {l}"))
        .collect()
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
            // Ports are chosen by binding and releasing them, so another
            // process may have taken one before the node bound it: a node
            // counts as ready only when it runs and answers as itself.
            if ok && alive(n.pid) {
                match answers_as(&client, n).await {
                    Identity::Itself => break,
                    Identity::Unknown => {}
                    Identity::Other(who) => bail!(
                        "node {} cannot use HTTP address {}: {who} answers there (a port taken \
                         after `local up` chose it); run `strait local up --fresh` to choose new ports",
                        n.name(),
                        n.http
                    ),
                }
            }
            if !alive(n.pid) {
                bail!(
                    "node {} (pid {}) exited during start; the end of {}:{}",
                    n.name(),
                    n.pid,
                    n.log.display(),
                    log_tail(&n.log, 5)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} not ready (no Raft leader) after {timeout:?}; see {}",
                    n.name(),
                    n.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Who answers at a node's HTTP address.
enum Identity {
    Itself,
    /// Not known yet (no answer, or not JSON).
    Unknown,
    /// Another node or another program; what it is.
    Other(String),
}

async fn answers_as(client: &reqwest::Client, n: &LocalNode) -> Identity {
    let body: serde_json::Value = match client
        .get(format!("http://{}/v1/cluster", n.http))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => match r.json().await {
            Ok(v) => v,
            Err(_) => return Identity::Other("a program that is not a Strait node".into()),
        },
        Ok(r) => {
            return Identity::Other(format!("a program answering {} to /v1/cluster", r.status()));
        }
        Err(_) => return Identity::Unknown,
    };
    let same =
        body["site"].as_str() == Some(n.site.as_str()) && body["nodeId"].as_u64() == Some(n.id);
    if same {
        Identity::Itself
    } else {
        Identity::Other(format!("node {} of site {}", body["nodeId"], body["site"]))
    }
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

/// SIGTERM to `pids`, then SIGKILL to those still running after `grace`.
async fn stop_pids(pids: &[u32], grace: Duration) {
    for &pid in pids {
        if alive(pid) {
            signal(pid, "TERM");
        }
    }
    let deadline = Instant::now() + grace;
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for &pid in pids {
        if alive(pid) {
            signal(pid, "KILL");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The running processes of the cluster's nodes: (index in `nodes`, pid).
/// Found by the config file or data directory they run with, so a node
/// restarted by hand (`strait serve --config DIR/<site>-<id>/config.yaml`)
/// is found as well as one `up` started.
pub fn running_nodes(c: &LocalCluster) -> Vec<(usize, u32)> {
    let procs = procs::serve_processes();
    let mut out = Vec::new();
    for (i, n) in c.nodes.iter().enumerate() {
        for p in &procs {
            if procs::runs(p, &n.config, &n.data_dir) {
                out.push((i, p.pid));
            }
        }
    }
    out
}

/// Other `strait serve` processes running with data directory `data_dir`.
pub fn processes_using_data_dir(data_dir: &Path) -> Vec<u32> {
    let abs = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    procs::serve_processes()
        .into_iter()
        .filter(|p| procs::uses_data_dir(p, &abs))
        .map(|p| p.pid)
        .collect()
}

/// Delete what `up` created in `dir`: `cluster.json`, the certificates and
/// every node's directory (config, data, log).
fn purge(dir: &Path, c: &LocalCluster) -> anyhow::Result<()> {
    let mut paths = vec![
        cluster_file(dir),
        dir.join("cluster.json.tmp"),
        c.certs_dir.clone(),
    ];
    paths.extend(c.nodes.iter().map(node_dir));
    for p in paths {
        // Only inside the folder, whatever cluster.json says.
        if !p.starts_with(dir) || p == dir {
            continue;
        }
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        match r {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot delete {}", p.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// What `down` did.
#[derive(Debug)]
pub struct Stopped {
    /// The nodes of the folder.
    pub nodes: Vec<LocalNode>,
    /// The processes stopped: node name and pid.
    pub stopped: Vec<(String, u32)>,
}

/// Stop every node of the local cluster in `dir` (SIGTERM, then SIGKILL
/// after `grace`): every process running one of its configs or data
/// directories. `cluster.json` and the data stay (`up` starts the same
/// cluster again) unless `purge`.
pub async fn down(dir: &Path, grace: Duration, purge_after: bool) -> anyhow::Result<Stopped> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let Some(cluster) = stored_cluster(&dir)? else {
        bail!(
            "no local cluster in {} (no cluster.json, no node configs)",
            dir.display()
        );
    };
    let running = running_nodes(&cluster);
    let pids: Vec<u32> = running.iter().map(|(_, p)| *p).collect();
    stop_pids(&pids, grace).await;
    if purge_after {
        purge(&dir, &cluster)?;
    }
    Ok(Stopped {
        stopped: running
            .iter()
            .map(|(i, p)| (cluster.nodes[*i].name(), *p))
            .collect(),
        nodes: cluster.nodes,
    })
}

/// `strait cluster status --dir D`: every node of the folder's cluster,
/// whether it runs, its role, and each site's leader (asked of the running
/// nodes).
pub async fn dir_status(dir: &Path) -> anyhow::Result<Value> {
    let Some(cluster) = stored_cluster(dir)? else {
        bail!(
            "no local cluster in {} (no cluster.json, no node configs)",
            dir.display()
        );
    };
    let running = running_nodes(&cluster);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let mut nodes = Vec::new();
    let mut sites = serde_json::Map::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        let pid = running.iter().find(|(j, _)| *j == i).map(|(_, p)| *p);
        let mut role = Value::Null;
        if pid.is_some()
            && let Ok(r) = client
                .get(format!("http://{}/v1/cluster", n.http))
                .send()
                .await
            && let Ok(v) = r.json::<Value>().await
        {
            role = v["role"].clone();
            let site = sites
                .entry(n.site.clone())
                .or_insert_with(|| json!({"leader": null, "term": null}));
            if v["leader"].is_u64() && site["term"].as_u64() <= v["term"].as_u64() {
                site["leader"] = v["leader"].clone();
                site["term"] = v["term"].clone();
            }
        }
        nodes.push(json!({
            "id": n.id,
            "site": n.site,
            "pid": pid,
            "running": pid.is_some(),
            "role": role,
            "http": n.http,
            "quic": n.quic,
        }));
    }
    for s in cluster.sites.keys() {
        sites
            .entry(s.clone())
            .or_insert_with(|| json!({"leader": null, "term": null}));
    }
    Ok(json!({"dir": dir, "sites": sites, "nodes": nodes}))
}

/// The terminal form of [`dir_status`].
pub fn dir_status_table(v: &Value) -> String {
    let mut out = String::new();
    let nodes = v["nodes"].as_array().map(Vec::as_slice).unwrap_or_default();
    for (site, s) in v["sites"].as_object().into_iter().flatten() {
        let of_site: Vec<&Value> = nodes
            .iter()
            .filter(|n| n["site"] == site.as_str())
            .collect();
        let up = of_site.iter().filter(|n| n["running"] == true).count();
        let leader = of_site.iter().find(|n| n["id"] == s["leader"]);
        match leader {
            Some(l) => out.push_str(&format!(
                "site {site}: leader {site}-{} (http://{}), term {}\n",
                l["id"],
                l["http"].as_str().unwrap_or("?"),
                s["term"]
            )),
            None => out.push_str(&format!(
                "site {site}: no leader ({up} of {} nodes running)\n",
                of_site.len()
            )),
        }
        for n in of_site {
            let name = format!("{site}-{}", n["id"]);
            match n["pid"].as_u64() {
                Some(pid) => out.push_str(&format!(
                    "  {name:<10} {:<10} pid {pid:<7} http://{}  quic {}\n",
                    n["role"].as_str().unwrap_or("no answer"),
                    n["http"].as_str().unwrap_or(""),
                    n["quic"].as_str().unwrap_or("")
                )),
                None => out.push_str(&format!("  {name:<10} stopped\n")),
            }
        }
    }
    out
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
        let flag = if days < 0 {
            "  EXPIRED: issue a new one"
        } else if days < crate::cluster::certs_watch::WARN_BEFORE_DAYS {
            "  EXPIRES SOON: issue a new one"
        } else {
            ""
        };
        out.push_str(&format!("  certificate expires in {days} days{flag}\n"));
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
