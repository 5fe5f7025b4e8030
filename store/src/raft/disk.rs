//! Making sled's writes survive power loss, not only process death. sled's own flush issues
//! `sync_file_range` on its log file — which flushes neither the device's write cache nor the
//! file's size metadata — and never syncs the separate blob files it writes large items to
//! (anything over about 128 KiB: big values, and tree nodes holding several of them). So every
//! durability point of the state machine's database (installing a snapshot, before the Raft
//! log is purged, shutdown) goes through [`DiskSync::sync`]: sled's flush, then an fsync of
//! each blob file not yet synced and of the blob directory, then `fdatasync` of the log file.
//! (The Raft log has files of its own, `log.rs`.)

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The sync step of the state machine's database.
#[derive(Debug)]
pub struct DiskSync {
    db: sled::Db,
    log_file: File,
    blob_dir: PathBuf,
    /// Blob files already synced; sled never rewrites a blob in place (each is named by the
    /// log sequence number that wrote it), so one sync per file is enough.
    synced_blobs: Mutex<HashSet<OsString>>,
}

impl DiskSync {
    /// For the sled database opened at `path`.
    pub fn open(db: &sled::Db, path: &Path) -> io::Result<Arc<DiskSync>> {
        Ok(Arc::new(DiskSync {
            db: db.clone(),
            log_file: File::open(path.join("db"))?,
            blob_dir: path.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
        }))
    }

    /// Everything written to the database so far is on stable storage when this returns.
    pub fn sync_blocking(&self) -> io::Result<()> {
        self.db.flush().map_err(io::Error::other)?;
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|e| e.into_inner());
        let entries = match std::fs::read_dir(&self.blob_dir) {
            Ok(entries) => entries,
            // sled makes the directory only when it first needs it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                drop(synced);
                return self.log_file.sync_data();
            }
            Err(e) => return Err(e),
        };
        let names = entries
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<io::Result<Vec<_>>>()?;
        let (present, new_blobs) = sync_blobs(&self.blob_dir, names, &synced)?;
        if new_blobs {
            File::open(&self.blob_dir)?.sync_all()?;
        }
        // Forget blobs sled has garbage-collected.
        *synced = present;
        drop(synced);
        self.log_file.sync_data()
    }

    /// [`DiskSync::sync_blocking`] off the async runtime's threads.
    pub async fn sync(self: &Arc<Self>) -> io::Result<()> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.sync_blocking())
            .await
            .map_err(io::Error::other)?
    }
}

/// Fsyncs the blob files in `names` not in `synced`; returns the files still there and whether
/// any was new. A listed file that is gone by the time it is opened was garbage-collected by
/// sled: it held a superseded version, so nothing of it needs to be durable.
fn sync_blobs(
    dir: &Path,
    names: Vec<OsString>,
    synced: &HashSet<OsString>,
) -> io::Result<(HashSet<OsString>, bool)> {
    let mut present = HashSet::new();
    let mut new_blobs = false;
    for name in names {
        if !synced.contains(&name) {
            match File::open(dir.join(&name)) {
                Ok(file) => file.sync_all()?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            new_blobs = true;
        }
        present.insert(name);
    }
    Ok((present, new_blobs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn blobs_removed_while_syncing_are_skipped() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join("10"), b"blob").unwrap();
        std::fs::write(dir.path().join("11"), b"blob").unwrap();
        let names = ["10", "11", "12"].map(OsString::from).to_vec();
        let synced = HashSet::from([OsString::from("11")]);
        let (present, new_blobs) = sync_blobs(dir.path(), names, &synced).unwrap();
        assert!(new_blobs);
        assert_eq!(present, HashSet::from(["10", "11"].map(OsString::from)));
        let (_, again) = sync_blobs(dir.path(), vec![OsString::from("10")], &present).unwrap();
        assert!(!again, "an already synced blob was synced again");
    }
}
