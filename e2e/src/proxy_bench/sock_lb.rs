//! The socket-LB target of `shoal-bench proxy`: the proxy's connect-time program
//! (`shoal_net::proxy::sock_lb`) attached to a cgroup of the bench's own
//! (`<cgroup2>/shoal-bench-<pid>`, removed at the end), its maps holding Service 0's TCP ports
//! as the proxy would plan them. The bench process moves itself into that cgroup only while
//! it measures this target (the load tools it starts then inherit it), and back to where it
//! was for the others, so they run without the program, as before.

use std::path::PathBuf;

use anyhow::{Context, Result};
use shoal_net::proxy::model::ServicePort;
use shoal_net::proxy::sock_lb::cgroup::cgroup2_mount;
use shoal_net::proxy::sock_lb::plan;
use shoal_net::proxy::sock_lb::SockLb;

pub struct SocketLb {
    dir: PathBuf,
    /// The cgroup (v2) the process was in.
    home: PathBuf,
    lb: Option<SockLb>,
}

/// The process's cgroup v2 path, from `/proc/self/cgroup` (the `0::` line).
fn own_cgroup() -> Result<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .context("no cgroup v2 line in /proc/self/cgroup")
}

impl SocketLb {
    /// Attaches the program to a new cgroup, with the maps translating `ports`.
    pub fn start<'a>(ports: impl IntoIterator<Item = &'a ServicePort>) -> Result<SocketLb> {
        let mount = cgroup2_mount()?;
        let home = mount.join(own_cgroup()?.trim_start_matches('/'));
        let dir = mount.join(format!("shoal-bench-{}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut this = SocketLb {
            dir,
            home,
            lb: None,
        };
        let mut lb = SockLb::attach(&this.dir, false)?;
        let desired = plan::frontends(ports);
        anyhow::ensure!(!desired.is_empty(), "no Service port to translate");
        lb.sync_all(&desired)?;
        this.lb = Some(lb);
        Ok(this)
    }

    fn join(dir: &std::path::Path) -> Result<()> {
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string())
            .with_context(|| format!("write {}", procs.display()))
    }

    /// With `yes`, moves the process into the program's cgroup until the guard is dropped.
    pub fn inside(&self, yes: bool) -> Result<Inside<'_>> {
        if yes {
            Self::join(&self.dir)?;
        }
        Ok(Inside(yes.then_some(self)))
    }

    fn leave(&self) -> Result<()> {
        Self::join(&self.home)
    }
}

/// While alive, the process is in the socket LB's cgroup (if it was moved there).
pub struct Inside<'a>(Option<&'a SocketLb>);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        if let Some(lb) = self.0 {
            let _ = lb.leave();
        }
    }
}

impl Drop for SocketLb {
    fn drop(&mut self) {
        let _ = self.leave();
        self.lb = None;
        let _ = std::fs::remove_dir(&self.dir);
    }
}
