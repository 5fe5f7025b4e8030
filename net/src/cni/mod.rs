//! The node's pod network plugin, `shoal-cni`, per the CNI specification (1.0.0; 0.4.0 and
//! 0.3.x configurations are accepted too, as containerd 1.6 sends them).
//!
//! containerd execs the `shoal` binary as `shoal-cni` with the `CNI_*` environment and the
//! network configuration on stdin; [`run_from_env`] does the rest. ADD puts the pod on the
//! node's bridge (created on first use, holding the gateway): a veth pair whose host side
//! (`veth` + 8 hex digits) is a hairpin bridge port and whose other side becomes the pod's
//! `eth0`, with an address from [`ipam`], `lo` up and a default route via the gateway. DEL
//! deletes the pair and releases the address; CHECK verifies the pod's interface and address.
//!
//! Modules: [`request`] (the environment), [`config`] (the configuration and the
//! `.conflist`), [`ipam`] (file-per-address allocation), [`link`] (netlink), [`netns`]
//! (namespaces), [`plugin`] (the commands), [`result`] (result documents), [`error`].

pub mod config;
pub mod error;
pub mod ipam;
pub mod link;
pub mod loopback;
pub mod netns;
pub mod plugin;
pub mod request;
pub mod result;

use std::io::{Read, Write};

pub use config::{network_config, NetConf};
pub use error::CniError;
pub use ipam::{reconcile, Ipam};
pub use plugin::{execute, host_veth_name};
pub use request::{Command, Request};
pub use result::CniResult;

/// The plugin's entry point: reads the request from the environment and the configuration
/// from stdin, runs the command, prints its result (or CNI error document) on stdout and
/// returns the process exit code.
pub fn run_from_env() -> i32 {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let (out, code) = match read {
        Ok(_) => run(Request::from_env(), &stdin),
        Err(source) => run(
            Err(CniError::Io {
                context: "reading the network configuration from stdin".into(),
                source,
            }),
            &stdin,
        ),
    };
    let mut stdout = std::io::stdout().lock();
    if !out.is_empty() {
        let _ = writeln!(stdout, "{out}");
    }
    let _ = stdout.flush();
    code
}

/// [`run_from_env`] without the process: what to print and the exit code.
pub fn run(request: Result<Request, CniError>, stdin: &[u8]) -> (String, i32) {
    match request.and_then(|request| execute(&request, stdin)) {
        Ok(out) => (out, 0),
        Err(err) => {
            let version =
                config::peek_version(stdin).unwrap_or_else(|| config::CURRENT_VERSION.into());
            (err.to_json(&version), 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_become_error_documents_in_the_config_version() {
        let (out, code) = run(
            Err(CniError::InvalidEnvironment(
                "CNI_COMMAND is not set".into(),
            )),
            br#"{"cniVersion":"0.4.0"}"#,
        );
        assert_eq!(code, 1);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["code"], 4);

        let req = Request::from_lookup(|k| match k {
            "CNI_COMMAND" => Some("ADD".into()),
            "CNI_CONTAINERID" => Some("c1".into()),
            "CNI_IFNAME" => Some("eth0".into()),
            "CNI_NETNS" => Some("/nonexistent".into()),
            _ => None,
        });
        let (out, code) = run(req, br#"{"cniVersion":"1.0.0","name":"n"}"#);
        assert_eq!(code, 1);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["code"], 7, "{out}");
    }
}
