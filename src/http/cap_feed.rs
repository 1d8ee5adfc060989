//! Polling a CAP feed (`[cap] feed_url`, `feed_interval`). The URL may serve one CAP 1.2
//! `<alert>` document, or an Atom or RSS feed whose entries link to CAP documents. Each new
//! document goes through the same path as `POST /api/v1/alerts/cap`, audited as `cap-feed`.
//! A document already applied (same identifier, sender and sent time) is not applied again;
//! alerts are keyed by their CAP identity, so even after a restart a re-read raises nothing twice.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use quick_xml::events::Event;
use tokio_util::sync::CancellationToken;

use super::AppState;

/// Most documents fetched from one feed read.
const MAX_ENTRIES: usize = 50;
/// The name the audit log records.
const ACTOR: &str = "cap-feed";

/// What a fetched body is.
#[derive(Debug, PartialEq, Eq)]
pub enum Body {
    /// A CAP document.
    Alert,
    /// A feed: the links of its entries.
    Feed(Vec<String>),
    /// Neither.
    Other(String),
}

/// Looks at the root element: `alert` is a CAP document; `feed` (Atom) and `rss` give their
/// entries' links (Atom `<link href>`, RSS `<item><link>`).
pub fn classify(xml: &str) -> Body {
    let mut r = quick_xml::Reader::from_str(xml);
    let mut root: Option<String> = None;
    let mut links = Vec::new();
    let (mut in_entry, mut in_rss_link) = (false, false);
    loop {
        match r.read_event() {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if root.is_none() {
                    root = Some(name.clone());
                    if name == "alert" {
                        return Body::Alert;
                    }
                }
                match name.as_str() {
                    "entry" | "item" => in_entry = true,
                    "link" if in_entry => {
                        let href = e
                            .attributes()
                            .flatten()
                            .find(|a| a.key.local_name().as_ref() == b"href")
                            .and_then(|a| {
                                a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                    .ok()
                                    .map(|v| v.into_owned())
                            });
                        match href {
                            Some(h) => links.push(h),
                            None => in_rss_link = true,
                        }
                    }
                    _ => {}
                }
            }
            Ok(Event::Text(t)) if in_rss_link => {
                if let Ok(text) = t.decode() {
                    links.push(text.trim().to_owned());
                }
                in_rss_link = false;
            }
            Ok(Event::End(e)) => {
                if matches!(e.local_name().as_ref(), b"entry" | b"item") {
                    in_entry = false;
                }
                in_rss_link = false;
            }
            Ok(Event::Eof) => break,
            Err(e) => return Body::Other(format!("not XML: {e}")),
            _ => {}
        }
    }
    match root.as_deref() {
        Some("feed") | Some("rss") => Body::Feed(links),
        other => Body::Other(format!(
            "root element {:?} is not a CAP alert or an Atom/RSS feed",
            other.unwrap_or("")
        )),
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("{url} answered {}", resp.status()));
    }
    resp.text().await.map_err(|e| e.to_string())
}

/// The identity of a CAP document (identifier, sender, sent).
fn identity(xml: &str) -> Option<String> {
    crate::domain::cap::parse(xml)
        .ok()
        .map(|d| format!("{}|{}|{}", d.identifier, d.sender, d.sent))
}

/// Polls until `cancel`.
pub async fn run(state: Arc<AppState>, url: url::Url, every: Duration, cancel: CancellationToken) {
    let client = match crate::http_client()
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "CAP feed: cannot build an HTTP client");
            return;
        }
    };
    let mut seen: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let body = match fetch(&client, url.as_str()).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(feed = %url, error = %e, "CAP feed unreachable; trying again");
                continue;
            }
        };
        let docs: Vec<(String, String)> = match classify(&body) {
            Body::Alert => vec![(url.to_string(), body)],
            Body::Feed(links) => {
                let mut docs = Vec::new();
                for link in links.into_iter().take(MAX_ENTRIES) {
                    let Ok(abs) = url.join(&link) else {
                        tracing::warn!(feed = %url, link, "CAP feed: bad entry link");
                        continue;
                    };
                    match fetch(&client, abs.as_str()).await {
                        Ok(d) => docs.push((abs.to_string(), d)),
                        Err(e) => {
                            tracing::warn!(entry = %abs, error = %e, "CAP feed entry unreachable")
                        }
                    }
                }
                docs
            }
            Body::Other(why) => {
                tracing::warn!(feed = %url, why, "CAP feed: not a CAP document or feed");
                continue;
            }
        };
        for (from, doc) in docs {
            let key = identity(&doc).unwrap_or_else(|| format!("{from}|{}", doc.len()));
            if seen.contains(&key) {
                continue;
            }
            match super::alerts::apply_cap(&state, ACTOR, &doc).await {
                Ok((_, v)) => {
                    tracing::info!(entry = %from, action = %v["action"], id = %v["id"], "CAP feed document applied");
                    seen.insert(key);
                }
                Err(e) if e.status.is_client_error() => {
                    tracing::warn!(entry = %from, error = %e.message, "CAP feed document refused");
                    seen.insert(key);
                }
                Err(e) => {
                    tracing::error!(entry = %from, error = %e.message, "CAP feed document failed; trying again next poll");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_and_feeds_are_told_apart() {
        assert_eq!(
            classify(
                r#"<?xml version="1.0"?><alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>x</identifier></alert>"#
            ),
            Body::Alert
        );
        let atom = r#"<feed xmlns="http://www.w3.org/2005/Atom"><link href="http://x/self"/>
            <entry><id>1</id><link href="/cap/1.xml"/></entry>
            <entry><id>2</id><link rel="alternate" href="http://x/cap/2.xml"/></entry></feed>"#;
        assert_eq!(
            classify(atom),
            Body::Feed(vec!["/cap/1.xml".into(), "http://x/cap/2.xml".into()])
        );
        let rss = "<rss><channel><link>http://x/</link><item><link> http://x/a.xml </link></item></channel></rss>";
        assert_eq!(classify(rss), Body::Feed(vec!["http://x/a.xml".into()]));
        assert!(matches!(classify("<html></html>"), Body::Other(_)));
        assert!(matches!(classify("<alert><x></alert>"), Body::Alert));
    }
}
