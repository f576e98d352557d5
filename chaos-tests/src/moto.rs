//! A real SQS peer: `moto_server` on a free loopback port, driven over the
//! AWS JSON 1.0 protocol (moto does not check signatures, so no SDK is
//! needed). Not installed (neither in the workspace's `.venv/bin` nor on
//! `PATH`): [`Moto::start`] fails, naming `scripts/setup-test-deps`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

/// A running `moto_server` (killed when dropped).
pub struct Moto {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where `moto_server` is: the workspace's `.venv/bin`, else `PATH`.
pub fn moto_binary() -> anyhow::Result<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    if venv.is_file() {
        return Ok(venv);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("moto_server");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    anyhow::bail!(
        "moto_server is not installed in .venv/bin nor on PATH: run scripts/setup-test-deps \
         (tests/python/requirements.txt has moto[server])"
    )
}

impl Moto {
    /// Start it and wait until it answers. The free port is picked before
    /// moto binds it, so another process (a test node) can take it first:
    /// moto then exits, and it is started again on another port.
    pub async fn start() -> anyhow::Result<Moto> {
        const ATTEMPTS: usize = 3;
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match Moto::start_once().await? {
                Ok(moto) => return Ok(moto),
                Err(exited) => last = Some(exited),
            }
        }
        anyhow::bail!(
            "moto_server exited {ATTEMPTS} times before answering; the last time:\n{}",
            last.unwrap_or_default()
        )
    }

    /// One start: `Ok(Err(log))` when moto exited before answering.
    async fn start_once() -> anyhow::Result<Result<Moto, String>> {
        let dir = tempfile::Builder::new()
            .prefix("strait-moto-")
            .tempdir()
            .context("temp dir")?;
        let port = crate::free_port()?;
        let log = dir.path().join("moto.log");
        let out = std::fs::File::create(&log).context("moto log")?;
        let err = out.try_clone().context("moto log")?;
        let child = Command::new(moto_binary()?)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("spawning moto_server")?;
        let mut moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = moto.child.try_wait()? {
                return Ok(Err(format!("exit {status}:\n{}", moto.log_tail())));
            }
            // Only moto answers this path with success (anything else that
            // holds the port does not count).
            let answered = moto
                .http
                .get(format!("{}/moto-api/", moto.url))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if answered {
                return Ok(Ok(moto));
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "moto_server did not answer within 30 s:\n{}",
                moto.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:PORT` (the endpoint for clients and sources).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text.get(start..).unwrap_or_default().to_string()
    }

    /// One SQS call, e.g. `sqs("SendMessage", json!({...}))`.
    pub async fn sqs(&self, action: &str, body: Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .post(format!("{}/", self.url))
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=0",
            )
            .header("x-amz-target", format!("AmazonSQS.{action}"))
            .header("content-type", "application/x-amz-json-1.0")
            .body(body.to_string())
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .with_context(|| format!("SQS {action}"))?;
        let status = r.status();
        let text = r.text().await.with_context(|| format!("SQS {action}"))?;
        anyhow::ensure!(status.is_success(), "SQS {action}: {status} {text}");
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Create a queue; its URL.
    pub async fn create_queue(&self, name: &str) -> anyhow::Result<String> {
        let v = self.sqs("CreateQueue", json!({"QueueName": name})).await?;
        v["QueueUrl"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("CreateQueue answered {v}"))
    }

    /// Send one message.
    pub async fn send(&self, queue: &str, body: &str) -> anyhow::Result<()> {
        self.sqs(
            "SendMessage",
            json!({"QueueUrl": queue, "MessageBody": body}),
        )
        .await
        .map(|_| ())
    }

    /// (visible, in flight) messages of a queue.
    pub async fn queue_counts(&self, queue: &str) -> anyhow::Result<(u64, u64)> {
        let v = self
            .sqs(
                "GetQueueAttributes",
                json!({"QueueUrl": queue, "AttributeNames": ["All"]}),
            )
            .await?;
        let n = |k: &str| -> anyhow::Result<u64> {
            v["Attributes"][k]
                .as_str()
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("{k} in {v}"))
        };
        Ok((
            n("ApproximateNumberOfMessages")?,
            n("ApproximateNumberOfMessagesNotVisible")?,
        ))
    }
}
