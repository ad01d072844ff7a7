//! `skip_if`: rows left out on purpose (test queues, internal calls), counted and not parked.

use super::expr::{Expr, Out};
use super::map::{Row, RowError, parse_bool};

/// `skip_if = { queue = ["TEST*", "Internal"] }`: rows whose column matches one of the
/// patterns (globs, any case) are left out on purpose; they are counted, not parked.
/// `skip_if = { expr = "..." }` leaves out the rows for which the expression is true.
#[derive(Clone, Debug, Default)]
pub struct SkipIf(Vec<(String, globset::GlobSet)>, Vec<Expr>);

impl SkipIf {
    pub fn new(rules: Vec<(String, Vec<String>)>) -> Result<Self, String> {
        let mut out = Vec::new();
        for (column, patterns) in rules {
            let mut set = globset::GlobSetBuilder::new();
            for p in &patterns {
                let glob = globset::GlobBuilder::new(p)
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| format!("`{column}`: {p:?} is not a pattern: {e}"))?;
                set.add(glob);
            }
            let set = set.build().map_err(|e| e.to_string())?;
            out.push((column, set));
        }
        Ok(Self(out, Vec::new()))
    }

    /// Adds `expr = "..."`: rows for which it is true are skipped too.
    pub fn with_expr(mut self, e: Expr) -> Self {
        self.1.push(e);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty() && self.1.is_empty()
    }

    /// Every column the rules read.
    pub fn columns(&self) -> Vec<&str> {
        let globs = self.0.iter().map(|(c, _)| c.as_str());
        globs.chain(self.1.iter().flat_map(Expr::columns)).collect()
    }

    /// Whether the row is to be skipped: one of its columns matches (a missing column never
    /// does), or an expression is true. An expression that cannot be evaluated parks the row.
    pub fn skips(&self, row: &dyn Row) -> Result<bool, RowError> {
        if self
            .0
            .iter()
            .any(|(c, set)| row.get(c).is_some_and(|v| set.is_match(v.trim())))
        {
            return Ok(true);
        }
        for e in &self.1 {
            match e.eval(row) {
                Ok(Out::Bool(true)) => return Ok(true),
                Ok(Out::Bool(false)) => {}
                Ok(Out::Text(t)) if parse_bool(&t) == Ok(true) => return Ok(true),
                Ok(Out::Text(t)) if parse_bool(&t) == Ok(false) => {}
                Ok(other) => {
                    return Err(RowError {
                        field: "skip_if",
                        column: None,
                        message: format!("the expression gave {other:?}, not true or false"),
                    });
                }
                Err(message) => {
                    return Err(RowError {
                        field: "skip_if",
                        column: None,
                        message,
                    });
                }
            }
        }
        Ok(false)
    }
}
