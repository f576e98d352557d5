//! The first storage error of a node, kept as it happened.
//!
//! openraft stops a node on a storage error, but what it reports is the
//! error it saw first, which is not always the one that happened first: when
//! the state machine's worker fails (a full disk during an apply), Raft's
//! core may try to hand it the next entries before it reads the worker's
//! answer and report only "channel closed". The log store and the state
//! machine note their own errors here, so [`crate::Site::failure`] can name
//! the operating system's error (and the operator can act on it).

use std::sync::{Arc, Mutex};

use openraft::StorageError;

use crate::NodeId;

/// Shared by the log store and the state machine of one node.
#[derive(Debug, Clone, Default)]
pub struct Fault {
    first: Arc<Mutex<Option<String>>>,
}

impl Fault {
    /// Pass `result` on, noting its error if it is the node's first.
    pub fn note<T>(
        &self,
        result: Result<T, StorageError<NodeId>>,
    ) -> Result<T, StorageError<NodeId>> {
        if let Err(e) = &result {
            let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
            if first.is_none() {
                *first = Some(e.to_string());
            }
        }
        result
    }

    /// The first storage error noted, if any.
    pub fn first(&self) -> Option<String> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{ErrorSubject, ErrorVerb};

    #[test]
    fn only_the_first_error_is_kept() {
        let fault = Fault::default();
        assert_eq!(fault.first(), None);
        let ok: Result<u8, StorageError<NodeId>> = Ok(1);
        assert!(fault.note(ok).is_ok());
        assert_eq!(fault.first(), None);
        let full = std::io::Error::from_raw_os_error(27);
        let _ = fault.note::<()>(Err(crate::store::storage_err(
            ErrorSubject::Store,
            ErrorVerb::Write,
            &full,
        )));
        let _ = fault.note::<()>(Err(crate::store::storage_msg(
            ErrorSubject::Store,
            ErrorVerb::Write,
            "channel closed",
        )));
        let first = fault.first().unwrap_or_default();
        assert!(first.contains("File too large"), "{first}");
        assert!(!first.contains("channel closed"), "{first}");
    }
}
