//! The API server as real `kubectl` (1.27 and 1.33, the oldest and newest supported) sees it:
//! the kubeconfig `shoal server` writes works as is, health and version answer, anonymous
//! callers are refused, unknown paths get Kubernetes' NotFound status.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

struct Cluster {
    child: Child,
    _dir: TempDir,
    kubeconfig: PathBuf,
    port: u16,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = TempDir::new().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, "").expect("config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args([
                "server",
                "--bind-address",
                "127.0.0.1",
                "--https-listen-port",
            ])
            .arg(port.to_string())
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shoal server");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("shoal server ready") => break,
                Ok(_) => {}
                Err(_) => panic!("shoal server did not become ready"),
            }
        }
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        Cluster {
            child,
            _dir: dir,
            kubeconfig,
            port,
        }
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

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
