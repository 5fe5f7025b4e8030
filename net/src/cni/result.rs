//! The results printed on stdout: ADD's result and VERSION's answer, in the configuration's
//! CNI version (0.3.x and 0.4.0 results carry `"version": "4"` or `"6"` on each IP; 1.0.0's
//! do not).

use std::net::IpAddr;

use serde_json::{json, Value};

use super::config::SUPPORTED_VERSIONS;

/// An interface the plugin created: the host veth, or the container's interface (with the
/// path of its network namespace as `sandbox`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub sandbox: Option<String>,
}

/// An address given to an interface; `interface` indexes [`CniResult::interfaces`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpAddr,
    pub prefix: u8,
    pub gateway: IpAddr,
    pub interface: usize,
}

/// A route added inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix: u8,
    pub gw: IpAddr,
}

/// The result of a successful ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
}

impl CniResult {
    /// The result document in `cni_version`'s form.
    pub fn to_value(&self, cni_version: &str) -> Value {
        let legacy = cni_version.starts_with("0.");
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut v = json!({ "name": i.name, "mac": i.mac });
                if let Some(sandbox) = &i.sandbox {
                    v["sandbox"] = json!(sandbox);
                }
                v
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut v = json!({
                    "address": format!("{}/{}", ip.address, ip.prefix),
                    "gateway": ip.gateway.to_string(),
                    "interface": ip.interface,
                });
                if legacy {
                    v["version"] = json!(if ip.address.is_ipv4() { "4" } else { "6" });
                }
                v
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| json!({ "dst": format!("{}/{}", r.dst, r.prefix), "gw": r.gw.to_string() }))
            .collect();
        json!({
            "cniVersion": cni_version,
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": {},
        })
    }

    pub fn to_json(&self, cni_version: &str) -> String {
        self.to_value(cni_version).to_string()
    }
}

/// VERSION's answer: the versions this plugin speaks.
pub fn version_json(cni_version: &str) -> String {
    json!({ "cniVersion": cni_version, "supportedVersions": SUPPORTED_VERSIONS }).to_string()
}

/// A MAC address as CNI writes it (`aa:bb:cc:dd:ee:ff`).
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        let gw: IpAddr = "10.42.0.1".parse().expect("ip");
        CniResult {
            interfaces: vec![
                Interface {
                    name: "veth0a1b2c3d".into(),
                    mac: format_mac(&[0x0a, 0x58, 0, 1, 2, 0xff]),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:2a:00:02".into(),
                    sandbox: Some("/var/run/netns/cni-1".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.42.0.2".parse().expect("ip"),
                prefix: 24,
                gateway: gw,
                interface: 1,
            }],
            routes: vec![Route {
                dst: "0.0.0.0".parse().expect("ip"),
                prefix: 0,
                gw,
            }],
        }
    }

    #[test]
    fn result_in_1_0_0() {
        let v: Value = serde_json::from_str(&sample().to_json("1.0.0")).expect("json");
        assert_eq!(
            v,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "veth0a1b2c3d", "mac": "0a:58:00:01:02:ff"},
                    {"name": "eth0", "mac": "0a:58:0a:2a:00:02", "sandbox": "/var/run/netns/cni-1"}
                ],
                "ips": [{"address": "10.42.0.2/24", "gateway": "10.42.0.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.42.0.1"}],
                "dns": {}
            })
        );
    }

    #[test]
    fn result_in_0_4_0_and_0_3_1_carries_ip_versions() {
        for version in ["0.4.0", "0.3.1"] {
            let v = sample().to_value(version);
            assert_eq!(v["cniVersion"], version);
            assert_eq!(v["ips"][0]["version"], "4");
            assert_eq!(v["ips"][0]["interface"], 1);
        }
        // A dual-stack pod's IPv6 address says so.
        let mut dual = sample();
        let gw6: IpAddr = "fd00:42::1".parse().expect("ip");
        dual.ips.push(IpConfig {
            address: "fd00:42::2".parse().expect("ip"),
            prefix: 64,
            gateway: gw6,
            interface: 1,
        });
        dual.routes.push(Route {
            dst: "::".parse().expect("ip"),
            prefix: 0,
            gw: gw6,
        });
        let v = dual.to_value("0.4.0");
        assert_eq!(v["ips"][1]["version"], "6");
        assert_eq!(v["ips"][1]["address"], "fd00:42::2/64");
        assert_eq!(v["routes"][1], json!({"dst": "::/0", "gw": "fd00:42::1"}));
        assert!(dual.to_value("1.0.0")["ips"][1].get("version").is_none());
    }

    #[test]
    fn version_lists_supported_versions() {
        let v: Value = serde_json::from_str(&version_json("0.4.0")).expect("json");
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
        );
    }
}
