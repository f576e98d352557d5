//! Bus, rule and target definitions as the API accepts them: validation
//! (pure, naming the offending field) kept apart from building the
//! runtime pieces (compiled pattern, transform, HTTP client).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
pub use strait_adapters::http::{ContentMode as DeliveryMode, HttpSettings};
use strait_routing::pattern::Pattern;
use strait_routing::transform::Transform;

use super::bus_target::TargetKind;
use super::check::{SpecError, validate_name};

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

/// Where events go after the last failed attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum DeadLetter {
    /// Re-ingest on a bus of this site.
    Bus {
        /// The bus.
        bus: String,
    },
    /// POST to an HTTP endpoint (`endpoint`, `mode`, `headers`).
    Http(HttpSettings),
}

impl DeadLetter {
    /// Its `type`, as written in the definition (`bus`, `http`).
    pub fn kind(&self) -> &'static str {
        match self {
            DeadLetter::Bus { .. } => "bus",
            DeadLetter::Http(_) => "http",
        }
    }
}

/// One target of a rule: the fields every target has, plus the settings of
/// its type (for `http`: `endpoint`, `mode`, `headers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetSpec {
    /// Target id, unique within the rule.
    pub id: String,
    /// Target type (`http`).
    #[serde(rename = "type")]
    pub kind: String,
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
    /// The site that delivers to this target (default: the site the event
    /// is ingested at). Another site's target is reached over the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The type's own settings, checked by the adapter.
    #[serde(flatten)]
    pub settings: Map<String, Value>,
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

fn validate_dead_letter(field: &str, dl: &DeadLetter) -> Result<(), SpecError> {
    match dl {
        DeadLetter::Bus { bus } => {
            validate_name("bus", bus).map_err(|e| SpecError::new(format!("{field}.bus"), e.message))
        }
        DeadLetter::Http(settings) => settings
            .validate()
            .map_err(|e| SpecError::new(format!("{field}.{}", e.field), e.message)),
    }
}

/// Check a target's type-specific settings: `bus` here, the others by
/// their adapter. Returns them in normal form.
fn validate_target_settings(
    kind: &str,
    settings: &Map<String, Value>,
) -> Result<Map<String, Value>, strait_adapters::ConfigError> {
    TargetKind::of(kind)?.validate(settings)
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
        let mut spec: RuleSpec = serde_json::from_value(value.clone())
            .map_err(|e| SpecError::new("rule", e.to_string()))?;
        spec.compile()?;
        // Store targets in normal form (defaults filled in).
        for t in &mut spec.targets {
            if let Ok(normal) = validate_target_settings(&t.kind, &t.settings) {
                t.settings = normal;
            }
        }
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
            validate_target_settings(&t.kind, &t.settings).map_err(|e| {
                let field = if e.field == "settings" {
                    f.clone()
                } else {
                    format!("{f}.{}", e.field)
                };
                SpecError::new(field, e.message)
            })?;
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
            t.retry.validate(&format!("{f}.retry"))?;
            if let Some(site) = &t.site {
                strait_federation::certs::validate_site(site)
                    .map_err(|e| SpecError::new(format!("{f}.site"), e.to_string()))?;
            }
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

/// What the API shows instead of a header value of an HTTP target or
/// dead letter.
pub const MASK: &str = "***";

/// Whether a target or dead letter (as stored JSON) is HTTP.
fn is_http(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("http")
}

/// Apply `f` to every HTTP target and HTTP dead letter of a stored rule
/// (with the path of its field: `targets[0]`, `targets[0].deadLetter`,
/// `deadLetter`).
fn each_http(spec: &mut Value, mut f: impl FnMut(&str, &mut Map<String, Value>)) {
    if let Some(ts) = spec.get_mut("targets").and_then(Value::as_array_mut) {
        for (i, t) in ts.iter_mut().enumerate() {
            if is_http(t)
                && let Some(m) = t.as_object_mut()
            {
                f(&format!("targets[{i}]"), m);
            }
            if let Some(dl) = t.get_mut("deadLetter")
                && is_http(dl)
                && let Some(m) = dl.as_object_mut()
            {
                f(&format!("targets[{i}].deadLetter"), m);
            }
        }
    }
    if let Some(dl) = spec.get_mut("deadLetter")
        && is_http(dl)
        && let Some(m) = dl.as_object_mut()
    {
        f("deadLetter", m);
    }
}

/// A stored rule as the API shows it: the header values of HTTP targets
/// and dead letters as [`MASK`] (secrets belong in connections), user info
/// in their endpoints as `***`.
pub fn masked(spec: &Value) -> Value {
    let mut v = spec.clone();
    each_http(&mut v, |_, m| {
        if let Some(Value::Object(h)) = m.get_mut("headers") {
            for value in h.values_mut() {
                *value = Value::String(MASK.into());
            }
        }
        if let Some(Value::String(e)) = m.get_mut("endpoint") {
            *e = strait_adapters::egress::redact_url(e);
        }
    });
    v
}

/// A rule sent back as a GET showed it: header values that are [`MASK`]
/// take the value stored for the same target (or dead letter) and header
/// in `old`, so that an exported rule can be put back. A [`MASK`] without
/// a stored value is kept as it is (a literal `***`).
pub fn unmask(spec: &mut Value, old: Option<&Value>) {
    let Some(old) = old else { return };
    let mut stored: std::collections::HashMap<String, Map<String, Value>> = Default::default();
    let mut old = old.clone();
    // Stored values by target id (positions may change).
    let ids: Vec<Option<String>> = old
        .get("targets")
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .map(|t| t.get("id").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    each_http(&mut old, |path, m| {
        if let Some(Value::Object(h)) = m.get("headers") {
            stored.insert(by_id(path, &ids), h.clone());
        }
    });
    let ids: Vec<Option<String>> = spec
        .get("targets")
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .map(|t| t.get("id").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    each_http(spec, |path, m| {
        let Some(old) = stored.get(&by_id(path, &ids)) else {
            return;
        };
        if let Some(Value::Object(h)) = m.get_mut("headers") {
            for (name, value) in h.iter_mut() {
                if value.as_str() == Some(MASK)
                    && let Some(v) = old.get(name)
                {
                    *value = v.clone();
                }
            }
        }
    });
}

/// `targets[3].deadLetter` → `targets[id].deadLetter` with the target's id.
fn by_id(path: &str, ids: &[Option<String>]) -> String {
    let Some(rest) = path.strip_prefix("targets[") else {
        return path.to_string();
    };
    let Some((n, tail)) = rest.split_once(']') else {
        return path.to_string();
    };
    match n
        .parse::<usize>()
        .ok()
        .and_then(|i| ids.get(i).cloned().flatten())
    {
        Some(id) => format!("targets[{id:?}]{tail}"),
        None => path.to_string(),
    }
}

impl RuleSpec {
    /// Check what depends on the node that delivers: for each target
    /// delivered at `site` (and its dead letters, and the rule's), its
    /// credential (and the endpoints and regions it is bound to), its
    /// connection and the egress policy. The error names the field.
    pub fn check_here(
        &self,
        site: &str,
        ctx: &strait_adapters::SinkContext,
    ) -> Result<(), SpecError> {
        let mut any_here = false;
        for (i, t) in self.targets.iter().enumerate() {
            if t.site.as_deref().is_some_and(|s| s != site) {
                continue;
            }
            any_here = true;
            let f = format!("targets[{i}]");
            if let Ok(TargetKind::Adapter(k)) = TargetKind::of(&t.kind) {
                k.check_here(&t.settings, ctx)
                    .map_err(|e| SpecError::new(format!("{f}.{}", e.field), e.message))?;
            }
            if let Some(DeadLetter::Http(s)) = &t.dead_letter {
                s.check_here(ctx).map_err(|e| {
                    SpecError::new(format!("{f}.deadLetter.{}", e.field), e.message)
                })?;
            }
        }
        if any_here && let Some(DeadLetter::Http(s)) = &self.dead_letter {
            s.check_here(ctx)
                .map_err(|e| SpecError::new(format!("deadLetter.{}", e.field), e.message))?;
        }
        Ok(())
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
        // Stored in normal form: the HTTP defaults are filled in.
        assert_eq!(r.targets[0].settings["mode"], "binary");
        assert_eq!(r.targets[0].settings["headers"], json!({}));
        let mut bad = rule();
        bad["targets"][0]["bogus"] = json!(1);
        let e = RuleSpec::from_json(&bad).expect_err("unknown http field");
        assert!(e.to_string().contains("bogus"), "{e}");
        let mut bad = rule();
        bad["targets"][0]["type"] = json!("smtp");
        assert_eq!(
            RuleSpec::from_json(&bad).expect_err("type").field,
            "targets[0].type"
        );
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
    fn bus_targets_are_checked() {
        let r = json!({"pattern": {}, "targets": [{"id": "t", "type": "bus", "bus": "b", "site": "aws"}]});
        let spec = RuleSpec::from_json(&r).expect("valid bus target");
        assert_eq!(spec.targets[0].settings["bus"], "b");
        assert_eq!(spec.targets[0].site.as_deref(), Some("aws"));
        let bad = json!({"pattern": {}, "targets": [{"id": "t", "type": "bus"}]});
        assert_eq!(
            RuleSpec::from_json(&bad).expect_err("no bus").field,
            "targets[0].bus"
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
