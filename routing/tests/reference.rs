//! Property tests against a reference interpreter.
//!
//! `reference_matches` below is a deliberately simple, independent reading of
//! the semantics in `docs/rules.md`: it interprets the pattern JSON directly
//! against the event `Value` (no parsing into matchers, no index, no
//! flattening). On random patterns and events, the compiled `RuleSet` (on a
//! `Value` and on JSON text), and `Pattern::matches` must all agree with it;
//! and a set built by random inserts and removes must answer exactly like a
//! set built from scratch from the surviving rules.

use std::net::IpAddr;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use strait_routing::pattern::{Pattern, RuleSet};

// ---- the reference interpreter ---------------------------------------------------------

fn reference_matches(pattern: &Value, event: &Value) -> bool {
    node(pattern, Some(event), true)
}

fn node(p: &Value, ev: Option<&Value>, root: bool) -> bool {
    match ev {
        Some(Value::Array(items)) if !items.is_empty() => {
            items.iter().any(|item| node(p, Some(item), root))
        }
        Some(Value::Array(_)) => here(p, None, root),
        other => here(p, other, root),
    }
}

fn here(p: &Value, ev: Option<&Value>, root: bool) -> bool {
    let Some(pobj) = p.as_object() else {
        return false;
    };
    pobj.iter().all(|(k, v)| {
        if k == "$or" {
            return v
                .as_array()
                .is_some_and(|bs| bs.iter().any(|b| here(b, ev, root)));
        }
        let child = ev.and_then(Value::as_object).and_then(|o| {
            o.get(k).or_else(|| {
                if !root {
                    return None;
                }
                let alias = match k.as_str() {
                    "data" => "detail",
                    "detail" => "data",
                    "type" => "detail-type",
                    "detail-type" => "type",
                    _ => return None,
                };
                o.get(alias)
            })
        });
        match v {
            Value::Array(matchers) => matchers.iter().any(|m| ref_leaf(m, child)),
            nested => node(nested, child, false),
        }
    })
}

/// Scalars reachable through arrays.
fn scalars<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| scalars(i, out)),
        Value::Object(_) => {}
        s => out.push(s),
    }
}

fn ref_leaf(m: &Value, child: Option<&Value>) -> bool {
    let mut vals = Vec::new();
    if let Some(c) = child {
        scalars(c, &mut vals);
    }
    if let Some(want) = m.get("exists").and_then(Value::as_bool) {
        return vals.is_empty() != want;
    }
    vals.iter().any(|v| ref_op(m, v))
}

fn num_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn fold(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'ς' => 'σ',
            c => c.to_lowercase().next().unwrap_or(c),
        })
        .collect()
}

/// Glob matching by plain recursion (`*` = any run, `\*` and `\\` literal).
fn glob(p: &[char], s: &[char]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some(('*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some(('\\', rest)) => match rest.split_first() {
            Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
            None => false,
        },
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

fn wildcard(p: &str, s: &str) -> bool {
    let p: Vec<char> = p.chars().collect();
    let s: Vec<char> = s.chars().collect();
    glob(&p, &s)
}

fn in_cidr(block: &str, s: &str) -> bool {
    let Ok(ip) = s.parse::<IpAddr>() else {
        return false;
    };
    let (addr, len) = match block.split_once('/') {
        Some((a, l)) => (a, l.parse::<u32>().unwrap_or(0)),
        None => (block, if block.contains(':') { 128 } else { 32 }),
    };
    let Ok(net) = addr.parse::<IpAddr>() else {
        return false;
    };
    let bits = |ip: IpAddr| -> (u128, u32) {
        match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if matches!(net, IpAddr::V4(_)) => (u128::from(u32::from(v4)), 32),
                _ => (u128::from(v6), 128),
            },
        }
    };
    let (n, nw) = bits(net);
    let (x, xw) = bits(ip);
    if nw != xw {
        return false;
    }
    let shift = nw - len.min(nw);
    if shift >= 128 {
        return true;
    }
    (n >> shift) == (x >> shift)
}

fn ref_op(m: &Value, v: &Value) -> bool {
    let s = v.as_str();
    let Some(obj) = m.as_object() else {
        return num_eq(m, v);
    };
    let Some((name, arg)) = obj.iter().next() else {
        return false;
    };
    match name.as_str() {
        "prefix" => match (arg, s) {
            (Value::String(p), Some(s)) => s.starts_with(p.as_str()),
            (Value::Object(o), Some(s)) => o
                .get("equals-ignore-case")
                .and_then(Value::as_str)
                .is_some_and(|p| fold(s).starts_with(&fold(p))),
            _ => false,
        },
        "suffix" => match (arg, s) {
            (Value::String(p), Some(s)) => s.ends_with(p.as_str()),
            (Value::Object(o), Some(s)) => o
                .get("equals-ignore-case")
                .and_then(Value::as_str)
                .is_some_and(|p| fold(s).ends_with(&fold(p))),
            _ => false,
        },
        "equals-ignore-case" => s.is_some_and(|s| arg.as_str().is_some_and(|p| fold(s) == fold(p))),
        "wildcard" => s.is_some_and(|s| arg.as_str().is_some_and(|p| wildcard(p, s))),
        "cidr" => s.is_some_and(|s| arg.as_str().is_some_and(|b| in_cidr(b, s))),
        "contains" => match (arg, v) {
            (Value::String(sub), Value::String(s)) => s.contains(sub.as_str()),
            (a, v) => num_eq(a, v),
        },
        "numeric" => {
            let Some(x) = v.as_f64().filter(|_| v.is_number()) else {
                return false;
            };
            let items = arg.as_array().cloned().unwrap_or_default();
            items.chunks(2).all(|c| {
                let b = c.get(1).and_then(Value::as_f64).unwrap_or(f64::NAN);
                match c[0].as_str() {
                    Some("=") => x == b,
                    Some(">") => x > b,
                    Some(">=") => x >= b,
                    Some("<") => x < b,
                    Some("<=") => x <= b,
                    _ => false,
                }
            })
        }
        "anything-but" => match arg {
            Value::Array(xs) => !xs.iter().any(|x| num_eq(x, v)),
            Value::Object(o) => {
                let Some(s) = s else { return true };
                let Some((form, list)) = o.iter().next() else {
                    return false;
                };
                let list: Vec<&str> = match list {
                    Value::String(one) => vec![one.as_str()],
                    Value::Array(xs) => xs.iter().filter_map(Value::as_str).collect(),
                    _ => vec![],
                };
                !list.iter().any(|p| match form.as_str() {
                    "prefix" => s.starts_with(p),
                    "suffix" => s.ends_with(p),
                    "equals-ignore-case" => fold(s) == fold(p),
                    "wildcard" => wildcard(p, s),
                    _ => false,
                })
            }
            x => !num_eq(x, v),
        },
        _ => false,
    }
}

// ---- generators -------------------------------------------------------------------------

const KEYS: &[&str] = &["type", "detail-type", "data", "detail", "a", "items"];

fn string() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        "x",
        "y",
        "X",
        "",
        "xy",
        "Xy",
        "éY",
        "ÉY",
        "yx",
        "x*y",
        "a\\b",
        "q\"q",
        "line\nx",
        "ΣΑΣ",
        "σας",
        "10.0.0.5",
        "10.1.2.3",
        "::ffff:10.0.0.1",
        "2001:db8::1",
        "xay",
        "XYX",
    ])
    .prop_map(|s| json!(s))
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => string(),
        1 => Just(json!(1)),
        1 => Just(json!(2.0)),
        1 => Just(json!(2)),
        1 => Just(json!(-0.0)),
        1 => Just(json!(0)),
        1 => Just(json!(1.5e3)),
        1 => Just(json!(-7)),
        1 => Just(json!(true)),
        1 => Just(json!(false)),
        1 => Just(Value::Null),
    ]
}

fn matcher() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => scalar(),
        1 => Just(json!({"prefix": "x"})),
        1 => Just(json!({"prefix": ""})),
        1 => Just(json!({"prefix": {"equals-ignore-case": "X"}})),
        1 => Just(json!({"prefix": {"equals-ignore-case": "σ"}})),
        1 => Just(json!({"suffix": "y"})),
        1 => Just(json!({"suffix": {"equals-ignore-case": "Y"}})),
        1 => Just(json!({"suffix": {"equals-ignore-case": "ΑΣ"}})),
        1 => Just(json!({"equals-ignore-case": "x"})),
        1 => Just(json!({"equals-ignore-case": "éy"})),
        1 => Just(json!({"equals-ignore-case": "ΣΑΣ"})),
        1 => Just(json!({"wildcard": "*x*"})),
        1 => Just(json!({"wildcard": "x*"})),
        1 => Just(json!({"wildcard": "*y"})),
        1 => Just(json!({"wildcard": "x\\*y"})),
        1 => Just(json!({"wildcard": "*a*"})),
        1 => Just(json!({"contains": 2})),
        1 => Just(json!({"contains": "x"})),
        1 => Just(json!({"anything-but": "x"})),
        1 => Just(json!({"anything-but": [1, 2]})),
        1 => Just(json!({"anything-but": ["x", "y"]})),
        1 => Just(json!({"anything-but": {"prefix": "y"}})),
        1 => Just(json!({"anything-but": {"suffix": ["y", "x"]}})),
        1 => Just(json!({"anything-but": {"equals-ignore-case": "X"}})),
        1 => Just(json!({"anything-but": {"wildcard": "*y*"}})),
        1 => Just(json!({"numeric": [">", 0, "<=", 2]})),
        1 => Just(json!({"numeric": ["=", 1]})),
        1 => Just(json!({"numeric": ["<", 0]})),
        1 => Just(json!({"numeric": [">=", 1500]})),
        1 => Just(json!({"cidr": "10.0.0.0/8"})),
        1 => Just(json!({"cidr": "2001:db8::/32"})),
        1 => Just(json!({"exists": true})),
        1 => Just(json!({"exists": false})),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::collection::vec(scalar(), 1..3).prop_map(Value::Array),
        prop::collection::vec(matcher(), 1..4).prop_map(Value::Array),
    ]
}

fn pattern_node(depth: u32) -> BoxedStrategy<Value> {
    let field_value = if depth == 0 {
        leaf().boxed()
    } else {
        prop_oneof![3 => leaf(), 1 => pattern_node(depth - 1)].boxed()
    };
    let fields = prop::collection::vec((prop::sample::select(KEYS), field_value), 1..3);
    let or = if depth == 0 {
        Just(None).boxed()
    } else {
        prop::option::weighted(0.25, prop::collection::vec(pattern_node(depth - 1), 2..3)).boxed()
    };
    (fields, or)
        .prop_map(|(fields, or)| {
            let mut m = Map::new();
            for (k, v) in fields {
                m.insert(k.to_string(), v);
            }
            if let Some(branches) = or {
                m.insert("$or".to_string(), Value::Array(branches));
            }
            Value::Object(m)
        })
        .boxed()
}

/// One field, possibly one level down: matches often.
fn simple_pattern() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(KEYS),
        prop::option::of(prop::sample::select(KEYS)),
        leaf(),
    )
        .prop_map(|(k, inner, leaf)| match inner {
            None => json!({ k: leaf }),
            Some(i) => json!({ k: { i: leaf } }),
        })
}

fn any_pattern() -> impl Strategy<Value = Value> {
    prop_oneof![simple_pattern(), pattern_node(2)]
}

fn event_value(depth: u32) -> BoxedStrategy<Value> {
    if depth == 0 {
        return scalar().boxed();
    }
    prop_oneof![
        3 => scalar(),
        1 => prop::collection::vec(scalar(), 0..3).prop_map(Value::Array),
        2 => event_object(depth - 1),
        1 => prop::collection::vec(event_object(depth - 1), 0..3).prop_map(Value::Array),
        1 => prop::collection::vec(prop::collection::vec(event_object(depth - 1), 0..2).prop_map(Value::Array), 0..2).prop_map(Value::Array),
    ]
    .boxed()
}

fn event_object(depth: u32) -> BoxedStrategy<Value> {
    prop::collection::vec((prop::sample::select(KEYS), event_value(depth)), 0..10)
        .prop_map(|fields| {
            let mut m = Map::new();
            for (k, v) in fields {
                m.insert(k.to_string(), v);
            }
            Value::Object(m)
        })
        .boxed()
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, Value),
    Remove(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..16, any_pattern()).prop_map(|(k, p)| Op::Insert(k, p)),
        2 => (0u8..16).prop_map(Op::Remove),
    ]
}

fn bytes_matches(set: &RuleSet<usize>, ev: &Value) -> Vec<usize> {
    let text = serde_json::to_vec(ev).expect("serialises");
    set.matches_json_bytes(&text).expect("valid JSON")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    /// Compiled matching (both entry points) and Pattern::matches equal the
    /// reference interpreter, rule by rule and for the whole set.
    #[test]
    fn ruleset_equals_reference(
        patterns in prop::collection::vec(any_pattern(), 1..10),
        events in prop::collection::vec(event_object(3), 1..10),
    ) {
        let mut set = RuleSet::new();
        let mut kept = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            let parsed = Pattern::parse(p).map_err(|e| TestCaseError::fail(format!("{p}: {e}")))?;
            set.insert(i, parsed.clone());
            kept.push((i, p, parsed));
        }
        for ev in &events {
            let want: Vec<usize> = kept
                .iter()
                .filter(|(_, p, _)| reference_matches(p, ev))
                .map(|(i, _, _)| *i)
                .collect();
            for (i, p, parsed) in &kept {
                prop_assert_eq!(parsed.matches(ev), want.contains(i), "Pattern::matches, pattern {} event {}", p, ev);
            }
            prop_assert_eq!(set.matches(ev), want.clone(), "RuleSet::matches, event {}", ev);
            prop_assert_eq!(bytes_matches(&set, ev), want, "matches_json_bytes, event {}", ev);
        }
    }

    /// Random inserts and removes give the same answers as building the
    /// surviving rules from scratch.
    #[test]
    fn incremental_equals_from_scratch(
        ops in prop::collection::vec(op(), 1..40),
        events in prop::collection::vec(event_object(3), 1..8),
    ) {
        let mut set: RuleSet<usize> = RuleSet::new();
        let mut live: Vec<(usize, Pattern)> = Vec::new();
        for op in ops {
            match op {
                Op::Insert(k, p) => {
                    let p = Pattern::parse(&p).map_err(|e| TestCaseError::fail(format!("{p}: {e}")))?;
                    set.insert(k.into(), p.clone());
                    live.retain(|(lk, _)| *lk != usize::from(k));
                    live.push((k.into(), p));
                }
                Op::Remove(k) => {
                    set.remove(&k.into());
                    live.retain(|(lk, _)| *lk != usize::from(k));
                }
            }
        }
        let mut fresh = RuleSet::new();
        for (k, p) in &live {
            fresh.insert(*k, p.clone());
        }
        prop_assert_eq!(set.len(), fresh.len());
        prop_assert_eq!(set.unindexed_len(), fresh.unindexed_len());
        for ev in &events {
            prop_assert_eq!(set.matches(ev), fresh.matches(ev), "event {}", ev);
            prop_assert_eq!(bytes_matches(&set, ev), bytes_matches(&fresh, ev), "event {}", ev);
        }
        // Emptying the set leaves nothing behind.
        for (k, _) in &live {
            set.remove(k);
        }
        prop_assert!(set.is_empty());
        for ev in &events {
            prop_assert!(set.matches(ev).is_empty());
        }
    }
}

#[test]
fn reference_agrees_with_itself_on_docs_examples() {
    // Sanity checks of the reference interpreter.
    let ev = json!({"detail": {"state": "running", "n": 5}, "detail-type": "T"});
    assert!(reference_matches(
        &json!({"type": ["T"], "data": {"n": [5.0]}}),
        &ev
    ));
    assert!(!reference_matches(
        &json!({"detail": {"state": [{"anything-but": "running"}]}}),
        &ev
    ));
    assert!(wildcard("a\\*b", "a*b") && !wildcard("a\\*b", "axb"));
    assert!(in_cidr("10.0.0.0/8", "::ffff:10.0.0.1") && !in_cidr("2001:db8::/32", "10.0.0.1"));
}
