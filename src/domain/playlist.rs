//! The playlist model. A playlist file is read in two steps: serde turns the JSON into
//! [`PlaylistFile`] (unknown fields refused, syntax errors located by serde_json), then
//! [`Playlist::parse`] checks meaning (cron lines, channels, times, texts) and returns a validated
//! [`Playlist`] or every problem found, each as `file:line:col: message`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, NaiveTime, Utc, Weekday};
use chrono_tz::Tz;
use croner::Cron;
use schemars::JsonSchema;
use serde::Deserialize;

use super::calendar::local_to_utc;
use super::locate::{Step, locate};
use crate::wire::{Tier, valid_name};

/// A playlist file as written (the JSON Schema published by `marquee schema playlist` is made from this).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaylistFile {
    /// Optional link to the schema, for editors.
    #[serde(rename = "$schema", default)]
    pub schema: Option<String>,
    /// Unique id; must equal the file name without `.json`. Letters, digits, `_ - .`.
    pub id: String,
    /// Human title.
    #[serde(default)]
    pub title: String,
    /// `emergency` > `interrupt` > `normal` > `fallback`; the highest active tier replaces lower ones.
    #[serde(default = "default_tier")]
    pub tier: Tier,
    /// Share of airtime among active playlists of the same tier (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// IANA zone for this playlist's schedule (default: the configured zone).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Where it plays.
    pub targets: TargetsFile,
    /// When it plays: any active entry makes the playlist active.
    pub schedule: Vec<ScheduleFile>,
    /// What it shows, in loop order.
    pub items: Vec<ItemFile>,
}

/// Where a playlist plays.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetsFile {
    /// Channels from the configuration (`schedule.channels`).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Individual displays declared in the configuration (`schedule.displays`).
    #[serde(default)]
    pub displays: Vec<String>,
}

/// One schedule entry, of exactly one of three shapes:
/// a range (`from` + `until`), a cron start with a length (`cron` + `for`),
/// or a daily daypart (`start` + `end`, optional `days`; `end` ≤ `start` crosses midnight).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleFile {
    /// Range start: RFC 3339 (`2021-05-15T08:00:00+08:00`), local date-time (`2021-05-15T08:00`) or date.
    #[serde(default)]
    pub from: Option<String>,
    /// Range end (exclusive), same forms as `from`.
    #[serde(default)]
    pub until: Option<String>,
    /// 5-field crontab line (minute hour day-of-month month day-of-week), in the playlist's zone.
    #[serde(default)]
    pub cron: Option<String>,
    /// How long each cron start lasts (`10h`, `90m`, `1h 30m`).
    #[serde(default, rename = "for")]
    pub length: Option<String>,
    /// Daypart days: `mon`…`sun` or ranges like `mon-fri`; empty or absent means every day.
    #[serde(default)]
    pub days: Option<Vec<String>>,
    /// Daypart start, `HH:MM` local.
    #[serde(default)]
    pub start: Option<String>,
    /// Daypart end, `HH:MM` local; at or before `start` means the next day.
    #[serde(default)]
    pub end: Option<String>,
}

/// One slogan.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemFile {
    /// Unique within the playlist.
    pub id: String,
    /// Text per language tag, e.g. `{"zh": "…", "en": "…"}`; at least one, none empty.
    pub text: BTreeMap<String, String>,
    /// Seconds on screen per showing (1–3600, default 10).
    #[serde(default = "default_seconds")]
    pub seconds: u32,
}

fn default_tier() -> Tier {
    Tier::Normal
}
fn default_weight() -> u32 {
    1
}
fn default_seconds() -> u32 {
    10
}

/// A playlist problem with its place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaylistError {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (characters).
    pub column: usize,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
    /// The member it names, as a JSON Pointer (RFC 6901, e.g. `/items/2/seconds`); `None` for
    /// errors of the text itself (syntax, encoding, an unknown field).
    pub pointer: Option<String>,
}

impl fmt::Display for PlaylistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for PlaylistError {}

/// What validation needs from the configuration.
#[derive(Debug, Clone)]
pub struct ValidationContext {
    /// Known channels.
    pub channels: Vec<String>,
    /// Known displays and their channels.
    pub displays: BTreeMap<String, String>,
    /// Zone for playlists that name none.
    pub timezone: Tz,
}

/// When a playlist plays, validated.
#[derive(Debug, Clone)]
pub enum Window {
    /// A fixed range `[from, until)`.
    Range {
        /// Start.
        from: DateTime<Utc>,
        /// End, exclusive.
        until: DateTime<Utc>,
    },
    /// A window of `length` starting at every cron occurrence (in the playlist's zone).
    Cron {
        /// The parsed crontab line.
        cron: Box<Cron>,
        /// Length of each window.
        length: Duration,
    },
    /// A daily local-time window on some weekdays.
    Daypart {
        /// Weekdays it starts on (never empty).
        days: BTreeSet<u32>,
        /// Local start.
        start: NaiveTime,
        /// Local end; at or before `start` means the next day.
        end: NaiveTime,
    },
}

/// A slogan, validated (shared pieces, so timelines can repeat it without copying).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaylistItem {
    /// Unique within the playlist.
    pub id: std::sync::Arc<str>,
    /// Text per language.
    pub text: std::sync::Arc<BTreeMap<String, String>>,
    /// Seconds on screen.
    pub seconds: u32,
}

/// A validated playlist.
#[derive(Debug, Clone)]
pub struct Playlist {
    /// Unique id (the file stem).
    pub id: String,
    /// Human title.
    pub title: String,
    /// Priority tier.
    pub tier: Tier,
    /// Share of voice within the tier.
    pub weight: u32,
    /// Zone its schedule is read in.
    pub timezone: Tz,
    /// Targeted channels.
    pub channels: Vec<String>,
    /// Targeted displays.
    pub displays: Vec<String>,
    /// When it plays.
    pub schedule: Vec<Window>,
    /// What it shows.
    pub items: Vec<PlaylistItem>,
    /// Its last computed active windows (see [`super::calendar::WindowMemo`]).
    pub windows: super::calendar::WindowMemo,
}

const MAX_LENGTH_DAYS: i64 = 31;

struct Problems<'a> {
    file: &'a str,
    src: &'a str,
    list: Vec<PlaylistError>,
}

impl Problems<'_> {
    fn at(&mut self, path: &[Step<'_>], message: impl Into<String>) {
        let (line, column) = locate(self.src, path);
        self.list.push(PlaylistError {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
            pointer: Some(super::locate::pointer(path)),
        });
    }
}

/// The text of a playlist file as Windows editors save it: a leading UTF-8 byte-order mark is
/// dropped (RFC 8259 §8.1 lets a parser ignore it) and CRLF line ends are JSON whitespace. UTF-16
/// (with a byte-order mark, or NUL bytes beside ASCII) and bytes that are not UTF-8 (an "ANSI"
/// or GBK save) are refused with what was found and where, rather than a JSON syntax error.
pub fn source_text<'a>(file: &str, bytes: &'a [u8]) -> Result<&'a str, PlaylistError> {
    let refuse = |line, column, message: String| PlaylistError {
        file: file.to_owned(),
        line,
        column,
        message,
        pointer: None,
    };
    let utf16 = match bytes {
        [0xff, 0xfe, ..] => Some("UTF-16 LE (it starts with the byte-order mark FF FE)"),
        [0xfe, 0xff, ..] => Some("UTF-16 BE (it starts with the byte-order mark FE FF)"),
        [a, 0, ..] if *a != 0 => Some("UTF-16 LE without a byte-order mark (byte 1 is NUL)"),
        [0, b, ..] if *b != 0 => Some("UTF-16 BE without a byte-order mark (byte 0 is NUL)"),
        _ => None,
    };
    if let Some(found) = utf16 {
        return Err(refuse(
            1,
            1,
            format!(
                "the file is {found}; playlists are UTF-8 (RFC 8259 §8.1): save it as \"UTF-8\""
            ),
        ));
    }
    let body = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    std::str::from_utf8(body).map_err(|e| {
        let at = e.valid_up_to();
        let prefix = std::str::from_utf8(&body[..at]).unwrap_or("");
        let (line, column) = super::locate::line_col(prefix, prefix.len());
        let offset = at + (bytes.len() - body.len());
        refuse(
            line,
            column,
            format!(
                "not UTF-8: byte 0x{:02X} at byte offset {offset} is not valid UTF-8 (an ANSI or GBK save?); playlists are UTF-8 (RFC 8259 §8.1): save it as \"UTF-8\"",
                body[at]
            ),
        )
    })
}

impl Playlist {
    /// Reads and validates one playlist. `file` names the file in messages; `stem` is the file
    /// name without `.json`, which the id must equal (`None` skips that check).
    pub fn parse(
        file: &str,
        stem: Option<&str>,
        src: &str,
        ctx: &ValidationContext,
    ) -> Result<Playlist, Vec<PlaylistError>> {
        // A byte-order mark that came through as text (an API body, a stored source).
        let src = src.strip_prefix('\u{feff}').unwrap_or(src);
        let raw: PlaylistFile = serde_json::from_str(src).map_err(|e| {
            vec![PlaylistError {
                file: file.to_owned(),
                line: e.line().max(1),
                column: e.column().max(1),
                message: e
                    .to_string()
                    .split(" at line ")
                    .next()
                    .unwrap_or("")
                    .to_owned(),
                pointer: None,
            }]
        })?;
        let mut p = Problems {
            file,
            src,
            list: Vec::new(),
        };
        check_id(&mut p, &raw.id, stem);
        if raw.weight == 0 {
            p.at(&[Step::Key("weight")], "weight must be at least 1");
        }
        let timezone = match &raw.timezone {
            None => ctx.timezone,
            Some(name) => Tz::from_str(name).unwrap_or_else(|_| {
                p.at(
                    &[Step::Key("timezone")],
                    format!("unknown IANA time zone {name:?} (e.g. \"Asia/Shanghai\")"),
                );
                ctx.timezone
            }),
        };
        check_targets(&mut p, &raw.targets, ctx);
        let schedule = raw
            .schedule
            .iter()
            .enumerate()
            .filter_map(|(i, e)| window(&mut p, i, e, timezone))
            .collect::<Vec<_>>();
        if raw.schedule.is_empty() {
            p.at(
                &[Step::Key("schedule")],
                "schedule is empty: add at least one entry (from/until, cron/for or start/end)",
            );
        }
        let items = check_items(&mut p, &raw.items);
        if !p.list.is_empty() {
            return Err(p.list);
        }
        Ok(Playlist {
            id: raw.id,
            title: raw.title,
            tier: raw.tier,
            weight: raw.weight,
            timezone,
            channels: raw.targets.channels,
            displays: raw.targets.displays,
            schedule,
            items,
            windows: Default::default(),
        })
    }
}

/// The id: a valid name, equal to the file's name (`stem`) when there is a file.
fn check_id(p: &mut Problems<'_>, id: &str, stem: Option<&str>) {
    if !valid_name(id) {
        p.at(
            &[Step::Key("id")],
            format!("id {id:?} must be 1-64 letters, digits, '_', '-' or '.'"),
        );
    } else if let Some(stem) = stem
        && stem != id
    {
        p.at(
            &[Step::Key("id")],
            format!(
                "id {id:?} must equal the file name ({stem:?}): rename the file to {id}.json or change the id"
            ),
        );
    }
}

fn check_targets(p: &mut Problems<'_>, t: &TargetsFile, ctx: &ValidationContext) {
    let targets = Step::Key("targets");
    if t.channels.is_empty() && t.displays.is_empty() {
        p.at(&[targets], "targets names no channel and no display");
    }
    for (i, c) in t.channels.iter().enumerate() {
        if !ctx.channels.contains(c) {
            p.at(
                &[targets, Step::Key("channels"), Step::Index(i)],
                format!(
                    "unknown channel {c:?} (configured: {})",
                    ctx.channels.join(", ")
                ),
            );
        }
    }
    for (i, d) in t.displays.iter().enumerate() {
        if !ctx.displays.contains_key(d) {
            p.at(
                &[targets, Step::Key("displays"), Step::Index(i)],
                format!(
                    "unknown display {d:?}: declare it under [[schedule.displays]] in the config"
                ),
            );
        }
    }
}

fn window(p: &mut Problems<'_>, i: usize, e: &ScheduleFile, tz: Tz) -> Option<Window> {
    let base = [Step::Key("schedule"), Step::Index(i)];
    let at = |k: &'static str| [base[0], base[1], Step::Key(k)];
    let range = e.from.is_some() || e.until.is_some();
    let cron = e.cron.is_some() || e.length.is_some();
    let daypart = e.start.is_some() || e.end.is_some() || e.days.is_some();
    if usize::from(range) + usize::from(cron) + usize::from(daypart) != 1 {
        p.at(
            &base,
            "a schedule entry is one of: {from, until}, {cron, for} or {start, end, days}",
        );
        return None;
    }
    if range {
        let (Some(from), Some(until)) = (&e.from, &e.until) else {
            p.at(&base, "a range needs both \"from\" and \"until\"");
            return None;
        };
        let from_t = parse_instant(from, tz);
        let until_t = parse_instant(until, tz);
        if from_t.is_none() {
            p.at(&at("from"), format!("bad time {from:?}: use RFC 3339 like 2021-05-15T08:00:00+08:00, or a local 2021-05-15T08:00 or 2021-05-15"));
        }
        if until_t.is_none() {
            p.at(&at("until"), format!("bad time {until:?}: use RFC 3339 like 2021-05-16T00:00:00+08:00, or a local 2021-05-16T00:00 or 2021-05-16"));
        }
        let (from, until) = (from_t?, until_t?);
        if until <= from {
            p.at(&at("until"), "\"until\" must be after \"from\"");
            return None;
        }
        return Some(Window::Range { from, until });
    }
    if cron {
        let (Some(line), Some(length)) = (&e.cron, &e.length) else {
            p.at(&base, "a cron entry needs both \"cron\" and \"for\"");
            return None;
        };
        let parsed = match super::cron::parse(line) {
            Ok(c) => Some(c),
            Err(err) => {
                p.at(&at("cron"), err);
                None
            }
        };
        let length = parse_length(p, &at("for"), length);
        return Some(Window::Cron {
            cron: Box::new(parsed?),
            length: length?,
        });
    }
    let (Some(start), Some(end)) = (&e.start, &e.end) else {
        p.at(&base, "a daypart needs both \"start\" and \"end\" (HH:MM)");
        return None;
    };
    let start_t = NaiveTime::parse_from_str(start, "%H:%M").ok();
    let end_t = NaiveTime::parse_from_str(end, "%H:%M").ok();
    if start_t.is_none() {
        p.at(
            &at("start"),
            format!("bad time of day {start:?}: use HH:MM, e.g. 07:00"),
        );
    }
    if end_t.is_none() {
        p.at(
            &at("end"),
            format!("bad time of day {end:?}: use HH:MM, e.g. 09:30"),
        );
    }
    let days = parse_days(p, &at("days"), e.days.as_deref().unwrap_or_default());
    Some(Window::Daypart {
        days: days?,
        start: start_t?,
        end: end_t?,
    })
}

fn parse_length(p: &mut Problems<'_>, path: &[Step<'_>], s: &str) -> Option<Duration> {
    let d = humantime::parse_duration(s)
        .ok()
        .and_then(|d| Duration::from_std(d).ok());
    match d {
        Some(d) if d > Duration::zero() && d <= Duration::days(MAX_LENGTH_DAYS) => Some(d),
        _ => {
            p.at(
                path,
                format!("bad length {s:?}: a duration like 10h, 90m or 1h 30m, up to {MAX_LENGTH_DAYS} days"),
            );
            None
        }
    }
}

/// Reads `2021-05-15T08:00:00+08:00`, a local `2021-05-15T08:00[:00]` in `tz`, or a date (its local midnight).
pub fn parse_instant(s: &str, tz: Tz) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M"))
        .or_else(|_| NaiveDate::parse_from_str(s, "%Y-%m-%d").map(|d| d.and_time(NaiveTime::MIN)))
        .ok()?;
    Some(local_to_utc(tz, naive))
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn parse_days(p: &mut Problems<'_>, path: &[Step<'_>], days: &[String]) -> Option<BTreeSet<u32>> {
    let day = |s: &str| {
        DAYS.iter()
            .position(|d| d.eq_ignore_ascii_case(s.trim()))
            .map(|i| i as u32)
    };
    let mut set = BTreeSet::new();
    let mut ok = true;
    for (i, d) in days.iter().enumerate() {
        let parsed = match d.split_once('-') {
            Some((a, b)) => day(a).zip(day(b)).map(|(a, b)| {
                // A range may wrap the week: "fri-mon".
                let mut v = vec![a];
                let mut x = a;
                while x != b {
                    x = (x + 1) % 7;
                    v.push(x);
                }
                v
            }),
            None => day(d).map(|x| vec![x]),
        };
        match parsed {
            Some(v) => set.extend(v),
            None => {
                let mut at = path.to_vec();
                at.push(Step::Index(i));
                p.at(
                    &at,
                    format!("bad day {d:?}: use mon, tue, wed, thu, fri, sat, sun or a range like mon-fri"),
                );
                ok = false;
            }
        }
    }
    if set.is_empty() {
        set.extend(0..7);
    }
    ok.then_some(set)
}

/// Weekday index as used in [`Window::Daypart::days`] (Monday = 0).
pub fn day_index(d: Weekday) -> u32 {
    d.num_days_from_monday()
}

fn check_items(p: &mut Problems<'_>, items: &[ItemFile]) -> Vec<PlaylistItem> {
    if items.is_empty() {
        p.at(
            &[Step::Key("items")],
            "items is empty: add at least one slogan",
        );
    }
    let mut seen = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let at = |k| [Step::Key("items"), Step::Index(i), Step::Key(k)];
        if item.id.trim().is_empty() {
            p.at(&at("id"), "item id is empty");
        } else if !seen.insert(item.id.as_str()) {
            p.at(
                &at("id"),
                format!("item id {:?} is used twice in this playlist", item.id),
            );
        }
        if item.text.is_empty() {
            p.at(
                &at("text"),
                "text has no language: add e.g. {\"zh\": \"…\", \"en\": \"…\"}",
            );
        }
        for (lang, text) in &item.text {
            let lang_ok = !lang.is_empty()
                && lang.len() <= 35
                && lang.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            let path = [
                Step::Key("items"),
                Step::Index(i),
                Step::Key("text"),
                Step::Key(lang),
            ];
            if !lang_ok {
                p.at(
                    &path,
                    format!("bad language tag {lang:?}: use a tag like zh, en or zh-Hant"),
                );
            }
            if text.trim().is_empty() {
                p.at(&path, format!("text for language {lang:?} is empty"));
            }
        }
        if !(1..=3600).contains(&item.seconds) {
            p.at(&at("seconds"), "seconds must be between 1 and 3600");
        }
    }
    items
        .iter()
        .map(|i| PlaylistItem {
            id: i.id.as_str().into(),
            text: std::sync::Arc::new(i.text.clone()),
            seconds: i.seconds,
        })
        .collect()
}

/// The JSON Schema of playlist files, pretty-printed.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(PlaylistFile);
    serde_json::to_string_pretty(&schema).expect("a schema always serialises") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn ctx() -> ValidationContext {
        ValidationContext {
            channels: vec!["lobby".into(), "subway".into(), "bus".into()],
            displays: [("lobby-1".to_string(), "lobby".to_string())].into(),
            timezone: chrono_tz::Asia::Shanghai,
        }
    }

    const GOOD: &str = r#"{
  "id": "p",
  "targets": {"channels": ["lobby"]},
  "schedule": [
    {"from": "2021-05-15", "until": "2021-05-16T00:00:00+08:00"},
    {"cron": "0 8 * * MON-FRI", "for": "10h"},
    {"days": ["sat-sun"], "start": "22:00", "end": "06:00"}
  ],
  "items": [{"id": "s1", "text": {"zh": "你好", "en": "Hello"}}]
}"#;

    fn errors(src: &str) -> Vec<String> {
        Playlist::parse("p.json", Some("p"), src, &ctx())
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn good_playlist_parses_with_defaults() {
        let p = Playlist::parse("p.json", Some("p"), GOOD, &ctx()).unwrap();
        assert_eq!(p.tier, Tier::Normal);
        assert_eq!(p.weight, 1);
        assert_eq!(p.items[0].seconds, 10);
        assert_eq!(p.schedule.len(), 3);
        let Window::Range { from, .. } = &p.schedule[0] else {
            panic!()
        };
        assert_eq!(from.to_rfc3339(), "2021-05-14T16:00:00+00:00");
        let Window::Daypart { days, .. } = &p.schedule[2] else {
            panic!()
        };
        assert_eq!(days.iter().copied().collect::<Vec<_>>(), vec![5, 6]);
    }

    #[test]
    fn bad_json_is_located() {
        let e = errors("{\n  \"id\": \"p\",\n  oops\n}");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("p.json:3:3: "), "{e:?}");
    }

    #[test]
    fn unknown_field_is_located() {
        let src = GOOD.replace("\"targets\"", "\"colour\": 1,\n  \"targets\"");
        let e = errors(&src);
        assert!(e[0].starts_with("p.json:3:"), "{e:?}");
        assert!(e[0].contains("unknown field `colour`"), "{e:?}");
    }

    #[test]
    fn bad_cron_is_located() {
        let e = errors(&GOOD.replace("0 8 * * MON-FRI", "0 25 * * MON-FRI"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("p.json:6:14: bad cron line"), "{e:?}");
    }

    #[test]
    fn six_field_cron_is_refused() {
        let e = errors(&GOOD.replace("0 8 * * MON-FRI", "0 0 8 * * MON-FRI"));
        assert!(e[0].contains("bad cron line"), "{e:?}");
    }

    #[test]
    fn unknown_channel_is_located() {
        let e = errors(&GOOD.replace("[\"lobby\"]", "[\"lobby\", \"tram\"]"));
        assert_eq!(
            e,
            vec!["p.json:3:37: unknown channel \"tram\" (configured: lobby, subway, bus)"]
        );
    }

    #[test]
    fn empty_text_is_located() {
        let e = errors(&GOOD.replace("\"Hello\"", "\"  \""));
        assert_eq!(e, vec!["p.json:9:53: text for language \"en\" is empty"]);
    }

    #[test]
    fn id_must_match_file_name() {
        let e = Playlist::parse("q.json", Some("q"), GOOD, &ctx()).unwrap_err();
        assert!(e[0].message.contains("must equal the file name"));
        assert_eq!((e[0].line, e[0].column), (2, 9));
    }

    #[test]
    fn mixed_and_half_entries_are_refused() {
        let e = errors(&GOOD.replace("\"for\": \"10h\"", "\"for\": \"10h\", \"start\": \"07:00\""));
        assert!(e[0].contains("one of"), "{e:?}");
        let e = errors(&GOOD.replace(", \"for\": \"10h\"", ""));
        assert!(e[0].contains("needs both"), "{e:?}");
        let e = errors(&GOOD.replace("\"for\": \"10h\"", "\"for\": \"0s\""));
        assert!(e[0].contains("bad length"), "{e:?}");
        let e = errors(&GOOD.replace("2021-05-16T00:00:00+08:00", "2021-05-14"));
        assert!(e[0].contains("must be after"), "{e:?}");
        let e = errors(&GOOD.replace("sat-sun", "someday"));
        assert!(e[0].contains("bad day"), "{e:?}");
        let e = errors(&GOOD.replace("22:00", "25:00"));
        assert!(e[0].contains("bad time of day"), "{e:?}");
    }

    #[test]
    fn several_problems_are_all_reported() {
        let src = GOOD
            .replace("[\"lobby\"]", "[\"tram\"]")
            .replace("\"Hello\"", "\"\"");
        assert_eq!(errors(&src).len(), 2);
    }

    #[test]
    fn schema_names_the_fields() {
        let s = json_schema();
        for f in [
            "\"schedule\"",
            "\"items\"",
            "\"cron\"",
            "\"for\"",
            "\"tier\"",
        ] {
            assert!(s.contains(f), "{f}");
        }
    }
}

/// Builders shared by the domain's unit tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A one-item playlist for channel `lobby` with the given schedule entries (JSON, comma separated).
    pub fn playlist_with(tz: &str, schedule: &str) -> Playlist {
        custom("p", "normal", 1, tz, schedule, &[("s1", 10)])
    }

    /// A playlist for channel `lobby` with items `(id, seconds)`.
    pub fn custom(
        id: &str,
        tier: &str,
        weight: u32,
        tz: &str,
        schedule: &str,
        items: &[(&str, u32)],
    ) -> Playlist {
        let items: Vec<String> = items
            .iter()
            .map(|(i, s)| {
                format!(r#"{{"id": "{i}", "text": {{"en": "{id} {i}"}}, "seconds": {s}}}"#)
            })
            .collect();
        let src = format!(
            r#"{{"id": "{id}", "tier": "{tier}", "weight": {weight}, "timezone": "{tz}",
                "targets": {{"channels": ["lobby"]}}, "schedule": [{schedule}], "items": [{}]}}"#,
            items.join(",")
        );
        let ctx = ValidationContext {
            channels: vec!["lobby".into()],
            displays: BTreeMap::new(),
            timezone: chrono_tz::UTC,
        };
        Playlist::parse("test.json", None, &src, &ctx).unwrap_or_else(|e| panic!("{e:?}"))
    }
}
