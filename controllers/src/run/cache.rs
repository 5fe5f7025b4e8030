//! Shared watch caches: one watch per kind fills a kube-runtime [`Store`] that every loop
//! reads, and every change is handed to each loop that subscribed, as client-go's shared
//! informers do.
//!
//! Why not kube-runtime's own shared reflectors (`store_shared`/`subscribe`, behind
//! `unstable-runtime`): in kube-runtime 5 a subscriber receives only an object's *key* and
//! looks the object up when it reads the event. If the object was deleted meanwhile (a pod
//! deleted right after its last update: every pod of a `deletecollection` on simulated
//! nodes), the lookup fails and the subscriber returns `Pending` without arranging to be
//! woken, so it stops reading until something unrelated wakes its task. Its bounded channel
//! then fills, the watch waits for it, and every cache of that kind freezes: after deleting
//! 10,000 pods, a new Deployment stopped at ~1,000 pods for minutes, its ReplicaSet waiting
//! for a pod cache that no longer moved. Deletions were never passed on either
//! (kube-rs/kube#1590).
//!
//! Here a subscriber gets the object itself (its last state for a deletion), and the watch
//! never waits for a subscriber: each has a queue that keeps one entry per object (a newer
//! change replaces a pending one, keeping its place), so a slow subscriber costs at most one
//! entry per object in the cache and catches up with the latest state — all a controller
//! needs, as its own work queue deduplicates the same way.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};

use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

/// A subscriber's pending changes: one entry per key, in the order keys first changed; a
/// newer value for a pending key replaces the older one in place. Pure, so it is tested
/// without tasks.
#[derive(Debug)]
pub struct Coalescing<Key, Value> {
    order: VecDeque<Key>,
    latest: HashMap<Key, Value>,
}

impl<Key: Eq + Hash + Clone, Value> Default for Coalescing<Key, Value> {
    fn default() -> Self {
        Coalescing {
            order: VecDeque::new(),
            latest: HashMap::new(),
        }
    }
}

impl<Key: Eq + Hash + Clone, Value> Coalescing<Key, Value> {
    pub fn push(&mut self, key: Key, value: Value) {
        if self.latest.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
        }
    }

    pub fn pop(&mut self) -> Option<Value> {
        let key = self.order.pop_front()?;
        self.latest.remove(&key)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.order.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// What the watch task and one subscriber share.
struct Inbox<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    pending: Mutex<Coalescing<ObjectRef<K>, Arc<K>>>,
    /// A permit is kept when nobody waits, so a change pushed between a subscriber finding
    /// its queue empty and starting to wait is not missed.
    changed: Notify,
    closed: std::sync::atomic::AtomicBool,
}

impl<K: Resource + 'static> Inbox<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn lock(&self) -> std::sync::MutexGuard<'_, Coalescing<ObjectRef<K>, Arc<K>>> {
        // A panic while holding this lock cannot leave the queue inconsistent (push and pop
        // are each one map and one deque operation): keep using it.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A stream of the objects that changed in a [`SharedCache`] (deleted ones in their last
/// state), for one loop. Ends when the cache's watch task ends.
pub struct Subscription<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    stream: futures::stream::BoxStream<'static, Arc<K>>,
    reader: Store<K>,
}

impl<K: Resource + 'static> Subscription<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    /// The cache this subscription follows.
    pub fn reader(&self) -> Store<K> {
        self.reader.clone()
    }
}

impl<K: Resource + 'static> Stream for Subscription<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    type Item = Arc<K>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Arc<K>>> {
        self.stream.poll_next_unpin(cx)
    }
}

/// A cache of every `K`, filled by [`SharedCache::drive`], with its subscribers.
pub struct SharedCache<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    writer: reflector::store::Writer<K>,
    inboxes: Vec<Weak<Inbox<K>>>,
}

impl<K> SharedCache<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    pub fn new() -> Self {
        SharedCache {
            writer: reflector::store::Writer::default(),
            inboxes: Vec::new(),
        }
    }

    /// The cache, for reading.
    pub fn store(&self) -> Store<K> {
        self.writer.as_reader()
    }

    /// A new subscriber: it sees every change applied after this call (and, after each
    /// (re)list, every object).
    pub fn subscribe(&mut self) -> Subscription<K> {
        let inbox = Arc::new(Inbox {
            pending: Mutex::new(Coalescing::default()),
            changed: Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        self.inboxes.push(Arc::downgrade(&inbox));
        let stream = futures::stream::unfold(inbox, |inbox| async move {
            loop {
                let next = inbox.lock().pop();
                if let Some(object) = next {
                    return Some((object, inbox));
                }
                if inbox.closed.load(std::sync::atomic::Ordering::Acquire) {
                    return None;
                }
                inbox.changed.notified().await;
            }
        });
        Subscription {
            stream: stream.boxed(),
            reader: self.store(),
        }
    }

    /// Applies one watch event to the cache and hands the changed objects to subscribers.
    pub fn apply(&mut self, event: &watcher::Event<K>) {
        let before = matches!(event, watcher::Event::InitDone).then(|| self.store().state());
        self.writer.apply_watcher_event(event);
        let reader = self.store();
        let changed: Vec<Arc<K>> = match event {
            // The cache's own copy: subscribers share it instead of holding another.
            watcher::Event::Apply(object) => reader
                .get(&ObjectRef::from_obj(object))
                .into_iter()
                .collect(),
            watcher::Event::Delete(object) => vec![Arc::new(object.clone())],
            // A (re)list: every object may have changed, and those missing from the new list
            // were deleted while the watch was down (no event told of them).
            watcher::Event::InitDone => {
                let now = reader.state();
                let present: HashSet<ObjectRef<K>> = now
                    .iter()
                    .map(|o| ObjectRef::from_obj(o.as_ref()))
                    .collect();
                let gone = before
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|o| !present.contains(&ObjectRef::from_obj(o.as_ref())));
                now.iter().cloned().chain(gone).collect()
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => Vec::new(),
        };
        if changed.is_empty() {
            return;
        }
        self.inboxes.retain(|inbox| {
            let Some(inbox) = inbox.upgrade() else {
                return false; // the subscriber is gone
            };
            {
                let mut pending = inbox.lock();
                for object in &changed {
                    pending.push(ObjectRef::from_obj(object.as_ref()), Arc::clone(object));
                }
            }
            inbox.changed.notify_one();
            true
        });
    }

    /// Ends every subscription once its pending changes are read.
    fn close(&mut self) {
        for inbox in self.inboxes.drain(..).filter_map(|i| i.upgrade()) {
            inbox
                .closed
                .store(true, std::sync::atomic::Ordering::Release);
            inbox.changed.notify_one();
        }
    }
}

impl<K> SharedCache<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    /// Fills the cache from a watch of all `K` in a task of its own; `observe` sees each
    /// event once the cache holds it (it must not block), so that what it triggers reads a
    /// cache at least as new as the event.
    pub fn drive_with(
        mut self,
        client: &kube::Client,
        mut observe: impl FnMut(&watcher::Event<K>) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let api: Api<K> = Api::all(client.clone());
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => self.apply_then_observe(&event, &mut observe),
                    Err(e) => tracing::warn!(error = %e, "watch"),
                }
            }
            self.close();
        })
    }

    /// One event of [`Self::drive_with`]: the cache first, then the observer.
    fn apply_then_observe(
        &mut self,
        event: &watcher::Event<K>,
        observe: &mut impl FnMut(&watcher::Event<K>),
    ) {
        self.apply(event);
        observe(event);
    }

    /// [`Self::drive_with`] without an observer.
    pub fn drive(self, client: &kube::Client) -> tokio::task::JoinHandle<()> {
        self.drive_with(client, |_| {})
    }
}

impl<K> Default for SharedCache<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ObjectMeta;

    use super::*;

    #[test]
    fn a_pending_key_keeps_its_place_and_takes_the_newest_value() {
        let mut queue = Coalescing::default();
        queue.push("a", 1);
        queue.push("b", 2);
        queue.push("a", 3);
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.pop(), Some(3));
        assert_eq!(queue.pop(), Some(2));
        assert_eq!(queue.pop(), None);
        queue.push("a", 4);
        assert_eq!(queue.pop(), Some(4));
        assert!(queue.is_empty());
    }

    fn pod(name: &str, version: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    fn name_and_version(pod: &Pod) -> (String, String) {
        (
            pod.metadata.name.clone().unwrap_or_default(),
            pod.metadata.resource_version.clone().unwrap_or_default(),
        )
    }

    async fn next(subscription: &mut Subscription<Pod>) -> Option<(String, String)> {
        tokio::time::timeout(Duration::from_secs(1), subscription.next())
            .await
            .ok()
            .flatten()
            .map(|p| name_and_version(&p))
    }

    /// The stall behind "a new Deployment stops at 1,000 pods after a deletecollection": a
    /// subscriber that reads an update only after the object is deleted must still get the
    /// deletion and every later change (kube-runtime 5's subscriber stopped there).
    #[tokio::test]
    async fn an_object_deleted_before_its_update_is_read_does_not_stop_the_subscriber() {
        let mut cache = SharedCache::<Pod>::new();
        let mut subscription = cache.subscribe();
        cache.apply(&watcher::Event::Init);
        cache.apply(&watcher::Event::InitDone);
        cache.apply(&watcher::Event::Apply(pod("a", "2")));
        cache.apply(&watcher::Event::Delete(pod("a", "3")));
        cache.apply(&watcher::Event::Apply(pod("b", "4")));
        assert_eq!(
            next(&mut subscription).await,
            Some(("a".into(), "3".into()))
        );
        assert_eq!(
            next(&mut subscription).await,
            Some(("b".into(), "4".into()))
        );
        cache.apply(&watcher::Event::Apply(pod("c", "5")));
        assert_eq!(
            next(&mut subscription).await,
            Some(("c".into(), "5".into()))
        );
    }

    /// A subscriber that never reads neither blocks the cache nor the other subscribers, and
    /// what it has not read yet is one entry per object.
    #[tokio::test]
    async fn a_subscriber_that_stops_reading_holds_up_nobody() {
        let mut cache = SharedCache::<Pod>::new();
        let idle = cache.subscribe();
        let mut busy = cache.subscribe();
        let store = cache.store();
        cache.apply(&watcher::Event::Init);
        cache.apply(&watcher::Event::InitDone);
        for version in 0..20_000 {
            let name = format!("p{}", version % 100);
            cache.apply(&watcher::Event::Apply(pod(&name, &version.to_string())));
        }
        assert_eq!(store.state().len(), 100);
        let mut seen = 0;
        while next(&mut busy).await.is_some() {
            seen += 1;
            if seen == 100 {
                break;
            }
        }
        assert_eq!(seen, 100);
        let first_idle = cache.inboxes[0].upgrade().map(|i| i.lock().len());
        assert_eq!(first_idle, Some(100));
        drop(idle);
        cache.apply(&watcher::Event::Apply(pod("p0", "x")));
        assert_eq!(cache.inboxes.len(), 1, "a dropped subscriber is forgotten");
    }

    /// Objects that vanished while the watch was down are handed over (in their last state)
    /// when the re-list completes, so their owners hear of it.
    #[tokio::test]
    async fn a_relist_reports_objects_deleted_while_the_watch_was_down() {
        let mut cache = SharedCache::<Pod>::new();
        let mut subscription = cache.subscribe();
        cache.apply(&watcher::Event::Init);
        cache.apply(&watcher::Event::InitApply(pod("a", "1")));
        cache.apply(&watcher::Event::InitApply(pod("b", "1")));
        cache.apply(&watcher::Event::InitDone);
        let mut first = vec![next(&mut subscription).await, next(&mut subscription).await];
        first.sort();
        assert_eq!(
            first,
            vec![
                Some(("a".into(), "1".into())),
                Some(("b".into(), "1".into()))
            ]
        );
        cache.apply(&watcher::Event::Init);
        cache.apply(&watcher::Event::InitApply(pod("b", "2")));
        cache.apply(&watcher::Event::InitDone);
        let mut second = vec![next(&mut subscription).await, next(&mut subscription).await];
        second.sort();
        assert_eq!(
            second,
            vec![
                Some(("a".into(), "1".into())),
                Some(("b".into(), "2".into()))
            ]
        );
        assert!(cache
            .store()
            .get(&ObjectRef::new("a").within("default"))
            .is_none());
    }

    /// The flake behind "the Endpoints of a deleted Service are never deleted": the observer
    /// of a deletion looked at the cache, still holding the object, and concluded it had
    /// been recreated.
    #[test]
    fn an_observer_sees_the_cache_as_of_the_event() {
        let mut cache = SharedCache::<Pod>::new();
        let store = cache.store();
        let key = ObjectRef::new("a").within("default");
        let mut seen = Vec::new();
        let mut observe = |event: &watcher::Event<Pod>| {
            let held = store.get(&key).map(|p| name_and_version(&p));
            seen.push((matches!(event, watcher::Event::Delete(_)), held));
        };
        for event in [
            watcher::Event::Init,
            watcher::Event::InitDone,
            watcher::Event::Apply(pod("a", "1")),
            watcher::Event::Delete(pod("a", "2")),
        ] {
            cache.apply_then_observe(&event, &mut observe);
        }
        assert_eq!(
            seen[2..],
            [(false, Some(("a".into(), "1".into()))), (true, None)]
        );
    }

    #[tokio::test]
    async fn subscriptions_end_after_their_pending_changes_when_the_cache_closes() {
        let mut cache = SharedCache::<Pod>::new();
        let mut subscription = cache.subscribe();
        cache.apply(&watcher::Event::Apply(pod("a", "1")));
        cache.close();
        assert_eq!(
            next(&mut subscription).await,
            Some(("a".into(), "1".into()))
        );
        assert_eq!(next(&mut subscription).await, None);
    }
}
