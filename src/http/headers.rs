//! Security headers on every answer of the daemon's HTTP server and the agent's web renderer:
//! a Content-Security-Policy that lets a page talk only to its own origin (the console and the
//! renderer are single self-contained pages with inline script and style; nothing is loaded
//! from elsewhere), no framing (clickjacking), no MIME sniffing, no referrer.

use axum::http::{HeaderValue, header};
use axum::response::Response;

/// The policy: inline script and style of the page itself, requests to its own origin only.
pub const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Adds the headers (for `axum::middleware::map_response`).
pub async fn secure(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
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
