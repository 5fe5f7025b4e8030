//! The node's DNS service: the interface, the server, and the watches on Services and
//! EndpointSlices that rebuild the index whenever either changes (changes arriving together
//! are folded into one rebuild).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use tokio::sync::watch;

use super::forward::{Forwarder, DEFAULT_TIMEOUT};
use super::records::{Index, ZoneConfig};
use super::server::{serve, Handler, Listeners, SharedIndex};
use super::{iface, DnsError};

/// How the node's DNS service is set up.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// Where to serve (the cluster DNS address, port 53).
    pub listen: SocketAddr,
    pub zone: ZoneConfig,
    /// The node's own resolvers, for names outside the cluster.
    pub upstreams: Vec<SocketAddr>,
    /// The dummy interface to put the listening address on (`None`: it is already local).
    pub interface: Option<String>,
}

/// Serves cluster DNS until `shutdown`, then removes the interface it put the address on.
pub async fn run(
    client: kube::Client,
    settings: DnsSettings,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), DnsError> {
    // A failure here (the address still held by a process on its way out, a netlink hiccup)
    // is retried: pods on this node have no other name server.
    let mut delay = Duration::from_millis(500);
    let listeners = loop {
        match listen(&settings).await {
            Ok(listeners) => break listeners,
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?delay, "cluster DNS cannot listen yet");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {
                        teardown(&settings).await;
                        return Ok(());
                    }
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    };
    let index = SharedIndex::default();
    let handler = Handler::new(
        settings.zone.clone(),
        index.clone(),
        Forwarder::new(settings.upstreams.clone(), DEFAULT_TIMEOUT),
    );
    let server = tokio::spawn(serve(listeners, handler, shutdown.clone()));
    tracing::info!(listen = %settings.listen, upstreams = ?settings.upstreams, "cluster DNS serving");

    let mut services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .boxed();
    let mut slices = watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .boxed();
    let mut service_mirror = Mirror::<Service>::default();
    let mut slice_mirror = Mirror::<EndpointSlice>::default();
    loop {
        let mut changed = tokio::select! {
            event = services.next() => service_mirror.apply(event, "Services")?,
            event = slices.next() => slice_mirror.apply(event, "EndpointSlices")?,
            _ = shutdown.changed() => break,
        };
        // Fold whatever else has already arrived into the same rebuild.
        loop {
            if let Some(event) = services.next().now_or_never() {
                changed |= service_mirror.apply(event, "Services")?;
            } else if let Some(event) = slices.next().now_or_never() {
                changed |= slice_mirror.apply(event, "EndpointSlices")?;
            } else {
                break;
            }
        }
        if changed && service_mirror.synced && slice_mirror.synced {
            let serial = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
                .unwrap_or_default();
            let build = || {
                Index::build(
                    settings.zone.clone(),
                    serial,
                    service_mirror.objects.values(),
                    slice_mirror.objects.values(),
                )
            };
            // A large cluster's rebuild takes milliseconds of CPU: off the async workers
            // where the runtime has others to hand them to.
            let built = match tokio::runtime::Handle::current().runtime_flavor() {
                tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(build),
                _ => build(),
            };
            tracing::debug!(names = built.len(), "cluster DNS index rebuilt");
            index.set(built);
        }
        if *shutdown.borrow() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    teardown(&settings).await;
    Ok(())
}

/// Removes the interface, as NodeLocal DNSCache tears its own down: a node whose agent is
/// stopped answers no DNS, and a stopped test cluster leaves nothing behind.
async fn teardown(settings: &DnsSettings) {
    if let Some(name) = &settings.interface {
        if let Err(err) = iface::remove(name).await {
            tracing::warn!(error = %err, "cannot remove the cluster DNS interface");
        }
    }
}

/// The interface (when asked for) and the bound sockets.
async fn listen(settings: &DnsSettings) -> Result<Listeners, DnsError> {
    if let Some(name) = &settings.interface {
        iface::ensure(name, settings.listen.ip()).await?;
    }
    Listeners::bind(settings.listen)
        .await
        .map_err(|source| DnsError::Bind {
            addr: settings.listen,
            source,
        })
}

/// The objects of one kind as the watch last listed and updated them.
#[derive(Debug)]
struct Mirror<K> {
    objects: HashMap<(String, String), K>,
    /// A relist in progress (replaces `objects` when done).
    relisting: Option<HashMap<(String, String), K>>,
    synced: bool,
}

impl<K> Default for Mirror<K> {
    fn default() -> Self {
        Mirror {
            objects: HashMap::new(),
            relisting: None,
            synced: false,
        }
    }
}

fn object_key<K: Resource>(object: &K) -> (String, String) {
    let meta = object.meta();
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl<K: Resource + Clone> Mirror<K> {
    /// Applies one watch item; returns whether the objects changed.
    fn apply(
        &mut self,
        item: Option<Result<watcher::Event<K>, watcher::Error>>,
        what: &'static str,
    ) -> Result<bool, DnsError> {
        let event = match item {
            None => return Err(DnsError::WatchEnded(what)),
            Some(Err(err)) => {
                // The stream backs off and retries by itself.
                tracing::warn!(error = %err, "cluster DNS: watching {what} failed");
                return Ok(false);
            }
            Some(Ok(event)) => event,
        };
        Ok(match event {
            watcher::Event::Init => {
                self.relisting = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply(object) => {
                self.relisting
                    .get_or_insert_with(HashMap::new)
                    .insert(object_key(&object), object);
                false
            }
            watcher::Event::InitDone => {
                self.objects = self.relisting.take().unwrap_or_default();
                self.synced = true;
                true
            }
            watcher::Event::Apply(object) => {
                self.objects.insert(object_key(&object), object);
                true
            }
            watcher::Event::Delete(object) => self.objects.remove(&object_key(&object)).is_some(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str) -> Service {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": ns}}))
            .unwrap()
    }

    #[test]
    fn mirror_follows_lists_and_changes() {
        let mut mirror = Mirror::<Service>::default();
        let apply = |mirror: &mut Mirror<Service>, event| {
            mirror.apply(Some(Ok(event)), "Services").unwrap()
        };
        assert!(!apply(&mut mirror, watcher::Event::Init));
        assert!(!apply(
            &mut mirror,
            watcher::Event::InitApply(svc("a", "x"))
        ));
        assert!(!apply(
            &mut mirror,
            watcher::Event::InitApply(svc("b", "x"))
        ));
        assert!(
            apply(&mut mirror, watcher::Event::InitDone),
            "a finished listing is a change"
        );
        assert!(apply(&mut mirror, watcher::Event::Apply(svc("a", "y"))));
        assert!(apply(&mut mirror, watcher::Event::Delete(svc("b", "x"))));
        assert!(
            !apply(&mut mirror, watcher::Event::Delete(svc("b", "x"))),
            "already gone"
        );
        let keys = |m: &Mirror<Service>| {
            let mut k: Vec<_> = m.objects.keys().cloned().collect();
            k.sort();
            k
        };
        assert!(mirror.synced);
        assert_eq!(
            keys(&mirror),
            [("a".to_string(), "x".to_string()), ("a".into(), "y".into())]
        );

        // A relist (after a watch expired) replaces everything at its end, not before.
        apply(&mut mirror, watcher::Event::Init);
        apply(&mut mirror, watcher::Event::InitApply(svc("c", "z")));
        assert_eq!(
            keys(&mirror).len(),
            2,
            "still the old state while relisting"
        );
        assert!(apply(&mut mirror, watcher::Event::InitDone));
        assert_eq!(keys(&mirror), [("c".to_string(), "z".to_string())]);

        // Errors are retried by the stream; its end is the loop's end.
        let err = watcher::Error::NoResourceVersion;
        assert!(!mirror.apply(Some(Err(err)), "Services").unwrap());
        assert!(matches!(
            mirror.apply(None, "Services"),
            Err(DnsError::WatchEnded("Services"))
        ));
    }
}
