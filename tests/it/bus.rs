//! The bus as a hostile client sees it (issue: a bus nobody can lie on): reports bound to their
//! display, receipts bound to their outbox, hostile payloads on daemon topics.

use chrono::{Duration, SecondsFormat, Utc};
use rumqttc::QoS;
use serde_json::{Value, json};

use crate::harness::*;
use crate::schema::documented;
use marquee::wire::{KeyPair, Signed};

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
    let cfg = agent_config(&d, &site, "lobby-bus-1", "lobby", mq.port);
    let agent = AgentProc::start(&cfg, &[]);

    // What anyone on the bus sees: a batch (its outbox and ids) and the daemon's receipt.
    let batch = sub
        .wait("an event batch", |m| m.topic.ends_with("/events"))
        .await;
    let envelope: Value = serde_json::from_slice(&batch.payload).unwrap();
    let b = &envelope["body"]["payload"]["data"];
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
    // x-1 is a registered display: it signs with its own key, on its own topic.
    let x1 = register(&d, &site, "x-1", "lobby");
    for own in [outbox.as_str(), "x1outbox"] {
        let batch: marquee::wire::agent::EventBatch = serde_json::from_value(
            json!({"display": "x-1", "outbox": own, "upto": upto + 200, "events": forged}),
        )
        .unwrap();
        let topic = "marquee/v1/agent/x-1/events";
        sub.client
            .publish(
                topic,
                QoS::AtLeastOnce,
                false,
                sign_report(&x1, topic, Signed::Events(batch)),
            )
            .await
            .unwrap();
    }
    counter_at_least(
        &d,
        &token,
        "marquee_agent_reports_dropped_total{reason=\"foreign_id\"}",
        400.0,
    )
    .await;
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
    let mut agent = AgentProc::start(
        &agent_config(&d, &site, "lobby-east-1", "lobby", mq.port),
        &[],
    );
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

/// Raises an alert (it waits for approval: `alerts_above = 0`) and returns (id, reach).
async fn pending_alert(d: &Daemon, token: &str, scope: Value) -> (String, u64) {
    let (s, v) = d
        .send(
            reqwest::Method::POST,
            "/api/v1/alerts",
            Some(token),
            Some(json!({"text": {"en": "drill"}, "scope": scope, "expires_in": "30m"})),
        )
        .await;
    assert_eq!((s, v["status"].as_str()), (202, Some("pending")), "{v}");
    (
        v["id"].as_str().unwrap().to_owned(),
        v["reach"].as_u64().unwrap(),
    )
}

/// Display A's account (and A's own report key, as on a stolen screen) tries to lie for B, for a
/// display without an agent, for displays that do not exist, and on the daemon's topics. With
/// `broker_confines` (Mosquitto with the generated ACL) the broker drops it all; on the embedded
/// broker (no topic rules) the daemon's checks drop every report and restore its topics.
async fn display_a_cannot_lie(
    d: &Daemon,
    site: &Site,
    port: u16,
    account: Option<(&str, &str)>,
    broker_confines: bool,
) {
    let token = site.admin_token();
    let a_key = KeyPair::from_hex(
        &std::fs::read_to_string(site.dir.path().join("credentials/lobby-acl-a.report.key"))
            .unwrap(),
    )
    .unwrap();
    register(d, site, "lobby-acl-c", "lobby");
    // B is playing and reporting.
    let start = std::time::Instant::now();
    while play_ids(d, &token, "lobby-acl-b").await.len() < 2 {
        assert!(
            start.elapsed() < DEADLINE,
            "B never reported plays\n{}",
            dump(&d.log)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (alert_c, reach_c) = pending_alert(d, &token, json!({"displays": ["lobby-acl-c"]})).await;
    let (_, reach_all) = pending_alert(d, &token, json!("all")).await;
    assert_eq!(reach_c, 1);
    let fleet_b = |v: &Value| {
        (
            v["online"].clone(),
            v["channel"].clone(),
            v["agent_version"].clone(),
        )
    };
    let (_, before_b) = d.get("/api/v1/displays/lobby-acl-b", Some(&token)).await;
    let unsigned = "marquee_agent_reports_dropped_total{reason=\"unsigned\"}";
    let unsigned_before = d.metric(&token, unsigned).await;
    let restored_before = d.metric(&token, "marquee_retained_restored_total").await;

    let connects = d.metric(&token, "marquee_mqtt_connects_total").await;
    if broker_confines {
        // Taking the daemon's client id (a broker lets the newest connection of an id win):
        // with use_username_as_clientid the connection is named after A's account instead.
        let daemon_id = format!("marquee-daemon-{}", marquee::host_name());
        let mut o = rumqttc::MqttOptions::new(daemon_id, "127.0.0.1", port);
        if let Some((user, password)) = account {
            o.set_credentials(user, password);
        }
        let (_thief, mut thief_loop) = rumqttc::AsyncClient::new(o, 10);
        loop {
            match thief_loop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
    let attacker = Sub::connect_as(port, "marquee/v1/daemon/status", account).await;
    let now = Utc::now();
    let status = |display: &str, online: bool| -> marquee::wire::agent::Status {
        serde_json::from_value(
            json!({"display": display, "online": online, "channel": "zzz",
            "timeline": {"topic": "x", "version": 77}, "alert": null, "agent_version": "spoofed",
            "started_at": now, "at": now}),
        )
        .unwrap()
    };
    let batch = |display: &str| -> marquee::wire::agent::EventBatch {
        serde_json::from_value(json!({"display": display, "outbox": "forged", "upto": 2, "events": [
            {"id": format!("{display}:forged:1"), "at": now, "kind": "alert_displayed", "alert": alert_c, "latency_ms": 1},
            {"id": format!("{display}:forged:2"), "at": now, "kind": "play", "item": "forged", "playlist": "=1+1",
             "lang": "zh", "start": now, "end": now}]}))
        .unwrap()
    };
    let mut lies: Vec<(String, Vec<u8>, bool)> = Vec::new();
    for victim in ["lobby-acl-b", "lobby-acl-c", "fake-1"] {
        let st = format!("marquee/v1/agent/{victim}/status");
        let ev = format!("marquee/v1/agent/{victim}/events");
        lies.push((
            st.clone(),
            serde_json::to_vec(&status(victim, false)).unwrap(),
            true,
        ));
        lies.push((
            st.clone(),
            sign_report(&a_key, &st, Signed::Status(status(victim, false))),
            true,
        ));
        lies.push((
            ev.clone(),
            serde_json::to_vec(&batch(victim)).unwrap(),
            false,
        ));
        lies.push((
            ev.clone(),
            sign_report(&a_key, &ev, Signed::Events(batch(victim))),
            false,
        ));
    }
    lies.push((
        "marquee/v1/channel/lobby/timeline".into(),
        b"junk".to_vec(),
        false,
    ));
    lies.push((
        "marquee/v1/display/lobby-acl-b/timeline".into(),
        Vec::new(),
        true,
    ));
    lies.push(("marquee/v1/alert/all".into(), b"junk".to_vec(), true));
    lies.push((
        "marquee/v1/daemon/status".into(),
        br#"{"online":false}"#.to_vec(),
        true,
    ));
    // Last, something A may do: an unsigned report on its own topic, counted when it arrives.
    lies.push((
        "marquee/v1/agent/lobby-acl-a/events".into(),
        b"{}".to_vec(),
        false,
    ));
    for (topic, payload, retain) in lies {
        attacker
            .client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .unwrap();
    }
    // Everything before the marker has reached the daemon (one connection keeps order).
    let expect_unsigned = if broker_confines { 1.0 } else { 5.0 };
    counter_at_least(d, &token, unsigned, unsigned_before + expect_unsigned).await;

    let (_, after_b) = d.get("/api/v1/displays/lobby-acl-b", Some(&token)).await;
    assert_eq!(
        fleet_b(&after_b),
        fleet_b(&before_b),
        "B's fleet entry changed"
    );
    assert_eq!(after_b["online"], true);
    let (_, plays) = d
        .get("/api/v1/plays?from=2000-01-01T00:00:00Z", Some(&token))
        .await;
    assert!(
        !plays["plays"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["item"] == "forged"),
        "a forged play was stored"
    );
    let (_, shown) = d
        .get(&format!("/api/v1/alerts/{alert_c}"), Some(&token))
        .await;
    assert_eq!(shown["acks"], json!([]), "a forged ack was stored");
    assert_eq!(shown["not_acknowledged"], json!(["lobby-acl-c"]));
    let (s, _) = d.get("/api/v1/displays/fake-1", Some(&token)).await;
    assert_eq!(s, 404, "an unregistered display entered the fleet");
    let (_, reach_after) = pending_alert(d, &token, json!("all")).await;
    assert_eq!(reach_after, reach_all, "reach moved with what clients said");
    if broker_confines {
        // The daemon kept its session (a display's connection is named after its account).
        assert_eq!(
            d.metric(&token, "marquee_mqtt_connects_total").await,
            connects
        );
        // The broker dropped the writes on the daemon's topics: nothing needed restoring.
        assert_eq!(
            d.metric(&token, "marquee_retained_restored_total").await,
            restored_before
        );
        let mut fresh = Sub::connect_as(port, "marquee/v1/daemon/status", account).await;
        let m = fresh.wait("the retained daemon status", |_| true).await;
        assert_eq!(m.payload, br#"{"online":true}"#);
    }
}

#[tokio::test]
async fn with_the_generated_mosquitto_files_a_display_account_writes_only_its_own_reports() {
    // The operator's start: Mosquitto knows only the daemon's account.
    let dir = tempfile::tempdir().unwrap();
    let (passwd, acl) = (dir.path().join("passwd"), dir.path().join("acl"));
    let daemon_pw = "daemon-secret-0123456789";
    let out = std::process::Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwd)
        .args(["marquee-daemon", daemon_pw])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&acl, "user marquee-daemon\ntopic readwrite marquee/v1/#\n").unwrap();
    let mq = Mosquitto::start_secured(&passwd, &acl).await;
    let site = Site::new(
        &format!(
            "embedded = false\nurl = \"mqtt://127.0.0.1:{}\"\nusername = \"marquee-daemon\"\npassword_env = \"IT_MQ_PW\"",
            mq.port
        ),
        "",
    );
    site.append_config("[approval]\nalerts_above = 0\n");
    let d = Daemon::start_with_env(&site, &[("IT_MQ_PW", daemon_pw)]).await;
    let token = site.admin_token();
    std::fs::write(site.playlist("test-lobby"), interrupt("acl")).unwrap();
    let cfg_a = agent_config(&d, &site, "lobby-acl-a", "lobby", mq.port);
    let cfg_b = agent_config(&d, &site, "lobby-acl-b", "lobby", mq.port);
    // The generated files replace the start-up ones (keeping the daemon's own line); Mosquitto
    // reads them again on SIGHUP.
    let said = d.cli(
        &token,
        &[
            "broker",
            "mosquitto",
            "--out",
            &dir.path().display().to_string(),
        ],
    );
    assert!(
        said.contains("acl_file") && !said.contains("not in it yet"),
        "{said}"
    );
    let (status, files) = d.get("/api/v1/broker/mosquitto", Some(&token)).await;
    assert_eq!(files["daemon_user"], "marquee-daemon", "{files}");
    documented("get", "/api/v1/broker/mosquitto", status, &files);
    let written = std::fs::read_to_string(&passwd).unwrap();
    assert!(written.starts_with("marquee-daemon:$7$"), "{written}");
    assert_eq!(written.lines().count(), 3, "{written}");
    mq.reload();
    // A's screen is in the attacker's hands: its agent is not running, its account and key are.
    let _ = cfg_a;
    let mut b = AgentProc::start(&cfg_b, &[]);
    b.frame("B plays", |v| text_of(v).starts_with("acl")).await;
    let a_pw = std::fs::read_to_string(
        site.dir
            .path()
            .join("credentials/lobby-acl-a.broker.password"),
    )
    .unwrap();
    display_a_cannot_lie(&d, &site, mq.port, Some(("lobby-acl-a", &a_pw)), true).await;
    // A wrong password is refused by the broker outright.
    let mut o = rumqttc::MqttOptions::new("wrong-pw", "127.0.0.1", mq.port);
    o.set_credentials("lobby-acl-a", "wrong");
    let (_c, mut el) = rumqttc::AsyncClient::new(o, 10);
    let refused = loop {
        match el.poll().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => break false,
            Ok(_) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(_)) => break true,
            Err(e) => panic!("{e}"),
        }
    };
    assert!(refused, "a wrong password was accepted");

    // The other order: a daemon given a registered display's id as its broker account refuses
    // to start (the generated ACL would give that display every topic).
    d.stop().await;
    let cfg = std::fs::read_to_string(site.config()).unwrap();
    std::fs::write(
        site.config(),
        cfg.replace(
            "username = \"marquee-daemon\"",
            "username = \"lobby-acl-a\"",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["serve", "-c"])
        .arg(site.config())
        .env("IT_MQ_PW", daemon_pw)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mqtt.username: \"lobby-acl-a\" is a registered display's id"),
        "{err}"
    );
}

#[tokio::test]
async fn on_the_embedded_broker_reports_are_bound_by_signature() {
    let port = free_port();
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), "");
    site.append_config("[approval]\nalerts_above = 0\n");
    let d = Daemon::start(&site).await;
    std::fs::write(site.playlist("test-lobby"), interrupt("acl")).unwrap();
    let _cfg_a = agent_config(&d, &site, "lobby-acl-a", "lobby", port);
    let mut b = AgentProc::start(&agent_config(&d, &site, "lobby-acl-b", "lobby", port), &[]);
    b.frame("B plays", |v| text_of(v).starts_with("acl")).await;
    display_a_cannot_lie(&d, &site, port, None, false).await;
}

/// A playlist of `n` items with long texts on `channel`.
fn big_playlist(id: &str, channel: &str, n: usize) -> String {
    let items: Vec<Value> = (0..n)
        .map(|i| {
            json!({"id": format!("item-{i}"), "seconds": 10,
                   "text": {"zh": format!("{i} {}", "政务公开 服务为民 ".repeat(12)),
                            "en": format!("{i} {}", "Open government serving the people ".repeat(6))}})
        })
        .collect();
    serde_json::to_string(
        &json!({"id": id, "tier": "normal", "targets": {"channels": [channel]},
        "schedule": [{"start": "00:00", "end": "00:00"}], "items": items}),
    )
    .unwrap()
}

#[tokio::test]
async fn a_timeline_over_the_broker_limit_is_refused_and_every_other_channel_stays_live() {
    let mq = Mosquitto::start_with_extra("max_packet_size 65536").await;
    let site = Site::new(&format!("{}\nmax_payload = 65536", mq.section()), "");
    let mut d = Daemon::start(&site).await;
    let token = site.admin_token();
    // Written on disk (as an editor with file access would): 300 items on the subway channel.
    std::fs::write(
        site.playlist("subway-big"),
        big_playlist("subway-big", "subway", 300),
    )
    .unwrap();
    let start = std::time::Instant::now();
    while d.metric(&token, "marquee_timelines_oversize").await < 1.0 {
        assert!(
            start.elapsed() < DEADLINE,
            "the oversize timeline was not noticed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let line = d
        .wait_log("the refusal", |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("timeline too large"))
        })
        .await;
    assert_eq!(line["topic"], "marquee/v1/channel/subway/timeline");
    assert_eq!(line["limit"], 65536);
    // Every other channel stays live: a lobby edit goes out, on the first connection.
    let key = site.public_key();
    let mut sub = Sub::connect(mq.port, "marquee/v1/channel/lobby/timeline").await;
    let (v0, _) = sub
        .timeline(&key, "marquee/v1/channel/lobby/timeline", 1)
        .await;
    std::fs::write(site.playlist("test-lobby"), interrupt("still live")).unwrap();
    let (_, tl) = sub
        .timeline(&key, "marquee/v1/channel/lobby/timeline", v0 + 1)
        .await;
    assert!(serde_json::to_string(&tl).unwrap().contains("still live"));
    assert_eq!(d.metric(&token, "marquee_mqtt_connects_total").await, 1.0);
    // `check` names it; the API refuses such a save with the field and the sizes.
    let out = std::process::Command::new(bin())
        .args(["check", "-c"])
        .arg(site.config())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the timeline of channel subway would be") && err.contains("65536"),
        "{err}"
    );
    let (_, preview) = d.get("/api/v1/preview?channel=subway", Some(&token)).await;
    assert_eq!(
        preview["oversize"]["limit"], 65536,
        "{}",
        preview["oversize"]
    );
    std::fs::remove_file(site.playlist("subway-big")).unwrap();
    let (s, v) = d
        .send(
            reqwest::Method::PUT,
            "/api/v1/playlists/subway-big",
            Some(&token),
            Some(serde_json::from_str(&big_playlist("subway-big", "subway", 300)).unwrap()),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["field"], "items");
    assert!(!site.playlist("subway-big").exists());
}

async fn fleet(d: &Daemon, token: &str) -> Value {
    d.get("/api/v1/displays/lobby-will-1", Some(token)).await.1
}

#[tokio::test]
async fn a_replayed_will_or_old_status_changes_nothing_in_the_fleet() {
    let port = free_port();
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), "");
    let d = Daemon::start(&site).await;
    let token = site.admin_token();
    std::fs::write(site.playlist("test-lobby"), interrupt("first")).unwrap();
    let mut sub = Sub::connect(port, "marquee/v1/agent/lobby-will-1/status").await;
    let cfg = agent_config(&d, &site, "lobby-will-1", "lobby", port);
    let mut agent = AgentProc::start(&cfg, &[]);
    agent
        .frame("first", |v| text_of(v).starts_with("first"))
        .await;
    let online = |v: &Value| v["online"] == true;
    let old_status = sub.wait("a status", |m| !m.payload.is_empty()).await;
    // The screen dies: the broker sends its will, the fleet says offline.
    agent.kill();
    let will = sub
        .wait("the will", |m| {
            let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            v["body"]["payload"]["data"]["online"] == false
        })
        .await;
    let start = std::time::Instant::now();
    while online(&fleet(&d, &token).await) {
        assert!(start.elapsed() < DEADLINE, "the will never arrived");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Back (a new run): online again.
    let mut agent = AgentProc::start(&cfg, &[]);
    agent
        .frame("first again", |v| text_of(v).starts_with("first"))
        .await;
    let start = std::time::Instant::now();
    while !online(&fleet(&d, &token).await) {
        assert!(start.elapsed() < DEADLINE, "never online again");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The old will and the old online status, replayed: refused as replays, nothing moves.
    let replayed = "marquee_agent_reports_dropped_total{reason=\"replayed\"}";
    let before = d.metric(&token, replayed).await;
    for m in [&will, &old_status] {
        sub.client
            .publish(m.topic.clone(), QoS::AtLeastOnce, true, m.payload.clone())
            .await
            .unwrap();
    }
    counter_at_least(&d, &token, replayed, before + 2.0).await;
    assert!(
        online(&fleet(&d, &token).await),
        "a replayed will took the screen offline"
    );
    // Also after a daemon restart (the order is kept in the store).
    assert_eq!(d.stop().await, Some(0));
    let d = Daemon::start(&site).await;
    sub.client
        .publish(
            will.topic.clone(),
            QoS::AtLeastOnce,
            true,
            will.payload.clone(),
        )
        .await
        .unwrap();
    counter_at_least(&d, &token, replayed, 1.0).await;
    drop(agent);
}

#[tokio::test]
async fn two_agents_with_one_id_are_flagged_and_do_not_fight() {
    let mq = Mosquitto::start().await;
    let site = Site::new(&mq.section(), "");
    let d = Daemon::start(&site).await;
    let token = site.admin_token();
    let cfg = agent_config(&d, &site, "lobby-twin-1", "lobby", mq.port);
    // The same config copied to a second screen (its own disk, so its own cache).
    let copy = site.dir.path().join("agent-twin-copy.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&copy, text.replace("cache-lobby-twin-1", "cache-twin-copy")).unwrap();
    let first = AgentProc::start(&cfg, &[]);
    let second = AgentProc::start(&copy, &[]);
    let start = std::time::Instant::now();
    let flagged = loop {
        let (_, v) = d.get("/api/v1/displays/lobby-twin-1", Some(&token)).await;
        if v["conflict"] == true {
            break start.elapsed();
        }
        assert!(start.elapsed() < DEADLINE, "never flagged: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(d.metric(&token, "marquee_display_conflicts_total").await >= 1.0);
    let table = d.cli(&token, &["displays"]);
    assert!(table.contains("CONFLICT"), "{table}");
    // They back off instead of taking the session from each other many times a second: the
    // waits double (from 0.1 s, jittered by half), so eight takeovers take over a second (13 a
    // second were measured before).
    let lost_at = |a: &AgentProc| -> Vec<chrono::DateTime<Utc>> {
        a.log
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["message"] == "MQTT connection lost; reconnecting")
            .filter_map(|v| v["timestamp"].as_str()?.parse().ok())
            .collect()
    };
    let all = eventually("eight takeovers", || {
        let mut all = lost_at(&first);
        all.extend(lost_at(&second));
        all.sort();
        (all.len() >= 8).then_some(all)
    })
    .await;
    let span = (all[7] - all[0]).num_milliseconds();
    assert!(
        span >= 1000,
        "eight takeovers in {span} ms (flagged after {flagged:?})"
    );
}

#[tokio::test]
async fn killing_the_first_broker_moves_daemon_and_agent_to_the_second() {
    // The second broker is not up yet: whichever each picks first, both end on the first.
    let mq1 = Mosquitto::start().await;
    let port2 = free_port();
    let urls = format!(
        "embedded = false\nurls = [\"mqtt://127.0.0.1:{}\", \"mqtt://127.0.0.1:{port2}\"]",
        mq1.port
    );
    let site = Site::new(&urls, "");
    let d = Daemon::start(&site).await;
    let token = site.admin_token();
    let cfg = agent_config(&d, &site, "lobby-fo-1", "lobby", mq1.port);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("url = \"mqtt://127.0.0.1:{}\"", mq1.port),
        &format!(
            "urls = [\"mqtt://127.0.0.1:{}\", \"mqtt://127.0.0.1:{port2}\"]",
            mq1.port
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    let mut agent = AgentProc::start(&cfg, &[]);
    agent
        .frame("a timeline frame", |v| v["kind"] == "timeline")
        .await;
    let _mq2 = Mosquitto::start_on_port(port2).await;
    drop(mq1);
    // Both end up on the second broker: the display says so, and an edit reaches it there.
    let second = format!("127.0.0.1:{port2}");
    let start = std::time::Instant::now();
    loop {
        let (_, v) = d.get("/api/v1/displays/lobby-fo-1", Some(&token)).await;
        if v["broker"] == second.as_str() && v["online"] == true {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "not on the second broker: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    std::fs::write(site.playlist("test-lobby"), interrupt("after failover")).unwrap();
    agent
        .frame("the edit through the second broker", |v| {
            text_of(v).starts_with("after failover")
        })
        .await;
}

#[tokio::test]
async fn a_refused_subscription_makes_the_agent_reconnect_and_say_why() {
    // A broker whose ACL denies this display the held-alert topics (as EMQX answers: SUBACK 0x80).
    let port = denying_broker(&["/held"]);
    let site = Site::new(&format!("listen = \"127.0.0.1:{}\"", free_port()), "");
    let d = Daemon::start(&site).await;
    let mut agent = AgentProc::start(&agent_config(&d, &site, "lobby-deny-1", "lobby", port), &[]);
    let line = agent
        .wait_log("the refusal", |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("the broker refused a subscription"))
        })
        .await;
    assert!(
        line["filter"].as_str().unwrap().ends_with("/held"),
        "{line}"
    );
    agent
        .wait_log("the reconnect", |v| {
            v["message"] == "MQTT connection lost; reconnecting"
        })
        .await;
}
