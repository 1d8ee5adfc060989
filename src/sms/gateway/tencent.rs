//! Tencent Cloud SMS, API 3.0 (`SendSms`, version 2021-01-11): the protocol without I/O (the
//! signed request, the answer read per number, delivery reports and replies as Tencent pushes them,
//! and the acknowledgement it expects. Facts and sources: `CARRIERS.md` §2.3.
//!
//! - Signing: TC3-HMAC-SHA256 over the exact body bytes (Tencent "Signature v3"; tested
//!   against the document's own published example).
//! - The answer is HTTP 200 for everything the API processed: a request-level
//!   `Response.Error.Code`, or one `Response.SendStatusSet[]` entry per number with its own
//!   `Code` ("Ok" or an error). Each code is classed ([`class`]).
//! - Reports: a JSON array pushed to the account's callback URL, matched by `sid` (the
//!   `SerialNo` of the answer); replies: one JSON object. Both are acknowledged with
//!   `{"result":0,"errmsg":"OK"}`; anything else makes Tencent push again.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::delivery::{Report, Submit};

/// The API version these requests speak.
pub const VERSION: &str = "2021-01-11";
/// The acknowledgement Tencent expects for a pushed report or reply.
pub const ACK: &str = r#"{"result":0,"errmsg":"OK"}"#;
/// The signed headers (the minimal set the algorithm requires).
const SIGNED_HEADERS: &str = "content-type;host";
const CONTENT_TYPE: &str = "application/json; charset=utf-8";

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The `Authorization` header of a POST of `body` to `host` for `service` at `timestamp`
/// (Unix seconds), signed with TC3-HMAC-SHA256.
pub fn authorization(
    secret_id: &str,
    secret_key: &str,
    service: &str,
    host: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let canonical = format!(
        "POST\n/\n\ncontent-type:{CONTENT_TYPE}\nhost:{host}\n\n{SIGNED_HEADERS}\n{}",
        sha256_hex(body)
    );
    let date = Utc
        .timestamp_opt(timestamp, 0)
        .single()
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string();
    let scope = format!("{date}/{service}/tc3_request");
    let to_sign = format!(
        "TC3-HMAC-SHA256\n{timestamp}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let k_date = hmac(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let k_service = hmac(&k_date, service.as_bytes());
    let k_signing = hmac(&k_service, b"tc3_request");
    let signature = hex::encode(hmac(&k_signing, to_sign.as_bytes()));
    format!(
        "TC3-HMAC-SHA256 Credential={secret_id}/{scope}, SignedHeaders={SIGNED_HEADERS}, Signature={signature}"
    )
}

/// The `SendSms` body: up to 200 numbers with the same template parameters.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SendSms<'a> {
    /// E.164 numbers.
    pub phone_number_set: Vec<&'a str>,
    /// The application.
    pub sms_sdk_app_id: &'a str,
    /// The approved template.
    pub template_id: &'a str,
    /// The approved signature text.
    pub sign_name: &'a str,
    /// Ordered values for `{1}`, `{2}`, ….
    pub template_param_set: &'a [String],
    /// Echoed in the answer: our first message id, for the operator reading both sides.
    pub session_context: String,
}

/// The headers of a signed request for `action` (`SendSms`, `PullSmsSendStatusByPhoneNumber`)
/// of `body`, at `timestamp`.
pub fn headers(
    action: &'static str,
    secret_id: &str,
    secret_key: &str,
    host: &str,
    region: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    vec![
        (
            "Authorization",
            authorization(secret_id, secret_key, "sms", host, timestamp, body),
        ),
        ("Content-Type", CONTENT_TYPE.to_owned()),
        ("X-TC-Action", action.to_owned()),
        ("X-TC-Version", VERSION.to_owned()),
        ("X-TC-Region", region.to_owned()),
        ("X-TC-Timestamp", timestamp.to_string()),
    ]
}

/// What one code means for the message, and (for a deferral) how long to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    /// The outcome.
    pub submit: Submit,
    /// For `Defer` (and some transient codes): not before this much later.
    pub wait: Option<Duration>,
}

fn class(submit: Submit) -> Class {
    Class { submit, wait: None }
}

/// Time until the next `hh:00` in Beijing time (Tencent's days and marketing hours are
/// Beijing's, whatever the office's zone).
fn until_beijing(now: DateTime<Utc>, hour: u32, next_day: bool) -> Duration {
    let tz = chrono_tz::Asia::Shanghai;
    let local = now.with_timezone(&tz);
    let mut day = local.date_naive();
    if next_day || local.time() >= chrono::NaiveTime::from_hms_opt(hour, 0, 0).unwrap_or_default() {
        day = day.succ_opt().unwrap_or(day);
    }
    let at = day
        .and_hms_opt(hour, 0, 0)
        .and_then(|t| tz.from_local_datetime(&t).single())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now + chrono::Duration::hours(24));
    (at - now).to_std().unwrap_or(Duration::from_secs(60))
}

/// Classes a Tencent error code (`Response.Error.Code` or a number's `Code`), per the
/// provider's error-code list (CARRIERS.md §2.3, §7.4).
pub fn classify(code: &str, now: DateTime<Utc>) -> Class {
    let defer = |d: Duration| Class {
        submit: Submit::Defer,
        wait: Some(d),
    };
    match code {
        "Ok" => class(Submit::Accepted),
        // Per-number limits: the limit is the provider's (and the carrier's), not the
        // gateway's fault; another gateway would only dodge it.
        "LimitExceeded.PhoneNumberThirtySecondLimit" => defer(Duration::from_secs(30)),
        "LimitExceeded.PhoneNumberOneHourLimit" => defer(Duration::from_secs(3600)),
        "LimitExceeded.PhoneNumberDailyLimit"
        | "LimitExceeded.PhoneNumberSameContentDailyLimit"
        | "LimitExceeded.DeliveryFrequencyLimit" => defer(until_beijing(now, 0, false)),
        "FailedOperation.MarketingSendTimeConstraint" => defer(until_beijing(now, 8, false)),
        "FailedOperation.PhoneNumberInBlacklist" => class(Submit::OptedOut),
        "InvalidParameterValue.IncorrectPhoneNumber"
        | "FailedOperation.PhoneNumberParseFail"
        | "UnsupportedOperation.ContainDomesticAndInternationalPhoneNumber" => {
            class(Submit::Permanent)
        }
        // The campaign as configured: template, signature, parameters, content.
        c if c.starts_with("FailedOperation.SignatureIncorrectOrUnapproved")
            || c.starts_with("FailedOperation.TemplateIncorrectOrUnapproved")
            || c.starts_with("FailedOperation.TemplateParamSetNotMatchApprovedTemplate")
            || c.starts_with("FailedOperation.ContainSensitiveWord")
            || c.starts_with("FailedOperation.MissingSignature")
            || c.starts_with("FailedOperation.MissingTemplate")
            || c.starts_with("InvalidParameterValue.ContentLengthLimit")
            || c.starts_with("InvalidParameterValue.TemplateParameterFormatError")
            || c.starts_with("InvalidParameterValue.TemplateParameterLengthLimit")
            || c.starts_with("InvalidParameterValue.ProhibitedUseUrlInTemplateParameter")
            || c.starts_with("UnauthorizedOperation.SmsSdkAppIdVerifyFail")
            || c.starts_with("UnsupportedOperation.ChineseMainlandTemplateToGlobalPhone")
            || c.starts_with("UnsupportedOperation.GlobalTemplateToChineseMainlandPhone") =>
        {
            class(Submit::Config)
        }
        // The account: balance, quota, credentials, permissions.
        c if c.starts_with("AuthFailure")
            || c.starts_with("FailedOperation.InsufficientBalanceInSmsPackage")
            || c.starts_with("LimitExceeded.AppDailyLimit")
            || c.starts_with("LimitExceeded.AppGlobalDailyLimit")
            || c.starts_with("LimitExceeded.AppMainlandChinaDailyLimit")
            || c.starts_with("UnauthorizedOperation")
            || c.starts_with("FailedOperation.FailResolvePacket")
            || c.starts_with("ResourceNotFound") =>
        {
            class(Submit::Account)
        }
        // Refused before sending: a clock off by minutes or a request the API cannot read.
        "InternalError.RequestTimeException" | "InternalError.SigFieldMissing" => {
            class(Submit::Account)
        }
        "InternalError.RestApiInterfaceNotExist" => class(Submit::Config),
        // Whether it was sent is not known (a timeout, a send that failed half-way, an
        // unknown error behind the API): never resent on its own.
        c if c.starts_with("InternalError") => class(Submit::Lost),
        // Refused before anything was sent: later.
        c if c.starts_with("RequestLimitExceeded") => class(Submit::Transient),
        _ => class(Submit::Permanent),
    }
}

/// Classes a request-level `Response.Error.Code`: as [`classify`], except that what is not
/// known to be about one number (anything unlisted, a batch refused as a whole) pauses the
/// campaign rather than rejecting every number of the request for good.
pub fn classify_request(code: &str, now: DateTime<Utc>) -> Class {
    let c = classify(code, now);
    match c.submit {
        Submit::Permanent | Submit::OptedOut | Submit::Defer => Class {
            submit: Submit::Config,
            wait: None,
        },
        _ => c,
    }
}

/// One number's result in an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberResult {
    /// The number as Tencent wrote it back (E.164).
    pub phone: String,
    /// `SerialNo`: how this message's reports will name it.
    pub serial: Option<String>,
    /// The code ("Ok" or an error).
    pub code: String,
    /// Tencent's message.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AnswerBody {
    response: AnswerResponse,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AnswerResponse {
    #[serde(default)]
    error: Option<ErrorBody>,
    #[serde(default)]
    send_status_set: Vec<StatusBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StatusBody {
    #[serde(default)]
    serial_no: String,
    phone_number: String,
    code: String,
    #[serde(default)]
    message: String,
}

/// A `SendSms` answer: per-number results, or the request-level error (code, message).
pub fn read_answer(body: &str) -> Result<Vec<NumberResult>, (String, String)> {
    let a: AnswerBody = serde_json::from_str(body).map_err(|e| {
        (
            "Marquee.UnreadableAnswer".to_owned(),
            format!("not a SendSms answer: {e}"),
        )
    })?;
    if let Some(e) = a.response.error {
        return Err((e.code, e.message));
    }
    Ok(a.response
        .send_status_set
        .into_iter()
        .map(|s| NumberResult {
            phone: s.phone_number,
            serial: Some(s.serial_no).filter(|s| !s.is_empty()),
            code: s.code,
            message: s.message,
        })
        .collect())
}

/// One delivery report of a pushed array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportItem {
    /// `sid`: the `SerialNo` given at submit.
    pub sid: String,
    /// `SUCCESS`/`FAIL` and the carrier's code, as stored.
    pub code: String,
    /// What it means.
    pub report: Report,
    /// The element as received (JSON).
    pub raw: String,
}

/// A pushed report body: a JSON array (an object alone is taken as one element).
pub fn read_reports(body: &[u8]) -> Result<Vec<ReportItem>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let items = match v {
        serde_json::Value::Array(a) => a,
        o @ serde_json::Value::Object(_) => vec![o],
        _ => return Err("not a JSON array of reports".into()),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let field = |k: &str| e.get(k).and_then(|x| x.as_str()).map(str::to_owned);
            let sid = field("sid").ok_or(format!("report [{i}]: no sid"))?;
            let status = field("report_status").ok_or(format!("report [{i}]: no report_status"))?;
            let errmsg = field("errmsg").unwrap_or_default();
            let report = match status.as_str() {
                "SUCCESS" => Report::Delivered,
                "FAIL" => Report::Undelivered,
                other => return Err(format!("report [{i}]: report_status {other:?}")),
            };
            Ok(ReportItem {
                sid,
                code: format!("{status} {errmsg}").trim().to_owned(),
                report,
                raw: e.to_string(),
            })
        })
        .collect()
}

/// What the provider knows of one number's messages (`PullSmsSendStatusByPhoneNumber`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// `SerialNo`.
    pub serial: String,
    /// `SessionContext`: the campaign tag we sent.
    pub session: String,
    /// `ReportStatus` (`SUCCESS`/`FAIL`) and `Description`.
    pub code: String,
    /// Its meaning.
    pub report: Option<Report>,
}

/// A `PullSmsSendStatusByPhoneNumber` answer.
pub fn read_pulled(body: &str) -> Result<Vec<Pulled>, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let r = &v["Response"];
    if let Some(code) = r["Error"]["Code"].as_str() {
        return Err(format!(
            "{code}: {}",
            r["Error"]["Message"].as_str().unwrap_or("")
        ));
    }
    Ok(r["PullSmsSendStatusSet"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
            let status = s("ReportStatus");
            Pulled {
                serial: s("SerialNo"),
                session: s("SessionContext"),
                report: match status.as_str() {
                    "SUCCESS" => Some(Report::Delivered),
                    "FAIL" => Some(Report::Undelivered),
                    _ => None,
                },
                code: format!("{status} {}", s("Description")).trim().to_owned(),
            }
        })
        .collect())
}

/// A pushed reply (MO): the number (E.164) and the text.
pub fn read_reply(body: &[u8]) -> Result<(String, String), String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let field = |k: &str| {
        v.get(k).and_then(|x| match x {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let mobile = field("mobile").ok_or("no mobile")?;
    let text = field("text").ok_or("no text")?;
    let cc = field("nationcode").unwrap_or_else(|| "86".into());
    let number = if mobile.starts_with('+') {
        mobile
    } else {
        format!("+{cc}{mobile}")
    };
    Ok((number, text))
}

// The driver: requests and answers over HTTP.

use crate::sms::config::TencentConfig;
use crate::sms::gateway::{
    Answer, Driver, Found, Link, Outgoing, campaign_tag, carrier_status, exchange, signed_host,
    truncate,
};

/// A signed Tencent request for `action` with `body`.
fn tencent_request(
    client: &reqwest::Client,
    t: &TencentConfig,
    action: &'static str,
    body: Vec<u8>,
    now: chrono::DateTime<chrono::Utc>,
) -> reqwest::RequestBuilder {
    let mut req = client.post(t.url.clone());
    for (k, v) in headers(
        action,
        &t.secret_id,
        &t.secret_key,
        &signed_host(&t.url),
        &t.region,
        now.timestamp(),
        &body,
    ) {
        req = req.header(k, v);
    }
    req.body(body)
}

impl Driver for TencentConfig {
    /// One `SendSms` for `ms` (same template and parameters), read per number.
    async fn send(&self, link: &Link, ms: &[Outgoing<'_>]) -> Vec<Answer> {
        let t = self;
        let n = ms.len();
        let Some(first) = ms.first() else {
            return Vec::new();
        };
        let Some(template_id) = first.template_id else {
            return link.needs_template(n);
        };
        let body = SendSms {
            phone_number_set: ms.iter().map(|m| m.to).collect(),
            sms_sdk_app_id: &t.sdk_app_id,
            template_id,
            sign_name: &t.sign_name,
            template_param_set: first.params,
            session_context: campaign_tag(first.campaign),
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let now = chrono::Utc::now();
        let req = tencent_request(&link.client, t, "SendSms", bytes, now);
        let (status, after, text) = match exchange(req).await {
            Ok(r) => r,
            Err(a) => return vec![a; n],
        };
        if status != 200 {
            let mut a = Answer::new(
                carrier_status(status),
                Some(format!("{status} {}", truncate(text.trim(), 300))),
            );
            a.retry_after = after;
            return vec![a; n];
        }
        let results = match read_answer(&text) {
            Ok(r) => r,
            // A 200 we cannot read may have sent everything: unknown, never resent blindly.
            Err((code, msg)) if code == "Marquee.UnreadableAnswer" => {
                return vec![Answer::new(Submit::Lost, Some(msg)); n];
            }
            Err((code, msg)) => {
                let c = classify_request(&code, now);
                let mut a = Answer::new(c.submit, Some(format!("{code}: {msg}")));
                a.retry_after = c.wait.or(after);
                return vec![a; n];
            }
        };
        let mut results: Vec<Option<NumberResult>> = results.into_iter().map(Some).collect();
        ms.iter()
            .map(|m| {
                let found = results
                    .iter_mut()
                    .find(|r| r.as_ref().is_some_and(|r| r.phone == m.to))
                    .and_then(Option::take);
                match found {
                    None => Answer::new(
                        Submit::Lost,
                        Some("the answer does not name this number: it may or may not have been sent".into()),
                    ),
                    Some(r) => {
                        let c = classify(&r.code, now);
                        Answer {
                            reason: (c.submit != Submit::Accepted)
                                .then(|| format!("{}: {}", r.code, r.message)),
                            carrier_id: r.serial,
                            submit: c.submit,
                            retry_after: c.wait,
                        }
                    }
                }
            })
            .collect()
    }

    /// `PullSmsSendStatusByPhoneNumber`, matched by the campaign tag (`SessionContext`).
    async fn find(
        &self,
        link: &Link,
        to: &str,
        campaign: i64,
        since: DateTime<Utc>,
    ) -> Result<Option<Found>, String> {
        let (t, now, tag) = (self, Utc::now(), campaign_tag(campaign));
        let body = serde_json::json!({
            "BeginTime": (since - chrono::Duration::minutes(1)).timestamp(),
            "EndTime": now.timestamp(),
            "Offset": 0,
            "Limit": 100,
            "PhoneNumber": to,
            "SmsSdkAppId": t.sdk_app_id,
        });
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let req = tencent_request(
            &link.client,
            t,
            "PullSmsSendStatusByPhoneNumber",
            bytes,
            now,
        );
        let text = exchange(req)
            .await
            .map_err(|a| a.reason.unwrap_or_default())?
            .2;
        Ok(read_pulled(&text)?
            .into_iter()
            .find(|p| p.session == tag)
            .map(|p| Found {
                carrier_id: Some(p.serial).filter(|s| !s.is_empty()),
                code: p.code,
                report: p.report,
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tencent "Signature v3", the published example (CVM DescribeInstances).
    const PAYLOAD: &[u8] =
        br#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;

    #[test]
    fn tc3_matches_the_published_examples() {
        // The international document's example (unmasked EXAMPLE keys).
        assert_eq!(
            authorization(
                "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE",
                "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
                "cvm",
                "cvm.tencentcloudapi.com",
                1551113065,
                PAYLOAD
            ),
            "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/tc3_request, SignedHeaders=content-type;host, Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
        // The older Chinese document's example, its keys printed masked.
        assert!(
            authorization(
                "AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******",
                "Gu5t9xGARNpq86cd98joQYCN3*******",
                "cvm",
                "cvm.tencentcloudapi.com",
                1551113065,
                PAYLOAD
            )
            .ends_with(
                "Signature=2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c"
            )
        );
    }

    #[test]
    fn the_published_answers_are_read_per_number() {
        // tencentcloud-cli's SendSms examples (2021-01-11).
        let ok = r#"{"Response":{"SendStatusSet":[{"SerialNo":"5000:1045710669157053657849499619","PhoneNumber":"+8618501234444","Fee":1,"SessionContext":"outsid_1729495320_1011","Code":"Ok","Message":"send success","IsoCode":"CN"},{"SerialNo":"5000:1045710669157053657849499718","PhoneNumber":"+8618501234445","Fee":1,"SessionContext":"outsid_1729495320_1011","Code":"Ok","Message":"send success","IsoCode":"CN"}],"RequestId":"a0aabda6-cf91-4f3e-a81f-9198114a2279"}}"#;
        let r = read_answer(ok).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0].serial.as_deref(),
            Some("5000:1045710669157053657849499619")
        );
        assert_eq!(
            (r[1].phone.as_str(), r[1].code.as_str()),
            ("+8618501234445", "Ok")
        );
        let bad = r#"{"Response":{"SendStatusSet":[{"SerialNo":"","PhoneNumber":"+8618501234444","Fee":0,"SessionContext":"","Code":"FailedOperation.TemplateParamSetNotMatchApprovedTemplate","Message":"request content does not match the template content","IsoCode":""}],"RequestId":"4e394811-9ebd-4d66-98ee-730b21c4a681"}}"#;
        let r = read_answer(bad).unwrap();
        assert_eq!(r[0].serial, None);
        assert_eq!(classify(&r[0].code, Utc::now()).submit, Submit::Config);
        let err = r#"{"Response":{"Error":{"Code":"AuthFailure.SignatureFailure","Message":"The provided credentials could not be validated."},"RequestId":"x"}}"#;
        assert_eq!(
            read_answer(err).unwrap_err().0,
            "AuthFailure.SignatureFailure"
        );
    }

    #[test]
    fn codes_are_classed() {
        let now: DateTime<Utc> = "2026-05-15T06:00:00Z".parse().unwrap(); // 14:00 Beijing
        let c = |code| classify(code, now);
        assert_eq!(c("Ok").submit, Submit::Accepted);
        assert_eq!(
            c("FailedOperation.PhoneNumberInBlacklist").submit,
            Submit::OptedOut
        );
        assert_eq!(
            c("InvalidParameterValue.IncorrectPhoneNumber").submit,
            Submit::Permanent
        );
        assert_eq!(
            c("FailedOperation.InsufficientBalanceInSmsPackage").submit,
            Submit::Account
        );
        assert_eq!(c("AuthFailure.SecretIdNotFound").submit, Submit::Account);
        assert_eq!(c("RequestLimitExceeded").submit, Submit::Transient);
        assert_eq!(c("InternalError.Timeout").submit, Submit::Lost);
        assert_eq!(c("InternalError.SendAndRecvFail").submit, Submit::Lost);
        assert_eq!(
            classify_request(
                "UnsupportedOperation.ContainDomesticAndInternationalPhoneNumber",
                now
            )
            .submit,
            Submit::Config
        );
        assert_eq!(classify_request("Some.NewCode", now).submit, Submit::Config);
        assert_eq!(
            classify_request("AuthFailure.SignatureFailure", now).submit,
            Submit::Account
        );
        // A daily limit waits for midnight in Beijing (10 hours from 14:00).
        let d = c("LimitExceeded.PhoneNumberDailyLimit");
        assert_eq!(
            (d.submit, d.wait),
            (Submit::Defer, Some(Duration::from_secs(10 * 3600)))
        );
        // Marketing hours: until 08:00 Beijing the next day.
        let late: DateTime<Utc> = "2026-05-15T15:00:00Z".parse().unwrap(); // 23:00 Beijing
        assert_eq!(
            classify("FailedOperation.MarketingSendTimeConstraint", late).wait,
            Some(Duration::from_secs(9 * 3600))
        );
    }

    #[test]
    fn the_published_report_and_reply_are_read() {
        // Tencent's callback documentation (382/43547, 382/43548).
        let body = r#"[{"user_receive_time": "2015-10-17 08:03:04","nationcode": "86","mobile": "13xxxxxxxxx","report_status": "SUCCESS","errmsg": "DELIVRD","description": "用户短信送达成功","sid": "xxxxxxx"}]"#;
        let r = read_reports(body.as_bytes()).unwrap();
        assert_eq!(
            (r[0].sid.as_str(), r[0].code.as_str(), r[0].report),
            ("xxxxxxx", "SUCCESS DELIVRD", Report::Delivered)
        );
        assert!(read_reports(b"[{\"report_status\": \"SUCCESS\"}]").is_err());
        let (n, t) = read_reply(
            r#"{"extend": "","mobile": "13800138000","nationcode": "86","sign": "市政府","text": "TD","time": 1457336869}"#
                .as_bytes(),
        )
        .unwrap();
        assert_eq!((n.as_str(), t.as_str()), ("+8613800138000", "TD"));
    }
}
