//! Store snapshot files, as k3s keeps etcd snapshots: a consistent copy of the state machine at
//! one revision, written by [`RaftStore::save_snapshot`] while the store serves, listed by
//! [`list_snapshots`] (also with the store stopped), and read back — checksum first — by
//! [`crate::reset_cluster`] (`reset.rs`) to restore a store from one.
//!
//! A file is a short text header an operator can read with `head`, a blank line, then the
//! payload — the state as the Raft snapshots of `sm.rs` encode it (every current key at one
//! revision; history starts there):
//!
//! ```text
//! shoal-store-snapshot 1
//! cluster-id 3f6c0d2e9b1a4c5d8e7f60718293a4b5
//! node-id 1
//! revision 4711
//! created 1700000000
//! keys 812
//! payload 1048576
//! sha256 <SHA-256 of every header byte before this line, then of the payload>
//!
//! <payload>
//! ```
//!
//! A file is written under a hidden temporary name, fsync'd, then linked to its name (which
//! refuses to replace another file) and the directory fsync'd: a crash leaves the complete
//! file or none under the name.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::sm::SnapshotData;
use super::RaftStore;
use crate::error::StoreError;
use crate::types::{validate_key, Revision};

/// The first line of every snapshot file, up to the format number.
const MAGIC: &str = "shoal-store-snapshot ";
/// The format this code writes and reads.
const FORMAT: u32 = 1;
/// A header is a few short lines; anything longer is not one.
const MAX_HEADER_BYTES: usize = 4096;
/// The longest snapshot name.
const MAX_NAME_BYTES: usize = 200;

/// Why a snapshot could not be saved, listed, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file is not a Shoal store snapshot (or one of a format this version does not read).
    #[error("{}: not a Shoal store snapshot: {why}", path.display())]
    Foreign { path: PathBuf, why: String },

    /// The file is a Shoal store snapshot but damaged: truncated, a bad header, a checksum
    /// that does not match, a payload that does not decode.
    #[error("{}: the snapshot is damaged: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },

    /// A server has the store open; an offline operation needs it stopped.
    #[error("the store in {} is in use by a running server; stop it first", dir.display())]
    Locked { dir: PathBuf },

    /// Resetting a data dir that holds no store, without a snapshot to restore.
    #[error("there is no store in {} to reset (restore a snapshot into it instead)", dir.display())]
    NoStore { dir: PathBuf },

    /// A snapshot name that cannot be a file name in the snapshot directory.
    #[error("snapshot name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },

    /// A snapshot of that name exists already.
    #[error("{}: a snapshot of that name exists already", path.display())]
    Exists { path: PathBuf },

    /// The file system failed.
    #[error("{what} {}: {error}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        error: String,
    },

    /// The store failed (a snapshot of a follower needs a quorum to know it is up to date;
    /// a reset needs a store it can read).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SnapshotError {
    pub(super) fn io(
        what: &'static str,
        path: &Path,
        error: impl std::fmt::Display,
    ) -> SnapshotError {
        SnapshotError::Io {
            what,
            path: path.to_path_buf(),
            error: error.to_string(),
        }
    }
}

/// What a snapshot file's header says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotHeader {
    /// The cluster the store belonged to (none for a member that never joined one).
    pub cluster_id: Option<String>,
    /// The member that took it.
    pub node_id: u64,
    /// Every write up to this revision is in it, none after.
    pub revision: Revision,
    /// When it was taken, in seconds since the Unix epoch.
    pub created: u64,
    /// How many keys it holds.
    pub keys: u64,
}

/// One snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    /// The file name.
    pub name: String,
    pub path: PathBuf,
    /// The file's size in bytes.
    pub size: u64,
    #[serde(flatten)]
    pub header: SnapshotHeader,
}

/// One entry of [`list_snapshots`].
#[derive(Debug)]
pub enum Listed {
    Snapshot(SnapshotInfo),
    /// A file in the directory whose header cannot be read.
    Unreadable {
        name: String,
        path: PathBuf,
        error: SnapshotError,
    },
}

/// Checks that `name` can be a snapshot's file name: 1 to 200 of `[A-Za-z0-9._-]`, not
/// starting with a dot (hidden names are the temporary files).
pub fn validate_snapshot_name(name: &str) -> Result<(), SnapshotError> {
    let invalid = |why| {
        Err(SnapshotError::InvalidName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return invalid("longer than 200 characters");
    }
    if name.starts_with('.') {
        return invalid("starts with a dot");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return invalid("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// What [`parse_header`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ParsedHeader {
    header: SnapshotHeader,
    /// Bytes before the payload (the header and its blank line).
    len: usize,
    /// Bytes the checksum covers before the payload (the header up to its `sha256` line).
    signed_len: usize,
    payload_len: u64,
    sha256: Vec<u8>,
}

/// Why [`parse_header`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HeaderProblem {
    Foreign(String),
    Corrupt(String),
}

impl HeaderProblem {
    fn at(self, path: &Path) -> SnapshotError {
        let path = path.to_path_buf();
        match self {
            HeaderProblem::Foreign(why) => SnapshotError::Foreign { path, why },
            HeaderProblem::Corrupt(why) => SnapshotError::Corrupt { path, why },
        }
    }
}

fn render_header(header: &SnapshotHeader, payload_len: usize) -> String {
    let mut out = format!("{MAGIC}{FORMAT}\n");
    if let Some(cluster) = &header.cluster_id {
        out.push_str(&format!("cluster-id {cluster}\n"));
    }
    out.push_str(&format!(
        "node-id {}\nrevision {}\ncreated {}\nkeys {}\npayload {payload_len}\n",
        header.node_id, header.revision, header.created, header.keys
    ));
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn checksum(signed_header: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(signed_header);
    context.update(payload);
    context.finish().as_ref().to_vec()
}

/// Reads the header at the start of a file (`prefix`: its first bytes, at most
/// [`MAX_HEADER_BYTES`] are looked at).
fn parse_header(prefix: &[u8]) -> Result<ParsedHeader, HeaderProblem> {
    let corrupt = |why: String| Err(HeaderProblem::Corrupt(why));
    if !prefix.starts_with(MAGIC.as_bytes()) {
        return Err(HeaderProblem::Foreign(format!(
            "it does not start with {:?}",
            MAGIC.trim_end()
        )));
    }
    let window = &prefix[..prefix.len().min(MAX_HEADER_BYTES)];
    let first_len = window
        .iter()
        .position(|b| *b == b'\n')
        .map_or(window.len(), |at| at + 1);
    let version = String::from_utf8_lossy(&window[MAGIC.len()..first_len]);
    if version.trim_end() != FORMAT.to_string() {
        return Err(HeaderProblem::Foreign(format!(
            "format {:?}, this version reads format {FORMAT}",
            version.trim_end()
        )));
    }
    let Some(end) = window.windows(2).position(|w| w == b"\n\n") else {
        return corrupt("the header is cut short or has no end".into());
    };
    let Ok(text) = std::str::from_utf8(&window[first_len..=end]) else {
        return corrupt("the header is not text".into());
    };
    let lines = text.split_inclusive('\n');
    const NUMBERS: [&str; 5] = ["node-id", "revision", "created", "keys", "payload"];
    let mut offset = first_len;
    let mut cluster_id = None;
    let mut numbers: [Option<u64>; 5] = [None; 5];
    let mut sha256 = None;
    let mut signed_len = 0;
    for line in lines {
        let start = offset;
        offset += line.len();
        let line = line.trim_end_matches('\n');
        if sha256.is_some() {
            return corrupt(format!("unexpected line {line:?} after the checksum"));
        }
        let Some((key, value)) = line.split_once(' ') else {
            return corrupt(format!("malformed line {line:?}"));
        };
        match key {
            "cluster-id" if cluster_id.is_none() => {
                if !super::identity::valid_cluster_id(value) {
                    return corrupt(format!("bad cluster id {value:?}"));
                }
                cluster_id = Some(value.to_string());
            }
            "sha256" => match unhex(value) {
                Some(digest) if digest.len() == 32 => {
                    sha256 = Some(digest);
                    signed_len = start;
                }
                _ => return corrupt(format!("bad checksum {value:?}")),
            },
            _ => {
                let Some(slot) = NUMBERS.iter().position(|name| *name == key) else {
                    return corrupt(format!("unexpected line {line:?}"));
                };
                if numbers[slot].is_some() {
                    return corrupt(format!("{key} appears twice"));
                }
                let Ok(number) = value.parse::<u64>() else {
                    return corrupt(format!("bad {key} {value:?}"));
                };
                numbers[slot] = Some(number);
            }
        }
    }
    let Some(sha256) = sha256 else {
        return corrupt("no sha256 line".into());
    };
    let mut values = [0u64; 5];
    for (slot, name) in NUMBERS.iter().enumerate() {
        let Some(value) = numbers[slot] else {
            return corrupt(format!("no {name} line"));
        };
        values[slot] = value;
    }
    let [node_id, revision, created, keys, payload_len] = values;
    let Ok(revision) = Revision::try_from(revision) else {
        return corrupt(format!("bad revision {revision}"));
    };
    Ok(ParsedHeader {
        header: SnapshotHeader {
            cluster_id,
            node_id,
            revision,
            created,
            keys,
        },
        len: end + 2,
        signed_len,
        payload_len,
        sha256,
    })
}

/// The file name part of `path`, for listings and errors.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads only the header of the snapshot at `path` (no checksum check: see
/// [`read_verified`]).
pub fn read_snapshot_info(path: &Path) -> Result<SnapshotInfo, SnapshotError> {
    let file = std::fs::File::open(path).map_err(|e| SnapshotError::io("opening", path, e))?;
    let size = file
        .metadata()
        .map_err(|e| SnapshotError::io("reading", path, e))?
        .len();
    let mut prefix = Vec::with_capacity(MAX_HEADER_BYTES);
    file.take(MAX_HEADER_BYTES as u64)
        .read_to_end(&mut prefix)
        .map_err(|e| SnapshotError::io("reading", path, e))?;
    let parsed = parse_header(&prefix).map_err(|p| p.at(path))?;
    Ok(SnapshotInfo {
        name: file_name(path),
        path: path.to_path_buf(),
        size,
        header: parsed.header,
    })
}

/// The value of `key` in the snapshot at `path` (read whole and checked as a restore would
/// check it), for what a restore must take from a snapshot before any store opens.
pub fn snapshot_value(path: &Path, key: &str) -> Result<Option<Vec<u8>>, SnapshotError> {
    let (_, data) = read_verified(path)?;
    Ok(data
        .kvs
        .into_iter()
        .find(|kv| kv.key == key)
        .map(|kv| kv.value))
}

/// Reads the snapshot at `path` whole and checks it: header, length, checksum, and a payload
/// that decodes into keys the store accepts at revisions no later than the snapshot's.
pub(super) fn read_verified(path: &Path) -> Result<(SnapshotInfo, SnapshotData), SnapshotError> {
    let bytes = std::fs::read(path).map_err(|e| SnapshotError::io("reading", path, e))?;
    let parsed = parse_header(&bytes).map_err(|p| p.at(path))?;
    let corrupt = |why: String| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        why,
    };
    let payload = &bytes[parsed.len..];
    if payload.len() as u64 != parsed.payload_len {
        return Err(corrupt(format!(
            "the header announces {} payload bytes, the file holds {}",
            parsed.payload_len,
            payload.len()
        )));
    }
    if checksum(&bytes[..parsed.signed_len], payload) != parsed.sha256 {
        return Err(corrupt("the checksum does not match its contents".into()));
    }
    let data = SnapshotData::from_bytes(payload)
        .map_err(|e| corrupt(format!("the payload does not decode: {e}")))?;
    check_payload(&parsed.header, &data).map_err(corrupt)?;
    Ok((
        SnapshotInfo {
            name: file_name(path),
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            header: parsed.header,
        },
        data,
    ))
}

/// What a checksummed payload must still satisfy before it replaces a store.
fn check_payload(header: &SnapshotHeader, data: &SnapshotData) -> Result<(), String> {
    if data.revision != header.revision {
        return Err(format!(
            "the payload is at revision {}, the header says {}",
            data.revision, header.revision
        ));
    }
    if data.kvs.len() as u64 != header.keys {
        return Err(format!(
            "the payload holds {} keys, the header says {}",
            data.kvs.len(),
            header.keys
        ));
    }
    for kv in &data.kvs {
        validate_key(&kv.key).map_err(|e| e.to_string())?;
        if kv.create_revision < 1
            || kv.create_revision > kv.mod_revision
            || kv.mod_revision > data.revision
        {
            return Err(format!(
                "key {:?} has revisions {}..{} outside 1..{}",
                kv.key, kv.create_revision, kv.mod_revision, data.revision
            ));
        }
    }
    Ok(())
}

/// Writes `payload` (an encoded [`SnapshotData`] that `header` describes) as the snapshot
/// `dir/name` (see the module docs); `dir` is created if needed.
fn write_snapshot(
    dir: &Path,
    name: &str,
    header: SnapshotHeader,
    payload: &[u8],
) -> Result<SnapshotInfo, SnapshotError> {
    validate_snapshot_name(name)?;
    std::fs::create_dir_all(dir).map_err(|e| SnapshotError::io("creating", dir, e))?;
    let path = dir.join(name);
    if path.exists() {
        return Err(SnapshotError::Exists { path });
    }
    let signed = render_header(&header, payload.len());
    let digest = checksum(signed.as_bytes(), payload);
    let head = format!("{signed}sha256 {}\n\n", hex(&digest));

    let tmp = dir.join(format!(".{name}.tmp"));
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(head.as_bytes())?;
        file.write_all(payload)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(SnapshotError::io("writing", &tmp, e));
    }
    // A link, unlike a rename, never replaces a file that appeared meanwhile.
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(SnapshotError::Exists { path });
        }
        Err(e) => return Err(SnapshotError::io("writing", &path, e)),
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SnapshotError::io("syncing", dir, e))?;
    Ok(SnapshotInfo {
        name: name.to_string(),
        size: (head.len() + payload.len()) as u64,
        path,
        header,
    })
}

/// The snapshot files in `dir` (none if it does not exist), oldest first. Hidden files (the
/// temporary files of snapshots being written) are left out; any other file that is not a
/// readable snapshot is listed as [`Listed::Unreadable`].
pub fn list_snapshots(dir: &Path) -> Result<Vec<Listed>, SnapshotError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SnapshotError::io("listing", dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SnapshotError::io("listing", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if name.starts_with('.') || !is_file {
            continue;
        }
        let path = entry.path();
        out.push(match read_snapshot_info(&path) {
            Ok(info) => Listed::Snapshot(info),
            Err(error) => Listed::Unreadable { name, path, error },
        });
    }
    out.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
    Ok(out)
}

fn sort_key(listed: &Listed) -> (u64, &str) {
    match listed {
        Listed::Snapshot(info) => (info.header.created, &info.name),
        Listed::Unreadable { name, .. } => (0, name),
    }
}

pub(super) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl RaftStore {
    /// Writes a snapshot of the store — every key at one revision, at least as new as every
    /// write acknowledged before the call (on a follower this asks the leader, so it needs a
    /// quorum) — to `dir/name` while the store keeps serving. Writes wait while the keys are
    /// copied, as they do for a Raft snapshot.
    pub async fn save_snapshot(
        &self,
        dir: &Path,
        name: &str,
    ) -> Result<SnapshotInfo, SnapshotError> {
        validate_snapshot_name(name)?;
        self.core.linearize().await?;
        let shared = Arc::clone(&self.core.shared);
        let (cluster_id, node_id) = (self.cluster_id(), self.node_id());
        let (dir, name) = (dir.to_path_buf(), name.to_string());
        tokio::task::spawn_blocking(move || {
            let captured = shared.capture()?;
            let header = SnapshotHeader {
                cluster_id,
                node_id,
                revision: captured.revision,
                created: now_unix(),
                keys: captured.keys() as u64,
            };
            write_snapshot(&dir, &name, header, &captured.payload())
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("saving a snapshot: {e}")))?
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::types::KeyValue;

    fn kv(key: &str, create: Revision, modified: Revision) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: b"v".to_vec(),
            create_revision: create,
            mod_revision: modified,
            version: modified - create + 1,
        }
    }

    fn sample() -> SnapshotData {
        SnapshotData {
            revision: 7,
            kvs: vec![kv("/a", 1, 3), kv("/b", 5, 7)],
        }
    }

    fn header() -> SnapshotHeader {
        SnapshotHeader {
            cluster_id: Some("3f6c0d2e9b1a4c5d8e7f60718293a4b5".into()),
            node_id: 3,
            revision: 7,
            created: 1_700_000_000,
            keys: 2,
        }
    }

    fn write(
        dir: &Path,
        name: &str,
        header: SnapshotHeader,
    ) -> Result<SnapshotInfo, SnapshotError> {
        write_snapshot(dir, name, header, &sample().to_bytes().unwrap())
    }

    #[test]
    fn a_written_snapshot_reads_back_whole() {
        let dir = tempfile::TempDir::new().unwrap();
        let info = write(dir.path(), "one", header()).unwrap();
        assert_eq!(info.header.revision, 7);
        assert_eq!(info.header.keys, 2);
        assert_eq!(info.size, std::fs::metadata(&info.path).unwrap().len());
        assert_eq!(read_snapshot_info(&info.path).unwrap(), info);
        let (read, data) = read_verified(&info.path).unwrap();
        assert_eq!(read, info);
        assert_eq!(data, sample());
        // The header is text an operator can read.
        let text = std::fs::read(&info.path).unwrap();
        assert!(text.starts_with(b"shoal-store-snapshot 1\ncluster-id 3f6c"));
        // No temporary file is left, and a second snapshot of that name is refused.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert!(matches!(
            write(dir.path(), "one", header()),
            Err(SnapshotError::Exists { .. })
        ));
    }

    #[test]
    fn every_damaged_byte_is_caught() {
        let dir = tempfile::TempDir::new().unwrap();
        let info = write(dir.path(), "s", header()).unwrap();
        let good = std::fs::read(&info.path).unwrap();
        let damaged = dir.path().join("damaged");
        for at in 0..good.len() {
            let mut bytes = good.clone();
            bytes[at] ^= 0x01;
            std::fs::write(&damaged, &bytes).unwrap();
            match read_verified(&damaged) {
                Err(SnapshotError::Corrupt { .. } | SnapshotError::Foreign { .. }) => {}
                other => panic!("flipping byte {at} went unnoticed: {other:?}"),
            }
        }
        for len in [0, 10, good.len() / 2, good.len() - 1] {
            std::fs::write(&damaged, &good[..len]).unwrap();
            assert!(read_verified(&damaged).is_err(), "cut at {len}");
        }
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&damaged, &longer).unwrap();
        assert!(matches!(
            read_verified(&damaged),
            Err(SnapshotError::Corrupt { .. })
        ));
    }

    #[test]
    fn foreign_files_are_told_apart_from_damaged_ones() {
        let foreign = |bytes: &[u8]| matches!(parse_header(bytes), Err(HeaderProblem::Foreign(_)));
        let corrupt = |bytes: &[u8]| matches!(parse_header(bytes), Err(HeaderProblem::Corrupt(_)));
        assert!(foreign(b""));
        assert!(foreign(b"shoal-store 2\nnode-id 1\n"));
        assert!(foreign(b"\x00\x01binary"));
        assert!(foreign(b"shoal-store-snapshot 2\nnode-id 1\n\n"));
        assert!(corrupt(b"shoal-store-snapshot 1\nnode-id 1\n"));
        assert!(corrupt(b"shoal-store-snapshot 1\nnode-id 1\n\n"));
        assert!(corrupt(
            b"shoal-store-snapshot 1\nnode-id x\nrevision 1\ncreated 1\nkeys 0\npayload 0\nsha256 00\n\n"
        ));
        let full = "shoal-store-snapshot 1\nnode-id 1\nrevision 1\ncreated 1\nkeys 0\npayload 0\n";
        let sha = format!("sha256 {}\n\n", "0".repeat(64));
        assert!(parse_header(format!("{full}{sha}").as_bytes()).is_ok());
        assert!(corrupt(format!("{full}node-id 2\n{sha}").as_bytes()));
        assert!(corrupt(
            format!("{full}{}colour blue\n\n", &sha[..sha.len() - 1]).as_bytes()
        ));
        assert!(corrupt(format!("{full}cluster-id a/b\n{sha}").as_bytes()));
    }

    #[test]
    fn payloads_that_would_break_a_store_are_refused() {
        let header = |revision, keys| SnapshotHeader {
            revision,
            keys,
            ..header()
        };
        assert!(check_payload(&header(7, 2), &sample()).is_ok());
        assert!(check_payload(&header(8, 2), &sample()).is_err());
        assert!(check_payload(&header(7, 3), &sample()).is_err());
        let future = SnapshotData {
            revision: 7,
            kvs: vec![kv("/a", 1, 9)],
        };
        assert!(check_payload(&header(7, 1), &future).is_err());
        let bad_key = SnapshotData {
            revision: 7,
            kvs: vec![kv("no-slash", 1, 2)],
        };
        assert!(check_payload(&header(7, 1), &bad_key).is_err());
    }

    #[test]
    fn names_must_be_plain_file_names() {
        for good in ["on-demand-node1-1700000000", "a", "x.y_z-1"] {
            validate_snapshot_name(good).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", "é", &"x".repeat(201)] {
            assert!(validate_snapshot_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn listing_shows_snapshots_oldest_first_and_flags_other_files() {
        let dir = tempfile::TempDir::new().unwrap();
        assert!(list_snapshots(&dir.path().join("missing"))
            .unwrap()
            .is_empty());
        let newer = SnapshotHeader {
            created: 1_800_000_000,
            ..header()
        };
        write(dir.path(), "b-newer", newer).unwrap();
        write(dir.path(), "c-older", header()).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
        std::fs::write(dir.path().join(".x.tmp"), "partial").unwrap();
        let listed = list_snapshots(dir.path()).unwrap();
        let names: Vec<String> = listed
            .iter()
            .map(|l| match l {
                Listed::Snapshot(info) => info.name.clone(),
                Listed::Unreadable { name, error, .. } => {
                    assert!(matches!(error, SnapshotError::Foreign { .. }), "{error}");
                    format!("unreadable {name}")
                }
            })
            .collect();
        assert_eq!(names, ["unreadable notes.txt", "c-older", "b-newer"]);
    }
}
