//! The tape a flattened event is recorded on: a slot per value kept,
//! objects' members as (field node, slot), arrays' elements, the strings,
//! and every scalar listed again as a leaf with its field node.

use super::shapes::Shapes;
use crate::pattern::matcher::ScalarRef;

/// Deepest nesting of arrays and objects the flattener follows (as
/// `serde_json`'s own limit).
pub const MAX_EVENT_DEPTH: usize = 128;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Slot {
    /// `members[start..start + len]`
    Obj {
        start: u32,
        len: u32,
    },
    /// `elems[start..start + len]`
    Arr {
        start: u32,
        len: u32,
    },
    /// `text[start..start + len]`
    Str {
        start: u32,
        len: u32,
    },
    Num(f64),
    Bool(bool),
    Null,
}

/// A flattened event (see the documentation of the `flat` module). Buffers are reused
/// across events.
#[derive(Clone, Debug)]
pub(crate) struct FlatEvent {
    pub(crate) slots: Vec<Slot>,
    /// (field node, slot)
    members: Vec<(u32, u32)>,
    elems: Vec<u32>,
    /// The strings, once reading is done (see `buf`).
    text: String,
    /// The strings while reading: each is checked to be UTF-8 as it is
    /// added, and the whole becomes `text` at the end (one more check, of
    /// text already known to be valid, instead of one per string).
    buf: Vec<u8>,
    /// Every scalar slot with the field node it sits at.
    pub(crate) leaves: Vec<(u32, u32)>,
    /// Work stacks for members and elements of open containers.
    pub(super) pending_members: Vec<(u32, u32)>,
    pub(super) pending_elems: Vec<u32>,
    /// Member names seen in earlier events (see [`Shapes`]).
    pub(super) shapes: Option<Box<Shapes>>,
}

impl Default for FlatEvent {
    fn default() -> Self {
        Self::new()
    }
}

impl FlatEvent {
    pub(crate) const fn new() -> Self {
        FlatEvent {
            slots: Vec::new(),
            members: Vec::new(),
            elems: Vec::new(),
            text: String::new(),
            buf: Vec::new(),
            leaves: Vec::new(),
            pending_members: Vec::new(),
            pending_elems: Vec::new(),
            shapes: None,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.members.clear();
        self.elems.clear();
        self.buf = std::mem::take(&mut self.text).into_bytes();
        self.buf.clear();
        self.leaves.clear();
        self.pending_members.clear();
        self.pending_elems.clear();
    }

    /// Drops buffers that grew unusually large (after a huge event).
    pub(crate) fn trim(&mut self) {
        const KEEP: usize = 1 << 16;
        if self.slots.capacity() > KEEP || self.text.capacity().max(self.buf.capacity()) > 4 * KEEP
        {
            *self = FlatEvent::default();
        }
    }

    /// The root slot (the event itself), if any.
    pub(crate) fn root(&self) -> Option<u32> {
        if self.slots.is_empty() { None } else { Some(0) }
    }

    #[inline]
    pub(crate) fn slot(&self, i: u32) -> Slot {
        self.slots[i as usize]
    }

    #[inline]
    pub(crate) fn elems(&self, start: u32, len: u32) -> &[u32] {
        &self.elems[start as usize..(start + len) as usize]
    }

    /// The member `field` of an object slot.
    #[inline]
    pub(crate) fn member(&self, start: u32, len: u32, field: u32) -> Option<u32> {
        self.members[start as usize..(start + len) as usize]
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, s)| *s)
    }

    /// The scalar in a slot; None for containers.
    #[inline]
    pub(crate) fn scalar(&self, i: u32) -> Option<ScalarRef<'_>> {
        Some(match self.slots[i as usize] {
            Slot::Str { start, len } => {
                ScalarRef::Str(&self.text[start as usize..(start + len) as usize])
            }
            Slot::Num(x) => ScalarRef::Num(x),
            Slot::Bool(b) => ScalarRef::Bool(b),
            Slot::Null => ScalarRef::Null,
            Slot::Obj { .. } | Slot::Arr { .. } => return None,
        })
    }

    /// Calls `f` on every scalar reachable from slot `i` through arrays
    /// (objects are not leaves); true as soon as `f` is.
    pub(crate) fn any_scalar(&self, i: u32, f: &mut impl FnMut(ScalarRef<'_>) -> bool) -> bool {
        match self.slots[i as usize] {
            Slot::Arr { start, len } => self
                .elems(start, len)
                .iter()
                .any(|&e| self.any_scalar(e, f)),
            Slot::Obj { .. } => false,
            _ => self.scalar(i).is_some_and(f),
        }
    }

    #[inline]
    pub(super) fn push_slot(&mut self, slot: Slot) -> u32 {
        self.slots.push(slot);
        (self.slots.len() - 1) as u32
    }

    #[inline]
    pub(super) fn push_str(&mut self, field: u32, s: &str) -> u32 {
        self.push_checked(field, s.as_bytes())
    }

    /// Adds a string already known to be UTF-8.
    #[inline]
    pub(super) fn push_checked(&mut self, field: u32, s: &[u8]) -> u32 {
        let start = self.buf.len() as u32;
        if s.len() <= 16 {
            // Short (the usual case): not worth a `memcpy` call.
            self.buf.extend(s.iter().copied());
        } else {
            self.buf.extend_from_slice(s);
        }
        let slot = self.push_slot(Slot::Str {
            start,
            len: s.len() as u32,
        });
        self.leaves.push((field, slot));
        slot
    }

    #[inline]
    pub(super) fn push_scalar(&mut self, field: u32, slot: Slot) -> u32 {
        let i = self.push_slot(slot);
        self.leaves.push((field, i));
        i
    }

    #[inline]
    pub(super) fn close_object(&mut self, slot: u32, mark: usize) {
        let start = self.members.len() as u32;
        let len = (self.pending_members.len() - mark) as u32;
        // Usually a member or two: not worth a `memcpy` call.
        for k in mark..self.pending_members.len() {
            let m = self.pending_members[k];
            self.members.push(m);
        }
        self.pending_members.truncate(mark);
        self.slots[slot as usize] = Slot::Obj { start, len };
    }

    #[inline]
    pub(super) fn close_array(&mut self, slot: u32, mark: usize) {
        let start = self.elems.len() as u32;
        let len = (self.pending_elems.len() - mark) as u32;
        self.elems.extend_from_slice(&self.pending_elems[mark..]);
        self.pending_elems.truncate(mark);
        self.slots[slot as usize] = Slot::Arr { start, len };
    }

    /// Moves the strings read into `text`; false (and no text) if they
    /// were not UTF-8, which the readers rule out string by string.
    pub(super) fn finish_text(&mut self) -> bool {
        match String::from_utf8(std::mem::take(&mut self.buf)) {
            Ok(t) => {
                self.text = t;
                true
            }
            Err(e) => {
                self.buf = e.into_bytes();
                false
            }
        }
    }
}
