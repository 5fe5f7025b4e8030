//! Flags from the config file (k3s's `config.yaml`), and checks across flags. Precedence, from
//! highest: command line, `SHOAL_*` environment variable, config file, built-in default.
//!
//! The file's entries become command-line arguments placed before the user's own, so clap
//! parses one argument list (the user's later occurrences win); an entry whose environment
//! variable is set is skipped, so the environment beats the file.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::CommandFactory;
use shoal_common::CidrList;

use crate::cli::{Cli, ServerArgs, CONFIGURABLE_SUBCOMMANDS};

/// Returns `args` with the config file's flags inserted after the subcommand.
pub fn with_config_file(args: Vec<OsString>) -> Result<Vec<OsString>> {
    let Some(sub_at) = args.iter().position(|a| {
        a.to_str()
            .is_some_and(|a| CONFIGURABLE_SUBCOMMANDS.contains(&a))
    }) else {
        return Ok(args);
    };
    let subcommand = args[sub_at].to_string_lossy().into_owned();
    let (path, explicit) = config_path(&args[sub_at + 1..]);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(args),
        Err(e) => bail!("cannot read config file {}: {e}", path.display()),
    };
    let flags = flags_from_yaml(&text, &subcommand)
        .with_context(|| format!("config file {}", path.display()))?;
    let mut out = args[..=sub_at].to_vec();
    out.extend(flags.into_iter().map(OsString::from));
    out.extend_from_slice(&args[sub_at + 1..]);
    Ok(out)
}

/// The config file named by `--config`/`-c` or `SHOAL_CONFIG`, and whether it was named.
fn config_path(args: &[OsString]) -> (PathBuf, bool) {
    let mut found = None;
    let mut iter = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = iter.next() {
        if let Some(value) = arg.strip_prefix("--config=") {
            found = Some(value.to_string());
        } else if arg == "--config" || arg == "-c" {
            found = iter.next();
        }
    }
    match found.or_else(|| std::env::var("SHOAL_CONFIG").ok()) {
        Some(path) => (PathBuf::from(path), true),
        None => (PathBuf::from(shoal_common::DEFAULT_CONFIG_FILE), false),
    }
}

/// Turns a YAML mapping of flag names to values into `--flag=value` arguments.
fn flags_from_yaml(text: &str, subcommand: &str) -> Result<Vec<String>> {
    let doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| anyhow!("{e}"))?;
    let map = match doc {
        serde_yaml::Value::Null => return Ok(Vec::new()),
        serde_yaml::Value::Mapping(map) => map,
        _ => bail!("expected a mapping of flag names to values"),
    };
    let command = Cli::command();
    let sub = command
        .find_subcommand(subcommand)
        .ok_or_else(|| anyhow!("unknown subcommand {subcommand}"))?;
    let mut out = Vec::new();
    for (key, value) in map {
        let key = key
            .as_str()
            .ok_or_else(|| anyhow!("a key is not a string"))?
            .to_string();
        let arg = sub
            .get_arguments()
            .chain(command.get_arguments())
            .find(|a| a.get_long() == Some(key.as_str()))
            .ok_or_else(|| anyhow!("unknown option {key:?}"))?;
        if key == "config" {
            bail!("a config file cannot name another config file");
        }
        if arg
            .get_env()
            .is_some_and(|env| std::env::var_os(env).is_some())
        {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        let values = match value {
            serde_yaml::Value::Sequence(items) => items,
            single => vec![single],
        };
        for value in values {
            let text = match value {
                serde_yaml::Value::String(s) => s,
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Bool(b) if !takes_value => {
                    if b {
                        out.push(format!("--{key}"));
                    }
                    continue;
                }
                serde_yaml::Value::Bool(b) => b.to_string(),
                _ => bail!("value of {key:?} must be a string, number, boolean or list of them"),
            };
            if !takes_value {
                bail!("{key:?} is a switch: give it true or false");
            }
            out.push(format!("--{key}={text}"));
        }
    }
    Ok(out)
}

/// `--cluster-cidr` and `--service-cidr` together: the same IP families in the same order (a
/// dual-stack cluster needs both lists dual-stack), room for one node subnet (a /24 of IPv4, a
/// /64 of IPv6), and an IPv6 service range no larger than Kubernetes allows (/108).
pub fn check_cidrs(cluster: &CidrList, service: &CidrList) -> Result<()> {
    if !cluster.same_families(service) {
        bail!(
            "--cluster-cidr {cluster} and --service-cidr {service} must have the same IP families in the same order"
        );
    }
    for cidr in cluster.cidrs() {
        let (node, family) = if cidr.is_ipv4() {
            (24, "/24")
        } else {
            (64, "/64")
        };
        if cidr.prefix() > node {
            bail!("--cluster-cidr {cidr} is too small: it must hold at least one {family}");
        }
    }
    for cidr in service.cidrs() {
        if !cidr.is_ipv4() && cidr.prefix() < 108 {
            bail!(
                "--service-cidr {cidr} is too large: an IPv6 service range must be /108 or smaller"
            );
        }
    }
    Ok(())
}

/// Checks that need several flags together.
pub fn validate_server(args: &ServerArgs) -> Result<()> {
    crate::controller_manager::node_lifecycle(&args.kube_controller_manager_args)
        .map_err(anyhow::Error::msg)?;
    if !args
        .service_cidr
        .cidrs()
        .iter()
        .any(|c| c.contains(args.cluster_dns))
    {
        bail!(
            "--cluster-dns {} is not inside --service-cidr {}",
            args.cluster_dns,
            args.service_cidr
        );
    }
    check_cidrs(&args.cluster_cidr, &args.service_cidr)?;
    if args.cluster_domain.is_empty()
        || !args.cluster_domain.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
    {
        bail!(
            "--cluster-domain {:?} is not a DNS domain",
            args.cluster_domain
        );
    }
    if let Some(server) = &args.common.server {
        if !server.starts_with("https://") {
            bail!("--server must be an https:// URL, got {server:?}");
        }
        if args.cluster_init {
            bail!("--cluster-init starts a new cluster and --server joins one: give one of them");
        }
    }
    Ok(())
}

/// The join token from `--token` or `--token-file`.
pub fn read_token(token: &Option<String>, token_file: &Option<PathBuf>) -> Result<Option<String>> {
    match (token, token_file) {
        (Some(token), _) => Ok(Some(token.clone())),
        (None, Some(path)) => read_token_file(path).map(Some),
        (None, None) => Ok(None),
    }
}

fn read_token_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --token-file {}", path.display()))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        bail!("--token-file {} is empty", path.display());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_lists_must_agree_and_leave_room() {
        let list = |s: &str| s.parse::<CidrList>().expect("list");
        let ok = |c: &str, s: &str| check_cidrs(&list(c), &list(s));
        assert!(ok("10.42.0.0/16", "10.43.0.0/16").is_ok());
        assert!(ok("10.42.0.0/16,fd00:42::/56", "10.43.0.0/16,fd00:43::/112").is_ok());
        assert!(ok("fd00:42::/56", "fd00:43::/112").is_ok());
        assert!(ok("fd00:42::/56,10.42.0.0/16", "fd00:43::/108,10.43.0.0/16").is_ok());
        for (cluster, service, needle) in [
            (
                "10.42.0.0/16,fd00:42::/56",
                "10.43.0.0/16",
                "same IP families",
            ),
            (
                "10.42.0.0/16,fd00:42::/56",
                "fd00:43::/112,10.43.0.0/16",
                "same IP families",
            ),
            ("fd00:42::/56", "10.43.0.0/16", "same IP families"),
            ("10.42.0.0/25", "10.43.0.0/16", "at least one /24"),
            (
                "10.42.0.0/16,fd00:42::/65",
                "10.43.0.0/16,fd00:43::/112",
                "at least one /64",
            ),
            (
                "10.42.0.0/16,fd00:42::/56",
                "10.43.0.0/16,fd00:43::/64",
                "/108 or smaller",
            ),
        ] {
            let err = ok(cluster, service).expect_err(cluster).to_string();
            assert!(err.contains(needle), "{cluster} {service}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn yaml_becomes_flags() {
        let flags = flags_from_yaml(
            "data-dir: /srv/shoal\ncluster-init: true\ndisable-agent: false\nhttps-listen-port: 7443\n",
            "server",
        )
        .expect("valid");
        assert_eq!(
            flags,
            [
                "--data-dir=/srv/shoal",
                "--cluster-init",
                "--https-listen-port=7443"
            ]
        );
    }

    #[test]
    fn bad_yaml_is_refused() {
        assert!(flags_from_yaml("no-such-flag: 1", "server").is_err());
        assert!(flags_from_yaml("- a\n- b", "server").is_err());
        assert!(flags_from_yaml("cluster-init: {a: 1}", "server").is_err());
        assert!(flags_from_yaml("cluster-init: [", "server").is_err());
        // Entries are checked against the subcommand's own flags: node flags are both the
        // agent's and the server's (which runs an agent), server flags are not the agent's.
        assert!(flags_from_yaml("cluster-init: true", "agent").is_err());
        assert!(flags_from_yaml("node-ip: 10.0.0.1", "server").is_ok());
        assert!(flags_from_yaml("node-ip: 10.0.0.1", "agent").is_ok());
    }
}
