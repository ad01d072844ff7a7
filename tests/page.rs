//! The page (`GET /` on the `[listen]` address) as a person sees it: the real binary with
//! several sources, a dead letter, parked rows, a queue name held back, a source that cannot
//! reach its database and a lane the API refuses, opened in headless Chromium; and secrets in
//! every place a secret can be configured, none of which appears on the page, `/status.json`,
//! `/metrics` or `/help`.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use injixo_sync::types::Emits;
use serde_json::Value;
use support::browser::Browser;
use support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Every secret the configuration holds, each in its own place.
const SECRETS: &[&str] = &[
    KEY,
    "PageTok3n-Secret-0001",
    "WebhookTok3n-Secret-0002",
    "DbPassw0rd-Secret-0003",
    "HttpPassw0rd-Secret-0004",
    "QueryKey-Secret-0005",
    "HeaderKey-Secret-0006",
    "Bearer-Secret-0007",
    "UrlPassw0rd-Secret-0008",
    "cloud-user",
];
const PAGE_TOKEN: &str = "PageTok3n-Secret-0001";

fn config(env: &Env, api: &str, port: u16, echo: u16, page_token: bool) -> String {
    let listen_token = if page_token {
        format!("token = {PAGE_TOKEN:?}\n")
    } else {
        String::new()
    };
    format!(
        r#"[api]
url = {api:?}
token = {KEY:?}
linger = "50ms"
retry_initial = "50ms"
retry_max = "400ms"
pause_probe = "300ms"

[state]
path = {state:?}

[listen]
address = "127.0.0.1:{port}"
{listen_token}
{calls}
[[source]]
name = "pushes"
type = "webhook"
integration_id = 1234
emits = "agent_states"
external_system = "ACD"
token = "WebhookTok3n-Secret-0002"
[source.map]
agentIdentifier = "agent"
activityIdentifier = "state"
timestamp = "at"

[[source]]
name = "pbx-db"
type = "sql"
integration_id = 1234
emits = "contact_events"
connection = "postgres://wfm:DbPassw0rd-Secret-0003@127.0.0.1:1/acd"
every = "1s"
query = "SELECT id, queue, started FROM calls"
cursor_column = "started"
initial_cursor = "2024-01-01T00:00:00Z"
key = "{{id}}"
[source.map]
timestamp = "started"
queueName = "queue"
queueIdentifier = "queue"
channel = {{ value = "calls" }}
offered = {{ value = true }}
handled = {{ value = true }}
duration = {{ value = 1 }}

{cloud_a}{cloud_c}{cloud_b}"#,
        state = env.state.display().to_string(),
        cloud_a = http_source(
            "cloud-a",
            &format!(
                "url = \"http://cloud-user:UrlPassw0rd-Secret-0008@127.0.0.1:{echo}/api/calls\
                 ?api_key=QueryKey-Secret-0005\"\n\
                 headers = {{ \"X-Api-Key\" = \"HeaderKey-Secret-0006\" }}"
            )
        ),
        cloud_c = http_source(
            "cloud-c",
            &format!(
                "url = \"http://127.0.0.1:{echo}/v2/calls\"\nauth = \"basic\"\n\
                 username = \"wfm\"\npassword = \"HttpPassw0rd-Secret-0004\""
            )
        ),
        cloud_b = http_source(
            "cloud-b",
            &format!("url = \"http://127.0.0.1:{echo}/calls\"\ntoken = \"Bearer-Secret-0007\"")
        ),
        calls = env.ndjson_source("calls", "drop", ""),
    )
}

/// An `http` contact-events source polled hourly, with `how` (its URL and credentials).
fn http_source(name: &str, how: &str) -> String {
    format!(
        "[[source]]\nname = {name:?}\ntype = \"http\"\nintegration_id = 1234\n\
         emits = \"contact_events\"\nevery = \"1h\"\n{how}\nrecords = \"/calls\"\n\
         key = \"{{id}}\"\n[source.map]\ntimestamp = \"t\"\nqueueName = \"q\"\n\
         queueIdentifier = \"q\"\nchannel = {{ value = \"calls\" }}\n\
         offered = {{ value = true }}\nhandled = {{ value = true }}\nduration = {{ value = 1 }}\n\n"
    )
}

async fn get(url: &str, auth: Option<&str>) -> (u16, String, reqwest::header::HeaderMap) {
    let client = reqwest::Client::new();
    let mut req = client.get(url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let r = req.send().await.expect("daemon answers");
    let headers = r.headers().clone();
    (r.status().as_u16(), r.text().await.unwrap(), headers)
}

fn assert_no_secret(what: &str, text: &str) {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    // The Authorization values built from them, too.
    let derived = [
        b64("wfm:HttpPassw0rd-Secret-0004"),
        b64("cloud-user:UrlPassw0rd-Secret-0008"),
    ];
    for s in SECRETS
        .iter()
        .copied()
        .chain(derived.iter().map(String::as_str))
    {
        assert!(!text.contains(s), "{what} shows the secret {s:?}:\n{text}");
    }
}

/// An API that refuses every request with 401, quoting the whole request (its headers
/// included) in the answer, as some error pages do: its port.
async fn echoing_api() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 16 * 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let body = format!("unauthorized; you sent:\n{request}");
                let answer = format!(
                    "HTTP/1.1 401 Unauthorized\r\ncontent-type: text/plain\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

/// Where the screenshots are kept (a CI artifact).
fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("page-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Sets the viewport to `w` × `h` CSS pixels, whatever the window adds around it.
async fn viewport(b: &Browser, w: u32, h: u32) {
    b.viewport(w, h).await;
    let inner = b
        .run("return [window.innerWidth, window.innerHeight];")
        .await;
    let (iw, ih) = (inner[0].as_u64().unwrap(), inner[1].as_u64().unwrap());
    if (iw, ih) != (w as u64, h as u64) {
        b.viewport(w + (w - iw as u32), h + (h - ih as u32)).await;
    }
    let inner = b
        .run("return [window.innerWidth, window.innerHeight];")
        .await;
    assert_eq!(inner, serde_json::json!([w, h]), "viewport");
}

/// What a person sees, checked in the browser; `label` names the screenshot.
async fn look(b: &Browser, url: &str, w: u32, h: u32, label: &str) -> Value {
    viewport(b, w, h).await;
    b.goto(url).await;
    let seen = b
        .run(
            r#"
            const text = document.body.innerText;
            const q = s => Array.from(document.querySelectorAll(s));
            // WCAG contrast of an element's text against its own background.
            const lum = c => {
              const m = c.match(/\d+(\.\d+)?/g).slice(0, 3).map(Number).map(v => {
                v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
              });
              return 0.2126 * m[0] + 0.7152 * m[1] + 0.0722 * m[2];
            };
            const contrast = e => {
              const s = getComputedStyle(e);
              const [a, b] = [lum(s.color), lum(s.backgroundColor)].sort((x, y) => y - x);
              return (a + 0.05) / (b + 0.05);
            };
            const chartRows = {};
            q('tbody tr').forEach(tr => {
              const th = tr.querySelector('th'); const svg = tr.querySelector('svg.chart');
              if (th && svg) chartRows[th.innerText.trim()] = svg.querySelectorAll('rect').length;
            });
            return {
              text,
              lang: document.documentElement.lang,
              landmarks: ['header', 'nav', 'main', 'footer'].filter(s => q(s).length === 1),
              h1: q('h1').length,
              charts: q('svg.chart').length,
              chartsLabelled: q('svg.chart').every(s => (s.getAttribute('aria-label') || '').length > 20),
              chartRows,
              states: q('.state').map(e => ({text: e.innerText.trim(), contrast: contrast(e)})),
              tablesCaptioned: q('table').every(t => t.querySelector('caption')),
              headersScoped: q('th').every(t => t.getAttribute('scope')),
              commands: q('.cmd code').map(c => c.innerText),
              overflow: document.documentElement.scrollWidth - window.innerWidth,
              smallestText: Math.min(...q('p, td, th, li, code').map(e => parseFloat(getComputedStyle(e).fontSize))),
            };
            "#,
        )
        .await;
    let png = b.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(screenshots().join(format!("{label}.png")), png).unwrap();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_what_flows_what_is_stuck_and_what_to_do_and_no_secret() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    api.reject_records_containing("\"duration\":42,");
    api.refuse_endpoint(Some((Emits::AgentStatuses, 401)));
    let port = free_port();
    let echo = echoing_api().await;
    std::fs::write(&env.config_file, config(&env, &api.url(), port, echo, true)).unwrap();
    let (code, checked) = env.check_offline();
    assert_eq!(code, 0, "{checked}");
    assert_no_secret("check", &checked);
    let log = env.dir.path().join("daemon.log");
    let mut daemon = Process::start_logged(&env.config_file, &log);
    wait_serving(port).await;
    daemon.assert_running();
    let base = format!("http://127.0.0.1:{port}");

    // Records: 60 delivered, one refused (a dead letter), one line that is no JSON (parked),
    // and 21 more queues.
    let queue = |id: u64, q: &str, name: &str| {
        event(id)
            .replace("\"support\"", &format!("{q:?}"))
            .replace("\"Support\"", &format!("{name:?}"))
            + "\n"
    };
    let more: String = (0..21)
        .map(|i| queue(200 + i, &format!("zq{i:02}"), "Old"))
        .collect();
    std::fs::write(
        env.exports.join("a.ndjson"),
        events(1..=60) + &more + "{not json\n",
    )
    .unwrap();
    wait_for(LIMIT, "the first file delivered", || {
        env.try_report()
            .is_some_and(|r| r.lanes.iter().any(|l| l.dead >= 1 && l.pending == 0))
    })
    .await;
    // The same queues under new names: held back (22 groups, the page shows 20).
    let renamed: String = (0..21)
        .map(|i| queue(300 + i, &format!("zq{i:02}"), "New"))
        .collect();
    std::fs::write(
        env.exports.join("b.ndjson"),
        event(100).replace("\"Support\"", "\"Support Team\"") + "\n" + &renamed,
    )
    .unwrap();
    // Agent states pushed: an interval for a lane the API refuses (401: paused).
    let push = reqwest::Client::new()
        .post(format!("{base}/webhook/pushes/WebhookTok3n-Secret-0002"))
        .header("content-type", "application/json")
        .body(
            r#"[{"agent":"a1","state":"ready","at":"2024-05-01T08:00:00Z"},
                {"agent":"a1","state":"break","at":"2024-05-01T08:30:00Z"}]"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(push.status().as_u16(), 200);
    wait_for(LIMIT, "held, paused and a source problem", || {
        env.try_report().is_some_and(|r| {
            r.lanes.iter().map(|l| l.held).sum::<i64>() == 22
                && r.lanes.iter().any(|l| l.health == "paused")
                && ["pbx-db", "cloud-a", "cloud-b", "cloud-c"]
                    .iter()
                    .all(|name| {
                        r.sources
                            .iter()
                            .any(|s| s.name == *name && !s.problems.is_empty())
                    })
        })
    })
    .await;

    // With a [listen] token the page and /status.json ask for it; a browser's login works.
    let (status, _, headers) = get(&format!("{base}/"), None).await;
    assert_eq!(status, 401);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let (status, _, _) = get(&format!("{base}/status.json"), Some("Bearer wrong")).await;
    assert_eq!(status, 401);
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("anyone:{PAGE_TOKEN}"))
    );
    let bearer = format!("Bearer {PAGE_TOKEN}");
    let (status, html, headers) = get(&format!("{base}/"), Some(&basic)).await;
    assert_eq!(status, 200, "{html}");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert_no_secret("the page", &html);
    // The echoing API's answers are there, with what they quoted masked.
    assert!(html.contains("you sent"), "{html}");
    assert!(html.contains("authorization: Basic ***"), "{html}");
    assert!(html.contains("x-api-key: ***"), "{html}");
    for path in ["/status.json", "/help"] {
        let (status, body, _) = get(&format!("{base}{path}"), Some(&bearer)).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_no_secret(path, &body);
    }
    for path in ["/metrics", "/readyz", "/healthz"] {
        let (_, body, _) = get(&format!("{base}{path}"), None).await;
        assert_no_secret(path, &body);
    }
    // Held queue names are counted for monitoring too.
    let (_, metrics, _) = get(&format!("{base}/metrics"), None).await;
    let held = metrics
        .lines()
        .find(|l| l.starts_with("injixo_sync_lane_held_records{endpoint=\"contact_events\""))
        .unwrap_or_else(|| panic!("no held gauge:\n{metrics}"));
    assert!(held.ends_with(" 22"), "{held}");
    let (_, readyz, _) = get(
        &format!("{base}/readyz"),
        Some(&format!("Bearer {PAGE_TOKEN}")),
    )
    .await;
    assert!(readyz.contains("22 contact event(s) held back"), "{readyz}");
    // Without JavaScript (the server's HTML): the parts and the commands are there.
    for part in [
        "Flow",
        "Health",
        "What needs a person",
        "Configuration",
        "Paused",
        "dead retry",
        "parked retry --source=calls --reason=",
        "queues confirm --integration-id=1234 --identifier=support --name='Support Team'",
        "2 more new name(s) held back",
        "pbx-db",
    ] {
        assert!(html.contains(part), "no {part:?} in\n{html}");
    }
    // A page served without the token on loopback answers only to a loopback Host (DNS
    // rebinding); /readyz gives its reasons only to those who may see the page.
    let client = reqwest::Client::new();
    let rebound = client
        .get(format!("{base}/status.json"))
        .header("host", format!("rebind.example:{port}"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status().as_u16(), 200, "with the token, any Host");
    let (status, readyz, _) = get(&format!("{base}/readyz"), None).await;
    assert_eq!(status, 503, "{readyz}");
    assert!(!readyz.contains("pbx-db"), "{readyz}");
    let (_, readyz, _) = get(&format!("{base}/readyz"), Some(&bearer)).await;
    assert!(readyz.contains("pbx-db"), "{readyz}");
    assert_no_secret("/readyz", &readyz);

    // The token taken out (a reload): on loopback the page is open; Chromium opens it.
    std::fs::write(
        &env.config_file,
        config(&env, &api.url(), port, echo, false),
    )
    .unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status();
    wait_for(LIMIT, "the page served without the token", || {
        std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("{base}/"))
            .output()
            .is_ok_and(|o| o.stdout == b"200")
    })
    .await;
    let rebound = reqwest::Client::new()
        .get(format!("{base}/status.json"))
        .header("host", format!("rebind.example:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        rebound.status().as_u16(),
        403,
        "a Host that is not loopback"
    );
    // Samples are taken every 5 s: the first minute's chart has data within that.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let Some(browser) = Browser::start().await else {
        return;
    };
    for (w, h, label) in [(1280, 800, "page-1280x800"), (390, 844, "page-390x844")] {
        let seen = look(&browser, &format!("{base}/"), w, h, label).await;
        let text = seen["text"].as_str().unwrap();
        assert_no_secret("the page in Chromium", text);
        for name in [
            "contact_events #1234",
            "agent_statuses #1234 (ACD)",
            "calls",
            "pushes",
            "pbx-db",
            "cloud-a",
            "cloud-b",
            "cloud-c",
        ] {
            assert!(text.contains(name), "{label}: no {name:?} in\n{text}");
        }
        assert!(text.contains("Paused"), "{label}: {text}");
        assert!(text.contains("1 from calls"), "{label}: {text}");
        assert!(text.contains("Support Team"), "{label}: {text}");
        assert!(
            text.contains("cannot connect") || text.contains("refused"),
            "{label}: {text}"
        );
        let commands: Vec<&str> = seen["commands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        for wanted in [
            "dead retry",
            "parked retry --source=calls",
            "queues confirm",
        ] {
            assert!(
                commands.iter().any(|c| c.contains(wanted)),
                "{label}: no command with {wanted:?}: {commands:?}"
            );
        }
        // Charts: one per source and lane, the busy ones with bars.
        assert!(seen["charts"].as_u64().unwrap() >= 8, "{label}: {seen}");
        assert_eq!(seen["chartsLabelled"], true, "{label}");
        assert!(
            seen["chartRows"]["calls"].as_u64().unwrap() > 0,
            "{label}: {}",
            seen["chartRows"]
        );
        assert!(
            seen["chartRows"]["contact_events #1234"].as_u64().unwrap() > 0,
            "{label}: {}",
            seen["chartRows"]
        );
        // Accessibility basics: language, one of each landmark, one h1, captions and header
        // scopes in tables, every state in words (not colour alone) at AA contrast.
        assert_eq!(seen["lang"], "en");
        assert_eq!(
            seen["landmarks"],
            serde_json::json!(["header", "nav", "main", "footer"])
        );
        assert_eq!(seen["h1"], 1);
        assert_eq!(seen["tablesCaptioned"], true);
        assert_eq!(seen["headersScoped"], true);
        for s in seen["states"].as_array().unwrap() {
            assert!(s["text"].as_str().unwrap().len() > 2, "{label}: {s}");
            assert!(s["contrast"].as_f64().unwrap() >= 4.5, "{label}: {s}");
        }
        // Readable: nothing wider than the screen, no text below 12 px.
        assert!(seen["overflow"].as_i64().unwrap() <= 0, "{label}: {seen}");
        assert!(seen["smallestText"].as_f64().unwrap() >= 12.0, "{label}");
        let errors = browser.console_errors().await;
        assert!(errors.is_empty(), "{label}: console errors {errors:?}");
    }
    // The whole page at 1280 wide, for the README.
    viewport(&browser, 1280, 800).await;
    browser.goto(&format!("{base}/")).await;
    let height = browser
        .run("return document.documentElement.scrollHeight;")
        .await
        .as_u64()
        .unwrap() as u32;
    // As tall as the page, or as tall as Chromium makes a window.
    browser.viewport(1280, height).await;
    std::fs::write(
        screenshots().join("page-1280-full.png"),
        browser.screenshot().await,
    )
    .unwrap();
    // With JavaScript the page refreshes itself (its main part is replaced).
    browser
        .run("document.getElementById('main').dataset.old = 'yes'; return 0;")
        .await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let old = browser
        .run("return document.getElementById('main').dataset.old || null;")
        .await;
    assert_eq!(old, Value::Null, "the page did not refresh itself");
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors after refresh {errors:?}");
    browser.quit().await;
    daemon.terminate();
    assert_no_secret("the log", &std::fs::read_to_string(&log).unwrap());
}

/// `[listen] ui = false` turns the page off; `/status.json` stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_can_be_turned_off() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let port = free_port();
    let config = env.write_config(&format!(
        "{}\n[listen]\naddress = \"127.0.0.1:{port}\"\nui = false\n",
        env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", ""))
    ));
    let daemon = Daemon::start(config);
    wait_serving(port).await;
    let (status, body, _) = get(&format!("http://127.0.0.1:{port}/"), None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("ui = false"), "{body}");
    let (status, _, _) = get(&format!("http://127.0.0.1:{port}/status.json"), None).await;
    assert_eq!(status, 200);
    daemon.stop().await;
}
