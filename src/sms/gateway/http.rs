//! The generic `http` driver: a request built from the gateway's template (URL, method, form or
//! JSON body with `{placeholders}`, optional TC3 signing), one message or a batch
//! (`batch_max`, `{to_list}`, `{to_json}`), its answer classed by status and then by the body's
//! codes where configured (`outcome_pointer`, `results_pointer`, `codes`).

use url::form_urlencoded;

use super::{
    Answer, Driver, Link, Outgoing, carrier_status, classify, exchange, fill, fill_json,
    signed_host, truncate,
};
use crate::domain::delivery::Submit;
use crate::sms::config::{HttpBody, HttpSign, HttpTemplate};

impl Driver for HttpTemplate {
    async fn send(&self, link: &Link, ms: &[Outgoing<'_>]) -> Vec<Answer> {
        let Some(req) = self.request(link, ms) else {
            return Vec::new();
        };
        match exchange(req).await {
            Ok((status, after, body)) => self.read(ms, status, after, &body),
            Err(a) => vec![a; ms.len()],
        }
    }
}

impl HttpTemplate {
    /// The request for `ms` (one, or a batch with the same text): URL, headers and body from
    /// the template with the placeholders filled, signed where configured. `None` for no
    /// message.
    fn request(&self, link: &Link, ms: &[Outgoing<'_>]) -> Option<reqwest::RequestBuilder> {
        let t = self;
        let m = ms.first()?;
        let id = m.id.to_string();
        let dlr_url = link.dlr_url(m.id);
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
        let mut req = link.client.request(t.method.clone(), &url);
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
        Some(req)
    }

    /// The answers to a request for `ms`: by status, then by the body's request-level code
    /// (`outcome_pointer`), then per number (`results_pointer`) where configured.
    fn read(
        &self,
        ms: &[Outgoing<'_>],
        status: u16,
        after: Option<std::time::Duration>,
        body: &str,
    ) -> Vec<Answer> {
        let (t, n) = (self, ms.len());
        let by_status = classify(status, |s| t.accept_status.contains(&s));
        let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
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
            return by_status_alone(ms, (status, by_status), after, body, request_id.as_deref());
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
        self.per_number(o, ms, results, request_id.as_deref())
    }

    /// One answer per message from the per-number results, matched by the number (providers
    /// drop or keep the `+` and the country code); a number the answer does not name is lost.
    fn per_number(
        &self,
        o: &crate::sms::config::BodyOutcome,
        ms: &[Outgoing<'_>],
        results: Vec<serde_json::Value>,
        request_id: Option<&str>,
    ) -> Vec<Answer> {
        let n = ms.len();
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
                                .or_else(|| carrier_for(request_id, x.to, n))
                        })
                        .flatten(),
                    submit: c,
                    retry_after: None,
                }
            })
            .collect()
    }
}

/// The answers when only the HTTP status speaks: one message a request (a batch is not
/// rejected for good on a status alone: its status is read as a carrier's without a code).
fn by_status_alone(
    ms: &[Outgoing<'_>],
    (status, by_status): (u16, Submit),
    after: Option<std::time::Duration>,
    body: &str,
    request_id: Option<&str>,
) -> Vec<Answer> {
    let n = ms.len();
    let by_status = if n > 1 && by_status != Submit::Accepted {
        carrier_status(status)
    } else {
        by_status
    };
    let reason =
        (by_status != Submit::Accepted).then(|| format!("{status} {}", truncate(body.trim(), 300)));
    ms.iter()
        .map(|x| Answer {
            submit: by_status.clone(),
            reason: reason.clone(),
            carrier_id: carrier_for(request_id, x.to, n),
            retry_after: after,
        })
        .collect()
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
