//! Parked rows mapped again with the configuration of the day (`parked retry`,
//! `preview --parked`): through the same conversion the source runs, giving records the keys
//! the first read would have given them, so that a row whose record is in the outbox already
//! (delivered, or read again since) is not enqueued twice.

use crate::config::{SourceConfig, SourceKind};
use crate::outbox::{NewRecord, ParkedRow, Replay};
use crate::sources::files::{csv_row, json_row};
use crate::sources::parse::Fields;
use crate::sources::rows::{ChangeRead, RowOut, RowOutcome, RowPlace, convert_object, row_records};

/// What a parked row becomes under the current configuration.
#[derive(Debug)]
pub enum Remapped {
    /// Records, keyed as the first read would have keyed them.
    Records(Vec<NewRecord>),
    /// An agent's state change, for the source's open states.
    Change(ChangeRead),
    /// `skip_if` leaves it out now.
    Skipped,
    /// It still cannot become anything: why, now.
    Parked(String),
    /// It cannot be mapped again: why.
    Kept(String),
}

/// Why a row without [`Replay`] data is kept as it is.
const KEPT: &str = "kept to be read, not mapped again: it was parked before this version kept \
                    what mapping it again needs, or only its source holds it whole (a line \
                    longer than max_line, a line not in the source's encoding, a queue_log \
                    line, whose call is built from several lines); have the source deliver it \
                    again (rows written to a new file in the folder: a file read before is not \
                    read again), then give this one up with `parked drop`";

/// Maps a parked row of `source` again.
pub fn remap(source: &SourceConfig, row: &ParkedRow) -> Remapped {
    let Some(replay) = &row.replay else {
        return Remapped::Kept(KEPT.into());
    };
    let emits = source.lane.emits;
    let (outcome, raw, expands) = match &source.kind {
        SourceKind::Files(f) if f.queue_log.is_some() => return Remapped::Kept(KEPT.into()),
        SourceKind::Sql(s) if s.queue_log.is_some() => return Remapped::Kept(KEPT.into()),
        SourceKind::Files(f) => {
            let expands = f.rows.expands();
            match &replay.fields {
                Some(fields) => {
                    let columns = f.csv_columns(replay.header.as_deref());
                    let fields = Fields {
                        fields: fields.clone(),
                        unreadable: Vec::new(),
                    };
                    let (outcome, raw) = csv_row(f, columns, &fields);
                    (outcome, raw, expands)
                }
                None => {
                    let text = row.input();
                    let outcome = json_row(&f.rows, f.rows.is_plain(), emits, text);
                    (outcome, text.to_owned(), expands)
                }
            }
        }
        SourceKind::Sql(_) | SourceKind::Http(_) | SourceKind::Webhook(_) => {
            let text = row.input();
            let outcome: RowOutcome = match serde_json::from_str(text) {
                Ok(serde_json::Value::Object(obj)) => {
                    convert_object(source.kind.rows(), emits, &obj)
                }
                _ => Err("the parked input is not a JSON object".into()),
            };
            (outcome, text.to_owned(), false)
        }
    };
    match outcome {
        Ok(None) => Remapped::Skipped,
        Ok(Some(RowOut::Records(list, key))) => Remapped::Records(
            row_records(
                list,
                key.as_deref(),
                RowPlace::of(&replay.place),
                expands,
                &row.origin,
                || raw,
            )
            .collect(),
        ),
        Ok(Some(RowOut::Change(change))) => Remapped::Change(ChangeRead {
            change,
            origin: row.origin.clone(),
            raw: row.raw.clone(),
            replay: Some(Replay::clone(replay)),
        }),
        Err(reason) => Remapped::Parked(reason),
    }
}
