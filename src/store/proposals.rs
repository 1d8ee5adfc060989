//! Playlist proposals (review before publishing): what an editor saved or deleted through the
//! API, waiting for another person to publish or reject it.

use crate::store::db::{OptionalExtension, Row, params};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Store, StoreError};

/// A proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Proposal {
    /// Id.
    pub id: i64,
    /// The playlist id.
    pub playlist: String,
    /// The proposed file; `None` proposes deleting it.
    pub body: Option<String>,
    /// The file when it was proposed (`None`: there was none).
    pub before: Option<String>,
    /// The change impact when it was proposed.
    #[schema(value_type = Vec<crate::preview::Impact>)]
    pub impact: serde_json::Value,
    /// Who proposed it.
    pub author: String,
    /// When.
    pub created_at: String,
    /// `pending`, `published`, `rejected` or `superseded` (a newer proposal for the playlist).
    pub status: String,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When.
    pub decided_at: Option<String>,
    /// Why it was rejected.
    pub reason: Option<String>,
}

fn row(r: &Row<'_>) -> crate::store::db::Result<Proposal> {
    let impact: String = r.get(4)?;
    Ok(Proposal {
        id: r.get(0)?,
        playlist: r.get(1)?,
        body: r.get(2)?,
        before: r.get(3)?,
        impact: serde_json::from_str(&impact).unwrap_or_default(),
        author: r.get(5)?,
        created_at: r.get(6)?,
        status: r.get(7)?,
        decided_by: r.get(8)?,
        decided_at: r.get(9)?,
        reason: r.get(10)?,
    })
}

const COLUMNS: &str = "id, playlist, body, before, impact, author, created_at, status, decided_by, decided_at, reason";

impl Store {
    /// Stores a proposal; an older pending one for the same playlist is superseded. Returns
    /// its id.
    pub fn propose(
        &self,
        playlist: &str,
        body: Option<&str>,
        before: Option<&str>,
        impact: &serde_json::Value,
        author: &str,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        self.bulk_ok()?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now.to_rfc3339();
        tx.execute(
            "UPDATE proposals SET status = 'superseded', decided_at = ?2
             WHERE playlist = ?1 AND status = 'pending'",
            params![playlist, now],
        )?;
        let id: i64 = tx.query_row(
            "INSERT INTO proposals (playlist, body, before, impact, author, created_at, status)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending') RETURNING id",
            params![playlist, body, before, impact.to_string(), author, now],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// Proposals, newest first (`status` filters).
    pub fn proposals(&self, status: Option<&str>) -> Result<Vec<Proposal>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM proposals WHERE (status = ?1 OR ?1 IS NULL) ORDER BY id DESC LIMIT 500"
        ))?;
        let rows = st.query_map([status], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One proposal.
    pub fn proposal(&self, id: i64) -> Result<Option<Proposal>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM proposals WHERE id = ?1"),
                [id],
                row,
            )
            .optional()?)
    }

    /// Decides a pending proposal (`published` or `rejected`); `false` when it is no longer
    /// pending.
    pub fn decide_proposal(
        &self,
        id: i64,
        status: &str,
        by: &str,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE proposals SET status = ?2, decided_by = ?3, decided_at = ?4, reason = ?5
             WHERE id = ?1 AND status = 'pending'",
            params![id, status, by, now.to_rfc3339(), reason],
        )?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_proposal_supersedes_the_pending_one_and_a_decision_is_taken_once() {
        let s = Store::memory().unwrap();
        let now = Utc::now();
        let a = s
            .propose("lobby", Some("{}"), None, &serde_json::json!([]), "ed", now)
            .unwrap();
        let b = s
            .propose("lobby", None, Some("{}"), &serde_json::json!([]), "ed", now)
            .unwrap();
        assert_eq!(s.proposal(a).unwrap().unwrap().status, "superseded");
        assert_eq!(s.proposals(Some("pending")).unwrap().len(), 1);
        assert!(!s.decide_proposal(a, "published", "ap", None, now).unwrap());
        assert!(
            s.decide_proposal(b, "rejected", "ap", Some("typo"), now)
                .unwrap()
        );
        assert!(!s.decide_proposal(b, "published", "ap", None, now).unwrap());
        assert_eq!(
            s.proposal(b).unwrap().unwrap().reason.as_deref(),
            Some("typo")
        );
    }
}
