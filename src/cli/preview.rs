//! `marquee preview`: what a channel or display shows over a stretch of time, from the files.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::ConfigArg;
use crate::config::Config;
use crate::domain::playlist::parse_instant;
use crate::preview::{Preview, PreviewRequest, parse_length};
use crate::scheduler::catalog::{Catalog, Trust};

/// Arguments of `marquee preview`.
#[derive(clap::Args)]
pub struct Args {
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
}

/// Runs `marquee preview`.
pub fn run(a: Args) -> ExitCode {
    match preview(
        &a.config.path,
        a.channel.as_deref(),
        a.display.as_deref(),
        &a.at,
        &a.length,
        a.json,
    ) {
        Ok(out) => super::print_out(&out),
        Err(e) => {
            eprintln!("marquee preview: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `marquee preview`.
pub fn preview(
    config_path: &Path,
    channel: Option<&str>,
    display: Option<&str>,
    at: &str,
    length: &str,
    json: bool,
) -> anyhow::Result<String> {
    let cfg = Config::load(config_path)?;
    let sched = &cfg.schedule;
    let channel = match (display, channel) {
        (Some(d), _) => sched.displays.get(d).cloned().with_context(|| {
            format!("unknown display {d:?}: declare it under [[schedule.displays]]")
        })?,
        (None, Some(c)) if sched.channels.iter().any(|x| x == c) => c.to_owned(),
        (None, Some(c)) => anyhow::bail!(
            "unknown channel {c:?} (configured: {})",
            sched.channels.join(", ")
        ),
        (None, None) => anyhow::bail!("give --channel or --display"),
    };
    let at = if at == "now" {
        chrono::Utc::now()
    } else {
        parse_instant(at, sched.timezone)
            .with_context(|| format!("--at {at:?}: use RFC 3339, e.g. 2021-05-15T09:00:00+08:00"))?
    };
    let length = parse_length(length).map_err(|m| anyhow::anyhow!("--for: {m}"))?;
    let catalog = Catalog::load(
        &sched.playlists_dir,
        &sched.validation_context(),
        None,
        Trust::Nothing,
    )
    .with_context(|| format!("cannot read {}", sched.playlists_dir.display()))?;
    for e in catalog.errors() {
        eprintln!("warning: skipped: {e}");
    }
    let too_big = crate::preview::oversize_of(
        &cfg,
        &catalog.playlists(),
        &channel,
        display,
        chrono::Utc::now(),
    );
    if let Some(o) = &too_big {
        eprintln!("warning: {o}");
    }
    let p = Preview::compute(
        &catalog.playlists(),
        PreviewRequest {
            channel,
            display: display.map(str::to_owned),
            at,
            length,
        },
        sched.timezone,
    );
    Ok(if json {
        serde_json::to_string_pretty(&p.answer(too_big))? + "\n"
    } else {
        p.to_text()
    })
}
