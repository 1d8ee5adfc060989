//! The audit log: who changed what, append-only and hash-chained. Each entry's hash covers its
//! fields and the previous entry's hash, so changing, removing or reordering any stored entry
//! breaks the chain from there on; [`Store::verify_audit`] finds the first broken entry.

use crate::store::db::params;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::ts;
use super::{Store, StoreError};

/// The hash before the first entry.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Position in the log (1, 2, …, no gaps).
    pub seq: u64,
    /// When.
    pub at: String,
    /// Token name (or `daemon`).
    pub actor: String,
    /// What was done, e.g. `alert.raise`, `playlist.put`.
    pub action: String,
    /// To what, e.g. an alert or playlist id.
    pub target: String,
    /// Details as JSON.
    pub detail: String,
    /// Hash of the previous entry.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

fn entry_hash(
    prev: &str,
    seq: u64,
    at: &str,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [prev, &seq.to_string(), at, actor, action, target, detail] {
        // Length-prefixed, so fields cannot be shifted into each other.
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditBreak {
    /// The first entry that does not verify.
    pub seq: u64,
    /// Why.
    pub reason: String,
}

/// An audit entry to append: who did what to what, with details.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// Token name (or `marquee`, `cap-feed`, `cap-start` for the daemon itself).
    pub actor: String,
    /// What was done (`alert.raise`, `campaign.create`, …).
    pub action: String,
    /// What it was done to (`alert-…`, `campaign:7`, a playlist path).
    pub target: String,
    /// Details (JSON).
    pub detail: serde_json::Value,
}

impl NewEntry {
    /// An entry.
    pub fn new(actor: &str, action: &str, target: &str, detail: serde_json::Value) -> NewEntry {
        NewEntry {
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail,
        }
    }
}

/// Appends `e` to the hash chain inside `tx` (which must hold the write lock: an `IMMEDIATE`
/// transaction, or one that has written already), so a change and its audit entry commit
/// together. Returns the new head.
pub(super) fn append(
    tx: &crate::store::db::Transaction<'_>,
    at: DateTime<Utc>,
    e: &NewEntry,
) -> Result<(u64, String), StoreError> {
    let (last_seq, prev): (u64, String) = tx
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
        )
        .unwrap_or((0, GENESIS.to_owned()));
    let seq = last_seq + 1;
    let at = ts(at);
    let detail = e.detail.to_string();
    let hash = entry_hash(&prev, seq, &at, &e.actor, &e.action, &e.target, &detail);
    tx.execute(
        "INSERT INTO audit (seq, at, actor, action, target, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            seq as i64, at, e.actor, e.action, e.target, detail, prev, hash
        ],
    )?;
    Ok((seq, hash))
}

impl Store {
    /// Appends an entry; returns the log's new head: its sequence number and hash.
    pub fn audit(&self, at: DateTime<Utc>, e: &NewEntry) -> Result<(u64, String), StoreError> {
        // The emergency path: written in the disk reserve when the disk is full.
        self.priority(|conn| {
            let tx = conn.transaction()?;
            let head = append(&tx, at, e)?;
            tx.commit()?;
            Ok(head)
        })
    }

    /// The hash of entry `seq`, if it exists.
    pub fn audit_hash(&self, seq: u64) -> Result<Option<String>, StoreError> {
        use crate::store::db::OptionalExtension;
        Ok(self
            .conn()
            .query_row("SELECT hash FROM audit WHERE seq = ?1", [seq as i64], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Entries after `after`, oldest first, at most `limit`.
    pub fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT seq, at, actor, action, target, detail, prev_hash, hash FROM audit
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after as i64, limit as i64], |r| {
            Ok(AuditEntry {
                seq: r.get::<_, i64>(0)? as u64,
                at: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                target: r.get(4)?,
                detail: r.get(5)?,
                prev_hash: r.get(6)?,
                hash: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Walks the whole chain. `Ok(n)` with the number of entries when intact, else where it breaks.
    pub fn verify_audit(&self) -> Result<Result<u64, AuditBreak>, StoreError> {
        let mut prev = GENESIS.to_owned();
        let mut expected = 1u64;
        let mut after = 0;
        loop {
            let batch = self.audit_entries(after, 10_000)?;
            if batch.is_empty() {
                return Ok(Ok(expected - 1));
            }
            for e in batch {
                let broken = |reason: String| Ok(Err(AuditBreak { seq: e.seq, reason }));
                if e.seq != expected {
                    return broken(format!("entry {expected} is missing"));
                }
                if e.prev_hash != prev {
                    return broken(
                        "does not follow the previous entry (removed or reordered)".into(),
                    );
                }
                let want = entry_hash(
                    &prev, e.seq, &e.at, &e.actor, &e.action, &e.target, &e.detail,
                );
                if e.hash != want {
                    return broken("content does not match its hash (edited)".into());
                }
                prev = e.hash;
                expected += 1;
                after = e.seq;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filled() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let s = Store::open(&path).unwrap();
        for i in 0..5 {
            s.audit(
                Utc::now(),
                &NewEntry::new("office", "playlist.put", &format!("p{i}"), json!({"i": i})),
            )
            .unwrap();
        }
        (dir, path)
    }

    #[test]
    fn intact_chain_verifies() {
        let (_d, path) = filled();
        assert_eq!(Store::open(&path).unwrap().verify_audit().unwrap(), Ok(5));
    }

    #[test]
    fn updates_and_deletes_are_refused() {
        let (_d, path) = filled();
        let conn = rusqlite::Connection::open(&path).unwrap();
        let e = conn
            .execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2", [])
            .unwrap_err();
        assert!(e.to_string().contains("append-only"), "{e}");
        assert!(conn.execute("DELETE FROM audit WHERE seq = 2", []).is_err());
    }

    #[test]
    fn tampering_behind_the_triggers_is_detected() {
        let (_d, path) = filled();
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
            .unwrap();
        conn.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 3", [])
            .unwrap();
        let s = Store::open(&path).unwrap();
        let b = s.verify_audit().unwrap().unwrap_err();
        assert_eq!(b.seq, 3);
        assert!(b.reason.contains("edited"));
        conn.execute("UPDATE audit SET actor = 'office' WHERE seq = 3", [])
            .unwrap();
        conn.execute("DELETE FROM audit WHERE seq = 4", []).unwrap();
        let b = s.verify_audit().unwrap().unwrap_err();
        assert_eq!((b.seq, b.reason.as_str()), (5, "entry 4 is missing"));
    }
}
