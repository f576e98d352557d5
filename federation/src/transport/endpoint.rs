//! The tokio/quinn glue: one QUIC endpoint per node, serving requests and
//! reaching peers over one reused connection each.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::VarInt;
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::codec::{self, Frame, LEN_BYTES, codes};
use super::tls;
use crate::certs::{NodeCredentials, NodeIdentity, identity_from_cert_der};

/// QUIC application close code: endpoint shutting down.
pub const CLOSE_SHUTDOWN: u32 = 0;
/// QUIC application close code: the peer's identity was refused.
pub const CLOSE_REFUSED: u32 = 1;
/// QUIC application close code: the peer is not the node we meant to reach.
pub const CLOSE_WRONG_PEER: u32 = 2;

/// Who may connect to this endpoint (beyond holding a cluster certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptPolicy {
    /// Any node with a certificate from the cluster CA.
    AnyNode,
    /// Only nodes of this endpoint's own site.
    SameSite,
    /// Only nodes of these sites.
    Sites(Vec<String>),
}

/// Settings of an endpoint.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Largest frame sent or accepted.
    pub max_frame: usize,
    /// Give up a connection attempt after this long.
    pub connect_timeout: Duration,
    /// Default deadline of one request ([`PeerClient::request`]).
    pub request_timeout: Duration,
    /// QUIC keep-alive interval.
    pub keep_alive: Duration,
    /// A connection silent this long is dead.
    pub idle_timeout: Duration,
    /// Concurrent requests (streams) per connection.
    pub max_concurrent_streams: u32,
    /// First delay before reconnecting after a failed attempt.
    pub backoff_min: Duration,
    /// Longest delay between reconnection attempts.
    pub backoff_max: Duration,
    /// Who may connect.
    pub accept: AcceptPolicy,
    /// Round-trip time assumed before one is measured. QUIC resends a lost
    /// handshake packet after about three times this: with the default
    /// (333 ms, quinn's) a connection attempt made while the peer is down
    /// completes only about a second after it comes back.
    pub initial_rtt: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_frame: codec::DEFAULT_MAX_FRAME,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(6),
            max_concurrent_streams: 1024,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            accept: AcceptPolicy::AnyNode,
            initial_rtt: Duration::from_millis(333),
        }
    }
}

/// A request as a handler sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The authenticated peer (from its certificate).
    pub peer: NodeIdentity,
    /// Which operation.
    pub method: u16,
    /// Its body.
    pub body: Bytes,
}

/// A failed request, as answered by the remote handler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("remote error {code}: {message}")]
pub struct RemoteError {
    /// One of [`codes`] or an application code.
    pub code: u16,
    /// What went wrong.
    pub message: String,
}

impl RemoteError {
    /// An error with `code` and `message`.
    pub fn new(code: u16, message: impl Into<String>) -> RemoteError {
        RemoteError {
            code,
            message: message.into(),
        }
    }
}

/// A boxed handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Bytes, RemoteError>> + Send>>;

/// Serves requests arriving at an endpoint.
pub trait Handler: Send + Sync + 'static {
    /// Answer one request.
    fn handle(&self, req: Request) -> HandlerFuture;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, RemoteError>> + Send + 'static,
{
    fn handle(&self, req: Request) -> HandlerFuture {
        Box::pin(self(req))
    }
}

/// Why the transport could not set up or reach a peer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// Bad TLS material or settings.
    #[error("{0}")]
    Config(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind {addr}: {message}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        message: String,
    },
    /// The peer address does not resolve.
    #[error("cannot resolve peer address {addr:?}: {message}")]
    Resolve {
        /// The address as given.
        addr: String,
        /// Why.
        message: String,
    },
    /// The connection attempt (QUIC or TLS handshake) failed.
    #[error("cannot connect to {peer} at {addr}: {message}")]
    Connect {
        /// The peer we meant to reach.
        peer: NodeIdentity,
        /// Its address.
        addr: String,
        /// Why.
        message: String,
    },
    /// The peer proved to be another node than expected.
    #[error("peer at {addr} is not {expected}: its certificate says {actual} (connection refused)")]
    WrongPeer {
        /// Its address.
        addr: String,
        /// The node we meant to reach.
        expected: NodeIdentity,
        /// What its certificate says.
        actual: String,
    },
    /// Still backing off after earlier failures.
    #[error("{peer} at {addr} is unreachable (next attempt in {retry_in:?}): {last_error}")]
    BackingOff {
        /// The peer.
        peer: NodeIdentity,
        /// Its address.
        addr: String,
        /// Time until the next attempt.
        retry_in: Duration,
        /// The last failure.
        last_error: String,
    },
    /// The peer accepted the handshake, then refused this node (e.g. its
    /// site is not allowed there).
    #[error("{peer} at {addr} refused this node: {reason}")]
    Refused {
        /// The peer.
        peer: NodeIdentity,
        /// Its address.
        addr: String,
        /// The reason it gave.
        reason: String,
    },
    /// The endpoint is closed.
    #[error("the endpoint is closed")]
    Closed,
}

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    /// No connection to the peer (the request was not sent).
    #[error("unreachable: {0}")]
    Unreachable(#[from] TransportError),
    /// The connection or stream failed during the request (it may or may
    /// not have been processed).
    #[error("request to {peer} failed: {message}")]
    Connection {
        /// The peer.
        peer: NodeIdentity,
        /// Why.
        message: String,
    },
    /// No answer within the deadline.
    #[error("request to {peer} timed out after {after:?}")]
    Timeout {
        /// The peer.
        peer: NodeIdentity,
        /// The deadline.
        after: Duration,
    },
    /// The request or its answer broke the framing.
    #[error("protocol error with {peer}: {error}")]
    Codec {
        /// The peer.
        peer: NodeIdentity,
        /// What.
        error: codec::CodecError,
    },
    /// The peer's handler answered with an error.
    #[error("{peer} answered: {error}")]
    Remote {
        /// The peer.
        peer: NodeIdentity,
        /// Its answer.
        error: RemoteError,
    },
}

/// Socket buffer size asked for (the kernel caps it at `net.core.rmem_max`
/// / `wmem_max`). The default (~200 KB) overflows when a busy process reads
/// a burst late, and every datagram dropped there is a loss that shrinks
/// the congestion window of a long link for seconds.
pub const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// A UDP socket bound at `addr` with receive and send buffers of `buffer`
/// bytes (best effort: a smaller size granted by the kernel is not an error).
pub fn udp_socket(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_recv_buffer_size(buffer).ok();
    socket.set_send_buffer_size(buffer).ok();
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Endpoint configuration whose stateless reset key and connection-id key
/// are derived from the node's private key, so that both are the same after
/// a restart. A node that restarts on the same address then answers packets
/// on its peers' connections to its previous process with a stateless
/// reset (it recognises the connection ids as its own and signs the reset
/// with the token its previous process announced), and they drop those
/// connections at once — on the next keep-alive — instead of sending votes
/// and appends into them until the idle timeout. A second failure soon after
/// a restart would otherwise need several election rounds.
fn restart_aware_config(creds: &NodeCredentials) -> quinn::EndpointConfig {
    use aws_lc_rs::hmac;
    let secret = hmac::Key::new(hmac::HMAC_SHA256, creds.key.secret_der());
    let reset = hmac::sign(&secret, b"strait quic stateless reset key v1");
    let cid = hmac::sign(&secret, b"strait quic connection id key v1");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config =
        quinn::EndpointConfig::new(Arc::new(hmac::Key::new(hmac::HMAC_SHA256, reset.as_ref())));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}

fn quinn_transport(cfg: &TransportConfig) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(cfg.max_concurrent_streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.keep_alive_interval(Some(cfg.keep_alive));
    t.initial_rtt(cfg.initial_rtt);
    if let Ok(idle) = quinn::IdleTimeout::try_from(cfg.idle_timeout) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

/// The identity in the certificate a connection's peer presented.
fn peer_identity(conn: &quinn::Connection) -> Result<NodeIdentity, String> {
    let any = conn
        .peer_identity()
        .ok_or_else(|| "the peer presented no certificate".to_string())?;
    let certs = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| "the peer presented no X.509 certificate".to_string())?;
    let leaf = certs
        .first()
        .ok_or_else(|| "the peer presented an empty certificate chain".to_string())?;
    identity_from_cert_der(leaf)
}

/// The client configuration new connections use (replaced when the
/// node's certificate is rotated, see [`Endpoint::reload_credentials`]).
type SharedClientConfig = Arc<std::sync::RwLock<quinn::ClientConfig>>;

fn current_client_config(c: &SharedClientConfig) -> quinn::ClientConfig {
    match c.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

struct Inner {
    quinn: quinn::Endpoint,
    identity: NodeIdentity,
    config: TransportConfig,
    client_config: SharedClientConfig,
    peers: StdMutex<HashMap<(NodeIdentity, String), Arc<PeerClient>>>,
    accept_task: StdMutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: stop serving and release the socket.
        self.quinn
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        if let Some(task) = self.accept_task.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
    }
}

/// A node's QUIC endpoint: serves requests to a [`Handler`] and reaches
/// peers through cached [`PeerClient`]s. Cheap to clone; dropping the last
/// clone stops it ([`Endpoint::close`] also waits until peers are told).
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("identity", &self.inner.identity)
            .field("addr", &self.inner.quinn.local_addr().ok())
            .finish()
    }
}

impl Endpoint {
    /// Bind a UDP socket at `addr` and start serving. Must be called inside
    /// a tokio runtime. Without a handler every request is answered
    /// "unavailable".
    pub fn bind(
        addr: SocketAddr,
        creds: &NodeCredentials,
        config: TransportConfig,
        handler: Option<Arc<dyn Handler>>,
    ) -> Result<Endpoint, TransportError> {
        let cfg_err = |e: tls::TlsConfigError| TransportError::Config(e.to_string());
        let transport = quinn_transport(&config);
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(
            tls::quic_server_crypto(creds).map_err(cfg_err)?,
        ));
        server.transport_config(transport.clone());
        let mut client_config =
            quinn::ClientConfig::new(Arc::new(tls::quic_client_crypto(creds).map_err(cfg_err)?));
        client_config.transport_config(transport);
        let bind_err = |message: String| TransportError::Bind { addr, message };
        let socket = udp_socket(addr, SOCKET_BUFFER_BYTES).map_err(|e| bind_err(e.to_string()))?;
        let runtime =
            quinn::default_runtime().ok_or_else(|| bind_err("no async runtime found".into()))?;
        let endpoint =
            quinn::Endpoint::new(restart_aware_config(creds), Some(server), socket, runtime)
                .map_err(|e| bind_err(e.to_string()))?;
        let inner = Arc::new(Inner {
            quinn: endpoint.clone(),
            identity: creds.identity.clone(),
            config: config.clone(),
            client_config: Arc::new(std::sync::RwLock::new(client_config)),
            peers: StdMutex::new(HashMap::new()),
            accept_task: StdMutex::new(None),
        });
        let server = Server {
            identity: creds.identity.clone(),
            config,
            handler,
        };
        let task = tokio::spawn(server.run(endpoint));
        if let Ok(mut slot) = inner.accept_task.lock() {
            *slot = Some(task);
        }
        Ok(Endpoint { inner })
    }

    /// Use rotated credentials (a new certificate and key for the same
    /// node, or a new CA bundle) from now on: connections accepted and
    /// opened after this present the new certificate and check peers
    /// against the new CA; open connections keep theirs until they close.
    /// Refused when the certificate names another node.
    pub fn reload_credentials(&self, creds: &NodeCredentials) -> Result<(), TransportError> {
        if creds.identity != self.inner.identity {
            return Err(TransportError::Config(format!(
                "the new certificate is for {}, this endpoint is {}",
                creds.identity, self.inner.identity
            )));
        }
        let cfg_err = |e: tls::TlsConfigError| TransportError::Config(e.to_string());
        let transport = quinn_transport(&self.inner.config);
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(
            tls::quic_server_crypto(creds).map_err(cfg_err)?,
        ));
        server.transport_config(transport.clone());
        let mut client =
            quinn::ClientConfig::new(Arc::new(tls::quic_client_crypto(creds).map_err(cfg_err)?));
        client.transport_config(transport);
        self.inner.quinn.set_server_config(Some(server));
        match self.inner.client_config.write() {
            Ok(mut g) => *g = client,
            Err(p) => *p.into_inner() = client,
        }
        Ok(())
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.inner
            .quinn
            .local_addr()
            .map_err(|e| TransportError::Config(e.to_string()))
    }

    /// This node's identity.
    pub fn identity(&self) -> &NodeIdentity {
        &self.inner.identity
    }

    /// The settings.
    pub fn config(&self) -> &TransportConfig {
        &self.inner.config
    }

    /// The client for `expected` at `addr` (`host:port`), shared by all
    /// callers; it connects on first use.
    pub fn peer(&self, expected: NodeIdentity, addr: impl Into<String>) -> Arc<PeerClient> {
        let addr = addr.into();
        let key = (expected.clone(), addr.clone());
        let make = || {
            Arc::new(PeerClient {
                link: Arc::new(Link {
                    endpoint: self.inner.quinn.clone(),
                    client_config: self.inner.client_config.clone(),
                    expected,
                    addr,
                    config: self.inner.config.clone(),
                    state: StdMutex::new(ConnState::default()),
                }),
            })
        };
        match self.inner.peers.lock() {
            Ok(mut peers) => peers.entry(key).or_insert_with(make).clone(),
            Err(_) => make(),
        }
    }

    /// The client for `expected` at `addr` if one has been made (by
    /// [`Self::peer`]), without making one.
    pub fn existing_peer(&self, expected: &NodeIdentity, addr: &str) -> Option<Arc<PeerClient>> {
        let peers = self.inner.peers.lock().ok()?;
        peers.get(&(expected.clone(), addr.to_string())).cloned()
    }

    /// Close every connection and stop serving; waits (briefly) until the
    /// peers have been told.
    pub async fn close(&self) {
        self.inner
            .quinn
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        let task = self
            .inner
            .accept_task
            .lock()
            .ok()
            .and_then(|mut t| t.take());
        if let Some(task) = task {
            task.abort();
        }
        if let Ok(mut peers) = self.inner.peers.lock() {
            peers.clear();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.quinn.wait_idle()).await;
    }
}

struct Server {
    identity: NodeIdentity,
    config: TransportConfig,
    handler: Option<Arc<dyn Handler>>,
}

impl Server {
    async fn run(self, endpoint: quinn::Endpoint) {
        let this = Arc::new(self);
        while let Some(incoming) = endpoint.accept().await {
            let this = this.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => this.serve_connection(conn).await,
                    Err(e) => {
                        warn!(%remote, error = %e, "refused a QUIC connection: handshake failed")
                    }
                }
            });
        }
    }

    fn allowed(&self, peer: &NodeIdentity) -> Result<(), String> {
        match &self.config.accept {
            AcceptPolicy::AnyNode => Ok(()),
            AcceptPolicy::SameSite if peer.site == self.identity.site => Ok(()),
            AcceptPolicy::SameSite => Err(format!(
                "{peer} is not of this node's site {:?}",
                self.identity.site
            )),
            AcceptPolicy::Sites(sites) if sites.contains(&peer.site) => Ok(()),
            AcceptPolicy::Sites(sites) => Err(format!("{peer} is not of the sites {sites:?}")),
        }
    }

    async fn serve_connection(self: Arc<Self>, conn: quinn::Connection) {
        let remote = conn.remote_address();
        let peer = match peer_identity(&conn).and_then(|p| self.allowed(&p).map(|()| p)) {
            Ok(p) => p,
            Err(reason) => {
                warn!(%remote, %reason, "refused a QUIC connection");
                conn.close(VarInt::from_u32(CLOSE_REFUSED), reason.as_bytes());
                return;
            }
        };
        debug!(%remote, %peer, "accepted a QUIC connection");
        loop {
            match conn.accept_bi().await {
                Ok((send, recv)) => {
                    let this = self.clone();
                    let peer = peer.clone();
                    tokio::spawn(async move { this.serve_stream(peer, send, recv).await });
                }
                Err(e) => {
                    debug!(%remote, %peer, error = %e, "QUIC connection ended");
                    return;
                }
            }
        }
    }

    async fn serve_stream(
        &self,
        peer: NodeIdentity,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let max = self.config.max_frame;
        let answer = match recv.read_to_end(max + LEN_BYTES).await {
            Ok(bytes) => match Frame::decode(&bytes, max) {
                Ok(Frame::Request { method, body }) => match &self.handler {
                    Some(h) => h.handle(Request { peer, method, body }).await,
                    None => Err(RemoteError::new(
                        codes::UNAVAILABLE,
                        "this node serves no requests yet",
                    )),
                },
                Ok(_) => Err(RemoteError::new(
                    codes::BAD_FRAME,
                    "expected a request frame",
                )),
                Err(e) => Err(RemoteError::new(codes::BAD_FRAME, e.to_string())),
            },
            Err(quinn::ReadToEndError::TooLong) => Err(RemoteError::new(
                codes::BAD_FRAME,
                codec::CodecError::TooLarge { len: max + 1, max }.to_string(),
            )),
            Err(e) => {
                debug!(%peer, error = %e, "request stream failed");
                return;
            }
        };
        let frame = match answer {
            Ok(body) => Frame::Response { body },
            Err(e) => Frame::Error {
                code: e.code,
                message: e.message,
            },
        };
        let bytes = match frame.encode(max) {
            Ok(b) => b,
            Err(e) => match (Frame::Error {
                code: codes::INTERNAL,
                message: format!("the answer is too large: {e}"),
            })
            .encode(max)
            {
                Ok(b) => b,
                Err(_) => return,
            },
        };
        if send.write_all(&bytes).await.is_ok() {
            let _ = send.finish();
        }
    }
}

/// A connection attempt's outcome, shared with everyone waiting for it.
type Attempt = watch::Receiver<Option<Result<quinn::Connection, TransportError>>>;

#[derive(Default)]
struct ConnState {
    conn: Option<quinn::Connection>,
    pending: Option<Attempt>,
    failures: u32,
    next_attempt: Option<Instant>,
    last_error: Option<TransportError>,
}

/// What a [`PeerClient`] shares with its connection attempts.
struct Link {
    endpoint: quinn::Endpoint,
    client_config: SharedClientConfig,
    expected: NodeIdentity,
    addr: String,
    config: TransportConfig,
    state: StdMutex<ConnState>,
}

/// The way to one peer: a lazily opened, reused QUIC connection on which
/// every request is its own stream. A dead connection is replaced on the
/// next request; failed attempts back off exponentially. A connection
/// attempt runs on its own task, so a caller that gives up (a short Raft
/// RPC deadline) does not abort it: the next caller finds it done.
pub struct PeerClient {
    link: Arc<Link>,
}

impl fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerClient")
            .field("peer", &self.link.expected)
            .field("addr", &self.link.addr)
            .finish()
    }
}

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record the outcome of a connection attempt.
    fn settle(&self, r: &Result<quinn::Connection, TransportError>) {
        let mut st = self.lock();
        st.pending = None;
        match r {
            Ok(c) => {
                st.conn = Some(c.clone());
                st.failures = 0;
                st.next_attempt = None;
                st.last_error = None;
            }
            Err(e) => self.record_failure(&mut st, e),
        }
    }

    /// Count a failure and schedule the next attempt.
    fn record_failure(&self, st: &mut ConnState, e: &TransportError) {
        st.conn = None;
        st.failures = st.failures.saturating_add(1);
        let exp = st.failures.saturating_sub(1).min(16);
        let delay = self
            .config
            .backoff_min
            .saturating_mul(1u32 << exp)
            .min(self.config.backoff_max);
        st.next_attempt = Some(Instant::now() + delay);
        st.last_error = Some(e.clone());
    }

    async fn connect(&self) -> Result<quinn::Connection, TransportError> {
        let connect_err = |message: String| TransportError::Connect {
            peer: self.expected.clone(),
            addr: self.addr.clone(),
            message,
        };
        let addr = resolve(&self.addr).await?;
        // The server name is only sent as SNI; identity is checked below.
        let sni = format!(
            "node-{}.{}.strait",
            self.expected.node_id, self.expected.site
        );
        let connecting = self
            .endpoint
            .connect_with(current_client_config(&self.client_config), addr, &sni)
            .map_err(|e| connect_err(e.to_string()))?;
        let conn = match tokio::time::timeout(self.config.connect_timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(connect_err(e.to_string())),
            Err(_) => {
                return Err(connect_err(format!(
                    "no handshake within {:?}",
                    self.config.connect_timeout
                )));
            }
        };
        let actual = match peer_identity(&conn) {
            Ok(actual) if actual == self.expected => return Ok(conn),
            Ok(actual) => actual.to_string(),
            Err(reason) => reason,
        };
        let e = TransportError::WrongPeer {
            addr: self.addr.clone(),
            expected: self.expected.clone(),
            actual,
        };
        warn!(error = %e, "refused a peer");
        conn.close(VarInt::from_u32(CLOSE_WRONG_PEER), b"not the expected node");
        Err(e)
    }
}

impl PeerClient {
    /// The node this client reaches.
    pub fn peer(&self) -> &NodeIdentity {
        &self.link.expected
    }

    /// Its address.
    pub fn addr(&self) -> &str {
        &self.link.addr
    }

    /// Whether a live connection is open now.
    pub fn is_connected(&self) -> bool {
        let st = self.link.lock();
        st.conn.as_ref().is_some_and(|c| c.close_reason().is_none())
    }

    /// Path figures of the live connection (congestion window, RTT,
    /// losses), if one is open.
    pub fn path_stats(&self) -> Option<quinn::PathStats> {
        let st = self.link.lock();
        st.conn
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .map(|c| c.stats().path)
    }

    /// The live connection, opening one if needed (subject to backoff).
    pub async fn connection(&self) -> Result<quinn::Connection, TransportError> {
        let mut attempt = {
            let mut st = self.link.lock();
            if let Some(c) = &st.conn {
                if c.close_reason().is_none() {
                    return Ok(c.clone());
                }
                st.conn = None;
            }
            match &st.pending {
                Some(a) => a.clone(),
                None => {
                    if let (Some(at), Some(last)) = (st.next_attempt, &st.last_error) {
                        let now = Instant::now();
                        if at > now {
                            return Err(TransportError::BackingOff {
                                peer: self.link.expected.clone(),
                                addr: self.link.addr.clone(),
                                retry_in: at - now,
                                last_error: last.to_string(),
                            });
                        }
                    }
                    let (tx, rx) = watch::channel(None);
                    st.pending = Some(rx.clone());
                    let link = self.link.clone();
                    tokio::spawn(async move {
                        let r = link.connect().await;
                        link.settle(&r);
                        let _ = tx.send(Some(r));
                    });
                    rx
                }
            }
        };
        let outcome = attempt
            .wait_for(Option::is_some)
            .await
            .map_err(|_| TransportError::Closed)?;
        match &*outcome {
            Some(r) => r.clone(),
            None => Err(TransportError::Closed),
        }
    }

    /// Why a request on `conn` failed: a refusal by the peer counts as a
    /// failed connection attempt (backoff); a closed connection is dropped
    /// so that the next request reconnects.
    fn failure(&self, conn: &quinn::Connection, message: String) -> RequestError {
        let current = |st: &ConnState| {
            st.conn
                .as_ref()
                .is_some_and(|c| c.stable_id() == conn.stable_id())
        };
        match conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(close))
                if close.error_code == VarInt::from_u32(CLOSE_REFUSED) =>
            {
                let e = TransportError::Refused {
                    peer: self.link.expected.clone(),
                    addr: self.link.addr.clone(),
                    reason: String::from_utf8_lossy(&close.reason).into_owned(),
                };
                let mut st = self.link.lock();
                if current(&st) {
                    self.link.record_failure(&mut st, &e);
                }
                RequestError::Unreachable(e)
            }
            Some(reason) => {
                let mut st = self.link.lock();
                if current(&st) {
                    st.conn = None;
                }
                RequestError::Connection {
                    peer: self.link.expected.clone(),
                    message: format!("{message} ({reason})"),
                }
            }
            None => RequestError::Connection {
                peer: self.link.expected.clone(),
                message,
            },
        }
    }

    /// Send a request and wait for its answer, within the configured
    /// request timeout.
    pub async fn request(&self, method: u16, body: Bytes) -> Result<Bytes, RequestError> {
        self.request_within(method, body, self.link.config.request_timeout)
            .await
    }

    /// Send a request and wait for its answer within `timeout` (connecting
    /// included).
    pub async fn request_within(
        &self,
        method: u16,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RequestError> {
        match tokio::time::timeout(timeout, self.request_inner(method, body, 0)).await {
            Ok(r) => r,
            Err(_) => Err(RequestError::Timeout {
                peer: self.link.expected.clone(),
                after: timeout,
            }),
        }
    }

    /// Send a request on a stream of the given send priority (among the
    /// streams of this connection, higher goes first; the default is 0),
    /// within the configured request timeout. Requests that must arrive in
    /// order (link batches) give earlier ones a higher priority, so that
    /// concurrent large requests are sent one after the other instead of
    /// interleaved (where the first completes only when all do).
    pub async fn request_with_priority(
        &self,
        method: u16,
        body: Bytes,
        priority: i32,
    ) -> Result<Bytes, RequestError> {
        let timeout = self.link.config.request_timeout;
        match tokio::time::timeout(timeout, self.request_inner(method, body, priority)).await {
            Ok(r) => r,
            Err(_) => Err(RequestError::Timeout {
                peer: self.link.expected.clone(),
                after: timeout,
            }),
        }
    }

    async fn request_inner(
        &self,
        method: u16,
        body: Bytes,
        priority: i32,
    ) -> Result<Bytes, RequestError> {
        let max = self.link.config.max_frame;
        let frame = Frame::Request { method, body }
            .encode(max)
            .map_err(|error| RequestError::Codec {
                peer: self.link.expected.clone(),
                error,
            })?;
        let conn = self.connection().await?;
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => return Err(self.failure(&conn, e.to_string())),
        };
        if priority != 0 {
            // Only fails on a stream already closed; the write below reports that.
            let _ = send.set_priority(priority);
        }
        let io = async {
            send.write_all(&frame).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            recv.read_to_end(max + LEN_BYTES)
                .await
                .map_err(|e| e.to_string())
        };
        let bytes = match io.await {
            Ok(b) => b,
            Err(message) => return Err(self.failure(&conn, message)),
        };
        match Frame::decode(&bytes, max) {
            Ok(Frame::Response { body }) => Ok(body),
            Ok(Frame::Error { code, message }) => Err(RequestError::Remote {
                peer: self.link.expected.clone(),
                error: RemoteError { code, message },
            }),
            Ok(Frame::Request { .. }) => Err(RequestError::Codec {
                peer: self.link.expected.clone(),
                error: codec::CodecError::Malformed {
                    kind: "request",
                    why: "a request frame as an answer",
                },
            }),
            Err(error) => Err(RequestError::Codec {
                peer: self.link.expected.clone(),
                error,
            }),
        }
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr, TransportError> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    let resolve_err = |message: String| TransportError::Resolve {
        addr: addr.to_string(),
        message,
    };
    let mut addrs = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| resolve_err(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| resolve_err("no address found".into()))
}
