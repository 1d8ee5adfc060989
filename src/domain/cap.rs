//! CAP 1.2 (OASIS Common Alerting Protocol) → what to do on screens. Pure: [`parse`] reads the
//! XML (a precise `line:col` for malformed input), [`decide`] applies the rules:
//!
//! - `status` other than `Actual` (Exercise, System, Test, Draft) never reaches screens unless
//!   the configuration accepts test messages;
//! - `msgType` Alert raises; Update raises and ends the alerts it `<references>`; Cancel ends
//!   them; Ack and Error change nothing;
//! - a policy table over urgency, severity and certainty decides take-over or ignore (first
//!   matching rule wins; the default follows Canada's NPAS "broadcast immediate" spirit:
//!   Immediate/Expected × Extreme/Severe × Observed/Likely);
//! - several `<info>` blocks become language variants (`zh-CN` → `zh`);
//! - `<area>` (areaDesc or geocode) maps to channels/displays through configured rules.
//!
//! Alert ids are derived from sender + identifier, so an Update or Cancel finds what it refers to.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::locate::line_col;

/// The CAP 1.2 namespace.
pub const NAMESPACE: &str = "urn:oasis:names:tc:emergency:cap:1.2";

/// Where an alert goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Scope {
    /// Every display.
    All,
    /// These channels.
    Channels(Vec<String>),
    /// These displays.
    Displays(Vec<String>),
}

/// A CAP message (the fields Marquee uses).
#[derive(Debug, Clone, Deserialize)]
pub struct CapAlert {
    #[serde(rename = "@xmlns", default)]
    xmlns: Option<String>,
    /// Unique per sender.
    pub identifier: String,
    /// Who sent it.
    pub sender: String,
    /// When.
    pub sent: String,
    /// Actual, Exercise, System, Test, Draft.
    pub status: String,
    /// Alert, Update, Cancel, Ack, Error.
    #[serde(rename = "msgType")]
    pub msg_type: String,
    /// `sender,identifier,sent` triples, space-separated.
    #[serde(default)]
    pub references: Option<String>,
    /// The information blocks (usually one per language).
    #[serde(default)]
    pub info: Vec<CapInfo>,
}

/// One `<info>` block.
#[derive(Debug, Clone, Deserialize)]
pub struct CapInfo {
    /// RFC 3066 language, default en-US.
    #[serde(default)]
    pub language: Option<String>,
    /// What happens.
    pub event: String,
    /// Immediate, Expected, Future, Past, Unknown.
    pub urgency: String,
    /// Extreme, Severe, Moderate, Minor, Unknown.
    pub severity: String,
    /// Observed, Likely, Possible, Unlikely, Unknown.
    pub certainty: String,
    /// When it ends.
    #[serde(default)]
    pub expires: Option<String>,
    /// Short text.
    #[serde(default)]
    pub headline: Option<String>,
    /// What to do.
    #[serde(default)]
    pub instruction: Option<String>,
    /// Areas.
    #[serde(default)]
    pub area: Vec<CapArea>,
}

/// One `<area>`.
#[derive(Debug, Clone, Deserialize)]
pub struct CapArea {
    /// Free text.
    #[serde(rename = "areaDesc")]
    pub area_desc: String,
    /// Coded areas.
    #[serde(default)]
    pub geocode: Vec<CapGeocode>,
}

/// A `<geocode>`.
#[derive(Debug, Clone, Deserialize)]
pub struct CapGeocode {
    /// Code system, e.g. `SAME`, `GB2260`.
    #[serde(rename = "valueName")]
    pub value_name: String,
    /// Code.
    pub value: String,
}

/// Why a document is not a CAP 1.2 alert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct CapError {
    /// 1-based line (1 when not located).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// Reads a CAP 1.2 document.
pub fn parse(xml: &str) -> Result<CapAlert, CapError> {
    // Well-formedness first, with a position.
    let mut reader = quick_xml::Reader::from_str(xml);
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(_) => {}
            Err(e) => {
                let (line, column) = line_col(xml, reader.error_position() as usize);
                return Err(CapError {
                    line,
                    column,
                    message: format!("malformed XML: {e}"),
                });
            }
        }
    }
    let alert: CapAlert = quick_xml::de::from_str(xml).map_err(|e| CapError {
        line: 1,
        column: 1,
        message: format!("not a CAP alert: {e}"),
    })?;
    if alert.xmlns.as_deref() != Some(NAMESPACE) {
        return Err(CapError {
            line: 1,
            column: 1,
            message: format!("not CAP 1.2: the alert element's namespace must be {NAMESPACE}"),
        });
    }
    if !["Alert", "Update", "Cancel", "Ack", "Error"].contains(&alert.msg_type.as_str()) {
        return Err(CapError {
            line: 1,
            column: 1,
            message: format!("unknown msgType {:?}", alert.msg_type),
        });
    }
    Ok(alert)
}

/// One row of the policy table; an empty list matches anything.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// Urgency values.
    #[serde(default)]
    pub urgency: Vec<String>,
    /// Severity values.
    #[serde(default)]
    pub severity: Vec<String>,
    /// Certainty values.
    #[serde(default)]
    pub certainty: Vec<String>,
    /// `takeover` or `ignore`.
    pub action: String,
}

impl PolicyRule {
    fn matches(&self, i: &CapInfo) -> bool {
        let m = |list: &[String], v: &str| {
            list.is_empty() || list.iter().any(|x| x.eq_ignore_ascii_case(v))
        };
        m(&self.urgency, &i.urgency)
            && m(&self.severity, &i.severity)
            && m(&self.certainty, &i.certainty)
    }
}

/// The default table: take over for imminent, serious, probable events; ignore the rest.
pub fn default_policy() -> Vec<PolicyRule> {
    let v = |xs: &[&str]| xs.iter().map(|s| (*s).to_owned()).collect();
    vec![
        PolicyRule {
            urgency: v(&["Immediate", "Expected"]),
            severity: v(&["Extreme", "Severe"]),
            certainty: v(&["Observed", "Likely"]),
            action: "takeover".into(),
        },
        PolicyRule {
            urgency: vec![],
            severity: vec![],
            certainty: vec![],
            action: "ignore".into(),
        },
    ]
}

/// Maps CAP areas to a scope: matches `area_desc` (case-insensitive) or a geocode `value_name=value`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AreaRule {
    /// areaDesc to match.
    #[serde(default)]
    pub area_desc: Option<String>,
    /// Geocode `NAME=VALUE` to match.
    #[serde(default)]
    pub geocode: Option<String>,
    /// Channels it means (empty with no displays: every display).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Displays it means.
    #[serde(default)]
    pub displays: Vec<String>,
}

/// How CAP is applied.
#[derive(Debug, Clone)]
pub struct CapRules {
    /// Policy table (first match wins; no match: ignore).
    pub policy: Vec<PolicyRule>,
    /// Area mapping.
    pub areas: Vec<AreaRule>,
    /// Scope when no area rule matches (`None`: ignore such alerts).
    pub default_scope: Option<Scope>,
    /// Let Test/Exercise/System/Draft messages reach screens.
    pub accept_test: bool,
}

/// What a CAP message means for the screens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapAction {
    /// Raise `id` (ending `replaces` first).
    Raise {
        /// Marquee alert id.
        id: String,
        /// Ids of alerts this one supersedes (Update).
        replaces: Vec<String>,
        /// Text per language.
        text: BTreeMap<String, String>,
        /// minor … extreme.
        severity: String,
        /// Where.
        scope: Scope,
        /// Until.
        expires_at: DateTime<Utc>,
    },
    /// End these alerts (Cancel).
    End {
        /// Ids.
        ids: Vec<String>,
    },
    /// Nothing reaches screens.
    Ignore {
        /// Why.
        reason: String,
    },
}

/// The Marquee alert id of CAP message (sender, identifier).
pub fn alert_id(sender: &str, identifier: &str) -> String {
    let h = Sha256::digest(format!("{sender}\u{0}{identifier}").as_bytes());
    format!("cap-{}", hex::encode(&h[..8]))
}

fn referenced(a: &CapAlert) -> Vec<String> {
    a.references
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|t| {
            let mut parts = t.split(',');
            Some(alert_id(parts.next()?, parts.next()?))
        })
        .collect()
}

fn lang_key(l: Option<&str>) -> String {
    l.unwrap_or("en-US")
        .split(['-', '_'])
        .next()
        .unwrap_or("en")
        .to_ascii_lowercase()
}

/// Decides what `a` means, at `now`.
pub fn decide(a: &CapAlert, rules: &CapRules, now: DateTime<Utc>) -> CapAction {
    let ignore = |reason: String| CapAction::Ignore { reason };
    if a.status != "Actual" && !rules.accept_test {
        return ignore(format!(
            "status {} does not reach screens (cap.accept_test = false)",
            a.status
        ));
    }
    match a.msg_type.as_str() {
        "Cancel" => return CapAction::End { ids: referenced(a) },
        "Ack" | "Error" => return ignore(format!("msgType {} changes nothing", a.msg_type)),
        _ => {}
    }
    let Some(first) = a.info.first() else {
        return ignore("no <info> block".into());
    };
    match rules.policy.iter().find(|r| r.matches(first)) {
        Some(r) if r.action == "takeover" => {}
        _ => {
            return ignore(format!(
                "policy: urgency {}, severity {}, certainty {} do not take over screens",
                first.urgency, first.severity, first.certainty
            ));
        }
    }
    let mut text = BTreeMap::new();
    for i in &a.info {
        let head = i.headline.clone().unwrap_or_else(|| i.event.clone());
        let body = match &i.instruction {
            Some(ins) if !ins.trim().is_empty() => format!("{head}: {}", ins.trim()),
            _ => head,
        };
        text.entry(lang_key(i.language.as_deref())).or_insert(body);
    }
    let expires_at = a
        .info
        .iter()
        .filter_map(|i| i.expires.as_deref())
        .filter_map(|e| DateTime::parse_from_rfc3339(e).ok())
        .map(|t| t.with_timezone(&Utc))
        .min()
        .unwrap_or(now + Duration::hours(1));
    if expires_at <= now {
        return ignore(format!("expired at {expires_at}"));
    }
    let areas: Vec<&CapArea> = a.info.iter().flat_map(|i| &i.area).collect();
    let mut channels = Vec::new();
    let mut displays = Vec::new();
    let mut everywhere = false;
    for rule in &rules.areas {
        let hit = areas.iter().any(|ar| {
            rule.area_desc
                .as_deref()
                .is_some_and(|d| d.eq_ignore_ascii_case(ar.area_desc.trim()))
                || rule.geocode.as_deref().is_some_and(|g| {
                    ar.geocode
                        .iter()
                        .any(|c| format!("{}={}", c.value_name, c.value) == g)
                })
        });
        if hit {
            if rule.channels.is_empty() && rule.displays.is_empty() {
                everywhere = true;
            }
            channels.extend(rule.channels.iter().cloned());
            displays.extend(rule.displays.iter().cloned());
        }
    }
    channels.sort();
    channels.dedup();
    displays.sort();
    displays.dedup();
    let scope = if everywhere {
        Scope::All
    } else if !channels.is_empty() {
        Scope::Channels(channels)
    } else if !displays.is_empty() {
        Scope::Displays(displays)
    } else if let Some(d) = &rules.default_scope {
        d.clone()
    } else {
        return ignore(
            "no configured area matches (cap.areas) and there is no default scope".into(),
        );
    };
    let severity = match first.severity.as_str() {
        "Extreme" => "extreme",
        "Severe" => "severe",
        "Minor" => "minor",
        _ => "moderate",
    };
    CapAction::Raise {
        id: alert_id(&a.sender, &a.identifier),
        replaces: if a.msg_type == "Update" {
            referenced(a)
        } else {
            vec![]
        },
        text,
        severity: severity.into(),
        scope,
        expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2021-05-15T01:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn rules() -> CapRules {
        CapRules {
            policy: default_policy(),
            areas: vec![AreaRule {
                area_desc: Some("Pudong".into()),
                geocode: None,
                channels: vec!["subway".into()],
                displays: vec![],
            }],
            default_scope: Some(Scope::All),
            accept_test: false,
        }
    }

    fn doc(status: &str, msg_type: &str, extra: &str, info: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>T-1</identifier><sender>cma@example.gov</sender><sent>2021-05-15T09:00:00+08:00</sent>
  <status>{status}</status><msgType>{msg_type}</msgType><scope>Public</scope>{extra}
  {info}
</alert>"#
        )
    }

    const INFO: &str = r#"<info><language>zh-CN</language><category>Met</category><event>台风</event>
  <urgency>Immediate</urgency><severity>Extreme</severity><certainty>Observed</certainty>
  <expires>2021-05-15T12:00:00+08:00</expires><headline>台风红色预警</headline><instruction>请留在室内</instruction>
  <area><areaDesc>Pudong</areaDesc></area></info>
  <info><language>en-US</language><category>Met</category><event>Typhoon</event>
  <urgency>Immediate</urgency><severity>Extreme</severity><certainty>Observed</certainty>
  <expires>2021-05-15T12:00:00+08:00</expires><headline>Typhoon red warning</headline><instruction>Stay indoors</instruction>
  <area><areaDesc>Pudong</areaDesc></area></info>"#;

    #[test]
    fn actual_multilingual_alert_raises_on_the_mapped_scope() {
        let a = parse(&doc("Actual", "Alert", "", INFO)).unwrap();
        match decide(&a, &rules(), now()) {
            CapAction::Raise {
                id,
                text,
                severity,
                scope,
                expires_at,
                replaces,
            } => {
                assert_eq!(id, alert_id("cma@example.gov", "T-1"));
                assert_eq!(text["zh"], "台风红色预警: 请留在室内");
                assert_eq!(text["en"], "Typhoon red warning: Stay indoors");
                assert_eq!(severity, "extreme");
                assert_eq!(scope, Scope::Channels(vec!["subway".into()]));
                assert_eq!(expires_at.to_rfc3339(), "2021-05-15T04:00:00+00:00");
                assert!(replaces.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn update_and_cancel_follow_references() {
        let refs = "<references>cma@example.gov,T-0,2021-05-15T08:00:00+08:00</references>";
        let a = parse(&doc("Actual", "Update", refs, INFO)).unwrap();
        let CapAction::Raise { replaces, .. } = decide(&a, &rules(), now()) else {
            panic!()
        };
        assert_eq!(replaces, vec![alert_id("cma@example.gov", "T-0")]);
        let c = parse(&doc("Actual", "Cancel", refs, "")).unwrap();
        assert_eq!(
            decide(&c, &rules(), now()),
            CapAction::End {
                ids: vec![alert_id("cma@example.gov", "T-0")]
            }
        );
    }

    #[test]
    fn test_and_exercise_stay_off_screens_unless_accepted() {
        for status in ["Test", "Exercise"] {
            let a = parse(&doc(status, "Alert", "", INFO)).unwrap();
            assert!(matches!(
                decide(&a, &rules(), now()),
                CapAction::Ignore { .. }
            ));
            let mut r = rules();
            r.accept_test = true;
            assert!(matches!(decide(&a, &r, now()), CapAction::Raise { .. }));
        }
    }

    #[test]
    fn policy_ignores_minor_or_possible_events() {
        let info = INFO.replace("<severity>Extreme</severity>", "<severity>Minor</severity>");
        let a = parse(&doc("Actual", "Alert", "", &info)).unwrap();
        let CapAction::Ignore { reason } = decide(&a, &rules(), now()) else {
            panic!()
        };
        assert!(reason.contains("severity Minor"), "{reason}");
    }

    #[test]
    fn unmapped_area_uses_the_default_scope_or_is_ignored() {
        let info = INFO.replace("Pudong", "Elsewhere");
        let a = parse(&doc("Actual", "Alert", "", &info)).unwrap();
        assert!(matches!(
            decide(&a, &rules(), now()),
            CapAction::Raise {
                scope: Scope::All,
                ..
            }
        ));
        let mut r = rules();
        r.default_scope = None;
        assert!(matches!(decide(&a, &r, now()), CapAction::Ignore { .. }));
    }

    #[test]
    fn expired_alerts_are_ignored() {
        let later = now() + Duration::days(1);
        let a = parse(&doc("Actual", "Alert", "", INFO)).unwrap();
        assert!(matches!(
            decide(&a, &rules(), later),
            CapAction::Ignore { .. }
        ));
    }

    #[test]
    fn malformed_and_foreign_documents_are_precise_errors() {
        let e = parse("<alert xmlns=\"urn:oasis:names:tc:emergency:cap:1.2\">\n  <identifier>x</sender>\n</alert>").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.starts_with("malformed XML"), "{e}");
        let e = parse(&doc("Actual", "Alert", "", INFO).replace("cap:1.2", "cap:1.1")).unwrap_err();
        assert!(e.message.contains("not CAP 1.2"), "{e}");
        let e =
            parse(&doc("Actual", "Alert", "", INFO).replace("<identifier>T-1</identifier>", ""))
                .unwrap_err();
        assert!(e.message.contains("identifier"), "{e}");
    }
}
