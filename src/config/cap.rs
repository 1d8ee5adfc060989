//! `[cap]`: accepting CAP 1.2 alerts (policy, default scope, start, feeds) and `[fleet]`
//! (how long agent reports are kept).

use super::schedule::ScheduleConfig;
use std::time::Duration;

use serde::Deserialize;

use super::common::duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCap {
    pub(super) accept_test: bool,
    pub(super) default_scope: Option<String>,
    pub(super) policy: Vec<crate::domain::cap::PolicyRule>,
    pub(super) areas: Vec<crate::domain::cap::AreaRule>,
    pub(super) feed_url: Option<String>,
    pub(super) feed_interval: String,
    pub(super) feeds: Vec<RawFeed>,
    pub(super) contact: Option<String>,
    pub(super) start: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFeed {
    pub(super) url: String,
    #[serde(default = "thirty_s")]
    pub(super) interval: String,
}

pub(super) fn thirty_s() -> String {
    "30s".into()
}

impl Default for RawCap {
    fn default() -> Self {
        RawCap {
            accept_test: false,
            default_scope: None,
            policy: Vec::new(),
            areas: Vec::new(),
            feed_url: None,
            feed_interval: "30s".into(),
            feeds: Vec::new(),
            contact: None,
            start: "effective".into(),
        }
    }
}

/// Validates `[cap]`.
pub(super) fn validate(
    c: RawCap,
    sched: &ScheduleConfig,
    problems: &mut Vec<String>,
) -> crate::domain::cap::CapRules {
    use crate::domain::cap::Scope;
    let default_scope = match c.default_scope.as_deref().unwrap_or("all") {
        "all" => Some(Scope::All),
        "none" => None,
        other => {
            problems.push(format!(
                "cap.default_scope: {other:?} is not \"all\" or \"none\""
            ));
            None
        }
    };
    for (i, r) in c.policy.iter().enumerate() {
        if !matches!(r.action.as_str(), "takeover" | "ignore") {
            problems.push(format!(
                "cap.policy[{i}].action: {:?} is not \"takeover\" or \"ignore\"",
                r.action
            ));
        }
    }
    for (i, a) in c.areas.iter().enumerate() {
        if a.area_desc.is_none() && a.geocode.is_none() {
            problems.push(format!(
                "cap.areas[{i}]: give area_desc or geocode (NAME=VALUE)"
            ));
        }
        for ch in a.channels.iter().filter(|ch| !sched.channels.contains(ch)) {
            problems.push(format!("cap.areas[{i}].channels: unknown channel {ch:?}"));
        }
    }
    let start_at_onset = match c.start.as_str() {
        "effective" => false,
        "onset" => true,
        other => {
            problems.push(format!(
                "cap.start: {other:?} is not \"effective\" or \"onset\""
            ));
            false
        }
    };
    crate::domain::cap::CapRules {
        start_at_onset,
        // Set explicitly, default_scope also decides for alerts whose polygons and circles
        // hold none of the located displays; unset, those go nowhere.
        geo_miss_scope: match c.default_scope.as_deref() {
            Some("all") => Some(Scope::All),
            _ => None,
        },
        located: sched
            .locations
            .iter()
            .map(|(id, (lat, lon))| (id.clone(), *lat, *lon))
            .collect(),
        policy: if c.policy.is_empty() {
            crate::domain::cap::default_policy()
        } else {
            c.policy
        },
        areas: c.areas,
        default_scope,
        accept_test: c.accept_test,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawFleet {
    pub(super) keep_plays: String,
    pub(super) keep_events: String,
    pub(super) max_plays: u64,
    pub(super) max_events: u64,
}

impl Default for RawFleet {
    fn default() -> Self {
        RawFleet {
            keep_plays: "90d".into(),
            keep_events: "30d".into(),
            max_plays: 20_000_000,
            max_events: 20_000_000,
        }
    }
}

/// How long, and how many, agent reports are kept (`[fleet]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Proof-of-play records older than this (by their end) are deleted.
    pub keep_plays: chrono::Duration,
    /// Events older than this (by receipt) are deleted.
    pub keep_events: chrono::Duration,
    /// At most this many plays are kept (the oldest go first).
    pub max_plays: u64,
    /// At most this many events are kept (the oldest go first).
    pub max_events: u64,
}

/// The CAP feeds (`cap.feed_url` first, then `[[cap.feeds]]`): each an http(s) URL with its
/// interval (at least 100 ms), none twice.
pub(super) fn feeds(cap: &RawCap, problems: &mut Vec<String>) -> Vec<(url::Url, Duration)> {
    let mut feeds: Vec<(String, String, String)> = cap
        .feeds
        .iter()
        .enumerate()
        .map(|(i, f)| (format!("cap.feeds[{i}]"), f.url.clone(), f.interval.clone()))
        .collect();
    if let Some(u) = &cap.feed_url {
        feeds.insert(
            0,
            ("cap.feed_url".into(), u.clone(), cap.feed_interval.clone()),
        );
    }
    let mut cap_feeds = Vec::new();
    for (place, u, interval) in feeds {
        match url::Url::parse(&u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {
                let every = duration(problems, &format!("{place} interval"), &interval);
                if every < Duration::from_millis(100) {
                    problems.push(format!("{place} interval: at least 100ms"));
                }
                if cap_feeds
                    .iter()
                    .any(|(o, _): &(url::Url, Duration)| *o == url)
                {
                    problems.push(format!("{place}: {u:?} is listed twice"));
                }
                cap_feeds.push((url, every));
            }
            _ => problems.push(format!(
                "{place}: {u:?} is not an http(s) URL of a CAP document or feed"
            )),
        }
    }
    cap_feeds
}

/// How long, and how many, agent reports are kept (`[fleet]`).
pub(super) fn retention(fleet: &RawFleet, problems: &mut Vec<String>) -> Retention {
    let keep = |key: &str, v: &str, problems: &mut Vec<String>| {
        chrono::Duration::from_std(duration(problems, key, v)).unwrap_or(chrono::Duration::days(90))
    };
    let retention = Retention {
        keep_plays: keep("fleet.keep_plays", &fleet.keep_plays, problems),
        keep_events: keep("fleet.keep_events", &fleet.keep_events, problems),
        max_plays: fleet.max_plays,
        max_events: fleet.max_events,
    };
    let (day, century) = (chrono::Duration::days(1), chrono::Duration::days(36_500));
    if [retention.keep_plays, retention.keep_events]
        .iter()
        .any(|k| *k < day || *k > century)
    {
        problems.push("fleet.keep_plays, fleet.keep_events: between 1d and 100 years".into());
    }
    if retention.max_plays == 0 || retention.max_events == 0 {
        problems.push("fleet.max_plays, fleet.max_events: at least 1".into());
    }
    retention
}
