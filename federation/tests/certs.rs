//! The cluster CA and node certificates on real files.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use strait_federation::certs::{
    self, CertError, NodeCertRequest, NodeIdentity, issue_node_cert, issue_node_cert_with,
    load_node_identity, load_node_identity_from_dir,
};

#[cfg(unix)]
fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("meta").permissions().mode() & 0o777
}

#[test]
fn init_ca_writes_files_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = certs::init_ca(dir.path()).expect("init");
    assert!(ca.cert_path.ends_with("ca.pem"));
    assert!(ca.info.is_ca);
    assert!(ca.info.identity.is_none());
    let left = ca.info.expires_in().expect("valid");
    assert!(left > Duration::from_secs(3640 * 86400), "{left:?}");
    #[cfg(unix)]
    assert_eq!(mode(&ca.key_path), 0o600);
    let again = certs::init_ca(dir.path());
    assert!(
        matches!(again, Err(CertError::AlreadyExists(_))),
        "{again:?}"
    );
    // The original CA is untouched.
    let info = certs::read_cert_info(&ca.cert_path).expect("read");
    assert_eq!(info, ca.info);
}

#[test]
fn issue_and_load_a_node_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    certs::init_ca(dir.path()).expect("init");
    let out = dir.path().join("node7");
    let issued = issue_node_cert(
        dir.path(),
        7,
        "aws-us-east-1",
        &["n7.example.internal".to_string()],
        &[
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ],
        &out,
    )
    .expect("issue");
    assert_eq!(
        issued.identity,
        NodeIdentity::new(7, "aws-us-east-1").expect("id")
    );
    assert!(out.join("node-7.pem").exists());
    assert!(out.join("node-7.key").exists());
    assert!(out.join("ca.pem").exists());
    #[cfg(unix)]
    assert_eq!(mode(&issued.key_path), 0o600);

    let info = certs::read_cert_info(&issued.cert_path).expect("info");
    assert_eq!(info.identity, Some(issued.identity.clone()));
    assert_eq!(info.dns_names, vec!["n7.example.internal".to_string()]);
    assert_eq!(
        info.ips,
        vec![
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        ]
    );
    assert!(!info.is_ca);
    let left = info.expires_in().expect("valid");
    assert!(left > Duration::from_secs(364 * 86400) && left <= Duration::from_secs(366 * 86400));
    assert!(info.not_before <= SystemTime::now());
    assert!(info.not_after_unix() > 0);

    let creds = load_node_identity_from_dir(&out, 7).expect("load");
    assert_eq!(creds.identity, issued.identity);
    assert_eq!(creds.cert_chain.len(), 1);
    assert_eq!(creds.ca.len(), 1);
    assert_eq!(creds.info.not_after, info.not_after);
}

#[test]
fn rotation_replaces_the_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    certs::init_ca(dir.path()).expect("init");
    let a = issue_node_cert(dir.path(), 1, "idc", &[], &[], dir.path()).expect("issue");
    let first = std::fs::read(&a.cert_path).expect("read");
    let b = issue_node_cert_with(
        dir.path(),
        &NodeCertRequest {
            node_id: 1,
            site: "idc".into(),
            dns: vec![],
            ips: vec![],
            validity_days: 30,
        },
        dir.path(),
    )
    .expect("reissue");
    assert_ne!(first, std::fs::read(&b.cert_path).expect("read"));
    let creds = load_node_identity_from_dir(dir.path(), 1).expect("load");
    let left = creds.info.expires_in().expect("valid");
    assert!(left <= Duration::from_secs(30 * 86400), "{left:?}");
    // The CA files are still the CA's (ca.pem was not rewritten by the
    // node issue into the same directory).
    assert!(
        certs::read_cert_info(&dir.path().join("ca.pem"))
            .expect("ca")
            .is_ca
    );
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = tempfile::tempdir().expect("tempdir");
    certs::init_ca(dir.path()).expect("init");
    certs::init_ca(other.path()).expect("init other");
    issue_node_cert(dir.path(), 1, "idc", &[], &[], dir.path()).expect("1");
    issue_node_cert(dir.path(), 2, "idc", &[], &[], dir.path()).expect("2");
    issue_node_cert(other.path(), 3, "idc", &[], &[], other.path()).expect("3");

    // Issuing without a CA.
    let empty = tempfile::tempdir().expect("tempdir");
    let e = issue_node_cert(empty.path(), 1, "idc", &[], &[], empty.path())
        .expect_err("no ca")
        .to_string();
    assert!(e.contains("ca.pem"), "{e}");

    // A key that belongs to another node.
    let e = load_node_identity(
        &dir.path().join("node-1.pem"),
        &dir.path().join("node-2.key"),
        &dir.path().join("ca.pem"),
    )
    .expect_err("mismatch")
    .to_string();
    assert!(
        e.contains("node-2.key") && e.contains("does not match"),
        "{e}"
    );

    // A certificate from another CA.
    let e = load_node_identity(
        &other.path().join("node-3.pem"),
        &other.path().join("node-3.key"),
        &dir.path().join("ca.pem"),
    )
    .expect_err("other ca")
    .to_string();
    assert!(
        e.contains("node-3.pem") && e.contains("not accepted"),
        "{e}"
    );

    // Garbage and missing files.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "hello, not a certificate").expect("write");
    let e = certs::read_cert_info(&junk).expect_err("junk").to_string();
    assert!(e.contains("junk.pem"), "{e}");
    let e = load_node_identity_from_dir(dir.path(), 9)
        .expect_err("missing")
        .to_string();
    assert!(e.contains("node-9.pem"), "{e}");
    // A CA key that does not belong to the CA certificate.
    std::fs::copy(other.path().join("ca.key"), dir.path().join("ca.key")).expect("copy");
    let e = issue_node_cert(dir.path(), 4, "idc", &[], &[], dir.path())
        .expect_err("wrong ca key")
        .to_string();
    assert!(e.contains("ca.key"), "{e}");
}

#[test]
fn bad_names_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    certs::init_ca(dir.path()).expect("init");
    for site in ["", "a/b", "has space", &"x".repeat(64)] {
        let r = issue_node_cert(dir.path(), 1, site, &[], &[], dir.path());
        assert!(
            matches!(r, Err(CertError::InvalidSite(_))),
            "{site:?}: {r:?}"
        );
    }
    let r = issue_node_cert(
        dir.path(),
        1,
        "idc",
        &["10.0.0.1".to_string()],
        &[],
        dir.path(),
    );
    assert!(matches!(r, Err(CertError::InvalidDnsName { .. })), "{r:?}");
}

#[test]
fn identity_uris() {
    let id = NodeIdentity::new(42, "aliyun-hangzhou").expect("id");
    assert_eq!(id.uri(), "strait://site/aliyun-hangzhou/node/42");
    assert_eq!(NodeIdentity::from_uri(&id.uri()), Some(id));
    for bad in [
        "strait://site//node/1",
        "strait://site/a/node/",
        "strait://site/a/node/-1",
        "strait://site/a/node/1x",
        "strait://site/a/b/node/1",
        "https://site/a/node/1",
        "strait://site/a/node/99999999999999999999999",
    ] {
        assert_eq!(NodeIdentity::from_uri(bad), None, "{bad}");
    }
}

proptest::proptest! {
    #[test]
    fn identity_uri_round_trips(id in proptest::num::u64::ANY, site in "[A-Za-z0-9._-]{1,63}") {
        let ident = NodeIdentity::new(id, site).expect("valid");
        proptest::prop_assert_eq!(NodeIdentity::from_uri(&ident.uri()), Some(ident));
    }

    #[test]
    fn cert_parsing_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let _ = certs::cert_info_der(&bytes);
        let _ = certs::identity_from_cert_der(&bytes);
    }
}
