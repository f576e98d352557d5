//! Reading what a peer answers: response bodies read up to a bound (a
//! target that answers with a huge body must not exhaust memory) and
//! errors with their whole cause chain (so "connection refused" is not
//! hidden behind "error sending request").

use std::fmt::Write as _;

/// The most of an error answer's body that is kept (for the message).
pub const ERROR_BODY_BYTES: usize = 4 * 1024;

/// A response body read up to a bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CappedBody {
    /// The first bytes of the body (at most the bound).
    pub bytes: Vec<u8>,
    /// The body was longer than the bound (the rest was not read).
    pub truncated: bool,
}

impl CappedBody {
    /// The first `chars` characters of the body as text, with `…` when
    /// anything was left out.
    pub fn snippet(&self, chars: usize) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        let mut out: String = text.chars().take(chars).collect();
        if self.truncated || text.chars().nth(chars).is_some() {
            out.push('…');
        }
        out
    }
}

/// Read at most `max` bytes of `resp`'s body, chunk by chunk, and stop:
/// the rest is never read (dropping the response closes the connection).
pub async fn read_capped(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<CappedBody, reqwest::Error> {
    let announced = resp.content_length();
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = max - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok(CappedBody {
                bytes,
                truncated: true,
            });
        }
        bytes.extend_from_slice(&chunk);
        if bytes.len() == max {
            // Full: more may follow; don't wait for it.
            let truncated = announced.is_none_or(|n| n > max as u64);
            return Ok(CappedBody { bytes, truncated });
        }
    }
    Ok(CappedBody {
        bytes,
        truncated: false,
    })
}

/// An error and all its causes (`source()` chain), joined with `: `; a
/// cause whose text the message already contains is left out.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        next = cause.source();
    }
    out
}

/// A bare HTTP/1.1 server for tests: it answers every request with
/// `status` and a body of `body_len` bytes written in 64 KiB pieces,
/// never held in memory at once, and counts what it managed to write.
#[cfg(test)]
pub(crate) mod test_server {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// What the server saw.
    #[derive(Default)]
    pub struct Written {
        /// Body bytes written to the socket.
        pub bytes: AtomicU64,
        /// The whole body was written.
        pub finished: AtomicBool,
        /// The connection ended (finished or the client went away).
        pub done: AtomicBool,
    }

    /// Start the server; returns its address and its counters.
    pub async fn start(status: u16, body_len: u64) -> (std::net::SocketAddr, Arc<Written>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let written = Arc::new(Written::default());
        let w = written.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let w = w.clone();
                tokio::spawn(async move {
                    read_request(&mut sock).await;
                    let head = format!(
                        "HTTP/1.1 {status} Test\r\ncontent-type: text/plain\r\ncontent-length: {body_len}\r\n\r\n"
                    );
                    if sock.write_all(head.as_bytes()).await.is_ok() {
                        let piece = vec![b'x'; 64 * 1024];
                        let mut left = body_len;
                        while left > 0 {
                            let n = left.min(piece.len() as u64) as usize;
                            if sock.write_all(&piece[..n]).await.is_err() {
                                break;
                            }
                            w.bytes.fetch_add(n as u64, Ordering::SeqCst);
                            left -= n as u64;
                        }
                        if left == 0 {
                            w.finished.store(true, Ordering::SeqCst);
                        }
                    }
                    w.done.store(true, Ordering::SeqCst);
                });
            }
        });
        (addr, written)
    }

    /// Read one request (head and a `content-length` body).
    async fn read_request(sock: &mut tokio::net::TcpStream) {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match sock.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut have = buf.len() - head_end;
        while have < len {
            match sock.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => have += n,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_mark_what_was_left_out() {
        let b = CappedBody {
            bytes: b"abcdef".to_vec(),
            truncated: false,
        };
        assert_eq!(b.snippet(10), "abcdef");
        assert_eq!(b.snippet(3), "abc…");
        let b = CappedBody {
            bytes: b"abc".to_vec(),
            truncated: true,
        };
        assert_eq!(b.snippet(10), "abc…");
    }

    #[tokio::test]
    async fn a_huge_body_is_read_only_up_to_the_bound() {
        let (addr, written) = test_server::start(200, 200 << 20).await;
        let resp = reqwest::Client::new()
            .get(format!("http://{addr}/"))
            .send()
            .await
            .expect("answer");
        let body = read_capped(resp, 4096).await.expect("read");
        assert_eq!(body.bytes.len(), 4096);
        assert!(body.truncated);
        // A short one is read whole.
        let (addr, _) = test_server::start(200, 10).await;
        let resp = reqwest::Client::new()
            .get(format!("http://{addr}/"))
            .send()
            .await
            .expect("answer");
        let body = read_capped(resp, 4096).await.expect("read");
        assert_eq!(body.bytes, b"xxxxxxxxxx");
        assert!(!body.truncated);
        assert!(!written.finished.load(std::sync::atomic::Ordering::SeqCst));
    }
}
