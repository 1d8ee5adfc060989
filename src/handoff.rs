//! Standbys that serve (a shared PostgreSQL store; `crate::leader`).
//!
//! Every node answers the API and writes to the store; only the leader publishes. On a shared
//! store every request to publish (an alert, its approval, start or clear; the leader's own
//! too) is first stored in the `handoff` table ([`sequence`], `store::handoff`), and the leader
//! publishes the table in id order through its scheduler: hand-offs commit one at a time, so
//! that order is the order in which the nodes' API calls were stored, and a clear never
//! overtakes the alert it clears, whichever node took either. A standby answers at once
//! (`handed_off`); the leader publishes a request of its own at once, with the rows before it,
//! and answers with its version. It also looks at the table every [`EVERY`]. Each row is
//! removed once the scheduler has stored and sent it; a row handed over while no node leads
//! (during a failover) waits in the store and goes out when the next leader starts.
//!
//! Every node also reads the display registry again when another node changed it (its
//! generation moved), so that reports of a display registered through a standby are taken and
//! an alert's reach counts it; a standby also shows the playlists the leader last published.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::app::Ctx;
use crate::scheduler::PublishRequest;
use crate::scheduler::catalog::Catalog;
use crate::store::handoff::{Handoff, PLAYLISTS, REGISTRY};
use crate::wire::{Signed, Topic};

/// How often the leader looks for payloads handed over, and every node for registry changes.
pub const EVERY: Duration = Duration::from_millis(200);

/// How many rows the leader reads at a time.
const BATCH: i64 = 64;

/// What a request to publish is answered: its version (`None` while it waits in the store),
/// whether the broker connection was up.
type Reply = oneshot::Sender<Outcome>;

/// The scheduler's answer to a request to publish.
type Outcome = anyhow::Result<(Option<u64>, bool)>;

/// Until `cancel`: stores every request to publish in the hand-off table; once `publishing` is
/// cancelled (this node leads and its scheduler runs), publishes the table through
/// `scheduler`, at once for a request of its own and every [`EVERY`] for the other nodes'.
/// Follows the registry's generation on every node.
pub async fn sequence(
    ctx: Arc<Ctx>,
    node: String,
    (mut requests, scheduler): (mpsc::Receiver<PublishRequest>, mpsc::Sender<PublishRequest>),
    catalog: watch::Sender<Arc<Catalog>>,
    publishing: CancellationToken,
    cancel: CancellationToken,
) {
    let mut registry_seen = None;
    let mut playlists_seen = None;
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            r = requests.recv() => match r {
                Some(req) => take(&ctx, &node, req, &scheduler, &publishing).await,
                None => return,
            },
            _ = every.tick() => {
                follow_registry(&ctx, &mut registry_seen).await;
                follow_playlists(&ctx, &catalog, &mut playlists_seen).await;
                if publishing.is_cancelled() {
                    publish_handed(&ctx, &scheduler, None).await;
                }
            }
        }
    }
}

/// Stores `req` in the hand-off table; a standby answers it as handed off, the leader
/// publishes the table up to it and answers with its version.
async fn take(
    ctx: &Ctx,
    node: &str,
    req: PublishRequest,
    scheduler: &mpsc::Sender<PublishRequest>,
    publishing: &CancellationToken,
) {
    let payload = match serde_json::to_string(&req.payload) {
        Ok(p) => p,
        Err(e) => {
            let _ = req
                .reply
                .send(Err(anyhow::anyhow!("cannot encode the payload: {e}")));
            return;
        }
    };
    let h = Handoff {
        id: 0,
        topic: req.topic.render(&ctx.cfg.mqtt.topic_prefix),
        payload,
        expires_at: req.expires_at,
        if_current_alert: req.if_current_alert.clone(),
        node: node.to_owned(),
    };
    let topic = h.topic.clone();
    let id = match ctx.store.call(move |s| s.hand_off(&h)).await {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(topic, error = %e, "cannot store the payload to publish");
            let _ = req.reply.send(Err(anyhow::anyhow!(
                "cannot store the payload to publish: {e}"
            )));
            return;
        }
    };
    if publishing.is_cancelled() {
        publish_handed(ctx, scheduler, Some((id, req.reply))).await;
    } else {
        tracing::info!(topic, "standby: handed the payload to the leader");
        let _ = req.reply.send(Ok((None, false)));
    }
}

/// Publishes the hand-off table in id order through the scheduler, each row removed once
/// published; stops at the first failure (the rest waits for the next look). `mine`: a row of
/// this node's and whom to answer when it is published (answered as waiting, `(None,
/// false)`, if the pass stops before it). A row this version cannot read is left for a node
/// that can, and passed over.
async fn publish_handed(
    ctx: &Ctx,
    scheduler: &mpsc::Sender<PublishRequest>,
    mut mine: Option<(i64, Reply)>,
) {
    let mut after = 0;
    let mut published = 0;
    'pass: loop {
        let rows = match ctx.store.call(move |s| s.handoffs(after, BATCH)).await {
            Ok(r) if !r.is_empty() => r,
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the payloads to publish");
                break;
            }
        };
        for h in rows {
            after = h.id;
            let Some(req) = request(ctx, &h) else {
                continue;
            };
            if cleared_since(ctx, &req.0.payload).await {
                // Cleared after it was stored and before this row was: its clear (an earlier
                // row) found it not yet on the topic and was skipped, so it must not go out.
                tracing::info!(topic = %h.topic, "not published: the alert was cleared meanwhile");
                let id = h.id;
                if let Err(e) = ctx.store.call(move |s| s.drop_handoff(id)).await {
                    tracing::warn!(error = %e, "cannot remove a hand-off");
                    break 'pass;
                }
                continue;
            }
            let (req, rx) = req;
            if scheduler.send(req).await.is_err() {
                break 'pass;
            }
            let outcome = match rx.await {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => {
                    tracing::warn!(topic = %h.topic, error = %e, "cannot publish a handed-over payload; trying again");
                    break 'pass;
                }
                Err(_) => break 'pass,
            };
            let id = h.id;
            if let Err(e) = ctx.store.call(move |s| s.drop_handoff(id)).await {
                tracing::warn!(error = %e, "cannot remove a published hand-off; it is published again");
                break 'pass;
            }
            published += 1;
            if h.node != ctx.store.node().unwrap_or_default() {
                tracing::info!(topic = %h.topic, from = %h.node, version = ?outcome.0, "published what a standby handed over");
            }
            if mine.as_ref().is_some_and(|(m, _)| *m == id)
                && let Some((_, reply)) = mine.take()
            {
                let _ = reply.send(Ok(outcome));
            }
        }
    }
    if let Some((_, reply)) = mine {
        let _ = reply.send(Ok((None, false)));
    }
    if published > 0 {
        // A held alert handed over: the leader's starter looks at the store again.
        ctx.held_alerts.notify_one();
    }
}

/// Whether `payload` is an alert (live or held) that the store says was cleared: its clear was
/// decided on one node while its publication was being handed over on another.
async fn cleared_since(ctx: &Ctx, payload: &Signed) -> bool {
    let (Signed::Alert(a) | Signed::AlertAt(a)) = payload else {
        return false;
    };
    let id = a.id.clone();
    matches!(
        ctx.store.call(move |s| s.alert(&id)).await,
        Ok(Some(row)) if row.cleared_at.is_some()
    )
}

/// The scheduler's request for row `h`, or `None` (logged) when this version cannot read it.
fn request(ctx: &Ctx, h: &Handoff) -> Option<(PublishRequest, oneshot::Receiver<Outcome>)> {
    let topic = Topic::parse(&ctx.cfg.mqtt.topic_prefix, &h.topic);
    let payload = serde_json::from_str::<Signed>(&h.payload).ok();
    let (Some(topic), Some(payload)) = (topic, payload) else {
        tracing::error!(topic = %h.topic, from = %h.node, "a payload to publish this version cannot read (another topic prefix, or a newer node's): left for a node that can");
        return None;
    };
    let (reply, rx) = oneshot::channel();
    Some((
        PublishRequest {
            topic,
            payload,
            expires_at: h.expires_at,
            if_current_alert: h.if_current_alert.clone(),
            reply,
        },
        rx,
    ))
}

/// On a standby: shows the playlists the leader last published (the API's catalog) again when
/// their generation is not the one last read. A leader's scheduler owns the catalog: the swap
/// happens only while this node is a standby, checked under the catalog's lock (the role turns
/// to leader before the scheduler is made).
async fn follow_playlists(
    ctx: &Ctx,
    catalog: &watch::Sender<Arc<Catalog>>,
    seen: &mut Option<i64>,
) {
    if crate::leader::role() != crate::leader::Role::Standby {
        return;
    }
    let Some(g) = moved(ctx, PLAYLISTS, *seen).await else {
        return;
    };
    let cfg = ctx.cfg.clone();
    match ctx
        .store
        .call(move |s| crate::scheduler::Scheduler::last_published(&cfg, s))
        .await
    {
        Ok(last) => {
            catalog.send_if_modified(|c| {
                let standby = crate::leader::role() == crate::leader::Role::Standby;
                if standby {
                    *c = last;
                }
                standby
            });
            *seen = Some(g);
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the last published playlists"),
    }
}

/// Reads the registry again when its generation is not the one last read (`seen`; `None`:
/// never read since start, read it).
async fn follow_registry(ctx: &Ctx, seen: &mut Option<i64>) {
    let Some(g) = moved(ctx, REGISTRY, *seen).await else {
        return;
    };
    let registry = ctx.registry.clone();
    match ctx.store.call(move |s| registry.refresh(s)).await {
        Ok(()) => {
            if seen.is_some() {
                tracing::info!(generation = g, "read the display registry again");
            }
            *seen = Some(g);
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the display registry"),
    }
}

/// The generation of `name` when it is not `seen` (`None`: unchanged, or unreadable: logged).
async fn moved(ctx: &Ctx, name: &'static str, seen: Option<i64>) -> Option<i64> {
    match ctx.store.call(move |s| s.generation(name)).await {
        Ok(g) => (Some(g) != seen).then_some(g),
        Err(e) => {
            tracing::warn!(name, error = %e, "cannot read a generation in the store");
            None
        }
    }
}
