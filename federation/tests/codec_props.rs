//! Property tests of the frame codec: arbitrary bytes never panic the
//! decoder, encoded frames decode to themselves however the bytes are split.

use bytes::Bytes;
use proptest::prelude::*;
use strait_federation::transport::codec::{Frame, FrameDecoder};

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(m, b)| {
            Frame::Request {
                method: m,
                body: Bytes::from(b),
            }
        }),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| Frame::Response {
            body: Bytes::from(b)
        }),
        (any::<u16>(), ".{0,40}").prop_map(|(code, message)| Frame::Error { code, message }),
    ]
}

proptest! {
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), max in 0usize..1000) {
        let _ = Frame::decode(&bytes, max);
        let mut d = FrameDecoder::new(max);
        d.push(&bytes);
        for _ in 0..bytes.len() + 1 {
            match d.next_frame() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let _ = d.finish();
    }

    #[test]
    fn frames_round_trip_across_any_split(frames in proptest::collection::vec(frame(), 1..6), cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        let mut wire = Vec::new();
        for f in &frames {
            let enc = f.encode(4096).expect("encode");
            prop_assert_eq!(&Frame::decode(&enc, 4096).expect("decode"), f);
            wire.extend_from_slice(&enc);
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        points.push(0);
        points.push(wire.len());
        points.sort_unstable();
        let mut d = FrameDecoder::new(4096);
        let mut out = Vec::new();
        for w in points.windows(2) {
            d.push(&wire[w[0]..w[1]]);
            while let Some(f) = d.next_frame().expect("valid") {
                out.push(f);
            }
        }
        d.finish().expect("complete");
        prop_assert_eq!(out, frames);
    }

    #[test]
    fn corrupted_frames_error_or_decode_but_never_panic(f in frame(), pos in any::<usize>(), byte in any::<u8>()) {
        let mut enc = f.encode(4096).expect("encode").to_vec();
        let i = pos % enc.len();
        enc[i] = byte;
        let _ = Frame::decode(&enc, 4096);
        enc.truncate(i);
        prop_assert!(Frame::decode(&enc, 4096).is_err());
    }
}
