//! SMS throughput: a campaign through a minimal local gateway (a separate process answering
//! 202 at once) or through a real Kannel with fakesmsc, each next to a baseline measured in the
//! same run: a plain keep-alive HTTP client sending the same requests with no store.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{Proc, Scratch, cpu_secs, free_port, machine, rss_kb, setup_site};

const DLR_SECRET: &str = "bench-dlr-secret-0123456789";

/// `marquee-bench gateway --port P`: the minimal gateway (run as its own process).
pub async fn gateway(port: u16) -> anyhow::Result<()> {
    let count = Arc::new(AtomicU64::new(0));
    let c2 = count.clone();
    let app = axum::Router::new()
        .route(
            "/cgi-bin/sendsms",
            axum::routing::get(move || {
                let c = c2.clone();
                async move {
                    c.fetch_add(1, Ordering::Relaxed);
                    (axum::http::StatusCode::ACCEPTED, "0: Accepted for delivery")
                }
            }),
        )
        .route(
            "/count",
            axum::routing::get(move || {
                let c = count.clone();
                async move { c.load(Ordering::Relaxed).to_string() }
            }),
        );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// The baseline: `n` sendsms GETs with `concurrency` keep-alive connections, the same query as
/// Marquee's Kannel driver. Returns requests per second.
async fn baseline(
    url: &str,
    n: usize,
    concurrency: usize,
    dlr_url: &str,
    dlr_mask: u32,
    text: Option<&'static str>,
) -> anyhow::Result<f64> {
    let client = marquee::http_client()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, url, dlr) = (
            client.clone(),
            next.clone(),
            url.to_owned(),
            dlr_url.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let to = format!("+86139{i:08}");
                let text = text.map_or_else(|| format!("baseline {i}"), str::to_owned);
                let mut u = url::Url::parse(&url)?;
                u.query_pairs_mut()
                    .append_pair("username", crate::kannel::USER)
                    .append_pair("password", crate::kannel::PASS)
                    .append_pair("from", "12345")
                    .append_pair("to", &to)
                    .append_pair("text", &text)
                    .append_pair("charset", "UTF-8")
                    .append_pair("coding", "0")
                    .append_pair("dlr-mask", &dlr_mask.to_string())
                    .append_pair("dlr-url", &dlr);
                let resp = client
                    .get(u)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    bail!("baseline request answered {}", resp.status());
                }
                resp.bytes().await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

struct Daemon {
    _proc: Proc,
    pid: u32,
    http: String,
    token: String,
}

fn start_daemon(dir: &Path, gateway_section: &str) -> anyhow::Result<Daemon> {
    setup_site(dir)?;
    let port = free_port()?;
    let d = super::daemon_with(
        dir,
        &format!("embedded = true\nlisten = \"127.0.0.1:{port}\""),
        gateway_section,
        &[
            ("BENCH_DLR_SECRET", DLR_SECRET),
            ("BENCH_GATEWAY_PASSWORD", crate::kannel::PASS),
        ],
    )?;
    let token = std::fs::read_to_string(d.data.join("admin.token"))?
        .trim()
        .to_owned();
    Ok(Daemon {
        pid: d.proc.0.id(),
        http: d.http.clone(),
        token,
        _proc: d.proc,
    })
}

fn gateway_section(url: &str, in_flight: usize, dlr_mask: u32) -> String {
    format!(
        r#"
[sms]
sender = "12345"
[[sms.gateways]]
name = "bench"
kind = "kannel"
url = "{url}"
username = "{}"
password_env = "BENCH_GATEWAY_PASSWORD"
messages_per_second = 100000
segments_per_second = 1000000
in_flight = {in_flight}
dlr_mask = {dlr_mask}
timeout = "30s"
dlr_secret_env = "BENCH_DLR_SECRET"
"#,
        crate::kannel::USER
    )
}

/// Creates and starts a campaign of `n` recipients; returns (id, import seconds).
async fn campaign(d: &Daemon, n: usize) -> anyhow::Result<(i64, f64)> {
    let mut csv = String::with_capacity(n * 16);
    csv.push_str("number\n");
    for i in 0..n {
        csv.push_str(&format!("138{i:08}\n"));
    }
    let client = marquee::http_client()
        .timeout(Duration::from_secs(600))
        .build()?;
    let t0 = Instant::now();
    let resp = client
        .post(format!("{}/api/v1/campaigns", d.http))
        .bearer_auth(&d.token)
        .json(&json!({"name": "bench", "text": TEXT, "recipients_csv": csv, "start": "now"}))
        .send()
        .await?;
    let import = t0.elapsed().as_secs_f64();
    let status = resp.status();
    let v: Value = resp.json().await?;
    if !status.is_success() {
        bail!("campaign create answered {status}: {v}");
    }
    if v["estimate"]["messages"].as_u64() != Some(n as u64) {
        bail!("imported {} of {n}", v["estimate"]["messages"]);
    }
    Ok((v["id"].as_i64().context("no id")?, import))
}

async fn get_json(d: &Daemon, path: &str) -> anyhow::Result<Value> {
    Ok(marquee::http_client()
        .timeout(Duration::from_secs(60))
        .build()?
        .get(format!("{}{path}", d.http))
        .bearer_auth(&d.token)
        .send()
        .await?
        .json()
        .await?)
}

/// Follows progress through `progress()` (messages at the gateway so far) until `n`, sampling
/// the daemon's RSS. Returns (sustained msg/s over 10–90 %, total seconds, RSS min/max MB).
pub(super) async fn follow<F, Fut>(
    pid: u32,
    n: usize,
    limit: Duration,
    mut progress: F,
) -> anyhow::Result<(f64, f64, f64, f64)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    let t0 = Instant::now();
    let (mut lo, mut hi) = (None::<(Instant, u64)>, None::<(Instant, u64)>);
    let (mut rss_min, mut rss_max) = (f64::MAX, 0f64);
    loop {
        let got = progress().await?;
        let now = Instant::now();
        let rss = rss_kb(pid) as f64 / 1024.0;
        rss_min = rss_min.min(rss);
        rss_max = rss_max.max(rss);
        if lo.is_none() && got as usize >= n / 10 {
            lo = Some((now, got));
        }
        if got as usize >= n * 9 / 10 && hi.is_none() {
            hi = Some((now, got));
        }
        if got as usize >= n {
            break;
        }
        if t0.elapsed() > limit {
            bail!("only {got} of {n} messages after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let total = t0.elapsed().as_secs_f64();
    let sustained = match (lo, hi) {
        (Some((t1, c1)), Some((t2, c2))) if t2 > t1 => (c2 - c1) as f64 / (t2 - t1).as_secs_f64(),
        _ => n as f64 / total,
    };
    Ok((sustained, total, rss_min, rss_max))
}

async fn wait_done(d: &Daemon, id: i64) -> anyhow::Result<Value> {
    let t0 = Instant::now();
    loop {
        let c = get_json(d, &format!("/api/v1/campaigns/{id}")).await?;
        if c["status"] == marquee::domain::campaign::CampaignStatus::Done.as_str() {
            return Ok(c);
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("campaign not done: {c}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The campaigns' text (and the fake gateway's baseline text: the same requests).
const TEXT: &str = "Government Affairs Open Day: City Hall, 9:00-17:00";

/// The delivery-report URL a baseline request carries: the shape of the daemon's (see
/// `Gateway::dlr_url`), so both send requests of the same size.
fn baseline_dlr(d: &Daemon) -> String {
    format!(
        "{}/api/v1/sms/dlr/bench?secret={DLR_SECRET}&id=0&type=%d&answer=%A&fid=%F&ts=%T",
        d.http
    )
}

/// `marquee-bench sms-fake`: `runs` runs, each with a fresh daemon and store, a baseline before
/// and after its campaign; the median ratio is the figure.
pub async fn fake(
    n: usize,
    (in_flight, claim_ahead): (usize, Option<usize>),
    baseline_n: usize,
    runs: usize,
    postgres: Option<&str>,
) -> anyhow::Result<()> {
    println!(
        "# sms-fake: {n} recipients, in-flight {in_flight}, claim-ahead {}, gateway = separate process answering 202 at once, {runs} runs, store {}, {}",
        claim_ahead.map_or_else(|| "default".to_owned(), |a| a.to_string()),
        postgres.map_or("SQLite", |_| "PostgreSQL"),
        machine()
    );
    let (gw, base) = super::counting_gateway("gateway").await?;
    let url = format!("{base}cgi-bin/sendsms");
    let count = || super::gateway_count(&base);
    let (mut rates, mut ratios) = (Vec::new(), Vec::new());
    for run in 1..=runs.max(1) {
        println!("## run {run}");
        let scratch = Scratch::new()?;
        let mut section = gateway_section(&url, in_flight, 31);
        if let Some(a) = claim_ahead {
            section.push_str(&format!("claim_ahead = {a}\n"));
        }
        let schema = format!("bench_{}_{run}", std::process::id());
        if let Some(pg) = postgres {
            section.push_str(&postgres_section(pg, &schema)?);
        }
        let d = start_daemon(&scratch.0, &section)?;
        let dlr = baseline_dlr(&d);
        let cpu0 = cpu_secs("self");
        let base = baseline(&url, baseline_n, in_flight, &dlr, 31, Some(TEXT)).await?;
        let client_us = (cpu_secs("self") - cpu0) * 1e6 / baseline_n as f64;
        println!(
            "baseline: plain HTTP client, {baseline_n} requests like the campaign's (same text and report URL), {in_flight} connections: {base:.0} req/s, {client_us:.1} µs CPU per request"
        );
        let before = count().await?;
        let rss_idle = rss_kb(d.pid) as f64 / 1024.0;
        let (id, import) = campaign(&d, n).await?;
        let cpu0 = cpu_secs(&d.pid.to_string());
        let rss_import = rss_kb(d.pid) as f64 / 1024.0;
        println!(
            "import: {n} recipients written in {import:.1} s; daemon RSS {rss_idle:.0} MB idle, {rss_import:.0} MB after the import"
        );
        let (sustained, total, rss_min, rss_max) =
            follow(d.pid, n, Duration::from_secs(1800), || async {
                // An operator watching the campaign: its progress counts are read on every look.
                get_json(&d, &format!("/api/v1/campaigns/{id}")).await?;
                Ok(count().await? - before)
            })
            .await?;
        let c = wait_done(&d, id).await?;
        let daemon_us = (cpu_secs(&d.pid.to_string()) - cpu0) * 1e6 / n as f64;
        let sent = c["counts"]["sent"].as_i64().unwrap_or(0);
        let got = count().await? - before;
        // The plain client's rate swings from run to run on a shared machine: measured again
        // after the campaign, and the ratio is taken to the mean of the two.
        let after = baseline(&url, baseline_n, in_flight, &dlr, 31, Some(TEXT)).await?;
        let mean = (base + after) / 2.0;
        println!("baseline again after the campaign: {after:.0} req/s (mean {mean:.0})");
        println!(
            "CPU per message: daemon {daemon_us:.1} µs (store, pacing, HTTP) vs plain client {client_us:.1} µs (HTTP only)"
        );
        println!(
            "marquee: {n} messages in {total:.1} s, sustained {sustained:.0} msg/s (10–90 %), ratio to the mean baseline {:.2} ({:.2}–{:.2}); daemon RSS while sending {rss_min:.0}–{rss_max:.0} MB",
            sustained / mean,
            sustained / base.max(after),
            sustained / base.min(after)
        );
        println!(
            "check: gateway received {got} (expected {n}); campaign counts {}",
            c["counts"]
        );
        if got as usize != n || sent as usize != n {
            bail!("lost or duplicated messages: gateway {got}, sent {sent}, expected {n}");
        }
        drop(d);
        if let Some(pg) = postgres {
            drop_schema(pg, &schema)?;
        }
        rates.push(sustained);
        ratios.push(sustained / mean);
    }
    median_line(rates, ratios);
    drop(gw);
    Ok(())
}

/// A `[store]` section keeping the daemon's state in a new `schema` at `url` (the password
/// from `MARQUEE_BENCH_PG_PASSWORD`).
fn postgres_section(url: &str, schema: &str) -> anyhow::Result<String> {
    const PASSWORD: &str = "MARQUEE_BENCH_PG_PASSWORD";
    let password = std::env::var(PASSWORD).ok();
    let url = marquee::store::Store::schema_url(url, password.as_deref(), None, schema)?;
    let password = password.map_or(String::new(), |_| {
        format!("password_env = \"{PASSWORD}\"\n")
    });
    Ok(format!("\n[store]\nurl = \"{url}\"\n{password}"))
}

/// Drops a run's `schema` at `url` (the password from `MARQUEE_BENCH_PG_PASSWORD`).
fn drop_schema(url: &str, schema: &str) -> anyhow::Result<()> {
    let password = std::env::var("MARQUEE_BENCH_PG_PASSWORD").ok();
    marquee::store::Store::drop_schema(url, password.as_deref(), None, schema)?;
    Ok(())
}

/// The closing line: median rate and ratio over the runs, and each run's ratio.
fn median_line(rates: Vec<f64>, ratios: Vec<f64>) {
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!(
        "median of {} runs: sustained {:.0} msg/s, ratio to the baseline {:.2} (runs: {})",
        ratios.len(),
        super::median(rates),
        super::median(ratios),
        each.join(", ")
    );
}

/// `marquee-bench sms-kannel`.
pub async fn kannel(
    n: usize,
    in_flight: usize,
    baseline_n: usize,
    dlr_mask: u32,
) -> anyhow::Result<()> {
    println!(
        "# sms-kannel: {n} recipients through Kannel (bearerbox + smsbox + fakesmsc, dlr-mask {dlr_mask} for both), in-flight {in_flight}, {}",
        machine()
    );
    let scratch = Scratch::new()?;
    let kdir = scratch.0.join("kannel");
    std::fs::create_dir_all(&kdir)?;
    let k = crate::kannel::Kannel::start(&kdir).await;
    let d = start_daemon(
        &scratch.0,
        &gateway_section(&k.sendsms, in_flight, dlr_mask),
    )?;
    let dlr = baseline_dlr(&d);
    let log = FakesmscLog::default();
    let received = |k: &crate::kannel::Kannel, what: &str| log.count(k, what);
    // Both rates are measured the same way: until fakesmsc has every message (Kannel answers
    // 202 once bearerbox has queued a message, before it reaches the SMSC).
    let t0 = Instant::now();
    // The baseline's texts differ from the campaign's, to tell them apart at fakesmsc.
    let accepted = baseline(&k.sendsms, baseline_n, in_flight, &dlr, dlr_mask, None).await?;
    follow(d.pid, baseline_n, Duration::from_secs(600), || async {
        received(&k, "baseline")
    })
    .await?;
    let base = baseline_n as f64 / t0.elapsed().as_secs_f64();
    println!(
        "baseline: plain HTTP client, {baseline_n} sendsms requests, {in_flight} connections: accepted at {accepted:.0} req/s; at fakesmsc {base:.0} msg/s"
    );
    let (id, import) = campaign(&d, n).await?;
    println!("import: {n} recipients written in {import:.1} s");
    let followed = follow(d.pid, n, Duration::from_secs(300), || async {
        received(&k, "campaign")
    })
    .await;
    let (sustained, total, rss_min, rss_max) = match followed {
        Ok(f) => f,
        Err(e) => {
            // Kannel may leave a request unanswered: Marquee then marks it `unknown` after the
            // gateway timeout and does not resend it. Say so instead of waiting forever.
            let c = get_json(&d, &format!("/api/v1/campaigns/{id}")).await?;
            bail!("{e}; campaign counts {}", c["counts"]);
        }
    };
    let c = wait_done(&d, id).await?;
    println!(
        "marquee: {n} messages at fakesmsc in {total:.1} s: {:.0} msg/s overall, {sustained:.0} msg/s 10–90 %; ratio to baseline (overall) {:.2}; daemon RSS {rss_min:.0}–{rss_max:.0} MB",
        n as f64 / total,
        n as f64 / total / base
    );
    exactly_once(&k, n, &c["counts"])
}

/// Fails unless fakesmsc got the campaign's text once for each of `n` recipients.
fn exactly_once(k: &crate::kannel::Kannel, n: usize, counts: &Value) -> anyhow::Result<()> {
    let got = k
        .received()
        .into_iter()
        .filter(|r| r.text.starts_with("Government"))
        .fold(
            std::collections::HashMap::<String, usize>::new(),
            |mut m, r| {
                *m.entry(r.to).or_default() += 1;
                m
            },
        );
    let twice = got.values().filter(|&&c| c > 1).count();
    println!(
        "check: {} distinct recipients at fakesmsc (expected {n}), {twice} received twice; campaign counts {counts}",
        got.len(),
    );
    if got.len() != n || twice > 0 {
        bail!("lost or duplicated messages");
    }
    Ok(())
}

/// fakesmsc's log, read only where it grew since the last look (a rescan of a growing log
/// would slow the machine down as the run goes on): the offset read to, the baseline's and the
/// campaign's messages counted, and a partial last line.
#[derive(Default)]
struct FakesmscLog(std::sync::Mutex<(u64, u64, u64, Vec<u8>)>);

impl FakesmscLog {
    /// Messages of `what` (`baseline`, else the campaign) fakesmsc got so far.
    fn count(&self, k: &crate::kannel::Kannel, what: &str) -> anyhow::Result<u64> {
        use std::io::{Read, Seek};
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (offset, base, gov, rest) = &mut *g;
        let mut f = std::fs::File::open(k.fakesmsc_log())?;
        f.seek(std::io::SeekFrom::Start(*offset))?;
        let mut buf = std::mem::take(rest);
        let n = f.read_to_end(&mut buf)?;
        *offset += n as u64;
        let end = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in String::from_utf8_lossy(&buf[..end]).lines() {
            if line.contains("Got message") {
                if line.contains(" text baseline ") {
                    *base += 1;
                } else if line.contains(" text Government") {
                    *gov += 1;
                }
            }
        }
        *rest = buf[end..].to_vec();
        Ok(if what == "baseline" { *base } else { *gov })
    }
}

/// `marquee-bench sms-store`: the dispatcher's store work alone (claim and answer of every
/// message, no HTTP) at each claim size in `batches`, with each number of claimers in
/// `claimers` (threads, each on a store connection of its own, as dispatching nodes would be;
/// more than one needs `postgres`). Fails unless every message was claimed exactly once.
pub fn store(
    n: usize,
    batches: &[usize],
    claimers: &[usize],
    postgres: Option<&str>,
) -> anyhow::Result<()> {
    use marquee::store::Store;
    println!(
        "# sms-store: {n} messages per run, claim + answer of each in the dispatcher's transactions, store {}, {}",
        if postgres.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        machine()
    );
    for &k in claimers {
        if k > 1 && postgres.is_none() {
            bail!("{k} claimers need --postgres (SQLite has one writer)");
        }
        for &batch in batches {
            let scratch = Scratch::new()?;
            let schema = format!("bench_store_{}_{k}_{batch}", std::process::id());
            // Each run in a schema of its own; every claimer on connections of its own.
            let open = || -> anyhow::Result<Store> {
                Ok(match postgres {
                    Some(url) => {
                        let password = std::env::var("MARQUEE_BENCH_PG_PASSWORD").ok();
                        let url = Store::schema_url(url, password.as_deref(), None, &schema)?;
                        Store::connect_with_lease(
                            &url,
                            password.as_deref(),
                            Duration::from_secs(2),
                            None,
                        )?
                    }
                    None => Store::open(&scratch.0.join("marquee.db"))?,
                })
            };
            let store = open()?;
            let id = running_campaign(&store, n)?;
            let stores = (1..k).map(|_| open()).collect::<anyhow::Result<Vec<_>>>()?;
            let cpu0 = cpu_secs("self");
            let t0 = Instant::now();
            let (done, claims) = std::thread::scope(|scope| -> anyhow::Result<(usize, usize)> {
                let runs: Vec<_> = std::iter::once(&store)
                    .chain(stores.iter())
                    .map(|s| scope.spawn(move || claim_all(s, id, batch)))
                    .collect();
                let mut total = (0, 0);
                for r in runs {
                    let (d, c) = r
                        .join()
                        .map_err(|_| anyhow::anyhow!("a claimer panicked"))??;
                    total = (total.0 + d, total.1 + c);
                }
                Ok(total)
            })?;
            let wall = t0.elapsed().as_secs_f64();
            let cpu = cpu_secs("self") - cpu0;
            let sent = store.campaign(id)?.context("campaign gone")?.counts["sent"];
            // A message claimed twice would be counted twice in `done`.
            if sent as usize != n || done != n {
                bail!("claimed {done}, sent {sent}, expected {n}");
            }
            println!(
                "claimers {k}, batch {batch:>4}: {:.1} µs CPU and {:.1} µs wall per message ({claims} transactions, {:.0} messages/s)",
                cpu * 1e6 / n as f64,
                wall * 1e6 / n as f64,
                n as f64 / wall
            );
            drop((store, stores));
            if let Some(pg) = postgres {
                drop_schema(pg, &schema)?;
            }
        }
    }
    Ok(())
}

/// A running campaign of `n` one-part messages in `store`; answers its id.
fn running_campaign(store: &marquee::store::Store, n: usize) -> anyhow::Result<i64> {
    use marquee::domain::campaign::CampaignStatus;
    use marquee::store::sms::{NewCampaign, NewMessage};
    let text: std::sync::Arc<str> = TEXT.into();
    let msgs: Vec<NewMessage> = (0..n)
        .map(|i| NewMessage {
            row: i + 1,
            recipient: 8613800000000 + i as u64,
            text: text.clone(),
            parts: 1,
            params: None,
        })
        .collect();
    let spec = json!({});
    let now = chrono::Utc::now();
    let c = NewCampaign {
        name: "bench",
        spec: &spec,
        start_at: None,
        by: "bench",
        alert: None,
    };
    let id = store.create_campaign(&c, now, &msgs, &[])?;
    store.set_campaign_status(id, &[CampaignStatus::Draft], CampaignStatus::Running, now)?;
    Ok(id)
}

/// Claims campaign `id` by `batch` until nothing is left, answering each claim's messages
/// (accepted) in the next claim, as the dispatcher does; answers (messages, transactions).
fn claim_all(
    store: &marquee::store::Store,
    id: i64,
    batch: usize,
) -> anyhow::Result<(usize, usize)> {
    use marquee::domain::delivery::Submit;
    use marquee::store::sms::Finish;
    let (mut done, mut claims) = (0, 0);
    let mut answers = Vec::new();
    loop {
        let claimed = store.claim_batch(id, "bench", None, chrono::Utc::now(), batch, &answers)?;
        claims += 1;
        if claimed.is_empty() {
            if !answers.is_empty() {
                store.finish_submits(&answers, chrono::Utc::now())?;
            }
            return Ok((done, claims));
        }
        done += claimed.len();
        answers = claimed
            .iter()
            .map(|m| Finish {
                id: m.id,
                campaign: m.campaign,
                parts: m.parts,
                answer: Submit::Accepted,
                carrier_id: None,
                reason: None,
                retry_at: None,
                delivered_by: None,
            })
            .collect();
    }
}
