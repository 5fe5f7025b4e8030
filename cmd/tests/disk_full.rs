//! A server whose disk fills up: the store keeps a reserve, so writes through the API fail with
//! a clear error while reads go on, nothing stored is lost, and writes work again once space
//! returns. The data dir is a small tmpfs (needs root; CI is root).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_e2e::cluster::eventually;
use shoal_e2e::kubectl::{kubectl_binary, Kubectl};
use shoal_e2e::process::is_root;
use shoal_e2e::server::{free_port, ShoalServer};

/// A tmpfs mounted for the test, unmounted on drop (also when the test fails).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the disk until less than `leave` bytes are free; returns the filler file.
fn fill(disk: &Path, leave: u64) -> PathBuf {
    let stats = nix::sys::statvfs::statvfs(disk).expect("statvfs");
    let free = stats.blocks_available() * stats.fragment_size();
    let filler = disk.join("filler");
    let size = free.saturating_sub(leave);
    let out = Command::new("fallocate")
        .args(["-l", &size.to_string()])
        .arg(&filler)
        .output()
        .expect("fallocate");
    assert!(
        out.status.success(),
        "fallocate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    filler
}

#[test]
fn a_full_disk_refuses_writes_clearly_and_recovers() {
    assert!(
        is_root(),
        "this test mounts a tmpfs: run it as root (CI does)"
    );
    let disk = SmallDisk::mount("256m");
    let data_dir = disk.path().join("data");
    let server = ShoalServer::start(
        Path::new(env!("CARGO_BIN_EXE_shoal")),
        &data_dir,
        free_port().expect("port"),
        &[],
    )
    .expect("server starts");
    let home = tempfile::TempDir::new().expect("home");
    let kubectl = Kubectl {
        binary: kubectl_binary(),
        kubeconfig: data_dir.join("kubeconfig.yaml"),
        home: home.path().to_path_buf(),
    };
    kubectl.ok(&["create", "configmap", "before", "--from-literal=k=v"]);

    // 16 MiB left: below the store's reserve.
    let filler = fill(disk.path(), 16 * 1024 * 1024);
    let refused = kubectl.run(
        &["create", "configmap", "during", "--from-literal=k=v"],
        None,
    );
    assert!(
        !refused.status.success(),
        "a write was accepted on a full disk"
    );
    let message = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(message.contains("disk full"), "unclear error: {message}");
    // Reads go on, and what was stored is still there.
    kubectl.ok(&["get", "configmap", "before"]);

    std::fs::remove_file(&filler).expect("free the space");
    eventually("writes to work again", Duration::from_secs(30), || {
        kubectl
            .run(
                &["create", "configmap", "after", "--from-literal=k=v"],
                None,
            )
            .status
            .success()
            .then_some(())
    });
    kubectl.ok(&["get", "configmap", "before"]);
    kubectl.ok(&["get", "configmap", "after"]);
    assert!(kubectl.get(&["get", "configmap", "during"]).is_none());
    server.stop().expect("server stops");
}
