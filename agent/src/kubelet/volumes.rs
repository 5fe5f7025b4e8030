//! Pod volumes on the node, under `<data-dir>/agent/pods/<uid>/volumes/<name>`: `emptyDir`
//! (a directory, or tmpfs for `medium: Memory`), `hostPath` (with its `type` checks), and the
//! file-projecting kinds — `configMap`, `secret`, `downwardAPI`, `projected` — written the
//! way the kubelet's atomic writer does it (a timestamped directory, `..data` switched by an
//! atomic rename, user-visible names as symlinks into it) so that updates propagate to running
//! containers without a reader ever seeing half a change. Which files a volume holds is pure
//! ([`volume_files`]); writing them is not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod, Volume};

use crate::cri::v1;
use crate::kubelet::env::{field_value, format_map, resource_value, Lookups};

/// Why a volume cannot be set up (the pod waits, with this as its event).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("configmap references non-existent config key: {0}")]
    MissingKey(String),
    #[error("volume {volume}: {message}")]
    Invalid { volume: String, message: String },
    #[error("volume {volume}: {source}")]
    Io {
        volume: String,
        source: std::io::Error,
    },
    #[error("volume {0}: no service account token could be obtained")]
    TokenUnavailable(String),
    #[error("volume {0}: this kind of volume is not supported on this node")]
    Unsupported(String),
}

/// A file a volume holds: relative path, content, mode.
pub type File = (String, Vec<u8>, u32);

/// What a volume is on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeContent {
    EmptyDir {
        memory: bool,
        size_limit: Option<String>,
    },
    HostPath {
        path: String,
        type_: String,
    },
    Files(Vec<File>),
}

fn items(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    mode: u32,
    source: &str,
    optional: bool,
) -> Result<Vec<File>, VolumeError> {
    match items {
        None => Ok(data.into_iter().map(|(k, v)| (k, v, mode)).collect()),
        Some(items) => {
            let mut files = Vec::new();
            for item in items {
                match data.get(&item.key) {
                    Some(v) => files.push((
                        item.path.clone(),
                        v.clone(),
                        item.mode.map_or(mode, |m| m as u32),
                    )),
                    None if optional => {}
                    None => return Err(VolumeError::MissingKey(format!("{source}/{}", item.key))),
                }
            }
            Ok(files)
        }
    }
}

fn config_map_data(lookups: &Lookups, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    lookups.config_maps.get(name).map(|cm| {
        let mut data: BTreeMap<String, Vec<u8>> = cm
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect();
        data.extend(
            cm.binary_data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone())),
        );
        data
    })
}

fn secret_data(lookups: &Lookups, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    lookups.secrets.get(name).map(|s| {
        let mut data: BTreeMap<String, Vec<u8>> = s
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        data.extend(
            s.string_data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
        );
        data
    })
}

/// What `volume` of `pod` holds.
pub fn volume_files(
    pod: &Pod,
    volume: &Volume,
    lookups: &Lookups,
) -> Result<VolumeContent, VolumeError> {
    if let Some(empty) = &volume.empty_dir {
        return Ok(VolumeContent::EmptyDir {
            memory: empty.medium.as_deref() == Some("Memory"),
            size_limit: empty.size_limit.as_ref().map(|q| q.0.clone()),
        });
    }
    if let Some(host) = &volume.host_path {
        return Ok(VolumeContent::HostPath {
            path: host.path.clone(),
            type_: host.type_.clone().unwrap_or_default(),
        });
    }
    if let Some(cm) = &volume.config_map {
        let mode = cm.default_mode.map_or(0o644, |m| m as u32);
        return match config_map_data(lookups, &cm.name) {
            Some(data) => Ok(VolumeContent::Files(items(
                data,
                cm.items.as_ref(),
                mode,
                &cm.name,
                cm.optional == Some(true),
            )?)),
            None if cm.optional == Some(true) => Ok(VolumeContent::Files(vec![])),
            None => Err(VolumeError::ConfigMapNotFound(cm.name.clone())),
        };
    }
    if let Some(secret) = &volume.secret {
        let name = secret.secret_name.clone().unwrap_or_default();
        let mode = secret.default_mode.map_or(0o644, |m| m as u32);
        return match secret_data(lookups, &name) {
            Some(data) => Ok(VolumeContent::Files(items(
                data,
                secret.items.as_ref(),
                mode,
                &name,
                secret.optional == Some(true),
            )?)),
            None if secret.optional == Some(true) => Ok(VolumeContent::Files(vec![])),
            None => Err(VolumeError::SecretNotFound(name)),
        };
    }
    if let Some(downward) = &volume.downward_api {
        let mode = downward.default_mode.map_or(0o644, |m| m as u32);
        let mut files = Vec::new();
        for item in downward.items.iter().flatten() {
            files.push(downward_file(pod, item, mode, lookups, &volume.name)?);
        }
        return Ok(VolumeContent::Files(files));
    }
    if let Some(projected) = &volume.projected {
        let mode = projected.default_mode.map_or(0o644, |m| m as u32);
        let mut files = Vec::new();
        for source in projected.sources.iter().flatten() {
            if let Some(cm) = &source.config_map {
                match config_map_data(lookups, &cm.name) {
                    Some(data) => files.extend(items(
                        data,
                        cm.items.as_ref(),
                        mode,
                        &cm.name,
                        cm.optional == Some(true),
                    )?),
                    None if cm.optional == Some(true) => {}
                    None => return Err(VolumeError::ConfigMapNotFound(cm.name.clone())),
                }
            } else if let Some(secret) = &source.secret {
                match secret_data(lookups, &secret.name) {
                    Some(data) => files.extend(items(
                        data,
                        secret.items.as_ref(),
                        mode,
                        &secret.name,
                        secret.optional == Some(true),
                    )?),
                    None if secret.optional == Some(true) => {}
                    None => return Err(VolumeError::SecretNotFound(secret.name.clone())),
                }
            } else if let Some(downward) = &source.downward_api {
                for item in downward.items.iter().flatten() {
                    files.push(downward_file(pod, item, mode, lookups, &volume.name)?);
                }
            } else if let Some(token) = &source.service_account_token {
                let value = lookups
                    .tokens
                    .get(&crate::kubelet::tokens::source_key(token))
                    .ok_or_else(|| VolumeError::TokenUnavailable(volume.name.clone()))?;
                files.push((token.path.clone(), value.clone().into_bytes(), mode));
            } else {
                return Err(VolumeError::Unsupported(volume.name.clone()));
            }
        }
        return Ok(VolumeContent::Files(files));
    }
    Err(VolumeError::Unsupported(volume.name.clone()))
}

fn downward_file(
    pod: &Pod,
    item: &k8s_openapi::api::core::v1::DownwardAPIVolumeFile,
    mode: u32,
    lookups: &Lookups,
    volume: &str,
) -> Result<File, VolumeError> {
    let invalid = |message: String| VolumeError::Invalid {
        volume: volume.to_string(),
        message,
    };
    let value = if let Some(field) = &item.field_ref {
        match field.field_path.as_str() {
            "metadata.labels" => format_map(pod.metadata.labels.as_ref()),
            "metadata.annotations" => format_map(pod.metadata.annotations.as_ref()),
            _ => field_value(pod, field, lookups).map_err(|e| invalid(e.to_string()))?,
        }
    } else if let Some(resource) = &item.resource_field_ref {
        let container = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .ok_or_else(|| invalid("the pod has no containers".into()))?;
        resource_value(pod, container, resource).map_err(|e| invalid(e.to_string()))?
    } else {
        return Err(invalid(format!("item {} has no source", item.path)));
    };
    Ok((
        item.path.clone(),
        value.into_bytes(),
        item.mode.map_or(mode, |m| m as u32),
    ))
}

/// The host directory of volume `name` of the pod whose directory is `pod_dir`.
pub fn volume_dir(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir.join("volumes").join(name)
}

/// Sets up every volume of the pod; returns each volume's host path.
pub fn prepare(
    pod: &Pod,
    pod_dir: &Path,
    lookups: &Lookups,
) -> Result<BTreeMap<String, PathBuf>, VolumeError> {
    let mut paths = BTreeMap::new();
    for volume in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        let io = |source| VolumeError::Io {
            volume: volume.name.clone(),
            source,
        };
        let path = match volume_files(pod, volume, lookups)? {
            VolumeContent::EmptyDir { memory, size_limit } => {
                let dir = volume_dir(pod_dir, &volume.name);
                std::fs::create_dir_all(&dir).map_err(io)?;
                if memory && !is_mount_point(&dir) {
                    mount_tmpfs(&dir, size_limit.as_deref()).map_err(io)?;
                }
                set_mode(&dir, 0o777).map_err(io)?;
                dir
            }
            VolumeContent::HostPath { path, type_ } => {
                host_path(&path, &type_).map_err(|message| VolumeError::Invalid {
                    volume: volume.name.clone(),
                    message,
                })?;
                PathBuf::from(path)
            }
            VolumeContent::Files(files) => {
                let dir = volume_dir(pod_dir, &volume.name);
                write_atomically(&dir, &files).map_err(io)?;
                dir
            }
        };
        paths.insert(volume.name.clone(), path);
    }
    Ok(paths)
}

/// The CRI mounts of `container`'s volumeMounts.
pub fn mounts(
    container: &Container,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<Vec<v1::Mount>, VolumeError> {
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let base = volumes
            .get(&mount.name)
            .ok_or_else(|| VolumeError::Invalid {
                volume: mount.name.clone(),
                message: format!(
                    "container {} mounts a volume the pod does not declare",
                    container.name
                ),
            })?;
        let mut host = base.clone();
        if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if sub.split('/').any(|part| part == "..") || sub.starts_with('/') {
                return Err(VolumeError::Invalid {
                    volume: mount.name.clone(),
                    message: format!("invalid subPath {sub:?}"),
                });
            }
            host = host.join(sub);
            if !host.exists() {
                std::fs::create_dir_all(&host).map_err(|source| VolumeError::Io {
                    volume: mount.name.clone(),
                    source,
                })?;
            }
        }
        let propagation = match mount.mount_propagation.as_deref() {
            Some("HostToContainer") => v1::MountPropagation::PropagationHostToContainer,
            Some("Bidirectional") => v1::MountPropagation::PropagationBidirectional,
            _ => v1::MountPropagation::PropagationPrivate,
        };
        mounts.push(v1::Mount {
            container_path: mount.mount_path.clone(),
            host_path: host.display().to_string(),
            readonly: mount.read_only.unwrap_or(false),
            propagation: propagation as i32,
            ..v1::Mount::default()
        });
    }
    Ok(mounts)
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Checks or creates a hostPath per its `type`.
fn host_path(path: &str, type_: &str) -> Result<(), String> {
    let p = Path::new(path);
    let meta = std::fs::metadata(p);
    match type_ {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::create_dir_all(p).map_err(|e| format!("cannot create {path}: {e}"))?;
                set_mode(p, 0o755).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        "FileOrCreate" => {
            if meta.is_err() {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("cannot create {path}: {e}"))?;
            }
            Ok(())
        }
        "Directory" if meta.as_ref().is_ok_and(|m| m.is_dir()) => Ok(()),
        "File" if meta.as_ref().is_ok_and(|m| m.is_file()) => Ok(()),
        "Socket" | "CharDevice" | "BlockDevice" if meta.is_ok() => Ok(()),
        other => Err(format!(
            "hostPath type check failed: {path} is not a {other}"
        )),
    }
}

fn is_mount_point(dir: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let wanted = dir.display().to_string();
    text.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(wanted.as_str()))
}

fn mount_tmpfs(dir: &Path, size_limit: Option<&str>) -> std::io::Result<()> {
    let size = size_limit
        .and_then(|q| shoal_common::quantity::parse_value(q).ok())
        .map(|bytes| format!("size={bytes}"))
        .unwrap_or_default();
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some(size.as_str()),
    )
    .map_err(std::io::Error::from)
}

/// Unmounts tmpfs emptyDirs under the pod's directory and removes it.
pub fn remove_pod_dir(pod_dir: &Path) {
    let volumes = pod_dir.join("volumes");
    if let Ok(entries) = std::fs::read_dir(&volumes) {
        for entry in entries.flatten() {
            let path = entry.path();
            if is_mount_point(&path) {
                let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
    let _ = std::fs::remove_dir_all(pod_dir);
}

/// The kubelet's atomic writer: files land in a fresh `..<stamp>` directory, `..data` is
/// switched to it by rename, and each top-level name is a symlink through `..data`.
pub fn write_atomically(dir: &Path, files: &[File]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let data_link = dir.join("..data");
    if let Ok(current) = std::fs::read_link(&data_link) {
        if same_content(&dir.join(&current), files) {
            return Ok(());
        }
    }
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let fresh = dir.join(&stamp);
    std::fs::create_dir_all(&fresh)?;
    for (path, content, mode) in files {
        if path.split('/').any(|p| p == ".." || p.is_empty()) {
            return Err(std::io::Error::other(format!("invalid path {path:?}")));
        }
        let target = fresh.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, content)?;
        set_mode(&target, *mode)?;
    }
    let old = std::fs::read_link(&data_link).ok();
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&stamp, &tmp_link)?;
    std::fs::rename(&tmp_link, &data_link)?;
    // User-visible names: one symlink per top-level entry; stale ones go.
    let tops: std::collections::BTreeSet<&str> = files
        .iter()
        .filter_map(|(p, _, _)| p.split('/').next())
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(top), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(name.as_str()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old {
        if old != Path::new(&stamp) {
            let _ = std::fs::remove_dir_all(dir.join(old));
        }
    }
    Ok(())
}

fn same_content(current: &Path, files: &[File]) -> bool {
    let mut count = 0;
    let all_match = files.iter().all(|(path, content, _)| {
        count += 1;
        std::fs::read(current.join(path)).is_ok_and(|c| &c == content)
    });
    let on_disk = walk(current).len();
    all_match && on_disk == count
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "labels": {"a": "b"}},
            "spec": {
                "containers": [{"name": "c", "image": "i", "volumeMounts": [
                    {"name": "cfg", "mountPath": "/etc/cfg", "readOnly": true},
                    {"name": "scratch", "mountPath": "/tmp/x", "subPath": "sub"}
                ]}],
                "volumes": [
                    {"name": "cfg", "configMap": {"name": "settings", "items": [{"key": "a.conf", "path": "conf/a.conf"}]}},
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}
                ]
            }
        }))
        .unwrap()
    }

    fn lookups() -> Lookups {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": "settings"}, "data": {"a.conf": "x=1"}}),
        )
        .unwrap();
        Lookups {
            config_maps: [("settings".to_string(), cm)].into(),
            ..Lookups::default()
        }
    }

    #[test]
    fn volumes_are_prepared_and_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let p = pod();
        let paths = prepare(&p, dir.path(), &lookups()).unwrap();
        let cfg = &paths["cfg"];
        assert_eq!(
            std::fs::read_to_string(cfg.join("conf/a.conf")).unwrap(),
            "x=1"
        );
        assert!(std::fs::symlink_metadata(cfg.join("conf"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_to_string(paths["info"].join("labels")).unwrap(),
            "a=\"b\""
        );
        let mounts = mounts(&p.spec.as_ref().unwrap().containers[0], &paths).unwrap();
        assert_eq!(mounts.len(), 2);
        assert!(mounts[0].readonly);
        assert!(mounts[1].host_path.ends_with("volumes/scratch/sub"));
    }

    #[test]
    fn updates_replace_the_data_atomically() {
        let dir = tempfile::tempdir().unwrap();
        write_atomically(
            dir.path(),
            &[
                ("k".into(), b"1".to_vec(), 0o644),
                ("gone".into(), b"x".to_vec(), 0o644),
            ],
        )
        .unwrap();
        let first = std::fs::read_link(dir.path().join("..data")).unwrap();
        write_atomically(
            dir.path(),
            &[
                ("k".into(), b"1".to_vec(), 0o644),
                ("gone".into(), b"x".to_vec(), 0o644),
            ],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_link(dir.path().join("..data")).unwrap(),
            first,
            "unchanged content is not rewritten"
        );
        write_atomically(dir.path(), &[("k".into(), b"2".to_vec(), 0o600)]).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("k")).unwrap(), "2");
        assert!(std::fs::symlink_metadata(dir.path().join("gone")).is_err());
        assert!(!dir.path().join(first).exists());
    }

    #[test]
    fn missing_sources_and_keys_are_errors_unless_optional() {
        let p = pod();
        assert!(
            matches!(prepare(&p, Path::new("/nonexistent"), &Lookups::default()), Err(VolumeError::ConfigMapNotFound(name)) if name == "settings")
        );
        let v: Volume = serde_json::from_value(
            json!({"name": "o", "secret": {"secretName": "nope", "optional": true}}),
        )
        .unwrap();
        assert_eq!(
            volume_files(&p, &v, &Lookups::default()).unwrap(),
            VolumeContent::Files(vec![])
        );
        let bad: Volume = serde_json::from_value(json!({"name": "b", "configMap": {"name": "settings", "items": [{"key": "zzz", "path": "z"}]}})).unwrap();
        assert!(matches!(
            volume_files(&p, &bad, &lookups()),
            Err(VolumeError::MissingKey(_))
        ));
    }

    #[test]
    fn projected_service_account_tokens_come_from_the_lookups() {
        let p = pod();
        let v: Volume = serde_json::from_value(json!({"name": "kube-api-access-x", "projected": {
            "defaultMode": 420, "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "settings", "items": [{"key": "a.conf", "path": "ca.crt"}]}}]}}))
        .unwrap();
        assert!(matches!(
            volume_files(&p, &v, &lookups()),
            Err(VolumeError::TokenUnavailable(name)) if name == "kube-api-access-x"
        ));
        let mut l = lookups();
        l.tokens.insert("|3607".into(), "jwt".into());
        let VolumeContent::Files(files) = volume_files(&p, &v, &l).unwrap() else {
            panic!("files expected");
        };
        assert_eq!(files[0], ("token".to_string(), b"jwt".to_vec(), 0o644));
        assert_eq!(files[1].0, "ca.crt");
    }

    #[test]
    fn sub_paths_cannot_escape() {
        let c: Container = serde_json::from_value(json!({"name": "c", "volumeMounts": [{"name": "v", "mountPath": "/x", "subPath": "../etc"}]})).unwrap();
        let paths = [("v".to_string(), PathBuf::from("/tmp"))].into();
        assert!(mounts(&c, &paths).is_err());
    }
}
