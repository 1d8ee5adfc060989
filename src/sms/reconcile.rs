//! Reconciliation: a message whose submit answer was lost (`unknown`) is looked up at its
//! provider, where the provider can be asked (Tencent `PullSmsSendStatusByPhoneNumber`,
//! Aliyun `QuerySendDetails`; CARRIERS.md §7.3). Found there, it becomes `sent` (and
//! `delivered` or `failed` when the provider knows): it is never resent. Not found, it stays
//! `unknown` for an operator (`requeue-unknown`), since a message the provider accepted may
//! not show before its receipt. Runs every [`EVERY`] on unknowns older than [`SETTLE`], and on
//! `marquee campaign reconcile ID`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::gateway::Gateway;
use crate::store::Store;

/// How often unknown messages are looked up.
pub const EVERY: Duration = Duration::from_secs(300);
/// How old an unknown message must be before the periodic lookup asks about it (the
/// provider needs a moment to show what it accepted).
pub const SETTLE: Duration = Duration::from_secs(120);
/// Most messages looked up in one pass.
const PASS: usize = 500;

/// What a pass did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Outcome {
    /// Unknown messages looked up.
    pub checked: usize,
    /// Found at the provider: now `sent`, `delivered` or `failed`.
    pub resolved: usize,
    /// Lookups that failed (the provider did not answer, or refused).
    pub errors: Vec<String>,
}

/// The gateways that can be asked, and the store.
pub struct Reconciler {
    store: Arc<Store>,
    gateways: BTreeMap<String, Arc<Gateway>>,
}

impl Reconciler {
    /// Keeps the gateways that can be asked (Tencent, Aliyun), sharing the dispatcher's
    /// clients.
    pub fn new(gateways: Vec<Arc<Gateway>>, store: Arc<Store>) -> Reconciler {
        let gateways = gateways
            .into_iter()
            .filter(|g| {
                matches!(
                    g.cfg.kind,
                    super::config::GatewayKind::Tencent(_) | super::config::GatewayKind::Aliyun(_)
                )
            })
            .map(|g| (g.cfg.name.clone(), g))
            .collect();
        Reconciler { store, gateways }
    }

    /// Looks up the unknown messages of `campaign` (or of all) older than `settle`; the
    /// periodic pass (`campaign` none) skips those looked up within [`EVERY`].
    pub async fn pass(&self, campaign: Option<i64>, settle: Duration) -> Outcome {
        let mut out = Outcome::default();
        if self.gateways.is_empty() {
            return out;
        }
        let now = Utc::now();
        let before = now - chrono::Duration::from_std(settle).unwrap_or_default();
        let checked_before = match campaign {
            Some(_) => now,
            // Half a period: a lookup made just after the last tick is due at the next one.
            None => now - chrono::Duration::from_std(EVERY / 2).unwrap_or_default(),
        };
        let names: Vec<String> = self.gateways.keys().cloned().collect();
        let list = match self
            .store
            .call(move |store| {
                store.unknown_messages(campaign, &names, before, checked_before, PASS)
            })
            .await
        {
            Ok(l) => l,
            Err(e) => {
                out.errors.push(e.to_string());
                return out;
            }
        };
        for m in list {
            let Some(gw) = m.gateway.as_deref().and_then(|g| self.gateways.get(g)) else {
                continue;
            };
            out.checked += 1;
            let since = m.submitted_at.unwrap_or_else(Utc::now);
            let found = match gw.find(&m.recipient, m.campaign, since).await {
                Ok(f) => f,
                Err(e) => {
                    if out.errors.len() < 10 {
                        out.errors.push(format!("message {}: {e}", m.id));
                    }
                    // Looked up (and failed): the next ones get their turn first.
                    let _ = self
                        .store
                        .call(move |store| store.mark_checked(m.id, Utc::now()))
                        .await;
                    continue;
                }
            };
            let stored = self
                .store
                .call(move |store| match found {
                    // Found: sent (never resent), and its outcome when the provider knows it.
                    Some(f) => store.resolve_unknown(
                        &m,
                        f.carrier_id.as_deref(),
                        &f.code,
                        f.report,
                        Utc::now(),
                    ),
                    None => store.mark_checked(m.id, Utc::now()).map(|()| false),
                })
                .await;
            match stored {
                Ok(true) => out.resolved += 1,
                Ok(false) => {}
                Err(e) => out.errors.push(e.to_string()),
            }
        }
        out
    }

    /// Every [`EVERY`] until `cancel`: a pass over every campaign's settled unknowns.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        if self.gateways.is_empty() {
            return;
        }
        let mut every = tokio::time::interval(EVERY);
        every.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            let o = self.pass(None, SETTLE).await;
            if o.checked > 0 || !o.errors.is_empty() {
                tracing::info!(checked = o.checked, resolved = o.resolved, errors = ?o.errors, "reconciled unknown SMS with their providers");
            }
        }
    }
}
