//! `key`: a row's natural key, so that rows an export repeats become one record. A template
//! of columns (parsed as a map's templates are) or an expression; the outbox hashes what it
//! renders into the record's dedupe key.

use super::expr::Expr;
use super::map::{FieldSource, Part, Row, RowError, out_text, part_columns, render};

/// `key = "{call_id}"`: the natural key of a row, a template of its columns (or
/// `{ expr = "..." }`). Rows with the same key are one record, however often an export
/// repeats them.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyTemplate(KeyKind);

#[derive(Clone, Debug, PartialEq)]
enum KeyKind {
    Template(Vec<Part>),
    Expr(Expr),
}

impl KeyTemplate {
    pub fn parse(s: &str) -> Result<Self, String> {
        match FieldSource::template(s)? {
            FieldSource::Template(parts) => Ok(Self(KeyKind::Template(parts))),
            _ => unreachable!("template() returns templates"),
        }
    }

    /// `key = { expr = "..." }`.
    pub fn expr(e: Expr) -> Self {
        Self(KeyKind::Expr(e))
    }

    pub fn render(&self, row: &dyn Row) -> Result<String, RowError> {
        let key = match &self.0 {
            KeyKind::Template(parts) => render(parts, row, "key")?,
            KeyKind::Expr(e) => match e.eval(row) {
                Ok(out) => out_text(out),
                Err(message) => {
                    return Err(RowError {
                        field: "key",
                        column: None,
                        message,
                    });
                }
            },
        };
        if key.trim().is_empty() {
            return Err(RowError {
                field: "key",
                column: None,
                message: "the row's key is empty".into(),
            });
        }
        Ok(key)
    }

    pub fn columns(&self) -> Vec<&str> {
        match &self.0 {
            KeyKind::Template(parts) => part_columns(parts).collect(),
            KeyKind::Expr(e) => e.columns().collect(),
        }
    }
}

/// The key as configured: `{call_id}-{line}`, or `{ expr = "..." }`.
impl std::fmt::Display for KeyTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            KeyKind::Template(parts) => {
                for p in parts {
                    match p {
                        Part::Column(c) => write!(f, "{{{c}}}")?,
                        Part::Text(t) => f.write_str(t)?,
                    }
                }
                Ok(())
            }
            KeyKind::Expr(e) => write!(f, "{{ expr = {:?} }}", e.source()),
        }
    }
}
