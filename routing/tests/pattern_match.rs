//! Pattern matching, one group of tests per operator, positive and negative.

use serde_json::{Value, json};
use strait_routing::pattern::Pattern;

fn pattern(p: Value) -> Pattern {
    Pattern::parse(&p).unwrap_or_else(|e| panic!("pattern {p} should parse: {e}"))
}

fn matches(p: Value, event: Value) -> bool {
    pattern(p).matches(&event)
}

/// A CloudEvent with `data`.
fn ce(data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": "e-1",
        "source": "aws.ec2",
        "type": "EC2 Instance State-change Notification",
        "subject": "i-123",
        "time": "2017-10-02T16:24:49Z",
        "region": "us-east-1",
        "data": data
    })
}

/// The same event in AWS shape.
fn aws(detail: Value) -> Value {
    json!({
        "version": "0",
        "id": "e-1",
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": "123456789012",
        "time": "2017-10-02T16:24:49Z",
        "region": "us-east-1",
        "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-123"],
        "detail": detail
    })
}

// ---- exact values ---------------------------------------------------------

#[test]
fn exact_string() {
    assert!(matches(json!({"source": ["aws.ec2"]}), ce(json!({}))));
    assert!(matches(json!({"source": ["x", "aws.ec2"]}), ce(json!({}))));
    assert!(!matches(json!({"source": ["aws.EC2"]}), ce(json!({}))));
    assert!(!matches(json!({"source": ["aws"]}), ce(json!({}))));
    assert!(!matches(json!({"nosuch": ["aws.ec2"]}), ce(json!({}))));
}

#[test]
fn exact_number_is_numeric() {
    assert!(matches(json!({"data": {"n": [5]}}), ce(json!({"n": 5}))));
    assert!(matches(json!({"data": {"n": [5.0]}}), ce(json!({"n": 5}))));
    assert!(matches(json!({"data": {"n": [5]}}), ce(json!({"n": 5.0}))));
    assert!(matches(
        json!({"data": {"n": [300]}}),
        ce(json!({"n": 3.0e2}))
    ));
    assert!(matches(json!({"data": {"n": [0]}}), ce(json!({"n": -0.0}))));
    assert!(!matches(json!({"data": {"n": [5]}}), ce(json!({"n": 5.5}))));
    // strings and numbers never equal each other
    assert!(!matches(json!({"data": {"n": [5]}}), ce(json!({"n": "5"}))));
    assert!(!matches(json!({"data": {"n": ["5"]}}), ce(json!({"n": 5}))));
}

#[test]
fn exact_boolean() {
    assert!(matches(
        json!({"data": {"b": [true]}}),
        ce(json!({"b": true}))
    ));
    assert!(!matches(
        json!({"data": {"b": [true]}}),
        ce(json!({"b": false}))
    ));
    assert!(!matches(
        json!({"data": {"b": [true]}}),
        ce(json!({"b": "true"}))
    ));
}

#[test]
fn null_and_empty_string() {
    let ev = ce(json!({"eventVersion": "", "responseElements": null}));
    assert!(matches(json!({"data": {"eventVersion": [""]}}), ev.clone()));
    assert!(matches(
        json!({"data": {"responseElements": [null]}}),
        ev.clone()
    ));
    // null and "" are not interchangeable
    assert!(!matches(
        json!({"data": {"eventVersion": [null]}}),
        ev.clone()
    ));
    assert!(!matches(
        json!({"data": {"responseElements": [""]}}),
        ev.clone()
    ));
    // an absent field is not null
    assert!(!matches(json!({"data": {"absent": [null]}}), ev));
}

// ---- prefix / suffix / equals-ignore-case --------------------------------------

#[test]
fn prefix() {
    let ev = ce(json!({}));
    assert!(matches(
        json!({"time": [{"prefix": "2017-10-02"}]}),
        ev.clone()
    ));
    assert!(matches(json!({"time": [{"prefix": ""}]}), ev.clone()));
    assert!(!matches(json!({"time": [{"prefix": "2018"}]}), ev.clone()));
    assert!(!matches(
        json!({"time": [{"prefix": "2017-10-02T16:24:49Zx"}]}),
        ev
    ));
    // strings only
    assert!(!matches(
        json!({"data": {"n": [{"prefix": "1"}]}}),
        ce(json!({"n": 12}))
    ));
}

#[test]
fn prefix_ignore_case() {
    let p = json!({"data": {"service": [{"prefix": {"equals-ignore-case": "EventB"}}]}});
    assert!(matches(p.clone(), ce(json!({"service": "eventbridge"}))));
    assert!(matches(p.clone(), ce(json!({"service": "EVENTBRIDGE"}))));
    assert!(!matches(p.clone(), ce(json!({"service": "event-bridge"}))));
    assert!(!matches(p, ce(json!({"service": 5}))));
}

#[test]
fn suffix() {
    let p = json!({"data": {"FileName": [{"suffix": ".png"}]}});
    assert!(matches(p.clone(), ce(json!({"FileName": "a.png"}))));
    assert!(!matches(p.clone(), ce(json!({"FileName": "a.PNG"}))));
    assert!(!matches(p, ce(json!({"FileName": "a.png.jpg"}))));
}

#[test]
fn suffix_ignore_case() {
    let p = json!({"data": {"FileName": [{"suffix": {"equals-ignore-case": ".png"}}]}});
    assert!(matches(p.clone(), ce(json!({"FileName": "a.PNG"}))));
    assert!(matches(p.clone(), ce(json!({"FileName": "a.pNg"}))));
    assert!(!matches(p, ce(json!({"FileName": "a.jpg"}))));
}

#[test]
fn equals_ignore_case() {
    let p = json!({"data": {"name": [{"equals-ignore-case": "alice"}]}});
    assert!(matches(p.clone(), ce(json!({"name": "Alice"}))));
    assert!(matches(p.clone(), ce(json!({"name": "ALICE"}))));
    assert!(!matches(p.clone(), ce(json!({"name": "Alicia"}))));
    assert!(!matches(p, ce(json!({"name": null}))));
    // non-ASCII
    let p = json!({"data": {"city": [{"equals-ignore-case": "ZÜRICH"}]}});
    assert!(matches(p, ce(json!({"city": "zürich"}))));
}

// ---- wildcard -------------------------------------------------------------

#[test]
fn wildcard() {
    let p = json!({"data": {"path": [{"wildcard": "dir/*.png"}]}});
    assert!(matches(p.clone(), ce(json!({"path": "dir/a.png"}))));
    assert!(matches(p.clone(), ce(json!({"path": "dir/sub/a.png"}))));
    assert!(matches(p.clone(), ce(json!({"path": "dir/.png"}))));
    assert!(!matches(p.clone(), ce(json!({"path": "other/a.png"}))));
    assert!(!matches(p, ce(json!({"path": "dir/a.jpg"}))));
    let p = json!({"source": [{"wildcard": "Simple*Service"}]});
    assert!(matches(p.clone(), json!({"source": "SimpleQueueService"})));
    assert!(!matches(p, json!({"source": "SimpleQueueServices"})));
}

#[test]
fn wildcard_escapes() {
    let p = json!({"data": {"s": [{"wildcard": "a\\*b*"}]}});
    assert!(matches(p.clone(), ce(json!({"s": "a*bcd"}))));
    assert!(!matches(p, ce(json!({"s": "axbcd"}))));
    let p = json!({"data": {"s": [{"wildcard": "a\\\\*"}]}});
    assert!(matches(p.clone(), ce(json!({"s": "a\\zzz"}))));
    assert!(!matches(p, ce(json!({"s": "azzz"}))));
    // without stars it is an exact match
    let p = json!({"data": {"s": [{"wildcard": "abc"}]}});
    assert!(matches(p.clone(), ce(json!({"s": "abc"}))));
    assert!(!matches(p, ce(json!({"s": "abcd"}))));
}

// ---- anything-but -----------------------------------------------------------

#[test]
fn anything_but_string() {
    let p = json!({"data": {"state": [{"anything-but": "initializing"}]}});
    assert!(matches(p.clone(), ce(json!({"state": "running"}))));
    assert!(!matches(p.clone(), ce(json!({"state": "initializing"}))));
    // other types are "anything but" the string
    assert!(matches(p.clone(), ce(json!({"state": 5}))));
    // an absent field does not match
    assert!(!matches(p, ce(json!({}))));
}

#[test]
fn anything_but_number() {
    let p = json!({"data": {"x": [{"anything-but": 123}]}});
    assert!(matches(p.clone(), ce(json!({"x": 124}))));
    assert!(!matches(p.clone(), ce(json!({"x": 123.0}))));
    assert!(matches(p, ce(json!({"x": "123"}))));
}

#[test]
fn anything_but_lists() {
    let p = json!({"data": {"state": [{"anything-but": ["stopped", "overloaded"]}]}});
    assert!(matches(p.clone(), ce(json!({"state": "running"}))));
    assert!(!matches(p.clone(), ce(json!({"state": "stopped"}))));
    assert!(!matches(p, ce(json!({"state": "overloaded"}))));
    let p = json!({"data": {"x": [{"anything-but": [100, 200, 300]}]}});
    assert!(matches(p.clone(), ce(json!({"x": 301.8}))));
    assert!(!matches(p, ce(json!({"x": 200}))));
}

#[test]
fn anything_but_prefix_suffix() {
    let p = json!({"data": {"region": [{"anything-but": {"prefix": "us-"}}]}});
    assert!(matches(p.clone(), ce(json!({"region": "eu-west-1"}))));
    assert!(!matches(p.clone(), ce(json!({"region": "us-east-1"}))));
    let p2 = json!({"data": {"region": [{"anything-but": {"prefix": ["us-", "eu-"]}}]}});
    assert!(!matches(p2.clone(), ce(json!({"region": "eu-west-1"}))));
    assert!(matches(p2, ce(json!({"region": "ap-south-1"}))));
    let p = json!({"data": {"f": [{"anything-but": {"suffix": ".png"}}]}});
    assert!(matches(p.clone(), ce(json!({"f": "a.jpg"}))));
    assert!(!matches(p, ce(json!({"f": "a.png"}))));
}

#[test]
fn anything_but_ignore_case_and_wildcard() {
    let p = json!({"data": {"state": [{"anything-but": {"equals-ignore-case": "initializing"}}]}});
    assert!(!matches(p.clone(), ce(json!({"state": "INITIALIZING"}))));
    assert!(matches(p, ce(json!({"state": "running"}))));
    let p = json!({"data": {"state": [{"anything-but": {"equals-ignore-case": ["a", "B"]}}]}});
    assert!(!matches(p.clone(), ce(json!({"state": "b"}))));
    assert!(matches(p, ce(json!({"state": "c"}))));
    let p = json!({"data": {"path": [{"anything-but": {"wildcard": "*/lib/*"}}]}});
    assert!(!matches(p.clone(), ce(json!({"path": "/usr/lib/x"}))));
    assert!(matches(p, ce(json!({"path": "/usr/bin/x"}))));
    let p = json!({"data": {"path": [{"anything-but": {"wildcard": ["*.png", "*.jpg"]}}]}});
    assert!(!matches(p.clone(), ce(json!({"path": "a.jpg"}))));
    assert!(matches(p, ce(json!({"path": "a.gif"}))));
}

#[test]
fn anything_but_on_arrays_needs_one_other_element() {
    let p = json!({"data": {"tags": [{"anything-but": "a"}]}});
    assert!(matches(p.clone(), ce(json!({"tags": ["a", "b"]}))));
    assert!(!matches(p.clone(), ce(json!({"tags": ["a", "a"]}))));
    assert!(!matches(p, ce(json!({"tags": []}))));
}

// ---- numeric ------------------------------------------------------------------

#[test]
fn numeric_ranges() {
    let p = json!({"data": {"c": [{"numeric": [">", 0, "<=", 5]}]}});
    assert!(matches(p.clone(), ce(json!({"c": 5}))));
    assert!(matches(p.clone(), ce(json!({"c": 0.0001}))));
    assert!(!matches(p.clone(), ce(json!({"c": 0}))));
    assert!(!matches(p.clone(), ce(json!({"c": 5.000001}))));
    // numeric only matches JSON numbers
    assert!(!matches(p, ce(json!({"c": "3"}))));
    let p = json!({"data": {"d": [{"numeric": ["<", 10]}]}});
    assert!(matches(p.clone(), ce(json!({"d": -1e300}))));
    assert!(!matches(p, ce(json!({"d": 10}))));
    let p = json!({"data": {"d": [{"numeric": [">=", 10, "<", 20]}]}});
    assert!(matches(p.clone(), ce(json!({"d": 10}))));
    assert!(!matches(p, ce(json!({"d": 20}))));
    // the upper bound may come first
    let p = json!({"data": {"d": [{"numeric": ["<", 20, ">", 10]}]}});
    assert!(matches(p, ce(json!({"d": 15}))));
}

#[test]
fn numeric_equals() {
    let p = json!({"data": {"x": [{"numeric": ["=", 3.018e2]}]}});
    assert!(matches(p.clone(), ce(json!({"x": 301.8}))));
    assert!(!matches(p, ce(json!({"x": 301.9}))));
    // large and fractional values: IEEE-754 doubles
    let p = json!({"data": {"x": [{"numeric": [">", 1e12]}]}});
    assert!(matches(p, ce(json!({"x": 1_000_000_000_001_u64}))));
}

// ---- cidr ---------------------------------------------------------------------

#[test]
fn cidr_ipv4() {
    let p = json!({"data": {"ip": [{"cidr": "10.0.0.0/24"}]}});
    assert!(matches(p.clone(), ce(json!({"ip": "10.0.0.33"}))));
    assert!(matches(p.clone(), ce(json!({"ip": "10.0.0.255"}))));
    assert!(!matches(p.clone(), ce(json!({"ip": "10.0.1.1"}))));
    assert!(!matches(p.clone(), ce(json!({"ip": "not an ip"}))));
    assert!(!matches(p.clone(), ce(json!({"ip": 167772161}))));
    // IPv4-mapped IPv6 addresses count as their IPv4 address
    assert!(matches(p, ce(json!({"ip": "::ffff:10.0.0.7"}))));
}

#[test]
fn cidr_ipv6_and_plain_ips() {
    let p = json!({"data": {"ip": [{"cidr": "2001:db8::/32"}]}});
    assert!(matches(p.clone(), ce(json!({"ip": "2001:db8:1::1"}))));
    assert!(!matches(p.clone(), ce(json!({"ip": "2001:db9::1"}))));
    assert!(!matches(p, ce(json!({"ip": "10.0.0.1"}))));
    let p = json!({"data": {"ip": [{"cidr": "192.168.1.7"}]}});
    assert!(matches(p.clone(), ce(json!({"ip": "192.168.1.7"}))));
    assert!(!matches(p, ce(json!({"ip": "192.168.1.8"}))));
    let p = json!({"data": {"ip": [{"cidr": "::1"}]}});
    assert!(matches(p, ce(json!({"ip": "::1"}))));
    // host bits in the block are ignored
    let p = json!({"data": {"ip": [{"cidr": "10.0.0.77/24"}]}});
    assert!(matches(p, ce(json!({"ip": "10.0.0.1"}))));
}

// ---- exists -------------------------------------------------------------------

#[test]
fn exists_true() {
    let p = json!({"data": {"c": [{"exists": true}]}});
    assert!(matches(p.clone(), ce(json!({"c": 5}))));
    assert!(matches(p.clone(), ce(json!({"c": null}))));
    assert!(matches(p.clone(), ce(json!({"c": ""}))));
    assert!(matches(p.clone(), ce(json!({"c": [1]}))));
    assert!(!matches(p.clone(), ce(json!({}))));
    // only leaves exist: objects and empty arrays do not
    assert!(!matches(p.clone(), ce(json!({"c": {"c1": 100}}))));
    assert!(!matches(p.clone(), ce(json!({"c": []}))));
    assert!(!matches(p, ce(json!({"c": [{"x": 1}]}))));
}

#[test]
fn exists_false() {
    let p = json!({"data": {"c": [{"exists": false}]}});
    assert!(matches(p.clone(), ce(json!({}))));
    assert!(matches(p.clone(), ce(json!({"other": 1}))));
    // intermediate nodes are not leaves (as in Event Ruler)
    assert!(matches(p.clone(), ce(json!({"c": {"c1": 100}}))));
    assert!(matches(p.clone(), ce(json!({"c": []}))));
    assert!(!matches(p.clone(), ce(json!({"c": 5}))));
    assert!(!matches(p.clone(), ce(json!({"c": null}))));
    // data itself absent
    assert!(matches(p, json!({"source": "x"})));
}

#[test]
fn exists_combined_with_values() {
    // matchers in one leaf are ORed
    let p = json!({"data": {"c": [{"exists": false}, "x"]}});
    assert!(matches(p.clone(), ce(json!({}))));
    assert!(matches(p.clone(), ce(json!({"c": "x"}))));
    assert!(!matches(p, ce(json!({"c": "y"}))));
}

// ---- contains (Alibaba) -----------------------------------------------------------

#[test]
fn contains() {
    let p = json!({"type": [{"contains": "Normal"}]});
    assert!(matches(p.clone(), json!({"type": "oss:Normal:Put"})));
    assert!(!matches(p.clone(), json!({"type": "oss:normal:Put"})));
    // arrays: an element equal to (or, for strings, containing) the operand
    assert!(matches(p.clone(), json!({"type": ["a", "Normal"]})));
    assert!(!matches(p, json!({"type": ["a", "b"]})));
    let p = json!({"data": {"ids": [{"contains": 7}]}});
    assert!(matches(p.clone(), ce(json!({"ids": [1, 7, 9]}))));
    assert!(!matches(p.clone(), ce(json!({"ids": [1, 9]}))));
    assert!(!matches(p, ce(json!({"ids": "7"}))));
}

// ---- structure: AND / OR / $or ----------------------------------------------------

#[test]
fn keys_are_anded_values_are_ored() {
    let p = json!({
        "source": ["aws.ec2"],
        "data": {"state": ["running", "pending"]}
    });
    assert!(matches(p.clone(), ce(json!({"state": "pending"}))));
    assert!(!matches(p.clone(), ce(json!({"state": "stopped"}))));
    let mut other = ce(json!({"state": "running"}));
    other["source"] = json!("aws.s3");
    assert!(!matches(p, other));
}

#[test]
fn or_top_level() {
    let p = json!({
        "source": ["aws.cloudwatch"],
        "$or": [
            {"metricName": ["CPUUtilization", "ReadLatency"]},
            {"namespace": ["AWS/EC2", "AWS/ES"]}
        ]
    });
    assert!(matches(
        p.clone(),
        json!({"source": "aws.cloudwatch", "metricName": "ReadLatency"})
    ));
    assert!(matches(
        p.clone(),
        json!({"source": "aws.cloudwatch", "namespace": "AWS/ES"})
    ));
    assert!(!matches(
        p.clone(),
        json!({"source": "aws.cloudwatch", "namespace": "AWS/S3"})
    ));
    assert!(!matches(
        p,
        json!({"source": "aws.s3", "namespace": "AWS/ES"})
    ));
}

#[test]
fn or_nested_and_parallel() {
    let p = json!({
        "$or": [
            {"metricName": ["CPUUtilization"]},
            {"namespace": ["AWS/EC2"]}
        ],
        "data": {
            "$or": [
                {"source": ["aws.cloudwatch"]},
                {"detail-type": ["CloudWatch Alarm State Change"]}
            ]
        }
    });
    assert!(matches(
        p.clone(),
        json!({"metricName": "CPUUtilization", "data": {"source": "aws.cloudwatch"}})
    ));
    assert!(matches(
        p.clone(),
        json!({"namespace": "AWS/EC2", "data": {"detail-type": "CloudWatch Alarm State Change"}})
    ));
    assert!(!matches(
        p.clone(),
        json!({"namespace": "AWS/EC2", "data": {"source": "x"}})
    ));
    assert!(!matches(p, json!({"data": {"source": "aws.cloudwatch"}})));
}

#[test]
fn or_with_and_inside_and_nested_or() {
    let p = json!({
        "source": ["aws.cloudwatch"],
        "$or": [
            {"metricName": ["CPUUtilization"]},
            {
                "metricType": ["MetricType"],
                "namespace": ["AWS/EC2"],
                "$or": [{"metricId": [1234]}, {"spaceId": [1000]}]
            }
        ]
    });
    let base =
        json!({"source": "aws.cloudwatch", "metricType": "MetricType", "namespace": "AWS/EC2"});
    let mut with_space = base.clone();
    with_space["spaceId"] = json!(1000);
    assert!(matches(p.clone(), with_space));
    assert!(!matches(p.clone(), base.clone()));
    let mut only_type = json!({"source": "aws.cloudwatch", "metricType": "MetricType"});
    only_type["metricId"] = json!(1234);
    assert!(!matches(p, only_type));
}

#[test]
fn empty_pattern_matches_everything() {
    assert!(matches(json!({}), ce(json!({}))));
    assert!(matches(json!({}), json!({})));
}

// ---- CloudEvents / AWS aliases ------------------------------------------------------

#[test]
fn aws_pattern_on_cloudevent() {
    let p = json!({
        "source": ["aws.ec2"],
        "detail-type": ["EC2 Instance State-change Notification"],
        "detail": {"state": ["terminated"]}
    });
    assert!(matches(p.clone(), ce(json!({"state": "terminated"}))));
    assert!(!matches(p.clone(), ce(json!({"state": "running"}))));
    assert!(matches(p.clone(), aws(json!({"state": "terminated"}))));
    assert!(!matches(p, aws(json!({"state": "running"}))));
}

#[test]
fn cloudevents_pattern_on_aws_event() {
    let p = json!({
        "type": ["EC2 Instance State-change Notification"],
        "data": {"state": ["terminated"]},
        "account": ["123456789012"],
        "resources": [{"prefix": "arn:aws:ec2:"}]
    });
    assert!(matches(p.clone(), aws(json!({"state": "terminated"}))));
    assert!(!matches(p, aws(json!({"state": "running"}))));
}

#[test]
fn alias_only_at_top_level_and_only_as_fallback() {
    // nested `detail` is an ordinary key
    let p = json!({"data": {"detail": {"x": [1]}}});
    assert!(!matches(p.clone(), ce(json!({"data": {"x": 1}}))));
    assert!(matches(p, ce(json!({"detail": {"x": 1}}))));
    // an event with both reads the named one
    let ev = json!({"data": {"x": 1}, "detail": {"x": 2}});
    assert!(matches(json!({"data": {"x": [1]}}), ev.clone()));
    assert!(matches(json!({"detail": {"x": [2]}}), ev.clone()));
    assert!(!matches(json!({"detail": {"x": [1]}}), ev));
}

#[test]
fn alias_exists_false() {
    // `detail` reads `data` on a CloudEvent, so the field exists
    let p = json!({"detail": {"state": [{"exists": false}]}});
    assert!(!matches(p.clone(), ce(json!({"state": "x"}))));
    assert!(matches(p, ce(json!({"other": "x"}))));
}

#[test]
fn extension_attributes() {
    let mut ev = ce(json!({}));
    ev["partitionkey"] = json!("order-7");
    assert!(matches(
        json!({"partitionkey": [{"prefix": "order-"}]}),
        ev.clone()
    ));
    assert!(matches(
        json!({"subject": ["i-123"], "region": ["us-east-1"]}),
        ev
    ));
}

// ---- arrays -----------------------------------------------------------------------

#[test]
fn event_arrays_any_element() {
    let p = json!({"resources": ["arn:2", "arn:9"]});
    assert!(matches(p.clone(), json!({"resources": ["arn:1", "arn:2"]})));
    assert!(!matches(p, json!({"resources": ["arn:1", "arn:3"]})));
    // nested arrays of scalars are searched too
    let p = json!({"data": {"m": [3]}});
    assert!(matches(p, ce(json!({"m": [[1, 2], [3]]}))));
}

#[test]
fn arrays_of_objects_are_crushed() {
    let ev = ce(json!({"employees": [
        {"firstName": "John", "lastName": "Doe"},
        {"firstName": "Anna", "lastName": "Smith"},
        {"firstName": "Peter", "lastName": "Jones"}
    ]}));
    assert!(matches(
        json!({"data": {"employees": {"firstName": ["Anna"]}}}),
        ev.clone()
    ));
    assert!(matches(
        json!({"data": {"employees": {"firstName": ["Anna"], "lastName": ["Smith"]}}}),
        ev.clone()
    ));
    // fields from different elements do not combine
    assert!(!matches(
        json!({"data": {"employees": {"firstName": ["Anna"], "lastName": ["Jones"]}}}),
        ev.clone()
    ));
    assert!(!matches(
        json!({"data": {"employees": {"firstName": ["Zed"]}}}),
        ev
    ));
}

#[test]
fn arrays_of_objects_multi_level() {
    let ev = ce(json!({"employees": [
        [{"firstName": "John", "lastName": "Doe"}, {"firstName": "Anna", "lastName": "Smith"}],
        [{"firstName": "Peter", "lastName": "Jones"}]
    ]}));
    assert!(matches(
        json!({"data": {"employees": {"firstName": ["Peter"], "lastName": ["Jones"]}}}),
        ev.clone()
    ));
    assert!(!matches(
        json!({"data": {"employees": {"firstName": ["John"], "lastName": ["Jones"]}}}),
        ev
    ));
}

#[test]
fn arrays_of_objects_nested_fields_share_the_element() {
    let ev = ce(json!({"orders": [
        {"id": 1, "item": {"sku": "A", "qty": 1}, "lines": [{"sku": "X"}, {"sku": "Y"}]},
        {"id": 2, "item": {"sku": "B", "qty": 5}, "lines": [{"sku": "Z"}]}
    ]}));
    let p = |id: i64, sku: &str, qty: i64| json!({"data": {"orders": {"id": [id], "item": {"sku": [sku], "qty": [{"numeric": [">=", qty]}]}}}});
    assert!(matches(p(2, "B", 5), ev.clone()));
    assert!(matches(p(1, "A", 1), ev.clone()));
    assert!(!matches(p(1, "B", 1), ev.clone()));
    assert!(!matches(p(1, "A", 5), ev.clone()));
    // an inner array is its own level: any of its elements, within the outer element
    let q = |id: i64, sku: &str| json!({"data": {"orders": {"id": [id], "lines": {"sku": [sku]}}}});
    assert!(matches(q(1, "Y"), ev.clone()));
    assert!(matches(q(2, "Z"), ev.clone()));
    assert!(!matches(q(2, "X"), ev.clone()));
    // $or inside an array element is evaluated per element
    let r = json!({"data": {"orders": {"id": [1], "$or": [{"item": {"sku": ["B"]}}, {"lines": {"sku": ["X"]}}]}}});
    assert!(matches(r, ev.clone()));
    let r = json!({"data": {"orders": {"id": [1], "$or": [{"item": {"sku": ["B"]}}, {"lines": {"sku": ["Z"]}}]}}});
    assert!(!matches(r, ev));
}

#[test]
fn exists_false_inside_array_elements() {
    let ev = ce(json!({"items": [{"a": 1}, {"b": 2}]}));
    // one element lacks `a`
    assert!(matches(
        json!({"data": {"items": {"a": [{"exists": false}]}}}),
        ev.clone()
    ));
    // but no element has both a=1 and no b ... element 0 does
    assert!(matches(
        json!({"data": {"items": {"a": [1], "b": [{"exists": false}]}}}),
        ev.clone()
    ));
    assert!(!matches(
        json!({"data": {"items": {"b": [2], "a": [{"exists": true}]}}}),
        ev
    ));
}

#[test]
fn non_object_events() {
    let p = pattern(json!({"a": [1]}));
    for ev in [json!(null), json!(1), json!("x"), json!([]), json!([1, 2])] {
        assert!(!p.matches(&ev));
    }
    let p = pattern(json!({"a": [{"exists": false}]}));
    assert!(p.matches(&json!(null)));
    assert!(p.matches(&json!("x")));
}

#[test]
fn pattern_is_send_sync_clone() {
    fn assert_traits<T: Send + Sync + Clone + std::fmt::Debug>() {}
    assert_traits::<Pattern>();
    assert_traits::<strait_routing::pattern::RuleSet<String>>();
}
