//! What the simulated nodes look like and how they behave: [`SimConfig`], its defaults (those of
//! a typical large cloud node and of the kubelet's timings) and its checks, plus parsers for the
//! `key=value` labels and `key=value:Effect` taints it is given as text.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Taint;
use shoal_common::Cidr;

use crate::simulated::SimError;

/// The usable pod addresses of a node's /24 (the network, gateway and broadcast addresses
/// excluded): the most pods a node may be given.
pub const MAX_PODS_PER_NODE: u32 = 253;

/// The simulated nodes and how they behave.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How many nodes: named `<name_prefix>0` … `<name_prefix><count - 1>`.
    pub count: usize,
    pub name_prefix: String,
    /// Each node's CPU capacity, as a quantity ("32", "7500m").
    pub cpu: String,
    /// Each node's memory capacity, as a quantity ("256Gi").
    pub memory: String,
    /// Each node's ephemeral-storage capacity, as a quantity.
    pub ephemeral_storage: String,
    /// Each node's pod capacity; pods beyond it are rejected as a kubelet rejects them.
    pub pods: u32,
    /// Labels beyond the kubelet's own.
    pub labels: BTreeMap<String, String>,
    /// Taints the nodes register with.
    pub taints: Vec<Taint>,
    /// Nodes are spread round-robin over `zone-0` … `zone-<zones - 1>` in the
    /// `topology.kubernetes.io/zone` label; 0 leaves the label off.
    pub zones: usize,
    /// The range pod addresses come from: node `i` gets its `i`th /24 as `spec.podCIDR`.
    pub pod_cidr: Cidr,
    /// The range node addresses (`InternalIP`) come from: node `i` gets its `i + 1`th address.
    pub node_ip_cidr: Cidr,
    /// How long a pod bound to a node stays Pending before it runs.
    pub pod_start_delay: Duration,
    /// How long the containers of a Job's pods run before they exit 0 (unless annotated
    /// otherwise); `None` keeps them running.
    pub complete_after: Option<Duration>,
    /// How often each node renews its Lease (the kubelet's 10 s).
    pub lease_renew_interval: Duration,
    /// The Lease's `leaseDurationSeconds` (the kubelet's 40).
    pub lease_duration_seconds: i32,
    /// How often each node refreshes its conditions' heartbeat (the kubelet: on change or
    /// every 5 minutes).
    pub status_update_interval: Duration,
    /// The most API requests in flight at once, over all nodes.
    pub max_in_flight: usize,
    /// Delete the nodes and their Leases when stopping.
    pub cleanup: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            count: 1,
            name_prefix: "sim-".into(),
            cpu: "32".into(),
            memory: "256Gi".into(),
            ephemeral_storage: "100Gi".into(),
            pods: 110,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            zones: 3,
            pod_cidr: parse_cidr("10.128.0.0/10"),
            node_ip_cidr: parse_cidr("10.64.0.0/10"),
            pod_start_delay: Duration::ZERO,
            complete_after: Some(Duration::from_secs(1)),
            lease_renew_interval: Duration::from_secs(10),
            lease_duration_seconds: 40,
            status_update_interval: Duration::from_secs(60),
            max_in_flight: 64,
            cleanup: false,
        }
    }
}

/// A CIDR written into the source (never input): a typo fails the defaults test.
fn parse_cidr(text: &str) -> Cidr {
    text.parse().expect("a valid CIDR literal")
}

impl SimConfig {
    /// Checks that the configuration describes `count` valid, distinct nodes.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |message: String| Err(SimError::Config(message));
        if self.count == 0 {
            return bad("the node count must be at least 1".into());
        }
        let longest_name = format!("{}{}", self.name_prefix, self.count - 1);
        if !is_dns_subdomain(&longest_name) {
            return bad(format!(
                "name prefix {:?} does not make valid node names (lower-case letters, digits, \
                 '-' and '.', starting with a letter or digit, at most 253 characters)",
                self.name_prefix
            ));
        }
        for (what, quantity) in [
            ("cpu", &self.cpu),
            ("memory", &self.memory),
            ("ephemeral-storage", &self.ephemeral_storage),
        ] {
            if !is_quantity(quantity) {
                return bad(format!(
                    "{what} {quantity:?} is not a quantity such as 32, 500m or 256Gi"
                ));
            }
        }
        if self.pods == 0 || self.pods > MAX_PODS_PER_NODE {
            return bad(format!(
                "max pods {} must be between 1 and {MAX_PODS_PER_NODE} (a node's /24 of pod addresses)",
                self.pods
            ));
        }
        if !self.pod_cidr.is_ipv4() || self.pod_cidr.prefix() > 24 {
            return bad(format!(
                "pod CIDR {} must be an IPv4 range of /24 or larger",
                self.pod_cidr
            ));
        }
        let node_ranges = 1u128 << (24 - self.pod_cidr.prefix());
        if node_ranges < self.count as u128 {
            return bad(format!(
                "pod CIDR {} holds {node_ranges} node ranges (/24), fewer than {} nodes",
                self.pod_cidr, self.count
            ));
        }
        if self.node_ip_cidr.size() < self.count as u128 + 2 {
            return bad(format!(
                "node IP CIDR {} has too few addresses for {} nodes",
                self.node_ip_cidr, self.count
            ));
        }
        if self.pod_cidr.contains(self.node_ip_cidr.addr())
            || self.node_ip_cidr.contains(self.pod_cidr.addr())
        {
            return bad(format!(
                "pod CIDR {} and node IP CIDR {} overlap",
                self.pod_cidr, self.node_ip_cidr
            ));
        }
        if self.lease_renew_interval.is_zero() || self.status_update_interval.is_zero() {
            return bad("heartbeat intervals must be longer than zero".into());
        }
        if self.lease_duration_seconds <= 0 {
            return bad("the lease duration must be at least one second".into());
        }
        Ok(())
    }
}

/// Whether `name` is a valid DNS subdomain (RFC 1123), as node names must be.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Whether `text` is a Kubernetes quantity: a non-negative decimal number with an optional
/// binary (Ki … Ei), decimal (m, k, M … E) or exponent (e3) suffix.
fn is_quantity(text: &str) -> bool {
    let number_len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_len);
    let number_ok = !number.is_empty()
        && number.chars().filter(|&c| c == '.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = match suffix {
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => {
            true
        }
        exponent => exponent
            .strip_prefix(['e', 'E'])
            .and_then(|e| e.strip_prefix(['+', '-']).or(Some(e)))
            .is_some_and(|digits| !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())),
    };
    number_ok && suffix_ok
}

/// Parses a `key=value` label (the value may be empty).
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("label {text:?} is not key=value"))?;
    if key.is_empty() {
        return Err(format!("label {text:?} has an empty key"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Parses a taint as kubectl writes it: `key=value:Effect` or `key:Effect`, the effect one of
/// NoSchedule, PreferNoSchedule and NoExecute.
pub fn parse_taint(text: &str) -> Result<Taint, String> {
    let (key_value, effect) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("taint {text:?} is not key=value:Effect"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!(
            "taint {text:?}: effect {effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    let (key, value) = match key_value.split_once('=') {
        Some((key, value)) => (key, Some(value.to_string())),
        None => (key_value, None),
    };
    if key.is_empty() {
        return Err(format!("taint {text:?} has an empty key"));
    }
    Ok(Taint {
        key: key.to_string(),
        value,
        effect: effect.to_string(),
        time_added: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        let config = SimConfig::default();
        assert!(config.validate().is_ok());
        assert_eq!(config.pod_cidr.to_string(), "10.128.0.0/10");
        assert_eq!(config.node_ip_cidr.to_string(), "10.64.0.0/10");
        let thousand = SimConfig {
            count: 1000,
            ..SimConfig::default()
        };
        assert!(thousand.validate().is_ok());
    }

    #[test]
    fn bad_configurations_are_refused() {
        let cases: Vec<(SimConfig, &str)> = vec![
            (
                SimConfig {
                    count: 0,
                    ..Default::default()
                },
                "at least 1",
            ),
            (
                SimConfig {
                    name_prefix: "Sim_".into(),
                    ..Default::default()
                },
                "name prefix",
            ),
            (
                SimConfig {
                    name_prefix: "-x".into(),
                    ..Default::default()
                },
                "name prefix",
            ),
            (
                SimConfig {
                    cpu: "lots".into(),
                    ..Default::default()
                },
                "cpu",
            ),
            (
                SimConfig {
                    memory: "1GB".into(),
                    ..Default::default()
                },
                "memory",
            ),
            (
                SimConfig {
                    pods: 0,
                    ..Default::default()
                },
                "max pods",
            ),
            (
                SimConfig {
                    pods: 254,
                    ..Default::default()
                },
                "max pods",
            ),
            (
                SimConfig {
                    count: 300,
                    pod_cidr: parse_cidr("10.200.0.0/16"),
                    ..Default::default()
                },
                "holds 256 node ranges",
            ),
            (
                SimConfig {
                    pod_cidr: parse_cidr("10.200.0.0/25"),
                    ..Default::default()
                },
                "/24 or larger",
            ),
            (
                SimConfig {
                    pod_cidr: parse_cidr("10.64.0.0/16"),
                    ..Default::default()
                },
                "overlap",
            ),
            (
                SimConfig {
                    lease_duration_seconds: 0,
                    ..Default::default()
                },
                "lease duration",
            ),
        ];
        for (config, wanted) in cases {
            let error = config
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains(wanted), "{wanted:?} not in {error:?}");
        }
    }

    #[test]
    fn quantities() {
        for good in ["32", "7500m", "256Gi", "1.5", "100G", "1e3", "0"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "Gi", "1GB", "1..2", "-1", "1e", "1 Gi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn labels_and_taints_parse_as_kubectl_writes_them() {
        assert_eq!(parse_label("tier=gpu"), Ok(("tier".into(), "gpu".into())));
        assert_eq!(parse_label("empty="), Ok(("empty".into(), String::new())));
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("=x").is_err());

        let taint = parse_taint("dedicated=gpu:NoSchedule").expect("valid");
        assert_eq!(
            (
                taint.key.as_str(),
                taint.value.as_deref(),
                taint.effect.as_str()
            ),
            ("dedicated", Some("gpu"), "NoSchedule")
        );
        let taint = parse_taint("example.com/spot:PreferNoSchedule").expect("valid");
        assert_eq!(
            (taint.key.as_str(), taint.value, taint.effect.as_str()),
            ("example.com/spot", None, "PreferNoSchedule")
        );
        assert!(parse_taint("a=b").is_err());
        assert!(parse_taint("a=b:Sometimes").is_err());
        assert!(parse_taint(":NoExecute").is_err());
    }
}
