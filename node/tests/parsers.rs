//! Property tests: random input to every parser of the node never panics,
//! and errors name what is wrong.

use proptest::prelude::*;
use serde_json::json;
use strait_node::RuleSpec;
use strait_node::TraceParent;
use strait_node::config::NodeConfig;
use strait_routing::event::{Event, percent_decode_header};

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-z0-9 ./:-]{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("pattern".to_string()),
                    Just("targets".to_string()),
                    Just("id".to_string()),
                    Just("type".to_string()),
                    Just("endpoint".to_string()),
                    Just("retry".to_string()),
                    Just("transform".to_string()),
                    Just("deadLetter".to_string()),
                    "[a-z]{1,8}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn config_yaml_never_panics(text in "\\PC{0,300}") {
        if let Ok(cfg) = serde_yaml::from_str::<NodeConfig>(&text) {
            let _ = cfg.validate();
        }
    }

    #[test]
    fn config_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if let Err(e) = NodeConfig::load(&path) {
            prop_assert!(e.to_string().contains("c.yaml"));
        }
    }

    #[test]
    fn rule_specs_never_panic(v in arb_json()) {
        let _ = RuleSpec::from_json(&v);
    }

    #[test]
    fn events_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400), v in arb_json()) {
        let _ = Event::from_json_bytes(&bytes);
        let _ = Event::from_structured(v);
    }

    #[test]
    fn header_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = percent_decode_header(&bytes);
    }

    #[test]
    fn traceparents_never_panic(s in "\\PC{0,70}") {
        if let Some(tp) = TraceParent::parse(&s) {
            prop_assert_eq!(TraceParent::parse(&tp.to_string()), Some(tp));
        }
    }
}

#[test]
fn config_errors_name_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node.yaml");
    std::fs::write(&path, "limits:\n  max_event_bytes: big\n").expect("write");
    let e = NodeConfig::load(&path).expect_err("bad type").to_string();
    assert!(e.contains("max_event_bytes"), "{e}");
    std::fs::write(&path, "bogus_key: 1\n").expect("write");
    let e = NodeConfig::load(&path).expect_err("unknown").to_string();
    assert!(e.contains("bogus_key"), "{e}");
    let cfg = NodeConfig::default();
    let e = cfg.validate().expect_err("no tokens").to_string();
    assert!(e.contains("auth.tokens"), "{e}");
    let cfg = NodeConfig {
        dev: true,
        log_sync_ms: 3_600_000,
        ..NodeConfig::default()
    };
    let e = cfg
        .validate()
        .expect_err("an hour between syncs")
        .to_string();
    assert!(e.contains("log_sync_ms"), "{e}");
}

#[test]
fn rule_errors_name_the_field() {
    let e = RuleSpec::from_json(&json!({"pattern": {"source": ["x"]}, "targets": [{"id": "a b", "type": "http", "endpoint": "http://x"}]}))
        .expect_err("bad id");
    assert_eq!(e.field, "targets[0].id");
    let e =
        RuleSpec::from_json(&json!({"pattern": "nope", "targets": []})).expect_err("bad pattern");
    assert!(e.field.starts_with("pattern"), "{e}");
}
