//! The fuzz corpus (`fuzz/corpus`, minimised) and the seeds (`fuzz/seeds`: realistic samples
//! and every input that once found a bug) replayed through the fuzz targets' properties
//! (`fuzz/checks.rs`) in every test run: what fuzzing found stays fixed. `.ci/fuzz` runs
//! libFuzzer itself to look for new inputs.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

/// Runs `check` on every file of the target's corpus and seeds; returns how many.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["corpus", "seeds"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let data = std::fs::read(entry.path()).unwrap();
            let input = entry.path();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(
                outcome.is_ok(),
                "{}: the input {} fails",
                target,
                input.display()
            );
            n += 1;
        }
    }
    n
}

#[test]
fn the_csv_corpus_reads_alike_in_pieces_and_whole() {
    assert!(replay("csv", checks::csv_in_pieces) > 100);
}

#[test]
fn the_ndjson_corpus_reads_alike_in_pieces_and_whole() {
    assert!(replay("ndjson", checks::ndjson_in_pieces) > 1000);
}

#[test]
fn the_queue_log_corpus_runs_through_the_tracker() {
    assert!(replay("queue_log", checks::queue_log_tracker) > 1000);
}

#[test]
fn the_config_corpus_loads_or_names_its_problems() {
    assert!(replay("config", checks::config_loader) > 1000);
}
