//! What to do after an attempt to deliver a batch, and how long to wait before the next one.
//! Pure functions: the whole retry policy is unit-tested here, without a network.

use std::time::Duration;

/// What one HTTP attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The API answered.
    Answered {
        status: u16,
        retry_after: Option<Duration>,
        body: String,
    },
    /// The request never reached the API (no connection could be made): nothing can have been
    /// imported.
    NotSent(String),
    /// The request may have reached the API but no answer came (timeout, connection reset after
    /// sending): the batch may have been imported, so a retry may duplicate it.
    Unknown(String),
}

/// The decision for a batch after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// 2xx: mark the records sent.
    Delivered,
    /// Transient: try the same batch again after a delay; `after` is the server's
    /// `Retry-After` when it gave one.
    Retry {
        after: Option<Duration>,
        unknown_outcome: bool,
        reason: String,
    },
    /// The API refused the content (400, 422, 413): split the batch to find the bad records.
    Split { status: u16, body: String },
    /// The API refused us, not the records (401, 403, 404 ...): hold the lane, drop nothing, and
    /// tell the operator what to check.
    Pause { status: u16, reason: String },
}

/// Classifies one attempt. Connect errors, timeouts, 408, 429 and 5xx are transient; 400, 413
/// and 422 point at the content; every other answer points at the setup.
pub fn classify(attempt: &Attempt) -> Action {
    match attempt {
        Attempt::NotSent(e) => Action::Retry {
            after: None,
            unknown_outcome: false,
            reason: format!("cannot reach the API: {e}"),
        },
        Attempt::Unknown(e) => Action::Retry {
            after: None,
            unknown_outcome: true,
            reason: format!("no answer from the API: {e}"),
        },
        Attempt::Answered {
            status,
            retry_after,
            body,
        } => match *status {
            200..=299 => Action::Delivered,
            408 | 429 | 500..=599 => Action::Retry {
                after: *retry_after,
                unknown_outcome: false,
                reason: format!("the API answered {status}{}", excerpt(body)),
            },
            400 | 413 | 422 => Action::Split {
                status: *status,
                body: body.clone(),
            },
            401 => Action::Pause {
                status: 401,
                reason: format!(
                    "the API answered 401 Unauthorized{}: the API key was probably regenerated \
                     or the integration deleted in injixo. Generate a key under Integrations > \
                     injixo API, write it to the configured token file; delivery resumes on \
                     its own",
                    excerpt(body)
                ),
            },
            403 => Action::Pause {
                status: 403,
                reason: format!(
                    "the API answered 403 Forbidden{}: the key is valid but may not import into \
                     this integration. Check integration_id (the configuration id on the \
                     integration's tile) and that the account's plan includes the injixo API",
                    excerpt(body)
                ),
            },
            404 => Action::Pause {
                status: 404,
                reason: format!(
                    "the API answered 404 Not Found{}: check api.url (default \
                     https://api.injixo.com) and any proxy in between",
                    excerpt(body)
                ),
            },
            other => Action::Pause {
                status: other,
                reason: format!(
                    "the API answered {other}{}, which injixo-sync does not expect; delivery \
                     for this lane is held until it changes",
                    excerpt(body)
                ),
            },
        },
    }
}

fn excerpt(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        String::new()
    } else {
        format!(" ({})", crate::text::truncate(body, 300))
    }
}

/// Exponential backoff with full jitter: attempt `n` (from 0) waits a uniformly random time in
/// `[0, min(max, initial · 2ⁿ)]`. Full jitter spreads retries of many sites after an outage
/// instead of having them return in lockstep. A server's `Retry-After` wins when it asks for
/// longer (even beyond `max`: the server knows best), capped at [`RETRY_AFTER_CAP`] so a bogus
/// value cannot stall a lane for days.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

pub struct Backoff {
    ceilings: backon::ExponentialBackoff,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        use backon::BackoffBuilder;
        let ceilings = backon::ExponentialBuilder::default()
            .with_min_delay(initial)
            .with_max_delay(max)
            .with_factor(2.0)
            .without_max_times()
            .build();
        Self {
            ceilings,
            max,
            current: initial,
        }
    }

    /// The delay before the next attempt; `roll` is a uniform sample in `[0, 1]`.
    pub fn next_delay(&mut self, retry_after: Option<Duration>, roll: f64) -> Duration {
        self.current = self.ceilings.next().unwrap_or(self.max);
        let jittered = self.current.mul_f64(roll.clamp(0.0, 1.0));
        match retry_after {
            Some(server) => server.min(RETRY_AFTER_CAP).max(jittered),
            None => jittered,
        }
    }

    /// The current ceiling, for logs.
    pub fn ceiling(&self) -> Duration {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16) -> Attempt {
        Attempt::Answered {
            status,
            retry_after: None,
            body: String::new(),
        }
    }

    #[test]
    fn transient_failures_retry() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(
                    classify(&answered(s)),
                    Action::Retry {
                        unknown_outcome: false,
                        ..
                    }
                ),
                "{s}"
            );
        }
        assert!(matches!(
            classify(&Attempt::NotSent("refused".into())),
            Action::Retry {
                unknown_outcome: false,
                ..
            }
        ));
        assert!(matches!(
            classify(&Attempt::Unknown("timed out".into())),
            Action::Retry {
                unknown_outcome: true,
                ..
            }
        ));
    }

    #[test]
    fn content_errors_split_and_setup_errors_pause() {
        for s in [400, 413, 422] {
            assert!(
                matches!(classify(&answered(s)), Action::Split { .. }),
                "{s}"
            );
        }
        for s in [401, 403, 404, 405, 409] {
            assert!(
                matches!(classify(&answered(s)), Action::Pause { .. }),
                "{s}"
            );
        }
        assert_eq!(classify(&answered(202)), Action::Delivered);
    }

    #[test]
    fn a_401_tells_the_operator_the_key_was_probably_rotated() {
        let Action::Pause { reason, .. } = classify(&answered(401)) else {
            panic!()
        };
        assert!(reason.contains("regenerated"), "{reason}");
    }

    #[test]
    fn retry_after_is_kept_on_the_retry() {
        let a = Attempt::Answered {
            status: 429,
            retry_after: Some(Duration::from_secs(7)),
            body: "slow down".into(),
        };
        match classify(&a) {
            Action::Retry { after, reason, .. } => {
                assert_eq!(after, Some(Duration::from_secs(7)));
                assert!(reason.contains("429") && reason.contains("slow down"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backoff_grows_to_its_ceiling_with_full_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        // backon multiplies in f32, so compare whole milliseconds.
        let full: Vec<_> = (0..8)
            .map(|_| b.next_delay(None, 1.0).as_millis())
            .collect();
        assert_eq!(full, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(b.next_delay(None, 0.0), Duration::ZERO);
        assert_eq!(b.next_delay(None, 0.5).as_millis(), 100);
    }

    #[test]
    fn retry_after_wins_when_longer_and_is_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(5)), 1.0),
            Duration::from_secs(5)
        );
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(86_400)), 1.0),
            RETRY_AFTER_CAP
        );
    }
}
