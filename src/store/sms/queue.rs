//! The message queue: claiming due messages (`queued → submitting`, on disk before a request
//! leaves), storing the gateways' answers through [`crate::domain::delivery`], recovery after a
//! crash (`submitting → unknown`, never resent by itself), requeueing unknowns, and reading
//! messages.

use crate::store::db::{Connection, OptionalExtension, Transaction, params};
use crate::store::walsync;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};

use super::super::{Store, StoreError, ts};
use super::reports::report_from;
use super::{
    CampaignStatus, Claimed, Finish, MESSAGE_COLS, MessageRow, Tally, message_row, move_all,
    parse_state,
};
use crate::domain::delivery::{self, Report, State, Submit};

/// Up to `want` due queued messages of a running `campaign`, each with whether its number
/// is on the opt-out list.
fn due(
    select: &mut crate::store::db::CachedStatement<'_>,
    campaign: i64,
    now_s: &str,
    want: i64,
) -> crate::store::db::Result<Vec<(Claimed, bool)>> {
    select
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
        .collect()
}

/// Who claims: this node's name and the epoch of the lease it leads at (`None`s on a store
/// with no lease).
type Owner<'a> = (Option<&'a str>, Option<i64>);

/// Moves the messages `ids` (emptied) to `submitting` for `gateway`, owned by `owner`, in one
/// statement (PostgreSQL: one round trip for a claim's round).
fn take_all(
    tx: &Transaction<'_>,
    ids: &mut Vec<i64>,
    gateway: &str,
    now_s: &str,
    owner: Owner<'_>,
) -> crate::store::db::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = ids.drain(..).map(|id| id.to_string()).collect();
    tx.prepare_cached(
        "UPDATE messages SET state = 'submitting', gateway = ?2, attempts = attempts + 1,
             submitted_at = ?3, updated_at = ?3, not_before = NULL,
             claimed_by = ?4, claim_epoch = ?5
         WHERE id = ANY (CAST(string_to_array(?1, ',') AS BIGINT[]))",
    )?
    .execute(params![list.join(","), gateway, now_s, owner.0, owner.1])?;
    Ok(())
}

/// When `m`'s number has had `cap` messages in the last day: the moment it may have another
/// (a day after the oldest of them). When the cap is reached only by counting messages still
/// being submitted, [`IN_FLIGHT_HOLD`] (their attempt may fail and then not count).
fn capped(
    sent_today: &mut crate::store::db::CachedStatement<'_>,
    m: &Claimed,
    cap: u32,
    day_ago: &str,
    now: DateTime<Utc>,
) -> crate::store::db::Result<Option<DateTime<Utc>>> {
    let (reached, oldest, in_flight): (i64, Option<String>, i64) = sent_today
        .query_row(params![m.recipient, day_ago, m.id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let cap = i64::from(cap);
    if reached + in_flight < cap {
        return Ok(None);
    }
    if reached < cap {
        return Ok(Some(now + IN_FLIGHT_HOLD));
    }
    Ok(Some(
        oldest
            .and_then(|o| DateTime::parse_from_rfc3339(&o).ok())
            .map(|o| o.with_timezone(&Utc) + chrono::Duration::days(1))
            .unwrap_or(now + chrono::Duration::days(1)),
    ))
}

/// The messages to number `?1` that count against its daily cap since `?2` (other than `?3`):
/// how many reached the network or may have (`reached_at`: an accepted or `unknown` outcome,
/// never cleared, so an `unknown` message requeued by an operator keeps counting), the oldest of
/// those, and how many others are being submitted now. An attempt that surely failed (a
/// transient failure, a deferral, a refusal) never sets `reached_at`.
const SENT_TODAY: &str = "SELECT
        COALESCE(SUM(CASE WHEN reached_at > ?2 THEN 1 ELSE 0 END), 0),
        MIN(CASE WHEN reached_at > ?2 THEN reached_at END),
        COALESCE(SUM(CASE WHEN state = 'submitting' AND NOT (COALESCE(reached_at, '') > ?2)
                          THEN 1 ELSE 0 END), 0)
    FROM messages
    WHERE recipient = ?1 AND id != ?3 AND (reached_at > ?2 OR state = 'submitting')";

/// How long a message waits when its number's daily cap is reached only by counting messages
/// still being submitted; then the cap is checked again.
const IN_FLIGHT_HOLD: chrono::Duration = chrono::Duration::minutes(1);

/// The reason an operator's requeue of an `unknown` message leaves: the sign of a possible
/// duplicate, kept when a later attempt is accepted.
pub(super) const REQUEUED: &str = "requeued by an operator";

impl Store {
    /// After a crash, a restart or a failover: a message caught mid-submit becomes `unknown`
    /// (never resent by itself) when its owner's lease has ended: on a node that leads at
    /// epoch *e*, those claimed at an epoch below *e* (each taking of the lease raises it, so
    /// their owner was succeeded and is fenced); without a lease (SQLite's one node), all.
    pub fn recover_submitting(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let epoch = self.lead_epoch();
        let mut conn = self.sms_conn();
        let tx = conn.transaction()?;
        let to = delivery::on_recovery(State::Submitting);
        let n = move_all(
            &tx,
            "UPDATE messages INDEXED BY messages_submitting
             SET state = ?1, reason = 'the daemon stopped before the gateway answered', updated_at = ?2,
                 reached_at = COALESCE(submitted_at, ?2)
             WHERE state = 'submitting'
               AND (CAST(?3 AS BIGINT) = 0 OR claim_epoch IS NULL OR claim_epoch < ?3)
             RETURNING campaign, parts",
            params![to.as_str(), ts(now), epoch],
            State::Submitting,
            to,
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// Claims up to `max` due messages of `campaign` for `gateway` in one transaction:
    /// `queued → submitting`, on disk before this returns ([`Store::claim_unsynced`], then its
    /// sync awaited). When that sync fails the messages stay `submitting` (`unknown` after a
    /// restart): for tests and benchmarks; the dispatcher requeues them unsent.
    pub fn claim_batch(
        &self,
        campaign: i64,
        gateway: &str,
        daily_cap: Option<u32>,
        now: DateTime<Utc>,
        max: usize,
        answers: &[Finish],
    ) -> Result<Vec<Claimed>, StoreError> {
        let (claimed, ticket) =
            self.claim_unsynced(campaign, gateway, daily_cap, now, max, answers)?;
        self.wait_claimed(ticket)?;
        Ok(claimed)
    }

    /// Claims up to `max` due messages of `campaign` for `gateway` in one transaction:
    /// `queued → submitting`, committed before this returns, and on disk once the ticket
    /// returned is ([`Store::wait_claimed`], [`Store::claims_synced`]; SQLite syncs the log
    /// behind the commit, one sync for every claim before it: [`crate::store::walsync`]). No
    /// request of a claim may leave before that. Nothing is claimed unless the campaign is
    /// `running`, so a pause or cancel holds from the moment it is committed. Opted-out numbers
    /// are cancelled on the way; numbers over the daily cap wait (`not_before`). `answers`
    /// (submit answers not yet stored) go into the same transaction, before the claim. While
    /// the disk reserve is in use nothing is claimed.
    pub fn claim_unsynced(
        &self,
        campaign: i64,
        gateway: &str,
        daily_cap: Option<u32>,
        now: DateTime<Utc>,
        max: usize,
        answers: &[Finish],
    ) -> Result<(Vec<Claimed>, u64), StoreError> {
        // A log that could not be synced: nothing more is claimed until the daemon is
        // restarted (walsync: a later sync's success proves nothing); the answers are stored.
        if self.claims_broken() {
            self.finish_submits(answers, now)?;
            return Err(walsync::broken().into());
        }
        // A (nearly) full disk: answers are still stored, nothing new is claimed (what is
        // sent must have room for its reports and replies).
        let max = if self.bulk_ok().is_err() { 0 } else { max };
        let epoch = self.lead_epoch();
        let owner: Owner<'_> = (self.node(), (epoch > 0).then_some(epoch));
        let mut conn = self.sms_conn();
        let wal = self.wal_sync()?;
        // The claim alone commits without a sync of its own (the log's thread syncs it behind);
        // every other write of the connection keeps its sync.
        if wal.is_some() {
            self.sms_sync_off(&conn)?;
        }
        let claimed = claim_in(
            &mut conn,
            (campaign, gateway, daily_cap),
            now,
            max,
            answers,
            owner,
        );
        // Taken while the connection is held (`conn`): tickets follow the commits.
        let ticket = Store::claim_ticket(wal.map(|w| &**w), claimed.as_ref().map_or(0, Vec::len));
        if wal.is_some() {
            self.sms_sync_on(&conn);
        }
        Ok((claimed?, ticket))
    }
}

/// The claim's transaction ([`Store::claim_unsynced`]): the answers, then up to `max` due
/// messages of `campaign` taken for `gateway` by `owner`.
fn claim_in(
    conn: &mut Connection,
    (campaign, gateway, daily_cap): (i64, &str, Option<u32>),
    now: DateTime<Utc>,
    max: usize,
    answers: &[Finish],
    owner: Owner<'_>,
) -> Result<Vec<Claimed>, StoreError> {
    let tx = conn.transaction()?;
    let mut tally = Tally::default();
    finish_in(&tx, answers, now, &mut tally)?;
    let now_s = ts(now);
    let mut claimed = Vec::new();
    let day_ago = ts(now - chrono::Duration::days(1));
    // PostgreSQL: the rows are locked as they are read, and rows another transaction
    // holds are passed over (`SKIP LOCKED`), so that two claimers never wait for each other
    // or take the same message (SQLite has one writer at a time).
    const DUE: &str = "SELECT m.id, m.recipient, m.text, m.parts, m.attempts,
                    EXISTS (SELECT 1 FROM optouts o WHERE o.number = m.recipient), m.params
             FROM messages m INDEXED BY messages_queued
             WHERE m.campaign = ?1 AND m.state = 'queued'
               AND (m.not_before IS NULL OR m.not_before <= ?2)
               AND (SELECT status FROM campaigns WHERE id = ?1) = 'running'
             ORDER BY m.id LIMIT ?3";
    let mut select = if tx.is_pg() {
        tx.prepare_cached(&format!("{DUE} FOR UPDATE OF m SKIP LOCKED"))?
    } else {
        tx.prepare_cached(DUE)?
    };
    let mut sent_today = tx.prepare_cached(SENT_TODAY)?;
    let mut hold = tx.prepare_cached(
        "UPDATE messages SET not_before = ?2, reason = ?3, updated_at = ?4 WHERE id = ?1",
    )?;
    let mut take = tx.prepare_cached(
        "UPDATE messages SET state = 'submitting', gateway = ?2, attempts = attempts + 1,
                 submitted_at = ?3, updated_at = ?3, not_before = NULL,
                 claimed_by = ?4, claim_epoch = ?5
             WHERE id = ?1",
    )?;
    let mut cancel = tx.prepare_cached(
        "UPDATE messages SET state = 'cancelled', reason = 'opted out (checked at send time)',
                 updated_at = ?2
             WHERE id = ?1",
    )?;
    // PostgreSQL: the messages taken are moved in one statement per round (one round trip
    // to the server for the batch instead of one per message).
    let batch_take = tx.is_pg();
    let mut taken: Vec<i64> = Vec::new();
    while claimed.len() < max {
        let want = (max - claimed.len()) as i64;
        let candidates = due(&mut select, campaign, &now_s, want)?;
        if candidates.is_empty() {
            break;
        }
        for (m, opted_out) in candidates {
            if opted_out {
                cancel.execute(params![m.id, now_s])?;
                tally.moved(campaign, m.parts as i64, State::Queued, State::Cancelled);
                continue;
            }
            if let Some(cap) = daily_cap
                && let Some(until) = capped(&mut sent_today, &m, cap, &day_ago, now)?
            {
                hold.execute(params![
                    m.id,
                    ts(until),
                    format!("daily cap of {cap} reached for this number"),
                    now_s
                ])?;
                continue;
            }
            if batch_take {
                taken.push(m.id);
            } else {
                take.execute(params![m.id, gateway, now_s, owner.0, owner.1])?;
            }
            tally.moved(campaign, m.parts as i64, State::Queued, State::Submitting);
            claimed.push(m);
        }
        take_all(&tx, &mut taken, gateway, &now_s, owner)?;
    }
    drop((select, sent_today, hold, take, cancel));
    tally.write(&tx)?;
    tx.commit()?;
    Ok(claimed)
}

impl Store {
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
        self.sms_sync_off(&conn)?;
        let out = (|| {
            let tx = conn.transaction()?;
            let mut tally = Tally::default();
            let out = finish_in(&tx, items, now, &mut tally)?;
            tally.write(&tx)?;
            tx.commit()?;
            Ok(out)
        })();
        self.sms_sync_on(&conn);
        out
    }
}

/// Stores submit answers within `tx`; returns each message's new state.
pub(super) fn finish_in(
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
    // An accepted attempt clears what earlier attempts left in `reason` ("not sent: …", a
    // 429), except an operator's requeue mark. An accepted or lost attempt sets `reached_at`
    // (it reached the network, or may have: what the daily cap counts); nothing clears it.
    let mut set = tx.prepare_cached(&format!(
        "UPDATE messages SET state = ?2, carrier_id = COALESCE(?3, carrier_id),
             reason = CASE WHEN CAST(?4 AS TEXT) IS NOT NULL THEN ?4
                           WHEN ?2 IN ('sent', 'delivered') AND COALESCE(reason, '') <> '{REQUEUED}'
                           THEN NULL ELSE reason END,
             reached_at = CASE WHEN ?2 NOT IN ('sent', 'delivered', 'unknown') THEN reached_at
                               WHEN state = 'submitting' THEN ?6
                               ELSE COALESCE(reached_at, ?6) END,
             not_before = ?5, updated_at = ?6
         WHERE id = ?1 AND (state = ?7 OR ?7 IS NULL)"
    ))?;
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
    // PostgreSQL: the usual answers in one statement (one round trip for the batch, not one
    // per message); the messages it did not move go the way below.
    let pg = tx.is_pg();
    let mut moved = if pg {
        write_usual(tx, items, &now_s)?
    } else {
        HashSet::new()
    };
    for f in items {
        if matches!(
            f.answer,
            Submit::Defer | Submit::Config | Submit::Account | Submit::OptedOut
        ) {
            answer_effects(tx, f, &now_s)?;
        }
        // The usual case: the message is still `submitting`, so its next state is known
        // without reading it first.
        if f.delivered_by.is_none() {
            let next = delivery::on_submit(State::Submitting, &f.answer);
            let done = if pg {
                moved.remove(&f.id)
            } else {
                write(f, next, Some(State::Submitting))?
            };
            if done {
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
    cancel_requeued(tx, items, &out, &now_s, tally)?;
    adopt_early_reports(tx, items, &now_s, tally)?;
    Ok(out)
}

/// Messages of `items` queued again (a transient failure, a deferral, an account error) whose
/// campaign was cancelled meanwhile are cancelled too: cancelling moved only the messages
/// queued at that time, and a queued message of a cancelled campaign would wait forever.
fn cancel_requeued(
    tx: &Transaction<'_>,
    items: &[Finish],
    out: &[State],
    now_s: &str,
    tally: &mut Tally,
) -> Result<(), StoreError> {
    let mut status = tx.prepare_cached("SELECT status FROM campaigns WHERE id = ?1")?;
    let mut cancel = tx.prepare_cached(
        "UPDATE messages SET state = 'cancelled', reason = 'campaign cancelled', not_before = NULL,
             updated_at = ?2
         WHERE id = ?1 AND state = 'queued'",
    )?;
    let mut cancelled: HashMap<i64, bool> = HashMap::new();
    for (f, state) in items.iter().zip(out) {
        if *state != State::Queued {
            continue;
        }
        let is = match cancelled.get(&f.campaign) {
            Some(is) => *is,
            None => {
                let st: Option<String> = status.query_row([f.campaign], |r| r.get(0)).optional()?;
                let is = st.as_deref() == Some(CampaignStatus::Cancelled.as_str());
                cancelled.insert(f.campaign, is);
                is
            }
        };
        if is && cancel.execute(params![f.id, now_s])? == 1 {
            tally.moved(f.campaign, f.parts as i64, State::Queued, State::Cancelled);
        }
    }
    Ok(())
}

/// The answers of `items` without a dry-run report, each moving its message from `submitting`
/// to [`delivery::on_submit`]'s state in one statement (PostgreSQL); answers the ids it moved.
/// A message named twice is in it once (its second answer is read against the first's state,
/// as one by one).
fn write_usual(
    tx: &Transaction<'_>,
    items: &[Finish],
    now_s: &str,
) -> Result<HashSet<i64>, StoreError> {
    let mut seen = HashSet::new();
    let rows: Vec<serde_json::Value> = items
        .iter()
        .filter(|f| f.delivered_by.is_none() && seen.insert(f.id))
        .map(|f| {
            serde_json::json!({
                "id": f.id,
                "state": delivery::on_submit(State::Submitting, &f.answer).as_str(),
                "carrier_id": f.carrier_id,
                "reason": f.reason,
                "not_before": f.retry_at.map(ts),
            })
        })
        .collect();
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = serde_json::Value::Array(rows).to_string();
    let mut st = tx.prepare_cached(&format!(
        "UPDATE messages m SET state = v.state, carrier_id = COALESCE(v.carrier_id, m.carrier_id),
             reason = CASE WHEN v.reason IS NOT NULL THEN v.reason
                           WHEN v.state IN ('sent', 'delivered') AND COALESCE(m.reason, '') <> '{REQUEUED}'
                           THEN NULL ELSE m.reason END,
             reached_at = CASE WHEN v.state IN ('sent', 'delivered', 'unknown') THEN ?2
                               ELSE m.reached_at END,
             not_before = v.not_before, updated_at = ?2
         FROM jsonb_to_recordset(CAST(?1 AS jsonb))
             AS v(id BIGINT, state TEXT, carrier_id TEXT, reason TEXT, not_before TEXT)
         WHERE m.id = v.id AND m.state = 'submitting'
         RETURNING m.id"
    ))?;
    let moved = st
        .query_map(params![rows, now_s], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(moved)
}

/// What an answer does beyond the message's state: a provider's block list puts the number
/// on ours; a campaign the provider refuses as configured is paused; a deferral, a paused
/// campaign or a gateway out of rotation does not use up the message's attempts.
fn answer_effects(tx: &Transaction<'_>, f: &Finish, now_s: &str) -> Result<(), StoreError> {
    if matches!(f.answer, Submit::Defer | Submit::Config | Submit::Account) {
        tx.prepare_cached("UPDATE messages SET attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END WHERE id = ?1")?
            .execute([f.id])?;
    }
    match f.answer {
        // The provider's words are the reason.
        Submit::OptedOut => {
            tx.prepare_cached(
                "INSERT INTO optouts (number, reason, added_by, added_at)
                 SELECT recipient, ?2, 'gateway', ?3 FROM messages WHERE id = ?1 ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                f.id,
                f.reason.as_deref().unwrap_or("provider block list"),
                now_s
            ])?;
        }
        // Paused, with why, before the list burns.
        Submit::Config => {
            tx.prepare_cached(
                "UPDATE campaigns SET status = 'paused', paused_reason = ?2 WHERE id = ?1 AND status = 'running'",
            )?
            .execute(params![f.campaign, f.reason])?;
        }
        _ => {}
    }
    Ok(())
}

/// An early report: (message, its `orphan_reports` id, report, code, raw, gateway).
type Early = (i64, i64, Option<String>, String, String, String);

/// The early reports waiting for the messages of `items` that now have a carrier id, in the
/// order they came.
fn early_reports(tx: &Transaction<'_>, items: &[Finish]) -> Result<Vec<Early>, StoreError> {
    let row = |r: &crate::store::db::Row<'_>| -> crate::store::db::Result<Early> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    };
    // Reports that came before the answer that names their message (early reports), in the
    // order they came: PostgreSQL looks for the whole batch's at once (one round trip).
    // Each message once (one answered twice in the batch has its early reports once).
    let mut ids: Vec<i64> = items
        .iter()
        .filter(|f| f.carrier_id.is_some())
        .map(|f| f.id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(if tx.is_pg() {
        tx.prepare_cached(
            "SELECT m.id, o.id, o.report, o.code, o.raw, o.gateway FROM messages m
                 JOIN orphan_reports o ON o.carrier_id = m.carrier_id AND o.gateway = m.gateway
             WHERE m.id = ANY (CAST(string_to_array(?1, ',') AS BIGINT[]))
               AND m.carrier_id IS NOT NULL
             ORDER BY o.id",
        )?
        .query_map(
            [ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")],
            row,
        )?
        .collect::<Result<_, _>>()?
    } else {
        let mut early = tx.prepare_cached(
            "SELECT m.id, o.id, o.report, o.code, o.raw, o.gateway FROM orphan_reports o
                 JOIN messages m ON m.id = ?1 AND o.carrier_id = m.carrier_id AND o.gateway = m.gateway
             WHERE m.carrier_id IS NOT NULL
             ORDER BY o.id",
        )?;
        let mut found = Vec::new();
        for id in &ids {
            for r in early.query_map([*id], row)? {
                found.push(r?);
            }
        }
        found
    })
}

/// Applies the reports that came before the answer naming their message (early reports, kept
/// in `orphan_reports` by carrier id) to the messages `items` just gave a carrier id.
fn adopt_early_reports(
    tx: &Transaction<'_>,
    items: &[Finish],
    now_s: &str,
    tally: &mut Tally,
) -> Result<(), StoreError> {
    let found = early_reports(tx, items)?;
    if found.is_empty() {
        return Ok(());
    }
    let mut adopt = tx.prepare_cached(
        "INSERT INTO dlrs (message, gateway, code, raw, received_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut forget = tx.prepare_cached("DELETE FROM orphan_reports WHERE id = ?1")?;
    let mut apply = tx.prepare_cached(
        "UPDATE messages SET state = ?2, reason = COALESCE(?3, reason), updated_at = ?4,
             reached_at = COALESCE(reached_at, ?4)
         WHERE id = ?1",
    )?;
    let mut state_of =
        tx.prepare_cached("SELECT state, campaign, parts FROM messages WHERE id = ?1")?;
    for (message, orphan, report, code, raw, gateway) in found {
        adopt.execute(params![message, gateway, code, raw, now_s])?;
        forget.execute([orphan])?;
        let Some(report) = report.as_deref().and_then(report_from) else {
            continue;
        };
        let Some((current, campaign, parts)) = state_of
            .query_row([message], |r| {
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
                message,
                next.as_str(),
                (!matches!(report, Report::Delivered | Report::Progress))
                    .then(|| format!("delivery report {code}")),
                now_s
            ])?;
            tally.moved(campaign, parts, current, next);
        }
    }
    Ok(())
}

impl Store {
    /// An operator requeues the `unknown` messages of a campaign (accepting possible
    /// duplicates). Returns how many.
    pub fn requeue_unknown(&self, campaign: i64, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut conn = self.sms_conn();
        let tx = conn.transaction()?;
        let to = delivery::requeue(State::Unknown);
        let n = move_all(
            &tx,
            &format!(
                "UPDATE messages SET state = ?2, reason = '{REQUEUED}', not_before = NULL, updated_at = ?3
                 WHERE campaign = ?1 AND state = 'unknown' RETURNING campaign, parts"
            ),
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
            "SELECT (SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM message_counts
                     WHERE campaign = ?1 AND state = 'queued'),
                    (SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM message_counts
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
             WHERE campaign = ?1 AND (state = ?2 OR ?2 IS NULL) AND id > ?3
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

    /// A campaign's progress per minute (UTC): messages handed to a gateway (by when they were
    /// submitted) and final reports (by when they arrived), oldest first.
    pub fn progress(&self, campaign: i64) -> Result<Vec<Minute>, StoreError> {
        let conn = self.read_conn();
        let mut stmt = conn.prepare(
            "SELECT m, CAST(SUM(s) AS BIGINT), CAST(SUM(d) AS BIGINT), CAST(SUM(f) AS BIGINT)
             FROM (
                 SELECT substr(submitted_at, 1, 16) AS m, 1 AS s, 0 AS d, 0 AS f
                   FROM messages WHERE campaign = ?1 AND submitted_at IS NOT NULL
                 UNION ALL
                 SELECT substr(updated_at, 1, 16), 0,
                        CASE WHEN state = 'delivered' THEN 1 ELSE 0 END,
                        CASE WHEN state IN ('failed', 'rejected', 'expired') THEN 1 ELSE 0 END
                   FROM messages
                  WHERE campaign = ?1 AND state IN ('delivered', 'failed', 'rejected', 'expired')
             ) AS minutes GROUP BY m ORDER BY m",
        )?;
        let rows = stmt.query_map([campaign], |r| {
            Ok(Minute {
                minute: format!("{}:00Z", r.get::<_, String>(0)?),
                sent: r.get(1)?,
                delivered: r.get(2)?,
                failed: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// One minute of a campaign's progress.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Minute {
    /// Its start (RFC 3339, UTC).
    pub minute: String,
    /// Messages submitted to a gateway in it.
    pub sent: i64,
    /// Delivery reports `delivered` received in it.
    pub delivered: i64,
    /// Final failures in it (`failed`, `rejected`, `expired`).
    pub failed: i64,
}
