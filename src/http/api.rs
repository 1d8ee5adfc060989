//! Route handlers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use chrono::Utc;
use serde_json::Value;

use super::AppState;
use super::auth::Viewer;
use super::error::ApiError;
use crate::preview::{Preview, PreviewRequest};
use crate::store::Published;
use crate::store::fleet::DisplayRow;
use crate::wire::Topic;

/// `GET /healthz`: open, for load balancers and systemd checks.
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, description = "the daemon is up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `GET /healthz`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`: the process answers.
    pub status: &'static str,
}

/// `GET /readyz`: what the daemon can do now.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// Whether an alert can be written and published.
    pub ready: bool,
    /// `ok`, or why the store cannot take an alert's write.
    pub store: String,
    /// `ok`, or why bulk writes are refused (a full data disk).
    pub bulk_writes: String,
    /// `ok`, or why no SMS is claimed any more (a sync of the write-ahead log behind the claims
    /// failed: until the daemon is restarted). Alerts still go to the screens.
    pub sms_claims: String,
    /// `connected` or `not connected` (a standby is never connected: the leader publishes).
    pub broker: &'static str,
    /// `single` (its own store), `leader` or `standby` (a shared store).
    pub role: crate::leader::Role,
    /// On a shared store, the node whose lease runs now (`null`: none, a failover is under
    /// way, or alone).
    pub leader: Option<String>,
}

/// `GET /readyz`: open; 200 when the daemon can do its emergency work: the store takes an
/// alert's write and the broker is connected (a standby: the store takes it, and the leader,
/// or during a failover the next one, publishes it); 503 naming what is not (for load balancers,
/// orchestrators, monitoring). `bulk_writes` says when a full data disk refuses the rest.
#[utoipa::path(get, path = "/readyz", tag = "system", responses((status = 200, description = "ready: the store takes an alert's writes and the broker is connected, or this node is a standby (bulk_writes: whether the rest is refused for a full disk)", body = Readiness), (status = 503, description = "not ready: what is wrong (the same shape, ready false)")))]
pub async fn readyz(State(s): State<Arc<AppState>>) -> (StatusCode, Json<Readiness>) {
    // Ready means an alert can be written and published. A full data disk refuses bulk
    // writes (reports, imports, SMS, playlist saves) and says so, but an instance that can
    // still take an alert stays in rotation: that is what the disk reserve is for.
    let (store_ok, bulk) = s
        .store
        .call(move |store| {
            let now = chrono::Utc::now();
            Ok((
                store.emergency_probe(now).map_err(|e| e.to_string()),
                store.bulk_ok().map_err(|e| e.to_string()),
            ))
        })
        .await
        .unwrap_or_else(|e| (Err(e.to_string()), Err(e.to_string())));
    let sms_claims = if s.store.claims_broken() {
        crate::store::walsync::broken().to_string()
    } else {
        "ok".into()
    };
    let role = crate::leader::role();
    let leader = match role {
        crate::leader::Role::Single => None,
        _ => s
            .store
            .call(|st| st.leader())
            .await
            .ok()
            .flatten()
            .filter(|h| h.remaining_s > 0.0)
            .map(|h| h.node),
    };
    let broker = s.metrics.mqtt_connected.get() == 1;
    // A standby's alert is durable once stored, and goes out when a node leads (during a
    // failover, when the next one does): ready when the store takes it.
    let ready = store_ok.is_ok() && (broker || role == crate::leader::Role::Standby);
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(Readiness {
            ready,
            store: store_ok.err().unwrap_or_else(|| "ok".into()),
            bulk_writes: bulk.err().unwrap_or_else(|| "ok".into()),
            sms_claims,
            broker: if broker { "connected" } else { "not connected" },
            role,
            leader,
        }),
    )
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "system", security(("bearer" = [])), responses((status = 200, description = "Prometheus text exposition (version 0.0.4)", content_type = "text/plain", body = String), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn metrics(_: Viewer, State(s): State<Arc<AppState>>) -> impl IntoResponse {
    s.metrics
        .sms_claims_stopped
        .set(i64::from(s.store.claims_broken()));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// Fallback: JSON 404.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// Every playlist file (`GET /api/v1/playlists`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PlaylistList {
    /// One entry per file in `[schedule] playlists_dir`, live or not.
    pub playlists: Vec<PlaylistEntry>,
}

/// One playlist file: what is live from it, and the errors of the file on disk. A file that
/// never validated has `live` false and only `id` (null), `file` and `errors`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PlaylistEntry {
    /// The playlist id; `null` when no version of the file ever validated.
    pub id: Option<String>,
    /// Its path.
    pub file: String,
    /// Its title.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `fallback`, `normal`, `interrupt` or `emergency`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub tier: Option<crate::wire::Tier>,
    /// Its share of voice among the winners of its tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// The zone its schedule is written in (IANA name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Where it plays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targets: Option<Targets>,
    /// Whether a version of it is on the screens' timelines.
    pub live: bool,
    /// The errors of the file as it is on disk now (`file:line:column: message`).
    pub errors: Vec<String>,
}

/// Where a playlist plays.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Targets {
    /// Channels.
    pub channels: Vec<String>,
    /// Individual displays.
    pub displays: Vec<String>,
}

/// `GET /api/v1/playlists`: every playlist file, live or broken.
#[utoipa::path(get, path = "/api/v1/playlists", tag = "playlists", security(("bearer" = [])), responses((status = 200, description = "every playlist file: live or not, with its errors", body = PlaylistList), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn list_playlists(_: Viewer, State(s): State<Arc<AppState>>) -> Json<PlaylistList> {
    let catalog = s.catalog.borrow().clone();
    let playlists = catalog
        .files
        .iter()
        .map(|(path, st)| {
            let errors: Vec<String> = st.errors.iter().map(ToString::to_string).collect();
            let file = path.display().to_string();
            match &st.good {
                Some((p, _)) => PlaylistEntry {
                    id: Some(p.id.clone()),
                    file,
                    title: Some(p.title.clone()),
                    tier: Some(p.tier),
                    weight: Some(p.weight),
                    timezone: Some(p.timezone.name().to_owned()),
                    targets: Some(Targets {
                        channels: p.channels.clone(),
                        displays: p.displays.clone(),
                    }),
                    live: true,
                    errors,
                },
                None => PlaylistEntry {
                    id: None,
                    file,
                    title: None,
                    tier: None,
                    weight: None,
                    timezone: None,
                    targets: None,
                    live: false,
                    errors,
                },
            }
        })
        .collect();
    Json(PlaylistList { playlists })
}

/// One playlist (`GET /api/v1/playlists/{id}`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PlaylistView {
    /// The playlist id.
    pub id: String,
    /// Its path.
    pub file: String,
    /// The live version, byte for byte as written (`marquee playlist pull` writes it back).
    pub source: String,
    /// The live version as JSON (docs/playlist.schema.json); `null` if it is not JSON.
    #[schema(value_type = Object)]
    pub playlist: Value,
    /// The errors of the file on disk now, if it changed since (the live version stays).
    pub errors: Vec<String>,
}

/// `GET /api/v1/playlists/{id}`: the live version as written, and any errors of the file on disk.
#[utoipa::path(get, path = "/api/v1/playlists/{id}", tag = "playlists", security(("bearer" = [])), params(("id" = String, Path, description = "playlist id (its file name)")), responses((status = 200, description = "the live version as written, with the current errors of the file", body = PlaylistView), (status = 404, description = "no such playlist"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn get_playlist(
    _: Viewer,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<PlaylistView>, ApiError> {
    let catalog = s.catalog.borrow().clone();
    let (path, _, src, errors) = catalog
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("no live playlist {id:?}")))?;
    Ok(Json(PlaylistView {
        file: path.display().to_string(),
        source: src.to_string(),
        playlist: serde_json::from_str(src).unwrap_or(Value::Null),
        errors: errors.iter().map(ToString::to_string).collect(),
        id,
    }))
}

/// `GET /api/v1/preview?channel=&display=&at=&for=`.
#[utoipa::path(get, path = "/api/v1/preview", tag = "playlists", security(("bearer" = [])), params(("channel" = Option<String>, Query, description = "channel"), ("display" = Option<String>, Query, description = "display"), ("at" = Option<String>, Query, description = "start (RFC 3339 or local; default now)"), ("for" = Option<String>, Query, description = "length, e.g. 2h")), responses((status = 200, description = "what the channel or display shows: stretches, winners, the loop", body = crate::preview::PreviewAnswer), (status = 400, description = "bad parameter"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn preview(
    _: Viewer,
    State(s): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<crate::preview::PreviewAnswer>, ApiError> {
    let req = preview_request(&s, &q)?;
    let playlists = s.catalog.borrow().playlists();
    let too_big = crate::preview::oversize_of(
        &s.cfg,
        &playlists,
        &req.channel,
        req.display.as_deref(),
        Utc::now(),
    );
    Ok(Json(
        Preview::compute(&playlists, req, s.cfg.schedule.timezone).answer(too_big),
    ))
}

fn preview_request(s: &AppState, q: &HashMap<String, String>) -> Result<PreviewRequest, ApiError> {
    let (channel, display) = target_of(s, q)?;
    let at = instant_of(s, q)?;
    let length = crate::preview::parse_length(q.get("for").map(String::as_str).unwrap_or("2h"))
        .map_err(|m| ApiError::bad_field("for", m))?;
    Ok(PreviewRequest {
        channel,
        display,
        at,
        length,
    })
}

/// The query's `display` (a declared one) or `channel`: the channel, and the display if any.
pub fn target_of(
    s: &AppState,
    q: &HashMap<String, String>,
) -> Result<(String, Option<String>), ApiError> {
    let sched = &s.cfg.schedule;
    let display = q.get("display").filter(|d| !d.is_empty()).cloned();
    let channel = match (&display, q.get("channel").filter(|c| !c.is_empty())) {
        (Some(d), _) => sched
            .displays
            .get(d)
            .cloned()
            .ok_or_else(|| ApiError::bad_field("display", format!("unknown display {d:?}")))?,
        (None, Some(c)) if sched.channels.contains(c) => c.clone(),
        (None, Some(c)) => {
            return Err(ApiError::bad_field(
                "channel",
                format!(
                    "unknown channel {c:?} (configured: {})",
                    sched.channels.join(", ")
                ),
            ));
        }
        (None, None) => return Err(ApiError::bad_field("channel", "give channel or display")),
    };
    Ok((channel, display))
}

/// The query's `at` (RFC 3339, or local time in the schedule's zone); now when absent.
pub fn instant_of(
    s: &AppState,
    q: &HashMap<String, String>,
) -> Result<chrono::DateTime<Utc>, ApiError> {
    match q.get("at").filter(|t| !t.is_empty()) {
        None => Ok(Utc::now()),
        Some(t) => {
            crate::domain::playlist::parse_instant(t, s.cfg.schedule.timezone).ok_or_else(|| {
                ApiError::bad_field(
                    "at",
                    format!("bad time {t:?}: use RFC 3339, e.g. 2021-05-15T09:00:00+08:00"),
                )
            })
        }
    }
}

/// A display as the fleet view shows it: its last report and what is true of it now.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DisplayView {
    /// Its last report.
    #[serde(flatten)]
    pub row: DisplayRow,
    /// The timeline it should hold: its own if one is published, else its channel's.
    pub expected_timeline: Option<Expected>,
    /// Whether it applied exactly that topic and version.
    pub up_to_date: bool,
    /// `unknown` (not heard since a restart that lost the broker's state), `offline`, `stale`
    /// (online but silent too long) or `online`.
    pub state: String,
    /// Whether its clock was more than 30 s off ours (`fleet::MAX_SKEW_MS`).
    pub clock_skew: bool,
    /// Whether two agent processes took turns reporting for it lately (one id on two screens).
    pub conflict: bool,
}

/// A retained timeline topic and its version.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Expected {
    /// The full topic.
    pub topic: String,
    /// Its version.
    pub version: u64,
}

/// The fleet (`GET /api/v1/displays`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DisplayList {
    /// Every display that reported.
    pub displays: Vec<DisplayView>,
}

/// A display with the timeline it should hold (its own if published, else its channel's).
fn display_view(d: DisplayRow, published: &[Published], prefix: &str) -> DisplayView {
    let own = Topic::DisplayTimeline(d.id.clone()).render(prefix);
    let channel = Topic::ChannelTimeline(d.channel.clone()).render(prefix);
    let expected = published
        .iter()
        .find(|p| p.topic == own && !p.payload.is_empty())
        .or_else(|| published.iter().find(|p| p.topic == channel));
    let up_to_date = expected.is_some_and(|e| {
        d.timeline_topic.as_deref() == Some(e.topic.as_str())
            && d.timeline_version == Some(e.version)
    });
    let now = Utc::now();
    DisplayView {
        expected_timeline: expected.map(|e| Expected {
            topic: e.topic.clone(),
            version: e.version,
        }),
        up_to_date,
        state: display_state(&d, now).to_owned(),
        clock_skew: d
            .clock_skew_ms
            .is_some_and(|ms| ms.abs() > crate::fleet::MAX_SKEW_MS),
        conflict: d.conflict_at.as_deref().is_some_and(|at| {
            chrono::DateTime::parse_from_rfc3339(at)
                .is_ok_and(|t| now - t.with_timezone(&Utc) < crate::fleet::CONFLICT_SHOWN)
        }),
        row: d,
    }
}

/// What is true of a display at `now`: `unknown` (not heard since a restart that lost the
/// broker's state), `offline`, `stale` (online by its last status but silent for longer than
/// [`crate::fleet::STALE_AFTER`]) or `online`.
pub fn display_state(d: &DisplayRow, now: chrono::DateTime<Utc>) -> &'static str {
    let silent = chrono::DateTime::parse_from_rfc3339(&d.last_seen)
        .map(|t| (now - t.with_timezone(&Utc)) > crate::fleet::STALE_AFTER)
        .unwrap_or(false);
    match (d.known, d.online, silent) {
        (false, _, _) => "unknown",
        (true, false, _) => "offline",
        (true, true, true) => "stale",
        (true, true, false) => "online",
    }
}

/// `GET /api/v1/displays`: the fleet; CSV with `Accept: text/csv` (the console's export).
#[utoipa::path(get, path = "/api/v1/displays", tag = "displays", security(("bearer" = [])), responses((status = 200, description = "every display that reported (JSON, or CSV with Accept: text/csv)", content((DisplayList = "application/json"), (String = "text/csv"))), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn list_displays(
    _: Viewer,
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    let (rows, published) = s
        .store
        .call(move |store| Ok((store.displays()?, store.published()?)))
        .await?;
    let prefix = &s.cfg.mqtt.topic_prefix;
    let displays: Vec<DisplayView> = rows
        .into_iter()
        .map(|d| display_view(d, &published, prefix))
        .collect();
    rows_or_csv(&headers, displays, &DISPLAY_COLUMNS, |displays| {
        DisplayList { displays }
    })
}

/// The fleet's CSV columns.
const DISPLAY_COLUMNS: [&str; 15] = [
    "id",
    "channel",
    "state",
    "online",
    "since",
    "last_seen",
    "agent_version",
    "timeline_topic",
    "timeline_version",
    "up_to_date",
    "clock_skew",
    "clock_skew_ms",
    "conflict",
    "last_alert_ack",
    "last_alert_latency_ms",
];

/// `GET /api/v1/displays/{id}`.
#[utoipa::path(get, path = "/api/v1/displays/{id}", tag = "displays", security(("bearer" = [])), params(("id" = String, Path, description = "display id")), responses((status = 200, description = "one display", body = DisplayView), (status = 404, description = "never reported"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn get_display(
    _: Viewer,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<DisplayView>, ApiError> {
    let key = id.clone();
    let (row, published) = s
        .store
        .call(move |store| Ok((store.display(&key)?, store.published()?)))
        .await?;
    let row = row.ok_or_else(|| ApiError::not_found(format!("no display {id:?} has reported")))?;
    Ok(Json(display_view(
        row,
        &published,
        &s.cfg.mqtt.topic_prefix,
    )))
}

/// Most rows one plays request returns.
const MAX_PLAYS: usize = 100_000;

/// `GET /api/v1/plays?display=&from=&until=`: proof of play; CSV with `Accept: text/csv`.
#[utoipa::path(get, path = "/api/v1/plays", tag = "displays", security(("bearer" = [])), params(("display" = Option<String>, Query, description = "display"), ("from" = Option<String>, Query, description = "RFC 3339"), ("until" = Option<String>, Query, description = "RFC 3339")), responses((status = 200, description = "proof of play (JSON, or CSV with Accept: text/csv)", content((Plays = "application/json"), (String = "text/csv"))), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn plays(
    _: Viewer,
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::response::Response, ApiError> {
    let tz = s.cfg.schedule.timezone;
    let time = |key: &str, default: chrono::DateTime<Utc>| match q.get(key) {
        None => Ok(default),
        Some(t) => crate::domain::playlist::parse_instant(t, tz)
            .ok_or_else(|| ApiError::bad_field(key, format!("bad time {t:?}: use RFC 3339"))),
    };
    let until = time("until", Utc::now())?;
    let from = time("from", until - chrono::Duration::hours(24))?;
    if from >= until {
        return Err(ApiError::bad_field("from", "from must be before until"));
    }
    let display = q.get("display").filter(|d| !d.is_empty()).cloned();
    let rows = s
        .store
        .call(move |store| store.plays(display.as_deref(), from, until, MAX_PLAYS))
        .await?;
    rows_or_csv(&headers, rows, &PLAY_COLUMNS, |plays| Plays { plays })
}

/// Proof of play (`GET /api/v1/plays`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Plays {
    /// One record per item shown, oldest first (at most 100,000).
    pub plays: Vec<crate::store::fleet::PlayRow>,
}

const PLAY_COLUMNS: [&str; 7] = [
    "event_id", "display", "item", "playlist", "lang", "start", "end",
];

/// Rows as the JSON `wrap` makes of them, or as CSV (with `columns` as header) when the
/// request asks for `text/csv`.
pub fn rows_or_csv<T: serde::Serialize, W: serde::Serialize>(
    headers: &HeaderMap,
    rows: Vec<T>,
    columns: &[&str],
    wrap: impl FnOnce(Vec<T>) -> W,
) -> Result<axum::response::Response, ApiError> {
    let wants_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    if !wants_csv {
        return Ok(Json(wrap(rows)).into_response());
    }
    let csv_err = |e: csv::Error| ApiError::internal(e.to_string());
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    w.write_record(columns).map_err(csv_err)?;
    // Cells that text came into from outside (a playlist item, an SMS text, a carrier's
    // reason) are written formula-safe: a spreadsheet must not run them.
    let mut cells = Vec::with_capacity(columns.len());
    for r in &rows {
        let v = serde_json::to_value(r).map_err(|e| ApiError::internal(e.to_string()))?;
        cells.clear();
        for c in columns {
            cells.push(match &v[*c] {
                Value::Null => String::new(),
                Value::String(s) => super::campaigns::formula_safe(s).into_owned(),
                other => other.to_string(),
            });
        }
        w.write_record(&cells).map_err(csv_err)?;
    }
    let body = w
        .into_inner()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response())
}

/// `GET /api/v1/audit?after=&limit=`: the audit log, oldest first, with the chain's state.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", security(("bearer" = [])), params(("after" = Option<u64>, Query, description = "entries after this sequence number"), ("limit" = Option<usize>, Query, description = "at most this many")), responses((status = 200, description = "the audit log and whether its hash chain is intact", body = AuditLog), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn audit_log(
    _: super::auth::Operator,
    State(s): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<AuditLog>, ApiError> {
    let after = q.get("after").and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit = q
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
        .min(10_000);
    let (entries, verified) = s
        .store
        .call(move |store| Ok((store.audit_entries(after, limit)?, store.verify_audit()?)))
        .await?;
    let chain = match verified {
        Ok(n) => Chain::Intact {
            intact: true,
            entries: n,
        },
        Err(b) => Chain::Broken {
            intact: false,
            broken_at: b.seq,
            reason: b.reason,
        },
    };
    Ok(Json(AuditLog { entries, chain }))
}

/// `GET /api/v1/channels`: the configured channels and individually targetable displays.
#[utoipa::path(get, path = "/api/v1/channels", tag = "playlists", security(("bearer" = [])), responses((status = 200, description = "configured channels and individually targetable displays", body = Channels), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn channels(_: Viewer, State(s): State<Arc<AppState>>) -> Json<Channels> {
    let sched = &s.cfg.schedule;
    Json(Channels {
        channels: sched.channels.clone(),
        displays: sched
            .displays
            .iter()
            .map(|(id, channel)| DeclaredDisplay {
                id: id.clone(),
                channel: channel.clone(),
                lat: sched.locations.get(id).map(|l| l.0),
                lon: sched.locations.get(id).map(|l| l.1),
            })
            .collect(),
        timezone: sched.timezone.name(),
        screens: sched.screens.clone(),
    })
}

/// `GET /api/v1/channels`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Channels {
    /// The configured channels.
    pub channels: Vec<String>,
    /// Displays declared under `[[schedule.displays]]` (targetable one by one).
    pub displays: Vec<DeclaredDisplay>,
    /// The schedule's zone (IANA).
    pub timezone: &'static str,
    /// Each channel's screen size (`[schedule.screens]`), for previews drawn at that size.
    pub screens: std::collections::BTreeMap<String, crate::config::Screen>,
}

/// A declared display.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DeclaredDisplay {
    /// Its id.
    pub id: String,
    /// Its channel.
    pub channel: String,
    /// Where it stands (WGS 84 degrees), when declared.
    pub lat: Option<f64>,
    /// Longitude, with `lat`.
    pub lon: Option<f64>,
}

/// `GET /api/v1/audit`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AuditLog {
    /// Entries after `after`, oldest first.
    pub entries: Vec<crate::store::audit::AuditEntry>,
    /// Whether the whole hash chain is intact.
    pub chain: Chain,
}

/// The audit log's hash chain.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Chain {
    /// Every entry links to the one before.
    Intact {
        /// `true`.
        intact: bool,
        /// Entries in all.
        entries: u64,
    },
    /// Where it breaks.
    Broken {
        /// `false`.
        intact: bool,
        /// The first entry that does not link.
        broken_at: u64,
        /// What is wrong there.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_go_stale_when_silent_and_unknown_after_a_restart() {
        let t = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .with_timezone(&Utc)
        };
        let mut d = DisplayRow {
            id: "d".into(),
            online: true,
            since: "2026-11-29T10:00:00Z".into(),
            channel: "lobby".into(),
            timeline_topic: None,
            timeline_version: None,
            alert: None,
            agent_version: "x".into(),
            started_at: "2026-11-29T10:00:00Z".into(),
            last_seen: "2026-11-29T10:00:00Z".into(),
            last_alert_ack: None,
            last_alert_ack_at: None,
            last_alert_latency_ms: None,
            known: true,
            clock_skew_ms: None,
            instance: None,
            broker: None,
            conflict_at: None,
        };
        assert_eq!(display_state(&d, t("2026-11-29T10:04:59Z")), "online");
        assert_eq!(display_state(&d, t("2026-11-29T10:05:01Z")), "stale");
        d.online = false;
        assert_eq!(display_state(&d, t("2026-11-29T10:05:01Z")), "offline");
        d.known = false;
        assert_eq!(display_state(&d, t("2026-11-29T10:00:01Z")), "unknown");
    }
}
