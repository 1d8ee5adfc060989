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
    let cfg = std::fs::read_to_string(site.config()).unwrap().replacen(
        "[server]\n",
        "[server]\nheader_timeout = \"5s\"\n",
        1,
    );
    std::fs::write(site.config(), cfg).unwrap();
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
    std::fs::copy(data.join("marquee.db"), site.dir.path().join("backup.db")).unwrap();
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
    std::fs::copy(site.dir.path().join("backup.db"), data.join("marquee.db")).unwrap();
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
