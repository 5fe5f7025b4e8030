//! Keeping the store off a full disk. openraft treats a failed log write as fatal — Raft stops
//! and only reopening the store brings it back — so the store refuses to grow before the disk
//! is full: while the file system holding its directory has less than a reserve free, writes
//! that add data fail with [`StoreError::NoSpace`] (deletes and compactions, which are how
//! space comes back, still go through) and a follower turns away log entries from the leader
//! (it catches up once there is space again). Reads keep working throughout.

use std::path::PathBuf;

use crate::error::{Result, StoreError};
use crate::mvcc::Command;

/// The free-space check of one store directory.
#[derive(Debug, Clone)]
pub(crate) struct DiskSpace {
    dir: PathBuf,
    reserve: u64,
}

/// Whether `command` may be accepted with `free` bytes left and `reserve` kept back. `None`
/// stands for log entries arriving from the leader, which may carry anything.
pub(crate) fn allows(free: u64, reserve: u64, command: Option<&Command>) -> bool {
    if free >= reserve {
        return true;
    }
    match command {
        Some(Command::Delete { .. } | Command::Compact { .. }) => true,
        Some(Command::Batch(commands)) => commands.iter().all(|c| allows(free, reserve, Some(c))),
        Some(Command::Tagged { command, .. }) => allows(free, reserve, Some(command)),
        Some(Command::Create { .. } | Command::Update { .. } | Command::Put { .. }) | None => false,
    }
}

impl DiskSpace {
    pub fn new(dir: PathBuf, reserve: u64) -> DiskSpace {
        DiskSpace { dir, reserve }
    }

    /// Bytes free for this (unprivileged-equivalent) process where the store lives.
    fn free(&self) -> Result<u64> {
        let stat = nix::sys::statvfs::statvfs(&self.dir).map_err(|e| {
            StoreError::Io(format!(
                "checking free space in {}: {e}",
                self.dir.display()
            ))
        })?;
        #[allow(clippy::useless_conversion)] // the widths differ between targets
        let free =
            u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size()));
        Ok(free)
    }

    /// Refuses `command` (or, for `None`, entries from the leader) when space is short.
    pub fn check(&self, command: Option<&Command>) -> Result<()> {
        if self.reserve == 0 {
            return Ok(());
        }
        let free = self.free()?;
        if allows(free, self.reserve, command) {
            return Ok(());
        }
        Err(StoreError::NoSpace(format!(
            "{} has {free} bytes free, less than the {} bytes the store keeps in reserve; writes \
             that add data are refused until space is freed (deletes still work)",
            self.dir.display(),
            self.reserve
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put() -> Command {
        Command::Put {
            key: "/k".into(),
            value: vec![1],
        }
    }

    #[test]
    fn everything_goes_while_there_is_room() {
        assert!(allows(100, 100, Some(&put())));
        assert!(allows(100, 100, None));
    }

    #[test]
    fn only_what_frees_space_goes_when_short() {
        let delete = Command::Delete {
            key: "/k".into(),
            expected: None,
        };
        let compact = Command::Compact { revision: 3 };
        assert!(allows(99, 100, Some(&delete)));
        assert!(allows(99, 100, Some(&compact)));
        assert!(allows(
            99,
            100,
            Some(&Command::Batch(vec![delete.clone(), compact]))
        ));
        assert!(!allows(99, 100, Some(&put())));
        assert!(!allows(99, 100, Some(&Command::Batch(vec![delete, put()]))));
        assert!(!allows(99, 100, None));
    }
}
