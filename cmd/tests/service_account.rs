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

#[test]
fn kubectl_create_token_is_accepted_and_tampering_is_refused() {
    let cluster = Cluster::start(Path::new(env!("CARGO_BIN_EXE_shoal")));
    wait_for_default_account(&cluster, "default");
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
