//! Quiet hours: the local window in which bulk SMS may be sent (e.g. 08:00–21:00 in the
//! recipient's zone). Pure: takes `now`, answers whether sending is allowed and, if not, when.

use chrono::{DateTime, Duration, NaiveTime, Utc};
use chrono_tz::Tz;

use super::calendar::local_to_utc;

/// Sending allowed from `start` to `end` local time (`end` ≤ `start` crosses midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWindow {
    /// Local start.
    pub start: NaiveTime,
    /// Local end (exclusive).
    pub end: NaiveTime,
}

impl SendWindow {
    /// Whether `t` (in zone `tz`) is inside the window.
    pub fn allows(&self, t: DateTime<Utc>, tz: Tz) -> bool {
        let local = t.with_timezone(&tz).time();
        if self.start < self.end {
            self.start <= local && local < self.end
        } else {
            local >= self.start || local < self.end
        }
    }

    /// The first instant at or after `t` when sending is allowed.
    pub fn next_allowed(&self, t: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        if self.allows(t, tz) {
            return t;
        }
        let date = t.with_timezone(&tz).date_naive();
        [date, date + Duration::days(1)]
            .into_iter()
            .map(|d| local_to_utc(tz, d.and_time(self.start)))
            .find(|s| *s > t)
            .unwrap_or(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn day() -> SendWindow {
        SendWindow {
            start: NaiveTime::from_hms_opt(8, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(21, 0, 0).unwrap(),
        }
    }

    #[test]
    fn daytime_window_in_the_recipients_zone() {
        let sh = chrono_tz::Asia::Shanghai;
        assert!(day().allows(t("2021-05-15T08:00:00+08:00"), sh));
        assert!(!day().allows(t("2021-05-15T21:00:00+08:00"), sh));
        assert!(!day().allows(t("2021-05-15T07:59:59+08:00"), sh));
        assert_eq!(
            day().next_allowed(t("2021-05-15T22:30:00+08:00"), sh),
            t("2021-05-16T08:00:00+08:00")
        );
        assert_eq!(
            day().next_allowed(t("2021-05-15T06:00:00+08:00"), sh),
            t("2021-05-15T08:00:00+08:00")
        );
        // 12:00 UTC is 20:00 in Shanghai (allowed) but 08:00 in New York (allowed) …
        let ny = chrono_tz::America::New_York;
        assert!(day().allows(t("2021-05-15T12:00:00Z"), ny));
        // … and 02:00 UTC is 10:00 in Shanghai but 22:00 in New York.
        assert!(day().allows(t("2021-05-15T02:00:00Z"), sh));
        assert!(!day().allows(t("2021-05-15T02:00:00Z"), ny));
    }

    #[test]
    fn window_across_midnight() {
        let night = SendWindow {
            start: NaiveTime::from_hms_opt(22, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(2, 0, 0).unwrap(),
        };
        let utc = chrono_tz::UTC;
        assert!(night.allows(t("2021-05-15T23:00:00Z"), utc));
        assert!(night.allows(t("2021-05-16T01:00:00Z"), utc));
        assert!(!night.allows(t("2021-05-16T03:00:00Z"), utc));
        assert_eq!(
            night.next_allowed(t("2021-05-16T03:00:00Z"), utc),
            t("2021-05-16T22:00:00Z")
        );
    }
}
