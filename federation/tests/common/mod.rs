//! Shared helpers: a real cluster CA and node certificates in temp dirs.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use strait_federation::certs::{self, NodeCredentials};

/// A fresh CA in `dir`.
pub fn ca(dir: &Path) {
    certs::init_ca(dir).expect("init ca");
}

/// Issue and load the credentials of node `id` of `site` with the CA in `ca_dir`.
pub fn node(ca_dir: &Path, id: u64, site: &str) -> NodeCredentials {
    let out = ca_dir.join(format!("out-{site}-{id}"));
    certs::issue_node_cert(
        ca_dir,
        id,
        site,
        &["localhost".to_string()],
        &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        &out,
    )
    .expect("issue");
    certs::load_node_identity_from_dir(&out, id).expect("load")
}

/// Install a test log subscriber once (RUST_LOG controls it).
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
