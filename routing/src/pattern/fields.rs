//! The field table of a [`RuleSet`](super::RuleSet): a trie of every field
//! path its patterns read, with reference counts so that rules can come and
//! go. The flattener only records the parts of an event that lie on these
//! paths; node ids are what compiled patterns and the index refer to.

use std::collections::HashMap;

/// "No node".
pub(crate) const NONE: u32 = u32::MAX;

/// Past this many children a node also keeps a hash map of them.
const MAP_THRESHOLD: usize = 12;

/// Top-level names that stand for each other (see `docs/rules.md` 1.2).
pub(crate) fn alias_of(name: &str) -> Option<&'static str> {
    match name {
        "data" => Some("detail"),
        "detail" => Some("data"),
        "type" => Some("detail-type"),
        "detail-type" => Some("type"),
        _ => None,
    }
}

/// The first eight bytes of a name, zero-padded: compared before the rest.
#[inline]
pub(crate) fn name_tag(name: &[u8]) -> u64 {
    name.iter()
        .take(8)
        .enumerate()
        .fold(0u64, |t, (i, &b)| t | (u64::from(b) << (8 * i)))
}

#[derive(Clone, Debug)]
pub(crate) struct FieldNode {
    pub(crate) name: Box<str>,
    pub(crate) tag: u64,
    parent: u32,
    /// Position in the parent's `children`.
    ordinal: u32,
    /// Child node ids.
    pub(crate) children: Vec<u32>,
    /// name -> child, kept when there are many children.
    map: Option<HashMap<Box<[u8]>, u32>>,
    /// Registrations of paths through this node.
    refs: u32,
    /// Registrations naming this node directly (not through an alias).
    direct: u32,
    /// Bit `i` set: child `i` must be seen before an object at this node may
    /// be left early. Zero when the node has more than 64 children.
    pub(crate) required: u64,
    /// For at most [`LOCAL`] children: their name tags, name lengths and
    /// ids, in `children` order (unused entries: length `usize::MAX`), so
    /// that reading an object compares names without visiting the child
    /// nodes.
    pub(crate) kid_tag: [u64; LOCAL],
    pub(crate) kid_len: [usize; LOCAL],
    pub(crate) kid_id: [u32; LOCAL],
}

/// Most children a node keeps in its `kid_*` arrays.
pub(crate) const LOCAL: usize = 4;

impl FieldNode {
    fn new(name: &str, parent: u32, ordinal: u32) -> Self {
        FieldNode {
            name: name.into(),
            tag: name_tag(name.as_bytes()),
            parent,
            ordinal,
            children: Vec::new(),
            map: None,
            refs: 0,
            direct: 0,
            required: 0,
            kid_tag: [0; LOCAL],
            kid_len: [usize::MAX; LOCAL],
            kid_id: [NONE; LOCAL],
        }
    }
}

/// The trie. Node 0 is the event itself.
#[derive(Clone, Debug)]
pub(crate) struct Fields {
    pub(crate) nodes: Vec<FieldNode>,
    free: Vec<u32>,
}

impl Default for Fields {
    fn default() -> Self {
        Fields {
            nodes: vec![FieldNode::new("", NONE, 0)],
            free: Vec::new(),
        }
    }
}

impl Fields {
    pub(crate) fn node(&self, id: u32) -> &FieldNode {
        &self.nodes[id as usize]
    }

    /// The child of `id` named `name` (raw, unescaped bytes).
    #[inline]
    pub(crate) fn child(&self, id: u32, name: &[u8]) -> Option<u32> {
        self.child_tagged(id, name, name_tag(name))
    }

    /// [`child`](Self::child) with `tag == name_tag(name)` already known.
    #[inline(always)]
    pub(crate) fn child_tagged(&self, id: u32, name: &[u8], tag: u64) -> Option<u32> {
        let node = &self.nodes[id as usize];
        if let Some(map) = &node.map {
            return map.get(name).copied();
        }
        node.children.iter().copied().find(|&c| {
            let n = &self.nodes[c as usize];
            n.tag == tag
                && n.name.len() == name.len()
                && (name.len() <= 8
                    || n.name.as_bytes()[8..]
                        .iter()
                        .zip(&name[8..])
                        .all(|(a, b)| a == b))
        })
    }

    /// The node at `path` below `from`, if registered.
    pub(crate) fn find(&self, from: u32, path: &[String]) -> Option<u32> {
        let mut id = from;
        for seg in path {
            id = self.child(id, seg.as_bytes())?;
        }
        Some(id)
    }

    /// Registers `path` (below the root) and returns its node. `direct` is
    /// false for the alias copy of a top-level name.
    pub(crate) fn register(&mut self, path: &[&str], direct: bool) -> u32 {
        let mut id = 0u32;
        self.nodes[0].refs += 1;
        for (depth, seg) in path.iter().enumerate() {
            let next = match self.child(id, seg.as_bytes()) {
                Some(c) => c,
                None => self.add_child(id, seg),
            };
            let node = &mut self.nodes[next as usize];
            node.refs += 1;
            if depth == 0 && direct {
                node.direct += 1;
            }
            id = next;
        }
        self.update_required(0);
        id
    }

    /// Undoes one [`register`](Self::register) of the path ending at `id`.
    /// Returns the ids of nodes that were freed.
    pub(crate) fn release(&mut self, id: u32, direct: bool, freed: &mut Vec<u32>) {
        let mut id = id;
        while id != 0 && id != NONE {
            let parent = self.nodes[id as usize].parent;
            let node = &mut self.nodes[id as usize];
            node.refs = node.refs.saturating_sub(1);
            if parent == 0 && direct {
                node.direct = node.direct.saturating_sub(1);
            }
            if node.refs == 0 {
                self.detach(id);
                freed.push(id);
            }
            id = parent;
        }
        self.nodes[0].refs = self.nodes[0].refs.saturating_sub(1);
        self.update_required(0);
    }

    fn add_child(&mut self, parent: u32, name: &str) -> u32 {
        let ordinal = self.nodes[parent as usize].children.len() as u32;
        let node = FieldNode::new(name, parent, ordinal);
        let id = match self.free.pop() {
            Some(id) => {
                self.nodes[id as usize] = node;
                id
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        let p = &mut self.nodes[parent as usize];
        p.children.push(id);
        if let Some(map) = &mut p.map {
            map.insert(name.as_bytes().into(), id);
        } else if p.children.len() > MAP_THRESHOLD {
            let ids = p.children.clone();
            let map = ids
                .iter()
                .map(|&c| (self.nodes[c as usize].name.as_bytes().into(), c))
                .collect();
            self.nodes[parent as usize].map = Some(map);
        }
        self.update_required(parent);
        id
    }

    fn detach(&mut self, id: u32) {
        let (parent, ordinal) = {
            let n = &self.nodes[id as usize];
            (n.parent, n.ordinal as usize)
        };
        let name = self.nodes[id as usize].name.clone();
        let p = &mut self.nodes[parent as usize];
        p.children.swap_remove(ordinal);
        if let Some(map) = &mut p.map {
            map.remove(name.as_bytes());
            if p.children.len() <= MAP_THRESHOLD / 2 {
                p.map = None;
            }
        }
        if let Some(&moved) = self.nodes[parent as usize].children.get(ordinal) {
            self.nodes[moved as usize].ordinal = ordinal as u32;
        }
        let n = &mut self.nodes[id as usize];
        n.children.clear();
        n.map = None;
        n.parent = NONE;
        self.free.push(id);
        self.update_required(parent);
    }

    /// Recomputes which children of `id` an object must have shown before
    /// the flattener may leave it early. At the top level only names that
    /// patterns use directly count (an alias is only read when its
    /// counterpart is absent).
    fn update_required(&mut self, id: u32) {
        let node = &self.nodes[id as usize];
        let mut mask = 0u64;
        if node.children.len() <= 64 {
            for (i, &c) in node.children.iter().enumerate() {
                if id != 0 || self.nodes[c as usize].direct > 0 {
                    mask |= 1 << i;
                }
            }
        }
        self.nodes[id as usize].required = mask;
        let mut tags = [0u64; LOCAL];
        let mut lens = [usize::MAX; LOCAL];
        let mut ids = [NONE; LOCAL];
        let node = &self.nodes[id as usize];
        if node.children.len() <= LOCAL {
            for (k, &c) in node.children.iter().enumerate() {
                let n = &self.nodes[c as usize];
                tags[k] = n.tag;
                lens[k] = n.name.len();
                ids[k] = c;
            }
        }
        let node = &mut self.nodes[id as usize];
        node.kid_tag = tags;
        node.kid_len = lens;
        node.kid_id = ids;
    }

    /// Ordinal of child `id` in its parent.
    #[inline]
    pub(crate) fn ordinal(&self, id: u32) -> u32 {
        self.nodes[id as usize].ordinal
    }

    /// Number of live nodes (for tests).
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.nodes.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_release_and_reuse() {
        let mut f = Fields::default();
        let a = f.register(&["detail", "state"], true);
        let b = f.register(&["data", "state"], false);
        assert_ne!(a, b);
        assert_eq!(f.find(0, &["detail".into(), "state".into()]), Some(a));
        assert_eq!(f.node(0).required, 0b01);
        let c = f.register(&["detail", "state"], true);
        assert_eq!(a, c);
        let mut freed = Vec::new();
        f.release(a, true, &mut freed);
        assert!(freed.is_empty());
        f.release(a, true, &mut freed);
        assert_eq!(freed.len(), 2);
        f.release(b, false, &mut freed);
        assert_eq!(f.live(), 1);
        assert!(f.node(0).children.is_empty());
        for i in 0..40 {
            f.register(&[&format!("k{i}")], true);
        }
        assert!(f.child(0, b"k33").is_some());
        assert!(f.child(0, b"k40").is_none());
    }
}
