//! The `marquee` binary: parses the command line and makes one call into the library per
//! subcommand. Exit codes: 0 success, 1 failure, 2 usage error, 78 bad configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use marquee::config::{Config, LogFormat};

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
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Data directory (overrides server.data_dir).
        #[arg(long, env = "MARQUEE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Validate the configuration and every playlist; print each problem as file:line:col: message.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show what a channel or display shows at a time, from the files (no daemon needed).
    Preview {
        #[command(flatten)]
        config: ConfigArg,
        /// Channel to preview.
        #[arg(long, required_unless_present = "display")]
        channel: Option<String>,
        /// Display to preview (declared under [[schedule.displays]]).
        #[arg(long)]
        display: Option<String>,
        /// Start: RFC 3339 (2021-05-15T09:00:00+08:00), local 2021-05-15T09:00, or "now".
        #[arg(long, default_value = "now")]
        at: String,
        /// Length, e.g. 2h, 90m, 2days.
        #[arg(long = "for", default_value = "2h")]
        length: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a display agent: verify, cache and play timelines; report status and proof of play.
    Agent {
        /// Agent configuration file.
        #[arg(short, long, default_value = "config/agent-lobby.toml")]
        config: PathBuf,
        /// Renderer (overrides `render` in the config).
        #[arg(long, value_enum)]
        render: Option<marquee::agent::config::RenderKind>,
    },
    /// List the displays: online/offline since when, timeline applied vs current, last alert ack.
    Displays {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The display registry: add (issues the display's report key and broker password),
    /// remove, list. Only registered displays' reports are stored.
    Display {
        #[command(subcommand)]
        action: DisplayAction,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Broker files from the registry: `mosquitto --out DIR` writes a password file and an ACL.
    Broker {
        #[command(subcommand)]
        action: BrokerAction,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Emergency alerts: raise, clear, show (with acknowledgements), list.
    Alert {
        #[command(subcommand)]
        action: AlertAction,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Playlists through the API: push a file, pull the live version, diff a file against it.
    Playlist {
        #[command(subcommand)]
        action: PlaylistAction,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// SMS campaigns: create (prints the cost), list, show, start, pause, resume, cancel,
    /// reconcile, requeue-unknown, status (live progress in a terminal), messages, rejects.
    Campaign {
        #[command(subcommand)]
        action: CampaignAction,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The SMS opt-out list: add, remove, import (CSV, TXT or XLSX), list.
    Optout {
        #[command(subcommand)]
        action: OptoutAction,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Make an Ed25519 signing key pair (signing.key mode 0600, signing.pub).
    Keygen {
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Replace an existing key pair (or, with --rotate, a prepared next key).
        #[arg(long)]
        force: bool,
        /// Prepare a rotation in the daemon's data directory: signing.next.key/.pub. Give
        /// agents signing.next.pub as next_public_key_file, then restart the daemon: it switches
        /// and signs everything current again with the new key.
        #[arg(long)]
        rotate: bool,
    },
    /// Print a JSON Schema.
    Schema {
        #[arg(value_enum)]
        what: SchemaKind,
    },
}

/// The daemon's configuration file (`-c`), shared by the offline subcommands.
#[derive(clap::Args)]
struct ConfigArg {
    /// Configuration file.
    #[arg(
        short = 'c',
        long = "config",
        default_value = "config/marquee.toml",
        env = "MARQUEE_CONFIG"
    )]
    path: PathBuf,
}

/// How API-client subcommands reach the daemon.
#[derive(clap::Args)]
struct ApiArgs {
    /// Daemon URL.
    #[arg(
        long,
        global = true,
        env = "MARQUEE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// API token (default: the generated admin token in the config's data directory).
    #[arg(long, global = true, env = "MARQUEE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Daemon configuration (to find the generated admin token).
    #[arg(
        short,
        long,
        global = true,
        default_value = "config/marquee.toml",
        env = "MARQUEE_CONFIG"
    )]
    config: PathBuf,
    /// Extra trusted CA certificates (PEM), for an https:// daemon whose certificate an
    /// office's own CA signed.
    #[arg(long, global = true, env = "MARQUEE_CA_FILE")]
    ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum PlaylistAction {
    /// Upload FILE (its name is the id); validated like a file on disk; prints the change impact.
    Push {
        /// Playlist file.
        file: PathBuf,
    },
    /// Print the live version of playlist ID as written.
    Pull {
        /// Playlist id.
        id: String,
    },
    /// Which screens FILE would change, and from when (offline, from the config's playlists).
    Diff {
        /// Playlist file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum CampaignAction {
    /// Import recipients and create a campaign; prints its id, cost and every rejected row.
    Create(Box<marquee::cli::campaign::CreateArgs>),
    /// Every campaign with its counts.
    List,
    /// One campaign as JSON.
    Show {
        /// Campaign id.
        id: i64,
    },
    /// Start a draft or scheduled campaign now.
    Start {
        /// Campaign id.
        id: i64,
        /// Needed when the scheduled start was missed (the daemon was down).
        #[arg(long = "confirm-late")]
        confirm_late: bool,
    },
    /// Stop sending (messages in flight finish).
    Pause {
        /// Campaign id.
        id: i64,
    },
    /// Continue a paused campaign.
    Resume {
        /// Campaign id.
        id: i64,
    },
    /// Cancel every message not yet sent.
    Cancel {
        /// Campaign id.
        id: i64,
    },
    /// Ask the providers about the messages whose submit answer was lost: those they have
    /// become sent (or delivered, failed) and are never resent.
    Reconcile {
        /// Campaign id.
        id: i64,
    },
    /// Send again the messages whose submit answer was lost (they may arrive twice).
    RequeueUnknown {
        /// Campaign id.
        id: i64,
    },
    /// Progress; a live bar in a terminal until the campaign ends.
    Status {
        /// Campaign id.
        id: i64,
        /// Follow even when not in a terminal.
        #[arg(long)]
        follow: bool,
    },
    /// The messages of a campaign.
    Messages {
        /// Campaign id.
        id: i64,
        /// Only this state (queued, sent, delivered, failed, unknown, …).
        #[arg(long)]
        status: Option<String>,
        /// CSV instead of a table.
        #[arg(long)]
        csv: bool,
    },
    /// The rows the import rejected, with the reason for each.
    Rejects {
        /// Campaign id.
        id: i64,
        /// Write them to this CSV file (the list's columns plus reason and row), to fix and
        /// upload again.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DisplayAction {
    /// Register a display and write its credentials into DIR (shown once).
    Add {
        /// Display id (1-64 of A-Z a-z 0-9 _ -).
        id: String,
        /// Its channel.
        #[arg(long)]
        channel: String,
        /// Where to write ID.report.key and ID.broker.password (the shipped agent configs read
        /// them from data/credentials).
        #[arg(long, default_value = "data/credentials")]
        out: PathBuf,
    },
    /// Remove a display: its reports are dropped from now on.
    Remove {
        /// Display id.
        id: String,
    },
    /// The registered displays.
    List,
}

#[derive(Subcommand)]
enum BrokerAction {
    /// Write Mosquitto's password file (`passwd`) and ACL (`acl`) into DIR.
    Mosquitto {
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum OptoutAction {
    /// Add numbers.
    Add {
        /// Numbers (any common form; normalised to E.164).
        #[arg(required = true)]
        numbers: Vec<String>,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Remove a number.
    Remove {
        /// Number.
        number: String,
    },
    /// Add every number of a list file (a number column): CSV or TXT in any common encoding,
    /// XLSX.
    Import {
        /// The file.
        file: PathBuf,
        /// The sheet of a workbook (default: the first).
        #[arg(long)]
        sheet: Option<String>,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// The list.
    List,
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check the hash chain of the audit log in the daemon's database (offline); exit 1 if broken.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// Data directory (overrides server.data_dir).
        #[arg(long, env = "MARQUEE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AlertAction {
    /// Put an alert on every display in scope now (operator role).
    Raise {
        /// Chinese text.
        #[arg(long)]
        zh: Option<String>,
        /// English text.
        #[arg(long)]
        en: Option<String>,
        /// Limit to channels (repeatable); default: every display.
        #[arg(long = "channel")]
        channels: Vec<String>,
        /// Limit to displays (repeatable).
        #[arg(long = "display")]
        displays: Vec<String>,
        /// minor, moderate, severe or extreme.
        #[arg(long, default_value = "severe")]
        severity: String,
        /// How long it lasts unless cleared.
        #[arg(long = "expires-in", default_value = "1h")]
        expires_in: String,
    },
    /// End an alert.
    Clear {
        /// Alert id.
        id: String,
    },
    /// An alert with the displays that showed it and those that did not.
    Show {
        /// Alert id.
        id: String,
    },
    /// Every alert, newest first.
    List,
}

#[derive(Clone, Copy, ValueEnum)]
enum SchemaKind {
    /// Playlist files.
    Playlist,
    /// The HTTP API (OpenAPI 3, as served at /api/v1/openapi.json).
    Openapi,
}

const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    // One crypto library (ring) for every TLS connection; must precede any TLS use.
    marquee::install_crypto_provider();
    let cli = Cli::parse();
    let log_format = cli.log_format.map(|f| match f {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    });
    match cli.command {
        Command::Serve { config, data_dir } => {
            let mut cfg = match Config::load(&config.path) {
                Ok(c) => c,
                Err(e) => return bad_config("marquee", &e),
            };
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            marquee::logging::init(log_format.unwrap_or(cfg.log_format), &cfg.log_filter);
            run_async(marquee::daemon::serve(cfg))
        }
        Command::Check { config } => {
            let problems = marquee::cli::check(&config.path);
            if problems == 0 {
                ExitCode::SUCCESS
            } else {
                eprintln!("{problems} problem(s) found");
                ExitCode::FAILURE
            }
        }
        Command::Preview {
            config,
            channel,
            display,
            at,
            length,
            json,
        } => match marquee::cli::preview(
            &config.path,
            channel.as_deref(),
            display.as_deref(),
            &at,
            &length,
            json,
        ) {
            Ok(out) => print_out(&out),
            Err(e) => {
                eprintln!("marquee preview: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Agent { config, render } => {
            let mut cfg = match marquee::agent::config::AgentConfig::load(&config) {
                Ok(c) => c,
                Err(e) => return bad_config("marquee agent", &e),
            };
            if let Some(r) = render {
                cfg.render = r;
            }
            marquee::logging::init(log_format.unwrap_or(LogFormat::Text), "info");
            // One screen needs no thread pool: a single-threaded runtime keeps the agent small.
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => finish(rt.block_on(marquee::agent::run(cfg))),
                Err(e) => {
                    eprintln!("marquee: cannot start the async runtime: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Displays { api } => run_api("marquee displays", api, |client| async move {
            marquee::cli::displays(&client).await
        }),
        Command::Display { action, api } => run_api("marquee display", api, |client| async move {
            match action {
                DisplayAction::Add { id, channel, out } => {
                    marquee::cli::display_add(&client, &id, &channel, &out).await
                }
                DisplayAction::Remove { id } => marquee::cli::display_remove(&client, &id).await,
                DisplayAction::List => marquee::cli::display_list(&client).await,
            }
        }),
        Command::Broker {
            action: BrokerAction::Mosquitto { out },
            api,
        } => run_api("marquee broker", api, |client| async move {
            marquee::cli::broker_mosquitto(&client, &out).await
        }),
        Command::Alert { action, api } => run_api("marquee alert", api, |client| async move {
            let pretty =
                |v: serde_json::Value| serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
            match action {
                AlertAction::Raise {
                    zh,
                    en,
                    channels,
                    displays,
                    severity,
                    expires_in,
                } => {
                    let text: Vec<(String, String)> = [("zh", zh), ("en", en)]
                        .into_iter()
                        .filter_map(|(l, t)| t.map(|t| (l.to_owned(), t)))
                        .collect();
                    if text.is_empty() {
                        anyhow::bail!("give --zh and/or --en");
                    }
                    marquee::cli::alert_raise(
                        &client,
                        &text,
                        &channels,
                        &displays,
                        &severity,
                        &expires_in,
                    )
                    .await
                }
                AlertAction::Clear { id } => client
                    .call(
                        reqwest::Method::DELETE,
                        &format!("/api/v1/alerts/{id}"),
                        None,
                    )
                    .await
                    .map(pretty),
                AlertAction::Show { id } => client
                    .get(&format!("/api/v1/alerts/{id}"))
                    .await
                    .map(pretty),
                AlertAction::List => client.get("/api/v1/alerts").await.map(pretty),
            }
        }),
        Command::Playlist { action, api } => match action {
            PlaylistAction::Diff { file } => {
                match marquee::cli::playlist_diff(&api.config, &file) {
                    Ok(out) => print_out(&out),
                    Err(e) => {
                        eprintln!("marquee playlist diff: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            }
            PlaylistAction::Push { file } => {
                run_api("marquee playlist push", api, |client| async move {
                    marquee::cli::playlist_push(&client, &file).await
                })
            }
            PlaylistAction::Pull { id } => {
                run_api("marquee playlist pull", api, |client| async move {
                    marquee::cli::playlist_pull(&client, &id).await
                })
            }
        },
        Command::Campaign { action, api } => {
            run_api("marquee campaign", api, |client| async move {
                use marquee::cli::campaign as c;
                match action {
                    CampaignAction::Create(args) => c::create(&client, *args).await,
                    CampaignAction::List => c::list(&client).await,
                    CampaignAction::Show { id } => client
                        .get(&format!("/api/v1/campaigns/{id}"))
                        .await
                        .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"),
                    CampaignAction::Start { id, confirm_late } => {
                        c::action(&client, id, "start", confirm_late).await
                    }
                    CampaignAction::Pause { id } => c::action(&client, id, "pause", false).await,
                    CampaignAction::Resume { id } => c::action(&client, id, "resume", false).await,
                    CampaignAction::Cancel { id } => c::action(&client, id, "cancel", false).await,
                    CampaignAction::Reconcile { id } => {
                        c::action(&client, id, "reconcile", false).await
                    }
                    CampaignAction::RequeueUnknown { id } => {
                        c::action(&client, id, "requeue-unknown", false).await
                    }
                    CampaignAction::Status { id, follow } => c::status(&client, id, follow).await,
                    CampaignAction::Messages { id, status, csv } => {
                        c::messages(&client, id, status.as_deref(), csv).await
                    }
                    CampaignAction::Rejects { id, out } => {
                        c::rejects(&client, id, out.as_deref()).await
                    }
                }
            })
        }
        Command::Optout { action, api } => run_api("marquee optout", api, |client| async move {
            use marquee::cli::campaign as c;
            match action {
                OptoutAction::Add { numbers, reason } => {
                    c::optout_add(&client, &numbers, None, None, reason.as_deref()).await
                }
                OptoutAction::Import {
                    file,
                    sheet,
                    reason,
                } => {
                    c::optout_add(
                        &client,
                        &[],
                        Some(&file),
                        sheet.as_deref(),
                        reason.as_deref(),
                    )
                    .await
                }
                OptoutAction::Remove { number } => c::optout_remove(&client, &number).await,
                OptoutAction::List => c::optout_list(&client).await,
            }
        }),
        Command::Audit {
            action: AuditAction::Verify { config, data_dir },
        } => match marquee::cli::audit_verify(&config.path, data_dir.as_deref()) {
            Ok((msg, true)) => print_out(&msg),
            Ok((msg, false)) => {
                eprint!("{msg}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("marquee audit verify: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Keygen {
            out,
            force,
            rotate: true,
        } => match marquee::keys::prepare_rotation(&out, force) {
            Ok((public, key)) => {
                println!("next public key: {} (id {})", public.display(), key.id());
                println!("{}", key.to_hex());
                println!(
                    "1. give every agent this file as next_public_key_file (then restart it or send SIGHUP)"
                );
                println!(
                    "2. restart the daemon: it switches to the new key and signs everything current again"
                );
                println!(
                    "3. later, make the new key each agent's public_key_file and drop next_public_key_file"
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("marquee keygen --rotate: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Keygen { out, force, .. } => match marquee::keys::keygen(&out, force) {
            Ok((secret, public, key)) => {
                println!("secret key: {} (mode 0600)", secret.display());
                println!("public key: {} (id {})", public.display(), key.id());
                println!("{}", key.to_hex());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("marquee keygen: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Schema {
            what: SchemaKind::Playlist,
        } => print_out(&marquee::cli::schema()),
        Command::Schema {
            what: SchemaKind::Openapi,
        } => print_out(
            &(serde_json::to_string_pretty(&marquee::http::openapi()).unwrap_or_default() + "\n"),
        ),
    }
}

/// Prints to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn print_out(s: &str) -> ExitCode {
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
fn run_async(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
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
fn finish(res: anyhow::Result<()>) -> ExitCode {
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
fn bad_config(cmd: &str, e: &marquee::config::ConfigError) -> ExitCode {
    eprintln!("{e}");
    eprintln!("{cmd}: configuration has errors; not starting");
    ExitCode::from(EX_CONFIG)
}

/// Runs an API-client subcommand: resolves URL and token, runs `f`, prints its output.
fn run_api<F, Fut>(cmd: &str, api: ApiArgs, f: F) -> ExitCode
where
    F: FnOnce(marquee::cli::ApiClient) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    let result =
        marquee::cli::ApiClient::resolve(api.url, api.token, &api.config, api.ca_file.as_deref())
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
