//! `import`: one source's files read once into the outbox, beside a running daemon or not.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::RunError;
use crate::config::Config;
use crate::counters::SourceMetrics;
use crate::outbox::{Outbox, OutboxError};
use crate::sources::SourceContext;

/// Reads one source's files once into the outbox (`import`), stopping early on Ctrl-C.
/// `progress` is called about five times a second with the source's counters. Returns
/// whether every file was read to its end.
pub fn import(
    config: &Config,
    source: &crate::config::SourceConfig,
    files: crate::config::FilesConfig,
    mut progress: impl FnMut(&SourceMetrics),
) -> Result<bool, RunError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Internal(format!("cannot start the async runtime: {e}")))?;
    let (outbox, writer) = Outbox::open(&config.state.path)?;
    let (id, lane) = runtime.block_on(async {
        outbox
            .apply_budget(config.state.max_outbox_size, true)
            .await?;
        Ok::<_, OutboxError>((
            outbox.source_id(&source.name).await?,
            outbox.lane_id(&source.lane).await?,
        ))
    })?;
    let shutdown = CancellationToken::new();
    let interrupt = shutdown.clone();
    runtime.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            interrupt.cancel();
        }
    });
    let ctx = SourceContext::new(source, (id, lane), outbox.clone(), shutdown.clone());
    let metrics = ctx.metrics.clone();
    let reader = std::thread::Builder::new()
        .name("import".into())
        .spawn(move || crate::sources::files::FilesSource::new(files).run_once(&ctx))
        .map_err(|e| RunError::Internal(format!("cannot start the import thread: {e}")))?;
    // A running daemon delivers what is imported: it is told within a second of new records.
    let mut told = 0;
    let mut tell = |metrics: &SourceMetrics| {
        let records = metrics.records.load(std::sync::atomic::Ordering::Relaxed);
        if records > told {
            told = records;
            let _ = runtime.block_on(outbox.note_requeue());
        }
    };
    let mut last_told = std::time::Instant::now();
    while !reader.is_finished() {
        progress(&metrics);
        if last_told.elapsed() >= Duration::from_secs(1) {
            tell(&metrics);
            last_told = std::time::Instant::now();
        }
        runtime.block_on(async {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
    progress(&metrics);
    tell(&metrics);
    let result = reader
        .join()
        .map_err(|_| RunError::Internal("the import thread panicked".into()))?;
    drop(outbox);
    let _ = writer.join();
    result?;
    Ok(!shutdown.is_cancelled())
}
