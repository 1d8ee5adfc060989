//! The simulated fleet in processes of its own (`--fleet-procs N`), so that a report says how
//! the cores were shared: each child (`marquee-bench fleet-proc`) runs its share of the agents
//! and writes what each one saw as a line on stdout, with the wall-clock time it saw it; the
//! parent turns the lines back into [`Seen`] (same machine, same clock).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Utc};
use marquee::wire::PublicKey;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Check, Kind, Proc, Seen};

/// One child's part: agents `from..from + count`, each line `agent kind value at_ns`.
pub async fn child(
    port: u16,
    from: usize,
    count: usize,
    key: &str,
    verify: bool,
) -> anyhow::Result<()> {
    let key = PublicKey::from_hex(key)?;
    let check = if verify { Check::Verify } else { Check::Parse };
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel::<Seen>(1 << 16);
    super::agents_in_waves(from..from + count, port, &key, check, &cancel, tx).await;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    while let Some(s) = rx.recv().await {
        let (kind, value) = match s.kind {
            Kind::Connected => ("C", String::new()),
            Kind::Timeline { version, issued } => (
                "T",
                format!("{version}/{}", issued.timestamp_nanos_opt().unwrap_or(0)),
            ),
            Kind::Alert { id } => ("A", id),
            Kind::Baseline { seq } => ("B", seq.to_string()),
        };
        let at = s.at_utc.timestamp_nanos_opt().unwrap_or(0);
        writeln!(out, "{} {kind} {value} {at}", s.agent)?;
        if rx.is_empty() {
            out.flush()?;
        }
    }
    Ok(())
}

/// Starts `procs` children sharing `n` agents; their reports arrive on the receiver.
pub fn spawn(
    n: usize,
    procs: usize,
    port: u16,
    key: &PublicKey,
    check: Check,
) -> anyhow::Result<(mpsc::Receiver<Seen>, Vec<Proc>)> {
    let (tx, rx) = mpsc::channel::<Seen>(1 << 20);
    let per = n.div_ceil(procs.max(1));
    let mut children = Vec::new();
    for from in (0..n).step_by(per) {
        let count = per.min(n - from);
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "fleet-proc",
                "--port",
                &port.to_string(),
                "--from",
                &from.to_string(),
            ])
            .args(["--count", &count.to_string(), "--key", &key.to_hex()])
            .args((check == Check::Parse).then_some("--no-verify"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(s) = parse(&line)
                    && tx.blocking_send(s).is_err()
                {
                    return;
                }
            }
        });
        children.push(Proc(child));
    }
    Ok((rx, children))
}

/// A child's line back into what the agent saw; `at` from the wall clock's age of the report.
fn parse(line: &str) -> Option<Seen> {
    let mut f = line.split(' ');
    let agent = f.next()?.parse().ok()?;
    let kind = f.next()?;
    let value = f.next()?;
    let at_utc = DateTime::<Utc>::from_timestamp_nanos(f.next()?.parse().ok()?);
    let kind = match kind {
        "C" => Kind::Connected,
        "T" => {
            let (v, i) = value.split_once('/')?;
            Kind::Timeline {
                version: v.parse().ok()?,
                issued: DateTime::<Utc>::from_timestamp_nanos(i.parse().ok()?),
            }
        }
        "A" => Kind::Alert {
            id: value.to_owned(),
        },
        "B" => Kind::Baseline {
            seq: value.parse().ok()?,
        },
        _ => return None,
    };
    let age = (Utc::now() - at_utc).to_std().unwrap_or_default();
    Some(Seen {
        agent,
        kind,
        at: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
        at_utc,
    })
}

/// CPU seconds the children have used so far.
pub fn cpu(children: &[Proc]) -> f64 {
    children
        .iter()
        .map(|c| super::cpu_secs(&c.0.id().to_string()))
        .sum()
}
