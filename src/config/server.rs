//! `[server]` (address, data directory, connection cap, header timeout, TLS, disk reserve) and
//! `[log]`.

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    pub(super) listen: String,
    pub(super) data_dir: PathBuf,
    pub(super) max_connections: Option<usize>,
    pub(super) header_timeout: String,
    pub(super) disk_reserve_kib: u64,
    pub(super) tls_cert_file: Option<PathBuf>,
    pub(super) tls_key_file: Option<PathBuf>,
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

pub(super) fn server_tls(
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
pub(super) fn default_max_connections() -> usize {
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
pub(super) struct RawLog {
    pub(super) format: String,
    pub(super) filter: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: "text".into(),
            filter: "info".into(),
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[store]`: where the daemon keeps its state.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStore {
    pub(super) url: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) node: Option<String>,
    pub(super) lease: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) share_events: Option<bool>,
}

/// The daemon's database.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// SQLite in `data_dir` (`marquee.db`): the default, nothing to set up.
    Sqlite,
    /// PostgreSQL (`[store] url`, a `postgres://user@host:port/database` URL without a
    /// password; the password from `password_env` or `password_file`, or none for a server
    /// that trusts the connection).
    Postgres {
        /// The URL as configured.
        url: String,
        /// The password, when one was given.
        password: Option<String>,
        /// This daemon's name among those sharing the database (`node`; default: the host
        /// name), for the leader lease (`crate::leader`).
        node: String,
        /// How long a leader's lease lasts without renewal (`lease`, default 10s): a standby
        /// takes over at most about this long after the leader died.
        lease: std::time::Duration,
        /// TLS (the URL's `sslmode=require`): the CA certificates (PEM) the server's
        /// certificate must chain to (`ca_file`; default: the system's). `None`: no TLS.
        tls_ca: Option<Vec<u8>>,
        /// Whether the nodes split the agents' event intake through an MQTT shared
        /// subscription where the broker delivers through one (`share_events`, default
        /// false; each node then needs a broker account of its own: docs/operations.md).
        share_events: bool,
    },
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreConfig::Sqlite => f.write_str("Sqlite"),
            StoreConfig::Postgres {
                url,
                password,
                node,
                lease,
                tls_ca,
                share_events,
            } => f
                .debug_struct("Postgres")
                .field("url", url)
                .field("password", &password.as_ref().map(|_| "<redacted>"))
                .field("node", node)
                .field("lease", lease)
                .field("tls", &tls_ca.is_some())
                .field("share_events", share_events)
                .finish(),
        }
    }
}

/// Checks `[store]`. The URL must parse and must not hold a password (it belongs out of the
/// config file). A server off loopback is reached over TLS only (`sslmode=require` in the URL:
/// the server's certificate is verified against `ca_file` or the system's CAs, and its name
/// against the URL's host); without it, the connection would cross the network in clear.
pub(super) fn store(raw: RawStore, problems: &mut Vec<String>) -> StoreConfig {
    let Some(url) = raw.url else {
        if raw.password_env.is_some() || raw.password_file.is_some() {
            problems.push("store: password_env/password_file without store.url".into());
        }
        if raw.node.is_some()
            || raw.lease.is_some()
            || raw.ca_file.is_some()
            || raw.share_events.is_some()
        {
            problems.push(
                "store: node, lease, ca_file and share_events are for a PostgreSQL store (store.url)"
                    .into(),
            );
        }
        return StoreConfig::Sqlite;
    };
    let tls = check_url(&url, raw.ca_file.is_some(), problems);
    let tls_ca = if tls {
        let path = raw
            .ca_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(super::common::SYSTEM_CA));
        match std::fs::read(&path) {
            Ok(pem) => Some(pem),
            Err(e) => {
                problems.push(format!(
                    "store.ca_file: cannot read {}: {e}",
                    path.display()
                ));
                None
            }
        }
    } else {
        None
    };
    let password = match (&raw.password_env, &raw.password_file) {
        (None, None) => None,
        (env, file) => super::common::secret(problems, "store.password", env, file),
    };
    let node = raw.node.unwrap_or_else(crate::host_name);
    if !crate::store::leader::valid_node(&node) {
        problems.push(format!(
            "store.node: {node:?} is not a name (1 to 64 letters, digits, '.', '_', '-'; set it when the host name is not one)"
        ));
    }
    let lease = super::common::duration(
        problems,
        "store.lease",
        raw.lease.as_deref().unwrap_or("10s"),
    );
    if lease < std::time::Duration::from_secs(1) || lease > std::time::Duration::from_secs(600) {
        problems.push(format!(
            "store.lease: {} is outside 1s to 10m",
            humantime::format_duration(lease)
        ));
    }
    StoreConfig::Postgres {
        url,
        password,
        node,
        lease,
        tls_ca,
        share_events: raw.share_events.unwrap_or(false),
    }
}

/// Checks `[store] url` (see [`store`]); answers whether it asks for TLS (`sslmode=require`).
fn check_url(url: &str, ca_file: bool, problems: &mut Vec<String>) -> bool {
    let mut tls = false;
    match url.parse::<tokio_postgres::Config>() {
        // Not echoed: a URL that does not parse may still hold a password.
        Err(e) => problems.push(format!(
            "store.url: is not a PostgreSQL URL (postgres://user@127.0.0.1:5432/marquee): {e}"
        )),
        Ok(c) => {
            if c.get_password().is_some() {
                problems.push(
                    "store.url: holds a password; put it in store.password_env or store.password_file"
                        .into(),
                );
            }
            if c.get_user().is_none() {
                problems.push("store.url: names no user (postgres://marquee@…)".into());
            }
            tls = c.get_ssl_mode() == tokio_postgres::config::SslMode::Require;
            let mut remote: Vec<String> = c
                .get_hostaddrs()
                .iter()
                .filter(|a| !a.is_loopback())
                .map(|a| a.to_string())
                .collect();
            for h in c.get_hosts() {
                if let tokio_postgres::config::Host::Tcp(host) = h
                    && !super::common::is_loopback_host(host)
                {
                    remote.push(host.clone());
                }
            }
            if !tls && !remote.is_empty() {
                problems.push(format!(
                    "store.url: {} is not on loopback: add ?sslmode=require (TLS, the server's certificate checked against store.ca_file or the system's CAs), or reach the server through a tunnel on 127.0.0.1",
                    remote.join(", ")
                ));
            }
            if !tls && ca_file {
                problems.push("store.ca_file: only used with sslmode=require in store.url".into());
            }
        }
    }
    tls
}
