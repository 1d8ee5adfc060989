//! The `kannel` driver: Kannel's `/cgi-bin/sendsms` (GET with the message in the query, or POST
//! with `X-Kannel-*` headers), one message per request, the delivery report URL with Kannel's
//! `%` escapes. Kannel answers `0: Accepted for delivery` or `3: Queued for later delivery`.

use super::{Answer, Driver, Link, Outgoing, classify, exchange, truncate};
use crate::domain::delivery::Submit;
use crate::domain::segments::{Encoding, encoding};
use crate::sms::config::KannelConfig;

impl Driver for KannelConfig {
    async fn send(&self, link: &Link, ms: &[Outgoing<'_>]) -> Vec<Answer> {
        let mut out = Vec::with_capacity(ms.len());
        for m in ms {
            out.push(self.one(link, m).await);
        }
        out
    }
}

impl KannelConfig {
    async fn one(&self, link: &Link, m: &Outgoing<'_>) -> Answer {
        let KannelConfig {
            url,
            username,
            password,
            smsc,
            dlr_mask,
            post,
        } = self;
        let ucs2 = encoding(m.text) == Encoding::Ucs2;
        let dlr_url = link.dlr_url(m.id);
        let mask = dlr_mask.to_string();
        let req = if *post {
            let mut r = link
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
            link.client.get(u)
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
}
