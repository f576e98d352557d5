//! The HTTP listener: the accept loop (connection caps), plain HTTP or TLS
//! (reloaded on change), HTTP/1.1 and HTTP/2 through hyper, per-connection
//! header and idle timeouts, a body deadline per request, and graceful
//! shutdown with a deadline. The routes are [`crate::http::router`]'s.

pub mod activity;
pub mod tls;
pub mod tokens;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

use crate::config::HttpServer;
use activity::{Activity, Timeouts, Verdict};
pub use tls::ReloadingTls;

/// How the listener serves.
#[derive(Clone)]
pub struct ServeOptions {
    /// Timeouts and caps.
    pub limits: HttpServer,
    /// TLS; plain HTTP when `None`.
    pub tls: Option<Arc<ReloadingTls>>,
}

impl ServeOptions {
    fn timeouts(&self) -> Timeouts {
        Timeouts {
            header: Duration::from_millis(self.limits.header_timeout_ms),
            idle: Duration::from_millis(self.limits.idle_timeout_ms),
        }
    }
}

/// The error a request body gives once its deadline has passed;
/// [`crate::http`] answers it with 408.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within {0:?} (http_server.body_timeout_ms)")]
pub struct BodyTimeout(pub Duration);

/// Open connections, in all and per peer address.
#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A slot taken by one connection; given back on drop.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Slot {
    fn take(
        counts: &Arc<Mutex<Counts>>,
        ip: IpAddr,
        limits: &HttpServer,
    ) -> Result<Slot, &'static str> {
        let mut c = match counts.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if c.total >= limits.max_connections {
            return Err("max_connections");
        }
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= limits.max_connections_per_ip {
            return Err("max_connections_per_ip");
        }
        *n += 1;
        c.total += 1;
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("strait_http_connections").set(c.total as f64);
        Ok(Slot {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = match self.counts.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("strait_http_connections").set(c.total as f64);
    }
}

/// Serve `router` on `listener` until `shutdown` completes; then stop
/// accepting, let requests in progress finish for up to
/// `http_server.shutdown_timeout_ms`, and close what is left.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    let _watch = opts
        .tls
        .as_ref()
        .map(|t| crate::util::AbortOnDrop(tokio::spawn(t.clone().watch())));
    tokio::pin!(shutdown);
    let mut refused_logged: Option<std::time::Instant> = None;
    loop {
        while conns.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match Slot::take(&counts, peer.ip(), &opts.limits) {
            Ok(s) => s,
            Err(cap) => {
                metrics::counter!("strait_http_connections_refused_total", "cap" => cap)
                    .increment(1);
                if refused_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    refused_logged = Some(std::time::Instant::now());
                    tracing::warn!(%peer, cap, "HTTP connection refused: http_server.{cap} reached");
                }
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        conns.spawn(connection(
            stream,
            peer,
            slot,
            router.clone(),
            opts.clone(),
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let deadline = Duration::from_millis(opts.limits.shutdown_timeout_ms);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(deadline, drain).await.is_err() {
        tracing::warn!(
            left = conns.len(),
            "HTTP connections still busy after http_server.shutdown_timeout_ms: closing them"
        );
    }
    conns.abort_all();
    Ok(())
}

/// One connection: the TLS handshake (within the header timeout), then
/// HTTP until the peer closes, a timeout fires, or the server stops.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    router: Router,
    opts: ServeOptions,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let _slot = slot;
    let activity = Arc::new(Activity::default());
    let io = Tracked {
        inner: stream,
        activity: activity.clone(),
    };
    let timeouts = opts.timeouts();
    match &opts.tls {
        None => http(TokioIo::new(io), peer, router, &opts, activity, stop).await,
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            match tokio::time::timeout(timeouts.header, acceptor.accept(io)).await {
                Ok(Ok(s)) => http(TokioIo::new(s), peer, router, &opts, activity, stop).await,
                Ok(Err(e)) => {
                    metrics::counter!("strait_http_tls_handshake_failures_total").increment(1);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    metrics::counter!("strait_http_timeouts_total", "kind" => "handshake")
                        .increment(1);
                    tracing::debug!(%peer, "TLS handshake not done within the header timeout");
                }
            }
        }
    }
}

async fn http<I>(
    io: TokioIo<I>,
    peer: SocketAddr,
    router: Router,
    opts: &ServeOptions,
    activity: Arc<Activity>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let body_timeout = Duration::from_millis(opts.limits.body_timeout_ms);
    let timeouts = opts.timeouts();
    let svc_activity = activity.clone();
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let guard = InFlight::start(svc_activity.clone());
        let mut req = req.map(|b| {
            Body::new(DeadlineBody {
                inner: b,
                deadline: Box::pin(tokio::time::sleep(body_timeout)),
                limit: body_timeout,
            })
        });
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            let resp = match router.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(resp.map(|b| {
                Body::new(Guarded {
                    inner: b,
                    _guard: guard,
                })
            }))
        }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        let wait = match activity.verdict(timeouts) {
            Verdict::Keep(d) => d,
            Verdict::HeaderTimeout => {
                metrics::counter!("strait_http_timeouts_total", "kind" => "header").increment(1);
                tracing::debug!(%peer, "closing a connection: request headers not received within http_server.header_timeout_ms");
                return;
            }
            Verdict::IdleTimeout => {
                metrics::counter!("strait_http_timeouts_total", "kind" => "idle").increment(1);
                tracing::debug!(%peer, "closing an idle connection (http_server.idle_timeout_ms)");
                return;
            }
            Verdict::WriteStalled => {
                metrics::counter!("strait_http_timeouts_total", "kind" => "write").increment(1);
                tracing::debug!(%peer, "closing a connection whose peer stopped reading (http_server.idle_timeout_ms)");
                return;
            }
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep(wait) => {}
            c = stop.changed(), if !stopping => {
                if c.is_err() || *stop.borrow() {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// The connection's socket, telling [`Activity`] when bytes arrive.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_bytes();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.on_write(r.is_pending());
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.on_write(r.is_pending());
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// One request in progress: counted from its headers until its answer's
/// body is sent or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(a: Arc<Activity>) -> InFlight {
        a.request_started();
        InFlight(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A response body that ends the request's [`InFlight`] when dropped.
struct Guarded {
    inner: Body,
    _guard: InFlight,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails with [`BodyTimeout`] once its deadline passed.
struct DeadlineBody {
    inner: hyper::body::Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    metrics::counter!("strait_http_timeouts_total", "kind" => "body").increment(1);
                    return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.limit)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `e` (a request body's error, as axum hands it over) is a
/// [`BodyTimeout`].
pub fn is_body_timeout(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<BodyTimeout>() {
            return true;
        }
        source = s.source();
    }
    false
}
