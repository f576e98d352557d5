//! A `RuleSet` behind an `Arc` is matched from several threads while another
//! thread publishes new versions (clone, modify, swap the `Arc`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::thread;

use serde_json::json;
use strait_routing::pattern::{Pattern, RuleSet};

fn assert_send_sync_clone<T: Send + Sync + Clone>() {}

#[test]
fn ruleset_is_send_sync_clone() {
    assert_send_sync_clone::<RuleSet<String>>();
    assert_send_sync_clone::<Arc<RuleSet<u64>>>();
}

/// One published version: every rule of generation `g` matches the event
/// `{"gen": g, ...}` and nothing else does.
struct Version {
    generation: u64,
    rules: RuleSet<(u64, u32)>,
}

const RULES_PER_VERSION: u32 = 20;

fn next_version(current: &Version) -> Version {
    let g = current.generation + 1;
    // Clone and modify incrementally, as a control plane would.
    let mut rules = current.rules.clone();
    for i in 0..RULES_PER_VERSION {
        rules.remove(&(current.generation, i));
        let pattern = match i % 4 {
            0 => json!({"gen": [g]}),
            1 => json!({"gen": [{"numeric": ["=", g]}], "data": {"n": [{"exists": true}]}}),
            2 => json!({"$or": [{"gen": [g]}, {"never": ["x"]}], "source": [{"prefix": "svc"}]}),
            _ => json!({"gen": [g], "data": {"items": {"sku": [format!("s{i}")]}}}),
        };
        rules.insert(
            (g, i),
            Pattern::parse(&pattern).expect("test pattern parses"),
        );
    }
    Version {
        generation: g,
        rules,
    }
}

fn event(g: u64) -> serde_json::Value {
    let items: Vec<_> = (0..RULES_PER_VERSION)
        .map(|i| json!({"sku": format!("s{i}")}))
        .collect();
    json!({"gen": g, "source": "svc-1", "data": {"n": 1, "items": items}})
}

#[test]
fn matching_while_swapping_versions() {
    let first = Version {
        generation: 0,
        rules: RuleSet::new(),
    };
    let first = next_version(&first);
    let current = Arc::new(RwLock::new(Arc::new(first)));
    let stop = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicUsize::new(0));

    let readers: Vec<_> = (0..4)
        .map(|r| {
            let current = Arc::clone(&current);
            let stop = Arc::clone(&stop);
            let checks = Arc::clone(&checks);
            thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) || n < 200 {
                    // Hold the lock only to copy the pointer.
                    let version = Arc::clone(&current.read().expect("lock"));
                    let g = version.generation;
                    let ev = event(g);
                    let got = if (n + r).is_multiple_of(2) {
                        version.rules.matches(&ev)
                    } else {
                        version
                            .rules
                            .matches_json_bytes(ev.to_string().as_bytes())
                            .expect("valid JSON")
                    };
                    let want: Vec<(u64, u32)> = (0..RULES_PER_VERSION).map(|i| (g, i)).collect();
                    assert_eq!(got, want, "reader {r} saw a partial version {g}");
                    // Events of other generations match nothing.
                    assert!(version.rules.matches(&event(g + 1)).is_empty());
                    checks.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            })
        })
        .collect();

    let writer = {
        let current = Arc::clone(&current);
        thread::spawn(move || {
            for _ in 0..100 {
                let next = {
                    let now = Arc::clone(&current.read().expect("lock"));
                    next_version(&now)
                };
                *current.write().expect("lock") = Arc::new(next);
                thread::yield_now();
            }
        })
    };
    writer.join().expect("writer finished");
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader finished");
    }
    assert!(checks.load(Ordering::Relaxed) >= 800);
    let last = Arc::clone(&current.read().expect("lock"));
    assert_eq!(last.generation, 101);
    assert_eq!(last.rules.len(), RULES_PER_VERSION as usize);
}
