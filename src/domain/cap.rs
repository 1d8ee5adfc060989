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

/// The CAP 1.1 namespace (still published; read as 1.2 where the fields agree).
pub const NAMESPACE_1_1: &str = "urn:oasis:names:tc:emergency:cap:1.1";

/// Deepest element nesting accepted (a CAP document needs 4: alert, info, area, geocode).
pub const MAX_DEPTH: usize = 16;

/// Where an alert goes: `"all"`, `{"channels": […]}` or `{"displays": […]}`. (The schema derive
/// is metadata for the API's document, no behaviour.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Default)]
pub struct CapAlert {
    /// `1.2` or `1.1`.
    pub version: &'static str,
    /// Unique per sender.
    pub identifier: String,
    /// Who sent it.
    pub sender: String,
    /// When.
    pub sent: String,
    /// Actual, Exercise, System, Test, Draft.
    pub status: String,
    /// Alert, Update, Cancel, Ack, Error.
    pub msg_type: String,
    /// Public, Restricted or Private (CAP 1.2 §3.2.1); only Public reaches public screens.
    pub scope: String,
    /// `sender,identifier,sent` triples, space-separated.
    pub references: Option<String>,
    /// The information blocks (usually one per language).
    pub info: Vec<CapInfo>,
}

/// One `<info>` block.
#[derive(Debug, Clone, Default)]
pub struct CapInfo {
    /// RFC 3066 language, default en-US.
    pub language: Option<String>,
    /// What happens.
    pub event: String,
    /// Shelter, Evacuate, Prepare, Execute, Avoid, Monitor, Assess, AllClear, None.
    pub response_type: Vec<String>,
    /// Immediate, Expected, Future, Past, Unknown.
    pub urgency: String,
    /// Extreme, Severe, Moderate, Minor, Unknown.
    pub severity: String,
    /// Observed, Likely, Possible, Unlikely, Unknown.
    pub certainty: String,
    /// When the information takes effect (default: `sent`).
    pub effective: Option<String>,
    /// When the event is expected to begin.
    pub onset: Option<String>,
    /// When it ends.
    pub expires: Option<String>,
    /// Short text.
    pub headline: Option<String>,
    /// Longer text.
    pub description: Option<String>,
    /// What to do.
    pub instruction: Option<String>,
    /// Areas.
    pub area: Vec<CapArea>,
}

/// One `<area>`.
#[derive(Debug, Clone, Default)]
pub struct CapArea {
    /// Free text.
    pub area_desc: String,
    /// Polygons: `lat,lon` pairs, space-separated, first = last (CAP 1.2 §3.3.1, WGS 84).
    pub polygon: Vec<String>,
    /// Circles: `lat,lon radius` with the radius in km.
    pub circle: Vec<String>,
    /// Coded areas.
    pub geocode: Vec<CapGeocode>,
}

/// A `<geocode>`.
#[derive(Debug, Clone, Default)]
pub struct CapGeocode {
    /// Code system, e.g. `SAME`, `GB2260`.
    pub value_name: String,
    /// Code.
    pub value: String,
}

/// Why a document is not a CAP alert.
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

/// An element of the CAP namespace: its local name, text and children (other namespaces,
/// such as an enveloped XML signature, are left out).
#[derive(Debug, Default)]
struct Node {
    name: String,
    text: String,
    children: Vec<Node>,
}

impl Node {
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    fn one(&self, name: &str) -> Option<String> {
        self.all(name)
            .next()
            .map(|c| c.text.trim().to_owned())
            .filter(|t| !t.is_empty())
    }

    fn required(&self, name: &str) -> Result<String, String> {
        self.one(name)
            .ok_or_else(|| format!("<{}> has no <{name}> (required by CAP 1.2)", self.name))
    }

    fn texts(&self, name: &str) -> Vec<String> {
        self.all(name)
            .map(|c| c.text.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect()
    }
}

/// Reads a CAP 1.2 (or 1.1) document. Namespaces are resolved (`<alert xmlns="…">`,
/// `<cap:alert xmlns:cap="…">`, any prefix); elements of other namespaces are skipped;
/// entity references other than XML's five and character references are refused, and so is a
/// DOCTYPE that declares entities (no expansion, whatever the document says); nesting deeper
/// than [`MAX_DEPTH`] is refused.
pub fn parse(xml: &str) -> Result<CapAlert, CapError> {
    use quick_xml::events::Event;
    use quick_xml::name::ResolveResult;
    let mut reader = quick_xml::NsReader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let at = |pos: u64, message: String| {
        let (line, column) = line_col(xml, pos as usize);
        CapError {
            line,
            column,
            message,
        }
    };
    let mut tree = Tree {
        stack: Vec::new(),
        root: None,
        version: "1.2",
        foreign: 0,
    };
    loop {
        let pos = reader.buffer_position();
        let (ns_name, event) = match reader.read_resolved_event() {
            Ok((ResolveResult::Bound(n), ev)) => {
                (Some(String::from_utf8_lossy(n.as_ref()).into_owned()), ev)
            }
            Ok((_, ev)) => (None, ev),
            Err(e) => {
                let p = reader.error_position();
                return Err(at(p, format!("malformed XML: {e}")));
            }
        };
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                tree.start(ns_name.as_deref(), local, matches!(event, Event::Empty(_)))
                    .map_err(|m| at(pos, m))?;
            }
            Event::End(_) => tree.end(),
            Event::Text(t) if tree.takes_text() => {
                let s = t.decode().map_err(|e| at(pos, format!("bad text: {e}")))?;
                tree.text(&s);
            }
            Event::CData(t) if tree.takes_text() => {
                let s = t.decode().map_err(|e| at(pos, format!("bad CDATA: {e}")))?;
                tree.text(&s);
            }
            Event::GeneralRef(r) => tree.text(&entity(&r).map_err(|m| at(pos, m))?),
            Event::DocType(d) if String::from_utf8_lossy(d.as_ref()).contains("<!ENTITY") => {
                return Err(at(
                    pos,
                    "a DOCTYPE that declares entities is refused (entity expansion)".into(),
                ));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !tree.stack.is_empty() {
        return Err(at(
            xml.len() as u64,
            "malformed XML: unclosed elements".into(),
        ));
    }
    let root = tree.root.ok_or_else(|| CapError {
        line: 1,
        column: 1,
        message: format!("not CAP 1.2: no <alert> element in {NAMESPACE}"),
    })?;
    alert_of(&root, tree.version).map_err(|message| CapError {
        line: 1,
        column: 1,
        message: format!("not a CAP alert: {message}"),
    })
}

/// The CAP elements of a document as they are read: the open ones, the finished root, the
/// version its namespace says, and how deep inside a foreign element the reader is (0: not).
struct Tree {
    stack: Vec<Node>,
    root: Option<Node>,
    version: &'static str,
    foreign: usize,
}

impl Tree {
    /// An element opens (`empty`: and closes).
    fn start(&mut self, ns: Option<&str>, local: String, empty: bool) -> Result<(), String> {
        if self.stack.len() + self.foreign >= MAX_DEPTH {
            return Err(format!(
                "elements nested deeper than {MAX_DEPTH}: not a CAP alert"
            ));
        }
        if self.root.is_some() {
            return Err("content after the <alert> element".into());
        }
        if self.stack.is_empty() && self.foreign == 0 {
            self.version = match ns {
                Some(NAMESPACE) if local == "alert" => "1.2",
                Some(NAMESPACE_1_1) if local == "alert" => "1.1",
                found => {
                    return Err(format!(
                        "not CAP 1.2: the root element is <{local}> in namespace {} (CAP 1.2 is <alert> in {NAMESPACE}; CAP 1.1 is read too)",
                        found.map_or("(none)".to_owned(), |n| format!("{n:?}"))
                    ));
                }
            };
        }
        let cap_ns = if self.version == "1.1" {
            NAMESPACE_1_1
        } else {
            NAMESPACE
        };
        if self.foreign > 0 || ns != Some(cap_ns) {
            if !empty {
                self.foreign += 1;
            }
            return Ok(());
        }
        let node = Node {
            name: local,
            ..Node::default()
        };
        if empty {
            self.close(node);
        } else {
            self.stack.push(node);
        }
        Ok(())
    }

    /// The innermost open element closes.
    fn end(&mut self) {
        if self.foreign > 0 {
            self.foreign -= 1;
        } else if let Some(node) = self.stack.pop() {
            self.close(node);
        }
    }

    fn close(&mut self, node: Node) {
        match self.stack.last_mut() {
            Some(parent) => parent.children.push(node),
            None => self.root = Some(node),
        }
    }

    /// Whether text now belongs to a CAP element (not outside the root, not in a foreign one).
    fn takes_text(&self) -> bool {
        self.foreign == 0 && !self.stack.is_empty()
    }

    /// Text of the innermost open element (none inside a foreign one).
    fn text(&mut self, s: &str) {
        if self.foreign == 0
            && let Some(n) = self.stack.last_mut()
        {
            n.text.push_str(s);
        }
    }
}

/// A character reference, or one of XML's five entities; anything else is refused.
fn entity(r: &quick_xml::events::BytesRef<'_>) -> Result<String, String> {
    if r.is_char_ref() {
        return r
            .resolve_char_ref()
            .ok()
            .flatten()
            .map(String::from)
            .ok_or_else(|| "bad character reference".into());
    }
    let name = r.decode().map_err(|e| format!("bad entity: {e}"))?;
    Ok(match name.as_ref() {
        "lt" => "<",
        "gt" => ">",
        "amp" => "&",
        "apos" => "'",
        "quot" => "\"",
        other => {
            return Err(format!(
                "entity &{other}; is not one of XML's five: CAP documents declare no entities"
            ));
        }
    }
    .into())
}

fn alert_of(root: &Node, version: &'static str) -> Result<CapAlert, String> {
    let alert = CapAlert {
        version,
        identifier: root.required("identifier")?,
        sender: root.required("sender")?,
        sent: root.required("sent")?,
        status: root.required("status")?,
        msg_type: root.required("msgType")?,
        scope: root.one("scope").unwrap_or_else(|| "Public".into()),
        references: root.one("references"),
        info: root
            .all("info")
            .map(info_of)
            .collect::<Result<Vec<_>, _>>()?,
    };
    if !["Alert", "Update", "Cancel", "Ack", "Error"].contains(&alert.msg_type.as_str()) {
        return Err(format!("unknown msgType {:?}", alert.msg_type));
    }
    Ok(alert)
}

fn info_of(n: &Node) -> Result<CapInfo, String> {
    Ok(CapInfo {
        language: n.one("language"),
        event: n.required("event")?,
        response_type: n.texts("responseType"),
        urgency: n.required("urgency")?,
        severity: n.required("severity")?,
        certainty: n.required("certainty")?,
        effective: n.one("effective"),
        onset: n.one("onset"),
        expires: n.one("expires"),
        headline: n.one("headline"),
        description: n.one("description"),
        instruction: n.one("instruction"),
        area: n
            .all("area")
            .map(|a| {
                Ok(CapArea {
                    area_desc: a.required("areaDesc")?,
                    polygon: a.texts("polygon"),
                    circle: a.texts("circle"),
                    geocode: a
                        .all("geocode")
                        .map(|g| CapGeocode {
                            value_name: g.one("valueName").unwrap_or_default(),
                            value: g.one("value").unwrap_or_default(),
                        })
                        .collect(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?,
    })
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
    /// Start alerts at `<onset>` instead of `<effective>` (`cap.start = "onset"`).
    pub start_at_onset: bool,
    /// Displays with a location: (id, latitude, longitude), WGS 84 degrees.
    pub located: Vec<(String, f64, f64)>,
    /// Scope of an alert whose polygons and circles hold none of the located displays (`None`:
    /// not shown; `cap.default_scope` when set explicitly).
    pub geo_miss_scope: Option<Scope>,
}

/// An alert a CAP message ends, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ended {
    /// Marquee alert id.
    pub id: String,
    /// The `<references>` triple that names it (`sender,identifier,sent`).
    pub reference: String,
    /// `Update` or `Cancel`.
    pub by: String,
}

/// What a CAP message means for the screens: the alerts it ends (an Update or Cancel names
/// them in `<references>`; they end whatever its own content says), then what its own content
/// does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapDecision {
    /// Alerts ended first.
    pub ends: Vec<Ended>,
    /// The message's own content.
    pub action: CapAction,
}

/// What a CAP message's own content does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapAction {
    /// Raise `id`.
    Raise {
        /// Marquee alert id.
        id: String,
        /// Text per language.
        text: BTreeMap<String, String>,
        /// minor … extreme.
        severity: String,
        /// Where.
        scope: Scope,
        /// From (`<effective>`, default `sent`; or `<onset>` by policy): held until then.
        starts_at: DateTime<Utc>,
        /// Until.
        expires_at: DateTime<Utc>,
    },
    /// Nothing new reaches screens.
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

/// The alerts a message names in `<references>` (CAP 1.2 §3.2.1: space-separated
/// `sender,identifier,sent` triples; an alert is known by sender and identifier). Only the
/// sender's own alerts: with several feeds, one sender must not end another's warnings.
fn referenced(a: &CapAlert) -> Vec<(String, String)> {
    a.references
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|t| {
            let mut parts = t.split(',');
            let (sender, identifier) = (parts.next()?, parts.next()?);
            (sender == a.sender).then(|| (alert_id(sender, identifier), t.to_owned()))
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

fn time(s: Option<&str>) -> Option<DateTime<Utc>> {
    s.and_then(|t| DateTime::parse_from_rfc3339(t.trim()).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Text for a screen: markup producers put in CAP text (escaped HTML, or CDATA holding `<p>`,
/// `<br/>`) taken out, its line breaks kept as spaces, HTML's common entities decoded, runs of
/// white space folded.
pub fn plain_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        match rest[open..].find('>') {
            // A tag: `<b>`, `</p>`, `<br/>`; a lone `<` (as in "< 5 km") stays.
            Some(close)
                if rest[open + 1..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '/' || c == '!') =>
            {
                out.push(' ');
                rest = &rest[open + close + 1..];
            }
            _ => {
                out.push('<');
                rest = &rest[open + 1..];
            }
        }
    }
    out.push_str(rest);
    let decoded = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    decoded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Decides what `a` means, at `now`.
pub fn decide(a: &CapAlert, rules: &CapRules, now: DateTime<Utc>) -> CapDecision {
    let ignore = |ends: Vec<Ended>, reason: String| CapDecision {
        ends,
        action: CapAction::Ignore { reason },
    };
    if a.status != "Actual" && !rules.accept_test {
        return ignore(
            Vec::new(),
            format!(
                "status {} does not reach screens (cap.accept_test = false)",
                a.status
            ),
        );
    }
    if a.scope != "Public" {
        return ignore(
            Vec::new(),
            format!(
                "scope {}: not for public screens (only Public is shown)",
                a.scope
            ),
        );
    }
    // An Update or Cancel ends what it references before its own content is judged.
    let ends = ends_of(a);
    let first = match takes_over(a, rules) {
        Ok(first) => first,
        Err(reason) => return ignore(ends, reason),
    };
    let (starts_at, expires_at) = match window(a, first, rules, now) {
        Ok(w) => w,
        Err(reason) => return ignore(ends, reason),
    };
    let areas: Vec<&CapArea> = a.info.iter().flat_map(|i| &i.area).collect();
    let scope = match scope_of(&areas, rules) {
        Ok(s) => s,
        Err(reason) => return ignore(ends, reason),
    };
    let severity = match first.severity.as_str() {
        "Extreme" => "extreme",
        "Severe" => "severe",
        "Minor" => "minor",
        _ => "moderate",
    };
    CapDecision {
        ends,
        action: CapAction::Raise {
            id: alert_id(&a.sender, &a.identifier),
            text: texts_of(a),
            severity: severity.into(),
            scope,
            starts_at,
            expires_at,
        },
    }
}

/// What an Update or Cancel ends: the alerts it references.
fn ends_of(a: &CapAlert) -> Vec<Ended> {
    match a.msg_type.as_str() {
        "Update" | "Cancel" => referenced(a)
            .into_iter()
            .map(|(id, reference)| Ended {
                id,
                reference,
                by: a.msg_type.clone(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The first `<info>` the policy lets take over screens, or why nothing in the document does.
fn takes_over<'a>(a: &'a CapAlert, rules: &CapRules) -> Result<&'a CapInfo, String> {
    match a.msg_type.as_str() {
        "Cancel" => return Err("a Cancel raises nothing".into()),
        "Ack" | "Error" => return Err(format!("msgType {} changes nothing", a.msg_type)),
        _ => {}
    }
    if a.info.is_empty() {
        return Err("no <info> block".into());
    }
    if a.info
        .iter()
        .any(|i| i.response_type.iter().any(|r| r == "AllClear"))
    {
        return Err("responseType AllClear: the threat is over".into());
    }
    let takeover = |i: &CapInfo| {
        rules
            .policy
            .iter()
            .find(|r| r.matches(i))
            .is_some_and(|r| r.action == "takeover")
    };
    a.info.iter().find(|i| takeover(i)).ok_or_else(|| {
        let i = &a.info[0];
        format!(
            "policy: urgency {}, severity {}, certainty {} do not take over screens",
            i.urgency, i.severity, i.certainty
        )
    })
}

/// The text per language: each `<info>`'s headline (or event) and instruction, the first of a
/// language kept.
fn texts_of(a: &CapAlert) -> BTreeMap<String, String> {
    let mut text = BTreeMap::new();
    for i in &a.info {
        let head = plain_text(i.headline.as_deref().unwrap_or(&i.event));
        let body = match i.instruction.as_deref().map(plain_text) {
            Some(ins) if !ins.is_empty() => format!("{head}: {ins}"),
            _ => head,
        };
        text.entry(lang_key(i.language.as_deref())).or_insert(body);
    }
    text
}

/// When the alert is on screens: from `effective` (or `onset`, with `start_at_onset`) until
/// the earliest `expires`; or why it is not at all.
fn window(
    a: &CapAlert,
    first: &CapInfo,
    rules: &CapRules,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), String> {
    let sent = time(Some(&a.sent)).unwrap_or(now);
    let effective = time(first.effective.as_deref()).unwrap_or(sent);
    let starts_at = if rules.start_at_onset {
        time(first.onset.as_deref()).unwrap_or(effective)
    } else {
        effective
    };
    // Without <expires>: an hour from its start (or from now, for one already started).
    let expires_at = a
        .info
        .iter()
        .filter_map(|i| time(i.expires.as_deref()))
        .min()
        .unwrap_or(starts_at.max(now) + Duration::hours(1));
    if expires_at <= now {
        return Err(format!("expired at {expires_at}"));
    }
    if starts_at >= expires_at {
        return Err(format!(
            "it would start at {starts_at}, not before it expires at {expires_at}"
        ));
    }
    Ok((starts_at, expires_at))
}

/// A CAP polygon (`lat,lon lat,lon …`, WGS 84, first = last; CAP 1.2 §3.3.1) as a `geo`
/// polygon in (x = longitude, y = latitude); `None` when it has fewer than 4 points or a
/// point does not read.
pub fn polygon(text: &str) -> Option<geo::Polygon<f64>> {
    let points: Option<Vec<geo::Coord<f64>>> = text
        .split_whitespace()
        .map(|p| {
            let (lat, lon) = p.split_once(',')?;
            Some(geo::Coord {
                x: lon.trim().parse().ok()?,
                y: lat.trim().parse().ok()?,
            })
        })
        .collect();
    let points = points?;
    (points.len() >= 4).then(|| geo::Polygon::new(geo::LineString::from(points), vec![]))
}

/// A CAP circle (`lat,lon radius`, the radius in km) as (centre, radius in metres).
pub fn circle(text: &str) -> Option<(geo::Point<f64>, f64)> {
    let (centre, radius) = text.trim().split_once(char::is_whitespace)?;
    let (lat, lon) = centre.split_once(',')?;
    let km: f64 = radius.trim().parse().ok()?;
    Some((
        geo::Point::new(lon.trim().parse().ok()?, lat.trim().parse().ok()?),
        km * 1000.0,
    ))
}

/// The located displays inside any polygon or circle of `areas`; `None` when the areas carry
/// no readable geometry.
fn displays_inside(areas: &[&CapArea], located: &[(String, f64, f64)]) -> Option<Vec<String>> {
    use geo::{Contains, Distance, Haversine};
    let polygons: Vec<_> = areas
        .iter()
        .flat_map(|a| a.polygon.iter().filter_map(|p| polygon(p)))
        .collect();
    let circles: Vec<_> = areas
        .iter()
        .flat_map(|a| a.circle.iter().filter_map(|c| circle(c)))
        .collect();
    if polygons.is_empty() && circles.is_empty() {
        return None;
    }
    Some(
        located
            .iter()
            .filter(|(_, lat, lon)| {
                let p = geo::Point::new(*lon, *lat);
                polygons.iter().any(|poly| poly.contains(&p))
                    || circles.iter().any(|(c, r)| Haversine.distance(*c, p) <= *r)
            })
            .map(|(id, _, _)| id.clone())
            .collect(),
    )
}

fn scope_of(areas: &[&CapArea], rules: &CapRules) -> Result<Scope, String> {
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
    if everywhere {
        return Ok(Scope::All);
    } else if !channels.is_empty() {
        return Ok(Scope::Channels(channels));
    } else if !displays.is_empty() {
        return Ok(Scope::Displays(displays));
    }
    // No configured rule: the polygons and circles, against the displays' locations.
    if !rules.located.is_empty()
        && let Some(inside) = displays_inside(areas, &rules.located)
    {
        return match (inside.is_empty(), &rules.geo_miss_scope) {
            (false, _) => Ok(Scope::Displays(inside)),
            (true, Some(s)) => Ok(s.clone()),
            (true, None) => Err(format!(
                "its polygons and circles hold none of this office's {} located displays",
                rules.located.len()
            )),
        };
    }
    rules.default_scope.clone().ok_or_else(|| {
        "no configured area matches (cap.areas) and there is no default scope".to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2021-05-15T01:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
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
            start_at_onset: false,
            located: vec![],
            geo_miss_scope: None,
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

    fn raised(d: &CapDecision) -> (&str, &Scope, DateTime<Utc>, DateTime<Utc>) {
        match &d.action {
            CapAction::Raise {
                id,
                scope,
                starts_at,
                expires_at,
                ..
            } => (id, scope, *starts_at, *expires_at),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn actual_multilingual_alert_raises_on_the_mapped_scope() {
        let a = parse(&doc("Actual", "Alert", "", INFO)).unwrap();
        let d = decide(&a, &rules(), now());
        assert!(d.ends.is_empty());
        match d.action {
            CapAction::Raise {
                id,
                text,
                severity,
                scope,
                expires_at,
                starts_at,
            } => {
                assert_eq!(id, alert_id("cma@example.gov", "T-1"));
                assert_eq!(text["zh"], "台风红色预警: 请留在室内");
                assert_eq!(text["en"], "Typhoon red warning: Stay indoors");
                assert_eq!(severity, "extreme");
                assert_eq!(scope, Scope::Channels(vec!["subway".into()]));
                assert_eq!(expires_at.to_rfc3339(), "2021-05-15T04:00:00+00:00");
                assert_eq!(
                    starts_at,
                    t("2021-05-15T01:00:00Z"),
                    "effective defaults to sent"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn update_and_cancel_end_what_they_reference_first() {
        let refs = "<references>cma@example.gov,T-0,2021-05-15T08:00:00+08:00</references>";
        let a = parse(&doc("Actual", "Update", refs, INFO)).unwrap();
        let d = decide(&a, &rules(), now());
        assert_eq!(
            d.ends,
            vec![Ended {
                id: alert_id("cma@example.gov", "T-0"),
                reference: "cma@example.gov,T-0,2021-05-15T08:00:00+08:00".into(),
                by: "Update".into(),
            }]
        );
        assert!(matches!(d.action, CapAction::Raise { .. }));
        let c = parse(&doc("Actual", "Cancel", refs, "")).unwrap();
        let d = decide(&c, &rules(), now());
        assert_eq!(d.ends[0].id, alert_id("cma@example.gov", "T-0"));
        assert!(matches!(d.action, CapAction::Ignore { .. }));
        // A downgrade (Minor, Past) the policy would ignore still ends what it references.
        let info = INFO
            .replace("<severity>Extreme</severity>", "<severity>Minor</severity>")
            .replace("<urgency>Immediate</urgency>", "<urgency>Past</urgency>");
        let d = decide(
            &parse(&doc("Actual", "Update", refs, &info)).unwrap(),
            &rules(),
            now(),
        );
        assert_eq!(d.ends.len(), 1);
        assert!(matches!(d.action, CapAction::Ignore { .. }));
        // AllClear ends, and raises nothing even when its ratings would take over.
        let info = INFO.replace(
            "<event>Typhoon</event>",
            "<event>Typhoon</event><responseType>AllClear</responseType>",
        );
        let d = decide(
            &parse(&doc("Actual", "Update", refs, &info)).unwrap(),
            &rules(),
            now(),
        );
        assert_eq!(d.ends.len(), 1);
        let CapAction::Ignore { reason } = d.action else {
            panic!()
        };
        assert!(reason.contains("AllClear"), "{reason}");
        // A Test message ends nothing.
        let d = decide(
            &parse(&doc("Test", "Cancel", refs, "")).unwrap(),
            &rules(),
            now(),
        );
        assert!(d.ends.is_empty());
    }

    #[test]
    fn test_and_exercise_stay_off_screens_unless_accepted() {
        for status in ["Test", "Exercise"] {
            let a = parse(&doc(status, "Alert", "", INFO)).unwrap();
            assert!(matches!(
                decide(&a, &rules(), now()).action,
                CapAction::Ignore { .. }
            ));
            let mut r = rules();
            r.accept_test = true;
            assert!(matches!(
                decide(&a, &r, now()).action,
                CapAction::Raise { .. }
            ));
        }
    }

    #[test]
    fn policy_ignores_minor_or_possible_events() {
        let info = INFO.replace("<severity>Extreme</severity>", "<severity>Minor</severity>");
        let a = parse(&doc("Actual", "Alert", "", &info)).unwrap();
        let CapAction::Ignore { reason } = decide(&a, &rules(), now()).action else {
            panic!()
        };
        assert!(reason.contains("severity Minor"), "{reason}");
    }

    #[test]
    fn unmapped_area_uses_the_default_scope_or_is_ignored() {
        let info = INFO.replace("Pudong", "Elsewhere");
        let a = parse(&doc("Actual", "Alert", "", &info)).unwrap();
        assert!(matches!(
            decide(&a, &rules(), now()).action,
            CapAction::Raise {
                scope: Scope::All,
                ..
            }
        ));
        let mut r = rules();
        r.default_scope = None;
        assert!(matches!(
            decide(&a, &r, now()).action,
            CapAction::Ignore { .. }
        ));
    }

    #[test]
    fn expired_alerts_are_ignored() {
        let later = now() + Duration::days(1);
        let a = parse(&doc("Actual", "Alert", "", INFO)).unwrap();
        assert!(matches!(
            decide(&a, &rules(), later).action,
            CapAction::Ignore { .. }
        ));
    }

    #[test]
    fn effective_and_onset_hold_the_start() {
        let info = INFO.replace(
            "<expires>",
            "<effective>2021-05-15T10:00:00+08:00</effective><onset>2021-05-15T11:00:00+08:00</onset><expires>",
        );
        let a = parse(&doc("Actual", "Alert", "", &info)).unwrap();
        let (_, _, starts, _) = raised(&decide(&a, &rules(), now()));
        assert_eq!(starts, t("2021-05-15T02:00:00Z"));
        let mut r = rules();
        r.start_at_onset = true;
        let (_, _, starts, _) = raised(&decide(&a, &r, now()));
        assert_eq!(starts, t("2021-05-15T03:00:00Z"));
    }

    #[test]
    fn restricted_other_senders_and_no_expiry() {
        let a = parse(
            &doc("Actual", "Alert", "", INFO)
                .replace("<scope>Public</scope>", "<scope>Restricted</scope>"),
        )
        .unwrap();
        assert!(
            matches!(decide(&a, &rules(), now()).action, CapAction::Ignore { ref reason } if reason.contains("Restricted"))
        );
        // Another sender's reference ends nothing.
        let refs = "<references>other@example.gov,T-0,2021-05-15T08:00:00+08:00</references>";
        let d = decide(
            &parse(&doc("Actual", "Cancel", refs, "")).unwrap(),
            &rules(),
            now(),
        );
        assert!(d.ends.is_empty());
        // No <expires>, effective two hours ahead: held, and lasts an hour from its start.
        let info = INFO.replace(
            "<expires>2021-05-15T12:00:00+08:00</expires>",
            "<effective>2021-05-15T11:00:00+08:00</effective>",
        );
        let (_, _, starts, expires) = raised(&decide(
            &parse(&doc("Actual", "Alert", "", &info)).unwrap(),
            &rules(),
            now(),
        ));
        assert_eq!(
            (starts, expires),
            (t("2021-05-15T03:00:00Z"), t("2021-05-15T04:00:00Z"))
        );
    }

    #[test]
    fn malformed_and_foreign_documents_are_precise_errors() {
        let e = parse("<alert xmlns=\"urn:oasis:names:tc:emergency:cap:1.2\">\n  <identifier>x</sender>\n</alert>").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.starts_with("malformed XML"), "{e}");
        let e = parse(&doc("Actual", "Alert", "", INFO).replace("cap:1.2", "cap:9.9")).unwrap_err();
        assert!(
            e.message.contains("not CAP 1.2")
                && e.message
                    .contains("\"urn:oasis:names:tc:emergency:cap:9.9\""),
            "{e}"
        );
        let e =
            parse(&doc("Actual", "Alert", "", INFO).replace("<identifier>T-1</identifier>", ""))
                .unwrap_err();
        assert!(e.message.contains("identifier"), "{e}");
        let e = parse("<alert><identifier>x</identifier></alert>").unwrap_err();
        assert!(e.message.contains("namespace (none)"), "{e}");
    }

    #[test]
    fn markup_in_cap_text_is_taken_out() {
        assert_eq!(
            plain_text("<p>Signal No. 8</p><br/>Stay &amp; keep <b>away</b> &lt; 5 km"),
            "Signal No. 8 Stay & keep away < 5 km"
        );
        assert_eq!(plain_text("a < b and c > d"), "a < b and c > d");
        assert_eq!(plain_text("  两行\n文字  "), "两行 文字");
    }

    /// Every document of the field corpus (`tests/fixtures/cap/field/`, see its README) with
    /// what it must do, judged at a time when each is current.
    #[test]
    fn the_field_corpus_is_read_as_its_producers_mean_it() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cap/field");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        let mut r = rules();
        r.areas.clear();
        // (file, now, expected: Ok(start) raised from, or Err(part of the reason / error))
        let raised_from: &[(&str, &str, &str)] = &[
            (
                "us-nws-signed.xml",
                "2026-07-14T20:50:00Z",
                "2026-07-14T20:42:00Z",
            ),
            (
                "ca-capcp-bilingual.xml",
                "2026-10-21T19:10:00Z",
                "2026-10-21T19:05:00Z",
            ),
            (
                "national-prefixed.xml",
                "2026-08-19T12:20:00Z",
                "2026-08-19T12:10:00Z",
            ),
            (
                "national-prefixed-ns1.xml",
                "2027-01-16T19:30:00Z",
                "2027-01-16T19:20:00Z",
            ),
            (
                "typhoon-markup.xml",
                "2026-09-12T00:20:00Z",
                "2026-09-12T00:15:00Z",
            ),
            (
                "cn-national-early-warning.xml",
                "2026-07-18T06:40:00Z",
                "2026-07-18T06:30:00Z",
            ),
            (
                "cap11-legacy.xml",
                "2026-05-21T00:20:00Z",
                "2026-05-21T00:12:00Z",
            ),
            (
                "update-allclear-warning.xml",
                "2026-08-03T19:10:00Z",
                "2026-08-03T19:05:00Z",
            ),
            // Received two days early: held until its effective time.
            (
                "future-effective.xml",
                "2026-09-10T12:05:00Z",
                "2026-09-12T12:00:00Z",
            ),
        ];
        for (file, at, from) in raised_from {
            let a = parse(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            let d = decide(&a, &r, t(at));
            let (_, scope, starts, expires) = raised(&d);
            assert_eq!((starts, scope), (t(from), &Scope::All), "{file}");
            assert!(expires > starts, "{file}");
        }
        let a = parse(&read("cap11-legacy.xml")).unwrap();
        assert_eq!(a.version, "1.1");
        // The typhoon's escaped HTML and CDATA markup never reach a screen.
        let a = parse(&read("typhoon-markup.xml")).unwrap();
        let CapAction::Raise { text, .. } = decide(&a, &r, t("2026-09-12T00:20:00Z")).action else {
            panic!()
        };
        for v in text.values() {
            assert!(
                !v.contains('<') && !v.contains("&amp;") && !v.contains("&lt;"),
                "{v}"
            );
        }
        assert!(
            text.contains_key("zh") && text.contains_key("en"),
            "{text:?}"
        );
        // With onset chosen, it starts at onset.
        let mut onset = r.clone();
        onset.start_at_onset = true;
        let (_, _, starts, _) = raised(&decide(&a, &onset, t("2026-09-12T00:20:00Z")));
        assert_eq!(starts, t("2026-09-12T03:00:00Z"));
        // The Canadian alert's empty <references> means none.
        let a = parse(&read("ca-capcp-bilingual.xml")).unwrap();
        assert_eq!(a.references, None);
        // Moderate MeteoAlarm warning: ignored, at sent and at onset.
        let a = parse(&read("eu-meteoalarm-emma.xml")).unwrap();
        for at in ["2026-12-01T05:10:00Z", "2026-12-01T23:10:00Z"] {
            let d = decide(&a, &r, t(at));
            assert!(
                matches!(d.action, CapAction::Ignore { ref reason } if reason.contains("Moderate")),
                "{d:?}"
            );
        }
        // The AllClear Update and the Cancel each end the warning and raise nothing.
        let warning = alert_id(
            "w-nws.webmaster@weather.example",
            "urn:oid:2.49.0.1.840.0.5658cd749e17a32a6a3af3e78e6e783563f06d22.001.1",
        );
        for (file, by, at) in [
            ("update-allclear.xml", "Update", "2026-08-03T20:21:00Z"),
            ("cancel.xml", "Cancel", "2026-08-03T19:21:00Z"),
        ] {
            let d = decide(&parse(&read(file)).unwrap(), &r, t(at));
            assert_eq!(d.ends.len(), 1, "{file}");
            assert_eq!(
                (d.ends[0].id.as_str(), d.ends[0].by.as_str()),
                (warning.as_str(), by)
            );
            assert!(matches!(d.action, CapAction::Ignore { .. }), "{file}");
        }
        // Not CAP, and hostile documents: refused, with what was found.
        let e = parse(&read("wrong-namespace.xml")).unwrap_err();
        assert!(e.message.contains("urn:example:not-cap"), "{e}");
        let e = parse(&read("hostile-entity-expansion.xml")).unwrap_err();
        assert!(e.message.contains("entit"), "{e}");
        let e = parse(&read("hostile-deep-nesting.xml")).unwrap_err();
        assert!(e.message.contains("nested deeper"), "{e}");
        // A huge attribute is ignored: the alert itself is fine.
        let a = parse(&read("hostile-huge-attribute.xml")).unwrap();
        assert_eq!(a.identifier, "HOSTILE-ATTR-0001");
    }

    /// The corpus's polygons and circles against displays placed just inside and just outside
    /// (the points of `tests/fixtures/cap/field/README.md`; each outside point lies inside the
    /// polygon's bounding box, so a box test would fail).
    #[test]
    fn polygons_and_circles_put_alerts_on_the_displays_inside() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cap/field");
        type Point = (f64, f64);
        let cases: &[(&str, &str, Point, Point)] = &[
            (
                "us-nws-signed.xml",
                "2026-07-14T20:50:00Z",
                (41.54, -92.64),
                (41.43, -92.80),
            ),
            (
                "ca-capcp-bilingual.xml",
                "2026-10-21T19:10:00Z",
                (50.46, -104.60),
                (50.52, -104.607),
            ),
            (
                "national-prefixed.xml",
                "2026-08-19T12:20:00Z",
                (25.30, 83.04),
                (25.40, 82.92),
            ),
            (
                "national-prefixed-ns1.xml",
                "2027-01-16T19:30:00Z",
                (-33.51, -70.53),
                (-33.42, -70.64),
            ),
            (
                "typhoon-markup.xml",
                "2026-09-12T00:20:00Z",
                (22.35, 114.05),
                (22.48, 114.40),
            ),
            (
                "cn-national-early-warning.xml",
                "2026-07-18T06:40:00Z",
                (23.05, 113.32),
                (22.95, 113.20),
            ),
            (
                "cap11-legacy.xml",
                "2026-05-21T00:20:00Z",
                (38.18, -97.72),
                (38.02, -97.55),
            ),
        ];
        for (file, at, inside, outside) in cases {
            let a = parse(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
            let mut r = rules();
            r.areas.clear();
            r.located = vec![
                ("in".into(), inside.0, inside.1),
                ("out".into(), outside.0, outside.1),
            ];
            let d = decide(&a, &r, t(at));
            assert_eq!(raised(&d).1, &Scope::Displays(vec!["in".into()]), "{file}");
            // Only the outside display: not shown, and the reason says so…
            r.located.remove(0);
            let d = decide(&a, &r, t(at));
            assert!(
                matches!(&d.action, CapAction::Ignore { reason } if reason.contains("none of this office's 1 located displays")),
                "{file}: {d:?}"
            );
            // …unless cap.default_scope says "all".
            r.geo_miss_scope = Some(Scope::All);
            assert_eq!(raised(&decide(&a, &r, t(at))).1, &Scope::All, "{file}");
        }
        // A configured areaDesc rule still wins over geometry.
        let a = parse(&std::fs::read_to_string(dir.join("cn-national-early-warning.xml")).unwrap())
            .unwrap();
        let mut r = rules();
        r.areas[0].area_desc = Some("示例市青川区".into());
        r.located = vec![("far".into(), 0.0, 0.0)];
        let d = decide(&a, &r, t("2026-07-18T06:40:00Z"));
        assert_eq!(raised(&d).1, &Scope::Channels(vec!["subway".into()]));
        assert_eq!(circle("50.4521,-104.6070 4").unwrap().1, 4000.0);
        assert!(polygon("1,2 3,4").is_none(), "fewer than 4 points");
    }
}
