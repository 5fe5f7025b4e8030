//! The conformance suite: one set of checks of the [`Store`] contract that every backend runs.
//! A backend's test file calls [`conformance_tests!`](crate::conformance_tests) with an async
//! expression making a fresh [`Fixture`]; each case becomes its own `#[tokio::test]`.
//! Durable backends also run [`acknowledged_writes_survive_reopen`] with their own reopen.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::api::Store;
use crate::error::StoreError;
use crate::types::{EventKind, RangeRequest, Revision, MAX_VALUE_BYTES};
use crate::watch::WatchStream;

/// Something that owns a store for the length of one case (and whatever it needs: a temp dir).
pub trait Fixture: Send + Sync {
    type S: Store;
    fn store(&self) -> &Self::S;
    /// Stops the store before what it needs goes (its directory: a durable store may still
    /// write to it while it stops). Nothing by default.
    fn close(self) -> impl Future<Output = ()> + Send
    where
        Self: Sized,
    {
        async {}
    }
}

impl Fixture for crate::MemStore {
    type S = crate::MemStore;
    fn store(&self) -> &Self::S {
        self
    }
}

/// Expands to one `#[tokio::test]` per conformance case, each on a fresh fixture from `$make`.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            revisions_are_monotonic, per_key_bookkeeping, compare_and_swap, bad_input_is_rejected,
            ranges_are_consistent_across_pages, ranges_at_past_revisions, watch_delivers_in_order,
            watch_from_every_retained_revision, watch_filters_by_prefix, compaction_bounds_history,
            concurrent_writes_get_distinct_revisions, lagging_watcher_catches_up_from_history,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $make.await;
                $crate::conformance::$case($crate::conformance::Fixture::store(&fixture)).await;
                $crate::conformance::Fixture::close(fixture).await;
            }
        )*
    };
}

fn bytes(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

async fn next_event(stream: &mut WatchStream) -> Arc<crate::Event> {
    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(err))) => panic!("watch failed: {err}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within 10 s"),
    }
}

async fn assert_quiet(stream: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(100), stream.next()).await {
        panic!("unexpected watch item: {item:?}");
    }
}

/// Every successful write takes the next revision; failures take none.
pub async fn revisions_are_monotonic(store: &impl Store) {
    let start = store.current_revision().await.expect("revision");
    let a = store.create("/m/a", bytes("1")).await.expect("create");
    assert_eq!(a.mod_revision, start + 1);
    let failed = store.create("/m/a", bytes("again")).await;
    assert!(matches!(failed, Err(StoreError::AlreadyExists { .. })));
    let b = store
        .update("/m/a", bytes("2"), a.mod_revision)
        .await
        .expect("update");
    assert_eq!(b.mod_revision, start + 2);
    let c = store.put("/m/b", bytes("3")).await.expect("put");
    assert_eq!(c.mod_revision, start + 3);
    let (_, deleted_at) = store.delete("/m/b", None).await.expect("delete");
    assert_eq!(deleted_at, start + 4);
    assert_eq!(store.current_revision().await.expect("revision"), start + 4);
}

/// create_revision, mod_revision and version follow etcd's rules, also across re-creation.
pub async fn per_key_bookkeeping(store: &impl Store) {
    let created = store.create("/b/k", bytes("v1")).await.expect("create");
    assert_eq!(
        (created.create_revision, created.version),
        (created.mod_revision, 1)
    );
    let updated = store
        .update("/b/k", bytes("v2"), created.mod_revision)
        .await
        .expect("update");
    assert_eq!(updated.create_revision, created.create_revision);
    assert_eq!(updated.version, 2);
    let put = store.put("/b/k", bytes("v3")).await.expect("put");
    assert_eq!(
        (put.version, put.create_revision),
        (3, created.create_revision)
    );
    let got = store.get("/b/k").await.expect("get").expect("present");
    assert_eq!(got, put);
    let (prev, _) = store
        .delete("/b/k", Some(put.mod_revision))
        .await
        .expect("delete");
    assert_eq!(prev, put);
    assert_eq!(store.get("/b/k").await.expect("get"), None);
    let again = store.create("/b/k", bytes("v4")).await.expect("re-create");
    assert_eq!(again.version, 1);
    assert_eq!(again.create_revision, again.mod_revision);
    assert!(again.create_revision > put.mod_revision);
}

/// Compare-and-swap: each refusal carries what the caller needs and changes nothing.
pub async fn compare_and_swap(store: &impl Store) {
    let v1 = store.create("/cas/k", bytes("one")).await.expect("create");
    match store.create("/cas/k", bytes("two")).await {
        Err(StoreError::AlreadyExists { current, .. }) => assert_eq!(*current, v1),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    let v2 = store
        .update("/cas/k", bytes("two"), v1.mod_revision)
        .await
        .expect("update");
    match store
        .update("/cas/k", bytes("stale"), v1.mod_revision)
        .await
    {
        Err(StoreError::Conflict {
            expected, current, ..
        }) => {
            assert_eq!(expected, v1.mod_revision);
            assert_eq!(current.as_deref(), Some(&v2));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    match store.delete("/cas/k", Some(v1.mod_revision)).await {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(current.as_deref(), Some(&v2)),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert!(matches!(
        store.update("/cas/missing", bytes("x"), 1).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete("/cas/missing", None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.get("/cas/k").await.expect("get"), Some(v2.clone()));
    assert_eq!(
        store.current_revision().await.expect("revision"),
        v2.mod_revision
    );
}

/// Malformed keys and oversized values get typed errors and leave the store as it was.
pub async fn bad_input_is_rejected(store: &impl Store) {
    let kept = store
        .create("/in/kept", bytes("safe"))
        .await
        .expect("create");
    for key in ["", "no-slash", "/a//b", "/a/../b", "/nul\0"] {
        assert!(
            matches!(
                store.put(key, bytes("x")).await,
                Err(StoreError::InvalidKey { .. })
            ),
            "{key:?} accepted"
        );
        assert!(matches!(
            store.get(key).await,
            Err(StoreError::InvalidKey { .. })
        ));
    }
    let huge = vec![b'x'; MAX_VALUE_BYTES + 1];
    assert!(matches!(
        store
            .update("/in/kept", huge.clone(), kept.mod_revision)
            .await,
        Err(StoreError::ValueTooLarge { .. })
    ));
    assert!(matches!(
        store.create("/in/big", huge).await,
        Err(StoreError::ValueTooLarge { .. })
    ));
    assert!(matches!(
        store.range(RangeRequest::prefix("relative")).await,
        Err(StoreError::InvalidKey { .. })
    ));
    let bad_token = RangeRequest {
        continue_from: Some(crate::ContinueToken {
            revision: 1,
            after_key: "/other/x".into(),
        }),
        ..RangeRequest::prefix("/in/")
    };
    assert!(matches!(
        store.range(bad_token).await,
        Err(StoreError::InvalidContinue(_))
    ));
    assert_eq!(
        store.get("/in/kept").await.expect("get"),
        Some(kept.clone())
    );
    assert_eq!(
        store.current_revision().await.expect("revision"),
        kept.mod_revision
    );
    let max = vec![b'y'; MAX_VALUE_BYTES];
    let stored = store
        .put("/in/max", max.clone())
        .await
        .expect("a value at the limit is fine");
    assert_eq!(stored.value.len(), MAX_VALUE_BYTES);
}

/// Pages come in key order, stay within the prefix, and all reflect the first page's revision.
pub async fn ranges_are_consistent_across_pages(store: &impl Store) {
    for i in 0..10 {
        store
            .create(&format!("/pg/k{i:02}"), bytes(&format!("v{i}")))
            .await
            .expect("create");
    }
    store
        .create("/pgx/outside", bytes("not in /pg/"))
        .await
        .expect("create");
    store
        .create("/pa", bytes("before the prefix"))
        .await
        .expect("create");

    let first = store
        .range(RangeRequest::prefix("/pg/").with_limit(4))
        .await
        .expect("page 1");
    assert_eq!(first.kvs.len(), 4);
    let at = first.revision;
    // Writes between pages must not show up in later pages.
    store.delete("/pg/k05", None).await.expect("delete");
    store.put("/pg/k07", bytes("changed")).await.expect("put");
    store
        .create("/pg/k08a", bytes("new"))
        .await
        .expect("create");
    store.create("/pg/k99", bytes("new")).await.expect("create");

    let mut keys: Vec<String> = first.kvs.iter().map(|kv| kv.key.clone()).collect();
    let mut next = first.next;
    let mut pages = 1;
    while let Some(token) = next {
        assert_eq!(token.revision, at);
        let page = store
            .range(RangeRequest {
                continue_from: Some(token),
                ..RangeRequest::prefix("/pg/").with_limit(4)
            })
            .await
            .expect("next page");
        assert_eq!(page.revision, at);
        for kv in &page.kvs {
            assert!(
                kv.mod_revision <= at,
                "{} is newer than the range revision",
                kv.key
            );
            if kv.key == "/pg/k07" {
                assert_eq!(kv.value, bytes("v7"));
            }
        }
        keys.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        next = page.next;
        pages += 1;
    }
    let expected: Vec<String> = (0..10).map(|i| format!("/pg/k{i:02}")).collect();
    assert_eq!(keys, expected);
    assert_eq!(pages, 3);

    let latest = store
        .range(RangeRequest::prefix("/pg/"))
        .await
        .expect("latest");
    let latest_keys: Vec<&str> = latest.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert!(latest_keys.contains(&"/pg/k99") && !latest_keys.contains(&"/pg/k05"));
    assert!(latest.next.is_none());
    let exact = store
        .range(RangeRequest::prefix("/pg/").with_limit(12))
        .await
        .expect("exact");
    assert_eq!(exact.kvs.len(), 11);
    assert!(exact.next.is_none());
}

/// A range at a retained past revision returns the state as it was then.
pub async fn ranges_at_past_revisions(store: &impl Store) {
    let a = store.create("/past/a", bytes("a1")).await.expect("create");
    let b = store.create("/past/b", bytes("b1")).await.expect("create");
    store
        .update("/past/a", bytes("a2"), a.mod_revision)
        .await
        .expect("update");
    store.delete("/past/b", None).await.expect("delete");
    let at_b = store
        .range(RangeRequest {
            revision: Some(b.mod_revision),
            ..RangeRequest::prefix("/past/")
        })
        .await
        .expect("past range");
    let seen: Vec<(String, Vec<u8>)> = at_b.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    assert_eq!(
        seen,
        [
            ("/past/a".to_string(), bytes("a1")),
            ("/past/b".to_string(), bytes("b1"))
        ]
    );
    let current = store.current_revision().await.expect("revision");
    assert!(matches!(
        store
            .range(RangeRequest {
                revision: Some(current + 5),
                ..RangeRequest::prefix("/past/")
            })
            .await,
        Err(StoreError::FutureRevision { .. })
    ));
}

/// Watch delivers every change, exactly once, in revision order, with previous values.
pub async fn watch_delivers_in_order(store: &impl Store) {
    let start = store.current_revision().await.expect("revision");
    let mut watch = store.watch("/w/", Some(start)).await.expect("watch");
    let created = store.create("/w/x", bytes("1")).await.expect("create");
    let updated = store
        .update("/w/x", bytes("2"), created.mod_revision)
        .await
        .expect("update");
    let (_, deleted_at) = store.delete("/w/x", None).await.expect("delete");

    let e1 = next_event(&mut watch).await;
    assert_eq!(
        (e1.kind, &e1.kv, &e1.prev),
        (EventKind::Put, &created, &None)
    );
    let e2 = next_event(&mut watch).await;
    assert_eq!((e2.kind, &e2.kv), (EventKind::Put, &updated));
    assert_eq!(e2.prev.as_ref(), Some(&created));
    let e3 = next_event(&mut watch).await;
    assert_eq!((e3.kind, e3.revision()), (EventKind::Delete, deleted_at));
    assert_eq!(e3.prev.as_ref(), Some(&updated));
    assert_quiet(&mut watch).await;

    // A watch "from now" sees only what comes after it.
    let mut from_now = store.watch("/w/", None).await.expect("watch");
    let later = store.put("/w/y", bytes("later")).await.expect("put");
    assert_eq!(next_event(&mut from_now).await.kv, later);
    assert_quiet(&mut from_now).await;
}

/// Starting from any retained revision yields exactly the changes after it.
pub async fn watch_from_every_retained_revision(store: &impl Store) {
    let base = store.current_revision().await.expect("revision");
    let mut revisions = Vec::new();
    for i in 0..12 {
        let kv = store
            .put(&format!("/every/k{}", i % 4), bytes(&i.to_string()))
            .await
            .expect("put");
        revisions.push(kv.mod_revision);
    }
    for (i, &after) in std::iter::once(&base).chain(revisions.iter()).enumerate() {
        let mut watch = store.watch("/every/", Some(after)).await.expect("watch");
        for &expected in &revisions[i..] {
            assert_eq!(next_event(&mut watch).await.revision(), expected);
        }
        assert_quiet(&mut watch).await;
    }
}

/// Only keys under the watched prefix are delivered.
pub async fn watch_filters_by_prefix(store: &impl Store) {
    let mut watch = store.watch("/pods/", None).await.expect("watch");
    store.put("/podsx/no", bytes("no")).await.expect("put");
    store.put("/nodes/n1", bytes("no")).await.expect("put");
    let yes = store.put("/pods/ns/p", bytes("yes")).await.expect("put");
    assert_eq!(next_event(&mut watch).await.kv, yes);
    assert_quiet(&mut watch).await;
}

/// Compaction drops history: old revisions become "too old" for range and watch.
pub async fn compaction_bounds_history(store: &impl Store) {
    let mut last = 0;
    for i in 0..5 {
        last = store
            .put("/c/k", bytes(&i.to_string()))
            .await
            .expect("put")
            .mod_revision;
    }
    let cut = last - 2;
    store.compact(cut).await.expect("compact");
    assert_eq!(store.compacted_revision().await.expect("compacted"), cut);
    assert!(matches!(
        store.watch("/c/", Some(cut - 1)).await,
        Err(StoreError::Compacted { requested, compacted }) if requested == cut - 1 && compacted == cut
    ));
    assert!(matches!(
        store
            .range(RangeRequest {
                revision: Some(cut - 1),
                ..RangeRequest::prefix("/c/")
            })
            .await,
        Err(StoreError::Compacted { .. })
    ));
    let mut watch = store
        .watch("/c/", Some(cut))
        .await
        .expect("watch at the compaction point");
    assert_eq!(next_event(&mut watch).await.revision(), cut + 1);
    assert_eq!(next_event(&mut watch).await.revision(), cut + 2);
    store
        .compact(cut - 1)
        .await
        .expect("compacting an older revision is a no-op");
    assert_eq!(store.compacted_revision().await.expect("compacted"), cut);
    assert!(matches!(
        store.compact(last + 10).await,
        Err(StoreError::FutureRevision { .. })
    ));
    assert_eq!(
        store.get("/c/k").await.expect("get").expect("kept").value,
        bytes("4")
    );
}

/// Concurrent writers get distinct, gap-free revisions, and a watcher sees all of them.
pub async fn concurrent_writes_get_distinct_revisions<S: Store>(store: &S) {
    let start = store.current_revision().await.expect("revision");
    let mut watch = store.watch("/cc/", Some(start)).await.expect("watch");
    let per_task = 25;
    let tasks = 8;
    let results = join_all((0..tasks).map(|t| async move {
        let mut revisions = Vec::new();
        for i in 0..per_task {
            let kv = store
                .create(&format!("/cc/{t}/{i}"), bytes("v"))
                .await
                .expect("create");
            revisions.push(kv.mod_revision);
        }
        revisions
    }))
    .await;
    let all: BTreeSet<Revision> = results.into_iter().flatten().collect();
    let total = (tasks * per_task) as i64;
    assert_eq!(all, ((start + 1)..=(start + total)).collect());
    for expected in (start + 1)..=(start + total) {
        assert_eq!(next_event(&mut watch).await.revision(), expected);
    }
}

/// A watcher that starts far behind reads history it missed, then follows live changes.
pub async fn lagging_watcher_catches_up_from_history<S: Store>(store: &S) {
    let start = store.current_revision().await.expect("revision");
    let total = 5_000i64;
    join_all((0..50).map(|t| async move {
        for i in 0..(total / 50) {
            store
                .put(&format!("/lag/{t}/{i}"), bytes("x"))
                .await
                .expect("put");
        }
    }))
    .await;
    let mut watch = store.watch("/lag/", Some(start)).await.expect("watch");
    for expected in (start + 1)..=(start + total) {
        assert_eq!(next_event(&mut watch).await.revision(), expected);
    }
    let live = store.put("/lag/live", bytes("y")).await.expect("put");
    assert_eq!(next_event(&mut watch).await.kv, live);
}

/// Runs futures concurrently on the current task (no spawning, so borrowed stores work).
async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Durable backends: every write acknowledged before a clean close or a crash is there after
/// reopening, with the same revisions, and the revision sequence continues without reuse.
/// `reopen` closes (or abandons) the store and opens it again from the same place.
pub async fn acknowledged_writes_survive_reopen<S, F, Fut>(store: S, reopen: F)
where
    S: Store,
    F: FnOnce(S) -> Fut,
    Fut: Future<Output = S>,
{
    let mut acked = Vec::new();
    for i in 0..50 {
        // Some values large enough to take a backend's large-value path (sled's blob files).
        let value = match i % 10 {
            3 => vec![b'L'; MAX_VALUE_BYTES],
            6 => vec![b'M'; 300 * 1024],
            _ => bytes(&format!("v{i}")),
        };
        acked.push(
            store
                .put(&format!("/dur/{i:03}"), value)
                .await
                .expect("put"),
        );
    }
    let (gone, _) = store.delete("/dur/007", None).await.expect("delete");
    let before = store.current_revision().await.expect("revision");
    let store = reopen(store).await;
    assert_eq!(store.current_revision().await.expect("revision"), before);
    for kv in &acked {
        let got = match store.get(&kv.key).await {
            Ok(got) => got,
            Err(err) => panic!("get {} after reopening: {err}", kv.key),
        };
        if kv.key == gone.key {
            assert_eq!(got, None);
        } else {
            assert_eq!(got.as_ref(), Some(kv));
        }
    }
    let mut watch = store
        .watch("/dur/", Some(before - 3))
        .await
        .expect("history survives");
    assert_eq!(next_event(&mut watch).await.revision(), before - 2);
    let next = store.put("/dur/after", bytes("x")).await.expect("put");
    assert_eq!(next.mod_revision, before + 1);
}
