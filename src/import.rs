//! `injixo-sync import`: a one-shot backfill of a source's history (last year's exports, for
//! forecasting) into the outbox, with a progress bar on a terminal and plain lines otherwise.
//!
//! Files are read under the source's own name and cursors, and under the identity the source
//! gives files (content for `drop`, device, inode and first bytes for `tail`), so an import
//! that is interrupted continues where it stopped, and records the daemon already has are not
//! enqueued again. The running daemon delivers what was imported (or the next one to start).
//!
//! Beside a running daemon, only a `drop` source without shared state is imported: a tailed
//! file, open agent states or a queue_log tracker are read and written by the daemon's own
//! source as it goes, and two writers would overwrite each other's. For those, `import`
//! refuses while the daemon runs (naming it), and holds the state file's lock while it
//! imports, so that the daemon does not start meanwhile.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use globset::{Glob, GlobSetBuilder};

use crate::config::{After, Config, FileMode, SourceKind};
use crate::sources::files::{StateFiles, matching_files};

pub fn main(
    config_path: &Path,
    source: &str,
    from: Option<PathBuf>,
    since: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    // The progress is the output; per-file log lines would only interleave with it.
    crate::logging::init(&crate::logging::LogConfig {
        level: "warn".into(),
        ..config.log.clone()
    });
    let chosen = config.source(source)?;
    let SourceKind::Files(mut files) = chosen.kind.clone() else {
        bail!(
            "source {source:?} is not a files source: import reads export files; sql and http \
             sources read their history on their own from initial_cursor"
        );
    };
    if let Some(from) = from {
        if from.is_file() {
            let name = from.file_name().context("--from names no file")?;
            let mut one = GlobSetBuilder::new();
            one.add(Glob::new(&globset::escape(&name.to_string_lossy()))?);
            files.include = one.build()?;
            files.path = from.parent().map(Path::to_path_buf).unwrap_or_default();
        } else if from.is_dir() {
            files.path = from;
        } else {
            bail!("--from {}: no such file or directory", from.display());
        }
    }
    // Tailed files keep their tail identity and cursors, so that the daemon continues where
    // the import stopped; dropped files are read whole. Both are left where they are.
    let shared_state =
        files.mode == FileMode::Tail || files.rows.states.is_some() || files.queue_log.is_some();
    let _lock = if shared_state {
        let why = if files.mode == FileMode::Tail {
            "it tails its files"
        } else {
            "it keeps open agent states or calls"
        };
        match crate::outbox::StateLock::acquire(&config.state.path, "import") {
            Ok(lock) => Some(lock),
            Err(crate::outbox::LockError::Held(holder)) => bail!(
                "source {source:?} cannot be imported while {holder} uses state file {}: {why}, \
                 and the two would overwrite each other's place. Stop the service \
                 (`systemctl stop injixo-sync`), run the import, then start the service again",
                config.state.path.display()
            ),
            Err(crate::outbox::LockError::Other(e)) => return Err(e.into()),
        }
    } else {
        None
    };
    files.settle = Duration::ZERO;
    files.after = After::Keep;
    files.modified_since = since.map(parse_since).transpose()?;
    let (selected, problems) = matching_files(&files, &StateFiles::of(&config.state.path));
    for (_, p) in problems {
        eprintln!("warning: {p}");
    }
    let total: u64 = selected.iter().map(|(_, m)| m.len()).sum();
    println!(
        "importing {} file(s), {} from {} into source {source:?}",
        selected.len(),
        bytesize::ByteSize(total),
        files.path.display()
    );

    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {percent:>3}% {bytes}/{total_bytes} {msg} ETA {eta}",
        )?
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut last_line = Instant::now();
    let complete = crate::app::import(&config, chosen, files, |m| {
        let records = m.records.load(Relaxed);
        let rate = records as f64 / started.elapsed().as_secs_f64().max(0.001);
        bar.set_position(m.bytes.load(Relaxed));
        bar.set_message(format!("{records} records ({rate:.0}/s)"));
        if bar.is_hidden() && last_line.elapsed() >= Duration::from_secs(2) {
            last_line = Instant::now();
            println!(
                "progress: {records} records, {} of {}, {rate:.0} records/s",
                bytesize::ByteSize(m.bytes.load(Relaxed)),
                bytesize::ByteSize(total)
            );
        }
    })?;
    bar.finish_and_clear();
    let report = crate::outbox::inspect(&config.state.path, 0)?;
    let s = report.sources.iter().find(|s| s.name == source);
    let (records, parked) = s
        .map(|s| (s.records_total, s.parked_total))
        .unwrap_or_default();
    if complete {
        // Delivered by the daemon, if one runs on this state file; else when one starts.
        let delivery = match crate::outbox::lock_holder(&config.state.path) {
            Some(h) if h.command == "run" => "the running daemon delivers them".to_owned(),
            _ => "no daemon runs on this state file now: they are delivered when it starts \
                  (`injixo-sync run`, or the service)"
                .to_owned(),
        };
        println!(
            "done in {:.1} s: source {source:?} now holds {records} records ({parked} lines \
             parked, see `status`); {delivery}",
            started.elapsed().as_secs_f64()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "interrupted: what was read is kept; run the same command again to continue where \
             it stopped"
        );
        Ok(ExitCode::from(130))
    }
}

/// `--since` as the modification time files must have.
fn parse_since(s: &str) -> anyhow::Result<SystemTime> {
    let ts = crate::normalize::time::parse_since(s).map_err(|e| anyhow::anyhow!("--since {e}"))?;
    let secs = u64::try_from(ts.as_second()).context("--since is before 1970")?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}
