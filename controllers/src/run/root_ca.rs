//! The root CA publisher loop: a Controller over Namespaces that keeps each one's
//! `kube-root-ca.crt` ConfigMap ([`crate::root_ca`]). It is triggered by namespace changes
//! and by changes to (and deletions of) those ConfigMaps — its own watch, narrowed by a field
//! selector to that name — so an edited or deleted one is put back, as in Kubernetes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::ResourceExt;
use tokio::sync::watch;

use super::exec::{self, Written};
use super::{drained, LoopError};
use crate::root_ca::{self, Plan, ROOT_CA_CONFIGMAP};

struct Publisher {
    client: kube::Client,
    ca_pem: String,
    configmaps: Store<ConfigMap>,
}

/// Runs the loop, publishing `ca_pem`, until `drain` turns true.
pub async fn run(client: kube::Client, ca_pem: String, drain: watch::Receiver<bool>) {
    let (configmaps, writer) = reflector::store();
    let only_ours =
        watcher::Config::default().fields(&format!("metadata.name={ROOT_CA_CONFIGMAP}"));
    let changes = watcher(Api::<ConfigMap>::all(client.clone()), only_ours)
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    let context = Arc::new(Publisher {
        client: client.clone(),
        ca_pem,
        configmaps,
    });
    Controller::new(Api::<Namespace>::all(client), watcher::Config::default())
        .watches_stream(changes, |cm| {
            cm.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns))
        })
        .graceful_shutdown_on(drained(drain))
        .run(reconcile, retry, context)
        .for_each(|_| async {})
        .await;
}

async fn reconcile(
    namespace: Arc<Namespace>,
    context: Arc<Publisher>,
) -> Result<Action, LoopError> {
    // Until the ConfigMaps are listed, every namespace would look like it lacks one.
    context
        .configmaps
        .wait_until_ready()
        .await
        .map_err(|e| LoopError::Plan(e.to_string()))?;
    let name = namespace.name_any();
    let current = context
        .configmaps
        .get(&ObjectRef::new(ROOT_CA_CONFIGMAP).within(&name));
    let api: Api<ConfigMap> = Api::namespaced(context.client.clone(), &name);
    match root_ca::plan(&namespace, current.as_deref(), &context.ca_pem) {
        Some(Plan::Create(cm)) => {
            // 409 means it exists after all: its watch event brings us back.
            let written = exec::create(&api, &cm).await?;
            if written == Written::Done {
                tracing::info!(namespace = %name, "published {ROOT_CA_CONFIGMAP}");
            }
        }
        Some(Plan::Update(cm)) => {
            // A replace on the observed resourceVersion: a concurrent change is a 409 and
            // its event brings us back to look again.
            match api
                .replace(ROOT_CA_CONFIGMAP, &PostParams::default(), &cm)
                .await
            {
                Ok(_) => tracing::info!(namespace = %name, "restored {ROOT_CA_CONFIGMAP}"),
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        None => {}
    }
    Ok(Action::await_change())
}

fn retry(_namespace: Arc<Namespace>, error: &LoopError, _context: Arc<Publisher>) -> Action {
    tracing::debug!(%error, "root CA publishing failed; retrying");
    Action::requeue(Duration::from_secs(2))
}
