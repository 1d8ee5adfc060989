//! The bus as a hostile client sees it (issue: a bus nobody can lie on): reports bound to their
//! display, receipts bound to their outbox, hostile payloads on daemon topics.

use chrono::{Duration, SecondsFormat, Utc};
use rumqttc::QoS;
use serde_json::{Value, json};

use crate::harness::*;

/// An interrupt playlist on the lobby channel with one-second items (frames and plays come fast).
fn interrupt(text: &str) -> String {
    let from = (Utc::now() - Duration::minutes(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let until = (Utc::now() + Duration::hours(6)).to_rfc3339_opts(SecondsFormat::Secs, true);
    format!(
        r#"{{"id": "test-lobby", "tier": "interrupt", "targets": {{"channels": ["lobby"]}},
  "schedule": [{{"from": "{from}", "until": "{until}"}}],
  "items": [{{"id": "one", "text": {{"zh": "{text} 一", "en": "{text} one"}}, "seconds": 1}},
            {{"id": "two", "text": {{"zh": "{text} 二", "en": "{text} two"}}, "seconds": 1}}]}}"#
    )
}

/// Stored plays of `display`: event ids.
async fn play_ids(d: &Daemon, token: &str, display: &str) -> Vec<String> {
    let (_, body) = d
        .get(
            &format!("/api/v1/plays?display={display}&from=2000-01-01T00:00:00Z&limit=10000"),
            Some(token),
        )
        .await;
    body["plays"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["event_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn one_display_cannot_preempt_another_and_a_replayed_receipt_empties_nothing() {
    let mq = Mosquitto::start().await;
    let site = Site::new(&mq.section(), "");
    let d = Daemon::start(&site).await;
    let token = site.admin_token();
    std::fs::write(site.playlist("test-lobby"), interrupt("bus")).unwrap();
    let mut sub = Sub::connect(mq.port, "marquee/v1/agent/lobby-bus-1/#").await;
    let cfg = agent_config(&site, "lobby-bus-1", "lobby", mq.port);
    let agent = AgentProc::start(&cfg, &[]);

    // What anyone on the bus sees: a batch (its outbox and ids) and the daemon's receipt.
    let batch = sub
        .wait("an event batch", |m| m.topic.ends_with("/events"))
        .await;
    let b: Value = serde_json::from_slice(&batch.payload).unwrap();
    let outbox = b["outbox"].as_str().unwrap().to_owned();
    let upto = b["upto"].as_u64().unwrap();
    let receipt = sub.wait("a receipt", |m| m.topic.ends_with("/ack")).await;

    // Another display publishes, on its own topic, lobby-bus-1's next 200 ids.
    let now = Utc::now().to_rfc3339();
    let forged: Vec<Value> = (upto + 1..=upto + 200)
        .map(|i| {
            json!({"id": format!("lobby-bus-1:{outbox}:{i}"), "at": now, "kind": "refused",
                   "topic": "x", "reason": "pre-empted"})
        })
        .collect();
    for (display, own) in [("x-1", outbox.as_str()), ("x-1", "x1outbox")] {
        let msg = json!({"display": display, "outbox": own, "upto": upto + 200, "events": forged});
        sub.client
            .publish(
                format!("marquee/v1/agent/{display}/events"),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&msg).unwrap(),
            )
            .await
            .unwrap();
    }
    let start = std::time::Instant::now();
    while d
        .metric(
            &token,
            "marquee_agent_reports_dropped_total{reason=\"foreign_id\"}",
        )
        .await
        < 400.0
    {
        assert!(start.elapsed() < DEADLINE, "forged ids were not dropped");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // lobby-bus-1's own plays with those ids still arrive; nothing is stored for x-1.
    let own = |ids: &[String]| {
        ids.iter()
            .filter_map(|id| id.rsplit(':').next()?.parse::<u64>().ok())
            .filter(|seq| *seq > upto && *seq <= upto + 200)
            .count()
    };
    let start = std::time::Instant::now();
    while own(&play_ids(&d, &token, "lobby-bus-1").await) < 3 {
        assert!(
            start.elapsed() < DEADLINE,
            "lobby-bus-1's plays were pre-empted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(play_ids(&d, &token, "x-1").await.is_empty());

    // The daemon goes away; the screen's cache is reset (a new outbox) and it plays on.
    assert_eq!(agent.stop().await, Some(0));
    d.stop().await;
    let cfg2 = site.dir.path().join("agent-reset.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg2, text.replace("cache-lobby-bus-1", "cache-reset")).unwrap();
    let mut agent = AgentProc::start(&cfg2, &[]);
    let frames = agent.frames.clone();
    eventually("three frames on the reset screen", || {
        (frames.lock().unwrap().len() >= 3).then_some(())
    })
    .await;
    // The old receipt, replayed, is refused: it names another outbox.
    sub.client
        .publish(
            "marquee/v1/agent/lobby-bus-1/ack",
            QoS::AtLeastOnce,
            false,
            receipt.payload.clone(),
        )
        .await
        .unwrap();
    agent
        .wait_log("the replayed receipt refused", |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("refused event receipt"))
        })
        .await;
    // Back up, the daemon stores every play the reset screen made while it was away.
    let shown: Vec<(String, String)> = {
        let f = frames.lock().unwrap();
        f[..f.len() - 1]
            .iter()
            .map(|v| (v["item"].as_str().unwrap().to_owned(), start_of(v)))
            .collect()
    };
    let d = Daemon::start(&site).await;
    let start = std::time::Instant::now();
    loop {
        let (_, body) = d
            .get(
                "/api/v1/plays?display=lobby-bus-1&from=2000-01-01T00:00:00Z&limit=10000",
                Some(&token),
            )
            .await;
        let stored: Vec<(String, String)> = body["plays"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| (v["item"].as_str().unwrap().to_owned(), start_of(v)))
            .collect();
        if shown.iter().all(|s| stored.contains(s)) {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "plays made while the daemon was away were lost; agent log:\n{}",
            dump(&agent.log)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn start_of(v: &Value) -> String {
    chrono::DateTime::parse_from_rfc3339(v["start"].as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
        .to_rfc3339()
}

/// Waits until the counter `name` reaches `min`; returns its value.
async fn counter_at_least(d: &Daemon, token: &str, name: &str, min: f64) -> f64 {
    let start = std::time::Instant::now();
    loop {
        let v = d.metric(token, name).await;
        if v >= min {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "{name} stayed at {v} < {min}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_unsigned_empty_publish_ends_nothing_and_a_junk_flood_costs_a_handful_of_restores() {
    let mq = Mosquitto::start().await;
    let site = Site::new(&mq.section(), "");
    let d = Daemon::start(&site).await;
    let token = site.admin_token();
    let from = (Utc::now() - Duration::minutes(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let until = (Utc::now() + Duration::hours(6)).to_rfc3339_opts(SecondsFormat::Secs, true);
    std::fs::write(
        site.playlist("display-only"),
        format!(
            r#"{{"id": "display-only", "tier": "interrupt", "targets": {{"displays": ["lobby-east-1"]}},
  "schedule": [{{"from": "{from}", "until": "{until}"}}],
  "items": [{{"id": "only", "text": {{"zh": "DISPLAY-ONLY", "en": "DISPLAY-ONLY"}}, "seconds": 1}}]}}"#
        ),
    )
    .unwrap();
    let mut agent = AgentProc::start(&agent_config(&site, "lobby-east-1", "lobby", mq.port), &[]);
    agent
        .frame("the display's own timeline", |v| {
            text_of(v) == "DISPLAY-ONLY"
        })
        .await;

    // Anyone can publish an empty retained payload on the display's topic: it ends nothing.
    let display_topic = "marquee/v1/display/lobby-east-1/timeline";
    let sub = Sub::connect(mq.port, "marquee/v1/channel/lobby/timeline").await;
    sub.client
        .publish(display_topic, QoS::AtLeastOnce, true, Vec::<u8>::new())
        .await
        .unwrap();
    agent
        .wait_log("the empty payload refused", |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("topic emptied on the broker"))
        })
        .await;
    counter_at_least(&d, &token, "marquee_retained_restored_total", 1.0).await;
    let n = agent.frames.lock().unwrap().len();
    let frames = agent.frames.clone();
    eventually("three more frames", || {
        (frames.lock().unwrap().len() >= n + 3).then_some(())
    })
    .await;
    assert!(
        frames.lock().unwrap()[n - 1..]
            .iter()
            .all(|v| text_of(v) == "DISPLAY-ONLY"),
        "the screen left its own timeline"
    );

    // Only the daemon's signed clear ends it: the playlist goes, the screen follows its channel.
    std::fs::remove_file(site.playlist("display-only")).unwrap();
    let n = agent.frames.lock().unwrap().len();
    eventually("channel content after the signed clear", || {
        frames.lock().unwrap()[n..]
            .iter()
            .any(|v| v["kind"] == "timeline" && text_of(v) != "DISPLAY-ONLY")
            .then_some(())
    })
    .await;

    // 5,000 junk messages on a daemon topic: a handful of restores, not one each.
    let before = d.metric(&token, "marquee_retained_restored_total").await;
    let mut watch = Sub::connect(mq.port, "marquee/v1/channel/lobby/timeline").await;
    watch
        .wait("the retained lobby timeline", |m| !m.payload.is_empty())
        .await;
    for i in 0..5000u32 {
        sub.client
            .publish(
                "marquee/v1/channel/lobby/timeline",
                QoS::AtLeastOnce,
                false,
                format!("junk {i:05}"),
            )
            .await
            .unwrap();
    }
    watch
        .wait("the last junk message", |m| m.payload == b"junk 04999")
        .await;
    let key = site.public_key();
    // The daemon restores once more after the flood, within its interval.
    watch.seen.clear();
    watch
        .wait("a restore after the flood", |m| m.verified(&key).is_ok())
        .await;
    let restores = d.metric(&token, "marquee_retained_restored_total").await - before;
    assert!(
        (1.0..=10.0).contains(&restores),
        "{restores} restores for 5,000 junk messages"
    );
}
