//! No configured secret appears in a log line (at debug level), in `check`, `status`,
//! `/metrics`, `/readyz`, or in the configuration's `Debug` output, whatever goes wrong: the
//! API, its proxy, an `http` source and a database all unreachable, their URLs carrying
//! passwords and keys.

mod support;

use std::time::Duration;

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
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert_no_secret("the log", &std::fs::read_to_string(&log).unwrap());

    // The configuration's Debug output, with secrets written inline as well.
    let inline = config(&env, port).replace(
        &format!("token_file = {:?}", env.key_file.display().to_string()),
        "token = \"inlinekey-4x5y6z\"",
    );
    let config = injixo_sync::config::Config::parse(&inline, &env.config_file).unwrap();
    assert_no_secret("Config's Debug", &format!("{config:?}"));
    assert_no_secret("Config's pretty Debug", &format!("{config:#?}"));
}
