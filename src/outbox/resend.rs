//! Sending kept records again, and the agent identifiers sent so far.
//!
//! injixo drops agent statuses of agent ids it cannot map to an employee; once the operator
//! has mapped them in injixo, the data must be sent again. `injixo-sync agents` lists every
//! agent id each lane has sent (first and last time), and `injixo-sync resend --since TIME
//! [--agent ID] [--source NAME]` makes kept records (those delivered within `keep_sent`) whose
//! own time (`startTime` of an agent status, `timestamp` of a contact event) is at or after
//! TIME pending again. Like `dead retry`, it is one short transaction beside a running daemon,
//! and it moves the records to the end of the outbox, so they are batched again after what is
//! pending now (with new idempotency keys: it is meant to reach injixo again).

use std::path::Path;

use rusqlite::{Connection, params};
use serde::Serialize;

use super::{OutboxError, now_ms, schema};

/// Which kept records to send again.
#[derive(Clone, Debug, Default)]
pub struct Resend {
    /// The records' own time, in the API's form (`2024-05-01T00:00:00Z`): at or after.
    pub since: String,
    pub agent: Option<String>,
    pub source: Option<String>,
}

/// An agent identifier a lane has sent.
#[derive(Clone, Debug, Serialize)]
pub struct AgentSent {
    pub integration_id: i64,
    pub external_system: String,
    pub agent: String,
    pub first_sent_ms: i64,
    pub last_sent_ms: i64,
}

/// Makes the chosen kept records pending again; returns how many.
pub fn resend(path: &Path, what: &Resend) -> Result<usize, OutboxError> {
    schema::admin_transaction(path, |c| {
        // The records' own time: startTime (agent statuses) or timestamp (contact events).
        // Kept records: state 0 at or below their lane's mark, or state 1 (delivered before
        // schema version 4).
        requeue(
            c,
            "FROM records r JOIN lanes l ON l.id = r.lane_id
             WHERE (r.state = 1 OR (r.state = 0 AND r.id <= l.sent_to))
               AND coalesce(json_extract(payload(r.payload), '$.startTime'),
                            json_extract(payload(r.payload), '$.timestamp')) >= ?1
               AND (?2 IS NULL OR json_extract(payload(r.payload), '$.agentIdentifier') = ?2)
               AND (?3 IS NULL OR r.source_id = (SELECT id FROM sources WHERE name = ?3))",
            params![what.since, what.agent, what.source],
        )
    })
}

/// Makes the records `chosen` selects (`FROM records r ...`, with `params`) pending again:
/// moved to the end of the outbox, pending since now, so the next batch of their lane takes
/// them.
pub(super) fn requeue(
    c: &Connection,
    chosen: &str,
    params: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<usize> {
    let moved = super::move_to_end(
        c,
        &format!("SELECT r.id {chosen}"),
        params,
        Some(now_ms()),
        super::Columns::Current,
    )?;
    if moved.is_some() {
        super::note_requeue(c)?;
    }
    Ok(moved.map_or(0, |m| m.count))
}

/// Every agent identifier sent, by lane, in order of first sending.
pub fn agents_sent(path: &Path) -> Result<Vec<AgentSent>, OutboxError> {
    let conn = schema::open_ro(path)?;
    let rows = || -> rusqlite::Result<Vec<AgentSent>> {
        conn.prepare(
            "SELECT l.integration_id, l.external_system, a.agent, a.first_sent, a.last_sent
             FROM agents a JOIN lanes l ON l.id = a.lane_id
             ORDER BY l.integration_id, l.external_system, a.first_sent, a.agent",
        )?
        .query_map([], |r| {
            Ok(AgentSent {
                integration_id: r.get(0)?,
                external_system: r.get(1)?,
                agent: r.get(2)?,
                first_sent_ms: r.get(3)?,
                last_sent_ms: r.get(4)?,
            })
        })?
        .collect()
    };
    rows().map_err(|e| OutboxError::sqlite(path, e))
}
