//! Target transforms: how an event is reshaped for one target.
//!
//! Both vocabularies are accepted (field names case-insensitively, so
//! `form`/`Form`, `inputPath`/`InputPath`, ...):
//!
//! | input | output |
//! |---|---|
//! | `{"form": "ORIGINAL"}` | [`TransformOutput::Original`] |
//! | `{"form": "JSONPATH", "value": "$.data.x"}` | JSON: the selected value, `null` when nothing is selected |
//! | `{"form": "CONSTANT", "value": "text"}` | text (a non-string `value` gives that JSON) |
//! | `{"form": "TEMPLATE", "value": {"v": "$.data.v"}, "template": "Hi ${v}"}` | JSON if the rendered template parses as JSON, else text; `value` may also be a string holding that JSON object |
//! | `{"input": "{\"a\": 1}"}` | JSON: the constant (a string must hold JSON text; any other value is used as it is) |
//! | `{"inputPath": "$.data"}` | JSON: the selected value, `null` when nothing is selected |
//! | `{"inputTransformer": {"inputPathsMap": {"n": "$.data.n"}, "inputTemplate": "{\"n\": <n>}"}}` | JSON if the rendered template parses as JSON, else text |
//!
//! Template rendering is described in `docs/rules.md` and in the
//! `template` module; JSONPath handling (RFC 9535, AWS dashed names,
//! `detail`/`data` aliases) in [`EventPath`].

mod path;
mod template;

use std::collections::HashMap;

use serde_json::{Map, Value};

pub use path::{EventPath, MAX_PATH_LEN};

use template::{Syntax, Template, valid_var_name};

/// Most variables one template may define.
pub const MAX_TEMPLATE_VARIABLES: usize = 100;
/// Longest template accepted, in bytes.
pub const MAX_TEMPLATE_LEN: usize = 64 * 1024;

/// Reserved AWS InputTransformer variables.
pub const AWS_RESERVED_VARIABLES: &[&str] = &[
    "aws.events.rule-name",
    "aws.events.rule-arn",
    "aws.events.event",
    "aws.events.event.json",
    "aws.events.event.ingestion-time",
];

/// A validated transform.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// Alibaba `ORIGINAL`: deliver the event unchanged.
    Original,
    /// Alibaba `JSONPATH`: the value at a path.
    JsonPath(EventPath),
    /// Alibaba `CONSTANT`: a fixed value (strings are delivered as text).
    Constant(Value),
    /// Alibaba `TEMPLATE`: `${var}` placeholders filled from paths.
    Template(TemplateTransform),
    /// AWS `Input`: a fixed JSON value.
    Input(Value),
    /// AWS `InputPath`: the value at a path.
    InputPath(EventPath),
    /// AWS `InputTransformer`: `<var>` placeholders filled from paths and
    /// the reserved `aws.events.*` variables.
    InputTransformer(TemplateTransform),
}

/// Variables and template of a `TEMPLATE` or `InputTransformer` transform.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateTransform {
    vars: Vec<(String, EventPath)>,
    template: Template,
}

impl TemplateTransform {
    /// The variables and their paths, in the order given.
    pub fn variables(&self) -> impl Iterator<Item = (&str, &EventPath)> {
        self.vars.iter().map(|(n, p)| (n.as_str(), p))
    }

    fn path_of(&self, name: &str) -> Option<&EventPath> {
        self.vars.iter().find(|(n, _)| n == name).map(|(_, p)| p)
    }
}

/// What a transform knows besides the event.
#[derive(Debug, Clone, Copy)]
pub struct TransformContext<'a> {
    /// The rule's name (`<aws.events.rule-name>`).
    pub rule_name: &'a str,
    /// The rule's id (`<aws.events.rule-arn>`).
    pub rule_id: &'a str,
    /// When the event was ingested, RFC 3339 (`<aws.events.event.ingestion-time>`).
    pub ingestion_time: &'a str,
}

/// The result of a transform.
#[derive(Debug, Clone, PartialEq)]
pub enum TransformOutput {
    /// Deliver the event unchanged.
    Original,
    /// A JSON value (`application/json`).
    Json(Value),
    /// Plain text (`text/plain`).
    Text(String),
}

impl TransformOutput {
    /// The content type of the output; None for [`TransformOutput::Original`].
    pub fn content_type(&self) -> Option<&'static str> {
        match self {
            TransformOutput::Original => None,
            TransformOutput::Json(_) => Some("application/json"),
            TransformOutput::Text(_) => Some("text/plain"),
        }
    }

    /// The output as a JSON value: the event itself for `Original`, the
    /// value for `Json`, a JSON string for `Text`.
    pub fn to_value(&self, event: &Value) -> Value {
        match self {
            TransformOutput::Original => event.clone(),
            TransformOutput::Json(v) => v.clone(),
            TransformOutput::Text(s) => Value::String(s.clone()),
        }
    }
}

/// Why a transform was rejected or could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// The transform definition is invalid: the field (as a dotted path,
    /// e.g. `inputTransformer.inputPathsMap.name`) and the reason.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The transform could not be applied to this event.
    #[error("transform failed: {0}")]
    Failed(String),
}

impl TransformError {
    /// A stable machine-readable code for API responses.
    pub fn code(&self) -> &'static str {
        match self {
            TransformError::Invalid { .. } => "InvalidTransform",
            TransformError::Failed(_) => "TransformFailed",
        }
    }

    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        TransformError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Compact JSON for error messages, cut at 60 characters.
pub(crate) fn show(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 60 {
        let cut: String = text.chars().take(57).collect();
        format!("{cut}...")
    } else {
        text
    }
}

pub(crate) fn show_str(s: &str) -> String {
    show(&Value::String(s.to_string()))
}

/// Transform fields, by canonical name: (name as written, value).
type Fields<'v> = HashMap<&'static str, (&'v str, &'v Value)>;

fn collect_fields<'v>(
    obj: &'v Map<String, Value>,
    prefix: &str,
    allowed: &[&'static str],
) -> Result<Fields<'v>, TransformError> {
    let mut fields = Fields::new();
    for (key, value) in obj {
        let field_path = join(prefix, key);
        let Some(canon) = allowed.iter().find(|a| a.eq_ignore_ascii_case(key)) else {
            let names: Vec<&str> = allowed.to_vec();
            return Err(TransformError::invalid(
                field_path,
                format!("unknown field; expected one of {}", names.join(", ")),
            ));
        };
        if fields.insert(*canon, (key.as_str(), value)).is_some() {
            return Err(TransformError::invalid(
                field_path,
                "given twice (field names are case-insensitive)",
            ));
        }
    }
    Ok(fields)
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn path_field(field: &str, value: &Value) -> Result<EventPath, TransformError> {
    match value {
        Value::String(s) => EventPath::parse(s).map_err(|m| TransformError::invalid(field, m)),
        other => Err(TransformError::invalid(
            field,
            format!(
                "expected a JSONPath string such as \"$.data\", got {}",
                show(other)
            ),
        )),
    }
}

fn template_text<'v>(field: &str, value: &'v Value) -> Result<&'v str, TransformError> {
    match value {
        Value::String(s) if s.len() <= MAX_TEMPLATE_LEN => Ok(s),
        Value::String(_) => Err(TransformError::invalid(
            field,
            format!("template is longer than {MAX_TEMPLATE_LEN} bytes"),
        )),
        other => Err(TransformError::invalid(
            field,
            format!("expected a template string, got {}", show(other)),
        )),
    }
}

/// Parses a map of variable name -> JSONPath.
fn variables(
    field: &str,
    map: &Map<String, Value>,
    reserved_prefix: Option<&str>,
) -> Result<Vec<(String, EventPath)>, TransformError> {
    if map.len() > MAX_TEMPLATE_VARIABLES {
        return Err(TransformError::invalid(
            field,
            format!("at most {MAX_TEMPLATE_VARIABLES} variables may be defined"),
        ));
    }
    let mut vars = Vec::with_capacity(map.len());
    for (name, path) in map {
        let var_field = join(field, name);
        if !valid_var_name(name) {
            return Err(TransformError::invalid(
                var_field,
                "variable names are 1-256 characters of A-Z a-z 0-9 _ - .",
            ));
        }
        if let Some(prefix) = reserved_prefix
            && name.starts_with(prefix)
        {
            return Err(TransformError::invalid(
                var_field,
                format!("variable names starting with \"{prefix}\" are reserved"),
            ));
        }
        vars.push((name.clone(), path_field(&var_field, path)?));
    }
    Ok(vars)
}

const ALIBABA_FIELDS: &[&str] = &["form", "value", "template"];
const AWS_FIELDS: &[&str] = &["input", "inputPath", "inputTransformer"];

impl Transform {
    /// Parses and validates a transform in the Alibaba or the AWS
    /// vocabulary. Errors name the field and the reason.
    pub fn parse(value: &Value) -> Result<Transform, TransformError> {
        let Value::Object(obj) = value else {
            return Err(TransformError::invalid(
                "transform",
                format!("must be a JSON object, got {}", show(value)),
            ));
        };
        let all: Vec<&'static str> = ALIBABA_FIELDS.iter().chain(AWS_FIELDS).copied().collect();
        let fields = collect_fields(obj, "", &all)?;
        let aws: Vec<&'static str> = AWS_FIELDS
            .iter()
            .copied()
            .filter(|f| fields.contains_key(f))
            .collect();
        let alibaba: Vec<&'static str> = ALIBABA_FIELDS
            .iter()
            .copied()
            .filter(|f| fields.contains_key(f))
            .collect();
        let written = |canon: &str| fields.get(canon).map_or(canon, |(w, _)| *w).to_string();
        match (alibaba.is_empty(), aws.as_slice()) {
            (true, []) => Err(TransformError::invalid(
                "transform",
                "empty: expected `form` (Alibaba) or one of `input`, `inputPath`, `inputTransformer` (AWS)",
            )),
            (false, []) => Self::parse_alibaba(&fields),
            (true, [one]) => Self::parse_aws(one, &fields),
            (true, [_, second, ..]) => Err(TransformError::invalid(
                written(second),
                "only one of input, inputPath and inputTransformer may be given",
            )),
            (false, [first, ..]) => Err(TransformError::invalid(
                written(first),
                format!(
                    "cannot be combined with `{}`: use either the Alibaba (form/value/template) or the AWS (input/inputPath/inputTransformer) vocabulary",
                    written(alibaba[0])
                ),
            )),
        }
    }

    fn parse_alibaba(fields: &Fields<'_>) -> Result<Transform, TransformError> {
        let Some((form_key, form)) = fields.get("form") else {
            return Err(TransformError::invalid(
                "form",
                "missing: Alibaba transforms need `form` (ORIGINAL, JSONPATH, CONSTANT or TEMPLATE)",
            ));
        };
        let Some(form_name) = form.as_str() else {
            return Err(TransformError::invalid(
                *form_key,
                format!(
                    "expected ORIGINAL, JSONPATH, CONSTANT or TEMPLATE, got {}",
                    show(form)
                ),
            ));
        };
        let value = fields.get("value");
        let template = fields.get("template");
        let need_value = |form: &str| {
            value.copied().ok_or_else(|| {
                TransformError::invalid("value", format!("missing: form {form} needs `value`"))
            })
        };
        let no_template = |form: &str| match template {
            Some((key, _)) => Err(TransformError::invalid(
                *key,
                format!("form {form} takes no template (only TEMPLATE does)"),
            )),
            None => Ok(()),
        };
        match form_name.to_ascii_uppercase().as_str() {
            "ORIGINAL" => {
                no_template("ORIGINAL")?;
                Ok(Transform::Original)
            }
            "JSONPATH" => {
                no_template("JSONPATH")?;
                let (key, v) = need_value("JSONPATH")?;
                Ok(Transform::JsonPath(path_field(key, v)?))
            }
            "CONSTANT" => {
                no_template("CONSTANT")?;
                let (_, v) = need_value("CONSTANT")?;
                Ok(Transform::Constant(v.clone()))
            }
            "TEMPLATE" => {
                let (value_key, v) = need_value("TEMPLATE")?;
                let Some((template_key, t)) = template.copied() else {
                    return Err(TransformError::invalid(
                        "template",
                        "missing: form TEMPLATE needs `template`",
                    ));
                };
                let parsed;
                let map = match v {
                    Value::Object(map) => map,
                    Value::String(s) => {
                        parsed = serde_json::from_str::<Value>(s).ok();
                        match &parsed {
                            Some(Value::Object(map)) => map,
                            _ => {
                                return Err(TransformError::invalid(
                                    value_key,
                                    "expected an object of variable name to JSONPath, or a string holding one as JSON",
                                ));
                            }
                        }
                    }
                    other => {
                        return Err(TransformError::invalid(
                            value_key,
                            format!(
                                "expected an object of variable name to JSONPath, got {}",
                                show(other)
                            ),
                        ));
                    }
                };
                let vars = variables(value_key, map, None)?;
                let text = template_text(template_key, t)?;
                let template = Template::parse(text, Syntax::Alibaba, |name| {
                    vars.iter().any(|(n, _)| n == name)
                })
                .map_err(|m| TransformError::invalid(template_key, m))?;
                Ok(Transform::Template(TemplateTransform { vars, template }))
            }
            _ => Err(TransformError::invalid(
                *form_key,
                format!(
                    "unknown form {}; expected ORIGINAL, JSONPATH, CONSTANT or TEMPLATE",
                    show(form)
                ),
            )),
        }
    }

    fn parse_aws(which: &str, fields: &Fields<'_>) -> Result<Transform, TransformError> {
        let Some((key, value)) = fields.get(which).copied() else {
            return Err(TransformError::invalid(which, "missing"));
        };
        match which {
            "input" => match value {
                Value::String(s) => serde_json::from_str::<Value>(s)
                    .map(Transform::Input)
                    .map_err(|e| {
                        TransformError::invalid(
                            key,
                            format!("must be valid JSON text (AWS Input): {e}"),
                        )
                    }),
                other => Ok(Transform::Input(other.clone())),
            },
            "inputPath" => Ok(Transform::InputPath(path_field(key, value)?)),
            _ => {
                let Value::Object(obj) = value else {
                    return Err(TransformError::invalid(
                        key,
                        format!(
                            "expected an object with inputPathsMap and inputTemplate, got {}",
                            show(value)
                        ),
                    ));
                };
                let inner = collect_fields(obj, key, &["inputPathsMap", "inputTemplate"])?;
                let vars = match inner.get("inputPathsMap") {
                    None => Vec::new(),
                    Some((map_key, Value::Object(map))) => {
                        variables(&join(key, map_key), map, Some("aws."))?
                    }
                    Some((map_key, other)) => {
                        return Err(TransformError::invalid(
                            join(key, map_key),
                            format!(
                                "expected an object of variable name to JSONPath, got {}",
                                show(other)
                            ),
                        ));
                    }
                };
                let Some((template_key, t)) = inner.get("inputTemplate").copied() else {
                    return Err(TransformError::invalid(
                        join(key, "inputTemplate"),
                        "missing: InputTransformer needs an inputTemplate",
                    ));
                };
                let template_field = join(key, template_key);
                let text = template_text(&template_field, t)?;
                let template = Template::parse(text, Syntax::Aws, |name| {
                    AWS_RESERVED_VARIABLES.contains(&name) || vars.iter().any(|(n, _)| n == name)
                })
                .map_err(|m| TransformError::invalid(&template_field, m))?;
                Ok(Transform::InputTransformer(TemplateTransform {
                    vars,
                    template,
                }))
            }
        }
    }

    /// Applies the transform to an event (CloudEvent JSON form or an
    /// AWS-shaped event).
    pub fn apply(
        &self,
        event: &Value,
        ctx: &TransformContext<'_>,
    ) -> Result<TransformOutput, TransformError> {
        Ok(match self {
            Transform::Original => TransformOutput::Original,
            Transform::JsonPath(path) | Transform::InputPath(path) => {
                TransformOutput::Json(path.query(event).unwrap_or(Value::Null))
            }
            Transform::Constant(Value::String(s)) => TransformOutput::Text(s.clone()),
            Transform::Constant(v) | Transform::Input(v) => TransformOutput::Json(v.clone()),
            Transform::Template(t) => t
                .template
                .render(|name| t.path_of(name).and_then(|p| p.query(event))),
            Transform::InputTransformer(t) => t.template.render(|name| match name {
                "aws.events.rule-name" => Some(Value::String(ctx.rule_name.to_string())),
                "aws.events.rule-arn" => Some(Value::String(ctx.rule_id.to_string())),
                "aws.events.event" | "aws.events.event.json" => Some(event.clone()),
                "aws.events.event.ingestion-time" => {
                    Some(Value::String(ctx.ingestion_time.to_string()))
                }
                _ => t.path_of(name).and_then(|p| p.query(event)),
            }),
        })
    }
}
