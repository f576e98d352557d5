//! The cluster certificate authority and node certificates.
//!
//! Nodes only talk to nodes holding a certificate from the cluster CA. A node
//! certificate names its holder in a URI subject alternative name,
//! `strait://site/<site>/node/<id>`, next to the DNS names and IP addresses
//! the operator asked for; the transport reads that URI after the TLS
//! handshake and compares it with the node it meant to reach.
//!
//! Files (PEM) in a certificate directory:
//!
//! | file | what | mode |
//! |---|---|---|
//! | `ca.pem` | the cluster CA certificate | 0644 |
//! | `ca.key` | the CA private key (only where certificates are issued) | 0600 |
//! | `node-<id>.pem` | a node certificate | 0644 |
//! | `node-<id>.key` | its private key | 0600 |
//!
//! Rotation: issue a new certificate for the same node id and site (the old
//! files are replaced atomically) and restart the node; peers accept it at
//! once because they trust the CA, not the certificate.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::ParsedCertificate;
use std::sync::Arc;

use crate::NodeId;

/// File name of the CA certificate.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key.
pub const CA_KEY_FILE: &str = "ca.key";
/// Default lifetime of a CA certificate.
pub const DEFAULT_CA_VALIDITY_DAYS: u32 = 3650;
/// Default lifetime of a node certificate.
pub const DEFAULT_NODE_VALIDITY_DAYS: u32 = 365;

/// Margin subtracted from "now" for `notBefore`, for clocks that lag.
const BACKDATE: Duration = Duration::from_secs(3600);
/// The URI scheme and prefix of a node identity.
const URI_PREFIX: &str = "strait://site/";

/// File name of a node certificate.
pub fn node_cert_file(node_id: NodeId) -> String {
    format!("node-{node_id}.pem")
}

/// File name of a node private key.
pub fn node_key_file(node_id: NodeId) -> String {
    format!("node-{node_id}.key")
}

/// What went wrong with a certificate or key.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read, written or understood.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// `init_ca` found an existing CA and will not overwrite it.
    #[error("{} already exists; refusing to overwrite an existing cluster CA", .0.display())]
    AlreadyExists(PathBuf),
    /// A site name that cannot be used in a node identity.
    #[error("invalid site name {0:?}: use 1 to 63 characters from a-z, A-Z, 0-9, '-', '_' and '.'")]
    InvalidSite(String),
    /// A DNS name that cannot go in a certificate.
    #[error("invalid DNS name {name:?}: {message}")]
    InvalidDnsName {
        /// The name.
        name: String,
        /// Why.
        message: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

fn file_err(path: &Path, message: impl ToString) -> CertError {
    CertError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn gen_err(e: rcgen::Error) -> CertError {
    CertError::Generate(e.to_string())
}

/// Who a node certificate belongs to: a node id inside a site.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeIdentity {
    /// The node's id in its site's Raft group.
    pub node_id: NodeId,
    /// The site's name.
    pub site: String,
}

impl NodeIdentity {
    /// An identity, checking the site name.
    pub fn new(node_id: NodeId, site: impl Into<String>) -> Result<NodeIdentity, CertError> {
        let site = site.into();
        validate_site(&site)?;
        Ok(NodeIdentity { node_id, site })
    }

    /// The URI written into the certificate: `strait://site/<site>/node/<id>`.
    pub fn uri(&self) -> String {
        format!("{URI_PREFIX}{}/node/{}", self.site, self.node_id)
    }

    /// Parse an identity URI; `None` when it is not one.
    pub fn from_uri(uri: &str) -> Option<NodeIdentity> {
        let rest = uri.strip_prefix(URI_PREFIX)?;
        let (site, id) = rest.split_once("/node/")?;
        if validate_site(site).is_err() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let node_id = id.parse().ok()?;
        Some(NodeIdentity {
            node_id,
            site: site.to_string(),
        })
    }
}

impl fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} of site {:?}", self.node_id, self.site)
    }
}

/// Check a site name: 1–63 of `[A-Za-z0-9._-]`.
pub fn validate_site(site: &str) -> Result<(), CertError> {
    let ok = !site.is_empty()
        && site.len() <= 63
        && site
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(CertError::InvalidSite(site.to_string()))
    }
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject, as text.
    pub subject: String,
    /// The node identity in its URI SAN, if it carries exactly one.
    pub identity: Option<NodeIdentity>,
    /// DNS names in its SANs.
    pub dns_names: Vec<String>,
    /// IP addresses in its SANs.
    pub ips: Vec<IpAddr>,
    /// Whether it is a CA certificate.
    pub is_ca: bool,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl CertInfo {
    /// Time left until expiry (`None` when already expired).
    pub fn expires_in(&self) -> Option<Duration> {
        self.not_after.duration_since(SystemTime::now()).ok()
    }

    /// End of validity in seconds since the Unix epoch.
    pub fn not_after_unix(&self) -> i64 {
        to_unix(self.not_after)
    }
}

fn to_unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn from_unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Parse a DER certificate into [`CertInfo`].
pub fn cert_info_der(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let mut uris = Vec::new();
    let mut dns_names = Vec::new();
    let mut ips = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName extension: {e}"))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::URI(u) => uris.push(u.to_string()),
                x509_parser::extensions::GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        ips.push(IpAddr::from(a));
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        ips.push(IpAddr::from(a));
                    }
                }
                _ => {}
            }
        }
    }
    let ids: Vec<NodeIdentity> = uris
        .iter()
        .filter_map(|u| NodeIdentity::from_uri(u))
        .collect();
    let identity = if ids.len() == 1 {
        ids.into_iter().next()
    } else {
        None
    };
    let validity = cert.validity();
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        identity,
        dns_names,
        ips,
        is_ca: cert.is_ca(),
        not_before: from_unix(validity.not_before.timestamp()),
        not_after: from_unix(validity.not_after.timestamp()),
    })
}

/// The node identity a DER certificate carries, or why it carries none.
pub fn identity_from_cert_der(der: &[u8]) -> Result<NodeIdentity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName extension: {e}"))?
        .ok_or_else(|| "the certificate has no subjectAltName".to_string())?;
    let mut found = None;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(u) = name
            && u.starts_with("strait:")
        {
            let id = NodeIdentity::from_uri(u)
                .ok_or_else(|| format!("malformed node identity URI {u:?}"))?;
            if found.replace(id).is_some() {
                return Err("the certificate names more than one node identity".into());
            }
        }
    }
    found.ok_or_else(|| {
        "the certificate carries no node identity (URI SAN strait://site/<site>/node/<id>)".into()
    })
}

/// Read a PEM certificate file and describe its first certificate.
pub fn read_cert_info(path: &Path) -> Result<CertInfo, CertError> {
    let certs = read_certs(path)?;
    let first = certs
        .first()
        .ok_or_else(|| file_err(path, "no certificate in file"))?;
    cert_info_der(first).map_err(|m| file_err(path, m))
}

/// Read every certificate of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(
            path,
            "no PEM certificate (BEGIN CERTIFICATE) found",
        ));
    }
    Ok(certs)
}

/// Read a PEM private key file.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| file_err(path, format!("not a PEM private key: {e}")))
}

/// Write a file atomically (temp file, fsync, rename) with the given mode.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp).map_err(|e| file_err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| file_err(&tmp, e))?;
    f.sync_all().map_err(|e| file_err(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

fn validity(days: u32) -> Result<(time::OffsetDateTime, time::OffsetDateTime), CertError> {
    let now = time::OffsetDateTime::now_utc();
    let before = now - BACKDATE;
    let after = now + time::Duration::days(i64::from(days.max(1)));
    Ok((before, after))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Options of a new cluster CA.
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// Lifetime in days.
    pub validity_days: u32,
}

impl Default for CaOptions {
    fn default() -> Self {
        CaOptions {
            validity_days: DEFAULT_CA_VALIDITY_DAYS,
        }
    }
}

/// A CA written by [`init_ca`].
#[derive(Debug, Clone)]
pub struct CaFiles {
    /// `ca.pem`.
    pub cert_path: PathBuf,
    /// `ca.key`.
    pub key_path: PathBuf,
    /// Its description.
    pub info: CertInfo,
}

/// Create a cluster CA in `dir` (`ca.pem`, `ca.key` with mode 0600).
/// Refuses to overwrite an existing CA.
pub fn init_ca(dir: &Path) -> Result<CaFiles, CertError> {
    init_ca_with(dir, &CaOptions::default())
}

/// [`init_ca`] with options.
pub fn init_ca_with(dir: &Path, opts: &CaOptions) -> Result<CaFiles, CertError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(CertError::AlreadyExists(p.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let key = KeyPair::generate().map_err(gen_err)?;
    let mut params = CertificateParams::default();
    let (nb, na) = validity(opts.validity_days)?;
    params.not_before = nb;
    params.not_after = na;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // A distinct name per CA (from its key), so errors can tell CAs apart.
    let kid = params.key_identifier(&key);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Strait");
    dn.push(
        DnType::CommonName,
        format!("Strait cluster CA {}", hex(&kid[..kid.len().min(6)])),
    );
    params.distinguished_name = dn;
    let cert = params.self_signed(&key).map_err(gen_err)?;
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    let info = cert_info_der(cert.der()).map_err(|m| file_err(&cert_path, m))?;
    Ok(CaFiles {
        cert_path,
        key_path,
        info,
    })
}

/// The CA loaded for signing.
struct LoadedCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    not_after: SystemTime,
}

fn load_ca(ca_dir: &Path) -> Result<LoadedCa, CertError> {
    let cert_path = ca_dir.join(CA_CERT_FILE);
    let key_path = ca_dir.join(CA_KEY_FILE);
    let certs = read_certs(&cert_path)?;
    let cert_pem = std::fs::read_to_string(&cert_path).map_err(|e| file_err(&cert_path, e))?;
    let key_pem = std::fs::read_to_string(&key_path).map_err(|e| file_err(&key_path, e))?;
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| file_err(&key_path, format!("not a usable private key: {e}")))?;
    let der = certs
        .first()
        .ok_or_else(|| file_err(&cert_path, "no certificate"))?;
    let (_, x509) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| file_err(&cert_path, format!("not a valid X.509 certificate: {e}")))?;
    if !x509.is_ca() {
        return Err(file_err(&cert_path, "not a CA certificate"));
    }
    if x509.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(file_err(
            &key_path,
            format!("this key does not belong to the CA certificate in {CA_CERT_FILE}"),
        ));
    }
    // Rebuild the issuer name exactly as it is encoded in the CA certificate.
    let mut dn = DistinguishedName::new();
    for attr in x509.subject().iter_attributes() {
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| file_err(&cert_path, "unsupported subject attribute type"))?
            .collect();
        let text = attr
            .as_str()
            .map_err(|e| file_err(&cert_path, format!("unsupported subject attribute: {e}")))?;
        let value = match attr.attr_value().tag() {
            x509_parser::der_parser::asn1_rs::Tag::PrintableString => DnValue::PrintableString(
                text.try_into()
                    .map_err(|e| file_err(&cert_path, format!("bad subject: {e}")))?,
            ),
            x509_parser::der_parser::asn1_rs::Tag::Ia5String => DnValue::Ia5String(
                text.try_into()
                    .map_err(|e| file_err(&cert_path, format!("bad subject: {e}")))?,
            ),
            _ => DnValue::Utf8String(text.to_string()),
        };
        dn.push(DnType::from_oid(&oid), value);
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let not_after = from_unix(x509.validity().not_after.timestamp());
    Ok(LoadedCa {
        cert_pem,
        issuer: Issuer::new(params, key),
        not_after,
    })
}

/// What to put in a node certificate.
#[derive(Debug, Clone)]
pub struct NodeCertRequest {
    /// The node id.
    pub node_id: NodeId,
    /// The node's site.
    pub site: String,
    /// DNS names peers may use to reach it.
    pub dns: Vec<String>,
    /// IP addresses peers may use to reach it.
    pub ips: Vec<IpAddr>,
    /// Lifetime in days (capped at the CA's expiry).
    pub validity_days: u32,
}

/// A node certificate written by [`issue_node_cert`].
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// Who it names.
    pub identity: NodeIdentity,
    /// `node-<id>.pem`.
    pub cert_path: PathBuf,
    /// `node-<id>.key`.
    pub key_path: PathBuf,
    /// The CA certificate copied next to them (`ca.pem`).
    pub ca_path: PathBuf,
    /// Its description.
    pub info: CertInfo,
}

/// Issue a node certificate signed by the CA in `ca_dir`, valid for
/// [`DEFAULT_NODE_VALIDITY_DAYS`], and write `node-<id>.pem`,
/// `node-<id>.key` (0600) and a copy of `ca.pem` into `out_dir`.
/// Existing files of the same node are replaced (rotation).
pub fn issue_node_cert(
    ca_dir: &Path,
    node_id: NodeId,
    site: &str,
    dns: &[String],
    ips: &[IpAddr],
    out_dir: &Path,
) -> Result<IssuedCert, CertError> {
    issue_node_cert_with(
        ca_dir,
        &NodeCertRequest {
            node_id,
            site: site.to_string(),
            dns: dns.to_vec(),
            ips: ips.to_vec(),
            validity_days: DEFAULT_NODE_VALIDITY_DAYS,
        },
        out_dir,
    )
}

/// [`issue_node_cert`] with every option.
pub fn issue_node_cert_with(
    ca_dir: &Path,
    req: &NodeCertRequest,
    out_dir: &Path,
) -> Result<IssuedCert, CertError> {
    let identity = NodeIdentity::new(req.node_id, req.site.clone())?;
    let ca = load_ca(ca_dir)?;
    let mut sans = vec![SanType::URI(identity.uri().try_into().map_err(
        |e: rcgen::Error| CertError::InvalidSite(format!("{}: {e}", req.site)),
    )?)];
    for d in &req.dns {
        let name = d
            .clone()
            .try_into()
            .map_err(|e: rcgen::Error| CertError::InvalidDnsName {
                name: d.clone(),
                message: e.to_string(),
            })?;
        if d.is_empty() || d.parse::<IpAddr>().is_ok() {
            return Err(CertError::InvalidDnsName {
                name: d.clone(),
                message: "not a DNS name (give IP addresses as IPs)".into(),
            });
        }
        sans.push(SanType::DnsName(name));
    }
    for ip in &req.ips {
        sans.push(SanType::IpAddress(*ip));
    }
    let key = KeyPair::generate().map_err(gen_err)?;
    let mut params = CertificateParams::default();
    let (nb, mut na) = validity(req.validity_days)?;
    let ca_end = time::OffsetDateTime::from_unix_timestamp(to_unix(ca.not_after))
        .map_err(|e| CertError::Generate(e.to_string()))?;
    if na > ca_end {
        na = ca_end;
    }
    params.not_before = nb;
    params.not_after = na;
    params.subject_alt_names = sans;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Strait");
    dn.push(DnType::OrganizationalUnitName, identity.site.clone());
    dn.push(
        DnType::CommonName,
        format!("strait node {}", identity.node_id),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &ca.issuer).map_err(gen_err)?;

    std::fs::create_dir_all(out_dir).map_err(|e| file_err(out_dir, e))?;
    let cert_path = out_dir.join(node_cert_file(req.node_id));
    let key_path = out_dir.join(node_key_file(req.node_id));
    let ca_path = out_dir.join(CA_CERT_FILE);
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    let same_ca = std::fs::read_to_string(&ca_path)
        .map(|s| s == ca.cert_pem)
        .unwrap_or(false);
    if !same_ca {
        write_file(&ca_path, ca.cert_pem.as_bytes(), 0o644)?;
    }
    let info = cert_info_der(cert.der()).map_err(|m| file_err(&cert_path, m))?;
    Ok(IssuedCert {
        identity,
        cert_path,
        key_path,
        ca_path,
        info,
    })
}

/// The crypto provider used everywhere (aws-lc-rs): the transport's TLS and
/// the checks of loaded credentials.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A root store holding the cluster CA certificates.
pub fn root_store(ca: &[CertificateDer<'static>]) -> Result<RootCertStore, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c.clone())?;
    }
    if roots.is_empty() {
        return Err(rustls::Error::General("no CA certificate to trust".into()));
    }
    Ok(roots)
}

/// Check that `chain` (leaf first) chains to one of the `ca` certificates
/// and is valid now.
pub fn verify_chain(
    chain: &[CertificateDer<'static>],
    ca: &[CertificateDer<'static>],
) -> Result<(), rustls::Error> {
    let roots = root_store(ca)?;
    let leaf = chain
        .first()
        .ok_or_else(|| rustls::Error::General("empty certificate chain".into()))?;
    let parsed = ParsedCertificate::try_from(leaf)?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        &chain[1..],
        UnixTime::now(),
        provider().signature_verification_algorithms.all,
    )
}

/// What a node needs to join the cluster's transport: its certificate
/// chain and key, the identity they carry, and the CA it trusts.
#[derive(Debug)]
pub struct NodeCredentials {
    /// The identity in the node's certificate.
    pub identity: NodeIdentity,
    /// The node's certificate (first) and any intermediates.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The node's private key.
    pub key: PrivateKeyDer<'static>,
    /// The cluster CA certificates to trust.
    pub ca: Vec<CertificateDer<'static>>,
    /// Description of the node certificate (expiry, names).
    pub info: CertInfo,
}

impl Clone for NodeCredentials {
    fn clone(&self) -> Self {
        NodeCredentials {
            identity: self.identity.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            ca: self.ca.clone(),
            info: self.info.clone(),
        }
    }
}

/// Load a node's certificate, key and the CA, checking that the key
/// matches the certificate, that the certificate carries a node identity,
/// and that it is signed by the CA and currently valid.
pub fn load_node_identity(
    cert_path: &Path,
    key_path: &Path,
    ca_path: &Path,
) -> Result<NodeCredentials, CertError> {
    let cert_chain = read_certs(cert_path)?;
    let key = read_private_key(key_path)?;
    let ca = read_certs(ca_path)?;
    let leaf = cert_chain
        .first()
        .ok_or_else(|| file_err(cert_path, "no certificate"))?;
    let info = cert_info_der(leaf).map_err(|m| file_err(cert_path, m))?;
    let identity = identity_from_cert_der(leaf).map_err(|m| file_err(cert_path, m))?;
    let provider = provider();
    rustls::sign::CertifiedKey::from_der(cert_chain.clone(), key.clone_key(), &provider).map_err(
        |e| {
            file_err(
                key_path,
                format!(
                    "does not match the certificate in {}: {e}",
                    cert_path.display()
                ),
            )
        },
    )?;
    verify_chain(&cert_chain, &ca).map_err(|e| {
        file_err(
            cert_path,
            format!("not accepted by the CA in {}: {e}", ca_path.display()),
        )
    })?;
    Ok(NodeCredentials {
        identity,
        cert_chain,
        key,
        ca,
        info,
    })
}

/// [`load_node_identity`] with the standard file names in one directory:
/// `node-<id>.pem`, `node-<id>.key`, `ca.pem`.
pub fn load_node_identity_from_dir(
    dir: &Path,
    node_id: NodeId,
) -> Result<NodeCredentials, CertError> {
    load_node_identity(
        &dir.join(node_cert_file(node_id)),
        &dir.join(node_key_file(node_id)),
        &dir.join(CA_CERT_FILE),
    )
}
