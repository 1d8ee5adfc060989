//! The resolver: playlists + target + horizon → timeline.
//!
//! Rules: the highest active tier replaces every lower one for as long as it is active (no
//! alternating); playlists of the same tier share airtime by weight; stretches with nothing
//! scheduled are kept as empty segments, so a timeline always covers its whole horizon.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::calendar::{Span, active_windows};
use super::playlist::Playlist;
use crate::wire::{Item, Segment, Target, Tier, Timeline};

/// Longest loop built for a segment; beyond it the loop is cut at the last point where every
/// playlist had shown all of its items.
const MAX_LOOP: usize = 256;

/// A loop is accepted once each playlist's share of airtime is within this many percentage
/// points of its share of weight (exact balance can need very long loops when durations differ).
const SHARE_TOLERANCE_PCT: u64 = 5;

/// Whom to resolve for.
#[derive(Debug, Clone, Copy)]
pub enum TargetRef<'a> {
    /// A channel.
    Channel(&'a str),
    /// A display, with the channel it belongs to.
    Display {
        /// Display id.
        id: &'a str,
        /// Its channel.
        channel: &'a str,
    },
}

impl TargetRef<'_> {
    /// Whether `p` plays on this target: the only playlists its resolution reads.
    pub fn matches(&self, p: &Playlist) -> bool {
        match *self {
            TargetRef::Channel(c) => p.channels.iter().any(|x| x == c),
            TargetRef::Display { id, channel } => {
                p.displays.iter().any(|x| x == id) || p.channels.iter().any(|x| x == channel)
            }
        }
    }

    fn wire(&self) -> Target {
        match *self {
            TargetRef::Channel(c) => Target::Channel(c.to_owned()),
            TargetRef::Display { id, .. } => Target::Display(id.to_owned()),
        }
    }
}

/// A resolved stretch, with the reasons (for previews): which playlists won and which active
/// playlists of lower tiers they replaced. The lists are shared between the stretches with the
/// same winners, as the loop is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stretch {
    /// Start, inclusive.
    pub from: DateTime<Utc>,
    /// End, exclusive.
    pub until: DateTime<Utc>,
    /// Winning tier; `None` when nothing is scheduled.
    pub tier: Option<Tier>,
    /// Winning playlists (ids, sorted).
    pub playlists: Arc<[Arc<str>]>,
    /// Their weights, in the same order.
    pub weights: Arc<[u32]>,
    /// Active playlists of lower tiers that the winners replace.
    pub replaced: Arc<[Arc<str>]>,
    /// The loop.
    pub items: Arc<[Item]>,
}

/// What a set of winners shows: built once per set and shared by every stretch it wins.
#[derive(Clone)]
struct Won {
    ids: Arc<[Arc<str>]>,
    weights: Arc<[u32]>,
    items: Arc<[Item]>,
}

/// Resolves `target` over `[from, until)`, with explanations.
pub fn explain(
    playlists: &[Playlist],
    target: TargetRef<'_>,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Vec<Stretch> {
    // Candidates in id order, so every winner and loser list comes out sorted.
    let mut candidates: Vec<(&Playlist, Arc<[Span]>)> = playlists
        .iter()
        .filter(|p| target.matches(p))
        .map(|p| (p, active_windows(p, from, until)))
        .filter(|(_, w)| !w.is_empty())
        .collect();
    candidates.sort_by(|x, y| x.0.id.cmp(&y.0.id));
    let mut memo = Memo {
        ids: candidates
            .iter()
            .map(|(p, _)| Arc::from(p.id.as_str()))
            .collect(),
        won: HashMap::new(),
        lost: HashMap::new(),
    };
    let mut out: Vec<Stretch> = Vec::new();
    // Each candidate keeps a cursor into its (sorted, disjoint) windows that only moves forward
    // as the cuts ascend.
    let mut cursor = vec![0usize; candidates.len()];
    // Winners and losers as candidate indices: comparing them with the previous stretch's and
    // looking them up allocates nothing.
    let (mut winners, mut losers) = (Vec::new(), Vec::new());
    let (mut last_winners, mut last_losers) = (Vec::new(), Vec::new());
    for pair in cuts(&candidates, from, until).windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let tier = contest(&candidates, &mut cursor, a, &mut winners, &mut losers);
        if let Some(last) = out.last_mut()
            && last.until == a
            && last.tier == tier
            && last_winners == winners
            && last_losers == losers
        {
            last.until = b;
            continue;
        }
        let w = memo.won(&candidates, &winners);
        out.push(Stretch {
            from: a,
            until: b,
            tier,
            playlists: w.ids,
            weights: w.weights,
            replaced: memo.lost(&losers),
            items: w.items,
        });
        last_winners.clone_from(&winners);
        last_losers.clone_from(&losers);
    }
    out
}

/// Every instant where some candidate's window starts or ends, with `from` and `until`,
/// sorted and distinct.
fn cuts(
    candidates: &[(&Playlist, Arc<[Span]>)],
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let mut cuts: Vec<DateTime<Utc>> = vec![from, until];
    for (_, windows) in candidates {
        for (a, b) in windows.iter() {
            cuts.push(*a);
            cuts.push(*b);
        }
    }
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// Who is active at `a` (each candidate's cursor moved up to it): the highest tier among them,
/// its playlists in `winners`, the active ones of lower tiers in `losers`.
fn contest(
    candidates: &[(&Playlist, Arc<[Span]>)],
    cursor: &mut [usize],
    a: DateTime<Utc>,
    winners: &mut Vec<usize>,
    losers: &mut Vec<usize>,
) -> Option<Tier> {
    winners.clear();
    losers.clear();
    let mut tier = None;
    for (k, (p, w)) in candidates.iter().enumerate() {
        while cursor[k] < w.len() && w[cursor[k]].1 <= a {
            cursor[k] += 1;
        }
        if cursor[k] < w.len() && w[cursor[k]].0 <= a {
            tier = tier.max(Some(p.tier));
            winners.push(k);
        }
    }
    winners.retain(|&k| {
        let win = Some(candidates[k].0.tier) == tier;
        if !win {
            losers.push(k);
        }
        win
    });
    tier
}

/// The same winning (and losing) sets recur, every weekday's dayparts: each is built once.
struct Memo {
    /// Candidates' ids, by index.
    ids: Vec<Arc<str>>,
    won: HashMap<Vec<usize>, Won>,
    lost: HashMap<Vec<usize>, Arc<[Arc<str>]>>,
}

impl Memo {
    /// What `winners` show together.
    fn won(&mut self, candidates: &[(&Playlist, Arc<[Span]>)], winners: &[usize]) -> Won {
        if let Some(w) = self.won.get(winners) {
            return w.clone();
        }
        let ps: Vec<&Playlist> = winners.iter().map(|&k| candidates[k].0).collect();
        let names: Vec<Arc<str>> = winners.iter().map(|&k| self.ids[k].clone()).collect();
        let w = Won {
            items: build_loop(&ps, &names).into(),
            weights: ps.iter().map(|p| p.weight).collect(),
            ids: names.into(),
        };
        self.won.insert(winners.to_vec(), w.clone());
        w
    }

    /// The ids of `losers`.
    fn lost(&mut self, losers: &[usize]) -> Arc<[Arc<str>]> {
        if let Some(r) = self.lost.get(losers) {
            return r.clone();
        }
        let r: Arc<[Arc<str>]> = losers.iter().map(|&k| self.ids[k].clone()).collect();
        self.lost.insert(losers.to_vec(), r.clone());
        r
    }
}

/// Resolves `target` over `[from, until)` into a wire timeline. `timezone` is the zone's name,
/// carried for display.
pub fn resolve(
    playlists: &[Playlist],
    target: TargetRef<'_>,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    timezone: &str,
) -> Timeline {
    let segments = explain(playlists, target, from, until)
        .into_iter()
        .map(|s| Segment {
            from: s.from,
            until: s.until,
            tier: s.tier,
            playlists: s.playlists,
            items: s.items,
        })
        .collect();
    Timeline {
        target: target.wire(),
        timezone: timezone.to_owned(),
        from,
        until,
        segments,
    }
}

/// Interleaves the playlists' items so that each playlist's airtime is proportional to its
/// weight: the next item always comes from the playlist with the least airtime per weight.
/// The loop ends when every playlist has shown all its items a whole number of times and each
/// playlist's airtime share is within [`SHARE_TOLERANCE_PCT`] points of its weight share (or at
/// [`MAX_LOOP`], cut at the last whole cycle).
fn build_loop(playlists: &[&Playlist], names: &[Arc<str>]) -> Vec<Item> {
    if playlists.is_empty() {
        return Vec::new();
    }
    let n = playlists.len();
    let mut cursor = vec![0usize; n];
    let mut airtime = vec![0u64; n];
    let mut cycled = vec![false; n];
    let total_weight: u64 = playlists.iter().map(|p| u64::from(p.weight)).sum();
    let mut out = Vec::new();
    let mut last_whole = None;
    while out.len() < MAX_LOOP {
        let i = (0..n)
            .min_by(|&a, &b| {
                let wa = u64::from(playlists[a].weight);
                let wb = u64::from(playlists[b].weight);
                (airtime[a] * wb).cmp(&(airtime[b] * wa)).then(a.cmp(&b))
            })
            .expect("n > 0");
        let p = playlists[i];
        let item = &p.items[cursor[i]];
        out.push(Item {
            id: item.id.clone(),
            playlist: names[i].clone(),
            seconds: item.seconds,
            text: item.text.clone(),
        });
        airtime[i] += u64::from(item.seconds);
        cursor[i] = (cursor[i] + 1) % p.items.len();
        if cursor[i] == 0 {
            cycled[i] = true;
        }
        if cycled.iter().all(|c| *c) && cursor.iter().all(|c| *c == 0) {
            last_whole = Some(out.len());
            let total: u64 = airtime.iter().sum();
            // |airtime_k / total - w_k / W| <= tolerance, in integers.
            let balanced = (0..n).all(|k| {
                let have = airtime[k] * total_weight * 100;
                let want = total * u64::from(playlists[k].weight) * 100;
                have.abs_diff(want) <= SHARE_TOLERANCE_PCT * total * total_weight
            });
            if balanced {
                return out;
            }
        }
    }
    if let Some(len) = last_whole {
        out.truncate(len);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::playlist::tests_support::custom;
    use proptest::prelude::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const DAY: &str = r#"{"from": "2021-05-15T00:00", "until": "2021-05-16T00:00"}"#;

    fn lobby(ps: &[Playlist], from: &str, until: &str) -> Vec<Stretch> {
        explain(ps, TargetRef::Channel("lobby"), utc(from), utc(until))
    }

    #[test]
    fn higher_tier_replaces_lower_without_alternating() {
        let normal = custom("normal", "normal", 1, "UTC", DAY, &[("n1", 10)]);
        let interrupt = custom(
            "notice",
            "interrupt",
            1,
            "UTC",
            r#"{"from": "2021-05-15T10:00", "until": "2021-05-15T11:00"}"#,
            &[("i1", 10)],
        );
        let s = lobby(
            &[normal, interrupt],
            "2021-05-15T09:00:00Z",
            "2021-05-15T12:00:00Z",
        );
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].tier, Some(Tier::Interrupt));
        assert_eq!(s[1].from, utc("2021-05-15T10:00:00Z"));
        assert_eq!(&*s[1].replaced, [Arc::from("normal")]);
        assert!(s[1].items.iter().all(|i| &*i.playlist == "notice"));
        assert_eq!(s[0].tier, Some(Tier::Normal));
        assert_eq!(s[2].tier, Some(Tier::Normal));
    }

    #[test]
    fn fallback_only_when_nothing_else() {
        let fb = custom(
            "fb",
            "fallback",
            1,
            "UTC",
            r#"{"start": "00:00", "end": "00:00"}"#,
            &[("f", 10)],
        );
        let day = custom(
            "day",
            "normal",
            1,
            "UTC",
            r#"{"start": "08:00", "end": "18:00"}"#,
            &[("d", 10)],
        );
        let s = lobby(&[fb, day], "2021-05-15T00:00:00Z", "2021-05-16T00:00:00Z");
        let tiers: Vec<_> = s.iter().map(|s| s.tier).collect();
        assert_eq!(
            tiers,
            vec![
                Some(Tier::Fallback),
                Some(Tier::Normal),
                Some(Tier::Fallback)
            ]
        );
    }

    #[test]
    fn equal_tier_shares_airtime_by_weight() {
        let a = custom("a", "normal", 2, "UTC", DAY, &[("a1", 10), ("a2", 10)]);
        let b = custom("b", "normal", 1, "UTC", DAY, &[("b1", 10)]);
        let s = lobby(&[a, b], "2021-05-15T01:00:00Z", "2021-05-15T02:00:00Z");
        assert_eq!(s.len(), 1);
        let air = |p: &str| {
            s[0].items
                .iter()
                .filter(|i| &*i.playlist == p)
                .map(|i| i.seconds)
                .sum::<u32>()
        };
        assert_eq!(air("a"), 2 * air("b"));
        // every item of every playlist appears
        for id in ["a1", "a2", "b1"] {
            assert!(s[0].items.iter().any(|i| &*i.id == id), "{id}");
        }
    }

    #[test]
    fn unequal_durations_share_by_time_not_count() {
        let a = custom("a", "normal", 1, "UTC", DAY, &[("a1", 30)]);
        let b = custom("b", "normal", 1, "UTC", DAY, &[("b1", 10)]);
        let s = lobby(&[a, b], "2021-05-15T01:00:00Z", "2021-05-15T02:00:00Z");
        let count = |p: &str| s[0].items.iter().filter(|i| &*i.playlist == p).count();
        assert_eq!((count("a"), count("b")), (1, 3));
    }

    #[test]
    fn empty_stretches_keep_coverage() {
        let day = custom(
            "day",
            "normal",
            1,
            "UTC",
            r#"{"start": "08:00", "end": "18:00"}"#,
            &[("d", 10)],
        );
        let s = lobby(&[day], "2021-05-15T00:00:00Z", "2021-05-16T00:00:00Z");
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].tier, None);
        assert!(s[0].items.is_empty());
    }

    #[test]
    fn display_gets_its_own_and_its_channel_playlists() {
        let mut own = custom("own", "interrupt", 1, "UTC", DAY, &[("o", 10)]);
        own.channels.clear();
        own.displays = vec!["lobby-1".into()];
        let chan = custom("chan", "normal", 1, "UTC", DAY, &[("c", 10)]);
        let ps = [own, chan];
        let t = TargetRef::Display {
            id: "lobby-1",
            channel: "lobby",
        };
        let s = explain(
            &ps,
            t,
            utc("2021-05-15T01:00:00Z"),
            utc("2021-05-15T02:00:00Z"),
        );
        assert_eq!(&*s[0].playlists, [Arc::from("own")]);
        assert_eq!(&*s[0].weights, [1]);
        assert_eq!(&*s[0].replaced, [Arc::from("chan")]);
        let s = lobby(&ps, "2021-05-15T01:00:00Z", "2021-05-15T02:00:00Z");
        assert_eq!(&*s[0].playlists, [Arc::from("chan")]);
    }

    fn arb_entry() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u32..24, 0u32..60, 1u32..600)
                .prop_map(|(h, m, len)| format!(r#"{{"cron": "{m} {h} * * *", "for": "{len}m"}}"#)),
            (0u32..24, 0u32..24, 0usize..7).prop_map(|(a, b, d)| format!(
                r#"{{"days": ["{}"], "start": "{a:02}:00", "end": "{b:02}:30"}}"#,
                ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][d]
            )),
            (0i64..72, 1i64..40).prop_map(|(a, len)| {
                let from = utc("2021-03-26T00:00:00Z") + chrono::Duration::hours(a);
                let until = from + chrono::Duration::hours(len);
                format!(
                    r#"{{"from": "{}", "until": "{}"}}"#,
                    from.to_rfc3339(),
                    until.to_rfc3339()
                )
            }),
        ]
    }

    fn arb_playlist(i: usize) -> impl Strategy<Value = Playlist> {
        (
            prop::collection::vec(arb_entry(), 1..3),
            0usize..4,
            1u32..4,
            prop::sample::select(vec![
                "UTC",
                "Europe/Berlin",
                "America/New_York",
                "Asia/Shanghai",
            ]),
        )
            .prop_map(move |(entries, tier, weight, tz)| {
                custom(
                    &format!("p{i}"),
                    ["fallback", "normal", "interrupt", "emergency"][tier],
                    weight,
                    tz,
                    &entries.join(","),
                    &[("x", 7), ("y", 13)],
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Over the 2021 DST weekend in Europe, segments never overlap, leave no hole, cover the
        /// horizon exactly, and the winners are always of the highest active tier.
        #[test]
        fn segments_tile_the_horizon(
            ps in (arb_playlist(0), arb_playlist(1), arb_playlist(2)).prop_map(|(a, b, c)| vec![a, b, c]),
            start_h in 0i64..60,
        ) {
            let from = utc("2021-03-26T00:00:00Z") + chrono::Duration::hours(start_h);
            let until = from + chrono::Duration::hours(48);
            let tl = resolve(&ps, TargetRef::Channel("lobby"), from, until, "UTC");
            prop_assert_eq!(tl.segments.first().unwrap().from, from);
            prop_assert_eq!(tl.segments.last().unwrap().until, until);
            for w in tl.segments.windows(2) {
                prop_assert_eq!(w[0].until, w[1].from);
                prop_assert!(w[0] != w[1]);
            }
            for s in &tl.segments {
                prop_assert!(s.from < s.until);
                prop_assert_eq!(s.items.is_empty(), s.tier.is_none());
                let mid = s.from;
                let top = ps.iter()
                        .filter(|p| !active_windows(p, mid, mid + chrono::Duration::seconds(1))
                        .is_empty())
                    .map(|p| p.tier)
                    .max();
                prop_assert_eq!(s.tier, top);
            }
        }
    }
}

/// Where and from when `new` shows something different from `old` within `[from, until)`:
/// for each target that changes, the first instant that differs.
pub fn impact(
    old: &[Playlist],
    new: &[Playlist],
    targets: &[TargetRef<'_>],
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Vec<(Target, DateTime<Utc>)> {
    let mut out = Vec::new();
    for t in targets {
        let a = resolve(old, *t, from, until, "");
        let b = resolve(new, *t, from, until, "");
        let mut cuts: Vec<DateTime<Utc>> = a
            .segments
            .iter()
            .chain(&b.segments)
            .map(|s| s.from)
            .collect();
        cuts.sort();
        cuts.dedup();
        let same = |x: Option<&Segment>, y: Option<&Segment>| match (x, y) {
            (Some(x), Some(y)) => {
                x.tier == y.tier && x.playlists == y.playlists && x.items == y.items
            }
            (None, None) => true,
            _ => false,
        };
        if let Some(first) = cuts
            .into_iter()
            .find(|c| !same(a.segment_at(*c), b.segment_at(*c)))
        {
            out.push((t.wire(), first));
        }
    }
    out
}

#[cfg(test)]
mod impact_tests {
    use super::*;
    use crate::domain::playlist::tests_support::custom;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn impact_names_the_changed_targets_and_when() {
        let base = custom(
            "base",
            "normal",
            1,
            "UTC",
            r#"{"start": "00:00", "end": "00:00"}"#,
            &[("a", 10)],
        );
        let evening = custom(
            "evening",
            "interrupt",
            1,
            "UTC",
            r#"{"start": "18:00", "end": "19:00"}"#,
            &[("e", 10)],
        );
        let old = vec![base.clone()];
        let new = vec![base, evening];
        let targets = [TargetRef::Channel("lobby"), TargetRef::Channel("subway")];
        let got = impact(
            &old,
            &new,
            &targets,
            utc("2021-05-15T09:00:00Z"),
            utc("2021-05-17T09:00:00Z"),
        );
        assert_eq!(
            got,
            vec![(Target::Channel("lobby".into()), utc("2021-05-15T18:00:00Z"))]
        );
        assert!(
            impact(
                &old,
                &old,
                &targets,
                utc("2021-05-15T09:00:00Z"),
                utc("2021-05-17T09:00:00Z")
            )
            .is_empty()
        );
    }
}
