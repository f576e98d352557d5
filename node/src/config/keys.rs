//! Ingress keys loaded from the configuration: the AWS SigV4 keys, the
//! Alibaba ingress keys and push public keys (read from disk).

use std::collections::BTreeMap;

use strait_adapters::alibaba_eventbridge::sign::{IngressKey, RsaPublicKey};
use strait_adapters::aws_eventbridge::ingress::IngressConfig;
use strait_adapters::aws_eventbridge::sigv4::VerifyKey;

use super::{Alibaba, Aws};

/// Keys of the Alibaba endpoints.
#[derive(Debug)]
pub struct AlibabaState {
    /// Keys of `POST /openapi/putEvents`.
    pub ingress_keys: Vec<IngressKey>,
    /// Trusted push signing keys by their URL.
    pub push_keys: BTreeMap<String, RsaPublicKey>,
}

impl AlibabaState {
    /// Build from the config; reads the push public keys from disk.
    pub fn from_config(cfg: &Alibaba) -> anyhow::Result<AlibabaState> {
        let mut push_keys = BTreeMap::new();
        for (url, path) in &cfg.push.public_keys {
            let pem = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!(
                    "config: alibaba.push.public_keys.{url:?}: cannot read {}: {e}",
                    path.display()
                )
            })?;
            let key = RsaPublicKey::from_pem(&pem).map_err(|e| {
                anyhow::anyhow!(
                    "config: alibaba.push.public_keys.{url:?}: {}: {e}",
                    path.display()
                )
            })?;
            push_keys.insert(url.clone(), key);
        }
        Ok(AlibabaState {
            ingress_keys: cfg
                .ingress_keys
                .iter()
                .map(|k| IngressKey {
                    access_key_id: k.access_key_id.clone(),
                    access_key_secret: k.access_key_secret.clone(),
                    security_token: k.security_token.clone(),
                })
                .collect(),
            push_keys,
        })
    }
}

/// The AWS ingress's keys and account; `replays` remembers signatures
/// when `aws.replay_cache` is on.
pub fn aws_ingress(
    cfg: &Aws,
    replays: std::sync::Arc<dyn strait_adapters::nonces::NonceStore>,
) -> IngressConfig {
    IngressConfig {
        keys: cfg
            .ingress_keys
            .iter()
            .map(|k| VerifyKey {
                access_key_id: k.access_key_id.clone(),
                secret_access_key: k.secret_access_key.clone(),
            })
            .collect(),
        account_id: cfg.account_id.clone(),
        max_clock_skew_secs: cfg.max_clock_skew_secs,
        replays: cfg.replay_cache.then_some(replays),
    }
}
