//! What every configuration file shares (the daemon's and the agents'): reading TOML with
//! locations, the error that lists every problem, secrets from the environment or a file,
//! durations, and TLS files read as bytes. The SMS and agent configurations depend on this
//! part only.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::domain::locate::line_col;

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

pub(crate) fn is_loopback_host(host: &str) -> bool {
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

pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    file: &str,
    src: &str,
) -> Result<T, ConfigError> {
    toml::from_str(src).map_err(|e| {
        let (line, col) = e.span().map(|s| line_col(src, s.start)).unwrap_or((1, 1));
        ConfigError {
            file: file.to_owned(),
            problems: vec![format!("{file}:{line}:{col}: {}", e.message().trim())],
        }
    })
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

/// The TLS files of a `mqtts://` connection, read (PEM bytes).
#[derive(Clone)]
pub struct TlsFiles {
    /// Trusted CA certificates.
    pub ca: Vec<u8>,
    /// Client certificate chain and private key, for mutual TLS.
    pub client_auth: Option<(Vec<u8>, Vec<u8>)>,
}

/// Where the system's trusted CA certificates are (Debian's ca-certificates).
pub(crate) const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

impl RawTls {
    /// Reads the files for a `mqtts://` connection (`tls` true) or checks none is set.
    pub fn load(&self, tls: bool, problems: &mut Vec<String>) -> Option<TlsFiles> {
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
        Some(TlsFiles { ca, client_auth })
    }
}
