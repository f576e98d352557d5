//! Pattern validation: every rejection names the path and the reason.

use serde_json::{Value, json};
use strait_routing::pattern::{
    MAX_PATTERN_DEPTH, MAX_PATTERN_ELEMENTS, MAX_PATTERN_WILDCARDS, Pattern, PatternError,
};

fn err(p: Value) -> PatternError {
    match Pattern::parse(&p) {
        Ok(_) => panic!("pattern {p} should be rejected"),
        Err(e) => e,
    }
}

/// Asserts the error path and that the message contains `needle`.
fn check(p: Value, path: &str, needle: &str) {
    let e = err(p.clone());
    assert_eq!(e.path, path, "path for {p}: {e}");
    assert!(
        e.message.contains(needle),
        "message for {p} should contain {needle:?}, got {:?}",
        e.message
    );
    assert_eq!(e.to_string(), format!("{}: {}", e.path, e.message));
}

#[test]
fn brief_example_message_is_exact() {
    let e = err(json!({"data": {"count": [{"numeric": [">", "five"]}]}}));
    assert_eq!(
        e.to_string(),
        "data.count: numeric expects an operator followed by a number, got \"five\""
    );
    let e = err(json!({"data": {"x": [{"prefx": "a"}]}}));
    assert_eq!(e.to_string(), "data.x: unknown operator \"prefx\"");
}

#[test]
fn root_must_be_object() {
    for p in [
        json!(null),
        json!([]),
        json!("x"),
        json!(1),
        json!([{"a": [1]}]),
    ] {
        check(p, "$", "a pattern must be a JSON object");
    }
}

#[test]
fn leaf_shape() {
    check(json!({"source": []}), "source", "empty array");
    check(
        json!({"source": "aws.ec2"}),
        "source",
        "expected an array of matchers or a nested object, got \"aws.ec2\"",
    );
    check(json!({"data": {"n": 5}}), "data.n", "got 5");
    check(json!({"data": {"n": null}}), "data.n", "got null");
    check(json!({"data": {}}), "data", "empty object");
    check(json!({"data": {"x": [[1]]}}), "data.x", "nested arrays");
    check(
        json!({"data": {"x": [{}]}}),
        "data.x",
        "empty object is not a matcher",
    );
    check(
        json!({"data": {"x": [{"prefix": "a", "suffix": "b"}]}}),
        "data.x",
        "exactly one operator, got 2",
    );
    // an object in a leaf that is not an operator
    check(
        json!({"data": {"x": [{"state": ["a"]}]}}),
        "data.x",
        "unknown operator \"state\"",
    );
}

#[test]
fn operand_types() {
    check(
        json!({"a": [{"prefix": 5}]}),
        "a",
        "prefix expects a string or {\"equals-ignore-case\": string}, got 5",
    );
    check(
        json!({"a": [{"prefix": {"equals-ignore-case": 5}}]}),
        "a",
        "prefix expects",
    );
    check(
        json!({"a": [{"prefix": {"foo": "x"}}]}),
        "a",
        "prefix expects",
    );
    check(json!({"a": [{"suffix": ["x"]}]}), "a", "suffix expects");
    check(
        json!({"a": [{"equals-ignore-case": ["x"]}]}),
        "a",
        "equals-ignore-case expects a string",
    );
    check(
        json!({"a": [{"wildcard": 1}]}),
        "a",
        "wildcard expects a string",
    );
    check(
        json!({"a": [{"exists": "true"}]}),
        "a",
        "exists expects true or false, got \"true\"",
    );
    check(json!({"a": [{"cidr": 10}]}), "a", "cidr expects a string");
    check(
        json!({"a": [{"contains": ["x"]}]}),
        "a",
        "contains expects a string, number, boolean or null",
    );
}

#[test]
fn anything_but_validation() {
    check(
        json!({"a": [{"anything-but": []}]}),
        "a",
        "must not be empty",
    );
    check(
        json!({"a": [{"anything-but": ["x", 1]}]}),
        "a",
        "only strings or only numbers",
    );
    check(
        json!({"a": [{"anything-but": [null]}]}),
        "a",
        "only strings or only numbers",
    );
    check(
        json!({"a": [{"anything-but": true}]}),
        "a",
        "anything-but expects",
    );
    check(
        json!({"a": [{"anything-but": null}]}),
        "a",
        "anything-but expects",
    );
    check(
        json!({"a": [{"anything-but": {"numeric": [">", 1]}}]}),
        "a",
        "anything-but supports prefix, suffix, equals-ignore-case and wildcard, got \"numeric\"",
    );
    check(
        json!({"a": [{"anything-but": {"prefix": 1}}]}),
        "a",
        "anything-but prefix expects a string or a non-empty list of strings",
    );
    check(
        json!({"a": [{"anything-but": {"prefix": []}}]}),
        "a",
        "non-empty list",
    );
    check(
        json!({"a": [{"anything-but": {"prefix": "a", "suffix": "b"}}]}),
        "a",
        "anything-but expects",
    );
    check(
        json!({"a": [{"anything-but": {"wildcard": "a**"}}]}),
        "a",
        "consecutive",
    );
}

#[test]
fn numeric_validation() {
    check(
        json!({"data": {"c": [{"numeric": 5}]}}),
        "data.c",
        "numeric expects an array",
    );
    check(
        json!({"data": {"c": [{"numeric": []}]}}),
        "data.c",
        "numeric expects an array",
    );
    check(
        json!({"data": {"c": [{"numeric": [">"]}]}}),
        "data.c",
        "operator followed by a number, got nothing",
    );
    check(
        json!({"data": {"c": [{"numeric": [5, ">"]}]}}),
        "data.c",
        "numeric expects an operator",
    );
    check(
        json!({"data": {"c": [{"numeric": ["=>", 5]}]}}),
        "data.c",
        "unknown comparison \"=>\"",
    );
    check(
        json!({"data": {"c": [{"numeric": [">", 1, ">", 2]}]}}),
        "data.c",
        "two lower bounds",
    );
    check(
        json!({"data": {"c": [{"numeric": ["<", 1, "<=", 2]}]}}),
        "data.c",
        "two upper bounds",
    );
    check(
        json!({"data": {"c": [{"numeric": [">", 10, "<", 5]}]}}),
        "data.c",
        "range is empty",
    );
    check(
        json!({"data": {"c": [{"numeric": [">", 5, "<=", 5]}]}}),
        "data.c",
        "range is empty",
    );
    check(
        json!({"data": {"c": [{"numeric": ["=", 5, "<", 6]}]}}),
        "data.c",
        "cannot be combined",
    );
    check(
        json!({"data": {"c": [{"numeric": [">", 1, "<", 5, ">", 0]}]}}),
        "data.c",
        "at most two comparisons",
    );
    check(
        json!({"data": {"c": [{"numeric": ["<", null]}]}}),
        "data.c",
        "got null",
    );
    // a point range written with both inclusive bounds is fine
    assert!(Pattern::parse(&json!({"c": [{"numeric": [">=", 5, "<=", 5]}]})).is_ok());
}

#[test]
fn cidr_validation() {
    check(
        json!({"data": {"ip": [{"cidr": "10.0.0.0/33"}]}}),
        "data.ip",
        "cidr expects an IPv4 or IPv6 address or CIDR block",
    );
    check(
        json!({"data": {"ip": [{"cidr": "10.0.0/24"}]}}),
        "data.ip",
        "\"10.0.0/24\"",
    );
    check(
        json!({"data": {"ip": [{"cidr": "2001:db8::/129"}]}}),
        "data.ip",
        "cidr expects",
    );
    check(
        json!({"data": {"ip": [{"cidr": ""}]}}),
        "data.ip",
        "cidr expects",
    );
}

#[test]
fn wildcard_validation() {
    check(
        json!({"data": {"f": [{"wildcard": "a**b"}]}}),
        "data.f",
        "consecutive `*`",
    );
    check(
        json!({"data": {"f": [{"wildcard": "a\\b"}]}}),
        "data.f",
        "only before `*` or `\\`",
    );
    check(
        json!({"data": {"f": [{"wildcard": "ab\\"}]}}),
        "data.f",
        "only before",
    );
    // escaped star next to a star is fine
    assert!(Pattern::parse(&json!({"f": [{"wildcard": "a\\**"}]})).is_ok());
}

#[test]
fn or_validation() {
    check(
        json!({"$or": {"a": [1]}}),
        "$or",
        "$or expects an array of pattern objects",
    );
    check(json!({"$or": []}), "$or", "at least two pattern objects");
    // Event Ruler and AWS refuse a single alternative too.
    check(
        json!({"$or": [{"a": [1]}]}),
        "$or",
        "$or needs at least two pattern objects (alternatives), got 1",
    );
    check(
        json!({"data": {"$or": [{"a": [1]}]}}),
        "data.$or",
        "at least two pattern objects",
    );
    check(
        json!({"$or": [{"a": [1]}, "b"]}),
        "$or[1]",
        "$or branches must be pattern objects",
    );
    check(json!({"$or": [{"a": [1]}, {}]}), "$or[1]", "empty object");
    check(
        json!({"data": {"$or": [{"a": [1]}, {"b": [{"prefx": "x"}]}]}}),
        "data.$or[1].b",
        "unknown operator \"prefx\"",
    );
}

#[test]
fn paths_keep_the_written_names() {
    check(
        json!({"detail": {"count": [{"numeric": [">", "x"]}]}}),
        "detail.count",
        "numeric",
    );
    check(
        json!({"detail-type": [{"suffix": 1}]}),
        "detail-type",
        "suffix",
    );
    check(
        json!({"a": {"b": {"c": {"d": [{"exists": 1}]}}}}),
        "a.b.c.d",
        "exists",
    );
}

#[test]
fn complexity_guards() {
    // depth
    let mut deep = json!({"x": [1]});
    for _ in 0..MAX_PATTERN_DEPTH {
        deep = json!({"n": deep});
    }
    let e = err(deep);
    assert!(e.message.contains("deeper than"), "{e}");
    let mut ok = json!({"x": [1]});
    for _ in 0..MAX_PATTERN_DEPTH - 1 {
        ok = json!({"n": ok});
    }
    assert!(Pattern::parse(&ok).is_ok());

    // number of elements
    let many: Vec<Value> = (0..MAX_PATTERN_ELEMENTS).map(|i| json!(i)).collect();
    let e = err(json!({"resources": many}));
    assert_eq!(e.path, "resources");
    assert!(e.message.contains("pattern is too large"), "{e}");

    // bytes
    let big = "x".repeat(70 * 1024);
    let e = err(json!({"a": [big]}));
    assert!(e.message.contains("bytes"), "{e}");

    // wildcards, counted over the whole pattern
    let stars = "*a".repeat(MAX_PATTERN_WILDCARDS / 2);
    let e = err(json!({"a": [{"wildcard": stars}], "b": [{"wildcard": format!("{stars}*")}]}));
    assert_eq!(e.path, "b");
    assert!(e.message.contains("too many wildcards"), "{e}");
    let exactly = "a*".repeat(MAX_PATTERN_WILDCARDS);
    assert!(Pattern::parse(&json!({"a": [{"wildcard": exactly}]})).is_ok());
}

#[test]
fn every_error_is_displayed_with_path() {
    let bad = [
        json!({"a": 1}),
        json!({"a": [{"numeric": [">", "x"]}]}),
        json!({"x": {"y": [{"cidr": "nope"}]}}),
        json!(5),
    ];
    for p in bad {
        let e = err(p);
        assert!(!e.path.is_empty());
        assert!(!e.message.is_empty());
    }
}
