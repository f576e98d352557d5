#![no_main]
//! Site-to-site link batches and node-to-node transport frames from
//! arbitrary bytes: decoding never panics, and what decodes re-encodes to
//! the same bytes.
use libfuzzer_sys::fuzz_target;
use strait_federation::link::proto::{decode_batch, encode_batch};
use strait_federation::transport::Frame;

fuzz_target!(|input: &[u8]| {
    let bytes = bytes::Bytes::copy_from_slice(input);
    if let Ok(b) = decode_batch(bytes.clone())
        && let Ok(again) = encode_batch(&b)
    {
        assert_eq!(again, bytes);
    }
    let _ = Frame::decode(input, 1 << 20);
});
