//! `marquee agent`: runs a display agent (a screen's side) on a single-threaded runtime.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::LogFormat;

/// Arguments of `marquee agent`.
#[derive(clap::Args)]
pub struct Args {
    /// Agent configuration file.
    #[arg(short, long, default_value = "config/agent-lobby.toml")]
    config: PathBuf,
    /// Renderer (overrides `render` in the config).
    #[arg(long, value_enum)]
    render: Option<crate::agent::config::RenderKind>,
}

/// Runs the agent until it stops; exit 78 on a bad configuration.
pub fn run(a: Args, log_format: Option<LogFormat>) -> ExitCode {
    let mut cfg = match crate::agent::config::AgentConfig::load(&a.config) {
        Ok(c) => c,
        Err(e) => return super::bad_config("marquee agent", &e),
    };
    if let Some(r) = a.render {
        cfg.render = r;
    }
    crate::logging::init(log_format.unwrap_or(LogFormat::Text), "info");
    // One screen needs no thread pool: a single-threaded runtime keeps the agent small.
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => super::finish(rt.block_on(crate::agent::run(cfg))),
        Err(e) => {
            eprintln!("marquee: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
