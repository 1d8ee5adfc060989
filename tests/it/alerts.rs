//! Emergency alerts through the API, shown by a real agent.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::*;

const VIEWER: &str = "viewer-token-0123456789";

fn frames_since(agent: &AgentProc, n: usize, pred: impl Fn(&Value) -> bool) -> bool {
    agent.frames.lock().unwrap()[n..].iter().any(pred)
}

#[tokio::test]
async fn alert_raised_by_api_preempts_is_acknowledged_and_ends() {
    let port = free_port();
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), "");
    site.append_config("[[auth.tokens]]\nname = \"watcher\"\nrole = \"viewer\"\ntoken_env = \"MARQUEE_IT_VIEWER\"\n");
    let d = Daemon::start_with_env(&site, &[("MARQUEE_IT_VIEWER", VIEWER)]).await;
    let admin = site.admin_token();
    let mut agent = AgentProc::start(
        &agent_config(&d, &site, "lobby-alert-1", "lobby", port),
        &[],
    );
    agent
        .frame("normal content", |v| v["kind"] == "timeline")
        .await;
    // The daemon knows the display before the alert (for "not acknowledged").
    let start = std::time::Instant::now();
    while d
        .get("/api/v1/displays/lobby-alert-1", Some(&admin))
        .await
        .0
        != 200
    {
        assert!(start.elapsed() < DEADLINE, "display never reported");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let body = json!({"text": {"zh": "台风红色预警 请留在室内", "en": "Typhoon red warning: stay indoors"},
                      "scope": {"channels": ["lobby"]}, "severity": "extreme", "expires_in": "10m"});
    // Authentication and roles.
    let (s, _) = d
        .send(Method::POST, "/api/v1/alerts", None, Some(body.clone()))
        .await;
    assert_eq!(s, 401);
    let (s, e) = d
        .send(
            Method::POST,
            "/api/v1/alerts",
            Some(VIEWER),
            Some(body.clone()),
        )
        .await;
    assert_eq!((s, e["error"]["code"].as_str()), (403, Some("forbidden")));
    let (s, e) = d
        .send(
            Method::POST,
            "/api/v1/alerts",
            Some(&admin),
            Some(json!({"text": {"en": "x"}, "scope": {"channels": ["tram"]}})),
        )
        .await;
    assert_eq!((s, e["error"]["field"].as_str()), (400, Some("scope")));
    let (s, e) = d
        .send(
            Method::POST,
            "/api/v1/alerts",
            Some(&admin),
            Some(json!({"text": {}})),
        )
        .await;
    assert_eq!((s, e["error"]["field"].as_str()), (400, Some("text")));

    // Raised: on screen at once.
    let (s, raised) = d
        .send(Method::POST, "/api/v1/alerts", Some(&admin), Some(body))
        .await;
    assert_eq!(s, 201, "{raised}");
    let id = raised["id"].as_str().unwrap().to_owned();
    assert_eq!(raised["published"][0]["topic"], "marquee/v1/alert/lobby");
    let f = agent.frame("the alert", |v| v["kind"] == "alert").await;
    assert!(text_of(&f).contains("Typhoon") || text_of(&f).contains("台风"));

    // Acknowledged, with latency; the only one in scope missing is the declared lobby-east-1,
    // which has no agent running (known displays come from the registry and the config, not
    // from who happened to report).
    let start = std::time::Instant::now();
    let shown = loop {
        let (_, v) = d.get(&format!("/api/v1/alerts/{id}"), Some(VIEWER)).await;
        if v["acks"].as_array().is_some_and(|a| !a.is_empty()) {
            break v;
        }
        assert!(start.elapsed() < DEADLINE, "no ack: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(shown["acks"][0]["display"], "lobby-alert-1");
    assert!(shown["acks"][0]["latency_ms"].as_i64().unwrap() >= 0);
    assert_eq!(shown["not_acknowledged"], json!(["lobby-east-1"]));
    assert_eq!(shown["alert"]["raised_by"], "admin");

    // A newer alert on the same scope, then clearing the old one: the newer stays.
    let (_, newer) = d
        .send(Method::POST, "/api/v1/alerts", Some(&admin),
              Some(json!({"text": {"en": "Flood warning"}, "scope": {"channels": ["lobby"]}, "expires_in": "10m"})))
        .await;
    agent
        .frame("the newer alert", |v| text_of(v) == "Flood warning")
        .await;
    let (s, cleared) = d
        .send(
            Method::DELETE,
            &format!("/api/v1/alerts/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(cleared["alert"]["cleared_by"], "admin");
    let mut fresh = Sub::connect(port, "marquee/v1/alert/lobby").await;
    let m = fresh
        .wait("retained lobby alert", |m| !m.payload.is_empty())
        .await;
    let body = m.verified(&site.public_key()).unwrap();
    assert!(
        matches!(body.payload, marquee::wire::Signed::Alert(a) if a.text["en"] == "Flood warning")
    );

    // Clearing the current one: normal content resumes.
    let n = agent.frames.lock().unwrap().len();
    let newer_id = newer["id"].as_str().unwrap();
    let (s, _) = d
        .send(
            Method::DELETE,
            &format!("/api/v1/alerts/{newer_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let frames = agent.frames.clone();
    eventually("normal content after the clear", || {
        frames.lock().unwrap()[n..]
            .iter()
            .any(|v| v["kind"] == "timeline")
            .then_some(())
    })
    .await;

    // Expiry: an alert of 2 s ends by itself.
    let n = agent.frames.lock().unwrap().len();
    let (s, _) = d
        .send(
            Method::POST,
            "/api/v1/alerts",
            Some(&admin),
            Some(json!({"text": {"en": "Short drill"}, "expires_in": "2s"})),
        )
        .await;
    assert_eq!(s, 201);
    agent
        .frame("the drill", |v| text_of(v) == "Short drill")
        .await;
    eventually("normal content after expiry", || {
        let fs = frames.lock().unwrap();
        let drill = fs[n..].iter().position(|v| text_of(v) == "Short drill")?;
        fs[n + drill..]
            .iter()
            .any(|v| v["kind"] == "timeline")
            .then_some(())
    })
    .await;
    assert!(frames_since(&agent, n, |v| text_of(v) == "Short drill"));
    let (_, list) = d.get("/api/v1/alerts", Some(VIEWER)).await;
    assert_eq!(list["alerts"].as_array().unwrap().len(), 3);
    let (_, audit) = d.get("/api/v1/audit", Some(&admin)).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec![
            "display.register",
            "alert.raise",
            "alert.raise",
            "alert.clear",
            "alert.clear",
            "alert.raise"
        ]
    );
    assert_eq!(audit["chain"]["intact"], true);

    // The CLI: raise, show, clear.
    let cli = |args: &[&str]| d.cli(&admin, args);
    let out = cli(&[
        "alert",
        "raise",
        "--zh",
        "演练",
        "--en",
        "CLI drill",
        "--channel",
        "lobby",
        "--expires-in",
        "5m",
    ]);
    let id = out.lines().next().unwrap().to_owned();
    assert!(
        id.starts_with("alert-") && out.contains("marquee/v1/alert/lobby"),
        "{out}"
    );
    agent
        .frame("the CLI alert", |v| {
            text_of(v) == "CLI drill" || text_of(v) == "演练"
        })
        .await;
    let shown: Value = serde_json::from_str(&cli(&["alert", "show", &id])).unwrap();
    assert_eq!(shown["alert"]["severity"], "severe");
    let cleared: Value = serde_json::from_str(&cli(&["alert", "clear", &id])).unwrap();
    assert!(cleared["alert"]["cleared_at"].is_string());
    let out = std::process::Command::new(bin())
        .args([
            "alert",
            "raise",
            "--en",
            "x",
            "--channel",
            "tram",
            "--url",
            &d.http,
            "--token",
            &admin,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown channel \"tram\" (field scope)"),
        "{err}"
    );
}

/// A database restored from an old backup (same key, same data directory): versions continue
/// above what agents hold, so the next alert reaches the screen instead of being refused as a
/// rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restored_from_an_old_backup_still_reaches_every_screen() {
    if on_postgres() {
        // It restores SQLite's files; PostgreSQL's restore is `pg_restore`, not covered here.
        return;
    }
    let port = free_port();
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), "");
    let data = site.dir.path().join("data");
    let backup = site.dir.path().join("backup");
    std::fs::create_dir(&backup).unwrap();
    let db_files = ["marquee.db", "marquee.db-wal", "marquee.db-shm"];
    // The backup: a database from the first start.
    let d = Daemon::start(&site).await;
    assert_eq!(d.stop().await, Some(0));
    for f in db_files {
        if data.join(f).exists() {
            std::fs::copy(data.join(f), backup.join(f)).unwrap();
        }
    }
    // Life goes on: alerts raised and cleared, versions grow on the screens.
    let d = Daemon::start(&site).await;
    let admin = site.admin_token();
    let mut agent = AgentProc::start(
        &agent_config(&d, &site, "lobby-restore-1", "lobby", port),
        &[],
    );
    agent
        .frame("normal content", |v| v["kind"] == "timeline")
        .await;
    for i in 0..3 {
        let (s, r) = d
            .send(
                Method::POST,
                "/api/v1/alerts",
                Some(&admin),
                Some(json!({"text": {"en": format!("drill {i}")}, "scope": {"channels": ["lobby"]}, "expires_in": "10m"})),
            )
            .await;
        assert_eq!(s, 201, "{r}");
        agent
            .frame("the drill", |v| text_of(v) == format!("drill {i}"))
            .await;
        let id = r["id"].as_str().unwrap().to_owned();
        let (s, _) = d
            .send(
                Method::DELETE,
                &format!("/api/v1/alerts/{id}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(s, 200);
    }
    assert_eq!(d.stop().await, Some(0));
    // The old backup comes back.
    for f in db_files {
        let _ = std::fs::remove_file(data.join(f));
        if backup.join(f).exists() {
            std::fs::copy(backup.join(f), data.join(f)).unwrap();
        }
    }
    let mut d = Daemon::start(&site).await;
    d.wait_log("the warning about the restored database", |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("the database is behind the versions already published"))
    })
    .await;
    let (s, r) = d
        .send(
            Method::POST,
            "/api/v1/alerts",
            Some(&admin),
            Some(json!({"text": {"en": "after the restore"}, "scope": {"channels": ["lobby"]}, "expires_in": "10m"})),
        )
        .await;
    assert_eq!(s, 201, "{r}");
    agent
        .frame("the alert after the restore", |v| {
            text_of(v) == "after the restore"
        })
        .await;
    assert!(
        !agent.shown(|v| v["message"]
            .as_str()
            .is_some_and(|m| m.contains("rollback"))),
        "no payload refused as a rollback"
    );
}

/// With the broker down an alert is stored and signed and the answer says `queued`, not
/// published; it reaches subscribers once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_raised_while_the_broker_is_down_says_queued_and_goes_out_on_reconnect() {
    let mq = Mosquitto::start().await;
    let site = Site::new(&mq.section(), "");
    let d = Daemon::start(&site).await;
    let admin = site.admin_token();
    let (s, r) = d
        .send(
            Method::POST,
            "/api/v1/alerts",
            Some(&admin),
            Some(json!({"text": {"en": "broker up"}, "expires_in": "10m"})),
        )
        .await;
    assert_eq!((s, r["status"].as_str()), (201, Some("published")), "{r}");
    let mq = mq
        .restart_after(|| async {
            eventually_async("the daemon to see the broker gone", || async {
                (d.metric(&admin, "marquee_mqtt_connected").await == 0.0).then_some(())
            })
            .await;
            let (s, r) = d
                .send(
                    Method::POST,
                    "/api/v1/alerts",
                    Some(&admin),
                    Some(json!({"text": {"en": "while down"}, "expires_in": "10m"})),
                )
                .await;
            assert_eq!((s, r["status"].as_str()), (201, Some("queued")), "{r}");
            assert_eq!(r["published"][0]["broker"], "queued", "{r}");
            // Not ready, and says why; /healthz still answers (the process is up).
            let (s, r) = d.get("/readyz", None).await;
            assert_eq!(
                (s, r["broker"].as_str()),
                (503, Some("not connected")),
                "{r}"
            );
            assert_eq!(r["store"], "ok", "{r}");
            assert_eq!(d.get("/healthz", None).await.0, 200);
        })
        .await;
    eventually_async("ready again after the reconnect", || async {
        (d.get("/readyz", None).await.0 == 200).then_some(())
    })
    .await;
    let key = site.public_key();
    let mut sub = Sub::connect(mq.port, "marquee/v1/alert/all").await;
    sub.wait("the queued alert after the reconnect", |m| {
        m.verified(&key).is_ok_and(|b| {
            matches!(b.payload, marquee::wire::Signed::Alert(ref a) if a.text.get("en").is_some_and(|t| t == "while down"))
        })
    })
    .await;
}
