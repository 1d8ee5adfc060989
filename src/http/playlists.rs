//! Playlist editing over the API. Files stay the source of truth: `PUT` validates exactly like
//! a file on disk, then writes `{playlists_dir}/{id}.json` atomically (a git-managed folder sees an
//! ordinary file change) and the scheduler reloads; `DELETE` removes the file. Both are audited
//! before they happen and answer with the change impact (which screens change, from when).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::AppState;
use super::auth::{Auth, Editor};
use super::error::{ApiError, ErrorDetail};
use crate::domain::Playlist;
use crate::domain::playlist::source_text;
use crate::preview::{Impact, change_impact};
use crate::wire::valid_name;

fn file_of(s: &AppState, id: &str) -> Result<std::path::PathBuf, ApiError> {
    if id.starts_with('.') {
        // `.x.json` is a hidden file: the playlists directory reader skips it, so it would
        // never go live.
        return Err(ApiError::bad_field(
            "id",
            "must not start with '.' (a hidden file is never read as a playlist)",
        ));
    }
    if !valid_name(id) {
        return Err(ApiError::bad_field(
            "id",
            "1-64 letters, digits, '_', '-' or '.'",
        ));
    }
    Ok(s.cfg.schedule.playlists_dir.join(format!("{id}.json")))
}

/// 503 `standby` on a standby of a shared store: playlist files live in the leader's
/// `playlists_dir` and its scheduler reloads them, so they are written there (the answer names
/// the leader).
async fn on_the_leader(s: &AppState) -> Result<(), ApiError> {
    if crate::leader::role() != crate::leader::Role::Standby {
        return Ok(());
    }
    let leader = s.store.call(|st| st.leader()).await.ok().flatten();
    Err(ApiError::standby(match leader {
        Some(h) if h.remaining_s > 0.0 => format!(
            "this node is a standby: playlists are written on the leader, node {:?}; send this request there",
            h.node
        ),
        _ => "this node is a standby and no node leads now: playlists are written on the leader; try again once one leads".to_owned(),
    }))
}

/// 507 unless the store takes an ordinary write (see `Store::probe_write`).
async fn store_takes_writes(s: &AppState) -> Result<(), ApiError> {
    Ok(s.store
        .call(move |store| store.probe_write(Utc::now()))
        .await?)
}

/// A playlist that does not validate: the first error as the usual error, and all of them
/// located (`400` of the playlist routes).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlaylistErrors {
    /// The first error (`code` `invalid`, `field` `body`).
    pub error: ErrorDetail,
    /// Every error, located in the body.
    pub errors: Vec<Located>,
}

/// One error in a playlist body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Located {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// The member it names (JSON Pointer, RFC 6901, e.g. `/items/2/seconds`); absent for errors
    /// of the text itself (syntax, encoding, an unknown field). The console shows the error beside
    /// that member's field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
}

fn errors_response(errors: &[crate::domain::playlist::PlaylistError]) -> Response {
    let body = PlaylistErrors {
        error: ErrorDetail {
            code: "invalid".into(),
            message: errors.first().map(ToString::to_string).unwrap_or_default(),
            field: Some("body".into()),
        },
        errors: errors
            .iter()
            .map(|e| Located {
                line: e.line,
                column: e.column,
                message: e.message.clone(),
                pointer: e.pointer.clone(),
            })
            .collect(),
    };
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// Validates `body` as playlist `id`: its change impact, or the 400 response listing every
/// located error.
fn validate(s: &AppState, id: &str, body: &str) -> Result<Result<Vec<Impact>, Response>, ApiError> {
    file_of(s, id)?;
    let label = format!("{id}.json");
    match Playlist::parse(&label, Some(id), body, &s.cfg.schedule.validation_context()) {
        Ok(p) => {
            let current = s.catalog.borrow().playlists();
            // A save that would make a timeline too large for one MQTT packet is refused: the
            // last good version stays on the screens.
            let mut next: Vec<Playlist> = current.iter().filter(|c| c.id != id).cloned().collect();
            next.push(p.clone());
            if let Some(o) = crate::preview::oversize(&s.cfg, &next, Utc::now()).first() {
                return Err(ApiError::bad_field("items", o.to_string()));
            }
            Ok(Ok(change_impact(
                &s.cfg.schedule,
                &current,
                id,
                Some(p),
                Utc::now(),
            )))
        }
        Err(errors) => Ok(Err(errors_response(&errors))),
    }
}

/// `POST /api/v1/playlists/{id}/check`: validation and change impact; nothing is written (editor).
#[utoipa::path(post, path = "/api/v1/playlists/{id}/check", tag = "playlists", security(("bearer" = [])), params(("id" = String, Path, description = "playlist id")), request_body(content = String, content_type = "application/json", description = "a playlist file (docs/playlist.schema.json)"), responses((status = 200, description = "valid; the change impact", body = Checked), (status = 400, description = "errors with line and column", body = PlaylistErrors), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn check(
    _: Editor,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body = match source_text(&format!("{id}.json"), &body) {
        Ok(t) => t,
        Err(e) => return Ok(errors_response(&[e])),
    };
    Ok(match validate(&s, &id, body)? {
        Ok(impact) => Json(Checked {
            id,
            valid: true,
            impact,
        })
        .into_response(),
        Err(resp) => resp,
    })
}

/// A playlist that validates (`POST /api/v1/playlists/{id}/check`); nothing was written.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Checked {
    /// The playlist id.
    pub id: String,
    /// Always true (an invalid playlist is a 400).
    pub valid: bool,
    /// What saving it would change on the screens.
    pub impact: Vec<Impact>,
}

/// A change held for review (`202` of `PUT` and `DELETE /api/v1/playlists/{id}` with
/// `[approval] playlists`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Proposed {
    /// The playlist id.
    pub id: String,
    /// The proposal's id (`POST /api/v1/proposals/{id}/publish`).
    pub proposal: i64,
    /// `pending`.
    pub status: String,
    /// What publishing it would change on the screens.
    pub impact: Vec<Impact>,
    /// For people: who publishes it and how.
    pub message: String,
}

/// Review before publishing: stores what `author` saved (`body`) or deleted (`None`) as a
/// proposal, audited, and answers 202 with its id; the file does not change.
async fn propose(
    s: &AppState,
    author: &str,
    id: &str,
    path: &std::path::Path,
    body: Option<String>,
    sha: String,
    impact: Vec<Impact>,
) -> Result<Response, ApiError> {
    let before = tokio::fs::read_to_string(path).await.ok();
    let (pid, who, imp) = (id.to_owned(), author.to_owned(), json!(impact));
    let proposal = s
        .store
        .call(move |store| {
            store.propose(
                &pid,
                body.as_deref(),
                before.as_deref(),
                &imp,
                &who,
                Utc::now(),
            )
        })
        .await?;
    super::audit(
        s,
        author,
        "playlist.propose",
        id,
        json!({"proposal": proposal, "sha256": sha, "impact": impact}),
    )
    .await?;
    tracing::info!(id = %id, by = %author, proposal, "playlist change proposed for review");
    Ok((
        StatusCode::ACCEPTED,
        Json(Proposed {
            id: id.to_owned(),
            proposal,
            status: "pending".into(),
            impact,
            message: format!(
                "proposed for review: another person with the approver role publishes it (POST /api/v1/proposals/{proposal}/publish)"
            ),
        }),
    )
        .into_response())
}

/// `GET /api/v1/proposals?status=pending`: playlist changes proposed for review (newest first).
#[utoipa::path(get, path = "/api/v1/proposals", tag = "playlists", security(("bearer" = [])), params(("status" = Option<String>, Query, description = "pending, published, rejected or superseded")), responses((status = 200, description = "the proposals", body = ProposalList), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn proposals(
    _: super::auth::Viewer,
    State(s): State<Arc<AppState>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Json<ProposalList>, ApiError> {
    let status = q.get("status").cloned();
    let list = s
        .store
        .call(move |store| store.proposals(status.as_deref()))
        .await?;
    Ok(Json(ProposalList { proposals: list }))
}

/// Playlist changes proposed for review (`GET /api/v1/proposals`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProposalList {
    /// Newest first.
    pub proposals: Vec<crate::store::proposals::Proposal>,
}

/// A proposal decided (`POST /api/v1/proposals/{id}/{decision}`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Decided {
    /// The proposal's id.
    pub proposal: i64,
    /// `published` or `rejected`.
    pub status: String,
    /// Published: the playlist id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Published: what changes on the screens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impact: Option<Vec<Impact>>,
}

/// The body of a rejection.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
pub struct Decision {
    /// Why (required to reject).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /api/v1/proposals/{id}/{publish|reject}` (approver, not the author): publishing
/// validates the proposal again against the playlists as they are now and writes the file (or
/// deletes it); rejecting needs a reason. Both audited.
#[utoipa::path(post, path = "/api/v1/proposals/{id}/{decision}", tag = "playlists", security(("bearer" = [])), params(("id" = i64, Path, description = "proposal id"), ("decision" = String, Path, description = "publish or reject")), request_body(content = Option<Decision>, description = "reject: a reason"), responses((status = 200, description = "published (the change impact) or rejected", body = Decided), (status = 400, description = "no reason, or the proposal no longer validates"), (status = 401, description = "no or unknown token"), (status = 403, description = "the author, or a role below approver"), (status = 404, description = "no such proposal"), (status = 409, description = "no longer pending"), (status = 503, description = "standby: this node shares its store with a leader; write playlists there")))]
pub async fn decide(
    Auth(who): super::auth::Approver,
    State(s): State<Arc<AppState>>,
    Path((pid, decision)): Path<(i64, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Decided>, ApiError> {
    let d: Decision = if body.iter().all(u8::is_ascii_whitespace) {
        Decision::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_field("body", e.to_string()))?
    };
    let p = s
        .store
        .call(move |store| store.proposal(pid))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no proposal {pid}")))?;
    if p.status != "pending" {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "not_pending",
            message: format!("proposal {pid} is {}", p.status),
            field: None,
        });
    }
    if p.author == who.name {
        return Err(ApiError::forbidden(format!(
            "proposal {pid} is {}'s own: another person decides it",
            p.author
        )));
    }
    match decision.as_str() {
        "reject" => {
            let reason = d
                .reason
                .filter(|r| !r.trim().is_empty())
                .ok_or_else(|| ApiError::bad_field("reason", "say why it is rejected"))?;
            reject(&s, &who.name, p, reason).await
        }
        "publish" => publish(&s, &who.name, p).await,
        other => Err(ApiError::not_found(format!(
            "no decision {other:?} (publish or reject)"
        ))),
    }
    .map(Json)
}

/// Marks proposal `pid` decided by `by`; a conflict if it was decided meanwhile.
async fn mark_decided(
    s: &AppState,
    pid: i64,
    status: &'static str,
    by: &str,
    reason: Option<String>,
) -> Result<(), ApiError> {
    let by = by.to_owned();
    let ok = s
        .store
        .call(move |store| store.decide_proposal(pid, status, &by, reason.as_deref(), Utc::now()))
        .await?;
    if !ok {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "not_pending",
            message: format!("proposal {pid} was decided meanwhile"),
            field: None,
        });
    }
    Ok(())
}

/// Rejects a pending proposal with `reason` (audited); nothing else changes.
async fn reject(
    s: &AppState,
    who: &str,
    p: crate::store::proposals::Proposal,
    reason: String,
) -> Result<Decided, ApiError> {
    mark_decided(s, p.id, "rejected", who, Some(reason.clone())).await?;
    super::audit(
        s,
        who,
        "playlist.reject",
        &p.playlist,
        json!({"proposal": p.id, "author": p.author, "reason": reason}),
    )
    .await?;
    Ok(Decided {
        proposal: p.id,
        status: "rejected".into(),
        id: None,
        impact: None,
    })
}

/// Publishes a pending proposal: validated again against the playlists as they are now,
/// audited, then the file written (or removed) and the scheduler told.
async fn publish(
    s: &AppState,
    who: &str,
    p: crate::store::proposals::Proposal,
) -> Result<Decided, ApiError> {
    let path = file_of(s, &p.playlist)?;
    on_the_leader(s).await?;
    store_takes_writes(s).await?;
    let impact = match &p.body {
        Some(body) => validate(s, &p.playlist, body)?.map_err(|_| {
            ApiError::bad_field(
                "body",
                "the proposal no longer validates against the playlists as they are now: reject it and propose again",
            )
        })?,
        None => change_impact(
            &s.cfg.schedule,
            &s.catalog.borrow().playlists(),
            &p.playlist,
            None,
            Utc::now(),
        ),
    };
    mark_decided(s, p.id, "published", who, None).await?;
    super::audit(
        s,
        who,
        "playlist.publish",
        &p.playlist,
        json!({"proposal": p.id, "author": p.author, "impact": impact}),
    )
    .await?;
    match &p.body {
        Some(body) => {
            let (target, bytes) = (path.clone(), body.clone().into_bytes());
            tokio::task::spawn_blocking(move || crate::keys::write_atomic(&target, &bytes, 0o644))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map_err(|e| ApiError::internal(format!("{e:#}")))?;
        }
        None => {
            if let Err(e) = tokio::fs::remove_file(&path).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(ApiError::internal(format!(
                    "cannot remove {}: {e}",
                    path.display()
                )));
            }
        }
    }
    let _ = s.reload.try_send(crate::scheduler::Reload::Complete);
    tracing::info!(playlist = %p.playlist, proposal = p.id, by = %who, "proposal published");
    Ok(Decided {
        proposal: p.id,
        status: "published".into(),
        id: Some(p.playlist),
        impact: Some(impact),
    })
}

/// `PUT /api/v1/playlists/{id}` with the playlist JSON as the body (editor role). With
/// `[approval] playlists = true` the change is proposed for review instead (202). With
/// `If-None-Match: *` it only creates: 412 when the playlist exists.
#[utoipa::path(put, path = "/api/v1/playlists/{id}", tag = "playlists", security(("bearer" = [])), params(("id" = String, Path, description = "playlist id")), request_body(content = String, content_type = "application/json", description = "a playlist file (docs/playlist.schema.json)"), responses((status = 200, description = "written atomically; the change impact", body = Written), (status = 202, description = "proposed for review ([approval] playlists)", body = Proposed), (status = 400, description = "errors with line and column", body = PlaylistErrors), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low"), (status = 412, description = "If-None-Match: * and the playlist exists: nothing was written"), (status = 503, description = "standby: this node shares its store with a leader; write playlists there"), (status = 507, description = "the data disk is full: nothing was written")))]
pub async fn put(
    Auth(who): Editor,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let path = file_of(&s, &id)?;
    // `If-None-Match: *` (RFC 9110 §13.1.2): create only, never replace (the console's "new
    // playlist"). Checked when the request arrives.
    let create_only = headers
        .get(axum::http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "*");
    if create_only && path.exists() {
        return Err(ApiError {
            status: StatusCode::PRECONDITION_FAILED,
            code: "exists",
            message: format!("a playlist {id:?} exists already (If-None-Match: * creates only)"),
            field: Some("id".into()),
        });
    }
    // A full data disk: a save now could not be published (the reserve is for alerts). A
    // real write, not a look at the reserve: the disk may be full with the reserve still held.
    store_takes_writes(&s).await?;
    // A UTF-8 BOM is dropped; UTF-16 or ANSI bytes are named with where they are.
    let body = match source_text(&format!("{id}.json"), &body) {
        Ok(t) => t.to_owned(),
        Err(e) => return Ok(errors_response(&[e])),
    };
    let impact = match validate(&s, &id, &body)? {
        Ok(impact) => impact,
        Err(resp) => return Ok(resp),
    };
    let sha = hex::encode(Sha256::digest(body.as_bytes()));
    if s.cfg.approve_playlists {
        return propose(&s, &who.name, &id, &path, Some(body), sha, impact).await;
    }
    on_the_leader(&s).await?;
    super::audit(
        &s,
        &who.name,
        "playlist.put",
        &id,
        json!({"sha256": sha, "impact": impact}),
    )
    .await?;
    let bytes = body.into_bytes();
    let target = path.clone();
    tokio::task::spawn_blocking(move || crate::keys::write_atomic(&target, &bytes, 0o644))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| match e.downcast_ref::<std::io::Error>() {
            Some(io) => ApiError::io(&path, io),
            None => ApiError::internal(format!("{e:#}")),
        })?;
    let _ = s.reload.try_send(crate::scheduler::Reload::Complete);
    tracing::info!(id = %id, by = %who.name, "playlist written through the API");
    Ok(Json(Written {
        id,
        file: path.display().to_string(),
        sha256: sha,
        impact,
    })
    .into_response())
}

/// A playlist written (`PUT /api/v1/playlists/{id}`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Written {
    /// The playlist id.
    pub id: String,
    /// The file written.
    pub file: String,
    /// SHA-256 of the bytes written (hex; also in the audit entry).
    pub sha256: String,
    /// What changes on the screens.
    pub impact: Vec<Impact>,
}

/// A playlist removed (`DELETE /api/v1/playlists/{id}`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    /// The playlist id.
    pub id: String,
    /// Always true.
    pub deleted: bool,
    /// What changes on the screens.
    pub impact: Vec<Impact>,
}

/// `DELETE /api/v1/playlists/{id}` (editor role).
#[utoipa::path(delete, path = "/api/v1/playlists/{id}", tag = "playlists", security(("bearer" = [])), params(("id" = String, Path, description = "playlist id")), responses((status = 200, description = "removed; the change impact", body = Deleted), (status = 202, description = "proposed for review ([approval] playlists)", body = Proposed), (status = 404, description = "no such playlist"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low"), (status = 503, description = "standby: this node shares its store with a leader; write playlists there")))]
pub async fn delete(
    Auth(who): Editor,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let path = file_of(&s, &id)?;
    store_takes_writes(&s).await?;
    if !path.exists() {
        return Err(ApiError::not_found(format!(
            "no playlist file {}",
            path.display()
        )));
    }
    let current = s.catalog.borrow().playlists();
    let impact = change_impact(&s.cfg.schedule, &current, &id, None, Utc::now());
    if s.cfg.approve_playlists {
        return propose(&s, &who.name, &id, &path, None, String::new(), impact).await;
    }
    on_the_leader(&s).await?;
    super::audit(
        &s,
        &who.name,
        "playlist.delete",
        &id,
        json!({"impact": impact}),
    )
    .await?;
    tokio::fs::remove_file(&path)
        .await
        .map_err(|e| ApiError::internal(format!("cannot remove {}: {e}", path.display())))?;
    let _ = s.reload.try_send(crate::scheduler::Reload::Complete);
    tracing::info!(id = %id, by = %who.name, "playlist deleted through the API");
    Ok(Json(Deleted {
        id,
        deleted: true,
        impact,
    })
    .into_response())
}

/// `GET /api/v1/schedule/cron`: a cron line explained.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CronExplained {
    /// The line as given.
    pub cron: String,
    /// The zone its starts are in (IANA).
    pub timezone: String,
    /// In plain words, English.
    pub en: String,
    /// In plain words, Chinese.
    pub zh: String,
    /// Its next five starts after now.
    pub next: Vec<crate::domain::cron::Start>,
}

/// `GET /api/v1/schedule/cron?cron=&timezone=`: what a playlist's cron line means and when it
/// next starts (for the console's schedule builder; the same parser as playlist validation).
#[utoipa::path(get, path = "/api/v1/schedule/cron", tag = "playlists", security(("bearer" = [])), params(("cron" = String, Query, description = "5-field cron line, e.g. `30 9 * * 1-5`"), ("timezone" = Option<String>, Query, description = "IANA zone (default: `[schedule] timezone`)")), responses((status = 200, description = "the line in words and its next five starts, daylight-saving days marked", body = CronExplained), (status = 400, description = "bad cron line or zone"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn cron(
    _: super::auth::Viewer,
    State(s): State<Arc<AppState>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Json<CronExplained>, ApiError> {
    let line = q
        .get("cron")
        .ok_or_else(|| ApiError::bad_field("cron", "give cron, e.g. 30 9 * * 1-5"))?;
    let cron = crate::domain::cron::parse(line).map_err(|m| ApiError::bad_field("cron", m))?;
    let tz = match q.get("timezone").filter(|z| !z.is_empty()) {
        None => s.cfg.schedule.timezone,
        Some(z) => z.parse().map_err(|_| {
            ApiError::bad_field(
                "timezone",
                format!("unknown IANA time zone {z:?} (e.g. \"Asia/Shanghai\")"),
            )
        })?,
    };
    Ok(Json(CronExplained {
        cron: line.clone(),
        timezone: tz.name().to_owned(),
        en: crate::domain::cron::describe(&cron, "en"),
        zh: crate::domain::cron::describe(&cron, "zh"),
        next: crate::domain::cron::next_starts(&cron, tz, Utc::now(), 5),
    }))
}
