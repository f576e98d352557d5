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
//!
//! Every function returns errors instead of panicking so tests can attach
//! context; nothing here skips a test when the binary is missing, it fails.

pub mod conservation;
pub mod events;
pub mod process;
pub mod receiver;

pub use conservation::{ConservationReport, Ledger, check_conservation};
pub use events::{Payload, SentEvent};
pub use process::{HttpReply, NodeClient, NodeOptions, StraitProcess, strait_bin};
pub use receiver::{Behavior, DeliveredEvent, ReceivedRequest, Receiver};

use std::future::Future;
use std::time::{Duration, Instant};

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

/// A loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
