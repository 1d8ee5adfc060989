//! Standbys that serve (a shared PostgreSQL store; `crate::leader`).
//!
//! Every node answers the API and writes to the store; only the leader publishes. On a standby,
//! what the API asks to publish (an alert, its approval or clear) is handed to the leader through
//! the store ([`hand_off`], `store::handoff`) and answered as queued. The leader publishes what was
//! handed over, in order, through its scheduler, every [`EVERY`] ([`follow`]), and removes each
//! row once its scheduler has stored and sent it: a payload handed over during a failover waits
//! in the store and goes out when the next leader starts. Every node also reads the display
//! registry again when another node changed it (its generation moved), so that reports of a
//! display registered through a standby are taken and an alert's reach counts it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::app::Ctx;
use crate::scheduler::PublishRequest;
use crate::store::Store;
use crate::store::handoff::{Handoff, REGISTRY};
use crate::wire::{Signed, Topic};

/// How often the leader looks for payloads handed over, and every node for registry changes.
pub const EVERY: Duration = Duration::from_millis(200);

/// How many payloads the leader publishes in one look.
const BATCH: i64 = 64;

/// Until `leading` is cancelled: stores each request to publish for the leader and answers it
/// as queued (`(None, false)`: no version yet, not sent by this node). Then gives the receiver
/// back, for this node's scheduler.
pub async fn hand_off(
    store: Arc<Store>,
    node: String,
    prefix: String,
    mut requests: mpsc::Receiver<PublishRequest>,
    leading: CancellationToken,
) -> mpsc::Receiver<PublishRequest> {
    loop {
        let req = tokio::select! {
            biased;
            _ = leading.cancelled() => return requests,
            r = requests.recv() => match r {
                Some(r) => r,
                None => return requests,
            },
        };
        let payload = match serde_json::to_string(&req.payload) {
            Ok(p) => p,
            Err(e) => {
                let _ = req
                    .reply
                    .send(Err(anyhow::anyhow!("cannot encode the payload: {e}")));
                continue;
            }
        };
        let h = Handoff {
            id: 0,
            topic: req.topic.render(&prefix),
            payload,
            expires_at: req.expires_at,
            if_current_alert: req.if_current_alert.clone(),
            node: node.clone(),
        };
        let topic = h.topic.clone();
        let stored = store.call(move |s| s.hand_off(&h)).await;
        match &stored {
            Ok(()) => tracing::info!(topic, "standby: handed the payload to the leader"),
            Err(e) => {
                tracing::error!(topic, error = %e, "standby: cannot hand the payload to the leader")
            }
        }
        let _ = req.reply.send(
            stored
                .map(|()| (None, false))
                .map_err(|e| anyhow::anyhow!("cannot hand the payload to the leader: {e}")),
        );
    }
}

/// Until `cancel`: every [`EVERY`], reads the registry again when its generation moved, and
/// once `publishing` is cancelled (this node leads and its scheduler runs) publishes what
/// standbys handed over.
pub async fn follow(ctx: Arc<Ctx>, publishing: CancellationToken, cancel: CancellationToken) {
    let mut seen = ctx.store.call(|s| s.generation(REGISTRY)).await.ok();
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        match ctx.store.call(|s| s.generation(REGISTRY)).await {
            Ok(g) if Some(g) != seen => {
                let store = ctx.store.clone();
                let registry = ctx.registry.clone();
                match store.call(move |s| registry.refresh(s)).await {
                    Ok(()) => {
                        tracing::info!(generation = g, "read the display registry again");
                        seen = Some(g);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read the display registry"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the registry's generation"),
        }
        if publishing.is_cancelled() {
            publish_handed(&ctx).await;
        }
    }
}

/// Publishes what was handed over, oldest first, each removed once published; stops at the
/// first failure (tried again on the next look).
async fn publish_handed(ctx: &Ctx) {
    let rows = match ctx.store.call(|s| s.handoffs(BATCH)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read what standbys handed over");
            return;
        }
    };
    if rows.is_empty() {
        return;
    }
    let prefix = &ctx.cfg.mqtt.topic_prefix;
    for h in rows {
        let parsed =
            Topic::parse(prefix, &h.topic).zip(serde_json::from_str::<Signed>(&h.payload).ok());
        if let Some((topic, payload)) = parsed {
            let (reply, rx) = oneshot::channel();
            let req = PublishRequest {
                topic,
                payload,
                expires_at: h.expires_at,
                if_current_alert: h.if_current_alert.clone(),
                reply,
            };
            if ctx.publisher.send(req).await.is_err() {
                return;
            }
            match rx.await {
                Ok(Ok(version)) => {
                    tracing::info!(topic = %h.topic, from = %h.node, version = ?version.0, "published what a standby handed over");
                }
                Ok(Err(e)) => {
                    tracing::warn!(topic = %h.topic, error = %e, "cannot publish what a standby handed over; trying again");
                    return;
                }
                Err(_) => return,
            }
        } else {
            tracing::error!(topic = %h.topic, from = %h.node, "dropped a hand-off this version cannot read (another topic prefix, or a newer node's payload)");
        }
        let id = h.id;
        if let Err(e) = ctx.store.call(move |s| s.drop_handoff(id)).await {
            tracing::warn!(error = %e, "cannot remove a published hand-off; it is published again");
            return;
        }
    }
    // A held alert handed over: the leader's starter looks at the store again.
    ctx.held_alerts.notify_one();
}
