//! Signature nonces used once per site (`Command::UseNonce`): a second use
//! by another request is refused while remembered, a retry of the same
//! request is not, expired nonces are forgotten, and the set survives a
//! restart and a snapshot.

use std::path::Path;
use std::sync::Arc;

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use strait_federation::{Command, CommandResponse, Refusal, SiteState, TypeConfig};

const T0: u64 = 1_800_000_000_000;

struct Site {
    state: Arc<SiteState>,
    index: u64,
}

impl Site {
    fn open(path: &Path) -> anyhow::Result<Site> {
        let state = SiteState::open(&path.join("state.redb"))?;
        let index = state.view().last_applied.map_or(0, |l| l.index) + 1;
        Ok(Site { state, index })
    }

    fn apply(&mut self, cmd: Command) -> anyhow::Result<CommandResponse> {
        let e = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload: EntryPayload::Normal(cmd),
        };
        self.index += 1;
        let mut r = self.state.apply(vec![e], true)?;
        r.pop().ok_or_else(|| anyhow::anyhow!("no response"))
    }

    /// Use `key` for `request` at `now`, remembered for a minute.
    fn use_nonce(&mut self, key: &str, request: &str, now: u64) -> anyhow::Result<bool> {
        match self.apply(Command::UseNonce {
            key: key.into(),
            request: request.into(),
            now_ms: now,
            until_ms: now + 60_000,
        })? {
            CommandResponse::Ok => Ok(true),
            CommandResponse::Refused(Refusal::NonceUsed) => Ok(false),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }
}

#[test]
fn a_nonce_is_used_once_until_it_expires() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut site = Site::open(dir.path())?;
    assert!(site.use_nonce("alibaba:k:n1", "r1", T0)?);
    // Another request with the same nonce: a replay.
    assert!(!site.use_nonce("alibaba:k:n1", "r2", T0 + 1_000)?);
    // The same request again (a retried forward): not a replay of itself.
    assert!(site.use_nonce("alibaba:k:n1", "r1", T0 + 1_000)?);
    // Another key id, another nonce.
    assert!(site.use_nonce("alibaba:k2:n1", "r3", T0 + 1_000)?);
    // Past its minute the nonce is forgotten and may be used again.
    assert!(site.use_nonce("alibaba:k:n1", "r4", T0 + 61_000)?);
    assert!(!site.use_nonce("alibaba:k:n1", "r5", T0 + 62_000)?);
    Ok(())
}

#[test]
fn expired_nonces_are_pruned() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut site = Site::open(dir.path())?;
    for i in 0..200 {
        assert!(site.use_nonce(&format!("n{i}"), "r", T0)?);
    }
    assert_eq!(site.state.nonce_count()?, 200);
    // Each later use forgets a bounded batch of the expired ones.
    for i in 0..10 {
        assert!(site.use_nonce(&format!("m{i}"), "r", T0 + 120_000)?);
    }
    assert_eq!(site.state.nonce_count()?, 10);
    Ok(())
}

#[test]
fn nonces_survive_a_restart_and_a_snapshot() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let mut site = Site::open(dir.path())?;
        assert!(site.use_nonce("alibaba:k:kept", "r1", T0)?);
    }
    let mut site = Site::open(dir.path())?;
    assert!(!site.use_nonce("alibaba:k:kept", "r2", T0 + 1)?);

    let image = site.state.snapshot_bytes()?;
    let other = tempfile::tempdir()?;
    let mut fresh = Site::open(other.path())?;
    fresh.state.install_snapshot(&image.data)?;
    fresh.index = site.index;
    assert!(!fresh.use_nonce("alibaba:k:kept", "r3", T0 + 2)?);
    assert!(fresh.use_nonce("alibaba:k:new", "r3", T0 + 2)?);
    Ok(())
}
