//! Container log rotation, as the kubelet's container log manager does it: every 10 s each
//! running container's CRI log file is checked; past `--container-log-max-size` it is renamed
//! to `<name>.<YYYYMMDD-hhmmss>` and containerd is asked to reopen the original path
//! (ReopenContainerLog), and rotated files beyond `--container-log-max-files` (the current
//! file counts as one) are removed, oldest first. `kubectl logs` reads the current file, as
//! with the kubelet. The decision is [`plan`], pure; [`run`] does the IO.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::cri::v1;
use crate::kubelet::runtime::LABEL_MANAGED;
use crate::kubelet::Shared;

/// How big a container's log may grow and how many files of it are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Bytes, Kubernetes' default 10Mi.
    pub max_size: u64,
    /// Files kept per container, the current one included; at least 2 (default 5).
    pub max_files: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_size: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// What to do with one container's log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rotation {
    /// Rotated files to delete.
    pub remove: Vec<PathBuf>,
    /// Where to move the current file, when it is over the limit.
    pub rotate_to: Option<PathBuf>,
}

/// The kubelet's suffix format for rotated logs (Go's "20060102-150405").
fn suffix(now: Timestamp) -> String {
    now.strftime("%Y%m%d-%H%M%S").to_string()
}

/// Decides for the log at `current` (of `size` bytes) with its rotated files `rotated` (the
/// siblings named `<current>.<suffix>`, in any order).
pub fn plan(
    current: &Path,
    size: u64,
    rotated: &[PathBuf],
    limits: LogLimits,
    now: Timestamp,
) -> Rotation {
    let mut rotated: Vec<&PathBuf> = rotated.iter().collect();
    // The suffix is a timestamp with fixed-width fields: names sort oldest first.
    rotated.sort();
    let rotate = size >= limits.max_size;
    // After this pass at most max_files - 1 rotated files may exist (plus the current one);
    // rotating now adds one.
    let keep = limits
        .max_files
        .saturating_sub(1)
        .saturating_sub(usize::from(rotate));
    let excess = rotated.len().saturating_sub(keep);
    let remove = rotated[..excess].iter().map(|p| p.to_path_buf()).collect();
    let rotate_to = rotate.then(|| {
        let mut name = current.as_os_str().to_owned();
        name.push(".");
        name.push(suffix(now));
        PathBuf::from(name)
    });
    Rotation { remove, rotate_to }
}

/// The rotated files of `current`: its siblings named `<file name>.<something>`.
fn rotated_files(current: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (current.parent(), current.file_name()) else {
        return Vec::new();
    };
    let mut prefix = name.to_os_string();
    prefix.push(".");
    let prefix = prefix.as_encoded_bytes().to_vec();
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.as_encoded_bytes();
                n.len() > prefix.len() && n.starts_with(&prefix) && !n.ends_with(b".tmp")
            })
        })
        .collect()
}

/// Checks every running container's log each `every` until the task is dropped.
pub async fn run(shared: Arc<Shared>, limits: LogLimits, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let containers = match shared.cri.list_containers_of(LABEL_MANAGED, "true").await {
            Ok(containers) => containers,
            Err(err) => {
                tracing::debug!(%err, "log rotation: listing containers");
                continue;
            }
        };
        for container in containers
            .iter()
            .filter(|c| c.state == v1::ContainerState::ContainerRunning as i32)
        {
            if let Err(err) = rotate_one(&shared, &container.id, limits).await {
                tracing::warn!(container = %container.id, %err, "log rotation failed");
            }
        }
    }
}

async fn rotate_one(shared: &Shared, id: &str, limits: LogLimits) -> Result<(), String> {
    let status = shared
        .cri
        .container_status(id)
        .await
        .map_err(|e| e.to_string())?;
    if status.log_path.is_empty() {
        return Ok(());
    }
    let current = PathBuf::from(status.log_path);
    let size = match std::fs::metadata(&current) {
        Ok(meta) => meta.len(),
        Err(_) => return Ok(()), // not written yet, or the container is going away
    };
    let rotation = plan(
        &current,
        size,
        &rotated_files(&current),
        limits,
        Timestamp::now(),
    );
    for old in &rotation.remove {
        std::fs::remove_file(old).map_err(|e| format!("removing {}: {e}", old.display()))?;
    }
    let Some(target) = rotation.rotate_to else {
        return Ok(());
    };
    std::fs::rename(&current, &target).map_err(|e| format!("renaming the log: {e}"))?;
    if let Err(err) = shared.cri.reopen_container_log(id).await {
        // containerd keeps writing to the renamed file: put it back so nothing is lost.
        let _ = std::fs::rename(&target, &current);
        return Err(format!("reopening the log: {err}"));
    }
    tracing::debug!(container = %id, to = %target.display(), "rotated the container log");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NOW: &str = "2026-11-22T10:11:12Z";

    fn limits(max_size: u64, max_files: usize) -> LogLimits {
        LogLimits {
            max_size,
            max_files,
        }
    }

    fn rotated(names: &[&str]) -> Vec<PathBuf> {
        names
            .iter()
            .map(|n| PathBuf::from(format!("/logs/c/0.log.{n}")))
            .collect()
    }

    #[test]
    fn a_small_log_is_left_alone() {
        let current = Path::new("/logs/c/0.log");
        let r = plan(current, 99, &[], limits(100, 5), NOW.parse().unwrap());
        assert_eq!(r, Rotation::default());
    }

    #[test]
    fn a_full_log_moves_aside_with_the_kubelets_timestamp_suffix() {
        let current = Path::new("/logs/c/0.log");
        let r = plan(current, 100, &[], limits(100, 5), NOW.parse().unwrap());
        assert_eq!(
            r.rotate_to,
            Some(PathBuf::from("/logs/c/0.log.20261122-101112"))
        );
        assert!(r.remove.is_empty());
    }

    #[test]
    fn the_oldest_rotated_files_go_so_that_max_files_are_kept() {
        let current = Path::new("/logs/c/0.log");
        let existing = rotated(&["20261122-100003", "20261122-100001", "20261122-100002"]);
        // Rotating now: 5 files allowed → the current one, the new rotated one, and 3 old.
        let r = plan(
            current,
            500,
            &existing,
            limits(100, 5),
            NOW.parse().unwrap(),
        );
        assert!(r.remove.is_empty());
        // 3 files allowed → the current one, the new rotated one, and 1 old: the newest.
        let r = plan(
            current,
            500,
            &existing,
            limits(100, 3),
            NOW.parse().unwrap(),
        );
        assert_eq!(
            r.remove,
            rotated(&["20261122-100001", "20261122-100002"]),
            "oldest first"
        );
        // Not rotating: 3 files allowed → the current one and the 2 newest.
        let r = plan(current, 1, &existing, limits(100, 3), NOW.parse().unwrap());
        assert_eq!(r.remove, rotated(&["20261122-100001"]));
        assert_eq!(r.rotate_to, None);
    }

    #[test]
    fn rotated_files_are_found_beside_the_log_and_nothing_else() {
        let dir = tempfile::TempDir::new().unwrap();
        for name in [
            "0.log",
            "0.log.20261122-100001",
            "0.log.x.tmp",
            "1.log",
            "0.logx",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let found = rotated_files(&dir.path().join("0.log"));
        assert_eq!(found, vec![dir.path().join("0.log.20261122-100001")]);
    }
}
