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
use crate::config::Config;
use crate::domain::delivery::Submit;
use crate::store::Store;
use crate::store::sms::{Finish, ReportIn};

/// How often unknown messages are looked up.
pub const EVERY: Duration = Duration::from_secs(300);
/// How old an unknown message must be before the periodic lookup asks about it (the
/// provider needs a moment to show what it accepted).
pub const SETTLE: Duration = Duration::from_secs(120);
/// Most messages looked up in one pass.
const PASS: usize = 500;

/// What a pass did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
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
    gateways: BTreeMap<String, Gateway>,
}

impl Reconciler {
    /// Opens a client per gateway that can be asked.
    pub fn new(cfg: &Config, store: Arc<Store>) -> std::io::Result<Reconciler> {
        let mut gateways = BTreeMap::new();
        for g in cfg.sms.gateways.iter().filter(|g| g.kind.templates_only()) {
            gateways.insert(g.name.clone(), Gateway::new(g.clone(), "http://127.0.0.1")?);
        }
        Ok(Reconciler { store, gateways })
    }

    /// Looks up the unknown messages of `campaign` (or of all) older than `settle`.
    pub async fn pass(&self, campaign: Option<i64>, settle: Duration) -> Outcome {
        let mut out = Outcome::default();
        let before = Utc::now() - chrono::Duration::from_std(settle).unwrap_or_default();
        let store = self.store.clone();
        let list = match tokio::task::spawn_blocking(move || {
            store.unknown_messages(campaign, before, PASS)
        })
        .await
        {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                out.errors.push(e.to_string());
                return out;
            }
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
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(e) => {
                    if out.errors.len() < 10 {
                        out.errors.push(format!("message {}: {e}", m.id));
                    }
                    continue;
                }
            };
            let gateway = gw.cfg.name.clone();
            let store = self.store.clone();
            let stored = tokio::task::spawn_blocking(move || {
                let now = Utc::now();
                store.finish_submits(
                    &[Finish {
                        id: m.id,
                        campaign: m.campaign,
                        parts: m.parts,
                        answer: Submit::Accepted,
                        carrier_id: found.carrier_id.clone(),
                        reason: Some(format!(
                            "found at the provider by reconciliation ({})",
                            found.code
                        )),
                        retry_at: None,
                        delivered_by: None,
                    }],
                    now,
                )?;
                if let Some(report) = found.report {
                    store.record_reports(
                        &[ReportIn {
                            id: m.id,
                            carrier_id: None,
                            gateway,
                            report: Some(report),
                            code: found.code.clone(),
                            raw: "reconciliation".into(),
                        }],
                        now,
                    )?;
                }
                Ok::<_, crate::store::StoreError>(())
            })
            .await;
            match stored {
                Ok(Ok(())) => out.resolved += 1,
                Ok(Err(e)) => out.errors.push(e.to_string()),
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
