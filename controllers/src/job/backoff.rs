//! The delay before replacing failed pods (`backoff_utils.go`): 10 s after the first
//! failure since the last success, doubling per further failure, capped.
//!
//! Kubernetes keeps the failure count in controller memory, fed by the pods that finish
//! between syncs (and forgets it on restart). A pure planner has no memory, so the count
//! is read off the pods still present: failed pods that finished after the latest
//! succeeded one. Pods the Job deleted itself (scale-down, suspend) are not failures: they
//! lose the tracking finalizer before deletion, so a deleted pod without it is skipped.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::time::{duration_from_nanos, nanos};

use super::pods;

/// The first delay (`DefaultJobPodFailureBackOff`).
pub const DEFAULT_POD_FAILURE_BACKOFF: Duration = Duration::from_secs(10);
/// The cap (`MaxJobPodFailureBackOff`: 10 minutes in kube-controller-manager since the pod
/// failure backoff was split from the API backoff; the documentation still says 6).
pub const MAX_POD_FAILURE_BACKOFF: Duration = Duration::from_secs(600);

/// Failures since the last success and when the latest happened (`backoffRecord`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Record {
    pub failures: u32,
    pub last_failure: Option<Timestamp>,
}

/// The record the pods present imply.
pub(crate) fn record(owned: &[Pod], only_replace_failed: bool) -> Record {
    let last_success = owned
        .iter()
        .filter(|p| pods::phase(p) == "Succeeded")
        .filter_map(pods::finished_at)
        .max();
    let failures: Vec<Timestamp> = owned
        .iter()
        .filter(|p| pods::is_failed(p, only_replace_failed))
        .filter(|p| pods::has_tracking_finalizer(p) || p.metadata.deletion_timestamp.is_none())
        .filter_map(pods::finished_at)
        .filter(|t| last_success.is_none_or(|s| *t > s))
        .collect();
    Record {
        failures: u32::try_from(failures.len()).unwrap_or(u32::MAX),
        last_failure: failures.into_iter().max(),
    }
}

/// How long until new pods may be created (`getRemainingTimeForFailuresCount`); zero
/// when they may be created now.
pub(crate) fn remaining(record: &Record, now: &Time) -> Duration {
    let Some(last_failure) = record.last_failure else {
        return Duration::ZERO;
    };
    if record.failures == 0 {
        return Duration::ZERO;
    }
    let mut delay = DEFAULT_POD_FAILURE_BACKOFF;
    for _ in 1..record.failures {
        delay *= 2;
        if delay >= MAX_POD_FAILURE_BACKOFF {
            delay = MAX_POD_FAILURE_BACKOFF;
            break;
        }
    }
    let elapsed = duration_from_nanos(nanos(now) - last_failure.as_nanosecond());
    delay.saturating_sub(elapsed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::time;

    fn record_at(failures: u32, last: i64) -> Record {
        Record {
            failures,
            last_failure: Some(Timestamp::from_second(last).unwrap()),
        }
    }

    #[test]
    fn delay_doubles_per_failure_and_is_capped() {
        assert_eq!(
            remaining(&record_at(1, 100), &time(100)),
            Duration::from_secs(10)
        );
        assert_eq!(
            remaining(&record_at(1, 100), &time(104)),
            Duration::from_secs(6)
        );
        assert_eq!(remaining(&record_at(1, 100), &time(110)), Duration::ZERO);
        assert_eq!(
            remaining(&record_at(3, 100), &time(100)),
            Duration::from_secs(40)
        );
        assert_eq!(
            remaining(&record_at(20, 100), &time(100)),
            MAX_POD_FAILURE_BACKOFF
        );
        assert_eq!(remaining(&Record::default(), &time(100)), Duration::ZERO);
    }
}
