//! The store: the only place that writes SQL. SQLite in WAL mode under the data directory (the
//! default), or PostgreSQL (`[store] url`), through one interface ([`db`]). Schema changes are
//! numbered migrations applied in order (tracked in SQLite's `PRAGMA user_version`, in
//! PostgreSQL's `marquee_schema` table).
//!
//! Calls are synchronous; async callers run them on the blocking pool (`spawn_blocking`).

pub mod agent;
pub mod alerts;
pub mod anchor;
pub mod audit;
pub mod db;
pub mod fleet;
pub mod handoff;
pub mod leader;
pub mod proposals;
pub mod registry;
pub mod sms;
pub mod walsync;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use db::{Connection, OptionalExtension, params};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no (the agent's own store).
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The daemon's database (SQLite or PostgreSQL) said no.
    #[error("database: {0}")]
    Db(#[from] db::Error),
    /// The PostgreSQL settings cannot be used.
    #[error("[store]: {0}")]
    Config(String),
    /// The database is newer than this binary.
    #[error(
        "database schema version {0} is newer than this marquee understands ({1}); upgrade marquee"
    )]
    TooNew(i64, i64),
    /// The data disk is (nearly) full: what is left is kept for alerts and the audit.
    #[error(
        "the data disk of {0} is full: what is left is kept for alerts and the audit ([server] disk_reserve_kib), so this write was refused; free space there (bulk writes resume by themselves)"
    )]
    DiskFull(String),
    /// The store work's task ended without an answer (it panicked; the panic is logged).
    #[error("store task failed: {0}")]
    Task(String),
    /// A file of the store could not be opened or synced (the write-ahead log behind the SMS
    /// claims: [`walsync`]).
    #[error("database file: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// Whether this failed for want of disk space (ours, or SQLite's `SQLITE_FULL`).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::DiskFull(_) => true,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            StoreError::Db(e) => e.is_disk_full(),
            _ => false,
        }
    }
}

/// Fixed-width UTC times (RFC 3339, milliseconds, `Z`), so that text order is time order: the
/// one way every store module writes a time.
pub fn ts(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

const MIGRATIONS: &[&str] = &[
    // 1: what was last published on each retained topic. Versions only grow, across restarts.
    "CREATE TABLE published (
        topic      TEXT PRIMARY KEY,
        version    INTEGER NOT NULL,
        payload    BLOB NOT NULL,
        body       TEXT,
        issued_at  TEXT NOT NULL
    );",
    // 2: the last good source of every playlist file, so a file that is broken when the daemon
    // starts keeps its last good version live across restarts.
    "CREATE TABLE good_playlists (
        path    TEXT PRIMARY KEY,
        source  TEXT NOT NULL
    );",
    // 3: the fleet: each display's last status, every event once (by id), proof of play.
    "CREATE TABLE displays (
        id                TEXT PRIMARY KEY,
        online            INTEGER NOT NULL,
        channel           TEXT NOT NULL,
        timeline_topic    TEXT,
        timeline_version  INTEGER,
        alert             TEXT,
        agent_version     TEXT NOT NULL,
        started_at        TEXT NOT NULL,
        since             TEXT NOT NULL,
        last_seen         TEXT NOT NULL,
        last_alert_ack    TEXT,
        last_alert_ack_at TEXT,
        last_alert_latency_ms INTEGER
    );
    CREATE TABLE events (
        id           TEXT PRIMARY KEY,
        display      TEXT NOT NULL,
        kind         TEXT NOT NULL,
        at           TEXT NOT NULL,
        body         TEXT NOT NULL,
        received_at  TEXT NOT NULL
    );
    CREATE TABLE plays (
        event_id  TEXT PRIMARY KEY,
        display   TEXT NOT NULL,
        item      TEXT NOT NULL,
        playlist  TEXT NOT NULL,
        lang      TEXT NOT NULL,
        start     TEXT NOT NULL,
        end       TEXT NOT NULL
    );
    CREATE INDEX plays_by_display_start ON plays (display, start);
    CREATE INDEX plays_by_start ON plays (start);",
    // 4: emergency alerts as raised through the API.
    "CREATE TABLE alerts (
        id          TEXT PRIMARY KEY,
        scope       TEXT NOT NULL,
        severity    TEXT NOT NULL,
        text        TEXT NOT NULL,
        issued_at   TEXT NOT NULL,
        expires_at  TEXT NOT NULL,
        raised_by   TEXT NOT NULL,
        cleared_at  TEXT,
        cleared_by  TEXT
    );
    CREATE INDEX events_alert_acks ON events (kind, display);",
    // 5: the audit log: append-only (enforced here) and hash-chained (so editing the file
    // behind SQLite's back is detected by `marquee audit verify`).
    "CREATE TABLE audit (
        seq        INTEGER PRIMARY KEY,
        at         TEXT NOT NULL,
        actor      TEXT NOT NULL,
        action     TEXT NOT NULL,
        target     TEXT NOT NULL,
        detail     TEXT NOT NULL,
        prev_hash  TEXT NOT NULL,
        hash       TEXT NOT NULL
    );
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;",
    // 6: the two-person rule: alerts can wait for approval.
    "ALTER TABLE alerts ADD COLUMN status TEXT NOT NULL DEFAULT 'live';
    ALTER TABLE alerts ADD COLUMN approved_by TEXT;
    ALTER TABLE alerts ADD COLUMN approved_at TEXT;",
    // 7: SMS campaigns: one message row per recipient (written before the first send),
    // delivery reports as received, and the opt-out list.
    "CREATE TABLE campaigns (
        id           INTEGER PRIMARY KEY,
        name         TEXT NOT NULL,
        status       TEXT NOT NULL,
        spec         TEXT NOT NULL,
        start_at     TEXT,
        created_by   TEXT NOT NULL,
        created_at   TEXT NOT NULL,
        started_at   TEXT,
        finished_at  TEXT
    );
    CREATE TABLE messages (
        id            INTEGER PRIMARY KEY,
        campaign      INTEGER NOT NULL REFERENCES campaigns (id),
        row           INTEGER NOT NULL,
        recipient     TEXT NOT NULL,
        text          TEXT NOT NULL,
        parts         INTEGER NOT NULL,
        state         TEXT NOT NULL,
        gateway       TEXT,
        attempts      INTEGER NOT NULL DEFAULT 0,
        not_before    TEXT,
        carrier_id    TEXT,
        reason        TEXT,
        submitted_at  TEXT,
        updated_at    TEXT NOT NULL,
        UNIQUE (campaign, recipient)
    );
    CREATE INDEX messages_queue ON messages (campaign, state, id);
    CREATE INDEX messages_by_recipient ON messages (recipient, submitted_at);
    CREATE TABLE dlrs (
        id           INTEGER PRIMARY KEY,
        message      INTEGER NOT NULL,
        gateway      TEXT NOT NULL,
        code         TEXT NOT NULL,
        raw          TEXT NOT NULL,
        received_at  TEXT NOT NULL
    );
    CREATE INDEX dlrs_by_message ON dlrs (message);
    CREATE TABLE optouts (
        number    TEXT PRIMARY KEY,
        reason    TEXT NOT NULL,
        added_by  TEXT NOT NULL,
        added_at  TEXT NOT NULL
    );",
    // 8: campaigns started by an alert, and the two-person rule for campaigns.
    "ALTER TABLE campaigns ADD COLUMN alert TEXT;
    ALTER TABLE campaigns ADD COLUMN approved_by TEXT;
    ALTER TABLE campaigns ADD COLUMN approved_at TEXT;
    CREATE INDEX campaigns_by_alert ON campaigns (alert);",
    // 9: the daily-cap lookup by recipient, without the send time in the index (every claim
    // changed it, an index delete and insert per message sent).
    "DROP INDEX messages_by_recipient;
    CREATE INDEX messages_by_recipient ON messages (recipient);",
    // 10: each campaign's messages counted by state, kept as they change, so that showing a
    // campaign's progress reads a few rows instead of counting every message (186 ms for a
    // million, on every look of an operator watching it). Every statement that inserts messages
    // or changes their state adds its changes in the same transaction (`sms::Tally`): a trigger
    // doing the same doubled the dispatcher's store work per message.
    // With the counts kept here, no index needs the state of every message: a message's
    // campaign index never changes, and only the queued (what the claim reads) and the
    // submitting (what recovery after a crash reads) are indexed by state. Sending a message
    // touched the old (campaign, state, id) index four times (two moves); now it touches the
    // small partial ones three times, and a finished campaign's rows never again.
    "CREATE TABLE message_counts (
        campaign  INTEGER NOT NULL,
        state     TEXT NOT NULL,
        n         INTEGER NOT NULL,
        parts     INTEGER NOT NULL,
        PRIMARY KEY (campaign, state)
    ) WITHOUT ROWID;
    INSERT INTO message_counts (campaign, state, n, parts)
        SELECT campaign, state, COUNT(*), SUM(parts) FROM messages GROUP BY campaign, state;
    DROP INDEX messages_queue;
    CREATE INDEX messages_by_campaign ON messages (campaign);
    CREATE INDEX messages_queued ON messages (campaign, id) WHERE state = 'queued';
    CREATE INDEX messages_submitting ON messages (id) WHERE state = 'submitting';",
    // 11: the rows a campaign's import rejected, with the row as read, so the office can
    // download them, fix them and upload them again.
    "CREATE TABLE campaign_rejects (
        campaign  INTEGER NOT NULL,
        row       INTEGER NOT NULL,
        value     TEXT NOT NULL,
        reason    TEXT NOT NULL,
        cells     TEXT NOT NULL,
        PRIMARY KEY (campaign, row)
    ) WITHOUT ROWID;",
    // 12: alerts held until their start (CAP <effective> or <onset> in the future): status
    // 'scheduled' until starts_at, then 'live'.
    "ALTER TABLE alerts ADD COLUMN starts_at TEXT;",
    // 13: one row the readiness check writes, so that /readyz knows the store takes writes
    // (a full disk or a read-only file system fail it).
    "CREATE TABLE readiness (id INTEGER PRIMARY KEY, at TEXT NOT NULL);",
    // 14: a truthful fleet view: whether a display's state is known since the daemon started
    // (an embedded broker dies with the daemon, and no last will reaches us), and the agent's
    // clock skew measured on its last live status.
    "ALTER TABLE displays ADD COLUMN known INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE displays ADD COLUMN clock_skew_ms INTEGER;",
    // 15: events and plays keyed by (display, id): one display can no longer pre-empt another's
    // ids. Rows whose id is not their display's own (only forged ones can be) are dropped.
    "CREATE TABLE events_by_display (
        id           TEXT NOT NULL,
        display      TEXT NOT NULL,
        kind         TEXT NOT NULL,
        at           TEXT NOT NULL,
        body         TEXT NOT NULL,
        received_at  TEXT NOT NULL,
        PRIMARY KEY (display, id)
    );
    INSERT INTO events_by_display SELECT id, display, kind, at, body, received_at FROM events
        WHERE substr(id, 1, length(display) + 1) = display || ':' ORDER BY rowid;
    DROP TABLE events;
    ALTER TABLE events_by_display RENAME TO events;
    CREATE INDEX events_by_received ON events (received_at);
    CREATE INDEX events_alert_acks ON events (kind, display);
    CREATE TABLE plays_by_display (
        event_id  TEXT NOT NULL,
        display   TEXT NOT NULL,
        item      TEXT NOT NULL,
        playlist  TEXT NOT NULL,
        lang      TEXT NOT NULL,
        start     TEXT NOT NULL,
        end       TEXT NOT NULL,
        PRIMARY KEY (display, event_id)
    );
    INSERT INTO plays_by_display SELECT event_id, display, item, playlist, lang, start, end FROM plays
        WHERE substr(event_id, 1, length(display) + 1) = display || ':';
    DROP TABLE plays;
    ALTER TABLE plays_by_display RENAME TO plays;
    CREATE INDEX plays_by_display_start ON plays (display, start);
    CREATE INDEX plays_by_start ON plays (start);",
    // 16: the display registry: who may report (and with which key) and who has a broker
    // account (the password only as a Mosquitto-format hash).
    "CREATE TABLE registry (
        id             TEXT PRIMARY KEY,
        channel        TEXT NOT NULL,
        report_key     TEXT NOT NULL,
        password_hash  TEXT NOT NULL,
        added_at       TEXT NOT NULL,
        added_by       TEXT NOT NULL
    );",
    // 17: the last status accepted from each display (when signed, which connection, whether
    // its will was taken), so a replayed old status is refused after a restart too.
    "ALTER TABLE displays ADD COLUMN status_issued_at TEXT;
    ALTER TABLE displays ADD COLUMN status_started_at TEXT;
    ALTER TABLE displays ADD COLUMN status_connection INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE displays ADD COLUMN will_taken INTEGER NOT NULL DEFAULT 0;",
    // 18: which agent process reports for a display and on which broker, and when two were last
    // seen taking turns (a config copied to two screens).
    "ALTER TABLE displays ADD COLUMN instance TEXT;
    ALTER TABLE displays ADD COLUMN broker TEXT;
    ALTER TABLE displays ADD COLUMN conflict_at TEXT;",
    // 19: approved templates and carriers that report by their own ids: a message's template
    // parameters (a JSON array, NULL for free text); reports found by the carrier's id; why a
    // campaign was paused by a gateway; reports nobody matched; replies (MO).
    "ALTER TABLE messages ADD COLUMN params TEXT;
    CREATE INDEX messages_by_carrier_id ON messages (carrier_id) WHERE carrier_id IS NOT NULL;
    ALTER TABLE campaigns ADD COLUMN paused_reason TEXT;
    CREATE TABLE orphan_reports (
        id           INTEGER PRIMARY KEY,
        gateway      TEXT NOT NULL,
        carrier_id   TEXT,
        code         TEXT NOT NULL,
        raw          TEXT NOT NULL,
        received_at  TEXT NOT NULL
    );
    CREATE TABLE replies (
        id           INTEGER PRIMARY KEY,
        gateway      TEXT NOT NULL,
        number       TEXT NOT NULL,
        text         TEXT NOT NULL,
        optout       INTEGER NOT NULL,
        raw          TEXT NOT NULL,
        received_at  TEXT NOT NULL
    );",
    // 20: early reports applied when their carrier id arrives (what they meant, found by that
    // id), reconciliation paged by its last lookup, replies found again by number.
    "ALTER TABLE orphan_reports ADD COLUMN report TEXT;
    CREATE INDEX IF NOT EXISTS messages_unknown ON messages (id) WHERE state = 'unknown';
    CREATE INDEX orphan_reports_by_carrier_id ON orphan_reports (carrier_id);
    ALTER TABLE messages ADD COLUMN checked_at TEXT;
    CREATE INDEX replies_by_number ON replies (number, gateway);",
    // 21: review before publishing: a playlist saved or deleted through the API is proposed
    // (its body, NULL for a delete; the file as it was; the change impact) and published or
    // rejected by another person.
    "CREATE TABLE proposals (
        id          INTEGER PRIMARY KEY,
        playlist    TEXT NOT NULL,
        body        TEXT,
        before      TEXT,
        impact      TEXT NOT NULL,
        author      TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        status      TEXT NOT NULL,
        decided_by  TEXT,
        decided_at  TEXT,
        reason      TEXT
    );
    CREATE INDEX proposals_pending ON proposals (playlist) WHERE status = 'pending';",
    // 22: the leader lease (`store::leader`): who leads at which epoch, and apart from it
    // (renewals must not wait for the leader's writers, which hold the first row) when the
    // lease ends. Used on PostgreSQL only, where several daemons can share one database; here
    // so that both engines keep one numbering.
    "CREATE TABLE leader (
        id     INTEGER PRIMARY KEY,
        node   TEXT NOT NULL,
        epoch  INTEGER NOT NULL
    );
    CREATE TABLE leader_expiry (
        id          INTEGER PRIMARY KEY,
        expires_at  TEXT NOT NULL
    );",
    // 23: what a standby hands to the leader (`store::handoff`): payloads to publish, in
    // order, and a generation per table other nodes keep a copy of in memory (the registry);
    // the node whose list import a campaign is (each node removes only its own cut-off
    // imports). Used on PostgreSQL only; here so that both engines keep one numbering.
    "CREATE TABLE handoff (
        id                INTEGER PRIMARY KEY AUTOINCREMENT,
        topic             TEXT NOT NULL,
        payload           TEXT NOT NULL,
        expires_at        TEXT NOT NULL,
        if_current_alert  TEXT,
        node              TEXT NOT NULL,
        handed_at         TEXT NOT NULL
    );
    CREATE TABLE generations (
        name  TEXT PRIMARY KEY,
        n     INTEGER NOT NULL
    );
    INSERT INTO generations (name, n) VALUES ('registry', 0);
    ALTER TABLE campaigns ADD COLUMN node TEXT;",
    // 24: who claimed a message being submitted: the node and its lease's epoch
    // (`store::sms::queue`). Recovery after a restart or a failover moves to `unknown` only
    // what an owner whose lease has ended left in flight. Empty on SQLite's one node.
    "ALTER TABLE messages ADD COLUMN claimed_by TEXT;
    ALTER TABLE messages ADD COLUMN claim_epoch INTEGER;",
    // 25: the nodes on a shared store and each one's broker account (`[mqtt] username`), so
    // that the generated Mosquitto ACL gives every node's account the daemon's topics
    // (`store::registry`). Used on PostgreSQL only; here so that both engines keep one
    // numbering.
    "CREATE TABLE nodes (
        name       TEXT PRIMARY KEY,
        mqtt_user  TEXT,
        seen_at    TEXT NOT NULL
    );",
    // 26: gateways out of rotation for an account error, with the provider's words and until
    // when (`sms::dispatch::Health`): a restart or a new leader keeps them out, a standby
    // shows them.
    "CREATE TABLE gateway_outages (
        gateway  TEXT PRIMARY KEY,
        reason   TEXT NOT NULL,
        until    TEXT NOT NULL
    );",
    // 27: when a message last reached the network or may have (an accepted or `unknown`
    // outcome; never cleared): what a number's daily cap counts. `submitted_at` is only the
    // last claim, also of attempts that surely failed. Rows of the last day (all the cap looks
    // at) get it from their state; a queued one with a claim counted before, and still does
    // (it may be an `unknown` one requeued).
    "ALTER TABLE messages ADD COLUMN reached_at TEXT;
    UPDATE messages SET reached_at = submitted_at
     WHERE submitted_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 day')
       AND state IN ('sent', 'delivered', 'failed', 'expired', 'unknown', 'queued');",
];

/// The last payload published on a retained topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Full topic.
    pub topic: String,
    /// Version of the payload (kept when a topic is cleared, so it keeps growing).
    pub version: u64,
    /// The exact bytes published; empty when the retained topic was cleared.
    pub payload: Vec<u8>,
    /// The unsigned content as JSON (used to compare content), `None` when cleared.
    pub body: Option<String>,
    /// When it was signed.
    pub issued_at: DateTime<Utc>,
}

/// What every connection gets: a wait for the others' locks, and stable query plans. Without
/// the latter SQLite prepares a statement again whenever a new value is bound to a parameter
/// its plan looked at: the claim's `LIMIT ?` was prepared afresh on every claim (11 % of the
/// store's time).
fn settle(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Room for every statement of the dispatch loop and its neighbours (the default, 16, is
    // fewer than the SMS connection cycles through: each eviction is a prepare again).
    conn.set_prepared_statement_cache_capacity(64);
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// A connection that writes starts every transaction `IMMEDIATE`: it takes the write lock at
/// `BEGIN`, waiting for it under the busy timeout. A `DEFERRED` transaction that reads first
/// and then writes cannot wait: when the other writer (the SMS connection, or the main one)
/// committed after its read, SQLite refuses the upgrade at once with `SQLITE_BUSY` ("database
/// is locked"), whatever the busy timeout (sqlite.org/lang_transaction.html; isolation.html).
/// That failed an alert raised while a campaign was sending.
fn writer(conn: rusqlite::Connection) -> Connection {
    let mut conn = Connection::lite(conn);
    conn.set_writer();
    conn
}

/// Sets WAL mode and applies the migrations not yet applied (tracked in `user_version`).
fn migrate(
    mut conn: rusqlite::Connection,
    migrations: &[&str],
) -> Result<rusqlite::Connection, StoreError> {
    conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    settle(&conn)?;
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let latest = migrations.len() as i64;
    if current > latest {
        return Err(StoreError::TooNew(current, latest));
    }
    for (i, sql) in migrations.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(conn)
}

/// A connection of the store, connected again first if PostgreSQL closed it. A panic while
/// holding the lock cannot leave the database half-written (transactions roll back).
fn lock(c: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    let guard = c.lock().unwrap_or_else(|e| e.into_inner());
    guard.reconnect_if_closed();
    guard
}

/// The lock a PostgreSQL migration holds, so that daemons starting together migrate once:
/// "MARM" and the schema's hash (one per schema, as [`db::WRITE_LOCK`]; read once, so that
/// the unlock names the key the lock took).
const MIGRATE_LOCK: i32 = 0x4d41_524d;

/// The SQLite migration the PostgreSQL schema (`postgres.sql`) starts at.
const PG_BASE: usize = 21;

/// PostgreSQL's migrations after [`PG_BASE`]: entry `i` is SQLite's migration `PG_BASE + i + 1`
/// in PostgreSQL's dialect (a test holds the two lists to the same length).
const PG_MIGRATIONS: &[&str] = &[
    // 22: the leader lease, by the server's clock.
    "CREATE TABLE leader (
        id     BIGINT PRIMARY KEY CHECK (id = 1),
        node   TEXT COLLATE \"C\" NOT NULL,
        epoch  BIGINT NOT NULL
    );
    CREATE TABLE leader_expiry (
        id          BIGINT PRIMARY KEY CHECK (id = 1),
        expires_at  TIMESTAMPTZ NOT NULL
    )",
    // 23: what a standby hands to the leader.
    "CREATE TABLE handoff (
        id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        topic             TEXT COLLATE \"C\" NOT NULL,
        payload           TEXT COLLATE \"C\" NOT NULL,
        expires_at        TEXT COLLATE \"C\" NOT NULL,
        if_current_alert  TEXT COLLATE \"C\",
        node              TEXT COLLATE \"C\" NOT NULL,
        handed_at         TEXT COLLATE \"C\" NOT NULL
    );
    CREATE TABLE generations (
        name  TEXT COLLATE \"C\" PRIMARY KEY,
        n     BIGINT NOT NULL
    );
    INSERT INTO generations (name, n) VALUES ('registry', 0);
    ALTER TABLE campaigns ADD COLUMN node TEXT COLLATE \"C\"",
    // 24: who claimed a message being submitted (node, lease epoch).
    "ALTER TABLE messages ADD COLUMN claimed_by TEXT COLLATE \"C\";
    ALTER TABLE messages ADD COLUMN claim_epoch BIGINT",
    // 25: the nodes and their broker accounts.
    "CREATE TABLE nodes (
        name       TEXT COLLATE \"C\" PRIMARY KEY,
        mqtt_user  TEXT COLLATE \"C\",
        seen_at    TEXT COLLATE \"C\" NOT NULL
    )",
    // 26: gateways out of rotation.
    "CREATE TABLE gateway_outages (
        gateway  TEXT COLLATE \"C\" PRIMARY KEY,
        reason   TEXT COLLATE \"C\" NOT NULL,
        until    TEXT COLLATE \"C\" NOT NULL
    )",
    // 27: when a message last reached the network or may have (the daily cap).
    "ALTER TABLE messages ADD COLUMN reached_at TEXT COLLATE \"C\";
    UPDATE messages SET reached_at = submitted_at
     WHERE submitted_at > to_char(now() AT TIME ZONE 'UTC' - interval '1 day',
                                  'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')
       AND state IN ('sent', 'delivered', 'failed', 'expired', 'unknown', 'queued')",
];

/// Creates the schema on a new PostgreSQL database, or applies the migrations it lacks, under
/// a session advisory lock. The version is the one row of `marquee_schema`.
fn migrate_pg(conn: &Connection) -> Result<(), StoreError> {
    let schema: i32 =
        conn.query_row("SELECT hashtext(COALESCE(current_schema(), ''))", [], |r| {
            r.get(0)
        })?;
    conn.execute_batch(&format!(
        "SELECT pg_advisory_lock({MIGRATE_LOCK}, {schema})"
    ))?;
    let done = (|| {
        conn.execute_batch("CREATE TABLE IF NOT EXISTS marquee_schema (version BIGINT NOT NULL)")?;
        let current: Option<i64> =
            conn.query_row("SELECT MAX(version) FROM marquee_schema", [], |r| r.get(0))?;
        let current = current.unwrap_or(0) as usize;
        let latest = PG_BASE + PG_MIGRATIONS.len();
        if current > latest {
            return Err(StoreError::TooNew(current as i64, latest as i64));
        }
        if current == 0 {
            conn.execute_batch(&format!(
                "BEGIN; {} INSERT INTO marquee_schema (version) VALUES ({PG_BASE}); COMMIT;",
                include_str!("postgres.sql")
            ))?;
        }
        for (i, sql) in PG_MIGRATIONS.iter().enumerate() {
            let version = PG_BASE + i + 1;
            if version > current.max(PG_BASE) {
                conn.execute_batch(&format!(
                    "BEGIN; {sql}; UPDATE marquee_schema SET version = {version}; COMMIT;"
                ))?;
            }
        }
        Ok(())
    })();
    if done.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    conn.execute_batch(&format!(
        "SELECT pg_advisory_unlock({MIGRATE_LOCK}, {schema})"
    ))?;
    done
}

/// The driver's settings for `url` with `password`. A password in the URL is refused: it
/// belongs in `password_env` or `password_file`, out of the config file.
fn pg_target(url: &str, password: Option<&str>) -> Result<db::PgTarget, StoreError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Config(format!("url is not a PostgreSQL URL: {e}")))?;
    if config.get_password().is_some() {
        return Err(StoreError::Config(
            "the url holds a password: put it in password_env or password_file instead".into(),
        ));
    }
    if let Some(p) = password {
        config.password(p);
    }
    if config.get_application_name().is_none() {
        config.application_name("marquee");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    Ok(db::PgTarget {
        config,
        setup: String::new(),
        tls: None,
    })
}

/// The test cluster's CA (`MARQUEE_TEST_POSTGRES_CA`): its connections are TLS only.
#[cfg(test)]
fn test_ca() -> Option<Vec<u8>> {
    std::env::var("MARQUEE_TEST_POSTGRES_CA")
        .ok()
        .map(|p| std::fs::read(p).expect("the test cluster's CA"))
}

/// A fresh schema on the test server at `url` (unit tests on PostgreSQL): the URL to use it.
#[cfg(test)]
fn test_schema(url: &str, password: Option<&str>, ca: Option<&[u8]>) -> Result<String, StoreError> {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "unit_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    Store::schema_url(url, password, ca, &name)
}

/// A connection to `url` for creating or dropping `schema`, once its name is checked (it is
/// written into the SQL).
fn schema_admin(
    url: &str,
    password: Option<&str>,
    tls_ca: Option<&[u8]>,
    schema: &str,
) -> Result<Connection, StoreError> {
    if schema.is_empty()
        || !schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(StoreError::Config(format!(
            "{schema:?} is not a schema name"
        )));
    }
    let mut target = pg_target(url, password)?;
    if let Some(pem) = tls_ca {
        target.tls = Some(db::tls_config(pem).map_err(StoreError::Config)?);
    }
    Ok(Connection::pg(target)?)
}

/// The daemon's database.
pub struct Store {
    conn: Mutex<Connection>,
    /// A second connection for SMS dispatch with `synchronous = FULL`, but for the claims,
    /// which commit without a sync and are synced by `wal`'s thread before their requests
    /// leave (and the answers, which need no sync): a claimed message is on disk before its
    /// request leaves, even across a power cut. `None` in memory.
    sms: Option<Mutex<Connection>>,
    /// A third connection for what operators read about campaigns (progress counts, message
    /// lists, exports), so that counting a million rows never holds up the dispatcher's claims.
    /// `None` in memory.
    read: Option<Mutex<Connection>>,
    /// Disk space held back for alerts and the audit; `None` in memory or when disabled.
    reserve: Option<Reserve>,
    /// A fourth connection that moves the write-ahead log into the database
    /// ([`Store::checkpoint`], every second from the daemon), so that writers do not do it
    /// inside their commits. `None` in memory.
    ckpt: Option<Mutex<rusqlite::Connection>>,
    /// SQLite on disk: the write-ahead log's path, and the thread that syncs it behind the SMS
    /// claims, which commit without a sync of their own (group commit, [`walsync`]); started
    /// at the first claim (an idle daemon, a command-line tool, has no such thread).
    wal: Option<(
        PathBuf,
        std::sync::OnceLock<std::sync::Arc<walsync::WalSync>>,
    )>,
    /// PostgreSQL: a connection of its own for the leader lease, so that renewing it never
    /// waits behind the writers.
    lease: Option<Mutex<Connection>>,
    /// PostgreSQL: the URL and password it was opened with (tests open it again).
    #[cfg_attr(not(test), allow(dead_code))]
    pg: Option<(String, Option<String>)>,
    /// On a shared store, this daemon's node name (`[store] node`): its list imports carry it,
    /// so that each node removes only its own cut-off imports.
    node: std::sync::OnceLock<String>,
    /// The epoch of the lease this node leads at ([`Store::lead`]; 0 when it does not, and
    /// always on SQLite): the claims it makes carry it.
    epoch: std::sync::atomic::AtomicI64,
    /// The SMS connection was left at `synchronous = NORMAL` (putting `FULL` back failed after
    /// a claim or answers had committed): put back before its next use ([`Store::sms_conn`]).
    sms_unsynced: std::sync::atomic::AtomicBool,
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(w) = self.wal_started() {
            w.stop();
        }
    }
}

/// WAL pages after which a writer still checkpoints inside its commit (SQLite's
/// `wal_autocheckpoint`; its default is 1,000 pages, about 4 MB): a backstop, should the
/// periodic checkpoint not run. 16,384 pages is 64 MB.
const BACKSTOP_PAGES: i64 = 16_384;

/// A file of zeros (`{data_dir}/reserve`, allocated, not sparse) that holds back disk space.
/// Bulk writes (agent reports, list imports, uploads, SMS claims, delivery reports and
/// replies, playlist saves) are refused with [`StoreError::DiskFull`] once the disk has less
/// free space than the reserve's size. When something else fills the disk and a write of the
/// emergency path (an alert, a publication, the audit) fails for want of space, the file is
/// deleted and the write tried again in the space it held; bulk writes stay refused until the
/// disk has room for the reserve twice and it is allocated again ([`Store::refill_reserve`]).
struct Reserve {
    path: PathBuf,
    bytes: u64,
    /// Released (or never allocated): bulk writes are refused.
    in_use: AtomicBool,
}

/// Bytes an unprivileged process may still write on the file system of `dir`.
fn free_space(dir: &Path) -> Option<u64> {
    rustix::fs::statvfs(dir)
        .ok()
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
}

impl Reserve {
    /// Allocates the file (`fallocate`, so the blocks are really taken). `true` when it holds.
    fn allocate(&self) -> bool {
        let done = (|| -> std::io::Result<()> {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)?;
            rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, self.bytes)?;
            f.sync_all()
        })();
        match done {
            Ok(()) => true,
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                tracing::warn!(file = %self.path.display(), bytes = self.bytes, error = %e, "cannot allocate the disk reserve");
                false
            }
        }
    }
}

impl Store {
    /// Holds back `bytes` of the disk at `dir` for alerts and the audit (see [`Reserve`]); 0
    /// keeps none. If the disk is already too full for it, bulk writes are refused from the
    /// start (and [`Store::refill_reserve`] retries).
    pub fn keep_reserve(mut self, dir: &Path, bytes: u64) -> Store {
        if bytes == 0 {
            let _ = std::fs::remove_file(dir.join("reserve"));
            return self;
        }
        let r = Reserve {
            path: dir.join("reserve"),
            bytes,
            in_use: AtomicBool::new(false),
        };
        if !r.allocate() {
            tracing::error!(dir = %dir.display(), "the data disk is too full for its reserve: bulk writes are refused until space is freed");
            r.in_use.store(true, Ordering::SeqCst);
        }
        self.reserve = Some(r);
        self
    }

    /// Whether the reserve is released (the disk filled up): bulk writes are being refused.
    pub fn reserve_in_use(&self) -> bool {
        self.reserve
            .as_ref()
            .is_some_and(|r| r.in_use.load(Ordering::SeqCst))
    }

    /// `Err(DiskFull)` while the reserve is in use, or while the disk has less free space than
    /// the reserve's size (so bulk work stops short of the reserve, and what is free stays for
    /// the emergency path too): called first by every bulk write. One `statvfs`.
    pub fn bulk_ok(&self) -> Result<(), StoreError> {
        let Some(r) = &self.reserve else {
            return Ok(());
        };
        let dir = r.path.parent().unwrap_or(Path::new("."));
        if r.in_use.load(Ordering::SeqCst) || free_space(dir).is_some_and(|f| f < r.bytes) {
            return Err(StoreError::DiskFull(dir.display().to_string()));
        }
        Ok(())
    }

    /// Gives the reserve up (once): `true` when space was freed by this call.
    fn release_reserve(&self) -> bool {
        let Some(r) = &self.reserve else { return false };
        if r.in_use.swap(true, Ordering::SeqCst) {
            return false;
        }
        let freed = std::fs::remove_file(&r.path).is_ok();
        tracing::error!(file = %r.path.display(), bytes = r.bytes, "the data disk is full: released its reserve for alerts and the audit; bulk writes are refused until space is freed");
        freed
    }

    /// Allocates the reserve again once the disk has room for twice its size; `true` when the
    /// store takes bulk writes again. Called periodically by the daemon.
    pub fn refill_reserve(&self) -> bool {
        let Some(r) = &self.reserve else { return true };
        if !r.in_use.load(Ordering::SeqCst) {
            return true;
        }
        let dir = r.path.parent().unwrap_or(Path::new("."));
        let free = free_space(dir).unwrap_or(0);
        if free < r.bytes.saturating_mul(2) || !r.allocate() {
            return false;
        }
        r.in_use.store(false, Ordering::SeqCst);
        tracing::info!(file = %r.path.display(), "disk space is back: the reserve is held again and bulk writes are taken");
        true
    }

    /// Runs a write of the emergency path (alerts, their publication, the audit) on the main
    /// connection: when it fails for a full disk, the reserve is released and it runs again.
    fn priority<T>(
        &self,
        mut f: impl FnMut(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        match f(&mut conn) {
            Err(e) if e.is_disk_full() && self.release_reserve() => f(&mut conn),
            r => r,
        }
    }

    /// Writes the readiness row: fails when the store cannot take writes (disk full,
    /// read-only file system, database locked for longer than the busy timeout).
    pub fn probe_write(&self, now: chrono::DateTime<chrono::Utc>) -> Result<(), StoreError> {
        self.bulk_ok()?;
        self.emergency_probe(now)
    }

    /// Writes the readiness row as the emergency path writes (in the disk reserve when the
    /// disk is full): fails only when not even an alert could be written.
    pub fn emergency_probe(&self, now: chrono::DateTime<chrono::Utc>) -> Result<(), StoreError> {
        self.priority(|conn| {
            conn.execute(
                "INSERT INTO readiness (id, at) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                [now.to_rfc3339()],
            )?;
            Ok(())
        })
    }

    /// `Err(DiskFull)` unless the data disk has room for `bytes` more and the reserve (an
    /// upload of that size checked before it is streamed).
    pub fn room_for(&self, bytes: u64) -> Result<(), StoreError> {
        self.bulk_ok()?;
        let Some(r) = &self.reserve else {
            return Ok(());
        };
        let dir = r.path.parent().unwrap_or(Path::new("."));
        if free_space(dir).is_some_and(|f| f < bytes.saturating_add(r.bytes)) {
            return Err(StoreError::DiskFull(dir.display().to_string()));
        }
        Ok(())
    }

    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = rusqlite::Connection::open(path)?;
        let mut store = Store::init(conn)?;
        let sms = rusqlite::Connection::open(path)?;
        // Every write of this connection is synced in its commit, but the claims, whose log the
        // thread of `wal` syncs behind them (and the answers, which need no sync).
        sms.pragma_update(None, "synchronous", "FULL")?;
        // The log SQLite writes: named after the database file it resolved (a symbolic link's
        // target), not after the path it was given.
        let mut wal = sms
            .path()
            .filter(|p| !p.is_empty())
            .map_or_else(|| path.as_os_str().to_owned(), std::ffi::OsString::from);
        wal.push("-wal");
        settle(&sms)?;
        store.sms = Some(Mutex::new(writer(sms)));
        let read = rusqlite::Connection::open(path)?;
        read.pragma_update(None, "query_only", true)?;
        settle(&read)?;
        store.read = Some(Mutex::new(Connection::lite(read)));
        // Checkpoints leave the writers' commits (a publication's took up to 13 ms): the
        // daemon runs them every second on their own connection; the writers only past the
        // backstop.
        for c in [Some(&store.conn), store.sms.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Some(c) = c.lock().unwrap_or_else(|e| e.into_inner()).sqlite() {
                c.pragma_update(None, "wal_autocheckpoint", BACKSTOP_PAGES)?;
            }
        }
        let ckpt = rusqlite::Connection::open(path)?;
        settle(&ckpt)?;
        // It copies pages through; its own page cache would only hold memory (default 2 MB).
        ckpt.pragma_update(None, "cache_size", -64)?;
        store.ckpt = Some(Mutex::new(ckpt));
        store.wal = Some((wal.into(), std::sync::OnceLock::new()));
        Ok(store)
    }

    /// Connects to the PostgreSQL database `url` (a `postgres://` URL without a password;
    /// `password` from `[store] password_env` or `password_file`; TLS trusting the CA
    /// certificates `tls_ca` when given) and applies the migrations it lacks. Three
    /// connections, as on SQLite: the main writer, the SMS dispatcher's and a read-only one for
    /// what operators read, plus one for the leader lease. No disk reserve: the disk is the
    /// server's. Its sessions are bounded by the node's `lease`, so that a node frozen or cut
    /// off mid-write cannot hold the locks a standby waits for: a writer's transaction left
    /// idle is ended by the server after half a lease; the lease connection waits at most a
    /// quarter of a lease for a lock; a connection the network dropped is noticed after half a
    /// lease (TCP keepalives and user timeout).
    pub fn connect_with_lease(
        url: &str,
        password: Option<&str>,
        lease: std::time::Duration,
        tls_ca: Option<&[u8]>,
    ) -> Result<Store, StoreError> {
        let mut target = pg_target(url, password)?;
        if let Some(pem) = tls_ca {
            target.tls =
                Some(db::tls_config(pem).map_err(|e| StoreError::Config(format!("ca_file: {e}")))?);
        }
        let half = (lease / 2).max(std::time::Duration::from_millis(500));
        let quarter = (lease / 4).max(std::time::Duration::from_millis(250));
        target
            .config
            .keepalives(true)
            .keepalives_idle(half)
            .tcp_user_timeout(half);
        let writer_target = db::PgTarget {
            setup: format!(
                "SET idle_in_transaction_session_timeout = {}",
                half.as_millis()
            ),
            ..target.clone()
        };
        let mut conn = Connection::pg(writer_target.clone())?;
        conn.set_writer();
        migrate_pg(&conn)?;
        let mut sms = Connection::pg(writer_target)?;
        sms.set_writer();
        let lease = Connection::pg(db::PgTarget {
            setup: format!(
                "SET lock_timeout = {}; SET statement_timeout = {}",
                quarter.as_millis(),
                half.as_millis()
            ),
            ..target.clone()
        })?;
        let read = Connection::pg(db::PgTarget {
            setup: "SET default_transaction_read_only = on".into(),
            ..target
        })?;
        Ok(Store {
            conn: Mutex::new(conn),
            sms: Some(Mutex::new(sms)),
            read: Some(Mutex::new(read)),
            reserve: None,
            ckpt: None,
            wal: None,
            lease: Some(Mutex::new(lease)),
            pg: Some((url.to_owned(), password.map(str::to_owned))),
            node: std::sync::OnceLock::new(),
            epoch: std::sync::atomic::AtomicI64::new(0),
            sms_unsynced: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Another store on the same PostgreSQL database (tests: a second node).
    #[cfg(test)]
    pub fn same_database(&self) -> Result<Store, StoreError> {
        let (url, password) = self.pg.clone().expect("a PostgreSQL store");
        Store::connect_with_lease(
            &url,
            password.as_deref(),
            std::time::Duration::from_secs(10),
            test_ca().as_deref(),
        )
    }

    /// Connects to the PostgreSQL store `[store]` names (URL, password, lease, TLS); an error
    /// for SQLite, which is opened by its path ([`Store::open`]).
    pub fn connect_configured(c: &crate::config::StoreConfig) -> Result<Store, StoreError> {
        match c {
            crate::config::StoreConfig::Postgres {
                url,
                password,
                lease,
                tls_ca,
                ..
            } => Store::connect_with_lease(url, password.as_deref(), *lease, tls_ca.as_deref()),
            crate::config::StoreConfig::Sqlite => Err(StoreError::Config(
                "not a PostgreSQL store: SQLite is opened by its path".into(),
            )),
        }
    }

    /// Creates `schema` (when missing) on the PostgreSQL server at `url` and answers the URL
    /// whose connections use it (`search_path`): how the tests and benchmarks give each daemon
    /// a database of its own on one server. `schema` is letters, digits and `_`.
    pub fn schema_url(
        url: &str,
        password: Option<&str>,
        tls_ca: Option<&[u8]>,
        schema: &str,
    ) -> Result<String, StoreError> {
        schema_admin(url, password, tls_ca, schema)?
            .execute_batch(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))?;
        let sep = if url.contains('?') { '&' } else { '?' };
        Ok(format!("{url}{sep}options=-csearch_path%3D{schema}"))
    }

    /// Drops `schema` at `url` and everything in it (what [`Store::schema_url`] made for a
    /// benchmark's run).
    pub fn drop_schema(
        url: &str,
        password: Option<&str>,
        tls_ca: Option<&[u8]>,
        schema: &str,
    ) -> Result<(), StoreError> {
        schema_admin(url, password, tls_ca, schema)?
            .execute_batch(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))?;
        Ok(())
    }

    /// Names this daemon on a shared store (once; later calls are ignored).
    pub fn set_node(&self, node: &str) {
        let _ = self.node.set(node.to_owned());
    }

    /// This daemon's node name on a shared store, if set.
    pub fn node(&self) -> Option<&str> {
        self.node.get().map(String::as_str)
    }

    /// The epoch of the lease this node leads at (0: it does not lead, or SQLite).
    pub fn lead_epoch(&self) -> i64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether this store is on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.conn().is_pg()
    }

    /// Copies what the write-ahead log holds into the database as far as readers allow
    /// (`PRAGMA wal_checkpoint(PASSIVE)`: it never waits for a reader or a writer). Nothing in
    /// memory or on PostgreSQL.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        if let Some(c) = &self.ckpt {
            c.lock().unwrap_or_else(|e| e.into_inner()).query_row(
                "PRAGMA wal_checkpoint(PASSIVE)",
                [],
                |_| Ok(()),
            )?;
        }
        Ok(())
    }

    /// An in-memory SQLite database (tests). With `MARQUEE_TEST_POSTGRES` set (a URL), unit
    /// tests get a fresh schema on that server instead, so the store's tests run on both.
    pub fn memory() -> Result<Store, StoreError> {
        #[cfg(test)]
        if let Ok(url) = std::env::var("MARQUEE_TEST_POSTGRES") {
            let password = std::env::var("MARQUEE_TEST_POSTGRES_PASSWORD").ok();
            let ca = test_ca();
            let url = test_schema(&url, password.as_deref(), ca.as_deref())?;
            return Store::connect_with_lease(
                &url,
                password.as_deref(),
                std::time::Duration::from_secs(10),
                ca.as_deref(),
            );
        }
        Store::init(rusqlite::Connection::open_in_memory()?)
    }

    fn init(conn: rusqlite::Connection) -> Result<Store, StoreError> {
        Ok(Store {
            conn: Mutex::new(writer(migrate(conn, MIGRATIONS)?)),
            sms: None,
            read: None,
            reserve: None,
            ckpt: None,
            wal: None,
            lease: None,
            pg: None,
            node: std::sync::OnceLock::new(),
            epoch: std::sync::atomic::AtomicI64::new(0),
            sms_unsynced: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The thread that syncs the write-ahead log behind the SMS claims, started at the first
    /// claim (`None`: PostgreSQL or in memory, where a commit is on disk when it returns).
    fn wal_sync(&self) -> Result<Option<&std::sync::Arc<walsync::WalSync>>, StoreError> {
        let Some((path, w)) = &self.wal else {
            return Ok(None);
        };
        if let Some(w) = w.get() {
            return Ok(Some(w));
        }
        // Under the SMS connection's lock (the one caller): started once.
        let started = walsync::WalSync::start(path.clone())?;
        Ok(Some(w.get_or_init(|| started)))
    }

    /// Whether a sync of the log behind the claims failed: nothing more is claimed until the
    /// daemon is restarted ([`walsync`]).
    pub fn claims_broken(&self) -> bool {
        self.wal_started().is_some_and(|w| w.broken())
    }

    /// The log's thread, if a claim started it.
    fn wal_started(&self) -> Option<&std::sync::Arc<walsync::WalSync>> {
        self.wal.as_ref().and_then(|(_, w)| w.get())
    }

    /// A claim of `n` messages just committed on the SMS connection (still held): what it
    /// waits for to be on disk (0: it is already, as on PostgreSQL or in memory, or it took
    /// nothing). `wal`: [`Store::wal_sync`], taken before the claim.
    fn claim_ticket(wal: Option<&walsync::WalSync>, n: usize) -> u64 {
        match wal {
            Some(w) if n > 0 => w.committed(),
            _ => 0,
        }
    }

    /// Blocks until the claim of `ticket` ([`Store::claim_unsynced`]) is on disk.
    pub fn wait_claimed(&self, ticket: u64) -> Result<(), StoreError> {
        match self.wal_started() {
            Some(w) if ticket > 0 => Ok(w.wait(ticket)?),
            _ => Ok(()),
        }
    }

    /// Where the SMS claims' disk syncs stand, for async waiters (`None`: no claim waits, as
    /// on PostgreSQL or in memory).
    pub fn claims_synced(&self) -> Option<tokio::sync::watch::Receiver<walsync::Synced>> {
        self.wal_started().map(|w| w.watch())
    }

    /// Runs `f` on tokio's blocking pool: the one way async code reaches the store (SQLite
    /// calls block; they never run on the async threads).
    pub async fn call<T: Send + 'static>(
        self: &std::sync::Arc<Self>,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        lock(&self.conn)
    }

    fn read_conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        match &self.read {
            Some(c) => lock(c),
            None => self.conn(),
        }
    }

    fn sms_conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        match &self.sms {
            Some(c) => {
                let conn = lock(c);
                // A write after a failed put-back must not go unsynced.
                if self
                    .sms_unsynced
                    .swap(false, std::sync::atomic::Ordering::AcqRel)
                {
                    self.sms_sync_on(&conn);
                }
                conn
            }
            None => self.conn(),
        }
    }

    /// The SMS connection's next commits do not sync (`synchronous = NORMAL`): the claims,
    /// whose log is synced behind them, and the answers, which need no sync. Nothing is
    /// written yet, so a failure fails the call.
    fn sms_sync_off(&self, conn: &Connection) -> Result<(), StoreError> {
        match conn.sqlite().filter(|_| self.sms.is_some()) {
            Some(c) => Ok(c.pragma_update(None, "synchronous", "NORMAL")?),
            None => Ok(()),
        }
    }

    /// The SMS connection's commits sync again (`synchronous = FULL`). What was committed
    /// meanwhile stands: a failure is logged, and the sync put back before the connection's
    /// next use ([`Store::sms_conn`]).
    fn sms_sync_on(&self, conn: &Connection) {
        let Some(c) = conn.sqlite().filter(|_| self.sms.is_some()) else {
            return;
        };
        if let Err(e) = c.pragma_update(None, "synchronous", "FULL") {
            tracing::error!(error = %e, "cannot put the SMS connection's disk sync back; tried again before its next write");
            self.sms_unsynced
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Everything last published.
    pub fn published(&self) -> Result<Vec<Published>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT topic, version, payload, body, issued_at FROM published ORDER BY topic",
        )?;
        let rows = stmt.query_map([], |r| {
            let issued: String = r.get(4)?;
            Ok(Published {
                topic: r.get(0)?,
                version: r.get::<_, i64>(1)? as u64,
                payload: r.get(2)?,
                body: r.get(3)?,
                issued_at: DateTime::parse_from_rfc3339(&issued)
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a publication. Refuses (returns `false`) a version not above the stored one, so
    /// versions can only grow.
    pub fn record_published(&self, p: &Published) -> Result<bool, StoreError> {
        Ok(self
            .record_published_all(std::slice::from_ref(p))?
            .is_none())
    }

    /// Records publications in one transaction (one commit for a pass over many channels).
    /// Refuses all of them when one has a version not above the stored one: answers that one's
    /// index, and nothing is stored.
    pub fn record_published_all(&self, rows: &[Published]) -> Result<Option<usize>, StoreError> {
        self.priority(|conn| {
            let tx = conn.transaction()?;
            for (i, p) in rows.iter().enumerate() {
                let held: Option<i64> = tx
                    .query_row(
                        "SELECT version FROM published WHERE topic = ?1",
                        [&p.topic],
                        |r| r.get(0),
                    )
                    .optional()?;
                if held.is_some_and(|h| h as u64 >= p.version) && !p.payload.is_empty() {
                    return Ok(Some(i));
                }
                tx.execute(
                    "INSERT INTO published (topic, version, payload, body, issued_at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(topic) DO UPDATE SET version = excluded.version, payload = excluded.payload,
                         body = excluded.body, issued_at = excluded.issued_at",
                    params![
                        p.topic,
                        p.version as i64,
                        p.payload,
                        p.body,
                        p.issued_at.to_rfc3339()
                    ],
                )?;
            }
            tx.commit()?;
            Ok(None)
        })
    }
}

impl Store {
    /// The last good playlist sources, by file path.
    pub fn good_playlists(&self) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT path, source FROM good_playlists ORDER BY path")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Replaces the stored good playlist sources (their generation moves: standbys show them).
    pub fn set_good_playlists(&self, good: &[(String, String)]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM good_playlists", [])?;
        for (path, source) in good {
            tx.execute(
                "INSERT INTO good_playlists (path, source) VALUES (?1, ?2)",
                params![path, source],
            )?;
        }
        handoff::bump(&tx, handoff::PLAYLISTS)?;
        tx.commit()?;
        Ok(())
    }

    /// Changes the stored good playlist sources in place: `set` written (by path), `removed`
    /// deleted; one transaction. A reload that touched one file writes one row.
    pub fn update_good_playlists(
        &self,
        set: &[(String, String)],
        removed: &[String],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for (path, source) in set {
            tx.execute(
                "INSERT INTO good_playlists (path, source) VALUES (?1, ?2)
                 ON CONFLICT (path) DO UPDATE SET source = excluded.source",
                params![path, source],
            )?;
        }
        for path in removed {
            tx.execute("DELETE FROM good_playlists WHERE path = ?1", params![path])?;
        }
        if !set.is_empty() || !removed.is_empty() {
            handoff::bump(&tx, handoff::PLAYLISTS)?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both writers begin their transactions by taking the write lock, so a transaction that
    /// reads and then writes waits for the other writer instead of failing with "database is
    /// locked": while one holds a transaction, nobody else can even begin a write.
    #[test]
    fn writers_take_the_write_lock_at_begin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let store = Store::open(&path).unwrap();
        let other = rusqlite::Connection::open(&path).unwrap();
        other.busy_timeout(std::time::Duration::ZERO).unwrap();
        for conn in [&store.conn, store.sms.as_ref().unwrap()] {
            let mut c = conn.lock().unwrap();
            let tx = c.transaction().unwrap();
            let begun = other.execute_batch("BEGIN IMMEDIATE; COMMIT;");
            assert!(
                begun.is_err_and(
                    |e| e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                ),
                "a second writer began while a transaction was open"
            );
            drop(tx);
        }
        other.execute_batch("BEGIN IMMEDIATE; COMMIT;").unwrap();
    }

    /// Every SQLite migration has its PostgreSQL counterpart: a new one added to one list only
    /// fails here.
    #[test]
    fn both_engines_have_every_migration() {
        assert_eq!(PG_BASE + PG_MIGRATIONS.len(), MIGRATIONS.len());
    }

    /// On PostgreSQL (the suite's second pass), a writer's transaction holds the write lock
    /// from its `BEGIN`, as on SQLite: nobody else can take it until it ends.
    #[test]
    fn postgres_writers_take_the_write_lock_at_begin() {
        let s = Store::memory().unwrap();
        if !s.is_postgres() {
            return;
        }
        let other = s.read.as_ref().unwrap();
        let free = || -> bool {
            let c = lock(other);
            let tx_free: bool = c
                .query_row(
                    &format!("SELECT pg_try_advisory_xact_lock({})", db::WRITE_LOCK),
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            // Let go of it at once (autocommit: it ended with the statement).
            tx_free
        };
        assert!(free());
        for conn in [&s.conn, s.sms.as_ref().unwrap()] {
            let mut c = conn.lock().unwrap();
            let tx = c.transaction().unwrap();
            assert!(
                !free(),
                "a second writer could begin while a transaction was open"
            );
            drop(tx);
        }
        assert!(free());
        // Another deployment's schema in the same database (here another test's) has a lock of
        // its own: a writer here does not hold it up.
        let elsewhere = Store::memory().unwrap();
        {
            let mut c = s.conn.lock().unwrap();
            let _tx = c.transaction().unwrap();
            assert!(!free());
            let c = lock(elsewhere.read.as_ref().unwrap());
            let its_own: bool = c
                .query_row(
                    &format!("SELECT pg_try_advisory_xact_lock({})", db::WRITE_LOCK),
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert!(
                its_own,
                "a writer in one schema held up another schema's writers"
            );
        }
        // Versions still only grow there.
        assert!(s.record_published(&p(3, b"a")).unwrap());
        assert!(!s.record_published(&p(3, b"b")).unwrap());
    }

    fn p(version: u64, payload: &[u8]) -> Published {
        Published {
            topic: "marquee/v1/channel/lobby/timeline".into(),
            version,
            payload: payload.to_vec(),
            body: Some("{}".into()),
            issued_at: DateTime::parse_from_rfc3339("2021-05-15T00:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    #[test]
    fn versions_only_grow() {
        let s = Store::memory().unwrap();
        assert!(s.record_published(&p(1, b"a")).unwrap());
        assert!(s.record_published(&p(2, b"b")).unwrap());
        assert!(!s.record_published(&p(2, b"c")).unwrap());
        assert!(!s.record_published(&p(1, b"d")).unwrap());
        assert_eq!(s.published().unwrap(), vec![p(2, b"b")]);
    }

    #[test]
    fn the_reserve_is_held_released_once_and_taken_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("m.db"))
            .unwrap()
            .keep_reserve(dir.path(), 64 * 1024);
        let file = dir.path().join("reserve");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 64 * 1024);
        assert!(s.bulk_ok().is_ok() && !s.reserve_in_use());
        assert!(s.release_reserve(), "the first release frees the space");
        assert!(!s.release_reserve(), "only once");
        assert!(!file.exists() && s.reserve_in_use());
        let e = s.bulk_ok().unwrap_err();
        assert!(e.is_disk_full() && e.to_string().contains("alerts"), "{e}");
        // Priority writes still go through; bulk ones are refused.
        assert!(s.record_published(&p(1, b"a")).unwrap());
        assert!(s.probe_write(Utc::now()).unwrap_err().is_disk_full());
        // This disk has room: the reserve is allocated again and bulk writes resume.
        assert!(s.refill_reserve());
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 64 * 1024);
        assert!(s.bulk_ok().is_ok());
        // 0 keeps none (and removes a reserve left by an earlier setting).
        let s = Store::open(&dir.path().join("m.db"))
            .unwrap()
            .keep_reserve(dir.path(), 0);
        assert!(!file.exists() && s.bulk_ok().is_ok() && s.refill_reserve());
    }

    #[test]
    fn good_playlists_are_replaced_as_a_whole() {
        let s = Store::memory().unwrap();
        s.set_good_playlists(&[("a".into(), "1".into()), ("b".into(), "2".into())])
            .unwrap();
        s.set_good_playlists(&[("b".into(), "3".into())]).unwrap();
        assert_eq!(s.good_playlists().unwrap(), vec![("b".into(), "3".into())]);
        // In place: one row set, one added, one removed; the others untouched.
        s.set_good_playlists(&[("a".into(), "1".into()), ("b".into(), "2".into())])
            .unwrap();
        s.update_good_playlists(
            &[("b".into(), "4".into()), ("c".into(), "5".into())],
            &["a".into()],
        )
        .unwrap();
        assert_eq!(
            s.good_playlists().unwrap(),
            vec![("b".into(), "4".into()), ("c".into(), "5".into())]
        );
    }

    #[test]
    fn reopening_keeps_rows_and_does_not_remigrate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        Store::open(&path)
            .unwrap()
            .record_published(&p(5, b"x"))
            .unwrap();
        let s = Store::open(&path).unwrap();
        assert_eq!(s.published().unwrap()[0].version, 5);
    }

    /// A database at schema `version` holding campaign 1 (running).
    fn database_at(version: usize) -> rusqlite::Connection {
        let conn = migrate(
            rusqlite::Connection::open_in_memory().unwrap(),
            &MIGRATIONS[..version],
        )
        .unwrap();
        conn.execute_batch(
            "INSERT INTO campaigns (id, name, status, spec, created_by, created_at)
                 VALUES (1, 'c', 'running', '{}', 'op', 'now');",
        )
        .unwrap();
        conn
    }

    #[test]
    fn upgrading_counts_the_messages_already_there() {
        let conn = database_at(9);
        conn.execute_batch(
            "INSERT INTO messages (campaign, row, recipient, text, parts, state, updated_at)
                 VALUES (1, 1, '+1', 't', 2, 'sent', 'now'), (1, 2, '+2', 't', 1, 'sent', 'now'),
                        (1, 3, '+3', 't', 1, 'queued', 'now');",
        )
        .unwrap();
        let s = Store {
            conn: Mutex::new(writer(migrate(conn, MIGRATIONS).unwrap())),
            sms: None,
            read: None,
            reserve: None,
            ckpt: None,
            wal: None,
            lease: None,
            pg: None,
            node: std::sync::OnceLock::new(),
            epoch: std::sync::atomic::AtomicI64::new(0),
            sms_unsynced: std::sync::atomic::AtomicBool::new(false),
        };
        let c = s.campaign(1).unwrap().unwrap();
        assert_eq!(
            (c.counts["sent"], c.counts["queued"], c.segments),
            (2, 1, 4)
        );
    }

    #[test]
    fn upgrading_marks_what_reached_the_network_for_the_daily_cap() {
        let conn = database_at(26);
        let hour_ago = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hour')";
        let two_days_ago = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 days')";
        conn.execute_batch(&format!(
            "INSERT INTO messages (campaign, row, recipient, text, parts, state, submitted_at,
                                   updated_at)
                 VALUES (1, 1, '+1', 't', 1, 'delivered', {hour_ago}, 'now'),
                        (1, 2, '+2', 't', 1, 'unknown', {hour_ago}, 'now'),
                        (1, 3, '+3', 't', 1, 'queued', {hour_ago}, 'now'),
                        (1, 4, '+4', 't', 1, 'rejected', {hour_ago}, 'now'),
                        (1, 5, '+5', 't', 1, 'queued', NULL, 'now'),
                        (1, 6, '+6', 't', 1, 'delivered', {two_days_ago}, 'now');"
        ))
        .unwrap();
        let conn = migrate(conn, MIGRATIONS).unwrap();
        let marked: Vec<bool> = conn
            .prepare("SELECT reached_at IS NOT NULL AND reached_at = submitted_at FROM messages ORDER BY row")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // The last day's delivered, unknown and claimed-then-queued rows (as the cap counted
        // them before); not the refused one, the never-claimed one, nor what is too old to
        // matter.
        assert_eq!(marked, [true, true, true, false, false, false]);
    }
}
