//! The index of a rule set: per field node, the rules filed under each key
//! (exact values, folded values, prefixes and suffixes, plain or ignoring
//! case), looked up with the event's values.

use std::collections::HashMap;
use std::hash::Hash;

use crate::pattern::fields::name_tag;
use crate::pattern::matcher::{IndexKey, ScalarRef, ValueKey, fold_char, num_key};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Marks a bucket entry whose hit alone proves the rule matches (see
/// `certain_leaf` in the rule set); the rest is the rule's slot.
pub(super) const CERTAIN: u32 = 1 << 31;

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
pub(super) struct IndexNode {
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
    pub(super) fn is_empty(&self) -> bool {
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

    pub(super) fn bucket_len(&self, key: &IndexKey) -> usize {
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

    pub(super) fn add(&mut self, key: &IndexKey, v: u32) {
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

    pub(super) fn remove(&mut self, key: &IndexKey, slot: u32) {
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
    pub(super) fn collect(&self, v: ScalarRef<'_>, out: &mut Vec<u32>, fold_buf: &mut String) {
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
