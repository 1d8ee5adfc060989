//! Fleet intake: agents' retained status and event batches, read from the broker and written to
//! the store. Reports are checked against their topic (an agent cannot report for another display)
//! and stored once per (display, event id), so redeliveries after reconnects do not count twice;
//! an event id that is not the batch's own (`{display}:{outbox}:…`) is dropped and counted. After each
//! stored batch the agent gets a signed receipt (`agent/{display}/ack`); only that lets it drop
//! the events from its outbox.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::mqtt::MqttHandle;
use crate::store::Store;
use crate::wire::agent::{EventAck, EventBatch, Status};
use crate::wire::{KeyPair, Signed, SignedBody, Topic, sign};

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
    cancel: CancellationToken,
) {
    loop {
        let (topic, payload, retained) = tokio::select! {
            _ = cancel.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        if payload.is_empty() {
            continue;
        }
        let store = store.clone();
        let res = match Topic::parse(&prefix, &topic) {
            Some(Topic::AgentStatus(display)) => match serde_json::from_slice::<Status>(&payload) {
                Ok(s) if s.display == display => {
                    tracing::info!(display = %s.display, online = s.online, "display status");
                    let now = Utc::now();
                    // A live status was just written by the agent: its `at` against our clock
                    // is the agent's clock skew (a retained one may be old: no measure).
                    let skew = (!retained).then(|| (s.at - now).num_milliseconds());
                    if let Some(ms) = skew.filter(|ms| ms.abs() > MAX_SKEW_MS) {
                        tracing::warn!(display = %s.display, skew_ms = ms, "display clock is off");
                    }
                    tokio::task::spawn_blocking(move || {
                        store.record_status(&s, now, skew).map(|()| 0)
                    })
                    .await
                }
                Ok(s) => {
                    tracing::warn!(topic, claimed = %s.display, "status names another display; ignored");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(topic, error = %e, "unreadable status; ignored");
                    continue;
                }
            },
            Some(Topic::AgentEvents(display)) => {
                match serde_json::from_slice::<EventBatch>(&payload) {
                    Ok(b) if b.display == display && valid_outbox(&b.outbox) => {
                        let (upto, outbox) = (b.upto, b.outbox.clone());
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
                            metrics
                                .reports_dropped
                                .get_or_create(&vec![("reason".into(), "foreign_id".into())])
                                .inc_by(foreign.len() as u64);
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
                    Ok(_) => {
                        tracing::warn!(
                            topic,
                            "event batch names another display or no valid outbox; ignored"
                        );
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(topic, error = %e, "unreadable event batch; ignored");
                        continue;
                    }
                }
            }
            _ => continue,
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
