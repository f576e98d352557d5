//! `strait serve`: start the node, serve the API, and stop on a signal or
//! when the node's storage fails.

use std::process::ExitCode;

use anyhow::{Context, bail};

use super::ServeArgs;
use crate::config::NodeConfig;

/// Exit code of `strait serve` after a storage error stopped the node
/// (`EX_IOERR` of sysexits.h): a supervisor should restart it.
pub const EXIT_STORAGE_FAILED: u8 = 74;

pub(super) async fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = match &a.config {
        Some(p) => NodeConfig::load(p)?,
        None => NodeConfig::default(),
    };
    if a.dev {
        cfg.dev = true;
    }
    if let Some(d) = a.data_dir {
        cfg.data_dir = d;
    }
    if let Some(h) = a.http {
        cfg.http = h;
    }
    if let Some(j) = a.join {
        cfg.cluster.join = Some(j);
        cfg.cluster.initial_members.clear();
    }
    if a.config.is_none() && !a.dev {
        bail!("give --dev for a local development node, or --config FILE for a real one");
    }
    cfg.validate()?;
    let _telemetry = crate::telemetry::init(&cfg.telemetry, &cfg.site, cfg.node_id)?;
    let listener = match bind_http(&cfg.http).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "cannot listen on {}: the address is in use (another Strait node or another program listens there); give this node another address with --http 127.0.0.1:PORT (or `http:` in its config)",
            cfg.http
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot listen on {}", cfg.http)),
    };
    let addr = listener.local_addr()?;
    let tls = match &cfg.http_tls {
        Some(t) => Some(crate::server::ReloadingTls::new(t.clone()).context("config: http_tls")?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    if tls.is_none() && !cfg.dev && (!addr.ip().is_loopback() || cfg.cluster.listen.is_some()) {
        tracing::warn!(
            http = %addr,
            "the HTTP API is plain HTTP: bearer tokens (also those one node passes to another) cross the network in clear; set http_tls (docs/security.md)"
        );
    }
    let serve_opts = crate::server::ServeOptions {
        limits: cfg.http_server.clone(),
        tls,
    };
    let data_dir = cfg.data_dir.clone();
    let dev = cfg.dev;
    let app = match crate::app::start(cfg).await {
        Ok(app) => app,
        Err(e) => {
            let others = crate::cli::local::processes_using_data_dir(&data_dir);
            let hint = match others.first() {
                Some(pid) => format!(
                    " (another Strait node, pid {pid}, uses this data directory; give this node its own with --data-dir DIR, or `data_dir:` in its config)"
                ),
                None => String::new(),
            };
            return Err(e.context(format!("cannot open data dir {}{hint}", data_dir.display())));
        }
    };
    eprintln!(
        "strait {} listening on {scheme}://{addr} (data in {}{})",
        env!("CARGO_PKG_VERSION"),
        data_dir.display(),
        if dev { ", dev mode: no auth" } else { "" }
    );
    if dev {
        eprintln!(
            "try:\n  curl -X POST {scheme}://{addr}/v1/buses/default/events \\\n    -H 'content-type: application/cloudevents+json' \\\n    -d '{{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/demo\",\"type\":\"demo.hello\",\"data\":{{\"hello\":\"world\"}}}}'"
        );
    }
    // auth.tokens is read again when the config file changes or on SIGHUP.
    let token_watch = match (&a.config, app.tokens()) {
        (Some(path), Some(live)) => Some(tokio::spawn(crate::server::tokens::watch(
            path.clone(),
            live,
            std::time::Duration::from_millis(app.cfg.auth.reload_interval_ms.max(50)),
        ))),
        _ => None,
    };
    // Certificates: the node's rotated on disk are used without a restart,
    // expiry exported and warned about 30 days ahead.
    let cert_watch = tokio::spawn(crate::cluster::certs_watch::watch(
        app.cfg.clone(),
        app.writer.endpoint().cloned(),
    ));
    let router = crate::app::router(app.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watch = tokio::spawn(watch_failure(
        app.clone(),
        std::time::Duration::from_secs(app.cfg.storage_failure_exit_secs),
        stop_tx,
    ));
    crate::server::serve(listener, router, serve_opts, async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = stop_rx => {}
        }
    })
    .await?;
    watch.abort();
    cert_watch.abort();
    if let Some(t) = token_watch {
        t.abort();
    }
    if let Some(f) = app.failure() {
        // Best effort: Raft has stopped, and the disk may refuse the flush.
        if let Err(e) = app.site.shutdown().await {
            tracing::warn!(error = %e, "stopping after the failure");
        }
        if let Some(e) = app.writer.endpoint() {
            e.close().await;
        }
        tracing::error!(error = %f.message, code = EXIT_STORAGE_FAILED, "exiting: this node's Raft had stopped");
        return Ok(ExitCode::from(EXIT_STORAGE_FAILED));
    }
    app.site.shutdown().await?;
    if let Some(e) = app.writer.endpoint() {
        e.close().await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Once this node's Raft stops on its own (a storage error), say so loudly,
/// and after `exit_after` (unless zero) stop serving so that `serve` exits
/// with [`EXIT_STORAGE_FAILED`].
async fn watch_failure(
    app: std::sync::Arc<crate::app::App>,
    exit_after: std::time::Duration,
    stop: tokio::sync::oneshot::Sender<()>,
) {
    let f = app.failed().await;
    metrics::gauge!("strait_raft_stopped").set(1.0);
    let what = if f.storage {
        "storage failed"
    } else {
        "Raft stopped"
    };
    if exit_after.is_zero() {
        tracing::error!(
            error = %f.message,
            "{what}: this node accepts no writes until it is restarted; /readyz and /healthz answer 503, \
             writes 507 (storage_failure_exit_secs is 0: waiting for a restart by hand); \
             free disk space or fix the disk, then restart it"
        );
        return;
    }
    tracing::error!(
        error = %f.message,
        exit_in_secs = exit_after.as_secs(),
        code = EXIT_STORAGE_FAILED,
        "{what}: this node accepts no writes until it is restarted; /readyz and /healthz answer 503, \
         writes 507; exiting soon so that a supervisor restarts it (free disk space or fix the disk)"
    );
    tokio::time::sleep(exit_after).await;
    let _ = stop.send(());
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Bind the HTTP listener at `addr`. A node started again right after it
/// was killed can find its port still taken for a moment by the dead
/// process's connections (seen in the chaos tests: refused once, free half
/// a second later); "address in use" is retried for up to 3 s before it is
/// reported.
async fn bind_http(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut warned = false;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                if !warned {
                    tracing::warn!(http = %addr, "the HTTP address is in use; trying again for up to 3 s");
                    warned = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}
