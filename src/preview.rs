//! Previews: what a channel or display shows over a stretch of time, with why (which playlists
//! won, which they replaced). Shared by `marquee preview` (offline, from files) and
//! `GET /api/v1/preview`.

use std::fmt::Write;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

use crate::domain::{Playlist, Stretch, TargetRef, explain};

/// A preview request, validated.
#[derive(Debug, Clone)]
pub struct PreviewRequest {
    /// Channel (always set; for a display, its channel).
    pub channel: String,
    /// Display, when previewing one display.
    pub display: Option<String>,
    /// Start.
    pub at: DateTime<Utc>,
    /// Length.
    pub length: Duration,
}

/// What a channel or display shows over a stretch (`GET /api/v1/preview`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PreviewAnswer {
    /// The channel (for a display, its channel).
    pub channel: String,
    /// The display, when one display was asked for.
    pub display: Option<String>,
    /// The zone the times are in (IANA name, `[schedule] timezone`).
    pub timezone: String,
    /// Start (RFC 3339).
    pub from: String,
    /// End, exclusive (RFC 3339).
    pub until: String,
    /// Contiguous stretches of one loop each.
    pub segments: Vec<PreviewSegment>,
    /// Set when the timeline would not fit one MQTT packet (the broker would refuse it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oversize: Option<OversizeNote>,
}

/// One stretch of a preview: who won it and the loop it shows.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PreviewSegment {
    /// Start, inclusive (RFC 3339).
    pub from: String,
    /// End, exclusive (RFC 3339).
    pub until: String,
    /// The winning tier (`fallback`, `normal`, `interrupt`, `emergency`); `null`: nothing is
    /// scheduled and the screen shows its local fallback.
    #[schema(value_type = Option<String>)]
    pub tier: Option<crate::wire::Tier>,
    /// The winning playlists (ids, sorted).
    pub playlists: Vec<String>,
    /// Their weights, in the same order.
    pub weights: Vec<u32>,
    /// Active playlists of lower tiers that the winners replace.
    pub replaced: Vec<String>,
    /// The loop: `{id, playlist, seconds, text: {lang: text}}` per entry.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<crate::wire::Item>,
}

/// A timeline too large for one MQTT packet.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct OversizeNote {
    /// The PUBLISH packet it would take, in bytes.
    pub bytes: usize,
    /// `mqtt.max_payload`.
    pub limit: usize,
    /// For people.
    pub message: String,
}

/// A computed preview.
pub struct Preview {
    req: PreviewRequest,
    tz: Tz,
    stretches: Vec<Stretch>,
}

impl Preview {
    /// Resolves `req` over `playlists`, showing times in `tz`.
    pub fn compute(playlists: &[Playlist], req: PreviewRequest, tz: Tz) -> Preview {
        let target = match &req.display {
            Some(id) => TargetRef::Display {
                id,
                channel: &req.channel,
            },
            None => TargetRef::Channel(&req.channel),
        };
        let stretches = explain(playlists, target, req.at, req.at + req.length);
        Preview { req, tz, stretches }
    }

    fn t(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.tz).to_rfc3339()
    }

    /// What the preview shows, with RFC 3339 times in the configured zone (the answer of
    /// `GET /api/v1/preview` and of `marquee preview --json`).
    pub fn answer(&self, oversize: Option<Oversize>) -> PreviewAnswer {
        let segments = self
            .stretches
            .iter()
            .map(|s| PreviewSegment {
                from: self.t(s.from),
                until: self.t(s.until),
                tier: s.tier,
                playlists: s.playlists.iter().map(|p| p.to_string()).collect(),
                weights: s.weights.to_vec(),
                replaced: s.replaced.iter().map(|p| p.to_string()).collect(),
                items: s.items.to_vec(),
            })
            .collect();
        PreviewAnswer {
            channel: self.req.channel.clone(),
            display: self.req.display.clone(),
            timezone: self.tz.name().to_owned(),
            from: self.t(self.req.at),
            until: self.t(self.req.at + self.req.length),
            segments,
            oversize: oversize.map(|o| OversizeNote {
                bytes: o.bytes,
                limit: o.limit,
                message: o.to_string(),
            }),
        }
    }

    /// A human-readable rendering.
    pub fn to_text(&self) -> String {
        let long = self.req.length > Duration::hours(20);
        let fmt = |t: DateTime<Utc>| {
            let local = t.with_timezone(&self.tz);
            if long {
                local.format("%m-%d %H:%M").to_string()
            } else {
                local.format("%H:%M").to_string()
            }
        };
        let mut out = String::new();
        let who = match &self.req.display {
            Some(d) => format!("display {d} (channel {})", self.req.channel),
            None => format!("channel {}", self.req.channel),
        };
        let _ = writeln!(
            out,
            "{who} · {} · {} → {}",
            self.tz.name(),
            self.req.at.with_timezone(&self.tz).format("%Y-%m-%d %H:%M"),
            (self.req.at + self.req.length)
                .with_timezone(&self.tz)
                .format("%Y-%m-%d %H:%M")
        );
        for s in &self.stretches {
            let _ = write!(out, "\n{} → {}  ", fmt(s.from), fmt(s.until));
            match s.tier {
                None => {
                    let _ = writeln!(
                        out,
                        "(nothing scheduled: displays show their local fallback)"
                    );
                }
                Some(tier) => stretch_text(&mut out, s, tier),
            }
        }
        out
    }
}

/// Every channel and configured display as resolver targets.
pub fn all_targets(sched: &crate::config::ScheduleConfig) -> Vec<TargetRef<'_>> {
    sched
        .channels
        .iter()
        .map(|c| TargetRef::Channel(c))
        .chain(
            sched
                .displays
                .iter()
                .map(|(id, channel)| TargetRef::Display { id, channel }),
        )
        .collect()
}

/// A stretch someone won: the winners (and whom they replace), the loop with each
/// playlist's share of airtime, and each distinct item once.
fn stretch_text(out: &mut String, s: &Stretch, tier: crate::wire::Tier) {
    let names: Vec<String> = s
        .playlists
        .iter()
        .zip(s.weights.iter())
        .map(|(id, w)| {
            if s.playlists.len() > 1 {
                format!("{id} (weight {w})")
            } else {
                id.to_string()
            }
        })
        .collect();
    let _ = write!(out, "{:<9} {}", tier.as_str(), names.join(", "));
    if !s.replaced.is_empty() {
        let _ = write!(
            out,
            "   — {} tier wins, replacing {}",
            tier.as_str(),
            s.replaced.join(", ")
        );
    }
    out.push('\n');
    let loop_secs: u32 = s.items.iter().map(|i| i.seconds).sum();
    let share: Vec<String> = s
        .playlists
        .iter()
        .map(|id| {
            let secs: u32 = s
                .items
                .iter()
                .filter(|i| *i.playlist == **id)
                .map(|i| i.seconds)
                .sum();
            format!("{id} {}%", (secs * 100).checked_div(loop_secs).unwrap_or(0))
        })
        .collect();
    let _ = writeln!(
        out,
        "  loop of {} items, {}m{:02}s; airtime: {}",
        s.items.len(),
        loop_secs / 60,
        loop_secs % 60,
        share.join(", ")
    );
    let mut seen = std::collections::BTreeSet::new();
    for item in s.items.iter() {
        if !seen.insert((&item.playlist, &item.id)) {
            continue;
        }
        let texts: Vec<String> = item
            .text
            .iter()
            .map(|(lang, text)| format!("{lang}: {text}"))
            .collect();
        let _ = writeln!(
            out,
            "  {:>4}s  {}/{}  {}",
            item.seconds,
            item.playlist,
            item.id,
            texts.join("  |  ")
        );
    }
}

/// One target whose screens change, and from when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Impact {
    /// `channel lobby` or `display lobby-east-1`.
    pub target: String,
    /// The first moment its screens show something else (RFC 3339, `[schedule] timezone`).
    pub from: String,
}

/// The change impact of replacing (or, with `None`, removing) playlist `id`, over the horizon
/// from `now`: each target whose screens change and from when (times in `tz`).
pub fn change_impact(
    sched: &crate::config::ScheduleConfig,
    current: &[Playlist],
    id: &str,
    replacement: Option<Playlist>,
    now: DateTime<Utc>,
) -> Vec<Impact> {
    let now = chrono::SubsecRound::trunc_subsecs(now, 0);
    let mut new: Vec<Playlist> = current.iter().filter(|p| p.id != id).cloned().collect();
    new.extend(replacement);
    crate::domain::impact(current, &new, &all_targets(sched), now, now + sched.horizon)
        .into_iter()
        .map(|(t, at)| {
            let target = match t {
                crate::wire::Target::Channel(c) => format!("channel {c}"),
                crate::wire::Target::Display(d) => format!("display {d}"),
            };
            Impact {
                target,
                from: at.with_timezone(&sched.timezone).to_rfc3339(),
            }
        })
        .collect()
}

/// One line per changed target, or a line saying nothing changes.
pub fn impact_text(impact: &[Impact], horizon: Duration) -> String {
    if impact.is_empty() {
        return format!(
            "no change on any screen in the next {}h\n",
            horizon.num_hours()
        );
    }
    impact
        .iter()
        .map(|i| format!("changes {} from {}\n", i.target, i.from))
        .collect()
}

/// A timeline that would not fit in one MQTT packet under `mqtt.max_payload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oversize {
    /// `channel subway` or `display lobby-east-1`.
    pub target: String,
    /// Its topic.
    pub topic: String,
    /// The PUBLISH packet it would take, in bytes.
    pub bytes: usize,
    /// `mqtt.max_payload`.
    pub limit: usize,
}

impl std::fmt::Display for Oversize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the timeline of {} would be {} bytes, over mqtt.max_payload ({} bytes): it cannot be published (fewer or shorter items, or a larger max_payload on the daemon, the agents and the broker)",
            self.target, self.bytes, self.limit
        )
    }
}

/// The size of the MQTT 3.1.1 PUBLISH packet (QoS 1) carrying `payload` bytes on `topic`:
/// fixed header (at most 5 bytes), topic length (2) and topic, packet id (2), payload (§3.3).
pub fn publish_size(topic: &str, payload: usize) -> usize {
    payload + topic.len() + 9
}

/// Every target whose timeline, resolved over the horizon from `now` and signed, would not fit
/// under `mqtt.max_payload`. (The signature and key id have a fixed length, so a throwaway key
/// gives the exact size.)
pub fn oversize(
    cfg: &crate::config::Config,
    playlists: &[Playlist],
    now: DateTime<Utc>,
) -> Vec<Oversize> {
    oversize_among(cfg, playlists, now, all_targets(&cfg.schedule))
}

/// [`oversize`] over `targets` only.
fn oversize_among(
    cfg: &crate::config::Config,
    playlists: &[Playlist],
    now: DateTime<Utc>,
    targets: Vec<TargetRef<'_>>,
) -> Vec<Oversize> {
    let now = chrono::SubsecRound::trunc_subsecs(now, 0);
    let keys = crate::wire::KeyPair::from_seed([0; 32]);
    let prefix = &cfg.mqtt.topic_prefix;
    let mut out = Vec::new();
    for target in targets {
        let (name, topic) = match target {
            TargetRef::Channel(c) => (
                format!("channel {c}"),
                crate::wire::Topic::ChannelTimeline(c.to_owned()).render(prefix),
            ),
            TargetRef::Display { id, .. } => {
                if !playlists.iter().any(|p| p.displays.iter().any(|d| d == id)) {
                    continue; // not targeted: the display follows its channel
                }
                (
                    format!("display {id}"),
                    crate::wire::Topic::DisplayTimeline(id.to_owned()).render(prefix),
                )
            }
        };
        let tl = crate::domain::resolve(
            playlists,
            target,
            now,
            now + cfg.schedule.horizon,
            cfg.schedule.timezone.name(),
        );
        let body = crate::wire::SignedBody {
            topic: topic.clone(),
            version: u64::MAX,
            issued_at: now,
            expires_at: tl.until,
            payload: crate::wire::Signed::Timeline(tl),
        };
        let bytes = publish_size(&topic, crate::wire::sign(&keys, &body).len());
        if bytes > cfg.mqtt.max_payload {
            out.push(Oversize {
                target: name,
                topic,
                bytes,
                limit: cfg.mqtt.max_payload,
            });
        }
    }
    out
}

/// The [`Oversize`] of the target a preview shows (a display, else its channel), if any.
pub fn oversize_of(
    cfg: &crate::config::Config,
    playlists: &[Playlist],
    channel: &str,
    display: Option<&str>,
    now: DateTime<Utc>,
) -> Option<Oversize> {
    // Only the target shown: a display's own timeline, or (without one) its channel's.
    let target = match display {
        Some(id) if playlists.iter().any(|p| p.displays.iter().any(|x| x == id)) => {
            TargetRef::Display { id, channel }
        }
        _ => TargetRef::Channel(channel),
    };
    oversize_among(cfg, playlists, now, vec![target]).pop()
}

/// A preview length: a duration between 1 minute and 14 days.
pub fn parse_length(s: &str) -> Result<chrono::Duration, String> {
    humantime::parse_duration(s)
        .ok()
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .filter(|d| *d >= chrono::Duration::minutes(1) && *d <= chrono::Duration::days(14))
        .ok_or_else(|| format!("bad length {s:?}: a duration like 2h or 90m, from 1m to 14days"))
}
