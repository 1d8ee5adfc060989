//! Agent configuration (`config/agent-*.toml`): raw TOML with unknown keys refused → validated
//! [`AgentConfig`]; all problems reported at once with their place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::player::{Fallback, LanguagePolicy};
use crate::config::common::{ConfigError, RawTls, read_toml};
use crate::wire::PublicKey;

/// How frames are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RenderKind {
    /// A local web page for a kiosk browser, updated over server-sent events.
    Web,
    /// Full-screen text on the terminal (LED and console displays).
    Terminal,
    /// One JSON line per frame on stdout (integration, tests).
    Jsonl,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: String,
    channel: String,
    public_key_file: PathBuf,
    #[serde(default)]
    next_public_key_file: Option<PathBuf>,
    #[serde(default)]
    report_key_file: Option<PathBuf>,
    cache_dir: PathBuf,
    #[serde(default = "default_render")]
    render: RenderKind,
    #[serde(default)]
    mqtt: RawMqtt,
    #[serde(default)]
    language: RawLanguage,
    #[serde(default)]
    web: RawWeb,
    fallback: RawFallback,
    #[serde(default)]
    report: RawReport,
}

fn default_render() -> RenderKind {
    RenderKind::Web
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMqtt {
    url: String,
    urls: Vec<String>,
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    topic_prefix: String,
    keep_alive: String,
    max_payload: usize,
    ca_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
}

impl Default for RawMqtt {
    fn default() -> Self {
        RawMqtt {
            url: "mqtt://127.0.0.1:1883".into(),
            urls: Vec::new(),
            username: None,
            password_env: None,
            password_file: None,
            topic_prefix: "marquee".into(),
            keep_alive: "10s".into(),
            max_payload: 4 << 20,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLanguage {
    policy: String,
    languages: Vec<String>,
}

impl Default for RawLanguage {
    fn default() -> Self {
        RawLanguage {
            policy: "alternate".into(),
            languages: vec!["zh".into(), "en".into()],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWeb {
    listen: String,
}

impl Default for RawWeb {
    fn default() -> Self {
        RawWeb {
            listen: "127.0.0.1:8090".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFallback {
    #[serde(default = "default_fallback_seconds")]
    seconds: u32,
    text: BTreeMap<String, String>,
}

fn default_fallback_seconds() -> u32 {
    15
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawReport {
    flush_interval: String,
    max_buffered_events: usize,
    proof_of_play: bool,
}

impl Default for RawReport {
    fn default() -> Self {
        RawReport {
            flush_interval: "1s".into(),
            max_buffered_events: 100_000,
            proof_of_play: true,
        }
    }
}

/// A validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Display id.
    pub id: String,
    /// Channel.
    pub channel: String,
    /// The daemon's public key.
    pub public_key: PublicKey,
    /// Where it is read from (again on SIGHUP).
    pub public_key_file: PathBuf,
    /// During a key rotation, the daemon's next public key (`marquee keygen --rotate`): payloads
    /// signed with it are accepted too.
    pub next_public_key: Option<PublicKey>,
    /// Where it is read from.
    pub next_public_key_file: Option<PathBuf>,
    /// The file this config was read from (read again on SIGHUP for the key files).
    pub config_path: PathBuf,
    /// This display's report key (issued by `marquee display add`): statuses and event batches
    /// are signed with it. Without it reports go unsigned and the daemon drops them.
    pub report_key: Option<std::sync::Arc<crate::wire::KeyPair>>,
    /// Where the verified payloads and the event outbox live.
    pub cache_dir: PathBuf,
    /// Renderer.
    pub render: RenderKind,
    /// Brokers, as (host, port): one is picked at random, the next on a failed connect.
    pub brokers: Vec<(String, u16)>,
    /// Broker credentials.
    pub credentials: Option<(String, String)>,
    /// Topic prefix.
    pub topic_prefix: String,
    /// MQTT keep-alive (the broker sends the offline will after 1.5× this of silence).
    pub keep_alive: Duration,
    /// Largest MQTT packet.
    pub max_payload: usize,
    /// TLS to the broker (`mqtts://`).
    pub tls: Option<crate::mqtt::Tls>,
    /// Language policy.
    pub language: LanguagePolicy,
    /// Web renderer address.
    pub web_listen: std::net::SocketAddr,
    /// Local fallback content.
    pub fallback: Fallback,
    /// How often buffered events are sent.
    pub flush_interval: Duration,
    /// Outbox bound; the oldest events are dropped beyond it.
    pub max_buffered_events: usize,
    /// Whether to report proof of play.
    pub proof_of_play: bool,
}

impl AgentConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let (file, raw): (String, RawAgent) = read_toml(path)?;
        let mut p = Vec::new();
        let cfg = validate(raw, &mut p);
        if p.is_empty() {
            let mut cfg = cfg.expect("no problems means a config");
            cfg.config_path = path.to_owned();
            Ok(cfg)
        } else {
            Err(ConfigError {
                problems: p.into_iter().map(|m| format!("{file}: {m}")).collect(),
                file,
            })
        }
    }
}

fn validate(raw: RawAgent, p: &mut Vec<String>) -> Option<AgentConfig> {
    for (key, v) in [("id", &raw.id), ("channel", &raw.channel)] {
        if !crate::registry::valid_display_id(v) {
            p.push(format!(
                "{key}: {v:?} must be 1-64 letters, digits, '_' or '-' (no '.': clustered brokers turn MQTT's '/' into '.')"
            ));
        }
    }
    let public_key = public_key(&raw.public_key_file, p);
    let next_public_key = next_public_key(raw.next_public_key_file.as_deref(), p);
    let report_key = report_key(&raw, p);
    // `urls` (several brokers, failover) or `url` (one).
    let (brokers, tls) = if raw.mqtt.urls.is_empty() {
        crate::mqtt::parse_broker_urls(std::slice::from_ref(&raw.mqtt.url), "mqtt.url", p)
    } else {
        crate::mqtt::parse_broker_urls(&raw.mqtt.urls, "mqtt.urls", p)
    };
    let tls = RawTls {
        ca_file: raw.mqtt.ca_file.clone(),
        client_cert_file: raw.mqtt.client_cert_file.clone(),
        client_key_file: raw.mqtt.client_key_file.clone(),
    }
    .load(tls, p)
    .map(Into::into);
    let credentials = credentials(&raw.mqtt, p);
    let duration = |p: &mut Vec<String>, key: &str, s: &str| {
        humantime::parse_duration(s).unwrap_or_else(|_| {
            p.push(format!("{key}: bad duration {s:?}"));
            Duration::from_secs(1)
        })
    };
    let keep_alive = duration(p, "mqtt.keep_alive", &raw.mqtt.keep_alive);
    let flush_interval = duration(p, "report.flush_interval", &raw.report.flush_interval);
    let language = language(raw.language, p);
    let web_listen = std::net::SocketAddr::from_str(&raw.web.listen).unwrap_or_else(|_| {
        p.push(format!(
            "web.listen: {:?} is not an address like 127.0.0.1:8090",
            raw.web.listen
        ));
        std::net::SocketAddr::from(([127, 0, 0, 1], 8090))
    });
    if raw.fallback.text.is_empty() || raw.fallback.text.values().any(|t| t.trim().is_empty()) {
        p.push(
            "fallback.text: give at least one non-empty text, e.g. { zh = \"…\", en = \"…\" }"
                .into(),
        );
    }
    if raw.report.max_buffered_events == 0 {
        p.push("report.max_buffered_events: at least 1".into());
    }
    Some(AgentConfig {
        id: raw.id,
        channel: raw.channel,
        public_key: public_key?,
        public_key_file: raw.public_key_file,
        next_public_key: next_public_key?,
        next_public_key_file: raw.next_public_key_file,
        config_path: PathBuf::new(),
        report_key,
        cache_dir: raw.cache_dir,
        render: raw.render,
        brokers,
        credentials,
        topic_prefix: raw.mqtt.topic_prefix,
        keep_alive,
        max_payload: raw.mqtt.max_payload,
        tls,
        language,
        web_listen,
        fallback: Fallback {
            text: raw.fallback.text,
            seconds: raw.fallback.seconds.max(1),
        },
        flush_interval,
        max_buffered_events: raw.report.max_buffered_events,
        proof_of_play: raw.report.proof_of_play,
    })
}

/// The daemon's public key (its `data/signing.pub`).
fn public_key(path: &Path, p: &mut Vec<String>) -> Option<PublicKey> {
    match std::fs::read_to_string(path) {
        Ok(s) => PublicKey::from_hex(&s)
            .map_err(|e| p.push(format!("public_key_file: {}: {e}", path.display())))
            .ok(),
        Err(e) => {
            p.push(format!(
                "public_key_file: cannot read {}: {e} (it is the daemon's data/signing.pub)",
                path.display()
            ));
            None
        }
    }
}

/// The key the daemon rotates to, if one is announced; `None` when the file is unreadable.
fn next_public_key(path: Option<&Path>, p: &mut Vec<String>) -> Option<Option<PublicKey>> {
    match path {
        None => Some(None),
        // Gone: the daemon removes it when it has switched (the rotation is over). A screen
        // must still start: no next key then.
        Some(path) if !path.exists() => {
            tracing::warn!(file = %path.display(), "next_public_key_file does not exist: no next key (a finished rotation?)");
            Some(None)
        }
        Some(path) => match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|s| PublicKey::from_hex(&s).map_err(|e| e.to_string()))
        {
            Ok(k) => Some(Some(k)),
            Err(e) => {
                p.push(format!(
                    "next_public_key_file: {}: {e} (it is the daemon's data/signing.next.pub from `marquee keygen --rotate`)",
                    path.display()
                ));
                None
            }
        },
    }
}

/// The display's own report key, once it is registered.
fn report_key(raw: &RawAgent, p: &mut Vec<String>) -> Option<std::sync::Arc<crate::wire::KeyPair>> {
    let path = raw.report_key_file.as_ref()?;
    if !path.exists() {
        // Not registered yet: the screen still plays; its reports are dropped (and the agent
        // says so at start).
        tracing::warn!(
            file = %path.display(),
            "report_key_file does not exist: reports go unsigned (register the display on the daemon's host: `marquee display add {} --channel {} --out DIR`)",
            raw.id,
            raw.channel
        );
        return None;
    }
    crate::keys::read_secret(path)
        .and_then(|s| Ok(crate::wire::KeyPair::from_hex(&s)?))
        .map_err(|e| {
            p.push(format!(
                "report_key_file: {}: {e:#} (register the display on the daemon's host: `marquee display add {} --channel {} --out DIR`, then point report_key_file at DIR/{}.report.key)",
                path.display(),
                raw.id,
                raw.channel,
                raw.id
            ))
        })
        .ok()
        .map(std::sync::Arc::new)
}

/// The broker account, if `mqtt.username` is set.
fn credentials(m: &RawMqtt, p: &mut Vec<String>) -> Option<(String, String)> {
    match (&m.username, &m.password_env, &m.password_file) {
        (None, _, _) => None,
        (Some(u), Some(var), None) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some((u.clone(), v)),
            _ => {
                p.push(format!(
                    "mqtt.password_env: environment variable {var} is not set or empty"
                ));
                None
            }
        },
        (Some(u), None, Some(f)) => match std::fs::read_to_string(f) {
            Ok(v) => Some((u.clone(), v.trim_end_matches(['\n', '\r']).to_owned())),
            Err(e) => {
                p.push(format!(
                    "mqtt.password_file: cannot read {}: {e}",
                    f.display()
                ));
                None
            }
        },
        _ => {
            p.push("mqtt.password: give password_env or password_file (one of them)".into());
            None
        }
    }
}

/// Which language the screen shows.
fn language(l: RawLanguage, p: &mut Vec<String>) -> LanguagePolicy {
    match l.policy.as_str() {
        "alternate" if !l.languages.is_empty() => LanguagePolicy::Alternate(l.languages),
        "fixed" if l.languages.len() == 1 => LanguagePolicy::Fixed(l.languages[0].clone()),
        "alternate" => {
            p.push("language.languages: name at least one language".into());
            LanguagePolicy::Fixed("zh".into())
        }
        "fixed" => {
            p.push("language.languages: \"fixed\" takes exactly one language".into());
            LanguagePolicy::Fixed("zh".into())
        }
        other => {
            p.push(format!(
                "language.policy: {other:?} is not \"alternate\" or \"fixed\""
            ));
            LanguagePolicy::Fixed("zh".into())
        }
    }
}
