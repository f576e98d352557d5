//! Certificates over time: this node's cluster certificate (QUIC) rotated
//! on disk is used without a restart, and the expiry of it and of the
//! HTTPS certificate is exported and warned about ahead of time.
//!
//! Every [`CHECK_EVERY`] the node looks at `cluster.certs_dir`'s
//! `node-<id>.pem`, `node-<id>.key` and `ca.pem` (modification time and
//! length); when they changed and load as a valid set for this node, the
//! QUIC endpoint uses them for every connection made or accepted from then
//! on ([`strait_federation::transport::Endpoint::reload_credentials`]); a
//! set that does not load (say, the certificate replaced but not yet its
//! key) is reported once and the previous one kept. Each certificate's
//! expiry is the gauge `strait_cert_not_after_seconds{cert}` (`node`,
//! `http`), and a warning is logged when one expires within
//! [`WARN_BEFORE_DAYS`] days (at start, on every reload, then daily).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use strait_federation::certs;
use strait_federation::transport::Endpoint;

use crate::config::NodeConfig;

/// How often the files are looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// A certificate expiring within this many days is warned about.
pub const WARN_BEFORE_DAYS: i64 = 30;
/// How often the warning is repeated while it holds.
const WARN_EVERY: Duration = Duration::from_secs(24 * 3600);

type Stamps = Vec<Option<(SystemTime, u64)>>;

fn stamps(files: &[PathBuf]) -> Stamps {
    files
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// How a certificate's expiry stands at `now` (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Expired `days` days ago (0: today).
    Expired {
        /// Days since expiry.
        days: i64,
    },
    /// Expires within [`WARN_BEFORE_DAYS`].
    Soon {
        /// Whole days left.
        days: i64,
    },
    /// Expires later.
    Fine {
        /// Whole days left.
        days: i64,
    },
}

/// How `not_after` (Unix seconds) stands at `now`.
pub fn expiry(not_after: i64, now: i64) -> Expiry {
    let left = not_after - now;
    if left <= 0 {
        Expiry::Expired {
            days: -left / 86_400,
        }
    } else if left < WARN_BEFORE_DAYS * 86_400 {
        Expiry::Soon {
            days: left / 86_400,
        }
    } else {
        Expiry::Fine {
            days: left / 86_400,
        }
    }
}

/// Export `path`'s expiry as `strait_cert_not_after_seconds{cert=kind}`
/// and warn when it is near or past.
fn report(kind: &'static str, path: &Path) {
    let info = match certs::read_cert_info(path) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(cert = kind, file = %path.display(), error = %e, "cannot read the certificate to check its expiry");
            return;
        }
    };
    let t = info.not_after_unix();
    // Seconds since the epoch fit an f64 exactly.
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!("strait_cert_not_after_seconds", "cert" => kind).set(t as f64);
    let now = chrono::Utc::now().timestamp();
    let at = chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.to_rfc3339())
        .unwrap_or_default();
    match expiry(t, now) {
        Expiry::Expired { days } => tracing::error!(
            cert = kind,
            file = %path.display(),
            not_after = %at,
            days_ago = days,
            "the certificate has EXPIRED: peers and clients refuse it; issue a new one (strait cert issue) and put it in place (no restart needed)"
        ),
        Expiry::Soon { days } => tracing::warn!(
            cert = kind,
            file = %path.display(),
            not_after = %at,
            days_left = days,
            "the certificate expires within {WARN_BEFORE_DAYS} days; issue a new one (strait cert issue) and put it in place (no restart needed)"
        ),
        Expiry::Fine { .. } => {}
    }
}

/// Watch the node's certificates until the process ends: reload the
/// cluster certificate into `endpoint` when its files change, and report
/// the expiry of it and of `http_tls.cert`.
pub async fn watch(cfg: NodeConfig, endpoint: Option<Endpoint>) {
    let http_cert = cfg.http_tls.as_ref().map(|t| t.cert.clone());
    let node_files: Vec<PathBuf> = match (&cfg.cluster.certs_dir, &endpoint) {
        (Some(dir), Some(_)) => vec![
            dir.join(certs::node_cert_file(cfg.node_id)),
            dir.join(certs::node_key_file(cfg.node_id)),
            dir.join(certs::CA_CERT_FILE),
        ],
        _ => Vec::new(),
    };
    if http_cert.is_none() && node_files.is_empty() {
        return;
    }
    let report_all = || {
        if let Some(f) = node_files.first() {
            report("node", f);
        }
        if let Some(f) = &http_cert {
            report("http", f);
        }
    };
    report_all();
    let mut last_report = Instant::now();
    let mut http_stamp = stamps(http_cert.as_slice());
    let mut loaded = stamps(&node_files);
    let mut tried = loaded.clone();
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let mut changed = false;
        let now = stamps(&node_files);
        if let Some(ep) = &endpoint
            && now != loaded
            && now != tried
        {
            tried = now.clone();
            let reloaded = super::load_credentials(&cfg)
                .and_then(|creds| ep.reload_credentials(&creds).map_err(anyhow::Error::from));
            match reloaded {
                Ok(()) => {
                    loaded = now;
                    changed = true;
                    metrics::counter!("strait_node_cert_reloads_total").increment(1);
                    tracing::info!(
                        file = %node_files.first().map(|f| f.display().to_string()).unwrap_or_default(),
                        "node certificate reloaded: new QUIC connections use it"
                    );
                }
                Err(e) => {
                    metrics::counter!("strait_node_cert_reload_failures_total").increment(1);
                    tracing::warn!(
                        error = %format!("{e:#}"),
                        "the node certificate files changed but cannot be used; still using the previous certificate"
                    );
                }
            }
        }
        let h = stamps(http_cert.as_slice());
        if h != http_stamp {
            http_stamp = h;
            changed = true;
        }
        if changed || last_report.elapsed() >= WARN_EVERY {
            report_all();
            last_report = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_classified_by_days_left() {
        let now = 1_800_000_000;
        let day = 86_400;
        assert_eq!(expiry(now - 1, now), Expiry::Expired { days: 0 });
        assert_eq!(expiry(now - 3 * day, now), Expiry::Expired { days: 3 });
        assert_eq!(expiry(now + day / 2, now), Expiry::Soon { days: 0 });
        assert_eq!(expiry(now + 29 * day, now), Expiry::Soon { days: 29 });
        assert_eq!(expiry(now + 30 * day, now), Expiry::Fine { days: 30 });
    }
}
