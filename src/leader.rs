//! Leading one fleet from several daemons on one PostgreSQL database (`[store] node`, `lease`).
//!
//! A daemon on PostgreSQL takes the leader lease ([`crate::store::leader`]) before it does
//! anything a fleet must see once: connecting its publisher, publishing and restoring retained
//! topics, starting scheduled and recurring campaigns, claiming SMS. Until then it is a standby
//! and waits, looking again every quarter of the lease. The leader renews the lease every
//! quarter of it, and holds it locally until nine tenths of a lease after its last renewal was
//! sent (the server's lease ends a full lease after the server received it, so the local end
//! comes first). A leader that reaches its local end without a renewal stops the process
//! (exit 75): it cannot know whether another node leads. Until it stops, [`may_act`] refuses
//! its MQTT publishes, and every transaction of its writers is refused by the database (the
//! fence of `store::leader`), so a leader frozen (SIGSTOP, a stalled VM) past its lease sends
//! and writes nothing when it wakes. A clean stop gives the lease back at once.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// The exit status of a leader that lost its lease (`EX_TEMPFAIL`): restart it, it comes back
/// as a standby.
pub const LOST: i32 = 75;

/// Milliseconds after [`origin`] until which this process may act as the leader; `u64::MAX`
/// when no lease is in use (SQLite: the one daemon always leads).
static UNTIL_MS: AtomicU64 = AtomicU64::new(u64::MAX);

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn ms(t: Instant) -> u64 {
    t.saturating_duration_since(origin()).as_millis() as u64
}

fn hold_until(t: Instant) {
    UNTIL_MS.store(ms(t), Ordering::SeqCst);
}

fn until() -> Instant {
    origin() + Duration::from_millis(UNTIL_MS.load(Ordering::SeqCst))
}

/// Whether this process may act as the fleet's leader now: always without a lease; with one,
/// only before its local end.
pub fn may_act() -> bool {
    let until = UNTIL_MS.load(Ordering::SeqCst);
    until == u64::MAX || ms(Instant::now()) < until
}

/// What this process is to the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// No lease in use (SQLite): the one daemon.
    Single,
    /// Holds the lease.
    Leader,
    /// Shares the store and waits for the lease: answers the API, publishes and sends nothing.
    Standby,
    /// Led, and its lease has ended (a frozen leader woken): stopping, acts on nothing.
    Lost,
}

/// Whether this process has taken the lease (it never goes back to being a standby: a leader
/// that loses the lease stops).
static LED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks this process a standby until [`acquire`] takes the lease (a shared store): from now
/// on [`may_act`] refuses until it leads.
pub fn standby() {
    let _ = origin();
    UNTIL_MS.store(0, Ordering::SeqCst);
}

/// What this process is now.
pub fn role() -> Role {
    match UNTIL_MS.load(Ordering::SeqCst) {
        u64::MAX => Role::Single,
        _ if may_act() => Role::Leader,
        _ if LED.load(Ordering::SeqCst) => Role::Lost,
        _ => Role::Standby,
    }
}

/// How long the local hold lasts after a renewal was sent.
fn hold(lease: Duration) -> Duration {
    lease * 9 / 10
}

/// Waits until `node` holds the lease; answers its epoch. Logs who leads while it waits.
pub async fn acquire(store: &Arc<Store>, node: &str, lease: Duration) -> anyhow::Result<i64> {
    let _ = origin();
    let mut said: Option<(String, i64)> = None;
    loop {
        let sent = Instant::now();
        let n = node.to_owned();
        match store.call(move |s| s.try_lead(&n, lease)).await {
            Ok(Some(epoch)) => {
                LED.store(true, Ordering::SeqCst);
                hold_until(sent + hold(lease));
                store.lead(node, epoch);
                tracing::info!(
                    node,
                    epoch,
                    lease_ms = lease.as_millis() as u64,
                    "leading: took the leader lease"
                );
                return Ok(epoch);
            }
            Ok(None) => {
                if let Ok(Some(h)) = store.call(|s| s.leader()).await {
                    let who = (h.node.clone(), h.epoch);
                    if said.as_ref() != Some(&who) {
                        tracing::info!(node, leader = %h.node, epoch = h.epoch, lease_left_s = h.remaining_s, "standby: another node leads; waiting for its lease to end");
                        said = Some(who);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(node, error = %e, "standby: cannot reach the store to take the lease")
            }
        }
        // Under systemd (Type=notify) a standby is still starting: it asks for more time on
        // every look, so its start timeout does not kill it while another node leads.
        let wait = lease / 4;
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Status("standby: waiting for the leader lease"),
            sd_notify::NotifyState::ExtendTimeoutUsec(
                u32::try_from((wait * 4).as_micros()).unwrap_or(u32::MAX),
            ),
        ]);
        tokio::time::sleep(wait).await;
    }
}

/// Renews the lease every quarter of it until `cancel`; stops the process when the local hold
/// ends without a renewal, or when another node holds the lease.
pub async fn keep(
    store: Arc<Store>,
    node: String,
    epoch: i64,
    lease: Duration,
    cancel: CancellationToken,
) {
    loop {
        let next = (Instant::now() + lease / 4).min(until());
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        if !may_act() {
            lost(&node, epoch, "the lease was not renewed in time");
        }
        let sent = Instant::now();
        let n = node.clone();
        let renewed = tokio::select! {
            r = store.call(move |s| s.renew_lead(&n, epoch, lease)) => r,
            _ = tokio::time::sleep_until(until()) => {
                lost(&node, epoch, "the store did not answer the renewal in time")
            }
        };
        match renewed {
            Ok(true) => hold_until(sent + hold(lease)),
            Ok(false) => lost(&node, epoch, "the lease ended or another node took it"),
            Err(e) => {
                tracing::warn!(node, epoch, error = %e, "cannot renew the leader lease; trying again")
            }
        }
    }
}

/// Gives the lease back (a clean stop), so that a standby takes over at once.
pub async fn resign(store: &Arc<Store>, node: &str, epoch: i64) {
    let n = node.to_owned();
    match store.call(move |s| s.resign_lead(&n, epoch)).await {
        Ok(()) => tracing::info!(node, epoch, "gave the leader lease back"),
        Err(e) => {
            tracing::warn!(node, epoch, error = %e, "cannot give the leader lease back; it ends by itself")
        }
    }
}

fn lost(node: &str, epoch: i64, why: &str) -> ! {
    UNTIL_MS.store(0, Ordering::SeqCst);
    tracing::error!(
        node,
        epoch,
        why,
        "lost the leader lease: stopping now so that a standby leads alone (exit 75; restarted, this node comes back as a standby)"
    );
    std::process::exit(LOST)
}
