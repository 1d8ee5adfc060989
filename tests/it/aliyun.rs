//! Aliyun SMS end to end, against a loopback stand-in that checks what Aliyun checks (the
//! ACS3-HMAC-SHA256 signature over the query and `host`/`x-acs-*` headers, the body hash, the
//! date, a fresh nonce, the AccessKey, the approved template and its named parameters, at most
//! 1,000 numbers) and answers as Aliyun answers (one `Code` and one `BizId` per request,
//! business errors with HTTP 200, a bad signature with 400), then pushes SmsReport arrays to the
//! account's callback URL until it gets `{"code":0,…}`.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::*;
use crate::schema::documented;
use crate::tencent::{messages, optout, until};

const KEY_ID: &str = "LTAIstandin000000000";
const KEY_SECRET: &str = "standin-access-key-secret-0123";
const DLR_SECRET: &str = "ali-dlr-secret-0123456789";

#[derive(Default)]
struct Book {
    nonces: HashSet<String>,
    limited: HashSet<String>,
    requests: Vec<Vec<String>>,
    sent: Vec<(String, String)>,
    auth_failures: usize,
    push: Pushes,
}

impl HasPushes for Book {
    fn pushes(&mut self) -> &mut Pushes {
        &mut self.push
    }
}

async fn send_sms(
    State(book): State<Arc<Mutex<Book>>>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let fail = |status: StatusCode, code: &str| {
        (
            status,
            json!({"Code": code, "Message": code, "RequestId": "standin"}).to_string(),
        )
    };
    let query: BTreeMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    if h("x-acs-action") != "SendSms" || h("x-acs-version") != "2017-05-25" || !body.is_empty() {
        return fail(StatusCode::BAD_REQUEST, "InvalidAction.NotFound");
    }
    let date = chrono::DateTime::parse_from_rfc3339(&h("x-acs-date"));
    if date.map_or(true, |d| {
        (chrono::Utc::now() - d.with_timezone(&chrono::Utc))
            .num_seconds()
            .abs()
            > 900
    }) {
        book.lock().unwrap().auth_failures += 1;
        return fail(StatusCode::BAD_REQUEST, "InvalidTimeStamp.Expired");
    }
    let signed: BTreeMap<String, String> = [
        "host",
        "x-acs-action",
        "x-acs-content-sha256",
        "x-acs-date",
        "x-acs-signature-nonce",
        "x-acs-version",
    ]
    .iter()
    .map(|k| (k.to_string(), h(k)))
    .collect();
    let want = marquee::sms::gateway::aliyun::authorization(
        KEY_ID, KEY_SECRET, "POST", "/", &query, &signed, empty,
    );
    if !h("authorization").contains(&format!("Credential={KEY_ID},")) {
        book.lock().unwrap().auth_failures += 1;
        return fail(StatusCode::NOT_FOUND, "InvalidAccessKeyId.NotFound");
    }
    if h("authorization") != want || h("x-acs-content-sha256") != empty {
        book.lock().unwrap().auth_failures += 1;
        return fail(StatusCode::BAD_REQUEST, "SignatureDoesNotMatch");
    }
    let mut b = book.lock().unwrap();
    if !b.nonces.insert(h("x-acs-signature-nonce")) {
        return fail(StatusCode::BAD_REQUEST, "SignatureNonceUsed");
    }
    let numbers: Vec<String> = query
        .get("PhoneNumbers")
        .map(|p| p.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    b.requests.push(numbers.clone());
    if numbers.is_empty() || numbers.len() > 1000 {
        return fail(StatusCode::OK, "isv.MOBILE_COUNT_OVER_LIMIT");
    }
    if query.get("SignName").is_none_or(|s| s.is_empty()) {
        return fail(StatusCode::OK, "isv.SMS_SIGNATURE_ILLEGAL");
    }
    if query.get("TemplateCode").map(String::as_str) != Some("SMS_200000001") {
        return fail(StatusCode::OK, "isv.SMS_TEMPLATE_ILLEGAL");
    }
    let param: Value = query
        .get("TemplateParam")
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_default();
    if param["date"].as_str().is_none_or(str::is_empty) {
        return fail(StatusCode::OK, "isv.TEMPLATE_MISSING_PARAMETERS");
    }
    if numbers.iter().any(|n| b.limited.contains(n)) {
        return (
            StatusCode::OK,
            json!({"Code": "isv.BUSINESS_LIMIT_CONTROL", "Message": "触发天级流控Permits:10", "RequestId": "standin"}).to_string(),
        );
    }
    let biz = format!("{}^0", 932702304080415357u64 + b.requests.len() as u64);
    for n in &numbers {
        b.sent.push((n.clone(), biz.clone()));
        b.push.unpushed.push(json!({
            "phone_number": n.trim_start_matches("+86"), "send_time": "2026-05-15 10:00:00",
            "report_time": "2026-05-15 10:00:05", "success": true, "err_code": "DELIVERED",
            "err_msg": "用户接收成功", "sms_size": "1", "biz_id": biz, "out_id": query["OutId"],
        }));
    }
    (
        StatusCode::OK,
        json!({"Code": "OK", "Message": "OK", "BizId": biz, "RequestId": "standin"}).to_string(),
    )
}

struct Standin {
    url: String,
    book: Arc<Mutex<Book>>,
}

impl Standin {
    async fn start() -> Standin {
        let book = Arc::new(Mutex::new(Book::default()));
        let app = axum::Router::new()
            .route("/", axum::routing::post(send_sms))
            .with_state(book.clone());
        let url = serve_standin(app).await;
        // "The system checks only that code is a number" (and 0 means taken).
        push_reports(book.clone(), Value::Array, |v| v["code"] == 0);
        Standin { url, book }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap()
    }
}

#[tokio::test]
async fn an_aliyun_template_campaign_is_delivered_by_array_reports_and_a_limit_defers() {
    let ali = Standin::start().await;
    ali.book().limited.insert("+8613800138008".into());
    let site = Site::new(
        &format!("embedded = true\nlisten = \"127.0.0.1:{}\"", free_port()),
        "",
    );
    site.append_config(&format!(
        "[sms]\nsender = \"12345\"\n\
         [[sms.templates]]\nname = \"open-day\"\ntext = \"{{{{date}}}}政务开放日欢迎您。\"\nids = {{ ali = \"SMS_200000001\" }}\n\
         [[sms.gateways]]\nname = \"ali\"\nkind = \"aliyun\"\nurl = \"{}\"\nsign_name = \"大连政务公开\"\n\
         access_key_id_env = \"IT_ALI_ID\"\naccess_key_secret_env = \"IT_ALI_SECRET\"\n\
         dlr_secret_env = \"IT_ALI_DLR\"\nmessages_per_second = 1000\n",
        ali.url
    ));
    let d = Daemon::start_with_env(
        &site,
        &[
            ("IT_ALI_ID", KEY_ID),
            ("IT_ALI_SECRET", KEY_SECRET),
            ("IT_ALI_DLR", DLR_SECRET),
        ],
    )
    .await;
    let token = site.admin_token();
    ali.book().push.callback = Some(format!("{}/api/v1/sms/dlr/ali?secret={DLR_SECRET}", d.http));
    let create = |csv: &'static str| {
        let d = &d;
        let token = token.clone();
        async move {
            let (status, v) = d
                .send(
                    Method::POST,
                    "/api/v1/campaigns",
                    Some(&token),
                    Some(json!({"name": "open day", "template": "open-day", "recipients_csv": csv, "start": "now"})),
                )
                .await;
            assert_eq!(status, 201, "{v}");
            v["id"].as_i64().unwrap()
        }
    };
    let id = create("phone,date\n13800138000,5月15日\n13800138001,5月15日\n").await;
    until(&d, &token, id, "both delivered", |c| {
        c["counts"]["delivered"] == 2
    })
    .await;
    assert_eq!(ali.book().sent.len(), 2);
    assert!(ali.book().push.acked >= 1);
    // A number over its daily limit: the whole request is refused with one code; the message
    // waits for Beijing midnight.
    let id = create("phone,date\n13800138008,5月15日\n").await;
    until(&d, &token, id, "deferred", |c| {
        c["counts"]["queued"] == 1 && c["status"] == "running"
    })
    .await;
    let start = std::time::Instant::now();
    loop {
        let m = messages(&d, &token, id).await;
        if m[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("BUSINESS_LIMIT_CONTROL"))
        {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "{m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ali.book().auth_failures,
        0,
        "every request was signed right"
    );
    // A reply 退订 (SmsUp array): the number is opted out; Aliyun's acknowledgement.
    let reply = json!([{"phone_number": "13800138001", "send_time": "2026-05-15 10:01:00", "content": "退订", "sign_name": "大连政务公开", "dest_code": "", "sequence_id": 1}]);
    let path = format!("/api/v1/sms/mo/ali?secret={DLR_SECRET}");
    let (status, ack) = d.send(Method::POST, &path, None, Some(reply)).await;
    assert_eq!((status, &ack["code"]), (200, &json!(0)), "{ack}");
    documented("post", "/api/v1/sms/mo/{gateway}", status, &ack);
    assert!(optout(&d, &token, "+8613800138001").await.is_some());
}
