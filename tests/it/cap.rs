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
    let mut agent = AgentProc::start(&agent_config(&site, "lobby-cap-1", "lobby", port), &[]);
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
