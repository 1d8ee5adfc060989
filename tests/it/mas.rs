//! China Mobile 云MAS (`tmpsubmit`) against a loopback stand-in that checks what the platform
//! checks: the Base64 JSON body, the enterprise and user, the signature code, the MD5 `mac`
//! over the fields with its own copy of the secret, at most 5,000 numbers; and answers as it
//! does (`rspcod`, one `msgGroup` per request).

use std::sync::{Arc, Mutex};

use axum::extract::State;
use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::*;
use crate::tencent::{messages, until};

const SECRET: &str = "mas-secret-123qwe";

#[derive(Default)]
struct Book {
    requests: Vec<Value>,
}

async fn tmpsubmit(State(book): State<Arc<Mutex<Book>>>, body: String) -> String {
    let answer = |code: &str, group: &str| {
        json!({"msgGroup": group, "rspcod": code, "success": code == "success"}).to_string()
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(body.trim()) else {
        return answer("InvalidMessage", "");
    };
    let Ok(v) = serde_json::from_slice::<Value>(&raw) else {
        return answer("InvalidMessage", "");
    };
    let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
    if s("ecName") != "大连市政务服务中心" || s("apId") != "marquee" {
        return answer("InvalidUsrOrPwd", "");
    }
    let mac = marquee::sms::gateway::cmcc_mas::mac(&marquee::sms::gateway::cmcc_mas::TmpSubmit {
        ec_name: &s("ecName"),
        ap_id: &s("apId"),
        secret_key: SECRET,
        template_id: &s("templateId"),
        mobiles: &s("mobiles"),
        params: &s("params"),
        sign: &s("sign"),
        add_serial: &s("addSerial"),
    });
    if s("mac") != mac {
        return answer("IllegalMac", "");
    }
    if s("sign") != "pKoSOqmiS" {
        return answer("IllegalSignId", "");
    }
    let numbers = s("mobiles").split(',').count();
    if numbers > 5000 {
        return answer("TooManyMobiles", "");
    }
    let mut b = book.lock().unwrap();
    b.requests.push(v.clone());
    answer(
        "success",
        &format!("0927152506001000{:06}", b.requests.len()),
    )
}

#[tokio::test]
async fn a_mas_template_campaign_is_sent_with_the_mac_the_platform_checks() {
    let book = Arc::new(Mutex::new(Book::default()));
    let app = axum::Router::new()
        .route("/sms/tmpsubmit", axum::routing::post(tmpsubmit))
        .with_state(book.clone());
    let url = serve_standin(app).await;
    let site = Site::new(
        &format!("embedded = true\nlisten = \"127.0.0.1:{}\"", free_port()),
        "",
    );
    site.append_config(&format!(
        "[sms]\nsender = \"12345\"\n\
         [[sms.templates]]\nname = \"open-day\"\ntext = \"{{{{date}}}}政务开放日欢迎您。\"\nids = {{ mas = \"5aa85e61ff0a4f3c9bd6a2e1c7d40b11\" }}\n\
         [[sms.gateways]]\nname = \"mas\"\nkind = \"cmcc-mas\"\nurl = \"{url}sms/tmpsubmit\"\n\
         ec_name = \"大连市政务服务中心\"\nap_id = \"marquee\"\nsign = \"pKoSOqmiS\"\n\
         secret_key_env = \"IT_MAS_SECRET\"\ndlr_secret_env = \"IT_MAS_DLR\"\nmessages_per_second = 1000\n"
    ));
    let create = |d: &Daemon, token: String| {
        let http = d.http.clone();
        async move {
            let r = marquee::http_client()
                .build()
                .unwrap()
                .request(Method::POST, format!("{http}/api/v1/campaigns"))
                .bearer_auth(token)
                .json(&json!({"name": "open day", "template": "open-day",
                    "recipients_csv": "phone,date\n13800138000,5月15日\n+8613800138001,5月15日\n", "start": "now"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
        }
    };
    let d = Daemon::start_with_env(
        &site,
        &[
            ("IT_MAS_SECRET", SECRET),
            ("IT_MAS_DLR", "mas-dlr-secret-0123456789"),
        ],
    )
    .await;
    let token = site.admin_token();
    let id = create(&d, token.clone()).await;
    until(&d, &token, id, "both sent", |c| c["counts"]["sent"] == 2).await;
    let req = book.lock().unwrap().requests[0].clone();
    assert_eq!(req["mobiles"], "13800138000,13800138001", "{req}");
    assert_eq!(req["params"], r#"["5月15日"]"#);
    assert!(
        req.get("secretKey").is_none(),
        "the secret stays home: {req}"
    );
    let m = messages(&d, &token, id).await;
    assert_eq!(
        m[0]["carrier_id"], "0927152506001000000001/13800138000",
        "{m:?}"
    );
    d.stop().await;
    // A wrong secret: the platform answers IllegalMac; the gateway leaves rotation, nothing is
    // rejected.
    let d = Daemon::start_with_env(
        &site,
        &[
            ("IT_MAS_SECRET", "not-the-secret"),
            ("IT_MAS_DLR", "mas-dlr-secret-0123456789"),
        ],
    )
    .await;
    let id = create(&d, token.clone()).await;
    let start = std::time::Instant::now();
    while d
        .metric(
            &token,
            "marquee_sms_gateway_out_of_rotation{gateway=\"mas\"}",
        )
        .await
        != 1.0
    {
        assert!(start.elapsed() < DEADLINE, "{}", dump(&d.log));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The answer that took the gateway out is stored after the metric moved (answers are
    // stored in batches): wait for it, then every message is back in the queue.
    let start = std::time::Instant::now();
    let m = loop {
        let m = messages(&d, &token, id).await;
        if m.iter().all(|m| m["state"] != "submitting") {
            break m;
        }
        assert!(start.elapsed() < DEADLINE, "{m:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(m.iter().all(|m| m["state"] == "queued"), "{m:?}");
    assert!(
        m[0]["reason"].as_str().unwrap_or("").contains("IllegalMac"),
        "{m:?}"
    );
    assert_eq!(book.lock().unwrap().requests.len(), 1);
}
