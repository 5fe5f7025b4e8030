//! The ServiceAccount loop: a Controller over Namespaces that creates each one's `default`
//! account ([`crate::service_account`]). It is triggered by namespace changes and by changes
//! to (and deletions of) `default` accounts — its own watch, narrowed by a field selector to
//! that name, so a deleted account is recreated as in Kubernetes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::ResourceExt;
use tokio::sync::watch;

use super::exec::{self, Written};
use super::{drained, LoopError};
use crate::service_account::{self, DEFAULT_SERVICE_ACCOUNT};

struct Accounts {
    client: kube::Client,
    /// Every namespace's `default` account.
    defaults: Store<ServiceAccount>,
}

/// Runs the loop until `drain` turns true.
pub(super) async fn run(client: kube::Client, drain: watch::Receiver<bool>) {
    let (defaults, writer) = reflector::store();
    let only_default =
        watcher::Config::default().fields(&format!("metadata.name={DEFAULT_SERVICE_ACCOUNT}"));
    let accounts = watcher(Api::<ServiceAccount>::all(client.clone()), only_default)
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    let context = Arc::new(Accounts {
        client: client.clone(),
        defaults,
    });
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches_stream(accounts, |account| {
        account
            .namespace()
            .map(|ns| ObjectRef::<Namespace>::new(&ns))
    })
    .graceful_shutdown_on(drained(drain))
    .run(reconcile, retry, context)
    .for_each(|_| async {})
    .await;
}

async fn reconcile(namespace: Arc<Namespace>, context: Arc<Accounts>) -> Result<Action, LoopError> {
    // Until the accounts are listed, every namespace would look like it lacks one.
    context
        .defaults
        .wait_until_ready()
        .await
        .map_err(|e| LoopError::Plan(e.to_string()))?;
    let name = namespace.name_any();
    let exists = context
        .defaults
        .get(&ObjectRef::new(DEFAULT_SERVICE_ACCOUNT).within(&name))
        .is_some();
    if let Some(account) = service_account::plan(&namespace, exists) {
        let api: Api<ServiceAccount> = Api::namespaced(context.client.clone(), &name);
        // 409 (Stale) means it exists after all: the cache was behind, nothing to do.
        if exec::create(&api, &account).await? == Written::Done {
            tracing::info!(namespace = %name, "created ServiceAccount default");
        }
    }
    Ok(Action::await_change())
}

fn retry(_namespace: Arc<Namespace>, error: &LoopError, _context: Arc<Accounts>) -> Action {
    tracing::debug!(%error, "service account sync failed; retrying");
    Action::requeue(Duration::from_secs(2))
}
