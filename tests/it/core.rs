//! The core slice end to end: playlist files → signed retained timelines on a real broker.

use chrono::Duration;
use serde_json::Value;

use crate::harness::*;

const LOBBY: &str = "marquee/v1/channel/lobby/timeline";
const SUBWAY: &str = "marquee/v1/channel/subway/timeline";
const LOBBY_DISPLAY: &str = "marquee/v1/display/lobby-east-1/timeline";
const PUBLISHED: &str = "marquee_timelines_published_total";

/// A playlist live right now on the lobby channel only.
fn lobby_now(text: &str) -> String {
    format!(
        r#"{{
  "id": "test-lobby",
  "targets": {{"channels": ["lobby"]}},
  "schedule": [{{"start": "00:00", "end": "00:00"}}],
  "items": [{{"id": "t1", "text": {{"zh": "测试", "en": "{text}"}}, "seconds": 5}}]
}}
"#
    )
}

fn shows(tl: &marquee::wire::Timeline, text: &str) -> bool {
    tl.segments.iter().any(|s| {
        s.items
            .iter()
            .any(|i| i.text.get("en").is_some_and(|t| t == text))
    })
}

fn embedded(port: u16) -> String {
    format!("embedded = true\nlisten = \"127.0.0.1:{port}\"")
}

/// Every channel gets one signed, retained 48 h timeline that tiles its horizon.
async fn check_initial_timelines(sub: &mut Sub, key: &marquee::wire::PublicKey) {
    for ch in ["lobby", "subway", "bus", "public"] {
        let topic = format!("marquee/v1/channel/{ch}/timeline");
        let (version, tl) = sub.timeline(key, &topic, 1).await;
        assert_eq!(version, 1, "{topic}");
        assert_eq!(tl.until - tl.from, Duration::hours(48));
        assert_eq!(tl.segments.first().unwrap().from, tl.from);
        assert_eq!(tl.segments.last().unwrap().until, tl.until);
        assert!(tl.segments.windows(2).all(|w| w[0].until == w[1].from));
        // The fallback playlist covers every hour, so no stretch is empty.
        assert!(tl.segments.iter().all(|s| !s.items.is_empty()), "{topic}");
    }
}

#[tokio::test]
async fn embedded_broker_files_to_signed_timelines_edit_break_restart() {
    let port = free_port();
    let site = Site::new(&embedded(port), "");
    let mut d = Daemon::start(&site).await;
    let key = site.public_key();
    let token = site.admin_token();
    let mut sub = Sub::connect(port, "marquee/v1/#").await;
    check_initial_timelines(&mut sub, &key).await;
    let (v, _) = sub.timeline(&key, LOBBY_DISPLAY, 1).await;
    assert_eq!(v, 1);
    assert_eq!(d.metric(&token, PUBLISHED).await, 5.0);

    // Editing a playlist whose dates are over changes nothing on screen: nothing is republished.
    site.edit("open-day-2021-lobby", "Call 12345", "Dial 12345");
    assert_eq!(d.reload_applied(1).await, 0);

    // A new lobby playlist: lobby and its individually targeted display change, nothing else.
    std::fs::write(site.playlist("test-lobby"), lobby_now("first words")).unwrap();
    let (v, tl) = sub.timeline(&key, LOBBY, 2).await;
    assert_eq!(v, 2);
    assert!(shows(&tl, "first words"));
    assert_eq!(d.reload_applied(2).await, 2);
    assert_eq!(d.metric(&token, PUBLISHED).await, 7.0);

    // Edit it: a new version with the new text.
    site.edit("test-lobby", "first words", "second words");
    let (v, tl) = sub.timeline(&key, LOBBY, 3).await;
    assert_eq!(v, 3);
    assert!(shows(&tl, "second words") && !shows(&tl, "first words"));

    // Break it: the error names file:line:col, the last good version stays live.
    site.edit("test-lobby", "[\"lobby\"]", "[\"lobby\", \"tram\"]");
    let path = site.playlist("test-lobby").display().to_string();
    let err = d
        .wait_log("the located error", |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&format!("{path}:3:37: unknown channel \"tram\"")))
        })
        .await;
    assert_eq!(err["level"], "ERROR");
    assert_eq!(d.reload_applied(4).await, 0);
    let mut fresh = Sub::connect(port, LOBBY).await;
    let (v, tl) = fresh.timeline(&key, LOBBY, 1).await;
    assert_eq!(v, 3, "the retained timeline is still the last good one");
    assert!(shows(&tl, "second words"));
    let (status, body) = d.get("/api/v1/playlists/test-lobby", Some(&token)).await;
    assert_eq!(status, 200);
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("unknown channel")
    );

    // Restart: the versions continue, nothing is republished needlessly, and the (new, empty)
    // embedded broker gets the retained state back.
    assert_eq!(d.stop().await, Some(0));
    let d = Daemon::start(&site).await;
    let mut after = Sub::connect(port, "marquee/v1/#").await;
    let (v, tl) = after.timeline(&key, LOBBY, 1).await;
    assert_eq!(v, 3);
    assert!(shows(&tl, "second words"));
    let (v, _) = after.timeline(&key, SUBWAY, 1).await;
    assert_eq!(v, 1);
    assert_eq!(d.metric(&token, PUBLISHED).await, 0.0);
}

#[tokio::test]
async fn mosquitto_broker_restart_and_daemon_kill() {
    let mq = Mosquitto::start().await;
    let site = Site::new(&mq.section(), "");
    let d = Daemon::start(&site).await;
    let key = site.public_key();
    let token = site.admin_token();
    let mut sub = Sub::connect(mq.port, "marquee/v1/#").await;
    check_initial_timelines(&mut sub, &key).await;

    std::fs::write(site.playlist("test-lobby"), lobby_now("via mosquitto")).unwrap();
    let (v, tl) = sub.timeline(&key, LOBBY, 2).await;
    assert_eq!(v, 2);
    assert!(shows(&tl, "via mosquitto"));

    // The broker dies and comes back empty: the daemon reconnects and re-asserts its state.
    let mq = mq.restart().await;
    let mut fresh = Sub::connect(mq.port, "marquee/v1/#").await;
    let (v, _) = fresh.timeline(&key, LOBBY, 1).await;
    assert_eq!(v, 2);
    let (v, _) = fresh.timeline(&key, SUBWAY, 1).await;
    assert_eq!(v, 1);
    assert_eq!(d.metric(&token, "marquee_mqtt_connects_total").await, 2.0);

    // kill -9 the daemon: a new one continues the versions and publishes nothing new.
    d.signal("KILL");
    drop(d);
    let d = Daemon::start(&site).await;
    assert_eq!(d.metric(&token, PUBLISHED).await, 0.0);
    site.edit("test-lobby", "via mosquitto", "after the crash");
    let (v, tl) = fresh.timeline(&key, LOBBY, 3).await;
    assert_eq!(v, 3);
    assert!(shows(&tl, "after the crash"));
}

#[tokio::test]
async fn overwritten_retained_topics_are_restored_and_strays_cleared() {
    let port = free_port();
    let site = Site::new(&embedded(port), "");
    let mut d = Daemon::start(&site).await;
    let key = site.public_key();
    let mut sub = Sub::connect(port, "marquee/v1/#").await;
    let (v, _) = sub.timeline(&key, SUBWAY, 1).await;

    sub.client
        .publish(SUBWAY, rumqttc::QoS::AtLeastOnce, true, b"HACKED".to_vec())
        .await
        .unwrap();
    sub.wait("the forged payload", |m| {
        m.topic == SUBWAY && m.payload == b"HACKED"
    })
    .await;
    let (restored, _) = sub.timeline(&key, SUBWAY, 1).await;
    assert_eq!(restored, v, "restored with the same signed version");
    let mut fresh = Sub::connect(port, SUBWAY).await;
    let m = fresh
        .wait("retained subway timeline", |m| m.topic == SUBWAY)
        .await;
    assert!(
        m.verified(&key).is_ok(),
        "the retained payload is ours again"
    );

    // A stray retained timeline on a topic the daemon does not publish is cleared.
    let stray = "marquee/v1/display/rogue/timeline";
    sub.client
        .publish(stray, rumqttc::QoS::AtLeastOnce, true, b"{}".to_vec())
        .await
        .unwrap();
    sub.wait("the stray to be cleared", |m| {
        m.topic == stray && m.payload.is_empty()
    })
    .await;
    d.wait_log("the stray warning", |v| {
        v["message"] == "unexpected retained payload on a Marquee topic; clearing it"
    })
    .await;
}

/// A daemon on its embedded broker with `schedule` settings, and a subscriber that already
/// holds the lobby's first timeline.
async fn lobby_with(schedule: &str) -> (Site, Daemon, marquee::wire::PublicKey, Sub) {
    let port = free_port();
    let site = Site::new(&embedded(port), schedule);
    let d = Daemon::start(&site).await;
    let key = site.public_key();
    let mut sub = Sub::connect(port, LOBBY).await;
    sub.timeline(&key, LOBBY, 1).await;
    (site, d, key, sub)
}

#[tokio::test]
async fn sighup_reloads_when_watching_is_off() {
    let (site, mut d, key, mut sub) = lobby_with("watch = false").await;
    std::fs::write(site.playlist("test-lobby"), lobby_now("on hangup")).unwrap();
    d.signal("HUP");
    let (v, tl) = sub.timeline(&key, LOBBY, 2).await;
    assert_eq!(v, 2);
    assert!(shows(&tl, "on hangup"));
    assert_eq!(d.reload_applied(1).await, 2);
}

/// The debounce only holds back files still open for writing: a playlist written and closed, or
/// renamed into place, goes live at once (here the debounce is an hour).
#[tokio::test]
async fn finished_writes_do_not_wait_for_the_debounce() {
    let (site, mut d, key, mut sub) = lobby_with("debounce = \"1h\"").await;
    std::fs::write(site.playlist("test-lobby"), lobby_now("written in place")).unwrap();
    let (v, tl) = sub.timeline(&key, LOBBY, 2).await;
    assert_eq!(v, 2);
    assert!(shows(&tl, "written in place"));
    site.edit("test-lobby", "written in place", "renamed into place");
    let (v, tl) = sub.timeline(&key, LOBBY, 3).await;
    assert_eq!(v, 3);
    assert!(shows(&tl, "renamed into place"));
    assert_eq!(d.reload_applied(2).await, 2);
}

/// A file that is never closed and keeps changing (a stuck writer) still goes live: the reload
/// waits at most ten debounces.
#[tokio::test]
async fn a_file_that_never_stops_changing_is_still_read() {
    use std::io::Write;
    let (site, _d, key, mut sub) = lobby_with("debounce = \"200ms\"").await;
    // A writer that keeps the file open and appends a space every 50 ms, well inside the
    // debounce, until the test ends.
    let mut file = std::fs::File::create(site.playlist("test-lobby")).unwrap();
    file.write_all(lobby_now("never closed").as_bytes())
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                file.write_all(b" ").unwrap();
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        })
    };
    let (v, tl) = sub.timeline(&key, LOBBY, 2).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(v, 2);
    assert!(shows(&tl, "never closed"));
}

#[tokio::test]
async fn http_api_authenticates_and_previews() {
    let port = free_port();
    let site = Site::new(&embedded(port), "");
    let d = Daemon::start(&site).await;
    let token = site.admin_token();

    let (s, body) = d.get("/healthz", None).await;
    assert_eq!((s, body["status"].as_str()), (200, Some("ok")));
    for path in [
        "/metrics",
        "/api/v1/playlists",
        "/api/v1/playlists/fallback",
        "/api/v1/preview?channel=lobby",
    ] {
        let (s, body) = d.get(path, None).await;
        assert_eq!(s, 401, "{path} without a token");
        assert_eq!(body["error"]["code"], "unauthenticated");
        let (s, _) = d.get(path, Some("not-the-token-0123456789")).await;
        assert_eq!(s, 401, "{path} with a wrong token");
        let (s, _) = d.get(path, Some(&token)).await;
        assert_eq!(s, 200, "{path} with the admin token");
    }

    let (_, list) = d.get("/api/v1/playlists", Some(&token)).await;
    let ids: Vec<&str> = list["playlists"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"open-day-2021-transit") && ids.contains(&"fallback"),
        "{ids:?}"
    );

    let (s, p) = d
        .get(
            "/api/v1/preview?channel=subway&at=2021-05-15T09:00:00%2B08:00&for=2h",
            Some(&token),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(p["channel"], "subway");
    assert_eq!(p["from"], "2021-05-15T09:00:00+08:00");
    let first = &p["segments"][0];
    assert_eq!(first["until"], "2021-05-15T09:30:00+08:00");
    assert_eq!(first["tier"], "normal");
    let winners: Vec<&Value> = first["playlists"].as_array().unwrap().iter().collect();
    assert!(
        winners.contains(&&Value::from("open-day-2021-transit")),
        "{first}"
    );
    assert_eq!(first["replaced"], serde_json::json!(["fallback"]));

    let (s, e) = d.get("/api/v1/preview?channel=tram", Some(&token)).await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["field"], "channel");
    let (s, e) = d
        .get("/api/v1/preview?channel=lobby&for=forever", Some(&token))
        .await;
    assert_eq!((s, e["error"]["field"].as_str()), (400, Some("for")));
    let (s, _) = d.get("/api/v1/playlists/nope", Some(&token)).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn embedded_broker_with_users_refuses_anonymous_clients() {
    let port = free_port();
    let site = Site::new(
        &format!(
            "listen = \"127.0.0.1:{port}\"\n[[mqtt.users]]\nusername = \"screen\"\npassword_env = \"MARQUEE_IT_SCREEN_PASSWORD\""
        ),
        "",
    );
    // SAFETY: set before the daemon is spawned; it inherits the variable.
    unsafe { std::env::set_var("MARQUEE_IT_SCREEN_PASSWORD", "correct horse battery") };
    let _d = Daemon::start(&site).await;
    let key = site.public_key();
    assert!(!anonymous_can_connect(port).await);
    let mut o = rumqttc::MqttOptions::new("screen-1", "127.0.0.1", port);
    o.set_credentials("screen", "correct horse battery");
    o.set_max_packet_size(8 << 20, 8 << 20);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 10);
    client
        .subscribe(LOBBY, rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let got = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) = el.poll().await {
                return p;
            }
        }
    })
    .await
    .expect("the authenticated screen receives the lobby timeline");
    assert!(marquee::wire::verify(&key, LOBBY, &got.payload, None, chrono::Utc::now()).is_ok());
}

async fn anonymous_can_connect(port: u16) -> bool {
    let o = rumqttc::MqttOptions::new("anonymous", "127.0.0.1", port);
    let (_c, mut el) = rumqttc::AsyncClient::new(o, 10);
    match tokio::time::timeout(DEADLINE, el.poll()).await {
        Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)))) => {
            a.code == rumqttc::ConnectReturnCode::Success
        }
        _ => false,
    }
}

#[tokio::test]
async fn daemon_and_agent_reach_mosquitto_over_tls() {
    let (mq, tls_port, ca) = Mosquitto::start_tls().await;
    let site = Site::new(
        &format!(
            "embedded = false\nurl = \"mqtts://127.0.0.1:{tls_port}\"\nca_file = {:?}",
            ca.display().to_string()
        ),
        "",
    );
    let d = Daemon::start(&site).await;
    let key = site.public_key();
    // Read back over the plain listener of the same broker.
    let mut sub = Sub::connect(mq.port, LOBBY).await;
    let (v, _) = sub.timeline(&key, LOBBY, 1).await;
    assert_eq!(v, 1);

    // An agent over TLS too.
    let config = agent_config(&d, &site, "lobby-tls-1", "lobby", tls_port);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("url = \"mqtt://127.0.0.1:{tls_port}\""),
        &format!(
            "url = \"mqtts://127.0.0.1:{tls_port}\"\nca_file = {:?}",
            ca.display().to_string()
        ),
    );
    std::fs::write(&config, text).unwrap();
    let interrupt = lobby_now("over tls").replace(
        "\"id\": \"test-lobby\",",
        "\"id\": \"test-lobby\", \"tier\": \"interrupt\",",
    );
    std::fs::write(site.playlist("test-lobby"), interrupt).unwrap();
    let mut agent = AgentProc::start(&config, &[]);
    agent
        .frame("the slogan over TLS", |v| text_of(v) == "over tls")
        .await;
}
