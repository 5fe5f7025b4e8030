//! Writing single-layer OCI image archives (the `oci-layout` tar `ctr images import` and
//! `docker load` read): the agent's pause image, and the test images built from Debian's
//! busybox-static. The layer is an uncompressed tar, so its digest is also its diff id.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ring::digest::{Context, SHA256};
use serde_json::json;

/// What goes into the image's only layer.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A regular file copied from the host (its mode kept).
    File { path: String, source: PathBuf },
    /// A symbolic link.
    Symlink { path: String, target: String },
    /// An empty directory.
    Dir { path: String },
}

/// An image to write.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The full reference it is imported as, e.g. `localhost/shoal/pause:0.1.0`.
    pub name: String,
    pub entries: Vec<Entry>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
}

/// The digest of the image's manifest, and the archive written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub manifest_digest: String,
}

/// The OCI architecture name of the machine we run on.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Context,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex(ring::digest::digest(&SHA256, bytes).as_ref())
    )
}

/// A tar header for `path` with `mode`, owned by root, dated at the epoch (so the same inputs
/// give the same digest).
fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

/// Writes the layer tar into `out`, returning its digest and size.
fn write_layer(entries: &[Entry], out: &mut File) -> io::Result<(String, u64)> {
    let mut hashing = Hashing {
        inner: BufWriter::new(&mut *out),
        hash: Context::new(&SHA256),
        size: 0,
    };
    {
        let mut builder = tar::Builder::new(&mut hashing);
        for entry in entries {
            match entry {
                Entry::File { path, source } => {
                    let mut file = File::open(source)?;
                    let meta = file.metadata()?;
                    let mode =
                        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
                    let mut h = header(tar::EntryType::Regular, meta.len(), mode);
                    builder.append_data(&mut h, path.trim_start_matches('/'), &mut file)?;
                }
                Entry::Symlink { path, target } => {
                    let mut h = header(tar::EntryType::Symlink, 0, 0o777);
                    builder.append_link(&mut h, path.trim_start_matches('/'), target)?;
                }
                Entry::Dir { path } => {
                    let mut h = header(tar::EntryType::Directory, 0, 0o755);
                    builder.append_data(&mut h, path.trim_start_matches('/'), io::empty())?;
                }
            }
        }
        builder.finish()?;
    }
    hashing.flush()?;
    let digest = format!("sha256:{}", hex(hashing.hash.finish().as_ref()));
    Ok((digest, hashing.size))
}

/// Writes `image` as an OCI archive at `archive` (a temporary file beside it holds the layer).
pub fn write_archive(image: &ImageSpec, archive: &Path) -> io::Result<Written> {
    let layer_path = archive.with_extension("layer.tmp");
    let mut layer = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&layer_path)?;
    let result = (|| {
        let (layer_digest, layer_size) = write_layer(&image.entries, &mut layer)?;
        let config = serde_json::to_vec(&json!({
            "architecture": oci_arch(),
            "os": "linux",
            "config": {
                "Entrypoint": image.entrypoint,
                "Cmd": if image.cmd.is_empty() { serde_json::Value::Null } else { json!(image.cmd) },
                "Env": image.env,
                "WorkingDir": "/",
            },
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created_by": "shoal"}],
        }))?;
        let config_digest = sha256(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer_size,
            }],
        }))?;
        let manifest_digest = sha256(&manifest);
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "platform": {"architecture": oci_arch(), "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": image.name,
                    "org.opencontainers.image.ref.name": image.name,
                },
            }],
        }))?;

        let out = BufWriter::new(File::create(archive)?);
        let mut builder = tar::Builder::new(out);
        let mut add = |name: &str, bytes: &[u8]| {
            let mut h = header(tar::EntryType::Regular, bytes.len() as u64, 0o644);
            builder.append_data(&mut h, name, bytes)
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        add("index.json", &index)?;
        add(&blob_path(&config_digest), &config)?;
        add(&blob_path(&manifest_digest), &manifest)?;
        layer.seek(SeekFrom::Start(0))?;
        let mut h = header(tar::EntryType::Regular, layer_size, 0o644);
        builder.append_data(
            &mut h,
            blob_path(&layer_digest),
            (&mut layer).take(layer_size),
        )?;
        builder.into_inner()?.flush()?;
        Ok(Written { manifest_digest })
    })();
    let _ = std::fs::remove_file(&layer_path);
    result
}

fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> ImageSpec {
        let file = dir.join("hello");
        std::fs::write(&file, b"#!/bin/sh\necho hi\n").unwrap();
        ImageSpec {
            name: "localhost/test/hello:1".into(),
            entries: vec![
                Entry::Dir {
                    path: "/bin".into(),
                },
                Entry::File {
                    path: "/bin/hello".into(),
                    source: file,
                },
                Entry::Symlink {
                    path: "/bin/hi".into(),
                    target: "hello".into(),
                },
            ],
            entrypoint: vec!["/bin/hello".into()],
            cmd: vec![],
            env: vec!["PATH=/bin".into()],
        }
    }

    #[test]
    fn the_archive_is_an_oci_layout_whose_digests_match_its_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("image.tar");
        let written = write_archive(&spec(dir.path()), &archive).unwrap();
        let mut names = Vec::new();
        let mut tar = tar::Archive::new(File::open(&archive).unwrap());
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().display().to_string();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                assert_eq!(sha256(&bytes), format!("sha256:{hex}"), "{name}");
            }
            if name == "index.json" {
                let index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(
                    index["manifests"][0]["digest"],
                    written.manifest_digest.as_str()
                );
                assert_eq!(
                    index["manifests"][0]["annotations"]["io.containerd.image.name"],
                    "localhost/test/hello:1"
                );
            }
            names.push(name);
        }
        assert_eq!(names.len(), 5, "{names:?}");
        assert!(!archive.with_extension("layer.tmp").exists());
    }

    #[test]
    fn the_same_inputs_give_the_same_image() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_archive(&spec(dir.path()), &dir.path().join("a.tar")).unwrap();
        let b = write_archive(&spec(dir.path()), &dir.path().join("b.tar")).unwrap();
        assert_eq!(a, b);
    }
}
