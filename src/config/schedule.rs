//! `[schedule]`: zone, playlists directory, horizon, channels, declared displays.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use chrono_tz::Tz;

use super::common::duration;
use crate::domain::ValidationContext;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSchedule {
    pub(super) timezone: String,
    pub(super) playlists_dir: PathBuf,
    pub(super) horizon: String,
    pub(super) debounce: String,
    pub(super) watch: bool,
    pub(super) channels: Vec<String>,
    pub(super) displays: Vec<RawDisplay>,
    pub(super) screens: BTreeMap<String, String>,
}

impl Default for RawSchedule {
    fn default() -> Self {
        RawSchedule {
            timezone: "Asia/Shanghai".into(),
            playlists_dir: "playlists".into(),
            horizon: "48h".into(),
            debounce: "150ms".into(),
            watch: true,
            channels: ["lobby", "subway", "bus", "public"]
                .map(String::from)
                .to_vec(),
            displays: Vec::new(),
            screens: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDisplay {
    pub(super) id: String,
    pub(super) channel: String,
    pub(super) lat: Option<f64>,
    pub(super) lon: Option<f64>,
}

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// Default zone.
    pub timezone: Tz,
    /// Where playlist files are.
    pub playlists_dir: PathBuf,
    /// How far ahead timelines reach.
    pub horizon: chrono::Duration,
    /// Quiet time before reloading while a file is still being written (a closed or renamed
    /// file only waits for the scheduler's short settle).
    pub debounce: Duration,
    /// Watch the playlists directory (otherwise reload on SIGHUP only).
    pub watch: bool,
    /// Known channels.
    pub channels: Vec<String>,
    /// Known displays → their channel.
    pub displays: BTreeMap<String, String>,
    /// Displays with a location (WGS 84 latitude and longitude in degrees), for CAP `<polygon>`
    /// and `<circle>` areas.
    pub locations: BTreeMap<String, (f64, f64)>,
    /// Each channel's screen size in CSS pixels (`[schedule.screens]`, default 1920×1080): the
    /// console previews slogans at this size.
    pub screens: BTreeMap<String, Screen>,
}

/// A screen's size in CSS pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Screen {
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
}

impl Default for Screen {
    fn default() -> Self {
        Screen {
            width: 1920,
            height: 1080,
        }
    }
}

/// Reads `WIDTHxHEIGHT` (`1080x1920`), each from 120 to 16384 pixels.
fn screen_size(s: &str) -> Option<Screen> {
    let (w, h) = s.trim().split_once(['x', 'X', '×'])?;
    let px = |v: &str| {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (120..=16384).contains(n))
    };
    Some(Screen {
        width: px(w)?,
        height: px(h)?,
    })
}

/// `[schedule.screens]`: every channel gets a size, the default unless the table names it.
fn screens(s: &RawSchedule, problems: &mut Vec<String>) -> BTreeMap<String, Screen> {
    for c in s.screens.keys() {
        if !s.channels.contains(c) {
            problems.push(format!("schedule.screens.{c}: unknown channel {c:?}"));
        }
    }
    s.channels
        .iter()
        .map(|c| {
            let size = s.screens.get(c).map_or(Screen::default(), |v| {
                screen_size(v).unwrap_or_else(|| {
                    problems.push(format!(
                        "schedule.screens.{c}: {v:?} is not a size like \"1920x1080\" (width x height in pixels, each 120-16384)"
                    ));
                    Screen::default()
                })
            });
            (c.clone(), size)
        })
        .collect()
}

impl ScheduleConfig {
    /// What playlist validation needs.
    pub fn validation_context(&self) -> ValidationContext {
        ValidationContext {
            channels: self.channels.clone(),
            displays: self.displays.clone(),
            timezone: self.timezone,
        }
    }
}

/// Validates `[schedule]`.
pub(super) fn validate(s: RawSchedule, problems: &mut Vec<String>) -> ScheduleConfig {
    let timezone = Tz::from_str(&s.timezone).unwrap_or_else(|_| {
        problems.push(format!(
            "schedule.timezone: unknown IANA zone {:?} (e.g. \"Asia/Shanghai\")",
            s.timezone
        ));
        Tz::UTC
    });
    let horizon = duration(problems, "schedule.horizon", &s.horizon);
    if !(Duration::from_secs(2 * 3600)..=Duration::from_secs(14 * 86400)).contains(&horizon) {
        problems.push("schedule.horizon: between 2h and 14days".into());
    }
    if s.channels.is_empty() {
        problems.push("schedule.channels: name at least one channel".into());
    }
    for c in &s.channels {
        if c == "all" {
            problems.push(
                "schedule.channels: \"all\" is reserved (the alert scope of every display)".into(),
            );
        }
        if !crate::registry::valid_display_id(c) {
            problems.push(format!(
                "schedule.channels: {c:?} must be 1-64 letters, digits, '_' or '-' (no '.': clustered brokers such as NATS and RabbitMQ turn MQTT's '/' into '.', so a dotted name splits into two topic levels)"
            ));
        }
    }
    let mut displays = BTreeMap::new();
    let mut locations = BTreeMap::new();
    for (i, d) in s.displays.iter().enumerate() {
        if !crate::registry::valid_display_id(&d.id) {
            problems.push(format!(
                "schedule.displays[{i}].id: {:?} must be 1-64 letters, digits, '_' or '-' (no '.': clustered brokers turn MQTT's '/' into '.')",
                d.id
            ));
        }
        if !s.channels.contains(&d.channel) {
            problems.push(format!(
                "schedule.displays[{i}].channel: unknown channel {:?}",
                d.channel
            ));
        }
        match (d.lat, d.lon) {
            (Some(lat), Some(lon))
                if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) =>
            {
                locations.insert(d.id.clone(), (lat, lon));
            }
            (None, None) => {}
            (Some(_), Some(_)) => problems.push(format!(
                "schedule.displays[{i}]: lat must be within -90..90 and lon within -180..180 (WGS 84 degrees)"
            )),
            _ => problems.push(format!(
                "schedule.displays[{i}]: give both lat and lon, or neither"
            )),
        }
        if displays.insert(d.id.clone(), d.channel.clone()).is_some() {
            problems.push(format!(
                "schedule.displays[{i}].id: {:?} declared twice",
                d.id
            ));
        }
    }
    let screens = screens(&s, problems);
    ScheduleConfig {
        screens,
        timezone,
        playlists_dir: s.playlists_dir,
        horizon: chrono::Duration::from_std(horizon).unwrap_or(chrono::Duration::hours(48)),
        debounce: duration(problems, "schedule.debounce", &s.debounce),
        watch: s.watch,
        channels: s.channels,
        displays,
        locations,
    }
}
