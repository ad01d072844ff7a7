//! Reading a file from its cursor: in chunks of 1 MiB (at most 16,384 rows each), parsed,
//! mapped, and handed to the outbox writer with the new cursor in one commit; long lines are
//! parked; a CSV header is remembered.

use std::borrow::Cow;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tracing::warn;

use super::identity::{FINGERPRINT_MAX, bytes_before, fingerprint, last_bytes, read_full};
use super::{FilesSource, InFlight, Known, LongLine, TakeError, to_json};
use crate::config::{FileFormat, FilesConfig, RowRules};
use crate::normalize::map::Row;
use crate::normalize::queue_log;
use crate::normalize::schema;
use crate::outbox::{Commit, NewRecord, OutboxError, Parked, Replay};
use crate::sources::SourceContext;
use crate::sources::parse::{self, Charset, Fields};
use crate::sources::rows::{
    self, ChangeRead, JsonRow, RowOut, RowOutcome, RowPlace, commit_blocking, row_records,
};
use crate::types::Emits;

/// The read buffer; a record longer than this grows it, up to `max_line`.
pub(super) const CHUNK: usize = 1 << 20;

/// How much of a line too long to read is kept with it when it is parked.
pub(super) const LONG_LINE_KEPT: usize = 4096;

/// Why a line longer than `max_line` was parked.
pub(super) fn long_line_reason(length: u64, max_line: usize, kept: usize) -> String {
    format!(
        "the line is {} long, longer than max_line ({}); parked, its first {} kept",
        bytesize::ByteSize(length),
        bytesize::ByteSize(max_line as u64),
        bytesize::ByteSize(kept as u64)
    )
}

impl FilesSource {
    /// Reads from the cursor to the end of the file (or `limit`), committing as it goes.
    /// `last`: the file is complete, so a final line without newline is a record.
    ///
    /// A chunk's commit runs on the writer while the next chunk is read and parsed; that
    /// chunk's records, tracker moves and cursor are handed over only once the commit before
    /// them is durable, so a failed commit is never followed by one that builds on it, and
    /// what it would have moved is put back.
    pub(super) fn read(
        &mut self,
        ctx: &SourceContext,
        idx: usize,
        file: &mut File,
        limit: Option<u64>,
        last: bool,
    ) -> Result<(), TakeError> {
        let mut in_flight = None;
        let read = self.read_chunks(ctx, idx, file, limit, last, &mut in_flight);
        // A failed commit is the error to report: it is why reading stops.
        self.settle(ctx, idx, in_flight)?;
        read
    }

    /// Waits for a chunk's commit; on failure puts back the file's position and the trackers
    /// the chunk moved.
    pub(super) fn settle(
        &mut self,
        ctx: &SourceContext,
        idx: usize,
        in_flight: Option<InFlight>,
    ) -> Result<(), OutboxError> {
        let Some(chunk) = in_flight else {
            return Ok(());
        };
        let done = chunk.commit.wait(ctx);
        if let Some(states) = self.states.as_mut() {
            states.settle(done.is_ok());
        }
        if let Ok(tally) = &done {
            ctx.metrics.bytes.fetch_add(chunk.bytes, Relaxed);
            ctx.metrics.skipped.fetch_add(chunk.skipped, Relaxed);
            self.tally.add(*tally);
            self.tally.skipped += chunk.skipped;
        } else {
            self.known[idx].cur = chunk.before;
            self.known[idx].tail = chunk.tail_before;
            if let (Some(before), Some((_, tracker))) =
                (chunk.tracker_before, self.tracker.as_mut())
            {
                *tracker = before;
            }
        }
        done.map(|_| ())
    }

    pub(super) fn read_chunks(
        &mut self,
        ctx: &SourceContext,
        idx: usize,
        file: &mut File,
        limit: Option<u64>,
        last: bool,
        in_flight: &mut Option<InFlight>,
    ) -> Result<(), TakeError> {
        let mut cap = CHUNK;
        // Origins name the file by its path below the source's `path`: in a recursive source,
        // two `calls.ndjson:1` could not be told apart.
        let read_from = Path::new(&self.known[idx].cur.path);
        let name = read_from
            .strip_prefix(&self.cfg.path)
            .ok()
            .filter(|rel| !rel.as_os_str().is_empty())
            .or_else(|| read_from.file_name().map(Path::new))
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let charset = self.cfg.charset;
        // The first bytes tell a byte-order mark (read from the start) and UTF-16's byte order.
        let mut head = [0u8; 4];
        let head_len = if self.known[idx].cur.offset == 0 || matches!(charset, Charset::Utf16(_)) {
            file.seek(SeekFrom::Start(0))?;
            read_full(file, &mut head)?
        } else {
            0
        };
        let head = &head[..head_len];
        let big_endian = charset.big_endian(head);
        let offset = self.known[idx].cur.offset;
        if self.known[idx].tail.is_empty() && offset > 0 {
            self.known[idx].tail = bytes_before(file, offset)?;
        }
        loop {
            if ctx.shutdown.is_cancelled() {
                return Ok(());
            }
            // A line too long, looked through before: go on looking for its end.
            if self.known[idx]
                .long_line
                .as_ref()
                .is_some_and(|l| l.start == self.known[idx].cur.offset)
            {
                self.settle(ctx, idx, in_flight.take())?;
                if !self.park_long_line(ctx, idx, file, &name, last, big_endian)? {
                    return Ok(());
                }
            }
            let cur = &self.known[idx];
            let offset = cur.cur.offset;
            let want = match limit {
                Some(l) if l <= offset => return Ok(()),
                Some(l) => cap.min((l - offset) as usize),
                None => cap,
            };
            self.buf.resize(want, 0);
            file.seek(SeekFrom::Start(offset))?;
            let n = read_full(file, &mut self.buf)?;
            if n == 0 {
                return Ok(());
            }
            let at_end = n < want || limit.is_some_and(|l| offset + n as u64 >= l);
            let complete = last && at_end;
            let skip = if offset == 0 {
                charset.bom_len(head).min(n)
            } else {
                0
            };
            let raw = &self.buf[skip..n];
            let transcoded = big_endian.map(|be| parse::Transcoded::utf16(raw, be, complete));
            let positions = Positions {
                base: offset + skip as u64,
                map: transcoded.as_ref(),
            };
            let text = transcoded.as_ref().map_or(raw, |t| &t.text[..]);
            let step = self.parse(cur, &name, text, &positions, complete, ctx);
            let consumed = if complete && !step.cut_short {
                n
            } else if step.consumed == 0 {
                0
            } else {
                (positions.at(step.consumed) - offset) as usize
            };
            if consumed == 0 {
                // No whole line in the buffer: the line at the cursor is still being written,
                // or it is longer than it may be (then it is parked without being held).
                let max_line = self.cfg.max_line;
                if n > max_line {
                    self.settle(ctx, idx, in_flight.take())?;
                    if self.park_long_line(ctx, idx, file, &name, last, big_endian)? {
                        cap = CHUNK;
                        continue;
                    }
                    return Ok(());
                }
                if at_end {
                    return Ok(());
                }
                cap = (cap * 2).min(max_line + 1);
                continue;
            }
            let mut next = cur.cur.clone();
            next.offset = offset + consumed as u64;
            next.line += step.newlines;
            let tail = last_bytes(&cur.tail, &self.buf[..consumed]);
            next.end_fp = fingerprint(&tail);
            // A followed file read from its start: its first bytes' fingerprint is that of the
            // bytes read, committed with them. One taken at an earlier look would be of
            // content a rewrite in between replaced, and the content read would be read again.
            if offset == 0 && cur.cur.fp_len > 0 {
                let first = &self.buf[..n.min(FINGERPRINT_MAX)];
                next.fp_len = first.len() as u64;
                next.fp = fingerprint(first);
            }
            if step.header.is_some() {
                next.header = step.header;
            }
            let id = cur.id;
            let mut cursors = vec![(id, to_json(&next))];
            let (mut records, mut parked) = (step.records, step.parked);
            let mut changes = step.changes;
            // What follows builds on the chunk before, so that chunk must be durable first.
            self.settle(ctx, idx, in_flight.take())?;
            // The queue_log tracker as committed, put back if the commit fails.
            let tracker_before = (!step.queue_log.is_empty())
                .then(|| self.tracker.as_ref().map(|(_, t)| t.clone()))
                .flatten();
            if !step.queue_log.is_empty() {
                let (tracker_id, json) =
                    self.apply_queue_log(step.queue_log, &mut records, &mut changes, &mut parked);
                cursors.push((tracker_id, json));
            }
            if !changes.is_empty() {
                let ((states_id, json), _) = self.states.as_mut().expect("states loaded").apply(
                    &ctx.name,
                    changes,
                    &mut records,
                    &mut parked,
                );
                cursors.push((states_id, json));
            }
            let commit = rows::submit(
                ctx,
                Commit {
                    records,
                    parked,
                    cursors,
                    skipped: step.skipped,
                    ..Commit::default()
                },
            );
            *in_flight = Some(InFlight {
                commit,
                before: std::mem::replace(&mut self.known[idx].cur, next),
                tail_before: std::mem::replace(&mut self.known[idx].tail, tail),
                tracker_before,
                bytes: consumed as u64,
                skipped: step.skipped,
            });
            if at_end && !step.cut_short {
                return Ok(());
            }
        }
    }

    /// Parks the line at the cursor, which is longer than `max_line`, without holding it:
    /// looks through the file for its end a chunk at a time (going on where it stopped last
    /// time, while the line is still being written), then commits it as parked (its first
    /// 4 KiB kept) with the cursor after it. `Ok(true)` when it was parked; `Ok(false)` when
    /// its end is not written yet. A file known to be complete (`last`) ends it.
    pub(super) fn park_long_line(
        &mut self,
        ctx: &SourceContext,
        idx: usize,
        file: &mut File,
        name: &str,
        last: bool,
        big_endian: Option<bool>,
    ) -> Result<bool, TakeError> {
        let start = self.known[idx].cur.offset;
        let mut long = match self.known[idx].long_line.take() {
            Some(l) if l.start == start => l,
            _ => {
                let mut head = vec![0u8; LONG_LINE_KEPT];
                file.seek(SeekFrom::Start(start))?;
                let n = read_full(file, &mut head)?;
                head.truncate(n);
                LongLine {
                    start,
                    scanned: start,
                    head,
                }
            }
        };
        // Chunks of an even length keep UTF-16 code units aligned.
        let chunk = CHUNK;
        if self.buf.len() < chunk {
            self.buf.resize(chunk, 0);
        }
        let end = loop {
            if ctx.shutdown.is_cancelled() {
                self.known[idx].long_line = Some(long);
                return Ok(false);
            }
            file.seek(SeekFrom::Start(long.scanned))?;
            let n = read_full(file, &mut self.buf[..chunk])?;
            if n == 0 {
                if last {
                    break long.scanned;
                }
                self.known[idx].long_line = Some(long);
                return Ok(false);
            }
            let bytes = &self.buf[..n];
            let found = match big_endian {
                Some(be) => bytes
                    .chunks_exact(2)
                    .position(|u| u == if be { [0, b'\n'] } else { [b'\n', 0] })
                    .map(|i| 2 * i + 2),
                None => bytes.iter().position(|b| *b == b'\n').map(|i| i + 1),
            };
            match found {
                Some(len) => break long.scanned + len as u64,
                None => long.scanned += n as u64,
            }
        };
        let known = &self.known[idx];
        let length = end - start;
        let parked = Parked {
            origin: format!("{name}:{}", known.cur.line + 1),
            reason: long_line_reason(
                length,
                self.cfg.max_line,
                long.head.len().min(length as usize),
            ),
            raw: String::from_utf8_lossy(&long.head[..long.head.len().min(length as usize)])
                .into_owned(),
            replay: None,
        };
        let mut next = known.cur.clone();
        next.offset = end;
        next.line += 1;
        let tail = bytes_before(file, end)?;
        next.end_fp = fingerprint(&tail);
        warn!(source = %ctx.name, origin = %parked.origin, "{}", parked.reason);
        commit_blocking(
            ctx,
            Commit {
                parked: vec![parked],
                cursors: vec![(known.id, to_json(&next))],
                ..Commit::default()
            },
        )?;
        ctx.metrics.bytes.fetch_add(length, Relaxed);
        let known = &mut self.known[idx];
        known.cur = next;
        known.tail = tail;
        Ok(true)
    }

    /// The line formats' loop (NDJSON, queue_log): every complete line, decoded, handed to
    /// `each` with its file offset and origin; a line too long or not in the encoding is parked
    /// here.
    fn each_line(
        &self,
        cur: &Known,
        step: &mut Step,
        (buf, pos, last): (&[u8], &Positions<'_>, bool),
        origin: &dyn Fn(u64) -> String,
        mut each: impl FnMut(&mut Step, u64, String, Cow<'_, str>),
    ) {
        let mut items = parse::lines(buf, last);
        let cut = step.limit(&mut items);
        for item in items {
            let origin_here = origin(item.newlines_before);
            let at = pos.at(item.start);
            if step.too_long(&item, pos, self.cfg.max_line, &origin_here, buf) {
                continue;
            }
            match self.cfg.charset.decode(item.value) {
                Ok(text) => each(step, at, origin_here, text),
                Err(e) => {
                    let raw = String::from_utf8_lossy(item.value);
                    let place = (cur.cur.key_space(cur.id), at);
                    step.push(place, origin_here, Err(e), &raw, Input::Kept);
                }
            }
        }
        step.consumed = cut.unwrap_or_else(|| parse::consumed_lines(buf, last));
    }

    /// Turns a buffer into records and parked rows.
    pub(super) fn parse(
        &self,
        cur: &Known,
        name: &str,
        buf: &[u8],
        pos: &Positions<'_>,
        last: bool,
        ctx: &SourceContext,
    ) -> Step {
        let mut step = Step {
            expands: self.cfg.rows.expands(),
            ..Step::default()
        };
        let origin = |newlines: u64| format!("{name}:{}", cur.cur.line + newlines + 1);
        match self.cfg.format {
            FileFormat::Ndjson => {
                // Lines already in the API's shape need no object unless a key or skip rule
                // reads their fields.
                let plain = self.cfg.rows.is_plain();
                self.each_line(
                    cur,
                    &mut step,
                    (buf, pos, last),
                    &origin,
                    |step, at, origin_here, text| {
                        let text = text.trim_start_matches('\u{feff}');
                        let result = json_row(&self.cfg.rows, plain, ctx.emits, text);
                        let place = (cur.cur.key_space(cur.id), at);
                        step.push(place, origin_here, result, text, Input::Line);
                    },
                );
            }
            FileFormat::QueueLog => {
                self.each_line(
                    cur,
                    &mut step,
                    (buf, pos, last),
                    &origin,
                    |step, at, origin_here, line| {
                        let line = line.into_owned();
                        match queue_log::parse(&line) {
                            Ok(_) => step.queue_log.push((origin_here, line)),
                            Err(e) => {
                                let place = (cur.cur.key_space(cur.id), at);
                                step.push(place, origin_here, Err(e), &line, Input::Kept)
                            }
                        }
                    },
                );
            }
            FileFormat::Csv | FileFormat::Tsv => {
                let (items, consumed) = parse::csv(
                    buf,
                    self.cfg.delimiter,
                    self.cfg.charset,
                    last,
                    ROWS_PER_COMMIT,
                );
                step.cut_short = items.len() == ROWS_PER_COMMIT && consumed < buf.len();
                let mut header: Option<Vec<String>> = cur.cur.header.clone();
                for (n, item) in items.into_iter().enumerate() {
                    let at = pos.at(item.start);
                    let origin_here = origin(item.newlines_before);
                    if step.too_long(&item, pos, self.cfg.max_line, &origin_here, buf) {
                        continue;
                    }
                    let fields = item.value;
                    if n == 0 && cur.cur.offset == 0 && self.cfg.header {
                        step.header = Some(fields.fields.clone());
                        header = Some(fields.fields);
                        continue;
                    }
                    let columns = self.cfg.csv_columns(header.as_deref());
                    let (result, raw) = csv_row(&self.cfg, columns, &fields);
                    let input = match fields.unreadable.is_empty() {
                        true => Input::Csv {
                            columns,
                            fields: &fields.fields,
                        },
                        // Its fields were read lossily: only the file, read again in the
                        // right encoding, has them.
                        false => Input::Kept,
                    };
                    let place = (cur.cur.key_space(cur.id), at);
                    step.push(place, origin_here, result, &raw, input);
                }
                step.consumed = consumed;
            }
        }
        step.newlines = buf[..step.consumed].iter().filter(|b| **b == b'\n').count() as u64;
        step
    }

    /// Runs queue_log lines through the tracker; returns the tracker's cursor to commit with
    /// what they gave.
    pub(super) fn apply_queue_log(
        &mut self,
        lines: Vec<(String, String)>,
        records: &mut Vec<NewRecord>,
        changes: &mut Vec<ChangeRead>,
        parked: &mut Vec<Parked>,
    ) -> (i64, String) {
        let cfg = self.cfg.queue_log.as_ref().expect("queue_log configured");
        let (id, tracker) = self.tracker.as_mut().expect("tracker loaded");
        crate::sources::queue_log::apply(
            cfg,
            self.cfg.rows.states.as_ref(),
            tracker,
            lines,
            records,
            changes,
            parked,
        );
        (*id, serde_json::to_string(tracker).expect("serializes"))
    }
}

/// Where a position in the parsed text lies in the file.
pub(super) struct Positions<'a> {
    /// The file offset of the text's first byte.
    base: u64,
    /// For UTF-16 input, the way back from the UTF-8 text to the file's bytes.
    map: Option<&'a parse::Transcoded>,
}

impl Positions<'_> {
    fn at(&self, pos: usize) -> u64 {
        self.base + self.map.map_or(pos, |t| t.input_offset(pos)) as u64
    }
}

#[derive(Default)]
pub(super) struct Step {
    records: Vec<NewRecord>,
    parked: Vec<Parked>,
    skipped: u64,
    consumed: usize,
    newlines: u64,
    header: Option<Vec<String>>,
    /// Rows may give many records (`expand`): positions then leave room for them.
    expands: bool,
    /// The buffer held more rows than one commit takes; the rest is read again next.
    cut_short: bool,
    /// Agent state changes, in order (`emits = "agent_states"`).
    changes: Vec<ChangeRead>,
    /// queue_log lines (origin, line), in order.
    queue_log: Vec<(String, String)>,
}

/// The most rows one commit takes: bounds memory for files of short rows.
pub(super) const ROWS_PER_COMMIT: usize = 16_384;

impl Step {
    /// Keeps the first [`ROWS_PER_COMMIT`] items; returns where the first one left out starts.
    fn limit<T>(&mut self, items: &mut Vec<parse::Item<T>>) -> Option<usize> {
        let next = items.get(ROWS_PER_COMMIT)?.start;
        items.truncate(ROWS_PER_COMMIT);
        self.cut_short = true;
        Some(next)
    }

    /// Parks a row longer than `max_line` (its first 4 KiB kept); `true` if it was.
    fn too_long<T>(
        &mut self,
        item: &parse::Item<T>,
        pos: &Positions<'_>,
        max_line: usize,
        origin: &str,
        buf: &[u8],
    ) -> bool {
        let length = pos.at(item.end) - pos.at(item.start);
        if length <= max_line as u64 {
            return false;
        }
        let kept = &buf[item.start..item.end.min(item.start + LONG_LINE_KEPT)];
        self.parked.push(Parked {
            origin: origin.to_owned(),
            reason: long_line_reason(length, max_line, kept.len()),
            raw: String::from_utf8_lossy(kept).into_owned(),
            replay: None,
        });
        true
    }

    /// Adds what the row at file offset `offset` became; `input` says what a parked row keeps
    /// to be mapped again.
    fn push(
        &mut self,
        (cursor, offset): (i64, u64),
        origin: String,
        outcome: RowOutcome,
        raw: &str,
        input: Input<'_>,
    ) {
        let place = RowPlace::File { cursor, offset };
        let replay = |kept: &str| match input {
            Input::Line => Some(Replay::json(place.owned(), raw, kept)),
            Input::Csv { columns, fields } => Some(Replay {
                place: place.owned(),
                fields: Some(fields.to_vec()),
                header: Some(Arc::from(columns)),
                text: None,
            }),
            Input::Kept => None,
        };
        // What a change or a parked row keeps: its text (the first 4 KiB) and its replay.
        let kept = || {
            let kept = crate::text::truncate(raw, 4096);
            (replay(&kept), kept)
        };
        match outcome {
            Ok(None) => self.skipped += 1,
            Ok(Some(RowOut::Change(change))) => {
                let (replay, raw) = kept();
                self.changes.push(ChangeRead {
                    change,
                    origin,
                    replay,
                    raw,
                })
            }
            Ok(Some(RowOut::Records(records, key))) => self.records.extend(row_records(
                records,
                key.as_deref(),
                place,
                self.expands,
                &origin,
                || raw.to_owned(),
            )),
            Err(reason) => {
                let (replay, raw) = kept();
                self.parked.push(Parked {
                    origin,
                    reason,
                    replay,
                    raw,
                })
            }
        }
    }
}

/// What a row of a file keeps, should it be parked, to be mapped again (`parked retry`).
#[derive(Clone, Copy)]
pub(super) enum Input<'a> {
    /// An NDJSON line: its text.
    Line,
    /// A CSV/TSV record: its fields and the columns they were read under.
    Csv {
        columns: &'a [String],
        fields: &'a [String],
    },
    /// Only its text, to be read (a line not in the source's encoding, a queue_log line).
    Kept,
}

pub(super) struct CsvRow<'a> {
    columns: &'a [String],
    fields: &'a [String],
}

impl Row for CsvRow<'_> {
    fn get(&self, column: &str) -> Option<Cow<'_, str>> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.fields.get(i).map(|f| Cow::Borrowed(f.as_str()))
    }
}

/// What an NDJSON line becomes. `plain`: lines already in the API's shape, read without a
/// map, key or skip rule.
pub(crate) fn json_row(rules: &RowRules, plain: bool, emits: Emits, text: &str) -> RowOutcome {
    if plain {
        return schema::normalize_json(emits, text).map(|r| Some(RowOut::Records(vec![r], None)));
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(obj)) => {
            rules.convert(&JsonRow(&obj), || schema::normalize_json(emits, text))
        }
        Ok(_) => Err("the line is not a JSON object".into()),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

/// What a CSV/TSV record becomes, and the line as it is kept when parked. A field that is
/// not text in the source's encoding parks the row only when the rules read its column.
pub(crate) fn csv_row(
    cfg: &FilesConfig,
    columns: &[String],
    fields: &Fields,
) -> (RowOutcome, String) {
    let raw = fields.fields.join(&(cfg.delimiter as char).to_string());
    for (index, why) in &fields.unreadable {
        let name = columns.get(*index);
        let read = match name {
            Some(name) => cfg.rows.columns().contains(&name.as_str()),
            // A field beyond the known columns is read by nothing.
            None => columns.is_empty(),
        };
        if read {
            let column = name.map(|n| format!("column `{n}` (field {})", index + 1));
            let column = column.unwrap_or_else(|| format!("field {}", index + 1));
            return (Err(format!("{column}: {why}")), raw);
        }
    }
    let row = CsvRow {
        columns,
        fields: &fields.fields,
    };
    let result = cfg
        .rows
        .convert(&row, || unreachable!("csv sources have a map"));
    (result, raw)
}
