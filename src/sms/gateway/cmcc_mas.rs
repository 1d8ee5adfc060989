//! China Mobile 云MAS HTTP (`/sms/tmpsubmit`): the protocol without I/O (the request body (Base64 of a
//! JSON object whose `mac` is the MD5 of the fields in a fixed order) and the answer, classed
//! by `rspcod`. Facts and sources: `CARRIERS.md` §2.1 (SMS4J `MasUtils`, the platform's demo).
//!
//! The platform answers one `msgGroup` per request, so a message's carrier id is the group
//! with its number. Its report and reply push formats are not published (CARRIERS.md §8): an
//! office gets them with its account, and until they are wired in, messages through this
//! kind stay `sent` (reconciliation cannot ask it either).

use base64::Engine;
use md5::{Digest, Md5};

use super::tencent::Class;
use crate::domain::delivery::Submit;

/// Numbers one request takes (`TooManyMobiles` above).
pub const MAX_NUMBERS: usize = 5000;

/// The fields of a `tmpsubmit` request.
pub struct TmpSubmit<'a> {
    /// Enterprise name (as registered, Chinese).
    pub ec_name: &'a str,
    /// Interface user.
    pub ap_id: &'a str,
    /// Interface password: only inside the `mac`, never sent.
    pub secret_key: &'a str,
    /// The approved template's id.
    pub template_id: &'a str,
    /// Mainland numbers (11 digits), comma-separated.
    pub mobiles: &'a str,
    /// The parameters as a JSON array string (`[""]` when none).
    pub params: &'a str,
    /// The signature code issued by the platform.
    pub sign: &'a str,
    /// Extension code (may be empty).
    pub add_serial: &'a str,
}

/// The lower-hex MD5 of the UTF-8 concatenation, in the platform's order.
pub fn mac(r: &TmpSubmit<'_>) -> String {
    let mut h = Md5::new();
    for part in [
        r.ec_name,
        r.ap_id,
        r.secret_key,
        r.template_id,
        r.mobiles,
        r.params,
        r.sign,
        r.add_serial,
    ] {
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The raw body: Base64 of the JSON object (without the secret).
pub fn body(r: &TmpSubmit<'_>) -> String {
    let json = serde_json::json!({
        "ecName": r.ec_name,
        "apId": r.ap_id,
        "templateId": r.template_id,
        "mobiles": r.mobiles,
        "params": r.params,
        "sign": r.sign,
        "addSerial": r.add_serial,
        "mac": mac(r),
    });
    base64::engine::general_purpose::STANDARD.encode(json.to_string())
}

/// The answer: (`rspcod`, `msgGroup`), from `{"rspcod":"success","msgGroup":"…","success":true}`
/// (some deployments spell it `mgsGroup`).
pub fn read_answer(text: &str) -> Option<(String, Option<String>)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let code = v["rspcod"].as_str()?.to_owned();
    let group = v["msgGroup"]
        .as_str()
        .or_else(|| v["mgsGroup"].as_str())
        .filter(|g| !g.is_empty())
        .map(str::to_owned);
    Some((code, group))
}

/// Classes `rspcod`: every failure the platform names is about the account or the campaign,
/// not a number (CARRIERS.md §2.1).
pub fn classify(code: &str) -> Class {
    let submit = match code {
        "success" => Submit::Accepted,
        "IllegalMac" | "InvalidUsrOrPwd" => Submit::Account,
        // Everything else the platform names is about the request as a whole: the campaign
        // waits for an operator rather than every number being rejected for good.
        _ => Submit::Config,
    };
    Class { submit, wait: None }
}

// The driver: requests and answers over HTTP.

use crate::sms::config::CmccMasConfig;
use crate::sms::gateway::{Answer, Driver, Link, Outgoing, exchange, one_code_for_all};

impl Driver for CmccMasConfig {
    /// One `tmpsubmit` for `ms` (same template and parameters): one `rspcod` for all.
    async fn send(&self, link: &Link, ms: &[Outgoing<'_>]) -> Vec<Answer> {
        let c = self;
        let n = ms.len();
        let Some(first) = ms.first() else {
            return Vec::new();
        };
        let Some(template_id) = first.template_id else {
            return link.needs_template(n);
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
        let body = body(&TmpSubmit {
            ec_name: &c.ec_name,
            ap_id: &c.ap_id,
            secret_key: &c.secret_key,
            template_id,
            mobiles: &mobiles,
            params: &params,
            sign: &c.sign,
            add_serial: &c.add_serial,
        });
        let req = link
            .client
            .post(c.url.clone())
            .header("Content-Type", "text/plain")
            .body(body);
        let (status, after, text) = match exchange(req).await {
            Ok(r) => r,
            Err(x) => return vec![x; n],
        };
        let read = read_answer(&text).map(|(code, group)| {
            let k = classify(&code);
            (k, code, group)
        });
        one_code_for_all(ms, status, after, &text, read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mac_matches_the_platforms_demo() {
        // The 云MAS HTTP interface demo values (tmpsubmit).
        let r = TmpSubmit {
            ec_name: "政企分公司测试",
            ap_id: "demo0",
            secret_key: "123qwe",
            template_id: "38516fabae004eddbfa3ace1d4194696",
            mobiles: "13800138000",
            params: r#"["abcde"]"#,
            sign: "4sEuJxDpC",
            add_serial: "",
        };
        assert_eq!(mac(&r), "02009a533ee3fb8603062971a53beff0");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(body(&r))
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(v["mac"], "02009a533ee3fb8603062971a53beff0");
        assert!(v.get("secretKey").is_none(), "the secret never leaves");
    }

    #[test]
    fn answers_are_read_and_classed() {
        let ok = r#"{"msgGroup":"0927152506001000833076","rspcod":"success","success":true}"#;
        assert_eq!(
            read_answer(ok),
            Some(("success".into(), Some("0927152506001000833076".into())))
        );
        let bad = r#"{ "msgGroup": "", "rspcod": "InvalidUsrOrPwd", "success": false}"#;
        let (code, group) = read_answer(bad).unwrap();
        assert_eq!(group, None);
        assert_eq!(classify(&code).submit, Submit::Account);
        assert_eq!(classify("IllegalSignId").submit, Submit::Config);
        assert_eq!(classify("success").submit, Submit::Accepted);
    }
}
