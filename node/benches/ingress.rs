//! Ingress benchmark: one node, fsync on, HTTP on loopback, 1 KiB events.
//!
//! `cargo bench -p strait-node --bench ingress` prints:
//! - the disk's fsync rate measured in the same run (the physical limit an
//!   unbatched design would hit);
//! - unbatched (one structured event per request) and batched (100 events
//!   per request) throughput with p50/p99 ack latency, closed loop;
//! - ack latency at half the batched rate (open loop, fixed schedule).
//!
//! Knobs (env): `BENCH_SECS` (per phase, default 8), `BENCH_CLIENTS`
//! (default 64), `BENCH_BATCH` (default 100), `BENCH_DIR` (data dir parent).

// Shared with the other benches; this one uses only part of it.
#[allow(dead_code)]
mod common;

use std::sync::Arc;

use common::{closed_loop, env_or, fsync_rate, open_loop, report};
use strait_node::config::NodeConfig;
use tokio::sync::Mutex;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing to parse.
    let secs = env_or("BENCH_SECS", 8);
    let clients = env_or("BENCH_CLIENTS", 64);
    let batch = env_or("BENCH_BATCH", 100);
    let parent = std::env::var("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = tempfile::Builder::new()
        .prefix("strait-bench-")
        .tempdir_in(parent)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let fsyncs = fsync_rate(dir.path(), 2.0)?;
        println!("disk fsync rate (4 KiB write + fdatasync, same filesystem): {fsyncs:.0}/s");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cfg = NodeConfig {
            dev: true,
            data_dir: dir.path().join("node"),
            http: addr.to_string(),
            limits: strait_node::config::Limits {
                max_batch_events: 1000,
                ..Default::default()
            },
            batching: strait_node::config::Batching {
                max_in_flight: env_or("BENCH_IN_FLIGHT", 2) as usize,
                ..Default::default()
            },
            state_flush_ms: env_or("BENCH_STATE_FLUSH_MS", NodeConfig::default().state_flush_ms),
            ..NodeConfig::default()
        };
        let app = strait_node::start(cfg).await?;
        let router = strait_node::router(app.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        let urls = [format!("http://{addr}/v1/buses/default/events")];
        let counter = Arc::new(Mutex::new(0u64));
        println!("1 KiB events, {clients} concurrent clients, {secs} s per phase, one node, fsync on every commit");
        let (s, e) = closed_loop(&urls, clients, 1, secs, counter.clone()).await;
        report("unbatched (1 event/request)", s, e);
        let (s, e) = closed_loop(&urls, clients, batch, secs, counter.clone()).await;
        let batched = report(&format!("batched ({batch} events/request)"), s, e).rate;
        let half = batched / 2.0;
        let (s, e) = open_loop(&urls, batch, half, secs, counter.clone()).await;
        report(&format!("open loop at {half:.0} events/s"), s, e);
        let stored = app.site.state.stored_events().unwrap_or(0);
        println!("events stored: {stored}");
        app.site.shutdown().await?;
        anyhow::Ok(())
    })
}
