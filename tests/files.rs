//! Export directories in depth: every way ACDs write files, read exactly once. Real files, a
//! real SQLite outbox and real HTTP over loopback to the fake injixo API.

mod support;

use std::io::Write;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// A CSV contact-events source over the export directory; `extra` goes before the map.
fn csv_source(env: &Env, extra: &str) -> String {
    format!(
        "[[source]]\nname = \"csv\"\ntype = \"files\"\nintegration_id = 1\nemits = \"contact_events\"\n\
         path = {:?}\nformat = \"csv\"\nsettle = \"100ms\"\npoll_interval = \"200ms\"\n{extra}\n\
         [source.map]\ntimestamp = \"start\"\nqueueName = \"queue\"\nqueueIdentifier = \"queue\"\n\
         channel = {{ value = \"calls\" }}\noffered = {{ value = true }}\nhandled = {{ value = true }}\n\
         duration = \"talk\"\n",
        env.exports.display().to_string()
    )
}

/// Rows `start,queue,talk` with talk = the id.
fn csv_rows(ids: impl IntoIterator<Item = u64>) -> String {
    ids.into_iter()
        .map(|i| format!("2024-05-01T08:00:00Z,Support,{i}\n"))
        .collect()
}

fn utf16le_with_bom(text: &str) -> Vec<u8> {
    [0xff, 0xfe]
        .into_iter()
        .chain(text.encode_utf16().flat_map(u16::to_le_bytes))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf16_and_bom_prefixed_exports_are_read_as_text() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    // Excel's "Unicode text": UTF-16LE with a BOM, tab-separated, CRLF.
    let mut source = csv_source(
        &env,
        "encoding = \"utf-16\"\ndelimiter = \"\\t\"\ninclude = [\"*.txt\"]",
    );
    source = source.replace("name = \"csv\"", "name = \"unicode\"");
    source.push_str(&csv_source(&env, "include = [\"*.csv\"]"));
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    let text = "start\tqueue\ttalk\r\n2024-05-01T08:00:00Z\tKündigung 東京\t1\r\n\
                2024-05-01T08:00:01Z\tSupport\t2\r\n";
    std::fs::write(env.exports.join("export.txt"), utf16le_with_bom(text)).unwrap();
    // A UTF-8 file with a BOM: the BOM is not part of the first column's name.
    std::fs::write(
        env.exports.join("export.csv"),
        format!("\u{feff}start,queue,talk\n{}", csv_rows([3])),
    )
    .unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "3 records", || api.record_count() >= 3).await;
    daemon.stop().await;
    let got = arrivals(&api);
    assert_eq!(got.len(), 3, "{got:?}");
    let names: Vec<String> = api
        .records()
        .iter()
        .map(|r| r["queueName"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"Kündigung 東京".to_owned()), "{names:?}");
    assert_eq!(
        env.report()
            .sources
            .iter()
            .map(|s| s.parked_total)
            .sum::<i64>(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_utf16_file_tailed_across_appends_keeps_exact_offsets() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = csv_source(&env, "mode = \"tail\"\nencoding = \"utf-16le\"");
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    let path = env.exports.join("live.csv");
    let mut bytes = utf16le_with_bom(&format!("start,queue,talk\n{}", csv_rows(0..5)));
    // Half a line (and half a code unit) waits for the rest.
    let tail: Vec<u8> = "2024-05-01T08:00:00Z,Support,5\n"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    bytes.extend_from_slice(&tail[..7]);
    std::fs::write(&path, &bytes).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "5 records", || api.record_count() >= 5).await;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&tail[7..]).unwrap();
    let more: Vec<u8> = csv_rows(6..10)
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    f.write_all(&more).unwrap();
    drop(f);
    wait_for(LIMIT, "10 records", || api.record_count() >= 10).await;
    daemon.stop().await;
    let got = arrivals(&api);
    assert_eq!(got.len(), 10, "{got:?}");
    assert!(got.values().all(|n| *n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_nightly_exports_yield_only_new_rows_by_natural_key() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = csv_source(&env, "key = \"{call_id}\"")
        .replace("duration = \"talk\"", "duration = \"call_id\"");
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    let export = |ids: std::ops::Range<u64>| {
        let rows: String = ids
            .map(|i| format!("2024-05-01T08:00:00Z,Support,{i}\n"))
            .collect();
        format!("start,queue,call_id\n{rows}")
    };
    // Monday's export covers calls 0..100, Tuesday's 50..150 (the overlap a nightly job
    // produces when it exports "the last 36 hours"), and Monday's reappears under a new name.
    std::fs::write(env.exports.join("mon.csv"), export(0..100)).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "100 records", || api.record_count() >= 100).await;
    std::fs::write(env.exports.join("tue.csv"), export(50..150)).unwrap();
    std::fs::write(env.exports.join("mon-copy.csv"), export(0..100)).unwrap();
    wait_for(LIMIT, "150 records", || api.record_count() >= 150).await;
    // Give both files time to be read completely.
    wait_for(LIMIT, "both read", || {
        env.first_source().is_some_and(|s| s.records_total == 150)
    })
    .await;
    settled(&env).await;
    daemon.stop().await;
    let got = arrivals(&api);
    assert_eq!(got.len(), 150);
    assert!(got.values().all(|n| *n == 1), "no call twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_if_leaves_test_queues_out_and_counts_them() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = csv_source(&env, "skip_if = { queue = [\"TEST*\", \"internal\"] }");
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    std::fs::write(
        env.exports.join("a.csv"),
        "start,queue,talk\n2024-05-01T08:00:00Z,Support,1\n2024-05-01T08:00:00Z,Test-Queue,2\n\
         2024-05-01T08:00:00Z,Internal,3\n2024-05-01T08:00:00Z,Sales,4\n",
    )
    .unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "2 records", || api.record_count() >= 2).await;
    settled(&env).await;
    daemon.stop().await;
    let mut got: Vec<u64> = arrivals(&api).into_keys().collect();
    got.sort();
    assert_eq!(got, vec![1, 4]);
    let report = env.report();
    assert_eq!(report.sources[0].records_total, 2);
    assert_eq!(
        report.sources[0].parked_total, 0,
        "skipped rows are not errors"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_rows_expand_to_contact_events_with_the_same_totals() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = format!(
        "[[source]]\nname = \"intervals\"\ntype = \"files\"\nintegration_id = 1\nemits = \"contact_events\"\n\
         path = {:?}\nformat = \"csv\"\ndelimiter = \";\"\nsettle = \"100ms\"\npoll_interval = \"200ms\"\n\
         expand = \"interval\"\ninterval = \"15m\"\ntimestamp_format = \"%d.%m.%Y %H:%M\"\ntimezone = \"Europe/Berlin\"\n\
         [source.map]\ntimestamp = \"Intervall\"\nqueueName = \"Queue\"\nqueueIdentifier = \"Queue\"\n\
         channel = {{ value = \"calls\" }}\noffered = \"Angeboten\"\nhandled = \"Bearbeitet\"\n\
         duration = \"Bearbeitungszeit\"\n",
        env.exports.display().to_string()
    );
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    std::fs::write(
        env.exports.join("report.csv"),
        "Intervall;Queue;Angeboten;Bearbeitet;Bearbeitungszeit\n\
         01.05.2024 10:00;Support;12;10;1800\n01.05.2024 10:15;Support;0;0;0\n\
         01.05.2024 10:15;Sales;3;3;90,0\n",
    )
    .unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "15 records", || api.record_count() >= 15).await;
    settled(&env).await;
    daemon.stop().await;
    let records = api.records();
    assert_eq!(records.len(), 15);
    let support: Vec<_> = records
        .iter()
        .filter(|r| r["queueName"] == "Support")
        .collect();
    assert_eq!(support.len(), 12, "one event per offered contact");
    let handled: Vec<_> = support
        .iter()
        .filter(|r| r["properties"]["handled"] == true)
        .collect();
    assert_eq!(handled.len(), 10);
    let total: f64 = support
        .iter()
        .map(|r| r["properties"]["duration"].as_f64().unwrap())
        .sum();
    assert_eq!(total, 1800.0, "the interval's handle time is kept");
    for r in &support {
        let ts = r["timestamp"].as_str().unwrap();
        // 10:00 Berlin summer time is 08:00 UTC; every event lies inside the interval.
        assert!(
            ("2024-05-01T08:00:00Z".."2024-05-01T08:15:00Z").contains(&ts),
            "{ts}"
        );
    }
    let sales_total: f64 = records
        .iter()
        .filter(|r| r["queueName"] == "Sales")
        .map(|r| r["properties"]["duration"].as_f64().unwrap())
        .sum();
    assert_eq!(sales_total, 90.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_file_says_when_an_export_is_complete() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = env.ndjson_source(
        "acd",
        "drop",
        "marker = \"{name}.done\"\nafter = \"delete\"",
    );
    let (text, port) = listening(&env.config_text(&api.url(), "", &source));
    let config = env.write_config(&text);
    let data = env.exports.join("calls.ndjson");
    std::fs::write(&data, events(0..5)).unwrap();
    let daemon = Daemon::start(config);
    // A whole pass has seen the file, but no marker yet: not complete. (A source with a marker
    // takes a file as soon as its marker is there, without waiting for it to settle.)
    more_scans(port, "acd", 2).await;
    assert_eq!(
        env.first_source().map_or(0, |s| s.records_total),
        0,
        "nothing read before the marker"
    );
    assert_eq!(api.record_count(), 0, "no record before the marker");
    std::fs::write(env.exports.join("calls.ndjson.done"), "").unwrap();
    wait_for(LIMIT, "5 records", || api.record_count() >= 5).await;
    wait_for(LIMIT, "file and marker deleted", || {
        std::fs::read_dir(&env.exports).unwrap().count() == 0
    })
    .await;
    daemon.stop().await;
    assert_eq!(arrivals(&api).len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_name_renamed_when_done_is_read_once_complete() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    // include = ["*"]: the default exclude keeps "*.tmp" (and hidden rsync temporaries) out.
    let source = env
        .ndjson_source("acd", "drop", "")
        .replace("include = [\"*.ndjson\"]", "include = [\"*\"]")
        .replace("settle = \"100ms\"", "settle = \"0s\"");
    let (text, port) = listening(&env.config_text(&api.url(), "", &source));
    let config = env.write_config(&text);
    let daemon = Daemon::start(config);
    let tmp = env.exports.join("calls.tmp");
    let hidden = env.exports.join(".calls.ndjson.x1Yz");
    let mut f = std::fs::File::create(&tmp).unwrap();
    std::fs::write(&hidden, events(100..101)).unwrap();
    for i in 0..5 {
        f.write_all(event(i).as_bytes()).unwrap();
        f.write_all(b"\n").unwrap();
        f.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    drop(f);
    // Whole passes have seen both names since, and with `settle = "0s"` nothing is waited
    // for: still nothing read.
    more_scans(port, "acd", 2).await;
    assert_eq!(
        env.first_source().map_or(0, |s| s.records_total),
        0,
        "nothing read while it is being written"
    );
    assert_eq!(api.record_count(), 0);
    std::fs::rename(&tmp, env.exports.join("calls.ndjson")).unwrap();
    wait_for(LIMIT, "5 records", || api.record_count() >= 5).await;
    settled(&env).await;
    daemon.stop().await;
    let got = arrivals(&api);
    assert_eq!(got.len(), 5, "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_only_directory_finds_every_file() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = env.ndjson_source("acd", "tail", "watch = \"poll\"");
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    let daemon = Daemon::start(config);
    let path = env.exports.join("live.ndjson");
    std::fs::write(&path, events(0..3)).unwrap();
    wait_for(LIMIT, "3 records", || api.record_count() >= 3).await;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(events(3..6).as_bytes()).unwrap();
    drop(f);
    std::fs::write(env.exports.join("second.ndjson"), events(6..8)).unwrap();
    wait_for(LIMIT, "8 records", || api.record_count() >= 8).await;
    daemon.stop().await;
    let got = arrivals(&api);
    assert_eq!(got.len(), 8);
    assert!(got.values().all(|n| *n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_arrived_while_stopped_are_read_oldest_first() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = env.ndjson_source("acd", "drop", "");
    let config = env.write_config(&env.config_text(&api.url(), "batch_records = 1000", &source));
    // Names sort the other way round from their age.
    let base = std::time::SystemTime::now() - Duration::from_secs(3600);
    for (n, name) in ["c.ndjson", "b.ndjson", "a.ndjson"].iter().enumerate() {
        let path = env.exports.join(name);
        let ids = (n as u64 * 10)..(n as u64 * 10 + 10);
        std::fs::write(&path, events(ids)).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(base + Duration::from_secs(n as u64 * 60))
            .unwrap();
    }
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "30 records", || api.record_count() >= 30).await;
    daemon.stop().await;
    let order: Vec<u64> = api.records().iter().map(id_of).collect();
    assert_eq!(order, (0..30).collect::<Vec<_>>(), "oldest file first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_files_in_one_directory_arrive_exactly_once() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    for i in 0..2000u64 {
        std::fs::write(env.exports.join(format!("e{i:05}.ndjson")), events([i])).unwrap();
    }
    let source = env.ndjson_source("acd", "drop", "after = \"move\"\narchive_dir = \"ARCHIVE\"");
    let archive = env.dir.path().join("archive");
    let source = source.replace(
        "\"ARCHIVE\"",
        &format!("{:?}", archive.display().to_string()),
    );
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "2000 records", || api.record_count() >= 2000).await;
    wait_for(LIMIT, "all moved", || {
        std::fs::read_dir(&env.exports).unwrap().count() == 0
    })
    .await;
    daemon.stop().await;
    let got = arrivals(&api);
    assert_eq!(got.len(), 2000);
    assert!(got.values().all(|n| *n == 1));
    assert_eq!(std::fs::read_dir(&archive).unwrap().count(), 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_and_truncate_under_a_burst_of_writes_loses_and_repeats_nothing() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = env
        .ndjson_source("acd", "tail", "")
        .replace("[\"*.ndjson\"]", "[\"live.ndjson\"]");
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    let path = env.exports.join("live.ndjson");
    std::fs::write(&path, events(0..100)).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "100 records", || api.record_count() >= 100).await;
    // logrotate `copytruncate`: copy (to a name the source does not read), truncate, and the
    // writer carries on at offset 0 at once.
    std::fs::copy(&path, env.exports.join("live.ndjson.1")).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(0).unwrap();
    drop(f);
    let mut w = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    for chunk in 0..10u64 {
        w.write_all(events(100 + chunk * 50..150 + chunk * 50).as_bytes())
            .unwrap();
    }
    drop(w);
    wait_for(LIMIT, "600 records", || api.record_count() >= 600).await;
    settled(&env).await;
    daemon.stop().await;
    let got = arrivals(&api);
    assert_eq!(got.len(), 600);
    assert!(got.values().all(|n| *n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_at_end_skips_history_but_reads_new_files_whole() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = env.ndjson_source("acd", "tail", "start_at = \"end\"");
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    let path = env.exports.join("live.ndjson");
    // History, and a partial last line the writer is still in the middle of.
    std::fs::write(&path, events(0..50) + &event(50)[..20]).unwrap();
    let daemon = Daemon::start(config);
    // The first look skips the history (a cursor at the end of the last whole line).
    wait_for(LIMIT, "the file found", || {
        env.first_source().is_some_and(|s| !s.cursors.is_empty())
    })
    .await;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&event(50).as_bytes()[20..]).unwrap();
    f.write_all(b"\n").unwrap();
    f.write_all(events(51..53).as_bytes()).unwrap();
    drop(f);
    // A small new file (one line) is read at once, from its start.
    std::fs::write(env.exports.join("new.ndjson"), events([99])).unwrap();
    wait_for(LIMIT, "4 records", || api.record_count() >= 4).await;
    settled(&env).await;
    daemon.stop().await;
    let mut got: Vec<u64> = arrivals(&api).into_keys().collect();
    got.sort();
    assert_eq!(got, vec![50, 51, 52, 99]);
}

fn sh(cmd: &str) {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .unwrap();
    assert!(status.success(), "{cmd}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_that_disappears_for_a_while_is_not_read_again_from_the_start() {
    if !require(
        "mount",
        is_root(),
        "run the tests as root, which may bind-mount",
    ) {
        return;
    }
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    // The "server" side of the share, and the mount the daemon reads.
    let server = env.dir.path().join("server");
    std::fs::create_dir_all(&server).unwrap();
    let (srv, mnt) = (
        server.display().to_string(),
        env.exports.display().to_string(),
    );
    sh(&format!("mount --bind '{srv}' '{mnt}'"));
    let source = env.ndjson_source("acd", "tail", "");
    let (text, port) = listening(&env.config_text(&api.url(), "", &source));
    let config = env.write_config(&text);
    let live = server.join("live.ndjson");
    std::fs::write(&live, events(0..10)).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "10 records", || api.record_count() >= 10).await;
    // The share goes away (the daemon's open handle stays valid, as with a lazy unmount). A
    // whole pass finds the file gone; the next, past `settle`, lets its handle go.
    sh(&format!("umount -l '{mnt}'"));
    more_scans(port, "acd", 4).await;
    // The ACD goes on writing on the server while the share is away.
    let append = |ids: std::ops::Range<u64>| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&live)
            .unwrap();
        f.write_all(events(ids).as_bytes()).unwrap();
    };
    append(10..15);
    more_scans(port, "acd", 2).await;
    append(15..20);
    more_scans(port, "acd", 2).await;
    // The share is back.
    sh(&format!("mount --bind '{srv}' '{mnt}'"));
    append(20..25);
    wait_for(LIMIT, "25 records", || api.record_count() >= 25).await;
    settled(&env).await;
    daemon.stop().await;
    sh(&format!("umount -l '{mnt}'"));
    let got = arrivals(&api);
    assert_eq!(got.len(), 25, "{got:?}");
    assert!(got.values().all(|n| *n == 1), "nothing read twice: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_in_the_middle_of_a_burst_of_writes_reads_every_line_once() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = env
        .ndjson_source("acd", "tail", "")
        .replace("[\"*.ndjson\"]", "[\"live.ndjson\"]");
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    let path = env.exports.join("live.ndjson");
    std::fs::write(&path, "").unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "the source running", || env.first_source().is_some()).await;
    let rotated = env.exports.join("live.ndjson.1");
    // A logger writing as fast as it can; half-way logrotate renames the file and the logger
    // writes a few more lines to the old handle before it reopens the path.
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        for i in 0..20_000u64 {
            if i == 10_000 {
                std::fs::rename(&path, &rotated).unwrap();
            }
            if i == 10_050 {
                f = std::fs::File::create(&path).unwrap();
            }
            f.write_all((event(i) + "\n").as_bytes()).unwrap();
        }
    });
    writer.join().unwrap();
    wait_for(LIMIT, "20,000 records", || api.record_count() >= 20_000).await;
    settled(&env).await;
    daemon.stop().await;
    let got = arrivals(&api);
    assert_eq!(got.len(), 20_000);
    assert!(got.values().all(|n| *n == 1));
}

/// Open descriptors of this process that point at a deleted file under `dir`.
fn deleted_files_held(dir: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|t| t.starts_with(dir) && t.to_string_lossy().ends_with(" (deleted)"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_file_is_let_go_even_while_the_api_is_down() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    api.set_outage(Some((503, None)));
    let config =
        env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "tail", "")));
    let path = env.exports.join("live.ndjson");
    std::fs::write(&path, events(0..100)).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "100 records committed", || {
        env.first_source().is_some_and(|s| s.records_total == 100)
    })
    .await;
    std::fs::remove_file(&path).unwrap();
    // The outage goes on; the handle must not keep the deleted file's space taken.
    wait_for(LIMIT, "the handle released", || {
        deleted_files_held(&env.exports) == 0
    })
    .await;
    assert_eq!(api.record_count(), 0, "the API is still down");
    api.set_outage(None);
    wait_for(LIMIT, "100 records", || api.record_count() >= 100).await;
    daemon.stop().await;
}

/// Peak resident memory of a process, in KiB (Linux).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_tailed_file_streams_in_bounded_memory() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let config = env.config_text(&api.url(), "", &env.ndjson_source("acd", "tail", ""));
    std::fs::write(&env.config_file, config).unwrap();
    // 128 MiB of records (the benchmark does 1 GiB on a release build).
    let path = env.exports.join("big.ndjson");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut rows = 0u64;
    let mut written = 0usize;
    while written < 128 << 20 {
        let line = event(rows) + "\n";
        f.write_all(line.as_bytes()).unwrap();
        written += line.len();
        rows += 1;
    }
    f.flush().unwrap();
    drop(f);
    let mut daemon = Process::start(&env.config_file);
    let pid = daemon.pid();
    wait_for(Duration::from_secs(600), "every row committed", || {
        daemon.assert_running();
        env.first_source()
            .is_some_and(|s| s.records_total == rows as i64)
    })
    .await;
    let peak_mib = peak_rss_kib(pid) / 1024;
    daemon.terminate();
    eprintln!("{rows} rows, peak RSS {peak_mib} MiB");
    // A debug build; what matters is that memory does not follow the file's size.
    assert!(peak_mib < 64, "peak RSS {peak_mib} MiB for a 128 MiB file");
}

/// logrotate `copytruncate` with the copy inside `include` (`live.ndjson*`): the copy is the
/// truncated file's continuation, read on from where that file was read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_made_by_copy_and_truncate_inside_include_is_read_on_not_again() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = env
        .ndjson_source("acd", "tail", "")
        .replace("[\"*.ndjson\"]", "[\"live.ndjson*\"]");
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    let path = env.exports.join("live.ndjson");
    std::fs::write(&path, events(0..100)).unwrap();
    let daemon = Daemon::start(config.clone());
    wait_for(LIMIT, "100 records", || api.record_count() >= 100).await;
    // While the daemon runs: copy, truncate, carry on at offset 0.
    std::fs::copy(&path, env.exports.join("live.ndjson.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    let mut w = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    w.write_all(events(100..200).as_bytes()).unwrap();
    wait_for(LIMIT, "200 records", || api.record_count() >= 200).await;
    daemon.stop().await;

    // While it is stopped: lines it never read, then a rotation. Those lines exist only in
    // the copy now.
    w.write_all(events(200..230).as_bytes()).unwrap();
    drop(w);
    std::fs::rename(
        env.exports.join("live.ndjson.1"),
        env.exports.join("live.ndjson.2"),
    )
    .unwrap();
    std::fs::copy(&path, env.exports.join("live.ndjson.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    std::fs::write(&path, events(230..250)).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "250 records", || api.record_count() >= 250).await;
    settled(&env).await;
    daemon.stop().await;
    let got = arrivals(&api);
    assert_eq!(got.len(), 250, "every line once");
    assert!(
        got.values().all(|n| *n == 1),
        "{} duplicates",
        got.values().filter(|n| **n > 1).count()
    );
}

/// A 50 MB line without a newline, written while the daemon tails the file: it is not held
/// in memory, it is parked with its place once its end is written, and the lines around it
/// flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_longer_than_max_line_is_parked_without_being_held_in_memory() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    std::fs::write(
        &env.config_file,
        env.config_text(&api.url(), "", &env.ndjson_source("acd", "tail", "")),
    )
    .unwrap();
    let path = env.exports.join("live.ndjson");
    std::fs::write(&path, events(0..10)).unwrap();
    let mut daemon = Process::start(&env.config_file);
    let pid = daemon.pid();
    wait_for(LIMIT, "10 records", || api.record_count() >= 10).await;
    let mut w = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    let piece = vec![b'x'; 5 << 20];
    for _ in 0..10 {
        w.write_all(&piece).unwrap();
        w.flush().unwrap();
    }
    w.write_all(b"\n").unwrap();
    w.write_all(events(10..20).as_bytes()).unwrap();
    drop(w);
    wait_for(LIMIT, "20 records", || api.record_count() >= 20).await;
    daemon.assert_running();
    let peak_mib = peak_rss_kib(pid) / 1024;
    daemon.terminate();
    assert!(peak_mib < 64, "peak RSS {peak_mib} MiB with a 50 MiB line");
    let report = env.report();
    assert_eq!(report.sources[0].parked_total, 1, "{:#?}", report.parked);
    let parked = &report.parked[0];
    assert_eq!(parked.origin, "live.ndjson:11");
    assert!(
        parked.reason.contains("longer than max_line (1.0 MiB)"),
        "{}",
        parked.reason
    );
    let got = arrivals(&api);
    assert_eq!(got.len(), 20);
    assert!(got.values().all(|n| *n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_file_parks_its_overlong_lines_and_reads_the_rest() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let config = env.write_config(&env.config_text(
        &api.url(),
        "",
        &env.ndjson_source("acd", "drop", "max_line = \"1KiB\""),
    ));
    let long = "y".repeat(5000);
    let last = "z".repeat(3000);
    std::fs::write(
        env.exports.join("day.ndjson"),
        format!("{}{long}\n{}{last}", event(1) + "\n", event(2) + "\n"),
    )
    .unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "two lines parked", || {
        env.first_source().is_some_and(|s| s.parked_total == 2)
    })
    .await;
    wait_for(LIMIT, "2 records", || api.record_count() >= 2).await;
    daemon.stop().await;
    let report = env.report();
    let mut origins: Vec<&str> = report.parked.iter().map(|p| p.origin.as_str()).collect();
    origins.sort();
    assert_eq!(origins, ["day.ndjson:2", "day.ndjson:4"]);
    assert!(
        report
            .parked
            .iter()
            .all(|p| p.reason.contains("longer than max_line (1.0 KiB)"))
    );
    assert_eq!(api.record_count(), 2);
}

/// A NUL or an escape code in a queue name would become part of a queue's identity in injixo:
/// such rows are parked with the reason, the others flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_queue_names_park_the_row() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let config = env.write_config(&env.config_text(&api.url(), "", &csv_source(&env, "")));
    std::fs::write(
        env.exports.join("day.csv"),
        "start,queue,talk\n\
         2024-05-01T08:00:00Z,Support,1\n\
         2024-05-01T08:00:00Z,Sup\0port,2\n\
         2024-05-01T08:00:00Z,\x1b[31mSales,3\n\
         2024-05-01T08:00:00Z,Sales,4\n",
    )
    .unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "two rows parked", || {
        env.first_source().is_some_and(|s| s.parked_total == 2)
    })
    .await;
    wait_for(LIMIT, "2 records", || api.record_count() >= 2).await;
    daemon.stop().await;
    let mut ids: Vec<u64> = arrivals(&api).into_keys().collect();
    ids.sort();
    assert_eq!(ids, [1, 4]);
    let report = env.report();
    for p in &report.parked {
        assert!(p.reason.contains("control character"), "{}", p.reason);
    }
}

/// logrotate's numbered rotation (app.log -> app.log.1 -> app.log.2 ...) every few hundred
/// milliseconds while lines are appended fast, every rotated name inside `include`: names move
/// between the directory scan and the open, and no file is taken for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbered_rotation_inside_include_under_a_burst_reads_every_line_once() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = env
        .ndjson_source("acd", "tail", "")
        .replace("[\"*.ndjson\"]", "[\"app.log*\"]");
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    let dir = env.exports.clone();
    let daemon = Daemon::start(config);
    let writer = std::thread::spawn(move || {
        let live = dir.join("app.log");
        let rotated = |n: u32| dir.join(format!("app.log.{n}"));
        let mut next = 0u64;
        for _ in 0..20 {
            for _ in 0..30 {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&live)
                    .unwrap();
                f.write_all(events(next..next + 10).as_bytes()).unwrap();
                next += 10;
                std::thread::sleep(Duration::from_millis(5));
            }
            let top = (1..).find(|n| !rotated(*n).exists()).unwrap();
            for n in (1..top).rev() {
                std::fs::rename(rotated(n), rotated(n + 1)).unwrap();
            }
            std::fs::rename(&live, rotated(1)).unwrap();
        }
        next
    });
    let written = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    wait_for(LIMIT, "every line", || {
        api.record_count() >= written as usize
    })
    .await;
    wait_for(LIMIT, "nothing pending", || {
        env.try_report()
            .is_some_and(|r| r.lanes.iter().all(|l| l.pending == 0))
    })
    .await;
    daemon.stop().await;
    let got = arrivals(&api);
    assert_eq!(got.len() as u64, written, "every line");
    let twice = got.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "{twice} lines arrived twice");
}

/// A tailed CSV rewritten in place from the start (same long header, other rows, longer than
/// before) between two looks: the bytes before the read offset are no longer what was read,
/// so it is a new file, read from its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_in_place_behind_the_same_header_is_read_again_from_its_start() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    // A header longer than the 1 KiB the first-bytes fingerprint covers.
    let header = format!("start,queue,talk,{}\n", "x".repeat(1200));
    let rows = |ids: std::ops::Range<u64>| {
        ids.map(|i| format!("2024-05-01T08:00:00Z,Support,{i},\n"))
            .collect::<String>()
    };
    let config = env.write_config(&env.config_text(
        &api.url(),
        "",
        &csv_source(&env, "mode = \"tail\"\nwatch = \"poll\"").replace("settle = \"100ms\"\n", ""),
    ));
    let path = env.exports.join("calls.csv");
    std::fs::write(&path, header.clone() + &rows(0..500)).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "500 records", || api.record_count() >= 500).await;
    std::fs::write(&path, header + &rows(500..1090)).unwrap();
    wait_for(LIMIT, "1090 records", || api.record_count() >= 1090).await;
    wait_for(LIMIT, "nothing pending", || {
        env.try_report()
            .is_some_and(|r| r.lanes.iter().all(|l| l.pending == 0))
    })
    .await;
    daemon.stop().await;
    let got = arrivals(&api);
    assert_eq!(got.len(), 1090);
    assert!(got.values().all(|n| *n == 1));
}

/// copy-and-truncate whose copy (inside `include`) is written slowly, in two halves a second
/// apart: the half-written copy begins like the file being read but is shorter than what was
/// read, so it is waited for, then recognised as the copy it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_written_slowly_is_waited_for_and_recognised() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = env
        .ndjson_source("acd", "tail", "")
        .replace("[\"*.ndjson\"]", "[\"app.log*\"]")
        .replace("settle = \"100ms\"", "settle = \"3s\"");
    let (text, port) = listening(&env.config_text(&api.url(), "", &source));
    let config = env.write_config(&text);
    let path = env.exports.join("app.log");
    std::fs::write(&path, events(0..1000)).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "1000 records", || api.record_count() >= 1000).await;
    let bytes = std::fs::read(&path).unwrap();
    let copy = env.exports.join("app.log.1");
    let (half, rest) = bytes.split_at(bytes.len() / 2);
    std::fs::write(&copy, half).unwrap();
    let halfway = std::time::Instant::now();
    // The copy is slow: its second half comes a second after the first (well inside the 3 s
    // of `settle`), and the daemon has looked at the half-written copy meanwhile.
    more_scans(port, "acd", 2).await;
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(halfway.elapsed())).await;
    // Lines the writer added after the daemon's last read and before the truncation: they
    // are in the copy only.
    let mut copied = std::fs::OpenOptions::new()
        .append(true)
        .open(&copy)
        .unwrap();
    copied.write_all(rest).unwrap();
    copied.write_all(events(1100..1110).as_bytes()).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    std::fs::write(&path, events(1000..1100)).unwrap();
    wait_for(LIMIT, "1110 records", || api.record_count() >= 1110).await;
    wait_for(LIMIT, "nothing pending", || {
        env.try_report()
            .is_some_and(|r| r.lanes.iter().all(|l| l.pending == 0))
    })
    .await;
    daemon.stop().await;
    let got = arrivals(&api);
    assert_eq!(got.len(), 1110, "the lines only the copy holds arrived too");
    let twice = got.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "{twice} records arrived twice");
}

/// In a recursive source, parked lines name their file by its path below the source's
/// `path`: two `calls.ndjson:1` in two folders are told apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_lines_name_the_file_below_the_source_path() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let config = env.write_config(&env.config_text(
        &api.url(),
        "",
        &env.ndjson_source("acd", "drop", "recursive = true"),
    ));
    for (n, site) in ["hamburg", "berlin"].into_iter().enumerate() {
        let dir = env.exports.join(site);
        std::fs::create_dir_all(&dir).unwrap();
        let line = event(n as u64);
        std::fs::write(dir.join("calls.ndjson"), format!("not json\n{line}\n")).unwrap();
    }
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "two lines parked", || {
        env.first_source().is_some_and(|s| s.parked_total == 2)
    })
    .await;
    settled(&env).await;
    daemon.stop().await;
    let mut origins: Vec<String> = env
        .report()
        .parked
        .iter()
        .map(|p| p.origin.clone())
        .collect();
    origins.sort();
    let sep = std::path::MAIN_SEPARATOR;
    assert_eq!(
        origins,
        [
            format!("berlin{sep}calls.ndjson:1"),
            format!("hamburg{sep}calls.ndjson:1")
        ]
    );
    // One reason, one group: its first row is named with its folder.
    let (_, out) = cli(&["--config", env.config_file.to_str().unwrap(), "status"]);
    assert!(
        ["hamburg", "berlin"]
            .iter()
            .any(|site| out.contains(&format!("first: {site}{sep}calls.ndjson:1"))),
        "{out}"
    );
}

/// An ACD that rewrites its current file in place from the start (same size, new content), as
/// fast as it can: the daemon (the real binary) keeps running with a bounded stack, and no
/// content it read is delivered twice; content written once the storm is over is read too.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_storm_costs_bounded_stack_and_reads_each_content_once() {
    use std::os::unix::fs::FileExt;
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "tail", "")));
    let path = env.exports.join("current.ndjson");
    // Ids of one width, so every rewrite has the same size.
    let line = |i: u64| event(1_000_000 + i) + "\n";
    std::fs::write(&path, line(0)).unwrap();
    let mut daemon = Process::start(&env.config_file);
    wait_for(LIMIT, "the first content", || api.record_count() >= 1).await;
    let storm_path = path.clone();
    let rewrites = tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&storm_path)
            .unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(4);
        let mut n = 1;
        while std::time::Instant::now() < until {
            file.write_all_at(line(n).as_bytes(), 0).unwrap();
            n += 1;
        }
        n
    })
    .await
    .unwrap();
    assert!(rewrites > 10_000, "only {rewrites} rewrites: no storm");
    daemon.assert_running();
    // After the storm, each new content is read, once.
    let before = api.record_count();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(line(rewrites + 1).as_bytes(), 0)
        .unwrap();
    wait_for(LIMIT, "the content after the storm", || {
        arrivals(&api).contains_key(&(1_000_000 + rewrites + 1))
    })
    .await;
    wait_for(LIMIT, "nothing pending", || {
        env.try_report()
            .is_some_and(|r| r.lanes.iter().all(|l| l.pending == 0))
    })
    .await;
    daemon.assert_running();
    let got = arrivals(&api);
    assert!(api.record_count() > before);
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "contents read twice: {twice:?}");
    daemon.terminate();
}

/// A source's folder that turns out to be the state file's folder (a symlink made after the
/// configuration was checked; a bind mount looks the same): the source reads and deletes the
/// exports there, and leaves the outbox, its -wal and -shm files and its lock alone, told by
/// their device and inode.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_folder_that_leads_to_the_state_folder_never_takes_the_outbox() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let link = env.dir.path().join("exports-link");
    let source = format!(
        "[[source]]\nname = \"acd\"\ntype = \"files\"\nintegration_id = 1234\n\
         emits = \"contact_events\"\npath = {:?}\nformat = \"ndjson\"\nafter = \"delete\"\n\
         settle = \"100ms\"\npoll_interval = \"200ms\"\n",
        link.display().to_string()
    );
    env.write_config(&env.config_text(&api.url(), "", &source));
    let mut daemon = Process::start(&env.config_file);
    wait_for(LIMIT, "the outbox", || env.try_report().is_some()).await;
    let state_dir = env.state.parent().unwrap();
    std::os::unix::fs::symlink(state_dir, &link).unwrap();
    let export = state_dir.join("0.ndjson");
    std::fs::write(&export, events(0..100)).unwrap();
    wait_for(LIMIT, "100 records and the export deleted", || {
        api.record_count() >= 100 && !export.exists()
    })
    .await;
    // More scans pass over the state files while records keep coming.
    std::fs::write(state_dir.join("1.ndjson"), events(100..200)).unwrap();
    wait_for(LIMIT, "200 records", || api.record_count() >= 200).await;
    daemon.assert_running();
    let side = |suffix: &str| {
        let mut p = env.state.as_os_str().to_owned();
        p.push(suffix);
        std::path::PathBuf::from(p)
    };
    for p in [env.state.clone(), side("-wal"), side("-shm"), side(".lock")] {
        assert!(p.exists(), "{} was taken", p.display());
    }
    let source = env.first_source().expect("the source's row");
    assert_eq!(source.parked_total, 0, "no state bytes parked");
    assert_eq!(source.records_total, 200);
    assert_eq!(
        injixo_sync::outbox::lock_holder(&env.state).and_then(|h| h.pid),
        Some(daemon.pid())
    );
    assert_eq!(daemon.terminate().code(), Some(0));
    assert_arrived_once(&api, 0..200);
}
