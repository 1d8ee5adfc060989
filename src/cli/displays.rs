//! `marquee displays`: the fleet as a table.

use std::process::ExitCode;

use super::{ApiArgs, ApiClient, table};

/// Arguments of `marquee displays`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    api: ApiArgs,
}

/// Runs `marquee displays`.
pub fn run(a: Args) -> ExitCode {
    super::run_api("marquee displays", a.api, |client| async move {
        displays(&client).await
    })
}

/// `marquee displays`: the fleet as a table.
pub async fn displays(api: &ApiClient) -> anyhow::Result<String> {
    let body = api.get("/api/v1/displays").await?;
    let mut rows = vec![[
        "DISPLAY".to_string(),
        "CHANNEL".into(),
        "STATE".into(),
        "TIMELINE (applied/current)".into(),
        "LAST ALERT ACK".into(),
    ]];
    for d in body["displays"].as_array().into_iter().flatten() {
        let s = |k: &str| d[k].as_str().unwrap_or("-").to_owned();
        let state = format!(
            "{} since {}{}",
            match d["state"].as_str() {
                Some("online") => "online",
                Some("stale") => "STALE (silent)",
                Some("unknown") => "UNKNOWN (not heard since restart)",
                _ => "OFFLINE",
            },
            s("since"),
            if d["clock_skew"].as_bool() == Some(true) {
                format!(
                    ", CLOCK OFF by {} s",
                    d["clock_skew_ms"].as_i64().unwrap_or(0) / 1000
                )
            } else {
                String::new()
            }
        ) + if d["conflict"].as_bool() == Some(true) {
            ", CONFLICT (two agents use this id)"
        } else {
            ""
        };
        let applied = d["timeline_version"]
            .as_u64()
            .map_or("-".into(), |v| format!("v{v}"));
        let current = d["expected_timeline"]["version"]
            .as_u64()
            .map_or("-".into(), |v| format!("v{v}"));
        let mark = if d["up_to_date"].as_bool() == Some(true) {
            ""
        } else {
            "  (behind)"
        };
        let ack = match d["last_alert_ack"].as_str() {
            Some(a) => format!(
                "{a} ({} ms)",
                d["last_alert_latency_ms"].as_i64().unwrap_or(0)
            ),
            None => "-".into(),
        };
        rows.push([
            s("id"),
            s("channel"),
            state,
            format!("{applied}/{current}{mark}"),
            ack,
        ]);
    }
    Ok(table(&rows))
}
