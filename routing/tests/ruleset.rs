//! RuleSet: compiled matching must always agree with Pattern::matches.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use strait_routing::pattern::{Pattern, RuleSet};

fn pattern(p: Value) -> Pattern {
    Pattern::parse(&p).unwrap_or_else(|e| panic!("pattern {p} should parse: {e}"))
}

#[test]
fn basic_insert_match_remove() {
    let mut set = RuleSet::new();
    assert!(set.is_empty());
    set.insert("ec2", pattern(json!({"source": ["aws.ec2"]})));
    set.insert("s3", pattern(json!({"source": ["aws.s3"]})));
    set.insert(
        "running",
        pattern(json!({"detail": {"state": ["running"]}})),
    );
    set.insert("any", pattern(json!({"time": [{"anything-but": "1999"}]})));
    assert_eq!(set.len(), 4);
    assert_eq!(set.unindexed_len(), 1);

    let ev = json!({"source": "aws.ec2", "time": "2026-01-01", "data": {"state": "running"}});
    assert_eq!(set.matches(&ev), vec!["ec2", "running", "any"]);

    set.remove(&"running");
    assert_eq!(set.matches(&ev), vec!["ec2", "any"]);
    assert_eq!(set.len(), 3);
    set.remove(&"nope");
    assert_eq!(set.len(), 3);

    // re-inserting under a key replaces the pattern (and moves it last)
    set.insert("ec2", pattern(json!({"source": ["aws.s3"]})));
    assert_eq!(set.matches(&ev), vec!["any"]);
    assert_eq!(set.matches(&json!({"source": "aws.s3"})), vec!["s3", "ec2"]);
    assert!(set.contains_key(&"ec2"));
    assert!(set.get(&"ec2").is_some());

    for k in ["ec2", "s3", "any"] {
        set.remove(&k);
    }
    assert!(set.is_empty());
    assert!(set.matches(&ev).is_empty());
}

#[test]
fn index_respects_aliases_arrays_and_numbers() {
    let mut set = RuleSet::new();
    set.insert(1, pattern(json!({"detail-type": ["T"]})));
    set.insert(2, pattern(json!({"type": ["T"]})));
    set.insert(3, pattern(json!({"data": {"items": {"sku": ["A"]}}})));
    set.insert(4, pattern(json!({"detail": {"n": [5]}})));
    set.insert(5, pattern(json!({"resources": ["r2"]})));
    let ce = json!({"type": "T", "data": {"items": [{"sku": "B"}, {"sku": "A"}], "n": 5.0}, "resources": ["r1", "r2"]});
    assert_eq!(set.matches(&ce), vec![1, 2, 3, 4, 5]);
    let aws = json!({"detail-type": "T", "detail": {"items": [[{"sku": "A"}]], "n": 5}});
    assert_eq!(set.matches(&aws), vec![1, 2, 3, 4]);
}

#[test]
fn or_patterns_are_indexed_per_branch() {
    let mut set = RuleSet::new();
    set.insert(
        "or",
        pattern(json!({"$or": [{"source": ["a"]}, {"type": ["b"]}]})),
    );
    set.insert(
        "half",
        pattern(json!({"$or": [{"source": ["a"]}, {"type": [{"anything-but": "c"}]}]})),
    );
    assert_eq!(set.unindexed_len(), 1);
    assert_eq!(set.matches(&json!({"type": "b"})), vec!["or", "half"]);
    assert_eq!(set.matches(&json!({"source": "a"})), vec!["or", "half"]);
    assert_eq!(set.matches(&json!({"type": "bb"})), vec!["half"]);
    assert!(set.matches(&json!({"source": "c", "type": "c"})).is_empty());
}

#[test]
fn affixes_and_ignore_case_are_indexed() {
    let mut set = RuleSet::new();
    set.insert(1, pattern(json!({"subject": [{"prefix": "orders/"}]})));
    set.insert(
        2,
        pattern(json!({"subject": [{"prefix": {"equals-ignore-case": "ORDERS/1"}}]})),
    );
    set.insert(3, pattern(json!({"subject": [{"suffix": ".png"}]})));
    set.insert(
        4,
        pattern(json!({"subject": [{"suffix": {"equals-ignore-case": ".PNG"}}]})),
    );
    set.insert(
        5,
        pattern(json!({"subject": [{"equals-ignore-case": "ORDERS/1.PNG"}]})),
    );
    set.insert(
        6,
        pattern(json!({"subject": [{"wildcard": "orders/*.png"}]})),
    );
    set.insert(7, pattern(json!({"subject": [{"wildcard": "*.png"}]})));
    set.insert(
        8,
        pattern(json!({"subject": [{"wildcard": "orders/1.png"}]})),
    );
    set.insert(9, pattern(json!({"subject": [{"prefix": ""}]})));
    set.insert(10, pattern(json!({"data": {"ids": [{"contains": 7}]}})));
    assert_eq!(set.unindexed_len(), 0);
    assert_eq!(
        set.matches(&json!({"subject": "orders/1.png", "data": {"ids": [7]}})),
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    );
    assert_eq!(
        set.matches(&json!({"subject": "Orders/10.PNG"})),
        vec![2, 4, 9]
    );
    assert_eq!(set.matches(&json!({"subject": "x"})), vec![9]);
    assert!(set.matches(&json!({"subject": 5})).is_empty());
    // multi-byte text: prefix lengths that fall inside a character are skipped
    set.insert(11, pattern(json!({"subject": [{"prefix": "é"}]})));
    assert_eq!(set.matches(&json!({"subject": "éa"})), vec![9, 11]);
    assert_eq!(set.matches(&json!({"subject": "e"})), vec![9]);
    for k in 1..=11 {
        set.remove(&k);
    }
    assert!(set.is_empty());
}

#[test]
fn many_rules_share_common_values() {
    // All rules share source; the index should spread them over `type`.
    let mut set = RuleSet::new();
    for i in 0..500 {
        set.insert(
            i,
            pattern(json!({"source": ["shop"], "type": [format!("t{i}")]})),
        );
    }
    assert_eq!(
        set.matches(&json!({"source": "shop", "type": "t42"})),
        vec![42]
    );
    assert!(
        set.matches(&json!({"source": "other", "type": "t42"}))
            .is_empty()
    );
    assert_eq!(set.unindexed_len(), 0);
}

// ---- proptest: RuleSet == brute force -------------------------------------------------

const KEYS: &[&str] = &[
    "source",
    "type",
    "detail-type",
    "data",
    "detail",
    "a",
    "b",
    "items",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("x")),
        Just(json!("y")),
        Just(json!("X")),
        Just(json!("")),
        Just(json!("10.0.0.5")),
        Just(json!("xy")),
        Just(json!("Xy")),
        Just(json!("éY")),
        Just(json!(1)),
        Just(json!(2.0)),
        Just(json!(2)),
        Just(json!(-0.0)),
        Just(json!(true)),
        Just(Value::Null),
    ]
}

fn matcher() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => scalar(),
        1 => Just(json!({"prefix": "x"})),
        1 => Just(json!({"prefix": {"equals-ignore-case": "X"}})),
        1 => Just(json!({"suffix": "y"})),
        1 => Just(json!({"equals-ignore-case": "x"})),
        1 => Just(json!({"wildcard": "*x*"})),
        1 => Just(json!({"wildcard": "x*"})),
        1 => Just(json!({"wildcard": "*y"})),
        1 => Just(json!({"suffix": {"equals-ignore-case": "Y"}})),
        1 => Just(json!({"prefix": ""})),
        1 => Just(json!({"contains": 2})),
        1 => Just(json!({"anything-but": "x"})),
        1 => Just(json!({"anything-but": [1, 2]})),
        1 => Just(json!({"anything-but": {"prefix": "y"}})),
        1 => Just(json!({"numeric": [">", 0, "<=", 2]})),
        1 => Just(json!({"numeric": ["=", 1]})),
        1 => Just(json!({"cidr": "10.0.0.0/8"})),
        1 => Just(json!({"exists": true})),
        1 => Just(json!({"exists": false})),
        1 => Just(json!({"contains": "x"})),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        // all exact values: indexable
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
    let fields = prop::collection::vec((prop::sample::select(KEYS), field_value), 1..4);
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

fn event_value(depth: u32) -> BoxedStrategy<Value> {
    if depth == 0 {
        return scalar().boxed();
    }
    prop_oneof![
        4 => scalar(),
        1 => prop::collection::vec(scalar(), 0..3).prop_map(Value::Array),
        2 => event_object(depth - 1),
        1 => prop::collection::vec(event_object(depth - 1), 0..3).prop_map(Value::Array),
    ]
    .boxed()
}

fn event_object(depth: u32) -> BoxedStrategy<Value> {
    prop::collection::vec((prop::sample::select(KEYS), event_value(depth)), 1..8)
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
        2 => (0u8..24, simple_pattern()).prop_map(|(k, p)| Op::Insert(k, p)),
        2 => (0u8..24, pattern_node(2)).prop_map(|(k, p)| Op::Insert(k, p)),
        1 => (0u8..24).prop_map(Op::Remove),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn ruleset_equals_brute_force(
        ops in prop::collection::vec(op(), 1..40),
        events in prop::collection::vec(event_object(3), 1..12),
    ) {
        let mut set = RuleSet::new();
        let mut brute: Vec<(u8, Pattern)> = Vec::new();
        for op in ops {
            match op {
                Op::Insert(k, p) => {
                    let Ok(p) = Pattern::parse(&p) else { continue };
                    set.insert(k, p.clone());
                    brute.retain(|(bk, _)| *bk != k);
                    brute.push((k, p));
                }
                Op::Remove(k) => {
                    set.remove(&k);
                    brute.retain(|(bk, _)| *bk != k);
                }
            }
            prop_assert_eq!(set.len(), brute.len());
            for ev in &events {
                let expected: Vec<u8> = brute
                    .iter()
                    .filter(|(_, p)| p.matches(ev))
                    .map(|(k, _)| *k)
                    .collect();
                prop_assert_eq!(set.matches(ev), expected, "event {}", ev);
            }
        }
    }

    #[test]
    fn generated_patterns_parse(p in pattern_node(3)) {
        // The generator only produces valid patterns; keep it honest.
        prop_assert!(Pattern::parse(&p).is_ok(), "{}", p);
    }
}

/// Rules without a guard that are a single leaf are tested value by value
/// (not by walking the pattern); the results must be those of
/// `Pattern::matches` on every shape of event, including arrays of objects,
/// absent and empty fields, and across inserts and removes that free and
/// reuse field nodes.
#[test]
fn single_leaf_rules_without_a_guard() {
    let rules = [
        json!({"a": {"b": [{"anything-but": ["x"]}]}}),
        json!({"a": {"b": [{"numeric": [">", 1, "<=", 5]}]}}),
        json!({"a": {"c": [{"cidr": "10.0.0.0/8"}]}}),
        json!({"a": {"b": [{"anything-but": {"prefix": "y"}}, {"numeric": ["=", 9]}]}}),
        json!({"a": {"b": [{"exists": false}]}}),
        json!({"detail": {"b": [{"anything-but": ["x"]}]}}),
        json!({"a": {"b": ["x"], "c": [{"anything-but": ["q"]}]}}),
    ];
    let events = [
        json!({}),
        json!({"a": {}}),
        json!({"a": {"b": "x"}}),
        json!({"a": {"b": "y1"}}),
        json!({"a": {"b": 3}}),
        json!({"a": {"b": 9}}),
        json!({"a": {"b": []}}),
        json!({"a": {"b": ["x", 2]}}),
        json!({"a": {"b": {"c": 1}}}),
        json!({"a": [{"b": "x"}, {"b": 4}, {"c": "10.1.2.3"}]}),
        json!({"a": {"b": "x", "c": "10.1.2.3"}}),
        json!({"a": {"b": null, "c": "11.0.0.1"}}),
        json!({"data": {"b": "z"}}),
        json!({"detail": {"b": "x"}, "data": {"b": "z"}}),
        json!([{"a": {"b": 2}}]),
    ];
    let mut set = RuleSet::new();
    for (i, r) in rules.iter().enumerate() {
        set.insert(i, pattern(r.clone()));
    }
    assert_eq!(set.unindexed_len(), 6);
    let check = |set: &RuleSet<usize>, live: &[usize]| {
        for ev in &events {
            let want: Vec<usize> = live
                .iter()
                .copied()
                .filter(|&i| pattern(rules[i].clone()).matches(ev))
                .collect();
            assert_eq!(set.matches(ev), want, "event {ev}");
            let text = ev.to_string();
            assert_eq!(
                set.matches_json_bytes(text.as_bytes()).expect("valid JSON"),
                want,
                "event {text}"
            );
        }
    };
    check(&set, &[0, 1, 2, 3, 4, 5, 6]);
    set.remove(&0);
    set.remove(&2);
    check(&set, &[1, 3, 4, 5, 6]);
    set.remove(&1);
    set.remove(&3);
    set.remove(&4);
    set.remove(&5);
    check(&set, &[6]);
    assert_eq!(set.unindexed_len(), 0);
    set.insert(2, pattern(rules[2].clone()));
    set.insert(0, pattern(rules[0].clone()));
    check(&set, &[6, 2, 0]);
    assert_eq!(set.unindexed_len(), 2);
}
