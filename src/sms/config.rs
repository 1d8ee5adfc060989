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

use crate::config::common::{duration, secret};
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
    templates: Vec<RawTemplate>,
    optout_keywords: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    name: String,
    text: String,
    #[serde(default = "notification")]
    category: String,
    #[serde(default)]
    ids: BTreeMap<String, String>,
    #[serde(default = "twenty")]
    max_param_chars: usize,
}

fn notification() -> String {
    "notification".into()
}
fn twenty() -> usize {
    20
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
            templates: Vec::new(),
            optout_keywords: None,
        }
    }
}

#[derive(Debug, Deserialize, serde::Serialize)]
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
    claim_ahead: Option<usize>,
    #[serde(default = "ten_s")]
    timeout: String,
    dlr_secret_env: Option<String>,
    dlr_secret_file: Option<PathBuf>,
    #[serde(default)]
    fixed_line: bool,
    region: Option<String>,
    sdk_app_id: Option<String>,
    sign_name: Option<String>,
    secret_id_env: Option<String>,
    secret_id_file: Option<PathBuf>,
    secret_key_env: Option<String>,
    secret_key_file: Option<PathBuf>,
    access_key_id_env: Option<String>,
    access_key_id_file: Option<PathBuf>,
    access_key_secret_env: Option<String>,
    access_key_secret_file: Option<PathBuf>,
    outcome_pointer: Option<String>,
    #[serde(default)]
    ok_values: Vec<String>,
    results_pointer: Option<String>,
    result_phone_field: Option<String>,
    result_code_field: Option<String>,
    result_id_field: Option<String>,
    #[serde(default)]
    codes: BTreeMap<String, String>,
    batch_item_json: Option<String>,
    signing: Option<String>,
    sign_service: Option<String>,
    dlr_items_pointer: Option<String>,
    dlr_carrier_id_field: Option<String>,
    dlr_id_field: Option<String>,
    dlr_ack_body: Option<String>,
    dlr_ack_content_type: Option<String>,
    ec_name: Option<String>,
    ap_id: Option<String>,
    sign: Option<String>,
    add_serial: Option<String>,
    batch_max: Option<usize>,
}

/// Keys every gateway takes, whatever its kind.
const COMMON_KEYS: &[&str] = &[
    "name",
    "kind",
    "messages_per_second",
    "segments_per_second",
    "in_flight",
    "claim_ahead",
    "timeout",
    "dlr_secret_env",
    "dlr_secret_file",
    "fixed_line",
];

/// The keys of an `http` gateway besides [`COMMON_KEYS`].
const HTTP_KEYS: &[&str] = &[
    "url",
    "username",
    "password_env",
    "password_file",
    "method",
    "body",
    "fields",
    "json",
    "headers",
    "accept_status",
    "id_pointer",
    "dlr_status_field",
    "dlr_delivered",
    "dlr_failed",
    "outcome_pointer",
    "ok_values",
    "results_pointer",
    "result_phone_field",
    "result_code_field",
    "result_id_field",
    "codes",
    "batch_item_json",
    "batch_max",
    "signing",
    "sign_service",
    "secret_id_env",
    "secret_id_file",
    "secret_key_env",
    "secret_key_file",
    "dlr_items_pointer",
    "dlr_carrier_id_field",
    "dlr_id_field",
    "dlr_ack_body",
    "dlr_ack_content_type",
];

/// The keys of each kind besides [`COMMON_KEYS`] (what its validation below reads); `None`
/// for an unknown kind (reported as such).
fn kind_keys(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "dry-run" => &["path"],
        "kannel" => &[
            "url",
            "username",
            "password_env",
            "password_file",
            "smsc",
            "dlr_mask",
            "method",
        ],
        "http" => HTTP_KEYS,
        "tencent" => &[
            "url",
            "region",
            "sdk_app_id",
            "sign_name",
            "secret_id_env",
            "secret_id_file",
            "secret_key_env",
            "secret_key_file",
            "batch_max",
        ],
        "aliyun" => &[
            "url",
            "sign_name",
            "access_key_id_env",
            "access_key_id_file",
            "access_key_secret_env",
            "access_key_secret_file",
            "batch_max",
        ],
        "cmcc-mas" => &[
            "url",
            "ec_name",
            "ap_id",
            "sign",
            "secret_key_env",
            "secret_key_file",
            "add_serial",
            "batch_max",
        ],
        _ => return None,
    })
}

/// The keys a gateway's table sets that its kind does not take: a key left from another kind
/// (a Tencent `sdk_app_id` under a Kannel gateway) is a mistake worth naming, not something to
/// ignore. Each set key is found by serializing the table back: what is absent, empty or
/// `false` was not written (or means nothing).
fn foreign_keys(g: &RawGateway) -> Vec<String> {
    let Some(own) = kind_keys(&g.kind) else {
        return Vec::new();
    };
    let Ok(serde_json::Value::Object(set)) = serde_json::to_value(g) else {
        return Vec::new();
    };
    set.into_iter()
        .filter(|(_, v)| match v {
            serde_json::Value::Null | serde_json::Value::Bool(false) => false,
            serde_json::Value::Array(a) => !a.is_empty(),
            serde_json::Value::Object(o) => !o.is_empty(),
            _ => true,
        })
        .map(|(k, _)| k)
        .filter(|k| !COMMON_KEYS.contains(&k.as_str()) && !own.contains(&k.as_str()))
        .collect()
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
    /// Approved templates (`[[sms.templates]]`), for gateways that send nothing else.
    pub templates: Vec<SmsTemplate>,
    /// Replies (MO) that put their sender on the opt-out list: the whole reply, trimmed,
    /// compared without case (`sms.optout_keywords`).
    pub optout_keywords: Vec<String>,
}

impl SmsConfig {
    /// The gateway called `name`.
    pub fn gateway(&self, name: &str) -> Option<&GatewayConfig> {
        self.gateways.iter().find(|g| g.name == name)
    }

    /// The template called `name`.
    pub fn template(&self, name: &str) -> Option<&SmsTemplate> {
        self.templates.iter().find(|t| t.name == name)
    }
}

/// The default opt-out keywords: what Chinese carriers and cloud providers print in marketing
/// texts ("回T退订", "拒收请回复R", TD, N) and the international STOP family.
pub const OPTOUT_KEYWORDS: &[&str] = &[
    "T",
    "TD",
    "N",
    "R",
    "退订",
    "拒收",
    "取消",
    "STOP",
    "UNSUBSCRIBE",
    "END",
    "QUIT",
    "CANCEL",
    "STOPALL",
    "OPTOUT",
];

/// What a provider's review classes a template as (CARRIERS.md §1, §7.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// Service or system information to people who have a relationship with the sender.
    Notification,
    /// Promotion: no variables, an unsubscribe instruction in the text, 08:00–22:00 only.
    Marketing,
}

/// An approved template: one local name, the approved text, and its id at each gateway.
#[derive(Debug, Clone)]
pub struct SmsTemplate {
    /// Local name (campaigns' `template`).
    pub name: String,
    /// The approved text with `{{variables}}` (preview, cost estimate, audit).
    pub text: String,
    /// Notification or marketing.
    pub category: Category,
    /// Gateway name → the provider's template id.
    pub ids: BTreeMap<String, String>,
    /// The variables in order of first appearance: the provider's parameters in that order
    /// (Tencent `{1}`…, 云MAS `params`), or named after them (Aliyun `${name}`).
    pub vars: Vec<String>,
    /// Longest value of one variable, in characters (`max_param_chars`, default 20: Huawei's
    /// TEXT limit; Tencent personal accounts allow 12).
    pub max_param_chars: usize,
}

/// Marketing texts must tell how to unsubscribe (Tencent: "拒收请回复R"; Aliyun: TD/T/N).
fn has_unsubscribe_line(text: &str) -> bool {
    let t = text.to_uppercase();
    t.contains("退订") || t.contains("拒收") || t.contains("回复R") || t.contains("回R")
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
    /// Requests claimed beyond the in-flight window, ready to leave the moment a slot frees
    /// (default: what the pace lets out in 4 ms, at most three times the window; see
    /// [`default_claim_ahead`]). Claims are committed before a request leaves, so a claim's
    /// disk sync would otherwise keep freed slots empty; the cost: a crash or a pause may catch
    /// up to `in_flight + claim_ahead` requests claimed and not answered.
    pub claim_ahead: usize,
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
            .field("claim_ahead", &self.claim_ahead)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The driver and its settings.
#[derive(Clone)]
pub enum GatewayKind {
    /// Writes each message as a JSON line to a file and reports it delivered.
    DryRun(DryRunConfig),
    /// Kannel's `/cgi-bin/sendsms`.
    Kannel(KannelConfig),
    /// A templated request.
    Http(Box<HttpTemplate>),
    /// Tencent Cloud SMS (API 3.0, `SendSms` 2021-01-11, TC3-HMAC-SHA256).
    Tencent(TencentConfig),
    /// Aliyun SMS (Dysmsapi 2017-05-25, `SendSms`, ACS3-HMAC-SHA256).
    Aliyun(AliyunConfig),
    /// China Mobile 云MAS HTTP (`tmpsubmit`: Base64 JSON body, MD5 `mac`).
    CmccMas(CmccMasConfig),
}

/// Settings of a `dry-run` gateway.
#[derive(Clone)]
pub struct DryRunConfig {
    /// The JSONL file.
    pub path: PathBuf,
}

/// Settings of a `kannel` gateway (Kannel's `/cgi-bin/sendsms`).
#[derive(Clone)]
pub struct KannelConfig {
    /// The sendsms URL.
    pub url: url::Url,
    /// sendsms-user.
    pub username: String,
    /// Its password.
    pub password: String,
    /// Route through this SMSC id.
    pub smsc: Option<String>,
    /// Which reports to ask for (default 31: all).
    pub dlr_mask: u32,
    /// POST with `X-Kannel-*` headers instead of GET.
    pub post: bool,
}

/// Settings of a `cmcc-mas` gateway (DESIGN §7b; CARRIERS.md §2.1).
#[derive(Clone)]
pub struct CmccMasConfig {
    /// The `tmpsubmit` URL of the office's deployment.
    pub url: url::Url,
    /// `ecName`: the enterprise name as registered.
    pub ec_name: String,
    /// `apId`: the interface user.
    pub ap_id: String,
    /// `secretKey`: only inside the `mac`.
    pub secret_key: String,
    /// `sign`: the signature code the platform issued.
    pub sign: String,
    /// `addSerial`: the extension code (default empty).
    pub add_serial: String,
    /// Numbers per request, 1–5000 (`batch_max`, default 1000).
    pub batch_max: usize,
}

/// Settings of an `aliyun` gateway (DESIGN §7b; CARRIERS.md §2.2).
#[derive(Clone)]
pub struct AliyunConfig {
    /// The API endpoint (`https://dysmsapi.aliyuncs.com/`).
    pub url: url::Url,
    /// `SignName`: the approved signature text.
    pub sign_name: String,
    /// AccessKey id.
    pub access_key_id: String,
    /// AccessKey secret.
    pub access_key_secret: String,
    /// Numbers per request, 1–1000 (`batch_max`, default 1000).
    pub batch_max: usize,
}

/// Settings of a `tencent` gateway (DESIGN §7b; CARRIERS.md §2.3).
#[derive(Clone)]
pub struct TencentConfig {
    /// The API endpoint (`https://sms.tencentcloudapi.com/`).
    pub url: url::Url,
    /// `X-TC-Region` (e.g. `ap-guangzhou`).
    pub region: String,
    /// `SmsSdkAppId`.
    pub sdk_app_id: String,
    /// `SignName`: the approved signature text.
    pub sign_name: String,
    /// SecretId.
    pub secret_id: String,
    /// SecretKey.
    pub secret_key: String,
    /// Numbers per request, 1–200 (`batch_max`, default 200).
    pub batch_max: usize,
}

impl GatewayKind {
    /// `dry-run`, `kannel` or `http`.
    pub fn name(&self) -> &'static str {
        match self {
            GatewayKind::DryRun(_) => "dry-run",
            GatewayKind::Kannel(_) => "kannel",
            GatewayKind::Http(_) => "http",
            GatewayKind::Tencent(_) => "tencent",
            GatewayKind::Aliyun(_) => "aliyun",
            GatewayKind::CmccMas(_) => "cmcc-mas",
        }
    }

    /// Whether it sends only approved templates (never free text).
    pub fn templates_only(&self) -> bool {
        matches!(
            self,
            GatewayKind::Tencent(_) | GatewayKind::Aliyun(_) | GatewayKind::CmccMas(_)
        )
    }

    /// Most numbers one request may carry.
    pub fn batch_max(&self) -> usize {
        match self {
            GatewayKind::Tencent(t) => t.batch_max,
            GatewayKind::Aliyun(a) => a.batch_max,
            GatewayKind::CmccMas(m) => m.batch_max,
            GatewayKind::Http(h) => h.batch_max,
            _ => 1,
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
    /// Outcomes read from the answer's body, per request or per number.
    pub outcome: Option<BodyOutcome>,
    /// Numbers per request (`batch_max`, default 1): above 1, `{to_list}` (comma-separated
    /// E.164) and a JSON string `"{to_json}"` (an array of `batch_item_json` per number,
    /// default the number) carry every number of the request.
    pub batch_max: usize,
    /// The template of one element of `{to_json}` (JSON with `{to}`, `{to_digits}`, `{id}`).
    pub batch_item_json: serde_json::Value,
    /// Reports pushed as arrays without our id in the URL.
    pub dlr_array: Option<ArrayReports>,
    /// A named signing scheme for the request (`signing`).
    pub sign: Option<HttpSign>,
}

/// A request signing scheme the generic kind can use (`signing = "..."`).
#[derive(Clone)]
pub enum HttpSign {
    /// `tc3-hmac-sha256`: Tencent Cloud API 3.0 over the JSON body (`secret_id`, `secret_key`,
    /// `sign_service`: the product, default the host's first label).
    Tc3 {
        /// SecretId.
        secret_id: String,
        /// SecretKey.
        secret_key: String,
        /// The signed service (e.g. `sms`).
        service: String,
    },
}

impl std::fmt::Debug for HttpSign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpSign::Tc3 { service, .. } => write!(f, "tc3-hmac-sha256 ({service})"),
        }
    }
}

/// How a generic gateway's answer body is read (CARRIERS.md §7.2).
#[derive(Debug, Clone)]
pub struct BodyOutcome {
    /// JSON pointer to the request's code (e.g. `/Code`, `/Response/Error/Code`).
    pub outcome_pointer: Option<String>,
    /// Codes meaning accepted (default `OK`, `Ok`, `ok`, `success`, `0`).
    pub ok_values: Vec<String>,
    /// JSON pointer to an array with one result per number.
    pub results_pointer: Option<String>,
    /// In a result: the number, its code, its id (JSON pointers).
    pub result_phone: String,
    /// The code.
    pub result_code: String,
    /// The carrier's id for the message.
    pub result_id: Option<String>,
    /// Code → class; a pattern ending in `*` matches by prefix; first match wins.
    pub codes: Vec<(String, crate::domain::delivery::Submit)>,
}

impl BodyOutcome {
    /// The class of `code`: a configured class, accepted for an OK value, else permanent.
    pub fn class(&self, code: &str) -> crate::domain::delivery::Submit {
        use crate::domain::delivery::Submit;
        for (pattern, class) in &self.codes {
            let hit = match pattern.strip_suffix('*') {
                Some(prefix) => code.starts_with(prefix),
                None => pattern == code,
            };
            if hit {
                return class.clone();
            }
        }
        if self.ok_values.iter().any(|v| v == code) {
            Submit::Accepted
        } else {
            Submit::Permanent
        }
    }

    /// Whether `code` is configured (in `codes` or `ok_values`).
    pub fn knows(&self, code: &str) -> bool {
        self.ok_values.iter().any(|v| v == code)
            || self.codes.iter().any(|(p, _)| match p.strip_suffix('*') {
                Some(prefix) => code.starts_with(prefix),
                None => p == code,
            })
    }
}

/// A generic gateway's pushed report arrays (CARRIERS.md §7.2 item 4).
#[derive(Debug, Clone)]
pub struct ArrayReports {
    /// JSON pointer to the array (`""`: the body is the array).
    pub items_pointer: String,
    /// In an element: the carrier's id for the message (JSON pointer).
    pub carrier_id: Option<String>,
    /// In an element: our message id, when the provider echoes it (JSON pointer).
    pub our_id: Option<String>,
    /// In an element: the status (JSON pointer).
    pub status: String,
    /// The acknowledgement body (default empty) and its content type.
    pub ack_body: String,
    /// Content type of the acknowledgement.
    pub ack_content_type: String,
}

/// How many requests a gateway claims ahead of its window unless told (`claim_ahead`): what
/// its pace (`messages_per_second`) lets out in 4 ms, rounded up, at most three times the
/// window. A claim's commit and its disk sync take 1–2.5 ms on SQLite (a round about 3 ms on
/// PostgreSQL), and the requests of the claim before are still entering the window meanwhile,
/// so a fast gateway needs a reserve. Beyond the window's size, the dispatcher claims ahead once
/// what is claimed beyond one window's worth is free, at most a window's worth
/// (`sms::dispatch`): claims of up to a window (fewer commits than small ones:
/// `marquee-bench sms-store`, BENCHMARKS.md), with up to two windows' worth in reserve while
/// one commits and syncs (session 14: a reserve of one window let the window run dry while a
/// claim and its sync took longer than the window took to drain; two sent 2–14 % more
/// messages a second in four runs out of four, with less CPU a message). A paced gateway
/// gains nothing from more, and each
/// one claimed ahead may be caught by a crash (`unknown`). A window of one stays strict:
/// nothing claimed ahead.
pub fn default_claim_ahead(in_flight: usize, messages_per_second: f64) -> usize {
    if in_flight <= 1 {
        return 0;
    }
    let pace = (messages_per_second * 0.004).ceil();
    if pace >= 3.0 * in_flight as f64 {
        3 * in_flight
    } else {
        (pace as usize).max(1)
    }
}

/// A class name of `codes` as an outcome.
fn class_name(name: &str) -> Option<crate::domain::delivery::Submit> {
    use crate::domain::delivery::Submit;
    Some(match name {
        "accepted" => Submit::Accepted,
        "retry" | "transient" => Submit::Transient,
        "defer" => Submit::Defer,
        "opted_out" => Submit::OptedOut,
        "permanent" => Submit::Permanent,
        "config" => Submit::Config,
        "account" => Submit::Account,
        "lost" => Submit::Lost,
        _ => return None,
    })
}

fn gateway(
    i: usize,
    g: RawGateway,
    data_dir_hint: &str,
    problems: &mut Vec<String>,
) -> Option<GatewayConfig> {
    let place = format!("sms.gateways[{i}] ({})", g.name);
    for key in foreign_keys(&g) {
        problems.push(format!(
            "{place}.{key}: not a key of a {:?} gateway (see config/marquee.toml for each kind's keys)",
            g.kind
        ));
    }
    if !valid_name(&g.name) {
        problems.push(format!(
            "{place}.name: must be 1-64 letters, digits, '_', '-' or '.'"
        ));
    }
    let t = Table { g: &g, place };
    let place = &t.place;
    let kind = match g.kind.as_str() {
        "cmcc-mas" => cmcc_mas_kind(&t, problems)?,
        "aliyun" => aliyun_kind(&t, problems)?,
        "dry-run" => GatewayKind::DryRun(DryRunConfig {
            path: g
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from(data_dir_hint).join("sms-dry-run.jsonl")),
        }),
        "kannel" => kannel_kind(&t, problems)?,
        "http" => http_kind(&t, problems)?,
        "tencent" => tencent_kind(&t, problems)?,
        other => {
            problems.push(format!(
                "{place}.kind: {other:?} is not \"kannel\", \"http\", \"tencent\", \"aliyun\", \"cmcc-mas\" or \"dry-run\""
            ));
            return None;
        }
    };
    let dlr_secret = dlr_secret(&kind, &g, place, problems);
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
    let claim_ahead = g
        .claim_ahead
        .unwrap_or_else(|| default_claim_ahead(g.in_flight, g.messages_per_second));
    if claim_ahead > g.in_flight.max(1).saturating_mul(3) {
        problems.push(format!(
            "{place}.claim_ahead: at most three times in_flight ({})",
            g.in_flight.saturating_mul(3)
        ));
    }
    let timeout = duration(problems, &format!("{place}.timeout"), &g.timeout);
    Some(GatewayConfig {
        name: g.name,
        kind,
        messages_per_second: g.messages_per_second,
        segments_per_second,
        in_flight: g.in_flight,
        claim_ahead,
        timeout,
        dlr_secret,
        fixed_line: g.fixed_line,
    })
}

/// The secret in the gateway's report and reply URLs (none for a dry run): at least 16
/// characters that need no escaping in a URL.
fn dlr_secret(
    kind: &GatewayKind,
    g: &RawGateway,
    place: &str,
    problems: &mut Vec<String>,
) -> Option<String> {
    if matches!(kind, GatewayKind::DryRun(_))
        && g.dlr_secret_env.is_none()
        && g.dlr_secret_file.is_none()
    {
        return None;
    }
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

/// One `[[sms.gateways]]` table being read: its raw keys and its place in messages
/// (`sms.gateways[i] (name)`).
struct Table<'a> {
    g: &'a RawGateway,
    place: String,
}

impl Table<'_> {
    /// `url`: an http(s) URL.
    fn url(&self, problems: &mut Vec<String>) -> Option<url::Url> {
        let place = &self.place;
        match self.g.url.as_deref().map(url::Url::parse) {
            Some(Ok(u)) if matches!(u.scheme(), "http" | "https") => Some(u),
            Some(_) => {
                problems.push(format!(
                    "{place}.url: {:?} is not an http(s) URL",
                    self.g.url.as_deref().unwrap_or("")
                ));
                None
            }
            None => {
                problems.push(format!("{place}.url: missing"));
                None
            }
        }
    }

    /// `password_env` / `password_file`, when either is given.
    fn password(&self, problems: &mut Vec<String>) -> Option<String> {
        let g = self.g;
        if g.password_env.is_some() || g.password_file.is_some() {
            secret(
                problems,
                &format!("{}.password", self.place),
                &g.password_env,
                &g.password_file,
            )
        } else {
            None
        }
    }

    /// A JSON pointer key (`/sid`): refused unless it starts with `/`.
    fn pointer(&self, problems: &mut Vec<String>, key: &str, v: &Option<String>) -> Option<String> {
        if let Some(p) = v
            && !p.is_empty()
            && !p.starts_with('/')
        {
            problems.push(format!(
                "{}.{key}: a JSON pointer starts with / (e.g. \"/sid\")",
                self.place
            ));
        }
        v.clone()
    }

    /// A key that must be given, not blank.
    fn need(&self, problems: &mut Vec<String>, key: &str, v: &Option<String>) -> Option<String> {
        let v = v.clone().filter(|v| !v.trim().is_empty());
        if v.is_none() {
            problems.push(format!("{}.{key}: missing", self.place));
        }
        v
    }

    /// Numbers a request carries: `batch_max`, or the kind's default, within what the
    /// provider takes.
    fn batch(&self, problems: &mut Vec<String>, default: usize, max: usize, why: &str) -> usize {
        let n = self.g.batch_max.unwrap_or(default);
        if !(1..=max).contains(&n) {
            problems.push(format!(
                "{}.batch_max: between 1 and {max}{why}",
                self.place
            ));
        }
        n
    }

    /// A signed cloud API's URL (`default` when not given): requests are signed for the root
    /// path; another one would fail every signature.
    fn api_root(&self, problems: &mut Vec<String>, default: &str) -> Option<url::Url> {
        let u = match self.g.url.as_deref() {
            None => url::Url::parse(default).ok()?,
            Some(_) => self.url(problems)?,
        };
        if u.path() != "/" {
            problems.push(format!(
                "{}.url: the API is at the root path: {}://{}/",
                self.place,
                u.scheme(),
                u.host_str().unwrap_or("")
            ));
        }
        Some(u)
    }
}

/// A `cmcc-mas` gateway's keys (China Mobile 云MAS `tmpsubmit`).
fn cmcc_mas_kind(t: &Table<'_>, problems: &mut Vec<String>) -> Option<GatewayKind> {
    let (g, place) = (t.g, &t.place);
    let url = t.url(problems)?;
    let ec_name = t.need(problems, "ec_name", &g.ec_name);
    let ap_id = t.need(problems, "ap_id", &g.ap_id);
    let sign = t.need(problems, "sign", &g.sign);
    let secret_key = secret(
        problems,
        &format!("{place}.secret_key"),
        &g.secret_key_env,
        &g.secret_key_file,
    );
    let batch_max = t.batch(
        problems,
        1000,
        super::gateway::cmcc_mas::MAX_NUMBERS,
        " (the platform takes at most 5000 numbers)",
    );
    Some(GatewayKind::CmccMas(CmccMasConfig {
        url,
        ec_name: ec_name?,
        ap_id: ap_id?,
        secret_key: secret_key?.trim().to_owned(),
        sign: sign?,
        add_serial: g.add_serial.clone().unwrap_or_default(),
        batch_max,
    }))
}

/// An `aliyun` gateway's keys (Dysmsapi `SendSms`).
fn aliyun_kind(t: &Table<'_>, problems: &mut Vec<String>) -> Option<GatewayKind> {
    let (g, place) = (t.g, &t.place);
    let url = t.api_root(problems, "https://dysmsapi.aliyuncs.com/")?;
    let sign_name = t.need(problems, "sign_name", &g.sign_name);
    let key_id = secret(
        problems,
        &format!("{place}.access_key_id"),
        &g.access_key_id_env,
        &g.access_key_id_file,
    );
    let key_secret = secret(
        problems,
        &format!("{place}.access_key_secret"),
        &g.access_key_secret_env,
        &g.access_key_secret_file,
    );
    let batch_max = t.batch(
        problems,
        super::gateway::aliyun::MAX_NUMBERS,
        super::gateway::aliyun::MAX_NUMBERS,
        " (SendSms takes at most 1000 numbers)",
    );
    Some(GatewayKind::Aliyun(AliyunConfig {
        url,
        sign_name: sign_name?,
        access_key_id: key_id?.trim().to_owned(),
        access_key_secret: key_secret?.trim().to_owned(),
        batch_max,
    }))
}

/// A `kannel` gateway's keys (`/cgi-bin/sendsms`).
fn kannel_kind(t: &Table<'_>, problems: &mut Vec<String>) -> Option<GatewayKind> {
    let (g, place) = (t.g, &t.place);
    let url = t.url(problems)?;
    let Some(username) = g.username.clone() else {
        problems.push(format!("{place}.username: missing (the sendsms-user)"));
        return None;
    };
    let Some(password) = t.password(problems) else {
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
    Some(GatewayKind::Kannel(KannelConfig {
        url,
        username,
        password,
        smsc: g.smsc.clone(),
        dlr_mask,
        post,
    }))
}

/// An `http` gateway's keys: the request template, its answer and its reports.
fn http_kind(t: &Table<'_>, problems: &mut Vec<String>) -> Option<GatewayKind> {
    let (g, place) = (t.g, &t.place);
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
    let body = http_body(t, problems);
    t.pointer(problems, "id_pointer", &g.id_pointer);
    let outcome = http_outcome(t, problems);
    let batch_max = t.batch(problems, 1, 10_000, "");
    let batch_item_json = match g.batch_item_json.as_deref().map(serde_json::from_str) {
        None => serde_json::Value::String("{to}".into()),
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            problems.push(format!("{place}.batch_item_json: not JSON: {e}"));
            serde_json::Value::Null
        }
    };
    let dlr_array = http_dlr_array(t, problems);
    let sign = http_sign(t, problems, (&method, &u, &body));
    if batch_max > 1 {
        http_batch_checks(t, problems, &u, (&dlr_array, &outcome));
    }
    if let Some(a) = &dlr_array
        && a.carrier_id.is_none()
        && a.our_id.is_none()
    {
        problems.push(format!(
            "{place}.dlr_items_pointer: give dlr_carrier_id_field or dlr_id_field, or reports cannot be matched"
        ));
    }
    Some(GatewayKind::Http(Box::new(HttpTemplate {
        method,
        url: u,
        body,
        headers: g.headers.clone(),
        username: g.username.clone(),
        password: t.password(problems),
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
        outcome,
        batch_max,
        batch_item_json,
        dlr_array,
        sign,
    })))
}

/// An `http` gateway's body: `form` (its `fields`), `json` (its `json` template) or `none`.
fn http_body(t: &Table<'_>, problems: &mut Vec<String>) -> HttpBody {
    let (g, place) = (t.g, &t.place);
    match g.body.as_deref().unwrap_or("form") {
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
    }
}

/// An `http` gateway's reading of answer bodies: the request-level code, the per-number
/// results and the classes of the provider's codes; `None` when it reads statuses only.
fn http_outcome(t: &Table<'_>, problems: &mut Vec<String>) -> Option<BodyOutcome> {
    let (g, place) = (t.g, &t.place);
    let mut codes = Vec::new();
    for (code, class) in &g.codes {
        match class_name(class) {
            Some(c) => codes.push((code.clone(), c)),
            None => problems.push(format!(
                "{place}.codes.{code}: {class:?} is not accepted, retry, defer, opted_out, permanent, config, account or lost"
            )),
        }
    }
    // Exact codes before prefixes, longer prefixes first.
    codes.sort_by_key(|(p, _)| (p.ends_with('*'), std::cmp::Reverse(p.len())));
    (g.outcome_pointer.is_some() || g.results_pointer.is_some()).then(|| BodyOutcome {
        outcome_pointer: t.pointer(problems, "outcome_pointer", &g.outcome_pointer),
        ok_values: if g.ok_values.is_empty() {
            ["OK", "Ok", "ok", "success", "0"]
                .map(String::from)
                .to_vec()
        } else {
            g.ok_values.clone()
        },
        results_pointer: t.pointer(problems, "results_pointer", &g.results_pointer),
        result_phone: t
            .pointer(problems, "result_phone_field", &g.result_phone_field)
            .unwrap_or_else(|| "/to".into()),
        result_code: t
            .pointer(problems, "result_code_field", &g.result_code_field)
            .unwrap_or_else(|| "/code".into()),
        result_id: t.pointer(problems, "result_id_field", &g.result_id_field),
        codes,
    })
}

/// An `http` gateway's array delivery reports (`dlr_items_pointer` and its fields).
fn http_dlr_array(t: &Table<'_>, problems: &mut Vec<String>) -> Option<ArrayReports> {
    let g = t.g;
    g.dlr_items_pointer.as_ref().map(|items| ArrayReports {
        items_pointer: t
            .pointer(problems, "dlr_items_pointer", &Some(items.clone()))
            .unwrap_or_default(),
        carrier_id: t.pointer(problems, "dlr_carrier_id_field", &g.dlr_carrier_id_field),
        our_id: t.pointer(problems, "dlr_id_field", &g.dlr_id_field),
        status: t
            .pointer(problems, "dlr_status_field", &g.dlr_status_field)
            .unwrap_or_else(|| "/status".into()),
        ack_body: g.dlr_ack_body.clone().unwrap_or_default(),
        ack_content_type: g
            .dlr_ack_content_type
            .clone()
            .unwrap_or_else(|| "text/plain".into()),
    })
}

/// An `http` gateway's request signing (`signing = "tc3-hmac-sha256"`: a JSON body POSTed to
/// the root path, signed with `secret_id` and `secret_key`).
fn http_sign(
    t: &Table<'_>,
    problems: &mut Vec<String>,
    (method, u, body): (&reqwest::Method, &str, &HttpBody),
) -> Option<HttpSign> {
    let (g, place) = (t.g, &t.place);
    match g.signing.as_deref() {
        None => None,
        Some("tc3-hmac-sha256") => {
            if !matches!(body, HttpBody::Json(_)) {
                problems.push(format!(
                    "{place}.signing: tc3-hmac-sha256 signs a JSON body (body = \"json\")"
                ));
            }
            // What is signed: POST to the root path, no query, its own content type.
            let parsed = url::Url::parse(u).ok();
            if *method != reqwest::Method::POST
                || parsed
                    .as_ref()
                    .is_some_and(|x| x.path() != "/" || x.query().is_some())
            {
                problems.push(format!(
                    "{place}.signing: tc3-hmac-sha256 signs a POST to the root path without a query"
                ));
            }
            if g.headers
                .keys()
                .any(|k| k.eq_ignore_ascii_case("content-type"))
            {
                problems.push(format!(
                    "{place}.headers: Content-Type is set by the signing scheme"
                ));
            }
            let id = secret(
                problems,
                &format!("{place}.secret_id"),
                &g.secret_id_env,
                &g.secret_id_file,
            );
            let key = secret(
                problems,
                &format!("{place}.secret_key"),
                &g.secret_key_env,
                &g.secret_key_file,
            );
            let service = g.sign_service.clone().unwrap_or_else(|| {
                url::Url::parse(u)
                    .ok()
                    .and_then(|x| {
                        x.host_str()
                            .map(|h| h.split('.').next().unwrap_or("").to_owned())
                    })
                    .unwrap_or_default()
            });
            match (id, key) {
                (Some(i), Some(k)) => Some(HttpSign::Tc3 {
                    secret_id: i.trim().to_owned(),
                    secret_key: k.trim().to_owned(),
                    service,
                }),
                _ => None,
            }
        }
        Some(other) => {
            problems.push(format!(
                "{place}.signing: {other:?} is not a signing scheme this kind knows (\"tc3-hmac-sha256\"; Aliyun and 云MAS have their own kinds)"
            ));
            None
        }
    }
}

/// A batch request carries every number: a placeholder of one message would send to the
/// first alone and mark all sent; a batch's reports are matched by each number's id.
fn http_batch_checks(
    t: &Table<'_>,
    problems: &mut Vec<String>,
    u: &str,
    (dlr_array, outcome): (&Option<ArrayReports>, &Option<BodyOutcome>),
) {
    let (g, place) = (t.g, &t.place);
    let mut texts: Vec<String> = vec![u.to_owned()];
    texts.extend(g.headers.values().cloned());
    texts.extend(g.fields.values().cloned());
    texts.extend(g.json.clone());
    let all = texts.join("\n");
    if !all.contains("{to_list}") && !all.contains("{to_json}") {
        problems.push(format!(
            "{place}.batch_max: a batch request needs {{to_list}} or \"{{to_json}}\" for its numbers"
        ));
    }
    for one in ["{to}", "{to_digits}", "{id}", "{dlr_url}"] {
        if all.contains(one) {
            problems.push(format!(
                "{place}.batch_max: {one} is one message's; in a batch it belongs in batch_item_json"
            ));
        }
    }
    if dlr_array.as_ref().is_some_and(|a| a.our_id.is_none())
        && outcome.as_ref().is_none_or(|o| o.result_id.is_none())
    {
        problems.push(format!(
            "{place}.result_id_field: a batch's reports are matched by each number's id: give result_id_field (or dlr_id_field)"
        ));
    }
}

/// A `tencent` gateway's keys (SMS API 3.0 `SendSms`).
fn tencent_kind(t: &Table<'_>, problems: &mut Vec<String>) -> Option<GatewayKind> {
    let (g, place) = (t.g, &t.place);
    let url = t.api_root(problems, "https://sms.tencentcloudapi.com/")?;
    let region = t.need(problems, "region", &g.region);
    let sdk_app_id = t.need(problems, "sdk_app_id", &g.sdk_app_id);
    let sign_name = t.need(problems, "sign_name", &g.sign_name);
    let secret_id = secret(
        problems,
        &format!("{place}.secret_id"),
        &g.secret_id_env,
        &g.secret_id_file,
    );
    let secret_key = secret(
        problems,
        &format!("{place}.secret_key"),
        &g.secret_key_env,
        &g.secret_key_file,
    );
    let batch_max = t.batch(problems, 200, 200, " (SendSms takes at most 200 numbers)");
    Some(GatewayKind::Tencent(TencentConfig {
        url,
        region: region?,
        sdk_app_id: sdk_app_id?,
        sign_name: sign_name?,
        secret_id: secret_id?.trim().to_owned(),
        secret_key: secret_key?.trim().to_owned(),
        batch_max,
    }))
}

/// Validates one `[[sms.templates]]` entry against the gateways.
fn template(
    i: usize,
    t: RawTemplate,
    gateways: &[GatewayConfig],
    problems: &mut Vec<String>,
) -> Option<SmsTemplate> {
    let place = format!("sms.templates[{i}] ({})", t.name);
    if !valid_name(&t.name) {
        problems.push(format!(
            "{place}.name: must be 1-64 letters, digits, '_', '-' or '.'"
        ));
    }
    let vars = match super::campaign::placeholders(&t.text) {
        Ok(v) => {
            let mut seen = Vec::new();
            for n in v {
                if !seen.contains(&n) {
                    seen.push(n);
                }
            }
            seen
        }
        Err(e) => {
            problems.push(format!("{place}.text: {e}"));
            return None;
        }
    };
    if t.text.trim().is_empty() {
        problems.push(format!("{place}.text: empty"));
    }
    // Providers refuse 【】 inside a template: the signature is theirs to add.
    if t.text.contains('【') || t.text.contains('】') {
        problems.push(format!(
            "{place}.text: 【】 are not allowed inside a template (the provider adds the signature)"
        ));
    }
    let category = match t.category.as_str() {
        "notification" => Category::Notification,
        "marketing" => Category::Marketing,
        other => {
            problems.push(format!(
                "{place}.category: {other:?} is not \"notification\" or \"marketing\""
            ));
            Category::Notification
        }
    };
    if category == Category::Marketing {
        if !vars.is_empty() {
            problems.push(format!(
                "{place}.text: a marketing template has no variables (providers refuse them)"
            ));
        }
        if !has_unsubscribe_line(&t.text) {
            problems.push(format!(
                "{place}.text: a marketing template must say how to unsubscribe (e.g. \"拒收请回复R\")"
            ));
        }
    }
    template_ids(&place, &t.ids, gateways, problems);
    if !(1..=500).contains(&t.max_param_chars) {
        problems.push(format!("{place}.max_param_chars: between 1 and 500"));
    }
    Some(SmsTemplate {
        name: t.name,
        text: t.text,
        category,
        ids: t.ids,
        vars,
        max_param_chars: t.max_param_chars,
    })
}

/// A template's ids: one at least, each for a configured gateway that sends templates.
fn template_ids(
    place: &str,
    ids: &BTreeMap<String, String>,
    gateways: &[GatewayConfig],
    problems: &mut Vec<String>,
) {
    if ids.is_empty() {
        problems.push(format!(
            "{place}.ids: no gateway has this template (ids = {{ gateway = \"template id\" }})"
        ));
    }
    for (g, id) in ids {
        match gateways.iter().find(|x| &x.name == g) {
            None => problems.push(format!("{place}.ids: no gateway {g:?}")),
            Some(x) if !x.kind.templates_only() => problems.push(format!(
                "{place}.ids: gateway {g:?} is of kind {} and sends text, not template ids",
                x.kind.name()
            )),
            Some(_) if id.trim().is_empty() => {
                problems.push(format!("{place}.ids.{g}: empty template id"))
            }
            Some(_) => {}
        }
    }
}

/// Validates `[sms]`; `schedule_timezone` is the default zone, `data_dir` where a dry-run file
/// goes by default.
pub fn validate(
    raw: RawSms,
    schedule_timezone: Tz,
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
        None => schedule_timezone,
        Some(z) => Tz::from_str(z).unwrap_or_else(|_| {
            problems.push(format!("sms.timezone: unknown IANA zone {z:?}"));
            schedule_timezone
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
    let (gateways, templates) =
        gateways_and_templates(raw.gateways, raw.templates, data_dir, problems);
    let optout_keywords = raw
        .optout_keywords
        .unwrap_or_else(|| OPTOUT_KEYWORDS.iter().map(|k| (*k).to_owned()).collect())
        .into_iter()
        .map(|k| k.trim().to_uppercase())
        .filter(|k| !k.is_empty())
        .collect();
    SmsConfig {
        templates,
        optout_keywords,
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

/// The gateways, then the templates (which name gateways); each name used once.
fn gateways_and_templates(
    raw_gateways: Vec<RawGateway>,
    raw_templates: Vec<RawTemplate>,
    data_dir: &std::path::Path,
    problems: &mut Vec<String>,
) -> (Vec<GatewayConfig>, Vec<SmsTemplate>) {
    let mut gateways: Vec<GatewayConfig> = Vec::new();
    let hint = data_dir.display().to_string();
    for (i, g) in raw_gateways.into_iter().enumerate() {
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
    let mut templates: Vec<SmsTemplate> = Vec::new();
    for (i, t) in raw_templates.into_iter().enumerate() {
        if let Some(t) = template(i, t, &gateways, problems) {
            if templates.iter().any(|o| o.name == t.name) {
                problems.push(format!(
                    "sms.templates[{i}].name: {:?} is used twice",
                    t.name
                ));
            }
            templates.push(t);
        }
    }
    (gateways, templates)
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
    fn claims_run_what_the_pace_lets_out_in_4_ms_ahead_unless_told() {
        let gateways = |extra: &str| {
            let c = Config::parse(
                "m.toml",
                &format!(
                    "[schedule]\nchannels = [\"lobby\"]\n[sms]\n[[sms.gateways]]\nname = \"d\"\nkind = \"dry-run\"\npath = \"x.jsonl\"\n{extra}"
                ),
            )
            .unwrap();
            let g = &c.sms.gateways[0];
            (g.in_flight, g.claim_ahead)
        };
        // 10 msg/s by default: one.
        assert_eq!(gateways(""), (8, 1));
        assert_eq!(
            gateways("in_flight = 65\nmessages_per_second = 3000"),
            (65, 12)
        );
        assert_eq!(
            gateways("in_flight = 64\nmessages_per_second = 100000"),
            (64, 192)
        );
        assert_eq!(
            gateways("in_flight = 200\nmessages_per_second = 100000"),
            (200, 400)
        );
        assert_eq!(
            gateways("in_flight = 64\nmessages_per_second = 20000"),
            (64, 80)
        );
        assert_eq!(
            gateways("in_flight = 1\nmessages_per_second = 100000"),
            (1, 0)
        );
        assert_eq!(gateways("in_flight = 64\nclaim_ahead = 32"), (64, 32));
        assert_eq!(gateways("in_flight = 64\nclaim_ahead = 0"), (64, 0));
        assert_eq!(gateways("in_flight = 64\nclaim_ahead = 128"), (64, 128));
        assert_eq!(gateways("in_flight = 64\nclaim_ahead = 192"), (64, 192));
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
[[sms.gateways]]
name = "c"
kind = "dry-run"
path = "c.jsonl"
in_flight = 4
claim_ahead = 13
"#,
        );
        let want = [
            "m.toml: sms.default_region: \"XX\" is not an ISO 3166 region like \"CN\"",
            "m.toml: sms.gateways[0] (k).url: \"ftp://x\" is not an http(s) URL",
            "m.toml: sms.gateways[3] (c).claim_ahead: at most three times in_flight (12)",
            "m.toml: sms.gateways[1] (h).json: body = \"json\" needs the JSON template in json",
            "m.toml: sms.gateways[1] (h).dlr_secret_env: environment variable MARQUEE_TEST_UNSET_VARIABLE is not set or empty",
            "m.toml: sms.gateways[1] (h).messages_per_second: between 0 and 100000",
            "m.toml: sms.gateways[1] (h).in_flight: between 1 and 10000",
            "m.toml: sms.gateways[1] (h).timeout: bad duration \"soon\" (e.g. 48h, 150ms)",
            "m.toml: sms.gateways[2] (d).kind: \"pigeon\" is not \"kannel\", \"http\", \"tencent\", \"aliyun\", \"cmcc-mas\" or \"dry-run\"",
        ];
        for w in want {
            assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
        }
    }

    #[test]
    fn a_key_of_another_kind_is_named_not_ignored() {
        let p = problems(
            r#"
[sms]
[[sms.gateways]]
name = "k"
kind = "kannel"
url = "http://127.0.0.1:13013/cgi-bin/sendsms"
username = "u"
sdk_app_id = "1400000000"
batch_max = 100
[[sms.gateways]]
name = "d"
kind = "dry-run"
url = "http://x/"
"#,
        );
        let want = [
            "m.toml: sms.gateways[0] (k).sdk_app_id: not a key of a \"kannel\" gateway (see config/marquee.toml for each kind's keys)",
            "m.toml: sms.gateways[0] (k).batch_max: not a key of a \"kannel\" gateway (see config/marquee.toml for each kind's keys)",
            "m.toml: sms.gateways[1] (d).url: not a key of a \"dry-run\" gateway (see config/marquee.toml for each kind's keys)",
        ];
        for w in want {
            assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
        }
        // The common keys and the kind's own are taken.
        assert!(
            !p.iter()
                .any(|x| x.contains(".url: not a key") && x.contains("(k)")),
            "{p:#?}"
        );
    }

    #[test]
    fn a_generic_batch_or_signature_that_cannot_work_is_refused() {
        let p = problems(
            r#"
[[sms.gateways]]
name = "b"
kind = "http"
url = "http://127.0.0.1:9/send?to={to}"
body = "none"
batch_max = 50
dlr_items_pointer = "/results"
dlr_carrier_id_field = "/id"
dlr_secret_env = "PATH"
[[sms.gateways]]
name = "s"
kind = "http"
method = "GET"
url = "http://127.0.0.1:9/v3/?Action=SendSms"
body = "none"
signing = "tc3-hmac-sha256"
secret_id_env = "PATH"
secret_key_env = "PATH"
dlr_secret_env = "PATH"
"#,
        );
        let all = p.join("\n");
        for want in [
            "sms.gateways[0] (b).batch_max: a batch request needs {to_list}",
            "sms.gateways[0] (b).batch_max: {to} is one message's",
            "sms.gateways[0] (b).result_id_field: a batch's reports are matched",
            "sms.gateways[1] (s).signing: tc3-hmac-sha256 signs a JSON body",
            "sms.gateways[1] (s).signing: tc3-hmac-sha256 signs a POST to the root path",
        ] {
            assert!(all.contains(want), "missing {want:?} in {all}");
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
