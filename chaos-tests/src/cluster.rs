//! A site cluster of real `strait` processes, started with `strait local up`
//! (certificates, free ports, one process per node) and driven from the
//! outside: kill -9, restart on the same data, add nodes that join over
//! QUIC, ask who leads.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{NodeClient, free_port, strait_bin};

/// One node of a [`LocalCluster`].
#[derive(Debug)]
pub struct ClusterNode {
    /// Node id in its site.
    pub id: u64,
    /// Site.
    pub site: String,
    /// HTTP address (`host:port`).
    pub http: String,
    /// QUIC address.
    pub quic: String,
    /// Config file.
    pub config: PathBuf,
    /// Log file (stdout and stderr of every run).
    pub log: PathBuf,
    /// Pid of a process started by `strait local up` (not our child).
    foreign_pid: Option<u32>,
    /// A process we started (restart, new node).
    child: Option<Child>,
    /// Starts so far.
    pub starts: u32,
}

impl ClusterNode {
    /// `http://host:port`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Is the process running?
    pub fn is_running(&mut self) -> bool {
        if let Some(c) = self.child.as_mut() {
            return matches!(c.try_wait(), Ok(None));
        }
        self.foreign_pid.is_some_and(pid_alive)
    }

    /// Pid of the running process, if any (for `/proc/<pid>/status`).
    pub fn pid(&mut self) -> Option<u32> {
        if !self.is_running() {
            return None;
        }
        match &self.child {
            Some(c) => Some(c.id()),
            None => self.foreign_pid,
        }
    }

    /// The node's data directory (`data_dir` of its config).
    pub fn data_dir(&self) -> anyhow::Result<PathBuf> {
        let cfg: serde_yaml::Value = serde_yaml::from_str(
            &std::fs::read_to_string(&self.config)
                .with_context(|| format!("read {}", self.config.display()))?,
        )?;
        let dir = cfg["data_dir"]
            .as_str()
            .with_context(|| format!("no data_dir in {}", self.config.display()))?;
        Ok(PathBuf::from(dir))
    }

    /// SIGKILL the node and wait until it is gone. A killed process can
    /// take seconds to die (a SIGKILL waits for an `fsync` under way on a
    /// busy disk) and holds its ports and its state database's lock until
    /// then: a restart or a read of its data before that fails (CI: "address
    /// in use" for the restarted node, "Database already open" for a test
    /// reading a killed node's state). Errors if it outlives [`KILL_WAIT`].
    fn kill_9(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = self.foreign_pid.take() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .stderr(Stdio::null())
                .status();
            let start = Instant::now();
            while pid_alive(pid) {
                anyhow::ensure!(
                    start.elapsed() < KILL_WAIT,
                    "node {}-{} (pid {pid}) still alive {KILL_WAIT:?} after SIGKILL",
                    self.site,
                    self.id
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            if start.elapsed() > Duration::from_secs(1) {
                eprintln!(
                    "chaos harness: node {}-{} (pid {pid}) took {:?} to die after SIGKILL",
                    self.site,
                    self.id,
                    start.elapsed()
                );
            }
        }
        Ok(())
    }
}

/// The TCP sockets on `addr`'s port, as `ss -tanp` shows them (for the
/// evidence of a port taken at restart).
fn sockets_on(addr: &str) -> String {
    let port = addr.rsplit(':').next().unwrap_or("");
    let out = Command::new("ss")
        .args(["-tanp"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(&format!(":{port} ")))
        .collect();
    if lines.is_empty() {
        "none left".into()
    } else {
        lines.join(" | ")
    }
}

/// How long a SIGKILLed node may take to die.
const KILL_WAIT: Duration = Duration::from_secs(60);

fn pid_alive(pid: u32) -> bool {
    // Every thread, not only the main one: after SIGKILL the main thread
    // can be a zombie while others are still finishing a system call (an
    // `fsync`), and the process's files (its state database's lock) and
    // sockets stay open until the last thread is gone.
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
    })
}

/// A local cluster of node processes.
pub struct LocalCluster {
    root: TempDir,
    dir: PathBuf,
    bin: PathBuf,
    /// The nodes, in `cluster.json` order (then added ones).
    pub nodes: Vec<ClusterNode>,
    timeout: Duration,
    /// [`Self::keep_files`] was called.
    keep: bool,
}

impl LocalCluster {
    /// `strait local up --site SITE:COUNT` for each site, with `extra` merged
    /// into every node's config.
    ///
    /// `local up` picks free ports and releases them before the nodes bind
    /// them, so another process (a receiver or node of a test running at the
    /// same time) can take one in between: that node then exits, and a
    /// readiness check on its HTTP port may be answered by the intruder.
    /// Every node is therefore checked to be running and to answer
    /// `/v1/cluster` with its own node id and site; if one is not, the
    /// cluster is stopped and started again on new ports (three tries).
    pub async fn up(sites: &[(&str, usize)], extra: Option<Value>) -> anyhow::Result<LocalCluster> {
        let bin = strait_bin()?;
        let root = tempfile::Builder::new()
            .prefix("strait-cluster-")
            .tempdir()
            .context("temp dir")?;
        let mut attempt = 0;
        let (dir, nodes) = loop {
            attempt += 1;
            let dir = root.path().join(if attempt == 1 {
                "cluster".to_string()
            } else {
                format!("cluster-try{attempt}")
            });
            let mut nodes = local_up(&bin, root.path(), &dir, sites, extra.as_ref()).await?;
            match verify_identities(&mut nodes).await {
                Ok(()) => break (dir, nodes),
                Err(e) if attempt < 3 => {
                    eprintln!(
                        "chaos harness: local cluster in {} is not what was started ({e:#}); starting it again on new ports",
                        dir.display()
                    );
                    for n in &mut nodes {
                        let _ = n.kill_9();
                    }
                }
                Err(e) => {
                    for n in &mut nodes {
                        let _ = n.kill_9();
                    }
                    return Err(e.context(format!(
                        "local cluster in {} (tried {attempt} times)",
                        dir.display()
                    )));
                }
            }
        };
        let mut c = LocalCluster {
            root,
            dir,
            bin,
            nodes,
            timeout: Duration::from_secs(30),
            keep: false,
        };
        if std::env::var_os("STRAIT_CHAOS_KEEP").is_some() {
            c.keep_files();
        }
        Ok(c)
    }

    /// Keep the directory (configs, data, logs) after the test.
    pub fn keep_files(&mut self) {
        self.keep = true;
        self.root.disable_cleanup(true);
        eprintln!("cluster files kept in {}", self.dir.display());
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn node(&self, id: u64) -> anyhow::Result<&ClusterNode> {
        Ok(&self.nodes[self.index(id)?])
    }

    fn node_mut(&mut self, id: u64) -> anyhow::Result<&mut ClusterNode> {
        let i = self.index(id)?;
        Ok(&mut self.nodes[i])
    }

    /// A client for node `id`.
    pub fn client(&self, id: u64) -> anyhow::Result<NodeClient> {
        NodeClient::new(&self.node(id)?.base_url(), self.timeout)
    }

    /// Clients for every node.
    pub fn clients(&self) -> anyhow::Result<Vec<NodeClient>> {
        self.nodes
            .iter()
            .map(|n| NodeClient::new(&n.base_url(), self.timeout))
            .collect()
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// `GET /v1/cluster` of node `id`.
    pub async fn status(&self, id: u64) -> anyhow::Result<Value> {
        let c = NodeClient::new(&self.node(id)?.base_url(), Duration::from_secs(2))?;
        let r = c.get_json("/v1/cluster").await?;
        r.expect_status(200, "GET /v1/cluster")?;
        r.json().context("cluster status is JSON")
    }

    /// Wait until every running node among `among` names the same leader,
    /// which is running and says it leads; returns it.
    pub async fn leader_among(&mut self, among: &[u64], timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut seen = Vec::new();
            for id in among {
                let running = self.node_mut(*id)?.is_running();
                if !running {
                    continue;
                }
                match self.status(*id).await {
                    Ok(s) => seen.push((*id, s["leader"].as_u64(), s["role"].clone())),
                    Err(_) => seen.push((*id, None, Value::Null)),
                }
            }
            if let Some((_, Some(l), _)) = seen.first() {
                let agree = seen.iter().all(|(_, x, _)| *x == Some(*l));
                let leads = seen
                    .iter()
                    .any(|(id, _, role)| id == l && role == &json!("leader"));
                if agree && leads {
                    return Ok(*l);
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no agreed leader after {timeout:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// [`Self::leader_among`] all nodes.
    pub async fn leader(&mut self, timeout: Duration) -> anyhow::Result<u64> {
        let ids = self.ids();
        self.leader_among(&ids, timeout).await
    }

    /// A client for the node at `idx` in [`Self::nodes`] (node ids repeat
    /// across sites).
    pub fn client_at(&self, idx: usize) -> anyhow::Result<NodeClient> {
        let n = self.nodes.get(idx).context("no such node index")?;
        NodeClient::new(&n.base_url(), self.timeout)
    }

    /// Indexes (in [`Self::nodes`]) of the nodes of `site`.
    pub fn site_nodes(&self, site: &str) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].site == site)
            .collect()
    }

    /// The index (in `nodes`) of the node of `site` that answers as its
    /// leader, waiting up to 20 s for one.
    pub async fn site_leader(&self, site: &str) -> anyhow::Result<usize> {
        crate::wait_for(
            &format!("a leader at {site}"),
            Duration::from_secs(20),
            Duration::from_millis(50),
            || async {
                for i in self.site_nodes(site) {
                    let client =
                        NodeClient::new(&self.nodes[i].base_url(), Duration::from_secs(2)).ok()?;
                    if let Ok(r) = client.get_json("/v1/cluster").await
                        && r.json().is_some_and(|v| v["role"] == json!("leader"))
                    {
                        return Some(i);
                    }
                }
                None
            },
        )
        .await
    }

    /// SIGKILL the node at `idx`.
    pub fn kill_9_at(&mut self, idx: usize) -> anyhow::Result<()> {
        self.nodes
            .get_mut(idx)
            .context("no such node index")?
            .kill_9()
    }

    /// Start the node at `idx` again on its data; waits for `/healthz`.
    pub async fn restart_at(&mut self, idx: usize) -> anyhow::Result<()> {
        let bin = self.bin.clone();
        let node = self.nodes.get_mut(idx).context("no such node index")?;
        node.kill_9()?;
        let url = node.base_url();
        // A restarted node binds the port it had. Now and then (about one
        // run in four of `archive_replay` here) that port is still taken
        // when it starts, though the killed process is gone and nothing
        // listens there a moment later: the node exits with "address in
        // use". Who held it is recorded (`ss`) and the start is tried again,
        // at most three times.
        for attempt in 1..=3 {
            node.child = Some(spawn(&bin, &node.config, &node.log, &[])?);
            node.starts += 1;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if wait_healthy(&url, Duration::from_millis(500)).await.is_ok() {
                    return Ok(());
                }
                if !node.is_running() {
                    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                    let in_use = log
                        .lines()
                        .last()
                        .is_some_and(|l| l.contains("address is in use"));
                    anyhow::ensure!(
                        in_use && attempt < 3,
                        "node {}-{} exited at restart (attempt {attempt}); see {}",
                        node.site,
                        node.id,
                        node.log.display()
                    );
                    eprintln!(
                        "chaos harness: node {}-{}: {} was in use at restart (attempt {attempt}); sockets on it: {}",
                        node.site,
                        node.id,
                        node.http,
                        sockets_on(&node.http)
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "{url} not healthy after 30s");
            }
        }
        anyhow::bail!("{url} not healthy after three starts")
    }

    fn index(&self, id: u64) -> anyhow::Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .with_context(|| format!("no node {id}"))
    }

    /// Node `id`.
    pub fn node_by_id(&mut self, id: u64) -> anyhow::Result<&mut ClusterNode> {
        self.node_mut(id)
    }

    /// SIGKILL node `id`.
    pub fn kill_9(&mut self, id: u64) -> anyhow::Result<()> {
        let i = self.index(id)?;
        self.kill_9_at(i)
    }

    /// Start node `id` again on its data (after [`Self::kill_9`]); waits for `/healthz`.
    pub async fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let i = self.index(id)?;
        self.restart_at(i).await
    }

    /// Create node `id` of `site` (certificate, config) and start it with
    /// `--join` through node `via`; returns once its HTTP API is up (it joins
    /// in the background; see [`Self::wait_voters`]).
    pub async fn add_node(&mut self, site: &str, id: u64, via: u64) -> anyhow::Result<()> {
        let via_url = self.node(via)?.base_url();
        let node_dir = self.dir.join(format!("{site}-{id}"));
        let certs = node_dir.join("certs");
        let status = Command::new(&self.bin)
            .args(["cert", "issue", "--ca"])
            .arg(self.dir.join("certs"))
            .args(["--node-id", &id.to_string(), "--site", site])
            .args(["--ip", "127.0.0.1", "--dns", "localhost", "--out"])
            .arg(&certs)
            .stdout(Stdio::null())
            .status()
            .context("strait cert issue")?;
        anyhow::ensure!(status.success(), "strait cert issue failed");
        let http = format!("127.0.0.1:{}", free_port()?);
        let quic = format!("127.0.0.1:{}", free_port()?);
        // Same settings as the others, but joining instead of bootstrapping.
        let template = &self.nodes.first().context("no nodes")?.config;
        let mut cfg: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(template)?)?;
        cfg["node_id"] = id.into();
        cfg["site"] = site.into();
        cfg["http"] = http.clone().into();
        cfg["data_dir"] = node_dir.join("data").display().to_string().into();
        cfg["cluster"]["listen"] = quic.clone().into();
        cfg["cluster"]["certs_dir"] = certs.display().to_string().into();
        cfg["cluster"]["initial_members"] = serde_yaml::Value::Sequence(Vec::new());
        cfg["cluster"]["join"] = via_url.into();
        let config = node_dir.join("config.yaml");
        std::fs::write(&config, serde_yaml::to_string(&cfg)?)?;
        let log = node_dir.join("node.log");
        let child = spawn(&self.bin, &config, &log, &[])?;
        self.nodes.push(ClusterNode {
            id,
            site: site.into(),
            http: http.clone(),
            quic,
            config,
            log,
            foreign_pid: None,
            child: Some(child),
            starts: 1,
        });
        wait_healthy(&format!("http://{http}"), Duration::from_secs(30)).await
    }

    /// Wait until node `via`'s view of the membership has exactly `voters`.
    pub async fn wait_voters(
        &self,
        via: u64,
        voters: &[u64],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut want = voters.to_vec();
        want.sort_unstable();
        loop {
            let mut have: Vec<u64> = match self.status(via).await {
                Ok(s) => s["nodes"]
                    .as_array()
                    .map(|ns| {
                        ns.iter()
                            .filter(|n| n["voter"] == json!(true))
                            .filter_map(|n| n["id"].as_u64())
                            .collect()
                    })
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            have.sort_unstable();
            if have == want {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "voters are {have:?}, expected {want:?} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stop node `id` for good and forget it (after it left the site).
    pub fn remove(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill_9(id)?;
        self.nodes.retain(|n| n.id != id);
        Ok(())
    }

    /// Fail when any node's log shows a panic.
    pub fn ensure_no_panic(&self) -> anyhow::Result<()> {
        for n in &self.nodes {
            let out = std::fs::read_to_string(&n.log).unwrap_or_default();
            if let Some(pos) = out.find("panicked at") {
                let start = out[..pos].rfind('\n').map_or(0, |p| p + 1);
                let end = out.len().min(pos + 2000);
                anyhow::bail!(
                    "node {} panicked ({}):\n{}",
                    n.id,
                    n.log.display(),
                    out.get(start..end).unwrap_or("")
                );
            }
        }
        Ok(())
    }

    /// The log of node `id`.
    pub fn log(&self, id: u64) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(&self.node(id)?.log).unwrap_or_default())
    }
}

impl LocalCluster {
    /// Inside an [`crate::evidence`] case (or when panicking): ask every
    /// running node for its status, write the answers next to its log and
    /// hand the directory over instead of deleting it.
    fn keep_evidence(&mut self) {
        let Some(case) = crate::evidence::wanted() else {
            return;
        };
        for n in &mut self.nodes {
            let dir = n
                .log
                .parent()
                .map_or_else(|| self.dir.clone(), Path::to_path_buf);
            let name = format!("{}-{}", n.site, n.id);
            if n.is_running() {
                crate::evidence::snapshot_node(&n.http, &dir, &name);
            } else {
                let _ = std::fs::write(dir.join(format!("{name}.cluster.json")), "not running\n");
            }
        }
        crate::evidence::write_note(
            &self.dir,
            "a local cluster (see cluster.json; each node's log, config, data and status are in its <site>-<id> directory)",
        );
        if self.keep {
            return;
        }
        self.root.disable_cleanup(true);
        crate::evidence::hand_over(case, self.root.path());
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.keep_evidence();
        for n in &mut self.nodes {
            let _ = n.kill_9();
        }
    }
}

fn spawn(bin: &Path, config: &Path, log: &Path, extra: &[&str]) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.arg("serve").arg("--config").arg(config).args(extra);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

async fn wait_healthy(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let c = NodeClient::new(url, Duration::from_secs(2))?;
    let deadline = Instant::now() + timeout;
    loop {
        if matches!(c.healthz().await, Ok(200)) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{url} not healthy after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run `strait local up` into `dir`; the nodes it started.
async fn local_up(
    bin: &Path,
    root: &Path,
    dir: &Path,
    sites: &[(&str, usize)],
    extra: Option<&Value>,
) -> anyhow::Result<Vec<ClusterNode>> {
    let mut cmd = Command::new(bin);
    cmd.arg("local").arg("up").arg("--dir").arg(dir);
    for (s, n) in sites {
        cmd.arg("--site").arg(format!("{s}:{n}"));
    }
    if let Some(extra) = extra {
        let p = root.join("extra.yaml");
        std::fs::write(&p, serde_yaml::to_string(extra)?)?;
        cmd.arg("--extra").arg(p);
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .context("running strait local up")?;
    anyhow::ensure!(
        out.status.success(),
        "strait local up failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let file: Value = serde_json::from_slice(&std::fs::read(dir.join("cluster.json"))?)
        .context("cluster.json")?;
    let mut nodes = Vec::new();
    for n in file["nodes"].as_array().context("cluster.json: nodes")? {
        let s = |k: &str| n[k].as_str().unwrap_or_default().to_string();
        nodes.push(ClusterNode {
            id: n["id"].as_u64().context("node id")?,
            site: s("site"),
            http: s("http"),
            quic: s("quic"),
            config: PathBuf::from(s("config")),
            log: PathBuf::from(s("log")),
            foreign_pid: n["pid"].as_u64().map(|p| p as u32),
            child: None,
            starts: 1,
        });
    }
    Ok(nodes)
}

/// `Err` unless every node is running and its HTTP port is answered by
/// itself (`/v1/cluster` names its node id, site and QUIC address).
pub async fn verify_identities(nodes: &mut [ClusterNode]) -> anyhow::Result<()> {
    for n in nodes.iter_mut() {
        anyhow::ensure!(
            n.is_running(),
            "node {} of site {} is not running (a port it was given may have been taken before it bound it; see {})",
            n.id,
            n.site,
            n.log.display()
        );
        let c = NodeClient::new(&n.base_url(), Duration::from_secs(5))?;
        let s = c
            .get_json("/v1/cluster")
            .await
            .with_context(|| format!("node {} of site {}: GET /v1/cluster", n.id, n.site))?;
        let v = s.json().unwrap_or(Value::Null);
        let me = v["nodes"].as_array().and_then(|ns| {
            ns.iter()
                .find(|x| x["id"] == v["nodeId"])
                .and_then(|x| x["raftAddr"].as_str())
        });
        anyhow::ensure!(
            v["nodeId"] == json!(n.id) && v["site"] == json!(n.site) && me == Some(n.quic.as_str()),
            "http://{} should be node {} of site {} at {}, but answers /v1/cluster with {} {}",
            n.http,
            n.id,
            n.site,
            n.quic,
            s.status,
            s.text().chars().take(300).collect::<String>()
        );
    }
    Ok(())
}
