//! Gateway drivers: one submit of one message, classified as accepted / transient / permanent /
//! lost. Only this module talks to carriers.
//!
//! Classification, the same for every driver: an answer in the accepted set is `Accepted`;
//! 429 and 5xx are `Transient` (back off, fail over); any other answer is `Permanent` (the
//! carrier's text is kept as the reason). A connection that could not be made is `Transient`
//! (nothing left this machine); a request that went out but got no answer in time, or whose
//! connection broke, is `Lost`: the message becomes `unknown` and is never resent on its own.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use url::form_urlencoded;

use super::config::{
    AliyunConfig, CmccMasConfig, GatewayConfig, GatewayKind, HttpBody, HttpSign, HttpTemplate,
    TencentConfig,
};
use crate::domain::delivery::Submit;
use crate::domain::segments::{Encoding, encoding, segments};

/// One message to submit.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// Our message id (goes into the delivery-report URL).
    pub id: i64,
    /// Its campaign (tagged on template carriers' requests, to find it again).
    pub campaign: i64,
    /// E.164.
    pub to: &'a str,
    /// Sender id.
    pub from: &'a str,
    /// Text (for a template: the approved text filled in, for the record).
    pub text: &'a str,
    /// The provider's template id at this gateway, for a template campaign.
    pub template_id: Option<&'a str>,
    /// The template's parameters, in order.
    pub params: &'a [String],
    /// The template's variable names, in the same order (Aliyun's named parameters).
    pub param_names: &'a [String],
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Classification.
    pub submit: Submit,
    /// The carrier's message id, when it gave one.
    pub carrier_id: Option<String>,
    /// The carrier's words (status and body) or the transport error.
    pub reason: Option<String>,
    /// `Retry-After`, when given with a transient failure.
    pub retry_after: Option<Duration>,
}

impl Answer {
    fn new(submit: Submit, reason: Option<String>) -> Answer {
        Answer {
            submit,
            carrier_id: None,
            reason,
            retry_after: None,
        }
    }
}

/// A configured gateway, ready to submit.
pub struct Gateway {
    /// Its settings.
    pub cfg: GatewayConfig,
    client: reqwest::Client,
    /// The report URL around a message's id: what comes before and after it.
    dlr: (String, &'static str),
    dry_run: Option<Mutex<std::fs::File>>,
}

#[derive(Serialize)]
struct DryRunLine<'a> {
    id: i64,
    gateway: &'a str,
    to: &'a str,
    from: &'a str,
    text: &'a str,
    encoding: Encoding,
    parts: usize,
    at: String,
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// A request that got no answer. The URL is left out of the reason: it carries the gateway's
/// credentials and the report secret, and reasons are shown to every viewer.
fn transport_error(e: reqwest::Error) -> Answer {
    let submit = if e.is_connect() {
        Submit::Transient
    } else {
        Submit::Lost
    };
    let what = if e.is_timeout() {
        "no answer in time"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "connection failed"
    };
    let detail = truncate(&e.without_url().to_string(), 300);
    Answer::new(
        submit,
        Some(format!("gateway request failed ({what}): {detail}")),
    )
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(3600)))
}

/// Sends a request and reads the whole answer: status, `Retry-After`, body. A transport
/// failure comes back as its [`Answer`].
async fn exchange(req: reqwest::RequestBuilder) -> Result<(u16, Option<Duration>, String), Answer> {
    let resp = req.send().await.map_err(transport_error)?;
    let status = resp.status().as_u16();
    let after = retry_after(&resp);
    let body = resp.text().await.map_err(transport_error)?;
    Ok((status, after, body))
}

/// The answers to a request whose provider answers one code for all its numbers (Aliyun,
/// 云MAS): `read` is the code read from the body (its class, the reason, the request's id),
/// else the HTTP status decides (an unreadable 200 may have sent everything: lost). Each
/// accepted message's carrier id is the request's id with its number.
fn one_code_for_all(
    ms: &[Outgoing<'_>],
    status: u16,
    after: Option<Duration>,
    text: &str,
    read: Option<(super::tencent::Class, String, Option<String>)>,
) -> Vec<Answer> {
    let answer = match read {
        Some((k, reason, group)) => {
            return ms
                .iter()
                .map(|m| Answer {
                    reason: (k.submit != Submit::Accepted).then(|| reason.clone()),
                    carrier_id: group
                        .as_deref()
                        .filter(|_| k.submit == Submit::Accepted)
                        .map(|g| super::aliyun::carrier_id(g, m.to)),
                    submit: k.submit.clone(),
                    retry_after: k.wait.or(after),
                })
                .collect();
        }
        None if status == 200 => Answer::new(
            Submit::Lost,
            Some(format!("unreadable answer: {}", truncate(text.trim(), 300))),
        ),
        None => {
            let mut x = Answer::new(
                carrier_status(status),
                Some(format!("{status} {}", truncate(text.trim(), 300))),
            );
            x.retry_after = after;
            x
        }
    };
    vec![answer; ms.len()]
}

/// A template carrier's answer that carries no code of the provider's (a proxy, a wrong
/// URL): 429 and 503 were refused before sending (later); 500, 502 and 504 may have been
/// sent behind the proxy (unknown); 401 and 403 are the account; any other status means the
/// gateway is configured wrong: the campaign waits for an operator, nothing is rejected.
fn carrier_status(status: u16) -> Submit {
    match status {
        429 | 503 => Submit::Transient,
        500..=599 => Submit::Lost,
        401 | 403 => Submit::Account,
        _ => Submit::Config,
    }
}

/// What a provider knows of a message whose submit answer was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its id there (to match later reports), when the provider says.
    pub carrier_id: Option<String>,
    /// The provider's status words.
    pub code: String,
    /// A final outcome, when there is one.
    pub report: Option<crate::domain::delivery::Report>,
}

/// The tag template carriers' requests carry (Tencent `SessionContext`, Aliyun `OutId`), so
/// that a message whose answer was lost can be found again: a campaign has one message per
/// number.
pub fn campaign_tag(campaign: i64) -> String {
    format!("marquee-c{campaign}")
}

/// The host a request is signed for: the one it carries (with a non-default port).
fn signed_host(url: &url::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => String::new(),
    }
}

/// A signed Tencent request for `action` with `body`.
fn tencent_request(
    client: &reqwest::Client,
    t: &TencentConfig,
    action: &'static str,
    body: Vec<u8>,
    now: chrono::DateTime<chrono::Utc>,
) -> reqwest::RequestBuilder {
    let mut req = client.post(t.url.clone());
    for (k, v) in super::tencent::headers(
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

/// The classification of an HTTP status (accepted statuses given).
fn classify(status: u16, accepted: impl Fn(u16) -> bool) -> Submit {
    if accepted(status) {
        Submit::Accepted
    } else if status == 429 || status >= 500 {
        Submit::Transient
    } else {
        Submit::Permanent
    }
}

/// Fills `{name}` placeholders of `template` in one pass: a value is never scanned again, so
/// a message text holding `{password}` or `{dlr_url}` stays that text (it does not pull the
/// gateway's secrets into the SMS). Unknown `{…}` are left as they are.
fn fill(template: &str, vars: &[(&str, &str)], encode: bool) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let hit = after.find('}').and_then(|close| {
            let name = &after[..close];
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (close, *v))
        });
        match hit {
            Some((close, v)) => {
                if encode {
                    out.extend(form_urlencoded::byte_serialize(v.as_bytes()));
                } else {
                    out.push_str(v);
                }
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn fill_json(v: &serde_json::Value, vars: &[(&str, &str)]) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(fill(s, vars, false)),
        Value::Array(a) => Value::Array(a.iter().map(|x| fill_json(x, vars)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), fill_json(x, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

impl Gateway {
    /// Prepares a gateway; `callback_url` is the daemon's base URL for delivery reports.
    pub fn new(cfg: GatewayConfig, callback_url: &str) -> std::io::Result<Gateway> {
        let dry_run = match &cfg.kind {
            GatewayKind::DryRun { path } => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                Some(Mutex::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)?,
                ))
            }
            _ => None,
        };
        let client = crate::http_client()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(cfg.in_flight)
            .build()
            .map_err(std::io::Error::other)?;
        let dlr = (
            format!(
                "{callback_url}/api/v1/sms/dlr/{}?secret={}&id=",
                cfg.name,
                cfg.dlr_secret.as_deref().unwrap_or("")
            ),
            match cfg.kind {
                GatewayKind::Kannel { .. } => "&type=%d&answer=%A&fid=%F&ts=%T",
                _ => "",
            },
        );
        Ok(Gateway {
            cfg,
            client,
            dlr,
            dry_run,
        })
    }

    /// The URL this gateway calls back with a report for message `id`. Kannel fills in its
    /// `%` escapes: `%d` report type, `%A` SMSC answer, `%F` carrier id, `%T` time.
    pub fn dlr_url(&self, id: i64) -> String {
        let (before, after) = (&self.dlr.0, self.dlr.1);
        let mut url = String::with_capacity(before.len() + 20 + after.len());
        url.push_str(before);
        let _ = std::fmt::Write::write_fmt(&mut url, format_args!("{id}"));
        url.push_str(after);
        url
    }

    /// Submits one message. Never panics; every failure is an [`Answer`].
    pub async fn submit(&self, m: &Outgoing<'_>) -> Answer {
        match &self.cfg.kind {
            GatewayKind::DryRun { .. } => self.dry_run(m),
            GatewayKind::Kannel {
                url,
                username,
                password,
                smsc,
                dlr_mask,
                post,
            } => {
                let ucs2 = encoding(m.text) == Encoding::Ucs2;
                let dlr_url = self.dlr_url(m.id);
                let mask = dlr_mask.to_string();
                let req = if *post {
                    let mut r = self
                        .client
                        .post(url.clone())
                        .header("Content-Type", "text/plain; charset=UTF-8")
                        .header("X-Kannel-Username", username)
                        .header("X-Kannel-Password", password)
                        .header("X-Kannel-From", m.from)
                        .header("X-Kannel-To", m.to)
                        .header("X-Kannel-DLR-Mask", &mask)
                        .header("X-Kannel-DLR-URL", &dlr_url)
                        .body(m.text.to_owned());
                    if ucs2 {
                        r = r.header("X-Kannel-Coding", "2");
                    }
                    if let Some(s) = smsc {
                        r = r.header("X-Kannel-SMSC", s);
                    }
                    r
                } else {
                    let mut u = url.clone();
                    {
                        let mut q = u.query_pairs_mut();
                        q.append_pair("username", username)
                            .append_pair("password", password)
                            .append_pair("from", m.from)
                            .append_pair("to", m.to)
                            .append_pair("text", m.text)
                            .append_pair("charset", "UTF-8")
                            .append_pair("coding", if ucs2 { "2" } else { "0" })
                            .append_pair("dlr-mask", &mask)
                            .append_pair("dlr-url", &dlr_url);
                        if let Some(s) = smsc {
                            q.append_pair("smsc", s);
                        }
                    }
                    self.client.get(u)
                };
                let (status, after, body) = match exchange(req).await {
                    Ok(r) => r,
                    Err(a) => return a,
                };
                let body = body.trim();
                // Kannel: "0: Accepted for delivery", "3: Queued for later delivery", or
                // (older, immediate reply) "Sent.".
                let submit = classify(status, |s| (200..300).contains(&s));
                Answer {
                    reason: (submit != Submit::Accepted || !body.starts_with("0:"))
                        .then(|| format!("{status} {}", truncate(body, 300))),
                    submit,
                    carrier_id: None,
                    retry_after: after,
                }
            }
            GatewayKind::Http(t) => self
                .templated(t, std::slice::from_ref(m))
                .await
                .pop()
                .unwrap_or_else(|| Answer::new(Submit::Lost, None)),
            GatewayKind::Tencent(t) => self
                .tencent(t, std::slice::from_ref(m))
                .await
                .pop()
                .unwrap_or_else(|| Answer::new(Submit::Lost, None)),
            GatewayKind::Aliyun(a) => self
                .aliyun(a, std::slice::from_ref(m))
                .await
                .pop()
                .unwrap_or_else(|| Answer::new(Submit::Lost, None)),
            GatewayKind::CmccMas(c) => self
                .cmcc_mas(c, std::slice::from_ref(m))
                .await
                .pop()
                .unwrap_or_else(|| Answer::new(Submit::Lost, None)),
        }
    }

    /// Submits messages that share their text or template parameters, in as few requests as
    /// the gateway allows (`batch_max` numbers each); one answer per message, in order.
    pub async fn submit_many(&self, ms: &[Outgoing<'_>]) -> Vec<Answer> {
        match &self.cfg.kind {
            GatewayKind::Tencent(t) => {
                let mut out = Vec::with_capacity(ms.len());
                for chunk in ms.chunks(t.batch_max.max(1)) {
                    out.extend(self.tencent(t, chunk).await);
                }
                out
            }
            GatewayKind::Aliyun(a) => {
                let mut out = Vec::with_capacity(ms.len());
                for chunk in ms.chunks(a.batch_max.max(1)) {
                    out.extend(self.aliyun(a, chunk).await);
                }
                out
            }
            GatewayKind::CmccMas(c) => {
                let mut out = Vec::with_capacity(ms.len());
                for chunk in ms.chunks(c.batch_max.max(1)) {
                    out.extend(self.cmcc_mas(c, chunk).await);
                }
                out
            }
            GatewayKind::Http(h) if h.batch_max > 1 => {
                let mut out = Vec::with_capacity(ms.len());
                for chunk in ms.chunks(h.batch_max) {
                    out.extend(self.templated(h, chunk).await);
                }
                out
            }
            _ => {
                let mut out = Vec::with_capacity(ms.len());
                for m in ms {
                    out.push(self.submit(m).await);
                }
                out
            }
        }
    }

    /// One 云MAS `tmpsubmit` for `ms` (same template and parameters): one `rspcod` for all.
    async fn cmcc_mas(&self, c: &CmccMasConfig, ms: &[Outgoing<'_>]) -> Vec<Answer> {
        use super::cmcc_mas;
        let n = ms.len();
        let Some(first) = ms.first() else {
            return Vec::new();
        };
        let Some(template_id) = first.template_id else {
            return self.needs_template(n);
        };
        if let Some(m) = ms.iter().find(|m| !m.to.starts_with("+86")) {
            // Refused at campaign creation; a list changed since cannot mix one in.
            return vec![
                Answer::new(
                    Submit::Permanent,
                    Some(format!(
                        "云MAS sends to mainland (+86) numbers only, and {} is not one",
                        crate::domain::phone::mask(m.to)
                    )),
                );
                n
            ];
        }
        let mobiles: Vec<String> = ms
            .iter()
            .map(|m| super::aliyun::report_number(m.to))
            .collect();
        let mobiles = mobiles.join(",");
        let params = if first.params.is_empty() {
            r#"[""]"#.to_owned()
        } else {
            serde_json::to_string(first.params).unwrap_or_default()
        };
        let body = cmcc_mas::body(&cmcc_mas::TmpSubmit {
            ec_name: &c.ec_name,
            ap_id: &c.ap_id,
            secret_key: &c.secret_key,
            template_id,
            mobiles: &mobiles,
            params: &params,
            sign: &c.sign,
            add_serial: &c.add_serial,
        });
        let req = self
            .client
            .post(c.url.clone())
            .header("Content-Type", "text/plain")
            .body(body);
        let (status, after, text) = match exchange(req).await {
            Ok(r) => r,
            Err(x) => return vec![x; n],
        };
        let read = cmcc_mas::read_answer(&text).map(|(code, group)| {
            let k = cmcc_mas::classify(&code);
            (k, code, group)
        });
        one_code_for_all(ms, status, after, &text, read)
    }

    /// A signed Aliyun request for `action` with `params` in the query.
    fn aliyun_request(
        &self,
        a: &AliyunConfig,
        action: &str,
        params: &[(&str, String)],
        now: chrono::DateTime<chrono::Utc>,
    ) -> reqwest::RequestBuilder {
        let mut nonce = [0u8; 16];
        let _ = getrandom::fill(&mut nonce);
        let (query, headers) = super::aliyun::signed(
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
        let mut req = self.client.post(url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req
    }

    /// Asks the provider whether it has a message of `campaign` for `to` sent since `since`
    /// (Tencent `PullSmsSendStatusByPhoneNumber`, Aliyun `QuerySendDetails`, matched by the
    /// campaign tag sent with it). `Ok(None)`: not found, or this kind cannot be asked.
    pub async fn find(
        &self,
        to: &str,
        campaign: i64,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<Found>, String> {
        let now = chrono::Utc::now();
        let tag = campaign_tag(campaign);
        let text = match &self.cfg.kind {
            GatewayKind::Tencent(t) => {
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
                    &self.client,
                    t,
                    "PullSmsSendStatusByPhoneNumber",
                    bytes,
                    now,
                );
                let text = exchange(req)
                    .await
                    .map_err(|a| a.reason.unwrap_or_default())?
                    .2;
                return Ok(super::tencent::read_pulled(&text)?
                    .into_iter()
                    .find(|p| p.session == tag)
                    .map(|p| Found {
                        carrier_id: Some(p.serial).filter(|s| !s.is_empty()),
                        code: p.code,
                        report: p.report,
                    }));
            }
            GatewayKind::Aliyun(a) => {
                let date = since
                    .with_timezone(&chrono_tz::Asia::Shanghai)
                    .format("%Y%m%d")
                    .to_string();
                let req = self.aliyun_request(
                    a,
                    "QuerySendDetails",
                    &[
                        ("PhoneNumber", super::aliyun::report_number(to)),
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
            }
            _ => return Ok(None),
        };
        // Only a final status resolves it: the details carry no biz id, so a message resolved
        // while waiting could not be matched by its later report.
        Ok(super::aliyun::read_details(&text)?
            .into_iter()
            .find(|(out_id, _, report)| *out_id == tag && report.is_some())
            .map(|(_, code, report)| Found {
                carrier_id: None,
                code,
                report,
            }))
    }

    /// The answer for every message of a request to a template-only gateway without a template.
    fn needs_template(&self, n: usize) -> Vec<Answer> {
        vec![
            Answer::new(
                Submit::Config,
                Some(format!(
                    "gateway {} sends only approved templates: create the campaign with a template",
                    self.cfg.name
                )),
            );
            n
        ]
    }

    /// One Aliyun `SendSms` for `ms` (same template and parameters): one code for all.
    async fn aliyun(&self, a: &AliyunConfig, ms: &[Outgoing<'_>]) -> Vec<Answer> {
        use super::aliyun;
        let n = ms.len();
        let Some(first) = ms.first() else {
            return Vec::new();
        };
        let Some(template) = first.template_id else {
            return self.needs_template(n);
        };
        let param: serde_json::Map<String, serde_json::Value> = first
            .param_names
            .iter()
            .zip(first.params)
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let now = chrono::Utc::now();
        let numbers: Vec<&str> = ms.iter().map(|m| m.to).collect();
        let req = self.aliyun_request(
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
        let read = aliyun::read_answer(&text);
        // A batch refused for one of its numbers (nothing of it was sent): each number alone,
        // so only that one is deferred or rejected.
        if n > 1
            && read
                .as_ref()
                .is_some_and(|(code, _, _)| aliyun::about_a_number(code))
        {
            let mut out = Vec::with_capacity(n);
            for m in ms {
                out.extend(Box::pin(self.aliyun(a, std::slice::from_ref(m))).await);
            }
            return out;
        }
        let read = read.map(|(code, message, biz)| {
            let k = aliyun::classify(&code, &message, now);
            (k, format!("{code}: {message}"), biz)
        });
        one_code_for_all(ms, status, after, &text, read)
    }

    /// One `SendSms` for `ms` (same template and parameters), read per number.
    async fn tencent(&self, t: &TencentConfig, ms: &[Outgoing<'_>]) -> Vec<Answer> {
        use super::tencent;
        let n = ms.len();
        let Some(first) = ms.first() else {
            return Vec::new();
        };
        let Some(template_id) = first.template_id else {
            return self.needs_template(n);
        };
        let body = tencent::SendSms {
            phone_number_set: ms.iter().map(|m| m.to).collect(),
            sms_sdk_app_id: &t.sdk_app_id,
            template_id,
            sign_name: &t.sign_name,
            template_param_set: first.params,
            session_context: campaign_tag(first.campaign),
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let now = chrono::Utc::now();
        let req = tencent_request(&self.client, t, "SendSms", bytes, now);
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
        let results = match tencent::read_answer(&text) {
            Ok(r) => r,
            // A 200 we cannot read may have sent everything: unknown, never resent blindly.
            Err((code, msg)) if code == "Marquee.UnreadableAnswer" => {
                return vec![Answer::new(Submit::Lost, Some(msg)); n];
            }
            Err((code, msg)) => {
                let c = tencent::classify_request(&code, now);
                let mut a = Answer::new(c.submit, Some(format!("{code}: {msg}")));
                a.retry_after = c.wait.or(after);
                return vec![a; n];
            }
        };
        let mut results: Vec<Option<tencent::NumberResult>> =
            results.into_iter().map(Some).collect();
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
                        let c = tencent::classify(&r.code, now);
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

    fn dry_run(&self, m: &Outgoing<'_>) -> Answer {
        let seg = segments(m.text);
        let line = DryRunLine {
            id: m.id,
            gateway: &self.cfg.name,
            to: m.to,
            from: m.from,
            text: m.text,
            encoding: seg.encoding,
            parts: seg.parts,
            at: chrono::Utc::now().to_rfc3339(),
        };
        let Some(file) = &self.dry_run else {
            return Answer::new(Submit::Transient, Some("dry-run file not open".into()));
        };
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
        match f.write_all(&bytes) {
            Ok(()) => Answer {
                submit: Submit::Accepted,
                carrier_id: Some(format!("dry-run-{}", m.id)),
                reason: None,
                retry_after: None,
            },
            Err(e) => Answer::new(
                Submit::Transient,
                Some(format!("cannot write the dry-run file: {e}")),
            ),
        }
    }

    /// A templated request for `ms` (one, or up to `batch_max` with the same text), its
    /// answer classed by status, then by the body's codes where configured.
    async fn templated(&self, t: &HttpTemplate, ms: &[Outgoing<'_>]) -> Vec<Answer> {
        let Some(m) = ms.first() else {
            return Vec::new();
        };
        let n = ms.len();
        let id = m.id.to_string();
        let dlr_url = self.dlr_url(m.id);
        let to_list = ms.iter().map(|m| m.to).collect::<Vec<_>>().join(",");
        let vars = [
            ("to", m.to),
            ("to_digits", m.to.trim_start_matches('+')),
            ("to_list", to_list.as_str()),
            ("from", m.from),
            ("text", m.text),
            ("id", id.as_str()),
            ("dlr_url", dlr_url.as_str()),
            ("username", t.username.as_deref().unwrap_or("")),
            ("password", t.password.as_deref().unwrap_or("")),
        ];
        let url = fill(&t.url, &vars, true);
        let mut req = self.client.request(t.method.clone(), &url);
        for (k, v) in &t.headers {
            req = req.header(k, fill(v, &vars, false));
        }
        req = match &t.body {
            HttpBody::None => req,
            HttpBody::Form(fields) => {
                let mut ser = form_urlencoded::Serializer::new(String::new());
                for (k, v) in fields {
                    ser.append_pair(k, &fill(v, &vars, false));
                }
                req.header("Content-Type", "application/x-www-form-urlencoded")
                    .body(ser.finish())
            }
            HttpBody::Json(v) => {
                let items: Vec<serde_json::Value> = ms
                    .iter()
                    .map(|x| {
                        let xid = x.id.to_string();
                        fill_json(
                            &t.batch_item_json,
                            &[
                                ("to", x.to),
                                ("to_digits", x.to.trim_start_matches('+')),
                                ("id", xid.as_str()),
                            ],
                        )
                    })
                    .collect();
                let bytes = serde_json::to_vec(&fill_batch(&fill_json(v, &vars), &items))
                    .unwrap_or_default();
                match &t.sign {
                    // Signed over the exact bytes sent (Tencent Cloud API 3.0).
                    Some(HttpSign::Tc3 {
                        secret_id,
                        secret_key,
                        service,
                    }) => {
                        let url = url::Url::parse(&url).ok();
                        let host = url.as_ref().map(signed_host).unwrap_or_default();
                        let now = chrono::Utc::now().timestamp();
                        req.header(
                            "Authorization",
                            super::tencent::authorization(
                                secret_id, secret_key, service, &host, now, &bytes,
                            ),
                        )
                        .header("Content-Type", "application/json; charset=utf-8")
                        .header("X-TC-Timestamp", now.to_string())
                        .body(bytes)
                    }
                    None => req.header("Content-Type", "application/json").body(bytes),
                }
            }
        };
        let (status, after, body) = match exchange(req).await {
            Ok(r) => r,
            Err(a) => return vec![a; n],
        };
        let by_status = classify(status, |s| t.accept_status.contains(&s));
        let json: Option<serde_json::Value> = serde_json::from_str(&body).ok();
        let at = |ptr: &str| json.as_ref().and_then(|v| v.pointer(ptr)).map(text_of);
        let request_id = (by_status == Submit::Accepted)
            .then(|| t.id_pointer.as_deref().and_then(at))
            .flatten();
        let all = |submit: Submit, reason: Option<String>| {
            let mut a = Answer::new(submit, reason);
            a.retry_after = after;
            vec![a; n]
        };
        let Some(o) = &t.outcome else {
            // By status alone: one message a request (a batch is not rejected for good on a
            // status alone).
            let by_status = if n > 1 && by_status != Submit::Accepted {
                carrier_status(status)
            } else {
                by_status
            };
            let reason = (by_status != Submit::Accepted)
                .then(|| format!("{status} {}", truncate(body.trim(), 300)));
            return ms
                .iter()
                .map(|x| Answer {
                    submit: by_status.clone(),
                    reason: reason.clone(),
                    carrier_id: carrier_for(request_id.as_deref(), x.to, n),
                    retry_after: after,
                })
                .collect();
        };
        // A request-level code decides first (business errors often come with 200).
        if let Some(code) = o.outcome_pointer.as_deref().and_then(at) {
            // A request-level code: one not configured and not OK pauses the campaign (it
            // may be about the request, not its numbers).
            let c = match o.class(&code) {
                Submit::Permanent if !o.knows(&code) => Submit::Config,
                c => c,
            };
            if c != Submit::Accepted {
                return all(
                    c,
                    Some(format!("{status} {code}: {}", truncate(body.trim(), 200))),
                );
            }
        } else if by_status != Submit::Accepted {
            // No code of the provider's: a batch is not rejected for good on a status alone.
            return all(
                carrier_status(status),
                Some(format!("{status} {}", truncate(body.trim(), 300))),
            );
        } else if json.is_none() && o.outcome_pointer.is_some() {
            // A 2xx whose body cannot be read may have sent everything.
            return all(
                Submit::Lost,
                Some(format!("unreadable answer: {}", truncate(body.trim(), 300))),
            );
        }
        let results = o.results_pointer.as_deref().map(|p| {
            json.as_ref()
                .and_then(|j| j.pointer(p)?.as_array().cloned())
        });
        if let Some(None) = results {
            // Results were expected and are not there: whether it was sent is not known.
            return all(
                Submit::Lost,
                Some(format!(
                    "no per-number results in the answer: {}",
                    truncate(body.trim(), 200)
                )),
            );
        }
        let Some(Some(results)) = results else {
            return ms
                .iter()
                .map(|x| Answer {
                    submit: Submit::Accepted,
                    reason: None,
                    carrier_id: carrier_for(request_id.as_deref(), x.to, n),
                    retry_after: None,
                })
                .collect();
        };
        // One result per number, matched by the number (providers drop or keep the `+` and
        // the country code).
        let mut results: Vec<Option<serde_json::Value>> = results.into_iter().map(Some).collect();
        ms.iter()
            .map(|x| {
                let digits = x.to.trim_start_matches('+');
                let found = results
                    .iter_mut()
                    .find(|r| {
                        r.as_ref()
                            .and_then(|r| r.pointer(&o.result_phone))
                            .map(text_of)
                            .map(|p| p.trim_start_matches('+').to_owned())
                            .is_some_and(|p| !p.is_empty() && (digits.ends_with(&p) || p.ends_with(digits)))
                    })
                    .and_then(Option::take);
                let Some(r) = found else {
                    return Answer::new(
                        Submit::Lost,
                        Some("the answer does not name this number: it may or may not have been sent".into()),
                    );
                };
                let code = r.pointer(&o.result_code).map(text_of).unwrap_or_default();
                let c = o.class(&code);
                Answer {
                    reason: (c != Submit::Accepted).then(|| format!("{code}: {}", truncate(&r.to_string(), 200))),
                    carrier_id: (c == Submit::Accepted)
                        .then(|| {
                            o.result_id
                                .as_deref()
                                .and_then(|p| r.pointer(p))
                                .map(text_of)
                                .or_else(|| carrier_for(request_id.as_deref(), x.to, n))
                        })
                        .flatten(),
                    submit: c,
                    retry_after: None,
                }
            })
            .collect()
    }
}

/// A JSON value as text (strings without their quotes).
fn text_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A message's carrier id from its request's: the request id itself for one message, with
/// the number when the request carried several.
fn carrier_for(request_id: Option<&str>, to: &str, n: usize) -> Option<String> {
    request_id.map(|r| {
        if n > 1 {
            format!("{r}/{}", to.trim_start_matches('+'))
        } else {
            r.to_owned()
        }
    })
}

/// Replaces every JSON string `"{to_json}"` with the array of the batch's items.
fn fill_batch(v: &serde_json::Value, items: &[serde_json::Value]) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) if s == "{to_json}" => Value::Array(items.to_vec()),
        Value::Array(a) => Value::Array(a.iter().map(|x| fill_batch(x, items)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), fill_batch(x, items)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let ok = |s| (200..300).contains(&s);
        assert_eq!(classify(202, ok), Submit::Accepted);
        assert_eq!(classify(429, ok), Submit::Transient);
        assert_eq!(classify(503, ok), Submit::Transient);
        assert_eq!(classify(400, ok), Submit::Permanent);
        assert_eq!(classify(403, ok), Submit::Permanent);
    }

    #[tokio::test]
    async fn https_gateways_build_and_a_refused_connection_is_transient() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let secret = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret.path(), "0123456789abcdef0123").unwrap();
        let cfg = crate::config::Config::parse(
            "t.toml",
            &format!(
                r#"
[schedule]
channels = ["lobby"]
[[sms.gateways]]
name = "tls"
kind = "http"
url = "https://127.0.0.1:{port}/send?to={{to}}"
body = "none"
dlr_secret_file = {:?}
"#,
                secret.path()
            ),
        )
        .unwrap();
        let gw = Gateway::new(cfg.sms.gateways[0].clone(), "http://127.0.0.1:8080").unwrap();
        let a = gw
            .submit(&Outgoing {
                id: 1,
                campaign: 1,
                to: "+8613800138000",
                from: "12345",
                text: "hi",
                template_id: None,
                params: &[],
                param_names: &[],
            })
            .await;
        assert_eq!(a.submit, Submit::Transient, "{a:?}");
        let reason = a.reason.unwrap();
        assert!(reason.contains("cannot connect"), "{reason}");
        assert!(
            !reason.contains("127.0.0.1"),
            "the URL (and its secrets) must not leak: {reason}"
        );
    }

    #[test]
    fn a_text_holding_a_placeholder_does_not_pull_in_secrets() {
        let vars = [
            ("text", "pay {password} at {dlr_url} {x}"),
            ("password", "s3cret"),
            ("dlr_url", "http://x/?secret=y"),
        ];
        assert_eq!(
            fill("t={text}", &vars, false),
            "t=pay {password} at {dlr_url} {x}"
        );
        assert_eq!(
            fill("{password}{text}", &vars, false),
            "s3cretpay {password} at {dlr_url} {x}"
        );
        assert_eq!(fill("{ {unknown} }", &vars, false), "{ {unknown} }");
    }

    #[test]
    fn placeholders_are_filled_and_encoded_in_urls() {
        let vars = [("to", "+8613800138000"), ("text", "你好 & bye")];
        assert_eq!(
            fill("http://x/send?to={to}&t={text}", &vars, true),
            "http://x/send?to=%2B8613800138000&t=%E4%BD%A0%E5%A5%BD+%26+bye"
        );
        assert_eq!(
            fill("{to}: {text}", &vars, false),
            "+8613800138000: 你好 & bye"
        );
        let j = fill_json(
            &serde_json::json!({"messages": [{"to": "{to}", "n": 1}]}),
            &vars,
        );
        assert_eq!(
            j,
            serde_json::json!({"messages": [{"to": "+8613800138000", "n": 1}]})
        );
    }
}
