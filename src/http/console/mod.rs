//! The web console: `GET /` is `index.html`, and `GET /console/{file}` its ES modules, style
//! sheet and the screen page, all compiled into the binary (no CDN, no external URL, no Node
//! toolchain: the office's network may have no Internet). Open routes: everything the console
//! shows comes from the API with the token the user logs in with.
//!
//! The screen page is the agent's own web renderer (`src/agent/screen.html`, the same bytes), so
//! a slogan previewed in the console is drawn by the HTML and CSS a screen uses.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};

use super::error::ApiError;

/// `(name, content type, bytes)` of every asset under `/console/`.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("app.css"),
    ),
    ("app.js", JS, include_str!("app.js")),
    ("api.js", JS, include_str!("api.js")),
    ("i18n.js", JS, include_str!("i18n.js")),
    ("chart.js", JS, include_str!("chart.js")),
    ("screens.js", JS, include_str!("screens.js")),
    ("channels.js", JS, include_str!("channels.js")),
    ("editor.js", JS, include_str!("editor.js")),
    ("review.js", JS, include_str!("review.js")),
    ("schedule.js", JS, include_str!("schedule.js")),
    ("fleet.js", JS, include_str!("fleet.js")),
    ("alerts.js", JS, include_str!("alerts.js")),
    ("campaigns.js", JS, include_str!("campaigns.js")),
];

const JS: &str = "text/javascript; charset=utf-8";

/// The agent's renderer page.
pub const SCREEN: &str = include_str!("../../agent/screen.html");

/// `GET /`: the console page.
pub async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

/// `GET /console/{file}`: one asset, or 404.
pub async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    if file == "screen.html" {
        let mut r = Html(SCREEN).into_response();
        let h = r.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&super::headers::screen_csp("'self'")) {
            h.insert(header::CONTENT_SECURITY_POLICY, v);
        }
        h.insert(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("SAMEORIGIN"),
        );
        return Ok(r);
    }
    let (_, kind, body) = ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or_else(|| ApiError::not_found(format!("no console file {file:?}")))?;
    Ok(([(header::CONTENT_TYPE, *kind)], *body).into_response())
}

/// Every asset name (for tests: each must be served).
pub fn names() -> impl Iterator<Item = &'static str> {
    ASSETS
        .iter()
        .map(|(n, _, _)| *n)
        .chain(std::iter::once("screen.html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The office's network may have no Internet: no asset names another origin, and every
    /// module a page or module imports is served.
    #[test]
    fn assets_are_self_contained() {
        let index = include_str!("index.html");
        for (name, text) in ASSETS
            .iter()
            .map(|(n, _, t)| (*n, *t))
            .chain([("index.html", index), ("screen.html", SCREEN)])
        {
            for scheme in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(scheme), "{name} contains {scheme:?}");
            }
            for (i, _) in text.match_indices("from \"./") {
                let rest = &text[i + 8..];
                let module = &rest[..rest.find('"').unwrap()];
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == module),
                    "{name} imports {module}, which is not served"
                );
            }
        }
        for (i, _) in index.match_indices("/console/") {
            let rest = &index[i + 9..];
            let file = &rest[..rest.find('"').unwrap()];
            assert!(names().any(|n| n == file), "index.html loads {file}");
        }
    }
}
