//! Fleet intake: agents' retained status and event batches, read from the broker and written to
//! the store. A report is stored only when it comes from a registered display and is signed with
//! that display's report key for its own topic (see [`crate::registry`]); the rest is dropped and
//! counted (`marquee_agent_reports_dropped_total{reason}`). Reports are checked against their topic
//! and stored once per (display, event id), so redeliveries after reconnects do not count twice;
//! an event id that is not the batch's own (`{display}:{outbox}:…`) is dropped and counted. After each
//! stored batch the agent gets a signed receipt (`agent/{display}/ack`); only that lets it drop
//! the events from its outbox.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::mqtt::MqttHandle;
use crate::registry::Registry;
use crate::store::Store;
use crate::wire::agent::{EventAck, EventBatch, Status};
use crate::wire::{KeyPair, Signed, SignedBody, Topic, WireError, sign, verify};

/// A display whose clock is further off than this (ms) is flagged (`clock_skew` in the fleet
/// view): it would start and end alerts and timelines at the wrong time.
pub const MAX_SKEW_MS: i64 = 30_000;

/// A display online by its last status but silent for longer than this is `stale`: a playing
/// agent reports plays as it goes, so minutes of silence mean it is not playing or not heard.
pub const STALE_AFTER: chrono::Duration = chrono::Duration::minutes(5);

/// How long a receipt stays valid.
const ACK_LIFETIME: chrono::Duration = chrono::Duration::hours(1);

/// What the intake needs to answer agents.
pub struct Receipts {
    /// The daemon's signing key.
    pub keys: Arc<KeyPair>,
    /// Where to publish.
    pub mqtt: MqttHandle,
}

/// Runs until `cancel` or until `rx` closes.
pub async fn run(
    store: Arc<Store>,
    prefix: String,
    mut rx: mpsc::Receiver<(String, Bytes, bool)>,
    metrics: Metrics,
    receipts: Receipts,
    registry: Arc<Registry>,
    cancel: CancellationToken,
) {
    let mut intake = Intake {
        registry,
        metrics: metrics.clone(),
        statuses: HashMap::new(),
        warned: HashSet::new(),
    };
    loop {
        let (topic, payload, retained) = tokio::select! {
            _ = cancel.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        if payload.is_empty() {
            continue;
        }
        let store = store.clone();
        let res = match intake.read(&prefix, &topic, &payload) {
            Some(Report::Status(s)) => {
                tracing::info!(display = %s.display, online = s.online, "display status");
                let now = Utc::now();
                // A live status was just written by the agent: its `at` against our clock
                // is the agent's clock skew (a retained one may be old: no measure).
                let skew = (!retained).then(|| (s.at - now).num_milliseconds());
                if let Some(ms) = skew.filter(|ms| ms.abs() > MAX_SKEW_MS) {
                    tracing::warn!(display = %s.display, skew_ms = ms, "display clock is off");
                }
                tokio::task::spawn_blocking(move || store.record_status(&s, now, skew).map(|()| 0))
                    .await
            }
            Some(Report::Events(b)) => {
                let (display, upto, outbox) = (b.display, b.upto, b.outbox);
                let own = format!("{display}:{outbox}:");
                let (events, foreign): (Vec<_>, Vec<_>) =
                    b.events.into_iter().partition(|e| e.id.starts_with(&own));
                if !foreign.is_empty() {
                    tracing::warn!(
                        topic,
                        dropped = foreign.len(),
                        first = %foreign[0].id,
                        "events whose id belongs to another display or outbox; dropped"
                    );
                    intake.dropped("foreign_id", foreign.len());
                }
                let res = tokio::task::spawn_blocking(move || {
                    store
                        .record_events(&display, &events, Utc::now())
                        .map(|n| (n, display))
                })
                .await;
                // Receipt only after the commit.
                res.map(|r| {
                    r.map(|(new, display)| {
                        receipt(&receipts, &prefix, display, outbox, upto);
                        new
                    })
                })
            }
            None => continue,
        };
        match res {
            Ok(Ok(new)) => {
                metrics.events_ingested.inc_by(new as u64);
            }
            Ok(Err(e)) => tracing::error!(topic, error = %e, "cannot store an agent report"),
            Err(e) => tracing::error!(topic, error = %e, "agent report task failed"),
        };
    }
}

/// A report that passed every check.
enum Report {
    Status(Status),
    Events(EventBatch),
}

/// The checks every report passes before it is stored.
struct Intake {
    registry: Arc<Registry>,
    metrics: Metrics,
    /// Per display: the issue time and agent start of the last accepted status.
    statuses: HashMap<String, (DateTime<Utc>, DateTime<Utc>)>,
    /// Displays already warned about (one warning per display and reason, not one per report).
    warned: HashSet<(String, &'static str)>,
}

impl Intake {
    /// The report on `topic` if it comes from a registered display, is signed with that
    /// display's key for this very topic, names that display (and, for events, a valid outbox)
    /// and, for a status, is not older than the last one accepted. Anything else is dropped
    /// and counted by reason.
    fn read(&mut self, prefix: &str, topic: &str, payload: &[u8]) -> Option<Report> {
        let display = match Topic::parse(prefix, topic) {
            Some(Topic::AgentStatus(d) | Topic::AgentEvents(d)) => d,
            _ => return None,
        };
        let Some(entry) = self.registry.get(&display) else {
            self.drop_report(&display, "unregistered", "report from a display that is not registered; dropped (register it with `marquee display add`)");
            return None;
        };
        let body = match verify(&entry.report_key, topic, payload, None, Utc::now()) {
            Ok(b) => b,
            Err(WireError::Malformed(_)) => {
                self.drop_report(&display, "unsigned", "unsigned or malformed report; dropped (is report_key_file set in the agent's config?)");
                return None;
            }
            Err(e) => {
                tracing::warn!(topic, error = %e, "report refused");
                self.dropped("bad_signature", 1);
                return None;
            }
        };
        match body.payload {
            Signed::Status(s) if s.display == display => {
                let last = self.statuses.get(&display);
                // Newer than the last one, or the last will of the agent run we know (signed
                // at its start, sent by the broker when it drops).
                let fresh = last.is_none_or(|(at, started)| {
                    body.issued_at >= *at || (!s.online && s.started_at == *started)
                });
                if !fresh {
                    tracing::warn!(
                        topic,
                        "status older than the last one accepted (a replay); dropped"
                    );
                    self.dropped("replayed", 1);
                    return None;
                }
                self.statuses.insert(
                    display,
                    (
                        body.issued_at.max(last.map_or(body.issued_at, |l| l.0)),
                        s.started_at,
                    ),
                );
                Some(Report::Status(s))
            }
            Signed::Events(b) if b.display == display && valid_outbox(&b.outbox) => {
                Some(Report::Events(b))
            }
            _ => {
                tracing::warn!(
                    topic,
                    "report names another display, another kind or no valid outbox; dropped"
                );
                self.dropped("mismatch", 1);
                None
            }
        }
    }

    fn drop_report(&mut self, id: &str, reason: &'static str, message: &str) {
        if self.warned.insert((id.to_owned(), reason)) {
            tracing::warn!(display = id, reason, "{message}");
        }
        self.dropped(reason, 1);
    }

    fn dropped(&self, reason: &str, n: usize) {
        self.metrics
            .reports_dropped
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc_by(n as u64);
    }
}

/// An outbox id as agents make them: 1-64 letters and digits (it sits between `:` in event ids).
fn valid_outbox(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Publishes the signed receipt for events up to `upto` of `display`'s `outbox`.
fn receipt(r: &Receipts, prefix: &str, display: String, outbox: String, upto: u64) {
    let topic = Topic::AgentAck(display.clone()).render(prefix);
    let now = Utc::now();
    let body = SignedBody {
        topic: topic.clone(),
        version: upto,
        issued_at: now,
        expires_at: now + ACK_LIFETIME,
        payload: Signed::EventAck(EventAck {
            display,
            outbox,
            upto,
        }),
    };
    if let Err(e) = r.mqtt.publish(&topic, sign(&r.keys, &body), false) {
        tracing::warn!(topic, error = %e, "receipt not sent; the agent will resend its events");
    }
}
