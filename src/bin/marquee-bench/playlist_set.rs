//! The resolver benchmark's playlists, generated deterministically; shared by
//! `marquee-bench resolver` and the criterion bench (`benches/resolver.rs`).

use chrono::NaiveDate;
use marquee::domain::{Playlist, ValidationContext};

/// The first day of the date-range playlists of the resolver's set: fixed, so every run of
/// `resolver` resolves the same timelines (its start is 2026-11-28).
pub fn resolver_range_start() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 27).expect("a date")
}

/// `n` playlists over `channels` channels (named `c000`…), and the channel names.
pub fn generate(n: usize, channels: usize) -> anyhow::Result<(Vec<Playlist>, Vec<String>)> {
    let names: Vec<String> = (0..channels).map(|c| format!("c{c:03}")).collect();
    let ctx = ValidationContext {
        channels: names.clone(),
        displays: Default::default(),
        timezone: chrono_tz::Asia::Shanghai,
    };
    let playlists = (0..n)
        .map(|i| {
            let src = generated_playlist(i, channels, resolver_range_start());
            Playlist::parse("bench.json", None, &src, &ctx).map_err(|e| anyhow::anyhow!("{}", e[0]))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((playlists, names))
}

/// Weekday dayparts, cron starts every 1–4 h lasting 15–105 min, 5-day ranges from
/// `range_from`; four zones, four tiers, weights 1–3; each playlist on 5 channels.
pub fn generated_playlist(i: usize, channels: usize, range_from: NaiveDate) -> String {
    let zones = ["Asia/Shanghai", "Europe/Berlin", "America/New_York", "UTC"];
    let tiers = ["normal", "normal", "normal", "interrupt", "fallback"];
    let targets: Vec<String> = (0..5)
        .map(|k| format!("\"c{:03}\"", (i * 7 + k * 13) % channels))
        .collect();
    let schedule = match i % 3 {
        0 => format!(
            r#"{{"days": ["mon-fri"], "start": "{:02}:00", "end": "{:02}:30"}}"#,
            i % 24,
            (i + 3) % 24
        ),
        1 => format!(
            r#"{{"cron": "{} */{} * * *", "for": "{}m"}}"#,
            i % 60,
            1 + i % 4,
            15 + i % 90
        ),
        _ => format!(
            r#"{{"from": "{}T00:00", "until": "{}T00:00"}}"#,
            range_from,
            range_from + chrono::Days::new(5)
        ),
    };
    let items: Vec<String> = (0..3)
        .map(|k| format!(r#"{{"id": "i{k}", "text": {{"zh": "标语 {i}-{k}", "en": "slogan {i}-{k}"}}, "seconds": {}}}"#, 5 + (i + k) % 20))
        .collect();
    format!(
        r#"{{"id": "p{i}", "tier": "{}", "weight": {}, "timezone": "{}", "targets": {{"channels": [{}]}}, "schedule": [{schedule}], "items": [{}]}}"#,
        tiers[i % tiers.len()],
        1 + i % 3,
        zones[i % zones.len()],
        targets.join(", "),
        items.join(", ")
    )
}
