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
use crate::store::fleet::StatusMark;
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

/// Who may report, and how long reports are kept.
pub struct Rules {
    /// The display registry.
    pub registry: Arc<Registry>,
    /// Where the versions displays hold are reported to the scheduler.
    pub agents_hold: crate::scheduler::AgentsHold,
    /// Retention of reports (`[fleet]`); `None` when another intake of this process sweeps.
    pub retention: Option<crate::config::Retention>,
}

/// Runs until `cancel` or until `rx` closes.
pub async fn run(
    store: Arc<Store>,
    prefix: String,
    mut rx: mpsc::Receiver<(String, Bytes, bool)>,
    metrics: Metrics,
    receipts: Receipts,
    rules: Rules,
    cancel: CancellationToken,
) {
    let Rules {
        registry,
        agents_hold,
        retention,
    } = rules;
    // Reports have a retention and a size cap: swept a minute after start, then hourly.
    if let Some(retention) = retention {
        tokio::spawn(sweep(store.clone(), retention, cancel.clone()));
    }
    let statuses = store.call(|s| s.status_marks()).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot read the displays' last statuses");
        Default::default()
    });
    let mut intake = Intake {
        registry,
        metrics: metrics.clone(),
        statuses,
        batches: HashMap::new(),
        warned: HashSet::new(),
        instances: HashMap::new(),
    };
    loop {
        let (topic, payload, retained) = tokio::select! {
            _ = cancel.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        if payload.is_empty() {
            continue;
        }
        let res = match intake.read(&prefix, &topic, &payload) {
            Some(Report::Status(s, mark, conflict)) => {
                agents_hold.report(s.held_max);
                record_status(&store, s, mark, conflict, retained).await
            }
            Some(Report::Events(b)) => {
                let (display, upto, outbox) = (b.display.clone(), b.upto, b.outbox.clone());
                let res = record_events(&store, &mut intake, &topic, b).await;
                // Receipt only after the commit; a batch not stored is not "stored already"
                // when the agent sends it again.
                if res.is_ok() {
                    receipt(&receipts, &prefix, display, outbox, upto);
                } else {
                    intake.batches.remove(&display);
                }
                res
            }
            Some(Report::Receipt(display, outbox, upto)) => {
                receipt(&receipts, &prefix, display, outbox, upto);
                continue;
            }
            None => continue,
        };
        match res {
            Ok(new) => {
                metrics.events_ingested.inc_by(new as u64);
            }
            // A full disk is logged once by the store; batches go unacknowledged and agents
            // keep them for later.
            Err(e) if e.is_disk_full() => {
                tracing::debug!(topic, error = %e, "agent report not stored")
            }
            Err(e) => tracing::error!(topic, error = %e, "cannot store an agent report"),
        };
    }
}

/// Stores a display's status (with its clock skew, when it is live) and its mark.
async fn record_status(
    store: &Arc<Store>,
    s: Status,
    mark: StatusMark,
    conflict: bool,
    retained: bool,
) -> Result<usize, crate::store::StoreError> {
    tracing::info!(display = %s.display, online = s.online, "display status");
    let now = Utc::now();
    // A live status was just written by the agent: its `at` against our clock is the agent's
    // clock skew (a retained one may be old: no measure).
    let skew = (!retained).then(|| (s.at - now).num_milliseconds());
    if let Some(ms) = skew.filter(|ms| ms.abs() > MAX_SKEW_MS) {
        tracing::warn!(display = %s.display, skew_ms = ms, "display clock is off");
    }
    store
        .call(move |store| {
            store.record_status(&s, now, skew)?;
            if conflict {
                store.flag_conflict(&s.display, now)?;
            }
            store.set_status_mark(&s.display, &mark).map(|()| 0)
        })
        .await
}

/// Stores a batch's events whose ids are the display's own (the others are dropped and
/// counted); how many were new.
async fn record_events(
    store: &Arc<Store>,
    intake: &mut Intake,
    topic: &str,
    b: EventBatch,
) -> Result<usize, crate::store::StoreError> {
    let own = format!("{}:{}:", b.display, b.outbox);
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
    let display = b.display;
    store
        .call(move |store| store.record_events(&display, &events, Utc::now()))
        .await
}

/// Deletes reports beyond the retention, hourly.
async fn sweep(store: Arc<Store>, retention: crate::config::Retention, cancel: CancellationToken) {
    let mut every = tokio::time::interval_at(
        tokio::time::Instant::now() + std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(3600),
    );
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        match store
            .call(move |store| store.sweep_reports(Utc::now(), &retention))
            .await
        {
            Ok((0, 0)) => {}
            Ok((plays, events)) => {
                tracing::info!(
                    plays,
                    events,
                    "deleted reports beyond the retention ([fleet])"
                )
            }
            Err(e) => tracing::error!(error = %e, "cannot sweep old reports"),
        }
    }
}

/// A report that passed every check.
enum Report {
    /// A status to store, with its mark, and whether it shows two agents taking turns.
    Status(Status, StatusMark, bool),
    /// A batch to store (then receipt).
    Events(EventBatch),
    /// A batch already stored (a resend or a replay): only the receipt goes again.
    Receipt(String, String, u64),
}

/// At most this many (display, reason) pairs are warned about one by one.
const MAX_WARNED: usize = 1024;

/// What decides whether a status is newer than the last one accepted.
enum Order {
    /// Newer (or the will of the connection last heard online): store it.
    Accept(StatusMark),
    /// The very status already accepted (a retained one delivered again): nothing to do.
    Same,
    /// Older: a replay.
    Replay,
}

/// Orders a status signed at `issued_at` against the `last` accepted from its display: a status
/// is taken when signed after the last one; an offline status signed earlier only when it is the
/// will of the connection last heard online (that will is signed when the connection is made,
/// before the online status, and only the broker has it until the connection drops), and only
/// once. So an old status or an old will replayed later is refused, whatever its signature.
fn order(last: Option<&StatusMark>, issued_at: DateTime<Utc>, s: &Status) -> Order {
    let mark = StatusMark {
        issued_at,
        started_at: s.started_at,
        connection: s.connection,
        will_taken: false,
    };
    let Some(last) = last else {
        return Order::Accept(mark);
    };
    if issued_at > last.issued_at {
        return Order::Accept(mark);
    }
    if issued_at == last.issued_at && s.started_at == last.started_at {
        return Order::Same;
    }
    if !s.online
        && !last.will_taken
        && s.started_at == last.started_at
        && s.connection == last.connection
    {
        return Order::Accept(StatusMark {
            issued_at: last.issued_at,
            will_taken: true,
            ..mark
        });
    }
    Order::Replay
}

/// The checks every report passes before it is stored.
struct Intake {
    registry: Arc<Registry>,
    metrics: Metrics,
    /// Per display: the last accepted status (loaded from the store at start).
    statuses: HashMap<String, StatusMark>,
    /// Per display: the outbox and sequence of the last stored batch.
    batches: HashMap<String, (String, u64)>,
    /// Displays already warned about (one warning per display and reason, not one per report).
    warned: HashSet<(String, &'static str)>,
    /// Per display: the agent processes that reported lately, the latest last.
    instances: HashMap<String, Vec<(String, std::time::Instant)>>,
}

/// Two agent processes seen taking turns within this long are one display's conflict.
const CONFLICT_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// How long a display stays flagged after the last turn taken (`conflict` in the fleet view).
pub const CONFLICT_SHOWN: chrono::Duration = chrono::Duration::minutes(10);

impl Intake {
    /// Whether `instance` reporting for `display` now means two agents take turns: it reported
    /// before another one did, within [`CONFLICT_WINDOW`]. (A restart is a new process that
    /// never comes back, so it does not count.)
    fn takes_turns(&mut self, display: &str, instance: &str) -> Option<String> {
        if instance.is_empty() {
            return None;
        }
        let seen = self.instances.entry(display.to_owned()).or_default();
        seen.retain(|(_, at)| at.elapsed() < CONFLICT_WINDOW);
        let other = match seen.last() {
            Some((last, _)) if last != instance => {
                let came_back = seen.iter().any(|(i, _)| i == instance);
                came_back.then(|| last.clone())
            }
            _ => None,
        };
        seen.retain(|(i, _)| i != instance);
        seen.push((instance.to_owned(), std::time::Instant::now()));
        if seen.len() > 4 {
            seen.remove(0);
        }
        other
    }
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
            Signed::Status(s) if s.display == display && s.channel == entry.channel => {
                match order(self.statuses.get(&display), body.issued_at, &s) {
                    Order::Accept(mark) => {
                        let conflict = s
                            .online
                            .then(|| self.takes_turns(&display, &s.instance))
                            .flatten();
                        if let Some(other) = &conflict {
                            let id = display.as_str();
                            tracing::warn!(display = id, instance = %s.instance, other = %other, "two agents report for one display (a copied config?); give each screen its own id");
                            self.metrics.display_conflicts.inc();
                        }
                        self.statuses.insert(display, mark.clone());
                        Some(Report::Status(s, mark, conflict.is_some()))
                    }
                    Order::Same => None,
                    Order::Replay => {
                        tracing::warn!(
                            topic,
                            "status older than the last one accepted (a replay); dropped"
                        );
                        self.dropped("replayed", 1);
                        None
                    }
                }
            }
            Signed::Status(s) if s.display == display => {
                self.drop_report(&display, "mismatch", &format!("status names channel {:?} but the display is registered on {:?}; dropped (fix the agent's channel, or remove and add the display again)", s.channel, entry.channel));
                None
            }
            Signed::Events(b) if b.display == display && valid_outbox(&b.outbox) => {
                match self.batches.get(&display) {
                    // Stored already: a resend whose receipt was lost, or a replay. Receipt
                    // again, store nothing.
                    Some((outbox, upto)) if *outbox == b.outbox && b.upto <= *upto => {
                        Some(Report::Receipt(display, b.outbox, b.upto))
                    }
                    _ => {
                        self.batches.insert(display, (b.outbox.clone(), b.upto));
                        Some(Report::Events(b))
                    }
                }
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
        let key = (id.to_owned(), reason);
        if self.warned.len() < MAX_WARNED && !self.warned.contains(&key) {
            tracing::warn!(display = id, reason, "{message}");
            self.warned.insert(key);
            if self.warned.len() == MAX_WARNED {
                tracing::warn!(
                    "{MAX_WARNED} displays warned about; further dropped reports are only counted (marquee_agent_reports_dropped_total)"
                );
            }
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
    // A leader woken past its lease sends nothing (its store refused the batch anyway); a
    // standby sharing the intake acknowledges what it stored.
    if crate::leader::role() == crate::leader::Role::Lost {
        return;
    }
    if let Err(e) = r.mqtt.publish(&topic, sign(&r.keys, &body), false) {
        tracing::warn!(topic, error = %e, "receipt not sent; the agent will resend its events");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn status(online: bool, started: i64, connection: u64) -> Status {
        Status {
            display: "d1".into(),
            online,
            channel: "lobby".into(),
            timeline: None,
            alert: None,
            agent_version: "0".into(),
            started_at: t(started),
            at: t(0),
            connection,
            instance: String::new(),
            broker: String::new(),
            held_max: 0,
        }
    }

    fn accept(o: Order) -> StatusMark {
        match o {
            Order::Accept(m) => m,
            _ => panic!("not accepted"),
        }
    }

    #[test]
    fn statuses_are_taken_in_order_and_a_will_only_for_its_connection_once() {
        // Run started at 0; connection 1's will signed at 1, its online status at 2.
        let will1 = status(false, 0, 1);
        let online1 = status(true, 0, 1);
        let m = accept(order(None, t(2), &online1));
        assert!(matches!(order(Some(&m), t(2), &online1), Order::Same));
        assert!(matches!(order(Some(&m), t(1), &online1), Order::Replay));
        // The connection drops: its will (signed earlier) is taken, once.
        let m = accept(order(Some(&m), t(1), &will1));
        assert!(m.will_taken);
        assert!(matches!(order(Some(&m), t(1), &will1), Order::Replay));
        // Reconnected (connection 2, online at 5): the old will replayed is refused.
        let m = accept(order(Some(&m), t(5), &status(true, 0, 2)));
        assert!(matches!(order(Some(&m), t(1), &will1), Order::Replay));
        // The will of connection 2 (signed at 4) is taken when it comes.
        assert!(accept(order(Some(&m), t(4), &status(false, 0, 2))).will_taken);
        // A will of another run is refused; a newer clean-stop status is taken.
        assert!(matches!(
            order(Some(&m), t(4), &status(false, -9, 2)),
            Order::Replay
        ));
        accept(order(Some(&m), t(6), &status(false, 0, 2)));
    }
}
