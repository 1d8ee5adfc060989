//! `[sms]` and `[[sms.gateways]]`: the raw TOML shape and the validated settings.
//!
//! Three gateway kinds: `kannel` (Kannel's sendsms interface), `http` (a templated request for
//! other carriers) and `dry-run` (writes each would-be message to a JSONL file and reports it
//! delivered, so a newcomer can run a whole campaign without a carrier). Secrets come from
//! `*_env` / `*_file`, never from the TOML.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use chrono_tz::Tz;
use serde::Deserialize;

use crate::config::{ScheduleConfig, duration, secret};
use crate::wire::valid_name;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSms {
    default_region: String,
    timezone: Option<String>,
    callback_url: Option<String>,
    missed_start_margin: String,
    signature: Option<String>,
    sender: Option<String>,
    max_upload_mib: u64,
    gateways: Vec<RawGateway>,
}

impl Default for RawSms {
    fn default() -> Self {
        RawSms {
            default_region: "CN".into(),
            timezone: None,
            callback_url: None,
            missed_start_margin: "10m".into(),
            signature: None,
            sender: None,
            max_upload_mib: 256,
            gateways: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    name: String,
    kind: String,
    url: Option<String>,
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    smsc: Option<String>,
    dlr_mask: Option<u32>,
    method: Option<String>,
    path: Option<PathBuf>,
    body: Option<String>,
    #[serde(default)]
    fields: BTreeMap<String, String>,
    json: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    accept_status: Option<Vec<u16>>,
    id_pointer: Option<String>,
    dlr_status_field: Option<String>,
    #[serde(default)]
    dlr_delivered: Vec<String>,
    #[serde(default)]
    dlr_failed: Vec<String>,
    #[serde(default = "ten")]
    messages_per_second: f64,
    segments_per_second: Option<f64>,
    #[serde(default = "eight")]
    in_flight: usize,
    #[serde(default = "ten_s")]
    timeout: String,
    dlr_secret_env: Option<String>,
    dlr_secret_file: Option<PathBuf>,
    #[serde(default)]
    fixed_line: bool,
}

fn ten() -> f64 {
    10.0
}
fn eight() -> usize {
    8
}
fn ten_s() -> String {
    "10s".into()
}

/// Validated `[sms]`.
#[derive(Debug, Clone)]
pub struct SmsConfig {
    /// Region for numbers written without a country code.
    pub default_region: phonenumber::country::Id,
    /// Zone of quiet hours unless a campaign names its own.
    pub timezone: Tz,
    /// Base URL gateways call back with delivery reports (`…/api/v1/sms/dlr/{gateway}`);
    /// `None`: the daemon's own listening address.
    pub callback_url: Option<String>,
    /// A scheduled start missed by more than this needs an operator's confirmation.
    pub missed_start_margin: chrono::Duration,
    /// Signature the carrier adds (e.g. `【市政府】`), counted in the carrier's cost estimate.
    pub signature: Option<String>,
    /// Sender id of campaigns that name none.
    pub sender: Option<String>,
    /// Largest recipient or opt-out list accepted, in bytes (`max_upload_mib`, default 256 MiB);
    /// a larger upload gets 413 naming the limit.
    pub max_upload: u64,
    /// Gateways in failover order.
    pub gateways: Vec<GatewayConfig>,
}

impl SmsConfig {
    /// The gateway called `name`.
    pub fn gateway(&self, name: &str) -> Option<&GatewayConfig> {
        self.gateways.iter().find(|g| g.name == name)
    }
}

/// One gateway.
#[derive(Clone)]
pub struct GatewayConfig {
    /// Name (in campaign specs and the delivery-report URL).
    pub name: String,
    /// How to talk to it.
    pub kind: GatewayKind,
    /// Messages per second at most.
    pub messages_per_second: f64,
    /// Segments (SMS parts) per second at most.
    pub segments_per_second: f64,
    /// Submits awaiting an answer at most.
    pub in_flight: usize,
    /// A submit without an answer after this is `unknown`.
    pub timeout: Duration,
    /// Shared secret in the delivery-report URL (none for dry-run).
    pub dlr_secret: Option<String>,
    /// Whether this gateway delivers SMS to fixed lines (landlines); when not, campaigns through
    /// it reject fixed-line numbers at import (default false).
    pub fixed_line: bool,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("name", &self.name)
            .field("kind", &self.kind.name())
            .field("messages_per_second", &self.messages_per_second)
            .field("segments_per_second", &self.segments_per_second)
            .field("in_flight", &self.in_flight)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The driver and its settings.
#[derive(Clone)]
pub enum GatewayKind {
    /// Writes each message as a JSON line to `path` and reports it delivered.
    DryRun {
        /// The JSONL file.
        path: PathBuf,
    },
    /// Kannel's `/cgi-bin/sendsms`.
    Kannel {
        /// The sendsms URL.
        url: url::Url,
        /// sendsms-user.
        username: String,
        /// Its password.
        password: String,
        /// Route through this SMSC id.
        smsc: Option<String>,
        /// Which reports to ask for (default 31: all).
        dlr_mask: u32,
        /// POST with `X-Kannel-*` headers instead of GET.
        post: bool,
    },
    /// A templated request.
    Http(HttpTemplate),
}

impl GatewayKind {
    /// `dry-run`, `kannel` or `http`.
    pub fn name(&self) -> &'static str {
        match self {
            GatewayKind::DryRun { .. } => "dry-run",
            GatewayKind::Kannel { .. } => "kannel",
            GatewayKind::Http(_) => "http",
        }
    }
}

/// The body of a templated request.
#[derive(Debug, Clone)]
pub enum HttpBody {
    /// No body (parameters in the URL template).
    None,
    /// `application/x-www-form-urlencoded` from `fields`.
    Form(BTreeMap<String, String>),
    /// A JSON document; placeholders inside its strings are filled in.
    Json(serde_json::Value),
}

/// A carrier's HTTP interface as a template. Placeholders: `{to}` (E.164), `{to_digits}`
/// (without `+`), `{from}`, `{text}`, `{id}` (our message id), `{dlr_url}`, `{username}`,
/// `{password}`.
#[derive(Debug, Clone)]
pub struct HttpTemplate {
    /// GET or POST.
    pub method: reqwest::Method,
    /// URL template (placeholders are URL-encoded when filled in).
    pub url: String,
    /// Body.
    pub body: HttpBody,
    /// Headers (templates).
    pub headers: BTreeMap<String, String>,
    /// `{username}`.
    pub username: Option<String>,
    /// `{password}`.
    pub password: Option<String>,
    /// Statuses meaning accepted (default 200, 201, 202).
    pub accept_status: Vec<u16>,
    /// JSON pointer to the carrier's message id in the answer (e.g. `/sid`).
    pub id_pointer: Option<String>,
    /// Field of a delivery report holding the status (query, form or JSON; default `status`).
    pub dlr_status_field: String,
    /// Values meaning delivered (default `delivered`).
    pub dlr_delivered: Vec<String>,
    /// Values meaning not delivered (default `failed`, `undelivered`).
    pub dlr_failed: Vec<String>,
}

fn gateway(
    i: usize,
    g: RawGateway,
    data_dir_hint: &str,
    problems: &mut Vec<String>,
) -> Option<GatewayConfig> {
    let place = format!("sms.gateways[{i}] ({})", g.name);
    if !valid_name(&g.name) {
        problems.push(format!(
            "{place}.name: must be 1-64 letters, digits, '_', '-' or '.'"
        ));
    }
    let url = |problems: &mut Vec<String>| -> Option<url::Url> {
        match g.url.as_deref().map(url::Url::parse) {
            Some(Ok(u)) if matches!(u.scheme(), "http" | "https") => Some(u),
            Some(_) => {
                problems.push(format!(
                    "{place}.url: {:?} is not an http(s) URL",
                    g.url.as_deref().unwrap_or("")
                ));
                None
            }
            None => {
                problems.push(format!("{place}.url: missing"));
                None
            }
        }
    };
    let password = |problems: &mut Vec<String>| {
        if g.password_env.is_some() || g.password_file.is_some() {
            secret(
                problems,
                &format!("{place}.password"),
                &g.password_env,
                &g.password_file,
            )
        } else {
            None
        }
    };
    let kind = match g.kind.as_str() {
        "dry-run" => GatewayKind::DryRun {
            path: g
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from(data_dir_hint).join("sms-dry-run.jsonl")),
        },
        "kannel" => {
            let url = url(problems)?;
            let Some(username) = g.username.clone() else {
                problems.push(format!("{place}.username: missing (the sendsms-user)"));
                return None;
            };
            let Some(password) = password(problems) else {
                if g.password_env.is_none() && g.password_file.is_none() {
                    problems.push(format!(
                        "{place}.password: missing; give password_env or password_file"
                    ));
                }
                return None;
            };
            let dlr_mask = g.dlr_mask.unwrap_or(31);
            if dlr_mask == 0 || dlr_mask > 63 {
                problems.push(format!("{place}.dlr_mask: between 1 and 63"));
            }
            let post = match g.method.as_deref().unwrap_or("GET") {
                m if m.eq_ignore_ascii_case("get") => false,
                m if m.eq_ignore_ascii_case("post") => true,
                m => {
                    problems.push(format!("{place}.method: {m:?} is not GET or POST"));
                    false
                }
            };
            GatewayKind::Kannel {
                url,
                username,
                password,
                smsc: g.smsc.clone(),
                dlr_mask,
                post,
            }
        }
        "http" => {
            let u = g.url.clone().unwrap_or_default();
            if u.is_empty() {
                problems.push(format!("{place}.url: missing"));
            }
            let method = match g.method.as_deref().unwrap_or("POST") {
                m if m.eq_ignore_ascii_case("get") => reqwest::Method::GET,
                m if m.eq_ignore_ascii_case("post") => reqwest::Method::POST,
                m => {
                    problems.push(format!("{place}.method: {m:?} is not GET or POST"));
                    reqwest::Method::POST
                }
            };
            let body = match g.body.as_deref().unwrap_or("form") {
                "none" => HttpBody::None,
                "form" => HttpBody::Form(g.fields.clone()),
                "json" => match g.json.as_deref().map(serde_json::from_str) {
                    Some(Ok(v)) => HttpBody::Json(v),
                    Some(Err(e)) => {
                        problems.push(format!("{place}.json: not JSON: {e}"));
                        HttpBody::None
                    }
                    None => {
                        problems.push(format!(
                            "{place}.json: body = \"json\" needs the JSON template in json"
                        ));
                        HttpBody::None
                    }
                },
                other => {
                    problems.push(format!(
                        "{place}.body: {other:?} is not \"form\", \"json\" or \"none\""
                    ));
                    HttpBody::None
                }
            };
            if let Some(p) = &g.id_pointer
                && !p.starts_with('/')
            {
                problems.push(format!(
                    "{place}.id_pointer: a JSON pointer starts with / (e.g. \"/sid\")"
                ));
            }
            GatewayKind::Http(HttpTemplate {
                method,
                url: u,
                body,
                headers: g.headers.clone(),
                username: g.username.clone(),
                password: password(problems),
                accept_status: g.accept_status.clone().unwrap_or(vec![200, 201, 202]),
                id_pointer: g.id_pointer.clone(),
                dlr_status_field: g
                    .dlr_status_field
                    .clone()
                    .unwrap_or_else(|| "status".into()),
                dlr_delivered: if g.dlr_delivered.is_empty() {
                    vec!["delivered".into()]
                } else {
                    g.dlr_delivered.clone()
                },
                dlr_failed: if g.dlr_failed.is_empty() {
                    vec!["failed".into(), "undelivered".into()]
                } else {
                    g.dlr_failed.clone()
                },
            })
        }
        other => {
            problems.push(format!(
                "{place}.kind: {other:?} is not \"kannel\", \"http\" or \"dry-run\""
            ));
            return None;
        }
    };
    let dlr_secret = match (&kind, &g.dlr_secret_env, &g.dlr_secret_file) {
        (GatewayKind::DryRun { .. }, None, None) => None,
        _ => {
            let s = secret(
                problems,
                &format!("{place}.dlr_secret"),
                &g.dlr_secret_env,
                &g.dlr_secret_file,
            );
            if s.as_ref().is_some_and(|s| s.len() < 16) {
                problems.push(format!("{place}.dlr_secret: shorter than 16 characters"));
            }
            // It travels inside the callback URL, which Kannel rewrites (`%` escapes).
            if s.as_ref().is_some_and(|s| {
                !s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
            }) {
                problems.push(format!(
                    "{place}.dlr_secret: only letters, digits, '-', '_', '.' and '~' (it is sent inside a URL)"
                ));
            }
            s
        }
    };
    if !(g.messages_per_second > 0.0 && g.messages_per_second <= 100_000.0) {
        problems.push(format!("{place}.messages_per_second: between 0 and 100000"));
    }
    let segments_per_second = g
        .segments_per_second
        .unwrap_or(g.messages_per_second * 10.0);
    if segments_per_second.is_nan() || segments_per_second <= 0.0 {
        problems.push(format!("{place}.segments_per_second: above 0"));
    }
    if !(1..=10_000).contains(&g.in_flight) {
        problems.push(format!("{place}.in_flight: between 1 and 10000"));
    }
    let timeout = duration(problems, &format!("{place}.timeout"), &g.timeout);
    Some(GatewayConfig {
        name: g.name,
        kind,
        messages_per_second: g.messages_per_second,
        segments_per_second,
        in_flight: g.in_flight,
        timeout,
        dlr_secret,
        fixed_line: g.fixed_line,
    })
}

/// Validates `[sms]`; `data_dir` is where a dry-run file goes by default.
pub fn validate(
    raw: RawSms,
    schedule: &ScheduleConfig,
    listen: SocketAddr,
    data_dir: &std::path::Path,
    problems: &mut Vec<String>,
) -> SmsConfig {
    let default_region = crate::domain::phone::region(&raw.default_region).unwrap_or_else(|_| {
        problems.push(format!(
            "sms.default_region: {:?} is not an ISO 3166 region like \"CN\"",
            raw.default_region
        ));
        phonenumber::country::Id::CN
    });
    let timezone = match &raw.timezone {
        None => schedule.timezone,
        Some(z) => Tz::from_str(z).unwrap_or_else(|_| {
            problems.push(format!("sms.timezone: unknown IANA zone {z:?}"));
            schedule.timezone
        }),
    };
    if let Some(u) = &raw.callback_url
        && url::Url::parse(u).is_err()
    {
        problems.push(format!(
            "sms.callback_url: {u:?} is not a URL like http://127.0.0.1:8080"
        ));
    }
    if raw.callback_url.is_none()
        && !listen.ip().is_loopback()
        && listen.ip().is_unspecified()
        && !raw.gateways.is_empty()
    {
        problems.push(
            "sms.callback_url: server.listen is a wildcard address, so gateways cannot be told where to send delivery reports: set callback_url".into(),
        );
    }
    let margin = duration(
        problems,
        "sms.missed_start_margin",
        &raw.missed_start_margin,
    );
    let mut gateways: Vec<GatewayConfig> = Vec::new();
    let hint = data_dir.display().to_string();
    for (i, g) in raw.gateways.into_iter().enumerate() {
        if let Some(g) = gateway(i, g, &hint, problems) {
            if gateways.iter().any(|o| o.name == g.name) {
                problems.push(format!(
                    "sms.gateways[{i}].name: {:?} is used twice",
                    g.name
                ));
            }
            gateways.push(g);
        }
    }
    SmsConfig {
        default_region,
        timezone,
        callback_url: raw.callback_url.map(|u| u.trim_end_matches('/').to_owned()),
        missed_start_margin: chrono::Duration::from_std(margin).unwrap_or_default(),
        signature: raw.signature,
        sender: raw.sender,
        max_upload: raw.max_upload_mib.saturating_mul(1 << 20),
        gateways,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn problems(sms: &str) -> Vec<String> {
        match Config::parse(
            "m.toml",
            &format!("[schedule]\nchannels = [\"lobby\"]\n{sms}"),
        ) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems,
        }
    }

    #[test]
    fn every_gateway_problem_is_named_with_its_place() {
        let p = problems(
            r#"
[sms]
default_region = "XX"
[[sms.gateways]]
name = "k"
kind = "kannel"
url = "ftp://x"
[[sms.gateways]]
name = "h"
kind = "http"
url = "http://x/{to}"
body = "json"
messages_per_second = 0
in_flight = 0
timeout = "soon"
dlr_secret_env = "MARQUEE_TEST_UNSET_VARIABLE"
[[sms.gateways]]
name = "d"
kind = "pigeon"
"#,
        );
        let want = [
            "m.toml: sms.default_region: \"XX\" is not an ISO 3166 region like \"CN\"",
            "m.toml: sms.gateways[0] (k).url: \"ftp://x\" is not an http(s) URL",
            "m.toml: sms.gateways[1] (h).json: body = \"json\" needs the JSON template in json",
            "m.toml: sms.gateways[1] (h).dlr_secret_env: environment variable MARQUEE_TEST_UNSET_VARIABLE is not set or empty",
            "m.toml: sms.gateways[1] (h).messages_per_second: between 0 and 100000",
            "m.toml: sms.gateways[1] (h).in_flight: between 1 and 10000",
            "m.toml: sms.gateways[1] (h).timeout: bad duration \"soon\" (e.g. 48h, 150ms)",
            "m.toml: sms.gateways[2] (d).kind: \"pigeon\" is not \"kannel\", \"http\" or \"dry-run\"",
        ];
        for w in want {
            assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
        }
    }

    #[test]
    fn the_shipped_dry_run_gateway_needs_no_secret_and_names_must_be_unique() {
        assert!(problems("[[sms.gateways]]\nname = \"d\"\nkind = \"dry-run\"\n").is_empty());
        let p = problems(
            "[[sms.gateways]]\nname = \"d\"\nkind = \"dry-run\"\n[[sms.gateways]]\nname = \"d\"\nkind = \"dry-run\"\n",
        );
        assert_eq!(p, ["m.toml: sms.gateways[1].name: \"d\" is used twice"]);
    }
}
