//! The OpenAPI document: the committed copy is current, the daemon serves it, and every
//! operation it describes is a real route that refuses an anonymous caller.

use std::process::Command;

use serde_json::Value;

use crate::harness::*;

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
            if !open {
                assert_eq!(status, 401, "{method} {path} answered an anonymous caller");
                let (status, _) = call(Some("wrong-token-0123456789")).await;
                assert_eq!(status, 401, "{method} {path} accepted a wrong token");
                // Every write needs more than the viewer role (and so does the audit log).
                let (status, _) = call(Some(VIEWER)).await;
                // Writes, the audit log and the broker's password file are not for viewers.
                if method != "get" || path == "/api/v1/audit" || path == "/api/v1/broker/mosquitto"
                {
                    assert_eq!(status, 403, "{method} {path} let a viewer through");
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

/// Whether `v` is what `schema` (OpenAPI 3.1, a JSON Schema subset: `$ref`, `type` (one or a
/// list), `properties`, `required`, `items`, `oneOf`, `anyOf`, `allOf`, `enum`) allows. Objects
/// are closed: a key the schema does not name is a difference too, so an answer cannot carry
/// what its documentation leaves out. `at` names the place in messages.
fn conforms(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        let target = &doc["components"]["schemas"][name];
        assert!(!target.is_null(), "{at}: no schema {r}");
        return conforms(doc, target, v, at);
    }
    for (key, exactly_one) in [("oneOf", true), ("anyOf", false)] {
        if let Some(alts) = schema[key].as_array() {
            let fits: Vec<String> = alts
                .iter()
                .filter_map(|s| conforms(doc, s, v, at).err())
                .collect();
            let matched = alts.len() - fits.len();
            return match (matched, exactly_one) {
                (1, _) => Ok(()),
                (n, false) if n > 0 => Ok(()),
                (0, _) => Err(format!("{at}: matches none of {key}: {}", fits.join(" | "))),
                (n, _) => Err(format!("{at}: matches {n} of oneOf")),
            };
        }
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            conforms(doc, s, v, at)?;
        }
        return Ok(());
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(v)
    {
        return Err(format!("{at}: {v} is not one of {values:?}"));
    }
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty()
        && !types
            .iter()
            .any(|t| *t == kind || (*t == "number" && kind == "integer"))
    {
        return Err(format!("{at}: {kind} where the schema says {types:?}"));
    }
    match v {
        Value::Object(o) => {
            let props = schema["properties"].as_object();
            for k in schema["required"].as_array().into_iter().flatten() {
                let k = k.as_str().unwrap();
                if !o.contains_key(k) {
                    return Err(format!("{at}: required {k:?} is missing"));
                }
            }
            let extra = &schema["additionalProperties"];
            for (k, x) in o {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => conforms(doc, s, x, &format!("{at}.{k}"))?,
                    // A map: every value against its schema.
                    None if extra.is_object() => conforms(doc, extra, x, &format!("{at}.{k}"))?,
                    None if props.is_some() => {
                        return Err(format!("{at}: {k:?} is not documented"));
                    }
                    None => {}
                }
            }
            Ok(())
        }
        Value::Array(a) => {
            if schema["items"].is_object() {
                for (i, x) in a.iter().enumerate() {
                    conforms(doc, &schema["items"], x, &format!("{at}[{i}]"))?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[test]
fn the_schema_checker_itself_tells_apart() {
    let doc = serde_json::json!({"components": {"schemas": {
        "A": {"type": "object", "required": ["id"], "properties": {
            "id": {"type": "integer"}, "note": {"type": ["string", "null"]},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "kind": {"oneOf": [{"type": "object", "required": ["x"], "properties": {"x": {"type": "string"}}},
                               {"type": "object", "required": ["y"], "properties": {"y": {"type": "string"}}}]}}}}}});
    let a = serde_json::json!({"$ref": "#/components/schemas/A"});
    let ok = |v: Value| conforms(&doc, &a, &v, "a");
    assert!(ok(serde_json::json!({"id": 1, "note": null})).is_ok());
    assert!(ok(serde_json::json!({"id": 1, "kind": {"y": "z"}})).is_ok());
    assert!(
        ok(serde_json::json!({"note": "x"}))
            .unwrap_err()
            .contains("required")
    );
    assert!(
        ok(serde_json::json!({"id": "1"}))
            .unwrap_err()
            .contains("string where")
    );
    assert!(
        ok(serde_json::json!({"id": 1, "extra": 2}))
            .unwrap_err()
            .contains("not documented")
    );
    assert!(
        ok(serde_json::json!({"id": 1, "kind": {"z": 1}}))
            .unwrap_err()
            .contains("none of")
    );
    // A map's values are checked against its value schema.
    assert!(ok(serde_json::json!({"id": 1, "counts": {"sent": 2}})).is_ok());
    assert!(
        ok(serde_json::json!({"id": 1, "counts": {"sent": "2"}}))
            .unwrap_err()
            .contains("string where")
    );
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
            serde_json::json!({"name": "draft", "text": "hi", "recipients": one}),
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
    let mut seen = std::collections::BTreeSet::new();
    for (method, path, status, body) in &typed {
        let schema = &doc["paths"][*path][method.as_str()]["responses"][status.to_string()]["content"]
            ["application/json"]["schema"];
        assert!(
            !schema.is_null(),
            "{method} {path} answered {status} with a body the document does not describe: {body}"
        );
        if let Err(e) = conforms(&doc, schema, body, &format!("{method} {path} {status}")) {
            panic!("{e}\n{body:#}");
        }
        seen.insert(format!("{method} {path} {status}"));
    }
    // Every documented body was produced above.
    let mut documented = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for (status, r) in op["responses"].as_object().into_iter().flatten() {
                if r["content"]["application/json"]["schema"].is_object() && status != "default" {
                    documented.push(format!("{method} {path} {status}"));
                }
            }
        }
    }
    let unchecked: Vec<&String> = documented.iter().filter(|k| !seen.contains(*k)).collect();
    assert!(
        unchecked.is_empty(),
        "documented answers no test produces: {unchecked:?}"
    );
}
