//! Gateways: what a submit is ([`Outgoing`]) and what comes back ([`Answer`]), and one driver
//! per kind behind the [`Driver`] trait: [`kannel`], [`http`] (the generic templated kind),
//! [`dry_run`], and the template carriers [`tencent`], [`aliyun`], [`cmcc_mas`] (each file
//! holds the provider's protocol without I/O, then its driver). Only this module talks to
//! carriers. A new kind is a config struct in `sms::config`, a file here implementing
//! [`Driver`], and one arm in [`Gateway::submit_many`] and [`Gateway::find`].
//!
//! Classification by HTTP status ([`classify`], for the `kannel` and `http` kinds; template
//! carriers read their codes first, then [`carrier_status`]): an answer in the accepted set is
//! `Accepted`; 429 and 5xx as [`server_error`] reads them (429, 503 and a proxy that reached
//! nothing `Transient`: back off, fail over; 500, 502, 504 and any 5xx not known to mean
//! nothing was sent `Lost`: it may have been sent; 501, 505 the campaign's configuration); 401
//! is the account; any other answer is `Permanent` (the carrier's text is
//! kept as the reason; Kannel reads its 403s by their body). A connection that could not be made is `Transient` (nothing left this machine); a
//! request that went out but got no answer in time, or whose connection broke, is `Lost`: the
//! message becomes `unknown` and is never resent on its own.

pub mod aliyun;
pub mod cmcc_mas;
pub mod dry_run;
pub mod http;
pub mod kannel;
pub mod tencent;

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use url::form_urlencoded;

use super::config::{GatewayConfig, GatewayKind};
use crate::domain::delivery::Submit;

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
    pub(super) fn new(submit: Submit, reason: Option<String>) -> Answer {
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
    link: Link,
}

/// The plain-HTTP (`http://`) client of a gateway: hyper's pooled client, the one reqwest
/// wraps, called directly. For the hot path of a local gateway (Kannel's sendsms on the same
/// host or LAN) it skips reqwest's own URL parsing and request machinery, which took about
/// 7 % of the daemon's CPU at 25,000 messages per second (BENCHMARKS.md, SMS).
pub type PlainClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

/// What every driver of a gateway uses: its name, its HTTP clients (timeouts and pool from the
/// gateway's settings), its delivery-report URL, and (dry-run) its file.
pub struct Link {
    /// The gateway's name.
    pub name: String,
    /// Its HTTP client.
    pub client: reqwest::Client,
    /// Its plain-HTTP client for GETs ([`get_plain`]), with the same pool size.
    pub plain: PlainClient,
    /// The gateway's timeout for one request and its answer.
    pub timeout: Duration,
    /// The report URL around a message's id: what comes before and after it.
    dlr: (String, &'static str),
    dry_run: Option<Mutex<std::fs::File>>,
    /// Kannel: its "Not routable" answers in a row, none accepted between, and when the last
    /// came (`kannel::UNROUTABLE_RUN`).
    pub unroutable: kannel::Run,
}

impl Link {
    /// The URL this gateway calls back with a report for message `id`, as what comes before
    /// the id, the id and what comes after it. Kannel fills in its `%` escapes: `%d` report
    /// type, `%A` SMSC answer, `%F` carrier id, `%T` time.
    pub fn dlr_halves(&self, id: i64) -> (&str, i64, &str) {
        (&self.dlr.0, id, self.dlr.1)
    }

    /// The report URL for message `id` ([`Link::dlr_halves`] put together).
    pub fn dlr_url(&self, id: i64) -> String {
        let (before, after) = (&self.dlr.0, self.dlr.1);
        let mut url = String::with_capacity(before.len() + 20 + after.len());
        url.push_str(before);
        let _ = std::fmt::Write::write_fmt(&mut url, format_args!("{id}"));
        url.push_str(after);
        url
    }

    /// The answer for every message of a request to a template-only gateway without a template.
    pub(super) fn needs_template(&self, n: usize) -> Vec<Answer> {
        vec![
            Answer::new(
                Submit::Config,
                Some(format!(
                    "gateway {} sends only approved templates: create the campaign with a template",
                    self.name
                )),
            );
            n
        ]
    }
}

/// One kind of gateway: how a request for some messages is made and answered, and how a
/// message whose answer was lost is looked up again.
pub trait Driver {
    /// Submits `ms` in one request where the kind takes several numbers (at most the kind's
    /// `batch_max`, all with the same text or template parameters), else one by one; one
    /// [`Answer`] per message, in order. Never panics; every failure is an answer.
    fn send(&self, link: &Link, ms: &[Outgoing<'_>]) -> impl Future<Output = Vec<Answer>> + Send;

    /// Asks the provider whether it has a message of `campaign` for `to` sent since `since`
    /// (reconciliation of `unknown` messages). `Ok(None)`: not found, or this kind cannot be
    /// asked.
    fn find(
        &self,
        _link: &Link,
        _to: &str,
        _campaign: i64,
        _since: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<Found>, String>> + Send {
        async { Ok(None) }
    }
}

/// Submits `ms` through driver `d` in requests of at most `batch` messages.
async fn in_batches<D: Driver>(
    d: &D,
    link: &Link,
    batch: usize,
    ms: &[Outgoing<'_>],
) -> Vec<Answer> {
    let mut out = Vec::with_capacity(ms.len());
    for chunk in ms.chunks(batch.max(1)) {
        out.extend(d.send(link, chunk).await);
    }
    out
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// A request that got no answer. The URL is left out of the reason: it carries the gateway's
/// credentials and the report secret, and reasons are shown to every viewer.
pub(super) fn transport_error(e: reqwest::Error) -> Answer {
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

/// A gateway's `Retry-After`, in seconds or as an HTTP date (RFC 9110 §10.2.3; the CAP feed's
/// parser), at most an hour.
pub(super) fn retry_after(headers: &hyper::HeaderMap) -> Option<Duration> {
    let v = headers.get(hyper::header::RETRY_AFTER)?.to_str().ok()?;
    crate::alerts::cap_feed::retry_after(v, Utc::now()).map(|d| d.min(Duration::from_secs(3600)))
}

/// Sends a request and reads the whole answer: status, `Retry-After`, body. A transport
/// failure comes back as its [`Answer`].
/// The most of an answer body read on the plain client: a gateway's answer is a line or a small
/// JSON document; anything longer is cut (and shown cut in the reason).
const PLAIN_BODY_MAX: usize = 64 << 10;

/// GETs `uri` on the plain-HTTP client and reads the whole answer, as [`exchange`] does:
/// status, `Retry-After`, body (lossy UTF-8, the first 64 kB). The gateway's timeout covers the
/// request and its answer. A transport failure comes back as its [`Answer`]: no connection is
/// `Transient` (nothing left), no answer in time or a broken connection is `Lost`.
pub(super) async fn get_plain(
    link: &Link,
    uri: String,
) -> Result<(u16, Option<Duration>, String), Answer> {
    use http_body_util::BodyExt;
    let req = hyper::Request::get(uri)
        .body(http_body_util::Empty::new())
        .map_err(|e| {
            Answer::new(
                Submit::Config,
                Some(format!("gateway {}: bad request URL: {e}", link.name)),
            )
        })?;
    let lost = |what: &str, detail: String| {
        Answer::new(
            Submit::Lost,
            Some(format!(
                "gateway request failed ({what}): {}",
                truncate(&detail, 300)
            )),
        )
    };
    let exchange = async {
        let resp = link.plain.request(req).await.map_err(|e| {
            if e.is_connect() {
                Answer::new(
                    Submit::Transient,
                    Some(format!(
                        "gateway request failed (cannot connect): {}",
                        truncate(&e.to_string(), 300)
                    )),
                )
            } else {
                lost("connection failed", e.to_string())
            }
        })?;
        let status = resp.status().as_u16();
        let after = retry_after(resp.headers());
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while got.len() < PLAIN_BODY_MAX {
            match body.frame().await {
                None => break,
                Some(Err(e)) => return Err(lost("connection failed", e.to_string())),
                Some(Ok(f)) => {
                    if let Some(d) = f.data_ref() {
                        got.extend_from_slice(&d[..d.len().min(PLAIN_BODY_MAX - got.len())]);
                    }
                }
            }
        }
        Ok((status, after, String::from_utf8_lossy(&got).into_owned()))
    };
    match tokio::time::timeout(link.timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(lost("no answer in time", format!("{:?}", link.timeout))),
    }
}

pub(super) async fn exchange(
    req: reqwest::RequestBuilder,
) -> Result<(u16, Option<Duration>, String), Answer> {
    let resp = req.send().await.map_err(transport_error)?;
    let status = resp.status().as_u16();
    let after = retry_after(resp.headers());
    let body = resp.text().await.map_err(transport_error)?;
    Ok((status, after, body))
}

/// The answers to a request whose provider answers one code for all its numbers (Aliyun,
/// 云MAS): `read` is the code read from the body (its class, the reason, the request's id),
/// else the HTTP status decides (an unreadable 200 may have sent everything: lost). Each
/// accepted message's carrier id is the request's id with its number.
pub(super) fn one_code_for_all(
    ms: &[Outgoing<'_>],
    status: u16,
    after: Option<Duration>,
    text: &str,
    read: Option<(tencent::Class, String, Option<String>)>,
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
                        .map(|g| aliyun::carrier_id(g, m.to)),
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
/// URL): 429 and the 5xx as [`server_error`] reads them; 401 and 403 are the account; any
/// other status means the gateway is configured wrong: the campaign waits for an operator,
/// nothing is rejected.
pub(super) fn carrier_status(status: u16) -> Submit {
    if let Some(s) = server_error(status) {
        return s;
    }
    match status {
        401 | 403 => Submit::Account,
        _ => Submit::Config,
    }
}

/// 429 and the 5xx, the same for every kind. 429 and 503 say the server would not take the
/// request now (RFC 6585 §4, RFC 9110 §15.6.4): nothing was sent, try later. 500, 502 and 504
/// may have come after the message went: a server that failed while handling it, a proxy
/// whose upstream got the request and answered wrongly or too late (RFC 9110 §15.6.1, §15.6.3,
/// §15.6.5; Cloudflare's 520 and 524 likewise); retrying those could send it twice, so it is
/// `unknown` (lost), never resent on its own; so is any 5xx not named here (its meaning is
/// not known). 501 and 505 say the request's method or version is not served (§15.6.2,
/// §15.6.6): the gateway is configured wrong, the campaign waits for an operator. 511 (a
/// captive network's login, RFC 6585 §6) and Cloudflare's 521–523, 525 and 526 (the origin
/// down, unreachable, or its TLS refused) say nothing reached the gateway: transient. `None`
/// for any other status.
pub(super) fn server_error(status: u16) -> Option<Submit> {
    Some(match status {
        429 | 503 | 511 | 521..=523 | 525 | 526 => Submit::Transient,
        501 | 505 => Submit::Config,
        500..=599 => Submit::Lost,
        _ => return None,
    })
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
pub(super) fn signed_host(url: &url::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => String::new(),
    }
}

/// The classification of an HTTP status (accepted statuses given): 429 and 5xx as
/// [`server_error`] reads them. 401 says the request's credentials are missing
/// or wrong (RFC 9110 §15.5.2): the account, so a wrong password takes the gateway out of
/// rotation instead of rejecting the whole list one number at a time. 403 stays permanent:
/// providers use it for one destination too (a country not enabled, a number refused), and as
/// the account it would requeue that number, and hold the gateway, for ever. Kannel refines
/// this by the body of its 403s.
pub(super) fn classify(status: u16, accepted: impl Fn(u16) -> bool) -> Submit {
    if accepted(status) {
        Submit::Accepted
    } else if let Some(s) = server_error(status) {
        s
    } else if status == 401 {
        Submit::Account
    } else {
        Submit::Permanent
    }
}

/// Fills `{name}` placeholders of `template` in one pass: a value is never scanned again, so
/// a message text holding `{password}` or `{dlr_url}` stays that text (it does not pull the
/// gateway's secrets into the SMS). Unknown `{…}` are left as they are.
pub(super) fn fill(template: &str, vars: &[(&str, &str)], encode: bool) -> String {
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

pub(super) fn fill_json(v: &serde_json::Value, vars: &[(&str, &str)]) -> serde_json::Value {
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
    /// It is out of rotation for a reason a daemon before this one stored (`reason`): a Kannel
    /// out for a run of "Not routable" answers resumes the run (`kannel::Run::resume`).
    pub fn resume_outage(&self, reason: &str) {
        if matches!(self.cfg.kind, GatewayKind::Kannel(_)) && reason.contains(kannel::ROUTED_NONE) {
            self.link.unroutable.resume();
        }
    }

    /// Prepares a gateway; `callback_url` is the daemon's base URL for delivery reports.
    pub fn new(cfg: GatewayConfig, callback_url: &str) -> std::io::Result<Gateway> {
        let dry_run = match &cfg.kind {
            GatewayKind::DryRun(d) => {
                let path = &d.path;
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
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.timeout.min(Duration::from_secs(5))));
        connector.set_nodelay(true);
        let plain =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(cfg.in_flight)
                .build(connector);
        let dlr = (
            format!(
                "{callback_url}/api/v1/sms/dlr/{}?secret={}&id=",
                cfg.name,
                cfg.dlr_secret.as_deref().unwrap_or("")
            ),
            match cfg.kind {
                GatewayKind::Kannel(_) => "&type=%d&answer=%A&fid=%F&ts=%T",
                _ => "",
            },
        );
        let link = Link {
            name: cfg.name.clone(),
            client,
            plain,
            timeout: cfg.timeout,
            dlr,
            dry_run,
            unroutable: kannel::Run::default(),
        };
        Ok(Gateway { cfg, link })
    }

    /// The URL this gateway calls back with a report for message `id` ([`Link::dlr_url`]).
    pub fn dlr_url(&self, id: i64) -> String {
        self.link.dlr_url(id)
    }

    /// Submits one message. Never panics; every failure is an [`Answer`].
    pub async fn submit(&self, m: &Outgoing<'_>) -> Answer {
        self.submit_many(std::slice::from_ref(m))
            .await
            .pop()
            .unwrap_or_else(|| Answer::new(Submit::Lost, None))
    }

    /// Submits messages that share their text or template parameters, in as few requests as
    /// the gateway allows (`batch_max` numbers each); one answer per message, in order.
    pub async fn submit_many(&self, ms: &[Outgoing<'_>]) -> Vec<Answer> {
        let (link, batch) = (&self.link, self.cfg.kind.batch_max());
        match &self.cfg.kind {
            GatewayKind::DryRun(d) => in_batches(d, link, batch, ms).await,
            GatewayKind::Kannel(d) => in_batches(d, link, batch, ms).await,
            GatewayKind::Http(d) => in_batches(d.as_ref(), link, batch, ms).await,
            GatewayKind::Tencent(d) => in_batches(d, link, batch, ms).await,
            GatewayKind::Aliyun(d) => in_batches(d, link, batch, ms).await,
            GatewayKind::CmccMas(d) => in_batches(d, link, batch, ms).await,
        }
    }

    /// Asks the provider about a message whose submit answer was lost ([`Driver::find`]).
    pub async fn find(
        &self,
        to: &str,
        campaign: i64,
        since: DateTime<Utc>,
    ) -> Result<Option<Found>, String> {
        let link = &self.link;
        match &self.cfg.kind {
            GatewayKind::DryRun(d) => d.find(link, to, campaign, since).await,
            GatewayKind::Kannel(d) => d.find(link, to, campaign, since).await,
            GatewayKind::Http(d) => d.find(link, to, campaign, since).await,
            GatewayKind::Tencent(d) => d.find(link, to, campaign, since).await,
            GatewayKind::Aliyun(d) => d.find(link, to, campaign, since).await,
            GatewayKind::CmccMas(d) => d.find(link, to, campaign, since).await,
        }
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
        // It may have been sent before the server failed, or behind a proxy.
        assert_eq!(classify(500, ok), Submit::Lost);
        assert_eq!(classify(502, ok), Submit::Lost);
        assert_eq!(classify(504, ok), Submit::Lost);
        // The method is not served: configured wrong. A proxy that reached nothing: later.
        assert_eq!(classify(501, ok), Submit::Config);
        assert_eq!(classify(521, ok), Submit::Transient);
        // A 5xx of unknown meaning may have been sent.
        assert_eq!(classify(599, ok), Submit::Lost);
        assert_eq!(classify(400, ok), Submit::Permanent);
        assert_eq!(classify(404, ok), Submit::Permanent);
        assert_eq!(classify(401, ok), Submit::Account);
        assert_eq!(classify(403, ok), Submit::Permanent);
    }

    /// A closed loopback port (nothing listens on it).
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A file holding `text` (mode 0600), for a `*_file` secret.
    fn secret_file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    /// The gateway of one `[[sms.gateways]]` table whose other lines are `lines`; its
    /// delivery-report secret is written to a file here.
    fn gateway(lines: &str) -> Gateway {
        let dlr = secret_file("0123456789abcdef0123");
        let cfg = crate::config::Config::parse(
            "t.toml",
            &format!(
                "[schedule]\nchannels = [\"lobby\"]\n[[sms.gateways]]\n{lines}\ndlr_secret_file = {:?}\n",
                dlr.path()
            ),
        )
        .unwrap();
        Gateway::new(cfg.sms.gateways[0].clone(), "http://127.0.0.1:8080").unwrap()
    }

    #[tokio::test]
    async fn https_gateways_build_and_a_refused_connection_is_transient() {
        let port = closed_port();
        let gw = gateway(&format!(
            "name = \"tls\"\nkind = \"http\"\nurl = \"https://127.0.0.1:{port}/send?to={{to}}\"\nbody = \"none\""
        ));
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

    /// A one-connection HTTP stand-in on loopback: reads one request head, sends `answer`
    /// (nothing at all for `None`: it holds the connection), and hands back the request line.
    fn one_answer(answer: Option<Vec<u8>>) -> (u16, tokio::sync::oneshot::Receiver<String>) {
        use std::io::{BufRead, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let (mut conn, _) = l.accept().unwrap();
            let mut r = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut h = String::new();
            while r.read_line(&mut h).is_ok_and(|n| n > 2) {
                h.clear();
            }
            let _ = tx.send(line.trim_end().to_owned());
            match answer {
                Some(a) => conn.write_all(&a).unwrap(),
                None => std::thread::sleep(Duration::from_secs(5)),
            }
        });
        (port, rx)
    }

    /// A `kannel` gateway on `http://127.0.0.1:{port}` with a 300 ms timeout, and its
    /// password file (kept while the gateway is in use).
    fn kannel_at(port: u16) -> (Gateway, tempfile::NamedTempFile) {
        let pw = secret_file("pw-0123456789-secret");
        let gw = gateway(&format!(
            "name = \"k\"\nkind = \"kannel\"\nurl = \"http://127.0.0.1:{port}/cgi-bin/sendsms\"\nusername = \"marquee\"\npassword_file = {:?}\ntimeout = \"300ms\"",
            pw.path()
        ));
        (gw, pw)
    }

    fn message() -> Outgoing<'static> {
        Outgoing {
            id: 9,
            campaign: 1,
            to: "+8613800138000",
            from: "12345",
            text: "开放日 Open Day",
            template_id: None,
            params: &[],
            param_names: &[],
        }
    }

    /// Kannel over plain HTTP goes through hyper directly (`get_plain`): every answer is
    /// classified as the reqwest path classifies it, and no reason shows the URL's secrets.
    #[tokio::test]
    async fn plain_http_kannel_answers_are_classified_like_the_others() {
        let (port, line) = one_answer(Some(
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 26\r\n\r\n0: Accepted for delivery\r\n"
                .to_vec(),
        ));
        let a = kannel_at(port).0.submit(&message()).await;
        assert_eq!((a.submit, a.reason), (Submit::Accepted, None));
        let line = line.await.unwrap();
        assert!(
            line.starts_with("GET /cgi-bin/sendsms?username=marquee&password=pw-0123456789-secret&from=12345&to=%2B8613800138000&text=")
                && line.ends_with(" HTTP/1.1"),
            "{line}"
        );
        // Too many requests, a long body: transient, its Retry-After kept, the reason cut.
        let mut busy =
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 100000\r\n\r\n"
                .to_vec();
        busy.extend(std::iter::repeat_n(b'x', 100_000));
        let (port, _) = one_answer(Some(busy));
        let a = kannel_at(port).0.submit(&message()).await;
        assert_eq!(a.submit, Submit::Transient, "{a:?}");
        assert_eq!(a.retry_after, Some(Duration::from_secs(7)));
        assert!(a.reason.as_ref().unwrap().len() < 400, "{a:?}");
        // Sent, never answered: lost (the message becomes `unknown`), within the timeout.
        let (port, _) = one_answer(None);
        let t = std::time::Instant::now();
        let a = kannel_at(port).0.submit(&message()).await;
        assert_eq!(a.submit, Submit::Lost, "{a:?}");
        assert!(a.reason.as_ref().unwrap().contains("no answer in time"));
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        // Nobody listening: transient (nothing left this machine).
        let a = kannel_at(closed_port()).0.submit(&message()).await;
        assert_eq!(a.submit, Submit::Transient, "{a:?}");
        let reason = a.reason.unwrap();
        assert!(reason.contains("cannot connect"), "{reason}");
        assert!(
            !reason.contains("secret") && !reason.contains("127.0.0.1"),
            "{reason}"
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
