//! Transforms in both vocabularies.

use serde_json::{Value, json};
use strait_routing::transform::{Transform, TransformContext, TransformError, TransformOutput};

const CTX: TransformContext<'static> = TransformContext {
    rule_name: "orders-rule",
    rule_id: "orders/orders-rule",
    ingestion_time: "2026-01-02T03:04:05Z",
};

fn ce() -> Value {
    json!({
        "specversion": "1.0",
        "id": "e-1",
        "source": "shop",
        "type": "order.created",
        "time": "2026-01-02T03:04:00Z",
        "data": {
            "name": "Ann \"the\" Buyer",
            "count": 3,
            "instance-id": "i-9",
            "items": [{"sku": "A"}, {"sku": "B"}],
            "ok": true
        }
    })
}

fn aws_event() -> Value {
    json!({
        "version": "0",
        "id": "7bf73129",
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": "123456789012",
        "time": "2015-11-11T21:29:54Z",
        "region": "us-east-1",
        "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-abcd1111"],
        "detail": {"instance-id": "i-0123456789", "state": "RUNNING"}
    })
}

fn parse(t: Value) -> Transform {
    Transform::parse(&t).unwrap_or_else(|e| panic!("transform {t} should parse: {e}"))
}

fn apply(t: Value, event: &Value) -> TransformOutput {
    parse(t).apply(event, &CTX).expect("applies")
}

fn invalid(t: Value) -> (String, String) {
    match Transform::parse(&t) {
        Ok(x) => panic!("transform {t} should be rejected, got {x:?}"),
        Err(TransformError::Invalid { field, message }) => (field, message),
        Err(other) => panic!("unexpected error {other}"),
    }
}

// ---- Alibaba -----------------------------------------------------------------------

#[test]
fn alibaba_original() {
    assert_eq!(
        apply(json!({"form": "ORIGINAL"}), &ce()),
        TransformOutput::Original
    );
    assert_eq!(
        apply(json!({"Form": "ORIGINAL"}), &ce()),
        TransformOutput::Original
    );
    assert_eq!(TransformOutput::Original.content_type(), None);
}

#[test]
fn alibaba_jsonpath() {
    let out = apply(json!({"form": "JSONPATH", "value": "$.data.count"}), &ce());
    assert_eq!(out, TransformOutput::Json(json!(3)));
    assert_eq!(out.content_type(), Some("application/json"));
    // a string value is JSON too
    assert_eq!(
        apply(json!({"form": "JSONPATH", "value": "$.data.name"}), &ce()),
        TransformOutput::Json(json!("Ann \"the\" Buyer"))
    );
    assert_eq!(
        apply(json!({"Form": "JSONPATH", "Value": "$.data"}), &ce()),
        TransformOutput::Json(ce()["data"].clone())
    );
    // missing -> null
    assert_eq!(
        apply(json!({"form": "JSONPATH", "value": "$.data.nope"}), &ce()),
        TransformOutput::Json(Value::Null)
    );
    // non-singular paths give arrays
    assert_eq!(
        apply(
            json!({"form": "JSONPATH", "value": "$.data.items[*].sku"}),
            &ce()
        ),
        TransformOutput::Json(json!(["A", "B"]))
    );
    // AWS dashed names and aliases
    assert_eq!(
        apply(
            json!({"form": "JSONPATH", "value": "$.detail.instance-id"}),
            &ce()
        ),
        TransformOutput::Json(json!("i-9"))
    );
}

#[test]
fn alibaba_constant() {
    let out = apply(json!({"form": "CONSTANT", "value": "hello"}), &ce());
    assert_eq!(out, TransformOutput::Text("hello".to_string()));
    assert_eq!(out.content_type(), Some("text/plain"));
    assert_eq!(
        apply(json!({"form": "CONSTANT", "value": {"a": 1}}), &ce()),
        TransformOutput::Json(json!({"a": 1}))
    );
    assert_eq!(
        apply(json!({"form": "CONSTANT", "value": 42}), &ce()),
        TransformOutput::Json(json!(42))
    );
}

#[test]
fn alibaba_template_text() {
    let t = json!({
        "form": "TEMPLATE",
        "value": {"name": "$.data.name", "n": "$.data.count"},
        "template": "Hi ${name}, you ordered ${n} items"
    });
    assert_eq!(
        apply(t, &ce()),
        TransformOutput::Text("Hi Ann \"the\" Buyer, you ordered 3 items".to_string())
    );
}

#[test]
fn alibaba_template_json_and_value_as_string() {
    let t = json!({
        "Form": "TEMPLATE",
        "Value": "{\"name\": \"$.data.name\", \"n\": \"$.data.count\", \"ok\": \"$.data.ok\"}",
        "Template": "{\"customer\": \"${name}\", \"count\": ${n}, \"ok\": ${ok}}"
    });
    assert_eq!(
        apply(t, &ce()),
        TransformOutput::Json(json!({"customer": "Ann \"the\" Buyer", "count": 3, "ok": true}))
    );
}

#[test]
fn alibaba_template_missing_is_null() {
    let t = json!({
        "form": "TEMPLATE",
        "value": {"x": "$.data.nope"},
        "template": "{\"x\": ${x}}"
    });
    assert_eq!(apply(t, &ce()), TransformOutput::Json(json!({"x": null})));
    let t = json!({"form": "TEMPLATE", "value": {"x": "$.data.nope"}, "template": "x=${x}"});
    assert_eq!(apply(t, &ce()), TransformOutput::Text("x=null".to_string()));
}

#[test]
fn alibaba_template_raw_strings_outside_quotes() {
    // Alibaba puts strings in raw: a number-like string becomes a number
    let ev = json!({"data": {"s": "12"}});
    let t = json!({"form": "TEMPLATE", "value": {"s": "$.data.s"}, "template": "${s}"});
    assert_eq!(apply(t, &ev), TransformOutput::Json(json!(12)));
    let t = json!({"form": "TEMPLATE", "value": {"s": "$.data.s"}, "template": "{\"v\": ${s}}"});
    assert_eq!(apply(t, &ev), TransformOutput::Json(json!({"v": 12})));
}

#[test]
fn alibaba_errors() {
    let (f, m) = invalid(json!({"form": "JSONPATH"}));
    assert_eq!(f, "value");
    assert!(m.contains("needs `value`"), "{m}");
    let (f, m) = invalid(json!({"form": "FOO"}));
    assert_eq!(f, "form");
    assert!(m.contains("unknown form \"FOO\""), "{m}");
    let (f, _) = invalid(json!({"form": 1}));
    assert_eq!(f, "form");
    let (f, m) = invalid(json!({"form": "JSONPATH", "value": "data.x"}));
    assert_eq!(f, "value");
    assert!(m.contains("must start with `$`"), "{m}");
    let (f, m) = invalid(json!({"form": "JSONPATH", "value": "$.a[?"}));
    assert_eq!(f, "value");
    assert!(m.contains("invalid JSONPath"), "{m}");
    let (f, m) = invalid(json!({"form": "TEMPLATE", "value": {"a": "$.a"}}));
    assert_eq!(f, "template");
    assert!(m.contains("missing"), "{m}");
    let (f, m) = invalid(json!({"form": "TEMPLATE", "value": {"a": "$.a"}, "template": "${b}"}));
    assert_eq!(f, "template");
    assert!(m.contains("no variable \"b\""), "{m}");
    let (f, _) = invalid(json!({"form": "TEMPLATE", "value": "not json", "template": "x"}));
    assert_eq!(f, "value");
    let (f, m) = invalid(json!({"form": "TEMPLATE", "value": {"a": 5}, "template": "${a}"}));
    assert_eq!(f, "value.a");
    assert!(m.contains("JSONPath string"), "{m}");
    let (f, _) = invalid(json!({"form": "TEMPLATE", "value": {"a b": "$.a"}, "template": "x"}));
    assert_eq!(f, "value.a b");
    let (f, m) = invalid(json!({"form": "CONSTANT", "value": "x", "template": "y"}));
    assert_eq!(f, "template");
    assert!(m.contains("takes no template"), "{m}");
    let (f, m) = invalid(json!({"value": "$.data"}));
    assert_eq!(f, "form");
    assert!(m.contains("missing"), "{m}");
}

// ---- AWS -----------------------------------------------------------------------------

#[test]
fn aws_input_constant() {
    assert_eq!(
        apply(json!({"input": "{\"a\": [1, 2]}"}), &ce()),
        TransformOutput::Json(json!({"a": [1, 2]}))
    );
    assert_eq!(
        apply(json!({"Input": "\"just a string\""}), &ce()),
        TransformOutput::Json(json!("just a string"))
    );
    // already-parsed JSON is used as it is
    assert_eq!(
        apply(json!({"input": {"k": "v"}}), &ce()),
        TransformOutput::Json(json!({"k": "v"}))
    );
    let (f, m) = invalid(json!({"Input": "not json"}));
    assert_eq!(f, "Input");
    assert!(m.contains("valid JSON"), "{m}");
}

#[test]
fn aws_input_path() {
    assert_eq!(
        apply(json!({"inputPath": "$.detail"}), &aws_event()),
        TransformOutput::Json(aws_event()["detail"].clone())
    );
    // `$.detail` reads `data` on a CloudEvent, `$.data` reads `detail` on an AWS event
    assert_eq!(
        apply(json!({"InputPath": "$.detail"}), &ce()),
        TransformOutput::Json(ce()["data"].clone())
    );
    assert_eq!(
        apply(json!({"InputPath": "$.data.state"}), &aws_event()),
        TransformOutput::Json(json!("RUNNING"))
    );
    assert_eq!(
        apply(json!({"inputPath": "$.detail-type"}), &ce()),
        TransformOutput::Json(json!("order.created"))
    );
    assert_eq!(
        apply(json!({"inputPath": "$.type"}), &aws_event()),
        TransformOutput::Json(json!("EC2 Instance State-change Notification"))
    );
    // missing -> null
    assert_eq!(
        apply(json!({"inputPath": "$.detail.nope"}), &aws_event()),
        TransformOutput::Json(Value::Null)
    );
    let (f, _) = invalid(json!({"inputPath": 5}));
    assert_eq!(f, "inputPath");
}

fn transformer(paths: Value, template: &str) -> Value {
    json!({"inputTransformer": {"inputPathsMap": paths, "inputTemplate": template}})
}

#[test]
fn aws_documented_examples() {
    let paths = json!({
        "timestamp": "$.time",
        "instance": "$.detail.instance-id",
        "state": "$.detail.state"
    });
    let ev = aws_event();
    // Simple string
    assert_eq!(
        apply(
            transformer(paths.clone(), "\"instance <instance> is in <state>\""),
            &ev
        ),
        TransformOutput::Json(json!("instance i-0123456789 is in RUNNING"))
    );
    // String with escaped quotes
    assert_eq!(
        apply(
            transformer(
                paths.clone(),
                "\"instance \\\"<instance>\\\" is in <state>\""
            ),
            &ev
        ),
        TransformOutput::Json(json!("instance \"i-0123456789\" is in RUNNING"))
    );
    // Simple JSON
    assert_eq!(
        apply(
            transformer(
                paths.clone(),
                "{\n  \"instance\" : <instance>,\n  \"state\": <state>\n}"
            ),
            &ev
        ),
        TransformOutput::Json(json!({"instance": "i-0123456789", "state": "RUNNING"}))
    );
    // JSON with strings and variables
    assert_eq!(
        apply(
            transformer(
                paths.clone(),
                "{\"instance\" : <instance>, \"state\": \"<state>\", \"instanceStatus\": \"instance \\\"<instance>\\\" is in <state>\"}"
            ),
            &ev
        ),
        TransformOutput::Json(json!({
            "instance": "i-0123456789",
            "state": "RUNNING",
            "instanceStatus": "instance \"i-0123456789\" is in RUNNING"
        }))
    );
    // JSON with a mix of variables and static information
    assert_eq!(
        apply(
            transformer(
                paths.clone(),
                "{\"instance\" : <instance>, \"state\": [ 9, <state>, true ], \"Transformed\" : \"Yes\"}"
            ),
            &ev
        ),
        TransformOutput::Json(json!({
            "instance": "i-0123456789",
            "state": [9, "RUNNING", true],
            "Transformed": "Yes"
        }))
    );
    // Reserved variables in a string
    assert_eq!(
        apply(
            transformer(paths, "\"<aws.events.rule-name> triggered\""),
            &ev
        ),
        TransformOutput::Json(json!("orders-rule triggered"))
    );
}

#[test]
fn aws_reserved_variables() {
    let ev = aws_event();
    let out = apply(
        transformer(
            json!({"state": "$.detail.state"}),
            "{\"ruleArn\": <aws.events.rule-arn>, \"ruleName\": <aws.events.rule-name>, \"at\": <aws.events.event.ingestion-time>, \"original\": <aws.events.event>, \"full\": <aws.events.event.json>, \"s\": <state>}",
        ),
        &ev,
    );
    assert_eq!(
        out,
        TransformOutput::Json(json!({
            "ruleArn": "orders/orders-rule",
            "ruleName": "orders-rule",
            "at": "2026-01-02T03:04:05Z",
            "original": ev.clone(),
            "full": ev.clone(),
            "s": "RUNNING"
        }))
    );
    // the whole event inside a string is escaped JSON text
    let out = apply(
        json!({"inputTransformer": {"inputTemplate": "{\"raw\": \"<aws.events.event.json>\"}"}}),
        &ev,
    );
    assert_eq!(out, TransformOutput::Json(json!({"raw": ev.to_string()})));
}

#[test]
fn aws_plain_text_template() {
    let out = apply(
        transformer(
            json!({"instance": "$.detail.instance-id", "state": "$.detail.state"}),
            "instance <instance> is in <state>",
        ),
        &aws_event(),
    );
    assert_eq!(
        out,
        TransformOutput::Text("instance i-0123456789 is in RUNNING".to_string())
    );
    assert_eq!(out.content_type(), Some("text/plain"));
    // non-string values in text are rendered as JSON
    let out = apply(
        transformer(
            json!({"n": "$.data.count", "items": "$.data.items"}),
            "n=<n> items=<items>",
        ),
        &ce(),
    );
    assert_eq!(
        out,
        TransformOutput::Text("n=3 items=[{\"sku\":\"A\"},{\"sku\":\"B\"}]".to_string())
    );
}

#[test]
fn aws_missing_variables() {
    let paths = json!({"x": "$.detail.nope", "s": "$.detail.state"});
    // outside quotes -> null, inside quotes -> empty string
    assert_eq!(
        apply(
            transformer(paths.clone(), "{\"a\": <x>, \"b\": \"[<x>]\", \"c\": <s>}"),
            &aws_event()
        ),
        TransformOutput::Json(json!({"a": null, "b": "[]", "c": "RUNNING"}))
    );
    // text -> empty
    assert_eq!(
        apply(transformer(paths, "x=<x>;"), &aws_event()),
        TransformOutput::Text("x=;".to_string())
    );
}

#[test]
fn aws_values_are_escaped_inside_strings() {
    let out = apply(
        transformer(
            json!({"name": "$.data.name"}),
            "{\"greeting\": \"Hello <name>!\"}",
        ),
        &ce(),
    );
    assert_eq!(
        out,
        TransformOutput::Json(json!({"greeting": "Hello Ann \"the\" Buyer!"}))
    );
    // objects inside strings are their JSON text
    let out = apply(
        transformer(json!({"items": "$.data.items"}), "{\"s\": \"<items>\"}"),
        &ce(),
    );
    assert_eq!(
        out,
        TransformOutput::Json(json!({"s": "[{\"sku\":\"A\"},{\"sku\":\"B\"}]"}))
    );
}

#[test]
fn aws_pascal_case_and_no_paths_map() {
    let t = json!({"InputTransformer": {
        "InputPathsMap": {"id": "$.id"},
        "InputTemplate": "{\"id\": <id>}"
    }});
    assert_eq!(
        apply(t, &aws_event()),
        TransformOutput::Json(json!({"id": "7bf73129"}))
    );
    let t = json!({"inputTransformer": {"inputTemplate": "\"fixed\""}});
    assert_eq!(
        apply(t, &aws_event()),
        TransformOutput::Json(json!("fixed"))
    );
    // unknown placeholders are left alone
    let t = json!({"inputTransformer": {"inputTemplate": "<p>hi</p>"}});
    assert_eq!(
        apply(t, &aws_event()),
        TransformOutput::Text("<p>hi</p>".to_string())
    );
}

#[test]
fn aws_errors() {
    let (f, m) = invalid(json!({"inputTransformer": {"inputPathsMap": {}}}));
    assert_eq!(f, "inputTransformer.inputTemplate");
    assert!(m.contains("missing"), "{m}");
    let (f, m) = invalid(transformer(json!({"aws.events.rule-name": "$.x"}), "x"));
    assert_eq!(f, "inputTransformer.inputPathsMap.aws.events.rule-name");
    assert!(m.contains("reserved"), "{m}");
    let (f, _) = invalid(transformer(json!({"a": "nope"}), "x"));
    assert_eq!(f, "inputTransformer.inputPathsMap.a");
    let (f, _) = invalid(json!({"inputTransformer": {"inputPathsMap": [], "inputTemplate": "x"}}));
    assert_eq!(f, "inputTransformer.inputPathsMap");
    let (f, _) = invalid(json!({"inputTransformer": {"inputTemplate": 5}}));
    assert_eq!(f, "inputTransformer.inputTemplate");
    let (f, m) = invalid(json!({"inputTransformer": {"inputTemplate": "x", "extra": 1}}));
    assert_eq!(f, "inputTransformer.extra");
    assert!(m.contains("unknown field"), "{m}");
    let (f, _) = invalid(json!({"inputTransformer": "x"}));
    assert_eq!(f, "inputTransformer");
    let many: serde_json::Map<String, Value> =
        (0..101).map(|i| (format!("v{i}"), json!("$.id"))).collect();
    let (f, m) = invalid(transformer(Value::Object(many), "x"));
    assert_eq!(f, "inputTransformer.inputPathsMap");
    assert!(m.contains("at most 100"), "{m}");
}

#[test]
fn vocabulary_errors() {
    let (f, m) = invalid(json!({}));
    assert_eq!(f, "transform");
    assert!(m.contains("empty"), "{m}");
    let (f, _) = invalid(json!("ORIGINAL"));
    assert_eq!(f, "transform");
    let (f, m) = invalid(json!({"form": "ORIGINAL", "inputPath": "$.data"}));
    assert_eq!(f, "inputPath");
    assert!(m.contains("either the Alibaba"), "{m}");
    let (f, m) = invalid(json!({"input": "{}", "inputPath": "$.data"}));
    assert_eq!(f, "inputPath");
    assert!(m.contains("only one of"), "{m}");
    let (f, m) = invalid(json!({"form": "ORIGINAL", "Form": "ORIGINAL"}));
    assert_eq!(f, "Form");
    assert!(m.contains("twice"), "{m}");
    let (f, m) = invalid(json!({"form": "ORIGINAL", "bogus": 1}));
    assert_eq!(f, "bogus");
    assert!(m.contains("unknown field"), "{m}");
    // Display
    let e = Transform::parse(&json!({"inputPath": "nope"})).expect_err("invalid");
    assert!(e.to_string().starts_with("inputPath: "), "{e}");
    assert_eq!(e.code(), "InvalidTransform");
}

#[test]
fn output_to_value() {
    let ev = ce();
    assert_eq!(TransformOutput::Original.to_value(&ev), ev);
    assert_eq!(TransformOutput::Json(json!(1)).to_value(&ev), json!(1));
    assert_eq!(TransformOutput::Text("t".into()).to_value(&ev), json!("t"));
}
