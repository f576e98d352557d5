//! Templates with variables: AWS `<name>` and Alibaba `${name}`.
//!
//! A template is split into literal text and placeholders. Each placeholder
//! remembers whether it sits inside a JSON string literal of the template
//! (the template text is scanned for `"` with `\` escapes). Rendering makes
//! two candidates:
//!
//! * the JSON rendering: inside quotes a string value goes in JSON-escaped
//!   without quotes and other values go in as their escaped JSON text;
//!   outside quotes values go in as JSON (AWS) or strings raw and other
//!   values as JSON (Alibaba);
//! * the text rendering: strings raw, other values as JSON text.
//!
//! If the JSON rendering parses as JSON, the output is that JSON value;
//! otherwise it is the text rendering as plain text.

use serde_json::Value;

use super::TransformOutput;

/// Which placeholder syntax and substitution rules a template follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Syntax {
    /// `<name>`; a missing value is `null` outside quotes and empty inside.
    Aws,
    /// `${name}`; a missing value is `null`; strings go in raw outside quotes.
    Alibaba,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Var { name: String, in_string: bool },
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Template {
    syntax: Syntax,
    parts: Vec<Part>,
}

/// Longest placeholder name looked for.
const MAX_NAME: usize = 256;

pub(crate) fn valid_var_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// If a placeholder starts at `i`, its name and its length in chars.
fn placeholder_at(chars: &[char], i: usize, syntax: Syntax) -> Option<(String, usize)> {
    let (open_len, close) = match syntax {
        Syntax::Aws if chars.get(i) == Some(&'<') => (1, '>'),
        Syntax::Alibaba if chars.get(i) == Some(&'$') && chars.get(i + 1) == Some(&'{') => (2, '}'),
        _ => return None,
    };
    let start = i + open_len;
    let end = chars
        .iter()
        .skip(start)
        .take(MAX_NAME + 1)
        .position(|c| *c == close)?
        + start;
    let name: String = chars[start..end].iter().collect();
    valid_var_name(&name).then_some((name, end + 1 - i))
}

impl Template {
    /// Parses `text`. `accept` decides which names are variables: for AWS
    /// an unknown `<name>` stays literal text (templates may be XML or
    /// HTML); for Alibaba an unknown `${name}` is an error.
    pub(crate) fn parse(
        text: &str,
        syntax: Syntax,
        accept: impl Fn(&str) -> bool,
    ) -> Result<Template, String> {
        let chars: Vec<char> = text.chars().collect();
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut in_string = false;
        let mut escaped = false;
        let mut i = 0;
        while i < chars.len() {
            if let Some((name, len)) = placeholder_at(&chars, i, syntax) {
                if accept(&name) {
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Var { name, in_string });
                    escaped = false;
                    i += len;
                    continue;
                }
                if syntax == Syntax::Alibaba {
                    return Err(format!(
                        "template uses ${{{name}}} but no variable \"{name}\" is defined in value"
                    ));
                }
            }
            let c = chars[i];
            if in_string {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
            } else if c == '"' {
                in_string = true;
            }
            lit.push(c);
            i += 1;
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template { syntax, parts })
    }

    /// Substitutes values (`None`: the variable's path selected nothing).
    pub(crate) fn render(&self, value_of: impl Fn(&str) -> Option<Value>) -> TransformOutput {
        let mut json = String::new();
        let mut text = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => {
                    json.push_str(s);
                    text.push_str(s);
                }
                Part::Var { name, in_string } => {
                    let value = value_of(name);
                    let value = match (self.syntax, value) {
                        (Syntax::Alibaba, None) => Some(Value::Null),
                        (_, v) => v,
                    };
                    match (&value, *in_string) {
                        (None, true) => {}
                        (None, false) => json.push_str("null"),
                        (Some(Value::String(s)), true) => json.push_str(&escape(s)),
                        (Some(v), true) => json.push_str(&escape(&v.to_string())),
                        (Some(Value::String(s)), false) if self.syntax == Syntax::Alibaba => {
                            json.push_str(s)
                        }
                        (Some(v), false) => json.push_str(&v.to_string()),
                    }
                    match &value {
                        None => {}
                        Some(Value::String(s)) => text.push_str(s),
                        Some(v) => text.push_str(&v.to_string()),
                    }
                }
            }
        }
        match serde_json::from_str::<Value>(&json) {
            Ok(v) => TransformOutput::Json(v),
            Err(_) => TransformOutput::Text(text),
        }
    }
}

/// The inside of a JSON string literal for `s`.
fn escape(s: &str) -> String {
    let quoted = Value::String(s.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn aws(t: &str, vars: &[(&str, Value)]) -> TransformOutput {
        let tpl =
            Template::parse(t, Syntax::Aws, |n| vars.iter().any(|(k, _)| *k == n)).expect("parses");
        tpl.render(|n| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone()))
    }

    #[test]
    fn quote_tracking() {
        let out = aws(
            r#"{"a": <s>, "b": "x \"<s>\" y", "c": "<n>", "d": <n>}"#,
            &[("s", json!("q\"uote")), ("n", json!(5))],
        );
        assert_eq!(
            out,
            TransformOutput::Json(
                json!({"a": "q\"uote", "b": "x \"q\"uote\" y", "c": "5", "d": 5})
            )
        );
    }

    #[test]
    fn unknown_aws_placeholders_stay() {
        assert_eq!(
            aws("<b>bold</b> <s>", &[("s", json!("x"))]),
            TransformOutput::Text("<b>bold</b> x".to_string())
        );
    }

    #[test]
    fn alibaba_unknown_is_error() {
        assert!(Template::parse("hi ${who}", Syntax::Alibaba, |_| false).is_err());
        // not a placeholder: stays literal
        let t = Template::parse("cost ${ 5", Syntax::Alibaba, |_| false).expect("parses");
        assert_eq!(
            t.render(|_| None),
            TransformOutput::Text("cost ${ 5".to_string())
        );
    }
}
