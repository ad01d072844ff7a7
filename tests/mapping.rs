//! Real ACD exports mapped without preprocessing: expressions and value lookups in
//! `[source.map]`. The fixtures (`tests/fixtures/mapping/`, written by its `make.py`) are in the
//! formats the ACDs write; every expectation is counted from the fixture itself.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::*;

const LIMIT: Duration = Duration::from_secs(30);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mapping")
        .join(name)
}

/// A files source over the export directory: `head` (format, columns ...), then `map`.
fn source(env: &Env, emits: &str, head: &str, map: &str) -> String {
    format!(
        "[[source]]\nname = \"acd\"\ntype = \"files\"\nintegration_id = 1234\nemits = {emits:?}\n\
         path = {path:?}\nsettle = \"100ms\"\npoll_interval = \"200ms\"\n{head}\n[source.map]\n{map}\n",
        path = env.exports.display().to_string()
    )
}

/// Runs the daemon over `file` (copied into the export directory) until `expected` records
/// arrived and the source has settled; the records, sorted by `sort_key`.
async fn deliver(env: &Env, api: &FakeApi, file: &str, text: &str, expected: usize) -> Vec<Value> {
    let config = env.write_config(&env.config_text(&api.url(), "", text));
    std::fs::copy(fixture(file), env.exports.join(file)).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, &format!("{expected} records"), || {
        api.record_count() >= expected
    })
    .await;
    settled(env).await;
    daemon.stop().await;
    api.records()
}

fn cdr_map(columns: usize) -> String {
    let mut names = vec![
        "accountcode",
        "src",
        "dst",
        "dcontext",
        "clid",
        "channel",
        "dstchannel",
        "lastapp",
        "lastdata",
        "start",
        "answer",
        "end",
        "duration",
        "billsec",
        "disposition",
        "amaflags",
        "uniqueid",
        "userfield",
    ];
    // The recipe in docs/configuration.md: a uniqueid repeats across the legs of a call; with
    // `sequence` it names one leg. Without it (18 columns), each row is its own record.
    let key = if columns == 21 {
        names.extend(["peeraccount", "linkedid", "sequence"]);
        "\nkey = \"{uniqueid}-{sequence}\""
    } else {
        ""
    };
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    format!(
        "format = \"csv\"\ninclude = [\"*.csv\"]\nheader = false\ncolumns = [{}]\n\
         timestamp_format = \"%Y-%m-%d %H:%M:%S\"\ntimezone = \"Europe/Berlin\"{key}",
        quoted.join(", ")
    )
}

const CDR_MAP: &str = r#"timestamp = "start"
queueName = "dcontext"
queueIdentifier = "dst"
channel = { value = "calls" }
offered = { value = true }
handled = { column = "disposition", values = { ANSWERED = true, "*" = false } }
duration = "billsec"
"#;

/// Asterisk's stock cdr_csv Master.csv, 18 and 21 columns, no header; 8 of 84 caller names
/// hold a Windows-1252 byte in a UTF-8 file. Every call arrives, handled and talk time as an
/// independent count of the file says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asterisk_cdr_master_csv_maps_every_call() {
    for (file, columns) in [("cdr18.csv", 18), ("cdr21.csv", 21)] {
        let bytes = std::fs::read(fixture(file)).unwrap();
        let lines: Vec<&[u8]> = bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let broken = lines
            .iter()
            .filter(|l| std::str::from_utf8(l).is_err())
            .count();
        assert_eq!((lines.len(), broken), (84, 8), "{file}");
        let answered: Vec<u64> = lines
            .iter()
            .filter(|l| String::from_utf8_lossy(l).contains("\"ANSWERED\""))
            .map(|l| {
                // `lastdata` holds a comma ("SIP/2000,30"): billsec is the 15th piece.
                let text = String::from_utf8_lossy(l);
                text.split(',').nth(14).unwrap().parse().unwrap()
            })
            .collect();

        let env = Env::new();
        let api = FakeApi::start(KEY).await.unwrap();
        let text = source(&env, "contact_events", &cdr_map(columns), CDR_MAP);
        let records = deliver(&env, &api, file, &text, 84).await;
        assert_eq!(
            records.len(),
            84,
            "{file}: every call, the broken caller names too"
        );
        assert_eq!(env.report().sources[0].parked_total, 0, "{file}");
        let handled: Vec<&Value> = records
            .iter()
            .filter(|r| r["properties"]["handled"] == true)
            .collect();
        assert_eq!(handled.len(), answered.len(), "{file}");
        let talk: f64 = handled
            .iter()
            .map(|r| r["properties"]["duration"].as_f64().unwrap())
            .sum();
        assert_eq!(talk, answered.iter().sum::<u64>() as f64, "{file}");
        // 08:00 in Berlin in May is 06:00 UTC.
        assert!(
            records
                .iter()
                .any(|r| r["timestamp"] == "2024-05-01T06:00:00Z"),
            "{file}"
        );
        assert!(records.iter().all(|r| r["queueName"] == "from-internal"));
    }
}

/// A used column that cannot be read still parks the row, naming the column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_column_the_map_reads_parks_its_row_naming_it() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let map = CDR_MAP
        .replace("queueName = \"dcontext\"", "queueName = \"clid\"")
        .replace("queueIdentifier = \"dst\"", "queueIdentifier = \"clid\"");
    let text = source(&env, "contact_events", &cdr_map(18), &map);
    let records = deliver(&env, &api, "cdr18.csv", &text, 76).await;
    assert_eq!(records.len(), 76);
    let report = env.report();
    assert_eq!(report.sources[0].parked_total, 8);
    let parked = &report.parked[0];
    assert!(
        parked
            .reason
            .contains("column `clid` (field 5): not valid UTF-8"),
        "{}",
        parked.reason
    );
}

/// (day, time, queue, outcome, talk, hold, acw) of the call-detail fixture.
fn call_detail() -> Vec<Vec<String>> {
    std::fs::read_to_string(fixture("calldetail.tsv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

fn hms(s: &str) -> f64 {
    s.split(':')
        .fold(0.0, |acc, p| acc * 60.0 + p.parse::<f64>().unwrap())
}

/// A call-detail export: the outcome in words, date and time in separate local columns,
/// handle time = talk + hold + after-call work as h:mm:ss, phantom calls left out, queue
/// names trimmed and upper-cased before a lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_detail_export_maps_outcomes_local_times_and_handle_time() {
    let rows = call_detail();
    let kept: Vec<&Vec<String>> = rows.iter().filter(|r| r[3] != "PHANTOM").collect();
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let head = "format = \"tsv\"\ninclude = [\"*.tsv\"]\ntimestamp_format = \"%d.%m.%Y %H:%M:%S\"\n\
                timezone = \"Europe/Berlin\"\nskip_if = { expr = \"Outcome == 'PHANTOM'\" }";
    let map = r#"timestamp = { expr = "local(Date + ' ' + Time)" }
queueName = { expr = "Queue.trim().upperAscii()", values = { SUPPORT = "Support", BILLING = "Billing" } }
queueIdentifier = { expr = "Queue.trim().upperAscii()", values = { SUPPORT = "q-support", BILLING = "q-billing" } }
channel = { value = "calls" }
offered = { value = true }
handled = { column = "Outcome", values = { AGENT = true, "*" = false } }
duration = { expr = "seconds(Talk) + seconds(Hold) + seconds(ACW)" }
"#;
    let text = source(&env, "contact_events", head, map);
    let records = deliver(&env, &api, "calldetail.tsv", &text, kept.len()).await;
    assert_eq!(records.len(), kept.len());
    let report = env.report();
    assert_eq!(report.sources[0].parked_total, 0);
    let handled = kept.iter().filter(|r| r[3] == "AGENT").count();
    let got_handled = records
        .iter()
        .filter(|r| r["properties"]["handled"] == true)
        .count();
    assert_eq!(got_handled, handled);
    let handle_time: f64 = kept
        .iter()
        .map(|r| hms(&r[4]) + hms(&r[5]) + hms(&r[6]))
        .sum();
    let got: f64 = records
        .iter()
        .map(|r| r["properties"]["duration"].as_f64().unwrap())
        .sum();
    assert_eq!(got, handle_time);
    // The first row: 01.03.2024 7:00:00 in Berlin (CET) is 06:00 UTC.
    let first = &kept[0];
    assert_eq!(
        (first[0].as_str(), first[1].as_str()),
        ("01.03.2024", "7:00:00")
    );
    assert!(
        records
            .iter()
            .any(|r| r["timestamp"] == "2024-03-01T06:00:00Z")
    );
    for r in &records {
        let id = r["queueIdentifier"].as_str().unwrap();
        assert!(id == "q-support" || id == "q-billing", "{r}");
        let name = r["queueName"].as_str().unwrap();
        assert!(name == "Support" || name == "Billing", "{r}");
    }
}

/// Agent statuses given as start + length, and as from/to times of day where `to` may be
/// after midnight: each interval as long as the row says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_intervals_from_start_and_length_or_across_midnight() {
    let text = std::fs::read_to_string(fixture("intervals.csv")).unwrap();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split(';').collect())
        .collect();
    let across = rows.iter().filter(|r| hms(r[4]) < hms(r[3])).count();
    assert!(across > 0, "the fixture has intervals across midnight");
    let head = "format = \"csv\"\ndelimiter = \";\"\ninclude = [\"*.csv\"]\n\
                external_system = \"ACD\"\ntimestamp_format = \"%d.%m.%Y %H:%M:%S\"\n\
                timezone = \"Europe/Berlin\"";
    for (map, length) in [
        (
            r#"agentIdentifier = "agent"
activityIdentifier = "state"
startTime = { expr = "local(start)" }
endTime = { expr = "local(start) + span(length)" }
"#,
            Box::new(|r: &Vec<&str>| r[6].parse::<f64>().unwrap())
                as Box<dyn Fn(&Vec<&str>) -> f64>,
        ),
        (
            r#"agentIdentifier = "agent"
activityIdentifier = "state"
startTime = { expr = "local(day + ' ' + from)" }
endTime = { expr = "endAfter(local(day + ' ' + from), local(day + ' ' + to))" }
"#,
            Box::new(|r: &Vec<&str>| {
                let (from, to) = (hms(r[3]), hms(r[4]));
                if to < from {
                    to + 86_400.0 - from
                } else {
                    to - from
                }
            }),
        ),
    ] {
        let env = Env::new();
        let api = FakeApi::start(KEY).await.unwrap();
        let text = source(&env, "agent_statuses", head, map);
        let records = deliver(&env, &api, "intervals.csv", &text, rows.len()).await;
        assert_eq!(records.len(), rows.len());
        let seconds = |r: &Value| {
            let at = |k: &str| r[k].as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
            (at("endTime") - at("startTime")).as_secs_f64()
        };
        let mut got: Vec<f64> = records.iter().map(seconds).collect();
        let mut want: Vec<f64> = rows.iter().map(&length).collect();
        got.sort_by(f64::total_cmp);
        want.sort_by(f64::total_cmp);
        assert_eq!(got, want);
        assert!(
            records
                .iter()
                .all(|r| r["endTime"].as_str() > r["startTime"].as_str())
        );
    }
}

/// A value missing from `values` parks the row naming the value and the column; an error
/// while evaluating an expression parks the row with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_value_and_a_failing_expression_park_their_rows() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let head = "format = \"csv\"\ninclude = [\"*.csv\"]";
    let map = r#"timestamp = "at"
queueName = "queue"
queueIdentifier = "queue"
channel = { value = "calls" }
offered = { value = true }
handled = { column = "outcome", values = { AGENT = true, HANG = false } }
duration = { expr = "seconds(talk)" }
"#;
    let text = source(&env, "contact_events", head, map);
    let config = env.write_config(&env.config_text(&api.url(), "", &text));
    std::fs::write(
        env.exports.join("calls.csv"),
        "at,queue,outcome,talk\n\
         2024-05-01T08:00:00Z,Support,AGENT,0:01:00\n\
         2024-05-01T08:01:00Z,Support,TRANSFER,0:01:00\n\
         2024-05-01T08:02:00Z,Support,HANG,soon\n",
    )
    .unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "two rows parked", || {
        env.first_source().is_some_and(|s| s.parked_total == 2)
    })
    .await;
    wait_for(LIMIT, "1 record", || api.record_count() >= 1).await;
    daemon.stop().await;
    let mut parked = env.report().parked;
    parked.sort_by(|a, b| a.origin.cmp(&b.origin));
    assert_eq!(parked[0].origin, "calls.csv:3");
    assert!(
        parked[0]
            .reason
            .contains("column `outcome` → handled: \"TRANSFER\" is not among the values"),
        "{}",
        parked[0].reason
    );
    assert_eq!(parked[1].origin, "calls.csv:4");
    assert!(
        parked[1].reason.contains("\"soon\" is not a duration"),
        "{}",
        parked[1].reason
    );
    assert_eq!(api.record_count(), 1);
}

/// Rows merged because their `key` was already known, and rows left out by `skip_if`, are
/// counted per source in `status` (an export whose call ids repeat per phone line otherwise
/// loses rows with no number anywhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_and_skipped_rows_are_counted_in_status() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let head = "format = \"csv\"\ninclude = [\"*.csv\"]\nkey = \"{call}\"\n\
                skip_if = { expr = \"queue.startsWith('TEST')\" }";
    let map = r#"timestamp = "at"
queueName = "queue"
queueIdentifier = "queue"
channel = { value = "calls" }
offered = { value = true }
handled = { value = true }
duration = "talk"
"#;
    let text = source(&env, "contact_events", head, map);
    let config = env.write_config(&env.config_text(&api.url(), "", &text));
    // Call 1 on three phone lines, call 2 on two; one test call.
    std::fs::write(
        env.exports.join("calls.csv"),
        "at,call,line,queue,talk\n\
         2024-05-01T08:00:00Z,1,a,Support,60\n\
         2024-05-01T08:00:00Z,1,b,Support,60\n\
         2024-05-01T08:00:00Z,1,c,Support,60\n\
         2024-05-01T08:01:00Z,2,a,Support,30\n\
         2024-05-01T08:01:00Z,2,b,Support,30\n\
         2024-05-01T08:02:00Z,3,a,TEST queue,10\n",
    )
    .unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "2 records", || api.record_count() >= 2).await;
    settled(&env).await;
    daemon.stop().await;
    let s = &env.report().sources[0];
    assert_eq!(
        (
            s.records_total,
            s.merged_total,
            s.skipped_total,
            s.parked_total
        ),
        (2, 3, 1, 0)
    );
    let (_, out) = cli(&["--config", env.config_file.to_str().unwrap(), "status"]);
    let line = out
        .lines()
        .find(|l| l.starts_with("acd "))
        .unwrap_or_else(|| panic!("{out}"));
    let numbers: Vec<&str> = line.split_whitespace().skip(1).take(4).collect();
    assert_eq!(numbers, ["2", "0", "1", "3"], "{out}");
    assert!(out.contains("SKIPPED"), "{out}");
    assert!(out.contains("MERGED"), "{out}");
}

/// `preview` shows each row as it would be sent, parked, skipped or merged, with file:line,
/// and a summary; it writes no state file and sends nothing; a parked row makes it exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_shows_each_row_and_writes_nothing() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let head = "format = \"csv\"\ninclude = [\"*.csv\"]\nkey = \"{call}\"\n\
                skip_if = { expr = \"queue.startsWith('TEST')\" }";
    let map = r#"timestamp = "at"
queueName = "queue"
queueIdentifier = "queue"
channel = { value = "calls" }
offered = { value = true }
handled = { column = "outcome", values = { AGENT = true, HANG = false } }
duration = { expr = "seconds(talk)" }
"#;
    let text = source(&env, "contact_events", head, map);
    env.write_config(&env.config_text(&api.url(), "", &text));
    std::fs::write(
        env.exports.join("calls.csv"),
        "at,call,queue,outcome,talk\n\
         2024-05-01T08:00:00Z,1,Support,AGENT,0:01:00\n\
         2024-05-01T08:00:30Z,1,Support,AGENT,0:01:00\n\
         2024-05-01T08:01:00Z,2,Support,TRANSFER,0:01:00\n\
         2024-05-01T08:02:00Z,3,TEST,HANG,0:00:10\n\
         2024-05-01T08:03:00Z,4,Support,HANG,0:00:00\n",
    )
    .unwrap();
    let cfg = env.config_file.to_str().unwrap().to_owned();
    let (code, out) = cli(&["--config", &cfg, "preview", "--source", "acd"]);
    assert_eq!(code, 1, "a parked row: {out}");
    assert!(out.contains("calls.csv:2  {\"channel\":\"calls\""), "{out}");
    assert!(out.contains("\"duration\":60.0"), "{out}");
    assert!(
        out.contains("calls.csv:3  MERGED into the record of calls.csv:2"),
        "{out}"
    );
    assert!(
        out.contains(
            "calls.csv:4  PARKED column `outcome` → handled: \"TRANSFER\" is not among the values"
        ),
        "{out}"
    );
    assert!(out.contains("calls.csv:5  SKIPPED (skip_if)"), "{out}");
    assert!(
        out.contains("5 row(s): 2 record(s), 1 parked, 1 skipped, 1 merged"),
        "{out}"
    );
    assert!(
        out.contains("1  column `outcome` → handled: \"…\" is not among"),
        "{out}"
    );
    // --rows and --json.
    let (code, out) = cli(&[
        "--config", &cfg, "preview", "--source", "acd", "--rows", "2", "--json",
    ]);
    // The summary counts every row of the file: a parked row beyond the rows shown is one.
    assert_eq!(code, 1, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["summary"]["rows"], 5);
    assert_eq!(v["rows"].as_array().unwrap().len(), 2);
    assert_eq!(v["rows"][0]["origin"], "calls.csv:2");
    assert_eq!(v["rows"][0]["records"][0]["properties"]["handled"], true);
    assert_eq!(v["rows"][1]["merged"]["into"], "calls.csv:2");
    // Nothing written, nothing sent.
    assert!(!env.state.exists(), "no state file");
    assert_eq!(api.record_count(), 0);
    // --from another file; an unknown source is named.
    let other = env.dir.path().join("sample.csv");
    std::fs::write(
        &other,
        "at,call,queue,outcome,talk\n2024-05-01T08:00:00Z,9,Billing,HANG,5\n",
    )
    .unwrap();
    let (code, out) = cli(&[
        "--config",
        &cfg,
        "preview",
        "--source",
        "acd",
        "--from",
        other.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"queueName\":\"Billing\""), "{out}");
    let (code, out) = cli(&["--config", &cfg, "preview", "--source", "nope"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("no source is named \"nope\" (sources: acd)"),
        "{out}"
    );
}

/// The CDR fixture previews as the daemon reads it: the broken caller names park nothing.
#[test]
fn preview_of_an_asterisk_cdr_parks_nothing() {
    let env = Env::new();
    let text = source(&env, "contact_events", &cdr_map(21), CDR_MAP);
    env.write_config(&env.config_text("http://127.0.0.1:9", "", &text));
    std::fs::copy(fixture("cdr21.csv"), env.exports.join("cdr21.csv")).unwrap();
    let cfg = env.config_file.to_str().unwrap().to_owned();
    let (code, out) = cli(&[
        "--config", &cfg, "preview", "--source", "acd", "--rows", "84",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("84 row(s): 84 record(s), 0 parked"), "{out}");
}

/// `init`'s output with the test's API key file, state file (`state` appended to its path)
/// and configuration id filled in.
fn with_key_and_state(generated: &str, env: &Env, state: &str) -> String {
    generated
        .replace(
            "token_file = \"/etc/injixo-sync/api-key\"",
            &format!("token_file = {:?}", env.key_file.display().to_string()),
        )
        .replace(
            "path = \"/var/lib/injixo-sync/outbox.db\"",
            &format!("path = {:?}{state}", env.state.display().to_string()),
        )
        .replace("# integration_id = 1234", "integration_id = 1234")
}

/// What `init` left for a person to fill in (the key file, the state file, the configuration
/// id), filled in for this installation and the fake API; `state` goes into `[state]`.
fn filled_in(generated: &str, env: &Env, api: &FakeApi, state: &str) -> String {
    with_key_and_state(generated, env, state)
        .replace("# timezone = ", "timezone = ")
        .replacen(
            "[api]\n",
            &format!("[api]\nurl = {:?}\nlinger = \"50ms\"\n", api.url()),
            1,
        )
}

/// `init --sample` → fill in the TODOs → `preview` → `check` → `run`: the generated
/// configuration reads the sample's every row, and `check` names what was left to fill in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_from_a_sample_to_delivery() {
    for (file, rows) in [
        ("calldetail.tsv", 300),
        ("cdr21.csv", 84),
        ("intervals.csv", 40),
    ] {
        let env = Env::new();
        let api = FakeApi::start(KEY).await.unwrap();
        let sample = env.exports.join(file);
        std::fs::copy(fixture(file), &sample).unwrap();
        let generated = env.dir.path().join("generated.toml");
        let (code, out) = cli(&[
            "init",
            "--sample",
            sample.to_str().unwrap(),
            "--output",
            generated.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{file}: {out}");
        let text = std::fs::read_to_string(&generated).unwrap();
        assert!(
            text.contains(&format!("{rows} row(s): {rows} record(s), 0 parked")),
            "{file}:\n{text}"
        );
        // What init cannot know, `check` names.
        let (code, out) = cli(&[
            "--config",
            generated.to_str().unwrap(),
            "check",
            "--offline",
        ]);
        assert_eq!(code, 1, "{file}: {out}");
        assert!(out.contains("integration_id: is required"), "{file}: {out}");
        // Filled in: the key file, the state file, the configuration id.
        let filled = filled_in(&text, &env, &api, "\nkeep_sent = \"1d\"");
        std::fs::write(&env.config_file, &filled).unwrap();
        let cfg = env.config_file.to_str().unwrap().to_owned();
        let (code, out) = cli(&["--config", &cfg, "check", "--offline"]);
        assert_eq!(code, 0, "{file}: {out}\n{filled}");
        let (code, out) = cli(&[
            "--config", &cfg, "preview", "--source", "acd", "--rows", "1000",
        ]);
        assert_eq!(code, 0, "{file}: {out}");
        assert!(
            out.contains(&format!("{rows} row(s): {rows} record(s), 0 parked")),
            "{file}: {out}"
        );
        let config = injixo_sync::config::Config::load(&env.config_file).unwrap();
        let daemon = Daemon::start(config);
        wait_for(LIMIT, &format!("{rows} records"), || {
            api.record_count() >= rows
        })
        .await;
        settled(&env).await;
        daemon.stop().await;
        assert_eq!(api.record_count(), rows, "{file}");
    }
}

/// A stock Master.csv where a call rings three agents in turn: three legs (rows) under one
/// `uniqueid`, one ANSWERED. `init` proposes only a key unique per leg, and the recipe in
/// docs/configuration.md delivers every leg.
fn multi_leg_cdr(calls: u64) -> String {
    let mut text = String::new();
    let mut sequence = 0;
    for call in 0..calls {
        for (leg, disposition) in ["NO ANSWER", "BUSY", "ANSWERED"].iter().enumerate() {
            let agent = 2000 + leg;
            let billsec = if leg == 2 { 30 + call } else { 0 };
            text.push_str(&format!(
                "\"\",\"{src}\",\"600\",\"from-queue\",\"\"\"Caller\"\" <{src}>\",\
                 \"SIP/trunk-{call:08x}\",\"SIP/{agent}-{sequence:08x}\",\"Queue\",\"600\",\
                 \"2024-05-01 08:{m:02}:{leg:02}\",\"\",\"2024-05-01 08:{m:02}:59\",{d},{billsec},\
                 \"{disposition}\",\"DOCUMENTATION\",\"1714550400.{call}\",\"\",\"\",\
                 \"1714550400.{call}\",{sequence}\n",
                src = 1000 + call,
                m = call % 60,
                d = billsec + 5,
            ));
            sequence += 1;
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_leg_of_a_cdr_arrives_and_init_keys_it_per_leg() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    std::fs::write(env.exports.join("Master.csv"), multi_leg_cdr(30)).unwrap();
    let (code, out) = cli(&[
        "init",
        "--sample",
        env.exports.join("Master.csv").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("key = \"{uniqueid}-{sequence}\""), "{out}");
    assert!(out.contains("90 row(s): 90 record(s), 0 parked"), "{out}");
    let text = source(&env, "contact_events", &cdr_map(21), CDR_MAP);
    let config = env.write_config(&env.config_text(&api.url(), "", &text));
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "90 legs", || api.record_count() >= 90).await;
    settled(&env).await;
    daemon.stop().await;
    let records = api.records();
    assert_eq!(records.len(), 90);
    let answered = records
        .iter()
        .filter(|r| r["properties"]["handled"] == true)
        .count();
    assert_eq!(answered, 30);
    assert_eq!(env.report().sources[0].merged_total, 0);
}

/// A month of a call center's TSV whose call ids restart on every phone line: unique in the
/// first thousand rows, not in the month. `init` reads the whole sample, proposes the id with
/// the line, and a channel value first seen on day 20 is not parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_proposes_only_a_key_unique_over_the_whole_sample() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let mut tsv = String::from("call_id\tline\tstart\tqueue\ttype\toutcome\ttalk\n");
    let mut rows = 0;
    for line in 1..=3 {
        for id in 1..=1500u64 {
            // One id starts at the same time on every line: only the line tells them apart.
            let day = 1 + (id * 27 / 1500);
            let kind = if day >= 20 && id % 7 == 0 { "XE" } else { "NE" };
            tsv.push_str(&format!(
                "{id}\t{line}\t2024-05-{day:02} 08:00:{s:02}\tSupport\t{kind}\t{outcome}\t{talk}\n",
                outcome = if id % 5 == 0 { "ABANDONED" } else { "AGENT" },
                s = id % 60,
                talk = rows,
            ));
            rows += 1;
        }
    }
    let sample = env.exports.join("month.tsv");
    std::fs::write(&sample, &tsv).unwrap();
    let (code, text) = cli(&["init", "--sample", sample.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("key = \"{call_id}-{line}\""), "{text}");
    assert!(text.contains("unique in all 4500 row(s)"), "{text}");
    assert!(!text.contains("key = \"{call_id}\""), "{text}");
    // Without the line, no key at all: only the ids were given.
    let narrow = env.exports.join("narrow.tsv");
    let without_line: String = tsv
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            format!(
                "{}\t{}\t{}\t{}\t{}\t{}\n",
                f[0], f[2], f[3], f[4], f[5], f[6]
            )
        })
        .collect();
    std::fs::write(&narrow, without_line).unwrap();
    let (code, out) = cli(&["init", "--sample", narrow.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("\nkey = "), "{out}");
    assert!(
        out.contains("No key: no column set tried is unique"),
        "{out}"
    );
    // The proposed configuration, filled in, delivers every call of the month.
    std::fs::write(&env.config_file, filled_in(&text, &env, &api, "")).unwrap();
    std::fs::remove_file(&narrow).unwrap();
    let config = injixo_sync::config::Config::load(&env.config_file).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "4500 records", || api.record_count() >= 4500).await;
    settled(&env).await;
    daemon.stop().await;
    assert_eq!(api.record_count(), 4500);
    let report = env.report();
    assert_eq!(report.sources[0].merged_total, 0);
    assert_eq!(report.sources[0].parked_total, 0, "{:#?}", report.parked);
}

/// A merge is never silent: the file read that merged rows says so in a warning with the
/// count and the key, while an export that only repeats rows already read says that quietly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_read_that_merges_rows_warns_with_the_count_and_the_key() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let head = "format = \"csv\"\ninclude = [\"*.csv\"]\nkey = \"{call}\"";
    let map = r#"timestamp = "at"
queueName = "queue"
queueIdentifier = "queue"
channel = { value = "calls" }
offered = { value = true }
handled = { value = true }
duration = "talk"
"#;
    let text = source(&env, "contact_events", head, map);
    env.write_config(&env.config_text(&api.url(), "", &text));
    let row =
        |call: u64, line: &str| format!("2024-05-01T08:0{call}:00Z,{call},{line},Support,60\n");
    let header = "at,call,line,queue,talk\n";
    std::fs::write(
        env.exports.join("a.csv"),
        format!("{header}{}{}{}", row(1, "a"), row(2, "a"), row(3, "a")),
    )
    .unwrap();
    let log = env.dir.path().join("daemon.log");
    let daemon = Process::start_logged(&env.config_file, &log);
    wait_for(LIMIT, "3 records", || api.record_count() >= 3).await;
    // An overlapping re-export: calls 2 and 3 again as they were, call 4 new, and call 1 on
    // another line (another call under the same id).
    std::fs::write(
        env.exports.join("b.csv"),
        format!(
            "{header}{}{}{}{}",
            row(2, "a"),
            row(3, "a"),
            row(4, "a"),
            row(1, "b")
        ),
    )
    .unwrap();
    wait_for(LIMIT, "the second file read", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("b.csv read"))
    })
    .await;
    settled(&env).await;
    daemon.terminate();
    let log = std::fs::read_to_string(&log).unwrap();
    let b = log.lines().find(|l| l.contains("b.csv read")).unwrap();
    assert!(b.contains("WARN"), "{b}");
    assert!(
        b.contains("1 record(s), 0 parked, 1 merged, 2 read before"),
        "{b}"
    );
    assert!(b.contains("1 row(s) merged by key {call}"), "{b}");
    assert!(b.contains("the key is too narrow"), "{b}");
    let a = log.lines().find(|l| l.contains("a.csv read")).unwrap();
    assert!(
        a.contains("INFO") && a.contains("3 record(s), 0 parked, 0 merged"),
        "{a}"
    );
    assert_eq!(api.record_count(), 4);
    assert_eq!(env.report().sources[0].merged_total, 1);
}

/// `init` does not choose a zone for local times: it names the machine's and leaves a TODO,
/// and `check` warns while none is set. Times that carry their offset need none.
#[test]
fn init_leaves_the_zone_of_local_times_to_the_operator() {
    let env = Env::new();
    // Two calls whose start times end in `zone` (nothing, or an offset); what `init` writes.
    let sample = |name: &str, zone: &str| {
        let path = env.exports.join(name);
        std::fs::write(
            &path,
            format!(
                "call_id\tstart\tqueue\toutcome\ttalk\n\
                 1\t2024-05-01 08:00:00{zone}\tSupport\tAGENT\t60\n\
                 2\t2024-05-01 08:01:00{zone}\tSupport\tABANDONED\t30\n"
            ),
        )
        .unwrap();
        let (code, text) = cli(&["init", "--sample", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{text}");
        (path, text)
    };
    let (_, text) = sample("local.tsv", "");
    assert!(
        text.contains("# TODO: the zone the ACD writes these local times in"),
        "{text}"
    );
    assert!(!text.contains("\ntimezone = "), "no zone chosen: {text}");
    assert!(text.contains("\n# timezone = "), "{text}");
    // Left so, `check` says the times are read as UTC.
    let config = with_key_and_state(&text, &env, "").replace("# handled = ", "handled = ");
    std::fs::write(&env.config_file, &config).unwrap();
    let (code, out) = env.check_offline();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("reads local times and no `timezone` is set, so they are read as UTC"),
        "{out}"
    );

    let (offset, text) = sample("offset.tsv", "+02:00");
    assert!(text.contains("The times carry their UTC offset"), "{text}");
    assert!(!text.contains("timezone = "), "{text}");
    // Read at their offset. `preview` needs neither the configuration id nor the API key: it
    // sends nothing.
    let draft = text
        .replace(
            "path = \"/var/lib/injixo-sync/outbox.db\"",
            &format!("path = {:?}", env.state.display().to_string()),
        )
        .replace("# handled = ", "handled = ")
        .replace(
            "token_file = \"/etc/injixo-sync/api-key\"",
            "token_file = \"/nowhere/api-key\"",
        );
    assert!(draft.contains("# integration_id = 1234"), "{draft}");
    std::fs::write(&env.config_file, &draft).unwrap();
    let (code, out) = cli(&[
        "--config",
        env.config_file.to_str().unwrap(),
        "preview",
        "--source",
        "acd",
        "--from",
        offset.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("\"timestamp\":\"2024-05-01T06:00:00Z\""),
        "{out}"
    );
}
