//! Source definitions as the API accepts them (`PUT /v1/sources/{name}`):
//! validation (pure, naming the offending field in the API's words) kept
//! apart from building and running the poller (`crate::sources`).
//!
//! A source is shared configuration: it is replicated to every site, names
//! the site that runs it (`site`) and refers to its credential by name; the
//! secret is looked up in the running site's node-local `aws.credentials`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::check::{SpecError, validate_name};
use crate::config::{
    AwsSource, default_aws_bus, default_max_messages, default_visibility_timeout_secs,
    default_wait_time_secs,
};

/// The source types the API knows.
pub const SOURCE_TYPES: &[&str] = &["aws_sqs"];

/// Fields a source definition may have (the API's camelCase words).
const FIELDS: &[&str] = &[
    "type",
    "site",
    "bus",
    "queueUrl",
    "credential",
    "region",
    "endpoint",
    "waitTimeSecs",
    "visibilityTimeoutSecs",
    "maxMessages",
    "provision",
    "eventBus",
    "ruleName",
    "eventPattern",
];

/// A source definition, as stored in the shared configuration (defaults
/// filled in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    /// The source type (`aws_sqs`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The site that runs the source (filled in by the API with the site
    /// that took the call when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The Strait bus events are committed to.
    pub bus: String,
    /// The queue URL.
    pub queue_url: String,
    /// Name in the running site's `aws.credentials`; absent: the standard
    /// AWS credential chain of the running node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Region (else the environment's, else us-east-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Long-poll wait, seconds (0-20).
    #[serde(default = "default_wait_time_secs")]
    pub wait_time_secs: i32,
    /// Visibility timeout of received messages, seconds (1-43200).
    #[serde(default = "default_visibility_timeout_secs")]
    pub visibility_timeout_secs: i32,
    /// Messages per receive (1-10).
    #[serde(default = "default_max_messages")]
    pub max_messages: i32,
    /// Create the queue, its policy and an EventBridge rule targeting it.
    #[serde(default)]
    pub provision: bool,
    /// Provisioning: the EventBridge bus of the rule.
    #[serde(default = "default_aws_bus")]
    pub event_bus: String,
    /// Provisioning: the rule name (default `strait-{name}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_name: Option<String>,
    /// Provisioning: the rule's event pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_pattern: Option<Value>,
}

fn invalid(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.to_string(),
        message: message.into(),
        code: "InvalidSource",
    }
}

/// `queue_url` → `queueUrl`.
fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn string(
    m: &Map<String, Value>,
    field: &str,
    required: bool,
) -> Result<Option<String>, SpecError> {
    match m.get(field) {
        None | Some(Value::Null) if required => Err(invalid(field, "required field is missing")),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(
            field,
            format!(
                "must be a string, got {}",
                strait_routing::event::json_kind(other)
            ),
        )),
    }
}

fn integer(m: &Map<String, Value>, field: &str, default: i32) -> Result<i32, SpecError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| invalid(field, format!("must be an integer, got {v}"))),
    }
}

impl SourceSpec {
    /// Parse and validate a definition (the body of `PUT /v1/sources/{name}`).
    /// Pure: whether `site` is known and the credential exists there is
    /// for the caller (the API and the running site) to decide.
    pub fn from_json(value: &Value) -> Result<SourceSpec, SpecError> {
        let Some(m) = value.as_object() else {
            return Err(invalid(
                "source",
                format!(
                    "the body must be a JSON object, got {}",
                    strait_routing::event::json_kind(value)
                ),
            ));
        };
        if let Some(k) = m.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(invalid(
                k,
                format!("unknown field (allowed: {})", FIELDS.join(", ")),
            ));
        }
        let kind = string(m, "type", true)?.unwrap_or_default();
        if !SOURCE_TYPES.contains(&kind.as_str()) {
            return Err(invalid(
                "type",
                format!(
                    "{kind:?} is not a source type (known: {})",
                    SOURCE_TYPES.join(", ")
                ),
            ));
        }
        let site = string(m, "site", false)?;
        if let Some(s) = &site {
            validate_name("site", s).map_err(|e| invalid("site", e.message))?;
        }
        let provision = match m.get("provision") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                return Err(invalid(
                    "provision",
                    format!("must be true or false, got {v}"),
                ));
            }
        };
        let spec = SourceSpec {
            kind,
            site,
            bus: string(m, "bus", true)?.unwrap_or_default(),
            queue_url: string(m, "queueUrl", true)?.unwrap_or_default(),
            credential: string(m, "credential", false)?,
            region: string(m, "region", false)?,
            endpoint: string(m, "endpoint", false)?,
            wait_time_secs: integer(m, "waitTimeSecs", default_wait_time_secs())?,
            visibility_timeout_secs: integer(
                m,
                "visibilityTimeoutSecs",
                default_visibility_timeout_secs(),
            )?,
            max_messages: integer(m, "maxMessages", default_max_messages())?,
            provision,
            event_bus: string(m, "eventBus", false)?.unwrap_or_else(default_aws_bus),
            rule_name: string(m, "ruleName", false)?,
            event_pattern: m.get("eventPattern").filter(|v| !v.is_null()).cloned(),
        };
        spec.aws_source("validate")
            .validate()
            .map_err(|e| invalid(&camel(&e.field), e.message))?;
        Ok(spec)
    }

    /// The SQS poller's settings for this source (named `name`).
    pub fn aws_source(&self, name: &str) -> AwsSource {
        AwsSource {
            name: name.to_string(),
            queue_url: self.queue_url.clone(),
            bus: self.bus.clone(),
            credential: self.credential.clone(),
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            wait_time_secs: self.wait_time_secs,
            visibility_timeout_secs: self.visibility_timeout_secs,
            max_messages: self.max_messages,
            provision: self.provision,
            event_bus: self.event_bus.clone(),
            rule_name: self.rule_name.clone(),
            event_pattern: self.event_pattern.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok() -> Value {
        json!({
            "type": "aws_sqs", "site": "aws", "bus": "default",
            "queueUrl": "http://127.0.0.1:5000/123456789012/q1", "credential": "main",
            "region": "us-east-1", "endpoint": "http://127.0.0.1:5000",
            "waitTimeSecs": 1, "visibilityTimeoutSecs": 30, "maxMessages": 10
        })
    }

    fn field_of(v: Value) -> String {
        let e = SourceSpec::from_json(&v).expect_err("invalid");
        assert_eq!(e.code, "InvalidSource");
        e.field
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = ok();
        v[key] = value;
        v
    }

    fn without(key: &str) -> Value {
        let mut v = ok();
        v.as_object_mut().expect("object").remove(key);
        v
    }

    #[test]
    fn a_valid_definition_is_stored_with_defaults_and_reads_back() {
        let spec = SourceSpec::from_json(&ok()).expect("valid");
        assert_eq!(spec.site.as_deref(), Some("aws"));
        assert_eq!(spec.wait_time_secs, 1);
        let minimal = json!({"type": "aws_sqs", "bus": "b", "queueUrl": "https://sqs.us-east-1.amazonaws.com/1/q"});
        let spec = SourceSpec::from_json(&minimal).expect("valid");
        assert_eq!(
            (
                spec.site.as_deref(),
                spec.wait_time_secs,
                spec.visibility_timeout_secs,
                spec.max_messages
            ),
            (None, 20, 30, 10)
        );
        let stored = serde_json::to_value(&spec).expect("serialize");
        assert_eq!(stored["waitTimeSecs"], 20);
        assert_eq!(stored["type"], "aws_sqs");
        let back: SourceSpec =
            serde_json::from_value(stored.clone()).expect("stored form reads back");
        assert_eq!(back, spec);
        // The stored form is accepted by the API again (a GET echoed back).
        assert_eq!(SourceSpec::from_json(&stored).expect("valid"), spec);
        let aws = spec.aws_source("s");
        assert_eq!((aws.name.as_str(), aws.bus.as_str()), ("s", "b"));
    }

    #[test]
    fn errors_name_the_field_in_the_apis_words() {
        assert_eq!(field_of(json!([1])), "source");
        assert_eq!(field_of(without("queueUrl")), "queueUrl");
        assert_eq!(field_of(with("queueUrl", json!("queue"))), "queueUrl");
        assert_eq!(field_of(with("queueUrl", json!(7))), "queueUrl");
        assert_eq!(field_of(without("type")), "type");
        assert_eq!(field_of(with("type", json!("nats"))), "type");
        assert_eq!(field_of(without("bus")), "bus");
        assert_eq!(field_of(with("bus", json!("no spaces"))), "bus");
        assert_eq!(field_of(with("site", json!("a b"))), "site");
        assert_eq!(field_of(with("credential", json!(""))), "credential");
        assert_eq!(field_of(with("region", json!("US East"))), "region");
        assert_eq!(field_of(with("endpoint", json!("ftp://x"))), "endpoint");
        assert_eq!(field_of(with("waitTimeSecs", json!(21))), "waitTimeSecs");
        assert_eq!(field_of(with("waitTimeSecs", json!("1"))), "waitTimeSecs");
        assert_eq!(field_of(with("waitTimeSecs", json!(1.5))), "waitTimeSecs");
        assert_eq!(
            field_of(with("visibilityTimeoutSecs", json!(0))),
            "visibilityTimeoutSecs"
        );
        assert_eq!(field_of(with("maxMessages", json!(11))), "maxMessages");
        assert_eq!(
            field_of(with("maxMessages", json!(u64::MAX))),
            "maxMessages"
        );
        assert_eq!(field_of(with("provision", json!("yes"))), "provision");
        assert_eq!(field_of(with("ruleName", json!("a/b"))), "ruleName");
        assert_eq!(field_of(with("eventPattern", json!([1]))), "eventPattern");
        assert_eq!(field_of(with("queueURL", json!("x"))), "queueURL");
        let e = SourceSpec::from_json(&with("waitTimeSecs", json!(21))).expect_err("invalid");
        assert_eq!(e.to_string(), "waitTimeSecs: must be between 0 and 20");
    }

    #[test]
    fn snake_case_becomes_camel_case() {
        assert_eq!(camel("queue_url"), "queueUrl");
        assert_eq!(camel("visibility_timeout_secs"), "visibilityTimeoutSecs");
        assert_eq!(camel("bus"), "bus");
    }
}
