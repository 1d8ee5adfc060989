//! Marquee: a publicity daemon. A central scheduler turns playlist files into signed, retained MQTT
//! timelines for display agents (lobby, subway, bus and public screens).
//!
//! The map, with which part may call which: `docs/architecture.md`. In short:
//!
//! - Pure: [`wire`] (the protocol: topics, payloads, signing) and [`domain`] (playlists,
//!   calendar, resolver, CAP, the SMS delivery and campaign lifecycles, phone numbers, segments).
//! - Use cases: [`app`] (their context, errors and the audit), [`alerts`] (raise, approve,
//!   clear, CAP, the feed poller) and [`sms::campaigns`].
//! - Edges, each the only user of its outside world: [`store`] (SQLite), [`mqtt`] (the broker
//!   and the client), [`sms::gateway`] (carriers), [`lists`] (list files), [`keys`] (key and
//!   token files).
//! - Tasks: [`scheduler`] (the single writer of retained topics, with its file watcher and
//!   catalog), [`fleet`] (agents' reports), [`sms`] (dispatcher, report intake, reconciler),
//!   [`registry`] (who may report), [`preview`] (what screens show when), [`metrics`],
//!   [`logging`].
//! - Shells: [`http`] (parse, call, answer), [`config`], [`cli`] (one module per subcommand),
//!   [`daemon`] (wiring), [`agent`] (the display agent).
// Functions stay short enough to read at once (clippy.toml: at most 80 lines; tests aside).
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod agent;
pub mod alerts;
pub mod app;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod domain;
pub mod fleet;
pub mod handoff;
pub mod http;
pub mod keys;
pub mod leader;
pub mod lists;
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod preview;
pub mod registry;
pub mod scheduler;
pub mod sms;
pub mod store;
pub mod wire;

#[cfg(test)]
mod fuzz;

/// This machine's host name (Linux `/proc`), empty when unreadable. Names the daemon's default
/// MQTT client id and an agent's instance.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Installs the process's TLS crypto library (ring) once; every TLS client (MQTT over TLS,
/// HTTPS gateways, the CLI) needs it before it is built. Later calls do nothing.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// An HTTP client builder with the crypto provider installed.
pub fn http_client() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}
