//! Images on the node without a registry: the agent's own pause image (this binary in `pause`
//! mode, with the shared libraries it was loaded with), archives imported with
//! `shoal images import` or dropped into `<data-dir>/agent/images/` (OCI layout or
//! `docker save` tars, read by containerd's own importer, `ctr images import`), and listing.

pub mod oci;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::process::Command;

use crate::cri::Cri;

/// containerd's namespace for the CRI plugin's images and containers.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// What went wrong with an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot build the pause image: {0}")]
    Build(std::io::Error),
    #[error("cannot run ctr (part of the containerd package): {0}")]
    Ctr(std::io::Error),
    #[error("importing {path} failed: {message}")]
    Import { path: PathBuf, message: String },
}

/// The pause image's name for this version of Shoal.
pub fn pause_image_name() -> String {
    format!("localhost/shoal/pause:{}", shoal_common::VERSION)
}

/// The files of the pause image: this executable and the shared objects mapped into this
/// process (read from `/proc/self/maps`, so exactly what the dynamic loader chose), each at
/// its host path.
fn pause_entries() -> std::io::Result<Vec<oci::Entry>> {
    let exe = std::env::current_exe()?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        if path.starts_with('/') && path.contains(".so") && Path::new(path).is_file() {
            files.insert(path.to_string(), PathBuf::from(path));
        }
    }
    let mut entries: Vec<oci::Entry> = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    for path in files.keys() {
        let mut dir = Path::new(path).parent();
        while let Some(d) = dir {
            let text = d.display().to_string();
            if text != "/" && !dirs.contains(&text) {
                dirs.push(text);
            }
            dir = d.parent();
        }
    }
    dirs.sort();
    entries.extend(dirs.into_iter().map(|path| oci::Entry::Dir { path }));
    entries.extend(
        files
            .into_iter()
            .map(|(path, source)| oci::Entry::File { path, source }),
    );
    // Shared libraries often live under a symlinked /lib64 or /lib; the loader named in the
    // ELF header may be reached through such a link, so mirror the usual ones.
    for (link, target) in [("/lib64", "usr/lib64"), ("/lib", "usr/lib")] {
        if std::fs::symlink_metadata(link).is_ok_and(|m| m.file_type().is_symlink()) {
            if let Ok(real) = std::fs::read_link(link) {
                let real = real.display().to_string();
                if real.trim_start_matches('/') == target {
                    entries.retain(|e| !matches!(e, oci::Entry::Dir { path } if path == link));
                    entries.push(oci::Entry::Symlink {
                        path: link.into(),
                        target: real,
                    });
                }
            }
        }
    }
    entries.push(oci::Entry::File {
        path: "/shoal".into(),
        source: exe,
    });
    Ok(entries)
}

/// Makes sure the pause image for this binary is in containerd: built and imported when the
/// binary changed since the last import (a marker in `work_dir` records which it was).
pub async fn ensure_pause_image(cri: &Cri, work_dir: &Path) -> Result<String, ImageError> {
    let name = pause_image_name();
    let exe = std::env::current_exe().map_err(ImageError::Build)?;
    let meta = std::fs::metadata(&exe).map_err(ImageError::Build)?;
    let identity = format!(
        "{} {} {:?}",
        exe.display(),
        meta.len(),
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)
    );
    let marker = work_dir.join("pause-image.id");
    let present = cri.image_status(&name).await.ok().flatten().is_some();
    if present && std::fs::read_to_string(&marker).ok().as_deref() == Some(identity.as_str()) {
        return Ok(name);
    }
    std::fs::create_dir_all(work_dir).map_err(ImageError::Build)?;
    let archive = work_dir.join("pause.tar");
    let spec = oci::ImageSpec {
        name: name.clone(),
        entries: pause_entries().map_err(ImageError::Build)?,
        entrypoint: vec!["/shoal".into(), "pause".into()],
        cmd: vec![],
        env: vec![],
    };
    let build_archive = archive.clone();
    tokio::task::spawn_blocking(move || oci::write_archive(&spec, &build_archive))
        .await
        .map_err(|e| ImageError::Build(std::io::Error::other(e)))?
        .map_err(ImageError::Build)?;
    let imported = import(cri.socket(), &archive).await;
    let _ = std::fs::remove_file(&archive);
    imported?;
    let _ = std::fs::write(&marker, identity);
    Ok(name)
}

/// Imports an image archive (OCI layout or `docker save`) into containerd's CRI namespace.
pub async fn import(socket: &Path, archive: &Path) -> Result<(), ImageError> {
    let output = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args([
            "--namespace",
            CRI_NAMESPACE,
            "images",
            "import",
            "--all-platforms",
        ])
        .arg(archive)
        .output()
        .await
        .map_err(ImageError::Ctr)?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(ImageError::Import {
        path: archive.to_path_buf(),
        message: stderr
            .lines()
            .last()
            .unwrap_or("ctr failed")
            .trim()
            .to_string(),
    })
}

/// Watches the air-gap folder: imports every archive in it at start and whenever one is
/// added or changed, polling every `period`.
pub async fn watch_airgap_folder(cri: Cri, folder: PathBuf, period: Duration) {
    let mut seen: BTreeMap<PathBuf, (u64, SystemTime)> = BTreeMap::new();
    loop {
        for (path, stamp) in archives_in(&folder) {
            if seen.get(&path) == Some(&stamp) {
                continue;
            }
            match import(cri.socket(), &path).await {
                Ok(()) => tracing::info!(archive = %path.display(), "imported air-gap images"),
                Err(err) => tracing::warn!(%err, "air-gap import failed"),
            }
            // Recorded either way: a broken file is retried only when it changes.
            seen.insert(path, stamp);
        }
        tokio::time::sleep(period).await;
    }
}

/// Archives in the folder (`.tar`, `.tar.gz`, `.tgz`, `.tar.zst`), with their size and mtime.
fn archives_in(folder: &Path) -> Vec<(PathBuf, (u64, SystemTime))> {
    let Ok(dir) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut found: Vec<_> = dir
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            [".tar", ".tar.gz", ".tgz", ".tar.zst"]
                .iter()
                .any(|ext| name.ends_with(ext))
        })
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_file().then(|| {
                (
                    e.path(),
                    (
                        meta.len(),
                        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    ),
                )
            })
        })
        .collect();
    found.sort();
    found
}
