//! `marquee playlist`: push a file through the API, pull the live version, diff a file offline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::ApiClient;
use crate::config::Config;
use crate::scheduler::catalog::{Catalog, Trust};

/// Arguments of `marquee playlist`.
pub type Args = super::ApiCommand<Action>;

/// The actions of `marquee playlist`.
#[derive(Subcommand)]
pub enum Action {
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

/// Runs `marquee playlist ACTION`.
pub fn run(a: Args) -> ExitCode {
    match a.action {
        Action::Diff { file } => match playlist_diff(&a.api.config, &file) {
            Ok(out) => super::print_out(&out),
            Err(e) => {
                eprintln!("marquee playlist diff: {e:#}");
                ExitCode::FAILURE
            }
        },
        Action::Push { file } => {
            super::run_api("marquee playlist push", a.api, |client| async move {
                playlist_push(&client, &file).await
            })
        }
        Action::Pull { id } => {
            super::run_api("marquee playlist pull", a.api, |client| async move {
                playlist_pull(&client, &id).await
            })
        }
    }
}

fn playlist_id(file: &Path) -> anyhow::Result<String> {
    file.file_stem()
        .and_then(|s| s.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{}: the file name is the playlist id", file.display()))
}

/// `marquee playlist push FILE`: uploads it (validated like a file on disk); prints the impact.
pub async fn playlist_push(api: &ApiClient, file: &Path) -> anyhow::Result<String> {
    let id = playlist_id(file)?;
    // Sent as saved: the daemon names an encoding problem and where it is.
    let body = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let resp = api
        .http()?
        .put(format!(
            "{}/api/v1/playlists/{}",
            api.url,
            super::client::segment(&id)
        ))
        .bearer_auth(&api.token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach the daemon at {}", api.url))?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    if status == reqwest::StatusCode::BAD_REQUEST && v["errors"].is_array() {
        let lines: Vec<String> = v["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "{}:{}:{}: {}",
                    file.display(),
                    e["line"],
                    e["column"],
                    e["message"].as_str().unwrap_or("")
                )
            })
            .collect();
        anyhow::bail!("rejected, nothing changed:\n{}", lines.join("\n"));
    }
    if !status.is_success() {
        anyhow::bail!(
            "{status}: {}",
            v["error"]["message"].as_str().unwrap_or("request failed")
        );
    }
    let impact: Vec<crate::preview::Impact> =
        serde_json::from_value(v["impact"].clone()).context("the daemon's change impact")?;
    Ok(format!(
        "pushed {id} → {}\n{}",
        v["file"].as_str().unwrap_or("?"),
        crate::preview::impact_text(&impact, chrono::Duration::hours(48))
    ))
}

/// `marquee playlist pull ID`: the live version as written.
pub async fn playlist_pull(api: &ApiClient, id: &str) -> anyhow::Result<String> {
    let v = api
        .get(&format!("/api/v1/playlists/{}", super::client::segment(id)))
        .await?;
    let src = v["source"].as_str().context("the daemon sent no source")?;
    Ok(if src.ends_with('\n') {
        src.to_owned()
    } else {
        format!("{src}\n")
    })
}

/// `marquee playlist diff FILE`: what replacing the live playlist with FILE would change, from
/// the files (no daemon needed).
pub fn playlist_diff(config: &Path, file: &Path) -> anyhow::Result<String> {
    let cfg = Config::load(config)?;
    let sched = &cfg.schedule;
    let ctx = sched.validation_context();
    let id = playlist_id(file)?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let label = file.display().to_string();
    let src =
        crate::domain::playlist::source_text(&label, &bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let new = crate::domain::Playlist::parse(&label, Some(&id), src, &ctx).map_err(|errors| {
        anyhow::anyhow!(
            "{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let catalog = Catalog::load(&sched.playlists_dir, &ctx, None, Trust::Nothing)
        .with_context(|| format!("cannot read {}", sched.playlists_dir.display()))?;
    let impact = crate::preview::change_impact(
        sched,
        &catalog.playlists(),
        &id,
        Some(new),
        chrono::Utc::now(),
    );
    Ok(crate::preview::impact_text(&impact, sched.horizon))
}
