//! Table-driven conformance suite: `tests/data/conformance.json`.
//!
//! Every case runs through `Pattern::matches`, a one-rule `RuleSet` (on the
//! parsed event and on its JSON text via `matches_json_bytes`), and one
//! `RuleSet` holding every pattern of the table. All failures are collected
//! and reported together, each by group and case name.

use serde_json::Value;
use strait_routing::pattern::{Pattern, RuleSet};

const TABLE: &str = include_str!("data/conformance.json");

struct Case {
    group: usize,
    name: String,
    event: Value,
    text: String,
    expect: bool,
}

fn load() -> (Vec<(String, Value)>, Vec<Case>, Vec<Value>) {
    let table: Value = serde_json::from_str(TABLE).expect("conformance.json is valid JSON");
    let mut groups = Vec::new();
    let mut cases = Vec::new();
    for (gi, g) in table["groups"]
        .as_array()
        .expect("groups array")
        .iter()
        .enumerate()
    {
        let gname = g["name"].as_str().expect("group name").to_string();
        groups.push((gname, g["pattern"].clone()));
        for (key, expect) in [("match", true), ("no_match", false)] {
            for c in g[key].as_array().expect("case list") {
                let c = c.as_array().expect("case is an array");
                let name = c[0].as_str().expect("case name").to_string();
                let raw = c.get(2).and_then(|o| o.get("raw")).and_then(Value::as_str);
                let (event, text) = match raw {
                    Some(raw) => (
                        serde_json::from_str(raw).expect("raw event is valid JSON"),
                        raw.to_string(),
                    ),
                    None => (c[1].clone(), c[1].to_string()),
                };
                cases.push(Case {
                    group: gi,
                    name,
                    event,
                    text,
                    expect,
                });
            }
        }
    }
    let invalid = table["invalid"].as_array().expect("invalid list").clone();
    (groups, cases, invalid)
}

#[test]
fn conformance_table() {
    let (groups, cases, invalid) = load();
    let mut failures = Vec::new();

    let mut patterns = Vec::new();
    for (gname, p) in &groups {
        match Pattern::parse(p) {
            Ok(p) => patterns.push(p),
            Err(e) => panic!("pattern of group {gname:?} does not parse: {e}"),
        }
    }
    let mut all = RuleSet::new();
    for (i, p) in patterns.iter().enumerate() {
        all.insert(i, p.clone());
    }
    let singles: Vec<RuleSet<usize>> = patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut s = RuleSet::new();
            s.insert(i, p.clone());
            s
        })
        .collect();

    for c in &cases {
        let label = format!("{} / {}", groups[c.group].0, c.name);
        let want = c.expect;
        let got = patterns[c.group].matches(&c.event);
        if got != want {
            failures.push(format!("{label}: Pattern::matches gave {got}, want {want}"));
        }
        let got = singles[c.group].matches(&c.event).contains(&c.group);
        if got != want {
            failures.push(format!("{label}: RuleSet::matches gave {got}, want {want}"));
        }
        match singles[c.group].matches_json_bytes(c.text.as_bytes()) {
            Ok(keys) => {
                let got = keys.contains(&c.group);
                if got != want {
                    failures.push(format!(
                        "{label}: RuleSet::matches_json_bytes gave {got}, want {want}"
                    ));
                }
            }
            Err(e) => failures.push(format!("{label}: matches_json_bytes failed: {e}")),
        }
        // The same event against every pattern at once: the set must agree
        // with each pattern alone.
        let want_all: Vec<usize> = (0..patterns.len())
            .filter(|i| patterns[*i].matches(&c.event))
            .collect();
        let got_all = all.matches(&c.event);
        if got_all != want_all {
            failures.push(format!(
                "{label}: combined RuleSet::matches gave {got_all:?}, each pattern alone {want_all:?}"
            ));
        }
        match all.matches_json_bytes(c.text.as_bytes()) {
            Ok(got) if got == want_all => {}
            other => failures.push(format!(
                "{label}: combined matches_json_bytes gave {other:?}, each pattern alone {want_all:?}"
            )),
        }
    }

    for item in &invalid {
        let item = item.as_array().expect("invalid case is an array");
        let name = item[0].as_str().expect("name");
        let want = item[2].as_str().expect("message");
        match Pattern::parse(&item[1]) {
            Ok(_) => failures.push(format!("invalid / {name}: accepted, want error {want:?}")),
            Err(e) if e.to_string() == want => {}
            Err(e) => failures.push(format!(
                "invalid / {name}: error {:?}, want {want:?}",
                e.to_string()
            )),
        }
    }

    let total = cases.len() + invalid.len();
    assert!(
        total >= 300,
        "the table must hold at least 300 cases, has {total}"
    );
    assert!(
        failures.is_empty(),
        "{} of {total} conformance cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
