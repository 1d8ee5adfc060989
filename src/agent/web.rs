//! The web renderer: a local page for a kiosk browser (`chromium --kiosk http://127.0.0.1:8090/`).
//! The page loads the current frame from `/frame` and then follows `/events` (server-sent
//! events): no reloads, and it keeps the last frame if the agent goes away.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::Router;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use futures_util::stream::{self, Stream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::player::Frame;
use super::render::{Renderer, frame_json};

/// Publishes frames to connected pages.
pub struct Web {
    display: String,
    tx: watch::Sender<serde_json::Value>,
}

impl Renderer for Web {
    fn show(&mut self, frame: &Frame, version: Option<u64>) {
        self.tx
            .send_replace(frame_json(&self.display, frame, version));
    }
}

/// Binds `listen` and serves the page until `cancel`. Returns the renderer and the bound address.
pub async fn start(
    display: &str,
    listen: SocketAddr,
    cancel: CancellationToken,
) -> anyhow::Result<(Web, SocketAddr)> {
    let (tx, rx) = watch::channel(serde_json::Value::Null);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("web renderer cannot listen on {listen} (web.listen): {e}"))?;
    let addr = listener.local_addr()?;
    let frame_rx = rx.clone();
    let app = Router::new()
        .route("/", get(page))
        .route(
            "/frame",
            get(move || {
                let v = frame_rx.borrow().clone();
                async move { axum::Json(v).into_response() }
            }),
        )
        .route("/events", get(move || events(rx.clone())))
        .layer(axum::middleware::map_response(crate::http::headers::secure));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
    });
    Ok((
        Web {
            display: display.to_owned(),
            tx,
        },
        addr,
    ))
}

async fn page() -> impl IntoResponse {
    let csp = crate::http::headers::screen_csp("'none'");
    (
        [(axum::http::header::CONTENT_SECURITY_POLICY, csp)],
        Html(PAGE),
    )
}

async fn events(
    rx: watch::Receiver<serde_json::Value>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let s = stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let v = rx.borrow_and_update().clone();
        Some((
            Ok(Event::default().event("frame").data(v.to_string())),
            (rx, false),
        ))
    });
    Sse::new(s).keep_alive(KeepAlive::default())
}

/// The page: also served by the daemon to the console's slogan previews (the same HTML and CSS).
const PAGE: &str = include_str!("screen.html");
