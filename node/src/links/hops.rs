//! Hops: how many times an event has been passed on (link crossings and
//! same-site re-ingests by `bus` targets), and the limit that stops loops.

use serde_json::Value;
use strait_adapters::DeliveryError;
use strait_routing::event::Event;

/// Most hops an event may make: link crossings plus same-site re-ingests
/// by `bus` targets.
pub const MAX_HOPS: u32 = 8;

/// Extension attribute: hops so far.
pub const HOPS_ATTR: &str = "straithops";
/// Extension attribute: the site where the event first entered.
pub const ORIGIN_ATTR: &str = "straitorigin";
/// Extension attribute: the rule target that passed the event on last.
pub const VIA_ATTR: &str = "straitvia";

/// The hop count an event carries (`straithops`, a number or a numeric
/// string as binary-mode headers give it); 0 when absent or unreadable.
pub fn hops_of(event: &Event) -> u32 {
    let v = event.get(HOPS_ATTR).or_else(|| event.get("strait-hops"));
    let n = match v {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(s)) => s.trim().parse::<u64>().unwrap_or(0),
        _ => 0,
    };
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The permanent failure of a delivery that would pass `hops` on again.
pub fn hop_limit_error(hops: u32) -> DeliveryError {
    DeliveryError::Permanent(format!(
        "hop limit reached: the event was passed on {hops} times ({HOPS_ATTR}), the most is {MAX_HOPS}; not passed on again (a loop of bus targets?)"
    ))
}
