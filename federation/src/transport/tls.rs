//! TLS (rustls, aws-lc-rs provider) and QUIC crypto configuration for
//! mutual authentication against the cluster CA.
//!
//! Both sides present a node certificate and require the other's to chain
//! to the cluster CA. Host names are not checked in the handshake: a node's
//! identity is the `strait://site/<site>/node/<id>` URI in its certificate,
//! which the endpoint compares with the expected peer right after the
//! handshake (see [`super::endpoint`]).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::certs::NodeCredentials;
use crate::certs::{provider, root_store};

/// The ALPN protocol of node-to-node traffic.
pub const ALPN: &[u8] = b"strait/1";

/// Verifies a server certificate against the cluster CA only (no host
/// name check; the node identity is checked after the handshake).
#[derive(Debug)]
struct ClusterServerVerifier {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Errors building TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// rustls refused the configuration (bad key, no CA, ...).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// No TLS 1.3 initial cipher suite for QUIC.
    #[error("QUIC crypto: {0}")]
    Quic(String),
}

/// rustls server configuration: present our certificate, require a client
/// certificate chaining to the cluster CA, TLS 1.3, ALPN `strait/1`.
pub fn server_tls_config(creds: &NodeCredentials) -> Result<rustls::ServerConfig, TlsConfigError> {
    let provider = provider();
    let roots = Arc::new(root_store(&creds.ca)?);
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(TlsConfigError::Verifier)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(creds.cert_chain.clone(), creds.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

/// rustls client configuration: present our certificate, require the
/// server's to chain to the cluster CA, TLS 1.3, ALPN `strait/1`.
pub fn client_tls_config(creds: &NodeCredentials) -> Result<rustls::ClientConfig, TlsConfigError> {
    let provider = provider();
    let roots = Arc::new(root_store(&creds.ca)?);
    let verifier = ClusterServerVerifier {
        roots,
        algs: provider.signature_verification_algorithms,
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(creds.cert_chain.clone(), creds.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// quinn server crypto from [`server_tls_config`].
pub fn quic_server_crypto(
    creds: &NodeCredentials,
) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsConfigError> {
    quinn::crypto::rustls::QuicServerConfig::try_from(server_tls_config(creds)?)
        .map_err(|e| TlsConfigError::Quic(e.to_string()))
}

/// quinn client crypto from [`client_tls_config`].
pub fn quic_client_crypto(
    creds: &NodeCredentials,
) -> Result<quinn::crypto::rustls::QuicClientConfig, TlsConfigError> {
    quinn::crypto::rustls::QuicClientConfig::try_from(client_tls_config(creds)?)
        .map_err(|e| TlsConfigError::Quic(e.to_string()))
}
