//! `[mqtt]`: the embedded broker or an external one (with failover URLs, TLS, credentials).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::common::{RawTls, TlsFiles, duration, is_loopback_host, secret};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMqtt {
    pub(super) embedded: bool,
    pub(super) listen: String,
    pub(super) url: Option<String>,
    pub(super) urls: Vec<String>,
    pub(super) username: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) topic_prefix: String,
    pub(super) client_id: String,
    pub(super) keep_alive: String,
    pub(super) max_payload: usize,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) client_cert_file: Option<PathBuf>,
    pub(super) client_key_file: Option<PathBuf>,
    pub(super) users: Vec<RawUser>,
}

impl Default for RawMqtt {
    fn default() -> Self {
        RawMqtt {
            embedded: true,
            listen: "127.0.0.1:1883".into(),
            url: None,
            urls: Vec::new(),
            username: None,
            password_env: None,
            password_file: None,
            topic_prefix: "marquee".into(),
            client_id: String::new(),
            keep_alive: "15s".into(),
            max_payload: 4 << 20,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            users: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) username: String,
    pub(super) password_env: Option<String>,
    pub(super) password_file: Option<PathBuf>,
}

/// Where the MQTT broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerConfig {
    /// In-process rumqttd on `listen`; `users` empty means anonymous (loopback only).
    Embedded {
        /// Listen address.
        listen: SocketAddr,
        /// username → password.
        users: BTreeMap<String, String>,
    },
    /// An external broker (Mosquitto, EMQX, …), or several (`urls`: failover).
    External {
        /// (host, port) of each broker.
        brokers: Vec<(String, u16)>,
        /// `mqtts://`.
        tls: bool,
    },
}

/// MQTT settings.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// The broker.
    pub broker: BrokerConfig,
    /// Credentials the daemon connects with.
    pub credentials: Option<(String, String)>,
    /// Topic prefix (default `marquee`).
    pub topic_prefix: String,
    /// The daemon's client id.
    pub client_id: String,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Largest packet sent or accepted.
    pub max_payload: usize,
    /// TLS to an external broker (`mqtts://`).
    pub tls: Option<crate::mqtt::Tls>,
}

/// The TLS files as the MQTT client takes them.
impl From<TlsFiles> for crate::mqtt::Tls {
    fn from(f: TlsFiles) -> crate::mqtt::Tls {
        crate::mqtt::Tls {
            ca: f.ca,
            client_auth: f.client_auth,
        }
    }
}

/// Whether `name` can be a broker account: 1-64 characters, none of them whitespace, a control
/// character or `:`. It is written into Mosquitto's password file (`name:hash`, one per line)
/// and ACL (`user name`, one per line) by `marquee broker mosquitto`, so a line break or a
/// colon would write lines of the name's choosing.
pub fn valid_account(name: &str) -> bool {
    (1..=64).contains(&name.chars().count())
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':')
}

/// Validates `[mqtt]`.
pub(super) fn validate(m: RawMqtt, problems: &mut Vec<String>) -> MqttConfig {
    let mut users = BTreeMap::new();
    let account = |field: String, name: &str, problems: &mut Vec<String>| {
        if !valid_account(name) {
            problems.push(format!(
                "{field}: {name:?} must be 1-64 characters without spaces, control characters or ':'"
            ));
        }
    };
    if let Some(user) = &m.username {
        account("mqtt.username".into(), user, problems);
    }
    for (i, u) in m.users.iter().enumerate() {
        account(format!("mqtt.users[{i}].username"), &u.username, problems);
        let place = format!("mqtt.users[{i}] ({}): password", u.username);
        if let Some(p) = secret(problems, &place, &u.password_env, &u.password_file) {
            users.insert(u.username.clone(), p);
        }
    }
    let credentials = match &m.username {
        Some(user) => secret(problems, "mqtt.password", &m.password_env, &m.password_file)
            .map(|p| (user.clone(), p)),
        None => None,
    };
    let broker = if m.embedded {
        embedded(&m, users, problems)
    } else {
        external(&m, credentials.is_some(), problems)
    };
    // Also written into Mosquitto's ACL, one rule per line.
    if m.topic_prefix.is_empty()
        || m.topic_prefix.contains(['+', '#'])
        || m.topic_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        || m.topic_prefix.starts_with('/')
        || m.topic_prefix.ends_with('/')
    {
        problems.push(format!(
            "mqtt.topic_prefix: {:?} must be non-empty, without + or #, spaces or control characters, and not start or end with /",
            m.topic_prefix
        ));
    }
    if m.max_payload < 64 << 10 {
        problems.push("mqtt.max_payload: at least 65536 bytes".into());
    }
    let tls = RawTls {
        ca_file: m.ca_file.clone(),
        client_cert_file: m.client_cert_file.clone(),
        client_key_file: m.client_key_file.clone(),
    }
    .load(
        matches!(broker, BrokerConfig::External { tls: true, .. }),
        problems,
    )
    .map(Into::into);
    MqttConfig {
        broker,
        tls,
        credentials,
        topic_prefix: m.topic_prefix,
        // Default: one per host, so two daemons on one broker do not take each other's
        // session (a broker lets the newest connection of an id win).
        client_id: if m.client_id.is_empty() {
            format!("marquee-daemon-{}", crate::host_name())
                .trim_end_matches('-')
                .chars()
                .take(64)
                .collect()
        } else {
            m.client_id
        },
        keep_alive: duration(problems, "mqtt.keep_alive", &m.keep_alive),
        max_payload: m.max_payload,
    }
}

/// The embedded broker: where it listens, and its accounts (required off loopback).
fn embedded(
    m: &RawMqtt,
    users: BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> BrokerConfig {
    if m.url.is_some() || !m.urls.is_empty() {
        let key = if m.url.is_some() {
            "mqtt.url"
        } else {
            "mqtt.urls"
        };
        problems.push(format!(
            "{key}: set embedded = false to use an external broker"
        ));
    }
    let listen: SocketAddr = m.listen.parse().unwrap_or_else(|_| {
        problems.push(format!(
            "mqtt.listen: {:?} is not an address like 127.0.0.1:1883",
            m.listen
        ));
        SocketAddr::from(([127, 0, 0, 1], 1883))
    });
    if !listen.ip().is_loopback() && users.is_empty() {
        problems.push(format!(
            "mqtt.listen: {listen} is reachable from other machines, so anonymous clients are refused: \
             add [[mqtt.users]] with password_env or password_file, or listen on 127.0.0.1"
        ));
    }
    BrokerConfig::Embedded { listen, users }
}

/// External brokers: `url` or `urls` (failover), with credentials required off loopback.
fn external(m: &RawMqtt, has_credentials: bool, problems: &mut Vec<String>) -> BrokerConfig {
    let urls: Vec<String> = match (&m.url, m.urls.is_empty()) {
        (Some(u), true) => vec![u.clone()],
        (None, false) => m.urls.clone(),
        (Some(_), false) => {
            problems.push("mqtt.urls: give url or urls, not both".into());
            m.urls.clone()
        }
        (None, true) => {
            problems.push(
                "mqtt.url: needed when embedded = false (a broker URL like mqtt://127.0.0.1:1883, or urls = [...] for several)"
                    .into(),
            );
            Vec::new()
        }
    };
    let key = if m.urls.is_empty() {
        "mqtt.url"
    } else {
        "mqtt.urls"
    };
    let (brokers, tls) = if urls.is_empty() {
        (Vec::new(), false)
    } else {
        crate::mqtt::parse_broker_urls(&urls, key, problems)
    };
    if let Some((host, _)) = brokers.iter().find(|(h, _)| !is_loopback_host(h))
        && !has_credentials
    {
        problems.push(format!(
            "{key}: broker {host} is not on loopback, so credentials are required: set mqtt.username and mqtt.password_env or mqtt.password_file"
        ));
    }
    BrokerConfig::External { brokers, tls }
}
