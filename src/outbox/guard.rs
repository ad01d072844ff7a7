//! The queue guard. injixo makes a new queue of every new combination of configuration id,
//! `queueIdentifier` and `queueName`: a queue renamed in an ACD or a map would silently split
//! the customer's history in two. So the outbox remembers every combination it has sent, and
//! when a batch is formed, contact events that bring a *new name for a known identifier* are
//! held back (state 4) instead. `injixo-sync queues` shows them with the name injixo knows;
//! `injixo-sync queues confirm` accepts the new name (the records are then sent, and injixo
//! makes the second queue the operator asked for), `injixo-sync queues drop` gives them up
//! (after the map is fixed and the input read again, say). The operator decides; there is
//! never a silent duplicate. New identifiers are simply remembered.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{LaneId, OutboxError, now_ms, schema};

#[derive(Deserialize)]
struct QueueOf<'a> {
    #[serde(rename = "queueIdentifier", borrow)]
    identifier: Cow<'a, str>,
    #[serde(rename = "queueName", borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    channel: Cow<'a, str>,
}

/// Removes from `records` (and marks held) the contact events whose queue identifier is known
/// under another name; remembers new identifiers. Returns how many were held.
pub(super) fn hold_renamed_queues(
    c: &Connection,
    lane: LaneId,
    records: &mut Vec<(i64, String)>,
) -> rusqlite::Result<usize> {
    let (emits, integration): (String, i64) = c
        .prepare_cached("SELECT emits, integration_id FROM lanes WHERE id = ?1")?
        .query_row([lane.0], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if emits != "contact_events" || records.is_empty() {
        return Ok(0);
    }
    // The queues met in this batch and their verdicts. A batch holds few queues and runs of
    // records of one queue, so the last one met is tried first, then the list: no key is
    // allocated or hashed per record on the writer's thread.
    let mut verdicts: Vec<(String, String, bool)> = Vec::new();
    let mut last = usize::MAX;
    let mut held = Vec::new();
    for (id, payload) in records.iter() {
        let Ok(q) = serde_json::from_str::<QueueOf<'_>>(payload) else {
            continue;
        };
        let is = |(i, n, _): &(String, String, bool)| *i == q.identifier && *n == q.name;
        if !verdicts.get(last).is_some_and(is) {
            last = match verdicts.iter().position(is) {
                Some(at) => at,
                None => {
                    let v = verdict(c, integration, &q)?;
                    verdicts.push((q.identifier.into_owned(), q.name.into_owned(), v));
                    verdicts.len() - 1
                }
            };
        }
        if !verdicts[last].2 {
            held.push(*id);
        }
    }
    if held.is_empty() {
        return Ok(0);
    }
    let mut hold = c.prepare_cached("UPDATE records SET state = 4 WHERE id = ?1 AND state = 0")?;
    for id in &held {
        hold.execute([id])?;
    }
    // Ids come in order, so the held ones are found by binary search.
    records.retain(|(id, _)| held.binary_search(id).is_err());
    // Said once per process and name, the first few of a batch by name and the rest counted,
    // so that an export full of renamed queues does not flood the log; `status` and
    // `/metrics` count what is held meanwhile.
    static TOLD: std::sync::Mutex<Option<std::collections::HashSet<(i64, String, String)>>> =
        std::sync::Mutex::new(None);
    let mut told = TOLD.lock().unwrap_or_else(|e| e.into_inner());
    let told = told.get_or_insert_with(Default::default);
    let mut new = Vec::new();
    for (identifier, name, allowed) in verdicts {
        if allowed {
            continue;
        }
        let key = (integration, identifier, name);
        if told.contains(&key) {
            tracing::debug!(integration_id = integration, "held back {:?} again", key.1);
        } else {
            // Bounded: past that many names, each batch says its own.
            if told.len() < TOLD_NAMES {
                told.insert(key.clone());
            }
            new.push(key);
        }
    }
    for (_, identifier, name) in new.iter().take(NAMED_PER_BATCH) {
        tracing::error!(
            integration_id = integration,
            "contact events for queue identifier {identifier:?} came with the new name \
             {name:?}: held back, since injixo would make a second queue of it; see \
             `injixo-sync queues` (said once; `status` counts what is held)"
        );
    }
    if new.len() > NAMED_PER_BATCH {
        tracing::error!(
            integration_id = integration,
            "{} more queue identifiers came with new names in this batch: held back too; \
             `injixo-sync queues` lists them all",
            new.len() - NAMED_PER_BATCH
        );
    }
    Ok(held.len())
}

/// Renamed queues a batch names in the log one by one; the rest are counted in one line.
const NAMED_PER_BATCH: usize = 5;
/// Renamed queues remembered as said (per process).
const TOLD_NAMES: usize = 10_000;

/// Whether a record's queue may be sent: its identifier is new (then remembered) or known
/// under this name.
fn verdict(c: &Connection, integration: i64, q: &QueueOf<'_>) -> rusqlite::Result<bool> {
    let known: Option<i64> = c
        .prepare_cached(
            "SELECT count(*) FROM queues WHERE integration_id = ?1 AND identifier = ?2
             HAVING count(*) > 0",
        )?
        .query_row(params![integration, q.identifier], |r| r.get(0))
        .optional()?;
    if known.is_none() {
        c.prepare_cached(
            "INSERT INTO queues (integration_id, identifier, name, channel, first_sent)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            integration,
            q.identifier,
            q.name,
            q.channel,
            now_ms()
        ])?;
        return Ok(true);
    }
    let same: i64 = c
        .prepare_cached(
            "SELECT count(*) FROM queues WHERE integration_id = ?1 AND identifier = ?2
             AND name = ?3",
        )?
        .query_row(params![integration, q.identifier, q.name], |r| r.get(0))?;
    Ok(same > 0)
}

/// A queue as sent: configuration id, identifier, name, channel, since when.
#[derive(Clone, Debug, Serialize)]
pub struct KnownQueue {
    pub integration_id: i64,
    pub identifier: String,
    pub name: String,
    pub channel: String,
    pub first_sent_ms: i64,
}

/// Records held back: a new name for a known identifier.
#[derive(Clone, Debug, Serialize)]
pub struct HeldQueue {
    pub integration_id: i64,
    pub identifier: String,
    pub new_name: String,
    pub known_names: Vec<String>,
    pub records: i64,
}

/// The queues sent so far and the records held back.
pub fn queues(path: &Path) -> Result<(Vec<KnownQueue>, Vec<HeldQueue>), OutboxError> {
    let conn = schema::open_ro(path)?;
    let read = || -> rusqlite::Result<(Vec<KnownQueue>, Vec<HeldQueue>)> {
        let known: Vec<KnownQueue> = conn
            .prepare(
                "SELECT integration_id, identifier, name, channel, first_sent FROM queues
                 ORDER BY integration_id, identifier, first_sent",
            )?
            .query_map([], |r| {
                Ok(KnownQueue {
                    integration_id: r.get(0)?,
                    identifier: r.get(1)?,
                    name: r.get(2)?,
                    channel: r.get(3)?,
                    first_sent_ms: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let (mut held, _) = held_groups(&conn, i64::MAX)?;
        let mut names: HashMap<(i64, &str), Vec<String>> = HashMap::new();
        for k in &known {
            names
                .entry((k.integration_id, k.identifier.as_str()))
                .or_default()
                .push(k.name.clone());
        }
        for h in &mut held {
            h.known_names = names
                .get(&(h.integration_id, h.identifier.as_str()))
                .cloned()
                .unwrap_or_default();
        }
        Ok((known, held))
    };
    read().map_err(|e| OutboxError::sqlite(path, e))
}

/// The records held back, grouped by configuration id, identifier and new name: the `limit`
/// with the most records (all of them, in order, for `limit` = `i64::MAX`), without the names
/// known, and how many groups there are in all.
fn held_groups(conn: &rusqlite::Connection, limit: i64) -> rusqlite::Result<(Vec<HeldQueue>, i64)> {
    let by_size = limit != i64::MAX;
    let mut groups = 0;
    let held = conn
        .prepare(&format!(
            "SELECT integration_id, identifier, name, n, count(*) OVER () FROM (
               SELECT l.integration_id, json_extract(payload(r.payload), '$.queueIdentifier')
                        AS identifier,
                      json_extract(payload(r.payload), '$.queueName') AS name, count(*) AS n
                 FROM records r JOIN lanes l ON l.id = r.lane_id
                WHERE r.state = 4 GROUP BY 1, 2, 3)
             ORDER BY {} LIMIT ?1",
            if by_size {
                "n DESC, 1, 2, 3"
            } else {
                "1, 2, 3"
            }
        ))?
        .query_map([limit], |r| {
            Ok((
                HeldQueue {
                    integration_id: r.get(0)?,
                    identifier: r.get(1)?,
                    new_name: r.get(2)?,
                    known_names: Vec::new(),
                    records: r.get(3)?,
                },
                r.get::<_, i64>(4)?,
            ))
        })?
        .map(|row| {
            row.map(|(h, n)| {
                groups = n;
                h
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((held, groups))
}

/// The `limit` groups of records held back with the most records, with the names known for
/// their identifiers (looked up one group at a time), and how many groups there are in all.
/// One pass over the held records (through their index), whatever their number.
pub fn held_queues(path: &Path, limit: usize) -> Result<(Vec<HeldQueue>, i64), OutboxError> {
    let conn = schema::open_ro(path)?;
    let read = || -> rusqlite::Result<(Vec<HeldQueue>, i64)> {
        let (mut held, total) = held_groups(&conn, limit as i64)?;
        let mut known = conn.prepare(
            "SELECT name FROM queues WHERE integration_id = ?1 AND identifier = ?2
             ORDER BY first_sent",
        )?;
        for h in &mut held {
            h.known_names = known
                .query_map(params![h.integration_id, h.identifier], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
        }
        Ok((held, total))
    };
    read().map_err(|e| OutboxError::sqlite(path, e))
}

/// Accepts `name` for a known identifier (`accept`: held records with it become pending) or
/// gives its held records up; returns how many records.
pub fn confirm_queue(
    path: &Path,
    integration: i64,
    identifier: &str,
    name: &str,
    accept: bool,
) -> Result<usize, OutboxError> {
    schema::admin_transaction(path, |c| {
        let held = "FROM records r JOIN lanes l ON l.id = r.lane_id
             WHERE r.state = 4 AND l.integration_id = ?1
               AND json_extract(payload(r.payload), '$.queueIdentifier') = ?2
               AND json_extract(payload(r.payload), '$.queueName') = ?3";
        if !accept {
            return c.execute(
                &format!(
                    "UPDATE records SET state = 3, sent_at = ?4 WHERE id IN (SELECT r.id {held})"
                ),
                params![integration, identifier, name, now_ms()],
            );
        }
        let channel: Option<String> = c
            .query_row(
                &format!("SELECT json_extract(payload(r.payload), '$.channel') {held} LIMIT 1"),
                params![integration, identifier, name],
                |r| r.get(0),
            )
            .optional()?;
        c.execute(
            "INSERT OR IGNORE INTO queues (integration_id, identifier, name, channel, first_sent)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                integration,
                identifier,
                name,
                channel.unwrap_or_else(|| "calls".into()),
                now_ms()
            ],
        )?;
        super::resend::requeue(c, held, params![integration, identifier, name])
    })
}
