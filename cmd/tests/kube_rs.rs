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

/// The server's discovery both ways: aggregated, and legacy (a request per group-version).
async fn discoveries(client: Client) -> [kube::discovery::Discovery; 2] {
    let aggregated = kube::discovery::Discovery::new(client.clone())
        .run_aggregated()
        .await
        .expect("aggregated discovery");
    let legacy = kube::discovery::Discovery::new(client)
        .run()
        .await
        .expect("legacy discovery");
    [aggregated, legacy]
}

/// Waits until the reflector's cache holds exactly `want` (name → value), besides the
/// namespace's `kube-root-ca.crt`, which the root CA publisher puts in every namespace.
async fn converge(store: &reflector::Store<ConfigMap>, want: &[(&str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut have: Vec<(String, String)> = store
            .state()
            .iter()
            .filter(|cm| cm.metadata.name.as_deref() != Some("kube-root-ca.crt"))
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
    // A change (a replace that changes nothing keeps the resourceVersion, as in Kubernetes).
    let mut changed = stale.clone();
    changed.data = Some([("v".to_string(), "changed".to_string())].into());
    cms.replace("x", &PostParams::default(), &changed)
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
    for discovery in &discoveries(client).await {
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

/// The next ADDED/MODIFIED/DELETED event of a watch stream, as (type, object).
async fn next_event<K>(
    stream: &mut (impl futures::Stream<Item = kube::Result<kube::api::WatchEvent<K>>> + Unpin),
) -> (&'static str, K) {
    let deadline = Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout(deadline, stream.next())
            .await
            .expect("a watch event in time")
            .expect("the watch goes on")
            .expect("a watch event");
        match event {
            kube::api::WatchEvent::Added(o) => return ("ADDED", o),
            kube::api::WatchEvent::Modified(o) => return ("MODIFIED", o),
            kube::api::WatchEvent::Deleted(o) => return ("DELETED", o),
            kube::api::WatchEvent::Bookmark(_) => continue,
            kube::api::WatchEvent::Error(e) => panic!("watch error {e:?}"),
        }
    }
}

/// core/v1 and events.k8s.io/v1 Events are one resource: what is written through either API
/// is read, listed and watched through both, with Kubernetes' field mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_events_are_one_resource_through_both_apis() {
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use k8s_openapi::api::events::v1::Event;
    use kube::api::{ListParams, WatchParams};

    let dir = tempfile::TempDir::new().expect("tempdir");
    let _server = start(dir.path(), free_port().expect("port"));
    let client = client(&dir.path().join("kubeconfig.yaml")).await;
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    let events: Api<Event> = Api::namespaced(client, "default");
    let mut core_watch = core
        .watch(&WatchParams::default(), "0")
        .await
        .expect("core watch")
        .boxed();
    let mut events_watch = events
        .watch(&WatchParams::default(), "0")
        .await
        .expect("events watch")
        .boxed();

    // Written as a core Event, read as an events.k8s.io one.
    let old_style: CoreEvent = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "old"},
        "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
        "reason": "Pulled", "message": "pulled the image", "type": "Normal",
        "source": {"component": "kubelet", "host": "node-1"},
        "firstTimestamp": "2024-01-01T00:00:00Z", "lastTimestamp": "2024-01-01T00:00:05Z",
        "count": 3, "reportingComponent": "kubelet", "reportingInstance": "node-1",
    }))
    .expect("core event");
    core.create(&PostParams::default(), &old_style)
        .await
        .expect("create core event");
    let seen = events.get("old").await.expect("get through events.k8s.io");
    assert_eq!(seen.note.as_deref(), Some("pulled the image"));
    assert_eq!(seen.reason.as_deref(), Some("Pulled"));
    assert_eq!(
        seen.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("web")
    );
    assert_eq!(
        seen.deprecated_source
            .as_ref()
            .and_then(|s| s.component.as_deref()),
        Some("kubelet")
    );
    assert_eq!(seen.deprecated_count, Some(3));
    assert!(seen.deprecated_first_timestamp.is_some() && seen.deprecated_last_timestamp.is_some());
    assert_eq!(
        (
            seen.reporting_controller.as_deref(),
            seen.reporting_instance.as_deref()
        ),
        (Some("kubelet"), Some("node-1"))
    );
    let (kind, watched) = next_event(&mut events_watch).await;
    assert_eq!(
        (kind, watched.note.as_deref()),
        ("ADDED", Some("pulled the image"))
    );
    let (kind, watched) = next_event(&mut core_watch).await;
    assert_eq!(
        (kind, watched.message.as_deref()),
        ("ADDED", Some("pulled the image"))
    );

    // Written as an events.k8s.io Event, read and selected as a core one.
    let new_style: Event = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "new"},
        "eventTime": "2024-01-01T00:00:00.000000Z",
        "reportingController": "example.com/controller", "reportingInstance": "controller-0",
        "action": "Scaling", "reason": "Scaled", "note": "scaled to 3", "type": "Normal",
        "regarding": {"kind": "Deployment", "name": "api", "namespace": "default"},
        "related": {"kind": "ReplicaSet", "name": "api-1", "namespace": "default"},
        "series": {"count": 2, "lastObservedTime": "2024-01-01T00:00:09.000000Z"},
    }))
    .expect("events.k8s.io event");
    let created = events
        .create(&PostParams::default(), &new_style)
        .await
        .expect("create events.k8s.io event");
    assert_eq!(created.note.as_deref(), Some("scaled to 3"));
    let selected = core
        .list(&ListParams::default().fields("involvedObject.name=api"))
        .await
        .expect("core list by involvedObject");
    assert_eq!(selected.items.len(), 1, "{selected:?}");
    let seen = &selected.items[0];
    assert_eq!(seen.message.as_deref(), Some("scaled to 3"));
    assert_eq!(seen.involved_object.kind.as_deref(), Some("Deployment"));
    assert_eq!(
        seen.related.as_ref().and_then(|r| r.name.as_deref()),
        Some("api-1")
    );
    assert_eq!(
        (
            seen.reporting_component.as_deref(),
            seen.reporting_instance.as_deref(),
            seen.action.as_deref()
        ),
        (
            Some("example.com/controller"),
            Some("controller-0"),
            Some("Scaling")
        )
    );
    assert_eq!(seen.series.as_ref().and_then(|s| s.count), Some(2));
    assert!(seen.event_time.is_some());
    let (kind, watched) = next_event(&mut core_watch).await;
    assert_eq!(
        (kind, watched.message.as_deref()),
        ("ADDED", Some("scaled to 3"))
    );
    let (_, watched) = next_event(&mut events_watch).await;
    assert_eq!(watched.note.as_deref(), Some("scaled to 3"));
    let both = events.list(&ListParams::default()).await.expect("list");
    assert_eq!(both.items.len(), 2);
    let selected = events
        .list(&ListParams::default().fields("regarding.name=web"))
        .await
        .expect("events list by regarding");
    assert_eq!(selected.items.len(), 1);

    // A patch through one API and a delete through the other.
    events
        .patch(
            "old",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"note": "pulled again", "deprecatedCount": 4})),
        )
        .await
        .expect("patch through events.k8s.io");
    let patched = core.get("old").await.expect("get core");
    assert_eq!(
        (patched.message.as_deref(), patched.count),
        (Some("pulled again"), Some(4))
    );
    let (kind, watched) = next_event(&mut core_watch).await;
    assert_eq!(
        (kind, watched.message.as_deref()),
        ("MODIFIED", Some("pulled again"))
    );
    core.delete("new", &DeleteParams::default())
        .await
        .expect("delete through core");
    assert!(events.get_opt("new").await.expect("get").is_none());
    let (_, _) = next_event(&mut events_watch).await; // the patch
    let (kind, watched) = next_event(&mut events_watch).await;
    assert_eq!(
        (kind, watched.metadata.name.as_deref()),
        ("DELETED", Some("new"))
    );
}

/// A CRD with several served versions (conversion strategy None) serves each of them: the
/// object reads with the apiVersion asked for, whichever version wrote it, and discovery lists
/// every served version, the preferred one first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_serves_every_version_of_a_crd() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, WatchParams};

    let dir = tempfile::TempDir::new().expect("tempdir");
    let _server = start(dir.path(), free_port().expect("port"));
    let client = client(&dir.path().join("kubeconfig.yaml")).await;
    let schema = serde_json::json!({"openAPIV3Schema": {"type": "object", "properties": {
        "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}});
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {"name": "v1alpha1", "served": false, "storage": false, "schema": schema},
                {"name": "v1beta1", "served": true, "storage": false, "schema": schema},
                {"name": "v1", "served": true, "storage": true, "schema": schema}]}
    }))
    .expect("crd");
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &crd)
        .await
        .expect("create crd");
    let api = |version: &str| {
        let gvk = GroupVersionKind::gvk("example.com", version, "Widget");
        Api::<DynamicObject>::namespaced_with(
            client.clone(),
            "default",
            &ApiResource::from_gvk_with_plural(&gvk, "widgets"),
        )
    };
    let (beta, ga) = (api("v1beta1"), api("v1"));
    let mut ga_watch = ga
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch v1")
        .boxed();

    let widget: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "example.com/v1beta1", "kind": "Widget",
        "metadata": {"name": "w"}, "spec": {"size": 3}}))
    .expect("widget");
    let created = beta
        .create(&PostParams::default(), &widget)
        .await
        .expect("create through v1beta1");
    let api_version = |o: &DynamicObject| o.types.as_ref().map(|t| t.api_version.clone());
    assert_eq!(
        api_version(&created).as_deref(),
        Some("example.com/v1beta1")
    );
    let read = ga.get("w").await.expect("get through v1");
    assert_eq!(api_version(&read).as_deref(), Some("example.com/v1"));
    assert_eq!(read.data["spec"]["size"], 3);
    let read = beta.get("w").await.expect("get through v1beta1");
    assert_eq!(api_version(&read).as_deref(), Some("example.com/v1beta1"));
    let listed = beta
        .list(&ListParams::default())
        .await
        .expect("list v1beta1");
    assert_eq!(
        api_version(&listed.items[0]).as_deref(),
        Some("example.com/v1beta1")
    );
    let (kind, watched) = next_event(&mut ga_watch).await;
    assert_eq!(
        (kind, api_version(&watched).as_deref()),
        ("ADDED", Some("example.com/v1"))
    );

    // An update through v1 is read back through v1beta1.
    ga.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"size": 5}})),
    )
    .await
    .expect("patch through v1");
    let read = beta.get("w").await.expect("get through v1beta1");
    assert_eq!(
        (api_version(&read).as_deref(), &read.data["spec"]["size"]),
        (Some("example.com/v1beta1"), &serde_json::json!(5))
    );
    let (kind, watched) = next_event(&mut ga_watch).await;
    assert_eq!(
        (kind, api_version(&watched).as_deref()),
        ("MODIFIED", Some("example.com/v1"))
    );
    // A version that is not served is not there.
    match api("v1alpha1").get("w").await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 404),
        other => panic!("v1alpha1 is not served: {other:?}"),
    }

    // Discovery, both ways: both served versions, v1 preferred.
    for discovery in &discoveries(client).await {
        let group = discovery.get("example.com").expect("example.com");
        let versions: Vec<&str> = group.versions().collect();
        assert_eq!(versions, ["v1", "v1beta1"]);
        assert_eq!(group.preferred_version_or_latest(), "v1");
    }
}

/// A PUT naming another uid fails its precondition (409), a PATCH changing the uid is invalid
/// (422); a write that changes nothing keeps the resourceVersion and sends no watch event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_uid_preconditions_and_writes_that_change_nothing() {
    use kube::api::WatchParams;

    let dir = tempfile::TempDir::new().expect("tempdir");
    let _server = start(dir.path(), free_port().expect("port"));
    let client = client(&dir.path().join("kubeconfig.yaml")).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let created = cms
        .create(&PostParams::default(), &config_map("x", "1"))
        .await
        .expect("create");
    let uid = created.metadata.uid.clone().expect("uid");
    let rv = created.metadata.resource_version.clone().expect("rv");

    let mut forged = created.clone();
    forged.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
    match cms.replace("x", &PostParams::default(), &forged).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
            assert!(
                status.message.contains(&format!(
                    "Precondition failed: UID in precondition: 00000000-0000-0000-0000-000000000000, UID in object meta: {uid}"
                )),
                "{}",
                status.message
            );
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    match cms
        .patch(
            "x",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"uid": "other"}})),
        )
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
            assert!(
                status.message.contains("metadata.uid"),
                "{}",
                status.message
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }

    // Only `x`: the namespace's kube-root-ca.crt may appear meanwhile.
    let mut watch = cms
        .watch(&WatchParams::default().fields("metadata.name=x"), &rv)
        .await
        .expect("watch")
        .boxed();
    let replaced = cms
        .replace("x", &PostParams::default(), &created)
        .await
        .expect("replace with the same object");
    assert_eq!(
        replaced.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    let patched = cms
        .patch(
            "x",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"v": "1"}})),
        )
        .await
        .expect("patch to the same value");
    assert_eq!(
        patched.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    assert_eq!(
        cms.get("x").await.expect("get").metadata.resource_version,
        Some(rv.clone())
    );
    // The first event the watch sees is the first real change.
    cms.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"v": "2"}})),
    )
    .await
    .expect("patch to a new value");
    let (kind, seen) = next_event(&mut watch).await;
    assert_eq!(kind, "MODIFIED");
    assert_eq!(
        seen.data.and_then(|d| d.get("v").cloned()).as_deref(),
        Some("2")
    );
}

/// Metadata-only reads (`as=PartialObjectMetadata[List]`), as kube-rs' `metadata_watcher` and
/// Kubernetes' garbage collector use them: get, list and watch carry metadata and no data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_metadata_only_get_list_and_watch() {
    use kube::api::{ListParams, WatchEvent, WatchParams};
    let dir = tempfile::TempDir::new().expect("tempdir");
    let _server = start(dir.path(), free_port().expect("port"));
    let client = client(&dir.path().join("kubeconfig.yaml")).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut labelled = config_map("meta", "secret-ish");
    labelled.metadata.labels = Some([("app".to_string(), "m".to_string())].into());
    let created = cms
        .create(&PostParams::default(), &labelled)
        .await
        .expect("create");

    let got = cms.get_metadata("meta").await.expect("get_metadata");
    assert_eq!(got.metadata.uid, created.metadata.uid);
    assert_eq!(got.metadata.labels, labelled.metadata.labels);
    let types = got.types.expect("typed");
    assert_eq!(
        (types.kind.as_str(), types.api_version.as_str()),
        ("PartialObjectMetadata", "meta.k8s.io/v1")
    );

    let listed = cms
        .list_metadata(&ListParams::default().labels("app=m"))
        .await
        .expect("list_metadata");
    let names: Vec<_> = listed
        .items
        .iter()
        .map(|m| m.metadata.name.clone())
        .collect();
    assert_eq!(names, [Some("meta".to_string())]);
    let rv = listed
        .metadata
        .resource_version
        .expect("list resourceVersion");

    let mut events = cms
        // Narrowed to the object: the root-CA publisher may add `kube-root-ca.crt` meanwhile.
        .watch_metadata(
            &WatchParams::default()
                .fields("metadata.name=meta")
                .timeout(10),
            &rv,
        )
        .await
        .expect("watch_metadata")
        .boxed();
    cms.patch(
        "meta",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"a": "b"}}})),
    )
    .await
    .expect("patch");
    let event = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event within 10 s")
        .expect("stream open")
        .expect("decodes as PartialObjectMetadata");
    match event {
        WatchEvent::Modified(meta) => assert_eq!(
            meta.metadata.annotations.and_then(|a| a.get("a").cloned()),
            Some("b".to_string())
        ),
        other => panic!("expected MODIFIED, got {other:?}"),
    }

    // The raw list carries no `data`: the server, not the client's decoding, dropped it.
    let request = http::Request::get("/api/v1/namespaces/default/configmaps")
        .header(
            "Accept",
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
        )
        .body(Vec::new())
        .expect("request");
    let raw: serde_json::Value =
        serde_json::from_str(&client.request_text(request).await.expect("raw list")).expect("JSON");
    assert_eq!(raw["kind"], "PartialObjectMetadataList", "{raw}");
    let item = raw["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["metadata"]["name"] == "meta"))
        .expect("the ConfigMap listed");
    assert_eq!(item["kind"], "PartialObjectMetadata", "{item}");
    assert!(item.get("data").is_none(), "{item}");
}
