//! The opt-out list: numbers added by operators or imports, and replies (MO) with an opt-out
//! keyword, which are written even on a full disk.

use crate::store::db::{Connection, OptionalExtension, params};
use chrono::{DateTime, Utc};

use super::super::{Store, StoreError, ts};
use super::OptOut;

impl Store {
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
                "INSERT INTO optouts (number, reason, added_by, added_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
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
                    "INSERT INTO optouts (number, reason, added_by, added_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
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
