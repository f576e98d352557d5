#![no_main]
//! The binary Raft encoding (`federation/src/wire.rs`): log entries, append-
//! entries requests and forwarded writes from arbitrary bytes. Decoding never
//! panics, and what decodes re-encodes to bytes that decode and re-encode to
//! themselves (configuration commands are JSON inside the envelope, so input
//! with other JSON spacing is accepted but not byte-identical).
use libfuzzer_sys::fuzz_target;
use strait_federation::wire;

fuzz_target!(|input: &[u8]| {
    if let Ok(cmd) = wire::decode_command(input) {
        let mut once = Vec::new();
        if wire::encode_command(&mut once, &cmd).is_ok() {
            let again = wire::decode_command(&once).expect("re-encoded command decodes");
            let mut twice = Vec::new();
            wire::encode_command(&mut twice, &again).expect("encodes again");
            assert_eq!(once, twice);
        }
    }
    if let Ok(payload) = wire::decode_payload(input) {
        let mut once = Vec::new();
        if wire::encode_payload(&mut once, &payload).is_ok() {
            let again = wire::decode_payload(&once).expect("re-encoded payload decodes");
            let mut twice = Vec::new();
            wire::encode_payload(&mut twice, &again).expect("encodes again");
            assert_eq!(once, twice);
        }
    }
    if let Ok(rpc) = wire::decode_append_entries(input)
        && let Ok(once) = wire::encode_append_entries(&rpc)
    {
        let again = wire::decode_append_entries(&once).expect("re-encoded request decodes");
        let twice = wire::encode_append_entries(&again).expect("encodes again");
        assert_eq!(once, twice);
    }
});
