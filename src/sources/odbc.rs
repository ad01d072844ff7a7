//! The `sql` source over ODBC (cargo feature `odbc`), for databases without a native driver
//! here: SQL Server, Informix, DB2, ... through the driver the operator installed (on Windows
//! the system's ODBC manager; elsewhere unixODBC).
//!
//! `connection` is `odbc:` followed by an ODBC connection string, e.g.
//! `odbc:Driver={ODBC Driver 18 for SQL Server};Server=acd-db;Database=reports;UID=injixo;PWD=...`.
//! ODBC calls block; they run on the source's own thread, which is what that thread is for.
//!
//! Differences from the native drivers: parameters are `?`; a page is limited with the
//! standard `OFFSET 0 ROWS FETCH NEXT n ROWS ONLY` (SQL Server 2012+, PostgreSQL, Oracle 12c+,
//! DB2), or on Informix (which the driver names as the database) with `SELECT FIRST n`;
//! identifiers are quoted with `"`, except on Informix a plain lower-case name, as Informix
//! reads `"name"` as text unless the connection sets `DELIMIDENT=y`; times come without a zone
//! and are read in the source's `timezone`, as times with a zone are not described alike by
//! all drivers (cast a `datetimeoffset` to UTC `datetime2` in the query).

use std::sync::{Arc, Mutex};

use odbc_api::{
    ConnectionOptions, Cursor, DataType, ResultSetMetadata,
    buffers::TextRowSet,
    parameter::WithDataType,
    sys::{Date, Timestamp},
};
use serde_json::{Map, Value};

use super::poll::PollError;
use super::sql::ConnectError;

/// One connection, shared by the poller's clones, the time a query may take, and whether the
/// database is Informix (which pages and quotes its own way).
#[derive(Clone)]
pub struct Odbc(
    Arc<Mutex<odbc_api::Connection<'static>>>,
    std::time::Duration,
    bool,
);

/// Whether the database the driver names (`SQL_DBMS_NAME`) is Informix: IBM's Informix driver
/// says "Informix Dynamic Server", its DRDA driver "IDS/UNIX64" and the like.
pub fn is_informix(dbms: &str) -> bool {
    let name = dbms.trim().to_ascii_lowercase();
    name.contains("informix") || name == "ids" || name.starts_with("ids/")
}

/// A column type, as far as reading it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Integer,
    Number,
    Bool,
    /// A time without a zone.
    Local,
    /// A calendar day: given as it is (`2024-05-01`), as the native drivers give it.
    Date,
    Text,
}

fn kind(t: DataType) -> Kind {
    match t {
        DataType::Integer | DataType::SmallInt | DataType::BigInt | DataType::TinyInt => {
            Kind::Integer
        }
        DataType::Numeric { scale: 0, .. } | DataType::Decimal { scale: 0, .. } => Kind::Integer,
        DataType::Numeric { .. }
        | DataType::Decimal { .. }
        | DataType::Float { .. }
        | DataType::Real
        | DataType::Double => Kind::Number,
        DataType::Bit => Kind::Bool,
        DataType::Timestamp { .. } => Kind::Local,
        DataType::Date => Kind::Date,
        _ => Kind::Text,
    }
}

fn remote(e: odbc_api::Error) -> PollError {
    PollError::Remote(format!("ODBC: {e}"))
}

impl Odbc {
    /// Connects with an ODBC connection string (never part of an error).
    pub fn connect(
        connection_string: &str,
        login_timeout: std::time::Duration,
        query_timeout: std::time::Duration,
    ) -> Result<Self, ConnectError> {
        let env = odbc_api::environment().map_err(|source| ConnectError::Odbc {
            what: "the ODBC driver manager",
            source,
        })?;
        let options = ConnectionOptions {
            login_timeout_sec: Some(login_timeout.as_secs().max(1) as u32),
            ..ConnectionOptions::default()
        };
        let conn = env
            .connect_with_connection_string(connection_string, options)
            .map_err(|source| ConnectError::Odbc {
                what: "ODBC connect",
                source,
            })?;
        // A driver that cannot name its database speaks the standard.
        let dbms = conn.database_management_system_name().unwrap_or_default();
        tracing::debug!(database = %dbms, "connected over ODBC");
        let informix = is_informix(&dbms);
        Ok(Self(Arc::new(Mutex::new(conn)), query_timeout, informix))
    }

    pub fn is_informix(&self) -> bool {
        self.2
    }

    /// The query's columns and their kinds, from preparing it.
    pub fn describe(&self, sql: &str) -> Result<Vec<(String, Kind)>, PollError> {
        let conn = self.0.lock().expect("odbc connection");
        let mut prepared = conn.prepare(sql).map_err(remote)?;
        let n = prepared.num_result_cols().map_err(remote)?;
        (1..=n as u16)
            .map(|i| {
                Ok((
                    prepared.col_name(i).map_err(remote)?,
                    kind(prepared.col_data_type(i).map_err(remote)?),
                ))
            })
            .collect()
    }

    /// Runs `sql` with its `?` parameters, all integers or all wall-clock times, and returns
    /// the rows as JSON objects (times as RFC 3339 UTC, read in `zone`).
    pub fn fetch(
        &self,
        sql: &str,
        params: &Params,
        zone: &jiff::tz::TimeZone,
    ) -> Result<Vec<Map<String, Value>>, PollError> {
        let conn = self.0.lock().expect("odbc connection");
        let secs = Some(self.1.as_secs().max(1) as usize);
        let cursor = match params {
            Params::None => conn.execute(sql, (), secs),
            Params::Integers(v) => match v.as_slice() {
                [a] => conn.execute(sql, (a,), secs),
                [a, b] => conn.execute(sql, (a, b), secs),
                _ => unreachable!("one or two bounds"),
            },
            Params::Times(v) => match v.as_slice() {
                [a] => conn.execute(sql, (a,), secs),
                [a, b] => conn.execute(sql, (a, b), secs),
                _ => unreachable!("one or two bounds"),
            },
            Params::Dates(v) => match v.as_slice() {
                [a] => conn.execute(sql, (a,), secs),
                [a, b] => conn.execute(sql, (a, b), secs),
                _ => unreachable!("one or two bounds"),
            },
        }
        .map_err(remote)?;
        let Some(mut cursor) = cursor else {
            return Ok(Vec::new());
        };
        let n = cursor.num_result_cols().map_err(remote)? as u16;
        let mut columns = Vec::with_capacity(n as usize);
        for i in 1..=n {
            columns.push((
                cursor.col_name(i).map_err(remote)?,
                kind(cursor.col_data_type(i).map_err(remote)?),
            ));
        }
        let buffer = TextRowSet::for_cursor(1000, &mut cursor, Some(4096)).map_err(remote)?;
        let mut rows = Vec::new();
        let mut block = cursor.bind_buffer(buffer).map_err(remote)?;
        while let Some(batch) = block.fetch().map_err(remote)? {
            for r in 0..batch.num_rows() {
                let mut out = Map::new();
                for (c, (name, kind)) in columns.iter().enumerate() {
                    let value = match batch.at(c, r) {
                        None => Value::Null,
                        Some(bytes) => {
                            value(String::from_utf8_lossy(bytes).trim_end(), *kind, zone)
                        }
                    };
                    out.insert(name.clone(), value);
                }
                rows.push(out);
            }
        }
        Ok(rows)
    }
}

/// A query's parameters: ODBC binds them typed, so all of one kind.
pub enum Params {
    None,
    Integers(Vec<i64>),
    Times(Vec<WithDataType<Timestamp>>),
    Dates(Vec<WithDataType<Date>>),
}

/// A day as an ODBC date parameter.
pub fn date(d: chrono::NaiveDate) -> WithDataType<Date> {
    use chrono::Datelike;
    WithDataType {
        value: Date {
            year: d.year() as i16,
            month: d.month() as u16,
            day: d.day() as u16,
        },
        data_type: DataType::Date,
    }
}

/// A wall-clock time as an ODBC timestamp parameter (milliseconds).
pub fn timestamp(t: chrono::NaiveDateTime) -> WithDataType<Timestamp> {
    use chrono::{Datelike, Timelike};
    let value = Timestamp {
        year: t.year() as i16,
        month: t.month() as u16,
        day: t.day() as u16,
        hour: t.hour() as u16,
        minute: t.minute() as u16,
        second: t.second() as u16,
        fraction: t.nanosecond() / 1_000_000 * 1_000_000,
    };
    WithDataType::new(value, DataType::Timestamp { precision: 3 })
}

fn value(text: &str, kind: Kind, zone: &jiff::tz::TimeZone) -> Value {
    match kind {
        Kind::Integer => text
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(text.to_owned())),
        Kind::Number => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(text.to_owned())),
        Kind::Bool => Value::Bool(matches!(text, "1" | "t" | "true" | "TRUE" | "True")),
        Kind::Local => {
            let civil = text.replacen(' ', "T", 1).parse::<jiff::civil::DateTime>();
            match civil
                .ok()
                .and_then(|c| zone.to_ambiguous_timestamp(c).compatible().ok())
            {
                Some(ts) => Value::String(crate::normalize::time::to_api(ts)),
                None => Value::String(text.to_owned()),
            }
        }
        Kind::Date | Kind::Text => Value::String(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn informix_is_told_by_the_name_its_driver_gives() {
        assert!(is_informix("Informix Dynamic Server"));
        assert!(is_informix("IDS/UNIX64"));
        assert!(is_informix("IBM INFORMIX-OnLine"));
        assert!(!is_informix("PostgreSQL"));
        assert!(!is_informix("Microsoft SQL Server"));
        assert!(!is_informix("IDSX"));
    }

    #[test]
    fn values_are_read_by_their_column_kind() {
        let berlin = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
        assert_eq!(value("42", Kind::Integer, &berlin), Value::from(42));
        assert_eq!(value("1.5", Kind::Number, &berlin), Value::from(1.5));
        assert_eq!(value("1", Kind::Bool, &berlin), Value::Bool(true));
        assert_eq!(
            value("2024-05-01 10:00:00.250", Kind::Local, &berlin),
            Value::String("2024-05-01T08:00:00.25Z".into())
        );
        assert_eq!(
            value("2024-05-01", Kind::Date, &berlin),
            Value::String("2024-05-01".into())
        );
    }
}
