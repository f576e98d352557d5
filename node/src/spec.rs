//! Bus, rule and target definitions as the API accepts them: validation
//! (pure, naming the offending field) kept apart from building the
//! runtime pieces (compiled pattern, transform, HTTP client).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use strait_routing::pattern::Pattern;
use strait_routing::transform::Transform;

/// A definition error: which field, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// Dotted path of the field (`targets[0].endpoint`).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// Machine-readable code.
    pub code: &'static str,
}

impl SpecError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            field: field.into(),
            message: message.into(),
            code: "InvalidRule",
        }
    }
}

/// Check a bus, rule or target name.
pub fn validate_name(kind: &str, name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(SpecError {
            field: kind.into(),
            message: format!(
                "{name:?} is not a valid {kind} name (1-64 characters of A-Z a-z 0-9 . _ -)"
            ),
            code: "InvalidName",
        })
    }
}

/// Retry policy of a target (EventBridge's two limits plus the backoff shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Give up once the event is older than this.
    pub max_event_age_seconds: u64,
    /// First backoff.
    pub initial_backoff_ms: u64,
    /// Backoff cap.
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 185,
            max_event_age_seconds: 86_400,
            initial_backoff_ms: 200,
            max_backoff_ms: 60_000,
        }
    }
}

impl RetryPolicy {
    /// Backoff before attempt `attempt + 1` (exponential, full jitter).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(30));
        let cap = exp.min(self.max_backoff_ms).max(1);
        // Full jitter in [cap/2, cap] keeps retries spread without collapsing to 0.
        let low = cap / 2;
        let ms = low + rand::random_range(0..=cap - low);
        Duration::from_millis(ms)
    }

    fn validate(&self, field: &str) -> Result<(), SpecError> {
        if self.max_attempts == 0 {
            return Err(SpecError::new(
                format!("{field}.maxAttempts"),
                "must be at least 1",
            ));
        }
        if self.max_event_age_seconds == 0 {
            return Err(SpecError::new(
                format!("{field}.maxEventAgeSeconds"),
                "must be at least 1",
            ));
        }
        if self.initial_backoff_ms == 0 || self.initial_backoff_ms > self.max_backoff_ms {
            return Err(SpecError::new(
                format!("{field}.initialBackoffMs"),
                "must be at least 1 and not above maxBackoffMs",
            ));
        }
        Ok(())
    }
}

/// HTTP content mode for delivering CloudEvents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// `ce-*` headers, data as the body.
    #[default]
    Binary,
    /// The whole event as `application/cloudevents+json`.
    Structured,
}

/// Where events go after the last failed attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum DeadLetter {
    /// Re-ingest on a bus of this site.
    Bus {
        /// The bus.
        bus: String,
    },
    /// POST to an HTTP endpoint.
    Http {
        /// URL.
        endpoint: String,
        /// Content mode.
        #[serde(default)]
        mode: DeliveryMode,
        /// Extra headers.
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
}

/// One target of a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetSpec {
    /// Target id, unique within the rule.
    pub id: String,
    /// Target kind (`http`).
    #[serde(rename = "type")]
    pub kind: String,
    /// URL for HTTP targets.
    pub endpoint: String,
    /// Content mode.
    #[serde(default)]
    pub mode: DeliveryMode,
    /// Extra headers sent with every delivery.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Per-attempt timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Deliveries in flight at once for this target.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Optional transform (either cloud's vocabulary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<Value>,
    /// Retry policy.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Dead-letter destination (else the rule's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetter>,
}

fn default_timeout_ms() -> u64 {
    5_000
}

fn default_concurrency() -> usize {
    8
}

/// A rule: a pattern and its targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Disabled rules keep their definition but match nothing.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The event pattern.
    pub pattern: Value,
    /// Targets.
    pub targets: Vec<TargetSpec>,
    /// Default dead letter for targets without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetter>,
}

fn yes() -> bool {
    true
}

fn validate_url(field: &str, url: &str) -> Result<(), SpecError> {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(()),
        Ok(u) => Err(SpecError::new(
            field,
            format!(
                "scheme {:?} is not supported (use http or https)",
                u.scheme()
            ),
        )),
        Err(e) => Err(SpecError::new(
            field,
            format!("{url:?} is not a valid URL: {e}"),
        )),
    }
}

fn validate_dead_letter(field: &str, dl: &DeadLetter) -> Result<(), SpecError> {
    match dl {
        DeadLetter::Bus { bus } => {
            validate_name("bus", bus).map_err(|e| SpecError::new(format!("{field}.bus"), e.message))
        }
        DeadLetter::Http { endpoint, .. } => validate_url(&format!("{field}.endpoint"), endpoint),
    }
}

/// A rule checked and compiled, ready for the dispatcher.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// The definition.
    pub spec: RuleSpec,
    /// The compiled pattern.
    pub pattern: Pattern,
    /// Compiled transforms by target index.
    pub transforms: Vec<Option<Transform>>,
}

impl RuleSpec {
    /// Parse and validate a rule definition from JSON.
    pub fn from_json(value: &Value) -> Result<RuleSpec, SpecError> {
        let spec: RuleSpec = serde_json::from_value(value.clone())
            .map_err(|e| SpecError::new("rule", e.to_string()))?;
        spec.compile()?;
        Ok(spec)
    }

    /// Validate every field and compile the pattern and transforms.
    pub fn compile(&self) -> Result<CompiledRule, SpecError> {
        let pattern = Pattern::parse(&self.pattern).map_err(|e| SpecError {
            field: if e.path.is_empty() {
                "pattern".into()
            } else {
                format!("pattern.{}", e.path)
            },
            message: e.message.clone(),
            code: "InvalidPattern",
        })?;
        if self.targets.is_empty() {
            return Err(SpecError::new(
                "targets",
                "a rule needs at least one target",
            ));
        }
        if self.targets.len() > 64 {
            return Err(SpecError::new("targets", "a rule has at most 64 targets"));
        }
        let mut transforms = Vec::with_capacity(self.targets.len());
        for (i, t) in self.targets.iter().enumerate() {
            let f = format!("targets[{i}]");
            validate_name("target id", &t.id)
                .map_err(|e| SpecError::new(format!("{f}.id"), e.message))?;
            if self.targets[..i].iter().any(|o| o.id == t.id) {
                return Err(SpecError::new(
                    format!("{f}.id"),
                    format!("duplicate target id {:?}", t.id),
                ));
            }
            if t.kind != "http" {
                return Err(SpecError::new(
                    format!("{f}.type"),
                    format!("unknown target type {:?} (supported: http)", t.kind),
                ));
            }
            validate_url(&format!("{f}.endpoint"), &t.endpoint)?;
            if t.timeout_ms == 0 || t.timeout_ms > 300_000 {
                return Err(SpecError::new(
                    format!("{f}.timeoutMs"),
                    "must be between 1 and 300000",
                ));
            }
            if t.concurrency == 0 || t.concurrency > 1024 {
                return Err(SpecError::new(
                    format!("{f}.concurrency"),
                    "must be between 1 and 1024",
                ));
            }
            for name in t.headers.keys() {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(SpecError::new(
                        format!("{f}.headers"),
                        format!("{name:?} is not a valid header name"),
                    ));
                }
            }
            t.retry.validate(&format!("{f}.retry"))?;
            if let Some(dl) = &t.dead_letter {
                validate_dead_letter(&format!("{f}.deadLetter"), dl)?;
            }
            let tr = match &t.transform {
                None => None,
                Some(v) => Some(Transform::parse(v).map_err(|e| SpecError {
                    field: format!("{f}.transform"),
                    message: e.to_string(),
                    code: "InvalidTransform",
                })?),
            };
            transforms.push(tr);
        }
        if let Some(dl) = &self.dead_letter {
            validate_dead_letter("deadLetter", dl)?;
        }
        Ok(CompiledRule {
            spec: self.clone(),
            pattern,
            transforms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule() -> Value {
        json!({"pattern": {"source": ["s"]}, "targets": [{"id": "t", "type": "http", "endpoint": "http://127.0.0.1:1/x"}]})
    }

    #[test]
    fn accepts_minimal_rule() {
        let r = RuleSpec::from_json(&rule()).expect("valid");
        assert_eq!(r.targets[0].retry.max_attempts, 185);
        assert_eq!(r.targets[0].mode, DeliveryMode::Binary);
    }

    #[test]
    fn names_bad_fields() {
        let mut r = rule();
        r["targets"][0]["endpoint"] = json!("ftp://x");
        let e = RuleSpec::from_json(&r).expect_err("bad scheme");
        assert_eq!(e.field, "targets[0].endpoint");
        let mut r = rule();
        r["targets"][0]["retry"] = json!({"maxAttempts": 0});
        assert_eq!(
            RuleSpec::from_json(&r).expect_err("attempts").field,
            "targets[0].retry.maxAttempts"
        );
        let mut r = rule();
        r["targets"] = json!([]);
        assert_eq!(
            RuleSpec::from_json(&r).expect_err("no targets").field,
            "targets"
        );
        let mut r = rule();
        r["bogus"] = json!(1);
        assert!(
            RuleSpec::from_json(&r)
                .expect_err("unknown")
                .message
                .contains("bogus")
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy {
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            ..RetryPolicy::default()
        };
        assert!(p.backoff(1) <= Duration::from_millis(100));
        assert!(p.backoff(10) <= Duration::from_millis(1000));
        assert!(p.backoff(10) >= Duration::from_millis(500));
    }
}
