//! `{ expr = "..." }` in `[source.map]`, `key` and `skip_if`: the Common Expression Language
//! over a row's columns.
//!
//! CEL is typed, side-effect free and always terminates, which is why a map takes it over a
//! scripting language. Columns are variables when their names are identifiers, and every column
//! is `row["any name"]`; their values are text. Besides CEL's standard functions and its string
//! extension (`trim()`, `upperAscii()`, `split()` ...), the helpers read what a map reads:
//!
//! * `seconds(x)`: seconds from `124.6`, `124,6`, `h:mm:ss` or `mm:ss` (plain numbers are
//!   milliseconds with `duration_unit = "ms"`), or from a number;
//! * `span(x)`: the same as a CEL duration, to add to a time;
//! * `local(text)` / `local(text, format)`: a time read in the source's `timezone`, with its
//!   `timestamp_format` or the strftime pattern given;
//! * `endAfter(start, end)`: `end`, a day later for as long as it lies before `start` (an end
//!   time of day that crosses midnight).
//!
//! An expression is compiled once, when the configuration is loaded, and checked for types
//! there: a syntax error, a function that does not exist, text compared with a number or a
//! result that cannot fill the field is a configuration problem naming the column inside the
//! expression. An error while evaluating a row parks that row with the reason.
//!
//! Here: [`Expr`] (compile, evaluate). The type checker is [`check`], the helpers
//! [`functions`], and the evaluation of common shapes without the interpreter [`direct`].

mod check;
mod direct;
mod functions;

use std::borrow::Cow;
use std::sync::Arc;

use cel::common::types::CelString;
use cel::common::value::CowVal;
use cel::{ExecutionError, Program, Value};

use super::map::Row;
use super::time::TimeParser;
use direct::Direct;
use functions::{Root, env, kind_of, root};

/// What reading a source's values needs: its time zone and format, and the duration unit.
#[derive(Clone, Debug)]
pub struct Reading {
    pub time: TimeParser,
    /// Plain numbers given to `seconds()` and `span()` are milliseconds.
    pub millis: bool,
}

/// What an expression must give, checked when it is compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// true or false, or text read as such (`offered`, `handled`).
    Bool,
    /// true or false only (`skip_if`).
    Condition,
    /// seconds: a number or a duration (`duration`).
    Seconds,
    /// a time (`timestamp`, `startTime`, `endTime`), or text read as one.
    Time,
    /// text or a whole number (names, identifiers, `key`, a `values` lookup).
    Text,
    /// a whole number of contacts (`expand = "interval"`).
    Count,
}

/// A compiled expression.
#[derive(Clone)]
pub struct Expr {
    source: String,
    program: Arc<Program>,
    /// The columns it reads, by variable or as `row["..."]`.
    columns: Vec<String>,
    /// Whether it reads `row`.
    uses_row: bool,
    context: Arc<Root>,
    /// The direct form, for the common shapes ([`direct`]).
    direct: Option<Direct>,
    /// Plain numbers given to `seconds()` are milliseconds.
    millis: bool,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Expr").field(&self.source).finish()
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// What an expression gave for a row.
#[derive(Debug, PartialEq)]
pub enum Out {
    Bool(bool),
    Number(f64),
    Int(i64),
    Text(String),
    Time(jiff::Timestamp),
    Seconds(f64),
}

impl Expr {
    /// Compiles and checks `source`. `columns`, when the source knows them (a `columns` list),
    /// are the only variables it may name. The error says where inside the expression.
    pub fn compile(
        source: &str,
        want: Want,
        reading: &Reading,
        columns: Option<&[String]>,
    ) -> Result<Self, String> {
        let program = env().compile(source).map_err(|e| {
            let first = e.errors.first();
            let (line, col) = first.map(|e| e.pos).unwrap_or((1, 0));
            let msg = first
                .map(|e| e.msg.clone())
                .unwrap_or_else(|| e.to_string());
            // ANTLR lists every token it could take: say what is wrong instead.
            let msg = if msg.contains("'<EOF>'") {
                "it ends where more is expected".to_owned()
            } else {
                match msg.find(" expecting ") {
                    Some(cut) => msg[..cut].replace("Syntax error: ", ""),
                    None => msg.replace("Syntax error: ", ""),
                }
            };
            let at = if source.contains('\n') {
                format!("line {line}, column {}", col + 1)
            } else {
                format!("column {}", col + 1)
            };
            format!("expression {source:?} does not parse at {at}: {msg}")
        })?;
        let (columns, uses_row) = check::check(&program, source, want, columns)?;
        let direct = Direct::compile(program.expression());
        Ok(Self {
            source: source.to_owned(),
            program: Arc::new(program),
            columns,
            uses_row,
            context: Arc::new(root(reading)),
            direct,
            millis: reading.millis,
        })
    }

    /// The columns it reads (for telling whether a column that cannot be read matters).
    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(String::as_str)
    }

    /// Evaluates it for a row.
    pub fn eval(&self, row: &dyn Row) -> Result<Out, String> {
        if let Some(out) = self.direct.as_ref().and_then(|d| d.eval(row, self.millis)) {
            return Ok(out);
        }
        self.interpret(row)
    }

    /// Evaluates it with the CEL interpreter.
    fn interpret(&self, row: &dyn Row) -> Result<Out, String> {
        let mut values: Vec<Option<Cow<'_, str>>> = Vec::with_capacity(self.columns.len());
        for c in &self.columns {
            values.push(row.get(c));
        }
        let bound = Bound {
            names: &self.columns,
            values: &values,
            row: self.uses_row,
        };
        let mut scope = self.context.0.new_inner_scope();
        scope.set_variable_resolver(&bound);
        let value = self.program.execute(&scope).map_err(|e| {
            // A column the row lacks is named as such.
            if let ExecutionError::UndeclaredReference(name) = &e {
                return format!("the column `{name}` is missing from this row");
            }
            if let ExecutionError::NoSuchKey(name) = &e {
                return format!("the column `{name}` is missing from this row");
            }
            format!("expression {:?}: {e}", self.source)
        })?;
        Ok(match value {
            Value::Bool(b) => Out::Bool(b),
            Value::Int(n) => Out::Int(n),
            Value::UInt(n) => Out::Int(n.min(i64::MAX as u64) as i64),
            Value::Float(n) => Out::Number(n),
            Value::String(s) => Out::Text(s.as_str().to_owned()),
            Value::Duration(d) => Out::Seconds(d.num_milliseconds() as f64 / 1000.0),
            Value::Timestamp(t) => Out::Time(
                jiff::Timestamp::from_millisecond(t.timestamp_millis())
                    .map_err(|e| format!("expression {:?}: {e}", self.source))?,
            ),
            other => {
                return Err(format!(
                    "expression {:?} gave {}",
                    self.source,
                    kind_of(&other)
                ));
            }
        })
    }
}

/// A row's columns as the expression's variables, looked up only when it reads them.
struct Bound<'a> {
    names: &'a [String],
    values: &'a [Option<Cow<'a, str>>],
    row: bool,
}

impl cel::context::VariableResolver for Bound<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        if variable == "row" && self.row {
            let map: std::collections::HashMap<String, String> = self
                .names
                .iter()
                .zip(self.values)
                .filter_map(|(n, v)| Some((n.clone(), v.as_ref()?.to_string())))
                .collect();
            return Value::from(map).try_into().ok().map(CowVal::Owned);
        }
        let i = self.names.iter().position(|n| n == variable)?;
        let value = self.values[i].as_deref()?;
        Some(CowVal::owned(CelString::from(value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::time::TimeFormat;
    use std::collections::HashMap;

    struct MapRow(HashMap<&'static str, &'static str>);
    impl Row for MapRow {
        fn get(&self, column: &str) -> Option<Cow<'_, str>> {
            self.0.get(column).map(|v| Cow::Borrowed(*v))
        }
    }

    fn reading() -> Reading {
        Reading {
            time: TimeParser::new(
                TimeFormat::Pattern("%d.%m.%Y %H:%M:%S".into()),
                jiff::tz::TimeZone::get("Europe/Berlin").unwrap(),
            ),
            millis: false,
        }
    }

    fn eval(source: &str, want: Want, row: &[(&'static str, &'static str)]) -> Result<Out, String> {
        let e = Expr::compile(source, want, &reading(), None)?;
        e.eval(&MapRow(row.iter().copied().collect()))
    }

    fn problem(source: &str, want: Want) -> String {
        Expr::compile(source, want, &reading(), None).unwrap_err()
    }

    /// Every shape the direct path takes gives the interpreter's value on rows it answers
    /// for, and leaves rows it cannot answer for (a missing column, an unreadable duration) to
    /// the interpreter, whose error stays the one the operator sees.
    #[test]
    fn the_direct_path_agrees_with_the_interpreter() {
        let rows: [&[(&'static str, &'static str)]; 5] = [
            &[
                ("outcome", "AGENT"),
                ("talk", "0:02:04"),
                ("hold", "12,5"),
                ("acw", "30"),
                ("Queue Name", " sales "),
            ],
            &[
                ("outcome", "HANG"),
                ("talk", "7"),
                ("hold", "0"),
                ("acw", "1:05"),
                ("Queue Name", "Support"),
            ],
            &[
                ("outcome", "agent"),
                ("talk", "n/a"),
                ("hold", ""),
                ("acw", "3"),
                ("Queue Name", ""),
            ],
            &[("talk", "5"), ("hold", "5"), ("acw", "5")],
            &[
                ("outcome", "PHANTOM"),
                ("talk", " 12.5 "),
                ("hold", "1"),
                ("acw", "2"),
                ("Queue Name", "x"),
            ],
        ];
        let shapes = [
            ("outcome == 'AGENT'", Want::Bool),
            ("outcome != 'PHANTOM'", Want::Bool),
            ("row['Queue Name'].trim().upperAscii()", Want::Text),
            ("row['Queue Name'].lowerAscii()", Want::Text),
            (
                "seconds(talk) + seconds(hold) + seconds(acw)",
                Want::Seconds,
            ),
            (
                "outcome in ['AGENT', 'HANG'] && !(outcome == 'HANG')",
                Want::Condition,
            ),
            (
                "outcome == 'AGENT' || seconds(talk) + seconds(hold) + seconds(acw) == seconds('0')",
                Want::Bool,
            ),
            ("outcome == 'HANG' || talk == '7'", Want::Condition),
            (
                "outcome == 'AGENT' ? seconds(talk) : seconds(acw)",
                Want::Seconds,
            ),
            ("outcome", Want::Text),
        ];
        let mut answered = 0;
        for (source, want) in shapes {
            let e = Expr::compile(source, want, &reading(), None).unwrap();
            let direct = e.direct.as_ref();
            for row in rows {
                let row = MapRow(row.iter().copied().collect());
                let interpreted = e.interpret(&row);
                match direct.and_then(|d| d.eval(&row, false)) {
                    Some(out) => {
                        answered += 1;
                        assert_eq!(Ok(out), interpreted, "{source}");
                    }
                    None => assert_eq!(e.eval(&row), interpreted, "{source}"),
                }
            }
        }
        // Every shape but the comparison of seconds with `==` (numbers) is direct; most rows
        // have every column it reads.
        assert!(
            answered >= 30,
            "the direct path answered only {answered} times"
        );
        let not_direct = Expr::compile("size(outcome) > 3", Want::Bool, &reading(), None).unwrap();
        assert!(not_direct.direct.is_none());
    }

    #[test]
    fn handle_time_is_the_sum_of_its_parts_in_any_duration_form() {
        let row = [("talk", "0:02:04"), ("hold", "12,5"), ("acw", "30")];
        let out = eval(
            "seconds(talk) + seconds(hold) + seconds(acw)",
            Want::Seconds,
            &row,
        );
        assert_eq!(out, Ok(Out::Number(166.5)));
    }

    #[test]
    fn a_local_date_and_time_in_two_columns_become_one_instant() {
        let row = [("date", "06.12.2021"), ("time", "11:34:22")];
        let out = eval("local(date + ' ' + time)", Want::Time, &row).unwrap();
        assert_eq!(out, Out::Time("2021-12-06T10:34:22Z".parse().unwrap()));
        let out = eval("local(date, '%d.%m.%Y') + span('1:00')", Want::Time, &row).unwrap();
        assert_eq!(out, Out::Time("2021-12-05T23:01:00Z".parse().unwrap()));
    }

    #[test]
    fn an_end_time_of_day_before_the_start_is_on_the_next_day() {
        let row = [
            ("day", "31.12.2021"),
            ("from", "23:50:00"),
            ("to", "00:10:00"),
        ];
        let out = eval(
            "endAfter(local(day + ' ' + from), local(day + ' ' + to))",
            Want::Time,
            &row,
        );
        assert_eq!(out, Ok(Out::Time("2021-12-31T23:10:00Z".parse().unwrap())));
    }

    #[test]
    fn columns_by_any_name_trimmed_and_upper_cased() {
        let row = [("q time", " 5 "), ("outcome", " agent ")];
        assert_eq!(
            eval("row['q time'].trim() != '0'", Want::Bool, &row),
            Ok(Out::Bool(true))
        );
        assert_eq!(
            eval("outcome.trim().upperAscii()", Want::Text, &row),
            Ok(Out::Text("AGENT".into()))
        );
    }

    #[test]
    fn a_missing_column_and_a_bad_value_are_named() {
        let e = eval("seconds(talk)", Want::Seconds, &[]).unwrap_err();
        assert!(e.contains("`talk` is missing"), "{e}");
        let e = eval("seconds(talk)", Want::Seconds, &[("talk", "soon")]).unwrap_err();
        assert!(e.contains("\"soon\" is not a duration"), "{e}");
    }

    #[test]
    fn mistakes_are_found_when_the_configuration_is_loaded() {
        let e = problem("seconds(talk) +", Want::Seconds);
        assert!(
            e.contains("does not parse at column 17: it ends where more is expected"),
            "{e}"
        );
        let e = problem("talk.trimm()", Want::Text);
        assert!(
            e.contains("at column 6 (`trimm()`): `trimm()` is not a function of text"),
            "{e}"
        );
        let e = problem("secs(talk)", Want::Seconds);
        assert!(
            e.contains("at column 1 (`secs()`): there is no function `secs`"),
            "{e}"
        );
        let e = problem("q_time != 0", Want::Bool);
        assert!(e.contains("compares text with a whole number"), "{e}");
        assert!(e.contains("columns are text"), "{e}");
        let e = problem("seconds(talk) + 1", Want::Seconds);
        assert!(
            e.contains("at column 15 (`+`): cannot add a number and a whole number"),
            "{e}"
        );
        let e = problem("outcome == 'AGENT'", Want::Seconds);
        assert!(
            e.contains("gives true/false, and this needs seconds"),
            "{e}"
        );
        let e = problem("talk && hold", Want::Bool);
        assert!(e.contains("needs true or false, and this is text"), "{e}");
        let known = ["talk".to_owned()];
        let e =
            Expr::compile("seconds(tlak)", Want::Seconds, &reading(), Some(&known)).unwrap_err();
        assert!(
            e.contains("there is no column `tlak` (columns: talk)"),
            "{e}"
        );
    }
}
