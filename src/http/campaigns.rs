//! SMS campaigns (`/api/v1/campaigns…`), delivery reports (`/api/v1/sms/dlr/{gateway}`,
//! authenticated by the gateway's secret) and the opt-out list (`/api/v1/optouts`).
//! Creating and controlling campaigns needs the operator role; every change is audited.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::auth::{Approver, Auth, Operator, Principal, Viewer};
use super::error::ApiError;
use super::{AppState, audit};
use crate::domain::campaign::CampaignStatus;
use crate::sms::campaign::{CreateRequest, Reject, list_numbers};
use crate::sms::campaigns::{self, Act, Acted, Created, load};
use crate::store::sms::CampaignRow;

/// A campaign as the API shows it: its row, its messages per state and its progress.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct CampaignView {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// `importing`, `draft`, `pending`, `scheduled`, `recurring`, `missed`, `running`,
    /// `paused`, `done` or `cancelled`.
    #[schema(value_type = String, example = "running")]
    pub status: CampaignStatus,
    /// Texts, sender, gateways, send window, daily cap, template (as created).
    #[schema(value_type = Object)]
    pub spec: Value,
    /// Planned start (RFC 3339).
    pub start_at: Option<String>,
    /// The token that created it.
    pub created_by: String,
    /// When.
    pub created_at: String,
    /// The alert whose SMS part it is.
    pub alert: Option<String>,
    /// The token that approved it (two-person rule).
    pub approved_by: Option<String>,
    /// When.
    pub approved_at: Option<String>,
    /// Why a gateway paused it, until it runs again.
    pub paused_reason: Option<String>,
    /// When it (last) started running.
    pub started_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Messages per state (`queued`, `sent`, `delivered`, …).
    pub counts: BTreeMap<String, i64>,
    /// SMS parts of every message.
    pub segments: i64,
    /// Messages in all, still to send (queued or being submitted), and the rest.
    pub progress: Progress,
}

/// How far a campaign is.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Progress {
    /// Messages in all.
    pub total: i64,
    /// Queued or being submitted.
    pub pending: i64,
    /// The rest.
    pub done: i64,
}

/// `GET /api/v1/campaigns`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct CampaignList {
    /// Newest first.
    pub campaigns: Vec<CampaignView>,
}

/// What `POST /api/v1/campaigns/{id}/{action}` answers.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ActionAnswer {
    /// The campaign after `start`, `pause`, `resume` or `cancel`.
    Campaign(Box<CampaignView>),
    /// `requeue-unknown`: how many `unknown` messages were queued again.
    Requeued {
        /// The campaign.
        id: i64,
        /// Messages queued again.
        requeued: usize,
    },
    /// `reconcile`: what the providers were asked and said, and what is still unknown.
    Reconciled {
        /// The campaign.
        id: i64,
        /// Looked up, found, failed lookups.
        reconciled: crate::sms::reconcile::Outcome,
        /// Messages still `unknown`.
        unknown: i64,
    },
}

fn campaign_json(c: CampaignRow) -> CampaignView {
    let total: i64 = c.counts.values().sum();
    let count = |k: &str| c.counts.get(k).copied().unwrap_or(0);
    let pending = count("queued") + count("submitting");
    CampaignView {
        progress: Progress {
            total,
            pending,
            done: total - pending,
        },
        id: c.id,
        name: c.name,
        status: c.status,
        spec: c.spec,
        start_at: c.start_at,
        created_by: c.created_by,
        created_at: c.created_at,
        alert: c.alert,
        approved_by: c.approved_by,
        approved_at: c.approved_at,
        paused_reason: c.paused_reason,
        started_at: c.started_at,
        finished_at: c.finished_at,
        counts: c.counts,
        segments: c.segments,
    }
}

/// `POST /api/v1/campaigns`: imports the recipients (every row written before anything is
/// sent) and answers with the id, the cost estimate and every rejected row. Above
/// `approval.campaigns_above` recipients a campaign that would start waits as `pending` for a
/// second person (`POST /api/v1/campaigns/{id}/approve`).
#[utoipa::path(post, path = "/api/v1/campaigns", tag = "sms", security(("bearer" = [])), request_body = crate::sms::campaign::CreateRequest, responses((status = 201, description = "created: id, estimate, rejected rows", body = Created), (status = 202, description = "pending a second person's approval", body = Created), (status = 400, description = "bad field", body = super::error::ErrorBody), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn create(
    who: Operator,
    State(s): State<Arc<AppState>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    // The field a mistake is in is named (`daily_cap`, `recipients[2].number`), not the body.
    let mut de = serde_json::Deserializer::from_slice(&body);
    let req: CreateRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        ApiError::bad_field(&field, format!("not a campaign request: {}", e.inner()))
    })?;
    // Nothing may follow the request (as `serde_json::from_slice` checks).
    de.end()
        .map_err(|e| ApiError::bad_field("body", format!("not a campaign request: {e}")))?;
    let created = campaigns::create(&s, &who.0, req, None).await?;
    let code = if created.status == CampaignStatus::Pending {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CREATED
    };
    Ok((code, Json(created)))
}

/// `POST /api/v1/campaigns/{id}/approve`: the second person (approver role or above, not the
/// creator) lets a pending campaign go: it runs now, or at its scheduled time.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/approve", tag = "sms", security(("bearer" = [])), params(("id" = i64, Path, description = "campaign id")), responses((status = 200, description = "approved: running or scheduled", body = CampaignView), (status = 409, description = "not pending"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn approve(
    Auth(who): Approver,
    State(s): State<Arc<AppState>>,
    Path(id): Path<i64>,
) -> Result<Json<CampaignView>, ApiError> {
    campaigns::approve(&s, &who, id).await?;
    Ok(Json(campaign_json(load(&s, id).await?)))
}

/// `GET /api/v1/campaigns`.
#[utoipa::path(get, path = "/api/v1/campaigns", tag = "sms", security(("bearer" = [])), responses((status = 200, description = "campaigns with counts per state", body = CampaignList), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn list(
    _: Viewer,
    State(s): State<Arc<AppState>>,
) -> Result<Json<CampaignList>, ApiError> {
    let rows = s.store.call(move |store| store.campaigns()).await?;
    Ok(Json(CampaignList {
        campaigns: rows.into_iter().map(campaign_json).collect(),
    }))
}

/// `GET /api/v1/campaigns/{id}`: the campaign with its counts per state.
#[utoipa::path(get, path = "/api/v1/campaigns/{id}", tag = "sms", security(("bearer" = [])), params(("id" = i64, Path, description = "campaign id")), responses((status = 200, description = "the campaign with counts per state and progress", body = CampaignView), (status = 404, description = "no such campaign"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn show(
    _: Viewer,
    State(s): State<Arc<AppState>>,
    Path(id): Path<i64>,
) -> Result<Json<CampaignView>, ApiError> {
    Ok(Json(campaign_json(load(&s, id).await?)))
}

/// Body of `POST /api/v1/campaigns/{id}/start`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    /// Start a campaign whose scheduled start was missed.
    #[serde(default)]
    pub confirm_late: bool,
}

/// `POST /api/v1/campaigns/{id}/{start|pause|resume|cancel|reconcile|requeue-unknown}`.
/// `reconcile` asks the providers about the campaign's `unknown` messages (those found become
/// `sent`, `delivered` or `failed`; never resent); `requeue-unknown` sends them again.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/{action}", tag = "sms", security(("bearer" = [])), params(("id" = i64, Path, description = "campaign id"), ("action" = String, Path, description = "start, pause, resume, cancel, reconcile or requeue-unknown")), request_body(content = Option<StartBody>, description = "for start: confirm_late"), responses((status = 200, description = "the campaign after the change; for requeue-unknown and reconcile, what they did", body = ActionAnswer), (status = 409, description = "wrong state, or a missed start without confirm_late"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn action(
    who: Operator,
    State(s): State<Arc<AppState>>,
    Path((id, action)): Path<(i64, String)>,
    body: Bytes,
) -> Result<Json<ActionAnswer>, ApiError> {
    let opts: StartBody = if body.iter().all(u8::is_ascii_whitespace) {
        StartBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_field("body", e.to_string()))?
    };
    let c = load(&s, id).await?;
    if action == "reconcile" {
        audit(
            &s,
            &who.0.name,
            "campaign.reconcile",
            &format!("campaign:{id}"),
            json!({"unknown": c.counts.get("unknown")}),
        )
        .await?;
        let o = s.reconciler.pass(Some(id), std::time::Duration::ZERO).await;
        let left = load(&s, id)
            .await?
            .counts
            .get("unknown")
            .copied()
            .unwrap_or(0);
        return Ok(Json(ActionAnswer::Reconciled {
            id,
            reconciled: o,
            unknown: left,
        }));
    }
    let act = match Act::parse(&action) {
        Some(a) => a,
        None => {
            return Err(ApiError::not_found(format!(
                "no campaign action {action:?} (start, pause, resume, cancel, reconcile, requeue-unknown)"
            )));
        }
    };
    match campaigns::act(&s, &who.0, id, act, opts.confirm_late).await? {
        Acted::Requeued(n) => Ok(Json(ActionAnswer::Requeued { id, requeued: n })),
        Acted::Moved => Ok(Json(ActionAnswer::Campaign(Box::new(campaign_json(
            load(&s, id).await?,
        ))))),
    }
}

/// `GET /api/v1/campaigns/{id}/messages?status=&after=&limit=`: JSON, or CSV with
/// `Accept: text/csv`.
#[utoipa::path(get, path = "/api/v1/campaigns/{id}/messages", tag = "sms", security(("bearer" = [])), params(("id" = i64, Path, description = "campaign id"), ("status" = Option<String>, Query, description = "only this state"), ("after" = Option<i64>, Query, description = "ids after this"), ("limit" = Option<usize>, Query, description = "at most this many (default 10000)")), responses((status = 200, description = "messages (JSON, or CSV with Accept: text/csv)", content((Messages = "application/json"), (String = "text/csv"))), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn messages(
    Auth(who): Viewer,
    State(s): State<Arc<AppState>>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    load(&s, id).await?;
    let status = q.get("status").filter(|v| !v.is_empty()).cloned();
    let after = match q.get("after") {
        Some(a) => a
            .parse()
            .map_err(|_| ApiError::bad_field("after", "a message id"))?,
        None => 0,
    };
    let limit = match q.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1_000_000).contains(l))
            .ok_or_else(|| ApiError::bad_field("limit", "1 to 1000000"))?,
        None => 10_000,
    };
    let mut rows = s
        .store
        .call(move |store| store.messages(id, status.as_deref(), after, limit))
        .await?;
    if masked(&s, &who) {
        for r in &mut rows {
            r.recipient = crate::domain::phone::mask(&r.recipient);
        }
    }
    super::api::rows_or_csv(&headers, rows, &MESSAGE_COLUMNS, |messages| Messages {
        messages,
    })
}

/// `GET /api/v1/campaigns/{id}/progress`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PerMinute {
    /// Minutes with any activity, oldest first.
    pub minutes: Vec<crate::store::sms::Minute>,
}

/// `GET /api/v1/campaigns/{id}/progress`: sent, delivered and failed per minute (the console's
/// live chart).
#[utoipa::path(get, path = "/api/v1/campaigns/{id}/progress", tag = "sms", security(("bearer" = [])), params(("id" = i64, Path, description = "campaign id")), responses((status = 200, description = "per-minute counts", body = PerMinute), (status = 404, description = "no such campaign"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn progress(
    _: Viewer,
    State(s): State<Arc<AppState>>,
    Path(id): Path<i64>,
) -> Result<Json<PerMinute>, ApiError> {
    load(&s, id).await?;
    let minutes = s.store.call(move |store| store.progress(id)).await?;
    Ok(Json(PerMinute { minutes }))
}

/// A campaign's messages (`GET /api/v1/campaigns/{id}/messages`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Messages {
    /// In id order; numbers masked for roles below `[auth] show_numbers_from`.
    pub messages: Vec<crate::store::sms::MessageRow>,
}

/// A campaign's rejected rows (`GET /api/v1/campaigns/{id}/rejects`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Rejects {
    /// The list's columns (`number` for a pasted list).
    pub columns: Vec<String>,
    /// The rows that were not imported, in row order.
    pub rejects: Vec<crate::sms::campaign::Reject>,
}

const MESSAGE_COLUMNS: [&str; 14] = [
    "id",
    "campaign",
    "row",
    "recipient",
    "text",
    "parts",
    "state",
    "gateway",
    "attempts",
    "not_before",
    "carrier_id",
    "reason",
    "submitted_at",
    "updated_at",
];

/// The fields of a callback: its query, then a form body or a JSON object body (top-level
/// strings, numbers and booleans).
pub(crate) fn callback_fields(
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut fields: BTreeMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ctype.starts_with("application/json") {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_field("body", format!("not JSON: {e}")))?;
        if let Value::Object(o) = v {
            for (k, x) in o {
                let v = match x {
                    Value::String(s) => s,
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => continue,
                };
                fields.insert(k, v);
            }
        }
    } else if ctype.starts_with("application/x-www-form-urlencoded") {
        fields.extend(url::form_urlencoded::parse(body).into_owned());
    }
    Ok(fields)
}

/// `GET|POST /api/v1/sms/dlr/{gateway}?secret=…&id=…`: a delivery report. Fields come from
/// the query, a form body or a JSON object body. Gateways whose provider pushes JSON arrays
/// to one account URL (Tencent, Aliyun) are matched by the provider's id and acknowledged as
/// it expects ([`super::carrier::dlr_array`]).
#[utoipa::path(method(get, post), path = "/api/v1/sms/dlr/{gateway}", tag = "sms", params(("gateway" = String, Path, description = "gateway name"), ("secret" = String, Query, description = "the delivery-report secret of the gateway"), ("id" = Option<i64>, Query, description = "our message id (not for array-pushing providers)")), responses((status = 200, description = "stored; the new state of the message, or the provider's acknowledgement", content((super::carrier::CarrierAnswer = "application/json"), (String = "text/plain"))), (status = 400, description = "not a report"), (status = 403, description = "bad secret"), (status = 404, description = "no such message sent through that gateway"), (status = 503, description = "the store cannot take reports now: push again")))]
pub async fn dlr(
    State(s): State<Arc<AppState>>,
    Path(gateway): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(g) = s.cfg.sms.gateway(&gateway) else {
        return Err(ApiError::not_found(format!("no gateway {gateway:?}")));
    };
    // Providers that push JSON arrays to one account URL, with their own ids.
    if super::carrier::pushes_arrays(g) {
        let g = super::carrier::authorised(&s, &gateway, &uri)?;
        return super::carrier::dlr_array(&s, g, &body).await;
    }
    let mut fields = callback_fields(&uri, &headers, &body)?;
    let expected = g.dlr_secret.as_deref().unwrap_or("");
    let given = fields.get("secret").map(String::as_str).unwrap_or("");
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
        return Err(ApiError::forbidden(format!(
            "bad or missing delivery-report secret for gateway {gateway:?}"
        )));
    }
    let incoming =
        crate::sms::dlr::parse(&g.kind, &fields).map_err(|e| ApiError::bad_field("report", e))?;
    fields.remove("secret");
    let raw: String = serde_json::to_string(&fields)
        .unwrap_or_default()
        .chars()
        .take(2000)
        .collect();
    let id = incoming.id;
    let (reply, answer) = tokio::sync::oneshot::channel();
    s.reports
        .send((
            crate::store::sms::ReportIn {
                id,
                carrier_id: None,
                gateway: gateway.clone(),
                report: incoming.report,
                code: incoming.code.clone(),
                raw,
            },
            reply,
        ))
        .await
        .map_err(|_| ApiError::internal("the report intake is not running"))?;
    let result = answer
        .await
        .map_err(|_| ApiError::internal("the report intake stopped"))?
        // As documented: 503, so the gateway pushes the report again (Kannel retries on any
        // status but 2xx); a stored report is not applied twice.
        .map_err(|e| {
            tracing::error!(gateway = %gateway, error = %e, "cannot store a delivery report");
            ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "unavailable",
                message: format!("cannot store the report now ({e}); push it again"),
                field: None,
            }
        })?;
    let Some((from, to)) = result else {
        return Err(ApiError::not_found(format!(
            "no message {} was sent through gateway {gateway:?}",
            incoming.id
        )));
    };
    tracing::debug!(message = id, gateway = %gateway, code = %incoming.code, from = from.as_str(), to = to.as_str(), "delivery report");
    Ok(Json(super::carrier::CarrierAnswer::Reported(
        super::carrier::Reported {
            id,
            state: to.as_str().to_owned(),
        },
    ))
    .into_response())
}

/// `GET /api/v1/optouts`.
#[utoipa::path(get, path = "/api/v1/optouts", tag = "sms", security(("bearer" = [])), responses((status = 200, description = "the opt-out list", body = OptOutList), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn optouts(
    Auth(who): Viewer,
    State(s): State<Arc<AppState>>,
) -> Result<Json<OptOutList>, ApiError> {
    let mut rows = s.store.call(move |store| store.optouts()).await?;
    if masked(&s, &who) {
        for r in &mut rows {
            r.number = crate::domain::phone::mask(&r.number);
        }
    }
    Ok(Json(OptOutList { optouts: rows }))
}

/// Whether `who` sees phone numbers masked (a role below `auth.show_numbers_from`).
fn masked(s: &AppState, who: &Principal) -> bool {
    who.role < s.cfg.show_numbers_from
}

/// `GET /api/v1/optouts`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct OptOutList {
    /// Every number on the list (masked below `auth.show_numbers_from`).
    pub optouts: Vec<crate::store::sms::OptOut>,
}

/// What `POST /api/v1/optouts` did.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct OptOutsAdded {
    /// Numbers newly on the list.
    pub added: usize,
    /// Numbers that were on it already.
    pub already: usize,
    /// Rows that are not numbers, with the reason.
    pub rejects: Vec<Reject>,
}

/// What `DELETE /api/v1/optouts/{number}` removed.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Removed {
    /// The number, in E.164.
    pub removed: String,
}

/// `POST /api/v1/optouts` body: numbers, or a CSV with a number column.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptOutRequest {
    /// Numbers as written.
    #[serde(default)]
    pub numbers: Vec<String>,
    /// CSV text with a number column (the names `recipients_csv` takes).
    #[serde(default)]
    pub csv: Option<String>,
    /// A list uploaded with `POST /api/v1/uploads` (CSV, TXT, XLSX): the upload's id.
    #[serde(default)]
    pub upload: Option<String>,
    /// The sheet of an uploaded workbook (default: the first).
    #[serde(default)]
    pub sheet: Option<String>,
    /// Why (kept with each number).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /api/v1/optouts`: adds numbers (normalised to E.164); returns what was added and
/// every rejected row. Honoured by running campaigns at their next send.
#[utoipa::path(post, path = "/api/v1/optouts", tag = "sms", security(("bearer" = [])), request_body = OptOutRequest, responses((status = 200, description = "added, already on the list, rejected rows", body = OptOutsAdded), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn add_optouts(
    who: Operator,
    State(s): State<Arc<AppState>>,
    Json(req): Json<OptOutRequest>,
) -> Result<Json<OptOutsAdded>, ApiError> {
    let region = s.cfg.sms.default_region;
    let mut numbers = Vec::new();
    let mut rejects = Vec::new();
    for (i, raw) in req.numbers.iter().enumerate() {
        match crate::domain::phone::normalize(raw, region) {
            Ok(n) => numbers.push(n),
            Err(e) => rejects.push(Reject {
                row: i + 1,
                value: raw.clone(),
                reason: e.to_string(),
                cells: Vec::new(),
            }),
        }
    }
    let file = match &req.upload {
        Some(id) => Some(std::io::BufReader::new(
            crate::lists::uploads::open(&s.cfg.data_dir, id)
                .map_err(|m| ApiError::bad_field("upload", m))?,
        )),
        None => None,
    };
    let (csv, sheet) = (req.csv.clone(), req.sheet.clone());
    let read = tokio::task::spawn_blocking(move || {
        let mut numbers = numbers;
        let mut rejects = rejects;
        if let Some(csv) = csv {
            let src = std::io::Cursor::new(csv.into_bytes());
            list_numbers(
                src,
                sheet.clone(),
                "csv",
                region,
                &mut numbers,
                &mut rejects,
            )?;
        }
        if let Some(f) = file {
            list_numbers(f, sheet, "upload", region, &mut numbers, &mut rejects)?;
        }
        Ok::<_, crate::sms::campaign::Invalid>((numbers, rejects))
    })
    .await;
    if let Some(id) = &req.upload {
        crate::lists::uploads::remove(&s.cfg.data_dir, id);
    }
    let (numbers, rejects) = read
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::bad_field(e.field, e.message))?;
    let reason = req.reason.unwrap_or_else(|| "operator".into());
    audit(
        &s,
        &who.0.name,
        "optout.add",
        "optouts",
        json!({"numbers": numbers.len(), "reason": reason}),
    )
    .await?;
    let (ns, by) = (numbers.clone(), who.0.name.clone());
    let added = s
        .store
        .call(move |store| store.add_optouts(&ns, &reason, &by, Utc::now()))
        .await?;
    Ok(Json(OptOutsAdded {
        added,
        already: numbers.len() - added,
        rejects,
    }))
}

/// `DELETE /api/v1/optouts/{number}`.
#[utoipa::path(delete, path = "/api/v1/optouts/{number}", tag = "sms", security(("bearer" = [])), params(("number" = String, Path, description = "phone number")), responses((status = 200, description = "removed", body = Removed), (status = 404, description = "not on the list"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn remove_optout(
    who: Operator,
    State(s): State<Arc<AppState>>,
    Path(number): Path<String>,
) -> Result<Json<Removed>, ApiError> {
    let n = crate::domain::phone::normalize(&number, s.cfg.sms.default_region)
        .map_err(|e| ApiError::bad_field("number", e.to_string()))?;
    audit(&s, &who.0.name, "optout.remove", &n, json!({})).await?;
    let n2 = n.clone();
    if !s.store.call(move |store| store.remove_optout(&n2)).await? {
        return Err(ApiError::not_found(format!(
            "{n} is not on the opt-out list"
        )));
    }
    Ok(Json(Removed { removed: n }))
}

/// A cell as a spreadsheet may safely open it: a leading `=` `+` `-` `@` (or tab, CR) would make
/// Excel or WPS read it as a formula (OWASP "CSV injection"), so such a cell gets a leading `'`,
/// which Marquee's list reader takes off again when the file comes back. A signed number
/// (`+8613800138000`, `-3`) is no formula and stays as it is.
pub fn formula_safe(cell: &str) -> std::borrow::Cow<'_, str> {
    let number = cell.len() > 1
        && cell.starts_with(['+', '-'])
        && cell[1..]
            .chars()
            .all(|c| c.is_ascii_digit() || c == ' ' || c == '.');
    if !number && cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        std::borrow::Cow::Owned(format!("'{cell}"))
    } else {
        std::borrow::Cow::Borrowed(cell)
    }
}

/// `GET /api/v1/campaigns/{id}/rejects`: the rows the import rejected, with the reason and the
/// row as read. With `Accept: text/csv`, a CSV in the list's own columns plus `reason` and `row`
/// (UTF-8 with a byte-order mark, so Excel and WPS show Chinese text; formula-safe), for the
/// office to fix and upload again.
#[utoipa::path(get, path = "/api/v1/campaigns/{id}/rejects", tag = "sms", security(("bearer" = [])), params(("id" = i64, Path, description = "campaign id")), responses((status = 200, description = "columns and rejected rows (JSON, or CSV with Accept: text/csv)", content((Rejects = "application/json"), (String = "text/csv"))), (status = 404, description = "no such campaign"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn rejects(
    Auth(who): Viewer,
    State(s): State<Arc<AppState>>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    use axum::response::IntoResponse;
    let c = load(&s, id).await?;
    let mut rows = s
        .store
        .call(move |store| store.campaign_rejects(id))
        .await?;
    if masked(&s, &who) {
        for r in &mut rows {
            for cell in r.cells.iter_mut().filter(|c| **c == r.value) {
                *cell = crate::domain::phone::mask(cell);
            }
            r.value = crate::domain::phone::mask(&r.value);
        }
    }
    let mut columns: Vec<String> = c.spec["columns"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default();
    if columns.is_empty() {
        columns.push("number".into());
    }
    let wants_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    if !wants_csv {
        return Ok(Json(Rejects {
            columns,
            rejects: rows,
        })
        .into_response());
    }
    let csv_err = |e: csv::Error| ApiError::internal(e.to_string());
    let mut w = csv::WriterBuilder::new()
        .flexible(true)
        .from_writer(b"\xef\xbb\xbf".to_vec());
    let mut head: Vec<String> = columns
        .iter()
        .map(|c| formula_safe(c).into_owned())
        .collect();
    head.extend(["reason".to_owned(), "row".to_owned()]);
    w.write_record(&head).map_err(csv_err)?;
    for r in &rows {
        let cells: Vec<&str> = if r.cells.is_empty() {
            vec![r.value.as_str()]
        } else {
            r.cells.iter().map(String::as_str).collect()
        };
        let mut rec: Vec<String> = (0..columns.len())
            .map(|i| formula_safe(cells.get(i).copied().unwrap_or("")).into_owned())
            .collect();
        rec.push(formula_safe(&r.reason).into_owned());
        rec.push(r.row.to_string());
        w.write_record(&rec).map_err(csv_err)?;
    }
    let body = w
        .into_inner()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"campaign-{id}-rejects.csv\""),
            ),
        ],
        body,
    )
        .into_response())
}
