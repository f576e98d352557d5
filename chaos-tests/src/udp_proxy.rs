//! A fault-injecting UDP proxy: WAN faults between sites without `netem`.
//!
//! [`UdpProxy`] listens on one socket and forwards every datagram from any
//! client to one upstream address, and the upstream's replies back to the
//! client they belong to. Each client address gets its own upstream-facing
//! socket (a session), so the upstream sees one distinct peer per client and
//! several QUIC connections can share the proxy.
//!
//! Faults ([`Faults`]) can be changed at any moment through a cheap
//! [`FaultHandle`], per direction ([`Direction`]) or for both at once:
//! partition, one-way delay, jitter, loss, duplication and reordering.
//! Delays never block the line: every datagram is scheduled on its own at
//! `arrival + delay + random(0..jitter)` in a per-direction timer queue, so
//! jitter reorders datagrams the way a real network does.
//!
//! Counters ([`ProxyStats`]) say what was received, forwarded, dropped and
//! duplicated in each direction.

use std::cmp::Ordering as CmpOrdering;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// Largest datagram the proxy forwards whole (the UDP maximum).
const MAX_DATAGRAM: usize = 65_535;

/// How long a datagram picked for reordering waits for a successor before it
/// is let go on its own.
pub const REORDER_HOLD_MAX: Duration = Duration::from_millis(20);

/// One direction of traffic through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From clients to the upstream.
    ToUpstream,
    /// From the upstream back to the clients.
    ToClient,
}

impl Direction {
    /// Both directions, `ToUpstream` first.
    pub const BOTH: [Direction; 2] = [Direction::ToUpstream, Direction::ToClient];

    fn index(self) -> usize {
        match self {
            Direction::ToUpstream => 0,
            Direction::ToClient => 1,
        }
    }
}

/// The faults applied to one direction of traffic. The default is a perfect
/// link. Probabilities outside `0..=1` are clamped (NaN counts as 0).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    /// Drop every datagram, including those already delayed in flight.
    pub partitioned: bool,
    /// Fixed one-way delay added to every datagram.
    pub delay: Duration,
    /// Random extra delay, uniform in `0..jitter`, drawn per datagram (this
    /// reorders datagrams).
    pub jitter: Duration,
    /// Probability to drop a datagram.
    pub loss: f64,
    /// Probability to send a datagram twice (the copy gets its own jitter).
    pub duplicate: f64,
    /// Probability to hold a datagram back and send it right after the next
    /// one (or after [`REORDER_HOLD_MAX`] if no next one comes).
    pub reorder: f64,
}

impl Faults {
    /// No faults: forward everything at once.
    pub fn none() -> Faults {
        Faults::default()
    }

    /// Drop everything.
    pub fn partition() -> Faults {
        Faults {
            partitioned: true,
            ..Faults::default()
        }
    }

    /// These faults with `delay`.
    pub fn with_delay(self, delay: Duration) -> Faults {
        Faults { delay, ..self }
    }

    /// These faults with `jitter`.
    pub fn with_jitter(self, jitter: Duration) -> Faults {
        Faults { jitter, ..self }
    }

    /// These faults with `loss`.
    pub fn with_loss(self, loss: f64) -> Faults {
        Faults { loss, ..self }
    }

    /// These faults with `duplicate`.
    pub fn with_duplicate(self, duplicate: f64) -> Faults {
        Faults { duplicate, ..self }
    }

    /// These faults with `reorder`.
    pub fn with_reorder(self, reorder: f64) -> Faults {
        Faults { reorder, ..self }
    }
}

/// Clamp a probability to `0..=1`; NaN becomes 0.
fn probability(p: f64) -> f64 {
    if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) }
}

/// A cheap, cloneable handle to change a proxy's faults while it runs.
/// Changes apply to the next datagram (and a partition also to datagrams
/// still delayed in flight).
#[derive(Debug, Clone, Default)]
pub struct FaultHandle {
    inner: Arc<Mutex<[Faults; 2]>>,
}

impl FaultHandle {
    fn lock(&self) -> MutexGuard<'_, [Faults; 2]> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The faults of one direction now.
    pub fn get(&self, dir: Direction) -> Faults {
        self.lock()[dir.index()]
    }

    /// Apply `faults` to both directions.
    pub fn set(&self, faults: Faults) {
        *self.lock() = [faults, faults];
    }

    /// Apply `faults` to one direction only.
    pub fn set_direction(&self, dir: Direction, faults: Faults) {
        self.lock()[dir.index()] = faults;
    }

    /// Change the faults of both directions in place.
    pub fn update(&self, mut f: impl FnMut(&mut Faults)) {
        for faults in self.lock().iter_mut() {
            f(faults);
        }
    }

    /// Remove every fault in both directions.
    pub fn clear(&self) {
        self.set(Faults::none());
    }

    /// Partition (`true`) or heal (`false`) both directions, keeping the
    /// other faults.
    pub fn set_partitioned(&self, partitioned: bool) {
        self.update(|f| f.partitioned = partitioned);
    }

    /// Drop everything both ways.
    pub fn partition(&self) {
        self.set_partitioned(true);
    }

    /// End a partition in both directions (other faults stay).
    pub fn heal(&self) {
        self.set_partitioned(false);
    }

    /// Drop only what goes to the upstream; replies still pass.
    pub fn drop_to_upstream_only(&self) {
        let mut g = self.lock();
        g[Direction::ToUpstream.index()].partitioned = true;
        g[Direction::ToClient.index()].partitioned = false;
    }

    /// Drop only what comes back from the upstream; requests still pass.
    pub fn drop_to_client_only(&self) {
        let mut g = self.lock();
        g[Direction::ToUpstream.index()].partitioned = false;
        g[Direction::ToClient.index()].partitioned = true;
    }

    /// One-way delay, both directions.
    pub fn set_delay(&self, delay: Duration) {
        self.update(|f| f.delay = delay);
    }

    /// Jitter, both directions.
    pub fn set_jitter(&self, jitter: Duration) {
        self.update(|f| f.jitter = jitter);
    }

    /// Loss probability, both directions.
    pub fn set_loss(&self, loss: f64) {
        self.update(|f| f.loss = loss);
    }

    /// Duplication probability, both directions.
    pub fn set_duplicate(&self, duplicate: f64) {
        self.update(|f| f.duplicate = duplicate);
    }

    /// Reordering probability, both directions.
    pub fn set_reorder(&self, reorder: f64) {
        self.update(|f| f.reorder = reorder);
    }
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirectionStats {
    /// Datagrams that arrived at the proxy.
    pub received: u64,
    /// Datagrams sent on (duplicates included).
    pub forwarded: u64,
    /// Datagrams dropped by a partition or by loss.
    pub dropped: u64,
    /// Extra copies scheduled by `duplicate`.
    pub duplicated: u64,
    /// Datagrams held back by `reorder`.
    pub reordered: u64,
    /// Sends the operating system refused.
    pub send_errors: u64,
}

/// Counters of both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyStats {
    /// Clients to upstream.
    pub to_upstream: DirectionStats,
    /// Upstream to clients.
    pub to_client: DirectionStats,
}

impl ProxyStats {
    /// The counters of `dir`.
    pub fn get(&self, dir: Direction) -> DirectionStats {
        match dir {
            Direction::ToUpstream => self.to_upstream,
            Direction::ToClient => self.to_client,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    send_errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            received: self.received.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
            reordered: self.reordered.load(Ordering::Relaxed),
            send_errors: self.send_errors.load(Ordering::Relaxed),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A datagram on its way through one direction.
struct Datagram {
    data: Vec<u8>,
    /// The socket to send it from.
    via: Arc<UdpSocket>,
    /// Where it goes; `None` on a socket connected to its destination.
    to: Option<SocketAddr>,
}

/// A datagram scheduled for sending at `at`; `seq` keeps arrival order among
/// datagrams due at the same instant.
struct Scheduled {
    at: Instant,
    seq: u64,
    datagram: Datagram,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    /// Reversed, so that `BinaryHeap` pops the earliest first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other
            .at
            .cmp(&self.at)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// The timer queue of one direction: decides each datagram's fate as it
/// arrives and sends it when due.
struct Scheduler {
    dir: Direction,
    faults: FaultHandle,
    counters: Arc<Counters>,
    rng: StdRng,
    queue: BinaryHeap<Scheduled>,
    /// A datagram held back by `reorder`, with the instant it is let go
    /// anyway.
    held: Option<(Scheduled, Instant)>,
    seq: u64,
}

impl Scheduler {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn due_at(&mut self, arrival: Instant, f: &Faults) -> Instant {
        let jitter = if f.jitter.is_zero() {
            Duration::ZERO
        } else {
            self.rng.random_range(Duration::ZERO..f.jitter)
        };
        arrival + f.delay + jitter
    }

    /// Admit a datagram that arrived at `arrival`.
    fn admit(&mut self, datagram: Datagram, arrival: Instant) {
        let f = self.faults.get(self.dir);
        bump(&self.counters.received);
        if f.partitioned || self.rng.random::<f64>() < probability(f.loss) {
            bump(&self.counters.dropped);
            return;
        }
        let at = self.due_at(arrival, &f);
        if self.rng.random::<f64>() < probability(f.duplicate) {
            bump(&self.counters.duplicated);
            let copy = Datagram {
                data: datagram.data.clone(),
                via: datagram.via.clone(),
                to: datagram.to,
            };
            let at = self.due_at(arrival, &f);
            let seq = self.next_seq();
            self.queue.push(Scheduled {
                at,
                seq,
                datagram: copy,
            });
        }
        let seq = self.next_seq();
        let item = Scheduled { at, seq, datagram };
        match self.held.take() {
            // Let the held one go right after this one.
            Some((mut held, _)) => {
                let at = item.at;
                self.queue.push(item);
                held.at = held.at.max(at);
                held.seq = self.next_seq();
                self.queue.push(held);
            }
            None if self.rng.random::<f64>() < probability(f.reorder) => {
                bump(&self.counters.reordered);
                let release = item.at + REORDER_HOLD_MAX;
                self.held = Some((item, release));
            }
            None => self.queue.push(item),
        }
    }

    /// The next instant something has to happen.
    fn next_deadline(&self) -> Option<Instant> {
        let queued = self.queue.peek().map(|s| s.at);
        let held = self.held.as_ref().map(|(_, release)| *release);
        match (queued, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Send everything due by now.
    fn send_due(&mut self) {
        let now = Instant::now();
        if self
            .held
            .as_ref()
            .is_some_and(|(_, release)| *release <= now)
            && let Some((held, _)) = self.held.take()
        {
            self.queue.push(held);
        }
        while self.queue.peek().is_some_and(|s| s.at <= now) {
            let Some(s) = self.queue.pop() else { break };
            // A partition also stops what is still in flight.
            if self.faults.get(self.dir).partitioned {
                bump(&self.counters.dropped);
                continue;
            }
            match send_now(&s.datagram) {
                Ok(()) => bump(&self.counters.forwarded),
                Err(_) => bump(&self.counters.send_errors),
            }
        }
    }

    /// The scheduler's thread: a plain OS thread with a precise timed wait,
    /// so a datagram leaves within microseconds of its due time (a tokio
    /// timer has millisecond granularity and would add up to a millisecond,
    /// more in a busy runtime, to every delayed datagram). Ends when every
    /// lane sender is gone.
    fn run(mut self, rx: std::sync::mpsc::Receiver<(Datagram, Instant)>) {
        use std::sync::mpsc::RecvTimeoutError;
        loop {
            let msg = match self.next_deadline() {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            match msg {
                Ok((datagram, arrival)) => {
                    self.admit(datagram, arrival);
                    while let Ok((datagram, arrival)) = rx.try_recv() {
                        self.admit(datagram, arrival);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.send_due();
        }
    }
}

/// Send one datagram from a non-async thread, waiting briefly while the
/// socket's buffer is full.
fn send_now(d: &Datagram) -> std::io::Result<()> {
    let mut waited = Duration::ZERO;
    loop {
        let sent = match d.to {
            Some(to) => d.via.try_send_to(&d.data, to),
            None => d.via.try_send(&d.data),
        };
        match sent {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && waited < SEND_WAIT_MAX => {
                std::thread::sleep(Duration::from_micros(50));
                waited += Duration::from_micros(50);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Longest a scheduler waits for room in a full socket buffer.
const SEND_WAIT_MAX: Duration = Duration::from_millis(100);

type Lane = std::sync::mpsc::Sender<(Datagram, Instant)>;

/// Receive the upstream's replies on a session socket and hand them to
/// `lane`, to be sent from `via` (the listening socket) to `client`.
/// A UDP socket with large buffers (a real path's routers queue bursts; the
/// default ~200 KB socket buffer of a busy test process would drop them and
/// add losses the faults did not ask for).
fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_recv_buffer_size(8 << 20).ok();
    socket.set_send_buffer_size(8 << 20).ok();
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

async fn pump(socket: Arc<UdpSocket>, via: Arc<UdpSocket>, client: SocketAddr, lane: Lane) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let n = match socket.recv(&mut buf).await {
            Ok(n) => n,
            // ICMP errors and the like: keep going.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let datagram = Datagram {
            data: buf[..n].to_vec(),
            via: via.clone(),
            to: Some(client),
        };
        if lane.send((datagram, Instant::now())).is_err() {
            return;
        }
    }
}

/// The listening side: creates sessions and forwards client datagrams.
async fn serve_clients(
    listener: Arc<UdpSocket>,
    upstream: SocketAddr,
    to_upstream: Lane,
    to_client: Lane,
    sessions: Arc<AtomicUsize>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut table: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    // Dropping the set (if this task is aborted) aborts the session tasks
    // and closes their sockets.
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let bind_addr = SocketAddr::new(
        if upstream.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        },
        0,
    );
    loop {
        let received = tokio::select! {
            r = listener.recv_from(&mut buf) => r,
            _ = &mut shutdown => {
                tasks.shutdown().await;
                return;
            }
        };
        let (n, client) = match received {
            Ok(r) => r,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let socket = match table.entry(client) {
            Entry::Occupied(e) => e.get().clone(),
            Entry::Vacant(e) => {
                let Ok(socket) = bind_udp(bind_addr) else {
                    continue;
                };
                // Only the upstream may answer on a session socket.
                if socket.connect(upstream).await.is_err() {
                    continue;
                }
                let socket = Arc::new(socket);
                tasks.spawn(pump(
                    socket.clone(),
                    listener.clone(),
                    client,
                    to_client.clone(),
                ));
                sessions.fetch_add(1, Ordering::Relaxed);
                e.insert(socket).clone()
            }
        };
        let datagram = Datagram {
            data: buf[..n].to_vec(),
            via: socket,
            to: None,
        };
        if to_upstream.send((datagram, Instant::now())).is_err() {
            return;
        }
    }
}

/// A running fault-injecting UDP proxy in front of one upstream address.
///
/// Its tasks run on the current tokio runtime; [`UdpProxy::stop`] or dropping
/// the proxy ends them. Sessions are kept for the proxy's lifetime.
///
/// ```no_run
/// # async fn demo(upstream: std::net::SocketAddr) -> anyhow::Result<()> {
/// use std::time::Duration;
/// use strait_chaos_tests::udp_proxy::UdpProxy;
///
/// let proxy = UdpProxy::start("127.0.0.1:0".parse()?, upstream).await?;
/// let faults = proxy.faults();
/// faults.set_delay(Duration::from_millis(40)); // 80 ms more round trip
/// // ... point the other site at proxy.local_addr() ...
/// faults.partition();
/// faults.heal();
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct UdpProxy {
    local: SocketAddr,
    upstream: SocketAddr,
    faults: FaultHandle,
    counters: [Arc<Counters>; 2],
    sessions: Arc<AtomicUsize>,
    shutdown: Option<oneshot::Sender<()>>,
    /// The listener.
    tasks: Vec<JoinHandle<()>>,
    /// The schedulers (they end when the listener and its sessions have).
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl UdpProxy {
    /// Bind `listen` (usually `127.0.0.1:0`) and forward to `upstream`,
    /// without faults until told otherwise.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<UdpProxy> {
        let listener =
            Arc::new(bind_udp(listen).with_context(|| format!("udp proxy: binding {listen}"))?);
        let local = listener.local_addr().context("udp proxy: local address")?;
        let faults = FaultHandle::default();
        let counters = [Arc::new(Counters::default()), Arc::new(Counters::default())];
        let sessions = Arc::new(AtomicUsize::new(0));

        let mut tasks = Vec::new();
        let mut lanes = Vec::new();
        let mut threads = Vec::new();
        for dir in Direction::BOTH {
            let (tx, rx) = std::sync::mpsc::channel();
            let scheduler = Scheduler {
                dir,
                faults: faults.clone(),
                counters: counters[dir.index()].clone(),
                rng: StdRng::from_os_rng(),
                queue: BinaryHeap::new(),
                held: None,
                seq: 0,
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("udp-proxy-{}", dir.index()))
                    .spawn(move || scheduler.run(rx))
                    .context("udp proxy: starting a scheduler thread")?,
            );
            lanes.push(tx);
        }
        let to_client = lanes.pop().context("udp proxy: lane")?;
        let to_upstream = lanes.pop().context("udp proxy: lane")?;
        let (shutdown, shutdown_rx) = oneshot::channel();
        tasks.push(tokio::spawn(serve_clients(
            listener,
            upstream,
            to_upstream,
            to_client,
            sessions.clone(),
            shutdown_rx,
        )));
        Ok(UdpProxy {
            local,
            upstream,
            faults,
            counters,
            sessions,
            shutdown: Some(shutdown),
            tasks,
            threads,
        })
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The address everything is forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// A handle to change the faults while the proxy runs.
    pub fn faults(&self) -> FaultHandle {
        self.faults.clone()
    }

    /// Apply `faults` to both directions.
    pub fn set_faults(&self, faults: Faults) {
        self.faults.set(faults);
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            to_upstream: self.counters[Direction::ToUpstream.index()].snapshot(),
            to_client: self.counters[Direction::ToClient.index()].snapshot(),
        }
    }

    /// How many client addresses have been seen (one session each).
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// End the proxy's tasks and wait until its sockets are closed.
    /// Datagrams still delayed are dropped.
    pub async fn stop(mut self) {
        let mut tasks = std::mem::take(&mut self.tasks);
        // The listener closes its sessions itself, then ends.
        if let (Some(shutdown), Some(listener)) = (self.shutdown.take(), tasks.pop()) {
            let _ = shutdown.send(());
            let _ = listener.await;
        }
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        // The schedulers drop what is still delayed (and its sockets) and
        // end once the lanes are gone.
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
