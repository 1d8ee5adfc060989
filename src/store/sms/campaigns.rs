//! Campaigns: created whole or imported in chunks, read with their counts, moved from status to
//! status (compare-and-set), fired when recurring.

use crate::store::db::{OptionalExtension, params};
use chrono::{DateTime, Utc};

use super::super::{Store, StoreError, ts};
use super::{
    CampaignRow, NewCampaign, NewMessage, campaign_of, count_new, insert_campaign, insert_messages,
    insert_rejects, move_all,
};
use crate::domain::campaign::CampaignStatus;
use crate::domain::delivery::State;

/// A campaign as [`Store::campaigns_in`] lists it: id, spec, start time or next firing, whether
/// an alert started it.
pub type CampaignIn = (i64, serde_json::Value, Option<String>, bool);

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
        let mut conn = self.sms_conn();
        let tx = conn.transaction()?;
        let id = insert_campaign(&tx, c, CampaignStatus::Importing, now)?;
        if let Some(node) = self.node() {
            tx.execute(
                "UPDATE campaigns SET node = ?2 WHERE id = ?1",
                params![id, node],
            )?;
        }
        tx.commit()?;
        Ok(id)
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
                 ON CONFLICT (campaign, state) DO UPDATE
                     SET n = message_counts.n + excluded.n, parts = message_counts.parts + excluded.parts",
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
        audit: &super::super::audit::NewEntry,
        now: DateTime<Utc>,
    ) -> Result<(u64, String), StoreError> {
        let mut conn = self.sms_conn();
        let tx = conn.transaction()?;
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
        let head = super::super::audit::append(&tx, now, audit)?;
        tx.commit()?;
        Ok(head)
    }

    /// Removes importing campaigns (`id`, or after a restart all of this node's: on a shared
    /// store another node's import may be under way) with their messages,
    /// counts and rejects. Returns how many.
    pub fn drop_importing(&self, id: Option<i64>) -> Result<usize, StoreError> {
        let mut conn = self.sms_conn();
        let tx = conn.transaction()?;
        let ids: Vec<i64> = {
            let mut st = tx.prepare(
                "SELECT id FROM campaigns WHERE status = 'importing'
                 AND (id = ?1 OR (?1 IS NULL AND COALESCE(node, '') = ?2))",
            )?;
            st.query_map(params![id, self.node().unwrap_or_default()], |r| r.get(0))?
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
    /// the firing `label`; the template's next firing becomes `next`. Returns the new id, or
    /// `None` when the template's next firing is no longer `seen` (its stored `start_at`): it
    /// fired already, or was changed. That compare-and-set is the gate of each firing, so a
    /// firing happens once however many dispatchers look (`SCALE-OUT.md` §3).
    pub fn fire_recurring(
        &self,
        template: i64,
        firing: &Firing<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError> {
        let Firing {
            status,
            label,
            seen,
            at: fired_at,
            next,
        } = *firing;
        self.bulk_ok()?;
        let mut conn = self.sms_conn();
        let tx = conn.transaction()?;
        let now_s = ts(now);
        let gate = match next {
            Some(n) => tx.execute(
                "UPDATE campaigns SET start_at = ?2
                 WHERE id = ?1 AND status = 'recurring' AND start_at = ?3",
                params![template, ts(n), seen],
            )?,
            None => tx.execute(
                "UPDATE campaigns SET status = 'done', finished_at = ?2
                 WHERE id = ?1 AND status = 'recurring' AND start_at = ?3",
                params![template, now_s, seen],
            )?,
        };
        if gate == 0 {
            return Ok(None);
        }
        // The template's spec without its repeat, marked with the template it came from.
        let spec = if tx.is_pg() {
            "((spec::jsonb - 'repeat') || jsonb_build_object('recurring', ?1::bigint))::text"
        } else {
            "json_set(json_remove(spec, '$.repeat'), '$.recurring', ?1)"
        };
        let id: i64 = tx.query_row(
            &format!(
                "INSERT INTO campaigns (name, status, spec, start_at, created_by, created_at,
                                        started_at, approved_by, approved_at)
                 SELECT name || ' (' || ?3 || ')', ?2, {spec},
                        ?4, created_by, ?5, CASE WHEN ?2 = 'running' THEN ?5 END,
                        approved_by, approved_at
                 FROM campaigns WHERE id = ?1
                 RETURNING id"
            ),
            params![template, status.as_str(), label, ts(fired_at), now_s],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO messages (campaign, row, recipient, text, parts, state, updated_at, params)
             SELECT CAST(?2 AS BIGINT), row, recipient, text, parts, 'queued', ?3, params FROM messages
             WHERE campaign = ?1 ORDER BY id",
            params![template, id, now_s],
        )?;
        count_new(&tx, id)?;
        tx.commit()?;
        Ok(Some(id))
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

    /// Campaigns in `status`: (id, spec, start time or next firing, whether an alert started
    /// it), those an alert started first (the dispatcher claims in this order, so an alert's
    /// SMS never waits behind bulk work), then by id.
    pub fn campaigns_in(&self, status: CampaignStatus) -> Result<Vec<CampaignIn>, StoreError> {
        let conn = self.sms_conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, spec, start_at, CASE WHEN alert IS NULL THEN 0 ELSE 1 END AS urgent
             FROM campaigns WHERE status = ?1 ORDER BY urgent DESC, id",
        )?;
        let rows = stmt.query_map([status.as_str()], |r| {
            let spec: String = r.get(1)?;
            let urgent: i64 = r.get(3)?;
            Ok((
                r.get(0)?,
                serde_json::from_str(&spec).unwrap_or_default(),
                r.get(2)?,
                urgent == 1,
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
}

/// One firing of a recurring campaign ([`Store::fire_recurring`]).
#[derive(Debug, Clone, Copy)]
pub struct Firing<'a> {
    /// The new campaign's status: running, or missed (the daemon was down at the firing).
    pub status: CampaignStatus,
    /// Names the new campaign after the firing (its local time).
    pub label: &'a str,
    /// The template's `start_at` as read: the firing happens only while it is still that.
    pub seen: &'a str,
    /// When it was due.
    pub at: DateTime<Utc>,
    /// The template's next firing; `None` ends it (`done`).
    pub next: Option<DateTime<Utc>>,
}
