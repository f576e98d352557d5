//! A Kafka source on a 3-node site, its leader killed (-9) while records
//! stream in: the new leader runs the source in the same consumer group,
//! reads again from the group's committed offsets what the old one had not
//! committed, and every published record is exactly one stored event (by
//! `(source, id)`), none lost, none twice. Against the real Kafka-protocol
//! broker of the tests (`scripts/kafka-peer serve`; the test fails when it
//! cannot start: `scripts/setup-test-deps` installs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
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

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The Kafka peer on a free loopback port, and its bootstrap address.
async fn start_kafka(dir: &Path) -> anyhow::Result<(Proc, String)> {
    let port = free_port()?;
    let err = dir.join("kafka-peer.err");
    let child = Command::new(repo_root().join("scripts/kafka-peer"))
        .arg("serve")
        .arg(dir)
        .arg(port.to_string())
        .arg(free_port()?.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err)?)
        .spawn()
        .context("spawn scripts/kafka-peer")?;
    let mut proc = Proc(child);
    let brokers = format!("127.0.0.1:{port}");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("log_level", "3")
        .create()?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(s) = proc.0.try_wait()? {
            anyhow::bail!(
                "the Kafka peer exited with {s} (run scripts/setup-test-deps): {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        if admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(1))
            .is_ok_and(|m| !m.brokers().is_empty())
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the Kafka peer did not answer");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for r in admin
        .create_topics(
            &[NewTopic::new("load", 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    Ok((proc, brokers))
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
async fn kafka_source_survives_a_leader_kill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_kafka, brokers) = start_kafka(dir.path()).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("log_level", "3")
        .create()?;

    let mut c = LocalCluster::up(&[("idc", 3)], None).await?;
    let leader = c.site_leader("idc").await?;
    let api = NodeClient::new(&c.nodes[leader].base_url(), Duration::from_secs(10))?;
    api.send_json(reqwest::Method::PUT, "/v1/buses/default", &json!({}))
        .await?
        .expect_status(200, "PUT bus")?;
    api.send_json(
        reqwest::Method::PUT,
        "/v1/sources/load",
        &json!({"type": "kafka", "bus": "default", "brokers": [brokers], "topic": "load",
                "group": "strait-load", "startFrom": "earliest", "maxMessages": 20,
                "sessionTimeoutMs": 6000}),
    )
    .await?
    .expect_status(200, "PUT source")?;

    // Publish N records over about two seconds; kill the leader once the
    // first are stored.
    const N: i64 = 400;
    let publisher = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..N {
                let value = format!("record {i}");
                let d = producer
                    .send(
                        FutureRecord::<str, str>::to("load").payload(&value),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
                offsets.push(d.offset);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(offsets)
        })
    };
    let source = format!("kafka://{brokers}/load");
    let reader = NodeClient::new(&c.nodes[leader].base_url(), Duration::from_secs(5))?;
    wait_for(
        "the first events stored",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async {
            let n = stored_ids(&reader, &source).await.ok()?.len();
            (n >= 50).then_some(())
        },
    )
    .await?;
    c.kill_9_at(leader)?;
    let offsets = publisher.await??;
    anyhow::ensure!(offsets.len() as i64 == N, "published {}", offsets.len());

    let survivor = c
        .site_nodes("idc")
        .into_iter()
        .find(|i| *i != leader)
        .context("a survivor")?;
    let _ = c.site_leader("idc").await?;
    let reader = NodeClient::new(&c.nodes[survivor].base_url(), Duration::from_secs(5))?;
    let mut want: Vec<String> = offsets.iter().map(|o| format!("load:0:{o}")).collect();
    want.sort();
    let ids = wait_for(
        "every record stored",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || async {
            let ids = stored_ids(&reader, &source).await.ok()?;
            (ids.len() as i64 >= N).then_some(ids)
        },
    )
    .await?;
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    anyhow::ensure!(
        sorted == want && ids.len() as i64 == N,
        "stored {} events ({} distinct); want each of {N} once",
        ids.len(),
        sorted.len()
    );
    c.ensure_no_panic()?;
    Ok(())
}
