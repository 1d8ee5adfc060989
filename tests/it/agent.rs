//! The display agent against a real daemon and broker: playback, verification, reporting,
//! broker restarts and offline start-up.

use chrono::{Duration, SecondsFormat, Utc};
use serde_json::Value;

use crate::harness::*;
use crate::schema::documented;

const LOBBY: &str = "marquee/v1/channel/lobby/timeline";

/// An interrupt playlist on the lobby channel, live from a minute ago until `until`, with
/// one-second items so frames (and proof of play) come quickly.
fn interrupt(text: &str, until: chrono::DateTime<Utc>) -> String {
    let from = (Utc::now() - Duration::minutes(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let until = until.to_rfc3339_opts(SecondsFormat::Secs, true);
    format!(
        r#"{{"id": "test-lobby", "tier": "interrupt", "targets": {{"channels": ["lobby"]}},
  "schedule": [{{"from": "{from}", "until": "{until}"}}],
  "items": [{{"id": "one", "text": {{"zh": "{text} 一", "en": "{text} one"}}, "seconds": 1}},
            {{"id": "two", "text": {{"zh": "{text} 二", "en": "{text} two"}}, "seconds": 1}}]}}"#
    )
}

fn later() -> chrono::DateTime<Utc> {
    Utc::now() + Duration::hours(6)
}

fn shows(text: &'static str) -> impl Fn(&Value) -> bool {
    move |v| text_of(v).starts_with(text)
}

async fn display(d: &Daemon, token: &str, id: &str) -> Option<Value> {
    let (status, body) = d.get(&format!("/api/v1/displays/{id}"), Some(token)).await;
    (status == 200).then_some(body)
}

async fn wait_display(
    d: &Daemon,
    token: &str,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = display(d, token, id).await
            && pred(&v)
        {
            return v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}; last: {:?}",
            display(d, token, id).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn agent_plays_edits_reports_and_goes_offline_when_killed() {
    let port = free_port();
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), "");
    let d = Daemon::start(&site).await;
    let token = site.admin_token();
    // The agent-only binary (what screens run); other tests use `marquee agent`.
    let mut agent =
        AgentProc::start_slim(&agent_config(&d, &site, "lobby-test-1", "lobby", port), &[]);

    // It plays the lobby timeline (the hotline daytime playlist or the fallback playlist).
    agent
        .frame("a timeline frame", |v| v["kind"] == "timeline")
        .await;

    // An edit reaches the screen.
    std::fs::write(site.playlist("test-lobby"), interrupt("edited", later())).unwrap();
    let f = agent.frame("the edited slogan", shows("edited")).await;
    assert_eq!(f["timeline_version"], 2);
    assert_eq!(f["tier"], "interrupt");
    // Both languages alternate.
    agent
        .frame("the zh text", |v| {
            text_of(v).starts_with("edited") && v["lang"] == "zh"
        })
        .await;
    agent
        .frame("the en text", |v| {
            text_of(v).starts_with("edited") && v["lang"] == "en"
        })
        .await;

    // The daemon knows the display: online, on the current version.
    let v = wait_display(&d, &token, "lobby-test-1", "applied version 2", |v| {
        v["online"] == true && v["timeline_version"] == 2 && v["up_to_date"] == true
    })
    .await;
    assert_eq!(v["channel"], "lobby");
    assert_eq!(v["expected_timeline"]["topic"], LOBBY);
    documented("get", "/api/v1/displays/{id}", 200, &v);
    let (status, fleet) = d.get("/api/v1/displays", Some(&token)).await;
    documented("get", "/api/v1/displays", status, &fleet);

    // Proof of play arrives (JSON and CSV).
    let plays = eventually_plays(&d, &token, "lobby-test-1", 3).await;
    let (status, answer) = d
        .get("/api/v1/plays?display=lobby-test-1", Some(&token))
        .await;
    documented("get", "/api/v1/plays", status, &answer);
    assert!(
        plays.iter().any(|p| p["playlist"] == "test-lobby"),
        "{plays:?}"
    );
    let resp = marquee::http_client()
        .build()
        .unwrap()
        .get(format!("{}/api/v1/plays?display=lobby-test-1", d.http))
        .bearer_auth(&token)
        .header("Accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = resp.text().await.unwrap();
    assert!(
        csv.starts_with("event_id,display,item,playlist,lang,start,end\n"),
        "{csv}"
    );
    assert!(csv.contains(",test-lobby,"), "{csv}");

    // The CLI shows the fleet.
    let out = std::process::Command::new(bin())
        .args(["displays", "--url", &d.http, "--token", &token])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("lobby-test-1") && table.contains("online since") && table.contains("v2/v2"),
        "{table}"
    );

    // kill -9: the broker's last-will marks it offline.
    agent.kill();
    wait_display(&d, &token, "lobby-test-1", "offline after kill -9", |v| {
        v["online"] == false
    })
    .await;
}

async fn eventually_plays(d: &Daemon, token: &str, display: &str, n: usize) -> Vec<Value> {
    let start = std::time::Instant::now();
    loop {
        let (_, body) = d
            .get(&format!("/api/v1/plays?display={display}"), Some(token))
            .await;
        let plays = body["plays"].as_array().cloned().unwrap_or_default();
        if plays.len() >= n {
            return plays;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {n} plays of {display}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn agent_refuses_forged_replayed_and_rolled_back_payloads() {
    let port = free_port();
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), "");
    let d = Daemon::start(&site).await;
    let key = site.public_key();
    let mut sub = Sub::connect(port, "marquee/v1/channel/+/timeline").await;
    let v1 = sub.wait("lobby v1", |m| m.topic == LOBBY).await;
    let subway = sub
        .wait("subway v1", |m| {
            m.topic == "marquee/v1/channel/subway/timeline"
        })
        .await;
    std::fs::write(site.playlist("test-lobby"), interrupt("genuine", later())).unwrap();
    let (v, _) = sub.timeline(&key, LOBBY, 2).await;
    assert_eq!(v, 2);
    let mut agent = AgentProc::start(&agent_config(&d, &site, "lobby-test-2", "lobby", port), &[]);
    agent.frame("the genuine slogan", shows("genuine")).await;

    // Sign with another key a timeline that would show "FORGED".
    let other = marquee::wire::KeyPair::from_seed([9; 32]);
    let forged_body = {
        let (_, mut tl) = v1.timeline(&key);
        for s in &mut tl.segments {
            let mut items = s.items.to_vec();
            for i in &mut items {
                let text = std::sync::Arc::make_mut(&mut i.text);
                text.insert("en".into(), "FORGED".into());
                text.insert("zh".into(), "FORGED".into());
            }
            s.items = items.into();
        }
        marquee::wire::SignedBody {
            topic: LOBBY.into(),
            version: 99,
            issued_at: Utc::now(),
            expires_at: Utc::now() + Duration::hours(1),
            payload: marquee::wire::Signed::Timeline(tl),
        }
    };
    let forged = marquee::wire::sign(&other, &forged_body);
    let tampered = String::from_utf8(v1.payload.clone()).unwrap().replacen(
        "\"version\":1",
        "\"version\":98",
        1,
    );
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("wrong key", forged, "bad signature"),
        ("tampered", tampered.into_bytes(), "bad signature"),
        (
            "other topic",
            subway.payload.clone(),
            "signed for topic marquee/v1/channel/subway/timeline",
        ),
        (
            "rollback",
            v1.payload.clone(),
            "version 1 is not newer than the version 2",
        ),
    ];
    for (what, bytes, reason) in cases {
        sub.client
            .publish(LOBBY, rumqttc::QoS::AtLeastOnce, false, bytes)
            .await
            .unwrap();
        agent
            .wait_log(what, |v| {
                v["message"] == "refused payload; nothing shown from it"
                    && v["reason"].as_str().is_some_and(|r| r.contains(reason))
            })
            .await;
    }
    // Still the genuine content, never the forged one.
    agent
        .frame("genuine after the attacks", shows("genuine"))
        .await;
    assert!(!agent.shown(|v| text_of(v).contains("FORGED")));
    assert!(agent.shown(|v| v["timeline_version"] == 2));
    assert!(!agent.shown(|v| v["timeline_version"].as_u64().is_some_and(|n| n > 2)));
}

#[tokio::test]
async fn broker_restart_agent_catches_up_and_no_event_is_lost_or_doubled() {
    let mq = Mosquitto::start().await;
    let site = Site::new(&mq.section(), "");
    let d = Daemon::start(&site).await;
    let token = site.admin_token();
    std::fs::write(site.playlist("test-lobby"), interrupt("before", later())).unwrap();
    let mut agent = AgentProc::start(
        &agent_config(&d, &site, "lobby-test-3", "lobby", mq.port),
        &[],
    );
    agent.frame("before", shows("before")).await;

    // Broker down: the agent keeps playing (and buffering proof of play).
    let n = agent.frames.lock().unwrap().len();
    let frames = agent.frames.clone();
    let _mq = mq
        .restart_after(|| async move {
            eventually("frames while the broker is down", || {
                (frames.lock().unwrap().len() >= n + 3).then_some(())
            })
            .await;
        })
        .await;
    // Back up: the daemon re-asserts, an edit flows through, and the agent follows.
    std::fs::write(site.playlist("test-lobby"), interrupt("after", later())).unwrap();
    agent
        .frame("after the broker restart", shows("after"))
        .await;

    // Everything played so far, across the outage, reaches the daemon (the agent resends as soon
    // as the daemon is back; the daemon may reconnect after the agent).
    let frames = agent.frames.clone();
    let ended = frames.lock().unwrap().len() - 1;
    let shown = |upto: usize| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = frames.lock().unwrap()[..upto]
            .iter()
            .map(play_key)
            .collect();
        v.sort();
        v
    };
    let want = shown(ended);
    let start = std::time::Instant::now();
    while !contains_all(&stored_plays(&d, &token).await, &want) {
        assert!(
            start.elapsed() < DEADLINE,
            "plays of the outage never reached the daemon"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // A clean stop hands over the last one too; every frame shown is stored exactly once.
    let agent_log = agent.log.clone();
    assert_eq!(agent.stop().await, Some(0));
    let all = frames.lock().unwrap().len();
    let want = shown(all);
    let start = std::time::Instant::now();
    let got = loop {
        let got = stored_plays(&d, &token).await;
        if got.len() >= want.len() || start.elapsed() > DEADLINE {
            break got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        got,
        want,
        "every frame shown is stored once as a play; agent log:\n{}",
        dump(&agent_log)
    );
}

/// (item, start) of a frame or a stored play, with the time normalised.
fn play_key(v: &Value) -> (String, String) {
    let start = chrono::DateTime::parse_from_rfc3339(v["start"].as_str().unwrap()).unwrap();
    (
        v["item"].as_str().unwrap().to_owned(),
        start.with_timezone(&Utc).to_rfc3339(),
    )
}

async fn stored_plays(d: &Daemon, token: &str) -> Vec<(String, String)> {
    let (_, body) = d
        .get(
            "/api/v1/plays?display=lobby-test-3&from=2000-01-01T00:00:00Z",
            Some(token),
        )
        .await;
    let mut v: Vec<(String, String)> = body["plays"]
        .as_array()
        .into_iter()
        .flatten()
        .map(play_key)
        .collect();
    v.sort();
    v
}

fn contains_all(have: &[(String, String)], want: &[(String, String)]) -> bool {
    want.iter().all(|w| have.contains(w))
}

#[tokio::test]
async fn agent_started_without_a_broker_plays_its_cache_and_switches_on_time() {
    let port = free_port();
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), "");
    let d = Daemon::start(&site).await;
    // The interrupt ends 4 s from now; after it the lobby shows what was scheduled under it.
    let end = Utc::now() + Duration::seconds(4);
    std::fs::write(site.playlist("test-lobby"), interrupt("cached", end)).unwrap();
    let config = agent_config(&d, &site, "lobby-test-4", "lobby", port);
    let mut agent = AgentProc::start(&config, &[]);
    agent.frame("the cached slogan", shows("cached")).await;
    assert_eq!(agent.stop().await, Some(0));
    assert_eq!(d.stop().await, Some(0));

    // No daemon, no broker: the agent plays from its cache and switches at the boundary.
    let mut offline = AgentProc::start(&config, &[]);
    let f = offline
        .frame("the cached slogan, offline", shows("cached"))
        .await;
    assert_eq!(f["kind"], "timeline");
    let after = offline
        .frame("the segment after the interrupt", |v| {
            v["kind"] == "timeline" && !text_of(v).starts_with("cached")
        })
        .await;
    let switched = chrono::DateTime::parse_from_rfc3339(after["start"].as_str().unwrap()).unwrap();
    assert_eq!(
        switched.timestamp(),
        end.timestamp(),
        "switched exactly at the boundary"
    );
    assert_ne!(after["tier"], "interrupt");
}

#[tokio::test]
async fn alert_preempts_at_once_and_ends_on_clear_or_expiry() {
    let port = free_port();
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), "");
    let d = Daemon::start(&site).await;
    let token = site.admin_token();
    std::fs::write(site.playlist("test-lobby"), interrupt("normal", later())).unwrap();
    let mut agent = AgentProc::start(&agent_config(&d, &site, "lobby-test-5", "lobby", port), &[]);
    agent.frame("normal content", shows("normal")).await;
    let sub = Sub::connect(port, "marquee/v1/alert/#").await;
    let topic = "marquee/v1/alert/all";

    // Raised: on screen at once, acknowledged to the daemon with its latency.
    let raised = alert(
        &site,
        topic,
        1,
        "typhoon-1",
        "TYPHOON: stay indoors",
        Duration::minutes(10),
    );
    sub.client
        .publish(topic, rumqttc::QoS::AtLeastOnce, true, raised)
        .await
        .unwrap();
    let f = agent.frame("the alert", |v| v["kind"] == "alert").await;
    assert_eq!(text_of(&f), "TYPHOON: stay indoors");
    let v = wait_display(&d, &token, "lobby-test-5", "the alert ack", |v| {
        v["last_alert_ack"] == "typhoon-1"
    })
    .await;
    assert!(v["last_alert_latency_ms"].as_i64().unwrap() >= 0);

    // Cleared by a signed clear: normal content resumes.
    let n = agent.frames.lock().unwrap().len();
    let clear = sign_as_daemon(
        &site,
        topic,
        2,
        Duration::minutes(10),
        marquee::wire::Signed::AlertClear(marquee::wire::alert::AlertClear {
            id: "typhoon-1".into(),
        }),
    );
    sub.client
        .publish(topic, rumqttc::QoS::AtLeastOnce, true, clear)
        .await
        .unwrap();
    let frames = agent.frames.clone();
    eventually("normal content after the clear", || {
        frames.lock().unwrap()[n..]
            .iter()
            .any(|v| text_of(v).starts_with("normal"))
            .then_some(())
    })
    .await;

    // An unsigned "clear" (an empty retained payload) ends nothing; expiry does.
    let short = alert(
        &site,
        topic,
        3,
        "flood-2",
        "FLOOD WARNING",
        Duration::seconds(2),
    );
    sub.client
        .publish(topic, rumqttc::QoS::AtLeastOnce, true, short)
        .await
        .unwrap();
    agent
        .frame("the second alert", |v| text_of(v) == "FLOOD WARNING")
        .await;
    sub.client
        .publish(topic, rumqttc::QoS::AtLeastOnce, true, Vec::<u8>::new())
        .await
        .unwrap();
    agent
        .wait_log("the ignored empty payload", |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("topic emptied on the broker"))
        })
        .await;
    let n = agent.frames.lock().unwrap().len();
    let frames = agent.frames.clone();
    eventually("normal content after expiry", || {
        frames.lock().unwrap()[n..]
            .iter()
            .any(|v| text_of(v).starts_with("normal"))
            .then_some(())
    })
    .await;
    let last_alert = agent
        .frames
        .lock()
        .unwrap()
        .iter()
        .filter(|v| text_of(v) == "FLOOD WARNING")
        .filter_map(|v| v["until"].as_str().map(str::to_owned))
        .next_back()
        .unwrap();
    let resumed = agent.frames.lock().unwrap()[n..]
        .iter()
        .find(|v| text_of(v).starts_with("normal"))
        .cloned()
        .unwrap();
    let ended = chrono::DateTime::parse_from_rfc3339(&last_alert).unwrap();
    let shown = chrono::DateTime::parse_from_rfc3339(resumed["start"].as_str().unwrap()).unwrap();
    assert!(
        shown >= ended - Duration::seconds(1),
        "resumed after the alert expired"
    );
}

/// The fleet view tells what is true: a display whose agent died with the embedded broker is
/// `unknown` after a restart (not "online" for ever), and a display whose clock is off says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_view_is_truthful_after_a_restart_and_flags_clock_skew() {
    let port = free_port();
    let site = Site::new(
        &format!("embedded = true\nlisten = \"127.0.0.1:{port}\""),
        "",
    );
    let d = Daemon::start(&site).await;
    let admin = site.admin_token();
    let mut agent = AgentProc::start(
        &agent_config(&d, &site, "lobby-fleet-1", "lobby", port),
        &[],
    );
    agent
        .frame("normal content", |v| v["kind"] == "timeline")
        .await;
    eventually_async("the display online", || async {
        let (_, v) = d.get("/api/v1/displays/lobby-fleet-1", Some(&admin)).await;
        (v["state"] == "online" && v["clock_skew"] == false).then_some(())
    })
    .await;
    // The agent dies while the daemon (and its broker) is down: no last will reaches anyone.
    agent.kill();
    assert_eq!(d.stop().await, Some(0));
    let d = Daemon::start(&site).await;
    let (_, v) = d.get("/api/v1/displays/lobby-fleet-1", Some(&admin)).await;
    assert_eq!(v["state"], "unknown", "{v}");
    // A display reporting a clock ten minutes behind is flagged.
    let sub = Sub::connect(port, "marquee/v1/daemon/status").await;
    let at = chrono::Utc::now() - chrono::Duration::minutes(10);
    let status = serde_json::json!({"display": "lobby-skew-1", "online": true, "channel": "lobby",
        "timeline": null, "alert": null, "agent_version": "0.1.0", "started_at": at, "at": at});
    let keys = register(&d, &site, "lobby-skew-1", "lobby");
    let topic = "marquee/v1/agent/lobby-skew-1/status";
    sub.client
        .publish(
            topic,
            rumqttc::QoS::AtLeastOnce,
            false,
            sign_report(
                &keys,
                topic,
                marquee::wire::Signed::Status(serde_json::from_value(status).unwrap()),
            ),
        )
        .await
        .unwrap();
    let v = {
        let start = std::time::Instant::now();
        loop {
            let (s, v) = d.get("/api/v1/displays/lobby-skew-1", Some(&admin)).await;
            if s == 200 && v["clock_skew"] == true {
                break v;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "not flagged: {v}\n{}",
                dump(&d.log)
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    assert!(v["clock_skew_ms"].as_i64().unwrap() < -590_000, "{v}");
}
