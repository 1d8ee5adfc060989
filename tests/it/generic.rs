//! The generic `http` gateway given the power of the native kinds by configuration: a batch
//! request (`{to_json}` of `batch_item_json`), per-number results read by JSON pointer and
//! classed by code, and reports pushed as arrays without our id, matched by the carrier's id
//! and acknowledged as configured. Against a loopback stand-in shaped like Infobip's SMS API:
//! it demands its `App` API key, answers per destination, and pushes `{"results": [...]}`.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::harness::*;
use crate::tencent::{create_campaign, messages, until};

const KEY: &str = "standin-api-key-0123456789";

#[derive(Default)]
struct Book {
    requests: Vec<Value>,
    unauthorised: usize,
    push: Pushes,
}

impl HasPushes for Book {
    fn pushes(&mut self) -> &mut Pushes {
        &mut self.push
    }
}

async fn advanced(
    State(book): State<Arc<Mutex<Book>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("App {KEY}")) {
        book.lock().unwrap().unauthorised += 1;
        return (
            StatusCode::UNAUTHORIZED,
            json!({"requestError": {"serviceException": {"messageId": "UNAUTHORIZED", "text": "Invalid login details"}}}).to_string(),
        );
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "{}".into());
    };
    let mut b = book.lock().unwrap();
    b.requests.push(req.clone());
    let bulk = format!("bulk-{}", b.requests.len());
    let mut out = Vec::new();
    for m in req["messages"].as_array().into_iter().flatten() {
        for d in m["destinations"].as_array().into_iter().flatten() {
            let to = d["to"].as_str().unwrap_or("").to_owned();
            let message_id = format!("{bulk}-{to}");
            let status = if to.ends_with("9") {
                json!({"groupId": 5, "groupName": "REJECTED", "id": 51, "name": "REJECTED_DESTINATION"})
            } else {
                b.push.unpushed.push(json!({"bulkId": bulk, "messageId": message_id, "to": to, "smsCount": 1,
                    "status": {"groupId": 3, "groupName": "DELIVERED", "id": 5, "name": "DELIVERED_TO_HANDSET"}}));
                json!({"groupId": 1, "groupName": "PENDING", "id": 26, "name": "PENDING_ACCEPTED"})
            };
            out.push(json!({"to": to, "status": status, "messageId": message_id}));
        }
    }
    (
        StatusCode::OK,
        json!({"bulkId": bulk, "messages": out}).to_string(),
    )
}

#[tokio::test]
async fn a_generic_gateway_batches_reads_results_per_number_and_takes_array_reports() {
    let book = Arc::new(Mutex::new(Book::default()));
    let app = axum::Router::new()
        .route("/sms/2/text/advanced", axum::routing::post(advanced))
        .with_state(book.clone());
    let url = serve_standin(app).await;
    push_reports(
        book.clone(),
        |results| json!({"results": results}),
        |_| true,
    );
    let site = Site::new(
        &format!("embedded = true\nlisten = \"127.0.0.1:{}\"", free_port()),
        "",
    );
    site.append_config(&format!(
        r#"[sms]
sender = "12345"
[[sms.gateways]]
name = "ib"
kind = "http"
url = "{url}sms/2/text/advanced"
body = "json"
json = '{{"messages": [{{"from": "{{from}}", "destinations": "{{to_json}}", "text": "{{text}}"}}]}}'
batch_item_json = '{{"to": "{{to_digits}}"}}'
batch_max = 100
headers = {{ Authorization = "App {{password}}" }}
password_env = "IT_IB_KEY"
results_pointer = "/messages"
result_phone_field = "/to"
result_code_field = "/status/name"
result_id_field = "/messageId"
codes = {{ "PENDING_*" = "accepted", "REJECTED_NOT_ENOUGH_CREDITS" = "account", "REJECTED_*" = "permanent" }}
dlr_items_pointer = "/results"
dlr_carrier_id_field = "/messageId"
dlr_status_field = "/status/groupName"
dlr_delivered = ["DELIVERED"]
dlr_failed = ["UNDELIVERABLE", "REJECTED", "EXPIRED"]
dlr_secret_env = "IT_IB_DLR"
messages_per_second = 1000
"#
    ));
    let d = Daemon::start_with_env(
        &site,
        &[
            ("IT_IB_KEY", KEY),
            ("IT_IB_DLR", "ib-dlr-secret-0123456789"),
        ],
    )
    .await;
    let token = site.admin_token();
    book.lock().unwrap().push.callback = Some(format!(
        "{}/api/v1/sms/dlr/ib?secret=ib-dlr-secret-0123456789",
        d.http
    ));
    let id = create_campaign(
        &d,
        &token,
        json!({"name": "open day", "text": "Open Day: City Hall, 9:00-17:00",
            "recipients_csv": "number\n13800138000\n13800138001\n13800138009\n", "start": "now"}),
    )
    .await;
    let c = until(&d, &token, id, "two delivered, one rejected", |c| {
        c["counts"]["delivered"] == 2 && c["counts"]["rejected"] == 1
    })
    .await;
    assert_eq!(c["status"], "done", "{c}");
    // One request carried the three destinations.
    let reqs = book.lock().unwrap().requests.clone();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        reqs[0]["messages"][0]["destinations"],
        json!([{"to": "8613800138000"}, {"to": "8613800138001"}, {"to": "8613800138009"}])
    );
    let m = messages(&d, &token, id).await;
    let rejected = m.iter().find(|m| m["state"] == "rejected").unwrap();
    assert!(
        rejected["reason"]
            .as_str()
            .unwrap()
            .contains("REJECTED_DESTINATION"),
        "{rejected}"
    );
    let delivered = m.iter().find(|m| m["state"] == "delivered").unwrap();
    assert_eq!(
        delivered["carrier_id"], "bulk-1-8613800138000",
        "{delivered}"
    );
    assert_eq!(book.lock().unwrap().unauthorised, 0);
}
