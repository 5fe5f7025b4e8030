//! ServiceAccount tokens end to end with real kubectl: `kubectl create token` (1.27 and 1.33)
//! returns a JWT the server then accepts as a bearer token; a tampered one is 401; and a pod
//! reads its projected token, CA and namespace from
//! `/var/run/secrets/kubernetes.io/serviceaccount` and that token authenticates.

use std::path::{Path, PathBuf};

use shoal_e2e::cluster::Cluster;
use shoal_e2e::kubectl::Kubectl;

/// kubectl `version` (1.27 or 1.33); a missing one fails the test.
fn kubectl_version(version: &str) -> PathBuf {
    let name = format!("kubectl.{version}");
    [
        "/usr/lib/google-cloud-sdk/bin",
        "/usr/local/bin",
        "/usr/bin",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(&name))
    .find(|p| p.exists())
    .unwrap_or_else(|| panic!("{name} not found: this test needs kubectl {version}"))
}

/// A kubeconfig with the cluster's server and CA and `token` as its only credential (no
/// client certificate, which the server would prefer to the token).
fn token_kubeconfig(cluster: &Cluster, token: &str) -> PathBuf {
    let admin = cluster.kubectl_runner();
    let server = admin.ok(&[
        "config",
        "view",
        "--raw",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let ca = admin.ok(&[
        "config",
        "view",
        "--raw",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority-data}",
    ]);
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = cluster.dir.path().join(format!("token-{n}.yaml"));
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"
    );
    std::fs::write(&path, config).expect("write token kubeconfig");
    path
}

fn as_token(cluster: &Cluster, binary: &Path, token: &str) -> Kubectl {
    Kubectl {
        binary: binary.to_path_buf(),
        kubeconfig: token_kubeconfig(cluster, token),
        home: cluster.dir.path().to_path_buf(),
    }
}

/// The JWT's claims (unverified: the server has verified it when it is accepted).
fn claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let body = token.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// Waits for the controllers to create the namespace's `default` ServiceAccount.
fn wait_for_default_account(cluster: &Cluster, namespace: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while cluster
        .get(&["get", "-n", namespace, "serviceaccount", "default"])
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no default ServiceAccount in {namespace}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Waits for the root CA publisher's `kube-root-ca.crt` in `namespace` to hold `ca`.
fn wait_for_root_ca(cluster: &Cluster, namespace: &str, ca: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let cm = cluster.get(&["get", "-n", namespace, "configmap", "kube-root-ca.crt"]);
        if cm.as_ref().and_then(|c| c["data"]["ca.crt"].as_str()) == Some(ca) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no kube-root-ca.crt with the CA in {namespace}: {cm:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn kubectl_create_token_is_accepted_and_tampering_is_refused() {
    let cluster = Cluster::start(Path::new(env!("CARGO_BIN_EXE_shoal")));
    wait_for_default_account(&cluster, "default");
    let ca = std::fs::read_to_string(cluster.dir.path().join("server/tls/server-ca.crt"))
        .expect("cluster CA");
    wait_for_root_ca(&cluster, "default", &ca);
    for version in ["1.27", "1.33"] {
        let binary = kubectl_version(version);
        let admin = Kubectl {
            binary: binary.clone(),
            ..cluster.kubectl_runner()
        };
        let token = admin.ok(&["create", "token", "default"]).trim().to_string();
        let c = claims(&token);
        assert_eq!(
            c["sub"], "system:serviceaccount:default:default",
            "kubectl {version}: {c}"
        );
        assert_eq!(c["iss"], "https://kubernetes.default.svc.cluster.local");
        assert_eq!(c["aud"][0], "https://kubernetes.default.svc.cluster.local");
        assert_eq!(
            c["exp"].as_i64().unwrap_or_default() - c["iat"].as_i64().unwrap_or_default(),
            3600
        );
        assert_eq!(c["kubernetes.io"]["namespace"], "default");

        let user = as_token(&cluster, &binary, &token);
        let out = user.ok(&["get", "pods", "-o", "name"]);
        assert!(out.trim().is_empty(), "kubectl {version}: {out}");

        // One byte of the payload changed: the signature no longer matches.
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let mut body = parts[1].clone().into_bytes();
        body[10] = if body[10] == b'A' { b'B' } else { b'A' };
        parts[1] = String::from_utf8(body).expect("ascii");
        let tampered = as_token(&cluster, &binary, &parts.join("."));
        let out = tampered.run(&["get", "pods"], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "kubectl {version}: tampered token accepted"
        );
        assert!(err.contains("Unauthorized"), "kubectl {version}: {err}");

        // Audience and duration are honoured; a token for another audience is not ours.
        let other = admin
            .ok(&[
                "create",
                "token",
                "default",
                "--audience",
                "vault",
                "--duration",
                "20m",
            ])
            .trim()
            .to_string();
        let c = claims(&other);
        assert_eq!(c["aud"][0], "vault");
        assert_eq!(
            c["exp"].as_i64().unwrap_or_default() - c["iat"].as_i64().unwrap_or_default(),
            1200
        );
        let out = as_token(&cluster, &binary, &other).run(&["get", "pods"], None);
        assert!(
            !out.status.success(),
            "kubectl {version}: foreign audience accepted"
        );

        let out = admin.run(&["create", "token", "nobody"], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("serviceaccounts \"nobody\" not found"),
            "kubectl {version}: {err}"
        );
    }
}

#[test]
fn a_pod_reads_its_projected_token_and_the_token_authenticates() {
    assert!(
        shoal_e2e::process::is_root(),
        "this test runs real containers and needs root (CI runs it as root)"
    );
    const IMAGE: &str = "localhost/test/busybox:1";
    let binary = Path::new(env!("CARGO_BIN_EXE_shoal"));
    // Build machines' disks are often nearly full: no disk-pressure taint for this test.
    let cluster = Cluster::start_with_agent(
        binary,
        &[
            "--kubelet-port",
            "0",
            "--eviction-hard",
            "nodefs.available<1%",
        ],
    );
    let archive = shoal_e2e::images::busybox_archive(cluster.dir.path(), IMAGE);
    shoal_e2e::images::import(binary, cluster.dir.path(), &archive);
    wait_for_default_account(&cluster, "default");
    cluster.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: reader}}
spec:
  containers:
  - {{name: app, image: {IMAGE}, command: ["sleep", "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: opted-out}}
spec:
  automountServiceAccountToken: false
  containers:
  - {{name: app, image: {IMAGE}, command: ["sleep", "3600"]}}
"#
    ));
    let pod = cluster.json(&["get", "pod", "reader", "-o", "json"]);
    let volume = &pod["spec"]["volumes"][0];
    assert!(
        volume["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("kube-api-access-") && n.len() == 21),
        "{pod}"
    );
    assert_eq!(
        pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    let opted_out = cluster.json(&["get", "pod", "opted-out", "-o", "json"]);
    assert!(opted_out["spec"]["volumes"].is_null(), "{opted_out}");

    shoal_e2e::cluster::eventually("the pod runs", std::time::Duration::from_secs(120), || {
        let p = cluster.get(&["get", "pod", "reader"])?;
        (p["status"]["phase"] == "Running").then_some(())
    });
    let read = |file: &str| {
        cluster.kubectl(&[
            "exec",
            "reader",
            "--",
            "cat",
            &format!("/var/run/secrets/kubernetes.io/serviceaccount/{file}"),
        ])
    };
    let ca = std::fs::read_to_string(cluster.dir.path().join("server/tls/server-ca.crt"))
        .expect("cluster CA");
    assert_eq!(read("ca.crt"), ca);
    assert_eq!(read("namespace"), "default");
    let token = read("token");
    let c = claims(&token);
    assert_eq!(c["sub"], "system:serviceaccount:default:default");
    assert_eq!(c["kubernetes.io"]["pod"]["name"], "reader");
    assert_eq!(c["kubernetes.io"]["pod"]["uid"], pod["metadata"]["uid"]);
    assert_eq!(
        c["exp"].as_i64().unwrap_or_default() - c["iat"].as_i64().unwrap_or_default(),
        3607
    );

    let user = as_token(&cluster, &cluster.kubectl, &token);
    let names = user.ok(&["get", "pods", "-o", "name"]);
    assert!(names.contains("pod/reader"), "{names}");

    // The token dies with its pod: bound tokens name the pod's uid.
    cluster.kubectl(&["delete", "pod", "reader", "--grace-period=0", "--force"]);
    shoal_e2e::cluster::eventually(
        "the pod is gone",
        std::time::Duration::from_secs(60),
        || {
            cluster
                .get(&["get", "pod", "reader"])
                .is_none()
                .then_some(())
        },
    );
    let out = user.run(&["get", "pods"], None);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthorized"),
        "a deleted pod's token still works"
    );
}
