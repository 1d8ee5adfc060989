//! One SQL interface over the store's two engines: SQLite (rusqlite, the zero-setup default)
//! and PostgreSQL (tokio-postgres, on a runtime thread of its own; see `pg_runtime`). It is shaped
//! like rusqlite's (connections, cached statements, rows, `params!`, `optional()`), so the
//! store modules are written once and run on both.
//!
//! What it hides:
//! - Placeholders: SQL is written with SQLite's `?1`/`?`; on PostgreSQL they become `$1`/`$n`
//!   (outside string literals and quoted names).
//! - Types: both engines hold integers (`BIGINT` on PostgreSQL), text and bytes. Values are
//!   converted to the type the server expects for each parameter (PostgreSQL infers it, and
//!   refuses an `i64` for an `INT4`), and read from whatever integer, text or byte type a column
//!   has. A `NUMERIC` (what PostgreSQL's `SUM` of integers gives) is refused: cast it.
//! - Transactions: a writer's transaction takes the write lock when it begins. On SQLite that
//!   is `BEGIN IMMEDIATE` (see `store::writer`); on PostgreSQL a transaction-scoped advisory
//!   lock ([`WRITE_LOCK`]), so read-then-write transactions stay serial as they are on SQLite,
//!   across every node using the database.
//!
//! What it does not hide: SQL that only one engine speaks (JSON functions, `PRAGMA`, `rowid`);
//! the few statements that need it ask [`Connection::is_pg`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::types::ToSqlOutput;
use tokio_postgres::types::{FromSql as PgFromSql, IsNull, ToSql as PgToSql, Type, to_sql_checked};

/// The advisory lock every writer's PostgreSQL transaction holds, as the arguments of
/// `pg_advisory_xact_lock`: "MARQ" and the hash of the schema the connection works in
/// (`current_schema()`, from its `search_path`). Advisory locks are database-wide, so a key of
/// its own per schema keeps the deployments in other schemas of the same database (and the
/// test suite's daemons, one schema each) from waiting for each other's writes; every node of
/// one deployment shares its schema, hence the lock. The two-key form has a key space of its
/// own (PostgreSQL manual, "Advisory Lock Functions").
pub const WRITE_LOCK: &str = "1296126545, hashtext(COALESCE(current_schema(), ''))";

/// A failure of either engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite said no.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL (or the connection to it) said no.
    #[error("{}", pg_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A query that must return a row returned none.
    #[error("the query returned no rows")]
    NoRows,
    /// A value could not be converted between the engine's type and Rust's.
    #[error("column {0}: {1}")]
    Conversion(usize, String),
}

/// The server's own message when there is one (with its SQLSTATE), else the driver's.
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

impl Error {
    /// Whether the engine ran out of disk: SQLite's `SQLITE_FULL`, PostgreSQL's `53100`.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            Error::Postgres(e) => e.code() == Some(&tokio_postgres::error::SqlState::DISK_FULL),
            _ => false,
        }
    }

    /// Whether the engine refused a write because the row already exists (a unique key).
    pub fn is_unique_violation(&self) -> bool {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::ConstraintViolation
            }
            Error::Postgres(e) => {
                e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
            }
            _ => false,
        }
    }

    /// Whether PostgreSQL gave up waiting for a lock (`lock_timeout`, `55P03`).
    pub fn is_lock_timeout(&self) -> bool {
        matches!(self, Error::Postgres(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE))
    }

    /// Whether SQLite reported the database busy (another writer held it past the timeout).
    pub fn is_busy(&self) -> bool {
        matches!(self, Error::Sqlite(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy))
    }
}

/// A result of either engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `query_row(..).optional()`: no row is `None`, not an error.
pub trait OptionalExtension<T> {
    /// `Ok(None)` for no row.
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::NoRows | Error::Sqlite(rusqlite::Error::QueryReturnedNoRows)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A value as both engines hold it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// An integer (a boolean is 0 or 1).
    Int(i64),
    /// A float.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl PgToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // Text goes as text only where the binary format of the type is its text (the others,
        // NUMERIC, timestamps, UUID, ..., are refused rather than sent garbled).
        let text = |t: &str,
                    out: &mut bytes::BytesMut|
         -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
            match *ty {
                Type::JSONB => out.extend_from_slice(&[1]),
                Type::TEXT
                | Type::VARCHAR
                | Type::BPCHAR
                | Type::NAME
                | Type::UNKNOWN
                | Type::JSON => {}
                _ => return Err(format!("a value for a {ty} parameter: cast it in the SQL").into()),
            }
            out.extend_from_slice(t.as_bytes());
            Ok(IsNull::No)
        };
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::FLOAT4 => (*i as f32).to_sql(ty, out),
                _ => text(&i.to_string(), out),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                Type::FLOAT8 => f.to_sql(ty, out),
                _ => text(&f.to_string(), out),
            },
            Value::Text(s) => match *ty {
                Type::INT8 => s.parse::<i64>()?.to_sql(ty, out),
                Type::INT4 => s.parse::<i32>()?.to_sql(ty, out),
                Type::BYTEA => s.as_bytes().to_sql(ty, out),
                _ => text(s, out),
            },
            Value::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl<'a> PgFromSql<'a> for Value {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Value, Box<dyn std::error::Error + Sync + Send>> {
        Ok(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::OID => Value::Int(u32::from_sql(ty, raw)?.into()),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f32::from_sql(ty, raw)?.into()),
            Type::BYTEA => Value::Blob(raw.to_vec()),
            Type::JSONB => Value::Text(String::from_utf8(raw.get(1..).unwrap_or(&[]).to_vec())?),
            Type::NUMERIC => return Err("a NUMERIC column: cast it to BIGINT".into()),
            _ => Value::Text(std::str::from_utf8(raw)?.to_owned()),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Value, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Value::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A parameter either engine takes: rusqlite's own conversion for SQLite, a [`Value`] for
/// PostgreSQL.
pub trait ToSql {
    /// For SQLite.
    fn lite(&self) -> rusqlite::Result<ToSqlOutput<'_>>;
    /// For PostgreSQL.
    fn pg(&self) -> Value;
}

macro_rules! to_sql_native {
    ($($t:ty => |$v:ident| $pg:expr),* $(,)?) => {$(
        impl ToSql for $t {
            fn lite(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                rusqlite::ToSql::to_sql(self)
            }
            fn pg(&self) -> Value {
                let $v = self;
                $pg
            }
        }
    )*};
}
to_sql_native!(
    i64 => |v| Value::Int(*v),
    i32 => |v| Value::Int((*v).into()),
    u32 => |v| Value::Int((*v).into()),
    bool => |v| Value::Int((*v).into()),
    f64 => |v| Value::Real(*v),
    str => |v| Value::Text(v.to_owned()),
    String => |v| Value::Text(v.clone()),
    [u8] => |v| Value::Blob(v.to_vec()),
    Vec<u8> => |v| Value::Blob(v.clone()),
);

impl ToSql for Value {
    fn lite(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use rusqlite::types::Value as V;
        Ok(ToSqlOutput::Owned(match self {
            Value::Null => V::Null,
            Value::Int(i) => V::Integer(*i),
            Value::Real(f) => V::Real(*f),
            Value::Text(s) => V::Text(s.clone()),
            Value::Blob(b) => V::Blob(b.clone()),
        }))
    }
    fn pg(&self) -> Value {
        self.clone()
    }
}

impl<T: ToSql> ToSql for Option<T> {
    fn lite(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Some(v) => v.lite(),
            None => Ok(ToSqlOutput::Owned(rusqlite::types::Value::Null)),
        }
    }
    fn pg(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToSql::pg)
    }
}

impl<T: ToSql + ?Sized> ToSql for &T {
    fn lite(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        (**self).lite()
    }
    fn pg(&self) -> Value {
        (**self).pg()
    }
}

/// A statement's parameters: `[]`, an array, or `params![..]`.
pub trait Params {
    /// Each parameter, in order.
    fn each(&self) -> Vec<&dyn ToSql>;
}

impl Params for [&dyn ToSql; 0] {
    fn each(&self) -> Vec<&dyn ToSql> {
        Vec::new()
    }
}

impl Params for &[&dyn ToSql] {
    fn each(&self) -> Vec<&dyn ToSql> {
        self.to_vec()
    }
}

macro_rules! params_arrays {
    ($($n:literal),*) => {$(
        impl<T: ToSql> Params for [T; $n] {
            fn each(&self) -> Vec<&dyn ToSql> {
                self.iter().map(|p| p as &dyn ToSql).collect()
            }
        }
        impl<T: ToSql> Params for &[T; $n] {
            fn each(&self) -> Vec<&dyn ToSql> {
                self.iter().map(|p| p as &dyn ToSql).collect()
            }
        }
    )*};
}
params_arrays!(1, 2, 3, 4, 5, 6, 7, 8);

/// Parameters of mixed types, as rusqlite's `params!`.
#[macro_export]
macro_rules! store_params {
    () => { &[] as &[&dyn $crate::store::db::ToSql] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::store::db::ToSql),+] as &[&dyn $crate::store::db::ToSql] };
}
pub use crate::store_params as params;

/// A Rust type a column is read into.
pub trait FromSql: rusqlite::types::FromSql + Sized {
    /// From a PostgreSQL value.
    fn from_value(v: Value) -> Result<Self, String>;
}

macro_rules! from_sql_int {
    ($($t:ty),*) => {$(
        impl FromSql for $t {
            fn from_value(v: Value) -> Result<Self, String> {
                match v {
                    Value::Int(i) => <$t>::try_from(i).map_err(|e| e.to_string()),
                    other => Err(format!("expected an integer, found {other:?}")),
                }
            }
        }
    )*};
}
from_sql_int!(i64, i32, u32);

impl FromSql for bool {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Int(i) => Ok(i != 0),
            other => Err(format!("expected a boolean, found {other:?}")),
        }
    }
}

impl FromSql for f64 {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Real(f) => Ok(f),
            Value::Int(i) => Ok(i as f64),
            other => Err(format!("expected a number, found {other:?}")),
        }
    }
}

impl FromSql for String {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s),
            Value::Int(i) => Ok(i.to_string()),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}

impl FromSql for Vec<u8> {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Blob(b) => Ok(b),
            Value::Text(s) => Ok(s.into_bytes()),
            other => Err(format!("expected bytes, found {other:?}")),
        }
    }
}

impl<T: FromSql> FromSql for Option<T> {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// A column's position (from 0). Only `usize`, so that a literal `0` needs no suffix.
pub trait RowIndex {
    /// The position.
    fn index(self) -> usize;
}

impl RowIndex for usize {
    fn index(self) -> usize {
        self
    }
}

/// One row of a result.
pub enum Row<'a> {
    /// SQLite's.
    Lite(&'a rusqlite::Row<'a>),
    /// PostgreSQL's.
    Pg(&'a tokio_postgres::Row),
}

impl Row<'_> {
    /// Column `idx` (from 0) as a `T`.
    pub fn get<I: RowIndex, T: FromSql>(&self, idx: I) -> Result<T> {
        let idx = idx.index();
        match self {
            Row::Lite(r) => Ok(r.get::<usize, T>(idx)?),
            Row::Pg(r) => {
                let v: Value = r.try_get(idx).map_err(|e| {
                    Error::Conversion(
                        idx,
                        std::error::Error::source(&e)
                            .map_or_else(|| e.to_string(), |s| s.to_string()),
                    )
                })?;
                T::from_value(v).map_err(|e| Error::Conversion(idx, e))
            }
        }
    }
}

/// Rewrites SQLite's placeholders (`?1`, `?`) as PostgreSQL's (`$1`), outside string literals
/// and quoted names, and drops SQLite's index hints (`INDEXED BY name`), which PostgreSQL's
/// planner does without.
pub fn pg_sql(sql: &str) -> String {
    let mut out = placeholders(sql);
    while let Some(at) = out.find("INDEXED BY ") {
        let name = at + "INDEXED BY ".len();
        let end = out[name..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(out.len(), |n| name + n);
        out.replace_range(at..end, "");
    }
    out
}

fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut next = 0u32;
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                out.push('$');
                if digits.is_empty() {
                    next += 1;
                    out.push_str(&next.to_string());
                } else {
                    next = next.max(digits.parse().unwrap_or(0));
                    out.push_str(&digits);
                }
            }
            None => out.push(c),
        }
    }
    out
}

/// The runtime PostgreSQL's connections live on: one thread of its own, so that a store call
/// blocks its caller on a channel wherever it is made (on tokio's blocking pool, at start-up,
/// in a CLI command, or on an async thread as SQLite's calls do), never entering a runtime
/// from within one.
fn pg_runtime() -> &'static tokio::runtime::Handle {
    static RT: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for PostgreSQL");
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("marquee-pg".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .expect("a thread for PostgreSQL");
        handle
    })
}

/// Runs `f` on the PostgreSQL runtime and waits for it.
fn pg_run<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    pg_runtime().spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().expect("the PostgreSQL runtime is gone")
}

/// How a PostgreSQL connection is made (and made again after it broke).
#[derive(Clone)]
pub struct PgTarget {
    /// The parsed URL with its password.
    pub config: tokio_postgres::Config,
    /// Statements run on every new connection (the role's settings).
    pub setup: String,
    /// TLS: the client's rustls settings (the server's certificate is verified against their
    /// roots and its name against the URL's host); `None`: no TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Logs the end of a connection's task.
async fn run_connection<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(
    connection: F,
) {
    if let Err(e) = connection.await {
        tracing::warn!(error = %e, "the connection to PostgreSQL ended");
    }
}

/// rustls settings that trust the CA certificates in `pem` (TLS 1.2 and 1.3, ring).
pub fn tls_config(pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("not PEM certificates: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("a CA certificate is unusable: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no CA certificate in it".into());
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

impl PgTarget {
    fn connect(&self) -> Result<Arc<tokio_postgres::Client>> {
        let target = self.clone();
        pg_run(async move {
            let client = match &target.tls {
                Some(tls) => {
                    let make = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                    let (client, connection) = target.config.connect(make).await?;
                    tokio::spawn(run_connection(connection));
                    client
                }
                None => {
                    let (client, connection) = target.config.connect(tokio_postgres::NoTls).await?;
                    tokio::spawn(run_connection(connection));
                    client
                }
            };
            if !target.setup.is_empty() {
                client.batch_execute(&target.setup).await?;
            }
            Ok(Arc::new(client))
        })
    }
}

/// Statements kept prepared per PostgreSQL connection, at most (then the cache starts over).
const PG_CACHE: usize = 256;

/// A PostgreSQL connection with its prepared statements.
pub struct Pg {
    client: RefCell<Arc<tokio_postgres::Client>>,
    cache: RefCell<HashMap<String, tokio_postgres::Statement>>,
    target: PgTarget,
}

impl Pg {
    fn client(&self) -> Arc<tokio_postgres::Client> {
        self.client.borrow().clone()
    }

    fn prepare(&self, sql: &str) -> Result<tokio_postgres::Statement> {
        let (client, sql) = (self.client(), pg_sql(sql));
        Ok(pg_run(async move { client.prepare(&sql).await })?)
    }

    fn statement(&self, sql: &str) -> Result<tokio_postgres::Statement> {
        if let Some(s) = self.cache.borrow().get(sql) {
            return Ok(s.clone());
        }
        let s = self.prepare(sql)?;
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= PG_CACHE {
            cache.clear();
        }
        cache.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    fn batch(&self, sql: &str) -> Result<()> {
        let (client, sql) = (self.client(), sql.to_owned());
        Ok(pg_run(async move { client.batch_execute(&sql).await })?)
    }

    fn execute(&self, stmt: &tokio_postgres::Statement, params: &dyn Params) -> Result<usize> {
        let values: Vec<Value> = params.each().iter().map(|p| p.pg()).collect();
        let (client, stmt) = (self.client(), stmt.clone());
        let n = pg_run(async move {
            let refs: Vec<&(dyn PgToSql + Sync)> =
                values.iter().map(|v| v as &(dyn PgToSql + Sync)).collect();
            client.execute(&stmt, &refs).await
        })?;
        Ok(n as usize)
    }

    fn query(
        &self,
        stmt: &tokio_postgres::Statement,
        params: &dyn Params,
    ) -> Result<Vec<tokio_postgres::Row>> {
        let values: Vec<Value> = params.each().iter().map(|p| p.pg()).collect();
        let (client, stmt) = (self.client(), stmt.clone());
        Ok(pg_run(async move {
            let refs: Vec<&(dyn PgToSql + Sync)> =
                values.iter().map(|v| v as &(dyn PgToSql + Sync)).collect();
            client.query(&stmt, &refs).await
        })?)
    }
}

enum Engine {
    Lite(rusqlite::Connection),
    Pg(Box<Pg>),
}

/// A connection to either engine.
pub struct Connection {
    engine: Engine,
    /// Its transactions take the write lock when they begin.
    writer: bool,
    /// In a transaction (so `Drop` of a [`Transaction`] knows to roll back).
    in_tx: Cell<bool>,
    /// What a writer's transaction checks after taking the write lock (the leader lease,
    /// `store::leader`).
    fence: Option<String>,
}

impl Connection {
    /// Wraps a SQLite connection.
    pub fn lite(conn: rusqlite::Connection) -> Connection {
        Connection {
            engine: Engine::Lite(conn),
            writer: false,
            in_tx: Cell::new(false),
            fence: None,
        }
    }

    /// Connects to PostgreSQL.
    pub fn pg(target: PgTarget) -> Result<Connection> {
        let client = target.connect()?;
        Ok(Connection {
            engine: Engine::Pg(Box::new(Pg {
                client: RefCell::new(client),
                cache: RefCell::new(HashMap::new()),
                target,
            })),
            writer: false,
            in_tx: Cell::new(false),
            fence: None,
        })
    }

    /// Makes this a writer: its transactions take the write lock when they begin.
    pub fn set_writer(&mut self) {
        self.writer = true;
    }

    /// Sets (or clears) the check a writer's transaction makes after taking the write lock;
    /// a transaction whose check fails does not begin.
    pub fn set_fence(&mut self, fence: Option<String>) {
        self.fence = fence;
    }

    /// Whether this is PostgreSQL.
    pub fn is_pg(&self) -> bool {
        matches!(self.engine, Engine::Pg(_))
    }

    /// The SQLite connection, for what only SQLite has (`PRAGMA`s, checkpoints).
    pub fn sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.engine {
            Engine::Lite(c) => Some(c),
            Engine::Pg(_) => None,
        }
    }

    /// Connects again when a PostgreSQL connection was closed (the server restarted, the
    /// network dropped it); the statements it had prepared are forgotten. Errors are logged and
    /// left for the next statement to report.
    pub fn reconnect_if_closed(&self) {
        if let Engine::Pg(pg) = &self.engine {
            if !pg.client().is_closed() {
                return;
            }
            match pg.target.connect() {
                Ok(c) => {
                    *pg.client.borrow_mut() = c;
                    pg.cache.borrow_mut().clear();
                    self.in_tx.set(false);
                    tracing::warn!("the connection to PostgreSQL was closed: connected again");
                }
                Err(e) => {
                    tracing::error!(error = %e, "the connection to PostgreSQL was closed and cannot be made again")
                }
            }
        }
    }

    /// Runs one statement; answers how many rows it changed.
    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize> {
        match &self.engine {
            Engine::Lite(c) => {
                Ok(c.execute(sql, rusqlite::params_from_iter(lite_params(&params)?))?)
            }
            Engine::Pg(pg) => self.fenced(sql, || pg.execute(&pg.statement(sql)?, &params)),
        }
    }

    /// Runs `f`, a write `sql` outside a transaction, in a transaction of its own when this
    /// writer is fenced (`set_fence`): a single statement is checked like a transaction.
    fn fenced<T>(&self, sql: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let first = sql.split_whitespace().next().unwrap_or("");
        let writes = ["INSERT", "UPDATE", "DELETE", "WITH"]
            .iter()
            .any(|w| first.eq_ignore_ascii_case(w));
        if self.fence.is_none() || self.in_tx.get() || !writes {
            return f();
        }
        self.begin()?;
        match f() {
            Ok(v) => {
                self.end("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.end("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Runs statements separated by `;`, without parameters.
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match &self.engine {
            Engine::Lite(c) => Ok(c.execute_batch(sql)?),
            Engine::Pg(pg) => pg.batch(sql),
        }
    }

    /// The first row of a query, through `f`; [`Error::NoRows`] when there is none.
    pub fn query_row<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.fenced(sql, || self.prepare_cached(sql)?.query_row(params, f))
    }

    /// A statement prepared for this call.
    pub fn prepare(&self, sql: &str) -> Result<Statement<'_>> {
        Ok(Statement(match &self.engine {
            Engine::Lite(c) => Stmt::Lite(c.prepare(sql)?),
            Engine::Pg(pg) => Stmt::Pg(pg, pg.prepare(sql)?),
        }))
    }

    /// A statement kept prepared for the next call with the same SQL.
    pub fn prepare_cached(&self, sql: &str) -> Result<Statement<'_>> {
        Ok(Statement(match &self.engine {
            Engine::Lite(c) => Stmt::LiteCached(c.prepare_cached(sql)?),
            Engine::Pg(pg) => Stmt::Pg(pg, pg.statement(sql)?),
        }))
    }

    /// Begins a transaction (a writer's takes the write lock first, then makes its fence's
    /// check); it rolls back unless committed.
    pub fn transaction(&mut self) -> Result<Transaction<'_>> {
        self.begin()?;
        Ok(Transaction { conn: self })
    }

    fn begin(&self) -> Result<()> {
        let begin = match (&self.engine, self.writer) {
            (Engine::Lite(_), true) => "BEGIN IMMEDIATE".to_owned(),
            (Engine::Lite(_), false) => "BEGIN DEFERRED".to_owned(),
            (Engine::Pg(_), true) => format!(
                "BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK}); {}",
                self.fence.as_deref().unwrap_or_default()
            ),
            (Engine::Pg(_), false) => "BEGIN".to_owned(),
        };
        if let Err(e) = self.execute_batch(&begin) {
            let _ = self.execute_batch("ROLLBACK");
            return Err(e);
        }
        self.in_tx.set(true);
        Ok(())
    }

    /// Ends the transaction with `COMMIT` or `ROLLBACK`. A failed `COMMIT` is rolled back, so
    /// the connection is never left inside a transaction nobody owns.
    fn end(&self, how: &str) -> Result<()> {
        let r = self.execute_batch(how);
        if r.is_err() {
            let _ = self.execute_batch("ROLLBACK");
        }
        self.in_tx.set(false);
        r
    }
}

/// The parameters as SQLite takes them.
fn lite_params<P: Params>(params: &P) -> rusqlite::Result<Vec<ToSqlOutput<'_>>> {
    params.each().into_iter().map(|p| p.lite()).collect()
}

/// An open transaction; derefs to its connection. Rolls back when dropped uncommitted.
pub struct Transaction<'c> {
    conn: &'c Connection,
}

impl Transaction<'_> {
    /// Commits it (a failed commit is rolled back).
    pub fn commit(self) -> Result<()> {
        self.conn.end("COMMIT")
    }
}

impl std::ops::Deref for Transaction<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.conn.in_tx.replace(false) {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

enum Stmt<'c> {
    Lite(rusqlite::Statement<'c>),
    LiteCached(rusqlite::CachedStatement<'c>),
    Pg(&'c Pg, tokio_postgres::Statement),
}

/// A prepared statement.
pub struct Statement<'c>(Stmt<'c>);

/// What rusqlite calls a cached statement is the same type here.
pub type CachedStatement<'c> = Statement<'c>;

impl<'c> Statement<'c> {
    fn lite(&mut self) -> Option<&mut rusqlite::Statement<'c>> {
        match &mut self.0 {
            Stmt::Lite(s) => Some(s),
            Stmt::LiteCached(s) => Some(s),
            Stmt::Pg(..) => None,
        }
    }

    /// Runs it; answers how many rows it changed.
    pub fn execute<P: Params>(&mut self, params: P) -> Result<usize> {
        if let Stmt::Pg(pg, s) = &self.0 {
            return pg.execute(s, &params);
        }
        let s = self.lite().expect("a SQLite statement");
        Ok(s.execute(rusqlite::params_from_iter(lite_params(&params)?))?)
    }

    /// Runs a query; its rows one by one.
    pub fn query<P: Params>(&mut self, params: P) -> Result<Rows<'_>> {
        if let Stmt::Pg(pg, s) = &self.0 {
            return Ok(Rows::Pg(pg.query(s, &params)?.into_iter(), None));
        }
        let s = self.lite().expect("a SQLite statement");
        Ok(Rows::Lite(s.query(rusqlite::params_from_iter(
            lite_params(&params)?,
        ))?))
    }

    /// Runs a query; each row through `f`.
    pub fn query_map<T, P: Params, F: FnMut(&Row<'_>) -> Result<T>>(
        &mut self,
        params: P,
        f: F,
    ) -> Result<MappedRows<'_, F>> {
        Ok(MappedRows {
            rows: self.query(params)?,
            f,
        })
    }

    /// The first row through `f`; [`Error::NoRows`] when there is none.
    pub fn query_row<T, P: Params>(
        &mut self,
        params: P,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut rows = self.query(params)?;
        match rows.next()? {
            Some(r) => f(&r),
            None => Err(Error::NoRows),
        }
    }

    /// Whether the query returns a row.
    pub fn exists<P: Params>(&mut self, params: P) -> Result<bool> {
        Ok(self.query(params)?.next()?.is_some())
    }
}

/// A query's rows.
pub enum Rows<'s> {
    /// SQLite's, read as they come.
    Lite(rusqlite::Rows<'s>),
    /// PostgreSQL's, all received; the one last returned.
    Pg(
        std::vec::IntoIter<tokio_postgres::Row>,
        Option<tokio_postgres::Row>,
    ),
}

impl Rows<'_> {
    /// The next row, `None` after the last.
    #[allow(clippy::should_implement_trait)] // it lends the row: not an `Iterator`
    pub fn next(&mut self) -> Result<Option<Row<'_>>> {
        match self {
            Rows::Lite(rows) => Ok(rows.next()?.map(Row::Lite)),
            Rows::Pg(rows, current) => {
                *current = rows.next();
                Ok(current.as_ref().map(Row::Pg))
            }
        }
    }
}

/// Rows through a function, as an iterator.
pub struct MappedRows<'s, F> {
    rows: Rows<'s>,
    f: F,
}

impl<T, F: FnMut(&Row<'_>) -> Result<T>> Iterator for MappedRows<'_, F> {
    type Item = Result<T>;
    fn next(&mut self) -> Option<Result<T>> {
        match self.rows.next() {
            Ok(Some(r)) => Some((self.f)(&r)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_outside_quotes() {
        assert_eq!(
            pg_sql("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND \"d?\" = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND \"d?\" = $12"
        );
        assert_eq!(
            pg_sql("VALUES (?, ?, 'it''s ?')"),
            "VALUES ($1, $2, 'it''s ?')"
        );
        assert_eq!(
            pg_sql("UPDATE messages INDEXED BY messages_queued SET a = ?1"),
            "UPDATE messages  SET a = $1"
        );
    }

    #[test]
    fn sqlite_rows_and_params_round_trip() {
        let mut c = Connection::lite(rusqlite::Connection::open_in_memory().unwrap());
        c.set_writer();
        c.execute_batch("CREATE TABLE t (a INTEGER, b TEXT, c BLOB)")
            .unwrap();
        let tx = c.transaction().unwrap();
        tx.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3)",
            params![7i64, "x", vec![1u8, 2]],
        )
        .unwrap();
        tx.execute("INSERT INTO t VALUES (?1, NULL, NULL)", [8i64])
            .unwrap();
        tx.commit().unwrap();
        {
            let rolled_back = c.transaction().unwrap();
            rolled_back.execute("DELETE FROM t", []).unwrap();
        }
        let rows: Vec<(i64, Option<String>, Option<Vec<u8>>)> = c
            .prepare("SELECT a, b, c FROM t ORDER BY a")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![(7, Some("x".into()), Some(vec![1, 2])), (8, None, None)]
        );
        let none = c
            .query_row("SELECT a FROM t WHERE a = 9", [], |r| r.get::<_, i64>(0))
            .optional()
            .unwrap();
        assert_eq!(none, None);
    }
}
