//! Parked input as the operator sees it: grouped by source and reason, and given up on
//! purpose (`injixo-sync parked list|drop`).

use std::path::Path;

use rusqlite::params;

use super::{OutboxError, schema};

/// The parked rows of one source with one reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParkedGroup {
    pub source: String,
    pub reason: String,
    pub count: i64,
    /// When the first and the latest of them were parked (Unix ms).
    pub first_at_ms: i64,
    pub last_at_ms: i64,
    /// The first of them: where it was read (file:line, a poll's page, a push) and its input.
    pub example_origin: String,
    pub example_raw: String,
}

/// Which parked rows: of one source, with a reason containing some text; both optional.
#[derive(Debug, Clone, Default)]
pub struct ParkedFilter {
    pub source: Option<String>,
    pub reason: Option<String>,
}

/// The rows `f` selects, as SQL over `parked p` joined to `sources s`.
const SELECTED: &str = "(?1 IS NULL OR s.name = ?1) AND (?2 IS NULL OR instr(p.reason, ?2) > 0)";

/// Parked input grouped by source and reason, the largest groups first.
pub fn parked_groups(path: &Path, f: &ParkedFilter) -> Result<Vec<ParkedGroup>, OutboxError> {
    let conn = schema::open_ro(path)?;
    let query = format!(
        "WITH g AS (
           SELECT p.source_id, p.reason, count(*) AS n, min(p.id) AS first, max(p.at) AS last_at
           FROM parked p JOIN sources s ON s.id = p.source_id
           WHERE {SELECTED}
           GROUP BY p.source_id, p.reason)
         SELECT s.name, g.reason, g.n, p.at, g.last_at, p.origin, p.raw
         FROM g JOIN parked p ON p.id = g.first JOIN sources s ON s.id = g.source_id
         ORDER BY g.n DESC, s.name, g.reason"
    );
    let read = || -> rusqlite::Result<Vec<ParkedGroup>> {
        conn.prepare(&query)?
            .query_map(params![f.source, f.reason], |r| {
                Ok(ParkedGroup {
                    source: r.get(0)?,
                    reason: r.get(1)?,
                    count: r.get(2)?,
                    first_at_ms: r.get(3)?,
                    last_at_ms: r.get(4)?,
                    example_origin: r.get(5)?,
                    example_raw: r.get(6)?,
                })
            })?
            .collect()
    };
    read().map_err(|e| OutboxError::sqlite(path, e))
}

/// Gives the parked rows `f` selects up: they are deleted. Returns how many.
pub fn drop_parked(path: &Path, f: &ParkedFilter) -> Result<usize, OutboxError> {
    schema::admin_transaction(path, |c| {
        c.execute(
            &format!(
                "DELETE FROM parked WHERE id IN (
                   SELECT p.id FROM parked p JOIN sources s ON s.id = p.source_id
                   WHERE {SELECTED})"
            ),
            params![f.source, f.reason],
        )
    })
}
