//! The framing of the node-to-node protocol, free of I/O.
//!
//! Each request travels on its own bidirectional QUIC stream: the caller
//! writes one request frame and finishes its side, the server answers with
//! one response or error frame and finishes. A frame is
//!
//! ```text
//! +----------------+---------+---------------------------------------+
//! | length: u32 BE | kind u8 | payload (length - 1 bytes)            |
//! +----------------+---------+---------------------------------------+
//! kind 1 request:  payload = method u16 BE, body
//! kind 2 response: payload = body
//! kind 3 error:    payload = code u16 BE, UTF-8 message
//! ```
//!
//! `length` counts the kind byte and the payload and may not exceed the
//! configured maximum frame size. Bodies are opaque here; the layers above
//! choose their encoding. Nothing in this module panics on any input.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Default largest frame accepted (kind byte plus payload).
pub const DEFAULT_MAX_FRAME: usize = 32 * 1024 * 1024;
/// Bytes of the length prefix.
pub const LEN_BYTES: usize = 4;

const KIND_REQUEST: u8 = 1;
const KIND_RESPONSE: u8 = 2;
const KIND_ERROR: u8 = 3;

/// Error codes carried in error frames.
pub mod codes {
    /// The request frame could not be decoded.
    pub const BAD_FRAME: u16 = 1;
    /// No handler for this method.
    pub const UNKNOWN_METHOD: u16 = 2;
    /// The peer is not allowed to make this request.
    pub const FORBIDDEN: u16 = 3;
    /// The service is not ready (e.g. still starting).
    pub const UNAVAILABLE: u16 = 4;
    /// The handler failed.
    pub const INTERNAL: u16 = 5;
    /// The request body could not be decoded by the handler.
    pub const BAD_REQUEST: u16 = 6;
}

/// One frame of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A request for `method` with an opaque body.
    Request {
        /// Which operation.
        method: u16,
        /// Its arguments.
        body: Bytes,
    },
    /// A successful answer.
    Response {
        /// The result.
        body: Bytes,
    },
    /// A failed answer.
    Error {
        /// One of [`codes`] or an application code.
        code: u16,
        /// What went wrong.
        message: String,
    },
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The length prefix exceeds the maximum frame size.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A zero length prefix (a frame needs at least its kind byte).
    #[error("empty frame")]
    Empty,
    /// An unknown kind byte.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The input ends inside a frame.
    #[error("truncated frame: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the frame needs.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The payload does not fit its kind.
    #[error("malformed {kind} frame: {why}")]
    Malformed {
        /// Frame kind.
        kind: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// Bytes follow the single frame expected.
    #[error("{0} unexpected bytes after the frame")]
    Trailing(usize),
}

impl Frame {
    /// Length of the encoded frame, prefix included.
    pub fn encoded_len(&self) -> usize {
        LEN_BYTES + self.body_len()
    }

    fn body_len(&self) -> usize {
        1 + match self {
            Frame::Request { body, .. } => 2 + body.len(),
            Frame::Response { body } => body.len(),
            Frame::Error { message, .. } => 2 + message.len(),
        }
    }

    /// Encode, refusing frames larger than `max`.
    pub fn encode(&self, max: usize) -> Result<Bytes, CodecError> {
        let len = self.body_len();
        if len > max || u32::try_from(len).is_err() {
            return Err(CodecError::TooLarge { len, max });
        }
        let mut out = BytesMut::with_capacity(LEN_BYTES + len);
        out.put_u32(len as u32);
        match self {
            Frame::Request { method, body } => {
                out.put_u8(KIND_REQUEST);
                out.put_u16(*method);
                out.put_slice(body);
            }
            Frame::Response { body } => {
                out.put_u8(KIND_RESPONSE);
                out.put_slice(body);
            }
            Frame::Error { code, message } => {
                out.put_u8(KIND_ERROR);
                out.put_u16(*code);
                out.put_slice(message.as_bytes());
            }
        }
        Ok(out.freeze())
    }

    /// Decode exactly one frame from `bytes` (no more, no less).
    pub fn decode(bytes: &[u8], max: usize) -> Result<Frame, CodecError> {
        let len = frame_len(bytes, max)?.ok_or(CodecError::Truncated {
            need: LEN_BYTES,
            have: bytes.len(),
        })?;
        let have = bytes.len() - LEN_BYTES;
        if have < len {
            return Err(CodecError::Truncated {
                need: LEN_BYTES + len,
                have: bytes.len(),
            });
        }
        if have > len {
            return Err(CodecError::Trailing(have - len));
        }
        decode_body(Bytes::copy_from_slice(&bytes[LEN_BYTES..]))
    }
}

/// Read the length prefix at the start of `bytes`: `Ok(None)` when fewer
/// than four bytes are there, an error when it is zero or above `max`.
pub fn frame_len(bytes: &[u8], max: usize) -> Result<Option<usize>, CodecError> {
    let Some(prefix) = bytes.get(..LEN_BYTES) else {
        return Ok(None);
    };
    let mut p = prefix;
    let len = p.get_u32() as usize;
    if len == 0 {
        return Err(CodecError::Empty);
    }
    if len > max {
        return Err(CodecError::TooLarge { len, max });
    }
    Ok(Some(len))
}

/// Decode a frame's kind byte and payload (the bytes after the prefix).
pub fn decode_body(mut body: Bytes) -> Result<Frame, CodecError> {
    if body.is_empty() {
        return Err(CodecError::Empty);
    }
    let kind = body.get_u8();
    match kind {
        KIND_REQUEST => {
            if body.len() < 2 {
                return Err(CodecError::Malformed {
                    kind: "request",
                    why: "missing method",
                });
            }
            let method = body.get_u16();
            Ok(Frame::Request { method, body })
        }
        KIND_RESPONSE => Ok(Frame::Response { body }),
        KIND_ERROR => {
            if body.len() < 2 {
                return Err(CodecError::Malformed {
                    kind: "error",
                    why: "missing code",
                });
            }
            let code = body.get_u16();
            let message = String::from_utf8(body.to_vec()).map_err(|_| CodecError::Malformed {
                kind: "error",
                why: "message is not UTF-8",
            })?;
            Ok(Frame::Error { code, message })
        }
        other => Err(CodecError::UnknownKind(other)),
    }
}

/// Incremental decoder: feed bytes as they arrive, take frames out.
/// After an error the decoder stays failed (the stream is unusable).
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max: usize,
    failed: Option<CodecError>,
}

impl FrameDecoder {
    /// A decoder accepting frames up to `max` bytes.
    pub fn new(max: usize) -> FrameDecoder {
        FrameDecoder {
            buf: BytesMut::new(),
            max,
            failed: None,
        }
    }

    /// Add received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, CodecError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let len = match frame_len(&self.buf, self.max) {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.fail(e)),
        };
        if self.buf.len() < LEN_BYTES + len {
            return Ok(None);
        }
        self.buf.advance(LEN_BYTES);
        let body = self.buf.split_to(len).freeze();
        decode_body(body).map(Some).map_err(|e| self.fail(e))
    }

    /// Call at end of input: an error if a partial frame is left.
    pub fn finish(&self) -> Result<(), CodecError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.is_empty() {
            Ok(())
        } else {
            let need = match frame_len(&self.buf, self.max) {
                Ok(Some(len)) => LEN_BYTES + len,
                _ => LEN_BYTES,
            };
            Err(CodecError::Truncated {
                need,
                have: self.buf.len(),
            })
        }
    }

    fn fail(&mut self, e: CodecError) -> CodecError {
        self.failed = Some(e.clone());
        self.buf.clear();
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_each_kind() {
        let frames = [
            Frame::Request {
                method: 7,
                body: Bytes::from_static(b"hello"),
            },
            Frame::Response { body: Bytes::new() },
            Frame::Error {
                code: 3,
                message: "no".into(),
            },
        ];
        for f in frames {
            let enc = f.encode(1024).expect("encode");
            assert_eq!(enc.len(), f.encoded_len());
            assert_eq!(Frame::decode(&enc, 1024).expect("decode"), f);
        }
    }

    #[test]
    fn limits_and_garbage() {
        let big = Frame::Response {
            body: Bytes::from(vec![0u8; 100]),
        };
        assert!(matches!(big.encode(50), Err(CodecError::TooLarge { .. })));
        let enc = big.encode(1000).expect("encode");
        assert!(matches!(
            Frame::decode(&enc, 50),
            Err(CodecError::TooLarge { len: 101, max: 50 })
        ));
        assert_eq!(Frame::decode(&[0, 0, 0, 0], 10), Err(CodecError::Empty));
        assert_eq!(
            Frame::decode(&[0, 0, 0, 1, 9], 10),
            Err(CodecError::UnknownKind(9))
        );
        assert!(matches!(
            Frame::decode(&[0, 0, 0, 2, 1, 0], 10),
            Err(CodecError::Malformed { .. })
        ));
        assert!(matches!(
            Frame::decode(&[0, 0], 10),
            Err(CodecError::Truncated { .. })
        ));
        let mut trailing = enc.to_vec();
        trailing.push(0);
        assert_eq!(Frame::decode(&trailing, 1000), Err(CodecError::Trailing(1)));
    }

    #[test]
    fn decoder_reassembles_split_input() {
        let a = Frame::Request {
            method: 1,
            body: Bytes::from_static(b"abc"),
        };
        let b = Frame::Error {
            code: 2,
            message: "x".into(),
        };
        let mut all = a.encode(100).expect("a").to_vec();
        all.extend_from_slice(&b.encode(100).expect("b"));
        let mut d = FrameDecoder::new(100);
        let mut out = Vec::new();
        for byte in &all {
            d.push(std::slice::from_ref(byte));
            while let Some(f) = d.next_frame().expect("frame") {
                out.push(f);
            }
        }
        assert_eq!(out, vec![a, b]);
        d.finish().expect("nothing left");
    }
}
