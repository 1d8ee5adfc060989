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
