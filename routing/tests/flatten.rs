//! `RuleSet::matches_json_bytes`: reading events from JSON text.

use serde_json::{Value, json};
use strait_routing::pattern::{Pattern, RuleSet};

fn set(patterns: &[Value]) -> RuleSet<usize> {
    let mut s = RuleSet::new();
    for (i, p) in patterns.iter().enumerate() {
        s.insert(i, Pattern::parse(p).expect("test pattern parses"));
    }
    s
}

fn bytes(s: &RuleSet<usize>, text: &str) -> Vec<usize> {
    s.matches_json_bytes(text.as_bytes())
        .unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn agrees_with_value_matching_on_many_shapes() {
    let s = set(&[
        json!({"a": ["x"]}),
        json!({"a": [{"exists": false}]}),
        json!({"b": {"c": [1]}}),
        json!({"detail": {"d": [{"prefix": "p"}]}}),
        json!({"type": [{"equals-ignore-case": "T"}]}),
        json!({}),
    ]);
    for text in [
        r#"{"a": "x"}"#,
        r#"{"a": ["y", "x"], "b": {"c": 1.0}}"#,
        r#"{"z": {"a": "x"}, "b": [{"c": 2}, {"c": 1}]}"#,
        r#"{"data": {"d": "pq"}, "detail-type": "t"}"#,
        r#"{"detail": {"d": "q"}, "data": {"d": "pq"}}"#,
        r#"  {"a" : "x" , "b" : { "c" : [ 1 ] } }  "#,
        r#"[{"a": "x"}, {"b": {"c": 1}}]"#,
        r#""x""#,
        r#"5"#,
        r#"null"#,
        r#"{}"#,
        r#"{"a": {"x": 1}}"#,
        r#"{"a": [[["x"]]]}"#,
    ] {
        let v: Value = serde_json::from_str(text).expect("valid");
        assert_eq!(bytes(&s, text), s.matches(&v), "{text}");
    }
}

#[test]
fn escapes_are_decoded_in_names_and_values() {
    let s = set(&[json!({"ключ": ["a\"b\\c/é😀\n"]})]);
    let text = r#"{"\u043a\u043b\u044e\u0447": "a\"b\\c\/\u00e9\ud83d\ude00\n"}"#;
    assert_eq!(bytes(&s, text), vec![0]);
}

#[test]
fn duplicate_names_use_the_first_occurrence() {
    let s = set(&[json!({"a": ["x"]}), json!({"a": ["y"]})]);
    assert_eq!(bytes(&s, r#"{"a": "x", "a": "y"}"#), vec![0]);
    assert_eq!(bytes(&s, r#"{"b": 1, "a": "y", "a": "x"}"#), vec![1]);
    // Nested objects too.
    let s = set(&[json!({"o": {"a": ["x"]}})]);
    assert_eq!(bytes(&s, r#"{"o": {"a": "x", "a": "y"}}"#), vec![0]);
    assert!(bytes(&s, r#"{"o": {"a": "y", "a": "x"}}"#).is_empty());
}

#[test]
fn reading_stops_once_every_needed_field_was_seen() {
    let s = set(&[json!({"a": ["x"]})]);
    // What follows the needed field is not read at all...
    assert_eq!(bytes(&s, r#"{"a": "x", "rest": [1, 2, oops"#), vec![0]);
    // ...but everything up to it is.
    assert!(
        s.matches_json_bytes(br#"{"junk": [1, 2, "a": "x"}"#)
            .is_err()
    );
    // Values the rules do not read are only scanned for their end.
    assert!(bytes(&s, r#"{"b": [1 2 x], "c": tru}"#).is_empty());
    // Without early exit (field absent) the whole text is checked.
    assert!(s.matches_json_bytes(br#"{"b": 1} trailing"#).is_err());
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    let s = set(&[json!({"a": ["x"]}), json!({"n": [{"numeric": [">", 0]}]})]);
    for bad in [
        "",
        "{",
        r#"{"a""#,
        r#"{"a": }"#,
        r#"{"a": "x"#,
        r#"{"a": "\q"}"#,
        r#"{"a": "\ud800"}"#,
        r#"{"a": "\udc00"}"#,
        r#"{"a": "\u12"}"#,
        "{\"a\": \"tab\there\"}",
        r#"{"n": 01}"#,
        r#"{"n": 1.}"#,
        r#"{"n": -}"#,
        r#"{"n": 1e}"#,
        r#"{"n": tru}"#,
        r#"{"b": 1,}"#,
        r#"{"b" 1}"#,
        r#"{"b": 1} x"#,
        r#"{"b": "unterminated}"#,
        r#"{"b": [1, 2"#,
    ] {
        let r = s.matches_json_bytes(bad.as_bytes());
        assert!(r.is_err(), "{bad:?} gave {r:?}");
        if let Err(e) = r {
            assert!(
                e.to_string().starts_with("invalid event JSON at byte "),
                "{e}"
            );
        }
    }
    // Invalid UTF-8 in a value the rules read.
    assert!(s.matches_json_bytes(b"{\"a\": \"\xff\"}").is_err());
}

#[test]
fn deep_nesting_is_rejected_where_read_and_skipped_elsewhere() {
    let s = set(&[json!({"a": ["x"]})]);
    let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
    let read = format!(r#"{{"a": {deep}}}"#);
    assert!(s.matches_json_bytes(read.as_bytes()).is_err());
    let skipped = format!(r#"{{"b": {deep}, "a": "x"}}"#);
    assert_eq!(bytes(&s, &skipped), vec![0]);
}

#[test]
fn numbers_match_as_serde_json_reads_them() {
    // The bound has more digits than a double holds: written as text.
    let pattern: Value =
        serde_json::from_str(r#"{"n": [{"numeric": ["=", -122.422003528252475]}]}"#)
            .expect("valid");
    let s = set(&[pattern]);
    for text in [
        "-122.422003528252475",
        "-122.4220035282524750000",
        "-1.22422003528252475e2",
        "-12242200352825247.5e-14",
    ] {
        let ev = format!(r#"{{"n": {text}}}"#);
        let v: Value = serde_json::from_str(&ev).expect("valid");
        assert_eq!(bytes(&s, &ev), s.matches(&v), "{text}");
    }
    let s = set(&[json!({"n": [18446744073709551615u64]})]);
    assert_eq!(bytes(&s, r#"{"n": 18446744073709551615}"#), vec![0]);
    assert_eq!(bytes(&s, r#"{"n": 1.8446744073709551615e19}"#), vec![0]);
}

#[test]
fn big_events_with_few_relevant_fields() {
    let s = set(&[json!({"detail": {"k": ["v"]}})]);
    let mut ev = serde_json::Map::new();
    for i in 0..2000 {
        ev.insert(
            format!("f{i}"),
            json!({"nested": [i, {"x": "y"}], "s": "text"}),
        );
    }
    ev.insert("detail".into(), json!({"k": "v"}));
    let text = Value::Object(ev).to_string();
    assert_eq!(bytes(&s, &text), vec![0]);
}

mod skipping {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec![
                "a", "[", "]", "{", "}", "\"", "\\", "\\\\", "\\\"", ",", ":", "é", " ", "x\"]",
            ]),
            0..8,
        )
        .prop_map(|parts| parts.concat())
    }

    fn junk() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            text().prop_map(Value::String),
            any::<i32>().prop_map(|n| json!(n)),
            Just(json!(1.5e300)),
            Just(Value::Null),
            Just(json!(true)),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((text(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Values the rules do not read are skipped correctly whatever they
        /// hold (brackets and escaped quotes inside strings, nesting), in
        /// compact and pretty-printed text.
        #[test]
        fn skipped_values_never_confuse_the_reader(
            a in junk(), b in junk(), c in junk(), k in text(),
        ) {
            let s = set(&[
                json!({"k": [k.clone()]}),
                json!({"o": {"k": [k.clone()]}}),
                json!({"o": {"k": [{"exists": false}]}}),
                json!({"arr": {"k": [k.clone()]}}),
            ]);
            let ev = json!({
                "a": a.clone(),
                "k": k.clone(),
                "o": {"b": b, "k": k.clone(), "c": c.clone()},
                "arr": [{"x": a}, {"k": k}, c],
            });
            for text in [serde_json::to_string(&ev), serde_json::to_string_pretty(&ev)] {
                let text = text.expect("serialises");
                let got = s.matches_json_bytes(text.as_bytes()).expect("valid JSON");
                prop_assert_eq!(got, s.matches(&ev), "{}", text);
            }
        }
    }
}
