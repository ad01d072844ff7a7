//! Every bad configuration gives its exact, readable message with file, line and key, and
//! `check` exits non-zero on it.

mod support;

use std::path::Path;

use injixo_sync::config::Config;
use support::cli;

const VALID: &str = r#"[api]
token_file = "/etc/injixo-sync/api-key"

[state]
path = "/tmp/outbox.db"

[[source]]
name = "acd"
type = "files"
integration_id = 1234
emits = "contact_events"
path = "/srv/acd/exports"
include = ["*.csv"]
format = "csv"

[source.map]
timestamp = "start"
queueName = "queue"
queueIdentifier = "queue_id"
channel = { value = "calls" }
offered = { value = true }
handled = "answered"
duration = "talk"
"#;

/// (what to replace in VALID, with what, the expected message).
const CASES: &[(&str, &str, &str)] = &[
    (
        "format = \"csv\"",
        "format = \"csv\"\nmax_line = \"2GiB\"",
        "f.toml:15: source[0] \"acd\".max_line: \"2GiB\" is out of range (1.0 KiB to 64.0 MiB)",
    ),
    (
        "[api]\n",
        "[api]\nbogus = 1\n",
        "f.toml:2: unknown field `bogus`",
    ),
    (
        "token_file = \"/etc/injixo-sync/api-key\"",
        "",
        "f.toml:1: api: no API key configured: set token_file",
    ),
    (
        "token_file = \"/etc/injixo-sync/api-key\"",
        "token_file = \"/k\"\ntoken_env = \"K\"",
        "f.toml:2: api: set only one of token_file, token_env and token",
    ),
    (
        "[api]\n",
        "[api]\nurl = \"http://api.example.com\"\n",
        "f.toml:2: api.url: plain http:// is refused for \"api.example.com\"",
    ),
    (
        "[api]\n",
        "[api]\nlinger = \"soon\"\n",
        "f.toml:2: api.linger: \"soon\" is not a duration: write it like \"500ms\", \"30s\", \"5m\", \"14d\"",
    ),
    (
        "[api]\n",
        "[api]\nbatch_bytes = \"lots\"\n",
        "f.toml:2: api.batch_bytes: \"lots\" is not a size: write it like \"512KiB\", \"64MiB\" or \"5GiB\"",
    ),
    (
        "[state]\n",
        "[state]\nmax_outbox_size = \"1KiB\"\n",
        "f.toml:5: state.max_outbox_size: \"1KiB\" is out of range (1.0 MiB to 1.0 PiB)",
    ),
    (
        "[api]\n",
        "[api]\nbatch_records = 0\n",
        "f.toml:2: api.batch_records: 0 is out of range (1 to 10000)",
    ),
    (
        "[state]\n",
        "[state]\nkeep_sent = \"-1d\"\n",
        "f.toml:5: state.keep_sent: \"-1d\" is not a duration",
    ),
    (
        "name = \"acd\"",
        "name = \"acd exports\"",
        "f.toml:8: source[0] \"acd exports\".name: \"acd exports\" may only contain ASCII letters",
    ),
    (
        "type = \"files\"",
        "type = \"ftp\"",
        "f.toml:9: source[0] \"acd\".type: \"ftp\" is not a source type: use \"files\"",
    ),
    (
        "integration_id = 1234",
        "integration_id = -4",
        "f.toml:10: source[0] \"acd\".integration_id: -4 is not a configuration id",
    ),
    (
        "emits = \"contact_events\"",
        "emits = \"calls\"",
        "f.toml:11: source[0] \"acd\".emits: \"calls\" is not valid: use \"contact_events\", \"agent_statuses\" or \"agent_states\"",
    ),
    (
        "emits = \"contact_events\"",
        "emits = \"agent_statuses\"",
        "source[0] \"acd\".external_system: is required for agent statuses",
    ),
    (
        "format = \"csv\"",
        "format = \"xlsx\"",
        "f.toml:14: source[0] \"acd\".format: \"xlsx\" is not valid: use one of \"ndjson\", \"csv\", \"tsv\"",
    ),
    (
        "format = \"csv\"",
        "format = \"csv\"\nmode = \"stream\"",
        "f.toml:15: source[0] \"acd\".mode: \"stream\" is not valid: use one of \"drop\", \"tail\"",
    ),
    (
        "format = \"csv\"",
        "format = \"csv\"\nafter = \"move\"",
        "f.toml:15: source[0] \"acd\".after: \"move\" needs archive_dir",
    ),
    (
        "format = \"csv\"",
        "format = \"csv\"\nmode = \"tail\"\nafter = \"delete\"",
        "f.toml:16: source[0] \"acd\".after: applies only to mode = \"drop\"",
    ),
    (
        "include = [\"*.csv\"]",
        "include = [\"[*.csv\"]",
        "f.toml:13: source[0] \"acd\".include: \"[*.csv\" is not a glob",
    ),
    (
        "channel = { value = \"calls\" }",
        "channel = { value = \"pigeons\" }",
        "f.toml:16: source[0] \"acd\".map: value for `channel`: \"pigeons\" is not one of calls, chats",
    ),
    (
        "duration = \"talk\"",
        "",
        "f.toml:16: source[0] \"acd\".map: map lacks duration",
    ),
    (
        "duration = \"talk\"",
        "duration = \"talk\"\nagent = \"x\"",
        "f.toml:24: source[0] \"acd\".map.agent: `agent` is not a field of contact_events records",
    ),
    (
        "queueIdentifier = \"queue_id\"",
        "queueIdentifier = { template = \"{site\" }",
        "f.toml:19: source[0] \"acd\".map.queueIdentifier: template \"{site\" has a '{' without its '}'",
    ),
    (
        "format = \"csv\"",
        "format = \"csv\"\ntimezone = \"Mars/Olympus\"",
        "f.toml:15: source[0] \"acd\".timezone: \"Mars/Olympus\" is not an IANA time zone",
    ),
    (
        "format = \"csv\"",
        "format = \"csv\"\ntimestamp_format = \"iso\"",
        "f.toml:15: source[0] \"acd\".timestamp_format: \"iso\" is not a timestamp format",
    ),
    (
        "format = \"csv\"",
        "format = \"csv\"\nencoding = \"ebcdic\"",
        "f.toml:15: source[0] \"acd\".encoding: \"ebcdic\" is not supported: use \"utf-8\", \"windows-1252\"",
    ),
    (
        "format = \"csv\"",
        "format = \"csv\"\nexpand = \"interval\"",
        "f.toml:7: source[0] \"acd\".interval: is required with expand = \"interval\"",
    ),
    (
        "format = \"csv\"",
        "format = \"csv\"\nexpand = \"interval\"\ninterval = \"15m\"\ninterval_column = \"intrvl\"",
        "f.toml:17: source[0] \"acd\".interval_column: and `interval` both give the interval's length: keep one",
    ),
    (
        "format = \"csv\"",
        "format = \"csv\"\ninterval_column = \"intrvl\"",
        "f.toml:15: source[0] \"acd\".interval_column: applies only with expand = \"interval\"",
    ),
    (
        "format = \"csv\"",
        "format = \"csv\"\ninterval = \"15m\"",
        "f.toml:15: source[0] \"acd\".interval: applies only with expand = \"interval\"",
    ),
    (
        "format = \"csv\"",
        "format = \"csv\"\nexpand = \"interval\"\ninterval = \"15m\"",
        "f.toml:15: source[0] \"acd\".expand: `offered` must hold a number of contacts per interval: \"true\" is not a number of contacts",
    ),
    (
        "format = \"csv\"",
        "format = \"csv\"\nkey = \"{call_id\"",
        "f.toml:15: source[0] \"acd\".key: template \"{call_id\" has a '{' without its '}'",
    ),
    (
        "format = \"csv\"",
        "format = \"csv\"\nskip_if = { queue = 5 }",
        "f.toml:15: source[0] \"acd\".skip_if.queue: write a pattern or a list of patterns",
    ),
    (
        "emits = \"contact_events\"",
        "emits = \"agent_states\"\nexternal_system = \"ACD\"",
        "source[0] \"acd\".map.queueName: `queueName` is not a field of agent state changes",
    ),
    (
        "format = \"csv\"",
        "format = \"csv\"\nmax_interval = \"4h\"",
        "f.toml:15: source[0] \"acd\".max_interval: applies only with emits = \"agent_states\"",
    ),
    (
        "format = \"csv\"",
        "format = \"csv\"\nwatch = \"inotify\"",
        "f.toml:15: source[0] \"acd\".watch: \"inotify\" is not valid: use one of \"auto\", \"events\", \"poll\"",
    ),
    (
        "format = \"csv\"",
        "format = \"csv\"\nmarker = \".done\"",
        "f.toml:15: source[0] \"acd\".marker: \".done\" is not a marker: write \"{name}.done\"",
    ),
    (
        "format = \"csv\"",
        "format = \"csv\"\nmode = \"tail\"\nmarker = \"{name}.done\"",
        "f.toml:16: source[0] \"acd\".marker: applies only to mode = \"drop\"",
    ),
    (
        "[source.map]",
        "[source.mapping]",
        "f.toml:16: unknown field `mapping`, expected one of `name`",
    ),
    (
        "type = \"files\"",
        "type = \"sql\"",
        "f.toml:7: source[0] \"acd\".connection: is required (connection, connection_file or connection_env)",
    ),
    (
        "type = \"files\"",
        "type = \"sql\"",
        "f.toml:12: source[0] \"acd\".path: does not apply to type = \"sql\"",
    ),
    (
        "type = \"files\"",
        "type = \"sql\"\nschedule = \"*/5 * * * *\"",
        "f.toml:10: source[0] \"acd\".schedule: \"*/5 * * * *\" is not a cron schedule with seconds",
    ),
    (
        "type = \"files\"",
        "type = \"sql\"\nschedule = \"0 * * * * *\"\nevery = \"1m\"",
        "f.toml:11: source[0] \"acd\".every: set either schedule or every, not both",
    ),
    (
        "type = \"files\"",
        "type = \"http\"\nevery = \"1m\"\nurl = \"acd/calls\"",
        "f.toml:11: source[0] \"acd\".url: \"acd/calls\" is not a URL",
    ),
    (
        "type = \"files\"",
        "type = \"http\"\nevery = \"1m\"\nurl = \"https://acd.example/calls\"\nauth = \"digest\"",
        "source[0] \"acd\".auth: \"digest\" is not valid: use \"bearer\", \"basic\" or \"oauth2\"",
    ),
    (
        "type = \"files\"",
        "type = \"webhook\"\ntoken_env = \"PUSH_TOKEN\"",
        "f.toml:9: source[0] \"acd\".type: \"webhook\" is served on the [listen] address: add [listen]",
    ),
    (
        "integration_id = 1234",
        "integration_id = \"1234\"",
        "f.toml:10: invalid type: string \"1234\", expected i64",
    ),
    (
        "duration = \"talk\"",
        "duration = { expr = \"seconds(talk) + seconds(hold\" }",
        "f.toml:23: source[0] \"acd\".map.duration: expression \"seconds(talk) + seconds(hold\" \
         does not parse at column 30",
    ),
    (
        "duration = \"talk\"",
        "duration = { expr = \"secs(talk)\" }",
        "f.toml:23: source[0] \"acd\".map.duration: expression \"secs(talk)\" at column 1 \
         (`secs()`): there is no function `secs`",
    ),
    (
        "offered = { value = true }",
        "offered = { expr = \"q_time != 0\" }",
        "f.toml:21: source[0] \"acd\".map.offered: expression \"q_time != 0\" at column 8 (`!=`): \
         compares text with a whole number: columns are text",
    ),
    (
        "handled = \"answered\"",
        "handled = { expr = \"seconds(talk)\" }",
        "f.toml:22: source[0] \"acd\".map.handled: expression \"seconds(talk)\" gives a number, \
         and this needs true or false",
    ),
    (
        "handled = \"answered\"",
        "handled = { column = \"outcome\", values = { AGENT = true, HANG = \"maybe\" } }",
        "f.toml:16: source[0] \"acd\".map: value for `handled`: values.HANG: \"maybe\" is not a \
         boolean",
    ),
    (
        "handled = \"answered\"",
        "handled = { values = { AGENT = true } }",
        "f.toml:22: source[0] \"acd\".map.handled: `values` looks up a `column` or an `expr`",
    ),
    (
        "format = \"csv\"",
        "format = \"csv\"\nkey = { expr = \"call_id +\" }",
        "f.toml:15: source[0] \"acd\".key.expr: expression \"call_id +\" does not parse",
    ),
    (
        "format = \"csv\"",
        "format = \"csv\"\nskip_if = { expr = \"queue\" }",
        "f.toml:15: source[0] \"acd\".skip_if.expr: expression \"queue\" gives text, and this \
         needs true or false",
    ),
    (
        "path = \"/srv/acd/exports\"\ninclude = [\"*.csv\"]",
        "path = \"/tmp\"\ninclude = [\"*\"]\nafter = \"delete\"",
        "f.toml:12: source[0] \"acd\".path: /tmp is the folder of [state] path /tmp/outbox.db, \
         and include/exclude let the source read outbox.db, outbox.db-wal, outbox.db-shm, \
         outbox.db-journal, outbox.db.lock, outbox.db.new-<pid>-<n>, \
         outbox.db.new-<pid>-<n>-journal (the outbox and the files SQLite and the lock keep \
         beside it): it would delete them. Move the state file out of the folders sources \
         read",
    ),
    (
        "[state]\n",
        "[listen]\ntls_cert = \"/etc/c.pem\"\n\n[state]\n",
        "listen.tls_key: is needed with tls_cert",
    ),
    (
        "[state]\n",
        "[listen]\ntrusted_proxies = [\"10.0.0.0/33\"]\n\n[state]\n",
        "listen.trusted_proxies: \"10.0.0.0/33\" is not an address or a network",
    ),
    (
        "format = \"csv\"",
        "format = \"csv\"\nsignature = \"hmac-sha256\"",
        "does not apply to type = \"files\"",
    ),
];

#[test]
fn every_bad_config_names_file_line_key_and_remedy() {
    Config::parse(VALID, Path::new("f.toml")).expect("the base config is valid");
    let mut failures = Vec::new();
    for (from, to, expected) in CASES {
        assert!(VALID.contains(from), "case {from:?} does not apply");
        let text = VALID.replacen(from, to, 1);
        match Config::parse(&text, Path::new("f.toml")) {
            Ok(_) => failures.push(format!("{to:?}: accepted")),
            Err(e) => {
                let msg = e.to_string();
                if !msg.contains(expected) {
                    failures.push(format!("{to:?}:\n   want {expected}\n   got  {msg}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = VALID
        .replace("emits = \"contact_events\"", "emits = \"calls\"")
        .replace("format = \"csv\"", "format = \"csv\"\nmode = \"stream\"");
    let err = Config::parse(&text, Path::new("f.toml")).unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
    assert!(err.to_string().starts_with("f.toml has 2 problems:"));
}

/// A `sql` source reads rows again behind its cursor; records (and their dedupe keys) kept for
/// less than that would let a row read again be sent twice.
#[test]
fn records_are_kept_longer_than_a_poller_reads_rows_again() {
    let sql = |keep: &str, overlap: &str| {
        format!(
            "[api]\ntoken_file = \"/k\"\n\n[state]\npath = \"/tmp/o.db\"\nkeep_sent = \"{keep}\"\n\n\
             [[source]]\nname = \"cms\"\ntype = \"sql\"\nintegration_id = 1\n\
             emits = \"contact_events\"\nconnection = \"postgres://u@h/d\"\nevery = \"5m\"\n\
             query = \"SELECT * FROM t\"\ncursor_column = \"day\"\ninitial_cursor = \"2024-05-01\"\noverlap = \"{overlap}\"\n\
             lag = \"1h\"\nkey = \"{{id}}\"\n\n[source.map]\ntimestamp = \"at\"\n\
             queueName = \"q\"\nqueueIdentifier = \"q\"\nchannel = {{ value = \"calls\" }}\n\
             offered = {{ value = true }}\nhandled = {{ value = true }}\nduration = \"d\"\n"
        )
    };
    let err = Config::parse(&sql("1d", "1d"), Path::new("f.toml")).unwrap_err();
    assert!(
        err.to_string().contains(
            "f.toml:6: state.keep_sent: 1day must be longer than source \"cms\" reads rows \
             again (overlap 1day + lag 1h + 10m), as rows read again are recognised only while \
             their records are kept: set it to at least 2days 1h 10m"
        ),
        "{err}"
    );
    let close = Config::parse(&sql("2d", "1d"), Path::new("f.toml")).unwrap();
    assert!(
        close
            .warnings
            .iter()
            .any(|w| w.contains("with a DATE column, rows committed late")),
        "{:?}",
        close.warnings
    );
    let fine = Config::parse(&sql("14d", "1d"), Path::new("f.toml")).unwrap();
    assert!(fine.warnings.iter().all(|w| !w.contains("keep_sent")));
}

#[test]
fn an_inline_token_works_but_is_warned_about_and_never_printed() {
    let text = VALID.replace(
        "token_file = \"/etc/injixo-sync/api-key\"",
        "token = \"sk-very-secret\"",
    );
    let config = Config::parse(&text, Path::new("f.toml")).unwrap();
    assert!(config.warnings[0].contains("inline"));
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("sk-very-secret"),
        "the token leaked into Debug output"
    );
}

#[test]
fn plain_http_is_allowed_only_to_loopback() {
    for url in [
        "http://127.0.0.1:8080",
        "http://localhost:1",
        "http://[::1]:9",
    ] {
        let text = VALID.replace("[api]\n", &format!("[api]\nurl = {url:?}\n"));
        assert!(Config::parse(&text, Path::new("f.toml")).is_ok(), "{url}");
    }
}

#[test]
fn check_exits_non_zero_with_the_message_and_zero_on_a_good_setup() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, VALID.replace("format = \"csv\"", "format = \"xlsx\"")).unwrap();
    let (code, out) = cli(&["--config", bad.to_str().unwrap(), "check", "--offline"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("bad.toml:14: source[0] \"acd\".format"),
        "{out}"
    );

    let exports = dir.path().join("exports");
    std::fs::create_dir_all(&exports).unwrap();
    std::fs::write(dir.path().join("key"), "k").unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        VALID
            .replace("/etc/injixo-sync/api-key", "key")
            .replace("/tmp/outbox.db", "state/outbox.db")
            .replace("/srv/acd/exports", "exports"),
    )
    .unwrap();
    let (code, out) = cli(&["--config", good.to_str().unwrap(), "check", "--offline"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("outbox.db does not exist yet: `run` creates it, and its folder"),
        "{out}"
    );
    // A state file in folders that do not exist yet, several levels deep, and one named
    // relative to the configuration's folder: `run` makes both.
    for state in ["deep/er/still/outbox.db", "outbox.db"] {
        let other = dir.path().join("other.toml");
        std::fs::write(
            &other,
            std::fs::read_to_string(&good)
                .unwrap()
                .replace("state/outbox.db", state),
        )
        .unwrap();
        let (code, out) = cli(&["--config", other.to_str().unwrap(), "check", "--offline"]);
        assert_eq!(code, 0, "{state}: {out}");
        assert!(
            out.contains("does not exist yet: `run` creates it"),
            "{state}: {out}"
        );
    }

    std::fs::remove_file(dir.path().join("key")).unwrap();
    let (code, out) = cli(&["--config", good.to_str().unwrap(), "check", "--offline"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot read api.token_file"), "{out}");
}

#[test]
fn the_example_config_is_valid_and_documents_every_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    Config::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    let keys = [
        "url",
        "token_file",
        "token_env",
        "batch_records",
        "batch_bytes",
        "linger",
        "timeout",
        "retry_initial",
        "retry_max",
        "pause_probe",
        "proxy",
        "ca_file",
        "path",
        "keep_sent",
        "format",
        "level",
        "name",
        "type",
        "integration_id",
        "emits",
        "external_system",
        "recursive",
        "include",
        "exclude",
        "mode",
        "settle",
        "after",
        "archive_dir",
        "poll_interval",
        "start_at",
        "delimiter",
        "header",
        "columns",
        "timestamp_format",
        "timezone",
        "encoding",
        "watch",
        "marker",
        "key",
        "skip_if",
        "expand",
        "interval",
        "interval_column",
        "expand_duration",
        "duration_unit",
        "logout_states",
        "open_interval_flush",
        "max_interval",
        "channel",
        "schedule",
        "every",
        "jitter",
        "connection_file",
        "connection_env",
        "query",
        "cursor_column",
        "initial_cursor",
        "page_size",
        "lag",
        "overlap",
        "snapshot",
        "method",
        "headers",
        "body",
        "auth",
        "username",
        "password_file",
        "token_url",
        "client_id",
        "client_secret_file",
        "scope",
        "records",
        "pagination",
        "next_pointer",
        "page_param",
        "first_page",
        "offset_param",
        "limit_param",
        "cursor_field",
        "cursor_pointer",
        "max_body",
        "allow",
        "signature",
        "signature_header",
        "signature_secret_file",
        "signature_timestamp_header",
        "signature_max_age",
        "ui",
        "tls_cert",
        "tls_key",
        "tls_client_ca",
        "trusted_proxies",
        "forwarded_header",
        "[source.queues]",
        "[source.agents]",
        "[source.activities]",
        "[source.map]",
    ];
    for key in keys {
        let documented = text.lines().any(|l| {
            l.trim_start_matches("# ").starts_with(&format!("{key} ="))
                || l.contains(key) && key.starts_with('[')
        });
        assert!(documented, "config.example.toml does not show `{key}`");
    }
}

#[test]
fn an_unusable_ca_file_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), "k").unwrap();
    std::fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
    let text = VALID
        .replace("/etc/injixo-sync/api-key", "key")
        .replace("[api]\n", "[api]\nca_file = \"ca.pem\"\n");
    let config = Config::parse(&text, &dir.path().join("f.toml")).unwrap();
    let err = injixo_sync::push::ApiClient::new(&config.api)
        .err()
        .expect("refused");
    assert!(
        matches!(
            err,
            injixo_sync::push::ClientError::CaEmpty { .. }
                | injixo_sync::push::ClientError::CaUnusable { .. }
        ),
        "{err:?}"
    );
    let said = err.to_string();
    assert!(
        said.contains("api.ca_file") && said.contains("ca.pem"),
        "{said}"
    );
}

/// A files source (an asterisk_queue_log too) whose folder and patterns reach the state file
/// or the files beside it would delete, move or park the outbox: `check` refuses it, naming
/// the source's `path` and the state file; patterns that leave those names out are fine.
#[test]
fn a_files_source_that_reaches_the_state_file_is_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let exports = dir.path().join("exports");
    std::fs::create_dir_all(exports.join("deep/state")).unwrap();
    std::fs::write(dir.path().join("key"), "k").unwrap();
    // Through a symlink to the exports, the way an operator may have named it.
    #[cfg(unix)]
    std::os::unix::fs::symlink(&exports, dir.path().join("acd")).unwrap();
    let base = VALID
        .replace("/etc/injixo-sync/api-key", "key")
        .replace("/srv/acd/exports", "acd");
    let config = dir.path().join("f.toml");
    let check = |text: &str| {
        std::fs::write(&config, text).unwrap();
        cli(&["--config", config.to_str().unwrap(), "check", "--offline"])
    };
    let state = exports.join("deep/state/outbox.db");
    let below = base.replace("/tmp/outbox.db", state.to_str().unwrap());
    // Below the source's folder, but the source does not go down: fine.
    let (code, out) = check(&below.replace("include = [\"*.csv\"]", "include = [\"*\"]"));
    assert_eq!(code, 0, "{out}");
    let (code, out) = check(&below.replace(
        "include = [\"*.csv\"]",
        "include = [\"*\"]\nrecursive = true\nafter = \"move\"\narchive_dir = \"done\"",
    ));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("f.toml:12: source[0] \"acd\".path:")
            && out.contains(&format!("[state] path {}", state.display()))
            && out.contains("holds, with recursive = true, the folder of")
            && out.contains("it would move them away")
            && out.contains("exclude = [\"deep/state/outbox.db*\"]"),
        "{out}"
    );
    // Its patterns leave the outbox's names out.
    let (code, out) = check(&below.replace(
        "include = [\"*.csv\"]",
        "include = [\"*\"]\nrecursive = true\nexclude = [\"deep/state/outbox.db*\"]",
    ));
    assert_eq!(code, 0, "{out}");
    let (code, out) = check(&below.replace(
        "include = [\"*.csv\"]",
        "include = [\"**/*.csv\"]\nrecursive = true",
    ));
    assert_eq!(code, 0, "{out}");

    // An asterisk_queue_log whose rotated names (queue_log.*) take the state file in.
    let logs = dir.path().join("asterisk");
    std::fs::create_dir_all(&logs).unwrap();
    let text = format!(
        "[api]\ntoken_file = \"key\"\n[state]\npath = {:?}\n[[source]]\nname = \"ast\"\n\
         type = \"asterisk_queue_log\"\nintegration_id = 1\nemits = \"contact_events\"\n\
         path = {:?}\n",
        logs.join("queue_log.db").display().to_string(),
        logs.join("queue_log").display().to_string(),
    );
    let (code, out) = check(&text);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("source[0] \"ast\".path:")
            && out.contains("queue_log.db-wal")
            && out.contains("follow them and park"),
        "{out}"
    );
}
