//! A large recipient list: `POST /api/v1/uploads` (streamed to disk, read in chunks) and a
//! campaign from it, next to the same list sent as `recipients_csv` text in the JSON body (how
//! every list reached the daemon before uploads) in a fresh daemon of the same run. Reports the
//! daemon's peak RSS (`VmHWM`), the time, and how long alerts raised during the import took.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{Scratch, free_port, machine, setup_site};

fn peak_kb(pid: u32) -> u64 {
    super::status_kb(pid, "VmHWM:")
}

/// Writes `rows` recipients (distinct mobiles, a name each) as CSV; returns its size.
fn write_list(path: &Path, rows: usize) -> anyhow::Result<u64> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(f, "手机,姓名")?;
    for i in 0..rows {
        writeln!(f, "{},用户{i}", 13_000_000_000u64 + i as u64)?;
    }
    f.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

struct Run {
    secs: f64,
    peak_mb: f64,
    idle_mb: f64,
    recipients: u64,
    alert_ms: Vec<f64>,
}

/// Raises an alert every half second until `stop`; how long each took to be answered, in ms.
async fn drills(http: String, token: String, stop: Arc<AtomicBool>) -> Vec<f64> {
    let Ok(client) = marquee::http_client().build() else {
        return Vec::new();
    };
    let mut ms = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        i += 1;
        let t = Instant::now();
        let ok = client
            .post(format!("{http}/api/v1/alerts"))
            .bearer_auth(&token)
            .json(&json!({"text": {"en": format!("drill {i}")}, "expires_in": "1m"}))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    ms
}

async fn one(list: &Path, upload: bool, limit_mib: u64) -> anyhow::Result<Run> {
    let scratch = Scratch::new()?;
    let dir = &scratch.0;
    setup_site(dir)?;
    let port = free_port()?;
    let d = super::daemon_with(
        dir,
        &format!("embedded = true\nlisten = \"127.0.0.1:{port}\""),
        &format!(
            "[sms]\nsender = \"12345\"\nmax_upload_mib = {limit_mib}\n[[sms.gateways]]\nname = \"dry\"\nkind = \"dry-run\"\npath = {:?}\n",
            dir.join("sms.jsonl").display().to_string()
        ),
        &[],
    )?;
    let pid = d.proc.0.id();
    let token = std::fs::read_to_string(d.data.join("admin.token"))?
        .trim()
        .to_owned();
    let client = marquee::http_client()
        .timeout(Duration::from_secs(1800))
        .build()?;
    let idle_mb = peak_kb(pid) as f64 / 1024.0;
    // Alerts raised while the import runs, each timed until its answer.
    let done = Arc::new(AtomicBool::new(false));
    let alerts = tokio::spawn(drills(d.http.clone(), token.clone(), done.clone()));
    let t0 = Instant::now();
    let bytes = std::fs::read(list)?;
    let body = if upload {
        let up: Value = client
            .post(format!("{}/api/v1/uploads", d.http))
            .bearer_auth(&token)
            .header("Content-Type", "application/octet-stream")
            .body(bytes)
            .send()
            .await?
            .json()
            .await?;
        json!({"name": "big", "text": "{{姓名}}您好", "recipients_upload": up["upload"]})
    } else {
        json!({"name": "big", "text": "{{姓名}}您好", "recipients_csv": String::from_utf8(bytes)?})
    };
    let resp = client
        .post(format!("{}/api/v1/campaigns", d.http))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or_default();
    let secs = t0.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let alert_ms = alerts.await.context("alert task")?;
    if !status.is_success() {
        bail!("campaign not created ({status}): {v}");
    }
    Ok(Run {
        secs,
        peak_mb: peak_kb(pid) as f64 / 1024.0,
        idle_mb,
        recipients: v["estimate"]["recipients"].as_u64().unwrap_or(0),
        alert_ms,
    })
}

fn line(what: &str, r: &Run) {
    let mut a = r.alert_ms.clone();
    a.sort_by(f64::total_cmp);
    let max = a.last().copied().unwrap_or(0.0);
    let p50 = a.get(a.len() / 2).copied().unwrap_or(0.0);
    println!(
        "{what:<44} {:>9} recipients in {:>6.1} s   peak RSS {:>7.1} MB (idle {:>5.1} MB)   alerts during it: {} raised, p50 {:>6.1} ms, max {:>7.1} ms",
        r.recipients,
        r.secs,
        r.peak_mb,
        r.idle_mb,
        a.len(),
        p50,
        max
    );
}

/// `marquee-bench list-import --rows N`.
pub async fn import(rows: usize, baseline: bool) -> anyhow::Result<()> {
    let scratch = Scratch::new()?;
    let list = scratch.0.join("list.csv");
    let size = write_list(&list, rows)?;
    let limit_mib = (size >> 20) + 16;
    println!(
        "list import: {rows} rows, {:.1} MB CSV (UTF-8; number and name), machine: {}",
        size as f64 / 1e6,
        machine()
    );
    let up = one(&list, true, limit_mib).await?;
    line("upload (streamed to disk, read in chunks)", &up);
    if baseline {
        let base = one(&list, false, limit_mib).await?;
        line("baseline: the same list as recipients_csv", &base);
        println!(
            "peak RSS, upload / baseline: {:.2}",
            up.peak_mb / base.peak_mb
        );
    }
    Ok(())
}
