//! Forwarding and masquerade: the node routes between pods, the overlay and the uplink, and
//! pod traffic leaving the cluster's pod network takes the node's address.
//!
//! The rules live in a table of our own, `inet shoal-masq` (one table for both families),
//! replaced as a whole in one `nft -f -` transaction, so other tables (the Service proxy's,
//! the host's firewall) are never touched. Pod-to-pod traffic, on this node or across the
//! overlay, keeps its source address.

use std::path::Path;
use std::process::Stdio;

use shoal_common::Cidr;
use tokio::io::AsyncWriteExt;

use super::OverlayError;

/// The nftables table holding the masquerade rules.
pub const TABLE: &str = "shoal-masq";

/// The ruleset replacing `inet shoal-masq`: in postrouting, traffic from a pod CIDR to the
/// pod network or to multicast is left alone, anything else from a pod CIDR is masqueraded.
pub fn ruleset(cluster_cidrs: &[Cidr]) -> String {
    let mut rules = String::new();
    for cidr in cluster_cidrs {
        let (family, multicast) = if cidr.is_ipv4() {
            ("ip", "224.0.0.0/4")
        } else {
            ("ip6", "ff00::/8")
        };
        rules.push_str(&format!(
            "\t\t{family} saddr {cidr} {family} daddr {cidr} return\n\
             \t\t{family} saddr {cidr} {family} daddr {multicast} return\n\
             \t\t{family} saddr {cidr} masquerade fully-random\n"
        ));
    }
    // Declaring the table first makes the delete succeed when it does not exist yet; the
    // whole file is one transaction, so the rules are never missing in between.
    format!(
        "table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         {rules}\
         \t}}\n\
         }}\n"
    )
}

/// The ruleset removing the table (and nothing else).
pub fn removal() -> String {
    format!("table inet {TABLE}\ndelete table inet {TABLE}\n")
}

/// Runs `nft -f -` with `ruleset` on stdin. The child is forked from the calling thread, so
/// it acts in that thread's network namespace.
pub async fn nft(ruleset: &str) -> Result<(), OverlayError> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| OverlayError::Io {
            context: "running nft (is the nftables package installed?)".into(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .await
            .map_err(|source| OverlayError::Io {
                context: "writing the ruleset to nft".into(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| OverlayError::Io {
            context: "waiting for nft".into(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(OverlayError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Turns on IP forwarding for each family of `cidrs`. The files under `/proc/sys/net` act
/// on the network namespace of the thread that opens them.
pub fn enable_forwarding(cidrs: &[Cidr]) -> Result<(), OverlayError> {
    let mut paths = Vec::new();
    if cidrs.iter().any(Cidr::is_ipv4) {
        paths.push("/proc/sys/net/ipv4/ip_forward");
    }
    if cidrs.iter().any(|c| !c.is_ipv4()) {
        paths.push("/proc/sys/net/ipv6/conf/all/forwarding");
    }
    for path in paths {
        write_sysctl(Path::new(path), "1")?;
    }
    Ok(())
}

fn write_sysctl(path: &Path, value: &str) -> Result<(), OverlayError> {
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(path, value).map_err(|source| OverlayError::Io {
        context: format!("writing {value} to {}", path.display()),
        source,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_replaces_our_table_and_keeps_pod_to_pod_sources() {
        let rules = ruleset(&["10.42.0.0/16".parse().unwrap()]);
        assert_eq!(
            rules,
            "table inet shoal-masq\n\
             delete table inet shoal-masq\n\
             table inet shoal-masq {\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr 10.42.0.0/16 ip daddr 10.42.0.0/16 return\n\
             \t\tip saddr 10.42.0.0/16 ip daddr 224.0.0.0/4 return\n\
             \t\tip saddr 10.42.0.0/16 masquerade fully-random\n\
             \t}\n\
             }\n"
        );
    }

    #[test]
    fn dual_stack_gets_ip6_rules() {
        let rules = ruleset(&[
            "10.42.0.0/16".parse().unwrap(),
            "fd00:42::/56".parse().unwrap(),
        ]);
        assert!(rules.contains("ip6 saddr fd00:42::/56 ip6 daddr fd00:42::/56 return"));
        assert!(rules.contains("ip6 saddr fd00:42::/56 ip6 daddr ff00::/8 return"));
        assert!(rules.contains("ip6 saddr fd00:42::/56 masquerade"));
        assert!(rules.contains("ip saddr 10.42.0.0/16 masquerade"));
    }

    #[test]
    fn removal_names_only_our_table() {
        assert_eq!(
            removal(),
            "table inet shoal-masq\ndelete table inet shoal-masq\n"
        );
    }
}
