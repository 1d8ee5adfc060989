//! The timeline payload: what a channel or display shows over the next horizon (48 h by default),
//! as contiguous segments `[from, until)`, each with the items to loop.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Priority tier of a playlist: the highest active tier replaces every lower one.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Shown only when nothing else is scheduled.
    Fallback,
    /// Ordinary publicity.
    Normal,
    /// Announcements that replace normal content while active.
    Interrupt,
    /// Emergency content; replaces everything else.
    Emergency,
}

impl Tier {
    /// The tier's name as written in playlists.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Fallback => "fallback",
            Tier::Normal => "normal",
            Tier::Interrupt => "interrupt",
            Tier::Emergency => "emergency",
        }
    }
}

/// Whom a timeline is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Every display of a channel.
    Channel(String),
    /// One display, superseding its channel's timeline.
    Display(String),
}

/// One slogan as the screen loops it. Ids and texts are shared (`Arc`) between the many loop
/// entries that show the same item, so building long timelines does not copy them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The item's id within its playlist.
    pub id: Arc<str>,
    /// The playlist the item comes from (for proof of play).
    pub playlist: Arc<str>,
    /// How long the item stays on screen.
    pub seconds: u32,
    /// The text per language tag (`zh`, `en`, …).
    pub text: Arc<BTreeMap<String, String>>,
}

/// A stretch of time with a fixed loop of items. Segments of a timeline are contiguous and do not
/// overlap; a segment with no items means "nothing scheduled" and the agent shows its local fallback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Start, inclusive.
    pub from: DateTime<Utc>,
    /// End, exclusive.
    pub until: DateTime<Utc>,
    /// The tier that won this stretch, `null` when nothing is scheduled.
    pub tier: Option<Tier>,
    /// The playlists sharing the stretch (all of the winning tier), by id.
    pub playlists: Arc<[Arc<str>]>,
    /// The loop, in order; airtime is shared between playlists by weight.
    pub items: std::sync::Arc<[Item]>,
}

/// A channel's or display's schedule over `[from, until)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    /// Whom it is for.
    pub target: Target,
    /// The IANA zone the schedule was evaluated in (for display only; all times are UTC).
    pub timezone: String,
    /// Start of the covered horizon.
    pub from: DateTime<Utc>,
    /// End of the covered horizon.
    pub until: DateTime<Utc>,
    /// Contiguous segments covering `[from, until)`.
    pub segments: Vec<Segment>,
}

impl Timeline {
    /// The segment in force at `at`, if `at` lies inside the timeline.
    pub fn segment_at(&self, at: DateTime<Utc>) -> Option<&Segment> {
        self.segments.iter().find(|s| s.from <= at && at < s.until)
    }

    /// The segments clipped to `[from, until)`, with empty stretches dropped. Two timelines whose
    /// clipped segments are equal show exactly the same thing over that window.
    pub fn clipped(&self, from: DateTime<Utc>, until: DateTime<Utc>) -> Vec<Segment> {
        self.segments
            .iter()
            .filter(|s| s.until > from && s.from < until)
            .map(|s| Segment {
                from: s.from.max(from),
                until: s.until.min(until),
                ..s.clone()
            })
            .collect()
    }
}
