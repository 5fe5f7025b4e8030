//! Every request the simulator sends goes through [`RequestGate`]: at most a fixed number in
//! flight at once (1,000 nodes must not open 1,000 connections or queue 1,000 writes at the
//! server in the same instant), and retried with exponential backoff while the failure is one
//! that waiting can cure (the server unreachable, overloaded or failing).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::simulated::SimError;

/// How many attempts a request gets before its failure is reported.
const ATTEMPTS: u32 = 6;
/// The pause after the first failed attempt; doubled after each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Bounds and retries the simulator's API requests. Cheap to clone; clones share the bound.
#[derive(Debug, Clone)]
pub struct RequestGate {
    permits: Arc<Semaphore>,
    sent: Arc<AtomicU64>,
}

impl RequestGate {
    /// A gate letting `max_in_flight` requests (at least one) run at once.
    pub fn new(max_in_flight: usize) -> RequestGate {
        RequestGate {
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            sent: Arc::default(),
        }
    }

    /// How many requests (attempts included) were sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Runs `request` (called again for each attempt) within the bound; `action` names it in
    /// the error. Answers the API gives deliberately (404, 409, 422, …) are returned at once.
    pub async fn send<T, F, Fut>(
        &self,
        action: impl Fn() -> String,
        request: F,
    ) -> Result<T, SimError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = {
                // The semaphore is never closed, so acquiring only fails if it were.
                let _permit = self.permits.acquire().await;
                self.sent.fetch_add(1, Ordering::Relaxed);
                request().await
            };
            match result {
                Ok(value) => return Ok(value),
                Err(error) if attempt < ATTEMPTS && is_transient(&error) => {
                    let pause = backoff(attempt);
                    tracing::debug!(action = %action(), %error, ?pause, "retrying");
                    tokio::time::sleep(pause).await;
                }
                Err(source) => {
                    return Err(SimError::Api {
                        action: action(),
                        source,
                    })
                }
            }
        }
    }
}

/// Whether a failed request may succeed if sent again unchanged.
fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// The pause after failed attempt number `attempt` (1-based), with up to 25% jitter so that
/// many nodes failing together do not retry together.
fn backoff(attempt: u32) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = doubled.min(MAX_BACKOFF);
    let jitter_percent = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 26)
        .unwrap_or(0);
    capped + capped * jitter_percent / 100
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..Default::default()
        }))
    }

    #[test]
    fn only_server_side_failures_are_retried() {
        assert!(is_transient(&status(500)));
        assert!(is_transient(&status(503)));
        assert!(is_transient(&status(429)));
        assert!(!is_transient(&status(404)));
        assert!(!is_transient(&status(409)));
        assert!(!is_transient(&status(422)));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        for (attempt, base) in [(1, 100), (2, 200), (3, 400), (7, 5000), (30, 5000)] {
            let pause = backoff(attempt);
            let base = Duration::from_millis(base);
            assert!(
                pause >= base && pause <= base * 5 / 4,
                "{attempt}: {pause:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_retried_and_a_final_one_is_reported() {
        let gate = RequestGate::new(1);
        let calls = std::sync::atomic::AtomicU32::new(0);
        let result = gate
            .send(
                || "flaky".into(),
                || async {
                    let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if n < 2 {
                        Err(status(503))
                    } else {
                        Ok(n)
                    }
                },
            )
            .await;
        assert_eq!(result.ok(), Some(2));

        let calls = std::sync::atomic::AtomicU32::new(0);
        let result: Result<(), SimError> = gate
            .send(
                || "missing".into(),
                || async {
                    calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Err(status(404))
                },
            )
            .await;
        let error = result.err().map(|e| (e.is_not_found(), e.to_string()));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(
            matches!(error, Some((true, ref m)) if m.starts_with("missing: ")),
            "{error:?}"
        );
    }
}
