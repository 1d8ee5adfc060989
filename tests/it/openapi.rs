//! The OpenAPI document: the committed copy is current, the daemon serves it, and every
//! operation it describes is a real route that refuses an anonymous caller.

use std::process::Command;

use serde_json::Value;

use crate::harness::*;

#[tokio::test]
async fn openapi_document_matches_the_routes_and_every_route_is_authenticated() {
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
    let d = Daemon::start(&site).await;
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
            let resp = client
                .request(m.clone(), format!("{}{concrete}", d.http))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or_default();
            assert_ne!(
                body["error"]["message"], "no such route",
                "{method} {path} is documented but not routed"
            );
            assert_ne!(status, 405, "{method} {path} is documented but not routed");
            let open = path == "/healthz" || path.starts_with("/api/v1/sms/dlr/");
            if !open {
                assert_eq!(status, 401, "{method} {path} answered an anonymous caller");
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
