//! The API server as real `kubectl` (1.27 and 1.33, the oldest and newest supported) sees it:
//! the kubeconfig `shoal server` writes works as is, health and version answer, anonymous
//! callers are refused, unknown paths get Kubernetes' NotFound status.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use shoal_e2e::server::{free_port, ShoalServer};
use tempfile::TempDir;

/// The kubectl binaries to test with; a missing one fails the test (never a silent skip).
fn kubectls() -> Vec<PathBuf> {
    ["kubectl.1.27", "kubectl.1.33"]
        .iter()
        .map(|name| {
            let candidates = [
                PathBuf::from("/usr/lib/google-cloud-sdk/bin").join(name),
                PathBuf::from("/usr/local/bin").join(name),
                PathBuf::from("/usr/bin").join(name),
            ];
            candidates
                .into_iter()
                .find(|p| p.exists())
                .unwrap_or_else(|| {
                    panic!("{name} not found: these tests need kubectl 1.27 and 1.33 installed")
                })
        })
        .collect()
}

/// A server with its data in a temporary directory (declared after the server, so the server
/// is killed before the directory is removed).
struct Cluster {
    _server: ShoalServer,
    _dir: TempDir,
    kubeconfig: PathBuf,
    port: u16,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = TempDir::new().expect("tempdir");
        let port = free_port().expect("free port");
        let server = ShoalServer::start(
            Path::new(env!("CARGO_BIN_EXE_shoal")),
            dir.path(),
            port,
            &[],
        )
        .expect("shoal server starts");
        let kubeconfig = server.kubeconfig();
        Cluster {
            _server: server,
            _dir: dir,
            kubeconfig,
            port,
        }
    }

    /// Stops the server (SIGTERM) and starts it again on the same data and port.
    fn restart(&mut self) {
        let data = self._dir.path().to_path_buf();
        let stopped = std::mem::replace(
            &mut self._server,
            ShoalServer::spawn(&mut Command::new("true")).expect("placeholder"),
        );
        stopped.stop().expect("server stops");
        self._server = ShoalServer::start(
            Path::new(env!("CARGO_BIN_EXE_shoal")),
            &data,
            self.port,
            &[],
        )
        .expect("shoal server restarts");
    }

    fn kubectl(&self, kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> Output {
        Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .env("HOME", self._dir.path()) // a private discovery cache
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn kubectl_reaches_the_api_with_the_written_kubeconfig() {
    let kubectls = kubectls();
    let cluster = Cluster::start();
    let written = std::fs::read_to_string(&cluster.kubeconfig).expect("kubeconfig written");
    assert!(written.contains(&format!("server: https://127.0.0.1:{}", cluster.port)));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cluster.kubeconfig)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    for kubectl in &kubectls {
        let name = kubectl.display();
        let out = cluster.kubectl(kubectl, &cluster.kubeconfig, &["version", "-o", "json"]);
        assert!(
            out.status.success(),
            "{name} version: {}",
            text(&out.stderr)
        );
        let version: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let server = &version["serverVersion"];
        assert_eq!(server["major"], "1", "{version}");
        assert!(
            server["gitVersion"]
                .as_str()
                .is_some_and(|v| v.contains("+shoal")),
            "{version}"
        );

        for path in ["/healthz", "/livez", "/readyz"] {
            let out = cluster.kubectl(kubectl, &cluster.kubeconfig, &["get", "--raw", path]);
            assert!(out.status.success(), "{name} {path}: {}", text(&out.stderr));
            assert_eq!(text(&out.stdout).trim(), "ok");
        }

        let out = cluster.kubectl(
            kubectl,
            &cluster.kubeconfig,
            &["get", "--raw", "/no/such/path"],
        );
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("NotFound"),
            "{name}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn anonymous_callers_get_only_health_and_version() {
    let cluster = Cluster::start();
    // kubectl asks for a password when it has no credentials, so talk HTTPS with curl,
    // verifying the server against the cluster CA but presenting no client certificate.
    let ca = cluster._dir.path().join("server/tls/server-ca.crt");
    let get = |path: &str| {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--cacert"])
            .arg(&ca)
            .arg(format!("https://127.0.0.1:{}{path}", cluster.port))
            .output()
            .expect("curl (installed by scripts/setup-debian.sh)");
        let body = text(&out.stdout);
        let (body, code) = body.rsplit_once('\n').expect("status code line");
        (code.to_string(), body.to_string())
    };
    let (code, body) = get("/version");
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("gitVersion"));
    assert_eq!(get("/healthz"), ("200".to_string(), "ok".to_string()));
    for path in ["/api", "/apis", "/api/v1/namespaces"] {
        let (code, body) = get(path);
        assert_eq!(code, "401", "{path}: {body}");
        let status: serde_json::Value = serde_json::from_str(&body).expect("Status JSON");
        assert_eq!(
            (status["kind"].as_str(), status["reason"].as_str()),
            (Some("Status"), Some("Unauthorized"))
        );
    }
}

const MANIFEST: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web
  namespace: demo
  labels: {app: web}
data:
  greeting: hello
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: busybox
"#;

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn kubectl_manages_resources() {
    let kubectls = kubectls();
    let cluster = Cluster::start();
    let manifest = cluster._dir.path().join("manifest.yaml");
    std::fs::write(&manifest, MANIFEST).expect("manifest");
    let kc = cluster.kubeconfig.clone();
    for kubectl in &kubectls {
        let k = |args: &[&str]| cluster.kubectl(kubectl, &kc, args);
        let m = manifest.to_str().expect("path");
        let name = kubectl.display().to_string();

        // The system namespaces exist from the start.
        let namespaces = ok(k(&["get", "namespaces", "-o", "name"]), "get ns");
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            assert!(
                namespaces.contains(&format!("namespace/{ns}")),
                "{name}: {namespaces}"
            );
        }

        // Watch the namespace's config maps while they change.
        let mut watcher = Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(&kc)
            .args(["get", "configmaps", "-n", "demo", "-w", "-o", "name"])
            .env("HOME", cluster._dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl get -w");

        let applied = ok(k(&["apply", "-f", m]), "apply");
        assert!(
            applied.contains("configmap/web created")
                && applied.contains("deployment.apps/web created"),
            "{applied}"
        );
        let again = ok(k(&["apply", "-f", m]), "apply again");
        assert!(again.contains("configmap/web unchanged"), "{again}");

        let table = ok(k(&["get", "configmaps", "-n", "demo"]), "get table");
        assert!(
            table.starts_with("NAME") && table.contains("AGE") && table.contains("web"),
            "{table}"
        );
        let greeting = ok(
            k(&[
                "get",
                "cm",
                "web",
                "-n",
                "demo",
                "-o",
                "jsonpath={.data.greeting}",
            ]),
            "jsonpath",
        );
        assert_eq!(greeting, "hello");
        let yaml = ok(k(&["get", "cm", "web", "-n", "demo", "-o", "yaml"]), "yaml");
        assert!(
            yaml.contains("resourceVersion:")
                && yaml.contains("uid:")
                && yaml.contains("creationTimestamp:"),
            "{yaml}"
        );

        ok(
            k(&["label", "cm", "web", "-n", "demo", "tier=front"]),
            "label",
        );
        ok(
            k(&["annotate", "cm", "web", "-n", "demo", "note=hi"]),
            "annotate",
        );
        let selected = ok(
            k(&[
                "get",
                "cm",
                "-n",
                "demo",
                "-l",
                "app=web,tier in (front)",
                "-o",
                "name",
            ]),
            "selector",
        );
        assert_eq!(selected.trim(), "configmap/web");
        let none = ok(
            k(&["get", "cm", "-n", "demo", "-l", "tier=back", "-o", "name"]),
            "selector",
        );
        assert!(none.trim().is_empty(), "{none}");

        ok(
            k(&["scale", "deployment", "web", "-n", "demo", "--replicas=3"]),
            "scale",
        );
        let replicas = ok(
            k(&[
                "get",
                "deploy",
                "web",
                "-n",
                "demo",
                "-o",
                "jsonpath={.spec.replicas}",
            ]),
            "replicas",
        );
        assert_eq!(replicas, "3");
        let generation = ok(
            k(&[
                "get",
                "deploy",
                "web",
                "-n",
                "demo",
                "-o",
                "jsonpath={.metadata.generation}",
            ]),
            "generation",
        );
        assert_eq!(generation, "2", "scaling changes the spec");

        let all = ok(k(&["get", "all", "-n", "demo", "-o", "name"]), "get all");
        assert!(all.contains("deployment.apps/web"), "{all}");
        let resources = ok(k(&["api-resources", "-o", "name"]), "api-resources");
        for r in [
            "pods",
            "deployments.apps",
            "leases.coordination.k8s.io",
            "customresourcedefinitions.apiextensions.k8s.io",
        ] {
            assert!(resources.lines().any(|l| l == r), "{name}: {r} missing");
        }

        // Errors come back as Kubernetes statuses.
        let dup = k(&["create", "-f", m]);
        assert!(
            !dup.status.success() && text(&dup.stderr).contains("AlreadyExists"),
            "{}",
            text(&dup.stderr)
        );
        // Default validation is left to the server: unknown fields are refused (Strict),
        // warned about (Warn), or dropped (Ignore).
        let typo = cluster._dir.path().join("typo.yaml");
        std::fs::write(&typo, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo, namespace: demo}\ndataa: {a: b}\n").expect("typo");
        let typo = typo.to_str().expect("path");
        let strict = k(&["apply", "-f", typo]);
        assert!(
            !strict.status.success() && text(&strict.stderr).contains(r#"unknown field "dataa""#),
            "{name}: {}",
            text(&strict.stderr)
        );
        let warned = k(&["apply", "--validate=warn", "-f", typo]);
        assert!(
            warned.status.success() && text(&warned.stderr).contains(r#"unknown field "dataa""#),
            "{name}: {}",
            text(&warned.stderr)
        );
        let stored = ok(
            k(&["get", "cm", "typo", "-n", "demo", "-o", "json"]),
            "typo stored",
        );
        let stored: serde_json::Value = serde_json::from_str(&stored).expect("json");
        assert!(
            stored.get("dataa").is_none(),
            "unknown fields are never stored: {stored}"
        );
        ok(k(&["delete", "cm", "typo", "-n", "demo"]), "delete typo");

        let missing = k(&["get", "cm", "nope", "-n", "demo"]);
        assert!(
            text(&missing.stderr).contains("configmaps \"nope\" not found"),
            "{}",
            text(&missing.stderr)
        );
        let bad_name = k(&["create", "namespace", "Bad_Name"]);
        assert!(!bad_name.status.success());

        ok(k(&["delete", "cm", "web", "-n", "demo"]), "delete");
        // Deleting the namespace deletes what is in it.
        ok(k(&["delete", "namespace", "demo"]), "delete ns");
        let gone = k(&["get", "deploy", "web", "-n", "demo"]);
        assert!(!gone.status.success());
        let forbidden = k(&["delete", "namespace", "default"]);
        assert!(
            text(&forbidden.stderr).contains("Forbidden"),
            "{}",
            text(&forbidden.stderr)
        );

        let _ = watcher.kill();
        let watched = watcher.wait_with_output().expect("watch output");
        let watched = text(&watched.stdout);
        assert!(
            watched.lines().filter(|l| *l == "configmap/web").count() >= 3,
            "{name} get -w saw: {watched:?}"
        );
    }
}

/// One request with curl and the admin certificate: the status code and the JSON body.
fn api(
    cluster: &Cluster,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    api_at(
        cluster._dir.path(),
        cluster.port,
        method,
        path,
        content_type,
        body,
    )
}

/// [`api`] for a server with data in `dir` listening on `port`.
fn api_at(
    dir: &Path,
    port: u16,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let tls = dir.join("server/tls");
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-X", method, "--cacert"])
        .arg(tls.join("server-ca.crt"))
        .arg("--cert")
        .arg(tls.join("client-admin.crt"))
        .arg("--key")
        .arg(tls.join("client-admin.key"))
        .args([
            "-H",
            &format!("Content-Type: {content_type}"),
            "--data-binary",
            body,
        ])
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl");
    let all = text(&out.stdout);
    let (body, code) = all.rsplit_once('\n').expect("code");
    (
        code.parse().expect("code"),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// Raw requests (curl with the admin certificate) for what kubectl hides: status codes and
/// bodies of errors, stale updates, watch from a resourceVersion.
#[test]
fn api_errors_are_kubernetes_statuses() {
    let cluster = Cluster::start();
    let tls = cluster._dir.path().join("server/tls");
    let base = format!("https://127.0.0.1:{}", cluster.port);
    let curl = |method: &str, path: &str, content_type: &str, body: &str| {
        api(&cluster, method, path, content_type, body)
    };
    let json = "application/json";
    let cms = "/api/v1/namespaces/default/configmaps";

    let (code, created) = curl(
        "POST",
        cms,
        json,
        r#"{"metadata":{"name":"a"},"data":{"k":"v"}}"#,
    );
    assert_eq!(code, 201, "{created}");
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();

    let cases: Vec<(&str, String, &str, String, u16, &str)> = vec![
        (
            "POST",
            cms.into(),
            json,
            "{not json".into(),
            400,
            "BadRequest",
        ),
        (
            "POST",
            cms.into(),
            json,
            r#"{"metadata":{"name":"Not_Valid"}}"#.into(),
            422,
            "Invalid",
        ),
        (
            "POST",
            cms.into(),
            json,
            r#"{"kind":"Secret","metadata":{"name":"x"}}"#.into(),
            422,
            "Invalid",
        ),
        (
            "POST",
            cms.into(),
            json,
            r#"{"metadata":{"name":"a"}}"#.into(),
            409,
            "AlreadyExists",
        ),
        (
            "POST",
            "/api/v1/namespaces/nosuch/configmaps".into(),
            json,
            r#"{"metadata":{"name":"x"}}"#.into(),
            404,
            "NotFound",
        ),
        (
            "POST",
            cms.into(),
            "application/vnd.kubernetes.protobuf",
            "k8s".into(),
            400,
            "BadRequest",
        ),
        (
            "POST",
            cms.into(),
            "application/x-www-form-urlencoded",
            "a=b".into(),
            415,
            "UnsupportedMediaType",
        ),
        (
            "GET",
            format!("{cms}/nosuch"),
            json,
            String::new(),
            404,
            "NotFound",
        ),
        (
            "GET",
            format!("{cms}?labelSelector=a%20in%20b"),
            json,
            String::new(),
            400,
            "BadRequest",
        ),
        (
            "GET",
            format!("{cms}?fieldSelector=spec.nodeName=x"),
            json,
            String::new(),
            400,
            "BadRequest",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/nosuchthings".into(),
            json,
            String::new(),
            404,
            "NotFound",
        ),
        (
            "PATCH",
            format!("{cms}/a"),
            "application/apply-patch+yaml",
            "{}".into(),
            422,
            "Invalid",
        ),
        (
            "PATCH",
            format!("{cms}/a?fieldManager=test"),
            "application/apply-patch+yaml",
            r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"a"}}"#.into(),
            400,
            "BadRequest",
        ),
        (
            "PATCH",
            format!("{cms}/a"),
            "text/plain",
            "{}".into(),
            415,
            "UnsupportedMediaType",
        ),
        (
            "PATCH",
            format!("{cms}/a"),
            "application/json-patch+json",
            r#"[{"op":"remove","path":"/nope"}]"#.into(),
            422,
            "Invalid",
        ),
        (
            "DELETE",
            "/api/v1/namespaces/kube-system".into(),
            json,
            String::new(),
            403,
            "Forbidden",
        ),
    ];
    for (method, path, content_type, body, want_code, want_reason) in cases {
        let (code, status) = curl(method, &path, content_type, &body);
        assert_eq!(
            (code, status["reason"].as_str()),
            (want_code, Some(want_reason)),
            "{method} {path}: {status}"
        );
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["code"], want_code);
    }

    // An update carrying a stale resourceVersion conflicts; the stored object is unchanged.
    let (code, _) = curl(
        "PUT",
        &format!("{cms}/a"),
        json,
        &format!(r#"{{"metadata":{{"name":"a","resourceVersion":"{rv}"}},"data":{{"k":"v2"}}}}"#),
    );
    assert_eq!(code, 200);
    let (code, status) = curl(
        "PUT",
        &format!("{cms}/a"),
        json,
        &format!(r#"{{"metadata":{{"name":"a","resourceVersion":"{rv}"}},"data":{{"k":"v3"}}}}"#),
    );
    assert_eq!(
        (code, status["reason"].as_str()),
        (409, Some("Conflict")),
        "{status}"
    );
    let (_, current) = curl("GET", &format!("{cms}/a"), json, "");
    assert_eq!(current["data"]["k"], "v2");

    // A list page carries a continue token; the next page continues at the same revision.
    for i in 0..5 {
        curl(
            "POST",
            cms,
            json,
            &format!(r#"{{"metadata":{{"name":"p{i}"}}}}"#),
        );
    }
    let (_, page) = curl("GET", &format!("{cms}?limit=2"), json, "");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    let token = page["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_string();
    let (_, next) = curl("GET", &format!("{cms}?limit=10&continue={token}"), json, "");
    // Both pages hold a and p0..p4, besides the root CA publisher's kube-root-ca.crt.
    let names: Vec<&str> = [&page, &next]
        .iter()
        .flat_map(|p| p["items"].as_array().into_iter().flatten())
        .filter_map(|cm| cm["metadata"]["name"].as_str())
        .filter(|name| *name != "kube-root-ca.crt")
        .collect();
    assert_eq!(names.len(), 6, "{names:?}");
    assert_eq!(
        next["metadata"]["resourceVersion"],
        page["metadata"]["resourceVersion"]
    );
    assert_eq!(page["kind"], "ConfigMapList");

    // Watch from a resourceVersion: exactly the later changes; a bookmark ends the stream.
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "--cacert"])
        .arg(tls.join("server-ca.crt"))
        .arg("--cert")
        .arg(tls.join("client-admin.crt"))
        .arg("--key")
        .arg(tls.join("client-admin.key"))
        .arg(format!(
            "{base}{cms}?watch=true&resourceVersion={rv}&timeoutSeconds=1"
        ))
        .output()
        .expect("curl watch");
    // The server's root-CA publisher may create `kube-root-ca.crt` at any moment after start,
    // as in Kubernetes: its event is not one of this test's changes.
    let events: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("event line"))
        .filter(|e| e["object"]["metadata"]["name"] != "kube-root-ca.crt")
        .collect();
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        types,
        ["MODIFIED", "ADDED", "ADDED", "ADDED", "ADDED", "ADDED"],
        "{events:?}"
    );
    assert_eq!(events[0]["object"]["data"]["k"], "v2");
}

/// The official Python client (installed by scripts/setup-debian.sh) runs its checks against a
/// live server: list, create, watch from a resourceVersion, patch, conflict, delete, scale.
#[test]
fn python_client_works_unchanged() {
    let cluster = Cluster::start();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client_test.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&cluster.kubeconfig)
        .output()
        .expect("python3 (with the kubernetes package, from scripts/setup-debian.sh)");
    assert!(
        out.status.success(),
        "python client failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("python client: ok"));
}

#[test]
fn deletion_honours_finalizers_propagation_and_grace() {
    let cluster = Cluster::start();
    let json = "application/json";
    let merge = "application/merge-patch+json";
    let cms = "/api/v1/namespaces/default/configmaps";

    // A finalizer holds the object, marked, until it is removed.
    let (code, _) = api(
        &cluster,
        "POST",
        cms,
        json,
        r#"{"metadata":{"name":"held","finalizers":["example.com/hold"]}}"#,
    );
    assert_eq!(code, 201);
    let (code, marked) = api(&cluster, "DELETE", &format!("{cms}/held"), json, "");
    assert_eq!(code, 202, "{marked}");
    assert!(
        marked["metadata"]["deletionTimestamp"].is_string(),
        "{marked}"
    );
    let (code, still) = api(&cluster, "GET", &format!("{cms}/held"), json, "");
    assert_eq!(code, 200);
    assert_eq!(
        still["metadata"]["deletionTimestamp"],
        marked["metadata"]["deletionTimestamp"]
    );
    let (code, refused) = api(
        &cluster,
        "PATCH",
        &format!("{cms}/held"),
        merge,
        r#"{"metadata":{"finalizers":["example.com/hold","example.com/more"]}}"#,
    );
    assert_eq!(
        (code, refused["reason"].as_str()),
        (422, Some("Invalid")),
        "{refused}"
    );
    let (code, _) = api(
        &cluster,
        "PATCH",
        &format!("{cms}/held"),
        merge,
        r#"{"metadata":{"finalizers":null}}"#,
    );
    assert_eq!(code, 200);
    let (code, _) = api(&cluster, "GET", &format!("{cms}/held"), json, "");
    assert_eq!(
        code, 404,
        "the last finalizer's removal completes the deletion"
    );

    // Foreground and Orphan propagation leave their finalizers for the garbage collector.
    let deployments = "/apis/apps/v1/namespaces/default/deployments";
    for (name, policy, finalizer) in [
        ("fg", "Foreground", "foregroundDeletion"),
        ("or", "Orphan", "orphan"),
    ] {
        let (code, _) = api(
            &cluster,
            "POST",
            deployments,
            json,
            &format!(r#"{{"metadata":{{"name":"{name}"}},"spec":{{"replicas":1}}}}"#),
        );
        assert_eq!(code, 201);
        let (code, marked) = api(
            &cluster,
            "DELETE",
            &format!("{deployments}/{name}"),
            json,
            &format!(r#"{{"propagationPolicy":"{policy}"}}"#),
        );
        assert_eq!(code, 202, "{marked}");
        assert_eq!(
            marked["metadata"]["finalizers"],
            serde_json::json!([finalizer])
        );
    }
    // (Not against fg or or: the garbage collector may already have let them go.)
    let (code, _) = api(
        &cluster,
        "POST",
        cms,
        json,
        r#"{"metadata":{"name":"sideways"}}"#,
    );
    assert_eq!(code, 201);
    let (code, status) = api(
        &cluster,
        "DELETE",
        &format!("{cms}/sideways"),
        json,
        r#"{"propagationPolicy":"Sideways"}"#,
    );
    assert_eq!((code, status["reason"].as_str()), (400, Some("BadRequest")));

    // A pod bound to a node gets its grace period; the node's delete with grace 0 removes it.
    let pods = "/api/v1/namespaces/default/pods";
    let (code, _) = api(
        &cluster,
        "POST",
        pods,
        json,
        r#"{"metadata":{"name":"p"},"spec":{"nodeName":"n1","terminationGracePeriodSeconds":20,"containers":[{"name":"c","image":"busybox"}]}}"#,
    );
    assert_eq!(code, 201);
    let (code, terminating) = api(&cluster, "DELETE", &format!("{pods}/p"), json, "");
    assert_eq!(code, 202);
    assert_eq!(terminating["metadata"]["deletionGracePeriodSeconds"], 20);
    let (code, _) = api(
        &cluster,
        "DELETE",
        &format!("{pods}/p"),
        json,
        r#"{"gracePeriodSeconds":0}"#,
    );
    assert_eq!(code, 200);
    let (code, _) = api(&cluster, "GET", &format!("{pods}/p"), json, "");
    assert_eq!(code, 404);
    // An unbound pod goes at once.
    let (code, _) = api(
        &cluster,
        "POST",
        pods,
        json,
        r#"{"metadata":{"name":"q"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}"#,
    );
    assert_eq!(code, 201);
    let (code, _) = api(&cluster, "DELETE", &format!("{pods}/q"), json, "");
    assert_eq!(code, 200);
}

#[test]
fn created_objects_carry_kubernetes_defaults() {
    let cluster = Cluster::start();
    let json = "application/json";
    let (code, deploy) = api(
        &cluster,
        "POST",
        "/apis/apps/v1/namespaces/default/deployments",
        json,
        r#"{"metadata":{"name":"d"},"spec":{"selector":{"matchLabels":{"a":"b"}},"template":{"metadata":{"labels":{"a":"b"}},"spec":{"containers":[{"name":"c","image":"busybox"}]}}}}"#,
    );
    assert_eq!(code, 201, "{deploy}");
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert_eq!(
        deploy["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
        "25%"
    );
    assert_eq!(
        deploy["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "Always"
    );
    let (code, svc) = api(
        &cluster,
        "POST",
        "/api/v1/namespaces/default/services",
        json,
        r#"{"metadata":{"name":"s"},"spec":{"selector":{"a":"b"},"ports":[{"port":80}]}}"#,
    );
    assert_eq!(code, 201, "{svc}");
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
    let (code, pod) = api(
        &cluster,
        "POST",
        "/api/v1/namespaces/default/pods",
        json,
        r#"{"metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"busybox:1.36"}]}}"#,
    );
    assert_eq!(code, 201, "{pod}");
    assert_eq!(pod["status"]["phase"], "Pending");
    assert_eq!(pod["spec"]["schedulerName"], "default-scheduler");
    assert_eq!(
        pod["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
}

#[test]
fn pods_are_bound_through_the_binding_subresource() {
    let cluster = Cluster::start();
    let json = "application/json";
    let pods = "/api/v1/namespaces/default/pods";
    let (code, _) = api(
        &cluster,
        "POST",
        pods,
        json,
        r#"{"metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}"#,
    );
    assert_eq!(code, 201);
    let binding = r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p"},"target":{"apiVersion":"v1","kind":"Node","name":"node-1"}}"#;
    let (code, status) = api(
        &cluster,
        "POST",
        &format!("{pods}/p/binding"),
        json,
        binding,
    );
    assert_eq!(code, 201, "{status}");
    let (_, pod) = api(&cluster, "GET", &format!("{pods}/p"), json, "");
    assert_eq!(pod["spec"]["nodeName"], "node-1");
    assert_eq!(pod["status"]["conditions"][0]["type"], "PodScheduled");
    let (code, status) = api(
        &cluster,
        "POST",
        &format!("{pods}/p/binding"),
        json,
        binding,
    );
    assert_eq!(
        (code, status["reason"].as_str()),
        (409, Some("Conflict")),
        "{status}"
    );
    let (code, _) = api(
        &cluster,
        "POST",
        &format!("{pods}/nope/binding"),
        json,
        binding,
    );
    assert_eq!(code, 404);
    // Pods scheduled to a node are found by field selector, as agents list them.
    let (_, list) = api(
        &cluster,
        "GET",
        &format!("{pods}?fieldSelector=spec.nodeName%3Dnode-1"),
        json,
        "",
    );
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
}

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget, shortNames: [wg]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
          status:
            type: object
            properties:
              ready: {type: boolean}
"#;

#[test]
fn custom_resources_are_served_from_their_definitions() {
    let kubectls = kubectls();
    let cluster = Cluster::start();
    let dir = cluster._dir.path();
    std::fs::write(dir.join("crd.yaml"), CRD).expect("crd");
    std::fs::write(dir.join("good.yaml"), "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3, unknown: x}\n").expect("good");
    std::fs::write(
        dir.join("bad.yaml"),
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: 0}\n",
    )
    .expect("bad");
    let path = |f: &str| dir.join(f).to_str().expect("path").to_string();
    for kubectl in &kubectls {
        let k = |args: &[&str]| cluster.kubectl(kubectl, &cluster.kubeconfig, args);
        ok(k(&["apply", "-f", &path("crd.yaml")]), "apply crd");
        ok(
            k(&[
                "wait",
                "--for",
                "condition=established",
                "crd/widgets.example.com",
                "--timeout=20s",
            ]),
            "wait established",
        );
        ok(k(&["apply", "-f", &path("good.yaml")]), "apply widget");
        let table = ok(k(&["get", "widgets"]), "get table");
        let header: Vec<&str> = table
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(header, ["NAME", "SIZE", "AGE"], "{table}");
        assert!(
            table
                .lines()
                .nth(1)
                .is_some_and(|row| row.starts_with("w1") && row.contains(" 3 ")),
            "{table}"
        );
        let spec = ok(
            k(&["get", "wg", "w1", "-o", "jsonpath={.spec}"]),
            "get by short name",
        );
        assert_eq!(spec, r#"{"size":3}"#, "unknown fields are pruned");
        let bad = k(&["apply", "-f", &path("bad.yaml")]);
        assert!(!bad.status.success());
        assert!(
            text(&bad.stderr).contains("spec.size"),
            "{}",
            text(&bad.stderr)
        );
        let resources = ok(
            k(&["api-resources", "--api-group=example.com", "-o", "name"]),
            "api-resources",
        );
        assert_eq!(resources.trim(), "widgets.example.com");

        // The status subresource is separate from the main resource.
        let (code, _) = api(
            &cluster,
            "PATCH",
            "/apis/example.com/v1/namespaces/default/widgets/w1/status",
            "application/merge-patch+json",
            r#"{"status":{"ready":true},"spec":{"size":9}}"#,
        );
        assert_eq!(code, 200);
        let (_, widget) = api(
            &cluster,
            "GET",
            "/apis/example.com/v1/namespaces/default/widgets/w1",
            "application/json",
            "",
        );
        assert_eq!(
            (
                widget["status"]["ready"].as_bool(),
                widget["spec"]["size"].as_i64()
            ),
            (Some(true), Some(3))
        );

        // Deleting the definition stops serving the kind and deletes its objects.
        ok(k(&["delete", "crd", "widgets.example.com"]), "delete crd");
        let (code, _) = api(
            &cluster,
            "GET",
            "/apis/example.com/v1/namespaces/default/widgets",
            "application/json",
            "",
        );
        assert_eq!(code, 404);
        ok(k(&["apply", "-f", &path("crd.yaml")]), "re-create crd");
        ok(
            k(&[
                "wait",
                "--for",
                "condition=established",
                "crd/widgets.example.com",
                "--timeout=20s",
            ]),
            "wait established",
        );
        let (_, list) = api(
            &cluster,
            "GET",
            "/apis/example.com/v1/namespaces/default/widgets",
            "application/json",
            "",
        );
        assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");
        ok(k(&["delete", "crd", "widgets.example.com"]), "clean up");
    }
}

const SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
"#;

const GADGET_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {kind: Gadget, plural: gadgets, singular: gadget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        description: A gadget of some size.
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, description: How big the gadget is.}
"#;

const GADGET: &str = r#"apiVersion: example.com/v1
kind: Gadget
metadata: {name: g1, namespace: demo}
spec: {size: 2}
"#;

/// The rest of kubectl's everyday commands: one manifest with every kind of document,
/// `explain`, `describe`, `edit`, `diff` and `-o wide`.
#[test]
fn kubectl_applies_explains_describes_edits_and_diffs() {
    for kubectl in &kubectls() {
        let cluster = Cluster::start();
        let dir = cluster._dir.path();
        let k = |args: &[&str]| cluster.kubectl(kubectl, &cluster.kubeconfig, args);
        let name = kubectl.display().to_string();
        let all = dir.join("all.yaml");
        std::fs::write(
            &all,
            format!("{MANIFEST}---\n{SERVICE}---\n{GADGET_CRD}---\n{GADGET}"),
        )
        .expect("manifest");
        let all = all.to_str().expect("path");

        // kubectl maps every document before applying any, so the Gadget cannot be mapped
        // until its CRD exists: the first pass fails on it (as it does against Kubernetes),
        // the second applies it.
        let first = k(&["apply", "-f", all]);
        assert!(
            text(&first.stdout).contains(
                "customresourcedefinition.apiextensions.k8s.io/gadgets.example.com created"
            ),
            "{name}: {}{}",
            text(&first.stdout),
            text(&first.stderr)
        );
        ok(
            k(&[
                "wait",
                "--for=condition=established",
                "crd/gadgets.example.com",
                "--timeout=20s",
            ]),
            "wait established",
        );
        let second = ok(k(&["apply", "-f", all]), "apply again");
        assert!(
            second.contains("gadget.example.com/g1 created")
                && second.contains("service/web unchanged")
                && second.contains("deployment.apps/web unchanged"),
            "{name}: {second}"
        );

        // Wide tables add kubectl's extra columns.
        let wide = ok(
            k(&["get", "svc", "web", "-n", "demo", "-o", "wide"]),
            "wide",
        );
        let header: Vec<&str> = wide
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            [
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "AGE",
                "SELECTOR"
            ],
            "{name}: {wide}"
        );
        assert!(wide.contains("app=web"), "{name}: {wide}");

        // explain reads the published schemas: built-in kinds and CRDs.
        let explained = ok(k(&["explain", "deployment.spec.replicas"]), "explain");
        assert!(
            explained.contains("replicas") && explained.contains("Number of desired pods"),
            "{name}: {explained}"
        );
        let explained = ok(k(&["explain", "gadgets.spec.size"]), "explain crd");
        assert!(
            explained.contains("<integer>") && explained.contains("How big the gadget is."),
            "{name}: {explained}"
        );
        let explained = ok(k(&["explain", "gadgets"]), "explain crd kind");
        assert!(
            explained.contains("A gadget of some size."),
            "{name}: {explained}"
        );
        // The same from the Swagger 2.0 document, which kubectl reads as gnostic protobuf.
        let v2 = |what: &str| {
            ok(
                k(&["explain", "--output=plaintext-openapiv2", what]),
                "explain v2",
            )
        };
        let explained = v2("deployment.spec");
        assert!(
            explained.contains("replicas") && explained.contains("Number of desired pods"),
            "{name}: {explained}"
        );
        let explained = v2("gadgets.spec.size");
        assert!(
            explained.contains("<integer>") && explained.contains("How big the gadget is."),
            "{name}: {explained}"
        );

        // describe shows an object and what refers to it.
        let described = ok(
            k(&["describe", "deployment", "web", "-n", "demo"]),
            "describe deploy",
        );
        for line in [
            "Name:",
            "Namespace:",
            "Selector:",
            "Replicas:",
            "StrategyType:",
        ] {
            assert!(
                described.contains(line),
                "{name}: {line} missing in {described}"
            );
        }
        let described = ok(k(&["describe", "svc", "web", "-n", "demo"]), "describe svc");
        assert!(
            described.contains("Selector:") && described.contains("app=web"),
            "{name}: {described}"
        );
        let described = ok(k(&["describe", "cm", "web", "-n", "demo"]), "describe cm");
        assert!(described.contains("greeting"), "{name}: {described}");

        // diff against the live objects: exit 1 with a unified diff when they differ, 0 when not.
        let unchanged = k(&["diff", "-f", all]);
        assert_eq!(
            unchanged.status.code(),
            Some(0),
            "{name}: {}{}",
            text(&unchanged.stdout),
            text(&unchanged.stderr)
        );
        let changed_file = dir.join("changed.yaml");
        std::fs::write(
            &changed_file,
            MANIFEST.replace("greeting: hello", "greeting: bye"),
        )
        .expect("changed");
        let changed = k(&["diff", "-f", changed_file.to_str().expect("path")]);
        assert_eq!(
            changed.status.code(),
            Some(1),
            "{name}: {}",
            text(&changed.stderr)
        );
        let diff = text(&changed.stdout);
        assert!(
            diff.contains("-  greeting: hello") && diff.contains("+  greeting: bye"),
            "{name}: {diff}"
        );
        let live = ok(
            k(&[
                "get",
                "cm",
                "web",
                "-n",
                "demo",
                "-o",
                "jsonpath={.data.greeting}",
            ]),
            "get",
        );
        assert_eq!(live, "hello", "diff must not change anything");

        // edit: kubectl runs the editor on the object and patches in what changed.
        let edited = Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .args(["edit", "cm", "web", "-n", "demo"])
            .env("HOME", dir)
            .env(
                "KUBE_EDITOR",
                "sed -i s/greeting:.hello/greeting:\\ edited/",
            )
            .stdin(Stdio::null())
            .output()
            .expect("kubectl edit");
        let edited = ok(edited, "edit");
        assert!(edited.contains("configmap/web edited"), "{name}: {edited}");
        let live = ok(
            k(&[
                "get",
                "cm",
                "web",
                "-n",
                "demo",
                "-o",
                "jsonpath={.data.greeting}",
            ]),
            "get",
        );
        assert_eq!(live, "edited", "{name}");
    }
}

/// kubectl's typed `create` subcommands: kubectl 1.31+ sends their bodies as Kubernetes
/// protobuf, 1.27 as JSON; both must create the same objects.
#[test]
fn typed_create_commands_work_in_protobuf_and_json() {
    for kubectl in &kubectls() {
        let cluster = Cluster::start();
        let k = |args: &[&str]| cluster.kubectl(kubectl, &cluster.kubeconfig, args);
        let name = kubectl.display().to_string();
        ok(k(&["create", "namespace", "typed"]), "create namespace");
        let n = ["-n", "typed"];
        let created = [
            vec![
                "create",
                "configmap",
                "settings",
                "--from-literal=a=1",
                "--from-literal=b=2",
            ],
            vec![
                "create",
                "secret",
                "generic",
                "creds",
                "--from-literal=password=s3cret",
            ],
            vec![
                "create",
                "deployment",
                "web",
                "--image=busybox",
                "--replicas=3",
                "--port=80",
            ],
            vec!["create", "service", "clusterip", "web", "--tcp=80:8080"],
            vec!["create", "serviceaccount", "robot"],
            vec!["create", "job", "once", "--image=busybox"],
            vec![
                "create",
                "cronjob",
                "nightly",
                "--image=busybox",
                "--schedule=0 3 * * *",
            ],
            vec!["create", "role", "reader", "--verb=get", "--resource=pods"],
            vec![
                "create",
                "rolebinding",
                "readers",
                "--role=reader",
                "--serviceaccount=typed:robot",
            ],
        ];
        for args in created {
            let args: Vec<&str> = args.into_iter().chain(n).collect();
            ok(k(&args), &format!("{name}: {args:?}"));
        }
        let get = |what: &str, path: &str| {
            ok(
                k(&[
                    "get",
                    what,
                    "-n",
                    "typed",
                    "-o",
                    &format!("jsonpath={path}"),
                ]),
                what,
            )
        };
        assert_eq!(get("cm/settings", "{.data.a}{.data.b}"), "12", "{name}");
        assert_eq!(
            get("secret/creds", "{.data.password}"),
            "czNjcmV0",
            "{name}"
        );
        assert_eq!(
            get("deploy/web", "{.spec.replicas} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort}"),
            "3 busybox 80",
            "{name}"
        );
        assert_eq!(
            get(
                "svc/web",
                "{.spec.ports[0].port} {.spec.ports[0].targetPort} {.spec.selector.app}"
            ),
            "80 8080 web",
            "{name}"
        );
        assert_eq!(
            get("cronjob/nightly", "{.spec.schedule}"),
            "0 3 * * *",
            "{name}"
        );
        assert_eq!(
            get(
                "role/reader",
                "{.rules[0].verbs[0]} {.rules[0].resources[0]}"
            ),
            "get pods",
            "{name}"
        );
        assert_eq!(
            get("rolebinding/readers", "{.subjects[0].name}"),
            "robot",
            "{name}"
        );
        // A bad name is refused with the Status kubectl shows, whatever the encoding.
        let bad = k(&["create", "configmap", "Bad_Name", "-n", "typed"]);
        assert!(
            !bad.status.success() && text(&bad.stderr).contains("Invalid value"),
            "{name}: {}",
            text(&bad.stderr)
        );
    }
}

/// Services get their ClusterIP and NodePorts when they are created: distinct under concurrent
/// creates, chosen ones honoured once, freed on deletion, kept across restarts; and the
/// `default/kubernetes` Service points at the server.
#[test]
fn services_get_addresses_that_are_never_shared() {
    let mut cluster = Cluster::start();
    let get = |cluster: &Cluster, path: &str| api(cluster, "GET", path, "application/json", "").1;
    let kubernetes = get(&cluster, "/api/v1/namespaces/default/services/kubernetes");
    assert_eq!(kubernetes["spec"]["clusterIP"], "10.43.0.1", "{kubernetes}");
    assert_eq!(kubernetes["spec"]["ports"][0]["port"], 443);
    let endpoints = get(&cluster, "/api/v1/namespaces/default/endpoints/kubernetes");
    assert_eq!(
        endpoints["subsets"][0]["addresses"][0]["ip"], "127.0.0.1",
        "{endpoints}"
    );
    assert_eq!(endpoints["subsets"][0]["ports"][0]["port"], cluster.port);

    let service = |name: &str, spec: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}"}},"spec":{spec}}}"#
        )
    };
    let create = |cluster: &Cluster, name: &str, spec: &str| {
        api(
            cluster,
            "POST",
            "/api/v1/namespaces/default/services",
            "application/json",
            &service(name, spec),
        )
    };
    // Concurrent creates never share an address.
    let ips: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let (dir, port) = (cluster._dir.path().to_path_buf(), cluster.port);
                let body = service(
                    &format!("s{i}"),
                    r#"{"type":"NodePort","ports":[{"port":80}]}"#,
                );
                scope.spawn(move || {
                    let (code, svc) = api_at(
                        &dir,
                        port,
                        "POST",
                        "/api/v1/namespaces/default/services",
                        "application/json",
                        &body,
                    );
                    assert_eq!(code, 201, "{svc}");
                    (
                        svc["spec"]["clusterIP"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        svc["spec"]["ports"][0]["nodePort"]
                            .as_u64()
                            .unwrap_or_default(),
                    )
                })
            })
            .collect();
        let results: Vec<(String, u64)> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        let mut ports: Vec<u64> = results.iter().map(|r| r.1).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 16, "distinct node ports");
        assert!(
            ports.iter().all(|p| (30000..=32767).contains(p)),
            "{ports:?}"
        );
        results.into_iter().map(|r| r.0).collect()
    });
    let mut distinct = ips.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 16, "{ips:?}");
    assert!(
        ips.iter()
            .all(|ip| ip.starts_with("10.43.") && ip != "10.43.0.1" && ip != "10.43.0.10"),
        "{ips:?}"
    );

    // The cluster DNS address is held by kube-system/kube-dns from the start.
    let (code, status) = create(
        &cluster,
        "dns-taken",
        r#"{"clusterIP":"10.43.0.10","ports":[{"port":53}]}"#,
    );
    assert_eq!(code, 422, "{status}");

    // A chosen address is honoured once.
    let (code, dns) = create(
        &cluster,
        "dns",
        r#"{"clusterIP":"10.43.0.53","ports":[{"port":53,"protocol":"UDP"}]}"#,
    );
    assert_eq!(
        (code, dns["spec"]["clusterIP"].as_str()),
        (201, Some("10.43.0.53")),
        "{dns}"
    );
    let (code, status) = create(
        &cluster,
        "dns2",
        r#"{"clusterIP":"10.43.0.53","ports":[{"port":53}]}"#,
    );
    assert_eq!(code, 422, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or_default()
            .contains("provided IP is already allocated"),
        "{status}"
    );
    let (code, status) = create(
        &cluster,
        "np",
        r#"{"type":"NodePort","ports":[{"port":80,"nodePort":30080}]}"#,
    );
    assert_eq!(code, 201, "{status}");
    let (code, status) = create(
        &cluster,
        "np2",
        r#"{"type":"NodePort","ports":[{"port":80,"nodePort":30080}]}"#,
    );
    assert_eq!(code, 422, "{status}");
    let (code, status) = create(
        &cluster,
        "outside",
        r#"{"clusterIP":"10.99.0.1","ports":[{"port":80}]}"#,
    );
    assert_eq!(code, 422, "{status}");
    // An update may omit the allocated values (they are kept) but not change them.
    let (code, updated) = api(
        &cluster,
        "PUT",
        "/api/v1/namespaces/default/services/dns",
        "application/json",
        &service(
            "dns",
            r#"{"ports":[{"port":53,"protocol":"UDP"}],"selector":{"k8s-app":"dns"}}"#,
        ),
    );
    assert_eq!(
        (code, updated["spec"]["clusterIP"].as_str()),
        (200, Some("10.43.0.53")),
        "{updated}"
    );
    let (code, _) = api(
        &cluster,
        "PUT",
        "/api/v1/namespaces/default/services/dns",
        "application/json",
        &service(
            "dns",
            r#"{"clusterIP":"10.43.0.11","ports":[{"port":53,"protocol":"UDP"}]}"#,
        ),
    );
    assert_eq!(code, 422);

    // Addresses survive a restart; deleting the Service frees them.
    cluster.restart();
    let (code, _) = create(
        &cluster,
        "dns3",
        r#"{"clusterIP":"10.43.0.53","ports":[{"port":53}]}"#,
    );
    assert_eq!(code, 422, "still allocated after a restart");
    let (code, _) = api(
        &cluster,
        "DELETE",
        "/api/v1/namespaces/default/services/dns",
        "application/json",
        "",
    );
    assert_eq!(code, 200);
    let (code, again) = create(
        &cluster,
        "dns3",
        r#"{"clusterIP":"10.43.0.53","ports":[{"port":53}]}"#,
    );
    assert_eq!(code, 201, "freed by the deletion: {again}");
    let (code, _) = api(
        &cluster,
        "DELETE",
        "/api/v1/namespaces/default/services/np",
        "application/json",
        "",
    );
    assert_eq!(code, 200);
    let (code, status) = create(
        &cluster,
        "np3",
        r#"{"type":"NodePort","ports":[{"port":80,"nodePort":30080}]}"#,
    );
    assert_eq!(code, 201, "{status}");
}

const APPLIED: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  labels: {app: api, tier: backend}
spec:
  replicas: 2
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers:
      - name: api
        image: busybox
"#;

/// `kubectl apply --server-side`: creation, field ownership in managedFields, conflicts with
/// another writer (kubectl scale), --force-conflicts, and removal of fields the applier drops.
#[test]
fn server_side_apply_tracks_owners_and_conflicts() {
    for kubectl in &kubectls() {
        let cluster = Cluster::start();
        let k = |args: &[&str]| cluster.kubectl(kubectl, &cluster.kubeconfig, args);
        let name = kubectl.display().to_string();
        let manifest = cluster._dir.path().join("applied.yaml");
        let m = manifest.to_str().expect("path");
        std::fs::write(&manifest, APPLIED).expect("manifest");
        let out = ok(k(&["apply", "--server-side", "-f", m]), "apply");
        assert!(
            out.contains("deployment.apps/api serverside-applied"),
            "{name}: {out}"
        );
        let fields = ok(
            k(&[
                "get",
                "deploy",
                "api",
                "-o",
                "json",
                "--show-managed-fields",
            ]),
            "get",
        );
        let fields: serde_json::Value = serde_json::from_str(&fields).expect("json");
        let entries = fields["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            entries.iter().any(|e| e["manager"] == "kubectl"
                && e["operation"] == "Apply"
                && e["fieldsV1"]["f:spec"]["f:replicas"].is_object()),
            "{name}: {entries:?}"
        );

        // Another writer takes .spec.replicas; applying a different value conflicts.
        ok(k(&["scale", "deploy", "api", "--replicas=5"]), "scale");
        std::fs::write(&manifest, APPLIED.replace("replicas: 2", "replicas: 3")).expect("manifest");
        let conflict = k(&["apply", "--server-side", "-f", m]);
        let err = text(&conflict.stderr);
        assert!(
            !conflict.status.success()
                && err.contains("conflict")
                && err.contains(".spec.replicas"),
            "{name}: {err}"
        );
        let replicas = ok(
            k(&["get", "deploy", "api", "-o", "jsonpath={.spec.replicas}"]),
            "get",
        );
        assert_eq!(replicas, "5", "{name}: a conflicting apply changes nothing");
        ok(
            k(&["apply", "--server-side", "--force-conflicts", "-f", m]),
            "force",
        );
        let replicas = ok(
            k(&["get", "deploy", "api", "-o", "jsonpath={.spec.replicas}"]),
            "get",
        );
        assert_eq!(replicas, "3", "{name}");

        // A field the applier stops applying is removed.
        std::fs::write(
            &manifest,
            APPLIED
                .replace("replicas: 2", "replicas: 3")
                .replace(", tier: backend", ""),
        )
        .expect("manifest");
        ok(
            k(&["apply", "--server-side", "-f", m]),
            "apply without the label",
        );
        let labels = ok(
            k(&["get", "deploy", "api", "-o", "jsonpath={.metadata.labels}"]),
            "labels",
        );
        assert_eq!(labels, r#"{"app":"api"}"#, "{name}");

        // A server-side dry run goes through the same path and stores nothing.
        let dry = k(&["apply", "--server-side", "--dry-run=server", "-f", m]);
        assert!(dry.status.success(), "{name}: {}", text(&dry.stderr));
    }
}
