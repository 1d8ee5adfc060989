//! `marquee alert`: raise, clear, show (with acknowledgements), list.

use std::process::ExitCode;

use clap::Subcommand;

use super::ApiClient;

/// Arguments of `marquee alert`.
pub type Args = super::ApiCommand<Action>;

/// The actions of `marquee alert`.
#[derive(Subcommand)]
pub enum Action {
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

/// Runs `marquee alert ACTION`.
pub fn run(a: Args) -> ExitCode {
    super::run_api("marquee alert", a.api, |client| async move {
        let pretty =
            |v: serde_json::Value| serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
        match a.action {
            Action::Raise {
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
                alert_raise(&client, &text, &channels, &displays, &severity, &expires_in).await
            }
            Action::Clear { id } => client
                .call(
                    reqwest::Method::DELETE,
                    &format!("/api/v1/alerts/{}", super::client::segment(&id)),
                    None,
                )
                .await
                .map(pretty),
            Action::Show { id } => client
                .get(&format!("/api/v1/alerts/{}", super::client::segment(&id)))
                .await
                .map(pretty),
            Action::List => client.get("/api/v1/alerts").await.map(pretty),
        }
    })
}

/// `marquee alert raise`: returns what to print.
pub async fn alert_raise(
    api: &ApiClient,
    text: &[(String, String)],
    channels: &[String],
    displays: &[String],
    severity: &str,
    expires_in: &str,
) -> anyhow::Result<String> {
    let scope = match (channels.is_empty(), displays.is_empty()) {
        (true, true) => serde_json::json!("all"),
        (false, true) => serde_json::json!({ "channels": channels }),
        (true, false) => serde_json::json!({ "displays": displays }),
        (false, false) => anyhow::bail!("give --channel or --display, not both"),
    };
    let text: std::collections::BTreeMap<&str, &str> =
        text.iter().map(|(l, t)| (l.as_str(), t.as_str())).collect();
    let v = api
        .call(
            reqwest::Method::POST,
            "/api/v1/alerts",
            Some(serde_json::json!({"text": text, "scope": scope, "severity": severity, "expires_in": expires_in})),
        )
        .await?;
    let topics: Vec<&str> = v["published"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["topic"].as_str())
        .collect();
    Ok(format!(
        "{}\nraised on {} until {}\n",
        v["id"].as_str().unwrap_or("?"),
        topics.join(", "),
        v["expires_at"].as_str().unwrap_or("?")
    ))
}
