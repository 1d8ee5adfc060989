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
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
///
/// On the wire (`docs/protocol.md`, payload kind `timeline2`) each distinct item is written once
/// in `items` and a segment's loop is a list of indexes into it, so the size grows with items +
/// segments, not items × segments. Reading also takes the first encoding (items inline in each
/// segment), which agents may still hold in their cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "TimelineWire", try_from = "TimelineWire")]
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

/// The wire form of a [`Timeline`].
#[derive(Serialize, Deserialize)]
struct TimelineWire {
    target: Target,
    timezone: String,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    /// Every distinct item once.
    #[serde(default)]
    items: Vec<Item>,
    segments: Vec<SegmentWire>,
}

#[derive(Serialize, Deserialize)]
struct SegmentWire {
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    tier: Option<Tier>,
    playlists: Arc<[Arc<str>]>,
    /// The loop as indexes into the timeline's `items`.
    #[serde(rename = "loop", default, skip_serializing_if = "Option::is_none")]
    looped: Option<Vec<u32>>,
    /// The loop written out (the first encoding; read only).
    #[serde(default, skip_serializing)]
    items: Option<Vec<Item>>,
}

impl From<Timeline> for TimelineWire {
    fn from(t: Timeline) -> TimelineWire {
        // Loop entries of one item share its `Arc`s: looked up by those pointers first (cheap to
        // hash), an item is hashed by value once per distinct set of pointers, not once per loop
        // entry. Equal items behind other pointers still get one table entry.
        let mut by_ptr: std::collections::HashMap<(usize, usize, usize, u32), u32> =
            std::collections::HashMap::new();
        let mut index: std::collections::HashMap<&Item, u32> = std::collections::HashMap::new();
        let mut items: Vec<Item> = Vec::new();
        let mut loops: Vec<Vec<u32>> = Vec::with_capacity(t.segments.len());
        // Segments won by the same playlists share one loop (`Arc<[Item]>`): indexed once.
        let mut by_loop: std::collections::HashMap<(usize, usize), Vec<u32>> =
            std::collections::HashMap::new();
        for seg in &t.segments {
            let key = (seg.items.as_ptr() as usize, seg.items.len());
            if let Some(looped) = by_loop.get(&key) {
                loops.push(looped.clone());
                continue;
            }
            let looped: Vec<u32> = seg
                .items
                .iter()
                .map(|it| {
                    let ptrs = (
                        Arc::as_ptr(&it.id) as *const u8 as usize,
                        Arc::as_ptr(&it.playlist) as *const u8 as usize,
                        Arc::as_ptr(&it.text) as usize,
                        it.seconds,
                    );
                    *by_ptr.entry(ptrs).or_insert_with(|| {
                        *index.entry(it).or_insert_with(|| {
                            items.push(it.clone());
                            (items.len() - 1) as u32
                        })
                    })
                })
                .collect();
            by_loop.insert(key, looped.clone());
            loops.push(looped);
        }
        let segments = t
            .segments
            .iter()
            .zip(loops)
            .map(|(s, looped)| SegmentWire {
                from: s.from,
                until: s.until,
                tier: s.tier,
                playlists: s.playlists.clone(),
                looped: Some(looped),
                items: None,
            })
            .collect();
        TimelineWire {
            target: t.target,
            timezone: t.timezone,
            from: t.from,
            until: t.until,
            items,
            segments,
        }
    }
}

impl TryFrom<TimelineWire> for Timeline {
    type Error = String;

    fn try_from(w: TimelineWire) -> Result<Timeline, String> {
        let table = w.items;
        let segments = w
            .segments
            .into_iter()
            .enumerate()
            .map(|(n, s)| {
                let items: Arc<[Item]> = match (s.looped, s.items) {
                    (Some(looped), _) => looped
                        .iter()
                        .map(|&i| {
                            table.get(i as usize).cloned().ok_or_else(|| {
                                format!(
                                    "segments[{n}].loop: item {i} does not exist ({} items)",
                                    table.len()
                                )
                            })
                        })
                        .collect::<Result<_, _>>()?,
                    (None, Some(inline)) => inline.into(),
                    (None, None) => Arc::from(Vec::new()),
                };
                Ok(Segment {
                    from: s.from,
                    until: s.until,
                    tier: s.tier,
                    playlists: s.playlists,
                    items,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Timeline {
            target: w.target,
            timezone: w.timezone,
            from: w.from,
            until: w.until,
            segments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, text: &str) -> Item {
        Item {
            id: id.into(),
            playlist: "p".into(),
            seconds: 10,
            text: Arc::new([("zh".to_owned(), text.to_owned())].into()),
        }
    }

    fn at(h: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + h * 3600, 0).unwrap()
    }

    fn timeline(segments: usize, items: usize) -> Timeline {
        let all: Vec<Item> = (0..items)
            .map(|i| item(&format!("i{i}"), &"政务公开 服务为民 ".repeat(4)))
            .collect();
        Timeline {
            target: Target::Channel("subway".into()),
            timezone: "Asia/Shanghai".into(),
            from: at(0),
            until: at(segments as i64),
            segments: (0..segments)
                .map(|n| Segment {
                    from: at(n as i64),
                    until: at(n as i64 + 1),
                    tier: Some(Tier::Normal),
                    playlists: Arc::from(vec![Arc::<str>::from("p")]),
                    items: all.clone().into(),
                })
                .collect(),
        }
    }

    #[test]
    fn round_trips_and_grows_with_items_plus_segments() {
        let t = timeline(13, 300);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Timeline>(&json).unwrap(), t);
        // Written out per segment, the same timeline is 13 copies of the 300 items.
        let inline: usize = t
            .segments
            .iter()
            .map(|s| serde_json::to_string(&s.items[..]).unwrap().len())
            .sum();
        assert!(json.len() * 8 < inline, "{} vs {inline}", json.len());
        // Twice the segments cost little more (indexes), not twice the texts.
        let double = serde_json::to_string(&timeline(26, 300)).unwrap().len();
        assert!(double < json.len() * 13 / 10, "{double} vs {}", json.len());
    }

    #[test]
    fn the_first_encoding_is_still_read() {
        let t = timeline(2, 3);
        let legacy = serde_json::json!({
            "target": {"channel": "subway"}, "timezone": "Asia/Shanghai",
            "from": t.from, "until": t.until,
            "segments": t.segments.iter().map(|s| serde_json::json!({
                "from": s.from, "until": s.until, "tier": s.tier, "playlists": s.playlists,
                "items": s.items})).collect::<Vec<_>>()});
        assert_eq!(serde_json::from_value::<Timeline>(legacy).unwrap(), t);
    }

    #[test]
    fn a_loop_index_out_of_range_is_refused_with_its_place() {
        let bad = r#"{"target":{"channel":"c"},"timezone":"UTC","from":"2026-01-01T00:00:00Z",
            "until":"2026-01-01T01:00:00Z","items":[],"segments":[{"from":"2026-01-01T00:00:00Z",
            "until":"2026-01-01T01:00:00Z","tier":null,"playlists":[],"loop":[0]}]}"#;
        let e = serde_json::from_str::<Timeline>(bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("segments[0].loop: item 0 does not exist"), "{e}");
    }
}
