#![no_main]
//! Any body under any of the three CloudEvents modes must parse or be
//! rejected, never panic.
use libfuzzer_sys::fuzz_target;
use strait_node::config::Limits;
use strait_node::parse_request;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, body)) = input.split_first() else { return };
    let mut h = http::HeaderMap::new();
    match mode % 3 {
        0 => {
            h.insert("content-type", http::HeaderValue::from_static("application/cloudevents+json"));
        }
        1 => {
            h.insert("content-type", http::HeaderValue::from_static("application/cloudevents-batch+json"));
        }
        _ => {
            h.insert("ce-specversion", http::HeaderValue::from_static("1.0"));
            h.insert("ce-id", http::HeaderValue::from_static("x"));
            h.insert("ce-source", http::HeaderValue::from_static("/s"));
            h.insert("ce-type", http::HeaderValue::from_static("t"));
            if let Ok(v) = http::HeaderValue::from_bytes(&body[..body.len().min(32)]) {
                h.insert("ce-subject", v.clone());
                h.insert("content-type", v);
            }
        }
    }
    let _ = parse_request(&h, body, &Limits::default());
});
