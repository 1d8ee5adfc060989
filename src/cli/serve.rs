//! `marquee serve`: runs the daemon with the configuration given (embedded defaults for what it
//! does not say).

use std::path::PathBuf;
use std::process::ExitCode;

use super::ConfigArg;
use crate::config::{Config, LogFormat};

/// Arguments of `marquee serve`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
    /// Data directory (overrides server.data_dir).
    #[arg(long, env = "MARQUEE_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// Runs the daemon until it stops; exit 78 on a bad configuration.
pub fn run(a: Args, log_format: Option<LogFormat>) -> ExitCode {
    let mut cfg = match Config::load(&a.config.path) {
        Ok(c) => c,
        Err(e) => return super::bad_config("marquee", &e),
    };
    if let Some(d) = a.data_dir {
        cfg.data_dir = d;
    }
    crate::logging::init(log_format.unwrap_or(cfg.log_format), &cfg.log_filter);
    super::run_async(crate::daemon::serve(cfg))
}
