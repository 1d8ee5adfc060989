//! What a standby hands to the leader through the shared database (PostgreSQL; `crate::leader`).
//!
//! A standby answers the API but publishes nothing: a payload its API asks to put on a retained
//! topic (an alert, its clear) is stored here, in order, and the leader publishes it through its
//! scheduler (signed, versioned, stored and re-asserted as its own) and then removes it. A row
//! survives the leader's death: the next leader publishes it. `generations` counts the changes
//! of what every node keeps a copy of in memory (the display registry, the last good playlist
//! sources): a node that sees the count move reads the table again.

use chrono::{DateTime, Utc};

use super::db::params;
use super::{Store, StoreError, ts};

/// One payload handed to the leader.
#[derive(Debug, Clone, PartialEq)]
pub struct Handoff {
    /// Its place in the order of hand-offs.
    pub id: i64,
    /// The full topic (with the prefix).
    pub topic: String,
    /// The unsigned content as JSON (`wire::Signed`).
    pub payload: String,
    /// When receivers must stop honouring it.
    pub expires_at: DateTime<Utc>,
    /// Publish only while the topic holds this alert (clears).
    pub if_current_alert: Option<String>,
    /// The node that handed it over.
    pub node: String,
}

/// The generation of the display registry in `generations`.
pub const REGISTRY: &str = "registry";

impl Store {
    /// Stores a payload to publish (`h.id` is ignored); answers its place in the order. A
    /// writer's transaction: hand-offs from every node commit one at a time, so their ids are
    /// their commit order and a reader never sees a later one before an earlier one.
    pub fn hand_off(&self, h: &Handoff) -> Result<i64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let id = tx.query_row(
            "INSERT INTO handoff (topic, payload, expires_at, if_current_alert, node, handed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
            params![
                h.topic,
                h.payload,
                ts(h.expires_at),
                h.if_current_alert,
                h.node,
                ts(Utc::now())
            ],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// The first `limit` payloads handed over after `after`, oldest first.
    pub fn handoffs(&self, after: i64, limit: i64) -> Result<Vec<Handoff>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, topic, payload, expires_at, if_current_alert, node FROM handoff
             WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, limit], |r| {
            let at: String = r.get(3)?;
            Ok(Handoff {
                id: r.get(0)?,
                topic: r.get(1)?,
                payload: r.get(2)?,
                expires_at: DateTime::parse_from_rfc3339(&at)
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or(DateTime::<Utc>::MIN_UTC),
                if_current_alert: r.get(4)?,
                node: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes payload `id` once published.
    pub fn drop_handoff(&self, id: i64) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM handoff WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// The generation of `name` (0 before its first change).
    pub fn generation(&self, name: &str) -> Result<i64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT COALESCE(MAX(n), 0) FROM generations WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )?)
    }
}

/// The generation of the last good playlist sources (what the leader published).
pub const PLAYLISTS: &str = "playlists";

/// Counts a change of `name` (inside the transaction that makes it).
pub(super) fn bump(conn: &super::db::Connection, name: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO generations (name, n) VALUES (?1, 1)
         ON CONFLICT (name) DO UPDATE SET n = generations.n + 1",
        params![name],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-offs come back in the order they were handed over, and go once published; a
    /// registry change moves its generation.
    #[test]
    fn handoffs_keep_their_order_and_registry_changes_count() {
        let s = Store::memory().unwrap();
        for n in 0..3 {
            let _ = s
                .hand_off(&Handoff {
                    id: 0,
                    topic: format!("marquee/alerts/{n}"),
                    payload: "{}".into(),
                    expires_at: Utc::now(),
                    if_current_alert: (n == 1).then(|| "alert-1".to_owned()),
                    node: "b".into(),
                })
                .unwrap();
        }
        let all = s.handoffs(0, 10).unwrap();
        let topics: Vec<_> = all.iter().map(|h| h.topic.as_str()).collect();
        assert_eq!(
            topics,
            ["marquee/alerts/0", "marquee/alerts/1", "marquee/alerts/2"]
        );
        assert_eq!(all[1].if_current_alert.as_deref(), Some("alert-1"));
        s.drop_handoff(all[0].id).unwrap();
        assert_eq!(s.handoffs(0, 1).unwrap()[0].topic, "marquee/alerts/1");
        assert_eq!(s.handoffs(all[1].id, 5).unwrap().len(), 1);
        let g = s.generation(REGISTRY).unwrap();
        s.register_display(&crate::store::registry::Registered {
            id: "d1".into(),
            channel: "lobby".into(),
            report_key: "00".into(),
            password_hash: "x".into(),
            added_at: "now".into(),
            added_by: "t".into(),
        })
        .unwrap();
        assert_eq!(s.generation(REGISTRY).unwrap(), g + 1);
        assert!(!s.unregister_display("nobody").unwrap());
        assert_eq!(s.generation(REGISTRY).unwrap(), g + 1);
        assert!(s.unregister_display("d1").unwrap());
        assert_eq!(s.generation(REGISTRY).unwrap(), g + 2);
    }
}
