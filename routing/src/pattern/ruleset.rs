//! Many patterns compiled together.
//!
//! **Field table.** Every field path any rule reads is registered in one trie
//! (`fields.rs`). An event is flattened once against it (`flat.rs`): one pass
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
//! Each field node of the trie holds the index of the keys filed under it.
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

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::Hash;

use serde_json::Value;

use super::compiled::{CNode, Registration};
use super::fields::{Fields, alias_of, name_tag};
use super::flat::{EventJsonError, FlatEvent};
use super::matcher::{IndexKey, Matcher, ScalarRef, ValueKey, fold_char, num_key};
use super::{Field, Node, Pattern};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

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

/// Marks a bucket entry whose hit alone proves the rule matches (see
/// [`certain_leaf`]); the rest is the rule's slot.
const CERTAIN: u32 = 1 << 31;

/// The rules filed under one key. Most keys have one rule.
#[derive(Clone, Debug)]
enum Bucket {
    One(u32),
    Many(Vec<u32>),
}

impl Bucket {
    fn push(&mut self, v: u32) {
        match self {
            Bucket::One(x) => *self = Bucket::Many(vec![*x, v]),
            Bucket::Many(xs) => xs.push(v),
        }
    }

    /// Removes `slot` (with or without the flag); true when now empty.
    fn remove(&mut self, slot: u32) -> bool {
        match self {
            Bucket::One(x) => *x & !CERTAIN == slot,
            Bucket::Many(xs) => {
                xs.retain(|x| *x & !CERTAIN != slot);
                if xs.len() == 1 {
                    *self = Bucket::One(xs[0]);
                }
                xs_is_empty(self)
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Bucket::One(_) => 1,
            Bucket::Many(xs) => xs.len(),
        }
    }

    #[inline]
    fn extend_into(&self, out: &mut Vec<u32>) {
        match self {
            Bucket::One(x) => out.push(*x),
            Bucket::Many(xs) => out.extend_from_slice(xs),
        }
    }
}

fn xs_is_empty(b: &Bucket) -> bool {
    matches!(b, Bucket::Many(xs) if xs.is_empty())
}

/// Strings to buckets. Strings of up to 7 bytes are keyed by one integer
/// (bytes + length), up to 23 bytes by an inline array (length byte +
/// bytes), so a look-up touches no other memory; longer ones are boxed.
#[derive(Clone, Default)]
struct StrMap {
    tiny: FastMap<u64, Bucket>,
    short: FastMap<ShortKey, Bucket>,
    long: FastMap<Box<str>, Bucket>,
}

/// A string of 8 to 23 bytes: its length byte and bytes, zero-padded,
/// packed into three words, hashed as three words (not as a byte slice).
#[derive(Clone, Copy, PartialEq, Eq)]
struct ShortKey([u64; 3]);

impl Hash for ShortKey {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u64(self.0[0]);
        h.write_u64(self.0[1]);
        h.write_u64(self.0[2]);
    }
}

impl ShortKey {
    #[inline]
    fn pack(k: &[u8; 24]) -> ShortKey {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&k[i..i + 8]);
            u64::from_le_bytes(w)
        };
        ShortKey([word(0), word(8), word(16)])
    }
}

#[inline]
fn tiny_key(s: &str) -> Option<u64> {
    if s.len() > 7 {
        return None;
    }
    Some(name_tag(s.as_bytes()) | ((s.len() as u64) << 56))
}

#[inline]
fn short_key(s: &str) -> Option<ShortKey> {
    if s.len() > 23 {
        return None;
    }
    let mut k = [0u8; 24];
    k[0] = s.len() as u8;
    k[1..=s.len()].copy_from_slice(s.as_bytes());
    Some(ShortKey::pack(&k))
}

impl StrMap {
    fn is_empty(&self) -> bool {
        self.tiny.is_empty() && self.short.is_empty() && self.long.is_empty()
    }

    #[inline]
    fn get(&self, s: &str) -> Option<&Bucket> {
        if let Some(k) = tiny_key(s) {
            return self.tiny.get(&k);
        }
        match short_key(s) {
            Some(k) => self.short.get(&k),
            None => self.long.get(s),
        }
    }

    /// [`get`](Self::get) of the ASCII lower case of `s`, without building
    /// it as a string; None when `s` is not ASCII or longer than 23 bytes
    /// (then fold it and use `get`).
    #[inline]
    fn get_ascii_lowercase(&self, s: &str) -> Option<Option<&Bucket>> {
        let len = s.len();
        if len > 23 {
            return None;
        }
        let mut k = [0u8; 24];
        let mut high = 0u8;
        for (d, &c) in k[1..].iter_mut().zip(s.as_bytes()) {
            high |= c;
            *d = c.to_ascii_lowercase();
        }
        if high >= 0x80 {
            return None;
        }
        if len <= 7 {
            // Bytes 1..8 are the name tag of the lower-cased string.
            let mut w = [0u8; 8];
            w.copy_from_slice(&k[1..9]);
            let key = u64::from_le_bytes(w) | ((len as u64) << 56);
            return Some(self.tiny.get(&key));
        }
        k[0] = len as u8;
        Some(self.short.get(&ShortKey::pack(&k)))
    }

    /// Adds; true when the key is new.
    fn add(&mut self, s: &str, v: u32) -> bool {
        if let Some(k) = tiny_key(s) {
            return match self.tiny.get_mut(&k) {
                Some(b) => {
                    b.push(v);
                    false
                }
                None => {
                    self.tiny.insert(k, Bucket::One(v));
                    true
                }
            };
        }
        let bucket = match short_key(s) {
            Some(k) => self.short.entry(k),
            None => {
                return match self.long.get_mut(s) {
                    Some(b) => {
                        b.push(v);
                        false
                    }
                    None => {
                        self.long.insert(s.into(), Bucket::One(v));
                        true
                    }
                };
            }
        };
        match bucket {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                e.get_mut().push(v);
                false
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Bucket::One(v));
                true
            }
        }
    }

    /// Removes; true when the key is gone.
    fn remove(&mut self, s: &str, slot: u32) -> bool {
        if let Some(k) = tiny_key(s) {
            if self.tiny.get_mut(&k).is_some_and(|b| b.remove(slot)) {
                self.tiny.remove(&k);
                return true;
            }
            return false;
        }
        match short_key(s) {
            Some(k) => {
                if self.short.get_mut(&k).is_some_and(|b| b.remove(slot)) {
                    self.short.remove(&k);
                    return true;
                }
            }
            None => {
                if self.long.get_mut(s).is_some_and(|b| b.remove(slot)) {
                    self.long.remove(s);
                    return true;
                }
            }
        }
        false
    }
}

/// Keys by affix, plus how many keys have each byte length (sorted by
/// length).
#[derive(Clone, Default)]
struct AffixIndex {
    map: StrMap,
    lengths: Vec<(usize, usize)>,
    /// The first two bytes of the keys, for prefixes, and the last two, for
    /// suffixes: most values are ruled out by one bit test, without a
    /// hash look-up per key length.
    heads: PairFilter,
    tails: PairFilter,
}

/// A set of byte pairs, hashed to 64 bits, with counts so that keys can be
/// removed; keys shorter than two bytes disable it.
#[derive(Clone)]
struct PairFilter {
    counts: [u32; 64],
    bits: u64,
    /// Keys of fewer than two bytes.
    short: usize,
}

impl Default for PairFilter {
    fn default() -> Self {
        PairFilter {
            counts: [0; 64],
            bits: 0,
            short: 0,
        }
    }
}

impl PairFilter {
    #[inline(always)]
    fn bit(a: u8, b: u8) -> usize {
        (usize::from(a).wrapping_mul(31) + usize::from(b)) & 63
    }

    /// `pair` is None for a key of fewer than two bytes.
    fn add(&mut self, pair: Option<(u8, u8)>) {
        match pair {
            Some((a, b)) => {
                let k = Self::bit(a, b);
                self.counts[k] += 1;
                self.bits |= 1 << k;
            }
            None => self.short += 1,
        }
    }

    fn remove(&mut self, pair: Option<(u8, u8)>) {
        match pair {
            Some((a, b)) => {
                let k = Self::bit(a, b);
                self.counts[k] = self.counts[k].saturating_sub(1);
                if self.counts[k] == 0 {
                    self.bits &= !(1 << k);
                }
            }
            None => self.short = self.short.saturating_sub(1),
        }
    }

    /// False when no key of at least two bytes starts (or ends) with the
    /// pair and there is no shorter key.
    #[inline(always)]
    fn may_hold(&self, a: u8, b: u8) -> bool {
        self.short != 0 || self.bits & (1 << Self::bit(a, b)) != 0
    }
}

fn head_pair(key: &str) -> Option<(u8, u8)> {
    match key.as_bytes() {
        [a, b, ..] => Some((*a, *b)),
        _ => None,
    }
}

fn tail_pair(key: &str) -> Option<(u8, u8)> {
    match key.as_bytes() {
        [.., a, b] => Some((*a, *b)),
        _ => None,
    }
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

    fn get(&self, key: &str) -> Option<&Bucket> {
        self.map.get(key)
    }

    fn add(&mut self, key: &str, v: u32) {
        if self.map.add(key, v) {
            self.heads.add(head_pair(key));
            self.tails.add(tail_pair(key));
            match self.lengths.binary_search_by_key(&key.len(), |(l, _)| *l) {
                Ok(i) => self.lengths[i].1 += 1,
                Err(i) => self.lengths.insert(i, (key.len(), 1)),
            }
        }
    }

    fn remove(&mut self, key: &str, slot: u32) {
        if !self.map.remove(key, slot) {
            return;
        }
        self.heads.remove(head_pair(key));
        self.tails.remove(tail_pair(key));
        if let Ok(i) = self.lengths.binary_search_by_key(&key.len(), |(l, _)| *l) {
            self.lengths[i].1 -= 1;
            if self.lengths[i].1 == 0 {
                self.lengths.remove(i);
            }
        }
    }

    #[inline]
    fn collect(&self, s: &str, side: Side, out: &mut Vec<u32>) {
        let (filter, pair) = match side {
            Side::Prefix => (&self.heads, head_pair(s)),
            Side::Suffix => (&self.tails, tail_pair(s)),
        };
        match pair {
            Some((a, b)) if !filter.may_hold(a, b) => return,
            None if filter.short == 0 => return,
            _ => {}
        }
        for &(len, _) in &self.lengths {
            if len > s.len() {
                break;
            }
            let part = match side {
                Side::Prefix if s.is_char_boundary(len) => &s[..len],
                Side::Suffix if s.is_char_boundary(s.len() - len) => &s[s.len() - len..],
                _ => continue,
            };
            if let Some(bucket) = self.map.get(part) {
                bucket.extend_into(out);
            }
        }
    }
}

/// The keys filed under one field.
#[derive(Clone, Default)]
struct IndexNode {
    /// Exact string values.
    strings: StrMap,
    /// Exact numbers, booleans and null.
    others: FastMap<ValueKey, Bucket>,
    /// Folded values (`equals-ignore-case`).
    folded: StrMap,
    /// The first two bytes of the folded values.
    folded_heads: PairFilter,
    prefixes: AffixIndex,
    prefixes_folded: AffixIndex,
    suffixes: AffixIndex,
    suffixes_folded: AffixIndex,
    /// Which of the above are non-empty (`HAS_*` bits), kept up to date by
    /// `add` and `remove` so that matching tests one byte.
    kinds: u8,
}

const HAS_STRINGS: u8 = 1;
const HAS_PREFIXES: u8 = 2;
const HAS_SUFFIXES: u8 = 4;
const HAS_FOLDED: u8 = 8;
const HAS_PREFIXES_FOLDED: u8 = 16;
const HAS_SUFFIXES_FOLDED: u8 = 32;
const NEEDS_FOLD: u8 = HAS_FOLDED | HAS_PREFIXES_FOLDED | HAS_SUFFIXES_FOLDED;

impl IndexNode {
    fn is_empty(&self) -> bool {
        self.strings.is_empty()
            && self.others.is_empty()
            && self.folded.is_empty()
            && self.prefixes.is_empty()
            && self.prefixes_folded.is_empty()
            && self.suffixes.is_empty()
            && self.suffixes_folded.is_empty()
    }

    fn update_kinds(&mut self) {
        let mut k = 0;
        for (empty, bit) in [
            (self.strings.is_empty(), HAS_STRINGS),
            (self.prefixes.is_empty(), HAS_PREFIXES),
            (self.suffixes.is_empty(), HAS_SUFFIXES),
            (self.folded.is_empty(), HAS_FOLDED),
            (self.prefixes_folded.is_empty(), HAS_PREFIXES_FOLDED),
            (self.suffixes_folded.is_empty(), HAS_SUFFIXES_FOLDED),
        ] {
            if !empty {
                k |= bit;
            }
        }
        self.kinds = k;
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
        bucket.map_or(0, Bucket::len)
    }

    fn add(&mut self, key: &IndexKey, v: u32) {
        match key {
            IndexKey::Exact(ValueKey::Str(s)) => {
                self.strings.add(s, v);
            }
            IndexKey::Exact(other) => match self.others.get_mut(other) {
                Some(b) => b.push(v),
                None => {
                    self.others.insert(other.clone(), Bucket::One(v));
                }
            },
            IndexKey::IgnoreCase(s) => {
                if self.folded.add(s, v) {
                    self.folded_heads.add(head_pair(s));
                }
            }
            IndexKey::Prefix(s) => self.prefixes.add(s, v),
            IndexKey::PrefixIgnoreCase(s) => self.prefixes_folded.add(s, v),
            IndexKey::Suffix(s) => self.suffixes.add(s, v),
            IndexKey::SuffixIgnoreCase(s) => self.suffixes_folded.add(s, v),
        }
        self.update_kinds();
    }

    fn remove(&mut self, key: &IndexKey, slot: u32) {
        match key {
            IndexKey::Exact(ValueKey::Str(s)) => {
                self.strings.remove(s, slot);
            }
            IndexKey::Exact(other) => {
                if self.others.get_mut(other).is_some_and(|b| b.remove(slot)) {
                    self.others.remove(other);
                }
            }
            IndexKey::IgnoreCase(s) => {
                if self.folded.remove(s, slot) {
                    self.folded_heads.remove(head_pair(s));
                }
            }
            IndexKey::Prefix(s) => self.prefixes.remove(s, slot),
            IndexKey::PrefixIgnoreCase(s) => self.prefixes_folded.remove(s, slot),
            IndexKey::Suffix(s) => self.suffixes.remove(s, slot),
            IndexKey::SuffixIgnoreCase(s) => self.suffixes_folded.remove(s, slot),
        }
        self.update_kinds();
    }

    /// Rules whose key here accepts the event scalar `v`.
    #[inline]
    fn collect(&self, v: ScalarRef<'_>, out: &mut Vec<u32>, fold_buf: &mut String) {
        let s = match v {
            ScalarRef::Str(s) => s,
            ScalarRef::Num(x) => {
                if let Some(b) = self.others.get(&ValueKey::Num(num_key(x))) {
                    b.extend_into(out);
                }
                return;
            }
            ScalarRef::Bool(b) => {
                if let Some(b) = self.others.get(&ValueKey::Bool(b)) {
                    b.extend_into(out);
                }
                return;
            }
            ScalarRef::Null => {
                if let Some(b) = self.others.get(&ValueKey::Null) {
                    b.extend_into(out);
                }
                return;
            }
        };
        let kinds = self.kinds;
        if kinds & HAS_STRINGS != 0
            && let Some(bucket) = self.strings.get(s)
        {
            bucket.extend_into(out);
        }
        if kinds & HAS_PREFIXES != 0 {
            self.prefixes.collect(s, Side::Prefix, out);
        }
        if kinds & HAS_SUFFIXES != 0 {
            self.suffixes.collect(s, Side::Suffix, out);
        }
        if kinds & NEEDS_FOLD == 0 {
            return;
        }
        if kinds & NEEDS_FOLD == HAS_FOLDED {
            // Two ASCII characters first: the folded value starts with
            // their lower case.
            if let [a, b, ..] = *s.as_bytes()
                && a.is_ascii()
                && b.is_ascii()
                && !self
                    .folded_heads
                    .may_hold(a.to_ascii_lowercase(), b.to_ascii_lowercase())
            {
                return;
            }
        }
        if kinds & NEEDS_FOLD == HAS_FOLDED
            && let Some(found) = self.folded.get_ascii_lowercase(s)
        {
            if let Some(bucket) = found {
                bucket.extend_into(out);
            }
            return;
        }
        let folded: &str = if s.is_ascii() {
            if s.bytes().any(|b| b.is_ascii_uppercase()) {
                fold_buf.clear();
                fold_buf.push_str(s);
                fold_buf.make_ascii_lowercase();
                fold_buf
            } else {
                s
            }
        } else {
            fold_buf.clear();
            fold_buf.extend(s.chars().map(fold_char));
            fold_buf
        };
        if kinds & HAS_FOLDED != 0
            && let Some(bucket) = self.folded.get(folded)
        {
            bucket.extend_into(out);
        }
        if kinds & HAS_PREFIXES_FOLDED != 0 {
            self.prefixes_folded.collect(folded, Side::Prefix, out);
        }
        if kinds & HAS_SUFFIXES_FOLDED != 0 {
            self.suffixes_folded.collect(folded, Side::Suffix, out);
        }
    }
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
