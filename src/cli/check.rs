//! `marquee check`: validates the configuration and every playlist, offline.

use std::path::Path;
use std::process::ExitCode;

use super::ConfigArg;
use crate::config::Config;
use crate::scheduler::catalog::{Catalog, Trust};

/// Arguments of `marquee check`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
}

/// Runs `marquee check`: 0 when everything is valid, else 1 after printing each problem.
pub fn run(args: Args) -> ExitCode {
    let problems = check(&args.config.path);
    if problems == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("{problems} problem(s) found");
        ExitCode::FAILURE
    }
}

/// `marquee check`: every problem in the config and the playlists, one per line. Returns the
/// number of problems.
pub fn check(config_path: &Path) -> usize {
    let cfg = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return e.problems.len();
        }
    };
    let ctx = cfg.schedule.validation_context();
    let dir = &cfg.schedule.playlists_dir;
    let catalog = match Catalog::load(dir, &ctx, None, Trust::Nothing) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "{}: schedule.playlists_dir: cannot read {}: {e}",
                cfg.file,
                dir.display()
            );
            return 1;
        }
    };
    let mut errors: Vec<String> = catalog.errors().map(ToString::to_string).collect();
    errors.extend(
        crate::preview::oversize(&cfg, &catalog.playlists(), chrono::Utc::now())
            .iter()
            .map(|o| format!("{}: mqtt.max_payload: {o}", cfg.file)),
    );
    for e in &errors {
        eprintln!("{e}");
    }
    if errors.is_empty() {
        println!(
            "ok: {} and {} playlists in {} are valid",
            cfg.file,
            catalog.files.len(),
            dir.display()
        );
    }
    errors.len()
}
