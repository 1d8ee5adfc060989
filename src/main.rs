//! The `marquee` binary: parses the command line and makes one call into [`marquee::cli`] per
//! subcommand. Exit codes: 0 success, 1 failure, 2 usage error, 78 bad configuration.
// Functions stay short enough to read at once (clippy.toml: at most 80 lines; tests aside).
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use marquee::cli;
use marquee::config::LogFormat;

#[derive(Parser)]
#[command(
    name = "marquee",
    version,
    about = "Publicity scheduler: signed slogan timelines over MQTT to display agents"
)]
struct Cli {
    /// Log format (overrides log.format in the config).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: scheduler, publisher, HTTP API, embedded MQTT broker unless configured otherwise.
    Serve(cli::serve::Args),
    /// Validate the configuration and every playlist; print each problem as file:line:col: message.
    Check(cli::check::Args),
    /// Show what a channel or display shows at a time, from the files (no daemon needed).
    Preview(cli::preview::Args),
    /// Run a display agent: verify, cache and play timelines; report status and proof of play.
    Agent(cli::agent::Args),
    /// List the displays: online/offline since when, timeline applied vs current, last alert ack.
    Displays(cli::displays::Args),
    /// The display registry: add (issues the display's report key and broker password),
    /// remove, list. Only registered displays' reports are stored.
    Display(cli::display::Args),
    /// Broker files from the registry: `mosquitto --out DIR` writes a password file and an ACL.
    Broker(cli::broker::Args),
    /// Emergency alerts: raise, clear, show (with acknowledgements), list.
    Alert(cli::alert::Args),
    /// Playlists through the API: push a file, pull the live version, diff a file against it.
    Playlist(cli::playlist::Args),
    /// SMS campaigns: create (prints the cost), list, show, start, pause, resume, cancel,
    /// reconcile, requeue-unknown, status (live progress in a terminal), messages, rejects.
    Campaign(cli::campaign::Args),
    /// The SMS opt-out list: add, remove, import (CSV, TXT or XLSX), list.
    Optout(cli::optout::Args),
    /// The audit log.
    Audit(cli::audit::Args),
    /// Make an Ed25519 signing key pair (signing.key mode 0600, signing.pub).
    Keygen(cli::keygen::Args),
    /// Print a JSON Schema.
    Schema(cli::schema::Args),
}

fn main() -> ExitCode {
    // One crypto library (ring) for every TLS connection; must precede any TLS use.
    marquee::install_crypto_provider();
    let cli = Cli::parse();
    let log_format = cli.log_format.map(|f| match f {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    });
    match cli.command {
        Command::Serve(a) => cli::serve::run(a, log_format),
        Command::Check(a) => cli::check::run(a),
        Command::Preview(a) => cli::preview::run(a),
        Command::Agent(a) => cli::agent::run(a, log_format),
        Command::Displays(a) => cli::displays::run(a),
        Command::Display(a) => cli::display::run(a),
        Command::Broker(a) => cli::broker::run(a),
        Command::Alert(a) => cli::alert::run(a),
        Command::Playlist(a) => cli::playlist::run(a),
        Command::Campaign(a) => cli::campaign::run(a),
        Command::Optout(a) => cli::optout::run(a),
        Command::Audit(a) => cli::audit::run(a),
        Command::Keygen(a) => cli::keygen::run(a),
        Command::Schema(a) => cli::schema::run(a),
    }
}
