//! `auth.tokens` reloaded without a restart: the node reads its config
//! file again when the file changes (modification time or length, checked
//! every `auth.reload_interval_ms`) or when it gets `SIGHUP`, and uses the
//! new tokens for every request from then on. Only `auth.tokens` is taken
//! from the file read again; every other setting needs a restart. A file
//! that does not read, or whose tokens are invalid or empty, is reported
//! once and the tokens in use are kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::auth::{LiveTokens, Tokens};
use crate::config::NodeConfig;

/// Modification time and length: what "changed" means.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The tokens of the config file at `path`, checked as at start.
pub fn read_tokens(path: &Path) -> Result<Tokens, String> {
    let cfg = NodeConfig::load(path).map_err(|e| e.to_string())?;
    if cfg.auth.tokens.is_empty() {
        return Err("auth.tokens is empty (at least one token is required)".into());
    }
    Tokens::from_config(&cfg.auth.tokens).map_err(|e| format!("config: {e}"))
}

/// Read the tokens again when `path` changes or on `SIGHUP`, until the
/// process ends.
pub async fn watch(path: PathBuf, live: Arc<LiveTokens>, every: Duration) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: tokens are reloaded when the config file changes only");
            None
        }
    };
    let mut loaded = stamp(&path);
    let mut tried = loaded;
    loop {
        let signalled = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            Some(()) = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        let now = stamp(&path);
        if !signalled && (now == loaded || now == tried) {
            continue;
        }
        tried = now;
        match read_tokens(&path) {
            Ok(tokens) => {
                let n = tokens.len();
                live.replace(tokens);
                loaded = now;
                metrics::counter!("strait_auth_token_reloads_total").increment(1);
                tracing::info!(
                    config = %path.display(),
                    tokens = n,
                    signalled,
                    "auth.tokens reloaded: new requests are checked against them"
                );
            }
            Err(e) => {
                metrics::counter!("strait_auth_token_reload_failures_total").increment(1);
                tracing::warn!(
                    config = %path.display(),
                    error = %e,
                    "the config file changed but its tokens cannot be used; still using the previous tokens"
                );
            }
        }
    }
}
