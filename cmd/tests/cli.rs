//! The `shoal` binary as a user runs it: exit codes and one-line errors for bad input, the
//! config file and environment, and a server that starts, stops on SIGTERM, survives kill -9
//! and refuses a damaged data dir.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use shoal_e2e::server::{free_port, ShoalServer};

use tempfile::TempDir;

fn shoal() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal"));
    // Tests must not pick up the developer's own settings.
    for (key, _) in std::env::vars() {
        if key.starts_with("SHOAL_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run shoal")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts a usage error: exit code 64 and exactly one line on stderr mentioning `needle`.
fn assert_usage_error(output: Output, needle: &str) {
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(64), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("shoal: "), "{err:?}");
    assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
}

#[test]
fn version_prints_and_succeeds() {
    let output = run(shoal().arg("version"));
    assert!(output.status.success());
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(out.starts_with("shoal version v"), "{out}");
}

#[test]
fn bad_flags_are_usage_errors() {
    assert_usage_error(
        run(shoal().args(["server", "--no-such-flag"])),
        "--no-such-flag",
    );
    assert_usage_error(
        run(shoal().args(["server", "--cluster-cidr", "10.42.0.1/16"])),
        "host bits",
    );
    assert_usage_error(
        run(shoal().args(["server", "--https-listen-port", "0"])),
        "0",
    );
    assert_usage_error(
        run(shoal().args(["server", "--cluster-dns", "10.42.0.10"])),
        "service-cidr",
    );
    assert_usage_error(
        run(shoal().args(["server", "--server", "http://x:6443"])),
        "https://",
    );
    assert_usage_error(
        run(shoal().args(["server", "--cluster-domain", "bad..domain"])),
        "domain",
    );
    assert_usage_error(
        run(shoal().args([
            "server",
            "--kube-controller-manager-arg",
            "node-monitor-period=5s",
        ])),
        "not supported",
    );
    assert_usage_error(
        run(shoal().args([
            "server",
            "--kube-controller-manager-arg",
            "node-monitor-grace-period=soon",
        ])),
        "node-monitor-grace-period",
    );
    assert_usage_error(run(shoal().args(["frobnicate"])), "frobnicate");
    assert_usage_error(run(shoal().args(["agent"])), "--server");
    assert_usage_error(
        run(shoal().args([
            "agent",
            "--server",
            "https://127.0.0.1:6443",
            "--token-file",
            "/nonexistent",
        ])),
        "/nonexistent",
    );
    assert_usage_error(
        run(shoal().args(["server", "--token", "a", "--token-file", "/x"])),
        "--token",
    );
}

#[test]
fn bad_dual_stack_cidrs_are_usage_errors() {
    let dual = "10.42.0.0/16,fd00:42::/56";
    for (flags, needle) in [
        (
            vec!["--cluster-cidr", "10.42.0.0/16,fd00:42::/56,10.44.0.0/16"],
            "at most two CIDRs",
        ),
        (
            vec!["--cluster-cidr", "10.42.0.0/16,10.44.0.0/16"],
            "two CIDRs of one IP family",
        ),
        (
            vec!["--service-cidr", "fd00:43::/112,fd00:44::/112"],
            "two CIDRs of one IP family",
        ),
        (vec!["--cluster-cidr", dual], "same IP families"),
        (
            vec![
                "--cluster-cidr",
                "10.42.0.0/16,fd00:42::/80",
                "--service-cidr",
                "10.43.0.0/16,fd00:43::/112",
            ],
            "at least one /64",
        ),
        (
            vec![
                "--cluster-cidr",
                dual,
                "--service-cidr",
                "10.43.0.0/16,fd00:43::/64",
            ],
            "/108 or smaller",
        ),
    ] {
        let mut cmd = shoal();
        cmd.arg("server").args(&flags);
        assert_usage_error(run(&mut cmd), needle);
    }
}

#[test]
fn bad_config_files_are_usage_errors() {
    let dir = TempDir::new().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write config");
        path
    };
    let cases = [
        (
            write("unknown.yaml", "no-such-option: 1\n"),
            "no-such-option",
        ),
        (write("broken.yaml", "data-dir: [\n"), "broken.yaml"),
        (write("list.yaml", "- a\n- b\n"), "mapping"),
        (write("switch.yaml", "cluster-init: maybe\n"), "switch"),
        (
            write("value.yaml", "cluster-cidr: not-a-cidr\n"),
            "not-a-cidr",
        ),
    ];
    for (path, needle) in cases {
        assert_usage_error(
            run(shoal().arg("server").arg("--config").arg(&path)),
            needle,
        );
    }
    assert_usage_error(
        run(shoal().args(["server", "--config", "/nonexistent/config.yaml"])),
        "/nonexistent/config.yaml",
    );
    // The env var names a config file as well as the flag does.
    assert_usage_error(
        run(shoal()
            .arg("server")
            .env("SHOAL_CONFIG", dir.path().join("unknown.yaml"))),
        "no-such-option",
    );
}

/// Starts the server `cmd` describes on a free loopback port, following its log.
fn start(cmd: &mut Command) -> ShoalServer {
    // No node agent: it would start containerd, which outlives a killed server.
    cmd.arg("--disable-agent")
        .arg("--bind-address=127.0.0.1")
        .arg(format!(
            "--https-listen-port={}",
            free_port().expect("free port")
        ));
    ShoalServer::spawn(cmd).expect("spawn shoal server")
}

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn server_starts_stops_on_sigterm_and_survives_kill_9() {
    let dir = TempDir::new().expect("tempdir");
    let mut cmd = shoal();
    cmd.arg("server")
        .arg("--data-dir")
        .arg(dir.path())
        .env("SHOAL_CONFIG", dir.path().join("none.yaml"));
    // An explicitly named config file must exist; point at one that does.
    std::fs::write(dir.path().join("none.yaml"), "").expect("write empty config");

    let server = start(&mut cmd);
    let ready = server
        .wait_for("shoal server ready", WAIT)
        .expect("log line");
    assert!(ready.contains("revision=0"), "{ready}");
    server.signal("-TERM").expect("signal");
    server.wait_for("store flushed", WAIT).expect("log line");
    assert_eq!(server.wait_exit(WAIT).expect("exit").code(), Some(0));

    let server = start(&mut cmd);
    server
        .wait_for("shoal server ready", WAIT)
        .expect("log line");
    server.signal("-KILL").expect("signal");
    assert!(!server.wait_exit(WAIT).expect("exit").success());

    let server = start(&mut cmd);
    server
        .wait_for("shoal server ready", WAIT)
        .expect("log line");
    // `shoal kubectl` is the system's kubectl on this cluster's kubeconfig.
    let out = run(shoal()
        .args(["kubectl", "--data-dir"])
        .arg(dir.path())
        .args(["get", "namespace", "kube-system", "-o", "name"])
        .env_remove("KUBECONFIG"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "namespace/kube-system"
    );
    let out = run(shoal()
        .args(["kubectl", "--data-dir", "/nonexistent", "get", "pods"])
        .env_remove("KUBECONFIG"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no kubeconfig at /nonexistent"),
        "{}",
        stderr(&out)
    );
    server.signal("-INT").expect("signal");
    assert_eq!(server.wait_exit(WAIT).expect("exit").code(), Some(0));
}

#[test]
fn config_file_env_and_flags_take_precedence_in_that_order() {
    let dir = TempDir::new().expect("tempdir");
    let (from_file, from_env, from_flag) = (
        dir.path().join("file"),
        dir.path().join("env"),
        dir.path().join("flag"),
    );
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!("data-dir: {}\nlog-level: debug\n", from_file.display()),
    )
    .expect("write config");

    let started_with = |cmd: &mut Command| {
        let server = start(cmd);
        let line = server
            .wait_for("shoal server ready", WAIT)
            .expect("log line");
        server.signal("-TERM").expect("signal");
        assert_eq!(server.wait_exit(WAIT).expect("exit").code(), Some(0));
        line
    };

    let line = started_with(shoal().arg("server").arg("--config").arg(&config));
    assert!(
        line.contains(&format!("data_dir={}", from_file.display())),
        "{line}"
    );
    assert!(from_file.join("server").exists());

    let line = started_with(
        shoal()
            .arg("server")
            .arg("--config")
            .arg(&config)
            .env("SHOAL_DATA_DIR", &from_env),
    );
    assert!(
        line.contains(&format!("data_dir={}", from_env.display())),
        "{line}"
    );

    let line = started_with(
        shoal()
            .arg("server")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&from_flag)
            .env("SHOAL_DATA_DIR", &from_env),
    );
    assert!(
        line.contains(&format!("data_dir={}", from_flag.display())),
        "{line}"
    );
}

#[test]
fn server_refuses_a_damaged_data_dir_and_keeps_it() {
    let dir = TempDir::new().expect("tempdir");
    let config = dir.path().join("empty.yaml");
    std::fs::write(&config, "").expect("write config");
    let mut cmd = shoal();
    cmd.arg("server")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path());
    let server = start(&mut cmd);
    server
        .wait_for("shoal server ready", WAIT)
        .expect("log line");
    server.signal("-TERM").expect("signal");
    assert_eq!(server.wait_exit(WAIT).expect("exit").code(), Some(0));

    let store = dir.path().join("server/store");
    std::fs::rename(store.join("db"), store.join("db.saved")).expect("move db away");
    let output = run(&mut cmd);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.contains("refusing to start empty"), "{err}");
    assert!(
        !store.join("db").exists(),
        "the server must not create a fresh database"
    );
    assert!(store.join("db.saved").exists());
}
