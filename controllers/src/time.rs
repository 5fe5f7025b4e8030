//! Instant arithmetic on `metav1.Time` for the pure planners, which are handed `now`
//! and never read a clock.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// Nanoseconds since the Unix epoch.
pub(crate) fn nanos(time: &Time) -> i128 {
    time.0.as_nanosecond()
}

/// `time` plus whole seconds, in nanoseconds since the epoch.
pub(crate) fn nanos_plus_seconds(time: &Time, seconds: i64) -> i128 {
    nanos(time) + i128::from(seconds) * NANOS_PER_SECOND
}

/// The API stores times to the second: conditions stamped with a finer `now` would never
/// compare equal to what a later read returns.
pub(crate) fn truncate_to_second(now: &Time) -> Time {
    Timestamp::from_second(now.0.as_second())
        .map(Time)
        .unwrap_or_else(|_| now.clone())
}

/// A non-negative nanosecond count as a `Duration` (negative counts become zero).
pub(crate) fn duration_from_nanos(nanos: i128) -> Duration {
    let nanos = u128::try_from(nanos.max(0)).unwrap_or(0);
    let seconds = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    let subsec = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    Duration::new(seconds, subsec)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn truncation_and_durations() {
        let precise = Time(Timestamp::new(100, 900_000_000).unwrap());
        assert_eq!(
            truncate_to_second(&precise).0,
            Timestamp::from_second(100).unwrap()
        );
        assert_eq!(nanos_plus_seconds(&precise, 2), 102_900_000_000);
        assert_eq!(duration_from_nanos(-5), Duration::ZERO);
        assert_eq!(
            duration_from_nanos(1_500_000_000),
            Duration::from_millis(1500)
        );
    }
}
