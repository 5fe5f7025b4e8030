//! A kube-rs client whose requests go straight into this server's router — no TLS, no socket,
//! no serialisation beyond the JSON bodies. It is how the scheduler and the controllers inside
//! `shoal server` reach the API: through the same handlers, validation and watch cache as every
//! remote client, so they stay ordinary API clients (agents use the same client over HTTPS).

use std::sync::Arc;

use tower::ServiceBuilder;

use crate::auth::User;
use crate::rest::Api;
use crate::routes;

/// A client acting as `user` (member of `groups`) against `api`.
pub fn client(api: Arc<Api>, user: &str, groups: &[&str]) -> kube::Client {
    let user = User::Authenticated {
        name: user.to_string(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    };
    let service = ServiceBuilder::new()
        .map_request(move |mut request: http::Request<kube::client::Body>| {
            request.extensions_mut().insert(user.clone());
            request
        })
        .service(routes::router(api));
    kube::Client::new(service, "default")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::StreamExt;
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use kube::api::{Api as KubeApi, DeleteParams, PostParams, Preconditions};
    use kube::runtime::watcher;
    use shoal_store::{
        self as store, KeyValue, MemStore, RangeRequest, RangeResponse, Revision, Store,
        WatchStream,
    };

    use crate::rest::Api;

    #[tokio::test]
    async fn kube_client_reads_writes_and_watches_in_process(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let api = Api::new(
            Arc::new(MemStore::new(Default::default())),
            "127.0.0.1:6443".into(),
        );
        api.bootstrap().await.map_err(|e| e.message)?;
        let client = super::client(Arc::new(api), "system:kube-controller-manager", &[]);
        let namespaces: KubeApi<Namespace> = KubeApi::all(client.clone());
        let names: Vec<String> = namespaces
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        assert!(names.contains(&"kube-system".to_string()), "{names:?}");

        let config_maps: KubeApi<ConfigMap> = KubeApi::namespaced(client, "default");
        let mut events = watcher(config_maps.clone(), watcher::Config::default()).boxed();
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "in-process"}, "data": {"a": "b"}
        }))?;
        config_maps.create(&PostParams::default(), &cm).await?;
        let seen = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) = event {
                    return cm.metadata.name;
                }
            }
            None
        })
        .await?;
        assert_eq!(seen.as_deref(), Some("in-process"));
        Ok(())
    }

    /// A store where another writer changes a key between the API server's read and its
    /// conditional delete or update (`on`), once it is armed (`raced` false) — as a
    /// controller updating status, or another server, does.
    struct WriteBeforeFirst {
        inner: MemStore,
        on: Op,
        raced: std::sync::atomic::AtomicBool,
    }

    #[derive(PartialEq)]
    enum Op {
        Delete,
        Update,
    }

    impl WriteBeforeFirst {
        /// The other writer's write, the first time `op` comes while armed.
        async fn race(&self, op: Op, key: &str) -> store::Result<()> {
            if op == self.on && !self.raced.swap(true, std::sync::atomic::Ordering::SeqCst) {
                if let Some(current) = self.inner.get(key).await? {
                    self.inner.put(key, current.value).await?;
                }
            }
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl Store for WriteBeforeFirst {
        async fn get(&self, key: &str) -> store::Result<Option<KeyValue>> {
            self.inner.get(key).await
        }
        async fn range(&self, request: RangeRequest) -> store::Result<RangeResponse> {
            self.inner.range(request).await
        }
        async fn create(&self, key: &str, value: Vec<u8>) -> store::Result<KeyValue> {
            self.inner.create(key, value).await
        }
        async fn update(
            &self,
            key: &str,
            value: Vec<u8>,
            expected: Revision,
        ) -> store::Result<KeyValue> {
            self.race(Op::Update, key).await?;
            self.inner.update(key, value, expected).await
        }
        async fn put(&self, key: &str, value: Vec<u8>) -> store::Result<KeyValue> {
            self.inner.put(key, value).await
        }
        async fn delete(
            &self,
            key: &str,
            expected: Option<Revision>,
        ) -> store::Result<(KeyValue, Revision)> {
            self.race(Op::Delete, key).await?;
            self.inner.delete(key, expected).await
        }
        async fn watch(&self, prefix: &str, after: Option<Revision>) -> store::Result<WatchStream> {
            self.inner.watch(prefix, after).await
        }
        async fn current_revision(&self) -> store::Result<Revision> {
            self.inner.current_revision().await
        }
        async fn compacted_revision(&self) -> store::Result<Revision> {
            self.inner.compacted_revision().await
        }
        async fn compact(&self, revision: Revision) -> store::Result<()> {
            self.inner.compact(revision).await
        }
    }

    async fn racing_config_maps(
    ) -> Result<(KubeApi<ConfigMap>, ConfigMap), Box<dyn std::error::Error>> {
        let store = WriteBeforeFirst {
            inner: MemStore::new(Default::default()),
            on: Op::Delete,
            raced: true.into(),
        };
        let store = Arc::new(store);
        let api = Api::new(store.clone(), "127.0.0.1:6443".into());
        api.bootstrap().await.map_err(|e| e.message)?;
        let client = super::client(Arc::new(api), "system:kube-controller-manager", &[]);
        let config_maps: KubeApi<ConfigMap> = KubeApi::namespaced(client, "default");
        let cm: ConfigMap =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "raced"}}))?;
        let created = config_maps.create(&PostParams::default(), &cm).await?;
        store
            .raced
            .store(false, std::sync::atomic::Ordering::SeqCst);
        Ok((config_maps, created))
    }

    /// A delete without preconditions deletes whatever version the object has by then, as
    /// Kubernetes' registry does (the Python client's delete used to get a 409 here).
    #[tokio::test]
    async fn delete_retries_when_a_write_lands_first() -> Result<(), Box<dyn std::error::Error>> {
        let (config_maps, _) = racing_config_maps().await?;
        config_maps
            .delete("raced", &DeleteParams::default())
            .await?;
        assert!(config_maps.get_opt("raced").await?.is_none());
        Ok(())
    }

    /// With a resourceVersion precondition, the same race is the client's conflict.
    #[tokio::test]
    async fn delete_with_a_stale_precondition_conflicts() -> Result<(), Box<dyn std::error::Error>>
    {
        let (config_maps, created) = racing_config_maps().await?;
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: created.metadata.resource_version,
                uid: None,
            }),
            ..DeleteParams::default()
        };
        match config_maps.delete("raced", &params).await {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 409, "{status:?}"),
            other => panic!("expected a 409, got {other:?}"),
        }
        assert!(config_maps.get_opt("raced").await?.is_some());
        Ok(())
    }

    /// A write to a pod between the binding's read and its write (the scheduler's own
    /// `PodScheduled=False`, say) does not fail the binding, as in Kubernetes: a 409 means the
    /// pod is bound already.
    #[tokio::test]
    async fn a_binding_survives_a_racing_write() -> Result<(), Box<dyn std::error::Error>> {
        use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
        let store = Arc::new(WriteBeforeFirst {
            inner: MemStore::new(Default::default()),
            on: Op::Update,
            raced: true.into(),
        });
        let api = Api::new(store.clone(), "127.0.0.1:6443".into());
        api.bootstrap().await.map_err(|e| e.message)?;
        let client = super::client(Arc::new(api), "system:kube-scheduler", &[]);
        let pods: KubeApi<Pod> = KubeApi::namespaced(client, "default");
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
        let binding = Binding {
            metadata: kube::api::ObjectMeta {
                name: Some("p".into()),
                ..Default::default()
            },
            target: ObjectReference {
                kind: Some("Node".into()),
                name: Some("n1".into()),
                ..Default::default()
            },
        };
        store
            .raced
            .store(false, std::sync::atomic::Ordering::SeqCst);
        pods.create_subresource::<Binding, serde_json::Value>(
            "binding",
            "p",
            &PostParams::default(),
            &binding,
        )
        .await?;
        assert!(
            store.raced.load(std::sync::atomic::Ordering::SeqCst),
            "no race happened"
        );
        let bound = pods.get("p").await?;
        assert_eq!(bound.spec.and_then(|s| s.node_name).as_deref(), Some("n1"));
        // Bound now: a second binding is the conflict.
        match pods
            .create_subresource::<Binding, serde_json::Value>(
                "binding",
                "p",
                &PostParams::default(),
                &binding,
            )
            .await
        {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 409, "{status:?}"),
            other => panic!("expected a 409, got {other:?}"),
        }
        Ok(())
    }

    /// Servers update the `kubernetes` endpoints concurrently: one that loses the race reads
    /// them again and writes its own (a restarted server used to fail its start on the 409).
    #[tokio::test]
    async fn kubernetes_endpoints_survive_a_racing_server() -> Result<(), Box<dyn std::error::Error>>
    {
        let store = Arc::new(WriteBeforeFirst {
            inner: MemStore::new(Default::default()),
            on: Op::Update,
            raced: true.into(),
        });
        let first = Api::new(store.clone(), "10.0.0.1:6443".into());
        first.bootstrap().await.map_err(|e| e.message)?;
        let second = Api::new(store.clone(), "10.0.0.2:6443".into());
        store
            .raced
            .store(false, std::sync::atomic::Ordering::SeqCst);
        second.bootstrap().await.map_err(|e| e.message)?;
        assert!(
            store.raced.load(std::sync::atomic::Ordering::SeqCst),
            "no race happened"
        );
        let client = super::client(Arc::new(second), "system:kube-controller-manager", &[]);
        let endpoints: KubeApi<k8s_openapi::api::core::v1::Endpoints> =
            KubeApi::namespaced(client, "default");
        let addresses: Vec<String> = endpoints
            .get("kubernetes")
            .await?
            .subsets
            .unwrap_or_default()
            .iter()
            .flat_map(|s| s.addresses.iter().flatten().map(|a| a.ip.clone()))
            .collect();
        assert_eq!(addresses, ["10.0.0.1", "10.0.0.2"]);
        Ok(())
    }
}
