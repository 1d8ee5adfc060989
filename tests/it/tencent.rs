//! Tencent Cloud SMS end to end, against a loopback stand-in that checks what Tencent checks
//! (the TC3-HMAC-SHA256 signature over the exact body, the timestamp, the SecretId, the app,
//! the approved template and its parameter count, at most 200 numbers) and answers as Tencent
//! answers (HTTP 200 with a per-number `Code`, or `Response.Error`), then pushes delivery
//! reports as a JSON array to the account's callback URL and pushes again until it gets
//! `{"result":0,"errmsg":"OK"}`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::*;
use crate::schema::documented;

const SECRET_ID: &str = "AKIDstandin0000000000000000000000";
const SECRET_KEY: &str = "standin-secret-key-0123456789";
const APP: &str = "1400000001";
const DLR_SECRET: &str = "tc-dlr-secret-0123456789";

#[derive(Default)]
struct Book {
    /// Approved template id → number of parameters.
    templates: HashMap<String, usize>,
    blacklist: HashSet<String>,
    daily_limit: HashSet<String>,
    /// Every number accepted (sent), with its serial number and session context.
    sent: Vec<(String, String, String)>,
    /// Numbers per request that passed the signature check.
    requests: Vec<Vec<String>>,
    /// Requests refused for their signature, time or SecretId.
    auth_failures: usize,
    push: Pushes,
    /// Hold answers (the request is recorded first): for a kill -9 mid-request.
    hold: bool,
}

/// The stand-in: its URL and what it saw.
struct Standin {
    url: String,
    book: Arc<Mutex<Book>>,
}

fn code(c: &str) -> Value {
    json!(c)
}

impl HasPushes for Book {
    fn pushes(&mut self) -> &mut Pushes {
        &mut self.push
    }
}

async fn send_sms(State(book): State<Arc<Mutex<Book>>>, headers: HeaderMap, body: Bytes) -> String {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let error = |c: &str, m: &str| {
        json!({"Response": {"Error": {"Code": c, "Message": m}, "RequestId": "standin"}})
            .to_string()
    };
    let action = h("x-tc-action");
    if !matches!(
        action.as_str(),
        "SendSms" | "PullSmsSendStatusByPhoneNumber"
    ) || h("x-tc-version") != "2021-01-11"
    {
        return error("InvalidAction", "action or version");
    }
    // The signature, as Tencent checks it: recomputed over the bytes received.
    let ts: i64 = h("x-tc-timestamp").parse().unwrap_or(0);
    if (chrono::Utc::now().timestamp() - ts).abs() > 300 {
        book.lock().unwrap().auth_failures += 1;
        return error("AuthFailure.SignatureExpire", "timestamp");
    }
    let auth = h("authorization");
    if !auth.contains(&format!("Credential={SECRET_ID}/")) {
        book.lock().unwrap().auth_failures += 1;
        return error("AuthFailure.SecretIdNotFound", "secret id");
    }
    let want = marquee::sms::gateway::tencent::authorization(
        SECRET_ID,
        SECRET_KEY,
        "sms",
        &h("host"),
        ts,
        &body,
    );
    if auth != want || h("content-type") != "application/json; charset=utf-8" {
        book.lock().unwrap().auth_failures += 1;
        return error(
            "AuthFailure.SignatureFailure",
            "The provided credentials could not be validated.",
        );
    }
    let req: Value = serde_json::from_slice(&body).unwrap_or_default();
    if action == "PullSmsSendStatusByPhoneNumber" {
        // What it sent to the number (here: every message it accepted is delivered).
        let b = book.lock().unwrap();
        let phone = req["PhoneNumber"].as_str().unwrap_or("");
        if req["SmsSdkAppId"] != APP || req["BeginTime"].as_i64().is_none() || phone.is_empty() {
            return error("InvalidParameter", "SmsSdkAppId, BeginTime, PhoneNumber");
        }
        let set: Vec<Value> = b
            .sent
            .iter()
            .filter(|(n, _, _)| n == phone)
            .map(|(n, serial, session)| {
                json!({"UserReceiveTime": "2026-11-30 10:00:00", "CountryCode": "86",
                    "SubscriberNumber": n.trim_start_matches("+86"), "PhoneNumber": n,
                    "SerialNo": serial, "ReportStatus": "SUCCESS", "Description": "用户短信送达成功",
                    "SessionContext": session})
            })
            .collect();
        return json!({"Response": {"PullSmsSendStatusSet": set, "RequestId": "standin"}})
            .to_string();
    }
    let numbers: Vec<String> = req["PhoneNumberSet"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect();
    if numbers.is_empty() || numbers.len() > 200 {
        return error("LimitExceeded.PhoneNumberCountLimit", "1 to 200 numbers");
    }
    if req["SmsSdkAppId"] != APP || req["SignName"].as_str().unwrap_or("").is_empty() {
        return error("FailedOperation.MissingSignature", "app or signature");
    }
    let template = req["TemplateId"].as_str().unwrap_or("").to_owned();
    let params = req["TemplateParamSet"].as_array().map_or(0, Vec::len);
    let session = req["SessionContext"].as_str().unwrap_or("").to_owned();
    let hold = {
        let mut b = book.lock().unwrap();
        b.requests.push(numbers.clone());
        if b.hold {
            // The provider sends them, and the answer never leaves.
            for n in &numbers {
                let serial = format!("2433:{}", 100000 + b.sent.len());
                b.sent.push((n.clone(), serial, session.clone()));
            }
        }
        b.hold
    };
    if hold {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let mut b = book.lock().unwrap();
    let per_template = match b.templates.get(&template) {
        None => Some("FailedOperation.TemplateIncorrectOrUnapproved"),
        Some(n) if *n != params => Some("FailedOperation.TemplateParamSetNotMatchApprovedTemplate"),
        Some(_) => None,
    };
    let mut set = Vec::new();
    for n in numbers {
        let c = if let Some(c) = per_template {
            c
        } else if b.blacklist.contains(&n) {
            "FailedOperation.PhoneNumberInBlacklist"
        } else if b.daily_limit.contains(&n) {
            "LimitExceeded.PhoneNumberDailyLimit"
        } else {
            "Ok"
        };
        let serial = if c == "Ok" {
            let s = format!("2433:{}", 100000 + b.sent.len());
            b.sent.push((n.clone(), s.clone(), session.clone()));
            b.push.unpushed.push(json!({
                "user_receive_time": chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string(),
                "nationcode": "86",
                "mobile": n.trim_start_matches("+86"),
                "report_status": "SUCCESS",
                "errmsg": "DELIVRD",
                "description": "用户短信送达成功",
                "sid": s,
            }));
            s
        } else {
            String::new()
        };
        set.push(json!({"SerialNo": serial, "PhoneNumber": n, "Fee": i32::from(c == "Ok"),
            "SessionContext": req["SessionContext"], "Code": code(c), "Message": c, "IsoCode": "CN"}));
    }
    json!({"Response": {"SendStatusSet": set, "RequestId": "standin"}}).to_string()
}

impl Standin {
    async fn start(templates: &[(&str, usize)]) -> Standin {
        let book = Arc::new(Mutex::new(Book {
            templates: templates.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
            ..Book::default()
        }));
        let app = axum::Router::new()
            .route("/", axum::routing::post(send_sms))
            .with_state(book.clone());
        let url = serve_standin(app).await;
        push_reports(book.clone(), Value::Array, |v| {
            *v == json!({"result": 0, "errmsg": "OK"})
        });
        Standin { url, book }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap()
    }
}

fn gateway(name: &str, url: &str) -> String {
    format!(
        "[[sms.gateways]]\nname = \"{name}\"\nkind = \"tencent\"\nurl = \"{url}\"\nregion = \"ap-guangzhou\"\n\
         sdk_app_id = \"{APP}\"\nsign_name = \"大连政务公开\"\nsecret_id_env = \"IT_TC_ID\"\n\
         secret_key_env = \"IT_TC_KEY\"\ndlr_secret_env = \"IT_TC_DLR\"\nmessages_per_second = 1000\n"
    )
}

/// A site whose SMS goes through the given Tencent gateways (name, stand-in URL).
fn site(gateways: &[(&str, &str)]) -> Site {
    let site = Site::new(
        &format!("embedded = true\nlisten = \"127.0.0.1:{}\"", free_port()),
        "",
    );
    let ids: Vec<String> = gateways
        .iter()
        .map(|(n, _)| format!("{n} = \"2000001\""))
        .collect();
    let mut sms = format!(
        "[sms]\nsender = \"12345\"\n\
         [[sms.templates]]\nname = \"open-day\"\ntext = \"{{{{date}}}}政务开放日欢迎您。\"\nids = {{ {} }}\n\
         [[sms.templates]]\nname = \"unapproved\"\ntext = \"政务开放日欢迎您。\"\nids = {{ {} = \"2999999\" }}\n",
        ids.join(", "),
        gateways[0].0
    );
    for (n, u) in gateways {
        sms.push_str(&gateway(n, u));
    }
    site.append_config(&sms);
    site
}

async fn start(site: &Site, key: &str) -> Daemon {
    Daemon::start_with_env(
        site,
        &[
            ("IT_TC_ID", SECRET_ID),
            ("IT_TC_KEY", key),
            ("IT_TC_DLR", DLR_SECRET),
        ],
    )
    .await
}

async fn campaign(d: &Daemon, token: &str, template: &str, numbers: &[&str]) -> i64 {
    let csv = std::iter::once("phone,date".to_owned())
        .chain(numbers.iter().map(|n| format!("{n},5月15日")))
        .collect::<Vec<_>>()
        .join("\n");
    create_campaign(
        d,
        token,
        json!({"name": "open day", "template": template, "recipients_csv": csv, "start": "now"}),
    )
    .await
}

/// Creates a campaign (`body`, started now); its id.
pub async fn create_campaign(d: &Daemon, token: &str, body: Value) -> i64 {
    let (status, v) = d
        .send(Method::POST, "/api/v1/campaigns", Some(token), Some(body))
        .await;
    assert_eq!(status, 201, "{v}");
    v["id"].as_i64().unwrap()
}

/// The opt-out list's entry for `number`, if it is on it.
pub async fn optout(d: &Daemon, token: &str, number: &str) -> Option<Value> {
    let (_, list) = d.get("/api/v1/optouts", Some(token)).await;
    list["optouts"]
        .as_array()?
        .iter()
        .find(|o| o["number"] == number)
        .cloned()
}

pub async fn until(
    d: &Daemon,
    token: &str,
    id: i64,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> Value {
    let start = std::time::Instant::now();
    loop {
        let (_, c) = d.get(&format!("/api/v1/campaigns/{id}"), Some(token)).await;
        if f(&c) {
            return c;
        }
        assert!(start.elapsed() < DEADLINE, "{what}: {c}\n{}", dump(&d.log));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn messages(d: &Daemon, token: &str, id: i64) -> Vec<Value> {
    let (_, m) = d
        .get(
            &format!("/api/v1/campaigns/{id}/messages?limit=100"),
            Some(token),
        )
        .await;
    m["messages"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_template_campaign_is_delivered_by_array_reports_and_replies_opt_out() {
    let a = Standin::start(&[("2000001", 1)]).await;
    let b = Standin::start(&[("2000001", 1)]).await;
    a.book().blacklist.insert("+8613800138009".into());
    a.book().daily_limit.insert("+8613800138008".into());
    let site = site(&[("tc", &a.url), ("tc2", &b.url)]);
    let d = start(&site, SECRET_KEY).await;
    let token = site.admin_token();
    // The console's callback URL is first entered with a wrong secret: pushes are refused
    // and made again.
    a.book().push.callback = Some(format!(
        "{}/api/v1/sms/dlr/tc?secret=wrong-secret-000000",
        d.http
    ));
    let id = campaign(
        &d,
        &token,
        "open-day",
        &["13800138000", "13800138001", "13800138009", "13800138008"],
    )
    .await;
    eventually("pushes refused", || {
        (a.book().push.pushes >= 2).then_some(())
    })
    .await;
    assert_eq!(a.book().push.acked, 0);
    a.book().push.callback = Some(format!("{}/api/v1/sms/dlr/tc?secret={DLR_SECRET}", d.http));
    let c = until(&d, &token, id, "two delivered", |c| {
        c["counts"]["delivered"] == 2
    })
    .await;
    assert_eq!(c["counts"]["cancelled"], 1, "{c}");
    assert_eq!(c["counts"]["queued"], 1, "{c}");
    assert!(a.book().push.acked >= 1);
    // One request carried every number with the same parameters.
    assert!(
        a.book().requests.iter().any(|r| r.len() >= 2),
        "{:?}",
        a.book().requests
    );
    let msgs = messages(&d, &token, id).await;
    let of = |n: &str| msgs.iter().find(|m| m["recipient"] == n).unwrap().clone();
    // The block-listed number: cancelled, and on our opt-out list with the provider's code.
    assert!(
        of("+8613800138009")["reason"]
            .as_str()
            .unwrap()
            .contains("PhoneNumberInBlacklist")
    );
    // The daily-limited number waits for tomorrow on its gateway: not failed over to tc2.
    let limited = of("+8613800138008");
    assert_eq!(limited["state"], "queued", "{limited}");
    assert!(limited["reason"].as_str().unwrap().contains("DailyLimit"));
    assert!(
        b.book().requests.is_empty(),
        "tc2 was used: {:?}",
        b.book().requests
    );
    let blocked = optout(&d, &token, "+8613800138009").await.unwrap();
    assert!(
        blocked["reason"]
            .as_str()
            .unwrap()
            .contains("PhoneNumberInBlacklist"),
        "{blocked}"
    );
    // A report for a serial number we never had (the field's array) is kept and acknowledged.
    let fixture =
        std::fs::read(repo().join("tests/fixtures/carriers/tencent-dlr-array.json")).unwrap();
    let ack = json!({"result": 0, "errmsg": "OK"});
    let path = format!("/api/v1/sms/dlr/tc?secret={DLR_SECRET}");
    let fixture: Value = serde_json::from_slice(&fixture).unwrap();
    let answer = d.send(Method::POST, &path, None, Some(fixture)).await;
    assert_eq!(answer, (200, ack.clone()));
    documented("post", "/api/v1/sms/dlr/{gateway}", answer.0, &answer.1);
    // A citizen replies TD: the number joins the opt-out list, the reply is acknowledged as
    // Tencent expects, and the audit log says so.
    let reply = json!({"extend": "", "mobile": "13800138000", "nationcode": "86", "sign": "大连政务公开", "text": "TD", "time": 1764460800});
    let path = format!("/api/v1/sms/mo/tc?secret={DLR_SECRET}");
    let answer = d.send(Method::POST, &path, None, Some(reply)).await;
    assert_eq!(answer, (200, ack));
    documented("post", "/api/v1/sms/mo/{gateway}", answer.0, &answer.1);
    let replied = optout(&d, &token, "+8613800138000").await.unwrap();
    assert!(
        replied["reason"].as_str().unwrap().contains("TD"),
        "{replied}"
    );
    let (_, audit) = d.get("/api/v1/audit", Some(&token)).await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "optout.add" && e["actor"] == "mo:tc"),
        "{audit}"
    );
    // A reply with the wrong secret is refused.
    let reply = json!({"mobile": "13800138001", "nationcode": "86", "text": "TD"});
    let (status, _) = d
        .send(
            Method::POST,
            "/api/v1/sms/mo/tc?secret=nope",
            None,
            Some(reply),
        )
        .await;
    assert_eq!(status, 403);
    // Every number went out once.
    let sent: Vec<String> = a.book().sent.iter().map(|(n, _, _)| n.clone()).collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
}

#[tokio::test]
async fn an_unapproved_template_pauses_the_campaign_and_a_wrong_key_takes_the_gateway_out() {
    let a = Standin::start(&[("2000001", 1)]).await;
    let site = site(&[("tc", &a.url)]);
    let d = start(&site, SECRET_KEY).await;
    let token = site.admin_token();
    let numbers: Vec<String> = (0..30).map(|i| format!("138001380{i:02}")).collect();
    let refs: Vec<&str> = numbers.iter().map(String::as_str).collect();
    let id = campaign(&d, &token, "unapproved", &refs).await;
    let c = until(&d, &token, id, "paused", |c| c["status"] == "paused").await;
    assert!(
        c["paused_reason"]
            .as_str()
            .unwrap_or("")
            .contains("TemplateIncorrectOrUnapproved"),
        "{c}"
    );
    // The list was not burned through: nothing sent, nothing rejected, all waiting.
    let c = until(&d, &token, id, "all queued", |c| {
        c["counts"]["queued"] == 30
    })
    .await;
    assert!(c["counts"].get("rejected").is_none(), "{c}");
    assert!(a.book().sent.is_empty());
    d.stop().await;

    // The same daemon with a wrong secret key: every request fails its signature check, the
    // gateway leaves rotation, and nothing is rejected or lost.
    let d = start(&site, "not-the-secret-key").await;
    let id = campaign(&d, &token, "open-day", &refs).await;
    let start = std::time::Instant::now();
    while d
        .metric(
            &token,
            "marquee_sms_gateway_out_of_rotation{gateway=\"tc\"}",
        )
        .await
        != 1.0
    {
        assert!(start.elapsed() < DEADLINE, "{}", dump(&d.log));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.book().auth_failures >= 1);
    let c = until(&d, &token, id, "all queued", |c| {
        c["counts"]["queued"] == 30
    })
    .await;
    assert!(c["counts"].get("rejected").is_none(), "{c}");
    let msgs = messages(&d, &token, id).await;
    assert!(
        msgs.iter().any(|m| m["reason"]
            .as_str()
            .unwrap_or("")
            .contains("AuthFailure.SignatureFailure")),
        "{msgs:?}"
    );
    assert!(a.book().sent.is_empty());

    // Restarted, the daemon keeps the gateway out (from the store), without asking the
    // provider again, and says why.
    d.stop().await;
    let failures = a.book().auth_failures;
    let d = self::start(&site, "not-the-secret-key").await;
    let began = std::time::Instant::now();
    let shown = loop {
        let (status, v) = d.get("/api/v1/sms/gateways", Some(&token)).await;
        assert_eq!(status, 200, "{v}");
        if v["gateways"][0]["out_of_rotation"] == true {
            break v;
        }
        assert!(began.elapsed() < DEADLINE, "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        shown["gateways"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("AuthFailure"),
        "{shown}"
    );
    assert_eq!(
        a.book().auth_failures,
        failures,
        "the provider was asked again"
    );
    assert_eq!(
        d.metric(
            &token,
            "marquee_sms_gateway_out_of_rotation{gateway=\"tc\"}"
        )
        .await,
        1.0
    );
}

// Multi-threaded: the stand-in keeps answering while the test waits on the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_batch_sends_no_number_twice() {
    let a = Standin::start(&[("2000001", 1)]).await;
    a.book().hold = true;
    let site = site(&[("tc", &a.url)]);
    let d = start(&site, SECRET_KEY).await;
    let token = site.admin_token();
    // More than the first claim takes (the pace's burst, a tenth of a second): the rest is
    // sent after the restart.
    let numbers: Vec<String> = (0..300).map(|i| format!("13800138{i:03}")).collect();
    let refs: Vec<&str> = numbers.iter().map(String::as_str).collect();
    let id = campaign(&d, &token, "open-day", &refs).await;
    // A request is in flight (the stand-in has it and holds the answer): kill -9.
    eventually("a request in flight", || {
        (!a.book().requests.is_empty()).then_some(())
    })
    .await;
    d.signal("KILL");
    drop(d);
    let held: usize = a.book().requests.iter().map(Vec::len).sum();
    a.book().hold = false;
    a.book().push.callback = None;
    let d = start(&site, SECRET_KEY).await;
    let c = until(&d, &token, id, "settled", |c| {
        c["counts"]["queued"].is_null() && c["counts"]["submitting"].is_null()
    })
    .await;
    // What was claimed when the daemon died is `unknown` (never resent on its own); the rest
    // was sent after the restart; no number reached the provider twice.
    let requests = a.book().requests.clone();
    let mut seen = HashSet::new();
    for n in requests.iter().flatten() {
        assert!(seen.insert(n.clone()), "{n} submitted twice: {requests:?}");
    }
    let unknown = c["counts"]["unknown"].as_u64().unwrap_or(0) as usize;
    assert!(unknown >= held && held >= 1, "{c} held {held}");
    // A claim committed before the kill whose request had not left (it waits for the log's
    // sync, a slot of the window the held requests fill, its turn at the pace) is `unknown`
    // too, and never sent: at most the 4 requests claimed ahead of the window of 8 and one
    // waiting for its sync, each of at most 12 numbers at 1,000 msg/s (10 ms of the pace, and
    // one; only the first claim, into an empty window, takes the pace's burst). Everything
    // else was sent after the restart.
    let unsent = unknown - held;
    assert!(
        unsent <= 60,
        "{unsent} claimed and never sent: {c} held {held}"
    );
    assert_eq!(seen.len(), 300 - unsent, "{requests:?}");
    assert_eq!(
        unknown + c["counts"]["sent"].as_u64().unwrap_or(0) as usize,
        300,
        "{c}"
    );
    // Reconciliation asks the provider: what it sent (the held request's numbers) is found
    // by the campaign's tag and becomes delivered; nothing is resent.
    let out = d.cli(&token, &["campaign", "reconcile", &id.to_string()]);
    assert!(
        out.contains(&format!("{held} found at the provider")),
        "{out}"
    );
    let c = until(&d, &token, id, "reconciled", |c| {
        c["counts"]["unknown"].as_u64().unwrap_or(0) as usize == unknown - held
    })
    .await;
    assert_eq!(
        c["counts"]["delivered"].as_u64().unwrap_or(0) as usize,
        held,
        "{c}"
    );
    assert_eq!(
        a.book().requests.iter().flatten().count(),
        300 - unsent,
        "nothing was resent"
    );
}

/// The generic `http` kind reaches the same provider by configuration alone: TC3 signing over
/// the JSON body, the request-level error and per-number results read by pointer, codes
/// classed, the batch in `{to_json}`, and the array reports matched by `sid` and acknowledged
/// as Tencent expects.
#[tokio::test]
async fn the_generic_kind_reaches_tencent_by_configuration() {
    let a = Standin::start(&[("2000001", 1)]).await;
    a.book().blacklist.insert("+8613800138009".into());
    let site = Site::new(
        &format!("embedded = true\nlisten = \"127.0.0.1:{}\"", free_port()),
        "",
    );
    site.append_config(&format!(
        r#"[sms]
sender = "12345"
[[sms.gateways]]
name = "tcg"
kind = "http"
url = "{url}"
body = "json"
json = '{{"PhoneNumberSet": "{{to_json}}", "SmsSdkAppId": "{APP}", "TemplateId": "2000001", "SignName": "大连政务公开", "TemplateParamSet": ["5月15日"], "SessionContext": "marquee"}}'
batch_max = 200
headers = {{ "X-TC-Action" = "SendSms", "X-TC-Version" = "2021-01-11", "X-TC-Region" = "ap-guangzhou" }}
signing = "tc3-hmac-sha256"
secret_id_env = "IT_TC_ID"
secret_key_env = "IT_TC_KEY"
sign_service = "sms"
outcome_pointer = "/Response/Error/Code"
results_pointer = "/Response/SendStatusSet"
result_phone_field = "/PhoneNumber"
result_code_field = "/Code"
result_id_field = "/SerialNo"
codes = {{ "Ok" = "accepted", "FailedOperation.PhoneNumberInBlacklist" = "opted_out", "AuthFailure*" = "account" }}
dlr_items_pointer = ""
dlr_carrier_id_field = "/sid"
dlr_status_field = "/report_status"
dlr_delivered = ["SUCCESS"]
dlr_failed = ["FAIL"]
dlr_ack_body = '{{"result":0,"errmsg":"OK"}}'
dlr_ack_content_type = "application/json"
dlr_secret_env = "IT_TC_DLR"
messages_per_second = 1000
"#,
        url = a.url
    ));
    let d = start(&site, SECRET_KEY).await;
    let token = site.admin_token();
    a.book().push.callback = Some(format!("{}/api/v1/sms/dlr/tcg?secret={DLR_SECRET}", d.http));
    let id = create_campaign(
        &d,
        &token,
        json!({"name": "generic", "text": "5月15日政务开放日欢迎您。",
            "recipients_csv": "number\n13800138000\n13800138001\n13800138009\n", "start": "now"}),
    )
    .await;
    let c = until(&d, &token, id, "two delivered, one opted out", |c| {
        c["counts"]["delivered"] == 2 && c["counts"]["cancelled"] == 1
    })
    .await;
    assert_eq!(c["status"], "done", "{c}");
    assert_eq!(a.book().auth_failures, 0, "every request was signed right");
    assert_eq!(
        a.book().requests.len(),
        1,
        "one request for the three numbers"
    );
    // An alert whose SMS names a template no gateway has is refused at creation, naming the
    // field, and nothing reaches a screen.
    let (status, v) = d
        .send(
            Method::POST,
            "/api/v1/alerts",
            Some(&token),
            Some(
                json!({"severity": "extreme", "text": {"zh": "演练"}, "expires_in": "10m",
                "sms": {"template": "open-day", "recipients_csv": "number\n13800138000\n"}}),
            ),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["field"], "sms.template", "{v}");
    let (_, alerts) = d.get("/api/v1/alerts", Some(&token)).await;
    assert!(
        alerts["alerts"].as_array().is_none_or(|a| a.is_empty()),
        "{alerts}"
    );
    assert!(optout(&d, &token, "+8613800138009").await.is_some());
}

/// The console with a carrier that sends approved templates only: free text is flagged as
/// having no gateway, the template shows the gateway that has it, a workbook the office saved
/// is uploaded from the file picker, and the campaign runs to its delivery reports with the
/// chart and the counts live.
#[tokio::test]
async fn the_console_sends_a_template_campaign_from_a_workbook() {
    let a = Standin::start(&[("2000001", 1)]).await;
    let site = site(&[("tc", &a.url)]);
    let d = start(&site, SECRET_KEY).await;
    a.book().push.callback = Some(format!("{}/api/v1/sms/dlr/tc?secret={DLR_SECRET}", d.http));
    let xlsx = site.dir.path().join("开放日名单.xlsx");
    let mut wb = rust_xlsxwriter::Workbook::new();
    let ws = wb.add_worksheet();
    for (r, row) in [
        ["手机号", "date"],
        ["13800138000", "5月15日"],
        ["13800138001", "5月15日"],
    ]
    .iter()
    .enumerate()
    {
        for (c, v) in row.iter().enumerate() {
            ws.write(r as u32, c as u16, *v).unwrap();
        }
    }
    wb.save(&xlsx).unwrap();
    let driver = crate::web::Driver::start().await;
    driver.resize(1280, 1600).await;
    driver.log_in(&d.http, &site.admin_token()).await;
    driver
        .eval("document.querySelector('[data-tab=campaigns]').click(); const e = document.getElementById('c-text'); e.value = '政务开放日欢迎您'; e.dispatchEvent(new Event('input'));")
        .await;
    driver
        .until(
            "free text flagged",
            "return document.getElementById('c-count').textContent",
            crate::web::contains("no gateway sends free text"),
        )
        .await;
    driver
        .eval("const s = document.getElementById('c-template'); s.value = 'open-day'; s.dispatchEvent(new Event('change')); document.getElementById('c-name').value = '开放日模板';")
        .await;
    driver
        .until(
            "the template's gateway",
            "return document.getElementById('c-count').textContent",
            crate::web::contains("goes through tc"),
        )
        .await;
    driver.choose_file("#c-file", &xlsx).await;
    driver
        .eval("document.getElementById('c-create').click();")
        .await;
    driver
        .until(
            "the estimate",
            "return document.getElementById('c-out').textContent",
            crate::web::contains("2 recipients"),
        )
        .await;
    driver
        .eval("document.querySelector('[data-act=start]').click();")
        .await;
    driver
        .until(
            "both delivered",
            "return document.querySelector('#campaign-detail .card[data-state=delivered] b')?.textContent",
            |v| v == "2",
        )
        .await;
    driver
        .until(
            "the per-minute chart",
            "return document.querySelectorAll('#campaign-chart rect.datum').length",
            |v| v.as_u64().is_some_and(|n| n >= 2),
        )
        .await;
    driver.screenshot("console-sms-template.png").await;
    let sent: Vec<String> = a.book().sent.iter().map(|s| s.0.clone()).collect();
    assert_eq!(sent.len(), 2, "{sent:?}");

    // An alert with an SMS part: the template, to the same workbook; its delivery is reported
    // with the alert.
    driver
        .eval("document.querySelector('[data-tab=alerts]').click(); document.getElementById('alert-zh').value = '暴雨预警演练';")
        .await;
    driver
        .until(
            "the alert's template list",
            "return [...document.getElementById('alert-template').options].map(o => o.value)",
            |v| {
                v.as_array()
                    .is_some_and(|a| a.iter().any(|o| o == "open-day"))
            },
        )
        .await;
    driver
        .eval("document.getElementById('alert-template').value = 'open-day';")
        .await;
    driver.choose_file("#alert-sms-file", &xlsx).await;
    driver
        .eval("document.getElementById('raise').click();")
        .await;
    driver
        .until(
            "the alert's SMS delivered",
            "return document.getElementById('alert-detail').textContent",
            crate::web::contains("2/2 delivered"),
        )
        .await;
    driver.screenshot("console-alert-sms.png").await;
    assert_eq!(a.book().sent.len(), 4);
}
