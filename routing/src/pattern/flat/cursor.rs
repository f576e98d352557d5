//! The reader's place in the JSON text, and reading errors.

use std::fmt;

use super::shapes::Shapes;

/// Why event JSON could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct EventJsonError {
    /// Byte offset where the problem was found.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for EventJsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid event JSON at byte {}: {}",
            self.offset, self.message
        )
    }
}

/// A reading error without allocation (cheap to pass around); becomes an
/// [`EventJsonError`] at the end.
#[derive(Clone, Copy, Debug)]
pub(super) struct ReadErr {
    pub(super) offset: usize,
    pub(super) message: &'static str,
}

impl From<ReadErr> for EventJsonError {
    fn from(e: ReadErr) -> Self {
        EventJsonError {
            offset: e.offset,
            message: e.message.to_string(),
        }
    }
}

/// Reads JSON text from `b[i..]`.
pub(super) struct Reader<'a> {
    /// The text.
    pub(super) b: &'a [u8],
    /// Where reading is.
    pub(super) i: usize,
    /// Strings with escapes, decoded.
    pub(super) scratch: String,
    /// Member names seen in earlier events.
    pub(super) shapes: &'a mut Shapes,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `b`.
    #[inline]
    pub(super) fn new(b: &'a [u8], shapes: &'a mut Shapes) -> Self {
        Reader {
            b,
            i: 0,
            scratch: String::new(),
            shapes,
        }
    }

    /// An error at the current place.
    #[cold]
    pub(super) fn err(&self, message: &'static str) -> ReadErr {
        ReadErr {
            offset: self.i.min(self.b.len()),
            message,
        }
    }

    /// Skips whitespace.
    #[inline(always)]
    pub(super) fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    /// The byte at the current place.
    #[inline]
    pub(super) fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
}
