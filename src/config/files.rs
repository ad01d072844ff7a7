//! `type = "files"`: which files (path, include, exclude, recursive), how they are read
//! (format, drop or tail, markers, rotation) and what happens to them after.

use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::problems::{Seg, Validator};
use super::raw::RawSource;
use super::{QueueLogConfig, RowRules, SourceKind};
use crate::encoding::{Charset, Endian};
use crate::types::Emits;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    Ndjson,
    Csv,
    Tsv,
    /// Asterisk's queue_log (`type = "asterisk_queue_log"`).
    QueueLog,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileMode {
    /// Whole files appear; each is read once it has stopped changing.
    Drop,
    /// Files grow; appended lines are read as they arrive.
    Tail,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum After {
    Keep,
    Delete,
    Move(PathBuf),
}

/// How a directory is watched (`watch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watch {
    /// File-system events, unless the directory is on a network file system (SMB/CIFS, NFS,
    /// ...), where events from other machines never arrive: then the poll scan alone.
    Auto,
    /// File-system events wherever the directory is.
    Events,
    /// The poll scan alone.
    Poll,
}

/// `marker = "{name}.done"` or `"{stem}.ok"`: the file that says an export is complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// `{stem}` (the name without its last extension) rather than `{name}`.
    pub stem: bool,
    pub suffix: String,
}

impl Marker {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (stem, suffix) = if let Some(rest) = s.strip_prefix("{name}") {
            (false, rest)
        } else if let Some(rest) = s.strip_prefix("{stem}") {
            (true, rest)
        } else {
            return Err(format!(
                "{s:?} is not a marker: write \"{{name}}.done\" (calls.csv → calls.csv.done) or \
                 \"{{stem}}.ok\" (calls.csv → calls.ok)"
            ));
        };
        if suffix.is_empty() || suffix.contains(['/', '\\', '{', '}']) {
            return Err(format!(
                "{s:?}: the marker needs a plain suffix after {{name}} or {{stem}}, such as \".done\""
            ));
        }
        Ok(Self {
            stem,
            suffix: suffix.to_owned(),
        })
    }

    /// The marker file of a data file.
    pub fn of(&self, path: &Path) -> PathBuf {
        let base = if self.stem {
            path.file_stem()
        } else {
            path.file_name()
        }
        .unwrap_or_default();
        let mut name = base.to_os_string();
        name.push(&self.suffix);
        path.with_file_name(name)
    }

    /// Whether a file is a marker rather than data.
    pub fn is_marker(&self, path: &Path) -> bool {
        path.file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(&self.suffix))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    End,
}

#[derive(Clone, Debug)]
pub struct FilesConfig {
    pub path: PathBuf,
    pub recursive: bool,
    pub include: GlobSet,
    pub exclude: GlobSet,
    pub format: FileFormat,
    pub mode: FileMode,
    pub after: After,
    pub settle: Duration,
    pub poll_interval: Duration,
    /// The longest line (a CSV record) read; a longer one is parked, its first 4 KiB kept.
    pub max_line: usize,
    pub start_at: StartAt,
    pub delimiter: u8,
    /// How the files' bytes become text (`encoding`).
    pub charset: Charset,
    pub header: bool,
    pub columns: Option<Vec<String>>,
    pub rows: RowRules,
    pub watch: Watch,
    /// `marker`: a dropped file is complete once its marker file exists.
    pub marker: Option<Marker>,
    /// `type = "asterisk_queue_log"`.
    pub queue_log: Option<QueueLogConfig>,
    /// Only files modified at or after this (`import --since`; not a configuration key).
    pub modified_since: Option<std::time::SystemTime>,
}

impl FilesConfig {
    /// The columns a CSV/TSV row is read under: `columns` if configured, else its file's
    /// header (none before a header is read).
    pub fn csv_columns<'a>(&'a self, header: Option<&'a [String]>) -> &'a [String] {
        match (&self.columns, header) {
            (Some(c), _) => c,
            (None, Some(h)) => h,
            (None, None) => &[],
        }
    }
}

/// `max_line` when not set: far above any real export line, far below what hurts.
pub const DEFAULT_MAX_LINE: usize = 1 << 20;

impl Validator<'_> {
    pub(super) fn files(
        &mut self,
        i: usize,
        label: &str,
        emits: Option<Emits>,
        mut raw: RawSource,
    ) -> Option<SourceKind> {
        let kind = if raw.kind.as_deref() == Some("files") {
            "files"
        } else {
            "asterisk_queue_log"
        };
        self.only_keys(i, label, kind, super::pollers::FILES);
        let at = |key: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(key)];
        let key = |k: &str| format!("{label}.{k}");
        let path = match raw.path.take() {
            Some(p) => Some(self.path(&p)),
            None => {
                self.source_problem(
                    i,
                    label,
                    "path",
                    "is required: the directory the ACD writes its exports to",
                );
                None
            }
        };
        let format = self.file_format(i, label, &raw);
        let queue_log = (format == Some(FileFormat::QueueLog))
            .then(|| self.queue_log_config(i, label, &mut raw));
        self.not_applicable(
            i,
            label,
            &[
                ("channel", raw.channel.is_some()),
                ("queues", raw.queues.is_some()),
            ],
            "applies only to type = \"asterisk_queue_log\"",
        );
        let mode = self.one_of(
            &at("mode"),
            &key("mode"),
            raw.mode.as_deref(),
            FileMode::Drop,
            &[("drop", FileMode::Drop), ("tail", FileMode::Tail)],
        );
        let (include, exclude) = self.patterns(i, label, &mut raw);
        let after = self.after(i, label, &mut raw, mode);
        let s = Duration::from_secs;
        let settle = self.duration(
            &at("settle"),
            &key("settle"),
            raw.settle.as_deref(),
            s(2),
            (Duration::ZERO, s(3600)),
        );
        let poll_interval = self.duration(
            &at("poll_interval"),
            &key("poll_interval"),
            raw.poll_interval.as_deref(),
            s(5),
            (Duration::from_millis(50), s(3600)),
        );
        let max_line = self.size(
            &at("max_line"),
            &key("max_line"),
            raw.max_line.as_deref(),
            DEFAULT_MAX_LINE as u64,
            (1024, 64 << 20),
        ) as usize;
        let start_at = self.start_at(i, label, &raw, mode);
        let tabular = matches!(format, Some(FileFormat::Csv | FileFormat::Tsv));
        let delimiter = self.delimiter(i, label, &raw, format);
        let charset = self.encoding(i, label, &raw);
        let header = self.header(i, label, &raw, tabular);
        let watch = self.one_of(
            &at("watch"),
            &key("watch"),
            raw.watch.as_deref(),
            Watch::Auto,
            &[
                ("auto", Watch::Auto),
                ("events", Watch::Events),
                ("poll", Watch::Poll),
            ],
        );
        let marker = self.marker(i, label, &raw, mode);
        let rows = self.rows(i, label, emits, &mut raw, tabular, queue_log.is_some())?;
        Some(SourceKind::Files(FilesConfig {
            path: path?,
            recursive: raw.recursive.unwrap_or(false),
            include,
            exclude,
            format: format?,
            mode,
            after,
            settle,
            poll_interval,
            max_line,
            start_at,
            delimiter,
            charset,
            header,
            columns: raw.columns,
            rows,
            watch,
            marker,
            queue_log,
            modified_since: None,
        }))
    }

    /// `format`: required; `asterisk_queue_log` only for that type.
    fn file_format(&mut self, i: usize, label: &str, raw: &RawSource) -> Option<FileFormat> {
        let at = |key: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(key)];
        let key = |k: &str| format!("{label}.{k}");
        match raw.format.as_deref() {
            None => {
                self.source_problem(
                    i,
                    label,
                    "format",
                    "is required: \"ndjson\", \"csv\" or \"tsv\"",
                );
                None
            }
            f => Some(self.one_of(
                &at("format"),
                &key("format"),
                f,
                FileFormat::Ndjson,
                if raw.kind.as_deref() == Some("asterisk_queue_log") {
                    &[("asterisk_queue_log", FileFormat::QueueLog)]
                } else {
                    &[
                        ("ndjson", FileFormat::Ndjson),
                        ("csv", FileFormat::Csv),
                        ("tsv", FileFormat::Tsv),
                    ]
                },
            )),
        }
    }

    /// `include` and `exclude`, with the names writers use for files still being written left
    /// out by default.
    fn patterns(&mut self, i: usize, label: &str, raw: &mut RawSource) -> (GlobSet, GlobSet) {
        let at = |key: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(key)];
        let key = |k: &str| format!("{label}.{k}");
        let include = self.globs(&at("include"), &key("include"), raw.include.take(), &["*"]);
        // Names that writers use while a file is incomplete (rsync's hidden temporaries,
        // browsers' and copy tools' partial files, Office lock files).
        let exclude = self.globs(
            &at("exclude"),
            &key("exclude"),
            raw.exclude.take(),
            &[".*", "*/.*", "*.tmp", "*.part", "*.partial", "~$*"],
        );
        (include, exclude)
    }

    /// `after` and `archive_dir`: what becomes of a dropped file once read.
    fn after(&mut self, i: usize, label: &str, raw: &mut RawSource, mode: FileMode) -> After {
        let after = match (raw.after.as_deref(), raw.archive_dir.take()) {
            (None | Some("keep"), None) => After::Keep,
            (Some("delete"), None) => After::Delete,
            (Some("move"), Some(dir)) => After::Move(self.path(&dir)),
            (Some("move"), None) => {
                self.source_problem(
                    i,
                    label,
                    "after",
                    "\"move\" needs archive_dir: the directory read files are moved to",
                );
                After::Keep
            }
            (Some("keep" | "delete") | None, Some(_)) => {
                self.source_problem(
                    i,
                    label,
                    "archive_dir",
                    "applies only with after = \"move\"",
                );
                After::Keep
            }
            (Some(other), _) => {
                self.source_problem(
                    i,
                    label,
                    "after",
                    format!("{other:?} is not valid: use \"keep\", \"delete\" or \"move\""),
                );
                After::Keep
            }
        };
        if mode == FileMode::Tail && after != After::Keep {
            self.source_problem(
                i,
                label,
                "after",
                "applies only to mode = \"drop\": a tailed file belongs to the ACD that writes it",
            );
        }
        after
    }

    /// `start_at`, for tailed files only.
    fn start_at(&mut self, i: usize, label: &str, raw: &RawSource, mode: FileMode) -> StartAt {
        let at = |key: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(key)];
        let key = |k: &str| format!("{label}.{k}");
        let start_at = self.one_of(
            &at("start_at"),
            &key("start_at"),
            raw.start_at.as_deref(),
            StartAt::Beginning,
            &[("beginning", StartAt::Beginning), ("end", StartAt::End)],
        );
        if raw.start_at.is_some() && mode == FileMode::Drop {
            self.source_problem(
                i,
                label,
                "start_at",
                "applies only to mode = \"tail\": dropped files are always read whole",
            );
        }
        start_at
    }

    /// `delimiter`, for csv and tsv only.
    fn delimiter(
        &mut self,
        i: usize,
        label: &str,
        raw: &RawSource,
        format: Option<FileFormat>,
    ) -> u8 {
        let tabular = matches!(format, Some(FileFormat::Csv | FileFormat::Tsv));
        match (&raw.delimiter, format) {
            (None, Some(FileFormat::Tsv)) => b'\t',
            (None, _) => b',',
            (Some(_), _) if !tabular => {
                self.source_problem(
                    i,
                    label,
                    "delimiter",
                    "applies only to format = \"csv\" or \"tsv\"",
                );
                b','
            }
            (Some(d), _) if d == "\\t" || d == "\t" => b'\t',
            (Some(d), _) if d.len() == 1 && d.is_ascii() && d != "\"" && d != "\n" => {
                d.as_bytes()[0]
            }
            (Some(d), _) => {
                self.source_problem(i, label, "delimiter",
                    format!("{d:?} is not a delimiter: use one ASCII character such as \",\", \";\" or \"\\t\""),
                );
                b','
            }
        }
    }

    /// `encoding`.
    fn encoding(&mut self, i: usize, label: &str, raw: &RawSource) -> Charset {
        match raw
            .encoding
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("utf-8" | "utf8") => Charset::Utf8,
            Some("windows-1252" | "cp1252" | "latin1" | "iso-8859-1") => Charset::Windows1252,
            Some("utf-16" | "utf16" | "ucs-2" | "unicode") => Charset::Utf16(Endian::Detect),
            Some("utf-16le" | "utf16le") => Charset::Utf16(Endian::Little),
            Some("utf-16be" | "utf16be") => Charset::Utf16(Endian::Big),
            Some(other) => {
                self.source_problem(i, label, "encoding",
                    format!(
                        "{other:?} is not supported: use \"utf-8\", \"windows-1252\" (also for \
                         latin1), \"utf-16\" (byte order from the BOM), \"utf-16le\" or \"utf-16be\""
                    ),
                );
                Charset::Utf8
            }
        }
    }

    /// `header` and `columns`, for csv and tsv only: without a header the columns are named.
    fn header(&mut self, i: usize, label: &str, raw: &RawSource, tabular: bool) -> bool {
        let at = |key: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(key)];
        let key = |k: &str| format!("{label}.{k}");
        if !tabular && (raw.header.is_some() || raw.columns.is_some()) {
            self.problem(
                &at(if raw.header.is_some() {
                    "header"
                } else {
                    "columns"
                }),
                &key(if raw.header.is_some() {
                    "header"
                } else {
                    "columns"
                }),
                "applies only to format = \"csv\" or \"tsv\"",
            );
        }
        let header = raw.header.unwrap_or(raw.columns.is_none());
        if tabular && !header && raw.columns.is_none() {
            self.source_problem(
                i,
                label,
                "header",
                "is false, so `columns = [...]` must name the columns",
            );
        }
        header
    }

    /// `marker`, for dropped files only.
    fn marker(&mut self, i: usize, label: &str, raw: &RawSource, mode: FileMode) -> Option<Marker> {
        match raw.marker.as_deref().map(Marker::parse) {
            None => None,
            Some(_) if mode == FileMode::Tail => {
                self.source_problem(
                    i,
                    label,
                    "marker",
                    "applies only to mode = \"drop\": a tailed file is never complete",
                );
                None
            }
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => {
                self.source_problem(i, label, "marker", e);
                None
            }
        }
    }

    /// A files source must not reach the state file or the files kept beside it: `delete`
    /// and `move` would take the outbox away, `keep` would park its bytes (and grow the log
    /// it reads again), `tail` would follow a file that changes with every commit. Reached
    /// means: the state file's folder is the source's `path` (or below it, with `recursive`)
    /// and `include`/`exclude` let one of those names through. Paths are compared as they are
    /// on disk where they exist (symlinks resolved); the scan also skips the files by identity
    /// for what this cannot see.
    pub(super) fn away_from_state(
        &mut self,
        i: usize,
        name: &str,
        files: &FilesConfig,
        state: &Path,
    ) {
        let (Some(state_dir), Some(state_name)) = (state.parent(), state.file_name()) else {
            return;
        };
        let (source, state_dir) = (resolved(&files.path), resolved(state_dir));
        let Ok(below) = state_dir.strip_prefix(&source) else {
            return;
        };
        if !below.as_os_str().is_empty() && !files.recursive {
            return;
        }
        // The scan does not go into the archive folder.
        if let After::Move(archive) = &files.after
            && state_dir.starts_with(resolved(archive))
        {
            return;
        }
        let state_name = state_name.to_string_lossy();
        let reached: Vec<String> = side_names(&state_name)
            .into_iter()
            .filter(|n| {
                let rel = below.join(n);
                files.include.is_match(&rel) && !files.exclude.is_match(&rel)
            })
            .collect();
        if reached.is_empty() {
            return;
        }
        let shown: Vec<String> = reached
            .iter()
            .map(|n| n.replace(".new-1-0", ".new-<pid>-<n>"))
            .collect();
        let how = if below.as_os_str().is_empty() {
            "is the folder of".to_owned()
        } else {
            "holds, with recursive = true, the folder of".to_owned()
        };
        self.problem(
            &[Seg::Key("source"), Seg::Index(i), Seg::Key("path")],
            &format!("source[{i}] {name:?}.path"),
            format!(
                "{} {how} [state] path {}, and include/exclude let the source read {} (the \
                 outbox and the files SQLite and the lock keep beside it): it would {}. \
                 Move the state file out of the folders sources read (the default is {}), or \
                 exclude its names, e.g. exclude = [\"{}*\"]",
                files.path.display(),
                state.display(),
                shown.join(", "),
                match (&files.mode, &files.after) {
                    (FileMode::Tail, _) => "follow them and park their bytes as bad lines",
                    (_, After::Delete) => "delete them",
                    (_, After::Move(_)) => "move them away",
                    (_, After::Keep) => "park their bytes as bad lines",
                },
                super::paths::default_state_path().display(),
                // Patterns match the path below the source's folder.
                below.join(&*state_name).display(),
            ),
        );
    }

    pub(super) fn globs(
        &mut self,
        path: &[Seg],
        label: &str,
        raw: Option<Vec<String>>,
        default: &[&str],
    ) -> GlobSet {
        let patterns = raw.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
        let mut b = GlobSetBuilder::new();
        for p in &patterns {
            match Glob::new(p) {
                Ok(g) => {
                    b.add(g);
                }
                Err(e) => self.problem(path, label, format!("{p:?} is not a glob: {e}")),
            }
        }
        b.build().unwrap_or_else(|_| GlobSet::empty())
    }
}

/// The names of the state file and of the files kept beside it, as a scan would see them:
/// SQLite's `-wal`, `-shm` and `-journal`, the lock file, and the temporary files a new outbox
/// is made under (`.new-<pid>-<n>` and its journal).
fn side_names(state: &str) -> Vec<String> {
    [
        "",
        "-wal",
        "-shm",
        "-journal",
        ".lock",
        ".new-1-0",
        ".new-1-0-journal",
    ]
    .iter()
    .map(|suffix| format!("{state}{suffix}"))
    .collect()
}

/// `path` as it is on disk: the longest part that exists with symlinks resolved, the rest
/// appended (`..` and `.` taken out lexically first).
fn resolved(path: &Path) -> PathBuf {
    let mut clean = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                clean.pop();
            }
            c => clean.push(c),
        }
    }
    let mut rest = Vec::new();
    let mut at = clean.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(at) {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                at = parent;
            }
            _ => return clean,
        }
    }
}
