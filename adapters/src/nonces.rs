//! Single-use signature nonces: where a signed ingress remembers the
//! nonces (Alibaba `x-acs-signature-nonce`) and signatures (SigV4) it has
//! accepted, so that a captured request cannot be sent again within its
//! clock-skew window.
//!
//! [`MemoryNonces`] remembers them in this process only; the node gives
//! the ingresses a store replicated through its site's Raft log, so that
//! a replay is refused after a restart and at every node of the site.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use crate::IngestError;

/// Most remembered nonces of a [`MemoryNonces`] before expired ones are
/// pruned.
const PRUNE_AT: usize = 10_000;

/// The answer of [`NonceStore::use_once`]: `true` when the nonce was new.
pub type NonceFuture<'a> = Pin<Box<dyn Future<Output = Result<bool, IngestError>> + Send + 'a>>;

/// Where used nonces are remembered.
pub trait NonceStore: Send + Sync + std::fmt::Debug {
    /// Use `key` for the request `request` (an id unique to it) at
    /// `now_ms`, remembered until `until_ms` (ms since the epoch): `true`
    /// when it was new (or used by this same request before), `false` when
    /// another request used it and it is still remembered.
    fn use_once(&self, key: String, request: String, now_ms: u64, until_ms: u64)
    -> NonceFuture<'_>;
}

/// Nonces remembered in this process (lost on restart, not shared with the
/// other nodes of a site).
#[derive(Debug, Default)]
pub struct MemoryNonces {
    /// Nonce → (ms until which it is remembered, request id).
    nonces: Mutex<HashMap<String, (u64, String)>>,
}

impl MemoryNonces {
    /// Use a nonce (see [`NonceStore::use_once`]).
    pub fn use_now(&self, key: &str, request: &str, now_ms: u64, until_ms: u64) -> bool {
        let mut map = match self.nonces.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some((t, by)) = map.get(key)
            && *t >= now_ms
        {
            return by == request;
        }
        if map.len() >= PRUNE_AT {
            map.retain(|_, (t, _)| *t >= now_ms);
        }
        map.insert(key.to_string(), (until_ms, request.to_string()));
        true
    }
}

impl NonceStore for MemoryNonces {
    fn use_once(
        &self,
        key: String,
        request: String,
        now_ms: u64,
        until_ms: u64,
    ) -> NonceFuture<'_> {
        let fresh = self.use_now(&key, &request, now_ms, until_ms);
        Box::pin(async move { Ok(fresh) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_single_use_within_their_window() {
        let s = MemoryNonces::default();
        assert!(s.use_now("n1", "a", 100, 200));
        assert!(!s.use_now("n1", "b", 150, 250));
        assert!(s.use_now("n1", "a", 150, 250));
        assert!(s.use_now("n1", "c", 201, 300));
        assert!(s.use_now("n2", "d", 150, 250));
    }
}
