//! MQTT, whole: the `mqtt` source ([`source`]: a QoS 1 persistent session
//! acknowledged after commit, or QoS 0 at most once), the `mqtt` target
//! ([`target`]: QoS 0 or 1 publish, binary mode on MQTT 5, structured on
//! MQTT 3.1.1) and the pure CloudEvents MQTT protocol binding they share
//! ([`mapping`]). Both speak MQTT 5 or 3.1.1 through `rumqttc`, over TCP
//! (`mqtt://`) or TLS (`mqtts://`, rustls with the platform's roots).

pub mod mapping;
pub mod source;
pub mod target;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5;
use serde::{Deserialize, Serialize};

use crate::ConfigError;
pub use mapping::Protocol;
pub use target::{MqttSettings, MqttTarget};

/// A node-local MQTT login (`mqtt.credentials.<name>` in the node's
/// configuration): the password, and the user name when the definition
/// naming it gives none.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttCredential {
    /// The user name (a definition's `username` takes precedence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for MqttCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttCredential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// MQTT credentials by name (node config `mqtt.credentials`).
pub type MqttCredentials = Arc<BTreeMap<String, MqttCredential>>;

/// The largest MQTT packet (the protocol's limit): nothing is refused by
/// the client for its size (the node's event size limit applies to what is
/// stored).
const MAX_PACKET: u32 = 268_435_455;

/// A broker to connect to, from an `mqtt://` or `mqtts://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// Port (1883 for `mqtt://`, 8883 for `mqtts://` when not given).
    pub port: u16,
    /// TLS (`mqtts://`).
    pub tls: bool,
}

impl Endpoint {
    /// Check an MQTT broker URL (`mqtt://host[:port]` or `mqtts://...`, no
    /// path, no credentials: those come from a credential); the error names
    /// `field`.
    pub fn parse(field: &str, url: &str) -> Result<Endpoint, ConfigError> {
        let u = reqwest::Url::parse(url)
            .map_err(|e| ConfigError::new(field, format!("{url:?} is not a valid URL: {e}")))?;
        let tls = match u.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "scheme {other:?} is not supported (use mqtt://host:port or mqtts://host:port)"
                    ),
                ));
            }
        };
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| ConfigError::new(field, format!("{url:?} has no host")))?;
        if !u.username().is_empty() || u.password().is_some() {
            return Err(ConfigError::new(
                field,
                "credentials do not belong in the URL: give `username` and a `credential` \
                 (node-local mqtt.credentials)",
            ));
        }
        if !matches!(u.path(), "" | "/") || u.query().is_some() {
            return Err(ConfigError::new(
                field,
                format!("{url:?}: an MQTT URL has no path or query (the topic is its own field)"),
            ));
        }
        Ok(Endpoint {
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            port: u.port().unwrap_or(if tls { 8883 } else { 1883 }),
            tls,
        })
    }

    /// The broker URI (`mqtt://host:port`), as wrapped events' `source`.
    pub fn uri(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "{}://{host}:{}",
            if self.tls { "mqtts" } else { "mqtt" },
            self.port
        )
    }
}

/// Check an MQTT topic (`filter`: whether `+` and `#` may be used, as in
/// a subscription); the error names `field`.
pub fn validate_topic(field: &str, topic: &str, filter: bool) -> Result<(), ConfigError> {
    let bad = |why: &str| ConfigError::new(field, format!("{topic:?} is not a valid topic: {why}"));
    if topic.is_empty() {
        return Err(bad("empty"));
    }
    if topic.len() > 65_535 {
        return Err(bad("longer than 65535 bytes"));
    }
    if topic.contains('\0') {
        return Err(bad("contains NUL"));
    }
    let levels: Vec<&str> = topic.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains(['+', '#']) {
            if !filter {
                return Err(bad("wildcards (+ #) are not allowed here"));
            }
            if (*l != "+" && *l != "#") || (*l == "#" && i + 1 != levels.len()) {
                return Err(bad("`+` must be a whole level, `#` the last one"));
            }
        }
    }
    Ok(())
}

/// Check a client identifier (1-64 printable ASCII characters, no space).
pub fn validate_client_id(field: &str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            field,
            format!("{id:?} is not a valid client id (1-64 printable ASCII characters, no space)"),
        ));
    }
    Ok(())
}

/// How to open one MQTT connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnectOptions {
    pub endpoint: Endpoint,
    pub protocol: Protocol,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// A persistent session (clean session / clean start off; MQTT 5:
    /// kept for `session_expiry` seconds after a disconnect).
    pub persistent: bool,
    pub session_expiry: u32,
    /// The application acknowledges received QoS 1 messages.
    pub manual_acks: bool,
    /// Most unacknowledged QoS 1 messages the broker sends (MQTT 5
    /// receive maximum) / that this client has in flight.
    pub inflight: u16,
    pub keep_alive: Duration,
    pub connect_timeout: Duration,
}

/// A TLS client configuration with the platform's roots (aws-lc-rs).
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_platform_verifier()
    .map_err(|e| format!("TLS: {e}"))?
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A message received.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub topic: String,
    pub pkid: u16,
    pub qos: u8,
    pub content_type: Option<String>,
    pub user_properties: Vec<(String, String)>,
    pub payload: Bytes,
}

/// What one poll of the connection brought, in the terms both protocol
/// versions share.
#[derive(Debug)]
pub(crate) enum Polled {
    /// Connected (the broker kept the session, or not).
    Connected { session_present: bool },
    /// A message.
    Message(Received),
    /// A publish of ours went out under `pkid` (0: QoS 0).
    Sent { pkid: u16 },
    /// The broker acknowledged our QoS 1 publish `pkid` (MQTT 5: `refused`
    /// says why it did not accept it).
    Acked { pkid: u16, refused: Option<String> },
    /// The broker answered our subscription (`refused`: why not).
    Subscribed { refused: Option<String> },
    /// Anything else.
    Other,
}

/// The sending half of a connection.
#[derive(Clone)]
pub(crate) enum Client {
    V311(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// The connection itself: poll it to make progress (it reconnects on the
/// next poll after an error).
pub(crate) enum Connection {
    V311(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

fn qos_of(qos: u8) -> rumqttc::QoS {
    if qos == 0 {
        rumqttc::QoS::AtMostOnce
    } else {
        rumqttc::QoS::AtLeastOnce
    }
}

fn qos5_of(qos: u8) -> v5::mqttbytes::QoS {
    if qos == 0 {
        v5::mqttbytes::QoS::AtMostOnce
    } else {
        v5::mqttbytes::QoS::AtLeastOnce
    }
}

/// A client and its connection (not connected until polled).
pub(crate) fn connect(o: &ConnectOptions, channel: usize) -> Result<(Client, Connection), String> {
    let transport = if o.endpoint.tls {
        Some(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls_config()?),
        ))
    } else {
        None
    };
    let mut net = rumqttc::NetworkOptions::new();
    net.set_connection_timeout(o.connect_timeout.as_secs().max(1));
    Ok(match o.protocol {
        Protocol::V311 => {
            let mut m = rumqttc::MqttOptions::new(
                o.client_id.clone(),
                o.endpoint.host.clone(),
                o.endpoint.port,
            );
            m.set_keep_alive(o.keep_alive)
                .set_clean_session(!o.persistent)
                .set_manual_acks(o.manual_acks)
                .set_inflight(o.inflight.max(1))
                .set_max_packet_size(MAX_PACKET as usize, MAX_PACKET as usize);
            if let Some(u) = &o.username {
                m.set_credentials(u.clone(), o.password.clone().unwrap_or_default());
            }
            if let Some(t) = transport {
                m.set_transport(t);
            }
            let (client, mut eventloop) = rumqttc::AsyncClient::new(m, channel);
            eventloop.set_network_options(net);
            (Client::V311(client), Connection::V311(Box::new(eventloop)))
        }
        Protocol::V5 => {
            let mut m = v5::MqttOptions::new(
                o.client_id.clone(),
                o.endpoint.host.clone(),
                o.endpoint.port,
            );
            m.set_keep_alive(o.keep_alive)
                .set_clean_start(!o.persistent)
                .set_manual_acks(o.manual_acks)
                .set_receive_maximum(Some(o.inflight.max(1)))
                .set_outgoing_inflight_upper_limit(o.inflight.max(1))
                .set_max_packet_size(Some(MAX_PACKET));
            if o.persistent {
                m.set_session_expiry_interval(Some(o.session_expiry));
            }
            if let Some(u) = &o.username {
                m.set_credentials(u.clone(), o.password.clone().unwrap_or_default());
            }
            if let Some(t) = transport {
                m.set_transport(t);
            }
            m.set_network_options(net);
            let (client, eventloop) = v5::AsyncClient::new(m, channel);
            (Client::V5(client), Connection::V5(Box::new(eventloop)))
        }
    })
}

impl Connection {
    /// The next event; an error means the connection is down (the next
    /// poll reconnects).
    pub(crate) async fn poll(&mut self) -> Result<Polled, String> {
        match self {
            Connection::V311(el) => {
                use rumqttc::{Event, Outgoing, Packet};
                Ok(match el.poll().await.map_err(|e| e.to_string())? {
                    Event::Incoming(Packet::ConnAck(c)) => Polled::Connected {
                        session_present: c.session_present,
                    },
                    Event::Incoming(Packet::Publish(p)) => Polled::Message(Received {
                        topic: p.topic,
                        pkid: p.pkid,
                        qos: p.qos as u8,
                        content_type: None,
                        user_properties: Vec::new(),
                        payload: p.payload,
                    }),
                    Event::Incoming(Packet::PubAck(a)) => Polled::Acked {
                        pkid: a.pkid,
                        refused: None,
                    },
                    Event::Incoming(Packet::SubAck(a)) => Polled::Subscribed {
                        refused: a
                            .return_codes
                            .iter()
                            .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                            .then(|| "failure".to_string()),
                    },
                    Event::Outgoing(Outgoing::Publish(pkid)) => Polled::Sent { pkid },
                    _ => Polled::Other,
                })
            }
            Connection::V5(el) => {
                use v5::Event;
                use v5::mqttbytes::v5::{Packet, PubAckReason};
                Ok(match el.poll().await.map_err(|e| e.to_string())? {
                    Event::Incoming(Packet::ConnAck(c)) => Polled::Connected {
                        session_present: c.session_present,
                    },
                    Event::Incoming(Packet::Publish(p)) => {
                        let (content_type, user_properties) = match p.properties {
                            Some(pr) => (pr.content_type, pr.user_properties),
                            None => (None, Vec::new()),
                        };
                        Polled::Message(Received {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            pkid: p.pkid,
                            qos: p.qos as u8,
                            content_type,
                            user_properties,
                            payload: p.payload,
                        })
                    }
                    Event::Incoming(Packet::PubAck(a)) => Polled::Acked {
                        pkid: a.pkid,
                        refused: match a.reason {
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
                            other => Some(format!(
                                "{other:?}{}",
                                a.properties
                                    .and_then(|p| p.reason_string)
                                    .map(|r| format!(": {r}"))
                                    .unwrap_or_default()
                            )),
                        },
                    },
                    Event::Incoming(Packet::SubAck(a)) => Polled::Subscribed {
                        refused: a
                            .return_codes
                            .iter()
                            .find(|c| {
                                !matches!(c, v5::mqttbytes::v5::SubscribeReasonCode::Success(_))
                            })
                            .map(|c| format!("{c:?}")),
                    },
                    Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => Polled::Sent { pkid },
                    _ => Polled::Other,
                })
            }
        }
    }
}

impl Client {
    /// Subscribe to `filter` at `qos`. MQTT 5: retained messages are sent
    /// only for a new subscription (not again on every reconnect).
    pub(crate) async fn subscribe(&self, filter: &str, qos: u8) -> Result<(), String> {
        match self {
            Client::V311(c) => c.subscribe(filter, qos_of(qos)).await,
            Client::V5(c) => {
                let mut f = v5::mqttbytes::v5::Filter::new(filter, qos5_of(qos));
                f.retain_forward_rule = v5::mqttbytes::v5::RetainForwardRule::OnNewSubscribe;
                return c
                    .subscribe_many([f])
                    .await
                    .map_err(|e| format!("subscribe: {e}"));
            }
        }
        .map_err(|e| format!("subscribe: {e}"))
    }

    /// Acknowledge the QoS 1 message `pkid`.
    pub(crate) async fn ack(&self, pkid: u16) -> Result<(), String> {
        match self {
            Client::V311(c) => {
                let mut p = rumqttc::Publish::new("", rumqttc::QoS::AtLeastOnce, Vec::new());
                p.pkid = pkid;
                c.ack(&p).await.map_err(|e| e.to_string())
            }
            Client::V5(c) => {
                let mut p = v5::mqttbytes::v5::Publish::new(
                    "",
                    v5::mqttbytes::QoS::AtLeastOnce,
                    Vec::new(),
                    None,
                );
                p.pkid = pkid;
                c.ack(&p).await.map_err(|e| e.to_string())
            }
        }
    }

    /// Hand a publish to the connection (it goes out when polled).
    pub(crate) async fn publish(
        &self,
        topic: &str,
        qos: u8,
        message: mapping::Outgoing,
    ) -> Result<(), String> {
        match self {
            Client::V311(c) => c
                .publish(topic, qos_of(qos), false, message.payload)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => {
                let props = v5::mqttbytes::v5::PublishProperties {
                    content_type: message.content_type,
                    user_properties: message.user_properties,
                    ..Default::default()
                };
                c.publish_with_properties(topic, qos5_of(qos), false, message.payload, props)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_topics_are_checked() {
        let e = Endpoint::parse("url", "mqtt://h").expect("valid");
        assert_eq!(
            (e.port, e.tls, e.uri()),
            (1883, false, "mqtt://h:1883".into())
        );
        let e = Endpoint::parse("url", "mqtts://b.example:9000").expect("valid");
        assert_eq!(e.uri(), "mqtts://b.example:9000");
        assert_eq!(Endpoint::parse("url", "mqtts://h").expect("tls").port, 8883);
        for bad in [
            "http://h",
            "mqtt://u:p@h",
            "mqtt://h/topic",
            "mqtt://",
            "nonsense",
        ] {
            assert_eq!(Endpoint::parse("url", bad).expect_err(bad).field, "url");
        }
        for ok in ["a", "a/b/c", "/a", "a/+/c", "#", "a/#", "+"] {
            validate_topic("topic", ok, true).expect(ok);
        }
        for bad in ["", "a/b#", "a/#/c", "a+/b", "x\0"] {
            assert!(validate_topic("topic", bad, true).is_err(), "{bad:?}");
        }
        assert!(validate_topic("topic", "a/+", false).is_err());
        validate_client_id("clientId", "strait-a.b").expect("valid");
        assert!(validate_client_id("clientId", "a b").is_err());
        assert!(validate_client_id("clientId", "").is_err());
    }

    #[test]
    fn credentials_do_not_show_their_password() {
        let c = MqttCredential {
            username: Some("u".into()),
            password: "secret".into(),
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
