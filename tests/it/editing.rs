//! Playlist editing over the API and the CLI, and the audit log that records it.

use reqwest::Method;
use serde_json::Value;

use crate::harness::*;

const EDITOR: &str = "editor-token-0123456789";
const VIEWER: &str = "viewer-token-0123456789";
const LOBBY: &str = "marquee/v1/channel/lobby/timeline";

fn playlist(text: &str) -> String {
    format!(
        r#"{{
  "id": "api-lobby",
  "tier": "interrupt",
  "targets": {{"channels": ["lobby"]}},
  "schedule": [{{"start": "00:00", "end": "00:00"}}],
  "items": [{{"id": "a", "text": {{"en": "{text}"}}, "seconds": 5}}]
}}
"#
    )
}

async fn put_raw(d: &Daemon, token: Option<&str>, id: &str, body: String) -> (u16, Value) {
    let mut req = marquee::http_client()
        .build()
        .unwrap()
        .put(format!("{}/api/v1/playlists/{id}", d.http))
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn shows(tl: &marquee::wire::Timeline, text: &str) -> bool {
    tl.segments.iter().any(|s| {
        s.items
            .iter()
            .any(|i| i.text.get("en").is_some_and(|t| t == text))
    })
}

#[tokio::test]
async fn playlists_edited_through_the_api_are_validated_written_audited() {
    let port = free_port();
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), "");
    site.append_config(
        "[[auth.tokens]]\nname = \"office\"\nrole = \"editor\"\ntoken_env = \"MARQUEE_IT_EDITOR\"\n\
         [[auth.tokens]]\nname = \"watcher\"\nrole = \"viewer\"\ntoken_env = \"MARQUEE_IT_VIEWER\"\n",
    );
    let mut d = Daemon::start_with_env(
        &site,
        &[("MARQUEE_IT_EDITOR", EDITOR), ("MARQUEE_IT_VIEWER", VIEWER)],
    )
    .await;
    let key = site.public_key();
    let mut sub = Sub::connect(port, LOBBY).await;
    let (v1, _) = sub.timeline(&key, LOBBY, 1).await;

    // Roles.
    assert_eq!(put_raw(&d, None, "api-lobby", playlist("x")).await.0, 401);
    assert_eq!(
        put_raw(&d, Some(VIEWER), "api-lobby", playlist("x"))
            .await
            .0,
        403
    );

    // Invalid: located errors, nothing written, nothing published.
    let (s, e) = put_raw(
        &d,
        Some(EDITOR),
        "api-lobby",
        playlist("x").replace("[\"lobby\"]", "[\"tram\"]"),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(
        (
            e["errors"][0]["line"].as_u64(),
            e["errors"][0]["column"].as_u64()
        ),
        (Some(4), Some(28))
    );
    assert!(
        e["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("unknown channel \"tram\"")
    );
    let (s, e) = put_raw(&d, Some(EDITOR), "other-id", playlist("x")).await;
    assert_eq!(s, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("must equal the file name")
    );
    assert!(!site.playlist("api-lobby").exists());

    // Valid: written as sent, republished, impact reported.
    let (s, ok) = put_raw(&d, Some(EDITOR), "api-lobby", playlist("from the api")).await;
    assert_eq!(s, 200, "{ok}");
    assert_eq!(
        std::fs::read_to_string(site.playlist("api-lobby")).unwrap(),
        playlist("from the api")
    );
    let targets: Vec<&str> = ok["impact"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, vec!["channel lobby", "display lobby-east-1"]);
    let (v2, tl) = sub.timeline(&key, LOBBY, v1 + 1).await;
    assert!(shows(&tl, "from the api"));

    // The CLI: pull gives back the file; diff (offline) and push report the impact.
    let cli = |args: &[&str]| {
        std::process::Command::new(bin())
            .args(args)
            .args([
                "--url",
                &d.http,
                "--token",
                EDITOR,
                "-c",
                site.config().to_str().unwrap(),
            ])
            .envs([("MARQUEE_IT_EDITOR", EDITOR), ("MARQUEE_IT_VIEWER", VIEWER)])
            .output()
            .unwrap()
    };
    let out = cli(&["playlist", "pull", "api-lobby"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        playlist("from the api")
    );
    let edited = site.dir.path().join("api-lobby.json");
    std::fs::write(&edited, playlist("pushed by the cli")).unwrap();
    let out = cli(&["playlist", "diff", edited.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("changes channel lobby from"),
        "{text}{err}"
    );
    let out = cli(&["playlist", "push", edited.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("pushed api-lobby"),
        "{text}"
    );
    let (_, tl) = sub.timeline(&key, LOBBY, v2 + 1).await;
    assert!(shows(&tl, "pushed by the cli"));
    std::fs::write(
        &edited,
        playlist("x").replace("\"seconds\": 5", "\"seconds\": 0"),
    )
    .unwrap();
    let out = cli(&["playlist", "push", edited.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("api-lobby.json:6:57:")
            && err.contains("seconds must be between"),
        "{err}"
    );

    // Delete: the file goes, the lobby loses it.
    let (s, _) = d
        .send(
            Method::DELETE,
            "/api/v1/playlists/api-lobby",
            Some(EDITOR),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert!(!site.playlist("api-lobby").exists());
    let (s, _) = d
        .send(
            Method::DELETE,
            "/api/v1/playlists/api-lobby",
            Some(EDITOR),
            None,
        )
        .await;
    assert_eq!(s, 404);
    d.wait_log("the reload after the delete", |v| {
        v["message"] == "reload applied" && v["published"].as_u64() > Some(0)
    })
    .await;

    // Audit: every change, by whom, in an intact chain.
    let (s, _) = d.get("/api/v1/audit", Some(VIEWER)).await;
    assert_eq!(s, 403, "the audit log needs the operator role");
    let (_, audit) = d.get("/api/v1/audit", Some(&site.admin_token())).await;
    let actions: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    let office = |a: &str| ("office".to_string(), a.to_string());
    assert_eq!(
        actions,
        vec![
            office("playlist.put"),
            office("playlist.put"),
            office("playlist.delete")
        ]
    );
    assert_eq!(audit["chain"]["intact"], true);
    let verify = || {
        std::process::Command::new(bin())
            .args(["audit", "verify", "-c", site.config().to_str().unwrap()])
            .envs([("MARQUEE_IT_EDITOR", EDITOR), ("MARQUEE_IT_VIEWER", VIEWER)])
            .output()
            .unwrap()
    };
    let out = verify();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success()
            && said.contains("intact (3 entries)")
            && said.contains("the signed anchor (entry 3) matches"),
        "{said}"
    );

    if on_postgres() {
        // What follows edits the SQLite file behind the daemon's back.
        return;
    }
    // A deleted tail leaves an intact chain; the signed anchor outside the database shows it.
    let db = site.dir.path().join("data/marquee.db");
    let backup = site.dir.path().join("audit-backup.db");
    std::fs::copy(&db, &backup).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("DROP TRIGGER IF EXISTS audit_no_delete; DELETE FROM audit WHERE seq = 3;")
        .unwrap();
    drop(conn);
    let out = verify();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the log ends at entry 2 but the signed anchor says it reached entry 3"),
        "{err}"
    );
    // A log rewritten whole, chain and all, differs from the anchor at its head.
    std::fs::copy(&backup, &db).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "DROP TRIGGER IF EXISTS audit_no_delete; DROP TRIGGER IF EXISTS audit_no_update; DELETE FROM audit;",
    )
    .unwrap();
    drop(conn);
    let store = marquee::store::Store::open(&db).unwrap();
    for i in 0..3 {
        store
            .audit(
                chrono::Utc::now(),
                &marquee::store::audit::NewEntry::new(
                    "forger",
                    "playlist.put",
                    &format!("x{i}"),
                    serde_json::json!({}),
                ),
            )
            .unwrap();
    }
    drop(store);
    let out = verify();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("entry 3 is not the one the signed anchor names: the log was rewritten"),
        "{err}"
    );
    std::fs::copy(&backup, &db).unwrap();

    // Tampering behind SQLite's back is detected.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("DROP TRIGGER IF EXISTS audit_no_update;")
        .unwrap();
    conn.execute("UPDATE audit SET actor = 'someone-else' WHERE seq = 2", [])
        .unwrap();
    drop(conn);
    let out = verify();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("TAMPERED") && err.contains("audit entry 2: content does not match its hash"),
        "{err}"
    );
}

/// A playlist id that starts with '.' would be a hidden file the directory reader skips: the
/// API refuses it instead of answering 200 for a playlist that never goes live.
#[tokio::test]
async fn hidden_playlist_ids_are_refused() {
    let site = Site::new(
        &format!("embedded = true\nlisten = \"127.0.0.1:{}\"", free_port()),
        "",
    );
    let d = Daemon::start(&site).await;
    let admin = site.admin_token();
    let src = std::fs::read_to_string(site.playlist("hotline-12345"))
        .unwrap()
        .replace("\"id\": \"hotline-12345\"", "\"id\": \".hidden\"");
    let (s, e) = d
        .send(
            reqwest::Method::PUT,
            "/api/v1/playlists/.hidden",
            Some(&admin),
            Some(serde_json::from_str(&src).unwrap()),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["error"]["field"], "id", "{e}");
    assert!(!site.dir.path().join("playlists/.hidden.json").exists());
}

/// A configured token with the generated admin token's secret would answer as one of the two:
/// the daemon refuses to start and says which.
#[tokio::test]
async fn a_token_sharing_the_admin_secret_is_refused_at_start() {
    let site = Site::new(
        &format!("embedded = true\nlisten = \"127.0.0.1:{}\"", free_port()),
        "",
    );
    let d = Daemon::start(&site).await;
    assert_eq!(d.stop().await, Some(0));
    let admin = site.admin_token();
    site.append_config(
        "[[auth.tokens]]\nname = \"office\"\nrole = \"viewer\"\ntoken_env = \"MARQUEE_IT_SAME\"\n",
    );
    let out = std::process::Command::new(bin())
        .args(["serve", "-c"])
        .arg(site.config())
        .env("MARQUEE_IT_SAME", &admin)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("auth.tokens (office): the same secret as the generated admin token"),
        "{err}"
    );
}

/// Every answer carries the security headers (the console and its API alike), and a body over a
/// route's limit gets 413 in the API's error shape.
#[tokio::test]
async fn security_headers_and_oversized_bodies() {
    let site = Site::new(
        &format!("embedded = true\nlisten = \"127.0.0.1:{}\"", free_port()),
        "",
    );
    let d = Daemon::start(&site).await;
    let admin = site.admin_token();
    let client = marquee::http_client().build().unwrap();
    for path in ["/", "/console/app.js", "/api/v1/playlists", "/healthz"] {
        let r = client
            .get(format!("{}{path}", d.http))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        let h = r.headers();
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'none'"),
            "{path}"
        );
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
    }
    // The console's scripts are its own files (no inline script); the screen page, which the
    // console frames for its previews, may be framed by its own origin only.
    let r = client
        .get(format!("{}/console/app.js", d.http))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self';")
    );
    let r = client
        .get(format!("{}/console/screen.html", d.http))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'self'")
    );
    assert_eq!(r.headers()["x-frame-options"], "SAMEORIGIN");
    let r = client
        .get(format!("{}/console/nope.js", d.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(3 << 20));
    let r = client
        .put(format!("{}/api/v1/playlists/big", d.http))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "too_large", "{v}");
}

/// `If-None-Match: *` creates a playlist and never replaces one (RFC 9110 §13.1.2): the
/// console's "new playlist" cannot overwrite an existing file by taking its id.
#[tokio::test]
async fn create_only_never_replaces_an_existing_playlist() {
    let site = Site::new(
        &format!("embedded = true\nlisten = \"127.0.0.1:{}\"", free_port()),
        "",
    );
    let d = Daemon::start(&site).await;
    let admin = site.admin_token();
    let put = |id: &'static str, body: String| {
        let http = d.http.clone();
        let admin = admin.clone();
        async move {
            let r = marquee::http_client()
                .build()
                .unwrap()
                .put(format!("{http}/api/v1/playlists/{id}"))
                .bearer_auth(admin)
                .header("if-none-match", "*")
                .body(body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let before = std::fs::read_to_string(site.playlist("hotline-12345")).unwrap();
    let (s, e) = put(
        "hotline-12345",
        playlist("taken").replace("api-lobby", "hotline-12345"),
    )
    .await;
    assert_eq!(s, 412, "{e}");
    assert_eq!(e["error"]["code"], "exists");
    crate::schema::documented("put", "/api/v1/playlists/{id}", 412, &e);
    assert_eq!(
        std::fs::read_to_string(site.playlist("hotline-12345")).unwrap(),
        before
    );
    let (s, e) = put("api-lobby", playlist("new")).await;
    assert_eq!(s, 200, "{e}");
    assert!(site.playlist("api-lobby").exists());
}
