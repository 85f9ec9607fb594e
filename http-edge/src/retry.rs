//! Retry with exponential backoff (the `backon` crate) for failures that may pass by themselves:
//! overload, a restart, the network. A refusal of the input is returned at once.

use std::fmt::Display;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};

/// What a failed call says about trying it again.
pub trait Transient {
    /// Whether the same call may succeed later.
    fn is_transient(&self) -> bool;

    /// How long the other side asked us to wait (its `Retry-After`), if it said.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Calls in all, the first included (at least 1).
    pub attempts: usize,
    /// The wait before the second call; it doubles each time, up to `max_delay`, with jitter.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured; a longer one is a misconfiguration, not a plan.
    pub max_retry_after: Duration,
}

impl Backoff {
    pub const fn new(attempts: usize, first_delay: Duration) -> Self {
        Self {
            attempts,
            first_delay,
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
        }
    }

    fn builder(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.first_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_max_times(self.attempts.max(1) - 1)
            .with_jitter()
    }
}

/// Calls `call` until it succeeds, fails for good (not [`Transient`]), or `backoff` runs out;
/// returns the last error then. A `Retry-After` is honoured: never sooner than asked (capped at
/// `max_retry_after`). Each retry is logged with `what`.
pub async fn retry<T, E, F, Fut>(backoff: &Backoff, what: &'static str, call: F) -> Result<T, E>
where
    E: Transient + Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let max_asked = backoff.max_retry_after;
    call.retry(backoff.builder())
        .sleep(tokio::time::sleep)
        .when(E::is_transient)
        .adjust(move |error: &E, next: Option<Duration>| {
            next.map(|delay| {
                error
                    .retry_after()
                    .map_or(delay, |asked| asked.min(max_asked).max(delay))
            })
        })
        .notify(|error: &E, wait: Duration| {
            tracing::warn!(
                what,
                wait_ms = wait.as_millis() as u64,
                error = %error,
                "transient failure; retrying"
            );
        })
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use super::*;

    #[derive(Debug)]
    struct Failure {
        transient: bool,
        retry_after: Option<Duration>,
    }

    impl Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "failure (transient: {})", self.transient)
        }
    }

    impl Transient for Failure {
        fn is_transient(&self) -> bool {
            self.transient
        }
        fn retry_after(&self) -> Option<Duration> {
            self.retry_after
        }
    }

    const QUICK: Backoff = Backoff::new(4, Duration::from_millis(1));

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let calls = AtomicUsize::new(0);
        let out = retry(&QUICK, "test", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(Failure {
                    transient: true,
                    retry_after: None,
                }),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(out.expect("third call succeeds"), 2);
    }

    /// Calls made by a retry of a call that always fails this way.
    async fn calls_when_always(transient: bool) -> usize {
        let calls = AtomicUsize::new(0);
        let out: Result<(), _> = retry(&QUICK, "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Failure {
                transient,
                retry_after: None,
            })
        })
        .await;
        assert!(out.is_err());
        calls.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn refusals_are_not_retried_and_attempts_are_bounded() {
        assert_eq!(calls_when_always(false).await, 1);
        assert_eq!(
            calls_when_always(true).await,
            4,
            "attempts, the first included"
        );
    }

    #[tokio::test]
    async fn retry_after_is_honoured_and_capped() {
        let backoff = Backoff {
            max_retry_after: Duration::from_millis(300),
            ..Backoff::new(2, Duration::from_millis(1))
        };
        let calls = AtomicUsize::new(0);
        let start = Instant::now();
        let out = retry(&backoff, "test", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(Failure {
                    transient: true,
                    retry_after: Some(Duration::from_secs(3600)),
                }),
                _ => Ok(()),
            }
        })
        .await;
        assert!(out.is_ok());
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
            "waited {waited:?}"
        );
    }
}
