//! `install.sh`, run in a throwaway root (`INSTALL_SHOAL_ROOT`) with the binary under test:
//! it is shellcheck-clean and so are the scripts it writes; a server and an agent get the
//! systemd units (or OpenRC services) and environment files they need, with the command the
//! unit runs accepted by the binary; a second run changes nothing; bad settings fail in one
//! line; a download is checked against its checksum; uninstall leaves nothing behind.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use shoal_e2e::server::{free_port, ShoalServer};
use tempfile::TempDir;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("install.sh")
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_shoal")
}

/// Runs the installer into `root` with `env` on top of a clean environment.
fn install(root: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new("sh");
    command
        .arg(script())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("INSTALL_SHOAL_ROOT", root)
        .env("INSTALL_SHOAL_BINARY", binary())
        .env("INSTALL_SHOAL_INIT", "systemd");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run install.sh")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "install.sh failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read(root: &Path, path: &str) -> String {
    std::fs::read_to_string(root.join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn mode(root: &Path, path: &str) -> u32 {
    std::fs::metadata(root.join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .permissions()
        .mode()
        & 0o777
}

/// Every file under `root`, relative.
fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(
                    path.strip_prefix(root)
                        .expect("under root")
                        .display()
                        .to_string(),
                );
            }
        }
    }
    out.sort();
    out
}

fn shellcheck(paths: &[PathBuf]) {
    let out = Command::new("shellcheck")
        .args(["--shell", "sh"])
        .args(paths)
        .output()
        .expect(
            "shellcheck is needed (Debian package shellcheck; scripts/setup-debian.sh installs it)",
        );
    assert!(
        out.status.success(),
        "shellcheck: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn uninstall(root: &Path) {
    // Its network cleanup runs in a namespace of its own, so the machine's links are untouched.
    let out = Command::new("unshare")
        .arg("--net")
        .arg(root.join("usr/local/bin/shoal-uninstall.sh"))
        .output()
        .expect("run shoal-uninstall.sh");
    assert!(
        out.status.success(),
        "uninstall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(files(root), Vec::<String>::new(), "uninstall left files");
    let dirs: Vec<_> = std::fs::read_dir(root).expect("root").flatten().collect();
    assert!(dirs.is_empty(), "uninstall left directories: {dirs:?}");
}

#[test]
fn the_installer_is_shellcheck_clean() {
    shellcheck(&[script()]);
}

#[test]
fn a_server_install_writes_a_unit_the_binary_runs_and_is_idempotent() {
    let root = TempDir::new().expect("tempdir");
    let first = ok(install(root.path(), &[("SHOAL_KUBECONFIG_MODE", "644")]));
    assert!(first.contains("installing /usr/local/bin/shoal"), "{first}");
    assert_eq!(
        files(root.path()),
        [
            "etc/systemd/system/shoal.service",
            "etc/systemd/system/shoal.service.env",
            "usr/local/bin/shoal",
            "usr/local/bin/shoal-killall.sh",
            "usr/local/bin/shoal-uninstall.sh",
        ]
    );
    assert_eq!(
        std::fs::read(root.path().join("usr/local/bin/shoal")).expect("installed"),
        std::fs::read(binary()).expect("built")
    );
    assert_eq!(mode(root.path(), "/usr/local/bin/shoal"), 0o755);
    assert_eq!(
        mode(root.path(), "/etc/systemd/system/shoal.service.env"),
        0o600
    );
    let unit = read(root.path(), "/etc/systemd/system/shoal.service");
    for line in [
        "ExecStart=/usr/local/bin/shoal server --write-kubeconfig-mode 644",
        "EnvironmentFile=-/etc/systemd/system/shoal.service.env",
        "KillMode=process",
        "Delegate=yes",
        "Restart=always",
        "WantedBy=multi-user.target",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "missing {line:?} in\n{unit}"
        );
    }
    shellcheck(&[
        root.path().join("usr/local/bin/shoal-killall.sh"),
        root.path().join("usr/local/bin/shoal-uninstall.sh"),
    ]);

    // The command the unit runs is one the binary accepts: start it (on a test port).
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let mut words = exec.split_whitespace();
    let program = root
        .path()
        .join(words.next().expect("program").trim_start_matches('/'));
    let data = TempDir::new().expect("tempdir");
    std::fs::write(data.path().join("empty.yaml"), "").expect("config");
    let mut command = Command::new(program);
    command
        .args(words)
        .arg("--data-dir")
        .arg(data.path())
        .arg("--config")
        .arg(data.path().join("empty.yaml"))
        .args(["--disable-agent", "--bind-address", "127.0.0.1"])
        .arg(format!(
            "--https-listen-port={}",
            free_port().expect("port")
        ));
    let server = ShoalServer::spawn(&mut command).expect("start the installed server");
    server
        .wait_for("shoal server ready", Duration::from_secs(30))
        .expect("ready");
    assert_eq!(
        mode(data.path(), "kubeconfig.yaml"),
        0o644,
        "SHOAL_KUBECONFIG_MODE reached the server"
    );
    server.stop().expect("stop");

    // Again: nothing changes.
    let before: Vec<_> = files(root.path())
        .iter()
        .map(|f| {
            std::fs::metadata(root.path().join(f))
                .and_then(|m| m.modified())
                .ok()
        })
        .collect();
    let second = ok(install(root.path(), &[("SHOAL_KUBECONFIG_MODE", "644")]));
    assert!(second.contains("is up to date"), "{second}");
    let after: Vec<_> = files(root.path())
        .iter()
        .map(|f| {
            std::fs::metadata(root.path().join(f))
                .and_then(|m| m.modified())
                .ok()
        })
        .collect();
    assert_eq!(before, after, "a second run rewrote files");

    uninstall(root.path());
}

#[test]
fn an_agent_install_carries_the_server_and_token_in_a_private_env_file() {
    let root = TempDir::new().expect("tempdir");
    ok(install(
        root.path(),
        &[
            ("SHOAL_URL", "https://10.0.0.1:6443"),
            ("SHOAL_TOKEN", "K10abc::server:secret"),
            ("INSTALL_SHOAL_EXEC", "agent --node-label tier=edge"),
        ],
    ));
    let unit = read(root.path(), "/etc/systemd/system/shoal-agent.service");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/shoal agent --node-label tier=edge"),
        "{unit}"
    );
    let env = read(root.path(), "/etc/systemd/system/shoal-agent.service.env");
    assert!(env.contains("SHOAL_URL=https://10.0.0.1:6443"), "{env}");
    assert!(env.contains("SHOAL_TOKEN=K10abc::server:secret"), "{env}");
    assert_eq!(
        mode(root.path(), "/etc/systemd/system/shoal-agent.service.env"),
        0o600
    );
    uninstall(root.path());

    // OpenRC gets a service script instead, reading the same settings.
    let root = TempDir::new().expect("tempdir");
    ok(install(
        root.path(),
        &[
            ("INSTALL_SHOAL_INIT", "openrc"),
            ("SHOAL_URL", "https://10.0.0.1:6443"),
            ("SHOAL_TOKEN", "secret"),
        ],
    ));
    let service = read(root.path(), "/etc/init.d/shoal-agent");
    assert!(service.starts_with("#!/sbin/openrc-run"), "{service}");
    assert!(
        service.contains("command=\"/usr/local/bin/shoal\""),
        "{service}"
    );
    assert!(service.contains("command_args=\"agent\""), "{service}");
    assert!(
        read(root.path(), "/etc/shoal/shoal-agent.env").contains("SHOAL_TOKEN=secret"),
        "env file"
    );
    uninstall(root.path());
}

#[test]
fn bad_settings_fail_in_one_line_and_write_nothing() {
    for (env, needle) in [
        (
            vec![("INSTALL_SHOAL_EXEC", "frobnicate")],
            "must start with 'server' or 'agent'",
        ),
        (
            vec![("SHOAL_URL", "https://10.0.0.1:6443")],
            "needs SHOAL_TOKEN",
        ),
        (
            vec![("SHOAL_URL", "http://10.0.0.1:6443"), ("SHOAL_TOKEN", "t")],
            "must start with https://",
        ),
        (
            vec![("INSTALL_SHOAL_INIT", "upstart")],
            "systemd, openrc or none",
        ),
        (
            vec![("INSTALL_SHOAL_BINARY", "/nonexistent/shoal")],
            "is not a file",
        ),
    ] {
        let root = TempDir::new().expect("tempdir");
        let out = install(root.path(), &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?} succeeded");
        assert_eq!(stderr.lines().count(), 1, "{env:?}: {stderr}");
        assert!(stderr.contains(needle), "{env:?}: {stderr}");
        assert_eq!(
            files(root.path()),
            Vec::<String>::new(),
            "{env:?} wrote files"
        );
    }
}

#[test]
fn a_download_is_checked_against_its_checksum() {
    let release = TempDir::new().expect("tempdir");
    let published = release.path().join("shoal-amd64");
    std::fs::copy(binary(), &published).expect("copy");
    let sum = Command::new("sha256sum")
        .arg(&published)
        .output()
        .expect("sha256sum");
    std::fs::write(release.path().join("shoal-amd64.sha256"), &sum.stdout).expect("sum");
    let url = format!("file://{}", published.display());

    let root = TempDir::new().expect("tempdir");
    ok(install(
        root.path(),
        &[
            ("INSTALL_SHOAL_BINARY", ""),
            ("INSTALL_SHOAL_DOWNLOAD_URL", &url),
        ],
    ));
    assert_eq!(
        std::fs::read(root.path().join("usr/local/bin/shoal")).expect("installed"),
        std::fs::read(binary()).expect("built")
    );
    uninstall(root.path());

    std::fs::write(
        release.path().join("shoal-amd64.sha256"),
        format!("{}  shoal-amd64\n", "0".repeat(64)),
    )
    .expect("bad sum");
    let root = TempDir::new().expect("tempdir");
    let out = install(
        root.path(),
        &[
            ("INSTALL_SHOAL_BINARY", ""),
            ("INSTALL_SHOAL_DOWNLOAD_URL", &url),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("checksum mismatch"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(files(root.path()), Vec::<String>::new());
}

fn lab(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("lab")
        .join(path)
}

#[test]
fn the_vagrantfile_is_valid_ruby_and_provisions_with_the_lab_script() {
    let out = Command::new("ruby")
        .arg("-c")
        .arg(lab("Vagrantfile"))
        .output()
        .expect("ruby is needed (Debian package ruby; scripts/setup-debian.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vagrantfile = std::fs::read_to_string(lab("Vagrantfile")).expect("Vagrantfile");
    assert!(vagrantfile.contains("sh /vagrant/lab/provision.sh server"));
    assert!(vagrantfile.contains("sh /vagrant/lab/provision.sh agent"));
    shellcheck(&[lab("provision.sh")]);
}

#[test]
fn the_lima_template_is_well_formed_and_uses_paths_that_exist() {
    let text = std::fs::read_to_string(lab("lima/shoal.yaml")).expect("template");
    let template: serde_json::Value = serde_yaml::from_str(&text).expect("YAML");
    for key in [
        "images",
        "cpus",
        "memory",
        "mounts",
        "networks",
        "provision",
        "param",
    ] {
        assert!(!template[key].is_null(), "missing {key}");
    }
    let images = template["images"].as_array().expect("images");
    let arches: Vec<&str> = images.iter().filter_map(|i| i["arch"].as_str()).collect();
    assert_eq!(arches, ["x86_64", "aarch64"]);
    assert!(images.iter().all(|i| i["location"]
        .as_str()
        .is_some_and(|l| l.starts_with("https://"))));
    assert_eq!(template["networks"][0]["lima"], "user-v2");
    assert_eq!(
        template["containerd"]["system"], false,
        "Lima's containerd stays off"
    );
    let mounts: Vec<&str> = template["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter_map(|m| m["mountPoint"].as_str())
        .collect();
    assert_eq!(mounts, ["/mnt/shoal", "/mnt/shoal-lab"]);
    let script = template["provision"][0]["script"].as_str().expect("script");
    assert_eq!(template["provision"][0]["mode"], "system");
    // The provision script names only files the repository has (mounted at /mnt/shoal).
    for word in script.split_whitespace() {
        if let Some(path) = word.strip_prefix("/mnt/shoal/") {
            let local = lab("..").join(path);
            assert!(local.exists(), "{word} is not in the repository");
        }
    }
    for param in ["ROLE", "SERVER", "BINARY"] {
        assert!(template["param"].get(param).is_some(), "param {param}");
        assert!(
            script.contains(&format!("{{{{.Param.{param}}}}}")),
            "the provision script ignores param {param}"
        );
    }
}

#[test]
fn the_lab_provisioning_installs_a_server_and_an_agent() {
    let shared = TempDir::new().expect("tempdir");
    let provision = |root: &Path, args: &[&str]| {
        let out = Command::new("sh")
            .arg(lab("provision.sh"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("INSTALL_SHOAL_ROOT", root)
            .env("INSTALL_SHOAL_INIT", "systemd")
            .env("SHOAL_BINARY", binary())
            .output()
            .expect("run provision.sh");
        ok(out)
    };
    let server = TempDir::new().expect("tempdir");
    let shared_dir = shared.path().to_str().expect("utf-8");
    provision(server.path(), &["server", shared_dir, "192.168.56.10"]);
    let unit = read(server.path(), "/etc/systemd/system/shoal.service");
    assert!(
        unit.contains(
            "ExecStart=/usr/local/bin/shoal server --node-ip 192.168.56.10 --advertise-address 192.168.56.10 --write-kubeconfig-mode 644"
        ),
        "{unit}"
    );
    uninstall(server.path());

    std::fs::write(shared.path().join("token"), "K10abc::server:s3cret\n").expect("token");
    let agent = TempDir::new().expect("tempdir");
    provision(
        agent.path(),
        &["agent", shared_dir, "192.168.56.10", "192.168.56.11"],
    );
    let unit = read(agent.path(), "/etc/systemd/system/shoal-agent.service");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/shoal agent --node-ip 192.168.56.11"),
        "{unit}"
    );
    let env = read(agent.path(), "/etc/systemd/system/shoal-agent.service.env");
    assert!(
        env.contains("SHOAL_URL=https://192.168.56.10:6443"),
        "{env}"
    );
    assert!(env.contains("SHOAL_TOKEN=K10abc::server:s3cret"), "{env}");
    uninstall(agent.path());

    let out = Command::new("sh")
        .arg(lab("provision.sh"))
        .args(["gateway", shared_dir])
        .output()
        .expect("run provision.sh");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server or agent"));
}
