//! Delivery reports (one or many per transaction, early reports kept until the submit answer
//! names them) and the reconciliation of `unknown` messages.

use crate::store::db::{OptionalExtension, params};
use chrono::{DateTime, Utc};

use super::super::{Store, StoreError, ts};
use super::{ReportIn, Tally, UnknownMessage, parse_state};
use crate::domain::delivery::{self, Report, State};

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

pub(super) fn report_from(s: &str) -> Option<Report> {
    Some(match s {
        "delivered" => Report::Delivered,
        "undelivered" => Report::Undelivered,
        "progress" => Report::Progress,
        "rejected" => Report::SmscRejected,
        "expired" => Report::Expired,
        _ => return None,
    })
}

/// A reported message as stored: id, state, gateway of its last submit, campaign, parts.
type Reported = (i64, String, Option<String>, i64, i64);

/// The message a report is about (by our id, or by the carrier's for providers that push
/// their own).
fn reported(
    by_carrier: &mut crate::store::db::CachedStatement<'_>,
    get: &mut crate::store::db::CachedStatement<'_>,
    r: &ReportIn,
) -> crate::store::db::Result<Option<Reported>> {
    let id = match &r.carrier_id {
        Some(c) if r.id == 0 => by_carrier
            .query_row(params![c, r.gateway], |row| row.get::<_, i64>(0))
            .optional()?,
        _ => Some(r.id),
    };
    let Some(id) = id else {
        return Ok(None);
    };
    get.query_row([id], |row| {
        Ok((id, row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
    })
    .optional()
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
                "UPDATE messages SET state = ?2, reason = COALESCE(?3, reason), updated_at = ?4
                 WHERE id = ?1",
            )?;
            // A report came from the network: the message reached it, whatever the report
            // says (the daily cap counts it); see `reached_already`.
            let mut reached = tx.prepare_cached(
                "UPDATE messages SET reached_at = ?2 WHERE id = ?1 AND reached_at IS NULL",
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
                let Some((id, current, via, campaign, parts)) =
                    reported(&mut by_carrier, &mut get, r)?
                else {
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
                if !reached_already(current) {
                    reached.execute(params![id, now_s])?;
                }
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
        // The gateways' names as a JSON array, opened by each engine's own function.
        let names_of = if conn.is_pg() {
            "SELECT value FROM jsonb_array_elements_text(?2::jsonb) AS value"
        } else {
            "SELECT value FROM json_each(?2)"
        };
        let mut st = conn.prepare_cached(&format!(
            "SELECT id, campaign, parts, recipient, gateway, submitted_at FROM messages INDEXED BY messages_unknown
             WHERE state = 'unknown' AND (campaign = ?1 OR ?1 IS NULL)
               AND gateway IN ({names_of})
               AND (submitted_at IS NULL OR submitted_at <= ?3)
               AND (checked_at IS NULL OR checked_at <= ?4)
             ORDER BY checked_at IS NOT NULL, checked_at, id LIMIT ?5"
        ))?;
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
}

/// Whether a message in state `s` has its `reached_at` already: an accepted or `unknown`
/// outcome, or an earlier report, set it. So the usual report, to a `sent` message, writes
/// nothing more.
fn reached_already(s: State) -> bool {
    matches!(
        s,
        State::Sent | State::Delivered | State::Unknown | State::Failed | State::Expired
    )
}
