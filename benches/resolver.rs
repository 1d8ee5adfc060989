//! The resolver over 1,000 playlists × 100 channels, 48 h timelines: `cargo bench --bench
//! resolver`. Each iteration resolves every channel with fresh playlists (their memo of active
//! windows empty), as the scheduler does when its `now` moves.

#[path = "../src/bin/marquee-bench/playlist_set.rs"]
mod playlist_set;

use chrono::{DateTime, Duration, Utc};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use marquee::domain::{TargetRef, resolve};

fn all_channels(c: &mut Criterion) {
    let (playlists, names) = playlist_set::generate(1000, 100).expect("generated playlists");
    let from: DateTime<Utc> = "2026-11-28T00:00:00Z".parse().expect("time");
    let until = from + Duration::hours(48);
    let mut g = c.benchmark_group("resolver");
    g.sample_size(20);
    g.measurement_time(std::time::Duration::from_secs(10));
    g.bench_function("1000 playlists x 100 channels, 48 h", |b| {
        b.iter_batched(
            // A clone starts with an empty memo: the cron walk is part of each iteration.
            || playlists.clone(),
            |ps| {
                let mut segments = 0;
                for name in &names {
                    let tl = resolve(&ps, TargetRef::Channel(name), from, until, "Asia/Shanghai");
                    segments += tl.segments.len();
                }
                assert_eq!(segments, 40_800);
                segments
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, all_channels);
criterion_main!(benches);
