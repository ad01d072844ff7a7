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
        Ok(()) => ok.push(format!(
            "state file {} is intact (integrity check passed) and writable",
            config.state.path.display()
        )),
        Err(OutboxError::Missing(p)) => {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
            match writable_dir(dir.unwrap_or(Path::new("."))) {
                Ok(()) => ok.push(format!("state file {} will be created", p.display())),
                Err(e) => problems.push(format!("[state] path {}: {e}", p.display())),
            }
        }
        Err(e) => problems.push(e.to_string()),
    }

    match config.api.token.load() {
        Ok(_) => ok.push(format!("API key found in {}", config.api.token.describe())),
        Err(e) => problems.push(e),
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
                Err(e) => problems.push(format!(
                    "source {:?}: cannot connect to the database: {e} (pass --offline to skip)",
                    s.name.as_str()
                )),
            }
        }
    }

    if let Some(rt) = &rt {
        match reachability(rt, &config) {
            Ok(line) => ok.push(line),
            Err(e) => problems.push(e),
        }
    }

    for line in &ok {
        println!("ok: {line}");
    }
    for p in &problems {
        println!("problem: {p}");
    }
    if problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} problem(s) found", problems.len());
        Ok(ExitCode::FAILURE)
    }
}

fn writable_dir(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        return match dir.parent() {
            Some(parent) if parent.exists() => writable_dir(parent),
            _ => Err(format!("{} does not exist", dir.display())),
        };
    }
    let probe = dir.join(format!(".injixo-sync-check-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| format!("{} is not writable: {e}", dir.display()))
}

/// Connects to the API (through any proxy) and reports how it answered.
fn reachability(rt: &tokio::runtime::Runtime, config: &Config) -> Result<String, String> {
    let client = ApiClient::new(&config.api)?;
    match rt.block_on(client.probe()) {
        Ok(status) => Ok(format!(
            "API {} reachable (answered HTTP {status})",
            crate::redact::url(&config.api.url)
        )),
        Err(e) => Err(format!(
            "cannot reach the API at {}: {e}. Check api.url, api.proxy / HTTPS_PROXY and the \
             firewall (pass --offline to skip)",
            crate::redact::url(&config.api.url)
        )),
    }
}
