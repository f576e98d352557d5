//! An MQTT QoS 1 source on a 3-node site, its leader killed (-9) while
//! messages stream in: the new leader runs the source with the same client
//! id, so it takes over the broker's persistent session; the broker sends
//! again what the old leader read but did not acknowledge (same packet ids,
//! so the same wrapped ids) and what it queued meanwhile, and every
//! published message is exactly one stored event (by `(source, id)`), none
//! lost, none twice. Against a real `mosquitto` started here (the test fails
//! when it is not installed).

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
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

/// `mosquitto -c conf` on a free loopback port, and its URL.
fn start_mosquitto(dir: &std::path::Path) -> anyhow::Result<(Proc, u16)> {
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .map(str::to_string)
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|d| d.join("mosquitto"))
                .find(|p| p.is_file())
                .map(|p| p.display().to_string())
        })
        .context(
            "mosquitto is not installed: run scripts/setup-test-deps (Debian package mosquitto)",
        )?;
    let port = free_port()?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"),
    )?;
    let log = std::fs::File::create(dir.join("mosquitto.log"))?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawn mosquitto")?;
    let mut proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(s) = proc.0.try_wait()? {
            anyhow::bail!("mosquitto exited with {s}");
        }
        anyhow::ensure!(Instant::now() < deadline, "mosquitto did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((proc, port))
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
async fn mqtt_source_survives_a_leader_kill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_broker, port) = start_mosquitto(dir.path())?;
    let url = format!("mqtt://127.0.0.1:{port}");

    let mut c = LocalCluster::up(&[("idc", 3)], None).await?;
    let leader = c.site_leader("idc").await?;
    let api = NodeClient::new(&c.nodes[leader].base_url(), Duration::from_secs(10))?;
    api.send_json(reqwest::Method::PUT, "/v1/buses/default", &json!({}))
        .await?
        .expect_status(200, "PUT bus")?;
    api.send_json(
        reqwest::Method::PUT,
        "/v1/sources/load",
        &json!({"type": "mqtt", "bus": "default", "url": url, "topic": "load/#", "qos": 1,
                "maxMessages": 20}),
    )
    .await?
    .expect_status(200, "PUT source")?;
    let reader = NodeClient::new(&c.nodes[leader].base_url(), Duration::from_secs(5))?;
    wait_for(
        "the source connected",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let r = reader.get_json("/v1/sources/load").await.ok()?;
            let v = r.json()?;
            (v["status"]["running"] == json!(true) && v["status"]["lastError"].is_null())
                .then_some(())
        },
    )
    .await?;
    // The session exists at the broker from here on (the first connect
    // subscribed): what is published while no node reads is queued.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Publish N QoS 1 messages over about two seconds; kill the leader a
    // third of the way in.
    const N: usize = 400;
    let mut o = MqttOptions::new("chaos-publisher", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut el) = AsyncClient::new(o, 100);
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_))) => {
                    let _ = acked_tx.send(());
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("publisher connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            client
                .publish("load/m", QoS::AtLeastOnce, false, format!("message {i}"))
                .await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        anyhow::Ok(())
    });
    let source = format!("{url}/load/m");
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
    let mut acked = 0;
    while acked < N {
        tokio::time::timeout(Duration::from_secs(30), acked_rx.recv())
            .await
            .context("the broker acknowledges every publish")?;
        acked += 1;
    }
    driver.abort();

    let new_leader = c.site_leader("idc").await?;
    let reader = NodeClient::new(&c.nodes[new_leader].base_url(), Duration::from_secs(5))?;
    let ids = wait_for(
        "every message stored",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let ids = stored_ids(&reader, &source).await.ok()?;
            if ids.len() < N {
                let st = reader.get_json("/v1/sources/load").await.ok()?.json()?;
                eprintln!("{} stored; the source: {}", ids.len(), st["status"]);
            }
            (ids.len() >= N).then_some(ids)
        },
    )
    .await?;
    // Nothing more arrives (a duplicate stored late would show here).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ids_after = stored_ids(&reader, &source).await?;
    let distinct: BTreeSet<&String> = ids_after.iter().collect();
    anyhow::ensure!(
        ids_after.len() == N && distinct.len() == N,
        "stored {} events ({} distinct, {} when first counted); want each of {N} once",
        ids_after.len(),
        distinct.len(),
        ids.len()
    );
    let st = reader
        .get_json("/v1/sources/load")
        .await?
        .json()
        .context("source JSON")?;
    eprintln!("the source at the new leader: {}", st["status"]);
    c.ensure_no_panic()?;
    Ok(())
}
