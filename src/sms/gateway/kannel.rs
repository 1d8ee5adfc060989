//! The `kannel` driver: Kannel's `/cgi-bin/sendsms` (GET with the message in the query, or POST
//! with `X-Kannel-*` headers), one message per request, the delivery report URL with Kannel's
//! `%` escapes. Kannel answers `0: Accepted for delivery` or `3: Queued for later delivery`.

use url::form_urlencoded;

use super::{Answer, Driver, Link, Outgoing, classify, exchange, get_plain, truncate};
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
            let full = self.get_url(m, ucs2, &mask, &dlr_url);
            if url.scheme() == "http" {
                // A plain-HTTP gateway (Kannel is usually on the same host or LAN): hyper's
                // pool directly.
                return self.answer(get_plain(link, full).await);
            }
            link.client.get(full)
        };
        self.answer(exchange(req).await)
    }

    /// The sendsms GET URL for `m`: the configured URL (its query kept, a fragment dropped)
    /// with the parameters in Kannel's order, form-encoded as `Url::query_pairs_mut` would.
    fn get_url(&self, m: &Outgoing<'_>, ucs2: bool, mask: &str, dlr_url: &str) -> String {
        let base = self.url[..url::Position::AfterQuery].trim_end_matches(['?', '&']);
        let sep = if self.url.query().is_some_and(|q| !q.is_empty()) {
            '&'
        } else {
            '?'
        };
        let mut out =
            String::with_capacity(base.len() + m.text.len() * 3 + dlr_url.len() * 2 + 128);
        out.push_str(base);
        out.push(sep);
        let mut q = form_urlencoded::Serializer::for_suffix(out, base.len() + 1);
        q.append_pair("username", &self.username)
            .append_pair("password", &self.password)
            .append_pair("from", m.from)
            .append_pair("to", m.to)
            .append_pair("text", m.text)
            .append_pair("charset", "UTF-8")
            .append_pair("coding", if ucs2 { "2" } else { "0" })
            .append_pair("dlr-mask", mask)
            .append_pair("dlr-url", dlr_url);
        if let Some(s) = &self.smsc {
            q.append_pair("smsc", s);
        }
        q.finish()
    }

    /// Kannel's answer to one sendsms request.
    fn answer(&self, got: Result<(u16, Option<std::time::Duration>, String), Answer>) -> Answer {
        let (status, after, body) = match got {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The URL `one` sends: built as `Url::query_pairs_mut` builds it (the driver did so
    /// before it called hyper directly), whatever query the configured URL already has.
    #[test]
    fn the_get_query_is_what_url_would_build() {
        for base in [
            "http://127.0.0.1:13013/cgi-bin/sendsms",
            "http://127.0.0.1:13013/cgi-bin/sendsms?",
            "http://kannel.example:13013/cgi-bin/sendsms?account=a%20b",
            "http://kannel.example/cgi-bin/sendsms#frag",
        ] {
            let cfg = KannelConfig {
                url: base.parse().unwrap(),
                username: "u s&r".into(),
                password: "p=w+d".into(),
                smsc: Some("cm 1".into()),
                dlr_mask: 31,
                post: false,
            };
            let m = Outgoing {
                id: 7,
                campaign: 1,
                to: "+8613800138000",
                from: "10086",
                text: "政务开放日 Open Day: 9:00 & 10% off?",
                template_id: None,
                params: &[],
                param_names: &[],
            };
            let dlr = "http://127.0.0.1:8080/api/v1/sms/dlr/k?secret=s&id=7&type=%d";
            let ours = cfg.get_url(&m, true, "31", dlr);
            let mut want = cfg.url.clone();
            want.set_fragment(None);
            want.query_pairs_mut()
                .append_pair("username", "u s&r")
                .append_pair("password", "p=w+d")
                .append_pair("from", m.from)
                .append_pair("to", m.to)
                .append_pair("text", m.text)
                .append_pair("charset", "UTF-8")
                .append_pair("coding", "2")
                .append_pair("dlr-mask", "31")
                .append_pair("dlr-url", dlr)
                .append_pair("smsc", "cm 1");
            assert_eq!(ours, want.as_str(), "{base}");
        }
    }
}
