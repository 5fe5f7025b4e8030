//! Test images built on the spot from Debian's `busybox-static` (no registry is reachable):
//! a single-layer OCI archive with `/bin/busybox` and a link per applet the tests use.

use std::path::{Path, PathBuf};

use shoal_agent::images::oci::{write_archive, Entry, ImageSpec};

/// Where Debian's busybox-static installs the binary.
pub const BUSYBOX: &str = "/bin/busybox";

const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "cat", "ls", "env", "true", "false", "id", "wget", "nc", "httpd",
    "mkdir", "touch", "rm", "head", "tail", "grep", "dd", "hostname", "ps", "kill", "date", "seq",
    "printf", "nslookup",
];

/// Writes an OCI archive of a busybox image named `name` into `dir`; returns its path.
pub fn busybox_archive(dir: &Path, name: &str) -> PathBuf {
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: install Debian's busybox-static (scripts/setup-debian.sh does)"
    );
    let mut entries = vec![
        Entry::Dir {
            path: "/bin".into(),
        },
        Entry::Dir {
            path: "/tmp".into(),
        },
        Entry::Dir {
            path: "/etc".into(),
        },
        Entry::File {
            path: "/bin/busybox".into(),
            source: BUSYBOX.into(),
        },
    ];
    entries.extend(APPLETS.iter().map(|a| Entry::Symlink {
        path: format!("/bin/{a}"),
        target: "busybox".into(),
    }));
    let spec = ImageSpec {
        name: name.to_string(),
        entries,
        entrypoint: vec![],
        cmd: vec!["/bin/sh".into()],
        env: vec!["PATH=/bin".into()],
    };
    let path = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
    write_archive(&spec, &path).expect("write the busybox image");
    path
}

/// Imports `archive` into the containerd of the agent with `data_dir`, with `shoal images
/// import`; fails the test with its stderr.
pub fn import(binary: &Path, data_dir: &Path, archive: &Path) {
    let out = std::process::Command::new(binary)
        .args(["images", "import", "--data-dir"])
        .arg(data_dir)
        .arg(archive)
        .output()
        .expect("run shoal images import");
    assert!(
        out.status.success(),
        "importing {} into {}: {}",
        archive.display(),
        data_dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
