//! The OpenAPI document: the committed copy is current, the daemon serves it, and every
//! operation it describes is a real route that refuses an anonymous caller.

use std::process::Command;

use serde_json::Value;

use crate::harness::*;
use crate::schema::documented;

#[tokio::test]
async fn openapi_document_matches_the_routes_and_every_route_checks_token_and_role() {
    let out = Command::new(bin())
        .args(["schema", "openapi"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let generated: Value = serde_json::from_slice(&out.stdout).unwrap();
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("docs/openapi.json")).unwrap())
            .unwrap();
    assert!(
        generated == committed,
        "docs/openapi.json is stale: run `marquee schema openapi > docs/openapi.json`"
    );
    assert!(generated["openapi"].as_str().unwrap().starts_with("3."));

    let site = Site::new(&format!("listen = \"127.0.0.1:{}\"", free_port()), "");
    site.append_config(
        "[[auth.tokens]]\nname = \"reader\"\nrole = \"viewer\"\ntoken_env = \"T_VIEWER\"\n",
    );
    const VIEWER: &str = "viewer-token-0123456789";
    let d = Daemon::start_with_env(&site, &[("T_VIEWER", VIEWER)]).await;
    let token = site.admin_token();
    let (status, served) = d.get("/api/v1/openapi.json", Some(&token)).await;
    assert_eq!((status, &served), (200, &generated));
    let (status, _) = d.get("/api/v1/openapi.json", None).await;
    assert_eq!(status, 401);

    let paths = generated["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{}", paths.len());
    let client = marquee::http_client().build().unwrap();
    let mut checked = 0;
    for (path, ops) in paths {
        let concrete = path
            .replace("{id}", "1")
            .replace("{action}", "pause")
            .replace("{gateway}", "nope")
            .replace("{number}", "13800138000");
        for method in ops.as_object().unwrap().keys() {
            let m: reqwest::Method = method.to_uppercase().parse().unwrap();
            let call = |token: Option<&'static str>| {
                let mut req = client.request(m.clone(), format!("{}{concrete}", d.http));
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                async move {
                    let resp = req.send().await.unwrap();
                    let status = resp.status().as_u16();
                    (status, resp.json::<Value>().await.unwrap_or_default())
                }
            };
            let (status, body) = call(None).await;
            assert_ne!(
                body["error"]["message"], "no such route",
                "{method} {path} is documented but not routed"
            );
            assert_ne!(status, 405, "{method} {path} is documented but not routed");
            // Carriers authenticate with the gateway secret in the URL (their consoles cannot
            // send a bearer token).
            let open = path == "/healthz"
                || path == "/readyz"
                || path.starts_with("/api/v1/sms/dlr/")
                || path.starts_with("/api/v1/sms/mo/");
            // Refusals carry the documented error shape.
            if status >= 400 {
                documented(method, path, status, &body);
            }
            if !open {
                assert_eq!(status, 401, "{method} {path} answered an anonymous caller");
                let (status, body) = call(Some("wrong-token-0123456789")).await;
                assert_eq!(status, 401, "{method} {path} accepted a wrong token");
                documented(method, path, status, &body);
                // Every write needs more than the viewer role (and so does the audit log).
                let (status, body) = call(Some(VIEWER)).await;
                // Writes, the audit log and the broker's password file are not for viewers.
                if method != "get" || path == "/api/v1/audit" || path == "/api/v1/broker/mosquitto"
                {
                    assert_eq!(status, 403, "{method} {path} let a viewer through");
                    documented(method, path, status, &body);
                } else {
                    assert!(
                        status != 401 && status != 403,
                        "{method} {path} refused a viewer"
                    );
                }
            }
            // Every documented operation says how it is secured (or that it is open).
            assert_eq!(
                ops[method]["security"].is_array(),
                !open,
                "{method} {path}: security in the document"
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked}");
}

/// Every answer the OpenAPI document gives a body schema is produced here on the real daemon
/// and checked against that schema; a documented body that this test does not produce fails
/// it, so a newly typed route comes with its check.
#[tokio::test]
async fn typed_answers_match_their_documented_schemas() {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("docs/openapi.json")).unwrap())
            .unwrap();
    let site = Site::new(&format!("listen = \"127.0.0.1:{}\"", free_port()), "");
    site.append_config(&format!(
        "[[auth.tokens]]\nname = \"second\"\nrole = \"approver\"\ntoken_env = \"T_APPROVER\"\n\
         [approval]\nalerts_above = 5\ncampaigns_above = 1\n\
         [sms]\nsender = \"12345\"\n[[sms.gateways]]\nname = \"dry\"\nkind = \"dry-run\"\npath = {:?}\n",
        site.dir.path().join("sms.jsonl")
    ));
    const APPROVER: &str = "approver-token-0123456789";
    let d = Daemon::start_with_env(&site, &[("T_APPROVER", APPROVER)]).await;
    let token = site.admin_token();
    let cap =
        |name: &str| std::fs::read_to_string(repo().join("tests/fixtures/cap").join(name)).unwrap();
    let client = marquee::http_client().build().unwrap();
    let post_xml = |xml: String| {
        let req = client
            .post(format!("{}/api/v1/alerts/cap", d.http))
            .bearer_auth(&token)
            .header("content-type", "application/xml")
            .body(xml);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let json = |path: &'static str, body: Value| {
        let d = &d;
        let token = token.clone();
        async move {
            let (s, v) = d
                .send(reqwest::Method::POST, path, Some(&token), Some(body))
                .await;
            (path, s, v)
        }
    };
    let one = serde_json::json!([{"number": "+8613800138000"}]);
    let two = serde_json::json!([{"number": "+8613800138000"}, {"number": "+8613900139000"}]);
    let mut answers: Vec<(&str, u16, Value)> = vec![
        json(
            "/api/v1/campaigns",
            serde_json::json!({"name": "one", "text": "hi", "recipients": one, "start": "now"}),
        )
        .await,
        json(
            "/api/v1/campaigns",
            serde_json::json!({"name": "two", "text": "hi", "recipients": two, "start": "now"}),
        )
        .await,
        json(
            "/api/v1/campaigns",
            serde_json::json!({"name": "", "text": "hi", "recipients": one}),
        )
        .await,
        json(
            "/api/v1/campaigns",
            serde_json::json!({"name": "draft", "text": "hi",
                "recipients": [{"number": "+8613800138000"}, {"number": "not a number"}]}),
        )
        .await,
        // One declared display in scope: within the limit, on the screens at once.
        json(
            "/api/v1/alerts",
            serde_json::json!({"text": {"en": "drill"}, "expires_in": "5m",
            "sms": {"recipients": one}}),
        )
        .await,
        // No known display in scope: the reach is unknown, a second person approves.
        json(
            "/api/v1/alerts",
            serde_json::json!({"text": {"en": "drill"}, "scope": {"displays": ["ghost-1"]}}),
        )
        .await,
        json("/api/v1/alerts", serde_json::json!({"text": {"en": " "}})).await,
    ];
    for (xml, _) in [
        ("alert.xml", 201),
        ("test-status.xml", 200),
        ("malformed.xml", 400),
    ] {
        let (s, v) = post_xml(cap(xml)).await;
        answers.push(("/api/v1/alerts/cap", s, v));
    }
    answers.push(
        json(
            "/api/v1/registry",
            serde_json::json!({"id": "schema-1", "channel": "lobby"}),
        )
        .await,
    );
    let upload = client
        .post(format!("{}/api/v1/uploads", d.http))
        .bearer_auth(&token)
        .body("number,name\n+8613800138000,王\n")
        .send()
        .await
        .unwrap();
    let status = upload.status().as_u16();
    answers.push(("/api/v1/uploads", status, upload.json().await.unwrap()));
    // Reads and actions, by their documented paths (an approver for the pending campaign).
    let created: Vec<i64> = answers
        .iter()
        .filter(|(p, s, _)| *p == "/api/v1/campaigns" && *s != 400)
        .map(|(_, _, v)| v["id"].as_i64().unwrap())
        .collect();
    let (done, pending, draft) = (created[0], created[1], created[2]);
    let alert_ids: Vec<(u16, String)> = answers
        .iter()
        .filter(|(p, s, _)| *p == "/api/v1/alerts" && *s != 400)
        .map(|(_, s, v)| (*s, v["id"].as_str().unwrap().to_owned()))
        .collect();
    let live = &alert_ids.iter().find(|(s, _)| *s == 201).unwrap().1;
    let held = &alert_ids.iter().find(|(s, _)| *s == 202).unwrap().1;
    let mut more: Vec<(reqwest::Method, &str, String, Option<&str>)> = vec![
        (
            reqwest::Method::GET,
            "/api/v1/campaigns",
            "/api/v1/campaigns".into(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v1/campaigns/{id}",
            format!("/api/v1/campaigns/{done}"),
            None,
        ),
        (
            reqwest::Method::POST,
            "/api/v1/campaigns/{id}/{action}",
            format!("/api/v1/campaigns/{draft}/cancel"),
            None,
        ),
        (
            reqwest::Method::POST,
            "/api/v1/campaigns/{id}/{action}",
            format!("/api/v1/campaigns/{done}/requeue-unknown"),
            None,
        ),
        (
            reqwest::Method::POST,
            "/api/v1/campaigns/{id}/{action}",
            format!("/api/v1/campaigns/{done}/reconcile"),
            None,
        ),
        (
            reqwest::Method::POST,
            "/api/v1/campaigns/{id}/approve",
            format!("/api/v1/campaigns/{pending}/approve"),
            Some(APPROVER),
        ),
        (
            reqwest::Method::GET,
            "/api/v1/alerts",
            "/api/v1/alerts".into(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v1/alerts/{id}",
            format!("/api/v1/alerts/{live}"),
            None,
        ),
        (
            reqwest::Method::POST,
            "/api/v1/alerts/{id}/approve",
            format!("/api/v1/alerts/{held}/approve"),
            Some(APPROVER),
        ),
        (
            reqwest::Method::DELETE,
            "/api/v1/alerts/{id}",
            format!("/api/v1/alerts/{live}"),
            None,
        ),
    ];
    let mut typed: Vec<(String, &str, u16, Value)> = answers
        .into_iter()
        .map(|(p, s, v)| ("post".to_owned(), p, s, v))
        .collect();
    // Open routes, the SMS side's reads, and the opt-out list.
    let with_body: Vec<(reqwest::Method, &str, String, Option<Value>)> = vec![
        (reqwest::Method::GET, "/healthz", "/healthz".into(), None),
        (reqwest::Method::GET, "/readyz", "/readyz".into(), None),
        (
            reqwest::Method::GET,
            "/api/v1/sms/gateways",
            "/api/v1/sms/gateways".into(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v1/sms/templates",
            "/api/v1/sms/templates".into(),
            None,
        ),
        (
            reqwest::Method::POST,
            "/api/v1/optouts",
            "/api/v1/optouts".into(),
            Some(
                serde_json::json!({"numbers": ["13700137000", "not a number"], "reason": "asked"}),
            ),
        ),
        (
            reqwest::Method::GET,
            "/api/v1/optouts",
            "/api/v1/optouts".into(),
            None,
        ),
        (
            reqwest::Method::DELETE,
            "/api/v1/optouts/{number}",
            "/api/v1/optouts/13700137000".into(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v1/registry",
            "/api/v1/registry".into(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v1/audit",
            "/api/v1/audit".into(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v1/channels",
            "/api/v1/channels".into(),
            None,
        ),
    ];
    for (method, template, concrete, who) in more.drain(..) {
        let (s, v) = d
            .send(method.clone(), &concrete, Some(who.unwrap_or(&token)), None)
            .await;
        typed.push((method.as_str().to_lowercase(), template, s, v));
    }
    for (method, template, concrete, body) in with_body {
        let (s, v) = d.send(method.clone(), &concrete, Some(&token), body).await;
        typed.push((method.as_str().to_lowercase(), template, s, v));
    }
    // Playlists: a broken file beside the shipped ones, a save, a check good and bad, a
    // preview, a removal; the fleet and proof of play (empty here; with rows in it::agent);
    // a campaign's messages and rejected rows.
    std::fs::write(site.playlist("broken"), "{").unwrap();
    let saved: Value = serde_json::from_str(&interrupt("typed")).unwrap();
    let list = eventually_async("the broken file listed", || async {
        let (_, list) = d.get("/api/v1/playlists", Some(&token)).await;
        let listed = list["playlists"].as_array()?.iter().any(|p| {
            p["live"] == false
                && p["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with("broken.json"))
        });
        listed.then_some(list)
    })
    .await;
    let live = list["playlists"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["live"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let calls: Vec<(reqwest::Method, &str, String, Option<Value>)> = vec![
        (
            reqwest::Method::GET,
            "/api/v1/playlists",
            "/api/v1/playlists".into(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v1/playlists/{id}",
            format!("/api/v1/playlists/{live}"),
            None,
        ),
        (
            reqwest::Method::POST,
            "/api/v1/playlists/{id}/check",
            "/api/v1/playlists/test-lobby/check".into(),
            Some(saved.clone()),
        ),
        (
            reqwest::Method::POST,
            "/api/v1/playlists/{id}/check",
            "/api/v1/playlists/test-lobby/check".into(),
            Some(serde_json::json!({"id": "test-lobby", "items": "none"})),
        ),
        (
            reqwest::Method::PUT,
            "/api/v1/playlists/{id}",
            "/api/v1/playlists/test-lobby".into(),
            Some(saved),
        ),
        (
            reqwest::Method::GET,
            "/api/v1/preview",
            "/api/v1/preview?channel=lobby&for=3h".into(),
            None,
        ),
        (
            reqwest::Method::DELETE,
            "/api/v1/playlists/{id}",
            "/api/v1/playlists/test-lobby".into(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v1/displays",
            "/api/v1/displays".into(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v1/plays",
            "/api/v1/plays".into(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v1/campaigns/{id}/messages",
            format!("/api/v1/campaigns/{draft}/messages"),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v1/campaigns/{id}/rejects",
            format!("/api/v1/campaigns/{draft}/rejects"),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v1/campaigns/{id}/progress",
            format!("/api/v1/campaigns/{draft}/progress"),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v1/schedule/cron",
            "/api/v1/schedule/cron?cron=30%209%20*%20*%201-5&timezone=Europe/Berlin".into(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v1/schedule/cron",
            "/api/v1/schedule/cron?cron=30%209%20*%20*".into(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v1/frame",
            "/api/v1/frame?display=lobby-east-1".into(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v1/frame",
            "/api/v1/frame?channel=nowhere".into(),
            None,
        ),
    ];
    for (method, template, concrete, body) in calls {
        let (s, v) = d.send(method.clone(), &concrete, Some(&token), body).await;
        typed.push((method.as_str().to_lowercase(), template, s, v));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (method, path, status, body) in &typed {
        documented(method, path, *status, body);
        seen.insert(format!("{method} {path} {status}"));
    }
    // Every documented success was produced above or is checked by the test named here (it
    // needs a real agent, a carrier or review mode); error bodies are the one shape, checked
    // for every route in the test above and for some 400s here.
    let elsewhere = [
        (
            "get /api/v1/displays/{id} 200",
            "agent::agent_plays_edits_reports_and_goes_offline_when_killed",
        ),
        (
            "put /api/v1/playlists/{id} 202",
            "approval (review before publishing)",
        ),
        (
            "delete /api/v1/playlists/{id} 202",
            "the same Proposed shape as put 202",
        ),
        (
            "get /api/v1/proposals 200",
            "approval (review before publishing)",
        ),
        (
            "post /api/v1/proposals/{id}/{decision} 200",
            "approval (review before publishing)",
        ),
        ("get /api/v1/broker/mosquitto 200", "bus (the ACL test)"),
        (
            "get /api/v1/sms/dlr/{gateway} 200",
            "sms::kannel_delivers_ascii_chinese_and_long_messages_exactly_once_with_reports",
        ),
        (
            "post /api/v1/sms/dlr/{gateway} 200",
            "tencent (the field's report array)",
        ),
        (
            "post /api/v1/sms/mo/{gateway} 200",
            "sms (kannel), tencent, aliyun",
        ),
    ];
    let mut unchecked = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for (status, r) in op["responses"].as_object().into_iter().flatten() {
                let key = format!("{method} {path} {status}");
                if status.starts_with('2')
                    && r["content"]["application/json"]["schema"].is_object()
                    && !seen.contains(&key)
                    && !elsewhere.iter().any(|(k, _)| *k == key)
                {
                    unchecked.push(key);
                }
            }
        }
    }
    assert!(
        unchecked.is_empty(),
        "documented answers no test produces: {unchecked:?}"
    );
}
