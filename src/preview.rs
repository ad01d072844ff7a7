//! `injixo-sync preview`: what a source would send, row by row, without writing to the outbox
//! or sending anything. The loop a person uses to get a `[source.map]` right in minutes.
//!
//! Files are read from their start (the first `--rows` rows) through the same per-row
//! conversion the files source runs (`csv_row`, `json_row`, the queue_log tracker). Pollers
//! poll their first page from `initial_cursor` into a scratch outbox in a temporary folder,
//! through the same `Sink` the daemon commits with, and nothing of the real state file is
//! read or written.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use serde::Serialize;

use crate::config::{Config, FileFormat, FilesConfig, SourceConfig, SourceKind};
use crate::sources::files::{StateFiles, csv_row, json_row, matching_files};
use crate::sources::parse;
use crate::sources::rows::{ChangeRead, RowOut};

/// What one row would become.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Shown {
    /// The records as they would be sent.
    Records(Vec<serde_json::Value>),
    /// Why it would be parked.
    Parked(String),
    /// Left out by `skip_if`.
    Skipped,
    /// Its `key` was given by an earlier, different row: merged into (dropped in favour of)
    /// that row's record.
    Merged { into: String },
    /// The same row as an earlier one, key and all: one record.
    Repeat { of: String },
    /// A parked row whose records are in the outbox already (delivered, or read again since):
    /// `parked retry` takes it out without enqueueing them again.
    InOutbox,
    /// A parked row kept to be read, not mapped again: why.
    Kept(String),
    /// An agent's state change (`emits = "agent_states"`): intervals are built from
    /// consecutive changes of an agent.
    Change {
        agent: String,
        activity: Option<String>,
        at: String,
    },
}

#[derive(Debug, Serialize)]
pub struct PreviewRow {
    pub origin: String,
    #[serde(flatten)]
    pub shown: Shown,
}

/// A source's preview: its first rows, and what became of every row read.
#[derive(Debug, Serialize)]
pub struct Preview {
    pub source: String,
    /// The file read, or where a poller's first page starts.
    pub from: String,
    pub rows: Vec<PreviewRow>,
    /// Over every row read (a whole file), not only the rows shown.
    pub summary: Summary,
}

impl Preview {
    pub fn parked(&self) -> usize {
        self.summary.parked
    }

    /// The summary: rows, records, parked (by reason), skipped, merged.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut out = format!("{}: {}\n\n", self.source, self.from);
        let width = self
            .rows
            .iter()
            .map(|r| r.origin.len())
            .max()
            .unwrap_or(0)
            .min(40);
        for r in &self.rows {
            let what = match &r.shown {
                Shown::Records(records) => records
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(&format!("\n{:width$}  ", "")),
                Shown::Parked(why) => format!("PARKED {why}"),
                Shown::Skipped => "SKIPPED (skip_if)".into(),
                Shown::Merged { into } => format!(
                    "MERGED into the record of {into} (same key, another row: this row is not sent)"
                ),
                Shown::Repeat { of } => format!("REPEAT of {of} (the same row again: one record)"),
                Shown::InOutbox => {
                    "IN OUTBOX already (delivered or pending): not enqueued again".into()
                }
                Shown::Kept(why) => format!("KEPT {why}"),
                Shown::Change {
                    agent,
                    activity,
                    at,
                } => format!(
                    "STATE agent {agent:?} {} at {at}",
                    match activity {
                        Some(a) => format!("is {a:?}"),
                        None => "logged out".into(),
                    }
                ),
            };
            let _ = writeln!(out, "{:width$}  {what}", r.origin);
        }
        let s = self.summary();
        let _ = write!(
            out,
            "\n{} row(s): {} record(s), {} parked, {} skipped, {} merged",
            s.rows, s.records, s.parked, s.skipped, s.merged
        );
        if s.repeats > 0 {
            let _ = write!(out, ", {} repeated", s.repeats);
        }
        if s.changes > 0 {
            let _ = write!(out, ", {} agent state change(s)", s.changes);
        }
        if s.in_outbox > 0 {
            let _ = write!(out, ", {} in the outbox already", s.in_outbox);
        }
        if s.kept > 0 {
            let _ = write!(out, ", {} kept to be read", s.kept);
        }
        out.push('\n');
        if s.merged > 0 {
            let _ = writeln!(
                out,
                "WARNING: {} row(s) have the key of an earlier row with other content and would \
                 not be sent: if they are different calls, the key is too narrow (add the column \
                 that tells them apart, or leave `key` out)",
                s.merged
            );
        }
        if !s.parked_by_reason.is_empty() {
            out.push_str("parked by reason:\n");
            for (reason, n) in &s.parked_by_reason {
                let _ = writeln!(out, "  {n:>5}  {reason}");
            }
        }
        out
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub rows: usize,
    pub records: usize,
    pub changes: usize,
    pub parked: usize,
    pub skipped: usize,
    pub merged: usize,
    pub repeats: usize,
    /// Parked rows whose records are in the outbox already (`preview --parked`).
    pub in_outbox: usize,
    /// Parked rows that cannot be mapped again (`preview --parked`).
    pub kept: usize,
    pub parked_by_reason: Vec<(String, usize)>,
}

impl Summary {
    /// Counts what one row became.
    fn add(&mut self, shown: &Shown) {
        self.rows += 1;
        match shown {
            Shown::Records(v) => self.records += v.len(),
            Shown::Parked(why) => {
                self.parked += 1;
                let kind = reason_kind(why);
                match self.parked_by_reason.iter_mut().find(|(k, _)| *k == kind) {
                    Some((_, n)) => *n += 1,
                    None => self.parked_by_reason.push((kind, 1)),
                }
            }
            Shown::Skipped => self.skipped += 1,
            Shown::Merged { .. } => self.merged += 1,
            Shown::Repeat { .. } => self.repeats += 1,
            Shown::InOutbox => self.in_outbox += 1,
            Shown::Kept(_) => self.kept += 1,
            Shown::Change { .. } => self.changes += 1,
        }
    }

    fn of(rows: &[PreviewRow]) -> Self {
        let mut s = Summary::default();
        for r in rows {
            s.add(&r.shown);
        }
        s
    }
}

/// The rows shown (the first `limit`) and the summary of every row.
struct Collector {
    limit: usize,
    rows: Vec<PreviewRow>,
    summary: Summary,
    /// Each key seen: (the hash of the row that gave it, where that row was).
    keys: HashMap<String, (i64, String)>,
}

impl Collector {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            rows: Vec::new(),
            summary: Summary::default(),
            keys: HashMap::new(),
        }
    }

    /// What the row at `origin` (read as `raw`) became.
    /// `raw` is the row as the daemon keeps it (`sources::rows::row_hash` of it tells a merge
    /// from a repeat, as the daemon does).
    fn add(&mut self, origin: String, outcome: Result<Option<RowOut>, String>, raw: &str) {
        let shown = match outcome {
            Err(why) => Shown::Parked(why),
            Ok(None) => Shown::Skipped,
            Ok(Some(RowOut::Change(c))) => Shown::Change {
                agent: c.agent,
                activity: c.activity,
                at: crate::normalize::time::to_api(c.at),
            },
            Ok(Some(RowOut::Records(records, key))) => {
                let hash = crate::sources::rows::row_hash(raw);
                let earlier = key.and_then(|k| match self.keys.get(&k) {
                    Some((h, first)) if *h == hash => Some(Shown::Repeat { of: first.clone() }),
                    Some((_, first)) => Some(Shown::Merged {
                        into: first.clone(),
                    }),
                    None => {
                        self.keys.insert(k, (hash, origin.clone()));
                        None
                    }
                });
                earlier.unwrap_or_else(|| records_shown(&records))
            }
        };
        self.push(origin, shown);
    }

    fn push(&mut self, origin: String, shown: Shown) {
        self.summary.add(&shown);
        if self.rows.len() < self.limit {
            self.rows.push(PreviewRow { origin, shown });
        }
    }
}

fn records_shown(records: &[String]) -> Shown {
    Shown::Records(
        records
            .iter()
            .map(|r| serde_json::from_str(r).unwrap_or_default())
            .collect(),
    )
}

/// What the current configuration makes of the parked rows (of `source`, or all): read from
/// the state file, which is not written. The first `limit` rows are shown, every one counted.
pub fn preview_parked(
    config: &Config,
    source: Option<&str>,
    limit: usize,
) -> anyhow::Result<Preview> {
    use crate::sources::replay::{Remapped, remap};
    let path = &config.state.path;
    let filter = crate::outbox::ParkedFilter {
        source: source.map(str::to_owned),
        reason: None,
        exact: false,
    };
    let known = crate::outbox::KnownKeys::open(path)?;
    let mut states = StoredStates {
        path,
        by_source: HashMap::new(),
    };
    let mut shown = Collector::new(limit);
    let mut after = 0;
    loop {
        let rows = crate::outbox::parked_rows(path, &filter, &[], after, 1000)?;
        let Some(last) = rows.last() else {
            break;
        };
        after = last.id;
        for row in &rows {
            let origin = match source {
                Some(_) => format!("#{} {}", row.id, row.origin),
                None => format!("#{} {} {}", row.id, row.source, row.origin),
            };
            let Ok(cfg) = config.source(&row.source) else {
                shown.push(
                    origin,
                    Shown::Kept("its source is not configured any more".into()),
                );
                continue;
            };
            let what = match remap(cfg, row) {
                Remapped::Records(list) => {
                    let mut all_known = !list.is_empty();
                    for r in &list {
                        all_known &= known.has(&row.source, &r.dkey)?;
                    }
                    let payloads: Vec<String> = list.into_iter().map(|r| r.payload).collect();
                    match all_known {
                        true => Shown::InOutbox,
                        false => records_shown(&payloads),
                    }
                }
                Remapped::Change(c) => match states.late(cfg, &row.source, &c.change)? {
                    Some(reason) => Shown::Parked(reason),
                    None => Shown::Change {
                        agent: c.change.agent,
                        activity: c.change.activity,
                        at: crate::normalize::time::to_api(c.change.at),
                    },
                },
                Remapped::Skipped => Shown::Skipped,
                Remapped::Parked(why) => Shown::Parked(why),
                Remapped::Kept(why) => Shown::Kept(why),
            };
            shown.push(origin, what);
        }
    }
    Ok(Preview {
        source: source.unwrap_or("every source").to_owned(),
        from: format!("parked input in {}", path.display()),
        rows: shown.rows,
        summary: shown.summary,
    })
}

/// Each source's agents' open states as the state file holds them.
struct StoredStates<'a> {
    path: &'a Path,
    by_source: HashMap<String, crate::normalize::intervals::Builder>,
}

impl StoredStates<'_> {
    /// Why `change` would stay parked when replayed against the stored open states (older
    /// than the agent's newest change), as `parked retry` would leave it; `None` if it applies.
    fn late(
        &mut self,
        cfg: &SourceConfig,
        source: &str,
        change: &crate::normalize::intervals::Change,
    ) -> anyhow::Result<Option<String>> {
        let Some(states) = &cfg.kind.rows().states else {
            return Ok(None);
        };
        if !self.by_source.contains_key(source) {
            let stored = crate::outbox::cursor_value(
                self.path,
                source,
                crate::sources::rows::STATES_CURSOR,
            )?;
            let builder = stored
                .and_then(|v| serde_json::from_str(&v).ok())
                .unwrap_or_default();
            self.by_source.insert(source.to_owned(), builder);
        }
        let mut probe = self.by_source[source].clone();
        Ok(probe
            .apply(change.clone(), &states.settings, &mut Vec::new())
            .err()
            .map(|refused| crate::parked::replayed_late(&refused)))
    }
}

/// A reason without the row's own value (its first quoted text), so that rows parked for one
/// cause are counted together.
fn reason_kind(why: &str) -> String {
    let Some(open) = why.find('"') else {
        return why.to_owned();
    };
    match why[open + 1..].find('"') {
        Some(close) => format!("{}\"…\"{}", &why[..open], &why[open + 1 + close + 1..]),
        None => why.to_owned(),
    }
}

/// `injixo-sync preview`.
pub fn main(
    config_path: &Path,
    source: Option<&str>,
    from: Option<PathBuf>,
    (rows, parked): (usize, bool),
    json: bool,
) -> anyhow::Result<ExitCode> {
    // Nothing is sent: no configuration id or API key is needed yet.
    let config = Config::load_draft(config_path)?;
    if let Some(source) = source {
        config.source(source)?;
    }
    let preview = match (parked, source) {
        (true, source) => {
            anyhow::ensure!(from.is_none(), "--from and --parked: choose one");
            preview_parked(&config, source, rows)?
        }
        (false, Some(source)) => preview_source(&config, source, from, rows)?,
        (false, None) => anyhow::bail!("say which source: --source NAME (or --parked)"),
    };
    show(&preview, json)?;
    Ok(if preview.parked() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn show(preview: &Preview, json: bool) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "source": preview.source,
                "from": preview.from,
                "rows": preview.rows,
                "summary": preview.summary,
            }))?
        );
    } else {
        print!("{}", preview.render());
    }
    Ok(())
}

/// What a source's input would become: a file's first rows, a poller's first page.
fn preview_source(
    config: &Config,
    source: &str,
    from: Option<PathBuf>,
    rows: usize,
) -> anyhow::Result<Preview> {
    let cfg = config.source(source)?;
    Ok(match &cfg.kind {
        SourceKind::Files(files) => {
            let file = match from {
                Some(f) => f,
                None => oldest(files).with_context(|| {
                    format!(
                        "source {source:?}: no file in {} matches its include/exclude \
                         (pass --from PATH)",
                        files.path.display()
                    )
                })?,
            };
            preview_file(cfg, files, &file, rows)?
        }
        SourceKind::Sql(_) | SourceKind::Http(_) => {
            anyhow::ensure!(
                from.is_none(),
                "--from applies to files sources; a {} source previews its first page from \
                 initial_cursor",
                cfg.kind.name()
            );
            preview_poll(cfg, rows)?
        }
        SourceKind::Webhook(_) => anyhow::bail!(
            "source {source:?} is a webhook: it is pushed to, so there is nothing to read \
             ahead; `send-test` shows the API's answer to a record, and `preview --parked` \
             what its parked pushes become now"
        ),
    })
}

/// The oldest file a files source would read.
fn oldest(files: &FilesConfig) -> Option<PathBuf> {
    // A preview only reads: the outbox's files are left to the configuration's check.
    matching_files(files, &StateFiles::default())
        .0
        .into_iter()
        .next()
        .map(|(p, _)| p)
}

/// The most bytes of a file `preview` reads (and counts rows over).
const PREVIEW_MAX: usize = 256 << 20;

/// The first `rows` rows of `file` as the files source would read them, and what became of
/// every row of it (merges and parked rows often begin far from the first rows).
pub fn preview_file(
    source: &SourceConfig,
    files: &FilesConfig,
    file: &Path,
    rows: usize,
) -> anyhow::Result<Preview> {
    use std::io::Read as _;
    let name = file
        .strip_prefix(&files.path)
        .unwrap_or(file)
        .display()
        .to_string();
    let name = if name.is_empty() {
        file.display().to_string()
    } else {
        name
    };
    let mut buf = Vec::new();
    std::fs::File::open(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .take(PREVIEW_MAX as u64 + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let complete = buf.len() <= PREVIEW_MAX;
    buf.truncate(PREVIEW_MAX);
    let collected = preview_bytes(source, files, &name, &buf, complete, rows);
    let read = if complete {
        "the whole file".to_owned()
    } else {
        format!("its first {} MiB", PREVIEW_MAX >> 20)
    };
    Ok(Preview {
        source: source.name.as_str().to_owned(),
        from: format!(
            "{} (the first {} row(s) shown; counted over {read})",
            file.display(),
            collected.rows.len()
        ),
        rows: collected.rows,
        summary: collected.summary,
    })
}

/// Converts every row of `buf` (a file's first bytes; `complete`: all of it), keeping the
/// first `limit` to show.
fn preview_bytes(
    source: &SourceConfig,
    files: &FilesConfig,
    name: &str,
    buf: &[u8],
    complete: bool,
    limit: usize,
) -> Collector {
    let charset = files.charset;
    let skip = charset.bom_len(buf).min(buf.len());
    let raw = &buf[skip..];
    let transcoded = charset
        .big_endian(buf)
        .map(|be| parse::Transcoded::utf16(raw, be, complete));
    let text = transcoded.as_ref().map_or(raw, |t| &t.text[..]);
    let origin = |newlines: u64| format!("{name}:{}", newlines + 1);
    let mut out = Collector::new(limit);
    match files.format {
        FileFormat::Csv | FileFormat::Tsv => {
            let (items, _) = parse::csv(text, files.delimiter, charset, complete, usize::MAX);
            let mut columns: Vec<String> = files.columns.clone().unwrap_or_default();
            for (n, item) in items.into_iter().enumerate() {
                if n == 0 && files.header {
                    if files.columns.is_none() {
                        columns = item.value.fields;
                    }
                    continue;
                }
                let (outcome, raw) = csv_row(files, &columns, &item.value);
                out.add(origin(item.newlines_before), outcome, &raw);
            }
        }
        FileFormat::Ndjson => {
            let plain = files.rows.is_plain();
            for item in parse::lines(text, complete) {
                // Hashed as the daemon keeps it: decoded, without a byte order mark.
                let (outcome, raw) = match charset.decode(item.value) {
                    Ok(t) => {
                        let t = t.trim_start_matches('\u{feff}');
                        (
                            json_row(&files.rows, plain, source.lane.emits, t),
                            t.to_owned(),
                        )
                    }
                    Err(e) => (Err(e), String::from_utf8_lossy(item.value).into_owned()),
                };
                out.add(origin(item.newlines_before), outcome, &raw);
            }
        }
        FileFormat::QueueLog => {
            let Some(cfg) = &files.queue_log else {
                return out;
            };
            let mut tracker = crate::normalize::queue_log::Tracker::default();
            for item in parse::lines(text, complete) {
                let here = origin(item.newlines_before);
                let line = match charset.decode(item.value) {
                    Ok(t) => t.into_owned(),
                    Err(e) => {
                        out.add(here, Err(e), &String::from_utf8_lossy(item.value));
                        continue;
                    }
                };
                if let Err(e) = crate::normalize::queue_log::parse(&line) {
                    out.add(here, Err(e), &String::from_utf8_lossy(item.value));
                    continue;
                }
                let (mut records, mut changes, mut parked) = (Vec::new(), Vec::new(), Vec::new());
                crate::sources::queue_log::apply(
                    cfg,
                    files.rows.states.as_ref(),
                    &mut tracker,
                    vec![(here.clone(), line)],
                    &mut records,
                    &mut changes,
                    &mut parked,
                );
                let outcome = if let Some(p) = parked.pop() {
                    Err(p.reason)
                } else if let Some(ChangeRead { change, .. }) = changes.pop() {
                    Ok(Some(RowOut::Change(change)))
                } else if records.is_empty() {
                    // A line that only moves the tracker on (a call entering a queue).
                    continue;
                } else {
                    Ok(Some(RowOut::Records(
                        records.into_iter().map(|r| r.payload).collect(),
                        None,
                    )))
                };
                out.add(here, outcome, &String::from_utf8_lossy(item.value));
            }
        }
    }
    out
}

/// A poller's first page from `initial_cursor`, read into a scratch outbox.
fn preview_poll(source: &SourceConfig, rows: usize) -> anyhow::Result<Preview> {
    let scratch = tempfile::tempdir().context("cannot make a scratch folder")?;
    let state = scratch.path().join("preview.db");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (outbox, writer) = crate::outbox::Outbox::open(&state)?;
    let (id, lane) = runtime.block_on(async {
        Ok::<_, crate::outbox::OutboxError>((
            outbox.source_id(&source.name).await?,
            outbox.lane_id(&source.lane).await?,
        ))
    })?;
    let ctx = crate::sources::SourceContext::new(
        source,
        (id, lane),
        outbox.clone(),
        tokio_util::sync::CancellationToken::new(),
    );
    let metrics = ctx.metrics.clone();
    let kind = source.kind.clone();
    let polled = runtime.block_on(async move {
        tokio::task::spawn_blocking(move || match &kind {
            SourceKind::Sql(sql) => crate::sources::sql::preview(sql, &ctx),
            SourceKind::Http(http) => crate::sources::http::preview(http, &ctx),
            _ => unreachable!("pollers only"),
        })
        .await
    })?;
    drop(outbox);
    let _ = writer.join();
    polled.map_err(|e| anyhow::anyhow!("source {:?}: {e}", source.name.as_str()))?;
    let read = crate::outbox::rows_read(&state, rows)?;
    let mut out: Vec<PreviewRow> = read
        .into_iter()
        .map(|r| PreviewRow {
            origin: r.origin,
            shown: match r.parked {
                Some(why) => Shown::Parked(why),
                None => Shown::Records(vec![serde_json::from_str(&r.payload).unwrap_or_default()]),
            },
        })
        .collect();
    let skipped = metrics.skipped.load(std::sync::atomic::Ordering::Relaxed);
    let merged = metrics.merged.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..skipped {
        out.push(PreviewRow {
            origin: "(a row)".into(),
            shown: Shown::Skipped,
        });
    }
    for _ in 0..merged {
        out.push(PreviewRow {
            origin: "(a row)".into(),
            shown: Shown::Merged {
                into: "an earlier row".into(),
            },
        });
    }
    let initial = match &source.kind {
        SourceKind::Sql(s) => s.initial_cursor.clone(),
        SourceKind::Http(h) => h.initial_cursor.clone(),
        _ => None,
    };
    Ok(Preview {
        source: source.name.as_str().to_owned(),
        from: format!(
            "the first page from initial_cursor {}",
            initial.as_deref().unwrap_or("(none: from the start)")
        ),
        summary: Summary::of(&out),
        rows: out,
    })
}
