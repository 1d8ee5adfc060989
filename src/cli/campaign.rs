//! `marquee campaign …` and `marquee optout …`: the SMS lifecycle against the API.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use std::process::ExitCode;

use clap::Subcommand;

use super::{ApiClient, table};

/// Arguments of `marquee campaign`.
pub type Args = super::ApiCommand<Action>;

/// The actions of `marquee campaign`.
#[derive(Subcommand)]
pub enum Action {
    /// Import recipients and create a campaign; prints its id, cost and every rejected row.
    Create(Box<CreateArgs>),
    /// Every campaign with its counts.
    List,
    /// One campaign as JSON.
    Show {
        /// Campaign id.
        id: i64,
    },
    /// Start a draft or scheduled campaign now.
    Start {
        /// Campaign id.
        id: i64,
        /// Needed when the scheduled start was missed (the daemon was down).
        #[arg(long = "confirm-late")]
        confirm_late: bool,
    },
    /// Stop sending (messages in flight finish).
    Pause {
        /// Campaign id.
        id: i64,
    },
    /// Continue a paused campaign.
    Resume {
        /// Campaign id.
        id: i64,
    },
    /// Cancel every message not yet sent.
    Cancel {
        /// Campaign id.
        id: i64,
    },
    /// Ask the providers about the messages whose submit answer was lost: those they have
    /// become sent (or delivered, failed) and are never resent.
    Reconcile {
        /// Campaign id.
        id: i64,
    },
    /// Send again the messages whose submit answer was lost (they may arrive twice).
    RequeueUnknown {
        /// Campaign id.
        id: i64,
    },
    /// Progress; a live bar in a terminal until the campaign ends.
    Status {
        /// Campaign id.
        id: i64,
        /// Follow even when not in a terminal.
        #[arg(long)]
        follow: bool,
    },
    /// The messages of a campaign.
    Messages {
        /// Campaign id.
        id: i64,
        /// Only this state (queued, sent, delivered, failed, unknown, …).
        #[arg(long)]
        status: Option<String>,
        /// CSV instead of a table.
        #[arg(long)]
        csv: bool,
    },
    /// The rows the import rejected, with the reason for each.
    Rejects {
        /// Campaign id.
        id: i64,
        /// Write them to this CSV file (the list's columns plus reason and row), to fix and
        /// upload again.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Runs `marquee campaign ACTION`.
pub fn run(a: Args) -> ExitCode {
    super::run_api("marquee campaign", a.api, |client| async move {
        match a.action {
            Action::Create(args) => create(&client, *args).await,
            Action::List => list(&client).await,
            Action::Show { id } => client
                .get(&format!("/api/v1/campaigns/{id}"))
                .await
                .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"),
            Action::Start { id, confirm_late } => action(&client, id, "start", confirm_late).await,
            Action::Pause { id } => action(&client, id, "pause", false).await,
            Action::Resume { id } => action(&client, id, "resume", false).await,
            Action::Cancel { id } => action(&client, id, "cancel", false).await,
            Action::Reconcile { id } => action(&client, id, "reconcile", false).await,
            Action::RequeueUnknown { id } => action(&client, id, "requeue-unknown", false).await,
            Action::Status { id, follow } => status(&client, id, follow).await,
            Action::Messages { id, status, csv } => {
                messages(&client, id, status.as_deref(), csv).await
            }
            Action::Rejects { id, out } => rejects(&client, id, out.as_deref()).await,
        }
    })
}

/// `marquee campaign create`.
#[derive(Debug, Default, clap::Args)]
pub struct CreateArgs {
    /// Name.
    #[arg(long)]
    pub name: String,
    /// Text (template: {{column}} from the CSV), default language.
    #[arg(
        long,
        required_unless_present = "template",
        conflicts_with = "template"
    )]
    pub text: Option<String>,
    /// An approved template ([[sms.templates]] name) instead of --text: its {{variables}}
    /// come from the list's columns; only gateways that have it send it.
    #[arg(long)]
    pub template: Option<String>,
    /// English text, for recipients whose lang column is "en".
    #[arg(long = "text-en")]
    pub text_en: Option<String>,
    /// Sender id (default: sms.sender).
    #[arg(long)]
    pub sender: Option<String>,
    /// A list with a number column (and optional lang and variable columns): CSV or TXT in
    /// UTF-8, UTF-16 or GBK/GB18030, any of , ; tab | as delimiter, or an XLSX workbook (.xls: save it as .xlsx).
    #[arg(long)]
    pub recipients: Option<std::path::PathBuf>,
    /// The sheet of a workbook to read (default: the first).
    #[arg(long)]
    pub sheet: Option<String>,
    /// One recipient (repeatable), instead of --recipients.
    #[arg(long)]
    pub to: Vec<String>,
    /// Gateway (repeatable, failover order; default: all configured).
    #[arg(long = "gateway")]
    pub gateways: Vec<String>,
    /// "now" or a time (RFC 3339); default: a draft, started with `campaign start`.
    #[arg(long)]
    pub start: Option<String>,
    /// Local sending window, e.g. 08:00-21:00.
    #[arg(long = "send-window")]
    pub send_window: Option<String>,
    /// Messages per number in 24 hours at most.
    #[arg(long = "daily-cap")]
    pub daily_cap: Option<u32>,
    /// Send again on a cron schedule, e.g. "0 9 * * MON-FRI" (sms.timezone); not with --start.
    #[arg(long)]
    pub repeat: Option<String>,
}

fn rejects_text(rejects: &Value, total: Option<u64>, campaign: Option<i64>) -> String {
    let list = rejects.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return String::new();
    }
    let total = total.map_or(list.len(), |t| t as usize);
    let mut out = format!("{total} row(s) rejected:\n");
    for r in list.iter().take(50) {
        out.push_str(&format!(
            "  row {}: {:?}: {}\n",
            r["row"],
            r["value"].as_str().unwrap_or(""),
            r["reason"].as_str().unwrap_or("")
        ));
    }
    if total > 50 {
        out.push_str(&format!("  … and {} more\n", total - 50));
    }
    if let Some(id) = campaign {
        out.push_str(&format!(
            "every rejected row, to fix and upload again: marquee campaign rejects {id} --out rejects-{id}.csv\n"
        ));
    }
    out
}

/// `marquee campaign rejects ID [--out FILE]`: the rows the import rejected; with `--out`, a CSV
/// (UTF-8 with BOM, the list's own columns plus reason and row) to fix and upload again.
pub async fn rejects(api: &ApiClient, id: i64, out: Option<&Path>) -> anyhow::Result<String> {
    let path = format!("/api/v1/campaigns/{id}/rejects");
    if let Some(f) = out {
        let csv = api.get_text(&path, "text/csv").await?;
        std::fs::write(f, csv).with_context(|| format!("cannot write {}", f.display()))?;
        return Ok(format!("wrote {}\n", f.display()));
    }
    let v = api.get(&path).await?;
    let text = rejects_text(&v["rejects"], None, None);
    Ok(if text.is_empty() {
        "no row was rejected\n".into()
    } else {
        text
    })
}

/// `marquee campaign create`: prints the id, the cost estimate and every rejected row.
pub async fn create(api: &ApiClient, a: CreateArgs) -> anyhow::Result<String> {
    let mut body = json!({"name": a.name});
    match (a.text, a.template) {
        (_, Some(t)) => body["template"] = json!(t),
        (Some(t), None) => body["text"] = json!(t),
        (None, None) => anyhow::bail!("give --text or --template"),
    }
    if let Some(en) = a.text_en {
        body["texts"] = json!({"en": en});
    }
    if let Some(s) = a.sender {
        body["sender"] = json!(s);
    }
    match (&a.recipients, a.to.is_empty()) {
        (Some(file), true) => {
            let up = api.upload(file, a.sheet.as_deref()).await?;
            body["recipients_upload"] = up["upload"].clone();
            if let Some(s) = &a.sheet {
                body["sheet"] = json!(s);
            }
        }
        (None, false) => {
            body["recipients"] = json!(
                a.to.iter()
                    .map(|n| json!({"number": n}))
                    .collect::<Vec<_>>()
            );
        }
        _ => anyhow::bail!(
            "give --recipients FILE (.csv, .txt, .xlsx) or --to NUMBER (repeatable), not both"
        ),
    }
    if !a.gateways.is_empty() {
        body["gateways"] = json!(a.gateways);
    }
    if let Some(s) = a.start {
        body["start"] = json!(s);
    }
    if let Some(w) = a.send_window {
        let (from, until) = w
            .split_once('-')
            .context("--send-window is FROM-UNTIL, e.g. 08:00-21:00")?;
        body["send_window"] = json!({"from": from.trim(), "until": until.trim()});
    }
    if let Some(c) = a.daily_cap {
        body["daily_cap"] = json!(c);
    }
    if let Some(r) = a.repeat {
        body["repeat"] = json!(r);
    }
    let v = api
        .call(reqwest::Method::POST, "/api/v1/campaigns", Some(body))
        .await?;
    let e = &v["estimate"];
    Ok(format!(
        "campaign {} ({})\n{} recipients, {} messages, {} segments ({} GSM-7, {} UCS-2), {} billed by a CN carrier\nestimated send time: {} s\n{}",
        v["id"],
        v["status"].as_str().unwrap_or("?"),
        e["recipients"],
        e["messages"],
        e["segments"],
        e["gsm7"],
        e["ucs2"],
        e["carrier_billed"],
        e["duration_seconds"],
        rejects_text(
            &v["rejects"],
            v["rejected"].as_u64(),
            Some(v["id"].as_i64().unwrap_or(0))
        )
    ))
}

fn count(c: &Value, k: &str) -> i64 {
    c["counts"][k].as_i64().unwrap_or(0)
}

/// `marquee campaign list`.
pub async fn list(api: &ApiClient) -> anyhow::Result<String> {
    let v = api.get("/api/v1/campaigns").await?;
    let mut rows = vec![
        [
            "ID",
            "NAME",
            "STATUS",
            "TOTAL",
            "QUEUED",
            "SENT",
            "DELIVERED",
            "FAILED",
            "UNKNOWN",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for c in v["campaigns"].as_array().into_iter().flatten() {
        rows.push(vec![
            c["id"].to_string(),
            c["name"].as_str().unwrap_or("").to_owned(),
            c["status"].as_str().unwrap_or("").to_owned(),
            c["progress"]["total"].to_string(),
            count(c, "queued").to_string(),
            count(c, "sent").to_string(),
            count(c, "delivered").to_string(),
            (count(c, "failed") + count(c, "rejected") + count(c, "expired")).to_string(),
            count(c, "unknown").to_string(),
        ]);
    }
    Ok(table(&rows))
}

fn status_line(c: &Value) -> String {
    format!(
        "campaign {} ({}): {} total, {} queued, {} submitting, {} sent, {} delivered, {} failed, {} rejected, {} expired, {} unknown, {} cancelled",
        c["id"],
        c["status"].as_str().unwrap_or("?"),
        c["progress"]["total"],
        count(c, "queued"),
        count(c, "submitting"),
        count(c, "sent"),
        count(c, "delivered"),
        count(c, "failed"),
        count(c, "rejected"),
        count(c, "expired"),
        count(c, "unknown"),
        count(c, "cancelled"),
    )
}

/// `marquee campaign status ID`: in a terminal, a live progress bar (rates per second, ETA)
/// until the campaign ends; otherwise one line.
pub async fn status(api: &ApiClient, id: i64, follow: bool) -> anyhow::Result<String> {
    let path = format!("/api/v1/campaigns/{id}");
    let c = api.get(&path).await?;
    if !(follow || std::io::stdout().is_terminal()) {
        return Ok(status_line(&c) + "\n");
    }
    let total = c["progress"]["total"].as_u64().unwrap_or(0);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} done · {msg} · ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut last = (std::time::Instant::now(), c.clone());
    let mut c = c;
    loop {
        bar.set_position(c["progress"]["done"].as_u64().unwrap_or(0));
        let dt = last.0.elapsed().as_secs_f64().max(0.001);
        let rate = |k: &str| (count(&c, k) - count(&last.1, k)).max(0) as f64 / dt;
        bar.set_message(format!(
            "{} · sent {} ({:.0}/s) · delivered {} ({:.0}/s) · failed {} ({:.0}/s) · unknown {}",
            c["status"].as_str().unwrap_or("?"),
            count(&c, "sent"),
            rate("sent"),
            count(&c, "delivered"),
            rate("delivered"),
            count(&c, "failed") + count(&c, "rejected"),
            rate("failed"),
            count(&c, "unknown"),
        ));
        use crate::domain::campaign::CampaignStatus as S;
        let status = S::parse(c["status"].as_str().unwrap_or(""));
        if matches!(status, Some(S::Done | S::Cancelled | S::Draft | S::Missed))
            || (status == Some(S::Paused) && count(&c, "submitting") == 0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let next = api.get(&path).await?;
        last = (std::time::Instant::now(), std::mem::replace(&mut c, next));
    }
    bar.finish();
    Ok(status_line(&c) + "\n")
}

/// `marquee campaign start|pause|resume|cancel|requeue-unknown ID`.
pub async fn action(
    api: &ApiClient,
    id: i64,
    action: &str,
    confirm_late: bool,
) -> anyhow::Result<String> {
    let body = confirm_late.then(|| json!({"confirm_late": true}));
    let v = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/campaigns/{id}/{action}"),
            body,
        )
        .await?;
    if let Some(r) = v.get("reconciled") {
        let mut out = format!(
            "campaign {id}: {} unknown message(s) looked up, {} found at the provider, {} still unknown\n",
            r["checked"], r["resolved"], v["unknown"]
        );
        for e in r["errors"].as_array().into_iter().flatten() {
            out.push_str(&format!("  {}\n", e.as_str().unwrap_or("")));
        }
        return Ok(out);
    }
    if let Some(n) = v["requeued"].as_i64() {
        return Ok(format!("campaign {id}: {n} unknown message(s) requeued\n"));
    }
    Ok(status_line(&v) + "\n")
}

/// `marquee campaign messages ID [--status S] [--csv]`.
pub async fn messages(
    api: &ApiClient,
    id: i64,
    status: Option<&str>,
    csv: bool,
) -> anyhow::Result<String> {
    let mut path = format!("/api/v1/campaigns/{id}/messages?limit=1000000");
    if let Some(s) = status {
        path.push_str(&format!("&status={s}"));
    }
    if csv {
        return api.get_text(&path, "text/csv").await;
    }
    let v = api.get(&path).await?;
    let mut rows = vec![
        [
            "ID",
            "ROW",
            "RECIPIENT",
            "STATE",
            "GATEWAY",
            "TRIES",
            "NOT BEFORE",
            "REASON",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for m in v["messages"].as_array().into_iter().flatten() {
        let s = |k: &str| m[k].as_str().unwrap_or("-").to_owned();
        rows.push(vec![
            m["id"].to_string(),
            m["row"].to_string(),
            s("recipient"),
            s("state"),
            s("gateway"),
            m["attempts"].to_string(),
            // When a held message may go (daily cap, sending window, a retry's backoff).
            s("not_before"),
            s("reason"),
        ]);
    }
    Ok(table(&rows))
}

/// `marquee optout add|import`: numbers, or a list file (CSV, TXT, XLSX).
pub async fn optout_add(
    api: &ApiClient,
    numbers: &[String],
    file: Option<&Path>,
    sheet: Option<&str>,
    reason: Option<&str>,
) -> anyhow::Result<String> {
    let mut body = json!({"numbers": numbers});
    if let Some(f) = file {
        let up = api.upload(f, sheet).await?;
        body["upload"] = up["upload"].clone();
        if let Some(s) = sheet {
            body["sheet"] = json!(s);
        }
    }
    if let Some(r) = reason {
        body["reason"] = json!(r);
    }
    let v = api
        .call(reqwest::Method::POST, "/api/v1/optouts", Some(body))
        .await?;
    Ok(format!(
        "{} added, {} already on the list\n{}",
        v["added"],
        v["already"],
        rejects_text(&v["rejects"], None, None)
    ))
}

/// `marquee optout remove NUMBER`.
pub async fn optout_remove(api: &ApiClient, number: &str) -> anyhow::Result<String> {
    let enc: String = url::form_urlencoded::byte_serialize(number.as_bytes()).collect();
    let v = api
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/optouts/{enc}"),
            None,
        )
        .await?;
    Ok(format!("{} removed\n", v["removed"].as_str().unwrap_or("")))
}

/// `marquee optout list`.
pub async fn optout_list(api: &ApiClient) -> anyhow::Result<String> {
    let v = api.get("/api/v1/optouts").await?;
    let mut rows = vec![["NUMBER", "REASON", "BY", "AT"].map(String::from).to_vec()];
    for o in v["optouts"].as_array().into_iter().flatten() {
        let s = |k: &str| o[k].as_str().unwrap_or("").to_owned();
        rows.push(vec![s("number"), s("reason"), s("added_by"), s("added_at")]);
    }
    Ok(table(&rows))
}
