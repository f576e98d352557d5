//! Many patterns compiled together.
//!
//! Each rule gets a *guard*: a set of (field path, index key) pairs such that
//! the rule can only match an event having at least one of them. An index key
//! is an exact value, a lower-cased value (`equals-ignore-case`), a prefix or
//! a suffix (plain or ignoring case; a `wildcard` gives its literal text
//! before the first or after the last `*`). A guard comes from a leaf whose
//! every matcher has an index key (`"type": ["a", "b"]`,
//! `"subject": [{"prefix": "orders/"}]`), at any depth, or from a `$or`
//! whose every branch has such a leaf. Leaves with `anything-but`,
//! `numeric`, `cidr`, `exists` or a string `contains` give no guard (other
//! leaves of the same rule usually do).
//!
//! Guards are stored in a trie of field paths; each trie node maps keys to
//! rules. Matching walks the event along the trie (at most the event's size
//! and the trie's size), looks each value found up (one hash look-up for
//! exact values; one per distinct prefix/suffix length for affixes),
//! collects the rules found plus the rules that had no guard at all, and
//! verifies only those candidates with [`Pattern::matches`]. The cost per
//! event follows the number of candidates, not the number of rules.
//!
//! When a rule has several possible guards, the one whose index buckets are
//! currently smallest is chosen (an affix counts a little more than an exact
//! value), which spreads rules sharing a common value (`"source":
//! ["aws.ec2"]`) over their more selective fields.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::Hash;

use serde_json::Value;

use super::matcher::{IndexKey, ValueKey, fold};
use super::{Field, Node, Pattern, any_leaf, lookup};

type Guard = Vec<(Vec<String>, IndexKey)>;

/// A set of patterns, each under a key, matched together.
///
/// [`RuleSet::matches`] returns exactly the keys whose pattern
/// [`Pattern::matches`] the event, in insertion order (re-inserting a key
/// moves it to the end).
#[derive(Clone)]
pub struct RuleSet<K> {
    entries: HashMap<u64, Entry<K>>,
    seq_of: HashMap<K, u64>,
    index: IndexNode,
    unindexed: BTreeSet<u64>,
    next_seq: u64,
}

#[derive(Clone)]
struct Entry<K> {
    key: K,
    pattern: Pattern,
    guard: Guard,
}

/// Keys by affix, plus how many keys have each byte length.
#[derive(Clone, Default)]
struct AffixIndex {
    map: HashMap<String, Vec<u64>>,
    lengths: BTreeMap<usize, usize>,
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Prefix,
    Suffix,
}

impl AffixIndex {
    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn get(&self, key: &str) -> Option<&Vec<u64>> {
        self.map.get(key)
    }

    fn add(&mut self, key: &str, seq: u64) {
        let bucket = self.map.entry(key.to_string()).or_default();
        if bucket.is_empty() {
            *self.lengths.entry(key.len()).or_default() += 1;
        }
        bucket.push(seq);
    }

    fn remove(&mut self, key: &str, seq: u64) {
        let Some(bucket) = self.map.get_mut(key) else {
            return;
        };
        bucket.retain(|s| *s != seq);
        if bucket.is_empty() {
            self.map.remove(key);
            if let Some(n) = self.lengths.get_mut(&key.len()) {
                *n -= 1;
                if *n == 0 {
                    self.lengths.remove(&key.len());
                }
            }
        }
    }

    fn collect(&self, s: &str, side: Side, out: &mut Vec<u64>) {
        for &len in self.lengths.range(..=s.len()).map(|(len, _)| len) {
            let part = match side {
                Side::Prefix if s.is_char_boundary(len) => &s[..len],
                Side::Suffix if s.is_char_boundary(s.len() - len) => &s[s.len() - len..],
                _ => continue,
            };
            if let Some(bucket) = self.map.get(part) {
                out.extend_from_slice(bucket);
            }
        }
    }
}

#[derive(Clone, Default)]
struct IndexNode {
    children: HashMap<String, IndexNode>,
    /// Exact string values, looked up without allocating.
    strings: HashMap<String, Vec<u64>>,
    /// Exact numbers, booleans and null.
    others: HashMap<ValueKey, Vec<u64>>,
    /// Lower-cased values (`equals-ignore-case`).
    folded: HashMap<String, Vec<u64>>,
    prefixes: AffixIndex,
    prefixes_folded: AffixIndex,
    suffixes: AffixIndex,
    suffixes_folded: AffixIndex,
}

impl<K> Default for RuleSet<K> {
    fn default() -> Self {
        RuleSet {
            entries: HashMap::new(),
            seq_of: HashMap::new(),
            index: IndexNode::default(),
            unindexed: BTreeSet::new(),
            next_seq: 0,
        }
    }
}

impl<K> fmt::Debug for RuleSet<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.entries.len())
            .field("unindexed", &self.unindexed.len())
            .finish()
    }
}

impl<K: Clone + Eq + Hash> RuleSet<K> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pattern under `key`, replacing any pattern already there.
    pub fn insert(&mut self, key: K, pattern: Pattern) {
        self.remove(&key);
        let seq = self.next_seq;
        self.next_seq += 1;
        let guard = self.choose_guard(&pattern);
        if guard.is_empty() {
            self.unindexed.insert(seq);
        }
        for (path, index_key) in &guard {
            self.index.node_mut(path).add(index_key, seq);
        }
        self.seq_of.insert(key.clone(), seq);
        self.entries.insert(
            seq,
            Entry {
                key,
                pattern,
                guard,
            },
        );
    }

    /// Removes the pattern under `key`, if any.
    pub fn remove(&mut self, key: &K) {
        let Some(seq) = self.seq_of.remove(key) else {
            return;
        };
        let Some(entry) = self.entries.remove(&seq) else {
            return;
        };
        if entry.guard.is_empty() {
            self.unindexed.remove(&seq);
        }
        for (path, index_key) in &entry.guard {
            self.index.remove(path, index_key, seq);
        }
    }

    /// The keys of every pattern that matches the event, in insertion order.
    pub fn matches(&self, event: &Value) -> Vec<K> {
        let mut candidates: Vec<u64> = Vec::new();
        self.index.collect_children(event, true, &mut candidates);
        candidates.extend(self.unindexed.iter().copied());
        candidates.sort_unstable();
        candidates.dedup();
        candidates
            .into_iter()
            .filter_map(|seq| self.entries.get(&seq))
            .filter(|entry| entry.pattern.matches(event))
            .map(|entry| entry.key.clone())
            .collect()
    }

    /// The pattern stored under `key`.
    pub fn get(&self, key: &K) -> Option<&Pattern> {
        self.seq_of
            .get(key)
            .and_then(|seq| self.entries.get(seq))
            .map(|e| &e.pattern)
    }

    /// Is there a pattern under `key`?
    pub fn contains_key(&self, key: &K) -> bool {
        self.seq_of.contains_key(key)
    }

    /// Number of patterns.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of patterns with no usable guard; each is checked against
    /// every event.
    pub fn unindexed_len(&self) -> usize {
        self.unindexed.len()
    }

    fn guard_cost(&self, guard: &Guard) -> usize {
        guard
            .iter()
            .map(|(path, key)| {
                let bucket = self.index.node(path).map_or(0, |n| n.bucket_len(key));
                let weight = if matches!(key, IndexKey::Exact(_)) {
                    1
                } else {
                    2
                };
                bucket + weight
            })
            .sum()
    }

    /// The cheapest guard of the pattern, or empty when it has none.
    fn choose_guard(&self, pattern: &Pattern) -> Guard {
        let mut prefix = Vec::new();
        self.guards(pattern.root(), &mut prefix)
            .into_iter()
            .min_by_key(|g| self.guard_cost(g))
            .unwrap_or_default()
    }

    /// Every guard of `node`; each alone is a necessary condition.
    fn guards(&self, node: &Node, prefix: &mut Vec<String>) -> Vec<Guard> {
        let mut out = Vec::new();
        for (key, field) in &node.fields {
            prefix.push(key.clone());
            match field {
                Field::Leaf(matchers) => {
                    let keys: Option<Vec<IndexKey>> =
                        matchers.iter().map(|m| m.index_key()).collect();
                    if let Some(keys) = keys {
                        let mut seen = HashSet::new();
                        out.push(
                            keys.into_iter()
                                .filter(|k| seen.insert(k.clone()))
                                .map(|k| (prefix.clone(), k))
                                .collect(),
                        );
                    }
                }
                Field::Nested(inner) => out.extend(self.guards(inner, prefix)),
            }
            prefix.pop();
        }
        for branches in &node.ors {
            let mut union: Guard = Vec::new();
            let mut complete = true;
            for branch in branches {
                let best = self
                    .guards(branch, prefix)
                    .into_iter()
                    .min_by_key(|g| self.guard_cost(g));
                match best {
                    Some(g) => union.extend(g),
                    None => {
                        complete = false;
                        break;
                    }
                }
            }
            if complete {
                let mut seen = HashSet::new();
                union.retain(|entry| seen.insert(entry.clone()));
                out.push(union);
            }
        }
        out
    }
}

impl IndexNode {
    fn node(&self, path: &[String]) -> Option<&IndexNode> {
        let mut node = self;
        for seg in path {
            node = node.children.get(seg)?;
        }
        Some(node)
    }

    fn node_mut(&mut self, path: &[String]) -> &mut IndexNode {
        let mut node = self;
        for seg in path {
            node = node.children.entry(seg.clone()).or_default();
        }
        node
    }

    fn has_values(&self) -> bool {
        !(self.strings.is_empty()
            && self.others.is_empty()
            && self.folded.is_empty()
            && self.prefixes.is_empty()
            && self.prefixes_folded.is_empty()
            && self.suffixes.is_empty()
            && self.suffixes_folded.is_empty())
    }

    fn is_empty(&self) -> bool {
        self.children.is_empty() && !self.has_values()
    }

    fn bucket_len(&self, key: &IndexKey) -> usize {
        let bucket = match key {
            IndexKey::Exact(ValueKey::Str(s)) => self.strings.get(s),
            IndexKey::Exact(other) => self.others.get(other),
            IndexKey::IgnoreCase(s) => self.folded.get(s),
            IndexKey::Prefix(s) => self.prefixes.get(s),
            IndexKey::PrefixIgnoreCase(s) => self.prefixes_folded.get(s),
            IndexKey::Suffix(s) => self.suffixes.get(s),
            IndexKey::SuffixIgnoreCase(s) => self.suffixes_folded.get(s),
        };
        bucket.map_or(0, Vec::len)
    }

    fn add(&mut self, key: &IndexKey, seq: u64) {
        match key {
            IndexKey::Exact(ValueKey::Str(s)) => {
                self.strings.entry(s.clone()).or_default().push(seq)
            }
            IndexKey::Exact(other) => self.others.entry(other.clone()).or_default().push(seq),
            IndexKey::IgnoreCase(s) => self.folded.entry(s.clone()).or_default().push(seq),
            IndexKey::Prefix(s) => self.prefixes.add(s, seq),
            IndexKey::PrefixIgnoreCase(s) => self.prefixes_folded.add(s, seq),
            IndexKey::Suffix(s) => self.suffixes.add(s, seq),
            IndexKey::SuffixIgnoreCase(s) => self.suffixes_folded.add(s, seq),
        }
    }

    /// Removes `seq` from the bucket at `path`/`key`, pruning empty nodes.
    fn remove(&mut self, path: &[String], key: &IndexKey, seq: u64) {
        let Some((seg, rest)) = path.split_first() else {
            self.remove_here(key, seq);
            return;
        };
        if let Some(child) = self.children.get_mut(seg) {
            child.remove(rest, key, seq);
            if child.is_empty() {
                self.children.remove(seg);
            }
        }
    }

    fn remove_here(&mut self, key: &IndexKey, seq: u64) {
        fn drop_from<Q: Hash + Eq + Clone>(map: &mut HashMap<Q, Vec<u64>>, k: &Q, seq: u64) {
            if let Some(bucket) = map.get_mut(k) {
                bucket.retain(|s| *s != seq);
                if bucket.is_empty() {
                    map.remove(k);
                }
            }
        }
        match key {
            IndexKey::Exact(ValueKey::Str(s)) => drop_from(&mut self.strings, s, seq),
            IndexKey::Exact(other) => drop_from(&mut self.others, other, seq),
            IndexKey::IgnoreCase(s) => drop_from(&mut self.folded, s, seq),
            IndexKey::Prefix(s) => self.prefixes.remove(s, seq),
            IndexKey::PrefixIgnoreCase(s) => self.prefixes_folded.remove(s, seq),
            IndexKey::Suffix(s) => self.suffixes.remove(s, seq),
            IndexKey::SuffixIgnoreCase(s) => self.suffixes_folded.remove(s, seq),
        }
    }

    /// Rules whose key at this node accepts the event scalar `v`.
    fn collect_scalar(&self, v: &Value, out: &mut Vec<u64>) {
        let Value::String(s) = v else {
            if let Some(bucket) = ValueKey::of(v).and_then(|k| self.others.get(&k)) {
                out.extend_from_slice(bucket);
            }
            return;
        };
        if let Some(bucket) = self.strings.get(s.as_str()) {
            out.extend_from_slice(bucket);
        }
        self.prefixes.collect(s, Side::Prefix, out);
        self.suffixes.collect(s, Side::Suffix, out);
        if self.folded.is_empty()
            && self.prefixes_folded.is_empty()
            && self.suffixes_folded.is_empty()
        {
            return;
        }
        let folded = fold(s);
        if let Some(bucket) = self.folded.get(folded.as_ref()) {
            out.extend_from_slice(bucket);
        }
        self.prefixes_folded.collect(&folded, Side::Prefix, out);
        self.suffixes_folded.collect(&folded, Side::Suffix, out);
    }

    /// `v` is the event value at this node's path.
    fn collect(&self, v: &Value, out: &mut Vec<u64>) {
        if self.has_values() {
            any_leaf(v, &mut |scalar| {
                self.collect_scalar(scalar, out);
                false
            });
        }
        if !self.children.is_empty() {
            self.collect_children(v, false, out);
        }
    }

    fn collect_children(&self, v: &Value, root: bool, out: &mut Vec<u64>) {
        match v {
            Value::Object(obj) => {
                for (key, child) in &self.children {
                    if let Some(cv) = lookup(obj, key, root) {
                        child.collect(cv, out);
                    }
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.collect_children(item, root, out);
                }
            }
            _ => {}
        }
    }
}
