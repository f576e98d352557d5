//! Fuzz transform parsing and application. Input: a JSON transform and a
//! JSON event separated by a NUL byte.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use strait_routing::transform::{Transform, TransformContext};

fuzz_target!(|data: &[u8]| {
    let (transform_bytes, event_bytes) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    let Ok(transform_json) = serde_json::from_slice::<Value>(transform_bytes) else {
        return;
    };
    let event = serde_json::from_slice::<Value>(event_bytes).unwrap_or(Value::Null);
    if let Ok(t) = Transform::parse(&transform_json) {
        let ctx = TransformContext {
            rule_name: "rule",
            rule_id: "bus/rule",
            ingestion_time: "2026-01-01T00:00:00Z",
        };
        let _ = t.apply(&event, &ctx);
    }
});
