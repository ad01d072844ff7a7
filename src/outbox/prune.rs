//! Pruning: delivered records after `keep_sent`, parked lines after `keep_parked`, in short
//! steps so the writer never holds its lock for long.

use std::time::Duration;

use rusqlite::{Connection, params};

use super::{Outbox, OutboxError, now_ms};

impl Outbox {
    /// Deletes parked input older than `keep`, oldest first, at most 5,000 rows per
    /// transaction (so writers take turns); returns how many.
    pub async fn prune_parked(&self, keep: Duration) -> Result<usize, OutboxError> {
        let cutoff = now_ms() - keep.as_millis() as i64;
        let mut total = 0;
        loop {
            let (n, more) = self
                .call(move |c, p| {
                    prune_parked_step(c, cutoff).map_err(|e| OutboxError::sqlite(p, e))
                })
                .await?;
            total += n;
            if !more {
                return Ok(total);
            }
        }
    }

    /// Deletes delivered records older than `keep`; returns how many.
    pub async fn prune_sent(&self, keep: Duration) -> Result<usize, OutboxError> {
        let cutoff = now_ms() - keep.as_millis() as i64;
        let mut total = 0;
        // Each lane up to where its mark was before the cutoff, in rowid order from where the
        // last prune stopped; a step deletes at most 5,000, so writers take turns.
        let lanes: Vec<(i64, i64, i64)> = self
            .call(move |c, p| {
                c.prepare_cached(
                    "SELECT l.id, l.pruned_to, d.upto FROM lanes l JOIN
                       (SELECT lane_id, max(sent_to) AS upto FROM deliveries WHERE at < ?1
                        GROUP BY lane_id) d ON d.lane_id = l.id
                     WHERE d.upto > l.pruned_to",
                )
                .and_then(|mut s| {
                    s.query_map([cutoff], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(|e| OutboxError::sqlite(p, e))
            })
            .await?;
        for (lane, mut from, upto) in lanes {
            while from < upto {
                let (n, reached) = self
                    .call(move |c, p| {
                        prune_step(c, lane, from, upto).map_err(|e| OutboxError::sqlite(p, e))
                    })
                    .await?;
                total += n;
                from = reached;
            }
        }
        // One state at a time, each through its partial index on `sent_at` (an `IN (1, 3)`
        // would read the whole table); a step deletes at most 5,000, so writers take turns.
        for state in [1, 3] {
            loop {
                let n = self
                    .call(move |c, p| {
                        // The state is written into the statement: a partial index is
                        // chosen when the statement is prepared.
                        c.prepare_cached(&format!(
                            "DELETE FROM records WHERE id IN (SELECT id FROM records
                             WHERE state = {state} AND sent_at < ?1 LIMIT 5000)"
                        ))
                        .and_then(|mut s| s.execute([cutoff]))
                        .map_err(|e| OutboxError::sqlite(p, e))
                    })
                    .await?;
                total += n;
                if n < 5000 {
                    break;
                }
            }
        }
        Ok(total)
    }
}

/// Deletes the oldest parked rows, up to 5,000, that were parked before `cutoff`; returns how
/// many, and whether there may be more. Rows are parked in id order, so the oldest come
/// first and no index on the time is needed.
pub(super) fn prune_parked_step(c: &Connection, cutoff: i64) -> rusqlite::Result<(usize, bool)> {
    const STEP: usize = 5000;
    let oldest: Vec<(i64, i64)> = c
        .prepare_cached("SELECT id, at FROM parked ORDER BY id LIMIT ?1")?
        .query_map([STEP as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let old: Vec<i64> = oldest
        .iter()
        .take_while(|(_, at)| *at < cutoff)
        .map(|(id, _)| *id)
        .collect();
    let mut delete = c.prepare_cached("DELETE FROM parked WHERE id = ?1")?;
    for id in &old {
        delete.execute([id])?;
    }
    if !old.is_empty() {
        super::parked::drop_unused_headers(c)?;
    }
    Ok((old.len(), old.len() == STEP))
}

/// Deletes up to 5,000 of a lane's delivered records above `from` and up to `upto`; returns
/// how many, and how far the lane is now pruned.
pub(super) fn prune_step(
    c: &Connection,
    lane: i64,
    from: i64,
    upto: i64,
) -> rusqlite::Result<(usize, i64)> {
    const STEP: usize = 5000;
    let ids: Vec<i64> = c
        .prepare_cached(
            "SELECT id FROM records WHERE id > ?1 AND id <= ?2 AND lane_id = ?3 AND state = 0
             ORDER BY id LIMIT ?4",
        )?
        .query_map(params![from, upto, lane, STEP as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut delete = c.prepare_cached("DELETE FROM records WHERE id = ?1")?;
    for id in &ids {
        delete.execute([id])?;
    }
    let reached = match ids.last() {
        Some(&last) if ids.len() == STEP => last,
        _ => upto,
    };
    c.prepare_cached("UPDATE lanes SET pruned_to = ?1 WHERE id = ?2")?
        .execute([reached, lane])?;
    c.prepare_cached("DELETE FROM deliveries WHERE lane_id = ?1 AND sent_to <= ?2")?
        .execute([lane, reached])?;
    Ok((ids.len(), reached))
}
