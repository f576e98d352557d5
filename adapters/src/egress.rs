//! Egress control: which hosts and addresses outbound requests of targets
//! and dead letters may reach (node config `egress: {allow, deny}`).
//!
//! An entry is a CIDR (`10.0.0.0/8`, `fd00::/8`, a bare address) or a host
//! suffix (`example.com` matches `example.com` and `api.example.com`).
//! Decisions, in order: a cloud metadata address (`169.254.0.0/16`,
//! `fd00:ec2::254`) or host (`metadata.google.internal`) is denied unless
//! an `allow` entry names it explicitly (a CIDR inside the metadata range,
//! or the host itself); a match in `deny` is denied; an empty `allow`
//! allows the rest, else a match in `allow` is needed.
//!
//! Checked twice: when a target is defined (a literal address, or a host
//! name that no resolution can make acceptable) and when it connects, on
//! the addresses a name resolves to ([`EgressResolver`]), so that a name
//! resolving to a denied address is refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Text every egress refusal starts with (it is also how a refusal is
/// recognised in an error chain).
pub const DENIED: &str = "egress denied";

/// The node config's `egress` section, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressSpec {
    /// CIDRs and host suffixes that may be reached. Empty: everything not
    /// denied.
    pub allow: Vec<String>,
    /// CIDRs and host suffixes that may not be reached (wins over `allow`).
    pub deny: Vec<String>,
}

/// One entry of `allow` or `deny`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Net(IpNet),
    Suffix(String),
}

impl Entry {
    fn parse(text: &str) -> Result<Entry, String> {
        let t = text.trim();
        if let Ok(n) = t.parse::<IpNet>() {
            return Ok(Entry::Net(n.trunc()));
        }
        if let Ok(ip) = t.parse::<IpAddr>() {
            return Ok(Entry::Net(IpNet::from(ip)));
        }
        let s = t
            .trim_start_matches("*.")
            .trim_start_matches('.')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if s.is_empty()
            || s.len() > 253
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            || s.contains("..")
        {
            return Err(format!(
                "{text:?} is neither a CIDR (10.0.0.0/8) nor a host suffix (example.com)"
            ));
        }
        Ok(Entry::Suffix(s))
    }

    fn matches(&self, host: Option<&str>, ip: Option<IpAddr>) -> bool {
        match self {
            Entry::Net(n) => ip.is_some_and(|ip| n.contains(&ip)),
            Entry::Suffix(s) => host.is_some_and(|h| suffix_matches(s, h)),
        }
    }
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Net(n) => write!(f, "{n}"),
            Entry::Suffix(s) => f.write_str(s),
        }
    }
}

fn suffix_matches(suffix: &str, host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == suffix
        || (h.len() > suffix.len()
            && h.ends_with(suffix)
            && h.as_bytes()[h.len() - suffix.len() - 1] == b'.')
}

/// The IPv4 link-local range, where AWS, GCP, Azure and Alibaba Cloud
/// serve instance metadata (and credentials).
const METADATA_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(169, 254, 0, 0), 16);
/// AWS's IPv6 instance metadata address.
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
/// Metadata host names (resolving to the addresses above).
const METADATA_HOSTS: &[&str] = &["metadata.google.internal", "metadata.goog"];

fn metadata_nets() -> [IpNet; 2] {
    [
        IpNet::from(ipnet::Ipv4Net::new_assert(METADATA_V4.0, METADATA_V4.1)),
        IpNet::from(ipnet::Ipv6Net::new_assert(METADATA_V6, 128)),
    ]
}

/// An address as it is compared: IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// A refused destination: why, beginning with [`DENIED`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("egress denied: {0}")]
pub struct EgressDenied(pub String);

/// The checked egress policy of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allow: Vec<Entry>,
    deny: Vec<Entry>,
}

impl EgressPolicy {
    /// Check the entries; the error names the field (`allow[2]`).
    pub fn from_spec(spec: &EgressSpec) -> Result<EgressPolicy, ConfigError> {
        let parse = |name: &str, list: &[String]| -> Result<Vec<Entry>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, t)| {
                    Entry::parse(t).map_err(|m| ConfigError::new(format!("{name}[{i}]"), m))
                })
                .collect()
        };
        Ok(EgressPolicy {
            allow: parse("allow", &spec.allow)?,
            deny: parse("deny", &spec.deny)?,
        })
    }

    /// Whether `allow` names a metadata destination explicitly: a CIDR
    /// inside a metadata range that holds `ip`, or the metadata host.
    fn metadata_allowed(&self, host: Option<&str>, ip: Option<IpAddr>) -> bool {
        self.allow.iter().any(|e| match e {
            Entry::Net(n) => {
                ip.is_some_and(|ip| n.contains(&ip))
                    && metadata_nets().iter().any(|m| m.contains(n))
            }
            Entry::Suffix(s) => {
                host.is_some_and(|h| suffix_matches(s, h))
                    && METADATA_HOSTS.iter().any(|m| suffix_matches(m, s))
            }
        })
    }

    /// Decide for a destination: its host name (when it has one) and the
    /// address connected to (when known). With only a name, a refusal
    /// means no address can make it acceptable.
    pub fn decide(&self, host: Option<&str>, ip: Option<IpAddr>) -> Result<(), EgressDenied> {
        let ip = ip.map(canonical);
        let what = match (host, ip) {
            (Some(h), Some(ip)) if h.trim_matches(['[', ']']) != ip.to_string() => {
                format!("{h} ({ip})")
            }
            (_, Some(ip)) => ip.to_string(),
            (Some(h), None) => h.to_string(),
            (None, None) => return Ok(()),
        };
        let metadata = ip.is_some_and(|ip| metadata_nets().iter().any(|m| m.contains(&ip)))
            || host.is_some_and(|h| METADATA_HOSTS.iter().any(|m| suffix_matches(m, h)));
        if metadata && !self.metadata_allowed(host, ip) {
            return Err(EgressDenied(format!(
                "{what} is a cloud metadata address (allow it explicitly in egress.allow to reach it)"
            )));
        }
        if let Some(e) = self.deny.iter().find(|e| e.matches(host, ip)) {
            return Err(EgressDenied(format!(
                "{what} matches egress.deny entry {e}"
            )));
        }
        if self.allow.is_empty() || self.allow.iter().any(|e| e.matches(host, ip)) {
            return Ok(());
        }
        if ip.is_none() && self.allow.iter().any(|e| matches!(e, Entry::Net(_))) {
            // A name: the addresses it resolves to decide at connect time.
            return Ok(());
        }
        Err(EgressDenied(format!("{what} is not in egress.allow")))
    }

    /// Decide for `url` from what it says (a literal address, or a name
    /// no address can make acceptable).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), EgressDenied> {
        match url.host_str() {
            Some(h) => match h
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            {
                Ok(ip) => self.decide(None, Some(ip)),
                Err(_) => self.decide(Some(h), None),
            },
            None => Ok(()),
        }
    }

    /// [`EgressPolicy::check_url`] for an endpoint in a definition: the
    /// error names `field`.
    pub fn check_endpoint(&self, field: &str, url: &str) -> Result<(), ConfigError> {
        let u = crate::http_url(field, url)?;
        self.check_url(&u)
            .map_err(|e| ConfigError::new(field, e.to_string()))
    }
}

/// Whether an error (with its causes, as [`crate::peer::error_chain`]
/// writes them) is an egress refusal.
pub fn is_denial(chain: &str) -> bool {
    chain.contains(DENIED)
}

/// A DNS resolver for reqwest that drops the addresses the policy denies,
/// and fails with [`EgressDenied`] when none is left.
#[derive(Debug, Clone)]
pub struct EgressResolver {
    policy: Arc<EgressPolicy>,
}

impl EgressResolver {
    /// A resolver enforcing `policy`.
    pub fn new(policy: Arc<EgressPolicy>) -> EgressResolver {
        EgressResolver { policy }
    }
}

impl reqwest::dns::Resolve for EgressResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut denied = None;
            let kept: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.decide(Some(&host), Some(a.ip())) {
                    Ok(()) => true,
                    Err(e) => {
                        denied.get_or_insert(e);
                        false
                    }
                })
                .collect();
            if kept.is_empty()
                && let Some(e) = denied
            {
                return Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

/// `url` with its user info (`user:password@`) replaced by `***@`, for
/// messages; text that is not a URL is returned as it is.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_password(None);
            let _ = u.set_username("***");
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Refuse user info in an endpoint URL (secrets belong in a connection or
/// a credential); the error names `field`.
pub fn refuse_userinfo(field: &str, url: &str) -> Result<(), ConfigError> {
    if let Ok(u) = reqwest::Url::parse(url)
        && (!u.username().is_empty() || u.password().is_some())
    {
        return Err(ConfigError::new(
            field,
            format!(
                "{} carries user info (user:password@): put secrets in a connection \
                 (node config `connections`) instead",
                redact_url(url)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> EgressPolicy {
        EgressPolicy::from_spec(&EgressSpec {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        })
        .expect("valid")
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    #[test]
    fn metadata_is_denied_unless_allowed_explicitly() {
        let p = policy(&[], &[]);
        assert!(p.decide(None, ip("169.254.169.254")).is_err());
        assert!(p.decide(None, ip("::ffff:169.254.169.254")).is_err());
        assert!(p.decide(None, ip("fd00:ec2::254")).is_err());
        assert!(p.decide(Some("metadata.google.internal"), None).is_err());
        assert!(p.decide(None, ip("10.1.2.3")).is_ok());
        // A wide allow is not explicit.
        let p = policy(&["0.0.0.0/0"], &[]);
        assert!(p.decide(None, ip("169.254.169.254")).is_err());
        let p = policy(&["169.254.169.254/32"], &[]);
        assert!(p.decide(None, ip("169.254.169.254")).is_ok());
        assert!(p.decide(None, ip("169.254.169.253")).is_err());
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let p = policy(
            &["10.0.0.0/8", "example.com"],
            &["10.9.0.0/16", "bad.example.com"],
        );
        assert!(p.decide(None, ip("10.1.1.1")).is_ok());
        let e = p.decide(None, ip("10.9.1.1")).expect_err("denied");
        assert!(e.to_string().starts_with(DENIED), "{e}");
        assert!(p.decide(Some("api.example.com"), None).is_ok());
        assert!(p.decide(Some("x.bad.example.com"), ip("10.1.1.1")).is_err());
        assert!(p.decide(Some("notexample.com"), ip("192.0.2.1")).is_err());
        assert!(p.decide(None, ip("192.0.2.1")).is_err());
        // A name not allowed by suffix may still resolve into an allowed net.
        assert!(p.decide(Some("other.org"), None).is_ok());
        assert!(p.decide(Some("other.org"), ip("192.0.2.1")).is_err());
        let p = policy(&["example.com"], &[]);
        assert!(p.decide(Some("other.org"), None).is_err());
    }

    #[test]
    fn entries_are_checked() {
        let e = EgressPolicy::from_spec(&EgressSpec {
            allow: vec!["ok.com".into(), "not a host".into()],
            deny: vec![],
        })
        .expect_err("bad entry");
        assert_eq!(e.field, "allow[1]");
    }

    #[test]
    fn urls_are_checked_and_redacted() {
        let p = policy(&[], &[]);
        let u = reqwest::Url::parse("http://169.254.169.254/latest/meta-data/").expect("url");
        assert!(p.check_url(&u).is_err());
        let u = reqwest::Url::parse("http://[fd00:ec2::254]/").expect("url");
        assert!(p.check_url(&u).is_err());
        // Other spellings of the same address.
        for other in [
            "http://2852039166/",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://[::ffff:169.254.169.254]/",
            "http://METADATA.google.internal./computeMetadata/v1/",
        ] {
            let u = reqwest::Url::parse(other).expect("url");
            assert!(p.check_url(&u).is_err(), "{other}");
        }
        assert_eq!(
            redact_url("https://user:s3cret@example.com/x"),
            "https://***@example.com/x"
        );
        let e =
            refuse_userinfo("endpoint", "https://user:s3cret@example.com/x").expect_err("userinfo");
        assert_eq!(e.field, "endpoint");
        assert!(!e.message.contains("s3cret"), "{}", e.message);
    }
}
