//! The EventBridge event-pattern language.
//!
//! A [`Pattern`] is parsed (and fully validated) once with [`Pattern::parse`]
//! and then tested against events with [`Pattern::matches`]. Many patterns
//! are compiled together into a [`RuleSet`], whose matching cost grows much
//! more slowly than the number of rules; it reads an event once, from its
//! JSON text ([`RuleSet::matches_json_bytes`]) or from a parsed value, keeping
//! only the fields its rules use. A `RuleSet` is `Clone + Send + Sync`:
//! publish it behind an `Arc` and swap in a new one to change rules while
//! other threads match.
//!
//! The grammar is AWS EventBridge's (exact values, `""`, `null`, `prefix`,
//! `suffix`, `equals-ignore-case`, `wildcard`, every `anything-but` form,
//! `numeric`, `cidr`, `exists`, `$or`) plus Alibaba Cloud's `contains`.
//! The exact semantics, with an example per operator, are in `docs/rules.md`;
//! the short version:
//!
//! * A pattern is a JSON object. A key whose value is an array is a *leaf*:
//!   the array lists matchers, and the leaf matches when **any** matcher
//!   matches **any** value found at that path. A key whose value is an object
//!   descends into the event. Different keys are ANDed.
//! * Keys address the CloudEvent in JSON structured form (attributes at the
//!   top level, `data` nested). At the top level only, `detail` and `data`
//!   stand for each other, and so do `detail-type` and `type`: a key reads
//!   the field it names when the event has it, else its alias. So AWS
//!   patterns work on CloudEvents and AWS-shaped events match as they are.
//! * Arrays in the event are searched: a leaf matches if any element
//!   matches. When a nested pattern object meets an array of objects, all of
//!   its fields must be satisfied by **the same** array element.

mod compiled;
mod fields;
mod flat;
mod matcher;
mod parse;
mod ruleset;

use serde_json::{Map, Value};

pub use flat::{EventJsonError, MAX_EVENT_DEPTH};
pub use ruleset::RuleSet;

use matcher::{Matcher, ScalarRef};

/// Most nesting levels (objects and `$or` branches) a pattern may have.
pub const MAX_PATTERN_DEPTH: usize = 32;
/// Most fields, matchers, `$or` branches and list entries in one pattern.
pub const MAX_PATTERN_ELEMENTS: usize = 2_000;
/// Most bytes of text (keys and string operands) in one pattern.
pub const MAX_PATTERN_BYTES: usize = 64 * 1024;
/// Most `*` wildcards (over all `wildcard` operands) in one pattern.
pub const MAX_PATTERN_WILDCARDS: usize = 32;

/// A validated, compiled event pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    root: Node,
}

/// Why a pattern was rejected: the JSON path of the offending part and the
/// reason, e.g. `data.count: numeric expects an operator followed by a
/// number, got "five"`. The path of the pattern as a whole is `$`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PatternError {
    /// Dotted path of the offending key, as written in the pattern
    /// (`data.items.$or[1].id`), or `$` for the pattern itself.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl PatternError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        let path = path.into();
        PatternError {
            path: if path.is_empty() {
                "$".to_string()
            } else {
                path
            },
            message: message.into(),
        }
    }
}

/// One object level of a pattern: fields (ANDed) and `$or` groups (each
/// group needs one of its branches to match, groups are ANDed).
#[derive(Debug, Clone, Default)]
pub(crate) struct Node {
    pub(crate) fields: Vec<(String, Field)>,
    pub(crate) ors: Vec<Vec<Node>>,
}

#[derive(Debug, Clone)]
pub(crate) enum Field {
    /// An array of matchers (ORed).
    Leaf(Vec<Matcher>),
    /// A nested pattern object.
    Nested(Node),
}

impl Pattern {
    /// Parse and validate a pattern. Every problem is reported with the path
    /// of the offending key and the reason.
    pub fn parse(value: &Value) -> Result<Pattern, PatternError> {
        parse::parse_pattern(value).map(|root| Pattern { root })
    }

    /// Does the event match? The event is a CloudEvent in JSON structured
    /// form, or an AWS-shaped event (`detail-type`, `detail`, ...).
    pub fn matches(&self, event: &Value) -> bool {
        self.root.matches(Some(event), true)
    }

    pub(crate) fn root(&self) -> &Node {
        &self.root
    }
}

/// The event field a pattern key reads. At the top level `data`/`detail`
/// and `type`/`detail-type` fall back to each other when the event lacks
/// the named one.
pub(crate) fn lookup<'a>(obj: &'a Map<String, Value>, key: &str, root: bool) -> Option<&'a Value> {
    if let Some(v) = obj.get(key) {
        return Some(v);
    }
    if !root {
        return None;
    }
    match key {
        "data" => obj.get("detail"),
        "detail" => obj.get("data"),
        "type" => obj.get("detail-type"),
        "detail-type" => obj.get("type"),
        _ => None,
    }
}

/// Calls `f` on every scalar reachable from `v` through arrays (objects are
/// not leaves); stops and returns true as soon as `f` does.
pub(crate) fn any_leaf(v: &Value, f: &mut impl FnMut(&Value) -> bool) -> bool {
    match v {
        Value::Array(items) => items.iter().any(|item| any_leaf(item, f)),
        Value::Object(_) => false,
        scalar => f(scalar),
    }
}

impl Node {
    /// `ev` is the event value at this node's position (None: absent).
    fn matches(&self, ev: Option<&Value>, root: bool) -> bool {
        match ev {
            // Array consistency: the whole node must be satisfied by one element.
            Some(Value::Array(items)) if !items.is_empty() => {
                items.iter().any(|item| self.matches(Some(item), root))
            }
            Some(Value::Array(_)) => self.matches_here(None, root),
            other => self.matches_here(other, root),
        }
    }

    fn matches_here(&self, ev: Option<&Value>, root: bool) -> bool {
        let obj = ev.and_then(Value::as_object);
        let fields_ok = self.fields.iter().all(|(key, field)| {
            let child = obj.and_then(|o| lookup(o, key, root));
            match field {
                Field::Leaf(matchers) => leaf_matches(matchers, child),
                Field::Nested(node) => node.matches(child, false),
            }
        });
        fields_ok
            && self
                .ors
                .iter()
                .all(|branches| branches.iter().any(|b| b.matches_here(ev, root)))
    }
}

fn leaf_matches(matchers: &[Matcher], child: Option<&Value>) -> bool {
    matchers.iter().any(|m| match m {
        Matcher::Exists(want) => {
            let present = child.is_some_and(|v| any_leaf(v, &mut |_| true));
            present == *want
        }
        m => child.is_some_and(|v| {
            any_leaf(v, &mut |x| {
                ScalarRef::of(x).is_some_and(|x| m.matches_scalar(x))
            })
        }),
    })
}
