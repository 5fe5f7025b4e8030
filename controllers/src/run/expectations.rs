//! Kubernetes' controller "expectations": after a controller creates or deletes pods it must
//! not plan again from a cache that has not seen those writes yet, or it would create (or
//! delete) the same pods twice. Each owner's pending writes are remembered until the cache
//! shows them, or until they expire (a lost watch event must not wedge the owner forever).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Pending writes older than this are forgotten (kube-controller-manager uses 5 minutes).
const EXPIRY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Pending {
    /// `namespace/name` of created objects not yet seen.
    creates: HashSet<String>,
    /// UIDs of deleted objects still seen.
    deletes: HashSet<String>,
    since: Option<Instant>,
}

/// Pending writes per owner UID.
#[derive(Debug, Default)]
pub struct Expectations {
    owners: Mutex<HashMap<String, Pending>>,
}

impl Expectations {
    /// Remembers that `owner` created `key` (`namespace/name`).
    pub fn created(&self, owner: &str, key: String) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let pending = owners.entry(owner.to_string()).or_default();
        pending.creates.insert(key);
        pending.since.get_or_insert_with(Instant::now);
    }

    /// Remembers that `owner` deleted the object with `uid`.
    pub fn deleted(&self, owner: &str, uid: String) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let pending = owners.entry(owner.to_string()).or_default();
        pending.deletes.insert(uid);
        pending.since.get_or_insert_with(Instant::now);
    }

    /// Whether `owner` may plan again: every create it made is in the cache (`seen(key)`)
    /// and every object it deleted is gone (`present(uid)` false). Satisfied expectations are
    /// forgotten.
    pub fn satisfied(
        &self,
        owner: &str,
        seen: impl Fn(&str) -> bool,
        present: impl Fn(&str) -> bool,
    ) -> bool {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pending) = owners.get_mut(owner) else {
            return true;
        };
        pending.creates.retain(|key| !seen(key));
        pending.deletes.retain(|uid| present(uid));
        let expired = pending.since.is_some_and(|t| t.elapsed() > EXPIRY);
        if expired || (pending.creates.is_empty() && pending.deletes.is_empty()) {
            owners.remove(owner);
            return true;
        }
        false
    }

    /// Drops what is remembered for `owner` (it was deleted).
    pub fn forget(&self, owner: &str) {
        self.owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_waits_until_its_writes_are_observed() {
        let expectations = Expectations::default();
        assert!(expectations.satisfied("rs", |_| false, |_| true));
        expectations.created("rs", "ns/a".into());
        expectations.deleted("rs", "uid-b".into());
        assert!(!expectations.satisfied("rs", |_| false, |_| true));
        // The create is seen, the deleted pod is still there.
        assert!(!expectations.satisfied("rs", |k| k == "ns/a", |_| true));
        // Now it is gone too.
        assert!(expectations.satisfied("rs", |_| false, |_| false));
        assert!(
            expectations.satisfied("rs", |_| false, |_| true),
            "forgotten once met"
        );
    }
}
