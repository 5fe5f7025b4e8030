//! Who a store is, on disk. `<dir>/FORMAT` names the on-disk format, this member's Raft node
//! id and the id of the cluster it belongs to; `<dir>/REMOVED` marks a member that its cluster
//! removed, so it never serves that cluster's data again.
//!
//! `FORMAT` is a few text lines, readable by an operator:
//!
//! ```text
//! shoal-store 2
//! node-id 1
//! cluster-id 3f6c0d2e9b1a4c5d8e7f60718293a4b5
//! ```
//!
//! A member that is waiting to join has no `cluster-id` line yet: it learns the id from the
//! first Raft message of the cluster that adds it. Format 1 (the single line `shoal-store 1`,
//! written before stores could replicate) is read as node 1 of a one-member cluster and
//! rewritten as format 2 with a new cluster id when opened.

use std::io::Write;
use std::path::Path;

/// The marker file.
pub(crate) const FORMAT_FILE: &str = "FORMAT";
/// Written by stores that predate membership.
const FORMAT_V1: &str = "shoal-store 1";
/// The current format.
const FORMAT_V2: &str = "shoal-store 2";
/// Present once this member was removed from its cluster.
pub(crate) const REMOVED_FILE: &str = "REMOVED";

/// A store's identity as `FORMAT` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub node_id: u64,
    /// `None` while a joining member has not heard from its cluster yet.
    pub cluster_id: Option<String>,
}

/// What a `FORMAT` file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Format 1: node 1 of a one-member cluster without a cluster id.
    V1,
    V2(Identity),
}

/// Parses a `FORMAT` file's text; the error says what is wrong with it.
pub(crate) fn parse(text: &str) -> Result<Parsed, String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    match lines.next() {
        Some(FORMAT_V1) => match lines.next() {
            None => Ok(Parsed::V1),
            Some(extra) => Err(format!("unexpected line {extra:?} in a format 1 marker")),
        },
        Some(FORMAT_V2) => {
            let mut node_id = None;
            let mut cluster_id = None;
            for line in lines {
                let (key, value) = line
                    .split_once(' ')
                    .ok_or_else(|| format!("malformed line {line:?}"))?;
                match key {
                    "node-id" if node_id.is_none() => {
                        let id: u64 = value
                            .trim()
                            .parse()
                            .map_err(|_| format!("bad node id {value:?}"))?;
                        if id == 0 {
                            return Err("node id 0 is not allowed".into());
                        }
                        node_id = Some(id);
                    }
                    "cluster-id" if cluster_id.is_none() => {
                        let id = value.trim();
                        if !valid_cluster_id(id) {
                            return Err(format!("bad cluster id {id:?}"));
                        }
                        cluster_id = Some(id.to_string());
                    }
                    _ => return Err(format!("unexpected line {line:?}")),
                }
            }
            let node_id = node_id.ok_or("no node-id line")?;
            Ok(Parsed::V2(Identity {
                node_id,
                cluster_id,
            }))
        }
        Some(other) => Err(format!("unknown store format {other:?}")),
        None => Err("empty format marker".into()),
    }
}

/// A cluster id is 1 to 64 characters of `[0-9a-zA-Z-]` (what [`new_cluster_id`] makes).
pub(crate) fn valid_cluster_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The text [`parse`] reads back.
pub(crate) fn render(identity: &Identity) -> String {
    let mut out = format!("{FORMAT_V2}\nnode-id {}\n", identity.node_id);
    if let Some(cluster) = &identity.cluster_id {
        out.push_str(&format!("cluster-id {cluster}\n"));
    }
    out
}

/// Replaces `FORMAT` atomically (temporary file, fsync, rename, fsync of the directory), so a
/// crash leaves the old identity or the new one, never a torn file.
pub(crate) fn write(dir: &Path, identity: &Identity) -> std::io::Result<()> {
    write_atomic(dir, FORMAT_FILE, &render(identity))
}

/// Why this member was removed, if it was.
pub(crate) fn read_removed(dir: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(dir.join(REMOVED_FILE)) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a removed member says when asked to serve or open, given why it was removed.
pub(crate) fn removed_message(dir: &Path, why: &str) -> String {
    format!(
        "{why}; it no longer serves that cluster's data: remove {} to join a cluster again as a \
         new member",
        dir.display()
    )
}

/// Records for good that this member was removed.
pub(crate) fn write_removed(dir: &Path, why: &str) -> std::io::Result<()> {
    write_atomic(dir, REMOVED_FILE, &format!("{why}\n"))
}

fn write_atomic(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| std::io::Error::other("the system random generator failed"))?;
    Ok(bytes)
}

/// 64 random bits.
pub(crate) fn random_u64() -> std::io::Result<u64> {
    Ok(u64::from_be_bytes(random_bytes::<8>()?))
}

/// A random id for a member that joins without one chosen for it. Kept below 2^53 so that it
/// survives any JSON parser, and never 0.
pub(crate) fn new_node_id() -> std::io::Result<u64> {
    let id = random_u64()? & ((1 << 53) - 1);
    Ok(id.max(1))
}

/// A random cluster id: 32 hex digits.
pub(crate) fn new_cluster_id() -> std::io::Result<String> {
    Ok(random_bytes::<16>()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn format_2_round_trips() {
        for identity in [
            Identity {
                node_id: 7,
                cluster_id: Some("3f6c0d2e9b1a4c5d8e7f60718293a4b5".into()),
            },
            Identity {
                node_id: 1 << 40,
                cluster_id: None,
            },
        ] {
            assert_eq!(parse(&render(&identity)), Ok(Parsed::V2(identity)));
        }
    }

    #[test]
    fn format_1_is_read_as_a_one_member_store() {
        assert_eq!(parse("shoal-store 1\n"), Ok(Parsed::V1));
        assert_eq!(parse("  shoal-store 1  "), Ok(Parsed::V1));
    }

    #[test]
    fn damaged_markers_are_refused_with_a_reason() {
        for (text, why) in [
            ("", "empty"),
            ("something else\n", "unknown store format"),
            ("shoal-store 1\nnode-id 2\n", "unexpected line"),
            ("shoal-store 2\n", "no node-id"),
            ("shoal-store 2\nnode-id 0\n", "node id 0"),
            ("shoal-store 2\nnode-id x\n", "bad node id"),
            ("shoal-store 2\nnode-id 1\nnode-id 2\n", "unexpected line"),
            (
                "shoal-store 2\nnode-id 1\ncluster-id a/b\n",
                "bad cluster id",
            ),
            ("shoal-store 2\nnode-id 1\ncolour blue\n", "unexpected line"),
            ("shoal-store 2\nnode-id\n", "malformed"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn random_ids_are_valid() {
        let a = new_node_id().unwrap();
        assert!(a > 0 && a < (1 << 53));
        let cluster = new_cluster_id().unwrap();
        assert_eq!(cluster.len(), 32);
        assert!(valid_cluster_id(&cluster));
        assert_ne!(cluster, new_cluster_id().unwrap());
    }

    #[test]
    fn markers_are_written_and_read_back() {
        let dir = tempfile::TempDir::new().unwrap();
        let identity = Identity {
            node_id: 3,
            cluster_id: None,
        };
        write(dir.path(), &identity).unwrap();
        let text = std::fs::read_to_string(dir.path().join(FORMAT_FILE)).unwrap();
        assert_eq!(parse(&text), Ok(Parsed::V2(identity)));
        assert_eq!(read_removed(dir.path()).unwrap(), None);
        write_removed(dir.path(), "removed by node 1").unwrap();
        assert_eq!(
            read_removed(dir.path()).unwrap().as_deref(),
            Some("removed by node 1")
        );
    }
}
