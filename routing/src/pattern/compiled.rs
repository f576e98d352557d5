//! A pattern compiled against a rule set's field table, evaluated on a
//! [`FlatEvent`]. The semantics are exactly those of `Node::matches` in
//! `mod.rs` (which works on a `serde_json::Value`); property tests check that
//! the two agree.

use super::fields::{Fields, alias_of};
use super::flat::{FlatEvent, Slot};
use super::matcher::Matcher;
use super::{Field, Node};

/// A registered field path: its last node, and whether it was registered
/// directly or as the alias copy of a top-level name.
pub(crate) type Registration = (u32, bool);

#[derive(Clone, Debug)]
pub(crate) struct CNode {
    fields: Vec<CField>,
    ors: Vec<Vec<CNode>>,
}

#[derive(Clone, Debug)]
struct CField {
    id: u32,
    kind: CKind,
    /// For top-level `data`/`detail`/`type`/`detail-type`: the counterpart
    /// field and the same sub-pattern compiled against it, read when the
    /// event lacks this one.
    alias: Option<(u32, CKind)>,
}

#[derive(Clone, Debug)]
enum CKind {
    Leaf(Box<[Matcher]>),
    Nested(CNode),
}

impl CNode {
    /// Compiles `node`, registering every field path it reads.
    pub(crate) fn compile(node: &Node, fields: &mut Fields, regs: &mut Vec<Registration>) -> CNode {
        let mut prefix = Vec::new();
        compile_node(node, fields, &mut prefix, true, regs)
    }

    /// Does the flattened event match?
    pub(crate) fn matches(&self, ev: &FlatEvent) -> bool {
        self.at(ev, ev.root())
    }

    /// `slot` is the event value at this node's position (None: absent).
    fn at(&self, ev: &FlatEvent, slot: Option<u32>) -> bool {
        if let Some(s) = slot
            && let Slot::Arr { start, len } = ev.slot(s)
        {
            // Array consistency: the whole node must hold in one element.
            return if len > 0 {
                ev.elems(start, len).iter().any(|&e| self.at(ev, Some(e)))
            } else {
                self.here(ev, None)
            };
        }
        self.here(ev, slot)
    }

    fn here(&self, ev: &FlatEvent, slot: Option<u32>) -> bool {
        let obj = match slot.map(|s| ev.slot(s)) {
            Some(Slot::Obj { start, len }) => Some((start, len)),
            _ => None,
        };
        let fields_ok = self.fields.iter().all(|f| {
            let (child, kind) = match obj {
                None => (None, &f.kind),
                Some((start, len)) => match ev.member(start, len, f.id) {
                    Some(c) => (Some(c), &f.kind),
                    None => match &f.alias {
                        Some((alias, kind)) => (ev.member(start, len, *alias), kind),
                        None => (None, &f.kind),
                    },
                },
            };
            match kind {
                CKind::Leaf(matchers) => leaf_matches(matchers, ev, child),
                CKind::Nested(node) => node.at(ev, child),
            }
        });
        fields_ok
            && self
                .ors
                .iter()
                .all(|branches| branches.iter().any(|b| b.here(ev, slot)))
    }
}

fn leaf_matches(matchers: &[Matcher], ev: &FlatEvent, child: Option<u32>) -> bool {
    matchers.iter().any(|m| match m {
        Matcher::Exists(want) => child.is_some_and(|c| ev.any_scalar(c, &mut |_| true)) == *want,
        m => child.is_some_and(|c| ev.any_scalar(c, &mut |x| m.matches_scalar(x))),
    })
}

fn compile_node(
    node: &Node,
    fields: &mut Fields,
    prefix: &mut Vec<String>,
    top: bool,
    regs: &mut Vec<Registration>,
) -> CNode {
    let mut out = CNode {
        fields: Vec::with_capacity(node.fields.len()),
        ors: Vec::with_capacity(node.ors.len()),
    };
    for (key, field) in &node.fields {
        prefix.push(key.clone());
        let id = register(fields, prefix, true, regs);
        let kind = compile_field(field, fields, prefix, regs);
        prefix.pop();
        let alias = match alias_of(key) {
            Some(other) if top => {
                prefix.push(other.to_string());
                let aid = register(fields, prefix, false, regs);
                let akind = compile_field(field, fields, prefix, regs);
                prefix.pop();
                Some((aid, akind))
            }
            _ => None,
        };
        out.fields.push(CField { id, kind, alias });
    }
    for branches in &node.ors {
        out.ors.push(
            branches
                .iter()
                .map(|b| compile_node(b, fields, prefix, top, regs))
                .collect(),
        );
    }
    out
}

fn compile_field(
    field: &Field,
    fields: &mut Fields,
    prefix: &mut Vec<String>,
    regs: &mut Vec<Registration>,
) -> CKind {
    match field {
        Field::Leaf(matchers) => CKind::Leaf(matchers.clone().into_boxed_slice()),
        Field::Nested(inner) => CKind::Nested(compile_node(inner, fields, prefix, false, regs)),
    }
}

fn register(
    fields: &mut Fields,
    path: &[String],
    direct: bool,
    regs: &mut Vec<Registration>,
) -> u32 {
    let segs: Vec<&str> = path.iter().map(String::as_str).collect();
    let id = fields.register(&segs, direct);
    regs.push((id, direct));
    id
}
