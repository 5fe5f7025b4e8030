//! End-to-end scenarios over realistic objects: applies and updates in sequence, as the REST
//! layer will run them.

#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};

use super::*;

const T0: &str = "2024-01-01T00:00:00Z";
const T1: &str = "2024-01-01T00:01:00Z";
const T2: &str = "2024-01-01T00:02:00Z";
const T3: &str = "2024-01-01T00:03:00Z";

fn deployment(replicas: i64, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "nginx", "namespace": "default", "labels": {"app": "nginx"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "nginx"}},
            "template": {
                "metadata": {"labels": {"app": "nginx"}},
                "spec": {"containers": [{"name": "nginx", "image": image}]}
            }
        }
    })
}

fn configmap(data: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "default"},
        "data": data
    })
}

/// What the server adds on create; never tracked.
fn as_stored(mut object: Value) -> Value {
    let metadata = object["metadata"].as_object_mut().unwrap();
    metadata.insert("uid".into(), json!("6f1c"));
    metadata.insert("resourceVersion".into(), json!("7"));
    metadata.insert("creationTimestamp".into(), json!(T0));
    object
}

fn apply_as(live: Option<&Value>, config: &Value, manager: &str, now: &str) -> Value {
    apply(live, config, manager, false, now).unwrap()
}

fn entry<'a>(object: &'a Value, manager: &str, operation: &str) -> Option<&'a Value> {
    object["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == operation)
}

/// The paths `manager` owns through `operation`, printed.
fn owned(object: &Value, manager: &str, operation: &str) -> Vec<String> {
    let Some(entry) = entry(object, manager, operation) else {
        return Vec::new();
    };
    let set = FieldSet::from_fields_v1(&entry["fieldsV1"]).unwrap();
    set.paths().iter().map(ToString::to_string).collect()
}

fn managers(object: &Value) -> Vec<(String, String)> {
    object["metadata"]["managedFields"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| {
                    let text = |k: &str| e[k].as_str().unwrap().to_string();
                    (text("manager"), text("operation"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn conflicts_of(result: Result<Value, ApplyError>) -> Vec<Conflict> {
    match result {
        Err(ApplyError::Conflicts(conflicts)) => conflicts,
        other => panic!("expected conflicts, got {other:?}"),
    }
}

#[test]
fn apply_creates_the_object_and_records_its_applier() {
    let created = apply_as(None, &deployment(3, "nginx:1.25"), "kubectl", T0);
    assert_eq!(created["spec"]["replicas"], 3);
    assert_eq!(
        created["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.25"
    );
    let entry = entry(&created, "kubectl", "Apply").unwrap();
    assert_eq!(entry["apiVersion"], "apps/v1");
    assert_eq!(entry["time"], T0);
    assert_eq!(entry["fieldsType"], "FieldsV1");
    assert!(entry.get("subresource").is_none());
    assert_eq!(managers(&created).len(), 1);
}

#[test]
fn apply_fields_v1_matches_kubernetes_byte_for_byte() {
    // As the API server records `kubectl apply --server-side`: no "." on struct fields or on
    // the labels map (only list items get one), metadata.name/namespace left out, the
    // LabelSelector owned whole.
    let created = apply_as(None, &deployment(3, "nginx:1.25"), "kubectl", T0);
    let fields = entry(&created, "kubectl", "Apply").unwrap()["fieldsV1"].to_string();
    assert_eq!(
        fields,
        r#"{"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:replicas":{},"f:selector":{},"f:template":{"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:image":{},"f:name":{}}}}}}}"#
    );

    // The Kubernetes docs' ConfigMap example.
    let mut config = configmap(json!({"key": "some value"}));
    config["metadata"]["labels"] = json!({"test-label": "test"});
    let created = apply_as(None, &config, "kubectl", T0);
    assert_eq!(
        entry(&created, "kubectl", "Apply").unwrap()["fieldsV1"],
        json!({"f:metadata": {"f:labels": {"f:test-label": {}}}, "f:data": {"f:key": {}}})
    );
}

#[test]
fn update_fields_v1_matches_kubernetes_byte_for_byte() {
    // A create through an update records newly created maps and list items with "."; value
    // structs such as spec and template existed (empty) already.
    let mut object = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "nginx", "labels": {"app": "nginx"}},
        "spec": {"replicas": 3, "template": {"spec": {"containers": [
            {"name": "nginx", "image": "nginx:1.25"}
        ]}}}
    });
    track_update(None, &mut object, "kubectl-create", None, T0);
    let fields = entry(&object, "kubectl-create", "Update").unwrap()["fieldsV1"].to_string();
    assert_eq!(
        fields,
        r#"{"f:metadata":{"f:labels":{".":{},"f:app":{}}},"f:spec":{"f:replicas":{},"f:template":{"f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:image":{},"f:name":{}}}}}}}"#
    );
}

#[test]
fn reapplying_without_a_field_removes_it() {
    let mut first = deployment(3, "nginx:1.25");
    first["spec"]["minReadySeconds"] = json!(5);
    first["metadata"]["labels"]["tier"] = json!("web");
    let live = as_stored(apply_as(None, &first, "ci", T0));

    let second = deployment(3, "nginx:1.25");
    let updated = apply_as(Some(&live), &second, "ci", T1);
    assert!(updated["spec"].get("minReadySeconds").is_none());
    assert_eq!(updated["metadata"]["labels"], json!({"app": "nginx"}));
    assert!(!owned(&updated, "ci", "Apply").contains(&".spec.minReadySeconds".to_string()));
    // Server-set metadata survives: it is nobody's to prune.
    assert_eq!(updated["metadata"]["uid"], "6f1c");
    assert_eq!(updated["metadata"]["name"], "nginx");
}

#[test]
fn a_field_dropped_by_one_applier_stays_while_another_owns_it() {
    let live = as_stored(apply_as(None, &deployment(3, "nginx:1.25"), "ci", T0));
    // A second applier sets the same replicas: shared, no conflict.
    let replicas_only = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "nginx"}, "spec": {"replicas": 3}
    });
    let shared = apply_as(Some(&live), &replicas_only, "handover", T1);
    assert!(owned(&shared, "ci", "Apply").contains(&".spec.replicas".to_string()));
    assert_eq!(owned(&shared, "handover", "Apply"), [".spec.replicas"]);

    // The first applier lets go of replicas: the value stays, now the other's alone.
    let mut without_replicas = deployment(3, "nginx:1.25");
    without_replicas["spec"]
        .as_object_mut()
        .unwrap()
        .remove("replicas");
    let handed_over = apply_as(Some(&shared), &without_replicas, "ci", T2);
    assert_eq!(handed_over["spec"]["replicas"], 3);
    assert!(!owned(&handed_over, "ci", "Apply").contains(&".spec.replicas".to_string()));
    assert_eq!(owned(&handed_over, "handover", "Apply"), [".spec.replicas"]);
}

#[test]
fn changing_another_appliers_field_conflicts() {
    let live = as_stored(apply_as(None, &deployment(3, "nginx:1.25"), "ci", T0));
    let result = apply(
        Some(&live),
        &deployment(5, "nginx:1.25"),
        "other",
        false,
        T1,
    );
    let error = result.unwrap_err();
    assert_eq!(
        error.to_string(),
        "Apply failed with 1 conflict: conflict with \"ci\": .spec.replicas"
    );
    let status = error.status();
    assert_eq!(status["code"], 409);
    assert_eq!(
        status["details"]["causes"],
        json!([{"type": "FieldManagerConflict", "message": "conflict with \"ci\"", "field": ".spec.replicas"}])
    );
}

#[test]
fn changing_a_field_an_update_set_conflicts() {
    let live = as_stored(apply_as(None, &deployment(3, "nginx:1.25"), "kubectl", T0));
    // `kubectl scale` sends an ordinary update under the manager "kubectl".
    let mut scaled = live.clone();
    scaled["spec"]["replicas"] = json!(6);
    track_update(Some(&live), &mut scaled, "kubectl", None, T1);
    assert_eq!(owned(&scaled, "kubectl", "Update"), [".spec.replicas"]);
    assert!(!owned(&scaled, "kubectl", "Apply").contains(&".spec.replicas".to_string()));

    let mut config = deployment(3, "nginx:1.26");
    config["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.26");
    let conflicts = conflicts_of(apply(Some(&scaled), &config, "ci", false, T2));
    let error = ApplyError::Conflicts(conflicts.clone());
    assert_eq!(
        error.to_string(),
        "Apply failed with 2 conflicts: conflicts with \"kubectl\":\n\
         - .spec.template.spec.containers[name=\"nginx\"].image\n\
         conflicts with \"kubectl\" using apps/v1:\n- .spec.replicas"
    );
    assert_eq!(conflicts[1].path.to_string(), ".spec.replicas");
    assert_eq!(conflicts[1].operation, Operation::Update);

    // The applier's own re-apply conflicts with the update too.
    let conflicts = conflicts_of(apply(
        Some(&scaled),
        &deployment(3, "nginx:1.25"),
        "kubectl",
        false,
        T2,
    ));
    assert_eq!(
        ApplyError::Conflicts(conflicts).to_string(),
        "Apply failed with 1 conflict: conflict with \"kubectl\" using apps/v1: .spec.replicas"
    );
}

#[test]
fn force_takes_ownership_and_empties_drop_out() {
    let live = as_stored(apply_as(None, &deployment(3, "nginx:1.25"), "kubectl", T0));
    let mut scaled = live.clone();
    scaled["spec"]["replicas"] = json!(6);
    track_update(Some(&live), &mut scaled, "kubectl-scale", None, T1);

    let forced = apply(
        Some(&scaled),
        &deployment(4, "nginx:1.25"),
        "kubectl",
        true,
        T2,
    )
    .unwrap();
    assert_eq!(forced["spec"]["replicas"], 4);
    assert!(owned(&forced, "kubectl", "Apply").contains(&".spec.replicas".to_string()));
    // kubectl-scale owned nothing else: its entry is gone.
    assert!(entry(&forced, "kubectl-scale", "Update").is_none());
    assert_eq!(
        managers(&forced),
        [("kubectl".to_string(), "Apply".to_string())]
    );
}

#[test]
fn containers_merge_by_name() {
    let live = as_stored(apply_as(None, &deployment(3, "nginx:1.25"), "ci", T0));
    // A sidecar injector adds a container through an update.
    let mut injected = live.clone();
    injected["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "proxy", "image": "envoy:1"}));
    track_update(Some(&live), &mut injected, "injector", None, T1);
    assert!(owned(&injected, "injector", "Update")
        .contains(&r#".spec.template.spec.containers[name="proxy"]"#.to_string()));

    let updated = apply_as(Some(&injected), &deployment(3, "nginx:1.26"), "ci", T2);
    assert_eq!(
        updated["spec"]["template"]["spec"]["containers"],
        json!([{"name": "nginx", "image": "nginx:1.26"}, {"name": "proxy", "image": "envoy:1"}])
    );
    assert!(entry(&updated, "injector", "Update").is_some());
}

#[test]
fn env_items_are_removed_only_when_owned() {
    let with_env = |names: &[&str]| {
        let mut config = deployment(1, "app:1");
        let env: Vec<Value> = names
            .iter()
            .map(|n| json!({"name": n, "value": "1"}))
            .collect();
        config["spec"]["template"]["spec"]["containers"][0]["env"] = json!(env);
        config
    };
    let live = as_stored(apply_as(None, &with_env(&["A", "B"]), "ci", T0));
    let mut edited = live.clone();
    edited["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "C", "value": "debug"}));
    track_update(Some(&live), &mut edited, "kubectl-edit", None, T1);

    let updated = apply_as(Some(&edited), &with_env(&["A"]), "ci", T2);
    let env: Vec<&str> = updated["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(env, ["A", "C"]);
}

#[test]
fn service_ports_are_keyed_by_port_and_defaulted_protocol() {
    let service = |ports: Value| {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": ports}
        })
    };
    let live = as_stored(apply_as(
        None,
        &service(json!([{"port": 80, "targetPort": 8080}, {"port": 443, "protocol": "TCP"}])),
        "ci",
        T0,
    ));
    assert_eq!(
        entry(&live, "ci", "Apply").unwrap()["fieldsV1"]["f:spec"]["f:ports"],
        json!({
            "k:{\"port\":443,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}, "f:protocol": {}},
            "k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}, "f:targetPort": {}}
        })
    );
    // Naming the protocol explicitly addresses the same item; dropping 443 removes it.
    let updated = apply_as(
        Some(&live),
        &service(json!([{"port": 80, "protocol": "TCP", "targetPort": 9090}])),
        "ci",
        T1,
    );
    assert_eq!(
        updated["spec"]["ports"],
        json!([{"port": 80, "protocol": "TCP", "targetPort": 9090}])
    );
    assert_eq!(updated["spec"]["selector"], json!({"app": "web"}));
}

#[test]
fn configmap_data_entries_belong_to_their_appliers() {
    let live = as_stored(apply_as(None, &configmap(json!({"a": "1"})), "one", T0));
    let both = apply_as(Some(&live), &configmap(json!({"b": "2"})), "two", T1);
    assert_eq!(both["data"], json!({"a": "1", "b": "2"}));
    let dropped = apply_as(Some(&both), &configmap(json!({})), "one", T2);
    assert_eq!(dropped["data"], json!({"b": "2"}));
    assert_eq!(owned(&dropped, "one", "Apply"), [".data"]);
}

#[test]
fn finalizers_are_a_set() {
    let with_finalizers = |f: Value| {
        let mut config = configmap(json!({"a": "1"}));
        config["metadata"]["finalizers"] = f;
        config
    };
    let live = as_stored(apply_as(None, &with_finalizers(json!(["a/x"])), "one", T0));
    let both = apply_as(Some(&live), &with_finalizers(json!(["b/y"])), "two", T1);
    assert_eq!(both["metadata"]["finalizers"], json!(["a/x", "b/y"]));
    assert!(owned(&both, "two", "Apply").contains(&r#".metadata.finalizers[="b/y"]"#.to_string()));
    let mut config = configmap(json!({"a": "1"}));
    config["metadata"]["finalizers"] = json!([]);
    let dropped = apply_as(Some(&both), &config, "one", T2);
    assert_eq!(dropped["metadata"]["finalizers"], json!(["b/y"]));
}

#[test]
fn an_unchanged_reapply_returns_the_live_object() {
    let live = as_stored(apply_as(None, &deployment(3, "nginx:1.25"), "ci", T0));
    let again = apply_as(Some(&live), &deployment(3, "nginx:1.25"), "ci", T3);
    assert_eq!(again, live);
}

#[test]
fn an_update_records_what_changed_and_drops_emptied_entries() {
    let mut created = configmap(json!({"a": "1", "b": "2"}));
    track_update(None, &mut created, "kubectl-create", None, T0);
    assert_eq!(
        owned(&created, "kubectl-create", "Update"),
        [".data", ".data.a", ".data.b"]
    );
    let created = as_stored(created);

    let mut edited = created.clone();
    edited["data"]["a"] = json!("changed");
    track_update(Some(&created), &mut edited, "editor", None, T1);
    assert_eq!(owned(&edited, "editor", "Update"), [".data.a"]);
    assert_eq!(
        owned(&edited, "kubectl-create", "Update"),
        [".data", ".data.b"]
    );
    assert_eq!(
        entry(&edited, "kubectl-create", "Update").unwrap()["time"],
        T0
    );

    // Removing b and the data map leaves kubectl-create nothing: its entry goes.
    let mut emptied = edited.clone();
    emptied["data"] = json!({"a": "changed"});
    emptied["data"]["c"] = json!("3");
    track_update(Some(&edited), &mut emptied, "editor", None, T2);
    let mut replaced = emptied.clone();
    replaced.as_object_mut().unwrap().remove("data");
    track_update(Some(&emptied), &mut replaced, "editor", None, T3);
    assert_eq!(managers(&replaced), Vec::<(String, String)>::new());
    assert!(replaced["metadata"].get("managedFields").is_none());
}

#[test]
fn an_update_that_changes_nothing_keeps_managed_fields_as_they_were() {
    let mut created = configmap(json!({"a": "1"}));
    track_update(None, &mut created, "kubectl-create", None, T0);
    let mut same = created.clone();
    track_update(Some(&created), &mut same, "someone", None, T1);
    assert_eq!(same, created);
}

#[test]
fn managed_fields_sent_by_a_client_replace_or_reset_the_recorded_ones() {
    let mut created = configmap(json!({"a": "1"}));
    track_update(None, &mut created, "kubectl-create", None, T0);

    // `[{}]` clears them; the same request's changes are then recorded afresh.
    let mut reset = created.clone();
    reset["metadata"]["managedFields"] = json!([{}]);
    reset["data"]["b"] = json!("2");
    track_update(Some(&created), &mut reset, "editor", None, T1);
    assert_eq!(
        managers(&reset),
        [("editor".to_string(), "Update".to_string())]
    );
    assert_eq!(owned(&reset, "editor", "Update"), [".data.b"]);

    let mut cleared = created.clone();
    cleared["metadata"]["managedFields"] = json!([]);
    track_update(Some(&created), &mut cleared, "editor", None, T1);
    assert!(cleared["metadata"].get("managedFields").is_none());

    // A valid list is taken as the new record (this is how kubectl migrates client-side apply).
    let mut migrated = created.clone();
    migrated["metadata"]["managedFields"] = json!([{
        "manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "time": T0,
        "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:a": {}}}
    }]);
    track_update(Some(&created), &mut migrated, "kubectl", None, T1);
    assert_eq!(
        managers(&migrated),
        [("kubectl".to_string(), "Apply".to_string())]
    );

    // An invalid list, or any list sent to a subresource, is ignored.
    for subresource in [None, Some("status")] {
        let mut ignored = created.clone();
        ignored["metadata"]["managedFields"] = match subresource {
            None => json!([{"manager": "x"}]),
            Some(_) => json!([]),
        };
        track_update(Some(&created), &mut ignored, "editor", subresource, T1);
        assert_eq!(ignored, created);
    }
}

#[test]
fn updates_to_a_subresource_get_their_own_entry() {
    let live = as_stored(apply_as(None, &deployment(3, "nginx:1.25"), "kubectl", T0));
    let mut status = live.clone();
    status["status"] =
        json!({"replicas": 3, "conditions": [{"type": "Available", "status": "True"}]});
    track_update(
        Some(&live),
        &mut status,
        "kube-controller-manager",
        Some("status"),
        T1,
    );
    let entry = entry(&status, "kube-controller-manager", "Update").unwrap();
    assert_eq!(entry["subresource"], "status");
    assert_eq!(
        entry["fieldsV1"],
        json!({"f:status": {"f:conditions": {".": {}, "k:{\"type\":\"Available\"}": {
            ".": {}, "f:status": {}, "f:type": {}}}, "f:replicas": {}}})
    );
}

#[test]
fn ignored_fields_are_never_owned() {
    let manager = FieldManager::for_kind("Deployment").ignoring(&["status"]);
    let mut object = deployment(1, "a");
    object["status"] = json!({"replicas": 1});
    manager.track_update(
        None,
        &mut object,
        &UpdateOptions {
            manager: "m",
            subresource: None,
            now: T0,
        },
    );
    assert!(!owned(&object, "m", "Update")
        .iter()
        .any(|p| p.starts_with(".status")));
}

#[test]
fn kubectl_takes_over_fields_from_client_side_apply() {
    // An object managed by client-side `kubectl apply` until now.
    let mut original = deployment(3, "nginx:1.25");
    let annotation = serde_json::to_string(&original).unwrap();
    original["metadata"]["annotations"] =
        json!({"kubectl.kubernetes.io/last-applied-configuration": annotation});
    track_update(None, &mut original, "kubectl-client-side-apply", None, T0);
    let live = as_stored(original);

    // Other managers conflict with client-side apply...
    let conflicts = conflicts_of(apply(
        Some(&live),
        &deployment(4, "nginx:1.25"),
        "ci",
        false,
        T1,
    ));
    assert_eq!(
        conflicts[0].manager_description(),
        "\"kubectl-client-side-apply\" using apps/v1"
    );
    // ...kubectl's server-side apply takes the fields the annotation records, and keeps the
    // annotation current.
    let upgraded = apply(
        Some(&live),
        &deployment(4, "nginx:1.25"),
        "kubectl",
        false,
        T1,
    )
    .unwrap();
    assert_eq!(upgraded["spec"]["replicas"], 4);
    assert!(owned(&upgraded, "kubectl", "Apply").contains(&".spec.replicas".to_string()));
    let refreshed = upgraded["metadata"]["annotations"]
        ["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .unwrap();
    let refreshed: Value = serde_json::from_str(refreshed).unwrap();
    assert_eq!(refreshed["spec"]["replicas"], 4);
}

#[test]
fn invalid_configurations_are_refused() {
    let live = as_stored(apply_as(None, &deployment(3, "nginx:1.25"), "ci", T0));
    let invalid = |live: Option<&Value>, config: Value| match apply(live, &config, "ci", false, T1)
    {
        Err(ApplyError::Invalid(message)) => message,
        other => panic!("expected invalid, got {other:?}"),
    };
    assert_eq!(
        invalid(None, json!([1])),
        "the applied configuration must be an object"
    );
    assert_eq!(
        invalid(None, json!({"apiVersion": "v1", "metadata": {"name": "x"}})),
        "Object 'Kind' is missing in the applied configuration"
    );
    let mut with_managed = deployment(3, "x");
    with_managed["metadata"]["managedFields"] = json!([]);
    assert_eq!(
        invalid(None, with_managed),
        "metadata.managedFields must be nil"
    );
    let mut other_kind = deployment(3, "x");
    other_kind["kind"] = json!("StatefulSet");
    assert_eq!(
        invalid(Some(&live), other_kind),
        "the kind in the applied configuration (StatefulSet) does not match the object's (Deployment)"
    );
    let mut unnamed = deployment(3, "x");
    unnamed["spec"]["template"]["spec"]["containers"] = json!([{"image": "x"}]);
    assert!(invalid(None, unnamed).starts_with(".spec.template.spec.containers: element 0:"));
}

#[test]
fn the_default_manager_is_the_user_agent_prefix() {
    assert_eq!(
        default_manager("kubectl/v1.30.0 (linux/amd64) kubernetes/abc"),
        "kubectl"
    );
    assert_eq!(default_manager("python-requests/2.31"), "python-requests");
    assert_eq!(default_manager("Go-http-client/1.1"), "Go-http-client");
    assert_eq!(default_manager("odd\tagent"), "oddagent");
    assert_eq!(
        default_manager(&"x".repeat(300)).len(),
        FIELD_MANAGER_MAX_LENGTH
    );
    assert_eq!(default_manager(""), "");
}

#[test]
fn field_manager_names_are_validated() {
    assert!(validate_field_manager("", false).is_ok());
    assert_eq!(
        validate_field_manager("", true).unwrap_err(),
        "fieldManager: Required value: is required for apply patch"
    );
    assert!(validate_field_manager(&"x".repeat(129), false).is_err());
    assert!(validate_field_manager("bad\u{7}", false)
        .unwrap_err()
        .contains("U+0007"));
    assert!(validate_field_manager("kube-controller-manager", true).is_ok());
}

#[test]
fn an_object_written_before_tracking_is_owned_by_before_first_apply() {
    let untracked = as_stored(deployment(3, "nginx:1.25"));
    let conflicts = conflicts_of(apply(
        Some(&untracked),
        &deployment(5, "nginx:1.25"),
        "ci",
        false,
        T1,
    ));
    assert_eq!(
        ApplyError::Conflicts(conflicts).to_string(),
        "Apply failed with 1 conflict: conflict with \"before-first-apply\" using apps/v1: .spec.replicas"
    );
    // Agreeing with the existing values shares them.
    let shared = apply_as(Some(&untracked), &deployment(3, "nginx:1.25"), "ci", T1);
    assert!(owned(&shared, BEFORE_FIRST_APPLY_MANAGER, "Update")
        .contains(&".spec.replicas".to_string()));
    assert!(owned(&shared, "ci", "Apply").contains(&".spec.replicas".to_string()));
}

#[test]
fn nulling_another_managers_field_conflicts_and_unsets_it_when_forced() {
    let live = as_stored(apply_as(None, &deployment(3, "nginx:1.25"), "ci", T0));
    let nulled = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "nginx"}, "spec": {"replicas": null}
    });
    let conflicts = conflicts_of(apply(Some(&live), &nulled, "other", false, T1));
    assert_eq!(conflicts[0].path.to_string(), ".spec.replicas");
    let forced = apply(Some(&live), &nulled, "other", true, T1).unwrap();
    assert!(forced["spec"].get("replicas").is_none());
    assert!(!owned(&forced, "ci", "Apply").contains(&".spec.replicas".to_string()));
}

/// Applies, edits, conflicts and prunes on a container with `count` env items; returns how
/// long that took.
fn env_workout(count: usize) -> std::time::Duration {
    let with_env = |count: usize, value: &str| {
        let mut config = deployment(1, "app:1");
        let env: Vec<Value> = (0..count)
            .map(|i| json!({"name": format!("VAR_{i}"), "value": value}))
            .collect();
        config["spec"]["template"]["spec"]["containers"][0]["env"] = json!(env);
        config
    };
    let started = std::time::Instant::now();
    let live = as_stored(apply_as(None, &with_env(count, "a"), "ci", T0));
    let mut edited = live.clone();
    edited["spec"]["template"]["spec"]["containers"][0]["env"][7]["value"] = json!("edited");
    track_update(Some(&live), &mut edited, "kubectl-edit", None, T1);
    let conflicts = conflicts_of(apply(
        Some(&edited),
        &with_env(count, "b"),
        "other",
        false,
        T2,
    ));
    assert_eq!(conflicts.len(), count);
    let shrunk = apply(Some(&edited), &with_env(count / 2, "a"), "ci", true, T3).unwrap();
    let env = &shrunk["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(env.as_array().unwrap().len(), count / 2);
    assert!(entry(&shrunk, "kubectl-edit", "Update").is_none());
    started.elapsed()
}

#[test]
fn long_lists_are_handled_in_linear_time() {
    let small = env_workout(4_000);
    let large = env_workout(16_000);
    // Four times the items: about four times the work; quadratic work would be sixteen.
    assert!(
        large < small * 10,
        "4 000 items: {small:?}, 16 000 items: {large:?}"
    );
}
