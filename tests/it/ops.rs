//! Operations on a running fleet (issue: survive what operations will do to it).

use serde_json::Value;

use crate::harness::*;

fn run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin())
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn rotating_the_key_under_running_agents_leaves_no_screen_on_its_fallback() {
    let port = free_port();
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), "");
    let d = Daemon::start(&site).await;
    let data = site.dir.path().join("data");
    std::fs::write(site.playlist("test-lobby"), interrupt("before rotation")).unwrap();
    // 1. Prepare: the next key; the agent is given its public half.
    let out = run(&["keygen", "--rotate", "--out", data.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let next_pub = std::fs::read_to_string(data.join("signing.next.pub")).unwrap();
    let again = run(&["keygen", "--rotate", "--out", data.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1), "a second rotation is refused");
    let cfg = agent_config(&d, &site, "lobby-rot-1", "lobby", port);
    let mut agent = AgentProc::start(&cfg, &[]);
    agent
        .frame("before", |v| text_of(v).starts_with("before rotation"))
        .await;
    // The running agent is given the next key: its config gains next_public_key_file, and a
    // SIGHUP reads it (no restart).
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "next_public_key_file = {:?}\n{text}",
            data.join("signing.next.pub").display().to_string()
        ),
    )
    .unwrap();
    agent.signal("HUP");
    let next_id = marquee::wire::PublicKey::from_hex(&next_pub)
        .unwrap()
        .id()
        .to_owned();
    agent
        .wait_log("the next key read", |v| {
            v["message"] == "public keys read again" && v["next_key_id"] == next_id.as_str()
        })
        .await;
    // 2. Switch: the daemon restarts on the new key and signs everything current again.
    assert_eq!(d.stop().await, Some(0));
    let mut d = Daemon::start(&site).await;
    d.wait_log("the switch", |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("switched to the prepared next signing key"))
    })
    .await;
    assert_eq!(site.public_key().to_hex(), next_pub.trim());
    assert!(data.join("signing.prev.key").exists());
    assert!(
        !data.join("signing.next.key").exists(),
        "the rotation was finished"
    );
    // A screen that joins now knows only the new key: what was published before the switch
    // (the subway timeline, not edited since) was signed again, so it plays at once.
    let late = AgentProc::start(
        &agent_config(&d, &site, "subway-rot-2", "subway", port),
        &[],
    );
    let mut late = late;
    late.frame("the subway timeline, signed again", |v| {
        v["kind"] == "timeline"
    })
    .await;
    // New content, signed with the new key, reaches the screen.
    std::fs::write(site.playlist("test-lobby"), interrupt("after rotation")).unwrap();
    agent
        .frame("after", |v| text_of(v).starts_with("after rotation"))
        .await;
    // 3. The agent takes the new key as its own on SIGHUP (public_key_file is signing.pub; the
    // next key file is gone with the finished rotation).
    agent.signal("HUP");
    agent
        .wait_log("the keys read again", |v| {
            v["message"] == "public keys read again"
                && v["key_id"] == Value::String(site.public_key().id().to_owned())
                && v["next_key_id"].is_null()
        })
        .await;
    // From its first timeline on, the screen never fell back to its local content (before it,
    // a fresh agent with no cache shows its fallback until it connects); nothing was refused.
    let frames = agent.frames.lock().unwrap().clone();
    let first = frames.iter().position(|v| v["kind"] == "timeline").unwrap();
    assert!(
        !frames[first..].iter().any(|v| v["kind"] == "fallback"),
        "a fallback frame was shown: {frames:?}"
    );
    assert!(
        !agent
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|v| v["message"] == "refused payload; nothing shown from it"),
        "{}",
        dump(&agent.log)
    );
    // Audited, and the audit anchor verifies under the new key.
    let (_, audit) = d.get("/api/v1/audit", Some(&site.admin_token())).await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "key.rotate")
    );
    let out = run(&["audit", "verify", "-c", site.config().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn idle_http_clients_cannot_starve_the_api_or_the_broker() {
    let port = free_port();
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), "");
    site.server_keys("header_timeout = \"5s\"");
    // 1,024 open files, as on many hosts: the default cap (half) keeps the rest for the
    // embedded broker and the database.
    let d = Daemon::start_with_nofile(&site, 1024).await;
    let token = site.admin_token();
    let addr = d.http.trim_start_matches("http://").to_owned();
    // 2,000 clients connect and send nothing (or half a request line).
    let mut idle = Vec::new();
    for i in 0..2000 {
        if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
            if i % 2 == 0 {
                use std::io::Write;
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\n");
            }
            idle.push(s);
        }
    }
    // The broker is untouched: a client connects and gets the retained lobby timeline.
    let mut sub = Sub::connect(port, "marquee/v1/channel/lobby/timeline").await;
    sub.wait("the lobby timeline", |m| !m.payload.is_empty())
        .await;
    // The API answers again once the idle ones are cut at the header timeout.
    let start = std::time::Instant::now();
    loop {
        let ok = healthz(&addr);
        if ok {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "/healthz never answered");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let refused = d
        .metric(&token, "marquee_http_connections_refused_total")
        .await;
    assert!(refused > 0.0, "{refused} refused");
    drop(idle);
}

/// GET /healthz on a fresh connection: whether it answered 200 (a connection closed at accept
/// answers nothing).
fn healthz(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200")
}

/// A store restored from an old backup (SQLite's file; on PostgreSQL a `pg_dump` of the schema
/// loaded again) with the high-water mark lost too: the daemon continues above what the screen
/// holds, and the screen takes the next edit and alert.
#[tokio::test]
async fn a_daemon_on_an_old_database_continues_above_what_screens_hold() {
    let port = free_port();
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), "");
    let d = Daemon::start(&site).await;
    let token = site.admin_token();
    let data = site.dir.path().join("data");
    let mut agent = AgentProc::start(&agent_config(&d, &site, "lobby-old-1", "lobby", port), &[]);
    agent.frame("a timeline", |v| v["kind"] == "timeline").await;
    // The backup, taken early.
    assert_eq!(d.stop().await, Some(0));
    let backup = site.dir.path().join("backup");
    site.backup_store(&backup);
    // Life goes on: edits and an alert raise every version the screen holds.
    let d = Daemon::start(&site).await;
    for n in 1..=3 {
        std::fs::write(site.playlist("test-lobby"), interrupt(&format!("edit {n}"))).unwrap();
        agent
            .frame("the edit", |v| text_of(v).starts_with(&format!("edit {n}")))
            .await;
    }
    let out = d.cli(
        &token,
        &["alert", "raise", "--en", "drill one", "--expires-in", "10m"],
    );
    assert!(out.contains("alert-"), "{out}");
    agent
        .frame("the first alert", |v| text_of(v) == "drill one")
        .await;
    let id = out
        .split_whitespace()
        .find(|w| w.starts_with("alert-"))
        .unwrap()
        .trim_matches(|c: char| !c.is_alphanumeric() && c != '-');
    d.cli(&token, &["alert", "clear", id]);
    let n = agent.frames.lock().unwrap().len();
    let frames = agent.frames.clone();
    eventually("the screen back on its timeline", || {
        frames.lock().unwrap()[n..]
            .iter()
            .any(|v| v["kind"] == "timeline")
            .then_some(())
    })
    .await;
    // Disaster: the database comes back from the backup and the high-water mark is lost too.
    assert_eq!(d.stop().await, Some(0));
    site.restore_store(&backup);
    std::fs::remove_file(data.join("versions.hwm")).unwrap();
    let mut d = Daemon::start(&site).await;
    d.wait_log("the adoption", |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("displays hold versions above"))
    })
    .await;
    // The screen's signed status says what it holds; the daemon continues above it: an edit
    // and an alert both reach the screen.
    std::fs::write(site.playlist("test-lobby"), interrupt("after restore")).unwrap();
    let start = std::time::Instant::now();
    while !agent.shown(|v| text_of(v).starts_with("after restore")) {
        assert!(
            start.elapsed() < DEADLINE,
            "the edit after the restore never reached the screen; agent log:\n{}\ndaemon log:\n{}",
            dump(&agent.log),
            dump(&d.log)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    d.cli(
        &token,
        &["alert", "raise", "--en", "drill two", "--expires-in", "10m"],
    );
    agent
        .frame("the alert after the restore", |v| text_of(v) == "drill two")
        .await;
}

/// A tmpfs mounted for one test, unmounted when dropped (the tests run as root, as CI does).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs needs root (as scripts/test runs): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_owned())
    }

    fn free(&self) -> u64 {
        let s = rustix::fs::statvfs(&self.0).unwrap();
        s.f_bavail * s.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_full_data_disk_still_takes_an_alert_and_refuses_the_playlist_save() {
    if on_postgres() {
        // The disk reserve is SQLite's: PostgreSQL's disk is the server's.
        return;
    }
    let port = free_port();
    // A dry-run gateway writes outside the data disk: an alert's SMS part is stored (and
    // refused) on it, never sent.
    let sms = format!(
        "[sms]\nsender = \"12345\"\n[[sms.gateways]]\nname = \"dry\"\nkind = \"dry-run\"\npath = {:?}\n",
        std::env::temp_dir().join(format!("marquee-full-disk-{port}.jsonl"))
    );
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), &sms);
    site.server_keys("disk_reserve_kib = 256");
    // The data directory is a 2 MB disk of its own; the playlists and the agent are elsewhere.
    let disk = Tmpfs::mount(&site.dir.path().join("data"), "2m");
    let d = Daemon::start(&site).await;
    let token = site.admin_token();
    assert_eq!(
        std::fs::metadata(site.dir.path().join("data/reserve"))
            .unwrap()
            .len(),
        256 * 1024
    );
    let mut agent = AgentProc::start(&agent_config(&d, &site, "lobby-full-1", "lobby", port), &[]);
    agent.frame("a timeline", |v| v["kind"] == "timeline").await;

    // Another display's reports fill the disk (batches of events with long reasons) until the
    // daemon refuses bulk writes: less free space than the reserve's size.
    let keys = register(&d, &site, "filler-1", "lobby");
    let sub = Sub::connect(port, "marquee/v1/agent/filler-1/ack").await;
    let topic = "marquee/v1/agent/filler-1/events";
    let reason = "x".repeat(900);
    let mut seq = 0u64;
    let start = std::time::Instant::now();
    while d.metric(&token, "marquee_disk_bulk_refused").await != 1.0 {
        assert!(
            start.elapsed() < DEADLINE * 3,
            "bulk writes were never refused ({} bytes free)",
            disk.free()
        );
        let events: Vec<Value> = (0..40)
            .map(|_| {
                seq += 1;
                serde_json::json!({"id": format!("filler-1:fill:{seq}"), "at": chrono::Utc::now(),
                    "kind": "refused", "topic": "x", "reason": reason})
            })
            .collect();
        let batch: marquee::wire::agent::EventBatch = serde_json::from_value(
            serde_json::json!({"display": "filler-1", "outbox": "fill", "upto": seq, "events": events}),
        )
        .unwrap();
        sub.client
            .publish(
                topic,
                rumqttc::QoS::AtLeastOnce,
                false,
                sign_report(&keys, topic, marquee::wire::Signed::Events(batch)),
            )
            .await
            .unwrap();
    }
    let left = disk.free();
    assert!(left < 256 * 1024, "{left} bytes free");
    // Then something else on that disk (a log, another program) takes the rest.
    let mut hog = std::fs::File::create(site.dir.path().join("data/hog")).unwrap();
    let block = vec![0u8; 4096];
    while std::io::Write::write_all(&mut hog, &block).is_ok() {}
    drop(hog);
    assert_eq!(disk.free(), 0);

    // A playlist save is refused, and says why (nothing written, nothing audited).
    let playlist: Value = serde_json::from_str(&interrupt("never saved")).unwrap();
    let (status, body) = d
        .send(
            reqwest::Method::PUT,
            "/api/v1/playlists/test-lobby",
            Some(&token),
            Some(playlist.clone()),
        )
        .await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "disk_full", "{body}");
    // An alert still goes out, and the screen shows it.
    let out = d.cli(
        &token,
        &[
            "alert",
            "raise",
            "--en",
            "full disk drill",
            "--expires-in",
            "10m",
        ],
    );
    assert!(out.contains("alert-"), "{out}");
    agent
        .frame("the alert", |v| text_of(v) == "full disk drill")
        .await;
    // An alert with an SMS part: the part cannot be stored, the alert still goes out, and the
    // answer says the SMS was refused for the disk.
    let (status, raised) = d
        .send(
            reqwest::Method::POST,
            "/api/v1/alerts",
            Some(&token),
            Some(
                serde_json::json!({"text": {"en": "full disk drill 2"}, "expires_in": "10m",
                "sms": {"recipients": [{"number": "+8613800138000"}]}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{raised}");
    assert!(
        raised["sms"]["refused"]
            .as_str()
            .unwrap_or("")
            .contains("disk"),
        "{raised}"
    );
    agent
        .frame("the second alert", |v| text_of(v) == "full disk drill 2")
        .await;
    // The alert was written in the reserve's space; the store says so: the reserve in use,
    // bulk writes refused, a second save refused as well.
    assert!(!site.dir.path().join("data/reserve").exists());
    // Still ready for alerts (a load balancer keeps it in rotation), and says what is refused.
    let (status, ready) = d.get("/readyz", None).await;
    assert_eq!(status, 200, "{ready}");
    assert!(
        ready["bulk_writes"].as_str().unwrap().contains("disk"),
        "{ready}"
    );
    // A full disk is not a failed sync: the claims wait, they have not stopped.
    assert_eq!(ready["sms_claims"], "ok", "{ready}");
    let start = std::time::Instant::now();
    while d.metric(&token, "marquee_disk_reserve_in_use").await != 1.0 {
        assert!(
            start.elapsed() < DEADLINE,
            "the reserve metric never said so"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, _) = d
        .send(
            reqwest::Method::PUT,
            "/api/v1/playlists/test-lobby",
            Some(&token),
            Some(playlist),
        )
        .await;
    assert_eq!(status, 507);
    assert!(!agent.shown(|v| text_of(v).starts_with("never saved")));
    // The audit log has the alert and verifies.
    let (_, audit) = d.get("/api/v1/audit", Some(&token)).await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "alert.raise"),
        "{audit}"
    );
    assert!(
        !audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "playlist.put"),
        "{audit}"
    );
    drop(agent);
    d.stop().await;
    drop(disk);
}

#[tokio::test]
async fn the_api_speaks_tls_with_the_configured_certificate() {
    let certs = tempfile::tempdir().unwrap();
    test_certs(certs.path());
    let site = Site::new(&format!("listen = \"127.0.0.1:{}\"", free_port()), "");
    let (cert, key) = (
        certs.path().join("server.pem"),
        certs.path().join("server.key"),
    );
    site.server_keys(&format!(
        "tls_cert_file = {:?}\ntls_key_file = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    ));
    let d = Daemon::start(&site).await;
    assert!(d.http.starts_with("https://127.0.0.1:"), "{}", d.http);
    let token = site.admin_token();
    // A client that trusts the office's CA: the API answers, over TLS only.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.path().join("ca.pem")).unwrap())
        .unwrap();
    let client = marquee::http_client()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let r = client
        .get(format!("{}/api/v1/displays", d.http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-content-type-options"],
        "nosniff",
        "security headers over TLS too"
    );
    // A client that does not trust it is refused at the handshake; plain HTTP gets no answer.
    let untrusting = marquee::http_client().build().unwrap();
    let e = untrusting
        .get(format!("{}/healthz", d.http))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_connect(), "{e:?}");
    let plain = d.http.replacen("https://", "http://", 1);
    assert!(
        marquee::http_client()
            .build()
            .unwrap()
            .get(format!("{plain}/healthz"))
            .send()
            .await
            .is_err(),
        "plain HTTP on the TLS port"
    );
    // The CLI reaches it with --ca-file.
    let out = std::process::Command::new(bin())
        .args(["displays", "--url", &d.http, "--token", &token, "--ca-file"])
        .arg(certs.path().join("ca.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A key that does not match the certificate is a configuration error naming both files.
    let other = tempfile::tempdir().unwrap();
    test_certs(other.path());
    let bad = std::fs::read_to_string(site.config()).unwrap().replace(
        &key.display().to_string(),
        &other.path().join("server.key").display().to_string(),
    );
    std::fs::write(site.config(), bad).unwrap();
    let out = run(&["check", "-c", site.config().to_str().unwrap()]);
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("server.tls_cert_file"), "{text}");
    d.stop().await;
}
