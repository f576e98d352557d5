//! Source definitions, node-local and shared: the node's envelope (which
//! bus, which site, which name) around the settings of a source kind of
//! `strait_adapters` ([`strait_adapters::SOURCE_KINDS`]), which reads and
//! checks them. Validation is pure and names the offending field as the
//! definition spells it; running them is `crate::sources`.
//!
//! A node-local source ([`AwsSource`], `aws.sources` in the node's YAML,
//! snake_case) is an SQS source polled by every node that lists it. A
//! shared source ([`SourceSpec`], `PUT /v1/sources/{name}` and `strait
//! apply`, camelCase) is shared configuration: it is replicated to every
//! site, names the site that runs it (`site`) and refers to its credential
//! by name; the secret is looked up in the running site's node-local
//! `aws.credentials`. Both hold the same settings type for SQS
//! ([`SqsSourceConfig`]).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use strait_adapters::aws_sqs::source::{self as sqs, SqsSourceConfig};
use strait_adapters::{Field, Fields, Naming, SourceKind};

use crate::config::check::{SpecError, validate_name};

const NAME: Field = Field::new("name", "name");
const TYPE: Field = Field::new("type", "type");
const SITE: Field = Field::new("site", "site");
const BUS: Field = Field::new("bus", "bus");

/// The node's fields of a node-local source; the others are the SQS
/// source's.
const LOCAL_ENVELOPE: &[&str] = &["name", "bus"];

/// The node's fields of a shared source; the others are its kind's.
const SHARED_ENVELOPE: &[&str] = &["type", "site", "bus"];

fn bus_error(bus: &str) -> strait_adapters::ConfigError {
    strait_adapters::ConfigError::new("bus", format!("{bus:?} is not a valid bus name"))
}

/// A node-local source (`aws.sources`): an SQS queue polled into a Strait
/// bus by every node whose configuration lists it (see
/// docs/adapters/aws.md).
#[derive(Debug, Clone, PartialEq)]
pub struct AwsSource {
    /// Name (logs, metrics).
    pub name: String,
    /// The Strait bus events are committed to.
    pub bus: String,
    /// The queue and how it is polled.
    pub sqs: SqsSourceConfig,
}

impl AwsSource {
    /// Check the values (pure: whether a named credential exists is up to
    /// the caller). The error names the field as the node's configuration
    /// spells it.
    pub fn validate(&self) -> Result<(), strait_adapters::ConfigError> {
        self.sqs.validate(Naming::NodeConfig)?;
        if validate_name("bus", &self.bus).is_err() {
            return Err(bus_error(&self.bus));
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for AwsSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = Map::<String, Value>::deserialize(d)?;
        let read = || {
            let fields = Fields::new(&m, Naming::NodeConfig, LOCAL_ENVELOPE, sqs::FIELDS)?;
            Ok::<_, strait_adapters::ConfigError>(AwsSource {
                name: fields.required_string(NAME)?,
                bus: fields.required_string(BUS)?,
                sqs: SqsSourceConfig::read(&fields)?,
            })
        };
        read().map_err(D::Error::custom)
    }
}

impl Serialize for AwsSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = Map::new();
        m.insert("name".into(), Value::String(self.name.clone()));
        m.insert("bus".into(), Value::String(self.bus.clone()));
        m.extend(self.sqs.to_map(Naming::NodeConfig));
        m.serialize(s)
    }
}

/// A shared source, as stored in the shared configuration: the node's
/// fields and its kind's settings in normal form (defaults filled in,
/// spelled as the API spells them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// The source kind (`aws_sqs`), one of
    /// [`strait_adapters::SOURCE_KINDS`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The site that runs the source (filled in by the API with the site
    /// that took the call when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The Strait bus events are committed to.
    pub bus: String,
    /// The kind's settings.
    #[serde(flatten)]
    pub settings: Map<String, Value>,
}

fn invalid(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.to_string(),
        message: message.into(),
        code: "InvalidSource",
    }
}

fn from_kind(e: strait_adapters::ConfigError) -> SpecError {
    invalid(&e.field, e.message)
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
        let fields = Fields::envelope(m, Naming::Api);
        let kind = SourceKind::find(&fields.required_string(TYPE).map_err(from_kind)?)
            .map_err(from_kind)?;
        let site = fields.string(SITE).map_err(from_kind)?;
        if let Some(s) = &site {
            validate_name("site", s).map_err(|e| invalid("site", e.message))?;
        }
        let bus = fields.required_string(BUS).map_err(from_kind)?;
        if validate_name("bus", &bus).is_err() {
            return Err(from_kind(bus_error(&bus)));
        }
        Ok(SourceSpec {
            kind: kind.name.to_string(),
            site,
            bus,
            settings: kind.normalize(m, SHARED_ENVELOPE).map_err(from_kind)?,
        })
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
        assert_eq!(spec.settings["waitTimeSecs"], 1);
        let minimal = json!({"type": "aws_sqs", "bus": "b", "queueUrl": "https://sqs.us-east-1.amazonaws.com/1/q"});
        let spec = SourceSpec::from_json(&minimal).expect("valid");
        assert_eq!(
            (
                spec.site.as_deref(),
                &spec.settings["waitTimeSecs"],
                &spec.settings["visibilityTimeoutSecs"],
                &spec.settings["maxMessages"]
            ),
            (None, &json!(20), &json!(30), &json!(10))
        );
        let stored = serde_json::to_value(&spec).expect("serialize");
        assert_eq!(stored["waitTimeSecs"], 20);
        assert_eq!(stored["type"], "aws_sqs");
        let back: SourceSpec =
            serde_json::from_value(stored.clone()).expect("stored form reads back");
        assert_eq!(back, spec);
        // The stored form is accepted by the API again (a GET echoed back).
        assert_eq!(SourceSpec::from_json(&stored).expect("valid"), spec);
        assert_eq!(spec.bus, "b");
        // The stored form, field by field and in order, as before.
        assert_eq!(
            stored
                .as_object()
                .map(|m| m.keys().cloned().collect::<Vec<_>>()),
            Some(
                [
                    "type",
                    "bus",
                    "queueUrl",
                    "waitTimeSecs",
                    "visibilityTimeoutSecs",
                    "maxMessages",
                    "provision",
                    "eventBus"
                ]
                .map(String::from)
                .to_vec()
            )
        );
    }

    #[test]
    fn errors_name_the_field_in_the_apis_words() {
        assert_eq!(field_of(json!([1])), "source");
        assert_eq!(field_of(without("queueUrl")), "queueUrl");
        assert_eq!(field_of(with("queueUrl", json!("queue"))), "queueUrl");
        assert_eq!(field_of(with("queueUrl", json!(7))), "queueUrl");
        assert_eq!(field_of(without("type")), "type");
        assert_eq!(field_of(with("type", json!("no_such_kind"))), "type");
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
    fn a_node_local_source_reads_and_writes_the_node_configs_words() {
        let yaml =
            "{name: q1, queue_url: \"http://h/1/q\", bus: b, credentials: main, wait_time_secs: 5}";
        let s: AwsSource = serde_yaml::from_str(yaml).expect("yaml");
        assert_eq!((s.name.as_str(), s.bus.as_str()), ("q1", "b"));
        assert_eq!(s.sqs.credential.as_deref(), Some("main"));
        assert_eq!(s.sqs.wait_time_secs, 5);
        assert_eq!(s.sqs.max_messages, 10);
        let written = serde_yaml::to_string(&s).expect("yaml");
        assert!(written.contains("queue_url:") && written.contains("credential: main"));
        let back: AwsSource = serde_yaml::from_str(&written).expect("yaml");
        assert_eq!(back, s);
        for bad in [
            "{name: q1, bus: b, queueUrl: \"http://h/1/q\"}",
            "{name: q1, queue_url: \"http://h/1/q\"}",
            "{name: q1, bus: b, queue_url: \"http://h/1/q\", wait_time_secs: x}",
        ] {
            assert!(serde_yaml::from_str::<AwsSource>(bad).is_err(), "{bad}");
        }
    }
}
