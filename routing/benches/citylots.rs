//! CityLots-shaped matching benchmark, against the `quamina` crate.
//!
//! `cargo bench -p strait-routing --bench citylots` (release). Run without
//! `--bench` (as `cargo test --all-targets` does) it only does a short smoke
//! run over a few hundred events.
//!
//! The corpus is generated (deterministically) in the shape of the public
//! CityLots data set as Event Ruler's benchmark uses it ("citylots2"): GeoJSON
//! features of about 1 KiB, with `properties` (MAPBLKLOT, BLKLOT, BLOCK_NUM,
//! LOT_NUM, FROM_ST, TO_ST, STREET, ST_TYPE, ODD_EVEN, plus an IP_ADDR for the
//! cidr family) and a `geometry` with `coordinates` (arrays of `{x, y, z}`
//! points) and `firstCoordinates`. The rule families are those of Event
//! Ruler's benchmark, five rules each: exact, prefix, suffix,
//! equals-ignore-case (and prefix/suffix ignoring case), wildcard,
//! anything-but (and its prefix, suffix, ignore-case and wildcard forms),
//! numeric, cidr, complex arrays (numeric on points inside arrays) and the
//! combos. Then exact matching with 10 and with 10,000 rules.
//!
//! The corpus is 1,000 distinct events (about 0.9 MB) matched over and over,
//! so that events come from the CPU caches as a just-received event would,
//! and the numbers measure matching rather than memory latency.
//! Every run matches raw JSON bytes (Strait: `RuleSet::matches_json_bytes`,
//! quamina: `matches_for_event`) on one thread, so events/s is per core.
//! Where quamina supports every operator of a family it runs on the same
//! events and patterns in the same process, and the match counts of the two
//! are compared before any timing is trusted.

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

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const STREETS: &[&str] = &[
    "FULTON",
    "MASON",
    "JEFFERSON",
    "BEACH",
    "HYDE",
    "CHESTNUT",
    "ACTON",
    "BLAKE",
    "DRUMM",
    "RHODE ISLAND",
    "MISSION",
    "VALENCIA",
    "GEARY",
    "POLK",
    "LARKIN",
    "BUSH",
    "PINE",
    "CALIFORNIA",
    "WASHINGTON",
    "JACKSON",
    "PACIFIC",
    "BROADWAY",
    "VALLEJO",
    "GREEN",
    "UNION",
    "FILBERT",
    "LOMBARD",
    "BAY",
    "NORTH POINT",
    "BLUXOME",
    "KING",
    "TOWNSEND",
    "HARRISON",
    "FOLSOM",
    "HOWARD",
    "FREMONT",
    "BEALE",
    "SPEAR",
    "STEUART",
    "EMBARCADERO",
    "DIAMOND",
    "MARKET",
    "DUBOCE",
    "GUERRERO",
    "DOLORES",
    "SANCHEZ",
    "NOE",
    "CASTRO",
    "UNKNOWN",
    "FUNSTON",
];

const ST_TYPES: &[&str] = &["ST", "ST", "ST", "AVE", "AVE", "WAY", "BLVD", "TER", "PL"];

/// One feature, about 1 KiB of JSON text.
fn feature(rng: &mut Rng) -> String {
    let block = rng.below(7600);
    let lot = rng.below(300);
    let mapblklot = if rng.below(2000) == 0 {
        "VACSTWIL".to_string()
    } else {
        format!("{block:04}{lot:03}")
    };
    let street = STREETS[rng.below(STREETS.len() as u64) as usize];
    let st_type = if rng.below(20) == 0 {
        Value::Null
    } else {
        json!(ST_TYPES[rng.below(ST_TYPES.len() as u64) as usize])
    };
    let from = rng.below(3000);
    let to = from + 2 * rng.below(20);
    let odd_even = if from.is_multiple_of(2) { "E" } else { "O" };
    let ip = format!(
        "10.{}.{}.{}",
        rng.below(256),
        rng.below(256),
        rng.below(256)
    );
    let x0 = -122.52 + 0.16 * rng.unit();
    let y0 = 37.70 + 0.12 * rng.unit();
    let polygon = rng.below(100) != 0;
    let npoints = 8 + rng.below(6) as usize;
    let ring: Vec<Value> = (0..npoints)
        .map(|i| {
            let a = i as f64 / npoints as f64 * std::f64::consts::TAU;
            json!({"x": x0 + 0.0004 * a.cos(), "y": y0 + 0.0003 * a.sin(), "z": 0})
        })
        .collect();
    let coordinates = if polygon {
        json!([ring])
    } else {
        json!([[ring]])
    };
    let ev = json!({
        "type": "Feature",
        "properties": {
            "MAPBLKLOT": mapblklot,
            "BLKLOT": mapblklot,
            "BLOCK_NUM": format!("{block:04}"),
            "LOT_NUM": format!("{lot:03}"),
            "FROM_ST": from.to_string(),
            "TO_ST": to.to_string(),
            "STREET": street,
            "ST_TYPE": st_type,
            "ODD_EVEN": odd_even,
            "IP_ADDR": ip,
        },
        "geometry": {
            "type": if polygon { "Polygon" } else { "MultiPolygon" },
            "coordinates": coordinates,
            "firstCoordinates": {"x": x0 + 0.0004, "y": y0, "z": 0},
        }
    });
    ev.to_string()
}

fn props(field: &str, matcher: Value) -> String {
    json!({"properties": {field: [matcher]}}).to_string()
}

struct Family {
    name: &'static str,
    rules: Vec<String>,
    /// quamina accepts every operator used.
    quamina: bool,
}

fn families(sample: &[Value]) -> Vec<Family> {
    // Exact values that exist in the corpus (like Ruler's, which picks real lots).
    let lots: Vec<String> = sample
        .iter()
        .step_by(97)
        .take(4)
        .filter_map(|e| e["properties"]["MAPBLKLOT"].as_str().map(str::to_string))
        .chain(["VACSTWIL".to_string()])
        .collect();
    let exact: Vec<String> = lots.iter().map(|l| props("MAPBLKLOT", json!(l))).collect();
    let prefix = ["AC", "BL", "DR", "FU", "RH"]
        .iter()
        .map(|p| props("STREET", json!({"prefix": p})))
        .collect();
    let suffix = ["ON", "KE", "MM", "ING", "GO"]
        .iter()
        .map(|p| props("STREET", json!({"suffix": p})))
        .collect();
    let eic: Vec<String> = ["jefferson", "bEaCh", "HyDe", "CHESTNUT"]
        .iter()
        .map(|p| props("STREET", json!({"equals-ignore-case": p})))
        .chain([props("ST_TYPE", json!({"equals-ignore-case": "st"}))])
        .collect();
    let prefix_eic = ["ac", "Bl", "dR", "fu", "rH"]
        .iter()
        .map(|p| props("STREET", json!({"prefix": {"equals-ignore-case": p}})))
        .collect();
    let suffix_eic = ["on", "Ke", "mM", "inG", "go"]
        .iter()
        .map(|p| props("STREET", json!({"suffix": {"equals-ignore-case": p}})))
        .collect();
    let wildcard = ["143*", "2*0*1*7", "*218", "3*5*2", "VA*IL"]
        .iter()
        .map(|p| props("MAPBLKLOT", json!({"wildcard": p})))
        .collect();
    let anything_but = vec![
        props("STREET", json!({"anything-but": ["FULTON"]})),
        props("STREET", json!({"anything-but": ["MASON"]})),
        props("ST_TYPE", json!({"anything-but": ["ST"]})),
        json!({"geometry": {"type": [{"anything-but": ["Polygon"]}]}}).to_string(),
        props("FROM_ST", json!({"anything-but": ["441"]})),
    ];
    let ab_form = |form: &str, vals: [&str; 5]| -> Vec<String> {
        vals.iter()
            .map(|v| props("STREET", json!({"anything-but": {form: v}})))
            .collect()
    };
    let numeric = vec![
        json!({"geometry": {"type": ["Polygon"], "firstCoordinates": {"x": [{"numeric": ["=", -122.42916360922355]}]}}}).to_string(),
        json!({"geometry": {"type": ["MultiPolygon"], "firstCoordinates": {"z": [{"numeric": ["=", 0]}]}}}).to_string(),
        json!({"geometry": {"firstCoordinates": {"x": [{"numeric": ["<", -122.41600944012424]}]}}}).to_string(),
        json!({"geometry": {"firstCoordinates": {"x": [{"numeric": [">", -122.41600944012424]}]}}}).to_string(),
        json!({"geometry": {"firstCoordinates": {"x": [{"numeric": [">", -122.46471267081272, "<", -122.4063085128395]}]}}}).to_string(),
    ];
    let cidr = [
        "10.0.0.0/24",
        "10.1.0.0/16",
        "10.128.0.0/9",
        "10.7.7.7/32",
        "10.200.3.0/28",
    ]
    .iter()
    .map(|c| props("IP_ADDR", json!({"cidr": c})))
    .collect();
    let complex = vec![
        json!({"geometry": {"type": ["Polygon"], "coordinates": {"x": [{"numeric": ["=", -122.42916360922355]}]}}}).to_string(),
        json!({"geometry": {"type": ["MultiPolygon"], "coordinates": {"y": [{"numeric": ["=", 37.729900216217324]}]}}}).to_string(),
        json!({"geometry": {"coordinates": {"x": [{"numeric": ["<", -122.41600944012424]}]}}}).to_string(),
        json!({"geometry": {"coordinates": {"x": [{"numeric": [">", -122.41600944012424]}]}}}).to_string(),
        json!({"geometry": {"coordinates": {"x": [{"numeric": [">", -122.46471267081272, "<", -122.4063085128395]}]}}}).to_string(),
    ];
    let mut partial_combo: Vec<String> = Vec::new();
    partial_combo.extend(numeric.iter().cloned());
    partial_combo.extend(exact.iter().cloned());
    partial_combo.extend(prefix_rules(&["AC", "BL", "DR", "FU", "RH"]));
    partial_combo.extend(anything_but.iter().cloned());
    let mut combo = partial_combo.clone();
    combo.extend(complex.iter().cloned());
    vec![
        Family {
            name: "exact",
            rules: exact,
            quamina: true,
        },
        Family {
            name: "prefix",
            rules: prefix,
            quamina: true,
        },
        Family {
            name: "suffix",
            rules: suffix,
            quamina: true,
        },
        Family {
            name: "equals-ignore-case",
            rules: eic,
            quamina: true,
        },
        Family {
            name: "prefix-equals-ignore-case",
            rules: prefix_eic,
            quamina: false,
        },
        Family {
            name: "suffix-equals-ignore-case",
            rules: suffix_eic,
            quamina: false,
        },
        Family {
            name: "wildcard",
            rules: wildcard,
            quamina: true,
        },
        Family {
            name: "anything-but",
            rules: anything_but,
            quamina: true,
        },
        Family {
            name: "anything-but-ignore-case",
            rules: ab_form(
                "equals-ignore-case",
                ["fulton", "Mason", "bEaCh", "HYDE", "polk"],
            ),
            quamina: false,
        },
        Family {
            name: "anything-but-prefix",
            rules: ab_form("prefix", ["FU", "MA", "BE", "HY", "PO"]),
            quamina: false,
        },
        Family {
            name: "anything-but-suffix",
            rules: ab_form("suffix", ["ON", "KE", "MM", "ING", "GO"]),
            quamina: false,
        },
        Family {
            name: "anything-but-wildcard",
            rules: ab_form("wildcard", ["F*N", "M*", "*CH", "H*D*", "*O*K"]),
            quamina: false,
        },
        Family {
            name: "numeric",
            rules: numeric,
            quamina: true,
        },
        Family {
            name: "cidr",
            rules: cidr,
            quamina: true,
        },
        Family {
            name: "complex-arrays",
            rules: complex,
            quamina: true,
        },
        Family {
            name: "partial-combo",
            rules: partial_combo,
            quamina: true,
        },
        Family {
            name: "combo",
            rules: combo,
            quamina: true,
        },
    ]
}

fn prefix_rules(ps: &[&str]) -> Vec<String> {
    ps.iter()
        .map(|p| props("STREET", json!({"prefix": p})))
        .collect()
}

fn strait_set(rules: &[String]) -> RuleSet<usize> {
    let mut set = RuleSet::new();
    for (i, r) in rules.iter().enumerate() {
        let v: Value = serde_json::from_str(r).expect("rule is JSON");
        set.insert(i, Pattern::parse(&v).expect("bench rule parses"));
    }
    set
}

fn quamina_set(rules: &[String]) -> quamina::Quamina<usize> {
    // A bigger automaton budget than the default 10 MB, for 10,000 rules.
    let mut q = quamina::QuaminaBuilder::<usize>::new()
        .with_arena_byte_budget(512 << 20)
        .build()
        .expect("quamina builds");
    for (i, r) in rules.iter().enumerate() {
        q.add_pattern(i, r).expect("quamina accepts the rule");
    }
    q
}

/// One matcher under test: event bytes in, number of matches out.
type MatchFn<'a> = &'a mut dyn FnMut(&[u8]) -> usize;

/// Runs `ours` and (when given) `theirs` over every event once for the
/// match counts, then alternately for `ROUNDS` rounds each of
/// `budget / ROUNDS`, so both see the same machine load; events per second
/// of each one's best round.
fn compare(
    events: &[String],
    budget: Duration,
    ours: MatchFn<'_>,
    mut theirs: Option<MatchFn<'_>>,
) -> ((f64, usize), Option<(f64, usize)>) {
    fn pass(events: &[String], f: &mut dyn FnMut(&[u8]) -> usize) -> usize {
        events.iter().map(|e| f(e.as_bytes())).sum()
    }
    fn round(events: &[String], budget: Duration, f: &mut dyn FnMut(&[u8]) -> usize) -> f64 {
        let start = Instant::now();
        let mut done = 0usize;
        while start.elapsed() < budget {
            for ev in events {
                black_box(f(black_box(ev.as_bytes())));
            }
            done += events.len();
        }
        done as f64 / start.elapsed().as_secs_f64()
    }
    let our_hits = pass(events, ours);
    let their_hits = theirs.as_mut().map(|f| pass(events, *f));
    let (mut best_ours, mut best_theirs) = (0.0f64, 0.0f64);
    for _ in 0..ROUNDS {
        best_ours = best_ours.max(round(events, budget / ROUNDS, ours));
        if let Some(f) = theirs.as_mut() {
            best_theirs = best_theirs.max(round(events, budget / ROUNDS, *f));
        }
    }
    ((best_ours, our_hits), their_hits.map(|h| (best_theirs, h)))
}

const ROUNDS: u32 = 6;

/// CPU time this thread has run, from `/proc/thread-self/schedstat` (Linux;
/// nanoseconds, not sampled in ticks). None elsewhere.
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// `CITYLOTS_CPU_PASSES=n`: instead of events/s over wall-clock rounds,
/// CPU time per event of `n` passes over the corpus, best of three,
/// alternating the two matchers (steadier than wall-clock rates on a
/// shared machine). Returns ns/event for ours and theirs.
fn cpu_per_event(
    events: &[String],
    passes: usize,
    ours: MatchFn<'_>,
    mut theirs: Option<MatchFn<'_>>,
) -> Option<(f64, Option<f64>)> {
    fn measure(events: &[String], passes: usize, f: &mut dyn FnMut(&[u8]) -> usize) -> Option<f64> {
        let start = thread_cpu()?;
        for _ in 0..passes {
            for ev in events {
                black_box(f(black_box(ev.as_bytes())));
            }
        }
        let spent = thread_cpu()? - start;
        Some(spent.as_nanos() as f64 / (passes * events.len()) as f64)
    }
    let (mut best_ours, mut best_theirs) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..3 {
        best_ours = best_ours.min(measure(events, passes, ours)?);
        if let Some(f) = theirs.as_mut() {
            best_theirs = best_theirs.min(measure(events, passes, *f)?);
        }
    }
    Some((best_ours, theirs.map(|_| best_theirs)))
}

fn fmt_rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else {
        format!("{:.0} k", x / 1e3)
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (n_events, budget) = if full {
        (1_000, Duration::from_millis(1500))
    } else {
        (300, Duration::from_millis(5))
    };
    let mut rng = Rng(0x0C17_E107_5EED);
    let events: Vec<String> = (0..n_events).map(|_| feature(&mut rng)).collect();
    let sample: Vec<Value> = events
        .iter()
        .take(2000)
        .map(|e| serde_json::from_str(e).expect("generated JSON"))
        .collect();
    let avg = events.iter().map(String::len).sum::<usize>() / events.len();
    println!("{n_events} events, {avg} bytes on average; one thread; raw JSON bytes in\n");
    let cpu_passes: Option<usize> = std::env::var("CITYLOTS_CPU_PASSES")
        .ok()
        .and_then(|s| s.parse().ok());
    if cpu_passes.is_some() {
        println!(
            "| family | rules | Strait CPU ns/event | quamina CPU ns/event | quamina ÷ Strait |"
        );
        println!("|---|---|---|---|---|");
    } else {
        println!(
            "| family | rules | matches/pass | Strait events/s | quamina events/s | Strait ÷ quamina |"
        );
        println!("|---|---|---|---|---|---|");
    }
    // For profiling: CITYLOTS_FAMILIES=exact,numeric,scaling CITYLOTS_NO_QUAMINA=1
    // (and CITYLOTS_CPU_PASSES=n for CPU time per event, see `cpu_per_event`)
    let only: Option<Vec<String>> = std::env::var("CITYLOTS_FAMILIES")
        .ok()
        .map(|s| s.split(',').map(str::to_string).collect());
    let no_quamina = std::env::var_os("CITYLOTS_NO_QUAMINA").is_some();
    for fam in families(&sample) {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == fam.name))
        {
            continue;
        }
        let set = strait_set(&fam.rules);
        let mut ours_f = |e: &[u8]| set.matches_json_bytes(e).expect("valid event").len();
        let q = (fam.quamina && !no_quamina).then(|| quamina_set(&fam.rules));
        let mut theirs_f = |e: &[u8]| {
            q.as_ref()
                .map_or(0, |q| q.matches_for_event(e).expect("valid event").len())
        };
        let theirs_dyn: Option<MatchFn<'_>> = if q.is_some() {
            Some(&mut theirs_f)
        } else {
            None
        };
        if let Some(passes) = cpu_passes {
            let (ours, theirs) = cpu_per_event(&events, passes, &mut ours_f, theirs_dyn)
                .expect("CITYLOTS_CPU_PASSES needs /proc/thread-self/schedstat");
            let (theirs, ratio) = match theirs {
                Some(t) => (format!("{t:.0}"), format!("{:.2}×", t / ours)),
                None => ("unsupported".to_string(), "–".to_string()),
            };
            println!(
                "| {} | {} | {ours:.0} | {theirs} | {ratio} |",
                fam.name,
                fam.rules.len()
            );
            continue;
        }
        let ((ours, ours_hits), theirs_result) = compare(&events, budget, &mut ours_f, theirs_dyn);
        let (theirs, ratio) = match theirs_result {
            Some((theirs, their_hits)) => {
                let ratio = if their_hits == ours_hits {
                    format!("{:.1}×", ours / theirs)
                } else {
                    format!(
                        "{:.1}× (match counts differ: quamina {their_hits})",
                        ours / theirs
                    )
                };
                (fmt_rate(theirs), ratio)
            }
            None => ("unsupported".to_string(), "–".to_string()),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            fam.name,
            fam.rules.len(),
            ours_hits,
            fmt_rate(ours),
            theirs,
            ratio
        );
    }

    if cpu_passes.is_some()
        || only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == "scaling"))
    {
        return;
    }
    // Rule-count scaling: exact rules on MAPBLKLOT. Both sets hold the same
    // ten lots that occur in the corpus; the 10,000-rule set adds 9,990 lots
    // of the same shape that do not (blocks 7600 and up), so both report the
    // same matches and only the number of rules differs.
    println!(
        "\n| exact rules | matches/pass | Strait events/s | quamina events/s | Strait ÷ quamina |"
    );
    println!("|---|---|---|---|---|");
    let mut rates = Vec::new();
    for n in [10usize, 10_000] {
        let mut r = Rng(42);
        let rules: Vec<String> = (0..n)
            .map(|i| {
                if i < 10 {
                    let e = &sample[r.below(sample.len() as u64) as usize];
                    props("MAPBLKLOT", e["properties"]["MAPBLKLOT"].clone())
                } else {
                    let lot = 7_600_000 + i * 97 % 2_400_000;
                    props("MAPBLKLOT", json!(format!("{lot:07}")))
                }
            })
            .collect();
        let set = strait_set(&rules);
        let q = quamina_set(&rules);
        let mut ours_f = |e: &[u8]| set.matches_json_bytes(e).expect("valid event").len();
        let mut theirs_f = |e: &[u8]| q.matches_for_event(e).expect("valid event").len();
        let ((ours, hits), theirs_result) =
            compare(&events, budget, &mut ours_f, Some(&mut theirs_f));
        let (theirs, their_hits) = theirs_result.unwrap_or((f64::NAN, 0));
        let note = if hits == their_hits {
            String::new()
        } else {
            format!(" (match counts differ: quamina {their_hits})")
        };
        println!(
            "| {n} | {hits} | {} | {} | {:.1}×{note} |",
            fmt_rate(ours),
            fmt_rate(theirs),
            ours / theirs
        );
        rates.push(ours);
    }
    if let [ten, ten_k] = rates[..] {
        println!(
            "\n10,000 exact rules run at {:.2}× the speed of 10.",
            ten_k / ten
        );
    }
}
