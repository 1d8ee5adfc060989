//! The two-person rule for alerts, with roles.

use reqwest::Method;
use serde_json::json;

use crate::harness::*;
use crate::schema::documented;

const OP1: &str = "operator-one-0123456789";
const OP2: &str = "approver-two-0123456789";
const EDITOR: &str = "editor-three-0123456789";
const EMERGENCY: &str = "emergency-four-0123456789";

#[tokio::test]
async fn alerts_beyond_the_limit_wait_for_a_second_person() {
    let port = free_port();
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), "");
    site.append_config(
        "[approval]\nalerts_above = 0\n\
         [[auth.tokens]]\nname = \"duty-officer\"\nrole = \"operator\"\ntoken_env = \"MQ_OP1\"\n\
         [[auth.tokens]]\nname = \"supervisor\"\nrole = \"approver\"\ntoken_env = \"MQ_OP2\"\n\
         [[auth.tokens]]\nname = \"office\"\nrole = \"editor\"\ntoken_env = \"MQ_ED\"\n\
         [[auth.tokens]]\nname = \"night-desk\"\nrole = \"operator\"\nemergency = true\ntoken_env = \"MQ_EM\"\n",
    );
    let d = Daemon::start_with_env(
        &site,
        &[
            ("MQ_OP1", OP1),
            ("MQ_OP2", OP2),
            ("MQ_ED", EDITOR),
            ("MQ_EM", EMERGENCY),
        ],
    )
    .await;
    let mut agent = AgentProc::start(&agent_config(&d, &site, "lobby-2p-1", "lobby", port), &[]);
    agent
        .frame("normal content", |v| v["kind"] == "timeline")
        .await;
    let start = std::time::Instant::now();
    while d.get("/api/v1/displays/lobby-2p-1", Some(OP1)).await.0 != 200 {
        assert!(start.elapsed() < DEADLINE, "display never reported");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let body = json!({"text": {"en": "Evacuate the lobby"}, "scope": {"channels": ["lobby"]}, "expires_in": "10m"});

    // Roles: an editor and an approver cannot raise.
    for t in [EDITOR, OP2] {
        let (s, _) = d
            .send(Method::POST, "/api/v1/alerts", Some(t), Some(body.clone()))
            .await;
        assert_eq!(s, 403);
    }
    // An operator's alert waits.
    let (s, r) = d
        .send(
            Method::POST,
            "/api/v1/alerts",
            Some(OP1),
            Some(body.clone()),
        )
        .await;
    assert_eq!((s, r["status"].as_str()), (202, Some("pending")), "{r}");
    let id = r["id"].as_str().unwrap().to_owned();
    let approve = format!("/api/v1/alerts/{id}/approve");
    // Not by the same person, not by an editor, not without a token.
    let (s, e) = d.send(Method::POST, &approve, Some(OP1), None).await;
    assert_eq!(s, 403);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("two-person rule")
    );
    assert_eq!(
        d.send(Method::POST, &approve, Some(EDITOR), None).await.0,
        403
    );
    assert_eq!(d.send(Method::POST, &approve, None, None).await.0, 401);
    assert!(
        !agent.shown(|v| v["kind"] == "alert"),
        "nothing on screen before approval"
    );

    // The second person approves: on screen.
    let (s, v) = d.send(Method::POST, &approve, Some(OP2), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["alert"]["status"].as_str(),
            v["alert"]["approved_by"].as_str()
        ),
        (Some("live"), Some("supervisor"))
    );
    agent
        .frame("the approved alert", |v| text_of(v) == "Evacuate the lobby")
        .await;
    assert_eq!(
        d.send(Method::POST, &approve, Some(OP2), None).await.0,
        409,
        "approved once"
    );

    // An emergency token skips the rule, and that is audited.
    let (s, r) = d
        .send(Method::POST, "/api/v1/alerts", Some(EMERGENCY),
              Some(json!({"text": {"en": "Fire: leave now"}, "scope": {"channels": ["lobby"]}, "severity": "extreme"})))
        .await;
    assert_eq!(s, 201, "{r}");
    agent
        .frame("the emergency alert", |v| text_of(v) == "Fire: leave now")
        .await;
    let (_, audit) = d.get("/api/v1/audit", Some(OP1)).await;
    let actions: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap()))
        .filter(|(_, action)| action.starts_with("alert."))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("duty-officer", "alert.request"),
            ("supervisor", "alert.approve"),
            ("night-desk", "alert.raise.emergency_skip")
        ]
    );
}

#[tokio::test]
async fn with_review_a_playlist_goes_live_only_when_another_person_publishes_it() {
    let port = free_port();
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), "");
    site.append_config(
        "[approval]\nplaylists = true\n\
         [[auth.tokens]]\nname = \"supervisor\"\nrole = \"approver\"\ntoken_env = \"MQ_OP2\"\n\
         [[auth.tokens]]\nname = \"office\"\nrole = \"editor\"\ntoken_env = \"MQ_ED\"\n",
    );
    let d = Daemon::start_with_env(&site, &[("MQ_OP2", OP2), ("MQ_ED", EDITOR)]).await;
    let mut agent = AgentProc::start(&agent_config(&d, &site, "lobby-rv-1", "lobby", port), &[]);
    agent.frame("a timeline", |v| v["kind"] == "timeline").await;
    let file = site.playlist("test-lobby");
    let before = std::fs::read_to_string(&file).ok();
    let body: serde_json::Value = serde_json::from_str(&interrupt("reviewed slogan")).unwrap();
    // The editor's save is a proposal: 202, the file and the screens unchanged.
    let (status, v) = d
        .send(
            Method::PUT,
            "/api/v1/playlists/test-lobby",
            Some(EDITOR),
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    documented("put", "/api/v1/playlists/{id}", 202, &v);
    let proposal = v["proposal"].as_i64().unwrap();
    assert_eq!(std::fs::read_to_string(&file).ok(), before);
    let (_, list) = d
        .get("/api/v1/proposals?status=pending", Some(EDITOR))
        .await;
    assert_eq!(list["proposals"][0]["id"], proposal, "{list}");
    documented("get", "/api/v1/proposals", 200, &list);
    assert_eq!(list["proposals"][0]["author"], "office");
    // The author cannot publish it; an approver rejects without a reason: 400.
    let publish = format!("/api/v1/proposals/{proposal}/publish");
    let reject = format!("/api/v1/proposals/{proposal}/reject");
    assert_eq!(
        d.send(Method::POST, &publish, Some(EDITOR), None).await.0,
        403
    );
    assert_eq!(
        d.send(Method::POST, &reject, Some(OP2), Some(json!({})))
            .await
            .0,
        400
    );
    assert!(!agent.shown(|v| text_of(v).starts_with("reviewed slogan")));
    // Another person publishes it: the file is written and the screen plays it.
    let (status, v) = d.send(Method::POST, &publish, Some(OP2), None).await;
    assert_eq!(status, 200, "{v}");
    documented("post", "/api/v1/proposals/{id}/{decision}", 200, &v);
    agent
        .frame("the published slogan", |v| {
            text_of(v).starts_with("reviewed slogan")
        })
        .await;
    assert_eq!(d.send(Method::POST, &publish, Some(OP2), None).await.0, 409);
    // A second proposal, rejected with a reason, changes nothing.
    let body2: serde_json::Value = serde_json::from_str(&interrupt("not this one")).unwrap();
    let (_, v) = d
        .send(
            Method::PUT,
            "/api/v1/playlists/test-lobby",
            Some(EDITOR),
            Some(body2),
        )
        .await;
    let second = v["proposal"].as_i64().unwrap();
    let (status, v) = d
        .send(
            Method::POST,
            &format!("/api/v1/proposals/{second}/reject"),
            Some(OP2),
            Some(json!({"reason": "wrong date"})),
        )
        .await;
    assert_eq!(status, 200);
    documented("post", "/api/v1/proposals/{id}/{decision}", 200, &v);
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("reviewed slogan")
    );
    // Everything audited.
    let (_, audit) = d.get("/api/v1/audit", Some(&site.admin_token())).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for want in ["playlist.propose", "playlist.publish", "playlist.reject"] {
        assert!(actions.contains(&want), "{want} missing: {actions:?}");
    }
    assert!(!actions.contains(&"playlist.put"), "{actions:?}");
}
