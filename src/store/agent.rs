//! The display agent's own small database (in its cache directory): the last verified payload of
//! every topic (so a restarted agent plays without a broker) and the outbox of events the daemon
//! has not yet receipted (so none is lost while offline; bounded).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE payloads (
        topic    TEXT PRIMARY KEY,
        version  INTEGER NOT NULL,
        bytes    BLOB NOT NULL
    );
    CREATE TABLE outbox (
        seq   INTEGER PRIMARY KEY AUTOINCREMENT,
        body  TEXT NOT NULL
    );",
    // A random id of this database, part of every event id: an agent whose cache was wiped starts
    // its sequence again, and must not collide with the ids the daemon already stored.
    "CREATE TABLE meta (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );",
];

/// The agent's database.
pub struct AgentStore {
    conn: Mutex<Connection>,
}

impl AgentStore {
    /// Opens (creating) `path`.
    pub fn open(path: &Path) -> Result<AgentStore, StoreError> {
        let conn = super::migrate(Connection::open(path)?, MIGRATIONS)?;
        Ok(AgentStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This database's random id (created on first use).
    pub fn instance(&self) -> Result<String, StoreError> {
        let conn = self.conn();
        let have: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(id) = have {
            return Ok(id);
        }
        let mut b = [0u8; 6];
        getrandom::fill(&mut b)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let id = hex::encode(b);
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('instance', ?1)",
            [&id],
        )?;
        Ok(id)
    }

    /// Every stored payload: (topic, version, bytes).
    pub fn payloads(&self) -> Result<Vec<(String, u64, Vec<u8>)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT topic, version, bytes FROM payloads")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores the verified payload of `topic` (atomically replacing the previous one).
    pub fn put_payload(&self, topic: &str, version: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO payloads (topic, version, bytes) VALUES (?1, ?2, ?3)
             ON CONFLICT(topic) DO UPDATE SET version = excluded.version, bytes = excluded.bytes",
            params![topic, version as i64, bytes],
        )?;
        Ok(())
    }

    /// Forgets the payload of `topic`.
    pub fn remove_payload(&self, topic: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM payloads WHERE topic = ?1", [topic])?;
        Ok(())
    }

    /// Appends an event (JSON) to the outbox, dropping the oldest beyond `max`. Returns its
    /// sequence number and how many old events were dropped.
    pub fn push_event(
        &self,
        body: impl FnOnce(u64) -> String,
        max: usize,
    ) -> Result<(u64, usize), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let next: i64 = tx.query_row(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0) + 1",
            [],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO outbox (seq, body) VALUES (?1, ?2)",
            params![next, body(next as u64)],
        )?;
        let dropped = tx.execute(
            "DELETE FROM outbox WHERE seq <= (SELECT MAX(seq) FROM outbox) - ?1",
            [max as i64],
        )?;
        tx.commit()?;
        Ok((next as u64, dropped))
    }

    /// Up to `limit` oldest unconfirmed events: (seq, body).
    pub fn pending_events(&self, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT seq, body FROM outbox ORDER BY seq LIMIT ?1")?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes events up to and including `seq` (the broker confirmed them).
    pub fn confirm_events(&self, seq: u64) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM outbox WHERE seq <= ?1", [seq as i64])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_keeps_order_survives_reopen_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let s = AgentStore::open(&path).unwrap();
        for _ in 0..3 {
            s.push_event(|seq| format!("e{seq}"), 10).unwrap();
        }
        s.confirm_events(1).unwrap();
        drop(s);
        let s = AgentStore::open(&path).unwrap();
        assert_eq!(
            s.pending_events(10).unwrap(),
            vec![(2, "e2".to_string()), (3, "e3".to_string())]
        );
        // Sequence numbers never repeat, even after everything was confirmed.
        s.confirm_events(3).unwrap();
        let (seq, _) = s.push_event(|seq| format!("e{seq}"), 10).unwrap();
        assert_eq!(seq, 4);
        for _ in 0..5 {
            s.push_event(|seq| format!("e{seq}"), 3).unwrap();
        }
        let left: Vec<u64> = s
            .pending_events(10)
            .unwrap()
            .into_iter()
            .map(|(q, _)| q)
            .collect();
        assert_eq!(left, vec![7, 8, 9]);
    }

    #[test]
    fn instance_id_is_stable_per_database() {
        let dir = tempfile::tempdir().unwrap();
        let a = AgentStore::open(&dir.path().join("a.db"))
            .unwrap()
            .instance()
            .unwrap();
        let again = AgentStore::open(&dir.path().join("a.db"))
            .unwrap()
            .instance()
            .unwrap();
        let other = AgentStore::open(&dir.path().join("b.db"))
            .unwrap()
            .instance()
            .unwrap();
        assert_eq!(a, again);
        assert_ne!(a, other);
    }

    #[test]
    fn payloads_replace_per_topic() {
        let s = AgentStore::open(&tempfile::tempdir().unwrap().path().join("a.db")).unwrap();
        s.put_payload("t", 1, b"a").unwrap();
        s.put_payload("t", 2, b"b").unwrap();
        assert_eq!(
            s.payloads().unwrap(),
            vec![("t".to_string(), 2, b"b".to_vec())]
        );
        s.remove_payload("t").unwrap();
        assert!(s.payloads().unwrap().is_empty());
    }
}
