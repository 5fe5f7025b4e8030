//! Each node's heartbeats, as the kubelet sends them: the Lease renewed every
//! `lease_renew_interval` and the conditions refreshed every `status_update_interval`. With a
//! thousand nodes, each node's ticks are offset by its share of the period, so the API sees a
//! steady trickle instead of a thousand requests at the top of every period.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::{interval_at, Instant, MissedTickBehavior};

use crate::simulated::fleet::SimNode;
use crate::simulated::lease::NodeLease;
use crate::simulated::{node, Shared};

/// Where in each period node `index` of `count` beats: spread evenly over the period.
pub fn phase_offset(index: usize, count: usize, period: Duration) -> Duration {
    if count == 0 {
        return Duration::ZERO;
    }
    let nanos = period.as_nanos() * (index % count) as u128 / count as u128;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Failed heartbeats, summed up between reports: with the API down, a thousand nodes would
/// otherwise log a hundred warnings a second.
#[derive(Debug, Default)]
pub struct FailureTally {
    count: AtomicU64,
    last: Mutex<Option<String>>,
}

impl FailureTally {
    pub fn record(&self, node: &str, what: &str, error: &crate::simulated::SimError) {
        tracing::debug!(node, %error, "{what} failed");
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last.lock() {
            *last = Some(error.to_string());
        }
    }

    /// The failures since the last call, with the latest one's message.
    pub fn take(&self) -> Option<(u64, String)> {
        let count = self.count.swap(0, Ordering::Relaxed);
        let last = self.last.lock().ok().and_then(|mut last| last.take());
        (count > 0).then(|| (count, last.unwrap_or_default()))
    }
}

/// Logs the heartbeat failures once per `period`; never returns.
pub async fn report_failures(tally: &FailureTally, period: Duration) {
    let mut ticks = tokio::time::interval(period);
    loop {
        ticks.tick().await;
        if let Some((failed, last_error)) = tally.take() {
            tracing::warn!(failed, %last_error, "node heartbeats failing");
        }
    }
}

/// Beats for `node` until the task is aborted (failures are tallied; the next tick retries).
pub async fn beat(shared: std::sync::Arc<Shared>, node: SimNode, mut lease: NodeLease) {
    let config = &shared.config;
    let start = Instant::now();
    let ticks = |period: Duration| {
        let mut ticks = interval_at(
            start + phase_offset(node.index, config.count, period),
            period,
        );
        // Skip rather than catch up: after a stall the nodes keep their spread phases instead
        // of all firing together.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        ticks
    };
    let mut lease_ticks = ticks(config.lease_renew_interval);
    let mut status_ticks = ticks(config.status_update_interval);
    loop {
        tokio::select! {
            _ = lease_ticks.tick() => {
                if let Err(error) = lease.renew(&shared.gate).await {
                    shared.failures.record(&node.name, "lease renewal", &error);
                }
            }
            _ = status_ticks.tick() => {
                let refreshed =
                    node::refresh_status(&shared.nodes, &shared.gate, &node, config, false).await;
                match refreshed {
                    Ok(_) => {}
                    Err(error) if error.is_not_found() => {
                        tracing::warn!(node = %node.name, "node deleted from the API; not re-registering it");
                    }
                    Err(error) => shared.failures.record(&node.name, "node status update", &error),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thousand_nodes_spread_evenly_over_the_period() {
        let period = Duration::from_secs(10);
        let offsets: Vec<Duration> = (0..1000).map(|i| phase_offset(i, 1000, period)).collect();
        assert_eq!(offsets[0], Duration::ZERO);
        assert_eq!(offsets[500], Duration::from_secs(5));
        assert_eq!(offsets[999], Duration::from_millis(9990));
        // Any one-second window holds a tenth of the nodes: no burst.
        for second in 0..10 {
            let window = Duration::from_secs(second)..Duration::from_secs(second + 1);
            let in_window = offsets.iter().filter(|o| window.contains(*o)).count();
            assert_eq!(in_window, 100, "second {second}");
        }
    }

    #[test]
    fn failures_are_summed_up_between_reports() {
        let tally = FailureTally::default();
        assert_eq!(tally.take(), None);
        let error = |m: &str| crate::simulated::SimError::Config(m.into());
        tally.record("sim-1", "lease renewal", &error("first"));
        tally.record("sim-2", "lease renewal", &error("second"));
        let (count, last) = tally.take().expect("failures");
        assert_eq!(count, 2);
        assert!(last.ends_with("second"), "{last}");
        assert_eq!(tally.take(), None);
    }

    #[test]
    fn one_node_beats_at_once() {
        assert_eq!(phase_offset(0, 1, Duration::from_secs(10)), Duration::ZERO);
        assert_eq!(phase_offset(3, 0, Duration::from_secs(10)), Duration::ZERO);
    }
}
