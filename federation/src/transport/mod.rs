//! Node-to-node transport: QUIC (quinn) with mutual TLS (rustls, aws-lc-rs)
//! against the cluster CA, ALPN `strait/1`.
//!
//! - [`codec`]: the framing (length-prefixed request, response and error
//!   frames), free of I/O;
//! - [`tls`]: rustls and quinn crypto configuration, CA chain checks;
//! - [`endpoint`]: the tokio glue: one [`Endpoint`] per node serving a
//!   [`Handler`], and one [`PeerClient`] per peer, which keeps one QUIC
//!   connection open and sends every request on its own stream,
//!   reconnecting with backoff when the connection drops.
//!
//! Identity: both sides must present a certificate from the cluster CA.
//! After the handshake the client compares the node identity in the
//! server's certificate with the node it meant to reach and refuses a
//! mismatch; the server hands the client's identity to its handler and may
//! restrict who connects ([`AcceptPolicy`]).

pub mod codec;
pub mod endpoint;
mod ports;
pub mod tls;

pub use codec::{CodecError, Frame, FrameDecoder};
pub use endpoint::{
    AcceptPolicy, Endpoint, Handler, HandlerFuture, PeerClient, RemoteError, Request, RequestError,
    TransportConfig, TransportError,
};
pub use ports::free_loopback_port;
