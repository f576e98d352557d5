//! Matching throughput: `RuleSet` against brute force (`Pattern::matches`
//! over every rule), for 10, 1 000 and 10 000 rules.
//!
//! `cargo bench -p strait-routing --bench matcher`. Run without `--bench`
//! (as `cargo test --all-targets` does) it only does a short smoke run.
//!
//! The rules are a realistic mix: each has a `source` (one of 20) and a
//! `type` (one of N/2, so types are shared by two rules), and most add a
//! condition on `data` (numeric range, prefix, anything-but, nested arrays);
//! one rule in 20 has no exact-value leaf at all (prefix on `subject`) and
//! is checked against every event.

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strait_routing::pattern::{Pattern, RuleSet};

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn rule(i: u64, n: u64, rng: &mut Rng) -> Value {
    let source = format!("com.example.svc{}", i % 20);
    let ty = format!("com.example.event.t{}", i % (n / 2).max(1));
    if i % 20 == 19 {
        return json!({"subject": [{"prefix": format!("orders/{}", rng.below(100))}]});
    }
    match rng.below(4) {
        0 => json!({"source": [source], "type": [ty]}),
        1 => json!({
            "source": [source],
            "type": [ty],
            "data": {"amount": [{"numeric": [">", rng.below(1000), "<=", 1000 + rng.below(1000)]}]}
        }),
        2 => json!({
            "detail-type": [ty],
            "detail": {"region": [{"anything-but": ["us-east-1", "eu-west-1"]}], "tier": [{"prefix": "gold"}]}
        }),
        _ => json!({
            "type": [ty],
            "data": {"lines": {"sku": [format!("sku-{}", rng.below(50))], "qty": [{"numeric": [">=", 1]}]}}
        }),
    }
}

fn event(n: u64, rng: &mut Rng) -> Value {
    let t = rng.below((n / 2).max(1));
    json!({
        "specversion": "1.0",
        "id": format!("e-{}", rng.next()),
        "source": format!("com.example.svc{}", rng.below(20)),
        "type": format!("com.example.event.t{t}"),
        "subject": format!("orders/{}", rng.below(100)),
        "time": "2026-01-01T00:00:00Z",
        "data": {
            "amount": rng.below(2000),
            "region": if rng.below(2) == 0 { "us-east-1" } else { "ap-south-1" },
            "tier": "gold-plus",
            "lines": [
                {"sku": format!("sku-{}", rng.below(50)), "qty": 2},
                {"sku": format!("sku-{}", rng.below(50)), "qty": 1}
            ]
        }
    })
}

/// Runs `f` over the events repeatedly for about `budget`; events per second.
fn throughput(
    events: &[Value],
    budget: Duration,
    mut f: impl FnMut(&Value) -> usize,
) -> (f64, usize) {
    let start = Instant::now();
    let mut done = 0usize;
    let mut matched = 0usize;
    while start.elapsed() < budget {
        for ev in events {
            matched += f(black_box(ev));
            done += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    (done as f64 / secs, matched / done.max(1))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: &[u64] = if full {
        &[10, 1_000, 10_000]
    } else {
        &[10, 100]
    };
    let budget = if full {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(50)
    };
    println!(
        "{:>7}  {:>14}  {:>14}  {:>8}  {:>10}",
        "rules", "RuleSet ev/s", "brute ev/s", "speedup", "avg match"
    );
    for &n in sizes {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ n);
        let patterns: Vec<Pattern> = (0..n)
            .map(|i| Pattern::parse(&rule(i, n, &mut rng)).expect("bench rule parses"))
            .collect();
        let mut set = RuleSet::new();
        for (i, p) in patterns.iter().enumerate() {
            set.insert(i, p.clone());
        }
        let events: Vec<Value> = (0..1_000).map(|_| event(n, &mut rng)).collect();

        // Same answers, or the numbers mean nothing.
        for ev in &events {
            let brute: Vec<usize> = (0..patterns.len())
                .filter(|i| patterns[*i].matches(ev))
                .collect();
            assert_eq!(set.matches(ev), brute, "RuleSet disagrees with brute force");
        }

        let (fast, avg) = throughput(&events, budget, |ev| set.matches(ev).len());
        let (slow, _) = throughput(&events, budget, |ev| {
            patterns.iter().filter(|p| p.matches(ev)).count()
        });
        println!(
            "{n:>7}  {fast:>14.0}  {slow:>14.0}  {:>7.1}x  {avg:>10}",
            fast / slow
        );
    }
}
