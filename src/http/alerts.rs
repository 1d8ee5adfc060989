//! Emergency alerts: raise (`POST /api/v1/alerts`), clear (`DELETE /api/v1/alerts/{id}`), list,
//! and show with per-display acknowledgements (`GET /api/v1/alerts/{id}`). Raising and clearing
//! need the operator role; both are recorded with the token's name.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::AppState;
use super::auth::{Approver, Auth, Operator, Viewer};
use super::error::ApiError;
use crate::scheduler::PublishRequest;
use crate::store::alerts::{AlertRow, Scope};
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
    #[schema(value_type = Object)]
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

/// Starts the campaign of an alert that just went live (if it has one).
async fn start_alert_sms(s: &AppState, by: &str, alert: &str) -> Result<(), ApiError> {
    let store = s.store.clone();
    let key = alert.to_owned();
    let c = tokio::task::spawn_blocking(move || store.campaign_for_alert(&key))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if let Some(c) = c.filter(|c| c.status == "pending") {
        super::campaigns::approve_and_start(s, by, &c, "campaign.start").await?;
    }
    Ok(())
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

async fn publish(
    s: &AppState,
    topic: Topic,
    payload: Signed,
    expires_at: DateTime<Utc>,
    if_current_alert: Option<String>,
) -> Result<Option<u64>, ApiError> {
    publish_noting(s, topic, payload, expires_at, if_current_alert)
        .await
        .map(|(v, _)| v)
}

/// [`publish`], also telling whether the broker connection was up (when not, the payload is
/// stored and goes out when it is back).
async fn publish_noting(
    s: &AppState,
    topic: Topic,
    payload: Signed,
    expires_at: DateTime<Utc>,
    if_current_alert: Option<String>,
) -> Result<(Option<u64>, bool), ApiError> {
    let (reply, rx) = oneshot::channel();
    s.publisher
        .send(PublishRequest {
            topic,
            payload,
            expires_at,
            if_current_alert,
            reply,
        })
        .await
        .map_err(|_| ApiError::internal("the scheduler is not running"))?;
    rx.await
        .map_err(|_| ApiError::internal("the scheduler dropped the request"))?
        .map_err(|e| ApiError::internal(format!("{e:#}")))
}

fn validate(s: &AppState, r: &RaiseRequest) -> Result<chrono::Duration, ApiError> {
    if r.text.is_empty() || r.text.values().any(|t| t.trim().is_empty()) {
        return Err(ApiError::bad_field(
            "text",
            "give at least one non-empty text, e.g. {\"zh\": \"…\", \"en\": \"…\"}",
        ));
    }
    if !SEVERITIES.contains(&r.severity.as_str()) {
        return Err(ApiError::bad_field(
            "severity",
            format!("one of {}", SEVERITIES.join(", ")),
        ));
    }
    match &r.scope {
        Scope::All => {}
        Scope::Channels(cs) if !cs.is_empty() => {
            if let Some(c) = cs.iter().find(|c| !s.cfg.schedule.channels.contains(c)) {
                return Err(ApiError::bad_field(
                    "scope",
                    format!("unknown channel {c:?}"),
                ));
            }
        }
        Scope::Displays(ds) if !ds.is_empty() => {
            if let Some(d) = ds.iter().find(|d| !valid_name(d) || *d == "all") {
                return Err(ApiError::bad_field(
                    "scope",
                    format!("bad display id {d:?}"),
                ));
            }
        }
        _ => {
            return Err(ApiError::bad_field(
                "scope",
                "name at least one channel or display",
            ));
        }
    }
    humantime::parse_duration(&r.expires_in)
        .ok()
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .filter(|d| *d >= chrono::Duration::seconds(1) && *d <= chrono::Duration::days(7))
        .ok_or_else(|| ApiError::bad_field("expires_in", "a duration from 1s to 7days, e.g. 30m"))
}

/// Audits (as `action`) and records an alert with `status` (`live` or `pending`).
async fn record_alert(
    s: &AppState,
    by: &str,
    action: &str,
    alert: &Alert,
    scope: &Scope,
    status: &str,
) -> Result<(), ApiError> {
    super::audit(
        s,
        by,
        action,
        &alert.id,
        json!({"scope": scope, "severity": alert.severity, "text": alert.text, "expires_at": alert.expires_at}),
    )
    .await?;
    let store = s.store.clone();
    let (a, sc, who, st) = (
        alert.clone(),
        scope.clone(),
        by.to_owned(),
        status.to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        store.insert_alert(
            &a.id,
            &sc,
            &a.severity,
            &a.text,
            a.issued_at,
            a.expires_at,
            &who,
            &st,
            a.starts_at,
        )
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(e.to_string()))
}

/// Publishes an alert on its scope's topics; returns what was published.
async fn publish_alert(s: &AppState, alert: &Alert, scope: &Scope) -> Result<Vec<Value>, ApiError> {
    let mut published = Vec::new();
    let on = if alert.starts_at.is_some() {
        held_topics(scope)
    } else {
        topics(scope)
    };
    for topic in on {
        let (version, connected) = publish_noting(
            s,
            topic.clone(),
            if alert.starts_at.is_some() {
                Signed::AlertAt(alert.clone())
            } else {
                Signed::Alert(alert.clone())
            },
            alert.expires_at,
            None,
        )
        .await?;
        published.push(json!({
            "topic": topic.render(&s.cfg.mqtt.topic_prefix),
            "version": version,
            // Stored and signed either way; with the broker down it goes out on reconnect.
            "broker": if connected { "sent" } else { "queued" },
        }));
    }
    tracing::warn!(id = %alert.id, severity = %alert.severity, "alert published");
    Ok(published)
}

/// Records, audits and publishes an alert at once.
async fn raise_alert(
    s: &AppState,
    by: &str,
    alert: Alert,
    scope: &Scope,
) -> Result<Vec<Value>, ApiError> {
    record_alert(s, by, "alert.raise", &alert, scope, "live").await?;
    publish_alert(s, &alert, scope).await
}

/// How many known displays `scope` reaches.
async fn reach(s: &AppState, scope: &Scope) -> Result<usize, ApiError> {
    // From the registry and the configuration only: never from what clients report on the bus.
    let known = s.registry.known(&s.cfg.schedule.displays);
    Ok(known
        .iter()
        .filter(|(id, channel)| in_scope(scope, id, channel))
        .count())
}

/// Whether display `id` on `channel` is in `scope`.
fn in_scope(scope: &Scope, id: &str, channel: &str) -> bool {
    match scope {
        Scope::All => true,
        Scope::Channels(cs) => cs.iter().any(|c| c == channel),
        Scope::Displays(ds) => ds.iter().any(|d| d == id),
    }
}

/// Audits and publishes the end of alert `id` (where it is still current); idempotent.
async fn clear_alert(s: &AppState, by: &str, row: &AlertRow) -> Result<(), ApiError> {
    super::audit(s, by, "alert.clear", &row.id, json!({})).await?;
    let expires = DateTime::parse_from_rfc3339(&row.expires_at)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now())
        .max(Utc::now() + chrono::Duration::minutes(1));
    for topic in topics(&row.scope)
        .into_iter()
        .chain(held_topics(&row.scope))
    {
        publish(
            s,
            topic,
            Signed::AlertClear(AlertClear { id: row.id.clone() }),
            expires,
            Some(row.id.clone()),
        )
        .await?;
    }
    let store = s.store.clone();
    let (key, who) = (row.id.clone(), by.to_owned());
    tokio::task::spawn_blocking(move || store.clear_alert(&key, Utc::now(), &who))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    tracing::warn!(id = %row.id, by = %by, "alert cleared");
    // Its SMS stops too: what has not been sent is cancelled.
    let store = s.store.clone();
    let key = row.id.clone();
    let c = tokio::task::spawn_blocking(move || store.campaign_for_alert(&key))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if let Some(c) = c.filter(|c| matches!(c.status.as_str(), "pending" | "running" | "paused")) {
        super::audit(
            s,
            by,
            "campaign.cancel",
            &format!("campaign:{}", c.id),
            json!({"alert": row.id, "from": c.status}),
        )
        .await?;
        let (store, id) = (s.store.clone(), c.id);
        tokio::task::spawn_blocking(move || {
            store.set_campaign_status(
                id,
                &["pending", "running", "paused"],
                "cancelled",
                Utc::now(),
            )
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    }
    Ok(())
}

/// `POST /api/v1/alerts`: published at once on the scope's retained alert topics.
#[utoipa::path(post, path = "/api/v1/alerts", tag = "alerts", security(("bearer" = [])), request_body = RaiseRequest, responses((status = 201, description = "published on the scope's alert topics (and its SMS started)"), (status = 202, description = "pending: needs a second person's approval"), (status = 400, description = "bad field"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn raise(
    Auth(who): Operator,
    State(s): State<Arc<AppState>>,
    body: Result<Json<RaiseRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(r) = body.map_err(|e| ApiError::bad_field("body", e.body_text()))?;
    let lasts = validate(&s, &r)?;
    let now = Utc::now();
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).map_err(|e| ApiError::internal(e.to_string()))?;
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
    let sms = match &r.sms {
        Some(sms) => match super::campaigns::create_campaign(
            &s,
            &who,
            sms_request(&alert, sms),
            Some((&alert.id, true)),
        )
        .await
        {
            Ok(c) => json!(c),
            Err(e) if e.code == "disk_full" => json!({"refused": e.message}),
            Err(e) => return Err(e),
        },
        None => Value::Null,
    };
    // Two-person rule: above the configured reach, a second person approves.
    if let Some(limit) = s.cfg.approve_alerts_above {
        let reach = reach(&s, &r.scope).await?;
        // No known display in scope means the reach is unknown (screens that are not registered
        // or declared still show alerts, but nothing counts them): the rule fails closed.
        if reach > limit || reach == 0 {
            if who.emergency {
                record_alert(
                    &s,
                    &who.name,
                    "alert.raise.emergency_skip",
                    &alert,
                    &r.scope,
                    "live",
                )
                .await?;
                let published = publish_alert(&s, &alert, &r.scope).await?;
                start_alert_sms(&s, &who.name, &alert.id).await?;
                let mut v = json!({"id": alert.id, "expires_at": alert.expires_at, "published": published, "approval": "skipped (emergency token)", "sms": sms});
                note_queued(&mut v);
                return Ok((StatusCode::CREATED, Json(v)));
            }
            record_alert(&s, &who.name, "alert.request", &alert, &r.scope, "pending").await?;
            return Ok((
                StatusCode::ACCEPTED,
                Json(
                    json!({"id": alert.id, "status": "pending", "reach": reach, "sms": sms,
                    "message": if reach == 0 {
                        format!("no registered or declared display is in scope, so its reach is unknown: another person with the approver role must approve it: POST /api/v1/alerts/{}/approve", alert.id)
                    } else {
                        format!("reaches {reach} displays (more than {limit}): another person with the approver role must approve it: POST /api/v1/alerts/{}/approve", alert.id)
                    }}),
                ),
            ));
        }
    }
    let published = raise_alert(&s, &who.name, alert.clone(), &r.scope).await?;
    start_alert_sms(&s, &who.name, &alert.id).await?;
    let mut v =
        json!({"id": alert.id, "expires_at": alert.expires_at, "published": published, "sms": sms});
    note_queued(&mut v);
    Ok((StatusCode::CREATED, Json(v)))
}

/// Says so when a raise did not reach the broker (it was down): `status` `queued`.
fn note_queued(v: &mut Value) {
    let queued = v["published"]
        .as_array()
        .is_some_and(|p| p.iter().any(|t| t["broker"] == "queued"));
    v["status"] = json!(if queued { "queued" } else { "published" });
    if queued {
        v["message"] = json!(
            "the broker is not connected: the alert is stored and signed, and goes out when the connection is back"
        );
    }
}

/// `POST /api/v1/alerts/cap`: a CAP 1.2 XML alert (operator role). Alert and Update raise (an
/// Update ends what it references), Cancel ends, anything the rules keep off screens is answered
/// with the reason. Invalid XML gets a 400 with its line and column.
#[utoipa::path(post, path = "/api/v1/alerts/cap", tag = "alerts", security(("bearer" = [])), request_body(content = String, content_type = "application/xml", description = "a CAP 1.2 alert"), responses((status = 201, description = "raised"), (status = 200, description = "ignored or ended, with the reason"), (status = 400, description = "invalid XML, with line and column"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn cap(
    Auth(who): Operator,
    State(s): State<Arc<AppState>>,
    body: String,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    apply_cap(&s, &who.name, &body)
        .await
        .map(|(status, v)| (status, Json(v)))
}

/// Applies one CAP 1.2 (or 1.1) document (from the API or a polled feed) as `actor`: first the
/// alerts an Update or Cancel references are ended (each named in the answer and the audit
/// log with the reference that named it; a reference to an alert this daemon never had is
/// logged and listed as `unknown`), then the document's own content is judged by the policy.
/// An alert whose start (`<effective>`, or `<onset>` with `cap.start = "onset"`) is ahead is
/// published at once as `alert_at` (agents hold it until then) and again as `alert` when it
/// starts.
pub async fn apply_cap(
    s: &AppState,
    actor: &str,
    body: &str,
) -> Result<(StatusCode, Value), ApiError> {
    use crate::domain::cap::CapAction;
    let doc =
        crate::domain::cap::parse(body).map_err(|e| ApiError::bad_field("body", e.to_string()))?;
    let now = Utc::now();
    let decision = crate::domain::cap::decide(&doc, &s.cfg.cap, now);
    let mut ended = Vec::new();
    let mut details = Vec::new();
    let mut unknown = Vec::new();
    for e in &decision.ends {
        match load(s, &e.id).await {
            Ok(row) => {
                // Already ended (the same message read again, or an earlier one ended it):
                // named in the answer, not cleared, published or audited a second time.
                let was_on = row.cleared_at.is_none();
                if was_on {
                    clear_alert(s, actor, &row).await?;
                }
                ended.push(json!(e.id));
                details.push(
                    json!({"id": e.id, "reference": e.reference, "by": e.by, "was_on": was_on}),
                );
            }
            Err(_) => {
                // Not known (yet): a feed read newest first hands the Cancel before its Alert.
                // Remembered as ended, so the Alert, when it comes, is not raised.
                tracing::warn!(reference = %e.reference, by = %e.by, identifier = %doc.identifier, "CAP message references an alert this daemon does not know; remembered as ended");
                let (store, id, who) = (s.store.clone(), e.id.clone(), actor.to_owned());
                tokio::task::spawn_blocking(move || store.tombstone_alert(&id, now, &who))
                    .await
                    .map_err(|e| ApiError::internal(e.to_string()))?
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                unknown.push(json!(e.reference));
            }
        }
    }
    if !decision.ends.is_empty() {
        super::audit(
            s,
            actor,
            "cap.end",
            &doc.identifier,
            json!({"msgType": doc.msg_type, "ended": details, "unknown": unknown}),
        )
        .await?;
    }
    match decision.action {
        CapAction::Ignore { reason } => {
            super::audit(
                s,
                actor,
                "cap.ignore",
                &doc.identifier,
                json!({"reason": reason, "status": doc.status, "msgType": doc.msg_type}),
            )
            .await?;
            let action = match (doc.msg_type.as_str(), ended.is_empty()) {
                ("Cancel", _) => "cancelled",
                (_, true) => "ignored",
                (_, false) => "ended",
            };
            Ok((
                StatusCode::OK,
                json!({"action": action, "reason": reason, "ended": ended, "ends": details, "unknown": unknown}),
            ))
        }
        CapAction::Raise {
            id,
            text,
            severity,
            scope,
            starts_at,
            expires_at,
        } => {
            if let Ok(row) = load(s, &id).await {
                let (action, reason) = if row.status == "ended" {
                    (
                        "ended_before",
                        "an Update or Cancel read earlier already ended this alert",
                    )
                } else {
                    ("duplicate", "this alert was applied before")
                };
                return Ok((
                    StatusCode::OK,
                    json!({"action": action, "reason": reason, "id": id, "ended": ended, "ends": details, "unknown": unknown}),
                ));
            }
            let held = starts_at > now;
            let alert = Alert {
                id: id.clone(),
                severity,
                text,
                issued_at: now,
                expires_at,
                starts_at: held.then_some(starts_at),
            };
            let published = if held {
                record_alert(s, actor, "alert.schedule", &alert, &scope, "scheduled").await?;
                let published = publish_alert(s, &alert, &scope).await?;
                s.held_alerts.notify_one();
                published
            } else {
                raise_alert(s, actor, alert, &scope).await?
            };
            let action = match (held, ended.is_empty()) {
                (true, _) => "scheduled",
                (false, true) => "raised",
                (false, false) => "updated",
            };
            Ok((
                StatusCode::CREATED,
                json!({"action": action, "id": id, "starts_at": starts_at, "expires_at": expires_at,
                       "ended": ended, "ends": details, "unknown": unknown, "published": published}),
            ))
        }
    }
}

/// Starts held alerts when their time comes: publishes each again as a plain `alert` (for
/// agents that do not know `alert_at`) and marks it live. Wakes at the next start, when a new
/// alert is held (`held_alerts`), or within 5 s to retry a start that failed; stops with
/// `cancel`.
pub async fn start_held_alerts(s: Arc<AppState>, cancel: tokio_util::sync::CancellationToken) {
    const RETRY: std::time::Duration = std::time::Duration::from_secs(5);
    loop {
        let store = s.store.clone();
        let due = tokio::task::spawn_blocking(move || store.scheduled_alerts())
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let now = Utc::now();
        let mut failed = due.is_err();
        let due = due.unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the held alerts; trying again");
            Vec::new()
        });
        for (id, _) in due.iter().filter(|(_, at)| *at <= now) {
            if let Err(e) = start_one(&s, id).await {
                failed = true;
                tracing::error!(alert = %id, error = %e.message, "cannot start a held alert; trying again");
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
            _ = s.held_alerts.notified() => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Starts one held alert: marked live first (only if still held and not cleared), then
/// published; a clear that lands meanwhile is published again after it, so it wins.
async fn start_one(s: &AppState, id: &str) -> Result<(), ApiError> {
    let store = s.store.clone();
    let key = id.to_owned();
    let started = tokio::task::spawn_blocking(move || store.start_alert(&key))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if !started {
        return Ok(()); // cleared (or started) meanwhile
    }
    let row = load(s, id).await?;
    let alert = Alert {
        id: row.id.clone(),
        severity: row.severity.clone(),
        text: row.text.clone(),
        issued_at: Utc::now(),
        expires_at: DateTime::parse_from_rfc3339(&row.expires_at)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| ApiError::internal(e.to_string()))?,
        starts_at: None,
    };
    if alert.expires_at > Utc::now() {
        super::audit(s, "cap-start", "alert.start", id, json!({})).await?;
        publish_alert(s, &alert, &row.scope).await?;
        // A clear between the start and the publish: say it again, after the alert.
        let after = load(s, id).await?;
        if after.cleared_at.is_some() {
            for topic in topics(&after.scope)
                .into_iter()
                .chain(held_topics(&after.scope))
            {
                publish(
                    s,
                    topic,
                    Signed::AlertClear(AlertClear {
                        id: after.id.clone(),
                    }),
                    alert.expires_at,
                    Some(after.id.clone()),
                )
                .await?;
            }
        }
    }
    Ok(())
}

async fn load(s: &AppState, id: &str) -> Result<AlertRow, ApiError> {
    let store = s.store.clone();
    let key = id.to_owned();
    tokio::task::spawn_blocking(move || store.alert(&key))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| ApiError::not_found(format!("no alert {id:?}")))
}

/// `DELETE /api/v1/alerts/{id}`: a signed clear on each of its topics (where it is still the
/// current alert); idempotent.
#[utoipa::path(delete, path = "/api/v1/alerts/{id}", tag = "alerts", security(("bearer" = [])), params(("id" = String, Path, description = "alert id")), responses((status = 200, description = "cleared (its SMS campaign cancelled)"), (status = 404, description = "no such alert"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn clear(
    Auth(who): Operator,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = load(&s, &id).await?;
    clear_alert(&s, &who.name, &row).await?;
    show(Viewer::from(who), State(s), Path(id)).await
}

/// `POST /api/v1/alerts/{id}/approve`: the second person (approver role or above, not the one
/// who raised it) puts a pending alert on the screens; its lifetime starts now.
#[utoipa::path(post, path = "/api/v1/alerts/{id}/approve", tag = "alerts", security(("bearer" = [])), params(("id" = String, Path, description = "alert id")), responses((status = 200, description = "approved and published"), (status = 409, description = "not pending"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn approve(
    Auth(who): Approver,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = load(&s, &id).await?;
    if row.status != "pending" || row.cleared_at.is_some() {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "not_pending",
            message: format!("alert {id} is not waiting for approval"),
            field: None,
        });
    }
    if row.raised_by == who.name {
        return Err(ApiError::forbidden(
            "two-person rule: the alert must be approved by another token than the one that raised it",
        ));
    }
    let parse = |t: &str| DateTime::parse_from_rfc3339(t).map(|t| t.with_timezone(&Utc));
    let lasts = match (parse(&row.issued_at), parse(&row.expires_at)) {
        (Ok(a), Ok(b)) => b - a,
        _ => chrono::Duration::hours(1),
    };
    let now = Utc::now();
    let alert = Alert {
        id: id.clone(),
        severity: row.severity.clone(),
        text: row.text.clone(),
        issued_at: now,
        expires_at: now + lasts,
        starts_at: None,
    };
    super::audit(
        &s,
        &who.name,
        "alert.approve",
        &id,
        json!({"raised_by": row.raised_by}),
    )
    .await?;
    let store = s.store.clone();
    let (key, by) = (id.clone(), who.name.clone());
    let changed =
        tokio::task::spawn_blocking(move || store.approve_alert(&key, &by, now, now + lasts))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(e.to_string()))?;
    if !changed {
        return Err(ApiError::not_found(format!(
            "alert {id} is no longer pending"
        )));
    }
    publish_alert(&s, &alert, &row.scope).await?;
    start_alert_sms(&s, &who.name, &id).await?;
    show(Viewer::from(who), State(s), Path(id)).await
}

/// `GET /api/v1/alerts`.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts", security(("bearer" = [])), responses((status = 200, description = "alerts, newest first"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn list(_: Viewer, State(s): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let store = s.store.clone();
    let rows = tokio::task::spawn_blocking(move || store.alerts())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(json!({ "alerts": rows })))
}

/// `GET /api/v1/alerts/{id}`: the alert, which displays showed it (with latency), and which
/// displays in its scope have not acknowledged it.
#[utoipa::path(get, path = "/api/v1/alerts/{id}", tag = "alerts", security(("bearer" = [])), params(("id" = String, Path, description = "alert id")), responses((status = 200, description = "the alert with per-display acks, who has not acknowledged, and its SMS delivery"), (status = 404, description = "no such alert"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn show(
    _: Viewer,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = load(&s, &id).await?;
    let store = s.store.clone();
    let key = id.clone();
    let (acks, sms) = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::store::StoreError>((
            store.alert_acks(&key)?,
            store.campaign_for_alert(&key)?,
        ))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(e.to_string()))?;
    // Every display known to be in scope (registered or declared) that has not acknowledged,
    // including those that never reported at all.
    let known = s.registry.known(&s.cfg.schedule.displays);
    let missing: Vec<&str> = known
        .iter()
        .filter(|(id, channel)| {
            in_scope(&row.scope, id, channel) && !acks.iter().any(|a| &a.display == *id)
        })
        .map(|(id, _)| id.as_str())
        .collect();
    // One report: screens (acks) and phones (the alert's SMS campaign with its delivery states).
    let sms = sms.map(|c| {
        let count = |k: &str| c.counts.get(k).copied().unwrap_or(0);
        json!({"campaign": c.id, "status": c.status, "counts": c.counts,
               "recipients": c.counts.values().sum::<i64>(),
               "delivered": count("delivered"),
               "failed": count("failed") + count("rejected") + count("expired"),
               "pending": count("queued") + count("submitting") + count("sent")})
    });
    Ok(Json(
        json!({"alert": row, "acks": acks, "not_acknowledged": missing, "sms": sms}),
    ))
}
