//! CAP 1.2 alerts through `POST /api/v1/alerts/cap`, shown by a real agent.

use serde_json::Value;

use crate::harness::*;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(repo().join("tests/fixtures/cap").join(name)).unwrap()
}

async fn post_cap(d: &Daemon, token: &str, xml: String) -> (u16, Value) {
    let resp = marquee::http_client()
        .build()
        .unwrap()
        .post(format!("{}/api/v1/alerts/cap", d.http))
        .bearer_auth(token)
        .header("content-type", "application/xml")
        .body(xml)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn cap_alert_update_cancel_test_and_malformed() {
    let port = free_port();
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), "");
    site.append_config("[[cap.areas]]\narea_desc = \"Pudong\"\nchannels = [\"lobby\"]\n");
    let d = Daemon::start(&site).await;
    let admin = site.admin_token();
    let mut agent = AgentProc::start(&agent_config(&d, &site, "lobby-cap-1", "lobby", port), &[]);
    agent
        .frame("normal content", |v| v["kind"] == "timeline")
        .await;

    // Alert: multilingual, mapped to the lobby channel.
    let (s, r) = post_cap(&d, &admin, fixture("alert.xml")).await;
    assert_eq!((s, r["action"].as_str()), (201, Some("raised")), "{r}");
    assert_eq!(r["published"][0]["topic"], "marquee/v1/alert/lobby");
    let f = agent.frame("the CAP alert", |v| v["kind"] == "alert").await;
    assert!(
        [
            "台风红色预警: 请留在室内",
            "Typhoon red warning: Stay indoors"
        ]
        .contains(&text_of(&f)),
        "{f}"
    );
    let id = r["id"].as_str().unwrap().to_owned();

    // The same message again changes nothing.
    let (s, r) = post_cap(&d, &admin, fixture("alert.xml")).await;
    assert_eq!((s, r["action"].as_str()), (200, Some("duplicate")));

    // Update: replaces the referenced alert.
    let (s, r) = post_cap(&d, &admin, fixture("update.xml")).await;
    assert_eq!((s, r["action"].as_str()), (201, Some("updated")), "{r}");
    assert_eq!(r["ended"], serde_json::json!([id]));
    agent
        .frame("the updated alert", |v| {
            [
                "台风预警升级: 请留在室内",
                "Typhoon warning upgraded: Stay indoors",
            ]
            .contains(&text_of(v))
        })
        .await;

    // Cancel: the screen goes back to its schedule.
    let n = agent.frames.lock().unwrap().len();
    let (s, r) = post_cap(&d, &admin, fixture("cancel.xml")).await;
    assert_eq!((s, r["action"].as_str()), (200, Some("cancelled")), "{r}");
    let frames = agent.frames.clone();
    eventually("normal content after the cancel", || {
        frames.lock().unwrap()[n..]
            .iter()
            .any(|v| v["kind"] == "timeline")
            .then_some(())
    })
    .await;

    // Test status and minor events never reach screens; malformed XML is a precise 400.
    let (s, r) = post_cap(&d, &admin, fixture("test-status.xml")).await;
    assert_eq!((s, r["action"].as_str()), (200, Some("ignored")));
    assert!(r["reason"].as_str().unwrap().contains("status Test"), "{r}");
    let (s, r) = post_cap(&d, &admin, fixture("minor.xml")).await;
    assert_eq!((s, r["action"].as_str()), (200, Some("ignored")));
    assert!(
        r["reason"].as_str().unwrap().contains("severity Minor"),
        "{r}"
    );
    let (s, r) = post_cap(&d, &admin, fixture("malformed.xml")).await;
    assert_eq!(s, 400);
    assert_eq!(r["error"]["field"], "body");
    assert!(
        r["error"]["message"].as_str().unwrap().starts_with("3:"),
        "{r}"
    );
    let (_, list) = d.get("/api/v1/alerts", Some(&admin)).await;
    assert_eq!(
        list["alerts"].as_array().unwrap().len(),
        2,
        "only the two real alerts were raised"
    );
    assert!(!agent.shown(|v| text_of(v).contains("test") || text_of(v).contains("rain")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_atom_feed_raises_updates_and_cancels() {
    // The feed: an Atom document whose entries link to CAP documents (served from `docs`).
    let docs: std::sync::Arc<std::sync::Mutex<Vec<String>>> =
        std::sync::Arc::new(std::sync::Mutex::new(vec![fixture("alert.xml")]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let feed_url = format!("http://{}/feed.atom", listener.local_addr().unwrap());
    let (d1, d2) = (docs.clone(), docs.clone());
    let app = axum::Router::new()
        .route(
            "/feed.atom",
            axum::routing::get(move || {
                let n = d1.lock().unwrap().len();
                let entries: String = (0..n)
                    .map(|i| format!("<entry><id>{i}</id><link href=\"/cap/{i}.xml\"/></entry>"))
                    .collect();
                async move {
                    format!("<feed xmlns=\"http://www.w3.org/2005/Atom\"><title>t</title>{entries}</feed>")
                }
            }),
        )
        .route(
            "/cap/{file}",
            axum::routing::get(move |axum::extract::Path(file): axum::extract::Path<String>| {
                let i: usize = file.trim_end_matches(".xml").parse().unwrap();
                let doc = d2.lock().unwrap()[i].clone();
                async move { doc }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let site = Site::new(&format!("listen = \"127.0.0.1:{}\"", free_port()), "");
    site.append_config(&format!(
        "[cap]\nfeed_url = \"{feed_url}\"\nfeed_interval = \"200ms\"\n"
    ));
    let d = Daemon::start(&site).await;
    let admin = site.admin_token();
    let live = |list: &Value| -> Vec<String> {
        list["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["cleared_at"].is_null())
            .map(|a| a["text"]["en"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    eventually_async("the feed's alert raised", || async {
        let (_, list) = d.get("/api/v1/alerts", Some(&admin)).await;
        (live(&list).len() == 1).then_some(())
    })
    .await;
    // An Update in the feed replaces it; a Cancel ends the update.
    docs.lock().unwrap().push(fixture("update.xml"));
    let after_update = eventually_async("the update applied", || async {
        let (_, list) = d.get("/api/v1/alerts", Some(&admin)).await;
        let all = list["alerts"].as_array().unwrap().len();
        (all == 2 && live(&list).len() == 1).then_some(list)
    })
    .await;
    assert_eq!(
        after_update["alerts"].as_array().unwrap().len(),
        2,
        "no duplicate on re-reads"
    );
    docs.lock().unwrap().push(fixture("cancel.xml"));
    eventually_async("the cancel applied", || async {
        let (_, list) = d.get("/api/v1/alerts", Some(&admin)).await;
        live(&list).is_empty().then_some(())
    })
    .await;
    let (_, audit) = d.get("/api/v1/audit", Some(&admin)).await;
    let by_feed = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "cap-feed")
        .count();
    assert!(by_feed >= 3, "{audit}");
}

/// Field shapes on a real agent: a prefixed national alert is shown; a warning ends on the
/// screen when an AllClear Update references it; an alert whose `<effective>` is ahead is held
/// and shown from then on, by an agent that got it before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_cap_shapes_reach_a_real_agent_as_their_producers_mean() {
    let port = free_port();
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), "");
    let d = Daemon::start(&site).await;
    let admin = site.admin_token();
    let mut agent = AgentProc::start(&agent_config(&d, &site, "lobby-cap-2", "lobby", port), &[]);
    agent
        .frame("normal content", |v| v["kind"] == "timeline")
        .await;

    // `<cap:alert xmlns:cap=…>`: the same as the unprefixed form.
    let (s, r) = post_cap(&d, &admin, fixture("cap-prefixed-namespace.xml")).await;
    assert_eq!((s, r["action"].as_str()), (201, Some("raised")), "{r}");
    let f = agent
        .frame("the prefixed alert", |v| v["kind"] == "alert")
        .await;
    let prefixed = r["id"].as_str().unwrap().to_owned();
    let (s, _) = d
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/alerts/{prefixed}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 200, "{f}");
    agent
        .frame("normal content again", |v| v["kind"] == "timeline")
        .await;

    // A warning, then an Update (AllClear, Past, Minor) that references it: the warning ends.
    let (s, r) = post_cap(&d, &admin, fixture("cap-warning.xml")).await;
    assert_eq!((s, r["action"].as_str()), (201, Some("raised")), "{r}");
    let warning = r["id"].as_str().unwrap().to_owned();
    agent
        .frame("the warning", |v| {
            v["kind"] == "alert" && text_of(v).contains("Flash Flood")
        })
        .await;
    let (s, r) = post_cap(&d, &admin, fixture("cap-update-allclear.xml")).await;
    assert_eq!((s, r["action"].as_str()), (200, Some("ended")), "{r}");
    assert_eq!(r["ended"], serde_json::json!([warning]), "{r}");
    assert_eq!(r["ends"][0]["by"], "Update", "{r}");
    assert!(r["reason"].as_str().unwrap().contains("AllClear"), "{r}");
    agent
        .frame("normal content after the all-clear", |v| {
            v["kind"] == "timeline"
        })
        .await;
    let (_, a) = d
        .get(&format!("/api/v1/alerts/{warning}"), Some(&admin))
        .await;
    assert!(!a["alert"]["cleared_at"].is_null(), "{a}");
    let (_, audit) = d.get("/api/v1/audit", Some(&admin)).await;
    assert!(
        audit["entries"].as_array().unwrap().iter().any(|e| {
            let detail: Value =
                serde_json::from_str(e["detail"].as_str().unwrap_or("null")).unwrap();
            e["action"] == "cap.end" && detail["ended"][0]["id"] == warning.as_str()
        }),
        "the audit says which alert the Update ended: {audit}"
    );
    // The same all-clear read again names the warning as already ended and clears nothing twice.
    let (s, r) = post_cap(&d, &admin, fixture("cap-update-allclear.xml")).await;
    assert_eq!(
        (s, &r["ends"][0]["was_on"]),
        (200, &serde_json::json!(false)),
        "{r}"
    );
    let (_, audit) = d.get("/api/v1/audit", Some(&admin)).await;
    let clears = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "alert.clear" && e["target"] == warning.as_str())
        .count();
    assert_eq!(clears, 1, "{audit}");

    // A live alert on every screen, then one effective three seconds from now: the new one is
    // published at once on the held topic (the agent holds it) and takes over from its
    // effective time, not before; the live one is not displaced meanwhile.
    let (s, live) = d
        .send(
            reqwest::Method::POST,
            "/api/v1/alerts",
            Some(&admin),
            Some(serde_json::json!({"text": {"en": "live drill"}, "scope": "all", "severity": "moderate", "expires_in": "10m"})),
        )
        .await;
    assert_eq!(s, 201, "{live}");
    agent
        .frame("the live drill", |v| text_of(v) == "live drill")
        .await;
    // CAP times are whole seconds.
    let effective =
        chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() + 3, 0).unwrap();
    let xml = fixture("cap-warning.xml")
        .replace("EX-WARN-2026-0042", "EX-WARN-2026-0099")
        .replace(
            "<expires>",
            &format!(
                "<effective>{}</effective><expires>",
                effective.to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
            ),
        );
    let (s, r) = post_cap(&d, &admin, xml).await;
    assert_eq!((s, r["action"].as_str()), (201, Some("scheduled")), "{r}");
    agent
        .wait_log("the agent holding the alert", |v| {
            v["message"] == "alert held until its start"
        })
        .await;
    assert!(
        chrono::Utc::now() < effective,
        "the test machine was too slow to see the hold"
    );
    assert_eq!(
        agent
            .frames
            .lock()
            .unwrap()
            .last()
            .map(|v| text_of(v).to_owned()),
        Some("live drill".to_owned()),
        "the held alert does not displace the live one"
    );
    let id = r["id"].as_str().unwrap().to_owned();
    let frames = agent.frames.clone();
    let f = eventually("the held alert on screen", || {
        frames
            .lock()
            .unwrap()
            .iter()
            .find(|v| v["kind"] == "alert" && v["item"] == id.as_str())
            .cloned()
    })
    .await;
    let shown: chrono::DateTime<chrono::Utc> = f["start"].as_str().unwrap().parse().unwrap();
    assert!(
        shown >= effective,
        "shown at {shown}, effective {effective}: {f}"
    );
    // The daemon starts it too (status live, published again as a plain alert).
    eventually_async("the daemon marks it live", || async {
        let (_, a) = d.get(&format!("/api/v1/alerts/{id}"), Some(&admin)).await;
        (a["alert"]["status"] == "live").then_some(())
    })
    .await;
}

/// A loopback feed that behaves like a public alert API: 403 without a `User-Agent` naming the
/// client or without an `Accept` for Atom; `304` to a conditional request; JSON for the entry
/// until it is asked properly. The alert arrives, entries are not downloaded again, and the
/// JSON answer is never taken as "seen".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polite_feed_client_gets_what_a_strict_server_serves() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    #[derive(Default)]
    struct Counts {
        feed_200: AtomicUsize,
        feed_304: AtomicUsize,
        refused: AtomicUsize,
        entry: AtomicUsize,
        entry_json: AtomicUsize,
    }
    let counts = Arc::new(Counts::default());
    let warning = fixture("cap-warning.xml");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let feed_url = format!("http://{}/feed.atom", listener.local_addr().unwrap());
    let polite = |h: &axum::http::HeaderMap| {
        let ua = h
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let accept = h.get("accept").and_then(|v| v.to_str().ok()).unwrap_or("");
        ua.starts_with("marquee/")
            && ua.contains("(ops@city.example)")
            && accept.contains("application/atom+xml")
    };
    let (c1, c2) = (counts.clone(), counts.clone());
    let app = axum::Router::new()
        .route(
            "/feed.atom",
            axum::routing::get(move |h: axum::http::HeaderMap| {
                let c = c1.clone();
                async move {
                    use axum::response::IntoResponse;
                    if !polite(&h) {
                        c.refused.fetch_add(1, Ordering::SeqCst);
                        return (axum::http::StatusCode::FORBIDDEN, "name yourself").into_response();
                    }
                    if h.get("if-none-match").and_then(|v| v.to_str().ok()) == Some("\"v1\"") {
                        c.feed_304.fetch_add(1, Ordering::SeqCst);
                        return axum::http::StatusCode::NOT_MODIFIED.into_response();
                    }
                    c.feed_200.fetch_add(1, Ordering::SeqCst);
                    (
                        [("etag", "\"v1\""), ("content-type", "application/atom+xml")],
                        "<feed xmlns=\"http://www.w3.org/2005/Atom\"><title>t</title><entry><id>w</id><updated>2026-11-29T10:00:00Z</updated><link href=\"/cap/w.xml\"/></entry></feed>",
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/cap/w.xml",
            axum::routing::get(move |h: axum::http::HeaderMap| {
                let (c, doc) = (c2.clone(), warning.clone());
                async move {
                    use axum::response::IntoResponse;
                    c.entry.fetch_add(1, Ordering::SeqCst);
                    // The first answer is the server's JSON rendition (content negotiation
                    // gone wrong): it must not count as seen.
                    if c.entry_json.load(Ordering::SeqCst) == 0 || !polite(&h) {
                        c.entry_json.fetch_add(1, Ordering::SeqCst);
                        return ([("content-type", "application/geo+json")], "{\"type\":\"Feature\"}").into_response();
                    }
                    ([("content-type", "application/cap+xml")], doc).into_response()
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let site = Site::new(&format!("listen = \"127.0.0.1:{}\"", free_port()), "");
    site.append_config(&format!(
        "[cap]\ncontact = \"ops@city.example\"\n[[cap.feeds]]\nurl = \"{feed_url}\"\ninterval = \"100ms\"\n"
    ));
    let d = Daemon::start(&site).await;
    let admin = site.admin_token();
    eventually_async("the feed's alert raised", || async {
        let (_, list) = d.get("/api/v1/alerts", Some(&admin)).await;
        (list["alerts"].as_array().unwrap().len() == 1).then_some(())
    })
    .await;
    // Later polls are conditional and answered 304; the entry is not fetched again.
    let before = counts.feed_304.load(Ordering::SeqCst);
    eventually("more conditional polls", || {
        (counts.feed_304.load(Ordering::SeqCst) >= before + 3).then_some(())
    })
    .await;
    assert_eq!(counts.refused.load(Ordering::SeqCst), 0, "always polite");
    assert_eq!(
        counts.feed_200.load(Ordering::SeqCst),
        2,
        "the feed in full twice: once with the JSON entry, once when it was CAP"
    );
    assert_eq!(
        counts.entry.load(Ordering::SeqCst),
        2,
        "the entry: the JSON answer, then the CAP document, then never again"
    );
    let metrics = d.get("/metrics", Some(&admin)).await.1;
    let text = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains("marquee_cap_feed_errors_total{feed=") && text.contains("kind=\"not_cap\""),
        "{text}"
    );
    assert!(
        text.contains("marquee_cap_feed_last_success{feed="),
        "{text}"
    );
}

/// A Chinese national early-warning release with a polygon reaches the display inside it and
/// not the one outside (displays located in the config).
#[tokio::test]
async fn a_polygon_alert_reaches_only_the_displays_inside() {
    let site = Site::new(&format!("listen = \"127.0.0.1:{}\"", free_port()), "");
    site.append_config(
        "[[schedule.displays]]\nid = \"bus-in\"\nchannel = \"bus\"\nlat = 23.05\nlon = 113.32\n\
         [[schedule.displays]]\nid = \"bus-out\"\nchannel = \"bus\"\nlat = 22.95\nlon = 113.20\n",
    );
    let d = Daemon::start(&site).await;
    let admin = site.admin_token();
    let now = chrono::Utc::now();
    let at = |t: chrono::DateTime<chrono::Utc>| {
        t.with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap())
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
    };
    let xml = std::fs::read_to_string(
        repo().join("tests/fixtures/cap/field/cn-national-early-warning.xml"),
    )
    .unwrap()
    .replace(
        "2026-07-18T14:30:00+08:00",
        &at(now - chrono::Duration::minutes(1)),
    )
    .replace(
        "2026-07-18T20:30:00+08:00",
        &at(now + chrono::Duration::hours(1)),
    );
    let (s, r) = post_cap(&d, &admin, xml).await;
    assert_eq!((s, r["action"].as_str()), (201, Some("raised")), "{r}");
    let topics: Vec<&str> = r["published"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["marquee/v1/alert/bus-in"], "{r}");
}

/// A feed read newest first hands the all-clear before the warning it ends: the warning, when
/// it comes, is not raised.
#[tokio::test]
async fn an_all_clear_read_before_its_warning_keeps_the_warning_off_screens() {
    let site = Site::new(&format!("listen = \"127.0.0.1:{}\"", free_port()), "");
    let d = Daemon::start(&site).await;
    let admin = site.admin_token();
    let (s, r) = post_cap(&d, &admin, fixture("cap-update-allclear.xml")).await;
    assert_eq!((s, r["action"].as_str()), (200, Some("ignored")), "{r}");
    assert_eq!(r["unknown"].as_array().unwrap().len(), 1, "{r}");
    let (s, r) = post_cap(&d, &admin, fixture("cap-warning.xml")).await;
    assert_eq!(
        (s, r["action"].as_str()),
        (200, Some("ended_before")),
        "{r}"
    );
    assert!(r.get("published").is_none(), "{r}");
}
