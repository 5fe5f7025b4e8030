//! kube-rs, the client Shoal's own controllers use, against a live server: typed CRUD, and a
//! watcher → reflector that keeps its cache right across a server restart, in both of its
//! initial-list modes (paginated list + watch, and streaming lists with sendInitialEvents).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, Config};
use shoal_e2e::server::{free_port, ShoalServer};

fn start(data_dir: &Path, port: u16) -> ShoalServer {
    ShoalServer::start(Path::new(env!("CARGO_BIN_EXE_shoal")), data_dir, port, &[])
        .expect("shoal server starts")
}

async fn client(kubeconfig: &PathBuf) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

fn config_map(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some([("v".to_string(), value.to_string())].into()),
        ..Default::default()
    }
}

/// Waits until the reflector's cache holds exactly `want` (name → value).
async fn converge(store: &reflector::Store<ConfigMap>, want: &[(&str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut have: Vec<(String, String)> = store
            .state()
            .iter()
            .map(|cm| {
                let value = cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get("v"))
                    .cloned()
                    .unwrap_or_default();
                (cm.metadata.name.clone().unwrap_or_default(), value)
            })
            .collect();
        have.sort();
        let want_owned: Vec<(String, String)> = want
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        if have == want_owned {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "reflector holds {have:?}, want {want_owned:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn reflector_survives_restart(streaming: bool) {
    let dir = tempfile::TempDir::new().expect("tempdir");
    let port = free_port().expect("port");
    let server = start(dir.path(), port);
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    let client = client(&kubeconfig).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    cms.create(&PostParams::default(), &config_map("a", "1"))
        .await
        .expect("create a");
    let (reader, writer) = reflector::store();
    let config = if streaming {
        watcher::Config::default().streaming_lists()
    } else {
        watcher::Config::default()
    };
    let stream = reflector(writer, watcher(cms.clone(), config))
        .default_backoff()
        .applied_objects();
    let task = tokio::spawn(stream.for_each(|_| async {}));

    converge(&reader, &[("a", "1")]).await;
    cms.create(&PostParams::default(), &config_map("b", "2"))
        .await
        .expect("create b");
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"v": "1b"}})),
    )
    .await
    .expect("patch a");
    converge(&reader, &[("a", "1b"), ("b", "2")]).await;

    // Restart the server on the same data dir and port; the watcher reconnects by itself.
    server.stop().expect("clean stop");
    let server = start(dir.path(), port);
    cms.delete("b", &DeleteParams::default())
        .await
        .expect("delete b");
    cms.create(&PostParams::default(), &config_map("c", "3"))
        .await
        .expect("create c");
    converge(&reader, &[("a", "1b"), ("c", "3")]).await;

    task.abort();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_reflector_survives_server_restart() {
    reflector_survives_restart(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_streaming_list_reflector_survives_server_restart() {
    reflector_survives_restart(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_typed_errors() {
    let dir = tempfile::TempDir::new().expect("tempdir");
    let port = free_port().expect("port");
    let _server = start(dir.path(), port);
    let client = client(&dir.path().join("kubeconfig.yaml")).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    cms.create(&PostParams::default(), &config_map("x", "1"))
        .await
        .expect("create");
    match cms
        .create(&PostParams::default(), &config_map("x", "1"))
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(
            (status.code, status.reason.as_str()),
            (409, "AlreadyExists")
        ),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    match cms.get("missing").await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 404),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let mut stale = cms.get("x").await.expect("get");
    cms.replace("x", &PostParams::default(), &stale)
        .await
        .expect("replace with current rv");
    stale.data = Some([("v".to_string(), "2".to_string())].into());
    match cms.replace("x", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"))
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_discovers_resources_both_ways() {
    let dir = tempfile::TempDir::new().expect("tempdir");
    let _server = start(dir.path(), free_port().expect("port"));
    let client = client(&dir.path().join("kubeconfig.yaml")).await;
    let aggregated = kube::discovery::Discovery::new(client.clone())
        .run_aggregated()
        .await
        .expect("aggregated discovery");
    let legacy = kube::discovery::Discovery::new(client)
        .run()
        .await
        .expect("legacy discovery");
    for discovery in [&aggregated, &legacy] {
        let apps = discovery.get("apps").expect("apps group");
        let kinds: Vec<String> = apps
            .recommended_resources()
            .into_iter()
            .map(|(r, _)| r.kind)
            .collect();
        assert!(kinds.contains(&"Deployment".to_string()), "{kinds:?}");
        assert!(discovery.has_group("apiextensions.k8s.io"));
        let core = discovery.get("").expect("core group");
        let (pod, caps) = core.recommended_kind("Pod").expect("pods");
        assert_eq!(
            (pod.plural.as_str(), caps.scope.clone()),
            ("pods", kube::discovery::Scope::Namespaced)
        );
    }
}
