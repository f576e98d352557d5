//! JSONPath over events (RFC 9535 through `serde_json_path`), with the
//! AWS conveniences Strait promises:
//!
//! * dot notation accepts any member name without `.`, `[`, `]`, quotes or
//!   blanks, e.g. `$.detail.instance-id` (RFC 9535 would need
//!   `$.detail['instance-id']`); such names are rewritten to bracket form;
//! * a first segment `detail` / `data` / `detail-type` / `type` reads its
//!   counterpart when the event lacks the named member, so AWS paths work
//!   on CloudEvents and the reverse.

use serde_json::Value;
use serde_json_path::JsonPath;

/// Longest JSONPath accepted, in bytes.
pub const MAX_PATH_LEN: usize = 1024;
/// Deepest bracket/parenthesis nesting accepted in a JSONPath.
const MAX_PATH_NESTING: usize = 16;

/// A compiled JSONPath into an event.
#[derive(Debug, Clone)]
pub struct EventPath {
    text: String,
    query: JsonPath,
    /// (member the path starts with, its counterpart, the path reading the counterpart)
    alias: Option<(String, String, JsonPath)>,
    singular: bool,
}

impl PartialEq for EventPath {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl EventPath {
    /// Parses a JSONPath; the error is a reason without the field name.
    pub fn parse(text: &str) -> Result<EventPath, String> {
        let trimmed = text.trim();
        if trimmed.len() > MAX_PATH_LEN {
            return Err(format!("JSONPath is longer than {MAX_PATH_LEN} bytes"));
        }
        if !trimmed.starts_with('$') {
            return Err(format!(
                "a JSONPath must start with `$`, got {}",
                super::show_str(trimmed)
            ));
        }
        let norm = normalize(trimmed)?;
        let query = JsonPath::parse(&norm.text)
            .map_err(|e| format!("invalid JSONPath {}: {e}", super::show_str(trimmed)))?;
        let alias = match (&norm.first, norm.first_end) {
            (Some(first), Some(end)) => match counterpart(first) {
                Some(other) => {
                    let alias_text = format!("$['{other}']{}", &norm.text[end..]);
                    let alias_query = JsonPath::parse(&alias_text).map_err(|e| {
                        format!("invalid JSONPath {}: {e}", super::show_str(trimmed))
                    })?;
                    Some((first.clone(), other.to_string(), alias_query))
                }
                None => None,
            },
            _ => None,
        };
        Ok(EventPath {
            text: trimmed.to_string(),
            query,
            alias,
            singular: norm.singular,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Does the path select at most one node (only names and indexes)?
    pub fn is_singular(&self) -> bool {
        self.singular
    }

    /// Evaluates the path. A singular path gives its node, or None when it
    /// selects nothing. Any other path (wildcards, slices, filters,
    /// descendants) gives an array of every node selected, or None when it
    /// selects nothing.
    pub fn query(&self, event: &Value) -> Option<Value> {
        let query = match (&self.alias, event.as_object()) {
            (Some((first, other, alias)), Some(obj))
                if !obj.contains_key(first.as_str()) && obj.contains_key(other.as_str()) =>
            {
                alias
            }
            _ => &self.query,
        };
        let nodes = query.query(event);
        if self.singular {
            nodes.first().cloned()
        } else if nodes.is_empty() {
            None
        } else {
            Some(Value::Array(nodes.iter().map(|v| (*v).clone()).collect()))
        }
    }
}

fn counterpart(name: &str) -> Option<&'static str> {
    match name {
        "detail" => Some("data"),
        "data" => Some("detail"),
        "detail-type" => Some("type"),
        "type" => Some("detail-type"),
        _ => None,
    }
}

struct Normalized {
    text: String,
    /// Name of the first segment when it is a plain member name.
    first: Option<String>,
    /// Byte offset in `text` just after the first segment.
    first_end: Option<usize>,
    singular: bool,
}

fn is_shorthand(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || !c.is_ascii());
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || !c.is_ascii())
}

fn quote_name(name: &str) -> String {
    let mut out = String::from("['");
    for c in name.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push_str("']");
    out
}

fn ends_dot_name(c: char) -> bool {
    matches!(
        c,
        '.' | '[' | ']' | '\'' | '"' | '(' | ')' | '?' | ',' | '=' | '!' | '<' | '>' | '&' | '|'
    ) || c.is_whitespace()
}

/// Rewrites dot-notation names that RFC 9535 shorthand does not allow into
/// bracket notation, and finds the first segment and whether the path is
/// singular. Bracket segments are copied as they are.
fn normalize(src: &str) -> Result<Normalized, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len() + 8);
    let mut singular = true;
    let mut first: Option<String> = None;
    let mut first_end: Option<usize> = None;
    let mut segments = 0usize;
    let mut i = 1; // after '$'
    out.push('$');
    while i < chars.len() {
        let c = chars[i];
        if c == '.' {
            let descendant = chars.get(i + 1) == Some(&'.');
            if descendant {
                singular = false;
                out.push_str("..");
                i += 2;
            } else {
                i += 1;
            }
            if chars.get(i) == Some(&'*') {
                singular = false;
                if !descendant {
                    out.push('.');
                }
                out.push('*');
                i += 1;
            } else if chars.get(i) == Some(&'[') && descendant {
                // `..[...]` is handled by the bracket branch below.
            } else {
                let start = i;
                while i < chars.len() && !ends_dot_name(chars[i]) {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                if name.is_empty() {
                    return Err(format!(
                        "empty member name in JSONPath {}",
                        super::show_str(src)
                    ));
                }
                if descendant {
                    out.push_str(&quote_name(&name));
                } else if is_shorthand(&name) {
                    out.push('.');
                    out.push_str(&name);
                } else {
                    out.push_str(&quote_name(&name));
                }
                if segments == 0 && !descendant {
                    first = Some(name);
                    first_end = Some(out.len());
                }
            }
            segments += 1;
        } else if c == '[' {
            let start = i;
            let mut depth = 0usize;
            let mut quote: Option<char> = None;
            while i < chars.len() {
                let ch = chars[i];
                if let Some(q) = quote {
                    if ch == '\\' {
                        i += 1;
                    } else if ch == q {
                        quote = None;
                    }
                } else {
                    match ch {
                        '\'' | '"' => quote = Some(ch),
                        '[' | '(' => {
                            depth += 1;
                            if depth > MAX_PATH_NESTING {
                                return Err(format!(
                                    "JSONPath nests brackets deeper than {MAX_PATH_NESTING} levels"
                                ));
                            }
                        }
                        ']' | ')' => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                i += 1;
            }
            let end = (i + 1).min(chars.len());
            let seg: String = chars[start..end].iter().collect();
            i = end;
            out.push_str(&seg);
            let inner = seg
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .map(str::trim);
            match inner.and_then(simple_bracket) {
                Some(Bracket::Name(name)) => {
                    if segments == 0 {
                        first = Some(name);
                        first_end = Some(out.len());
                    }
                }
                Some(Bracket::Index) => {}
                None => singular = false,
            }
            segments += 1;
        } else {
            // Blanks and anything else go through; the JSONPath parser
            // reports real syntax errors.
            out.push(c);
            i += 1;
        }
    }
    Ok(Normalized {
        text: out,
        first,
        first_end,
        singular,
    })
}

enum Bracket {
    Name(String),
    Index,
}

/// `'name'`, `"name"` (without escapes) or an integer index.
fn simple_bracket(inner: &str) -> Option<Bracket> {
    for q in ['\'', '"'] {
        if let Some(body) = inner.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            if body.contains(q) || body.contains('\\') {
                return None;
            }
            return Some(Bracket::Name(body.to_string()));
        }
    }
    let digits = inner.strip_prefix('-').unwrap_or(inner);
    if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
        return Some(Bracket::Index);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(path: &str, event: &Value) -> Option<Value> {
        EventPath::parse(path).expect("valid path").query(event)
    }

    #[test]
    fn dashes_and_aliases() {
        let aws = json!({"detail-type": "T", "detail": {"instance-id": "i-1", "a": [1, 2]}});
        let ce = json!({"type": "T", "data": {"instance-id": "i-1", "a": [1, 2]}});
        for ev in [&aws, &ce] {
            assert_eq!(q("$.detail.instance-id", ev), Some(json!("i-1")));
            assert_eq!(q("$.data.instance-id", ev), Some(json!("i-1")));
            assert_eq!(q("$['detail']['instance-id']", ev), Some(json!("i-1")));
            assert_eq!(q("$.detail-type", ev), Some(json!("T")));
            assert_eq!(q("$.type", ev), Some(json!("T")));
            assert_eq!(q("$.detail.a[1]", ev), Some(json!(2)));
            assert_eq!(q("$.detail.a[*]", ev), Some(json!([1, 2])));
            assert_eq!(q("$.detail.nope", ev), None);
            assert_eq!(q("$..nope", ev), None);
        }
        assert_eq!(q("$", &ce), Some(ce.clone()));
    }

    #[test]
    fn singular_detection() {
        for (p, s) in [
            ("$", true),
            ("$.a.b", true),
            ("$.a[0]", true),
            ("$['a']", true),
            ("$.a[*]", false),
            ("$.a.*", false),
            ("$..a", false),
            ("$.a[0:2]", false),
            ("$.a[?@.b == 1]", false),
        ] {
            assert_eq!(EventPath::parse(p).expect("valid").is_singular(), s, "{p}");
        }
    }

    #[test]
    fn rejects() {
        assert!(EventPath::parse("data.x").is_err());
        assert!(EventPath::parse("$.").is_err());
        assert!(EventPath::parse("$[").is_err());
        assert!(EventPath::parse(&format!("${}", "[(".repeat(40))).is_err());
        assert!(EventPath::parse(&format!("$.{}", "a".repeat(2000))).is_err());
    }
}
