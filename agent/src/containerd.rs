//! The agent's own containerd: its `config.toml` (rendered from [`ContainerdSettings`], pure and
//! tested), its directories under `<data-dir>/agent/containerd`, and a supervisor that starts
//! it, restarts it when it dies (with back-off) and stops it on shutdown. containerd and runc
//! come from the distribution; nothing here is downloaded.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::watch;

/// What went wrong starting containerd.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {binary}: {source} (install containerd and runc, e.g. `apt-get install containerd runc`)")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
}

/// Where the agent's containerd keeps things, and how it is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdSettings {
    /// `<data-dir>/agent/containerd`.
    pub dir: PathBuf,
    /// The image pods' sandboxes run (the agent's own pause image).
    pub sandbox_image: String,
    /// Where the CNI plugin binaries are (containerd's `bin_dir`).
    pub cni_bin_dir: PathBuf,
    /// Where the CNI network configuration is (containerd's `conf_dir`).
    pub cni_conf_dir: PathBuf,
    /// Registry hosts configuration (`certs.d` layout) for mirrors and plain-HTTP registries.
    pub registry_config_dir: PathBuf,
    /// Clamp pods' OOM score adjustments to containerd's own: needed where we lack
    /// CAP_SYS_RESOURCE (inside containers and some VMs), where lowering it fails every sandbox.
    pub restrict_oom_score_adj: bool,
}

/// Whether this process may lower OOM score adjustments (CAP_SYS_RESOURCE, bit 24).
pub fn can_lower_oom_score() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

impl ContainerdSettings {
    /// The defaults under the agent's data directory (`<data-dir>/agent`).
    pub fn under(agent_dir: &Path, sandbox_image: &str) -> ContainerdSettings {
        let dir = agent_dir.join("containerd");
        ContainerdSettings {
            sandbox_image: sandbox_image.to_string(),
            cni_bin_dir: agent_dir.join("cni").join("bin"),
            cni_conf_dir: agent_dir.join("cni").join("net.d"),
            registry_config_dir: dir.join("certs.d"),
            restrict_oom_score_adj: !can_lower_oom_score(),
            dir,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// containerd's `config.toml` (version 2, as containerd 1.6 and 1.7 read it).
    pub fn render(&self) -> String {
        let d = |p: &Path| toml_string(&p.display().to_string());
        format!(
            r#"# Written by the shoal agent at every start; edits are overwritten.
version = 2
root = {root}
state = {state}
# Plugins a kubelet's containerd has no use for.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {sandbox}
  # Streams (exec, attach, port-forward) are served on loopback; the agent proxies them.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  restrict_oom_score_adj = {restrict_oom}
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        # runc's own state, per agent: the default (/run/containerd/runc/k8s.io) would be
        # shared by every agent on a machine, as in multi-node tests with a netns per node.
        Root = {runc_root}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = {registry}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}
"#,
            root = d(&self.dir.join("root")),
            state = d(&self.dir.join("state")),
            runc_root = d(&self.dir.join("state").join("runc")),
            socket = d(&self.socket()),
            ttrpc = d(&self.dir.join("containerd-ttrpc.sock")),
            sandbox = toml_string(&self.sandbox_image),
            cni_bin = d(&self.cni_bin_dir),
            cni_conf = d(&self.cni_conf_dir),
            registry = d(&self.registry_config_dir),
            opt = d(&self.dir.join("opt")),
            restrict_oom = self.restrict_oom_score_adj,
        )
    }

    /// Creates the directories and writes the configuration.
    pub fn write(&self) -> Result<(), ContainerdError> {
        for dir in [
            &self.dir,
            &self.cni_bin_dir,
            &self.cni_conf_dir,
            &self.registry_config_dir,
        ] {
            std::fs::create_dir_all(dir).map_err(|source| ContainerdError::Write {
                path: dir.clone(),
                source,
            })?;
        }
        let path = self.config_file();
        std::fs::write(&path, self.render())
            .map_err(|source| ContainerdError::Write { path, source })
    }
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Runs containerd and keeps it running until `shutdown` fires.
#[derive(Debug)]
pub struct Supervisor {
    settings: ContainerdSettings,
    binary: String,
}

/// The longest wait between restarts of a containerd that keeps dying.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

impl Supervisor {
    pub fn new(settings: ContainerdSettings) -> Supervisor {
        Supervisor {
            settings,
            binary: "containerd".into(),
        }
    }

    /// Writes the configuration and starts containerd once, so a missing binary is reported
    /// at start; the returned future then keeps it running until `shutdown`.
    pub async fn start(
        self,
        shutdown: watch::Receiver<bool>,
    ) -> Result<impl std::future::Future<Output = ()>, ContainerdError> {
        self.settings.write()?;
        // A containerd of an agent that was killed outright is still running (and holds the
        // metadata database): stop it; its shims, and so the containers, keep running.
        stop_leftovers(&self.settings.config_file()).await;
        // A socket left by a containerd that died with the previous agent would make the
        // new one refuse to start.
        let _ = std::fs::remove_file(self.settings.socket());
        let child = self.spawn()?;
        Ok(self.supervise(child, shutdown))
    }

    fn spawn(&self) -> Result<Child, ContainerdError> {
        let log_path = self.settings.log_file();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| ContainerdError::Write {
                path: log_path,
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| ContainerdError::Write {
            path: self.settings.log_file(),
            source,
        })?;
        Command::new(&self.binary)
            .arg("--config")
            .arg(self.settings.config_file())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ContainerdError::Spawn {
                binary: self.binary.clone(),
                source,
            })
    }

    async fn supervise(self, mut child: Child, mut shutdown: watch::Receiver<bool>) {
        let mut delay = Duration::from_millis(500);
        loop {
            let started = tokio::time::Instant::now();
            tokio::select! {
                status = child.wait() => {
                    tracing::warn!(?status, log = %self.settings.log_file().display(), "containerd exited; restarting");
                }
                () = stopped(&mut shutdown) => {
                    stop(&mut child).await;
                    return;
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                delay = Duration::from_millis(500);
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stopped(&mut shutdown) => return,
            }
            delay = (delay * 2).min(MAX_RESTART_DELAY);
            let _ = std::fs::remove_file(self.settings.socket());
            match self.spawn() {
                Ok(new) => child = new,
                Err(err) => {
                    tracing::error!(%err, "cannot restart containerd; the agent stops");
                    return;
                }
            }
        }
    }
}

/// The processes under `proc_root` (`/proc`) that are a containerd run with `config`.
fn containerd_pids(proc_root: &Path, config: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let wanted = config.as_os_str().as_encoded_bytes();
    entries
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<i32>().ok()?, e.path())))
        .filter(|(_, dir)| {
            let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"containerd"))
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--config" && w[1] == wanted)
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// SIGTERM to a containerd left running with our configuration, SIGKILL after 10 s.
async fn stop_leftovers(config: &Path) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pids = containerd_pids(Path::new("/proc"), config);
    if pids.is_empty() {
        return;
    }
    tracing::info!(
        ?pids,
        "stopping the containerd a previous agent left running"
    );
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if pids
            .iter()
            .all(|pid| kill(Pid::from_raw(*pid), None).is_err())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    // Reaped by init (it was never our child); give the kernel a moment to release its locks.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Resolves when shutdown is asked for (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// SIGTERM, then SIGKILL after a grace period. Containers keep running: containerd's shims
/// outlive it, and the next agent adopts them.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn config_points_everything_under_the_data_dir() {
        let settings =
            ContainerdSettings::under(Path::new("/var/lib/shoal/agent"), "localhost/shoal/pause:1");
        let config = settings.render();
        assert!(config.contains("root = \"/var/lib/shoal/agent/containerd/root\""));
        assert!(config.contains("address = \"/var/lib/shoal/agent/containerd/containerd.sock\""));
        assert!(config.contains("sandbox_image = \"localhost/shoal/pause:1\""));
        assert!(config.contains("Root = \"/var/lib/shoal/agent/containerd/state/runc\""));
        assert!(config.contains("conf_dir = \"/var/lib/shoal/agent/cni/net.d\""));
        assert!(config.contains("config_path = \"/var/lib/shoal/agent/containerd/certs.d\""));
        assert_eq!(
            settings.socket(),
            Path::new("/var/lib/shoal/agent/containerd/containerd.sock")
        );
    }

    #[test]
    fn a_leftover_containerd_is_found_by_its_configuration() {
        let proc_root = tempfile::TempDir::new().unwrap();
        let process = |pid: &str, args: &[&str]| {
            let dir = proc_root.path().join(pid);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cmdline"), args.join("\0") + "\0").unwrap();
        };
        let ours = "/var/lib/shoal/agent/containerd/config.toml";
        process("10", &["/usr/bin/containerd", "--config", ours]);
        process("11", &["containerd", "--config", "/other/config.toml"]);
        process(
            "12",
            &["/usr/bin/containerd-shim-runc-v2", "--config", ours],
        );
        process("13", &["vim", "--config", ours]);
        process(
            "14",
            &["containerd", "--config", ours, "--log-level", "debug"],
        );
        process("self", &["containerd", "--config", ours]);
        std::fs::create_dir_all(proc_root.path().join("15")).unwrap(); // exited: no cmdline
        let mut pids = containerd_pids(proc_root.path(), Path::new(ours));
        pids.sort();
        assert_eq!(pids, vec![10, 14]);
    }

    #[test]
    fn paths_are_quoted_as_toml_strings() {
        assert_eq!(toml_string(r#"/a "b"\c"#), r#""/a \"b\"\\c""#);
        assert_eq!(toml_string("x\ny"), "\"x\\u000Ay\"");
    }
}
