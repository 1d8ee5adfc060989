//! The HTTP API (`/api/v1`, JSON) with `/healthz` and `/metrics`. Handlers validate, read or
//! enqueue; they never wait on the broker or a gateway. Every route but `/healthz` needs a bearer
//! token ([`auth`]); errors have one shape ([`error`]).

pub mod alerts;
pub mod api;
pub mod auth;
pub mod campaigns;
pub mod error;
pub mod playlists;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::metrics::Metrics;

/// What handlers share.
pub struct AppState {
    /// Configuration.
    pub cfg: Arc<Config>,
    /// The live playlist catalog.
    pub catalog: watch::Receiver<Arc<Catalog>>,
    /// Metrics.
    pub metrics: Metrics,
    /// Accepted tokens.
    pub tokens: auth::Tokens,
    /// The database.
    pub store: Arc<crate::store::Store>,
    /// Signed retained publications (alerts) go through the scheduler.
    pub publisher: tokio::sync::mpsc::Sender<crate::scheduler::PublishRequest>,
    /// Asks the scheduler to reload the playlists directory.
    pub reload: tokio::sync::mpsc::Sender<()>,
    /// Wakes the SMS dispatcher after a campaign change.
    pub sms_waker: crate::sms::dispatch::Waker,
    /// Delivery reports go here to be stored (group commit).
    pub reports: crate::sms::dlr::Intake,
}

/// The router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(console))
        .route("/healthz", get(api::healthz))
        .route("/metrics", get(api::metrics))
        .route("/api/v1/playlists", get(api::list_playlists))
        .route(
            "/api/v1/playlists/{id}",
            get(api::get_playlist)
                .put(playlists::put)
                .delete(playlists::delete),
        )
        .route("/api/v1/preview", get(api::preview))
        .route("/api/v1/channels", get(api::channels))
        .route("/api/v1/displays", get(api::list_displays))
        .route("/api/v1/displays/{id}", get(api::get_display))
        .route("/api/v1/plays", get(api::plays))
        .route("/api/v1/alerts", get(alerts::list).post(alerts::raise))
        .route(
            "/api/v1/playlists/{id}/check",
            axum::routing::post(playlists::check),
        )
        .route("/api/v1/alerts/cap", axum::routing::post(alerts::cap))
        .route(
            "/api/v1/alerts/{id}/approve",
            axum::routing::post(alerts::approve),
        )
        .route("/api/v1/audit", get(api::audit_log))
        .route(
            "/api/v1/alerts/{id}",
            get(alerts::show).delete(alerts::clear),
        )
        .route(
            "/api/v1/campaigns",
            get(campaigns::list)
                .post(campaigns::create)
                .layer(axum::extract::DefaultBodyLimit::max(256 << 20)),
        )
        .route("/api/v1/campaigns/{id}", get(campaigns::show))
        .route("/api/v1/campaigns/{id}/messages", get(campaigns::messages))
        .route(
            "/api/v1/campaigns/{id}/approve",
            axum::routing::post(campaigns::approve),
        )
        .route(
            "/api/v1/campaigns/{id}/{action}",
            axum::routing::post(campaigns::action),
        )
        .route(
            "/api/v1/sms/dlr/{gateway}",
            get(campaigns::dlr).post(campaigns::dlr),
        )
        .route(
            "/api/v1/optouts",
            get(campaigns::optouts)
                .post(campaigns::add_optouts)
                .layer(axum::extract::DefaultBodyLimit::max(64 << 20)),
        )
        .route(
            "/api/v1/optouts/{number}",
            axum::routing::delete(campaigns::remove_optout),
        )
        .fallback(api::not_found)
        .with_state(state)
}

/// Records a change in the audit log (before it takes effect: no audit, no change).
pub async fn audit(
    s: &AppState,
    actor: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> Result<(), error::ApiError> {
    let store = s.store.clone();
    let (actor, action, target) = (actor.to_owned(), action.to_owned(), target.to_owned());
    tokio::task::spawn_blocking(move || {
        store.audit(chrono::Utc::now(), &actor, &action, &target, &detail)
    })
    .await
    .map_err(|e| error::ApiError::internal(e.to_string()))?
    .map_err(|e| error::ApiError::internal(format!("audit log: {e}")))?;
    Ok(())
}

/// `GET /`: the web console, a static page (open; everything it shows comes from the API with
/// the token the user logs in with).
async fn console() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("console.html"))
}

/// Serves until `cancel`, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}
