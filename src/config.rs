//! Configuration: the raw TOML shape ([`RawConfig`], unknown keys refused) and the validated
//! [`Config`] the daemon runs on. Every problem is reported at once, each with its place
//! (`file:line:col` for syntax and unknown keys, `file: section.key` for meaning), and secrets are
//! read from environment variables or files (`*_env` / `*_file`), never from the TOML itself.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono_tz::Tz;
use serde::Deserialize;

use crate::domain::ValidationContext;
use crate::domain::locate::line_col;

/// API roles, each including the rights of the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Edits playlists.
    Editor,
    /// Approves alerts and campaigns raised by someone else (two-person rule).
    Approver,
    /// Runs campaigns and alerts.
    Operator,
    /// Everything.
    Admin,
}

/// Every problem found in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as named by the user.
    pub file: String,
    /// One line per problem, each already prefixed with its location.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The file as written. See `config/marquee.toml` for every key with its meaning.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    mqtt: RawMqtt,
    #[serde(default)]
    schedule: RawSchedule,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    cap: RawCap,
    #[serde(default)]
    approval: RawApproval,
    #[serde(default)]
    fleet: RawFleet,
    #[serde(default)]
    sms: crate::sms::config::RawSms,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawFleet {
    keep_plays: String,
    keep_events: String,
    max_plays: u64,
    max_events: u64,
}

impl Default for RawFleet {
    fn default() -> Self {
        RawFleet {
            keep_plays: "90d".into(),
            keep_events: "30d".into(),
            max_plays: 20_000_000,
            max_events: 20_000_000,
        }
    }
}

/// How long, and how many, agent reports are kept (`[fleet]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Proof-of-play records older than this (by their end) are deleted.
    pub keep_plays: chrono::Duration,
    /// Events older than this (by receipt) are deleted.
    pub keep_events: chrono::Duration,
    /// At most this many plays are kept (the oldest go first).
    pub max_plays: u64,
    /// At most this many events are kept (the oldest go first).
    pub max_events: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawApproval {
    alerts_above: Option<usize>,
    campaigns_above: Option<usize>,
    playlists: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCap {
    accept_test: bool,
    default_scope: Option<String>,
    policy: Vec<crate::domain::cap::PolicyRule>,
    areas: Vec<crate::domain::cap::AreaRule>,
    feed_url: Option<String>,
    feed_interval: String,
    feeds: Vec<RawFeed>,
    contact: Option<String>,
    start: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeed {
    url: String,
    #[serde(default = "thirty_s")]
    interval: String,
}

fn thirty_s() -> String {
    "30s".into()
}

impl Default for RawCap {
    fn default() -> Self {
        RawCap {
            accept_test: false,
            default_scope: None,
            policy: Vec::new(),
            areas: Vec::new(),
            feed_url: None,
            feed_interval: "30s".into(),
            feeds: Vec::new(),
            contact: None,
            start: "effective".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    data_dir: PathBuf,
    max_connections: Option<usize>,
    header_timeout: String,
    disk_reserve_kib: u64,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".into(),
            data_dir: "data".into(),
            max_connections: None,
            header_timeout: "10s".into(),
            disk_reserve_kib: 16 * 1024,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// The API's TLS configuration, read from the certificate chain and key files at load (so
/// `marquee check` names a bad file), for rustls (TLS 1.2 and 1.3, no client certificates).
#[derive(Clone)]
pub struct ServerTls {
    /// The certificate chain file, for messages.
    pub cert_file: PathBuf,
    /// What the accept loop hands to `tokio-rustls`.
    pub config: std::sync::Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

fn server_tls(
    cert: Option<&Path>,
    key: Option<&Path>,
    problems: &mut Vec<String>,
) -> Option<ServerTls> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = match (cert, key) {
        (None, None) => return None,
        (Some(c), Some(k)) => (c, k),
        _ => {
            problems.push("server.tls_cert_file and server.tls_key_file go together".into());
            return None;
        }
    };
    let chain =
        match CertificateDer::pem_file_iter(cert).and_then(|i| i.collect::<Result<Vec<_>, _>>()) {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => {
                problems.push(format!(
                    "server.tls_cert_file: no PEM certificate in {}",
                    cert.display()
                ));
                return None;
            }
            Err(e) => {
                problems.push(format!(
                    "server.tls_cert_file: cannot read {}: {e}",
                    cert.display()
                ));
                return None;
            }
        };
    let secret = match PrivateKeyDer::from_pem_file(key) {
        Ok(k) => k,
        Err(e) => {
            problems.push(format!(
                "server.tls_key_file: cannot read a PEM private key from {}: {e}",
                key.display()
            ));
            return None;
        }
    };
    crate::install_crypto_provider();
    match rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, secret)
    {
        Ok(mut c) => {
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(ServerTls {
                cert_file: cert.to_owned(),
                config: std::sync::Arc::new(c),
            })
        }
        Err(e) => {
            problems.push(format!(
                "server.tls_cert_file / tls_key_file: {} and {} do not make a TLS identity: {e}",
                cert.display(),
                key.display()
            ));
            None
        }
    }
}

/// The default HTTP connection cap: half the process's open-file limit (the rest stays for the
/// broker's connections, the database and the logs), between 64 and 10,000.
fn default_max_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse::<usize>().ok())
        })
        .unwrap_or(1024);
    (soft / 2).clamp(64, 10_000)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: String,
    filter: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: "text".into(),
            filter: "info".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMqtt {
    embedded: bool,
    listen: String,
    url: Option<String>,
    urls: Vec<String>,
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    topic_prefix: String,
    client_id: String,
    keep_alive: String,
    max_payload: usize,
    ca_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
    users: Vec<RawUser>,
}

/// TLS files for `mqtts://` (`mqtt.ca_file`, `client_cert_file`, `client_key_file` of the daemon
/// and the agents): all optional.
#[derive(Debug, Default, Clone)]
pub struct RawTls {
    /// CA certificates to trust (default: the system's).
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain, for mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    /// Client private key, for mutual TLS.
    pub client_key_file: Option<PathBuf>,
}

/// Where the system's trusted CA certificates are (Debian's ca-certificates).
const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

impl RawTls {
    /// Reads the files for a `mqtts://` connection (`tls` true) or checks none is set.
    pub fn load(&self, tls: bool, problems: &mut Vec<String>) -> Option<crate::mqtt::Tls> {
        let read = |p: &mut Vec<String>, key: &str, path: &Path| match std::fs::read(path) {
            Ok(b) => Some(b),
            Err(e) => {
                p.push(format!("mqtt.{key}: cannot read {}: {e}", path.display()));
                None
            }
        };
        if !tls {
            if self.ca_file.is_some()
                || self.client_cert_file.is_some()
                || self.client_key_file.is_some()
            {
                problems.push("mqtt.ca_file / client_cert_file / client_key_file: only used with an mqtts:// url".into());
            }
            return None;
        }
        let ca_path = self
            .ca_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(SYSTEM_CA));
        let ca = read(problems, "ca_file", &ca_path)?;
        let client_auth = match (&self.client_cert_file, &self.client_key_file) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((
                read(problems, "client_cert_file", c)?,
                read(problems, "client_key_file", k)?,
            )),
            _ => {
                problems.push("mqtt.client_cert_file and mqtt.client_key_file go together".into());
                return None;
            }
        };
        Some(crate::mqtt::Tls { ca, client_auth })
    }
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
struct RawUser {
    username: String,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSchedule {
    timezone: String,
    playlists_dir: PathBuf,
    horizon: String,
    debounce: String,
    watch: bool,
    channels: Vec<String>,
    displays: Vec<RawDisplay>,
}

impl Default for RawSchedule {
    fn default() -> Self {
        RawSchedule {
            timezone: "Asia/Shanghai".into(),
            playlists_dir: "playlists".into(),
            horizon: "48h".into(),
            debounce: "150ms".into(),
            watch: true,
            channels: ["lobby", "subway", "bus", "public"]
                .map(String::from)
                .to_vec(),
            displays: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisplay {
    id: String,
    channel: String,
    lat: Option<f64>,
    lon: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    tokens: Vec<RawToken>,
    show_numbers_from: Option<Role>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    role: Role,
    #[serde(default)]
    emergency: bool,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
}

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages).
    pub file: String,
    /// HTTP API + console address.
    pub listen: SocketAddr,
    /// At most this many HTTP connections at once; more are closed at accept.
    pub max_connections: usize,
    /// A connection that has not sent a complete request header within this is closed.
    pub header_timeout: Duration,
    /// HTTPS for the API (`server.tls_cert_file`, `tls_key_file`: PEM); `None` is plain HTTP.
    pub tls: Option<ServerTls>,
    /// SQLite, keys and the generated admin token live here.
    pub data_dir: PathBuf,
    /// Bytes of the data disk held back for alerts and the audit (`server.disk_reserve_kib`,
    /// default 16 MiB; 0 keeps none). See `store::Store::keep_reserve`.
    pub disk_reserve: u64,
    /// Log format.
    pub log_format: LogFormat,
    /// `tracing` filter directives.
    pub log_filter: String,
    /// The broker.
    pub mqtt: MqttConfig,
    /// The scheduler.
    pub schedule: ScheduleConfig,
    /// Configured API tokens (the generated admin token is added at start).
    pub tokens: Vec<TokenConfig>,
    /// The lowest role that sees phone numbers whole (`auth.show_numbers_from`, default
    /// operator); below it, numbers in message lists, rejects and opt-outs are masked.
    pub show_numbers_from: Role,
    /// How CAP 1.2 alerts are applied.
    pub cap: crate::domain::cap::CapRules,
    /// CAP feeds polled for alerts: each URL with its interval (`cap.feed_url` and
    /// `[[cap.feeds]]`).
    pub cap_feeds: Vec<(url::Url, Duration)>,
    /// Who runs this daemon, for the feed client's `User-Agent` (`cap.contact`: an e-mail
    /// address or URL, as weather services ask of API clients).
    pub cap_contact: Option<String>,
    /// Two-person rule: alerts reaching more than this many known displays need a second
    /// person's approval (`None`: never).
    pub approve_alerts_above: Option<usize>,
    /// Retention of agent reports.
    pub retention: Retention,
    /// Two-person rule: campaigns (and alert SMS) to more than this many recipients need a
    /// second person's approval (`None`: never).
    pub approve_campaigns_above: Option<usize>,
    /// Review before publishing (`[approval] playlists`): a playlist saved or deleted through
    /// the API becomes a proposal that another person (approver or above) publishes.
    pub approve_playlists: bool,
    /// SMS gateways and campaign defaults.
    pub sms: crate::sms::config::SmsConfig,
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

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// Default zone.
    pub timezone: Tz,
    /// Where playlist files are.
    pub playlists_dir: PathBuf,
    /// How far ahead timelines reach.
    pub horizon: chrono::Duration,
    /// Quiet time before reloading while a file is still being written (a closed or renamed
    /// file only waits for the scheduler's short settle).
    pub debounce: Duration,
    /// Watch the playlists directory (otherwise reload on SIGHUP only).
    pub watch: bool,
    /// Known channels.
    pub channels: Vec<String>,
    /// Known displays → their channel.
    pub displays: BTreeMap<String, String>,
    /// Displays with a location (WGS 84 latitude and longitude in degrees), for CAP `<polygon>`
    /// and `<circle>` areas.
    pub locations: BTreeMap<String, (f64, f64)>,
}

impl ScheduleConfig {
    /// What playlist validation needs.
    pub fn validation_context(&self) -> ValidationContext {
        ValidationContext {
            channels: self.channels.clone(),
            displays: self.displays.clone(),
            timezone: self.timezone,
        }
    }
}

/// One API token.
#[derive(Clone)]
pub struct TokenConfig {
    /// Who it is (shown in logs and audit).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The secret.
    pub secret: String,
    /// May skip the two-person rule (audited).
    pub emergency: bool,
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Reads a secret from `env` or `file` (exactly one must be given); trailing newlines are dropped.
/// Whether a file's mode lets its group or others read it.
pub(crate) fn group_or_world_readable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o044 != 0)
}

pub(crate) fn secret(
    problems: &mut Vec<String>,
    place: &str,
    env: &Option<String>,
    file: &Option<PathBuf>,
) -> Option<String> {
    let value = match (env, file) {
        (Some(var), None) => match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Some(v),
            _ => {
                problems.push(format!(
                    "{place}_env: environment variable {var} is not set or empty"
                ));
                None
            }
        },
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(_) if group_or_world_readable(path) => {
                problems.push(format!(
                    "{place}_file: {} is readable by group or others: chmod 600 it (a secret others can read is not secret)",
                    path.display()
                ));
                None
            }
            Ok(v) if !v.trim().is_empty() => Some(v),
            Ok(_) => {
                problems.push(format!("{place}_file: {} is empty", path.display()));
                None
            }
            Err(e) => {
                problems.push(format!("{place}_file: cannot read {}: {e}", path.display()));
                None
            }
        },
        (Some(_), Some(_)) => {
            problems.push(format!(
                "{place}: give {place}_env or {place}_file, not both"
            ));
            None
        }
        (None, None) => {
            problems.push(format!(
                "{place}: missing; give {place}_env or {place}_file"
            ));
            None
        }
    };
    value.map(|v| v.trim_end_matches(['\n', '\r']).to_owned())
}

pub(crate) fn duration(problems: &mut Vec<String>, key: &str, s: &str) -> Duration {
    humantime::parse_duration(s).unwrap_or_else(|_| {
        problems.push(format!("{key}: bad duration {s:?} (e.g. 48h, 150ms)"));
        Duration::from_secs(1)
    })
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads a TOML file into `T`; syntax errors and unknown keys come back as `file:line:col: …`.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<(String, T), ConfigError> {
    let file = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        problems: vec![format!("{file}: cannot read: {e}")],
    })?;
    let raw = parse_toml(&file, &src)?;
    Ok((file, raw))
}

fn parse_toml<T: serde::de::DeserializeOwned>(file: &str, src: &str) -> Result<T, ConfigError> {
    toml::from_str(src).map_err(|e| {
        let (line, col) = e.span().map(|s| line_col(src, s.start)).unwrap_or((1, 1));
        ConfigError {
            file: file.to_owned(),
            problems: vec![format!("{file}:{line}:{col}: {}", e.message().trim())],
        }
    })
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (file, raw) = read_toml(path)?;
        Config::validated(&file, raw)
    }

    /// Validates configuration text; `file` names it in messages.
    pub fn parse(file: &str, src: &str) -> Result<Config, ConfigError> {
        Config::validated(file, parse_toml(file, src)?)
    }

    fn validated(file: &str, raw: RawConfig) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let config = Config::validate(file, raw, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                file: file.to_owned(),
                problems: problems
                    .into_iter()
                    .map(|p| format!("{file}: {p}"))
                    .collect(),
            })
        }
    }

    fn validate(file: &str, raw: RawConfig, problems: &mut Vec<String>) -> Config {
        let listen = raw.server.listen.parse().unwrap_or_else(|_| {
            problems.push(format!(
                "server.listen: {:?} is not an address like 127.0.0.1:8080",
                raw.server.listen
            ));
            SocketAddr::from(([127, 0, 0, 1], 8080))
        });
        let log_format = match raw.log.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                problems.push(format!("log.format: {other:?} is not \"text\" or \"json\""));
                LogFormat::Text
            }
        };
        let mqtt = Config::mqtt(raw.mqtt, problems);
        let schedule = Config::schedule(raw.schedule, problems);
        let mut tokens = Vec::new();
        for (i, t) in raw.auth.tokens.iter().enumerate() {
            let place = format!("auth.tokens[{i}] ({}): token", t.name);
            if let Some(secret) = secret(problems, &place, &t.token_env, &t.token_file) {
                if secret.len() < 16 {
                    problems.push(format!("{place}: shorter than 16 characters"));
                }
                // The same secret twice would make one name answer for both (the last wins),
                // silently changing what that token may do.
                if let Some(other) = tokens
                    .iter()
                    .find(|o: &&TokenConfig| o.secret.trim() == secret.trim())
                {
                    problems.push(format!(
                        "{place}: the same secret as token {:?}; every token needs its own",
                        other.name
                    ));
                }
                if t.emergency && t.role < Role::Operator {
                    problems.push(format!(
                        "auth.tokens[{i}] ({}): emergency needs role operator or admin",
                        t.name
                    ));
                }
                tokens.push(TokenConfig {
                    name: t.name.clone(),
                    role: t.role,
                    secret,
                    emergency: t.emergency,
                });
            }
        }
        let mut feeds: Vec<(String, String, String)> = raw
            .cap
            .feeds
            .iter()
            .enumerate()
            .map(|(i, f)| (format!("cap.feeds[{i}]"), f.url.clone(), f.interval.clone()))
            .collect();
        if let Some(u) = &raw.cap.feed_url {
            feeds.insert(
                0,
                (
                    "cap.feed_url".into(),
                    u.clone(),
                    raw.cap.feed_interval.clone(),
                ),
            );
        }
        let mut cap_feeds = Vec::new();
        for (place, u, interval) in feeds {
            match url::Url::parse(&u) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {
                    let every = duration(problems, &format!("{place} interval"), &interval);
                    if every < Duration::from_millis(100) {
                        problems.push(format!("{place} interval: at least 100ms"));
                    }
                    if cap_feeds
                        .iter()
                        .any(|(o, _): &(url::Url, Duration)| *o == url)
                    {
                        problems.push(format!("{place}: {u:?} is listed twice"));
                    }
                    cap_feeds.push((url, every));
                }
                _ => problems.push(format!(
                    "{place}: {u:?} is not an http(s) URL of a CAP document or feed"
                )),
            }
        }
        let cap_contact = raw.cap.contact.clone();
        let cap = Config::cap(raw.cap, &schedule, problems);
        let sms = crate::sms::config::validate(
            raw.sms,
            &schedule,
            listen,
            &raw.server.data_dir,
            problems,
        );
        let keep = |key: &str, v: &str, problems: &mut Vec<String>| {
            chrono::Duration::from_std(duration(problems, key, v))
                .unwrap_or(chrono::Duration::days(90))
        };
        let retention = Retention {
            keep_plays: keep("fleet.keep_plays", &raw.fleet.keep_plays, problems),
            keep_events: keep("fleet.keep_events", &raw.fleet.keep_events, problems),
            max_plays: raw.fleet.max_plays,
            max_events: raw.fleet.max_events,
        };
        let (day, century) = (chrono::Duration::days(1), chrono::Duration::days(36_500));
        if [retention.keep_plays, retention.keep_events]
            .iter()
            .any(|k| *k < day || *k > century)
        {
            problems.push("fleet.keep_plays, fleet.keep_events: between 1d and 100 years".into());
        }
        if retention.max_plays == 0 || retention.max_events == 0 {
            problems.push("fleet.max_plays, fleet.max_events: at least 1".into());
        }
        Config {
            cap_feeds,
            cap_contact,
            sms,
            cap,
            approve_alerts_above: raw.approval.alerts_above,
            retention,
            approve_campaigns_above: raw.approval.campaigns_above,
            approve_playlists: raw.approval.playlists,
            file: file.to_owned(),
            listen,
            max_connections: raw
                .server
                .max_connections
                .unwrap_or_else(default_max_connections)
                .max(1),
            header_timeout: duration(
                problems,
                "server.header_timeout",
                &raw.server.header_timeout,
            ),
            tls: server_tls(
                raw.server.tls_cert_file.as_deref(),
                raw.server.tls_key_file.as_deref(),
                problems,
            ),
            data_dir: raw.server.data_dir,
            disk_reserve: raw.server.disk_reserve_kib.saturating_mul(1024),
            log_format,
            log_filter: raw.log.filter,
            mqtt,
            schedule,
            tokens,
            show_numbers_from: raw.auth.show_numbers_from.unwrap_or(Role::Operator),
        }
    }

    fn mqtt(m: RawMqtt, problems: &mut Vec<String>) -> MqttConfig {
        let mut users = BTreeMap::new();
        for (i, u) in m.users.iter().enumerate() {
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
        } else {
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
                && credentials.is_none()
            {
                problems.push(format!(
                    "{key}: broker {host} is not on loopback, so credentials are required: set mqtt.username and mqtt.password_env or mqtt.password_file"
                ));
            }
            BrokerConfig::External { brokers, tls }
        };
        if m.topic_prefix.is_empty()
            || m.topic_prefix.contains(['+', '#'])
            || m.topic_prefix.starts_with('/')
            || m.topic_prefix.ends_with('/')
        {
            problems.push(format!(
                "mqtt.topic_prefix: {:?} must be non-empty, without + or #, and not start or end with /",
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
        );
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

    fn cap(
        c: RawCap,
        sched: &ScheduleConfig,
        problems: &mut Vec<String>,
    ) -> crate::domain::cap::CapRules {
        use crate::domain::cap::Scope;
        let default_scope = match c.default_scope.as_deref().unwrap_or("all") {
            "all" => Some(Scope::All),
            "none" => None,
            other => {
                problems.push(format!(
                    "cap.default_scope: {other:?} is not \"all\" or \"none\""
                ));
                None
            }
        };
        for (i, r) in c.policy.iter().enumerate() {
            if !matches!(r.action.as_str(), "takeover" | "ignore") {
                problems.push(format!(
                    "cap.policy[{i}].action: {:?} is not \"takeover\" or \"ignore\"",
                    r.action
                ));
            }
        }
        for (i, a) in c.areas.iter().enumerate() {
            if a.area_desc.is_none() && a.geocode.is_none() {
                problems.push(format!(
                    "cap.areas[{i}]: give area_desc or geocode (NAME=VALUE)"
                ));
            }
            for ch in a.channels.iter().filter(|ch| !sched.channels.contains(ch)) {
                problems.push(format!("cap.areas[{i}].channels: unknown channel {ch:?}"));
            }
        }
        let start_at_onset = match c.start.as_str() {
            "effective" => false,
            "onset" => true,
            other => {
                problems.push(format!(
                    "cap.start: {other:?} is not \"effective\" or \"onset\""
                ));
                false
            }
        };
        crate::domain::cap::CapRules {
            start_at_onset,
            // Set explicitly, default_scope also decides for alerts whose polygons and circles
            // hold none of the located displays; unset, those go nowhere.
            geo_miss_scope: match c.default_scope.as_deref() {
                Some("all") => Some(Scope::All),
                _ => None,
            },
            located: sched
                .locations
                .iter()
                .map(|(id, (lat, lon))| (id.clone(), *lat, *lon))
                .collect(),
            policy: if c.policy.is_empty() {
                crate::domain::cap::default_policy()
            } else {
                c.policy
            },
            areas: c.areas,
            default_scope,
            accept_test: c.accept_test,
        }
    }

    fn schedule(s: RawSchedule, problems: &mut Vec<String>) -> ScheduleConfig {
        let timezone = Tz::from_str(&s.timezone).unwrap_or_else(|_| {
            problems.push(format!(
                "schedule.timezone: unknown IANA zone {:?} (e.g. \"Asia/Shanghai\")",
                s.timezone
            ));
            Tz::UTC
        });
        let horizon = duration(problems, "schedule.horizon", &s.horizon);
        if !(Duration::from_secs(2 * 3600)..=Duration::from_secs(14 * 86400)).contains(&horizon) {
            problems.push("schedule.horizon: between 2h and 14days".into());
        }
        if s.channels.is_empty() {
            problems.push("schedule.channels: name at least one channel".into());
        }
        for c in &s.channels {
            if c == "all" {
                problems.push(
                    "schedule.channels: \"all\" is reserved (the alert scope of every display)"
                        .into(),
                );
            }
            if !crate::registry::valid_display_id(c) {
                problems.push(format!(
                    "schedule.channels: {c:?} must be 1-64 letters, digits, '_' or '-' (no '.': clustered brokers such as NATS and RabbitMQ turn MQTT's '/' into '.', so a dotted name splits into two topic levels)"
                ));
            }
        }
        let mut displays = BTreeMap::new();
        let mut locations = BTreeMap::new();
        for (i, d) in s.displays.iter().enumerate() {
            if !crate::registry::valid_display_id(&d.id) {
                problems.push(format!(
                    "schedule.displays[{i}].id: {:?} must be 1-64 letters, digits, '_' or '-' (no '.': clustered brokers turn MQTT's '/' into '.')",
                    d.id
                ));
            }
            if !s.channels.contains(&d.channel) {
                problems.push(format!(
                    "schedule.displays[{i}].channel: unknown channel {:?}",
                    d.channel
                ));
            }
            match (d.lat, d.lon) {
                (Some(lat), Some(lon))
                    if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) =>
                {
                    locations.insert(d.id.clone(), (lat, lon));
                }
                (None, None) => {}
                (Some(_), Some(_)) => problems.push(format!(
                    "schedule.displays[{i}]: lat must be within -90..90 and lon within -180..180 (WGS 84 degrees)"
                )),
                _ => problems.push(format!(
                    "schedule.displays[{i}]: give both lat and lon, or neither"
                )),
            }
            if displays.insert(d.id.clone(), d.channel.clone()).is_some() {
                problems.push(format!(
                    "schedule.displays[{i}].id: {:?} declared twice",
                    d.id
                ));
            }
        }
        ScheduleConfig {
            timezone,
            playlists_dir: s.playlists_dir,
            horizon: chrono::Duration::from_std(horizon).unwrap_or(chrono::Duration::hours(48)),
            debounce: duration(problems, "schedule.debounce", &s.debounce),
            watch: s.watch,
            channels: s.channels,
            displays,
            locations,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_safe_defaults() {
        let c = Config::parse("m.toml", "").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.mqtt.broker,
            BrokerConfig::Embedded {
                listen: "127.0.0.1:1883".parse().unwrap(),
                users: BTreeMap::new()
            }
        );
        assert_eq!(c.schedule.horizon, chrono::Duration::hours(48));
        assert_eq!(c.schedule.channels.len(), 4);
        assert!(c.tokens.is_empty());
    }

    #[test]
    fn unknown_key_is_located() {
        let e = Config::parse("m.toml", "[server]\nlisten = \"127.0.0.1:1\"\ncolour = 1\n")
            .unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert!(
            e.problems[0].starts_with("m.toml:3:1: unknown field `colour`"),
            "{e}"
        );
    }

    #[test]
    fn tls_files_are_read_for_mqtts_only() {
        let e = Config::parse("m.toml", "[mqtt]\ncolour = 1\n").unwrap_err();
        assert!(
            e.problems[0].starts_with("m.toml:2:1: unknown field `colour`"),
            "{e}"
        );
        let e = Config::parse(
            "m.toml",
            "[mqtt]\nembedded = false\nurl = \"mqtt://127.0.0.1:1\"\nca_file = \"/x\"\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("only used with an mqtts:// url"),
            "{e}"
        );
        let e = Config::parse(
            "m.toml",
            "[mqtt]\nembedded = false\nurl = \"mqtts://127.0.0.1:1\"\nca_file = \"/nonexistent/ca.pem\"\n",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("mqtt.ca_file: cannot read /nonexistent/ca.pem"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let c = Config::parse(
            "m.toml",
            &format!(
                "[mqtt]\nembedded = false\nurl = \"mqtts://127.0.0.1\"\nca_file = {:?}\n",
                ca.display().to_string()
            ),
        )
        .unwrap();
        assert!(c.mqtt.tls.is_some());
        assert!(matches!(
            c.mqtt.broker,
            BrokerConfig::External { ref brokers, tls: true } if brokers[0].1 == 8883
        ));
    }

    #[test]
    fn broker_lists_are_checked() {
        for (text, want) in [
            (
                "urls = [\"mqtt://b1:1883\"]\n",
                "mqtt.urls: set embedded = false",
            ),
            (
                "embedded = false\nurls = [\"mqtt://127.0.0.1:1\", \"mqtts://127.0.0.1:2\"]\n",
                "mix of TLS and plain brokers",
            ),
            (
                "embedded = false\nurl = \"mqtt://127.0.0.1:1\"\nurls = [\"mqtt://127.0.0.1:2\"]\n",
                "give url or urls, not both",
            ),
            (
                "embedded = false\nurls = [\"http://x\"]\n",
                "is not a broker URL",
            ),
        ] {
            let e = Config::parse("m.toml", &format!("[mqtt]\n{text}")).unwrap_err();
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
        let c = Config::parse(
            "m.toml",
            "[mqtt]\nembedded = false\nurls = [\"mqtt://127.0.0.1:1\", \"mqtt://127.0.0.1:2\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.mqtt.broker,
            BrokerConfig::External {
                brokers: vec![("127.0.0.1".into(), 1), ("127.0.0.1".into(), 2)],
                tls: false
            }
        );
    }

    #[test]
    fn embedded_broker_off_loopback_needs_users() {
        let e = Config::parse("m.toml", "[mqtt]\nlisten = \"0.0.0.0:1883\"\n").unwrap_err();
        assert!(
            e.to_string().contains("anonymous clients are refused"),
            "{e}"
        );
    }

    #[test]
    fn external_broker_off_loopback_needs_credentials() {
        let e = Config::parse(
            "m.toml",
            "[mqtt]\nembedded = false\nurl = \"mqtt://broker.example:1883\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("credentials are required"), "{e}");
        let c = Config::parse(
            "m.toml",
            "[mqtt]\nembedded = false\nurl = \"mqtt://127.0.0.1:18830\"\n",
        )
        .unwrap();
        assert_eq!(
            c.mqtt.broker,
            BrokerConfig::External {
                brokers: vec![("127.0.0.1".into(), 18830)],
                tls: false
            }
        );
    }

    #[test]
    fn secrets_come_from_env_or_file_and_are_checked() {
        let e = Config::parse(
            "m.toml",
            "[[auth.tokens]]\nname = \"office\"\nrole = \"editor\"\ntoken_env = \"MARQUEE_TEST_SURELY_UNSET\"\n",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("auth.tokens[0] (office): token_env: environment variable MARQUEE_TEST_SURELY_UNSET is not set"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "0123456789abcdef0123\n").unwrap();
        let tok = |extra: &str| {
            format!(
                "[[auth.tokens]]\nname = \"office\"\nrole = \"editor\"\ntoken_file = {:?}\n{extra}",
                f.display().to_string()
            )
        };
        // Readable by others: refused, saying what to do.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Config::parse("m.toml", &tok("")).unwrap_err();
        assert!(
            e.to_string()
                .contains("readable by group or others: chmod 600"),
            "{e}"
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Two tokens with one secret: refused, naming the other token.
        let e = Config::parse(
            "m.toml",
            &tok(&format!(
                "[[auth.tokens]]\nname = \"boss\"\nrole = \"admin\"\ntoken_file = {:?}\n",
                f.display().to_string()
            )),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("auth.tokens[1] (boss): token: the same secret as token \"office\""),
            "{e}"
        );
        let c = Config::parse(
            "m.toml",
            &format!(
                "[[auth.tokens]]\nname = \"office\"\nrole = \"editor\"\ntoken_file = {:?}\n",
                f.display().to_string()
            ),
        )
        .unwrap();
        assert_eq!(c.tokens[0].secret, "0123456789abcdef0123");
        assert!(!format!("{:?}", c.tokens[0]).contains("0123456789"));
    }

    #[test]
    fn all_problems_are_reported_together() {
        let e = Config::parse(
            "m.toml",
            "[schedule]\ntimezone = \"Mars/Base\"\nhorizon = \"1h\"\nchannels = [\"a b\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.problems.len(), 3, "{e}");
    }
}
