#![no_main]
//! Rule definitions (pattern, targets, transforms) from arbitrary JSON.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(input) {
        let _ = strait_node::RuleSpec::from_json(&v);
    }
});
