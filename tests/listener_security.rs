//! The listener exposed: HTTPS with certificates the tests make (rcgen), rotated on SIGHUP
//! while clients push, mutual TLS, tokens as `Authorization: Bearer` or in the path, signed
//! pushes (HMAC-SHA256, with a signed time against replays), `allow` with and without trusted
//! proxies; and no token, secret or key in the log, `status` or `/metrics`.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use support::*;

const LIMIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "push-token-0123456789abcdef";
const SIGNING: &str = "signing-secret-9876543210";

/// A certificate authority that signs server and client certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for `names`, valid from a day ago for `days`: (cert PEM, key PEM).
    fn sign(&self, names: &[&str], days: i64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(days);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes a pair to `dir`: (cert path, key path).
fn write_pair(dir: &Path, name: &str, pair: &(String, String)) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, &pair.0).unwrap();
    std::fs::write(&key, &pair.1).unwrap();
    (cert, key)
}

fn config(env: &Env, api: &str, port: u16, listen_extra: &str, hook_extra: &str) -> String {
    let token_file = env.dir.path().join("push-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    format!(
        "{}\n[listen]\naddress = \"127.0.0.1:{port}\"\n{listen_extra}\n",
        env.config_text(
            api,
            "",
            &format!(
                "[[source]]\nname = \"acd\"\ntype = \"webhook\"\nintegration_id = 1234\n\
                 emits = \"contact_events\"\ntoken_file = {file:?}\n{hook_extra}\n",
                file = token_file.display().to_string()
            )
        )
    )
}

fn client(ca: &Ca, identity: Option<&(String, String)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_info(true)
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca.pem.as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

fn body(ids: std::ops::Range<u64>) -> String {
    format!("[{}]", ids.map(event).collect::<Vec<_>>().join(","))
}

async fn push(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), String> {
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.map_err(|e| format!("{e:?}"))?;
    Ok((r.status().as_u16(), r.text().await.unwrap_or_default()))
}

/// Pushes until it is answered 200 (a reload just asked for takes a moment), at most 10 s:
/// the last status.
async fn push_until_ok(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> u16 {
    let mut answered = 0;
    for _ in 0..100 {
        answered = push(client, url, headers, body).await.unwrap().0;
        if answered == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    answered
}

/// The DER of the certificate `url` is served with.
async fn served_certificate(client: &reqwest::Client, url: &str) -> Vec<u8> {
    let r = client.get(url).send().await.expect("an answer over TLS");
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("the peer's certificate")
        .to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

async fn wait_https(port: u16) {
    wait_for(LIMIT, "the daemon to serve over HTTPS", || {
        std::process::Command::new("curl")
            .args(["-s", "-k", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("https://127.0.0.1:{port}/healthz"))
            .output()
            .is_ok_and(|o| o.stdout == b"200")
    })
    .await;
}

/// A pair for localhost and 127.0.0.1 signed by `ca`, valid `days`, written as `name`, and
/// the installation's configuration with HTTPS on a free port: the pair, its files, the port.
fn https_config(
    env: &Env,
    api: &FakeApi,
    ca: &Ca,
    name: &str,
    days: i64,
) -> ((String, String), (PathBuf, PathBuf), u16) {
    let pair = ca.sign(&["localhost", "127.0.0.1"], days);
    let (cert, key) = write_pair(env.dir.path(), name, &pair);
    let port = free_port();
    std::fs::write(
        &env.config_file,
        config(
            env,
            &api.url(),
            port,
            &format!("tls_cert = {cert:?}\ntls_key = {key:?}\n"),
            "",
        ),
    )
    .unwrap();
    (pair, (cert, key), port)
}

/// The daemon started with its log, once it serves over HTTPS: it, its log, a client that
/// trusts `ca`, and the base URL.
async fn start_https(env: &Env, ca: &Ca, port: u16) -> (Process, PathBuf, reqwest::Client, String) {
    let log = env.dir.path().join("daemon.log");
    let daemon = Process::start_logged(&env.config_file, &log);
    let https = client(ca, None);
    wait_https(port).await;
    (daemon, log, https, format!("https://127.0.0.1:{port}"))
}

fn sighup(daemon: &Process) {
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_pushes_are_kept_plain_http_is_refused_and_bearer_or_path_tokens_work() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let ca = Ca::new("test CA");
    let (_, _, port) = https_config(&env, &api, &ca, "server", 365);
    let (code, checked) = env.check_offline();
    assert_eq!(code, 0, "{checked}");
    assert!(
        checked.contains("HTTPS with") && checked.contains("localhost, 127.0.0.1"),
        "{checked}"
    );
    let (daemon, log, https, base) = start_https(&env, &ca, port).await;

    // Plain HTTP: answered 400 saying so, nothing kept.
    let (status, text) = push(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{port}/webhook/acd/{TOKEN}"),
        &[],
        &body(900..901),
    )
    .await
    .expect("a plain answer");
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("HTTPS"), "{text}");

    // The token in the path, and as Bearer; a wrong or missing Bearer is 401.
    let (status, text) = push(
        &https,
        &format!("{base}/webhook/acd/{TOKEN}"),
        &[],
        &body(1..3),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    let bearer = format!("Bearer {TOKEN}");
    let (status, text) = push(
        &https,
        &format!("{base}/webhook/acd"),
        &[("authorization", &bearer)],
        &body(3..5),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    for auth in [None, Some("Bearer wrong-token-0123456789ab")] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let (status, text) = push(
            &https,
            &format!("{base}/webhook/acd"),
            &headers,
            &body(700..701),
        )
        .await
        .unwrap();
        assert_eq!(status, 401, "{text}");
    }
    let (status, _) = push(
        &https,
        &format!("{base}/webhook/acd/wrong-token-0123456789ab"),
        &[],
        &body(701..702),
    )
    .await
    .unwrap();
    assert_eq!(status, 404);

    settled(&env).await;
    assert_arrived_once(&api, 1..5);
    assert_eq!(api.record_count(), 4, "nothing refused was kept");

    // /metrics over the same TLS: the certificate's expiry, the refusals counted.
    let metrics = https
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let expiry = sample_value(
        &metrics,
        "injixo_sync_listen_tls_not_after_timestamp_seconds",
    )
    .expect("the expiry gauge");
    let in_days = (expiry - jiff::Timestamp::now().as_second() as f64) / 86_400.0;
    assert!((363.0..366.0).contains(&in_days), "{in_days}");
    assert_eq!(
        sample_value(
            &metrics,
            r#"injixo_sync_webhook_refused_total{source="acd",reason="token"}"#
        ),
        Some(3.0),
        "{metrics}"
    );
    let (_, status_out) = cli(&[
        "--config",
        env.config_file.to_str().unwrap(),
        "status",
        "--json",
    ]);
    drop(daemon);
    let logged = std::fs::read_to_string(&log).unwrap();
    for text in [&metrics, &status_out, &logged, &checked] {
        assert!(!text.contains(TOKEN), "the token shown:\n{text}");
        assert!(!text.contains("PRIVATE KEY"), "the key shown:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_an_expired_or_mismatched_pair_and_warns_before_expiry() {
    let env = Env::new();
    let ca = Ca::new("test CA");
    let dir = env.dir.path();
    let run = |cert: &Path, key: &Path| {
        std::fs::write(
            &env.config_file,
            config(
                &env,
                "http://127.0.0.1:9",
                free_port(),
                &format!("tls_cert = {cert:?}\ntls_key = {key:?}\n"),
                "",
            ),
        )
        .unwrap();
        env.check_offline()
    };
    let (cert, key) = write_pair(dir, "expired", &ca.sign(&["localhost"], -2));
    let (code, out) = run(&cert, &key);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("expired on"), "{out}");
    let (cert, _) = write_pair(dir, "one", &ca.sign(&["localhost"], 90));
    let (_, other_key) = write_pair(dir, "two", &ca.sign(&["localhost"], 90));
    let (code, out) = run(&cert, &other_key);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not belong to the certificate"), "{out}");
    assert!(!out.contains("PRIVATE KEY"), "{out}");
    let (code, out) = run(&cert, &dir.join("missing.key"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot read [listen] tls_key"), "{out}");
    let (cert, key) = write_pair(dir, "soon", &ca.sign(&["sync.example.com"], 20));
    let (code, out) = run(&cert, &key);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("expires in 19 day(s)") || out.contains("expires in 20 day(s)"),
        "{out}"
    );
    assert!(out.contains("sync.example.com"), "{out}");
}

/// A certificate rotated on disk is served after SIGHUP while 20 clients push: every push
/// acknowledged arrives once, none is answered 5xx; a bad pair on reload is refused and the
/// running one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_after_a_reload_while_20_clients_push() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let ca = Ca::new("test CA");
    let (first, (_, key), port) = https_config(&env, &api, &ca, "server", 30);
    let (daemon, log, https, base) = start_https(&env, &ca, port).await;
    assert_eq!(
        served_certificate(&https, &format!("{base}/healthz")).await,
        der_of(&first.0)
    );

    let stop = tokio_util::sync::CancellationToken::new();
    let mut pushers = tokio::task::JoinSet::new();
    for p in 0..20u64 {
        let (https, stop) = (https.clone(), stop.clone());
        let url = format!("{base}/webhook/acd");
        pushers.spawn(async move {
            let bearer = format!("Bearer {TOKEN}");
            let (mut acked, mut server_errors, mut retries) = (Vec::new(), Vec::new(), 0);
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let ids = (p * 1_000_000 + n)..(p * 1_000_000 + n + 3);
                n += 3;
                let key = format!("client-{p}-push-{n}");
                // Sent until it is answered 200, under its key: a connection closed under
                // it is sent again.
                loop {
                    match push(
                        &https,
                        &url,
                        &[("authorization", &bearer), ("idempotency-key", &key)],
                        &body(ids.clone()),
                    )
                    .await
                    {
                        Ok((200, _)) => {
                            acked.extend(ids.clone());
                            break;
                        }
                        Ok((s, text)) if s >= 500 => server_errors.push(format!("{s}: {text}")),
                        Ok((s, text)) => panic!("push answered {s}: {text}"),
                        Err(_) => retries += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            (acked, server_errors, retries)
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Rotated on disk, then a reload.
    let second = ca.sign(&["localhost", "127.0.0.1"], 365);
    write_pair(env.dir.path(), "server", &second);
    sighup(&daemon);
    wait_for(LIMIT, "the new certificate served", || {
        std::process::Command::new("curl")
            .args(["-s", "-k", "-o", "/dev/null", "-w", "%{ssl_verify_result}"])
            .arg(format!("{base}/healthz"))
            .output()
            .is_ok()
            && generations_started(&log) == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        served_certificate(&https, &format!("{base}/healthz")).await,
        der_of(&second.0)
    );
    // A key that does not match: the reload is refused, the running pair stays.
    let (_, other_key) = write_pair(env.dir.path(), "other", &ca.sign(&["localhost"], 90));
    std::fs::copy(&other_key, &key).unwrap();
    sighup(&daemon);
    wait_for(LIMIT, "the reload refused", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("does not belong to the certificate")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        served_certificate(&https, &format!("{base}/healthz")).await,
        der_of(&second.0)
    );
    stop.cancel();
    let (mut acked, mut errors, mut retries) = (Vec::new(), Vec::new(), 0);
    while let Some(r) = pushers.join_next().await {
        let (a, e, n) = r.unwrap();
        acked.extend(a);
        errors.extend(e);
        retries += n;
    }
    settled(&env).await;
    eprintln!(
        "acknowledged {} records, connections closed under a push and sent again: {retries}",
        acked.len()
    );
    assert!(errors.is_empty(), "answered 5xx: {errors:?}");
    assert!(acked.len() > 100, "{}", acked.len());
    let got = arrivals(&api);
    for id in &acked {
        assert_eq!(got.get(id), Some(&1), "record {id}");
    }
    assert_eq!(got.len(), acked.len(), "records nobody acknowledged");
    assert_eq!(
        generations_started(&log),
        2,
        "the bad pair started no generation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_asks_for_a_client_certificate_signed_by_the_client_ca() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    let strangers = Ca::new("another CA");
    let (cert, key) = write_pair(env.dir.path(), "server", &ca.sign(&["127.0.0.1"], 90));
    let client_ca = env.dir.path().join("clients.crt");
    std::fs::write(&client_ca, &clients.pem).unwrap();
    let port = free_port();
    std::fs::write(
        &env.config_file,
        config(
            &env,
            &api.url(),
            port,
            &format!("tls_cert = {cert:?}\ntls_key = {key:?}\ntls_client_ca = {client_ca:?}\n"),
            "",
        ),
    )
    .unwrap();
    let _daemon = Process::start(&env.config_file);
    let url = format!("https://127.0.0.1:{port}/webhook/acd/{TOKEN}");
    let good = client(&ca, Some(&clients.sign(&["acd-sender"], 30)));
    wait_for(LIMIT, "the daemon to serve", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    let mut answered = None;
    for _ in 0..200 {
        if let Ok(r) = push(&good, &url, &[], &body(1..2)).await {
            answered = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered.map(|a| a.0), Some(200));
    for (what, c) in [
        ("no client certificate", client(&ca, None)),
        (
            "one from another CA",
            client(&ca, Some(&strangers.sign(&["x"], 30))),
        ),
    ] {
        let r = push(&c, &url, &[], &body(500..501)).await;
        assert!(r.is_err(), "{what}: answered {r:?}");
    }
    settled(&env).await;
    assert_arrived_once(&api, 1..2);
    assert_eq!(api.record_count(), 1);
}

fn hmac_hex(secret: &str, data: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::sign(&key, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A signed push is kept; a bad, missing and replayed signature is refused (401) with nothing
/// kept, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_pushes_are_checked_before_anything_is_kept() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let secret_file = env.dir.path().join("signing");
    std::fs::write(&secret_file, SIGNING).unwrap();
    let port = free_port();
    std::fs::write(
        &env.config_file,
        config(
            &env,
            &api.url(),
            port,
            "",
            &format!(
                "signature = \"hmac-sha256\"\nsignature_header = \"X-Signature\"\n\
                 signature_secret_file = {secret_file:?}\nsignature_timestamp_header = \"X-Timestamp\"\n\
                 signature_max_age = \"5m\"\n"
            ),
        ),
    )
    .unwrap();
    let log = env.dir.path().join("daemon.log");
    let daemon = Process::start_logged(&env.config_file, &log);
    wait_serving(port).await;
    let url = format!("http://127.0.0.1:{port}/webhook/acd/{TOKEN}");
    let http = reqwest::Client::new();
    let now = jiff::Timestamp::now().as_second();
    let signed = |ts: i64, b: &str| hmac_hex(SIGNING, format!("{ts}.{b}").as_bytes());

    let b = body(1..3);
    let (ts, sig) = (now.to_string(), format!("sha256={}", signed(now, &b)));
    let (status, text) = push(
        &http,
        &url,
        &[("x-timestamp", &ts), ("x-signature", &sig)],
        &b,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");

    // The same signed push replayed under other Idempotency-Keys (which are not signed):
    // recognised as sent before, kept once.
    for key in ["replay-1", "replay-2"] {
        let (status, text) = push(
            &http,
            &url,
            &[
                ("x-timestamp", &ts),
                ("x-signature", &sig),
                ("idempotency-key", key),
            ],
            &body(1..3),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("\"kept\":0"), "{text}");
    }

    let b = body(100..101);
    let old = now - 3600;
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("no signature", vec![("x-timestamp", now.to_string())]),
        (
            "a signature of another body",
            vec![
                ("x-timestamp", now.to_string()),
                ("x-signature", signed(now, &body(1..3))),
            ],
        ),
        (
            "a signature with the wrong secret",
            vec![
                ("x-timestamp", now.to_string()),
                (
                    "x-signature",
                    hmac_hex("guess", format!("{now}.{b}").as_bytes()),
                ),
            ],
        ),
        (
            "a replay an hour later",
            vec![
                ("x-timestamp", old.to_string()),
                ("x-signature", signed(old, &b)),
            ],
        ),
        ("no timestamp", vec![("x-signature", signed(now, &b))]),
    ];
    for (what, headers) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, text) = push(&http, &url, &h, &b).await.unwrap();
        assert_eq!(status, 401, "{what}: {text}");
        assert!(text.contains("nothing was kept"), "{what}: {text}");
    }
    settled(&env).await;
    assert_arrived_once(&api, 1..3);
    assert_eq!(api.record_count(), 2, "nothing refused was kept");
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = |reason: &str| {
        sample_value(
            &metrics,
            &format!(r#"injixo_sync_webhook_refused_total{{source="acd",reason="{reason}"}}"#),
        )
    };
    assert_eq!(refused("signature"), Some(3.0), "{metrics}");
    assert_eq!(refused("timestamp"), Some(2.0), "{metrics}");
    drop(daemon);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        !logged.contains(SIGNING) && !logged.contains(TOKEN),
        "{logged}"
    );
}

/// `allow` refuses other addresses before the body is read (403); behind a trusted proxy the
/// address it forwards is the one checked, from anyone else `X-Forwarded-For` is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_checks_the_client_address_believing_only_trusted_proxies() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let port = free_port();
    let run = |trusted: &str| {
        std::fs::write(
            &env.config_file,
            config(
                &env,
                &api.url(),
                port,
                trusted,
                "allow = [\"203.0.113.0/24\", \"2001:db8::/32\"]\n",
            ),
        )
        .unwrap();
    };
    run("");
    let log = env.dir.path().join("daemon.log");
    let daemon = Process::start_logged(&env.config_file, &log);
    wait_serving(port).await;
    let url = format!("http://127.0.0.1:{port}/webhook/acd/{TOKEN}");
    let http = reqwest::Client::new();
    let from = |xff: &'static str| [("x-forwarded-for", xff)];
    // Loopback is not allowed, and without trusted proxies the header is not believed.
    let (status, text) = push(&http, &url, &[], &body(900..901)).await.unwrap();
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");
    let (status, _) = push(&http, &url, &from("203.0.113.9"), &body(901..902))
        .await
        .unwrap();
    assert_eq!(status, 403);

    // Loopback as a trusted proxy: what it forwards is checked.
    run("trusted_proxies = [\"127.0.0.1\"]\n");
    sighup(&daemon);
    wait_for(LIMIT, "the reload", || generations_started(&log) == 2).await;
    assert_eq!(
        push_until_ok(&http, &url, &from("203.0.113.9"), &body(1..3)).await,
        200
    );
    // A client cannot smuggle an allowed address left of its own.
    let (status, text) = push(
        &http,
        &url,
        &from("203.0.113.9, 198.51.100.4"),
        &body(902..903),
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("198.51.100.4"), "{text}");
    // Only the header chosen is read: Forwarded, by default, is not.
    let forwarded = [("forwarded", "for=\"[2001:db8::7]:4711\"")];
    let (status, _) = push(&http, &url, &forwarded, &body(903..904))
        .await
        .unwrap();
    assert_eq!(status, 403);
    run("trusted_proxies = [\"127.0.0.1\"]\nforwarded_header = \"forwarded\"\n");
    sighup(&daemon);
    wait_for(LIMIT, "the reload", || generations_started(&log) == 3).await;
    assert_eq!(
        push_until_ok(&http, &url, &forwarded, &body(3..4)).await,
        200
    );
    let (status, _) = push(&http, &url, &from("203.0.113.9"), &body(904..905))
        .await
        .unwrap();
    assert_eq!(status, 403, "X-Forwarded-For is not read then");
    settled(&env).await;
    assert_arrived_once(&api, 1..4);
    assert_eq!(api.record_count(), 3);
}

/// The nginx configuration docs/operations.md gives, run in front of the daemon: pushes reach
/// `/webhook/` over its TLS, nothing else is exposed, and `allow` checks the sender's address
/// that nginx forwards (believed because `trusted_proxies` names nginx).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_the_documented_nginx_configuration_allow_checks_the_sender() {
    if !require(
        "nginx",
        has_program("nginx", "-v"),
        "apt-get install nginx-light",
    ) {
        return;
    }
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let ca = Ca::new("test CA");
    let (cert, key) = write_pair(env.dir.path(), "proxy", &ca.sign(&["127.0.0.1"], 90));
    let port = free_port();
    std::fs::write(
        &env.config_file,
        config(
            &env,
            &api.url(),
            port,
            "trusted_proxies = [\"127.0.0.1\"]\n",
            "allow = [\"127.0.0.2\"]\n",
        ),
    )
    .unwrap();
    let _daemon = Process::start(&env.config_file);
    wait_serving(port).await;

    // The documented server block, with this test's addresses and files.
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"))
            .unwrap();
    let block = docs
        .split("```nginx\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/operations.md has an nginx block");
    let nginx_port = free_port();
    let server = block
        .replace(
            "listen 443 ssl;",
            &format!("listen 127.0.0.1:{nginx_port} ssl;"),
        )
        .replace(
            "/etc/letsencrypt/live/sync.example.com/fullchain.pem",
            cert.to_str().unwrap(),
        )
        .replace(
            "/etc/letsencrypt/live/sync.example.com/privkey.pem",
            key.to_str().unwrap(),
        )
        .replace("http://127.0.0.1:9850", &format!("http://127.0.0.1:{port}"));
    assert_ne!(server, block);
    let dir = env.dir.path().join("nginx");
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{server}\n}}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let mut nginx = std::process::Command::new("nginx")
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start nginx");
    struct Stop<'a>(&'a mut std::process::Child);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _stop = Stop(&mut nginx);
    wait_for(LIMIT, "nginx to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", nginx_port)).is_ok()
    })
    .await;

    let from = |ip: &str| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .local_address(Some(ip.parse().unwrap()))
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca.pem.as_bytes()).unwrap())
            .build()
            .unwrap()
    };
    let proxied = format!("https://127.0.0.1:{nginx_port}");
    let bearer = format!("Bearer {TOKEN}");
    // The allowed sender, through nginx.
    let (status, text) = push(
        &from("127.0.0.2"),
        &format!("{proxied}/webhook/acd"),
        &[("authorization", &bearer)],
        &body(1..3),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    // Another sender that writes the allowed address into X-Forwarded-For itself.
    let (status, text) = push(
        &from("127.0.0.3"),
        &format!("{proxied}/webhook/acd"),
        &[("authorization", &bearer), ("x-forwarded-for", "127.0.0.2")],
        &body(900..901),
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("127.0.0.3"), "{text}");
    // Or into Forwarded, which nginx does not pass on and the daemon does not read.
    let (status, text) = push(
        &from("127.0.0.3"),
        &format!("{proxied}/webhook/acd"),
        &[("authorization", &bearer), ("forwarded", "for=127.0.0.2")],
        &body(901..902),
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{text}");
    // Nothing else is exposed.
    for path in ["/", "/status.json", "/metrics", "/healthz"] {
        let r = from("127.0.0.2")
            .get(format!("{proxied}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path}");
    }
    settled(&env).await;
    assert_arrived_once(&api, 1..3);
    assert_eq!(api.record_count(), 2);
}
