//! Campaigns, their messages (one row per recipient, all written before the first send),
//! delivery reports and the opt-out list.
//!
//! Every state change of a message goes through [`crate::domain::delivery`], inside one
//! transaction that reads the current state first, so a report and a submit answer racing each
//! other cannot move a message backwards. These calls use the store's SMS connection: a claim
//! (`queued → submitting`) is on disk before its request leaves (on SQLite its commit is
//! synced by the log's own thread, [`crate::store::walsync`], and the request waits for it).
//!
//! By area: `campaigns` (creating, importing, status), `queue` (claiming, storing submit
//! answers, recovery, requeue), `reports` (delivery reports, reconciliation of unknowns) and
//! `optouts` (the opt-out list and replies). The row types and the helpers they share are here.

mod campaigns;
mod optouts;
mod queue;
pub use campaigns::Firing;
pub use queue::Minute;
mod reports;

use std::collections::BTreeMap;

use crate::store::db::{Connection, OptionalExtension, Row, Transaction, params};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{StoreError, ts};
use crate::domain::campaign::CampaignStatus;
use crate::domain::delivery::{Report, State, Submit};

/// A recipient row to insert with a new campaign.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Row in the import (1-based, header excluded).
    pub row: usize,
    /// The E.164 number's digits (without `+`).
    pub recipient: u64,
    /// The final text (shared between recipients when it is the same).
    pub text: std::sync::Arc<str>,
    /// SMS parts.
    pub parts: usize,
    /// Template parameters as a JSON array (shared when the same), `None` for free text.
    pub params: Option<std::sync::Arc<str>>,
}

impl NewMessage {
    /// The number as E.164 (`+8613800138000`).
    pub fn e164(&self) -> String {
        format!("+{}", self.recipient)
    }
}

/// What a new campaign is, besides its messages.
#[derive(Debug, Clone)]
pub struct NewCampaign<'a> {
    /// Name.
    pub name: &'a str,
    /// Specification (JSON).
    pub spec: &'a serde_json::Value,
    /// Planned start.
    pub start_at: Option<DateTime<Utc>>,
    /// Token name creating it.
    pub by: &'a str,
    /// The alert that starts it.
    pub alert: Option<&'a str>,
}

/// A campaign as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CampaignRow {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Where it stands.
    pub status: CampaignStatus,
    /// The specification (texts, sender, gateways, quiet hours, cap) as JSON.
    pub spec: serde_json::Value,
    /// Planned start.
    pub start_at: Option<String>,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at: String,
    /// When it (last) started running.
    pub started_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
    /// The alert that started it.
    pub alert: Option<String>,
    /// Who approved it (two-person rule).
    pub approved_by: Option<String>,
    /// When.
    pub approved_at: Option<String>,
    /// Why a gateway paused it (its template or signature refused), until it runs again.
    pub paused_reason: Option<String>,
    /// Messages per state.
    pub counts: BTreeMap<String, i64>,
    /// Total SMS parts of every message.
    pub segments: i64,
}

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct MessageRow {
    /// Our id (in the delivery-report URL).
    pub id: i64,
    /// Campaign.
    pub campaign: i64,
    /// Row in the import.
    pub row: i64,
    /// E.164.
    pub recipient: String,
    /// Text.
    pub text: String,
    /// Parts.
    pub parts: i64,
    /// State.
    pub state: String,
    /// Gateway of the last attempt.
    pub gateway: Option<String>,
    /// Submits made.
    pub attempts: i64,
    /// Not sent before this (backoff, quiet hours, daily cap).
    pub not_before: Option<String>,
    /// The carrier's id.
    pub carrier_id: Option<String>,
    /// The carrier's or our reason for the state.
    pub reason: Option<String>,
    /// Last submit.
    pub submitted_at: Option<String>,
    /// Last change.
    pub updated_at: String,
}

/// A message claimed for sending (now `submitting`).
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Id.
    pub id: i64,
    /// Its campaign.
    pub campaign: i64,
    /// E.164.
    pub recipient: String,
    /// Text.
    pub text: String,
    /// Parts.
    pub parts: usize,
    /// Submits so far, this one included.
    pub attempts: i64,
    /// Template parameters (a JSON array), `None` for free text.
    pub params: Option<String>,
}

/// A message whose submit answer was lost.
#[derive(Debug, Clone)]
pub struct UnknownMessage {
    /// Id.
    pub id: i64,
    /// Campaign.
    pub campaign: i64,
    /// Parts.
    pub parts: usize,
    /// E.164.
    pub recipient: String,
    /// The gateway it went to.
    pub gateway: Option<String>,
    /// When.
    pub submitted_at: Option<DateTime<Utc>>,
}

/// A delivery report to store.
#[derive(Debug, Clone)]
pub struct ReportIn {
    /// Our message id; 0 when the report names only the carrier's id.
    pub id: i64,
    /// The carrier's id for the message (Tencent `sid`, Aliyun biz id and phone), when the
    /// report carries no id of ours: looked up among what this gateway was given.
    pub carrier_id: Option<String>,
    /// The gateway it came from (must be the one the message went through).
    pub gateway: String,
    /// Its meaning.
    pub report: Option<Report>,
    /// The gateway's code.
    pub code: String,
    /// Raw fields.
    pub raw: String,
}

/// A gateway's answer to store.
#[derive(Debug, Clone)]
pub struct Finish {
    /// Message.
    pub id: i64,
    /// Its campaign, and its parts, as claimed (they keep the campaign's counts).
    pub campaign: i64,
    /// Its parts.
    pub parts: usize,
    /// Classification.
    pub answer: Submit,
    /// The carrier's id.
    pub carrier_id: Option<String>,
    /// Why (carrier text, or ours).
    pub reason: Option<String>,
    /// For a requeued message: not before this.
    pub retry_at: Option<DateTime<Utc>>,
    /// Dry-run: the gateway that also reports it delivered.
    pub delivered_by: Option<String>,
}

/// An opted-out number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OptOut {
    /// E.164.
    pub number: String,
    /// Why (free text).
    pub reason: String,
    /// Token name.
    pub added_by: String,
    /// When.
    pub added_at: String,
}

pub(super) const MESSAGE_COLS: &str = "id, campaign, row, recipient, text, parts, state, gateway, attempts, \
     not_before, carrier_id, reason, submitted_at, updated_at";

pub(super) fn message_row(r: &Row<'_>) -> crate::store::db::Result<MessageRow> {
    Ok(MessageRow {
        id: r.get(0)?,
        campaign: r.get(1)?,
        row: r.get(2)?,
        recipient: r.get(3)?,
        text: r.get(4)?,
        parts: r.get(5)?,
        state: r.get(6)?,
        gateway: r.get(7)?,
        attempts: r.get(8)?,
        not_before: r.get(9)?,
        carrier_id: r.get(10)?,
        reason: r.get(11)?,
        submitted_at: r.get(12)?,
        updated_at: r.get(13)?,
    })
}

pub(super) fn parse_state(s: &str) -> State {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).unwrap_or(State::Unknown)
}

/// Column `i` as a campaign status; a name this build does not know is an error, not a guess.
pub(super) fn campaign_status(r: &Row<'_>, i: usize) -> crate::store::db::Result<CampaignStatus> {
    let s: String = r.get(i)?;
    CampaignStatus::parse(&s).ok_or_else(|| {
        crate::store::db::Error::Conversion(i, format!("unknown campaign status {s:?}"))
    })
}

pub(super) fn campaign_of(conn: &Connection, id: i64) -> Result<Option<CampaignRow>, StoreError> {
    let row = conn
        .query_row(
            "SELECT id, name, status, spec, start_at, created_by, created_at, started_at, finished_at,
                    alert, approved_by, approved_at, paused_reason
             FROM campaigns WHERE id = ?1",
            [id],
            |r| {
                let spec: String = r.get(3)?;
                Ok(CampaignRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    status: campaign_status(r, 2)?,
                    spec: serde_json::from_str(&spec).unwrap_or_default(),
                    start_at: r.get(4)?,
                    created_by: r.get(5)?,
                    created_at: r.get(6)?,
                    started_at: r.get(7)?,
                    finished_at: r.get(8)?,
                    alert: r.get(9)?,
                    approved_by: r.get(10)?,
                    approved_at: r.get(11)?,
                    paused_reason: r.get(12)?,
                    counts: BTreeMap::new(),
                    segments: 0,
                })
            },
        )
        .optional()?;
    let Some(mut c) = row else { return Ok(None) };
    let mut stmt = conn.prepare_cached(
        "SELECT state, n, parts FROM message_counts WHERE campaign = ?1 AND n > 0",
    )?;
    let rows = stmt.query_map([id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (state, n, parts) = row?;
        c.counts.insert(state, n);
        c.segments += parts;
    }
    Ok(Some(c))
}

/// Counts the messages just inserted for a new campaign.
/// Inserts a campaign row in `status`; returns its id.
pub(super) fn insert_campaign(
    conn: &Connection,
    c: &NewCampaign<'_>,
    status: CampaignStatus,
    now: DateTime<Utc>,
) -> crate::store::db::Result<i64> {
    conn.query_row(
        "INSERT INTO campaigns (name, status, spec, start_at, created_by, created_at, alert)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
        params![
            c.name,
            status.as_str(),
            c.spec.to_string(),
            c.start_at.map(ts),
            c.by,
            ts(now),
            c.alert
        ],
        |r| r.get(0),
    )
}

/// Inserts `messages` of `campaign` as queued; returns their parts.
pub(super) fn insert_messages(
    tx: &Transaction<'_>,
    campaign: i64,
    now: DateTime<Utc>,
    messages: &[NewMessage],
) -> crate::store::db::Result<i64> {
    let now = ts(now);
    if tx.is_pg() {
        return insert_messages_pg(tx, campaign, &now, messages);
    }
    let mut ins = tx.prepare_cached(
        "INSERT INTO messages (campaign, row, recipient, text, parts, state, updated_at, params)
         VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7)",
    )?;
    let mut parts = 0;
    for m in messages {
        ins.execute(params![
            campaign,
            m.row as i64,
            m.e164(),
            &*m.text,
            m.parts as i64,
            now,
            m.params.as_deref()
        ])?;
        parts += m.parts as i64;
    }
    Ok(parts)
}

/// [`insert_messages`] on PostgreSQL: 500 rows a statement. One at a time, every row is a
/// round trip to the server, and a 10,000-row import chunk held the write lock for over a
/// second, keeping an alert waiting behind it.
fn insert_messages_pg(
    tx: &Transaction<'_>,
    campaign: i64,
    now: &str,
    messages: &[NewMessage],
) -> crate::store::db::Result<i64> {
    use crate::store::db::{ToSql, Value};
    const ROWS: usize = 500;
    let mut parts = 0;
    for group in messages.chunks(ROWS) {
        let rows: Vec<String> = (0..group.len())
            .map(|i| {
                let p = i * 7;
                format!(
                    "(?{}, ?{}, ?{}, ?{}, ?{}, 'queued', ?{}, ?{})",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5,
                    p + 6,
                    p + 7
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO messages (campaign, row, recipient, text, parts, state, updated_at, params)
             VALUES {}",
            rows.join(", ")
        );
        let mut values = Vec::with_capacity(group.len() * 7);
        for m in group {
            values.extend([
                Value::Int(campaign),
                Value::Int(m.row as i64),
                Value::Text(m.e164().to_string()),
                Value::Text(m.text.to_string()),
                Value::Int(m.parts as i64),
                Value::Text(now.to_owned()),
                m.params
                    .as_deref()
                    .map_or(Value::Null, |p| Value::Text(p.to_owned())),
            ]);
            parts += m.parts as i64;
        }
        let refs: Vec<&dyn ToSql> = values.iter().map(|v| v as &dyn ToSql).collect();
        tx.prepare_cached(&sql)?.execute(refs.as_slice())?;
    }
    Ok(parts)
}

/// Keeps the rows an import rejected, with the row as read.
pub(super) fn insert_rejects(
    tx: &Transaction<'_>,
    campaign: i64,
    rejects: &[crate::sms::campaign::Reject],
) -> crate::store::db::Result<()> {
    let mut ins = tx.prepare_cached(
        "INSERT INTO campaign_rejects (campaign, row, value, reason, cells)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (campaign, row) DO UPDATE SET value = excluded.value,
             reason = excluded.reason, cells = excluded.cells",
    )?;
    for r in rejects {
        ins.execute(params![
            campaign,
            r.row as i64,
            r.value,
            r.reason,
            serde_json::to_string(&r.cells).unwrap_or_else(|_| "[]".into())
        ])?;
    }
    Ok(())
}

pub(super) fn count_new(tx: &Transaction<'_>, campaign: i64) -> crate::store::db::Result<()> {
    tx.execute(
        "INSERT INTO message_counts (campaign, state, n, parts)
         SELECT campaign, state, COUNT(*), SUM(parts) FROM messages WHERE campaign = ?1
         GROUP BY campaign, state",
        [campaign],
    )?;
    Ok(())
}

/// The state changes of one transaction, added to `message_counts` before it commits (see
/// migration 10). Every statement that changes a message's state reports it here.
#[derive(Default)]
pub(super) struct Tally(BTreeMap<(i64, &'static str), (i64, i64)>);

impl Tally {
    /// A message of `campaign` with `parts` went from `from` to `to`.
    pub(super) fn moved(&mut self, campaign: i64, parts: i64, from: State, to: State) {
        if from == to {
            return;
        }
        for (state, sign) in [(from, -1), (to, 1)] {
            let e = self.0.entry((campaign, state.as_str())).or_default();
            e.0 += sign;
            e.1 += sign * parts;
        }
    }

    pub(super) fn write(self, tx: &Transaction<'_>) -> crate::store::db::Result<()> {
        let mut add = tx.prepare_cached(
            "INSERT INTO message_counts (campaign, state, n, parts) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (campaign, state) DO UPDATE
                 SET n = message_counts.n + excluded.n, parts = message_counts.parts + excluded.parts",
        )?;
        for ((campaign, state), (n, parts)) in self.0 {
            if n != 0 || parts != 0 {
                add.execute(params![campaign, state, n, parts])?;
            }
        }
        Ok(())
    }
}

/// Runs `sql`, an `UPDATE` of many messages from `from` to `to` that ends in `RETURNING
/// campaign, parts`, and counts what it moved. Returns how many.
pub(super) fn move_all(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl crate::store::db::Params,
    from: State,
    to: State,
) -> crate::store::db::Result<usize> {
    let mut tally = Tally::default();
    let mut stmt = tx.prepare(sql)?;
    let mut rows = stmt.query(params)?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        tally.moved(r.get(0)?, r.get(1)?, from, to);
        n += 1;
    }
    drop(rows);
    tally.write(tx)?;
    Ok(n)
}

/// A gateway out of rotation: its name, the provider's words, until when.
pub type Outage = (String, String, DateTime<Utc>);

impl super::Store {
    /// Replaces the gateways out of rotation with `outages` (the dispatcher's, on the leader).
    pub fn set_gateway_outages(&self, outages: &[Outage]) -> Result<(), StoreError> {
        let mut conn = self.sms_conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM gateway_outages", [])?;
        let mut add = tx.prepare_cached(
            "INSERT INTO gateway_outages (gateway, reason, until) VALUES (?1, ?2, ?3)",
        )?;
        for (gateway, reason, until) in outages {
            add.execute(params![gateway, reason, ts(*until)])?;
        }
        drop(add);
        tx.commit()?;
        Ok(())
    }

    /// The gateways out of rotation as last stored (a time may have ended since).
    pub fn gateway_outages(&self) -> Result<Vec<Outage>, StoreError> {
        let conn = self.read_conn();
        let mut st =
            conn.prepare("SELECT gateway, reason, until FROM gateway_outages ORDER BY gateway")?;
        let rows: Vec<(String, String, String)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(g, reason, until)| {
                let until = DateTime::parse_from_rfc3339(&until)
                    .ok()?
                    .with_timezone(&Utc);
                Some((g, reason, until))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
