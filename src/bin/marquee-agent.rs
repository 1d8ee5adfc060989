//! `marquee-agent`: the display agent alone. The same code as `marquee agent`, in a binary that
//! carries none of the daemon (broker, HTTP API, SMS, phone-number metadata), so a screen's
//! player maps and relocates less memory. Exit codes as `marquee`: 0, 1, 2 usage, 78 bad config.
// Functions stay short enough to read at once (clippy.toml: at most 80 lines; tests aside).
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use marquee::agent::config::{AgentConfig, RenderKind};
use marquee::config::LogFormat;

#[derive(Parser)]
#[command(
    name = "marquee-agent",
    version,
    about = "Marquee display agent: verify, cache and play signed timelines"
)]
struct Args {
    /// Agent configuration file.
    #[arg(short, long, default_value = "config/agent-lobby.toml")]
    config: PathBuf,
    /// Renderer (overrides `render` in the config).
    #[arg(long, value_enum)]
    render: Option<RenderKind>,
    /// Log as JSON lines.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    marquee::install_crypto_provider();
    let args = Args::parse();
    let mut cfg = match AgentConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("marquee-agent: configuration has errors; not starting");
            return ExitCode::from(78);
        }
    };
    if let Some(r) = args.render {
        cfg.render = r;
    }
    let format = if args.json {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    marquee::logging::init(format, "info");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("marquee-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(marquee::agent::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("marquee-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
