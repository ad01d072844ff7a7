//! `injixo-sync send-test`: sends one visible test record through the configured client and
//! prints the API's whole answer, like the curl example in injixo's documentation, so a first
//! set-up can be checked end to end before any ACD data flows.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::json;

use crate::config::Config;
use crate::push::ApiClient;
use crate::push::classify::{Action, Attempt, classify};
use crate::push::client::body;
use crate::types::Emits;

/// The queue a test contact event is filed under in injixo.
pub const TEST_QUEUE: &str = "injixo-sync test";

pub fn main(config_path: &Path, emits: Emits, source: Option<&str>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let chosen = config
        .sources
        .iter()
        .find(|s| s.lane.emits == emits && source.is_none_or(|n| s.name.as_str() == n));
    let Some(chosen) = chosen else {
        bail!(
            "no [[source]] emits {}{}: send-test takes the configuration id (and external \
             system) from one",
            emits.as_str(),
            source
                .map(|n| format!(" under the name {n:?}"))
                .unwrap_or_default()
        );
    };
    let now = jiff::Timestamp::now().round(jiff::Unit::Second)?;
    let record = match emits {
        Emits::ContactEvents => json!({
            "properties": {"offered": true, "handled": true, "duration": 1},
            "queueName": TEST_QUEUE,
            "queueIdentifier": "injixo-sync-test",
            "timestamp": now.to_string(),
            "channel": "calls",
        }),
        Emits::AgentStatuses => json!({
            "agentIdentifier": "injixo-sync-test",
            "activityIdentifier": "injixo-sync test",
            "startTime": (now - jiff::SignedDuration::from_mins(1)).to_string(),
            "endTime": now.to_string(),
        }),
    };
    let client = ApiClient::new(&config.api).map_err(anyhow::Error::msg)?;
    let request = body(&chosen.lane.meta_json(), &[(0, record.to_string())]);
    println!("POST {}", crate::redact::url(&client.url(emits.endpoint())));
    println!("{request}");
    if emits == Emits::ContactEvents {
        println!("(this creates the queue {TEST_QUEUE:?} in injixo once processed)");
    }
    // Unique per test, also for two in one second.
    let key = format!(
        "send-test-{}-{:08x}",
        now.as_millisecond(),
        fastrand::u32(..)
    );
    let attempt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(client.post(&chosen.lane, &key, request));
    match &attempt {
        Attempt::Answered { status, body, .. } => println!("\nHTTP {status}\n{body}"),
        Attempt::NotSent(e) | Attempt::Unknown(e) => println!("\nno answer: {e}"),
    }
    let verdict = match classify(&attempt) {
        Action::Delivered => {
            println!("\nok: the API accepted the test record");
            return Ok(ExitCode::SUCCESS);
        }
        Action::Retry { reason, .. } => reason,
        Action::Split { status, body } => {
            format!("the API refused the record ({status}): {body}")
        }
        Action::Pause { reason, .. } => reason,
    };
    println!("\nproblem: {verdict}");
    Ok(ExitCode::FAILURE)
}
