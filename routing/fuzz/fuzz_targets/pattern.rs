//! Fuzz the pattern parser, matcher and RuleSet.
//!
//! Input: a JSON pattern and a JSON event separated by a NUL byte (any
//! input without one is used as both). Invariants: nothing panics, and a
//! RuleSet holding the pattern agrees with `Pattern::matches`, both on the
//! parsed event and through `matches_json_bytes` on its JSON text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use strait_routing::pattern::{Pattern, RuleSet};

fuzz_target!(|data: &[u8]| {
    let (pattern_bytes, event_bytes) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    let Ok(pattern_json) = serde_json::from_slice::<Value>(pattern_bytes) else {
        return;
    };
    let event = serde_json::from_slice::<Value>(event_bytes).unwrap_or(Value::Null);
    match Pattern::parse(&pattern_json) {
        Ok(pattern) => {
            let direct = pattern.matches(&event);
            let mut set = RuleSet::new();
            set.insert(0u8, pattern);
            assert_eq!(set.matches(&event).len(), usize::from(direct));
            // The one-pass reader never panics on arbitrary bytes, and on
            // the event's own (duplicate-free) text it agrees.
            let _ = set.matches_json_bytes(event_bytes);
            let text = serde_json::to_vec(&event).unwrap_or_default();
            let flat = set.matches_json_bytes(&text).map(|m| m.len());
            assert_eq!(flat.ok(), Some(usize::from(direct)));
        }
        Err(e) => {
            assert!(!e.path.is_empty());
            assert!(!e.message.is_empty());
        }
    }
});
