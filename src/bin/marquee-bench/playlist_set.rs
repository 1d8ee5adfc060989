//! The resolver benchmark's playlists, generated deterministically; shared by
//! `marquee-bench resolver` and the criterion bench (`benches/resolver.rs`).

use marquee::domain::{Playlist, ValidationContext};

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
            Playlist::parse("bench.json", None, &generated_playlist(i, channels), &ctx)
                .map_err(|e| anyhow::anyhow!("{}", e[0]))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((playlists, names))
}

/// Weekday dayparts, cron starts every 1–4 h lasting 15–105 min, 5-day ranges; four zones,
/// four tiers, weights 1–3; each playlist on 5 channels.
pub fn generated_playlist(i: usize, channels: usize) -> String {
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
        _ => r#"{"from": "2026-11-27T00:00", "until": "2026-12-02T00:00"}"#.to_owned(),
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
