//! The dispatcher: moves queued messages of running campaigns through the gateways.
//!
//! For each message: wait for a free in-flight slot and the gateway's pace (messages/s and
//! segments/s), claim it (`queued → submitting`, on disk), submit, store the answer. A
//! transient failure (429, 503, refused connection) puts the gateway in a jittered, growing
//! cool-down and requeues the message, which the next gateway of the campaign picks up
//! (failover) or which waits out its own backoff. A lost answer (timeout, broken connection,
//! a 502) makes the message `unknown`: never resent unless an operator asks. After either, the
//! gateway takes one request of one message at a time (half-open) until one is answered for
//! its message (accepted, refused, deferred, opted out, the campaign's configuration: anything
//! but another failure or an account error), so a gateway that keeps failing costs one
//! message per cool-down; the campaigns sharing it take turns at those requests.
//!
//! Pause and cancel are checked inside the claim itself, so no message is claimed after the
//! change is committed; requests already claimed (at most the in-flight window plus
//! `claim_ahead`) finish.
//!
//! Claims run ahead of the window by `claim_ahead` requests: a claim is committed (synced to
//! disk) before its request leaves, and without a few claimed in reserve the slots freed during
//! that commit would stay empty until the next one, and while one claim commits the requests
//! of the one before still wait to enter the window. The default is what the gateway's pace
//! lets out in 4 ms, at most three times the window (`sms::config::default_claim_ahead`).
//! Ahead of a full window, a claim waits until what is claimed beyond one window's worth is
//! free, at most a window's worth ([`fill_wait`]): fewer, larger claims, while what stays
//! claimed keeps the window full.
//! `marquee-bench sms-fake` measured 33,000 msg/s with none, pooled medians of 40,600 with half
//! a window and 44,600 with a whole one (session 11); in session 12, taking turns in the same
//! hour, 42,800 with twice the window claimed as described against 39,200 with a whole one;
//! in session 14, in four pairs of runs taking turns, three windows ahead (claims of one
//! window) sent 38,400–40,900 against 33,200–39,100 with two (BENCHMARKS.md).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
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
use crate::domain::campaign::{self, Action, CampaignStatus as Status};
use crate::domain::delivery::Submit;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::sms::{Finish, Firing};

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
/// The longest a claim ahead waits for [`fill_at`] free permits after the gateway's
/// last claim; then it claims what is free.
const FILL_WAIT: Duration = Duration::from_millis(5);

struct Runtime {
    gw: Arc<Gateway>,
    /// Requests claimed and not yet answered: the in-flight window plus `claim_ahead`.
    permits: Arc<Semaphore>,
    /// Requests awaiting an answer: the in-flight window.
    window: Arc<Semaphore>,
    /// Requests of alerts' campaigns waiting for a slot of the window; requests of other
    /// campaigns let them go first.
    urgent_waiting: AtomicUsize,
    /// Signalled when no alert's request waits any more.
    urgent_clear: Notify,
    /// When it last answered, in microseconds since `born` (0: not yet).
    answered: AtomicU64,
    /// How long its requests take to be answered, in microseconds (a moving average).
    latency: AtomicU64,
    born: Instant,
    /// The earliest instant the next request may leave (the pace again at send time: requests
    /// claimed ahead may wait for a slot, and must not then leave in a burst).
    send_at: std::sync::Mutex<Instant>,
    /// The earliest instant the next message may go.
    next_slot: std::sync::Mutex<Instant>,
    /// No submits before this (transient failures).
    cool_until: std::sync::Mutex<Option<Instant>>,
    /// Transient failures in a row.
    failures: AtomicU32,
    /// Submits by answer: accepted, transient, permanent, lost, deferred, opted out, config,
    /// account.
    counters: [prometheus_client::metrics::counter::Counter; 8],
    /// 1 while the gateway is out of rotation for an account error.
    out_of_rotation: prometheus_client::metrics::gauge::Gauge,
    /// 1 while it takes one request of one message at a time after a failure.
    half_open: prometheus_client::metrics::gauge::Gauge,
    /// Claims that took messages, and the messages they took.
    claims: (
        prometheus_client::metrics::counter::Counter,
        prometheus_client::metrics::counter::Counter,
    ),
    /// Why it is out, for the API and the console.
    health: Health,
    /// When it last claimed, in microseconds since `born`.
    claimed_at: AtomicU64,
    /// The campaign whose request was the last one of the gateway taken one at a time after a
    /// failure (0: none).
    probed: AtomicI64,
    /// While the dispatcher waits for this many free permits before it claims ahead (0: it
    /// does not): answers wake it only once they are free (else each answer would wake it for
    /// nothing).
    filling: AtomicUsize,
}

impl Runtime {
    fn cooling(&self, now: Instant) -> bool {
        self.resting(now).is_some()
    }

    /// Whether it failed and takes one request (of one message) at a time until one is
    /// answered (half-open).
    fn probing(&self) -> bool {
        self.failures.load(Ordering::Relaxed) > 0
    }

    /// Until when the gateway rests (transient failures, an account error), if it does now.
    fn resting(&self, now: Instant) -> Option<Instant> {
        self.cool_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .filter(|t| *t > now)
    }

    fn slot(&self) -> Instant {
        *self.next_slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_slot(&self, now: Instant, parts: usize) {
        pace(&self.next_slot, now, self.gap(parts));
    }

    /// The time one message of `parts` segments takes at the gateway's pace.
    fn gap(&self, parts: usize) -> Duration {
        let c = &self.gw.cfg;
        Duration::from_secs_f64(
            (1.0 / c.messages_per_second).max(parts as f64 / c.segments_per_second),
        )
    }

    /// When the request of `group` may leave: the pace kept again at send time, so that
    /// requests claimed ahead, which waited for a slot, do not leave in a burst.
    fn send_turn(&self, group: &[crate::store::sms::Claimed]) -> Instant {
        let gap = group.iter().map(|m| self.gap(m.parts)).sum();
        pace(&self.send_at, Instant::now(), gap)
    }

    /// An answer came to a request sent at `sent`.
    fn answered_after(&self, sent: Instant) {
        self.answered
            .store(micros(self.born.elapsed()), Ordering::Relaxed);
        let avg = usual(self.latency.load(Ordering::Relaxed), micros(sent.elapsed()));
        self.latency.store(avg, Ordering::Relaxed);
    }

    /// Whether its window moves: an answer came within four of its usual answer times (and
    /// 20 ms). Claims ahead of a full window are made only where it does.
    fn moving(&self) -> bool {
        moving(
            self.answered.load(Ordering::Relaxed),
            self.latency.load(Ordering::Relaxed),
            micros(self.born.elapsed()),
        )
    }

    /// With `free` permits free ahead of its full window: `None` to claim now, else how long a
    /// claim may still wait for `fill_at` ([`fill_wait`]).
    fn fill_wait(&self, free: usize, fill_at: usize, urgent: bool) -> Option<Duration> {
        let since = Duration::from_micros(
            micros(self.born.elapsed()).saturating_sub(self.claimed_at.load(Ordering::Relaxed)),
        );
        fill_wait(free, fill_at, urgent, since)
    }

    /// A request was answered and its permit given back: whether the dispatcher should look
    /// now (always, unless it waits to fill and the permits free are still fewer than that).
    fn worth_a_look(&self) -> bool {
        let waits_for = self.filling.load(Ordering::SeqCst);
        waits_for == 0 || self.permits.available_permits() >= waits_for
    }

    /// A slot of the in-flight window. Requests of alerts' campaigns (`urgent`) go first:
    /// another request that is given a slot while one of theirs waits hands it on.
    async fn window_slot(&self, urgent: bool) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if urgent {
            /// Counts an alert's request as waiting while it exists (also if its task were
            /// dropped mid-wait).
            struct Waiting<'a>(&'a Runtime);
            impl Drop for Waiting<'_> {
                fn drop(&mut self) {
                    if self.0.urgent_waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
                        self.0.urgent_clear.notify_waiters();
                    }
                }
            }
            self.urgent_waiting.fetch_add(1, Ordering::SeqCst);
            let _waiting = Waiting(self);
            return self.window.clone().acquire_owned().await.ok();
        }
        loop {
            let clear = self.urgent_clear.notified();
            tokio::pin!(clear);
            // Registered before the count is read: a notification in between is not missed.
            clear.as_mut().enable();
            if self.urgent_waiting.load(Ordering::SeqCst) > 0 {
                clear.await;
                continue;
            }
            let slot = self.window.clone().acquire_owned().await.ok()?;
            if self.urgent_waiting.load(Ordering::SeqCst) == 0 {
                return Some(slot);
            }
        }
    }
}

/// How many free permits a claim ahead of a full, moving window waits for: what is claimed
/// beyond one window's worth (`claim_ahead - in_flight`, at least one, so a gateway whose
/// `claim_ahead` is at most its window never waits), at most a window's worth and what one
/// claim can take (`want` messages, `per_permit` to a request: a batch gateway's claim may
/// need few permits). What stays claimed keeps the window full while the claim commits and
/// syncs; the claims are larger and fewer, each one commit (`marquee-bench sms-store`,
/// BENCHMARKS.md: about a third less CPU per message in claims of 128 than of 32). With
/// `claim_ahead` at three windows, claims of a window leave two in reserve (session 14: with
/// one, the window ran dry while a claim and its sync outlasted it).
fn fill_at(claim_ahead: usize, in_flight: usize, want: usize, per_permit: usize) -> usize {
    claim_ahead
        .saturating_sub(in_flight)
        .min(in_flight)
        .min(want.div_ceil(per_permit.max(1)))
        .max(1)
}

/// Whether a claim ahead of a full, moving window waits for more free permits: not for an
/// alert's campaign (`urgent`), not once `fill_at` are free, and not once the gateway's last
/// claim is [`FILL_WAIT`] ago (`since`), so answers waiting for the next claim's transaction
/// are never held back longer, at any pace. `Some(left)`: it may wait that much more.
fn fill_wait(free: usize, fill_at: usize, urgent: bool, since: Duration) -> Option<Duration> {
    if urgent || free >= fill_at {
        return None;
    }
    FILL_WAIT.checked_sub(since).filter(|d| !d.is_zero())
}

/// `d` in whole microseconds, at least 1 (0 means "never" where it is stored).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// The usual answer time after one that took `took` µs: a moving average over about the last
/// eight (`old` 0: the first answer).
fn usual(old: u64, took: u64) -> u64 {
    if old == 0 {
        took
    } else {
        old - old / 8 + took / 8
    }
}

/// Whether a window moves at `now`: an answer came (at `answered`, 0: never) within four of
/// the usual answer times (`usual`) and 20 ms. All in µs since the same instant.
fn moving(answered: u64, usual: u64, now: u64) -> bool {
    answered > 0 && now.saturating_sub(answered) <= usual.saturating_mul(4).saturating_add(20_000)
}

/// Takes the next turn of a pace and returns when it starts: where the previous turn ended, or
/// a tenth of a second before `now` if that is later (a gateway idle for a while may send a
/// small burst, a tenth of a second's worth, no more). The pace moves on by `gap`.
fn pace(next: &std::sync::Mutex<Instant>, now: Instant, gap: Duration) -> Instant {
    let mut s = next.lock().unwrap_or_else(|e| e.into_inner());
    let floor = now.checked_sub(Duration::from_millis(100)).unwrap_or(now);
    let turn = (*s).max(floor);
    *s = turn + gap;
    turn
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

/// Gateways out of rotation for an account error: why, and until when (what
/// `GET /api/v1/sms/gateways` and the console show). The dispatcher keeps a copy in the store
/// (`gateway_outages`), so that a restart or a new leader keeps a gateway out, and a standby
/// shows it.
#[derive(Clone, Default)]
pub struct Health(
    Arc<std::sync::Mutex<Outages>>,
    Arc<AtomicBool>,
    /// The gateways that take one request of one message at a time after a failure.
    Arc<std::sync::Mutex<BTreeSet<String>>>,
);

/// Gateway name → (the provider's words, out of rotation until).
type Outages = BTreeMap<String, (String, DateTime<Utc>)>;

impl Health {
    fn out(&self, gateway: &str, reason: &str, until: DateTime<Utc>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(gateway.to_owned(), (reason.to_owned(), until));
        self.mark_changed();
    }

    /// The outages are to be stored again.
    fn mark_changed(&self) {
        self.1.store(true, Ordering::Release);
    }

    /// The gateway accepted a message: back in rotation. Whether it was out.
    fn back(&self, gateway: &str) -> bool {
        let was_out = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(gateway)
            .is_some();
        if was_out {
            self.mark_changed();
        }
        was_out
    }

    /// The outages, when they changed since the last call.
    fn changed(&self) -> Option<Vec<(String, String, DateTime<Utc>)>> {
        self.1.swap(false, Ordering::AcqRel).then(|| {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(g, (reason, until))| (g.clone(), reason.clone(), *until))
                .collect()
        })
    }

    /// Whether `gateway` takes one request of one message at a time after a failure (half-open,
    /// as a circuit breaker), until one is answered for its message.
    pub fn half_open(&self, gateway: &str) -> bool {
        self.2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(gateway)
    }

    /// Sets whether `gateway` is half-open to what `now` says, read under the lock: of
    /// answers racing each other, the last to get here shows the last state.
    fn set_half_open(&self, gateway: &str, now: impl FnOnce() -> bool) {
        let mut s = self.2.lock().unwrap_or_else(|e| e.into_inner());
        if now() {
            s.insert(gateway.to_owned());
        } else {
            s.remove(gateway);
        }
    }

    /// Why `gateway` is out of rotation and until when, if it is.
    pub fn get(&self, gateway: &str) -> Option<(String, DateTime<Utc>)> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(gateway)
            .filter(|(_, until)| *until > Utc::now())
            .cloned()
    }
}

/// Handle to wake the dispatcher (campaign started, resumed, requeued).
#[derive(Clone, Default)]
pub struct Waker(Arc<Notify>, Arc<AtomicBool>);

impl Waker {
    /// Look at the store now: the running campaigns may have changed (read again at once, so
    /// that an alert's campaign started now is claimed for in the next round).
    pub fn wake(&self) {
        self.1.store(true, Ordering::SeqCst);
        self.0.notify_one();
    }

    /// A submit was answered: a slot is free.
    fn answered(&self) {
        self.0.notify_one();
    }

    /// Whether [`Waker::wake`] was called since the last look.
    fn campaigns_changed(&self) -> bool {
        self.1.swap(false, Ordering::SeqCst)
    }

    /// The running campaigns could not be read after a change: read them at the next look.
    fn still_changed(&self) {
        self.1.store(true, Ordering::SeqCst);
    }
}

/// The SMS dispatcher.
pub struct Dispatcher {
    cfg: Arc<Config>,
    store: Arc<Store>,
    gateways: BTreeMap<String, Arc<Runtime>>,
    waker: Waker,
    health: Health,
}

impl Dispatcher {
    /// Opens every configured gateway.
    pub fn new(
        cfg: Arc<Config>,
        store: Arc<Store>,
        metrics: Metrics,
        waker: Waker,
        health: Health,
        http: std::net::SocketAddr,
    ) -> anyhow::Result<Dispatcher> {
        let callback = cfg.sms.callback_url.clone().unwrap_or_else(|| {
            let scheme = if cfg.tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{http}")
        });
        let mut gateways = BTreeMap::new();
        for g in &cfg.sms.gateways {
            let gw = Gateway::new(g.clone(), &callback)
                .map(Arc::new)
                .map_err(|e| anyhow::anyhow!("{}: sms.gateways ({}): {e}", cfg.file, g.name))?;
            gateways.insert(
                g.name.clone(),
                Arc::new(Runtime::new(gw, &metrics, &health)),
            );
        }
        Ok(Dispatcher {
            cfg,
            store,
            gateways,
            waker,
            health,
        })
    }

    /// The gateways, for the reconciler (one HTTP client each, shared).
    pub fn gateways(&self) -> Vec<Arc<Gateway>> {
        self.gateways.values().map(|rt| rt.gw.clone()).collect()
    }

    /// Moves campaign `id` from `from` by `action` (see [`campaign::next`]); `false` when it
    /// is no longer in `from` (an operator moved it meanwhile).
    async fn moved(
        &self,
        id: i64,
        from: Status,
        action: Action,
        now: DateTime<Utc>,
    ) -> anyhow::Result<bool> {
        let to = campaign::next(from, action)
            .map_err(|r| anyhow::anyhow!("campaign {id}: {} refused: {r:?}", action.name()))?;
        self.blocking(move |s| s.set_campaign_status(id, &[from], to, now))
            .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> anyhow::Result<T> {
        Ok(self.store.call(f).await?)
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
        self.resume_outages().await;
        let mut due_checked = None;
        let mut running = None;
        // The last error a round failed with, and when it was logged.
        let mut failed: Option<(String, std::time::Instant)> = None;
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
                    // The same error again is logged once a minute, not at every round.
                    let said = format!("{e:#}");
                    if failed.as_ref().is_none_or(|(last, at)| {
                        *last != said || at.elapsed() >= Duration::from_secs(60)
                    }) {
                        tracing::error!(error = %e, "SMS dispatch round failed (the same error is logged again at most once a minute)");
                        failed = Some((said, std::time::Instant::now()));
                    }
                    // Answers wake it again (no claim waits to fill now).
                    for rt in self.gateways.values() {
                        rt.filling.store(0, Ordering::SeqCst);
                    }
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
        if let Err(e) = self.store_outages().await {
            tracing::error!(error = %format!("{e:#}"), "storing the gateways out of rotation failed");
        }
    }

    /// Gateways a previous run (this node's, or the leader before it) took out of rotation are
    /// shown out until their time ends; each is tried again after at most [`RESUME_PROBE`]
    /// (one request: an operator may have fixed the account and restarted for it), and is out
    /// again at once if the account still fails.
    async fn resume_outages(&self) {
        let now = Utc::now();
        let stored = match self.blocking(|s| s.gateway_outages()).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot read the gateways out of rotation");
                return;
            }
        };
        for (name, reason, until) in stored {
            let (Some(rt), Ok(left)) = (self.gateways.get(&name), (until - now).to_std()) else {
                continue;
            };
            rt.cool(left.min(RESUME_PROBE));
            // Then one request, not a window.
            rt.failures.fetch_max(1, Ordering::Relaxed);
            rt.shown_half_open();
            rt.gw.resume_outage(&reason);
            rt.out_of_rotation.set(1);
            rt.health.out(&name, &reason, until);
            tracing::warn!(gateway = %name, reason, out_for_s = left.as_secs(), "the gateway is still out of rotation for an account error");
        }
    }

    /// Stores the gateways out of rotation when that changed.
    async fn store_outages(&self) -> anyhow::Result<()> {
        if let Some(now) = self.health.changed()
            && let Err(e) = self.blocking(move |s| s.set_gateway_outages(&now)).await
        {
            // Written again at the next round.
            self.health.mark_changed();
            return Err(e);
        }
        Ok(())
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
            // A start that cannot be written now (a full disk) waits for the next look; it
            // must not stop the campaigns already running, nor the answers being stored.
            if let Err(e) = self.start_due(now).await {
                tracing::error!(error = %format!("{e:#}"), "cannot start due campaigns now");
            }
            *due_checked = Some(Instant::now());
        }
        // The running campaigns are read again after a round that sent nothing or found a
        // campaign out of messages, and every `DUE_EVERY` while sending. A pause or cancel needs
        // no fresh list: the claim itself checks the status.
        let changed = self.waker.campaigns_changed();
        if changed || running.as_ref().is_none_or(|r| r.at.elapsed() >= DUE_EVERY) {
            match self.refresh_running(now).await {
                Ok(r) => *running = Some(r),
                Err(e) => {
                    if changed {
                        self.waker.still_changed();
                    }
                    return Err(e);
                }
            }
        }
        self.look_at_gateways().await;
        let mut wait = IDLE;
        let mut sent = false;
        let mut reread = false;
        // A claim ahead waits for more free permits: the list stays, the answers go with it.
        let mut filling = false;
        let list = running.as_ref().map_or(&[][..], |r| &r.list[..]);
        let (alerts_on, users) = gateway_users(list);
        for (id, spec, urgent) in list {
            let (id, urgent) = (*id, *urgent);
            let alerting = spec.gateways.iter().any(|g| alerts_on.contains(g.as_str()));
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
            let picked =
                match self.pick_gateway((id, spec), urgent || !alerting, urgent, &|g: &str| {
                    users.get(g).is_some_and(|n| *n > 1)
                }) {
                    Ok(picked) => picked,
                    Err(w) => {
                        wait = wait.min(w.after);
                        filling |= w.filling;
                        continue;
                    }
                };
            let claimed = self
                .claim_and_spawn((id, urgent), spec, picked, inflight, record_tx, answers)
                .await?;
            sent |= claimed > 0;
            if claimed == 0 {
                reread = true;
                if let Some(w) = self.drained_or_waiting(id, now).await? {
                    wait = wait.min(w);
                }
            }
        }
        if (!sent && !filling) || reread {
            *running = None;
        }
        if !sent && !filling {
            // No claim took the answers that came in, and none will at once: store them now.
            self.store_answers(answers).await?;
        }
        Ok(if sent { None } else { Some(wait) })
    }

    /// A round's look at the gateways: their outages stored when changed, an outage whose time
    /// has ended over for the gauge too (not only at the next accepted answer), and no claim
    /// waiting to fill (the round sets that again where one still does).
    async fn look_at_gateways(&self) {
        if let Err(e) = self.store_outages().await {
            tracing::warn!(error = %format!("{e:#}"), "cannot store the gateways out of rotation now");
        }
        for rt in self.gateways.values() {
            rt.filling.store(0, Ordering::SeqCst);
            if rt.out_of_rotation.get() == 1 && rt.health.get(&rt.gw.cfg.name).is_none() {
                rt.out_of_rotation.set(0);
            }
        }
    }

    /// The running campaigns with their specs, those an alert started first; one whose spec
    /// cannot be read is paused.
    async fn refresh_running(&self, now: DateTime<Utc>) -> anyhow::Result<Running> {
        let rows = self.blocking(|s| s.campaigns_in(Status::Running)).await?;
        let mut list = Vec::with_capacity(rows.len());
        for (id, spec, _, urgent) in rows {
            match serde_json::from_value::<Spec>(spec) {
                Ok(spec) => list.push((id, spec, urgent)),
                Err(e) => {
                    tracing::error!(campaign = id, error = %e, "unreadable campaign spec; pausing it");
                    self.moved(id, Status::Running, Action::Pause, now).await?;
                }
            }
        }
        Ok(Running {
            at: Instant::now(),
            list,
        })
    }

    /// The first of the campaign's gateways (failover order) that is not cooling down and has
    /// a free slot in its in-flight window; else, where `ahead` allows, the first with room to
    /// claim ahead of its window (so a gateway whose window is stuck does not take what another
    /// could send now), once [`fill_at`] permits are free unless `urgent` or the last
    /// claim was [`FILL_WAIT`] ago. Its pace must allow a message within a millisecond; else how
    /// long to wait before looking again. Returns it with the instant it was judged at (the pace
    /// is reckoned from that instant) and how many requests it may claim.
    fn pick_gateway(
        &self,
        (id, spec): (i64, &Spec),
        ahead: bool,
        urgent: bool,
        shared: &dyn Fn(&str) -> bool,
    ) -> Result<Picked, Wait> {
        let t = Instant::now();
        let mut order: Vec<&Arc<Runtime>> = spec
            .gateways
            .iter()
            .filter_map(|g| self.gateways.get(g))
            .filter(|rt| !rt.cooling(t))
            .collect();
        if urgent {
            // An alert's campaign goes to a gateway that works before one that failed (which
            // takes one request at a time), whatever the campaign's order.
            order.sort_by_cached_key(|rt| rt.probing());
        }
        // Each gateway's room, judged once: (the gateway; now, in its window; all, with what is
        // claimed ahead; whether it was offered and this campaign gave up its turn).
        let rooms: Vec<(&Arc<Runtime>, usize, usize, bool)> = order
            .iter()
            .map(|rt| {
                let room = rt.permits.available_permits();
                if !rt.probing() {
                    return (*rt, room.saturating_sub(rt.gw.cfg.claim_ahead), room, false);
                }
                // After a failure, one request at a time until one is answered (half-open): a
                // gateway that keeps failing (a 502 storm behind a proxy, each message then
                // `unknown`) costs one message a cool-down, not a window. The campaign that
                // had the last one lets another campaign of the gateway have the next, once
                // (a campaign whose own messages fail must not keep the gateway from the
                // others, whose answers would end the failures); an alert's never does.
                let idle = room >= rt.gw.cfg.in_flight + rt.gw.cfg.claim_ahead;
                let turn =
                    urgent || rt.probed.load(Ordering::Relaxed) != id || !shared(&rt.gw.cfg.name);
                let one = usize::from(idle && turn);
                (*rt, one, one, idle && !turn)
            })
            .collect();
        // (the gateway, how many it may claim, whether only ahead of its full window)
        let picked = rooms
            .iter()
            .position(|(_, now, _, _)| *now > 0)
            .map(|i| (i, false))
            .or_else(|| {
                // Ahead of a full window, only one that moves: waiting behind a stuck one
                // (until its timeout) is worse than waiting for a slot elsewhere.
                rooms
                    .iter()
                    .position(|(rt, _, all, _)| ahead && *all > 0 && rt.moving())
                    .map(|i| (i, true))
            });
        // The turns given up at gateways this campaign would have taken before the one picked
        // are used; those after it are kept for the next look.
        let before = picked.map_or(rooms.len(), |(i, _)| i);
        for (rt, _, _, gave_up) in &rooms[..before] {
            if *gave_up {
                rt.probed.store(0, Ordering::Relaxed);
            }
        }
        let picked = picked.map(|(i, full)| {
            let (rt, now, all, _) = rooms[i];
            (rt, if full || ahead { all } else { now }, full)
        });
        let Some((rt, room, full)) = picked else {
            return Err(Wait {
                after: Duration::from_millis(20),
                filling: false,
            });
        };
        // Ahead of a full window, the claim may wait for more to be free, on this gateway (not
        // on the next one: the order is the campaign's preference).
        if full {
            let (want, per_permit) = self.claim_size(spec, rt, t);
            let c = &rt.gw.cfg;
            let fill_at = fill_at(c.claim_ahead, c.in_flight, want, per_permit);
            if let Some(left) = rt.fill_wait(room, fill_at, urgent) {
                // The least any campaign waits for wakes the dispatcher.
                let _ = rt
                    .filling
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                        Some(if w == 0 { fill_at } else { w.min(fill_at) })
                    });
                return Err(Wait {
                    after: left,
                    filling: true,
                });
            }
        }
        let slot = rt.slot();
        if slot > t + Duration::from_millis(1) {
            return Err(Wait {
                after: slot - t,
                filling: false,
            });
        }
        Ok((rt.clone(), t, room))
    }

    /// The most one claim of `spec`'s campaign on `rt` takes at `t`, in messages (what the pace
    /// allows within the next 10 ms, at most [`MAX_BATCH`]), and how many messages a permit
    /// carries. The in-flight window counts requests: one message each, or up to `batch_max`
    /// numbers each where the gateway takes several and every message of the campaign has the
    /// same text and parameters (else each would need its own request, and more would be
    /// claimed than the window lets out).
    fn claim_size(&self, spec: &Spec, rt: &Runtime, t: Instant) -> (usize, usize) {
        let gap = 1.0 / rt.gw.cfg.messages_per_second;
        let due = (((t + Duration::from_millis(10)).saturating_duration_since(rt.slot()))
            .as_secs_f64()
            / gap) as usize
            + 1;
        let uniform = match spec
            .template
            .as_deref()
            .and_then(|t| self.cfg.sms.template(t))
        {
            Some(t) => t.vars.is_empty(),
            None => {
                spec.texts.is_empty()
                    && super::campaign::placeholders(&spec.text).is_ok_and(|p| p.is_empty())
            }
        };
        let per_permit = if uniform {
            rt.gw.cfg.kind.batch_max()
        } else {
            1
        };
        (due.min(MAX_BATCH), per_permit.max(1))
    }

    /// Claims what the pace and the in-flight window of `rt` allow for campaign `id` (storing
    /// the answers that came in, in the same transaction) and spawns its requests: messages
    /// with the same text and parameters share one where the gateway takes several numbers.
    /// Returns how many were claimed.
    async fn claim_and_spawn(
        &self,
        (id, urgent): (i64, bool),
        spec: &Spec,
        (rt, t, room): Picked,
        inflight: &TaskTracker,
        record_tx: &Recorder,
        answers: &mut Answers,
    ) -> anyhow::Result<usize> {
        let template = spec
            .template
            .as_deref()
            .and_then(|t| self.cfg.sms.template(t));
        let batch = rt.gw.cfg.kind.batch_max();
        let (want, per_permit) = self.claim_size(spec, &rt, t);
        // Taken one at a time after a failure: one message, even where a request takes many.
        let probing = rt.probing();
        let want = if probing { 1 } else { want };
        if probing {
            rt.probed.store(id, Ordering::Relaxed);
        }
        let mut permits = Vec::new();
        while permits.len() < want.div_ceil(per_permit).min(room) {
            match rt.permits.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let n = (permits.len() * per_permit).min(want);
        let (gw_name, cap) = (rt.gw.cfg.name.clone(), spec.daily_cap);
        // The answers that came in since the last claim go into the same transaction.
        let done = answers.take();
        let (claimed, ticket) = match self
            .blocking(move |s| s.claim_unsynced(id, &gw_name, cap, Utc::now(), n, &done))
            .await
        {
            Ok(c) => c,
            // The answers were stored; only the claims stop (the error says why).
            Err(e) if self.store.claims_broken() => return Err(e),
            Err(e) => return Err(e.context(UNSTORED)),
        };
        let count = claimed.len();
        if count > 0 {
            rt.claims.0.inc();
            rt.claims.1.inc_by(count as u64);
            // A claim that took nothing (nothing due, a paused campaign) does not restart the
            // gateway's wait to fill.
            rt.claimed_at
                .store(micros(rt.born.elapsed()), Ordering::Relaxed);
        }
        let requests = Arc::new(Requests {
            rt: rt.clone(),
            record_tx: record_tx.clone(),
            waker: self.waker.clone(),
            sender: spec.sender.clone(),
            template_id: template.and_then(|t| t.ids.get(&rt.gw.cfg.name).cloned()),
            names: template.map(|t| t.vars.clone()).unwrap_or_default().into(),
            failover: spec.gateways.len() > 1,
            urgent,
        });
        // Each request holds a slot of the window until it is answered; requests beyond the
        // slots taken (more parameter groups than expected) wait for one.
        let mut permits = permits.into_iter();
        let groups: Vec<_> = group_requests(&rt, claimed, batch)
            .into_iter()
            .map(|g| (g, permits.next()))
            .collect();
        // They leave once the claim is on disk: at once where the commit synced it, else
        // when the log's own thread has (the dispatcher claims on meanwhile).
        match self.store.claims_synced().filter(|_| ticket > 0) {
            None => requests.spawn(inflight, groups),
            Some(mut synced) => {
                let tracker = inflight.clone();
                inflight.spawn(async move {
                    let on_disk = synced.wait_for(|s| s.of(ticket).is_some()).await;
                    if matches!(on_disk.map(|s| s.of(ticket)), Ok(Some(true))) {
                        requests.spawn(&tracker, groups);
                    } else {
                        requests.not_synced(groups);
                    }
                });
            }
        }
        Ok(count)
    }

    /// A campaign that claimed nothing: `done` when nothing is queued or being submitted (no
    /// wait), else how long until its next message is due.
    async fn drained_or_waiting(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<Duration>> {
        let (queued, submitting, next) = self.blocking(move |s| s.pending(id)).await?;
        if queued == 0 && submitting == 0 {
            if self
                .moved(id, Status::Running, Action::Drained, now)
                .await?
            {
                tracing::info!(campaign = id, "campaign finished");
            }
            return Ok(None);
        }
        Ok(next
            .and_then(|n| DateTime::parse_from_rfc3339(&n).ok())
            .map(|n| n.with_timezone(&Utc))
            .map(|next| {
                let d = (next - now).to_std().unwrap_or(Duration::from_millis(10));
                d.max(Duration::from_millis(10))
            }))
    }

    /// Scheduled campaigns whose time has come start; those whose start was missed by more
    /// than the margin (the daemon was down) wait for an operator's confirmation.
    async fn start_due(&self, now: DateTime<Utc>) -> anyhow::Result<()> {
        let margin = self.cfg.sms.missed_start_margin;
        let tz = self.cfg.sms.timezone;
        for (id, spec, next, _) in self.blocking(|s| s.campaigns_in(Status::Recurring)).await? {
            let seen = next.clone().unwrap_or_default();
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
            let status = campaign::fired(now - at > margin);
            let after = super::campaign::next_fire(&repeat, tz, now);
            let label = at
                .with_timezone(&tz)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string();
            let firing = move |s: &Store| {
                s.fire_recurring(
                    id,
                    &Firing {
                        status,
                        label: &label,
                        seen: &seen,
                        at,
                        next: after,
                    },
                    now,
                )
            };
            let Some(new) = self.blocking(firing).await? else {
                tracing::info!(
                    campaign = id,
                    "recurring campaign fired already (its next firing changed since it was read)"
                );
                continue;
            };
            tracing::info!(
                campaign = id,
                run = new,
                status = status.as_str(),
                "recurring campaign fired"
            );
        }
        for (id, _, start_at, _) in self.blocking(|s| s.campaigns_in(Status::Scheduled)).await? {
            let Some(at) = start_at
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc))
            else {
                continue;
            };
            if at > now {
                continue;
            }
            let late = now - at > margin;
            if self
                .moved(id, Status::Scheduled, Action::Due { late }, now)
                .await?
            {
                if late {
                    tracing::warn!(campaign = id, scheduled = %at, "the campaign's start was missed; it waits for an operator to start it with confirm_late");
                } else {
                    tracing::info!(campaign = id, "scheduled campaign started");
                }
            }
        }
        Ok(())
    }
}

/// The gateways of `list`'s campaigns: those an alert's campaign uses (while it sends, other
/// campaigns claim nothing ahead of their windows: what they would claim ahead would wait in
/// front of its requests), and how many campaigns use each.
fn gateway_users(list: &[(i64, Spec, bool)]) -> (BTreeSet<&str>, BTreeMap<&str, usize>) {
    let alerts_on = list
        .iter()
        .filter(|c| c.2)
        .flat_map(|c| c.1.gateways.iter().map(String::as_str))
        .collect();
    let mut users: BTreeMap<&str, usize> = BTreeMap::new();
    for g in list.iter().flat_map(|c| c.1.gateways.iter()) {
        *users.entry(g.as_str()).or_default() += 1;
    }
    (alerts_on, users)
}

/// Claimed messages as requests: each slot of the pace taken, and messages with the same text
/// and parameters grouped (up to `batch` numbers; Tencent: mainland and international numbers
/// apart) where the gateway takes several.
fn group_requests(
    rt: &Runtime,
    claimed: Vec<crate::store::sms::Claimed>,
    batch: usize,
) -> Vec<Vec<crate::store::sms::Claimed>> {
    let mut groups: Vec<Vec<crate::store::sms::Claimed>> = Vec::new();
    for m in claimed {
        rt.take_slot(Instant::now(), m.parts);
        // One request carries one text and parameters, and (Tencent) either mainland or
        // international numbers.
        match groups.iter_mut().find(|g| {
            batch > 1
                && g.len() < batch
                && g[0].params == m.params
                && g[0].text == m.text
                && g[0].recipient.starts_with("+86") == m.recipient.starts_with("+86")
        }) {
            Some(g) => g.push(m),
            None => groups.push(vec![m]),
        }
    }
    groups
}

/// The running campaigns as last read from the store.
struct Running {
    at: Instant,
    /// Campaign, spec, whether an alert started it (those first).
    list: Vec<(i64, Spec, bool)>,
}

/// A gateway picked for a claim: it, the instant it was judged at, how many requests it may
/// claim.
type Picked = (Arc<Runtime>, Instant, usize);

/// What the requests of one claim share.
struct Requests {
    rt: Arc<Runtime>,
    record_tx: Recorder,
    waker: Waker,
    sender: String,
    /// The gateway's id of the campaign's template, and the template's variables.
    template_id: Option<String>,
    names: Arc<[String]>,
    failover: bool,
    urgent: bool,
}

/// A claim's requests: each a group of messages, with a permit of the gateway's claims where
/// one was taken.
type Groups = Vec<(
    Vec<crate::store::sms::Claimed>,
    Option<tokio::sync::OwnedSemaphorePermit>,
)>;

/// How long the messages of a claim that could not be synced to disk wait before they are
/// claimed again (a failing disk is not hammered).
const NOT_SYNCED_WAIT: Duration = Duration::from_secs(5);

impl Requests {
    /// Spawns a task for each request of `groups` (their claim is on disk).
    fn spawn(self: &Arc<Self>, inflight: &TaskTracker, groups: Groups) {
        for (group, permit) in groups {
            let r = self.clone();
            inflight.spawn(async move {
                let rt = &r.rt;
                let permit = match permit {
                    Some(p) => Some(p),
                    None => rt.permits.clone().acquire_owned().await.ok(),
                };
                // Claimed ahead: it leaves when a slot of the window frees (an alert's
                // first), and not before its turn at the gateway's pace.
                let slot = rt.window_slot(r.urgent).await;
                let turn = rt.send_turn(&group);
                if turn > Instant::now() {
                    tokio::time::sleep_until(turn).await;
                }
                // A leader woken past its lease sends nothing: what it had claimed becomes
                // `unknown` under the new leader, flagged and never resent (at most once).
                if !crate::leader::may_act() {
                    tracing::warn!(
                        messages = group.len(),
                        "not sent: this node's leader lease has ended"
                    );
                    return;
                }
                let template = r.template_id.as_deref().map(|id| (id, &*r.names));
                let done = send_now(rt, &group, &r.sender, template, r.failover).await;
                drop((slot, permit));
                for f in done {
                    let _ = r.record_tx.send(f);
                }
                if rt.worth_a_look() {
                    r.waker.answered();
                }
            });
        }
    }

    /// The claim of `groups` could not be synced to disk (the log's thread logged why): none
    /// is sent; each message is queued again, its attempt given back.
    fn not_synced(&self, groups: Groups) {
        let until = Instant::now() + NOT_SYNCED_WAIT;
        for (group, permit) in groups {
            for m in &group {
                let _ = self.record_tx.send(unsent(
                    m,
                    until,
                    false,
                    "its claim could not be synced to disk",
                ));
            }
            drop(permit);
        }
        self.waker.answered();
    }
}

/// No gateway of a campaign can take a claim now: look again after `after` (or when woken);
/// `filling`: a moving window's answers are coming in, and the next claim will store them.
struct Wait {
    after: Duration,
    filling: bool,
}

/// Where submit tasks send their answers (and then wake the dispatcher). Unbounded on
/// purpose, and bounded in fact: a message is claimed only with a permit of its gateway's
/// claims (`in_flight + claim_ahead`), so at most the sum of those times `MAX_BATCH` answers
/// wait here; a send never blocks a task holding an answer that must be stored.
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

/// How long a gateway stays out of rotation after an account error (balance, credentials,
/// quota): long enough not to hammer it, short enough to notice when it is fixed.
const ACCOUNT_COOL: Duration = Duration::from_secs(600);
/// How long a restarted dispatcher (or a new leader) waits before it tries a gateway a stored
/// outage names.
const RESUME_PROBE: Duration = Duration::from_secs(30);

/// Submits claimed messages that share their text and parameters (one request where the
/// gateway takes several numbers) and classifies each answer (stored later, in a batch).
async fn submit(
    rt: &Runtime,
    ms: &[crate::store::sms::Claimed],
    sender: &str,
    template: Option<(&str, &[String])>,
    failover: bool,
) -> Vec<Finish> {
    let params: Vec<String> = ms
        .first()
        .and_then(|m| m.params.as_deref())
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_default();
    let outs: Vec<Outgoing<'_>> = ms
        .iter()
        .map(|m| Outgoing {
            id: m.id,
            campaign: m.campaign,
            to: &m.recipient,
            from: sender,
            text: &m.text,
            template_id: template.map(|t| t.0),
            params: &params,
            param_names: template.map_or(&[][..], |t| t.1),
        })
        .collect();
    // The client has the same timeout per request; this one also bounds reading the answer.
    // Room for every request the group may take: one per `batch_max` numbers, and (Aliyun)
    // one per number more when a batch refused for one of them is tried one by one.
    let requests = ms.len().div_ceil(rt.gw.cfg.kind.batch_max().max(1))
        + if matches!(rt.gw.cfg.kind, super::config::GatewayKind::Aliyun(_)) {
            ms.len()
        } else {
            0
        };
    let limit = rt.gw.cfg.timeout * u32::try_from(requests.max(1)).unwrap_or(u32::MAX);
    let answers = match tokio::time::timeout(limit, rt.gw.submit_many(&outs)).await {
        Ok(a) => a,
        Err(_) => vec![
            Answer {
                submit: Submit::Lost,
                carrier_id: None,
                reason: Some(format!(
                    "no answer within {:?}: the message may or may not have been sent",
                    rt.gw.cfg.timeout
                )),
                retry_after: None,
            };
            ms.len()
        ],
    };
    ms.iter()
        .zip(answers)
        .enumerate()
        .map(|(i, (m, a))| finish(rt, m, a, failover, i == 0))
        .collect()
}

/// What one answer means for its message and for the gateway. `first`: the first message of
/// its request (a failed request counts once towards the gateway's back-off, and is logged
/// once).
fn finish(
    rt: &Runtime,
    m: &crate::store::sms::Claimed,
    answer: Answer,
    failover: bool,
    first: bool,
) -> Finish {
    rt.count(&answer.submit);
    let now = Utc::now();
    let later = |wait: Duration| Some(now + chrono::Duration::from_std(wait).unwrap_or_default());
    // With another gateway the message goes there soon; alone it waits.
    let soon = || Duration::from_millis(50).mul_f64(jitter());
    let mut submit_kind = answer.submit.clone();
    let mut reason = answer.reason.clone();
    let mut retry_at = None;
    // The gateway answered for the message (accepted, refused, deferred, opted out, the
    // campaign's configuration): it works, its failures in a row end (and with them one
    // request at a time), and so does an account outage (and the rest it imposed), so that
    // what is shown is what is done.
    if !matches!(
        answer.submit,
        Submit::Transient | Submit::Lost | Submit::Account
    ) {
        if rt.failures.swap(0, Ordering::Relaxed) > 0 {
            rt.shown_half_open();
        }
        rt.out_of_rotation.set(0);
        if rt.health.back(&rt.gw.cfg.name) {
            *rt.cool_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
    match answer.submit {
        Submit::Transient | Submit::Lost => {
            rt.failed(m, &answer, first);
            if answer.submit == Submit::Transient && m.attempts >= MAX_ATTEMPTS {
                submit_kind = Submit::Permanent;
                reason = Some(format!(
                    "gave up after {} attempts; last: {}",
                    m.attempts,
                    reason.unwrap_or_default()
                ));
            } else if answer.submit == Submit::Transient {
                retry_at = later(if failover {
                    soon()
                } else {
                    answer
                        .retry_after
                        .unwrap_or_else(|| backoff(m.attempts as u32 - 1))
                });
            }
        }
        // The provider's limit for this number: later, and no cool-down (the gateway is fine).
        Submit::Defer => {
            retry_at = later(answer.retry_after.unwrap_or(Duration::from_secs(3600)));
        }
        Submit::Config => {
            tracing::error!(gateway = %rt.gw.cfg.name, campaign = m.campaign, reason = reason.as_deref().unwrap_or(""), "the provider refuses the campaign as configured; it is paused");
        }
        // Alone, the message waits out the outage, or longer where the gateway says so
        // (Kannel: one of its numbers met a run of "Not routable", and the request the
        // gateway takes back must carry another).
        Submit::Account => {
            rt.account_out(reason.as_deref().unwrap_or(""), now);
            retry_at = later(if failover {
                soon()
            } else {
                answer.retry_after.unwrap_or_default().max(ACCOUNT_COOL)
            });
        }
        Submit::Accepted | Submit::Permanent | Submit::OptedOut => {}
    }
    if submit_kind == Submit::OptedOut {
        reason = Some(format!(
            "on gateway {}'s block list: {}",
            rt.gw.cfg.name,
            reason.unwrap_or_default()
        ));
    }
    let dry_run = matches!(rt.gw.cfg.kind, super::config::GatewayKind::DryRun(_));
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

/// Sends `group` now, unless its gateway began to rest after it was claimed (a failure, an
/// account error): then it is not sent but queued again without using an attempt.
async fn send_now(
    rt: &Runtime,
    group: &[crate::store::sms::Claimed],
    sender: &str,
    template: Option<(&str, &[String])>,
    failover: bool,
) -> Vec<Finish> {
    if let Some(until) = rt.resting(Instant::now()) {
        let why = format!("gateway {} began to rest after a failure", rt.gw.cfg.name);
        return group
            .iter()
            .map(|m| unsent(m, until, failover, &why))
            .collect();
    }
    // Claimed before the gateway failed: after its rest it takes one message at a time, so
    // only this request's first, and only if no other request of the gateway's is out (this
    // one holds its own slot); the rest are queued again.
    let mut held = Vec::new();
    let group = if rt.probing() {
        let alone = rt.window.available_permits() + 1 >= rt.gw.cfg.in_flight;
        let go = usize::from(alone).min(group.len());
        let why = format!(
            "gateway {} takes one message at a time after a failure",
            rt.gw.cfg.name
        );
        let now = Instant::now();
        held.extend(group[go..].iter().map(|m| unsent(m, now, failover, &why)));
        &group[..go]
    } else {
        group
    };
    if group.is_empty() {
        return held;
    }
    let sent = Instant::now();
    let mut done = submit(rt, group, sender, template, failover).await;
    // A request lost (no answer in time, a broken connection, a server error) is no sign of
    // a moving window (nor are the messages held back).
    if done.iter().any(|f| f.answer != Submit::Lost) {
        rt.answered_after(sent);
    }
    done.append(&mut held);
    done
}

/// A message claimed ahead that was not sent because its gateway began to rest: queued again
/// (at once where another gateway can take it, else when the rest ends), its attempt given
/// back (a deferral).
fn unsent(m: &crate::store::sms::Claimed, until: Instant, failover: bool, why: &str) -> Finish {
    let wait = if failover {
        Duration::ZERO
    } else {
        until.saturating_duration_since(Instant::now())
    };
    Finish {
        id: m.id,
        campaign: m.campaign,
        parts: m.parts,
        answer: Submit::Defer,
        carrier_id: None,
        reason: Some(format!("not sent: {why}")),
        retry_at: Some(Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default()),
        delivered_by: None,
    }
}

impl Runtime {
    /// The dispatcher's state of gateway `gw`: nothing claimed, nothing failed.
    fn new(gw: Arc<Gateway>, metrics: &Metrics, health: &Health) -> Runtime {
        let g = &gw.cfg;
        Runtime {
            permits: Arc::new(Semaphore::new(g.in_flight + g.claim_ahead)),
            window: Arc::new(Semaphore::new(g.in_flight)),
            urgent_waiting: AtomicUsize::new(0),
            urgent_clear: Notify::new(),
            send_at: std::sync::Mutex::new(Instant::now()),
            answered: AtomicU64::new(0),
            latency: AtomicU64::new(0),
            born: Instant::now(),
            next_slot: std::sync::Mutex::new(Instant::now()),
            cool_until: std::sync::Mutex::new(None),
            failures: AtomicU32::new(0),
            counters: metrics.sms_submit_counters(&g.name),
            out_of_rotation: metrics.sms_gateway_out_of_rotation(&g.name),
            half_open: metrics.sms_gateway_half_open(&g.name),
            claims: metrics.sms_claim_counters(&g.name),
            health: health.clone(),
            claimed_at: AtomicU64::new(0),
            probed: AtomicI64::new(0),
            filling: AtomicUsize::new(0),
            gw,
        }
    }

    /// Shows whether it takes one request at a time after a failure (the gauge
    /// `marquee_sms_gateway_half_open` and `GET /api/v1/sms/gateways`).
    fn shown_half_open(&self) {
        self.health.set_half_open(&self.gw.cfg.name, || {
            let on = self.failures.load(Ordering::SeqCst) > 0;
            self.half_open.set(i64::from(on));
            on
        });
    }

    /// Counts an answer by its kind (`marquee_sms_submits_total`).
    fn count(&self, submit: &Submit) {
        let k = match submit {
            Submit::Accepted => 0,
            Submit::Transient => 1,
            Submit::Permanent => 2,
            Submit::Lost => 3,
            Submit::Defer => 4,
            Submit::OptedOut => 5,
            Submit::Config => 6,
            Submit::Account => 7,
        };
        self.counters[k].inc();
    }

    /// Rests the gateway for `d`; a later answer never shortens a cool-down already running.
    fn cool(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut c = self.cool_until.lock().unwrap_or_else(|e| e.into_inner());
        *c = Some(c.map_or(until, |t| t.max(until)));
    }

    /// A transient failure or a lost answer: the gateway cools down (the provider's
    /// Retry-After, else a back-off by failures in a row; the first answer of a batch counts).
    fn failed(&self, m: &crate::store::sms::Claimed, answer: &Answer, first: bool) {
        let n = if first {
            let n = self.failures.fetch_add(1, Ordering::Relaxed);
            self.shown_half_open();
            n
        } else {
            self.failures.load(Ordering::Relaxed).saturating_sub(1)
        };
        let d = answer.retry_after.unwrap_or_else(|| backoff(n));
        self.cool(d);
        if first {
            tracing::warn!(gateway = %self.gw.cfg.name, message = m.id, reason = answer.reason.as_deref().unwrap_or(""), cool_down_ms = d.as_millis() as u64, "gateway failure");
        }
    }

    /// The account cannot send (balance, credentials, quota): out of rotation for
    /// [`ACCOUNT_COOL`], with the provider's words.
    fn account_out(&self, reason: &str, now: chrono::DateTime<Utc>) {
        self.cool(ACCOUNT_COOL);
        // Back in rotation with one request, not a window.
        self.failures.fetch_max(1, Ordering::Relaxed);
        self.shown_half_open();
        self.out_of_rotation.set(1);
        self.health.out(
            &self.gw.cfg.name,
            reason,
            now + chrono::Duration::from_std(ACCOUNT_COOL).unwrap_or_default(),
        );
        tracing::error!(gateway = %self.gw.cfg.name, reason, out_for_s = ACCOUNT_COOL.as_secs(), "the gateway's account cannot send: out of rotation");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any answer for its message ends a gateway's failures in a row and its account outage
    /// (it works); another failure (also the last attempt's, which gives up on the message)
    /// and an account error do not.
    #[test]
    fn a_gateways_failures_end_on_any_answer_for_its_message_but_a_failure_or_the_account() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::Config::parse(
            "m.toml",
            &format!(
                "[schedule]\nchannels = [\"lobby\"]\n[sms]\n[[sms.gateways]]\nname = \"d\"\nkind = \"dry-run\"\npath = \"{}\"\n",
                dir.path().join("d.jsonl").display()
            ),
        )
        .unwrap();
        let gw = Arc::new(Gateway::new(cfg.sms.gateways[0].clone(), "http://127.0.0.1:1").unwrap());
        let rt = Runtime::new(gw, &Metrics::default(), &Health::default());
        let m = crate::store::sms::Claimed {
            id: 1,
            campaign: 1,
            recipient: "+8613800000000".into(),
            text: "t".into(),
            parts: 1,
            attempts: MAX_ATTEMPTS,
            params: None,
        };
        let answer = |submit| Answer {
            submit,
            carrier_id: None,
            reason: Some("why".into()),
            retry_after: None,
        };
        let out = |rt: &Runtime| {
            let failing = rt.failures.load(Ordering::Relaxed) > 0;
            // What is shown is what is done.
            assert_eq!(rt.half_open.get() == 1, failing);
            assert_eq!(rt.health.half_open("d"), failing);
            (
                failing,
                rt.out_of_rotation.get() == 1,
                rt.health.get("d").is_some(),
            )
        };
        rt.failures.store(2, Ordering::Relaxed);
        rt.shown_half_open();
        let f = finish(&rt, &m, answer(Submit::Transient), false, true);
        assert_eq!(f.answer, Submit::Permanent, "the last attempt gives up");
        assert!(out(&rt).0, "a failure, though the message is given up");
        let f = finish(&rt, &m, answer(Submit::Account), false, true);
        assert!(f.retry_at.is_some());
        assert_eq!(out(&rt), (true, true, true));
        for (kind, failure) in [
            (Submit::Lost, true),
            (Submit::Permanent, false),
            (Submit::Account, true),
            (Submit::Defer, false),
            (Submit::Account, true),
            (Submit::OptedOut, false),
            (Submit::Account, true),
            (Submit::Config, false),
            (Submit::Account, true),
            (Submit::Accepted, false),
        ] {
            finish(&rt, &m, answer(kind.clone()), false, true);
            if failure {
                assert!(out(&rt).0, "{kind:?}");
            } else {
                assert_eq!(out(&rt), (false, false, false), "{kind:?}");
            }
        }
    }

    #[test]
    fn a_window_moves_while_answers_come_within_four_usual_answer_times() {
        // Never answered: not moving, whatever the time.
        assert!(!moving(0, 0, 1));
        // Usual answer time 2 ms: moving up to 4 × 2 + 20 = 28 ms after the last answer.
        assert!(moving(1_000_000, 2_000, 1_028_000));
        assert!(!moving(1_000_000, 2_000, 1_028_001));
        // A slow gateway (usual 500 ms) may be silent for 2.02 s.
        assert!(moving(1_000_000, 500_000, 3_020_000));
        assert!(!moving(1_000_000, 500_000, 3_020_001));
        // The usual time follows the last eight or so answers; the first answer sets it.
        assert_eq!(usual(0, 1_600), 1_600);
        assert_eq!(usual(1_600, 800), 1_600 - 200 + 100);
        let mut u = 100_000;
        for _ in 0..80 {
            u = usual(u, 2_000);
        }
        assert!((2_000..2_010).contains(&u), "{u}");
        // Never overflows.
        assert!(moving(1, u64::MAX, u64::MAX));
    }

    #[test]
    fn a_claim_ahead_waits_to_fill_only_for_bulk_and_at_most_five_milliseconds_after_the_last() {
        let ms = Duration::from_millis;
        // The 64 a claim waits for are free: claim now.
        assert_eq!(fill_wait(64, 64, false, ms(0)), None);
        assert_eq!(fill_wait(100, 64, false, ms(0)), None);
        // Fewer: wait, at most until 5 ms after the last claim.
        assert_eq!(fill_wait(10, 64, false, ms(0)), Some(ms(5)));
        assert_eq!(fill_wait(10, 64, false, ms(2)), Some(ms(3)));
        assert_eq!(fill_wait(10, 64, false, ms(5)), None);
        assert_eq!(fill_wait(10, 64, false, ms(60)), None);
        // An alert's campaign never waits.
        assert_eq!(fill_wait(1, 64, true, ms(0)), None);
    }

    #[test]
    fn a_claim_ahead_waits_for_what_is_claimed_beyond_a_window_and_one_claim_can_take() {
        // Beyond one window's worth, at most a window's worth.
        assert_eq!(fill_at(192, 64, 512, 1), 64);
        assert_eq!(fill_at(128, 64, 512, 1), 64);
        assert_eq!(fill_at(100, 64, 512, 1), 36);
        assert_eq!(fill_at(16, 8, 512, 1), 8);
        assert_eq!(fill_at(12, 8, 512, 1), 4);
        // A claim_ahead of at most the window never waits.
        assert_eq!(fill_at(64, 64, 512, 1), 1);
        assert_eq!(fill_at(8, 64, 512, 1), 1);
        assert_eq!(fill_at(0, 1, 512, 1), 1);
        // A batch gateway's claim takes few permits; a paced one few messages.
        assert_eq!(fill_at(128, 64, 512, 1000), 1);
        assert_eq!(fill_at(128, 64, 512, 200), 3);
        assert_eq!(fill_at(128, 64, 5, 1), 5);
    }

    #[test]
    fn a_pace_spaces_its_turns_and_allows_a_tenth_of_a_second_of_burst() {
        let gap = Duration::from_millis(10);
        let t0 = Instant::now() + Duration::from_secs(10);
        let next = std::sync::Mutex::new(t0 - Duration::from_secs(5));
        // Idle for a long time: the first turn is a tenth of a second back, so ten go at once
        // and the eleventh waits for its turn.
        let turns: Vec<Instant> = (0..12).map(|_| pace(&next, t0, gap)).collect();
        assert_eq!(turns[0], t0 - Duration::from_millis(100));
        for w in turns.windows(2) {
            assert_eq!(w[1] - w[0], gap);
        }
        assert!(turns[9] < t0 && turns[10] == t0 && turns[11] > t0);
        // Turns already taken are not taken again after a pause in the calls.
        assert_eq!(
            pace(&next, t0 + Duration::from_millis(1), gap),
            t0 + gap * 2
        );
    }
}
