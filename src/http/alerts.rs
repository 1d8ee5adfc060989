//! Emergency alerts over HTTP: raise (`POST /api/v1/alerts`), CAP (`POST /api/v1/alerts/cap`),
//! approve, clear (`DELETE /api/v1/alerts/{id}`), list, and show with per-display
//! acknowledgements (`GET /api/v1/alerts/{id}`). Each handler parses, calls the use case in
//! [`crate::alerts`] and answers its outcome as JSON. Raising and clearing need the operator
//! role, approving the approver role; all are recorded with the token's name.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::AppState;
use super::auth::{Approver, Auth, Operator, Viewer};
use super::error::ApiError;
use crate::alerts::{self, RaiseRequest, Raised};
use crate::store::alerts::{AlertAck, AlertRow};

/// `POST /api/v1/alerts`: published at once on the scope's retained alert topics.
#[utoipa::path(post, path = "/api/v1/alerts", tag = "alerts", security(("bearer" = [])), request_body = RaiseRequest, responses((status = 201, description = "published on the scope's alert topics (and its SMS started)", body = Raised), (status = 202, description = "pending: needs a second person's approval", body = Raised), (status = 400, description = "bad field", body = super::error::ErrorBody), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn raise(
    Auth(who): Operator,
    State(s): State<Arc<AppState>>,
    body: Result<Json<RaiseRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Raised>), ApiError> {
    let Json(r) = body.map_err(|e| ApiError::bad_field("body", e.body_text()))?;
    let raised = alerts::raise(&s, &who, r).await?;
    let code = match raised {
        Raised::Pending { .. } => StatusCode::ACCEPTED,
        Raised::Published { .. } => StatusCode::CREATED,
    };
    Ok((code, Json(raised)))
}

/// `POST /api/v1/alerts/cap`: a CAP 1.2 XML alert (operator role). Alert and Update raise (an
/// Update ends what it references), Cancel ends, anything the rules keep off screens is answered
/// with the reason. Invalid XML gets a 400 with its line and column.
#[utoipa::path(post, path = "/api/v1/alerts/cap", tag = "alerts", security(("bearer" = [])), request_body(content = String, content_type = "application/xml", description = "a CAP 1.2 alert"), responses((status = 201, description = "raised or scheduled", body = alerts::CapOutcome), (status = 200, description = "ignored or ended, with the reason", body = alerts::CapOutcome), (status = 400, description = "invalid XML, with line and column", body = super::error::ErrorBody), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn cap(
    Auth(who): Operator,
    State(s): State<Arc<AppState>>,
    body: String,
) -> Result<(StatusCode, Json<alerts::CapOutcome>), ApiError> {
    let out = alerts::apply_cap(&s, &who.name, &body).await?;
    let code = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(out)))
}

/// `DELETE /api/v1/alerts/{id}`: a signed clear on each of its topics (where it is still the
/// current alert); idempotent.
#[utoipa::path(delete, path = "/api/v1/alerts/{id}", tag = "alerts", security(("bearer" = [])), params(("id" = String, Path, description = "alert id")), responses((status = 200, description = "cleared (its SMS campaign cancelled)", body = AlertView), (status = 404, description = "no such alert"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn clear(
    Auth(who): Operator,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<AlertView>, ApiError> {
    alerts::clear(&s, &who.name, &id).await?;
    show(Viewer::from(who), State(s), Path(id)).await
}

/// `POST /api/v1/alerts/{id}/approve`: the second person (approver role or above, not the one
/// who raised it) puts a pending alert on the screens; its lifetime starts now.
#[utoipa::path(post, path = "/api/v1/alerts/{id}/approve", tag = "alerts", security(("bearer" = [])), params(("id" = String, Path, description = "alert id")), responses((status = 200, description = "approved and published", body = AlertView), (status = 409, description = "not pending"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn approve(
    Auth(who): Approver,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<AlertView>, ApiError> {
    alerts::approve(&s, &who, &id).await?;
    show(Viewer::from(who), State(s), Path(id)).await
}

/// `GET /api/v1/alerts`.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts", security(("bearer" = [])), responses((status = 200, description = "alerts, newest first", body = AlertList), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn list(_: Viewer, State(s): State<Arc<AppState>>) -> Result<Json<AlertList>, ApiError> {
    let alerts = s.store.call(|s| s.alerts()).await?;
    Ok(Json(AlertList { alerts }))
}

/// `GET /api/v1/alerts`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AlertList {
    /// Newest first.
    pub alerts: Vec<AlertRow>,
}

/// An alert with who showed it, who did not, and its SMS part.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AlertView {
    /// The alert.
    pub alert: AlertRow,
    /// The displays that put it on screen, with the latency.
    pub acks: Vec<AlertAck>,
    /// Known displays in its scope (registered or declared) that have not acknowledged it.
    pub not_acknowledged: Vec<String>,
    /// Its SMS campaign's delivery, when it has one.
    pub sms: Option<AlertSmsView>,
}

/// The delivery of an alert's SMS part.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AlertSmsView {
    /// The campaign.
    pub campaign: i64,
    /// Its status.
    #[schema(value_type = String, example = "running")]
    pub status: crate::domain::campaign::CampaignStatus,
    /// Messages per state.
    pub counts: std::collections::BTreeMap<String, i64>,
    /// Recipients in all.
    pub recipients: i64,
    /// Delivered.
    pub delivered: i64,
    /// Failed, rejected or expired.
    pub failed: i64,
    /// Queued, being submitted, or sent without a final report yet.
    pub pending: i64,
}

/// `GET /api/v1/alerts/{id}`: the alert, which displays showed it (with latency), and which
/// displays in its scope have not acknowledged it.
#[utoipa::path(get, path = "/api/v1/alerts/{id}", tag = "alerts", security(("bearer" = [])), params(("id" = String, Path, description = "alert id")), responses((status = 200, description = "the alert with per-display acks, who has not acknowledged, and its SMS delivery", body = AlertView), (status = 404, description = "no such alert"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn show(
    _: Viewer,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<AlertView>, ApiError> {
    let row = alerts::load(&s, &id).await?;
    let key = id.clone();
    let (acks, sms) = s
        .store
        .call(move |store| Ok((store.alert_acks(&key)?, store.campaign_for_alert(&key)?)))
        .await?;
    // Every display known to be in scope (registered or declared) that has not acknowledged,
    // including those that never reported at all.
    let known = s.registry.known(&s.cfg.schedule.displays);
    let not_acknowledged: Vec<String> = known
        .iter()
        .filter(|(id, channel)| {
            alerts::in_scope(&row.scope, id, channel) && !acks.iter().any(|a| &a.display == *id)
        })
        .map(|(id, _)| id.clone())
        .collect();
    // One report: screens (acks) and phones (the alert's SMS campaign with its delivery states).
    let sms = sms.map(|c| {
        let count = |k: &str| c.counts.get(k).copied().unwrap_or(0);
        AlertSmsView {
            campaign: c.id,
            status: c.status,
            recipients: c.counts.values().sum::<i64>(),
            delivered: count("delivered"),
            failed: count("failed") + count("rejected") + count("expired"),
            pending: count("queued") + count("submitting") + count("sent"),
            counts: c.counts,
        }
    });
    Ok(Json(AlertView {
        alert: row,
        acks,
        not_acknowledged,
        sms,
    }))
}
