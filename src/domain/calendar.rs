//! The calendar: when is a playlist active between two instants. Local times are read in the
//! playlist's IANA zone. DST rules: a local time that falls in a spring-forward gap starts at the
//! first valid instant after the gap; a local time that occurs twice in a fall-back overlap means
//! its first occurrence. Cron starts follow croner, which applies the same rules.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Direction;

use super::playlist::{Playlist, Window, day_index};

/// A half-open time window `[start, end)`.
pub type Span = (DateTime<Utc>, DateTime<Utc>);

/// Upper bound on cron occurrences expanded per entry and horizon (a `* * * * *` line over 48 h
/// is 2,880); protects the resolver from pathological lines.
const MAX_OCCURRENCES: usize = 100_000;

/// The instant of a local date-time in `tz`, by the DST rules above.
pub fn local_to_utc(tz: Tz, naive: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            // In a gap: the first minute after it that exists. Gaps are at most a few hours.
            (1..=24 * 60)
                .find_map(|m| {
                    tz.from_local_datetime(&(naive + Duration::minutes(m)))
                        .earliest()
                })
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|| Utc.from_utc_datetime(&naive))
        }
    }
}

/// The windows in which `playlist` is active within `[from, until)`: sorted, merged where they
/// overlap or touch, and clipped to the range.
pub fn active_windows(
    playlist: &Playlist,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> std::sync::Arc<[Span]> {
    let mut memo = playlist.windows.0.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((a, b, spans)) = &*memo
        && (*a, *b) == (from, until)
    {
        return spans.clone();
    }
    let mut raw = Vec::new();
    for w in &playlist.schedule {
        entry_windows(w, playlist.timezone, from, until, &mut raw);
    }
    let spans: std::sync::Arc<[Span]> = merge(raw, from, until).into();
    *memo = Some((from, until, spans.clone()));
    spans
}

/// A playlist's last computed windows with the range they were computed for. Resolving every
/// channel over the same horizon then walks each playlist's cron lines once, not once per
/// channel it targets. Not part of the playlist's identity: a clone starts empty.
#[derive(Default)]
pub struct WindowMemo(std::sync::Mutex<Option<Memo>>);

/// The range asked for and the windows found in it.
type Memo = (DateTime<Utc>, DateTime<Utc>, std::sync::Arc<[Span]>);

impl Clone for WindowMemo {
    fn clone(&self) -> Self {
        WindowMemo::default()
    }
}

impl std::fmt::Debug for WindowMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WindowMemo")
    }
}

fn entry_windows(
    w: &Window,
    tz: Tz,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    out: &mut Vec<Span>,
) {
    match w {
        Window::Range { from: a, until: b } => out.push((*a, *b)),
        Window::Cron { cron, length } => {
            let start = (from - *length).with_timezone(&tz);
            for t in cron
                .iter_from(start, Direction::Forward)
                .take(MAX_OCCURRENCES)
            {
                let t = t.with_timezone(&Utc);
                if t >= until {
                    break;
                }
                out.push((t, t + *length));
            }
        }
        Window::Daypart { days, start, end } => {
            // A daypart that started yesterday may still run today.
            let first = from.with_timezone(&tz).date_naive() - Duration::days(1);
            let last = until.with_timezone(&tz).date_naive();
            let mut d = first;
            while d <= last {
                if days.contains(&day_index(d.weekday())) {
                    let a = local_to_utc(tz, d.and_time(*start));
                    let end_day = if end > start {
                        d
                    } else {
                        d + Duration::days(1)
                    };
                    let b = local_to_utc(tz, end_day.and_time(*end));
                    if b > a {
                        out.push((a, b));
                    }
                }
                d += Duration::days(1);
            }
        }
    }
}

fn merge(mut raw: Vec<Span>, from: DateTime<Utc>, until: DateTime<Utc>) -> Vec<Span> {
    raw.sort();
    let mut out: Vec<Span> = Vec::new();
    for (a, b) in raw {
        let (a, b) = (a.max(from), b.min(until));
        if a >= b {
            continue;
        }
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::playlist::tests_support::playlist_with;
    use chrono::NaiveDate;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn windows(tz: &str, schedule: &str, from: &str, until: &str) -> Vec<(String, String)> {
        let p = playlist_with(tz, schedule);
        active_windows(&p, utc(from), utc(until))
            .iter()
            .map(|(a, b)| (a.to_rfc3339(), b.to_rfc3339()))
            .collect()
    }

    fn pair(a: &str, b: &str) -> (String, String) {
        (utc(a).to_rfc3339(), utc(b).to_rfc3339())
    }

    #[test]
    fn gap_moves_to_first_valid_instant() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let naive = NaiveDate::from_ymd_opt(2021, 3, 28)
            .unwrap()
            .and_hms_opt(2, 30, 0)
            .unwrap();
        assert_eq!(local_to_utc(tz, naive), utc("2021-03-28T03:00:00+02:00"));
    }

    #[test]
    fn overlap_takes_first_occurrence() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let naive = NaiveDate::from_ymd_opt(2021, 11, 7)
            .unwrap()
            .and_hms_opt(1, 30, 0)
            .unwrap();
        assert_eq!(local_to_utc(tz, naive), utc("2021-11-07T01:30:00-04:00"));
    }

    #[test]
    fn daily_cron_on_spring_forward_day_in_berlin() {
        // 02:30 does not exist on 2021-03-28: it runs once, at 03:00 CEST, and lasts an hour.
        let w = windows(
            "Europe/Berlin",
            r#"{"cron": "30 2 * * *", "for": "1h"}"#,
            "2021-03-27T12:00:00+01:00",
            "2021-03-29T12:00:00+02:00",
        );
        assert_eq!(
            w,
            vec![
                pair("2021-03-28T03:00:00+02:00", "2021-03-28T04:00:00+02:00"),
                pair("2021-03-29T02:30:00+02:00", "2021-03-29T03:30:00+02:00"),
            ]
        );
    }

    #[test]
    fn daily_cron_on_fall_back_day_in_new_york_runs_once() {
        let w = windows(
            "America/New_York",
            r#"{"cron": "30 1 * * *", "for": "10m"}"#,
            "2021-11-07T00:00:00-04:00",
            "2021-11-07T12:00:00-05:00",
        );
        assert_eq!(
            w,
            vec![pair(
                "2021-11-07T01:30:00-04:00",
                "2021-11-07T01:40:00-04:00"
            )]
        );
    }

    #[test]
    fn daypart_across_midnight_and_dst_keeps_wall_clock() {
        // 22:00 → 06:00 across the Berlin fall-back night lasts 9 real hours.
        let w = windows(
            "Europe/Berlin",
            r#"{"days": ["sat"], "start": "22:00", "end": "06:00"}"#,
            "2021-10-30T12:00:00+02:00",
            "2021-11-01T00:00:00+01:00",
        );
        assert_eq!(
            w,
            vec![pair(
                "2021-10-30T22:00:00+02:00",
                "2021-10-31T06:00:00+01:00"
            )]
        );
    }

    #[test]
    fn daypart_started_before_range_is_clipped() {
        let w = windows(
            "Asia/Shanghai",
            r#"{"start": "22:00", "end": "02:00"}"#,
            "2021-05-15T01:00:00+08:00",
            "2021-05-15T23:00:00+08:00",
        );
        assert_eq!(
            w,
            vec![
                pair("2021-05-15T01:00:00+08:00", "2021-05-15T02:00:00+08:00"),
                pair("2021-05-15T22:00:00+08:00", "2021-05-15T23:00:00+08:00"),
            ]
        );
    }

    #[test]
    fn leap_day_cron() {
        let w = windows(
            "Asia/Shanghai",
            r#"{"cron": "0 9 29 2 *", "for": "2h"}"#,
            "2023-01-01T00:00:00+08:00",
            "2024-12-31T00:00:00+08:00",
        );
        assert_eq!(
            w,
            vec![pair(
                "2024-02-29T09:00:00+08:00",
                "2024-02-29T11:00:00+08:00"
            )]
        );
    }

    #[test]
    fn cron_window_started_before_range_is_included() {
        let w = windows(
            "Asia/Shanghai",
            r#"{"cron": "0 8 * * *", "for": "10h"}"#,
            "2021-05-15T09:00:00+08:00",
            "2021-05-15T12:00:00+08:00",
        );
        assert_eq!(
            w,
            vec![pair(
                "2021-05-15T09:00:00+08:00",
                "2021-05-15T12:00:00+08:00"
            )]
        );
    }

    #[test]
    fn overlapping_entries_merge() {
        let w = windows(
            "Asia/Shanghai",
            r#"{"start": "08:00", "end": "10:00"}, {"start": "09:00", "end": "11:00"}, {"from": "2021-05-15T11:00", "until": "2021-05-15T12:00"}"#,
            "2021-05-15T00:00:00+08:00",
            "2021-05-15T23:00:00+08:00",
        );
        assert_eq!(
            w,
            vec![pair(
                "2021-05-15T08:00:00+08:00",
                "2021-05-15T12:00:00+08:00"
            )]
        );
    }

    #[test]
    fn weekday_dayparts_skip_weekends() {
        // 2021-05-15 is a Saturday.
        let w = windows(
            "Asia/Shanghai",
            r#"{"days": ["mon-fri"], "start": "07:00", "end": "09:00"}"#,
            "2021-05-14T00:00:00+08:00",
            "2021-05-18T00:00:00+08:00",
        );
        assert_eq!(
            w,
            vec![
                pair("2021-05-14T07:00:00+08:00", "2021-05-14T09:00:00+08:00"),
                pair("2021-05-17T07:00:00+08:00", "2021-05-17T09:00:00+08:00"),
            ]
        );
    }
}
