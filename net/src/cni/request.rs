//! The `CNI_*` environment a runtime execs the plugin with.

use std::path::PathBuf;

use super::config::valid_ifname;
use super::error::CniError;

/// The operation a runtime asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

/// One invocation: the command and the container it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for VERSION).
    pub container_id: String,
    /// `CNI_NETNS`: the container's network namespace (may be absent for DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`: the interface to create inside the namespace (empty for VERSION).
    pub ifname: String,
    /// `CNI_ARGS`, as `KEY=VALUE` pairs (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, …).
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`: where the runtime looks for plugins (unused: this plugin delegates to none).
    pub path: Vec<PathBuf>,
}

impl Request {
    /// Reads the request from the process environment.
    pub fn from_env() -> Result<Request, CniError> {
        Request::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads the request through `get` (the environment, or a table in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Request, CniError> {
        let get = |key: &str| get(key).filter(|v| !v.is_empty());
        let missing = |key: &str| CniError::InvalidEnvironment(format!("{key} is not set"));
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(CniError::InvalidEnvironment(format!(
                    "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION"
                )))
            }
            None => return Err(missing("CNI_COMMAND")),
        };
        if command == Command::Version {
            return Ok(Request {
                command,
                container_id: String::new(),
                netns: None,
                ifname: String::new(),
                args: Vec::new(),
                path: Vec::new(),
            });
        }
        let container_id = get("CNI_CONTAINERID").ok_or_else(|| missing("CNI_CONTAINERID"))?;
        if !container_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(CniError::InvalidEnvironment(format!(
                "CNI_CONTAINERID {container_id:?} has characters other than letters, digits, _ . -"
            )));
        }
        let ifname = get("CNI_IFNAME").ok_or_else(|| missing("CNI_IFNAME"))?;
        if !valid_ifname(&ifname) {
            return Err(CniError::InvalidEnvironment(format!(
                "CNI_IFNAME {ifname:?} is not a valid interface name"
            )));
        }
        let netns = get("CNI_NETNS").map(PathBuf::from);
        if netns.is_none() && command != Command::Del {
            return Err(missing("CNI_NETNS"));
        }
        let args = get("CNI_ARGS")
            .map(|args| parse_args(&args))
            .transpose()?
            .unwrap_or_default();
        let path = get("CNI_PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        Ok(Request {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }

    /// The value of one `CNI_ARGS` key.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_args(args: &str) -> Result<Vec<(String, String)>, CniError> {
    args.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    CniError::InvalidEnvironment(format!(
                        "CNI_ARGS entry {pair:?} is not KEY=VALUE"
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(vars: &[(&str, &str)]) -> Result<Request, CniError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Request::from_lookup(|key| vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
    }

    #[test]
    fn reads_an_add() {
        let req = request(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
            ),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ])
        .expect("valid");
        assert_eq!(req.command, Command::Add);
        assert_eq!(req.netns, Some(PathBuf::from("/var/run/netns/cni-1")));
        assert_eq!(req.arg("K8S_POD_NAME"), Some("web-0"));
        assert_eq!(req.path.len(), 2);
    }

    #[test]
    fn version_needs_nothing_else_and_del_needs_no_netns() {
        assert_eq!(
            request(&[("CNI_COMMAND", "VERSION")]).expect("ok").command,
            Command::Version
        );
        let del = request(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ])
        .expect("ok");
        assert_eq!(del.netns, None);
    }

    #[test]
    fn rejects_bad_environments() {
        let cases: &[&[(&str, &str)]] = &[
            &[],
            &[("CNI_COMMAND", "GC2")],
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/n"),
            ],
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_NETNS", "/n"),
            ],
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0"),
            ],
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a/b"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/n"),
            ],
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0:1"),
                ("CNI_NETNS", "/n"),
            ],
            &[
                ("CNI_COMMAND", "CHECK"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/n"),
                ("CNI_ARGS", "novalue"),
            ],
        ];
        for vars in cases {
            let err = request(vars).expect_err("invalid");
            assert_eq!(err.code(), 4, "{vars:?}");
        }
    }
}
