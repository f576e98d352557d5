//! One `strait` process driven from the outside, and an HTTP client for it.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use reqwest::Method;
use serde_json::Value;
use tempfile::TempDir;

use crate::free_port;

/// The `strait` binary: `$STRAIT_BIN`, else `<workspace>/target/debug/strait`.
/// Fails (never skips) when it does not exist.
pub fn strait_bin() -> anyhow::Result<PathBuf> {
    strait_bin_from(std::env::var_os("STRAIT_BIN"))
}

/// [`strait_bin`] with the value of `STRAIT_BIN` given.
pub fn strait_bin_from(env_value: Option<std::ffi::OsString>) -> anyhow::Result<PathBuf> {
    let path = match env_value {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("debug")
            .join("strait"),
    };
    if !path.is_file() {
        anyhow::bail!(
            "the strait binary was not found at {}: run `cargo build -p strait-node` first \
             (or point STRAIT_BIN at a built binary); these tests never skip",
            path.display()
        );
    }
    Ok(path)
}

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The binary; [`strait_bin`] when `None`.
    pub bin: Option<PathBuf>,
    /// Pass `--dev` (no auth, one-member group, bus `default`).
    pub dev: bool,
    /// Written as YAML next to the data dir and passed with `--config`.
    pub config: Option<Value>,
    /// Data directory; a fresh temporary directory when `None`.
    pub data_dir: Option<PathBuf>,
    /// HTTP port on 127.0.0.1; a free one when `None`.
    pub port: Option<u16>,
    /// More command-line arguments after the harness's own.
    pub extra_args: Vec<String>,
    /// Extra environment variables (`RUST_LOG` defaults to `info`).
    pub env: Vec<(String, String)>,
    /// How long to wait for `/readyz`.
    pub ready_timeout: Duration,
    /// Timeout of each HTTP request made through the client.
    pub request_timeout: Duration,
    /// Start the process with this soft `RLIMIT_FSIZE` (bytes) and
    /// `SIGXFSZ` ignored: a write that would take any file it writes past
    /// this size fails with `EFBIG`, the way a full disk fails one with
    /// `ENOSPC`. Needs `sh` and util-linux's `prlimit`; see
    /// [`StraitProcess::lift_file_size_limit`].
    pub file_size_limit: Option<u64>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            bin: None,
            dev: true,
            config: None,
            data_dir: None,
            port: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            ready_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            file_size_limit: None,
        }
    }
}

impl NodeOptions {
    /// `--dev` on a temporary data dir and a free port.
    pub fn dev() -> Self {
        NodeOptions::default()
    }

    /// With this config (JSON value written as YAML).
    pub fn config(mut self, config: Value) -> Self {
        self.config = Some(config);
        self
    }

    /// On this data directory.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// On this port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// One more command-line argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// See [`NodeOptions::file_size_limit`].
    pub fn file_size_limit(mut self, bytes: u64) -> Self {
        self.file_size_limit = Some(bytes);
        self
    }

    /// One more environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// A running (or killed) `strait` process. Dropping it kills the process.
pub struct StraitProcess {
    opts: NodeOptions,
    bin: PathBuf,
    root: Option<TempDir>,
    data_dir: PathBuf,
    log_path: PathBuf,
    config_path: Option<PathBuf>,
    port: u16,
    child: Option<Child>,
    client: NodeClient,
    starts: u32,
    /// [`Self::keep_files`] was called.
    keep: bool,
    /// Length of the log when the current run started.
    log_start: u64,
}

impl StraitProcess {
    /// `strait serve --dev` on a temporary data dir and a free port.
    pub async fn start_dev() -> anyhow::Result<StraitProcess> {
        StraitProcess::start(NodeOptions::dev()).await
    }

    /// Start a node and wait until `/readyz` answers 200.
    pub async fn start(opts: NodeOptions) -> anyhow::Result<StraitProcess> {
        let bin = match &opts.bin {
            Some(b) => b.clone(),
            None => strait_bin()?,
        };
        let (root, data_dir) = match &opts.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let mut root = tempfile::Builder::new()
                    .prefix("strait-chaos-")
                    .tempdir()
                    .context("creating a temporary directory")?;
                if std::env::var_os("STRAIT_CHAOS_KEEP").is_some_and(|v| !v.is_empty() && v != "0")
                {
                    root.disable_cleanup(true);
                }
                let d = root.path().join("data");
                (Some(root), d)
            }
        };
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let parent = data_dir
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let stem = data_dir
            .file_name()
            .map_or_else(|| "node".to_string(), |n| n.to_string_lossy().into_owned());
        let log_path = parent.join(format!("{stem}.stderr.log"));
        let config_path = match &opts.config {
            Some(cfg) => {
                let p = parent.join(format!("{stem}.config.yaml"));
                let yaml = serde_yaml::to_string(cfg).context("config to YAML")?;
                std::fs::write(&p, yaml).with_context(|| format!("writing {}", p.display()))?;
                Some(p)
            }
            None => None,
        };
        let fixed_port = opts.port.is_some();
        let port = match opts.port {
            Some(p) => p,
            None => free_port()?,
        };
        let client = NodeClient::new(&format!("http://127.0.0.1:{port}"), opts.request_timeout)?;
        let mut node = StraitProcess {
            opts,
            bin,
            root,
            data_dir,
            log_path,
            config_path,
            port,
            child: None,
            client,
            starts: 0,
            keep: false,
            log_start: 0,
        };
        // A free port can be taken between probing and binding: try others.
        let mut tries = 0;
        loop {
            tries += 1;
            match node.spawn_and_wait().await {
                Ok(()) => return Ok(node),
                Err(e) => {
                    let tail = node.stderr_tail(4096);
                    let in_use = tail.contains("in use") || tail.contains("AddrInUse");
                    if fixed_port || !in_use || tries >= 3 {
                        return Err(e);
                    }
                    node.port = free_port()?;
                    node.client = NodeClient::new(
                        &format!("http://127.0.0.1:{}", node.port),
                        node.opts.request_timeout,
                    )?;
                }
            }
        }
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        writeln!(
            log,
            "\n===== chaos harness: start #{} of {} on 127.0.0.1:{} =====",
            self.starts,
            self.data_dir.display(),
            self.port
        )?;
        self.log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let stdout = log.try_clone()?;
        let mut cmd = match self.opts.file_size_limit {
            // An ignored signal stays ignored across exec; `prlimit` sets
            // the soft limit only, so that it can be lifted later.
            Some(limit) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg("trap '' XFSZ; limit=$1; shift; exec prlimit --fsize=\"$limit\":unlimited -- \"$@\"")
                    .arg("sh")
                    .arg(limit.to_string())
                    .arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("serve");
        if self.opts.dev {
            cmd.arg("--dev");
        }
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--http")
            .arg(format!("127.0.0.1:{}", self.port));
        if let Some(p) = &self.config_path {
            cmd.arg("--config").arg(p);
        }
        cmd.args(&self.opts.extra_args);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(log));
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    async fn spawn_and_wait(&mut self) -> anyhow::Result<()> {
        self.spawn()?;
        self.wait_ready(self.opts.ready_timeout).await
    }

    /// Wait until `/readyz` answers 200; fails with the stderr tail when the
    /// process exits or the time runs out.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                anyhow::bail!(
                    "strait on port {} exited with {status} before it was ready; its stderr ({}) ends with:\n{}",
                    self.port,
                    self.log_path.display(),
                    self.stderr_tail(8192)
                );
            }
            if self.child.is_none() {
                anyhow::bail!("strait on port {} is not running", self.port);
            }
            let last = match self
                .client
                .request_with_timeout(Method::GET, "/readyz", &[], None, Duration::from_secs(1))
                .await
            {
                // Only our process counts: its port may have been taken by
                // another one between choosing and binding (this process
                // then exits with "in use"), and that one may answer too.
                Ok(r) if r.status == 200 && self.said_listening() => return Ok(()),
                Ok(r) if r.status == 200 => {
                    "/readyz answered 200, but this process has not said it listens".to_string()
                }
                Ok(r) => format!("/readyz answered {}: {}", r.status, r.text()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                self.kill_9()?;
                anyhow::bail!(
                    "strait on port {} was not ready after {timeout:?} (last: {last}); its stderr ({}) ends with:\n{}",
                    self.port,
                    self.log_path.display(),
                    self.stderr_tail(8192)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Has the current run printed `listening on http://` (after binding
    /// its port and opening its data)?
    fn said_listening(&self) -> bool {
        let read = || -> std::io::Result<bool> {
            let mut f = File::open(&self.log_path)?;
            f.seek(SeekFrom::Start(self.log_start))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf).contains("listening on http://"))
        };
        read().unwrap_or(false)
    }

    /// SIGKILL the process and reap it (no-op when it is not running).
    pub fn kill_9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL on unix.
            let _ = child.kill();
            child.wait().context("reaping the killed strait process")?;
        }
        Ok(())
    }

    /// Lift the running process's file size limit
    /// ([`NodeOptions::file_size_limit`]): the "disk" has room again. Later
    /// starts run without the limit.
    pub fn lift_file_size_limit(&mut self) -> anyhow::Result<()> {
        self.opts.file_size_limit = None;
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let status = Command::new("prlimit")
            .arg(format!("--pid={pid}"))
            .arg("--fsize=unlimited:unlimited")
            .status()
            .context("running prlimit")?;
        anyhow::ensure!(status.success(), "prlimit --pid {pid} failed: {status}");
        Ok(())
    }

    /// Wait (at most `timeout`) for the process to exit on its own; its
    /// exit status.
    pub async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().context("strait is not running")?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "strait on port {} did not exit within {timeout:?}; its stderr ends with:\n{}",
                self.port,
                self.stderr_tail(4096)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stop the process with SIGSTOP (it keeps its sockets but answers nothing).
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// Continue a paused process.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    fn signal(&mut self, sig: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("strait is not running")?;
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -{sig} {pid} failed: {status}");
        Ok(())
    }

    /// Kill (if running) and start again on the same data dir and port; waits
    /// until ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill_9()?;
        self.spawn_and_wait()
            .await
            .with_context(|| format!("restart #{} failed", self.starts))
    }

    /// Is the process alive (reaps it if it exited)?
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Keep the temporary data dir and log after the test (for diagnosis
    /// of a failure). Setting `STRAIT_CHAOS_KEEP=1` keeps them always.
    pub fn keep_files(&mut self) {
        self.keep = true;
        if let Some(root) = self.root.as_mut() {
            root.disable_cleanup(true);
        }
    }

    /// How many times the process was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// The HTTP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> &str {
        self.client.base_url()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where stdout and stderr of every run go.
    pub fn stderr_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `max_bytes` of the process's output.
    pub fn stderr_tail(&self, max_bytes: u64) -> String {
        let read = || -> std::io::Result<String> {
            let mut f = File::open(&self.log_path)?;
            let len = f.metadata()?.len();
            f.seek(SeekFrom::Start(len.saturating_sub(max_bytes)))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf).into_owned())
        };
        read().unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    /// A client for this node (stays valid across restarts).
    pub fn client(&self) -> NodeClient {
        self.client.clone()
    }

    /// See [`NodeClient::put_bus`].
    pub async fn put_bus(&self, bus: &str, body: Option<&Value>) -> anyhow::Result<HttpReply> {
        self.client.put_bus(bus, body).await
    }

    /// See [`NodeClient::put_rule`].
    pub async fn put_rule(&self, bus: &str, rule: &str, spec: &Value) -> anyhow::Result<HttpReply> {
        self.client.put_rule(bus, rule, spec).await
    }

    /// See [`NodeClient::post_structured`].
    pub async fn post_structured(&self, bus: &str, event: &Value) -> anyhow::Result<HttpReply> {
        self.client.post_structured(bus, event).await
    }

    /// See [`NodeClient::post_batch`].
    pub async fn post_batch(&self, bus: &str, events: &[Value]) -> anyhow::Result<HttpReply> {
        self.client.post_batch(bus, events).await
    }

    /// See [`NodeClient::post_binary`].
    pub async fn post_binary(
        &self,
        bus: &str,
        headers: &[(String, String)],
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> anyhow::Result<HttpReply> {
        self.client
            .post_binary(bus, headers, content_type, body)
            .await
    }

    /// See [`NodeClient::get_json`].
    pub async fn get_json(&self, path: &str) -> anyhow::Result<HttpReply> {
        self.client.get_json(path).await
    }
}

impl StraitProcess {
    /// Inside an [`crate::evidence`] case (or when panicking): ask the node
    /// for its status, write the answers next to its log and hand its
    /// temporary directory over instead of deleting it.
    fn keep_evidence(&mut self) {
        let Some(root) = self.root.as_mut() else {
            return;
        };
        let Some(case) = crate::evidence::wanted() else {
            return;
        };
        let dir = root.path().to_path_buf();
        if matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None))) {
            crate::evidence::snapshot_node(&format!("127.0.0.1:{}", self.port), &dir, "node");
        }
        crate::evidence::write_note(
            &dir,
            "one strait process (data/, data.stderr.log, node.*: its status)",
        );
        if self.keep || crate::keep_always() {
            return;
        }
        root.disable_cleanup(true);
        crate::evidence::hand_over(case, &dir);
    }
}

impl Drop for StraitProcess {
    fn drop(&mut self) {
        self.keep_evidence();
        let _ = self.kill_9();
    }
}

/// An HTTP answer, read whole.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl HttpReply {
    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `error.code` of an error body.
    pub fn error_code(&self) -> Option<String> {
        self.json()?
            .pointer("/error/code")?
            .as_str()
            .map(str::to_string)
    }

    /// `error.message` of an error body.
    pub fn error_message(&self) -> Option<String> {
        self.json()?
            .pointer("/error/message")?
            .as_str()
            .map(str::to_string)
    }

    /// `results` of an ingress answer.
    pub fn results(&self) -> Vec<Value> {
        self.json()
            .and_then(|v| v.get("results").and_then(Value::as_array).cloned())
            .unwrap_or_default()
    }

    /// `Err` describing the answer unless the status is `status`.
    pub fn expect_status(&self, status: u16, what: &str) -> anyhow::Result<&HttpReply> {
        anyhow::ensure!(
            self.status == status,
            "{what}: expected HTTP {status}, got {}: {}",
            self.status,
            self.text()
        );
        Ok(self)
    }

    /// `Err` unless this is a 4xx whose body is `{"error": {"code": non-empty
    /// string, "message": non-empty string}}`.
    pub fn expect_client_error(&self, what: &str) -> anyhow::Result<&HttpReply> {
        anyhow::ensure!(
            (400..500).contains(&self.status),
            "{what}: expected a 4xx, got {}: {}",
            self.status,
            self.text()
        );
        let code = self.error_code().unwrap_or_default();
        let message = self.error_message().unwrap_or_default();
        anyhow::ensure!(
            !code.is_empty() && !message.is_empty(),
            "{what}: HTTP {} without a JSON body {{\"error\": {{\"code\", \"message\"}}}}: {:?}",
            self.status,
            self.text()
        );
        Ok(self)
    }
}

/// HTTP access to one node, cheap to clone.
#[derive(Debug, Clone)]
pub struct NodeClient {
    base: String,
    http: reqwest::Client,
    timeout: Duration,
}

impl NodeClient {
    /// A client for `base` (`http://host:port`).
    pub fn new(base: &str, timeout: Duration) -> anyhow::Result<NodeClient> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        Ok(NodeClient {
            base: base.trim_end_matches('/').to_string(),
            http,
            timeout,
        })
    }

    /// `http://host:port`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Any request; `Err` only for transport failures and timeouts.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(String, String)],
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<HttpReply> {
        self.request_with_timeout(method, path, headers, body, self.timeout)
            .await
    }

    /// [`request`](Self::request) with its own timeout.
    pub async fn request_with_timeout(
        &self,
        method: Method,
        path: &str,
        headers: &[(String, String)],
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> anyhow::Result<HttpReply> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method.clone(), &url).timeout(timeout);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("{method} {url}: reading the body"))?;
        Ok(HttpReply {
            status,
            headers,
            body,
        })
    }

    /// `GET path`.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<HttpReply> {
        self.request(Method::GET, path, &[], None).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> anyhow::Result<HttpReply> {
        self.request(Method::DELETE, path, &[], None).await
    }

    /// A request with a JSON body.
    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<HttpReply> {
        self.request(
            method,
            path,
            &[("content-type".into(), "application/json".into())],
            Some(serde_json::to_vec(body)?),
        )
        .await
    }

    /// A request with a raw body and optional `Content-Type`.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> anyhow::Result<HttpReply> {
        let headers: Vec<(String, String)> = content_type
            .map(|c| vec![("content-type".to_string(), c.to_string())])
            .unwrap_or_default();
        self.request(method, path, &headers, Some(body)).await
    }

    /// `PUT /v1/buses/{bus}`.
    pub async fn put_bus(&self, bus: &str, body: Option<&Value>) -> anyhow::Result<HttpReply> {
        let path = format!("/v1/buses/{bus}");
        match body {
            Some(b) => self.send_json(Method::PUT, &path, b).await,
            None => self.request(Method::PUT, &path, &[], None).await,
        }
    }

    /// `PUT /v1/buses/{bus}/rules/{rule}`.
    pub async fn put_rule(&self, bus: &str, rule: &str, spec: &Value) -> anyhow::Result<HttpReply> {
        self.send_json(Method::PUT, &format!("/v1/buses/{bus}/rules/{rule}"), spec)
            .await
    }

    /// `GET /v1/buses/{bus}/rules/{rule}`.
    pub async fn get_rule(&self, bus: &str, rule: &str) -> anyhow::Result<HttpReply> {
        self.get_json(&format!("/v1/buses/{bus}/rules/{rule}"))
            .await
    }

    /// One event in structured mode.
    pub async fn post_structured(&self, bus: &str, event: &Value) -> anyhow::Result<HttpReply> {
        self.send_raw(
            Method::POST,
            &format!("/v1/buses/{bus}/events"),
            Some("application/cloudevents+json"),
            serde_json::to_vec(event)?,
        )
        .await
    }

    /// A batch.
    pub async fn post_batch(&self, bus: &str, events: &[Value]) -> anyhow::Result<HttpReply> {
        self.send_raw(
            Method::POST,
            &format!("/v1/buses/{bus}/events"),
            Some("application/cloudevents-batch+json"),
            serde_json::to_vec(events)?,
        )
        .await
    }

    /// One event in binary mode: `ce-*` headers (already percent-encoded),
    /// `Content-Type` and the data as the body.
    pub async fn post_binary(
        &self,
        bus: &str,
        headers: &[(String, String)],
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> anyhow::Result<HttpReply> {
        let mut all = headers.to_vec();
        if let Some(c) = content_type {
            all.push(("content-type".into(), c.into()));
        }
        self.request(
            Method::POST,
            &format!("/v1/buses/{bus}/events"),
            &all,
            Some(body),
        )
        .await
    }

    /// `GET /healthz` status.
    pub async fn healthz(&self) -> anyhow::Result<u16> {
        Ok(self.get_json("/healthz").await?.status)
    }

    /// `GET /readyz` status.
    pub async fn readyz(&self) -> anyhow::Result<u16> {
        Ok(self.get_json("/readyz").await?.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_fails_loudly() {
        let e = strait_bin_from(Some("/nonexistent/strait".into())).expect_err("missing");
        let msg = format!("{e:#}");
        assert!(msg.contains("cargo build -p strait-node"), "{msg}");
        assert!(msg.contains("/nonexistent/strait"), "{msg}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_process_that_exits_fails_start_with_its_output() {
        let mut opts = NodeOptions::dev();
        opts.bin = Some(PathBuf::from("/bin/false"));
        let e = match StraitProcess::start(opts).await {
            Ok(_) => panic!("/bin/false cannot become ready"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains("before it was ready"), "{e}");
        assert!(e.contains("chaos harness: start #1"), "{e}");
    }
}
