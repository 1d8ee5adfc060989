//! Emergency alerts as use cases: raise ([`raise`]), approve ([`approve`]), clear ([`clear`]),
//! apply a CAP 1.2 document ([`apply_cap`]), start the alerts held until their CAP start
//! ([`start_held_alerts`]); and the CAP feed poller ([`cap_feed`]). The HTTP API, the feed and the
//! held-alert starter call these same functions.
//!
//! Rules kept here: an alert goes to the screens through the scheduler (the single writer of
//! retained topics), signed; every change is audited before it takes effect, and an alert's
//! row and its audit entry are written in one transaction; above `approval.alerts_above`
//! displays a second person approves (an emergency token skips that, audited as such); an alert
//! with an SMS part stores its campaign first, so a bad list fails the request before anything
//! reaches a screen, while a full disk refuses only the SMS part.

pub mod cap_feed;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;

use crate::app::{Ctx, Error, Principal, audit};
use crate::domain::campaign::{AlertAction, AlertStatus, CampaignStatus, alert_next};
use crate::scheduler::PublishRequest;
use crate::sms::campaigns::Created;
use crate::store::alerts::{AlertRow, Scope};
use crate::store::audit::NewEntry;
use crate::wire::alert::{Alert, AlertClear};
use crate::wire::{Signed, Topic, valid_name};

const SEVERITIES: [&str; 4] = ["minor", "moderate", "severe", "extreme"];

/// `POST /api/v1/alerts` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RaiseRequest {
    /// Text per language.
    pub text: BTreeMap<String, String>,
    /// `"all"`, `{"channels": […]}` or `{"displays": […]}`.
    #[serde(default = "all")]
    pub scope: Scope,
    /// `minor`, `moderate`, `severe` (default) or `extreme`.
    #[serde(default = "severe")]
    pub severity: String,
    /// How long it lasts unless cleared (default 1h, at most 7 days).
    #[serde(default = "one_hour")]
    pub expires_in: String,
    /// Also send it by SMS: a campaign that starts when the alert goes live (and waits with
    /// it for approval), is cancelled when the alert is cleared, and is reported with it.
    #[serde(default)]
    pub sms: Option<AlertSms>,
}

/// The SMS part of an alert.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertSms {
    /// Recipients as a list.
    #[serde(default)]
    pub recipients: Vec<crate::sms::campaign::RecipientIn>,
    /// Recipients as CSV text (a number column, optional lang).
    #[serde(default)]
    pub recipients_csv: Option<String>,
    /// Recipients from a list uploaded with `POST /api/v1/uploads` (CSV, TXT, XLSX).
    #[serde(default)]
    pub recipients_upload: Option<String>,
    /// The sheet of an uploaded workbook (default: the first).
    #[serde(default)]
    pub sheet: Option<String>,
    /// SMS text (default: the alert's `zh` text, or its only text; `en` for recipients whose
    /// lang is en).
    #[serde(default)]
    pub text: Option<String>,
    /// An approved template (`[[sms.templates]]`) instead of a text, for gateways that send
    /// only templates; its variables come from the list's columns. Refused at creation when
    /// no gateway has it.
    #[serde(default)]
    pub template: Option<String>,
    /// Gateways in failover order (default: all configured).
    #[serde(default)]
    pub gateways: Vec<String>,
}

fn all() -> Scope {
    Scope::All
}
fn severe() -> String {
    "severe".into()
}
fn one_hour() -> String {
    "1h".into()
}

/// One retained topic an alert (or its clear) was published on.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Publication {
    /// The topic, with the configured prefix.
    pub topic: String,
    /// The version it carries (none when the scheduler skipped it: not the current alert; or
    /// while it waits for the leader).
    pub version: Option<u64>,
    /// `sent`; `queued` when the broker connection was down (stored and signed, it goes out on
    /// reconnect); `handed_off` on a standby of a shared store (stored, the leader publishes
    /// it, or during a failover the next leader).
    pub broker: &'static str,
}

/// The SMS part of a raise: the campaign created (pending with the alert), or why it could not
/// be stored (a full data disk: the alert still goes to the screens).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum SmsPart {
    /// The alert's campaign.
    Created(Box<Created>),
    /// The disk is full.
    Refused {
        /// Why.
        refused: String,
    },
}

/// What a raise did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Raised {
    /// On the screens (or stored and signed, waiting for the broker).
    Published {
        /// The alert's id.
        id: String,
        /// When it ends by itself.
        #[schema(value_type = String, format = DateTime)]
        expires_at: DateTime<Utc>,
        /// Where it was published.
        published: Vec<Publication>,
        /// Set when an emergency token skipped the two-person rule.
        #[serde(skip_serializing_if = "Option::is_none")]
        approval: Option<&'static str>,
        /// Its SMS part.
        sms: Option<SmsPart>,
        /// `published`, or `queued` when the broker was not connected.
        status: &'static str,
        /// Why it is queued.
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<&'static str>,
    },
    /// Waits for a second person (`status`: `pending`).
    Pending {
        /// The alert's id.
        id: String,
        /// Always `pending`.
        #[schema(value_type = String, example = "pending")]
        status: AlertStatus,
        /// How many known displays it reaches.
        reach: usize,
        /// Its SMS part (pending with it).
        sms: Option<SmsPart>,
        /// What the second person must do.
        message: String,
    },
}

impl Raised {
    fn published(
        alert: &Alert,
        published: Vec<Publication>,
        approval: Option<&'static str>,
        sms: Option<SmsPart>,
    ) -> Raised {
        let queued = published.iter().any(|p| p.broker == "queued");
        let handed = published.iter().any(|p| p.broker == "handed_off");
        Raised::Published {
            id: alert.id.clone(),
            expires_at: alert.expires_at,
            published,
            approval,
            sms,
            status: if queued || handed {
                "queued"
            } else {
                "published"
            },
            message: if handed {
                Some(
                    "this node is a standby: the alert is stored, and the leader publishes it (during a failover, the next leader)",
                )
            } else {
                queued.then_some(
                    "the broker is not connected: the alert is stored and signed, and goes out when the connection is back",
                )
            },
        }
    }
}

/// The campaign request for an alert's SMS part.
fn sms_request(alert: &Alert, sms: &AlertSms) -> crate::sms::campaign::CreateRequest {
    let (text, texts) = match (&sms.text, &sms.template) {
        (_, Some(_)) => (sms.text.clone().unwrap_or_default(), BTreeMap::new()),
        (Some(t), None) => (t.clone(), BTreeMap::new()),
        (None, None) => {
            let main = alert
                .text
                .get("zh")
                .or_else(|| alert.text.values().next())
                .cloned()
                .unwrap_or_default();
            let others = alert
                .text
                .iter()
                .filter(|(_, t)| **t != main)
                .map(|(l, t)| (l.clone(), t.clone()))
                .collect();
            (main, others)
        }
    };
    crate::sms::campaign::CreateRequest {
        name: format!("alert {}", alert.id),
        text,
        template: sms.template.clone(),
        texts,
        sender: None,
        recipients: sms.recipients.clone(),
        recipients_csv: sms.recipients_csv.clone(),
        recipients_upload: sms.recipients_upload.clone(),
        sheet: sms.sheet.clone(),
        gateways: sms.gateways.clone(),
        start: Some("now".into()),
        send_window: None,
        daily_cap: None,
        repeat: None,
    }
}

/// Starts the campaign of an alert that just went live (if it has one waiting).
async fn start_alert_sms(ctx: &Ctx, by: &str, alert: &str) -> Result<(), Error> {
    let key = alert.to_owned();
    let c = ctx.store.call(move |s| s.campaign_for_alert(&key)).await?;
    if let Some(c) = c.filter(|c| c.status == CampaignStatus::Pending) {
        crate::sms::campaigns::approve_and_start(ctx, by, &c, "campaign.start").await?;
    }
    Ok(())
}

fn topics(scope: &Scope) -> Vec<Topic> {
    scope_names(scope).into_iter().map(Topic::Alert).collect()
}

/// The topics an alert held for later goes on (beside the live ones, never replacing them).
fn held_topics(scope: &Scope) -> Vec<Topic> {
    scope_names(scope)
        .into_iter()
        .map(Topic::AlertHeld)
        .collect()
}

fn scope_names(scope: &Scope) -> Vec<String> {
    match scope {
        Scope::All => vec!["all".into()],
        Scope::Channels(cs) => cs.clone(),
        Scope::Displays(ds) => ds.clone(),
    }
}

/// Publishes through the scheduler; returns the version and whether the broker connection was
/// up (when not, the payload is stored and goes out when it is back).
async fn publish(
    ctx: &Ctx,
    topic: Topic,
    payload: Signed,
    expires_at: DateTime<Utc>,
    if_current_alert: Option<String>,
) -> Result<(Option<u64>, bool), Error> {
    let (reply, rx) = oneshot::channel();
    ctx.publisher
        .send(PublishRequest {
            topic,
            payload,
            expires_at,
            if_current_alert,
            reply,
        })
        .await
        .map_err(|_| Error::Internal("the scheduler is not running".into()))?;
    rx.await
        .map_err(|_| Error::Internal("the scheduler dropped the request".into()))?
        .map_err(|e| Error::Internal(format!("{e:#}")))
}

/// Publishes the end of alert `id` on every topic of `scope` (live and held), where it is still
/// the current alert.
async fn publish_clear(
    ctx: &Ctx,
    id: &str,
    scope: &Scope,
    expires: DateTime<Utc>,
) -> Result<(), Error> {
    for topic in topics(scope).into_iter().chain(held_topics(scope)) {
        publish(
            ctx,
            topic,
            Signed::AlertClear(AlertClear { id: id.to_owned() }),
            expires,
            Some(id.to_owned()),
        )
        .await?;
    }
    Ok(())
}

fn validate(ctx: &Ctx, r: &RaiseRequest) -> Result<chrono::Duration, Error> {
    if r.text.is_empty() || r.text.values().any(|t| t.trim().is_empty()) {
        return Err(Error::invalid(
            "text",
            "give at least one non-empty text, e.g. {\"zh\": \"…\", \"en\": \"…\"}",
        ));
    }
    if !SEVERITIES.contains(&r.severity.as_str()) {
        return Err(Error::invalid(
            "severity",
            format!("one of {}", SEVERITIES.join(", ")),
        ));
    }
    match &r.scope {
        Scope::All => {}
        Scope::Channels(cs) if !cs.is_empty() => {
            if let Some(c) = cs.iter().find(|c| !ctx.cfg.schedule.channels.contains(c)) {
                return Err(Error::invalid("scope", format!("unknown channel {c:?}")));
            }
        }
        Scope::Displays(ds) if !ds.is_empty() => {
            if let Some(d) = ds.iter().find(|d| !valid_name(d) || *d == "all") {
                return Err(Error::invalid("scope", format!("bad display id {d:?}")));
            }
        }
        _ => {
            return Err(Error::invalid(
                "scope",
                "name at least one channel or display",
            ));
        }
    }
    humantime::parse_duration(&r.expires_in)
        .ok()
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .filter(|d| *d >= chrono::Duration::seconds(1) && *d <= chrono::Duration::days(7))
        .ok_or_else(|| Error::invalid("expires_in", "a duration from 1s to 7days, e.g. 30m"))
}

/// Records an alert with `status` and its audit entry (as `action`) in one transaction.
async fn record_alert(
    ctx: &Ctx,
    by: &str,
    action: &str,
    alert: &Alert,
    scope: &Scope,
    status: AlertStatus,
) -> Result<(), Error> {
    let entry = NewEntry::new(
        by,
        action,
        &alert.id,
        json!({"scope": scope, "severity": alert.severity, "text": alert.text, "expires_at": alert.expires_at}),
    );
    let (a, sc, who, anchoring) = (alert.clone(), scope.clone(), by.to_owned(), ctx.anchoring());
    ctx.store
        .call(move |store| {
            let head = store.insert_alert(
                &crate::store::alerts::NewAlert {
                    id: &a.id,
                    scope: &sc,
                    severity: &a.severity,
                    text: &a.text,
                    issued_at: a.issued_at,
                    expires_at: a.expires_at,
                    raised_by: &who,
                    status,
                    starts_at: a.starts_at,
                },
                &entry,
            )?;
            anchoring.write(head);
            Ok(())
        })
        .await?;
    Ok(())
}

/// Publishes an alert on its scope's topics (held ones as `alert_at`); returns where.
async fn publish_alert(ctx: &Ctx, alert: &Alert, scope: &Scope) -> Result<Vec<Publication>, Error> {
    let mut published = Vec::new();
    let held = alert.starts_at.is_some();
    let on = if held {
        held_topics(scope)
    } else {
        topics(scope)
    };
    for topic in on {
        let payload = if held {
            Signed::AlertAt(alert.clone())
        } else {
            Signed::Alert(alert.clone())
        };
        let (version, connected) =
            publish(ctx, topic.clone(), payload, alert.expires_at, None).await?;
        published.push(Publication {
            topic: topic.render(&ctx.cfg.mqtt.topic_prefix),
            version,
            broker: if connected {
                "sent"
            } else if version.is_none() && crate::leader::role() == crate::leader::Role::Standby {
                "handed_off"
            } else {
                "queued"
            },
        });
    }
    tracing::warn!(id = %alert.id, severity = %alert.severity, "alert published");
    Ok(published)
}

/// How many known displays `scope` reaches: from the registry and the configuration only,
/// never from what clients report on the bus.
pub fn reach(ctx: &Ctx, scope: &Scope) -> usize {
    let known = ctx.registry.known(&ctx.cfg.schedule.displays);
    known
        .iter()
        .filter(|(id, channel)| in_scope(scope, id, channel))
        .count()
}

/// Whether display `id` on `channel` is in `scope`.
pub fn in_scope(scope: &Scope, id: &str, channel: &str) -> bool {
    match scope {
        Scope::All => true,
        Scope::Channels(cs) => cs.iter().any(|c| c == channel),
        Scope::Displays(ds) => ds.iter().any(|d| d == id),
    }
}

/// The stored alert `id`.
pub async fn load(ctx: &Ctx, id: &str) -> Result<AlertRow, Error> {
    let key = id.to_owned();
    ctx.store
        .call(move |s| s.alert(&key))
        .await?
        .ok_or_else(|| Error::NotFound(format!("no alert {id:?}")))
}

/// Raises an alert for `who`: published at once on the scope's retained alert topics, or
/// pending a second person when it reaches more than `approval.alerts_above` displays (or an
/// unknown number: the rule fails closed).
pub async fn raise(ctx: &Ctx, who: &Principal, r: RaiseRequest) -> Result<Raised, Error> {
    let lasts = validate(ctx, &r)?;
    let now = Utc::now();
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).map_err(|e| Error::Internal(e.to_string()))?;
    let alert = Alert {
        id: format!("alert-{}", hex::encode(b)),
        severity: r.severity.clone(),
        text: r.text.clone(),
        issued_at: now,
        expires_at: now + lasts,
        starts_at: None,
    };
    // The SMS part is checked and stored first (pending, linked to the alert): a bad recipient
    // list fails the request before anything reaches a screen.
    // On a full data disk the SMS part cannot be stored: the alert still goes to the screens
    // (the disk reserve is for it) and the answer says the SMS was refused.
    let mut sms = match &r.sms {
        Some(sms) => match crate::sms::campaigns::create(
            ctx,
            who,
            sms_request(&alert, sms),
            Some((&alert.id, true)),
        )
        .await
        {
            Ok(c) => Some(SmsPart::Created(Box::new(c))),
            Err(e) if e.is_disk_full() => Some(SmsPart::Refused {
                refused: e.to_string(),
            }),
            Err(e) => return Err(e),
        },
        None => None,
    };
    // Two-person rule: above the configured reach, a second person approves; an emergency
    // token skips it (audited as such).
    let mut skipped = None;
    if let Some(limit) = ctx.cfg.approve_alerts_above {
        let reach = reach(ctx, &r.scope);
        // No known display in scope means the reach is unknown (screens that are not registered
        // or declared still show alerts, but nothing counts them): the rule fails closed.
        if (reach > limit || reach == 0) && who.emergency {
            skipped = Some("skipped (emergency token)");
        } else if reach > limit || reach == 0 {
            record_alert(
                ctx,
                &who.name,
                "alert.request",
                &alert,
                &r.scope,
                AlertStatus::Pending,
            )
            .await?;
            return Ok(Raised::Pending {
                message: why_pending(&alert.id, reach, limit),
                id: alert.id,
                status: AlertStatus::Pending,
                reach,
                sms,
            });
        }
    }
    let action = match skipped {
        Some(_) => "alert.raise.emergency_skip",
        None => "alert.raise",
    };
    record_alert(ctx, &who.name, action, &alert, &r.scope, AlertStatus::Live).await?;
    let published = publish_alert(ctx, &alert, &r.scope).await?;
    start_alert_sms(ctx, &who.name, &alert.id).await?;
    // The answer shows the SMS part as it is now (started with the alert), not as it was
    // created (pending, for the alert's approval).
    if let Some(SmsPart::Created(c)) = sms.as_mut() {
        match crate::sms::campaigns::load(ctx, c.id).await {
            Ok(row) => c.status = row.status,
            Err(e) => {
                tracing::warn!(alert = %alert.id, campaign = c.id, error = %e, "cannot read the alert's SMS campaign again: the answer shows it as created");
            }
        }
    }
    Ok(Raised::published(&alert, published, skipped, sms))
}

/// What a pending alert's answer tells the person who raised it.
fn why_pending(id: &str, reach: usize, limit: usize) -> String {
    if reach == 0 {
        format!(
            "no registered or declared display is in scope, so its reach is unknown: another person with the approver role must approve it: POST /api/v1/alerts/{id}/approve"
        )
    } else {
        format!(
            "reaches {reach} displays (more than {limit}): another person with the approver role must approve it: POST /api/v1/alerts/{id}/approve"
        )
    }
}

/// The second person (approver role or above, not the one who raised it) puts a pending alert
/// on the screens; its lifetime starts now. Its SMS part starts with it.
pub async fn approve(ctx: &Ctx, who: &Principal, id: &str) -> Result<(), Error> {
    let row = load(ctx, id).await?;
    if alert_next(row.status, row.cleared_at.is_some(), AlertAction::Approve).is_none() {
        return Err(Error::conflict(
            "not_pending",
            format!("alert {id} is not waiting for approval"),
        ));
    }
    if row.raised_by == who.name {
        return Err(Error::Forbidden(
            "two-person rule: the alert must be approved by another token than the one that raised it".into(),
        ));
    }
    let parse = |t: &str| DateTime::parse_from_rfc3339(t).map(|t| t.with_timezone(&Utc));
    let lasts = match (parse(&row.issued_at), parse(&row.expires_at)) {
        (Ok(a), Ok(b)) => b - a,
        _ => chrono::Duration::hours(1),
    };
    let now = Utc::now();
    let alert = Alert {
        id: id.to_owned(),
        severity: row.severity.clone(),
        text: row.text.clone(),
        issued_at: now,
        expires_at: now + lasts,
        starts_at: None,
    };
    audit(
        ctx,
        &who.name,
        "alert.approve",
        id,
        json!({"raised_by": row.raised_by}),
    )
    .await?;
    let (key, by) = (id.to_owned(), who.name.clone());
    let changed = ctx
        .store
        .call(move |s| s.approve_alert(&key, &by, now, now + lasts))
        .await?;
    if !changed {
        return Err(Error::NotFound(format!("alert {id} is no longer pending")));
    }
    publish_alert(ctx, &alert, &row.scope).await?;
    start_alert_sms(ctx, &who.name, id).await
}

/// Clears alert `id`: audited, a signed clear published where it is still current, marked
/// cleared, and what its SMS campaign has not sent cancelled; idempotent.
pub async fn clear(ctx: &Ctx, by: &str, id: &str) -> Result<(), Error> {
    let row = load(ctx, id).await?;
    clear_row(ctx, by, &row).await
}

/// Audits and publishes the end of an alert (where it is still current), marks it cleared and
/// cancels what its SMS campaign has not sent; idempotent.
async fn clear_row(ctx: &Ctx, by: &str, row: &AlertRow) -> Result<(), Error> {
    audit(ctx, by, "alert.clear", &row.id, json!({})).await?;
    let expires = DateTime::parse_from_rfc3339(&row.expires_at)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now())
        .max(Utc::now() + chrono::Duration::minutes(1));
    publish_clear(ctx, &row.id, &row.scope, expires).await?;
    let (key, who) = (row.id.clone(), by.to_owned());
    ctx.store
        .call(move |s| s.clear_alert(&key, Utc::now(), &who))
        .await?;
    tracing::warn!(id = %row.id, by = %by, "alert cleared");
    // Its SMS stops too: what has not been sent is cancelled.
    crate::sms::campaigns::cancel_for_alert(ctx, by, &row.id).await
}

/// What applying a CAP document did, as the API answers it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CapOutcome {
    /// Whether an alert was raised or scheduled (the API answers 201; else 200).
    #[serde(skip)]
    pub created: bool,
    /// `raised`, `updated`, `scheduled`, `ignored`, `ended`, `cancelled`, `duplicate` or
    /// `ended_before`.
    pub action: &'static str,
    /// Why it was ignored, or a duplicate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The Marquee id of the document's alert.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// When it starts (held until then when ahead).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub starts_at: Option<DateTime<Utc>>,
    /// When it ends by itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<DateTime<Utc>>,
    /// The alerts its `<references>` ended.
    pub ended: Vec<String>,
    /// Each of them: id, the reference that named it, `Update` or `Cancel`, whether it was on.
    #[schema(value_type = Vec<Object>)]
    pub ends: Vec<serde_json::Value>,
    /// References to alerts this daemon never had (remembered as ended).
    pub unknown: Vec<String>,
    /// Where the alert was published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<Vec<Publication>>,
}

/// Applies one CAP 1.2 (or 1.1) document (from the API or a polled feed) as `actor`: first the
/// alerts an Update or Cancel references are ended (each named in the answer and the audit
/// log with the reference that named it; a reference to an alert this daemon never had is
/// logged and listed as `unknown`), then the document's own content is judged by the policy.
/// An alert whose start (`<effective>`, or `<onset>` with `cap.start = "onset"`) is ahead is
/// published at once as `alert_at` (agents hold it until then) and again as `alert` when it
/// starts. Invalid XML is [`Error::Invalid`] on `body`, with its line and column.
pub async fn apply_cap(ctx: &Ctx, actor: &str, body: &str) -> Result<CapOutcome, Error> {
    use crate::domain::cap::CapAction;
    let doc = crate::domain::cap::parse(body).map_err(|e| Error::invalid("body", e.to_string()))?;
    let now = Utc::now();
    let decision = crate::domain::cap::decide(&doc, &ctx.cfg.cap, now);
    let mut out = CapOutcome {
        created: false,
        action: "ignored",
        reason: None,
        id: None,
        starts_at: None,
        expires_at: None,
        ended: Vec::new(),
        ends: Vec::new(),
        unknown: Vec::new(),
        published: None,
    };
    end_referenced(ctx, actor, &doc.identifier, &decision.ends, &mut out).await?;
    if !decision.ends.is_empty() {
        audit(
            ctx,
            actor,
            "cap.end",
            &doc.identifier,
            json!({"msgType": doc.msg_type, "ended": out.ends, "unknown": out.unknown}),
        )
        .await?;
    }
    match decision.action {
        CapAction::Ignore { reason } => {
            audit(
                ctx,
                actor,
                "cap.ignore",
                &doc.identifier,
                json!({"reason": reason, "status": doc.status, "msgType": doc.msg_type}),
            )
            .await?;
            out.action = match (doc.msg_type.as_str(), out.ended.is_empty()) {
                ("Cancel", _) => "cancelled",
                (_, true) => "ignored",
                (_, false) => "ended",
            };
            out.reason = Some(reason);
            Ok(out)
        }
        CapAction::Raise {
            id,
            text,
            severity,
            scope,
            starts_at,
            expires_at,
        } => {
            let alert = Alert {
                id,
                severity,
                text,
                issued_at: now,
                expires_at,
                starts_at: Some(starts_at),
            };
            raise_from_cap(ctx, actor, alert, &scope, out).await
        }
    }
}

/// Ends the alerts a CAP Update or Cancel references (each named in `out` with the reference
/// that named it); a reference to an alert this daemon never had is remembered as ended (a
/// feed read newest first hands the Cancel before its Alert) and listed as `unknown`.
async fn end_referenced(
    ctx: &Ctx,
    actor: &str,
    identifier: &str,
    ends: &[crate::domain::cap::Ended],
    out: &mut CapOutcome,
) -> Result<(), Error> {
    let now = Utc::now();
    for e in ends {
        match load(ctx, &e.id).await {
            Ok(row) => {
                // Already ended (the same message read again, or an earlier one ended it):
                // named in the answer, not cleared, published or audited a second time.
                let was_on = row.cleared_at.is_none();
                if was_on {
                    clear_row(ctx, actor, &row).await?;
                }
                out.ended.push(e.id.clone());
                out.ends.push(
                    json!({"id": e.id, "reference": e.reference, "by": e.by, "was_on": was_on}),
                );
            }
            Err(Error::NotFound(_)) => {
                // Not known (yet): a feed read newest first hands the Cancel before its Alert.
                // Remembered as ended, so the Alert, when it comes, is not raised.
                tracing::warn!(reference = %e.reference, by = %e.by, identifier = %identifier, "CAP message references an alert this daemon does not know; remembered as ended");
                let (id, who) = (e.id.clone(), actor.to_owned());
                ctx.store
                    .call(move |s| s.tombstone_alert(&id, now, &who))
                    .await?;
                out.unknown.push(e.reference.clone());
            }
            Err(other) => return Err(other),
        }
    }
    Ok(())
}

/// A CAP document's own alert: raised, or held until its start (`alert_at` now, `alert` then);
/// an alert applied before (or ended before it came) is answered as such, not raised again.
async fn raise_from_cap(
    ctx: &Ctx,
    actor: &str,
    mut alert: Alert,
    scope: &Scope,
    mut out: CapOutcome,
) -> Result<CapOutcome, Error> {
    let (id, now) = (alert.id.clone(), alert.issued_at);
    let starts_at = alert.starts_at.unwrap_or(now);
    let expires_at = alert.expires_at;
    match load(ctx, &id).await {
        Ok(row) => {
            let (action, reason) = if row.status == AlertStatus::Ended {
                (
                    "ended_before",
                    "an Update or Cancel read earlier already ended this alert",
                )
            } else {
                ("duplicate", "this alert was applied before")
            };
            out.action = action;
            out.reason = Some(reason.into());
            out.id = Some(id);
            return Ok(out);
        }
        Err(Error::NotFound(_)) => {}
        Err(other) => return Err(other),
    }
    let held = starts_at > now;
    alert.starts_at = held.then_some(starts_at);
    let (action, status) = if held {
        ("alert.schedule", AlertStatus::Scheduled)
    } else {
        ("alert.raise", AlertStatus::Live)
    };
    record_alert(ctx, actor, action, &alert, scope, status).await?;
    let published = publish_alert(ctx, &alert, scope).await?;
    if held {
        ctx.held_alerts.notify_one();
    }
    out.created = true;
    out.action = match (held, out.ended.is_empty()) {
        (true, _) => "scheduled",
        (false, true) => "raised",
        (false, false) => "updated",
    };
    out.id = Some(id);
    out.starts_at = Some(starts_at);
    out.expires_at = Some(expires_at);
    out.published = Some(published);
    Ok(out)
}

/// Starts held alerts when their time comes: publishes each again as a plain `alert` (for
/// agents that do not know `alert_at`) and marks it live. Wakes at the next start, when a new
/// alert is held (`held_alerts`), or within 5 s to retry a start that failed; stops with
/// `cancel`.
pub async fn start_held_alerts(ctx: Arc<Ctx>, cancel: tokio_util::sync::CancellationToken) {
    const RETRY: std::time::Duration = std::time::Duration::from_secs(5);
    loop {
        let due = ctx.store.call(|s| s.scheduled_alerts()).await;
        let now = Utc::now();
        let mut failed = due.is_err();
        let due = due.unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the held alerts; trying again");
            Vec::new()
        });
        for (id, _) in due.iter().filter(|(_, at)| *at <= now) {
            if let Err(e) = start_one(&ctx, id).await {
                failed = true;
                tracing::error!(alert = %id, error = %e, "cannot start a held alert; trying again");
            }
        }
        let next = due.iter().map(|(_, at)| *at).filter(|at| *at > now).min();
        let mut wait = next.map_or(std::time::Duration::from_secs(3600), |at| {
            (at - now).to_std().unwrap_or_default()
        });
        if failed {
            wait = wait.min(RETRY);
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ctx.held_alerts.notified() => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Starts one held alert: marked live first (only if still held and not cleared), then
/// published; a clear that lands meanwhile is published again after it, so it wins.
async fn start_one(ctx: &Ctx, id: &str) -> Result<(), Error> {
    let key = id.to_owned();
    if !ctx.store.call(move |s| s.start_alert(&key)).await? {
        return Ok(()); // cleared (or started) meanwhile
    }
    let row = load(ctx, id).await?;
    let alert = Alert {
        id: row.id.clone(),
        severity: row.severity.clone(),
        text: row.text.clone(),
        issued_at: Utc::now(),
        expires_at: DateTime::parse_from_rfc3339(&row.expires_at)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| Error::Internal(e.to_string()))?,
        starts_at: None,
    };
    if alert.expires_at > Utc::now() {
        audit(ctx, "cap-start", "alert.start", id, json!({})).await?;
        publish_alert(ctx, &alert, &row.scope).await?;
        // A clear between the start and the publish: say it again, after the alert.
        let after = load(ctx, id).await?;
        if after.cleared_at.is_some() {
            publish_clear(ctx, &after.id, &after.scope, alert.expires_at).await?;
        }
    }
    Ok(())
}
