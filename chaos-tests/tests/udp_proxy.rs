//! The fault-injecting UDP proxy on loopback with real sockets: an echo
//! server behind it, several clients at once, partitions (both ways and one
//! way), delay, loss, jitter, duplication, reordering, and a real QUIC
//! connection of the federation transport that survives a partition.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use strait_chaos_tests::{Direction, Faults, UdpProxy, bounded, wait_for};
use strait_federation::certs::{self, NodeCredentials};
use strait_federation::transport::{Endpoint, Request, RequestError, TransportConfig};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

const LIMIT: Duration = Duration::from_secs(30);

fn loopback() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
}

/// A UDP echo server counting what it received; stops when dropped.
struct Echo {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Echo {
    async fn start() -> anyhow::Result<Echo> {
        let socket = UdpSocket::bind(loopback()).await?;
        let addr = socket.local_addr()?;
        let received = Arc::new(AtomicU64::new(0));
        let count = received.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        Ok(Echo {
            addr,
            received,
            task,
        })
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client socket connected to the proxy.
async fn client(proxy: &UdpProxy) -> anyhow::Result<Arc<UdpSocket>> {
    let socket = UdpSocket::bind(loopback()).await?;
    socket.connect(proxy.local_addr()).await?;
    Ok(Arc::new(socket))
}

/// Send `payload` and wait up to `timeout` for it to come back (other
/// datagrams are skipped). `None` if it did not.
async fn ping(
    socket: &UdpSocket,
    payload: &[u8],
    timeout: Duration,
) -> anyhow::Result<Option<Duration>> {
    let start = Instant::now();
    socket.send(payload).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; 65_535];
    loop {
        match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Err(_) => return Ok(None),
            Ok(Err(_)) => continue,
            Ok(Ok(n)) if &buf[..n] == payload => return Ok(Some(start.elapsed())),
            Ok(Ok(_)) => {}
        }
    }
}

/// Whatever arrives on `socket` within `window`.
async fn drain(socket: &UdpSocket, window: Duration) -> Vec<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + window;
    let mut buf = vec![0u8; 65_535];
    let mut got = Vec::new();
    while let Ok(r) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
        if let Ok(n) = r {
            got.push(buf[..n].to_vec());
        }
    }
    got
}

/// Send sequence numbers `0..n` (`per_ms` datagrams per millisecond, at most
/// `window` unanswered at a time) and collect the numbers that come back, in
/// arrival order, until nothing has come for `quiet` after the last send.
/// Fails if the window stays full for 3 s (something was lost).
async fn blast(
    socket: Arc<UdpSocket>,
    n: u32,
    per_ms: u32,
    window: usize,
    quiet: Duration,
) -> anyhow::Result<Vec<u32>> {
    let got = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let socket = socket.clone();
        let got = got.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            let mut buf = [0u8; 64];
            // The quiet period counts from the later of the last datagram
            // and the moment sending finished: a slow machine must not end
            // the wait before the first (delayed) answer could be back.
            let mut last = Instant::now();
            let mut sending_done = false;
            loop {
                match tokio::time::timeout(Duration::from_millis(20), socket.recv(&mut buf)).await {
                    Ok(Ok(4)) => {
                        seqs.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
                        got.fetch_add(1, Ordering::SeqCst);
                        last = Instant::now();
                    }
                    Ok(_) => {}
                    Err(_) => {
                        if !sending_done && done.load(Ordering::SeqCst) {
                            sending_done = true;
                            last = last.max(Instant::now());
                        }
                        if sending_done && last.elapsed() >= quiet {
                            return seqs;
                        }
                    }
                }
            }
        })
    };
    let send = async {
        for seq in 0..n {
            let stalled = Instant::now();
            while (seq as usize).saturating_sub(got.load(Ordering::SeqCst)) >= window {
                anyhow::ensure!(
                    stalled.elapsed() < Duration::from_secs(3),
                    "no answer for 3 s with {window} datagrams outstanding: lost ({} of {seq} back)",
                    got.load(Ordering::SeqCst)
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            socket.send(&seq.to_be_bytes()).await?;
            if (seq + 1) % per_ms == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        Ok(())
    };
    let sent = send.await;
    done.store(true, Ordering::SeqCst);
    let seqs = receiver.await.context("blast receiver")?;
    sent?;
    Ok(seqs)
}

/// How many numbers arrived after a larger one had (out of order).
fn out_of_order(seqs: &[u32]) -> usize {
    let mut max = None;
    let mut count = 0;
    for &s in seqs {
        match max {
            Some(m) if s < m => count += 1,
            _ => max = Some(s),
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_both_ways_for_several_clients_at_once() -> anyhow::Result<()> {
    bounded(LIMIT, async {
        let echo = Echo::start().await?;
        let proxy = UdpProxy::start(loopback(), echo.addr).await?;
        const CLIENTS: usize = 8;
        const PINGS: usize = 25;
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let socket = client(&proxy).await?;
            tasks.push(tokio::spawn(async move {
                for i in 0..PINGS {
                    let payload = format!("client {c} ping {i}");
                    ping(&socket, payload.as_bytes(), Duration::from_secs(2))
                        .await?
                        .with_context(|| format!("no echo of {payload:?}"))?;
                }
                anyhow::Ok(socket.local_addr()?)
            }));
        }
        for t in tasks {
            t.await??;
        }
        assert_eq!(proxy.sessions(), CLIENTS, "one session per client");
        let total = (CLIENTS * PINGS) as u64;
        let stats = wait_for(
            "counters",
            Duration::from_secs(2),
            Duration::from_millis(10),
            || async {
                let s = proxy.stats();
                (s.to_client.forwarded == total).then_some(s)
            },
        )
        .await?;
        assert_eq!(stats.to_upstream.received, total, "{stats:?}");
        assert_eq!(stats.to_upstream.forwarded, total, "{stats:?}");
        assert_eq!(stats.to_upstream.dropped, 0, "{stats:?}");
        assert_eq!(stats.to_client.received, total, "{stats:?}");
        assert_eq!(echo.received(), total);
        proxy.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_drops_everything_and_healing_restores() -> anyhow::Result<()> {
    bounded(LIMIT, async {
        let echo = Echo::start().await?;
        let proxy = UdpProxy::start(loopback(), echo.addr).await?;
        let faults = proxy.faults();
        let socket = client(&proxy).await?;
        let long = Duration::from_secs(2);
        let short = Duration::from_millis(300);
        ping(&socket, b"before", long)
            .await?
            .context("no echo before the partition")?;

        faults.partition();
        let before = echo.received();
        for i in 0..20 {
            socket.send(format!("cut {i}").as_bytes()).await?;
        }
        let got = drain(&socket, short).await;
        assert!(
            got.is_empty(),
            "{} datagrams crossed a partition",
            got.len()
        );
        assert_eq!(echo.received(), before, "the upstream got datagrams");
        assert!(
            proxy.stats().to_upstream.dropped >= 20,
            "{:?}",
            proxy.stats()
        );

        faults.heal();
        ping(&socket, b"healed", long)
            .await?
            .context("no echo after healing")?;

        // One way: nothing reaches the upstream.
        faults.drop_to_upstream_only();
        let before = echo.received();
        assert!(ping(&socket, b"one way up", short).await?.is_none());
        assert_eq!(echo.received(), before);

        // The other way: the upstream gets it, the answer is lost.
        faults.drop_to_client_only();
        let dropped = proxy.stats().to_client.dropped;
        assert!(ping(&socket, b"one way down", short).await?.is_none());
        assert_eq!(echo.received(), before + 1);
        assert_eq!(proxy.stats().to_client.dropped, dropped + 1);

        faults.heal();
        ping(&socket, b"healed again", long)
            .await?
            .context("no echo after healing one way")?;
        proxy.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_shows_in_the_round_trip_without_head_of_line_blocking() -> anyhow::Result<()> {
    bounded(LIMIT, async {
        let echo = Echo::start().await?;
        let proxy = UdpProxy::start(loopback(), echo.addr).await?;
        let socket = client(&proxy).await?;
        proxy.set_faults(Faults::none().with_delay(Duration::from_millis(50)));
        for i in 0..5 {
            let rtt = ping(
                &socket,
                format!("rtt {i}").as_bytes(),
                Duration::from_secs(2),
            )
            .await?
            .context("no echo with delay")?;
            assert!(
                rtt >= Duration::from_millis(100),
                "round trip {rtt:?} < 2 × 50 ms"
            );
            assert!(rtt < Duration::from_millis(400), "round trip {rtt:?}");
        }
        // 30 datagrams at once: delayed side by side, not one after another
        // (that would take 30 × 50 ms each way, 3 s in all). The time includes
        // the 500 ms of quiet that ends the wait.
        let start = Instant::now();
        let seqs = blast(socket, 30, 30, 30, Duration::from_millis(500)).await?;
        let first = start.elapsed();
        assert_eq!(seqs.len(), 30, "{seqs:?}");
        assert!(
            first < Duration::from_millis(1500),
            "30 delayed datagrams took {first:?} (head-of-line blocking?)"
        );
        proxy.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_drops_all_or_about_half() -> anyhow::Result<()> {
    bounded(LIMIT, async {
        let echo = Echo::start().await?;
        let proxy = UdpProxy::start(loopback(), echo.addr).await?;
        let faults = proxy.faults();
        let socket = client(&proxy).await?;

        faults.set_loss(1.0);
        let got = blast(socket.clone(), 50, 10, 50, Duration::from_millis(200)).await?;
        assert!(got.is_empty(), "{} came back at loss 1.0", got.len());
        assert_eq!(echo.received(), 0);
        assert_eq!(proxy.stats().to_upstream.dropped, 50, "{:?}", proxy.stats());

        // Half of what goes up is lost; answers all come back.
        faults.set_direction(Direction::ToUpstream, Faults::none().with_loss(0.5));
        faults.set_direction(Direction::ToClient, Faults::none());
        let before = proxy.stats().to_upstream;
        let got = blast(socket, 2000, 4, 2000, Duration::from_millis(300)).await?;
        let after = proxy.stats().to_upstream;
        let received = after.received - before.received;
        let dropped = after.dropped - before.dropped;
        assert_eq!(received, 2000, "the proxy missed datagrams");
        assert!((700..=1300).contains(&dropped), "dropped {dropped} of 2000");
        assert!(
            (700..=1300).contains(&got.len()),
            "{} of 2000 came back",
            got.len()
        );
        assert_eq!(got.len() as u64, 2000 - dropped, "answers were lost");
        proxy.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_reorders_and_loses_nothing() -> anyhow::Result<()> {
    bounded(LIMIT, async {
        let echo = Echo::start().await?;
        let proxy = UdpProxy::start(loopback(), echo.addr).await?;
        let socket = client(&proxy).await?;
        proxy.set_faults(
            Faults::none()
                .with_delay(Duration::from_millis(2))
                .with_jitter(Duration::from_millis(20)),
        );
        let seqs = blast(socket, 1000, 4, 64, Duration::from_millis(200)).await?;
        let mut seen = BTreeMap::new();
        for s in &seqs {
            *seen.entry(*s).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 1000, "lost datagrams at loss 0");
        assert!(
            seen.values().all(|&c| c == 1),
            "duplicates without duplicate"
        );
        let late = out_of_order(&seqs);
        assert!(late >= 1, "jitter did not reorder anything");
        assert_eq!(proxy.stats().to_upstream.dropped, 0);
        proxy.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_reordering() -> anyhow::Result<()> {
    bounded(LIMIT, async {
        let echo = Echo::start().await?;
        let proxy = UdpProxy::start(loopback(), echo.addr).await?;
        let faults = proxy.faults();
        let socket = client(&proxy).await?;

        // Every datagram to the upstream is sent twice.
        faults.set_direction(Direction::ToUpstream, Faults::none().with_duplicate(1.0));
        let seqs = blast(socket.clone(), 100, 2, 100, Duration::from_millis(200)).await?;
        assert_eq!(seqs.len(), 200, "each datagram twice");
        assert_eq!(echo.received(), 200);
        assert_eq!(proxy.stats().to_upstream.duplicated, 100);

        // Held back behind the next one, nothing lost.
        faults.clear();
        faults.set_reorder(0.3);
        let seqs = blast(socket, 300, 2, 300, Duration::from_millis(200)).await?;
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..300).collect::<Vec<_>>(), "all exactly once");
        assert!(out_of_order(&seqs) >= 1, "reorder 0.3 reordered nothing");
        assert!(proxy.stats().to_upstream.reordered > 0);
        proxy.stop().await;
        Ok(())
    })
    .await
}

const METHOD_ECHO: u16 = 1;

fn node_credentials(ca_dir: &Path, id: u64) -> anyhow::Result<NodeCredentials> {
    let out = ca_dir.join(format!("out-{id}"));
    certs::issue_node_cert(
        ca_dir,
        id,
        "idc",
        &["localhost".to_string()],
        &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        &out,
    )?;
    Ok(certs::load_node_identity_from_dir(&out, id)?)
}

/// A cluster CA in `ca_dir` and credentials of nodes 1 and 2 it issued.
fn two_nodes(ca_dir: &Path) -> anyhow::Result<(NodeCredentials, NodeCredentials)> {
    certs::init_ca(ca_dir)?;
    Ok((node_credentials(ca_dir, 1)?, node_credentials(ca_dir, 2)?))
}

fn transport_config() -> TransportConfig {
    TransportConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        keep_alive: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(1),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..TransportConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_through_the_proxy_survives_a_partition() -> anyhow::Result<()> {
    bounded(LIMIT, async {
        let dir = tempfile::tempdir()?;
        let (a, b) = two_nodes(dir.path())?;
        let handler = Arc::new(|req: Request| async move {
            let mut out = req.peer.uri().into_bytes();
            out.push(b'|');
            out.extend_from_slice(&req.body);
            Ok(Bytes::from(out))
        });
        let server = Endpoint::bind(loopback(), &a, transport_config(), Some(handler))?;
        let proxy = UdpProxy::start(loopback(), server.local_addr()?).await?;
        let faults = proxy.faults();
        faults.set_delay(Duration::from_millis(20));
        let cli = Endpoint::bind(loopback(), &b, transport_config(), None)?;
        let peer = cli.peer(a.identity.clone(), proxy.local_addr().to_string());

        let answer = peer
            .request(METHOD_ECHO, Bytes::from_static(b"one"))
            .await?;
        assert_eq!(&answer[..], b"strait://site/idc/node/2|one");
        let start = Instant::now();
        peer.request(METHOD_ECHO, Bytes::from_static(b"two"))
            .await?;
        let rtt = start.elapsed();
        assert!(
            rtt >= Duration::from_millis(40),
            "request took {rtt:?} through 2 × 20 ms"
        );
        // Keep the connection object: its `stable_id` is an address.
        let old = peer.connection().await?;

        faults.partition();
        let cut = peer
            .request_within(
                METHOD_ECHO,
                Bytes::from_static(b"cut"),
                Duration::from_secs(1),
            )
            .await;
        let Err(e) = cut else {
            anyhow::bail!("a request crossed the partition");
        };
        assert!(!matches!(e, RequestError::Remote { .. }), "{e}");
        // Longer than the idle timeout: the connection dies on both sides.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            old.close_reason().is_some(),
            "the connection outlived the partition"
        );

        faults.heal();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match peer.request(METHOD_ECHO, Bytes::from_static(b"back")).await {
                Ok(answer) => {
                    assert_eq!(&answer[..], b"strait://site/idc/node/2|back");
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("retry after healing: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => anyhow::bail!("no reconnect after healing: {e}"),
            }
        }
        assert_ne!(
            peer.connection().await?.stable_id(),
            old.stable_id(),
            "a new connection"
        );
        assert!(proxy.stats().to_upstream.dropped > 0);
        drop(old);
        cli.close().await;
        server.close().await;
        proxy.stop().await;
        Ok(())
    })
    .await
}

/// A UDP forwarder for one client whose upstream can be switched: packets
/// from the client go to the current upstream, packets from the current
/// upstream go back to the client, anything else is dropped (a switched-off
/// upstream is as gone as a killed process).
struct Switch {
    addr: SocketAddr,
    upstream: Arc<std::sync::Mutex<SocketAddr>>,
    task: JoinHandle<()>,
}

impl Switch {
    async fn start(upstream: SocketAddr) -> anyhow::Result<Switch> {
        let socket = UdpSocket::bind(loopback()).await?;
        let addr = socket.local_addr()?;
        let upstream = Arc::new(std::sync::Mutex::new(upstream));
        let target = upstream.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            let mut client: Option<SocketAddr> = None;
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let current = match target.lock() {
                    Ok(g) => *g,
                    Err(p) => *p.into_inner(),
                };
                if from == current {
                    if let Some(c) = client {
                        let _ = socket.send_to(&buf[..n], c).await;
                    }
                } else if client.is_none() || client == Some(from) {
                    client = Some(from);
                    let _ = socket.send_to(&buf[..n], current).await;
                }
            }
        });
        Ok(Switch {
            addr,
            upstream,
            task,
        })
    }

    fn switch_to(&self, upstream: SocketAddr) {
        match self.upstream.lock() {
            Ok(mut g) => *g = upstream,
            Err(p) => *p.into_inner() = upstream,
        }
    }
}

/// A node that comes back (same key, same address as far as its peers can
/// tell) resets its peers' connections to its previous process with a QUIC
/// stateless reset on their next packet, instead of leaving them to the
/// idle timeout: requests sent into such a connection (Raft votes after a
/// restart) would otherwise be lost until it times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_resets_connections_to_its_previous_process() -> anyhow::Result<()> {
    bounded(LIMIT, async {
        let dir = tempfile::tempdir()?;
        let (a, b) = two_nodes(dir.path())?;
        let cfg = TransportConfig {
            idle_timeout: Duration::from_secs(20),
            ..transport_config()
        };
        let handler = Arc::new(|req: Request| async move { Ok(req.body) });
        let before = Endpoint::bind(loopback(), &a, cfg.clone(), Some(handler.clone()))?;
        let switch = Switch::start(before.local_addr()?).await?;
        let cli = Endpoint::bind(loopback(), &b, cfg.clone(), None)?;
        let peer = cli.peer(a.identity.clone(), switch.addr.to_string());
        peer.request(METHOD_ECHO, Bytes::from_static(b"one"))
            .await?;
        let old = peer.connection().await?;

        // The "restart": the first process is cut off, a new one with the
        // same credentials takes its place.
        let after = Endpoint::bind(loopback(), &a, cfg, Some(handler))?;
        switch.switch_to(after.local_addr()?);
        let start = Instant::now();
        let reason = wait_for(
            "the connection to the previous process to be reset",
            Duration::from_secs(3),
            Duration::from_millis(20),
            || async { old.close_reason() },
        )
        .await?;
        assert_eq!(
            reason.to_string(),
            "reset by peer",
            "closed by {reason:?}, not a stateless reset"
        );
        eprintln!("stale connection reset after {:?}", start.elapsed());
        let answer = peer
            .request(METHOD_ECHO, Bytes::from_static(b"two"))
            .await?;
        assert_eq!(&answer[..], b"two");
        switch.task.abort();
        drop(before);
        Ok(())
    })
    .await
}
