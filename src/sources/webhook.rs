//! The `webhook` source: records pushed to `POST /webhook/<source name>/<token>` on the
//! `[listen]` address.
//!
//! The listener checks the request (path token in constant time, content type, size, JSON)
//! and hands the objects to the source's own thread through a bounded channel; the thread
//! converts them like any source's rows, commits them to the outbox and only then answers.
//! A push that got a 2xx is therefore on disk. Pushes waiting together are committed in one
//! transaction (one fsync for all of them), which is what keeps many concurrent pushers fast.
//! The thread also keeps the source's open agent states (`emits = "agent_states"`) and
//! flushes them on time when no push arrives.

use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error};

use super::rows::{Converted, Keying, States, commit, convert_objects};
use super::{Source, SourceContext};
use crate::config::WebhookConfig;
use crate::outbox::{Commit, Group, OutboxError};
use crate::types::{Secret, SourceName};

/// How many pushes wait for the source thread before the listener answers 503.
const QUEUE: usize = 256;
/// The most pushes committed in one transaction.
const GROUP: usize = 64;

/// One accepted request: its objects, each with its origin, and where the answer goes.
pub struct Push {
    /// What tells this push from others and a resend of it from a new push: its
    /// `Idempotency-Key` header, or else a hash of its body.
    pub identity: String,
    pub objects: Vec<(String, Map<String, Value>)>,
    /// The outcome, or why the outbox could not take the push (one error shared by every
    /// push of the commit that failed).
    pub reply: oneshot::Sender<Result<Outcome, std::sync::Arc<OutboxError>>>,
}

/// What became of a push, once it is committed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// Records (or agent-state changes) the outbox holds from this push: `kept` + `merged`.
    pub accepted: usize,
    /// New: every element of a push is kept, also when two are alike.
    pub kept: usize,
    /// Already in the outbox: the same push sent again (same `Idempotency-Key`, or the same
    /// body without one), or a row whose `key` was seen before.
    pub merged: usize,
    /// Dropped by `skip_if`.
    pub skipped: u64,
    /// Objects that cannot become records, kept (parked) with the reason.
    pub rejected: usize,
    /// The first rejection reasons, for the pusher's log.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Nothing was kept: the push's `Idempotency-Key` was used before for other records.
    #[serde(skip)]
    pub conflict: bool,
}

/// What the listener needs to route a push to its source.
pub struct Hook {
    pub name: SourceName,
    token: Secret,
    pub max_body: usize,
    /// Pushes from other addresses are refused; empty: any.
    pub allow: Vec<ipnet::IpNet>,
    /// How pushes are signed, with the secret read.
    pub signature: Option<(crate::config::Signature, Secret)>,
    tx: mpsc::Sender<Push>,
}

impl Hook {
    /// Whether `given` is this hook's token (compared in constant time).
    pub fn token_matches(&self, given: &str) -> bool {
        self.token.matches(given)
    }

    /// Whether a push from `client` may be read.
    pub fn allows(&self, client: std::net::IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&client))
    }

    /// Hands a push to the source thread; `Err` gives it back when the queue is full or the
    /// source has stopped.
    pub fn offer(&self, push: Push) -> Result<(), Push> {
        self.tx.try_send(push).map_err(|e| match e {
            mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
        })
    }
}

pub struct WebhookSource {
    cfg: WebhookConfig,
    rx: mpsc::Receiver<Push>,
}

/// Why a webhook source cannot start: its token.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(transparent)]
    Secret(#[from] crate::config::SecretError),
    #[error(
        "{key} is shorter than 16 characters: use a long random token, e.g. the output of \
         `openssl rand -hex 24`"
    )]
    Short { key: String },
    #[error("{key} may hold only letters, digits and - . _ ~ (it is part of a URL path)")]
    Characters { key: String },
}

impl WebhookSource {
    /// The source and the hook the listener routes its pushes through. Fails when the token
    /// cannot be read or is unfit for a URL path.
    pub fn new(name: &SourceName, cfg: WebhookConfig) -> Result<(Self, Hook), HookError> {
        let token = cfg.token.load()?;
        let key = || cfg.token.key.clone();
        if token.expose().len() < 16 {
            return Err(HookError::Short { key: key() });
        }
        if !token
            .expose()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        {
            return Err(HookError::Characters { key: key() });
        }
        let signature = match &cfg.signature {
            Some(sig) => Some((sig.clone(), sig.secret.load()?)),
            None => None,
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let hook = Hook {
            name: name.clone(),
            token,
            max_body: cfg.max_body,
            allow: cfg.allow.clone(),
            signature,
            tx,
        };
        Ok((Self { cfg, rx }, hook))
    }
}

impl Source for WebhookSource {
    fn run(self: Box<Self>, ctx: SourceContext) {
        let Self { cfg, mut rx } = *self;
        let mut states = match &cfg.rows.states {
            Some(s) => match ctx
                .outbox
                .cursors_blocking(ctx.id)
                .and_then(|list| States::load(s.clone(), &ctx, &list))
            {
                Ok(st) => Some(st),
                Err(e) => {
                    error!(source = %ctx.name, "cannot load the open agent states: {e}");
                    return;
                }
            },
            None => None,
        };
        let handle = tokio::runtime::Handle::current();
        handle.block_on(async {
            let idle = Duration::from_secs(60);
            let mut wait = idle;
            // On shutdown the listener stops taking requests, but the pushes it has taken
            // still get their answer: this thread goes on until the listener has let go of
            // its end of the channel (after its last request), so that a reload refuses none.
            let mut stopping = false;
            loop {
                tokio::select! {
                    _ = ctx.shutdown.cancelled(), if !stopping => {
                        stopping = true;
                        continue;
                    }
                    first = rx.recv() => {
                        let Some(first) = first else { break };
                        let mut pushes = vec![first];
                        while pushes.len() < GROUP {
                            match rx.try_recv() {
                                Ok(p) => pushes.push(p),
                                Err(_) => break,
                            }
                        }
                        take(&ctx, &cfg, states.as_mut(), pushes).await;
                    }
                    _ = tokio::time::sleep(wait), if !stopping => {}
                }
                if let Some(st) = states.as_mut() {
                    let (due, next) = st.flush(&ctx.name, idle);
                    wait = next;
                    if let Some(c) = due {
                        let done = commit(&ctx, c).await;
                        st.settle(done.is_ok());
                        if let Err(e) = done {
                            error!(source = %ctx.name, "cannot commit flushed agent states: {e}");
                        }
                    }
                }
            }
            debug!(source = %ctx.name, "stopped");
        });
    }
}

/// Converts and commits a group of pushes in one transaction, then answers each with what
/// became of its elements.
async fn take(
    ctx: &SourceContext,
    cfg: &WebhookConfig,
    mut states: Option<&mut States>,
    pushes: Vec<Push>,
) {
    let mut all = Commit::default();
    let mut outcomes = Vec::with_capacity(pushes.len());
    let mut replies = Vec::with_capacity(pushes.len());
    for push in pushes {
        let Converted {
            mut records,
            mut parked,
            changes,
            skipped,
        } = convert_objects(
            &cfg.rows,
            ctx.emits,
            push.objects,
            Keying::Push(&push.identity),
        );
        let mut outcome = Outcome {
            skipped,
            rejected: parked.len(),
            errors: parked.iter().take(5).map(|p| p.reason.clone()).collect(),
            ..Outcome::default()
        };
        if let Some(st) = states.as_deref_mut() {
            let (taken, before) = (changes.len(), parked.len());
            let (cursor, repeats) = st.apply(&ctx.name, changes, &mut records, &mut parked);
            // One states cursor per commit: the last one holds every change.
            all.cursors.retain(|(id, _)| *id != cursor.0);
            all.cursors.push(cursor);
            let late = parked.len() - before;
            outcome.rejected += late;
            outcome.kept += taken - late - repeats;
            outcome.merged += repeats;
            outcome
                .errors
                .extend(parked[before..].iter().take(5).map(|p| p.reason.clone()));
        }
        // Elements keyed by the push's identity must be what that identity brought before;
        // a key used again for other records would otherwise merge them away.
        let by_identity = cfg.rows.key.is_none() && states.is_none();
        all.groups.push(Group {
            records: records.len(),
            parked: parked.len(),
            same_payload: by_identity,
        });
        all.records.extend(records);
        all.parked.extend(parked);
        outcomes.push(outcome);
        replies.push(push.reply);
    }
    all.skipped = outcomes.iter().map(|o| o.skipped).sum();
    ctx.metrics
        .skipped
        .fetch_add(all.skipped, std::sync::atomic::Ordering::Relaxed);
    let mut result = commit(ctx, all).await;
    // Committed to a state file an operator deleted or replaced meanwhile: not kept for any
    // next start, so not acknowledged (the daemon is stopping; see `app`).
    if result.is_ok() && !ctx.outbox.still_at_path() {
        result = Err(OutboxError::Io {
            path: ctx.outbox.path().to_owned(),
            message: "was deleted or replaced under the running daemon".into(),
        });
    }
    // Agent states are counted as changes (above): their records are the intervals the
    // changes close, which need not be one per push.
    let count_records = states.is_none();
    if let Some(st) = states {
        st.settle(result.is_ok());
    }
    match result {
        Ok(done) => {
            for ((outcome, group), reply) in outcomes.iter_mut().zip(&done.groups).zip(replies) {
                if group.conflict {
                    let _ = reply.send(Ok(Outcome {
                        conflict: true,
                        ..Outcome::default()
                    }));
                    continue;
                }
                if count_records {
                    outcome.kept += group.inserted;
                    outcome.merged += group.duplicates;
                }
                outcome.accepted = outcome.kept + outcome.merged;
                let _ = reply.send(Ok(std::mem::take(outcome)));
            }
        }
        Err(e) => {
            ctx.metrics.waited_for_room(&e);
            // A full outbox is said by `status`, /readyz and the daemon's log already; each
            // push refused meanwhile is answered 503.
            if e.is_at_budget() {
                debug!(source = %ctx.name, "push refused, the outbox is full: {e}");
            } else {
                error!(source = %ctx.name, "cannot commit pushed records: {e}");
            }
            let e = std::sync::Arc::new(e);
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
