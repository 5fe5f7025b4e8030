//! Watch over HTTP: a chunked `application/json;stream=watch` response with one
//! `{"type": ..., "object": ...}` line per change, flushed per event.
//!
//! Semantics follow the Kubernetes API: without a resourceVersion (or with "0", or with
//! `sendInitialEvents=true`) the current objects come first as ADDED events; changes then
//! follow in revision order. Selectors are applied to both the old and the new state, so an
//! object that stops matching is seen as DELETED and one that starts matching as ADDED.
//! A resourceVersion older than the store's history gets an in-band ERROR event with a
//! `410 Expired` Status. Bookmarks carry the latest revision when asked for.

use std::borrow::Cow;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use shoal_common::catalog::ResourceDef;
use shoal_store::{EventKind, RangeRequest, Store, StoreError};
use tokio::sync::mpsc;

use crate::rest::Target;
use crate::selectors::Selection;
use crate::status::ApiError;
use crate::table;
use crate::{convert, objects};

/// Longest a watch stays open when the client gives no `timeoutSeconds` (Kubernetes picks
/// 30–60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often a bookmark is sent to clients that allow them.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

/// What one watch request asked for.
#[derive(Debug)]
pub struct WatchRequest {
    pub selection: Selection,
    pub resource_version: Option<i64>,
    pub send_initial: bool,
    pub bookmarks: bool,
    pub timeout: Duration,
    pub rendering: table::Rendering,
}

impl WatchRequest {
    pub fn parse(
        query: &HashMap<String, String>,
        kind: &str,
        accept: &str,
    ) -> Result<Self, String> {
        let selection = Selection::from_query(query, kind)?;
        let resource_version = match query.get("resourceVersion").map(String::as_str) {
            None | Some("") | Some("0") => None,
            Some(rv) => Some(
                rv.parse::<i64>()
                    .map_err(|_| format!("invalid resourceVersion {rv:?}"))?,
            ),
        };
        let flag = |name: &str| matches!(query.get(name).map(String::as_str), Some("true" | "1"));
        let timeout = match query.get("timeoutSeconds").map(String::as_str) {
            None | Some("") => DEFAULT_TIMEOUT,
            Some(s) => Duration::from_secs(
                s.parse::<u64>()
                    .map_err(|_| format!("invalid timeoutSeconds {s:?}"))?,
            ),
        };
        Ok(WatchRequest {
            selection,
            send_initial: resource_version.is_none() || flag("sendInitialEvents"),
            resource_version,
            bookmarks: flag("allowWatchBookmarks"),
            timeout: timeout.min(DEFAULT_TIMEOUT),
            rendering: table::Rendering::from_accept(accept),
        })
    }

    fn selects(&self, object: &Value) -> bool {
        self.selection.matches(object)
    }
}

/// Recently seen revisions the cache keeps.
const CACHE_REVISIONS: usize = 2048;

/// An event's objects, decoded once.
#[derive(Debug)]
struct Decoded {
    /// The new state of a put, with its resourceVersion.
    new: Option<Arc<Value>>,
    /// The state before the change; for a delete, stamped with the deletion's revision.
    old: Option<Arc<Value>>,
}

/// Decoded events and encoded event lines shared by every watch, by revision: with a thousand
/// watchers on one resource, each change is parsed once and each distinct line encoded once,
/// instead of once per watcher.
#[derive(Debug, Default)]
pub struct EventCache {
    inner: std::sync::Mutex<CacheInner>,
}

type LineKey = (
    i64,
    &'static str,
    table::Rendering,
    (&'static str, &'static str),
);

/// How one revision's event line was encoded: event type, table or not, and the
/// group-version served (the same change reads differently through each version of a
/// resource).
type LineForm = (&'static str, table::Rendering, (&'static str, &'static str));

#[derive(Debug, Default)]
struct CacheInner {
    decoded: HashMap<i64, Arc<Decoded>>,
    /// By revision, then form: evicting a revision drops its lines without a scan of the
    /// others (a scan per event cost O(cached lines) under the lock).
    lines: HashMap<i64, Vec<(LineForm, Bytes)>>,
    order: std::collections::VecDeque<i64>,
    /// Revisions in `order`.
    known: std::collections::HashSet<i64>,
}

impl CacheInner {
    fn remember(&mut self, revision: i64) {
        if !self.known.insert(revision) {
            return;
        }
        self.order.push_back(revision);
        while self.order.len() > CACHE_REVISIONS {
            if let Some(old) = self.order.pop_front() {
                self.known.remove(&old);
                self.decoded.remove(&old);
                self.lines.remove(&old);
            }
        }
    }
}

impl EventCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn decoded(&self, event: &shoal_store::Event) -> Arc<Decoded> {
        let revision = event.revision();
        // The state before a change is what the change that wrote it decoded: shared while
        // that revision is cached, instead of parsed again.
        let earlier = event
            .prev
            .as_ref()
            .map(|p| p.mod_revision)
            .filter(|_| event.kind == EventKind::Put);
        let earlier = {
            let inner = self.lock();
            if let Some(hit) = inner.decoded.get(&revision) {
                return Arc::clone(hit);
            }
            earlier
                .and_then(|r| inner.decoded.get(&r))
                .and_then(|d| d.new.clone())
        };
        let decoded = Arc::new(Decoded {
            new: match event.kind {
                EventKind::Put => decode(&event.kv.value, event.kv.mod_revision).map(Arc::new),
                EventKind::Delete => None,
            },
            old: earlier.or_else(|| {
                event.prev.as_ref().and_then(|p| match event.kind {
                    EventKind::Put => decode(&p.value, p.mod_revision).map(Arc::new),
                    EventKind::Delete => decode(&p.value, revision).map(Arc::new),
                })
            }),
        });
        let mut inner = self.lock();
        inner.remember(revision);
        Arc::clone(inner.decoded.entry(revision).or_insert(decoded))
    }

    fn line(&self, key: LineKey, encode: impl FnOnce() -> Bytes) -> Bytes {
        let (revision, event_type, rendering, served) = key;
        let form = (event_type, rendering, served);
        let find = |inner: &CacheInner| {
            inner
                .lines
                .get(&revision)
                .and_then(|lines| lines.iter().find(|(f, _)| *f == form))
                .map(|(_, line)| line.clone())
        };
        if let Some(hit) = find(&self.lock()) {
            return hit;
        }
        let line = encode();
        let mut inner = self.lock();
        if let Some(hit) = find(&inner) {
            return hit;
        }
        inner.remember(revision);
        inner
            .lines
            .entry(revision)
            .or_default()
            .push((form, line.clone()));
        line
    }
}

/// The body stream: lines from the watch task.
struct Lines(mpsc::Receiver<Bytes>);

impl futures_core::Stream for Lines {
    type Item = Result<Bytes, std::convert::Infallible>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|line| line.map(Ok))
    }
}

/// One event line, `{"type":…,"object":…}`. The type comes first, as Kubernetes writes it:
/// clients decoding the event as an adjacently tagged enum (kube-rs' `WatchEvent`, client-go's
/// decoder) then decode the object straight into its type, where an `object` ahead of `type`
/// makes them buffer the whole object first and decode it twice.
fn line(event_type: &str, object: &Value) -> Bytes {
    let mut text = Vec::with_capacity(1024);
    text.extend_from_slice(b"{\"type\":\"");
    text.extend_from_slice(event_type.as_bytes());
    text.extend_from_slice(b"\",\"object\":");
    // Writing a `Value` into a Vec cannot fail (its map keys are strings).
    let _ = serde_json::to_writer(&mut text, object);
    text.extend_from_slice(b"}\n");
    Bytes::from(text)
}

/// An object as the watch renders it: itself (borrowed), a Table row or its metadata.
fn present<'a>(
    request: &WatchRequest,
    kind: &str,
    columns: Option<&[table::PrinterColumn]>,
    object: &'a Value,
) -> Cow<'a, Value> {
    match request.rendering {
        table::Rendering::Object => Cow::Borrowed(object),
        table::Rendering::Table => Cow::Owned(table::table(
            kind,
            columns,
            std::slice::from_ref(object),
            "",
            None,
        )),
        table::Rendering::Metadata => Cow::Owned(table::partial_metadata(object)),
    }
}

/// A stored object (the cache's form) as `def` serves it: itself, or a converted copy.
fn served<'a>(def: &ResourceDef, object: Option<&'a Value>) -> Option<Cow<'a, Value>> {
    object.map(|o| {
        if def.converted() {
            Cow::Owned(convert::to_served(def, o.clone()))
        } else {
            Cow::Borrowed(o)
        }
    })
}

fn decode(value: &[u8], revision: i64) -> Option<Value> {
    serde_json::from_slice::<Value>(value)
        .ok()
        .map(|o| objects::with_resource_version(o, revision))
}

/// Starts a watch and returns the streaming response.
pub async fn watch(
    store: Arc<dyn Store>,
    cache: Arc<EventCache>,
    target: Target,
    request: WatchRequest,
    columns: Option<Arc<Vec<table::PrinterColumn>>>,
) -> Result<Response, ApiError> {
    // A watch on one named object (`/namespaces/ns/pods?watch=1&fieldSelector=metadata.name=x`)
    // is a collection watch narrowed by its selector.
    let def = target.def;
    let prefix = match &target.namespace {
        Some(ns) if def.namespaced => format!("{}{ns}/", def.key_prefix()),
        _ => def.key_prefix(),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let kind = target.def.kind;
    let api_version = target.def.api_version();

    // The starting point, and the initial ADDED events when asked for.
    let mut initial = Vec::new();
    let start = if request.send_initial {
        let mut continue_from = None;
        let mut revision;
        loop {
            let page = store
                .range(RangeRequest {
                    prefix: prefix.clone(),
                    limit: 500,
                    revision: request.resource_version,
                    continue_from,
                })
                .await
                .map_err(|e| expired_or_internal(&e))?;
            revision = page.revision;
            for kv in &page.kvs {
                if let Some(object) =
                    decode(&kv.value, kv.mod_revision).map(|o| convert::to_served(def, o))
                {
                    if request.selects(&object) {
                        initial.push(object);
                    }
                }
            }
            match page.next {
                Some(token) => continue_from = Some(token),
                None => break,
            }
        }
        revision
    } else {
        request.resource_version.unwrap_or_default()
    };

    let mut events = match store.watch(&prefix, Some(start)).await {
        Ok(events) => events,
        Err(err @ StoreError::Compacted { .. }) => {
            // Kubernetes answers 200 and reports the expiry as the stream's only event.
            let (status_line, _) = expired_event(&err);
            return Ok(stream_response(futures_once(status_line)));
        }
        Err(err) => return Err(expired_or_internal(&err)),
    };

    tokio::spawn(async move {
        for object in initial {
            if tx
                .send(line(
                    "ADDED",
                    &present(
                        &request,
                        kind,
                        columns.as_deref().map(Vec::as_slice),
                        &object,
                    ),
                ))
                .await
                .is_err()
            {
                return;
            }
        }
        let bookmark = |revision: i64, initial_end: bool| {
            let mut metadata = json!({"resourceVersion": revision.to_string()});
            if initial_end {
                metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            let (kind, api_version) = match request.rendering {
                table::Rendering::Metadata => ("PartialObjectMetadata", "meta.k8s.io/v1"),
                _ => (kind, api_version.as_str()),
            };
            line(
                "BOOKMARK",
                &json!({"kind": kind, "apiVersion": api_version, "metadata": metadata}),
            )
        };
        let mut last = start;
        // Streaming lists (sendInitialEvents) end their initial events with this bookmark.
        if request.bookmarks && request.send_initial && tx.send(bookmark(last, true)).await.is_err()
        {
            return;
        }
        let deadline = tokio::time::Instant::now() + request.timeout;
        let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
        ticker.tick().await;
        loop {
            tokio::select! {
                event = events.next() => {
                    let event = match event {
                        Some(Ok(event)) => event,
                        Some(Err(err)) => {
                            let (status_line, _) = expired_event(&err);
                            let _ = tx.send(status_line).await;
                            return;
                        }
                        None => return,
                    };
                                        last = event.revision();
                    let decoded = cache.decoded(&event);
                    // The cache holds the stored form; a converted view converts its copy.
                    let (new, old) = (served(def, decoded.new.as_deref()), served(def, decoded.old.as_deref()));
                    let old_selected = old.as_deref().is_some_and(|o| request.selects(o));
                    let (event_type, object) = match (event.kind, new.as_deref()) {
                        (EventKind::Put, Some(new)) => match (old_selected, request.selects(new)) {
                            (true, true) => ("MODIFIED", new),
                            (false, true) => ("ADDED", new),
                            (true, false) => ("DELETED", new),
                            (false, false) => continue,
                        },
                        (EventKind::Delete, _) => match old.as_deref() {
                            Some(old) if old_selected => ("DELETED", old),
                            _ => continue,
                        },
                        (EventKind::Put, None) => continue,
                    };
                    let encoded = cache.line((last, event_type, request.rendering, (def.group, def.version)), || {
                        line(event_type, &present(&request, kind, columns.as_deref().map(Vec::as_slice), object))
                    });
                    if tx.send(encoded).await.is_err() {
                        return;
                    }
                }
                _ = ticker.tick(), if request.bookmarks => {
                    if tx.send(bookmark(last, false)).await.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep_until(deadline) => return,
                () = tx.closed() => return,
            }
        }
    });
    Ok(stream_response(Lines(rx)))
}

fn stream_response<S>(stream: S) -> Response
where
    S: futures_core::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static,
{
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json;stream=watch"),
            (header::CACHE_CONTROL, "no-cache, private"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A one-line stream.
fn futures_once(line: Bytes) -> Lines {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(line);
    Lines(rx)
}

fn expired_event(err: &StoreError) -> (Bytes, ApiError) {
    let error = expired_or_internal(err);
    (line("ERROR", &error.to_status()), error)
}

fn expired_or_internal(err: &StoreError) -> ApiError {
    match err {
        StoreError::Compacted {
            requested,
            compacted,
        } => ApiError::new(
            StatusCode::GONE,
            "Expired",
            format!("too old resource version: {requested} ({compacted})"),
        ),
        StoreError::FutureRevision { requested, .. } => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            format!("Too large resource version: {requested}"),
        ),
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            other.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_store::{Event, KeyValue};

    fn put(revision: i64) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: format!("/registry/core/configmaps/ns/c{revision}"),
                value: br#"{"metadata":{"name":"c"}}"#.to_vec(),
                create_revision: revision,
                mod_revision: revision,
                version: 1,
            },
            prev: None,
        }
    }

    #[test]
    fn the_state_before_a_change_is_shared_with_the_change_that_wrote_it() {
        let cache = EventCache::default();
        let created = cache.decoded(&put(5));
        let mut update = put(9);
        update.kv.key = "/registry/core/configmaps/ns/c5".into();
        update.kv.create_revision = 5;
        update.prev = Some(put(5).kv);
        let updated = cache.decoded(&update);
        let (Some(written), Some(before)) = (created.new.as_ref(), updated.old.as_ref()) else {
            panic!("both states decoded");
        };
        assert!(Arc::ptr_eq(written, before));
        // Not cached any more (or never seen): parsed from the event itself.
        let mut late = update.clone();
        late.kv.mod_revision = 10;
        late.prev = Some(put(7).kv);
        let before = cache.decoded(&late).old.clone();
        assert_eq!(
            before.map(|o| o["metadata"]["resourceVersion"].clone()),
            Some(json!("7"))
        );
        // A delete's old state carries the deletion's revision, so it is never shared.
        let deleted = cache.decoded(&Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                mod_revision: 11,
                ..update.kv.clone()
            },
            prev: Some(update.kv.clone()),
        });
        assert_eq!(
            deleted
                .old
                .as_ref()
                .map(|o| o["metadata"]["resourceVersion"].clone()),
            Some(json!("11"))
        );
    }

    #[test]
    fn event_lines_name_their_type_before_the_object() {
        let encoded = line(
            "MODIFIED",
            &json!({"kind": "Pod", "metadata": {"name": "p"}}),
        );
        assert_eq!(
            &encoded[..],
            br#"{"type":"MODIFIED","object":{"kind":"Pod","metadata":{"name":"p"}}}
"#
        );
    }

    #[test]
    fn events_are_decoded_and_encoded_once_and_evicted_in_order() {
        let cache = EventCache::default();
        let first = cache.decoded(&put(1));
        assert!(Arc::ptr_eq(&first, &cache.decoded(&put(1))));
        assert_eq!(
            first
                .new
                .as_ref()
                .map(|o| o["metadata"]["resourceVersion"].clone()),
            Some(json!("1"))
        );
        let mut encodes = 0;
        for _ in 0..3 {
            cache.line((1, "ADDED", table::Rendering::Object, ("", "v1")), || {
                encodes += 1;
                line("ADDED", &json!({}))
            });
        }
        assert_eq!(encodes, 1);
        for revision in 2..(CACHE_REVISIONS as i64 + 2) {
            cache.decoded(&put(revision));
        }
        assert!(
            !Arc::ptr_eq(&first, &cache.decoded(&put(1))),
            "the oldest revision was evicted"
        );
        assert!(cache.lock().order.len() <= CACHE_REVISIONS);
    }
}
