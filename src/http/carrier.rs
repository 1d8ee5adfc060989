//! What carriers push to us without an id of ours: delivery reports as JSON arrays, matched
//! by the carrier's id stored at submit, and replies (MO) that may opt a number out. Each is
//! answered with the acknowledgement the provider expects (anything else makes it push
//! again), and only after what it carried is on disk.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::{AppState, audit};
use crate::domain::delivery::Report;
use crate::sms::config::{GatewayConfig, GatewayKind};
use crate::sms::gateway::{aliyun, tencent};

/// The gateway, if `secret` (from the query) is its delivery-report secret.
pub fn authorised<'a>(
    s: &'a AppState,
    gateway: &str,
    uri: &axum::http::Uri,
) -> Result<&'a GatewayConfig, ApiError> {
    let Some(g) = s.cfg.sms.gateway(gateway) else {
        return Err(ApiError::not_found(format!("no gateway {gateway:?}")));
    };
    let given: String = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "secret")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let expected = g.dlr_secret.as_deref().unwrap_or("");
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
        return Err(ApiError::forbidden(format!(
            "bad or missing secret for gateway {gateway:?}"
        )));
    }
    Ok(g)
}

/// The answer to a delivery report or a reply on a gateway whose provider expects no
/// particular acknowledgement.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Acknowledged {
    /// Always true.
    pub ok: bool,
}

/// Tencent Cloud SMS's expected acknowledgement of a pushed report or reply (`tencent::ACK`;
/// Tencent Cloud SMS callback docs).
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TencentAck {
    /// `0`.
    pub result: i64,
    /// `OK`.
    pub errmsg: String,
}

/// Aliyun SMS's expected acknowledgement of a pushed report or reply (`aliyun::ACK`; Aliyun
/// SMS HTTP batch push docs).
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AliyunAck {
    /// `0`.
    pub code: i64,
    /// For people.
    pub msg: String,
}

/// What the report and reply intakes answer a carrier with: the acknowledgement its provider
/// expects (Tencent, Aliyun), `{"ok": true}`, or, for a per-message report, the message's new
/// state. An `http` gateway with `dlr_array` answers its configured `dlr_ack_body` with its
/// `dlr_ack_content_type` instead.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum CarrierAnswer {
    /// A per-message report stored.
    Reported(Reported),
    /// Stored.
    Acknowledged(Acknowledged),
    /// A Tencent gateway's push stored.
    Tencent(TencentAck),
    /// An Aliyun gateway's push stored.
    Aliyun(AliyunAck),
}

/// A per-message delivery report stored.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Reported {
    /// Our message id.
    pub id: i64,
    /// Its state now (`delivered`, `failed`, …).
    pub state: String,
}

fn ack(g: &GatewayConfig) -> Response {
    let (body, ctype) = match &g.kind {
        GatewayKind::Tencent(_) => (tencent::ACK.to_owned(), "application/json".to_owned()),
        GatewayKind::Aliyun(_) => (aliyun::ACK.to_owned(), "application/json".to_owned()),
        GatewayKind::Http(h) if h.dlr_array.is_some() => {
            let a = h.dlr_array.as_ref().expect("checked");
            (a.ack_body.clone(), a.ack_content_type.clone())
        }
        _ => {
            return axum::Json(CarrierAnswer::Acknowledged(Acknowledged { ok: true }))
                .into_response();
        }
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, ctype)], body).into_response()
}

/// Whether the gateway's provider pushes reports as arrays to one account URL.
pub fn pushes_arrays(g: &GatewayConfig) -> bool {
    match &g.kind {
        GatewayKind::Tencent(_) | GatewayKind::Aliyun(_) => true,
        GatewayKind::Http(h) => h.dlr_array.is_some(),
        _ => false,
    }
}

/// One pushed report: the carrier's id for the message (or ours), its code, meaning and raw
/// element.
struct Pushed {
    sid: String,
    our_id: Option<i64>,
    code: String,
    report: Report,
    raw: String,
}

/// A generic gateway's pushed array, read by its configured pointers.
fn read_generic(
    h: &crate::sms::config::HttpTemplate,
    a: &crate::sms::config::ArrayReports,
    body: &[u8],
) -> Result<Vec<Pushed>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let items = v
        .pointer(&a.items_pointer)
        .and_then(|x| x.as_array())
        .ok_or_else(|| format!("no array at {:?}", a.items_pointer))?;
    let text = |e: &serde_json::Value, p: &str| {
        e.pointer(p).and_then(|x| match x {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        })
    };
    let read = items.iter().enumerate().map(|(i, e)| {
        let status = text(e, &a.status).ok_or(format!("report [{i}]: no {}", a.status))?;
        let is = |list: &[String]| list.iter().any(|v| v.eq_ignore_ascii_case(&status));
        let report = if is(&h.dlr_delivered) {
            Report::Delivered
        } else if is(&h.dlr_failed) {
            Report::Undelivered
        } else if status.eq_ignore_ascii_case("expired") {
            Report::Expired
        } else if status.eq_ignore_ascii_case("rejected") {
            Report::SmscRejected
        } else {
            Report::Progress
        };
        let our_id = a
            .our_id
            .as_deref()
            .and_then(|p| text(e, p))
            .and_then(|x| x.trim().parse::<i64>().ok());
        let sid = a
            .carrier_id
            .as_deref()
            .and_then(|p| text(e, p))
            .unwrap_or_default();
        if our_id.is_none() && sid.is_empty() {
            return Err(format!("report [{i}]: no id of ours or the carrier's"));
        }
        Ok(Pushed {
            sid,
            our_id,
            code: status,
            report,
            raw: e.to_string(),
        })
    });
    let mut out = Vec::with_capacity(items.len());
    for r in read {
        match r {
            Ok(p) => out.push(p),
            Err(e) => tracing::warn!(error = %e, "unreadable delivery report skipped"),
        }
    }
    Ok(out)
}

/// The elements of a pushed report body. An element that cannot be read is logged and
/// skipped: the rest are stored and the push acknowledged (a refused push would come back with
/// the same bad element, for ever). `Err` only when the body is not an array of reports.
fn read_pushed(g: &GatewayConfig, body: &[u8]) -> Result<Vec<Pushed>, String> {
    if let GatewayKind::Http(h) = &g.kind
        && let Some(a) = &h.dlr_array
    {
        return read_generic(h, a, body);
    }
    let elements = match serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))? {
        serde_json::Value::Array(a) => a,
        o @ serde_json::Value::Object(_) => vec![o],
        _ => return Err("not a JSON array of reports".into()),
    };
    let mut out = Vec::with_capacity(elements.len());
    for (i, e) in elements.into_iter().enumerate() {
        let one = serde_json::to_vec(&e).unwrap_or_default();
        let read: Result<Vec<Pushed>, String> = match g.kind {
            GatewayKind::Aliyun(_) => aliyun::read_reports(&one).map(|v| {
                v.into_iter()
                    .map(|r| Pushed {
                        sid: r.carrier_id,
                        our_id: None,
                        code: r.code,
                        report: r.report,
                        raw: r.raw,
                    })
                    .collect()
            }),
            _ => tencent::read_reports(&one).map(|v| {
                v.into_iter()
                    .map(|r| Pushed {
                        sid: r.sid,
                        our_id: None,
                        code: r.code,
                        report: r.report,
                        raw: r.raw,
                    })
                    .collect()
            }),
        };
        match read {
            Ok(v) => out.extend(v),
            Err(e) => {
                let raw: String = String::from_utf8_lossy(&one).chars().take(300).collect();
                tracing::warn!(gateway = %g.name, element = i, error = %e, raw = %raw, "unreadable delivery report skipped");
            }
        }
    }
    Ok(out)
}

/// A pushed array of reports (Tencent, Aliyun, a generic gateway's `dlr_items_pointer`):
/// every element stored (matched by the
/// carrier's id, or kept as an orphan) before the acknowledgement. A store failure answers
/// 503, so the provider pushes the whole array again (stored elements are not applied twice).
pub async fn dlr_array(s: &AppState, g: &GatewayConfig, body: &[u8]) -> Result<Response, ApiError> {
    let items = read_pushed(g, body).map_err(|e| ApiError::bad_field("body", e))?;
    let mut waits = Vec::with_capacity(items.len());
    for it in items {
        let (reply, answer) = tokio::sync::oneshot::channel();
        s.reports
            .send((
                crate::store::sms::ReportIn {
                    id: it.our_id.unwrap_or(0),
                    carrier_id: it.our_id.is_none().then(|| it.sid.clone()),
                    gateway: g.name.clone(),
                    report: Some(it.report),
                    code: it.code.clone(),
                    raw: it.raw.chars().take(2000).collect(),
                },
                reply,
            ))
            .await
            .map_err(|_| ApiError::internal("the report intake is not running"))?;
        waits.push((it.sid, answer));
    }
    let (mut matched, mut orphans) = (0usize, 0usize);
    for (sid, answer) in waits {
        match answer
            .await
            .map_err(|_| ApiError::internal("the report intake stopped"))?
        {
            Ok(Some(_)) => matched += 1,
            Ok(None) => {
                orphans += 1;
                tracing::warn!(gateway = %g.name, sid = %sid, "delivery report for no message we sent through this gateway; kept");
            }
            Err(e) => {
                return Err(ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "unavailable",
                    message: format!("cannot store the reports now ({e}); push them again"),
                    field: None,
                });
            }
        }
    }
    tracing::debug!(gateway = %g.name, matched, orphans, "delivery reports");
    Ok(ack(g))
}

/// `GET /api/v1/sms/gateways`: each gateway, its kind, and whether it is out of rotation
/// (an account error: balance, credentials, quota) with the provider's words and until when
/// (on a standby: as the leader last stored it).
#[utoipa::path(get, path = "/api/v1/sms/gateways", tag = "sms", security(("bearer" = [])), responses((status = 200, description = "the gateways and their state", body = GatewayList), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn gateways(
    _: super::auth::Viewer,
    State(s): State<Arc<AppState>>,
) -> Result<axum::Json<GatewayList>, ApiError> {
    // A standby dispatches nothing: it shows what the leader stored.
    let stored = if crate::leader::role() == crate::leader::Role::Standby {
        let now = chrono::Utc::now();
        let rows = s.store.call(|st| st.gateway_outages()).await?;
        Some(
            rows.into_iter()
                .filter(|(_, _, until)| *until > now)
                .map(|(g, reason, until)| (g, (reason, until)))
                .collect::<std::collections::BTreeMap<_, _>>(),
        )
    } else {
        None
    };
    let list: Vec<_> = s
        .cfg
        .sms
        .gateways
        .iter()
        .map(|g| {
            let out = match &stored {
                Some(m) => m.get(&g.name).cloned(),
                None => s.sms_health.get(&g.name),
            };
            GatewayView {
                name: g.name.clone(),
                kind: g.kind.name(),
                templates_only: g.kind.templates_only(),
                batch_max: g.kind.batch_max(),
                messages_per_second: g.messages_per_second,
                out_of_rotation: out.is_some(),
                half_open: stored.is_none() && s.sms_health.half_open(&g.name),
                reason: out.as_ref().map(|o| o.0.clone()),
                until: out.map(|o| o.1),
            }
        })
        .collect();
    Ok(axum::Json(GatewayList { gateways: list }))
}

/// `GET /api/v1/sms/gateways`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct GatewayList {
    /// In failover order.
    pub gateways: Vec<GatewayView>,
}

/// A gateway and whether it is in rotation.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct GatewayView {
    /// Its name.
    pub name: String,
    /// `kannel`, `http`, `tencent`, `aliyun`, `cmcc-mas` or `dry-run`.
    pub kind: &'static str,
    /// Whether it sends only approved templates.
    pub templates_only: bool,
    /// Numbers one request carries.
    pub batch_max: usize,
    /// Its pace.
    pub messages_per_second: f64,
    /// Taken out after an account error (balance, credentials, quota).
    pub out_of_rotation: bool,
    /// After a failure it takes one request of one message at a time until one is answered
    /// for its message (half-open, as a circuit breaker); also while out of rotation for an
    /// account error (it takes one request when back). Always `false` on a standby, which
    /// dispatches nothing.
    pub half_open: bool,
    /// The provider's words, when out.
    pub reason: Option<String>,
    /// Until when (RFC 3339), when out.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

/// `GET /api/v1/sms/templates`: the approved templates (`[[sms.templates]]`): name, text,
/// category, variables, and the gateways that have each.
#[utoipa::path(get, path = "/api/v1/sms/templates", tag = "sms", security(("bearer" = [])), responses((status = 200, description = "the templates", body = TemplateList), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low")))]
pub async fn templates(
    _: super::auth::Viewer,
    State(s): State<Arc<AppState>>,
) -> axum::Json<TemplateList> {
    let list: Vec<_> = s
        .cfg
        .sms
        .templates
        .iter()
        .map(|t| TemplateView {
            name: t.name.clone(),
            text: t.text.clone(),
            category: t.category,
            variables: t.vars.clone(),
            gateways: t.ids.keys().cloned().collect(),
        })
        .collect();
    axum::Json(TemplateList { templates: list })
}

/// `GET /api/v1/sms/templates`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TemplateList {
    /// As configured.
    pub templates: Vec<TemplateView>,
}

/// An approved template.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TemplateView {
    /// Its local name.
    pub name: String,
    /// The approved text with its `{{variables}}`.
    pub text: String,
    /// `notification` or `marketing`.
    #[schema(value_type = String, example = "notification")]
    pub category: crate::sms::config::Category,
    /// Its variables, in order.
    pub variables: Vec<String>,
    /// The gateways that have its id.
    pub gateways: Vec<String>,
}

/// Whether a reply asks to stop: the whole reply, trimmed of spaces and final punctuation,
/// is one of the keywords (compared in upper case).
pub fn is_optout(text: &str, keywords: &[String]) -> bool {
    let t = text
        .trim()
        .trim_end_matches(['。', '.', '!', '！', ' ', '\u{3000}'])
        .trim()
        .to_uppercase();
    keywords.contains(&t)
}

/// `POST /api/v1/sms/mo/{gateway}?secret=…`: a reply (MO). Tencent pushes a JSON object
/// (`mobile`, `nationcode`, `text`); other gateways give `from` and `text` in the query, a
/// form or a JSON object (Kannel's sms-service `get-url` with `from=%p&text=%a`). A reply that
/// is an opt-out keyword (`sms.optout_keywords`) puts the number on the opt-out list (audited);
/// every reply is kept. Answered with the provider's acknowledgement.
#[utoipa::path(post, path = "/api/v1/sms/mo/{gateway}", tag = "sms", params(("gateway" = String, Path, description = "gateway name"), ("secret" = String, Query, description = "the gateway's report secret")), responses((status = 200, description = "stored; the provider's acknowledgement", content((CarrierAnswer = "application/json"), (String = "text/plain"))), (status = 400, description = "not a reply"), (status = 403, description = "bad secret"), (status = 404, description = "no such gateway")))]
pub async fn mo(
    State(s): State<Arc<AppState>>,
    Path(gateway): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let g = authorised(&s, &gateway, &uri)?;
    let replies = match &g.kind {
        GatewayKind::Tencent(_) => {
            vec![tencent::read_reply(&body).map_err(|e| ApiError::bad_field("body", e))?]
        }
        GatewayKind::Aliyun(_) => {
            aliyun::read_replies(&body).map_err(|e| ApiError::bad_field("body", e))?
        }
        _ => {
            let fields = super::campaigns::callback_fields(&uri, &headers, &body)?;
            let from = ["from", "mobile", "phone"]
                .iter()
                .find_map(|k| fields.get(*k).cloned())
                .ok_or_else(|| ApiError::bad_field("from", "no from (the replying number)"))?;
            let text = ["text", "content", "body"]
                .iter()
                .find_map(|k| fields.get(*k).cloned())
                .ok_or_else(|| ApiError::bad_field("text", "no text"))?;
            vec![(from, text)]
        }
    };
    // Chinese providers write mainland numbers without +86.
    let region = match g.kind {
        GatewayKind::Tencent(_) | GatewayKind::Aliyun(_) => phonenumber::country::Id::CN,
        _ => s.cfg.sms.default_region,
    };
    // What identifies this push (a reply pushed again is kept once): its query (without the
    // secret) and its body.
    let query: String = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k != "secret")
        .map(|(k, v)| format!("{k}={v}&"))
        .collect();
    let raw: String = (query + &String::from_utf8_lossy(&body))
        .chars()
        .take(2000)
        .collect();
    for (raw_number, text) in replies {
        // One reply from a number we cannot read does not hold up the others.
        let number = match crate::domain::phone::normalize(&raw_number, region) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(gateway = %g.name, from = %crate::domain::phone::mask(&raw_number), error = %e, "reply from an unreadable number skipped");
                continue;
            }
        };
        let optout = is_optout(&text, &s.cfg.sms.optout_keywords);
        let (gw, n, t, r) = (g.name.clone(), number.clone(), text.clone(), raw.clone());
        let joined = s
            .store
            .call(move |store| store.record_reply(&gw, &n, &t, optout, &r, Utc::now()))
            .await?;
        if joined {
            audit(
                &s,
                &format!("mo:{}", g.name),
                "optout.add",
                &crate::domain::phone::mask(&number),
                json!({"reply": text, "gateway": g.name}),
            )
            .await?;
            tracing::info!(gateway = %g.name, number = %crate::domain::phone::mask(&number), "opted out by reply");
        }
    }
    Ok(ack(g))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_acknowledgements_are_what_the_providers_get() {
        let t: TencentAck = serde_json::from_str(tencent::ACK).unwrap();
        assert_eq!((t.result, t.errmsg.as_str()), (0, "OK"));
        let a: AliyunAck = serde_json::from_str(aliyun::ACK).unwrap();
        assert_eq!(a.code, 0);
    }

    #[test]
    fn optout_keywords_match_the_whole_reply() {
        let k: Vec<String> = crate::sms::config::OPTOUT_KEYWORDS
            .iter()
            .map(|k| (*k).to_owned())
            .collect();
        for yes in ["TD", " td ", "退订", "退订。", "R", "stop!", "Ｔ"] {
            if yes == "Ｔ" {
                // Full-width letters are not folded: a reply "Ｔ" is kept, not an opt-out.
                assert!(!is_optout(yes, &k));
                continue;
            }
            assert!(is_optout(yes, &k), "{yes}");
        }
        for no in ["谢谢", "TD please call me", "Stopover", ""] {
            assert!(!is_optout(no, &k), "{no}");
        }
    }
}
