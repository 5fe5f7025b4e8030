//! Real kubectl against a test cluster: run it with a kubeconfig and a private discovery cache,
//! fail the test on errors, parse JSON output.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// kubectl 1.33; a missing one fails the test (never a silent skip).
pub fn kubectl_binary() -> PathBuf {
    [
        "/usr/lib/google-cloud-sdk/bin",
        "/usr/local/bin",
        "/usr/bin",
    ]
    .iter()
    .map(|dir| Path::new(dir).join("kubectl.1.33"))
    .find(|p| p.exists())
    .unwrap_or_else(|| panic!("kubectl.1.33 not found: this test needs kubectl 1.33"))
}

/// kubectl bound to one cluster.
#[derive(Debug, Clone)]
pub struct Kubectl {
    pub binary: PathBuf,
    pub kubeconfig: PathBuf,
    /// `HOME` for kubectl: its discovery cache stays with the test.
    pub home: PathBuf,
}

impl Kubectl {
    pub fn run(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut child = Command::new(&self.binary)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HOME", &self.home)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(input.as_bytes()).expect("kubectl stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// An HTTP GET of `path` from pod `from` to `ip:port` (IPv4 or IPv6), with busybox `nc`
    /// (its static `wget` crashes resolving even numeric addresses): the body, once it
    /// answers within a minute.
    pub fn http_get_in_pod(&self, from: &str, ip: &str, port: u16, path: &str) -> String {
        let script = format!("printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}");
        crate::cluster::eventually(
            &format!("{from} fetches http://{ip}:{port}{path}"),
            std::time::Duration::from_secs(60),
            || {
                let out = self.run(&["exec", from, "--", "sh", "-c", &script], None);
                let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
                let (head, body) = text.split_once("\n\n")?;
                (out.status.success() && head.starts_with("HTTP/1."))
                    .then(|| body.trim().to_string())
            },
        )
    }

    /// Runs kubectl and returns its stdout, failing the test if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        ok(self.run(args, None), &args.join(" "))
    }

    pub fn apply(&self, manifest: &str) {
        ok(self.run(&["apply", "-f", "-"], Some(manifest)), "apply");
    }

    /// The object, or `None` when kubectl says NotFound.
    pub fn get(&self, args: &[&str]) -> Option<Value> {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        let out = self.run(&args, None);
        if out.status.success() {
            return Some(serde_json::from_slice(&out.stdout).expect("kubectl JSON"));
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("NotFound"), "kubectl {args:?}: {err}");
        None
    }

    /// The `items` of a list.
    pub fn items(&self, args: &[&str]) -> Vec<Value> {
        match self.json(args)["items"].as_array() {
            Some(items) => items.clone(),
            None => panic!("no items from kubectl {args:?}"),
        }
    }

    /// Deletes every workload and pod, without waiting: workload controllers first, or they
    /// would replace the pods being deleted; pods through their agents, so sandboxes' network
    /// namespaces and veths are torn down (containers of a killed agent outlive the test).
    pub fn delete_all_pods(&self) {
        let _ = self.run(
            &[
                "delete",
                "deployments,replicasets,statefulsets,daemonsets,jobs,cronjobs",
                "--all",
                "-A",
                "--wait=false",
            ],
            None,
        );
        let _ = self.run(
            &[
                "delete",
                "pods",
                "--all",
                "-A",
                "--grace-period=0",
                "--force",
                "--wait=false",
            ],
            None,
        );
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&args)).expect("kubectl JSON")
    }
}

/// Whether an object (a Pod or a Node) has its `Ready` condition `True`.
pub fn is_ready(object: &Value) -> bool {
    object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// stdout of a successful kubectl, or the test fails with its stderr.
pub fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "kubectl {what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
