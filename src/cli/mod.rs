//! The command line of `marquee`, one module per subcommand: each has its `Args` (clap) and a
//! `run(args) -> ExitCode` that `main.rs` calls.
//!
//! Offline, reading files only: [`check`], [`preview`], [`schema`], [`keygen`], [`audit`] (and
//! `playlist diff`). Long-running: [`serve`] (the daemon), [`agent`] (a display agent). API
//! clients, talking to a running daemon over HTTP with a token ([`client`]): [`displays`],
//! [`display`], [`broker`], [`alert`], [`playlist`], [`campaign`], [`optout`].
//!
//! Exit codes: 0 success, 1 failure, 2 usage error (clap), 78 bad configuration (`EX_CONFIG`
//! of sysexits.h).

pub mod agent;
pub mod alert;
pub mod audit;
pub mod broker;
pub mod campaign;
pub mod check;
pub mod client;
pub mod display;
pub mod displays;
pub mod keygen;
pub mod optout;
pub mod playlist;
pub mod preview;
pub mod schema;
pub mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

pub use client::ApiClient;

/// Exit code for a bad configuration (sysexits.h `EX_CONFIG`).
pub const EX_CONFIG: u8 = 78;

/// The daemon's configuration file (`-c`), shared by the offline subcommands.
#[derive(clap::Args)]
pub struct ConfigArg {
    /// Configuration file.
    #[arg(
        short = 'c',
        long = "config",
        default_value = "config/marquee.toml",
        env = "MARQUEE_CONFIG"
    )]
    pub path: PathBuf,
}

/// An API-client subcommand: its action and how to reach the daemon.
#[derive(clap::Args)]
pub struct ApiCommand<A: clap::Subcommand> {
    /// What to do.
    #[command(subcommand)]
    pub action: A,
    /// Where the daemon is, and the token.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// How API-client subcommands reach the daemon.
#[derive(clap::Args)]
pub struct ApiArgs {
    /// Daemon URL.
    #[arg(
        long,
        global = true,
        env = "MARQUEE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// API token (default: the generated admin token in the config's data directory).
    #[arg(long, global = true, env = "MARQUEE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Daemon configuration (to find the generated admin token).
    #[arg(
        short,
        long,
        global = true,
        default_value = "config/marquee.toml",
        env = "MARQUEE_CONFIG"
    )]
    pub config: PathBuf,
    /// Extra trusted CA certificates (PEM), for an https:// daemon whose certificate an
    /// office's own CA signed.
    #[arg(long, global = true, env = "MARQUEE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

/// Rows as left-aligned columns (the first row is the header).
pub fn table<R: AsRef<[String]>>(rows: &[R]) -> String {
    let cols = rows.first().map_or(0, |r| r.as_ref().len());
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .map(|r| r.as_ref()[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .as_ref()
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Prints to stdout; a closed pipe (`| head`) is not an error worth a panic.
pub fn print_out(s: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("marquee: cannot write output: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a long-lived async command on a multi-threaded runtime.
pub fn run_async(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("marquee: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    finish(rt.block_on(fut))
}

/// The exit code of a long-lived command, logging its error.
pub fn finish(res: anyhow::Result<()>) -> ExitCode {
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "stopped on an error");
            eprintln!("marquee: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints every configuration problem and exits with EX_CONFIG.
pub fn bad_config(cmd: &str, e: &crate::config::ConfigError) -> ExitCode {
    eprintln!("{e}");
    eprintln!("{cmd}: configuration has errors; not starting");
    ExitCode::from(EX_CONFIG)
}

/// Runs an API-client subcommand: resolves URL and token, runs `f`, prints its output.
pub fn run_api<F, Fut>(cmd: &str, api: ApiArgs, f: F) -> ExitCode
where
    F: FnOnce(ApiClient) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    let result = ApiClient::resolve(api.url, api.token, &api.config, api.ca_file.as_deref())
        .and_then(|client| {
            tokio::runtime::Runtime::new()
                .map_err(anyhow::Error::from)?
                .block_on(f(client))
        });
    match result {
        Ok(out) => print_out(&out),
        Err(e) => {
            eprintln!("{cmd}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
