//! Where the program is attached: the cgroup v2 hierarchy (`/sys/fs/cgroup` on a unified host,
//! `/sys/fs/cgroup/unified` on a hybrid one, found in `/proc/self/mountinfo`) and, in it, the
//! cgroup holding this node's pods.

use std::io;
use std::path::{Path, PathBuf};

/// The mount point of the cgroup v2 hierarchy in a `/proc/self/mountinfo` text.
pub fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `id parent major:minor root mount-point options [optional…] - fstype source …`
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape(mount)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) if bytes[i] == b'\\' => {
                out.push(
                    d.iter()
                        .fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')),
                );
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 hierarchy's mount point on this machine.
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    cgroup2_mount_in(&info)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup2 hierarchy mounted"))
}

/// The cgroup path (from a hierarchy's root) under which a node's pods run: each container
/// is `<this>/<container id>` in every hierarchy (the cgroupfs driver's layout).
pub fn pod_cgroup_parent(node_name: &str) -> String {
    format!("/shoal/{node_name}")
}

/// The directory of a cgroup path (as [`pod_cgroup_parent`] gives) in the v2 hierarchy
/// mounted at `mount`.
pub fn v2_dir(mount: &Path, cgroup: &str) -> PathBuf {
    mount.join(cgroup.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_hierarchy_of_a_hybrid_host() {
        let info = "\
35 25 0:30 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory
40 25 0:35 / /sys/fs/cgroup/unified rw,relatime shared:19 - cgroup2 cgroup2 rw
41 25 0:36 / /sys/fs/cgroup/sys\\040tem rw - cgroup cgroup rw,name=systemd";
        assert_eq!(
            cgroup2_mount_in(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let weird = "40 25 0:35 / /mnt/cg\\0402 rw shared:1 - cgroup2 none rw";
        assert_eq!(cgroup2_mount_in(weird), Some(PathBuf::from("/mnt/cg 2")));
        assert_eq!(cgroup2_mount_in("1 2 0:3 / / rw - ext4 /dev/vda rw"), None);
        assert_eq!(
            v2_dir(Path::new("/sys/fs/cgroup"), &pod_cgroup_parent("n1")),
            PathBuf::from("/sys/fs/cgroup/shoal/n1")
        );
    }
}
