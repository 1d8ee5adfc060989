//! Emergency alerts raised through the API, and which displays acknowledged them.

use crate::store::db::{OptionalExtension, Row, params};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::ts;
use super::{Store, StoreError};

pub use crate::domain::campaign::AlertStatus;
pub use crate::domain::cap::Scope;

/// A stored alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AlertRow {
    /// Id.
    pub id: String,
    /// Scope.
    pub scope: Scope,
    /// Severity.
    pub severity: String,
    /// Text per language.
    pub text: std::collections::BTreeMap<String, String>,
    /// Raised at.
    pub issued_at: String,
    /// Ends by itself at.
    pub expires_at: String,
    /// Token name that raised it.
    pub raised_by: String,
    /// Cleared at, if cleared.
    pub cleared_at: Option<String>,
    /// Token name that cleared it.
    pub cleared_by: Option<String>,
    /// Where it stands (cleared or not: `cleared_at`): `pending`, `scheduled`, `live` or
    /// `ended`.
    #[schema(value_type = String, example = "live")]
    pub status: AlertStatus,
    /// Token name that approved it (two-person rule).
    pub approved_by: Option<String>,
    /// When.
    pub approved_at: Option<String>,
    /// When a `scheduled` alert starts (CAP `<effective>` or `<onset>`).
    pub starts_at: Option<String>,
}

/// An alert to record.
#[derive(Debug, Clone)]
pub struct NewAlert<'a> {
    /// Id.
    pub id: &'a str,
    /// Scope.
    pub scope: &'a Scope,
    /// Severity.
    pub severity: &'a str,
    /// Text per language.
    pub text: &'a std::collections::BTreeMap<String, String>,
    /// Raised at.
    pub issued_at: DateTime<Utc>,
    /// Ends by itself at.
    pub expires_at: DateTime<Utc>,
    /// Token name that raised it.
    pub raised_by: &'a str,
    /// Its status.
    pub status: AlertStatus,
    /// When a held alert starts.
    pub starts_at: Option<DateTime<Utc>>,
}

/// One display's acknowledgement of an alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AlertAck {
    /// Display.
    pub display: String,
    /// When the agent put it on screen (agent clock).
    pub displayed_at: String,
    /// From signing to screen.
    pub latency_ms: Option<i64>,
}

fn alert_row(r: &Row<'_>) -> crate::store::db::Result<AlertRow> {
    let scope: String = r.get(1)?;
    let text: String = r.get(3)?;
    Ok(AlertRow {
        id: r.get(0)?,
        scope: serde_json::from_str(&scope).unwrap_or(Scope::All),
        severity: r.get(2)?,
        text: serde_json::from_str(&text).unwrap_or_default(),
        issued_at: r.get(4)?,
        expires_at: r.get(5)?,
        raised_by: r.get(6)?,
        cleared_at: r.get(7)?,
        cleared_by: r.get(8)?,
        status: {
            let s: String = r.get(9)?;
            AlertStatus::parse(&s).ok_or_else(|| {
                crate::store::db::Error::Conversion(9, format!("unknown alert status {s:?}"))
            })?
        },
        approved_by: r.get(10)?,
        approved_at: r.get(11)?,
        starts_at: r.get(12)?,
    })
}

const COLUMNS: &str = "id, scope, severity, text, issued_at, expires_at, raised_by, cleared_at, cleared_by, \
     status, approved_by, approved_at, starts_at";

impl Store {
    /// Records a raised alert and its audit entry in one transaction; returns the audit log's
    /// new head.
    pub fn insert_alert(
        &self,
        a: &NewAlert<'_>,
        audit: &super::audit::NewEntry,
    ) -> Result<(u64, String), StoreError> {
        // The emergency path: written in the disk reserve when the disk is full.
        self.priority(|conn| {
            let tx = conn.transaction()?;
            let head = super::audit::append(&tx, Utc::now(), audit)?;
            tx.execute(
                &format!(
                    "INSERT INTO alerts ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL, ?8, NULL, NULL, ?9)"
                ),
                params![
                    a.id,
                    serde_json::to_string(a.scope).unwrap_or_default(),
                    a.severity,
                    serde_json::to_string(a.text).unwrap_or_default(),
                    ts(a.issued_at),
                    ts(a.expires_at),
                    a.raised_by,
                    a.status.as_str(),
                    a.starts_at.map(ts)
                ],
            )?;
            tx.commit()?;
            Ok(head)
        })
    }

    /// Records that an Update or Cancel ended alert `id` before the alert itself arrived (a
    /// feed read newest first): status `ended`, cleared; the alert, when it comes, is not
    /// raised. Nothing changes when the alert is known.
    pub fn tombstone_alert(&self, id: &str, at: DateTime<Utc>, by: &str) -> Result<(), StoreError> {
        self.priority(|conn| {
            conn.execute(
                &format!(
                    "INSERT INTO alerts ({COLUMNS}) VALUES (?1, '\"all\"', 'minor', '{{}}', ?2, ?2, ?3, ?2, ?3, 'ended', NULL, NULL, NULL) ON CONFLICT DO NOTHING"
                ),
                params![id, ts(at), by],
            )?;
            Ok(())
        })
    }

    /// Marks a pending alert approved and live, with its new times. Returns whether it changed.
    pub fn approve_alert(
        &self,
        id: &str,
        by: &str,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = self.priority(|conn| Ok(conn.execute(
            "UPDATE alerts SET status = 'live', approved_by = ?2, approved_at = ?3, issued_at = ?3, expires_at = ?4
             WHERE id = ?1 AND status = 'pending' AND cleared_at IS NULL",
            params![id, by, ts(issued_at), ts(expires_at)],
        )?))?;
        Ok(n > 0)
    }

    /// Scheduled alerts not cleared, soonest first: (id, starts_at).
    pub fn scheduled_alerts(&self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT id, starts_at FROM alerts WHERE status = 'scheduled' AND cleared_at IS NULL ORDER BY starts_at",
        )?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .filter_map(Result::ok)
            .filter_map(|(id, t)| {
                DateTime::parse_from_rfc3339(&t)
                    .ok()
                    .map(|t| (id, t.with_timezone(&Utc)))
            })
            .collect();
        Ok(rows)
    }

    /// A scheduled alert has started: status `live`. Returns whether it changed.
    pub fn start_alert(&self, id: &str) -> Result<bool, StoreError> {
        let n = self.priority(|conn| Ok(conn.execute(
            "UPDATE alerts SET status = 'live' WHERE id = ?1 AND status = 'scheduled' AND cleared_at IS NULL",
            params![id],
        )?))?;
        Ok(n > 0)
    }

    /// Marks an alert cleared (once: later calls change nothing). Returns whether it changed.
    pub fn clear_alert(&self, id: &str, at: DateTime<Utc>, by: &str) -> Result<bool, StoreError> {
        let n = self.priority(|conn| Ok(conn.execute(
            "UPDATE alerts SET cleared_at = ?2, cleared_by = ?3 WHERE id = ?1 AND cleared_at IS NULL",
            params![id, ts(at), by],
        )?))?;
        Ok(n > 0)
    }

    /// One alert.
    pub fn alert(&self, id: &str) -> Result<Option<AlertRow>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM alerts WHERE id = ?1"),
                [id],
                alert_row,
            )
            .optional()?)
    }

    /// Every alert, newest first.
    pub fn alerts(&self) -> Result<Vec<AlertRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM alerts ORDER BY issued_at DESC LIMIT 1000"
        ))?;
        let rows = stmt.query_map([], alert_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The displays that reported showing alert `id`, first report per display.
    pub fn alert_acks(&self, id: &str) -> Result<Vec<AlertAck>, StoreError> {
        let conn = self.conn();
        // SQLite takes the bare column from the row with the smallest `at`; PostgreSQL says so.
        let mut stmt = conn.prepare(if conn.is_pg() {
            "SELECT DISTINCT ON (display) display, at, CAST(body::jsonb ->> 'latency_ms' AS BIGINT)
             FROM events
             WHERE kind = 'alert_displayed' AND body::jsonb ->> 'alert' = ?1
             ORDER BY display, at"
        } else {
            "SELECT display, MIN(at), json_extract(body, '$.latency_ms') FROM events
             WHERE kind = 'alert_displayed' AND json_extract(body, '$.alert') = ?1
             GROUP BY display ORDER BY display"
        })?;
        let rows = stmt.query_map([id], |r| {
            Ok(AlertAck {
                display: r.get(0)?,
                displayed_at: r.get(1)?,
                latency_ms: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
