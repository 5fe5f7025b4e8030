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
    // The dynamic loader must sit at the path the executable names (PT_INTERP), which on
    // merged-/usr systems is reached through symlinks the image does not have.
    if let Some(interpreter) = elf_interpreter(&elf_head(&exe)?) {
        let source = std::fs::canonicalize(&interpreter)?;
        files.insert(interpreter, source);
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
    entries.push(oci::Entry::File {
        path: "/shoal".into(),
        source: exe,
    });
    Ok(entries)
}

/// The start of an ELF file: enough for its program headers and the interpreter's path,
/// which linkers place right after them (reading the whole 40+ MB binary only for that
/// would leave the agent's heap that much bigger).
fn elf_head(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::with_capacity(ELF_HEAD);
    std::fs::File::open(path)?
        .take(ELF_HEAD as u64)
        .read_to_end(&mut head)?;
    Ok(head)
}

const ELF_HEAD: usize = 64 * 1024;

/// The program interpreter (PT_INTERP) a 64-bit little-endian ELF executable names.
pub fn elf_interpreter(elf: &[u8]) -> Option<String> {
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    const PT_INTERP: u32 = 3;
    // "\x7fELF", 64-bit, little-endian.
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        let header = phoff + i * phentsize;
        if u32_at(header)? == PT_INTERP {
            let offset = usize::try_from(u64_at(header + 0x08)?).ok()?;
            let size = usize::try_from(u64_at(header + 0x20)?).ok()?;
            let raw = elf.get(offset..offset + size)?;
            let text = std::str::from_utf8(raw).ok()?.trim_end_matches('\0');
            return Some(text.to_string());
        }
    }
    None
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_loader_of_this_executable_is_found() {
        let exe = elf_head(&std::env::current_exe().unwrap()).unwrap();
        assert!(exe.len() <= ELF_HEAD);
        let interpreter = elf_interpreter(&exe).unwrap();
        assert!(
            interpreter.starts_with('/') && interpreter.contains("ld-"),
            "{interpreter}"
        );
        assert_eq!(elf_interpreter(b"not an elf"), None);
    }

    #[test]
    fn the_pause_image_holds_the_binary_and_its_loader() {
        let entries = pause_entries().unwrap();
        let paths: Vec<String> = entries
            .iter()
            .filter_map(|e| match e {
                oci::Entry::File { path, .. } => Some(path.clone()),
                _ => None,
            })
            .collect();
        assert!(paths.contains(&"/shoal".to_string()));
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(paths.contains(&elf_interpreter(&exe).unwrap()), "{paths:?}");
    }
}
