//! The network configuration: the plugin's JSON on stdin, and the `.conflist` the agent writes.
//!
//! A plugin of type `shoal-cni` takes `bridge` (default `shoal0`), `subnet` (the node's pod
//! CIDR, IPv4; its first address is the gateway, on the bridge), `mtu` (optional), `dataDir`
//! (the IPAM state directory) and `hairpinMode` (default true), besides CNI's own `cniVersion`
//! and `name`. Unknown fields (`prevResult`, `runtimeConfig`, …) are ignored.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use shoal_common::Cidr;

use super::error::CniError;

/// CNI versions this plugin speaks; a result is written in the configuration's version.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// The version of the configuration [`network_config`] writes.
pub const CURRENT_VERSION: &str = "1.0.0";
/// The plugin `type` containerd looks up in its CNI binary directory.
pub const PLUGIN_TYPE: &str = "shoal-cni";
/// The network name in the `.conflist`.
pub const NETWORK_NAME: &str = "shoal";
/// The bridge used when the configuration names none.
pub const DEFAULT_BRIDGE: &str = "shoal0";

/// An IPv4 subnet: the node's pod CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// A subnet from its network address and prefix length; `None` when host bits are set or
    /// the prefix is over 32.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Option<Self> {
        let mask = Self::mask_of(prefix)?;
        (u32::from(network) & !mask == 0).then_some(Ipv4Net { network, prefix })
    }

    fn mask_of(prefix: u8) -> Option<u32> {
        match prefix {
            0 => Some(0),
            1..=32 => Some(u32::MAX << (32 - u32::from(prefix))),
            _ => None,
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The last address (the broadcast address).
    pub fn broadcast(&self) -> Ipv4Addr {
        let mask = Self::mask_of(self.prefix).unwrap_or(u32::MAX);
        Ipv4Addr::from(u32::from(self.network) | !mask)
    }

    /// The first address after the network address: the gateway, on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).wrapping_add(1))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = Self::mask_of(self.prefix).unwrap_or(u32::MAX);
        u32::from(ip) & mask == u32::from(self.network)
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A parsed and validated `shoal-cni` network configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub mtu: Option<u32>,
    pub data_dir: PathBuf,
    pub hairpin_mode: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    name: String,
    bridge: Option<String>,
    subnet: Option<String>,
    mtu: Option<u32>,
    data_dir: Option<PathBuf>,
    hairpin_mode: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VersionOnly {
    cni_version: Option<String>,
}

/// The `cniVersion` of a configuration if one can be read, for reporting errors in it.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    serde_json::from_slice::<VersionOnly>(stdin)
        .ok()?
        .cni_version
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
}

/// Checks that `version` is one this plugin speaks.
pub fn check_version(version: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(CniError::IncompatibleVersion(version.to_string()))
    }
}

/// Whether `name` can be a Linux interface name.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

impl NetConf {
    /// Parses the configuration a runtime passes on stdin.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let version: VersionOnly = serde_json::from_slice(stdin)?;
        let version = version
            .cni_version
            .ok_or_else(|| CniError::InvalidConfig("cniVersion is missing".into()))?;
        check_version(&version)?;
        let raw: Raw = serde_json::from_slice(stdin)?;
        if raw.name.is_empty() {
            return Err(CniError::InvalidConfig("name is empty".into()));
        }
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        if !valid_ifname(&bridge) {
            return Err(CniError::InvalidConfig(format!(
                "bridge {bridge:?} is not a valid interface name"
            )));
        }
        let subnet = raw
            .subnet
            .ok_or_else(|| CniError::InvalidConfig("subnet is missing".into()))?;
        let cidr: Cidr = subnet
            .parse()
            .map_err(|e| CniError::InvalidConfig(format!("subnet: {e}")))?;
        let subnet = match cidr.addr() {
            IpAddr::V4(network) if cidr.prefix() <= 30 => Ipv4Net::new(network, cidr.prefix()),
            IpAddr::V4(_) => None,
            IpAddr::V6(_) => {
                return Err(CniError::InvalidConfig(format!(
                    "subnet {cidr}: only IPv4 is supported"
                )))
            }
        }
        .ok_or_else(|| {
            CniError::InvalidConfig(format!("subnet {cidr}: the prefix must be at most /30"))
        })?;
        if let Some(mtu) = raw.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(CniError::InvalidConfig(format!(
                    "mtu {mtu} is outside 68..=65535"
                )));
            }
        }
        let data_dir = raw.data_dir.unwrap_or_else(|| default_data_dir(&raw.name));
        if !data_dir.is_absolute() {
            return Err(CniError::InvalidConfig(format!(
                "dataDir {} is not an absolute path",
                data_dir.display()
            )));
        }
        Ok(NetConf {
            cni_version: version,
            name: raw.name,
            bridge,
            subnet,
            mtu: raw.mtu,
            data_dir,
            hairpin_mode: raw.hairpin_mode.unwrap_or(true),
        })
    }
}

/// Where IPAM state lives when the configuration names no `dataDir`.
pub fn default_data_dir(network: &str) -> PathBuf {
    Path::new(shoal_common::DEFAULT_DATA_DIR)
        .join("agent/cni/networks")
        .join(network)
}

/// The `.conflist` the agent writes into containerd's CNI configuration directory: CNI 1.0.0,
/// network `shoal`, one plugin of type `shoal-cni` on the default bridge.
pub fn network_config(subnet: &Cidr, mtu: u32, data_dir: &Path) -> String {
    let doc = serde_json::json!({
        "cniVersion": CURRENT_VERSION,
        "name": NETWORK_NAME,
        "plugins": [{
            "type": PLUGIN_TYPE,
            "bridge": DEFAULT_BRIDGE,
            "subnet": subnet.to_string(),
            "mtu": mtu,
            "dataDir": data_dir.to_string_lossy(),
            "hairpinMode": true,
        }],
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<NetConf, CniError> {
        NetConf::parse(json.as_bytes())
    }

    #[test]
    fn parses_with_defaults() {
        let conf = parse(
            r#"{"cniVersion":"0.4.0","name":"shoal","type":"shoal-cni","subnet":"10.42.3.0/24",
               "prevResult":{"ips":[]},"runtimeConfig":{}}"#,
        )
        .expect("valid");
        assert_eq!(conf.cni_version, "0.4.0");
        assert_eq!(conf.bridge, "shoal0");
        assert_eq!(conf.subnet.to_string(), "10.42.3.0/24");
        assert_eq!(conf.subnet.gateway(), Ipv4Addr::new(10, 42, 3, 1));
        assert_eq!(conf.subnet.broadcast(), Ipv4Addr::new(10, 42, 3, 255));
        assert_eq!(conf.mtu, None);
        assert!(conf.hairpin_mode);
        assert_eq!(
            conf.data_dir,
            Path::new("/var/lib/shoal/agent/cni/networks/shoal")
        );
    }

    #[test]
    fn parses_every_field() {
        let conf = parse(
            r#"{"cniVersion":"1.0.0","name":"n","type":"shoal-cni","bridge":"br9",
               "subnet":"10.1.0.0/16","mtu":1450,"dataDir":"/tmp/x","hairpinMode":false}"#,
        )
        .expect("valid");
        assert_eq!(conf.bridge, "br9");
        assert_eq!(conf.mtu, Some(1450));
        assert_eq!(conf.data_dir, Path::new("/tmp/x"));
        assert!(!conf.hairpin_mode);
        assert!(conf.subnet.contains(Ipv4Addr::new(10, 1, 200, 3)));
        assert!(!conf.subnet.contains(Ipv4Addr::new(10, 2, 0, 1)));
    }

    #[test]
    fn rejects_bad_configs_with_their_codes() {
        let cases = [
            (
                r#"{"cniVersion":"0.2.0","name":"n","subnet":"10.0.0.0/24"}"#,
                1,
            ),
            (r#"{"name":"n","subnet":"10.0.0.0/24"}"#, 7),
            (r#"not json"#, 6),
            (r#"{"cniVersion":"1.0.0","name":"n","subnet":7}"#, 6),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, 7),
            (
                r#"{"cniVersion":"1.0.0","name":"","subnet":"10.0.0.0/24"}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"10.0.0.1/24"}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"10.0.0.0/31"}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"fd00::/64"}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"10.0.0.0/24","mtu":20}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"10.0.0.0/24","bridge":"a/b"}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"10.0.0.0/24","bridge":"waytoolongname0"}"#,
                0,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"10.0.0.0/24","bridge":"waytoolongname00"}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"10.0.0.0/24","dataDir":"rel"}"#,
                7,
            ),
        ];
        for (json, code) in cases {
            match parse(json) {
                Ok(_) => assert_eq!(code, 0, "{json} parsed"),
                Err(e) => assert_eq!(e.code(), code, "{json}: {e}"),
            }
        }
    }

    #[test]
    fn peeks_only_supported_versions() {
        assert_eq!(
            peek_version(br#"{"cniVersion":"0.3.1"}"#).as_deref(),
            Some("0.3.1")
        );
        assert_eq!(peek_version(br#"{"cniVersion":"7"}"#), None);
        assert_eq!(peek_version(b"junk"), None);
    }

    #[test]
    fn conflist_round_trips_through_the_parser() {
        let subnet: Cidr = "10.42.7.0/24".parse().expect("cidr");
        let text = network_config(&subnet, 1450, Path::new("/var/lib/shoal/agent/cni/ipam"));
        let list: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(list["cniVersion"], "1.0.0");
        assert_eq!(list["name"], "shoal");
        let plugins = list["plugins"].as_array().expect("plugins");
        assert_eq!(plugins.len(), 1);
        assert_eq!(plugins[0]["type"], "shoal-cni");
        // libcni hands each plugin its entry with the list's name and version added.
        let mut plugin = plugins[0].clone();
        plugin["cniVersion"] = list["cniVersion"].clone();
        plugin["name"] = list["name"].clone();
        let conf = NetConf::parse(plugin.to_string().as_bytes()).expect("valid");
        assert_eq!(conf.subnet.to_string(), "10.42.7.0/24");
        assert_eq!(conf.mtu, Some(1450));
        assert_eq!(conf.bridge, DEFAULT_BRIDGE);
        assert_eq!(conf.data_dir, Path::new("/var/lib/shoal/agent/cni/ipam"));
    }
}
