//! `marquee-bench catalog`: one playlist edited in a big catalog. The daemon runs with
//! `playlists` generated files over `channels` channels (the resolver benchmark's set) on a real
//! Mosquitto; each run rewrites one playlist file (atomically, as an editor or `git` does) and
//! times it until a subscriber of the broker holds the new signed timeline of every channel the
//! playlist is on. Baseline, in the same run: the same bytes published retained by a plain
//! client to the same subscriber (the broker's own delivery).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use marquee::mqtt::{self, MqttEvent};
use marquee::wire::PublicKey;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Scratch, bench_client, machine, median, mosquitto, playlist_set, spawn_daemon};

/// Where the baseline's copies go.
const BASELINE: &str = "bench/catalog/baseline";

/// What the subscriber got: topic, version (0 for a baseline copy), when.
type Got = (String, u64, Instant);

/// The date-range playlists of the live catalog run from yesterday for five days, so the
/// daemon (whose `now` is today) sees the same share of them active whatever day it runs.
/// Taken once per process: a run crossing midnight (UTC) edits the same playlists it wrote.
fn range_from() -> chrono::NaiveDate {
    static FROM: std::sync::OnceLock<chrono::NaiveDate> = std::sync::OnceLock::new();
    *FROM.get_or_init(|| chrono::Utc::now().date_naive() - chrono::Days::new(1))
}

/// `marquee-bench catalog`.
pub async fn run(n: usize, channels: usize, runs: usize) -> anyhow::Result<()> {
    let scratch = Scratch::new()?;
    let dir = &scratch.0;
    let names: Vec<String> = (0..channels).map(|c| format!("c{c:03}")).collect();
    for i in 0..n {
        let src = playlist_set::generated_playlist(i, channels, range_from());
        std::fs::write(dir.join(format!("playlists/p{i}.json")), src)?;
    }
    let (_mq, port) = mosquitto(dir)?;
    let cfg = dir.join("marquee.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n[mqtt]\nembedded = false\nurl = \"mqtt://127.0.0.1:{port}\"\n\
             [schedule]\nplaylists_dir = {:?}\ntimezone = \"Asia/Shanghai\"\nchannels = {names:?}\n",
            dir.join("data").display().to_string(),
            dir.join("playlists").display().to_string(),
        ),
    )?;
    let t = Instant::now();
    let d = spawn_daemon(&cfg, dir.join("data"), &[])?;
    println!(
        "# catalog: {n} playlists × {channels} channels on Mosquitto (READY in {:.1} s), {runs} edits of one playlist each, {}",
        t.elapsed().as_secs_f64(),
        machine()
    );
    let key = PublicKey::from_hex(&std::fs::read_to_string(d.data.join("signing.pub"))?)?;
    let cancel = CancellationToken::new();
    let (rx, publisher) = subscribe(port, key, &cancel);
    let mut watch = Watch {
        rx,
        held: HashMap::new(),
        last_payload: None,
    };
    // Every channel's first timeline, before the first edit.
    watch
        .until(|held| held.len() >= channels, Duration::from_secs(60))
        .await
        .context("not every channel got a timeline")?;
    println!(
        "run | playlist | edit→first channel ms | edit→all its channels ms | baseline publish→subscriber ms"
    );
    let (mut first, mut all, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let k = (run * 37) % n;
        let (f, a) = edit(dir, &mut watch, k, run, channels).await?;
        // Baseline: the last timeline's bytes again, retained, by a plain client.
        let payload = watch.last_payload.clone().unwrap_or_default();
        let t0 = Instant::now();
        publisher.publish(BASELINE, payload, true)?;
        let (_, _, at) = watch.next(|(topic, _, _)| topic == BASELINE).await?;
        let b = at.duration_since(t0).as_secs_f64() * 1000.0;
        println!("{run} | p{k} | {f:.1} | {a:.1} | {b:.2}");
        first.push(f);
        all.push(a);
        base.push(b);
    }
    let p99 = |v: &[f64]| super::stats(v.to_vec()).p99;
    println!(
        "edit→all its channels: median {:.1} ms, p99 {:.1} ms (target < 50) | edit→first channel: median {:.1} ms, p99 {:.1} ms | baseline publish→subscriber: median {:.2} ms, p99 {:.2} ms",
        median(all.clone()),
        p99(&all),
        median(first.clone()),
        p99(&first),
        median(base.clone()),
        p99(&base)
    );
    cancel.cancel();
    Ok(())
}

/// Rewrites playlist `k` (its text, and emergency tier so it wins its windows on each of its
/// channels) and waits for every channel it is on; ms to the first and to the last.
async fn edit(
    dir: &Path,
    watch: &mut Watch,
    k: usize,
    run: usize,
    channels: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut v: serde_json::Value =
        serde_json::from_str(&playlist_set::generated_playlist(k, channels, range_from()))?;
    v["tier"] = "emergency".into();
    for item in v["items"].as_array_mut().context("no items")? {
        let text = &mut item["text"]["en"];
        *text = format!("edit {run}: {}", text.as_str().unwrap_or("")).into();
    }
    let edited = serde_json::to_string_pretty(&v)?;
    let mine: Vec<String> = v["targets"]["channels"]
        .as_array()
        .context("no channels")?
        .iter()
        .filter_map(|c| {
            c.as_str()
                .map(|c| format!("marquee/v1/channel/{c}/timeline"))
        })
        .collect();
    let before: HashMap<String, u64> = mine
        .iter()
        .map(|t| (t.clone(), watch.held.get(t).copied().unwrap_or(0)))
        .collect();
    let tmp = dir.join(format!("playlists/.p{k}.json.tmp"));
    std::fs::write(&tmp, &edited)?;
    let t0 = Instant::now();
    std::fs::rename(&tmp, dir.join(format!("playlists/p{k}.json")))?;
    let mut first = None;
    let mut left: Vec<String> = mine.clone();
    while !left.is_empty() {
        let (topic, _, at) = watch
            .next(|(topic, version, _)| before.get(topic).is_some_and(|b| version > b))
            .await
            .with_context(|| format!("run {run}: not every channel of p{k} changed: {left:?}"))?;
        first.get_or_insert(at);
        if let Some(i) = left.iter().position(|t| *t == topic) {
            left.swap_remove(i);
            if left.is_empty() {
                let ms = |i: Instant| i.duration_since(t0).as_secs_f64() * 1000.0;
                return Ok((ms(first.unwrap_or(at)), ms(at)));
            }
        }
    }
    bail!("p{k} is on no channel")
}

/// The subscriber's view: the newest version of each timeline topic, and what comes next.
struct Watch {
    rx: mpsc::Receiver<(Got, Vec<u8>)>,
    held: HashMap<String, u64>,
    last_payload: Option<Vec<u8>>,
}

impl Watch {
    /// The next message `pred` accepts (within 30 s), keeping track of every version seen.
    async fn next(&mut self, pred: impl Fn(&Got) -> bool) -> anyhow::Result<Got> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some((got, payload))) = tokio::time::timeout(left, self.rx.recv()).await else {
                bail!("nothing more within 30 s");
            };
            if got.0 != BASELINE {
                self.held.insert(got.0.clone(), got.1);
                self.last_payload = Some(payload);
            }
            if pred(&got) {
                return Ok(got);
            }
        }
    }

    /// Takes messages until `done` holds of the versions seen.
    async fn until(
        &mut self,
        done: impl Fn(&HashMap<String, u64>) -> bool,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let t0 = Instant::now();
        while !done(&self.held) {
            if t0.elapsed() > limit {
                bail!("{} topics after {limit:?}", self.held.len());
            }
            self.next(|_| true).await?;
        }
        Ok(())
    }
}

/// A subscriber of every channel's timeline (each verified) and of the baseline topic; and a
/// plain publisher for the baseline.
fn subscribe(
    port: u16,
    key: PublicKey,
    cancel: &CancellationToken,
) -> (mpsc::Receiver<(Got, Vec<u8>)>, mqtt::MqttHandle) {
    let subscriptions = vec!["marquee/v1/channel/+/timeline".into(), BASELINE.into()];
    let (_handle, mut events) = mqtt::connect(
        bench_client("bench-catalog-sub".into(), port, subscriptions),
        cancel.child_token(),
    );
    let (tx, rx) = mpsc::channel(1 << 16);
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            let MqttEvent::Message { topic, payload, .. } = ev else {
                continue;
            };
            let at = Instant::now();
            let version = if topic == BASELINE {
                0
            } else {
                match marquee::wire::verify(&key, &topic, &payload, None, Utc::now()) {
                    Ok(body) => body.version,
                    Err(_) => continue,
                }
            };
            if tx
                .send(((topic, version, at), payload.to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let (publisher, mut publisher_events) = mqtt::connect(
        bench_client("bench-catalog-pub".into(), port, Vec::new()),
        cancel.child_token(),
    );
    // The client runs while someone takes its events.
    tokio::spawn(async move { while publisher_events.recv().await.is_some() {} });
    (rx, publisher)
}
