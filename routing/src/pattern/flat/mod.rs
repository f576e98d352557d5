//! The flattened event: one pass over the JSON text (or over a parsed
//! [`Value`](serde_json::Value)) that keeps only what lies on the field
//! paths of a rule set.
//!
//! The result is a small tape: objects hold only the members the rules read
//! (as field-node ids), arrays keep their elements (so "one element must
//! satisfy the whole object" can be checked), and every scalar is also listed
//! as a leaf `(field node, value)` for the index. Everything else in the
//! event is skipped without being decoded. Matching any number of rules then
//! works on this tape; no rule walks the JSON again.
//!
//! Reading JSON text:
//!
//! * What is recorded is fully checked (string escapes, UTF-8, number syntax,
//!   literals); skipped values are only scanned for their end, so a malformed
//!   value the rules never look at may go unnoticed.
//! * An object is left as soon as every member name the rules need has been
//!   seen, and the whole text as soon as the top-level object has shown all
//!   of them, so duplicate member names resolve to their **first**
//!   occurrence (RFC 8259 leaves duplicates undefined; `serde_json` keeps the
//!   last one).
//!
//! The modules, from the bottom up: `swar` (word-at-a-time byte tests),
//! `shapes` (member names remembered across events), `tape` (the flattened
//! event), `cursor` (the reader's place in the text, and its errors),
//! `strings`, `numbers` and `skip` (what the reader takes apart: strings,
//! numbers exactly as `serde_json` reads them, and values no rule reads),
//! `read` (JSON text onto the tape) and `value` (a parsed value onto it).

mod cursor;
mod numbers;
mod read;
mod shapes;
mod skip;
mod strings;
mod swar;
mod tape;
#[cfg(test)]
mod testing;
mod value;

pub use cursor::EventJsonError;
pub use tape::MAX_EVENT_DEPTH;
pub(crate) use tape::{FlatEvent, Slot};
