//! Security headers on every answer of the daemon's HTTP server and the agent's web renderer:
//! a Content-Security-Policy that lets a page talk only to its own origin (nothing is loaded from
//! elsewhere), no framing (clickjacking), no MIME sniffing, no referrer.
//!
//! The console is ES modules and a style sheet served by the daemon itself, so its policy allows
//! scripts from its own origin only (no inline script). The screen page (the agent's renderer,
//! one self-contained page) has inline script and style; the daemon serves it to the console's
//! slogan previews, the one page that may be framed, and only by its own origin.

use axum::http::{HeaderValue, header};
use axum::response::Response;

/// The console's and the API's policy: scripts and styles of its own origin, requests to its own
/// origin only, its own screen page in frames, never framed itself.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     connect-src 'self'; img-src 'self' data: blob:; frame-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The screen page's policy: its inline script and style, requests to its own origin; framed by
/// its own origin at most (`frame_ancestors` is `'none'` on an agent, `'self'` on the daemon).
pub fn screen_csp(frame_ancestors: &str) -> String {
    format!(
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors {frame_ancestors}"
    )
}

/// Adds the headers (for `axum::middleware::map_response`). A policy or framing rule the route
/// set itself (the screen page) is kept.
pub async fn secure(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    if !h.contains_key(header::X_FRAME_OPTIONS) {
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}
