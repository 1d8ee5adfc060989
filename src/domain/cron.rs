//! Playlist cron lines: the one parser (5 fields, as crontab(5): minute hour day-of-month month
//! day-of-week, no seconds), a plain-language description in English or Chinese (croner's
//! describer with a Chinese phrase book), and the next starts in a zone with the days whose UTC
//! offset changes (daylight saving) marked, for the console's schedule builder.

use chrono::{DateTime, Duration, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::describe::Language;
use croner::parser::{CronParser, Seconds};

/// Parses a 5-field cron line; the error names the line and the fields.
pub fn parse(line: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .build()
        .parse(line)
        .map_err(|err| {
            format!(
                "bad cron line {line:?}: {err} (5 fields: minute hour day-of-month month day-of-week)"
            )
        })
}

/// The line in plain words: `en` (croner's English) or `zh`.
pub fn describe(cron: &Cron, lang: &str) -> String {
    if lang == "zh" {
        // croner joins parts with ", " and ends with "."; Chinese punctuation instead.
        let s = cron
            .describe_lang(Chinese)
            .replace(", 和 ", "和")
            .replace(", ", "，");
        s.strip_suffix('.').map_or(s.clone(), |s| format!("{s}。"))
    } else {
        cron.describe()
    }
}

/// One start of a cron line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Start {
    /// The instant (RFC 3339 with the zone's offset).
    pub at: String,
    /// The same in the zone's wall-clock time, `YYYY-MM-DD HH:MM`.
    pub local: String,
    /// Set when the zone's UTC offset changes on that local day (a daylight-saving day), e.g.
    /// `+01:00 → +02:00`: wall-clock times near the change are skipped or repeated.
    pub offset_change: Option<String>,
}

/// The next `n` starts after `after`, in `tz`.
pub fn next_starts(cron: &Cron, tz: Tz, after: DateTime<Utc>, n: usize) -> Vec<Start> {
    cron.iter_after(after.with_timezone(&tz))
        .take(n)
        .map(|t| Start {
            at: t.to_rfc3339(),
            local: t.format("%Y-%m-%d %H:%M").to_string(),
            offset_change: offset_change(tz, t.date_naive()),
        })
        .collect()
}

/// `+01:00 → +02:00` when the local day is not 24 hours long (a daylight-saving day): the offset
/// just before the day begins, then at the next day's start. A day whose midnight is skipped
/// (America/Santiago) begins at the first instant after the gap.
fn offset_change(tz: Tz, day: chrono::NaiveDate) -> Option<String> {
    let start = |d: chrono::NaiveDate| {
        let midnight = d.and_hms_opt(0, 0, 0)?;
        Some(crate::domain::calendar::local_to_utc(tz, midnight))
    };
    let (a, b) = (start(day)?, start(day.succ_opt()?)?);
    if b - a == Duration::hours(24) {
        return None;
    }
    let before = tz
        .offset_from_utc_datetime(&(a - Duration::seconds(1)).naive_utc())
        .fix();
    let after = tz.offset_from_utc_datetime(&b.naive_utc()).fix();
    Some(format!("{before} → {after}"))
}

/// croner's describer with Chinese phrases (`describe_lang`).
#[derive(Clone, Copy)]
struct Chinese;

impl Language for Chinese {
    fn every_minute(&self) -> &'static str {
        "每分钟"
    }
    fn every_second_phrase(&self) -> &'static str {
        "每秒"
    }
    fn every_x_minutes(&self, s: u16) -> String {
        format!("每 {s} 分钟")
    }
    fn every_x_seconds(&self, s: u16) -> String {
        format!("每 {s} 秒")
    }
    fn every_x_hours(&self, s: u16) -> String {
        format!("每 {s} 小时")
    }
    fn every_minute_of_every_x_hours(&self, s: u16) -> String {
        format!("每 {s} 小时中的每分钟")
    }
    fn at_time(&self, time: &str) -> String {
        time.to_owned()
    }
    fn at_time_and_every_x_seconds(&self, time: &str, step: u16) -> String {
        format!("{time}，每 {step} 秒")
    }
    fn at_time_at_second(&self, time: &str, second: &str) -> String {
        format!("{time} 第 {second} 秒")
    }
    fn at_phrase(&self, phrase: &str) -> String {
        phrase.to_owned()
    }
    fn on_phrase(&self, phrase: &str) -> String {
        phrase.to_owned()
    }
    fn in_phrase(&self, phrase: &str) -> String {
        phrase.to_owned()
    }
    fn second_phrase(&self, s: &str) -> String {
        format!("第 {s} 秒")
    }
    fn minute_phrase(&self, s: &str) -> String {
        format!("第 {s} 分")
    }
    fn minute_past_every_hour_phrase(&self, s: &str) -> String {
        format!("每小时的{s}")
    }
    fn hour_phrase(&self, s: &str) -> String {
        format!("{s} 时")
    }
    fn year_phrase(&self, s: &str) -> String {
        format!("{s} 年")
    }
    fn day_phrase(&self, s: &str) -> String {
        format!("每月 {s} 日")
    }
    fn the_last_day_of_the_month(&self) -> &'static str {
        "每月最后一天"
    }
    fn the_weekday_nearest_day(&self, day: &str) -> String {
        format!("离 {day} 日最近的工作日")
    }
    fn the_last_weekday_of_the_month(&self, day: &str) -> String {
        format!("每月最后一个{day}")
    }
    fn the_nth_weekday_of_the_month(&self, n: u8, day: &str) -> String {
        format!("每月第 {n} 个{day}")
    }
    fn dom_and_dow_if_also(&self, dow: &str) -> String {
        format!("（且为{dow}）")
    }
    fn dom_and_dow_if_also_one_of(&self, dow: &str) -> String {
        format!("（且为{dow}之一）")
    }
    fn list_conjunction_and(&self) -> &'static str {
        "和"
    }
    fn list_conjunction_or(&self) -> &'static str {
        "或"
    }
    fn list_conjunction_and_comma(&self) -> &'static str {
        "和"
    }
    fn day_of_week_names(&self) -> [&'static str; 7] {
        [
            "星期日",
            "星期一",
            "星期二",
            "星期三",
            "星期四",
            "星期五",
            "星期六",
        ]
    }
    fn month_names(&self) -> [&'static str; 12] {
        [
            "一月",
            "二月",
            "三月",
            "四月",
            "五月",
            "六月",
            "七月",
            "八月",
            "九月",
            "十月",
            "十一月",
            "十二月",
        ]
    }
    fn every_past_phrase(&self, every: &str, hours: &str) -> String {
        format!("{hours}内{every}")
    }
    fn past_hour_phrase(&self, s: &str) -> String {
        format!("{s} 时")
    }
    fn every_x_months(&self, step: u16) -> String {
        format!("每 {step} 个月")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn describes_in_both_languages() {
        let c = parse("30 9 * * 1-5").unwrap();
        assert_eq!(
            describe(&c, "en"),
            "At 09:30, on Monday, Tuesday, Wednesday, Thursday, and Friday."
        );
        assert_eq!(
            describe(&c, "zh"),
            "09:30，星期一，星期二，星期三，星期四和星期五。"
        );
        let c = parse("0 8 1 5 *").unwrap();
        assert_eq!(describe(&c, "zh"), "08:00，每月 1 日，五月。");
        assert!(parse("30 9 * *").unwrap_err().contains("5 fields"));
        assert!(parse("0 0 0 * * *").is_err(), "seconds are not allowed");
    }

    #[test]
    fn starts_on_the_spring_forward_day_in_berlin_are_marked() {
        // Europe/Berlin goes from +01:00 to +02:00 at 02:00 local on 2026-03-29 (EU rule: the
        // last Sunday of March, 01:00 UTC).
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let c = parse("0 9 * * *").unwrap();
        let s = next_starts(&c, tz, utc("2026-03-27T12:00:00Z"), 3);
        let local: Vec<_> = s.iter().map(|s| s.local.as_str()).collect();
        assert_eq!(
            local,
            ["2026-03-28 09:00", "2026-03-29 09:00", "2026-03-30 09:00"]
        );
        assert_eq!(s[0].offset_change, None);
        assert_eq!(s[1].offset_change.as_deref(), Some("+01:00 → +02:00"));
        assert_eq!(s[1].at, "2026-03-29T09:00:00+02:00");
        assert_eq!(s[2].offset_change, None);
    }

    #[test]
    fn a_skipped_midnight_marks_its_own_day() {
        // America/Santiago moves from -04:00 to -03:00 at 00:00 local on 2026-09-06 (Chile's
        // rule: the first Sunday of September); that day has 23 hours, the day before 24.
        let tz: Tz = "America/Santiago".parse().unwrap();
        let c = parse("0 9 * * *").unwrap();
        let s = next_starts(&c, tz, utc("2026-09-04T14:00:00Z"), 3);
        assert_eq!(s[0].local, "2026-09-05 09:00");
        assert_eq!(s[0].offset_change, None);
        assert_eq!(s[1].local, "2026-09-06 09:00");
        assert_eq!(s[1].offset_change.as_deref(), Some("-04:00 → -03:00"));
        assert_eq!(s[2].offset_change, None);
    }

    #[test]
    fn shanghai_has_no_offset_change() {
        let tz: Tz = "Asia/Shanghai".parse().unwrap();
        let c = parse("0 8 * * 6").unwrap();
        let s = next_starts(&c, tz, utc("2026-11-30T00:00:00Z"), 5);
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].at, "2026-12-05T08:00:00+08:00");
        assert!(s.iter().all(|s| s.offset_change.is_none()));
    }
}
