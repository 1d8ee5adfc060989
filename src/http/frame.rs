//! `GET /api/v1/frame`: what a display shows at an instant, computed the way its agent computes
//! it (`agent::player::frame_at`): an alert that reaches it and is on screens then comes first;
//! else the timeline it should hold: its own if one is published and covers the instant, else its
//! channel's. The console's "show me display X at time T".

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use chrono::Utc;

use super::AppState;
use super::auth::Viewer;
use super::error::ApiError;
use crate::agent::player::{Fallback, Frame, LanguagePolicy, frame_at};
use crate::wire::{Timeline, Topic};

/// One frame, as a screen's web renderer receives it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct FrameAnswer {
    /// The display asked for (`null` when a channel was).
    pub display: Option<String>,
    /// Its channel.
    pub channel: String,
    /// The instant (RFC 3339, the schedule's zone).
    pub at: String,
    /// The timeline topic it comes from, and that timeline's version (`null`: none published
    /// that covers the instant: before the first publication or beyond the horizon).
    pub topic: Option<String>,
    /// Version of that timeline.
    pub version: Option<u64>,
    /// The alert on screen then, if any (its id).
    pub alert: Option<String>,
    /// The frame: `kind` (`alert`, `timeline`, or `fallback` when nothing is scheduled: the screen shows
    /// its own local fallback text, empty here), `item`, `playlist`, `lang`, `text`, `tier`,
    /// `start` and `until` (RFC 3339).
    #[schema(value_type = Object)]
    pub frame: Frame,
}

/// `GET /api/v1/frame?display=|channel=&at=&lang=`.
#[utoipa::path(get, path = "/api/v1/frame", tag = "displays", security(("bearer" = [])), params(("display" = Option<String>, Query, description = "a declared display"), ("channel" = Option<String>, Query, description = "a channel (when no display is given)"), ("at" = Option<String>, Query, description = "the instant (RFC 3339 or local; default now)"), ("lang" = Option<String>, Query, description = "always this language (default: the agent's default, zh and en alternating per showing)")), responses((status = 200, description = "the frame at that instant from the published timeline", body = FrameAnswer), (status = 400, description = "bad parameter"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn frame(
    _: Viewer,
    State(s): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<FrameAnswer>, ApiError> {
    let sched = &s.cfg.schedule;
    let (channel, display) = super::api::target_of(&s, &q)?;
    let at = super::api::instant_of(&s, &q)?;
    let policy = match q.get("lang").filter(|l| !l.is_empty()) {
        Some(l) => LanguagePolicy::Fixed(l.clone()),
        None => LanguagePolicy::Alternate(vec!["zh".into(), "en".into()]),
    };
    let prefix = &s.cfg.mqtt.topic_prefix;
    let mut topics = vec![Topic::ChannelTimeline(channel.clone()).render(prefix)];
    if let Some(d) = &display {
        topics.insert(0, Topic::DisplayTimeline(d.clone()).render(prefix));
    }
    let (published, alerts) = s
        .store
        .call(|store| Ok((store.published()?, store.alerts()?)))
        .await?;
    let alert = alert_at(&alerts, display.as_deref(), &channel, at);
    // The first topic whose timeline covers the instant (a display's own supersedes its
    // channel's while valid, as on the agent).
    let held = topics.iter().find_map(|topic| {
        let p = published.iter().find(|p| &p.topic == topic)?;
        let tl: Timeline = serde_json::from_str(p.body.as_deref()?).ok()?;
        (tl.from <= at && at < tl.until).then(|| (topic.clone(), p.version, tl))
    });
    let nothing = Fallback {
        text: Default::default(),
        seconds: 10,
    };
    let frame = frame_at(
        held.as_ref().map(|h| &h.2),
        alert.as_ref(),
        &nothing,
        &policy,
        at,
    );
    Ok(Json(FrameAnswer {
        display,
        channel,
        at: at.with_timezone(&sched.timezone).to_rfc3339(),
        topic: held.as_ref().map(|h| h.0.clone()),
        version: held.map(|h| h.1),
        alert: alert.map(|a| a.id),
        frame,
    }))
}

/// The newest alert that reaches `display` (or, without one, `channel`) and is on screens at
/// `at`: not waiting for approval, started, neither expired nor cleared by then.
fn alert_at(
    rows: &[crate::store::alerts::AlertRow],
    display: Option<&str>,
    channel: &str,
    at: chrono::DateTime<Utc>,
) -> Option<crate::wire::alert::Alert> {
    use crate::store::alerts::AlertStatus;
    let time = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    rows.iter()
        .filter(|a| a.status != AlertStatus::Pending)
        // Without a display, only what reaches the whole channel (no display id is empty).
        .filter(|a| crate::alerts::in_scope(&a.scope, display.unwrap_or(""), channel))
        .filter(|a| {
            a.cleared_at
                .as_deref()
                .and_then(time)
                .is_none_or(|c| at < c)
        })
        .filter_map(|a| {
            let shown = a
                .approved_at
                .as_deref()
                .and_then(time)
                .into_iter()
                .chain(time(&a.issued_at))
                .max()?;
            Some(crate::wire::alert::Alert {
                id: a.id.clone(),
                severity: a.severity.clone(),
                text: a.text.clone(),
                issued_at: shown,
                expires_at: time(&a.expires_at)?,
                starts_at: a.starts_at.as_deref().and_then(time),
            })
        })
        .filter(|a| a.issued_at <= at && a.showing(at))
        .max_by_key(|a| a.issued_at)
}
