//! `marquee display`: the display registry (add, remove, list).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::{ApiClient, table};

/// Arguments of `marquee display`.
pub type Args = super::ApiCommand<Action>;

/// The actions of `marquee display`.
#[derive(Subcommand)]
pub enum Action {
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

/// Runs `marquee display ACTION`.
pub fn run(a: Args) -> ExitCode {
    super::run_api("marquee display", a.api, |client| async move {
        match a.action {
            Action::Add { id, channel, out } => display_add(&client, &id, &channel, &out).await,
            Action::Remove { id } => display_remove(&client, &id).await,
            Action::List => display_list(&client).await,
        }
    })
}

/// `marquee display add ID --channel C --out DIR`: registers the display and writes its
/// credentials (`ID.report.key` and `ID.broker.password`, mode 0600) into `out`, for the agent's
/// config. They are shown once: the daemon keeps only the public key and a password hash.
pub async fn display_add(
    api: &ApiClient,
    id: &str,
    channel: &str,
    out: &Path,
) -> anyhow::Result<String> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let c = api
        .call(
            reqwest::Method::POST,
            "/api/v1/registry",
            Some(serde_json::json!({"id": id, "channel": channel})),
        )
        .await?;
    let field = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    let key = out.join(format!("{id}.report.key"));
    let password = out.join(format!("{id}.broker.password"));
    crate::keys::write_atomic(
        &key,
        format!("{}\n", field("report_key_secret")).as_bytes(),
        0o600,
    )?;
    crate::keys::write_atomic(&password, field("broker_password").as_bytes(), 0o600)?;
    Ok(format!(
        "registered {id} on channel {channel}\n\
         wrote {} and {} (mode 0600; copy them to the display, they are not shown again)\n\
         in the agent's config:\n\
         \x20 id = \"{id}\"\n\
         \x20 channel = \"{channel}\"\n\
         \x20 report_key_file = \"{}\"\n\
         \x20 [mqtt]\n\
         \x20 username = \"{id}\"\n\
         \x20 password_file = \"{}\"\n\
         with Mosquitto, regenerate its files: marquee broker mosquitto --out DIR\n",
        key.display(),
        password.display(),
        key.display(),
        password.display(),
    ))
}

/// `marquee display list`: the registry as a table.
pub async fn display_list(api: &ApiClient) -> anyhow::Result<String> {
    let body = api.get("/api/v1/registry").await?;
    let mut rows = vec![[
        "ID".to_owned(),
        "CHANNEL".to_owned(),
        "REPORT KEY".to_owned(),
        "ADDED".to_owned(),
        "BY".to_owned(),
    ]];
    for d in body["displays"].as_array().into_iter().flatten() {
        let f = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
        rows.push([
            f("id"),
            f("channel"),
            f("report_key"),
            f("added_at"),
            f("added_by"),
        ]);
    }
    Ok(table(&rows))
}

/// `marquee display remove ID`.
pub async fn display_remove(api: &ApiClient, id: &str) -> anyhow::Result<String> {
    api.call(
        reqwest::Method::DELETE,
        &format!("/api/v1/registry/{}", super::client::segment(id)),
        None,
    )
    .await?;
    Ok(format!(
        "removed {id}: its reports are dropped from now on; with Mosquitto, regenerate its files to close its account\n"
    ))
}
