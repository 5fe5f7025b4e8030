//! `--kube-controller-manager-arg KEY=VALUE` (k3s's flag, repeatable): the
//! kube-controller-manager flags Shoal's controllers honour, read into their configuration.
//! Only the node lifecycle's are taken so far; any other key is refused (a flag silently
//! ignored would look like it worked).

use shoal_agent::simulated::parse_duration;
use shoal_controllers::node_lifecycle::NodeLifecycleConfig;

/// The controllers' configuration from the `KEY=VALUE` arguments (a leading `--` on the key
/// is accepted, as k3s accepts it); later arguments win.
pub fn node_lifecycle(args: &[String]) -> Result<NodeLifecycleConfig, String> {
    let mut config = NodeLifecycleConfig::default();
    for arg in args {
        let (key, value) = arg
            .split_once('=')
            .ok_or_else(|| format!("--kube-controller-manager-arg {arg:?}: expected KEY=VALUE"))?;
        let key = key.trim_start_matches("--");
        let bad = |what: &str| format!("--kube-controller-manager-arg {key}={value:?}: {what}");
        let number = |v: &str| v.parse::<f64>().map_err(|_| bad("not a number"));
        match key {
            "node-monitor-grace-period" => {
                config.grace_period = parse_duration(value).map_err(|e| bad(&e))?;
            }
            "node-startup-grace-period" => {
                config.startup_grace_period = parse_duration(value).map_err(|e| bad(&e))?;
            }
            "node-eviction-rate" => config.eviction_rate = number(value)?,
            "secondary-node-eviction-rate" => config.secondary_eviction_rate = number(value)?,
            "unhealthy-zone-threshold" => config.unhealthy_zone_threshold = number(value)?,
            "large-cluster-size-threshold" => {
                config.large_cluster_threshold =
                    value.parse().map_err(|_| bad("not a whole number"))?;
            }
            "terminated-pod-gc-threshold" => {
                config.terminated_pod_gc_threshold =
                    value.parse().map_err(|_| bad("not a whole number"))?;
            }
            _ => {
                return Err(format!(
                    "--kube-controller-manager-arg {key}: not supported (supported: \
                     node-monitor-grace-period, node-startup-grace-period, node-eviction-rate, \
                     secondary-node-eviction-rate, unhealthy-zone-threshold, \
                     large-cluster-size-threshold, terminated-pod-gc-threshold)"
                ))
            }
        }
    }
    for (name, rate) in [
        ("node-eviction-rate", config.eviction_rate),
        (
            "secondary-node-eviction-rate",
            config.secondary_eviction_rate,
        ),
    ] {
        if !(rate.is_finite() && rate >= 0.0) {
            return Err(format!(
                "--kube-controller-manager-arg {name}: must be a rate ≥ 0"
            ));
        }
    }
    if !(0.0..=1.0).contains(&config.unhealthy_zone_threshold) {
        return Err(
            "--kube-controller-manager-arg unhealthy-zone-threshold: must be within 0..1".into(),
        );
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn no_arguments_keep_kubernetes_defaults() {
        let config = node_lifecycle(&[]).expect("defaults");
        assert_eq!(config.grace_period, Duration::from_secs(50));
        assert_eq!(config.startup_grace_period, Duration::from_secs(60));
        assert_eq!(config.eviction_rate, 0.1);
    }

    #[test]
    fn known_keys_set_their_field_and_later_ones_win() {
        let config = node_lifecycle(&args(&[
            "node-monitor-grace-period=40s",
            "--node-monitor-grace-period=20s",
            "node-startup-grace-period=1m30s",
            "node-eviction-rate=1",
            "large-cluster-size-threshold=10",
        ]))
        .expect("valid");
        assert_eq!(config.grace_period, Duration::from_secs(20));
        assert_eq!(config.startup_grace_period, Duration::from_secs(90));
        assert_eq!(config.eviction_rate, 1.0);
        assert_eq!(config.large_cluster_threshold, 10);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        for bad in [
            "node-monitor-period=5s",
            "node-monitor-grace-period",
            "node-monitor-grace-period=soon",
            "node-eviction-rate=-1",
            "unhealthy-zone-threshold=2",
            "large-cluster-size-threshold=1.5",
        ] {
            assert!(node_lifecycle(&args(&[bad])).is_err(), "{bad}");
        }
    }
}
