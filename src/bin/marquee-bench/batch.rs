//! SMS through a template carrier that takes batches (Tencent `SendSms`, up to 200 numbers a
//! request): a campaign through a loopback stand-in (its own process, answering `Ok` for
//! every number), next to a plain client sending the same signed batches in the same run.
//! Figures: numbers per second and CPU per number.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{Scratch, cpu_secs, free_port, machine};

const SECRET_ID: &str = "AKIDbench000000000000000000000000";
const SECRET_KEY: &str = "bench-secret-key-0123456789";
const APP: &str = "1400000001";

/// `marquee-bench tencent-gateway --port P`: the stand-in (run as its own process).
pub async fn gateway(port: u16) -> anyhow::Result<()> {
    let count = Arc::new(AtomicU64::new(0));
    let c2 = count.clone();
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::post(move |body: axum::body::Bytes| {
                let c = c2.clone();
                async move {
                    let req: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let set: Vec<Value> = req["PhoneNumberSet"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|n| {
                            let serial = c.fetch_add(1, Ordering::Relaxed);
                            json!({"SerialNo": format!("bench:{serial}"), "PhoneNumber": n, "Fee": 1,
                                "SessionContext": req["SessionContext"], "Code": "Ok", "Message": "send success", "IsoCode": "CN"})
                        })
                        .collect();
                    json!({"Response": {"SendStatusSet": set, "RequestId": "bench"}}).to_string()
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

/// The baseline: `n` numbers in signed `SendSms` batches of `batch`, `concurrency` requests
/// at once, as the daemon's driver builds them. Returns numbers per second.
async fn baseline(url: &str, n: usize, batch: usize, concurrency: usize) -> anyhow::Result<f64> {
    let client = marquee::http_client()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let host = url::Url::parse(url)?
        .host_str()
        .map(str::to_owned)
        .unwrap_or_default()
        + &format!(":{}", url::Url::parse(url)?.port().unwrap_or(80));
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, url, host) =
            (client.clone(), next.clone(), url.to_owned(), host.clone());
        tasks.push(tokio::spawn(async move {
            let params = vec!["5月15日".to_owned()];
            loop {
                let from = next.fetch_add(batch as u64, Ordering::Relaxed) as usize;
                if from >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let numbers: Vec<String> = (from..(from + batch).min(n))
                    .map(|i| format!("+86139{i:08}"))
                    .collect();
                let body = marquee::sms::gateway::tencent::SendSms {
                    phone_number_set: numbers.iter().map(String::as_str).collect(),
                    sms_sdk_app_id: APP,
                    template_id: "2000001",
                    sign_name: "大连政务公开",
                    template_param_set: &params,
                    session_context: "marquee-c1".into(),
                };
                let bytes = serde_json::to_vec(&body)?;
                let mut req = client.post(&url).timeout(Duration::from_secs(30));
                for (k, v) in marquee::sms::gateway::tencent::headers(
                    "SendSms",
                    SECRET_ID,
                    SECRET_KEY,
                    &host,
                    "ap-guangzhou",
                    chrono::Utc::now().timestamp(),
                    &bytes,
                ) {
                    req = req.header(k, v);
                }
                let text = req.body(bytes).send().await?.text().await?;
                let answer = marquee::sms::gateway::tencent::read_answer(&text)
                    .map_err(|(c, m)| anyhow::anyhow!("{c}: {m}"))?;
                if answer.len() != numbers.len() {
                    bail!("answer for {} of {} numbers", answer.len(), numbers.len());
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// A daemon with one Tencent gateway at `url` and one template; its admin token.
fn start(
    dir: &std::path::Path,
    url: &str,
    batch: usize,
    in_flight: usize,
) -> anyhow::Result<(super::Daemon, String)> {
    super::setup_site(dir)?;
    let mqtt = format!("embedded = true\nlisten = \"127.0.0.1:{}\"", free_port()?);
    let section = format!(
        "[sms]\nsender = \"12345\"\n[[sms.templates]]\nname = \"open-day\"\ntext = \"{{{{date}}}}政务开放日欢迎您。\"\nids = {{ tc = \"2000001\" }}\n\
         [[sms.gateways]]\nname = \"tc\"\nkind = \"tencent\"\nurl = \"{url}\"\nregion = \"ap-guangzhou\"\nsdk_app_id = \"{APP}\"\n\
         sign_name = \"大连政务公开\"\nsecret_id_env = \"BENCH_TC_ID\"\nsecret_key_env = \"BENCH_TC_KEY\"\n\
         dlr_secret_env = \"BENCH_DLR\"\nbatch_max = {batch}\nin_flight = {in_flight}\nmessages_per_second = 100000\nsegments_per_second = 1000000\ntimeout = \"30s\"\n"
    );
    let d = super::daemon_with(
        dir,
        &mqtt,
        &section,
        &[
            ("BENCH_TC_ID", SECRET_ID),
            ("BENCH_TC_KEY", SECRET_KEY),
            ("BENCH_DLR", "bench-dlr-secret-0123456789"),
        ],
    )?;
    let token = std::fs::read_to_string(d.data.join("admin.token"))?
        .trim()
        .to_owned();
    Ok((d, token))
}

/// Starts a campaign of `n` numbers with the template; its id.
async fn create(
    client: &reqwest::Client,
    http: &str,
    token: &str,
    n: usize,
) -> anyhow::Result<i64> {
    let mut csv = String::from("number,date\n");
    for i in 0..n {
        csv.push_str(&format!("138{i:08},5月15日\n"));
    }
    let v: Value = client
        .post(format!("{http}/api/v1/campaigns"))
        .bearer_auth(token)
        .json(&json!({"name": "bench", "template": "open-day", "recipients_csv": csv, "start": "now"}))
        .send()
        .await?
        .json()
        .await?;
    v["id"].as_i64().context("campaign not created")
}

/// The campaign once every number's answer is stored (or after a minute).
async fn all_sent(
    client: &reqwest::Client,
    http: &str,
    token: &str,
    id: i64,
    n: usize,
) -> anyhow::Result<Value> {
    let t1 = Instant::now();
    loop {
        let c: Value = client
            .get(format!("{http}/api/v1/campaigns/{id}"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        if c["counts"]["sent"].as_u64() == Some(n as u64) || t1.elapsed() > Duration::from_secs(60)
        {
            return Ok(c);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `marquee-bench sms-batch`.
pub async fn run(n: usize, batch: usize, in_flight: usize, runs: usize) -> anyhow::Result<()> {
    println!(
        "# sms-batch: {n} recipients, one template, batches of {batch}, in-flight {in_flight} requests, stand-in = separate process answering Ok per number, {runs} runs, {}",
        machine()
    );
    let (_gw, url) = super::counting_gateway("tencent-gateway").await?;
    let count = || super::gateway_count(&url);
    let mut ratios = Vec::new();
    for run in 1..=runs.max(1) {
        println!("## run {run}");
        let scratch = Scratch::new()?;
        let (d, token) = start(&scratch.0, &url, batch, in_flight)?;
        let pid = d.proc.0.id();
        let cpu0 = cpu_secs("self");
        let base = baseline(&url, n, batch, in_flight).await?;
        let client_us = (cpu_secs("self") - cpu0) * 1e6 / n as f64;
        println!(
            "baseline: plain client, {n} numbers in signed batches of {batch}, {in_flight} at once: {base:.0} numbers/s, {client_us:.2} µs CPU per number"
        );
        let before = count().await?;
        let client = marquee::http_client()
            .timeout(Duration::from_secs(600))
            .build()?;
        let id = create(&client, &d.http, &token, n).await?;
        let cpu0 = cpu_secs(&pid.to_string());
        let (sustained, total, _, _) =
            super::sms::follow(pid, n, Duration::from_secs(600), || async {
                Ok(count().await? - before)
            })
            .await?;
        // Wait until every answer is stored, then read the CPU.
        let c = all_sent(&client, &d.http, &token, id, n).await?;
        let daemon_us = (cpu_secs(&pid.to_string()) - cpu0) * 1e6 / n as f64;
        println!(
            "marquee: {n} numbers in {total:.1} s, sustained {sustained:.0} numbers/s (10–90 %), ratio to the baseline {:.2}; daemon CPU {daemon_us:.2} µs per number (store, pacing, signing, HTTP) vs plain client {client_us:.2} µs",
            sustained / base
        );
        let got = count().await? - before;
        println!(
            "check: stand-in received {got} numbers (expected {n}); campaign counts {}",
            c["counts"]
        );
        if got as usize != n || c["counts"]["sent"].as_u64() != Some(n as u64) {
            bail!(
                "lost or duplicated numbers: stand-in {got}, sent {}, expected {n}",
                c["counts"]["sent"]
            );
        }
        ratios.push(sustained / base);
        drop(d);
    }
    println!(
        "median ratio of {} runs: {:.2}",
        ratios.len(),
        super::median(ratios)
    );
    Ok(())
}
