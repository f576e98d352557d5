//! A NATS JetStream source on a 3-node site, its leader killed (-9) while
//! messages stream in: the new leader runs the source on the same durable
//! consumer, what the old one read but did not acknowledge comes back after
//! the ack wait, and every published message is exactly one stored event
//! (by `(source, id)`), none lost, none twice. Against a real `nats-server
//! -js` started here (the test fails when it is not installed).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
use serde_json::json;
use strait_chaos_tests::{LocalCluster, NodeClient, free_port, wait_for};

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `nats-server -js` on a free loopback port, and its URL.
async fn start_nats(dir: &std::path::Path) -> anyhow::Result<(Proc, String)> {
    let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .map(str::to_string)
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|d| d.join("nats-server"))
                .find(|p| p.is_file())
                .map(|p| p.display().to_string())
        })
        .context(
            "nats-server is not installed: run scripts/setup-test-deps (Debian package nats-server)",
        )?;
    let port = free_port()?;
    let log = std::fs::File::create(dir.join("nats.log"))?;
    let child = Command::new(bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
        .arg("-sd")
        .arg(dir.join("js"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawn nats-server")?;
    let mut proc = Proc(child);
    let url = format!("nats://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while async_nats::connect(url.as_str()).await.is_err() {
        if let Some(s) = proc.0.try_wait()? {
            anyhow::bail!("nats-server exited with {s}");
        }
        anyhow::ensure!(Instant::now() < deadline, "nats-server did not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((proc, url))
}

/// Every stored event id with `source`, in order, read at `client`.
async fn stored_ids(client: &NodeClient, source: &str) -> anyhow::Result<Vec<String>> {
    let q: String = source
        .bytes()
        .map(|b| match b {
            b':' | b'/' => format!("%{b:02X}"),
            _ => (b as char).to_string(),
        })
        .collect();
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/buses/default/events?source={q}&limit=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = client.get_json(&path).await?;
        r.expect_status(200, "GET events")?;
        let v = r.json().context("events JSON")?;
        for e in v["events"].as_array().into_iter().flatten() {
            ids.push(e["id"].as_str().unwrap_or_default().to_string());
        }
        match v["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Ok(ids),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_source_survives_a_leader_kill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_nats, url) = start_nats(dir.path()).await?;
    let client = async_nats::connect(url.as_str()).await?;
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "LOAD".into(),
        subjects: vec!["load.>".into()],
        ..Default::default()
    })
    .await?;

    let mut c = LocalCluster::up(&[("idc", 3)], None).await?;
    let leader = c.site_leader("idc").await?;
    let api = NodeClient::new(&c.nodes[leader].base_url(), Duration::from_secs(10))?;
    api.send_json(reqwest::Method::PUT, "/v1/buses/default", &json!({}))
        .await?
        .expect_status(200, "PUT bus")?;
    api.send_json(
        reqwest::Method::PUT,
        "/v1/sources/load",
        &json!({"type": "nats", "bus": "default", "url": url, "subject": "load.>",
                "stream": "LOAD", "ackWaitSecs": 2, "maxMessages": 20}),
    )
    .await?
    .expect_status(200, "PUT source")?;

    // Publish N messages over about two seconds; kill the leader a third
    // of the way in.
    const N: u64 = 400;
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            for i in 0..N {
                js.publish("load.m", format!("message {i}").into())
                    .await?
                    .await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        })
    };
    let source = format!("{url}/load.m");
    let reader = NodeClient::new(&c.nodes[leader].base_url(), Duration::from_secs(5))?;
    wait_for(
        "the first events stored",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async {
            let n = stored_ids(&reader, &source).await.ok()?.len();
            (n >= 50).then_some(())
        },
    )
    .await?;
    c.kill_9_at(leader)?;
    publisher.await??;

    let survivor = c
        .site_nodes("idc")
        .into_iter()
        .find(|i| *i != leader)
        .context("a survivor")?;
    let _ = c.site_leader("idc").await?;
    let reader = NodeClient::new(&c.nodes[survivor].base_url(), Duration::from_secs(5))?;
    let want: Vec<String> = (1..=N).map(|s| format!("LOAD:{s}")).collect();
    let ids = wait_for(
        "every message stored",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let ids = stored_ids(&reader, &source).await.ok()?;
            (ids.len() as u64 >= N).then_some(ids)
        },
    )
    .await?;
    let mut sorted = ids.clone();
    sorted.sort_by_key(|id| {
        id.rsplit(':')
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    });
    sorted.dedup();
    anyhow::ensure!(
        sorted == want && ids.len() as u64 == N,
        "stored {} events ({} distinct); want each of {N} once",
        ids.len(),
        sorted.len()
    );
    // Once the ack wait passed, nothing is left unacknowledged.
    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream("LOAD")
        .await?
        .get_consumer("strait-load")
        .await
        .map_err(|e| anyhow::anyhow!("the source's consumer: {e}"))?;
    let info = wait_for(
        "every message acknowledged",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let mut consumer = consumer.clone();
            async move {
                let info = consumer.info().await.ok()?.clone();
                (info.num_ack_pending == 0 && info.num_pending == 0).then_some(info)
            }
        },
    )
    .await?;
    eprintln!(
        "delivered: stream sequence {}, consumer sequence {} (redeliveries: {})",
        info.delivered.stream_sequence,
        info.delivered.consumer_sequence,
        info.delivered.consumer_sequence - info.delivered.stream_sequence
    );
    c.ensure_no_panic()?;
    Ok(())
}
