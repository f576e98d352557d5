//! Ingest over HTTPS against plain HTTP: one node, fsync on, 1 KiB events,
//! the same node served on two listeners (`strait_node::server::serve`,
//! one with `http_tls` from an rcgen certificate), phases alternating in one
//! run so both see the same machine.
//!
//! `cargo bench -p strait-node --bench https` prints events/s and p50/p99
//! ack latency per phase and the HTTPS/HTTP ratios. Knobs (env):
//! `BENCH_SECS` (per phase, default 6), `BENCH_CLIENTS` (default 64),
//! `BENCH_BATCH` (default 100), `BENCH_ROUNDS` (default 2).

#[allow(dead_code)]
mod common;

use std::sync::Arc;

use common::{closed_loop_with, env_or, report};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use strait_node::config::{HttpTls, NodeConfig};
use tokio::sync::Mutex;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let secs = env_or("BENCH_SECS", 6);
    let clients = env_or("BENCH_CLIENTS", 64);
    let batch = env_or("BENCH_BATCH", 100);
    let rounds = env_or("BENCH_ROUNDS", 2);
    let dir = tempfile::Builder::new().prefix("strait-bench-").tempdir()?;
    // A CA and a server certificate for 127.0.0.1.
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&key, &ca)?;
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, leaf.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let cfg = NodeConfig {
            dev: true,
            data_dir: dir.path().join("node"),
            ..NodeConfig::default()
        };
        let limits = cfg.http_server.clone();
        let app = strait_node::start(cfg).await?;
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let tls = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let (plain_addr, tls_addr) = (plain.local_addr()?, tls.local_addr()?);
        let spec = HttpTls {
            cert: cert_path,
            key: key_path,
            client_ca: None,
            peer_ca: None,
            reload_interval_ms: 2_000,
        };
        for (listener, tls) in [
            (plain, None),
            (tls, Some(strait_node::server::ReloadingTls::new(spec)?)),
        ] {
            let opts = strait_node::server::ServeOptions {
                limits: limits.clone(),
                tls,
            };
            let router = strait_node::router(app.clone());
            tokio::spawn(strait_node::server::serve(
                listener,
                router,
                opts,
                std::future::pending(),
            ));
        }
        let plain_client = reqwest::Client::builder().build()?;
        let tls_client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes())?])
            .build()?;
        let plain_url = [format!("http://{plain_addr}/v1/buses/default/events")];
        let tls_url = [format!("https://{tls_addr}/v1/buses/default/events")];
        let counter = Arc::new(Mutex::new(0u64));
        println!("1 KiB events, {clients} concurrent clients (keep-alive), {secs} s per phase, one node, fsync on every commit");
        let mut sums = [[0f64; 2]; 2]; // [unbatched, batched] x [http, https]
        for round in 0..rounds {
            for (b, n) in [(0usize, 1u64), (1, batch)] {
                for (t, (client, url, name)) in [
                    (&plain_client, &plain_url, "HTTP "),
                    (&tls_client, &tls_url, "HTTPS"),
                ]
                .into_iter()
                .enumerate()
                {
                    let (s, e) =
                        closed_loop_with(client.clone(), url, clients, n, secs, counter.clone())
                            .await;
                    let what = format!("round {round}: {name} {n} event(s)/request");
                    sums[b][t] += report(&what, s, e).rate;
                }
            }
        }
        println!(
            "HTTPS/HTTP: unbatched {:.2}, batched {:.2}",
            sums[0][1] / sums[0][0].max(1.0),
            sums[1][1] / sums[1][0].max(1.0)
        );
        app.site.shutdown().await?;
        anyhow::Ok(())
    })
}
