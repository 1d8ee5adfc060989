//! The HTTP API (`/api/v1`, JSON) with `/healthz` and `/metrics`. Handlers validate, read or
//! enqueue; they never wait on the broker or a gateway. Every route but `/healthz` needs a bearer
//! token ([`auth`]); errors have one shape ([`error`]).

pub mod alerts;
pub mod api;
pub mod auth;
pub mod campaigns;
pub mod carrier;
pub mod console;
pub mod error;
pub mod frame;
pub mod headers;
pub mod playlists;
pub mod registry;
pub mod uploads;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::scheduler::catalog::Catalog;

/// What handlers share: the use cases' context ([`crate::app::Ctx`], reached through `Deref`)
/// and what only the web side needs.
pub struct AppState {
    /// The use cases' context: configuration, store, publisher, wakers, key, registry.
    pub app: Arc<crate::app::Ctx>,
    /// The live playlist catalog.
    pub catalog: watch::Receiver<Arc<Catalog>>,
    /// Metrics.
    pub metrics: Metrics,
    /// Accepted tokens.
    pub tokens: auth::Tokens,
    /// Asks the scheduler to reload the playlists directory.
    pub reload: tokio::sync::mpsc::Sender<crate::scheduler::Reload>,
    /// Delivery reports go here to be stored (group commit).
    pub reports: crate::sms::dlr::Intake,
    /// Looks up `unknown` SMS at their providers.
    pub reconciler: Arc<crate::sms::reconcile::Reconciler>,
    /// Gateways out of rotation, and why.
    pub sms_health: crate::sms::dispatch::Health,
}

impl std::ops::Deref for AppState {
    type Target = crate::app::Ctx;

    fn deref(&self) -> &crate::app::Ctx {
        &self.app
    }
}

/// The OpenAPI document's frame: title, version, the bearer scheme, tags.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Marquee API",
        description = "Publicity scheduler: playlists, displays, emergency alerts (manual and CAP 1.2), SMS campaigns, audit. Every route but /healthz, /readyz and the delivery-report intake needs `Authorization: Bearer <token>`; errors are `{\"error\": {\"code\", \"message\", \"field\"}}`."
    ),
    modifiers(&BearerAuth),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    tags(
        (name = "system", description = "health and metrics"),
        (name = "playlists", description = "playlist files, validation and preview"),
        (name = "displays", description = "the fleet and proof of play"),
        (name = "alerts", description = "emergency alerts, CAP 1.2, the two-person rule"),
        (name = "sms", description = "SMS campaigns, delivery reports, opt-outs"),
        (name = "audit", description = "the hash-chained audit log")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_default()
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// The OpenAPI 3 document of the API (what `GET /api/v1/openapi.json` serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().1
}

/// Every API route with its OpenAPI description: the two come from the same annotations
/// (`utoipa-axum`), so the document cannot miss a route or describe one that does not exist.
pub fn api() -> (Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    // Campaign and opt-out imports may be large CSV uploads.
    let bulk = OpenApiRouter::new()
        .routes(routes!(campaigns::list, campaigns::create))
        .routes(routes!(campaigns::optouts, campaigns::add_optouts))
        .layer(axum::extract::DefaultBodyLimit::max(256 << 20));
    let routes = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(api::healthz))
        .routes(routes!(api::readyz))
        .routes(routes!(api::metrics))
        .routes(routes!(api::list_playlists))
        .routes(routes!(
            api::get_playlist,
            playlists::put,
            playlists::delete
        ))
        .routes(routes!(playlists::check))
        .routes(routes!(playlists::cron))
        .routes(routes!(playlists::proposals))
        .routes(routes!(playlists::decide))
        .routes(routes!(api::preview))
        .routes(routes!(api::channels))
        .routes(routes!(api::list_displays))
        .routes(routes!(api::get_display))
        .routes(routes!(api::plays))
        .routes(routes!(frame::frame))
        .routes(routes!(registry::list, registry::add))
        .routes(routes!(registry::remove))
        .routes(routes!(registry::mosquitto))
        .routes(routes!(registry::forget_node))
        .routes(routes!(alerts::list, alerts::raise))
        .routes(routes!(alerts::cap))
        .routes(routes!(alerts::approve))
        .routes(routes!(alerts::show, alerts::clear))
        .routes(routes!(api::audit_log))
        .routes(routes!(campaigns::show))
        .routes(routes!(campaigns::messages))
        .routes(routes!(campaigns::progress))
        .routes(routes!(campaigns::approve))
        .routes(routes!(campaigns::action))
        .routes(routes!(campaigns::dlr))
        .routes(routes!(carrier::mo))
        .routes(routes!(carrier::gateways))
        .routes(routes!(carrier::templates))
        .routes(routes!(campaigns::remove_optout))
        .routes(routes!(campaigns::rejects))
        .routes(routes!(uploads::upload))
        .merge(bulk)
        .split_for_parts();
    let (router, mut doc) = routes;
    document_errors(&mut doc);
    (router, doc)
}

/// Every error answer the document lists without a body gets the one error shape
/// ([`error::ErrorBody`]): the routes answer every refusal through [`ApiError`].
fn document_errors(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{Content, Ref, RefOr};
    for item in doc.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in ops.into_iter().flatten() {
            for (status, response) in op.responses.responses.iter_mut() {
                let RefOr::T(response) = response else {
                    continue;
                };
                if status.starts_with(['4', '5']) && response.content.is_empty() {
                    response.content.insert(
                        "application/json".into(),
                        Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                    );
                }
            }
        }
    }
}

/// The router: the API, its OpenAPI document at `/api/v1/openapi.json` (viewer role), and the
/// console.
pub fn router(state: Arc<AppState>) -> Router {
    let (api, doc) = api();
    // Kept as its compact JSON (about 100 kB), not as the document's tree of strings and maps,
    // which is several times that and would be cloned for every request.
    let doc = bytes::Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
    api.route("/", get(console::index))
        .route("/console/{file}", get(console::asset))
        .route(
            "/api/v1/openapi.json",
            get(move |_: auth::Viewer| {
                let doc = doc.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        doc,
                    )
                }
            }),
        )
        .fallback(api::not_found)
        .layer(axum::middleware::map_response(error::json_too_large))
        .layer(axum::middleware::map_response(headers::secure))
        .with_state(state)
}

/// Records a change in the audit log (before it takes effect: no audit, no change):
/// [`crate::app::audit`] for handlers.
pub async fn audit(
    s: &AppState,
    actor: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> Result<(), error::ApiError> {
    // One mapping for every use case's error: an audit failure is 507 when the disk is full,
    // else 500, its message prefixed once with "audit log:".
    Ok(crate::app::audit(s, actor, action, target, detail).await?)
}

/// Serves HTTP/1.1 on one connection (plain or TLS) until it ends or the daemon stops.
async fn serve_connection<I>(
    io: I,
    svc: hyper_util::service::TowerToHyperService<axum::Router>,
    header_timeout: std::time::Duration,
    cancel: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let conn = b
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Serves until `cancel`, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    // Our own accept loop (axum::serve sets no timer, so no header timeout): at most
    // `server.max_connections` at once, the rest closed at accept, so idle or slow clients
    // cannot take every file descriptor from the broker and the store; a connection that has
    // not sent a complete request header within `server.header_timeout` is closed (also an
    // idle keep-alive connection waiting for its next request).
    let (cap, header_timeout) = (state.cfg.max_connections, state.cfg.header_timeout);
    let tls = state
        .cfg
        .tls
        .as_ref()
        .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
    let metrics = state.metrics.clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(cap));
    let app = router(state);
    let conns = tokio_util::task::TaskTracker::new();
    let mut warned = false;
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, typically: wait a little rather than spin.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics.http_refused.inc();
            if !warned {
                warned = true;
                tracing::warn!(
                    max_connections = cap,
                    "HTTP connection cap reached; closing new connections (server.max_connections)"
                );
            }
            drop(stream);
            continue;
        };
        warned = false;
        let _ = stream.set_nodelay(true);
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let cancel = cancel.clone();
        let open = metrics.http_connections.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            open.inc();
            match tls {
                None => serve_connection(stream, svc, header_timeout, cancel).await,
                // The handshake is held to the header timeout too: a client that opens a
                // connection and never says hello is closed like one that never sends a header.
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, svc, header_timeout, cancel).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            open.dec();
            drop(permit);
        });
    }
    conns.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conns.wait()).await;
    Ok(())
}
