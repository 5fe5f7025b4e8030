//! The network configuration: the plugin's JSON on stdin, and the `.conflist` the agent writes.
//!
//! A plugin of type `shoal-cni` takes `bridge` (default `shoal0`), `subnet` (the node's pod
//! CIDR; its first address is the gateway, on the bridge) or `subnets` (a dual-stack node's
//! pod CIDRs, one per family, the primary first), `mtu` (optional), `dataDir`
//! (the IPAM state directory) and `hairpinMode` (default true), besides CNI's own `cniVersion`
//! and `name`. Unknown fields (`prevResult`, `runtimeConfig`, …) are ignored.

use std::net::IpAddr;
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

/// One of the node's pod subnets (one per address family): its first address is the
/// gateway, on the bridge; the network address (and, for IPv4, the broadcast address) is
/// never a pod's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    cidr: Cidr,
}

impl Subnet {
    /// A pod subnet: IPv4 up to /30, IPv6 up to /126 (room for a gateway and one pod).
    pub fn new(cidr: Cidr) -> Option<Self> {
        let longest = if cidr.is_ipv4() { 30 } else { 126 };
        (cidr.prefix() <= longest).then_some(Subnet { cidr })
    }

    pub fn cidr(&self) -> Cidr {
        self.cidr
    }

    pub fn network(&self) -> IpAddr {
        self.cidr.addr()
    }

    pub fn prefix(&self) -> u8 {
        self.cidr.prefix()
    }

    pub fn is_ipv4(&self) -> bool {
        self.cidr.is_ipv4()
    }

    /// The first address after the network address: the gateway, on the bridge.
    pub fn gateway(&self) -> IpAddr {
        self.cidr.nth(1).unwrap_or(self.cidr.addr())
    }

    /// The offsets (0 is the network address) pods' addresses come from: after the gateway,
    /// up to the last address (IPv4: the one before the broadcast address).
    pub fn host_offsets(&self) -> (u128, u128) {
        let size = self.cidr.size();
        let last = if self.is_ipv4() { size - 2 } else { size - 1 };
        (2, last)
    }

    /// The `n`th address of the subnet.
    pub fn nth(&self, n: u128) -> Option<IpAddr> {
        self.cidr.nth(n)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(ip)
    }

    /// Where `ip` lies in the subnet, if inside.
    pub fn offset(&self, ip: IpAddr) -> Option<u128> {
        self.cidr.offset(ip)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.cidr.fmt(f)
    }
}

/// A parsed and validated `shoal-cni` network configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub bridge: String,
    /// The node's pod subnets, one per address family; the first is the primary one.
    pub subnets: Vec<Subnet>,
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
    subnets: Option<Vec<String>>,
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
        let subnets = parse_subnets(raw.subnet.iter().chain(raw.subnets.iter().flatten()))?;
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
            subnets,
            mtu: raw.mtu,
            data_dir,
            hairpin_mode: raw.hairpin_mode.unwrap_or(true),
        })
    }
}

/// The pod subnets of `subnet` and `subnets` together: at least one, at most one per family.
fn parse_subnets<'a>(texts: impl Iterator<Item = &'a String>) -> Result<Vec<Subnet>, CniError> {
    let mut subnets: Vec<Subnet> = Vec::new();
    for text in texts {
        let cidr: Cidr = text
            .parse()
            .map_err(|e| CniError::InvalidConfig(format!("subnet: {e}")))?;
        let subnet = Subnet::new(cidr).ok_or_else(|| {
            CniError::InvalidConfig(format!(
                "subnet {cidr}: the prefix must be at most /30 (IPv4) or /126 (IPv6)"
            ))
        })?;
        if subnets.iter().any(|s| s.is_ipv4() == subnet.is_ipv4()) {
            return Err(CniError::InvalidConfig(format!(
                "subnet {cidr}: only one subnet per address family"
            )));
        }
        subnets.push(subnet);
    }
    if subnets.is_empty() {
        return Err(CniError::InvalidConfig("subnet is missing".into()));
    }
    Ok(subnets)
}

/// Where IPAM state lives when the configuration names no `dataDir`.
pub fn default_data_dir(network: &str) -> PathBuf {
    Path::new(shoal_common::DEFAULT_DATA_DIR)
        .join("agent/cni/networks")
        .join(network)
}

/// The `.conflist` the agent writes into containerd's CNI configuration directory: CNI 1.0.0,
/// network `shoal`, one plugin of type `shoal-cni` on the default bridge. One subnet is
/// written as `subnet`, as before dual-stack; a dual-stack node's as `subnets`.
pub fn network_config(subnets: &[Cidr], mtu: u32, data_dir: &Path) -> String {
    let mut plugin = serde_json::json!({
        "type": PLUGIN_TYPE,
        "bridge": DEFAULT_BRIDGE,
        "mtu": mtu,
        "dataDir": data_dir.to_string_lossy(),
        "hairpinMode": true,
    });
    match subnets {
        [one] => plugin["subnet"] = serde_json::json!(one.to_string()),
        many => {
            plugin["subnets"] =
                serde_json::json!(many.iter().map(Cidr::to_string).collect::<Vec<_>>())
        }
    }
    let doc = serde_json::json!({
        "cniVersion": CURRENT_VERSION,
        "name": NETWORK_NAME,
        "plugins": [plugin],
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

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
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
        assert_eq!(conf.subnets.len(), 1);
        let subnet = conf.subnets[0];
        assert_eq!(subnet.to_string(), "10.42.3.0/24");
        assert_eq!(subnet.gateway(), ip("10.42.3.1"));
        // .2 to .254: the broadcast address is nobody's.
        assert_eq!(subnet.host_offsets(), (2, 254));
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
        assert!(conf.subnets[0].contains(ip("10.1.200.3")));
        assert!(!conf.subnets[0].contains(ip("10.2.0.1")));
    }

    #[test]
    fn parses_dual_stack_subnets() {
        let conf = parse(
            r#"{"cniVersion":"1.0.0","name":"n","subnets":["10.42.3.0/24","fd00:42:0:3::/64"]}"#,
        )
        .expect("valid");
        let got: Vec<String> = conf.subnets.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["10.42.3.0/24", "fd00:42:0:3::/64"]);
        let v6 = conf.subnets[1];
        assert_eq!(v6.gateway(), ip("fd00:42:0:3::1"));
        // No broadcast address in IPv6: the last address is a pod's too.
        assert_eq!(v6.host_offsets(), (2, (1u128 << 64) - 1));
        // IPv6 alone, and `subnet` with `subnets`, are fine too.
        let v6_only =
            parse(r#"{"cniVersion":"1.0.0","name":"n","subnet":"fd00::/64"}"#).expect("valid");
        assert_eq!(v6_only.subnets[0].to_string(), "fd00::/64");
        let both = parse(
            r#"{"cniVersion":"1.0.0","name":"n","subnet":"fd00::/64","subnets":["10.0.0.0/24"]}"#,
        )
        .expect("valid");
        assert_eq!(both.subnets[0].to_string(), "fd00::/64");
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
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"fd00::/127"}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnets":["10.0.0.0/24","10.1.0.0/24"]}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnets":["fd00::/64","fd01::/64"]}"#,
                7,
            ),
            (r#"{"cniVersion":"1.0.0","name":"n","subnets":[]}"#, 7),
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
        let text = network_config(&[subnet], 1450, Path::new("/var/lib/shoal/agent/cni/ipam"));
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
        assert_eq!(conf.subnets[0].to_string(), "10.42.7.0/24");
        assert_eq!(conf.mtu, Some(1450));
        assert_eq!(conf.bridge, DEFAULT_BRIDGE);
        assert_eq!(conf.data_dir, Path::new("/var/lib/shoal/agent/cni/ipam"));

        // A dual-stack node's list keeps its order (the primary family first).
        let v6: Cidr = "fd00:42:0:7::/64".parse().expect("cidr");
        let text = network_config(&[subnet, v6], 1450, Path::new("/x"));
        let list: serde_json::Value = serde_json::from_str(&text).expect("json");
        let mut plugin = list["plugins"][0].clone();
        assert!(plugin.get("subnet").is_none());
        plugin["cniVersion"] = list["cniVersion"].clone();
        plugin["name"] = list["name"].clone();
        let conf = NetConf::parse(plugin.to_string().as_bytes()).expect("valid");
        let got: Vec<Cidr> = conf.subnets.iter().map(Subnet::cidr).collect();
        assert_eq!(got, [subnet, v6]);
    }
}
