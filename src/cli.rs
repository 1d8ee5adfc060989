//! The offline subcommands: `check`, `preview`, `keygen`, `schema`. They read files only; the
//! API-client subcommands talk to a running daemon over HTTP.

use std::path::Path;

use anyhow::Context;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::domain::playlist::{json_schema, parse_instant};
use crate::http::api::parse_length;
use crate::preview::{Preview, PreviewRequest};

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
    let catalog = match Catalog::load(dir, &ctx, None) {
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
    let errors: Vec<String> = catalog.errors().map(ToString::to_string).collect();
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
    let catalog = Catalog::load(&sched.playlists_dir, &sched.validation_context(), None)
        .with_context(|| format!("cannot read {}", sched.playlists_dir.display()))?;
    for e in catalog.errors() {
        eprintln!("warning: skipped: {e}");
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
        serde_json::to_string_pretty(&p.to_json())? + "\n"
    } else {
        p.to_text()
    })
}

/// `marquee schema playlist`.
pub fn schema() -> String {
    json_schema()
}
