//! Many patterns compiled together.
//!
//! **Field table.** Every field path any rule reads is registered in one trie
//! (`fields.rs`). An event is flattened once against it (`flat/`): one pass
//! over the JSON text that records only the values on those paths, with their
//! array structure, and skips everything else without decoding it.
//!
//! **Index.** Each rule gets a *guard*: a set of (field, index key) pairs such
//! that the rule can only match an event having at least one of them. An index
//! key is an exact value, a folded value (`equals-ignore-case`), a prefix or a
//! suffix (plain or ignoring case; a `wildcard` gives its literal text before
//! the first or after the last `*`). A guard comes from a leaf whose every
//! matcher has an index key (`"type": ["a", "b"]`, `"subject": [{"prefix":
//! "orders/"}]`), at any depth, or from a `$or` whose every branch has such a
//! leaf. Leaves with `anything-but`, `numeric`, `cidr`, `exists` or a string
//! `contains` give no guard (other leaves of the same rule usually do).
//!
//! Each field node of the trie holds the index of the keys filed under it
//! (`index.rs`).
//! Matching looks every recorded value up in its field's index (one hash
//! look-up for exact values, one per distinct prefix/suffix length for
//! affixes), adds the rules that had no guard at all, and verifies only those
//! candidates, each with its pattern compiled against the field table
//! (`compiled.rs`). Rules without a guard that are a single leaf (typically
//! one `anything-but`, `numeric` or `cidr` test) are filed under their
//! leaf's field instead and tested on that field's recorded values directly,
//! without walking a pattern. The cost per event follows the event's relevant values and
//! the number of candidates, not the number of rules.
//!
//! When a rule has several possible guards, the one whose index buckets are
//! currently smallest is chosen (an affix counts a little more than an exact
//! value), which spreads rules sharing a common value (`"source":
//! ["aws.ec2"]`) over their more selective fields.

mod index;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::Hash;

use serde_json::Value;

use super::compiled::{CNode, Registration};
use super::fields::{Fields, alias_of};
use super::flat::{EventJsonError, FlatEvent};
use super::matcher::{IndexKey, Matcher};
use super::{Field, Node, Pattern};
use index::{CERTAIN, IndexNode};

type Guard = Vec<(Vec<String>, IndexKey)>;

/// A set of patterns, each under a key, matched together.
///
/// [`RuleSet::matches`] and [`RuleSet::matches_json_bytes`] return exactly
/// the keys whose pattern [`Pattern::matches`] the event, in insertion order
/// (re-inserting a key moves it to the end).
///
/// # Sharing between threads
///
/// A `RuleSet` is `Clone + Send + Sync` (when `K` is) and matching takes
/// `&self`, so any number of threads may match against one set at once. It
/// is meant to be published behind an `Arc` and replaced whole: a writer
/// clones the current set (or builds a new one), applies its inserts and
/// removes, and swaps the new `Arc` in (`ArcSwap`, or an
/// `RwLock<Arc<RuleSet<K>>>` held only for the pointer swap). Matchers that
/// loaded the old `Arc` finish on a complete, consistent old set; no reader
/// ever sees half an update.
#[derive(Clone)]
pub struct RuleSet<K> {
    fields: Fields,
    slots: Vec<Option<Entry>>,
    /// The key of each slot (dense, so that reporting a hit touches little
    /// memory).
    keys: Vec<Option<K>>,
    free_slots: Vec<u32>,
    slot_of: HashMap<K, u32>,
    /// Index by field node id.
    index: Vec<Option<Box<IndexNode>>>,
    /// Slots with no guard; verified against every event.
    unindexed: Vec<u32>,
    /// Rules with no guard that are one leaf (see [`single_leaf`]), by the
    /// field node of that leaf: tested on the event's values at that field
    /// as they are listed, without walking the pattern.
    scan: Vec<Option<Vec<ScanRule>>>,
    /// Number of rules in `scan`.
    scan_len: usize,
    /// Insertion sequence number by slot (dense, for ordering results).
    seqs: Vec<u64>,
    next_seq: u64,
}

#[derive(Clone)]
struct Entry {
    pattern: Pattern,
    compiled: CNode,
    regs: Vec<Registration>,
    guard: Vec<(u32, IndexKey)>,
    /// The field node the rule is filed under in `scan`, if it is.
    scan_field: Option<u32>,
}

/// A rule tested value by value (see `RuleSet::scan`).
#[derive(Clone)]
struct ScanRule {
    slot: u32,
    matchers: Box<[Matcher]>,
}

/// Whether a hit in the index proves that a pattern matches: the pattern is
/// one chain of single-field objects (no `$or`, not starting at an aliased
/// top-level name) ending in a leaf whose matchers are all exact values,
/// `equals-ignore-case`, `prefix` or `suffix` (plain or ignoring case). Such
/// a leaf accepts a value exactly when its key is found for it, and with a
/// single leaf "one array element must satisfy the whole object" always
/// holds for the element the value came from.
fn certain_leaf(node: &Node) -> bool {
    let mut node = node;
    let mut top = true;
    loop {
        if node.fields.len() != 1 || !node.ors.is_empty() {
            return false;
        }
        let (key, field) = &node.fields[0];
        if top && alias_of(key).is_some() {
            return false;
        }
        top = false;
        match field {
            Field::Nested(inner) => node = inner,
            Field::Leaf(matchers) => {
                return matchers.iter().all(|m| {
                    matches!(
                        m,
                        Matcher::Exact(_)
                            | Matcher::EqualsIgnoreCase(_)
                            | Matcher::Prefix(_)
                            | Matcher::PrefixIgnoreCase(_)
                            | Matcher::Suffix(_)
                            | Matcher::SuffixIgnoreCase(_)
                    )
                });
            }
        }
    }
}

/// The leaf of a pattern that is one chain of single-field objects (no
/// `$or`, not starting at an aliased top-level name) ending in a leaf
/// without `exists`: its path and matchers. Such a pattern matches exactly
/// when one matcher accepts one of the event's values at that path (the
/// values the flattener lists for that field): with a single leaf, "one
/// array element must satisfy the whole object" always holds for the
/// element a value came from, and every matcher but `exists` needs a
/// value.
fn single_leaf(node: &Node) -> Option<(Vec<String>, &[Matcher])> {
    let mut node = node;
    let mut path = Vec::new();
    loop {
        if node.fields.len() != 1 || !node.ors.is_empty() {
            return None;
        }
        let (key, field) = &node.fields[0];
        if path.is_empty() && alias_of(key).is_some() {
            return None;
        }
        path.push(key.clone());
        match field {
            Field::Nested(inner) => node = inner,
            Field::Leaf(matchers) => {
                if matchers.is_empty() || matchers.iter().any(|m| matches!(m, Matcher::Exists(_))) {
                    return None;
                }
                return Some((path, matchers));
            }
        }
    }
}

/// Per-thread buffers reused across matches.
#[derive(Default)]
struct Scratch {
    flat: FlatEvent,
    cands: Vec<u32>,
    hits: Vec<(u64, u32)>,
    fold: String,
}

impl Scratch {
    const fn new() -> Self {
        Scratch {
            flat: FlatEvent::new(),
            cands: Vec::new(),
            hits: Vec::new(),
            fold: String::new(),
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch::new()) };
}

fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            let r = f(&mut s);
            s.flat.trim();
            if s.cands.capacity() > 1 << 16 {
                s.cands = Vec::new();
            }
            r
        }
        // Re-entered (a key's Clone matching events?): use fresh buffers.
        Err(_) => f(&mut Scratch::default()),
    })
}

impl<K> Default for RuleSet<K> {
    fn default() -> Self {
        RuleSet {
            fields: Fields::default(),
            slots: Vec::new(),
            keys: Vec::new(),
            free_slots: Vec::new(),
            slot_of: HashMap::new(),
            index: Vec::new(),
            unindexed: Vec::new(),
            scan: Vec::new(),
            scan_len: 0,
            seqs: Vec::new(),
            next_seq: 0,
        }
    }
}

impl<K> fmt::Debug for RuleSet<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &(self.slots.len() - self.free_slots.len()))
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
        let mut regs = Vec::new();
        let compiled = CNode::compile(pattern.root(), &mut self.fields, &mut regs);
        let guard = self.choose_guard(&pattern);
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        let mut scan_field = None;
        if guard.is_empty() {
            match single_leaf(pattern.root())
                .and_then(|(path, m)| Some((self.fields.find(0, &path)?, m)))
            {
                Some((field, matchers)) => {
                    let i = field as usize;
                    if self.scan.len() <= i {
                        self.scan.resize_with(i + 1, || None);
                    }
                    self.scan[i].get_or_insert_with(Vec::new).push(ScanRule {
                        slot,
                        matchers: matchers.into(),
                    });
                    self.scan_len += 1;
                    scan_field = Some(field);
                }
                None => self.unindexed.push(slot),
            }
        }
        let certain = certain_leaf(pattern.root());
        for (field, index_key) in &guard {
            let i = *field as usize;
            if self.index.len() <= i {
                self.index.resize_with(i + 1, || None);
            }
            let v = if certain { slot | CERTAIN } else { slot };
            self.index[i]
                .get_or_insert_with(Default::default)
                .add(index_key, v);
        }
        if self.seqs.len() <= slot as usize {
            self.seqs.resize(slot as usize + 1, 0);
        }
        self.seqs[slot as usize] = seq;
        self.slot_of.insert(key.clone(), slot);
        if self.keys.len() <= slot as usize {
            self.keys.resize_with(slot as usize + 1, || None);
        }
        self.keys[slot as usize] = Some(key);
        self.slots[slot as usize] = Some(Entry {
            pattern,
            compiled,
            regs,
            guard,
            scan_field,
        });
    }

    /// Removes the pattern under `key`, if any.
    pub fn remove(&mut self, key: &K) {
        let Some(slot) = self.slot_of.remove(key) else {
            return;
        };
        let Some(entry) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.keys[slot as usize] = None;
        if let Some(field) = entry.scan_field {
            if let Some(Some(rules)) = self.scan.get_mut(field as usize) {
                rules.retain(|r| r.slot != slot);
                if rules.is_empty() {
                    self.scan[field as usize] = None;
                }
            }
            self.scan_len -= 1;
        } else if entry.guard.is_empty() {
            self.unindexed.retain(|s| *s != slot);
        }
        for (field, index_key) in &entry.guard {
            if let Some(Some(ix)) = self.index.get_mut(*field as usize) {
                ix.remove(index_key, slot);
                if ix.is_empty() {
                    self.index[*field as usize] = None;
                }
            }
        }
        let mut freed = Vec::new();
        for &(id, direct) in &entry.regs {
            self.fields.release(id, direct, &mut freed);
        }
        for id in freed {
            if let Some(ix) = self.index.get_mut(id as usize) {
                *ix = None;
            }
            if let Some(sc) = self.scan.get_mut(id as usize) {
                *sc = None;
            }
        }
        self.free_slots.push(slot);
    }

    /// The keys of every pattern that matches the event, in insertion order.
    pub fn matches(&self, event: &Value) -> Vec<K> {
        with_scratch(|sc| {
            sc.flat.read_value(&self.fields, event);
            self.run(sc)
        })
    }

    /// Like [`matches`](Self::matches), reading the event from its JSON
    /// text in one pass, without building a `Value`: only the fields the
    /// rules use are decoded, the rest is skipped (and not validated). An
    /// object is left once every member name the rules use has been seen,
    /// so with duplicate member names the first one counts.
    pub fn matches_json_bytes(&self, json: &[u8]) -> Result<Vec<K>, EventJsonError> {
        with_scratch(|sc| {
            sc.flat.read_json(&self.fields, json)?;
            Ok(self.run(sc))
        })
    }

    fn run(&self, sc: &mut Scratch) -> Vec<K> {
        let Scratch {
            flat,
            cands,
            hits,
            fold,
        } = sc;
        cands.clear();
        hits.clear();
        for &(field, slot) in &flat.leaves {
            let ix = self.index.get(field as usize).and_then(Option::as_ref);
            let sc = self.scan.get(field as usize).and_then(Option::as_ref);
            if ix.is_none() && sc.is_none() {
                continue;
            }
            let Some(v) = flat.scalar(slot) else {
                continue;
            };
            if let Some(ix) = ix {
                ix.collect(v, cands, fold);
            }
            if let Some(rules) = sc {
                for r in rules {
                    if r.matchers.iter().any(|m| m.matches_scalar(v)) {
                        cands.push(r.slot | CERTAIN);
                    }
                }
            }
        }
        cands.extend_from_slice(&self.unindexed);
        if cands.len() > 1 {
            // Per slot, a proven hit first; then one entry per slot.
            cands.sort_unstable_by_key(|&v| (v & !CERTAIN, v & CERTAIN == 0));
            cands.dedup_by_key(|v| *v & !CERTAIN);
        }
        for &v in cands.iter() {
            let slot = v & !CERTAIN;
            let hit = v & CERTAIN != 0
                || self
                    .slots
                    .get(slot as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|e| e.compiled.matches(flat));
            if hit {
                hits.push((self.seqs[slot as usize], slot));
            }
        }
        if hits.len() > 1 {
            hits.sort_unstable();
        }
        let mut out = Vec::with_capacity(hits.len());
        out.extend(
            hits.iter()
                .filter_map(|&(_, slot)| self.keys[slot as usize].clone()),
        );
        out
    }

    /// The pattern stored under `key`.
    pub fn get(&self, key: &K) -> Option<&Pattern> {
        self.slot_of
            .get(key)
            .and_then(|s| self.slots.get(*s as usize))
            .and_then(Option::as_ref)
            .map(|e| &e.pattern)
    }

    /// Is there a pattern under `key`?
    pub fn contains_key(&self, key: &K) -> bool {
        self.slot_of.contains_key(key)
    }

    /// Number of patterns.
    pub fn len(&self) -> usize {
        self.slot_of.len()
    }

    /// True when there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.slot_of.is_empty()
    }

    /// Number of patterns with no usable guard; each is checked against
    /// every event.
    pub fn unindexed_len(&self) -> usize {
        self.unindexed.len() + self.scan_len
    }

    /// The fields of a string path (and its top-level alias) in the table.
    fn resolve(&self, path: &[String]) -> Vec<u32> {
        let mut out = Vec::with_capacity(2);
        out.extend(self.fields.find(0, path));
        if let Some((first, rest)) = path.split_first()
            && let Some(other) = alias_of(first)
            && let Some(id) = self.fields.child(0, other.as_bytes())
            && let Some(id) = self.fields.find(id, rest)
        {
            out.push(id);
        }
        out
    }

    fn guard_cost(&self, guard: &Guard) -> usize {
        guard
            .iter()
            .map(|(path, key)| {
                let bucket = self
                    .fields
                    .find(0, path)
                    .and_then(|id| self.index.get(id as usize))
                    .and_then(Option::as_ref)
                    .map_or(0, |n| n.bucket_len(key));
                let weight = if matches!(key, IndexKey::Exact(_)) {
                    1
                } else {
                    2
                };
                bucket + weight
            })
            .sum()
    }

    /// The cheapest guard of the pattern, resolved to fields, or empty when
    /// it has none.
    fn choose_guard(&self, pattern: &Pattern) -> Vec<(u32, IndexKey)> {
        let mut prefix = Vec::new();
        let best = self
            .guards(pattern.root(), &mut prefix)
            .into_iter()
            .min_by_key(|g| self.guard_cost(g))
            .unwrap_or_default();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for (path, key) in best {
            for id in self.resolve(&path) {
                if seen.insert((id, key.clone())) {
                    out.push((id, key.clone()));
                }
            }
        }
        out
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
