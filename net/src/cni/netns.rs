//! Network namespaces: opening one by path, and visiting it from the calling thread.
//!
//! A netlink socket belongs to the namespace of the thread that opened it, so a connection
//! into a container's namespace is opened during a short visit (`setns(2)` there and back,
//! through nix's safe wrapper); everything after goes through that socket from home.

use std::fs::File;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

use super::error::CniError;

/// The calling thread's own network namespace.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Opens the network namespace at `path` (a bind mount such as `/var/run/netns/NAME`, or a
/// `/proc/PID/ns/net`).
pub fn open(path: &Path) -> Result<File, CniError> {
    File::open(path).map_err(|source| CniError::Netns {
        path: path.display().to_string(),
        source,
    })
}

/// Runs `f` with the calling thread inside `netns`, then moves the thread back to the
/// namespace it was in.
pub fn within<T>(netns: &File, label: &Path, f: impl FnOnce() -> T) -> Result<T, CniError> {
    let err = |source: std::io::Error| CniError::Netns {
        path: label.display().to_string(),
        source,
    };
    let home = File::open(THREAD_NETNS).map_err(err)?;
    setns(netns, CloneFlags::CLONE_NEWNET).map_err(|e| err(e.into()))?;
    let out = f();
    // Failing to return would leave this thread in the container's namespace; report it
    // so the command fails rather than acting in the wrong place.
    setns(&home, CloneFlags::CLONE_NEWNET).map_err(|e| CniError::Netns {
        path: THREAD_NETNS.to_string(),
        source: std::io::Error::other(format!(
            "cannot return to the original network namespace: {e}"
        )),
    })?;
    Ok(out)
}
