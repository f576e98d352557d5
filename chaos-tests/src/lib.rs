//! Multi-process harness and fault tests for Strait.
//!
//! The harness drives real `strait` processes from the outside, the way an
//! operator and producers would:
//!
//! * [`StraitProcess`] spawns one node on a loopback port with its own data
//!   directory, waits until it is ready, kills it with SIGKILL and restarts it
//!   on the same data directory and port. [`NodeClient`] is the HTTP side of
//!   it (cheap to clone, so producer tasks can keep using it across restarts).
//! * [`Receiver`] is an HTTP sink recording every request, with configurable
//!   failure behaviour, standing in for webhook targets and dead letters.
//! * [`Ledger`] and [`check_conservation`] compare what producers were told
//!   with what the receivers saw: lost acknowledged events, events nobody
//!   sent, corrupted data.
//! * [`events`] builds CloudEvents with known payloads.
//! * [`Moto`] is a real SQS (and EventBridge) peer: `moto_server`.
//! * [`UdpProxy`] stands between two sites' QUIC endpoints and injects WAN
//!   faults the kernel here cannot (no `netem`): partitions (both ways or one
//!   way), one-way delay, jitter, loss, duplication and reordering,
//!   changeable at run time through a [`FaultHandle`]. Point a node's peer
//!   address at [`UdpProxy::local_addr`] instead of the peer itself; each
//!   client address gets its own upstream socket, so one proxy in front of a
//!   node serves every node that talks to it. Delays are scheduled per
//!   datagram (no head-of-line blocking), so jitter reorders like a real
//!   network, and [`ProxyStats`] counts what passed and what was dropped.
//!
//! Every function returns errors instead of panicking so tests can attach
//! context; nothing here skips a test when the binary is missing, it fails.
//!
//! Environment: `STRAIT_BIN` picks the binary (default
//! `<workspace>/target/debug/strait`); `STRAIT_CHAOS_KEEP=1` keeps every
//! temporary data dir and node log (`<dir>/data.stderr.log`) after the run.
//! A test body run through [`bounded`] keeps them by itself when it fails,
//! with every node's `/v1/cluster` and `/metrics`, and prints where
//! (see [`evidence`]).

pub mod cluster;
pub mod conservation;
pub mod events;
pub mod evidence;
pub mod moto;
pub mod process;
pub mod producer;
pub mod receiver;
pub mod udp_proxy;

pub use cluster::{ClusterNode, LocalCluster};
pub use conservation::{ConservationReport, Ledger, check_conservation};
pub use events::{Payload, SentEvent};
pub use moto::Moto;
pub use process::{HttpReply, NodeClient, NodeOptions, StraitProcess, strait_bin};
pub use producer::{ProducerOptions, ProducerStats, lock, produce, stop_producers};
pub use receiver::{Behavior, DeliveredEvent, ReceivedRequest, Receiver};
pub use udp_proxy::{Direction, DirectionStats, FaultHandle, Faults, ProxyStats, UdpProxy};

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Poll `check` every `every` until it returns `Some`, or fail after `timeout`
/// with `what` in the message.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// A loopback port that was free a moment ago, below the ephemeral range
/// (see [`strait_federation::transport::free_loopback_port`]).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(strait_federation::transport::free_loopback_port()?)
}

/// Run a whole test body with a hard time limit, so a hang fails instead of
/// blocking the suite. The body runs as an [`evidence`] case: when it fails
/// (or runs out of time), the directories of the clusters and nodes it
/// started are kept, with every node's log and status, and the error names
/// them; when it passes they are deleted.
pub async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let case = std::sync::Arc::new(evidence::Case::default());
    let r = match tokio::time::timeout(limit, evidence::scope(case.clone(), fut)).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!("test exceeded its time limit of {limit:?}")),
    };
    match r {
        Ok(v) => {
            if !keep_always() {
                case.discard();
            }
            Ok(v)
        }
        Err(e) => {
            let kept = case.kept();
            if kept.is_empty() {
                return Err(e);
            }
            let list: Vec<String> = kept.iter().map(|d| d.display().to_string()).collect();
            eprintln!(
                "chaos harness: the test failed; node logs, configs, data and status kept in:\n  {}",
                list.join("\n  ")
            );
            Err(e.context(format!(
                "evidence (node logs, configs, data, /v1/cluster, /metrics of every node) kept in {}",
                list.join(", ")
            )))
        }
    }
}

/// `STRAIT_CHAOS_KEEP` is set (and not `0`): keep every directory.
pub(crate) fn keep_always() -> bool {
    std::env::var_os("STRAIT_CHAOS_KEEP").is_some_and(|v| !v.is_empty() && v != "0")
}

/// An `http` target (binary mode) with a fast retry policy.
pub fn http_target(id: &str, endpoint: &str, retry: Value) -> Value {
    json!({
        "id": id,
        "type": "http",
        "endpoint": endpoint,
        "timeoutMs": 2000,
        "retry": retry,
    })
}

/// A retry policy: attempts and backoff bounds in milliseconds.
pub fn retry(max_attempts: u32, initial_backoff_ms: u64, max_backoff_ms: u64) -> Value {
    json!({
        "maxAttempts": max_attempts,
        "maxEventAgeSeconds": 3600,
        "initialBackoffMs": initial_backoff_ms,
        "maxBackoffMs": max_backoff_ms,
    })
}

/// Per-entry outcomes of an ingress answer: `(id, status, error code)`.
pub fn entry_outcomes(reply: &HttpReply) -> Vec<(Option<String>, String, Option<String>)> {
    reply
        .results()
        .iter()
        .map(|r| {
            (
                r.get("id").and_then(Value::as_str).map(str::to_string),
                r.get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                r.pointer("/error/code")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            )
        })
        .collect()
}

/// `Err` if the node's output shows a panic.
pub fn ensure_no_panic(node: &StraitProcess) -> anyhow::Result<()> {
    let out = std::fs::read_to_string(node.stderr_path()).unwrap_or_default();
    if let Some(pos) = out.find("panicked at") {
        let start = out[..pos].rfind('\n').map_or(0, |p| p + 1);
        let end = out.len().min(pos + 2000);
        anyhow::bail!(
            "strait panicked ({}):\n{}",
            node.stderr_path().display(),
            out.get(start..end).unwrap_or("")
        );
    }
    Ok(())
}
