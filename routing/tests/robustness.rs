//! Bad input never panics: random JSON and bytes through the parsers and
//! matchers.

use proptest::prelude::*;
use serde_json::{Map, Number, Value, json};
use strait_routing::pattern::{Pattern, RuleSet};
use strait_routing::transform::{EventPath, Transform, TransformContext};

const WORDS: &[&str] = &[
    "prefix",
    "suffix",
    "equals-ignore-case",
    "wildcard",
    "anything-but",
    "numeric",
    "cidr",
    "exists",
    "contains",
    "$or",
    "data",
    "detail",
    "type",
    "detail-type",
    "source",
    "form",
    "Form",
    "value",
    "template",
    "input",
    "inputPath",
    "InputTransformer",
    "inputTransformer",
    "inputPathsMap",
    "inputTemplate",
    "ORIGINAL",
    "JSONPATH",
    "CONSTANT",
    "TEMPLATE",
    "$.data",
    "$.detail.a-b",
    "$..x",
    "$[*]",
    "<aws.events.event>",
    "${x}",
    "x",
    "=",
    "<",
    ">=",
    "10.0.0.0/8",
    "::1",
    "a*b",
    "a**b",
    "\\",
    "",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(WORDS).prop_map(str::to_string),
        ".{0,16}",
        "[$.\\[\\]'\"*?@()<>{}a-z0-9 -]{0,24}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (-3i64..6).prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..6).prop_map(|fields| {
                Value::Object(fields.into_iter().collect::<Map<String, Value>>())
            }),
        ]
    })
}

const CTX: TransformContext<'static> = TransformContext {
    rule_name: "r",
    rule_id: "bus/r",
    ingestion_time: "2026-01-01T00:00:00Z",
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn pattern_parse_and_match_never_panic(p in json_value(), ev in json_value()) {
        if let Ok(pattern) = Pattern::parse(&p) {
            let direct = pattern.matches(&ev);
            let mut set = RuleSet::new();
            set.insert(0u8, pattern);
            prop_assert_eq!(set.matches(&ev).len(), usize::from(direct));
        }
    }

    #[test]
    fn pattern_errors_always_have_a_path(p in json_value()) {
        if let Err(e) = Pattern::parse(&p) {
            prop_assert!(!e.path.is_empty());
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn transform_parse_and_apply_never_panic(t in json_value(), ev in json_value()) {
        if let Ok(tr) = Transform::parse(&t) {
            let _ = tr.apply(&ev, &CTX);
        }
    }

    #[test]
    fn structured_transforms_never_panic(
        path in text(),
        template in text(),
        var in text(),
        ev in json_value(),
    ) {
        let candidates = [
            json!({"form": "JSONPATH", "value": path}),
            json!({"form": "TEMPLATE", "value": {var.clone(): path}, "template": template}),
            json!({"inputPath": path}),
            json!({"inputTransformer": {"inputPathsMap": {var: path}, "inputTemplate": template}}),
            json!({"input": template}),
        ];
        for t in candidates {
            if let Ok(tr) = Transform::parse(&t) {
                let _ = tr.apply(&ev, &CTX);
            }
        }
    }

    #[test]
    fn jsonpath_never_panics(s in "\\$[.\\[\\]'\"*?@()a-z0-9:,=<>!&| -]{0,40}", ev in json_value()) {
        if let Ok(p) = EventPath::parse(&s) {
            let _ = p.query(&ev);
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            let _ = Pattern::parse(&v).map(|p| p.matches(&v));
            let _ = Transform::parse(&v).map(|t| t.apply(&v, &CTX));
        }
        // The one-pass event reader on arbitrary bytes.
        let set = reader_set();
        let _ = set.matches_json_bytes(&bytes);
    }

    #[test]
    fn event_reader_never_panics_on_mangled_json(ev in json_value(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut text = serde_json::to_vec(&serde_json::json!({"a": ev.clone(), "b": {"c": ev}})).unwrap_or_default();
        let set = reader_set();
        if !text.is_empty() {
            let i = cut.index(text.len());
            text[i] = byte;
            let _ = set.matches_json_bytes(&text);
            text.truncate(i);
            let _ = set.matches_json_bytes(&text);
        }
    }
}

#[test]
fn deeply_nested_inputs_are_rejected_not_overflowed() {
    let mut p = json!([1]);
    for _ in 0..120 {
        p = json!({"k": p});
    }
    assert!(Pattern::parse(&p).is_err());
    let deep_path = format!("$.a{}", "[?@.b".repeat(100));
    assert!(EventPath::parse(&deep_path).is_err());
    let deep_path = format!("$.a{}", "[".repeat(500));
    assert!(EventPath::parse(&deep_path).is_err());
}

fn reader_set() -> strait_routing::pattern::RuleSet<u8> {
    let mut set = strait_routing::pattern::RuleSet::new();
    for (i, p) in [
        serde_json::json!({"a": [{"exists": true}]}),
        serde_json::json!({"b": {"c": [{"prefix": "x"}]}}),
        serde_json::json!({"a": {"x": [1]}, "b": {"c": [{"numeric": [">", 0]}]}}),
    ]
    .iter()
    .enumerate()
    {
        if let Ok(p) = Pattern::parse(p) {
            set.insert(i as u8, p);
        }
    }
    set
}
