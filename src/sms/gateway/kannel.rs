//! The `kannel` driver: Kannel's `/cgi-bin/sendsms` (GET with the message in the query, or POST
//! with `X-Kannel-*` headers), one message per request, the delivery report URL with Kannel's
//! `%` escapes. Kannel answers `0: Accepted for delivery` or `3: Queued for later delivery`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

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
        if !*post && url.scheme() == "http" {
            // A plain-HTTP gateway (Kannel is usually on the same host or LAN): hyper's pool
            // directly, with the URL built from cached encodings.
            let full = self.get_url(m, *dlr_mask, link.dlr_halves(m.id));
            return self.answer(&link.unroutable, get_plain(link, full).await);
        }
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
            link.client
                .get(self.get_url(m, *dlr_mask, link.dlr_halves(m.id)))
        };
        self.answer(&link.unroutable, exchange(req).await)
    }

    /// The sendsms GET URL for `m`: the configured URL (its query kept, a fragment dropped)
    /// with the parameters in Kannel's order, form-encoded as `Url::query_pairs_mut` would
    /// (`application/x-www-form-urlencoded`: WHATWG URL §5.2). `dlr`: the report URL around
    /// the message's id ([`Link::dlr_halves`]). What repeats from one message to the next (the
    /// account, the sender, the text, the report URL's halves) is encoded once per thread and
    /// reused ([`Encoded`]): a campaign's messages mostly share them.
    fn get_url(&self, m: &Outgoing<'_>, mask: u32, dlr: (&str, i64, &str)) -> String {
        let base = self.url[..url::Position::AfterQuery].trim_end_matches(['?', '&']);
        let sep = if self.url.query().is_some_and(|q| !q.is_empty()) {
            '&'
        } else {
            '?'
        };
        let mut out = String::with_capacity(base.len() + m.text.len() * 3 + dlr.0.len() * 3 + 160);
        out.push_str(base);
        out.push(sep);
        ENCODED.with_borrow_mut(|cache| {
            out.push_str("username=");
            cache.push(&mut out, &self.username);
            out.push_str("&password=");
            cache.push(&mut out, &self.password);
            out.push_str("&from=");
            cache.push(&mut out, m.from);
            out.push_str("&to=");
            out.extend(form_urlencoded::byte_serialize(m.to.as_bytes()));
            out.push_str("&text=");
            let ucs2 = cache.push_text(&mut out, m.text);
            out.push_str("&charset=UTF-8&coding=");
            out.push_str(if ucs2 { "2" } else { "0" });
            let _ = std::fmt::Write::write_fmt(&mut out, format_args!("&dlr-mask={mask}&dlr-url="));
            cache.push(&mut out, dlr.0);
            // Digits are never escaped.
            let _ = std::fmt::Write::write_fmt(&mut out, format_args!("{}", dlr.1));
            cache.push(&mut out, dlr.2);
            if let Some(s) = &self.smsc {
                out.push_str("&smsc=");
                cache.push(&mut out, s);
            }
        });
        out
    }

    /// Kannel's answer to one sendsms request. `unroutable`: the gateway's "Not routable"
    /// answers in a row (see [`UNROUTABLE_RUN`]).
    fn answer(
        &self,
        unroutable: &Run,
        got: Result<(u16, Option<std::time::Duration>, String), Answer>,
    ) -> Answer {
        let (status, after, body) = match got {
            Ok(r) => r,
            Err(a) => return a,
        };
        let body = body.trim();
        // Kannel: "0: Accepted for delivery", "3: Queued for later delivery", or
        // (older, immediate reply) "Sent.".
        // Kannel's smsbox (gw/smsbox.c) answers 403 for two things. "Authorization failed for
        // sendsms": a wrong user or password, or a client address not allowed (the account).
        // "Not routable. Do not try again.": bearerbox took the message and routed it nowhere
        // (gw/bb_smscconn.c `smsc2_rout`): no SMSC takes its number (an smsc group's
        // `allowed-prefix`/`denied-prefix`), or its validity expired; but also no SMSC at all
        // (each stopped or removed by an admin, none configured) or `smsc` naming no SMSC's
        // `smsc-id`, where every message gets it. A number its white or black list denies is
        // a 400 ("Number(s) has/have been denied by white- and/or black-lists."); a full queue
        // a 503 ("Temporal failure, try again later."); a message smsbox could not hand to
        // bearerbox a 500 ("Sending failed.": nothing was sent, later).
        let mut reason = None;
        let mut hold = None;
        let submit = match status {
            403 if body.starts_with("Not routable") => {
                let run = unroutable.next(Instant::now());
                if run > UNROUTABLE_RUN {
                    reason = Some(format!(
                        "{status} {} ({ROUTED_NONE} {run} messages: are its SMSCs stopped, or does `smsc` name no SMSC's smsc-id?)",
                        truncate(body, 200)
                    ));
                    hold = Some(UNROUTABLE_HOLD);
                    Submit::Account
                } else {
                    Submit::Permanent
                }
            }
            403 => Submit::Account,
            500 if body.starts_with("Sending failed") => Submit::Transient,
            _ => classify(status, |s| (200..300).contains(&s)),
        };
        if submit == Submit::Accepted {
            unroutable.clear();
        }
        Answer {
            reason: reason.or_else(|| {
                (submit != Submit::Accepted || !body.starts_with("0:"))
                    .then(|| format!("{status} {}", truncate(body, 300)))
            }),
            submit,
            carrier_id: None,
            retry_after: hold.or(after),
        }
    }
}

/// How many "Not routable" answers in a row (none accepted between) Kannel may give before the
/// next ones are read as Kannel routing nothing at all: those are the gateway's, not their
/// numbers', so they take it out of rotation (queued again, on another gateway if the
/// campaign has one) instead of each being rejected. The first ones are rejected: a number no
/// SMSC takes looks the same. Back in rotation the gateway takes one request; a "Not routable"
/// again takes it out again, and that message waits [`UNROUTABLE_HOLD`], so the next request
/// carries another number: one Kannel cannot route does not hold the gateway out, while a
/// Kannel that routes nothing rejects no more. A list with more numbers in a row that Kannel
/// cannot route than the gateway's requests in one outage still holds it out until an operator
/// cancels that campaign: send such numbers apart.
pub const UNROUTABLE_RUN: u32 = 10;

/// A "Not routable" more than this after the one before starts a new run, while the run has
/// not yet taken the gateway out: a count left from hours ago (a finished campaign's last
/// numbers) must not take the gateway out for one more. A run past [`UNROUTABLE_RUN`] ends only
/// on an accepted answer, however long nothing was sent (a night outside the sending window):
/// else each quiet hour of a Kannel that routes nothing would reject [`UNROUTABLE_RUN`] more
/// good messages for good.
const UNROUTABLE_GAP: Duration = Duration::from_secs(3600);

/// How long a message whose "Not routable" was read as the gateway's waits before it is sent
/// again: longer than the gateway's outage (10 minutes), so that the request it takes back in
/// rotation carries the next number, not this one again.
pub const UNROUTABLE_HOLD: Duration = Duration::from_secs(1200);

/// What the reason of an outage of the gateway's that a run of "Not routable" answers began
/// says (a restarted daemon that finds such an outage stored resumes the run).
pub const ROUTED_NONE: &str = "Kannel routed none of the last";

/// Kannel's "Not routable" answers in a row and when the last came.
#[derive(Default)]
pub struct Run(Mutex<Option<(u32, Instant)>>);

impl Run {
    /// Another "Not routable" at `now`: how many in the run it is.
    fn next(&self, now: Instant) -> u32 {
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = match *r {
            Some((n, last))
                if n > UNROUTABLE_RUN || now.saturating_duration_since(last) <= UNROUTABLE_GAP =>
            {
                n.saturating_add(1)
            }
            _ => 1,
        };
        *r = Some((n, now));
        n
    }

    /// An accepted answer: the run is over.
    fn clear(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The gateway is out of rotation for a run that a daemon before this one counted (its
    /// stored outage says so): the next "Not routable" is the gateway's again.
    pub fn resume(&self) {
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none_or(|(n, _)| n <= UNROUTABLE_RUN) {
            *r = Some((UNROUTABLE_RUN, Instant::now()));
        }
    }
}

/// Form encodings kept on this thread: the hot path of a campaign encodes the same account,
/// sender and report URL for every message (`values`, the last [`ENCODED_KEPT`]), and mostly
/// the same text (`text`, the last one, with whether it needs UCS-2). Buffers are reused: a
/// miss allocates nothing once they have grown.
struct Encoded {
    values: Vec<(String, String)>,
    next: usize,
    text: (String, String, bool),
}

/// How many values other than the text [`Encoded`] keeps (one gateway uses up to 6).
const ENCODED_KEPT: usize = 16;

thread_local! {
    static ENCODED: std::cell::RefCell<Encoded> = const {
        std::cell::RefCell::new(Encoded {
            values: Vec::new(),
            next: 0,
            text: (String::new(), String::new(), false),
        })
    };
}

impl Encoded {
    /// Appends the form encoding of `raw` to `out`.
    fn push(&mut self, out: &mut String, raw: &str) {
        if let Some((_, enc)) = self.values.iter().find(|(r, _)| r == raw) {
            out.push_str(enc);
            return;
        }
        if self.values.len() < ENCODED_KEPT {
            self.values.push((String::new(), String::new()));
        }
        let i = self.next % self.values.len();
        self.next = i + 1;
        let (r, enc) = &mut self.values[i];
        fill(r, enc, raw);
        out.push_str(enc);
    }

    /// Appends the form encoding of the text `raw` to `out`; answers whether it needs UCS-2.
    fn push_text(&mut self, out: &mut String, raw: &str) -> bool {
        let (r, enc, ucs2) = &mut self.text;
        if r != raw {
            fill(r, enc, raw);
            *ucs2 = encoding(raw) == Encoding::Ucs2;
        }
        out.push_str(enc);
        *ucs2
    }
}

/// `raw` and its form encoding into the two buffers.
fn fill(r: &mut String, enc: &mut String, raw: &str) {
    r.clear();
    r.push_str(raw);
    enc.clear();
    enc.extend(form_urlencoded::byte_serialize(raw.as_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More values than the cache keeps, twice over, and texts that change: every encoding is
    /// still the one `form_urlencoded` gives.
    #[test]
    fn the_encoding_cache_evicts_and_stays_right() {
        let mut cache = Encoded {
            values: Vec::new(),
            next: 0,
            text: (String::new(), String::new(), false),
        };
        for _ in 0..2 {
            for n in 0..(ENCODED_KEPT * 2 + 3) {
                let raw = format!("a b&{n}=政");
                let mut out = String::new();
                cache.push(&mut out, &raw);
                let want: String = form_urlencoded::byte_serialize(raw.as_bytes()).collect();
                assert_eq!(out, want);
                let mut out = String::new();
                let ucs2 = cache.push_text(&mut out, &raw[..raw.len() - 3]);
                assert_eq!(
                    (out.as_str(), ucs2),
                    (want.trim_end_matches("%E6%94%BF"), false)
                );
            }
        }
        assert_eq!(cache.values.len(), ENCODED_KEPT);
    }

    /// A sendsms account on a local Kannel.
    fn local() -> KannelConfig {
        KannelConfig {
            url: "http://127.0.0.1:13013/cgi-bin/sendsms".parse().unwrap(),
            username: "u".into(),
            password: "p".into(),
            smsc: None,
            dlr_mask: 31,
            post: false,
        }
    }

    /// Kannel's answers (smsbox.c): its 403 (wrong credentials) takes the gateway out of
    /// rotation; a number its white or black list denies (400) is rejected alone.
    #[test]
    fn kannels_403_is_the_account_and_a_denied_number_is_rejected_alone() {
        let cfg = local();
        let run = Run::default();
        let answer =
            |status: u16, body: &str| cfg.answer(&run, Ok((status, None, body.into()))).submit;
        assert_eq!(answer(202, "0: Accepted for delivery"), Submit::Accepted);
        assert_eq!(
            answer(403, "Authorization failed for sendsms"),
            Submit::Account
        );
        assert_eq!(
            answer(
                400,
                "Number(s) has/have been denied by white- and/or black-lists."
            ),
            Submit::Permanent
        );
        assert_eq!(
            answer(400, "Wrong sendsms args, rejected"),
            Submit::Permanent
        );
        assert_eq!(answer(503, ""), Submit::Transient);
        assert_eq!(
            answer(503, "Temporal failure, try again later."),
            Submit::Transient
        );
        // No SMSC for this number: this message fails, the gateway is fine.
        assert_eq!(
            answer(403, "Not routable. Do not try again."),
            Submit::Permanent
        );
        // Kannel never answers 502 or 504: a proxy in front of it, which may have passed the
        // request on.
        assert_eq!(answer(502, "Bad Gateway"), Submit::Lost);
        assert_eq!(answer(504, ""), Submit::Lost);
        // smsbox could not hand it to bearerbox: nothing sent.
        assert_eq!(answer(500, "Sending failed."), Submit::Transient);
        assert_eq!(answer(500, ""), Submit::Lost);
    }

    /// One "Not routable" is its number's; a run of them with none accepted is Kannel routing
    /// nothing (its SMSCs stopped, a wrong `smsc`): the gateway's, until one is accepted.
    #[test]
    fn a_run_of_not_routable_answers_is_the_gateways() {
        let cfg = local();
        let run = Run::default();
        let answer = |status: u16, body: &str| cfg.answer(&run, Ok((status, None, body.into())));
        let unroutable = || answer(403, "Not routable. Do not try again.");
        for _ in 0..UNROUTABLE_RUN {
            assert_eq!(unroutable().submit, Submit::Permanent);
        }
        let a = unroutable();
        assert_eq!(a.submit, Submit::Account);
        assert!(a.reason.unwrap().contains("routed none of the last 11"));
        // One accepted: the next is its number's again.
        assert_eq!(
            answer(202, "0: Accepted for delivery").submit,
            Submit::Accepted
        );
        assert_eq!(unroutable().submit, Submit::Permanent);
        // The message that met the gateway's run waits past the outage: the request the
        // gateway takes back in rotation carries another number.
        let run_out = Run(Mutex::new(Some((UNROUTABLE_RUN, Instant::now()))));
        let a = cfg.answer(&run_out, Ok((403, None, "Not routable.".into())));
        assert_eq!(
            (a.submit, a.retry_after),
            (Submit::Account, Some(UNROUTABLE_HOLD))
        );
        // A run short of the gateway's ends after an hour's silence (a finished campaign's last
        // numbers); one past it outlives any silence (a night outside the sending window), and
        // ends only on an accepted answer.
        let r = Run::default();
        let t = Instant::now();
        for i in 1..UNROUTABLE_RUN {
            assert_eq!(r.next(t), i);
        }
        assert_eq!(r.next(t + UNROUTABLE_GAP * 2), 1);
        for i in 2..=UNROUTABLE_RUN + 1 {
            assert_eq!(r.next(t + UNROUTABLE_GAP * 2), i);
        }
        assert_eq!(r.next(t + UNROUTABLE_GAP * 20), UNROUTABLE_RUN + 2);
        // A restarted daemon that finds such an outage stored: the next is the gateway's.
        let r = Run::default();
        r.resume();
        assert_eq!(r.next(t), UNROUTABLE_RUN + 1);
        // (Resuming never shortens a run.)
        r.resume();
        assert_eq!(r.next(t), UNROUTABLE_RUN + 2);
    }

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
            // Each twice: the second time from the thread's cache of encodings.
            for text in [
                "政务开放日 Open Day: 9:00 & 10% off?",
                "Open Day: 9:00 & 10% off? a+b=c",
                "政务开放日 Open Day: 9:00 & 10% off?",
                "Open Day: 9:00 & 10% off? a+b=c",
            ] {
                let m = Outgoing {
                    id: 7,
                    campaign: 1,
                    to: "+8613800138000",
                    from: "10086",
                    text,
                    template_id: None,
                    params: &[],
                    param_names: &[],
                };
                let halves = (
                    "http://127.0.0.1:8080/api/v1/sms/dlr/k?secret=s&id=",
                    7,
                    "&type=%d",
                );
                let ours = cfg.get_url(&m, 31, halves);
                let dlr = "http://127.0.0.1:8080/api/v1/sms/dlr/k?secret=s&id=7&type=%d";
                let ucs2 = text.starts_with('政');
                let mut want = cfg.url.clone();
                want.set_fragment(None);
                want.query_pairs_mut()
                    .append_pair("username", "u s&r")
                    .append_pair("password", "p=w+d")
                    .append_pair("from", m.from)
                    .append_pair("to", m.to)
                    .append_pair("text", m.text)
                    .append_pair("charset", "UTF-8")
                    .append_pair("coding", if ucs2 { "2" } else { "0" })
                    .append_pair("dlr-mask", "31")
                    .append_pair("dlr-url", dlr)
                    .append_pair("smsc", "cm 1");
                assert_eq!(ours, want.as_str(), "{base}");
            }
        }
    }
}
