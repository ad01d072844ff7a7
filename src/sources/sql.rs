//! The `sql` source: a query polled on a schedule, against PostgreSQL or MySQL/MariaDB through
//! sqlx's native drivers (no client libraries needed).
//!
//! The configured `query` is wrapped as a derived table, and the daemon adds the cursor
//! condition and order itself:
//!
//! ```sql
//! SELECT * FROM (<query>) AS injixo_rows
//! WHERE <cursor_column> >= $lower AND <cursor_column> <= $until
//! ORDER BY <cursor_column> LIMIT <page_size>
//! ```
//!
//! * **Ties**: the lower bound is inclusive, so rows that share the last value of a full page
//!   are read again by the next page (dedupe keys absorb them) rather than skipped. A page
//!   that holds nothing but one value is followed by a query for *all* rows with that value,
//!   and the next page starts strictly after it: no tie is ever lost, however many.
//! * **Late rows**: each poll starts `overlap` before the cursor, so a row committed late with
//!   an older timestamp is still found.
//! * **The cursor** committed with a page is the newest value whose rows have all been read,
//!   and never one before the cursor the poll started from: every row at or before it was
//!   read, and a poll cut short leaves it where it was.
//! * **Kept keys**: rows read again are recognised by their keys as long as records are kept
//!   (`state.keep_sent`). When a cursor has not moved for nearly that long (a table without
//!   new rows), its look-back is no longer read, only rows after it: a quiet table does not
//!   send its last rows again once their keys are gone.
//! * **Lag**: rows younger than `lag` are left for a later poll (`$until` = now - lag).
//! * **Types**: the cursor column's type is read from the database (`describe`): a time
//!   with a zone, a time without one (read in the source's `timezone`), or an integer. Values
//!   become JSON for the map: numbers, booleans, text, and times as RFC 3339 UTC.
//! * **Snapshot** (`snapshot = true`): the query is read whole each poll; it gives every
//!   agent's current state.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Value};
use sqlx::{Column, Row, TypeInfo, ValueRef};
use tracing::{debug, info};

use super::poll::{Poll, PollError, Sink};
use super::{Source, SourceContext};
use crate::config::{SecretError, SqlConfig};

pub struct SqlSource {
    cfg: SqlConfig,
}

impl SqlSource {
    pub fn new(cfg: SqlConfig) -> Self {
        Self { cfg }
    }
}

impl Source for SqlSource {
    fn run(self: Box<Self>, ctx: SourceContext) {
        let (poller, reading) = parts(&self.cfg);
        super::poll::run(poller, ctx, self.cfg.schedule.clone(), reading);
    }
}

fn parts(cfg: &SqlConfig) -> (SqlPoller, super::poll::Reading) {
    let poller = SqlPoller {
        cfg: cfg.clone(),
        db: None,
        kind: None,
        connected_once: false,
    };
    let reading = super::poll::Reading {
        rows: cfg.rows.clone(),
        snapshot: cfg.snapshot,
        initial: cfg.initial_cursor.clone(),
        queue_log: cfg.queue_log.clone().map(|q| super::poll::TableRules {
            cfg: q,
            zone: cfg.zone.clone(),
            keep: cfg.overlap,
        }),
    };
    (poller, reading)
}

/// `preview`: the first page from `initial_cursor` into `ctx`'s scratch outbox.
pub fn preview(cfg: &SqlConfig, ctx: &SourceContext) -> Result<(), PollError> {
    let (poller, reading) = parts(cfg);
    super::poll::first_page(poller, ctx, reading)
}

/// A connection pool of either kind.
#[derive(Clone)]
pub enum Db {
    Pg(sqlx::PgPool),
    My(sqlx::MySqlPool),
    #[cfg(feature = "odbc")]
    Odbc(super::odbc::Odbc),
}

/// What the cursor column holds, and so what its bounds are bound as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CursorKind {
    /// A time with a zone (PostgreSQL `timestamptz`, MySQL `TIMESTAMP`).
    Instant,
    /// A wall-clock time (`timestamp`, `DATETIME`), read in the source's zone.
    Local,
    /// A calendar day (`DATE`), in the source's zone: bound as a date, so that a database
    /// compares it with a day and not with a time.
    Day,
    Integer,
}

/// A bound value.
#[derive(Clone, Debug)]
enum Bound {
    Instant(DateTime<Utc>),
    Local(NaiveDateTime),
    Day(chrono::NaiveDate),
    Integer(i64),
}

struct SqlPoller {
    cfg: SqlConfig,
    db: Option<Db>,
    kind: Option<CursorKind>,
    /// Whether a connection was made before (a reconnection after a failure is not news).
    connected_once: bool,
}

/// Why a connection to the database cannot be made. It never contains the URL (which holds
/// the password), only the host and port.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(
        "{key} is an ODBC connection string, and this build has no ODBC (build with --features \
         odbc)"
    )]
    NoOdbc { key: String },
    #[error("{key} is not a postgres://, mysql:// (mariadb://) URL or an odbc: connection string")]
    Scheme { key: String },
    /// The URL does not parse (in words that never quote it).
    #[error("{0}")]
    Url(String),
    /// Refused, no such host, TLS, a refused login: in the words of [`cause`].
    #[error("cannot connect to {target}: {cause}")]
    Failed { target: String, cause: String },
    #[error(
        "cannot connect to {target}: no answer within {} (a firewall, or the wrong host or \
         port?)",
        humantime::format_duration(*after)
    )]
    NoAnswer { target: String, after: Duration },
    /// The ODBC driver manager or driver refused (its own words).
    #[cfg(feature = "odbc")]
    #[error("{what}: {source}")]
    Odbc {
        what: &'static str,
        source: odbc_api::Error,
    },
}

/// Connects with the configured URL; errors never contain it (it holds the password). A first
/// connection is made on its own, so that a failure says why (refused, no such host, TLS, a
/// refused login) instead of the pool's "timed out waiting for a connection".
pub async fn connect(cfg: &SqlConfig) -> Result<Db, ConnectError> {
    let url = cfg.connection.load()?;
    let url = url.expose();
    let scheme = url
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let timeout = cfg.timeout.min(Duration::from_secs(30));
    let key = || cfg.connection.key.clone();
    match scheme.as_str() {
        "postgres" | "postgresql" => pool(url, timeout).await.map(Db::Pg),
        "mysql" | "mariadb" => pool(&url.replacen("mariadb:", "mysql:", 1), timeout)
            .await
            .map(Db::My),
        #[cfg(feature = "odbc")]
        "odbc" => {
            super::odbc::Odbc::connect(&url["odbc:".len()..], timeout, cfg.timeout).map(Db::Odbc)
        }
        #[cfg(not(feature = "odbc"))]
        "odbc" => Err(ConnectError::NoOdbc { key: key() }),
        _ => Err(ConnectError::Scheme { key: key() }),
    }
}

/// A pool of one connection to a PostgreSQL or MySQL URL, after a first connection made on
/// its own (see [`connect`]).
async fn pool<DB: sqlx::Database>(
    url: &str,
    timeout: Duration,
) -> Result<sqlx::Pool<DB>, ConnectError> {
    use sqlx::ConnectOptions;
    let target = endpoint(url);
    let failed = |e: &sqlx::Error| ConnectError::Failed {
        target: target.clone(),
        cause: cause(e),
    };
    let options: <DB::Connection as sqlx::Connection>::Options = url
        .parse()
        .map_err(|e: sqlx::Error| ConnectError::Url(describe(&e)))?;
    match tokio::time::timeout(timeout, async { options.connect().await.map(drop) }).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(failed(&e)),
        Err(_) => {
            return Err(ConnectError::NoAnswer {
                target,
                after: timeout,
            });
        }
    }
    sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(1)
        .acquire_timeout(timeout)
        .connect_with(options)
        .await
        .map_err(|e| failed(&e))
}

/// The host and port a database URL names (never its user or password), for messages.
fn endpoint(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let default = match u.scheme() {
                "mysql" | "mariadb" => 3306,
                _ => 5432,
            };
            format!(
                "{}:{}",
                u.host_str().unwrap_or("localhost"),
                u.port().unwrap_or(default)
            )
        }
        Err(_) => "the database".into(),
    }
}

/// Why a connection failed, in words an operator acts on.
fn cause(e: &sqlx::Error) -> String {
    use std::io::ErrorKind;
    match e {
        sqlx::Error::Io(io) => match io.kind() {
            ErrorKind::ConnectionRefused => {
                "connection refused (is the database running, and listening on that address \
                 and port?)"
                    .into()
            }
            ErrorKind::TimedOut => "no answer (a firewall, or the wrong host?)".into(),
            _ if io.to_string().contains("lookup") || io.to_string().contains("resolve") => {
                format!("the host name does not resolve ({io})")
            }
            _ => io.to_string(),
        },
        sqlx::Error::Tls(t) => format!("TLS: {t}"),
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // PostgreSQL 28P01/28000, MySQL 1045: a login the server refused.
            if ["28P01", "28000", "1045"].contains(&code.as_ref()) {
                format!("the login was refused: {}", db.message())
            } else {
                format!("{} ({code})", db.message())
            }
        }
        other => describe(other),
    }
}

/// A database error without anything that could hold a secret.
fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Configuration(_) => "the connection URL is not valid".into(),
        other => other.to_string(),
    }
}

impl Poll for SqlPoller {
    async fn poll(&mut self, sink: &mut Sink<'_>) -> Result<(), PollError> {
        if self.db.is_none() {
            let db = connect(&self.cfg).await?;
            if self.connected_once {
                debug!(source = %sink.ctx.name, "connected to the database again");
            } else {
                info!(source = %sink.ctx.name, "connected to the database");
                self.connected_once = true;
            }
            self.db = Some(db);
        }
        let result = self.read(sink).await;
        if let Err(PollError::Remote(_)) = &result {
            // A new connection next time: the old one may be broken.
            if let Some(db) = self.db.take() {
                match db {
                    Db::Pg(p) => p.close().await,
                    Db::My(p) => p.close().await,
                    #[cfg(feature = "odbc")]
                    Db::Odbc(_) => {}
                }
            }
        }
        result
    }
}

/// Runs one step against the database (a query, a description) within `limit`. Only these
/// are timed: a commit to the outbox is never cut off half-way, or what the source keeps in
/// memory (open agent states, the queue_log tracker) would no longer match what is on disk.
async fn remote<T>(
    limit: Duration,
    step: impl std::future::Future<Output = Result<T, PollError>>,
) -> Result<T, PollError> {
    tokio::time::timeout(limit, step).await.unwrap_or_else(|_| {
        Err(PollError::Remote(format!(
            "the query took longer than {} (timeout)",
            humantime::format_duration(limit)
        )))
    })
}

impl SqlPoller {
    async fn read(&mut self, sink: &mut Sink<'_>) -> Result<(), PollError> {
        let db = self.db.clone().expect("connected");
        let within = self.cfg.timeout;
        let base = derived(&self.cfg.query, "");
        let Some(column) = self.cfg.cursor_column.clone() else {
            let rows = remote(within, fetch(&db, &base, &[], &self.cfg.zone)).await?;
            let n = rows.len();
            sink.page(origins(rows, "snapshot"), None).await?;
            debug!(source = %sink.ctx.name, rows = n, "snapshot read");
            return Ok(());
        };
        let kind = match self.kind {
            Some(k) => k,
            None => {
                let k = remote(within, cursor_kind(&db, &base, &column)).await?;
                self.kind = Some(k);
                k
            }
        };
        let style = style(&db);
        let quoted = quote(style, &column);
        let paged = paged(style, &self.cfg.query, self.cfg.page_size as usize);
        let now = Utc::now();
        let until = now - chrono::Duration::from_std(self.cfg.lag).unwrap_or_default();
        let zone = &self.cfg.zone;
        let start = sink.cursor().unwrap_or_default().to_owned();
        let cursor = parse_bound(kind, &start, zone).map_err(|e| {
            PollError::Remote(format!(
                "the cursor {start:?} does not fit the column {column}: {e}"
            ))
        })?;
        let mut lower = cursor.clone();
        let overlap = chrono::Duration::from_std(self.cfg.overlap).unwrap_or_default();
        match &mut lower {
            Bound::Instant(t) => *t -= overlap,
            Bound::Local(t) => *t -= overlap,
            // The day that holds the time `overlap` before the cursor's midnight: a whole day
            // more for any overlap, never less than it asks.
            Bound::Day(d) => *d = (d.and_time(chrono::NaiveTime::MIN) - overlap).date(),
            Bound::Integer(_) => {}
        }
        let upper = match kind {
            CursorKind::Instant => Some(Bound::Instant(until)),
            CursorKind::Local => Some(Bound::Local(local(until, zone))),
            CursorKind::Day => Some(Bound::Day(local(until, zone).date())),
            CursorKind::Integer => None,
        };
        // Rows read again are recognised by their keys as long as records are kept
        // (`keep_sent`). A table that has had no new rows for nearly that long (its cursor has
        // not moved) would have its look-back read again after those keys are gone, and its
        // last rows sent twice: then only rows after the cursor are read. Every row at or
        // before a committed cursor has been read (see the pages below). A cursor no page has
        // committed yet (the initial one, whose own rows have not been read) has no time it
        // moved, and a day's rows go on arriving until it ends: a `DATE` cursor is quiet from
        // then.
        if let Some(moved) = sink.cursor_moved_ms()
            && quiet(
                kind,
                now.timestamp_millis() - moved.max(day_end_ms(&cursor, zone)),
                self.cfg.keys_kept,
                self.cfg.overlap + self.cfg.lag,
            )
        {
            lower = just_past(&cursor);
        }
        // The cursor committed with a page: never one before the cursor this poll started
        // from (its look-back reads earlier rows again), so a poll cut short between pages
        // leaves the cursor where it was, not further back.
        let advance = |text: &str| -> Result<Option<String>, PollError> {
            let at = parse_bound(kind, text, zone).map_err(|e| {
                PollError::Remote(format!(
                    "the value {text:?} of {column} cannot be a cursor: {e}"
                ))
            })?;
            Ok(earlier(&cursor, &at).then(|| text.to_owned()))
        };
        let page = self.cfg.page_size as usize;
        loop {
            let (p1, p2) = placeholders(&db);
            let mut sql = format!("{} WHERE {quoted} >= {p1}", paged.head);
            let mut binds = vec![lower.clone()];
            if let Some(u) = &upper {
                sql.push_str(&format!(" AND {quoted} <= {p2}"));
                binds.push(u.clone());
            }
            sql.push_str(&format!(" ORDER BY {quoted}{}", paged.tail));
            let rows = remote(within, fetch(&db, &sql, &binds, zone)).await?;
            let full = rows.len() == page;
            let last = rows.last().and_then(|r| r.get(&column)).cloned();
            let first = rows.first().and_then(|r| r.get(&column)).cloned();
            let Some(last) = last else {
                // Nothing (more) to read.
                return Ok(());
            };
            let last_text = value_text(&last);
            if !full {
                let next = advance(&last_text)?;
                sink.page(origins(rows, &column), next).await?;
                return Ok(());
            }
            if first.as_ref() == Some(&last) {
                // A whole page of one value: read all of its ties, then go past it. Times are
                // kept to the millisecond, so a value's ties are the rows up to the next one
                // (for a day or an integer, the value itself).
                let (p1, p2) = placeholders(&db);
                let tie = parse_bound(kind, &last_text, zone).map_err(PollError::Remote)?;
                let past = just_past(&tie);
                let tie_sql = format!("{base} WHERE {quoted} >= {p1} AND {quoted} < {p2}");
                let binds = [tie, past.clone()];
                let ties = remote(within, fetch(&db, &tie_sql, &binds, zone)).await?;
                let next = advance(&last_text)?;
                sink.page(origins(ties, &column), next).await?;
                lower = past;
                if !sink.wants_more() {
                    return Ok(());
                }
            } else {
                // Rows before the last value are complete; the last value's rows come again.
                // The cursor is the newest complete value, so that every row at or before a
                // committed cursor has been read.
                let before: Vec<_> = rows
                    .into_iter()
                    .filter(|r| r.get(&column) != Some(&last))
                    .collect();
                let complete = before
                    .last()
                    .and_then(|r| r.get(&column))
                    .map(value_text)
                    .unwrap_or_default();
                let next = advance(&complete)?;
                sink.page(origins(before, &column), next).await?;
                lower = parse_bound(kind, &last_text, zone).map_err(PollError::Remote)?;
                if !sink.wants_more() {
                    return Ok(());
                }
            }
        }
    }
}

fn placeholders(db: &Db) -> (&'static str, &'static str) {
    match db {
        Db::Pg(_) => ("$1", "$2"),
        _ => ("?", "?"),
    }
}

/// The SQL the daemon writes around a query, by database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "odbc"), allow(dead_code))]
enum Style {
    /// PostgreSQL: `LIMIT n`, names in `"`.
    Postgres,
    /// MySQL/MariaDB: `LIMIT n`, names in backticks.
    MySql,
    /// ODBC: `OFFSET 0 ROWS FETCH NEXT n ROWS ONLY`, names in `"`.
    Standard,
    /// ODBC to Informix: `SELECT FIRST n`, plain lower-case names unquoted.
    Informix,
}

fn style(db: &Db) -> Style {
    match db {
        Db::Pg(_) => Style::Postgres,
        Db::My(_) => Style::MySql,
        #[cfg(feature = "odbc")]
        Db::Odbc(o) if o.is_informix() => Style::Informix,
        #[cfg(feature = "odbc")]
        Db::Odbc(_) => Style::Standard,
    }
}

/// A page of the query: what comes before its `WHERE`, and what after its `ORDER BY`.
struct Paged {
    head: String,
    tail: String,
}

/// The configured query as a derived table, all its rows (`first` empty) or Informix's first
/// n (`FIRST n `).
fn derived(query: &str, first: &str) -> String {
    format!("SELECT {first}* FROM ({query}) AS injixo_rows")
}

/// The query as a derived table, limited to `n` rows as the database says it.
fn paged(style: Style, query: &str, n: usize) -> Paged {
    let (head, tail) = match style {
        Style::Informix => (derived(query, &format!("FIRST {n} ")), String::new()),
        Style::Standard => (
            derived(query, ""),
            format!(" OFFSET 0 ROWS FETCH NEXT {n} ROWS ONLY"),
        ),
        Style::Postgres | Style::MySql => (derived(query, ""), format!(" LIMIT {n}")),
    };
    Paged { head, tail }
}

/// The cursor column's name in the database's quoting.
fn quote(style: Style, column: &str) -> String {
    let plain = column.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && column
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    match style {
        Style::MySql => format!("`{}`", column.replace('`', "``")),
        Style::Informix if plain => column.to_owned(),
        _ => format!("\"{}\"", column.replace('"', "\"\"")),
    }
}

/// Rows with their origin: the cursor column's value, e.g. `updated_at=2024-05-01T10:00:00Z`.
fn origins(rows: Vec<Map<String, Value>>, column: &str) -> Vec<(String, Map<String, Value>)> {
    rows.into_iter()
        .map(|r| {
            let at = r.get(column).map(value_text).unwrap_or_default();
            (format!("{column}={at}"), r)
        })
        .collect()
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A wall-clock time in `zone`.
fn local(t: DateTime<Utc>, zone: &jiff::tz::TimeZone) -> NaiveDateTime {
    let ts = jiff::Timestamp::from_millisecond(t.timestamp_millis()).unwrap_or_default();
    let offset = zone.to_offset(ts).seconds();
    t.naive_utc() + chrono::Duration::seconds(offset as i64)
}

/// Whether `a` is before `b` (bounds of one kind; others are never before each other).
fn earlier(a: &Bound, b: &Bound) -> bool {
    match (a, b) {
        (Bound::Instant(a), Bound::Instant(b)) => a < b,
        (Bound::Local(a), Bound::Local(b)) => a < b,
        (Bound::Day(a), Bound::Day(b)) => a < b,
        (Bound::Integer(a), Bound::Integer(b)) => a < b,
        _ => false,
    }
}

/// Whether a cursor that has not moved for `quiet_ms` has rows in its look-back (`reread`:
/// overlap and lag, whole days more for a `DATE`) whose keys may be gone: records, and their
/// keys, are kept `kept` after they were read, and ten minutes allow for slow polls.
fn quiet(kind: CursorKind, quiet_ms: i64, kept: Duration, reread: Duration) -> bool {
    const MARGIN: Duration = Duration::from_secs(600);
    const DAY: u64 = 86_400;
    let reread = match kind {
        CursorKind::Day => Duration::from_secs((reread.as_secs().div_ceil(DAY) + 1) * DAY),
        _ => reread,
    };
    let within = kept.saturating_sub(reread + MARGIN);
    quiet_ms >= 0 && quiet_ms as u128 >= within.as_millis()
}

/// When a `DATE` cursor's day ends in `zone` (Unix ms); other cursors: never later than any
/// time (`i64::MIN`).
fn day_end_ms(cursor: &Bound, zone: &jiff::tz::TimeZone) -> i64 {
    use chrono::Datelike;
    let Bound::Day(d) = cursor else {
        return i64::MIN;
    };
    let Some(next) = d.succ_opt() else {
        return i64::MAX;
    };
    jiff::civil::Date::new(next.year() as i16, next.month() as i8, next.day() as i8)
        .ok()
        .and_then(|day| {
            zone.to_ambiguous_timestamp(day.to_datetime(jiff::civil::Time::midnight()))
                .compatible()
                .ok()
        })
        .map_or(i64::MAX, |t| t.as_millisecond())
}

/// The first bound after every value `cursor` stands for: times are kept to the millisecond,
/// so a row at .123456 belongs to the cursor .123.
fn just_past(cursor: &Bound) -> Bound {
    match cursor {
        Bound::Instant(t) => Bound::Instant(*t + chrono::Duration::milliseconds(1)),
        Bound::Local(t) => Bound::Local(*t + chrono::Duration::milliseconds(1)),
        Bound::Day(d) => Bound::Day(d.succ_opt().unwrap_or(*d)),
        Bound::Integer(n) => Bound::Integer(n.saturating_add(1)),
    }
}

/// A cursor text as a bound of the column's kind.
fn parse_bound(kind: CursorKind, text: &str, zone: &jiff::tz::TimeZone) -> Result<Bound, String> {
    match kind {
        CursorKind::Integer => text
            .trim()
            .parse::<i64>()
            .map(Bound::Integer)
            .map_err(|_| format!("{text:?} is not an integer")),
        _ => {
            // A day (a DATE column's value, or a `since` date) against a column without a
            // zone is that day where the database's times are: taken as midnight UTC, it would
            // start later that day east of Greenwich.
            let day = text.trim().parse::<chrono::NaiveDate>().ok();
            let utc = match day {
                Some(_) if kind != CursorKind::Instant => None,
                _ => {
                    let ts = crate::normalize::time::parse_since(text)?;
                    Some(
                        DateTime::from_timestamp_millis(ts.as_millisecond())
                            .ok_or_else(|| format!("{text:?} is out of range"))?,
                    )
                }
            };
            Ok(match (kind, day, utc) {
                (CursorKind::Instant, _, Some(utc)) => Bound::Instant(utc),
                (CursorKind::Day, Some(day), _) => Bound::Day(day),
                (CursorKind::Day, None, Some(utc)) => Bound::Day(local(utc, zone).date()),
                (_, Some(day), _) => Bound::Local(day.and_time(chrono::NaiveTime::MIN)),
                (_, None, Some(utc)) => Bound::Local(local(utc, zone)),
                (_, None, None) => unreachable!("a time was parsed"),
            })
        }
    }
}

/// The kind of the cursor column, from the database's description of the query.
async fn cursor_kind(db: &Db, base: &str, column: &str) -> Result<CursorKind, PollError> {
    use sqlx::SqlSafeStr;
    use sqlx::{Executor, Statement};
    let sql = || sqlx::AssertSqlSafe(base.to_owned()).into_sql_str();
    let types: Vec<(String, String)> = match db {
        Db::Pg(p) => p
            .prepare(sql())
            .await
            .map_err(|e| PollError::Remote(format!("the query does not run: {}", describe(&e))))?
            .columns()
            .iter()
            .map(|c| (c.name().to_owned(), c.type_info().name().to_owned()))
            .collect(),
        Db::My(p) => p
            .prepare(sql())
            .await
            .map_err(|e| PollError::Remote(format!("the query does not run: {}", describe(&e))))?
            .columns()
            .iter()
            .map(|c| (c.name().to_owned(), c.type_info().name().to_owned()))
            .collect(),
        #[cfg(feature = "odbc")]
        Db::Odbc(o) => {
            use super::odbc::Kind;
            let columns = o.describe(base)?;
            let Some((_, k)) = columns.iter().find(|(n, _)| n == column) else {
                let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
                return Err(PollError::Remote(format!(
                    "cursor_column {column:?} is not a column of the query; it has {}",
                    names.join(", ")
                )));
            };
            return match k {
                Kind::Local => Ok(CursorKind::Local),
                Kind::Date => Ok(CursorKind::Day),
                Kind::Integer => Ok(CursorKind::Integer),
                other => Err(PollError::Remote(format!(
                    "cursor_column {column:?} is of kind {other:?}: use a time or an integer column"
                ))),
            };
        }
    };
    let Some((_, ty)) = types.iter().find(|(n, _)| n == column) else {
        let names: Vec<&str> = types.iter().map(|(n, _)| n.as_str()).collect();
        return Err(PollError::Remote(format!(
            "cursor_column {column:?} is not a column of the query; it has {}",
            names.join(", ")
        )));
    };
    let kind = match (db, ty.to_ascii_uppercase().as_str()) {
        (_, "TIMESTAMPTZ") | (Db::My(_), "TIMESTAMP") => CursorKind::Instant,
        (_, "TIMESTAMP" | "DATETIME") => CursorKind::Local,
        (_, "DATE") => CursorKind::Day,
        (_, t) if t.contains("INT") => CursorKind::Integer,
        (_, t) => {
            return Err(PollError::Remote(format!(
                "cursor_column {column:?} is of type {t}: use a time or an integer column"
            )));
        }
    };
    Ok(kind)
}

/// Runs a query and returns its rows as JSON objects.
async fn fetch(
    db: &Db,
    sql: &str,
    binds: &[Bound],
    zone: &jiff::tz::TimeZone,
) -> Result<Vec<Map<String, Value>>, PollError> {
    let err = |e: sqlx::Error| PollError::Remote(describe(&e));
    match db {
        Db::Pg(pool) => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
            for b in binds {
                q = match b {
                    Bound::Instant(t) => q.bind(*t),
                    Bound::Local(t) => q.bind(*t),
                    Bound::Day(d) => q.bind(*d),
                    Bound::Integer(n) => q.bind(*n),
                };
            }
            let rows = q.fetch_all(pool).await.map_err(err)?;
            rows.iter().map(|r| pg_row(r, zone)).collect()
        }
        Db::My(pool) => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
            for b in binds {
                q = match b {
                    Bound::Instant(t) => q.bind(*t),
                    Bound::Local(t) => q.bind(*t),
                    Bound::Day(d) => q.bind(*d),
                    Bound::Integer(n) => q.bind(*n),
                };
            }
            let rows = q.fetch_all(pool).await.map_err(err)?;
            rows.iter().map(|r| my_row(r, zone)).collect()
        }
        #[cfg(feature = "odbc")]
        Db::Odbc(o) => {
            use super::odbc::{Params, date, timestamp};
            let params = match binds.first() {
                None => Params::None,
                Some(Bound::Integer(_)) => Params::Integers(
                    binds
                        .iter()
                        .map(|b| match b {
                            Bound::Integer(n) => *n,
                            _ => unreachable!("bounds of one kind"),
                        })
                        .collect(),
                ),
                Some(Bound::Day(_)) => Params::Dates(
                    binds
                        .iter()
                        .map(|b| match b {
                            Bound::Day(d) => date(*d),
                            _ => unreachable!("bounds of one kind"),
                        })
                        .collect(),
                ),
                Some(_) => Params::Times(
                    binds
                        .iter()
                        .map(|b| match b {
                            Bound::Local(t) => timestamp(*t),
                            Bound::Instant(t) => timestamp(local(*t, zone)),
                            Bound::Day(_) | Bound::Integer(_) => {
                                unreachable!("bounds of one kind")
                            }
                        })
                        .collect(),
                ),
            };
            o.fetch(sql, &params, zone)
        }
    }
}

/// A wall-clock time read in `zone`, as RFC 3339 UTC.
fn local_to_json(t: NaiveDateTime, zone: &jiff::tz::TimeZone) -> Value {
    // The same rules as for files: a skipped local time moves forward, a repeated one is
    // its first occurrence.
    let text = t.format("%Y-%m-%dT%H:%M:%S%.f").to_string();
    match text
        .parse::<jiff::civil::DateTime>()
        .ok()
        .and_then(|civil| zone.to_ambiguous_timestamp(civil).compatible().ok())
    {
        Some(ts) => Value::String(crate::normalize::time::to_api(ts)),
        None => Value::String(text),
    }
}

fn instant_to_json(t: DateTime<Utc>) -> Value {
    match jiff::Timestamp::from_millisecond(t.timestamp_millis()) {
        Ok(ts) => Value::String(crate::normalize::time::to_api(ts)),
        Err(_) => Value::String(t.to_rfc3339()),
    }
}

/// A DECIMAL or NUMERIC value (MariaDB's `COALESCE(duration, 0)` is one, and so are many
/// vendors' seconds columns) as a JSON number: whole numbers exactly, others as the nearest
/// double, which the map reads as seconds, counts or amounts.
fn decimal(d: rust_decimal::Decimal) -> Value {
    use rust_decimal::prelude::ToPrimitive;
    let d = d.normalize();
    if d.scale() == 0
        && let Some(n) = d.to_i64()
    {
        return Value::from(n);
    }
    d.to_f64()
        .map_or_else(|| Value::String(d.to_string()), Value::from)
}

/// A PostgreSQL NUMERIC that `rust_decimal` cannot hold (NaN, ±Infinity, more than 28
/// digits), from its binary form: the number as text, which the map reads (a NaN then parks
/// its row with the reason instead of failing the whole page).
fn pg_numeric_text(row: &sqlx::postgres::PgRow, i: usize) -> Option<Value> {
    let raw = row.try_get_raw(i).ok()?;
    let bytes = raw.as_bytes().ok()?;
    numeric_from_binary(bytes).map(|text| match text.parse::<f64>() {
        Ok(n) if n.is_finite() => Value::from(n),
        _ => Value::String(text),
    })
}

/// PostgreSQL's binary NUMERIC (digit count, weight, sign and display scale, then base-10000
/// digits) as decimal text.
fn numeric_from_binary(b: &[u8]) -> Option<String> {
    let word =
        |at: usize| -> Option<u16> { Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?])) };
    let (ndigits, weight, sign, dscale) = (word(0)? as usize, word(2)? as i16, word(4)?, word(6)?);
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|d| word(8 + 2 * d))
        .collect::<Option<_>>()?;
    let digit = |k: i32| -> u16 {
        usize::try_from(k)
            .ok()
            .and_then(|k| digits.get(k))
            .copied()
            .unwrap_or(0)
    };
    let mut int = String::new();
    for k in 0..=i32::from(weight) {
        let d = digit(k);
        if int.is_empty() {
            if d != 0 {
                int.push_str(&d.to_string());
            }
        } else {
            int.push_str(&format!("{d:04}"));
        }
    }
    if int.is_empty() {
        int.push('0');
    }
    let mut frac = String::new();
    let mut k = i32::from(weight) + 1;
    while frac.len() < usize::from(dscale) {
        frac.push_str(&format!("{:04}", digit(k)));
        k += 1;
    }
    frac.truncate(usize::from(dscale));
    let sign = if sign == 0x4000 { "-" } else { "" };
    Some(match frac.is_empty() {
        true => format!("{sign}{int}"),
        false => format!("{sign}{int}.{frac}"),
    })
}

fn unsupported(column: &str, ty: &str) -> PollError {
    PollError::Remote(format!(
        "column {column:?} has type {ty}, which is not read: cast it in the query \
         (e.g. CAST({column} AS CHAR) or {column}::text)"
    ))
}

/// A database row as a JSON object: each column decoded by `decode` from its type's name
/// (`None`: a type that is not read), NULL as null.
fn row_json<R>(
    row: &R,
    decode: impl Fn(&R, usize, &str) -> Option<Result<Value, sqlx::Error>>,
) -> Result<Map<String, Value>, PollError>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
{
    let mut out = Map::new();
    for (i, col) in row.columns().iter().enumerate() {
        let name = col.name();
        let raw = row
            .try_get_raw(i)
            .map_err(|e| PollError::Remote(e.to_string()))?;
        let value = if raw.is_null() {
            Value::Null
        } else {
            let ty = raw.type_info().name().to_ascii_uppercase();
            match decode(row, i, &ty) {
                Some(v) => v.map_err(|e| PollError::Remote(format!("column {name:?}: {e}")))?,
                None => return Err(unsupported(name, &ty)),
            }
        };
        out.insert(name.to_owned(), value);
    }
    Ok(out)
}

fn pg_row(
    row: &sqlx::postgres::PgRow,
    zone: &jiff::tz::TimeZone,
) -> Result<Map<String, Value>, PollError> {
    row_json(row, |row, i, ty| {
        Some(match ty {
            "BOOL" => row.try_get::<bool, _>(i).map(Value::Bool),
            "INT2" => row.try_get::<i16, _>(i).map(Value::from),
            "INT4" => row.try_get::<i32, _>(i).map(Value::from),
            "INT8" => row.try_get::<i64, _>(i).map(Value::from),
            "FLOAT4" => row.try_get::<f32, _>(i).map(|v| Value::from(v as f64)),
            "FLOAT8" => row.try_get::<f64, _>(i).map(Value::from),
            "NUMERIC" => row
                .try_get::<rust_decimal::Decimal, _>(i)
                .map(decimal)
                .or_else(|e| pg_numeric_text(row, i).ok_or(e)),
            "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "CITEXT" => {
                row.try_get::<String, _>(i).map(Value::String)
            }
            "TIMESTAMPTZ" => row.try_get::<DateTime<Utc>, _>(i).map(instant_to_json),
            "TIMESTAMP" => row
                .try_get::<NaiveDateTime, _>(i)
                .map(|t| local_to_json(t, zone)),
            "DATE" => row
                .try_get::<chrono::NaiveDate, _>(i)
                .map(|d| Value::String(d.to_string())),
            "JSON" | "JSONB" => row.try_get::<Value, _>(i),
            _ => return None,
        })
    })
}

fn my_row(
    row: &sqlx::mysql::MySqlRow,
    zone: &jiff::tz::TimeZone,
) -> Result<Map<String, Value>, PollError> {
    row_json(row, |row, i, ty| {
        Some(match ty {
            "BOOLEAN" => row.try_get::<bool, _>(i).map(Value::Bool),
            "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" => {
                row.try_get::<i64, _>(i).map(Value::from)
            }
            "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "MEDIUMINT UNSIGNED" | "INT UNSIGNED"
            | "BIGINT UNSIGNED" => row.try_get::<u64, _>(i).map(Value::from),
            "FLOAT" => row.try_get::<f32, _>(i).map(|v| Value::from(v as f64)),
            "DOUBLE" => row.try_get::<f64, _>(i).map(Value::from),
            "DECIMAL" | "DECIMAL UNSIGNED" => {
                row.try_get::<rust_decimal::Decimal, _>(i).map(decimal)
            }
            "VARCHAR" | "CHAR" | "TEXT" | "TINYTEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" => {
                row.try_get::<String, _>(i).map(Value::String)
            }
            "TIMESTAMP" => row.try_get::<DateTime<Utc>, _>(i).map(instant_to_json),
            "DATETIME" => row
                .try_get::<NaiveDateTime, _>(i)
                .map(|t| local_to_json(t, zone)),
            "DATE" => row
                .try_get::<chrono::NaiveDate, _>(i)
                .map(|d| Value::String(d.to_string())),
            "JSON" => row.try_get::<Value, _>(i),
            _ => return None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::{
        Bound, CursorKind, Style, day_end_ms, just_past, numeric_from_binary, paged, quiet, quote,
    };
    use std::time::Duration;

    #[test]
    fn a_cursor_is_quiet_once_its_look_back_may_outlive_the_keys() {
        let (h, d) = (3_600_000_i64, 86_400_000_i64);
        let kept = Duration::from_secs(14 * 86_400);
        let reread = Duration::from_secs(7_200);
        // 14 days less 2 hours of look-back and 10 minutes of margin.
        let within = 14 * d - 2 * h - 600_000;
        assert!(!quiet(CursorKind::Instant, within - 1, kept, reread));
        assert!(quiet(CursorKind::Instant, within, kept, reread));
        // A day reads whole days: 2 hours are a day, and the cursor's own day one more.
        let within = 14 * d - 2 * d - 600_000;
        assert!(!quiet(CursorKind::Day, within - 1, kept, reread));
        assert!(quiet(CursorKind::Day, within, kept, reread));
        // A clock that went back is not quiet.
        assert!(!quiet(
            CursorKind::Integer,
            -1,
            Duration::ZERO,
            Duration::ZERO
        ));
        let day = chrono::NaiveDate::from_ymd_opt(2024, 5, 1).unwrap();
        assert!(
            matches!(just_past(&Bound::Day(day)), Bound::Day(d) if d == day.succ_opt().unwrap())
        );
        assert!(matches!(just_past(&Bound::Integer(7)), Bound::Integer(8)));
        // A day is quiet from its end, in the source's zone: rows of it arrive until then.
        let berlin = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
        assert_eq!(
            day_end_ms(&Bound::Day(day), &berlin),
            jiff::Timestamp::from_second(1_714_600_800)
                .unwrap()
                .as_millisecond(),
            "2024-05-02T00:00+02:00"
        );
        assert_eq!(day_end_ms(&Bound::Integer(7), &berlin), i64::MIN);
    }

    #[test]
    fn a_page_is_limited_and_the_cursor_named_as_each_database_says_it() {
        let q = "SELECT a FROM t";
        let page = |style| {
            let p = paged(style, q, 500);
            format!("{} WHERE c >= ? ORDER BY c{}", p.head, p.tail)
        };
        assert_eq!(
            page(Style::Postgres),
            "SELECT * FROM (SELECT a FROM t) AS injixo_rows WHERE c >= ? ORDER BY c LIMIT 500"
        );
        assert_eq!(
            page(Style::Standard),
            "SELECT * FROM (SELECT a FROM t) AS injixo_rows WHERE c >= ? ORDER BY c \
             OFFSET 0 ROWS FETCH NEXT 500 ROWS ONLY"
        );
        assert_eq!(
            page(Style::Informix),
            "SELECT FIRST 500 * FROM (SELECT a FROM t) AS injixo_rows WHERE c >= ? ORDER BY c"
        );
        assert_eq!(quote(Style::Postgres, "row_date"), "\"row_date\"");
        assert_eq!(quote(Style::MySql, "row`date"), "`row``date`");
        // Informix reads "row_date" as text unless DELIMIDENT is set: plain names go bare.
        assert_eq!(quote(Style::Informix, "row_date"), "row_date");
        assert_eq!(quote(Style::Informix, "RowDate"), "\"RowDate\"");
        assert_eq!(quote(Style::Informix, "2nd"), "\"2nd\"");
    }

    /// ndigits, weight, sign, dscale, then the base-10000 digits, big-endian.
    fn binary(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [digits.len() as u16, weight as u16, sign, dscale] {
            b.extend(w.to_be_bytes());
        }
        for d in digits {
            b.extend(d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numerics_rust_decimal_cannot_hold_are_read_as_text() {
        assert_eq!(
            numeric_from_binary(&binary(1, 0, 3, &[1, 2345, 6780])).as_deref(),
            Some("12345.678")
        );
        assert_eq!(
            numeric_from_binary(&binary(-1, 0, 2, &[500])).as_deref(),
            Some("0.05")
        );
        assert_eq!(
            numeric_from_binary(&binary(8, 0x4000, 0, &[1])).as_deref(),
            Some("-100000000000000000000000000000000")
        );
        assert_eq!(
            numeric_from_binary(&binary(0, 0xC000, 0, &[])).as_deref(),
            Some("NaN")
        );
        assert_eq!(
            numeric_from_binary(&binary(0, 0xD000, 0, &[])).as_deref(),
            Some("Infinity")
        );
        assert_eq!(
            numeric_from_binary(&binary(0, 0, 0, &[])).as_deref(),
            Some("0")
        );
        assert_eq!(numeric_from_binary(&[0, 1]), None, "cut short");
    }
}
