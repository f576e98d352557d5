//! TLS of the HTTP listener: the rustls server configuration built from
//! `http_tls` (aws-lc-rs, the provider of the QUIC transport), swapped for
//! a new one when the PEM files change on disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use strait_federation::certs;

use crate::config::HttpTls;

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file is unreadable or not PEM.
    #[error("{field}: {error}")]
    File {
        /// The config field naming the file.
        field: &'static str,
        /// Why.
        error: certs::CertError,
    },
    /// The files do not make a usable configuration.
    #[error("{field}: {message}")]
    Invalid {
        /// The config field.
        field: &'static str,
        /// Why.
        message: String,
    },
}

/// Build the server configuration from the files named by `t`.
pub fn load(t: &HttpTls) -> Result<ServerConfig, TlsError> {
    let chain = certs::read_certs(&t.cert).map_err(|error| TlsError::File {
        field: "http_tls.cert",
        error,
    })?;
    let key = certs::read_private_key(&t.key).map_err(|error| TlsError::File {
        field: "http_tls.key",
        error,
    })?;
    let provider = certs::provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid {
            field: "http_tls",
            message: e.to_string(),
        })?;
    let builder = match &t.client_ca {
        Some(ca_path) => {
            let ca = certs::read_certs(ca_path).map_err(|error| TlsError::File {
                field: "http_tls.client_ca",
                error,
            })?;
            let roots = certs::root_store(&ca).map_err(|e| TlsError::Invalid {
                field: "http_tls.client_ca",
                message: e.to_string(),
            })?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Invalid {
                    field: "http_tls.client_ca",
                    message: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Invalid {
            field: "http_tls.key",
            message: format!(
                "does not match the certificate in {}: {e}",
                t.cert.display()
            ),
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Expiry (Unix seconds) of the first certificate in `path`.
fn not_after(path: &Path) -> Option<i64> {
    certs::read_cert_info(path).ok().map(|i| i.not_after_unix())
}

/// Modification time and length of each file: what "changed" means.
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

/// The current server configuration, replaced when the files change.
pub struct ReloadingTls {
    spec: HttpTls,
    current: RwLock<Arc<ServerConfig>>,
}

impl ReloadingTls {
    /// Load the files once; fails when they cannot be used.
    pub fn new(spec: HttpTls) -> Result<Arc<ReloadingTls>, TlsError> {
        let cfg = load(&spec)?;
        record_expiry(&spec);
        Ok(Arc::new(ReloadingTls {
            spec,
            current: RwLock::new(Arc::new(cfg)),
        }))
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut f = vec![self.spec.cert.clone(), self.spec.key.clone()];
        f.extend(self.spec.client_ca.clone());
        f
    }

    /// Check the files every `reload_interval_ms` until the process ends;
    /// when they changed, load them and use them for new handshakes. A set
    /// that cannot be used (say, the certificate was replaced but not yet
    /// its key) is reported once and the previous one kept.
    pub async fn watch(self: Arc<Self>) {
        let files = self.files();
        let mut loaded = stamps(&files);
        let mut tried = loaded.clone();
        let every = Duration::from_millis(self.spec.reload_interval_ms);
        loop {
            tokio::time::sleep(every).await;
            let now = stamps(&files);
            if now == loaded || now == tried {
                continue;
            }
            tried = now.clone();
            match load(&self.spec) {
                Ok(cfg) => {
                    match self.current.write() {
                        Ok(mut g) => *g = Arc::new(cfg),
                        Err(p) => *p.into_inner() = Arc::new(cfg),
                    }
                    loaded = now;
                    record_expiry(&self.spec);
                    metrics::counter!("strait_http_tls_reloads_total").increment(1);
                    tracing::info!(
                        cert = %self.spec.cert.display(),
                        "HTTP TLS certificate reloaded: new handshakes use it"
                    );
                }
                Err(e) => {
                    metrics::counter!("strait_http_tls_reload_failures_total").increment(1);
                    tracing::warn!(
                        error = %e,
                        "HTTP TLS files changed but cannot be used; still serving the previous certificate"
                    );
                }
            }
        }
    }
}

fn record_expiry(spec: &HttpTls) {
    if let Some(t) = not_after(&spec.cert) {
        // Seconds since the epoch fit an f64 exactly.
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("strait_http_tls_cert_not_after_seconds").set(t as f64);
    }
}
