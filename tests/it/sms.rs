//! SMS campaigns end to end: a real Kannel (bearerbox + smsbox + fakesmsc), an in-process fake
//! carrier that fails on purpose, kill -9 in the middle of a campaign, and the controls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Daemon, Site, eventually, eventually_async, free_port, on_postgres};
use crate::kannel::{self, Kannel};
use crate::schema::documented;

pub(crate) const SECRET: &str = "dlr-secret-0123456789";

fn site() -> Site {
    Site::new(
        &format!("embedded = true\nlisten = \"127.0.0.1:{}\"", free_port()),
        "",
    )
}

async fn start(site: &Site) -> Daemon {
    Daemon::start_with_env(site, &[("TEST_DLR_SECRET", SECRET)]).await
}

/// How the fake carrier treats a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// 200 with an id; a delivered report shortly after.
    Ok,
    /// 429 the first time, then as `Ok`.
    TooManyFirst,
    /// 503 from gateway `alpha`, `Ok` from any other.
    AlphaDown,
    /// 400 with a reason.
    BadNumber,
    /// The first request gets no answer (the daemon times out); later ones as `Ok`.
    HangFirst,
    /// The delivered report is sent and stored before the submit is answered.
    EarlyReport,
    /// Delivered twice, then a stale "buffered": the state stays delivered.
    DupReports,
    /// Answers only once released (see `Fake::release`).
    Hold,
    /// 401 from gateway `alpha` (an account the provider refuses), `Ok` from any other.
    AlphaAccount,
    /// 502 from gateway `alpha` after 30 ms (a proxy whose upstream may have sent it), `Ok`
    /// from any other; `Fake::alpha_502` counts how many were open at once after the first.
    AlphaBadGateway,
}

/// Gateway `alpha`'s 502s: requests open now, whether one was answered, and the most open at
/// once among the requests that came after the first answer.
#[derive(Default)]
pub(crate) struct Alpha502 {
    open: AtomicUsize,
    answered: AtomicBool,
    most_after: AtomicUsize,
}

#[derive(Clone)]
pub(crate) struct Fake {
    url: String,
    /// (gateway, to, text) of every request, in arrival order.
    log: Arc<Mutex<Vec<(String, String, String)>>>,
    rules: Arc<Mutex<HashMap<String, Rule>>>,
    released: Arc<tokio::sync::Notify>,
    delay: Duration,
    client: reqwest::Client,
    alpha_502: Arc<Alpha502>,
}

async fn report(client: &reqwest::Client, url: &str, status: &str) -> u16 {
    match client
        .post(url)
        .json(&json!({"status": status}))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn carrier(
    State(f): State<Fake>,
    Path(gw): Path<String>,
    Json(body): Json<Value>,
) -> axum::response::Response {
    let to = body["to"].as_str().unwrap_or("").to_owned();
    let dlr = body["dlr"].as_str().unwrap_or("").to_owned();
    let id = body["id"].as_str().unwrap_or("").to_owned();
    let seen = {
        let mut log = f.log.lock().unwrap();
        log.push((
            gw.clone(),
            to.clone(),
            body["text"].as_str().unwrap_or("").to_owned(),
        ));
        log.iter().filter(|(_, t, _)| *t == to).count()
    };
    let rule = f
        .rules
        .lock()
        .unwrap()
        .get(&to)
        .copied()
        .unwrap_or(Rule::Ok);
    if !f.delay.is_zero() {
        tokio::time::sleep(f.delay).await;
    }
    match rule {
        Rule::TooManyFirst if seen == 1 => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("Retry-After", "0")],
                "slow down",
            )
                .into_response();
        }
        Rule::AlphaDown if gw == "alpha" => {
            return (StatusCode::SERVICE_UNAVAILABLE, "maintenance").into_response();
        }
        Rule::AlphaAccount if gw == "alpha" => {
            return (StatusCode::UNAUTHORIZED, "insufficient balance").into_response();
        }
        Rule::AlphaBadGateway if gw == "alpha" => {
            let a = &f.alpha_502;
            let open = a.open.fetch_add(1, Ordering::SeqCst) + 1;
            if a.answered.load(Ordering::SeqCst) {
                a.most_after.fetch_max(open, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
            a.open.fetch_sub(1, Ordering::SeqCst);
            a.answered.store(true, Ordering::SeqCst);
            return (StatusCode::BAD_GATEWAY, "upstream reset").into_response();
        }
        Rule::BadNumber => {
            return (StatusCode::BAD_REQUEST, "invalid destination address").into_response();
        }
        Rule::HangFirst if seen == 1 => {
            std::future::pending::<()>().await;
        }
        Rule::Hold => f.released.notified().await,
        Rule::EarlyReport => {
            assert_eq!(report(&f.client, &dlr, "delivered").await, 200);
        }
        _ => {}
    }
    let (client, dup) = (f.client.clone(), rule == Rule::DupReports);
    tokio::spawn(async move {
        report(&client, &dlr, "delivered").await;
        if dup {
            report(&client, &dlr, "delivered").await;
            report(&client, &dlr, "buffered").await;
        }
    });
    Json(json!({"message_id": format!("c-{id}")})).into_response()
}

impl Fake {
    pub(crate) async fn start(delay: Duration) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Fake {
            url: format!("http://{}", listener.local_addr().unwrap()),
            log: Default::default(),
            rules: Default::default(),
            released: Default::default(),
            alpha_502: Default::default(),
            delay,
            client: marquee::http_client()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        };
        let app = axum::Router::new()
            .route("/{gw}", axum::routing::post(carrier))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    pub(crate) fn rule(&self, to: &str, rule: Rule) {
        self.rules.lock().unwrap().insert(to.to_owned(), rule);
    }

    pub(crate) fn requests(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    pub(crate) fn requests_for(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for (_, to, _) in self.log.lock().unwrap().iter() {
            *m.entry(to.clone()).or_default() += 1;
        }
        m
    }

    pub(crate) fn release(&self) {
        self.released.notify_waiters();
    }

    /// A `[[sms.gateways]]` of kind `http` pointing at `/{name}`.
    pub(crate) fn gateway(&self, name: &str, rate: u32, in_flight: u32, timeout: &str) -> String {
        format!(
            r#"
[[sms.gateways]]
name = "{name}"
kind = "http"
url = "{}/{name}"
body = "json"
json = '{{"to": "{{to}}", "text": "{{text}}", "id": "{{id}}", "dlr": "{{dlr_url}}"}}'
id_pointer = "/message_id"
dlr_failed = ["undelivered"]
messages_per_second = {rate}
in_flight = {in_flight}
timeout = "{timeout}"
dlr_secret_env = "TEST_DLR_SECRET"
"#,
            self.url
        )
    }
}

pub(crate) fn number(i: usize) -> String {
    format!("+86138{i:08}")
}

pub(crate) async fn create(d: &Daemon, token: &str, body: Value) -> Value {
    let (status, v) = d
        .send(Method::POST, "/api/v1/campaigns", Some(token), Some(body))
        .await;
    assert_eq!(status, 201, "{v}");
    v
}

async fn post(d: &Daemon, token: &str, id: i64, action: &str, body: Option<Value>) -> (u16, Value) {
    d.send(
        Method::POST,
        &format!("/api/v1/campaigns/{id}/{action}"),
        Some(token),
        body,
    )
    .await
}

pub(crate) async fn campaign(d: &Daemon, token: &str, id: i64) -> Value {
    let (status, v) = d.get(&format!("/api/v1/campaigns/{id}"), Some(token)).await;
    assert_eq!(status, 200, "{v}");
    v
}

pub(crate) async fn messages(d: &Daemon, token: &str, id: i64) -> Vec<Value> {
    let (status, v) = d
        .get(&format!("/api/v1/campaigns/{id}/messages"), Some(token))
        .await;
    assert_eq!(status, 200, "{v}");
    v["messages"].as_array().unwrap().clone()
}

fn by_recipient(ms: &[Value]) -> HashMap<String, Value> {
    ms.iter()
        .map(|m| (m["recipient"].as_str().unwrap().to_owned(), m.clone()))
        .collect()
}

/// Starts campaign `id` and waits until the carrier holds `held`'s request.
pub(crate) async fn start_until_held(d: &Daemon, token: &str, id: i64, fake: &Fake, held: &str) {
    let (status, v) = d
        .send(
            Method::POST,
            &format!("/api/v1/campaigns/{id}/start"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    eventually_async("the held number to be submitted", || async {
        fake.requests_for().contains_key(held).then_some(())
    })
    .await;
}

/// Waits until `pred` holds for the campaign.
pub(crate) async fn until(
    d: &Daemon,
    token: &str,
    id: i64,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    eventually_async(what, || async {
        let c = campaign(d, token, id).await;
        pred(&c).then_some(c)
    })
    .await
}

pub(crate) fn count(c: &Value, state: &str) -> i64 {
    c["counts"][state].as_i64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kannel_delivers_ascii_chinese_and_long_messages_exactly_once_with_reports() {
    let kdir = tempfile::tempdir().unwrap();
    let k = Kannel::start(kdir.path()).await;
    let site = site();
    site.append_config(&format!(
        r#"
[sms]
sender = "12345"
[[sms.gateways]]
name = "kannel"
kind = "kannel"
url = "{}"
username = "{}"
password_env = "TEST_KANNEL_PASSWORD"
messages_per_second = 50
in_flight = 4
dlr_secret_env = "TEST_DLR_SECRET"
"#,
        k.sendsms,
        kannel::USER
    ));
    let d = Daemon::start_with_env(
        &site,
        &[
            ("TEST_DLR_SECRET", SECRET),
            ("TEST_KANNEL_PASSWORD", kannel::PASS),
        ],
    )
    .await;
    let token = site.admin_token();
    let texts = [
        "Open Day: City Hall, 9:00-17:00. Reply TD to stop".to_owned(),
        "政务开放日欢迎您！地址：市民中心，时间9:00至17:00。回复TD退订".to_owned(),
        // GSM-7 with extension characters (two septets each), 2 parts.
        format!("Tickets {{free}} [limited] ~ 5€ | {}", "x".repeat(150)),
        // UCS-2 long: 3 parts of 67.
        format!(
            "【市政府】{}",
            "请于开放日当天携带身份证参加活动，".repeat(10)
        ),
        // Outside the BMP (a surrogate pair).
        "欢迎 🎉 Welcome".to_owned(),
    ];
    // First, a number no SMSC of this Kannel takes: Kannel answers 403 "Not routable. Do not
    // try again." for that message alone (its other 403 is the account's, which would hold the
    // gateway out of rotation for 10 minutes and the rest of the list with it).
    let unroutable = format!("{}00000001", kannel::UNROUTABLE);
    let recipients: Vec<Value> =
        std::iter::once(json!({"number": unroutable, "vars": {"msg": "no route"}}))
            .chain(
                texts
                    .iter()
                    .enumerate()
                    .map(|(i, t)| json!({"number": number(i), "vars": {"msg": t}})),
            )
            .collect();
    let v = create(
        &d,
        &token,
        json!({"name": "kannel", "text": "{{msg}}", "recipients": recipients, "start": "now"}),
    )
    .await;
    let id = v["id"].as_i64().unwrap();
    assert_eq!(v["estimate"]["segments"], 1 + 1 + 1 + 2 + 3 + 1, "{v}");
    until(&d, &token, id, "every message delivered", |c| {
        count(c, "delivered") == texts.len() as i64
            && count(c, "rejected") == 1
            && c["status"] == "done"
    })
    .await;
    let refused: Vec<Value> = messages(&d, &token, id)
        .await
        .into_iter()
        .filter(|m| m["recipient"] == json!(unroutable))
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["state"], "rejected", "{refused:?}");
    assert!(
        refused[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("403 Not routable")),
        "{refused:?}"
    );
    let (status, gws) = d.get("/api/v1/sms/gateways", Some(&token)).await;
    assert_eq!(status, 200, "{gws}");
    assert_eq!(gws["gateways"][0]["out_of_rotation"], false, "{gws}");
    // The number Kannel cannot route was its own: the gateway takes whole windows.
    assert_eq!(gws["gateways"][0]["half_open"], false, "{gws}");
    // fakesmsc writes its log on its own schedule: the last lines may land after the reports.
    let got = crate::harness::eventually("fakesmsc to log every message", || {
        let got = k.received();
        (got.len() >= texts.len()).then_some(got)
    })
    .await;
    for (i, t) in texts.iter().enumerate() {
        let to = number(i);
        let mine: Vec<_> = got
            .iter()
            .filter(|r| r.to.trim_start_matches('+') == to.trim_start_matches('+'))
            .collect();
        assert_eq!(mine.len(), 1, "{to} got {mine:?}");
        assert_eq!(&mine[0].text, t, "{to} text differs");
        assert_eq!(mine[0].from, "12345");
    }
    assert_eq!(got.len(), texts.len(), "{got:?}");
    // The message list, a report pushed again (stored once, answered with the state) and a
    // reply, each as the document describes them.
    let (status, list) = d
        .get(&format!("/api/v1/campaigns/{id}/messages"), Some(&token))
        .await;
    documented("get", "/api/v1/campaigns/{id}/messages", status, &list);
    let first = list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["state"] == "delivered")
        .and_then(|m| m["id"].as_i64())
        .unwrap();
    let (status, v) = d
        .get(
            &format!("/api/v1/sms/dlr/kannel?secret={SECRET}&id={first}&type=1"),
            None,
        )
        .await;
    assert_eq!((status, &v["state"]), (200, &json!("delivered")), "{v}");
    documented("get", "/api/v1/sms/dlr/{gateway}", status, &v);
    let (status, v) = d
        .send(
            Method::POST,
            &format!("/api/v1/sms/mo/kannel?secret={SECRET}"),
            None,
            Some(json!({"from": "+8613800138000", "text": "thanks"})),
        )
        .await;
    assert_eq!((status, &v), (200, &json!({"ok": true})));
    documented("post", "/api/v1/sms/mo/{gateway}", status, &v);
    // Every report was stored; a wrong secret or an unknown id is refused.
    let (status, _) = d
        .get("/api/v1/sms/dlr/kannel?secret=nope&id=1&type=1", None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = d
        .get(
            &format!("/api/v1/sms/dlr/kannel?secret={SECRET}&id=999&type=1"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_carrier_failures_backoff_failover_unknown_and_reports() {
    let fake = Fake::start(Duration::ZERO).await;
    let site = site();
    site.append_config(&format!(
        "[sms]\nsender = \"12345\"\n{}{}",
        fake.gateway("alpha", 200, 4, "700ms"),
        fake.gateway("beta", 200, 4, "700ms")
    ));
    let d = start(&site).await;
    let token = site.admin_token();
    let rules = [
        Rule::Ok,
        Rule::TooManyFirst,
        Rule::AlphaDown,
        Rule::BadNumber,
        Rule::HangFirst,
        Rule::EarlyReport,
        Rule::DupReports,
        Rule::Ok,
    ];
    for (i, r) in rules.iter().enumerate() {
        fake.rule(&number(i), *r);
    }
    let recipients: Vec<Value> = (0..rules.len())
        .map(|i| json!({"number": number(i)}))
        .collect();
    let v = create(
        &d,
        &token,
        json!({"name": "faults", "text": "Open Day notice", "recipients": recipients,
               "gateways": ["alpha", "beta"], "start": "now"}),
    )
    .await;
    let id = v["id"].as_i64().unwrap();
    let c = until(&d, &token, id, "the campaign to finish, 6 delivered", |c| {
        c["status"] == "done" && count(c, "delivered") == 6
    })
    .await;
    let ms = by_recipient(&messages(&d, &token, id).await);
    let m = |i: usize| &ms[&number(i)];
    let seen = fake.requests_for();
    assert_eq!(m(0)["state"], "delivered", "{c}");
    assert_eq!(m(0)["carrier_id"], format!("c-{}", m(0)["id"]));
    // 429 then accepted on a retry.
    assert_eq!(
        (m(1)["state"].as_str(), m(1)["attempts"].as_i64()),
        (Some("delivered"), Some(2))
    );
    // Gateway alpha is down for this number: it went out through beta.
    assert_eq!(m(2)["state"], "delivered");
    assert_eq!(m(2)["gateway"], "beta");
    // 4xx: permanent, the carrier's reason kept, never retried.
    assert_eq!(m(3)["state"], "rejected");
    assert!(
        m(3)["reason"]
            .as_str()
            .unwrap()
            .contains("invalid destination address"),
        "{}",
        m(3)
    );
    assert_eq!(seen[&number(3)], 1);
    // No answer: unknown, and not resent.
    assert_eq!(m(4)["state"], "unknown", "{}", m(4));
    assert_eq!(seen[&number(4)], 1);
    // A report before the submit answer, and duplicate or stale reports: still delivered.
    assert_eq!(m(5)["state"], "delivered");
    assert_eq!(m(6)["state"], "delivered");
    for i in [0, 1, 2, 5, 6, 7] {
        assert_eq!(m(i)["state"], "delivered", "{}", m(i));
    }
    // Number 2 went out through beta last, after at most one refusal by alpha: whether alpha
    // saw it first depends on timing (once number 1's 429 makes alpha take one request at a
    // time, the campaign may send number 2 to beta at once). Each request is an attempt.
    // `a_message_claimed_ahead_is_not_sent_to_a_gateway_that_began_to_rest` covers the refusal
    // and the failover with one order left possible.
    let log = fake.log.lock().unwrap().clone();
    let for2: Vec<&str> = log
        .iter()
        .filter(|(_, to, _)| *to == number(2))
        .map(|(g, _, _)| g.as_str())
        .collect();
    assert!(
        matches!(for2.as_slice(), ["beta"] | ["alpha", "beta"]),
        "{for2:?}"
    );
    assert_eq!(
        m(2)["attempts"].as_u64(),
        Some(for2.len() as u64),
        "{}",
        m(2)
    );
    // Only the 429 number (twice) and the alpha-down number (checked above) were sent more
    // than once.
    for (i, r) in rules.iter().enumerate() {
        let want = match r {
            Rule::TooManyFirst => 2,
            Rule::AlphaDown => continue,
            _ => 1,
        };
        assert_eq!(seen[&number(i)], want, "requests for {}", number(i));
    }

    // An operator requeues the unknown message: it is sent again (the carrier now answers).
    let (status, v) = d
        .send(
            Method::POST,
            &format!("/api/v1/campaigns/{id}/requeue-unknown"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!((status, v["requeued"].as_i64()), (200, Some(1)), "{v}");
    until(&d, &token, id, "the requeued message delivered", |c| {
        count(c, "unknown") == 0 && count(c, "delivered") == 7 && c["status"] == "done"
    })
    .await;
    assert_eq!(fake.requests_for()[&number(4)], 2);
    // Reports with a bad secret are refused; reports are counted.
    let (status, _) = d
        .send(
            Method::POST,
            &format!("/api/v1/sms/dlr/alpha?secret=wrong&id={}", m(0)["id"]),
            None,
            Some(json!({"status": "delivered"})),
        )
        .await;
    assert_eq!(status, 403);
    assert!(d.metric(&token, "marquee_sms_reports_total").await >= 8.0);
    // The audit log has the campaign's creation and the requeue.
    let (_, audit) = d.get("/api/v1/audit", Some(&token)).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"campaign.create") && actions.contains(&"campaign.requeue_unknown"),
        "{actions:?}"
    );
}

/// A daemon whose one gateway `alpha` (200 msg/s, a window of 2) is the fake carrier.
async fn alpha_of_two() -> (Fake, Site, Daemon, String) {
    let fake = Fake::start(Duration::ZERO).await;
    let site = site();
    site.append_config(&format!(
        "[sms]\nsender = \"12345\"\n{}",
        fake.gateway("alpha", 200, 2, "5s"),
    ));
    let d = start(&site).await;
    let token = site.admin_token();
    (fake, site, d, token)
}

/// A gateway that failed takes one request at a time until one is answered (half-open): a 502
/// from a proxy makes its message `unknown` (it may have been sent, so it is never resent on its
/// own), and a gateway that keeps answering 502 costs one message per cool-down, not a window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_gateway_takes_one_request_at_a_time_and_a_502_is_unknown() {
    let (fake, _site, d, token) = alpha_of_two().await;
    let n = 12;
    for i in 0..n {
        fake.rule(&number(i), Rule::AlphaBadGateway);
    }
    let recipients: Vec<Value> = (0..n).map(|i| json!({"number": number(i)})).collect();
    let v = create(
        &d,
        &token,
        json!({"name": "502", "text": "Open Day", "recipients": recipients, "start": "now"}),
    )
    .await;
    let id = v["id"].as_i64().unwrap();
    // The first window (2), then requests after cool-downs.
    until(&d, &token, id, "four messages unknown", |c| {
        count(c, "unknown") >= 4
    })
    .await;
    assert_eq!(
        fake.alpha_502.most_after.load(Ordering::SeqCst),
        1,
        "after the first 502, one request at a time"
    );
    let ms = messages(&d, &token, id).await;
    let unknown: Vec<&Value> = ms.iter().filter(|m| m["state"] == "unknown").collect();
    assert!(
        unknown.iter().all(|m| m["reason"]
            .as_str()
            .is_some_and(|r| r.contains("502 upstream reset"))
            && m["attempts"] == 1),
        "{unknown:?}"
    );
    // Never resent on its own.
    assert!(fake.requests_for().values().all(|k| *k == 1));
    // What is shown is what is done: in rotation, one message at a time.
    let (_, gws) = d.get("/api/v1/sms/gateways", Some(&token)).await;
    let alpha = &gws["gateways"][0];
    assert_eq!(
        (
            alpha["name"].as_str(),
            &alpha["out_of_rotation"],
            &alpha["half_open"]
        ),
        (Some("alpha"), &json!(false), &json!(true)),
        "{gws}"
    );
    assert_eq!(
        d.metric(&token, "marquee_sms_gateway_half_open{gateway=\"alpha\"}")
            .await,
        1.0
    );
}

/// A campaign whose own messages fail (every one 502) makes the gateway take one request at a
/// time; the next one goes to another campaign of the gateway, whose answers end that, so
/// the other campaign is not held back behind the failing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_whose_messages_fail_does_not_hold_back_another_on_its_gateway() {
    let (fake, _site, d, token) = alpha_of_two().await;
    let failing: Vec<Value> = (0..40)
        .map(|i| {
            fake.rule(&number(i), Rule::AlphaBadGateway);
            json!({"number": number(i)})
        })
        .collect();
    let fine: Vec<Value> = (100..104).map(|i| json!({"number": number(i)})).collect();
    let a = create(
        &d,
        &token,
        json!({"name": "failing", "text": "Open Day", "recipients": failing, "start": "now"}),
    )
    .await;
    let b = create(
        &d,
        &token,
        json!({"name": "fine", "text": "Open Day", "recipients": fine, "start": "now"}),
    )
    .await;
    let (a, b) = (a["id"].as_i64().unwrap(), b["id"].as_i64().unwrap());
    until(&d, &token, b, "the other campaign delivered", |c| {
        c["status"] == "done" && count(c, "delivered") == 4
    })
    .await;
    let c = campaign(&d, &token, a).await;
    assert!(count(&c, "unknown") >= 1, "{c}");
}

/// Ahead of a full window that moves, a claim waits until what is claimed beyond one window's
/// worth is free (`claim_ahead - in_flight`), so claims are fewer and larger; every message
/// still goes once, and every answer is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_ahead_of_a_moving_window_wait_to_fill_and_send_each_message_once() {
    // Answers a few milliseconds apart: slower than a claim's commit, so claiming whatever is
    // free would take a message or two a claim.
    let fake = Fake::start(Duration::from_millis(2)).await;
    let site = site();
    // A window of 8 and 24 claimed ahead (the most: three windows): a claim waits for 8 free
    // permits (a window's worth), two windows stay in reserve.
    site.append_config(&format!(
        "[sms]\nsender = \"12345\"\n{}claim_ahead = 24\n",
        fake.gateway("fast", 100_000, 8, "5s"),
    ));
    let d = start(&site).await;
    let token = site.admin_token();
    let n = 400;
    let recipients: Vec<Value> = (0..n).map(|i| json!({"number": number(i)})).collect();
    let v = create(
        &d,
        &token,
        json!({"name": "fill", "text": "Open Day", "recipients": recipients, "start": "now"}),
    )
    .await;
    let id = v["id"].as_i64().unwrap();
    until(&d, &token, id, "every message delivered", |c| {
        c["status"] == "done" && count(c, "delivered") == n as i64
    })
    .await;
    let sent = fake.requests_for();
    assert_eq!(sent.len(), n, "every number once");
    assert!(sent.values().all(|k| *k == 1), "{sent:?}");
    let claims = d
        .metric(&token, "marquee_sms_claims_total{gateway=\"fast\"}")
        .await;
    let claimed = d
        .metric(
            &token,
            "marquee_sms_claimed_messages_total{gateway=\"fast\"}",
        )
        .await;
    assert_eq!(claimed, n as f64);
    // A claim waiting for 8 free (at most 5 ms after the last) takes 8 or more, but for the
    // first and the last: about 50 claims here. Claiming whatever is free as answers come in
    // took 95 to 111 (measured with the wait taken out).
    assert!(
        claims <= (n / 5) as f64,
        "{claims} claims for {n} messages: claims ahead did not wait to fill"
    );
}

/// A request claimed ahead of the window waits for a slot; if its gateway began to rest
/// meanwhile (the request before it failed), it is not sent there: it goes back to the queue
/// with its attempt given back, and the next gateway takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_claimed_ahead_is_not_sent_to_a_gateway_that_began_to_rest() {
    let fake = Fake::start(Duration::from_millis(100)).await;
    let site = site();
    site.append_config(&format!(
        "[sms]\nsender = \"12345\"\n{}claim_ahead = 1\n{}",
        fake.gateway("alpha", 200, 1, "5s"),
        fake.gateway("beta", 200, 1, "5s")
    ));
    let d = start(&site).await;
    let token = site.admin_token();
    // Alpha answers 503 for both: whichever leaves first fails, and alpha rests.
    for i in 0..2 {
        fake.rule(&number(i), Rule::AlphaDown);
    }
    let v = create(
        &d,
        &token,
        json!({"name": "ahead", "text": "Open Day", "gateways": ["alpha", "beta"],
               "recipients": [{"number": number(0)}, {"number": number(1)}], "start": "now"}),
    )
    .await;
    let id = v["id"].as_i64().unwrap();
    let c = until(&d, &token, id, "both delivered", |c| {
        c["status"] == "done" && count(c, "delivered") == 2
    })
    .await;
    let log = fake.log.lock().unwrap().clone();
    let to_alpha: Vec<&str> = log
        .iter()
        .filter(|(g, _, _)| g == "alpha")
        .map(|(_, to, _)| to.as_str())
        .collect();
    assert_eq!(
        to_alpha.len(),
        1,
        "only the first went to alpha: {log:?} {c}"
    );
    let ms = by_recipient(&messages(&d, &token, id).await);
    for i in 0..2 {
        let m = &ms[&number(i)];
        assert_eq!(m["gateway"], "beta", "{m}");
        // The one alpha refused used two attempts; the one held back, one.
        let want = if to_alpha[0] == number(i) { 2 } else { 1 };
        assert_eq!(m["attempts"], want, "{m}");
    }
}

/// An alert's SMS goes out before the bulk campaign already sending through the same gateway:
/// its campaign claims first, the bulk one claims nothing ahead of the window meanwhile, and
/// its requests take the window's next slots. Behind it at most what was claimed before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alerts_sms_goes_before_the_bulk_campaign_on_its_gateway() {
    let fake = Fake::start(Duration::ZERO).await;
    let site = site();
    site.append_config(&format!(
        "[sms]\nsender = \"12345\"\n{}",
        fake.gateway("alpha", 50, 2, "5s")
    ));
    let d = start(&site).await;
    let token = site.admin_token();
    let bulk: Vec<Value> = (0..300).map(|i| json!({"number": number(i)})).collect();
    let v = create(
        &d,
        &token,
        json!({"name": "open day", "text": "Open Day", "recipients": bulk, "start": "now"}),
    )
    .await;
    let bulk_id = v["id"].as_i64().unwrap();
    eventually_async("the bulk campaign sending", || async {
        (fake.requests() >= 10).then_some(())
    })
    .await;
    let urgent = [number(1000), number(1001)];
    let (status, v) = d
        .send(
            Method::POST,
            "/api/v1/alerts",
            Some(&token),
            Some(
                json!({"text": {"zh": "台风红色预警，请留在室内"}, "expires_in": "10m",
                        "sms": {"recipients": [{"number": urgent[0]}, {"number": urgent[1]}]}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    // The alert's campaign is running from here on.
    let at_alert = fake.requests();
    let log = eventually_async("the alert's SMS sent", || async {
        let log = fake.log.lock().unwrap().clone();
        let sent = urgent.iter().all(|u| log.iter().any(|(_, to, _)| to == u));
        sent.then_some(log)
    })
    .await;
    // Before the alert's two, at most: the window (2) and the one claimed ahead, as they stood
    // when its campaign started, and the requests of the round that ran meanwhile (one at this
    // pace). Without the alert first, it came after all 300.
    for u in &urgent {
        let at = log.iter().position(|(_, to, _)| to == u).unwrap();
        assert!(
            at < at_alert + 2 + 1 + 1 + 2,
            "{u} was request {at}; {at_alert} had gone when the alert was raised"
        );
    }
    let c = campaign(&d, &token, bulk_id).await;
    assert!(
        count(&c, "queued") > 100,
        "the bulk campaign was still sending: {c}"
    );
}

/// A gateway whose window is stuck (every slot waits for an answer) takes no further claim
/// another gateway of the campaign could send at once: the next messages go through the next
/// gateway at once, not after the stuck one's timeout. (What it had claimed ahead before the
/// stall, at most `claim_ahead` requests, waits for it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_window_sends_the_next_messages_to_the_next_gateway() {
    let fake = Fake::start(Duration::ZERO).await;
    let site = site();
    site.append_config(&format!(
        "[sms]\nsender = \"12345\"\n{}claim_ahead = 1\n{}",
        fake.gateway("alpha", 50, 1, "20s"),
        fake.gateway("beta", 50, 1, "20s")
    ));
    let d = start(&site).await;
    let token = site.admin_token();
    let body = |name: &str, numbers: std::ops::Range<usize>, gateways: &[&str]| {
        let recipients: Vec<Value> = numbers.map(|i| json!({"number": number(i)})).collect();
        json!({"name": name, "text": "Open Day", "gateways": gateways,
               "recipients": recipients, "start": "now"})
    };
    // Beta has answered; alpha has not (the rule's timing, four usual answer times and
    // 20 ms, is the unit test `a_window_moves_while_answers_come_within_four_usual_answer_times`).
    let first = create(&d, &token, body("first", 10..11, &["beta"])).await["id"]
        .as_i64()
        .unwrap();
    until(&d, &token, first, "one through beta", |c| {
        c["status"] == "done"
    })
    .await;
    // A campaign's one number is held by the carrier: alpha's one slot waits.
    fake.rule(&number(0), Rule::Hold);
    let held = create(&d, &token, body("held", 0..1, &["alpha", "beta"])).await["id"]
        .as_i64()
        .unwrap();
    until(&d, &token, held, "the first one at alpha", |c| {
        count(c, "submitting") == 1
    })
    .await;
    // Alpha still has room to claim one ahead, but its window does not move: the next
    // campaign goes through beta at once, well within alpha's 20 s timeout.
    let id = create(&d, &token, body("next", 1..6, &["alpha", "beta"])).await["id"]
        .as_i64()
        .unwrap();
    until(
        &d,
        &token,
        id,
        "numbers 1-5 delivered while 0 is held",
        |c| count(c, "delivered") == 5,
    )
    .await;
    let ms = by_recipient(&messages(&d, &token, id).await);
    for i in 1..6 {
        assert_eq!(ms[&number(i)]["gateway"], "beta", "{}", ms[&number(i)]);
    }
    // Still held: the five did not wait for alpha's timeout.
    let c = campaign(&d, &token, held).await;
    assert_eq!(count(&c, "submitting"), 1, "{c}");
    fake.release();
    until(&d, &token, held, "the held one answered", |c| {
        c["status"] == "done"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_campaign_loses_nothing_and_sends_nothing_twice() {
    let fake = Fake::start(Duration::from_millis(5)).await;
    let site = site();
    site.append_config(&format!(
        "[sms]\nsender = \"12345\"\n{}",
        fake.gateway("alpha", 400, 4, "5s")
    ));
    let total = 300;
    // One number is held by the carrier: the daemon is killed while it is in flight.
    let held = number(120);
    fake.rule(&held, Rule::Hold);
    let mut d = start(&site).await;
    let token = site.admin_token();
    let csv: String = std::iter::once("number".to_owned())
        .chain((0..total).map(number))
        .collect::<Vec<_>>()
        .join("\n");
    let v = create(
        &d,
        &token,
        json!({"name": "crash", "text": "Open Day", "recipients_csv": csv}),
    )
    .await;
    let id = v["id"].as_i64().unwrap();
    // 1: killed before anything was sent (a draft is stored, nothing submitted).
    d.signal("KILL");
    drop(d);
    d = start(&site).await;
    // 2: killed while submits are in flight, one of them held by the carrier.
    start_until_held(&d, &token, id, &fake, &held).await;
    d.signal("KILL");
    drop(d);
    fake.release();
    fake.rule(&held, Rule::Ok);
    d = start(&site).await;
    // The dispatcher's recovery runs beside the start-up: wait for its line.
    d.wait_log("the recovery of submitting messages", |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("now `unknown`"))
    })
    .await;
    // 3: killed again mid-campaign, after more submits.
    let before = fake.requests();
    eventually_async("more submits after the restart", || async {
        (fake.requests() >= before + 60).then_some(())
    })
    .await;
    d.signal("KILL");
    drop(d);
    d = start(&site).await;
    let c = until(&d, &token, id, "the campaign to finish", |c| {
        c["status"] == "done"
    })
    .await;
    // 4: killed after the end: nothing more is sent on restart.
    let after_done = fake.requests();
    d.signal("KILL");
    drop(d);
    let d = start(&site).await;
    let c2 = campaign(&d, &token, id).await;
    // Late delivery reports may still turn `sent` into `delivered`; nothing else moves.
    let settled = |c: &Value| {
        (
            count(c, "sent") + count(c, "delivered"),
            count(c, "unknown"),
            count(c, "queued") + count(c, "submitting"),
        )
    };
    assert_eq!(settled(&c2), settled(&c), "{c} then {c2}");

    let ms = messages(&d, &token, id).await;
    assert_eq!(ms.len(), total, "no recipient lost");
    let seen = fake.requests_for();
    for m in &ms {
        let to = m["recipient"].as_str().unwrap();
        let n = seen.get(to).copied().unwrap_or(0);
        match m["state"].as_str().unwrap() {
            // Sent exactly once.
            "sent" | "delivered" => assert_eq!(n, 1, "{m}"),
            // Caught mid-submit by a kill: at most once, and never resent.
            "unknown" => assert!(n <= 1, "{m} sent {n} times"),
            other => panic!("{to} ended {other}: {m}"),
        }
    }
    assert_eq!(seen[&held], 1);
    let held_row = ms.iter().find(|m| m["recipient"] == held.as_str()).unwrap();
    assert_eq!(held_row["state"], "unknown", "{held_row}");
    // In doubt after each kill: the claimed requests not yet sent or answered (at most the
    // in-flight window of 4 plus the 2 claimed ahead of it at 400 msg/s), plus answers received but not yet
    // committed (group commit: a few milliseconds of traffic at 400/s).
    let unknown = count(&c, "unknown");
    assert!((1..=30).contains(&unknown), "{c}");
    let never_sent = ms
        .iter()
        .filter(|m| m["state"] == "unknown" && !seen.contains_key(m["recipient"].as_str().unwrap()))
        .count();
    assert!(
        never_sent <= 2 * (4 + 2),
        "{never_sent} claimed but never sent: {c}"
    );
    assert_eq!(
        fake.requests(),
        after_done,
        "a finished campaign sends nothing on restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_cancel_optout_window_and_missed_start() {
    let fake = Fake::start(Duration::ZERO).await;
    let site = site();
    site.append_config(&format!(
        "[sms]\nsender = \"12345\"\nmissed_start_margin = \"1s\"\n{}",
        fake.gateway("alpha", 100, 2, "5s")
    ));
    let mut d = start(&site).await;
    let token = site.admin_token();
    let n = 200;
    let recipients: Vec<Value> = (0..n).map(|i| json!({"number": number(i)})).collect();
    let v = create(
        &d,
        &token,
        json!({"name": "load", "text": "Open Day", "recipients": recipients, "start": "now"}),
    )
    .await;
    let id = v["id"].as_i64().unwrap();
    eventually_async("20 submits", || async {
        (fake.requests() >= 20).then_some(())
    })
    .await;
    let (status, c) = post(&d, &token, id, "pause", None).await;
    assert_eq!((status, c["status"].as_str()), (200, Some("paused")), "{c}");
    let at_pause = fake.requests();
    let c = until(&d, &token, id, "in-flight submits to finish", |c| {
        count(c, "submitting") == 0
    })
    .await;
    // At most what was claimed before it: the in-flight window (2) and the one claimed ahead
    // (what its pace lets out in 4 ms, rounded up).
    assert!(
        fake.requests() <= at_pause + 3,
        "{} > {at_pause} + 3",
        fake.requests()
    );
    let queued = count(&c, "queued");
    assert!(queued > 0, "{c}");
    // Pause is idempotent-safe: pausing again is a conflict, not a resend.
    let (status, _) = post(&d, &token, id, "pause", None).await;
    assert_eq!(status, 409);
    // An opt-out added mid-campaign is honoured at send time.
    let last = number(n - 1);
    let (status, _) = d
        .send(
            Method::POST,
            "/api/v1/optouts",
            Some(&token),
            Some(json!({"numbers": [last.trim_start_matches("+86")], "reason": "TD"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = post(&d, &token, id, "resume", None).await;
    assert_eq!(status, 200);
    let c = until(&d, &token, id, "the campaign to finish", |c| {
        c["status"] == "done"
    })
    .await;
    assert_eq!(
        count(&c, "delivered") + count(&c, "sent"),
        n as i64 - 1,
        "{c}"
    );
    let seen = fake.requests_for();
    assert!(
        !seen.contains_key(&last),
        "the opted-out number was sent to"
    );
    assert!(
        seen.values().all(|&k| k == 1),
        "a number got two messages after pause/resume"
    );
    let ms = by_recipient(&messages(&d, &token, id).await);
    assert_eq!(ms[&last]["state"], "cancelled");
    assert!(ms[&last]["reason"].as_str().unwrap().contains("opted out"));

    // Cancel under load: what was not sent is cancelled, nothing more goes out.
    let base = fake.requests();
    let recipients: Vec<Value> = (n..2 * n).map(|i| json!({"number": number(i)})).collect();
    let v = create(
        &d,
        &token,
        json!({"name": "cancel me", "text": "Open Day", "recipients": recipients, "start": "now"}),
    )
    .await;
    let id2 = v["id"].as_i64().unwrap();
    eventually_async("10 submits", || async {
        (fake.requests() >= base + 10).then_some(())
    })
    .await;
    let (status, c) = post(&d, &token, id2, "cancel", None).await;
    assert_eq!(
        (status, c["status"].as_str()),
        (200, Some("cancelled")),
        "{c}"
    );
    let c = until(&d, &token, id2, "in-flight submits to finish", |c| {
        count(c, "submitting") == 0
    })
    .await;
    assert_eq!(count(&c, "queued"), 0);
    assert!(count(&c, "cancelled") > 0, "{c}");
    assert_eq!(
        (fake.requests() - base) as i64,
        count(&c, "sent") + count(&c, "delivered"),
        "{c}"
    );

    // A sending window that excludes now holds every message.
    let now = chrono::Utc::now();
    let from = (now + chrono::Duration::hours(2))
        .format("%H:%M")
        .to_string();
    let until_t = (now + chrono::Duration::hours(3))
        .format("%H:%M")
        .to_string();
    let base = fake.requests();
    let v = create(
        &d,
        &token,
        json!({"name": "window", "text": "Open Day", "recipients": [{"number": "13900139000"}],
               "start": "now", "send_window": {"from": from, "until": until_t, "timezone": "UTC"}}),
    )
    .await;
    let id3 = v["id"].as_i64().unwrap();
    let m = eventually_async("the message to wait for the window", || async {
        let ms = messages(&d, &token, id3).await;
        ms[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("sending window"))
            .then(|| ms[0].clone())
    })
    .await;
    assert_eq!(m["state"], "queued");
    assert!(
        m["not_before"]
            .as_str()
            .unwrap()
            .contains(&format!("T{from}")),
        "{m}"
    );
    assert_eq!(fake.requests(), base);

    // A scheduled start missed while the daemon was down needs confirmation.
    let start_at = chrono::Utc::now() + chrono::Duration::seconds(1);
    let v = create(
        &d,
        &token,
        json!({"name": "late", "text": "Open Day", "recipients": [{"number": "13700137000"}],
               "start": start_at.to_rfc3339()}),
    )
    .await;
    assert_eq!(v["status"], "scheduled");
    let id4 = v["id"].as_i64().unwrap();
    d.stop().await;
    // The clock passes the start plus the margin (1 s) while nothing runs.
    eventually_async("the scheduled start to pass", || async {
        (chrono::Utc::now() > start_at + chrono::Duration::milliseconds(1500)).then_some(())
    })
    .await;
    d = start(&site).await;
    until(&d, &token, id4, "the campaign to be marked missed", |c| {
        c["status"] == "missed"
    })
    .await;
    let (status, e) = post(&d, &token, id4, "start", None).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (409, Some("missed_start")),
        "{e}"
    );
    let (status, _) = post(
        &d,
        &token,
        id4,
        "start",
        Some(json!({"confirm_late": true})),
    )
    .await;
    assert_eq!(status, 200);
    until(&d, &token, id4, "the confirmed campaign to finish", |c| {
        c["status"] == "done"
    })
    .await;
    assert_eq!(fake.requests_for()["+8613700137000"], 1);
}

const OPERATOR: &str = "sms-operator-0123456789";
const APPROVER: &str = "sms-approver-0123456789";
const DUTY: &str = "sms-duty-emergency-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_person_rule_for_campaigns_and_one_alert_to_screens_and_phones() {
    let fake = Fake::start(Duration::ZERO).await;
    let site = site();
    site.append_config(&format!(
        "[approval]\ncampaigns_above = 2\n\
         [[auth.tokens]]\nname = \"operator\"\nrole = \"operator\"\ntoken_env = \"T_OP\"\n\
         [[auth.tokens]]\nname = \"supervisor\"\nrole = \"approver\"\ntoken_env = \"T_AP\"\n\
         [[auth.tokens]]\nname = \"duty\"\nrole = \"operator\"\nemergency = true\ntoken_env = \"T_DUTY\"\n\
         [sms]\nsender = \"12345\"\n{}",
        fake.gateway("alpha", 20, 2, "5s")
    ));
    let d = Daemon::start_with_env(
        &site,
        &[
            ("TEST_DLR_SECRET", SECRET),
            ("T_OP", OPERATOR),
            ("T_AP", APPROVER),
            ("T_DUTY", DUTY),
        ],
    )
    .await;
    let three: Vec<Value> = (0..3).map(|i| json!({"number": number(i)})).collect();
    let body = json!({"name": "big", "text": "Open Day", "recipients": three, "start": "now"});

    // Above the limit: pending until a second person approves; nothing is sent meanwhile.
    let (status, v) = d
        .send(
            Method::POST,
            "/api/v1/campaigns",
            Some(OPERATOR),
            Some(body.clone()),
        )
        .await;
    assert_eq!(
        (status, v["status"].as_str()),
        (202, Some("pending")),
        "{v}"
    );
    let id = v["id"].as_i64().unwrap();
    let (status, _) = post(&d, APPROVER, id, "start", None).await;
    assert_eq!(status, 403, "an approver cannot start campaigns");
    let (status, _) = d
        .send(
            Method::POST,
            &format!("/api/v1/campaigns/{id}/approve"),
            Some(OPERATOR),
            None,
        )
        .await;
    assert_eq!(
        status, 403,
        "the creator cannot approve (not even with the operator role)"
    );
    let (status, _) = d
        .send(
            Method::POST,
            &format!("/api/v1/campaigns/{id}/approve"),
            Some(SECRET),
            None,
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(fake.requests(), 0);
    let (status, c) = d
        .send(
            Method::POST,
            &format!("/api/v1/campaigns/{id}/approve"),
            Some(APPROVER),
            None,
        )
        .await;
    assert_eq!(
        (status, c["approved_by"].as_str()),
        (200, Some("supervisor")),
        "{c}"
    );
    until(&d, OPERATOR, id, "the approved campaign to finish", |c| {
        c["status"] == "done"
    })
    .await;
    assert_eq!(fake.requests(), 3);

    // An emergency token skips the rule, and the audit log says so.
    let mut b = body.clone();
    b["recipients"] = json!(
        (3..6)
            .map(|i| json!({"number": number(i)}))
            .collect::<Vec<_>>()
    );
    let (status, v) = d
        .send(Method::POST, "/api/v1/campaigns", Some(DUTY), Some(b))
        .await;
    assert_eq!(
        (status, v["status"].as_str()),
        (201, Some("running")),
        "{v}"
    );
    let (_, audit) = d.get("/api/v1/audit", Some(OPERATOR)).await;
    let actions: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap()))
        .collect();
    assert!(
        actions.contains(&("duty", "campaign.create.emergency_skip")),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("supervisor", "campaign.approve")),
        "{actions:?}"
    );

    // One alert, screens and phones: the alert view joins acks and SMS delivery.
    let (status, v) = d
        .send(
            Method::POST,
            "/api/v1/alerts",
            Some(OPERATOR),
            Some(json!({"text": {"zh": "台风红色预警，请留在室内", "en": "Typhoon: stay indoors"},
                        "expires_in": "10m",
                        "sms": {"recipients": [{"number": number(10)}, {"number": number(11), "lang": "en"}]}})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let alert = v["id"].as_str().unwrap().to_owned();
    assert_eq!(v["sms"]["estimate"]["recipients"], 2, "{v}");
    // Started with the alert (it may have finished already), not pending.
    assert!(
        ["running", "done"].contains(&v["sms"]["status"].as_str().unwrap_or("")),
        "{v}"
    );
    let report = eventually_async("the alert's SMS delivered", || async {
        let (_, r) = d
            .get(&format!("/api/v1/alerts/{alert}"), Some(OPERATOR))
            .await;
        (r["sms"]["delivered"] == 2).then_some(r)
    })
    .await;
    assert!(
        report["acks"].is_array() && report["not_acknowledged"].is_array(),
        "{report}"
    );
    let texts: HashMap<String, String> = fake
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|(_, to, text)| (to.clone(), text.clone()))
        .collect();
    assert_eq!(texts[&number(10)], "台风红色预警，请留在室内");
    assert_eq!(texts[&number(11)], "Typhoon: stay indoors");

    // A bad SMS part fails the whole request before anything reaches a screen.
    let (status, e) = d
        .send(
            Method::POST,
            "/api/v1/alerts",
            Some(OPERATOR),
            Some(json!({"text": {"zh": "测试"}, "sms": {"recipients": [{"number": "12"}]}})),
        )
        .await;
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (400, Some("sms.recipients")),
        "{e}"
    );

    // Clearing an alert stops its SMS: what was not sent is cancelled (20 msg/s, 40 numbers).
    let many: Vec<Value> = (20..60).map(|i| json!({"number": number(i)})).collect();
    let (status, v) = d
        .send(
            Method::POST,
            "/api/v1/alerts",
            Some(DUTY),
            Some(json!({"text": {"zh": "疏散演练"}, "sms": {"recipients": many}})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let alert = v["id"].as_str().unwrap().to_owned();
    let sms_id = v["sms"]["id"].as_i64().unwrap();
    let (status, _) = d
        .send(
            Method::DELETE,
            &format!("/api/v1/alerts/{alert}"),
            Some(DUTY),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let c = until(&d, OPERATOR, sms_id, "in-flight submits to finish", |c| {
        c["status"] == "cancelled" && count(c, "submitting") == 0
    })
    .await;
    assert!(count(&c, "cancelled") > 0, "{c}");
    let sent = (20..60)
        .filter(|i| fake.requests_for().contains_key(&number(*i)))
        .count();
    assert_eq!(
        sent as i64,
        count(&c, "sent") + count(&c, "delivered"),
        "{c}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recurring_campaign_fires_on_its_cron_until_cancelled() {
    let fake = Fake::start(Duration::ZERO).await;
    let site = site();
    site.append_config(&format!(
        "[sms]\nsender = \"12345\"\n{}",
        fake.gateway("alpha", 100, 2, "5s")
    ));
    let d = start(&site).await;
    let token = site.admin_token();
    let (status, e) = d
        .send(
            Method::POST,
            "/api/v1/campaigns",
            Some(&token),
            Some(json!({"name": "bad", "text": "x", "recipients": [{"number": "13800138000"}], "repeat": "61 * * * *"})),
        )
        .await;
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (400, Some("repeat")),
        "{e}"
    );
    // A mistake in the request's shape names its field, and what was expected.
    for (body, field, says) in [
        (
            json!({"name": "bad", "text": "x", "recipients": [{"number": "13800138000"}], "daily_cap": "1"}),
            "daily_cap",
            "expected u32",
        ),
        (
            json!({"name": "bad", "text": "x", "recipients": ["13800138000"]}),
            "recipients[0]",
            r#"{"number": "#,
        ),
    ] {
        let (status, e) = d
            .send(Method::POST, "/api/v1/campaigns", Some(&token), Some(body))
            .await;
        assert_eq!(
            (status, e["error"]["field"].as_str()),
            (400, Some(field)),
            "{e}"
        );
        assert!(
            e["error"]["message"].as_str().unwrap().contains(says),
            "{e}"
        );
    }
    // Every second (a leading seconds field), to two numbers.
    let v = create(
        &d,
        &token,
        json!({"name": "weekly notice", "text": "Open Day every week", "repeat": "* * * * * *",
               "recipients": [{"number": number(0)}, {"number": number(1)}]}),
    )
    .await;
    assert_eq!(v["status"], "recurring", "{v}");
    let id = v["id"].as_i64().unwrap();
    let runs = eventually_async("two runs finished", || async {
        let (_, list) = d.get("/api/v1/campaigns", Some(&token)).await;
        let runs: Vec<Value> = list["campaigns"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["spec"]["recurring"] == id && c["status"] == "done")
            .cloned()
            .collect();
        (runs.len() >= 2).then_some(runs)
    })
    .await;
    for r in &runs {
        assert!(
            r["name"].as_str().unwrap().starts_with("weekly notice ("),
            "{r}"
        );
        assert_eq!(r["progress"]["total"], 2);
    }
    let (status, c) = post(&d, &token, id, "cancel", None).await;
    assert_eq!(
        (status, c["status"].as_str()),
        (200, Some("cancelled")),
        "{c}"
    );
    // Every finished run sent each number once. A run that fired just before the cancel may
    // still have a request on its way: wait until no run is under way before comparing.
    eventually_async("no run under way", || async {
        let (_, list) = d.get("/api/v1/campaigns", Some(&token)).await;
        list["campaigns"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["spec"]["recurring"] == id)
            .all(|c| c["status"] != "running" && c["status"] != "pending")
            .then_some(())
    })
    .await;
    let seen = fake.requests_for();
    let finished = runs.len();
    assert!(
        seen[&number(0)] >= finished && seen[&number(1)] >= finished,
        "{seen:?}"
    );
    assert_eq!(seen[&number(0)], seen[&number(1)]);
}

/// The SMS claims' write-ahead log cannot be synced (here: another file was put at its name,
/// which the sync thread tells by its inode; a failing disk does the same through
/// `fdatasync`): the claim waiting for it is not sent but queued again, no more are claimed,
/// and the log, `GET /readyz` and the gauge `marquee_sms_claims_stopped` say so, while the
/// daemon stays ready. Nothing is sent twice. (SQLite only: PostgreSQL syncs its own log.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claims_log_that_cannot_be_synced_stops_the_claims_and_says_so() {
    if on_postgres() {
        return;
    }
    let fake = Fake::start(Duration::ZERO).await;
    let site = site();
    // Slow enough that the campaign is still sending when the log is replaced.
    site.append_config(&format!(
        "[sms]\nsender = \"12345\"\n{}",
        fake.gateway("alpha", 20, 1, "5s")
    ));
    let mut d = start(&site).await;
    let token = site.admin_token();
    assert_eq!(d.metric(&token, "marquee_sms_claims_stopped").await, 0.0);
    let n = 40;
    let recipients: Vec<Value> = (0..n).map(|i| json!({"number": number(i)})).collect();
    let v = create(
        &d,
        &token,
        json!({"name": "sync", "text": "Open Day", "recipients": recipients, "start": "now"}),
    )
    .await;
    let id = v["id"].as_i64().unwrap();
    eventually("a few requests", || (fake.requests() >= 2).then_some(())).await;
    // Another file at the log's name (renamed over it: the daemon keeps writing the old one,
    // which the sync thread no longer reaches by name).
    let data = site.dir.path().join("data");
    std::fs::write(data.join("other"), b"not the log").unwrap();
    std::fs::rename(data.join("other"), data.join("marquee.db-wal")).unwrap();
    d.wait_log("the failed sync", |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("cannot sync the SMS claims to disk"))
    })
    .await;
    // A later round's claim is refused, and says why.
    d.wait_log("a claim refused", |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("SMS dispatch round failed"))
            && v["error"]
                .as_str()
                .is_some_and(|e| e.contains("until the daemon is restarted"))
    })
    .await;
    let (status, ready) = d.get("/readyz", None).await;
    assert_eq!((status, &ready["ready"]), (200, &json!(true)), "{ready}");
    assert!(
        ready["sms_claims"]
            .as_str()
            .unwrap()
            .contains("until the daemon is restarted"),
        "{ready}"
    );
    assert_eq!(d.metric(&token, "marquee_sms_claims_stopped").await, 1.0);
    // What was claimed and not synced went back to the queue; what left was answered once.
    let c = until(&d, &token, id, "nothing being submitted", |c| {
        count(c, "submitting") == 0
    })
    .await;
    let sent = fake.requests_for();
    assert!(sent.values().all(|k| *k == 1), "{sent:?}");
    let left = count(&c, "queued");
    assert_eq!(
        left + count(&c, "sent") + count(&c, "delivered"),
        n as i64,
        "{c}"
    );
    assert_eq!(left, (n - sent.len()) as i64, "{c} {sent:?}");
    assert!(left >= (n / 2) as i64, "the claims did not stop: {c}");
}
