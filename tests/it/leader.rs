//! Two daemons on one PostgreSQL database and one Mosquitto: one leads, the other serves the
//! API as a standby; kill -9 and SIGSTOP of the leader mid-campaign, alerts raised on the
//! standby (during the failover too), a real agent, the fake carrier.
//! PostgreSQL runs only (`scripts/test`'s second pass): on SQLite there is one daemon.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::*;
use crate::sms::{
    Fake, Rule, SECRET, campaign, count, create, messages, number, start_until_held, until,
};

/// A node of the fleet: the broker's section, its name, a short lease, the fake gateway.
fn node(mosquitto: &Mosquitto, fake: &Fake, name: &str, leader: Option<&Site>) -> Site {
    node_on(&mosquitto.section(), fake, name, leader)
}

/// A node on the broker of `mqtt_section`.
fn node_on(mqtt_section: &str, fake: &Fake, name: &str, leader: Option<&Site>) -> Site {
    let site = Site::new(mqtt_section, "");
    if let Some(other) = leader {
        site.share_store_and_key_of(other);
    }
    site.store_keys(&format!(
        "node = \"{name}\"\nlease = \"2s\"\nshare_events = true"
    ));
    site.append_config(&format!(
        "[sms]\nsender = \"12345\"\n{}",
        fake.gateway("alpha", 200, 4, "5s")
    ));
    site
}

fn refused(agent: &AgentProc) -> Vec<Value> {
    agent
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("refused payload"))
        })
        .cloned()
        .collect()
}

async fn alert(d: &Daemon, token: &str, text: &str) -> Value {
    let (status, v) = d
        .send(
            Method::POST,
            "/api/v1/alerts",
            Some(token),
            Some(
                json!({"text": {"en": text}, "scope": {"channels": ["lobby"]},
                        "severity": "extreme", "expires_in": "10m"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    v
}

/// A broker, the fake carrier, node `a` leading and node `b` its standby (each a site and its
/// daemon).
async fn leader_and_standby() -> (Mosquitto, Fake, (Site, Daemon), (Site, Daemon)) {
    let env = [("TEST_DLR_SECRET", SECRET)];
    let mosquitto = Mosquitto::start().await;
    let fake = Fake::start(Duration::from_millis(5)).await;
    let a = node(&mosquitto, &fake, "a", None);
    let da = Daemon::start_with_env(&a, &env).await;
    let b = node(&mosquitto, &fake, "b", Some(&a));
    let db = Daemon::start_standby(&b, &env).await;
    (mosquitto, fake, (a, da), (b, db))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_a_killed_or_frozen_leader_and_nothing_is_sent_twice() {
    if !on_postgres() {
        // One daemon per SQLite file: there is no standby to test.
        return;
    }
    let (mosquitto, fake, (a, da), (b, mut db)) = leader_and_standby().await;
    let env = [("TEST_DLR_SECRET", SECRET)];
    let token_b = b.admin_token();
    // The standby answers the API: ready while a node leads; playlist files are written on
    // the leader, and the answer names it.
    let (status, r) = db.get("/readyz", None).await;
    assert_eq!(
        (status, r["role"].as_str(), r["leader"].as_str()),
        (200, Some("standby"), Some("a")),
        "{r}"
    );
    let playlist = std::fs::read_to_string(b.playlist("hotline-12345")).unwrap();
    let (status, r) = db
        .send(
            Method::PUT,
            "/api/v1/playlists/hotline-12345",
            Some(&token_b),
            Some(serde_json::from_str(&playlist).unwrap()),
        )
        .await;
    assert_eq!(
        (status, r["error"]["code"].as_str()),
        (503, Some("standby")),
        "{r}"
    );
    assert!(
        r["error"]["message"].as_str().unwrap().contains("\"a\""),
        "{r}"
    );
    let mut agent = AgentProc::start(
        &agent_config(&da, &a, "lobby-east-1", "lobby", mosquitto.port),
        &[],
    );
    agent
        .frame("a timeline from the leader", |v| v["kind"] == "timeline")
        .await;

    // A campaign on the leader; one number held by the carrier when the leader dies.
    let total = 200;
    let held = number(90);
    fake.rule(&held, Rule::Hold);
    let token_a = a.admin_token();
    let csv: String = std::iter::once("number".to_owned())
        .chain((0..total).map(number))
        .collect::<Vec<_>>()
        .join("\n");
    let id = create(
        &da,
        &token_a,
        json!({"name": "failover", "text": "Open Day", "recipients_csv": csv}),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    start_until_held(&da, &token_a, id, &fake, &held).await;

    // 1. kill -9 of the leader: the standby takes over and finishes the campaign.
    da.signal("KILL");
    let killed = Instant::now();
    fake.release();
    fake.rule(&held, Rule::Ok);
    // An alert raised on the standby's API while no node publishes: stored and handed over,
    // it reaches the screen once the standby leads.
    let v = alert(&db, &token_b, "during the failover").await;
    assert_eq!(v["published"][0]["broker"], "handed_off", "{v}");
    db.wait_ready().await;
    eprintln!(
        "failover after kill -9: ready {:?} after the kill",
        killed.elapsed()
    );
    agent
        .frame("the alert raised on the standby during the failover", |v| {
            text_of(v).contains("during the failover")
        })
        .await;
    let c = until(
        &db,
        &token_b,
        id,
        "the standby to finish the campaign",
        |c| c["status"] == "done",
    )
    .await;
    let ms = messages(&db, &token_b, id).await;
    assert_eq!(ms.len(), total, "no recipient lost");
    let seen = fake.requests_for();
    for m in &ms {
        let n = seen
            .get(m["recipient"].as_str().unwrap())
            .copied()
            .unwrap_or(0);
        match m["state"].as_str().unwrap() {
            "sent" | "delivered" => assert_eq!(n, 1, "{m}"),
            // Caught mid-submit by the kill: flagged, never resent.
            "unknown" => assert!(n <= 1, "{m} sent {n} times"),
            other => panic!("ended {other}: {m}"),
        }
    }
    let held_row = ms.iter().find(|m| m["recipient"] == held.as_str()).unwrap();
    assert_eq!(held_row["state"], "unknown", "{held_row}");
    assert!((1..=20).contains(&count(&c, "unknown")), "{c}");
    // The new leader reaches the screen: an alert raised through it is shown.
    alert(&db, &token_b, "after the kill").await;
    agent
        .frame("the alert through the new leader", |v| {
            text_of(v).contains("after the kill")
        })
        .await;

    // 2. The old node comes back as a standby; the leader is frozen (SIGSTOP).
    let mut da = Daemon::start_standby(&a, &env).await;
    // An alert raised on a standby while a node leads: the leader publishes it.
    alert(&da, &token_a, "through the standby").await;
    agent
        .frame("the alert raised on the standby", |v| {
            text_of(v).contains("through the standby")
        })
        .await;
    // A delivery report pushed to a standby is stored: the leader's API shows it (the held
    // message, `unknown` since the kill, was delivered after all).
    let reported = held_row;
    let (status, v) = da
        .send(
            Method::POST,
            &format!(
                "/api/v1/sms/dlr/alpha?secret={SECRET}&id={}",
                reported["id"]
            ),
            None,
            Some(json!({"status": "delivered"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let now = messages(&db, &token_b, id).await;
    let row = now.iter().find(|m| m["id"] == reported["id"]).unwrap();
    assert_eq!(row["state"], "delivered", "{row}");
    let c = campaign(&db, &token_b, id).await;
    // A display registered through a standby: the leader reads the registry again (and takes
    // its reports).
    let (status, r) = da
        .send(
            Method::POST,
            "/api/v1/registry",
            Some(&token_a),
            Some(json!({"id": "bus-7", "channel": "lobby"})),
        )
        .await;
    assert_eq!(status, 201, "{r}");
    db.wait_log("the leader to read the registry again", |v| {
        v["message"] == "read the display registry again"
    })
    .await;
    // A playlist the leader publishes shows on the standby's API.
    let new = std::fs::read_to_string(b.playlist("hotline-12345"))
        .unwrap()
        .replace("\"id\": \"hotline-12345\"", "\"id\": \"it-standby-sees\"");
    std::fs::write(b.playlist("it-standby-sees"), new).unwrap();
    eventually_async("the standby to show the leader's new playlist", || async {
        let (_, v) = da.get("/api/v1/playlists", Some(&token_a)).await;
        v["playlists"]
            .as_array()?
            .iter()
            .any(|p| p["id"] == "it-standby-sees")
            .then_some(())
    })
    .await;
    // Raised on a standby and cleared at once on the leader: the clear goes out after the
    // alert, and is not skipped for an alert not yet published.
    let mut topic = Sub::connect(mosquitto.port, "marquee/v1/alert/lobby").await;
    let v = alert(
        &da,
        &token_a,
        "raised on the standby, cleared on the leader",
    )
    .await;
    let x = v["id"].as_str().unwrap().to_owned();
    let (status, r) = db
        .send(
            Method::DELETE,
            &format!("/api/v1/alerts/{x}"),
            Some(&token_b),
            None,
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let key = a.public_key();
    topic
        .wait("the clear of the alert raised on the standby", |m| {
            matches!(m.verified(&key).map(|b| b.payload),
                Ok(marquee::wire::Signed::AlertClear(c)) if c.id == x)
        })
        .await;
    // Both nodes take a share of the agent's event batches (Mosquitto delivers a shared
    // subscription to its members in turn), store them and send their receipts.
    let ingested = "marquee_agent_events_ingested_total";
    for (d, what) in [(&mut da, "the standby's"), (&mut db, "the leader's")] {
        d.wait_log(&format!("{what} share of the event intake"), |v| {
            v["message"] == "sharing the agents' event intake with the other nodes"
        })
        .await;
    }
    let mut n = 0;
    while da.metric(&token_a, ingested).await == 0.0 || db.metric(&token_b, ingested).await == 0.0 {
        // Each alert shown is an event batch from the agent.
        n += 1;
        assert!(n <= 20, "no share of the events reached both nodes");
        alert(&db, &token_b, &format!("event {n}")).await;
        agent
            .frame("the alert that makes an event", |v| {
                text_of(v) == format!("event {n}")
            })
            .await;
    }
    eprintln!("both nodes stored event batches after {n} extra alerts");
    let sent_before = fake.requests();
    db.signal("STOP");
    let stopped = Instant::now();
    let lines_before_stop = db.log.lock().unwrap().len();
    da.wait_ready().await;
    eprintln!(
        "failover after SIGSTOP: ready {:?} after the stop",
        stopped.elapsed()
    );
    alert(&da, &token_a, "while b is frozen").await;
    agent
        .frame("the alert through the newest leader", |v| {
            text_of(v).contains("while b is frozen")
        })
        .await;
    // The frozen leader wakes up: it stops without publishing or sending anything.
    db.signal("CONT");
    assert_eq!(
        db.wait_exit("the woken leader to stop").await,
        Some(marquee::leader::LOST)
    );
    let woken: Vec<Value> = db.log.lock().unwrap()[lines_before_stop..].to_vec();
    assert!(
        woken.iter().any(|v| v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("lost the leader lease"))),
        "{woken:?}"
    );
    assert!(
        !woken.iter().any(|v| v["message"] == "publishing timeline"),
        "the woken leader published: {woken:?}"
    );
    assert_eq!(
        fake.requests(),
        sent_before,
        "nothing sent after the freeze"
    );
    let c2 = campaign(&da, &token_a, id).await;
    assert_eq!(c2["counts"], c["counts"], "{c} then {c2}");
    // The screen never refused anything: no leader published below another.
    alert(&da, &token_a, "last word").await;
    agent
        .frame("the last alert", |v| text_of(v).contains("last word"))
        .await;
    assert_eq!(refused(&agent), Vec::<Value>::new());
}

/// Each node records its broker account on the shared store: the Mosquitto files generated on
/// either node give every node's account the daemon's topics and keep every node's password
/// line, a display may not take a node's account, and a real Mosquitto with those files admits
/// both nodes' accounts to the daemon's topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_mosquitto_files_carry_every_nodes_broker_account() {
    if !on_postgres() {
        // One daemon per SQLite file: its own account is the only one.
        return;
    }
    const PW: [&str; 2] = ["hall-a-secret-0123456789", "hall-b-secret-0123456789"];
    // The nodes run on an anonymous broker (it takes any account); the files are for another.
    let mosquitto = Mosquitto::start().await;
    let fake = Fake::start(Duration::from_millis(5)).await;
    let account = |user: &str| {
        format!(
            "{}\nusername = \"{user}\"\npassword_env = \"IT_MQ_PW\"",
            mosquitto.section()
        )
    };
    let a = node_on(&account("hall-a"), &fake, "a", None);
    let da = Daemon::start_with_env(&a, &[("IT_MQ_PW", PW[0]), ("TEST_DLR_SECRET", SECRET)]).await;
    let b = node_on(&account("hall-b"), &fake, "b", Some(&a));
    let db = Daemon::start_standby(&b, &[("IT_MQ_PW", PW[1]), ("TEST_DLR_SECRET", SECRET)]).await;
    let (token_a, token_b) = (a.admin_token(), b.admin_token());

    // The leader's answer names the standby's account too, and the standby's the leader's.
    for (d, token) in [(&da, &token_a), (&db, &token_b)] {
        let (status, files) = d.get("/api/v1/broker/mosquitto", Some(token)).await;
        assert_eq!(status, 200, "{files}");
        assert_eq!(
            files["daemon_users"],
            json!(["hall-a", "hall-b"]),
            "{files}"
        );
    }
    // Neither node's account can be taken by a display.
    let (status, v) = da
        .send(
            Method::POST,
            "/api/v1/registry",
            Some(&token_a),
            Some(json!({"id": "hall-b", "channel": "lobby"})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("broker user name"), "{v}");

    // The operator's start: both daemon accounts, made with mosquitto_passwd.
    let dir = tempfile::tempdir().unwrap();
    let (passwd, acl) = (dir.path().join("passwd"), dir.path().join("acl"));
    mosquitto_account(&passwd, "hall-a", PW[0]);
    mosquitto_account(&passwd, "hall-b", PW[1]);
    let said = db.cli(
        &token_b,
        &[
            "broker",
            "mosquitto",
            "--out",
            &dir.path().display().to_string(),
        ],
    );
    assert!(!said.contains("not in it yet"), "{said}");
    let written = std::fs::read_to_string(&passwd).unwrap();
    for user in ["hall-a:$7$", "hall-b:$7$"] {
        assert!(written.lines().any(|l| l.starts_with(user)), "{written}");
    }
    let rules = std::fs::read_to_string(&acl).unwrap();
    for user in ["hall-a", "hall-b"] {
        assert!(
            rules.contains(&format!("user {user}\ntopic readwrite marquee/v1/#\n")),
            "{rules}"
        );
    }

    // A real Mosquitto with the generated files: what one node's account writes on the
    // daemon's topics, the other's reads.
    let secured = Mosquitto::start_secured(&passwd, &acl).await;
    let mut reader = Sub::connect_as(
        secured.port,
        "marquee/v1/daemon/status",
        Some(("hall-b", PW[1])),
    )
    .await;
    let writer = Sub::connect_as(secured.port, "marquee/v1/none", Some(("hall-a", PW[0]))).await;
    writer
        .client
        .publish(
            "marquee/v1/daemon/status",
            rumqttc::QoS::AtLeastOnce,
            true,
            &br#"{"online":true,"by":"hall-a"}"#[..],
        )
        .await
        .unwrap();
    reader
        .wait("hall-a's status, read by hall-b", |m| {
            m.payload == br#"{"online":true,"by":"hall-a"}"#
        })
        .await;

    // Node b is taken out of service: forgotten, its account leaves the files; a node cannot
    // forget itself, the leader, nor one the store never had.
    let (s, v) = db
        .send(Method::DELETE, "/api/v1/nodes/a", Some(&token_b), None)
        .await;
    assert_eq!(s, 400, "the leader was forgotten: {v}");
    db.stop().await;
    let said = da.cli(&token_a, &["broker", "forget-node", "b"]);
    assert!(said.contains("forgot node b"), "{said}");
    let (_, files) = da.get("/api/v1/broker/mosquitto", Some(&token_a)).await;
    assert_eq!(files["daemon_users"], json!(["hall-a"]), "{files}");
    assert!(
        !files["acl_file"].as_str().unwrap().contains("hall-b"),
        "{files}"
    );
    for (name, status) in [("a", 400), ("b", 404)] {
        let (s, v) = da
            .send(
                Method::DELETE,
                &format!("/api/v1/nodes/{name}"),
                Some(&token_a),
                None,
            )
            .await;
        assert_eq!(s, status, "{name}: {v}");
    }
}

/// A gateway the leader took out of rotation for an account error is shown out on the
/// standby's API, and stays out when the standby takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_out_of_rotation_is_out_on_every_node_and_after_a_failover() {
    if !on_postgres() {
        // One daemon per SQLite file (its restart: tests/it/tencent.rs).
        return;
    }
    let (_mosquitto, fake, (a, da), (b, mut db)) = leader_and_standby().await;
    let (token_a, token_b) = (a.admin_token(), b.admin_token());
    let to = number(1);
    fake.rule(&to, Rule::AlphaAccount);
    let id = create(
        &da,
        &token_a,
        json!({"name": "balance", "text": "Open Day", "recipients_csv": format!("number\n{to}")}),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let (status, v) = da
        .send(
            Method::POST,
            &format!("/api/v1/campaigns/{id}/start"),
            Some(&token_a),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let out = |v: &Value| v["gateways"][0]["out_of_rotation"] == true;
    let shown = eventually_async("the standby to show alpha out of rotation", || async {
        let (_, v) = db.get("/api/v1/sms/gateways", Some(&token_b)).await;
        out(&v).then_some(v)
    })
    .await;
    assert!(
        shown["gateways"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("balance"),
        "{shown}"
    );
    // A standby dispatches nothing: nothing of its own to show half-open.
    assert_eq!(shown["gateways"][0]["half_open"], false, "{shown}");

    // The leader dies; the standby leads and keeps the gateway out.
    da.signal("KILL");
    db.wait_ready().await;
    eventually_async("the new leader to keep alpha out", || async {
        (db.metric(
            &token_b,
            "marquee_sms_gateway_out_of_rotation{gateway=\"alpha\"}",
        )
        .await
            == 1.0)
            .then_some(())
    })
    .await;
    let (_, v) = db.get("/api/v1/sms/gateways", Some(&token_b)).await;
    assert!(out(&v), "{v}");
    // Back in rotation it takes one request, not a window.
    assert_eq!(v["gateways"][0]["half_open"], true, "{v}");
    assert_eq!(fake.requests(), 1, "alpha was asked again");
}
