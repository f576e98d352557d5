//! The signature nonces of the signed ingresses (Alibaba PutEvents, SigV4
//! with `aws.replay_cache`), kept in the site's replicated state: each is
//! used through the site's Raft log ([`Command::UseNonce`]), so a nonce
//! accepted by one node is refused by every node of the site, also after a
//! restart, until it expires (twice the clock skew after its use).

use strait_adapters::IngestError;
use strait_adapters::nonces::{NonceFuture, NonceStore};
use strait_federation::{Command, CommandResponse, FederationError, Refusal};

use super::Writer;

/// Nonces used through the site's leader.
#[derive(Clone)]
pub struct SiteNonces {
    writer: Writer,
}

impl SiteNonces {
    /// Nonces written through `writer`.
    pub fn new(writer: Writer) -> SiteNonces {
        SiteNonces { writer }
    }
}

impl std::fmt::Debug for SiteNonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SiteNonces")
    }
}

impl NonceStore for SiteNonces {
    fn use_once(
        &self,
        key: String,
        request: String,
        now_ms: u64,
        until_ms: u64,
    ) -> NonceFuture<'_> {
        Box::pin(async move {
            let cmd = Command::UseNonce {
                key,
                request,
                now_ms,
                until_ms,
            };
            match self.writer.write(cmd).await {
                Ok(CommandResponse::Ok) => Ok(true),
                Ok(CommandResponse::Refused(Refusal::NonceUsed)) => Ok(false),
                Ok(other) => Err(IngestError::Failed(format!(
                    "unexpected answer to a nonce: {other:?}"
                ))),
                Err(e @ (FederationError::NotLeader { .. } | FederationError::Unreachable(_))) => {
                    Err(IngestError::NotReady(e.to_string()))
                }
                Err(e) => Err(IngestError::Failed(e.to_string())),
            }
        })
    }
}
