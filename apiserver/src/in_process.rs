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
    use kube::api::{Api as KubeApi, PostParams};
    use kube::runtime::watcher;
    use shoal_store::MemStore;

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
}
