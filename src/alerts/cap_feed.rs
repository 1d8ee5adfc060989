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

use crate::app::Ctx;
use crate::metrics::Metrics;

/// Most documents fetched from one feed read.
const MAX_ENTRIES: usize = 50;
/// The name the audit log records.
const ACTOR: &str = "cap-feed";

/// One entry of a feed: where its CAP document is, and when the entry last changed (Atom
/// `<updated>`, RSS `<pubDate>`; empty when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The link, as written (relative links are resolved against the feed URL).
    pub link: String,
    /// The entry's update time as written.
    pub updated: String,
}

/// What a fetched body is.
#[derive(Debug, PartialEq, Eq)]
pub enum Body {
    /// A CAP document.
    Alert,
    /// A feed: its entries.
    Feed(Vec<Entry>),
    /// Neither.
    Other(String),
}

/// Looks at the root element: `alert` is a CAP document; `feed` (Atom) and `rss` give their
/// entries' links (Atom `<link href>`, RSS `<item><link>`).
pub fn classify(xml: &str) -> Body {
    let mut r = quick_xml::Reader::from_str(xml);
    let mut root: Option<String> = None;
    let mut links: Vec<Entry> = Vec::new();
    let (mut in_entry, mut in_rss_link, mut in_updated) = (false, false, false);
    let mut entry: Option<Entry> = None;
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
                    "entry" | "item" => {
                        in_entry = true;
                        entry = Some(Entry {
                            link: String::new(),
                            updated: String::new(),
                        });
                    }
                    "updated" | "pubDate" if in_entry => in_updated = true,
                    "link" if in_entry => {
                        let (href, rel) = href_and_rel(&e);
                        match (href, entry.as_mut()) {
                            // The CAP document: rel alternate (or none); `related`/`self` links
                            // of an entry come second.
                            (Some(h), Some(en))
                                if en.link.is_empty()
                                    || rel.as_deref().is_none_or(|r| r == "alternate") =>
                            {
                                en.link = h
                            }
                            (Some(_), _) => {}
                            (None, _) => in_rss_link = true,
                        }
                    }
                    _ => {}
                }
            }
            Ok(Event::Text(t)) if in_rss_link || in_updated => {
                if let (Ok(text), Some(en)) = (t.decode(), entry.as_mut()) {
                    if in_rss_link {
                        en.link = text.trim().to_owned();
                    } else {
                        en.updated = text.trim().to_owned();
                    }
                }
                in_rss_link = false;
                in_updated = false;
            }
            Ok(Event::End(e)) => {
                if matches!(e.local_name().as_ref(), b"entry" | b"item") {
                    in_entry = false;
                    links.extend(entry.take().filter(|en| !en.link.is_empty()));
                }
                in_rss_link = false;
                in_updated = false;
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

/// An Atom `<link>`'s `href` (normalized) and `rel`.
fn href_and_rel(e: &quick_xml::events::BytesStart<'_>) -> (Option<String>, Option<String>) {
    let attr = |name: &[u8]| {
        e.attributes()
            .flatten()
            .find(|a| a.key.local_name().as_ref() == name)
    };
    let href = attr(b"href").and_then(|a| {
        a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .ok()
            .map(|v| v.into_owned())
    });
    let rel = attr(b"rel").map(|a| String::from_utf8_lossy(&a.value).into_owned());
    (href, rel)
}

/// Largest feed or CAP document read (a CAP alert is a few kB; feeds of a national service
/// reach a few MB).
pub const MAX_BODY: usize = 8 << 20;
/// Entries and documents remembered as applied, per feed.
const MAX_SEEN: usize = 100_000;
/// The longest back-off after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// `Accept` for a feed URL: Atom, RSS or a CAP document (the media types weather services
/// negotiate on), XML at a lower preference; never JSON.
pub const ACCEPT: &str = "application/atom+xml, application/rss+xml, application/cap+xml, application/xml;q=0.9, text/xml;q=0.8";

/// The `User-Agent`: `marquee/<version> (<contact>)`, as public alert APIs ask of clients so
/// they can reach whoever runs one.
pub fn user_agent(contact: Option<&str>) -> String {
    match contact {
        Some(c) => format!("marquee/{} ({c})", env!("CARGO_PKG_VERSION")),
        None => format!("marquee/{}", env!("CARGO_PKG_VERSION")),
    }
}

/// Why a read failed, and how long the server asked us to wait.
#[derive(Debug)]
pub struct Failure {
    /// `unreachable`, `status`, `not_cap` or `too_large` (the metric's label).
    pub kind: &'static str,
    /// For the log.
    pub message: String,
    /// `Retry-After`, when the server sent one.
    pub retry_after: Option<Duration>,
}

/// A feed URL's validators from its last `200` (RFC 9110 §8.8: `ETag`, `Last-Modified`).
#[derive(Debug, Default, Clone)]
struct Validators {
    etag: Option<String>,
    last_modified: Option<String>,
}

/// `Retry-After` as seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn retry_after(v: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    chrono::DateTime::parse_from_rfc2822(v).ok().map(|t| {
        (t.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or_default()
    })
}

/// GETs `url` politely: conditional when validators are known (`None` on `304 Not
/// Modified`), the body read up to [`MAX_BODY`].
async fn fetch(
    client: &reqwest::Client,
    url: &str,
    validators: Option<&mut Validators>,
) -> Result<Option<String>, Failure> {
    let mut req = client.get(url).header(reqwest::header::ACCEPT, ACCEPT);
    if let Some(v) = validators.as_deref() {
        if let Some(e) = &v.etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, e);
        }
        if let Some(m) = &v.last_modified {
            req = req.header(reqwest::header::IF_MODIFIED_SINCE, m);
        }
    }
    let mut resp = req.send().await.map_err(|e| Failure {
        kind: "unreachable",
        message: e.to_string(),
        retry_after: None,
    })?;
    if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(None);
    }
    if !resp.status().is_success() {
        return Err(Failure {
            kind: "status",
            message: format!("{url} answered {}", resp.status()),
            retry_after: resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after(v, chrono::Utc::now())),
        });
    }
    let header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let (etag, last_modified) = (
        header(reqwest::header::ETAG),
        header(reqwest::header::LAST_MODIFIED),
    );
    let content_type = header(reqwest::header::CONTENT_TYPE).unwrap_or_default();
    if content_type.contains("json") || content_type.contains("html") {
        return Err(Failure {
            kind: "not_cap",
            message: format!("{url} answered {content_type}, not CAP, Atom or RSS"),
            retry_after: None,
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| Failure {
        kind: "unreachable",
        message: e.to_string(),
        retry_after: None,
    })? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(Failure {
                kind: "too_large",
                message: format!("{url} sent more than {} MiB", MAX_BODY >> 20),
                retry_after: None,
            });
        }
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body).map_err(|e| Failure {
        kind: "not_cap",
        message: format!("{url}: not UTF-8: {e}"),
        retry_after: None,
    })?;
    if let Some(v) = validators {
        *v = Validators {
            etag,
            last_modified,
        };
    }
    Ok(Some(text))
}

/// Polls `url` until `cancel`: every `every`, or later after failures (doubling up to ten
/// minutes, or what `Retry-After` asks). An entry already applied (by its link and `<updated>`)
/// is not fetched again; a document that is not CAP is never marked as seen, so it is tried
/// again once the server answers properly.
pub async fn run(
    state: Arc<Ctx>,
    metrics: Metrics,
    url: url::Url,
    every: Duration,
    cancel: CancellationToken,
) {
    let client = match crate::http_client()
        .timeout(Duration::from_secs(30))
        .user_agent(user_agent(state.cfg.cap_contact.as_deref()))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "CAP feed: cannot build an HTTP client");
            return;
        }
    };
    let feed_label = vec![("feed".to_owned(), url.to_string())];
    let fail = |f: &Failure| {
        let mut l = feed_label.clone();
        l.push(("kind".to_owned(), f.kind.to_owned()));
        metrics.cap_feed_errors.get_or_create(&l).inc();
    };
    let mut validators = Validators::default();
    // Entries (link + updated) and documents (CAP identity) already applied or refused as CAP.
    let mut seen_entries: HashSet<String> = HashSet::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut wait = Duration::ZERO;
    let mut failures = 0u32;
    loop {
        // Bounded memory: forgetting old keys costs at most a re-read (documents are keyed by
        // CAP identity and an applied alert answers `duplicate`).
        if seen_entries.len() > MAX_SEEN {
            seen_entries.clear();
        }
        if seen.len() > MAX_SEEN {
            seen.clear();
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let outcome = poll(
            &state,
            &client,
            &url,
            &mut validators,
            &mut seen_entries,
            &mut seen,
            &fail,
        )
        .await;
        wait = match outcome {
            Ok(()) => {
                failures = 0;
                metrics
                    .cap_feed_last_success
                    .get_or_create(&feed_label)
                    .set(chrono::Utc::now().timestamp());
                every
            }
            Err(f) => {
                fail(&f);
                failures += 1;
                // Retry-After is honoured up to the longest back-off: an emergency feed is
                // never left for longer on a server's word.
                let backoff = every
                    .saturating_mul(1u32 << failures.min(10))
                    .max(f.retry_after.unwrap_or_default())
                    .min(MAX_BACKOFF);
                tracing::warn!(feed = %url, kind = f.kind, error = %f.message, retry_in = ?backoff, "CAP feed read failed; backing off");
                backoff
            }
        };
    }
}

/// One read of a feed: the feed (conditional), then each new entry's CAP document.
async fn poll(
    state: &Ctx,
    client: &reqwest::Client,
    url: &url::Url,
    validators: &mut Validators,
    seen_entries: &mut HashSet<String>,
    seen: &mut HashSet<String>,
    fail: &impl Fn(&Failure),
) -> Result<(), Failure> {
    let Some(body) = fetch(client, url.as_str(), Some(validators)).await? else {
        return Ok(()); // 304: nothing new
    };
    // Something of this read must be tried again: the next read asks for the feed in full
    // (a 304 would hide the entries that failed).
    let mut incomplete = false;
    let docs: Vec<Doc> = match classify(&body) {
        Body::Alert => vec![(url.to_string(), None, body)],
        Body::Feed(entries) => {
            read_entries(client, url, entries, seen_entries, fail, &mut incomplete).await
        }
        Body::Other(why) => {
            // Validators of an answer that is not a feed are not kept: ask again in full.
            *validators = Validators::default();
            return Err(Failure {
                kind: "not_cap",
                message: why,
                retry_after: None,
            });
        }
    };
    incomplete |= apply_in_order(state, docs, seen_entries, seen, fail).await;
    if incomplete {
        *validators = Validators::default();
    }
    Ok(())
}

/// A fetched document: where from, its feed entry's key (none for a feed that is itself a
/// CAP document), and its text.
type Doc = (String, Option<String>, String);

/// Reads the first [`MAX_ENTRIES`] entries of a feed not yet applied (in an oldest-first feed,
/// the newest come after: they are reached as the older ones are applied); an entry that
/// cannot be read sets `incomplete`.
async fn read_entries(
    client: &reqwest::Client,
    url: &url::Url,
    entries: Vec<Entry>,
    seen_entries: &HashSet<String>,
    fail: &impl Fn(&Failure),
    incomplete: &mut bool,
) -> Vec<Doc> {
    let fresh: Vec<(url::Url, String)> = entries
        .into_iter()
        .filter_map(|entry| match url.join(&entry.link) {
            Ok(abs) => Some((abs.clone(), format!("{abs}|{}", entry.updated))),
            Err(_) => {
                tracing::warn!(feed = %url, link = entry.link, "CAP feed: bad entry link");
                None
            }
        })
        .filter(|(_, key)| !seen_entries.contains(key))
        .take(MAX_ENTRIES)
        .collect();
    let mut docs = Vec::new();
    for (abs, key) in fresh {
        match fetch(client, abs.as_str(), None).await {
            Ok(Some(d)) => docs.push((abs.to_string(), Some(key), d)),
            Ok(None) => {}
            Err(f) => {
                fail(&f);
                *incomplete = true;
                tracing::warn!(entry = %abs, kind = f.kind, error = %f.message, "CAP feed entry not read; tried again next poll");
            }
        }
    }
    docs
}

/// Applies each document once, oldest first by CAP `sent` (a Cancel or Update read in the same
/// pass as the alert it references, feeds listing newest first, is applied after it); whether
/// something must be tried again.
async fn apply_in_order(
    state: &Ctx,
    docs: Vec<Doc>,
    seen_entries: &mut HashSet<String>,
    seen: &mut HashSet<String>,
    fail: &impl Fn(&Failure),
) -> bool {
    let mut incomplete = false;
    let mut docs: Vec<_> = docs
        .into_iter()
        .map(|(from, entry_key, doc)| {
            let cap = crate::domain::cap::parse(&doc).ok();
            (from, entry_key, doc, cap)
        })
        .collect();
    docs.sort_by_key(|(_, _, _, cap)| {
        cap.as_ref()
            .and_then(|a| chrono::DateTime::parse_from_rfc3339(a.sent.trim()).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    });
    for (from, entry_key, doc, cap) in docs {
        if cap.is_none() && !matches!(classify(&doc), Body::Alert) {
            fail(&Failure {
                kind: "not_cap",
                message: String::new(),
                retry_after: None,
            });
            tracing::warn!(entry = %from, "CAP feed entry is not a CAP document; not marked as seen, tried again next poll");
            incomplete = true;
            continue;
        }
        // Known by its CAP identity (identifier, sender, sent); a refused one by where and size.
        let key = cap.map_or_else(
            || format!("{from}|{}", doc.len()),
            |d| format!("{}|{}|{}", d.identifier, d.sender, d.sent),
        );
        if seen.contains(&key) {
            seen_entries.extend(entry_key);
            continue;
        }
        match super::apply_cap(state, ACTOR, &doc).await {
            Ok(v) => {
                tracing::info!(entry = %from, action = v.action, id = v.id.as_deref().unwrap_or(""), "CAP feed document applied");
                seen.insert(key);
                seen_entries.extend(entry_key);
            }
            Err(e) if e.is_refusal() => {
                tracing::warn!(entry = %from, error = %e, "CAP feed document refused");
                seen.insert(key);
                seen_entries.extend(entry_key);
            }
            Err(e) => {
                incomplete = true;
                tracing::error!(entry = %from, error = %e, "CAP feed document failed; trying again next poll");
            }
        }
    }
    incomplete
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
        let e = |link: &str, updated: &str| Entry {
            link: link.into(),
            updated: updated.into(),
        };
        assert_eq!(
            classify(atom),
            Body::Feed(vec![e("/cap/1.xml", ""), e("http://x/cap/2.xml", "")])
        );
        let rss = "<rss><channel><link>http://x/</link><item><link> http://x/a.xml </link><pubDate>Tue, 01 Dec 2026 06:00:00 +0800</pubDate></item></channel></rss>";
        assert_eq!(
            classify(rss),
            Body::Feed(vec![e("http://x/a.xml", "Tue, 01 Dec 2026 06:00:00 +0800")])
        );
        let updated = r#"<feed xmlns="http://www.w3.org/2005/Atom"><entry><id>1</id><updated>2026-12-01T06:00:00+08:00</updated>
            <link rel="related" href="/other"/><link rel="alternate" href="/cap/1.xml"/></entry></feed>"#;
        assert_eq!(
            classify(updated),
            Body::Feed(vec![e("/cap/1.xml", "2026-12-01T06:00:00+08:00")])
        );
        assert!(matches!(classify("<html></html>"), Body::Other(_)));
        assert!(matches!(classify("<alert><x></alert>"), Body::Alert));
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T06:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Tue, 01 Dec 2026 06:01:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(retry_after("soon", now), None);
        assert!(user_agent(Some("ops@city.example")).ends_with("(ops@city.example)"));
    }
}
