//! The `dry-run` driver: each message as a JSON line in a file, reported accepted (for trying a
//! campaign end to end without a carrier).

use std::io::Write;

use serde::Serialize;

use super::{Answer, Driver, Link, Outgoing};
use crate::domain::delivery::Submit;
use crate::domain::segments::{Encoding, segments};
use crate::sms::config::DryRunConfig;

#[derive(Serialize)]
struct DryRunLine<'a> {
    id: i64,
    gateway: &'a str,
    to: &'a str,
    from: &'a str,
    text: &'a str,
    encoding: Encoding,
    parts: usize,
    at: String,
}

impl Driver for DryRunConfig {
    async fn send(&self, link: &Link, ms: &[Outgoing<'_>]) -> Vec<Answer> {
        ms.iter().map(|m| one(link, m)).collect()
    }
}

fn one(link: &Link, m: &Outgoing<'_>) -> Answer {
    let seg = segments(m.text);
    let line = DryRunLine {
        id: m.id,
        gateway: &link.name,
        to: m.to,
        from: m.from,
        text: m.text,
        encoding: seg.encoding,
        parts: seg.parts,
        at: chrono::Utc::now().to_rfc3339(),
    };
    let Some(file) = &link.dry_run else {
        return Answer::new(Submit::Transient, Some("dry-run file not open".into()));
    };
    let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
    bytes.push(b'\n');
    let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
    match f.write_all(&bytes) {
        Ok(()) => Answer {
            submit: Submit::Accepted,
            carrier_id: Some(format!("dry-run-{}", m.id)),
            reason: None,
            retry_after: None,
        },
        Err(e) => Answer::new(
            Submit::Transient,
            Some(format!("cannot write the dry-run file: {e}")),
        ),
    }
}
