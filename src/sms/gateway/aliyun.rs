//! Aliyun SMS (Dysmsapi 2017-05-25): the protocol without I/O (the signed `SendSms` request, its answer
//! classed by `Code`, delivery reports (SmsReport) and replies (SmsUp) as Aliyun pushes them,
//! and the acknowledgement it expects. Facts and sources: `CARRIERS.md` §2.2.
//!
//! - Signing: ACS3-HMAC-SHA256 (Alibaba Cloud "V3 request structure and signature"; tested
//!   against the document's fixed-parameter example). Parameters travel in the query.
//! - `SendSms` takes up to 1,000 numbers with the same `TemplateParam` and answers one `Code`
//!   and one `BizId` for the whole request (business errors come with HTTP 200), so each
//!   message's carrier id is the biz id with its number: reports name both.
//! - Reports and replies: JSON arrays pushed to the account's one URL, acknowledged with
//!   `{"code":0,"msg":"接收成功"}`; Aliyun pushes again otherwise, and says pushes are not
//!   idempotent.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};

use super::tencent::Class;
use crate::domain::delivery::{Report, Submit};

/// The API version these requests speak.
pub const VERSION: &str = "2017-05-25";
/// The acknowledgement Aliyun expects for pushed reports and replies.
pub const ACK: &str = r#"{"code":0,"msg":"接收成功"}"#;
/// Numbers one `SendSms` takes.
pub const MAX_NUMBERS: usize = 1000;

/// RFC 3986 unreserved characters stay; everything else is percent-encoded (space as `%20`).
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn enc(s: &str) -> String {
    utf8_percent_encode(s, ENCODE).to_string()
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The sorted, encoded query string a request is signed (and sent) with.
pub fn canonical_query(params: &BTreeMap<String, String>) -> String {
    let mut pairs: Vec<(String, String)> = params.iter().map(|(k, v)| (enc(k), enc(v))).collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The `Authorization` header for a request with `query`, lower-case `headers` (`host` and
/// every `x-acs-*`, `x-acs-content-sha256` among them) and that body hash.
pub fn authorization(
    key_id: &str,
    secret: &str,
    method: &str,
    path: &str,
    query: &BTreeMap<String, String>,
    headers: &BTreeMap<String, String>,
    body_sha256: &str,
) -> String {
    let canonical_headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.trim()))
        .collect();
    let signed = headers.keys().cloned().collect::<Vec<_>>().join(";");
    let canonical = format!(
        "{method}\n{path}\n{}\n{canonical_headers}\n{signed}\n{body_sha256}",
        canonical_query(query)
    );
    let to_sign = format!("ACS3-HMAC-SHA256\n{}", sha256_hex(canonical.as_bytes()));
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    m.update(to_sign.as_bytes());
    let signature = hex::encode(m.finalize().into_bytes());
    format!("ACS3-HMAC-SHA256 Credential={key_id},SignedHeaders={signed},Signature={signature}")
}

/// A signed request for `action` with `params` in the query: the query string and the
/// headers (besides `Host`, which must be `host`). `nonce` is unique per request.
pub fn signed(
    key_id: &str,
    secret: &str,
    host: &str,
    action: &str,
    params: &[(&str, String)],
    now: DateTime<Utc>,
    nonce: &str,
) -> (String, Vec<(String, String)>) {
    let query: BTreeMap<String, String> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let empty = sha256_hex(b"");
    let headers: BTreeMap<String, String> = [
        ("host", host.to_owned()),
        ("x-acs-action", action.to_owned()),
        ("x-acs-content-sha256", empty.clone()),
        ("x-acs-date", now.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
        ("x-acs-signature-nonce", nonce.to_owned()),
        ("x-acs-version", VERSION.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let auth = authorization(key_id, secret, "POST", "/", &query, &headers, &empty);
    let mut out: Vec<(String, String)> = headers.into_iter().filter(|(k, _)| k != "host").collect();
    out.push(("Authorization".into(), auth));
    (canonical_query(&query), out)
}

/// What `QuerySendDetails` knows of one message: (`OutId`, `SendStatus` code, meaning).
pub fn read_details(body: &str) -> Result<Vec<(String, String, Option<Report>)>, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let code = v["Code"].as_str().unwrap_or("");
    if code != "OK" {
        return Err(format!("{code}: {}", v["Message"].as_str().unwrap_or("")));
    }
    Ok(v["SmsSendDetailDTOs"]["SmsSendDetailDTO"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let status = d["SendStatus"].as_i64().unwrap_or(0);
            let err = d["ErrCode"].as_str().unwrap_or("").to_owned();
            (
                d["OutId"].as_str().unwrap_or("").to_owned(),
                if err.is_empty() {
                    format!("SendStatus {status}")
                } else {
                    err
                },
                match status {
                    3 => Some(Report::Delivered),
                    2 => Some(Report::Undelivered),
                    _ => None,
                },
            )
        })
        .collect())
}

/// The number as Aliyun writes it in reports: mainland numbers without `+86`.
pub fn report_number(e164: &str) -> String {
    let digits = e164.trim_start_matches('+');
    match digits.strip_prefix("86") {
        Some(rest) if rest.len() == 11 => rest.to_owned(),
        _ => digits.to_owned(),
    }
}

/// A message's carrier id: the request's biz id and the number as reports give it.
pub fn carrier_id(biz_id: &str, e164_or_report: &str) -> String {
    format!("{biz_id}/{}", report_number(e164_or_report))
}

/// Time until the next Beijing midnight.
fn until_beijing_midnight(now: DateTime<Utc>) -> Duration {
    use chrono::TimeZone;
    let tz = chrono_tz::Asia::Shanghai;
    let day = now.with_timezone(&tz).date_naive();
    let next = day
        .succ_opt()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .and_then(|t| tz.from_local_datetime(&t).single())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now + chrono::Duration::hours(24));
    (next - now).to_std().unwrap_or(Duration::from_secs(60))
}

/// Classes an answer `Code` (with its `Message`, which says which limit hit) per Aliyun's
/// error-code list (CARRIERS.md §2.2, §7.4).
pub fn classify(code: &str, message: &str, now: DateTime<Utc>) -> Class {
    let class = |submit| Class { submit, wait: None };
    match code {
        "OK" => class(Submit::Accepted),
        // Per number and signature: minute, hour or day limits ("触发天级流控Permits:10").
        "isv.BUSINESS_LIMIT_CONTROL" => Class {
            submit: Submit::Defer,
            wait: Some(
                if message.contains("天级") || message.to_lowercase().contains("day") {
                    until_beijing_midnight(now)
                } else if message.contains("分钟级") || message.to_lowercase().contains("minute")
                {
                    Duration::from_secs(60)
                } else {
                    Duration::from_secs(3600)
                },
            ),
        },
        // About the number: a batch is tried one number at a time to find which.
        "isv.MOBILE_NUMBER_ILLEGAL" => class(Submit::Permanent),
        "isv.SMS_SIGNATURE_ILLEGAL"
        | "isv.SIGN_STATE_ILLEGAL"
        | "isv.SMS_SIGNATURE_SCENE_ILLEGAL"
        | "isv.SMS_TEMPLATE_ILLEGAL"
        | "isv.TEMPLATE_MISSING_PARAMETERS"
        | "isv.TEMPLATE_PARAMS_ILLEGAL"
        | "isv.PARAM_LENGTH_LIMIT"
        | "isv.SMS_CONTENT_ILLEGAL"
        | "isv.INVALID_JSON_PARAM"
        | "isv.INVALID_PARAMETERS"
        | "isv.EXTEND_CODE_ERROR"
        | "isv.BLACK_KEY_CONTROL_LIMIT"
        | "isv.MOBILE_COUNT_OVER_LIMIT" => class(Submit::Config),
        "isv.DENY_IP_RANGE"
        | "isp.RAM_PERMISSION_DENY"
        | "isv.OUT_OF_SERVICE"
        | "isv.AMOUNT_NOT_ENOUGH"
        | "isv.DAY_LIMIT_CONTROL"
        | "isv.MONTH_LIMIT_CONTROL"
        | "isv.PRODUCT_UN_SUBSCRIPT"
        | "isv.PRODUCT_UNSUBSCRIBE"
        | "isv.ACCOUNT_NOT_EXISTS"
        | "isv.ACCOUNT_ABNORMAL"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "InvalidAccessKeyId.NotFound"
        | "InvalidAccessKeyId.Inactive"
        | "Forbidden.RAM"
        | "SignatureNonceUsed"
        | "InvalidTimeStamp.Expired" => class(Submit::Account),
        // Refused before sending: later.
        c if c.starts_with("Throttling") || c.starts_with("ServiceUnavailable") => {
            class(Submit::Transient)
        }
        // An error behind the API: whether it was sent is not known.
        c if c.starts_with("isp.SYSTEM_ERROR") || c.starts_with("InternalError") => {
            class(Submit::Lost)
        }
        c if c.starts_with("isv.ACCOUNT") => class(Submit::Account),
        // A code this driver does not know, for a whole request: the campaign waits for an
        // operator rather than every number being rejected for good.
        _ => class(Submit::Config),
    }
}

/// Whether a code refusing a whole request is about one of its numbers (then each number is
/// tried alone to find which: nothing of a refused request was sent).
pub fn about_a_number(code: &str) -> bool {
    matches!(
        code,
        "isv.MOBILE_NUMBER_ILLEGAL" | "isv.BUSINESS_LIMIT_CONTROL"
    )
}

/// A `SendSms` answer: (`Code`, `Message`, `BizId`).
pub fn read_answer(body: &str) -> Option<(String, String, Option<String>)> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    Some((s("Code")?, s("Message").unwrap_or_default(), s("BizId")))
}

/// One element of a pushed SmsReport array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportItem {
    /// The message's carrier id ([`carrier_id`]).
    pub carrier_id: String,
    /// `DELIVERED`, or the carrier's error code.
    pub code: String,
    /// What it means.
    pub report: Report,
    /// The element as received.
    pub raw: String,
}

/// A pushed SmsReport body (a JSON array; an object alone is one element).
pub fn read_reports(body: &[u8]) -> Result<Vec<ReportItem>, String> {
    let items = elements(body)?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let s = |k: &str| e.get(k).and_then(|x| x.as_str()).map(str::to_owned);
            let biz = s("biz_id").ok_or(format!("report [{i}]: no biz_id"))?;
            let phone = s("phone_number").ok_or(format!("report [{i}]: no phone_number"))?;
            let success = match e.get("success") {
                Some(serde_json::Value::Bool(b)) => *b,
                Some(serde_json::Value::String(s)) => s == "true",
                _ => return Err(format!("report [{i}]: no success")),
            };
            let code = s("err_code")
                .unwrap_or_else(|| if success { "DELIVERED" } else { "FAILED" }.to_owned());
            Ok(ReportItem {
                carrier_id: carrier_id(&biz, &phone),
                report: if success {
                    Report::Delivered
                } else {
                    Report::Undelivered
                },
                code,
                raw: e.to_string(),
            })
        })
        .collect()
}

/// Pushed SmsUp replies: (number as given, text) per element.
pub fn read_replies(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    elements(body)?
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let s = |k: &str| e.get(k).and_then(|x| x.as_str()).map(str::to_owned);
            Ok((
                s("phone_number").ok_or(format!("reply [{i}]: no phone_number"))?,
                s("content").ok_or(format!("reply [{i}]: no content"))?,
            ))
        })
        .collect()
}

fn elements(body: &[u8]) -> Result<Vec<serde_json::Value>, String> {
    match serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))? {
        serde_json::Value::Array(a) => Ok(a),
        o @ serde_json::Value::Object(_) => Ok(vec![o]),
        _ => Err("not a JSON array".into()),
    }
}

// The driver: requests and answers over HTTP.

use crate::sms::config::AliyunConfig;
use crate::sms::gateway::{
    Answer, Driver, Found, Link, Outgoing, campaign_tag, exchange, one_code_for_all, signed_host,
};

/// A signed Aliyun request for `action` with `params` in the query.
fn aliyun_request(
    link: &Link,
    a: &AliyunConfig,
    action: &str,
    params: &[(&str, String)],
    now: chrono::DateTime<chrono::Utc>,
) -> reqwest::RequestBuilder {
    let mut nonce = [0u8; 16];
    let _ = getrandom::fill(&mut nonce);
    let (query, headers) = signed(
        &a.access_key_id,
        &a.access_key_secret,
        &signed_host(&a.url),
        action,
        params,
        now,
        &hex::encode(nonce),
    );
    let mut url = a.url.clone();
    url.set_query(Some(&query));
    let mut req = link.client.post(url);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    req
}

impl Driver for AliyunConfig {
    async fn send(&self, link: &Link, ms: &[Outgoing<'_>]) -> Vec<Answer> {
        self.request(link, ms).await
    }

    /// `QuerySendDetails`, matched by the campaign tag (`OutId`); only a final status counts.
    async fn find(
        &self,
        link: &Link,
        to: &str,
        campaign: i64,
        since: DateTime<Utc>,
    ) -> Result<Option<Found>, String> {
        let (a, now, tag) = (self, Utc::now(), campaign_tag(campaign));
        let text = {
            let date = since
                .with_timezone(&chrono_tz::Asia::Shanghai)
                .format("%Y%m%d")
                .to_string();
            let req = aliyun_request(
                link,
                a,
                "QuerySendDetails",
                &[
                    ("PhoneNumber", report_number(to)),
                    ("SendDate", date),
                    ("PageSize", "50".into()),
                    ("CurrentPage", "1".into()),
                ],
                now,
            );
            exchange(req)
                .await
                .map_err(|a| a.reason.unwrap_or_default())?
                .2
        };
        // Only a final status resolves it: the details carry no biz id, so a message resolved
        // while waiting could not be matched by its later report.
        Ok(read_details(&text)?
            .into_iter()
            .find(|(out_id, _, report)| *out_id == tag && report.is_some())
            .map(|(_, code, report)| Found {
                carrier_id: None,
                code,
                report,
            }))
    }
}

impl AliyunConfig {
    /// One `SendSms` for `ms` (same template and parameters): one code for all.
    async fn request(&self, link: &Link, ms: &[Outgoing<'_>]) -> Vec<Answer> {
        let a = self;
        let n = ms.len();
        let Some(first) = ms.first() else {
            return Vec::new();
        };
        let Some(template) = first.template_id else {
            return link.needs_template(n);
        };
        let param: serde_json::Map<String, serde_json::Value> = first
            .param_names
            .iter()
            .zip(first.params)
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let now = chrono::Utc::now();
        let numbers: Vec<&str> = ms.iter().map(|m| m.to).collect();
        let req = aliyun_request(
            link,
            a,
            "SendSms",
            &[
                ("PhoneNumbers", numbers.join(",")),
                ("SignName", a.sign_name.clone()),
                ("TemplateCode", template.to_owned()),
                (
                    "TemplateParam",
                    serde_json::Value::Object(param).to_string(),
                ),
                ("OutId", campaign_tag(first.campaign)),
            ],
            now,
        );
        let (status, after, text) = match exchange(req).await {
            Ok(r) => r,
            Err(x) => return vec![x; n],
        };
        // Business errors come as 200 with a Code; signature and throttling errors as 4xx or
        // 5xx with a Code too.
        let read = read_answer(&text);
        // A batch refused for one of its numbers (nothing of it was sent): each number alone,
        // so only that one is deferred or rejected.
        if n > 1
            && read
                .as_ref()
                .is_some_and(|(code, _, _)| about_a_number(code))
        {
            let mut out = Vec::with_capacity(n);
            for m in ms {
                out.extend(Box::pin(self.request(link, std::slice::from_ref(m))).await);
            }
            return out;
        }
        let read = read.map(|(code, message, biz)| {
            let k = classify(&code, &message, now);
            (k, format!("{code}: {message}"), biz)
        });
        one_code_for_all(ms, status, after, &text, read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acs3_matches_the_published_example() {
        // Alibaba Cloud "V3 request structure and signature", fixed-parameter example.
        let query: BTreeMap<String, String> = [
            (
                "ImageId",
                "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
            ),
            ("RegionId", "cn-shanghai"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let headers: BTreeMap<String, String> = [
            ("host", "ecs.cn-shanghai.aliyuncs.com"),
            ("x-acs-action", "RunInstances"),
            ("x-acs-content-sha256", empty),
            ("x-acs-date", "2023-10-26T10:22:32Z"),
            ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
            ("x-acs-version", "2014-05-26"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(
            authorization(
                "YourAccessKeyId",
                "YourAccessKeySecret",
                "POST",
                "/",
                &query,
                &headers,
                empty
            ),
            "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders=host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
    }

    #[test]
    fn queries_are_encoded_as_rfc_3986() {
        let q: BTreeMap<String, String> = [
            ("b".to_owned(), "a b*~".to_owned()),
            ("A".to_owned(), "大连".to_owned()),
        ]
        .into_iter()
        .collect();
        assert_eq!(canonical_query(&q), "A=%E5%A4%A7%E8%BF%9E&b=a%20b%2A~");
    }

    #[test]
    fn codes_reports_and_replies() {
        let now: DateTime<Utc> = "2026-05-15T06:00:00Z".parse().unwrap();
        assert_eq!(classify("OK", "OK", now).submit, Submit::Accepted);
        let d = classify("isv.BUSINESS_LIMIT_CONTROL", "触发天级流控Permits:10", now);
        assert_eq!(
            (d.submit, d.wait),
            (Submit::Defer, Some(Duration::from_secs(10 * 3600)))
        );
        assert_eq!(
            classify("isv.SMS_TEMPLATE_ILLEGAL", "", now).submit,
            Submit::Config
        );
        assert_eq!(
            classify("isv.AMOUNT_NOT_ENOUGH", "", now).submit,
            Submit::Account
        );
        assert_eq!(
            classify("SignatureDoesNotMatch", "", now).submit,
            Submit::Account
        );
        assert_eq!(classify("isp.SYSTEM_ERROR", "", now).submit, Submit::Lost);
        assert_eq!(
            classify("Throttling.User", "", now).submit,
            Submit::Transient
        );
        assert_eq!(
            classify("isv.SOMETHING_NEW", "", now).submit,
            Submit::Config
        );
        assert!(about_a_number("isv.BUSINESS_LIMIT_CONTROL"));
        assert_eq!(
            classify("isv.MOBILE_NUMBER_ILLEGAL", "", now).submit,
            Submit::Permanent
        );
        // SmsReport, as documented (an array, several per push).
        let r = read_reports(
            r#"[{"phone_number":"13800138000","send_time":"2026-05-15 10:00:00","report_time":"2026-05-15 10:00:05","success":true,"err_code":"DELIVERED","err_msg":"用户接收成功","sms_size":"1","biz_id":"932702304080415357^0","out_id":"1234"},
                {"phone_number":"13800138001","success":false,"err_code":"MK:0001","biz_id":"932702304080415357^0"}]"#
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            r[0].carrier_id,
            carrier_id("932702304080415357^0", "+8613800138000")
        );
        assert_eq!(
            (r[0].report, r[1].report),
            (Report::Delivered, Report::Undelivered)
        );
        assert_eq!(r[1].code, "MK:0001");
        let up = read_replies(r#"[{"phone_number":"13800138000","send_time":"2026-05-15 10:01:00","content":"TD","sign_name":"大连政务公开","dest_code":"1234","sequence_id":1234}]"#.as_bytes()).unwrap();
        assert_eq!(up, [("13800138000".to_owned(), "TD".to_owned())]);
    }
}
