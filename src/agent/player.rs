//! What the screen shows at an instant. Pure: takes the verified timelines, the alert, the local
//! fallback, the language policy and `now`; returns a [`Frame`] and when it ends. The position in
//! a loop is derived from the clock (time since the segment began), so every screen of a channel
//! shows the same item at the same moment, and a restarted agent resumes where it should be.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::wire::alert::Alert;
use crate::wire::{Tier, Timeline};

/// Which language to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LanguagePolicy {
    /// Each showing takes the next language of the list (e.g. zh, en, zh, …).
    Alternate(Vec<String>),
    /// Always this language (falling back to any the item has).
    Fixed(String),
}

impl LanguagePolicy {
    /// The language for showing number `slot` of an item whose texts are `text`.
    fn pick<'a>(
        &self,
        text: &'a BTreeMap<String, String>,
        slot: u64,
    ) -> Option<(&'a str, &'a str)> {
        let want: Vec<&str> = match self {
            LanguagePolicy::Alternate(langs) => {
                let have: Vec<&str> = langs
                    .iter()
                    .map(String::as_str)
                    .filter(|l| text.contains_key(*l))
                    .collect();
                if have.is_empty() {
                    vec![]
                } else {
                    vec![have[(slot % have.len() as u64) as usize]]
                }
            }
            LanguagePolicy::Fixed(l) => vec![l.as_str()],
        };
        want.into_iter()
            .find_map(|l| text.get_key_value(l))
            .or_else(|| text.iter().next())
            .map(|(l, t)| (l.as_str(), t.as_str()))
    }
}

/// What kind of content a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    /// From the schedule.
    Timeline,
    /// An emergency alert.
    Alert,
    /// The agent's local fallback (nothing scheduled, or no valid timeline).
    Fallback,
}

/// One thing on screen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// Kind.
    pub kind: FrameKind,
    /// Item id (alert id for alerts).
    pub item: String,
    /// Playlist id (`alert` / `fallback` for the others).
    pub playlist: String,
    /// Language shown.
    pub lang: String,
    /// Text shown.
    pub text: String,
    /// Tier of the segment, for styling.
    pub tier: Option<Tier>,
    /// When this showing began.
    pub start: DateTime<Utc>,
    /// When it ends (the next frame starts).
    pub until: DateTime<Utc>,
}

/// The agent's local fallback content.
#[derive(Debug, Clone)]
pub struct Fallback {
    /// Text per language.
    pub text: BTreeMap<String, String>,
    /// Seconds per showing (languages alternate per showing).
    pub seconds: u32,
}

/// The timeline in force: a display's own while valid, else its channel's.
pub fn effective<'a>(
    display: Option<&'a Timeline>,
    channel: Option<&'a Timeline>,
    now: DateTime<Utc>,
) -> Option<&'a Timeline> {
    display
        .filter(|t| t.from <= now && now < t.until)
        .or(channel.filter(|t| t.from <= now && now < t.until))
}

/// The frame at `now`.
pub fn frame_at(
    timeline: Option<&Timeline>,
    alert: Option<&Alert>,
    fallback: &Fallback,
    policy: &LanguagePolicy,
    now: DateTime<Utc>,
) -> Frame {
    if let Some(a) = alert.filter(|a| a.showing(now)) {
        return alert_frame(a, policy, now);
    }
    let Some(seg) = timeline.and_then(|t| t.segment_at(now)) else {
        let until = timeline
            .and_then(|t| t.segments.iter().find(|s| s.from > now).map(|s| s.from))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        return fallback_frame(fallback, policy, now, until);
    };
    let total: i64 = seg.items.iter().map(|i| i64::from(i.seconds) * 1000).sum();
    if total == 0 {
        return fallback_frame(fallback, policy, now, seg.until);
    }
    let elapsed = (now - seg.from).num_milliseconds();
    let round = elapsed / total;
    let mut offset = elapsed % total;
    let mut begin = seg.from + Duration::milliseconds(round * total);
    for (i, item) in seg.items.iter().enumerate() {
        let len = i64::from(item.seconds) * 1000;
        if offset < len {
            let slot = round as u64 * seg.items.len() as u64 + i as u64;
            let (lang, text) = policy.pick(&item.text, slot).unwrap_or(("", ""));
            return Frame {
                kind: FrameKind::Timeline,
                item: item.id.to_string(),
                playlist: item.playlist.to_string(),
                lang: lang.to_owned(),
                text: text.to_owned(),
                tier: seg.tier,
                start: begin,
                until: (begin + Duration::milliseconds(len)).min(seg.until),
            };
        }
        offset -= len;
        begin += Duration::milliseconds(len);
    }
    unreachable!("offset < total")
}

fn alert_frame(a: &Alert, policy: &LanguagePolicy, now: DateTime<Utc>) -> Frame {
    // Alerts alternate languages every 10 s while they last.
    const SLOT_MS: i64 = 10_000;
    let elapsed = (now - a.shown_from()).num_milliseconds().max(0);
    let slot = elapsed / SLOT_MS;
    let start = a.shown_from() + Duration::milliseconds(slot * SLOT_MS);
    let (lang, text) = policy.pick(&a.text, slot as u64).unwrap_or(("", ""));
    Frame {
        kind: FrameKind::Alert,
        item: a.id.clone(),
        playlist: "alert".into(),
        lang: lang.to_owned(),
        text: text.to_owned(),
        tier: Some(Tier::Emergency),
        start,
        until: (start + Duration::milliseconds(SLOT_MS)).min(a.expires_at),
    }
}

fn fallback_frame(
    f: &Fallback,
    policy: &LanguagePolicy,
    now: DateTime<Utc>,
    limit: DateTime<Utc>,
) -> Frame {
    let len = i64::from(f.seconds.max(1)) * 1000;
    let slot = now.timestamp_millis().div_euclid(len);
    let start = DateTime::from_timestamp_millis(slot * len).unwrap_or(now);
    let (lang, text) = policy.pick(&f.text, slot as u64).unwrap_or(("", ""));
    Frame {
        kind: FrameKind::Fallback,
        item: "fallback".into(),
        playlist: "fallback".into(),
        lang: lang.to_owned(),
        text: text.to_owned(),
        tier: None,
        start,
        until: (start + Duration::milliseconds(len)).min(limit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Item, Segment, Target};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn item(id: &str, secs: u32) -> Item {
        Item {
            id: id.into(),
            playlist: "p".into(),
            seconds: secs,
            text: std::sync::Arc::new(
                [
                    ("en".to_string(), format!("{id} en")),
                    ("zh".to_string(), format!("{id} zh")),
                ]
                .into(),
            ),
        }
    }

    fn timeline() -> Timeline {
        Timeline {
            target: Target::Channel("lobby".into()),
            timezone: "UTC".into(),
            from: t("2021-05-15T00:00:00Z"),
            until: t("2021-05-17T00:00:00Z"),
            segments: vec![
                Segment {
                    from: t("2021-05-15T00:00:00Z"),
                    until: t("2021-05-15T08:00:00Z"),
                    tier: None,
                    playlists: vec![].into(),
                    items: vec![].into(),
                },
                Segment {
                    from: t("2021-05-15T08:00:00Z"),
                    until: t("2021-05-15T08:01:00Z"),
                    tier: Some(Tier::Normal),
                    playlists: vec!["p".into()].into(),
                    items: vec![item("a", 10), item("b", 20)].into(),
                },
                Segment {
                    from: t("2021-05-15T08:01:00Z"),
                    until: t("2021-05-17T00:00:00Z"),
                    tier: Some(Tier::Interrupt),
                    playlists: vec!["q".into()].into(),
                    items: vec![item("c", 15)].into(),
                },
            ],
        }
    }

    fn fb() -> Fallback {
        Fallback {
            text: [
                ("en".to_string(), "hello".to_string()),
                ("zh".to_string(), "你好".to_string()),
            ]
            .into(),
            seconds: 10,
        }
    }

    fn alt() -> LanguagePolicy {
        LanguagePolicy::Alternate(vec!["zh".into(), "en".into()])
    }

    #[test]
    fn loops_items_by_the_clock_and_alternates_languages() {
        let tl = timeline();
        let at = |s| frame_at(Some(&tl), None, &fb(), &alt(), t(s));
        let f = at("2021-05-15T08:00:05Z");
        assert_eq!(
            (f.item.as_str(), f.lang.as_str(), f.text.as_str()),
            ("a", "zh", "a zh")
        );
        assert_eq!(
            (f.start, f.until),
            (t("2021-05-15T08:00:00Z"), t("2021-05-15T08:00:10Z"))
        );
        let f = at("2021-05-15T08:00:10Z");
        assert_eq!((f.item.as_str(), f.lang.as_str()), ("b", "en"));
        assert_eq!(f.until, t("2021-05-15T08:00:30Z"));
        // Second round: a again, now in the other language.
        let f = at("2021-05-15T08:00:31Z");
        assert_eq!((f.item.as_str(), f.lang.as_str()), ("a", "zh"));
        let f = at("2021-05-15T08:00:45Z");
        assert_eq!((f.item.as_str(), f.lang.as_str()), ("b", "en"));
    }

    #[test]
    fn segment_boundary_cuts_the_item_short_and_switches_on_time() {
        let tl = timeline();
        let f = frame_at(Some(&tl), None, &fb(), &alt(), t("2021-05-15T08:00:50Z"));
        assert_eq!(f.item, "b");
        assert_eq!(f.until, t("2021-05-15T08:01:00Z"), "cut at the boundary");
        let f = frame_at(Some(&tl), None, &fb(), &alt(), f.until);
        assert_eq!((f.item.as_str(), f.tier), ("c", Some(Tier::Interrupt)));
    }

    #[test]
    fn empty_segment_and_no_timeline_show_the_fallback() {
        let tl = timeline();
        let f = frame_at(Some(&tl), None, &fb(), &alt(), t("2021-05-15T07:59:55Z"));
        assert_eq!(f.kind, FrameKind::Fallback);
        assert_eq!(f.until, t("2021-05-15T08:00:00Z"));
        let f = frame_at(
            None,
            None,
            &fb(),
            &LanguagePolicy::Fixed("en".into()),
            t("2030-01-01T00:00:03Z"),
        );
        assert_eq!((f.kind, f.text.as_str()), (FrameKind::Fallback, "hello"));
        assert_eq!(f.until, t("2030-01-01T00:00:10Z"));
    }

    #[test]
    fn fixed_language_falls_back_to_what_the_item_has() {
        let tl = timeline();
        let f = frame_at(
            Some(&tl),
            None,
            &fb(),
            &LanguagePolicy::Fixed("fr".into()),
            t("2021-05-15T08:00:05Z"),
        );
        assert_eq!(f.lang, "en");
        let f = frame_at(
            Some(&tl),
            None,
            &fb(),
            &LanguagePolicy::Fixed("zh".into()),
            t("2021-05-15T08:00:15Z"),
        );
        assert_eq!(f.text, "b zh");
    }

    #[test]
    fn alert_preempts_until_it_expires() {
        let tl = timeline();
        let a = Alert {
            id: "typhoon".into(),
            severity: "extreme".into(),
            text: [("en".to_string(), "Typhoon: stay indoors".to_string())].into(),
            issued_at: t("2021-05-15T08:00:03Z"),
            expires_at: t("2021-05-15T08:00:40Z"),
            starts_at: None,
        };
        let f = frame_at(
            Some(&tl),
            Some(&a),
            &fb(),
            &alt(),
            t("2021-05-15T08:00:05Z"),
        );
        assert_eq!(
            (f.kind, f.text.as_str()),
            (FrameKind::Alert, "Typhoon: stay indoors")
        );
        let f = frame_at(
            Some(&tl),
            Some(&a),
            &fb(),
            &alt(),
            t("2021-05-15T08:00:35Z"),
        );
        assert_eq!(f.until, t("2021-05-15T08:00:40Z"));
        let f = frame_at(
            Some(&tl),
            Some(&a),
            &fb(),
            &alt(),
            t("2021-05-15T08:00:40Z"),
        );
        assert_eq!(f.kind, FrameKind::Timeline, "expired alerts end");
    }

    #[test]
    fn an_alert_held_for_later_shows_from_its_start() {
        let tl = timeline();
        let a = Alert {
            id: "typhoon".into(),
            severity: "extreme".into(),
            text: [("en".to_string(), "Typhoon: stay indoors".to_string())].into(),
            issued_at: t("2021-05-15T08:00:03Z"),
            expires_at: t("2021-05-15T08:01:00Z"),
            starts_at: Some(t("2021-05-15T08:00:20Z")),
        };
        let at = |s| frame_at(Some(&tl), Some(&a), &fb(), &alt(), t(s));
        assert_eq!(at("2021-05-15T08:00:19Z").kind, FrameKind::Timeline);
        let f = at("2021-05-15T08:00:20Z");
        assert_eq!(
            (f.kind, f.start),
            (FrameKind::Alert, t("2021-05-15T08:00:20Z"))
        );
    }

    #[test]
    fn display_timeline_supersedes_channel_while_valid() {
        let ch = timeline();
        let mut d = timeline();
        d.until = t("2021-05-16T00:00:00Z");
        assert!(std::ptr::eq(
            effective(Some(&d), Some(&ch), t("2021-05-15T10:00:00Z")).unwrap(),
            &d
        ));
        assert!(std::ptr::eq(
            effective(Some(&d), Some(&ch), t("2021-05-16T10:00:00Z")).unwrap(),
            &ch
        ));
        assert!(effective(None, Some(&ch), t("2022-01-01T00:00:00Z")).is_none());
    }
}
