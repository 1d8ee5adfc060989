//! Configuration: the raw TOML shape ([`RawConfig`], unknown keys refused) and the validated
//! [`Config`] the daemon runs on. Every problem is reported at once, each with its place
//! (`file:line:col` for syntax and unknown keys, `file: section.key` for meaning), and secrets are
//! read from environment variables or files (`*_env` / `*_file`), never from the TOML itself.
//!
//! By area: [`common`] (what every configuration file shares; the SMS and agent configurations
//! depend on it alone), [`server`], [`mqtt`], [`schedule`], [`auth`] (tokens, roles, the
//! two-person rule), [`cap`] (CAP and the fleet's report retention); `[sms]` is
//! [`crate::sms::config`].

pub mod auth;
pub mod cap;
pub mod common;
pub mod mqtt;
pub mod schedule;
pub mod server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use auth::{RawApproval, RawAuth};
pub use auth::{Role, TokenConfig};
pub use cap::Retention;
use cap::{RawCap, RawFleet};
pub use common::{ConfigError, RawTls, read_toml};
use common::{duration, parse_toml};
use mqtt::RawMqtt;
pub use mqtt::{BrokerConfig, MqttConfig};
use schedule::RawSchedule;
pub use schedule::{ScheduleConfig, Screen};
pub use server::{LogFormat, ServerTls, StoreConfig};
use server::{RawLog, RawServer, default_max_connections, server_tls};

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
    #[serde(default)]
    store: server::RawStore,
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
    /// The database (`[store]`): SQLite in `data_dir` unless a PostgreSQL URL is given.
    pub store: StoreConfig,
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
        let mqtt = mqtt::validate(raw.mqtt, problems);
        let schedule = schedule::validate(raw.schedule, problems);
        let tokens = auth::tokens(&raw.auth, problems);
        let cap_feeds = cap::feeds(&raw.cap, problems);
        let cap_contact = raw.cap.contact.clone();
        let cap = cap::validate(raw.cap, &schedule, problems);
        let sms = crate::sms::config::validate(
            raw.sms,
            schedule.timezone,
            listen,
            &raw.server.data_dir,
            problems,
        );
        let retention = cap::retention(&raw.fleet, problems);
        let store = server::store(raw.store, problems);
        Config {
            store,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

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
    fn the_store_is_sqlite_unless_a_safe_postgres_url_is_given() {
        assert_eq!(
            Config::parse("m.toml", "").unwrap().store,
            StoreConfig::Sqlite
        );
        let c = Config::parse(
            "m.toml",
            "[store]\nurl = \"postgres://marquee@127.0.0.1:5432/marquee\"\n",
        )
        .unwrap();
        assert_eq!(
            c.store,
            StoreConfig::Postgres {
                url: "postgres://marquee@127.0.0.1:5432/marquee".into(),
                password: None,
                node: crate::host_name(),
                lease: std::time::Duration::from_secs(10),
                tls_ca: None,
                share_events: false,
            }
        );
        let bad = |toml: &str, says: &str| {
            let e = Config::parse("m.toml", toml).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        };
        bad(
            "[store]\nurl = \"postgres://marquee:secret@127.0.0.1/marquee\"\n",
            "store.url: holds a password",
        );
        bad(
            "[store]\nurl = \"postgres://marquee@db.example.org/marquee\"\n",
            "db.example.org is not on loopback: add ?sslmode=require",
        );
        bad(
            "[store]\nurl = \"postgres://marquee@localhost/m?hostaddr=203.0.113.5\"\n",
            "203.0.113.5 is not on loopback",
        );
        bad(
            "[store]\nurl = \"postgres://marquee@db.example.org/m?sslmode=require\"\nca_file = \"/nonexistent/ca.pem\"\n",
            "store.ca_file: cannot read /nonexistent/ca.pem",
        );
        bad(
            "[store]\nurl = \"postgres://marquee@127.0.0.1/m\"\nca_file = \"/etc/hosts\"\n",
            "store.ca_file: only used with sslmode=require",
        );
        bad(
            "[store]\nurl = \"mysql://x@127.0.0.1/m\"\n",
            "is not a PostgreSQL URL",
        );
        bad(
            "[store]\npassword_env = \"X\"\n",
            "password_env/password_file without store.url",
        );
        bad(
            "[store]\nshare_events = true\n",
            "share_events are for a PostgreSQL store",
        );
        bad(
            "[store]\nurl = \"postgres://marquee@127.0.0.1/m\"\npassword_env = \"MARQUEE_TEST_SURELY_UNSET\"\n",
            "store.password_env: environment variable MARQUEE_TEST_SURELY_UNSET is not set",
        );
        bad(
            "[store]\nurl = \"postgres://marquee@127.0.0.1/m\"\nlease = \"100ms\"\n",
            "store.lease: 100ms is outside 1s to 10m",
        );
        bad(
            "[store]\nnode = \"a\"\n",
            "node, lease, ca_file and share_events are for a PostgreSQL store",
        );
    }

    /// Broker account names and the topic prefix go into Mosquitto's files line by line.
    #[test]
    fn broker_names_that_would_write_lines_of_their_own_are_refused() {
        for (toml, problem) in [
            (
                "[mqtt]\nembedded = false\nurl = \"mqtt://127.0.0.1:1\"\nusername = \"x\\npattern readwrite #\"\npassword_env = \"HOME\"\n",
                "mqtt.username: \"x\\npattern readwrite #\" must be",
            ),
            (
                "[mqtt]\nembedded = false\nurl = \"mqtt://127.0.0.1:1\"\nusername = \"\"\npassword_env = \"HOME\"\n",
                "mqtt.username: \"\" must be",
            ),
            (
                "[mqtt]\nembedded = false\nurl = \"mqtt://127.0.0.1:1\"\nusername = \"a:b\"\npassword_env = \"HOME\"\n",
                "mqtt.username: \"a:b\" must be",
            ),
            (
                "[mqtt]\ntopic_prefix = \"m\\ntopic readwrite #\"\n",
                "mqtt.topic_prefix",
            ),
        ] {
            let e = Config::parse("m.toml", toml).unwrap_err();
            assert!(e.to_string().contains(problem), "{toml}: {e}");
        }
        let ok = Config::parse(
            "m.toml",
            "[mqtt]\nembedded = false\nurl = \"mqtt://127.0.0.1:1\"\nusername = \"hall-a@city.gov\"\npassword_env = \"HOME\"\n",
        );
        assert!(ok.is_ok(), "{:?}", ok.err());
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

    #[test]
    fn screen_sizes_default_and_are_checked() {
        let c = Config::parse(
            "m.toml",
            "[schedule.screens]\nsubway = \"1080x1920\"\nbus = \" 800 × 480 \"\n",
        )
        .unwrap();
        let s = &c.schedule.screens;
        assert_eq!((s["subway"].width, s["subway"].height), (1080, 1920));
        assert_eq!((s["bus"].width, s["bus"].height), (800, 480));
        assert_eq!((s["lobby"].width, s["lobby"].height), (1920, 1080));
        assert_eq!(s.len(), 4, "every channel has a size");
        let e = Config::parse(
            "m.toml",
            "[schedule.screens]\nmetro = \"1920x1080\"\nlobby = \"1920\"\nbus = \"100x100\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("schedule.screens.metro: unknown channel"), "{e}");
        assert!(
            e.contains("schedule.screens.lobby: \"1920\" is not a size"),
            "{e}"
        );
        assert!(e.contains("schedule.screens.bus: \"100x100\""), "{e}");
    }
}
