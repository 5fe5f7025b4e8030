//! The `loopback` plugin, which containerd's CRI plugin runs for every pod before the pod
//! network: brings `lo` up inside the pod's namespace. Served by the same binary (linked as
//! `loopback` beside `shoal-cni`), so no CNI plugins package is needed.

use std::io::{Read, Write};
use std::path::Path;

use super::config::{self, CURRENT_VERSION};
use super::error::CniError;
use super::link::Netlink;
use super::netns;
use super::request::{Command, Request};
use super::result;

/// The plugin's name in a network configuration.
pub const LOOPBACK_PLUGIN: &str = "loopback";

/// Entry point: like [`super::run_from_env`], for the loopback plugin.
pub fn loopback_from_env() -> i32 {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let version = config::peek_version(&stdin).unwrap_or_else(|| CURRENT_VERSION.into());
    let (out, code) = match Request::from_env().and_then(|request| execute(&request, &version)) {
        Ok(out) => (out, 0),
        Err(err) => (err.to_json(&version), 1),
    };
    let mut stdout = std::io::stdout().lock();
    if !out.is_empty() {
        let _ = writeln!(stdout, "{out}");
    }
    let _ = stdout.flush();
    code
}

/// Runs one loopback command; returns what to print.
pub fn execute(request: &Request, version: &str) -> Result<String, CniError> {
    match request.command {
        Command::Version => Ok(result::version_json(version)),
        // Nothing to undo or verify: `lo` goes with the namespace.
        Command::Del | Command::Check => Ok(String::new()),
        Command::Add => {
            let path = request
                .netns
                .as_deref()
                .ok_or_else(|| CniError::InvalidEnvironment("CNI_NETNS is not set".into()))?;
            bring_up_lo(path)?;
            Ok(serde_json::json!({
                "cniVersion": version,
                "interfaces": [{"name": "lo", "sandbox": path.display().to_string()}],
                "ips": [{"address": "127.0.0.1/8", "interface": 0}],
                "dns": {},
            })
            .to_string())
        }
    }
}

fn bring_up_lo(path: &Path) -> Result<(), CniError> {
    let file = netns::open(path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|source| CniError::Io {
            context: "starting the netlink runtime".into(),
            source,
        })?;
    runtime.block_on(async {
        let netlink = Netlink::in_netns(&file, path)?;
        let lo = netlink
            .link("lo")
            .await?
            .ok_or_else(|| CniError::InvalidEnvironment("the namespace has no lo".into()))?;
        netlink.set_up(lo.index, "lo").await
    })
}
