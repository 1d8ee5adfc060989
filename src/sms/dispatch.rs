//! The dispatcher: moves queued messages of running campaigns through the gateways.
//!
//! For each message: wait for a free in-flight slot and the gateway's pace (messages/s and
//! segments/s), claim it (`queued → submitting`, on disk), submit, store the answer. A
//! transient failure (429, 503, refused connection) puts the gateway in a jittered, growing
//! cool-down and requeues the message, which the next gateway of the campaign picks up
//! (failover) or which waits out its own backoff. A lost answer (timeout, broken connection)
//! makes the message `unknown`: never resent unless an operator asks.
//!
//! Pause and cancel are checked inside the claim itself, so no message is claimed after the
//! change is committed; submits already in flight (at most one in-flight window) finish.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::campaign::Spec;
use super::gateway::{Answer, Gateway, Outgoing};
use crate::config::Config;
use crate::domain::delivery::Submit;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::sms::Finish;

/// Transient failures of one message before it is given up (`rejected`).
const MAX_ATTEMPTS: i64 = 8;
/// The longest a gateway or a message waits after transient failures.
const MAX_BACKOFF: Duration = Duration::from_secs(120);
/// Most messages claimed in one transaction.
const MAX_BATCH: usize = 512;
/// How often scheduled and recurring campaigns are checked for their start.
const DUE_EVERY: Duration = Duration::from_millis(200);
/// How often the dispatcher looks at the store when nothing wakes it.
const IDLE: Duration = Duration::from_millis(500);

struct Runtime {
    gw: Gateway,
    permits: Arc<Semaphore>,
    /// The earliest instant the next message may go.
    next_slot: std::sync::Mutex<Instant>,
    /// No submits before this (transient failures).
    cool_until: std::sync::Mutex<Option<Instant>>,
    /// Transient failures in a row.
    failures: AtomicU32,
    /// Submits by answer: accepted, transient, permanent, lost.
    counters: [prometheus_client::metrics::counter::Counter; 4],
}

impl Runtime {
    fn cooling(&self, now: Instant) -> bool {
        self.cool_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t > now)
    }

    fn slot(&self) -> Instant {
        *self.next_slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_slot(&self, now: Instant, parts: usize) {
        let c = &self.gw.cfg;
        let gap = (1.0 / c.messages_per_second).max(parts as f64 / c.segments_per_second);
        let mut s = self.next_slot.lock().unwrap_or_else(|e| e.into_inner());
        // A gateway idle for a while may send a small burst (a tenth of a second's worth),
        // no more.
        let floor = now.checked_sub(Duration::from_millis(100)).unwrap_or(now);
        *s = (*s).max(floor) + Duration::from_secs_f64(gap);
    }
}

/// A random fraction in [0.5, 1.5) for jitter.
fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    0.5 + f64::from(u16::from_le_bytes(b)) / 65536.0
}

fn backoff(n: u32) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1 << n.min(10));
    base.min(MAX_BACKOFF).mul_f64(jitter())
}

/// Handle to wake the dispatcher (campaign started, resumed, requeued).
#[derive(Clone, Default)]
pub struct Waker(Arc<Notify>);

impl Waker {
    /// Look at the store now.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// The SMS dispatcher.
pub struct Dispatcher {
    cfg: Arc<Config>,
    store: Arc<Store>,
    gateways: BTreeMap<String, Arc<Runtime>>,
    waker: Waker,
}

impl Dispatcher {
    /// Opens every configured gateway.
    pub fn new(
        cfg: Arc<Config>,
        store: Arc<Store>,
        metrics: Metrics,
        waker: Waker,
        http: std::net::SocketAddr,
    ) -> anyhow::Result<Dispatcher> {
        let callback = cfg
            .sms
            .callback_url
            .clone()
            .unwrap_or_else(|| format!("http://{http}"));
        let mut gateways = BTreeMap::new();
        for g in &cfg.sms.gateways {
            let gw = Gateway::new(g.clone(), &callback)
                .map_err(|e| anyhow::anyhow!("{}: sms.gateways ({}): {e}", cfg.file, g.name))?;
            gateways.insert(
                g.name.clone(),
                Arc::new(Runtime {
                    permits: Arc::new(Semaphore::new(g.in_flight)),
                    gw,
                    next_slot: std::sync::Mutex::new(Instant::now()),
                    cool_until: std::sync::Mutex::new(None),
                    failures: AtomicU32::new(0),
                    counters: metrics.sms_submit_counters(&g.name),
                }),
            );
        }
        Ok(Dispatcher {
            cfg,
            store,
            gateways,
            waker,
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> anyhow::Result<T> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || f(&store)).await??)
    }

    /// Runs until `cancel`; then waits for submits in flight to be answered and stored.
    pub async fn run(self, cancel: CancellationToken) {
        let inflight = TaskTracker::new();
        let (record_tx, record_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut answers = Answers(record_rx);
        match self.blocking(|s| s.recover_submitting(Utc::now())).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                messages = n,
                "messages were being submitted when the daemon stopped; they are now `unknown` and will not be resent unless requeued"
            ),
            Err(e) => tracing::error!(error = %e, "SMS recovery failed"),
        }
        let mut due_checked = None;
        let mut running = None;
        loop {
            let wait = match self
                .round(
                    &inflight,
                    &record_tx,
                    &mut answers,
                    &mut due_checked,
                    &mut running,
                )
                .await
            {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!(error = %e, "SMS dispatch round failed");
                    Some(IDLE)
                }
            };
            if let Some(wait) = wait {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = self.waker.0.notified() => {}
                    _ = tokio::time::sleep(wait.min(IDLE)) => {}
                }
            } else if cancel.is_cancelled() {
                break;
            }
        }
        inflight.close();
        inflight.wait().await;
        drop(record_tx);
        if let Err(e) = self.store_answers(&mut answers).await {
            tracing::error!(error = %e, "storing the last submit answers failed");
        }
    }

    /// Stores the answers waiting (on their own: a round that claims stores them with its claim).
    async fn store_answers(&self, answers: &mut Answers) -> anyhow::Result<()> {
        let batch = answers.take();
        if batch.is_empty() {
            return Ok(());
        }
        self.blocking(move |s| s.finish_submits(&batch, Utc::now()))
            .await
            .context(UNSTORED)?;
        Ok(())
    }

    /// One pass over the campaigns. `None`: sent something, go again at once; `Some(d)`:
    /// nothing could be sent, look again after `d` (or when woken).
    async fn round(
        &self,
        inflight: &TaskTracker,
        record_tx: &Recorder,
        answers: &mut Answers,
        due_checked: &mut Option<Instant>,
        running: &mut Option<Running>,
    ) -> anyhow::Result<Option<Duration>> {
        let now = Utc::now();
        // Scheduled and recurring starts have second resolution: not looked for on every batch.
        if due_checked.is_none_or(|t: Instant| t.elapsed() >= DUE_EVERY) {
            self.start_due(now).await?;
            *due_checked = Some(Instant::now());
        }
        // The running campaigns are read again after a round that sent nothing or found a
        // campaign out of messages, and every `DUE_EVERY` while sending. A pause or cancel needs
        // no fresh list: the claim itself checks the status.
        if running.as_ref().is_none_or(|r| r.at.elapsed() >= DUE_EVERY) {
            let rows = self.blocking(|s| s.campaigns_in("running")).await?;
            let mut list = Vec::with_capacity(rows.len());
            for (id, spec, _) in rows {
                match serde_json::from_value::<Spec>(spec) {
                    Ok(spec) => list.push((id, spec)),
                    Err(e) => {
                        tracing::error!(campaign = id, error = %e, "unreadable campaign spec; pausing it");
                        self.blocking(move |s| {
                            s.set_campaign_status(id, &["running"], "paused", now)
                        })
                        .await?;
                    }
                }
            }
            *running = Some(Running {
                at: Instant::now(),
                list,
            });
        }
        let mut wait = IDLE;
        let mut sent = false;
        let mut reread = false;
        let list = running.as_ref().map_or(&[][..], |r| &r.list[..]);
        for (id, spec) in list {
            let id = *id;
            if let Some((window, tz)) = spec.window(self.cfg.sms.timezone)
                && !window.allows(now, tz)
            {
                let until = window.next_allowed(now, tz);
                let reason = format!(
                    "waiting for the sending window {}–{} ({tz})",
                    window.start.format("%H:%M"),
                    window.end.format("%H:%M")
                );
                self.blocking(move |s| s.defer_campaign(id, until, &reason, now))
                    .await?;
                continue;
            }
            let t = Instant::now();
            let Some(rt) = spec
                .gateways
                .iter()
                .filter_map(|g| self.gateways.get(g))
                .find(|rt| !rt.cooling(t) && rt.permits.available_permits() > 0)
            else {
                wait = wait.min(Duration::from_millis(20));
                continue;
            };
            let slot = rt.slot();
            if slot > t + Duration::from_millis(1) {
                wait = wait.min(slot - t);
                continue;
            }
            // As many as the window has room for and the pace allows within the next 10 ms.
            let gap = 1.0 / rt.gw.cfg.messages_per_second;
            let due = (((t + Duration::from_millis(10)).saturating_duration_since(slot))
                .as_secs_f64()
                / gap) as usize
                + 1;
            let mut permits = Vec::new();
            while permits.len() < due.min(MAX_BATCH) {
                match rt.permits.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let (gw_name, cap, n) = (rt.gw.cfg.name.clone(), spec.daily_cap, permits.len());
            // The answers that came in since the last claim go into the same transaction.
            let done = answers.take();
            let claimed = self
                .blocking(move |s| s.claim_batch(id, &gw_name, cap, Utc::now(), n, &done))
                .await
                .context(UNSTORED)?;
            let idle = claimed.is_empty();
            reread |= idle;
            for (m, permit) in claimed.into_iter().zip(permits) {
                rt.take_slot(Instant::now(), m.parts);
                sent = true;
                let (rt, record_tx, waker) = (rt.clone(), record_tx.clone(), self.waker.clone());
                let sender = spec.sender.clone();
                let failover = spec.gateways.len() > 1;
                inflight.spawn(async move {
                    let f = submit(&rt, &m, &sender, failover).await;
                    drop(permit);
                    let _ = record_tx.send(f);
                    waker.wake();
                });
            }
            if idle {
                let (queued, submitting, next) = self.blocking(move |s| s.pending(id)).await?;
                if queued == 0 && submitting == 0 {
                    if self
                        .blocking(move |s| s.set_campaign_status(id, &["running"], "done", now))
                        .await?
                    {
                        tracing::info!(campaign = id, "campaign finished");
                    }
                } else if let Some(next) = next
                    .and_then(|n| DateTime::parse_from_rfc3339(&n).ok())
                    .map(|n| n.with_timezone(&Utc))
                {
                    let d = (next - now).to_std().unwrap_or(Duration::from_millis(10));
                    wait = wait.min(d.max(Duration::from_millis(10)));
                }
            }
        }
        if !sent || reread {
            *running = None;
        }
        if !sent {
            // No claim took the answers that came in: store them now.
            self.store_answers(answers).await?;
        }
        Ok(if sent { None } else { Some(wait) })
    }

    /// Scheduled campaigns whose time has come start; those whose start was missed by more
    /// than the margin (the daemon was down) wait for an operator's confirmation.
    async fn start_due(&self, now: DateTime<Utc>) -> anyhow::Result<()> {
        let margin = self.cfg.sms.missed_start_margin;
        let tz = self.cfg.sms.timezone;
        for (id, spec, next) in self.blocking(|s| s.campaigns_in("recurring")).await? {
            let (Some(at), Some(repeat)) = (
                next.and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                    .map(|t| t.with_timezone(&Utc)),
                spec["repeat"].as_str().map(str::to_owned),
            ) else {
                continue;
            };
            if at > now {
                continue;
            }
            // Fired while the daemon was down: the firing waits for confirmation; later
            // firings missed meanwhile are not made up.
            let status = if now - at > margin {
                "missed"
            } else {
                "running"
            };
            let after = super::campaign::next_fire(&repeat, tz, now);
            let label = at
                .with_timezone(&tz)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string();
            let new = self
                .blocking(move |s| s.fire_recurring(id, status, &label, at, after, now))
                .await?;
            tracing::info!(campaign = id, run = new, status, "recurring campaign fired");
        }
        for (id, _, start_at) in self.blocking(|s| s.campaigns_in("scheduled")).await? {
            let Some(at) = start_at
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc))
            else {
                continue;
            };
            if at > now {
                continue;
            }
            let to = if now - at > margin {
                "missed"
            } else {
                "running"
            };
            if self
                .blocking(move |s| s.set_campaign_status(id, &["scheduled"], to, now))
                .await?
            {
                if to == "missed" {
                    tracing::warn!(campaign = id, scheduled = %at, "the campaign's start was missed; it waits for an operator to start it with confirm_late");
                } else {
                    tracing::info!(campaign = id, "scheduled campaign started");
                }
            }
        }
        Ok(())
    }
}

/// The running campaigns as last read from the store.
struct Running {
    at: Instant,
    list: Vec<(i64, Spec)>,
}

/// Where submit tasks send their answers (and then wake the dispatcher).
type Recorder = tokio::sync::mpsc::UnboundedSender<Finish>;

/// What a failed store of answers means for their messages.
const UNSTORED: &str = "storing submit answers failed: those messages stay `submitting` and become `unknown` on restart";

/// Submit answers not yet stored. The dispatcher stores them in its next claim's transaction
/// (one commit for both), or on their own when a round claims nothing.
struct Answers(tokio::sync::mpsc::UnboundedReceiver<Finish>);

impl Answers {
    /// Everything received so far.
    fn take(&mut self) -> Vec<Finish> {
        let mut batch = Vec::new();
        while let Ok(f) = self.0.try_recv() {
            batch.push(f);
        }
        batch
    }
}

/// Submits one claimed message and classifies the answer (stored later, in a batch).
async fn submit(
    rt: &Runtime,
    m: &crate::store::sms::Claimed,
    sender: &str,
    failover: bool,
) -> Finish {
    let out = Outgoing {
        id: m.id,
        to: &m.recipient,
        from: sender,
        text: &m.text,
    };
    // The client has the same timeout; this one also bounds reading the answer.
    let answer = match tokio::time::timeout(rt.gw.cfg.timeout, rt.gw.submit(&out)).await {
        Ok(a) => a,
        Err(_) => Answer {
            submit: Submit::Lost,
            carrier_id: None,
            reason: Some(format!(
                "no answer within {:?}: the message may or may not have been sent",
                rt.gw.cfg.timeout
            )),
            retry_after: None,
        },
    };
    let k = match answer.submit {
        Submit::Accepted => 0,
        Submit::Transient => 1,
        Submit::Permanent => 2,
        Submit::Lost => 3,
    };
    rt.counters[k].inc();
    let now = Utc::now();
    let mut submit_kind = answer.submit.clone();
    let mut reason = answer.reason.clone();
    let mut retry_at = None;
    match answer.submit {
        Submit::Accepted => {
            rt.failures.store(0, Ordering::Relaxed);
        }
        Submit::Transient | Submit::Lost => {
            let n = rt.failures.fetch_add(1, Ordering::Relaxed);
            let cool = answer.retry_after.unwrap_or_else(|| backoff(n));
            // A later answer never shortens a cool-down already running.
            let until = Instant::now() + cool;
            let mut c = rt.cool_until.lock().unwrap_or_else(|e| e.into_inner());
            *c = Some(c.map_or(until, |t| t.max(until)));
            drop(c);
            tracing::warn!(gateway = %rt.gw.cfg.name, message = m.id, reason = reason.as_deref().unwrap_or(""), cool_down_ms = cool.as_millis() as u64, "gateway failure");
            if answer.submit == Submit::Transient {
                if m.attempts >= MAX_ATTEMPTS {
                    submit_kind = Submit::Permanent;
                    reason = Some(format!(
                        "gave up after {} attempts; last: {}",
                        m.attempts,
                        reason.unwrap_or_default()
                    ));
                } else {
                    // With another gateway the message goes there soon; alone it waits.
                    let wait = if failover {
                        Duration::from_millis(50).mul_f64(jitter())
                    } else {
                        answer
                            .retry_after
                            .unwrap_or_else(|| backoff(m.attempts as u32 - 1))
                    };
                    retry_at = Some(now + chrono::Duration::from_std(wait).unwrap_or_default());
                }
            }
        }
        Submit::Permanent => {}
    }
    let dry_run = matches!(rt.gw.cfg.kind, super::config::GatewayKind::DryRun { .. });
    Finish {
        id: m.id,
        campaign: m.campaign,
        parts: m.parts,
        answer: submit_kind,
        carrier_id: answer.carrier_id,
        reason,
        retry_at,
        delivered_by: dry_run.then(|| rt.gw.cfg.name.clone()),
    }
}
