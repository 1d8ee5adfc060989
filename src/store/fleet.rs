//! The fleet in the daemon's database: each display's last status, its events (stored once per
//! event id, however often an agent redelivers them) and proof of play.

use crate::store::db::{OptionalExtension, Row, params};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::{Store, StoreError, ts};
use crate::wire::agent::{Event, EventKind, Status};

/// A display as the daemon knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DisplayRow {
    /// Display id.
    pub id: String,
    /// Connected now.
    pub online: bool,
    /// Since when online/offline.
    pub since: String,
    /// Its channel.
    pub channel: String,
    /// Applied timeline topic.
    pub timeline_topic: Option<String>,
    /// Applied timeline version.
    pub timeline_version: Option<u64>,
    /// Alert on screen.
    pub alert: Option<String>,
    /// Agent version.
    pub agent_version: String,
    /// Agent start.
    pub started_at: String,
    /// Last status or event.
    pub last_seen: String,
    /// Last alert acknowledged as displayed.
    pub last_alert_ack: Option<String>,
    /// When.
    pub last_alert_ack_at: Option<String>,
    /// Its latency.
    pub last_alert_latency_ms: Option<i64>,
    /// Whether it reported since the daemon started (with the embedded broker, a restart
    /// forgets who is there).
    pub known: bool,
    /// Its clock minus ours on its last live status, in ms.
    pub clock_skew_ms: Option<i64>,
    /// The agent process that last reported (`host/boot/pid`).
    pub instance: Option<String>,
    /// The broker it is on.
    pub broker: Option<String>,
    /// When two agent processes were last seen taking turns reporting for it.
    pub conflict_at: Option<String>,
}

/// The last status accepted from a display, as the intake orders statuses (see
/// `fleet::order`): when it was signed, the agent run and connection it came from, and whether
/// that connection's will was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMark {
    /// When the status was signed.
    pub issued_at: DateTime<Utc>,
    /// When its agent run started.
    pub started_at: DateTime<Utc>,
    /// Its MQTT connection number in that run.
    pub connection: u64,
    /// Whether the will of that connection was taken.
    pub will_taken: bool,
}

/// One proof-of-play record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PlayRow {
    /// Event id.
    pub event_id: String,
    /// Display.
    pub display: String,
    /// Item id.
    pub item: String,
    /// Playlist id.
    pub playlist: String,
    /// Language.
    pub lang: String,
    /// Start (UTC).
    pub start: String,
    /// End (UTC).
    pub end: String,
}

fn display_row(r: &Row<'_>) -> crate::store::db::Result<DisplayRow> {
    Ok(DisplayRow {
        id: r.get(0)?,
        online: r.get(1)?,
        since: r.get(2)?,
        channel: r.get(3)?,
        timeline_topic: r.get(4)?,
        timeline_version: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        alert: r.get(6)?,
        agent_version: r.get(7)?,
        started_at: r.get(8)?,
        last_seen: r.get(9)?,
        last_alert_ack: r.get(10)?,
        last_alert_ack_at: r.get(11)?,
        last_alert_latency_ms: r.get(12)?,
        known: r.get(13)?,
        clock_skew_ms: r.get(14)?,
        instance: r.get(15)?,
        broker: r.get(16)?,
        conflict_at: r.get(17)?,
    })
}

const DISPLAY_COLUMNS: &str = "id, online, since, channel, timeline_topic, timeline_version, alert, agent_version, \
     started_at, last_seen, last_alert_ack, last_alert_ack_at, last_alert_latency_ms, known, clock_skew_ms, \
     instance, broker, conflict_at";

impl Store {
    /// Marks every display's state unknown until it reports again.
    pub fn displays_unknown(&self) -> Result<(), StoreError> {
        self.conn().execute("UPDATE displays SET known = 0", [])?;
        Ok(())
    }

    /// Records a status report received at `now`, with the clock skew measured on it.
    pub fn record_status(
        &self,
        s: &Status,
        now: DateTime<Utc>,
        skew_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        self.bulk_ok()?;
        let conn = self.conn();
        let was: Option<bool> = conn
            .query_row(
                "SELECT online FROM displays WHERE id = ?1",
                [&s.display],
                |r| r.get(0),
            )
            .optional()?;
        let since_changes = was != Some(s.online);
        conn.execute(
            "INSERT INTO displays (id, online, channel, timeline_topic, timeline_version, alert, agent_version,
                                   started_at, since, last_seen, clock_skew_ms, instance, broker)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?11, ?12, ?13)
             ON CONFLICT(id) DO UPDATE SET online = excluded.online, channel = excluded.channel,
                 timeline_topic = COALESCE(excluded.timeline_topic, displays.timeline_topic),
                 timeline_version = COALESCE(excluded.timeline_version, displays.timeline_version),
                 alert = excluded.alert, agent_version = excluded.agent_version,
                 started_at = excluded.started_at,
                 since = CASE WHEN ?10 THEN excluded.since ELSE displays.since END,
                 last_seen = excluded.last_seen, known = 1,
                 clock_skew_ms = COALESCE(?11, displays.clock_skew_ms),
                 instance = excluded.instance,
                 broker = COALESCE(NULLIF(excluded.broker, ''), displays.broker)",
            params![
                s.display,
                s.online,
                s.channel,
                s.timeline.as_ref().map(|t| &t.topic),
                s.timeline.as_ref().map(|t| t.version as i64),
                s.alert,
                s.agent_version,
                ts(s.started_at),
                ts(now),
                since_changes,
                skew_ms,
                s.instance,
                s.broker,
            ],
        )?;
        Ok(())
    }

    /// Stores a batch of events from `display`; returns how many were new.
    pub fn record_events(
        &self,
        display: &str,
        events: &[Event],
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        self.bulk_ok()?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut new = 0;
        for e in events {
            let kind = match &e.kind {
                EventKind::TimelineApplied { .. } => "timeline_applied",
                EventKind::AlertDisplayed { .. } => "alert_displayed",
                EventKind::Play { .. } => "play",
                EventKind::Refused { .. } => "refused",
            };
            let body = serde_json::to_string(e).unwrap_or_default();
            let inserted = tx.execute(
                "INSERT INTO events (id, display, kind, at, body, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                params![e.id, display, kind, ts(e.at), body, ts(now)],
            )?;
            if inserted == 0 {
                continue;
            }
            new += 1;
            match &e.kind {
                EventKind::Play {
                    item,
                    playlist,
                    lang,
                    start,
                    end,
                } => {
                    tx.execute(
                        "INSERT INTO plays (event_id, display, item, playlist, lang, start, \"end\")
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                        params![e.id, display, item, playlist, lang, ts(*start), ts(*end)],
                    )?;
                }
                EventKind::AlertDisplayed { alert, latency_ms } => {
                    tx.execute(
                        "UPDATE displays SET last_alert_ack = ?2, last_alert_ack_at = ?3, last_alert_latency_ms = ?4
                         WHERE id = ?1",
                        params![display, alert, ts(e.at), latency_ms],
                    )?;
                }
                _ => {}
            }
        }
        tx.execute(
            "UPDATE displays SET last_seen = ?2, known = 1 WHERE id = ?1",
            params![display, ts(now)],
        )?;
        tx.commit()?;
        Ok(new)
    }

    /// Deletes agent reports beyond `r` (older than its ages, or beyond its counts, oldest first)
    /// in batches of 10,000 rows, each its own transaction, so the emergency path never waits
    /// long for the write lock. Returns (plays, events) deleted.
    pub fn sweep_reports(
        &self,
        now: DateTime<Utc>,
        r: &crate::config::Retention,
    ) -> Result<(usize, usize), StoreError> {
        const BATCH: i64 = 10_000;
        let batches = |sql: &str, arg: &dyn crate::store::db::ToSql| -> Result<usize, StoreError> {
            let mut total = 0;
            loop {
                let n = self.conn().execute(sql, params![arg, BATCH])?;
                total += n;
                if (n as i64) < BATCH {
                    return Ok(total);
                }
            }
        };
        let count = |table: &str| -> Result<i64, StoreError> {
            Ok(self
                .conn()
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                    row.get(0)
                })?)
        };
        // Each engine's own row address: SQLite's rowid, PostgreSQL's ctid.
        let rowid = if self.conn().is_pg() { "ctid" } else { "rowid" };
        // By start (indexed), not end: an age sweep must not scan the whole table.
        let mut plays = batches(
            &format!(
                "DELETE FROM plays WHERE {rowid} IN (SELECT {rowid} FROM plays WHERE start < ?1 LIMIT ?2)"
            ),
            &ts(now - r.keep_plays),
        )?;
        let mut events = batches(
            &format!(
                "DELETE FROM events WHERE {rowid} IN (SELECT {rowid} FROM events WHERE received_at < ?1 LIMIT ?2)"
            ),
            &ts(now - r.keep_events),
        )?;
        // Beyond the counts: the oldest, also in batches.
        let trim = |table: &str, order: &str, max: u64| -> Result<usize, StoreError> {
            let mut over = count(table)? - max as i64;
            let mut total = 0;
            while over > 0 {
                let n = self.conn().execute(
                    &format!(
                        "DELETE FROM {table} WHERE {rowid} IN (SELECT {rowid} FROM {table} ORDER BY {order} LIMIT ?1)"
                    ),
                    [over.min(BATCH)],
                )?;
                if n == 0 {
                    break;
                }
                total += n;
                over -= n as i64;
            }
            Ok(total)
        };
        plays += trim("plays", "start", r.max_plays)?;
        events += trim("events", "received_at", r.max_events)?;
        Ok((plays, events))
    }

    /// Records that two agent processes were seen taking turns reporting for `id` at `now`.
    pub fn flag_conflict(&self, id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.bulk_ok()?;
        self.conn().execute(
            "UPDATE displays SET conflict_at = ?2 WHERE id = ?1",
            params![id, ts(now)],
        )?;
        Ok(())
    }

    /// Every display's last accepted status mark.
    pub fn status_marks(
        &self,
    ) -> Result<std::collections::HashMap<String, StatusMark>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, status_issued_at, status_started_at, status_connection, will_taken FROM displays
             WHERE status_issued_at IS NOT NULL AND status_started_at IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| {
            let time = |i: usize| -> crate::store::db::Result<DateTime<Utc>> {
                let s: String = r.get(i)?;
                DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| crate::store::db::Error::Conversion(i, e.to_string()))
            };
            Ok((
                r.get::<_, String>(0)?,
                StatusMark {
                    issued_at: time(1)?,
                    started_at: time(2)?,
                    connection: r.get::<_, i64>(3)? as u64,
                    will_taken: r.get(4)?,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Keeps `mark` as display `id`'s last accepted status (after [`Store::record_status`]).
    pub fn set_status_mark(&self, id: &str, mark: &StatusMark) -> Result<(), StoreError> {
        self.bulk_ok()?;
        self.conn().execute(
            "UPDATE displays SET status_issued_at = ?2, status_started_at = ?3, status_connection = ?4,
                 will_taken = ?5 WHERE id = ?1",
            // Full precision: the marks are compared for equality.
            params![
                id,
                mark.issued_at.to_rfc3339_opts(SecondsFormat::Nanos, true),
                mark.started_at.to_rfc3339_opts(SecondsFormat::Nanos, true),
                mark.connection as i64,
                mark.will_taken
            ],
        )?;
        Ok(())
    }

    /// Every known display, by id.
    pub fn displays(&self) -> Result<Vec<DisplayRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {DISPLAY_COLUMNS} FROM displays ORDER BY id"
        ))?;
        let rows = stmt.query_map([], display_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One display.
    pub fn display(&self, id: &str) -> Result<Option<DisplayRow>, StoreError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                &format!("SELECT {DISPLAY_COLUMNS} FROM displays WHERE id = ?1"),
                [id],
                display_row,
            )
            .optional()?)
    }

    /// Plays that overlap `[from, until)`, optionally of one display, oldest first (at most `limit`).
    pub fn plays(
        &self,
        display: Option<&str>,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<PlayRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT event_id, display, item, playlist, lang, start, \"end\" FROM plays
             WHERE (display = ?1 OR ?1 IS NULL) AND start < ?3 AND \"end\" > ?2
             ORDER BY start, display LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![display, ts(from), ts(until), limit as i64], |r| {
            Ok(PlayRow {
                event_id: r.get(0)?,
                display: r.get(1)?,
                item: r.get(2)?,
                playlist: r.get(3)?,
                lang: r.get(4)?,
                start: r.get(5)?,
                end: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::agent::Applied;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn status(online: bool) -> Status {
        Status {
            display: "d1".into(),
            online,
            channel: "lobby".into(),
            timeline: Some(Applied {
                topic: "x".into(),
                version: 3,
            }),
            alert: None,
            agent_version: "0.1.0".into(),
            started_at: t("2021-05-15T00:00:00Z"),
            at: t("2021-05-15T00:00:00Z"),
            connection: 1,
            instance: "h/b/1".into(),
            broker: "127.0.0.1:1883".into(),
            held_max: 3,
        }
    }

    fn play(id: &str, start: &str, end: &str) -> Event {
        Event {
            id: id.into(),
            at: t(end),
            kind: EventKind::Play {
                item: "a".into(),
                playlist: "p".into(),
                lang: "zh".into(),
                start: t(start),
                end: t(end),
            },
        }
    }

    #[test]
    fn events_are_stored_once_and_plays_are_queryable() {
        let s = Store::memory().unwrap();
        s.record_status(&status(true), t("2021-05-15T01:00:00Z"), None)
            .unwrap();
        let batch = vec![
            play("d1:1", "2021-05-15T01:00:00Z", "2021-05-15T01:00:10Z"),
            play("d1:2", "2021-05-15T01:00:10Z", "2021-05-15T01:00:20Z"),
        ];
        assert_eq!(
            s.record_events("d1", &batch, t("2021-05-15T01:01:00Z"))
                .unwrap(),
            2
        );
        assert_eq!(
            s.record_events("d1", &batch, t("2021-05-15T01:02:00Z"))
                .unwrap(),
            0
        );
        let plays = s
            .plays(
                Some("d1"),
                t("2021-05-15T01:00:15Z"),
                t("2021-05-15T02:00:00Z"),
                100,
            )
            .unwrap();
        assert_eq!(plays.len(), 1);
        assert_eq!(plays[0].event_id, "d1:2");
    }

    #[test]
    fn an_id_is_one_displays_own() {
        let s = Store::memory().unwrap();
        let p = play("d1:o:1", "2021-05-15T01:00:00Z", "2021-05-15T01:00:10Z");
        // Another display storing the same id first takes nothing from d1.
        assert_eq!(
            s.record_events("d2", std::slice::from_ref(&p), t("2021-05-15T01:01:00Z"))
                .unwrap(),
            1
        );
        assert_eq!(
            s.record_events("d1", &[p], t("2021-05-15T01:01:00Z"))
                .unwrap(),
            1
        );
        let from = t("2021-05-15T00:00:00Z");
        let until = t("2021-05-16T00:00:00Z");
        assert_eq!(s.plays(Some("d1"), from, until, 10).unwrap().len(), 1);
    }

    #[test]
    fn reports_are_kept_as_long_and_as_many_as_configured() {
        let s = Store::memory().unwrap();
        s.record_status(&status(true), t("2021-05-15T00:00:00Z"), None)
            .unwrap();
        let batch: Vec<Event> = (0..5)
            .map(|d| {
                let start = format!("2021-05-{:02}T00:00:00Z", 10 + d);
                let end = format!("2021-05-{:02}T00:00:10Z", 10 + d);
                play(&format!("d1:o:{d}"), &start, &end)
            })
            .collect();
        for (i, e) in batch.iter().enumerate() {
            let at = t(&format!("2021-05-{:02}T00:01:00Z", 10 + i));
            s.record_events("d1", std::slice::from_ref(e), at).unwrap();
        }
        let r = crate::config::Retention {
            keep_plays: chrono::Duration::days(3),
            keep_events: chrono::Duration::days(2),
            max_plays: 2,
            max_events: 100,
        };
        // On the 15th: plays started before the 12th go (2), then the oldest beyond 2 (1);
        // events received before the 13th go (3).
        assert_eq!(
            s.sweep_reports(t("2021-05-15T00:00:00Z"), &r).unwrap(),
            (3, 3)
        );
        let all = s
            .plays(
                None,
                t("2021-01-01T00:00:00Z"),
                t("2022-01-01T00:00:00Z"),
                10,
            )
            .unwrap();
        assert_eq!(
            all.iter().map(|p| p.event_id.as_str()).collect::<Vec<_>>(),
            ["d1:o:3", "d1:o:4"]
        );
    }

    #[test]
    fn status_marks_survive_in_the_store() {
        let s = Store::memory().unwrap();
        s.record_status(&status(true), t("2021-05-15T01:00:00Z"), None)
            .unwrap();
        let mark = StatusMark {
            issued_at: t("2021-05-15T01:00:00.123456789Z"),
            started_at: t("2021-05-15T00:00:00.987654321Z"),
            connection: 3,
            will_taken: true,
        };
        s.set_status_mark("d1", &mark).unwrap();
        assert_eq!(s.status_marks().unwrap()["d1"], mark);
    }

    #[test]
    fn since_moves_only_when_online_changes() {
        let s = Store::memory().unwrap();
        s.record_status(&status(true), t("2021-05-15T01:00:00Z"), None)
            .unwrap();
        s.record_status(&status(true), t("2021-05-15T02:00:00Z"), None)
            .unwrap();
        let d = s.display("d1").unwrap().unwrap();
        assert_eq!(
            (d.online, d.since.as_str()),
            (true, "2021-05-15T01:00:00.000Z")
        );
        assert_eq!(d.timeline_version, Some(3));
        s.record_status(&status(false), t("2021-05-15T03:00:00Z"), None)
            .unwrap();
        let d = s.display("d1").unwrap().unwrap();
        assert_eq!(
            (d.online, d.since.as_str()),
            (false, "2021-05-15T03:00:00.000Z")
        );
    }
}
