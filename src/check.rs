//! `injixo-sync check`: validates the configuration and the environment it needs, and lists
//! every problem with the key or path it concerns. Exit status 0 only when nothing is wrong.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{After, Config, SourceKind};
use crate::outbox::{self, OutboxError};
use crate::push::ApiClient;

pub fn main(config_path: &Path, offline: bool) -> anyhow::Result<ExitCode> {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut problems = Vec::new();
    let mut ok = Vec::new();
    ok.push(format!("configuration {} is valid", config_path.display()));
    // One runtime for every network check (databases, then the API); none when offline.
    let rt = if offline {
        None
    } else {
        Some(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        )
    };
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }

    // Writable first: reading a WAL database needs its -shm file, which a read-only folder
    // keeps SQLite from making.
    match outbox::writable(&config.state.path).and_then(|()| outbox::verify(&config.state.path)) {
        Ok(()) => {
            ok.push(format!(
                "state file {} is intact (integrity check passed) and writable",
                config.state.path.display()
            ));
            // SQLite's check passes over damage inside a record's bytes; the outbox knows.
            match outbox::lane_depths(&config.state.path, 1) {
                Ok(lanes) => {
                    let damaged: i64 = lanes.iter().map(|d| d.damaged).sum();
                    if damaged > 0 {
                        problems.push(format!(
                            "state file {}: {damaged} damaged record(s) cannot be decoded and \
                             were set aside as dead letters (their lanes go on without them): \
                             `injixo-sync dead list` shows them and why; keep a copy of the \
                             state file for a closer look if you want one, then give them up \
                             with `injixo-sync dead drop ID`",
                            config.state.path.display()
                        ));
                    }
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        Err(OutboxError::Missing(p)) => {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
            let dir = dir.unwrap_or(Path::new("."));
            match writable_dir(dir) {
                Ok(()) if dir.exists() => ok.push(format!(
                    "state file {} does not exist yet: `run` creates it",
                    p.display()
                )),
                Ok(()) => ok.push(format!(
                    "state file {} does not exist yet: `run` creates it, and its folder {}",
                    p.display(),
                    dir.display()
                )),
                Err(e) => problems.push(format!("[state] path {}: {e}", p.display())),
            }
        }
        Err(e) => problems.push(e.to_string()),
    }

    match config.api.token.load() {
        Ok(_) => ok.push(format!("API key found in {}", config.api.token.describe())),
        Err(e) => problems.push(e.to_string()),
    }
    if let Some(listen) = &config.listen {
        let pushes = config
            .sources
            .iter()
            .any(|s| matches!(s.kind, SourceKind::Webhook(_)));
        if listen.tls.is_none() && !listen.address.ip().is_loopback() && pushes {
            eprintln!(
                "warning: [listen] address {} is not loopback and speaks plain HTTP: pushes \
                 and their tokens cross the network in clear text. Set tls_cert and tls_key, \
                 or listen on loopback behind a reverse proxy with TLS",
                listen.address
            );
        }
        if let Some(files) = &listen.tls {
            let now = crate::outbox::now_ms().div_euclid(1000);
            match crate::tls::load(files, now) {
                Ok(t) => {
                    ok.push(format!(
                        "[listen] HTTPS with {} (for {}), valid {} more day(s){}",
                        files.cert.display(),
                        t.names.join(", "),
                        t.days_left(now),
                        if files.client_ca.is_some() {
                            "; clients must present a certificate signed by tls_client_ca"
                        } else {
                            ""
                        }
                    ));
                    if let Some(w) = t.expiry_warning(files, now) {
                        eprintln!("warning: {w}");
                    }
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        let page = if listen.ui { "the page (/) and " } else { "" };
        match &listen.token {
            Some(t) => match crate::server::page_token(t) {
                Ok(_) => ok.push(format!(
                    "[listen] {page}/status.json ask for the token in {}",
                    t.from.describe_as(&t.key)
                )),
                Err(e) => problems.push(e.to_string()),
            },
            None if listen.address.ip().is_loopback() => ok.push(format!(
                "[listen] {page}/status.json are served on {} (loopback) without a token",
                listen.address
            )),
            None => ok.push(format!(
                "[listen] {page}/status.json are refused on {} (not loopback) until \
                 [listen] token_file is set; reach them through an SSH tunnel",
                listen.address
            )),
        }
    }

    for s in &config.sources {
        match &s.kind {
            SourceKind::Files(f) => {
                if !f.path.is_dir() {
                    problems.push(format!(
                        "source {:?}: path {} is not a directory (the daemon would wait for it)",
                        s.name.as_str(),
                        f.path.display()
                    ));
                } else if let Err(e) = std::fs::read_dir(&f.path) {
                    problems.push(format!(
                        "source {:?}: cannot list {}: {e}",
                        s.name.as_str(),
                        f.path.display()
                    ));
                } else {
                    ok.push(format!(
                        "source {:?}: {} is readable",
                        s.name.as_str(),
                        f.path.display()
                    ));
                }
                if let After::Move(dir) = &f.after
                    && let Err(e) = writable_dir(dir)
                {
                    problems.push(format!(
                        "source {:?}: archive_dir {}: {e}",
                        s.name.as_str(),
                        dir.display()
                    ));
                }
            }
            SourceKind::Webhook(w) => {
                match crate::sources::webhook::WebhookSource::new(&s.name, w.clone()) {
                    Ok(_) => ok.push(format!(
                        "source {:?}: receives pushes at /webhook/{}/<{}>",
                        s.name.as_str(),
                        s.name.as_str(),
                        w.token.from.describe_as(&w.token.key)
                    )),
                    Err(e) => problems.push(format!("source {:?}: {e}", s.name.as_str())),
                }
            }
            SourceKind::Sql(_) | SourceKind::Http(_) => {}
        }
        for secret in s.kind.secrets() {
            match secret.load() {
                Ok(_) => ok.push(format!(
                    "source {:?}: {} is set",
                    s.name.as_str(),
                    secret.from.describe_as(&secret.key)
                )),
                Err(e) => problems.push(format!("source {:?}: {e}", s.name.as_str())),
            }
        }
        if let (SourceKind::Sql(sql), Some(rt)) = (&s.kind, &rt) {
            match rt.block_on(crate::sources::sql::connect(sql)) {
                Ok(_) => ok.push(format!(
                    "source {:?}: the database answers",
                    s.name.as_str()
                )),
                // Said above, with the other secrets.
                Err(crate::sources::sql::ConnectError::Secret(_)) => {}
                Err(
                    e @ (crate::sources::sql::ConnectError::Failed { .. }
                    | crate::sources::sql::ConnectError::NoAnswer { .. }),
                ) => problems.push(format!(
                    "source {:?}: cannot connect to the database: {e} (pass --offline to skip)",
                    s.name.as_str()
                )),
                Err(e) => problems.push(format!("source {:?}: {e}", s.name.as_str())),
            }
        }
    }

    // What is neither fine nor a problem: an answer that says less than `ok`.
    let mut notes = Vec::new();
    if let Some(rt) = &rt {
        match reachability(rt, &config, &mut notes) {
            Ok(lines) => ok.extend(lines),
            Err(e) => problems.push(e),
        }
    }

    for line in &ok {
        println!("ok: {line}");
    }
    for line in &notes {
        println!("note: {line}");
    }
    for p in &problems {
        println!("problem: {p}");
    }
    if problems.is_empty() {
        println!(
            "next: {}start the daemon (`injixo-sync --config {} run`, or the service: \
             `systemctl start injixo-sync`, `sc start injixo-sync`); `injixo-sync status` \
             shows what it reads and delivers",
            if offline {
                "`check` without --offline tries the API key and the databases; then "
            } else {
                ""
            },
            config_path.display()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} problem(s) found", problems.len());
        Ok(ExitCode::FAILURE)
    }
}

/// Whether this user may make files in `dir`, or (where it does not exist yet) make it: the
/// nearest folder above it that exists must be writable.
fn writable_dir(dir: &Path) -> Result<(), String> {
    let mut existing = dir;
    while !existing.exists() {
        existing = match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
    }
    let probe = existing.join(format!(".injixo-sync-check-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| {
            if existing == dir {
                format!("{} is not writable: {e}", dir.display())
            } else {
                format!(
                    "{} does not exist, and {} (where it would be made) is not writable: {e}",
                    dir.display(),
                    existing.display()
                )
            }
        })
}

/// Sends each lane an empty batch (it imports nothing) and tells apart, by the answer, a key
/// that works from a wrong key, a configuration id the key may not import into, a wrong URL
/// and an API that cannot be reached.
fn reachability(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    notes: &mut Vec<String>,
) -> Result<Vec<String>, String> {
    use crate::push::classify::Attempt;
    let client = ApiClient::new(&config.api).map_err(|e| e.to_string())?;
    let url = crate::redact::url(&config.api.url);
    let mut ok = Vec::new();
    for lane in config.lanes() {
        let id = lane.integration_id;
        let said = |body: &str| crate::text::excerpt(body.as_bytes());
        match rt.block_on(client.probe(&lane)) {
            Attempt::Answered { status, .. } if (200..300).contains(&status) => ok.push(format!(
                "API {url}: an empty test batch for {lane} was accepted (HTTP {status}): the \
                 key and configuration id {id} are right"
            )),
            Attempt::Answered {
                status: 401, body, ..
            } => {
                return Err(format!(
                    "API {url} refused the API key (HTTP 401: {}): it is wrong, or was \
                     regenerated or its integration deleted in injixo. Generate a key \
                     (Integrations > injixo API) and write it to {}",
                    said(&body),
                    config.api.token.describe()
                ));
            }
            Attempt::Answered {
                status: 403, body, ..
            } => {
                return Err(format!(
                    "API {url} took the key but refused configuration id {id} for {lane} \
                     (HTTP 403: {}): check integration_id against the configuration id on the \
                     integration's tile in injixo",
                    said(&body)
                ));
            }
            Attempt::Answered {
                status: 404, body, ..
            } => {
                return Err(format!(
                    "{url} answered 404 Not Found for {} ({}): check api.url (default \
                     https://api.injixo.com) and api.proxy / HTTPS_PROXY",
                    lane.emits.endpoint(),
                    said(&body)
                ));
            }
            // The key passed (a wrong one is 401, a configuration id it may not use 403); the
            // API's checks refused the empty batch itself, so whether configuration id `id`
            // takes records shows only at the first delivery.
            Attempt::Answered { status, body, .. } if status == 400 || status == 422 => {
                notes.push(format!(
                    "API {url} took the key and checked an empty test batch for {lane}, which it \
                     refused as a batch (HTTP {status}{}): nothing was imported. Whether \
                     configuration id {id} takes records shows at the first delivery: \
                     `injixo-sync status` after the daemon has sent some",
                    reason(&body)
                        .map(|r| format!(", saying {r:?}"))
                        .unwrap_or_default()
                ))
            }
            Attempt::Answered { status, body, .. } => {
                return Err(format!(
                    "API {url} answered HTTP {status} to an empty test batch for {lane}: {} \
                     (it may be busy or down; try again)",
                    said(&body)
                ));
            }
            Attempt::NotSent(e) | Attempt::Unknown(e) => {
                return Err(format!(
                    "cannot reach the API at {url}: {e}. Check api.url, api.proxy / \
                     HTTPS_PROXY and the firewall (pass --offline to skip)"
                ));
            }
        }
    }
    Ok(ok)
}

/// What an API's error answer says, in a few words: the `message`, `detail` or `title` of a
/// JSON body, or of its `error` (or its `errors`' first), else its text; cut short, query
/// values masked (`text::excerpt`).
fn reason(body: &str) -> Option<String> {
    fn pick(v: &serde_json::Value) -> Option<String> {
        if let Some(m) = ["message", "detail", "title"]
            .iter()
            .find_map(|k| v.get(k)?.as_str())
        {
            return Some(m.to_owned());
        }
        match v.get("error") {
            Some(serde_json::Value::String(s)) => return Some(s.clone()),
            Some(e @ serde_json::Value::Object(_)) => return pick(e),
            _ => {}
        }
        pick(v.get("errors")?.as_array()?.first()?)
    }
    let text = body.trim();
    if text.is_empty() {
        return None;
    }
    let said = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| pick(&v));
    Some(crate::text::excerpt(
        said.as_deref().unwrap_or(text).as_bytes(),
    ))
}
