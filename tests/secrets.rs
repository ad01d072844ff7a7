//! No configured secret appears in a log line (at debug level), in any command's output,
//! `/metrics`, `/readyz`, the configuration's `Debug` output or the state file's bytes,
//! whatever goes wrong: the API, its proxy, an `http` source and a database all unreachable,
//! their URLs carrying passwords and keys; an ACD API that answers, signs its next links and
//! quotes requests in its errors; URLs that do not parse.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::acd_api::{AcdApi, CLIENT};
use support::*;

const SECRETS: &[&str] = &[
    "urlpw-1a2b3c",
    "proxypw-4d5e6f",
    "querykey-7g8h9i",
    "headerkey-0j1k2l",
    "dbpw-3m4n5o",
    "basicpw-6p7q8r",
    "pushtoken-9s0t1u2v3w",
    "inlinekey-4x5y6z",
];

fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} shows the secret {s}:\n{text}");
    }
    assert!(!text.contains(KEY), "{what} shows the API key:\n{text}");
}

fn config(env: &Env, port: u16) -> String {
    let dead = free_port();
    let file = |name: &str, value: &str| {
        let p = env.dir.path().join(name);
        std::fs::write(&p, value).unwrap();
        p.display().to_string()
    };
    format!(
        "[api]\nurl = \"http://ann:urlpw-1a2b3c@127.0.0.1:{dead}\"\n\
         proxy = \"http://bob:proxypw-4d5e6f@127.0.0.1:{dead}\"\ntoken_file = {key:?}\n\
         linger = \"50ms\"\nretry_initial = \"50ms\"\nretry_max = \"200ms\"\n\
         [state]\npath = {state:?}\n[listen]\naddress = \"127.0.0.1:{port}\"\n\n\
         [[source]]\nname = \"acd-api\"\ntype = \"http\"\nintegration_id = 1\n\
         emits = \"contact_events\"\nevery = \"1s\"\n\
         url = \"http://carl:urlpw-1a2b3c@127.0.0.1:{dead}/calls?api_key=querykey-7g8h9i&since={{cursor}}\"\n\
         headers = {{ \"X-Api-Key\" = \"headerkey-0j1k2l\" }}\nauth = \"basic\"\nusername = \"reporter\"\n\
         password_file = {basic:?}\ninitial_cursor = \"2024-01-01T00:00:00Z\"\nrecords = \"/data\"\n\
         cursor_field = \"updated\"\nkey = \"{{id}}\"\n\
         [source.map]\ntimestamp = \"t\"\nqueueName = \"q\"\nqueueIdentifier = \"q\"\n\
         channel = {{ value = \"calls\" }}\noffered = {{ value = true }}\nhandled = {{ value = true }}\n\
         duration = \"d\"\n\n\
         [[source]]\nname = \"acd-db\"\ntype = \"sql\"\nintegration_id = 1\nemits = \"contact_events\"\n\
         connection_file = {db:?}\nevery = \"1s\"\nquery = \"SELECT 1\"\nkey = \"{{id}}\"\n\
         cursor_column = \"t\"\ninitial_cursor = \"2024-01-01T00:00:00Z\"\ntimeout = \"2s\"\n\
         [source.map]\ntimestamp = \"t\"\nqueueName = \"q\"\nqueueIdentifier = \"q\"\n\
         channel = {{ value = \"calls\" }}\noffered = {{ value = true }}\nhandled = {{ value = true }}\n\
         duration = \"d\"\n\n\
         [[source]]\nname = \"push\"\ntype = \"webhook\"\nintegration_id = 1\n\
         emits = \"contact_events\"\ntoken_file = {push:?}\n",
        key = env.key_file.display().to_string(),
        state = env.state.display().to_string(),
        basic = file("basic", "basicpw-6p7q8r"),
        db = file(
            "db",
            &format!("postgres://u:dbpw-3m4n5o@127.0.0.1:{dead}/acd")
        ),
        push = file("push", "pushtoken-9s0t1u2v3w"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_check_status_metrics_or_debug_output() {
    let env = Env::new();
    let port = free_port();
    std::fs::write(&env.config_file, config(&env, port)).unwrap();
    let cfg = env.config_file.to_str().unwrap().to_owned();

    for args in [vec!["check"], vec!["check", "--offline"]] {
        let mut all = vec!["--config", &cfg];
        all.extend(&args);
        let (_, out) = cli(&all);
        assert!(out.contains("is valid"), "{args:?}: {out}");
        if args.len() == 1 {
            assert!(
                out.contains("cannot connect to the database")
                    && out.contains("cannot reach the API"),
                "{args:?} finds the unreachable parts: {out}"
            );
        }
        assert_no_secret(&format!("{args:?}"), &out);
    }

    let log = env.dir.path().join("daemon.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_injixo-sync"))
        .args(["--config", &cfg, "run"])
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    // A push, so that the lane tries (and fails) to deliver through the proxy.
    wait_serving(port).await;
    let r = client
        .post(format!(
            "http://127.0.0.1:{port}/webhook/push/pushtoken-9s0t1u2v3w"
        ))
        .header("content-type", "application/json")
        .body(event(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let logged = |what: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(what)
    };
    wait_for(Duration::from_secs(60), "each failure logged", || {
        logged("source=acd-api") && logged("source=acd-db") && logged("delivery failing")
    })
    .await;
    for path in ["/metrics", "/readyz"] {
        let text = client
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_no_secret(path, &text);
    }
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["dead", "list"],
    ] {
        let mut all = vec!["--config", &cfg];
        all.extend(&args);
        let (code, out) = cli(&all);
        assert_eq!(code, 0, "{out}");
        assert_no_secret(&format!("{args:?}"), &out);
    }
    // Commands that fail on the unreachable API and source name them, without secrets.
    for args in [
        vec!["send-test", "--type", "contact-event"],
        vec!["preview", "--source", "acd-api"],
    ] {
        let mut all = vec!["--config", &cfg];
        all.extend(&args);
        let (code, out) = cli(&all);
        assert_ne!(code, 0, "{out}");
        assert!(
            out.contains("127.0.0.1"),
            "{args:?} names the address: {out}"
        );
        assert_no_secret(&format!("{args:?}"), &out);
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert_no_secret("the log", &std::fs::read_to_string(&log).unwrap());
    let mut all: Vec<&str> = SECRETS.to_vec();
    all.push(KEY);
    assert_state_files_hold_no_secret(&env.state, &all);

    // The configuration's Debug output, with secrets written inline as well.
    let inline = config(&env, port).replace(
        &format!("token_file = {:?}", env.key_file.display().to_string()),
        "token = \"inlinekey-4x5y6z\"",
    );
    let config = injixo_sync::config::Config::parse(&inline, &env.config_file).unwrap();
    assert_no_secret("Config's Debug", &format!("{config:?}"));
    assert_no_secret("Config's pretty Debug", &format!("{config:#?}"));
}

/// The secrets of the live set-up below, each where an operator would put it.
const LIVE: &[&str] = &[
    // The ACD URL's user info and query value.
    "acduser-k3l4",
    "acdpw-5m6n7o",
    "acdkey-8p9q0r",
    // A token the ACD puts into its next links, valid or not.
    "nexttoken-1s2t3u",
    "badlink-4v5w6x",
    "hdrval-7y8z9a",
    // The OAuth 2 client secret, from a file and from a variable.
    CLIENT.1,
    "tokenq-0b1c2d",
    "apiq-3e4f5g",
    KEY,
];

fn assert_no_live_secret(what: &str, text: &str) {
    for s in LIVE {
        assert!(!text.contains(s), "{what} shows the secret {s}:\n{text}");
    }
}

/// Every file in the state folder, read raw (the daemon has stopped, so no descriptor of
/// ours can drop its locks), searched for each secret as bytes.
fn assert_state_files_hold_no_secret(state: &Path, secrets: &[&str]) {
    let dir = state.parent().unwrap();
    let mut read = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        read += bytes.len();
        for s in secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{} holds the secret {s}",
                path.display()
            );
        }
    }
    assert!(read > 0, "nothing read in {}", dir.display());
}

/// An `http` source on the fake ACD with every kind of secret: user info and a key in the
/// URL, a header, OAuth 2 with a query on `token_url`, the client secret from `secret`.
fn live_source(name: &str, acd: &AcdApi, pagination: &str, secret: &str, queue: &str) -> String {
    let url = acd
        .url(&format!("/{name}/calls"))
        .replace("http://", "http://acduser-k3l4:acdpw-5m6n7o@");
    format!(
        "[[source]]\nname = \"acd-{name}\"\ntype = \"http\"\nintegration_id = 1234\n\
         emits = \"contact_events\"\nevery = \"1s\"\n\
         url = \"{url}?api_key=acdkey-8p9q0r&since={{cursor}}\"\n{pagination}\n\
         headers = {{ \"X-Api-Key\" = \"hdrval-7y8z9a\" }}\n\
         auth = \"oauth2\"\ntoken_url = \"{token_url}?tenant=tokenq-0b1c2d\"\n\
         client_id = {client:?}\n{secret}\n\
         initial_cursor = \"2024-01-01T00:00:00Z\"\nrecords = \"/data\"\ncursor_field = \"updated\"\n\
         page_size = 7\nkey = \"{{id}}\"\n\
         [source.map]\ntimestamp = \"started\"\nqueueName = {queue:?}\nqueueIdentifier = \"queue\"\n\
         channel = {{ value = \"calls\" }}\noffered = {{ value = true }}\nhandled = {{ value = true }}\n\
         duration = {{ expr = \"seconds(id)\" }}\n\n",
        token_url = acd.url("/oauth/token"),
        client = CLIENT.0,
    )
}

/// `injixo-sync` with `args` and the client secret in the environment: exit code and
/// stdout + stderr.
fn run(config: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_injixo-sync"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("ACD_CLIENT_SECRET", CLIENT.1)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_are_shown_without_user_info_or_query_values_anywhere_nor_kept_in_the_state_file() {
    let acd = AcdApi::start().await;
    // Two pages each (7 + 3): the second is read through a signed next link.
    acd.add(1..=10, "2024-05-01T08:00:00Z");
    acd.sign_next_links("&token=nexttoken-1s2t3u");
    acd.echo_requests_in_errors();
    let api = FakeApi::start(KEY).await.unwrap();
    // Every record of `acd-next` becomes a dead letter; every row of `acd-link` is parked
    // (its map names a field the ACD does not send): both keep their origins.
    api.reject_records_containing("support");
    let env = Env::new();
    let port = free_port();
    let secret_file = env.dir.path().join("client-secret");
    std::fs::write(&secret_file, CLIENT.1).unwrap();
    let sources = live_source(
        "next",
        &acd,
        "pagination = \"next_link\"\nnext_pointer = \"/links/next\"",
        &format!(
            "client_secret_file = {:?}",
            secret_file.display().to_string()
        ),
        "queue",
    ) + &live_source(
        "link",
        &acd,
        "pagination = \"link_header\"",
        "client_secret_env = \"ACD_CLIENT_SECRET\"",
        "no_such_field",
    );
    let text = env.config_text(
        &format!("{}/?tenant=apiq-3e4f5g", api.url()),
        "",
        &format!("[listen]\naddress = \"127.0.0.1:{port}\"\n\n{sources}"),
    );
    std::fs::write(&env.config_file, text).unwrap();
    let config = env.config_file.as_path();

    // Preview, before the daemon: every row is labelled with where it came from.
    for source in ["acd-next", "acd-link"] {
        for json in [false, true] {
            let mut args = vec!["preview", "--source", source];
            if json {
                args.push("--json");
            }
            let (_, out) = run(config, &args);
            assert!(out.contains("/calls?"), "{args:?} labels its rows: {out}");
            assert_no_live_secret(&format!("{args:?}"), &out);
        }
    }

    let log = env.dir.path().join("daemon.log");
    let mut daemon = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_injixo-sync"))
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("RUST_LOG", "debug")
            .env("ACD_CLIENT_SECRET", CLIENT.1)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let logged = |what: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(what)
    };
    wait_for(
        Duration::from_secs(60),
        "10 dead letters and 10 parked rows, half of each from a second page",
        || {
            env.try_report()
                .is_some_and(|r| r.dead.len() >= 10 && r.parked.len() >= 10)
        },
    )
    .await;
    daemon.assert_running();

    // An error page quoting the request (path and query) is reported, without the query.
    acd.fail_next(&[404]);
    wait_for(Duration::from_secs(30), "the 404 reported", || {
        logged("404 Not Found")
    })
    .await;
    // A next link that is not a URL fails every poll from now on: a problem for `status`.
    acd.next_link_instead(Some("http://[::1/calls?token=badlink-4v5w6x"));
    wait_for(
        Duration::from_secs(30),
        "both sources' polls failing",
        || {
            env.try_report().is_some_and(|r| {
                r.sources
                    .iter()
                    .filter(|s| s.problems.iter().any(|p| p.message.contains("next")))
                    .count()
                    == 2
            })
        },
    )
    .await;

    let report = env.report();
    for d in &report.dead {
        assert!(d.origin.contains("/next/calls?"), "{d:?}");
    }
    assert!(
        report
            .dead
            .iter()
            .any(|d| d.origin.contains("token=***") && d.origin.contains(" page 2 ")),
        "a dead letter from the second page names its parameters: {:?}",
        report.dead
    );
    let client = reqwest::Client::new();
    for path in ["/metrics", "/readyz"] {
        let text = client
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_no_live_secret(path, &text);
    }
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["dead", "list"],
        vec!["check"],
        vec!["check", "--offline"],
        vec!["queues"],
        vec!["agents"],
        vec!["send-test", "--type", "contact-event"],
    ] {
        let (_, out) = run(config, &args);
        assert_no_live_secret(&format!("{args:?}"), &out);
    }
    let (_, status) = run(config, &["status"]);
    assert!(
        status.contains("api_key=***") && status.contains("is not a URL"),
        "status names the parameters and the problem: {status}"
    );

    daemon.terminate();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("source=acd-link"), "{log}");
    assert_no_live_secret("the log", &log);
    assert_state_files_hold_no_secret(&env.state, LIVE);
    // Compressed records are searched decoded, through SQLite.
    for row in injixo_sync::outbox::rows_read(&env.state, 1000).unwrap() {
        assert_no_live_secret("a stored origin", &row.origin);
    }
}

#[test]
fn a_url_that_does_not_parse_is_named_without_its_secrets() {
    let env = Env::new();
    let text = env.config_text(
        "http://ann:apipw-1q2w@[::1/v1?api_key=apikey-3e4r",
        "proxy = \"http://bob:proxypw-5t6y@[::1:3128?key=proxykey-7u8i\"",
        "[[source]]\nname = \"acd\"\ntype = \"http\"\nintegration_id = 1\n\
         emits = \"contact_events\"\nevery = \"1m\"\n\
         url = \"http://carl:srcpw-9o0p@[::1/calls?api_key=srckey-1a2s&since={cursor}\"\n\
         records = \"/data\"\nauth = \"oauth2\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
         token_url = \"http://dan:tokpw-3d4f@[::1/token?k=tokkey-5g6h\"\n\
         [source.map]\ntimestamp = \"t\"\nqueueName = \"q\"\nqueueIdentifier = \"q\"\n\
         channel = { value = \"calls\" }\noffered = { value = true }\nhandled = { value = true }\n\
         duration = \"d\"\n",
    );
    std::fs::write(&env.config_file, text).unwrap();
    let (code, out) = env.check_offline();
    assert_ne!(code, 0, "{out}");
    for key in ["api.url", "api.proxy", "url", "token_url"] {
        assert!(out.contains(key), "names {key}: {out}");
    }
    for secret in [
        "apipw-1q2w",
        "apikey-3e4r",
        "proxypw-5t6y",
        "proxykey-7u8i",
        "srcpw-9o0p",
        "srckey-1a2s",
        "tokpw-3d4f",
        "tokkey-5g6h",
    ] {
        assert!(!out.contains(secret), "shows {secret}: {out}");
    }
}
