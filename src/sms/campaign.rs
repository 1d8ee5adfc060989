//! Creating a campaign: the request, recipient import (E.164, duplicates, opt-outs, per-row
//! rejects), text templates (`{{column}}`, one text per language) and the cost estimate.
//! Pure: the caller supplies the opt-out lookup and writes the result.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, NaiveTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::config::{SmsConfig, SmsTemplate};
use crate::domain::phone::normalize_for_sms;
use crate::domain::quiet::SendWindow;
use crate::domain::segments::{Encoding, Segments, carrier_cn, segments};
use crate::lists;
use crate::store::sms::NewMessage;

/// `POST /api/v1/campaigns`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// Name shown in lists.
    pub name: String,
    /// The text (template with `{{column}}` placeholders), in the default language. Not with
    /// `template`.
    #[serde(default)]
    pub text: String,
    /// An approved template (`[[sms.templates]]` name) instead of `text`: its `{{variables}}`
    /// come from the list's columns, and only gateways that have it send it.
    #[serde(default)]
    pub template: Option<String>,
    /// Other languages: language → text, chosen by a recipient's `lang`.
    #[serde(default)]
    pub texts: BTreeMap<String, String>,
    /// Sender id (digits, or up to 11 letters and digits; default `sms.sender`).
    #[serde(default)]
    pub sender: Option<String>,
    /// Recipients as a list.
    #[serde(default)]
    pub recipients: Vec<RecipientIn>,
    /// Recipients as CSV text: a number column (`number`, `phone`, `mobile`, `to`, `msisdn`,
    /// `tel`, `手机`, `手机号`, `手机号码`, `电话`, `电话号码`, `联系电话`, `号码`), an optional
    /// `lang`, every other column a template variable. The delimiter (`,` `;` tab `|`) is taken
    /// from the header line.
    #[serde(default)]
    pub recipients_csv: Option<String>,
    /// Recipients from a file uploaded with `POST /api/v1/uploads` (CSV or TXT in UTF-8, UTF-16
    /// or GB18030; XLSX): the upload's id. The same columns as `recipients_csv`.
    #[serde(default)]
    pub recipients_upload: Option<String>,
    /// The sheet of an uploaded workbook to read (default: the first).
    #[serde(default)]
    pub sheet: Option<String>,
    /// Gateways in failover order (default: every configured one, in order).
    #[serde(default)]
    pub gateways: Vec<String>,
    /// `now`, an RFC 3339 time, or absent (a draft, started later).
    #[serde(default)]
    pub start: Option<String>,
    /// Only send inside this local window.
    #[serde(default)]
    pub send_window: Option<WindowSpec>,
    /// At most this many messages per number in 24 hours (across campaigns).
    #[serde(default)]
    pub daily_cap: Option<u32>,
    /// Send again on a cron schedule (`0 9 * * MON-FRI`, in `sms.timezone`; an optional
    /// leading seconds field): each time, a new campaign with the same recipients and texts
    /// (opt-outs checked at send time). Not with `start`.
    #[serde(default)]
    pub repeat: Option<String>,
}

/// One recipient in a list.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(
    deny_unknown_fields,
    expecting = r#"a recipient: {"number": "+8613800138000", "lang": "en", "vars": {…}}"#
)]
pub struct RecipientIn {
    /// The number as written.
    pub number: String,
    /// Language of the text to send (default: the default text).
    #[serde(default)]
    pub lang: Option<String>,
    /// Template variables.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

/// A local sending window, e.g. `08:00`–`21:00`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// Local start, `HH:MM`.
    pub from: String,
    /// Local end, `HH:MM` (exclusive; before `from` crosses midnight).
    pub until: String,
    /// Zone (default: `sms.timezone`).
    #[serde(default)]
    pub timezone: Option<String>,
}

/// What a campaign keeps besides its messages (stored as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// Sender id.
    pub sender: String,
    /// Gateways in failover order.
    pub gateways: Vec<String>,
    /// Sending window.
    #[serde(default)]
    pub send_window: Option<WindowSpec>,
    /// Per-number cap in 24 hours.
    #[serde(default)]
    pub daily_cap: Option<u32>,
    /// The templates, for the record.
    pub text: String,
    /// The approved template (`[[sms.templates]]`) the messages are sent as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Other languages.
    #[serde(default)]
    pub texts: BTreeMap<String, String>,
    /// The cron schedule of a recurring campaign.
    #[serde(default)]
    pub repeat: Option<String>,
    /// The imported list's columns, for the rejected-rows report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
}

/// Parses a campaign's cron schedule.
pub fn parse_repeat(line: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(line)
        .map_err(|e| {
            format!(
                "bad cron line {line:?}: {e} (minute hour day-of-month month day-of-week, optionally seconds first)"
            )
        })
}

/// The first firing of `repeat` after `after`, in zone `tz`.
pub fn next_fire(repeat: &str, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let cron = parse_repeat(repeat).ok()?;
    cron.iter_after(after.with_timezone(&tz))
        .next()
        .map(|t| t.with_timezone(&Utc))
}

impl Spec {
    /// The sending window with its zone, if any.
    pub fn window(&self, default: Tz) -> Option<(SendWindow, Tz)> {
        let w = self.send_window.as_ref()?;
        let (start, end) = (hhmm(&w.from).ok()?, hhmm(&w.until).ok()?);
        let tz = w
            .timezone
            .as_deref()
            .and_then(|z| z.parse().ok())
            .unwrap_or(default);
        Some((SendWindow { start, end }, tz))
    }
}

fn hhmm(s: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(s, "%H:%M").map_err(|_| format!("{s:?} is not a time like 08:00"))
}

/// A recipient that was not imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reject {
    /// Row (1-based; for a list the data row, the header being row 0: spreadsheet row `row + 1`).
    pub row: usize,
    /// The number as read.
    pub value: String,
    /// Why.
    pub reason: String,
    /// The whole row as read (one cell per list column), so the office can fix and re-upload it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cells: Vec<String>,
}

/// What a campaign costs.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Estimate {
    /// Recipients imported.
    pub recipients: usize,
    /// Messages (one per recipient).
    pub messages: usize,
    /// SMS parts over the air (GSM-7 160/153, UCS-2 70/67).
    pub segments: usize,
    /// Messages a Chinese carrier bills (every character 1, ≤ 70 → 1, else ⌈n/67⌉).
    pub carrier_billed: usize,
    /// Messages sent in GSM-7.
    pub gsm7: usize,
    /// Messages sent in UCS-2.
    pub ucs2: usize,
    /// Seconds to send at the first gateway's limits.
    pub duration_seconds: f64,
}

/// How the campaign starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A draft: started by an operator.
    Draft,
    /// Running at once.
    Now,
    /// Scheduled.
    At(DateTime<Utc>),
    /// Recurring: the first firing.
    Repeat(DateTime<Utc>),
}

/// Messages handed to the store at a time while a list is imported (the import holds at most
/// this many rows besides the duplicate index: about 21 bytes per recipient).
pub const CHUNK: usize = 10_000;

/// Rejected rows kept for the answer (every one goes to the store and its report).
pub const REJECTS_SHOWN: usize = 1_000;

/// Rejected rows named in the error when no row could be imported.
const NOTHING_SHOWN: usize = 10;

/// A campaign ready to store.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Spec.
    pub spec: Spec,
    /// Messages ([`prepare`] only; [`prepare_with`] hands them to its sink).
    pub messages: Vec<NewMessage>,
    /// The first [`REJECTS_SHOWN`] rejected rows.
    pub rejects: Vec<Reject>,
    /// Rejected rows in all.
    pub rejected: usize,
    /// Cost.
    pub estimate: Estimate,
    /// Start.
    pub start: Start,
}

/// A request problem: the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Field.
    pub field: &'static str,
    /// Message.
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

/// Checks `{{name}}` placeholders; returns their names.
pub fn placeholders(template: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err(format!(
                "unclosed {{{{ at character {}",
                template.len() - rest.len() + open
            ));
        };
        let name = after[..close].trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "{{{{{name}}}}} is not a placeholder (letters, digits, '_' or '-')"
            ));
        }
        names.push(name.to_owned());
        rest = &after[close + 2..];
    }
    Ok(names)
}

/// Fills `{{name}}` from `vars`; names a missing one.
pub fn render(template: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or("unclosed {{")?;
        let name = after[..close].trim();
        match vars.get(name) {
            Some(v) => out.push_str(v),
            None => return Err(format!("no value for {{{{{name}}}}}")),
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn valid_sender(s: &str) -> bool {
    let digits = s.strip_prefix('+').unwrap_or(s);
    (!digits.is_empty() && digits.len() <= 15 && digits.chars().all(|c| c.is_ascii_digit()))
        || (!s.is_empty()
            && s.chars().count() <= 11
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == ' '))
}

/// Reads recipients from a list (CSV text or an uploaded file, see [`crate::lists`]), handing
/// each row to `each` (nothing is collected); returns the list's columns. `field` names the
/// request field in errors.
fn list_recipients(
    src: impl std::io::Read + std::io::Seek,
    sheet: Option<String>,
    field: &'static str,
    mut each: impl FnMut(usize, Vec<String>, Result<RecipientIn, String>),
) -> Result<Vec<String>, Invalid> {
    let mut cols: Option<(usize, Option<usize>)> = None;
    let mut missing = None;
    let layout = lists::read(src, &lists::ListOptions { sheet }, |layout, row| {
        if missing.is_some() {
            return;
        }
        let (number_col, lang_col) = match cols {
            Some(c) => c,
            None => match lists::number_column(&layout.columns) {
                Some(n) => *cols.insert((n, lists::lang_column(&layout.columns))),
                None => {
                    missing = Some(lists::no_number_column(layout));
                    return;
                }
            },
        };
        if row.extra > 0 {
            let value = row.cells[number_col].clone();
            each(
                row.row,
                row.cells,
                Err(format!(
                    "{} more non-empty cells than the header has columns: a delimiter inside an unquoted value? (value {value:?})",
                    row.extra
                )),
            );
            return;
        }
        let mut vars = BTreeMap::new();
        for (j, h) in layout.columns.iter().enumerate() {
            if j != number_col && Some(j) != lang_col && !h.is_empty() {
                vars.insert(h.clone(), row.cells[j].clone());
            }
        }
        let r = RecipientIn {
            number: row.cells[number_col].clone(),
            lang: lang_col
                .map(|c| row.cells[c].clone())
                .filter(|l| !l.is_empty()),
            vars,
        };
        each(row.row, row.cells, Ok(r));
    })
    .map_err(|e| invalid(field, e.message))?;
    if let Some(m) = missing {
        return Err(invalid(field, m));
    }
    if cols.is_none() && lists::number_column(&layout.columns).is_none() {
        return Err(invalid(field, lists::no_number_column(&layout)));
    }
    Ok(layout.columns)
}

/// Reads the numbers of an opt-out list (CSV text or an uploaded file): every valid number
/// (landlines too: opting one out is never wrong), and a reject for each row without one.
/// Rows are numbered from `first_row`.
pub fn list_numbers(
    src: impl std::io::Read + std::io::Seek,
    sheet: Option<String>,
    field: &'static str,
    region: phonenumber::country::Id,
    numbers: &mut Vec<String>,
    rejects: &mut Vec<Reject>,
) -> Result<(), Invalid> {
    list_recipients(src, sheet, field, |row, cells, r| match r {
        Ok(r) => match crate::domain::phone::normalize(&r.number, region) {
            Ok(n) => numbers.push(n),
            Err(e) => rejects.push(Reject {
                row,
                value: r.number,
                reason: e.to_string(),
                cells,
            }),
        },
        Err(reason) => rejects.push(Reject {
            row,
            value: String::new(),
            reason,
            cells,
        }),
    })?;
    Ok(())
}

/// Validates a request and imports its recipients, leaving out the `opted_out` (E.164) numbers;
/// every message and rejected row is collected in the answer. `upload` is the file named by
/// `recipients_upload`, opened by the caller.
pub fn prepare(
    req: CreateRequest,
    cfg: &SmsConfig,
    now: DateTime<Utc>,
    opted_out: &HashSet<String>,
    upload: Option<&mut dyn lists::Source>,
) -> Result<Prepared, Invalid> {
    let mut all = Vec::new();
    let mut p = prepare_with(req, cfg, now, opted_out, upload, &mut |m, _| {
        all.append(m);
        true
    })?;
    p.messages = all;
    Ok(p)
}

/// [`prepare`], handing messages and rejected rows to `sink` in chunks of [`CHUNK`] as the list
/// is read (it drains the two vectors; `false` stops the import, the sink keeping why), so a
/// list of millions is imported in bounded memory.
pub fn prepare_with(
    req: CreateRequest,
    cfg: &SmsConfig,
    now: DateTime<Utc>,
    opted_out: &HashSet<String>,
    upload: Option<&mut dyn lists::Source>,
    sink: &mut dyn FnMut(&mut Vec<NewMessage>, &mut Vec<Reject>) -> bool,
) -> Result<Prepared, Invalid> {
    // The checks run in this order, so a request with several faults is told the first.
    if req.name.trim().is_empty() || req.name.chars().count() > 200 {
        return Err(invalid("name", "give a name of 1 to 200 characters"));
    }
    let sender = sender_of(&req, cfg)?;
    let (tpl, main_text) = text_of(&req, cfg)?;
    let gateways = gateways_of(&req, cfg, tpl)?;
    let send_window = send_window_of(&req, tpl)?;
    known_gateways(&gateways, cfg)?;
    window_times(&req)?;
    if req.daily_cap == Some(0) {
        return Err(invalid("daily_cap", "at least 1"));
    }
    let start = start_of(&req, cfg, now)?;
    one_source(&req, upload.is_some())?;
    let mut rows = Rows::new(cfg, opted_out, tpl, &main_text, &req.texts, &gateways);
    let mut intake = Intake::new(sink);
    let from_list = |row: usize, cells: Vec<String>, r: Result<RecipientIn, String>| {
        let outcome = match r {
            Ok(r) => rows.message(row, r),
            Err(reason) => Err(Reject {
                row,
                value: String::new(),
                reason,
                cells: Vec::new(),
            }),
        };
        intake.keep(outcome.map_err(|mut e| {
            e.cells = cells;
            e
        }));
    };
    let columns = read_rows(&req, upload, from_list)?;
    intake.flush();
    if intake.imported == 0 {
        return Err(intake.nothing_imported());
    }
    let mut estimate = rows.estimate;
    if let Some(g) = cfg.gateway(&gateways[0]) {
        estimate.duration_seconds = ((estimate.messages as f64 / g.messages_per_second)
            .max(estimate.segments as f64 / g.segments_per_second)
            * 10.0)
            .round()
            / 10.0;
    }
    Ok(Prepared {
        spec: Spec {
            sender,
            gateways,
            send_window,
            daily_cap: req.daily_cap,
            text: main_text,
            template: req.template,
            texts: req.texts,
            repeat: req.repeat,
            columns,
        },
        messages: Vec::new(),
        rejects: intake.shown,
        rejected: intake.rejected,
        estimate,
        start,
    })
}

/// The send window's times and zone read (a marketing template's were checked before).
fn window_times(req: &CreateRequest) -> Result<(), Invalid> {
    if let Some(w) = &req.send_window {
        hhmm(&w.from).map_err(|e| invalid("send_window", format!("from: {e}")))?;
        hhmm(&w.until).map_err(|e| invalid("send_window", format!("until: {e}")))?;
        if let Some(z) = &w.timezone {
            z.parse::<Tz>()
                .map_err(|_| invalid("send_window", format!("unknown zone {z:?}")))?;
        }
    }
    Ok(())
}

/// Hands every recipient row of the request's source to `each`; the list's columns.
fn read_rows(
    req: &CreateRequest,
    upload: Option<&mut dyn lists::Source>,
    mut each: impl FnMut(usize, Vec<String>, Result<RecipientIn, String>),
) -> Result<Vec<String>, Invalid> {
    if let Some(csv) = &req.recipients_csv {
        list_recipients(
            std::io::Cursor::new(csv.as_bytes()),
            req.sheet.clone(),
            "recipients_csv",
            each,
        )
    } else if let Some(file) = upload {
        list_recipients(file, req.sheet.clone(), "recipients_upload", each)
    } else {
        for (i, r) in req.recipients.iter().enumerate() {
            each(i + 1, Vec::new(), Ok(r.clone()));
        }
        Ok(Vec::new())
    }
}

/// The sender id: the request's, else `sms.sender`.
fn sender_of(req: &CreateRequest, cfg: &SmsConfig) -> Result<String, Invalid> {
    let Some(sender) = req.sender.clone().or_else(|| cfg.sender.clone()) else {
        return Err(invalid(
            "sender",
            "no sender id: give sender, or set sms.sender in the configuration",
        ));
    };
    if !valid_sender(&sender) {
        return Err(invalid(
            "sender",
            format!(
                "{sender:?} is not a sender id: digits (up to 15) or up to 11 letters and digits"
            ),
        ));
    }
    Ok(sender)
}

/// The template named (if one is) and the main text: the template's approved text, or the
/// request's, its placeholders checked.
fn text_of<'c>(
    req: &CreateRequest,
    cfg: &'c SmsConfig,
) -> Result<(Option<&'c SmsTemplate>, String), Invalid> {
    let Some(name) = &req.template else {
        if req.text.trim().is_empty() {
            return Err(invalid("text", "the text is empty"));
        }
        placeholders(&req.text).map_err(|e| invalid("text", e))?;
        for t in req.texts.values() {
            placeholders(t).map_err(|e| invalid("texts", e))?;
        }
        return Ok((None, req.text.clone()));
    };
    if !req.text.trim().is_empty() || !req.texts.is_empty() {
        return Err(invalid(
            "template",
            "give text or template, not both (a template's approved text is what is sent)",
        ));
    }
    let t = cfg.template(name).ok_or_else(|| {
        invalid(
            "template",
            format!(
                "no template {name:?} in [[sms.templates]] (configured: {})",
                cfg.templates
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    Ok((Some(t), t.text.clone()))
}

/// The gateways the campaign may use: the request's, else every one that can send it.
/// Template-only gateways (Tencent, Aliyun, 云MAS) send a template they have an id for; free
/// text goes only to gateways that send text.
fn gateways_of(
    req: &CreateRequest,
    cfg: &SmsConfig,
    tpl: Option<&SmsTemplate>,
) -> Result<Vec<String>, Invalid> {
    let can = |g: &super::config::GatewayConfig| match tpl {
        Some(t) => t.ids.contains_key(&g.name),
        None => !g.kind.templates_only(),
    };
    let gateways: Vec<String> = if req.gateways.is_empty() {
        cfg.gateways
            .iter()
            .filter(|g| can(g))
            .map(|g| g.name.clone())
            .collect()
    } else {
        req.gateways.clone()
    };
    for g in gateways.iter().filter_map(|g| cfg.gateway(g)) {
        if !can(g) {
            return Err(invalid(
                "gateways",
                match tpl {
                    Some(t) => format!(
                        "gateway {:?} has no id for template {:?} (its ids: {})",
                        g.name,
                        t.name,
                        t.ids.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                    None => format!(
                        "gateway {:?} ({}) sends only approved templates: give a template",
                        g.name,
                        g.kind.name()
                    ),
                },
            ));
        }
    }
    if gateways.is_empty()
        && let Some(t) = tpl
    {
        return Err(invalid(
            "template",
            format!("no configured gateway has an id for template {:?}", t.name),
        ));
    }
    Ok(gateways)
}

/// Every gateway named is configured, and there is one.
fn known_gateways(gateways: &[String], cfg: &SmsConfig) -> Result<(), Invalid> {
    if gateways.is_empty() {
        return Err(invalid(
            "gateways",
            "no SMS gateway is configured ([[sms.gateways]] in the configuration)",
        ));
    }
    match gateways.iter().find(|g| cfg.gateway(g).is_none()) {
        Some(g) => Err(invalid(
            "gateways",
            format!(
                "unknown gateway {g:?} (configured: {})",
                cfg.gateways
                    .iter()
                    .map(|g| g.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// The send window: the request's; a marketing template's is within 08:00–22:00 Beijing time
/// (providers' and MIIT rules), and that is its default.
fn send_window_of(
    req: &CreateRequest,
    tpl: Option<&SmsTemplate>,
) -> Result<Option<WindowSpec>, Invalid> {
    let marketing = tpl.is_some_and(|t| t.category == super::config::Category::Marketing);
    let Some(w) = req.send_window.clone() else {
        return Ok(marketing.then(|| WindowSpec {
            from: "08:00".into(),
            until: "22:00".into(),
            timezone: Some("Asia/Shanghai".into()),
        }));
    };
    if !marketing {
        return Ok(Some(w));
    }
    let (from, until) = (
        hhmm(&w.from).map_err(|e| invalid("send_window", e))?,
        hhmm(&w.until).map_err(|e| invalid("send_window", e))?,
    );
    let (eight, ten) = (
        NaiveTime::from_hms_opt(8, 0, 0).unwrap_or_default(),
        NaiveTime::from_hms_opt(22, 0, 0).unwrap_or_default(),
    );
    if from < eight || until > ten || until <= from {
        return Err(invalid(
            "send_window",
            "a marketing template is sent only between 08:00 and 22:00",
        ));
    }
    // The hours are Beijing's, whatever zone the office writes them in.
    if w.timezone.as_deref().is_some_and(|z| z != "Asia/Shanghai") {
        return Err(invalid(
            "send_window",
            "a marketing template's window is in Beijing time (timezone Asia/Shanghai)",
        ));
    }
    Ok(Some(WindowSpec {
        timezone: Some("Asia/Shanghai".into()),
        ..w
    }))
}

/// How the campaign starts: a draft, now, at a time (not before `now` less
/// `sms.missed_start_margin`), or at the first firing of `repeat`.
fn start_of(req: &CreateRequest, cfg: &SmsConfig, now: DateTime<Utc>) -> Result<Start, Invalid> {
    match (req.start.as_deref(), req.repeat.as_deref()) {
        (Some(_), Some(_)) => Err(invalid(
            "repeat",
            "give start or repeat, not both (a recurring campaign starts at each firing)",
        )),
        (None, Some(line)) => {
            parse_repeat(line).map_err(|e| invalid("repeat", e))?;
            Ok(Start::Repeat(
                next_fire(line, cfg.timezone, now)
                    .ok_or_else(|| invalid("repeat", format!("{line:?} never fires")))?,
            ))
        }
        (None, None) => Ok(Start::Draft),
        (Some("now"), None) => Ok(Start::Now),
        (Some(t), None) => {
            let at = DateTime::parse_from_rfc3339(t)
                .map_err(|_| {
                    invalid(
                        "start",
                        format!("{t:?} is not \"now\" or a time like 2026-12-01T09:00:00+08:00"),
                    )
                })?
                .with_timezone(&Utc);
            if at < now - cfg.missed_start_margin {
                return Err(invalid(
                    "start",
                    format!("{t} is in the past; use \"now\" to send at once"),
                ));
            }
            Ok(if at <= now { Start::Now } else { Start::At(at) })
        }
    }
}

/// The recipients come from exactly one of the three sources, and a named upload exists.
fn one_source(req: &CreateRequest, has_upload: bool) -> Result<(), Invalid> {
    let given = usize::from(req.recipients_csv.is_some())
        + usize::from(req.recipients_upload.is_some())
        + usize::from(!req.recipients.is_empty());
    if given > 1 {
        return Err(invalid(
            if req.recipients_upload.is_some() {
                "recipients_upload"
            } else {
                "recipients_csv"
            },
            "give one of recipients, recipients_csv or recipients_upload",
        ));
    }
    if req.recipients_upload.is_some() && !has_upload {
        return Err(invalid(
            "recipients_upload",
            "no such upload (upload the file with POST /api/v1/uploads first; an upload is used once)",
        ));
    }
    Ok(())
}

/// Turns each recipient row into its message or the reason it is rejected, counting the cost.
struct Rows<'a> {
    cfg: &'a SmsConfig,
    opted_out: &'a HashSet<String>,
    tpl: Option<&'a SmsTemplate>,
    main_text: &'a str,
    texts: &'a BTreeMap<String, String>,
    mainland_only: bool,
    fixed_line: bool,
    /// E.164 numbers are at most 15 digits: a u64 each (and the row as u32) keeps a
    /// five-million-recipient import's duplicate index near 100 MB.
    seen: HashMap<u64, u32>,
    estimate: Estimate,
    /// A text without placeholders is the same for everybody: built and counted once per
    /// language.
    fixed: HashMap<Option<String>, (Arc<str>, Segments, usize)>,
}

impl<'a> Rows<'a> {
    fn new(
        cfg: &'a SmsConfig,
        opted_out: &'a HashSet<String>,
        tpl: Option<&'a SmsTemplate>,
        main_text: &'a str,
        texts: &'a BTreeMap<String, String>,
        gateways: &[String],
    ) -> Rows<'a> {
        let kinds = || gateways.iter().filter_map(|g| cfg.gateway(g));
        Rows {
            cfg,
            opted_out,
            tpl,
            main_text,
            texts,
            // 云MAS reaches mainland numbers only.
            mainland_only: kinds()
                .any(|g| matches!(g.kind, super::config::GatewayKind::CmccMas(_))),
            // Fixed lines only when every gateway the campaign may fail over to delivers to
            // them (all are configured: checked before).
            fixed_line: gateways
                .iter()
                .all(|g| cfg.gateway(g).is_some_and(|g| g.fixed_line)),
            seen: HashMap::new(),
            estimate: Estimate {
                recipients: 0,
                messages: 0,
                segments: 0,
                carrier_billed: 0,
                gsm7: 0,
                ucs2: 0,
                duration_seconds: 0.0,
            },
            fixed: HashMap::new(),
        }
    }

    fn message(&mut self, row: usize, r: RecipientIn) -> Result<NewMessage, Reject> {
        let reject = |reason: String| Reject {
            row,
            value: r.number.clone(),
            reason,
            cells: Vec::new(),
        };
        let e164 = normalize_for_sms(&r.number, self.cfg.default_region, self.fixed_line)
            .map_err(|e| reject(e.to_string()))?;
        if self.mainland_only && !e164.starts_with("+86") {
            return Err(reject(format!(
                "{e164}: a gateway of this campaign (云MAS) sends to mainland China (+86) numbers only"
            )));
        }
        let key: u64 = e164[1..].parse().unwrap_or(0);
        if let Some(first) = self.seen.get(&key) {
            return Err(reject(format!("duplicate of row {first} ({e164})")));
        }
        if self.opted_out.contains(&e164) {
            return Err(reject(format!("{e164} is on the opt-out list")));
        }
        let params = match self.tpl {
            None => None,
            Some(t) => Some(template_params(t, &r.vars).map_err(&reject)?),
        };
        let (text, seg, billed) = self.text(&r).map_err(&reject)?;
        if seg.parts > 10 {
            return Err(reject(format!(
                "the text takes {} parts; at most 10",
                seg.parts
            )));
        }
        // Only an imported row makes later ones duplicates: a row rejected for its text
        // leaves the number free for a corrected row further down.
        self.seen
            .insert(key, u32::try_from(row).unwrap_or(u32::MAX));
        let estimate = &mut self.estimate;
        estimate.recipients += 1;
        estimate.messages += 1;
        estimate.segments += seg.parts;
        estimate.carrier_billed += billed;
        match seg.encoding {
            Encoding::Gsm7 => estimate.gsm7 += 1,
            Encoding::Ucs2 => estimate.ucs2 += 1,
        }
        Ok(NewMessage {
            row,
            recipient: key,
            text,
            parts: seg.parts,
            params,
        })
    }

    /// The recipient's text (in its language when the request has one), signed, with its
    /// parts and the parts a mainland carrier bills.
    fn text(&mut self, r: &RecipientIn) -> Result<(Arc<str>, Segments, usize), String> {
        let lang = r.lang.clone().filter(|l| self.texts.contains_key(l));
        if let Some(f) = self.fixed.get(&lang) {
            return Ok(f.clone());
        }
        let template = lang.as_ref().map_or(self.main_text, |l| &self.texts[l]);
        let body = render(template, &r.vars)?;
        let text: Arc<str> = match &self.cfg.signature {
            Some(sig) => format!("{sig}{body}").into(),
            None => body.into(),
        };
        let seg = segments(&text);
        let billed = carrier_cn(&text, None);
        if placeholders(template).is_ok_and(|p| p.is_empty()) {
            self.fixed.insert(lang, (text.clone(), seg, billed));
        }
        Ok((text, seg, billed))
    }
}

/// A template's parameters as JSON, checked as providers check them (count, no empty value,
/// length, no links or 【】: CARRIERS.md §2.2, §2.3, §7.5).
fn template_params(t: &SmsTemplate, vars: &BTreeMap<String, String>) -> Result<Arc<str>, String> {
    let mut values = Vec::with_capacity(t.vars.len());
    for v in &t.vars {
        let value = vars.get(v).map(|x| x.trim()).unwrap_or("");
        if value.is_empty() {
            return Err(format!("no value for {{{{{v}}}}} (template {})", t.name));
        }
        if value.chars().count() > t.max_param_chars {
            return Err(format!(
                "{{{{{v}}}}} is longer than {} characters (template {})",
                t.max_param_chars, t.name
            ));
        }
        let lower = value.to_lowercase();
        if value.contains('【')
            || value.contains('】')
            || lower.contains("http")
            || lower.contains("www.")
        {
            return Err(format!(
                "{{{{{v}}}}} holds a link or 【】, which providers refuse in parameters"
            ));
        }
        values.push(value.to_owned());
    }
    Ok(serde_json::to_string(&values).unwrap_or_default().into())
}

/// Collects the outcomes of rows: messages and rejects go to the sink in chunks of [`CHUNK`],
/// the first [`REJECTS_SHOWN`] rejects stay for the answer.
struct Intake<'s> {
    shown: Vec<Reject>,
    rejected: usize,
    rejects: Vec<Reject>,
    messages: Vec<NewMessage>,
    imported: usize,
    sink_ok: bool,
    sink: &'s mut dyn FnMut(&mut Vec<NewMessage>, &mut Vec<Reject>) -> bool,
}

impl<'s> Intake<'s> {
    fn new(sink: &'s mut dyn FnMut(&mut Vec<NewMessage>, &mut Vec<Reject>) -> bool) -> Self {
        Intake {
            shown: Vec::new(),
            rejected: 0,
            rejects: Vec::new(),
            messages: Vec::with_capacity(CHUNK),
            imported: 0,
            sink_ok: true,
            sink,
        }
    }

    fn keep(&mut self, outcome: Result<NewMessage, Reject>) {
        if !self.sink_ok {
            return;
        }
        match outcome {
            Ok(m) => {
                self.messages.push(m);
                self.imported += 1;
            }
            Err(e) => {
                self.rejected += 1;
                if self.shown.len() < REJECTS_SHOWN {
                    self.shown.push(e.clone());
                }
                self.rejects.push(e);
            }
        }
        if self.messages.len() >= CHUNK || self.rejects.len() >= CHUNK {
            self.sink_ok = (self.sink)(&mut self.messages, &mut self.rejects);
        }
    }

    /// The error of a list of which no row could be imported.
    /// The error when every row was rejected: how many, and the first [`NOTHING_SHOWN`] rows
    /// with their reasons (no campaign is created, so there is no report to download).
    fn nothing_imported(&self) -> Invalid {
        let mut rows: Vec<String> = self
            .shown
            .iter()
            .take(NOTHING_SHOWN)
            .map(|r| format!("row {}: {}", r.row, r.reason))
            .collect();
        if self.rejected > rows.len() && !rows.is_empty() {
            rows.push(format!("and {} more", self.rejected - rows.len()));
        }
        invalid(
            "recipients",
            format!(
                "no recipient could be imported ({} rejected{}{})",
                self.rejected,
                if rows.is_empty() { "" } else { "; " },
                rows.join("; ")
            ),
        )
    }

    /// Hands what is left to the sink (unless it stopped the import).
    fn flush(&mut self) {
        if self.sink_ok && (!self.messages.is_empty() || !self.rejects.is_empty()) {
            (self.sink)(&mut self.messages, &mut self.rejects);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg() -> SmsConfig {
        Config::parse(
            "t.toml",
            r#"
[schedule]
channels = ["lobby"]
[sms]
signature = "【市政府】"
[[sms.gateways]]
name = "dry"
kind = "dry-run"
messages_per_second = 10
"#,
        )
        .unwrap()
        .sms
    }

    fn req(csv: &str) -> CreateRequest {
        CreateRequest {
            name: "open day".into(),
            text: "{{name}}您好，政务开放日欢迎您".into(),
            template: None,
            texts: BTreeMap::from([("en".into(), "Hello {{name}}, welcome".into())]),
            sender: Some("12345".into()),
            recipients: vec![],
            recipients_csv: Some(csv.into()),
            recipients_upload: None,
            sheet: None,
            gateways: vec![],
            start: None,
            send_window: None,
            daily_cap: None,
            repeat: None,
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-11-28T02:00:00Z".parse().unwrap()
    }

    fn template_cfg() -> SmsConfig {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, "0123456789abcdef0123").unwrap();
        let mut p = std::fs::metadata(&key).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o600);
        std::fs::set_permissions(&key, p).unwrap();
        let k = format!("{:?}", key.display().to_string());
        Config::parse(
            "t.toml",
            &format!(
                r#"
[schedule]
channels = ["lobby"]
[sms]
sender = "12345"
[[sms.templates]]
name = "open-day"
text = "{{{{name}}}}您好，{{{{date}}}}政务开放日欢迎您。"
ids = {{ tc = "2000001" }}
max_param_chars = 6
[[sms.templates]]
name = "promo"
text = "政务开放日欢迎您。拒收请回复R"
category = "marketing"
ids = {{ tc = "2000002" }}
[[sms.gateways]]
name = "dry"
kind = "dry-run"
[[sms.gateways]]
name = "tc"
kind = "tencent"
region = "ap-guangzhou"
sdk_app_id = "1400000001"
sign_name = "市政府"
secret_id_file = {k}
secret_key_file = {k}
dlr_secret_file = {k}
"#
            ),
        )
        .unwrap()
        .sms
    }

    #[test]
    fn a_template_campaign_goes_only_to_gateways_that_have_it_with_checked_parameters() {
        let cfg = template_cfg();
        let mut r = req(
            "phone,name,date\n13800138000,张三,5月15日\n13800138001,,5月15日\n13800138002,李四五六七八九,5月15日\n13800138003,王五,www.x\n",
        );
        r.text = String::new();
        r.texts.clear();
        r.template = Some("open-day".into());
        let p = prepare(r.clone(), &cfg, now(), &HashSet::new(), None).unwrap();
        assert_eq!(
            p.spec.gateways,
            ["tc"],
            "the dry-run gateway sends text only"
        );
        assert_eq!(p.spec.template.as_deref(), Some("open-day"));
        assert_eq!(p.messages.len(), 1);
        assert_eq!(&*p.messages[0].text, "张三您好，5月15日政务开放日欢迎您。");
        assert_eq!(
            p.messages[0].params.as_deref(),
            Some(r#"["张三","5月15日"]"#)
        );
        let reasons: Vec<&str> = p.rejects.iter().map(|r| r.reason.as_str()).collect();
        assert!(reasons[0].contains("no value for {{name}}"), "{reasons:?}");
        assert!(reasons[1].contains("longer than 6"), "{reasons:?}");
        assert!(reasons[2].contains("link"), "{reasons:?}");
        // Naming a gateway without the template, text and template together, an unknown one.
        let mut bad = r.clone();
        bad.gateways = vec!["dry".into()];
        assert_eq!(
            prepare(bad, &cfg, now(), &HashSet::new(), None)
                .unwrap_err()
                .field,
            "gateways"
        );
        let mut bad = r.clone();
        bad.text = "hi".into();
        assert_eq!(
            prepare(bad, &cfg, now(), &HashSet::new(), None)
                .unwrap_err()
                .field,
            "template"
        );
        let mut bad = r.clone();
        bad.template = Some("nope".into());
        assert_eq!(
            prepare(bad, &cfg, now(), &HashSet::new(), None)
                .unwrap_err()
                .field,
            "template"
        );
        // Free text never goes to a template-only gateway.
        let mut text = req("phone,name\n13800138000,张三\n");
        text.gateways = vec!["tc".into()];
        let e = prepare(text, &cfg, now(), &HashSet::new(), None).unwrap_err();
        assert_eq!(e.field, "gateways");
        assert!(
            e.message.contains("only approved templates"),
            "{}",
            e.message
        );
        // Marketing: 08:00-22:00 unless a narrower window is given.
        let mut m = req("phone\n13800138000\n");
        m.text = String::new();
        m.texts.clear();
        m.template = Some("promo".into());
        let p = prepare(m.clone(), &cfg, now(), &HashSet::new(), None).unwrap();
        let w = p.spec.send_window.unwrap();
        assert_eq!((w.from.as_str(), w.until.as_str()), ("08:00", "22:00"));
        m.send_window = Some(WindowSpec {
            from: "07:00".into(),
            until: "21:00".into(),
            timezone: None,
        });
        assert_eq!(
            prepare(m, &cfg, now(), &HashSet::new(), None)
                .unwrap_err()
                .field,
            "send_window"
        );
    }

    #[test]
    fn templates_are_checked_against_the_gateways_and_provider_rules() {
        let e = Config::parse(
            "t.toml",
            r#"
[schedule]
channels = ["lobby"]
[[sms.templates]]
name = "a"
text = "【市政府】{{x}}欢迎"
ids = { dry = "1", nope = "2" }
[[sms.templates]]
name = "b"
text = "{{x}}开放日"
category = "marketing"
[[sms.gateways]]
name = "dry"
kind = "dry-run"
"#,
        )
        .unwrap_err()
        .to_string();
        for want in [
            "sms.templates[0] (a).text: 【】 are not allowed",
            "sms.templates[0] (a).ids: gateway \"dry\" is of kind dry-run",
            "sms.templates[0] (a).ids: no gateway \"nope\"",
            "sms.templates[1] (b).text: a marketing template has no variables",
            "sms.templates[1] (b).text: a marketing template must say how to unsubscribe",
            "sms.templates[1] (b).ids: no gateway has this template",
        ] {
            assert!(e.contains(want), "missing {want:?} in {e}");
        }
    }

    #[test]
    fn import_normalises_dedups_and_reports_each_reject() {
        let csv = "phone,name,lang\n\
                   13800138000,张三,\n\
                   +86 138 0013 8000,dup,\n\
                   008613900139000,Li,en\n\
                   8613700137000,王五,\n\
                   12,bad,\n\
                   13600136000,optout,\n";
        let p = prepare(
            req(csv),
            &cfg(),
            now(),
            &HashSet::from(["+8613600136000".to_string()]),
            None,
        )
        .unwrap();
        let got: Vec<String> = p.messages.iter().map(|m| m.e164()).collect();
        assert_eq!(got, ["+8613800138000", "+8613900139000", "+8613700137000"]);
        assert_eq!(&*p.messages[1].text, "【市政府】Hello Li, welcome");
        assert_eq!(&*p.messages[0].text, "【市政府】张三您好，政务开放日欢迎您");
        let rows: Vec<(usize, &str)> = p
            .rejects
            .iter()
            .map(|r| (r.row, r.reason.as_str()))
            .collect();
        assert_eq!(rows[0], (2, "duplicate of row 1 (+8613800138000)"));
        assert_eq!(rows[1].0, 5);
        assert_eq!(rows[2], (6, "+8613600136000 is on the opt-out list"));
        assert_eq!(p.estimate.ucs2, 3, "the signature makes every text UCS-2");
        assert_eq!(p.estimate.segments, 3);
        assert_eq!(p.spec.gateways, ["dry"]);
        assert_eq!(p.start, Start::Draft);
    }

    /// No row imported: no campaign, so the error itself names the first ten rows and their
    /// reasons, and how many more.
    #[test]
    fn a_list_with_no_good_row_names_its_first_rejected_rows() {
        let mut csv = String::from("phone,name\n");
        for i in 0..12 {
            csv.push_str(&format!("12{i},bad\n"));
        }
        let e = prepare(req(&csv), &cfg(), now(), &HashSet::new(), None).unwrap_err();
        assert_eq!(e.field, "recipients");
        assert!(
            e.message
                .starts_with("no recipient could be imported (12 rejected; row 1: "),
            "{}",
            e.message
        );
        assert!(e.message.contains("; row 10: "), "{}", e.message);
        assert!(!e.message.contains("row 11:"), "{}", e.message);
        assert!(e.message.ends_with("; and 2 more)"), "{}", e.message);
        let one = prepare(req("phone\n12\n"), &cfg(), now(), &HashSet::new(), None).unwrap_err();
        assert!(
            one.message
                .starts_with("no recipient could be imported (1 rejected; row 1: ")
                && !one.message.contains("more"),
            "{}",
            one.message
        );
    }

    #[test]
    fn estimate_counts_long_messages_and_duration() {
        let mut r = req("number,name\n13800138000,x\n13900139000,y\n");
        r.text = "字".repeat(100) + "{{name}}";
        let p = prepare(r, &cfg(), now(), &HashSet::new(), None).unwrap();
        // 5 (signature) + 100 + 1 = 106 UTF-16 units: 2 parts of 67; carrier: ⌈106/67⌉ = 2.
        assert_eq!((p.estimate.segments, p.estimate.carrier_billed), (4, 4));
        assert_eq!(p.estimate.duration_seconds, 0.2);
    }

    #[test]
    fn bad_requests_name_their_field() {
        let mut r = req("number\n13800138000\n");
        r.text = "hi {{name".into();
        assert_eq!(
            prepare(r, &cfg(), now(), &HashSet::new(), None)
                .unwrap_err()
                .field,
            "text"
        );
        let mut r = req("number\n13800138000\n");
        r.gateways = vec!["nope".into()];
        let e = prepare(r, &cfg(), now(), &HashSet::new(), None).unwrap_err();
        assert_eq!(e.field, "gateways");
        assert!(e.message.contains("configured: dry"), "{}", e.message);
        let r = req("name\nx\n");
        assert_eq!(
            prepare(r, &cfg(), now(), &HashSet::new(), None)
                .unwrap_err()
                .field,
            "recipients_csv"
        );
        let mut r = req("number,name\n13800138000,x\n");
        r.start = Some("2020-01-01T00:00:00Z".into());
        assert_eq!(
            prepare(r, &cfg(), now(), &HashSet::new(), None)
                .unwrap_err()
                .field,
            "start"
        );
        let r = req("number\n13800138000\n");
        let e = prepare(r, &cfg(), now(), &HashSet::new(), None).unwrap_err();
        assert_eq!(e.field, "recipients");
        assert!(e.message.contains("no value for {{name}}"), "{}", e.message);
    }

    #[test]
    fn templates_render_and_check() {
        let vars = BTreeMap::from([("a".to_string(), "1".to_string())]);
        assert_eq!(render("x{{a}}y{{ a }}", &vars).unwrap(), "x1y1");
        assert_eq!(placeholders("{{a}} {{b_c}}").unwrap(), ["a", "b_c"]);
        assert!(placeholders("{{}}").is_err());
        assert!(
            valid_sender("12345") && valid_sender("CityHall") && !valid_sender("TooLongSender1")
        );
    }
}
