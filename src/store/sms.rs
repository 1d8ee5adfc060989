//! Campaigns, their messages (one row per recipient, all written before the first send),
//! delivery reports and the opt-out list.
//!
//! Every state change of a message goes through [`crate::domain::delivery`], inside one
//! transaction that reads the current state first, so a report and a submit answer racing each
//! other cannot move a message backwards. These calls use the store's SMS connection
//! (`synchronous = FULL`): a claim (`queued → submitting`) is on disk before the request leaves.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use serde::Serialize;

use super::fleet::ts;
use super::{Store, StoreError};
use crate::domain::campaign::CampaignStatus;
use crate::domain::delivery::{self, Report, State, Submit};

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

const MESSAGE_COLS: &str = "id, campaign, row, recipient, text, parts, state, gateway, attempts, \
     not_before, carrier_id, reason, submitted_at, updated_at";

fn message_row(r: &Row<'_>) -> rusqlite::Result<MessageRow> {
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

fn parse_state(s: &str) -> State {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).unwrap_or(State::Unknown)
}

/// Column `i` as a campaign status; a name this build does not know is an error, not a guess.
fn campaign_status(r: &Row<'_>, i: usize) -> rusqlite::Result<CampaignStatus> {
    let s: String = r.get(i)?;
    CampaignStatus::parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown campaign status {s:?}").into(),
        )
    })
}

fn campaign_of(conn: &Connection, id: i64) -> Result<Option<CampaignRow>, StoreError> {
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
fn insert_campaign(
    conn: &rusqlite::Connection,
    c: &NewCampaign<'_>,
    status: CampaignStatus,
    now: DateTime<Utc>,
) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO campaigns (name, status, spec, start_at, created_by, created_at, alert)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            c.name,
            status.as_str(),
            c.spec.to_string(),
            c.start_at.map(ts),
            c.by,
            ts(now),
            c.alert
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Inserts `messages` of `campaign` as queued; returns their parts.
fn insert_messages(
    tx: &Transaction<'_>,
    campaign: i64,
    now: DateTime<Utc>,
    messages: &[NewMessage],
) -> rusqlite::Result<i64> {
    let mut ins = tx.prepare_cached(
        "INSERT INTO messages (campaign, row, recipient, text, parts, state, updated_at, params)
         VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7)",
    )?;
    let now = ts(now);
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

/// Keeps the rows an import rejected, with the row as read.
fn insert_rejects(
    tx: &Transaction<'_>,
    campaign: i64,
    rejects: &[crate::sms::campaign::Reject],
) -> rusqlite::Result<()> {
    let mut ins = tx.prepare_cached(
        "INSERT OR REPLACE INTO campaign_rejects (campaign, row, value, reason, cells)
         VALUES (?1, ?2, ?3, ?4, ?5)",
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

fn count_new(tx: &Transaction<'_>, campaign: i64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO message_counts (campaign, state, n, parts)
         SELECT campaign, state, COUNT(*), SUM(parts) FROM messages WHERE campaign = ?1
         GROUP BY state",
        [campaign],
    )?;
    Ok(())
}

/// The state changes of one transaction, added to `message_counts` before it commits (see
/// migration 10). Every statement that changes a message's state reports it here.
#[derive(Default)]
struct Tally(BTreeMap<(i64, &'static str), (i64, i64)>);

impl Tally {
    /// A message of `campaign` with `parts` went from `from` to `to`.
    fn moved(&mut self, campaign: i64, parts: i64, from: State, to: State) {
        if from == to {
            return;
        }
        for (state, sign) in [(from, -1), (to, 1)] {
            let e = self.0.entry((campaign, state.as_str())).or_default();
            e.0 += sign;
            e.1 += sign * parts;
        }
    }

    fn write(self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        let mut add = tx.prepare_cached(
            "INSERT INTO message_counts (campaign, state, n, parts) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO UPDATE SET n = n + excluded.n, parts = parts + excluded.parts",
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
fn move_all(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
    from: State,
    to: State,
) -> rusqlite::Result<usize> {
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

impl Store {
    /// Creates a campaign (a draft) with every recipient row, in one transaction.
    pub fn create_campaign(
        &self,
        c: &NewCampaign<'_>,
        now: DateTime<Utc>,
        messages: &[NewMessage],
        rejects: &[crate::sms::campaign::Reject],
    ) -> Result<i64, StoreError> {
        self.bulk_ok()?;
        let mut conn = self.sms_conn();
        let tx = conn.transaction()?;
        let id = insert_campaign(&tx, c, CampaignStatus::Draft, now)?;
        insert_messages(&tx, id, now, messages)?;
        count_new(&tx, id)?;
        insert_rejects(&tx, id, rejects)?;
        tx.commit()?;
        Ok(id)
    }

    /// Starts a campaign whose list is imported in chunks ([`Store::import_chunk`]): the campaign
    /// row in status `importing`, which nothing dispatches and a restart removes
    /// ([`Store::drop_importing`]). Each chunk is its own short transaction, so an alert or a
    /// delivery report never waits behind a large import.
    pub fn begin_import(&self, c: &NewCampaign<'_>, now: DateTime<Utc>) -> Result<i64, StoreError> {
        self.bulk_ok()?;
        Ok(insert_campaign(
            &self.sms_conn(),
            c,
            CampaignStatus::Importing,
            now,
        )?)
    }

    /// Adds messages (queued) and rejected rows to an importing campaign, in one transaction.
    pub fn import_chunk(
        &self,
        id: i64,
        now: DateTime<Utc>,
        messages: &[NewMessage],
        rejects: &[crate::sms::campaign::Reject],
    ) -> Result<(), StoreError> {
        self.bulk_ok()?;
        let mut conn = self.sms_conn();
        let tx = conn.transaction()?;
        let parts = insert_messages(&tx, id, now, messages)?;
        if !messages.is_empty() {
            tx.execute(
                "INSERT INTO message_counts (campaign, state, n, parts) VALUES (?1, 'queued', ?2, ?3)
                 ON CONFLICT (campaign, state) DO UPDATE SET n = n + excluded.n, parts = parts + excluded.parts",
                params![id, messages.len() as i64, parts],
            )?;
        }
        insert_rejects(&tx, id, rejects)?;
        tx.commit()?;
        Ok(())
    }

    /// Ends an import: the campaign gets its final spec, start and `status` (from
    /// `importing`), and its audit entry, in one transaction. Returns the audit log's new head.
    pub fn finish_import(
        &self,
        id: i64,
        spec: &serde_json::Value,
        start_at: Option<DateTime<Utc>>,
        status: CampaignStatus,
        audit: &super::audit::NewEntry,
        now: DateTime<Utc>,
    ) -> Result<(u64, String), StoreError> {
        let mut conn = self.sms_conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let changed = tx.execute(
            "UPDATE campaigns SET status = ?2, spec = ?3, start_at = ?4,
                 started_at = CASE WHEN ?2 = 'running' THEN ?5 ELSE started_at END
             WHERE id = ?1 AND status = 'importing'",
            params![
                id,
                status.as_str(),
                spec.to_string(),
                start_at.map(ts),
                ts(now)
            ],
        )?;
        if changed == 0 {
            return Err(StoreError::Task(format!(
                "campaign {id} is no longer importing"
            )));
        }
        let head = super::audit::append(&tx, now, audit)?;
        tx.commit()?;
        Ok(head)
    }

    /// Removes importing campaigns (`id`, or all of them after a restart) with their messages,
    /// counts and rejects. Returns how many.
    pub fn drop_importing(&self, id: Option<i64>) -> Result<usize, StoreError> {
        let mut conn = self.sms_conn();
        let tx = conn.transaction()?;
        let ids: Vec<i64> = {
            let mut st = tx.prepare(
                "SELECT id FROM campaigns WHERE status = 'importing' AND (?1 IS NULL OR id = ?1)",
            )?;
            st.query_map(params![id], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        for c in &ids {
            for table in ["messages", "message_counts", "campaign_rejects"] {
                tx.execute(&format!("DELETE FROM {table} WHERE campaign = ?1"), [c])?;
            }
            tx.execute("DELETE FROM campaigns WHERE id = ?1", [c])?;
        }
        tx.commit()?;
        Ok(ids.len())
    }

    /// The rows campaign `id`'s import rejected, in row order.
    pub fn campaign_rejects(
        &self,
        id: i64,
    ) -> Result<Vec<crate::sms::campaign::Reject>, StoreError> {
        let conn = self.read_conn();
        let mut st = conn.prepare(
            "SELECT row, value, reason, cells FROM campaign_rejects WHERE campaign = ?1 ORDER BY row",
        )?;
        let rows = st
            .query_map(params![id], |r| {
                Ok(crate::sms::campaign::Reject {
                    row: r.get::<_, i64>(0)? as usize,
                    value: r.get(1)?,
                    reason: r.get(2)?,
                    cells: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// One campaign with its counts.
    pub fn campaign(&self, id: i64) -> Result<Option<CampaignRow>, StoreError> {
        campaign_of(&self.read_conn(), id)
    }

    /// A recurring campaign fires: a new campaign (`status`: running, or missed when the
    /// daemon was down at the firing) with the template's recipients and texts, named after
    /// the firing `label`; the template's next firing becomes `next`. Returns the new id.
    pub fn fire_recurring(
        &self,
        template: i64,
        status: CampaignStatus,
        label: &str,
        fired_at: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        self.bulk_ok()?;
        let mut conn = self.sms_conn();
        let tx = conn.transaction()?;
        let now_s = ts(now);
        tx.execute(
            "INSERT INTO campaigns (name, status, spec, start_at, created_by, created_at,
                                    started_at, approved_by, approved_at)
             SELECT name || ' (' || ?3 || ')', ?2,
                    json_set(json_remove(spec, '$.repeat'), '$.recurring', ?1),
                    ?4, created_by, ?5, CASE WHEN ?2 = 'running' THEN ?5 END,
                    approved_by, approved_at
             FROM campaigns WHERE id = ?1",
            params![template, status.as_str(), label, ts(fired_at), now_s],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO messages (campaign, row, recipient, text, parts, state, updated_at, params)
             SELECT ?2, row, recipient, text, parts, 'queued', ?3, params FROM messages
             WHERE campaign = ?1 ORDER BY id",
            params![template, id, now_s],
        )?;
        count_new(&tx, id)?;
        match next {
            Some(n) => tx.execute(
                "UPDATE campaigns SET start_at = ?2 WHERE id = ?1",
                params![template, ts(n)],
            )?,
            None => tx.execute(
                "UPDATE campaigns SET status = 'done', finished_at = ?2 WHERE id = ?1",
                params![template, now_s],
            )?,
        };
        tx.commit()?;
        Ok(id)
    }

    /// The campaign an alert started, if any.
    pub fn campaign_for_alert(&self, alert: &str) -> Result<Option<CampaignRow>, StoreError> {
        let conn = self.read_conn();
        let id: Option<i64> = conn
            .query_row(
                "SELECT id FROM campaigns WHERE alert = ?1 ORDER BY id DESC LIMIT 1",
                [alert],
                |r| r.get(0),
            )
            .optional()?;
        match id {
            Some(id) => campaign_of(&conn, id),
            None => Ok(None),
        }
    }

    /// The second person approves a pending campaign: it moves to `to` (running or
    /// scheduled). `false` if it was not pending.
    pub fn approve_campaign(
        &self,
        id: i64,
        by: &str,
        to: CampaignStatus,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let conn = self.sms_conn();
        let now = ts(now);
        Ok(conn.execute(
            "UPDATE campaigns SET status = ?2, approved_by = ?3, approved_at = ?4,
                 started_at = CASE WHEN ?2 = 'running' THEN ?4 ELSE started_at END
             WHERE id = ?1 AND status = 'pending'",
            params![id, to.as_str(), by, now],
        )? > 0)
    }

    /// Every campaign, newest first.
    pub fn campaigns(&self) -> Result<Vec<CampaignRow>, StoreError> {
        let conn = self.read_conn();
        let ids: Vec<i64> = conn
            .prepare("SELECT id FROM campaigns ORDER BY id DESC")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for id in ids {
            out.extend(campaign_of(&conn, id)?);
        }
        Ok(out)
    }

    /// Campaigns in `status`: (id, spec).
    pub fn campaigns_in(
        &self,
        status: CampaignStatus,
    ) -> Result<Vec<(i64, serde_json::Value, Option<String>)>, StoreError> {
        let conn = self.sms_conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, spec, start_at FROM campaigns WHERE status = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([status.as_str()], |r| {
            let spec: String = r.get(1)?;
            Ok((
                r.get(0)?,
                serde_json::from_str(&spec).unwrap_or_default(),
                r.get(2)?,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Moves a campaign from one of `from` to `to`; `false` if it was in none of them.
    /// Starting records `started_at`; ending records `finished_at`; cancelling also cancels
    /// every queued message (in the same transaction).
    pub fn set_campaign_status(
        &self,
        id: i64,
        from: &[CampaignStatus],
        to: CampaignStatus,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.sms_conn();
        let tx = conn.transaction()?;
        let current: Option<String> = tx
            .query_row("SELECT status FROM campaigns WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        if !current.is_some_and(|c| from.iter().any(|f| f.as_str() == c)) {
            return Ok(false);
        }
        let now_s = ts(now);
        tx.execute(
            "UPDATE campaigns SET status = ?2,
                 started_at = CASE WHEN ?2 = 'running' THEN ?3 ELSE started_at END,
                 finished_at = CASE WHEN ?2 IN ('done', 'cancelled') THEN ?3 ELSE finished_at END,
                 paused_reason = CASE WHEN ?2 = 'paused' THEN paused_reason ELSE NULL END
             WHERE id = ?1",
            params![id, to.as_str(), now_s],
        )?;
        if to == CampaignStatus::Cancelled {
            move_all(
                &tx,
                "UPDATE messages INDEXED BY messages_queued
                 SET state = 'cancelled', reason = 'campaign cancelled', updated_at = ?2
                 WHERE campaign = ?1 AND state = 'queued' RETURNING campaign, parts",
                params![id, now_s],
                State::Queued,
                State::Cancelled,
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// After a crash or restart: every message caught mid-submit becomes `unknown`.
    pub fn recover_submitting(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut conn = self.sms_conn();
        let tx = conn.transaction()?;
        let to = delivery::on_recovery(State::Submitting);
        let n = move_all(
            &tx,
            "UPDATE messages INDEXED BY messages_submitting
             SET state = ?1, reason = 'the daemon stopped before the gateway answered', updated_at = ?2
             WHERE state = 'submitting' RETURNING campaign, parts",
            params![to.as_str(), ts(now)],
            State::Submitting,
            to,
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// Claims up to `max` due messages of `campaign` for `gateway` in one transaction (one disk
    /// sync for the batch): `queued → submitting`, committed before this returns. Nothing is
    /// claimed unless the campaign is `running`, so a pause or cancel holds from the moment it
    /// is committed. Opted-out numbers are cancelled on the way; numbers over the daily cap wait
    /// (`not_before`). `answers` (submit answers not yet stored) go into the same transaction,
    /// before the claim. While the disk reserve is in use nothing is claimed.
    pub fn claim_batch(
        &self,
        campaign: i64,
        gateway: &str,
        daily_cap: Option<u32>,
        now: DateTime<Utc>,
        max: usize,
        answers: &[Finish],
    ) -> Result<Vec<Claimed>, StoreError> {
        // A (nearly) full disk: answers are still stored, nothing new is claimed (what is
        // sent must have room for its reports and replies).
        let max = if self.bulk_ok().is_err() { 0 } else { max };
        let mut conn = self.sms_conn();
        let tx = conn.transaction()?;
        let mut tally = Tally::default();
        finish_in(&tx, answers, now, &mut tally)?;
        let now_s = ts(now);
        let mut claimed = Vec::new();
        let day_ago = ts(now - chrono::Duration::days(1));
        let mut select = tx.prepare_cached(
            "SELECT m.id, m.recipient, m.text, m.parts, m.attempts,
                    EXISTS (SELECT 1 FROM optouts o WHERE o.number = m.recipient), m.params
             FROM messages m INDEXED BY messages_queued
             WHERE m.campaign = ?1 AND m.state = 'queued'
               AND (m.not_before IS NULL OR m.not_before <= ?2)
               AND (SELECT status FROM campaigns WHERE id = ?1) = 'running'
             ORDER BY m.id LIMIT ?3",
        )?;
        let mut sent_today = tx.prepare_cached(
            "SELECT COUNT(*), MIN(submitted_at) FROM messages
             WHERE recipient = ?1 AND submitted_at > ?2 AND id != ?3",
        )?;
        let mut hold = tx.prepare_cached(
            "UPDATE messages SET not_before = ?2, reason = ?3, updated_at = ?4 WHERE id = ?1",
        )?;
        let mut take = tx.prepare_cached(
            "UPDATE messages SET state = 'submitting', gateway = ?2, attempts = attempts + 1,
                 submitted_at = ?3, updated_at = ?3, not_before = NULL
             WHERE id = ?1",
        )?;
        let mut cancel = tx.prepare_cached(
            "UPDATE messages SET state = 'cancelled', reason = 'opted out (checked at send time)',
                 updated_at = ?2
             WHERE id = ?1",
        )?;
        while claimed.len() < max {
            let want = (max - claimed.len()) as i64;
            let candidates: Vec<(Claimed, bool)> = select
                .query_map(params![campaign, now_s, want], |r| {
                    Ok((
                        Claimed {
                            id: r.get(0)?,
                            campaign,
                            recipient: r.get(1)?,
                            text: r.get(2)?,
                            parts: r.get::<_, i64>(3)? as usize,
                            attempts: r.get::<_, i64>(4)? + 1,
                            params: r.get(6)?,
                        },
                        r.get::<_, bool>(5)?,
                    ))
                })?
                .collect::<Result<_, _>>()?;
            if candidates.is_empty() {
                break;
            }
            for (m, opted_out) in candidates {
                if opted_out {
                    cancel.execute(params![m.id, now_s])?;
                    tally.moved(campaign, m.parts as i64, State::Queued, State::Cancelled);
                    continue;
                }
                if let Some(cap) = daily_cap {
                    let (sent, oldest): (i64, Option<String>) = sent_today
                        .query_row(params![m.recipient, day_ago, m.id], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })?;
                    if sent >= i64::from(cap) {
                        let until = oldest
                            .and_then(|o| DateTime::parse_from_rfc3339(&o).ok())
                            .map(|o| o.with_timezone(&Utc) + chrono::Duration::days(1))
                            .unwrap_or(now + chrono::Duration::days(1));
                        hold.execute(params![
                            m.id,
                            ts(until),
                            format!("daily cap of {cap} reached for this number"),
                            now_s
                        ])?;
                        continue;
                    }
                }
                take.execute(params![m.id, gateway, now_s])?;
                tally.moved(campaign, m.parts as i64, State::Queued, State::Submitting);
                claimed.push(m);
            }
        }
        drop((select, sent_today, hold, take, cancel));
        tally.write(&tx)?;
        tx.commit()?;
        Ok(claimed)
    }

    /// Holds every queued message of `campaign` until `until` (quiet hours), with `reason`.
    pub fn defer_campaign(
        &self,
        campaign: i64,
        until: DateTime<Utc>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let conn = self.sms_conn();
        Ok(conn.execute(
            "UPDATE messages INDEXED BY messages_queued SET not_before = ?2, reason = ?3, updated_at = ?4
             WHERE campaign = ?1 AND state = 'queued' AND (not_before IS NULL OR not_before < ?2)",
            params![campaign, ts(until), reason, ts(now)],
        )?)
    }

    /// Stores the gateway's answer to a submit. A transient failure requeues the message with
    /// `retry_at`. Returns the new state.
    pub fn finish_submit(
        &self,
        m: &Claimed,
        answer: &Submit,
        carrier_id: Option<&str>,
        reason: Option<&str>,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<State, StoreError> {
        let f = Finish {
            id: m.id,
            campaign: m.campaign,
            parts: m.parts,
            answer: answer.clone(),
            carrier_id: carrier_id.map(str::to_owned),
            reason: reason.map(str::to_owned),
            retry_at,
            delivered_by: None,
        };
        Ok(self
            .finish_submits(std::slice::from_ref(&f), now)?
            .pop()
            .unwrap_or(State::Unknown))
    }

    /// Stores many submit answers in one transaction; returns each message's new state.
    /// `delivered_by` (dry-run gateways) also records a delivered report.
    pub fn finish_submits(
        &self,
        items: &[Finish],
        now: DateTime<Utc>,
    ) -> Result<Vec<State>, StoreError> {
        let mut conn = self.sms_conn();
        // Answers need no disk sync of their own. One lost to a power cut leaves its message
        // `submitting`, which becomes `unknown` on restart and is never resent; the next claim's
        // sync (WAL: in order) makes it durable with everything before it. A killed process
        // loses nothing either way.
        let relaxed = self.sms.is_some();
        if relaxed {
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        let out = (|| {
            let tx = conn.transaction()?;
            let mut tally = Tally::default();
            let out = finish_in(&tx, items, now, &mut tally)?;
            tally.write(&tx)?;
            tx.commit()?;
            Ok(out)
        })();
        if relaxed {
            conn.pragma_update(None, "synchronous", "FULL")?;
        }
        out
    }
}

/// Stores submit answers within `tx`; returns each message's new state.
fn finish_in(
    tx: &Transaction<'_>,
    items: &[Finish],
    now: DateTime<Utc>,
    tally: &mut Tally,
) -> Result<Vec<State>, StoreError> {
    let now_s = ts(now);
    let mut out = Vec::with_capacity(items.len());
    let mut get = tx.prepare_cached("SELECT state, campaign, parts FROM messages WHERE id = ?1")?;
    // Writes `next` if the message is in state `?7` (any state when `?7` is NULL); returns
    // whether it did.
    let mut set = tx.prepare_cached(
        "UPDATE messages SET state = ?2, carrier_id = COALESCE(?3, carrier_id),
             reason = CASE WHEN ?4 IS NULL THEN reason ELSE ?4 END,
             not_before = ?5, updated_at = ?6
         WHERE id = ?1 AND (?7 IS NULL OR state = ?7)",
    )?;
    // (Not `RETURNING campaign, parts`: SQLite runs it as a trigger, with a statement journal,
    // which doubled the cost of this statement.)
    let mut write = |f: &Finish, next: State, only_if: Option<State>| {
        set.execute(params![
            f.id,
            next.as_str(),
            f.carrier_id,
            f.reason,
            f.retry_at.map(ts),
            now_s,
            only_if.map(State::as_str)
        ])
        .map(|changed| changed == 1)
    };
    let mut dlr = tx.prepare_cached(
        "INSERT INTO dlrs (message, gateway, code, raw, received_at) VALUES (?1, ?2, ?3, '', ?4)",
    )?;
    // A provider's block list: the number joins ours, with the provider's words as the reason.
    let mut opt_out = tx.prepare_cached(
        "INSERT OR IGNORE INTO optouts (number, reason, added_by, added_at)
         SELECT recipient, ?2, 'gateway', ?3 FROM messages WHERE id = ?1",
    )?;
    // A campaign the provider refuses as configured: paused, with why, before the list burns.
    let mut pause = tx.prepare_cached(
        "UPDATE campaigns SET status = 'paused', paused_reason = ?2 WHERE id = ?1 AND status = 'running'",
    )?;
    // Reports that came before the answer that names their message (early reports).
    let mut early = tx.prepare_cached(
        "SELECT o.id, o.report, o.code, o.raw, o.gateway FROM orphan_reports o JOIN messages m
             ON m.id = ?1 AND o.carrier_id = m.carrier_id AND o.gateway = m.gateway
         WHERE m.carrier_id IS NOT NULL",
    )?;
    let mut adopt = tx.prepare_cached(
        "INSERT INTO dlrs (message, gateway, code, raw, received_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut forget = tx.prepare_cached("DELETE FROM orphan_reports WHERE id = ?1")?;
    // Not a try: a deferral, a paused campaign or a gateway out of rotation does not use up
    // the message's attempts.
    let mut untry =
        tx.prepare_cached("UPDATE messages SET attempts = MAX(attempts - 1, 0) WHERE id = ?1")?;
    let mut apply = tx.prepare_cached(
        "UPDATE messages SET state = ?2, reason = COALESCE(?3, reason), updated_at = ?4 WHERE id = ?1",
    )?;
    let mut state_of =
        tx.prepare_cached("SELECT state, campaign, parts FROM messages WHERE id = ?1")?;
    for f in items {
        if matches!(f.answer, Submit::Defer | Submit::Config | Submit::Account) {
            untry.execute([f.id])?;
        }
        match f.answer {
            Submit::OptedOut => {
                opt_out.execute(params![
                    f.id,
                    f.reason.as_deref().unwrap_or("provider block list"),
                    now_s
                ])?;
            }
            Submit::Config => {
                pause.execute(params![f.campaign, f.reason])?;
            }
            _ => {}
        }
        // The usual case: the message is still `submitting`, so its next state is known
        // without reading it first.
        if f.delivered_by.is_none() {
            let next = delivery::on_submit(State::Submitting, &f.answer);
            if write(f, next, Some(State::Submitting))? {
                tally.moved(f.campaign, f.parts as i64, State::Submitting, next);
                out.push(next);
                continue;
            }
        }
        let current: Option<(String, i64, i64)> = get
            .query_row([f.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let Some((current, campaign, parts)) = current else {
            out.push(State::Unknown);
            continue;
        };
        let current = parse_state(&current);
        let mut next = delivery::on_submit(current, &f.answer);
        if let Some(gw) = &f.delivered_by
            && next == State::Sent
        {
            dlr.execute(params![f.id, gw, "dry-run", now_s])?;
            next = delivery::on_report(next, Report::Delivered);
        }
        write(f, next, None)?;
        tally.moved(campaign, parts, current, next);
        out.push(next);
    }
    for f in items.iter().filter(|f| f.carrier_id.is_some()) {
        let found: Vec<(i64, Option<String>, String, String, String)> = early
            .query_map([f.id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?;
        for (orphan, report, code, raw, gateway) in found {
            adopt.execute(params![f.id, gateway, code, raw, now_s])?;
            forget.execute([orphan])?;
            let Some(report) = report.as_deref().and_then(report_from) else {
                continue;
            };
            let Some((current, campaign, parts)) = state_of
                .query_row([f.id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .optional()?
            else {
                continue;
            };
            let current = parse_state(&current);
            let next = delivery::on_report(current, report);
            if next != current {
                apply.execute(params![
                    f.id,
                    next.as_str(),
                    (!matches!(report, Report::Delivered | Report::Progress))
                        .then(|| format!("delivery report {code}")),
                    now_s
                ])?;
                tally.moved(campaign, parts, current, next);
            }
        }
    }
    Ok(out)
}

/// A report's meaning as stored with an orphan report.
fn report_name(r: Report) -> &'static str {
    match r {
        Report::Delivered => "delivered",
        Report::Undelivered => "undelivered",
        Report::Progress => "progress",
        Report::SmscRejected => "rejected",
        Report::Expired => "expired",
    }
}

fn report_from(s: &str) -> Option<Report> {
    Some(match s {
        "delivered" => Report::Delivered,
        "undelivered" => Report::Undelivered,
        "progress" => Report::Progress,
        "rejected" => Report::SmscRejected,
        "expired" => Report::Expired,
        _ => return None,
    })
}

impl Store {
    /// Persists a delivery report for message `id` (which must have gone through `gateway`)
    /// and applies it. `None` when no such message went through that gateway.
    pub fn record_report(
        &self,
        id: i64,
        gateway: &str,
        report: Option<Report>,
        code: &str,
        raw: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(State, State)>, StoreError> {
        self.bulk_ok()?;
        let r = ReportIn {
            id,
            carrier_id: None,
            gateway: gateway.to_owned(),
            report,
            code: code.to_owned(),
            raw: raw.to_owned(),
        };
        Ok(self
            .record_reports(std::slice::from_ref(&r), now)?
            .pop()
            .flatten())
    }

    /// Many reports in one transaction (one disk sync); the result of each, in order.
    pub fn record_reports(
        &self,
        reports: &[ReportIn],
        now: DateTime<Utc>,
    ) -> Result<Vec<Option<(State, State)>>, StoreError> {
        self.bulk_ok()?;
        let mut conn = self.sms_conn();
        let tx = conn.transaction()?;
        let now_s = ts(now);
        let mut out = Vec::with_capacity(reports.len());
        let mut tally = Tally::default();
        {
            let mut get = tx.prepare_cached(
                "SELECT state, gateway, campaign, parts FROM messages WHERE id = ?1",
            )?;
            let mut ins = tx.prepare_cached(
                "INSERT INTO dlrs (message, gateway, code, raw, received_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut set = tx.prepare_cached(
                "UPDATE messages SET state = ?2, reason = COALESCE(?3, reason), updated_at = ?4 WHERE id = ?1",
            )?;
            let mut by_carrier = tx
                .prepare_cached("SELECT id FROM messages WHERE carrier_id = ?1 AND gateway = ?2")?;
            let mut orphan = tx.prepare_cached(
                "INSERT INTO orphan_reports (gateway, carrier_id, report, code, raw, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut seen = tx.prepare_cached(
                "SELECT 1 FROM dlrs WHERE message = ?1 AND code = ?2 AND raw = ?3",
            )?;
            for r in reports {
                let id = match &r.carrier_id {
                    Some(c) if r.id == 0 => by_carrier
                        .query_row(params![c, r.gateway], |row| row.get::<_, i64>(0))
                        .optional()?,
                    _ => Some(r.id),
                };
                let current: Option<(String, Option<String>, i64, i64)> = match id {
                    Some(id) => get
                        .query_row([id], |row| {
                            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                        })
                        .optional()?,
                    None => None,
                };
                let Some((current, via, campaign, parts)) = current else {
                    // Kept: a report for a message we cannot find (sent before a restore,
                    // or by another system on the same account) is evidence, not noise.
                    if r.carrier_id.is_some() {
                        orphan.execute(params![
                            r.gateway,
                            r.carrier_id,
                            r.report.map(report_name),
                            r.code,
                            r.raw,
                            now_s
                        ])?;
                    }
                    out.push(None);
                    continue;
                };
                let id = id.unwrap_or(r.id);
                // The same report pushed again (providers re-push until acknowledged, and say
                // pushes are not idempotent): stored once.
                if seen.exists(params![id, r.code, r.raw])? {
                    let s = parse_state(&current);
                    out.push(Some((s, s)));
                    continue;
                }
                if via.as_deref() != Some(r.gateway.as_str()) {
                    out.push(None);
                    continue;
                }
                ins.execute(params![id, r.gateway, r.code, r.raw, now_s])?;
                let current = parse_state(&current);
                let next = match r.report {
                    Some(rep) => delivery::on_report(current, rep),
                    None => current,
                };
                if next != current {
                    let reason = match r.report {
                        Some(Report::Delivered) | Some(Report::Progress) | None => None,
                        Some(_) => Some(format!("delivery report {}", r.code)),
                    };
                    set.execute(params![id, next.as_str(), reason, now_s])?;
                    tally.moved(campaign, parts, current, next);
                }
                out.push(Some((current, next)));
            }
        }
        tally.write(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// The delivery reports stored for message `id`: (code, raw, received_at).
    pub fn reports(&self, id: i64) -> Result<Vec<(String, String, String)>, StoreError> {
        let conn = self.read_conn();
        let mut stmt =
            conn.prepare("SELECT code, raw, received_at FROM dlrs WHERE message = ?1 ORDER BY id")?;
        let rows = stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// `unknown` messages (of `campaign`, or all) through one of `gateways`, submitted before
    /// `before` and not looked up since `checked_before`: what reconciliation asks the
    /// providers about, least recently asked first.
    pub fn unknown_messages(
        &self,
        campaign: Option<i64>,
        gateways: &[String],
        before: DateTime<Utc>,
        checked_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<UnknownMessage>, StoreError> {
        let conn = self.read_conn();
        let mut st = conn.prepare_cached(
            "SELECT id, campaign, parts, recipient, gateway, submitted_at FROM messages INDEXED BY messages_unknown
             WHERE state = 'unknown' AND (?1 IS NULL OR campaign = ?1)
               AND gateway IN (SELECT value FROM json_each(?2))
               AND (submitted_at IS NULL OR submitted_at <= ?3)
               AND (checked_at IS NULL OR checked_at <= ?4)
             ORDER BY checked_at IS NOT NULL, checked_at, id LIMIT ?5",
        )?;
        let names = serde_json::to_string(gateways).unwrap_or_default();
        let rows = st.query_map(
            params![
                campaign,
                names,
                ts(before),
                ts(checked_before),
                limit as i64
            ],
            |r| {
                let at: Option<String> = r.get(5)?;
                Ok(UnknownMessage {
                    id: r.get(0)?,
                    campaign: r.get(1)?,
                    parts: r.get::<_, i64>(2)? as usize,
                    recipient: r.get(3)?,
                    gateway: r.get(4)?,
                    submitted_at: at
                        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                        .map(|t| t.with_timezone(&Utc)),
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Notes that unknown message `id` was looked up at its provider now (not found).
    pub fn mark_checked(&self, id: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.sms_conn().execute(
            "UPDATE messages SET checked_at = ?2 WHERE id = ?1 AND state = 'unknown'",
            params![id, ts(now)],
        )?;
        Ok(())
    }

    /// Reconciliation found unknown message `m` at its provider: `sent` (with the provider's
    /// id), then its report if the provider knows one. Only while it is still `unknown` (an
    /// operator may have requeued it meanwhile). Returns whether it changed.
    pub fn resolve_unknown(
        &self,
        m: &UnknownMessage,
        carrier_id: Option<&str>,
        found: &str,
        report: Option<Report>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.sms_conn();
        let tx = conn.transaction()?;
        let now_s = ts(now);
        let n = tx.execute(
            "UPDATE messages SET state = 'sent', carrier_id = COALESCE(?2, carrier_id), reason = ?3, updated_at = ?4
             WHERE id = ?1 AND state = 'unknown'",
            params![m.id, carrier_id, format!("found at the provider by reconciliation ({found})"), now_s],
        )?;
        if n == 0 {
            return Ok(false);
        }
        let mut tally = Tally::default();
        tally.moved(m.campaign, m.parts as i64, State::Unknown, State::Sent);
        if let Some(r) = report {
            let next = delivery::on_report(State::Sent, r);
            tx.execute(
                "INSERT INTO dlrs (message, gateway, code, raw, received_at) VALUES (?1, ?2, ?3, 'reconciliation', ?4)",
                params![m.id, m.gateway, found, now_s],
            )?;
            if next != State::Sent {
                tx.execute(
                    "UPDATE messages SET state = ?2, updated_at = ?3 WHERE id = ?1",
                    params![m.id, next.as_str(), now_s],
                )?;
                tally.moved(m.campaign, m.parts as i64, State::Sent, next);
            }
        }
        tally.write(&tx)?;
        tx.commit()?;
        Ok(true)
    }

    /// An operator requeues the `unknown` messages of a campaign (accepting possible
    /// duplicates). Returns how many.
    pub fn requeue_unknown(&self, campaign: i64, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut conn = self.sms_conn();
        let tx = conn.transaction()?;
        let to = delivery::requeue(State::Unknown);
        let n = move_all(
            &tx,
            "UPDATE messages SET state = ?2, reason = 'requeued by an operator', not_before = NULL, updated_at = ?3
             WHERE campaign = ?1 AND state = 'unknown' RETURNING campaign, parts",
            params![campaign, to.as_str(), ts(now)],
            State::Unknown,
            to,
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// Messages still to send or awaiting a submit answer, and the earliest `not_before` of
    /// the queued ones.
    pub fn pending(&self, campaign: i64) -> Result<(i64, i64, Option<String>), StoreError> {
        let conn = self.sms_conn();
        Ok(conn.query_row(
            "SELECT (SELECT COALESCE(SUM(n), 0) FROM message_counts
                     WHERE campaign = ?1 AND state = 'queued'),
                    (SELECT COALESCE(SUM(n), 0) FROM message_counts
                     WHERE campaign = ?1 AND state = 'submitting'),
                    (SELECT MIN(not_before) FROM messages INDEXED BY messages_queued
                     WHERE campaign = ?1 AND state = 'queued')",
            [campaign],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?)
    }

    /// Messages of a campaign, optionally in one state, after id `after`, at most `limit`.
    pub fn messages(
        &self,
        campaign: i64,
        state: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let conn = self.read_conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {MESSAGE_COLS} FROM messages
             WHERE campaign = ?1 AND (?2 IS NULL OR state = ?2) AND id > ?3
             ORDER BY id LIMIT ?4"
        ))?;
        let rows = stmt.query_map(params![campaign, state, after, limit as i64], message_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One message.
    pub fn message(&self, id: i64) -> Result<Option<MessageRow>, StoreError> {
        let conn = self.read_conn();
        Ok(conn
            .query_row(
                &format!("SELECT {MESSAGE_COLS} FROM messages WHERE id = ?1"),
                [id],
                message_row,
            )
            .optional()?)
    }

    /// Adds numbers to the opt-out list; returns how many were new.
    pub fn add_optouts(
        &self,
        numbers: &[String],
        reason: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        self.bulk_ok()?;
        let mut conn = self.sms_conn();
        let tx = conn.transaction()?;
        let mut n = 0;
        {
            let mut ins = tx.prepare(
                "INSERT OR IGNORE INTO optouts (number, reason, added_by, added_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let now = ts(now);
            for number in numbers {
                n += ins.execute(params![number, reason, by, now])?;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// Keeps a reply (MO) from `number` via `gateway`; when `optout`, the number joins the
    /// opt-out list (reason: the reply and the gateway). Returns whether it newly joined.
    pub fn record_reply(
        &self,
        gateway: &str,
        number: &str,
        text: &str,
        optout: bool,
        raw: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // An opt-out is kept even on a full disk (the reserve): a number that asked to stop
        // must not be sent to because the disk filled. Other replies are bulk.
        let write = |conn: &mut Connection| -> Result<bool, StoreError> {
            let tx = conn.transaction()?;
            let now = ts(now);
            // The same reply pushed again (providers push until acknowledged): kept once.
            let seen = tx
                .query_row(
                    "SELECT 1 FROM replies WHERE number = ?2 AND gateway = ?1 AND text = ?3 AND raw = ?4",
                    params![gateway, number, text, raw],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !seen {
                tx.execute(
                    "INSERT INTO replies (gateway, number, text, optout, raw, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![gateway, number, text, optout, raw, now],
                )?;
            }
            let joined = optout
                && tx.execute(
                    "INSERT OR IGNORE INTO optouts (number, reason, added_by, added_at) VALUES (?1, ?2, ?3, ?4)",
                    params![
                        number,
                        format!("replied {text:?} (via gateway {gateway})"),
                        format!("mo:{gateway}"),
                        now
                    ],
                )? == 1;
            tx.commit()?;
            Ok(joined)
        };
        if optout {
            self.priority(write)
        } else {
            self.bulk_ok()?;
            write(&mut self.sms_conn())
        }
    }

    /// Removes a number from the opt-out list; `false` if it was not on it.
    pub fn remove_optout(&self, number: &str) -> Result<bool, StoreError> {
        let conn = self.sms_conn();
        Ok(conn.execute("DELETE FROM optouts WHERE number = ?1", [number])? > 0)
    }

    /// The opt-out list.
    pub fn optouts(&self) -> Result<Vec<OptOut>, StoreError> {
        let conn = self.read_conn();
        let mut stmt =
            conn.prepare("SELECT number, reason, added_by, added_at FROM optouts ORDER BY number")?;
        let rows = stmt.query_map([], |r| {
            Ok(OptOut {
                number: r.get(0)?,
                reason: r.get(1)?,
                added_by: r.get(2)?,
                added_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every opted-out number.
    pub fn optout_set(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let conn = self.read_conn();
        let mut stmt = conn.prepare("SELECT number FROM optouts")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-11-28T10:00:00Z".parse().unwrap()
    }

    fn campaign(store: &Store, n: usize) -> i64 {
        let msgs: Vec<NewMessage> = (0..n)
            .map(|i| NewMessage {
                row: i + 1,
                recipient: 8613800138000 + i as u64,
                text: format!("hello {i}").into(),
                parts: 1,
                params: None,
            })
            .collect();
        let spec = serde_json::json!({});
        let c = NewCampaign {
            name: "t",
            spec: &spec,
            start_at: None,
            by: "op",
            alert: None,
        };
        let id = store.create_campaign(&c, now(), &msgs, &[]).unwrap();
        assert!(
            store
                .set_campaign_status(id, &[CampaignStatus::Draft], CampaignStatus::Running, now())
                .unwrap()
        );
        id
    }

    fn claim(store: &Store, c: i64) -> Option<Claimed> {
        store
            .claim_batch(c, "gw", None, now(), 1, &[])
            .unwrap()
            .pop()
    }

    #[test]
    fn claims_in_order_and_each_once() {
        let store = Store::memory().unwrap();
        let c = campaign(&store, 3);
        let ids: Vec<i64> = std::iter::from_fn(|| claim(&store, c).map(|m| m.id)).collect();
        assert_eq!(ids.len(), 3);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(store.campaign(c).unwrap().unwrap().counts["submitting"], 3);
    }

    #[test]
    fn a_claim_stores_the_answers_it_is_given_first() {
        let store = Store::memory().unwrap();
        let c = campaign(&store, 3);
        let first = store.claim_batch(c, "gw", None, now(), 2, &[]).unwrap();
        let answer = |id, answer, retry_at| Finish {
            id,
            campaign: c,
            parts: 1,
            answer,
            carrier_id: Some(format!("c{id}")),
            reason: None,
            retry_at,
            delivered_by: None,
        };
        // One accepted, one to retry later: the retry is not claimed again at once.
        let answers = [
            answer(first[0].id, Submit::Accepted, None),
            answer(
                first[1].id,
                Submit::Transient,
                Some(now() + chrono::Duration::minutes(1)),
            ),
        ];
        let next = store
            .claim_batch(c, "gw", None, now(), 3, &answers)
            .unwrap();
        assert_eq!(next.len(), 1);
        assert!(next[0].id > first[1].id);
        let counts = store.campaign(c).unwrap().unwrap().counts;
        assert_eq!(
            (counts["sent"], counts["queued"], counts["submitting"]),
            (1, 1, 1)
        );
        assert_eq!(
            store
                .message(first[0].id)
                .unwrap()
                .unwrap()
                .carrier_id
                .as_deref(),
            Some(format!("c{}", first[0].id).as_str())
        );
    }

    #[test]
    fn recovery_turns_submitting_into_unknown_and_unknown_is_never_claimed() {
        let store = Store::memory().unwrap();
        let c = campaign(&store, 2);
        claim(&store, c).unwrap();
        assert_eq!(store.recover_submitting(now()).unwrap(), 1);
        let second = claim(&store, c).unwrap();
        assert!(claim(&store, c).is_none(), "the unknown one is not resent");
        store
            .finish_submit(&second, &Submit::Accepted, Some("x"), None, None, now())
            .unwrap();
        let counts = store.campaign(c).unwrap().unwrap().counts;
        assert_eq!((counts["unknown"], counts["sent"]), (1, 1));
        assert_eq!(store.requeue_unknown(c, now()).unwrap(), 1);
        assert!(claim(&store, c).is_some());
    }

    #[test]
    fn early_final_report_survives_the_late_submit_answer() {
        let store = Store::memory().unwrap();
        let c = campaign(&store, 1);
        let m = claim(&store, c).unwrap();
        let (from, to) = store
            .record_report(m.id, "gw", Some(Report::Delivered), "1", "type=1", now())
            .unwrap()
            .unwrap();
        assert_eq!((from, to), (State::Submitting, State::Delivered));
        let after = store
            .finish_submit(&m, &Submit::Accepted, Some("abc"), None, None, now())
            .unwrap();
        assert_eq!(after, State::Delivered);
        // A later "buffered" report does not move it back either.
        store
            .record_report(m.id, "gw", Some(Report::Progress), "4", "type=4", now())
            .unwrap();
        assert_eq!(store.message(m.id).unwrap().unwrap().state, "delivered");
        assert_eq!(store.reports(m.id).unwrap().len(), 2);
        // A report naming another gateway is not ours.
        assert!(
            store
                .record_report(m.id, "other", Some(Report::Delivered), "1", "", now())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_report_by_carrier_id_before_the_answer_is_applied_when_the_answer_names_it() {
        let store = Store::memory().unwrap();
        let c = campaign(&store, 2);
        let (a, b) = (claim(&store, c).unwrap(), claim(&store, c).unwrap());
        let early = |sid: &str, report| ReportIn {
            id: 0,
            carrier_id: Some(sid.into()),
            gateway: "gw".into(),
            report: Some(report),
            code: "SUCCESS DELIVRD".into(),
            raw: format!("{{\"sid\":\"{sid}\"}}"),
        };
        // Pushed before the submit answer is stored: kept, not lost.
        let r = store
            .record_reports(
                &[
                    early("S-1", Report::Delivered),
                    early("S-2", Report::Undelivered),
                ],
                now(),
            )
            .unwrap();
        assert_eq!(r, [None, None]);
        let finish = |m: &Claimed, sid: &str| Finish {
            id: m.id,
            campaign: m.campaign,
            parts: m.parts,
            answer: Submit::Accepted,
            carrier_id: Some(sid.into()),
            reason: None,
            retry_at: None,
            delivered_by: None,
        };
        store
            .finish_submits(&[finish(&a, "S-1"), finish(&b, "S-2")], now())
            .unwrap();
        assert_eq!(store.message(a.id).unwrap().unwrap().state, "delivered");
        assert_eq!(store.message(b.id).unwrap().unwrap().state, "failed");
        assert_eq!(store.reports(a.id).unwrap().len(), 1);
        let counts = store.campaign(c).unwrap().unwrap().counts;
        assert_eq!(
            (counts.get("delivered"), counts.get("failed")),
            (Some(&1), Some(&1))
        );
        // The same report pushed again changes nothing and is stored once.
        let again = store
            .record_reports(&[early("S-1", Report::Delivered)], now())
            .unwrap();
        assert_eq!(again, [Some((State::Delivered, State::Delivered))]);
        assert_eq!(store.reports(a.id).unwrap().len(), 1);
    }

    #[test]
    fn reconciliation_resolves_only_what_is_still_unknown() {
        let store = Store::memory().unwrap();
        let c = campaign(&store, 2);
        claim(&store, c).unwrap();
        claim(&store, c).unwrap();
        assert_eq!(store.recover_submitting(now()).unwrap(), 2);
        let gws = vec!["gw".to_string()];
        let later = now() + chrono::Duration::hours(1);
        let unknown = store
            .unknown_messages(Some(c), &gws, later, later, 10)
            .unwrap();
        assert_eq!(unknown.len(), 2);
        // An operator requeues them meanwhile: nothing is resolved (it goes again).
        store.requeue_unknown(c, now()).unwrap();
        assert!(
            !store
                .resolve_unknown(&unknown[0], Some("S-9"), "SUCCESS", None, now())
                .unwrap()
        );
        assert_eq!(
            store.message(unknown[0].id).unwrap().unwrap().state,
            "queued"
        );
        // Another gateway's unknowns are not listed for this one.
        assert!(
            store
                .unknown_messages(Some(c), &["other".to_string()], later, later, 10)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn opted_out_numbers_are_skipped_at_claim_time() {
        let store = Store::memory().unwrap();
        let c = campaign(&store, 2);
        store
            .add_optouts(&["+8613800138000".into()], "TD", "op", now())
            .unwrap();
        let m = claim(&store, c).unwrap();
        assert_eq!(m.recipient, "+8613800138001");
        let first = store.messages(c, Some("cancelled"), 0, 10).unwrap();
        assert_eq!(first.len(), 1);
        assert!(first[0].reason.as_deref().unwrap().contains("opted out"));
    }

    #[test]
    fn daily_cap_defers_the_extra_message() {
        let store = Store::memory().unwrap();
        let a = campaign(&store, 1);
        let b = campaign(&store, 1);
        assert_eq!(
            store
                .claim_batch(a, "gw", Some(1), now(), 1, &[])
                .unwrap()
                .len(),
            1
        );
        assert!(
            store
                .claim_batch(b, "gw", Some(1), now(), 1, &[])
                .unwrap()
                .is_empty()
        );
        let held = store.messages(b, Some("queued"), 0, 1).unwrap();
        assert_eq!(
            held[0].not_before.as_deref(),
            Some("2026-11-29T10:00:00.000Z")
        );
    }

    /// (campaign, state, messages, parts) rows.
    type Counts = Vec<(i64, String, i64, i64)>;

    /// The kept counts of every campaign, and the same counted from the messages.
    fn counts_kept_and_counted(store: &Store) -> (Counts, Counts) {
        let conn = store.conn();
        let rows = |sql: &str| -> Counts {
            conn.prepare(sql)
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        (
            rows("SELECT campaign, state, n, parts FROM message_counts WHERE n > 0 ORDER BY 1, 2"),
            rows(
                "SELECT campaign, state, COUNT(*), SUM(parts) FROM messages
                 GROUP BY campaign, state ORDER BY 1, 2",
            ),
        )
    }

    #[test]
    fn an_import_in_chunks_is_never_sent_until_finished_and_a_cut_off_one_is_removed() {
        let store = Store::memory().unwrap();
        let spec = serde_json::json!({});
        let c = NewCampaign {
            name: "big",
            spec: &spec,
            start_at: None,
            by: "op",
            alert: None,
        };
        let chunk = |from: usize| -> Vec<NewMessage> {
            (from..from + 3)
                .map(|i| NewMessage {
                    row: i + 1,
                    recipient: 8613800138000 + i as u64,
                    text: "hi".into(),
                    parts: 2,
                    params: None,
                })
                .collect()
        };
        let reject = crate::sms::campaign::Reject {
            row: 7,
            value: "12".into(),
            reason: "not a valid number".into(),
            cells: vec!["12".into(), "x".into()],
        };
        let id = store.begin_import(&c, now()).unwrap();
        store.import_chunk(id, now(), &chunk(0), &[]).unwrap();
        store
            .import_chunk(id, now(), &chunk(3), std::slice::from_ref(&reject))
            .unwrap();
        // Importing: not startable, nothing claimed even if someone forced it running.
        assert!(
            !store
                .set_campaign_status(id, &[CampaignStatus::Draft], CampaignStatus::Running, now())
                .unwrap()
        );
        assert!(claim(&store, id).is_none());
        let (kept, counted) = counts_kept_and_counted(&store);
        assert_eq!(kept, counted, "chunks keep the counts");
        assert_eq!(store.campaign(id).unwrap().unwrap().counts["queued"], 6);
        assert_eq!(store.campaign_rejects(id).unwrap(), vec![reject]);
        // Cut off (a restart): removed with everything it had.
        assert_eq!(store.drop_importing(None).unwrap(), 1);
        assert!(store.campaign(id).unwrap().is_none());
        let (kept, counted) = counts_kept_and_counted(&store);
        assert!(
            kept.is_empty() && counted.is_empty(),
            "{kept:?} {counted:?}"
        );
        // Finished: a draft like any other.
        let id = store.begin_import(&c, now()).unwrap();
        store.import_chunk(id, now(), &chunk(0), &[]).unwrap();
        let entry = super::super::audit::NewEntry::new(
            "office",
            "campaign.create",
            &format!("campaign:{id}"),
            serde_json::json!({}),
        );
        let (seq, _) = store
            .finish_import(id, &spec, None, CampaignStatus::Draft, &entry, now())
            .unwrap();
        assert_eq!(store.drop_importing(None).unwrap(), 0);
        // Its status and its audit entry were written together; finishing twice writes neither.
        let log = store.audit_entries(0, 10).unwrap();
        assert_eq!(
            (log.len(), log[0].seq, log[0].action.as_str()),
            (1, seq, "campaign.create")
        );
        assert!(
            store
                .finish_import(id, &spec, None, CampaignStatus::Running, &entry, now())
                .is_err()
        );
        assert_eq!(store.audit_entries(0, 10).unwrap().len(), 1);
        assert_eq!(
            store.campaign(id).unwrap().unwrap().status,
            CampaignStatus::Draft
        );
        assert!(
            store
                .set_campaign_status(id, &[CampaignStatus::Draft], CampaignStatus::Running, now())
                .unwrap()
        );
        assert!(claim(&store, id).is_some());
    }

    #[test]
    fn kept_counts_follow_every_state_change() {
        let store = Store::memory().unwrap();
        let c = campaign(&store, 8);
        let check = |what: &str| {
            let (kept, counted) = counts_kept_and_counted(&store);
            assert_eq!(kept, counted, "after {what}");
        };
        check("create");
        let m: Vec<Claimed> = store.claim_batch(c, "gw", None, now(), 5, &[]).unwrap();
        check("claim");
        let fin = |i: usize, answer| Finish {
            id: m[i].id,
            campaign: c,
            parts: 1,
            answer,
            carrier_id: None,
            reason: None,
            retry_at: None,
            delivered_by: None,
        };
        store
            .claim_batch(
                c,
                "gw",
                None,
                now(),
                0,
                &[fin(0, Submit::Accepted), fin(1, Submit::Transient)],
            )
            .unwrap();
        check("answers");
        store
            .record_report(m[0].id, "gw", Some(Report::Delivered), "1", "", now())
            .unwrap();
        check("report");
        assert_eq!(store.recover_submitting(now()).unwrap(), 3);
        check("recovery");
        assert_eq!(store.requeue_unknown(c, now()).unwrap(), 3);
        check("requeue");
        store
            .add_optouts(&[m[3].recipient.clone()], "STOP", "op", now())
            .unwrap();
        store.claim_batch(c, "gw", None, now(), 8, &[]).unwrap();
        check("opt-out at claim");
        assert!(
            store
                .set_campaign_status(
                    c,
                    &[CampaignStatus::Running],
                    CampaignStatus::Cancelled,
                    now()
                )
                .unwrap()
        );
        check("cancel");
        let r = store
            .fire_recurring(c, CampaignStatus::Running, "again", now(), None, now())
            .unwrap();
        check("recurring firing");
        let counts = store.campaign(r).unwrap().unwrap().counts;
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [("queued".to_owned(), 8)]
        );
        let (queued, submitting, _) = store.pending(r).unwrap();
        assert_eq!((queued, submitting), (8, 0));
    }

    #[test]
    fn cancel_cancels_what_is_queued_only() {
        let store = Store::memory().unwrap();
        let c = campaign(&store, 3);
        claim(&store, c).unwrap();
        assert!(
            store
                .set_campaign_status(
                    c,
                    &[CampaignStatus::Running],
                    CampaignStatus::Cancelled,
                    now()
                )
                .unwrap()
        );
        let counts = store.campaign(c).unwrap().unwrap().counts;
        assert_eq!((counts["cancelled"], counts["submitting"]), (2, 1));
        assert!(
            !store
                .set_campaign_status(c, &[CampaignStatus::Running], CampaignStatus::Paused, now())
                .unwrap()
        );
    }
}
