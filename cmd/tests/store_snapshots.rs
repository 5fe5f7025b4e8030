//! Store snapshots with the real binary and one `--cluster-init` server on loopback: a
//! snapshot saved through the running server (`shoal store snapshot save`), more writes, the
//! server stopped, the snapshot restored (`shoal store snapshot restore`, refused while the
//! server runs): the server starts again without the later writes and with everything
//! before. `shoal server --cluster-reset` resets from the server's own data and exits; a
//! schedule keeps only the newest scheduled snapshots.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use shoal_e2e::cluster::eventually;
use shoal_e2e::kubectl::{kubectl_binary, Kubectl};
use shoal_e2e::server::{free_port, ShoalServer};
use tempfile::TempDir;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_shoal"))
}

fn shoal(args: &[&str], data_dir: &Path) -> Output {
    Command::new(binary())
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run shoal")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One server at a time: free ports are only free when picked.
static ONE_SERVER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_server() -> std::sync::MutexGuard<'static, ()> {
    ONE_SERVER.lock().unwrap_or_else(|e| e.into_inner())
}

/// A free loopback port whose successor is free too: a `--cluster-init` server's store peer
/// port is its API port + 1.
fn free_port_pair() -> u16 {
    loop {
        let port = free_port().expect("port");
        let both = port.checked_add(1).is_some_and(|next| {
            std::net::TcpListener::bind(("127.0.0.1", next)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        });
        if both {
            return port;
        }
    }
}

/// A data dir, kubectl for it, and the port its server listens on.
struct Fixture {
    data: TempDir,
    _home: TempDir,
    port: u16,
    kubectl: Kubectl,
}

impl Fixture {
    /// A new `--cluster-init` server, running, holding the ConfigMap `first`.
    fn start(first: &str) -> (Fixture, ShoalServer) {
        let data = TempDir::new().expect("tempdir");
        let home = TempDir::new().expect("home");
        let port = free_port_pair();
        let server = ShoalServer::start(binary(), data.path(), port, &["--cluster-init"])
            .expect("server starts");
        let kubectl = Kubectl {
            binary: kubectl_binary(),
            kubeconfig: data.path().join("kubeconfig.yaml"),
            home: home.path().to_path_buf(),
        };
        kubectl.ok(&["create", "configmap", first, "--from-literal=k=v"]);
        let fixture = Fixture {
            data,
            _home: home,
            port,
            kubectl,
        };
        (fixture, server)
    }
}

/// The names in `shoal store snapshot ls`.
fn listed(data_dir: &Path) -> Vec<String> {
    ok(shoal(&["store", "snapshot", "ls"], data_dir), "snapshot ls")
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Directories beside the store (`store.old-…` after a reset).
fn beside_store(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join("server"))
        .expect("server dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("store.old-"))
        })
        .collect()
}

#[test]
fn a_restored_snapshot_brings_the_server_back_to_when_it_was_taken() {
    let _serial = one_server();
    let (fixture, server) = Fixture::start("before");
    let (data_dir, port, kubectl) = (fixture.data.path(), fixture.port, &fixture.kubectl);

    let url = format!("https://127.0.0.1:{port}");
    let save = |name: &str| {
        let args = [
            "store", "snapshot", "save", "--server", &url, "--name", name,
        ];
        shoal(&args, data_dir)
    };
    let saved = ok(save("pre-change"), "snapshot save");
    let file = PathBuf::from(saved.trim());
    let name = file
        .file_name()
        .expect("a file")
        .to_string_lossy()
        .into_owned();
    assert!(name.starts_with("pre-change-"), "{name}");
    assert_eq!(
        file.parent(),
        Some(data_dir.join("server").join("store-snapshots").as_path())
    );
    assert!(file.is_file());
    // Names are the server's to choose: scheduled ones are off limits.
    let refused = save("scheduled");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("scheduled"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    kubectl.ok(&["create", "configmap", "after", "--from-literal=k=v"]);
    // Listed while the server runs; not restored while it does.
    assert_eq!(listed(data_dir), [name]);
    let path = file.to_string_lossy().into_owned();
    let busy = shoal(&["store", "snapshot", "restore", &path], data_dir);
    assert!(!busy.status.success(), "a restore under a running server");
    let message = String::from_utf8_lossy(&busy.stderr);
    assert!(message.contains("in use by a running server"), "{message}");

    server.stop().expect("server stops");
    let restored = ok(
        shoal(&["store", "snapshot", "restore", &path], data_dir),
        "snapshot restore",
    );
    assert!(restored.contains("only member"), "{restored}");
    assert!(restored.contains("without --cluster-reset"), "{restored}");
    assert_eq!(beside_store(data_dir).len(), 1, "the old store is kept");

    let server = ShoalServer::start(binary(), data_dir, port, &[]).expect("server restarts");
    kubectl.ok(&["get", "configmap", "before"]);
    assert!(
        kubectl.get(&["get", "configmap", "after"]).is_none(),
        "a write after the snapshot survived its restore"
    );
    kubectl.ok(&["create", "configmap", "again", "--from-literal=k=v"]);
    server.stop().expect("server stops");
}

#[test]
fn cluster_reset_keeps_the_servers_data_and_exits() {
    let _serial = one_server();
    let (fixture, server) = Fixture::start("kept");
    let (data_dir, port, kubectl) = (fixture.data.path(), fixture.port, &fixture.kubectl);
    server.stop().expect("server stops");

    // The flag's companion alone, and a bad schedule, are usage errors.
    let config = data_dir.join("test-config.yaml");
    let server_flags = |extra: &[&str]| {
        let mut command = Command::new(binary());
        command
            .args(["server", "--disable-agent", "--bind-address", "127.0.0.1"])
            .arg(format!("--https-listen-port={port}"))
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra);
        command
    };
    for bad in [
        &["--cluster-reset-restore-path", "/x"][..],
        &["--store-snapshot-schedule", "0 */12 * *"][..],
        &["--store-snapshot-retention", "0"][..],
    ] {
        let out = server_flags(bad).output().expect("run");
        assert_eq!(out.status.code(), Some(64), "{bad:?}");
    }

    let reset = ShoalServer::spawn(&mut server_flags(&["--cluster-reset"])).expect("spawn");
    reset
        .wait_for("without --cluster-reset", Duration::from_secs(30))
        .expect("the reset says what to do next");
    let status = reset.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "{status}");
    assert_eq!(beside_store(data_dir).len(), 1, "the old store is kept");

    let server = ShoalServer::start(binary(), data_dir, port, &[]).expect("server restarts");
    kubectl.ok(&["get", "configmap", "kept"]);
    server.stop().expect("server stops");
}

#[test]
fn scheduled_snapshots_keep_the_newest() {
    let _serial = one_server();
    let data = TempDir::new().expect("tempdir");
    let data_dir = data.path();
    let snapshots = data_dir.join("elsewhere");
    let dir_flag = snapshots.to_string_lossy().into_owned();
    let server = ShoalServer::start(
        binary(),
        data_dir,
        free_port().expect("port"),
        &[
            "--store-snapshot-schedule",
            "@every 1s",
            "--store-snapshot-retention",
            "2",
            "--store-snapshot-dir",
            &dir_flag,
        ],
    )
    .expect("server starts");
    let scheduled = || -> Vec<String> {
        let out = Command::new(binary())
            .args(["store", "snapshot", "ls", "--store-snapshot-dir", &dir_flag])
            .output()
            .expect("ls");
        ok(out, "snapshot ls")
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().next().map(str::to_string))
            .collect()
    };
    let first = eventually("two scheduled snapshots", Duration::from_secs(20), || {
        let names = scheduled();
        (names.len() == 2).then_some(names)
    });
    assert!(
        first.iter().all(|n| n.starts_with("scheduled-")),
        "{first:?}"
    );
    // Later ones replace them.
    eventually("newer scheduled snapshots", Duration::from_secs(20), || {
        let names = scheduled();
        (names.len() == 2 && !names.contains(&first[0]) && !names.contains(&first[1])).then_some(())
    });
    server.stop().expect("server stops");
    // Between a snapshot and the pruning after it there are three; once stopped, two.
    assert_eq!(scheduled().len(), 2, "{:?}", scheduled());
}

/// A snapshot carries the cluster's keys sealed with the token: restored with
/// `--cluster-reset-restore-path` into an empty data dir (a new machine) and the cluster's
/// token, the server comes back with the same CA, so the old admin kubeconfig still works. A
/// wrong or missing token is refused with nothing written.
#[test]
fn a_snapshot_restores_the_cluster_keys_on_a_new_machine() {
    let _serial = one_server();
    let (fixture, server) = Fixture::start("kept");
    let (data_dir, port, kubectl) = (fixture.data.path(), fixture.port, &fixture.kubectl);
    let url = format!("https://127.0.0.1:{port}");
    let saved = ok(
        shoal(
            &[
                "store", "snapshot", "save", "--server", &url, "--name", "moving",
            ],
            data_dir,
        ),
        "snapshot save",
    );
    let file = saved.trim().to_string();
    server.stop().expect("server stops");
    let token = std::fs::read_to_string(data_dir.join("server").join("token"))
        .expect("the token")
        .trim()
        .to_string();

    let fresh = TempDir::new().expect("tempdir");
    for (bad, says) in [
        (&["--token", "K10wrong::server:nope"][..], "token"),
        (&["--token", "nope"][..], "does not open"),
        (&[][..], "give --token"),
    ] {
        let mut args = vec!["store", "snapshot", "restore", &file];
        args.extend_from_slice(bad);
        let out = shoal(&args, fresh.path());
        assert!(!out.status.success(), "{bad:?}");
        let message = String::from_utf8_lossy(&out.stderr);
        assert!(message.contains(says), "{bad:?}: {message}");
        assert!(
            !fresh.path().join("server").join("store").exists(),
            "a refused restore wrote a store"
        );
    }

    let config = fresh.path().join("test-config.yaml");
    std::fs::write(&config, "").expect("config");
    let mut reset = Command::new(binary());
    reset
        .args(["server", "--disable-agent", "--bind-address", "127.0.0.1"])
        .arg(format!("--https-listen-port={port}"))
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(fresh.path())
        .args(["--cluster-reset", "--cluster-reset-restore-path", &file])
        .args(["--token", &token]);
    let reset = ShoalServer::spawn(&mut reset).expect("spawn");
    let status = reset.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(status.success(), "{status}");

    let ca = |dir: &Path| {
        std::fs::read_to_string(dir.join("server").join("tls").join("server-ca.crt")).expect("a CA")
    };
    assert_eq!(ca(fresh.path()), ca(data_dir), "the cluster CA came back");
    let server = ShoalServer::start(binary(), fresh.path(), port, &["--token", &token])
        .expect("the restored server starts");
    // The old machine's admin kubeconfig: same CA, same API port.
    kubectl.ok(&["get", "configmap", "kept"]);
    server.stop().expect("server stops");
}
