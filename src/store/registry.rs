//! The display registry's rows: one per display allowed to report, with the public key its
//! reports are signed with and its broker password as a Mosquitto `$6$` hash.

use crate::store::db::params;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::ts;
use super::{Store, StoreError};

/// A registered display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Registered {
    /// Display id (also its broker user name).
    pub id: String,
    /// Its channel.
    pub channel: String,
    /// The Ed25519 public key its reports are signed with (64 hex digits).
    pub report_key: String,
    /// Its broker password, hashed as in a Mosquitto password file.
    #[serde(skip)]
    pub password_hash: String,
    /// When it was registered (UTC, RFC 3339).
    pub added_at: String,
    /// Who registered it.
    pub added_by: String,
}

impl Store {
    /// Records that node `name` runs on this store with the broker account `mqtt_user` (`None`:
    /// it connects without one), at `now`. Each daemon on a shared store does so at start.
    pub fn record_node(
        &self,
        name: &str,
        mqtt_user: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO nodes (name, mqtt_user, seen_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET mqtt_user = excluded.mqtt_user, seen_at = excluded.seen_at",
            params![name, mqtt_user, ts(now)],
        )?;
        Ok(())
    }

    /// Removes node `name`'s row (a node taken out of service: its account leaves the generated
    /// files); whether it was there. A node that runs again records itself again.
    pub fn forget_node(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .execute("DELETE FROM nodes WHERE name = ?1", [name])?
            == 1)
    }

    /// The broker accounts of the nodes recorded on this store (each once, in order). A node
    /// taken out of service keeps its row until [`Store::forget_node`].
    pub fn node_accounts(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT DISTINCT mqtt_user FROM nodes WHERE mqtt_user IS NOT NULL ORDER BY mqtt_user",
        )?;
        let users = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(users)
    }

    /// Registers `r`; `Ok(false)` when the id is already registered (nothing changes). A change
    /// moves the registry's generation (`store::handoff`).
    pub fn register_display(&self, r: &Registered) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "INSERT INTO registry (id, channel, report_key, password_hash, added_at, added_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
            params![
                r.id,
                r.channel,
                r.report_key,
                r.password_hash,
                r.added_at,
                r.added_by
            ],
        )?;
        if n == 1 {
            super::handoff::bump(&tx, super::handoff::REGISTRY)?;
        }
        tx.commit()?;
        Ok(n == 1)
    }

    /// Removes display `id` from the registry (its fleet rows stay); `Ok(false)` when unknown.
    pub fn unregister_display(&self, id: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let gone = tx.execute("DELETE FROM registry WHERE id = ?1", [id])? == 1;
        if gone {
            super::handoff::bump(&tx, super::handoff::REGISTRY)?;
        }
        tx.commit()?;
        Ok(gone)
    }

    /// Every registered display, by id.
    pub fn registry(&self) -> Result<Vec<Registered>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, channel, report_key, password_hash, added_at, added_by FROM registry ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Registered {
                id: r.get(0)?,
                channel: r.get(1)?,
                report_key: r.get(2)?,
                password_hash: r.get(3)?,
                added_at: r.get(4)?,
                added_by: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// `now` as stored.
pub fn added_at(now: DateTime<Utc>) -> String {
    ts(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_display_is_registered_once_and_can_be_removed() {
        let s = Store::memory().unwrap();
        let r = Registered {
            id: "d1".into(),
            channel: "lobby".into(),
            report_key: "00".repeat(32),
            password_hash: "$6$x$y".into(),
            added_at: added_at(Utc::now()),
            added_by: "admin".into(),
        };
        assert!(s.register_display(&r).unwrap());
        assert!(!s.register_display(&r).unwrap());
        assert_eq!(s.registry().unwrap(), vec![r]);
        assert!(s.unregister_display("d1").unwrap());
        assert!(!s.unregister_display("d1").unwrap());
        assert!(s.registry().unwrap().is_empty());
    }
}
