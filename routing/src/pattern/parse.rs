//! Pattern parsing and validation.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::matcher::{AnythingBut, Matcher, Range, Scalar, Wildcard, fold, show, show_str};
use super::{
    Field, MAX_PATTERN_BYTES, MAX_PATTERN_DEPTH, MAX_PATTERN_ELEMENTS, MAX_PATTERN_WILDCARDS, Node,
    PatternError,
};

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[derive(Default)]
struct Parser {
    elements: usize,
    bytes: usize,
    wildcards: usize,
}

pub(crate) fn parse_pattern(value: &Value) -> Result<Node, PatternError> {
    let Value::Object(obj) = value else {
        return Err(PatternError::new(
            "$",
            format!("a pattern must be a JSON object, got {}", show(value)),
        ));
    };
    Parser::default().node(obj, "", 1, true)
}

impl Parser {
    fn count(&mut self, path: &str, elements: usize, bytes: usize) -> Result<(), PatternError> {
        self.elements += elements;
        self.bytes += bytes;
        if self.elements > MAX_PATTERN_ELEMENTS {
            return Err(PatternError::new(
                path,
                format!(
                    "pattern is too large: more than {MAX_PATTERN_ELEMENTS} fields, matchers and list entries"
                ),
            ));
        }
        if self.bytes > MAX_PATTERN_BYTES {
            return Err(PatternError::new(
                path,
                format!(
                    "pattern is too large: more than {MAX_PATTERN_BYTES} bytes of keys and strings"
                ),
            ));
        }
        Ok(())
    }

    fn node(
        &mut self,
        obj: &Map<String, Value>,
        path: &str,
        depth: usize,
        allow_empty: bool,
    ) -> Result<Node, PatternError> {
        if depth > MAX_PATTERN_DEPTH {
            return Err(PatternError::new(
                path,
                format!("pattern nests deeper than {MAX_PATTERN_DEPTH} levels"),
            ));
        }
        if obj.is_empty() && !allow_empty {
            return Err(PatternError::new(
                path,
                "empty object: a nested pattern needs at least one field",
            ));
        }
        let mut node = Node::default();
        for (key, value) in obj {
            let key_path = join(path, key);
            self.count(&key_path, 1, key.len())?;
            if key == "$or" {
                node.ors.push(self.or_group(value, &key_path, depth)?);
                continue;
            }
            let field = match value {
                Value::Array(items) => Field::Leaf(self.leaf(items, &key_path)?),
                Value::Object(inner) => {
                    Field::Nested(self.node(inner, &key_path, depth + 1, false)?)
                }
                other => {
                    return Err(PatternError::new(
                        key_path,
                        format!(
                            "expected an array of matchers or a nested object, got {}",
                            show(other)
                        ),
                    ));
                }
            };
            node.fields.push((key.clone(), field));
        }
        Ok(node)
    }

    fn or_group(
        &mut self,
        value: &Value,
        path: &str,
        depth: usize,
    ) -> Result<Vec<Node>, PatternError> {
        let Value::Array(branches) = value else {
            return Err(PatternError::new(
                path,
                format!(
                    "$or expects an array of pattern objects, got {}",
                    show(value)
                ),
            ));
        };
        if branches.len() < 2 {
            return Err(PatternError::new(
                path,
                format!(
                    "$or needs at least two pattern objects (alternatives), got {}; with one, write its fields without $or",
                    branches.len()
                ),
            ));
        }
        let mut nodes = Vec::with_capacity(branches.len());
        for (i, branch) in branches.iter().enumerate() {
            let branch_path = format!("{path}[{i}]");
            self.count(&branch_path, 1, 0)?;
            let Value::Object(obj) = branch else {
                return Err(PatternError::new(
                    branch_path,
                    format!("$or branches must be pattern objects, got {}", show(branch)),
                ));
            };
            nodes.push(self.node(obj, &branch_path, depth + 1, false)?);
        }
        Ok(nodes)
    }

    fn leaf(&mut self, items: &[Value], path: &str) -> Result<Vec<Matcher>, PatternError> {
        if items.is_empty() {
            return Err(PatternError::new(
                path,
                "empty array: a field needs at least one value or matcher",
            ));
        }
        items.iter().map(|item| self.matcher(item, path)).collect()
    }

    fn matcher(&mut self, item: &Value, path: &str) -> Result<Matcher, PatternError> {
        self.count(path, 1, 0)?;
        match item {
            Value::Array(_) => Err(PatternError::new(
                path,
                format!(
                    "nested arrays are not allowed in a matcher list, got {}",
                    show(item)
                ),
            )),
            Value::Object(op) => self.operator(op, path),
            scalar => {
                if let Value::String(s) = scalar {
                    self.count(path, 0, s.len())?;
                }
                Scalar::from_value(scalar)
                    .map(Matcher::Exact)
                    .ok_or_else(|| {
                        PatternError::new(path, format!("unsupported value {}", show(item)))
                    })
            }
        }
    }

    fn text<'v>(&mut self, path: &str, op: &str, arg: &'v Value) -> Result<&'v str, PatternError> {
        match arg {
            Value::String(s) => {
                self.count(path, 0, s.len())?;
                Ok(s)
            }
            other => Err(PatternError::new(
                path,
                format!("{op} expects a string, got {}", show(other)),
            )),
        }
    }

    fn operator(&mut self, obj: &Map<String, Value>, path: &str) -> Result<Matcher, PatternError> {
        let mut entries = obj.iter();
        let (op, arg) = match (entries.next(), obj.len()) {
            (Some(entry), 1) => entry,
            (None, _) => {
                return Err(PatternError::new(
                    path,
                    "empty object is not a matcher; expected an operator such as {\"prefix\": \"...\"}",
                ));
            }
            (Some(_), n) => {
                let names: Vec<String> = obj.keys().map(|k| show_str(k)).collect();
                return Err(PatternError::new(
                    path,
                    format!(
                        "a matcher object takes exactly one operator, got {n}: {}",
                        names.join(", ")
                    ),
                ));
            }
        };
        match op.as_str() {
            "prefix" => Ok(match self.affix(arg, path, "prefix")? {
                (s, false) => Matcher::Prefix(s),
                (s, true) => Matcher::PrefixIgnoreCase(s),
            }),
            "suffix" => Ok(match self.affix(arg, path, "suffix")? {
                (s, false) => Matcher::Suffix(s),
                (s, true) => Matcher::SuffixIgnoreCase(s),
            }),
            "equals-ignore-case" => {
                let s = self.text(path, op, arg)?;
                Ok(Matcher::EqualsIgnoreCase(fold(s).into_owned()))
            }
            "wildcard" => {
                let s = self.text(path, op, arg)?;
                Ok(Matcher::Wildcard(self.wildcard(s, path)?))
            }
            "anything-but" => self.anything_but(arg, path).map(Matcher::AnythingBut),
            "numeric" => numeric(arg)
                .map(Matcher::Numeric)
                .map_err(|m| PatternError::new(path, m)),
            "cidr" => {
                let s = self.text(path, op, arg)?;
                cidr(s)
                    .map(Matcher::Cidr)
                    .map_err(|m| PatternError::new(path, m))
            }
            "exists" => match arg {
                Value::Bool(b) => Ok(Matcher::Exists(*b)),
                other => Err(PatternError::new(
                    path,
                    format!("exists expects true or false, got {}", show(other)),
                )),
            },
            "contains" => match arg {
                Value::Array(_) | Value::Object(_) => Err(PatternError::new(
                    path,
                    format!(
                        "contains expects a string, number, boolean or null, got {}",
                        show(arg)
                    ),
                )),
                scalar => {
                    if let Value::String(s) = scalar {
                        self.count(path, 0, s.len())?;
                    }
                    Scalar::from_value(scalar)
                        .map(Matcher::Contains)
                        .ok_or_else(|| {
                            PatternError::new(path, format!("unsupported value {}", show(scalar)))
                        })
                }
            },
            other => Err(PatternError::new(
                path,
                format!("unknown operator {}", show_str(other)),
            )),
        }
    }

    /// `prefix`/`suffix` operand: a string, or `{"equals-ignore-case": s}`.
    /// Returns the operand (lower-cased when ignoring case) and that flag.
    fn affix(&mut self, arg: &Value, path: &str, op: &str) -> Result<(String, bool), PatternError> {
        let bad = || {
            PatternError::new(
                path,
                format!(
                    "{op} expects a string or {{\"equals-ignore-case\": string}}, got {}",
                    show(arg)
                ),
            )
        };
        match arg {
            Value::String(s) => {
                self.count(path, 0, s.len())?;
                Ok((s.clone(), false))
            }
            Value::Object(inner) if inner.len() == 1 => match inner.get("equals-ignore-case") {
                Some(Value::String(s)) => {
                    self.count(path, 0, s.len())?;
                    Ok((fold(s).into_owned(), true))
                }
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }

    fn wildcard(&mut self, s: &str, path: &str) -> Result<Wildcard, PatternError> {
        let w = Wildcard::parse(s).map_err(|m| PatternError::new(path, m))?;
        self.wildcards += w.stars();
        if self.wildcards > MAX_PATTERN_WILDCARDS {
            return Err(PatternError::new(
                path,
                format!(
                    "too many wildcards: a pattern may use at most {MAX_PATTERN_WILDCARDS} `*` in total"
                ),
            ));
        }
        Ok(w)
    }

    fn anything_but(&mut self, arg: &Value, path: &str) -> Result<AnythingBut, PatternError> {
        let usage = "anything-but expects a string, a number, a list of strings or of numbers, or an object with prefix, suffix, equals-ignore-case or wildcard";
        match arg {
            Value::String(s) => {
                self.count(path, 0, s.len())?;
                Ok(AnythingBut::Values(vec![Scalar::Str(s.clone())]))
            }
            Value::Number(_) => Ok(AnythingBut::Values(
                Scalar::from_value(arg).into_iter().collect(),
            )),
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(PatternError::new(
                        path,
                        "anything-but list must not be empty",
                    ));
                }
                let all_strings = items.iter().all(Value::is_string);
                let all_numbers = items.iter().all(Value::is_number);
                if !all_strings && !all_numbers {
                    return Err(PatternError::new(
                        path,
                        format!(
                            "anything-but list must contain only strings or only numbers, got {}",
                            show(arg)
                        ),
                    ));
                }
                let mut values = Vec::with_capacity(items.len());
                for item in items {
                    let bytes = item.as_str().map_or(0, str::len);
                    self.count(path, 1, bytes)?;
                    values.extend(Scalar::from_value(item));
                }
                Ok(AnythingBut::Values(values))
            }
            Value::Object(obj) => {
                let mut entries = obj.iter();
                let (op, operand) = match (entries.next(), obj.len()) {
                    (Some(entry), 1) => entry,
                    _ => {
                        return Err(PatternError::new(
                            path,
                            format!("{usage}; got {}", show(arg)),
                        ));
                    }
                };
                if !matches!(
                    op.as_str(),
                    "prefix" | "suffix" | "equals-ignore-case" | "wildcard"
                ) {
                    return Err(PatternError::new(
                        path,
                        format!(
                            "anything-but supports prefix, suffix, equals-ignore-case and wildcard, got {}",
                            show_str(op)
                        ),
                    ));
                }
                let strings: Vec<&str> = match operand {
                    Value::String(s) => vec![s.as_str()],
                    Value::Array(items)
                        if !items.is_empty() && items.iter().all(Value::is_string) =>
                    {
                        items.iter().filter_map(Value::as_str).collect()
                    }
                    other => {
                        return Err(PatternError::new(
                            path,
                            format!(
                                "anything-but {op} expects a string or a non-empty list of strings, got {}",
                                show(other)
                            ),
                        ));
                    }
                };
                for s in &strings {
                    self.count(path, 1, s.len())?;
                }
                let owned = || strings.iter().map(|s| s.to_string()).collect();
                Ok(match op.as_str() {
                    "prefix" => AnythingBut::Prefix(owned()),
                    "suffix" => AnythingBut::Suffix(owned()),
                    "equals-ignore-case" => AnythingBut::EqualsIgnoreCase(
                        strings.iter().map(|s| fold(s).into_owned()).collect(),
                    ),
                    _ => {
                        let mut ws = Vec::with_capacity(strings.len());
                        for s in &strings {
                            ws.push(self.wildcard(s, path)?);
                        }
                        AnythingBut::Wildcard(ws)
                    }
                })
            }
            other => Err(PatternError::new(
                path,
                format!("{usage}; got {}", show(other)),
            )),
        }
    }
}

fn numeric(arg: &Value) -> Result<Range, String> {
    let usage = "numeric expects an array such as [\">\", 0, \"<=\", 5] or [\"=\", 3]";
    let items = match arg {
        Value::Array(items) if !items.is_empty() => items,
        other => return Err(format!("{usage}, got {}", show(other))),
    };
    if items.len() > 4 {
        return Err(format!(
            "numeric takes at most two comparisons (a lower and an upper bound), got {}",
            show(arg)
        ));
    }
    let mut range = Range {
        lower: None,
        upper: None,
    };
    for chunk in items.chunks(2) {
        let op = match &chunk[0] {
            Value::String(op) => op.as_str(),
            other => {
                return Err(format!(
                    "numeric expects an operator (\"=\", \"<\", \"<=\", \">\" or \">=\"), got {}",
                    show(other)
                ));
            }
        };
        let bound = match chunk.get(1) {
            Some(Value::Number(n)) => n.as_f64(),
            _ => None,
        };
        let Some(bound) = bound else {
            let got = chunk.get(1).map_or_else(|| "nothing".to_string(), show);
            return Err(format!(
                "numeric expects an operator followed by a number, got {got}"
            ));
        };
        match op {
            "=" => {
                if items.len() != 2 {
                    return Err(
                        "numeric \"=\" cannot be combined with other comparisons".to_string()
                    );
                }
                range.lower = Some((bound, true));
                range.upper = Some((bound, true));
            }
            ">" | ">=" => {
                if range.lower.is_some() {
                    return Err("numeric range has two lower bounds (\">\" or \">=\")".to_string());
                }
                range.lower = Some((bound, op == ">="));
            }
            "<" | "<=" => {
                if range.upper.is_some() {
                    return Err("numeric range has two upper bounds (\"<\" or \"<=\")".to_string());
                }
                range.upper = Some((bound, op == "<="));
            }
            other => {
                return Err(format!(
                    "numeric: unknown comparison {}; expected \"=\", \"<\", \"<=\", \">\" or \">=\"",
                    show_str(other)
                ));
            }
        }
    }
    if let (Some((lo, lo_incl)), Some((hi, hi_incl))) = (range.lower, range.upper)
        && (lo > hi || (lo == hi && !(lo_incl && hi_incl)))
    {
        return Err(format!(
            "numeric range is empty: lower bound {lo} is not below upper bound {hi}"
        ));
    }
    Ok(range)
}

fn cidr(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    if let Ok(net) = t.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "cidr expects an IPv4 or IPv6 address or CIDR block such as \"10.0.0.0/24\", got {}",
        show_str(s)
    ))
}
